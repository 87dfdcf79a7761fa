//! Area 20: store-and-forward bridges. An edge `tern` bridges to a real upstream (a second
//! `tern` process) through a TCP proxy owned by the test, which can pass traffic, reset every
//! connection (and refuse new ones), or hold traffic (a black hole: nothing forwarded, no FIN).
//!
//! Every payload is "<publisher>:<sequence>"; `check_stream` reports missing, duplicated and
//! reordered ones (the kit is `client_tests::bridge`). Counts are modest and every wait is
//! bounded, so each test takes seconds.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use client_tests::bridge::*;
use client_tests::*;
use tokio::net::TcpListener;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

// (a) Link cut. 300 QoS 1 messages at a steady rate. From the 100th the upstream's replies are
// held (it gets PUBLISHes whose PUBACKs never come back, so the window fills), from the 150th
// the proxy resets the link and refuses reconnects, from the 200th it passes again. The edge
// acknowledges throughout (the messages are queued durably), and the bridge resends its
// unacknowledged window with DUP=1 after reconnecting [MQTT-4.4.0-1] [MQTT-3.3.1-1]: all
// arrive upstream, new ones in order, duplicates at most the in-flight window (10). The state
// topic goes 1 -> 0 -> 1.
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
            proxy.set(Mode::HoldReplies);
        }
        if seq == 150 {
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
    assert!(report.duplicates > 0, "the held window was re-sent and had reached the upstream");
    assert!(proxy.linked.load(Ordering::SeqCst) >= 2, "the bridge reconnected");
    assert!(edge.wait_log("bridge disconnected", WAIT).await, "a log line per state change");
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
    // sends it again: at most the in-flight window (100, the default).
    assert!(report.duplicates <= 100, "{} duplicates", report.duplicates);
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
    assert!(edge.wait_log("nothing received for 1.5 × keep-alive", WAIT).await, "the reason is logged");
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

// Outbound QoS 2 across a crash [MQTT-4.3.3-1] [MQTT-4.4.0-1]: message A is PUBREC'd by the
// upstream (the bridge stores AwaitingPubComp with its packet id, then sends PUBREL) and its
// PUBCOMP never comes; message B is sent and never acknowledged. The edge is killed and
// restarted on the same data: on the resumed upstream session it sends PUBREL for A with the
// same packet id, never A's PUBLISH again, then B's PUBLISH with DUP=1 and B's packet id.
#[tokio::test]
async fn qos2_resumes_with_pubrel_and_the_same_packet_ids_after_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = scripted_config(
        upstream.local_addr().unwrap(),
        "{ pattern = \"q/#\", direction = \"out\", qos = 2 }",
    );
    let mut edge = Broker::launch(Launch::config(&config).data_dir(dir.path()));
    let mut up = accept_bridge(&upstream, false).await;

    let mut p = Raw::connected(edge.addr(), "edge-pub", true).await;
    p.publish_flow("q/a", 2, false, 1, b"pub:0").await;
    let a = up.recv_publish().await;
    assert_eq!((a.topic.as_str(), a.qos, a.dup, a.payload.as_slice()), ("q/a", 2, false, &b"pub:0"[..]));
    let a_id = a.pid.unwrap();
    up.send(&pkt::pubrec(a_id)).await;
    assert_eq!(up.recv().await.bytes(), pkt::pubrel(a_id), "PUBREL after PUBREC [MQTT-4.3.3-1]");
    p.publish_flow("q/b", 2, false, 2, b"pub:1").await;
    let b = up.recv_publish().await;
    assert_eq!((b.payload.as_slice(), b.dup), (&b"pub:1"[..], false));
    let b_id = b.pid.unwrap();
    assert_ne!(a_id, b_id, "A's id is still in use [MQTT-2.3.1-2]");
    edge.kill9().await;
    drop(up);

    let _edge = Broker::launch(Launch::config(&config).data_dir(dir.path()));
    let mut up = accept_bridge(&upstream, true).await;
    assert_eq!(
        up.recv().await.bytes(),
        pkt::pubrel(a_id),
        "PUBREL again with A's packet id, not A's PUBLISH"
    );
    let again = up.recv_publish().await;
    assert_eq!(
        (again.pid, again.dup, again.payload.as_slice()),
        (Some(b_id), true, &b"pub:1"[..]),
        "B again, DUP=1 [MQTT-3.3.1-1]"
    );
    up.send(&pkt::pubcomp(a_id)).await;
    up.send(&pkt::pubrec(b_id)).await;
    assert_eq!(up.recv().await.bytes(), pkt::pubrel(b_id));
    up.send(&pkt::pubcomp(b_id)).await;
    up.expect_nothing(QUIET).await;
}

