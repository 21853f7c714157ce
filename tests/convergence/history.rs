//! The histories of the convergence property: random operations on hotels, users, memberships,
//! roles, permissions, invitations and user status, turned into the Clerk events a real instance
//! would send.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;

use super::common::access_events::*;
use super::common::events::*;

pub const ORGS: u8 = 4;
pub const USERS: u8 = 5;
const PERMS: u8 = 4;
const ROLES: u8 = 3;
const INVITES: u8 = 3;

#[derive(Debug, Clone)]
pub enum Op {
    CreateOrg(u8),
    RenameOrg(u8),
    DeleteOrg(u8),
    CreateUser(u8),
    UpdateUser(u8),
    DeleteUser(u8),
    Invite(u8, u8, bool),
    ChangeRole(u8, u8),
    /// Remove the member, and with `true` invite them again right after (a new membership).
    Remove(u8, u8, bool),
    /// Give the member the role of this slot (0: admin, 1: member, 2..: the custom roles).
    SetRole(u8, u8, u8),
    /// Flip the user's banned (false) or locked (true) flag.
    FlipStatus(u8, bool),
    CreatePerm(u8),
    UpdatePerm(u8),
    DeletePerm(u8),
    /// Create the role of a slot (a new id each time, the slot's key), with the permissions of
    /// the mask.
    CreateRole(u8, u8),
    EditRole(u8, u8),
    DeleteRole(u8),
    /// Invite an email address of this slot to the hotel.
    InviteEmail(u8, u8),
    /// Settle the invitation of a slot: accepted (true) or revoked (false).
    Settle(u8, bool),
}

pub fn op() -> impl Strategy<Value = Op> {
    let o = 0..ORGS;
    let u = 0..USERS;
    prop_oneof![
        4 => o.clone().prop_map(Op::CreateOrg),
        3 => o.clone().prop_map(Op::RenameOrg),
        1 => o.clone().prop_map(Op::DeleteOrg),
        4 => u.clone().prop_map(Op::CreateUser),
        3 => u.clone().prop_map(Op::UpdateUser),
        1 => u.clone().prop_map(Op::DeleteUser),
        10 => (o.clone(), u.clone(), any::<bool>()).prop_map(|(o, u, a)| Op::Invite(o, u, a)),
        6 => (o.clone(), u.clone()).prop_map(|(o, u)| Op::ChangeRole(o, u)),
        4 => (o.clone(), u.clone(), any::<bool>()).prop_map(|(o, u, again)| Op::Remove(o, u, again)),
        5 => (o.clone(), u.clone(), 0..ROLES + 2).prop_map(|(o, u, r)| Op::SetRole(o, u, r)),
        3 => (u, any::<bool>()).prop_map(|(u, l)| Op::FlipStatus(u, l)),
        3 => (0..PERMS).prop_map(Op::CreatePerm),
        2 => (0..PERMS).prop_map(Op::UpdatePerm),
        2 => (0..PERMS).prop_map(Op::DeletePerm),
        4 => (0..ROLES, any::<u8>()).prop_map(|(r, m)| Op::CreateRole(r, m)),
        3 => (0..ROLES, any::<u8>()).prop_map(|(r, m)| Op::EditRole(r, m)),
        2 => (0..ROLES).prop_map(Op::DeleteRole),
        4 => (o, 0..INVITES).prop_map(|(o, i)| Op::InviteEmail(o, i)),
        5 => (0..INVITES, any::<bool>()).prop_map(|(i, a)| Op::Settle(i, a)),
    ]
}

#[derive(Default)]
struct World {
    orgs: BTreeMap<u8, (bool, i64)>,                  // live?, created_at
    users: BTreeMap<u8, (bool, i64)>,                 // live?, created_at
    members: BTreeMap<(u8, u8), (String, i64, bool)>, // live membership: id, created_at, admin?
    next_membership: u32,
    /// A member's role, when set by SetRole (else admin/member from `members`).
    roles_of: BTreeMap<(u8, u8), String>,
    status: BTreeMap<u8, (bool, bool)>,         // banned, locked
    perms: BTreeMap<u8, (u32, i64, i64, bool)>, // generation, created_at, updated_at, live?
    roles: BTreeMap<u8, (u32, i64, u8)>,        // live role of a slot: generation, created_at, mask
    role_generation: BTreeMap<u8, u32>,
    invites: BTreeMap<u8, (String, u8, i64, bool)>, // id, hotel, created_at, pending?
    next_invite: u32,
}

