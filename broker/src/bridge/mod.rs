//! Store-and-forward bridges: connections this broker opens to upstream MQTT servers.
//!
//! A bridge is a persistent session of this broker, `$bridge/<name>`, whose "client" is the
//! upstream server, reached over a connection the bridge task opens (`link.rs`). That one choice
//! gives the guarantees below from code every persistent session already runs:
//! - **Acknowledged = queued durably.** The session subscribes to the outbound topics (with
//!   No Local, so what the bridge itself brought in is not sent back, and Retain As
//!   Published). A local PUBLISH that matches is stored as a delivery record of this session in
//!   the same storage commit as the rest of that publish's ops, and the publisher's
//!   PUBACK/PUBREC waits for that commit (docs/decisions/0002-storage.md). With
//!   `storage.durability = "memory"` the queue is in memory.
//! - **Deleted on upstream acknowledgement only.** The session's QoS state machine stores the
//!   packet id and state (`AwaitingPubAck`, `AwaitingPubRec`, `AwaitingPubComp`) before the
//!   PUBLISH or PUBREL is written, and deletes the record on PUBACK or PUBCOMP from upstream.
//!   On reconnect and after a restart the unacknowledged window is re-sent in order, PUBLISH
//!   with DUP=1 and PUBREL with the same packet id [MQTT-4.4.0-1].
//! - **One ordered lane**: the session's pending queue, with an in-flight window of
//!   min(`max_inflight`, the upstream's Receive Maximum) [MQTT-3.3.4-9].
//! - **Inbound** (`in` topics): an upstream PUBLISH is routed here as if the session had
//!   published it, and PUBACK/PUBREC go upstream only after that publish's storage commit;
//!   inbound QoS 2 packet ids are stored until PUBREL, as for any persistent session.
//!
//! While the link is down the session stays with the bridge task (never in the offline roster,
//! so `limits.max_offline_sessions` cannot end it); it queues QoS 1/2 within the bridge's queue
//! budget and drops QoS 0, as an offline session does. Beyond the budget the newest are dropped
//! by the queue, or with `overflow = "drop_oldest"` the oldest by `Bridge::trim`, or with
//! `overflow = "reject"` the publisher is refused (its connection abandons the message:
//! `RouteOutcome::rejected`); counted and logged every way. The session's client id is refused
//! to clients (CONNACK 0x85 / 0x02).
//!
//! Loops: No Local both sides (MQTT 5), Mosquitto's `try_private` bridge bit (3.1.1), and the
//! `tern-hops` user property against `max_hops` (`link.rs`).
//!
//! Upstream capabilities from CONNACK: Maximum QoS caps what enters the window
//! (`Session::qos_cap`), Retain Available 0 clears RETAIN, Maximum Packet Size drops what is
//! larger; Receive Maximum sizes the window.
//!
//! Failover: `addresses` in order at every reconnect round; linked to a secondary, the primary
//! is probed and the link moves back once it answers.
//!
//! `kind = "jetstream"`: the same session, published to a NATS JetStream stream instead
//! (`jetstream.rs`, chosen in `upstream.rs`; docs/decisions/0006-jetstream-sink.md).
//!
//! Status: a retained `$SYS/broker/connection/<name>/state`, "1" while linked and "0"
//! otherwise (as Mosquitto publishes it), and one log line per change with the counters, which
//! `/metrics` and `$SYS` read too (`stats.rs`). SIGHUP: `reload.rs`.

mod jetstream;
mod keys;
mod lane;
mod link;
mod nats;
mod rate;
mod reload;
pub mod stats;
mod subject;
mod upstream;

pub use reload::Bridges;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::bridge::{BridgeConfig, Overflow};
use crate::connection::route_now;
use crate::message::Message;
use crate::packet::{ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};
use crate::router::topic::filter_matches;
use crate::router::{Subscriber, Subscription};
use crate::session::queue::QueueLimits;
use crate::session::registry::{control_slot, Control, ControlReceiver, OwnerId};
use crate::session::{ClientId, Session, SessionLimits, NEVER_EXPIRES};
use crate::storage::Op;
use crate::Broker;
use stats::{BridgeDrop, BridgeStats};

