//! Area 03: topic names and filters: wildcard matching, `$` topics, overlapping subscriptions,
//! and validation of topic names/filters (invalid => connection closed).

use std::collections::BTreeSet;

use client_tests::*;

const TOPICS: &[&str] = &[
    "a",
    "a/b",
    "a/b/c",
    "a/b/c/d",
    "/a",
    "a/",
    "/",
    "a//c",
    "A/b/c",
    "b/b/c",
    "sport",
    "sport/",
    "sport/tennis/player1",
    "sport/tennis/player1/ranking",
    "/finance",
    "finance",
    "a b/c d",
    "$ext/a/b",
    "$ext",
    "ü/☃",
];

const END: &str = "zz/end";

/// Subscribe one raw client per filter, publish every topic in TOPICS (QoS 1, each acked
/// before the next), then an end marker; each subscriber's set of received topics must be
/// exactly the expected one.
async fn check_matching(cases: &[(&str, &[&str])]) {
    let b = Broker::start();
    let mut subs = Vec::new();
    for (i, (filter, _)) in cases.iter().enumerate() {
        let mut s = Raw::connected(b.addr(), &format!("m{i}"), true).await;
        assert_eq!(s.subscribe(1, &[(filter, 1), (END, 1)]).await, vec![1, 1], "filter {filter:?}");
        subs.push(s);
    }
    let mut p = Raw::connected(b.addr(), "matcher-pub", true).await;
    for (i, t) in TOPICS.iter().enumerate() {
        p.publish_flow(t, 1, false, i as u16 + 1, t.as_bytes()).await;
    }
    p.publish_flow(END, 1, false, 999, b"END").await;
    for ((filter, expected), s) in cases.iter().zip(subs.iter_mut()) {
        let mut got = BTreeSet::new();
        loop {
            let m = s.recv_publish().await;
            s.send(&pkt::puback(m.pid.unwrap())).await;
            if m.payload == b"END" {
                break;
            }
            assert!(got.insert(m.topic.clone()), "filter {filter:?}: {:?} delivered twice", m.topic);
            assert_eq!(m.payload, m.topic.as_bytes());
        }
        let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "filter {filter:?}");
    }
}

// [MQTT-4.7.1-2] `#` matches the parent and any number of levels; [MQTT-4.7.2-1] not `$` topics.
#[tokio::test]
async fn wildcard_multi_level() {
    let all_non_dollar: Vec<&str> = TOPICS.iter().copied().filter(|t| !t.starts_with('$')).collect();
    check_matching(&[
        ("#", &all_non_dollar),
        ("a/#", &["a", "a/b", "a/b/c", "a/b/c/d", "a/", "a//c"]),
        ("sport/#", &["sport", "sport/", "sport/tennis/player1", "sport/tennis/player1/ranking"]),
        ("sport/tennis/player1/#", &["sport/tennis/player1", "sport/tennis/player1/ranking"]),
        ("$ext/#", &["$ext", "$ext/a/b"]),
    ])
    .await;
}

// [MQTT-4.7.1-3] `+` matches exactly one level, including an empty one; [MQTT-4.7.2-1].
#[tokio::test]
async fn wildcard_single_level() {
    check_matching(&[
        ("+", &["a", "sport", "finance"]),
        ("a/+", &["a/b", "a/"]),
        ("a/+/c", &["a/b/c", "a//c"]),
        ("+/+", &["a/b", "/a", "a/", "/", "sport/", "/finance", "a b/c d", "ü/☃"]),
        ("/+", &["/a", "/", "/finance"]),
        ("+/b/c", &["a/b/c", "A/b/c", "b/b/c"]),
        ("sport/tennis/+", &["sport/tennis/player1"]),
        ("+/tennis/#", &["sport/tennis/player1", "sport/tennis/player1/ranking"]),
        ("+/a/b", &[]),
        ("$ext/+/b", &["$ext/a/b"]),
        ("+/+/+", &["a/b/c", "A/b/c", "b/b/c", "a//c", "sport/tennis/player1"]),
    ])
    .await;
}

