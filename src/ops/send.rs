//! `orgsync send`: sign a fixture event like Svix does and post it to a running receiver, to
//! watch a row appear or to test an endpoint end to end (like `stripe trigger`).

use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;
use rand::Rng;
use sqlx::PgPool;

use crate::clerk::signature::WebhookVerifier;
use crate::clerk::Envelope;

/// The fixtures of `fixtures/webhooks/`, compiled in so `send` works from any directory.
const BUILTIN: [(&str, &str); 18] = [
    (
        "organization.created",
        include_str!("../../fixtures/webhooks/organization.created.json"),
    ),
    (
        "organization.updated",
        include_str!("../../fixtures/webhooks/organization.updated.json"),
    ),
    (
        "organization.deleted",
        include_str!("../../fixtures/webhooks/organization.deleted.json"),
    ),
    (
        "organizationMembership.created",
        include_str!("../../fixtures/webhooks/organizationMembership.created.json"),
    ),
    (
        "organizationMembership.updated",
        include_str!("../../fixtures/webhooks/organizationMembership.updated.json"),
    ),
    (
        "organizationMembership.deleted",
        include_str!("../../fixtures/webhooks/organizationMembership.deleted.json"),
    ),
    (
        "user.created",
        include_str!("../../fixtures/webhooks/user.created.json"),
    ),
    (
        "user.updated",
        include_str!("../../fixtures/webhooks/user.updated.json"),
    ),
    (
        "user.deleted",
        include_str!("../../fixtures/webhooks/user.deleted.json"),
    ),
    (
        "role.created",
        include_str!("../../fixtures/webhooks/role.created.json"),
    ),
    (
        "role.updated",
        include_str!("../../fixtures/webhooks/role.updated.json"),
    ),
    (
        "role.deleted",
        include_str!("../../fixtures/webhooks/role.deleted.json"),
    ),
    (
        "permission.created",
        include_str!("../../fixtures/webhooks/permission.created.json"),
    ),
    (
        "permission.updated",
        include_str!("../../fixtures/webhooks/permission.updated.json"),
    ),
    (
        "permission.deleted",
        include_str!("../../fixtures/webhooks/permission.deleted.json"),
    ),
    (
        "organizationInvitation.created",
        include_str!("../../fixtures/webhooks/organizationInvitation.created.json"),
    ),
    (
        "organizationInvitation.accepted",
        include_str!("../../fixtures/webhooks/organizationInvitation.accepted.json"),
    ),
    (
        "organizationInvitation.revoked",
        include_str!("../../fixtures/webhooks/organizationInvitation.revoked.json"),
    ),
];

/// The event types with a built-in fixture.
pub fn builtin_types() -> Vec<&'static str> {
    BUILTIN.iter().map(|(t, _)| *t).collect()
}

/// The built-in fixture of `event_type`, if there is one.
pub fn builtin_fixture(event_type: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(t, _)| *t == event_type).map(|(_, body)| *body)
}

/// The fixture `spec` names: the file at that path when one exists, else the built-in fixture
/// of that event type. Err when it is neither (the message lists the built-in types).
pub fn load_fixture(spec: &str) -> anyhow::Result<String> {
    if Path::new(spec).is_file() {
        return std::fs::read_to_string(spec).with_context(|| format!("reading {spec}"));
    }
    builtin_fixture(spec).map(str::to_owned).ok_or_else(|| {
        anyhow::anyhow!(
            "{spec:?} is neither a file nor a built-in event type; built-in types: {}",
            builtin_types().join(", ")
        )
    })
}

/// A fresh Svix-style message id: `msg_` and 27 random alphanumerics.
pub fn new_event_id() -> String {
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(27)
        .map(char::from)
        .collect();
    format!("msg_{suffix}")
}

/// The webhook secret `orgsync serve` generated and stored when started without one.
/// Err when there is none yet, or the database cannot be read.
pub async fn stored_secret(pool: &PgPool) -> anyhow::Result<String> {
    let stored = sqlx::query_scalar!("select value from settings where key = 'webhook_secret'")
        .fetch_optional(pool)
        .await
        .context("reading the stored webhook secret from DATABASE_URL")?;
    stored.ok_or_else(|| {
        anyhow::anyhow!(
            "no webhook secret: pass --webhook-secret (or set CLERK_WEBHOOK_SECRET), or start \
             `orgsync serve` once without one so it generates and stores it"
        )
    })
}

