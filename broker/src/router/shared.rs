//! Shared subscriptions, `$share/{group}/{filter}` (MQTT 5 section 4.8.2; also accepted from
//! 3.1.1 clients, as Mosquitto and EMQX do).
//!
//! Each message matching a group's filter goes to one member: round-robin, skipping members
//! that are offline or whose in-flight window is full, falling back to any online member and
//! then to any member (an offline persistent member queues it).

use std::sync::atomic::{AtomicUsize, Ordering};

use bytestring::ByteString;

use super::topic::{validate_topic_filter, TopicError};
use super::Subscriber;
use crate::session::ClientId;

const PREFIX: &str = "$share/";

/// A parsed shared-subscription filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    /// The topic filter after the group name.
    pub filter: &'a str,
}

/// Splits `$share/{group}/{filter}`; `Ok(None)` for an ordinary filter. The share name must be
/// non-empty without `/`, `+` or `#` and a filter must follow [MQTT-4.8.2-1], [MQTT-4.8.2-2].
pub fn parse(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(PREFIX) else {
        if filter == "$share" {
            return Err(TopicError::InvalidShareName);
        }
        return Ok(None);
    };
    let (group, filter) = rest.split_once('/').ok_or(TopicError::InvalidShareName)?;
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError::InvalidShareName);
    }
    validate_topic_filter(filter)?;
    Ok(Some(SharedFilter { group, filter }))
}

/// Checks a SUBSCRIBE or UNSUBSCRIBE filter, ordinary or shared; `Some` for a shared one.
pub fn check_filter(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let share = parse(filter)?;
    if share.is_none() {
        validate_topic_filter(filter)?;
    }
    Ok(share)
}

/// The members of one share group on one filter.
#[derive(Debug)]
pub struct Group {
    /// The full `$share/{group}/{filter}`, recorded on deliveries for redistribution.
    pub share: ByteString,
    members: Vec<(ClientId, Subscriber)>,
    cursor: AtomicUsize,
}

impl Group {
    pub fn new(share: ByteString) -> Self {
        Group { share, members: Vec::new(), cursor: AtomicUsize::new(0) }
    }

    pub fn insert(&mut self, client: ClientId, subscriber: Subscriber) {
        match self.members.iter_mut().find(|(c, _)| *c == client) {
            Some(member) => member.1 = subscriber,
            None => self.members.push((client, subscriber)),
        }
    }

    /// Removes `client`; true if it was a member.
    pub fn remove(&mut self, client: &ClientId) -> bool {
        let before = self.members.len();
        self.members.retain(|(c, _)| c != client);
        self.members.len() != before
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> impl Iterator<Item = &(ClientId, Subscriber)> + '_ {
        self.members.iter()
    }

    /// The member to receive the next message: `eligible` (e.g. allowed to read it), never
    /// `exclude`; round-robin, preferring members with room in their in-flight window.
    pub fn pick(
        &self,
        exclude: Option<&ClientId>,
        eligible: &dyn Fn(&Subscriber) -> bool,
    ) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let candidates = || {
            (0..n)
                .map(move |i| &self.members[(start + i) % n])
                .filter(move |(c, s)| Some(c) != exclude && eligible(s))
        };
        candidates()
            .find(|(_, s)| s.mailbox.has_credit())
            .or_else(|| candidates().find(|(_, s)| s.mailbox.is_online()))
            .or_else(|| candidates().next())
            .map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_names_are_parsed_and_checked() {
        assert_eq!(parse("a/b"), Ok(None));
        assert_eq!(parse("$share/g/a/+"), Ok(Some(SharedFilter { group: "g", filter: "a/+" })));
        assert_eq!(parse("$share/g/#"), Ok(Some(SharedFilter { group: "g", filter: "#" })));
        for bad in ["$share", "$share/", "$share/g", "$share//a", "$share/g+/a", "$share/#/a"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("$share/g/a#"), Err(TopicError::MisplacedMultiLevelWildcard));
    }

    #[test]
    fn filters_are_checked_whether_shared_or_not() {
        assert_eq!(check_filter("a/+"), Ok(None));
        assert_eq!(check_filter("$share/g/a"), Ok(Some(SharedFilter { group: "g", filter: "a" })));
        assert_eq!(check_filter(""), Err(TopicError::Empty));
        assert_eq!(check_filter("a/#/b"), Err(TopicError::MisplacedMultiLevelWildcard));
        assert_eq!(check_filter("$share/g"), Err(TopicError::InvalidShareName));
    }
}
