//! What of a stored payload the console shows: everything but secrets and `unsafe_metadata`,
//! which appear only as their size.
//!
//! Hidden, wherever they occur in the payload: `private_metadata` (the application's secrets
//! about a user or organization), `unsafe_metadata` (written by the user's own browser),
//! an invitation's `url` (it carries the acceptance ticket), `backup_codes`, and any other key
//! naming a secret, token, password, ticket or code whose value is not a plain flag (so
//! `password_enabled: true` stays visible; a `verification_ticket` does not).

use serde_json::Value;

/// Keys always hidden.
const HIDDEN: &[&str] = &["private_metadata", "unsafe_metadata", "url", "backup_codes"];

/// Parts of a key that mark a secret when the value is more than a flag.
const SECRET_WORDS: &[&str] = &["secret", "token", "password", "ticket", "otp_code", "backup_code"];

/// Whether the value under `key` is shown only as its size.
pub fn is_hidden(key: &str, value: &Value) -> bool {
    if HIDDEN.contains(&key) {
        return true;
    }
    let key = key.to_ascii_lowercase();
    let flag = matches!(value, Value::Bool(_) | Value::Null);
    !flag && SECRET_WORDS.iter().any(|w| key.contains(w))
}

/// `payload` with every hidden value replaced by a string naming its size in bytes (as JSON
/// text), e.g. `"[hidden: 2 bytes]"` for an empty object.
pub fn redact(payload: &Value) -> Value {
    match payload {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let shown = if is_hidden(k, v) {
                        Value::String(format!("[hidden: {} bytes]", json_len(v)))
                    } else {
                        redact(v)
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// The length of `v` as compact JSON text.
pub fn json_len(v: &Value) -> usize {
    serde_json::to_string(v).map_or(0, |s| s.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_and_unsafe_metadata_show_only_their_size() {
        let payload = json!({
            "type": "user.created",
            "data": {
                "id": "user_1",
                "first_name": "Maria",
                "public_metadata": {"plan": "gold"},
                "private_metadata": {"stripe_customer": "cus_secret123"},
                "unsafe_metadata": {"note": "typed by the user"},
                "password_enabled": true,
                "verification_ticket": "tkt_abc",
                "email_addresses": [{"email_address": "m@example.com", "verification": {"otp_code": "123456"}}],
            }
        });
        let shown = redact(&payload);
        let text = shown.to_string();
        for secret in ["cus_secret123", "typed by the user", "tkt_abc", "123456"] {
            assert!(!text.contains(secret), "{secret} shown in {text}");
        }
        let d = &shown["data"];
        assert_eq!(d["first_name"], "Maria");
        assert_eq!(d["public_metadata"]["plan"], "gold");
        assert_eq!(d["password_enabled"], true, "a flag is not a secret");
        let size = json_len(&payload["data"]["unsafe_metadata"]);
        assert_eq!(d["unsafe_metadata"], format!("[hidden: {size} bytes]"));
        assert_eq!(d["email_addresses"][0]["email_address"], "m@example.com");
    }

    #[test]
    fn an_invitations_url_is_hidden_but_image_urls_are_not() {
        let payload = json!({"data": {"url": "https://x/accept?token=t0k", "image_url": "https://img/x"}});
        let shown = redact(&payload);
        assert!(!shown.to_string().contains("t0k"));
        assert_eq!(shown["data"]["image_url"], "https://img/x");
    }
}