// Inbound QoS 2 across a crash [MQTT-4.3.3-2] [MQTT-4.3.3-9]: the upstream sends a QoS 2
// PUBLISH; the bridge routes it to a local persistent session, stores the packet id and only
// then answers PUBREC. The edge is killed before PUBREL; the upstream, as if the PUBREC was
// lost, sends the PUBLISH again (DUP=1, same id) after the restart: PUBREC, not a second
// delivery. After PUBREL/PUBCOMP the same id carries a new message. The local subscriber gets
// each message exactly once.
#[tokio::test]
async fn inbound_qos2_is_delivered_once_across_a_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = scripted_config(
        upstream.local_addr().unwrap(),
        "{ pattern = \"cmd/#\", direction = \"in\", qos = 2 }",
    );
    let mut edge = Broker::launch(Launch::config(&config).data_dir(dir.path()));
    let mut up = accept_bridge(&upstream, false).await;
    let subscribe = up.recv().await;
    assert_eq!(subscribe.header, 0x82, "SUBSCRIBE: {subscribe:?}");
    let sub_id = subscribe.pid();
    assert_eq!(&subscribe.body[2..], b"\x00\x05cmd/#\x02", "cmd/# at QoS 2");
    up.send(&[0x90, 0x03, (sub_id >> 8) as u8, sub_id as u8, 0x02]).await;
    // A local persistent session, offline while the messages come.
    let local = pkt::Connect::new("local-sub").clean(false);
    let (mut s, _) = Raw::handshake(edge.addr(), &local).await;
    assert_eq!(s.subscribe(1, &[("cmd/#", 2)]).await, vec![2]);
    s.disconnect().await;

    up.send(&pkt::publish("cmd/x", 2, false, false, 5, b"up:1")).await;
    assert_eq!(up.recv().await.bytes(), pkt::pubrec(5), "PUBREC once stored");
    edge.kill9().await;
    drop(up);

    let edge = Broker::launch(Launch::config(&config).data_dir(dir.path()));
    let mut up = accept_bridge(&upstream, true).await;
    let subscribe = up.recv().await;
    up.send(&[0x90, 0x03, subscribe.body[0], subscribe.body[1], 0x02]).await;
    up.send(&pkt::publish("cmd/x", 2, false, true, 5, b"up:1")).await;
    assert_eq!(up.recv().await.bytes(), pkt::pubrec(5), "the stored id: PUBREC again");
    up.send(&pkt::pubrel(5)).await;
    assert_eq!(up.recv().await.bytes(), pkt::pubcomp(5));
    up.send(&pkt::publish("cmd/x", 2, false, false, 5, b"up:2")).await;
    assert_eq!(up.recv().await.bytes(), pkt::pubrec(5), "a new message with the freed id");
    up.send(&pkt::pubrel(5)).await;
    assert_eq!(up.recv().await.bytes(), pkt::pubcomp(5));

    let (mut s, present) = Raw::handshake(edge.addr(), &local).await;
    assert!(present, "local session survived the crash");
    let mut got = Vec::new();
    loop {
        match s.read(QUIET).await {
            ReadOutcome::Packet(p) if p.kind() == 3 => {
                let m = p.publish();
                got.push(String::from_utf8(m.payload).unwrap());
                s.send(&pkt::pubrec(m.pid.expect("QoS 2"))).await;
            }
            ReadOutcome::Packet(p) if p.kind() == 6 => s.send(&pkt::pubcomp(p.pid())).await,
            ReadOutcome::Timeout => break,
            other => panic!("local subscriber: {other:?}"),
        }
    }
    assert_eq!(got, vec!["up:1", "up:2"], "each once, in order");
}

