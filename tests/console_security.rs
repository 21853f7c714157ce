//! The console's security rules, each against the real application and database: off unless
//! enabled and only on the admin listener, sign-in with API tokens, the session cookie's
//! attributes, server-side sessions kept as hashes and ended by sign-out or revocation, CSRF on
//! every state change, read-only tokens that see but cannot act, the Content-Security-Policy,
//! escaping of what Clerk sends, and no secret on any page.

mod common;
mod console_support;

use common::cli::seed_job;
use common::*;
use console_support::*;
use orgsync::console::{ConsoleConfig, SecureCookie, CONTENT_SECURITY_POLICY};
use orgsync::tokens::{Access, TokenName};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn the_console_is_off_unless_enabled() {
    let db = TestDb::new().await;
    let mut cfg = config(Some(SECRET), false);
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let app = TestApp::spawn(db.pool.clone(), cfg).await;
    for base in [base(&app), format!("http://{}", app.addr)] {
        for path in ["/console", "/console/", "/console/login", "/console/assets/console.js"] {
            let r = reqwest::get(format!("{base}{path}")).await.unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{base}{path}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn the_console_needs_a_separate_admin_listener_and_is_never_on_the_webhook_listener() {
    let db = TestDb::new().await;
    let mut cfg = console_config(false);
    cfg.admin_listen = None;
    let err = orgsync::app::Application::build_with_pool(cfg, db.pool.clone())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("ORGSYNC_ADMIN_LISTEN"), "{err}");

    let app = console_app(&db.pool, false).await;
    let main = reqwest::get(app.url("/console/login")).await.unwrap();
    assert_eq!(main.status(), StatusCode::NOT_FOUND, "not beside the webhook endpoint");
    let admin = reqwest::get(format!("{}/console/login", base(&app))).await.unwrap();
    assert_eq!(admin.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn signing_in_needs_a_live_token_and_sets_a_strict_http_only_cookie() {
    let db = TestDb::new().await;
    let app = console_app(&db.pool, false).await;
    let good = token(&db.pool, "ops", Access::ReadWrite).await;

    let mut s = Session::new(base(&app));
    for path in PAGES.iter().chain(&["/console/jobs/1", "/console/resync/runs/1"]) {
        let page = s.get(path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path} without a session");
        assert_eq!(page.location(), Some("/console/login"), "{path}");
    }
    let refused = s.login(&format!("{good}x")).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.body.contains("not valid"));
    assert!(
        !s.cookies.contains_key("orgsync_console"),
        "no session for a wrong token"
    );
    assert!(!refused.body.contains(&good[..20]), "the presented token is not echoed");

    let accepted = s.login(&good).await;
    assert_eq!(accepted.status, StatusCode::SEE_OTHER);
    assert_eq!(accepted.location(), Some("/console/"));
    let cookie = accepted
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("orgsync_console="))
        .expect("a session cookie");
    let attrs: Vec<String> = cookie.split(';').map(|a| a.trim().to_ascii_lowercase()).collect();
    for required in ["httponly", "samesite=strict", "path=/console"] {
        assert!(attrs.iter().any(|a| a == required), "{required} in {cookie}");
    }
    assert!(!attrs.iter().any(|a| a == "secure"), "plain HTTP: no Secure ({cookie})");
    let overview = s.page("/console/").await;
    assert!(overview.contains("ops"), "the page names the token that signed in");

    // The sign-in form's own CSRF value must come back with it.
    let mut forged = Session::new(base(&app));
    let page = forged
        .post("/console/login", &[("token", &good), ("login_csrf", "made-up")])
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.body.contains("came from elsewhere"));
    assert!(!forged.cookies.contains_key("orgsync_console"));
    app.stop().await;
}

#[tokio::test]
async fn the_cookie_is_secure_behind_a_tls_proxy_or_when_configured() {
    let db = TestDb::new().await;
    let good = token(&db.pool, "ops", Access::ReadWrite).await;
    let secure = |page: &Page| {
        page.set_cookies()
            .iter()
            .find(|c| c.starts_with("orgsync_console="))
            .unwrap()
            .split(';')
            .any(|a| a.trim().eq_ignore_ascii_case("secure"))
    };
    let app = console_app(&db.pool, false).await;
    let mut s = Session::new(base(&app));
    let form = s.get("/console/login").await;
    let nonce = hidden_value(&form.body, "login_csrf").unwrap();
    let page = s
        .post_with(
            "/console/login",
            &[("token", &good), ("login_csrf", &nonce)],
            &[("x-forwarded-proto", "https")],
        )
        .await;
    assert!(
        secure(&page),
        "X-Forwarded-Proto: https means the browser reached us over TLS"
    );
    app.stop().await;

    let mut cfg = console_config(false);
    cfg.console = Some(ConsoleConfig {
        secure_cookie: SecureCookie::Always,
        ..ConsoleConfig::default()
    });
    let app = TestApp::spawn(db.pool.clone(), cfg).await;
    let page = Session::new(base(&app)).login(&good).await;
    assert!(secure(&page), "ORGSYNC_CONSOLE_SECURE_COOKIE=always");
    app.stop().await;
}

#[tokio::test]
async fn sessions_are_kept_as_hashes_and_end_at_sign_out_and_with_their_token() {
    let db = TestDb::new().await;
    let app = console_app(&db.pool, false).await;
    let good = token(&db.pool, "ops", Access::ReadWrite).await;
    let mut s = Session::signed_in(base(&app), &good).await;
    let id = s.cookies["orgsync_console"].clone();
    let raw = base64_decode(&id);
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("select id_hash from console_sessions")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        stored,
        vec![Sha256::digest(&raw).to_vec()],
        "only the id's SHA-256 is stored"
    );
    let dump: String = sqlx::query_scalar("select string_agg(t::text, ' ') from console_sessions t")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!dump.contains(&id) && !dump.contains(&good), "{dump}");

    // Sign-out: the row goes, and the old cookie no longer works.
    let overview = s.get("/console/").await;
    let csrf = overview.csrf();
    let out = s.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let n: i64 = sqlx::query_scalar("select count(*) from console_sessions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    s.cookies.insert("orgsync_console".into(), id);
    assert_eq!(s.get("/console/").await.status, StatusCode::SEE_OTHER);

    // Revoking the token ends its sessions on their next request.
    let mut s = Session::signed_in(base(&app), &good).await;
    s.page("/console/jobs").await;
    orgsync::tokens::revoke(&db.pool, &TokenName::parse("ops").unwrap())
        .await
        .unwrap();
    let after = s.get("/console/jobs").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.location(), Some("/console/login"));

    // An expired session is refused too.
    let other = token(&db.pool, "ops2", Access::ReadWrite).await;
    let mut s = Session::signed_in(base(&app), &other).await;
    sqlx::query("update console_sessions set expires_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(s.get("/console/").await.status, StatusCode::SEE_OTHER);
    app.stop().await;
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

#[tokio::test]
async fn every_state_change_needs_a_post_with_the_sessions_csrf_token() {
    let db = TestDb::new().await;
    let app = console_app(&db.pool, false).await;
    let dead = seed_job(&db.pool, "msg_dead", "organization.created", "dead", "1 hour").await;
    let good = token(&db.pool, "ops", Access::ReadWrite).await;
    let mut s = Session::signed_in(base(&app), &good).await;
    let mut other = Session::signed_in(base(&app), &token(&db.pool, "other", Access::ReadWrite).await).await;
    let foreign_csrf = other.get("/console/").await.csrf();
    let replay = format!("/console/jobs/{dead}/replay");
    for form in [
        vec![],
        vec![("csrf", "")],
        vec![("csrf", "forged")],
        vec![("csrf", foreign_csrf.as_str())],
    ] {
        let page = s.post(&replay, &form).await;
        assert!(
            matches!(page.status, StatusCode::FORBIDDEN | StatusCode::UNPROCESSABLE_ENTITY),
            "{form:?}: {}",
            page.status
        );
    }
    for path in ["/console/replay", "/console/resync/start", "/console/logout"] {
        let page = s
            .post(path, &[("csrf", "forged"), ("mode", "dry"), ("state", "dead")])
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
    }
    // A GET never changes anything.
    for path in [replay.as_str(), "/console/resync/start", "/console/logout"] {
        let page = s.get(path).await;
        assert_eq!(page.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
    assert_eq!(
        common::cli::state_of(&db.pool, dead).await,
        "dead",
        "nothing was replayed"
    );
    assert_eq!(s.get("/console/").await.status, StatusCode::OK, "still signed in");

    let csrf = s.get(&format!("/console/jobs/{dead}")).await.csrf();
    let page = s.post(&replay, &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(common::cli::state_of(&db.pool, dead).await, "available");
    app.stop().await;
}

#[tokio::test]
async fn a_read_only_token_sees_everything_but_cannot_replay_or_resync() {
    let db = TestDb::new().await;
    let app = console_app(&db.pool, false).await;
    let dead = seed_job(&db.pool, "msg_dead", "organization.created", "dead", "1 hour").await;
    let viewer = token(&db.pool, "viewer", Access::ReadOnly).await;
    let mut s = Session::signed_in(base(&app), &viewer).await;
    for path in PAGES
        .iter()
        .map(|p| p.to_string())
        .chain([format!("/console/jobs/{dead}"), "/console/replay?state=dead".into()])
    {
        let body = s.page(&path).await;
        if !path.ends_with("/live") {
            assert!(body.contains("read-only"), "{path} says the token is read-only");
        }
    }
    let job_page = s.get(&format!("/console/jobs/{dead}")).await;
    assert!(
        job_page.body.contains("id=\"replay\" type=\"submit\" disabled"),
        "the button is disabled"
    );
    let csrf = job_page.csrf();
    let page = s
        .post(&format!("/console/jobs/{dead}/replay"), &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("read-only"));
    let page = s.post("/console/replay", &[("csrf", &csrf), ("state", "dead")]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    for mode in ["dry", "real"] {
        let page = s
            .post("/console/resync/start", &[("csrf", &csrf), ("mode", mode)])
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{mode}");
    }
    assert_eq!(common::cli::state_of(&db.pool, dead).await, "dead");
    let runs: i64 = sqlx::query_scalar("select count(*) from resync_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, 0);
    app.stop().await;
}

#[tokio::test]
async fn every_response_carries_the_policy_and_no_page_has_inline_script_or_style() {
    let db = TestDb::new().await;
    let app = console_app(&db.pool, false).await;
    let dead = seed_job(&db.pool, "msg_dead", "organization.created", "dead", "1 hour").await;
    let mut s = Session::new(base(&app));
    let login = s.get("/console/login").await;
    let mut pages = vec![("/console/login".to_owned(), login)];
    let good = token(&db.pool, "ops", Access::ReadWrite).await;
    s.login(&good).await;
    for path in PAGES.iter().map(|p| p.to_string()).chain([
        format!("/console/jobs/{dead}"),
        "/console/replay?state=dead".into(),
        "/console/jobs?state=nonsense".into(),
        "/console/jobs/999999".into(),
        "/console/nowhere".into(),
        "/console/assets/console.js".into(),
        "/console/assets/console.css".into(),
    ]) {
        let page = s.get(&path).await;
        pages.push((path, page));
    }
    for (path, page) in &pages {
        let csp = page.headers.get("content-security-policy").map(|v| v.to_str().unwrap());
        assert_eq!(csp, Some(CONTENT_SECURITY_POLICY), "{path}");
        assert_eq!(page.headers.get("x-frame-options").unwrap(), "DENY", "{path}");
        if path.contains("/assets/") {
            continue;
        }
        let html = page.body.to_ascii_lowercase();
        for (at, _) in html.match_indices("<script") {
            let tag = &html[at..at + html[at..].find('>').unwrap()];
            assert!(tag.contains(" src="), "{path}: inline script {tag}");
        }
        assert!(!html.contains(" style="), "{path}: inline style");
        assert!(!html.contains("<style"), "{path}: inline style");
        for handler in [" onclick=", " onload=", " onerror=", " onsubmit=", "javascript:"] {
            assert!(!html.contains(handler), "{path}: {handler}");
        }
    }
    assert!(CONTENT_SECURITY_POLICY.contains("default-src 'self'"));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
    app.stop().await;
}

#[tokio::test]
async fn names_from_clerk_are_escaped_and_no_page_shows_a_secret() {
    let db = TestDb::new().await;
    let mut cfg = console_config(false);
    cfg.clerk = Some(orgsync::clerk::api::ClerkConfig {
        api_url: "http://127.0.0.1:9".into(),
        secret_key: Some("sk_test_console_must_never_show_this".into()),
        rate_limit: None,
        timeout: std::time::Duration::from_secs(1),
    });
    let app = TestApp::spawn(db.pool.clone(), cfg).await;
    let hostile = "<script>alert(1)</script>";
    let org = events::organization("organization.created", "org_xss", hostile, 1, 1, 1);
    let mut user = events::user("user.created", "user_xss", hostile, "xss@example.com", 1, 1, 1);
    user["data"]["private_metadata"] = serde_json::json!({"api_key": "pm_secret_value"});
    user["data"]["unsafe_metadata"] = serde_json::json!({"note": "unsafe_value_here"});
    let org_job = insert_job(&db.pool, "msg_org", &org).await;
    let user_job = insert_job(&db.pool, "msg_user", &user).await;
    drain(&db.pool, &fast_workers(), 10).await;
    let m = events::membership(
        "organizationMembership.created",
        "orgmem_xss",
        "org_xss",
        "user_xss",
        "org:admin",
        1,
        1,
        1,
    );
    insert_job(&db.pool, "msg_mem", &m).await;
    drain(&db.pool, &fast_workers(), 10).await;

    let good = token(&db.pool, "ops", Access::ReadWrite).await;
    let mut s = Session::signed_in(base(&app), &good).await;
    let mut seen = String::new();
    for path in PAGES.iter().map(|p| p.to_string()).chain([
        format!("/console/jobs/{org_job}"),
        format!("/console/jobs/{user_job}"),
        "/console/access?q=%3Cscript".into(),
        "/console/access?user=user_xss".into(),
        "/console/access?hotel=org_xss".into(),
        "/console/access?user=user_xss&hotel=org_xss&permission=org:sys_memberships:read".into(),
        "/console/jobs?entity_id=org_xss".into(),
    ]) {
        let body = s.page(&path).await;
        assert!(!body.contains(hostile), "{path} renders the name as markup");
        seen.push_str(&body);
    }
    assert!(
        seen.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the name is shown, as text"
    );
    for secret in [
        SECRET,
        good.as_str(),
        "sk_test_console_must_never_show_this",
        "pm_secret_value",
        "unsafe_value_here",
    ] {
        assert!(!seen.contains(secret), "a page shows {secret}");
    }
    app.stop().await;
}