/// Client ids of bridge sessions start with this; clients may not use it.
pub const SESSION_PREFIX: &str = "$bridge/";

/// A link that stayed up this long resets the reconnect backoff to its minimum.
const STABLE_LINK: Duration = Duration::from_secs(10);

/// True for the local session of a bridge.
pub fn is_bridge_session(client_id: &ClientId) -> bool {
    client_id.0.starts_with(SESSION_PREFIX)
}

/// True when `client_id` is the session of a bridge in `config`.
pub fn is_configured(config: &crate::Config, client_id: &ClientId) -> bool {
    client_id.0.strip_prefix(SESSION_PREFIX).is_some_and(|name| config.bridge.iter().any(|b| b.name == name))
}

/// The in-flight window and queue budget of a bridge's session.
fn session_limits(broker: &crate::Config, config: &BridgeConfig) -> SessionLimits {
    // `drop_oldest` admits up to twice the budget and trims back to it (`Bridge::trim`).
    let headroom = if config.overflow == Overflow::DropOldest { 2 } else { 1 };
    SessionLimits {
        max_inflight: usize::from(config.max_inflight),
        max_inflight_qos2: usize::from(config.max_inflight_qos2),
        queue: QueueLimits {
            max_messages: config.queue_max_messages.saturating_mul(headroom),
            max_bytes: config.queue_max_bytes.saturating_mul(headroom),
            stall_after_ms: u32::try_from(broker.mqtt.stall_interval_ms).unwrap_or(u32::MAX),
        },
    }
}

/// The limits of a stored session being restored, if it belongs to a configured bridge.
pub fn limits_of(config: &crate::Config, client_id: &ClientId) -> Option<SessionLimits> {
    let name = client_id.0.strip_prefix(SESSION_PREFIX)?;
    config.bridge.iter().find(|b| b.name == name).map(|b| session_limits(config, b))
}

