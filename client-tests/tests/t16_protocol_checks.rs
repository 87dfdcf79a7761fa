//! Area 16: protocol checks at the edges of the spec: malformed CONNECT strings and framing,
//! values the spec allows that a decoder may refuse, MQTT 3.1's CONNACK, the client's Maximum
//! Packet Size applied to CONNACK, Subscription Identifiers of overlapping subscriptions, and
//! the will of a connection that is taken over.

use std::time::Duration;

use client_tests::v5::{self, Props};
use client_tests::*;

fn connect_with(f: impl FnOnce(&mut pkt::Connect)) -> Vec<u8> {
    let mut c = pkt::Connect::new("edge");
    f(&mut c);
    c.encode()
}

/// `connect` (an encoded CONNECT with a one-byte remaining length) with one more byte after
/// its last field.
fn with_trailing_byte(connect: Vec<u8>) -> Vec<u8> {
    assert_eq!(usize::from(connect[1]) + 2, connect.len(), "one-byte remaining length");
    let mut body = connect[2..].to_vec();
    body.push(0);
    pkt::packet(0x10, &body)
}

bad_input_tests! {
    // [MQTT-1.5.3-2]: a UTF-8 string must not include U+0000; the connection is closed
    // without CONNACK [MQTT-3.1.4-1].
    u0000_in_client_id_closed: connected = false, bytes = connect_with(|c| c.client_id = b"a\0b".to_vec());
    u0000_in_user_name_closed: connected = false, bytes = connect_with(|c| c.username = Some(b"u\0".to_vec()));
    // [MQTT-3.1.3-1] [MQTT-3.1.4-1]: the payload is exactly the fields the flags announce.
    connect_trailing_byte_closed: connected = false, bytes = with_trailing_byte(connect_with(|_| {}));
    connect_trailing_byte_after_password_closed: connected = false, bytes = with_trailing_byte(connect_with(|c| {
        c.will = Some(pkt::Will { topic: b"w".to_vec(), payload: b"x".to_vec(), qos: 1, retain: false });
        c.username = Some(b"u".to_vec());
        c.password = Some(b"p".to_vec());
    }));
}

/// Sends an MQTT 5 CONNECT and expects the connection closed without CONNACK: a malformed
/// CONNECT is answered by closing [MQTT-3.1.4-1] (the CONNACK 0x81 the spec allows is not sent,
/// as for every other malformed CONNECT and as 3.1.1 requires).
async fn expect_v5_connect_closed(b: &Broker, connect: &[u8]) {
    let mut r = Raw::connect(b.addr()).await;
    r.send_lenient(connect).await;
    r.expect_closed(WAIT).await;
    assert_broker_alive(b.addr()).await;
}

// [MQTT-1.5.4-2]: U+0000 in the client identifier or the user name is a Malformed Packet.
#[tokio::test]
async fn v5_u0000_in_client_id_or_user_name_closed() {
    let b = Broker::start();
    expect_v5_connect_closed(&b, &v5::Connect::new("a\0b").encode()).await;
    let mut c = v5::Connect::new("named");
    c.username = Some("u\0".into());
    expect_v5_connect_closed(&b, &c.encode()).await;
}

// [MQTT-3.1.3-1] [MQTT-3.1.4-1]: MQTT 5 CONNECT with a byte after its last field.
#[tokio::test]
async fn v5_connect_trailing_byte_closed() {
    let b = Broker::start();
    let c = v5::Connect::new("trail").session_expiry(10);
    expect_v5_connect_closed(&b, &with_trailing_byte(c.encode())).await;
}

// §3.3.2.3.3: the Message Expiry Interval is "the lifetime of the Application Message in
// seconds"; 0 is a valid value, not a Malformed Packet. Tern reads it as Mosquitto does: as
// if absent (the message does not expire, and is forwarded without the property); a retained
// message with it stays.
#[tokio::test]
async fn message_expiry_zero_accepted_as_no_expiry() {
    let b = Broker::start();
    let mut s = Raw::connected5(b.addr(), "mx0-s").await;
    s.sub5("mx0/#", 1).await;
    let mut p = Raw::connected5(b.addr(), "mx0-p").await;
    let zero = Props::new().with(v5::MESSAGE_EXPIRY, 0).with_str(v5::CONTENT_TYPE, "text/plain");
    assert_eq!(p.publish5_flow("mx0/t", 1, true, 1, &zero, b"zero").await, 0x00);
    let m = s.recv_publish5().await;
    assert_eq!(&m.payload[..], b"zero");
    assert!(!m.props.has(v5::MESSAGE_EXPIRY), "{:?}", m.props);
    assert_eq!(m.props.str(v5::CONTENT_TYPE), Some("text/plain"), "other properties kept");
    s.send(&v5::puback(m.pid.unwrap())).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut late = Raw::connected5(b.addr(), "mx0-late").await;
    late.sub5("mx0/#", 1).await;
    let m = late.recv_publish5().await;
    assert_eq!((&m.payload[..], m.retain), (&b"zero"[..], true), "retained, not expired");
}

