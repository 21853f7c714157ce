//! Webhooks as Clerk sends them through Svix: each write queues the events Clerk emits
//! (envelope `{data, event_attributes, instance_id, object: "event", timestamp, type}`, the
//! shapes of `webhooks-2025-04-15.yml`), signed per attempt with the test's `whsec_` secret
//! (orgsync's own [`WebhookVerifier::sign`]) and POSTed to the receiver the test set.
//!
//! Like Svix, delivery is late (a random delay in a range), possibly out of order (`shuffle`),
//! sometimes twice with the same `svix-id` (`duplicate_probability`), and retried on a non-2xx
//! answer or a connection error (`retries` times, `retry_delay` apart). All randomness comes
//! from one seeded generator. In hold mode events wait until [`FakeClerk::release_webhooks`]
//! (or a test takes them with [`FakeClerk::take_held_webhooks`] and delivers them itself).
//! Without a receiver (and not held), events are only recorded ([`FakeClerk::emitted_webhooks`]).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use orgsync::clerk::signature::WebhookVerifier;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::FakeClerk;

/// How the fake delivers webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Each delivery waits a uniform random time in `delay_min..=delay_max`.
    pub delay_min: Duration,
    pub delay_max: Duration,
    /// Deliver in random order (each event waits its own delay); otherwise in emission order.
    pub shuffle: bool,
    /// Chance that an event is delivered a second time (same `svix-id`, same body).
    pub duplicate_probability: f64,
    pub seed: u64,
    /// Keep events until the test releases them.
    pub hold: bool,
    /// Further attempts after a non-2xx answer or a connection error.
    pub retries: u32,
    pub retry_delay: Duration,
    /// The envelope `timestamp` in milliseconds (as some Clerk deliveries carry it); the spec's
    /// examples and orgsync's fixtures use seconds, the default.
    pub timestamp_in_ms: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            delay_min: Duration::ZERO,
            delay_max: Duration::ZERO,
            shuffle: false,
            duplicate_probability: 0.0,
            seed: 0,
            hold: false,
            retries: 3,
            retry_delay: Duration::from_millis(50),
            timestamp_in_ms: false,
        }
    }
}

impl WebhookSettings {
    /// Late (up to `max`), shuffled, duplicated with probability `duplicates`: Svix on a bad day.
    pub fn unruly(max: Duration, duplicates: f64, seed: u64) -> Self {
        Self {
            delay_max: max,
            shuffle: true,
            duplicate_probability: duplicates,
            seed,
            ..Self::default()
        }
    }
}

/// One emitted event.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    pub svix_id: String,
    pub event_type: String,
    /// The exact body that is signed and sent.
    pub body: String,
}

impl WebhookEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// One finished delivery (duplicates are separate deliveries).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub svix_id: String,
    pub event_type: String,
    /// The last attempt's status; `None` when it could not connect.
    pub status: Option<u16>,
    pub attempts: u32,
}

impl Delivery {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Clone)]
struct Receiver {
    url: String,
    signer: Arc<WebhookVerifier>,
}

struct Scheduled {
    event: WebhookEvent,
    due: Instant,
    receiver: Receiver,
    retries: u32,
    retry_delay: Duration,
}

struct HubState {
    receiver: Option<Receiver>,
    settings: WebhookSettings,
    rng: StdRng,
    emitted: Vec<WebhookEvent>,
    held: Vec<WebhookEvent>,
    pending: usize,
    deliveries: Vec<Delivery>,
    next_id: u64,
    last_due: Instant,
}

pub(super) struct Hub {
    state: Mutex<HubState>,
    http: reqwest::Client,
    in_order: mpsc::UnboundedSender<Scheduled>,
}

