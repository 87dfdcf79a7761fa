//! RocksDB backend: one column family per record kind, a schema version in `meta`, and one
//! storage thread that owns all writes and group-commits them.
//!
//! Group commit: the thread takes every commit queued since its last write, applies them in
//! submission order in one `WriteBatch` and one write (one WAL sync with `fsync`), then answers
//! each. A connection waits for its own commit only, so many connections share each write.
//!
//! Durability: `wal` writes the WAL before a commit resolves (survives a crash of the process:
//! the OS has the data); `fsync` also syncs it to the device (survives power loss).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, LogLevel,
    Options, WriteBatch, WriteBufferManager, WriteOptions, DB,
};
use tokio::sync::oneshot;
use tracing::{error, info};

use super::records::{self, client_key, client_range, corrupt, split_client_key};
use super::{Commit, Op, Snapshot, Store, StoreError, StoredMessage, StoredSession};
use crate::metrics::METRICS;
use crate::packet::PacketId;
use crate::session::ClientId;

/// Bumped when the layout of keys or values changes incompatibly.
const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";

const META: &str = "meta";
const RETAINED: &str = "retained";
const SESSIONS: &str = "sessions";
const MESSAGES: &str = "messages";
const DELIVERIES: &str = "deliveries";
const INBOUND: &str = "inbound";
const WILLS: &str = "wills";
const FAMILIES: [&str; 7] = [META, RETAINED, SESSIONS, MESSAGES, DELIVERIES, INBOUND, WILLS];

/// A raw key and value read from a column family.
type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Commits folded into one write at most; bounds the latency a large backlog adds.
const MAX_GROUP: usize = 1024;

enum Request {
    Commit(Vec<Op>, oneshot::Sender<Result<(), StoreError>>),
    Close(std::sync::mpsc::SyncSender<()>),
}

#[derive(Debug)]
pub struct RocksStore {
    db: Arc<DB>,
    dir: PathBuf,
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl RocksStore {
    /// Opens (or creates) the database in `dir`. `sync` makes every commit fsync the WAL.
    /// RocksDB's memtables and block cache share `memory_budget` bytes (`storage_options`).
    /// Refuses a directory locked by another process, an unreadable or damaged database, or
    /// one with another schema version — it never wipes data.
    pub fn open(dir: &Path, sync: bool, memory_budget: usize) -> Result<RocksStore, StoreError> {
        let shown = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            dir: shown.clone(),
            detail: format!("cannot create directory: {e}"),
        })?;
        let options = storage_options(memory_budget);
        // The default family too: unnamed, it would get RocksDB's default 64 MiB write buffer
        // (and its WAL preallocation with it).
        let families = FAMILIES
            .iter()
            .chain(&[rocksdb::DEFAULT_COLUMN_FAMILY_NAME])
            .map(|name| ColumnFamilyDescriptor::new(*name, options.clone()));
        let db = DB::open_cf_descriptors(&options, dir, families).map_err(|e| open_error(&shown, e))?;
        check_schema(&db, &shown)?;
        let db = Arc::new(db);
        let (requests, queue) = mpsc::channel();
        let thread_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("tern-storage".into())
            .spawn(move || write_loop(&thread_db, &queue, sync))
            .map_err(|e| StoreError::Open {
                dir: shown,
                detail: format!("cannot start the storage thread: {e}"),
            })?;
        info!(dir = %dir.display(), sync, "storage opened");
        Ok(RocksStore {
            db,
            dir: dir.to_path_buf(),
            requests: Mutex::new(Some(requests)),
            writer: Mutex::new(Some(writer)),
        })
    }
}

/// RocksDB sized for a small host. Memtables and the block cache are charged to one LRU cache
/// of `memory_budget` bytes (memtables at most half of it, so reads keep a cache); the write
/// buffer sizes also bound what RocksDB preallocates for each WAL file (1.1 × the write
/// buffer), and the manifest preallocates 64 KiB instead of 4 MiB, so an empty data directory
/// takes a few MiB of disk, not 37. The WAL as a whole is bounded by `max_total_wal_size`:
/// beyond it the oldest memtables are flushed. RocksDB's own LOG keeps warnings only (no
/// stream of informational writes on an SD card) in at most two files of 1 MiB.
fn storage_options(memory_budget: usize) -> Options {
    let cache = Cache::new_lru_cache(memory_budget);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_compression_type(DBCompressionType::Lz4);
    options.set_block_based_table_factory(&table);
    options.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager_with_cache(
        memory_budget / 2,
        false,
        cache,
    ));
    options.set_write_buffer_size(memory_budget / 8);
    options.set_max_write_buffer_number(2);
    options.set_max_total_wal_size(u64::try_from(memory_budget * 2).unwrap_or(u64::MAX));
    options.set_manifest_preallocation_size(64 << 10);
    options.set_log_level(LogLevel::Warn);
    options.set_keep_log_file_num(2);
    options.set_max_log_file_size(1 << 20);
    options.set_max_open_files(256);
    options
}