// Exact filters; topic names are case sensitive and may contain spaces (4.7.3).
#[tokio::test]
async fn exact_filters_case_sensitive() {
    check_matching(&[
        ("a/b/c", &["a/b/c"]),
        ("A/b/c", &["A/b/c"]),
        ("a b/c d", &["a b/c d"]),
        ("a/", &["a/"]),
        ("/", &["/"]),
        ("ü/☃", &["ü/☃"]),
        ("nomatch", &[]),
    ])
    .await;
}

// [MQTT-3.3.5-1] overlapping subscriptions of one client: delivered once, at the maximum QoS of
// the matching subscriptions (capped by the publish QoS).
#[tokio::test]
async fn overlapping_subscriptions_delivered_once_at_max_qos() {
    let b = Broker::start();
    let mut s = Raw::connected(b.addr(), "ov", true).await;
    assert_eq!(s.subscribe(1, &[("ov/#", 1), ("ov/+", 2), ("ov/x", 0), ("#", 0)]).await, vec![1, 2, 0, 0]);
    let mut p = Raw::connected(b.addr(), "ov-pub", true).await;
    p.publish_flow("ov/x", 2, false, 1, b"m").await;
    let m = s.recv_publish().await;
    assert_eq!((m.topic.as_str(), m.qos), ("ov/x", 2));
    s.send(&pkt::pubrec(m.pid.unwrap())).await;
    assert_eq!(s.recv().await.bytes(), pkt::pubrel(m.pid.unwrap()));
    s.send(&pkt::pubcomp(m.pid.unwrap())).await;
    s.expect_nothing(QUIET).await;

    // Published at QoS 1: delivered once at QoS 1.
    p.publish_flow("ov/y/z", 1, false, 2, b"n").await;
    let m = s.recv_publish().await;
    assert_eq!((m.topic.as_str(), m.qos), ("ov/y/z", 1));
    s.send(&pkt::puback(m.pid.unwrap())).await;
    s.expect_nothing(QUIET).await;
}

// [MQTT-3.8.4-3] subscribing again to an identical filter replaces the subscription (new QoS),
// it does not add a second one.
#[tokio::test]
async fn resubscribe_replaces_qos() {
    let b = Broker::start();
    let mut s = Raw::connected(b.addr(), "rs", true).await;
    assert_eq!(s.subscribe(1, &[("rs/t", 0)]).await, vec![0]);
    assert_eq!(s.subscribe(2, &[("rs/t", 2)]).await, vec![2]);
    let mut p = Raw::connected(b.addr(), "rs-pub", true).await;
    p.publish_flow("rs/t", 2, false, 1, b"m").await;
    let m = s.recv_publish().await;
    assert_eq!(m.qos, 2);
    s.send(&pkt::pubrec(m.pid.unwrap())).await;
    assert_eq!(s.recv().await.bytes(), pkt::pubrel(m.pid.unwrap()));
    s.send(&pkt::pubcomp(m.pid.unwrap())).await;
    s.expect_nothing(QUIET).await;
    // Downgrade again.
    assert_eq!(s.subscribe(3, &[("rs/t", 0)]).await, vec![0]);
    p.publish_flow("rs/t", 2, false, 2, b"n").await;
    assert_eq!(s.recv_publish().await.qos, 0);
    s.expect_nothing(QUIET).await;
}

// [MQTT-3.8.4-4] [MQTT-3.8.4-5] one SUBSCRIBE with several filters => one SUBACK, codes in order.
#[tokio::test]
async fn subscribe_many_filters_one_suback() {
    let b = Broker::start();
    let mut s = Raw::connected(b.addr(), "many", true).await;
    assert_eq!(s.subscribe(77, &[("m/0", 0), ("m/2", 2), ("m/1", 1), ("m/#", 2)]).await, vec![0, 2, 1, 2]);
}

