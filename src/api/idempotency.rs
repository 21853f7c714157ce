//! `Idempotency-Key` on `POST /v1/hotels` (Clerk has no idempotency keys of its own), stored in
//! `api_idempotency` (migration `20261203000030_write_path.sql`), scoped by the token's name.
//!
//! - The first request with a key claims it (`running`, leased for [`LEASE`]) with the slug it
//!   creates the organization with; its final answer (any 2xx or 4xx) is stored, and every repeat
//!   of the key gets that answer back (`Idempotent-Replayed: true`), for at least 24 hours.
//! - A repeat while the first still runs waits for it (up to the caller's bound), then gets 409.
//! - A request that ended without a final answer (5xx: Clerk unreachable, `mirror_pending`) or
//!   died holding the key releases it (or its lease runs out): the next repeat runs again *with
//!   the same slug, looking it up first*, so it finds the organization an earlier attempt made
//!   instead of making a second one.
//! - The same key with another body is refused (422 `idempotency_key_reused`).

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::manage::input::Slug;

/// How long a running request holds its key: well beyond the longest create (the Clerk deadline
/// plus the mirror write), so only a request that died loses it.
pub const LEASE: Duration = Duration::from_secs(60);

/// The shortest time a stored answer is kept.
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A valid `Idempotency-Key`: 1-255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(value: &str) -> Option<Self> {
        let ok = !value.is_empty() && value.len() <= 255 && value.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The first request with this key: run it with `slug`.
    Fresh { slug: String },
    /// An earlier request with this key ended without a final answer (or died): run again with
    /// its `slug`, looking it up first.
    Resume { slug: String },
    /// The stored final answer.
    Replay { status: u16, body: serde_json::Value },
    /// Another request with this key is still running.
    Busy,
    /// The key was used for a different body.
    Mismatch,
}

/// SHA-256 (hex) of a request body.
pub fn fingerprint(body: &[u8]) -> String {
    Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect()
}

/// Claims `key` for `token` (waiting up to `wait` for a running request holding it); `slug` is
/// the slug a first request would create with.
pub async fn claim(
    pool: &PgPool,
    token: &str,
    key: &IdempotencyKey,
    fingerprint: &str,
    slug: &Slug,
    wait: Duration,
) -> Result<Claim, sqlx::Error> {
    let until = tokio::time::Instant::now() + wait;
    let lease = LEASE.as_secs_f64();
    loop {
        let inserted = sqlx::query_scalar!(
            r#"
            insert into api_idempotency (token_name, key, fingerprint, slug, state, locked_until)
            values ($1, $2, $3, $4, 'running', now() + make_interval(secs => $5))
            on conflict (token_name, key) do nothing
            returning slug
            "#,
            token,
            key.as_str(),
            fingerprint,
            slug.as_str(),
            lease,
        )
        .fetch_optional(pool)
        .await?;
        if let Some(slug) = inserted {
            return Ok(Claim::Fresh { slug });
        }
        let Some(row) = sqlx::query!(
            r#"select fingerprint, state, status, body, coalesce(locked_until < now(), true) as "expired!"
               from api_idempotency where token_name = $1 and key = $2"#,
            token,
            key.as_str(),
        )
        .fetch_optional(pool)
        .await?
        else {
            continue; // pruned in between: claim it afresh
        };
        if row.fingerprint != fingerprint {
            return Ok(Claim::Mismatch);
        }
        match row.state.as_str() {
            "done" => {
                return Ok(Claim::Replay {
                    status: row.status.unwrap_or(200) as u16,
                    body: row.body.unwrap_or(serde_json::Value::Null),
                })
            }
            "retry" => {}
            _ if row.expired => {}
            _ => {
                if tokio::time::Instant::now() >= until {
                    return Ok(Claim::Busy);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
        }
        let resumed = sqlx::query_scalar!(
            r#"
            update api_idempotency set state = 'running', locked_until = now() + make_interval(secs => $3),
                                       updated_at = now()
            where token_name = $1 and key = $2
              and (state = 'retry' or (state = 'running' and locked_until < now()))
            returning slug
            "#,
            token,
            key.as_str(),
            lease,
        )
        .fetch_optional(pool)
        .await?;
        if let Some(slug) = resumed {
            return Ok(Claim::Resume { slug });
        }
        // Another repeat resumed it first: wait for that one.
    }
}

/// Stores the final answer of the request holding `key`.
pub async fn finish(
    pool: &PgPool,
    token: &str,
    key: &IdempotencyKey,
    status: u16,
    body: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"update api_idempotency set state = 'done', status = $3, body = $4, locked_until = null, updated_at = now()
           where token_name = $1 and key = $2"#,
        token,
        key.as_str(),
        status as i16,
        body,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Releases `key` after a request that ended without a final answer: the next repeat runs again.
pub async fn release(pool: &PgPool, token: &str, key: &IdempotencyKey) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"update api_idempotency set state = 'retry', locked_until = null, updated_at = now()
           where token_name = $1 and key = $2 and state = 'running'"#,
        token,
        key.as_str(),
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes keys created more than `retention` ago (never less than [`MIN_RETENTION`]), in small
/// batches; returns how many.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let secs = retention.max(MIN_RETENTION).as_secs_f64();
    crate::db::delete_in_batches(|| async {
        Ok(sqlx::query!(
            r#"
            delete from api_idempotency where (token_name, key) in (
                select token_name, key from api_idempotency
                where created_at < now() - make_interval(secs => $1) limit $2)
            "#,
            secs,
            crate::db::PRUNE_BATCH,
        )
        .execute(pool)
        .await?
        .rows_affected())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("3f1c-aa_01").is_some());
        assert!(IdempotencyKey::parse("").is_none());
        assert!(IdempotencyKey::parse("a b").is_none());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_none());
        assert_eq!(fingerprint(b"").len(), 64);
    }
}