/// A configured bridge with its TLS client settings loaded.
pub struct Prepared {
    /// As the bridge runs (a JetStream sink's key floor set).
    config: BridgeConfig,
    /// As the configuration file says: what a reload compares.
    configured: BridgeConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Loads every bridge's TLS files (before the broker starts: a bad file stops it, naming the
/// bridge and the file).
pub fn prepare(config: &crate::Config) -> crate::Result<Vec<Prepared>> {
    config.bridge.iter().map(|bridge| prepare_one(config, bridge)).collect()
}

/// One bridge's TLS files loaded and, for a JetStream sink, this run's queue keys reserved (at
/// start, and again at a reload that changed its settings).
fn prepare_one(config: &crate::Config, bridge: &BridgeConfig) -> crate::Result<Prepared> {
    let tls = match &bridge.tls {
        Some(settings) => Some(Arc::new(
            crate::transport::tls::client_config(settings)
                .map_err(|source| crate::Error::BridgeTls { name: bridge.name.clone(), source })?,
        )),
        None => None,
    };
    let configured = bridge.clone();
    let mut bridge = bridge.clone();
    if bridge.kind == crate::config::bridge::BridgeKind::Jetstream {
        jetstream::reserve_keys(config, &mut bridge)?;
        jetstream::load_nkey(&mut bridge)?;
    }
    Ok(Prepared { config: bridge, configured, tls })
}

/// The bridge's local side: its session and the topic mapping.
struct Bridge {
    broker: Arc<Broker>,
    config: BridgeConfig,
    /// TLS to the upstream, when configured.
    tls: Option<Arc<rustls::ClientConfig>>,
    session: Session,
    owner: OwnerId,
    control: ControlReceiver,
    /// Last state published on the status topic.
    linked: Option<bool>,
    /// `drop_oldest` is dropping (logged once per episode).
    trimming: bool,
    /// Since start: read by `/metrics` and `$SYS`, logged with every state change.
    stats: Arc<BridgeStats>,
    /// The upstream refused the bridge bit of `try_private`: connect without it.
    private_refused: bool,
    /// Ends this bridge's task: the broker's shutdown, or a reload that stops or restarts it.
    stop: CancellationToken,
}

/// How a bridge task's wait ended.
enum Stop {
    /// Broker shutdown: the task ends.
    Shutdown,
}

/// One bridge's task, until `stop` (a child of the broker's shutdown token). Starts with the
/// session `handed` over by the task it replaces (a reload), if any; returns its session when
/// stopped by a reload, so the next task (or the removal) gets it with its queue.
async fn run(
    broker: Arc<Broker>,
    Prepared { config, tls, .. }: Prepared,
    stop: CancellationToken,
    handed: Option<Session>,
) -> Option<Session> {
    let mut bridge = match Bridge::open(broker, config, tls, stop, handed).await {
        Ok(bridge) => bridge,
        Err(e) => {
            error!("bridge not started: {e}");
            return None;
        }
    };
    bridge.set_linked(false).await;
    let mut failures: u32 = 0;
    loop {
        if bridge.stop.is_cancelled() {
            break;
        }
        // Failover: the addresses in order, the first (primary) again at every round.
        let mut stop = None;
        let mut stable = false;
        let mut back = false;
        let mut retry_plain = false;
        let addresses = bridge.config.addresses.clone();
        for (index, address) in addresses.iter().enumerate() {
            match upstream::Upstream::connect(&mut bridge, address).await {
                Ok(mut link) => {
                    if index > 0 {
                        // Back to the primary as soon as it answers again.
                        let every = Duration::from_millis(bridge.config.reconnect_delay_max_ms);
                        link.watch_primary(addresses[0].clone(), every, bridge.config.connect_timeout());
                    }
                    let since = Instant::now();
                    bridge.set_linked(true).await;
                    let ending = link.serve(&mut bridge).await;
                    bridge.set_linked(false).await;
                    stable = since.elapsed() >= STABLE_LINK;
                    match ending {
                        lane::Ending::Shutdown => stop = Some(Stop::Shutdown),
                        lane::Ending::Lost(reason) => warn!(%address, "link lost: {reason}"),
                        lane::Ending::PrimaryBack => {
                            info!(%address, primary = %addresses[0], "primary address answers again: moving back to it");
                            back = true;
                        }
                    }
                    break;
                }
                Err(link::ConnectError::Shutdown) => {
                    stop = Some(Stop::Shutdown);
                    break;
                }
                Err(e) if bridge.tries_private() && e.may_be_the_bridge_bit() => {
                    // As Mosquitto's bridge does: the upstream does not know protocol level
                    // 0x84; the next round (at once) goes without it.
                    warn!(%address, "upstream refused the bridge protocol level (try_private): connecting without it: {e}");
                    bridge.private_refused = true;
                    retry_plain = true;
                    break;
                }
                Err(e) => warn!(%address, "cannot connect: {e}"),
            }
        }
        if let Some(Stop::Shutdown) = stop {
            break;
        }
        if back || retry_plain {
            failures = 0;
            continue;
        }
        failures = if stable { 0 } else { failures.saturating_add(1) };
        let delay = backoff(&bridge.config, failures);
        if let Some(Stop::Shutdown) = bridge.wait(delay).await {
            break;
        }
    }
    let reloading = !bridge.broker.shutdown.is_cancelled();
    let session = bridge.close().await;
    reloading.then_some(session)
}

/// Exponential backoff with jitter: the n-th delay (n ≥ 1) is drawn between half and all of
/// min(min_ms × 2^(n-1), max_ms), so bridges that lost one upstream at once do not come back
/// in step.
fn backoff(config: &BridgeConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(32);
    let full = config.reconnect_delay_min_ms.saturating_mul(1 << exp).min(config.reconnect_delay_max_ms);
    let jitter = u64::from_le_bytes(crate::auth::scram::random_bytes::<8>().unwrap_or([0; 8]));
    let half = full / 2;
    Duration::from_millis(half + jitter % (full - half + 1))
}

impl Bridge {
    /// Takes the bridge's session over from its offline task (it was restored from storage),
    /// or makes a new one, and brings its subscriptions in line with the configuration.
    async fn open(
        broker: Arc<Broker>,
        config: BridgeConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
        stop: CancellationToken,
        handed: Option<Session>,
    ) -> Result<Bridge, crate::storage::StoreError> {
        let client_id = ClientId(ByteString::from(format!("{SESSION_PREFIX}{}", config.name)));
        let owner = broker.router.registry.new_owner_id();
        let (control_tx, control) = control_slot();
        let previous = broker.router.registry.claim(&client_id, owner, control_tx, true).await.or(handed);
        let limits = session_limits(&broker.config, &config);
        let resumed = previous.is_some();
        let mut session = match previous {
            // Restored with this bridge's limits (`limits_of`).
            Some(previous) => previous,
            None => Session::new(client_id.clone(), ProtocolVersion::V5, NEVER_EXPIRES, limits),
        };
        // Listed by the admin API and counted in the queue totals like any session.
        broker.router.registry.set_mailbox(&client_id, owner, session.pending.mailbox());
        session.expiry = NEVER_EXPIRES;
        jetstream::apply_key_floor(&config, session.pending.mailbox());
        session.pending.mailbox().set_persistent(true);
        session.pending.mailbox().set_online(false);
        session.pending.mailbox().set_rejects_when_full(config.overflow == Overflow::Reject);
        // Publishers meet the budget and its policy, never a pause while a backlog drains.
        session.pending.mailbox().set_paces_publishers(false);
        let stats = BridgeStats::register(&config.name, session.pending.mailbox().clone(), config.overflow);
        let mut bridge = Bridge {
            broker,
            config,
            tls,
            session,
            owner,
            control,
            linked: None,
            trimming: false,
            stats,
            private_refused: false,
            stop,
        };
        bridge.sync_subscriptions();
        // A queue stored over its budget is trimmed before anything of it goes upstream: one
        // that ended before its last arrivals were trimmed (a crash, or a stop that came first),
        // or a budget the configuration lowered.
        bridge.trim();
        let mut ops = std::mem::take(&mut bridge.session.journal);
        ops.push(Op::PutSession(bridge.session.record(None)));
        bridge.broker.store.commit(ops).await?;
        info!(
            resumed,
            queued = bridge.session.pending.mailbox().pending(),
            in_flight = bridge.session.outbound.len(),
            "bridge session ready"
        );
        Ok(bridge)
    }

