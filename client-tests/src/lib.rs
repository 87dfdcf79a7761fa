//! Black-box test harness for Tern.
//!
//! [`Broker`] starts the real `tern` binary on an ephemeral loopback port and captures
//! its log. [`Mqtt`] drives a rumqttc (MQTT 3.1.1) client; [`Raw`] talks bytes over a
//! plain `TcpStream` for negative tests, with the packet builders in [`pkt`] (MQTT 3.1.1)
//! and [`v5`] (MQTT 5 builders, decoders and `Raw` helpers such as `handshake5`).
//!
//! Every wait is bounded: helpers panic with a message naming what did not happen.
//!
//! Run: `cargo build -p tern --bin tern && cargo nextest run -p client-tests`. Test files are
//! numbered areas (`tests/t01_connect.rs` ... `tests/t09_shutdown_config.rs`, MQTT 5 in
//! `tests/t10_v5_*.rs`); each test starts its own broker on an ephemeral loopback port, so
//! they run in parallel.
//!
//! Setting `TERN_TEST_REFERENCE=mosquitto` runs the suite against the system
//! Mosquitto instead (only a sanity check of the tests themselves; Tern-specific
//! config tests do not apply there).

pub mod bridge;
pub mod http;
pub mod nats;
pub mod npm;
pub mod pki;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Default bound for "this should happen soon" waits.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------
// Broker process
// ---------------------------------------------------------------------------------------

/// A free loopback port (bound, then released for the process that will listen on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Path of the `tern` binary built by `cargo build -p tern --bin tern`.
pub fn tern_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let bin = target.join("debug").join("tern");
    assert!(
        bin.is_file(),
        "tern binary not found at {}: run `cargo build -p tern --bin tern` first",
        bin.display()
    );
    bin
}

/// True when running against the reference Mosquitto (see the crate docs).
pub fn is_reference() -> bool {
    reference_mosquitto()
}

fn reference_mosquitto() -> bool {
    std::env::var("TERN_TEST_REFERENCE").is_ok_and(|v| v == "mosquitto")
}

/// Log lines shared between the reader threads and the test.
#[derive(Default)]
struct LogBuf {
    text: Mutex<(String, usize)>, // (text, number of closed streams)
    changed: Condvar,
}

impl LogBuf {
    fn push_line(&self, line: &str) {
        let mut g = self.text.lock().unwrap();
        g.0.push_str(line);
        g.0.push('\n');
        self.changed.notify_all();
    }
    fn close(&self) {
        self.text.lock().unwrap().1 += 1;
        self.changed.notify_all();
    }
}

fn drain<R: Read + Send + 'static>(r: R, buf: Arc<LogBuf>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&line);
                    buf.push_line(s.trim_end_matches(['\n', '\r']));
                }
            }
        }
        buf.close();
    });
}

/// How to launch `tern`.
#[derive(Default, Clone)]
pub struct Launch {
    /// Config file contents; written to a tempdir and passed with `-c`.
    pub config: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Command-line arguments after `-c FILE` (default: `--bind 127.0.0.1 -p 0`).
    pub args: Option<Vec<String>>,
}

impl Launch {
    pub fn config(toml: &str) -> Self {
        Launch { config: Some(toml.to_string()), ..Default::default() }
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }
    /// Use this storage directory (`TERN__STORAGE__DIR`), e.g. to restart on the same data.
    pub fn data_dir(self, dir: &std::path::Path) -> Self {
        self.env("TERN__STORAGE__DIR", dir.to_str().expect("UTF-8 path"))
    }
}

/// A running broker process, killed on drop.
pub struct Broker {
    child: Child,
    addr: SocketAddr,
    logs: Arc<LogBuf>,
    _dir: tempfile::TempDir,
}

/// A launched process that has exited (or was killed after a timeout).
pub struct Exited {
    /// `None` if it was still running at the timeout.
    pub status: Option<ExitStatus>,
    pub logs: String,
}

fn spawn(launch: &Launch) -> (Child, Arc<LogBuf>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd;
    if reference_mosquitto() {
        // Sanity mode: Mosquitto with an equivalent listener. No port 0 there: pick one.
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type all\nmax_keepalive 65535\n"),
        )
        .unwrap();
        cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("echo 'listening on 127.0.0.1:{port}' >&2; exec mosquitto -c {}", conf.display()));
    } else {
        cmd = Command::new(tern_bin());
        if let Some(cfg) = &launch.config {
            let path = dir.path().join("tern.toml");
            std::fs::write(&path, cfg).expect("write config");
            cmd.arg("-c").arg(path);
        }
        match &launch.args {
            Some(a) => {
                cmd.args(a);
            }
            None => {
                cmd.args(["--bind", "127.0.0.1", "-p", "0"]);
            }
        }
    }
    cmd.current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG");
    for (k, v) in &launch.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn broker");
    let logs = Arc::new(LogBuf::default());
    drain(child.stdout.take().unwrap(), logs.clone());
    drain(child.stderr.take().unwrap(), logs.clone());
    (child, logs, dir)
}

fn parse_listening(line: &str) -> Option<SocketAddr> {
    let i = line.find("listening on ")?;
    let rest = &line[i + "listening on ".len()..];
    let tok: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != ',' && *c != '"').collect();
    tok.parse().ok()
}

impl Broker {
    /// Start `tern` with an empty config.
    pub fn start() -> Broker {
        Self::start_with("")
    }

    /// Start `tern` with this config file contents.
    pub fn start_with(config_toml: &str) -> Broker {
        Self::launch(Launch::config(config_toml))
    }

    /// Start `tern` as described; panics (with the broker's output) if it does not print
    /// `listening on ADDR` within 10 s.
    pub fn launch(launch: Launch) -> Broker {
        match Self::try_launch(launch) {
            Ok(b) => b,
            Err(e) => {
                panic!("broker did not start listening (exit status {:?}); its output:\n{}", e.status, e.logs)
            }
        }
    }

