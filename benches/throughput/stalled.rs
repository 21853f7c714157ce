//! Stalled: the real `orgsync serve` (receiver only, default connection cap) holding
//! [`STALLED`] connections that never finish their request (five in six stop in the middle of
//! the head, one in six after one byte of the body): its resident memory, what each stalled
//! connection costs, and the latency of genuine deliveries, each on a fresh connection, posted
//! meanwhile (each one takes the place of a stalled connection: the cap is full).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::deliver::Poster;
use crate::history::fixture;
use crate::measure::{ms, percentile, rss_kib};
use crate::serve::{Serve, SECRET};
use crate::Row;

/// Stalled connections held at once.
pub const STALLED: usize = 10_000;
/// Genuine deliveries posted while they are held.
const GENUINE: usize = 50;

const HALF_HEAD: &[u8] = b"POST /webhooks/clerk HTTP/1.1\r\nhost: orgsync\r\ncontent-type: appl";
const STALLED_BODY: &[u8] =
    b"POST /webhooks/clerk HTTP/1.1\r\nhost: orgsync\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{";

async fn stall(addr: SocketAddr, i: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("a stalled connection opens");
    let bytes = if i % 6 == 5 { STALLED_BODY } else { HALF_HEAD };
    s.write_all(bytes).await.expect("its bytes are sent");
    s
}

/// VmRSS of `pid` once it has stopped growing (two samples 200 ms apart within 1 %), in KiB.
async fn settled_rss_kib(pid: u32) -> u64 {
    let mut last = rss_kib(pid, "VmRSS:").unwrap_or(0);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rss_kib(pid, "VmRSS:").unwrap_or(0);
        if now.abs_diff(last) * 100 <= last {
            return now;
        }
        last = now;
    }
    last
}

pub async fn run(db_url: &str) -> Vec<Row> {
    // Both ends of every stalled connection are open at once: the client ends in this process.
    let limit = orgsync::http::descriptors::raise_descriptor_limit();
    assert!(
        limit >= STALLED as u64 + 256,
        "the stalled phase needs an open-files limit above {STALLED} (ulimit -Hn is {limit})"
    );
    // Deadlines long enough that nothing but eviction closes a stalled connection meanwhile.
    let long = "120s".to_owned();
    let serve = Serve::start(
        db_url,
        &["--no-worker"],
        &[
            ("ORGSYNC_HEADER_TIMEOUT", long.clone()),
            ("ORGSYNC_REQUEST_TIMEOUT", long),
        ],
    )
    .await;
    let (pid, addr) = (serve.pid, serve.addr);
    let body = fixture("organization.created").to_string();
    let warm = Poster::new(addr, SECRET);
    for i in 0..20 {
        assert_eq!(
            warm.deliver(&format!("msg_stalled_warm_{i}"), &body).await.ok(),
            Some(202)
        );
    }
    drop(warm);
    let idle_kib = settled_rss_kib(pid).await;

    let opening = Instant::now();
    let stalled: Vec<TcpStream> = futures::stream::iter(0..STALLED)
        .map(|i| stall(addr, i))
        .buffer_unordered(64)
        .collect()
        .await;
    println!(
        "stalled: {STALLED} stalled connections opened in {:.1} s",
        opening.elapsed().as_secs_f64()
    );
    let held_kib = settled_rss_kib(pid).await;

    let mut latencies = Vec::with_capacity(GENUINE);
    let mut failures = Vec::new();
    for i in 0..GENUINE {
        let started = Instant::now();
        // A poster of its own: a fresh connection, a newcomer on the full listener.
        let answer = Poster::new(addr, SECRET)
            .deliver(&format!("msg_stalled_{i}"), &body)
            .await;
        match answer {
            Ok(status) if (200..300).contains(&status) => latencies.push(started.elapsed()),
            other => failures.push(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.sort();
    let peak_kib = rss_kib(pid, "VmHWM:").unwrap_or(0);
    drop(stalled);
    serve.stop().await;
    assert!(
        failures.is_empty(),
        "every genuine delivery is answered 2xx while {STALLED} connections stall: {failures:?}"
    );

    let per_conn_kib = held_kib.saturating_sub(idle_kib) as f64 / STALLED as f64;
    println!(
        "stalled: RSS {:.1} MiB idle, {:.1} MiB holding {STALLED} (peak {:.1} MiB): {per_conn_kib:.2} KiB per stalled connection",
        idle_kib as f64 / 1024.0,
        held_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    vec![
        Row::new(
            format!("stalled: receiver RSS holding {STALLED} stalled conns"),
            format!(
                "{:.1} MiB ({per_conn_kib:.1} KiB each over {:.1} MiB)",
                held_kib as f64 / 1024.0,
                idle_kib as f64 / 1024.0
            ),
            "",
            "≤ 200 MiB",
        ),
        Row::new(
            format!("stalled: delivery latency p50 / max meanwhile (n={GENUINE})"),
            format!(
                "{} / {}",
                ms(percentile(&latencies, 0.5)),
                ms(percentile(&latencies, 1.0))
            ),
            "",
            "< 1 s",
        ),
    ]
}
