//! Area 20, continued: the bridge's overflow refusal, loop prevention, upstream limits, rate
//! cap and counters. Same kit as t20 (`client_tests::bridge`): an edge `tern` bridges to a real
//! upstream (a second `tern`) directly or through the test's proxy; payloads are
//! "<publisher>:<sequence>". Every wait is bounded; each test takes seconds.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use client_tests::bridge::*;
use client_tests::http::*;
use client_tests::v5::{self, Props};
use client_tests::*;
use tokio::time::Instant;

/// `$SYS` every second and an HTTP endpoint, before the `[[bridge]]` table.
const OPS: &str = "[sys]\ninterval = 1\n[http]\nbind = \"127.0.0.1:0\"\n";

/// Every payload `sub` receives until it is quiet for a second, in arrival order.
async fn payloads_until_quiet(sub: &mut Mqtt) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(m) = sub.recv_timeout(Duration::from_secs(1)).await {
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    got
}

/// Waits until `$SYS/broker/connection/cloud/<counter>` says `want`.
async fn wait_sys(broker: &Broker, counter: &str, want: &str) {
    let topic = format!("$SYS/broker/connection/cloud/{counter}");
    let mut w = Mqtt::connect(opts(broker, &unique("sys-watch"))).await;
    w.subscribe(&topic, 0).await;
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while let Some(m) = w.recv_timeout(deadline.saturating_duration_since(Instant::now())).await {
        last = Some(String::from_utf8_lossy(&m.payload).into_owned());
        if last.as_deref() == Some(want) {
            return;
        }
    }
    panic!("{topic}: wanted {want}, last {last:?}");
}

// `overflow = "reject"`, upstream unreachable, budget 5: the first 5 QoS 1 publishes are
// acknowledged (queued durably); then an MQTT 5 publisher gets PUBACK 0x97 Quota exceeded
// [MQTT-3.4.2-1], a 3.1.1 publisher's connection is closed without PUBACK (3.1.1 cannot refuse),
// and neither refused message reaches anyone: not the local subscriber, not the upstream. Once
// linked exactly the 5 accepted arrive, in order; both refusals are counted.
#[tokio::test]
async fn reject_refuses_publishers_beyond_the_budget() {
    let upstream = Broker::start();
    let proxy = Proxy::start(upstream.addr()).await;
    proxy.set(Mode::Reset);
    let mut up_sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    up_sub.subscribe("r/#", 1).await;
    let edge = Broker::start_with(&format!(
        "{OPS}{}",
        edge_config(
            proxy.addr,
            "queue_max_messages = 5\noverflow = \"reject\"\n\
             topics = [{ pattern = \"r/#\", direction = \"out\", qos = 1 }]",
        )
    ));
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "0", WAIT).await;
    let mut local = Mqtt::connect(opts(&edge, "local-sub")).await;
    local.subscribe("r/#", 1).await;

    let mut p5 = Raw::connected5(edge.addr(), "pub-v5").await;
    for seq in 0..5u16 {
        let reason =
            p5.publish5_flow("r/t", 1, false, seq + 1, &Props::new(), &payload("pub-v5", seq.into())).await;
        assert_eq!(reason, 0, "message {seq} fits the budget");
    }
    let reason = p5.publish5_flow("r/t", 1, false, 6, &Props::new(), &payload("pub-v5", 5)).await;
    assert_eq!(reason, 0x97, "beyond the budget: Quota exceeded");
    assert!(edge.wait_log("pending queue full: refusing new messages", WAIT).await, "logged");

    let mut p3 = Raw::connected(edge.addr(), "pub-v3", true).await;
    p3.send(&pkt::publish("r/t", 1, false, false, 1, &payload("pub-v3", 0))).await;
    p3.expect_closed(WAIT).await;

    let accepted: Vec<String> = (0..5).map(|seq| format!("pub-v5:{seq}")).collect();
    assert_eq!(
        payloads_until_quiet(&mut local).await,
        accepted,
        "the refused ones reached no local subscriber"
    );

    proxy.set(Mode::Pass);
    wait_state(&mut state, "1", WAIT).await;
    assert_eq!(payloads_until_quiet(&mut up_sub).await, accepted, "exactly the accepted ones, in order");
    wait_sys(&edge, "dropped/rejected", "2").await;
}