    pub fn try_launch(launch: Launch) -> Result<Broker, Exited> {
        let (mut child, logs, dir) = spawn(&launch);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut g = logs.text.lock().unwrap();
        let addr = loop {
            // The broker accepts once every listener is bound, after the last line.
            if g.0.contains("accepting connections on") || reference_mosquitto() {
                if let Some(a) = g.0.lines().find_map(parse_listening) {
                    break a;
                }
            }
            let now = Instant::now();
            if now >= deadline || g.1 == 2 {
                let text = g.0.clone();
                drop(g);
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                let _ = child.wait();
                return Err(Exited { status, logs: text });
            }
            g = logs.changed.wait_timeout(g, deadline - now).unwrap().0;
        };
        drop(g);
        if reference_mosquitto() {
            // Wait until Mosquitto actually accepts.
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(addr).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(Broker { child, addr, logs, _dir: dir })
    }

    /// Run `tern` expecting it to exit by itself (e.g. on a config error) within `timeout`.
    pub fn run_to_exit(launch: Launch, timeout: Duration) -> Exited {
        let (mut child, logs, _dir) = spawn(&launch);
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reader threads finish copying the output.
        let mut g = logs.text.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while g.1 < 2 && Instant::now() < deadline {
            g = logs.changed.wait_timeout(g, Duration::from_millis(50)).unwrap().0;
        }
        Exited { status, logs: g.0.clone() }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The addresses of every listener, in configuration order (one "listening on" line
    /// each; the broker logs them all before it accepts).
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.logs().lines().filter_map(parse_listening).collect()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the broker printed so far (stderr and stdout).
    pub fn logs(&self) -> String {
        self.logs.text.lock().unwrap().0.clone()
    }

    /// Wait until the log contains `needle` (case-insensitive); false after `timeout`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let needle = needle.to_lowercase();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.logs().to_lowercase().contains(&needle) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until some log line satisfies `pred`; false after `timeout`.
    pub async fn wait_log_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.logs().lines().any(&pred) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// SIGHUP: reload the password file, ACL and certificates.
    pub fn sighup(&self) {
        self.signal(libc::SIGHUP)
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM)
    }

    pub fn sigint(&self) {
        self.signal(libc::SIGINT)
    }

    /// SIGKILL: the broker gets no chance to flush or close anything (a crash).
    pub fn sigkill(&self) {
        self.signal(libc::SIGKILL)
    }

    /// [`Broker::sigkill`] and wait until the process is gone.
    pub async fn kill9(&mut self) {
        self.sigkill();
        assert!(self.wait_exit(WAIT).await.is_some(), "broker still running after SIGKILL");
    }

    /// Wait for the process to exit; `None` if still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- broker output ----\n{}---- end broker output ----", self.logs());
        }
    }
}

// ---------------------------------------------------------------------------------------
// rumqttc client
// ---------------------------------------------------------------------------------------

/// rumqttc options for this broker: MQTT 3.1.1, keepalive 30 s, clean session.
pub fn opts(broker: &Broker, client_id: &str) -> MqttOptions {
    opts_at(broker.addr(), client_id)
}

/// [`opts`] for a broker at `addr`, of any implementation.
pub fn opts_at(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o.set_max_packet_size(4 << 20, 4 << 20);
    o
}

pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => panic!("bad qos {n}"),
    }
}

pub fn qos_num(q: QoS) -> u8 {
    q as u8
}

/// A connected rumqttc client whose event loop runs in a task.
pub struct Mqtt {
    pub client: AsyncClient,
    pub session_present: bool,
    publishes: mpsc::UnboundedReceiver<Publish>,
    acks: mpsc::UnboundedReceiver<Packet>,
    ended: watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

async fn drive(
    mut el: EventLoop,
    connack: tokio::sync::oneshot::Sender<Result<bool, String>>,
    pubs: mpsc::UnboundedSender<Publish>,
    acks: mpsc::UnboundedSender<Packet>,
    ended: watch::Sender<Option<String>>,
) {
    let mut connack = Some(connack);
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(c))) => {
                if let Some(tx) = connack.take() {
                    let _ = tx.send(Ok(c.session_present));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ = pubs.send(p);
            }
            Ok(Event::Incoming(
                p @ (Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PubAck(_) | Packet::PubComp(_)),
            )) => {
                let _ = acks.send(p);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // The DISCONNECT has been written and flushed.
                let _ = ended.send(Some("client sent DISCONNECT".into()));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(tx) = connack.take() {
                    let _ = tx.send(Err(e.to_string()));
                }
                let _ = ended.send(Some(e.to_string()));
                return; // never reconnect behind the test's back
            }
        }
    }
}

impl Mqtt {
    /// Connect and wait for a successful CONNACK.
    pub async fn connect(o: MqttOptions) -> Mqtt {
        let id = o.client_id();
        match Self::try_connect(o).await {
            Ok(m) => m,
            Err(e) => panic!("client {id:?} failed to connect: {e}"),
        }
    }

    pub async fn try_connect(o: MqttOptions) -> Result<Mqtt, String> {
        let (client, el) = AsyncClient::new(o, 64);
        let (ctx, crx) = tokio::sync::oneshot::channel();
        let (ptx, prx) = mpsc::unbounded_channel();
        let (atx, arx) = mpsc::unbounded_channel();
        let (etx, erx) = watch::channel(None);
        let task = tokio::spawn(drive(el, ctx, ptx, atx, etx));
        let sp = match tokio::time::timeout(WAIT, crx).await {
            Ok(Ok(Ok(sp))) => sp,
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err("event loop ended".into()),
            Err(_) => {
                task.abort();
                return Err("no CONNACK within 5 s".into());
            }
        };
        Ok(Mqtt { client, session_present: sp, publishes: prx, acks: arx, ended: erx, task })
    }

    /// Subscribe and wait for the SUBACK; returns the granted return codes.
    pub async fn subscribe(&mut self, filter: &str, q: u8) -> Vec<u8> {
        self.client.subscribe(filter, qos(q)).await.expect("subscribe request");
        match self.next_ack("SUBACK").await {
            Packet::SubAck(s) => s
                .return_codes
                .iter()
                .map(|c| match c {
                    rumqttc::SubscribeReasonCode::Success(q) => *q as u8,
                    rumqttc::SubscribeReasonCode::Failure => 0x80,
                })
                .collect(),
            p => panic!("expected SUBACK, got {p:?}"),
        }
    }

    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).await.expect("unsubscribe request");
        match self.next_ack("UNSUBACK").await {
            Packet::UnsubAck(_) => {}
            p => panic!("expected UNSUBACK, got {p:?}"),
        }
    }

    async fn next_ack(&mut self, what: &str) -> Packet {
        match tokio::time::timeout(WAIT, self.acks.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => panic!("connection ended while waiting for {what}: {:?}", self.ended_reason()),
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }

    /// Queue a PUBLISH (does not wait for the flow to complete).
    pub async fn publish(&self, topic: &str, q: u8, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, qos(q), retain, payload.into()).await.expect("publish request");
    }

    /// Publish and, for QoS 1/2, wait for PUBACK/PUBCOMP.
    pub async fn publish_wait(&mut self, topic: &str, q: u8, retain: bool, payload: impl Into<Vec<u8>>) {
        self.publish(topic, q, retain, payload).await;
        if q > 0 {
            self.wait_acks(1).await;
        }
    }

    /// Wait for `n` PUBACK/PUBCOMP packets.
    pub async fn wait_acks(&mut self, n: usize) {
        for i in 0..n {
            match self.next_ack("PUBACK/PUBCOMP").await {
                Packet::PubAck(_) | Packet::PubComp(_) => {}
                p => panic!("expected PUBACK/PUBCOMP #{i}, got {p:?}"),
            }
        }
    }

    /// Next incoming PUBLISH, or panic after [`WAIT`].
    pub async fn recv(&mut self) -> Publish {
        match self.recv_timeout(WAIT).await {
            Some(p) => p,
            None => panic!("no PUBLISH received within {WAIT:?} (ended: {:?})", self.ended_reason()),
        }
    }

    pub async fn recv_timeout(&mut self, d: Duration) -> Option<Publish> {
        tokio::time::timeout(d, self.publishes.recv()).await.ok().flatten()
    }

    /// Assert nothing is delivered for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Some(p) = self.recv_timeout(QUIET).await {
            panic!("unexpected PUBLISH {:?} payload {:?}", p, String::from_utf8_lossy(&p.payload));
        }
    }

    pub fn ended_reason(&self) -> Option<String> {
        self.ended.borrow().clone()
    }

    /// Wait until the connection has ended (closed by the broker); returns the reason.
    pub async fn wait_ended(&mut self, d: Duration) -> Option<String> {
        let r = tokio::time::timeout(d, self.ended.wait_for(|e| e.is_some())).await;
        match r {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        }
    }

    /// Send DISCONNECT and wait until it is flushed; then drop the connection.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect request");
        let r = self.wait_ended(WAIT).await;
        assert!(r.is_some(), "DISCONNECT not sent within {WAIT:?}");
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Drop the TCP connection without DISCONNECT (abnormal disconnect).
    pub async fn drop_connection(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Parse numbered payloads ("0", "1", ...).
pub fn payload_num(p: &Publish) -> usize {
    std::str::from_utf8(&p.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("payload is not a number: {:?}", p.payload))
}

// ---------------------------------------------------------------------------------------
// Raw socket client
// ---------------------------------------------------------------------------------------

/// One MQTT control packet as read off the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub header: u8,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for RawPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:02x} [", type_name(self.header >> 4), self.header)?;
        for b in &self.body {
            write!(f, "{b:02x} ")?;
        }
        write!(f, "]")
    }
}