// Loops, one bridge both ways on `a/#` (MQTT 5): a message published at the edge reaches the
// upstream once and does not come back (No Local upstream [MQTT-3.8.3-3]); one published
// upstream reaches the edge once and is not sent back up (No Local on the bridge's local
// subscription, the bridge session being the inbound message's origin). Every subscriber sees
// each message once.
#[tokio::test]
async fn a_bridge_both_ways_does_not_echo() {
    let upstream = Broker::start();
    let edge = Broker::start_with(&edge_config(
        upstream.addr(),
        // The topic in Mosquitto's syntax (`topic a/# both 1` in mosquitto.conf).
        "protocol = \"5.0\"\nmosquitto_topics = [\"a/# both 1\"]",
    ));
    assert!(edge.wait_log("subscribed upstream", WAIT).await, "bridge subscribed upstream");
    let mut edge_sub = Mqtt::connect(opts(&edge, "edge-sub")).await;
    edge_sub.subscribe("a/#", 1).await;
    let mut up_sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    up_sub.subscribe("a/#", 1).await;

    let mut edge_pub = Mqtt::connect(opts(&edge, "edge-pub")).await;
    edge_pub.publish_wait("a/1", 1, false, payload("edge", 1)).await;
    let mut up_pub = Mqtt::connect(opts(&upstream, "up-pub")).await;
    up_pub.publish_wait("a/2", 1, false, payload("up", 2)).await;

    for (name, sub) in [("edge", &mut edge_sub), ("upstream", &mut up_sub)] {
        let mut got = Vec::new();
        while let Some(m) = sub.recv_timeout(Duration::from_secs(1)).await {
            got.push(String::from_utf8(m.payload.to_vec()).unwrap());
        }
        got.sort();
        assert_eq!(got, vec!["edge:1", "up:2"], "{name} subscriber: each message once");
    }
}

// Against Mosquitto 2 (MQTT 5 bridge): 200 QoS 2 messages; from the 100th Mosquitto's replies
// are held, then the link is reset and restored. All arrive exactly once and in order: the
// bridge resumes its upstream session and re-sends the unacknowledged PUBLISHes with DUP=1 and
// their packet ids, which Mosquitto recognises as already received [MQTT-4.3.3-2]
// [MQTT-4.4.0-1]. An upstream QoS 2 command reaches a local subscriber once.
#[tokio::test]
async fn mosquitto_upstream_gets_qos2_exactly_once_across_a_link_cut() {
    const N: usize = 200;
    let upstream = OtherBroker::mosquitto().await;
    let proxy = Proxy::start(upstream.addr).await;
    let mut sub = Mqtt::connect(upstream.opts("up-sub")).await;
    sub.subscribe("m/#", 2).await;
    let edge = Broker::start_with(&edge_config(
        proxy.addr,
        "protocol = \"5.0\"\ntopics = [{ pattern = \"m/#\", direction = \"out\", qos = 2 }, \
         { pattern = \"c/#\", direction = \"in\", qos = 2 }]",
    ));
    assert!(edge.wait_log("subscribed upstream", WAIT).await, "bridge subscribed upstream");
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "1", WAIT).await;

    // From the middle on, Mosquitto's replies are held: it receives (and delivers) a window of
    // PUBLISHes whose PUBRECs the bridge never sees, then the link is reset.
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    for seq in 0..N {
        if seq == N / 2 {
            proxy.set(Mode::HoldReplies);
        }
        publisher.publish_wait("m/t", 2, false, payload("edge-pub", seq)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Mode::Reset);
    wait_state(&mut state, "0", WAIT).await;
    proxy.set(Mode::Pass);
    let expected: BTreeSet<usize> = (0..N).collect();
    let got = collect(&mut sub, "edge-pub", &expected).await;
    let report = check_stream(&got, &expected);
    eprintln!("mosquitto QoS 2: {} received, {} duplicates", got.len(), report.duplicates);
    assert!(report.missing.is_empty(), "missing: {:?}", report.missing);
    assert!(report.reordered.is_empty(), "reordered: {:?}", report.reordered);
    assert_eq!(report.duplicates, 0, "QoS 2 end to end: exactly once");

    wait_state(&mut state, "1", WAIT).await;
    let mut local = Mqtt::connect(opts(&edge, "local-sub")).await;
    local.subscribe("c/#", 2).await;
    let mut up_pub = Mqtt::connect(upstream.opts("up-pub")).await;
    up_pub.publish_wait("c/go", 2, false, payload("up-pub", 1)).await;
    let m = local.recv().await;
    assert_eq!((m.topic.as_str(), qos_num(m.qos), parse(&m.payload).1), ("c/go", 2, 1));
    local.expect_silence().await;
}

