//! Area 05: will messages: published on abnormal disconnect only, with QoS and retain honoured.

use std::time::Duration;

use client_tests::pkt::Connect;
use client_tests::*;

async fn watcher(b: &Broker, filter: &str) -> Raw {
    let mut w = Raw::connected(b.addr(), &unique("watcher"), true).await;
    assert_eq!(w.subscribe(1, &[(filter, 2)]).await, vec![2]);
    w
}

// [MQTT-3.1.2-8] the will is published when the network connection is closed without DISCONNECT.
#[tokio::test]
async fn will_published_on_socket_drop() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let (r, _) = Raw::handshake(b.addr(), &Connect::new("dying").will("will/dying", b"gone", 0, false)).await;
    drop(r);
    let m = w.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice(), m.qos, m.retain),
        ("will/dying", &b"gone"[..], 0, false)
    );
    w.expect_nothing(QUIET).await;
}

// rumqttc's last will, dropped connection.
#[tokio::test]
async fn will_published_on_socket_drop_rumqttc() {
    let b = Broker::start();
    let mut w = Mqtt::connect(opts(&b, "w")).await;
    w.subscribe("will/#", 1).await;
    let mut o = opts(&b, "dying");
    o.set_last_will(rumqttc::LastWill::new("will/r", "bye", rumqttc::QoS::AtLeastOnce, false));
    let c = Mqtt::connect(o).await;
    c.drop_connection().await;
    let m = w.recv().await;
    assert_eq!((m.topic.as_str(), &m.payload[..], qos_num(m.qos)), ("will/r", &b"bye"[..], 1));
}

// [MQTT-3.1.2-8] keepalive expiry (1.5 x 1 s) closes the connection and publishes the will.
#[tokio::test]
async fn will_published_on_keepalive_timeout() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let (mut r, _) = Raw::handshake(
        b.addr(),
        &Connect::new("silent").keepalive(1).will("will/silent", b"timeout", 1, false),
    )
    .await;
    let m = w.recv_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice(), m.qos), ("will/silent", &b"timeout"[..], 1));
    w.send(&pkt::puback(m.pid.unwrap())).await;
    r.expect_closed(Duration::from_secs(1)).await;
}

// [MQTT-3.1.2-8] a protocol error (here: PUBLISH QoS 3) closes the connection and publishes the will.
#[tokio::test]
async fn will_published_on_protocol_error() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let (mut r, _) =
        Raw::handshake(b.addr(), &Connect::new("bad").will("will/bad", b"violation", 0, false)).await;
    r.send_lenient(&pkt::packet(0x36, &[0, 1, b'x', 0, 1])).await;
    r.expect_closed(Duration::from_secs(3)).await;
    let m = w.recv_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice()), ("will/bad", &b"violation"[..]));
}

// [MQTT-3.1.2-10] [MQTT-3.14.4-3] DISCONNECT deletes the will: it is never published.
#[tokio::test]
async fn will_not_published_after_disconnect() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let (mut r, _) =
        Raw::handshake(b.addr(), &Connect::new("polite").will("will/polite", b"no", 1, true)).await;
    r.send(&pkt::disconnect()).await;
    r.expect_closed(WAIT).await;
    w.expect_nothing(Duration::from_millis(1000)).await;
    // Nor retained.
    let mut w2 = watcher(&b, "will/#").await;
    w2.expect_nothing(QUIET).await;
}

// Same with rumqttc's DISCONNECT.
#[tokio::test]
async fn will_not_published_after_disconnect_rumqttc() {
    let b = Broker::start();
    let mut w = Mqtt::connect(opts(&b, "w")).await;
    w.subscribe("will/#", 1).await;
    let mut o = opts(&b, "polite");
    o.set_last_will(rumqttc::LastWill::new("will/r", "bye", rumqttc::QoS::AtLeastOnce, false));
    let c = Mqtt::connect(o).await;
    c.disconnect().await;
    assert!(w.recv_timeout(Duration::from_millis(1000)).await.is_none(), "will published after DISCONNECT");
}

