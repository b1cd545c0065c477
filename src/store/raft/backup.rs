//! `skiff snapshot save` / `restore`: the store's MVCC contents (every retained record plus the
//! revision counters) in one checksummed file, restorable into an empty data dir as a new
//! one-server cluster with identical keys and revisions, like `etcdctl snapshot save/restore`.

use super::{codec, state_machine, Error, NoTransport, RaftStore, RaftStoreConfig};
use crate::store::StoreError;
use std::path::Path;
use std::sync::Arc;

/// What a saved snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub revision: i64,
    pub compact_revision: i64,
    /// Stored records (live keys and retained history).
    pub records: usize,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| {
        tracing::error!(error = %e, "{context}");
        StoreError::Internal(format!("{context}: {e}"))
    }
}

impl RaftStore {
    /// Writes a consistent snapshot of the store to `path` (atomically: temp file, fsync, rename).
    pub async fn save_snapshot(&self, path: &Path) -> Result<SnapshotInfo, StoreError> {
        self.linearize().await?;
        self.save_local(path)
    }

    /// Writes this server's applied state to `path` without asking the leader (cluster reset).
    fn save_local(&self, path: &Path) -> Result<SnapshotInfo, StoreError> {
        let (data, info) = {
            let m = self.shared.lock();
            let records = m.record_refs();
            let info =
                SnapshotInfo { revision: m.revision(), compact_revision: m.compact_revision(), records: records.len() };
            (codec::encode_snapshot(info.revision, info.compact_revision, &records), info)
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
            f.write_all(&data).map_err(io(format!("writing {}", tmp.display())))?;
            f.sync_all().map_err(io(format!("syncing {}", tmp.display())))?;
        }
        std::fs::rename(&tmp, path).map_err(io(format!("renaming {} to {}", tmp.display(), path.display())))?;
        Ok(info)
    }
}

/// `skiff server --cluster-reset`: turns a (stopped) member of an HA group into a one-server
/// cluster keeping its data. Opens the store alone (no peers; Raft re-applies every committed
/// entry at start-up), saves its state to `backup`, moves the old store directory aside to
/// `<dir>.old-<unix seconds>` and restores the backup into a fresh store directory, which the
/// next open initializes as a one-voter cluster with the same keys and revisions.
pub async fn cluster_reset(cfg: &RaftStoreConfig, backup: &Path) -> Result<SnapshotInfo, StoreError> {
    let mut alone = cfg.clone();
    alone.bootstrap = false;
    alone.transport = Arc::new(NoTransport);
    let store = RaftStore::open(alone).await?;
    let saved = store.save_local(backup);
    store.shutdown().await?;
    drop(store);
    let info = saved?;
    let old = cfg.dir.with_extension(format!("old-{}", super::now_ms() / 1000));
    std::fs::rename(&cfg.dir, &old).map_err(io(format!(
        "moving the old store {} aside to {}",
        cfg.dir.display(),
        old.display()
    )))?;
    tracing::info!(old = %old.display(), backup = %backup.display(), "old store moved aside");
    let restored = restore_snapshot(backup, cfg)?;
    if restored != info {
        return Err(StoreError::Internal(format!(
            "cluster reset restored {restored:?} but saved {info:?}; the old store is in {}",
            old.display()
        )));
    }
    Ok(info)
}

/// Restores a file written by [`RaftStore::save_snapshot`] into `cfg.dir` (the store directory,
/// `<data-dir>/server/db`), which must be empty or missing: as the state machine's snapshot
/// with no log before it. Opening it afterwards starts a new one-server cluster holding the
/// snapshot's keys at their original revisions.
pub fn restore_snapshot(file: &Path, cfg: &RaftStoreConfig) -> Result<SnapshotInfo, StoreError> {
    let dir = cfg.dir.as_path();
    let data = std::fs::read(file).map_err(io(format!("reading snapshot {}", file.display())))?;
    let (rev, compact_rev, records) = codec::decode_snapshot(&data)
        .map_err(|e| StoreError::from(Error::Corrupt(format!("snapshot {}: {e}", file.display()))))?;
    if dir.exists() && std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))?.next().is_some() {
        return Err(StoreError::Internal(format!(
            "{} is not empty; move the old store away (or use a new data dir) before restoring",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let meta = openraft::SnapshotMeta {
        last_log_id: None,
        last_membership: openraft::StoredMembership::default(),
        snapshot_id: "restored".into(),
    };
    state_machine::write_snapshot_file(dir, &meta, &data)?;
    Ok(SnapshotInfo { revision: rev, compact_revision: compact_rev, records: records.len() })
}
