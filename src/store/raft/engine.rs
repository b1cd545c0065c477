//! The storage engines of earlier store layouts (sled 0.34, then redb 2), which kept the Raft
//! log and the state machine as named trees of ordered byte keys in one database. The store no
//! longer runs on them ([`super::wal`] and snapshots replaced them: they wrote 14-25 bytes per
//! logical byte where etcd writes ~4); [`super::legacy`] reads them once to convert an old data
//! dir, and its tests write them to make one.

use super::Error;
use async_trait::async_trait;
use redb::{ReadableTable, ReadableTableMetadata};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

/// A key and its value.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// Writes applied atomically to one tree.
#[derive(Debug, Default)]
pub struct WriteBatch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }
    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A storage engine: named trees sharing one durability domain (a flush makes every earlier
/// write of every tree durable, in order).
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, Error>;
    /// Makes every write so far durable (fsync).
    async fn flush(&self) -> Result<(), Error>;
    /// [`Engine::flush`] for synchronous callers (offline tools).
    fn flush_blocking(&self) -> Result<(), Error>;
    /// Whether trees opened from this engine are still alive (held by tasks that have not
    /// exited yet): the database file is only closed once they are gone.
    fn trees_in_use(&self) -> bool {
        false
    }
}

/// One ordered key space.
pub trait Tree: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    /// Every entry between the bounds, in key order.
    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Vec<KvPair>, Error>;
    /// Every key between the bounds, in key order.
    fn keys(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Vec<Vec<u8>>, Error>;
    fn last(&self) -> Result<Option<KvPair>, Error>;
    fn is_empty(&self) -> Result<bool, Error>;
    /// Applies the batch atomically: after a crash, all of it or none of it is there.
    fn apply(&self, batch: WriteBatch) -> Result<(), Error>;
}

/// sled 0.34.
pub struct SledEngine {
    db: sled::Db,
}

fn sled_err(context: &str) -> impl FnOnce(sled::Error) -> Error + '_ {
    move |e| {
        if let sled::Error::Corruption { .. } = e {
            return Error::Corrupt(format!("the storage engine reports corruption while {context}: {e}"));
        }
        Error::Engine { context: context.to_string(), message: e.to_string() }
    }
}

impl SledEngine {
    /// Opens (or creates) a sled database in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Arc<dyn Engine>, Error> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from explicit flushes; a background flush only adds I/O.
            .flush_every_ms(None)
            .open()
            .map_err(sled_err(&format!("opening {}", dir.display())))?;
        Ok(Arc::new(SledEngine { db }))
    }
}

#[async_trait]
impl Engine for SledEngine {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, Error> {
        let tree = self.db.open_tree(name).map_err(sled_err(&format!("opening the {name} tree")))?;
        Ok(Arc::new(SledTree { tree }))
    }

    async fn flush(&self) -> Result<(), Error> {
        self.db.flush_async().await.map(|_| ()).map_err(sled_err("flushing to disk"))
    }

    fn flush_blocking(&self) -> Result<(), Error> {
        self.db.flush().map(|_| ()).map_err(sled_err("flushing to disk"))
    }
}

struct SledTree {
    tree: sled::Tree,
}

fn owned(b: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Tree for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.tree.get(key).map_err(sled_err("reading"))?.map(|v| v.to_vec()))
    }

    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Vec<KvPair>, Error> {
        self.tree
            .range::<Vec<u8>, _>((owned(start), owned(end)))
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_err("reading a range")))
            .collect()
    }

    fn keys(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Vec<Vec<u8>>, Error> {
        self.tree
            .range::<Vec<u8>, _>((owned(start), owned(end)))
            .keys()
            .map(|item| item.map(|k| k.to_vec()).map_err(sled_err("reading a range")))
            .collect()
    }

    fn last(&self) -> Result<Option<KvPair>, Error> {
        Ok(self.tree.last().map_err(sled_err("reading the last entry"))?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.tree.is_empty())
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), Error> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(sled_err("writing a batch"))
    }
}

/// redb 2: a copy-on-write B-tree in one file. Writes commit with `Durability::Eventual`: written
/// to the file without fsync, so they survive the process being killed (as sled's writes do),
/// though not a power loss; [`Engine::flush`] commits with `Durability::Immediate`, which fsyncs
/// every earlier commit. (`Durability::None` keeps commits in the process until the next durable
/// one: a follower killed after applying a write lost it, and `--cluster-reset`, which has no
/// leader to learn the commit index from, could not re-apply it.)
pub struct RedbEngine {
    db: Arc<redb::Database>,
}

type RedbTable<'a> = redb::TableDefinition<'a, &'static [u8], &'static [u8]>;

fn redb_err(context: &str) -> impl FnOnce(redb::Error) -> Error + '_ {
    move |e| {
        if let redb::Error::Corrupted(_) = e {
            return Error::Corrupt(format!("the storage engine reports corruption while {context}: {e}"));
        }
        Error::Engine { context: context.to_string(), message: e.to_string() }
    }
}

impl RedbEngine {
    /// Opens (or creates) the redb database file `path` with a page cache of at most
    /// `cache_bytes` (redb's default is 1 GiB, which a small board cannot spare).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Arc<dyn Engine>, Error> {
        let context = format!("opening {}", path.display());
        let db = guarded(&context, || {
            redb::Builder::new()
                .set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX))
                .create(path)
                .map_err(|e| redb_err(&context)(e.into()))
        })?;
        Ok(Arc::new(RedbEngine { db: Arc::new(db) }))
    }
}

