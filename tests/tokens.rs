//! API tokens (`orgsync::tokens`, `orgsync tokens …`): a token is shown once and stored only as a
//! hash, a changed, unknown or revoked token authenticates nobody, read-only is read-only, and
//! no command prints a token anywhere but where `create` hands it over.

mod common;

use common::cli::*;
use common::*;
use orgsync::tokens::{self, Access, TokenError, TokenName};
use sha2::{Digest, Sha256};

fn name(n: &str) -> TokenName {
    TokenName::parse(n).unwrap()
}

#[tokio::test]
async fn a_token_authenticates_its_holder_and_nothing_else_does() {
    let db = TestDb::new().await;
    let app = tokens::create(&db.pool, &name("hotel-app"), Access::ReadWrite)
        .await
        .unwrap();
    let reader = tokens::create(&db.pool, &name("dashboard"), Access::ReadOnly)
        .await
        .unwrap();
    assert!(app.token.starts_with("osk_"));

    let caller = tokens::authenticate(&db.pool, &app.token)
        .await
        .unwrap()
        .expect("valid token");
    assert_eq!(caller.name, "hotel-app");
    assert!(caller.can_write());
    let caller = tokens::authenticate(&db.pool, &reader.token)
        .await
        .unwrap()
        .expect("valid token");
    assert_eq!(caller.access, Access::ReadOnly);
    assert!(!caller.can_write());

    // The same key id with another secret, a truncated token, the secret of one token under the
    // other's key id, and garbage: nobody.
    let mut altered = app.token.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == 'A' { 'B' } else { 'A' });
    let (app_key, _) = app.token.rsplit_once('_').unwrap();
    let (_, reader_secret) = reader.token.rsplit_once('_').unwrap();
    let swapped = format!("{app_key}_{reader_secret}");
    for bad in [
        altered.as_str(),
        &app.token[..app.token.len() - 1],
        swapped.as_str(),
        "osk_000000000000_x",
        "",
        "Bearer x",
    ] {
        assert_eq!(tokens::authenticate(&db.pool, bad).await.unwrap(), None, "{bad:?}");
    }
}

#[tokio::test]
async fn only_a_hash_is_stored() {
    let db = TestDb::new().await;
    let issued = tokens::create(&db.pool, &name("app"), Access::ReadWrite).await.unwrap();
    let (_, secret) = issued.token.rsplit_once('_').unwrap();
    let row: String = sqlx::query_scalar("select to_jsonb(t)::text from api_tokens t")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!row.contains(secret), "the secret is stored: {row}");
    let hash: Vec<u8> = sqlx::query_scalar("select hash from api_tokens")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(hash, Sha256::digest(issued.token.as_bytes()).to_vec());
}

#[tokio::test]
async fn revoking_ends_a_token_at_once_and_frees_its_name() {
    let db = TestDb::new().await;
    let first = tokens::create(&db.pool, &name("app"), Access::ReadWrite).await.unwrap();
    assert!(matches!(
        tokens::create(&db.pool, &name("app"), Access::ReadWrite).await,
        Err(TokenError::NameTaken(n)) if n == "app"
    ));
    assert!(tokens::any_live(&db.pool).await.unwrap());

    assert!(tokens::revoke(&db.pool, &name("app")).await.unwrap());
    assert_eq!(tokens::authenticate(&db.pool, &first.token).await.unwrap(), None);
    assert!(!tokens::any_live(&db.pool).await.unwrap());
    assert!(!tokens::revoke(&db.pool, &name("app")).await.unwrap());

    let second = tokens::create(&db.pool, &name("app"), Access::ReadOnly).await.unwrap();
    assert!(tokens::authenticate(&db.pool, &second.token).await.unwrap().is_some());
    assert_eq!(tokens::authenticate(&db.pool, &first.token).await.unwrap(), None);
    let all = tokens::list(&db.pool, true).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].revoked_at, None, "live tokens are listed first");
    assert_eq!(tokens::list(&db.pool, false).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_cli_prints_a_token_once_and_never_again() {
    let db = TestDb::new().await;
    let url = db_url(&db.pool).await;

    let created = orgsync(&url, &["tokens", "create", "hotel-app"]).await;
    assert_eq!(created.code, 0, "{created:?}");
    let token = created.stdout.trim().to_owned();
    assert!(token.starts_with("osk_"), "{created:?}");
    assert!(!created.stderr.contains(&token), "{created:?}");
    let caller = tokens::authenticate(&db.pool, &token)
        .await
        .unwrap()
        .expect("the printed token works");
    assert!(caller.can_write());

    let taken = orgsync(&url, &["tokens", "create", "hotel-app"]).await;
    assert_eq!(taken.code, 1, "{taken:?}");
    assert!(taken.stderr.contains("already named"), "{taken:?}");
    let invalid = orgsync(&url, &["tokens", "create", "no spaces"]).await;
    assert_eq!(invalid.code, 1, "{invalid:?}");

    let ro = orgsync(&url, &["tokens", "create", "dashboard", "--read-only", "--json"]).await;
    assert_eq!(ro.code, 0, "{ro:?}");
    let ro: serde_json::Value = serde_json::from_str(&ro.stdout).unwrap();
    assert_eq!(ro["access"], "read_only");
    let ro_token = ro["token"].as_str().unwrap().to_owned();

    for args in [&["tokens", "list"][..], &["tokens", "list", "--all", "--json"]] {
        let listed = orgsync(&url, args).await;
        assert_eq!(listed.code, 0, "{listed:?}");
        assert!(
            listed.stdout.contains("hotel-app") && listed.stdout.contains("dashboard"),
            "{listed:?}"
        );
        for t in [&token, &ro_token] {
            let (_, secret) = t.rsplit_once('_').unwrap();
            assert!(
                !listed.stdout.contains(secret) && !listed.stderr.contains(secret),
                "{listed:?}"
            );
        }
    }

    let revoked = orgsync(&url, &["tokens", "revoke", "hotel-app"]).await;
    assert_eq!(revoked.code, 0, "{revoked:?}");
    assert_eq!(tokens::authenticate(&db.pool, &token).await.unwrap(), None);
    let again = orgsync(&url, &["tokens", "revoke", "hotel-app"]).await;
    assert_eq!(again.code, 1, "{again:?}");
}

#[tokio::test]
async fn tokens_create_prepares_a_fresh_database() {
    let db = TestDb::empty().await;
    let url = db_url(&db.pool).await;
    let created = orgsync(&url, &["tokens", "create", "first"]).await;
    assert_eq!(created.code, 0, "{created:?}");
    assert!(tokens::any_live(&db.pool).await.unwrap());
}
