//! In-process store: survives connections and in-process restarts of the broker, not the
//! process itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytestring::ByteString;

use super::{Op, SessionRecord, Snapshot, Store, StoreError};
use crate::message::Message;
use crate::session::ClientId;

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    retained: BTreeMap<ByteString, Arc<Message>>,
    sessions: HashMap<ClientId, SessionRecord>,
}

impl Store for MemoryStore {
    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for op in ops {
            match op {
                Op::PutRetained(m) => {
                    state.retained.insert(m.topic.clone(), m);
                }
                Op::DeleteRetained(topic) => {
                    state.retained.remove(&topic);
                }
                Op::PutSession(record) => {
                    state.sessions.insert(record.client_id.clone(), record);
                }
                Op::DeleteSession(id) => {
                    state.sessions.remove(&id);
                }
            }
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut sessions: Vec<SessionRecord> = state.sessions.values().cloned().collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Ok(Snapshot { retained: state.retained.values().cloned().collect(), sessions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{QoS, SubscriptionOptions};
    use crate::router::Subscription;

    #[test]
    fn ops_round_trip_through_load() {
        let store = MemoryStore::default();
        let retained = Arc::new(Message::new("a", &b"1"[..], QoS::AtLeastOnce));
        let subscription = Subscription { options: SubscriptionOptions::qos(QoS::ExactlyOnce), id: Some(4) };
        let record = SessionRecord {
            client_id: ClientId::from("c"),
            expiry: 300,
            subscriptions: BTreeMap::from([(ByteString::from("x/#"), subscription)]),
        };
        store.apply(vec![Op::PutRetained(retained.clone()), Op::PutSession(record.clone())]).unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.retained, vec![retained]);
        assert_eq!(snapshot.sessions, vec![record]);
        store.apply(vec![Op::DeleteRetained("a".into()), Op::DeleteSession(ClientId::from("c"))]).unwrap();
        let snapshot = store.load().unwrap();
        assert!(snapshot.retained.is_empty() && snapshot.sessions.is_empty());
    }
}
