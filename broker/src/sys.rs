//! The `$SYS/broker/...` tree, as Mosquitto 2.0 publishes it (`src/sys_tree.c`): the same
//! topics and payload formats, so dashboards, MQTT Explorer and the Mosquitto Prometheus
//! exporter read Tern as they read Mosquitto.
//!
//! Every `sys.interval` seconds one task samples `METRICS` (and the session registry) and
//! publishes, retained at QoS 0, each value whose text changed since it last published it
//! (the first round publishes all). The messages are routed like any other (a `#` subscriber
//! never sees them [MQTT-4.7.2-1], the router sees to that) and kept in the retained store,
//! but not written to storage: after a restart they describe the new process, from its first
//! round. Nothing per client is published; per bridge, its counters go under
//! `$SYS/broker/connection/<name>/` (`bridge/stats.rs`). Clients may not publish under `$SYS/`
//! (see `router::topic::is_broker_topic`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tracing::warn;

use crate::message::Message;
use crate::metrics::{get, Metrics, METRICS};
use crate::packet::QoS;
use crate::Broker;

/// What `$SYS/broker/version` says.
pub fn version() -> String {
    format!("tern version {}", env!("CARGO_PKG_VERSION"))
}

/// The counters the load averages follow, with their topic under `$SYS/broker/load/`.
const LOADS: [&str; 9] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
    "sockets",
    "connections",
];

/// Averaging windows of the loads, in seconds, and their topic suffix.
const WINDOWS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

/// The state between two rounds: what was published, and the load averages.
#[derive(Debug)]
pub struct SysTree {
    published: HashMap<String, String>,
    /// The load counters at the last round, and when it was.
    last_counts: [u64; LOADS.len()],
    last_at: Option<Instant>,
    /// Per counter and window: the moving average of its rate, per minute.
    loads: [[f64; 3]; LOADS.len()],
}

impl Default for SysTree {
    fn default() -> Self {
        SysTree {
            published: HashMap::new(),
            last_counts: [0; LOADS.len()],
            last_at: None,
            loads: [[0.0; 3]; 9],
        }
    }
}

/// The values sampled for one round (gauges the metrics do not hold are passed in).
pub struct Sample {
    pub uptime: Duration,
    /// Persistent sessions whose clients are away.
    pub disconnected: u64,
    /// Messages pending in sessions' queues, and their topic + payload bytes.
    pub queued: (u64, u64),
}

impl SysTree {
    /// The topics and payloads of one round at `now`: those whose payload changed.
    pub fn round(&mut self, m: &Metrics, sample: &Sample, now: Instant) -> Vec<(String, String)> {
        let connected = get(&m.clients_connected);
        let queued = sample.queued.0;
        let mut values: Vec<(String, String)> = [
            ("version", version()),
            ("uptime", format!("{} seconds", sample.uptime.as_secs())),
            ("clients/connected", connected.to_string()),
            // Deprecated in Mosquitto, still read by tools.
            ("clients/active", connected.to_string()),
            ("clients/disconnected", sample.disconnected.to_string()),
            ("clients/inactive", sample.disconnected.to_string()),
            ("clients/total", (connected + sample.disconnected).to_string()),
            ("clients/maximum", get(&m.clients_maximum).to_string()),
            ("clients/expired", get(&m.sessions_expired).to_string()),
            ("messages/received", get(&m.packets_received).to_string()),
            ("messages/sent", get(&m.packets_sent).to_string()),
            ("messages/stored", queued.to_string()),
            ("store/messages/count", queued.to_string()),
            ("store/messages/bytes", sample.queued.1.to_string()),
            ("publish/messages/received", Metrics::sum(&m.publish_received).to_string()),
            ("publish/messages/sent", Metrics::sum(&m.publish_sent).to_string()),
            ("publish/messages/dropped", m.publish_dropped().to_string()),
            ("publish/bytes/received", get(&m.publish_bytes_received).to_string()),
            ("publish/bytes/sent", get(&m.publish_bytes_sent).to_string()),
            ("bytes/received", get(&m.bytes_received).to_string()),
            ("bytes/sent", get(&m.bytes_sent).to_string()),
            ("subscriptions/count", get(&m.subscriptions_current).to_string()),
            ("retained messages/count", get(&m.retained_current).to_string()),
        ]
        .into_iter()
        .map(|(topic, value)| (format!("$SYS/broker/{topic}"), value))
        .collect();
        self.update_loads(m, now, &mut values);
        // Per bridge, beside the `state` topic each bridge publishes itself.
        values.extend(crate::bridge::stats::BridgeStats::all().iter().flat_map(|b| b.sys_values(now)));
        values.retain(|(topic, value)| self.published.get(topic) != Some(value));
        for (topic, value) in &values {
            self.published.insert(topic.clone(), value.clone());
        }
        values
    }

