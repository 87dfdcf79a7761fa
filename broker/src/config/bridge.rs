//! `[[bridge]]` tables: connections from this broker to upstream MQTT servers, read and checked
//! here once, so the bridge task (`crate::bridge`) only ever sees usable settings.
//!
//! Invariants after `validate`: names are unique and usable in a topic level and a client id;
//! every address is `host:port`; every topic entry's local and remote filters are valid filters;
//! QoS values are 0..=2; the queue budget is non-zero.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::packet::{ProtocolVersion, QoS};
use crate::router::topic;

/// One upstream connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Names the bridge in logs, in its local session (`$bridge/<name>`) and in the status
    /// topic `$SYS/broker/connection/<name>/state`.
    pub name: String,
    /// What the upstream is: an MQTT server (default) or a NATS JetStream sink.
    #[serde(default)]
    pub kind: BridgeKind,
    /// Settings of a `kind = "jetstream"` sink (`super::jetstream`).
    #[serde(default)]
    pub jetstream: Option<super::jetstream::JetStreamConfig>,
    /// Upstream servers as `host:port`, tried in this order (failover).
    pub addresses: Vec<String>,
    /// TLS to the upstream (every address); absent = plain TCP.
    #[serde(default)]
    pub tls: Option<BridgeTls>,
    /// "3.1.1" or "5.0".
    #[serde(default = "default_protocol")]
    pub protocol: BridgeProtocol,
    /// Client identifier used upstream; default `tern-bridge-<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Keep-alive sent in CONNECT; the link is declared dead after 1.5 × this without input.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    /// Clean session (3.1.1) / Clean Start (5.0). Default false: the upstream keeps the
    /// bridge's QoS 1/2 state across link outages.
    #[serde(default)]
    pub clean_start: bool,
    /// MQTT 5 Session Expiry Interval asked of the upstream; default 4294967295 (never).
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    /// Outbound QoS 1/2 messages in flight; the upstream's Receive Maximum may lower it.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// QoS 2 flows among them (PUBLISH awaiting PUBREC, PUBREL awaiting PUBCOMP). Brokers
    /// bound what one client may have in flight toward them, and Mosquitto closes a 3.1.1
    /// connection that goes past its 20 (`max_inflight_messages`) at QoS 2, while it takes
    /// QoS 1 without a limit; an MQTT 5 upstream says its limit (Receive Maximum).
    #[serde(default = "default_max_inflight_qos2")]
    pub max_inflight_qos2: u16,
    /// Highest QoS used upstream, both directions (for upstreams without QoS 2).
    #[serde(default = "default_max_qos")]
    pub max_qos: u8,
    /// Queue budget of outbound messages waiting for the upstream (and not in flight).
    #[serde(default = "default_queue_max_messages")]
    pub queue_max_messages: usize,
    #[serde(default = "default_queue_max_bytes")]
    pub queue_max_bytes: usize,
    /// What happens to a message beyond the budget.
    #[serde(default)]
    pub overflow: Overflow,
    /// Most PUBLISH packets sent upstream per second (a token bucket with one second of
    /// burst); absent = no cap. The unacknowledged window re-sent at a reconnect is not held
    /// back (at most `max_inflight` packets).
    #[serde(default)]
    pub max_rate: Option<u32>,
    /// MQTT 5 upstream: a message is forwarded with the user property `tern-hops` one higher
    /// than it arrived with, and not forwarded (counted as `max_hops`) once that would exceed
    /// this limit, so bridges forwarding in a circle stop after this many hops.
    #[serde(default = "default_max_hops")]
    pub max_hops: u8,
    /// MQTT 3.1.1 upstream: Mosquitto's bridge convention, protocol level 0x84 (0x80 | 4) in
    /// CONNECT, so an upstream that knows it does not send our own publishes back (3.1.1 has
    /// no No Local). If the upstream refuses it, the bridge connects again without it.
    #[serde(default = "default_true")]
    pub try_private: bool,
    /// First delay before reconnecting; doubles per failed attempt up to the maximum, with
    /// jitter (each delay drawn between half and all of it).
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_delay_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_delay_max_ms: u64,
    /// Seconds for TCP connect plus CONNACK.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    #[serde(default)]
    pub topics: Vec<BridgeTopic>,
    /// Topic entries in Mosquitto's syntax, each what follows `topic ` in a mosquitto.conf
    /// bridge section: `PATTERN [out|in|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]`, `""` for an
    /// empty field. Read into `topics` (after the entries there) with Mosquitto's defaults:
    /// direction out, QoS 0.
    #[serde(default)]
    pub mosquitto_topics: Vec<String>,
}

