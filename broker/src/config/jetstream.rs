//! The `jetstream` table of a `[[bridge]]` with `kind = "jetstream"`: a sink that forwards the
//! bridge's outbound topics to a NATS JetStream stream instead of an MQTT server.
//!
//! Invariants after `validate`: a JetStream bridge has only outbound topics, a subject prefix
//! made of valid NATS subject tokens, a stream name NATS accepts, and an ack timeout of at
//! least 1 ms; an MQTT bridge has no `jetstream` table.

use std::time::Duration;

use serde::Deserialize;

use super::bridge::{BridgeConfig, BridgeKind};
use super::ConfigError;

/// Settings of a JetStream sink. The NATS addresses are the bridge's `addresses`, its
/// credentials `username`/`password` (or `token` here), its in-flight window `max_inflight`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The stream that must store the messages: sent as `Nats-Expected-Stream`, so a subject
    /// captured by another stream is refused instead of stored there. Absent: any stream.
    #[serde(default)]
    pub stream: Option<String>,
    /// Subject tokens put before the mapped topic, e.g. "edge.site1" (empty: none).
    #[serde(default)]
    pub subject_prefix: String,
    /// NATS token authentication (instead of `username`/`password`).
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the NKEY user seed (`SU…`) the bridge authenticates with: it signs the
    /// server's nonce (instead of `username`/`password` or `token`).
    #[serde(default)]
    pub nkey_seed_file: Option<std::path::PathBuf>,
    /// The seed read from `nkey_seed_file` at start (`crate::bridge::jetstream::load_nkey`).
    #[serde(skip)]
    pub nkey: Option<crate::auth::nkey::UserSeed>,
    /// A publish whose PubAck has not come within this is sent again, with the same
    /// `Nats-Msg-Id`.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Lowest queue key of this run (`crate::bridge::keys`): set at start, not configurable.
    #[serde(skip)]
    pub key_floor: u64,
}

fn default_ack_timeout_ms() -> u64 {
    5_000
}

impl Default for JetStreamConfig {
    /// A JetStream bridge without a `jetstream` table.
    fn default() -> Self {
        JetStreamConfig {
            stream: None,
            subject_prefix: String::new(),
            token: None,
            nkey_seed_file: None,
            nkey: None,
            ack_timeout_ms: default_ack_timeout_ms(),
            key_floor: 0,
        }
    }
}

impl JetStreamConfig {
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
}

/// A NATS subject token usable in a publish subject: not empty, no `.`, whitespace, `*`, `>`.
pub fn is_subject_token(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control() || matches!(c, '.' | '*' | '>'))
}

/// Checks the JetStream side of one bridge (called from `bridge::validate`).
pub(super) fn validate(bridge: &BridgeConfig) -> Result<(), ConfigError> {
    let invalid = |key: &'static str, reason: String| {
        Err(ConfigError::Invalid { key, reason: format!("bridge \"{}\": {reason}", bridge.name) })
    };
    if bridge.kind != BridgeKind::Jetstream {
        if bridge.jetstream.is_some() {
            return invalid("bridge.jetstream", "a jetstream table needs kind = \"jetstream\"".into());
        }
        return Ok(());
    }
    if let Some(t) = bridge.topics.iter().find(|t| t.direction.inbound()) {
        return invalid(
            "bridge.topics.direction",
            format!("topic \"{}\": a JetStream sink only forwards (direction = \"out\")", t.pattern),
        );
    }
    let Some(js) = &bridge.jetstream else { return Ok(()) };
    if let Some(stream) = &js.stream {
        // NATS refuses stream names with these (they become subject tokens of its API).
        if !is_subject_token(stream) || stream.contains(['/', '\\']) {
            return invalid(
                "bridge.jetstream.stream",
                format!("\"{stream}\" is not a stream name (no spaces, '.', '*', '>', '/', '\\\\')"),
            );
        }
    }
    if !js.subject_prefix.is_empty() && !js.subject_prefix.split('.').all(is_subject_token) {
        return invalid(
            "bridge.jetstream.subject_prefix",
            format!(
                "\"{}\" is not a NATS subject (tokens separated by '.', no spaces, '*', '>')",
                js.subject_prefix
            ),
        );
    }
    if js.ack_timeout_ms == 0 {
        return invalid("bridge.jetstream.ack_timeout_ms", "must be at least 1".into());
    }
    if js.token.is_some() && bridge.username.is_some() {
        return invalid("bridge.jetstream.token", "token and username exclude each other".into());
    }
    if js.nkey_seed_file.is_some() && (js.token.is_some() || bridge.username.is_some()) {
        return invalid("bridge.jetstream.nkey_seed_file", "an NKEY excludes token and username".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const JS: &str = "[[bridge]]\nname = \"js\"\nkind = \"jetstream\"\naddresses = [\"127.0.0.1:4222\"]\n\
                      topics = [{ pattern = \"a/#\" }]\n";

    #[test]
    fn a_jetstream_bridge_takes_its_defaults() {
        let config = Config::from_toml(JS).unwrap();
        let b = &config.bridge[0];
        assert_eq!(b.kind, super::BridgeKind::Jetstream);
        assert!(b.jetstream.is_none());
        let config = Config::from_toml(&format!(
            "{JS}jetstream = {{ stream = \"S\", subject_prefix = \"edge.one\" }}\n"
        ))
        .unwrap();
        let js = config.bridge[0].jetstream.as_ref().unwrap();
        assert_eq!(js.ack_timeout_ms, 5_000);
        assert_eq!(js.subject_prefix, "edge.one");
    }

    #[test]
    fn bad_jetstream_settings_name_the_key() {
        let cases = [
            ("jetstream = { stream = \"a.b\" }", "bridge.jetstream.stream"),
            ("jetstream = { stream = \"a b\" }", "bridge.jetstream.stream"),
            ("jetstream = { subject_prefix = \"a..b\" }", "bridge.jetstream.subject_prefix"),
            ("jetstream = { subject_prefix = \"a.>\" }", "bridge.jetstream.subject_prefix"),
            ("jetstream = { ack_timeout_ms = 0 }", "bridge.jetstream.ack_timeout_ms"),
            ("jetstream = { token = \"t\" }\nusername = \"u\"", "bridge.jetstream.token"),
            ("jetstream = { nkey_seed_file = \"u.nk\", token = \"t\" }", "bridge.jetstream.nkey_seed_file"),
            ("jetstream = { stream = \"S\", color = 1 }", "color"),
            ("mosquitto_topics = [\"c/# in 1\"]", "bridge.topics.direction"),
        ];
        for (line, key) in cases {
            let err = Config::from_toml(&format!("{JS}{line}\n")).expect_err(line).to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
        let mqtt = JS.replace("kind = \"jetstream\"\n", "") + "jetstream = { stream = \"S\" }\n";
        assert!(Config::from_toml(&mqtt).unwrap_err().to_string().contains("bridge.jetstream"));
        let unknown = JS.replace("\"jetstream\"", "\"kafka\"");
        assert!(Config::from_toml(&unknown).unwrap_err().to_string().contains("kind"));
    }
}