    /// Mosquitto's load averages: per counter, the rate per minute over the last round,
    /// folded into an exponentially weighted moving average per window (1, 5, 15 min), printed
    /// with two decimals.
    fn update_loads(&mut self, m: &Metrics, now: Instant, values: &mut Vec<(String, String)>) {
        let counts = [
            get(&m.packets_received),
            get(&m.packets_sent),
            Metrics::sum(&m.publish_received),
            Metrics::sum(&m.publish_sent),
            m.publish_dropped(),
            get(&m.bytes_received),
            get(&m.bytes_sent),
            get(&m.sockets_accepted),
            Metrics::sum(&m.connects_accepted),
        ];
        let elapsed = self.last_at.map_or(0.0, |at| now.duration_since(at).as_secs_f64());
        if elapsed > 0.0 {
            for (i, (&count, &last)) in counts.iter().zip(&self.last_counts).enumerate() {
                let per_minute = count.saturating_sub(last) as f64 * 60.0 / elapsed;
                for (w, (window, _)) in WINDOWS.iter().enumerate() {
                    let exponent = (-elapsed / window).exp();
                    let load = &mut self.loads[i][w];
                    *load = per_minute + exponent * (*load - per_minute);
                }
            }
        }
        self.last_counts = counts;
        self.last_at = Some(now);
        for (i, name) in LOADS.iter().enumerate() {
            for (w, (_, suffix)) in WINDOWS.iter().enumerate() {
                values
                    .push((format!("$SYS/broker/load/{name}/{suffix}"), format!("{:.2}", self.loads[i][w])));
            }
        }
    }
}

/// Publishes the tree every `interval` until shutdown.
pub async fn run(broker: Arc<Broker>, interval: Duration) {
    let mut tree = SysTree::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sample = Sample {
            uptime: broker.started.elapsed(),
            disconnected: broker.router.registry.offline_len() as u64,
            queued: {
                let totals = broker.router.registry.queue_totals();
                (totals.messages, totals.bytes)
            },
        };
        for (topic, payload) in tree.round(&METRICS, &sample, Instant::now()) {
            publish(&broker, topic, payload).await;
        }
    }
}