// Topic validation: each case closes the offending connection, others are unaffected.
bad_input_tests! {
    // [MQTT-3.3.2-2] wildcards are not allowed in a PUBLISH topic name.
    publish_topic_with_plus_closed: connected = true, bytes = pkt::publish("a/+", 0, false, false, 0, b"x");
    publish_topic_with_hash_closed: connected = true, bytes = pkt::publish("a/#", 1, false, false, 1, b"x");
    publish_topic_hash_alone_closed: connected = true, bytes = pkt::publish("#", 0, false, false, 0, b"x");
    publish_topic_plus_inside_level_closed: connected = true, bytes = pkt::publish("a+b", 0, false, false, 0, b"x");
    // [MQTT-4.7.3-1] topic names are at least one character long.
    publish_topic_empty_closed: connected = true, bytes = pkt::publish("", 0, false, false, 0, b"x");
    // [MQTT-4.7.3-2] / [MQTT-1.5.3-2] no U+0000.
    publish_topic_nul_closed: connected = true, bytes = pkt::publish("a\0b", 0, false, false, 0, b"x");
    // [MQTT-1.5.3-1] ill-formed UTF-8: invalid byte, overlong NUL, UTF-16 surrogate.
    publish_topic_invalid_utf8_ff_closed: connected = true, bytes = pkt::publish_raw(b"a/\xff", 0, false, false, 0, b"x");
    publish_topic_overlong_nul_closed: connected = true, bytes = pkt::publish_raw(b"a/\xc0\x80", 1, false, false, 1, b"x");
    publish_topic_surrogate_closed: connected = true, bytes = pkt::publish_raw(b"a/\xed\xa0\x80", 0, false, false, 0, b"x");
    // [MQTT-4.7.1-2] `#` must be last and occupy a whole level.
    subscribe_hash_not_last_closed: connected = true, bytes = pkt::subscribe(1, &[("a/#/b", 0)]);
    subscribe_hash_inside_level_closed: connected = true, bytes = pkt::subscribe(1, &[("a/b#", 0)]);
    // [MQTT-4.7.1-3] `+` must occupy a whole level.
    subscribe_plus_inside_level_closed: connected = true, bytes = pkt::subscribe(1, &[("a/b+/c", 0)]);
    subscribe_plus_prefix_closed: connected = true, bytes = pkt::subscribe(1, &[("+a", 0)]);
    // A bad filter among good ones still closes the connection.
    subscribe_bad_filter_among_good_closed: connected = true, bytes = pkt::subscribe(1, &[("ok/+", 0), ("bad/#/x", 1)]);
    // [MQTT-4.7.3-1] filters are at least one character long.
    subscribe_empty_filter_closed: connected = true, bytes = pkt::subscribe(1, &[("", 0)]);
    // [MQTT-4.7.3-2] [MQTT-1.5.3-2]
    subscribe_filter_nul_closed: connected = true, bytes = pkt::subscribe(1, &[("a/\0", 0)]);
    // [MQTT-1.5.3-1] [MQTT-3.8.3-1]
    subscribe_filter_invalid_utf8_closed: connected = true, bytes = pkt::subscribe_raw(1, &[(b"a/\xfe", 0)]);
    // [MQTT-3.10.3-1] UNSUBSCRIBE filters are UTF-8 strings too.
    unsubscribe_filter_invalid_utf8_closed: connected = true, bytes = pkt::packet(0xa2, &[0, 1, 0, 2, b'a', 0xff]);
    unsubscribe_filter_nul_closed: connected = true, bytes = pkt::unsubscribe(1, &["a\0"]);
    unsubscribe_hash_not_last_closed: connected = true, bytes = pkt::unsubscribe(1, &["a/#/b"]);
}

// [MQTT-1.5.3-3] U+FEFF (BOM) is a normal character: not stripped, part of the name.
#[tokio::test]
async fn bom_is_not_stripped() {
    let b = Broker::start();
    let mut s = Raw::connected(b.addr(), "bom", true).await;
    s.subscribe(1, &[("\u{feff}bom", 0), ("bom", 0)]).await;
    let mut p = Raw::connected(b.addr(), "bom-pub", true).await;
    p.publish_flow("\u{feff}bom", 1, false, 1, b"x").await;
    let m = s.recv_publish().await;
    assert_eq!(m.topic, "\u{feff}bom");
    s.expect_nothing(QUIET).await;
}