// Queue budget, `overflow = "drop_newest"`: with the upstream unreachable from the start and a
// budget of 20 messages, 50 QoS 1 publishes are all acknowledged (3.1.1 has no way to refuse),
// the first 20 are queued and the rest dropped with a log line; once the link comes up exactly
// the first 20 arrive, in order.
#[tokio::test]
async fn beyond_the_queue_budget_the_newest_are_dropped() {
    let upstream = Broker::start();
    let proxy = Proxy::start(upstream.addr()).await;
    proxy.set(Mode::Reset);
    let mut sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    sub.subscribe("b/#", 1).await;
    let edge = Broker::start_with(&edge_config(
        proxy.addr,
        "queue_max_messages = 20\noverflow = \"drop_newest\"\n\
         topics = [{ pattern = \"b/#\", direction = \"out\", qos = 1 }]",
    ));
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "0", WAIT).await;
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    for seq in 0..50 {
        publisher.publish_wait("b/t", 1, false, payload("edge-pub", seq)).await;
    }
    assert!(edge.wait_log("pending queue full", WAIT).await, "the overflow is logged");
    proxy.set(Mode::Pass);
    wait_state(&mut state, "1", WAIT).await;
    let expected: BTreeSet<usize> = (0..20).collect();
    let got = collect(&mut sub, "edge-pub", &expected).await;
    assert_eq!(got, (0..20).collect::<Vec<_>>(), "exactly the queued ones, in order");
    // Each state change logs the bridge's counters.
    assert!(edge.wait_log("dropped=30", WAIT).await, "the drops are counted");
}