// The same for a will's Message Expiry Interval (§3.1.3.2.4): CONNECT is accepted and the will
// is published without it.
#[tokio::test]
async fn will_message_expiry_zero_accepted() {
    let b = Broker::start();
    let mut o = Raw::connected5(b.addr(), "wx0-o").await;
    o.sub5("wx0/#", 0).await;
    let c =
        v5::Connect::new("wx0").will("wx0/will", b"gone", 0, false, Props::new().with(v5::MESSAGE_EXPIRY, 0));
    let (w, _) = Raw::handshake5(b.addr(), &c).await;
    drop(w);
    let m = o.recv_publish5().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("wx0/will", &b"gone"[..]));
    assert!(!m.props.has(v5::MESSAGE_EXPIRY), "{:?}", m.props);
}

// [MQTT-3.1.2-24]: the server must not send a packet larger than the client's Maximum Packet
// Size, and a CONNACK cannot be left out: the connection is closed without one. It is refused
// before it claims the client id, so a connected client with that id is not taken over.
#[tokio::test]
async fn connack_larger_than_client_maximum_packet_size_closes() {
    let b = Broker::start();
    let mut first = Raw::connected5(b.addr(), "mps").await;
    let tiny = v5::Connect::new("mps").prop(v5::MAXIMUM_PACKET_SIZE, 8);
    let mut r = Raw::connect(b.addr()).await;
    r.send(&tiny.encode()).await;
    r.expect_closed(WAIT).await;
    first.expect_nothing(QUIET).await;
    first.sub5("mps/t", 0).await;
    // A limit the CONNACK fits in is fine.
    let (r, ack) =
        Raw::handshake5(b.addr(), &v5::Connect::new("mps-ok").prop(v5::MAXIMUM_PACKET_SIZE, 64)).await;
    assert_eq!(ack.reason, 0);
    r.disconnect5().await;
}

// MQTT 3.1 (section 3.2 of its spec): CONNACK's first byte is reserved, so it carries no
// session-present flag even when the session is resumed (it is: the queued message arrives).
#[tokio::test]
async fn mqtt31_connack_has_no_session_present_flag() {
    let b = Broker::start();
    let c = pkt::Connect::new("p31").mqisdp().clean(false);
    let mut r = Raw::connect(b.addr()).await;
    r.send(&c.encode()).await;
    assert_eq!(r.recv().await.bytes(), vec![0x20, 0x02, 0x00, 0x00]);
    assert_eq!(r.subscribe(1, &[("p31/t", 1)]).await, vec![1]);
    r.disconnect().await;
    let mut p = Raw::connected(b.addr(), "p31-pub", true).await;
    p.publish_flow("p31/t", 1, false, 1, b"queued").await;
    let mut r = Raw::connect(b.addr()).await;
    r.send(&c.encode()).await;
    assert_eq!(r.recv().await.bytes(), vec![0x20, 0x02, 0x00, 0x00], "byte 1 reserved in 3.1");
    assert_eq!(r.recv_publish().await.payload, b"queued", "the session was resumed");
}

// MQTT 3.1: a client identifier is 1 to 23 characters; an empty one is refused with CONNACK
// return code 2 (identifier rejected), then the connection is closed.
#[tokio::test]
async fn mqtt31_empty_client_id_rejected() {
    let b = Broker::start();
    let mut r = Raw::connect(b.addr()).await;
    r.send(&pkt::Connect::new("").mqisdp().encode()).await;
    assert_eq!(r.recv().await.bytes(), vec![0x20, 0x02, 0x00, 0x02]);
    r.expect_closed(WAIT).await;
}

