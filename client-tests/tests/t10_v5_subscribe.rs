//! Area 10 (MQTT 5): SUBSCRIBE/UNSUBSCRIBE: subscription options (No Local, Retain As
//! Published, Retain Handling), Subscription Identifiers, SUBACK/UNSUBACK reason codes,
//! disabled features, shared subscriptions.

use std::collections::BTreeSet;

use client_tests::v5::{self, sub_opts, Connect, Props};
use client_tests::*;

fn no_props() -> Props {
    Props::new()
}

fn sid(id: u32) -> Props {
    Props::new().with(v5::SUBSCRIPTION_ID, id)
}

/// Read packets until nothing arrives for [`QUIET`]; PUBLISHes are acknowledged (QoS 1) and
/// returned, PUBACKs are returned as their packet ids in `acks`.
async fn drain(r: &mut Raw, acks: &mut Vec<u16>) -> Vec<v5::Publish> {
    let mut pubs = Vec::new();
    loop {
        match r.read(QUIET).await {
            ReadOutcome::Timeout => return pubs,
            ReadOutcome::Closed(e) => panic!("connection closed: {e} (after {pubs:?})"),
            ReadOutcome::Packet(p) if p.kind() == 3 => {
                let m = p.publish5();
                if m.qos == 1 {
                    r.send(&v5::puback(m.pid.unwrap())).await;
                }
                pubs.push(m);
            }
            ReadOutcome::Packet(p) if p.kind() == 4 => acks.push(p.ack5().pid),
            ReadOutcome::Packet(p) => panic!("unexpected {p:?}"),
        }
    }
}

// [MQTT-3.3.4-2] [MQTT-3.3.4-3] [MQTT-3.3.4-4]: overlapping subscriptions of one client: one copy
// (Tern policy; the spec allows one per subscription) at the highest QoS, carrying every matching
// Subscription Identifier; a message matching only one subscription carries only its
// identifier; none when the subscription has none. [MQTT-3.8.4-3]: subscribing again to the same
// filter replaces the identifier. The largest identifier (268,435,455) round-trips. Retained
// messages sent on subscribe carry the identifier (§3.3.4).
#[tokio::test]
async fn subscription_identifiers() {
    let b = Broker::start();
    let mut s = Raw::connected5(b.addr(), "si").await;
    assert_eq!(s.subscribe5(1, &sid(5), &[("si/#", 0)]).await, vec![0]);
    assert_eq!(s.subscribe5(2, &sid(268_435_455), &[("si/+/x", 1)]).await, vec![1]);
    assert_eq!(s.subscribe5(3, &no_props(), &[("si/plain", 1)]).await, vec![1]);
    let mut p = Raw::connected5(b.addr(), "si-p").await;
    p.publish5_flow("si/a/x", 1, false, 1, &no_props(), b"both").await;
    p.publish5_flow("si/a/y", 1, false, 2, &no_props(), b"one").await;
    let mut acks = Vec::new();
    let got = drain(&mut s, &mut acks).await;
    assert_eq!(got.len(), 2, "one copy per message: {got:?}");
    assert_eq!((&got[0].payload[..], got[0].qos), (&b"both"[..], 1), "highest QoS [MQTT-3.3.4-2]");
    assert_eq!(got[0].props.sub_ids(), vec![5, 268_435_455], "[MQTT-3.3.4-4]");
    assert_eq!((&got[1].payload[..], got[1].props.sub_ids()), (&b"one"[..], vec![5]), "[MQTT-3.3.4-3]");

    // si/plain matches si/# (id 5) and si/plain (no id): only 5.
    p.publish5_flow("si/plain", 1, false, 3, &no_props(), b"p").await;
    let got = drain(&mut s, &mut acks).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].props.sub_ids(), vec![5]);

    // Replace si/# with identifier 9; si/+/x keeps its own.
    assert_eq!(s.subscribe5(4, &sid(9), &[("si/#", 0)]).await, vec![0]);
    p.publish5_flow("si/b/x", 1, false, 4, &no_props(), b"r").await;
    let got = drain(&mut s, &mut acks).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].props.sub_ids(), vec![9, 268_435_455], "identifier replaced [MQTT-3.8.4-3]");

    // A retained message delivered because of a SUBSCRIBE carries its identifier.
    p.publish5_flow("sir/t", 1, true, 5, &no_props(), b"kept").await;
    assert_eq!(s.subscribe5(5, &sid(42), &[("sir/t", 1)]).await, vec![1]);
    let m = s.recv_publish5().await;
    assert!(m.retain);
    assert_eq!(m.props.sub_ids(), vec![42]);
}