pub fn type_name(t: u8) -> &'static str {
    [
        "RESERVED0",
        "CONNECT",
        "CONNACK",
        "PUBLISH",
        "PUBACK",
        "PUBREC",
        "PUBREL",
        "PUBCOMP",
        "SUBSCRIBE",
        "SUBACK",
        "UNSUBSCRIBE",
        "UNSUBACK",
        "PINGREQ",
        "PINGRESP",
        "DISCONNECT",
        "RESERVED15",
    ][t as usize & 15]
}

/// Decoded PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPublish {
    pub topic: String,
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    pub pid: Option<u16>,
    pub payload: Vec<u8>,
}

impl RawPacket {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }
    pub fn flags(&self) -> u8 {
        self.header & 0x0f
    }
    /// Whole packet bytes (remaining length re-encoded).
    pub fn bytes(&self) -> Vec<u8> {
        pkt::packet(self.header, &self.body)
    }
    /// Packet id of PUBACK/PUBREC/PUBREL/PUBCOMP/SUBACK/UNSUBACK.
    pub fn pid(&self) -> u16 {
        assert!(self.body.len() >= 2, "no packet id in {self:?}");
        u16::from_be_bytes([self.body[0], self.body[1]])
    }
    pub fn publish(&self) -> RawPublish {
        assert_eq!(self.kind(), 3, "expected PUBLISH, got {self:?}");
        let qos = (self.header >> 1) & 3;
        let b = &self.body;
        let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
        let topic = String::from_utf8(b[2..2 + tl].to_vec()).expect("topic utf8");
        let mut i = 2 + tl;
        let pid = if qos > 0 {
            i += 2;
            Some(u16::from_be_bytes([b[i - 2], b[i - 1]]))
        } else {
            None
        };
        RawPublish {
            topic,
            qos,
            dup: self.header & 8 != 0,
            retain: self.header & 1 != 0,
            pid,
            payload: b[i..].to_vec(),
        }
    }
}

/// Takes the first complete MQTT packet off `buf`, if it holds one.
pub fn take_frame(buf: &mut BytesMut) -> Option<RawPacket> {
    let b = &buf[..];
    if b.is_empty() {
        return None;
    }
    let mut len = 0usize;
    let mut mul = 1usize;
    let mut i = 1;
    loop {
        if i >= b.len() {
            return None;
        }
        let d = b[i];
        len += (d & 0x7f) as usize * mul;
        mul *= 128;
        i += 1;
        if d & 0x80 == 0 {
            break;
        }
        assert!(i <= 4, "peer sent a malformed remaining length: {:02x?}", &b[..i]);
    }
    if b.len() < i + len {
        return None;
    }
    let header = b[0];
    let body = b[i..i + len].to_vec();
    buf.advance(i + len);
    Some(RawPacket { header, body })
}

/// Any byte stream MQTT can run over: TCP, TLS, a WebSocket adapter.
pub trait ByteStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ByteStream for T {}

/// A connection speaking bytes (plain TCP unless made with [`Raw::over`]).
pub struct Raw {
    pub stream: Box<dyn ByteStream>,
    /// The local address of the TCP connection underneath.
    pub local: SocketAddr,
    buf: BytesMut,
}