    /// One local subscription per outbound topic entry, at the entry's QoS (capped by
    /// `max_qos`); subscriptions of the stored session that the configuration dropped go.
    fn sync_subscriptions(&mut self) {
        let wanted: Vec<(String, QoS)> = self
            .config
            .topics
            .iter()
            .filter(|t| t.direction.outbound())
            .map(|t| (t.local_filter(), self.config.topic_qos(t)))
            .collect();
        let client_id = self.session.client_id.clone();
        let stale: Vec<ByteString> = self
            .session
            .subscriptions
            .keys()
            .filter(|f| !wanted.iter().any(|(w, _)| w.as_str() == &***f))
            .cloned()
            .collect();
        for filter in stale {
            self.broker.router.unsubscribe(&filter, &client_id);
            self.session.subscriptions.remove(&filter);
        }
        for (filter, qos) in wanted {
            let options = SubscriptionOptions {
                qos,
                // What the bridge brought in from upstream is not sent back [MQTT-3.8.3-3].
                no_local: true,
                // Retained publishes stay retained upstream [MQTT-3.3.1-12].
                retain_as_published: true,
                retain_handling: RetainHandling::Never,
            };
            let subscription = Subscription { options, id: None };
            let subscriber = Subscriber { mailbox: self.session.pending.mailbox().clone(), subscription };
            self.broker.router.subscribe(&filter, client_id.clone(), subscriber);
            self.session.subscriptions.insert(ByteString::from(filter), subscription);
        }
    }

