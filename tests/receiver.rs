//! The webhook receiver: signatures, rotation, deduplication, refusals that store nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use orgsync::clerk::signature::{VerifyError, WebhookVerifier};
use orgsync::clerk::{ClerkEvent, Envelope};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(serde::Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}
#[derive(serde::Deserialize, Clone)]
struct Vector {
    secret: String,
    msg_id: String,
    timestamp: i64,
    payload: String,
    signature: String,
}

fn vectors() -> Vec<Vector> {
    let text = std::fs::read_to_string(fixtures_dir().join("svix-vectors.json")).unwrap();
    serde_json::from_str::<Vectors>(&text).unwrap().vectors
}

fn headers(id: &str, ts: i64, sig: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("svix-id", id.parse().unwrap());
    h.insert("svix-timestamp", ts.to_string().parse().unwrap());
    h.insert("svix-signature", sig.parse().unwrap());
    h
}

#[test]
fn svix_published_vectors_verify_and_tampering_does_not() {
    let all = vectors();
    assert!(all.len() >= 2);
    for v in all {
        let verifier = WebhookVerifier::parse(&v.secret).unwrap();
        let h = headers(&v.msg_id, v.timestamp, &v.signature);
        assert_eq!(verifier.verify_ignoring_timestamp(&h, v.payload.as_bytes()), Ok(()));
        assert_eq!(
            verifier.sign(&v.msg_id, v.timestamp, v.payload.as_bytes())["svix-signature"],
            v.signature
        );

        let tampered_body = format!("{} ", v.payload);
        assert_eq!(
            verifier.verify_ignoring_timestamp(&h, tampered_body.as_bytes()),
            Err(VerifyError::BadSignature)
        );
        let tampered_id = headers(&format!("{}x", v.msg_id), v.timestamp, &v.signature);
        assert_eq!(
            verifier.verify_ignoring_timestamp(&tampered_id, v.payload.as_bytes()),
            Err(VerifyError::BadSignature)
        );
        let tampered_ts = headers(&v.msg_id, v.timestamp + 1, &v.signature);
        assert_eq!(
            verifier.verify_ignoring_timestamp(&tampered_ts, v.payload.as_bytes()),
            Err(VerifyError::BadSignature)
        );
        let other = WebhookVerifier::parse(SECRET).unwrap();
        assert_eq!(
            other.verify_ignoring_timestamp(&h, v.payload.as_bytes()),
            Err(VerifyError::BadSignature)
        );
        // A list of signatures verifies when any one of them matches.
        let several = headers(&v.msg_id, v.timestamp, &format!("v1,Zm9v {} v2,bar", v.signature));
        assert_eq!(
            verifier.verify_ignoring_timestamp(&several, v.payload.as_bytes()),
            Ok(())
        );
        // ...and the live check refuses them: their timestamps are years old.
        assert_eq!(
            verifier.verify(&h, v.payload.as_bytes()),
            Err(VerifyError::BadSignature)
        );
    }
}

#[test]
fn secrets_must_look_like_svix_secrets() {
    assert!(WebhookVerifier::parse("").is_err());
    assert!(WebhookVerifier::parse("sk_test_abc").is_err());
    assert!(WebhookVerifier::parse("whsec_!!notbase64").is_err());
    assert!(WebhookVerifier::parse(&format!("{SECRET}, {OLD_SECRET}")).is_ok());
    assert!(WebhookVerifier::parse(&format!("{SECRET} {OLD_SECRET}")).is_ok());
}

