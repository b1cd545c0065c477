//! The watch stream shared by every store backend: replay the history a [`super::mvcc::Mvcc`]
//! returned, then forward live revisions from a broadcast channel, filtered by prefix, with a
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

/// Capacity of the live broadcast channel; a watcher further behind than this is dropped with
/// [`StoreError::WatchLagged`] (etcd likewise cancels slow watchers rather than buffer forever).
pub const LIVE_CAPACITY: usize = 4096;

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
