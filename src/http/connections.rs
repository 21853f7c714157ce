//! The connections of one listener, by phase, so that a full listener makes room by closing the
//! connection that has waited longest without completing a request instead of refusing a
//! newcomer.
//!
//! Every open connection is in one phase:
//!
//! - **incomplete**: waiting for (the rest of) a request head or body, since the connection
//!   opened or since the first byte of this request arrived;
//! - **handling**: its request is complete (head and body) and the handler is producing the
//!   answer;
//! - **idle**: kept alive after an answer, no byte of a next request yet, since that answer.
//!
//! When the cap is reached, [`Registry::admit`] evicts the oldest incomplete connection, else the
//! oldest idle one; a connection whose request is being handled is never evicted (it ends within
//! the request deadline). Eviction cancels the connection's token: its task drops the connection
//! and the socket closes. Only when every place holds a request being handled does a newcomer
//! wait for room.
//!
//! "Since the first byte of this request" rather than "since the previous answer": a prompt
//! request on a long-idle kept-alive connection is young, and so the last to be evicted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Which connections go first: every incomplete one before any idle one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Incomplete,
    Idle,
}

/// Where a connection is in the eviction order: its rank, then when its wait began (a sequence
/// number: lower is older).
type Key = (Rank, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Evictable, at `Key` in the order.
    Waiting(Key),
    /// Its request is complete and being handled: not evictable.
    Handling,
    /// Closed or evicted: no longer counted.
    Gone,
}

/// The connections of one listener, and at most how many may be open at once.
pub struct Registry {
    cap: usize,
    state: Mutex<State>,
    /// Signalled when a connection closes or becomes evictable, for a newcomer waiting for room.
    room: Notify,
    open_gauge: metrics::Gauge,
}

struct State {
    open: usize,
    next_seq: u64,
    /// The evictable connections, first to go first.
    order: BTreeMap<Key, Arc<Conn>>,
}

/// One connection's entry: its phase (changed only under the registry's lock) and the token
/// that evicts it.
pub struct Conn {
    phase: Mutex<Phase>,
    /// True while idle: lets the socket's reads skip the registry's lock in every other phase.
    idle: AtomicBool,
    evicted: CancellationToken,
}

/// What [`Registry::admit`] did for a newcomer.
pub enum Admission {
    /// Admitted into a free place.
    Admitted(Tracker),
    /// Admitted into the place of an evicted connection.
    AdmittedByEvicting(Tracker),
    /// Every place holds a request being handled.
    Full,
}

impl Registry {
    /// A registry of at most `cap` connections (at least one), reporting the open count to
    /// `open_gauge`.
    pub fn new(cap: usize, open_gauge: metrics::Gauge) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            state: Mutex::new(State {
                open: 0,
                next_seq: 0,
                order: BTreeMap::new(),
            }),
            room: Notify::new(),
            open_gauge,
        })
    }

    /// Counts a newly accepted connection in, incomplete since now: into a free place, else into
    /// the place of the oldest incomplete (then idle) connection, which is evicted.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut state = self.lock();
        let mut evicted = false;
        if state.open >= self.cap {
            let Some((_, victim)) = state.order.pop_first() else {
                return Admission::Full;
            };
            *victim.phase.lock().expect("phase lock") = Phase::Gone;
            victim.evicted.cancel();
            state.open -= 1;
            evicted = true;
        } else {
            self.open_gauge.increment(1.0);
        }
        let key = (Rank::Incomplete, state.next_key_seq());
        let conn = Arc::new(Conn {
            phase: Mutex::new(Phase::Waiting(key)),
            idle: AtomicBool::new(false),
            evicted: CancellationToken::new(),
        });
        state.order.insert(key, conn.clone());
        state.open += 1;
        let tracker = Tracker {
            registry: self.clone(),
            conn,
        };
        if evicted {
            Admission::AdmittedByEvicting(tracker)
        } else {
            Admission::Admitted(tracker)
        }
    }

    /// Waits until a connection closes or becomes evictable (or was signalled so since the last
    /// wait): then [`Registry::admit`] may succeed.
    pub async fn room(&self) {
        self.room.notified().await;
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("connection registry lock")
    }
}

impl State {
    fn next_key_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// One admitted connection's handle on the registry: its phase changes, and its place, given
/// back when dropped.
#[derive(Clone)]
pub struct Tracker {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Tracker {
    /// Fires when the connection is evicted to make room.
    pub fn evicted(&self) -> &CancellationToken {
        &self.conn.evicted
    }

    /// Bytes arrived on the socket: an idle connection becomes incomplete, since now.
    pub fn bytes_arrived(&self) {
        if self.conn.idle.load(Ordering::Relaxed) {
            self.move_to(
                |phase| matches!(phase, Phase::Waiting((Rank::Idle, _))),
                Some(Rank::Incomplete),
            );
        }
    }

    /// A request head was read; `body_complete` when it has no body to wait for. False when the
    /// connection was evicted (its task is about to drop it): the request must not be handled.
    pub fn head_received(&self, body_complete: bool) -> bool {
        if body_complete {
            return self.request_complete();
        }
        // A head read from bytes that arrived while idle (pipelined): incomplete from now.
        self.move_to(
            |phase| matches!(phase, Phase::Waiting((Rank::Idle, _))),
            Some(Rank::Incomplete),
        );
        !self.is_gone()
    }

    /// The request's body was read to its end: the connection is handled, never evicted, until
    /// its answer is produced. False when it was evicted first.
    pub fn request_complete(&self) -> bool {
        self.move_to(|phase| matches!(phase, Phase::Waiting(_)), None);
        !self.is_gone()
    }