    /// The upstream topic for a local one: the first outbound entry whose local filter
    /// matches gives the prefixes (local prefix off, remote prefix on).
    fn remote_topic(&self, local: &str) -> Option<String> {
        self.config.topics.iter().filter(|t| t.direction.outbound()).find_map(|t| {
            let rest = local.strip_prefix(t.local_prefix.as_str())?;
            filter_matches(&t.local_filter(), local).then(|| format!("{}{rest}", t.remote_prefix))
        })
    }

    /// The local topic for an upstream one, by the inbound entries.
    fn local_topic(&self, remote: &str) -> Option<String> {
        self.config.topics.iter().filter(|t| t.direction.inbound()).find_map(|t| {
            let rest = remote.strip_prefix(t.remote_prefix.as_str())?;
            filter_matches(&t.remote_filter(), remote).then(|| format!("{}{rest}", t.local_prefix))
        })
    }

    /// `try_private` applies to this link attempt: a 3.1.1 upstream that has not refused it.
    fn tries_private(&self) -> bool {
        self.config.try_private
            && self.config.protocol == crate::config::bridge::BridgeProtocol::V311
            && !self.private_refused
    }

    /// Updates the counters read from the session: the oldest message held, and the expired.
    fn note_held(&self) {
        self.stats.set_oldest(self.session.oldest_held());
        self.stats.set_dropped(BridgeDrop::Expired, self.session.expired);
    }

    /// Publishes the retained status "1"/"0" on a change, and logs it.
    async fn set_linked(&mut self, linked: bool) {
        if self.linked == Some(linked) {
            return;
        }
        self.linked = Some(linked);
        let c = &self.stats;
        c.linked.store(linked, std::sync::atomic::Ordering::Relaxed);
        if linked {
            BridgeStats::add(&c.links, 1);
        }
        let load =
            |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
        info!(
            state = u8::from(linked),
            links = load(&c.links),
            forwarded = load(&c.forwarded),
            resent = load(&c.resent),
            acknowledged = load(&c.acknowledged),
            received = load(&c.received),
            queued = c.queued().0,
            in_flight = self.session.outbound.len(),
            dropped = BridgeDrop::ALL.iter().map(|&r| c.dropped(r)).sum::<u64>(),
            "bridge {}",
            if linked { "connected" } else { "disconnected" }
        );
        let topic = format!("$SYS/broker/connection/{}/state", self.config.name);
        let payload = Bytes::from_static(if linked { b"1" } else { b"0" });
        let mut message = Message::new(topic, payload, QoS::AtLeastOnce);
        message.retain = true;
        message.origin = Some(self.session.client_id.clone());
        // Like the `$SYS` tree's (sys.rs): retained in memory only; every start publishes "0".
        let message = Arc::new(message);
        let routed =
            self.broker.router.route(&message, &self.broker.message_ids, self.broker.security.as_ref());
        self.broker.router.retained.apply(&message);
        if let Err(e) = route_now(&self.broker, routed).await {
            warn!("bridge state not published: {e}");
        }
    }

    /// `overflow = "drop_oldest"`: drops the oldest queued messages until the queue is within
    /// its budget again; their stored records go in the session's journal.
    fn trim(&mut self) {
        if self.config.overflow != Overflow::DropOldest {
            return;
        }
        let (max_messages, max_bytes) = (self.config.queue_max_messages, self.config.queue_max_bytes);
        let over = |s: &Session| {
            let mailbox = s.pending.mailbox();
            mailbox.pending() > max_messages || mailbox.pending_bytes() > max_bytes
        };
        while over(&self.session) && self.session.drop_oldest_pending() {
            self.stats.dropped_for(BridgeDrop::Oldest, 1);
            if !self.trimming {
                self.trimming = true;
                warn!(max_messages, max_bytes, "bridge queue over its budget: dropping the oldest messages");
            }
        }
        if self.trimming && self.session.pending.mailbox().pending() <= max_messages / 2 {
            self.trimming = false;
            info!(dropped_total = self.stats.dropped(BridgeDrop::Oldest), "bridge queue has room again");
        }
    }

