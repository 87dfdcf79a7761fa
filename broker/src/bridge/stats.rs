//! Per-bridge counters: one set per configured bridge, written by its task and read by
//! `GET /metrics` (label `bridge`) and by the `$SYS` tree (`$SYS/broker/connection/<name>/...`),
//! so the two never disagree.
//!
//! Like `crate::metrics`, the sets live in one process-wide list (`STATS`): the bridge task
//! registers its set when it starts and takes it out when it stops; readers clone the `Arc`s
//! and never wait for a bridge. Counters use `Relaxed` atomics and only rise; the queue gauges
//! are read from the bridge session's mailbox when asked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::bridge::Overflow;
use crate::session::queue::Mailbox;

/// The counter sets of the running bridges.
static STATS: RwLock<Vec<Arc<BridgeStats>>> = RwLock::new(Vec::new());

/// Why a queued message never reached the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeDrop {
    /// Dropped from the front of the queue to make room (`overflow = "drop_oldest"`).
    Oldest = 0,
    /// Not queued, the queue being full (`overflow = "drop_newest"`).
    Newest = 1,
    /// Refused to its publisher, the queue being full (`overflow = "reject"`).
    Rejected = 2,
    /// Its Message Expiry Interval passed while it was queued [MQTT-3.3.2-5].
    Expired = 3,
    /// Larger than the upstream's Maximum Packet Size [MQTT-3.2.2-15].
    TooLarge = 4,
    /// Its hop count reached the bridge's `max_hops` (a forwarding loop).
    MaxHops = 5,
    /// The upstream answered with an error reason code (0x80 or above): not retried.
    Refused = 6,
}

impl BridgeDrop {
    pub const ALL: [BridgeDrop; 7] = [
        BridgeDrop::Oldest,
        BridgeDrop::Newest,
        BridgeDrop::Rejected,
        BridgeDrop::Expired,
        BridgeDrop::TooLarge,
        BridgeDrop::MaxHops,
        BridgeDrop::Refused,
    ];

    /// The label value in `/metrics` and the last level of the `$SYS` topic.
    pub fn label(self) -> &'static str {
        match self {
            BridgeDrop::Oldest => "drop_oldest",
            BridgeDrop::Newest => "drop_newest",
            BridgeDrop::Rejected => "rejected",
            BridgeDrop::Expired => "expired",
            BridgeDrop::TooLarge => "too_large",
            BridgeDrop::MaxHops => "max_hops",
            BridgeDrop::Refused => "refused",
        }
    }
}

/// What one bridge did since it started, and what it holds now.
#[derive(Debug)]
pub struct BridgeStats {
    pub name: String,
    /// The bridge session's queue: what the queue gauges and the overflow drops are read from.
    mailbox: Arc<Mailbox>,
    /// Which `BridgeDrop` the mailbox's own overflow count is (`Newest` or `Rejected`).
    overflow: Overflow,
    pub linked: AtomicBool,
    /// Links established (the first one included).
    pub links: AtomicU64,
    /// PUBLISH packets sent upstream for the first time, and again with DUP=1.
    pub forwarded: AtomicU64,
    pub resent: AtomicU64,
    /// Deliveries the upstream completed (PUBACK, PUBCOMP, or an error reason code).
    pub acknowledged: AtomicU64,
    /// Messages received from the upstream.
    pub received: AtomicU64,
    /// Links on which the upstream had lost the bridge's session (CONNACK session present 0)
    /// while messages were in flight: those were re-sent as new, at-least-once.
    pub session_lost: AtomicU64,
    /// Counted by the bridge task, by `BridgeDrop` (the queue's own overflow is read from it).
    dropped: [AtomicU64; 7],
    /// When the oldest message the bridge holds (queued or in flight) was received, on the
    /// `crate::clock` scale in milliseconds, plus one; 0 when it holds none.
    oldest_at_ms: AtomicU64,
}

