//! The write path through the real `/v1` API against the fake Clerk, which sends its webhooks
//! back to the app: every answer is already in the rows and the change feed, the webhooks Clerk
//! sends later for the same change are duplicates, and a newer webhook still wins.

mod common;
mod fake_clerk;
mod write_support;

use common::*;
use serde_json::{json, Value};
use write_support::*;

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_created_hotel_is_in_the_rows_and_the_feed_at_the_answer_and_its_webhooks_change_nothing() {
    let db = TestDb::new().await;
    let w = WriteApp::start(db.pool.clone()).await;
    w.fake.hold_webhooks(true); // Clerk's webhooks come later, as they do

    let hotel = w.create_hotel("Hotel Alpine").await;
    let hotel_id = id(&hotel);
    assert_eq!(hotel["name"], "Hotel Alpine");
    assert!(hotel["slug"].as_str().unwrap().starts_with("hotel-alpine-"), "{hotel}");
    let members = hotel["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{hotel}");
    assert_eq!(members[0]["user_id"], "user_maria");
    assert_eq!(members[0]["role"], "org:admin");
    assert_eq!(members[0]["email"], "maria@example.com", "the creator was fetched, not a stub");

    // In the same breath: rows, the access view and the feed.
    let pool = w.pool();
    let (name, live): (String, bool) = sqlx::query_as("select name, deleted_at is null from hotels where id = $1")
        .bind(&hotel_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!((name.as_str(), live), ("Hotel Alpine", true));
    let admin: bool = sqlx::query_scalar(
        "select exists (select 1 from member_permissions where hotel_id = $1 and user_id = 'user_maria'
                        and permission = 'org:sys_memberships:manage')",
    )
    .bind(&hotel_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(admin, "member_permissions already grants the admin's permissions");
    let changes = feed(pool).await;
    let kinds: Vec<(&str, &str, Option<&str>)> = changes
        .iter()
        .map(|(e, _, op, s)| (e.as_str(), op.as_str(), s.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("hotel", "created", Some("api")),
            ("user", "created", Some("api")),
            ("membership", "created", Some("api"))
        ]
    );
    assert_eq!(job_count(pool).await, 0, "no webhook has arrived yet");

    // Clerk's webhooks for the same change: duplicates by version.
    let before = rows(pool).await;
    settle(&w).await;
    let delivered: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'done'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(delivered >= 2, "organization.created and organizationMembership.created were applied");
    assert_eq!(rows(pool).await, before, "the webhooks changed no row");
    assert_eq!(feed(pool).await.len(), changes.len(), "and made no second change row");

    let (status, read) = w.call("GET", &format!("/v1/hotels/{hotel_id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(read, hotel);
    w.app.stop().await;
}

fn version(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v["updated_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_newer_than_the_write_still_wins() {
    let db = TestDb::new().await;
    let w = WriteApp::start(db.pool.clone()).await;
    w.fake.hold_webhooks(true);
    let hotel = w.create_hotel("Hotel Alpine").await;
    let hotel_id = id(&hotel);
    let path = format!("/v1/hotels/{hotel_id}");
    let (status, renamed) = w.call("PATCH", &path, Some(json!({"name": "Alpine Lodge"}))).await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["name"], "Alpine Lodge");

    // A rename made in Clerk's dashboard just after the API's: its webhook wins, and the held
    // webhooks of the API's own writes, arriving late and shuffled, change nothing.
    let newer = events::organization(
        "organization.updated",
        &hotel_id,
        "Lodge Alpine",
        version(&hotel),
        version(&renamed) + 1,
        now_secs(),
    );
    assert_eq!(w.app.deliver("msg_newer", &newer.to_string()).await.status(), 202);
    w.fake.configure_webhooks(fake_clerk::WebhookSettings::unruly(
        std::time::Duration::from_millis(50),
        0.5,
        7,
    ));
    settle(&w).await;
    let (_, read) = w.call("GET", &path, None).await;
    assert_eq!(read["name"], "Lodge Alpine");

    // A newer webhook already applied when the API's answer comes: the answer shows it.
    let future = events::organization(
        "organization.updated",
        &hotel_id,
        "Future Lodge",
        version(&hotel),
        w.fake.now_ms() + 60_000,
        now_secs(),
    );
    assert_eq!(w.app.deliver("msg_future", &future.to_string()).await.status(), 202);
    jobs_settled(w.pool()).await;
    let (status, answer) = w.call("PATCH", &path, Some(json!({"name": "Stale Name"}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["name"], "Future Lodge", "the API's older version does not overwrite it");
    w.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_member_is_in_the_feed_before_the_answer() {
    let db = TestDb::new().await;
    let w = WriteApp::start(db.pool.clone()).await;
    let hotel = w.create_hotel("Hotel Alpine").await;
    let hotel_id = id(&hotel);
    let (status, tom) = w
        .call(
            "POST",
            &format!("/v1/hotels/{hotel_id}/members"),
            Some(json!({"user_id": "user_tom", "role": "org:member"})),
        )
        .await;
    assert_eq!(status, 201, "{tom}");
    assert_eq!(tom["role"], "org:member");
    settle(&w).await;
    w.fake.hold_webhooks(true);

    // An app following the feed from here revokes Tom's tokens the moment the answer comes.
    let cursor = orgsync::changes::last_id(w.pool()).await.unwrap();
    let (status, removed) = w
        .call("DELETE", &format!("/v1/hotels/{hotel_id}/members/user_tom"), None)
        .await;
    assert_eq!(status, 200, "{removed}");
    assert!(removed["removed_at"].is_string(), "{removed}");
    let seen = orgsync::changes::read_after(w.pool(), cursor, None, 100).await.unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].entity, "membership");
    assert_eq!(seen[0].entity_id, tom["membership_id"].as_str().unwrap());
    assert_eq!(seen[0].user_id.as_deref(), Some("user_tom"));
    assert_eq!(seen[0].op, "deleted");
    assert_eq!(seen[0].source.as_deref(), Some("api"));
    let holds: i64 = sqlx::query_scalar("select count(*) from member_permissions where user_id = 'user_tom'")
        .fetch_one(w.pool())
        .await
        .unwrap();
    assert_eq!(holds, 0, "Tom holds nothing any more");

    let before = rows(w.pool()).await;
    settle(&w).await;
    assert_eq!(rows(w.pool()).await, before, "the organizationMembership.deleted webhook changed nothing");
    let after = orgsync::changes::read_after(w.pool(), cursor, None, 100).await.unwrap();
    assert_eq!(after.len(), 1, "and made no second change row: {after:?}");
    w.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_onboarding_flow_runs_end_to_end() {
    let db = TestDb::new().await;
    let w = WriteApp::start(db.pool.clone()).await;
    w.fake.configure_webhooks(fake_clerk::WebhookSettings::unruly(
        std::time::Duration::from_millis(80),
        0.3,
        21,
    ));
    let pool = w.pool();
    // 1. The manager creates the hotel: it exists in the app's tables at the answer.
    let hotel = w.create_hotel("Hotel Alpine").await;
    let hotel_id = id(&hotel);
    // 2. Staff are invited, one and in bulk.
    let base = format!("/v1/hotels/{hotel_id}");
    let (status, ana) = w
        .call(
            "POST",
            &format!("{base}/invitations"),
            Some(json!({"email_address": "ana@example.com", "role": "org:member"})),
        )
        .await;
    assert_eq!(status, 201, "{ana}");
    assert_eq!(ana["status"], "pending");
    assert!(ana.get("url").is_none(), "the acceptance URL is never answered");
    let (status, bulk) = w
        .call(
            "POST",
            &format!("{base}/invitations/bulk"),
            Some(json!([{"email_address": "tom@example.com", "role": "org:member"},
                        {"email_address": "zoe@example.com", "role": "org:member"}])),
        )
        .await;
    assert_eq!(status, 201, "{bulk}");
    let invited = bulk["invitations"].as_array().unwrap();
    assert_eq!(invited.len(), 2);
    let pending: i64 = sqlx::query_scalar("select count(*) from invitations where hotel_id = $1 and status = 'pending'")
        .bind(&hotel_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(pending, 3);
    // Zoe's invitation is revoked.
    let (status, revoked) = w
        .call("POST", &format!("{base}/invitations/{}/revoke", id(&invited[1])), None)
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    // 3. Ana accepts in Clerk's UI: the webhooks bring her membership.
    w.fake.accept_invitation(&id(&ana), "user_ana").unwrap();
    settle(&w).await;
    // 4. Tom is added directly, promoted, and Ana is removed.
    let (status, _) = w
        .call("POST", &format!("{base}/members"), Some(json!({"user_id": "user_tom", "role": "org:member"})))
        .await;
    assert_eq!(status, 201);
    let (status, tom) = w
        .call("PATCH", &format!("{base}/members/user_tom"), Some(json!({"role": "org:admin"})))
        .await;
    assert_eq!(status, 200, "{tom}");
    assert_eq!(tom["role"], "org:admin");
    let (status, _) = w.call("DELETE", &format!("{base}/members/user_ana"), None).await;
    assert_eq!(status, 200);
    let (status, listed) = w.call("GET", &format!("{base}/members"), None).await;
    assert_eq!(status, 200);
    let who: Vec<(&str, &str)> = listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user_id"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(who, vec![("user_maria", "org:admin"), ("user_tom", "org:admin")]);
    // The access answer is `orgsync access --json`'s.
    let (status, access) = w
        .call(
            "GET",
            &format!("/v1/access?user_id=user_tom&hotel_id={hotel_id}&permission=org:sys_memberships:manage"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{access}");
    assert_eq!(access["held"], true);
    let expected = orgsync::ops::check_access(pool, "user_tom", &hotel_id, Some("org:sys_memberships:manage"))
        .await
        .unwrap();
    assert_eq!(access, serde_json::to_value(&expected).unwrap());
    settle(&w).await;
    let settled = rows(pool).await;
    let changes = feed(pool).await.len();

    // 5. The hotel is deleted: tombstone, memberships and invitations ended, at once.
    let (status, gone) = w.call("DELETE", &base, None).await;
    assert_eq!(status, 200, "{gone}");
    assert!(gone["deleted_at"].is_string());
    assert_eq!(gone["members"], json!([]));
    let (live_members, live_invitations): (i64, i64) = sqlx::query_as(
        "select (select count(*) from memberships where hotel_id = $1 and deleted_at is null),
                (select count(*) from invitations where hotel_id = $1 and deleted_at is null)",
    )
    .bind(&hotel_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((live_members, live_invitations), (0, 0));
    let (status, body) = w.call("GET", &base, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (410, Some("hotel_deleted")));
    assert!(feed(pool).await.len() > changes);
    let deleted = rows(pool).await;
    settle(&w).await;
    assert_ne!(settled, deleted);
    assert_eq!(rows(pool).await, deleted, "the deletion's webhooks changed nothing");
    w.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clerk_refusals_come_back_with_clerk_status_and_code_and_malformed_requests_never_reach_clerk() {
    let db = TestDb::new().await;
    let w = WriteApp::start(db.pool.clone()).await;
    let hotel = w.create_hotel("Hotel Alpine").await;
    let slug = hotel["slug"].as_str().unwrap();

    // Clerk's 4xx: its status and code.
    let (status, body) = w
        .call("POST", "/v1/hotels", Some(json!({"name": "Other", "slug": slug, "created_by": "user_maria"})))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "clerk_rejected");
    assert_eq!(body["error"]["clerk_code"], "form_identifier_exists");
    let (status, body) = w
        .call(
            "POST",
            &format!("/v1/hotels/{}/members", id(&hotel)),
            Some(json!({"user_id": "user_nobody", "role": "org:member"})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["clerk_code"], "resource_not_found");

    // Malformed: 400/422 naming the field, and nothing sent.
    let sent = w.fake.log().len();
    for (body, field) in [
        (json!({"created_by": "user_maria"}), "name"),
        (json!({"name": "", "created_by": "user_maria"}), "name"),
        (json!({"name": "A", "created_by": "maria"}), "created_by"),
        (json!({"name": "A", "created_by": "user_maria", "slug": "Not a slug"}), "slug"),
        (json!({"name": "A", "created_by": "user_maria", "public_metadata": "x"}), "public_metadata"),
        (json!({"name": "A", "created_by": "user_maria", "max_allowed_memberships": -1}), "max_allowed_memberships"),
        (json!({"name": "A", "created_by": "user_maria", "colour": "red"}), "colour"),
    ] {
        let (status, answer) = w.call("POST", "/v1/hotels", Some(body.clone())).await;
        assert_eq!(status, 422, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], "invalid_field");
        assert_eq!(answer["error"]["field"], field, "{body} → {answer}");
    }
    let resp = w
        .http
        .post(w.url("/v1/hotels"))
        .bearer_auth(&w.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (status, answer) = w
        .call(
            "POST",
            &format!("/v1/hotels/{}/invitations/bulk", id(&hotel)),
            Some(json!([{"email_address": "a@x.test", "role": "org:member"}, {"email_address": "nope", "role": "org:member"}])),
        )
        .await;
    assert_eq!((status, answer["error"]["field"].as_str()), (422, Some("[1].email_address")), "{answer}");
    let (status, _) = w.call("PATCH", "/v1/hotels/not_an_org", Some(json!({"name": "x"}))).await;
    assert_eq!(status, 422);
    let (status, answer) = w.call("GET", "/v1/access?user_id=user_maria", None).await;
    assert_eq!((status, answer["error"]["field"].as_str()), (422, Some("hotel_id")));
    let big = "x".repeat(300 * 1024);
    let (status, _) = w
        .call("POST", "/v1/hotels", Some(json!({"name": "A", "created_by": "user_maria", "public_metadata": {"a": big}})))
        .await;
    assert_eq!(status, 413);
    assert_eq!(w.fake.log().len(), sent, "nothing reached Clerk");
    w.app.stop().await;
}
