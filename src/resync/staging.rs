//! The staging area: what the listings hold, in temporary tables on one dedicated connection,
//! so a run's memory does not grow with the Clerk instance.
//!
//! Each kind of listed object has a [`Table`] (its key columns, its version, and the object as
//! compact JSON that decodes back into the `crate::clerk` type) and implements [`Staged`].
//! Pages stream in with `COPY` ([`copy_page`]); once the listings ended, [`Stage::settle`]
//! keeps one row per key (the newest version; at equal versions the first staged) and indexes
//! it, and objects fetched afterwards by id join through [`Stage::merge`] under the same rule.
//! An object that did not parse is staged with its key and no body: it exists in Clerk, so it
//! is never deleted, and it is never written. Adding a kind is one more [`Table`] and one more
//! [`Staged`] implementation.

use serde::de::DeserializeOwned;
use sqlx::{Connection, PgConnection, PgPool};

use crate::clerk::api::{InvalidItem, Page};
use crate::clerk::{Invitation, Membership, Organization, Permission, Role, RoleSet, User};

/// One staged table: a temporary table named `name`, with the `key` columns (a subset of
/// `columns`), then `version` (null for an object that did not parse) and `body`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Table {
    pub(crate) name: &'static str,
    /// The columns a staged row has, in COPY order: the key, any other column, `version, body`.
    pub(crate) columns: &'static str,
    /// The columns that identify one object.
    pub(crate) key: &'static [&'static str],
}

pub(crate) const HOTELS: Table = Table {
    name: "resync_stage_hotels",
    columns: "id, version, body",
    key: &["id"],
};
pub(crate) const USERS: Table = Table {
    name: "resync_stage_users",
    columns: "id, version, body",
    key: &["id"],
};
/// `user_id` is empty for a membership whose user could not be read: it protects every
/// membership of its hotel from deletion.
pub(crate) const MEMBERSHIPS: Table = Table {
    name: "resync_stage_memberships",
    columns: "hotel_id, user_id, clerk_id, version, body",
    key: &["hotel_id", "user_id"],
};

pub(crate) const ROLES: Table = Table {
    name: "resync_stage_roles",
    columns: "id, version, body",
    key: &["id"],
};
pub(crate) const PERMISSIONS: Table = Table {
    name: "resync_stage_permissions",
    columns: "id, version, body",
    key: &["id"],
};
/// `version` ranks like the rule book: its `updated_at` (else `created_at`, else 0).
pub(crate) const INVITATIONS: Table = Table {
    name: "resync_stage_invitations",
    columns: "id, version, body",
    key: &["id"],
};

pub(crate) const ROLE_SETS: Table = Table {
    name: "resync_stage_role_sets",
    columns: "id, version, body",
    key: &["id"],
};

const TABLES: [Table; 7] = [HOTELS, USERS, MEMBERSHIPS, ROLES, PERMISSIONS, INVITATIONS, ROLE_SETS];

impl Table {
    fn ddl(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .split(", ")
            .map(|c| match c {
                "version" => "version int8".to_owned(),
                "body" => "body text".to_owned(),
                c => format!("{c} text not null"),
            })
            .collect();
        format!("create temp table {} ({})", self.name, cols.join(", "))
    }

    fn landing(&self) -> String {
        format!("{}_landing", self.name)
    }

    fn copy_into(&self, table: &str) -> String {
        format!("copy {table} ({}) from stdin", self.columns)
    }

    fn key_list(&self, alias: &str) -> String {
        let cols: Vec<String> = self.key.iter().map(|k| format!("{alias}.{k}")).collect();
        format!("({})", cols.join(", "))
    }
}

/// An object a listing stages.
pub(crate) trait Staged: DeserializeOwned {
    const TABLE: Table;
    /// Appends the object's row (in `TABLE.columns` order).
    fn row(&self, out: &mut CopyRows);
    /// Appends the row of an object that did not parse, when it carries its key; false when it
    /// does not (then nothing of this kind may be deleted this run).
    fn invalid_row(item: &InvalidItem, out: &mut CopyRows) -> bool;
}

/// The row of an object identified by its `id` alone: `id, version, body`.
fn id_row<T: serde::Serialize>(id: &str, version: i64, object: &T, out: &mut CopyRows) {
    out.push(&[Some(id), Some(&version.to_string()), Some(&body(object))]);
}

