//! The running bridges, and what SIGHUP does to them: a bridge whose settings changed is
//! restarted with them (its task stops, storing its session, and the new task takes that
//! session over, queue and in-flight window included); a bridge no longer configured is stopped
//! and its queue deleted (as a start without it would); a new one is started.
//!
//! The session keeps the limits it was made with: `queue_max_messages`, `queue_max_bytes`,
//! `max_inflight` and the `drop_oldest` headroom take effect at the next start of Tern.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use super::{prepare_one, run, Prepared};
use crate::config::bridge::BridgeConfig;
use crate::session::Session;
use crate::Broker;

/// One bridge's task and how to stop it.
struct Running {
    config: BridgeConfig,
    stop: CancellationToken,
    task: JoinHandle<Option<Session>>,
}

pub struct Bridges {
    /// Weak: the broker holds its bridges (`Broker::bridges`, for reloads), not the reverse.
    broker: Weak<Broker>,
    running: Mutex<HashMap<String, Running>>,
    /// One reload at a time: a second SIGHUP waits for the first to finish.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Bridges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridges").field("running", &self.running().keys().collect::<Vec<_>>()).finish()
    }
}

impl Bridges {
    pub fn new(broker: &Arc<Broker>) -> Arc<Bridges> {
        Arc::new(Bridges {
            broker: Arc::downgrade(broker),
            running: Mutex::default(),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// Starts one task per bridge. Call after stored sessions were restored: each bridge takes
    /// its session over from the offline task `restore` started for it. A bridge a reload
    /// already started is left as it is.
    pub fn start_all(&self, bridges: Vec<Prepared>) {
        for prepared in bridges {
            if !self.running().contains_key(&prepared.config.name) {
                self.start(prepared, None);
            }
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a bridge's task, with the session of the task it replaces, if any.
    fn start(&self, prepared: Prepared, handed: Option<Session>) {
        let Some(broker) = self.broker.upgrade() else { return };
        if handed.is_none() {
            super::jetstream::apply_key_floor_to_restored(&broker, &prepared.config);
        }
        let config = prepared.configured.clone();
        let stop = broker.shutdown.child_token();
        let span = tracing::info_span!(parent: None, "bridge", name = %config.name);
        let task = broker.tasks.spawn(run(broker.clone(), prepared, stop.clone(), handed).instrument(span));
        self.running().insert(config.name.clone(), Running { config, stop, task });
    }

    /// Stops a bridge's task; its session once the task has stored it (`None` if the task had
    /// already ended, or the broker is shutting down).
    async fn stop(&self, name: &str) -> Option<Session> {
        let running = self.running().remove(name)?;
        running.stop.cancel();
        running.task.await.ok().flatten()
    }

    /// Applies a newly read configuration's bridges (SIGHUP). A bridge whose TLS files cannot
    /// be read keeps running with its previous settings (logged).
    pub async fn reload(&self, config: &crate::Config) {
        let _one_at_a_time = self.reloading.lock().await;
        let configs = &config.bridge;
        let removed: Vec<String> =
            self.running().keys().filter(|name| !configs.iter().any(|c| &c.name == *name)).cloned().collect();
        for name in removed {
            if let Some(session) = self.stop(&name).await {
                self.delete(session).await;
            }
            warn!(bridge = %name, "bridge removed from the configuration: stopped, its queue deleted");
        }
        for bridge in configs {
            let current = self.running().get(&bridge.name).map(|r| r.config.clone());
            if current.as_ref() == Some(bridge) {
                continue;
            }
            let prepared = match prepare_one(config, bridge) {
                Ok(prepared) => prepared,
                Err(e) => {
                    error!(bridge = %bridge.name, "bridge settings not applied, keeping the previous ones: {e}");
                    continue;
                }
            };
            let handed = match current {
                Some(_) => {
                    let session = self.stop(&bridge.name).await;
                    info!(bridge = %bridge.name, kept = session.is_some(), "bridge settings changed: restarting it with its queue");
                    session
                }
                None => {
                    info!(bridge = %bridge.name, "bridge added: starting it");
                    None
                }
            };
            self.start(prepared, handed);
        }
    }

    /// A removed bridge's session: its subscriptions and its stored queue go.
    async fn delete(&self, mut session: Session) {
        let Some(broker) = self.broker.upgrade() else { return };
        for filter in session.subscriptions.keys() {
            broker.router.unsubscribe(filter, &session.client_id);
        }
        session.drain_stored();
        if let Err(e) = broker.store.commit(std::mem::take(&mut session.journal)).await {
            warn!(client_id = %session.client_id, "removed bridge's queue not deleted from storage: {e}");
        }
    }
}