// Issue test 6, both protocols: the edge bridged `both` on `a/#` to an upstream Tern, and to
// Aedes (Node.js, npm), a third implementation. One publish on each side reaches each side's
// subscriber exactly once. MQTT 5: the bridge subscribes upstream with No Local
// [MQTT-3.8.3-3]. MQTT 3.1.1 has no No Local: the bridge sets Mosquitto's bridge bit (protocol
// level 0x84, `try_private`) and an upstream that knows it (Tern, Aedes) does not send the
// bridge's own publishes back. Without the bit (`try_private = false`) the upstream echoes the
// edge's message and the edge subscriber gets it twice: what the bit is for.
#[tokio::test]
async fn bridged_both_ways_each_publish_arrives_once() {
    let aedes_modules =
        if npm::available("bridged_both_ways (Aedes cases)") { Some(npm::install().await) } else { None };
    let cases = [("tern", "5.0", true, 1), ("tern", "3.1.1", true, 1), ("tern", "3.1.1", false, 2)];
    let aedes_cases = [("aedes", "3.1.1", true, 1), ("aedes", "3.1.1", false, 2)];
    let cases = cases.iter().chain(aedes_cases.iter().filter(|_| aedes_modules.is_some()));
    for &(upstream_kind, protocol, try_private, edge_copies) in cases {
        let (_upstream, up_addr): (Box<dyn std::any::Any>, SocketAddr) = match &aedes_modules {
            Some(modules) if upstream_kind == "aedes" => {
                let aedes = OtherBroker::aedes(modules).await;
                let addr = aedes.addr;
                (Box::new(aedes), addr)
            }
            _ => {
                let tern = Broker::start();
                let addr = tern.addr();
                (Box::new(tern), addr)
            }
        };
        let case = format!("{upstream_kind} upstream, {protocol}, try_private = {try_private}");
        let edge = Broker::start_with(&edge_config(
            up_addr,
            &format!(
                "protocol = \"{protocol}\"\ntry_private = {try_private}\nmosquitto_topics = [\"a/# both 1\"]"
            ),
        ));
        assert!(edge.wait_log("subscribed upstream", WAIT).await, "{case}: bridge subscribed upstream");
        let mut edge_sub = Mqtt::connect(opts(&edge, "edge-sub")).await;
        edge_sub.subscribe("a/#", 1).await;
        let mut up_sub = Mqtt::connect(opts_at(up_addr, "up-sub")).await;
        up_sub.subscribe("a/#", 1).await;

        let mut edge_pub = Mqtt::connect(opts(&edge, "edge-pub")).await;
        edge_pub.publish_wait("a/1", 1, false, payload("edge", 1)).await;
        let mut up_pub = Mqtt::connect(opts_at(up_addr, "up-pub")).await;
        up_pub.publish_wait("a/2", 1, false, payload("up", 2)).await;

        for (side, sub, copies) in [("edge", &mut edge_sub, edge_copies), ("upstream", &mut up_sub, 1)] {
            let mut got = payloads_until_quiet(sub).await;
            got.sort();
            let mut want = vec!["edge:1"; copies];
            want.push("up:2");
            assert_eq!(got, want, "{case}: {side} subscriber");
        }
    }
}