// [MQTT-3.1.2-16] [MQTT-3.1.2-17] will retain honoured; will QoS honoured (downgraded to the
// subscription's QoS on delivery [MQTT-3.8.4-6]).
#[tokio::test]
async fn will_qos_and_retain_honoured() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    for (q, retain) in [(0u8, false), (1, false), (2, true)] {
        let topic = format!("will/q{q}");
        let (r, _) =
            Raw::handshake(b.addr(), &Connect::new(&format!("w{q}")).will(&topic, b"w", q, retain)).await;
        drop(r);
        let m = w.recv_publish().await;
        assert_eq!((m.topic.as_str(), m.qos, m.retain), (topic.as_str(), q, false));
        match q {
            1 => w.send(&pkt::puback(m.pid.unwrap())).await,
            2 => {
                w.send(&pkt::pubrec(m.pid.unwrap())).await;
                assert_eq!(w.recv().await.bytes(), pkt::pubrel(m.pid.unwrap()));
                w.send(&pkt::pubcomp(m.pid.unwrap())).await;
            }
            _ => {}
        }
    }
    // Only the retained will (QoS 2) is delivered to a new subscriber, RETAIN=1.
    let mut late = Raw::connected(b.addr(), "late", true).await;
    late.subscribe(1, &[("will/#", 1)]).await;
    let m = late.recv_publish().await;
    assert_eq!((m.topic.as_str(), m.qos, m.retain), ("will/q2", 1, true));
    late.send(&pkt::puback(m.pid.unwrap())).await;
    late.expect_nothing(QUIET).await;
}

// [MQTT-3.1.2-8] [MQTT-3.1.4-2] when a session is taken over, the old network connection is
// closed by the server without a DISCONNECT from its client: its will is published.
#[tokio::test]
async fn will_published_when_connection_taken_over() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let (mut old, _) =
        Raw::handshake(b.addr(), &Connect::new("twin").will("will/twin", b"old", 0, false)).await;
    let (new, _) = Raw::handshake(b.addr(), &Connect::new("twin")).await;
    old.expect_closed(WAIT).await;
    let m = w.recv_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.as_slice()), ("will/twin", &b"old"[..]));
    new.disconnect().await;
    w.expect_nothing(QUIET).await;
}

// The will message goes to `$`-free wildcard subscribers like any other message and is
// delivered once per subscriber.
#[tokio::test]
async fn will_delivered_to_several_subscribers() {
    let b = Broker::start();
    let mut w1 = watcher(&b, "will/#").await;
    let mut w2 = watcher(&b, "will/+").await;
    let mut w3 = watcher(&b, "#").await;
    let (r, _) = Raw::handshake(b.addr(), &Connect::new("fan").will("will/fan", b"x", 0, false)).await;
    drop(r);
    for w in [&mut w1, &mut w2, &mut w3] {
        assert_eq!(w.recv_publish().await.topic, "will/fan");
        w.expect_nothing(QUIET).await;
    }
}

// A DISCONNECT with a non-zero remaining length is malformed, not a normal disconnect: the
// connection is closed as a protocol error and the will IS published [MQTT-3.1.2-8].
#[tokio::test]
async fn will_published_after_malformed_disconnect() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let (mut r, _) = Raw::handshake(b.addr(), &Connect::new("md").will("will/md", b"x", 0, false)).await;
    r.send_lenient(&[0xe0, 0x01, 0x00]).await;
    r.expect_closed(Duration::from_secs(3)).await;
    assert_eq!(w.recv_publish().await.topic, "will/md");
}

// A second CONNECT is a protocol violation [MQTT-3.1.0-2]: closed, will published.
#[tokio::test]
async fn will_published_after_second_connect() {
    let b = Broker::start();
    let mut w = watcher(&b, "will/#").await;
    let (mut r, _) =
        Raw::handshake(b.addr(), &Connect::new("twice").will("will/twice", b"x", 0, false)).await;
    r.send_lenient(&Connect::new("twice").encode()).await;
    r.expect_closed(Duration::from_secs(3)).await;
    assert_eq!(w.recv_publish().await.topic, "will/twice");
}

// A retained will with an empty payload is a normal retained publication: it clears the
// retained message of its topic [MQTT-3.1.2-17] [MQTT-3.3.1-10] [MQTT-3.3.1-11].
#[tokio::test]
async fn retained_empty_will_clears_retained_message() {
    let b = Broker::start();
    let mut p = Raw::connected(b.addr(), "rp", true).await;
    p.publish_flow("will/status", 1, true, 1, b"online").await;
    let mut w = watcher(&b, "will/#").await;
    let m = w.recv_publish().await;
    assert_eq!((m.payload.as_slice(), m.retain), (&b"online"[..], true));
    w.send(&pkt::puback(m.pid.unwrap())).await;
    let (r, _) = Raw::handshake(b.addr(), &Connect::new("ew").will("will/status", b"", 1, true)).await;
    drop(r);
    let m = w.recv_publish().await;
    assert_eq!((m.topic.as_str(), m.payload.len(), m.retain), ("will/status", 0, false));
    w.send(&pkt::puback(m.pid.unwrap())).await;
    let mut late = watcher(&b, "will/#").await;
    late.expect_nothing(QUIET).await;
}