/// An object identified by its `id` alone: its invalid row is its id, when it has one.
fn id_only_invalid_row(item: &InvalidItem, out: &mut CopyRows) -> bool {
    item.id.as_deref().map(|id| out.push(&[Some(id), None, None])).is_some()
}

impl Staged for Organization {
    const TABLE: Table = HOTELS;
    fn row(&self, out: &mut CopyRows) {
        id_row(self.id.as_str(), self.updated_at, self, out);
    }
    fn invalid_row(item: &InvalidItem, out: &mut CopyRows) -> bool {
        id_only_invalid_row(item, out)
    }
}

impl Staged for User {
    const TABLE: Table = USERS;
    fn row(&self, out: &mut CopyRows) {
        id_row(self.id.as_str(), self.updated_at, self, out);
    }
    fn invalid_row(item: &InvalidItem, out: &mut CopyRows) -> bool {
        id_only_invalid_row(item, out)
    }
}

impl Staged for Membership {
    const TABLE: Table = MEMBERSHIPS;
    fn row(&self, out: &mut CopyRows) {
        out.push(&[
            Some(self.organization.id.as_str()),
            Some(self.public_user_data.user_id.as_str()),
            Some(&self.id),
            Some(&self.updated_at.to_string()),
            Some(&body(self)),
        ]);
    }
    fn invalid_row(item: &InvalidItem, out: &mut CopyRows) -> bool {
        match &item.organization_id {
            Some(h) => {
                out.push(&[
                    Some(h),
                    Some(item.user_id.as_deref().unwrap_or("")),
                    Some(""),
                    None,
                    None,
                ]);
                true
            }
            None => false,
        }
    }
}

impl Staged for Permission {
    const TABLE: Table = PERMISSIONS;
    fn row(&self, out: &mut CopyRows) {
        id_row(self.id.as_str(), self.updated_at, self, out);
    }
    fn invalid_row(item: &InvalidItem, out: &mut CopyRows) -> bool {
        id_only_invalid_row(item, out)
    }
}

impl Staged for Role {
    const TABLE: Table = ROLES;
    fn row(&self, out: &mut CopyRows) {
        id_row(self.id.as_str(), self.updated_at, self, out);
    }
    fn invalid_row(item: &InvalidItem, out: &mut CopyRows) -> bool {
        id_only_invalid_row(item, out)
    }
}

impl Staged for RoleSet {
    const TABLE: Table = ROLE_SETS;
    fn row(&self, out: &mut CopyRows) {
        id_row(self.id.as_str(), self.updated_at, self, out);
    }
    fn invalid_row(item: &InvalidItem, out: &mut CopyRows) -> bool {
        id_only_invalid_row(item, out)
    }
}

/// The version an invitation is written with by the resync: its `updated_at`, else its
/// `created_at`, else 0 (outranked by any event about it).
pub(crate) fn invitation_version(i: &Invitation) -> i64 {
    i.updated_at.or(i.created_at).unwrap_or(0)
}

impl Staged for Invitation {
    const TABLE: Table = INVITATIONS;
    fn row(&self, out: &mut CopyRows) {
        // The type has no `url` (it carries the acceptance token): it is never staged.
        id_row(self.id.as_str(), invitation_version(self), self, out);
    }
    fn invalid_row(item: &InvalidItem, out: &mut CopyRows) -> bool {
        id_only_invalid_row(item, out)
    }
}

/// The staged body of an object: its own serialization, which decodes back into the same value
/// (every field the rules read, and nothing lost when a type gains one).
fn body<T: serde::Serialize>(object: &T) -> String {
    serde_json::to_string(object).expect("a parsed Clerk object serializes")
}

/// Decodes a staged body back into its object.
pub(crate) fn decode<T: DeserializeOwned>(body: &str) -> Result<T, sqlx::Error> {
    serde_json::from_str(body).map_err(|e| sqlx::Error::Decode(format!("a staged object does not decode: {e}").into()))
}

/// Rows in COPY's text format.
#[derive(Default)]
pub(crate) struct CopyRows {
    pub(crate) data: Vec<u8>,
    pub(crate) rows: usize,
}