/// Prepares a fixture for sending: checks that it is a Clerk event envelope and sets its
/// `timestamp` to `now` (seconds), as a fresh event would carry. Err names what is wrong.
pub fn prepare_body(fixture: &str, now: i64) -> anyhow::Result<(String, String)> {
    let mut value: serde_json::Value = serde_json::from_str(fixture).context("the fixture is not JSON")?;
    let object = value.as_object_mut().context("the fixture is not a JSON object")?;
    object.insert("timestamp".into(), now.into());
    let body = value.to_string();
    let envelope = Envelope::parse(body.as_bytes()).context("the fixture is not a Clerk event")?;
    Ok((body, envelope.event_type))
}

/// What the receiver answered.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    pub url: String,
    pub event_id: String,
    pub event_type: String,
    pub status: reqwest::StatusCode,
    /// The response body (the receiver answers with a short JSON status).
    pub answer: String,
}

/// Signs `fixture` (timestamped now) with the first of `secrets` under `event_id` and posts it
/// to `url`. Ok with the receiver's answer, whatever its status; Err when the fixture, the
/// secret or the id is unusable, or the receiver cannot be reached.
pub async fn send_event(
    client: &reqwest::Client,
    url: &str,
    secrets: &str,
    event_id: &str,
    fixture: &str,
) -> anyhow::Result<SendOutcome> {
    // Svix ids are short ASCII tokens; anything else could not travel in a header.
    if event_id.is_empty() || event_id.len() > 255 || !event_id.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!("--event-id must be 1 to 255 visible ASCII characters");
    }
    let signer = WebhookVerifier::parse(secrets)?;
    let now = chrono::Utc::now().timestamp();
    let (body, event_type) = prepare_body(fixture, now)?;
    let headers = signer.sign(event_id, now, body.as_bytes());
    let response = client
        .post(url)
        .headers(headers)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("posting to {url} (is `orgsync serve` running there?)"))?;
    let status = response.status();
    let answer = response.text().await.unwrap_or_default();
    Ok(SendOutcome {
        url: url.to_owned(),
        event_id: event_id.to_owned(),
        event_type,
        status,
        answer,
    })
}

/// Renders what was sent and what came back.
pub fn write_outcome(out: &mut impl Write, outcome: &SendOutcome) -> io::Result<()> {
    writeln!(
        out,
        "sent {} as {} to {}",
        outcome.event_type, outcome.event_id, outcome.url
    )?;
    // A receiver answers with a short status; cap anything else (an HTML error page).
    let answer: String = outcome.answer.chars().take(2000).collect();
    writeln!(out, "{} {}", outcome.status, answer.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handled_type_has_a_builtin_fixture_of_that_type() {
        let types = builtin_types();
        assert_eq!(types, crate::clerk::events::HANDLED_TYPES.to_vec());
        for t in types {
            let (_, event_type) = prepare_body(builtin_fixture(t).unwrap(), 1).unwrap();
            assert_eq!(event_type, t);
        }
    }

    #[test]
    fn the_timestamp_is_set_to_now_and_the_rest_is_kept() {
        let fixture = builtin_fixture("user.created").unwrap();
        let (body, _) = prepare_body(fixture, 1_800_000_000).unwrap();
        let mut sent: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(sent["timestamp"], 1_800_000_000);
        let mut original: serde_json::Value = serde_json::from_str(fixture).unwrap();
        sent.as_object_mut().unwrap().remove("timestamp");
        original.as_object_mut().unwrap().remove("timestamp");
        assert_eq!(sent, original);
    }

    #[test]
    fn non_events_are_refused() {
        assert!(prepare_body("not json", 1).is_err());
        assert!(prepare_body("[1]", 1).is_err());
        assert!(
            prepare_body(r#"{"type": "user.created", "object": "event"}"#, 1).is_err(),
            "no data"
        );
    }

    #[test]
    fn fixtures_are_found_by_type_or_path() {
        assert_eq!(
            load_fixture("organization.deleted").unwrap(),
            builtin_fixture("organization.deleted").unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custom.json");
        std::fs::write(&path, r#"{"object":"event","type":"session.created","data":{}}"#).unwrap();
        assert!(load_fixture(path.to_str().unwrap())
            .unwrap()
            .contains("session.created"));
        let err = load_fixture("user.exploded").unwrap_err().to_string();
        assert!(err.contains("organizationMembership.created"), "{err}");
    }

    #[test]
    fn event_ids_look_like_svix_ids_and_differ() {
        let a = new_event_id();
        assert!(a.starts_with("msg_") && a.len() == 31, "{a}");
        assert!(a[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, new_event_id());
    }
}