/// TLS settings of a bridge. The upstream's certificate is always verified.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTls {
    /// PEM CA certificates the upstream's certificate must chain to.
    pub ca: PathBuf,
    /// PEM client certificate chain and key, for upstreams that require one (both or neither).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name the upstream's certificate must carry, also sent as SNI; default: the host
    /// part of each address.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// The host part of a validated `host:port` address (IPv6 brackets removed).
pub fn address_host(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// The kind of upstream a bridge forwards to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeKind {
    /// An MQTT server (`link.rs`).
    #[default]
    Mqtt,
    /// A NATS JetStream stream, outbound only (`jetstream.rs`).
    Jetstream,
}

/// Protocol spoken upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BridgeProtocol {
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5.0")]
    V5,
}

impl BridgeProtocol {
    pub fn version(self) -> ProtocolVersion {
        match self {
            BridgeProtocol::V311 => ProtocolVersion::V311,
            BridgeProtocol::V5 => ProtocolVersion::V5,
        }
    }
}

/// Which way a topic entry forwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Local publishes go upstream.
    #[default]
    Out,
    /// Upstream publishes come here.
    In,
    Both,
}

impl Direction {
    pub fn outbound(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    pub fn inbound(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// What a message beyond the queue budget meets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The publisher of a message the full queue cannot take is not acknowledged: an MQTT 5
    /// publisher gets PUBACK/PUBREC 0x97 (Quota exceeded), an MQTT 3.1.1 publisher's connection
    /// is closed (3.1.1 has no refusal code; it publishes again after reconnecting). The
    /// message goes to no subscriber at all (counted, logged once per episode).
    Reject,
    /// Drop the oldest queued (not in flight) message to make room: queued beyond the budget,
    /// the new message is kept and the oldest goes (counted, logged). A burst the bridge task
    /// has not yet seen is held up to twice the budget; beyond that the newest are dropped.
    DropOldest,
    /// The new message is not queued for the bridge (counted, logged; an MQTT 5 publisher
    /// whose message no session could take gets 0x97).
    #[default]
    DropNewest,
}

/// One `topics` entry, Mosquitto's `topic PATTERN DIRECTION QOS LOCAL_PREFIX REMOTE_PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTopic {
    pub pattern: String,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default = "default_topic_qos")]
    pub qos: u8,
    /// Prepended to `pattern` on this broker.
    #[serde(default)]
    pub local_prefix: String,
    /// Prepended to `pattern` upstream.
    #[serde(default)]
    pub remote_prefix: String,
}

impl BridgeTopic {
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }
}

fn default_protocol() -> BridgeProtocol {
    BridgeProtocol::V311
}
fn default_keep_alive() -> u16 {
    60
}
fn default_session_expiry() -> u32 {
    u32::MAX
}
fn default_max_inflight() -> u16 {
    100
}
fn default_max_inflight_qos2() -> u16 {
    20
}
fn default_max_qos() -> u8 {
    2
}
fn default_queue_max_messages() -> usize {
    100_000
}
fn default_queue_max_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_max_hops() -> u8 {
    8
}
fn default_true() -> bool {
    true
}
fn default_topic_qos() -> u8 {
    1
}

