//! Routing: the subscription index, shared-subscription groups, the retained store and the
//! session registry.
//!
//! The publisher's own task routes its messages: it matches the topic under a read lock,
//! de-duplicates the matches per session and offers the message to each mailbox, which never
//! blocks. There is no router task and no lock held across an `.await`.
//!
//! Overlapping subscriptions of one client yield a single delivery [MQTT-3.3.4-2]: at the
//! highest QoS among the matching subscriptions, carrying every matching Subscription
//! Identifier [MQTT-3.3.4-3]. No Local removes a subscription from the match before that
//! merge, so another matching subscription without it still delivers; Retain As Published
//! applies when any of the remaining matching subscriptions has it. Shared subscriptions are
//! routed separately (one member per group) and are not merged with the client's own.

pub mod retain;
pub mod shared;
pub mod topic;
pub mod trie;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytestring::ByteString;

use crate::auth::ReadGate;
use crate::message::{Delivery, Message, SharedRoute};
use crate::metrics::METRICS;
use crate::packet::SubscriptionOptions;
use crate::session::queue::{Clock, Mailbox, Offer};
use crate::session::registry::Registry;
use crate::session::ClientId;
use crate::storage::{delivery_record, DeliveryState, Op};
use retain::RetainedStore;
use shared::Group;
use trie::TopicTree;

/// What a session subscribed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    /// Subscription Identifier (MQTT 5).
    pub id: Option<u32>,
}

/// One session's subscription to one filter.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub mailbox: Arc<Mailbox>,
    pub subscription: Subscription,
}

type SubscriberSet = HashMap<ClientId, Subscriber>;
type GroupSet = HashMap<ByteString, Group>;

/// What happened to one routed message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouteOutcome {
    /// Sessions whose subscriptions matched (after No Local).
    pub matched: usize,
    /// Sessions that got the message queued.
    pub queued: usize,
    /// Sessions whose queue was full (dropped by policy).
    pub dropped: usize,
    /// Of those, sessions whose full queue refuses the message to its publisher (a bridge
    /// with `overflow = "reject"`): the caller abandons the whole message.
    pub rejected: usize,
}

/// A message matched and admitted to its sessions' queues but not yet handed to them: the
/// caller commits `ops` (the stored copy for persistent sessions) first, then `deliver`s.
/// Handing over only after the commit was queued keeps every session's own storage writes
/// for the message ordered after it.
#[derive(Debug, Default)]
pub struct Routed {
    pub ops: Vec<Op>,
    targets: Vec<(Arc<Mailbox>, Delivery)>,
    pub outcome: RouteOutcome,
    /// Keep the sessions whose full queue refused the message in `dropped_for` (dead letters
    /// for `queue_full` are on); otherwise nothing is collected.
    keep_dropped: bool,
    pub dropped_for: Vec<Arc<Mailbox>>,
}

impl Routed {
    fn admit(&mut self, mailbox: &Arc<Mailbox>, mut delivery: Delivery) {
        self.outcome.matched += 1;
        match mailbox.admit(&delivery) {
            Offer::Queued => {
                self.outcome.queued += 1;
                if delivery.qos != crate::packet::QoS::AtMostOnce {
                    delivery.seq = mailbox.storage_seq();
                }
                self.targets.push((mailbox.clone(), delivery));
            }
            Offer::DroppedFull => {
                self.outcome.dropped += 1;
                self.outcome.rejected += usize::from(mailbox.rejects_when_full());
                if self.keep_dropped {
                    self.dropped_for.push(mailbox.clone());
                }
            }
            Offer::SkippedOffline | Offer::Closed => {}
        }
    }

