//! The load generator's side of a delivery: a minimal HTTP/1.1 client over keep-alive
//! connections (as wrk is), so that the machine's two cores go to orgsync and Postgres rather than
//! to the client, and Svix signing of each delivery.

use std::net::SocketAddr;
use std::sync::Mutex;

use orgsync::clerk::signature::WebhookVerifier;

/// Posts signed webhook deliveries to one receiver, reusing idle connections.
pub struct Poster {
    addr: SocketAddr,
    signer: WebhookVerifier,
    idle: Mutex<Vec<RawHttp>>,
}

impl Poster {
    /// A poster signing with `secret` (`whsec_...`) for the receiver at `addr`.
    pub fn new(addr: SocketAddr, secret: &str) -> Self {
        Self {
            addr,
            signer: WebhookVerifier::parse(secret).expect("a valid webhook secret"),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Signs `body` as Svix message `id`, timestamped now (a retry of the same message is signed
    /// anew with the same id, as Svix does), and posts it to `/webhooks/clerk`. Ok(status) once
    /// the whole answer is read; Err when the connection fails (it is then dropped).
    pub async fn deliver(&self, id: &str, body: &str) -> std::io::Result<u16> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs() as i64;
        let headers = self.signer.sign(id, now, body.as_bytes());
        let pooled = self.idle.lock().unwrap().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => RawHttp::connect(self.addr).await?,
        };
        let status = conn.post("/webhooks/clerk", &headers, body).await?;
        self.idle.lock().unwrap().push(conn);
        Ok(status)
    }
}

/// One keep-alive HTTP/1.1 connection that sends a request and reads the whole answer.
struct RawHttp {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawHttp {
    async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Ok(status) once the answer (headers and body) is read.
    async fn post(&mut self, path: &str, headers: &http::HeaderMap, body: &str) -> std::io::Result<u16> {
        use std::fmt::Write as _;
        use tokio::io::AsyncWriteExt;
        let mut req = String::with_capacity(body.len() + 256);
        let _ = write!(
            req,
            "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            let _ = write!(req, "{k}: {}\r\n", v.to_str().unwrap_or_default());
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).await?;
        self.buf.clear();
        let broken = || std::io::Error::other("malformed answer");
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).map_err(|_| broken())?;
                let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(broken)?;
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + length {
                    self.read_more().await?;
                }
                return Ok(status);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