fn open_error(dir: &str, e: rocksdb::Error) -> StoreError {
    let detail = e.into_string();
    if detail.contains("lock") || detail.contains("Resource temporarily unavailable") {
        StoreError::Locked { dir: dir.to_string(), detail }
    } else {
        StoreError::Open { dir: dir.to_string(), detail }
    }
}

fn check_schema(db: &DB, dir: &str) -> Result<(), StoreError> {
    let meta = family(db, META)?;
    match db.get_cf(meta, SCHEMA_KEY).map_err(backend)? {
        Some(v) => {
            let found = u32::from_be_bytes(v.as_slice().try_into().map_err(|_| corrupt("schema version"))?);
            if found != SCHEMA_VERSION {
                return Err(StoreError::Schema { dir: dir.to_string(), found, expected: SCHEMA_VERSION });
            }
        }
        None => {
            // A database with records but no schema version is not one of ours.
            for name in &FAMILIES[1..] {
                if db.iterator_cf(family(db, name)?, IteratorMode::Start).next().is_some() {
                    return Err(corrupt("records without a schema version"));
                }
            }
            db.put_cf(meta, SCHEMA_KEY, SCHEMA_VERSION.to_be_bytes()).map_err(backend)?;
        }
    }
    Ok(())
}

fn family<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(name).ok_or_else(|| StoreError::Corrupt(format!("missing column family {name}")))
}

fn backend(e: rocksdb::Error) -> StoreError {
    StoreError::Backend(e.into_string())
}

/// The storage thread: group commit until closed.
fn write_loop(db: &DB, queue: &mpsc::Receiver<Request>, sync: bool) {
    let mut write_options = WriteOptions::default();
    write_options.set_sync(sync);
    let mut waiting = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut batch = WriteBatch::default();
        let mut close = None;
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Commit(ops, reply) => {
                    let result = ops.into_iter().try_for_each(|op| add_op(db, &mut batch, op));
                    waiting.push((reply, result));
                }
                Request::Close(done) => close = Some(done),
            }
            if close.is_none() && waiting.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        let written = if batch.is_empty() {
            Ok(())
        } else {
            let started = std::time::Instant::now();
            let written = db.write_opt(batch, &write_options).map_err(backend);
            METRICS.storage_commits.observe(started.elapsed());
            written
        };
        if let Err(e) = &written {
            error!("storage write failed: {e}");
        }
        for (reply, prepared) in waiting.drain(..) {
            let _ = reply.send(prepared.and_then(|()| written.clone()));
        }
        if let Some(done) = close {
            if let Err(e) = db.flush_wal(true).and_then(|()| db.flush()) {
                error!("final storage flush failed: {e}");
            }
            let _ = done.send(());
            return;
        }
    }
}

