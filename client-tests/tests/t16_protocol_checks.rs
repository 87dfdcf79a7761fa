//! Area 16: protocol checks at the edges of the spec: malformed CONNECT strings and framing,
//! values the spec allows that a decoder may refuse, MQTT 3.1's CONNACK, the client's Maximum
//! Packet Size applied to CONNACK, Subscription Identifiers of overlapping subscriptions, and
//! the will of a connection that is taken over.

use client_tests::v5::{self, Props};
use client_tests::*;

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
