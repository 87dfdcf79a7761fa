//! Area 20: store-and-forward bridges. An edge `tern` bridges to a real upstream (a second
//! `tern` process) through a TCP proxy owned by the test, which can pass traffic, reset every
//! connection (and refuse new ones), or hold traffic (a black hole: nothing forwarded, no FIN).
//!
//! Every payload is "<publisher>:<sequence>"; `check_stream` reports missing, duplicated and
//! reordered ones. Counts are modest and every wait is bounded, so each test takes seconds.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use client_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Bound for a whole stream to arrive upstream.
const ARRIVE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The proxy between the edge and the upstream
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Bytes flow both ways.
    Pass,
    /// Every connection is reset (RST); new ones are reset at once.
    Reset,
    /// Connections stay open but nothing is forwarded (a silently dead link).
    Hold,
}

struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Connections accepted while passing (the bridge's connection attempts that got through).
    linked: Arc<AtomicUsize>,
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
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
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

    fn set(&self, mode: Mode) {
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
            Mode::Pass => {}
        }
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { break },
            r = cr.read(&mut cbuf) => match r {
                Ok(n) if n > 0 => if sw.write_all(&cbuf[..n]).await.is_err() { break },
                _ => break,
            },
            r = sr.read(&mut sbuf) => match r {
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

const STATE_TOPIC: &str = "$SYS/broker/connection/cloud/state";

/// An edge config with one bridge named "cloud" to `proxy`; `extra` adds keys to the table.
fn edge_config(proxy: SocketAddr, extra: &str) -> String {
    format!(
        "[[bridge]]\nname = \"cloud\"\naddresses = [\"{proxy}\"]\nkeep_alive_secs = 2\n\
         reconnect_delay_min_ms = 50\nreconnect_delay_max_ms = 400\nconnect_timeout_secs = 2\n{extra}\n"
    )
}

fn payload(publisher: &str, seq: usize) -> Vec<u8> {
    format!("{publisher}:{seq}").into_bytes()
}

fn parse(payload: &[u8]) -> (String, usize) {
    let text = std::str::from_utf8(payload).expect("UTF-8 payload");
    let (publisher, seq) = text.rsplit_once(':').expect("publisher:seq");
    (publisher.to_string(), seq.parse().expect("sequence number"))
}

/// What a subscriber saw of one publisher's stream.
#[derive(Debug, Default)]
struct Report {
    missing: Vec<usize>,
    duplicates: usize,
    /// New sequence numbers that arrived after a larger one had (excluding re-sends).
    reordered: Vec<usize>,
}

/// Compares the sequence numbers received (in arrival order) with those `expected`.
fn check_stream(received: &[usize], expected: &BTreeSet<usize>) -> Report {
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
async fn collect(sub: &mut Mqtt, publisher: &str, expected: &BTreeSet<usize>) -> Vec<usize> {
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
async fn state_watcher(broker: &Broker) -> Mqtt {
    let mut w = Mqtt::connect(opts(broker, "state-watch")).await;
    w.subscribe(STATE_TOPIC, 1).await;
    w
}

/// Waits for the state topic to say `want` ("1" or "0"); the retained value counts.
async fn wait_state(w: &mut Mqtt, want: &str, within: Duration) {
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
// Tests
// ---------------------------------------------------------------------------------------

// (a) Link cut. 300 QoS 1 messages at a steady rate; after 100 the proxy resets the link and
// refuses reconnects for 1 s, then passes again. The edge acknowledges throughout (the
// messages are queued durably), and the bridge resends its unacknowledged window with DUP=1
// after reconnecting [MQTT-4.4.0-1] [MQTT-3.3.1-1]: all arrive upstream, new ones in order,
// duplicates at most the in-flight window (10). The state topic goes 1 -> 0 -> 1.
#[tokio::test]
async fn link_cut_loses_nothing_and_keeps_order() {
    const N: usize = 300;
    const WINDOW: usize = 10;
    let upstream = Broker::start();
    let proxy = Proxy::start(upstream.addr()).await;
    let mut sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    sub.subscribe("t/#", 1).await;
    let edge = Broker::start_with(&edge_config(
        proxy.addr,
        &format!("max_inflight = {WINDOW}\ntopics = [{{ pattern = \"t/#\", direction = \"out\", qos = 1 }}]"),
    ));
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "1", WAIT).await;

    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for seq in 0..N {
        tick.tick().await;
        if seq == 100 {
            proxy.set(Mode::Reset);
            wait_state(&mut state, "0", WAIT).await;
        }
        if seq == 200 {
            proxy.set(Mode::Pass);
        }
        // Acknowledged by the edge whether or not the link is up.
        publisher.publish_wait("t/a", 1, false, payload("edge-pub", seq)).await;
    }
    wait_state(&mut state, "1", WAIT).await;
    let expected: BTreeSet<usize> = (0..N).collect();
    let got = collect(&mut sub, "edge-pub", &expected).await;
    let report = check_stream(&got, &expected);
    eprintln!("link cut: {} received, {} duplicates", got.len(), report.duplicates);
    assert!(report.missing.is_empty(), "missing upstream: {:?}", report.missing);
    assert!(report.reordered.is_empty(), "reordered: {:?}", report.reordered);
    assert!(report.duplicates <= WINDOW, "{} duplicates > window {WINDOW}", report.duplicates);
    assert!(proxy.linked.load(Ordering::SeqCst) >= 2, "the bridge reconnected");
    assert!(edge.logs().contains("bridge disconnected"), "a log line per state change");
}

// (b) kill -9 of the edge mid-stream, then a restart on the same data: every message the edge
// PUBACK'd to the local publisher arrives upstream. The queue record is stored in the same
// commit as the publish, before the PUBACK (docs/decisions/0002-storage.md); the link is held
// (black hole) while 50 of them are published, so they are in the queue or in flight,
// unacknowledged upstream, when the edge dies. The restarted bridge resends the in-flight
// ones with DUP=1 and the same packet ids [MQTT-4.4.0-1], then the queue.
#[tokio::test]
async fn kill9_of_the_edge_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Broker::start();
    let proxy = Proxy::start(upstream.addr()).await;
    let mut sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    sub.subscribe("k/#", 1).await;
    let config = edge_config(
        proxy.addr,
        "protocol = \"5.0\"\ntopics = [{ pattern = \"k/#\", direction = \"out\", qos = 1 }]",
    );
    let mut edge = Broker::launch(Launch::config(&config).data_dir(dir.path()));
    assert!(edge.wait_log("bridge connected", WAIT).await, "bridge linked");

    // Publisher: QoS 1, one at a time, packet id = seq + 1; counts the PUBACKs it got.
    let acked = Arc::new(AtomicUsize::new(0));
    let count = acked.clone();
    let addr = edge.addr();
    let publishing = tokio::spawn(async move {
        let mut p = Raw::connected(addr, "edge-pub", true).await;
        for seq in 0..400usize {
            p.send_lenient(&pkt::publish("k/a", 1, false, false, seq as u16 + 1, &payload("edge-pub", seq)))
                .await;
            match p.read(WAIT).await {
                ReadOutcome::Packet(ack) if ack.bytes() == pkt::puback(seq as u16 + 1) => {
                    count.store(seq + 1, Ordering::SeqCst);
                }
                _ => return,
            }
        }
    });
    let wait_acked = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + ARRIVE;
            while acked.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "publisher stuck at {}", acked.load(Ordering::SeqCst));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    wait_acked(100).await;
    proxy.set(Mode::Hold);
    wait_acked(150).await;
    edge.kill9().await;
    let _ = publishing.await;
    let acked_before = acked.load(Ordering::SeqCst);
    proxy.set(Mode::Pass);

    let edge = Broker::launch(Launch::config(&config).data_dir(dir.path()));
    assert!(edge.wait_log("bridge connected", WAIT).await, "bridge linked after the restart");
    // A second stretch after the restart, so the queue is followed by live traffic.
    let mut p = Raw::connected(edge.addr(), "edge-pub2", true).await;
    for seq in 0..50usize {
        p.publish_flow("k/b", 1, false, seq as u16 + 1, &payload("edge-pub2", seq)).await;
    }

    let expected: BTreeSet<usize> = (0..acked_before).collect();
    let mut first = Vec::new();
    let mut second = Vec::new();
    let deadline = Instant::now() + ARRIVE;
    loop {
        let have: BTreeSet<usize> = first.iter().copied().collect();
        if expected.is_subset(&have) && second.len() >= 50 {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = sub.recv_timeout(left).await else { break };
        match parse(&m.payload) {
            (from, seq) if from == "edge-pub" => first.push(seq),
            (_, seq) => second.push(seq),
        }
    }
    let report = check_stream(&first, &expected);
    eprintln!(
        "kill -9: {acked_before} acknowledged before the kill, {} received upstream, {} duplicates",
        first.len(),
        report.duplicates
    );
    assert!(report.missing.is_empty(), "acknowledged but never forwarded: {:?}", report.missing);
    assert!(report.reordered.is_empty(), "reordered: {:?}", report.reordered);
    // What the held link had buffered reaches the upstream after all, and the restarted bridge
    // sends it again: at most the in-flight window (20, the default) twice.
    assert!(report.duplicates <= 20, "{} duplicates", report.duplicates);
    let report = check_stream(&second, &(0..50).collect());
    assert!(report.missing.is_empty() && report.reordered.is_empty(), "after the restart: {report:?}");
}

// (c) Inbound: the bridge subscribes upstream to `cmd/#` at QoS 2 (MQTT 5, No Local); an
// upstream QoS 1 and QoS 2 PUBLISH each reach a local subscriber exactly once, with their QoS
// kept (min of publish and subscription QoS [MQTT-3.8.4-6]). The upstream's PUBACK/PUBREC from
// the bridge come after the local publish is stored, and a local publish to an inbound topic
// is not sent upstream (no `out` entry).
#[tokio::test]
async fn inbound_qos1_and_qos2_reach_a_local_subscriber_once() {
    let upstream = Broker::start();
    let proxy = Proxy::start(upstream.addr()).await;
    let edge = Broker::start_with(&edge_config(
        proxy.addr,
        "protocol = \"5.0\"\ntopics = [{ pattern = \"cmd/#\", direction = \"in\", qos = 2, remote_prefix = \"site1/\" }]",
    ));
    assert!(edge.wait_log("subscribed upstream", WAIT).await, "bridge subscribed upstream");
    let mut local = Mqtt::connect(opts(&edge, "local-sub")).await;
    local.subscribe("cmd/#", 2).await;
    let mut up_sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    up_sub.subscribe("#", 2).await;

    let mut up_pub = Mqtt::connect(opts(&upstream, "up-pub")).await;
    up_pub.publish_wait("site1/cmd/one", 1, false, payload("up-pub", 1)).await;
    up_pub.publish_wait("site1/cmd/two", 2, false, payload("up-pub", 2)).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = local.recv().await;
        got.push((m.topic.clone(), qos_num(m.qos), parse(&m.payload).1));
    }
    got.sort();
    assert_eq!(got, vec![("cmd/one".into(), 1, 1), ("cmd/two".into(), 2, 2)]);
    local.expect_silence().await;

    // Upstream saw the two publishes once each, and nothing came back from the edge.
    let mut seen = Vec::new();
    while let Some(m) = up_sub.recv_timeout(QUIET).await {
        seen.push(m.topic.clone());
    }
    seen.sort();
    assert_eq!(seen, vec!["site1/cmd/one".to_string(), "site1/cmd/two".to_string()]);
    let mut local_pub = Mqtt::connect(opts(&edge, "local-pub")).await;
    local_pub.publish_wait("cmd/three", 1, false, payload("local", 3)).await;
    assert!(up_sub.recv_timeout(QUIET).await.is_none(), "an inbound-only topic is not forwarded");
}

// Liveness: with the link held (no FIN, no RST, nothing forwarded) the bridge notices within
// 1.5 × keep-alive (2 s here: 3 s, plus the state publish) and says so on the state topic.
#[tokio::test]
async fn a_black_holed_link_is_noticed_within_one_and_a_half_keep_alives() {
    let upstream = Broker::start();
    let proxy = Proxy::start(upstream.addr()).await;
    let edge = Broker::start_with(&edge_config(
        proxy.addr,
        "topics = [{ pattern = \"t/#\", direction = \"out\", qos = 1 }]",
    ));
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "1", WAIT).await;
    let held = Instant::now();
    proxy.set(Mode::Hold);
    wait_state(&mut state, "0", Duration::from_secs(5)).await;
    let noticed = held.elapsed();
    assert!(noticed <= Duration::from_millis(3500), "noticed after {noticed:?} (1.5 × 2 s = 3 s)");
    assert!(edge.logs().contains("keep-alive"), "the reason is logged");
    proxy.set(Mode::Pass);
    wait_state(&mut state, "1", WAIT).await;
}

// Clients cannot take a bridge's session over: its client id is refused (3.1.1 CONNACK 0x02).
#[tokio::test]
async fn a_client_cannot_use_a_bridge_session_id() {
    let upstream = Broker::start();
    let edge = Broker::start_with(&edge_config(
        upstream.addr(),
        "topics = [{ pattern = \"t/#\", direction = \"out\", qos = 1 }]",
    ));
    let mut raw = Raw::connect(edge.addr()).await;
    raw.send(&pkt::Connect::new("$bridge/cloud").encode()).await;
    let connack = raw.recv().await;
    assert_eq!(connack.bytes(), vec![0x20, 0x02, 0x00, 0x02], "identifier rejected");
}
