//! Router tests: de-duplication, QoS, No Local, Retain As Published, identifiers, shares.

use std::sync::atomic::AtomicU64;

use super::*;
use crate::auth::Security;
use crate::packet::{QoS, RetainHandling};
use crate::session::queue::{PendingQueue, QueueLimits};

impl Router {
    /// Route and hand over at once (no storage).
    fn publish(&self, message: &Arc<Message>) -> RouteOutcome {
        self.route(message, &AtomicU64::new(1), &open()).deliver()
    }
}

/// No ACL: every session may read everything.
fn open() -> Security {
    Security::open()
}

fn queue(id: &str) -> PendingQueue {
    let q = PendingQueue::new(
        ClientId::from(id),
        QueueLimits { max_messages: 100, max_bytes: 1 << 20, stall_after_ms: 2000 },
    );
    q.mailbox().set_online(true);
    q.mailbox().set_inflight(0, 10);
    q
}

fn message(topic: &str, qos: QoS) -> Arc<Message> {
    Arc::new(Message::new(topic, &b"p"[..], qos))
}

fn sub(q: &PendingQueue, qos: QoS) -> Subscriber {
    subscriber(q, SubscriptionOptions::qos(qos), None)
}

fn subscriber(q: &PendingQueue, options: SubscriptionOptions, id: Option<u32>) -> Subscriber {
    Subscriber { mailbox: q.mailbox().clone(), subscription: Subscription { options, id } }
}

#[test]
fn overlapping_subscriptions_deliver_once_at_highest_qos_with_all_ids() {
    // [MQTT-3.3.4-2], [MQTT-3.3.4-3]
    let router = Router::default();
    let mut a = queue("a");
    let id = ClientId::from("a");
    router.subscribe("x/#", id.clone(), subscriber(&a, SubscriptionOptions::qos(QoS::AtMostOnce), Some(7)));
    router.subscribe("x/+", id.clone(), subscriber(&a, SubscriptionOptions::qos(QoS::ExactlyOnce), Some(3)));
    router.subscribe("x/y", id, sub(&a, QoS::AtLeastOnce));
    let outcome = router.publish(&message("x/y", QoS::ExactlyOnce));
    assert_eq!((outcome.matched, outcome.queued), (1, 1));
    let d = a.try_pop().unwrap();
    assert_eq!(d.qos, QoS::ExactlyOnce);
    assert_eq!(d.subscription_ids, vec![3, 7]);
    assert!(a.try_pop().is_none());
}

#[test]
fn an_identifier_shared_by_several_matching_subscriptions_is_carried_once() {
    // [MQTT-3.3.4-4]: one SUBSCRIBE with identifier 5 for "d/#" and "d/+", another with 2.
    let router = Router::default();
    let mut a = queue("a");
    let id = ClientId::from("a");
    let options = SubscriptionOptions::qos(QoS::AtMostOnce);
    router.subscribe("d/#", id.clone(), subscriber(&a, options, Some(5)));
    router.subscribe("d/+", id.clone(), subscriber(&a, options, Some(5)));
    router.subscribe("d/x", id, subscriber(&a, options, Some(2)));
    router.publish(&message("d/x", QoS::AtMostOnce));
    assert_eq!(a.try_pop().unwrap().subscription_ids, vec![2, 5]);
}

#[test]
fn delivery_qos_is_downgraded_to_the_subscription() {
    // [MQTT-3.8.4-6]
    let router = Router::default();
    let mut a = queue("a");
    router.subscribe("t", ClientId::from("a"), sub(&a, QoS::AtLeastOnce));
    router.publish(&message("t", QoS::ExactlyOnce));
    router.publish(&message("t", QoS::AtMostOnce));
    assert_eq!(a.try_pop().unwrap().qos, QoS::AtLeastOnce);
    assert_eq!(a.try_pop().unwrap().qos, QoS::AtMostOnce);
}

#[test]
fn unsubscribe_stops_delivery_and_reports_existence() {
    let router = Router::default();
    let mut a = queue("a");
    let id = ClientId::from("a");
    assert!(!router.subscribe("t/+", id.clone(), sub(&a, QoS::AtMostOnce)));
    assert!(router.subscribe("t/+", id.clone(), sub(&a, QoS::AtMostOnce)), "replaces");
    assert!(router.unsubscribe("t/+", &id));
    assert!(!router.unsubscribe("t/+", &id));
    assert_eq!(router.publish(&message("t/1", QoS::AtMostOnce)).matched, 0);
    assert!(a.try_pop().is_none());
}

#[test]
fn no_local_skips_own_messages_unless_another_subscription_matches() {
    // [MQTT-3.8.3-3]
    let router = Router::default();
    let mut a = queue("a");
    let id = ClientId::from("a");
    let no_local = SubscriptionOptions { no_local: true, ..SubscriptionOptions::qos(QoS::AtLeastOnce) };
    router.subscribe("t", id.clone(), subscriber(&a, no_local, None));
    let mut own = Message::new("t", &b"p"[..], QoS::AtLeastOnce);
    own.origin = Some(id.clone());
    let own = Arc::new(own);
    assert_eq!(router.publish(&own).matched, 0);
    router.subscribe("#", id, sub(&a, QoS::AtMostOnce));
    router.publish(&own);
    assert_eq!(a.try_pop().unwrap().qos, QoS::AtMostOnce, "delivered through the other subscription");
}

