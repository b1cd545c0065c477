//! The watch stream shared by every store backend: replay the history a [`super::mvcc::Mvcc`]
//! returned, then forward live revisions from the [`Hub`], filtered by prefix, with a
//! periodic `Progress` so idle watchers learn the revision moved on (etcd's progress
//! notifications, which kube-apiserver turns into watch bookmarks).

use super::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How often an idle watch gets a progress notification.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// One applied revision as published to live watchers.
pub type Published = Arc<(i64, Vec<Event>)>;

/// Capacity of the channel for wide prefixes; a watcher further behind than this is dropped with
/// [`StoreError::WatchLagged`] (etcd likewise cancels slow watchers rather than buffer forever).
pub const LIVE_CAPACITY: usize = 4096;

/// Capacity of each kind's channel. Every channel's slots are allocated up front (about 40
/// bytes each) and a server watches some thirty kinds, so these are smaller than the channel
/// for everything; a kind's channel carries only that kind's revisions.
pub const KIND_CAPACITY: usize = 1024;

/// The live side of watches: applied revisions go out on broadcast channels, one per kind's
/// key range (`/registry/<group>/<plural>/`, the first four `/`-separated parts of a key) and
/// one for everything. A watch subscribes to its prefix's kind channel when the prefix names
/// one, so a write wakes only the watchers of its kind, not every watch in the process (the
/// controllers alone hold about sixty). Call both `subscribe` and `publish` under the store's
/// lock, so a new watch's history read and its live events meet exactly.
pub struct Hub {
    channels: std::sync::Mutex<Channels>,
}

struct Channels {
    all: broadcast::Sender<Published>,
    kinds: std::collections::HashMap<Vec<u8>, broadcast::Sender<Published>>,
}

