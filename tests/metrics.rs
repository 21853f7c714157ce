//! `GET /metrics`: valid Prometheus text, numbers that move when events are processed, gauges
//! that mirror the job table and the resync history, and the separate admin listener.
//!
//! The recorder is process-wide and the job-table gauges are set from whichever database was
//! scraped last, so the tests in this file run one at a time (see [`SERIAL`]) and compare
//! counters before and after.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use orgsync::app::Application;
use orgsync::clerk::signature::WebhookVerifier;
use orgsync::db::PoolSettings;
use orgsync::http::{admin_router, AdminState};
use tokio_util::sync::CancellationToken;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// A strict reader of the Prometheus text exposition format (version 0.0.4)

type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    help: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the one sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} is ambiguous: {matching:?}");
        matching.first().map(|s| s.value)
    }

    /// As [`Exposition::value`], 0 when absent (a counter not yet incremented).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Parses `name{label="value",...} value [timestamp]` strictly.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_name(name, true) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            if let Some((i, '}')) = chars.peek().copied() {
                rest = &after[i + 1..];
                break;
            }
            let start = chars.peek().ok_or("unterminated labels")?.0;
            let eq = after[start..].find('=').ok_or("label without =")? + start;
            let label = &after[start..eq];
            if !is_name(label, false) {
                return Err(format!("bad label name {label:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    '\n' => return Err("newline in label value".into()),
                    c => value.push(c),
                }
            }
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label} repeated"));
            }
            if let Some((_, ',')) = chars.peek() {
                chars.next();
            }
        }
    }
    let mut fields = rest.strip_prefix(' ').ok_or("no space before the value")?.split(' ');
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The family a sample belongs to: histogram series carry `_bucket`, `_sum`, `_count`.
fn family<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(types.get(base).map(String::as_str), Some("histogram" | "summary")) {
                return base;
            }
        }
    }
    name
}

/// Parses and checks an exposition: the grammar of every line, a TYPE before a family's
/// samples, `_total` on counters, and consistent histograms (ascending `le`, cumulative counts,
/// `+Inf` equal to `_count`). It is also read by the `prometheus-parse` crate, which must see
/// the same samples.
fn parse_exposition(text: &str) -> Exposition {
    let mut exp = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: String| -> ! { panic!("line {}: {why}\n{line}\n---\n{text}", n + 1) };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| fail("TYPE without a type".into()));
            if !is_name(name, true) || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                fail("bad TYPE line".into());
            }
            if exp.samples.iter().any(|s| family(&s.name, &exp.types) == name) {
                fail(format!("TYPE of {name} after its samples"));
            }
            if exp.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                fail(format!("{name} typed twice"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if !is_name(name, true) {
                fail("bad HELP line".into());
            }
            exp.help.insert(name.to_owned(), help.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue; // a comment
        }
        let sample = parse_sample(line).unwrap_or_else(|e| fail(e));
        let fam = family(&sample.name, &exp.types).to_owned();
        match exp.types.get(&fam).map(String::as_str) {
            None => fail(format!("{} has no TYPE", sample.name)),
            Some("counter") if !fam.ends_with("_total") => fail(format!("counter {fam} does not end in _total")),
            _ => {}
        }
        exp.samples.push(sample);
    }
    for (fam, kind) in &exp.types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in exp.samples.iter().filter(|s| s.name == format!("{fam}_bucket")) {
            let mut key = s.labels.clone();
            let le = parse_value(&key.remove("le").expect("a bucket has le")).unwrap();
            series.entry(key).or_default().push((le, s.value));
        }
        for (labels, buckets) in series {
            assert!(
                buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{fam} {labels:?}: {buckets:?}"
            );
            assert_eq!(
                buckets.last().unwrap().0,
                f64::INFINITY,
                "{fam} {labels:?} ends with +Inf"
            );
            let count = exp
                .samples
                .iter()
                .find(|s| s.name == format!("{fam}_count") && s.labels == labels)
                .unwrap_or_else(|| panic!("{fam} {labels:?} has a _count"));
            assert_eq!(
                buckets.last().unwrap().1,
                count.value,
                "{fam} {labels:?}: +Inf bucket = _count"
            );
        }
    }
    // An independent parser reads the same series.
    let other = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let plain = exp.samples.iter().filter(|s| !s.name.ends_with("_bucket")).count();
    let other_plain = other
        .samples
        .iter()
        .filter(|s| !matches!(s.value, prometheus_parse::Value::Histogram(_)))
        .count();
    assert_eq!(plain, other_plain, "prometheus-parse reads the same non-bucket samples");
    exp
}