// Failover: two upstreams, the first reached through the proxy. Mid-stream the first becomes
// unreachable (reset, reconnects refused): the bridge connects to the second and goes on;
// together the two upstreams' subscribers miss nothing. The second has no session for the
// bridge, so the unacknowledged window is re-sent there as new (at-least-once, logged). When
// the first answers again the bridge returns to it.
#[tokio::test]
async fn when_the_primary_is_unreachable_traffic_goes_to_the_secondary() {
    const N: usize = 200;
    let primary = Broker::start();
    let secondary = Broker::start();
    let proxy = Proxy::start(primary.addr()).await;
    let mut sub1 = Mqtt::connect(opts(&primary, "sub-1")).await;
    sub1.subscribe("f/#", 1).await;
    let mut sub2 = Mqtt::connect(opts(&secondary, "sub-2")).await;
    sub2.subscribe("f/#", 1).await;
    let config = format!(
        "[[bridge]]\nname = \"cloud\"\naddresses = [\"{}\", \"{}\"]\nkeep_alive_secs = 2\n\
         reconnect_delay_min_ms = 50\nreconnect_delay_max_ms = 400\nconnect_timeout_secs = 2\n\
         topics = [{{ pattern = \"f/#\", direction = \"out\", qos = 1 }}]\n",
        proxy.addr,
        secondary.addr()
    );
    let edge = Broker::start_with(&config);
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "1", WAIT).await;
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for seq in 0..N {
        tick.tick().await;
        if seq == N / 2 {
            proxy.set(Mode::HoldReplies);
        }
        if seq == N / 2 + 20 {
            proxy.set(Mode::Reset);
        }
        publisher.publish_wait("f/t", 1, false, payload("edge-pub", seq)).await;
    }
    let deadline = Instant::now() + ARRIVE;
    let mut union = BTreeSet::new();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    while union.len() < N && Instant::now() < deadline {
        tokio::select! {
            Some(m) = sub1.recv_timeout(Duration::from_millis(100)) => {
                let seq = parse(&m.payload).1;
                first.push(seq);
                union.insert(seq);
            }
            Some(m) = sub2.recv_timeout(Duration::from_millis(100)) => {
                let seq = parse(&m.payload).1;
                second.push(seq);
                union.insert(seq);
            }
            else => {}
        }
    }
    let missing: Vec<usize> = (0..N).filter(|s| !union.contains(s)).collect();
    eprintln!("failover: {} via the primary, {} via the secondary", first.len(), second.len());
    assert!(missing.is_empty(), "missing from both upstreams: {missing:?}");
    assert!(!first.is_empty() && !second.is_empty(), "both upstreams carried traffic");
    assert!(edge.wait_log("upstream has no session for this bridge", WAIT).await, "the fallback is logged");

    // The primary answers again: the bridge goes back to it (probed every
    // reconnect_delay_max_ms), and new messages go there.
    proxy.set(Mode::Pass);
    assert!(edge.wait_log("moving back to it", WAIT).await, "back to the primary");
    wait_state(&mut state, "1", WAIT).await;
    for seq in N..N + 20 {
        publisher.publish_wait("f/t", 1, false, payload("edge-pub", seq)).await;
    }
    let expected: BTreeSet<usize> = (N..N + 20).collect();
    let got = collect(&mut sub1, "edge-pub", &expected).await;
    let report = check_stream(&got, &expected);
    assert!(report.missing.is_empty(), "missing at the primary: {:?}", report.missing);
}

// TLS to the upstream: a Tern upstream with a TLS listener that requires client certificates
// (mTLS). The bridge verifies the upstream's certificate against its CA and the address's IP,
// presents its own, and forwards; a bridge trusting another CA never links (the failure is
// logged) and keeps the message queued.
#[tokio::test]
async fn tls_with_client_certificates_forwards_and_a_wrong_ca_never_links() {
    use client_tests::pki::{client_config, tls_raw, Pki};
    let pki = Pki::new("bridge");
    let server = pki.server("upstream");
    let upstream = Broker::launch(
        Launch::config(&format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\ntransport = \"tls\"\nallow_anonymous = true\n{}",
            pki.listener_tls(&server, true, "")
        ))
        .args(&[]),
    );
    let edge_id = pki.client("edge-1", None);
    let tls =
        format!("tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}", pki.ca_file, edge_id.cert, edge_id.key);
    let edge = Broker::start_with(&edge_config(
        upstream.addr(),
        &format!("{tls}\ntopics = [{{ pattern = \"s/#\", direction = \"out\", qos = 1 }}]"),
    ));
    assert!(edge.wait_log("bridge connected", WAIT).await, "linked over TLS");
    let watcher_id = pki.client("watcher", None);
    let mut sub = tls_raw(upstream.addr(), client_config(&pki.ca_file, Some(&watcher_id))).await;
    sub.send(&pkt::Connect::new("up-sub").encode()).await;
    assert_eq!(sub.recv().await.header, 0x20, "CONNACK");
    assert_eq!(sub.subscribe(1, &[("s/#", 1)]).await, vec![1]);
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    publisher.publish_wait("s/t", 1, false, payload("edge-pub", 1)).await;
    let m = sub.recv_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice()), ("s/t", &b"edge-pub:1"[..]));

    let other = Pki::new("other");
    let wrong =
        format!("tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}", other.ca_file, edge_id.cert, edge_id.key);
    let stranger = Broker::start_with(&edge_config(
        upstream.addr(),
        &format!("{wrong}\ntopics = [{{ pattern = \"s/#\", direction = \"out\", qos = 1 }}]"),
    ));
    assert!(stranger.wait_log("cannot connect", WAIT).await, "the failed verification is logged");
    assert!(!stranger.wait_log("bridge connected", QUIET).await, "never linked with an unverified upstream");
}