impl CopyRows {
    /// One row; None is SQL null.
    pub(crate) fn push(&mut self, fields: &[Option<&str>]) {
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                self.data.push(b'\t');
            }
            match f {
                None => self.data.extend_from_slice(b"\\N"),
                Some(s) => {
                    for b in s.bytes() {
                        match b {
                            b'\\' => self.data.extend_from_slice(b"\\\\"),
                            b'\t' => self.data.extend_from_slice(b"\\t"),
                            b'\n' => self.data.extend_from_slice(b"\\n"),
                            b'\r' => self.data.extend_from_slice(b"\\r"),
                            b => self.data.push(b),
                        }
                    }
                }
            }
        }
        self.data.push(b'\n');
        self.rows += 1;
    }
}

/// A page encoded for its table.
pub(crate) struct EncodedPage {
    pub(crate) table: Table,
    pub(crate) rows: CopyRows,
    /// Objects that did not parse.
    pub(crate) invalid: u64,
    /// An object that did not parse had no key: no deletes of this kind.
    pub(crate) keyless: bool,
}

/// Encodes a page (logging each object that did not parse, without its content).
pub(crate) fn encode<T: Staged>(page: &Page<T>) -> EncodedPage {
    let mut rows = CopyRows::default();
    page.items.iter().for_each(|item| item.row(&mut rows));
    let mut keyless = false;
    for item in &page.invalid {
        tracing::warn!(table = T::TABLE.name, id = item.id.as_deref().unwrap_or("?"), reason = %item.reason,
                       "a Clerk object does not have the expected shape; it is neither written nor deleted");
        keyless |= !T::invalid_row(item, &mut rows);
    }
    EncodedPage {
        table: T::TABLE,
        rows,
        invalid: page.invalid.len() as u64,
        keyless,
    }
}

/// Appends encoded rows to `table` (the staged table, or its landing table) with one COPY.
async fn copy(conn: &mut PgConnection, statement: &str, rows: &CopyRows) -> Result<(), sqlx::Error> {
    if rows.rows == 0 {
        return Ok(());
    }
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(rows.data.as_slice()).await?;
    copy.finish().await?;
    Ok(())
}

/// The dedicated connection and its temporary tables (dropped with the connection).
pub(crate) struct Stage {
    conn: PgConnection,
    /// Objects staged that did not parse.
    invalid: u64,
    /// Tables that received an unparsed object without a key.
    keyless: Vec<&'static str>,
}

impl Stage {
    /// Opens a connection of its own (detached from the pool) and creates the tables.
    pub(crate) async fn open(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut conn = pool.acquire().await?.detach();
        for t in TABLES {
            sqlx::query(&t.ddl()).execute(&mut conn).await?;
            sqlx::query(&format!("create temp table {} (like {})", t.landing(), t.name))
                .execute(&mut conn)
                .await?;
        }
        Ok(Self {
            conn,
            invalid: 0,
            keyless: Vec::new(),
        })
    }

    /// How many staged objects did not parse.
    pub(crate) fn invalid(&self) -> u64 {
        self.invalid
    }

    /// True when an object of `table` did not parse and had no key: none of that kind may be
    /// deleted this run.
    pub(crate) fn keyless(&self, table: Table) -> bool {
        self.keyless.contains(&table.name)
    }

    fn note(&mut self, page: &EncodedPage) {
        self.invalid += page.invalid;
        if page.keyless && !self.keyless.contains(&page.table.name) {
            self.keyless.push(page.table.name);
        }
    }

    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Appends a listed page.
    pub(crate) async fn copy_page(&mut self, page: &EncodedPage) -> Result<(), sqlx::Error> {
        self.note(page);
        copy(&mut self.conn, &page.table.copy_into(page.table.name), &page.rows).await
    }

    /// After the listings: one row per key (the newest; at equal versions the first staged; a
    /// parsed object over one that did not parse), indexed by key and analysed.
    pub(crate) async fn settle(&mut self) -> Result<(), sqlx::Error> {
        for t in TABLES {
            let (a, b) = (t.key_list("a"), t.key_list("b"));
            sqlx::query(&format!(
                "delete from {name} a using {name} b where {a} = {b} \
                 and (coalesce(b.version, -1) > coalesce(a.version, -1) \
                      or (coalesce(b.version, -1) = coalesce(a.version, -1) and b.ctid < a.ctid))",
                name = t.name
            ))
            .execute(&mut self.conn)
            .await?;
            sqlx::query(&format!("create unique index on {} ({})", t.name, t.key.join(", ")))
                .execute(&mut self.conn)
                .await?;
            sqlx::query(&format!("analyze {}", t.name))
                .execute(&mut self.conn)
                .await?;
        }
        Ok(())
    }

