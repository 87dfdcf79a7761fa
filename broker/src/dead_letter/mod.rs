//! Dead letters: a message the broker could not deliver to a subscriber is published on
//! `$DLQ/<reason>/<original topic>` instead of vanishing (issue 17, decision 0005).
//!
//! Where losses come from, and who reports them:
//! - `queue_full`: the publisher's task, when a session's queue refuses a delivery (the router
//!   keeps the refused mailboxes in `Routed::dropped_for` only while this reason is on).
//! - `expired`, `rejected`, `delivery_limit`, `session_expired`: the sans-IO `Session` pushes a
//!   `Lost` into `Session::lost` (only for the reasons its `Policy` wants); its owning task
//!   hands them to `DeadLetters::publish_lost`.
//! - `too_large`: the connection task, when the codec refuses a PUBLISH for the client's
//!   Maximum Packet Size.
//!
//! Every lost subscriber copy is one dead letter, published from the reporting task at once:
//! routed, its stored copies committed without waiting (as clean-up ops are) and handed over.
//! Best effort, at most once: a crash, a full reader queue or the rate limit loses it.
//!
//! Invariants and costs:
//! - Disabled (the default), or a reason not chosen: nothing is collected, cloned or
//!   allocated on any path (`Policy` is a copy of a few bytes in each session).
//! - A message on `$DLQ/` or `$SYS/` is never dead-lettered again (`Suppressed::Loop`): a dead
//!   letter's own loss cannot feed itself.
//! - Nothing is built while no session subscribes to a `$DLQ` filter (`Suppressed::NoReader`),
//!   nor beyond `max_rate` (`Suppressed::RateLimited`); both are counted.

mod bucket;
mod letter;

use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tracing::debug;

use crate::message::Message;
use crate::metrics::METRICS;
use crate::packet::ReasonCode;
use crate::router::topic::{is_broker_topic, DLQ_ROOT};
use crate::session::queue::Mailbox;
use crate::session::ClientId;
use crate::Broker;
use bucket::TokenBucket;

/// Why a subscriber's copy of a message was lost: the second level of the dead letter's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The session's pending queue was over `mqtt.max_queued_*`.
    QueueFull = 0,
    /// Its Message Expiry Interval passed before it was sent [MQTT-3.3.2-5].
    Expired = 1,
    /// The subscriber answered PUBACK or PUBREC with a reason code of 0x80 or above (MQTT 5).
    Rejected = 2,
    /// Larger than the subscriber's Maximum Packet Size [MQTT-3.1.2-25].
    TooLarge = 3,
    /// Sent `delivery_limit` times without an acknowledgement (a poison message).
    DeliveryLimit = 4,
    /// The session expired with the message still queued or unacknowledged.
    SessionExpired = 5,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::QueueFull,
        Reason::Expired,
        Reason::Rejected,
        Reason::TooLarge,
        Reason::DeliveryLimit,
        Reason::SessionExpired,
    ];

    /// The name in the topic, the `reasons` key and the metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::QueueFull => "queue_full",
            Reason::Expired => "expired",
            Reason::Rejected => "rejected",
            Reason::TooLarge => "too_large",
            Reason::DeliveryLimit => "delivery_limit",
            Reason::SessionExpired => "session_expired",
        }
    }

    pub fn from_label(label: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.label() == label)
    }

    /// The MQTT reason code a dead letter carries when the subscriber gave none: the spec's
    /// code for the condition, else 0x80 (MQTT has no closer one).
    pub fn default_code(self) -> ReasonCode {
        match self {
            Reason::QueueFull => ReasonCode::QUOTA_EXCEEDED,
            Reason::TooLarge => ReasonCode::PACKET_TOO_LARGE,
            Reason::Expired | Reason::Rejected | Reason::DeliveryLimit | Reason::SessionExpired => {
                ReasonCode::UNSPECIFIED_ERROR
            }
        }
    }
}

/// Why a lost copy got no dead letter (the `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    /// The lost message was itself on `$DLQ/` or `$SYS/`.
    Loop = 0,
    /// No session may read the dead letter's topic.
    NoReader = 1,
    /// Over `dead_letter.max_rate`.
    RateLimited = 2,
}

impl Suppressed {
    pub const ALL: [Suppressed; 3] = [Suppressed::Loop, Suppressed::NoReader, Suppressed::RateLimited];

    pub fn label(self) -> &'static str {
        match self {
            Suppressed::Loop => "loop",
            Suppressed::NoReader => "no_reader",
            Suppressed::RateLimited => "rate_limited",
        }
    }
}

/// One subscriber's copy of a message that was not delivered.
#[derive(Debug, Clone)]
pub struct Lost {
    pub message: Arc<Message>,
    /// The intended receiver.
    pub client_id: ClientId,
    pub reason: Reason,
    /// The subscriber's reason code (`Rejected`), else `Reason::default_code`.
    pub code: ReasonCode,
}

impl Lost {
    pub fn new(message: Arc<Message>, client_id: ClientId, reason: Reason) -> Self {
        Lost { message, client_id, reason, code: reason.default_code() }
    }
}