#[test]
fn every_fixture_is_a_clerk_envelope_of_a_handled_event() {
    for name in orgsync::clerk::events::HANDLED_TYPES {
        let body = fixture(name);
        let env = Envelope::parse(body.as_bytes()).unwrap();
        assert_eq!(env.event_type, name);
        let event = ClerkEvent::parse(name, &fixture_json(name)).unwrap().unwrap();
        let expected = match name.split('.').next_back().unwrap() {
            "deleted" => matches!(
                event,
                ClerkEvent::OrganizationDeleted { .. }
                    | ClerkEvent::UserDeleted { .. }
                    | ClerkEvent::MembershipDeleted { .. }
                    | ClerkEvent::RoleDeleted { .. }
                    | ClerkEvent::PermissionDeleted { .. }
            ),
            _ => matches!(
                event,
                ClerkEvent::OrganizationUpserted(_)
                    | ClerkEvent::UserUpserted(_)
                    | ClerkEvent::MembershipUpserted(_)
                    | ClerkEvent::RoleUpserted(_)
                    | ClerkEvent::PermissionUpserted(_)
                    | ClerkEvent::InvitationWritten { .. }
            ),
        };
        assert!(expected, "{name} parsed as {event:?}");
    }
    let ClerkEvent::UserUpserted(user) = ClerkEvent::parse("user.created", &fixture_json("user.created"))
        .unwrap()
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(user.primary_email(), Some("maria.rossi@example.com"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_event_is_stored_once_and_acknowledged() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let app = TestApp::receiver(pool.clone()).await;
    let body = fixture("organization.created");
    let first = app.deliver("msg_one", &body).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let again = app.deliver("msg_one", &body).await;
    assert_eq!(again.status(), StatusCode::OK, "a retry is acknowledged");
    let (event_id, event_type, state, payload): (String, String, String, serde_json::Value) =
        sqlx::query_as("select event_id, event_type, state, payload from jobs")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (event_id.as_str(), event_type.as_str(), state.as_str()),
        ("msg_one", "organization.created", "available")
    );
    assert_eq!(payload, fixture_json("organization.created"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_deliveries_of_one_event_make_one_job() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let app = std::sync::Arc::new(TestApp::receiver(pool.clone()).await);
    let body = fixture("user.created");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let app = app.clone();
            let body = body.clone();
            tokio::spawn(async move { app.deliver("msg_concurrent", &body).await.status() })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        let status = t.await.unwrap();
        assert!(status.is_success(), "{status}");
        accepted += usize::from(status == StatusCode::ACCEPTED);
    }
    assert_eq!(accepted, 1, "exactly one delivery created the job");
    assert_eq!(job_count(&pool).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn both_secrets_verify_during_rotation() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let secrets = format!("{OLD_SECRET} {SECRET}");
    let app = TestApp::spawn(pool.clone(), config(Some(&secrets), false)).await;
    let body = fixture("user.created");
    let old = WebhookVerifier::parse(OLD_SECRET).unwrap();
    let new = WebhookVerifier::parse(SECRET).unwrap();
    assert_eq!(
        app.deliver_signed(&old, "msg_old", now_secs(), &body).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.deliver_signed(&new, "msg_new", now_secs(), &body).await.status(),
        StatusCode::ACCEPTED
    );
    let stranger = WebhookVerifier::parse("whsec_c3RyYW5nZXItc2VjcmV0LTEyMzQ1Njc4").unwrap();
    assert_eq!(
        app.deliver_signed(&stranger, "msg_x", now_secs(), &body).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(job_count(&pool).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_its_status_and_stores_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let app = TestApp::receiver(pool.clone()).await;
    let body = fixture("organization.created");
    let url = app.url("/webhooks/clerk");
    let signed = app.signer.sign("msg_bad", now_secs(), body.as_bytes());

    // Missing or malformed headers: 400.
    for drop in ["svix-id", "svix-timestamp", "svix-signature"] {
        let mut h = signed.clone();
        h.remove(drop);
        let r = app
            .client
            .post(&url)
            .headers(h)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "without {drop}");
    }
    let mut h = signed.clone();
    h.insert("svix-timestamp", "yesterday".parse().unwrap());
    let r = app
        .client
        .post(&url)
        .headers(h)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Not authentic: 401, with a short JSON error that does not echo the payload.
    let r = app
        .client
        .post(&url)
        .headers(signed.clone())
        .body(body.replace("Hotel", "Motel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let text = r.text().await.unwrap();
    assert!(text.len() < 200 && !text.contains("Motel"), "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
    for skew in [-6 * 60, 6 * 60] {
        let r = app
            .deliver_signed(&app.signer, "msg_skew", now_secs() + skew, &body)
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "timestamp skewed by {skew}s");
    }
    // Within tolerance both ways: accepted (and removed below to keep the table empty).
    for skew in [-4 * 60, 4 * 60] {
        let r = app
            .deliver_signed(&app.signer, &format!("msg_ok{skew}"), now_secs() + skew, &body)
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "timestamp skewed by {skew}s");
    }
    sqlx::query("delete from jobs").execute(&pool).await.unwrap();

    // Authentic but not a Clerk event envelope: 400.
    for not_event in [
        "not json".to_owned(),
        r#"{"type":"user.created","object":"user","data":{}}"#.to_owned(),
        r#"{"object":"event","data":{}}"#.to_owned(),
        r#"{"type":"user.created","object":"event"}"#.to_owned(),
    ] {
        let r = app.deliver("msg_not_event", &not_event).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{not_event}");
    }

    // Over the body limit (64 KiB in tests): 413.
    let huge = format!(
        r#"{{"type":"user.created","object":"event","data":{{"pad":"{}"}}}}"#,
        "x".repeat(100 * 1024)
    );
    let r = app.deliver("msg_huge", &huge).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(job_count(&pool).await, 0, "refused deliveries store nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_is_refused_before_it_is_read() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let app = TestApp::receiver(pool.clone()).await;
    let headers = app.signer.sign("msg_big", now_secs(), b"{}");
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut request = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        50 * 1024 * 1024
    );
    for (k, v) in &headers {
        request.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    request.push_str("\r\n{\"type\":");
    stream.write_all(request.as_bytes()).await.unwrap();
    // 50 MiB announced, a few bytes sent: the answer must come without the rest of the body.
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered early")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(job_count(&pool).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unhandled_event_types_are_acknowledged_and_stored_as_skipped() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let app = TestApp::receiver(pool.clone()).await;
    let body = r#"{"type":"session.created","object":"event","timestamp":1764000000,"data":{"id":"sess_1"}}"#;
    assert_eq!(app.deliver("msg_session", body).await.status(), StatusCode::ACCEPTED);
    let state: String = sqlx::query_scalar("select state from jobs where event_id = 'msg_session'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "skipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn database_down_answers_503_quickly() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    // A pool pointing at a port where no Postgres listens.
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
        .unwrap();
    let app = TestApp::spawn(dead, config(Some(SECRET), false)).await;
    let started = Instant::now();
    let r = app.deliver("msg_down", &fixture("user.created")).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    drop(pool);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_ok_on_a_migrated_database() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let app = TestApp::receiver(pool.clone()).await;
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    sqlx::query("delete from _sqlx_migrations")
        .execute(&pool)
        .await
        .unwrap();
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready while migrations are missing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_configured_secret_one_is_generated_once_and_kept() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let first = TestApp::spawn(pool.clone(), config(None, false)).await;
    let stored: String = sqlx::query_scalar("select value from settings where key = 'webhook_secret'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(stored.starts_with("whsec_"));
    first.stop().await;
    let second = TestApp::spawn(pool.clone(), config(None, false)).await;
    let again: String = sqlx::query_scalar("select value from settings where key = 'webhook_secret'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, again, "stable across restarts");
    let signer = WebhookVerifier::parse(&stored).unwrap();
    let r = second
        .deliver_signed(&signer, "msg_gen", now_secs(), &fixture("user.created"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_creates_a_missing_database_and_migrates_it() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let name = format!("orgsync_create_{}", std::process::id());
    let url = database_on_server(&name);
    sqlx::query(&format!("drop database if exists {name}"))
        .execute(&pool)
        .await
        .unwrap();
    let mut cfg = config(Some(SECRET), false);
    cfg.database_url = url.clone();
    let app = orgsync::app::Application::build(cfg)
        .await
        .expect("builds against a missing database");
    assert!(orgsync::db::is_ready(app.pool()).await.unwrap());
    app.pool().close().await;
    drop(app);
    sqlx::query(&format!("drop database {name} with (force)"))
        .execute(&pool)
        .await
        .unwrap();
}

mod against_svix {
    //! Our HMAC check against the `svix` crate's own signing and verifying, both ways.
    use super::*;
    use proptest::prelude::*;

    fn svix_headers(id: &str, ts: i64, signature: &str) -> http::HeaderMap {
        headers(id, ts, signature)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_round_trips_agree_with_svix(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            id in "[a-zA-Z0-9_]{1,40}",
            ts in 0i64..4_000_000_000,
            body in "\\PC{0,300}",
            flip in any::<Option<usize>>(),
        ) {
            use base64::Engine;
            let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key));
            let ours = WebhookVerifier::parse(&secret).unwrap();
            let theirs = svix::webhooks::Webhook::new(&secret).unwrap();
            let signature = theirs.sign(&id, ts, body.as_bytes()).unwrap();
            let h = svix_headers(&id, ts, &signature);
            prop_assert_eq!(ours.verify_ignoring_timestamp(&h, body.as_bytes()), Ok(()));
            prop_assert_eq!(&ours.sign(&id, ts, body.as_bytes())["svix-signature"], signature.as_str());
            // A changed body: both refuse.
            let mut other = body.clone().into_bytes();
            match flip {
                Some(i) if !other.is_empty() => { let i = i % other.len(); other[i] ^= 1; }
                _ => other.push(b'x'),
            }
            if std::str::from_utf8(&other).is_ok() {
                prop_assert_eq!(ours.verify_ignoring_timestamp(&h, &other), Err(VerifyError::BadSignature));
                prop_assert!(theirs.verify_ignoring_timestamp(&other, &h).is_err());
            }
        }
    }

    #[test]
    fn rotation_and_tolerance_match_svix() {
        let now = now_secs();
        let old = svix::webhooks::Webhook::new(OLD_SECRET).unwrap();
        let new = svix::webhooks::Webhook::new(SECRET).unwrap();
        let both = WebhookVerifier::parse(&format!("{SECRET} {OLD_SECRET}")).unwrap();
        let only_new = WebhookVerifier::parse(SECRET).unwrap();
        let body = fixture("user.created");
        for (signer, by_new) in [(&old, false), (&new, true)] {
            for (offset, in_tolerance) in [(0, true), (-299, true), (299, true), (-301, false), (301, false)] {
                let ts = now + offset;
                let h = svix_headers("msg_rot", ts, &signer.sign("msg_rot", ts, body.as_bytes()).unwrap());
                let expect = |ok: bool| if ok { Ok(()) } else { Err(VerifyError::BadSignature) };
                assert_eq!(both.verify(&h, body.as_bytes()), expect(in_tolerance), "{offset}");
                assert_eq!(
                    only_new.verify(&h, body.as_bytes()),
                    expect(in_tolerance && by_new),
                    "{offset}"
                );
                assert_eq!(
                    new.verify(body.as_bytes(), &h).is_ok(),
                    in_tolerance && by_new,
                    "{offset}"
                );
            }
        }
        // Our signatures pass svix's own check.
        let h = only_new.sign("msg_ours", now, body.as_bytes());
        assert!(new.verify(body.as_bytes(), &h).is_ok());
        // Several entries, other versions and garbage among them.
        let good = new.sign("msg_many", now, body.as_bytes()).unwrap();
        let many = svix_headers("msg_many", now, &format!("v2,abc v1,!!! v1,Zm9v {good}"));
        assert_eq!(only_new.verify(&many, body.as_bytes()), Ok(()));
        // A body that is not UTF-8 is a 400, not a 401.
        let h = only_new.sign("msg_bin", now, b"\xff\xfe");
        assert_eq!(only_new.verify(&h, b"\xff\xfe"), Err(VerifyError::BodyNotUtf8));
    }
}
