//! Area 01: CONNECT / CONNACK, client identifiers, connect timeout, keepalive, takeover.

use std::time::{Duration, Instant};

use client_tests::pkt::Connect;
use client_tests::*;

// [MQTT-3.2.0-1] first packet from the server is CONNACK; [MQTT-3.2.2-4] return code 0,
// [MQTT-3.2.2-1] clean session => session present 0.
#[tokio::test]
async fn connect_311_accepted_connack_bytes() {
    let b = Broker::start();
    let mut r = Raw::connect(b.addr()).await;
    r.send(&Connect::new("c1").encode()).await;
    assert_eq!(r.recv().await.bytes(), vec![0x20, 0x02, 0x00, 0x00]);
    r.disconnect().await;
}

// MQTT 3.1 ("MQIsdp", level 3) is accepted.
#[tokio::test]
async fn connect_mqisdp_level3_accepted() {
    let b = Broker::start();
    let mut r = Raw::connect(b.addr()).await;
    r.send(&Connect::new("c31").mqisdp().encode()).await;
    assert_eq!(r.recv().await.bytes(), vec![0x20, 0x02, 0x00, 0x00]);
    // And it works for pub/sub.
    assert_eq!(r.subscribe(1, &[("v31/t", 1)]).await, vec![1]);
    r.send(&pkt::publish("v31/t", 1, false, false, 2, b"x")).await;
    let mut kinds = vec![r.recv().await.kind(), r.recv().await.kind()];
    kinds.sort();
    assert_eq!(kinds, vec![3, 4]);
}

// [MQTT-3.1.2-2] unsupported protocol level => CONNACK 0x01 then close.
#[tokio::test]
async fn connect_level6_refused_unacceptable_protocol() {
    let b = Broker::start();
    let mut r = Raw::connect(b.addr()).await;
    let mut c = Connect::new("c6");
    c.level = 6;
    r.send(&c.encode()).await;
    assert_eq!(r.recv().await.bytes(), vec![0x20, 0x02, 0x00, 0x01]);
    r.expect_closed(WAIT).await;
    assert_broker_alive(b.addr()).await;
}

// MQTT 5 on the same listener: a v5 CONNECT gets a v5 CONNACK (flags, reason 0x00, properties).
#[tokio::test]
async fn connect_level5_accepted_on_the_same_port() {
    let b = Broker::start();
    let mut r = Raw::connect(b.addr()).await;
    let mut c = Connect::new("c5");
    c.level = 5;
    c.after_keepalive = vec![0x00]; // empty property list
    r.send(&c.encode()).await;
    let connack = r.recv().await.bytes();
    assert_eq!(connack[0], 0x20);
    assert_eq!(&connack[2..4], &[0x00, 0x00], "session present 0, reason Success");
    assert_broker_alive(b.addr()).await;
}

// [MQTT-3.1.3-8] empty client id with clean session 0 => CONNACK 0x02 then close.
#[tokio::test]
async fn connect_empty_id_persistent_rejected_identifier() {
    let b = Broker::start();
    let mut r = Raw::connect(b.addr()).await;
    r.send(&Connect::new("").clean(false).encode()).await;
    assert_eq!(r.recv().await.bytes(), vec![0x20, 0x02, 0x00, 0x02]);
    r.expect_closed(WAIT).await;
    assert_broker_alive(b.addr()).await;
}

// [MQTT-3.1.3-6] [MQTT-3.1.3-7] empty client id with clean session 1 => accepted, assigned id.
#[tokio::test]
async fn connect_empty_id_clean_accepted_and_usable() {
    let b = Broker::start();
    let (mut r1, sp1) = Raw::handshake(b.addr(), &Connect::new("")).await;
    let (mut r2, sp2) = Raw::handshake(b.addr(), &Connect::new("")).await;
    assert!(!sp1 && !sp2);
    // Two anonymous clients coexist (distinct assigned ids: no takeover).
    assert_eq!(r1.subscribe(1, &[("anon/t", 0)]).await, vec![0]);
    r2.publish_flow("anon/t", 1, false, 7, b"hi").await;
    let m = r1.recv_publish().await;
    assert_eq!(m.payload, b"hi");
    r1.expect_nothing(QUIET).await; // r1 was not taken over by r2
}

// rumqttc (3.1.1) connects; client-id UTF-8 with multibyte characters is fine [MQTT-3.1.3-4].
#[tokio::test]
async fn connect_rumqttc_and_utf8_client_id() {
    let b = Broker::start();
    let mut m = Mqtt::connect(opts(&b, "klient-ü-☃")).await;
    assert!(!m.session_present);
    assert_eq!(m.subscribe("u/t", 1).await, vec![1]);
    m.publish_wait("u/t", 1, false, "p").await;
    assert_eq!(&m.recv().await.payload[..], b"p");
    m.disconnect().await;
}

