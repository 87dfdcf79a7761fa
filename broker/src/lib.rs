//! # Tern, an MQTT broker
//!
//! ```text
//!  TcpListener ──accept──▶ connection task (one per client, owns its Session)
//!                            │  transport: TCP, TLS, WebSocket or both (transport::establish)
//!                            │  security: password file, ACL, SCRAM (auth::Security)
//!                            │  codec: bytes ⇄ Packet (rmqtt-codec underneath)
//!                            │  session: QoS state machines, in-flight window, pending queue
//!                            ▼
//!                          Router (shared): subscription trie ─▶ Mailbox of each matching
//!                            │              retained store        session (never blocks)
//!                            │              session registry (takeover hand-off)
//!                            ▼
//!                          Store (retained messages, persistent sessions)
//! ```
//!
//! The publisher's task routes its own messages; each subscriber's task drains its mailbox into
//! its socket. A persistent session outlives its connection in an offline task until a client
//! with the same id takes it over.

pub mod admin;
pub mod auth;
pub mod bridge;
pub mod clock;
pub mod codec;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod dead_letter;
pub mod error;
pub mod http;
pub mod latency;
pub mod message;
pub mod metrics;
pub mod notify;
pub mod packet;
pub mod router;
pub mod server;
pub mod session;
pub mod storage;
pub mod sys;
pub mod transport;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use error::{Error, Result};
pub use server::Server;

use auth::{EnhancedAuthenticator, Security};
use connection::budget::PacketBudget;
use dead_letter::DeadLetters;
use notify::Notifier;
use router::Router;
use storage::Store;
use transport::Listener;

/// Everything the connection tasks share.
#[derive(Debug)]
pub struct Broker {
    pub config: Arc<Config>,
    pub router: Router,
    pub store: Arc<dyn Store>,
    /// Password file and ACL.
    pub security: Arc<Security>,
    /// MQTT 5 enhanced authentication methods, by name.
    pub enhanced_auth: Vec<Arc<dyn EnhancedAuthenticator>>,
    /// Cancelled to shut down: listeners stop, connections close.
    pub shutdown: CancellationToken,
    /// Every connection and session task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Client connections open (admitted under `limits.max_connections`).
    pub connections: AtomicUsize,
    assigned_ids: AtomicU64,
    /// Next storage id for a message (continues after the largest stored one).
    pub message_ids: AtomicU64,
    /// Memory for partly read large packets, all connections together.
    pub packet_budget: Arc<PacketBudget>,
    /// When the broker started (`$SYS/broker/uptime`).
    pub started: std::time::Instant,
    /// Publishes what could not be delivered on `$DLQ/` (`[dead_letter]`, off by default).
    pub dead_letters: DeadLetters,
    /// Storage is open and every listener bound, and shutdown has not begun (`/readyz`).
    pub ready: AtomicBool,
    /// The client listeners, once bound: reloads re-read their certificates, `/metrics`
    /// counts their connections.
    pub listeners: OnceLock<Vec<Arc<Listener>>>,
    /// systemd's notification socket (does nothing when systemd did not ask).
    pub notifier: Arc<Notifier>,
    /// The running bridges, once the server made them: reloads apply new bridge settings.
    pub bridges: OnceLock<Arc<bridge::Bridges>>,
    /// The configuration file given at start (none: the embedded defaults), read again by
    /// reloads for the bridges' settings.
    pub config_file: OnceLock<std::path::PathBuf>,
}

impl Broker {
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>, security: Arc<Security>) -> Self {
        // Seeded from the clock so ids assigned by an earlier process are not handed out again.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let dead_letters = DeadLetters::new(config.dead_letter.settings());
        Broker {
            router: Router::new(dead_letters.policy().wants(dead_letter::Reason::QueueFull)),
            dead_letters,
            store,
            security,
            enhanced_auth: Vec::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            connections: AtomicUsize::new(0),
            assigned_ids: AtomicU64::new(seed),
            message_ids: AtomicU64::new(1),
            packet_budget: PacketBudget::new(config.limits.max_incomplete_packet_bytes),
            started: std::time::Instant::now(),
            ready: AtomicBool::new(false),
            listeners: OnceLock::new(),
            notifier: Arc::new(Notifier::from_env()),
            bridges: OnceLock::new(),
            config_file: OnceLock::new(),
            config,
        }
    }

    /// Registers an MQTT 5 Authentication Method.
    pub fn with_enhanced_auth(mut self, method: Arc<dyn EnhancedAuthenticator>) -> Self {
        self.enhanced_auth.push(method);
        self
    }

    /// The authenticator for an Authentication Method, if one is registered.
    pub fn enhanced_auth(&self, method: &str) -> Option<&Arc<dyn EnhancedAuthenticator>> {
        self.enhanced_auth.iter().find(|a| a.method() == method)
    }

    /// A client identifier for a client that sent an empty one [MQTT-3.1.3-6].
    pub fn assign_client_id(&self) -> String {
        format!("tern-{:016x}", self.assigned_ids.fetch_add(1, Ordering::Relaxed))
    }
}