/// The kind range of a key or prefix: up to and including its fourth `/`, if it has one.
fn kind_range(key: &[u8]) -> Option<&[u8]> {
    let mut slashes = 0;
    for (i, b) in key.iter().enumerate() {
        if *b == b'/' {
            slashes += 1;
            if slashes == 4 {
                return Some(&key[..=i]);
            }
        }
    }
    None
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            channels: std::sync::Mutex::new(Channels {
                all: broadcast::channel(LIVE_CAPACITY).0,
                kinds: std::collections::HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Channels> {
        // Nothing panics while holding it; a poisoned map of senders is still usable.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of every revision with events under `prefix` (and maybe others: the stream
    /// filters by prefix).
    pub fn subscribe(&self, prefix: &[u8]) -> broadcast::Receiver<Published> {
        let mut c = self.lock();
        match kind_range(prefix) {
            Some(k) => c.kinds.entry(k.to_vec()).or_insert_with(|| broadcast::channel(KIND_CAPACITY).0).subscribe(),
            None => c.all.subscribe(),
        }
    }

    /// Publishes one applied revision's events.
    pub fn publish(&self, rev: i64, events: Vec<Event>) {
        let mut c = self.lock();
        let published: Published = Arc::new((rev, events));
        let mut ranges: Vec<&[u8]> = published.1.iter().filter_map(|e| kind_range(&e.kv.key)).collect();
        ranges.sort_unstable();
        ranges.dedup();
        for k in ranges {
            let Some(tx) = c.kinds.get(k) else { continue };
            if tx.receiver_count() == 0 {
                // Nobody listens to this kind any more.
                c.kinds.remove(k);
                continue;
            }
            // Almost every revision touches one kind: its channel then shares the event list.
            let p = if published.1.iter().all(|e| kind_range(&e.kv.key) == Some(k)) {
                published.clone()
            } else {
                Arc::new((rev, published.1.iter().filter(|e| kind_range(&e.kv.key) == Some(k)).cloned().collect()))
            };
            let _ = tx.send(p);
        }
        // An error means nobody watches a wide prefix.
        let _ = c.all.send(published);
    }

    /// Ends every live watch (they see `WatchLagged`): after the state jumped (a snapshot was
    /// installed) over revisions they never saw.
    pub fn reset(&self) {
        let mut c = self.lock();
        c.all = broadcast::channel(LIVE_CAPACITY).0;
        c.kinds.clear();
    }
}

/// Streams `history` (already grouped per revision), then live revisions after `start_rev`.
/// `live` must have been subscribed while the history was read under the same lock as the
/// publisher, so no revision is missed or duplicated.
pub fn stream(
    history: Vec<Vec<Event>>,
    mut live: broadcast::Receiver<Published>,
    start_rev: i64,
    prefix: Vec<u8>,
) -> WatchStream {
    let (out, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        for batch in history {
            if out.send(Ok(WatchMessage::Events(batch))).await.is_err() {
                return;
            }
        }
        let mut seen = start_rev;
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        tick.tick().await;
        loop {
            tokio::select! {
                m = live.recv() => match m {
                    Ok(b) => {
                        let (rev, ref evs) = *b;
                        if rev <= seen { continue; }
                        seen = rev;
                        let evs: Vec<Event> = evs.iter().filter(|e| e.kv.key.starts_with(&prefix)).cloned().collect();
                        if !evs.is_empty() && out.send(Ok(WatchMessage::Events(evs))).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "watcher fell behind the live event stream; closing it");
                        let _ = out.send(Err(StoreError::WatchLagged)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        // The store replaced its state (snapshot install) or shut down.
                        let _ = out.send(Err(StoreError::WatchLagged)).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if out.send(Ok(WatchMessage::Progress(seen))).await.is_err() { return; }
                }
                _ = out.closed() => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                value: bytes::Bytes::new(),
                create_revision: 1,
                mod_revision: 1,
                version: 1,
            },
            prev_kv: None,
        }
    }

    fn keys(p: &Published) -> Vec<String> {
        p.1.iter().map(|e| String::from_utf8_lossy(&e.kv.key).into_owned()).collect()
    }

    #[test]
    fn kind_ranges_are_the_first_four_parts() {
        assert_eq!(kind_range(b"/registry/core/configmaps/ns/a"), Some(&b"/registry/core/configmaps/"[..]));
        assert_eq!(kind_range(b"/registry/core/configmaps/"), Some(&b"/registry/core/configmaps/"[..]));
        assert_eq!(kind_range(b"/registry/core/configmaps"), None);
        assert_eq!(kind_range(b"/registry/"), None);
        assert_eq!(kind_range(b""), None);
    }

    #[test]
    fn watchers_of_a_kind_hear_only_its_events_and_wide_watchers_hear_all() {
        let hub = Hub::new();
        let mut cms = hub.subscribe(b"/registry/core/configmaps/default/");
        let mut all = hub.subscribe(b"/registry/");
        let mut pods = hub.subscribe(b"/registry/core/pods/");
        hub.publish(1, vec![put("/registry/core/configmaps/default/a")]);
        hub.publish(2, vec![put("/registry/core/pods/default/p"), put("/registry/core/configmaps/x/b")]);
        hub.publish(3, vec![put("/short")]);
        assert_eq!(keys(&cms.try_recv().expect("rev 1")), ["/registry/core/configmaps/default/a"]);
        // A revision over two kinds reaches each kind with its own events.
        let two = cms.try_recv().expect("rev 2");
        assert_eq!((two.0, keys(&two)), (2, vec!["/registry/core/configmaps/x/b".to_string()]));
        assert!(cms.try_recv().is_err(), "nothing of other kinds");
        assert_eq!(keys(&pods.try_recv().expect("rev 2")), ["/registry/core/pods/default/p"]);
        assert!(pods.try_recv().is_err());
        let revs: Vec<i64> = std::iter::from_fn(|| all.try_recv().ok()).map(|p| p.0).collect();
        assert_eq!(revs, [1, 2, 3]);
    }

    #[test]
    fn a_kind_nobody_watches_is_forgotten_and_reset_ends_every_watch() {
        let hub = Hub::new();
        drop(hub.subscribe(b"/registry/core/secrets/"));
        hub.publish(1, vec![put("/registry/core/secrets/ns/s")]);
        assert!(hub.lock().kinds.is_empty());
        let mut w = hub.subscribe(b"/registry/core/secrets/");
        let mut wide = hub.subscribe(b"");
        hub.reset();
        assert!(matches!(w.try_recv(), Err(broadcast::error::TryRecvError::Closed)));
        assert!(matches!(wide.try_recv(), Err(broadcast::error::TryRecvError::Closed)));
    }
}