// [MQTT-3.3.4-4]: a message matching several subscriptions of one client that share a
// Subscription Identifier (one SUBSCRIBE for "dd/#" and "dd/+") carries that identifier once.
#[tokio::test]
async fn identifier_of_overlapping_subscriptions_carried_once() {
    let b = Broker::start();
    let mut s = Raw::connected5(b.addr(), "dd").await;
    let id5 = Props::new().with(v5::SUBSCRIPTION_ID, 5);
    assert_eq!(s.subscribe5(1, &id5, &[("dd/#", 0), ("dd/+", 0)]).await, vec![0, 0]);
    let mut p = Raw::connected5(b.addr(), "dd-p").await;
    p.publish5_flow("dd/x", 0, false, 0, &Props::new(), b"once").await;
    let m = s.recv_publish5().await;
    assert_eq!(m.props.count(v5::SUBSCRIPTION_ID), 1, "{:?}", m.props);
    assert_eq!(m.props.sub_ids(), vec![5]);
    s.expect_nothing(QUIET).await;
}

async fn will_watcher(b: &Broker, filter: &str) -> Raw {
    let mut w = Raw::connected(b.addr(), &unique("watcher"), true).await;
    assert_eq!(w.subscribe(1, &[(filter, 0)]).await, vec![0]);
    w
}

// Takeover of a persistent session by a connection that resumes it (3.1.1, clean session 0
// both times): the will is not published. The client is back, and its new connection was
// made before the old one closed, so before any will delay, even 0, had passed
// [MQTT-3.1.3-9]; the session goes on. Mosquitto does the same.
#[tokio::test]
async fn will_not_published_when_persistent_session_taken_over() {
    let b = Broker::start();
    let mut w = will_watcher(&b, "tw/#").await;
    let c = pkt::Connect::new("tw").clean(false);
    let (mut old, _) = Raw::handshake(b.addr(), &c.clone().will("tw/will", b"old", 0, false)).await;
    let (new, present) = Raw::handshake(b.addr(), &c).await;
    assert!(present);
    old.expect_closed(WAIT).await;
    w.expect_nothing(Duration::from_millis(1000)).await;
    new.disconnect().await;
}

// MQTT 5, Session Expiry > 0 and no Will Delay: a resuming takeover (Clean Start 0) sends the
// old connection DISCONNECT 0x8E and does not publish its will.
#[tokio::test]
async fn v5_will_not_published_when_session_resumed_by_takeover() {
    let b = Broker::start();
    let mut w = will_watcher(&b, "tw5/#").await;
    let c = v5::Connect::new("tw5").clean(false).session_expiry(60);
    let (mut old, _) =
        Raw::handshake5(b.addr(), &c.clone().will("tw5/will", b"old", 0, false, Props::new())).await;
    let (new, ack) = Raw::handshake5(b.addr(), &c).await;
    assert!(ack.session_present);
    old.expect_disconnect_reason(0x8E, "session taken over").await;
    w.expect_nothing(Duration::from_millis(1000)).await;
    new.disconnect5().await;
}

// A takeover with Clean Start 1 ends the old session, and the will goes when the session ends
// [MQTT-3.1.2-8], whatever its delay (here 30 s).
#[tokio::test]
async fn v5_will_published_when_clean_start_takeover_ends_the_session() {
    let b = Broker::start();
    let mut w = will_watcher(&b, "tc5/#").await;
    let c = v5::Connect::new("tc5").clean(false).session_expiry(60);
    let delayed = Props::new().with(v5::WILL_DELAY, 30);
    let (mut old, _) =
        Raw::handshake5(b.addr(), &c.clone().will("tc5/will", b"old", 0, false, delayed)).await;
    let (new, ack) = Raw::handshake5(b.addr(), &c.clean(true)).await;
    assert!(!ack.session_present);
    old.expect_disconnect_reason(0x8E, "session taken over").await;
    assert_eq!(w.recv_publish().await.payload, b"old");
    new.disconnect5().await;
}

// The same when the session was offline with its will waiting for the delay: a Clean Start
// connection ends the session, so the will goes at once instead of being cancelled.
#[tokio::test]
async fn v5_pending_will_published_when_clean_start_ends_the_offline_session() {
    let b = Broker::start();
    let mut w = will_watcher(&b, "to5/#").await;
    let c = v5::Connect::new("to5").clean(false).session_expiry(60);
    let delayed = Props::new().with(v5::WILL_DELAY, 30);
    let (old, _) = Raw::handshake5(b.addr(), &c.clone().will("to5/will", b"old", 0, false, delayed)).await;
    drop(old);
    w.expect_nothing(QUIET).await;
    let (new, _) = Raw::handshake5(b.addr(), &c.clean(true)).await;
    assert_eq!(w.recv_publish().await.payload, b"old");
    new.disconnect5().await;
}