/// What reading a packet ran into.
#[derive(Debug)]
pub enum ReadOutcome {
    Packet(RawPacket),
    /// EOF or connection reset.
    Closed(String),
    Timeout,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().expect("local addr");
        Raw::over(stream, local)
    }

    /// Speaks MQTT over an established stream (TLS, WebSocket, ...).
    pub fn over(stream: impl ByteStream + 'static, local: SocketAddr) -> Raw {
        Raw { stream: Box::new(stream), local, buf: BytesMut::new() }
    }

    /// Sends CONNECT over `self`; asserts CONNACK accepted; returns session-present.
    pub async fn handshake_over(mut self, c: &pkt::Connect) -> (Raw, bool) {
        self.send(&c.encode()).await;
        let ack = self.recv().await;
        assert_eq!(ack.header, 0x20, "expected CONNACK, got {ack:?}");
        assert_eq!(ack.body[1], 0, "CONNACK return code for {:?}: {ack:?}", c.client_id);
        let present = ack.body[0] == 1;
        (self, present)
    }

    /// Connect and send CONNECT; assert CONNACK accepted; returns session-present.
    pub async fn handshake(addr: SocketAddr, c: &pkt::Connect) -> (Raw, bool) {
        let mut r = Raw::connect(addr).await;
        r.send(&c.encode()).await;
        let ack = r.recv().await;
        assert_eq!(ack.header, 0x20, "expected CONNACK, got {ack:?}");
        assert_eq!(ack.body.len(), 2, "CONNACK remaining length must be 2: {ack:?}");
        assert_eq!(ack.body[1], 0, "CONNACK return code for {:?}: {ack:?}", c.client_id);
        assert_eq!(
            ack.body[0] & 0xfe,
            0,
            "CONNACK acknowledge flags bits 7-1 are reserved (3.2.2.1): {ack:?}"
        );
        (r, ack.body[0] == 1)
    }

    /// [`Raw::handshake`] with a plain 3.1.1 CONNECT.
    pub async fn connected(addr: SocketAddr, client_id: &str, clean: bool) -> Raw {
        Self::handshake(addr, &pkt::Connect::new(client_id).clean(clean)).await.0
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// Send, ignoring errors (the peer may already have closed).
    pub async fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(WAIT, self.stream.write_all(bytes)).await;
    }

    fn try_parse(&mut self) -> Option<RawPacket> {
        take_frame(&mut self.buf)
    }

    /// Read one packet, EOF/reset, or time out.
    pub async fn read(&mut self, d: Duration) -> ReadOutcome {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if let Some(p) = self.try_parse() {
                return ReadOutcome::Packet(p);
            }
            let mut tmp = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                Err(_) => return ReadOutcome::Timeout,
                Ok(Ok(0)) => {
                    if self.buf.is_empty() {
                        return ReadOutcome::Closed("EOF".into());
                    }
                    return ReadOutcome::Closed(format!("EOF after partial packet {:02x?}", &self.buf[..]));
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
                Ok(Err(e)) => return ReadOutcome::Closed(e.to_string()),
            }
        }
    }

    /// Next packet, or panic after [`WAIT`].
    pub async fn recv(&mut self) -> RawPacket {
        match self.read(WAIT).await {
            ReadOutcome::Packet(p) => p,
            o => panic!("expected a packet, got {o:?}"),
        }
    }

    /// Next packet, skipping PINGRESP.
    pub async fn recv_skip_ping(&mut self) -> RawPacket {
        loop {
            let p = self.recv().await;
            if p.header != 0xd0 {
                return p;
            }
        }
    }

    /// Assert the broker closes the connection (EOF or reset) within `d`, sending nothing first.
    pub async fn expect_closed(&mut self, d: Duration) {
        match self.read(d).await {
            ReadOutcome::Closed(_) => {}
            ReadOutcome::Packet(p) => panic!("expected the connection to be closed, got packet {p:?}"),
            ReadOutcome::Timeout => panic!("connection still open after {d:?}"),
        }
    }

    /// Assert the connection is closed within `d`; packets received first are returned.
    pub async fn expect_closed_after(&mut self, d: Duration) -> Vec<RawPacket> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                ReadOutcome::Closed(_) => return got,
                ReadOutcome::Packet(p) => got.push(p),
                ReadOutcome::Timeout => panic!("connection still open after {d:?} (received {got:?})"),
            }
        }
    }

    /// Assert no packet arrives (and the connection stays open) for `d`.
    pub async fn expect_nothing(&mut self, d: Duration) {
        match self.read(d).await {
            ReadOutcome::Timeout => {}
            o => panic!("expected silence for {d:?}, got {o:?}"),
        }
    }

    /// Subscribe and check the SUBACK (same packet id, one code per filter).
    pub async fn subscribe(&mut self, pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&pkt::subscribe(pid, filters)).await;
        let ack = self.recv_skip_ping().await;
        assert_eq!(ack.header, 0x90, "expected SUBACK, got {ack:?}");
        assert_eq!(ack.pid(), pid, "SUBACK packet id [MQTT-3.8.4-2]");
        assert_eq!(ack.body.len(), 2 + filters.len(), "one return code per filter [MQTT-3.8.4-5]");
        ack.body[2..].to_vec()
    }

    /// Receive a PUBLISH.
    pub async fn recv_publish(&mut self) -> RawPublish {
        let p = self.recv_skip_ping().await;
        assert_eq!(p.kind(), 3, "expected PUBLISH, got {p:?}");
        p.publish()
    }

    /// Publish with QoS 0/1/2 and complete the flow (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    /// Only for connections that receive nothing else meanwhile.
    pub async fn publish_flow(&mut self, topic: &str, q: u8, retain: bool, pid: u16, payload: &[u8]) {
        self.send(&pkt::publish(topic, q, retain, false, pid, payload)).await;
        match q {
            0 => {}
            1 => {
                let a = self.recv_skip_ping().await;
                assert_eq!(a.bytes(), pkt::puback(pid), "PUBACK [MQTT-4.3.2-2]");
            }
            _ => {
                let a = self.recv_skip_ping().await;
                assert_eq!(a.bytes(), pkt::pubrec(pid), "PUBREC [MQTT-4.3.3-2]");
                self.send(&pkt::pubrel(pid)).await;
                let a = self.recv_skip_ping().await;
                assert_eq!(a.bytes(), pkt::pubcomp(pid), "PUBCOMP [MQTT-4.3.3-2]");
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.send_lenient(&pkt::disconnect()).await;
        let _ = self.stream.shutdown().await;
        // Wait for the broker to close its side so the DISCONNECT is processed.
        let _ = self.read(WAIT).await;
    }
}

/// Check the broker still serves a fresh client: subscribe, publish QoS 1 to itself, receive.
pub async fn assert_broker_alive(addr: SocketAddr) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let id = format!("alive-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let topic = format!("alive/{id}");
    let mut r = Raw::connected(addr, &id, true).await;
    assert_eq!(r.subscribe(1, &[(&topic, 1)]).await, vec![1]);
    r.send(&pkt::publish(&topic, 1, false, false, 2, b"ok")).await;
    let mut got_ack = false;
    let mut got_pub = false;
    while !(got_ack && got_pub) {
        let p = r.recv().await;
        match p.kind() {
            4 => {
                assert_eq!(p.pid(), 2);
                got_ack = true;
            }
            3 => {
                let m = p.publish();
                assert_eq!(m.payload, b"ok");
                r.send(&pkt::puback(m.pid.unwrap())).await;
                got_pub = true;
            }
            _ => panic!("unexpected {p:?}"),
        }
    }
    r.disconnect().await;
}

/// Packet builders.
pub mod pkt {
    pub fn varint(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut d = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                d |= 0x80;
            }
            out.push(d);
            if n == 0 {
                return out;
            }
        }
    }

    pub fn packet(header: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![header];
        v.extend(varint(body.len()));
        v.extend_from_slice(body);
        v
    }

    /// Length-prefixed bytes (also used for UTF-8 strings).
    pub fn lp(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    #[derive(Clone, Debug)]
    pub struct Will {
        pub topic: Vec<u8>,
        pub payload: Vec<u8>,
        pub qos: u8,
        pub retain: bool,
    }

    /// CONNECT builder. Defaults: MQTT 3.1.1, clean session, keepalive 60.
    #[derive(Clone, Debug)]
    pub struct Connect {
        pub proto_name: Vec<u8>,
        pub level: u8,
        pub clean: bool,
        pub keepalive: u16,
        pub client_id: Vec<u8>,
        pub will: Option<Will>,
        pub username: Option<Vec<u8>>,
        pub password: Option<Vec<u8>>,
        /// OR-ed into the connect flags (to set reserved/invalid bits).
        pub extra_flags: u8,
        /// Bytes inserted after the keepalive (MQTT 5 properties).
        pub after_keepalive: Vec<u8>,
        /// Fixed header byte.
        pub header: u8,
    }

    impl Connect {
        pub fn new(client_id: &str) -> Connect {
            Connect {
                proto_name: b"MQTT".to_vec(),
                level: 4,
                clean: true,
                keepalive: 60,
                client_id: client_id.as_bytes().to_vec(),
                will: None,
                username: None,
                password: None,
                extra_flags: 0,
                after_keepalive: Vec::new(),
                header: 0x10,
            }
        }
        pub fn clean(mut self, c: bool) -> Self {
            self.clean = c;
            self
        }
        pub fn keepalive(mut self, k: u16) -> Self {
            self.keepalive = k;
            self
        }
        pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Self {
            self.will =
                Some(Will { topic: topic.as_bytes().to_vec(), payload: payload.to_vec(), qos, retain });
            self
        }
        /// User name, and password if given.
        pub fn credentials(mut self, user: &str, password: Option<&[u8]>) -> Self {
            self.username = Some(user.as_bytes().to_vec());
            self.password = password.map(<[u8]>::to_vec);
            self
        }
        pub fn mqisdp(mut self) -> Self {
            self.proto_name = b"MQIsdp".to_vec();
            self.level = 3;
            self
        }
        pub fn encode(&self) -> Vec<u8> {
            let mut flags = self.extra_flags;
            if self.clean {
                flags |= 0x02;
            }
            if let Some(w) = &self.will {
                flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
            }
            if self.password.is_some() {
                flags |= 0x40;
            }
            if self.username.is_some() {
                flags |= 0x80;
            }
            let mut b = lp(&self.proto_name);
            b.push(self.level);
            b.push(flags);
            b.extend(self.keepalive.to_be_bytes());
            b.extend(&self.after_keepalive);
            b.extend(lp(&self.client_id));
            if let Some(w) = &self.will {
                b.extend(lp(&w.topic));
                b.extend(lp(&w.payload));
            }
            if let Some(u) = &self.username {
                b.extend(lp(u));
            }
            if let Some(p) = &self.password {
                b.extend(lp(p));
            }
            packet(self.header, &b)
        }
    }

    pub fn publish(topic: &str, qos: u8, retain: bool, dup: bool, pid: u16, payload: &[u8]) -> Vec<u8> {
        publish_raw(topic.as_bytes(), qos, retain, dup, pid, payload)
    }

    /// PUBLISH with arbitrary topic bytes.
    pub fn publish_raw(topic: &[u8], qos: u8, retain: bool, dup: bool, pid: u16, payload: &[u8]) -> Vec<u8> {
        let header = 0x30 | (qos << 1) | if retain { 1 } else { 0 } | if dup { 8 } else { 0 };
        let mut b = lp(topic);
        if qos > 0 {
            b.extend(pid.to_be_bytes());
        }
        b.extend_from_slice(payload);
        packet(header, &b)
    }

    pub fn subscribe(pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let raw: Vec<(&[u8], u8)> = filters.iter().map(|(f, q)| (f.as_bytes(), *q)).collect();
        subscribe_raw(pid, &raw)
    }

    pub fn subscribe_raw(pid: u16, filters: &[(&[u8], u8)]) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        for (f, q) in filters {
            b.extend(lp(f));
            b.push(*q);
        }
        packet(0x82, &b)
    }

    pub fn unsubscribe(pid: u16, filters: &[&str]) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        for f in filters {
            b.extend(lp(f.as_bytes()));
        }
        packet(0xa2, &b)
    }

    fn ack(header: u8, pid: u16) -> Vec<u8> {
        packet(header, &pid.to_be_bytes())
    }
    pub fn puback(pid: u16) -> Vec<u8> {
        ack(0x40, pid)
    }
    pub fn pubrec(pid: u16) -> Vec<u8> {
        ack(0x50, pid)
    }
    pub fn pubrel(pid: u16) -> Vec<u8> {
        ack(0x62, pid)
    }
    pub fn pubcomp(pid: u16) -> Vec<u8> {
        ack(0x70, pid)
    }
    pub fn pingreq() -> Vec<u8> {
        vec![0xc0, 0x00]
    }
    pub fn disconnect() -> Vec<u8> {
        vec![0xe0, 0x00]
    }
}

