//! Area 10 (MQTT 5): CONNECT/CONNACK properties, assigned client identifiers, keep-alive,
//! session expiry, clean start, takeover and the DISCONNECT reason codes the server sends.
//!
//! Raw sockets throughout (`client_tests::v5`), so reason codes and properties are checked
//! byte-exactly.

use std::time::{Duration, Instant};

use client_tests::v5::{self, Connect, Props};
use client_tests::*;

/// A v5 client with a persistent session of `expiry` seconds.
fn persistent(id: &str, expiry: u32) -> Connect {
    Connect::new(id).clean(false).session_expiry(expiry)
}

// [MQTT-3.2.2-9] [MQTT-3.1.2-27]: CONNACK with the default configuration: Maximum Packet Size
// and Topic Alias Maximum present; Receive Maximum (65535), Maximum QoS (2) and the
// *Available flags (all true) omitted, since absence means exactly those values
// (§3.2.2.3.3, .4, .5, .11-.13); no Assigned Client Identifier for a non-empty id.
#[tokio::test]
async fn connack_properties_default() {
    let b = Broker::start();
    let (r, ack) = Raw::handshake5(b.addr(), &Connect::new("defaults")).await;
    let p = &ack.props;
    assert!(!ack.session_present);
    assert_eq!(p.num(v5::MAXIMUM_PACKET_SIZE), Some(16 << 20), "{p:?}");
    assert_eq!(p.num(v5::TOPIC_ALIAS_MAXIMUM), Some(10), "{p:?}");
    assert_eq!(p.num(v5::RECEIVE_MAXIMUM).unwrap_or(65535), 65535, "{p:?}");
    for id in [
        v5::MAXIMUM_QOS,
        v5::RETAIN_AVAILABLE,
        v5::WILDCARD_AVAILABLE,
        v5::SUBSCRIPTION_ID_AVAILABLE,
        v5::SHARED_AVAILABLE,
        v5::ASSIGNED_CLIENT_ID,
        v5::SERVER_KEEP_ALIVE,
        v5::AUTH_METHOD,
    ] {
        assert!(!p.has(id), "property {id:#04x} not expected in {p:?}");
    }
    for (id, _) in &p.0 {
        assert!(p.count(*id) == 1 || *id == v5::USER_PROPERTY, "property {id:#04x} more than once");
    }
    r.disconnect5().await;
}

// Each configured limit is advertised in CONNACK (§3.2.2.3): Receive Maximum, Maximum Packet
// Size, Topic Alias Maximum (0: absent or 0 [MQTT-3.2.2-18]), Maximum QoS [MQTT-3.2.2-9],
// Retain/Wildcard/Subscription Identifier/Shared Subscription Available = 0.
#[tokio::test]
async fn connack_properties_configured() {
    let b = Broker::start_with(
        "[mqtt]\nreceive_maximum = 7\nmax_packet_size = 2000\ntopic_alias_maximum = 0\nmaximum_qos = 1\n\
         retain_available = false\nwildcard_subscription_available = false\n\
         subscription_identifiers_available = false\nshared_subscription_available = false\n",
    );
    let (r, ack) = Raw::handshake5(b.addr(), &Connect::new("configured")).await;
    let p = &ack.props;
    assert_eq!(p.num(v5::RECEIVE_MAXIMUM), Some(7), "{p:?}");
    assert_eq!(p.num(v5::MAXIMUM_PACKET_SIZE), Some(2000), "{p:?}");
    assert_eq!(p.num(v5::TOPIC_ALIAS_MAXIMUM).unwrap_or(0), 0, "{p:?}");
    assert_eq!(p.num(v5::MAXIMUM_QOS), Some(1), "{p:?}");
    assert_eq!(p.num(v5::RETAIN_AVAILABLE), Some(0), "{p:?}");
    assert_eq!(p.num(v5::WILDCARD_AVAILABLE), Some(0), "{p:?}");
    assert_eq!(p.num(v5::SUBSCRIPTION_ID_AVAILABLE), Some(0), "{p:?}");
    assert_eq!(p.num(v5::SHARED_AVAILABLE), Some(0), "{p:?}");
    r.disconnect5().await;
}