    /// Admits one delivery for all of a session's matching subscriptions (`same_session`, not
    /// empty): at their highest QoS, with each of their Subscription Identifiers [MQTT-3.3.4-4]
    /// once. One SUBSCRIBE gives all its filters the same identifier, so several matches may
    /// share one; repeating it would tell the client nothing it can use.
    fn admit_merged(&mut self, message: &Arc<Message>, same_session: &[&Subscriber]) {
        let best = same_session.iter().map(|s| s.subscription.options.qos).max().unwrap_or(message.qos);
        let retain =
            message.retain && same_session.iter().any(|s| s.subscription.options.retain_as_published);
        let mut delivery = Delivery::new(message.clone(), best.min(message.qos), retain);
        delivery.subscription_ids = same_session.iter().filter_map(|s| s.subscription.id).collect();
        delivery.subscription_ids.sort_unstable();
        delivery.subscription_ids.dedup();
        self.admit(&same_session[0].mailbox, delivery);
    }

    /// Adds the storage records: the message once, a delivery per persistent session.
    fn record(&mut self, message: &Arc<Message>, ids: &AtomicU64) {
        let stored: Vec<_> = self.targets.iter().filter(|(_, d)| d.seq.is_some()).collect();
        if stored.is_empty() {
            return;
        }
        if let Some(id) = message.durable.acquire(stored.len(), || ids.fetch_add(1, Ordering::Relaxed)) {
            self.ops.push(Op::PutMessage(id, message.clone()));
        }
        for (mailbox, delivery) in stored {
            let record = delivery_record(delivery, DeliveryState::Queued);
            let seq = delivery.seq.unwrap_or_else(|| unreachable!("filtered above"));
            self.ops.push(Op::PutDelivery { client: mailbox.client_id().clone(), seq, record });
        }
    }

    /// Gives back the queue room `admit` reserved: the message will not be handed over (its
    /// storage failed).
    pub fn abandon(self) {
        for (mailbox, delivery) in &self.targets {
            mailbox.unadmit(delivery);
        }
    }

    /// Connected sessions whose queue this message filled: the publisher pauses until they
    /// have room (flow control) rather than have its next messages dropped.
    pub fn full_targets(&self) -> impl Iterator<Item = &Arc<Mailbox>> {
        let mut clock = Clock::default();
        self.targets.iter().filter(move |(m, _)| m.needs_flow_control(&mut clock)).map(|(m, _)| m)
    }

    /// Hands the deliveries to their sessions.
    pub fn deliver(self) -> RouteOutcome {
        for (mailbox, delivery) in self.targets {
            mailbox.deliver(delivery);
        }
        self.outcome
    }
}

/// One session's subscription, as the admin API lists it.
#[derive(Debug, Clone)]
pub struct SubscriptionEntry {
    /// As subscribed: `$share/{group}/{filter}` for a shared subscription.
    pub filter: String,
    pub client_id: ClientId,
    pub subscription: Subscription,
}

#[derive(Debug, Default)]
pub struct Router {
    subscriptions: RwLock<TopicTree<SubscriberSet>>,
    shared: RwLock<TopicTree<GroupSet>>,
    pub retained: RetainedStore,
    pub registry: Registry,
    /// Routes report the sessions whose full queue refused a message (`Routed::dropped_for`).
    keep_dropped: bool,
    /// Subscriptions (shared ones included) whose filter can match a dead letter: while there
    /// are none, no dead letter is built.
    dead_letter_readers: AtomicUsize,
}

impl Router {
    /// A router whose routes report refused sessions in `Routed::dropped_for` when
    /// `keep_dropped` (for `queue_full` dead letters).
    pub fn new(keep_dropped: bool) -> Self {
        Router { keep_dropped, ..Router::default() }
    }

    /// Some session subscribes to a filter that can match a dead letter (`$DLQ/...`).
    pub fn has_dead_letter_readers(&self) -> bool {
        self.dead_letter_readers.load(Ordering::Relaxed) > 0
    }

