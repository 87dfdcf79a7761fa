//! Configuration: layered loading (embedded defaults, file, environment) and validation into
//! the typed values the broker runs on. `config/tern.toml` is both the documented reference and
//! the embedded defaults, so the two cannot drift apart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod bridge;
pub mod dead_letter;
pub mod jetstream;

use crate::packet::QoS;
use crate::session::queue::QueueLimits;
use crate::session::SessionLimits;

/// The defaults, compiled in.
pub const DEFAULTS: &str = include_str!("../../config/tern.toml");

/// The protocol's largest packet: 1 + 4 bytes of fixed header + 268,435,455.
const PROTOCOL_MAX_PACKET_SIZE: u32 = 268_435_460;

/// A configuration that cannot be used. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The sources could not be read or parsed into the expected types.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is out of range.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub listener: Vec<ListenerConfig>,
    pub mqtt: MqttConfig,
    pub storage: StorageConfig,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    /// Upstream connections (store-and-forward bridges); none by default.
    #[serde(default)]
    pub bridge: Vec<bridge::BridgeConfig>,
    pub sys: SysConfig,
    /// Absent from a file: off.
    #[serde(default)]
    pub http: HttpConfig,
    /// Dead letters on `$DLQ/`; off by default.
    #[serde(default)]
    pub dead_letter: dead_letter::DeadLetterConfig,
}

/// The `$SYS` tree (`sys.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysConfig {
    /// Seconds between two rounds; 0 = no `$SYS` tree.
    pub interval: u64,
}

/// The HTTP endpoint for metrics and health (`http.rs`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; unset = no HTTP endpoint.
    pub bind: Option<SocketAddr>,
    /// File holding the bearer token clients must present; required off loopback.
    pub token_file: Option<PathBuf>,
}

/// What an acknowledged message survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// In memory only: lost when the process exits.
    Memory,
    /// Written to RocksDB's write-ahead log before the acknowledgement: survives a crash of
    /// the broker process.
    Wal,
    /// As `wal`, and the log is fsynced before the acknowledgement: survives power loss.
    Fsync,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub durability: Durability,
    pub dir: std::path::PathBuf,
    /// Bytes of RocksDB memtables and block cache together.
    pub memory_budget: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How a listener's clients reach the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT over TCP.
    #[default]
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Transport {
    pub fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    pub fn uses_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    #[serde(default)]
    pub transport: Transport,
    /// Whether clients without a user name may connect; unset means "only on loopback".
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// HTTP path of the WebSocket endpoint (`ws`/`wss`).
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
    /// Connections this listener accepts at once; 0 = only the global limit applies.
    #[serde(default)]
    pub max_connections: usize,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

fn default_ws_path() -> String {
    "/mqtt".into()
}

impl ListenerConfig {
    /// A plain TCP listener with every option at its default.
    pub fn tcp(bind: SocketAddr) -> Self {
        ListenerConfig {
            bind,
            transport: Transport::Tcp,
            allow_anonymous: None,
            ws_path: default_ws_path(),
            max_connections: 0,
            tls: None,
        }
    }

    /// Anonymous clients are allowed when configured so, and by default only on loopback,
    /// where nobody but this host can connect.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous.unwrap_or_else(|| self.bind.ip().is_loopback())
    }
}

/// Which part of a verified client certificate becomes the MQTT user name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateIdentity {
    /// The certificate only admits the client; the user name comes from CONNECT.
    #[default]
    None,
    /// The subject's Common Name.
    Cn,
    /// The first DNS name, else the first e-mail address, of the Subject Alternative Name.
    San,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate they signed (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub username_from_certificate: CertificateIdentity,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Mosquitto-format password file; unset = no user names are checked.
    pub password_file: Option<PathBuf>,
    /// Mosquitto-format ACL file; unset = every client may publish and subscribe to anything.
    pub acl_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Client connections open at once over all listeners; 0 = unlimited.
    pub max_connections: usize,
    /// Subscriptions one session may hold; 0 = unlimited.
    pub max_subscriptions_per_client: usize,
    /// Longest topic name or filter, in bytes (the protocol's limit is 65535).
    pub max_topic_length: usize,
    /// Most levels ('/'-separated parts) of a topic name or filter.
    pub max_topic_levels: usize,
    /// PUBLISH packets per second one client may send, sustained; 0 = unlimited.
    pub max_publish_rate: u32,
    /// Bytes that partly received large packets may hold, all connections together.
    pub max_incomplete_packet_bytes: usize,
    /// Persistent sessions kept while their clients are away; beyond it the one offline
    /// longest ends. 0 = unlimited.
    pub max_offline_sessions: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub connect_timeout_secs: u64,
    pub max_packet_size: u32,
    pub max_inflight_messages: u32,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// A connected subscriber whose publishers are paused and that takes nothing from its
    /// queue for this long is stalled: the publishers go on without it.
    pub stall_interval_ms: u64,
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub max_keep_alive_secs: u16,
    /// MQTT 5 Response Information for clients that ask: this prefix and their client id;
    /// empty = none.
    pub response_information_prefix: String,
    /// MQTT 5: say why in a Reason String when refusing a CONNECT or closing a connection.
    pub reason_strings: bool,
    pub maximum_qos: u8,
    pub retain_available: bool,
    pub wildcard_subscription_available: bool,
    pub subscription_identifiers_available: bool,
    pub shared_subscription_available: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub shutdown_timeout_secs: u64,
}

