//! In-process store: survives connections and in-process restarts of the broker, not the
//! process itself (durability `memory`). Commits complete at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use bytestring::ByteString;

use super::{
    Commit, DeliveryRecord, MessageId, Op, SessionRecord, Snapshot, Store, StoreError, StoredMessage,
    StoredSession, WillRecord,
};
use crate::session::ClientId;

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    retained: BTreeMap<ByteString, StoredMessage>,
    sessions: BTreeMap<ClientId, SessionRecord>,
    messages: BTreeMap<MessageId, StoredMessage>,
    deliveries: BTreeMap<(ClientId, u64), DeliveryRecord>,
    inbound: BTreeSet<(ClientId, u16)>,
    wills: BTreeMap<ClientId, WillRecord>,
}

impl State {
    fn apply(&mut self, op: Op) {
        match op {
            Op::PutRetained(m) => {
                self.retained.insert(m.topic.clone(), StoredMessage::from(&*m));
            }
            Op::DeleteRetained(topic) => {
                self.retained.remove(&topic);
            }
            Op::PutSession(record) => {
                self.sessions.insert(record.client_id.clone(), record);
            }
            Op::DeleteSession(id) => {
                self.sessions.remove(&id);
                self.deliveries.retain(|(client, _), _| *client != id);
                self.inbound.retain(|(client, _)| *client != id);
                self.wills.remove(&id);
            }
            Op::PutMessage(id, m) => {
                self.messages.insert(id, StoredMessage::from(&*m));
            }
            Op::DeleteMessage(id) => {
                self.messages.remove(&id);
            }
            Op::PutDelivery { client, seq, record } => {
                self.deliveries.insert((client, seq), record);
            }
            Op::DeleteDelivery { client, seq } => {
                self.deliveries.remove(&(client, seq));
            }
            Op::PutInbound { client, packet_id } => {
                self.inbound.insert((client, packet_id.get()));
            }
            Op::DeleteInbound { client, packet_id } => {
                self.inbound.remove(&(client, packet_id.get()));
            }
            Op::PutWill(will) => {
                self.wills.insert(will.client_id.clone(), will);
            }
            Op::DeleteWill(id) => {
                self.wills.remove(&id);
            }
        }
    }
}

impl Store for MemoryStore {
    fn commit(&self, ops: Vec<Op>) -> Commit {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for op in ops {
            state.apply(op);
        }
        Commit::done(Ok(()))
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let sessions = state
            .sessions
            .values()
            .map(|record| {
                let id = &record.client_id;
                StoredSession {
                    record: record.clone(),
                    deliveries: state
                        .deliveries
                        .iter()
                        .filter(|((client, _), _)| client == id)
                        .map(|((_, seq), d)| (*seq, d.clone()))
                        .collect(),
                    inbound: state
                        .inbound
                        .iter()
                        .filter(|(client, _)| client == id)
                        .filter_map(|(_, pid)| std::num::NonZeroU16::new(*pid).map(crate::packet::PacketId))
                        .collect(),
                    will: state.wills.get(id).cloned(),
                }
            })
            .collect();
        Ok(Snapshot {
            retained: state.retained.values().cloned().collect(),
            messages: state.messages.clone(),
            sessions,
        })
    }

    fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::Message;
    use crate::packet::{PacketId, ProtocolVersion, QoS, SubscriptionOptions};
    use crate::router::Subscription;
    use crate::storage::DeliveryState;

    #[tokio::test]
    async fn ops_round_trip_through_load_and_session_delete_cascades() {
        let store = MemoryStore::default();
        let mut retained = Message::new("a", &b"1"[..], QoS::AtLeastOnce);
        retained.retain = true;
        let message = Arc::new(Message::new("t", &b"m"[..], QoS::AtLeastOnce));
        let subscription = Subscription { options: SubscriptionOptions::qos(QoS::ExactlyOnce), id: Some(4) };
        let c = ClientId::from("c");
        let record = SessionRecord {
            client_id: c.clone(),
            version: ProtocolVersion::V5,
            expiry: 300,
            disconnected_unix_ms: None,
            subscriptions: BTreeMap::from([(ByteString::from("x/#"), subscription)]),
            username: None,
        };
        let delivery = DeliveryRecord {
            message: 5,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            shared: None,
            state: DeliveryState::Queued,
        };
        let pid = PacketId(std::num::NonZeroU16::new(3).unwrap());
        store
            .commit(vec![
                Op::PutRetained(Arc::new(retained)),
                Op::PutSession(record.clone()),
                Op::PutMessage(5, message),
                Op::PutDelivery { client: c.clone(), seq: 2, record: delivery.clone() },
                Op::PutDelivery { client: c.clone(), seq: 1, record: delivery.clone() },
                Op::PutInbound { client: c.clone(), packet_id: pid },
            ])
            .await
            .unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.retained.len(), 1);
        assert_eq!(snapshot.messages.keys().copied().collect::<Vec<_>>(), vec![5]);
        let session = &snapshot.sessions[0];
        assert_eq!(session.record, record);
        assert_eq!(session.deliveries.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2], "in order");
        assert_eq!(session.inbound, vec![pid]);
        store.commit(vec![Op::DeleteSession(c)]).await.unwrap();
        let snapshot = store.load().unwrap();
        assert!(snapshot.sessions.is_empty());
    }
}