// Maximum QoS 0 is advertised too [MQTT-3.2.2-9].
#[tokio::test]
async fn connack_maximum_qos_zero() {
    let b = Broker::start_with("[mqtt]\nmaximum_qos = 0\n");
    let (r, ack) = Raw::handshake5(b.addr(), &Connect::new("q0")).await;
    assert_eq!(ack.props.num(v5::MAXIMUM_QOS), Some(0), "{:?}", ack.props);
    r.disconnect5().await;
}

// [MQTT-3.1.3-6] [MQTT-3.1.3-7] [MQTT-3.2.2-16]: an empty client id gets a unique Assigned Client
// Identifier in CONNACK.
#[tokio::test]
async fn assigned_client_identifier() {
    let b = Broker::start();
    let (r1, a1) = Raw::handshake5(b.addr(), &Connect::new("")).await;
    let id1 = a1.props.str(v5::ASSIGNED_CLIENT_ID).expect("Assigned Client Identifier").to_string();
    let (r2, a2) = Raw::handshake5(b.addr(), &Connect::new("")).await;
    let id2 = a2.props.str(v5::ASSIGNED_CLIENT_ID).expect("Assigned Client Identifier").to_string();
    assert!(!id1.is_empty());
    assert_ne!(id1, id2, "assigned identifiers are unique [MQTT-3.2.2-16]");
    r1.disconnect5().await;
    r2.disconnect5().await;
}

// [MQTT-3.1.3-8]: a Server MAY refuse an empty ClientID; Tern assigns one only with Clean Start 1
// (the decoder refuses the other case), answering CONNACK 0x85 Client Identifier not valid.
#[tokio::test]
async fn empty_client_identifier_with_clean_start_0_is_refused() {
    let b = Broker::start();
    let mut r = Raw::connect(b.addr()).await;
    r.send(&persistent("", 300).encode()).await;
    let ack = r.recv().await.bytes();
    assert_eq!(ack[0], 0x20);
    assert_eq!(ack[3], 0x85, "CONNACK reason {:#04x}", ack[3]);
    r.expect_closed(WAIT).await;
}

// [MQTT-3.2.2-21] [MQTT-3.1.2-24]: max_keep_alive_secs caps the client's Keep Alive with a
// Server Keep Alive in CONNACK, and the broker enforces the capped value: a silent client is
// disconnected with 0x8D (Keep Alive timeout) within 1.5 × 1 s (plus scheduling slack).
#[tokio::test]
async fn server_keep_alive_caps_and_is_enforced() {
    let b = Broker::start_with("[mqtt]\nmax_keep_alive_secs = 1\n");
    let (mut r, ack) = Raw::handshake5(b.addr(), &Connect::new("ka").keepalive(60)).await;
    assert_eq!(ack.props.num(v5::SERVER_KEEP_ALIVE), Some(1), "{:?}", ack.props);
    let t = Instant::now();
    r.expect_disconnect_reason(0x8D, "keep-alive timeout").await;
    let e = t.elapsed();
    assert!(e >= Duration::from_millis(1000) && e < Duration::from_millis(4000), "disconnected after {e:?}");

    // Keep Alive 0 (no keep-alive) is capped as well (Tern policy).
    let (r, ack) = Raw::handshake5(b.addr(), &Connect::new("ka0").keepalive(0)).await;
    assert_eq!(ack.props.num(v5::SERVER_KEEP_ALIVE), Some(1), "{:?}", ack.props);
    drop(r);
}