/// Unique-ish names so parallel tests (separate brokers anyway) read clearly in logs.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Run one bad-input case: optionally CONNECT first, send `bytes`, and assert the broker
/// closes that connection without answering (3.1.1 has no reason codes, [MQTT-4.8.0-1]),
/// while an unrelated connected client keeps working and new clients can connect.
pub async fn expect_rejected(b: &Broker, connect_first: bool, bytes: &[u8]) {
    let mut bystander = Raw::connected(b.addr(), "bystander", true).await;
    assert_eq!(bystander.subscribe(1, &[("bystander/t", 0)]).await, vec![0]);

    let mut r = if connect_first {
        Raw::connected(b.addr(), "offender", true).await
    } else {
        Raw::connect(b.addr()).await
    };
    let local = r.local;
    r.send_lenient(bytes).await;
    r.expect_closed(Duration::from_secs(3)).await;
    if !is_reference() {
        // The reason is logged, on a line that identifies the connection by its peer address.
        let needle = local.to_string();
        let logged =
            b.wait_log_line(|l| l.contains(&needle) && l.to_lowercase().contains("clos"), WAIT).await;
        assert!(logged, "no log line about closing {needle}; log:\n{}", b.logs());
    }

    bystander.send(&pkt::publish("bystander/t", 0, false, false, 0, b"still here")).await;
    let m = bystander.recv_publish().await;
    assert_eq!(m.payload, b"still here", "bystander affected");
    assert_broker_alive(b.addr()).await;
    bystander.disconnect().await;
}