// [MQTT-3.1.4-2] a second connection with the same client id closes the first.
#[tokio::test]
async fn connect_same_id_takes_over_old_connection() {
    let b = Broker::start();
    let mut old = Raw::connected(b.addr(), "dup-id", true).await;
    let (mut new, _) = Raw::handshake(b.addr(), &Connect::new("dup-id")).await;
    old.expect_closed(WAIT).await;
    // The new connection works.
    assert_eq!(new.subscribe(1, &[("to/t", 1)]).await, vec![1]);
    new.expect_nothing(QUIET).await;
}

// Section 3.1.4 / 4.8: a socket that never sends CONNECT is closed after connect_timeout_secs.
#[tokio::test]
async fn connect_timeout_closes_silent_socket() {
    let b = Broker::start_with("[mqtt]\nconnect_timeout_secs = 1\n");
    let start = Instant::now();
    let mut r = Raw::connect(b.addr()).await;
    r.expect_closed(Duration::from_secs(4)).await;
    assert!(start.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", start.elapsed());
    assert_broker_alive(b.addr()).await;
}

// A partial CONNECT that never completes is also closed by the connect timeout.
#[tokio::test]
async fn connect_timeout_closes_partial_connect() {
    let b = Broker::start_with("[mqtt]\nconnect_timeout_secs = 1\n");
    let mut r = Raw::connect(b.addr()).await;
    let c = Connect::new("partial").encode();
    r.send(&c[..5]).await;
    r.expect_closed(Duration::from_secs(4)).await;
}

// [MQTT-3.1.2-24] no packet within 1.5 x keepalive => the server disconnects.
#[tokio::test]
async fn keepalive_silent_client_disconnected_after_one_and_half() {
    let b = Broker::start();
    let (mut r, _) = Raw::handshake(b.addr(), &Connect::new("ka").keepalive(1)).await;
    let start = Instant::now();
    // Not before 1.5 x keepalive (less a margin: the broker's clock started at CONNECT).
    r.expect_nothing(Duration::from_millis(1300)).await;
    r.expect_closed(Duration::from_secs(3)).await;
    let el = start.elapsed();
    assert!(el >= Duration::from_millis(1300) && el < Duration::from_millis(3500), "closed after {el:?}");
    assert_broker_alive(b.addr()).await;
}

// [MQTT-3.12.4-1] PINGREQ => PINGRESP; regular pings keep the connection alive.
#[tokio::test]
async fn keepalive_pings_keep_connection_open() {
    let b = Broker::start();
    let (mut r, _) = Raw::handshake(b.addr(), &Connect::new("pinger").keepalive(1)).await;
    for _ in 0..6 {
        r.expect_nothing(Duration::from_millis(500)).await;
        r.send(&pkt::pingreq()).await;
        assert_eq!(r.recv().await.bytes(), vec![0xd0, 0x00]);
    }
}

// [MQTT-3.1.2-24] activity other than PINGREQ also counts as "a control packet".
#[tokio::test]
async fn keepalive_reset_by_any_packet() {
    let b = Broker::start();
    let (mut r, _) = Raw::handshake(b.addr(), &Connect::new("busy").keepalive(1)).await;
    for i in 0..6u16 {
        r.expect_nothing(Duration::from_millis(500)).await;
        r.publish_flow("busy/t", 1, false, i + 1, b"x").await;
    }
}

// Keepalive 0 switches the mechanism off (3.1.2.10).
#[tokio::test]
async fn keepalive_zero_never_times_out() {
    let b = Broker::start();
    let (mut r, _) = Raw::handshake(b.addr(), &Connect::new("ka0").keepalive(0)).await;
    r.expect_nothing(Duration::from_millis(2500)).await;
    r.send(&pkt::pingreq()).await;
    assert_eq!(r.recv().await.bytes(), vec![0xd0, 0x00]);
}

// [MQTT-3.14.4-1] after DISCONNECT the server closes the connection.
#[tokio::test]
async fn disconnect_closes_connection() {
    let b = Broker::start();
    let mut r = Raw::connected(b.addr(), "bye", true).await;
    r.send(&pkt::disconnect()).await;
    r.expect_closed(WAIT).await;
}

// [MQTT-3.1.2-21] [MQTT-3.1.2-19] username and password fields are accepted (no auth configured).
#[tokio::test]
async fn connect_with_username_password_accepted() {
    let b = Broker::start();
    let mut c = Connect::new("up");
    c.username = Some(b"user".to_vec());
    c.password = Some(vec![0, 1, 2, 255]);
    let (r, sp) = Raw::handshake(b.addr(), &c).await;
    assert!(!sp);
    r.disconnect().await;
}
