//! API tokens: the credentials of the `/v1` API and of the console's login.
//!
//! Contract:
//! - A token is `osk_<key_id>_<secret>`: 12 hex digits naming its row, then 32 random bytes in
//!   unpadded base64url. [`create`] returns it once; only its SHA-256 is stored
//!   (`api_tokens.hash`), so a copy of the database grants nothing.
//! - [`authenticate`] finds the row by `key_id` and compares the SHA-256 of the whole presented
//!   token with the stored one in constant time; a malformed, unknown or revoked token is `None`,
//!   indistinguishable to the caller.
//! - A token is read-only or read-write ([`Access`]); names are unique among live tokens, and a
//!   revoked token's name can be given to a new one.
//! - Nothing here logs a token or its hash; [`IssuedToken`]'s `Debug` leaves the token out.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

/// Every token starts with this, so a leaked one is recognisable (and secret scanners can match it).
pub const PREFIX: &str = "osk_";
const KEY_ID_LEN: usize = 12;
const SECRET_BYTES: usize = 32;

/// A token's name: 1–64 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenName(String);

impl TokenName {
    pub fn parse(name: &str) -> Result<Self, TokenError> {
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && name.len() <= 64
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(TokenError::InvalidName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Reads only: every write is refused (403).
    ReadOnly,
    ReadWrite,
}

impl Access {
    fn from_read_only(read_only: bool) -> Self {
        if read_only {
            Self::ReadOnly
        } else {
            Self::ReadWrite
        }
    }
}

/// The holder of a valid, live token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// The token's name (safe to log).
    pub name: String,
    pub access: Access,
}

impl Caller {
    pub fn can_write(&self) -> bool {
        self.access == Access::ReadWrite
    }
}

/// A newly created token: the only place its text ever exists outside the caller's hands.
pub struct IssuedToken {
    pub name: String,
    pub access: Access,
    pub token: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("name", &self.name)
            .field("access", &self.access)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A stored token as `orgsync tokens list` shows it: never its text nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub name: String,
    /// The non-secret part of the token (`osk_<key_id>_…`), to tell tokens apart.
    pub key_id: String,
    pub access: Access,
    pub created_at: DateTime<Utc>,
    /// Updated at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a token name is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit")]
    InvalidName,
    #[error("a live token is already named {0:?} (revoke it first, or pick another name)")]
    NameTaken(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates a token named `name`. Err([`TokenError::NameTaken`]) when a live token has that name.
pub async fn create(pool: &PgPool, name: &TokenName, access: Access) -> Result<IssuedToken, TokenError> {
    let mut key = [0u8; KEY_ID_LEN / 2];
    let mut secret = [0u8; SECRET_BYTES];
    let mut rng = rand::rng();
    rng.fill_bytes(&mut key);
    rng.fill_bytes(&mut secret);
    let key_id: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("{PREFIX}{key_id}_{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = digest(&token);
    let inserted = sqlx::query!(
        r#"
        insert into api_tokens (name, key_id, hash, read_only) values ($1, $2, $3, $4)
        on conflict (name) where revoked_at is null do nothing
        "#,
        name.as_str(),
        key_id,
        hash.as_slice(),
        access == Access::ReadOnly,
    )
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(TokenError::NameTaken(name.as_str().to_owned()));
    }
    Ok(IssuedToken {
        name: name.as_str().to_owned(),
        access,
        token,
    })
}

/// The caller a presented token belongs to; `None` when it is malformed, unknown or revoked.
pub async fn authenticate(pool: &PgPool, presented: &str) -> Result<Option<Caller>, sqlx::Error> {
    let Some(key_id) = key_id_of(presented) else {
        return Ok(None);
    };
    let row = sqlx::query!(
        "select id, name, hash, read_only from api_tokens where key_id = $1 and revoked_at is null",
        key_id
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if !bool::from(digest(presented).as_slice().ct_eq(&row.hash)) {
        return Ok(None);
    }
    sqlx::query!(
        r#"
        update api_tokens set last_used_at = now()
        where id = $1 and (last_used_at is null or last_used_at < now() - interval '1 minute')
        "#,
        row.id
    )
    .execute(pool)
    .await?;
    Ok(Some(Caller {
        name: row.name,
        access: Access::from_read_only(row.read_only),
    }))
}

/// True when at least one token is live.
pub async fn any_live(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select exists(select 1 from api_tokens where revoked_at is null) as "any!""#)
        .fetch_one(pool)
        .await
}

/// Every token, live ones first then revoked ones, each group oldest first; revoked ones only
/// when `include_revoked`.
pub async fn list(pool: &PgPool, include_revoked: bool) -> Result<Vec<TokenInfo>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        select name, key_id, read_only, created_at, last_used_at, revoked_at from api_tokens
        where $1 or revoked_at is null
        order by revoked_at is not null, created_at, id
        "#,
        include_revoked
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| TokenInfo {
            name: r.name,
            key_id: r.key_id,
            access: Access::from_read_only(r.read_only),
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        })
        .collect())
}

/// Revokes the live token named `name`, at once for every later request. False when none is.
pub async fn revoke(pool: &PgPool, name: &TokenName) -> Result<bool, sqlx::Error> {
    let revoked = sqlx::query!(
        "update api_tokens set revoked_at = now() where name = $1 and revoked_at is null",
        name.as_str()
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(revoked > 0)
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), if any.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The `key_id` of a well-formed token.
fn key_id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    let well_formed = key_id.len() == KEY_ID_LEN
        && key_id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && !secret.is_empty();
    well_formed.then_some(key_id)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(TokenName::parse("hotel-app.prod_1").is_ok());
        for bad in ["", "-x", "a b", "ä", &"x".repeat(65)] {
            assert!(TokenName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_ids_are_parsed_strictly() {
        assert_eq!(key_id_of("osk_0123456789ab_c2VjcmV0"), Some("0123456789ab"));
        for bad in [
            "",
            "osk_",
            "osk_0123456789ab",
            "osk_0123456789ab_",
            "osk_0123456789AB_x",
            "osk_0123456789a_x",
            "xsk_0123456789ab_x",
        ] {
            assert_eq!(key_id_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bearer_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer osk_x".parse().unwrap());
        assert_eq!(bearer(&h), Some("osk_x"));
        h.insert(http::header::AUTHORIZATION, "bearer  osk_y ".parse().unwrap());
        assert_eq!(bearer(&h), Some("osk_y"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn issued_token_debug_hides_the_token() {
        let t = IssuedToken {
            name: "n".into(),
            access: Access::ReadWrite,
            token: "osk_0123456789ab_secret".into(),
        };
        assert!(!format!("{t:?}").contains("secret"));
    }
}
