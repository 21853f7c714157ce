//! orgsync in an application's database: one schema of its own, two instances side by side, and
//! the upgrade from the layout of releases that used `public`.

mod common;
mod fake_clerk;

use std::time::Duration;

use common::events::{membership, organization, user};
use common::*;
use fake_clerk::FakeClerk;
use orgsync::db::Schema;
use orgsync::resync::{resync, ResyncOptions};
use sqlx::{Connection, PgConnection, PgPool};

const T0: i64 = 1_764_000_000_000;

/// A connection with the default search path (`"$user", public`), as the application has.
async fn app_connection(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap()
}

/// Every table of `schema` with its rows, as text: any change to any row changes it.
async fn dump_schema(conn: &mut PgConnection, schema: &str) -> Vec<(String, String)> {
    dump_columns(conn, schema, None).await
}

/// Every row of every table in `schema`, as text, sorted. With `only`, just those tables and,
/// of each, just the columns given (later migrations add columns and tables to moved ones).
async fn dump_columns(
    conn: &mut PgConnection,
    schema: &str,
    only: Option<&[(String, Vec<String>)]>,
) -> Vec<(String, String)> {
    let tables: Vec<(String, Vec<String>)> = match only {
        Some(tables) => tables.to_vec(),
        None => {
            let names: Vec<String> =
                sqlx::query_scalar("select tablename::text from pg_tables where schemaname = $1 order by tablename")
                    .bind(schema)
                    .fetch_all(&mut *conn)
                    .await
                    .unwrap();
            let mut tables = Vec::new();
            for t in names {
                let cols = columns_of(conn, schema, &t).await;
                tables.push((t, cols));
            }
            tables
        }
    };
    let mut out = Vec::new();
    for (t, cols) in tables {
        let rows: Option<String> = sqlx::query_scalar(&format!(
            "select string_agg(r::text, E'\\n' order by r::text) from (select {} from {schema}.{t}) r",
            cols.join(", ")
        ))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        out.push((t, rows.unwrap_or_default()));
    }
    out
}

async fn columns_of(conn: &mut PgConnection, schema: &str, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select quote_ident(column_name::text) from information_schema.columns
         where table_schema = $1 and table_name = $2 order by ordinal_position",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .unwrap()
}

async fn functions_in(conn: &mut PgConnection, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select p.proname::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = $1 order by 1",
    )
    .bind(schema)
    .fetch_all(conn)
    .await
    .unwrap()
}

