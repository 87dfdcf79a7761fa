//! Listeners, the accept loops and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::auth::AllowAll;
use crate::config::Durability;
use crate::storage::{MemoryStore, RocksStore, Store};
use crate::{connection, Broker, Config, Error, Result};

/// Back-off after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A broker with its listeners bound, ready to run.
pub struct Server {
    broker: Arc<Broker>,
    listeners: Vec<TcpListener>,
}

impl Server {
    /// Opens the configured store, restores its state and binds every configured listener.
    pub async fn bind(config: Config) -> Result<Server> {
        let store: Arc<dyn Store> = match config.storage.durability {
            Durability::Memory => Arc::new(MemoryStore::default()),
            Durability::Wal => Arc::new(RocksStore::open(&config.storage.dir, false)?),
            Durability::Fsync => Arc::new(RocksStore::open(&config.storage.dir, true)?),
        };
        Self::bind_with_store(config, store).await
    }

    /// As `bind`, with the given store (whose contents are restored first).
    pub async fn bind_with_store(config: Config, store: Arc<dyn Store>) -> Result<Server> {
        Self::bind_broker(Broker::new(Arc::new(config), store, Arc::new(AllowAll))).await
    }

    /// Binds the listeners of a fully assembled broker.
    pub async fn bind_broker(broker: Broker) -> Result<Server> {
        let broker = Arc::new(broker);
        let config = broker.config.clone();
        connection::restore(&broker).await?;
        let mut listeners = Vec::new();
        for listener in &config.listener {
            let bound = TcpListener::bind(listener.bind)
                .await
                .map_err(|source| Error::Bind { addr: listener.bind, source })?;
            let addr = bound.local_addr().map_err(|source| Error::Bind { addr: listener.bind, source })?;
            info!("listening on {addr}");
            listeners.push(bound);
        }
        Ok(Server { broker, listeners })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Cancel this token to shut the server down.
    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.broker.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then closes every connection and waits
    /// for them (at most `server.shutdown_timeout_secs`).
    pub async fn run(self) {
        let broker = self.broker;
        for listener in self.listeners {
            broker.tasks.spawn(accept_loop(listener, broker.clone()));
        }
        broker.shutdown.cancelled().await;
        info!("shutting down");
        broker.tasks.close();
        if tokio::time::timeout(broker.config.shutdown_timeout(), broker.tasks.wait()).await.is_err() {
            warn!("connections still open after the shutdown timeout; exiting anyway");
        }
        // Everything acknowledged is already stored; this flushes and releases the directory.
        broker.store.close();
    }
}

async fn accept_loop(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        let accepted = tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Small packets (acks) must not wait for Nagle's algorithm.
                if let Err(e) = stream.set_nodelay(true) {
                    warn!(%peer, "cannot set TCP_NODELAY: {e}");
                }
                broker.tasks.spawn(connection::serve(stream, peer, broker.clone()));
            }
            Err(e) => {
                error!("accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}
