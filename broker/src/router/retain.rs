//! Retained messages: the last retained PUBLISH per topic, found again by filter on subscribe.

use std::sync::{Arc, RwLock};

use crate::message::Message;
use crate::metrics::METRICS;

use super::trie::{self, TopicTree};

#[derive(Debug, Default)]
pub struct RetainedStore {
    tree: RwLock<TopicTree<Option<Arc<Message>>>>,
}

/// What a retained PUBLISH did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainChange {
    Stored,
    /// An empty payload removes the retained message of its topic [MQTT-3.3.1-10].
    Cleared,
}

impl RetainedStore {
    /// Stores `message` as its topic's retained message, replacing any previous one
    /// [MQTT-3.3.1-5], or clears the topic when the payload is empty.
    pub fn apply(&self, message: &Arc<Message>) -> RetainChange {
        let mut tree = self.tree.write().unwrap_or_else(|e| e.into_inner());
        if message.payload.is_empty() {
            if let Some(Some(old)) = tree.update(&message.topic, |slot| slot.take()) {
                METRICS.retained(false, old.weight());
            }
            RetainChange::Cleared
        } else {
            if let Some(old) = tree.entry(&message.topic).replace(message.clone()) {
                METRICS.retained(false, old.weight());
            }
            METRICS.retained(true, message.weight());
            RetainChange::Stored
        }
    }

    /// Retained messages whose topic matches `filter` (already validated).
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let tree = self.tree.read().unwrap_or_else(|e| e.into_inner());
        let mut found = Vec::new();
        trie::for_each_matching_topic(&tree, filter, &mut |slot: &Option<Arc<Message>>| {
            found.extend(slot.iter().cloned());
        });
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::QoS;

    fn retained(topic: &str, payload: &'static str) -> Arc<Message> {
        let mut m = Message::new(topic, &b""[..], QoS::AtLeastOnce);
        m.payload = bytes::Bytes::copy_from_slice(payload.as_bytes());
        m.retain = true;
        Arc::new(m)
    }

    #[test]
    fn store_replace_and_clear() {
        let store = RetainedStore::default();
        assert_eq!(store.apply(&retained("a/b", "1")), RetainChange::Stored);
        assert_eq!(store.apply(&retained("a/b", "2")), RetainChange::Stored);
        store.apply(&retained("a/c", "3"));
        let mut found: Vec<_> = store.matching("a/+").iter().map(|m| m.payload.clone()).collect();
        found.sort();
        assert_eq!(found, vec!["2", "3"]);
        assert_eq!(store.apply(&retained("a/b", "")), RetainChange::Cleared);
        assert_eq!(store.matching("a/#").len(), 1);
        assert!(store.matching("a/b").is_empty());
    }

    #[test]
    fn dollar_topics_need_an_explicit_first_level() {
        let store = RetainedStore::default();
        store.apply(&retained("$SYS/x", "1"));
        assert!(store.matching("#").is_empty());
        assert!(store.matching("+/x").is_empty());
        assert_eq!(store.matching("$SYS/#").len(), 1);
    }
}