fn add_op(db: &DB, batch: &mut WriteBatch, op: Op) -> Result<(), StoreError> {
    match op {
        Op::PutRetained(m) => batch.put_cf(
            family(db, RETAINED)?,
            m.topic.as_bytes(),
            records::encode_message(&StoredMessage::from(&*m)),
        ),
        Op::DeleteRetained(topic) => batch.delete_cf(family(db, RETAINED)?, topic.as_bytes()),
        Op::PutSession(record) => batch.put_cf(
            family(db, SESSIONS)?,
            record.client_id.0.as_bytes(),
            records::encode_session(&record),
        ),
        Op::DeleteSession(client) => {
            batch.delete_cf(family(db, SESSIONS)?, client.0.as_bytes());
            batch.delete_cf(family(db, WILLS)?, client.0.as_bytes());
            let (start, end) = client_range(&client);
            batch.delete_range_cf(family(db, DELIVERIES)?, &start, &end);
            batch.delete_range_cf(family(db, INBOUND)?, &start, &end);
        }
        Op::PutMessage(id, m) => batch.put_cf(
            family(db, MESSAGES)?,
            id.to_be_bytes(),
            records::encode_message(&StoredMessage::from(&*m)),
        ),
        Op::DeleteMessage(id) => batch.delete_cf(family(db, MESSAGES)?, id.to_be_bytes()),
        Op::PutDelivery { client, seq, record } => batch.put_cf(
            family(db, DELIVERIES)?,
            client_key(&client, &seq.to_be_bytes()),
            records::encode_delivery(&record),
        ),
        Op::DeleteDelivery { client, seq } => {
            batch.delete_cf(family(db, DELIVERIES)?, client_key(&client, &seq.to_be_bytes()))
        }
        Op::PutInbound { client, packet_id } => {
            batch.put_cf(family(db, INBOUND)?, client_key(&client, &packet_id.get().to_be_bytes()), [])
        }
        Op::DeleteInbound { client, packet_id } => {
            batch.delete_cf(family(db, INBOUND)?, client_key(&client, &packet_id.get().to_be_bytes()))
        }
        Op::PutWill(will) => {
            batch.put_cf(family(db, WILLS)?, will.client_id.0.as_bytes(), records::encode_will(&will))
        }
        Op::DeleteWill(client) => batch.delete_cf(family(db, WILLS)?, client.0.as_bytes()),
    }
    Ok(())
}

impl Store for RocksStore {
    fn commit(&self, ops: Vec<Op>) -> Commit {
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        match requests.as_ref().map(|r| r.send(Request::Commit(ops, reply))) {
            Some(Ok(())) => Commit::waiting(answer),
            _ => Commit::done(Err(StoreError::Closed)),
        }
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let db = &*self.db;
        let entries = |name: &str| -> Result<Vec<KeyValue>, StoreError> {
            db.iterator_cf(family(db, name)?, IteratorMode::From(&[], Direction::Forward))
                .map(|item| item.map_err(backend))
                .collect()
        };
        let mut snapshot = Snapshot::default();
        for (_, value) in entries(RETAINED)? {
            snapshot.retained.push(records::decode_message(&value)?);
        }
        for (key, value) in entries(MESSAGES)? {
            let id = u64::from_be_bytes((*key).try_into().map_err(|_| corrupt("message key"))?);
            snapshot.messages.insert(id, records::decode_message(&value)?);
        }
        let mut sessions = std::collections::BTreeMap::new();
        for (key, value) in entries(SESSIONS)? {
            let client = client_id(&key)?;
            let record = records::decode_session(client.clone(), &value)?;
            sessions.insert(
                client,
                StoredSession { record, deliveries: Vec::new(), inbound: Vec::new(), will: None },
            );
        }
        for (key, value) in entries(DELIVERIES)? {
            let (client, suffix) = split_client_key(&key)?;
            let seq = u64::from_be_bytes(suffix.try_into().map_err(|_| corrupt("delivery key"))?);
            if let Some(session) = sessions.get_mut(&client) {
                session.deliveries.push((seq, records::decode_delivery(&value)?));
            }
        }
        for (key, _) in entries(INBOUND)? {
            let (client, suffix) = split_client_key(&key)?;
            let raw = u16::from_be_bytes(suffix.try_into().map_err(|_| corrupt("inbound key"))?);
            let packet_id =
                std::num::NonZeroU16::new(raw).map(PacketId).ok_or_else(|| corrupt("packet id 0"))?;
            if let Some(session) = sessions.get_mut(&client) {
                session.inbound.push(packet_id);
            }
        }
        for (key, value) in entries(WILLS)? {
            let client = client_id(&key)?;
            if let Some(session) = sessions.get_mut(&client) {
                session.will = Some(records::decode_will(client, &value)?);
            }
        }
        snapshot.sessions = sessions.into_values().collect();
        Ok(snapshot)
    }

    fn close(&self) {
        let Some(requests) = self.requests.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let (done, flushed) = mpsc::sync_channel(1);
        if requests.send(Request::Close(done)).is_ok() {
            let _ = flushed.recv();
        }
        if let Some(writer) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = writer.join();
        }
        info!(dir = %self.dir.display(), "storage closed");
    }
}

fn client_id(key: &[u8]) -> Result<ClientId, StoreError> {
    std::str::from_utf8(key).map(ClientId::from).map_err(|_| corrupt("client id not UTF-8"))
}

#[cfg(test)]
mod tests;