/// An application's own `users`, `jobs`, `settings` and sqlx bookkeeping in `public`, with rows.
async fn create_app_tables(conn: &mut PgConnection) {
    sqlx::raw_sql(
        "create table users (id serial primary key, login text not null unique);
         insert into users (login) values ('alice'), ('bob');
         create table jobs (id bigserial primary key, kind text, run_at timestamptz default now());
         insert into jobs (kind) values ('send-invoice'), ('nightly-report');
         create table settings (key text primary key, value text);
         insert into settings values ('webhook_secret', 'the app''s own'), ('theme', 'dark');
         create table _sqlx_migrations (version bigint primary key, description text not null,
             installed_on timestamptz not null default now(), success boolean not null,
             checksum bytea not null, execution_time bigint not null);
         insert into _sqlx_migrations values (20240101000000, 'app init', now(), true, '\\x00', 1);",
    )
    .execute(conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_and_resync_leave_the_applications_tables_alone() {
    let db = TestDb::empty().await;
    let mut app_conn = app_connection(&db.url).await;
    create_app_tables(&mut app_conn).await;
    let app_before = dump_schema(&mut app_conn, "public").await;
    let functions_before = functions_in(&mut app_conn, "public").await;

    // `serve`: prepare (as Application::build does), then receive and apply webhooks.
    orgsync::db::prepare(&db.url, &Schema::default(), &db.pool)
        .await
        .expect("orgsync migrates beside the app's tables");
    let app = TestApp::full(db.pool.clone()).await;
    let events = [
        organization("organization.created", "org_1", "Alpha", T0, T0, T0),
        user("user.created", "user_1", "Ann", "ann@x.test", T0, T0, T0),
        membership(
            "organizationMembership.created",
            "orgmem_1",
            "org_1",
            "user_1",
            "org:admin",
            T0,
            T0,
            T0,
        ),
    ];
    for (n, e) in events.iter().enumerate() {
        assert!(app
            .deliver(&format!("msg_{n}"), &e.to_string())
            .await
            .status()
            .is_success());
    }
    wait_until(
        &db.pool,
        "select count(*) = 1 from memberships",
        Duration::from_secs(20),
    )
    .await;
    app.stop().await;

    // `resync` against the fake Clerk API.
    let fake = FakeClerk::start().await;
    fake.seed(3, 3, 3, T0 + 1000);
    let options = ResyncOptions {
        allow_mass_delete: true, // org_1 is not in the fake: its tombstone is a change too
        ..ResyncOptions::default()
    };
    resync(&db.pool, &fake.client(), &options).await.expect("resync");

    assert_eq!(
        dump_schema(&mut app_conn, "public").await,
        app_before,
        "the app's rows are untouched"
    );
    assert_eq!(functions_in(&mut app_conn, "public").await, functions_before);
    // orgsync's rows are in its schema, seen from the app as orgsync.*.
    let (hotels, users, jobs): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from orgsync.hotels), (select count(*) from orgsync.users),
                (select count(*) from orgsync.jobs)",
    )
    .fetch_one(&mut app_conn)
    .await
    .unwrap();
    assert_eq!((hotels, users, jobs), (4, 4, 3));
    let secret: String = sqlx::query_scalar("select value from orgsync.settings where key = 'webhook_secret'")
        .fetch_optional(&mut app_conn)
        .await
        .unwrap()
        .unwrap_or_default();
    assert_ne!(secret, "the app's own");
    // The feed names who changed what.
    let sources: Vec<(String, bool)> =
        sqlx::query_as("select distinct source, job_id is not null from orgsync.changes order by 1")
            .fetch_all(&mut app_conn)
            .await
            .unwrap();
    assert_eq!(sources, vec![("resync".into(), false), ("webhook".into(), true)]);
    // An application joins to orgsync's hotels.
    sqlx::raw_sql(
        "create table bookings (id serial primary key, hotel_id text not null references orgsync.hotels (id));
         insert into bookings (hotel_id) values ('org_1');",
    )
    .execute(&mut app_conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_a_database_in_two_schemas() {
    let db = TestDb::new().await; // schema orgsync
    let staging_schema: Schema = "orgsync_staging".parse().unwrap();
    let options = orgsync::db::connect_options(&db.url, &staging_schema).unwrap();
    let staging = orgsync::db::lazy_pool(options, &Default::default());
    orgsync::db::prepare(&db.url, &staging_schema, &staging).await.unwrap();

    let production = db.pool.clone();
    insert_job(
        &production,
        "e1",
        &organization("organization.created", "org_prod", "Prod", T0, T0, T0),
    )
    .await;
    insert_job(
        &staging,
        "e1", // the same svix-id in both: two job tables
        &organization("organization.created", "org_stage", "Stage", T0, T0, T0),
    )
    .await;
    // Both consumers at once, each in its own schema.
    let workers = fast_workers();
    tokio::join!(drain(&production, &workers, 10), drain(&staging, &workers, 10));
    let ids = |pool: PgPool| async move {
        // Each schema's own sequencer (no server runs here) numbers its own feed from 1.
        orgsync::changes::sequence_now(&pool).await.unwrap();
        let hotels: Vec<String> = sqlx::query_scalar("select id from hotels")
            .fetch_all(&pool)
            .await
            .unwrap();
        let changes: Vec<(i64, String)> = sqlx::query_as("select id, entity_id from changes")
            .fetch_all(&pool)
            .await
            .unwrap();
        (hotels, changes)
    };
    assert_eq!(
        ids(production.clone()).await,
        (vec!["org_prod".to_owned()], vec![(1, "org_prod".to_owned())])
    );
    assert_eq!(
        ids(staging.clone()).await,
        (vec!["org_stage".to_owned()], vec![(1, "org_stage".to_owned())])
    );
    let mut conn = app_connection(&db.url).await;
    let public: i64 = sqlx::query_scalar(
        "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(public, 0, "nothing in public");
}

#[test]
fn schema_names_are_checked() {
    for ok in ["orgsync", "public", "orgsync_staging", "_x1"] {
        assert!(ok.parse::<Schema>().is_ok(), "{ok}");
    }
    for bad in [
        "",
        "Orgsync",
        "1abc",
        "a-b",
        "a;drop",
        "pg_catalog",
        "information_schema",
        &"x".repeat(64),
    ] {
        assert!(bad.parse::<Schema>().is_err(), "{bad}");
    }
}

/// The layout of the release before this one: its migrations applied in `public`.
async fn legacy_layout(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["20261125000001_init.sql", "20261125000002_write_provenance.sql"] {
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(name),
            dir.path().join(name),
        )
        .unwrap();
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    let mut conn = app_connection(url).await;
    migrator.run(&mut conn).await.unwrap();
    sqlx::raw_sql(
        "insert into hotels (id, name, created_at, updated_at, clerk_version, last_job_id)
             values ('org_1', 'Alpha', now(), now(), 5, 1), ('org_2', 'Gone', now(), now(), 6, null);
         update hotels set deleted_at = now() where id = 'org_2';
         insert into users (id, email, created_at, updated_at, clerk_version) values ('user_1', 'a@x', now(), now(), 3);
         insert into memberships (hotel_id, user_id, clerk_membership_id, role, created_at, updated_at, clerk_version)
             values ('org_1', 'user_1', 'orgmem_1', 'org:admin', now(), now(), 7);
         insert into jobs (event_id, event_type, payload, state) values
             ('msg_1', 'organization.created', '{\"data\": {\"id\": \"org_1\"}}', 'done'),
             ('msg_2', 'user.created', '{\"data\": {\"id\": \"user_1\"}}', 'dead');
         insert into settings (key, value) values ('webhook_secret', 'whsec_legacy');
         insert into resync_runs (outcome, counts) values ('succeeded', '{\"hotels\": 2}');
         -- the application's own table, joined to orgsync's hotels
         create table bookings (id serial primary key, hotel_id text not null references hotels (id));
         insert into bookings (hotel_id) values ('org_1');",
    )
    .execute(&mut conn)
    .await
    .unwrap();
}

async fn orgsync_cli(url: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_orgsync"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_moves_an_earlier_releases_tables_out_of_public_with_every_row() {
    let db = TestDb::empty().await;
    legacy_layout(&db.url).await;
    let mut conn = app_connection(&db.url).await;
    let before: Vec<_> = dump_schema(&mut conn, "public")
        .await
        .into_iter()
        .filter(|(t, _)| t != "bookings")
        .collect();
    assert_eq!(before.len(), 7);
    let mut legacy_columns = Vec::new();
    for (t, _) in &before {
        let cols = columns_of(&mut conn, "public", t).await;
        legacy_columns.push((t.clone(), cols));
    }

    // `serve` (and every command that prepares the database) refuses, naming the command.
    let err = orgsync::db::prepare(&db.url, &Schema::default(), &db.pool)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("orgsync migrate"), "{err}");
    assert_eq!(dump_schema(&mut conn, "public").await.len(), 8, "nothing moved");
    let serve = orgsync_cli(&db.url, &["serve", "--listen", "127.0.0.1:0", "--no-worker"]).await;
    assert!(!serve.status.success());
    assert!(
        String::from_utf8_lossy(&serve.stderr).contains("orgsync migrate"),
        "{serve:?}"
    );

    let migrate = orgsync_cli(&db.url, &["migrate"]).await;
    assert!(migrate.status.success(), "{migrate:?}");

    let after = dump_columns(&mut conn, "orgsync", Some(&legacy_columns)).await;
    let strip = |d: Vec<(String, String)>| -> Vec<(String, String)> {
        d.into_iter().filter(|(t, _)| t != "_sqlx_migrations").collect()
    };
    assert_eq!(strip(after), strip(before.clone()), "every row kept");
    let public: Vec<String> = sqlx::query_scalar("select tablename::text from pg_tables where schemaname = 'public'")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        public,
        vec!["bookings".to_owned()],
        "only the app's table is left in public"
    );
    assert!(functions_in(&mut conn, "public").await.is_empty());
    let fk: String = sqlx::query_scalar(
        "select confrelid::regclass::text from pg_constraint where conrelid = 'public.bookings'::regclass and contype = 'f'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(fk, "orgsync.hotels", "the app's foreign key follows the table");
    // The moved tables keep working: the job sequence continues, the service starts.
    let next: i64 = sqlx::query_scalar(
        "insert into orgsync.jobs (event_id, event_type, payload) values ('msg_3', 'user.created', '{}') returning id",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(next, 3);
    orgsync::db::prepare(&db.url, &Schema::default(), &db.pool)
        .await
        .expect("migrated and current");
    assert!(orgsync::db::is_ready(&db.pool).await.unwrap());
    // Running migrate again is a no-op.
    assert!(orgsync_cli(&db.url, &["migrate"]).await.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_earlier_release_can_stay_in_public() {
    let db = TestDb::empty().await;
    legacy_layout(&db.url).await;
    let public: Schema = "public".parse().unwrap();
    let options = orgsync::db::connect_options(&db.url, &public).unwrap();
    let pool = orgsync::db::lazy_pool(options, &Default::default());
    orgsync::db::prepare(&db.url, &public, &pool).await.unwrap();
    let hotels: i64 = sqlx::query_scalar("select count(*) from public.hotels")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(hotels, 2);
    let feed: bool = sqlx::query_scalar("select to_regclass('public.changes') is not null")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(feed);
}
