//! Whole-pass controllers: a few reflector caches feed one wake-up signal, and the controller
//! re-examines every object it owns in one pass (after any watch event, and periodically, as
//! upstream's resync period does). The volume binder, the disruption controller and the CSR
//! signer work this way: their decisions need a view over several kinds at once (PVs against
//! all claims, a budget against all pods), and the clusters skiff targets are small.

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Starts a reflector for `api` whose every event wakes `notify`; returns its cache.
pub fn cache<K>(api: Api<K>, notify: Arc<Notify>, shutdown: CancellationToken, who: &'static str) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                None => return,
                Some(Ok(_)) => notify.notify_one(),
                Some(Err(e)) => tracing::warn!(error = %e, controller = who, "watch failed; retrying"),
            }
        }
    });
    store
}

/// Waits until every cache has its initial list (so a pass never mistakes "not listed yet" for
/// "gone"); false when shutdown came first.
pub async fn ready(shutdown: &CancellationToken, waits: Vec<futures::future::BoxFuture<'static, bool>>) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        r = futures::future::join_all(waits) => r.into_iter().all(|ok| ok),
    }
}

/// A future resolving once `store` is ready, for [`ready`].
pub fn when_ready<K>(store: &Store<K>) -> futures::future::BoxFuture<'static, bool>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let s = store.clone();
    Box::pin(async move { s.wait_until_ready().await.is_ok() })
}

/// Waits for the next wake-up (an event or `period`), then lets a burst of events settle
/// briefly so one pass covers them. False on shutdown.
pub async fn next(notify: &Notify, period: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => return false,
        _ = notify.notified() => {}
        _ = tokio::time::sleep(period) => {}
    }
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_millis(50)) => true,
    }
}
