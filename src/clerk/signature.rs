//! Svix signature verification over the raw body, with several secrets at once (rotation).
//!
//! Svix signs `"{svix-id}.{svix-timestamp}.{body}"` with HMAC-SHA256 under the base64 bytes of
//! the `whsec_` secret, and sends `v1,<base64 signature>` entries separated by spaces in
//! `svix-signature`. The check here is that scheme (RustCrypto `hmac` and `sha2`, which uses
//! the CPU's SHA extensions where present; the comparison is `hmac`'s constant-time one). The
//! `svix` crate signs in the tests to keep it honest.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a delivery's `svix-timestamp` may be from now, either way (Svix's tolerance).
const TOLERANCE_SECS: i64 = 5 * 60;

/// The configured webhook secrets; a delivery is authentic when any of them verifies it.
pub struct WebhookVerifier {
    /// One keyed HMAC per secret, ready to be cloned for each delivery.
    keys: Vec<HmacSha256>,
}

/// A secret string that is not a Svix secret.
#[derive(Debug, thiserror::Error)]
#[error("webhook secret #{position} is not a valid Svix secret (expected whsec_<base64>)")]
pub struct SecretError {
    position: usize,
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// `svix-id`, `svix-timestamp` or `svix-signature` missing or not parseable: a 400.
    #[error("missing or malformed Svix headers")]
    BadHeaders,
    /// The body is not UTF-8, so it cannot be a signed JSON event: a 400.
    #[error("body is not UTF-8")]
    BodyNotUtf8,
    /// No secret produced a matching signature, or the timestamp is outside ±5 minutes: a 401.
    #[error("signature does not verify")]
    BadSignature,
}

impl WebhookVerifier {
    /// Parses `whsec_...` secrets separated by spaces or commas. Err when there are none or
    /// one is malformed (its position is named, its value never).
    pub fn parse(secrets: &str) -> Result<Self, SecretError> {
        let keys = secrets
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, s)| {
                let bad = || SecretError { position: i + 1 };
                // Insist on the prefix Clerk shows, so a pasted API key (sk_...) is caught at
                // start-up rather than as 401s later.
                let encoded = s.strip_prefix("whsec_").ok_or_else(bad)?;
                let key = BASE64.decode(encoded).map_err(|_| bad())?;
                if key.is_empty() {
                    return Err(bad());
                }
                HmacSha256::new_from_slice(&key).map_err(|_| bad())
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(SecretError { position: 0 });
        }
        Ok(Self { keys })
    }

    /// Ok when any configured secret verifies `body` under `headers` (±5 minute timestamp
    /// tolerance both ways, as Svix specifies). Err says whether the request is malformed
    /// (400) or not authentic (401).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        self.verify_inner(headers, body, true)
    }

    /// As [`WebhookVerifier::verify`] without the timestamp tolerance: for checking recorded
    /// deliveries such as Svix's published test vectors, never for live traffic.
    pub fn verify_ignoring_timestamp(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        self.verify_inner(headers, body, false)
    }

    fn verify_inner(&self, headers: &HeaderMap, body: &[u8], enforce_tolerance: bool) -> Result<(), VerifyError> {
        let parts = svix_parts(headers)?;
        if std::str::from_utf8(body).is_err() {
            return Err(VerifyError::BodyNotUtf8);
        }
        if enforce_tolerance {
            let now = chrono::Utc::now().timestamp();
            if (now - parts.timestamp).abs() > TOLERANCE_SECS {
                return Err(VerifyError::BadSignature);
            }
        }
        // Decode the offered signatures once; entries of other versions are ignored.
        let offered: Vec<Vec<u8>> = parts
            .signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|sig| BASE64.decode(sig).ok())
            .collect();
        if offered.is_empty() {
            return Err(VerifyError::BadSignature);
        }
        // Svix signs the timestamp as the integer it parses (so "0123" is signed as "123").
        let timestamp = parts.timestamp.to_string();
        for key in &self.keys {
            let mac = signed_content(key.clone(), parts.id, &timestamp, body);
            // `verify_slice` compares in constant time.
            if offered.iter().any(|sig| mac.clone().verify_slice(sig).is_ok()) {
                return Ok(());
            }
        }
        Err(VerifyError::BadSignature)
    }

    /// Signs `body` with the first secret, as Svix would: returns the three Svix headers.
    /// Used by `orgsync send` and the tests.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
        let mac = signed_content(self.keys[0].clone(), msg_id, &timestamp.to_string(), body);
        let signature = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
        let mut headers = HeaderMap::new();
        let value = |s: &str| http::HeaderValue::from_str(s).expect("svix header values are ASCII");
        headers.insert("svix-id", value(msg_id));
        headers.insert("svix-timestamp", value(&timestamp.to_string()));
        headers.insert("svix-signature", value(&signature));
        headers
    }
}

/// The HMAC of Svix's signed content `"{id}.{timestamp}.{body}"`, fed without concatenating.
fn signed_content(mut mac: HmacSha256, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// A fresh `whsec_` secret: 24 random bytes, base64, as Svix generates them.
pub fn generate_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("whsec_{}", BASE64.encode(bytes))
}

/// The `svix-id` of a delivery whose headers are well-formed: present, ASCII, a non-empty id
/// of at most 255 bytes, an integer timestamp and a non-empty signature list.
pub fn svix_headers(headers: &HeaderMap) -> Result<&str, VerifyError> {
    svix_parts(headers).map(|p| p.id)
}

/// The three Svix headers of a well-formed delivery.
struct SvixParts<'a> {
    id: &'a str,
    timestamp: i64,
    signatures: &'a str,
}

fn svix_parts(headers: &HeaderMap) -> Result<SvixParts<'_>, VerifyError> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(VerifyError::BadHeaders)
    };
    let id = get("svix-id")?;
    let timestamp = get("svix-timestamp")?
        .parse::<i64>()
        .map_err(|_| VerifyError::BadHeaders)?;
    let signatures = get("svix-signature")?;
    if id.len() > 255 {
        return Err(VerifyError::BadHeaders);
    }
    Ok(SvixParts {
        id,
        timestamp,
        signatures,
    })
}
