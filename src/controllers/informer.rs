//! One watch of a kind shared by every controller that needs it (upstream's shared informer
//! factory). Each controller used to run its own reflector: with nine of them on pods, every
//! pod write was encoded nine times by the API server, decoded nine times here and cached nine
//! times, which cost more CPU than the write itself and most of the server's memory. Now one
//! watch feeds one cache ([`Shared::store`]), and each subscriber gets the events as `Arc`s of
//! the objects, after the cache applied them (so a reader never sees an older object than the
//! event that woke it).

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// What a subscriber hears: an object as it now is, or as it was when deleted.
#[derive(Debug)]
pub enum Event<K> {
    Apply(Arc<K>),
    Delete(Arc<K>),
}

impl<K> Clone for Event<K> {
    fn clone(&self) -> Self {
        match self {
            Event::Apply(o) => Event::Apply(o.clone()),
            Event::Delete(o) => Event::Delete(o.clone()),
        }
    }
}

impl<K> Event<K> {
    /// The object the event is about.
    pub fn object(&self) -> &K {
        match self {
            Event::Apply(o) | Event::Delete(o) => o,
        }
    }
}

struct Subscribers<K> {
    senders: Vec<mpsc::UnboundedSender<Event<K>>>,
    /// The initial list has been applied: a new subscriber is caught up from the cache.
    listed: bool,
}

/// A shared watch of every object of kind `K`, with its cache.
pub struct Shared<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    subs: Arc<Mutex<Subscribers<K>>>,
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Shared { store: self.store.clone(), subs: self.subs.clone() }
    }
}

fn lock<K>(m: &Mutex<Subscribers<K>>) -> MutexGuard<'_, Subscribers<K>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K> Shared<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching `api` until `shutdown` fires; `who` names the watch in logs.
    pub fn start(api: Api<K>, shutdown: CancellationToken, who: &'static str) -> Shared<K> {
        let (store, mut writer) = reflector::store::<K>();
        let subs = Arc::new(Mutex::new(Subscribers { senders: vec![], listed: false }));
        let shared = Shared { store: store.clone(), subs: subs.clone() };
        tokio::spawn(async move {
            // No controller reads managedFields; they are a good part of an object's size.
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(|o: &mut K| o.meta_mut().managed_fields = None);
            let mut stream = std::pin::pin!(stream);
            // The objects cached when a re-list began: those missing from the new list were
            // deleted while the watch was down, and subscribers must hear it.
            let mut before_relist: Vec<Arc<K>> = Vec::new();
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = stream.next() => match ev { Some(ev) => ev, None => return },
                };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(error = %e, kind = %K::kind(&()), who, "shared watch failed; retrying");
                        continue;
                    }
                };
                // Applying and dispatching under the subscribers' lock makes a new subscription
                // atomic with respect to events: it is caught up from the cache or sees the event.
                let mut s = lock(&subs);
                writer.apply_watcher_event(&ev);
                let out = match ev {
                    // The cache's own Arc, so subscribers share its copy.
                    watcher::Event::Apply(o) => {
                        Event::Apply(store.get(&ObjectRef::from_obj(&o)).unwrap_or_else(|| Arc::new(o)))
                    }
                    watcher::Event::InitApply(o) => Event::Apply(Arc::new(o)),
                    watcher::Event::Delete(o) => Event::Delete(Arc::new(o)),
                    watcher::Event::InitDone => {
                        s.listed = true;
                        for old in std::mem::take(&mut before_relist) {
                            if store.get(&ObjectRef::from_obj(&*old)).is_none() {
                                let gone = Event::Delete(old);
                                s.senders.retain(|tx| tx.send(gone.clone()).is_ok());
                            }
                        }
                        continue;
                    }
                    watcher::Event::Init => {
                        before_relist = store.state();
                        continue;
                    }
                };
                s.senders.retain(|tx| tx.send(out.clone()).is_ok());
            }
        });
        shared
    }

    /// The cache; see `Store::wait_until_ready` before trusting an empty answer.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every event from now on, preceded by an `Apply` of each cached object when the
    /// initial list is already in (so a late subscriber misses nothing).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Event<K>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = lock(&self.subs);
        if s.listed {
            for o in self.store.state() {
                let _ = tx.send(Event::Apply(o));
            }
        }
        s.senders.push(tx);
        rx
    }

    /// The events as a stream, for `Controller::reconcile_on` pipelines.
    pub fn events(&self) -> impl futures::Stream<Item = Event<K>> + Send + 'static {
        tokio_stream::wrappers::UnboundedReceiverStream::new(self.subscribe())
    }

    /// Wakes `notify` at every event until `shutdown` fires (for whole-pass controllers).
    pub fn notify_on_events(&self, notify: Arc<Notify>, shutdown: CancellationToken) {
        let mut rx = self.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = rx.recv() => match ev {
                        Some(_) => notify.notify_one(),
                        None => return,
                    },
                }
            }
        });
    }
}

type Pod = k8s_openapi::api::core::v1::Pod;

/// The informers the controllers share, for one term of leadership.
#[derive(Clone)]
pub struct Informers {
    pub pods: Shared<Pod>,
    /// Keeps the process's pod informer running while this term lasts (see [`PodHub`]).
    _hold: Option<Arc<PodHandle>>,
}

impl Informers {
    /// Informers of their own, stopped with `shutdown` (tests).
    pub fn start(client: &kube::Client, shutdown: &CancellationToken) -> Informers {
        Informers { pods: Shared::start(Api::all(client.clone()), shutdown.clone(), "controllers"), _hold: None }
    }

    /// The process's shared informers, held until the last clone is dropped.
    pub fn from_hub(hub: &Arc<PodHub>) -> Informers {
        let h = hub.acquire();
        Informers { pods: h.pods.clone(), _hold: Some(Arc::new(h)) }
    }
}

/// This server process's pod informer, shared by the controllers and the scheduler while either
/// holds its lease here. They are elected separately (in an HA group they may lead on different
/// servers), so the first to need it starts the watch and it stops once neither does. One watch
/// instead of two halves the pod events the API server encodes for them, and the scheduler's
/// queue holds the cache's own objects instead of a second copy of every pending pod.
pub struct PodHub {
    client: kube::Client,
    running: Mutex<Option<Running>>,
}

struct Running {
    pods: Shared<Pod>,
    stop: CancellationToken,
    users: usize,
}

/// A claim on the running pod informer; the watch stops when the last claim is dropped.
pub struct PodHandle {
    hub: Arc<PodHub>,
    pub pods: Shared<Pod>,
}

impl PodHub {
    pub fn new(client: kube::Client) -> Arc<PodHub> {
        Arc::new(PodHub { client, running: Mutex::new(None) })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running informer, started now if nobody holds it.
    pub fn acquire(self: &Arc<Self>) -> PodHandle {
        let mut r = self.lock();
        let run = r.get_or_insert_with(|| {
            let stop = CancellationToken::new();
            Running { pods: Shared::start(Api::all(self.client.clone()), stop.clone(), "shared"), stop, users: 0 }
        });
        run.users += 1;
        PodHandle { hub: self.clone(), pods: run.pods.clone() }
    }
}

impl Drop for PodHandle {
    fn drop(&mut self) {
        let mut r = self.hub.lock();
        if let Some(run) = r.as_mut() {
            run.users = run.users.saturating_sub(1);
            if run.users == 0 {
                run.stop.cancel();
                *r = None;
            }
        }
    }
}
