//! Listeners, the accept loops and graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::auth::scram::ScramSha256;
use crate::auth::Security;
use crate::config::Durability;
use crate::http::HttpServer;
use crate::metrics::METRICS;
use crate::storage::{MemoryStore, RocksStore, Store};
use crate::transport::{try_increment, Listener};
use crate::{connection, notify, sys, Broker, Config, Error, Result};

/// Back-off after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Connections being refused (over a connection limit) that still get a CONNACK; beyond
/// this many, further ones are closed without one, so a flood costs nothing.
const MAX_REFUSING: usize = 64;

/// A broker with its listeners bound, ready to run.
pub struct Server {
    broker: Arc<Broker>,
    listeners: Vec<(TcpListener, Arc<Listener>)>,
    bridges: Vec<crate::bridge::Prepared>,
    /// The HTTP endpoint's address, if one is configured; it serves from `bind` on.
    http_addr: Option<SocketAddr>,
    /// Stops the HTTP endpoint: after everything else, so `/readyz` says 503 throughout
    /// shutdown.
    http_stop: CancellationToken,
}

/// What SIGHUP and `POST /api/v1/reload` both do: re-reads the password file, the ACL, every
/// listener's certificates and the configuration file's bridges. A file that fails keeps its
/// previous version in use; each failure is logged and returned. systemd hears RELOADING=1
/// before and READY=1 after.
pub async fn reload(broker: &Broker) -> Vec<String> {
    broker.notifier.send(&notify::reloading());
    let mut failures = Vec::new();
    match broker.security.reload() {
        Ok(()) => info!("reloaded the password file and ACL"),
        Err(e) => {
            error!("reload failed, keeping the previous files: {e}");
            failures.push(format!("password file or ACL: {e}"));
        }
    }
    for listener in broker.listeners.get().into_iter().flatten() {
        if listener.config.tls.is_some() {
            match listener.reload() {
                Ok(()) => info!(listener = %listener.config.bind, "reloaded TLS certificates"),
                Err(e) => {
                    error!(listener = %listener.config.bind, "TLS reload failed, keeping the previous certificates: {e}");
                    failures.push(format!("certificates of listener {}: {e}", listener.config.bind));
                }
            }
        }
    }
    if let Some(bridges) = broker.bridges.get() {
        match Config::load(broker.config_file.get().map(std::path::PathBuf::as_path)) {
            Ok(config) => bridges.reload(&config).await,
            Err(e) => {
                error!("bridge settings not reloaded: configuration error: {e}");
                failures.push(format!("bridge settings: {e}"));
            }
        }
    }
    broker.notifier.send("READY=1");
    failures
}

impl Server {
    /// Opens the configured store, restores its state and binds every configured listener.
    pub async fn bind(config: Config) -> Result<Server> {
        let store: Arc<dyn Store> = match config.storage.durability {
            Durability::Memory => Arc::new(MemoryStore::default()),
            Durability::Wal => {
                Arc::new(RocksStore::open(&config.storage.dir, false, config.storage.memory_budget)?)
            }
            Durability::Fsync => {
                Arc::new(RocksStore::open(&config.storage.dir, true, config.storage.memory_budget)?)
            }
        };
        let bound = Self::bind_with_store(config, store.clone()).await;
        if bound.is_err() {
            // Start failed after the store opened (a bridge's files, the password file, a
            // listener): closed here, so its threads are done before the process exits with
            // the error (they could crash it in the C++ runtime's exit otherwise).
            store.close();
        }
        bound
    }

    /// As `bind`, with the given store (whose contents are restored first).
    pub async fn bind_with_store(config: Config, store: Arc<dyn Store>) -> Result<Server> {
        let security = Arc::new(Security::load(&config.auth)?);
        let broker = Broker::new(Arc::new(config), store, security.clone())
            .with_enhanced_auth(Arc::new(ScramSha256::new(security)));
        Self::bind_broker(broker).await
    }

