//! Bridge test kit: a TCP proxy the test owns between an edge `tern` and its upstream (pass,
//! reset, black-hole, hold replies, swallow PUBCOMP; it logs every packet it passes), a scripted
//! upstream, Mosquitto and Aedes upstreams, a paced pipelined publisher that counts what was
//! acknowledged, a recording upstream subscriber, and a checker of "<publisher>:<sequence>"
//! streams that reports missing, duplicated and reordered messages. Shared by the bridge tests
//! (t20 and later) so each scenario file stays about its scenario.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
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
    /// Packets flow both ways except the upstream's PUBCOMPs, which are dropped: QoS 2 flows
    /// stay between PUBREC and PUBCOMP on the bridge's side.
    SwallowPubcomp,
}

/// One packet the proxy passed (or swallowed). Bodies are cut at [`SEEN_BODY_MAX`] bytes.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Index of the proxied connection, in accept order (0 = first).
    pub conn: usize,
    /// Written by the bridge towards the upstream (else a reply from the upstream).
    pub outbound: bool,
    pub swallowed: bool,
    pub packet: RawPacket,
}

pub const SEEN_BODY_MAX: usize = 256;

pub struct Proxy {
    pub addr: SocketAddr,
    pub mode: watch::Sender<Mode>,
    /// Connections accepted while passing (the bridge's connection attempts that got through).
    pub linked: Arc<AtomicUsize>,
    /// Every packet passed, in order per direction.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    upstream: Arc<Mutex<SocketAddr>>,
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
        let seen = Arc::new(Mutex::new(Vec::new()));
        let upstream = Arc::new(Mutex::new(upstream));
        let (count, log, target) = (linked.clone(), seen.clone(), upstream.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if matches!(*watch_mode.borrow(), Mode::Reset | Mode::Hold) {
                    reset(client);
                    continue;
                }
                let conn = count.fetch_add(1, Ordering::SeqCst);
                let to = *target.lock().unwrap();
                tokio::spawn(pipe(client, conn, to, watch_mode.clone(), log.clone()));
            }
        });
        Proxy { addr, mode, linked, seen, upstream, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// New connections go to `upstream` (e.g. the same upstream restarted on another port).
    pub fn retarget(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    /// The packets seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Moves the complete packets in `buf` to the returned bytes (leaving a partial one), logging
/// each; in [`Mode::SwallowPubcomp`] the upstream's PUBCOMPs are logged and dropped.
fn forward(buf: &mut BytesMut, conn: usize, outbound: bool, mode: Mode, log: &Mutex<Vec<Seen>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len());
    let mut log = log.lock().unwrap();
    while let Some(mut packet) = take_frame(buf) {
        let swallowed = !outbound && mode == Mode::SwallowPubcomp && packet.kind() == 7;
        if !swallowed {
            out.extend(packet.bytes());
        }
        packet.body.truncate(SEEN_BODY_MAX);
        log.push(Seen { conn, outbound, swallowed, packet });
    }
    out
}

async fn pipe(
    client: TcpStream,
    conn: usize,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        reset(client);
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (mut cbuf, mut sbuf) = (BytesMut::new(), BytesMut::new());
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
            Mode::Pass | Mode::HoldReplies | Mode::SwallowPubcomp => {}
        }
        let replies = current != Mode::HoldReplies;
        cbuf.reserve(16 * 1024);
        sbuf.reserve(16 * 1024);
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { break },
            r = cr.read_buf(&mut cbuf) => match r {
                Ok(n) if n > 0 => {
                    let out = forward(&mut cbuf, conn, true, current, &log);
                    if sw.write_all(&out).await.is_err() { break }
                }
                _ => break,
            },
            r = sr.read_buf(&mut sbuf), if replies => match r {
                Ok(n) if n > 0 => {
                    let out = forward(&mut sbuf, conn, false, current, &log);
                    if cw.write_all(&out).await.is_err() { break }
                }
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

/// "<publisher>:<seq>", then a space and padding up to `size` bytes.
pub fn padded_payload(publisher: &str, seq: usize, size: usize) -> Vec<u8> {
    let mut p = payload(publisher, seq);
    if p.len() < size {
        p.push(b' ');
        p.resize(size, b'.');
    }
    p
}

/// (publisher, sequence number) of a [`payload`] or [`padded_payload`].
pub fn parse(payload: &[u8]) -> (String, usize) {
    let text = std::str::from_utf8(payload).expect("UTF-8 payload");
    let text = text.split(' ').next().unwrap_or_default();
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

/// A broker of another implementation on a free loopback port, killed on drop: Mosquitto
/// (Debian package) or Aedes (Node.js, npm), both without persistence.
pub struct OtherBroker {
    child: std::process::Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Aedes 1 with its in-memory persistence (a persistent session's subscriptions, queue and
/// QoS 2 state live while it runs), plain MQTT on 127.0.0.1:argv[2].
const AEDES_SCRIPT: &str = r#"
const { Aedes } = require('aedes');
const net = require('net');
Aedes.createBroker().then((aedes) => {
  net.createServer(aedes.handle).listen(Number(process.argv[2]), '127.0.0.1');
});
"#;

impl OtherBroker {
    /// Mosquitto 2.0 with a large queue: a subscriber that falls behind a bridge's burst loses
    /// nothing to Mosquitto's default 1000-message queue, so what a test counts is the bridge's
    /// doing. (Not 0, "unlimited": that stalled Mosquitto 2.0.11's QoS 2 bridge, see
    /// BENCHMARKS.md.)
    pub async fn mosquitto() -> OtherBroker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\nmax_queued_messages 1000000\n"
            ),
        )
        .unwrap();
        let mut command = std::process::Command::new("mosquitto");
        command.arg("-c").arg(&conf);
        Self::spawn(command, "mosquitto (Debian package `mosquitto`)", port, dir).await
    }

    /// Aedes (npm), from the `node_modules` that [`crate::npm::install`] returned.
    pub async fn aedes(node_modules: &Path) -> OtherBroker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let script = dir.path().join("aedes.js");
        std::fs::write(&script, AEDES_SCRIPT).unwrap();
        let mut command = std::process::Command::new("node");
        command.arg(&script).arg(port.to_string()).env("NODE_PATH", node_modules);
        Self::spawn(command, "node with aedes", port, dir).await
    }

    async fn spawn(
        mut command: std::process::Command,
        what: &str,
        port: u16,
        dir: tempfile::TempDir,
    ) -> OtherBroker {
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} runs: {e}"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        OtherBroker { child, addr, _dir: dir }
    }

    pub fn opts(&self, client_id: &str) -> rumqttc::MqttOptions {
        opts_at(self.addr, client_id)
    }
}