/// Routes one retained QoS 0 message from the broker and keeps it as the topic's retained one
/// (in memory only, see the module docs).
async fn publish(broker: &Broker, topic: String, payload: String) {
    let mut message = Message::new(topic, payload.into_bytes(), QoS::AtMostOnce);
    message.retain = true;
    let message = Arc::new(message);
    let mut routed = broker.router.route(&message, &broker.message_ids, broker.security.as_ref());
    broker.router.retained.apply(&message);
    // QoS 0: no stored copies are made, but should the router ever make some, store them
    // before handing over, as for every other message.
    let ops = std::mem::take(&mut routed.ops);
    if !ops.is_empty() {
        if let Err(e) = broker.store.commit(ops).await {
            warn!(topic = %message.topic, "$SYS message not published: {e}");
            routed.abandon();
            return;
        }
    }
    routed.deliver();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample { uptime: Duration::from_secs(7), disconnected: 2, queued: (3, 30) }
    }

    fn value<'a>(round: &'a [(String, String)], topic: &str) -> Option<&'a str> {
        round.iter().find(|(t, _)| t == topic).map(|(_, v)| v.as_str())
    }

    #[test]
    fn first_round_publishes_everything_in_mosquitto_formats() {
        let m = Metrics::new();
        m.client_connected(1);
        let mut tree = SysTree::default();
        let round = tree.round(&m, &sample(), Instant::now());
        assert_eq!(value(&round, "$SYS/broker/uptime"), Some("7 seconds"));
        assert_eq!(value(&round, "$SYS/broker/version"), Some(version().as_str()));
        assert!(version().starts_with("tern version "));
        assert_eq!(value(&round, "$SYS/broker/clients/connected"), Some("1"));
        assert_eq!(value(&round, "$SYS/broker/clients/active"), Some("1"));
        assert_eq!(value(&round, "$SYS/broker/clients/inactive"), Some("2"));
        assert_eq!(value(&round, "$SYS/broker/clients/total"), Some("3"));
        assert_eq!(value(&round, "$SYS/broker/retained messages/count"), Some("0"));
        assert_eq!(value(&round, "$SYS/broker/store/messages/count"), Some("3"));
        assert_eq!(value(&round, "$SYS/broker/store/messages/bytes"), Some("30"));
        assert_eq!(value(&round, "$SYS/broker/load/messages/received/15min"), Some("0.00"));
        assert_eq!(round.len(), 23 + 9 * 3);
    }

    /// The widely used Mosquitto exporter (sapcc/mosquitto-exporter) names a metric after its
    /// topic: `$SYS/` dropped, '/' and ' ' turned into '_'; the value is the first number in
    /// the payload; `version` is skipped. Every topic must give a valid Prometheus name and
    /// every payload a number.
    #[test]
    fn every_topic_maps_to_a_metric_under_the_mosquitto_exporter_rule() {
        let m = Metrics::new();
        let round = SysTree::default().round(&m, &sample(), Instant::now());
        for (topic, payload) in &round {
            let name = topic.replacen("$SYS/", "", 1).replace(['/', ' '], "_");
            let mut chars = name.chars();
            let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
            assert!(
                first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{topic} -> {name}"
            );
            if topic != "$SYS/broker/version" {
                assert!(payload.starts_with(|c: char| c.is_ascii_digit()), "{topic}: {payload:?}");
            }
        }
    }

    #[test]
    fn later_rounds_publish_only_what_changed() {
        let m = Metrics::new();
        let mut tree = SysTree::default();
        let start = Instant::now();
        tree.round(&m, &sample(), start);
        let again = tree.round(&m, &sample(), start + Duration::from_secs(10));
        assert!(again.is_empty(), "{again:?}");
        let mut received = crate::metrics::Tally::default();
        received.publish(QoS::AtLeastOnce, 1);
        m.received(&received);
        let changed = tree.round(&m, &sample(), start + Duration::from_secs(20));
        assert_eq!(value(&changed, "$SYS/broker/publish/messages/received"), Some("1"));
        assert!(value(&changed, "$SYS/broker/uptime").is_none(), "uptime unchanged in the sample");
    }

    #[test]
    fn load_is_a_per_minute_moving_average() {
        let m = Metrics::new();
        let mut tree = SysTree::default();
        let start = Instant::now();
        tree.round(&m, &sample(), start);
        // 60 packets in 60 s: 60 per minute; the 1 min average moves 1 - 1/e of the way.
        for _ in 0..60 {
            m.packet_received();
        }
        let round = tree.round(&m, &sample(), start + Duration::from_secs(60));
        let expected = 60.0 * (1.0 - (-1.0f64).exp());
        assert_eq!(
            value(&round, "$SYS/broker/load/messages/received/1min"),
            Some(format!("{expected:.2}").as_str())
        );
    }
}
