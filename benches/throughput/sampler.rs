//! A sampling profile of what a phase's database sessions do, from `pg_stat_activity` (no
//! extension needed): every few milliseconds, each session of the bench database whose
//! `application_name` matches is counted under what it is doing — a statement running (its first
//! words), waiting (the wait event, e.g. `IO:WALSync` for a commit's flush, `Lock:advisory`), or
//! idle in its transaction (the client's own time: Rust code, the network).

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Samples until `stop` fires; returns (label, samples), most frequent first.
pub async fn sample(pool: PgPool, application: &'static str, stop: CancellationToken) -> Vec<(String, u64)> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    while !stop.is_cancelled() {
        let rows: Vec<(String, Option<String>, Option<String>, String)> = match sqlx::query_as(
            "select coalesce(state, ''), wait_event_type, wait_event, left(query, 200)
             from pg_stat_activity
             where datname = current_database() and application_name = $1 and pid <> pg_backend_pid()",
        )
        .bind(application)
        .fetch_all(&pool)
        .await
        {
            Ok(rows) => rows,
            Err(_) => break,
        };
        for (state, wait_type, wait, query) in rows {
            let label = match state.as_str() {
                "idle in transaction" => "idle in transaction (client)".to_owned(),
                "active" => {
                    let statement = statement_label(&query);
                    match (wait_type, wait) {
                        (Some(t), Some(w)) if t != "Activity" => format!("{statement} [waiting {t}:{w}]"),
                        _ => statement,
                    }
                }
                _ => continue, // idle between transactions: not a worker's time
            };
            *counts.entry(label).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut out: Vec<_> = counts.into_iter().collect();
    out.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    out
}

/// The statement's kind and first table: `COMMIT`, `insert into memberships`, `with … update
/// jobs`, ...
fn statement_label(query: &str) -> String {
    let words: Vec<&str> = query.split_whitespace().collect();
    let lower = |s: &str| s.to_ascii_lowercase();
    let first = words.first().map(|w| lower(w)).unwrap_or_default();
    if matches!(
        first.as_str(),
        "commit" | "begin" | "rollback" | "savepoint" | "release"
    ) {
        return first.to_uppercase();
    }
    // The first data-modifying verb and its table, else the first `from` table.
    for (i, w) in words.iter().enumerate() {
        let w = lower(w);
        let target = match w.as_str() {
            "insert" => words.get(i + 2),
            "update" | "delete" => words.get(i + 1).filter(|t| lower(t) != "from").or(words.get(i + 2)),
            _ => None,
        };
        if let Some(t) = target {
            return format!("{w} {}", t.trim_matches(|c: char| !c.is_alphanumeric() && c != '_'));
        }
    }
    match words.iter().position(|w| lower(w) == "from") {
        Some(i) => format!("{first} … from {}", words.get(i + 1).copied().unwrap_or("?")),
        None => first,
    }
}

/// Prints the profile as shares of all samples.
pub fn print(title: &str, samples: &[(String, u64)]) {
    let total: u64 = samples.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return;
    }
    println!("{title}: where the sessions' time goes ({total} samples)");
    for (label, n) in samples.iter().take(14) {
        println!("  {:5.1} %  {label}", *n as f64 * 100.0 / total as f64);
    }
}