    /// The answer was produced (handed to the connection to write): a handled connection becomes
    /// idle, since now. One answered before its request was complete stays incomplete.
    pub fn answered(&self) {
        if self.move_to(|phase| *phase == Phase::Handling, Some(Rank::Idle)) {
            self.registry.room.notify_one();
        }
    }

    fn is_gone(&self) -> bool {
        *self.conn.phase.lock().expect("phase lock") == Phase::Gone
    }

    /// When the phase satisfies `from`: moves the connection to the end of `to`'s order (a wait
    /// beginning now), or out of the order for `None` (handling). True if it moved.
    fn move_to(&self, from: impl Fn(&Phase) -> bool, to: Option<Rank>) -> bool {
        let mut state = self.registry.lock();
        let mut phase = self.conn.phase.lock().expect("phase lock");
        if !from(&phase) {
            return false;
        }
        if let Phase::Waiting(key) = *phase {
            state.order.remove(&key);
        }
        *phase = match to {
            Some(rank) => {
                let key = (rank, state.next_key_seq());
                state.order.insert(key, self.conn.clone());
                Phase::Waiting(key)
            }
            None => Phase::Handling,
        };
        self.conn.idle.store(to == Some(Rank::Idle), Ordering::Relaxed);
        true
    }
}

/// The connection's task holds one of these until the connection ends; dropping it gives the
/// place back (an evicted connection's place was already handed to the newcomer).
pub struct Place(pub Tracker);

impl Drop for Place {
    fn drop(&mut self) {
        let registry = &self.0.registry;
        let mut state = registry.lock();
        let mut phase = self.0.conn.phase.lock().expect("phase lock");
        match *phase {
            Phase::Gone => return,
            Phase::Waiting(key) => {
                state.order.remove(&key);
            }
            Phase::Handling => {}
        }
        *phase = Phase::Gone;
        state.open -= 1;
        registry.open_gauge.decrement(1.0);
        drop(phase);
        drop(state);
        registry.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(cap: usize) -> Arc<Registry> {
        Registry::new(cap, metrics::Gauge::noop())
    }

    fn admitted(a: Admission) -> (Tracker, bool) {
        match a {
            Admission::Admitted(t) => (t, false),
            Admission::AdmittedByEvicting(t) => (t, true),
            Admission::Full => panic!("no room"),
        }
    }

    #[test]
    fn below_the_cap_nothing_is_evicted() {
        let r = registry(3);
        let places: Vec<_> = (0..3).map(|_| admitted(r.admit())).collect();
        assert!(places
            .iter()
            .all(|(t, by_evicting)| !by_evicting && !t.evicted().is_cancelled()));
        assert_eq!(r.open(), 3);
    }

    #[test]
    fn the_oldest_incomplete_goes_first_then_the_oldest_idle_and_never_one_being_handled() {
        let r = registry(4);
        let (handled, _) = admitted(r.admit());
        assert!(handled.head_received(true));
        let (idle, _) = admitted(r.admit());
        assert!(idle.head_received(true));
        idle.answered();
        let (old, _) = admitted(r.admit());
        let (young, _) = admitted(r.admit());

        let (a, by_evicting) = admitted(r.admit());
        assert!(by_evicting);
        assert!(old.evicted().is_cancelled(), "the oldest incomplete first");
        let (_b, _) = admitted(r.admit());
        assert!(young.evicted().is_cancelled());
        // `a` and `_b` are incomplete and younger than the idle connection, yet go before it.
        let (_c, _) = admitted(r.admit());
        assert!(a.evicted().is_cancelled(), "incomplete before idle, whatever their age");
        assert!(!idle.evicted().is_cancelled());
        assert!(
            !handled.evicted().is_cancelled(),
            "a request being handled is never evicted"
        );
        assert_eq!(r.open(), 4);
    }

    #[test]
    fn when_every_place_is_handling_a_newcomer_waits_and_an_answer_makes_room() {
        let r = registry(2);
        let (a, _) = admitted(r.admit());
        let (b, _) = admitted(r.admit());
        assert!(a.head_received(false));
        assert!(a.request_complete());
        assert!(b.head_received(true));
        assert!(matches!(r.admit(), Admission::Full));
        b.answered();
        let (_c, by_evicting) = admitted(r.admit());
        assert!(by_evicting && b.evicted().is_cancelled(), "the idle one made room");
        assert!(!a.evicted().is_cancelled());
    }

    #[test]
    fn a_closed_connection_gives_its_place_back_once() {
        let r = registry(1);
        let (a, _) = admitted(r.admit());
        let place = Place(a.clone());
        let (_b, by_evicting) = admitted(r.admit());
        assert!(by_evicting);
        drop(place); // the evicted connection's task ends: its place was already handed over
        assert_eq!(r.open(), 1);
        assert!(!a.request_complete(), "an evicted connection's request is not handled");
    }

    #[test]
    fn bytes_on_an_idle_connection_make_it_incomplete_from_now() {
        let r = registry(3);
        let (old, _) = admitted(r.admit());
        let (idle, _) = admitted(r.admit());
        assert!(idle.head_received(true));
        idle.answered();
        idle.bytes_arrived();
        let (_young, _) = admitted(r.admit());
        let (_, _) = admitted(r.admit());
        assert!(old.evicted().is_cancelled(), "the older incomplete one first");
        assert!(!idle.evicted().is_cancelled());
        let (_, _) = admitted(r.admit());
        assert!(
            idle.evicted().is_cancelled(),
            "then the formerly idle one, incomplete since its bytes"
        );
    }
}
