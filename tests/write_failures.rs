//! The write path when things go wrong: lost answers never make a second organization, Clerk's
//! rate limit is waited out within the deadline and then answered 503 with `Retry-After`, and a
//! mirror write that fails after Clerk succeeded answers 502 `mirror_pending`, writes nothing,
//! and converges from the webhook.

mod common;
mod fake_clerk;
mod write_support;

use std::time::{Duration, Instant};

use common::*;
use fake_clerk::{Failure, LostAnswer, LostMode};
use serde_json::json;
use write_support::*;

fn hotels_named(fake: &fake_clerk::FakeClerk, name: &str) -> usize {
    fake.orgs().iter().filter(|o| o["name"] == name).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_whose_answer_was_lost_is_looked_up_by_slug_not_sent_again() {
    let db = TestDb::new().await;
    let w = WriteApp::start(db.pool.clone()).await;
    for (i, mode) in [LostMode::Drop, LostMode::Status(502)].into_iter().enumerate() {
        w.fake
            .lose_answer(LostAnswer::new("POST", "/v1/organizations").mode(mode.clone()));
        let name = format!("Hotel Lost {i}");
        let hotel = w.create_hotel(&name).await;
        assert_eq!(hotels_named(&w.fake, &name), 1, "one organization in Clerk ({mode:?})");
        let slug = hotel["slug"].as_str().unwrap();
        assert_eq!(
            w.fake.requests_with("GET", &format!("/v1/organizations/{slug}")),
            1,
            "it was looked up by its slug"
        );
        assert_eq!(hotel["members"][0]["user_id"], "user_maria");
    }
    assert_eq!(
        w.fake.requests_with("POST", "/v1/organizations"),
        2,
        "each create was sent once"
    );
    w.app.stop().await;
}

/// Posts `body` to `/v1/hotels` with `key`, in the background.
fn post_in_background(
    w: &WriteApp,
    body: serde_json::Value,
    key: &str,
) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    let (http, url, token, key) = (w.http.clone(), w.url("/v1/hotels"), w.token.clone(), key.to_owned());
    tokio::spawn(async move {
        let r = http
            .post(url)
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_the_same_idempotency_key_after_a_lost_answer_makes_no_second_organization() {
    let db = TestDb::new().await;
    let fake = fake_clerk::FakeClerk::start().await;
    let w = WriteApp::start_with(db.pool.clone(), fake, |c| c.api.clerk_deadline = Duration::from_secs(2)).await;
    // The answer is lost, and the look-up gets no answer before the deadline either: the request
    // cannot tell what happened.
    w.fake.lose_answer(LostAnswer::new("POST", "/v1/organizations"));
    let lookup = w.fake.gate("/v1/organizations/hotel-alpine");
    let body = json!({"name": "Hotel Alpine", "slug": "hotel-alpine", "created_by": "user_maria"});
    let key = [("idempotency-key", "onboarding-42")];
    let (status, first) = w.call_with("POST", "/v1/hotels", Some(body.clone()), &key).await;
    // Not "unavailable" (which would say nothing was done): the outcome is unknown, and the
    // answer names the slug a retry without the key must reuse.
    assert_eq!(status, 502, "{first}");
    assert_eq!(first["error"]["code"], "clerk_outcome_unknown");
    assert!(
        first["error"]["message"].as_str().unwrap().contains("hotel-alpine"),
        "{first}"
    );
    assert_eq!(hotels_named(&w.fake, "Hotel Alpine"), 1, "Clerk did create it");

    // Clerk answers again: the same key finds the organization instead of making another.
    lookup.open();
    let (status, second) = w.call_with("POST", "/v1/hotels", Some(body.clone()), &key).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(hotels_named(&w.fake, "Hotel Alpine"), 1, "still one organization");
    assert_eq!(w.fake.requests_with("POST", "/v1/organizations"), 1, "never sent twice");
    // A repeat gets the stored answer, without asking Clerk.
    let sent = w.fake.log().len();
    let resp = w
        .http
        .post(w.url("/v1/hotels"))
        .bearer_auth(&w.token)
        .header("idempotency-key", "onboarding-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), second);
    assert_eq!(w.fake.log().len(), sent);
    // The same key with another body is refused.
    let (status, other) = w
        .call_with(
            "POST",
            "/v1/hotels",
            Some(json!({"name": "Other", "created_by": "user_maria"})),
            &key,
        )
        .await;
    assert_eq!(
        (status, other["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    w.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generated_slug_is_kept_with_the_key_so_the_retry_finds_the_first_attempt() {
    let db = TestDb::new().await;
    let fake = fake_clerk::FakeClerk::start().await;
    let w = WriteApp::start_with(db.pool.clone(), fake, |c| c.api.clerk_deadline = Duration::from_secs(2)).await;
    let body = json!({"name": "Hotel Nameless", "created_by": "user_maria"});
    // Hold the create to learn the slug orgsync generated, then lose its answer and its look-up.
    let create = w.fake.gate("/v1/organizations");
    w.fake.lose_answer(LostAnswer::new("POST", "/v1/organizations"));
    let first = post_in_background(&w, body.clone(), "k-nameless");
    w.fake.wait_for_requests("/v1/organizations", 1).await;
    let sent = w.fake.log().into_iter().find(|l| l.method == "POST").unwrap();
    let slug = sent.body.unwrap()["slug"].as_str().unwrap().to_owned();
    assert!(slug.starts_with("hotel-nameless-"), "{slug}");
    let lookup = w.fake.gate(&format!("/v1/organizations/{slug}"));
    create.open();
    let (status, answer) = first.await.unwrap();
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["code"], "clerk_outcome_unknown");

    lookup.open();
    let (status, answer) = w
        .call_with("POST", "/v1/hotels", Some(body), &[("idempotency-key", "k-nameless")])
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["slug"], slug.as_str());
    assert_eq!(hotels_named(&w.fake, "Hotel Nameless"), 1);
    assert_eq!(w.fake.requests_with("POST", "/v1/organizations"), 1);
    w.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_repeat_waits_for_the_first_and_gets_its_answer() {
    let db = TestDb::new().await;
    let w = WriteApp::start(db.pool.clone()).await;
    let body = json!({"name": "Hotel Twice", "created_by": "user_maria"});
    // The first request is held after its create (fetching its creator).
    let users = w.fake.gate("/v1/users");
    let first = post_in_background(&w, body.clone(), "k-twice");
    w.fake.wait_for_requests("/v1/users", 1).await;
    let second = post_in_background(&w, body, "k-twice");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the repeat waits for the first");
    users.open();
    let (s1, b1) = first.await.unwrap();
    let (s2, b2) = second.await.unwrap();
    assert_eq!((s1, s2), (201, 201), "{b1} {b2}");
    assert_eq!(b1, b2);
    assert_eq!(hotels_named(&w.fake, "Hotel Twice"), 1);
    w.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_are_waited_out_within_the_deadline_then_answered_503_with_retry_after() {
    let db = TestDb::new().await;
    let fake = fake_clerk::FakeClerk::start().await;
    let w = WriteApp::start_with(db.pool.clone(), fake, |c| c.api.clerk_deadline = Duration::from_secs(5)).await;
    // Two 429s of one second each: within the deadline, the create goes through.
    w.fake.fail(
        Failure::new("/v1/organizations", 429)
            .method("POST")
            .retry_after("1")
            .times(2),
    );
    let started = Instant::now();
    w.create_hotel("Hotel Patient").await;
    assert!(started.elapsed() >= Duration::from_secs(2), "Retry-After was honoured");
    assert_eq!(w.fake.requests_with("POST", "/v1/organizations"), 3);

    // A storm longer than the deadline: 503 with Retry-After, at once, and nothing created.
    w.fake
        .fail(Failure::new("/v1/organizations", 429).method("POST").retry_after("30"));
    let started = Instant::now();
    let resp = w
        .http
        .post(w.url("/v1/hotels"))
        .bearer_auth(&w.token)
        .json(&json!({"name": "Hotel Stormy", "created_by": "user_maria"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no waiting past the deadline"
    );
    assert_eq!(hotels_named(&w.fake, "Hotel Stormy"), 0);
    let (status, body) = w
        .call("GET", "/v1/access?user_id=user_maria&hotel_id=org_x", None)
        .await;
    assert_eq!(status, 200, "reads of the mirror need no Clerk: {body}");
    w.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_budget_is_shared_and_bounded_by_the_deadline() {
    let db = TestDb::new().await;
    let fake = fake_clerk::FakeClerk::start().await;
    let w = WriteApp::start_with(db.pool.clone(), fake, |c| {
        c.api.clerk_deadline = Duration::from_secs(1);
        c.clerk.as_mut().unwrap().rate_limit = Some(3);
    })
    .await;
    // A create costs three requests (create, memberships, the creator): the window is full, and
    // the next create cannot wait 10 s for a slot within its 1-second deadline.
    w.create_hotel("Hotel One").await;
    let started = Instant::now();
    let (status, body) = w
        .call(
            "POST",
            "/v1/hotels",
            Some(json!({"name": "Hotel Two", "created_by": "user_tom"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("rate_limited")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(hotels_named(&w.fake, "Hotel Two"), 0, "nothing was sent");
    w.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_gone_after_clerk_answered_is_502_mirror_pending_then_the_webhook_converges() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = test_database_url(&db.pool)
        .await
        .replace(":5432/", &format!(":{}/", proxy.addr.port()));
    let options = orgsync::db::connect_options(&url, &orgsync::db::Schema::default()).unwrap();
    let app_pool = orgsync::db::lazy_pool(
        options,
        &orgsync::db::PoolSettings {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(1),
        },
    );
    let fake = fake_clerk::FakeClerk::start().await;
    let w = WriteApp::start_with(app_pool, fake, |_| {}).await;
    let hotel = w.create_hotel("Hotel Alpine").await;
    let hotel_id = hotel["id"].as_str().unwrap().to_owned();
    settle(&w).await;
    w.fake.hold_webhooks(true);
    let before = rows(&db.pool).await;

    // Postgres becomes unreachable while Clerk adds the member.
    let path = format!("/v1/organizations/{hotel_id}/memberships");
    let gate = w.fake.gate(&path);
    let add = {
        let (http, url, token) = (
            w.http.clone(),
            w.url(&format!("/v1/hotels/{hotel_id}/members")),
            w.token.clone(),
        );
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"user_id": "user_tom", "role": "org:member"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        })
    };
    while w.fake.requests_with("POST", &path) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.cut();
    gate.open();
    let (status, body) = add.await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "mirror_pending");
    assert_eq!(w.fake.memberships_of(&hotel_id).len(), 2, "Clerk has the member");
    assert_eq!(rows(&db.pool).await, before, "nothing was half-applied");

    // Postgres is back; Clerk's webhook brings the membership.
    proxy.restore();
    w.fake.configure_webhooks(fake_clerk::WebhookSettings {
        retries: 20,
        retry_delay: Duration::from_millis(100),
        ..Default::default()
    });
    settle(&w).await;
    let role: String = sqlx::query_scalar("select role from memberships where hotel_id = $1 and user_id = 'user_tom'")
        .bind(&hotel_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(role, "org:member");
    w.app.stop().await;
}
