//! The real `orgsync serve` (the release binary cargo built for this bench) as a child process.

use std::net::SocketAddr;
use std::time::Duration;

/// The webhook secret the bench signs with and the spawned service verifies with.
pub const SECRET: &str = "whsec_YmVuY2htYXJrLXNlY3JldC1mb3Itb3Jnc3luYw==";

/// A running `orgsync serve`.
pub struct Serve {
    child: tokio::process::Child,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl Serve {
    /// Starts `orgsync serve` on a free loopback port against `db_url` (schema `public`, where the
    /// bench migrates its database), with `args` added to the command line and `env` to its
    /// environment, and waits until it answers `/readyz`. Panics when it does not within 10 s.
    pub async fn start(db_url: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        Self::start_at(free_port(), db_url, args, env).await
    }

    /// [`Serve::start`] on loopback port `port` (for a peer that must know it beforehand).
    pub async fn start_at(port: u16, db_url: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgsync"));
        command
            .args(["serve", "--listen", &addr.to_string()])
            .args(args)
            .env("DATABASE_URL", db_url)
            .env("ORGSYNC_SCHEMA", "public")
            .env("CLERK_WEBHOOK_SECRET", SECRET)
            .env("ORGSYNC_RESYNC_INTERVAL", "off")
            .env("ORGSYNC_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .env_remove("CLERK_SECRET_KEY")
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("orgsync binary starts");
        let pid = child.id().unwrap();
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Self { child, pid, addr };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("orgsync serve did not become ready within 10 s");
    }

    /// SIGTERM, then waits up to 10 s for the graceful shutdown (the child is killed when dropped).
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