impl Drop for OtherBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// A paced, pipelined local publisher that knows what was acknowledged
// ---------------------------------------------------------------------------------------

/// One publisher's stream: [`padded_payload`]s "<client_id>:<seq>" to `topic`.
#[derive(Clone, Debug)]
pub struct Stream {
    pub client_id: String,
    pub topic: String,
    pub qos: u8,
    /// MQTT 5.0 (else 3.1.1).
    pub v5: bool,
    /// Messages per second; 0 = as fast as the window allows.
    pub rate: f64,
    /// Unacknowledged messages at most.
    pub window: usize,
    /// Payload size in bytes (at least the "<client_id>:<seq>" text).
    pub size: usize,
}

/// Sequence numbers whose flow completed: PUBACK, or PUBCOMP at QoS 2. An MQTT 5 reason code
/// of 0x80 or above is a refusal, not an acknowledgement.
pub type Acked = Arc<Mutex<BTreeSet<usize>>>;

impl Stream {
    pub fn new(client_id: &str, topic: &str, qos: u8) -> Stream {
        Stream {
            client_id: client_id.into(),
            topic: topic.into(),
            qos,
            v5: false,
            rate: 0.0,
            window: 32,
            size: 0,
        }
    }
    pub fn v5(mut self, v5: bool) -> Stream {
        self.v5 = v5;
        self
    }
    pub fn rate(mut self, per_second: f64) -> Stream {
        self.rate = per_second;
        self
    }
    pub fn window(mut self, window: usize) -> Stream {
        self.window = window.clamp(1, 65_535);
        self
    }
    pub fn size(mut self, bytes: usize) -> Stream {
        self.size = bytes;
        self
    }

