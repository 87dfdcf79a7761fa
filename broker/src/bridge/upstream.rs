//! The one place where a bridge's kind picks its upstream protocol: an MQTT server
//! (`link.rs`) or a NATS JetStream sink (`jetstream.rs`). Both run in `lane.rs` over the same bridge session
//! (its queue, window and budget) and end the same way, so the bridge's reconnect, failover
//! and status logic (`mod.rs`) does not know which one it runs.

use std::time::Duration;

use super::jetstream::JetStream;
use super::lane::{Ending, Lane};
use super::link::{ConnectError, Mqtt};
use super::Bridge;
use crate::config::bridge::BridgeKind;

pub(super) enum Upstream {
    Mqtt(Lane<Mqtt>),
    JetStream(Lane<JetStream>),
}

impl Upstream {
    pub(super) async fn connect(bridge: &mut Bridge, address: &str) -> Result<Upstream, ConnectError> {
        match bridge.config.kind {
            BridgeKind::Mqtt => Lane::<Mqtt>::connect(bridge, address).await.map(Upstream::Mqtt),
            BridgeKind::Jetstream => {
                Lane::<JetStream>::connect(bridge, address).await.map(Upstream::JetStream)
            }
        }
    }

    pub(super) fn watch_primary(&mut self, primary: String, every: Duration, timeout: Duration) {
        match self {
            Upstream::Mqtt(link) => link.watch_primary(primary, every, timeout),
            Upstream::JetStream(link) => link.watch_primary(primary, every, timeout),
        }
    }

    pub(super) async fn serve(&mut self, bridge: &mut Bridge) -> Ending {
        match self {
            Upstream::Mqtt(link) => link.serve(bridge).await,
            Upstream::JetStream(link) => link.serve(bridge).await,
        }
    }
}
