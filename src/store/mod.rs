//! The cluster store: etcd v3's data model (one global revision, per-key create/mod revision and
//! version, compare-and-swap transactions, ordered watches with history) behind one trait, so the
//! API server runs unchanged on the embedded Raft store, on an in-memory fake in unit tests, and
//! on an external etcd (`--datastore-endpoint`).

pub mod etcd;
pub mod memory;
pub mod mvcc;
pub mod raft;
pub mod watch;

#[cfg(test)]
mod conformance;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// One stored key as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    /// Shared, not copied, between the MVCC state, its history and every watcher's events.
    pub value: bytes::Bytes,
    /// Revision of the put that created this key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last change to this key.
    pub mod_revision: i64,
    /// Number of puts since creation (1 after create).
    pub version: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    NotEqual,
    Greater,
    Less,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// Version of the key; 0 means the key does not exist.
    Version(i64),
    CreateRevision(i64),
    /// Mod revision of the key; 0 means the key does not exist.
    ModRevision(i64),
    Value(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Vec<u8>,
    pub result: CompareResult,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Put a value. `ttl_seconds` makes the key expire that long after this put (Events use it).
    Put {
        key: Vec<u8>,
        value: bytes::Bytes,
        ttl_seconds: Option<u64>,
    },
    Delete {
        key: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    /// The put's previous value, if the key existed.
    Put {
        prev: Option<KeyValue>,
    },
    /// The deleted value, if the key existed.
    Delete {
        prev: Option<KeyValue>,
    },
    Get {
        kv: Option<KeyValue>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// Store revision after the transaction (unchanged if it wrote nothing).
    pub revision: i64,
    pub responses: Vec<OpResponse>,
}

#[derive(Debug, Clone, Default)]
pub struct RangeRequest {
    /// Keys starting with this prefix.
    pub prefix: Vec<u8>,
    /// Only keys strictly greater than this (continuation); empty = from the start.
    pub start_after: Vec<u8>,
    /// At most this many keys; 0 = no limit.
    pub limit: usize,
    /// Read at this revision; 0 = the current revision.
    pub revision: i64,
    /// Only count, return no keys.
    pub count_only: bool,
    /// Serve from this server's applied state without confirming first that it is current
    /// (etcd's serializable read): it may miss writes made through other servers just before.
    /// For reads that follow a linearizable read in the same request, which they then see
    /// past, or that tolerate staleness as upstream's informer caches do.
    pub serializable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys match after the last one returned.
    pub more: bool,
    /// Number of keys matching the prefix (and start_after) at that revision.
    pub count: usize,
    /// Revision the range was read at.
    pub revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// For a delete: key, empty value, mod_revision = the delete's revision.
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Events in revision order. All events of one revision arrive in one message.
    Events(Vec<Event>),
    /// Nothing under the prefix changed up to and including this revision.
    Progress(i64),
}

pub type WatchStream = BoxStream<'static, Result<WatchMessage, StoreError>>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The requested revision was compacted away; the client must re-list.
    #[error("required revision {requested} has been compacted (oldest available is {compact_revision})")]
    Compacted { requested: i64, compact_revision: i64 },
    /// The requested revision is newer than the store's.
    #[error("required revision {requested} is a future revision (current is {current})")]
    FutureRevision { requested: i64, current: i64 },
    /// No quorum or no leader right now; retry later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// On-disk data failed a check; the server must not serve it.
    #[error("the store's data is corrupt: {0}")]
    Corrupt(String),
    /// The watcher fell too far behind and was dropped; re-watch from the last revision seen.
    #[error("watch stream fell behind and was closed")]
    WatchLagged,
    #[error("store error: {0}")]
    Internal(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store as the API server sees it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;
    /// Events for keys under `prefix` with revision > `after_revision`, history first, then live.
    /// `after_revision` = 0 means from now on.
    async fn watch(&self, prefix: Vec<u8>, after_revision: i64) -> Result<WatchStream>;
    /// Current revision.
    async fn current_revision(&self) -> Result<i64>;
    /// Oldest revision still readable/watchable (everything <= this was compacted away... exclusive
    /// bound is `compact_revision`: reads at revisions < it fail).
    async fn compact_revision(&self) -> Result<i64>;
    /// Discard history older than `revision`.
    async fn compact(&self, revision: i64) -> Result<()>;

    /// Routes the API server mounts beside its own for other servers (Raft RPCs, joins). They
    /// authenticate their callers themselves and skip the API's RBAC.
    fn peer_router(&self) -> Option<axum::Router> {
        None
    }

    /// Read one key at the current revision.
    async fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, i64)> {
        let r = self.range(RangeRequest { prefix: key.to_vec(), limit: 0, ..Default::default() }).await?;
        let rev = r.revision;
        Ok((r.kvs.into_iter().find(|kv| kv.key == key), rev))
    }
}

/// Convenience builders for the transactions the API server uses.
pub mod txn {
    use super::*;

    /// Put `value` only if `key` does not exist; on failure returns the current value.
    pub fn create(key: &[u8], value: Vec<u8>, ttl_seconds: Option<u64>) -> Txn {
        Txn {
            compare: vec![Compare {
                key: key.to_vec(),
                result: CompareResult::Equal,
                target: CompareTarget::ModRevision(0),
            }],
            success: vec![Op::Put { key: key.to_vec(), value: value.into(), ttl_seconds }],
            failure: vec![Op::Get { key: key.to_vec() }],
        }
    }

    /// Put `value` only if `key`'s mod revision is `expected`; on failure returns the current value.
    pub fn update(key: &[u8], value: Vec<u8>, expected: i64, ttl_seconds: Option<u64>) -> Txn {
        Txn {
            compare: vec![Compare {
                key: key.to_vec(),
                result: CompareResult::Equal,
                target: CompareTarget::ModRevision(expected),
            }],
            success: vec![Op::Put { key: key.to_vec(), value: value.into(), ttl_seconds }],
            failure: vec![Op::Get { key: key.to_vec() }],
        }
    }

    /// Delete `key` only if its mod revision is `expected`; on failure returns the current value.
    pub fn delete(key: &[u8], expected: i64) -> Txn {
        Txn {
            compare: vec![Compare {
                key: key.to_vec(),
                result: CompareResult::Equal,
                target: CompareTarget::ModRevision(expected),
            }],
            success: vec![Op::Delete { key: key.to_vec() }],
            failure: vec![Op::Get { key: key.to_vec() }],
        }
    }
}

/// The smallest key greater than every key with this prefix (etcd's "range end" for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