impl Hub {
    /// A hub with its in-order delivery worker (which ends with the hub).
    pub(super) fn start() -> Arc<Self> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Scheduled>();
        let hub = Arc::new(Self {
            state: Mutex::new(HubState {
                receiver: None,
                settings: WebhookSettings::default(),
                rng: StdRng::seed_from_u64(0),
                emitted: Vec::new(),
                held: Vec::new(),
                pending: 0,
                deliveries: Vec::new(),
                next_id: 0,
                last_due: Instant::now(),
            }),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a webhook client"),
            in_order: tx,
        });
        let weak: Weak<Self> = Arc::downgrade(&hub);
        tokio::spawn(async move {
            while let Some(s) = rx.recv().await {
                tokio::time::sleep_until(s.due).await;
                let Some(hub) = weak.upgrade() else { return };
                hub.deliver(s).await;
            }
        });
        hub
    }

    /// Queues an event of `event_type` about `data`, happening at `at_ms` (the fake's clock).
    pub(super) fn emit(self: &Arc<Self>, event_type: &str, data: &Value, at_ms: i64) {
        let mut st = self.state.lock().unwrap();
        st.next_id += 1;
        let timestamp = if st.settings.timestamp_in_ms {
            at_ms
        } else {
            at_ms.div_euclid(1000)
        };
        let body = json!({
            "data": data,
            "event_attributes": {"http_request": {"client_ip": "203.0.113.7", "user_agent": "orgsync-fake-clerk"}},
            "instance_id": "ins_3fakeClerkInstance00000001",
            "object": "event",
            "timestamp": timestamp,
            "type": event_type,
        });
        let event = WebhookEvent {
            svix_id: format!("msg_3fake{:022}", st.next_id),
            event_type: event_type.to_owned(),
            body: body.to_string(),
        };
        st.emitted.push(event.clone());
        if st.settings.hold {
            st.held.push(event);
        } else {
            self.dispatch(&mut st, vec![event]);
        }
    }

    /// Schedules `events` (with duplicates, shuffled or in order) to the receiver, if any.
    fn dispatch(self: &Arc<Self>, st: &mut HubState, events: Vec<WebhookEvent>) {
        let Some(receiver) = st.receiver.clone() else {
            return;
        };
        let p = st.settings.duplicate_probability.clamp(0.0, 1.0);
        let mut copies = Vec::with_capacity(events.len());
        for e in events {
            let twice = p > 0.0 && st.rng.random_bool(p);
            copies.push(e.clone());
            if twice {
                copies.push(e);
            }
        }
        if st.settings.shuffle {
            copies.shuffle(&mut st.rng);
        }
        let (min, max) = (st.settings.delay_min, st.settings.delay_max.max(st.settings.delay_min));
        for event in copies {
            let delay = if max > min {
                Duration::from_nanos(st.rng.random_range(min.as_nanos() as u64..=max.as_nanos() as u64))
            } else {
                min
            };
            st.pending += 1;
            let scheduled = Scheduled {
                event,
                due: Instant::now() + delay,
                receiver: receiver.clone(),
                retries: st.settings.retries,
                retry_delay: st.settings.retry_delay,
            };
            if st.settings.shuffle {
                let hub = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(scheduled.due).await;
                    hub.deliver(scheduled).await;
                });
            } else {
                let mut scheduled = scheduled;
                scheduled.due = scheduled.due.max(st.last_due);
                st.last_due = scheduled.due;
                self.in_order.send(scheduled).expect("the delivery worker runs");
            }
        }
    }

    async fn deliver(&self, s: Scheduled) {
        let mut attempts = 0;
        let status = loop {
            attempts += 1;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let headers = s.receiver.signer.sign(&s.event.svix_id, now, s.event.body.as_bytes());
            let answer = self
                .http
                .post(&s.receiver.url)
                .headers(headers)
                .header("content-type", "application/json")
                .body(s.event.body.clone())
                .send()
                .await;
            let status = answer.ok().map(|r| r.status().as_u16());
            if status.is_some_and(|c| (200..300).contains(&c)) || attempts > s.retries {
                break status;
            }
            tokio::time::sleep(s.retry_delay).await;
        };
        let mut st = self.state.lock().unwrap();
        st.deliveries.push(Delivery {
            svix_id: s.event.svix_id,
            event_type: s.event.event_type,
            status,
            attempts,
        });
        st.pending -= 1;
    }
}

impl FakeClerk {
    fn hub(&self) -> Arc<Hub> {
        self.world().hooks.clone()
    }

    /// Webhooks go to `url` (orgsync's `/webhooks/clerk`), signed with `secret` (`whsec_...`).
    pub fn set_webhook_receiver(&self, url: &str, secret: &str) {
        let signer = WebhookVerifier::parse(secret).expect("a whsec_ secret");
        let hub = self.hub();
        hub.state.lock().unwrap().receiver = Some(Receiver {
            url: url.to_owned(),
            signer: Arc::new(signer),
        });
    }

    /// Sets how webhooks are delivered from now on (reseeding the generator).
    pub fn configure_webhooks(&self, settings: WebhookSettings) {
        let hub = self.hub();
        let mut st = hub.state.lock().unwrap();
        st.rng = StdRng::seed_from_u64(settings.seed);
        st.settings = settings;
    }

    /// Holds (true) or stops holding (false) new events; stopping does not release held ones.
    pub fn hold_webhooks(&self, hold: bool) {
        self.hub().state.lock().unwrap().settings.hold = hold;
    }

    /// Sends every held event (with the configured delays, duplicates and shuffling).
    pub fn release_webhooks(&self) {
        let hub = self.hub();
        let mut st = hub.state.lock().unwrap();
        let held = std::mem::take(&mut st.held);
        hub.dispatch(&mut st, held);
    }

    /// Takes the held events out of the fake, for a test to deliver in an order of its own.
    pub fn take_held_webhooks(&self) -> Vec<WebhookEvent> {
        std::mem::take(&mut self.hub().state.lock().unwrap().held)
    }

    /// Every event emitted so far, in emission order (held, sent or neither).
    pub fn emitted_webhooks(&self) -> Vec<WebhookEvent> {
        self.hub().state.lock().unwrap().emitted.clone()
    }

    /// Waits until every released event is delivered (or given up), then returns every delivery
    /// so far. Held events are not waited for. Panics after 30 s.
    pub async fn webhooks_delivered(&self) -> Vec<Delivery> {
        let hub = self.hub();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let st = hub.state.lock().unwrap();
                if st.pending == 0 {
                    return st.deliveries.clone();
                }
                assert!(
                    Instant::now() < deadline,
                    "{} webhooks still undelivered after 30 s",
                    st.pending
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Releases the held events and waits for every delivery ([`Self::webhooks_delivered`]).
    pub async fn drain_webhooks(&self) -> Vec<Delivery> {
        self.release_webhooks();
        self.webhooks_delivered().await
    }
}
