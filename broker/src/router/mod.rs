//! Routing: the subscription index, the retained store and the session registry.
//!
//! The publisher's own task routes its messages: it matches the topic under a read lock,
//! de-duplicates the matches per session and offers the message to each mailbox, which never
//! blocks. There is no router task and no global lock held across an `.await`.
//!
//! Overlapping subscriptions of one client yield a single delivery at the highest QoS among the
//! matching subscriptions (MQTT 3.1.1 section 3.3.5 allows one copy at the maximum QoS; MQTT 5
//! requires it [MQTT-3.3.4-2]).

pub mod retain;
pub mod topic;
pub mod trie;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytestring::ByteString;

use crate::message::{Delivery, Message};
use crate::packet::QoS;
use crate::session::queue::{Mailbox, Offer};
use crate::session::registry::Registry;
use crate::session::ClientId;
use retain::RetainedStore;
use trie::TopicTree;

/// One session's subscription to one filter.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub mailbox: Arc<Mailbox>,
    pub qos: QoS,
}

type SubscriberSet = HashMap<ClientId, Subscriber>;

/// Counts of what happened to one routed message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouteOutcome {
    /// Sessions that got the message queued.
    pub queued: usize,
    /// Sessions whose queue was full (dropped by policy).
    pub dropped: usize,
}

#[derive(Debug, Default)]
pub struct Router {
    subscriptions: RwLock<TopicTree<SubscriberSet>>,
    pub retained: RetainedStore,
    pub registry: Registry,
}

impl Router {
    /// Adds or replaces `client`'s subscription to `filter` (already validated).
    pub fn subscribe(&self, filter: &str, client: ClientId, subscriber: Subscriber) {
        let mut tree = self.subscriptions.write().unwrap_or_else(|e| e.into_inner());
        tree.entry(filter).insert(client, subscriber);
    }

    /// Removes `client`'s subscription to `filter`; true if there was one.
    pub fn unsubscribe(&self, filter: &str, client: &ClientId) -> bool {
        let mut tree = self.subscriptions.write().unwrap_or_else(|e| e.into_inner());
        tree.update(filter, |set| set.remove(client).is_some()).unwrap_or(false)
    }

    /// Removes every subscription in `filters` held by `client` (session end).
    pub fn unsubscribe_all<'a>(&self, filters: impl Iterator<Item = &'a ByteString>, client: &ClientId) {
        let mut tree = self.subscriptions.write().unwrap_or_else(|e| e.into_inner());
        for filter in filters {
            tree.update(filter, |set| set.remove(client));
        }
    }

    /// Routes `message` to every matching session, once per session.
    pub fn publish(&self, message: &Arc<Message>) -> RouteOutcome {
        let tree = self.subscriptions.read().unwrap_or_else(|e| e.into_inner());
        let mut matches: Vec<&Subscriber> = Vec::new();
        trie::for_each_matching_filter(&tree, &message.topic, &mut |set: &SubscriberSet| {
            matches.extend(set.values());
        });
        // One delivery per session at the highest matching QoS: sort by mailbox, keep the max.
        matches.sort_unstable_by_key(|s| (Arc::as_ptr(&s.mailbox), std::cmp::Reverse(s.qos)));
        matches.dedup_by_key(|s| Arc::as_ptr(&s.mailbox));
        let mut outcome = RouteOutcome::default();
        for subscriber in matches {
            let delivery =
                Delivery { message: message.clone(), qos: subscriber.qos.min(message.qos), retain: false };
            match subscriber.mailbox.offer(delivery) {
                Offer::Queued => outcome.queued += 1,
                Offer::DroppedFull => outcome.dropped += 1,
                Offer::SkippedOffline | Offer::Closed => {}
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::queue::{PendingQueue, QueueLimits};

    fn queue(id: &str) -> PendingQueue {
        let q = PendingQueue::new(ClientId::from(id), QueueLimits { max_messages: 100, max_bytes: 1 << 20 });
        q.mailbox().set_online(true);
        q
    }

    fn message(topic: &str, qos: QoS) -> Arc<Message> {
        Arc::new(Message { topic: topic.into(), payload: "p".into(), qos, retain: false })
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_at_highest_qos() {
        let router = Router::default();
        let mut a = queue("a");
        let id = ClientId::from("a");
        router.subscribe(
            "x/#",
            id.clone(),
            Subscriber { mailbox: a.mailbox().clone(), qos: QoS::AtMostOnce },
        );
        router.subscribe(
            "x/+",
            id.clone(),
            Subscriber { mailbox: a.mailbox().clone(), qos: QoS::ExactlyOnce },
        );
        router.subscribe("x/y", id, Subscriber { mailbox: a.mailbox().clone(), qos: QoS::AtLeastOnce });
        let outcome = router.publish(&message("x/y", QoS::ExactlyOnce));
        assert_eq!(outcome.queued, 1);
        let d = a.try_pop().unwrap();
        assert_eq!(d.qos, QoS::ExactlyOnce);
        assert!(a.try_pop().is_none());
    }

    #[test]
    fn delivery_qos_is_downgraded_to_the_subscription() {
        // [MQTT-3.8.4-6]
        let router = Router::default();
        let mut a = queue("a");
        router.subscribe(
            "t",
            ClientId::from("a"),
            Subscriber { mailbox: a.mailbox().clone(), qos: QoS::AtLeastOnce },
        );
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
        router.subscribe(
            "t/+",
            id.clone(),
            Subscriber { mailbox: a.mailbox().clone(), qos: QoS::AtMostOnce },
        );
        assert!(router.unsubscribe("t/+", &id));
        assert!(!router.unsubscribe("t/+", &id));
        assert_eq!(router.publish(&message("t/1", QoS::AtMostOnce)).queued, 0);
        assert!(a.try_pop().is_none());
    }
}
