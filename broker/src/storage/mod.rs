//! Storage interface: what must outlive a connection, and — with a durable backend — the
//! process. The protocol code calls `Store::apply` with the records a state change touches and
//! `Store::load` once at start; it never knows which backend it talks to.
//!
//! Backends: `MemoryStore` (state lives as long as the process; used for durability `memory`
//! and by tests that restart a broker in-process). RocksDB arrives with the persistence issue.

mod memory;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytestring::ByteString;

use crate::message::Message;
use crate::router::Subscription;
use crate::session::ClientId;

pub use memory::MemoryStore;

/// A failed storage operation. The caller must not acknowledge what it tried to store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not complete the write or read.
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// A persistent session as stored: enough to rebuild it and its subscriptions at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub client_id: ClientId,
    /// Session Expiry Interval in seconds.
    pub expiry: u32,
    /// Topic filter -> subscription, in a stable order.
    pub subscriptions: BTreeMap<ByteString, Subscription>,
}

/// One change to stored state.
#[derive(Debug, Clone)]
pub enum Op {
    PutRetained(Arc<Message>),
    DeleteRetained(ByteString),
    PutSession(SessionRecord),
    DeleteSession(ClientId),
}

/// Everything loaded at start.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub retained: Vec<Arc<Message>>,
    pub sessions: Vec<SessionRecord>,
}

pub trait Store: Send + Sync + std::fmt::Debug {
    /// Applies `ops` atomically, in order.
    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError>;
    /// Reads back everything stored.
    fn load(&self) -> Result<Snapshot, StoreError>;
}
