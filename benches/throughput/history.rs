//! Webhook histories: Clerk events shaped as `fixtures/webhooks/*.json`, with ids and versions
//! of the bench's own, built in the order Clerk would emit them, together with the rows that
//! order leaves ([`Expected`]). Delivered in any order, with duplicates, they must leave the
//! same rows: that is what the reconcile and end-to-end phases check.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use serde_json::{json, Value};
use sqlx::PgPool;

/// A fixture event (`fixtures/webhooks/<name>.json`), parsed.
pub fn fixture(name: &str) -> Value {
    let text = match name {
        "organization.created" => include_str!("../../fixtures/webhooks/organization.created.json"),
        "organization.updated" => include_str!("../../fixtures/webhooks/organization.updated.json"),
        "organization.deleted" => include_str!("../../fixtures/webhooks/organization.deleted.json"),
        "user.created" => include_str!("../../fixtures/webhooks/user.created.json"),
        "user.updated" => include_str!("../../fixtures/webhooks/user.updated.json"),
        "user.deleted" => include_str!("../../fixtures/webhooks/user.deleted.json"),
        "organizationMembership.created" => include_str!("../../fixtures/webhooks/organizationMembership.created.json"),
        "organizationMembership.updated" => include_str!("../../fixtures/webhooks/organizationMembership.updated.json"),
        "organizationMembership.deleted" => include_str!("../../fixtures/webhooks/organizationMembership.deleted.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).unwrap()
}

pub fn org_id(i: usize) -> String {
    format!("org_2bench{i:020}")
}

pub fn user_id(i: usize) -> String {
    format!("user_2bench{i:020}")
}

fn membership_id(i: usize) -> String {
    format!("orgmem_2bench{i:020}")
}

/// The rows a history leaves, as the bench compares them: every hotel and user it names (live
/// with its name, or a tombstone: `None`), and the live memberships with their role.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    pub hotels: BTreeMap<String, Option<String>>,
    /// The first name of a live user.
    pub users: BTreeMap<String, Option<String>>,
    /// (hotel, user) → role key.
    pub memberships: BTreeMap<(String, String), String>,
}

impl Expected {
    /// The same view of the rows in the database `pool` points at.
    pub async fn read(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let hotels = sqlx::query_as::<_, (String, Option<String>)>(
            "select id, case when deleted_at is null then name end from hotels",
        )
        .fetch_all(pool)
        .await?;
        let users = sqlx::query_as::<_, (String, Option<String>)>(
            "select id, case when deleted_at is null then coalesce(first_name, '') end from users",
        )
        .fetch_all(pool)
        .await?;
        let memberships = sqlx::query_as::<_, (String, String, String)>(
            "select hotel_id, user_id, role from memberships where deleted_at is null",
        )
        .fetch_all(pool)
        .await?;
        Ok(Self {
            hotels: hotels.into_iter().collect(),
            users: users.into_iter().collect(),
            memberships: memberships.into_iter().map(|(h, u, r)| ((h, u), r)).collect(),
        })
    }

    /// A one-line account of how `self` (what is) differs from `want`, for failure messages.
    pub fn difference(&self, want: &Expected) -> String {
        fn count<K: Ord, V: PartialEq>(have: &BTreeMap<K, V>, want: &BTreeMap<K, V>) -> (usize, usize, usize) {
            let missing = want.keys().filter(|k| !have.contains_key(k)).count();
            let extra = have.keys().filter(|k| !want.contains_key(k)).count();
            let differ = want
                .iter()
                .filter(|(k, v)| have.get(k).is_some_and(|h| h != *v))
                .count();
            (missing, extra, differ)
        }
        let show = |name: &str, (m, e, d): (usize, usize, usize)| format!("{name}: {m} missing, {e} extra, {d} differ");
        format!(
            "{}; {}; {}",
            show("hotels", count(&self.hotels, &want.hotels)),
            show("users", count(&self.users, &want.users)),
            show("live memberships", count(&self.memberships, &want.memberships))
        )
    }
}

/// A history under construction: each event is one millisecond after the previous one.
pub struct History {
    /// The events, in the order Clerk emitted them.
    pub events: Vec<Value>,
    /// The rows the events leave when applied in that order.
    pub expected: Expected,
    clock: i64,
    created: HashMap<String, i64>,
}

/// Where a membership stands in a history being built.
#[derive(Clone)]
struct Member {
    id: String,
    org: usize,
    user: usize,
    role: &'static str,
}

impl History {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            expected: Expected::default(),
            clock: 1_764_000_000_000,
            created: HashMap::new(),
        }
    }

    /// Appends a `kind` event at the next tick, `edit` filling its `data`; returns the tick.
    fn push(&mut self, kind: &str, edit: impl FnOnce(&mut Value, i64)) -> i64 {
        self.clock += 1;
        let now = self.clock;
        let mut v = fixture(kind);
        v["timestamp"] = json!(now);
        edit(&mut v["data"], now);
        self.events.push(v);
        now
    }

    /// The creation time of `id` (first seen now when new).
    fn created_at(&mut self, id: &str) -> i64 {
        let next = self.clock + 1;
        *self.created.entry(id.to_owned()).or_insert(next)
    }

    fn org(&mut self, kind: &str, i: usize, name: String) {
        let (id, created) = (org_id(i), self.created_at(&org_id(i)));
        let named = name.clone();
        self.push(kind, |d, now| {
            d["id"] = json!(id);
            d["name"] = json!(named);
            d["slug"] = json!(format!("bench-{i}"));
            d["created_at"] = json!(created);
            d["updated_at"] = json!(now);
        });
        self.expected.hotels.insert(org_id(i), Some(name));
    }

    fn user(&mut self, kind: &str, i: usize, first_name: String) {
        let (id, created) = (user_id(i), self.created_at(&user_id(i)));
        let named = first_name.clone();
        self.push(kind, |d, now| {
            d["id"] = json!(id);
            d["first_name"] = json!(named);
            d["created_at"] = json!(created);
            d["updated_at"] = json!(now);
        });
        self.expected.users.insert(user_id(i), Some(first_name));
    }

    fn member(&mut self, kind: &str, m: &Member) {
        let created = self.created_at(&m.id);
        let (id, org, user, role) = (m.id.clone(), org_id(m.org), user_id(m.user), m.role);
        self.push(kind, |d, now| {
            d["id"] = json!(id);
            d["role"] = json!(role);
            d["organization"]["id"] = json!(org);
            d["public_user_data"]["user_id"] = json!(user);
            d["created_at"] = json!(created);
            d["updated_at"] = json!(now);
        });
        let key = (org_id(m.org), user_id(m.user));
        if kind == "organizationMembership.deleted" {
            self.expected.memberships.remove(&key);
        } else {
            self.expected.memberships.insert(key, role.to_owned());
        }
    }

    fn delete_org(&mut self, i: usize) {
        let id = org_id(i);
        self.push("organization.deleted", |d, _| d["id"] = json!(id));
        let id = org_id(i);
        self.expected.memberships.retain(|(h, _), _| *h != id);
        self.expected.hotels.insert(id, None);
    }

    fn delete_user(&mut self, i: usize) {
        let id = user_id(i);
        self.push("user.deleted", |d, _| d["id"] = json!(id));
        let id = user_id(i);
        self.expected.memberships.retain(|(_, u), _| *u != id);
        self.expected.users.insert(id, None);
    }

    /// The reconcile phase's history (the same mix and sizes every round, so that its figures
    /// compare): `1000·scale` organizations, `5000·scale` users and `10000·scale` memberships
    /// created; half the organizations renamed, a fifth of the users and a tenth of the
    /// memberships updated; 2 % of the organizations and of the users deleted.
    pub fn reconcile_mix(scale: f64, rng: &mut StdRng) -> Self {
        let (orgs, users, members) = sizes(scale);
        let mut h = Self::new();
        for i in 0..orgs {
            h.org("organization.created", i, format!("Hotel {i}"));
        }
        for i in 0..users {
            h.user("user.created", i, format!("Person {i}"));
        }
        let pairs = random_pairs(rng, orgs, users, members);
        for m in &pairs {
            h.member("organizationMembership.created", m);
        }
        for i in 0..orgs / 2 {
            h.org("organization.updated", i, format!("Renamed {i}"));
        }
        for i in 0..users / 5 {
            h.user("user.updated", i, format!("Renamed {i}"));
        }
        for m in pairs.iter().take(members / 10) {
            let m = Member {
                role: "org:admin",
                ..m.clone()
            };
            h.member("organizationMembership.updated", &m);
        }
        for i in 0..orgs / 50 {
            h.delete_org(orgs - 1 - i);
        }
        for i in 0..users / 50 {
            h.delete_user(users - 1 - i);
        }
        h
    }

    /// The end-to-end phase's history: the same creations as [`Self::reconcile_mix`], then the
    /// updates and deletes interleaved at random (an entity may change several times; nothing
    /// happens to it once deleted): organization renames, user renames, role changes, membership
    /// removals, organization and user deletes.
    pub fn random_burst(scale: f64, rng: &mut StdRng) -> Self {
        let (orgs, users, members) = sizes(scale);
        let mut h = Self::new();
        let mut creations: Vec<(bool, usize)> = (0..orgs)
            .map(|i| (true, i))
            .chain((0..users).map(|i| (false, i)))
            .collect();
        creations.shuffle(rng);
        for (is_org, i) in creations {
            if is_org {
                h.org("organization.created", i, format!("Hotel {i}"));
            } else {
                h.user("user.created", i, format!("Person {i}"));
            }
        }
        let mut live: Vec<Option<Member>> = random_pairs(rng, orgs, users, members).into_iter().map(Some).collect();
        for m in live.iter().flatten() {
            h.member("organizationMembership.created", m);
        }
        #[derive(Clone, Copy)]
        enum Op {
            RenameOrg,
            RenameUser,
            ChangeRole,
            RemoveMember,
            DeleteOrg,
            DeleteUser,
        }
        let mut ops: Vec<Op> = [
            (Op::RenameOrg, orgs / 2),
            (Op::RenameUser, users / 5),
            (Op::ChangeRole, members / 10),
            (Op::RemoveMember, members / 20),
            (Op::DeleteOrg, orgs / 50),
            (Op::DeleteUser, users / 50),
        ]
        .iter()
        .flat_map(|&(op, n)| std::iter::repeat_n(op, n))
        .collect();
        ops.shuffle(rng);
        let (mut orgs_gone, mut users_gone) = (HashSet::new(), HashSet::new());
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::RenameOrg | Op::DeleteOrg => {
                    let i = rng.random_range(0..orgs);
                    if orgs_gone.contains(&i) {
                        continue;
                    }
                    if matches!(op, Op::DeleteOrg) {
                        orgs_gone.insert(i);
                        live.iter_mut()
                            .filter(|m| m.as_ref().is_some_and(|m| m.org == i))
                            .for_each(|m| *m = None);
                        h.delete_org(i);
                    } else {
                        h.org("organization.updated", i, format!("Renamed {i} ({n})"));
                    }
                }
                Op::RenameUser | Op::DeleteUser => {
                    let i = rng.random_range(0..users);
                    if users_gone.contains(&i) {
                        continue;
                    }
                    if matches!(op, Op::DeleteUser) {
                        users_gone.insert(i);
                        live.iter_mut()
                            .filter(|m| m.as_ref().is_some_and(|m| m.user == i))
                            .for_each(|m| *m = None);
                        h.delete_user(i);
                    } else {
                        h.user("user.updated", i, format!("Renamed {i} ({n})"));
                    }
                }
                Op::ChangeRole | Op::RemoveMember => {
                    let slot = rng.random_range(0..live.len());
                    let Some(m) = live[slot].clone() else { continue };
                    if matches!(op, Op::RemoveMember) {
                        live[slot] = None;
                        h.member("organizationMembership.deleted", &m);
                    } else {
                        let role = if m.role == "org:admin" {
                            "org:member"
                        } else {
                            "org:admin"
                        };
                        let m = Member { role, ..m };
                        h.member("organizationMembership.updated", &m);
                        live[slot] = Some(m);
                    }
                }
            }
        }
        h
    }
}

/// Organizations, users and memberships at `scale`.
fn sizes(scale: f64) -> (usize, usize, usize) {
    (
        ((1_000.0 * scale) as usize).max(1),
        ((5_000.0 * scale) as usize).max(1),
        (10_000.0 * scale) as usize,
    )
}

/// `n` distinct (organization, user) memberships, as members of role `org:member`.
fn random_pairs(rng: &mut StdRng, orgs: usize, users: usize, n: usize) -> Vec<Member> {
    let n = n.min(orgs * users);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (org, user) = (rng.random_range(0..orgs), rng.random_range(0..users));
        if seen.insert((org, user)) {
            out.push(Member {
                id: membership_id(out.len()),
                org,
                user,
                role: "org:member",
            });
        }
    }
    out
}

/// `events` with a `share` of them picked at random appended again.
pub fn with_duplicates<T: Clone>(mut events: Vec<T>, share: f64, rng: &mut StdRng) -> Vec<T> {
    let dups: Vec<T> = events
        .choose_multiple(rng, (events.len() as f64 * share) as usize)
        .cloned()
        .collect();
    events.extend(dups);
    events
}