    /// Counts a subscription in or out of `dead_letter_readers` (`filter` without `$share/`).
    fn count_reader(&self, filter: &str, added: bool) {
        if crate::dead_letter::is_dead_letter_filter(filter) {
            if added {
                self.dead_letter_readers.fetch_add(1, Ordering::Relaxed);
            } else {
                self.dead_letter_readers.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds or replaces `client`'s subscription to `filter` (already validated). Returns true
    /// when it replaced an existing one.
    pub fn subscribe(&self, filter: &str, client: ClientId, subscriber: Subscriber) -> bool {
        if let Ok(Some(share)) = shared::parse(filter) {
            let mut tree = self.shared.write().unwrap_or_else(|e| e.into_inner());
            let groups = tree.entry(share.filter);
            let group = groups.entry(share.group.into()).or_insert_with(|| Group::new(filter.into()));
            let existed = group.remove(&client);
            group.insert(client, subscriber);
            if !existed {
                METRICS.subscription(true);
                self.count_reader(share.filter, true);
            }
            return existed;
        }
        let mut tree = self.subscriptions.write().unwrap_or_else(|e| e.into_inner());
        let existed = tree.entry(filter).insert(client, subscriber).is_some();
        if !existed {
            METRICS.subscription(true);
            self.count_reader(filter, true);
        }
        existed
    }

    /// Removes `client`'s subscription to `filter`; true if there was one.
    pub fn unsubscribe(&self, filter: &str, client: &ClientId) -> bool {
        let removed = self.remove_subscription(filter, client);
        if removed {
            METRICS.subscription(false);
            let filter = match shared::parse(filter) {
                Ok(Some(share)) => share.filter,
                _ => filter,
            };
            self.count_reader(filter, false);
        }
        removed
    }

    fn remove_subscription(&self, filter: &str, client: &ClientId) -> bool {
        if let Ok(Some(share)) = shared::parse(filter) {
            let mut tree = self.shared.write().unwrap_or_else(|e| e.into_inner());
            return tree
                .update(share.filter, |groups| {
                    let removed = groups.get_mut(share.group).is_some_and(|g| g.remove(client));
                    groups.retain(|_, g| !g.is_empty());
                    removed
                })
                .unwrap_or(false);
        }
        let mut tree = self.subscriptions.write().unwrap_or_else(|e| e.into_inner());
        tree.update(filter, |set| set.remove(client).is_some()).unwrap_or(false)
    }

    /// Removes every subscription in `filters` held by `client` (session end).
    pub fn unsubscribe_all<'a>(&self, filters: impl Iterator<Item = &'a ByteString>, client: &ClientId) {
        for filter in filters {
            self.unsubscribe(filter, client);
        }
    }

    /// Every subscription whose filter (for a shared one, the part after `$share/{group}/`)
    /// `selected` accepts. Walks the whole index under its read locks: for the admin API,
    /// never for routing.
    pub fn subscriptions(&self, selected: impl Fn(&str) -> bool) -> Vec<SubscriptionEntry> {
        let mut found = Vec::new();
        let tree = self.subscriptions.read().unwrap_or_else(|e| e.into_inner());
        trie::for_each_entry(&tree, &mut |filter, set: &SubscriberSet| {
            if !set.is_empty() && selected(filter) {
                found.extend(set.iter().map(|(client_id, s)| SubscriptionEntry {
                    filter: filter.to_owned(),
                    client_id: client_id.clone(),
                    subscription: s.subscription,
                }));
            }
        });
        drop(tree);
        let tree = self.shared.read().unwrap_or_else(|e| e.into_inner());
        trie::for_each_entry(&tree, &mut |filter, groups: &GroupSet| {
            if !groups.is_empty() && selected(filter) {
                for group in groups.values() {
                    found.extend(group.members().map(|(client_id, s)| SubscriptionEntry {
                        filter: group.share.to_string(),
                        client_id: client_id.clone(),
                        subscription: s.subscription,
                    }));
                }
            }
        });
        found
    }

    /// Matches `message` against every subscription; sessions `gate` forbids to read it are
    /// left out (a shared group picks a member that may read it).
    pub fn route(&self, message: &Arc<Message>, ids: &AtomicU64, gate: &dyn ReadGate) -> Routed {
        let mut routed = Routed { keep_dropped: self.keep_dropped, ..Routed::default() };
        self.route_direct(message, &mut routed, gate);
        self.route_shared(message, &mut routed, gate);
        routed.record(message, ids);
        routed
    }

    fn route_direct(&self, message: &Arc<Message>, routed: &mut Routed, gate: &dyn ReadGate) {
        let tree = self.subscriptions.read().unwrap_or_else(|e| e.into_inner());
        // Most topics match a single filter: its sessions are distinct and need no merging, and
        // nothing is collected per message.
        let mut first: Option<&SubscriberSet> = None;
        let mut more: Vec<&SubscriberSet> = Vec::new();
        trie::for_each_matching_filter(&tree, &message.topic, &mut |set: &SubscriberSet| {
            if !set.is_empty() {
                match first {
                    None => first = Some(set),
                    Some(_) => more.push(set),
                }
            }
        });
        let Some(first) = first else { return };
        // [MQTT-3.8.3-3]: No Local subscriptions do not get the client's own messages.
        let wanted = |s: &Subscriber| {
            let own = s.subscription.options.no_local
                && message.origin.as_ref().is_some_and(|origin| s.mailbox.client_id() == origin);
            !own && gate.may_read(&s.mailbox, &message.topic)
        };
        if more.is_empty() {
            routed.targets.reserve(first.len());
            for subscriber in first.values().filter(|s| wanted(s)) {
                routed.admit_merged(message, &[subscriber]);
            }
            return;
        }
        let mut matches: Vec<&Subscriber> =
            Vec::with_capacity(first.len() + more.iter().map(|set| set.len()).sum::<usize>());
        matches.extend(std::iter::once(first).chain(more).flat_map(|set| set.values()).filter(|s| wanted(s)));
        // Group the matches of each session together.
        matches.sort_unstable_by_key(|s| Arc::as_ptr(&s.mailbox));
        routed.targets.reserve(matches.len());
        for same_session in matches.chunk_by(|a, b| Arc::ptr_eq(&a.mailbox, &b.mailbox)) {
            routed.admit_merged(message, same_session);
        }
    }

    fn route_shared(&self, message: &Arc<Message>, routed: &mut Routed, gate: &dyn ReadGate) {
        let tree = self.shared.read().unwrap_or_else(|e| e.into_inner());
        let may_read = |s: &Subscriber| gate.may_read(&s.mailbox, &message.topic);
        trie::for_each_matching_filter(&tree, &message.topic, &mut |groups: &GroupSet| {
            for group in groups.values() {
                if let Some(member) = group.pick(None, &may_read) {
                    routed.admit(&member.mailbox, shared_delivery(message.clone(), member, group));
                }
            }
        });
    }

    /// Routes a delivery that came through `route` to another member of its group (the member
    /// that had it is leaving). Nothing is admitted when no other member exists.
    pub fn redistribute(
        &self,
        delivery: &Delivery,
        route: &SharedRoute,
        leaving: &ClientId,
        ids: &AtomicU64,
        gate: &dyn ReadGate,
    ) -> Routed {
        let mut routed = Routed::default();
        let Ok(Some(share)) = shared::parse(&route.share) else { return routed };
        let tree = self.shared.read().unwrap_or_else(|e| e.into_inner());
        let Some(group) = tree.get(share.filter).and_then(|groups| groups.get(share.group)) else {
            return routed;
        };
        let may_read = |s: &Subscriber| gate.may_read(&s.mailbox, &delivery.message.topic);
        if let Some(member) = group.pick(Some(leaving), &may_read) {
            routed.admit(&member.mailbox, shared_delivery(delivery.message.clone(), member, group));
        }
        drop(tree);
        routed.record(&delivery.message, ids);
        routed
    }
}

fn shared_delivery(message: Arc<Message>, member: &Subscriber, group: &Group) -> Delivery {
    let options = member.subscription.options;
    let retain = message.retain && options.retain_as_published;
    let qos = options.qos.min(message.qos);
    let mut delivery = Delivery::new(message, qos, retain);
    delivery.subscription_ids.extend(member.subscription.id);
    delivery.shared = Some(Box::new(SharedRoute { share: group.share.clone() }));
    delivery
}

#[cfg(test)]
mod tests;