impl BridgeStats {
    /// Registers a set for the bridge `name`, replacing an earlier one of that name.
    pub fn register(name: &str, mailbox: Arc<Mailbox>, overflow: Overflow) -> Arc<BridgeStats> {
        let stats = Arc::new(BridgeStats {
            name: name.to_owned(),
            mailbox,
            overflow,
            linked: AtomicBool::new(false),
            links: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            received: AtomicU64::new(0),
            session_lost: AtomicU64::new(0),
            dropped: Default::default(),
            oldest_at_ms: AtomicU64::new(0),
        });
        let mut all = STATS.write().unwrap_or_else(|e| e.into_inner());
        all.retain(|s| s.name != name);
        all.push(stats.clone());
        all.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// Takes this set out of the list (the bridge stopped).
    pub fn unregister(self: &Arc<Self>) {
        STATS.write().unwrap_or_else(|e| e.into_inner()).retain(|s| !Arc::ptr_eq(s, self));
    }

    /// Every running bridge's set, by name.
    pub fn all() -> Vec<Arc<BridgeStats>> {
        STATS.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts `n` messages dropped for `reason`.
    pub fn dropped_for(&self, reason: BridgeDrop, n: u64) {
        BridgeStats::add(&self.dropped[reason as usize], n);
    }

    /// Sets a count kept elsewhere (the session's expired deliveries).
    pub fn set_dropped(&self, reason: BridgeDrop, n: u64) {
        self.dropped[reason as usize].store(n, Ordering::Relaxed);
    }

    /// Messages dropped for `reason` since the bridge started.
    pub fn dropped(&self, reason: BridgeDrop) -> u64 {
        let own = self.dropped[reason as usize].load(Ordering::Relaxed);
        let by_queue = match (reason, self.overflow) {
            (BridgeDrop::Newest, Overflow::DropNewest | Overflow::DropOldest)
            | (BridgeDrop::Rejected, Overflow::Reject) => self.mailbox.dropped(),
            _ => 0,
        };
        own + by_queue
    }

    /// Messages waiting for the upstream (not yet in flight), and their topic + payload bytes.
    pub fn queued(&self) -> (u64, u64) {
        (self.mailbox.pending() as u64, self.mailbox.pending_bytes() as u64)
    }

    /// Messages sent and not yet acknowledged by the upstream.
    pub fn in_flight(&self) -> u64 {
        u64::from(self.mailbox.inflight())
    }

    /// Records when the oldest message held was received (`None`: none held).
    pub fn set_oldest(&self, received: Option<Instant>) {
        let ms = received.map_or(0, |at| ms(crate::clock::since_start(at)) + 1);
        self.oldest_at_ms.store(ms, Ordering::Relaxed);
    }

    /// Age in whole seconds of the oldest message held (0 when none).
    pub fn oldest_age_secs(&self, now: Instant) -> u64 {
        match self.oldest_at_ms.load(Ordering::Relaxed) {
            0 => 0,
            at => ms(crate::clock::since_start(now)).saturating_sub(at - 1) / 1000,
        }
    }

    /// The `$SYS/broker/connection/<name>/...` topics and payloads of this set (`state` is
    /// published by the bridge itself, retained, at every change).
    pub fn sys_values(&self, now: Instant) -> Vec<(String, String)> {
        let (queued, queued_bytes) = self.queued();
        let get = |c: &AtomicU64| load(c).to_string();
        let mut values = vec![
            ("queued/messages", queued.to_string()),
            ("queued/bytes", queued_bytes.to_string()),
            ("queued/oldest_age_seconds", self.oldest_age_secs(now).to_string()),
            ("inflight", self.in_flight().to_string()),
            ("forwarded", get(&self.forwarded)),
            ("resent", get(&self.resent)),
            ("acknowledged", get(&self.acknowledged)),
            ("received", get(&self.received)),
            ("reconnects", self.reconnects().to_string()),
            ("upstream_session_lost", get(&self.session_lost)),
        ];
        let mut topics: Vec<(String, String)> =
            values.drain(..).map(|(topic, value)| (self.sys_topic(topic), value)).collect();
        for reason in BridgeDrop::ALL {
            topics.push((
                self.sys_topic(&format!("dropped/{}", reason.label())),
                self.dropped(reason).to_string(),
            ));
        }
        topics
    }

    fn sys_topic(&self, rest: &str) -> String {
        format!("$SYS/broker/connection/{}/{rest}", self.name)
    }

    /// Links established after the first one.
    pub fn reconnects(&self) -> u64 {
        self.links.load(Ordering::Relaxed).saturating_sub(1)
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Appends the bridge families to a Prometheus text exposition (format 0.0.4), one sample per
/// bridge with the label `bridge`. Families are written even with no bridge (HELP and TYPE
/// only), so a dashboard's queries stay valid.
pub fn render_metrics(out: &mut String, now: Instant) {
    use std::fmt::Write;
    let all = BridgeStats::all();
    let mut family =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&BridgeStats) -> Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for stats in &all {
                for (labels, v) in value(stats) {
                    let _ = writeln!(out, "{name}{{bridge=\"{}\"{labels}}} {v}", stats.name);
                }
            }
        };
    let plain = |f: fn(&BridgeStats) -> u64| move |s: &BridgeStats| vec![(String::new(), f(s))];
    family(
        "tern_bridge_up",
        "gauge",
        "1 while the bridge is linked to its upstream.",
        &plain(|s| u64::from(s.linked.load(Ordering::Relaxed))),
    );
    family(
        "tern_bridge_queued_messages",
        "gauge",
        "Messages waiting for the upstream, not yet in flight.",
        &plain(|s| s.queued().0),
    );
    family(
        "tern_bridge_queued_bytes",
        "gauge",
        "Topic and payload bytes of the queued messages.",
        &plain(|s| s.queued().1),
    );
    family(
        "tern_bridge_inflight_messages",
        "gauge",
        "Messages sent upstream and not yet acknowledged.",
        &plain(BridgeStats::in_flight),
    );
    family(
        "tern_bridge_oldest_queued_age_seconds",
        "gauge",
        "Age of the oldest message the bridge holds (0 when none).",
        &|s: &BridgeStats| vec![(String::new(), s.oldest_age_secs(now))],
    );
    family(
        "tern_bridge_forwarded_total",
        "counter",
        "PUBLISH packets sent upstream for the first time.",
        &plain(|s| load(&s.forwarded)),
    );
    family(
        "tern_bridge_resent_total",
        "counter",
        "PUBLISH packets sent upstream again with DUP=1.",
        &plain(|s| load(&s.resent)),
    );
    family(
        "tern_bridge_acknowledged_total",
        "counter",
        "Deliveries the upstream completed.",
        &plain(|s| load(&s.acknowledged)),
    );
    family(
        "tern_bridge_received_total",
        "counter",
        "Messages received from the upstream.",
        &plain(|s| load(&s.received)),
    );
    family(
        "tern_bridge_reconnects_total",
        "counter",
        "Links established after the first one.",
        &plain(BridgeStats::reconnects),
    );
    family(
        "tern_bridge_upstream_session_lost_total",
        "counter",
        "Links where the upstream had lost the bridge's session with messages in flight (re-sent at-least-once).",
        &plain(|s| load(&s.session_lost)),
    );
    family(
        "tern_bridge_dropped_total",
        "counter",
        "Messages that never reached the upstream, by reason.",
        &|s: &BridgeStats| {
            BridgeDrop::ALL.iter().map(|&r| (format!(",reason=\"{}\"", r.label()), s.dropped(r))).collect()
        },
    );
}