fn perm_id(p: u8, generation: u32) -> String {
    format!("perm_2prop{p}x{generation:015}")
}
fn role_id(r: u8, generation: u32) -> String {
    format!("role_2prop{r}x{generation:015}")
}
fn role_key(slot: u8) -> String {
    match slot {
        0 => "org:admin".into(),
        1 => "org:member".into(),
        s => format!("org:custom{}", s - 2),
    }
}

/// The live permissions of the mask, as Clerk embeds them in a role.
fn embedded(w: &World, mask: u8) -> Vec<Value> {
    w.perms
        .iter()
        .filter(|(p, x)| x.3 && mask & (1 << **p) != 0)
        .map(|(p, x)| permission_data(&perm_id(*p, x.0), &format!("org:perm{p}"), x.1, x.2))
        .collect()
}

/// A membership event carrying the role's own permission keys, as Clerk sends them.
#[allow(clippy::too_many_arguments)]
fn member_event(kind: &str, id: &str, o: u8, u: u8, role: &str, created: i64, updated: i64, ts: i64) -> Value {
    let own = format!("{role}:own");
    let mut e = with_permissions(
        membership(kind, id, &org_id(o), &user_id(u), role, created, updated, ts),
        &[own.as_str()],
    );
    e["data"]["role_name"] = format!("Role {role}").into();
    e
}

pub fn org_id(o: u8) -> String {
    format!("org_2prop{o:021}")
}
pub fn user_id(u: u8) -> String {
    format!("user_2prop{u:020}")
}

fn invite(w: &mut World, events: &mut Vec<Value>, o: u8, u: u8, admin: bool, t: i64, ts: i64) {
    w.next_membership += 1;
    let id = format!("orgmem_2prop{:019}", w.next_membership);
    let role = if admin { "org:admin" } else { "org:member" };
    events.push(member_event(
        "organizationMembership.created",
        &id,
        o,
        u,
        role,
        t,
        t,
        ts,
    ));
    w.members.insert((o, u), (id, t, admin));
    w.roles_of.remove(&(o, u));
}

