//! Storage interface: what must outlive a connection and — with a durable backend — the
//! process. The protocol code hands `Store::commit` the records a state change touches and
//! awaits it before acknowledging anything that depends on them ("acknowledge only what can be
//! kept"); `Store::load` runs once at start. It never knows which backend it talks to.
//!
//! Backends: `MemoryStore` (durability `memory`: state lives as long as the process; also used
//! by tests that restart a broker in-process) and `RocksStore` (durability `wal` or `fsync`).
//!
//! Record kinds: retained messages; persistent sessions (subscriptions, expiry); messages
//! referenced by deliveries (stored once, however many sessions hold them); deliveries of a
//! session (queued or in flight, keyed by a per-session sequence, so recovery keeps their
//! order); inbound QoS 2 packet ids awaiting PUBREL; delayed wills.

mod memory;
pub mod records;
mod rocks;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::oneshot;

use crate::message::Message;
use crate::packet::{PacketId, ProtocolVersion, PublishProperties, QoS, Will};
use crate::router::Subscription;
use crate::session::ClientId;

pub use memory::MemoryStore;
pub use rocks::RocksStore;

/// A failed storage operation. The caller must not acknowledge what it tried to store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The data directory is in use by another process.
    #[error("data directory {dir} is locked by another process (is another tern running?): {detail}")]
    Locked { dir: String, detail: String },
    /// The database could not be opened (unwritable directory, damaged files, ...).
    #[error("cannot open the database in {dir}: {detail}")]
    Open { dir: String, detail: String },
    /// The database was written by an incompatible version of Tern.
    #[error("data directory {dir} holds schema version {found}, this tern needs {expected}")]
    Schema { dir: String, found: u32, expected: u32 },
    /// A stored record could not be decoded.
    #[error("damaged record: {0}")]
    Corrupt(String),
    /// A read or write failed (disk full, I/O error).
    #[error("storage write failed: {0}")]
    Backend(String),
    /// The storage thread has stopped (shutdown).
    #[error("storage is closed")]
    Closed,
}

/// Identifies a stored message; 0 means "not stored".
pub type MessageId = u64;

/// A message as stored. Its receive time is wall-clock, so Message Expiry keeps counting
/// across a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: PublishProperties,
    pub received_unix_ms: u64,
    pub origin: Option<ClientId>,
}

/// A persistent session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub client_id: ClientId,
    pub version: ProtocolVersion,
    /// Session Expiry Interval in seconds.
    pub expiry: u32,
    /// When the client went away (wall clock); `None` while connected.
    pub disconnected_unix_ms: Option<u64>,
    /// Topic filter -> subscription, in a stable order.
    pub subscriptions: BTreeMap<ByteString, Subscription>,
    /// The user the last connection authenticated as: the ACL decides what the session may
    /// read while it is offline, across restarts too.
    pub username: Option<ByteString>,
}

/// Where a stored delivery stands; in-flight states carry the packet id the client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Queued,
    AwaitingPubAck(PacketId),
    AwaitingPubRec(PacketId),
    AwaitingPubComp(PacketId),
}

/// One QoS 1/2 message on its way to one persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub message: MessageId,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// The `$share/...` subscription it came through, if any.
    pub shared: Option<ByteString>,
    pub state: DeliveryState,
}

/// A will waiting for its Will Delay Interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillRecord {
    pub client_id: ClientId,
    pub will: Will,
    pub publish_at_unix_ms: u64,
}

/// One change to stored state.
#[derive(Debug, Clone)]
pub enum Op {
    PutRetained(Arc<Message>),
    DeleteRetained(ByteString),
    PutSession(SessionRecord),
    /// Removes the session with everything it owns: deliveries, inbound ids, delayed will.
    DeleteSession(ClientId),
    PutMessage(MessageId, Arc<Message>),
    DeleteMessage(MessageId),
    PutDelivery {
        client: ClientId,
        seq: u64,
        record: DeliveryRecord,
    },
    DeleteDelivery {
        client: ClientId,
        seq: u64,
    },
    PutInbound {
        client: ClientId,
        packet_id: PacketId,
    },
    DeleteInbound {
        client: ClientId,
        packet_id: PacketId,
    },
    PutWill(WillRecord),
    DeleteWill(ClientId),
}