    /// Adds objects fetched by id after [`Self::settle`], under the same rule: a newer version
    /// replaces the staged one, an unparsed object never replaces a parsed one.
    pub(crate) async fn merge(&mut self, page: &EncodedPage) -> Result<(), sqlx::Error> {
        self.note(page);
        if page.rows.rows == 0 {
            return Ok(());
        }
        let t = page.table;
        let landing = t.landing();
        let key = t.key.join(", ");
        let set: Vec<String> = t
            .columns
            .split(", ")
            .filter(|c| !t.key.contains(c))
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let mut tx = self.conn.begin().await?;
        copy(&mut tx, &t.copy_into(&landing), &page.rows).await?;
        sqlx::query(&format!(
            "insert into {name} ({cols}) \
             select distinct on ({key}) {cols} from {landing} order by {key}, version desc nulls last \
             on conflict ({key}) do update set {set} \
             where excluded.version is not null and ({name}.version is null or {name}.version < excluded.version)",
            name = t.name,
            cols = t.columns,
            set = set.join(", "),
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("truncate {landing}")).execute(&mut *tx).await?;
        tx.commit().await
    }

    /// Drops the tables with the connection.
    pub(crate) async fn close(self) {
        let _ = self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data<T: DeserializeOwned>(fixture: &str) -> T {
        let envelope: serde_json::Value = serde_json::from_str(fixture).unwrap();
        serde_json::from_value(envelope["data"].clone()).unwrap()
    }

    /// A staged object decodes back into exactly what was listed: every field the rules write
    /// survives staging, including ones a type gains later.
    #[test]
    fn staged_bodies_decode_back_into_the_listed_objects() {
        let org: Organization = data(include_str!("../../fixtures/webhooks/organization.updated.json"));
        assert_eq!(decode::<Organization>(&body(&org)).unwrap(), org);

        let mut user: User = data(include_str!("../../fixtures/webhooks/user.updated.json"));
        user.banned = true;
        user.locked = true;
        user.username = Some("maria".into());
        user.external_id = Some("ext-1".into());
        user.public_metadata = serde_json::json!({"floor": 3});
        assert_eq!(decode::<User>(&body(&user)).unwrap(), user);

        let member: Membership = data(include_str!(
            "../../fixtures/webhooks/organizationMembership.updated.json"
        ));
        assert!(!member.permissions.is_empty() && member.role_name.is_some());
        assert_eq!(decode::<Membership>(&body(&member)).unwrap(), member);

        let role: Role = data(include_str!("../../fixtures/webhooks/role.updated.json"));
        assert!(!role.permissions.is_empty());
        assert_eq!(decode::<Role>(&body(&role)).unwrap(), role);
        let permission: Permission = data(include_str!("../../fixtures/webhooks/permission.updated.json"));
        assert!(permission.kind.is_some());
        assert_eq!(decode::<Permission>(&body(&permission)).unwrap(), permission);
        let invitation: Invitation = data(include_str!(
            "../../fixtures/webhooks/organizationInvitation.accepted.json"
        ));
        let staged = body(&invitation);
        assert!(!staged.contains("url"), "the acceptance link is never staged");
        assert_eq!(decode::<Invitation>(&staged).unwrap(), invitation);

        let mut org = org;
        org.role_set_key = Some("role_set:front_desk".into());
        assert_eq!(decode::<Organization>(&body(&org)).unwrap(), org);
        let set: RoleSet = serde_json::from_value(serde_json::json!({
            "object": "role_set", "id": "rs_1", "key": "role_set:front_desk", "name": "Front desk",
            "description": "d", "type": "custom",
            "roles": [{"object": "role_set_item", "id": "role_1", "key": "org:desk", "name": "Desk",
                       "description": null, "created_at": 1, "updated_at": 1}],
            "default_role": {"object": "role_set_item", "id": "role_1", "key": "org:desk", "name": "Desk",
                             "description": null, "created_at": 1, "updated_at": 1},
            "creator_role": null, "created_at": 1, "updated_at": 2
        }))
        .unwrap();
        assert_eq!(decode::<RoleSet>(&body(&set)).unwrap(), set);
    }
}