impl Config {
    /// Defaults, then `file` if given, then `TERN__SECTION__KEY` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder =
                builder.add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
        }
        let env =
            config::Environment::with_prefix("TERN").prefix_separator("__").separator("__").try_parsing(true);
        let mut config: Config = builder.add_source(env).build()?.try_deserialize()?;
        bridge::read_mosquitto_topics(&mut config.bridge)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document layered over the defaults (tests and embedding).
    pub fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        let mut config: Config = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        bridge::read_mosquitto_topics(&mut config.bridge)?;
        config.validate()?;
        Ok(config)
    }

    /// Replaces the listeners with one on `bind`:`port` (the `--bind`/`-p` flags).
    pub fn override_listener(&mut self, bind: Option<std::net::IpAddr>, port: Option<u16>) {
        if bind.is_none() && port.is_none() {
            return;
        }
        let default =
            self.listener.first().map(|l| l.bind).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1883)));
        let addr = SocketAddr::new(bind.unwrap_or(default.ip()), port.unwrap_or(default.port()));
        self.listener = vec![ListenerConfig::tcp(addr)];
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        if self.listener.is_empty() {
            return invalid("listener", "at least one listener is required");
        }
        for listener in &self.listener {
            if listener.transport.uses_tls() != listener.tls.is_some() {
                return invalid(
                    "listener.tls",
                    &format!(
                        "listener {}: transport \"tls\" and \"wss\" need a [listener.tls] table, the others must not have one",
                        listener.bind
                    ),
                );
            }
            if listener.transport.uses_websocket() && !listener.ws_path.starts_with('/') {
                return invalid("listener.ws_path", "must start with '/'");
            }
        }
        if self.storage.memory_budget < 1 << 20 {
            return invalid("storage.memory_budget", "must be at least 1048576 (1 MiB)");
        }
        let limits = &self.limits;
        if !(1..=65_535).contains(&limits.max_topic_length) {
            return invalid("limits.max_topic_length", "must be between 1 and 65535");
        }
        if limits.max_topic_levels == 0 {
            return invalid("limits.max_topic_levels", "must be at least 1");
        }
        let mqtt = &self.mqtt;
        if mqtt.connect_timeout_secs == 0 {
            return invalid("mqtt.connect_timeout_secs", "must be at least 1");
        }
        // Room for a CONNECT with a client id, will and credentials of modest size.
        if !(128..=PROTOCOL_MAX_PACKET_SIZE).contains(&mqtt.max_packet_size) {
            return invalid("mqtt.max_packet_size", "must be between 128 and 268435460");
        }
        if !(1..=65_535).contains(&mqtt.max_inflight_messages) {
            return invalid("mqtt.max_inflight_messages", "must be between 1 and 65535");
        }
        if !(1..=3_600_000).contains(&mqtt.stall_interval_ms) {
            return invalid("mqtt.stall_interval_ms", "must be between 1 and 3600000");
        }
        if mqtt.max_queued_messages == 0 {
            return invalid("mqtt.max_queued_messages", "must be at least 1");
        }
        if limits.max_incomplete_packet_bytes < mqtt.max_packet_size as usize {
            return invalid("limits.max_incomplete_packet_bytes", "must be at least mqtt.max_packet_size");
        }
        if mqtt.max_queued_bytes < mqtt.max_packet_size as usize {
            return invalid("mqtt.max_queued_bytes", "must be at least mqtt.max_packet_size");
        }
        if mqtt.receive_maximum == 0 {
            return invalid("mqtt.receive_maximum", "must be between 1 and 65535");
        }
        if mqtt.maximum_qos > 2 {
            return invalid("mqtt.maximum_qos", "must be 0, 1 or 2");
        }
        if self.sys.interval > 86_400 {
            return invalid("sys.interval", "must be between 0 (off) and 86400 seconds");
        }
        if let Some(bind) = self.http.bind {
            // Metrics name clients' topics' volume and the API (later) acts on clients: off
            // this host, only with a token.
            if !bind.ip().is_loopback() && self.http.token_file.is_none() {
                return invalid(
                    "http.token_file",
                    &format!("required when http.bind ({bind}) is not a loopback address"),
                );
            }
        }
        self.dead_letter.validate()?;
        bridge::validate(&self.bridge)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.mqtt.connect_timeout_secs)
    }

    /// The `$SYS` interval; `None` when off.
    pub fn sys_interval(&self) -> Option<Duration> {
        (self.sys.interval > 0).then(|| Duration::from_secs(self.sys.interval))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_timeout_secs)
    }

    /// The highest QoS accepted and granted.
    pub fn maximum_qos(&self) -> QoS {
        match self.mqtt.maximum_qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_inflight: self.mqtt.max_inflight_messages as usize,
            max_inflight_qos2: self.mqtt.max_inflight_messages as usize,
            queue: QueueLimits {
                max_messages: self.mqtt.max_queued_messages,
                max_bytes: self.mqtt.max_queued_bytes,
                // Validated: at most 3,600,000.
                stall_after_ms: u32::try_from(self.mqtt.stall_interval_ms).unwrap_or(u32::MAX),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid_and_loopback_only() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.listener.len(), 1);
        assert_eq!(config.listener[0].bind, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(config.mqtt.max_inflight_messages, 20);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = Config::from_toml("[mqtt]\nmax_packet_sise = 5").unwrap_err().to_string();
        assert!(err.contains("max_packet_sise"), "{err}");
        let err = Config::from_toml("[mqtt]\nmax_packet_size = \"big\"").unwrap_err().to_string();
        assert!(err.contains("max_packet_size"), "{err}");
        let err = Config::from_toml("[mqtt]\nmax_inflight_messages = 0").unwrap_err().to_string();
        assert!(err.contains("mqtt.max_inflight_messages"), "{err}");
        let err = Config::from_toml("[mqtt]\nmaximum_qos = 3").unwrap_err().to_string();
        assert!(err.contains("mqtt.maximum_qos"), "{err}");
        let err = Config::from_toml("[storage]\nmemory_budget = 1000").unwrap_err().to_string();
        assert!(err.contains("storage.memory_budget"), "{err}");
        let err = Config::from_toml("[[listener]]\nbind = \"nowhere\"").unwrap_err().to_string();
        assert!(err.contains("bind"), "{err}");
    }

    #[test]
    fn http_off_loopback_needs_a_token_file() {
        let config = Config::from_toml("").unwrap();
        assert!(config.http.bind.is_none(), "off by default");
        assert_eq!(config.sys_interval(), Some(Duration::from_secs(10)));
        assert!(Config::from_toml("[http]\nbind = \"127.0.0.1:9090\"").is_ok());
        assert!(Config::from_toml("[http]\nbind = \"[::1]:9090\"").is_ok());
        let err = Config::from_toml("[http]\nbind = \"0.0.0.0:9090\"").unwrap_err().to_string();
        assert!(err.contains("http.token_file"), "{err}");
        let with_token = "[http]\nbind = \"0.0.0.0:9090\"\ntoken_file = \"/etc/tern/token\"";
        assert!(Config::from_toml(with_token).is_ok());
        assert_eq!(Config::from_toml("[sys]\ninterval = 0").unwrap().sys_interval(), None);
    }

    #[test]
    fn cli_flags_replace_the_listeners() {
        let mut config = Config::from_toml("").unwrap();
        config.override_listener(None, Some(0));
        assert_eq!(config.listener[0].bind, "127.0.0.1:0".parse().unwrap());
        config.override_listener(Some("::1".parse().unwrap()), None);
        assert_eq!(config.listener[0].bind, "[::1]:0".parse().unwrap());
    }
}