#[test]
fn retain_as_published_keeps_the_flag() {
    // [MQTT-3.3.1-12], [MQTT-3.3.1-13]
    let router = Router::default();
    let (mut keep, mut clear) = (queue("keep"), queue("clear"));
    let rap = SubscriptionOptions {
        retain_as_published: true,
        retain_handling: RetainHandling::Never,
        ..SubscriptionOptions::qos(QoS::AtMostOnce)
    };
    router.subscribe("t", ClientId::from("keep"), subscriber(&keep, rap, None));
    router.subscribe("t", ClientId::from("clear"), sub(&clear, QoS::AtMostOnce));
    let mut retained = Message::new("t", &b"p"[..], QoS::AtMostOnce);
    retained.retain = true;
    router.publish(&Arc::new(retained));
    assert!(keep.try_pop().unwrap().retain);
    assert!(!clear.try_pop().unwrap().retain);
}

#[test]
fn shared_groups_deliver_each_message_to_one_member_in_turn() {
    let router = Router::default();
    let (mut a, mut b) = (queue("a"), queue("b"));
    router.subscribe("$share/g/t/+", ClientId::from("a"), sub(&a, QoS::AtLeastOnce));
    router.subscribe("$share/g/t/+", ClientId::from("b"), sub(&b, QoS::AtLeastOnce));
    for _ in 0..4 {
        assert_eq!(router.publish(&message("t/1", QoS::AtLeastOnce)).queued, 1);
    }
    let count = |q: &mut PendingQueue| std::iter::from_fn(|| q.try_pop()).count();
    assert_eq!((count(&mut a), count(&mut b)), (2, 2));
}

#[test]
fn shared_groups_skip_members_without_credit_and_redistribute() {
    let router = Router::default();
    let (mut a, mut b) = (queue("a"), queue("b"));
    a.mailbox().set_inflight(10, 10); // window full
    router.subscribe("$share/g/t", ClientId::from("a"), sub(&a, QoS::AtLeastOnce));
    router.subscribe("$share/g/t", ClientId::from("b"), sub(&b, QoS::AtLeastOnce));
    router.publish(&message("t", QoS::AtLeastOnce));
    router.publish(&message("t", QoS::AtLeastOnce));
    assert!(a.try_pop().is_none());
    let first = b.try_pop().unwrap();
    let route = first.shared.clone().unwrap();
    assert_eq!(route.share, "$share/g/t");
    assert!(b.try_pop().is_some());
    // "b" leaves with `first` unacknowledged: it goes to "a".
    let ids = AtomicU64::new(1);
    assert_eq!(router.redistribute(&first, &route, &ClientId::from("b"), &ids, &open()).deliver().queued, 1);
    assert!(a.try_pop().is_some());
    router.unsubscribe("$share/g/t", &ClientId::from("a"));
    let none = router.redistribute(&first, &route, &ClientId::from("b"), &ids, &open()).deliver();
    assert_eq!(none.queued, 0, "no other member left");
}

#[test]
fn persistent_sessions_get_one_stored_message_and_a_delivery_each() {
    let router = Router::default();
    let (a, b, c) = (queue("a"), queue("b"), queue("c"));
    a.mailbox().set_persistent(true);
    b.mailbox().set_persistent(true);
    for (q, id) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        router.subscribe("t", ClientId::from(id), sub(q, QoS::AtLeastOnce));
    }
    let m = message("t", QoS::AtLeastOnce);
    let routed = router.route(&m, &AtomicU64::new(40), &open());
    let messages = routed.ops.iter().filter(|op| matches!(op, Op::PutMessage(40, _))).count();
    let deliveries = routed.ops.iter().filter(|op| matches!(op, Op::PutDelivery { .. })).count();
    assert_eq!(
        (messages, deliveries),
        (1, 2),
        "stored once, referenced twice; the clean session stores nothing"
    );
    assert_eq!((m.durable.id(), m.durable.refs()), (40, 2));
    routed.deliver();
    // QoS 0 deliveries are never stored.
    let routed = router.route(&message("t", QoS::AtMostOnce), &AtomicU64::new(50), &open());
    assert!(routed.ops.is_empty());
}

#[test]
fn subscriptions_are_listed_with_their_filters_shared_ones_in_full() {
    let router = Router::default();
    let (a, b) = (queue("a"), queue("b"));
    router.subscribe("s/+/t", ClientId::from("a"), sub(&a, QoS::AtLeastOnce));
    router.subscribe("other", ClientId::from("a"), sub(&a, QoS::AtMostOnce));
    router.subscribe("$share/g/s/x/t", ClientId::from("b"), sub(&b, QoS::ExactlyOnce));
    let selected = |filter: &str| crate::router::topic::filter_matches("s/#", filter);
    let mut found: Vec<(String, String, QoS)> = router
        .subscriptions(selected)
        .into_iter()
        .map(|e| (e.filter, e.client_id.0.to_string(), e.subscription.options.qos))
        .collect();
    found.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        found,
        [
            ("$share/g/s/x/t".into(), "b".into(), QoS::ExactlyOnce),
            ("s/+/t".into(), "a".into(), QoS::AtLeastOnce)
        ]
    );
    assert_eq!(router.subscriptions(|_| true).len(), 3);
}
