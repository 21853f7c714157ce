//! The fake Clerk's writes, checked where it is cheap: a write changes what the read endpoints
//! list, answers carry `Date` and a fresh `updated_at` and Clerk's error bodies, lost answers
//! and injected failures behave, webhook delivery is seeded, held, duplicated and retried as
//! configured, and the webhooks it emits reach a running orgsync and become rows (so their
//! signatures and payload shapes are what orgsync accepts).

mod common;
mod fake_clerk;

use std::time::Duration;

use common::*;
use fake_clerk::{permission, role, role_set, user, Failure, FakeClerk, LostAnswer, LostMode, WebhookSettings, KEY};
use serde_json::{json, Value};

const BASE: i64 = 1_764_000_000_000;
const MARIA: &str = "user_2staffMaria000000000000001";
const LUCA: &str = "user_2staffLuca0000000000000001";

async fn fake_with_users() -> FakeClerk {
    let fake = FakeClerk::start().await;
    fake.put_user(&user(MARIA, "maria@example.com", "Maria", "Rossi", BASE, BASE));
    fake.put_user(&user(LUCA, "luca@example.com", "Luca", "Bianchi", BASE, BASE));
    fake
}

/// `method path` with `body` and the fake's key: (status, headers, JSON body).
async fn call(
    fake: &FakeClerk,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method.parse().unwrap(), format!("{}{path}", fake.url()))
        .bearer_auth(KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("the fake answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn error_code(body: &Value) -> &str {
    body["errors"][0]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_created_organization_is_listed_with_its_creator_as_admin_and_answers_carry_date() {
    let fake = fake_with_users().await;
    let before = fake.now_ms();
    let (status, headers, org) = call(
        &fake,
        "POST",
        "/v1/organizations",
        Some(json!({"name": "Hotel Bellavista", "created_by": MARIA, "public_metadata": {"stars": 5}})),
    )
    .await;
    assert_eq!(status, 200, "{org}");
    let date = headers.get("date").expect("a Date header").to_str().unwrap();
    let date = chrono::DateTime::parse_from_rfc2822(date).unwrap().timestamp_millis();
    let updated = org["updated_at"].as_i64().unwrap();
    assert!(
        updated >= before && updated <= fake.now_ms(),
        "updated_at is the fake's now"
    );
    assert_eq!(
        date / 1000,
        fake.now_ms() / 1000,
        "Date is the fake's clock, in whole seconds"
    );
    assert_eq!(org["slug"], "hotel-bellavista", "a slug made from the name");
    assert_eq!(org["members_count"], 1);
    assert_eq!(org["public_metadata"]["stars"], 5);

    let id = org["id"].as_str().unwrap();
    let (_, _, listed) = call(&fake, "GET", "/v1/organizations", None).await;
    assert_eq!(listed["total_count"], 1);
    assert_eq!(listed["data"][0]["id"], id);
    let (_, _, members) = call(&fake, "GET", &format!("/v1/organizations/{id}/memberships"), None).await;
    assert_eq!(members["total_count"], 1);
    assert_eq!(members["data"][0]["role"], "org:admin");
    assert_eq!(members["data"][0]["public_user_data"]["user_id"], MARIA);
    assert_eq!(members["data"][0]["organization"]["members_count"], 1);

    // Clerk's refusals.
    let (status, _, err) = call(
        &fake,
        "POST",
        "/v1/organizations",
        Some(json!({"name": "X", "slug": "hotel-bellavista"})),
    )
    .await;
    assert_eq!((status, error_code(&err)), (422, "form_identifier_exists"));
    assert_eq!(err["errors"][0]["meta"]["param_name"], "slug");
    let (status, _, err) = call(
        &fake,
        "POST",
        "/v1/organizations",
        Some(json!({"name": "Y", "created_by": "user_2nobody00000000000000001"})),
    )
    .await;
    assert_eq!((status, error_code(&err)), (400, "organization_creator_not_found"));
    let (status, _, err) = call(&fake, "POST", "/v1/organizations", Some(json!({"slug": "no-name"}))).await;
    assert_eq!((status, error_code(&err)), (422, "form_param_missing"));
    let (status, _, err) = call(
        &fake,
        "PATCH",
        &format!("/v1/organizations/{id}"),
        Some(json!({"public_metadata": {}})),
    )
    .await;
    assert_eq!(
        (status, error_code(&err)),
        (422, "form_param_unknown"),
        "metadata goes through /metadata"
    );
    let (_, _, again) = call(
        &fake,
        "POST",
        "/v1/organizations",
        Some(json!({"name": "Hotel Bellavista"})),
    )
    .await;
    assert_eq!(
        again["slug"], "hotel-bellavista-2",
        "a generated slug avoids a taken one"
    );

    // Update, metadata merge, delete.
    let (status, _, patched) = call(
        &fake,
        "PATCH",
        &format!("/v1/organizations/{id}"),
        Some(json!({"name": "Bellavista"})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(patched["updated_at"].as_i64().unwrap() > updated);
    let (_, _, merged) = call(
        &fake,
        "PATCH",
        &format!("/v1/organizations/{id}/metadata"),
        Some(json!({"public_metadata": {"region": "lake"}})),
    )
    .await;
    assert_eq!(merged["public_metadata"], json!({"stars": 5, "region": "lake"}));
    let (status, _, deleted) = call(&fake, "DELETE", &format!("/v1/organizations/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        deleted,
        json!({"object": "organization", "id": id, "slug": "hotel-bellavista", "deleted": true})
    );
    let (status, _, _) = call(&fake, "GET", &format!("/v1/organizations/{id}"), None).await;
    assert_eq!(status, 404);
    assert!(fake.memberships_of(id).is_empty(), "its memberships went with it");
}

#[tokio::test]
async fn memberships_and_invitations_change_the_listings() {
    let fake = fake_with_users().await;
    let (_, _, org) = call(
        &fake,
        "POST",
        "/v1/organizations",
        Some(json!({"name": "Hotel Lago", "created_by": MARIA})),
    )
    .await;
    let id = org["id"].as_str().unwrap();
    let members = format!("/v1/organizations/{id}/memberships");
    let (status, _, err) = call(
        &fake,
        "POST",
        &members,
        Some(json!({"user_id": LUCA, "role": "org:ghost"})),
    )
    .await;
    assert_eq!((status, error_code(&err)), (404, "resource_not_found"));
    let (status, _, m) = call(
        &fake,
        "POST",
        &members,
        Some(json!({"user_id": LUCA, "role": "org:member"})),
    )
    .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["permissions"], json!(["org:sys_memberships:read"]));
    let (status, _, err) = call(
        &fake,
        "POST",
        &members,
        Some(json!({"user_id": LUCA, "role": "org:member"})),
    )
    .await;
    assert_eq!((status, error_code(&err)), (400, "already_a_member_in_organization"));
    let (_, _, changed) = call(
        &fake,
        "PATCH",
        &format!("{members}/{LUCA}"),
        Some(json!({"role": "org:admin"})),
    )
    .await;
    assert_eq!(changed["role"], "org:admin");
    assert!(changed["updated_at"].as_i64() > m["updated_at"].as_i64());
    let (status, _, removed) = call(&fake, "DELETE", &format!("{members}/{LUCA}"), None).await;
    assert_eq!((status, removed["id"].clone()), (200, m["id"].clone()));
    let (_, _, listed) = call(&fake, "GET", &members, None).await;
    assert_eq!(listed["total_count"], 1);

    let invitations = format!("/v1/organizations/{id}/invitations");
    let (status, _, inv) = call(
        &fake,
        "POST",
        &invitations,
        Some(json!({"email_address": "giulia@example.com", "role": "org:member"})),
    )
    .await;
    assert_eq!((status, inv["status"].clone()), (200, json!("pending")));
    let (status, _, err) = call(
        &fake,
        "POST",
        &invitations,
        Some(json!({"email_address": "giulia@example.com", "role": "org:member"})),
    )
    .await;
    assert_eq!((status, error_code(&err)), (400, "organization_invitation_not_unique"));
    let bulk: Vec<Value> = (0..3)
        .map(|i| json!({"email_address": format!("p{i}@example.com"), "role": "org:member"}))
        .collect();
    let (status, _, made) = call(&fake, "POST", &format!("{invitations}/bulk"), Some(json!(bulk))).await;
    assert_eq!((status, made["total_count"].clone()), (200, json!(3)));
    let eleven: Vec<Value> = (0..11)
        .map(|i| json!({"email_address": format!("q{i}@example.com"), "role": "org:member"}))
        .collect();
    let (status, _, err) = call(&fake, "POST", &format!("{invitations}/bulk"), Some(json!(eleven))).await;
    assert_eq!((status, error_code(&err)), (400, "bulk_size_exceeded"));
    let inv_id = inv["id"].as_str().unwrap();
    let (_, _, revoked) = call(&fake, "POST", &format!("{invitations}/{inv_id}/revoke"), None).await;
    assert_eq!(revoked["status"], "revoked");
    let (_, _, listed) = call(&fake, "GET", "/v1/organization_invitations", None).await;
    assert_eq!(listed["total_count"], 4);
    let (_, _, pending) = call(&fake, "GET", &format!("{invitations}?status=pending"), None).await;
    assert_eq!(pending["total_count"], 3);
    assert_eq!(fake.org(id).unwrap()["pending_invitations_count"], 3);
}

#[tokio::test]
async fn a_lost_answer_still_performs_the_write_and_injected_failures_do_not() {
    let fake = fake_with_users().await;
    fake.lose_answer(LostAnswer::new("POST", "/v1/organizations"));
    let client = reqwest::Client::new();
    let sent = client
        .post(format!("{}/v1/organizations", fake.url()))
        .bearer_auth(KEY)
        .json(&json!({"name": "Hotel Perso"}))
        .send()
        .await;
    assert!(sent.is_err(), "the connection closes unanswered: {sent:?}");
    assert!(fake.org("hotel-perso").is_some(), "yet the organization exists");

    fake.lose_answer(LostAnswer::new("POST", "/v1/organizations").mode(LostMode::Status(502)));
    let (status, _, _) = call(
        &fake,
        "POST",
        "/v1/organizations",
        Some(json!({"name": "Hotel Cinque"})),
    )
    .await;
    assert_eq!(status, 502);
    assert!(fake.org("hotel-cinque").is_some());

    fake.lose_answer(LostAnswer::new("POST", "/v1/organizations").mode(LostMode::Late(Duration::from_secs(2))));
    let late = client
        .post(format!("{}/v1/organizations", fake.url()))
        .bearer_auth(KEY)
        .timeout(Duration::from_millis(300))
        .json(&json!({"name": "Hotel Tardi"}))
        .send()
        .await;
    assert!(late.unwrap_err().is_timeout());
    assert!(fake.org("hotel-tardi").is_some());

    fake.fail(
        Failure::new("/v1/organizations", 429)
            .method("POST")
            .retry_after("1")
            .times(2),
    );
    let (status, headers, _) = call(&fake, "POST", "/v1/organizations", Some(json!({"name": "Hotel Piena"}))).await;
    assert_eq!((status, headers["retry-after"].to_str().unwrap()), (429, "1"));
    let (status, _, listed) = call(&fake, "GET", "/v1/organizations", None).await;
    assert_eq!(
        (status, listed["total_count"].clone()),
        (200, json!(3)),
        "a GET is not a POST"
    );
    assert!(fake.org("hotel-piena").is_none(), "a refused write did nothing");
    assert_eq!(fake.requests_with("POST", "/v1/organizations"), 4);
    assert_eq!(fake.log().last().unwrap().body, None, "reads log no body");
}

#[tokio::test]
async fn a_held_answer_waits_after_the_write_until_released() {
    let fake = fake_with_users().await;
    let gate = fake.hold_answers("POST", "/v1/organizations");
    let pending = tokio::spawn({
        let fake = fake.clone();
        async move {
            call(
                &fake,
                "POST",
                "/v1/organizations",
                Some(json!({"name": "Hotel Attesa"})),
            )
            .await
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.org("hotel-attesa").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write happens before the answer"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished(), "the answer is held");
    gate.open();
    let (status, _, org) = pending.await.unwrap();
    assert_eq!((status, org["slug"].clone()), (200, json!("hotel-attesa")));
}

#[tokio::test]
async fn date_and_updated_at_follow_the_fakes_clock_not_this_machines() {
    let fake = fake_with_users().await;
    fake.set_clock_offset(-3_600_000);
    let machine = chrono::Utc::now().timestamp_millis();
    let (_, headers, org) = call(&fake, "POST", "/v1/organizations", Some(json!({"name": "Hotel Ieri"}))).await;
    let date = chrono::DateTime::parse_from_rfc2822(headers["date"].to_str().unwrap()).unwrap();
    let behind = machine - date.timestamp_millis();
    assert!(
        (3_598_000..=3_602_000).contains(&behind),
        "Date is an hour behind: {behind} ms"
    );
    let behind = machine - org["updated_at"].as_i64().unwrap();
    assert!(
        (3_598_000..=3_602_000).contains(&behind),
        "updated_at is an hour behind: {behind} ms"
    );
    let (_, headers, _) = call(&fake, "GET", "/v1/users/count", None).await;
    let read = chrono::DateTime::parse_from_rfc2822(headers["date"].to_str().unwrap()).unwrap();
    assert!(
        machine - read.timestamp_millis() >= 3_598_000,
        "reads carry the fake's Date too"
    );
}

#[tokio::test]
async fn latency_is_added_to_every_request_and_reported() {
    let fake = fake_with_users().await;
    fake.set_latency(Duration::from_millis(20));
    let started = std::time::Instant::now();
    let (status, headers, _) = call(&fake, "GET", "/v1/users/count", None).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(20));
    let own: u64 = headers["x-fake-clerk-elapsed-us"].to_str().unwrap().parse().unwrap();
    assert!(own >= 20_000, "{own}");
}

#[tokio::test]
async fn role_sets_list_by_page_and_a_replaced_role_moves_its_members() {
    let fake = fake_with_users().await;
    let read = permission("perm_2read0000000000000000001", "org:rooms:read", BASE, BASE);
    fake.put_permission(&read);
    fake.put_role(&role("role_2admin00000000000000000001", "org:admin", &[], BASE, BASE));
    fake.put_role(&role(
        "role_2member0000000000000000001",
        "org:member",
        &[],
        BASE + 1,
        BASE + 1,
    ));
    fake.put_role(&role(
        "role_2desk000000000000000000001",
        "org:front_desk",
        std::slice::from_ref(&read),
        BASE + 2,
        BASE + 2,
    ));
    let mut seed = role_set(
        "rs_2hotels000000000000000001",
        "role_set:hotels",
        &["org:admin", "org:front_desk", "org:member"],
        BASE,
    );
    seed.initial = true;
    fake.put_role_set(&seed);
    for i in 0..3 {
        let body = json!({"name": format!("set {i}"), "default_role_key": "org:member", "creator_role_key": "org:admin", "roles": ["org:admin", "org:member"]});
        let (status, _, made) = call(&fake, "POST", "/v1/role_sets", Some(body)).await;
        assert_eq!(status, 200, "{made}");
        assert_eq!(made["key"], format!("role_set:set_{i}"));
    }
    let (_, _, page) = call(&fake, "GET", "/v1/role_sets?limit=2&offset=0", None).await;
    assert_eq!(
        (page["total_count"].clone(), page["data"].as_array().unwrap().len()),
        (json!(4), 2)
    );
    assert_eq!(page["data"][0]["key"], "role_set:set_2", "newest first");
    fake.fail(Failure::new("/v1/role_sets", 429).retry_after("0").times(1));
    let (status, _, _) = call(&fake, "GET", "/v1/role_sets", None).await;
    assert_eq!(status, 429);

    let (_, _, org) = call(
        &fake,
        "POST",
        "/v1/organizations",
        Some(json!({"name": "Hotel Set", "created_by": MARIA})),
    )
    .await;
    assert_eq!(
        org["role_set_key"], "role_set:hotels",
        "new organizations get the initial set"
    );
    let id = org["id"].as_str().unwrap();
    let members = format!("/v1/organizations/{id}/memberships");
    let (_, _, desk) = call(
        &fake,
        "POST",
        &members,
        Some(json!({"user_id": LUCA, "role": "org:front_desk"})),
    )
    .await;
    assert_eq!(desk["permissions"], json!(["org:rooms:read"]));
    let (_, _, by_key) = call(&fake, "GET", "/v1/role_sets/role_set:hotels", None).await;
    assert_eq!(by_key["roles"][1]["members_count"], 1);

    fake.hold_webhooks(true);
    let (status, _, set) = call(
        &fake,
        "POST",
        "/v1/role_sets/role_set:hotels/roles/replace",
        Some(json!({"role_key": "org:front_desk", "to_role_key": "org:member"})),
    )
    .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["roles"].as_array().unwrap().len(), 2);
    let moved: Vec<Value> = fake.take_held_webhooks().iter().map(|e| e.json()).collect();
    assert_eq!(moved.len(), 1, "one membership.updated, nothing for the role set");
    assert_eq!(moved[0]["type"], "organizationMembership.updated");
    assert_eq!(moved[0]["data"]["role"], "org:member");
    const GIULIA: &str = "user_2staffGiulia0000000000001";
    fake.put_user(&user(GIULIA, "giulia@example.com", "Giulia", "Verdi", BASE, BASE));
    let (status, _, err) = call(
        &fake,
        "POST",
        &members,
        Some(json!({"user_id": GIULIA, "role": "org:front_desk"})),
    )
    .await;
    assert_eq!((status, error_code(&err)), (404, "resource_not_found"));
}

#[tokio::test]
async fn delivery_is_seeded_held_duplicated_and_retried() {
    let fake = fake_with_users().await;
    // A receiver that refuses everything: every delivery is retried, then given up.
    let url = "http://127.0.0.1:9/webhooks/clerk";
    fake.set_webhook_receiver(url, SECRET);
    fake.configure_webhooks(WebhookSettings {
        retries: 2,
        retry_delay: Duration::from_millis(5),
        ..WebhookSettings::default()
    });
    call(
        &fake,
        "POST",
        "/v1/organizations",
        Some(json!({"name": "Hotel Nessuno"})),
    )
    .await;
    let deliveries = fake.webhooks_delivered().await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!((deliveries[0].attempts, deliveries[0].succeeded()), (3, false));

    // The same seed makes the same duplicates.
    let duplicated = |seed| async move {
        let fake = fake_with_users().await;
        fake.set_webhook_receiver("http://127.0.0.1:9/", SECRET);
        fake.configure_webhooks(WebhookSettings {
            hold: true,
            ..WebhookSettings::unruly(Duration::from_millis(1), 0.5, seed)
        });
        for i in 0..20 {
            call(
                &fake,
                "POST",
                "/v1/organizations",
                Some(json!({"name": format!("H {i}")})),
            )
            .await;
        }
        assert_eq!(fake.emitted_webhooks().len(), 20);
        fake.configure_webhooks(WebhookSettings {
            retries: 0,
            ..WebhookSettings::unruly(Duration::from_millis(1), 0.5, seed)
        });
        let ids: Vec<String> = fake.drain_webhooks().await.into_iter().map(|d| d.svix_id).collect();
        ids
    };
    let (a, b) = (duplicated(7).await, duplicated(7).await);
    assert!(a.len() > 20 && a.len() < 40, "about half duplicated: {}", a.len());
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(a), sorted(b));
}

#[tokio::test]
async fn emitted_webhooks_reach_orgsync_and_become_rows() {
    let db = TestDb::new().await;
    let app = TestApp::full(db.pool.clone()).await;
    let fake = fake_with_users().await;
    fake.set_webhook_receiver(&app.url("/webhooks/clerk"), SECRET);
    fake.configure_webhooks(WebhookSettings::unruly(Duration::from_millis(30), 0.3, 42));

    let (_, _, org) = call(
        &fake,
        "POST",
        "/v1/organizations",
        Some(json!({"name": "Hotel Webhook", "created_by": MARIA})),
    )
    .await;
    let id = org["id"].as_str().unwrap().to_owned();
    let members = format!("/v1/organizations/{id}/memberships");
    call(
        &fake,
        "POST",
        &members,
        Some(json!({"user_id": LUCA, "role": "org:member"})),
    )
    .await;
    call(
        &fake,
        "PATCH",
        &format!("/v1/organizations/{id}"),
        Some(json!({"name": "Hotel Webhook Renamed"})),
    )
    .await;
    let (_, _, inv) = call(
        &fake,
        "POST",
        &format!("/v1/organizations/{id}/invitations"),
        Some(json!({"email_address": "new@example.com", "role": "org:member"})),
    )
    .await;
    let (_, _, perm) = call(
        &fake,
        "POST",
        "/v1/organization_permissions",
        Some(json!({"name": "Rooms", "key": "org:rooms:manage"})),
    )
    .await;
    let (_, _, desk) = call(
        &fake,
        "POST",
        "/v1/organization_roles",
        Some(json!({"name": "Front desk", "key": "org:front_desk"})),
    )
    .await;
    let role_id = desk["id"].as_str().unwrap().to_owned();
    let perm_id = perm["id"].as_str().unwrap().to_owned();
    let (status, _, granted) = call(
        &fake,
        "POST",
        &format!("/v1/organization_roles/{role_id}/permissions/{perm_id}"),
        None,
    )
    .await;
    assert_eq!(
        (status, granted["permissions"][0]["key"].clone()),
        (200, json!("org:rooms:manage"))
    );
    call(&fake, "DELETE", &format!("{members}/{LUCA}"), None).await;

    let deliveries = fake.webhooks_delivered().await;
    assert!(deliveries.iter().all(|d| d.succeeded()), "{deliveries:?}");
    let kinds: Vec<String> = fake.emitted_webhooks().into_iter().map(|e| e.event_type).collect();
    assert_eq!(
        kinds,
        [
            "organization.created",
            "organizationMembership.created",
            "organizationMembership.created",
            "organization.updated",
            "organizationInvitation.created",
            "permission.created",
            "role.created",
            "role.updated",
            "organizationMembership.deleted",
        ]
    );
    let inv_id = inv["id"].as_str().unwrap();
    let done = format!(
        "select (select count(*) from jobs where state <> 'done') = 0
            and exists (select 1 from hotels where id = '{id}' and name = 'Hotel Webhook Renamed')
            and (select count(*) from memberships where hotel_id = '{id}' and deleted_at is null) = 1
            and exists (select 1 from memberships where hotel_id = '{id}' and user_id = '{LUCA}' and deleted_at is not null)
            and exists (select 1 from invitations where id = '{inv_id}' and status = 'pending')
            and exists (select 1 from role_permissions where role_id = '{role_id}' and permission_id = '{perm_id}')"
    );
    wait_until(&app.pool, &done, Duration::from_secs(30)).await;
    app.stop().await;
}
