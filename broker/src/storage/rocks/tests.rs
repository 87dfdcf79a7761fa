//! RocksStore against a real database in a temporary directory.

use std::collections::BTreeMap;
use std::num::NonZeroU16;
use std::sync::Arc;

use super::*;
use crate::message::Message;
use crate::packet::{ProtocolVersion, QoS, SubscriptionOptions};
use crate::router::Subscription;
use crate::storage::{DeliveryRecord, DeliveryState, SessionRecord};

/// The default `storage.memory_budget`.
const BUDGET: usize = 8 << 20;

fn session(id: &str) -> SessionRecord {
    SessionRecord {
        client_id: ClientId::from(id),
        version: ProtocolVersion::V311,
        expiry: u32::MAX,
        disconnected_unix_ms: None,
        subscriptions: BTreeMap::from([(
            "t/#".into(),
            Subscription { options: SubscriptionOptions::qos(QoS::ExactlyOnce), id: None },
        )]),
        username: None,
    }
}

fn delivery(message: u64, state: DeliveryState) -> DeliveryRecord {
    DeliveryRecord {
        message,
        qos: QoS::ExactlyOnce,
        retain: false,
        subscription_ids: vec![],
        shared: None,
        state,
    }
}

#[tokio::test]
async fn committed_state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let c = ClientId::from("c");
    let pid = PacketId(NonZeroU16::new(9).unwrap());
    {
        let store = RocksStore::open(dir.path(), true, BUDGET).unwrap();
        let message = Arc::new(Message::new("t/1", &b"payload"[..], QoS::ExactlyOnce));
        let mut retained = Message::new("r", &b"kept"[..], QoS::AtLeastOnce);
        retained.retain = true;
        store
            .commit(vec![
                Op::PutSession(session("c")),
                Op::PutSession(session("other")),
                Op::PutMessage(7, message),
                Op::PutDelivery { client: c.clone(), seq: 300, record: delivery(7, DeliveryState::Queued) },
                Op::PutDelivery {
                    client: c.clone(),
                    seq: 2,
                    record: delivery(7, DeliveryState::AwaitingPubRec(pid)),
                },
                Op::PutInbound { client: c.clone(), packet_id: pid },
                Op::PutRetained(Arc::new(retained)),
            ])
            .await
            .unwrap();
        store.close();
        assert!(matches!(store.commit(vec![]).await, Err(StoreError::Closed)));
    }
    let store = RocksStore::open(dir.path(), false, BUDGET).unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.retained.len(), 1);
    assert_eq!(snapshot.messages[&7].payload, "payload");
    assert_eq!(snapshot.sessions.len(), 2);
    let stored = snapshot.sessions.iter().find(|s| s.record.client_id == c).unwrap();
    assert_eq!(stored.record, session("c"));
    let seqs: Vec<u64> = stored.deliveries.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![2, 300], "deliveries come back in sequence order");
    assert_eq!(stored.inbound, vec![pid]);

    store.commit(vec![Op::DeleteSession(c.clone())]).await.unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.sessions.len(), 1, "only the other session is left");
    assert!(snapshot.sessions[0].deliveries.is_empty());
    store.close();
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = RocksStore::open(dir.path(), false, BUDGET).unwrap();
    let second = RocksStore::open(dir.path(), false, BUDGET);
    assert!(matches!(second, Err(StoreError::Locked { .. })), "{second:?}");
    first.close();
}

#[test]
fn a_foreign_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksStore::open(dir.path(), false, BUDGET).unwrap();
        store.db.put_cf(family(&store.db, META).unwrap(), SCHEMA_KEY, 99u32.to_be_bytes()).unwrap();
        store.close();
    }
    let reopened = RocksStore::open(dir.path(), false, BUDGET);
    assert!(matches!(reopened, Err(StoreError::Schema { found: 99, .. })), "{reopened:?}");
}

#[test]
fn a_damaged_database_is_reported_not_wiped() {
    let dir = tempfile::tempdir().unwrap();
    RocksStore::open(dir.path(), false, BUDGET).unwrap().close();
    // Destroy the manifest pointer: RocksDB can no longer find its files.
    std::fs::write(dir.path().join("CURRENT"), b"garbage\n").unwrap();
    let reopened = RocksStore::open(dir.path(), false, BUDGET);
    assert!(matches!(reopened, Err(StoreError::Open { .. })), "{reopened:?}");
    assert!(dir.path().join("CURRENT").exists(), "nothing was deleted");
}

/// Disk space a directory's files take (allocated blocks, as `du` counts them, so
/// preallocated space counts too).
fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().blocks() * 512).sum()
}

#[test]
fn an_empty_data_directory_takes_at_most_4_mib_with_the_default_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path(), false, BUDGET).unwrap();
    let used = disk_usage(dir.path());
    assert!(used <= 4 << 20, "empty data directory takes {used} bytes");
    store.close();
}
