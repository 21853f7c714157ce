//! rbac: administering roles through the write path at scale. A role held by 10,000 members
//! across 500 hotels (among 100,000 memberships) is granted, then revoked, a permission through
//! `POST|DELETE /v1/roles/{id}/permissions/{permission_id}` of the real `orgsync serve`, against
//! the write-capable fake Clerk in a child process answering after 20 ms. Each answer is timed
//! from request to answer, and `member_permissions` is checked right at the answer (every holder
//! holds the permission, or none does). Then the plan of the app's access check on the view
//! (`exists … where hotel_id and user_id and permission`): its cost, its run time, and that it
//! reads no table whole.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::api::Rig;
use crate::measure::{ms, percentile};
use crate::Row;

const HOTELS: usize = 500;
const PERMISSION: &str = "org:reservations:manage";
/// Grants and revokes timed (alternately).
const ROUNDS: usize = 10;

async fn call(http: &reqwest::Client, token: &str, method: &str, url: String, body: Option<Value>) -> Value {
    let mut req = http.request(method.parse().unwrap(), url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("the API answers");
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{method}: {status} {body}");
    body
}

/// Fills the mirror: `HOTELS` hotels, `total` memberships (each user in 5 hotels), the first
/// `holders` of them holding `org:frontdesk`, the rest `org:member`.
async fn fill_mirror(pool: &PgPool, holders: usize, total: usize) {
    let hotels = HOTELS as i64;
    sqlx::raw_sql(&format!(
        "insert into hotels (id, name, created_at, updated_at, clerk_version)
           select 'org_rb' || lpad(i::text, 7, '0'), 'Hotel ' || i, now(), now(), 1
           from generate_series(0, {hotels} - 1) i;
         insert into users (id, email, created_at, updated_at, clerk_version)
           select 'user_rb' || lpad(i::text, 7, '0'), 'desk' || i || '@example.com', now(), now(), 1
           from generate_series(0, ({total} - 1) / 5) i;
         insert into memberships (hotel_id, user_id, clerk_membership_id, role, created_at, updated_at, clerk_version)
           select 'org_rb' || lpad((m % {hotels})::text, 7, '0'), 'user_rb' || lpad((m / 5)::text, 7, '0'),
                  'orgmem_rb' || m, case when m < {holders} then 'org:frontdesk' else 'org:member' end,
                  now(), now(), 1
           from generate_series(0, {total} - 1) m;
         analyze hotels; analyze users; analyze memberships; analyze roles; analyze role_permissions;"
    ))
    .execute(pool)
    .await
    .unwrap();
}

async fn holding(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as("select count(*), count(distinct hotel_id) from member_permissions where permission = $1")
        .bind(PERMISSION)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every (node type, relation) of a plan that reads a relation, depth first.
fn plan_nodes(node: &Value, out: &mut Vec<(String, String)>) {
    if let Some(rel) = node["Relation Name"].as_str() {
        out.push((
            node["Node Type"].as_str().unwrap_or_default().to_owned(),
            rel.to_owned(),
        ));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        plan_nodes(child, out);
    }
}

pub async fn run(pool: &PgPool, db_url: &str, scale: f64) -> Vec<Row> {
    let holders = ((10_000.0 * scale) as usize).max(HOTELS);
    let total = ((100_000.0 * scale) as usize).max(holders);
    let Rig {
        fake,
        serve,
        token,
        api_port,
    } = Rig::start(pool, db_url, 0, &[]).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{api_port}{p}");

    let permission = call(
        &http,
        &token,
        "POST",
        url("/v1/permissions"),
        Some(json!({"name": "Manage reservations", "key": PERMISSION})),
    )
    .await;
    let role = call(
        &http,
        &token,
        "POST",
        url("/v1/roles"),
        Some(json!({"name": "Front desk", "key": "org:frontdesk"})),
    )
    .await;
    fill_mirror(pool, holders, total).await;
    // The sequencer numbers the fill's change rows before anything is timed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sqlx::query_scalar::<_, i64>("select count(*) from pending_changes")
        .fetch_one(pool)
        .await
        .unwrap()
        > 0
    {
        assert!(Instant::now() < deadline, "the sequencer did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(holding(pool).await, (0, 0));

    let path = url(&format!(
        "/v1/roles/{}/permissions/{}",
        role["id"].as_str().unwrap(),
        permission["id"].as_str().unwrap()
    ));
    let mut grants = Vec::new();
    let mut revokes = Vec::new();
    for round in 0..ROUNDS {
        let grant = round % 2 == 0;
        let started = Instant::now();
        let answer = call(&http, &token, if grant { "POST" } else { "DELETE" }, path.clone(), None).await;
        let took = started.elapsed();
        assert_eq!(answer["members"], holders as i64, "{answer}");
        let expected = if grant { (holders as i64, HOTELS as i64) } else { (0, 0) };
        assert_eq!(
            holding(pool).await,
            expected,
            "member_permissions is right at the answer"
        );
        if grant {
            grants.push(took);
        } else {
            revokes.push(took);
        }
    }
    grants.sort();
    revokes.sort();

    // The app's access check on the view, for a holder, with the permission granted.
    call(&http, &token, "POST", path.clone(), None).await;
    let lookup = "select exists (select 1 from member_permissions
                  where hotel_id = 'org_rb0000007' and user_id = 'user_rb0000001' and permission = $1)";
    let plan: Value = sqlx::query_scalar(&format!("explain (analyze, format json) {lookup}"))
        .bind(PERMISSION)
        .fetch_one(pool)
        .await
        .unwrap();
    let held: bool = sqlx::query_scalar(lookup)
        .bind(PERMISSION)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(held, "the holder holds the permission");
    let top = &plan[0]["Plan"];
    let cost = top["Total Cost"].as_f64().unwrap();
    let exec_ms = plan[0]["Execution Time"].as_f64().unwrap();
    // Every node that reads a big table (memberships, users, hotels) is an index scan; the
    // tiny RBAC tables (a few roles and permissions) may be read whole, as the planner prefers.
    let mut scans = Vec::new();
    plan_nodes(top, &mut scans);
    let big = ["memberships", "users", "hotels"];
    let whole: Vec<&(String, String)> = scans
        .iter()
        .filter(|(node, rel)| big.contains(&rel.as_str()) && !node.contains("Index"))
        .collect();
    assert!(
        whole.is_empty(),
        "the access check reads no big table whole: {whole:?} in {plan}"
    );
    let index_scans = scans.iter().filter(|(node, _)| node.contains("Index")).count();
    serve.stop().await;
    drop(fake);
    crate::truncate(pool).await;
    sqlx::query("truncate api_tokens, api_idempotency, roles, permissions, role_permissions cascade")
        .execute(pool)
        .await
        .unwrap();

    vec![
        Row::new(
            format!(
                "rbac: grant a permission to a role held by {holders} members across {HOTELS} hotels \
                 ({total} memberships), Clerk 20 ms: request → answer, member_permissions right at it, \
                 p50 / max of {}",
                grants.len()
            ),
            format!("{} / {}", ms(percentile(&grants, 0.5)), ms(percentile(&grants, 1.0))),
            "",
            "",
        ),
        Row::new(
            format!("rbac: the same revoke, p50 / max of {}", revokes.len()),
            format!("{} / {}", ms(percentile(&revokes, 0.5)), ms(percentile(&revokes, 1.0))),
            "",
            "",
        ),
        Row::new(
            format!("rbac: member_permissions access check at {total} memberships: plan cost, run time"),
            format!("cost {cost:.2}, {exec_ms:.3} ms, {index_scans} index scans, no big table read whole"),
            "",
            "a handful of index scans",
        ),
    ]
}