// Two Terns bridged to each other (MQTT 5, each forwarding `h/#` out to the other): a loop. Each
// forward raises the user property `tern-hops`; with `max_hops = 3` a message published on A
// reaches B with hops 1, comes back to A with 2, reaches B again with 3, and B does not forward
// it a fourth time (counted). So the loop ends, and B's subscriber sees hops 1 and 3.
#[tokio::test]
async fn bridges_in_a_loop_stop_at_max_hops() {
    let reserve = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (la, lb) = (reserve(), reserve());
    let (addr_a, addr_b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    drop((la, lb));
    // Each bridges to the other's port, reserved before either starts.
    let start = |port: u16, peer: std::net::SocketAddr| {
        let bridge = edge_config(
            peer,
            "protocol = \"5.0\"\nmax_hops = 3\ntopics = [{ pattern = \"h/#\", direction = \"out\", qos = 1 }]",
        );
        let port = port.to_string();
        Broker::launch(Launch::config(&format!("{OPS}{bridge}")).args(&["--bind", "127.0.0.1", "-p", &port]))
    };
    let a = start(addr_a.port(), addr_b);
    let b = start(addr_b.port(), addr_a);
    for broker in [&a, &b] {
        assert!(broker.wait_log("bridge connected", WAIT).await, "{}", broker.logs());
    }
    let mut sub_b = Raw::connected5(b.addr(), "sub-b").await;
    sub_b.sub5("h/#", 1).await;
    let mut publisher = Mqtt::connect(opts(&a, "pub-a")).await;
    publisher.publish_wait("h/1", 1, false, payload("pub-a", 1)).await;
    let mut hops = Vec::new();
    for _ in 0..2 {
        let p = sub_b.recv_publish5().await;
        sub_b.send(&v5::puback(p.pid.unwrap())).await;
        let users = p.props.users();
        hops.push(users.iter().find(|(k, _)| k == "tern-hops").map(|(_, v)| v.clone()).unwrap_or_default());
    }
    assert_eq!(hops, ["1", "3"], "hop counts of the two copies on B");
    sub_b.expect_nothing(Duration::from_secs(1)).await;
    wait_sys(&b, "dropped/max_hops", "1").await;
}

// The upstream's CONNACK Maximum Packet Size (256 bytes here) [MQTT-3.2.2-15]: a queued message
// larger than it is dropped and counted, and the lane goes on: the messages before and after it
// arrive, in order, and the link stays up.
#[tokio::test]
async fn a_message_over_the_upstreams_maximum_packet_size_is_dropped_not_retried() {
    let upstream = Broker::start_with("[mqtt]\nmax_packet_size = 256\n");
    let mut up_sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    up_sub.subscribe("s/#", 1).await;
    let edge = Broker::start_with(&format!(
        "{OPS}{}",
        edge_config(
            upstream.addr(),
            "protocol = \"5.0\"\ntopics = [{ pattern = \"s/#\", direction = \"out\", qos = 1 }]"
        )
    ));
    assert!(edge.wait_log("bridge connected", WAIT).await);
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    publisher.publish_wait("s/t", 1, false, payload("edge-pub", 0)).await;
    let mut large = payload("edge-pub", 1);
    large.resize(1000, b'x');
    publisher.publish_wait("s/t", 1, false, large).await;
    publisher.publish_wait("s/t", 1, false, payload("edge-pub", 2)).await;
    for seq in [0, 2] {
        assert_eq!(parse(&up_sub.recv().await.payload).1, seq);
    }
    up_sub.expect_silence().await;
    wait_sys(&edge, "dropped/too_large", "1").await;
    assert!(!edge.logs().contains("link lost"), "the link stayed up:\n{}", edge.logs());
}

// `max_rate = 20`: 60 messages published at once leave at one second's burst (20) and then 20
// per second, so the last arrives upstream after about 2 s (not before 1.5 s), all in order.
#[tokio::test]
async fn max_rate_caps_the_forwarding_rate() {
    let upstream = Broker::start();
    let mut up_sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    up_sub.subscribe("m/#", 1).await;
    let edge = Broker::start_with(&edge_config(
        upstream.addr(),
        "max_rate = 20\ntopics = [{ pattern = \"m/#\", direction = \"out\", qos = 1 }]",
    ));
    assert!(edge.wait_log("bridge connected", WAIT).await);
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    let start = Instant::now();
    for seq in 0..60 {
        publisher.publish("m/t", 1, false, payload("edge-pub", seq)).await;
    }
    publisher.wait_acks(60).await;
    let expected: BTreeSet<usize> = (0..60).collect();
    let got = collect(&mut up_sub, "edge-pub", &expected).await;
    let report = check_stream(&got, &expected);
    assert!(report.missing.is_empty() && report.reordered.is_empty(), "{report:?}");
    let took = start.elapsed() - QUIET;
    assert!(took >= Duration::from_millis(1500), "60 messages at 20/s took only {took:?}");
}

// The per-bridge counters, one set read by both: /metrics (label `bridge`, accepted by
// `promtool check metrics`) and `$SYS/broker/connection/cloud/...`. 10 QoS 1 messages forwarded
// and acknowledged; none queued or dropped afterwards.
#[tokio::test]
async fn bridge_counters_in_metrics_and_sys_agree() {
    let upstream = Broker::start();
    let edge = Broker::start_with(&format!(
        "{OPS}{}",
        edge_config(upstream.addr(), "topics = [{ pattern = \"c/#\", direction = \"out\", qos = 1 }]")
    ));
    assert!(edge.wait_log("bridge connected", WAIT).await);
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    for seq in 0..10 {
        publisher.publish_wait("c/t", 1, false, payload("edge-pub", seq)).await;
    }
    wait_sys(&edge, "acknowledged", "10").await;
    wait_sys(&edge, "forwarded", "10").await;
    wait_sys(&edge, "queued/messages", "0").await;
    let (status, _, body) = http_get(http_addr(&edge).await, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(sample::<u64>(&body, "tern_bridge_up{bridge=\"cloud\"}"), 1);
    assert_eq!(sample::<u64>(&body, "tern_bridge_forwarded_total{bridge=\"cloud\"}"), 10);
    assert_eq!(sample::<u64>(&body, "tern_bridge_acknowledged_total{bridge=\"cloud\"}"), 10);
    assert_eq!(sample::<u64>(&body, "tern_bridge_queued_messages{bridge=\"cloud\"}"), 0);
    assert_eq!(sample::<u64>(&body, "tern_bridge_reconnects_total{bridge=\"cloud\"}"), 0);
    assert_eq!(sample::<u64>(&body, "tern_bridge_dropped_total{bridge=\"cloud\",reason=\"drop_newest\"}"), 0);
    promtool_check(&body).await;
}

// SIGHUP reloads bridge settings without losing the queue. The bridge "cloud" points at an
// unreachable upstream and queues 10 messages; the configuration file is rewritten to point it
// at a reachable upstream and to add a bridge "extra"; after SIGHUP "cloud" restarts with its
// queue (the 10 arrive, in order) and "extra" starts. A second SIGHUP with "cloud" removed stops
// it: what is published on its topics afterwards goes nowhere.
#[tokio::test]
async fn sighup_restarts_a_changed_bridge_with_its_queue() {
    let unreachable = Broker::start();
    let proxy = Proxy::start(unreachable.addr()).await;
    proxy.set(Mode::Reset);
    let upstream = Broker::start();
    let mut up_sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    up_sub.subscribe("q/#", 1).await;
    up_sub.subscribe("x/#", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tern.toml");
    let cloud = |to| edge_config(to, "topics = [{ pattern = \"q/#\", direction = \"out\", qos = 1 }]");
    let extra =
        edge_config(upstream.addr(), "topics = [{ pattern = \"x/#\", direction = \"out\", qos = 1 }]")
            .replace("name = \"cloud\"", "name = \"extra\"");
    std::fs::write(&file, cloud(proxy.addr)).unwrap();
    let path = file.to_str().unwrap();
    let edge = Broker::launch(Launch::default().args(&["-c", path, "--bind", "127.0.0.1", "-p", "0"]));
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "0", WAIT).await;
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    for seq in 0..10 {
        publisher.publish_wait("q/t", 1, false, payload("edge-pub", seq)).await;
    }

    std::fs::write(&file, format!("{}{extra}", cloud(upstream.addr()))).unwrap();
    edge.sighup();
    assert!(
        edge.wait_log("bridge settings changed: restarting it with its queue", WAIT).await,
        "{}",
        edge.logs()
    );
    let expected: BTreeSet<usize> = (0..10).collect();
    let got = collect(&mut up_sub, "edge-pub", &expected).await;
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "the queue kept across the restart, in order");
    assert!(edge.wait_log("bridge added: starting it", WAIT).await);
    publisher.publish_wait("x/t", 1, false, payload("edge-pub", 100)).await;
    assert_eq!(parse(&up_sub.recv().await.payload).1, 100, "the added bridge forwards");

    std::fs::write(&file, &extra).unwrap();
    edge.sighup();
    assert!(edge.wait_log("bridge removed from the configuration", WAIT).await);
    publisher.publish_wait("q/t", 1, false, payload("edge-pub", 10)).await;
    up_sub.expect_silence().await;
}

// Queued messages keep their MQTT 5 Message Expiry [MQTT-3.3.2-5] [MQTT-3.3.2-6]: with the link
// down, a message with a 1 s expiry and one with 60 s are queued; 2 s later the link comes up:
// the first was dropped (counted as `expired`), the second goes upstream with the interval that
// remains.
#[tokio::test]
async fn queued_messages_keep_their_message_expiry() {
    let upstream = Broker::start();
    let proxy = Proxy::start(upstream.addr()).await;
    proxy.set(Mode::Reset);
    let mut up_sub = Raw::connected5(upstream.addr(), "up-sub").await;
    up_sub.sub5("e/#", 1).await;
    let edge = Broker::start_with(&format!(
        "{OPS}{}",
        edge_config(
            proxy.addr,
            "protocol = \"5.0\"\ntopics = [{ pattern = \"e/#\", direction = \"out\", qos = 1 }]"
        )
    ));
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "0", WAIT).await;
    let mut publisher = Raw::connected5(edge.addr(), "pub").await;
    for (pid, expiry) in [(1u16, 1u32), (2, 60)] {
        let props = Props::new().with(v5::MESSAGE_EXPIRY, expiry);
        let reason = publisher.publish5_flow("e/t", 1, false, pid, &props, &payload("pub", pid.into())).await;
        assert_eq!(reason, 0, "queued");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set(Mode::Pass);
    let p = up_sub.recv_publish5().await;
    up_sub.send(&v5::puback(p.pid.unwrap())).await;
    assert_eq!(parse(&p.payload).1, 2, "the expired one was dropped");
    let left = p.props.num(v5::MESSAGE_EXPIRY).expect("expiry forwarded");
    assert!((55..60).contains(&left), "remaining interval forwarded: {left}");
    up_sub.expect_nothing(Duration::from_secs(1)).await;
    wait_sys(&edge, "dropped/expired", "1").await;
}

// `try_private` with an upstream that does not know the bridge bit: the first CONNECT carries
// protocol level 0x84, the upstream answers CONNACK return code 1 (unacceptable protocol
// version) [MQTT-3.2.2-4]; the bridge connects again at once with level 4, and links.
#[tokio::test]
async fn try_private_falls_back_when_the_upstream_refuses_the_bridge_bit() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge = Broker::start_with(&scripted_config(
        upstream.local_addr().unwrap(),
        "{ pattern = \"p/#\", direction = \"out\", qos = 1 }",
    ));
    let mut levels = Vec::new();
    for return_code in [0x01, 0x00] {
        let (stream, peer) =
            tokio::time::timeout(WAIT, upstream.accept()).await.expect("bridge connects").unwrap();
        let mut raw = Raw::over(stream, peer);
        let connect = raw.recv().await;
        assert_eq!(connect.header, 0x10, "CONNECT first: {connect:?}");
        levels.push(connect.body[6]);
        raw.send(&[0x20, 0x02, 0x00, return_code]).await;
        if return_code == 0 {
            assert!(edge.wait_log("bridge connected", WAIT).await, "{}", edge.logs());
        }
    }
    assert_eq!(levels, [0x84, 0x04], "bridge bit first, then plain 3.1.1");
    assert!(edge.logs().contains("upstream refused the bridge protocol level"), "logged");
}