// §3.8.2.1.2: "It is a Protocol Error if the Subscription Identifier has a value of 0" →
// DISCONNECT 0x82.
#[tokio::test]
async fn subscription_identifier_zero_0x82() {
    let b = Broker::start();
    let mut s = Raw::connected5(b.addr(), "si0").await;
    s.send(&v5::subscribe(1, &sid(0), &[("si/t", 0)])).await;
    s.expect_disconnect_reason(0x82, "subscription identifier 0").await;
}

// [MQTT-3.8.3-3]: No Local: the client's own messages are not forwarded to it through that
// subscription; other clients' messages are. Another overlapping subscription without No Local
// still delivers the client's own message (one copy, with that subscription's identifier only).
#[tokio::test]
async fn no_local() {
    let b = Broker::start();
    let mut s = Raw::connected5(b.addr(), "nl").await;
    assert_eq!(s.subscribe5(1, &sid(1), &[("nl/t", sub_opts(1, true, false, 0))]).await, vec![1]);
    let mut acks = Vec::new();
    s.send(&v5::publish("nl/t", 1, false, 10, &no_props(), b"own")).await;
    let got = drain(&mut s, &mut acks).await;
    assert!(got.is_empty(), "own message echoed despite No Local: {got:?}");
    assert_eq!(acks, vec![10]);

    let mut other = Raw::connected5(b.addr(), "nl-other").await;
    other.publish5_flow("nl/t", 1, false, 1, &no_props(), b"theirs").await;
    let m = s.recv_publish5().await;
    assert_eq!(m.payload, b"theirs");
    s.send(&v5::puback(m.pid.unwrap())).await;
    // Overlapping subscription without No Local.
    assert_eq!(s.subscribe5(2, &sid(2), &[("nl/#", 1)]).await, vec![1]);
    acks.clear();
    s.send(&v5::publish("nl/t", 1, false, 11, &no_props(), b"own again")).await;
    let got = drain(&mut s, &mut acks).await;
    assert_eq!(acks, vec![11]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].payload, b"own again");
    assert_eq!(got[0].props.sub_ids(), vec![2], "only the subscription without No Local matched");
}

// [MQTT-3.3.1-12] [MQTT-3.3.1-13]: Retain As Published 0 → RETAIN 0 on forwarded messages;
// 1 → RETAIN as published. Retained messages sent on subscribe have RETAIN 1 (§3.3.1.3) either
// way. With overlapping subscriptions, RETAIN is kept if any matching subscription has Retain As
// Published (Tern policy).
#[tokio::test]
async fn retain_as_published() {
    let b = Broker::start();
    let mut s = Raw::connected5(b.addr(), "rap").await;
    assert_eq!(s.subscribe5(1, &no_props(), &[("rap/0", sub_opts(1, false, false, 0))]).await, vec![1]);
    assert_eq!(s.subscribe5(2, &no_props(), &[("rap/1", sub_opts(1, false, true, 0))]).await, vec![1]);
    assert_eq!(
        s.subscribe5(
            3,
            &no_props(),
            &[("rapo/#", sub_opts(1, false, false, 0)), ("rapo/t", sub_opts(1, false, true, 0))]
        )
        .await,
        vec![1, 1]
    );
    let mut p = Raw::connected5(b.addr(), "rap-p").await;
    let cases = [
        ("rap/0", true, false),
        ("rap/0", false, false),
        ("rap/1", true, true),
        ("rap/1", false, false),
        ("rapo/t", true, true),
    ];
    for (i, (topic, retain, _)) in cases.iter().enumerate() {
        p.publish5_flow(topic, 1, *retain, i as u16 + 1, &no_props(), b"x").await;
    }
    let mut acks = Vec::new();
    let got = drain(&mut s, &mut acks).await;
    let seen: Vec<(String, bool)> = got.iter().map(|m| (m.topic.clone(), m.retain)).collect();
    let want: Vec<(String, bool)> = cases.iter().map(|(t, _, r)| (t.to_string(), *r)).collect();
    assert_eq!(seen, want, "[MQTT-3.3.1-12] [MQTT-3.3.1-13]");

    // New subscription with Retain As Published 0: stored retained messages still have RETAIN 1.
    let mut s2 = Raw::connected5(b.addr(), "rap2").await;
    assert_eq!(s2.subscribe5(1, &no_props(), &[("rap/0", sub_opts(1, false, false, 0))]).await, vec![1]);
    let m = s2.recv_publish5().await;
    assert!(m.retain, "retained message sent on subscribe has RETAIN 1: {m:?}");
}

