//! MQTT 5 topic aliases (section 3.3.2.3.4). Aliases belong to one network connection, in each
//! direction separately [MQTT-3.3.2-7].

use std::collections::HashMap;

use bytestring::ByteString;

use super::CodecError;
use crate::packet::Publish;

/// An alias table, allocated when the first alias is used: most connections never use one,
/// and every connection carries both directions' tables.
type Table<K, V> = Option<Box<HashMap<K, V>>>;

/// Client-to-broker aliases: up to the maximum we advertised in CONNACK.
#[derive(Debug)]
pub(super) struct InboundAliases {
    maximum: u16,
    topics: Table<u16, ByteString>,
}

impl InboundAliases {
    pub fn new(maximum: u16) -> Self {
        InboundAliases { maximum, topics: None }
    }

    /// Replaces an alias by its topic (recording a new mapping when the PUBLISH carries both),
    /// and removes the alias property so it is never forwarded.
    pub fn resolve(&mut self, publish: &mut Publish) -> Result<(), CodecError> {
        let Some(alias) = publish.properties.topic_alias.take() else {
            if publish.topic.is_empty() {
                return Err(CodecError::Violation("empty topic name without a topic alias [MQTT-3.3.2-1]"));
            }
            return Ok(());
        };
        // [MQTT-3.3.2-8], [MQTT-3.3.2-9]: 0 and values above our maximum are invalid.
        if alias == 0 || alias > self.maximum {
            return Err(CodecError::TopicAliasInvalid(alias));
        }
        if publish.topic.is_empty() {
            // An alias with no mapping yet is a protocol error (section 3.3.4, case 3a).
            publish.topic = self.topics.as_ref().and_then(|t| t.get(&alias)).cloned().ok_or(
                CodecError::Violation("topic alias without a mapping and an empty topic [MQTT-3.3.4]"),
            )?;
        } else {
            self.topics.get_or_insert_default().insert(alias, publish.topic.clone());
        }
        Ok(())
    }
}

/// Broker-to-client aliases: the first `maximum` distinct topics sent get an alias each and
/// keep it for the life of the connection; later topics are sent in full. That favours the
/// long-lived topics a device sees first and never re-maps an alias, so there is no state the
/// client could get out of step with.
#[derive(Debug)]
pub(super) struct OutboundAliases {
    maximum: u16,
    assigned: Table<ByteString, u16>,
}

impl OutboundAliases {
    pub fn new(maximum: u16) -> Self {
        OutboundAliases { maximum, assigned: None }
    }

    /// Sends `publish` by alias when possible: the first time with topic and alias (the
    /// client learns the mapping), afterwards with an empty topic and the alias. Returns the
    /// topic when a new alias was assigned, so the caller can `unassign` it if the packet is
    /// never written.
    pub fn apply(&mut self, publish: &mut Publish) -> Option<ByteString> {
        if self.maximum == 0 {
            return None;
        }
        let assigned = self.assigned.get_or_insert_default();
        if let Some(&alias) = assigned.get(&publish.topic) {
            publish.properties.topic_alias = Some(alias);
            publish.topic = ByteString::new();
            return None;
        }
        let next = assigned.len() as u16 + 1;
        if next > self.maximum {
            return None;
        }
        assigned.insert(publish.topic.clone(), next);
        publish.properties.topic_alias = Some(next);
        Some(publish.topic.clone())
    }

    /// Takes back the alias most recently assigned to `topic` (its PUBLISH was not sent).
    pub fn unassign(&mut self, topic: &ByteString) {
        if let Some(assigned) = &mut self.assigned {
            assigned.remove(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{PublishProperties, QoS};

    fn publish(topic: &str, alias: Option<u16>) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            payload: "x".into(),
            properties: PublishProperties { topic_alias: alias, ..Default::default() },
        }
    }

    #[test]
    fn inbound_alias_is_learned_then_resolved() {
        let mut aliases = InboundAliases::new(2);
        let mut first = publish("a/b", Some(1));
        aliases.resolve(&mut first).unwrap();
        assert_eq!((first.topic.as_ref(), first.properties.topic_alias), ("a/b", None));
        let mut second = publish("", Some(1));
        aliases.resolve(&mut second).unwrap();
        assert_eq!(second.topic, "a/b");
    }

    #[test]
    fn inbound_alias_out_of_range_or_unknown_is_invalid() {
        let mut aliases = InboundAliases::new(2);
        assert!(matches!(aliases.resolve(&mut publish("t", Some(0))), Err(CodecError::TopicAliasInvalid(0))));
        assert!(matches!(aliases.resolve(&mut publish("t", Some(3))), Err(CodecError::TopicAliasInvalid(3))));
        assert!(matches!(aliases.resolve(&mut publish("", Some(2))), Err(CodecError::Violation(_))));
        assert!(matches!(aliases.resolve(&mut publish("", None)), Err(CodecError::Violation(_))));
    }

    #[test]
    fn outbound_aliases_fill_up_then_send_full_topics() {
        let mut aliases = OutboundAliases::new(1);
        let mut first = publish("a", None);
        assert_eq!(aliases.apply(&mut first), Some("a".into()));
        assert_eq!((first.topic.as_ref(), first.properties.topic_alias), ("a", Some(1)));
        let mut again = publish("a", None);
        aliases.apply(&mut again);
        assert_eq!((again.topic.as_ref(), again.properties.topic_alias), ("", Some(1)));
        let mut other = publish("b", None);
        assert_eq!(aliases.apply(&mut other), None);
        assert_eq!((other.topic.as_ref(), other.properties.topic_alias), ("b", None));
    }
}
