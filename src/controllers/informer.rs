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

impl<K> Subscribers<K> {
    /// Sends `ev` to every subscriber, forgetting those that hung up.
    fn send(&mut self, ev: Event<K>) {
        self.senders.retain(|tx| tx.send(ev.clone()).is_ok());
    }
}

fn lock<K>(m: &Mutex<Subscribers<K>>) -> MutexGuard<'_, Subscribers<K>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K> Shared<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching `api` until `shutdown` fires; `who` names the watch in logs. `trim`
    /// removes what no subscriber reads from each object before it is cached.
    pub fn start(api: Api<K>, shutdown: CancellationToken, who: &'static str, trim: fn(&mut K)) -> Shared<K> {
        let (store, mut writer) = reflector::store::<K>();
        let subs = Arc::new(Mutex::new(Subscribers { senders: vec![], listed: false }));
        let shared = Shared { store: store.clone(), subs: subs.clone() };
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).default_backoff().modify(trim);
            let mut stream = std::pin::pin!(stream);
            // The objects cached when a re-list began: those missing from the new list were
            // deleted while the watch was down, and subscribers must hear it.
            let mut before_relist: Vec<Arc<K>> = Vec::new();
            // The objects of the list in progress: announced at its end, as the cache's own
            // `Arc`s (the cache takes the list only then), so subscribers share its copy.
            let mut listing: Vec<ObjectRef<K>> = Vec::new();
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
                    watcher::Event::InitApply(o) => {
                        listing.push(ObjectRef::from_obj(&o));
                        continue;
                    }
                    watcher::Event::Delete(o) => Event::Delete(Arc::new(o)),
                    watcher::Event::InitDone => {
                        s.listed = true;
                        for r in std::mem::take(&mut listing) {
                            if let Some(o) = store.get(&r) {
                                s.send(Event::Apply(o));
                            }
                        }
                        for old in std::mem::take(&mut before_relist) {
                            if store.get(&ObjectRef::from_obj(&*old)).is_none() {
                                s.send(Event::Delete(old));
                            }
                        }
                        continue;
                    }
                    watcher::Event::Init => {
                        listing.clear();
                        before_relist = store.state();
                        continue;
                    }
                };
                s.send(out);
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

/// A pod as the controllers and the scheduler need it. The cache holds every pod of the cluster,
/// and k8s-openapi's types are wide (a `Volume` has a field for each of its thirty sources, a
/// `Container` for each probe and hook), so the parts nobody here reads are dropped: managed
/// fields, volumes that are not claims (the volume binder, the scheduler and pvc-protection
/// look only at `persistentVolumeClaim` and `ephemeral` ones), and the container fields that
/// only the kubelet uses. Kept: names, images (image locality), ports (host ports, named target
/// ports), resources and restart policies (requests, sidecars), and all of the status.
/// Nothing writes a cached pod back, so trimming loses nothing in the store.
pub fn trim_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    let Some(spec) = p.spec.as_mut() else { return };
    if let Some(vols) = spec.volumes.as_mut() {
        vols.retain(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some());
        vols.shrink_to_fit();
    }
    let trim_container = |c: &mut k8s_openapi::api::core::v1::Container| {
        let (name, image, ports, resources) =
            (std::mem::take(&mut c.name), c.image.take(), c.ports.take(), c.resources.take());
        let (restart_policy, resize_policy) = (c.restart_policy.take(), c.resize_policy.take());
        *c = k8s_openapi::api::core::v1::Container {
            name,
            image,
            ports,
            resources,
            restart_policy,
            resize_policy,
            ..Default::default()
        };
    };
    spec.containers.iter_mut().for_each(trim_container);
    spec.init_containers.iter_mut().flatten().for_each(trim_container);
    // Ephemeral (debug) containers request nothing and run nowhere the scheduler decides.
    spec.ephemeral_containers = None;
}

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
        Informers {
            pods: Shared::start(Api::all(client.clone()), shutdown.clone(), "controllers", trim_pod),
            _hold: None,
        }
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
            Running {
                pods: Shared::start(Api::all(self.client.clone()), stop.clone(), "shared", trim_pod),
                stop,
                users: 0,
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_pods_keep_what_scheduling_and_controllers_read() {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": {"app": "a"}, "managedFields": [{"manager": "kubectl"}]},
            "spec": {
                "nodeName": "n1",
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "c"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "d"}},
                    {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}
                ],
                "initContainers": [{"name": "side", "image": "s", "restartPolicy": "Always",
                                    "command": ["sh"]}],
                "containers": [{
                    "name": "web", "image": "busybox",
                    "ports": [{"name": "http", "containerPort": 80, "hostPort": 8080}],
                    "resources": {"requests": {"cpu": "100m"}},
                    "env": [{"name": "A", "value": "1"}],
                    "livenessProbe": {"exec": {"command": ["true"]}},
                    "volumeMounts": [{"name": "cfg", "mountPath": "/c"}]
                }]
            },
            "status": {"phase": "Running", "podIP": "10.42.0.5"}
        }))
        .unwrap();
        trim_pod(&mut p);
        assert!(p.metadata.managed_fields.is_none());
        assert_eq!(p.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str), Some("a"));
        let spec = p.spec.as_ref().unwrap();
        let vols: Vec<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
        assert_eq!(vols, ["data", "scratch"], "only claim volumes stay");
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.tolerations.as_ref().map(Vec::len), Some(1));
        let c = &spec.containers[0];
        assert_eq!((c.name.as_str(), c.image.as_deref()), ("web", Some("busybox")));
        assert_eq!(c.ports.as_ref().and_then(|p| p[0].host_port), Some(8080));
        assert!(c.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some_and(|r| r.contains_key("cpu")));
        assert!(c.env.is_none() && c.liveness_probe.is_none() && c.volume_mounts.is_none());
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.restart_policy.as_deref(), Some("Always"));
        assert!(init.command.is_none());
        assert_eq!(p.status.as_ref().and_then(|s| s.pod_ip.as_deref()), Some("10.42.0.5"));
    }
}