// A TLS file that cannot be read stops the broker at start, naming the bridge and the file.
#[tokio::test]
async fn an_unreadable_bridge_ca_stops_the_broker() {
    let exited = Broker::run_to_exit(
        Launch::config(
            "[[bridge]]\nname = \"cloud\"\naddresses = [\"127.0.0.1:1\"]\n\
             tls = { ca = \"/nonexistent/ca.pem\" }\ntopics = [{ pattern = \"a\" }]\n",
        ),
        WAIT,
    );
    // Exit code 1, not a signal: the store opened before is closed before the exit.
    assert_eq!(exited.status.and_then(|s| s.code()), Some(1), "exits with an error: {}", exited.logs);
    assert!(
        exited.logs.contains("bridge cloud") && exited.logs.contains("/nonexistent/ca.pem"),
        "{}",
        exited.logs
    );
}

// Restarts keep the bridge's own queue budget (not `mqtt.max_queued_messages`, here lower), and
// a stored queue whose bridge left the configuration is deleted at start, with a warning.
#[tokio::test]
async fn a_restart_keeps_the_bridge_budget_and_a_removed_bridge_queue_goes() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Broker::start();
    let proxy = Proxy::start(upstream.addr()).await;
    proxy.set(Mode::Reset);
    let config = format!(
        "[mqtt]\nmax_queued_messages = 50\n{}",
        edge_config(
            proxy.addr,
            "queue_max_messages = 200\ntopics = [{ pattern = \"r/#\", direction = \"out\", qos = 1 }]"
        )
    );
    let mut edge = Broker::launch(Launch::config(&config).data_dir(dir.path()));
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    for seq in 0..100 {
        publisher.publish_wait("r/t", 1, false, payload("edge-pub", seq)).await;
    }
    drop(publisher);
    edge.kill9().await;
    let mut edge = Broker::launch(Launch::config(&config).data_dir(dir.path()));
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    for seq in 100..150 {
        publisher.publish_wait("r/t", 1, false, payload("edge-pub", seq)).await;
    }
    assert!(!edge.wait_log("pending queue full", QUIET).await, "within the bridge's budget of 200");
    drop(publisher);
    edge.kill9().await;

    // Without the bridge: its stored queue is deleted, not kept for ever.
    let edge = Broker::launch(Launch::config("").data_dir(dir.path()));
    assert!(edge.wait_log("bridge no longer configured", WAIT).await, "the deletion is logged");
    drop(edge);
    let mut sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    sub.subscribe("r/#", 1).await;
    proxy.set(Mode::Pass);
    let edge = Broker::launch(Launch::config(&config).data_dir(dir.path()));
    assert!(edge.wait_log("bridge connected", WAIT).await);
    assert!(sub.recv_timeout(QUIET).await.is_none(), "the deleted queue does not come back");
}