// [MQTT-3.2.2-22]: without a cap there is no Server Keep Alive and the client's own value
// applies; the broker disconnects with 0x8D after 1.5 × Keep Alive of silence [MQTT-3.1.2-24],
// and not before the Keep Alive has passed; a client that pings stays connected.
#[tokio::test]
async fn keep_alive_timeout_0x8d() {
    let b = Broker::start();
    let (mut r, ack) = Raw::handshake5(b.addr(), &Connect::new("ka").keepalive(1)).await;
    assert!(!ack.props.has(v5::SERVER_KEEP_ALIVE), "{:?}", ack.props);
    let (mut pinger, _) = Raw::handshake5(b.addr(), &Connect::new("pinger").keepalive(1)).await;
    let t = Instant::now();
    let ping = async {
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            pinger.send(&pkt::pingreq()).await;
            assert_eq!(pinger.recv().await.header, 0xd0, "PINGRESP [MQTT-3.12.4-1]");
        }
    };
    let watch = async {
        r.expect_disconnect_reason(0x8D, "keep-alive timeout").await;
        t.elapsed()
    };
    let ((), e) = tokio::join!(ping, watch);
    assert!(e >= Duration::from_millis(1000) && e < Duration::from_millis(4000), "disconnected after {e:?}");
    pinger.disconnect5().await;
}

// [MQTT-3.1.2-25] [MQTT-4.1.0-2]: a session with Session Expiry 1 s is kept while offline, then
// discarded once the interval has passed: the subscription is gone (a QoS 1 PUBLISH then gets
// PUBACK 0x10 No matching subscribers) and a reconnect gets Session Present 0.
#[tokio::test]
async fn session_expiry_removes_session() {
    let b = Broker::start();
    let (mut s, _) = Raw::handshake5(b.addr(), &persistent("exp", 1)).await;
    s.sub5("exp/t", 1).await;
    s.disconnect5().await;
    let mut p = Raw::connected5(b.addr(), "exp-pub").await;
    // Still there right after the disconnect: the message is queued.
    assert_eq!(p.publish5_flow("exp/t", 1, false, 1, &Props::new(), b"kept").await, 0x00);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        p.publish5_flow("exp/t", 1, false, 2, &Props::new(), b"late").await,
        0x10,
        "subscription of the expired session no longer matches"
    );
    let (mut s, ack) = Raw::handshake5(b.addr(), &persistent("exp", 1)).await;
    assert!(!ack.session_present, "session expired [MQTT-4.1.0-2]");
    s.expect_nothing(QUIET).await;
}

// [MQTT-3.1.2-25]: within the expiry interval the session, its subscriptions and the queued
// QoS 1 message survive; Session Present 1 [MQTT-3.2.2-3].
#[tokio::test]
async fn session_kept_within_expiry() {
    let b = Broker::start();
    let (mut s, _) = Raw::handshake5(b.addr(), &persistent("keep", 60)).await;
    s.sub5("keep/t", 1).await;
    s.disconnect5().await;
    let mut p = Raw::connected5(b.addr(), "keep-pub").await;
    assert_eq!(p.publish5_flow("keep/t", 1, false, 1, &Props::new(), b"queued").await, 0);
    let (mut s, ack) = Raw::handshake5(b.addr(), &persistent("keep", 60)).await;
    assert!(ack.session_present);
    let m = s.recv_publish5().await;
    assert_eq!(m.payload, b"queued");
    s.send(&v5::puback(m.pid.unwrap())).await;
}

// Session Expiry 0xFFFFFFFF: the session does not expire (checked after 1.5 s).
#[tokio::test]
async fn session_expiry_never() {
    let b = Broker::start();
    let (mut s, _) = Raw::handshake5(b.addr(), &persistent("never", u32::MAX)).await;
    s.sub5("never/t", 1).await;
    s.disconnect5().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (s, ack) = Raw::handshake5(b.addr(), &persistent("never", u32::MAX)).await;
    assert!(ack.session_present);
    s.disconnect5().await;
}

