//! Bridge test kit: a TCP proxy the test owns between an edge `tern` and its upstream (pass,
//! reset, black-hole, hold replies), a scripted upstream, a Mosquitto upstream, and a checker of
//! "<publisher>:<sequence>" streams that reports missing, duplicated and reordered messages.
//! Shared by the bridge tests (t20 and later) so each scenario file stays about its scenario.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::*;

/// Bound for a whole stream to arrive upstream.
pub const ARRIVE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The proxy between the edge and the upstream
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow both ways.
    Pass,
    /// Every connection is reset (RST); new ones are reset at once.
    Reset,
    /// Connections stay open but nothing is forwarded (a silently dead link).
    Hold,
    /// Bytes to the upstream flow, its replies are held: it receives PUBLISHes whose
    /// acknowledgements never reach the bridge.
    HoldReplies,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub mode: watch::Sender<Mode>,
    /// Connections accepted while passing (the bridge's connection attempts that got through).
    pub linked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes with RST rather than FIN. (A zero linger does not block on drop: the deprecation is
/// about non-zero ones.)
#[allow(deprecated)]
pub fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, watch_mode) = watch::channel(Mode::Pass);
        let linked = Arc::new(AtomicUsize::new(0));
        let count = linked.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if *watch_mode.borrow() != Mode::Pass {
                    reset(client);
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(pipe(client, upstream, watch_mode.clone()));
            }
        });
        Proxy { addr, mode, linked, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn pipe(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        reset(client);
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (mut cbuf, mut sbuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Reset => break,
            Mode::Hold => {
                if mode.changed().await.is_err() {
                    break;
                }
                continue;
            }
            Mode::Pass | Mode::HoldReplies => {}
        }
        let replies = current == Mode::Pass;
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { break },
            r = cr.read(&mut cbuf) => match r {
                Ok(n) if n > 0 => if sw.write_all(&cbuf[..n]).await.is_err() { break },
                _ => break,
            },
            r = sr.read(&mut sbuf), if replies => match r {
                Ok(n) if n > 0 => if cw.write_all(&sbuf[..n]).await.is_err() { break },
                _ => break,
            },
        }
    }
    // Either side closed, or a reset: both go, with RST.
    if let (Ok(c), Ok(s)) = (cr.reunite(cw), sr.reunite(sw)) {
        reset(c);
        reset(s);
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

pub const STATE_TOPIC: &str = "$SYS/broker/connection/cloud/state";

/// An edge config with one bridge named "cloud" to `proxy`; `extra` adds keys to the table.
pub fn edge_config(proxy: SocketAddr, extra: &str) -> String {
    format!(
        "[[bridge]]\nname = \"cloud\"\naddresses = [\"{proxy}\"]\nkeep_alive_secs = 2\n\
         reconnect_delay_min_ms = 50\nreconnect_delay_max_ms = 400\nconnect_timeout_secs = 2\n{extra}\n"
    )
}

pub fn payload(publisher: &str, seq: usize) -> Vec<u8> {
    format!("{publisher}:{seq}").into_bytes()
}

pub fn parse(payload: &[u8]) -> (String, usize) {
    let text = std::str::from_utf8(payload).expect("UTF-8 payload");
    let (publisher, seq) = text.rsplit_once(':').expect("publisher:seq");
    (publisher.to_string(), seq.parse().expect("sequence number"))
}

/// What a subscriber saw of one publisher's stream.
#[derive(Debug, Default)]
pub struct Report {
    pub missing: Vec<usize>,
    pub duplicates: usize,
    /// New sequence numbers that arrived after a larger one had (excluding re-sends).
    pub reordered: Vec<usize>,
}

/// Compares the sequence numbers received (in arrival order) with those `expected`.
pub fn check_stream(received: &[usize], expected: &BTreeSet<usize>) -> Report {
    let mut seen = BTreeSet::new();
    let mut report = Report::default();
    let mut highest: Option<usize> = None;
    for &seq in received {
        if !seen.insert(seq) {
            report.duplicates += 1;
            continue;
        }
        if highest.is_some_and(|h| seq < h) {
            report.reordered.push(seq);
        }
        highest = highest.max(Some(seq));
    }
    report.missing = expected.difference(&seen).copied().collect();
    report
}

/// Receives publishes of `publisher` until every one of `expected` arrived (or `ARRIVE`
/// passed), then a short quiet period for late duplicates; returns the sequence numbers.
pub async fn collect(sub: &mut Mqtt, publisher: &str, expected: &BTreeSet<usize>) -> Vec<usize> {
    let deadline = Instant::now() + ARRIVE;
    let mut got = Vec::new();
    let mut distinct = BTreeSet::new();
    while !expected.is_subset(&distinct) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(p) = sub.recv_timeout(left).await else { break };
        let (from, seq) = parse(&p.payload);
        if from == publisher {
            got.push(seq);
            distinct.insert(seq);
        }
    }
    while let Some(p) = sub.recv_timeout(QUIET).await {
        let (from, seq) = parse(&p.payload);
        if from == publisher {
            got.push(seq);
        }
    }
    got
}

