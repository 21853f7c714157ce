//! Svix signature verification over the raw body, with several secrets at once (rotation).

use http::HeaderMap;
use svix::webhooks::{Webhook, WebhookError};

/// The configured webhook secrets; a delivery is authentic when any of them verifies it.
pub struct WebhookVerifier {
    hooks: Vec<Webhook>,
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
        let hooks = secrets
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, s)| {
                // The svix crate accepts any base64 string; insist on the prefix Clerk shows so a
                // pasted API key (sk_...) is caught at start-up rather than as 401s later.
                if !s.starts_with("whsec_") {
                    return Err(SecretError { position: i + 1 });
                }
                Webhook::new(s).map_err(|_| SecretError { position: i + 1 })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if hooks.is_empty() {
            return Err(SecretError { position: 0 });
        }
        Ok(Self { hooks })
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
        svix_headers(headers)?;
        let mut outcome = VerifyError::BadSignature;
        for hook in &self.hooks {
            let result = if enforce_tolerance {
                hook.verify(body, headers)
            } else {
                hook.verify_ignoring_timestamp(body, headers)
            };
            match result {
                Ok(()) => return Ok(()),
                Err(WebhookError::InvalidPayload) => outcome = VerifyError::BodyNotUtf8,
                Err(_) => {}
            }
        }
        Err(outcome)
    }

    /// Signs `body` with the first secret, as Svix would: returns the three Svix headers.
    /// Used by `orgsync send` and the tests.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
        let signature = self.hooks[0]
            .sign(msg_id, timestamp, body)
            .expect("svix signing only fails on non-UTF-8 ids, and msg ids are strings");
        let mut headers = HeaderMap::new();
        let value = |s: &str| http::HeaderValue::from_str(s).expect("svix header values are ASCII");
        headers.insert("svix-id", value(msg_id));
        headers.insert("svix-timestamp", value(&timestamp.to_string()));
        headers.insert("svix-signature", value(&signature));
        headers
    }
}

/// A fresh `whsec_` secret: 24 random bytes, base64, as Svix generates them.
pub fn generate_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 24] = rand::random();
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The `svix-id` of a delivery whose headers are well-formed: present, ASCII, a non-empty id
/// of at most 255 bytes, an integer timestamp and a non-empty signature list.
pub fn svix_headers(headers: &HeaderMap) -> Result<&str, VerifyError> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(VerifyError::BadHeaders)
    };
    let id = get("svix-id")?;
    get("svix-timestamp")?
        .parse::<i64>()
        .map_err(|_| VerifyError::BadHeaders)?;
    get("svix-signature")?;
    if id.len() > 255 {
        return Err(VerifyError::BadHeaders);
    }
    Ok(id)
}
