//! The crate's error type: what can stop the broker as a whole. Per-connection failures are
//! logged by the connection task and never reach here.

use std::net::SocketAddr;

use crate::config::ConfigError;
use crate::storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// A listener's certificates or key could not be loaded.
    #[error("listener {addr}: {source}")]
    Tls { addr: SocketAddr, source: crate::transport::tls::TlsError },
    /// A bridge's TLS files could not be loaded.
    #[error("bridge {name}: {source}")]
    BridgeTls { name: String, source: crate::transport::tls::TlsError },
    /// A JetStream bridge's queue key epoch could not be taken (`bridge/keys.rs`).
    #[error("bridge {name}: queue key epoch in the storage directory: {source}")]
    BridgeKeys { name: String, source: std::io::Error },
    /// A JetStream bridge's NKEY seed file could not be used.
    #[error("invalid value for `bridge.jetstream.nkey_seed_file` of bridge {name} ({path}): {reason}")]
    BridgeNkey { name: String, path: std::path::PathBuf, reason: String },
    /// The password file or ACL could not be loaded.
    #[error(transparent)]
    Security(#[from] crate::auth::SecurityError),
    /// The HTTP endpoint's token file could not be used.
    #[error("invalid value for `http.token_file` ({path}): {reason}")]
    HttpToken { path: std::path::PathBuf, reason: String },
    /// Stored state could not be loaded.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