/// Subscribes to the bridge's state topic on `broker`.
pub async fn state_watcher(broker: &Broker) -> Mqtt {
    let mut w = Mqtt::connect(opts(broker, "state-watch")).await;
    w.subscribe(STATE_TOPIC, 1).await;
    w
}

/// Waits for the state topic to say `want` ("1" or "0"); the retained value counts.
pub async fn wait_state(w: &mut Mqtt, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match w.recv_timeout(left).await {
            Some(p) if p.topic == STATE_TOPIC && p.payload.as_ref() == want.as_bytes() => return,
            Some(_) => {}
            None => panic!("state topic did not become {want} within {within:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// A scripted upstream: the test plays the server's half packet by packet
// ---------------------------------------------------------------------------------------

/// Accepts the bridge's next connection, reads its CONNECT (3.1.1, clean session 0) and
/// answers CONNACK with `session_present`.
pub async fn accept_bridge(listener: &TcpListener, session_present: bool) -> Raw {
    let (stream, peer) =
        tokio::time::timeout(WAIT, listener.accept()).await.expect("bridge connects").unwrap();
    let mut raw = Raw::over(stream, peer);
    let connect = raw.recv().await;
    assert_eq!(connect.header, 0x10, "CONNECT first [MQTT-3.1.0-1]: {connect:?}");
    // Protocol name (6 bytes), level 4 (with Mosquitto's bridge bit 0x80: `try_private`, on by
    // default), flags: clean session 0 keeps the upstream session.
    assert_eq!(
        (connect.body[6], connect.body[7] & 0x02),
        (0x84, 0),
        "3.1.1 bridge, clean session 0: {connect:?}"
    );
    raw.send(&[0x20, 0x02, u8::from(session_present), 0x00]).await;
    raw
}

/// Edge config for a bridge to the scripted upstream at `addr` (long keep-alive: no PINGREQ
/// interleaves with the scripted packets).
pub fn scripted_config(addr: SocketAddr, topics: &str) -> String {
    format!(
        "[[bridge]]\nname = \"cloud\"\naddresses = [\"{addr}\"]\nkeep_alive_secs = 60\n\
         reconnect_delay_min_ms = 50\nreconnect_delay_max_ms = 200\ntopics = [{topics}]\n"
    )
}

// ---------------------------------------------------------------------------------------
// Mosquitto as the upstream
// ---------------------------------------------------------------------------------------

/// A Mosquitto process on a free loopback port (no persistence), killed on drop.
pub struct Mosquitto {
    child: std::process::Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub async fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n"))
            .unwrap();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package `mosquitto`) runs");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {addr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Mosquitto { child, addr, _dir: dir }
    }

    pub fn opts(&self, client_id: &str) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", self.addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