impl Op {
    /// True when the client may see the effect of this change, so it must be stored before
    /// the packets that follow it are written. Deleting a finished delivery, a message no
    /// delivery needs or a published will is not: if such a delete is lost in a crash, the
    /// broker at worst re-sends a QoS 1 message or a PUBREL (both allowed by the protocol).
    pub fn gates_output(&self) -> bool {
        !matches!(self, Op::DeleteDelivery { .. } | Op::DeleteMessage(_) | Op::DeleteWill(_))
    }
}

/// A stored session with what it owns, deliveries in their original order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub record: SessionRecord,
    pub deliveries: Vec<(u64, DeliveryRecord)>,
    pub inbound: Vec<PacketId>,
    pub will: Option<WillRecord>,
}

/// Everything loaded at start.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub retained: Vec<StoredMessage>,
    pub messages: BTreeMap<MessageId, StoredMessage>,
    pub sessions: Vec<StoredSession>,
}

pub trait Store: Send + Sync + std::fmt::Debug {
    /// Applies `ops` atomically, in submission order relative to every other commit: the
    /// batch is queued when this returns, and the future resolves once it is as durable as
    /// the store promises.
    fn commit(&self, ops: Vec<Op>) -> Commit;
    /// Reads back everything stored.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Flushes and closes (graceful shutdown). Later commits fail with `Closed`.
    fn close(&self);
}

/// The pending result of `Store::commit`.
pub struct Commit(CommitState);

enum CommitState {
    Done(Option<Result<(), StoreError>>),
    Waiting(oneshot::Receiver<Result<(), StoreError>>),
}

impl Commit {
    pub fn done(result: Result<(), StoreError>) -> Self {
        Commit(CommitState::Done(Some(result)))
    }

    pub fn waiting(reply: oneshot::Receiver<Result<(), StoreError>>) -> Self {
        Commit(CommitState::Waiting(reply))
    }
}

impl Future for Commit {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            CommitState::Done(result) => Poll::Ready(result.take().unwrap_or(Err(StoreError::Closed))),
            CommitState::Waiting(reply) => {
                Pin::new(reply).poll(cx).map(|r| r.unwrap_or(Err(StoreError::Closed)))
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl From<&Message> for StoredMessage {
    fn from(m: &Message) -> Self {
        let age = m.received.elapsed().as_millis() as u64;
        StoredMessage {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            properties: m.properties.clone(),
            received_unix_ms: unix_ms().saturating_sub(age),
            origin: m.origin.clone(),
        }
    }
}

impl StoredMessage {
    /// The message again, its receive time moved to this process's clock so that its expiry
    /// keeps counting from when it first arrived.
    pub fn into_message(self) -> Message {
        let age = std::time::Duration::from_millis(unix_ms().saturating_sub(self.received_unix_ms));
        let now = tokio::time::Instant::now();
        let mut message = Message::new(self.topic, self.payload, self.qos);
        message.retain = self.retain;
        message.properties = self.properties;
        message.received = now.checked_sub(age).unwrap_or(now);
        message.origin = self.origin;
        message
    }
}

/// The stored form of a delivery in `state`.
pub fn delivery_record(delivery: &crate::message::Delivery, state: DeliveryState) -> DeliveryRecord {
    DeliveryRecord {
        message: delivery.message.durable.id(),
        qos: delivery.qos,
        retain: delivery.retain,
        subscription_ids: delivery.subscription_ids.clone(),
        shared: delivery.shared.as_ref().map(|s| s.share.clone()),
        state,
    }
}