// [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11] [MQTT-3.8.4-4]: Retain Handling 0 sends the
// retained message on every SUBSCRIBE (also when re-subscribing); 1 only when the subscription
// is new (again after UNSUBSCRIBE); 2 never, while live messages still flow.
#[tokio::test]
async fn retain_handling_0_1_2() {
    let b = Broker::start();
    let mut p = Raw::connected5(b.addr(), "rh-p").await;
    p.publish5_flow("rh/t", 1, true, 1, &no_props(), b"stored").await;

    let mut s0 = Raw::connected5(b.addr(), "rh0").await;
    for i in 0..2 {
        assert_eq!(
            s0.subscribe5(i + 1, &no_props(), &[("rh/t", sub_opts(0, false, false, 0))]).await,
            vec![0]
        );
        let m = s0.recv_publish5().await;
        assert_eq!((&m.payload[..], m.retain), (&b"stored"[..], true), "RH 0, subscribe #{i}");
    }

    let mut s1 = Raw::connected5(b.addr(), "rh1").await;
    assert_eq!(s1.subscribe5(1, &no_props(), &[("rh/t", sub_opts(0, false, false, 1))]).await, vec![0]);
    assert_eq!(s1.recv_publish5().await.payload, b"stored", "RH 1, new subscription");
    assert_eq!(s1.subscribe5(2, &no_props(), &[("rh/t", sub_opts(0, false, false, 1))]).await, vec![0]);
    s1.expect_nothing(QUIET).await; // RH 1, subscription existed
    assert_eq!(s1.unsubscribe5(3, &["rh/t"]).await, vec![0x00]);
    assert_eq!(s1.subscribe5(4, &no_props(), &[("rh/t", sub_opts(0, false, false, 1))]).await, vec![0]);
    assert_eq!(s1.recv_publish5().await.payload, b"stored", "RH 1 after UNSUBSCRIBE: new again");

    let mut s2 = Raw::connected5(b.addr(), "rh2").await;
    assert_eq!(s2.subscribe5(1, &no_props(), &[("rh/#", sub_opts(0, false, false, 2))]).await, vec![0]);
    s2.expect_nothing(QUIET).await;
    p.publish5_flow("rh/t", 0, false, 0, &no_props(), b"live").await;
    let m = s2.recv_publish5().await;
    assert_eq!((&m.payload[..], m.retain), (&b"live"[..], false), "RH 2 subscription is live");
}

// [MQTT-3.2.2-10] [MQTT-3.8.4-7] [MQTT-3.8.4-8]: with maximum_qos = 1 a QoS 2 request is accepted
// and granted QoS 1; messages are delivered at min(published, granted).
#[tokio::test]
async fn suback_granted_qos_capped_by_maximum_qos() {
    let b = Broker::start_with("[mqtt]\nmaximum_qos = 1\n");
    let mut s = Raw::connected5(b.addr(), "gq").await;
    assert_eq!(s.subscribe5(1, &no_props(), &[("gq/2", 2), ("gq/0", 0)]).await, vec![1, 0]);
    let mut p = Raw::connected5(b.addr(), "gq-p").await;
    p.publish5_flow("gq/2", 1, false, 1, &no_props(), b"x").await;
    p.publish5_flow("gq/0", 1, false, 2, &no_props(), b"y").await;
    let m = s.recv_publish5().await;
    assert_eq!((m.topic.as_str(), m.qos), ("gq/2", 1));
    s.send(&v5::puback(m.pid.unwrap())).await;
    let m = s.recv_publish5().await;
    assert_eq!((m.topic.as_str(), m.qos), ("gq/0", 0));
}