    /// Binds the listeners of a fully assembled broker.
    pub async fn bind_broker(broker: Broker) -> Result<Server> {
        let broker = Arc::new(broker);
        let config = broker.config.clone();
        // First, so that /readyz answers 503 while sessions are restored and listeners bound.
        let http_stop = CancellationToken::new();
        let mut http_addr = None;
        if let Some(http) = HttpServer::bind(&config.http).await? {
            http_addr = http.local_addr();
            tokio::spawn(http.serve(broker.clone(), http_stop.clone()));
        }
        let _stop_http_on_error = http_stop.clone().drop_guard();
        let bridges = crate::bridge::prepare(&config)?;
        connection::restore(&broker).await?;
        let mut listeners = Vec::new();
        for listener in &config.listener {
            let settings = Listener::new(listener.clone())
                .map_err(|source| Error::Tls { addr: listener.bind, source })?;
            let bound = TcpListener::bind(listener.bind)
                .await
                .map_err(|source| Error::Bind { addr: listener.bind, source })?;
            let addr = bound.local_addr().map_err(|source| Error::Bind { addr: listener.bind, source })?;
            info!(transport = ?listener.transport, "listening on {addr}");
            listeners.push((bound, Arc::new(settings)));
        }
        _stop_http_on_error.disarm();
        // Set once, here: nothing else binds listeners.
        let _ = broker.listeners.set(listeners.iter().map(|(_, l)| l.clone()).collect());
        // Ready before saying so: whoever waits for the line below finds /readyz 200. (Bound
        // listeners already queue connections; `run` accepts them.)
        broker.ready.store(true, Ordering::Release);
        info!("accepting connections on {} listener(s)", listeners.len());
        let _ = broker.bridges.set(crate::bridge::Bridges::new(&broker));
        Ok(Server { broker, listeners, bridges, http_addr, http_stop })
    }

    /// The HTTP endpoint's bound address (port 0 resolved), if one is configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|(l, _)| l.local_addr().ok()).collect()
    }

    /// Cancel this token to shut the server down.
    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.broker.shutdown.clone()
    }

    /// The broker, for what runs beside the server (signal handlers, systemd notifications).
    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Serves until the shutdown token is cancelled, then closes every connection and waits
    /// for them (at most `server.shutdown_timeout_secs`).
    pub async fn run(self) {
        let broker = self.broker;
        let refusing = Arc::new(AtomicUsize::new(0));
        broker.tasks.spawn(connection::watch_keep_alives(broker.clone()));
        if let Some(bridges) = broker.bridges.get() {
            bridges.start_all(self.bridges);
        }
        if let Some(interval) = broker.config.sys_interval() {
            broker.tasks.spawn(sys::run(broker.clone(), interval));
        }
        for (socket, listener) in self.listeners {
            broker.tasks.spawn(accept_loop(socket, listener, broker.clone(), refusing.clone()));
        }
        broker.shutdown.cancelled().await;
        broker.ready.store(false, Ordering::Release);
        info!("shutting down");
        // Connections and offline sessions wait on their control slots, not on the token.
        broker.router.registry.shut_down();
        broker.tasks.close();
        if tokio::time::timeout(broker.config.shutdown_timeout(), broker.tasks.wait()).await.is_err() {
            warn!("connections still open after the shutdown timeout; exiting anyway");
        }
        // Everything acknowledged is already stored; this flushes and releases the directory.
        broker.store.close();
        self.http_stop.cancel();
    }
}

async fn accept_loop(
    socket: TcpListener,
    listener: Arc<Listener>,
    broker: Arc<Broker>,
    refusing: Arc<AtomicUsize>,
) {
    loop {
        let accepted = tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                METRICS.sockets_accepted.fetch_add(1, Ordering::Relaxed);
                // Small packets (acks) must not wait for Nagle's algorithm.
                if let Err(e) = stream.set_nodelay(true) {
                    warn!(%peer, "cannot set TCP_NODELAY: {e}");
                }
                let admission = match Admission::try_new(&listener, &broker) {
                    Ok(admission) => admission,
                    Err(limit) => {
                        warn!(%peer, listener = %listener.config.bind, "connection refused: {limit} reached");
                        // Refused with a CONNACK (server busy) while few are pending, else at once.
                        if !try_increment(&refusing, MAX_REFUSING) {
                            continue;
                        }
                        Admission::Refused(refusing.clone())
                    }
                };
                broker.tasks.spawn(connection::serve(
                    stream,
                    peer,
                    listener.clone(),
                    broker.clone(),
                    admission,
                ));
            }
            Err(e) => {
                error!("accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// A connection's place under the connection limits, given back when the connection ends.
pub enum Admission {
    /// Counted on its listener and globally.
    Admitted { listener: Arc<Listener>, broker: Arc<Broker> },
    /// Over a limit: its CONNECT is answered with "server busy"; counted among the refusing.
    Refused(Arc<AtomicUsize>),
}

impl Admission {
    fn try_new(
        listener: &Arc<Listener>,
        broker: &Arc<Broker>,
    ) -> std::result::Result<Admission, &'static str> {
        if !listener.try_open() {
            return Err("listener.max_connections");
        }
        if !try_increment(&broker.connections, broker.config.limits.max_connections) {
            listener.close();
            return Err("limits.max_connections");
        }
        Ok(Admission::Admitted { listener: listener.clone(), broker: broker.clone() })
    }

    pub fn is_admitted(&self) -> bool {
        matches!(self, Admission::Admitted { .. })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        match self {
            Admission::Admitted { listener, broker } => {
                listener.close();
                broker.connections.fetch_sub(1, Ordering::Relaxed);
            }
            Admission::Refused(refusing) => {
                refusing.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
