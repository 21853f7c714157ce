//! The console in a real browser: Debian's headless Chromium, driven through chromedriver
//! (WebDriver) by fantoccini. An operator signs in, finds a dead job and replays it and watches
//! it become done, opens the access explorer for a member and sees the permission and its role,
//! sees a change appear live after `orgsync send`, and a hotel named `<script>alert(1)</script>`
//! stays text. Each page is saved as a screenshot under `target/console-screenshots/`.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them); as root (CI) Chromium runs
//! with `--no-sandbox`.

mod common;
mod console_support;
mod fake_clerk;
mod resync_support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::access_events::{permission_data, role};
use common::*;
use console_support::*;
use fake_clerk::FakeClerk;
use fantoccini::{Client, ClientBuilder, Locator};
use orgsync::tokens::Access;
use resync_support::BASE;
use sqlx::PgPool;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const HOSTILE: &str = "<script>alert(1)</script>";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "the browser test needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if reqwest::get(format!("{url}/status"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Self { child, url };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer on {url}");
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1400,1000", "--no-first-run", "--hide-scrollbars"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn snap(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits until the element at `css` has text containing `want`.
async fn wait_text(b: &Client, css: &str, want: &str, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(e) = b.find(Locator::Css(css)).await {
            if let Ok(text) = e.text().await {
                if text.contains(want) {
                    return text;
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            let source = b.source().await.unwrap_or_default();
            panic!("{css} never showed {want:?}; page:\n{source}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A hotel whose name is markup, a member with a role granting a permission, and a dead job.
async fn world(pool: &PgPool) -> i64 {
    let perms = vec![permission_data("perm_read", "org:bookings:read", 1, 1)];
    for (n, event) in [
        events::organization("organization.created", "org_alpine", "Hotel Alpine", 1, 1, 1),
        events::user(
            "user.created",
            "user_maria",
            "Maria",
            "maria.rossi@example.com",
            1,
            1,
            1,
        ),
        role("role.created", "role_frontdesk", "org:front_desk", perms, 1, 1, 1),
    ]
    .into_iter()
    .enumerate()
    {
        insert_job(pool, &format!("msg_w{n}"), &event).await;
    }
    drain(pool, &fast_workers(), 20).await;
    let m = events::membership(
        "organizationMembership.created",
        "orgmem_m",
        "org_alpine",
        "user_maria",
        "org:front_desk",
        2,
        2,
        2,
    );
    insert_job(pool, "msg_wm", &m).await;
    drain(pool, &fast_workers(), 20).await;
    // The hotel with the hostile name arrives in a job that died (the database was away).
    let xss = events::organization("organization.created", "org_xss", HOSTILE, 1, 1, 1);
    let id = insert_job(pool, "msg_xss", &xss).await;
    sqlx::query(
        "update jobs set state = 'dead', attempts = 20, last_error = 'database unavailable: connection refused',
         errors = '[{\"attempt\": 20, \"at\": \"2026-12-03T09:00:00Z\", \"error\": \"database unavailable: connection refused\"}]'
         where id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_fixes_a_dead_job_explains_access_and_watches_changes_in_a_browser() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let dead = world(pool).await;
    let fake = FakeClerk::start().await;
    fake.seed(3, 3, 3, BASE);
    let mut cfg = console_config(true);
    cfg.clerk = Some(fake.clerk_config());
    let app = TestApp::spawn(pool.clone(), cfg).await;
    common::cli::wait_for_listener(pool).await;
    let secret = token(pool, "night-shift", Access::ReadWrite).await;
    let console = base(&app);
    let driver = Driver::start().await;
    let b = driver.browser().await;

    // Sign in.
    b.goto(&format!("{console}/console/")).await.unwrap();
    b.wait().for_element(Locator::Css("#token")).await.unwrap();
    snap(&b, "login").await;
    b.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(&secret)
        .await
        .unwrap();
    b.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "#verdict", "Needs attention", Duration::from_secs(10)).await;
    wait_text(&b, "#card-dead", "1", Duration::from_secs(5)).await;
    snap(&b, "overview").await;

    // The dead job: find it, read why, replay it, watch it become done.
    b.find(Locator::Css("#card-dead a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "#jobs", "organization.created", Duration::from_secs(5)).await;
    snap(&b, "jobs").await;
    b.find(Locator::Css(&format!("tr[data-job-id='{dead}'] a")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "#job-state", "dead", Duration::from_secs(5)).await;
    wait_text(&b, "#last-error", "database unavailable", Duration::from_secs(5)).await;
    snap(&b, "job-dead").await;
    b.find(Locator::Css("#replay")).await.unwrap().click().await.unwrap();
    wait_text(&b, "#job-state", "done", Duration::from_secs(15)).await;
    snap(&b, "job-replayed").await;

    // The hostile hotel name is text, everywhere it shows; no script ran.
    b.goto(&format!("{console}/console/access?q=%3Cscript")).await.unwrap();
    let hit = wait_text(&b, "#hotel-hits", HOSTILE, Duration::from_secs(5)).await;
    assert!(hit.contains(HOSTILE), "the name reads as it is: {hit}");
    assert!(b.get_alert_text().await.is_err(), "no alert: the script did not run");
    let scripts = b.find_all(Locator::Css("script")).await.unwrap();
    assert_eq!(scripts.len(), 1, "only the console's own script is on the page");
    snap(&b, "xss-as-text").await;
    b.goto(&format!("{console}/console/jobs/{dead}")).await.unwrap();
    let payload = wait_text(&b, "#payload", HOSTILE, Duration::from_secs(5)).await;
    assert!(payload.contains("\"name\""));
    assert!(b.get_alert_text().await.is_err());

    // The access explorer: find Maria, pick the hotel, see the permission and its role.
    b.goto(&format!("{console}/console/access")).await.unwrap();
    b.find(Locator::Css("#q"))
        .await
        .unwrap()
        .send_keys("maria")
        .await
        .unwrap();
    b.find(Locator::Css("form.filters button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "#user-hits", "maria.rossi@example.com", Duration::from_secs(5)).await;
    b.find(Locator::Css("#user-hits a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "table.memberships", "Hotel Alpine", Duration::from_secs(5)).await;
    b.find(Locator::LinkText("explain access"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "#grants", "org:bookings:read", Duration::from_secs(5)).await;
    wait_text(&b, "#role", "org:front_desk", Duration::from_secs(5)).await;
    wait_text(&b, "#granted-by", "role_frontdesk", Duration::from_secs(5)).await;
    b.find(Locator::LinkText("org:bookings:read"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "#held", "held", Duration::from_secs(5)).await;
    snap(&b, "access").await;

    // The change feed: `orgsync send` a new hotel and watch it arrive.
    b.goto(&format!("{console}/console/changes")).await.unwrap();
    wait_text(&b, "#stream-state", "following live", Duration::from_secs(10)).await;
    let db_url = common::cli::db_url(pool).await;
    let sent = common::cli::orgsync(
        &db_url,
        &[
            "send",
            "organization.created",
            "--url",
            &app.url("/webhooks/clerk"),
            "--webhook-secret",
            SECRET,
        ],
    )
    .await;
    assert_eq!(sent.code, 0, "{sent:?}");
    let row = wait_text(
        &b,
        "#changes tbody tr.fresh",
        "org_2hotelAlpine0000000000001",
        Duration::from_secs(15),
    )
    .await;
    assert!(row.contains("hotel") && row.contains("created"), "{row}");
    snap(&b, "changes-live").await;

    // The resync page: a dry run's difference.
    b.goto(&format!("{console}/console/resync")).await.unwrap();
    b.find(Locator::Css("#resync-dry"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "#console-run", "Dry run finished", Duration::from_secs(20)).await;
    wait_text(&b, "#diff", "hotels", Duration::from_secs(5)).await;
    snap(&b, "resync-dry-run").await;

    b.close().await.unwrap();
    drop(driver);
    app.stop().await;
}