// Upstream capabilities (MQTT 5 CONNACK): an upstream with Maximum QoS 1 and Retain Available
// 0 gets a QoS 2 retained local publish as QoS 1 without RETAIN [MQTT-3.2.2-11]
// [MQTT-3.2.2-14], instead of closing the link on it (0x9B / 0x9A) again at every reconnect.
#[tokio::test]
async fn the_upstreams_maximum_qos_and_retain_available_are_honoured() {
    let upstream = Broker::start_with("[mqtt]\nmaximum_qos = 1\nretain_available = false\n");
    let mut sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    sub.subscribe("c/#", 1).await;
    let edge = Broker::start_with(&edge_config(
        upstream.addr(),
        "protocol = \"5.0\"\ntopics = [{ pattern = \"c/#\", direction = \"out\", qos = 2 }]",
    ));
    assert!(edge.wait_log("bridge connected", WAIT).await);
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    publisher.publish_wait("c/t", 2, true, payload("edge-pub", 1)).await;
    publisher.publish_wait("c/t", 2, false, payload("edge-pub", 2)).await;
    for seq in 1..=2 {
        let m = sub.recv().await;
        assert_eq!((qos_num(m.qos), parse(&m.payload).1), (1, seq));
    }
    sub.expect_silence().await;
    let logs = edge.logs();
    assert!(!logs.contains("link lost"), "the link stayed up:\n{logs}");
    assert!(edge.wait_log("upstream takes QoS 1 at most", WAIT).await, "the cap is logged");
}

// Queue budget, `overflow = "drop_oldest"`: the upstream unreachable, a budget of 20, 50 QoS 1
// publishes: the oldest 30 make room for the newest (their stored records deleted too), logged
// and counted. The edge restarts with the budget lowered to 10: a queue stored over its budget
// is trimmed when the bridge opens it, before anything goes upstream (as one is that a stop or
// crash left before its last arrivals were trimmed). Once linked exactly 40..49 arrive, in order.
#[tokio::test]
async fn drop_oldest_keeps_the_newest_within_the_budget_also_a_lowered_one() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Broker::start();
    let proxy = Proxy::start(upstream.addr()).await;
    proxy.set(Mode::Reset);
    let mut sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    sub.subscribe("o/#", 1).await;
    let config = |budget: usize| {
        edge_config(
            proxy.addr,
            &format!(
                "queue_max_messages = {budget}\noverflow = \"drop_oldest\"\n\
                 topics = [{{ pattern = \"o/#\", direction = \"out\", qos = 1 }}]"
            ),
        )
    };
    let mut edge = Broker::launch(Launch::config(&config(20)).data_dir(dir.path()));
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    for seq in 0..50 {
        publisher.publish_wait("o/t", 1, false, payload("edge-pub", seq)).await;
    }
    assert!(edge.wait_log("dropping the oldest messages", WAIT).await, "the overflow is logged");
    drop(publisher);
    edge.sigterm();
    assert!(edge.wait_exit(WAIT).await.is_some());
    let edge = Broker::launch(Launch::config(&config(10)).data_dir(dir.path()));
    assert!(edge.wait_log("bridge session ready resumed=true queued=10", WAIT).await, "{}", edge.logs());
    proxy.set(Mode::Pass);
    let expected: BTreeSet<usize> = (40..50).collect();
    let got = collect(&mut sub, "edge-pub", &expected).await;
    assert_eq!(got, (40..50).collect::<Vec<_>>(), "exactly the newest 10, in order");
}

// A broker shutdown ends the link with DISCONNECT (3.1.1 here), so the upstream keeps the
// session and publishes no will [MQTT-3.14.4-3].
#[tokio::test]
async fn shutdown_sends_disconnect_upstream() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = scripted_config(
        upstream.local_addr().unwrap(),
        "{ pattern = \"q/#\", direction = \"out\", qos = 1 }",
    );
    let mut edge = Broker::start_with(&config);
    let mut up = accept_bridge(&upstream, false).await;
    assert!(edge.wait_log("bridge connected", WAIT).await);
    edge.sigterm();
    assert_eq!(up.recv().await.bytes(), vec![0xE0, 0x00], "DISCONNECT");
    up.expect_closed(WAIT).await;
    assert!(edge.wait_exit(WAIT).await.is_some_and(|s| s.success()));
}