// Live traffic is not held up while a backlog drains. 400 messages queued while the link is
// down drain at `max_rate = 100` (about 3 s); meanwhile a live publisher's 10 QoS 1 publishes
// are each acknowledged at once (queued behind the backlog, not paused until it drained), and
// the upstream gets everything in order, the live ones last.
#[tokio::test]
async fn a_draining_backlog_does_not_hold_up_live_publishers() {
    let upstream = Broker::start();
    let proxy = Proxy::start(upstream.addr()).await;
    proxy.set(Mode::Reset);
    let mut up_sub = Mqtt::connect(opts(&upstream, "up-sub")).await;
    up_sub.subscribe("d/#", 1).await;
    let edge = Broker::start_with(&edge_config(
        proxy.addr,
        "max_rate = 100\ntopics = [{ pattern = \"d/#\", direction = \"out\", qos = 1 }]",
    ));
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "0", WAIT).await;
    let mut backlog = Mqtt::connect(opts(&edge, "backlog")).await;
    for seq in 0..400 {
        backlog.publish("d/t", 1, false, payload("backlog", seq)).await;
    }
    backlog.wait_acks(400).await;
    proxy.set(Mode::Pass);
    wait_state(&mut state, "1", WAIT).await;
    let mut live = Mqtt::connect(opts(&edge, "live")).await;
    let start = Instant::now();
    for seq in 0..10 {
        live.publish_wait("d/t", 1, false, payload("live", seq)).await;
    }
    let acked_in = start.elapsed();
    let mut order = Vec::new();
    let deadline = Instant::now() + ARRIVE;
    while order.len() < 410 {
        let Some(m) = up_sub.recv_timeout(deadline.saturating_duration_since(Instant::now())).await else {
            break;
        };
        order.push(parse(&m.payload));
    }
    let drained_in = start.elapsed();
    assert!(acked_in < drained_in / 2, "live acks took {acked_in:?}, the drain {drained_in:?}");
    let want: Vec<(String, usize)> = (0..400)
        .map(|s| ("backlog".to_string(), s))
        .chain((0..10).map(|s| ("live".to_string(), s)))
        .collect();
    let first_difference = order.iter().zip(&want).position(|(got, want)| got != want);
    assert!(order == want, "everything once, in order, the live ones last: {} received, first difference at {first_difference:?}", order.len());
}