/// Declare one `#[tokio::test]` per bad-input case, each with its own broker.
#[macro_export]
macro_rules! bad_input_tests {
    ($( $(#[$meta:meta])* $name:ident : connected = $conn:expr, bytes = $bytes:expr; )*) => {
        $(
            $(#[$meta])*
            #[tokio::test]
            async fn $name() {
                let b = $crate::Broker::start();
                let bytes: Vec<u8> = $bytes;
                $crate::expect_rejected(&b, $conn, &bytes).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------
// MQTT 5 packets over the raw socket
// ---------------------------------------------------------------------------------------

/// MQTT 5 packet builders and decoders, exact enough to check reason codes and properties
/// on the wire (rumqttc's v5 codec is lenient). Property identifiers are MQTT 5.0 §2.2.2.2.
pub mod v5 {
    use super::pkt::{lp, packet, varint};
    use super::{RawPacket, WAIT};

    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTH_METHOD: u8 = 0x15;
    pub const AUTH_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    pub const WILL_DELAY: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    pub const RESPONSE_INFO: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_ID_AVAILABLE: u8 = 0x29;
    pub const SHARED_AVAILABLE: u8 = 0x2A;

    /// One property value; the encoding follows from the identifier.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Val {
        Byte(u8),
        U16(u16),
        U32(u32),
        Var(u32),
        Str(String),
        Bin(Vec<u8>),
        Pair(String, String),
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Byte,
        U16,
        U32,
        Var,
        Str,
        Bin,
        Pair,
    }

    fn kind_of(id: u8) -> Option<Kind> {
        Some(match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Kind::Byte,
            0x13 | 0x21 | 0x22 | 0x23 => Kind::U16,
            0x02 | 0x11 | 0x18 | 0x27 => Kind::U32,
            0x0B => Kind::Var,
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => Kind::Str,
            0x09 | 0x16 => Kind::Bin,
            0x26 => Kind::Pair,
            _ => return None,
        })
    }

    /// A property list, in wire order.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Props(pub Vec<(u8, Val)>);

    impl Props {
        pub fn new() -> Props {
            Props(Vec::new())
        }
        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
        /// Add a property; the value is converted to the identifier's type.
        pub fn with(mut self, id: u8, v: u32) -> Props {
            let val = match kind_of(id).expect("numeric property id") {
                Kind::Byte => Val::Byte(v as u8),
                Kind::U16 => Val::U16(v as u16),
                Kind::U32 => Val::U32(v),
                Kind::Var => Val::Var(v),
                _ => panic!("property {id:#04x} is not numeric"),
            };
            self.0.push((id, val));
            self
        }
        pub fn with_str(mut self, id: u8, s: &str) -> Props {
            assert!(kind_of(id) == Some(Kind::Str), "property {id:#04x} is not a string");
            self.0.push((id, Val::Str(s.to_string())));
            self
        }
        pub fn with_bin(mut self, id: u8, b: &[u8]) -> Props {
            assert!(kind_of(id) == Some(Kind::Bin), "property {id:#04x} is not binary");
            self.0.push((id, Val::Bin(b.to_vec())));
            self
        }
        pub fn user(mut self, k: &str, v: &str) -> Props {
            self.0.push((USER_PROPERTY, Val::Pair(k.to_string(), v.to_string())));
            self
        }
        /// Add any (identifier, value) pair, even a wrong one (for negative tests).
        pub fn raw(mut self, id: u8, v: Val) -> Props {
            self.0.push((id, v));
            self
        }

        /// Property length (variable byte integer) followed by the properties.
        pub fn encode(&self) -> Vec<u8> {
            let mut b = Vec::new();
            for (id, v) in &self.0 {
                b.push(*id);
                match v {
                    Val::Byte(x) => b.push(*x),
                    Val::U16(x) => b.extend(x.to_be_bytes()),
                    Val::U32(x) => b.extend(x.to_be_bytes()),
                    Val::Var(x) => b.extend(varint(*x as usize)),
                    Val::Str(s) => b.extend(lp(s.as_bytes())),
                    Val::Bin(x) => b.extend(lp(x)),
                    Val::Pair(k, v) => {
                        b.extend(lp(k.as_bytes()));
                        b.extend(lp(v.as_bytes()));
                    }
                }
            }
            let mut out = varint(b.len());
            out.extend(b);
            out
        }

        /// Decode a property list at `b[*i..]`, advancing `*i`. Panics on malformed input.
        pub fn decode(b: &[u8], i: &mut usize) -> Props {
            let len = read_varint(b, i) as usize;
            let end = *i + len;
            assert!(end <= b.len(), "property length {len} overruns the packet: {b:02x?}");
            let mut props = Vec::new();
            while *i < end {
                let id = b[*i];
                *i += 1;
                let k = kind_of(id).unwrap_or_else(|| panic!("unknown property id {id:#04x} in {b:02x?}"));
                let v = match k {
                    Kind::Byte => {
                        *i += 1;
                        Val::Byte(b[*i - 1])
                    }
                    Kind::U16 => {
                        *i += 2;
                        Val::U16(u16::from_be_bytes([b[*i - 2], b[*i - 1]]))
                    }
                    Kind::U32 => {
                        *i += 4;
                        Val::U32(u32::from_be_bytes(b[*i - 4..*i].try_into().unwrap()))
                    }
                    Kind::Var => Val::Var(read_varint(b, i)),
                    Kind::Str => Val::Str(read_str(b, i)),
                    Kind::Bin => Val::Bin(read_bin(b, i)),
                    Kind::Pair => {
                        let k = read_str(b, i);
                        Val::Pair(k, read_str(b, i))
                    }
                };
                props.push((id, v));
            }
            assert_eq!(*i, end, "properties overran their length: {b:02x?}");
            Props(props)
        }

        pub fn get(&self, id: u8) -> Option<&Val> {
            self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
        }
        pub fn has(&self, id: u8) -> bool {
            self.get(id).is_some()
        }
        pub fn count(&self, id: u8) -> usize {
            self.0.iter().filter(|(i, _)| *i == id).count()
        }
        /// Numeric value of a Byte/U16/U32/VarInt property.
        pub fn num(&self, id: u8) -> Option<u32> {
            self.get(id).map(|v| match v {
                Val::Byte(x) => *x as u32,
                Val::U16(x) => *x as u32,
                Val::U32(x) | Val::Var(x) => *x,
                v => panic!("property {id:#04x} is not numeric: {v:?}"),
            })
        }
        pub fn str(&self, id: u8) -> Option<&str> {
            self.get(id).map(|v| match v {
                Val::Str(s) => s.as_str(),
                v => panic!("property {id:#04x} is not a string: {v:?}"),
            })
        }
        pub fn bin(&self, id: u8) -> Option<&[u8]> {
            self.get(id).map(|v| match v {
                Val::Bin(b) => b.as_slice(),
                v => panic!("property {id:#04x} is not binary: {v:?}"),
            })
        }
        /// Every Subscription Identifier, in order.
        pub fn sub_ids(&self) -> Vec<u32> {
            let mut v: Vec<u32> = self
                .0
                .iter()
                .filter(|(i, _)| *i == SUBSCRIPTION_ID)
                .map(|(_, v)| match v {
                    Val::Var(x) => *x,
                    v => panic!("bad subscription id {v:?}"),
                })
                .collect();
            v.sort_unstable();
            v
        }
        /// User properties, in wire order.
        pub fn users(&self) -> Vec<(String, String)> {
            self.0
                .iter()
                .filter_map(|(_, v)| match v {
                    Val::Pair(k, v) => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect()
        }
    }

    pub fn read_varint(b: &[u8], i: &mut usize) -> u32 {
        let mut n = 0u32;
        let mut mul = 1u32;
        for _ in 0..4 {
            let d = b[*i];
            *i += 1;
            n += (d & 0x7f) as u32 * mul;
            if d & 0x80 == 0 {
                return n;
            }
            mul *= 128;
        }
        panic!("malformed variable byte integer in {b:02x?}");
    }

    fn read_bin(b: &[u8], i: &mut usize) -> Vec<u8> {
        let l = u16::from_be_bytes([b[*i], b[*i + 1]]) as usize;
        *i += 2 + l;
        b[*i - l..*i].to_vec()
    }

    fn read_str(b: &[u8], i: &mut usize) -> String {
        String::from_utf8(read_bin(b, i)).expect("UTF-8 string")
    }

    /// Subscription options byte (§3.8.3.1).
    pub fn sub_opts(qos: u8, no_local: bool, retain_as_published: bool, retain_handling: u8) -> u8 {
        qos | (no_local as u8) << 2 | (retain_as_published as u8) << 3 | retain_handling << 4
    }

    #[derive(Clone, Debug)]
    pub struct Will {
        pub topic: String,
        pub payload: Vec<u8>,
        pub qos: u8,
        pub retain: bool,
        pub props: Props,
    }

    /// MQTT 5 CONNECT builder. Defaults: clean start 1, keepalive 60, no properties.
    #[derive(Clone, Debug)]
    pub struct Connect {
        pub client_id: String,
        pub clean_start: bool,
        pub keepalive: u16,
        pub props: Props,
        pub will: Option<Will>,
        pub username: Option<String>,
        pub password: Option<Vec<u8>>,
    }

    impl Connect {
        pub fn new(client_id: &str) -> Connect {
            Connect {
                client_id: client_id.to_string(),
                clean_start: true,
                keepalive: 60,
                props: Props::new(),
                will: None,
                username: None,
                password: None,
            }
        }
        pub fn clean(mut self, c: bool) -> Self {
            self.clean_start = c;
            self
        }
        pub fn keepalive(mut self, k: u16) -> Self {
            self.keepalive = k;
            self
        }
        pub fn props(mut self, p: Props) -> Self {
            self.props = p;
            self
        }
        /// Add a numeric CONNECT property.
        pub fn prop(mut self, id: u8, v: u32) -> Self {
            self.props = self.props.with(id, v);
            self
        }
        pub fn session_expiry(self, secs: u32) -> Self {
            self.prop(SESSION_EXPIRY, secs)
        }
        pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool, props: Props) -> Self {
            self.will =
                Some(Will { topic: topic.to_string(), payload: payload.to_vec(), qos, retain, props });
            self
        }
        pub fn encode(&self) -> Vec<u8> {
            let mut flags = 0u8;
            if self.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &self.will {
                flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
            }
            if self.password.is_some() {
                flags |= 0x40;
            }
            if self.username.is_some() {
                flags |= 0x80;
            }
            let mut b = lp(b"MQTT");
            b.push(5);
            b.push(flags);
            b.extend(self.keepalive.to_be_bytes());
            b.extend(self.props.encode());
            b.extend(lp(self.client_id.as_bytes()));
            if let Some(w) = &self.will {
                b.extend(w.props.encode());
                b.extend(lp(w.topic.as_bytes()));
                b.extend(lp(&w.payload));
            }
            if let Some(u) = &self.username {
                b.extend(lp(u.as_bytes()));
            }
            if let Some(p) = &self.password {
                b.extend(lp(p));
            }
            packet(0x10, &b)
        }
    }

    pub fn publish(topic: &str, qos: u8, retain: bool, pid: u16, props: &Props, payload: &[u8]) -> Vec<u8> {
        publish_dup(topic, qos, retain, false, pid, props, payload)
    }

    pub fn publish_dup(
        topic: &str,
        qos: u8,
        retain: bool,
        dup: bool,
        pid: u16,
        props: &Props,
        payload: &[u8],
    ) -> Vec<u8> {
        let header = 0x30 | (qos << 1) | if retain { 1 } else { 0 } | if dup { 8 } else { 0 };
        let mut b = lp(topic.as_bytes());
        if qos > 0 {
            b.extend(pid.to_be_bytes());
        }
        b.extend(props.encode());
        b.extend_from_slice(payload);
        packet(header, &b)
    }

    /// SUBSCRIBE with (filter, options byte) pairs; see [`sub_opts`].
    pub fn subscribe(pid: u16, props: &Props, filters: &[(&str, u8)]) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        b.extend(props.encode());
        for (f, o) in filters {
            b.extend(lp(f.as_bytes()));
            b.push(*o);
        }
        packet(0x82, &b)
    }

    pub fn unsubscribe(pid: u16, filters: &[&str]) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        b.extend(Props::new().encode());
        for f in filters {
            b.extend(lp(f.as_bytes()));
        }
        packet(0xa2, &b)
    }

    /// PUBACK/PUBREC/PUBREL/PUBCOMP with a reason code (header 0x40/0x50/0x62/0x70).
    pub fn ack(header: u8, pid: u16, reason: u8) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        b.push(reason);
        b.extend(Props::new().encode());
        packet(header, &b)
    }
    pub fn puback(pid: u16) -> Vec<u8> {
        ack(0x40, pid, 0)
    }
    pub fn pubrec(pid: u16) -> Vec<u8> {
        ack(0x50, pid, 0)
    }
    pub fn pubrel(pid: u16) -> Vec<u8> {
        ack(0x62, pid, 0)
    }
    pub fn pubcomp(pid: u16) -> Vec<u8> {
        ack(0x70, pid, 0)
    }

    pub fn disconnect(reason: u8, props: &Props) -> Vec<u8> {
        let mut b = vec![reason];
        b.extend(props.encode());
        packet(0xe0, &b)
    }

    pub fn auth(reason: u8, props: &Props) -> Vec<u8> {
        let mut b = vec![reason];
        b.extend(props.encode());
        packet(0xf0, &b)
    }

    /// Decoded CONNACK.
    #[derive(Clone, Debug)]
    pub struct Connack {
        pub session_present: bool,
        pub reason: u8,
        pub props: Props,
    }

    /// Decoded PUBACK/PUBREC/PUBREL/PUBCOMP (reason 0 when omitted, §3.4.2.1).
    #[derive(Clone, Debug)]
    pub struct Ack {
        pub kind: u8,
        pub pid: u16,
        pub reason: u8,
        pub props: Props,
    }

    /// Decoded SUBACK/UNSUBACK.
    #[derive(Clone, Debug)]
    pub struct SubAck {
        pub kind: u8,
        pub pid: u16,
        pub props: Props,
        pub reasons: Vec<u8>,
    }

    /// Decoded DISCONNECT/AUTH (reason 0 when the remaining length is 0).
    #[derive(Clone, Debug)]
    pub struct Disconnect {
        pub reason: u8,
        pub props: Props,
    }

    /// Decoded PUBLISH.
    #[derive(Clone, Debug)]
    pub struct Publish {
        pub topic: String,
        pub qos: u8,
        pub dup: bool,
        pub retain: bool,
        pub pid: Option<u16>,
        pub props: Props,
        pub payload: Vec<u8>,
    }

    impl Publish {
        pub fn alias(&self) -> Option<u16> {
            self.props.num(TOPIC_ALIAS).map(|a| a as u16)
        }
    }

    impl RawPacket {
        pub fn connack5(&self) -> Connack {
            assert_eq!(self.header, 0x20, "expected CONNACK, got {self:?}");
            let b = &self.body;
            assert!(b.len() >= 3, "v5 CONNACK has flags, reason and properties: {self:?}");
            assert_eq!(b[0] & 0xfe, 0, "CONNACK flags bits 7-1 reserved [MQTT-3.2.2-1]: {self:?}");
            let mut i = 2;
            let props = Props::decode(b, &mut i);
            assert_eq!(i, b.len(), "trailing bytes in CONNACK {self:?}");
            Connack { session_present: b[0] & 1 == 1, reason: b[1], props }
        }

        pub fn ack5(&self) -> Ack {
            let kind = self.kind();
            assert!((4..=7).contains(&kind), "expected PUBACK/PUBREC/PUBREL/PUBCOMP, got {self:?}");
            let want_flags = if kind == 6 { 2 } else { 0 };
            assert_eq!(self.flags(), want_flags, "fixed header flags of {self:?}");
            let b = &self.body;
            assert!(b.len() >= 2, "{self:?}");
            let pid = u16::from_be_bytes([b[0], b[1]]);
            let (reason, props) = if b.len() == 2 {
                (0, Props::new())
            } else if b.len() == 3 {
                (b[2], Props::new())
            } else {
                let mut i = 3;
                let p = Props::decode(b, &mut i);
                assert_eq!(i, b.len(), "trailing bytes in {self:?}");
                (b[2], p)
            };
            Ack { kind, pid, reason, props }
        }

        pub fn suback5(&self) -> SubAck {
            let kind = self.kind();
            assert!(kind == 9 || kind == 11, "expected SUBACK/UNSUBACK, got {self:?}");
            assert_eq!(self.flags(), 0, "{self:?}");
            let b = &self.body;
            let pid = u16::from_be_bytes([b[0], b[1]]);
            let mut i = 2;
            let props = Props::decode(b, &mut i);
            SubAck { kind, pid, props, reasons: b[i..].to_vec() }
        }

        pub fn disconnect5(&self) -> Disconnect {
            let kind = self.kind();
            assert!(kind == 14 || kind == 15, "expected DISCONNECT/AUTH, got {self:?}");
            assert_eq!(self.flags(), 0, "{self:?}");
            let b = &self.body;
            if b.is_empty() {
                return Disconnect { reason: 0, props: Props::new() };
            }
            let props = if b.len() == 1 {
                Props::new()
            } else {
                let mut i = 1;
                let p = Props::decode(b, &mut i);
                assert_eq!(i, b.len(), "trailing bytes in {self:?}");
                p
            };
            Disconnect { reason: b[0], props }
        }

        pub fn publish5(&self) -> Publish {
            assert_eq!(self.kind(), 3, "expected PUBLISH, got {self:?}");
            let qos = (self.header >> 1) & 3;
            let b = &self.body;
            let mut i = 0;
            let topic = read_str(b, &mut i);
            let pid = if qos > 0 {
                i += 2;
                Some(u16::from_be_bytes([b[i - 2], b[i - 1]]))
            } else {
                None
            };
            let props = Props::decode(b, &mut i);
            Publish {
                topic,
                qos,
                dup: self.header & 8 != 0,
                retain: self.header & 1 != 0,
                pid,
                props,
                payload: b[i..].to_vec(),
            }
        }
    }

    impl super::Raw {
        /// Connect, send this CONNECT, return the decoded CONNACK (whatever its reason).
        pub async fn connect5(addr: std::net::SocketAddr, c: &Connect) -> (super::Raw, Connack) {
            let mut r = super::Raw::connect(addr).await;
            r.send(&c.encode()).await;
            let ack = r.recv().await.connack5();
            (r, ack)
        }

        /// [`Raw::connect5`] asserting reason 0x00 (Success).
        pub async fn handshake5(addr: std::net::SocketAddr, c: &Connect) -> (super::Raw, Connack) {
            let (r, ack) = Self::connect5(addr, c).await;
            assert_eq!(ack.reason, 0, "CONNACK reason for {:?}: {ack:?}", c.client_id);
            (r, ack)
        }

        /// A clean-start v5 client with no properties.
        pub async fn connected5(addr: std::net::SocketAddr, client_id: &str) -> super::Raw {
            Self::handshake5(addr, &Connect::new(client_id)).await.0
        }

        /// SUBSCRIBE and return the SUBACK reason codes (checks packet id and count).
        pub async fn subscribe5(&mut self, pid: u16, props: &Props, filters: &[(&str, u8)]) -> Vec<u8> {
            self.send(&subscribe(pid, props, filters)).await;
            let a = self.recv_skip_ping().await;
            assert_eq!(a.kind(), 9, "expected SUBACK, got {a:?}");
            let a = a.suback5();
            assert_eq!(a.pid, pid, "SUBACK packet id [MQTT-3.8.4-2]");
            assert_eq!(a.reasons.len(), filters.len(), "one reason code per filter [MQTT-3.9.3-1]");
            a.reasons
        }

        /// Subscribe to one filter at `qos` with default options; asserts it was granted.
        pub async fn sub5(&mut self, filter: &str, qos: u8) {
            let r = self.subscribe5(1, &Props::new(), &[(filter, qos)]).await;
            assert_eq!(r, vec![qos], "SUBACK for {filter}");
        }

        pub async fn unsubscribe5(&mut self, pid: u16, filters: &[&str]) -> Vec<u8> {
            self.send(&unsubscribe(pid, filters)).await;
            let a = self.recv_skip_ping().await;
            assert_eq!(a.kind(), 11, "expected UNSUBACK, got {a:?}");
            let a = a.suback5();
            assert_eq!(a.pid, pid, "UNSUBACK packet id [MQTT-3.10.4-4]");
            assert_eq!(a.reasons.len(), filters.len(), "one reason code per filter [MQTT-3.11.3-1]");
            a.reasons
        }

        pub async fn recv_publish5(&mut self) -> Publish {
            self.recv_skip_ping().await.publish5()
        }

        /// Publish QoS 0/1/2 and complete the flow; returns the PUBACK/PUBREC reason code.
        /// Only for connections that receive nothing else meanwhile.
        pub async fn publish5_flow(
            &mut self,
            topic: &str,
            qos: u8,
            retain: bool,
            pid: u16,
            props: &Props,
            payload: &[u8],
        ) -> u8 {
            self.send(&publish(topic, qos, retain, pid, props, payload)).await;
            match qos {
                0 => 0,
                1 => {
                    let a = self.recv_skip_ping().await.ack5();
                    assert_eq!((a.kind, a.pid), (4, pid), "PUBACK [MQTT-4.3.2-4]");
                    a.reason
                }
                _ => {
                    let a = self.recv_skip_ping().await.ack5();
                    assert_eq!((a.kind, a.pid), (5, pid), "PUBREC [MQTT-4.3.3-8]");
                    self.send(&pubrel(pid)).await;
                    let c = self.recv_skip_ping().await.ack5();
                    assert_eq!((c.kind, c.pid, c.reason), (7, pid, 0), "PUBCOMP [MQTT-4.3.3-11]");
                    a.reason
                }
            }
        }

        /// Expect a DISCONNECT from the broker (possibly after other packets, returned) and
        /// then the connection closed; returns (DISCONNECT, packets before it).
        pub async fn expect_disconnect(&mut self) -> (Disconnect, Vec<RawPacket>) {
            let mut before = Vec::new();
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.read(left).await {
                    super::ReadOutcome::Packet(p) if p.kind() == 14 => {
                        let d = p.disconnect5();
                        // [MQTT-3.14.4-1] [MQTT-3.14.4-2]: nothing after DISCONNECT, then close.
                        let rest = self.expect_closed_after(WAIT).await;
                        assert!(rest.is_empty(), "packets after DISCONNECT: {rest:?}");
                        return (d, before);
                    }
                    super::ReadOutcome::Packet(p) => before.push(p),
                    o => panic!("expected DISCONNECT, got {o:?} (after {before:?})"),
                }
            }
        }

        /// Expect DISCONNECT with `reason` (and nothing else first), then close.
        pub async fn expect_disconnect_reason(&mut self, reason: u8, why: &str) {
            let (d, before) = self.expect_disconnect().await;
            assert!(before.is_empty(), "{why}: packets before DISCONNECT: {before:?}");
            assert_eq!(d.reason, reason, "{why}: DISCONNECT reason {:#04x}, wanted {reason:#04x}", d.reason);
        }

        /// Send a v5 DISCONNECT (reason 0) and wait for the broker to close.
        pub async fn disconnect5(self) {
            self.disconnect_with(0, &Props::new()).await
        }

        pub async fn disconnect_with(mut self, reason: u8, props: &Props) {
            self.send_lenient(&disconnect(reason, props)).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await;
            let _ = self.read(WAIT).await;
        }
    }
}