/// Runs a redb operation, turning a panic inside redb into a corruption error: redb asserts on
/// some damaged files (a truncated one, for example) instead of returning an error, and a damaged
/// data file must stop skiff with a clear message, not abort it.
fn guarded<T>(context: &str, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "an internal check failed".into());
            Err(Error::Corrupt(format!("the storage engine failed while {context}: {why}")))
        }
    }
}

fn commit_empty(db: &redb::Database, durability: redb::Durability) -> Result<(), Error> {
    let mut tx = db.begin_write().map_err(|e| redb_err("starting a flush")(e.into()))?;
    tx.set_durability(durability);
    tx.commit().map_err(|e| redb_err("flushing to disk")(e.into()))
}

#[async_trait]
impl Engine for RedbEngine {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>, Error> {
        // Create the table so later read transactions find it.
        let mut tx = self.db.begin_write().map_err(|e| redb_err("opening a table")(e.into()))?;
        tx.set_durability(redb::Durability::Eventual);
        tx.open_table(RedbTable::new(name)).map_err(|e| redb_err("opening a table")(e.into()))?;
        tx.commit().map_err(|e| redb_err("opening a table")(e.into()))?;
        Ok(Arc::new(RedbTree { db: self.db.clone(), name: name.to_string() }))
    }

    async fn flush(&self) -> Result<(), Error> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || commit_empty(&db, redb::Durability::Immediate))
            .await
            .map_err(|e| Error::Internal(format!("the flush task failed: {e}")))?
    }

    fn flush_blocking(&self) -> Result<(), Error> {
        commit_empty(&self.db, redb::Durability::Immediate)
    }

    fn trees_in_use(&self) -> bool {
        Arc::strong_count(&self.db) > 1
    }
}

struct RedbTree {
    db: Arc<redb::Database>,
    name: String,
}

// redb's error type is large; these closures only carry it to the point of conversion.
#[allow(clippy::result_large_err)]
impl RedbTree {
    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<T, redb::Error>,
    ) -> Result<T, Error> {
        guarded("reading", || {
            let tx = self.db.begin_read().map_err(|e| redb_err("reading")(e.into()))?;
            let table = tx.open_table(RedbTable::new(&self.name)).map_err(|e| redb_err("reading")(e.into()))?;
            f(&table).map_err(redb_err("reading"))
        })
    }
}

fn redb_bounds<'a>(start: Bound<&'a [u8]>, end: Bound<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (start, end)
}

#[allow(clippy::result_large_err)]
impl Tree for RedbTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.read(|t| Ok(t.get(key)?.map(|v| v.value().to_vec())))
    }

    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Vec<KvPair>, Error> {
        self.read(|t| {
            t.range::<&[u8]>(redb_bounds(start, end))?
                .map(|item| item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())).map_err(redb::Error::from))
                .collect()
        })
    }

    fn keys(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Vec<Vec<u8>>, Error> {
        self.read(|t| {
            t.range::<&[u8]>(redb_bounds(start, end))?
                .map(|item| item.map(|(k, _)| k.value().to_vec()).map_err(redb::Error::from))
                .collect()
        })
    }

    fn last(&self) -> Result<Option<KvPair>, Error> {
        self.read(|t| Ok(t.last()?.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))))
    }

    fn is_empty(&self) -> Result<bool, Error> {
        self.read(|t| Ok(t.is_empty()?))
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), Error> {
        guarded("writing a batch", || self.apply_batch(batch))
    }
}

#[allow(clippy::result_large_err)]
impl RedbTree {
    fn apply_batch(&self, batch: WriteBatch) -> Result<(), Error> {
        let err = |e: redb::Error| redb_err("writing a batch")(e);
        let mut tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        tx.set_durability(redb::Durability::Eventual);
        {
            let mut table = tx.open_table(RedbTable::new(&self.name)).map_err(|e| err(e.into()))?;
            for (k, v) in &batch.ops {
                match v {
                    Some(v) => {
                        table.insert(k.as_slice(), v.as_slice()).map_err(|e| err(e.into()))?;
                    }
                    None => {
                        table.remove(k.as_slice()).map_err(|e| err(e.into()))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| err(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redb_trees_apply_batches_and_read_ranges_in_key_order() {
        let dir = tempfile::TempDir::new().unwrap();
        let engine = RedbEngine::open(&dir.path().join("store.redb"), 1 << 20).unwrap();
        check_engine(engine).await;
    }

    async fn check_engine(engine: Arc<dyn Engine>) {
        let t = engine.tree("t").unwrap();
        assert!(t.is_empty().unwrap());
        let mut b = WriteBatch::default();
        for k in [b"c", b"a", b"b"] {
            b.insert(k.to_vec(), k.to_vec());
        }
        b.remove(b"c".to_vec());
        t.apply(b).unwrap();
        engine.flush().await.unwrap();
        let all = t.range(Bound::Unbounded, Bound::Unbounded).unwrap();
        assert_eq!(all, vec![(b"a".to_vec(), b"a".to_vec()), (b"b".to_vec(), b"b".to_vec())]);
        assert_eq!(t.keys(Bound::Excluded(b"a"), Bound::Unbounded).unwrap(), vec![b"b".to_vec()]);
        assert_eq!(t.last().unwrap().map(|(k, _)| k), Some(b"b".to_vec()));
        assert_eq!(t.get(b"c").unwrap(), None);
    }

    #[tokio::test]
    async fn sled_trees_apply_batches_and_read_ranges_in_key_order() {
        let dir = tempfile::TempDir::new().unwrap();
        check_engine(SledEngine::open(dir.path(), 1 << 20).unwrap()).await;
    }
}
