//! Area 15: `[limits]` and the per-listener `max_connections`. Every limit, when hit, has the
//! outcome `config/tern.toml` states, on the wire and byte-exact for MQTT 3.1.1 and 5, and is
//! logged. (`mqtt.max_packet_size` and `mqtt.connect_timeout_secs` are covered elsewhere.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use client_tests::v5::{self, Props};
use client_tests::*;

/// A broker with these `[limits]` lines.
fn limits_broker(limits: &str) -> Broker {
    Broker::start_with(&format!("[limits]\n{limits}\n"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    V311,
    V5,
}

impl Proto {
    /// CONNECT (clean) on a new connection to `addr`; returns the connection and the CONNACK
    /// code (3.1.1 return code, MQTT 5 reason code).
    async fn connect(self, addr: SocketAddr, id: &str) -> (Raw, u8) {
        match self {
            Proto::V311 => {
                let mut raw = Raw::connect(addr).await;
                raw.send(&pkt::Connect::new(id).encode()).await;
                let ack = raw.recv().await;
                assert_eq!((ack.header, ack.body.len()), (0x20, 2), "3.1.1 CONNACK: {ack:?}");
                let code = ack.body[1];
                (raw, code)
            }
            Proto::V5 => {
                let (raw, ack) = Raw::connect5(addr, &v5::Connect::new(id)).await;
                (raw, ack.reason)
            }
        }
    }

    /// [`Proto::connect`], asserting the connection was accepted.
    async fn connected(self, addr: SocketAddr, id: &str) -> Raw {
        let (raw, code) = self.connect(addr, id).await;
        assert_eq!(code, 0, "CONNACK code for {id} ({self:?})");
        raw
    }

    /// The CONNACK code for "server busy": 0x89 Server busy / 0x03 Server unavailable.
    fn busy(self) -> u8 {
        match self {
            Proto::V311 => 0x03,
            Proto::V5 => 0x89,
        }
    }

    /// The SUBACK code of a refusal: MQTT 5's `v5_reason`, or 0x80 for 3.1.1.
    fn refused(self, v5_reason: u8) -> u8 {
        match self {
            Proto::V311 => 0x80,
            Proto::V5 => v5_reason,
        }
    }

    /// SUBSCRIBE each filter at QoS 1 in one packet; the SUBACK codes.
    async fn subscribe(self, raw: &mut Raw, pid: u16, filters: &[&str]) -> Vec<u8> {
        let with_qos: Vec<(&str, u8)> = filters.iter().map(|f| (*f, 1)).collect();
        match self {
            Proto::V311 => raw.subscribe(pid, &with_qos).await,
            Proto::V5 => raw.subscribe5(pid, &Props::new(), &with_qos).await,
        }
    }

    fn publish(self, topic: &str, qos: u8, pid: u16, payload: &[u8]) -> Vec<u8> {
        match self {
            Proto::V311 => pkt::publish(topic, qos, false, false, pid, payload),
            Proto::V5 => v5::publish(topic, qos, false, pid, &Props::new(), payload),
        }
    }

    /// The next packet, which must be a PUBLISH: (topic, payload).
    async fn recv_publish(self, raw: &mut Raw) -> (String, Vec<u8>) {
        let p = raw.recv_skip_ping().await;
        match self {
            Proto::V311 => {
                let m = p.publish();
                (m.topic, m.payload)
            }
            Proto::V5 => {
                let m = p.publish5();
                (m.topic, m.payload)
            }
        }
    }

    async fn disconnect(self, raw: Raw) {
        match self {
            Proto::V311 => raw.disconnect().await,
            Proto::V5 => raw.disconnect5().await,
        }
    }
}

/// Waits until `b`'s log contains `needle`, or fails naming `what`.
async fn assert_logged(b: &Broker, needle: &str, what: &str) {
    assert!(b.wait_log(needle, WAIT).await, "{what}: no {needle:?} in the log:\n{}", b.logs());
}

// ---------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------

/// A connection over a limit: its CONNECT is answered "server busy", then it is closed.
async fn expect_busy(proto: Proto, addr: SocketAddr, id: &str) {
    let (mut raw, code) = proto.connect(addr, id).await;
    assert_eq!(code, proto.busy(), "CONNACK code for {id} over the limit ({proto:?})");
    raw.expect_closed(WAIT).await;
}

/// Connects once a slot is free. A slot is given back when the broker has finished with the
/// old connection, just after it closes the socket, so refusals ("server busy") are retried
/// for a bounded time.
async fn connect_when_admitted(proto: Proto, addr: SocketAddr, id: &str) -> Raw {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (raw, code) = proto.connect(addr, id).await;
        if code == 0 {
            return raw;
        }
        assert_eq!(code, proto.busy(), "CONNACK code for {id}");
        assert!(tokio::time::Instant::now() < deadline, "{id} still refused {WAIT:?} after a slot was freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// limits.max_connections = 2: a third connection gets CONNACK 0x89 (MQTT 5) / 0x03 (3.1.1)
// and is closed; the limit counts connections open at once, so a freed slot is taken again.
#[tokio::test]
async fn max_connections_refuses_the_third_until_one_leaves() {
    let b = limits_broker("max_connections = 2");
    let first = Proto::V5.connected(b.addr(), "first").await;
    let second = Proto::V311.connected(b.addr(), "second").await;
    expect_busy(Proto::V5, b.addr(), "third-v5").await;
    expect_busy(Proto::V311, b.addr(), "third-v311").await;
    assert_logged(&b, "limits.max_connections reached", "refusal").await;

    Proto::V5.disconnect(first).await;
    let replacement = connect_when_admitted(Proto::V311, b.addr(), "replacement").await;
    // Full again.
    expect_busy(Proto::V5, b.addr(), "fourth").await;
    Proto::V311.disconnect(replacement).await;
    Proto::V311.disconnect(second).await;
}

// A listener's own max_connections = 1 refuses a second connection on that listener while
// the other listener (no limit of its own) still accepts.
#[tokio::test]
async fn listener_max_connections_applies_to_that_listener_only() {
    let toml = "[[listener]]\nbind = \"127.0.0.1:0\"\nmax_connections = 1\n\
                [[listener]]\nbind = \"127.0.0.1:0\"\n";
    let b = Broker::launch(Launch::config(toml).args(&[]));
    let addrs = b.listener_addrs();
    assert_eq!(addrs.len(), 2, "two listeners: {}", b.logs());
    let (limited, open) = (addrs[0], addrs[1]);

    let holder = Proto::V5.connected(limited, "holder").await;
    expect_busy(Proto::V5, limited, "second-v5").await;
    expect_busy(Proto::V311, limited, "second-v311").await;
    assert_logged(&b, "listener.max_connections reached", "refusal").await;
    let others = [Proto::V5.connected(open, "other-1").await, Proto::V311.connected(open, "other-2").await];

    Proto::V5.disconnect(holder).await;
    let next = connect_when_admitted(Proto::V5, limited, "next").await;
    Proto::V5.disconnect(next).await;
    let [o1, o2] = others;
    Proto::V5.disconnect(o1).await;
    Proto::V311.disconnect(o2).await;
}

// ---------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------

/// limits.max_subscriptions_per_client = 2: a third distinct filter is refused (0x97 / 0x80)
/// and not subscribed; re-subscribing a held filter is still granted; after an UNSUBSCRIBE
/// there is room again.
async fn subscription_limit(proto: Proto) {
    let b = limits_broker("max_subscriptions_per_client = 2");
    let quota = proto.refused(0x97);
    let mut c = proto.connected(b.addr(), "subscriber").await;
    assert_eq!(proto.subscribe(&mut c, 1, &["sub/a", "sub/b", "sub/c"]).await, vec![1, 1, quota]);
    assert_logged(&b, "limits.max_subscriptions_per_client (2) reached", "refusal").await;
    assert_eq!(proto.subscribe(&mut c, 2, &["sub/a"]).await, vec![1], "re-subscribing a held filter");
    assert_eq!(proto.subscribe(&mut c, 3, &["sub/+"]).await, vec![quota], "a new filter, alone");

    // sub/c was not subscribed: of "c" then "a" from one publisher, only "a" arrives.
    let mut publisher = proto.connected(b.addr(), "publisher").await;
    publisher.send(&proto.publish("sub/c", 0, 0, b"c")).await;
    publisher.send(&proto.publish("sub/a", 0, 0, b"a")).await;
    assert_eq!(proto.recv_publish(&mut c).await.1, b"a", "the refused filter must not deliver");

    let unsubscribe = match proto {
        Proto::V311 => pkt::unsubscribe(4, &["sub/b"]),
        Proto::V5 => v5::unsubscribe(4, &["sub/b"]),
    };
    c.send(&unsubscribe).await;
    let unsuback = c.recv().await;
    assert_eq!((unsuback.kind(), unsuback.pid()), (11, 4), "UNSUBACK: {unsuback:?}");
    assert_eq!(proto.subscribe(&mut c, 5, &["sub/c"]).await, vec![1], "room after UNSUBSCRIBE");
    proto.disconnect(publisher).await;
    proto.disconnect(c).await;
}

#[tokio::test]
async fn max_subscriptions_per_client_v5() {
    subscription_limit(Proto::V5).await;
}

#[tokio::test]
async fn max_subscriptions_per_client_v311() {
    subscription_limit(Proto::V311).await;
}

// ---------------------------------------------------------------------------------------
// Topic length and depth
// ---------------------------------------------------------------------------------------

const TOPIC_LIMITS: &str = "max_topic_length = 16\nmax_topic_levels = 3";
/// Exactly 16 bytes in 3 levels: within both limits.
const AT_LIMITS: &str = "abcd/efgh/ijklmn";
/// 17 bytes (2 levels): beyond max_topic_length.
const TOO_LONG: &str = "abcdefgh/ijklmnop";
/// 4 levels (7 bytes): beyond max_topic_levels.
const TOO_DEEP: &str = "a/b/c/d";

// A PUBLISH to a topic beyond max_topic_length or max_topic_levels closes the connection:
// MQTT 5 gets DISCONNECT 0x90 (Topic Name invalid) first, 3.1.1 nothing; the message is not
// routed; the reason is logged. A topic at the limits is delivered.
#[tokio::test]
async fn publish_beyond_topic_limits_closes_the_connection() {
    let b = limits_broker(TOPIC_LIMITS);
    let mut watcher = Proto::V311.connected(b.addr(), "watcher").await;
    assert_eq!(watcher.subscribe(1, &[("#", 0)]).await, vec![0]);

    for proto in [Proto::V5, Proto::V311] {
        for (topic, logged) in [(TOO_LONG, "limits.max_topic_length"), (TOO_DEEP, "limits.max_topic_levels")]
        {
            let id = format!("{proto:?}-{topic}");
            let mut c = proto.connected(b.addr(), &id).await;
            c.send(&proto.publish(topic, 1, 1, b"beyond")).await;
            match proto {
                Proto::V5 => c.expect_disconnect_reason(0x90, topic).await,
                Proto::V311 => c.expect_closed(WAIT).await,
            }
            // Logged on the offender's own line.
            let line = |l: &str| l.contains(&format!("client_id={id}")) && l.contains(logged);
            assert!(b.wait_log_line(line, WAIT).await, "{id}: no {logged:?} logged:\n{}", b.logs());
        }
        let mut ok = proto.connected(b.addr(), &format!("{proto:?}-within")).await;
        ok.send(&proto.publish(AT_LIMITS, 0, 0, format!("{proto:?}").as_bytes())).await;
        // Nothing beyond the limits was routed: the first message the watcher sees is this one.
        let m = watcher.recv_publish().await;
        assert_eq!((m.topic.as_str(), m.payload), (AT_LIMITS, format!("{proto:?}").into_bytes()));
        proto.disconnect(ok).await;
    }
    watcher.disconnect().await;
}

/// SUBSCRIBE filters beyond the topic limits are refused one by one (0x8F / 0x80) while the
/// others in the same packet are granted; the connection stays open; refusals are logged.
async fn subscribe_beyond_topic_limits(proto: Proto) {
    let b = limits_broker(TOPIC_LIMITS);
    let mut c = proto.connected(b.addr(), "subscriber").await;
    let invalid = proto.refused(0x8F);
    let filters = [TOO_LONG, AT_LIMITS, TOO_DEEP, "+/+/#", "a/b/c/#"];
    let codes = proto.subscribe(&mut c, 1, &filters).await;
    assert_eq!(codes, vec![invalid, 1, invalid, 1, invalid], "SUBACK for {filters:?}");
    assert_logged(&b, "subscription refused: topic longer than limits.max_topic_length", "length").await;
    assert_logged(&b, "subscription refused: topic deeper than limits.max_topic_levels", "levels").await;

    // The connection is still open and the granted filters deliver.
    c.send(&proto.publish(AT_LIMITS, 0, 0, b"at the limits")).await;
    assert_eq!(proto.recv_publish(&mut c).await, (AT_LIMITS.to_string(), b"at the limits".to_vec()));
    proto.disconnect(c).await;
}

#[tokio::test]
async fn subscribe_beyond_topic_limits_v5() {
    subscribe_beyond_topic_limits(Proto::V5).await;
}

#[tokio::test]
async fn subscribe_beyond_topic_limits_v311() {
    subscribe_beyond_topic_limits(Proto::V311).await;
}

// ---------------------------------------------------------------------------------------
// Publish rate
// ---------------------------------------------------------------------------------------

/// Sends `n` QoS 0 PUBLISH packets ("0", "1", ...) to `topic` in a single write: as fast as a
/// client can.
async fn publish_burst(c: &mut Raw, topic: &str, n: usize) {
    let burst: Vec<u8> =
        (0..n).flat_map(|i| pkt::publish(topic, 0, false, false, 0, i.to_string().as_bytes())).collect();
    c.send(&burst).await;
}

/// Receives `n` messages numbered 0..n in order; returns the time from the first to the last.
async fn receive_numbered(c: &mut Raw, n: usize) -> Duration {
    let mut first = None;
    for i in 0..n {
        let m = c.recv_publish().await;
        assert_eq!(m.payload, i.to_string().into_bytes(), "message {i} of {n}, in order");
        first.get_or_insert_with(Instant::now);
    }
    first.expect("n > 0").elapsed()
}

/// A PINGREQ/PINGRESP round trip: the connection is alive, and everything the broker did
/// for the packets sent before it is done.
async fn ping(c: &mut Raw) {
    c.send(&pkt::pingreq()).await;
    assert_eq!(c.recv().await.bytes(), [0xd0, 0x00], "PINGRESP");
}

// max_publish_rate = 20: 60 QoS 0 messages sent at once are all delivered, in order, but the
// broker reads them no faster than a burst of 20 then 20/s, so the last 40 take >= 2 s (1.5 s
// asserted; a lower bound the mechanism guarantees). The publisher is slowed, not dropped.
#[tokio::test]
async fn max_publish_rate_slows_a_fast_publisher_without_dropping() {
    let b = limits_broker("max_publish_rate = 20");
    let mut subscriber = Proto::V311.connected(b.addr(), "subscriber").await;
    assert_eq!(subscriber.subscribe(1, &[("rate/t", 0)]).await, vec![0]);
    let mut publisher = Proto::V311.connected(b.addr(), "fast").await;
    publish_burst(&mut publisher, "rate/t", 60).await;
    let spread = receive_numbered(&mut subscriber, 60).await;
    assert!(spread >= Duration::from_millis(1500), "60 messages at 20/s arrived within {spread:?}");
    assert_logged(&b, "limits.max_publish_rate reached", "throttling").await;
    ping(&mut publisher).await;
    publisher.disconnect().await;
    subscriber.disconnect().await;
}

// The rate is per client: two publishers of 15 messages each (30 together, over the rate of
// one) both stay within their own burst: everything arrives and the limit is never hit.
#[tokio::test]
async fn publishers_under_the_rate_are_not_throttled() {
    let b = limits_broker("max_publish_rate = 20");
    let mut subscribers = Vec::new();
    let mut publishers = Vec::new();
    for i in 0..2 {
        let topic = format!("rate/{i}");
        let mut s = Proto::V311.connected(b.addr(), &format!("subscriber-{i}")).await;
        assert_eq!(s.subscribe(1, &[(&topic, 0)]).await, vec![0]);
        subscribers.push((s, topic));
        publishers.push(Proto::V311.connected(b.addr(), &format!("publisher-{i}")).await);
    }
    for (p, (_, topic)) in publishers.iter_mut().zip(&subscribers) {
        publish_burst(p, topic, 15).await;
    }
    for (s, _) in &mut subscribers {
        receive_numbered(s, 15).await;
    }
    for p in &mut publishers {
        ping(p).await;
    }
    assert!(!b.logs().contains("limits.max_publish_rate"), "no throttling expected:\n{}", b.logs());
    for c in publishers.into_iter().chain(subscribers.into_iter().map(|(s, _)| s)) {
        c.disconnect().await;
    }
}

// ---------------------------------------------------------------------------------------
// Flow control: a full queue of a connected subscriber pauses its publishers
// ---------------------------------------------------------------------------------------

/// Reads PUBACKs for up to `d`; returns how many arrived.
async fn count_pubacks(c: &mut Raw, d: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + d;
    let mut n = 0;
    loop {
        match c.read(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            ReadOutcome::Packet(p) if p.kind() == 4 => n += 1,
            ReadOutcome::Packet(p) => panic!("publisher: unexpected {p:?}"),
            ReadOutcome::Timeout => return n,
            ReadOutcome::Closed(why) => panic!("publisher connection closed: {why}"),
        }
    }
}

// Issue 6 "no acknowledged message silently dropped": 200 QoS 1 messages pipelined at a
// subscriber that acknowledges nothing for a while, with max_queued_messages = 10 and an
// in-flight window of 2. The broker acknowledges only what fits (in flight, queued, and the
// flow-control headroom), then stops reading the publisher; once the subscriber acknowledges,
// the rest flows: all 200 PUBACKs, all 200 messages delivered once, in order.
#[tokio::test]
async fn full_subscriber_queue_pauses_the_publisher_instead_of_dropping() {
    let b = Broker::start_with("[mqtt]\nmax_queued_messages = 10\nmax_inflight_messages = 2\n");
    let mut sub = Raw::connected(b.addr(), "slow-sub", true).await;
    assert_eq!(sub.subscribe(1, &[("flow/t", 1)]).await, vec![1]);
    let mut publisher = Raw::connected(b.addr(), "fast-pub", true).await;
    let burst: Vec<u8> = (0..200u16)
        .flat_map(|i| pkt::publish("flow/t", 1, false, false, i + 1, i.to_string().as_bytes()))
        .collect();
    publisher.send(&burst).await;

    // The subscriber holds back its acknowledgements: the window (2) and twice the queue (20)
    // bound what the broker can take on; the publisher's other messages wait unread.
    let held = count_pubacks(&mut publisher, Duration::from_millis(800)).await;
    assert!(held <= 2 + 2 * 10, "{held} PUBACKs while the subscriber acknowledged nothing");
    assert!(!b.logs().contains("pending queue full"), "nothing dropped:\n{}", b.logs());

    let mut seqs = Vec::new();
    let mut acked = held;
    while seqs.len() < 200 {
        let m = sub.recv_publish().await;
        seqs.push(String::from_utf8(m.payload).unwrap().parse::<u16>().unwrap());
        sub.send(&pkt::puback(m.pid.unwrap())).await;
        acked += count_pubacks(&mut publisher, Duration::ZERO).await;
    }
    assert_eq!(seqs, (0..200).collect::<Vec<_>>(), "every message once, in order");
    acked += count_pubacks(&mut publisher, Duration::from_millis(300)).await;
    assert_eq!(acked, 200, "every message acknowledged to the publisher");
    sub.expect_nothing(QUIET).await;
}

// The policy for a connected subscriber that keeps reading holds at QoS 0 as well: 5,000 QoS 0
// messages pipelined at a subscriber that reads slowly, with max_queued_messages = 10, all
// arrive once, in order; nothing is dropped (the publisher is paused instead).
#[tokio::test]
async fn slow_but_reading_qos0_subscriber_loses_nothing() {
    let b = Broker::start_with("[mqtt]\nmax_queued_messages = 10\n");
    let mut sub = Raw::connected(b.addr(), "slow-q0-sub", true).await;
    assert_eq!(sub.subscribe(1, &[("slow/q0", 0)]).await, vec![0]);
    let mut publisher = Raw::connected(b.addr(), "fast-q0-pub", true).await;
    let burst: Vec<u8> = (0..5000u32)
        .flat_map(|i| pkt::publish("slow/q0", 0, false, false, 0, i.to_string().as_bytes()))
        .collect();
    publisher.send(&burst).await;
    for i in 0..5000u32 {
        let m = sub.recv_publish().await;
        assert_eq!(m.payload, i.to_string().as_bytes(), "message {i}: every one, in order");
        if i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    sub.expect_nothing(QUIET).await;
    assert!(!b.logs().contains("pending queue full"), "nothing dropped:\n{}", b.logs());
}

/// A subscriber that stops reading (it holds its socket and reads nothing) next to one that
/// reads: with `stall_interval_ms = 300`, the publisher's messages keep reaching the reader
/// (paused at most about the stall interval), the stalled one's queue overflows (logged), and
/// the broker's memory stays bounded by the queue limits.
async fn stalled_subscriber_does_not_stop_the_others(qos: u8) {
    let b = Broker::start_with("[mqtt]\nmax_queued_messages = 10\nstall_interval_ms = 300\n");
    let topic = format!("stall/q{qos}");
    let mut stalled = Raw::connected(b.addr(), &format!("stalled-{qos}"), true).await;
    assert_eq!(stalled.subscribe(1, &[(&topic, qos)]).await, vec![qos]);
    let mut reader = Raw::connected(b.addr(), &format!("reader-{qos}"), true).await;
    assert_eq!(reader.subscribe(1, &[(&topic, qos)]).await, vec![qos]);
    let mut publisher = Raw::connected(b.addr(), &format!("publisher-{qos}"), true).await;
    // 16 KiB payloads: enough to fill the stalled client's socket buffers many times over.
    let payload = vec![b'x'; 16 << 10];
    let count = 2000u16;
    let started = Instant::now();
    let sending = async {
        for i in 0..count {
            publisher.send(&pkt::publish(&topic, qos, false, false, i + 1, &payload)).await;
        }
    };
    let receiving = async {
        for _ in 0..count {
            let m = reader.recv_publish().await;
            if let Some(pid) = m.pid {
                reader.send(&pkt::puback(pid)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(sending, receiving) })
        .await
        .expect("the reading subscriber got every message");
    let took = started.elapsed();
    assert!(b.wait_log("treated as stalled", WAIT).await, "stall logged:\n{}", b.logs());
    assert!(b.logs().contains("pending queue full"), "the stalled subscriber's overflow logged");
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", b.pid()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
        })
        .unwrap();
    // 2,000 × 16 KiB = 31 MiB went through; the stalled queue may hold 2 × 10 messages.
    assert!(rss_kib < 64 * 1024, "peak broker RSS {rss_kib} KiB");
    eprintln!("QoS {qos}: {count} messages to the reader in {took:?}, peak RSS {rss_kib} KiB");
    drop(stalled);
}

#[tokio::test]
async fn stalled_qos0_subscriber_does_not_stop_the_others() {
    stalled_subscriber_does_not_stop_the_others(0).await;
}

#[tokio::test]
async fn stalled_qos1_subscriber_does_not_stop_the_others() {
    stalled_subscriber_does_not_stop_the_others(1).await;
}

// limits.max_incomplete_packet_bytes: two clients each start a 150 KiB PUBLISH while the budget
// holds only one. The second is not read until the first completes, then goes through: both
// are acknowledged, nothing is refused or dropped.
#[tokio::test]
async fn large_packets_wait_for_the_incomplete_packet_budget() {
    let b = Broker::start_with(
        "[mqtt]\nmax_packet_size = 200000\n[limits]\nmax_incomplete_packet_bytes = 200000\n",
    );
    let payload = vec![b'p'; 150_000];
    let first_packet = pkt::publish("big/1", 1, false, false, 1, &payload);
    let second_packet = pkt::publish("big/2", 1, false, false, 2, &payload);
    let mut first = Raw::connected(b.addr(), "big-first", true).await;
    let mut second = Raw::connected(b.addr(), "big-second", true).await;
    first.send(&first_packet[..first_packet.len() / 2]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    second.send(&second_packet).await;
    // The second is complete on the wire but not read: no PUBACK while the first holds the budget.
    assert!(
        matches!(second.read(QUIET).await, ReadOutcome::Timeout),
        "second read while the budget was spent"
    );
    first.send(&first_packet[first_packet.len() / 2..]).await;
    assert_eq!(first.recv().await.kind(), 4, "first PUBACK");
    assert_eq!(second.recv().await.kind(), 4, "second PUBACK once the first completed");
}
