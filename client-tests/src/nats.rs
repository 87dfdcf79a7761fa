//! NATS test kit for the JetStream sink: a `nats-server -js` process the test owns (Debian
//! package `nats-server`, 2.9), and a minimal NATS client over a raw socket to create a stream,
//! read it back through a push consumer and make JetStream API requests. Written against the
//! protocol text, independently of the broker's own client.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::{free_port, WAIT};

/// A fresh NKEY user, written the way `nk -gen user -pubout` writes it: (seed text `SU…`,
/// public key `U…`). Encoded here from the format (base32 of prefix bytes, key, CRC-16/XMODEM
/// little-endian), independently of the broker's reader.
pub fn nkey_user() -> (String, String) {
    use ring::signature::KeyPair;
    fn crc16(data: &[u8]) -> u16 {
        data.iter().fold(0u16, |crc, &b| {
            (0..8).fold(
                crc ^ (u16::from(b) << 8),
                |c, _| if c & 0x8000 != 0 { (c << 1) ^ 0x1021 } else { c << 1 },
            )
        })
    }
    fn text(mut raw: Vec<u8>) -> String {
        let crc = crc16(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        data_encoding::BASE32_NOPAD.encode(&raw)
    }
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    let (seed_prefix, user) = (18u8 << 3, 20u8 << 3);
    let seed_text = text([&[seed_prefix | user >> 5, (user & 31) << 3][..], &seed].concat());
    let public = text([&[user][..], pair.public_key().as_ref()].concat());
    (seed_text, public)
}

/// A `nats-server` with JetStream on a loopback port, its store in a temporary directory;
/// killed on drop.
pub struct NatsServer {
    child: std::process::Child,
    pub addr: SocketAddr,
    /// MQTT listener, when started with `start_with_mqtt`.
    pub mqtt: Option<SocketAddr>,
    /// HTTP monitoring port (`/connz`), when started with `start_with_tls`.
    pub monitor: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts on `port` (`free_port()` for any).
    pub async fn start(port: u16) -> NatsServer {
        NatsServer::launch(port, None, "").await
    }

    /// With one NKEY user (`public`, `U…`); clients that present nothing are the user
    /// "reader" (`no_auth_user`), as the test's own reader is.
    pub async fn start_with_nkey(public: &str) -> NatsServer {
        let auth = format!(
            "authorization {{ users: [ {{ nkey: \"{public}\" }}, {{ user: reader, password: reader }} ] }}\n\
             no_auth_user: reader\n"
        );
        NatsServer::launch(free_port(), None, &auth).await
    }

    /// With TLS on the client port (this certificate and key) and HTTP monitoring on another
    /// free port. `required`: TLS only; otherwise plain clients are served too
    /// (`allow_non_tls`), as the test's own reader is.
    pub async fn start_with_tls(cert: &std::path::Path, key: &std::path::Path, required: bool) -> NatsServer {
        let monitor = free_port();
        let tls = format!(
            "tls {{ cert_file: {:?}, key_file: {:?} }}\nallow_non_tls: {}\nhttp: \"127.0.0.1:{monitor}\"\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            !required
        );
        let mut server = NatsServer::launch(free_port(), None, &tls).await;
        server.monitor = Some(format!("127.0.0.1:{monitor}").parse().unwrap());
        server
    }

    /// Also listens for MQTT (3.1.1, QoS 0/1) on another free port; NATS needs a server name
    /// and JetStream for that.
    pub async fn start_with_mqtt() -> NatsServer {
        NatsServer::launch(free_port(), Some(free_port()), "").await
    }

    async fn launch(port: u16, mqtt_port: Option<u16>, extra: &str) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("js");
        let mut conf = format!(
            "server_name: t22\nlisten: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {:?} }}\n",
            store.to_str().unwrap()
        );
        if let Some(mqtt) = mqtt_port {
            conf.push_str(&format!("mqtt {{ listen: \"127.0.0.1:{mqtt}\" }}\n"));
        }
        conf.push_str(extra);
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, conf).unwrap();
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server (Debian package `nats-server`) runs");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mqtt = mqtt_port.map(|p| format!("127.0.0.1:{p}").parse().unwrap());
        let server = NatsServer { child, addr, mqtt, monitor: None, dir };
        let deadline = Instant::now() + WAIT;
        for a in std::iter::once(addr).chain(mqtt) {
            while TcpStream::connect(a).await.is_err() {
                assert!(Instant::now() < deadline, "nats-server did not listen on {a}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        server
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGSTOP / SIGCONT: the server holds everything it was sent while stopped.
    pub fn pause(&self, paused: bool) {
        let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.pause(false);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message read from NATS.
#[derive(Debug, Clone)]
pub struct NatsMsg {
    pub subject: String,
    /// The subscription it came through.
    pub sid: u64,
    /// Header block (`NATS/1.0 ...` lines), empty without headers.
    pub headers: String,
    pub payload: Vec<u8>,
}

impl NatsMsg {
    /// A header's value (first occurrence).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .lines()
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.trim() == name).map(|(_, v)| v.trim()))
    }
}

/// A minimal NATS client: CONNECT, SUB, PUB, and MSG/HMSG reading; PINGs answered.
pub struct NatsClient {
    stream: TcpStream,
    buf: Vec<u8>,
    next_sid: u64,
    /// Messages that arrived while `request` waited for its reply (a consumer's first
    /// deliveries can come before the reply that created it), for `next_msg`.
    held: std::collections::VecDeque<NatsMsg>,
}

impl NatsClient {
    pub async fn connect(addr: SocketAddr) -> NatsClient {
        let stream = TcpStream::connect(addr).await.expect("connect to nats-server");
        let mut c = NatsClient { stream, buf: Vec::new(), next_sid: 1, held: Default::default() };
        let info = c.line().await;
        assert!(info.starts_with("INFO "), "{info}");
        c.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1}\r\nPING\r\n")
            .await;
        loop {
            let line = c.line().await;
            if line == "PONG" {
                return c;
            }
            assert!(!line.starts_with("-ERR"), "{line}");
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to nats-server");
    }

    /// Reads one control line (without CRLF).
    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return line;
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 64 * 1024];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("nats-server answers")
            .expect("read from nats-server");
        assert!(n > 0, "nats-server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n + 2 {
            self.fill().await;
        }
        let body = self.buf[..n].to_vec();
        self.buf.drain(..n + 2);
        body
    }

    /// Subscribes to `subject`; returns the subscription id.
    pub async fn subscribe(&mut self, subject: &str) -> u64 {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.send(format!("SUB {subject} {sid}\r\n").as_bytes()).await;
        sid
    }

    pub async fn publish(&mut self, subject: &str, reply: Option<&str>, payload: &[u8]) {
        let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
        let mut bytes = format!("PUB {subject}{reply} {}\r\n", payload.len()).into_bytes();
        bytes.extend_from_slice(payload);
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes).await;
    }

    /// The next MSG/HMSG, within `within`; PINGs are answered on the way.
    pub async fn next_msg(&mut self, within: Duration) -> Option<NatsMsg> {
        match self.held.pop_front() {
            Some(m) => Some(m),
            None => self.read_msg(within).await,
        }
    }

    async fn read_msg(&mut self, within: Duration) -> Option<NatsMsg> {
        tokio::time::timeout(within, async {
            loop {
                let line = self.line().await;
                let fields: Vec<&str> = line.split_ascii_whitespace().collect();
                match fields.first().copied() {
                    Some("PING") => self.send(b"PONG\r\n").await,
                    Some("MSG") => {
                        let n: usize = fields.last().unwrap().parse().unwrap();
                        let payload = self.bytes(n).await;
                        let sid = fields[2].parse().unwrap();
                        return NatsMsg { subject: fields[1].into(), sid, headers: String::new(), payload };
                    }
                    Some("HMSG") => {
                        let total: usize = fields[fields.len() - 1].parse().unwrap();
                        let header_len: usize = fields[fields.len() - 2].parse().unwrap();
                        let mut body = self.bytes(total).await;
                        let payload = body.split_off(header_len);
                        let headers = String::from_utf8_lossy(&body).into_owned();
                        let sid = fields[2].parse().unwrap();
                        return NatsMsg { subject: fields[1].into(), sid, headers, payload };
                    }
                    Some(other) if other.starts_with("-ERR") => panic!("nats-server: {line}"),
                    _ => {}
                }
            }
        })
        .await
        .ok()
    }

    /// A request and its one reply (JetStream API calls).
    pub async fn request(&mut self, subject: &str, payload: &str) -> serde_json::Value {
        let inbox = format!("_INBOX.t22.{}", self.next_sid);
        let sid = self.subscribe(&inbox).await;
        self.publish(subject, Some(&inbox), payload.as_bytes()).await;
        let reply = loop {
            let m = self.read_msg(WAIT).await.expect("JetStream API answers");
            if m.sid == sid {
                break m;
            }
            self.held.push_back(m);
        };
        serde_json::from_slice(&reply.payload).unwrap_or_else(|e| panic!("{subject}: {e}: {reply:?}"))
    }

    /// Creates a file-backed stream on `subjects` with a two-minute duplicate window.
    pub async fn create_stream(&mut self, name: &str, subjects: &[&str]) {
        let config = serde_json::json!({
            "name": name, "subjects": subjects, "storage": "file",
            "duplicate_window": 120_000_000_000u64,
        });
        let reply = self.request(&format!("$JS.API.STREAM.CREATE.{name}"), &config.to_string()).await;
        assert!(reply.get("error").is_none(), "stream not created: {reply}");
    }

    /// Number of messages the stream holds.
    pub async fn stream_messages(&mut self, name: &str) -> u64 {
        let reply = self.request(&format!("$JS.API.STREAM.INFO.{name}"), "").await;
        reply["state"]["messages"].as_u64().unwrap_or_else(|| panic!("stream info: {reply}"))
    }

    /// Reads the whole stream through a push consumer (deliver all, no acks): stops after
    /// `at_least` messages and a quiet `QUIET`, or after `within`.
    pub async fn read_stream(&mut self, name: &str, at_least: usize, within: Duration) -> Vec<NatsMsg> {
        let deliver = format!("t22.deliver.{}", self.next_sid);
        let sid = self.subscribe(&deliver).await;
        let config = serde_json::json!({
            "stream_name": name,
            "config": { "deliver_subject": deliver, "ack_policy": "none", "deliver_policy": "all" },
        });
        let reply = self.request(&format!("$JS.API.CONSUMER.CREATE.{name}"), &config.to_string()).await;
        assert!(reply.get("error").is_none(), "consumer not created: {reply}");
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = if got.len() >= at_least { crate::QUIET.min(left) } else { left };
            match self.next_msg(wait).await {
                Some(m) if m.sid == sid => got.push(m),
                Some(_) => {}
                None => return got,
            }
        }
    }
}