/// Turns abstract operations into the Clerk events a real instance would send, skipping
/// operations that are impossible at that point (e.g. renaming a deleted hotel).
pub fn history(ops: &[Op], steps: &[u16]) -> Vec<Value> {
    let mut w = World::default();
    let mut t = 1_764_000_000_000i64;
    let mut events = Vec::new();
    // Most hotels and users exist from the start, so memberships have something to join; the
    // last of each is created (or not) by the random operations.
    // Likewise most permissions, and roles holding them, so that role edits, permission
    // deletions and members' role changes have something to act on.
    let setup = (0..ORGS - 1)
        .map(Op::CreateOrg)
        .chain((0..USERS - 1).map(Op::CreateUser))
        .chain((0..PERMS - 1).map(Op::CreatePerm))
        .chain((0..ROLES - 1).map(|r| Op::CreateRole(r, 0b1011 >> r)));
    let ops: Vec<Op> = setup.chain(ops.iter().cloned()).collect();
    for (i, op) in ops.iter().enumerate() {
        t += 1 + i64::from(steps[i % steps.len()]);
        // Envelope timestamps: seconds for some events, milliseconds for others, as Clerk's
        // examples and docs disagree.
        let ts = if i % 2 == 0 { t / 1000 } else { t };
        let live_org = |w: &World, o: u8| w.orgs.get(&o).is_some_and(|x| x.0);
        let live_user = |w: &World, u: u8| w.users.get(&u).is_some_and(|x| x.0);
        match *op {
            Op::CreateOrg(o) if !w.orgs.contains_key(&o) => {
                w.orgs.insert(o, (true, t));
                events.push(organization(
                    "organization.created",
                    &org_id(o),
                    &format!("Hotel {o}"),
                    t,
                    t,
                    ts,
                ));
            }
            Op::RenameOrg(o) if live_org(&w, o) => {
                let created = w.orgs[&o].1;
                events.push(organization(
                    "organization.updated",
                    &org_id(o),
                    &format!("Hotel {o} @{t}"),
                    created,
                    t,
                    ts,
                ));
            }
            Op::DeleteOrg(o) if live_org(&w, o) => {
                w.orgs.get_mut(&o).unwrap().0 = false;
                w.members.retain(|(mo, _), _| *mo != o);
                w.invites.retain(|_, x| x.1 != o);
                events.push(organization_deleted(&org_id(o), ts));
            }
            Op::CreateUser(u) if !w.users.contains_key(&u) => {
                w.users.insert(u, (true, t));
                events.push(with_status(
                    user(
                        "user.created",
                        &user_id(u),
                        &format!("User {u}"),
                        &format!("u{u}@x.test"),
                        t,
                        t,
                        ts,
                    ),
                    false,
                    false,
                ));
            }
            Op::UpdateUser(u) if live_user(&w, u) => {
                let created = w.users[&u].1;
                let email = format!("u{u}.{t}@x.test");
                let (banned, locked) = w.status.get(&u).copied().unwrap_or_default();
                events.push(with_status(
                    user(
                        "user.updated",
                        &user_id(u),
                        &format!("User {u} @{t}"),
                        &email,
                        created,
                        t,
                        ts,
                    ),
                    banned,
                    locked,
                ));
            }
            Op::FlipStatus(u, lock) if live_user(&w, u) => {
                let created = w.users[&u].1;
                let s = w.status.entry(u).or_default();
                if lock {
                    s.1 = !s.1;
                } else {
                    s.0 = !s.0;
                }
                let (banned, locked) = *s;
                events.push(with_status(
                    user(
                        "user.updated",
                        &user_id(u),
                        &format!("User {u} @{t}"),
                        &format!("u{u}@x.test"),
                        created,
                        t,
                        ts,
                    ),
                    banned,
                    locked,
                ));
            }
            Op::DeleteUser(u) if live_user(&w, u) => {
                w.users.get_mut(&u).unwrap().0 = false;
                w.members.retain(|(_, mu), _| *mu != u);
                events.push(user_deleted(&user_id(u), ts));
            }
            Op::Invite(o, u, admin) if live_org(&w, o) && live_user(&w, u) && !w.members.contains_key(&(o, u)) => {
                invite(&mut w, &mut events, o, u, admin, t, ts);
            }
            Op::ChangeRole(o, u) if w.members.contains_key(&(o, u)) => {
                let m = w.members.get_mut(&(o, u)).unwrap();
                m.2 = !m.2;
                let role = if m.2 { "org:admin" } else { "org:member" };
                events.push(member_event(
                    "organizationMembership.updated",
                    &m.0,
                    o,
                    u,
                    role,
                    m.1,
                    t,
                    ts,
                ));
                w.roles_of.remove(&(o, u));
            }
            Op::SetRole(o, u, slot) if w.members.contains_key(&(o, u)) => {
                let m = w.members.get_mut(&(o, u)).unwrap();
                m.2 = slot == 0;
                let role = role_key(slot);
                events.push(member_event(
                    "organizationMembership.updated",
                    &m.0,
                    o,
                    u,
                    &role,
                    m.1,
                    t,
                    ts,
                ));
                w.roles_of.insert((o, u), role);
            }
            Op::CreatePerm(p) if !w.perms.get(&p).is_some_and(|x| x.3) => {
                let generation = w.perms.get(&p).map_or(0, |x| x.0 + 1);
                w.perms.insert(p, (generation, t, t, true));
                let id = perm_id(p, generation);
                events.push(permission("permission.created", &id, &format!("org:perm{p}"), t, t, ts));
            }
            Op::UpdatePerm(p) if w.perms.get(&p).is_some_and(|x| x.3) => {
                let x = w.perms.get_mut(&p).unwrap();
                x.2 = t;
                let id = perm_id(p, x.0);
                events.push(permission(
                    "permission.updated",
                    &id,
                    &format!("org:perm{p}"),
                    x.1,
                    t,
                    ts,
                ));
            }
            Op::DeletePerm(p) if w.perms.get(&p).is_some_and(|x| x.3) => {
                let x = w.perms.get_mut(&p).unwrap();
                x.3 = false;
                events.push(permission_deleted(&perm_id(p, x.0), ts));
            }
            Op::CreateRole(r, mask) if !w.roles.contains_key(&r) => {
                let generation = w.role_generation.get(&r).map_or(0, |g| g + 1);
                w.role_generation.insert(r, generation);
                w.roles.insert(r, (generation, t, mask));
                let perms = embedded(&w, mask);
                events.push(role(
                    "role.created",
                    &role_id(r, generation),
                    &role_key(r + 2),
                    perms,
                    t,
                    t,
                    ts,
                ));
            }
            Op::EditRole(r, mask) if w.roles.contains_key(&r) => {
                let x = w.roles.get_mut(&r).unwrap();
                x.2 = mask;
                let (generation, created) = (x.0, x.1);
                let perms = embedded(&w, mask);
                events.push(role(
                    "role.updated",
                    &role_id(r, generation),
                    &role_key(r + 2),
                    perms,
                    created,
                    t,
                    ts,
                ));
            }
            Op::DeleteRole(r) if w.roles.contains_key(&r) => {
                let (generation, _, _) = w.roles.remove(&r).unwrap();
                events.push(role_deleted(&role_id(r, generation), ts));
            }
            Op::InviteEmail(o, i) if live_org(&w, o) && !w.invites.get(&i).is_some_and(|x| x.3) => {
                w.next_invite += 1;
                let id = format!("orginv_2prop{:019}", w.next_invite);
                let kind = "organizationInvitation.created";
                let email = format!("guest{i}@x.test");
                events.push(invitation(
                    kind,
                    &id,
                    &org_id(o),
                    &email,
                    "org:member",
                    Some(t),
                    Some(t),
                    ts,
                ));
                w.invites.insert(i, (id, o, t, true));
            }
            Op::Settle(i, accept) if w.invites.get(&i).is_some_and(|x| x.3 && live_org(&w, x.1)) => {
                let x = w.invites.get_mut(&i).unwrap();
                x.3 = false;
                let (id, o, created) = (x.0.clone(), x.1, x.2);
                let email = format!("guest{i}@x.test");
                events.push(if accept {
                    let kind = "organizationInvitation.accepted";
                    let mut e = invitation(kind, &id, &org_id(o), &email, "org:member", Some(created), Some(t), ts);
                    e["data"]["status"] = "accepted".into();
                    e["data"]["user_id"] = user_id(0).into();
                    e
                } else {
                    // As Clerk sends it: no created_at/updated_at, versioned by the event time.
                    let kind = "organizationInvitation.revoked";
                    let mut e = invitation(kind, &id, &org_id(o), &email, "org:member", None, None, ts);
                    e["data"]["status"] = "revoked".into();
                    e
                });
            }
            Op::Remove(o, u, again) if w.members.contains_key(&(o, u)) => {
                let (id, created, admin) = w.members.remove(&(o, u)).unwrap();
                let role = w
                    .roles_of
                    .remove(&(o, u))
                    .unwrap_or_else(|| if admin { "org:admin" } else { "org:member" }.to_owned());
                // The payload is the membership as it was last updated; the envelope dates the removal.
                let last_update = events
                    .iter()
                    .filter(|e| e["data"]["id"] == serde_json::json!(id))
                    .map(|e| e["data"]["updated_at"].as_i64().unwrap())
                    .max()
                    .unwrap_or(created);
                let kind = "organizationMembership.deleted";
                events.push(member_event(kind, &id, o, u, &role, created, last_update, ts));
                if again {
                    t += 1;
                    invite(&mut w, &mut events, o, u, !admin, t, t);
                }
            }
            _ => {}
        }
    }
    events
}
