//! Queue keys that never repeat, for the JetStream sink's `Nats-Msg-Id`.
//!
//! The sink names each message `<client id>:<queue key>`, the key (`seq`) under which the
//! bridge session stores the delivery. That name survives a crash with the record, so a
//! re-send after a restart carries it again and the stream's duplicate window drops the copy.
//! But a session numbers new deliveries from one past the largest key still stored: with an
//! empty queue, a restart would reuse the keys of messages the stream already has, and the
//! stream would drop the new messages as duplicates.
//!
//! So every start of a JetStream bridge takes a new *epoch* from a small file next to the
//! store (`jetstream-<name>.epoch`, written and synced before the bridge takes any message),
//! and its new keys start at `epoch << 40`: each run has 2^40 keys of its own. Stored keys of
//! earlier runs keep their value (and their Msg-Id). The file is per bridge name and sits in
//! `storage.dir`, so it lives and goes with the queue it protects.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::config::bridge::BridgeConfig;

/// Keys per run: 2^40 (about 10^12) messages between two starts.
const EPOCH_SHIFT: u32 = 40;

/// The epoch file of a bridge.
fn epoch_path(dir: &Path, bridge: &BridgeConfig) -> PathBuf {
    dir.join(format!("jetstream-{}.epoch", bridge.name))
}

/// Takes the next epoch for `bridge` (stored durably before it is returned) and returns the
/// first queue key of this run.
pub fn reserve(dir: &Path, bridge: &BridgeConfig) -> io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let path = epoch_path(dir, bridge);
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: not an epoch number", path.display()))
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let epoch = last + 1;
    if epoch >= 1 << (64 - EPOCH_SHIFT) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: epochs exhausted", path.display()),
        ));
    }
    // Write beside, sync, rename over, sync the directory: the file is the old or the new
    // epoch after any crash, never empty.
    let temporary = path.with_extension("epoch.new");
    let mut file = std::fs::File::create(&temporary)?;
    writeln!(file, "{epoch}")?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(epoch << EPOCH_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_start_takes_a_new_range_of_keys() {
        let dir = tempfile::tempdir().unwrap();
        let toml = "[[bridge]]\nname = \"js\"\nkind = \"jetstream\"\naddresses = [\"h:4222\"]\n\
                    topics = [{ pattern = \"a\" }]\n";
        let bridge = Config::from_toml(toml).unwrap().bridge.remove(0);
        let first = reserve(dir.path(), &bridge).unwrap();
        let second = reserve(dir.path(), &bridge).unwrap();
        assert_eq!(first, 1 << EPOCH_SHIFT);
        assert_eq!(second, 2 << EPOCH_SHIFT);
        std::fs::write(epoch_path(dir.path(), &bridge), "garbage").unwrap();
        let err = reserve(dir.path(), &bridge).unwrap_err();
        assert!(err.to_string().contains("not an epoch number"), "{err}");
    }
}
