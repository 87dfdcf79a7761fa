//! Area 10 (MQTT 5): Will Delay Interval, will at session end, DISCONNECT 0x04 / 0x00, will
//! properties.

use std::time::{Duration, Instant};

use client_tests::v5::{self, Connect, Props};
use client_tests::*;

/// A persistent v5 client (Session Expiry `expiry`) with a QoS 1 will on `topic` delayed by
/// `delay` seconds.
fn with_will(id: &str, topic: &str, delay: u32, expiry: u32) -> Connect {
    let wp =
        Props::new().with(v5::WILL_DELAY, delay).with_str(v5::CONTENT_TYPE, "text/plain").user("why", "gone");
    Connect::new(id).clean(false).session_expiry(expiry).will(topic, b"bye", 1, false, wp)
}

async fn observer(b: &Broker, filter: &str) -> Raw {
    let mut o = Raw::connected5(b.addr(), &unique("obs")).await;
    o.sub5(filter, 1).await;
    o
}

// [MQTT-3.1.2-8] §3.1.3.2.2: the will is published once the Will Delay Interval (1 s) has passed
// after an abnormal close, not before; its properties (here Content Type and a User Property)
// come with it, the Will Delay Interval itself does not (it is not a PUBLISH property).
#[tokio::test]
async fn will_sent_after_delay() {
    let b = Broker::start();
    let mut o = observer(&b, "wd/#").await;
    let (w, _) = Raw::handshake5(b.addr(), &with_will("wd", "wd/will", 1, 60)).await;
    let t = Instant::now();
    drop(w);
    o.expect_nothing(Duration::from_millis(700)).await;
    let m = o.recv_publish5().await;
    let e = t.elapsed();
    assert!(e >= Duration::from_millis(900), "will sent after {e:?}, before its 1 s delay");
    assert_eq!((m.topic.as_str(), &m.payload[..], m.qos), ("wd/will", &b"bye"[..], 1));
    assert_eq!(m.props.str(v5::CONTENT_TYPE), Some("text/plain"), "{:?}", m.props);
    assert_eq!(m.props.users(), vec![("why".to_string(), "gone".to_string())]);
    assert!(!m.props.has(v5::WILL_DELAY), "Will Delay Interval is not a PUBLISH property");
    o.send(&v5::puback(m.pid.unwrap())).await;
    o.expect_nothing(QUIET).await;
}

// [MQTT-3.1.2-26] [MQTT-3.1.2-8]: reconnecting to the session (same client id, Clean Start 0)
// before the Will Delay Interval has passed cancels the will.
#[tokio::test]
async fn will_not_sent_if_reconnected_within_delay() {
    let b = Broker::start();
    let mut o = observer(&b, "wr/#").await;
    let c = with_will("wr", "wr/will", 2, 60);
    let (w, _) = Raw::handshake5(b.addr(), &c).await;
    drop(w);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (w, ack) = Raw::handshake5(b.addr(), &c).await;
    assert!(ack.session_present);
    o.expect_nothing(Duration::from_millis(2700)).await; // past the original 2 s delay
    w.disconnect5().await; // 0x00: the new will is discarded too [MQTT-3.14.4-3]
    o.expect_nothing(Duration::from_millis(2500)).await;
}

// [MQTT-3.1.2-8]: the will is published when the session ends if that comes before the Will
// Delay Interval (Session Expiry 1 s, Will Delay 30 s).
#[tokio::test]
async fn will_sent_at_session_expiry_before_delay() {
    let b = Broker::start();
    let mut o = observer(&b, "we/#").await;
    let (w, _) = Raw::handshake5(b.addr(), &with_will("we", "we/will", 30, 1)).await;
    let t = Instant::now();
    drop(w);
    let m = o.recv_publish5().await;
    let e = t.elapsed();
    assert_eq!(m.topic, "we/will");
    assert!(e >= Duration::from_millis(900) && e < Duration::from_secs(4), "will after {e:?}");
}

// §3.14.2.1: DISCONNECT with reason 0x04 (Disconnect with Will Message) publishes the will.
#[tokio::test]
async fn disconnect_0x04_sends_will() {
    let b = Broker::start();
    let mut o = observer(&b, "w4/#").await;
    let (w, _) = Raw::handshake5(b.addr(), &with_will("w4", "w4/will", 0, 0)).await;
    w.disconnect_with(0x04, &Props::new()).await;
    let m = o.recv_publish5().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("w4/will", &b"bye"[..]));
}

// [MQTT-3.14.4-3] [MQTT-3.1.2-10]: DISCONNECT 0x00 discards the will (checked past its delay).
#[tokio::test]
async fn disconnect_0x00_discards_will() {
    let b = Broker::start();
    let mut o = observer(&b, "w0/#").await;
    let (w, _) = Raw::handshake5(b.addr(), &with_will("w0", "w0/will", 0, 0)).await;
    w.disconnect5().await;
    o.expect_nothing(Duration::from_millis(1000)).await;
    let (w, _) = Raw::handshake5(b.addr(), &with_will("w0d", "w0/will", 1, 60)).await;
    w.disconnect5().await;
    o.expect_nothing(Duration::from_millis(1800)).await;
}