// §3.1.2.11.2: Session Expiry absent (= 0): the session ends when the connection closes, even
// with Clean Start 0.
#[tokio::test]
async fn session_expiry_zero_ends_at_disconnect() {
    let b = Broker::start();
    let (mut s, _) = Raw::handshake5(b.addr(), &Connect::new("zero").clean(false)).await;
    s.sub5("zero/t", 1).await;
    s.disconnect5().await;
    // The broker closes the socket and ends the session concurrently: a PUBLISH racing the
    // teardown may still match, so poll (bounded) until the subscription is gone.
    let mut p = Raw::connected5(b.addr(), "zero-pub").await;
    let mut pid = 0;
    loop {
        pid += 1;
        if p.publish5_flow("zero/t", 1, false, pid, &Props::new(), b"x").await == 0x10 {
            break;
        }
        assert!(pid < 20, "subscription of the ended session still matches after 2 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut s, ack) = Raw::handshake5(b.addr(), &Connect::new("zero").clean(false)).await;
    assert!(!ack.session_present);
    s.expect_nothing(QUIET).await;
}

// [MQTT-3.1.2-4] [MQTT-3.2.2-2]: Clean Start 1 discards an existing session (subscriptions and
// queued messages).
#[tokio::test]
async fn clean_start_discards_session() {
    let b = Broker::start();
    let (mut s, _) = Raw::handshake5(b.addr(), &persistent("cs", 300)).await;
    s.sub5("cs/t", 1).await;
    s.disconnect5().await;
    let mut p = Raw::connected5(b.addr(), "cs-pub").await;
    assert_eq!(p.publish5_flow("cs/t", 1, false, 1, &Props::new(), b"x").await, 0);
    let (mut s, ack) = Raw::handshake5(b.addr(), &Connect::new("cs").session_expiry(300)).await;
    assert!(!ack.session_present, "[MQTT-3.2.2-2]");
    s.expect_nothing(QUIET).await;
    s.disconnect5().await;
    let (s, ack) = Raw::handshake5(b.addr(), &persistent("cs", 300)).await;
    assert!(ack.session_present, "the new (empty) session persists");
    drop(s);
    assert_eq!(
        p.publish5_flow("cs/t", 1, false, 2, &Props::new(), b"y").await,
        0x10,
        "old subscription gone"
    );
}

// §3.14.2.2.2: the Session Expiry Interval on DISCONNECT replaces the one from CONNECT:
// 60 → 0 ends the session at disconnect.
#[tokio::test]
async fn disconnect_sets_session_expiry_zero() {
    let b = Broker::start();
    let (mut s, _) = Raw::handshake5(b.addr(), &persistent("dz", 60)).await;
    s.sub5("dz/t", 1).await;
    s.disconnect_with(0, &Props::new().with(v5::SESSION_EXPIRY, 0)).await;
    let (s, ack) = Raw::handshake5(b.addr(), &persistent("dz", 60)).await;
    assert!(!ack.session_present, "session ended at disconnect");
    s.disconnect5().await;
}

// §3.14.2.2.2: "If the Session Expiry Interval in the CONNECT packet was zero, then it is a
// Protocol Error to set a non-zero Session Expiry Interval in the DISCONNECT packet sent by the
// Client" → the server answers DISCONNECT 0x82 (and must not itself send Session Expiry
// [MQTT-3.14.2-2]); the session does not survive.
#[tokio::test]
async fn disconnect_expiry_after_zero_is_protocol_error() {
    let b = Broker::start();
    let (mut s, _) = Raw::handshake5(b.addr(), &Connect::new("dpe").clean(false)).await;
    s.send(&v5::disconnect(0, &Props::new().with(v5::SESSION_EXPIRY, 60))).await;
    let (d, before) = s.expect_disconnect().await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(d.reason, 0x82, "{d:?}");
    assert!(!d.props.has(v5::SESSION_EXPIRY), "[MQTT-3.14.2-2]: {d:?}");
    let (s, ack) = Raw::handshake5(b.addr(), &Connect::new("dpe").clean(false)).await;
    assert!(!ack.session_present);
    s.disconnect5().await;
}

// [MQTT-3.1.4-3]: a second connection with the same client id takes the session over; the old
// connection gets DISCONNECT 0x8E (Session taken over) and is closed; the session (persistent)
// carries over [MQTT-3.1.2-5].
#[tokio::test]
async fn takeover_disconnect_0x8e() {
    let b = Broker::start();
    let (mut old, _) = Raw::handshake5(b.addr(), &persistent("dup", 60)).await;
    old.sub5("dup/t", 1).await;
    let (mut new, ack) = Raw::handshake5(b.addr(), &persistent("dup", 60)).await;
    assert!(ack.session_present);
    old.expect_disconnect_reason(0x8E, "session taken over").await;
    let mut p = Raw::connected5(b.addr(), "dup-pub").await;
    p.publish5_flow("dup/t", 1, false, 1, &Props::new(), b"to-new").await;
    assert_eq!(new.recv_publish5().await.payload, b"to-new");
}

// [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error → DISCONNECT 0x82, then close.
#[tokio::test]
async fn second_connect_0x82() {
    let b = Broker::start();
    let mut r = Raw::connected5(b.addr(), "twice").await;
    r.send(&Connect::new("twice").encode()).await;
    r.expect_disconnect_reason(0x82, "second CONNECT").await;
    assert_broker_alive(b.addr()).await;
}

// §2.2.2.2 / §4.13: a property list that overruns the packet is a Malformed Packet →
// DISCONNECT 0x81, then close. So is a property identifier not valid for PUBLISH (0x11
// Session Expiry Interval).
#[tokio::test]
async fn malformed_packet_0x81() {
    let b = Broker::start();
    // PUBLISH "m/t" QoS 0, property length 9 but only 2 bytes follow.
    let mut r = Raw::connected5(b.addr(), "mal1").await;
    r.send(&pkt::packet(0x30, &[0, 3, b'm', b'/', b't', 9, 0x01, 0x01])).await;
    r.expect_disconnect_reason(0x81, "property length overruns the packet").await;

    let mut r = Raw::connected5(b.addr(), "mal2").await;
    let bad = Props::new().raw(v5::SESSION_EXPIRY, v5::Val::U32(5));
    r.send(&v5::publish("m/t", 0, false, 0, &bad, b"x")).await;
    r.expect_disconnect_reason(0x81, "Session Expiry Interval in PUBLISH").await;
    assert_broker_alive(b.addr()).await;
}

// [MQTT-3.3.4-6] / §3.3.4: a PUBLISH from a client must not carry a Subscription Identifier; "It
// is a Protocol Error for a PUBLISH packet to contain any Subscription Identifier other than
// those received in SUBSCRIBE packet which caused it to flow" → DISCONNECT 0x82.
#[tokio::test]
async fn subscription_identifier_from_client_0x82() {
    let b = Broker::start();
    let mut r = Raw::connected5(b.addr(), "pe1").await;
    r.send(&v5::publish("pe/t", 0, false, 0, &Props::new().with(v5::SUBSCRIPTION_ID, 3), b"x")).await;
    r.expect_disconnect_reason(0x82, "Subscription Identifier from a client").await;
}

// §3.3.2.3.2: "It is a Protocol Error to include the Payload Format Indicator more than once"
// → DISCONNECT 0x82.
#[tokio::test]
async fn duplicate_publish_property_0x82() {
    let b = Broker::start();
    let mut r = Raw::connected5(b.addr(), "pe2").await;
    let twice = Props::new().with(v5::PAYLOAD_FORMAT, 1).with(v5::PAYLOAD_FORMAT, 1);
    r.send(&v5::publish("pe/t", 0, false, 0, &twice, b"x")).await;
    r.expect_disconnect_reason(0x82, "Payload Format Indicator twice").await;
}

// [MQTT-4.12.0-1]: an Authentication Method the server does not support → CONNACK 0x8C (Bad
// authentication method), Session Present 0 [MQTT-3.2.2-6], then close [MQTT-3.2.2-7].
#[tokio::test]
async fn unsupported_auth_method_0x8c() {
    let b = Broker::start();
    let c = Connect::new("auth").props(Props::new().with_str(v5::AUTH_METHOD, "SCRAM-SHA-1"));
    let (mut r, ack) = Raw::connect5(b.addr(), &c).await;
    assert_eq!(ack.reason, 0x8C, "{ack:?}");
    assert!(!ack.session_present);
    r.expect_closed(WAIT).await;
}

// §4.13 / Table 3-10: on SIGTERM the broker tells every v5 client why: DISCONNECT 0x8B (Server
// shutting down), then closes.
#[tokio::test]
async fn sigterm_disconnect_0x8b() {
    let mut b = Broker::start();
    let mut r = Raw::connected5(b.addr(), "bye").await;
    r.sub5("bye/t", 1).await;
    b.sigterm();
    r.expect_disconnect_reason(0x8B, "server shutting down").await;
    let st = b.wait_exit(Duration::from_secs(10)).await.expect("exit after SIGTERM");
    assert!(st.success(), "{st:?}");
}

// [MQTT-3.1.2-28] Response Information is sent only to a client that asks (Request Response
// Information 1): `mqtt.response_information_prefix` followed by its client id.
#[tokio::test]
async fn response_information_only_when_requested() {
    let b = Broker::start();
    let asks = Connect::new("asker").props(Props::new().with(v5::REQUEST_RESPONSE_INFO, 1));
    let (r, ack) = Raw::handshake5(b.addr(), &asks).await;
    assert_eq!(ack.props.str(v5::RESPONSE_INFO), Some("responses/asker"), "{ack:?}");
    r.disconnect5().await;
    let (r, ack) = Raw::handshake5(b.addr(), &Connect::new("quiet")).await;
    assert!(!ack.props.has(v5::RESPONSE_INFO), "not asked for: {ack:?}");
    r.disconnect5().await;
    let off = Broker::start_with("[mqtt]\nresponse_information_prefix = \"\"\n");
    let (r, ack) = Raw::handshake5(off.addr(), &asks).await;
    assert!(!ack.props.has(v5::RESPONSE_INFO), "turned off: {ack:?}");
    r.disconnect5().await;
}

// Reason Strings say why, in words, on a refusing CONNACK and on the broker's DISCONNECT; they
// are left out where they would exceed the client's Maximum Packet Size [MQTT-3.2.2-19], and
// when `mqtt.reason_strings` is false.
#[tokio::test]
async fn reason_strings_explain_refusals_and_disconnects() {
    let b = Broker::start_with("[limits]\nmax_connections = 1\n");
    let first = Raw::connected5(b.addr(), "first").await;
    let (mut r, ack) = Raw::connect5(b.addr(), &Connect::new("second")).await;
    assert_eq!(ack.reason, 0x89, "server busy");
    assert!(ack.props.str(v5::REASON_STRING).is_some_and(|s| s.contains("connection limit")), "{ack:?}");
    r.expect_closed(WAIT).await;
    let tiny = Connect::new("tiny").props(Props::new().with(v5::MAXIMUM_PACKET_SIZE, 8));
    let (mut r, ack) = Raw::connect5(b.addr(), &tiny).await;
    assert_eq!(ack.reason, 0x89);
    assert!(!ack.props.has(v5::REASON_STRING), "would not fit 8 bytes: {ack:?}");
    r.expect_closed(WAIT).await;
    first.disconnect5().await;

    let b = Broker::start();
    let mut r = Raw::handshake5(b.addr(), &Connect::new("violator")).await.0;
    r.send(&v5::publish("a/+", 0, false, 0, &Props::new(), b"x")).await;
    let (d, _) = r.expect_disconnect().await;
    assert_eq!(d.reason, 0x90, "Topic Name invalid");
    assert!(d.props.str(v5::REASON_STRING).is_some_and(|s| !s.is_empty()), "{d:?}");

    let quiet = Broker::start_with("[mqtt]\nreason_strings = false\n");
    let mut r = Raw::handshake5(quiet.addr(), &Connect::new("violator")).await.0;
    r.send(&v5::publish("a/+", 0, false, 0, &Props::new(), b"x")).await;
    let (d, _) = r.expect_disconnect().await;
    assert!(!d.props.has(v5::REASON_STRING), "turned off: {d:?}");
}