    fn publish(&self, seq: usize) -> Vec<u8> {
        let pid = packet_id(seq);
        let body = padded_payload(&self.client_id, seq, self.size);
        if self.v5 {
            crate::v5::publish(&self.topic, self.qos, false, pid, &crate::v5::Props::new(), &body)
        } else {
            pkt::publish(&self.topic, self.qos, false, false, pid, &body)
        }
    }

    /// Publishes `seqs` to the broker at `addr` with a clean session, paced from now; records
    /// each completed flow in `acked`. Returns `seqs.end` once all are acknowledged, or the
    /// first sequence number not yet sent when the connection ends (the broker was killed):
    /// sent but unacknowledged ones are not sent again.
    pub async fn run(&self, addr: SocketAddr, seqs: Range<usize>, acked: &Acked) -> usize {
        let Ok(mut socket) = TcpStream::connect(addr).await else { return seqs.start };
        let _ = socket.set_nodelay(true);
        let connect = if self.v5 {
            crate::v5::Connect::new(&self.client_id).encode()
        } else {
            pkt::Connect::new(&self.client_id).encode()
        };
        let mut buf = BytesMut::new();
        if socket.write_all(&connect).await.is_err() {
            return seqs.start;
        }
        loop {
            match tokio::time::timeout(WAIT, socket.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return seqs.start,
            }
            if let Some(connack) = take_frame(&mut buf) {
                assert_eq!((connack.kind(), connack.body.get(1)), (2, Some(&0)), "CONNACK accepted");
                break;
            }
        }
        let (mut rd, mut wr) = socket.into_split();
        let start = Instant::now();
        let mut next = seqs.start;
        let mut in_flight: HashMap<u16, usize> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        loop {
            if next == seqs.end && in_flight.is_empty() {
                return next;
            }
            let mut out = Vec::new();
            tokio::select! {
                _ = tick.tick(), if next < seqs.end && in_flight.len() < self.window => {
                    let due = if self.rate > 0.0 {
                        seqs.start + (start.elapsed().as_secs_f64() * self.rate) as usize
                    } else {
                        seqs.end
                    };
                    while next < due.min(seqs.end) && in_flight.len() < self.window {
                        out.extend(self.publish(next));
                        in_flight.insert(packet_id(next), next);
                        next += 1;
                    }
                }
                r = rd.read_buf(&mut buf) => {
                    if !matches!(r, Ok(n) if n > 0) {
                        return next;
                    }
                    while let Some(p) = take_frame(&mut buf) {
                        let refused = self.v5 && p.body.get(2).is_some_and(|&reason| reason >= 0x80);
                        match p.kind() {
                            4 | 7 => {
                                if let Some(seq) = in_flight.remove(&p.pid()) {
                                    if !refused {
                                        acked.lock().unwrap().insert(seq);
                                    }
                                }
                            }
                            5 if refused => {
                                in_flight.remove(&p.pid());
                            }
                            5 => out.extend(pkt::pubrel(p.pid())),
                            _ => {}
                        }
                    }
                }
            }
            if !out.is_empty() && wr.write_all(&out).await.is_err() {
                return next;
            }
        }
    }
}

/// Packet id of a stream's message `seq` (distinct within any window below 65,535).
fn packet_id(seq: usize) -> u16 {
    (seq % 65_535) as u16 + 1
}

