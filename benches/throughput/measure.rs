//! What the bench reads about processes and timings: CPU time from `/proc`, resident memory,
//! latency percentiles (Linux).

use std::time::Duration;

/// The `p` quantile (0..=1) of `sorted` (ascending); zero for no samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `d` as milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// CPU seconds used so far by: the whole machine, process `pid`, and this process.
pub fn cpu_seconds(pid: u32) -> (f64, f64, f64) {
    let ticks = |stat: &str| -> f64 {
        // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let f: Vec<&str> = after.split_whitespace().collect();
        let t = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        t / 100.0 // USER_HZ
    };
    // /proc/stat's first line: user nice system idle iowait irq softirq steal ...; busy = all but idle and iowait.
    let machine = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        let v: Vec<f64> = s
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        Some((v.iter().sum::<f64>() - v.get(3)? - v.get(4)?) / 100.0)
    });
    let of = |p: &str| std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(0.0, |s| ticks(&s));
    (machine.unwrap_or(0.0), of(&pid.to_string()), of("self"))
}

/// A `/proc/<pid>/status` field in KiB, e.g. `VmHWM:` (the peak resident set).
pub fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds used so far by each Postgres backend serving the database `pool` points at.
pub async fn backend_cpu(pool: &sqlx::PgPool) -> std::collections::HashMap<i32, f64> {
    let pids: Vec<i32> = sqlx::query_scalar("select pid from pg_stat_activity where datname = current_database()")
        .fetch_all(pool)
        .await
        .unwrap();
    pids.into_iter().map(|pid| (pid, cpu_seconds(pid as u32).1)).collect()
}

/// CPU seconds the backends of `after` used since `before` (a backend absent from `before`
/// started since).
pub fn backend_cpu_since(
    before: &std::collections::HashMap<i32, f64>,
    after: &std::collections::HashMap<i32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(pid, t)| t - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}