// [MQTT-4.7.3-1] [MQTT-4.7.1-1] [MQTT-4.7.1-2] [MQTT-4.8.2-2]: a SUBSCRIBE whose filter is empty
// or badly formed ("#" not last, "+" not a whole level, a share name not followed by "/" and a
// filter) is a Malformed Packet: DISCONNECT 0x81, then close, as Mosquitto does; not a 0x8F in
// SUBACK, which is for a well-formed filter the server does not allow (§3.9.3).
#[tokio::test]
async fn subscribe_badly_formed_filter_0x81() {
    let b = Broker::start();
    for bad in ["", "if/#/b", "if/c+", "$share/g"] {
        let mut s = Raw::connected5(b.addr(), "if").await;
        s.send(&v5::subscribe(1, &no_props(), &[("if/a", 1), (bad, 0)])).await;
        s.expect_disconnect_reason(0x81, &format!("SUBSCRIBE filter {bad:?}")).await;
    }
    assert_broker_alive(b.addr()).await;
}

// [MQTT-3.10.4-5] [MQTT-3.11.3-1] §3.11.3: UNSUBACK reason codes: 0x00 Success, 0x11 No
// subscription existed; in filter order. A badly formed filter is a Malformed Packet
// (DISCONNECT 0x81), as in SUBSCRIBE.
#[tokio::test]
async fn unsuback_reason_codes() {
    let b = Broker::start();
    let mut s = Raw::connected5(b.addr(), "us").await;
    s.sub5("us/a", 1).await;
    assert_eq!(s.unsubscribe5(7, &["us/a", "us/never"]).await, vec![0x00, 0x11]);
    assert_eq!(s.unsubscribe5(8, &["us/a"]).await, vec![0x11], "already removed");
    s.send(&v5::unsubscribe(9, &["us/b", "us/#/x"])).await;
    s.expect_disconnect_reason(0x81, "UNSUBSCRIBE filter us/#/x").await;
}

// §3.2.2.3.11: "If the Server receives a SUBSCRIBE packet containing a Wildcard Subscription and
// it does not support Wildcard Subscriptions, this is a Protocol Error. The Server uses
// DISCONNECT with Reason Code 0xA2". (The SUBACK code 0xA2 is for a server that supports
// wildcards but rejects a particular request.)
#[tokio::test]
async fn wildcards_disabled_disconnect_0xa2() {
    let b = Broker::start_with("[mqtt]\nwildcard_subscription_available = false\n");
    let mut s = Raw::connected5(b.addr(), "wd").await;
    assert_eq!(s.subscribe5(1, &no_props(), &[("wd/plain", 1)]).await, vec![1]);
    s.send(&v5::subscribe(2, &no_props(), &[("wd/+", 1)])).await;
    s.expect_disconnect_reason(0xA2, "wildcard subscription when unavailable").await;
}

// §3.2.2.3.12: SUBSCRIBE with a Subscription Identifier when they are not supported → "Protocol
// Error. The Server uses DISCONNECT with Reason Code of 0xA1".
#[tokio::test]
async fn subscription_identifiers_disabled_disconnect_0xa1() {
    let b = Broker::start_with("[mqtt]\nsubscription_identifiers_available = false\n");
    let mut s = Raw::connected5(b.addr(), "sd").await;
    assert_eq!(s.subscribe5(1, &no_props(), &[("sd/t", 1)]).await, vec![1]);
    s.send(&v5::subscribe(2, &sid(4), &[("sd/u", 1)])).await;
    s.expect_disconnect_reason(0xA1, "subscription identifier when unavailable").await;
}

// §3.2.2.3.13: a Shared Subscription when they are not supported → "Protocol Error. The Server
// uses DISCONNECT with Reason Code 0x9E".
#[tokio::test]
async fn shared_disabled_disconnect_0x9e() {
    let b = Broker::start_with("[mqtt]\nshared_subscription_available = false\n");
    let mut s = Raw::connected5(b.addr(), "shd").await;
    assert_eq!(s.subscribe5(1, &no_props(), &[("shd/t", 1)]).await, vec![1]);
    s.send(&v5::subscribe(2, &no_props(), &[("$share/g/shd/t", 1)])).await;
    s.expect_disconnect_reason(0x9E, "shared subscription when unavailable").await;
}