async fn scrape(client: &reqwest::Client, base: &str) -> Exposition {
    let response = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    parse_exposition(&response.text().await.unwrap())
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_reader_is_strict() {
    for bad in [
        "# TYPE x_total counter\nx_total{a=\"1\" 1",
        "# TYPE x_total counter\nx_total{a=1} 1",
        "# TYPE x_total counter\nx_total{a=\"\\q\"} 1",
        "# TYPE x_total counter\nx_total one",
        "x 1",
        "# TYPE x counter\nx 1",
        "# TYPE 1x gauge\n1x 1",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_exposition(bad)).is_err(),
            "accepted: {bad}"
        );
    }
    let ok = "# HELP x_total A \"help\".\n# TYPE x_total counter\nx_total{a=\"q\\\"\\\\\",b=\"\"} 3 1700000000000\n";
    let exp = parse_exposition(ok);
    assert_eq!(exp.value("x_total", &[("a", "q\"\\"), ("b", "")]), Some(3.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_move_when_events_are_processed() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let _serial = SERIAL.lock().await;
    let app = TestApp::full(pool.clone()).await;
    let base = format!("http://{}", app.addr);
    let before = scrape(&app.client, &base).await;

    assert_eq!(
        app.deliver("msg_org", &fixture("organization.created")).await.status(),
        202
    );
    assert_eq!(app.deliver("msg_user", &fixture("user.created")).await.status(), 202);
    // The types of roles, permissions and invitations are counted like the others.
    assert_eq!(app.deliver("msg_role", &fixture("role.created")).await.status(), 202);
    assert_eq!(
        app.deliver("msg_invite", &fixture("organizationInvitation.created"))
            .await
            .status(),
        202
    );
    assert_eq!(
        app.deliver("msg_org", &fixture("organization.created")).await.status(),
        200
    );
    let stranger = WebhookVerifier::parse(OLD_SECRET).unwrap();
    let refused = app
        .deliver_signed(&stranger, "msg_x", now_secs(), &fixture("user.deleted"))
        .await;
    assert_eq!(refused.status(), 401);
    wait_until(
        &pool,
        "select count(*) = 4 from jobs where state = 'done'",
        Duration::from_secs(10),
    )
    .await;

    let after = scrape(&app.client, &base).await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.count(name, labels) - before.count(name, labels);
    let deliveries = "orgsync_webhook_deliveries_total";
    assert_eq!(delta(deliveries, &[("outcome", "accepted")]), 4.0);
    assert_eq!(delta(deliveries, &[("outcome", "duplicate")]), 1.0);
    assert_eq!(
        delta(deliveries, &[("outcome", "rejected"), ("reason", "bad_signature")]),
        1.0
    );
    let processed = "orgsync_jobs_processed_total";
    assert_eq!(
        delta(processed, &[("type", "organization.created"), ("outcome", "done")]),
        1.0
    );
    assert_eq!(delta(processed, &[("type", "user.created"), ("outcome", "done")]), 1.0);
    assert_eq!(delta(processed, &[("type", "role.created"), ("outcome", "done")]), 1.0);
    assert_eq!(
        delta(
            processed,
            &[("type", "organizationInvitation.created"), ("outcome", "done")]
        ),
        1.0
    );
    assert_eq!(
        delta("orgsync_job_duration_seconds_count", &[("type", "user.created")]),
        1.0
    );
    assert!(delta("orgsync_ingest_batch_size_count", &[]) >= 1.0);

    // The gauges describe this database's job table.
    assert_eq!(after.value("orgsync_jobs", &[("state", "done")]), Some(4.0));
    for state in ["available", "dead", "skipped"] {
        assert_eq!(after.value("orgsync_jobs", &[("state", state)]), Some(0.0), "{state}");
    }
    assert_eq!(after.value("orgsync_jobs_due", &[]), Some(0.0));
    assert_eq!(after.value("orgsync_oldest_pending_job_age_seconds", &[]), Some(0.0));
    assert_eq!(after.value("orgsync_database_up", &[]), Some(1.0));
    // The feed's lag: with the server's sequencer ticking, nothing waits long.
    assert!(after.value("orgsync_changes_pending", &[]).is_some());
    let lag = after
        .value("orgsync_changes_pending_oldest_age_seconds", &[])
        .expect("the feed's lag is exported");
    assert!(lag < 5.0, "{lag}");
    let last = after
        .value("orgsync_last_webhook_received_timestamp_seconds", &[])
        .unwrap();
    assert!((now_secs() as f64 - last).abs() < 60.0, "{last}");

    // Types and help as documented; durations and sizes are true histograms, not summaries.
    for (name, kind) in [
        ("orgsync_webhook_deliveries_total", "counter"),
        ("orgsync_jobs_processed_total", "counter"),
        ("orgsync_job_duration_seconds", "histogram"),
        ("orgsync_ingest_batch_size", "histogram"),
        ("orgsync_jobs", "gauge"),
        ("orgsync_jobs_due", "gauge"),
        ("orgsync_oldest_pending_job_age_seconds", "gauge"),
        ("orgsync_last_webhook_received_timestamp_seconds", "gauge"),
        ("orgsync_database_up", "gauge"),
        ("orgsync_changes_pending", "gauge"),
        ("orgsync_changes_pending_oldest_age_seconds", "gauge"),
        ("orgsync_http_connections_open", "gauge"),
        ("orgsync_http_connections_evicted_total", "counter"),
        ("orgsync_http_connections_shed_total", "counter"),
    ] {
        assert_eq!(after.types.get(name).map(String::as_str), Some(kind), "{name}");
        assert!(after.help.get(name).is_some_and(|h| !h.is_empty()), "{name} has HELP");
    }
    assert!(after
        .value("orgsync_ingest_batch_size_bucket", &[("le", "512")])
        .is_some());
    assert!(after
        .value(
            "orgsync_job_duration_seconds_bucket",
            &[("type", "user.created"), ("le", "0.005")]
        )
        .is_some());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gauges_mirror_the_job_table_and_the_resync_history() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let _serial = SERIAL.lock().await;
    sqlx::query(
        "insert into jobs (event_id, event_type, payload, state, run_at, received_at) values
           ('msg_1', 'user.created', '{}', 'dead', now(), now() - interval '3 hours'),
           ('msg_2', 'user.created', '{}', 'dead', now(), now() - interval '2 hours'),
           ('msg_3', 'user.updated', '{}', 'available', now() - interval '1 hour', now() - interval '1 hour'),
           ('msg_4', 'user.updated', '{}', 'available', now() + interval '1 hour', now() - interval '10 minutes'),
           ('msg_5', 'user.deleted', '{}', 'done', now(), now() - interval '5 minutes')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into resync_runs (started_at, finished_at, outcome, dry_run) values
           (now() - interval '3 hours', now() - interval '179 minutes', 'succeeded', false),
           ('2026-11-24T10:00:00Z', '2026-11-24T10:05:00Z', 'succeeded', false),
           (now() - interval '1 hour', now() - interval '59 minutes', 'failed', false),
           (now() - interval '50 minutes', now() - interval '49 minutes', 'refused', false),
           (now() - interval '10 minutes', now() - interval '9 minutes', 'succeeded', true),
           (now() - interval '1 minute', null, 'running', false)",
    )
    .execute(&pool)
    .await
    .unwrap();
    // A receiver without workers, so the table stays as seeded.
    let app = TestApp::receiver(pool.clone()).await;
    let m = scrape(&app.client, &format!("http://{}", app.addr)).await;

    assert_eq!(m.value("orgsync_jobs", &[("state", "dead")]), Some(2.0));
    assert_eq!(m.value("orgsync_jobs", &[("state", "available")]), Some(2.0));
    assert_eq!(m.value("orgsync_jobs", &[("state", "done")]), Some(1.0));
    assert_eq!(m.value("orgsync_jobs", &[("state", "skipped")]), Some(0.0));
    assert_eq!(
        m.value("orgsync_jobs_due", &[]),
        Some(1.0),
        "the one scheduled an hour ahead is not due"
    );
    let oldest = m.value("orgsync_oldest_pending_job_age_seconds", &[]).unwrap();
    assert!((3600.0..3700.0).contains(&oldest), "{oldest}");
    let newest: f64 = sqlx::query_scalar("select extract(epoch from now() - interval '5 minutes')::float8")
        .fetch_one(&pool)
        .await
        .unwrap();
    let last = m.value("orgsync_last_webhook_received_timestamp_seconds", &[]).unwrap();
    assert!((last - newest).abs() < 1.0, "{last} vs {newest}");

    // Finished, applied runs by outcome; the dry run and the running one are not counted.
    assert_eq!(
        m.types.get("orgsync_resync_runs_total").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        m.value("orgsync_resync_runs_total", &[("outcome", "succeeded")]),
        Some(2.0)
    );
    assert_eq!(
        m.value("orgsync_resync_runs_total", &[("outcome", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        m.value("orgsync_resync_runs_total", &[("outcome", "refused")]),
        Some(1.0)
    );
    let success: f64 = sqlx::query_scalar("select extract(epoch from now() - interval '179 minutes')::float8")
        .fetch_one(&pool)
        .await
        .unwrap();
    let reported = m.value("orgsync_resync_last_success_timestamp_seconds", &[]).unwrap();
    assert!(
        (reported - success).abs() < 1.0,
        "the last applied success, not the later dry run: {reported} vs {success}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_serves_probes_and_metrics_apart_from_the_webhook() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let _serial = SERIAL.lock().await;
    let mut cfg = config(Some(SECRET), false);
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let app = Application::build_with_pool(cfg, pool.clone()).await.unwrap();
    let public = format!("http://127.0.0.1:{}", app.port());
    let admin = format!(
        "http://127.0.0.1:{}",
        app.admin_port().expect("a separate admin listener")
    );
    let cancel = CancellationToken::new();
    let running = tokio::spawn(app.run(cancel.clone()));
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };

    // The public address has only the webhook.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(format!("{public}{path}")).await, 404, "{path} is not public");
    }
    let body = fixture("user.created");
    let signer = WebhookVerifier::parse(SECRET).unwrap();
    let delivered = client
        .post(format!("{public}/webhooks/clerk"))
        .headers(signer.sign("msg_public", now_secs(), body.as_bytes()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 202);

    // The admin address has the probes and the metrics, and no webhook.
    assert_eq!(get(format!("{admin}/healthz")).await, 200);
    assert_eq!(get(format!("{admin}/readyz")).await, 200);
    let m = scrape(&client, &admin).await;
    assert_eq!(m.value("orgsync_jobs", &[("state", "available")]), Some(1.0));
    let on_admin = client
        .post(format!("{admin}/webhooks/clerk"))
        .headers(signer.sign("msg_admin", now_secs(), body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(on_admin.status(), 404);
    assert_eq!(job_count(&pool).await, 1);

    cancel.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn metrics_still_answer_when_the_database_is_down() {
    let _serial = SERIAL.lock().await;
    let options = orgsync::db::connect_options("postgres://postgres@127.0.0.1:1/orgsync", &Default::default()).unwrap();
    let settings = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_millis(500),
    };
    let state = AdminState {
        pool: orgsync::db::lazy_pool(options, &settings),
        metrics: Some(orgsync::metrics::install()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, admin_router(state)).await });

    let client = reqwest::Client::new();
    let m = scrape(&client, &base).await;
    assert_eq!(m.value("orgsync_database_up", &[]), Some(0.0));
    assert_eq!(client.get(format!("{base}/readyz")).send().await.unwrap().status(), 503);
    server.abort();
}