/// Which losses a session reports, and its delivery limit: a copy of a few bytes in each
/// session, all off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Bit `Reason as u8` set: reported.
    reasons: u8,
    delivery_limit: u16,
}

impl Policy {
    /// `delivery_limit` matters only with `Reason::DeliveryLimit` among `reasons`.
    pub fn new(reasons: &[Reason], delivery_limit: u16) -> Self {
        Policy { reasons: reasons.iter().fold(0, |bits, &r| bits | 1 << r as u8), delivery_limit }
    }

    pub fn wants(self, reason: Reason) -> bool {
        self.reasons & (1 << reason as u8) != 0
    }

    /// The most times a QoS 1/2 message is sent to a session, when enforced.
    pub fn delivery_limit(self) -> Option<u16> {
        (self.wants(Reason::DeliveryLimit) && self.delivery_limit > 0).then_some(self.delivery_limit)
    }
}

/// The payload encoding of dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The original payload and properties, facts in user properties (MQTT 5 readers).
    Raw,
    /// A JSON document with the facts and the payload in base64 (for 3.1.1 readers).
    Json,
}

/// The validated `[dead_letter]` section of an enabled configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub policy: Policy,
    /// Dead letters per second, sustained (bursts up to one second's worth); 0 = no limit.
    pub max_rate: u32,
    /// Payloads larger than this are left out of the dead letter (and flagged).
    pub max_payload: usize,
    pub format: Format,
}

/// The broker's dead-letter publisher.
#[derive(Debug, Default)]
pub struct DeadLetters {
    settings: Option<Settings>,
    /// Checked only on a loss with a reader, so the lock is never on a delivery path.
    bucket: Mutex<Option<TokenBucket>>,
}

impl DeadLetters {
    /// `None`: disabled.
    pub fn new(settings: Option<Settings>) -> Self {
        let bucket = settings.and_then(|s| TokenBucket::per_second(s.max_rate, Instant::now()));
        DeadLetters { settings, bucket: Mutex::new(bucket) }
    }

    /// What sessions report (all off when disabled).
    pub fn policy(&self) -> Policy {
        self.settings.map(|s| s.policy).unwrap_or_default()
    }

    /// Publishes a dead letter for each copy of `message` that the queues of `dropped_for`
    /// refused. A bridge's queue is not a subscriber's: its overflow policy counts its drops.
    pub fn queue_full(&self, broker: &Broker, message: &Arc<Message>, dropped_for: &[Arc<Mailbox>]) {
        for mailbox in dropped_for.iter().filter(|m| !crate::bridge::is_bridge_session(m.client_id())) {
            self.publish(broker, Lost::new(message.clone(), mailbox.client_id().clone(), Reason::QueueFull));
        }
    }

    /// Publishes the losses a session reported, emptying `lost`.
    pub fn publish_lost(&self, broker: &Broker, lost: &mut Vec<Lost>) {
        for lost in lost.drain(..) {
            self.publish(broker, lost);
        }
    }

    /// Publishes one dead letter, unless suppressed (counted either way).
    pub fn publish(&self, broker: &Broker, lost: Lost) {
        let Some(settings) = &self.settings else { return };
        if !settings.policy.wants(lost.reason) {
            return;
        }
        if is_broker_topic(&lost.message.topic) {
            return METRICS.dead_letters_suppressed(Suppressed::Loop, 1);
        }
        if !broker.router.has_dead_letter_readers() {
            return METRICS.dead_letters_suppressed(Suppressed::NoReader, 1);
        }
        if !self.take_token() {
            return METRICS.dead_letters_suppressed(Suppressed::RateLimited, 1);
        }
        let letter = Arc::new(letter::build(&lost, settings, std::time::SystemTime::now()));
        let mut routed = broker.router.route(&letter, &broker.message_ids, broker.security.as_ref());
        let outcome = routed.outcome;
        // A reader's full queue loses the dead letter for it; that loss is not dead-lettered
        // again.
        METRICS.dead_letters_suppressed(Suppressed::Loop, outcome.dropped);
        if outcome.queued == 0 {
            if outcome.matched == 0 {
                // Readers exist, but none may read this topic (ACL) or their filters differ.
                METRICS.dead_letters_suppressed(Suppressed::NoReader, 1);
            }
            return;
        }
        // Stored copies for persistent readers are committed without waiting, like clean-up:
        // the store applies them before anything the readers' tasks write later.
        let ops = std::mem::take(&mut routed.ops);
        if !ops.is_empty() {
            drop(broker.store.commit(ops));
        }
        routed.deliver();
        METRICS.dead_letter(lost.reason);
        debug!(topic = %letter.topic, client_id = %lost.client_id, "dead letter published");
    }

    fn take_token(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.as_mut().is_none_or(|b| b.take(Instant::now()))
    }
}

/// True for filters that can match a dead letter's topic: only those whose first level is
/// `$DLQ` ([MQTT-4.7.2-1]: wildcards at the first level never match `$` topics). `filter` is
/// the filter of a shared subscription without its `$share/<group>/`.
pub fn is_dead_letter_filter(filter: &str) -> bool {
    filter.split('/').next() == Some(DLQ_ROOT)
}

#[cfg(test)]
mod tests;