    /// Waits `delay` (reconnect backoff), taking in what is routed meanwhile; `Some` on shutdown.
    async fn wait(&mut self, delay: Duration) -> Option<Stop> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return None,
                () = self.stop.cancelled() => return Some(Stop::Shutdown),
                request = self.control.recv() => match request {
                    Control::Shutdown => return Some(Stop::Shutdown),
                    other => Bridge::refuse(other),
                },
                () = self.session.pending.absorb() => {
                    self.trim();
                    self.note_held();
                    let ops = std::mem::take(&mut self.session.journal);
                    if !ops.is_empty() {
                        if let Err(e) = self.broker.store.commit(ops).await {
                            warn!("dropped messages not deleted from storage: {e}");
                        }
                    }
                }
            }
        }
    }

    /// Answers a control request other than shutdown. No client can claim a bridge session
    /// (the handshake refuses its id), so a takeover is refused; no keep-alive deadline is set;
    /// a kick (admin API) without a link has nothing to disconnect.
    fn refuse(request: Control) {
        if let Control::Takeover(takeover) = request {
            warn!("takeover of a bridge session refused");
            let _ = takeover.reply.send(None);
        }
    }

    /// Shutdown or reload: the session record is stored (its deliveries already are) for the
    /// next start, and the session returned for the next task.
    async fn close(mut self) -> Session {
        self.session.pending.mailbox().set_online(false);
        self.session.journal_derived_in_flight();
        let mut ops = std::mem::take(&mut self.session.journal);
        ops.push(Op::PutSession(self.session.record(None)));
        if let Err(e) = self.broker.store.commit(ops).await {
            warn!("bridge session not stored at shutdown: {e}");
        }
        self.broker.router.registry.release(&self.session.client_id, self.owner);
        self.stats.unregister();
        info!("bridge stopped");
        self.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(topics: &str) -> BridgeConfig {
        let toml = format!("[[bridge]]\nname = \"b\"\naddresses = [\"127.0.0.1:1\"]\ntopics = [{topics}]\n");
        Config::from_toml(&toml).unwrap().bridge.remove(0)
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter_below_each_step() {
        let mut c = config("{ pattern = \"a\" }");
        c.reconnect_delay_min_ms = 100;
        c.reconnect_delay_max_ms = 1000;
        for (failures, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (60, 1000)] {
            for _ in 0..20 {
                let d = backoff(&c, failures).as_millis() as u64;
                assert!((full / 2..=full).contains(&d), "failure {failures}: {d} ms");
            }
        }
    }

    #[tokio::test]
    async fn prefixes_map_topics_both_ways() {
        let broker = Arc::new(Broker::new(
            Arc::new(Config::from_toml("").unwrap()),
            Arc::new(crate::storage::MemoryStore::default()),
            Arc::new(crate::auth::Security::load(&Config::from_toml("").unwrap().auth).unwrap()),
        ));
        let c = config(
            "{ pattern = \"s/#\", local_prefix = \"edge/\", remote_prefix = \"site1/\" }, \
             { pattern = \"cmd/+\", direction = \"in\", remote_prefix = \"site1/\" }, \
             { pattern = \"x\", direction = \"both\" }",
        );
        let bridge = Bridge::open(broker, c, None, CancellationToken::new(), None).await.unwrap();
        assert_eq!(bridge.remote_topic("edge/s/t").as_deref(), Some("site1/s/t"));
        assert_eq!(bridge.remote_topic("s/t"), None);
        assert_eq!(bridge.remote_topic("x").as_deref(), Some("x"));
        assert_eq!(bridge.local_topic("site1/cmd/a").as_deref(), Some("cmd/a"));
        assert_eq!(bridge.local_topic("cmd/a"), None);
        assert_eq!(bridge.local_topic("x").as_deref(), Some("x"));
        let filters: Vec<_> = bridge.session.subscriptions.keys().map(|f| f.to_string()).collect();
        assert_eq!(filters.len(), 2, "outbound entries only: {filters:?}");
        assert!(bridge.session.subscriptions.values().all(|s| s.options.no_local));
    }
}