/// Waits until `acked` holds at least `n` sequence numbers.
pub async fn wait_acked(acked: &Acked, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while acked.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "publishers stuck at {} acknowledged",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------
// A recording subscriber
// ---------------------------------------------------------------------------------------

/// One delivery: sequence number, and whether it came with DUP=1 (a re-delivery).
pub type Delivery = (usize, bool);

/// A subscriber (on the upstream or the edge) that records every payload, per publisher, in
/// arrival order, until it is dropped or its connection ends.
pub struct Collector {
    got: Arc<Mutex<HashMap<String, Vec<Delivery>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    pub async fn start(o: rumqttc::MqttOptions, filter: &str, qos: u8) -> Collector {
        let mut sub = Mqtt::connect(o).await;
        sub.subscribe(filter, qos).await;
        Collector::record(sub)
    }

    /// Records what `sub` (already subscribed) receives from now on.
    pub fn record(mut sub: Mqtt) -> Collector {
        let got: Arc<Mutex<HashMap<String, Vec<Delivery>>>> = Arc::default();
        let record = got.clone();
        let task = tokio::spawn(async move {
            while let Some(p) = sub.recv_timeout(Duration::from_secs(3600)).await {
                let (from, seq) = parse(&p.payload);
                record.lock().unwrap().entry(from).or_default().push((seq, p.dup));
            }
        });
        Collector { got, task }
    }

    /// A persistent 3.1.1 session on a raw socket that answers every QoS flow as the protocol
    /// says, subscribing to `filter` at QoS 2 unless the session was present; returns whether it
    /// was. For sessions resumed after a broker crash: rumqttc 0.25 closes its connection on a
    /// PUBREL re-sent at resume for a flow a fresh instance never saw (rumqttc #664), which a
    /// crash between PUBREC and PUBCOMP produces.
    pub async fn raw_persistent(addr: SocketAddr, client_id: &str, filter: &str) -> (Collector, bool) {
        let (mut raw, present) = Raw::handshake(addr, &pkt::Connect::new(client_id).clean(false)).await;
        if !present {
            raw.subscribe(1, &[(filter, 2)]).await;
        }
        let got: Arc<Mutex<HashMap<String, Vec<Delivery>>>> = Arc::default();
        let record = got.clone();
        let task = tokio::spawn(async move {
            while let ReadOutcome::Packet(p) = raw.read(Duration::from_secs(3600)).await {
                match p.kind() {
                    3 => {
                        let publish = p.publish();
                        let (from, seq) = parse(&publish.payload);
                        record.lock().unwrap().entry(from).or_default().push((seq, publish.dup));
                        match (publish.qos, publish.pid) {
                            (1, Some(pid)) => raw.send_lenient(&pkt::puback(pid)).await,
                            (2, Some(pid)) => raw.send_lenient(&pkt::pubrec(pid)).await,
                            _ => {}
                        }
                    }
                    6 => raw.send_lenient(&pkt::pubcomp(p.pid())).await,
                    _ => {}
                }
            }
        });
        (Collector { got, task }, present)
    }

    pub fn deliveries(&self, publisher: &str) -> Vec<Delivery> {
        self.got.lock().unwrap().get(publisher).cloned().unwrap_or_default()
    }

    /// Sequence numbers from `publisher`, in arrival order.
    pub fn received(&self, publisher: &str) -> Vec<usize> {
        self.deliveries(publisher).into_iter().map(|(seq, _)| seq).collect()
    }

    pub fn distinct(&self, publisher: &str) -> BTreeSet<usize> {
        self.deliveries(publisher).into_iter().map(|(seq, _)| seq).collect()
    }

    pub fn total(&self) -> usize {
        self.got.lock().unwrap().values().map(Vec::len).sum()
    }
}

/// Waits until the collectors together received every one of `expected` from `publisher`
/// (or `within` passed), then [`QUIET`] for late duplicates.
pub async fn wait_all(
    collectors: &[&Collector],
    publisher: &str,
    expected: &BTreeSet<usize>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let union: BTreeSet<usize> = collectors.iter().flat_map(|c| c.distinct(publisher)).collect();
        if expected.is_subset(&union) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(QUIET).await;
}

// ---------------------------------------------------------------------------------------
// Resources of a process
// ---------------------------------------------------------------------------------------

/// Resident set size of process `pid` in bytes (VmRSS in /proc/<pid>/status).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

/// Bytes of the files under `dir` (as `du --apparent-size -s` counts them).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