// The default window into a 3.1.1 Mosquitto: up to 100 messages in flight, of which at most 20
// QoS 2 flows (`max_inflight_qos2`). Mosquitto closes a client's connection once it has more
// than its `max_inflight_messages` (20) QoS 2 messages awaiting PUBREL (its test
// 03-publish-qos2-max-inflight-exceeded); 2.0.11 here instead stalls the link (at a cap of 100:
// 1,600 of 2,000 missing after 20 s) or, past it by a little, completes every handshake but
// never delivers one message (seen while a bug let flows slip past the cap of 20: 1 of 2,000
// missing in 2 of 6 runs, all 2,000 PUBCOMP'd). With the cap kept every message arrives once,
// in order, and the link never drops.
#[tokio::test]
async fn a_qos2_burst_into_a_3_1_1_mosquitto_stays_within_its_inflight_limit() {
    const N: usize = 2_000;
    let upstream = OtherBroker::mosquitto().await;
    let mut sub = Mqtt::connect(upstream.opts("up-sub")).await;
    sub.subscribe("b/#", 2).await;
    let edge = Broker::start_with(&edge_config(
        upstream.addr,
        "protocol = \"3.1.1\"\ntopics = [{ pattern = \"b/#\", direction = \"out\", qos = 2 }]",
    ));
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "1", WAIT).await;

    let acked: Acked = Acked::default();
    let stream = Stream::new("burst", "b/t", 2).window(200);
    assert_eq!(stream.run(edge.addr(), 0..N, &acked).await, N, "every publish completed");
    let expected: BTreeSet<usize> = (0..N).collect();
    let got = collect(&mut sub, "burst", &expected).await;
    let report = check_stream(&got, &expected);
    assert!(report.missing.is_empty(), "missing {} of {N}", report.missing.len());
    assert!(report.reordered.is_empty(), "reordered: {:?}", report.reordered);
    assert_eq!(report.duplicates, 0, "QoS 2: exactly once");
    assert!(!edge.logs().contains("link lost"), "the link dropped:\n{}", edge.logs());
}