pub(super) fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl BridgeConfig {
    /// The upstream client identifier.
    pub fn upstream_client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("tern-bridge-{}", self.name))
    }

    /// The highest QoS used upstream.
    pub fn max_qos(&self) -> QoS {
        qos(self.max_qos)
    }

    /// The QoS of a topic entry, capped by `max_qos`.
    pub fn topic_qos(&self, topic: &BridgeTopic) -> QoS {
        qos(topic.qos).min(self.max_qos())
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(u64::from(self.keep_alive_secs))
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

/// Reads every bridge's `mosquitto_topics` lines into its `topics`.
pub(super) fn read_mosquitto_topics(bridges: &mut [BridgeConfig]) -> Result<(), ConfigError> {
    for bridge in bridges {
        for line in std::mem::take(&mut bridge.mosquitto_topics) {
            let topic = parse_topic_line(&line).map_err(|reason| ConfigError::Invalid {
                key: "bridge.mosquitto_topics",
                reason: format!("bridge \"{}\": \"{line}\": {reason}", bridge.name),
            })?;
            bridge.topics.push(topic);
        }
    }
    Ok(())
}

/// One Mosquitto `topic` line (without the word `topic`).
fn parse_topic_line(line: &str) -> Result<BridgeTopic, String> {
    let fields = split_fields(line)?;
    let field = |i: usize| fields.get(i).map(String::as_str);
    let Some(pattern) = field(0) else { return Err("no pattern".into()) };
    let direction = match field(1) {
        None | Some("out") => Direction::Out,
        Some("in") => Direction::In,
        Some("both") => Direction::Both,
        Some(other) => return Err(format!("direction \"{other}\" is not out, in or both")),
    };
    let qos = match field(2) {
        None => 0,
        Some(q) => q.parse::<u8>().ok().filter(|q| *q <= 2).ok_or(format!("QoS \"{q}\" is not 0, 1 or 2"))?,
    };
    if fields.len() == 4 || fields.len() > 5 {
        return Err("expected PATTERN [DIRECTION [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]".into());
    }
    Ok(BridgeTopic {
        pattern: pattern.to_owned(),
        direction,
        qos,
        local_prefix: field(3).unwrap_or("").to_owned(),
        remote_prefix: field(4).unwrap_or("").to_owned(),
    })
}

/// Whitespace-separated fields; a field in double quotes may be empty or hold spaces.
fn split_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut field = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quote".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                field.push(c);
                chars.next();
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// Checks every bridge; the error names the key and the bridge.
pub(super) fn validate(bridges: &[BridgeConfig]) -> Result<(), ConfigError> {
    let invalid = |key: &'static str, name: &str, reason: String| {
        Err(ConfigError::Invalid { key, reason: format!("bridge \"{name}\": {reason}") })
    };
    for (i, bridge) in bridges.iter().enumerate() {
        let name = bridge.name.as_str();
        let usable = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.is_empty() || !name.chars().all(usable) {
            return invalid(
                "bridge.name",
                name,
                "must be non-empty, letters, digits, '-', '_' or '.'".into(),
            );
        }
        if bridges[..i].iter().any(|b| b.name == bridge.name) {
            return invalid("bridge.name", name, "used by two bridges".into());
        }
        if bridge.addresses.is_empty() {
            return invalid("bridge.addresses", name, "at least one \"host:port\" is required".into());
        }
        for address in &bridge.addresses {
            let port = address.rsplit_once(':').and_then(|(host, port)| {
                (!host.is_empty()).then_some(())?;
                port.parse::<u16>().ok().filter(|p| *p != 0)
            });
            if port.is_none() {
                return invalid("bridge.addresses", name, format!("\"{address}\" is not \"host:port\""));
            }
        }
        if let Some(tls) = &bridge.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return invalid("bridge.tls.cert", name, "cert and key go together".into());
            }
            let names = match &tls.server_name {
                Some(server_name) => vec![server_name.as_str()],
                None => bridge.addresses.iter().map(|a| address_host(a)).collect(),
            };
            for server_name in names {
                if rustls::pki_types::ServerName::try_from(server_name).is_err() {
                    return invalid(
                        "bridge.tls.server_name",
                        name,
                        format!("\"{server_name}\" is not a DNS name or IP address"),
                    );
                }
            }
        }
        let client_id = bridge.upstream_client_id();
        if client_id.is_empty() || client_id.len() > 65_535 || client_id.contains('\0') {
            return invalid("bridge.client_id", name, "must be 1 to 65535 bytes without U+0000".into());
        }
        if bridge.password.is_some() && bridge.username.is_none() && bridge.protocol == BridgeProtocol::V311 {
            return invalid(
                "bridge.password",
                name,
                "a password needs a username in MQTT 3.1.1 [MQTT-3.1.2-22]".into(),
            );
        }
        if bridge.keep_alive_secs == 0 {
            return invalid(
                "bridge.keep_alive_secs",
                name,
                "must be at least 1 (a dead link is found through it)".into(),
            );
        }
        if bridge.max_inflight == 0 {
            return invalid("bridge.max_inflight", name, "must be between 1 and 65535".into());
        }
        if bridge.max_inflight_qos2 == 0 {
            return invalid("bridge.max_inflight_qos2", name, "must be between 1 and 65535".into());
        }
        if bridge.max_qos > 2 {
            return invalid("bridge.max_qos", name, "must be 0, 1 or 2".into());
        }
        if bridge.queue_max_messages == 0 {
            return invalid("bridge.queue_max_messages", name, "must be at least 1".into());
        }
        if bridge.queue_max_bytes == 0 {
            return invalid("bridge.queue_max_bytes", name, "must be at least 1".into());
        }
        if bridge.max_rate == Some(0) {
            return invalid("bridge.max_rate", name, "must be at least 1 (leave it out for no cap)".into());
        }
        if bridge.max_hops == 0 {
            return invalid("bridge.max_hops", name, "must be at least 1".into());
        }
        if bridge.reconnect_delay_min_ms == 0 || bridge.reconnect_delay_max_ms < bridge.reconnect_delay_min_ms
        {
            return invalid(
                "bridge.reconnect_delay_min_ms",
                name,
                "must be at least 1 and at most reconnect_delay_max_ms".into(),
            );
        }
        if bridge.connect_timeout_secs == 0 {
            return invalid("bridge.connect_timeout_secs", name, "must be at least 1".into());
        }
        if bridge.topics.is_empty() {
            return invalid("bridge.topics", name, "at least one topic entry is required".into());
        }
        for t in &bridge.topics {
            if t.qos > 2 {
                return invalid(
                    "bridge.topics.qos",
                    name,
                    format!("topic \"{}\": must be 0, 1 or 2", t.pattern),
                );
            }
            for prefix in [&t.local_prefix, &t.remote_prefix] {
                if prefix.contains(['+', '#', '\0']) {
                    return invalid(
                        "bridge.topics.local_prefix",
                        name,
                        format!("prefix \"{prefix}\" may not contain '+', '#' or U+0000"),
                    );
                }
            }
            for filter in [t.local_filter(), t.remote_filter()] {
                if let Err(e) = topic::validate_topic_filter(&filter) {
                    return invalid("bridge.topics.pattern", name, format!("filter \"{filter}\": {e}"));
                }
                if filter.starts_with("$share/") {
                    return invalid(
                        "bridge.topics.pattern",
                        name,
                        format!("filter \"{filter}\": shared subscriptions are not bridged"),
                    );
                }
            }
        }
        super::jetstream::validate(bridge)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const MINIMAL: &str = "[[bridge]]\nname = \"cloud\"\naddresses = [\"127.0.0.1:1883\"]\n\
                           topics = [{ pattern = \"a/#\" }]\n";

    #[test]
    fn a_minimal_bridge_takes_the_documented_defaults() {
        let config = Config::from_toml(MINIMAL).unwrap();
        let b = &config.bridge[0];
        assert_eq!(b.upstream_client_id(), "tern-bridge-cloud");
        assert_eq!(b.protocol, super::BridgeProtocol::V311);
        assert!(!b.clean_start);
        assert_eq!(b.session_expiry_secs, u32::MAX);
        assert_eq!(b.topics[0].direction, super::Direction::Out);
        assert_eq!(b.topics[0].qos, 1);
        assert_eq!(b.overflow, super::Overflow::DropNewest);
        assert_eq!((b.max_hops, b.try_private, b.max_rate), (8, true, None));
        assert!(Config::from_toml("").unwrap().bridge.is_empty());
    }

    /// Lines as in a mosquitto.conf bridge section, with Mosquitto's defaults (out, QoS 0).
    #[test]
    fn mosquitto_topic_lines_read_as_topic_entries() {
        let toml = "[[bridge]]\nname = \"m\"\naddresses = [\"h:1883\"]\nmosquitto_topics = [\
                    \"sensors/#\", \"cmd/# in 2\", 'x/+ both 1 \"\" site1/', '\"\" out 1 local/all remote/all']\n";
        let config = Config::from_toml(toml).unwrap();
        let t = &config.bridge[0].topics;
        assert_eq!(t.len(), 4);
        assert_eq!(
            (t[0].pattern.as_str(), t[0].direction, t[0].qos),
            ("sensors/#", super::Direction::Out, 0)
        );
        assert_eq!((t[1].pattern.as_str(), t[1].direction, t[1].qos), ("cmd/#", super::Direction::In, 2));
        assert_eq!((t[2].local_prefix.as_str(), t[2].remote_prefix.as_str()), ("", "site1/"));
        assert_eq!((t[3].local_filter(), t[3].remote_filter()), ("local/all".into(), "remote/all".into()));
    }

    #[test]
    fn bad_bridge_settings_name_the_key() {
        let cases = [
            ("addresses = []", "bridge.addresses"),
            ("addresses = [\"nohost\"]", "bridge.addresses"),
            ("protocol = \"4\"", "protocol"),
            ("keep_alive_secs = 0", "bridge.keep_alive_secs"),
            ("max_qos = 3", "bridge.max_qos"),
            ("queue_max_bytes = 0", "bridge.queue_max_bytes"),
            ("max_rate = 0", "bridge.max_rate"),
            ("max_hops = 0", "bridge.max_hops"),
            ("overflow = \"sometimes\"", "overflow"),
            ("tls = true", "tls"),
            ("tls = { ca = \"ca.pem\", cert = \"c.pem\" }", "bridge.tls.cert"),
            ("tls = { ca = \"ca.pem\", server_name = \"bad name!\" }", "bridge.tls.server_name"),
            ("topics = []", "bridge.topics"),
            ("topics = [{ pattern = \"a/#/b\" }]", "bridge.topics.pattern"),
            ("topics = [{ pattern = \"a\", qos = 3 }]", "bridge.topics.qos"),
            ("topics = [{ pattern = \"a\", direction = \"sideways\" }]", "direction"),
            ("topics = [{ pattern = \"a\", local_prefix = \"x/#\" }]", "bridge.topics.local_prefix"),
        ];
        for (line, key) in cases {
            // The entry's own line replaces the minimal one with the same key.
            let toml = MINIMAL
                .lines()
                .filter(|l| !line.starts_with(l.split(' ').next().unwrap_or("?")))
                .chain([line])
                .collect::<Vec<_>>()
                .join("\n");
            let err = Config::from_toml(&toml).expect_err(line).to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
        for (line, why) in
            [("a sideways", "direction"), ("a out 3", "QoS"), ("a out 1 x", "expected"), ("\"a", "quote")]
        {
            let toml = format!("{MINIMAL}mosquitto_topics = [{line:?}]\n");
            let err = Config::from_toml(&toml).expect_err(line).to_string();
            assert!(err.contains("bridge.mosquitto_topics") && err.contains(why), "{line}: {err}");
        }
        let twice = format!("{MINIMAL}{MINIMAL}");
        assert!(Config::from_toml(&twice).unwrap_err().to_string().contains("bridge.name"));
    }
}