/// Collect QoS 1 PUBLISHes (acknowledging them) until [`QUIET`]; payloads as strings.
async fn collect_payloads(r: &mut Raw, v5: bool) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    loop {
        match r.read(QUIET).await {
            ReadOutcome::Timeout => return out,
            ReadOutcome::Closed(e) => panic!("closed: {e}"),
            ReadOutcome::Packet(p) => {
                let (pid, payload, ids) = if v5 {
                    let m = p.publish5();
                    (m.pid, m.payload, m.props.sub_ids())
                } else {
                    let m = p.publish();
                    (m.pid, m.payload, vec![])
                };
                if let Some(pid) = pid {
                    r.send(&pkt::puback(pid)).await;
                }
                out.push((String::from_utf8(payload).unwrap(), ids));
            }
        }
    }
}

// §4.8.2: each message of a shared subscription goes to one member only; v5 and 3.1.1 members
// share a group; round-robin (Tern policy) splits 10 messages 5/5; a member receives only its
// own Subscription Identifier (§3.3.4); a non-shared subscription on the same topic gets
// everything.
#[tokio::test]
async fn shared_subscription_distribution() {
    let b = Broker::start();
    let mut a = Raw::connected5(b.addr(), "sh-a").await;
    assert_eq!(a.subscribe5(1, &sid(5), &[("$share/g/sh/t", 1)]).await, vec![1]);
    let mut m3 = Raw::connected(b.addr(), "sh-b", true).await;
    assert_eq!(m3.subscribe(1, &[("$share/g/sh/t", 1)]).await, vec![1]);
    let mut all = Raw::connected5(b.addr(), "sh-all").await;
    all.sub5("sh/t", 1).await;
    let mut p = Raw::connected5(b.addr(), "sh-p").await;
    for i in 0..10u16 {
        p.publish5_flow("sh/t", 1, false, i + 1, &no_props(), i.to_string().as_bytes()).await;
    }
    let (ga, gb, gall) = tokio::join!(
        collect_payloads(&mut a, true),
        collect_payloads(&mut m3, false),
        collect_payloads(&mut all, true)
    );
    assert!(ga.iter().all(|(_, ids)| ids == &vec![5]), "member's own identifier only: {ga:?}");
    let sa: BTreeSet<String> = ga.iter().map(|(p, _)| p.clone()).collect();
    let sb: BTreeSet<String> = gb.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(sa.len() + sb.len(), 10, "each message once: a={sa:?} b={sb:?}");
    assert!(sa.is_disjoint(&sb));
    assert_eq!((sa.len(), sb.len()), (5, 5), "round-robin: a={sa:?} b={sb:?}");
    assert_eq!(gall.len(), 10, "non-shared subscriber gets all");
}

// Tern: a member whose in-flight window (its Receive Maximum) is full is skipped. Member a
// (Receive Maximum 1) holds one unacknowledged message before b joins, so every later message
// must go to b, and none may wait in a's queue while b is free.
#[tokio::test]
async fn shared_subscription_skips_full_member() {
    let b = Broker::start();
    let (mut a, _) =
        Raw::handshake5(b.addr(), &Connect::new("full").props(Props::new().with(v5::RECEIVE_MAXIMUM, 1)))
            .await;
    a.sub5("$share/g/sf/t", 1).await;
    let mut p = Raw::connected5(b.addr(), "sf-p").await;
    p.publish5_flow("sf/t", 1, false, 1, &no_props(), b"0").await;
    let first = a.recv_publish5().await; // not acknowledged yet: a is full
    assert_eq!(first.payload, b"0");
    let mut bb = Raw::connected5(b.addr(), "free").await;
    bb.sub5("$share/g/sf/t", 1).await;
    for i in 1..5u16 {
        p.publish5_flow("sf/t", 1, false, i + 1, &no_props(), i.to_string().as_bytes()).await;
    }
    let got_b: Vec<String> = collect_payloads(&mut bb, true).await.into_iter().map(|(p, _)| p).collect();
    a.expect_nothing(QUIET).await;
    assert_eq!(got_b, ["1", "2", "3", "4"], "all messages to the member with room");
    // Once a acknowledges, nothing was queued for it meanwhile.
    a.send(&v5::puback(first.pid.unwrap())).await;
    a.expect_nothing(QUIET).await;
}

// §4.8.2: "If the Server is in the process of sending a QoS 1 message to its chosen subscribing
// Client and the connection to that Client breaks before the Server has received an
// acknowledgement from the Client [...] If the Client's Session terminates before the Client
// reconnects, the Server SHOULD send the Application Message to another Client that is
// subscribed to the same Shared Subscription."
#[tokio::test]
async fn shared_qos1_unacked_redelivered_to_other_member() {
    let b = Broker::start();
    let mut a = Raw::connected5(b.addr(), "rd-a").await; // Session Expiry 0: ends on close
    a.sub5("$share/g/rd/t", 1).await;
    let mut p = Raw::connected5(b.addr(), "rd-p").await;
    p.publish5_flow("rd/t", 1, false, 1, &no_props(), b"m1").await;
    let m = a.recv_publish5().await; // never acknowledged
    assert_eq!(m.payload, b"m1");
    let mut bb = Raw::connected5(b.addr(), "rd-b").await;
    bb.sub5("$share/g/rd/t", 1).await;
    bb.expect_nothing(QUIET).await;
    drop(a);
    let m = bb.recv_publish5().await;
    assert_eq!((m.topic.as_str(), &m.payload[..], m.qos), ("rd/t", &b"m1"[..], 1));
    bb.send(&v5::puback(m.pid.unwrap())).await;
    bb.expect_nothing(QUIET).await;
}

// [MQTT-4.8.2-4] [MQTT-4.8.2-5]: for a QoS 2 message whose delivery to the chosen member has
// started, "If the Client's Session terminates before the Client reconnects, the Server MUST NOT
// send the Application Message to any other subscribed Client."
#[tokio::test]
async fn shared_qos2_started_not_sent_to_other_member() {
    let b = Broker::start();
    let mut a = Raw::connected5(b.addr(), "q2-a").await; // Session Expiry 0
    a.sub5("$share/g/q2/t", 2).await;
    let mut p = Raw::connected5(b.addr(), "q2-p").await;
    p.publish5_flow("q2/t", 2, false, 1, &no_props(), b"m1").await;
    assert_eq!(a.recv_publish5().await.payload, b"m1"); // no PUBREC
    let mut bb = Raw::connected5(b.addr(), "q2-b").await;
    bb.sub5("$share/g/q2/t", 2).await;
    drop(a);
    bb.expect_nothing(QUIET * 2).await;
    p.publish5_flow("q2/t", 2, false, 2, &no_props(), b"m2").await;
    let m = bb.recv_publish5().await;
    assert_eq!(m.payload, b"m2", "m1 must not be sent to another member [MQTT-4.8.2-5]");
}

// §3.3.1.3 / §4.8.2: retained messages are sent for new non-shared subscriptions only: a shared
// subscription gets no retained message on SUBSCRIBE, but live messages.
#[tokio::test]
async fn shared_subscription_gets_no_retained() {
    let b = Broker::start();
    let mut p = Raw::connected5(b.addr(), "sr-p").await;
    p.publish5_flow("sr/t", 1, true, 1, &no_props(), b"stored").await;
    let mut s = Raw::connected5(b.addr(), "sr").await;
    s.sub5("$share/g/sr/t", 1).await;
    s.expect_nothing(QUIET).await;
    p.publish5_flow("sr/t", 1, false, 2, &no_props(), b"live").await;
    assert_eq!(s.recv_publish5().await.payload, b"live");
}

// [MQTT-3.8.3-4]: No Local on a Shared Subscription is a Protocol Error → DISCONNECT 0x82.
#[tokio::test]
async fn shared_no_local_0x82() {
    let b = Broker::start();
    let mut s = Raw::connected5(b.addr(), "snl").await;
    s.send(&v5::subscribe(1, &no_props(), &[("$share/g/snl/t", sub_opts(1, true, false, 0))])).await;
    s.expect_disconnect_reason(0x82, "No Local on a shared subscription").await;
}
