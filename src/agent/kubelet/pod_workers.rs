//! Pod workers: watches the pods bound to this node (`spec.nodeName=<node>`) into a reflector
//! store and runs one worker task per pod UID, as the kubelet's `podWorkers` does. A worker syncs
//! its pod when the pod changes, when the runtime reports one of its containers started or
//! exited, when a back-off ends, and every resync period; it writes the pod status when it
//! changed; it stops and removes a deleted pod's containers and then deletes the pod object
//! (grace period 0, UID precondition); it cleans up pods that vanished from the API.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use super::container_spec::pod_log_dir;
use super::events::EventSink;
use super::objects::{self, PodObjects};
use super::pod_status::{compute, unchanged, StatusInput};
use super::pod_sync::{grace_period, kill_pod, sync_pod, PodState, SyncConfig};
use super::probes::ProbeManager;
use super::service_env::service_env;
use super::termination;
use super::volumes;
use crate::agent::runtime::{PodRef, Runtime, RuntimeEvent};

/// How often every pod is synced even without a trigger (upstream `syncFrequency` is 1 min;
/// shorter here because runtime events are the only other exit signal).
pub const RESYNC: Duration = Duration::from_secs(10);
/// Retry delay after a failed sync or clean-up.
const RETRY: Duration = Duration::from_secs(5);
/// Grace period for pods that vanished from the API (upstream `minimumGracePeriodInSeconds`).
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PodWorkerError {
    /// The pod watch stream ended, which only happens when the client is dropped.
    #[error("the watch on this node's pods ended")]
    WatchEnded,
}

struct Inner {
    client: Client,
    runtime: Arc<dyn Runtime>,
    cfg: SyncConfig,
    events: Arc<dyn EventSink>,
    store: Store<Pod>,
    /// Every Service, for the service environment variables of new containers.
    services: Store<Service>,
    workers: Mutex<HashMap<String, Arc<Notify>>>,
    shutdown: CancellationToken,
}

/// Runs the pod workers of `node` until shutdown.
pub async fn run(
    client: Client,
    runtime: Arc<dyn Runtime>,
    cfg: SyncConfig,
    node: &str,
    events: Arc<dyn EventSink>,
    shutdown: CancellationToken,
) -> Result<(), PodWorkerError> {
    let api: Api<Pod> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default().fields(&format!("spec.nodeName={node}"))))
            .default_backoff();
    futures::pin_mut!(stream);
    let mut rt_events = runtime.events();
    let services = watch_services(client.clone(), shutdown.clone());
    let inner = Arc::new(Inner {
        client,
        runtime,
        cfg,
        events,
        store,
        services,
        workers: Mutex::new(HashMap::new()),
        shutdown,
    });
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Until the first list is complete the store is empty: acting on it then would kill every
    // pod that survived an agent restart. Workers start only once the store is ready.
    let mut ready = false;
    let mut rt_events_open = true;
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return Ok(()),
            ev = stream.next() => match ev {
                None => return Err(PodWorkerError::WatchEnded),
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                Some(Ok(watcher::Event::InitDone)) => {
                    ready = true;
                    housekeeping(&inner).await;
                }
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p))) if ready => dispatch(&inner, &p),
                Some(Ok(_)) => {}
            },
            ev = rt_events.recv(), if rt_events_open => match ev {
                Ok(RuntimeEvent::ContainerExited { pod_uid, .. } | RuntimeEvent::ContainerStarted { pod_uid, .. }) => {
                    if let Some(n) = lock(&inner.workers).get(&pod_uid) {
                        n.notify_one();
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) if ready => housekeeping(&inner).await,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                // The runtime dropped its sender: keep going on resyncs alone.
                Err(broadcast::error::RecvError::Closed) => {
                    tracing::warn!("the runtime's event stream closed; relying on periodic resyncs");
                    rt_events_open = false;
                }
            },
            _ = tick.tick(), if ready => housekeeping(&inner).await,
        }
    }
}

/// Keeps a store of all Services filled in the background. Containers started before its
/// first list completes miss the service variables (upstream waits; here pod start-up must not
/// depend on Services being served).
fn watch_services(client: Client, shutdown: CancellationToken) -> Store<Service> {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(Api::<Service>::all(client), watcher::Config::default()))
        .default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev {
                    None => return,
                    Some(Err(e)) => tracing::debug!(error = %e, "service watch failed; retrying"),
                    Some(Ok(_)) => {}
                },
            }
        }
    });
    store
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wakes (or starts) the worker of a pod.
fn dispatch(inner: &Arc<Inner>, pod: &Pod) {
    let (Some(uid), Some(name)) = (pod.metadata.uid.clone(), pod.metadata.name.clone()) else { return };
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    ensure_worker(inner, PodRef { uid, namespace: ns, name });
}

fn ensure_worker(inner: &Arc<Inner>, pod: PodRef) {
    let mut workers = lock(&inner.workers);
    if let Some(n) = workers.get(&pod.uid) {
        n.notify_one();
        return;
    }
    let notify = Arc::new(Notify::new());
    workers.insert(pod.uid.clone(), notify.clone());
    tokio::spawn(worker(inner.clone(), pod, notify));
}

/// Syncs every known pod and starts clean-up workers for runtime pods the API no longer has
/// (upstream `HandlePodCleanups`).
async fn housekeeping(inner: &Arc<Inner>) {
    for p in inner.store.state() {
        dispatch(inner, &p);
    }
    let known: HashSet<String> = inner.store.state().iter().filter_map(|p| p.metadata.uid.clone()).collect();
    let mut runtime_pods: HashMap<String, PodRef> = HashMap::new();
    match inner.runtime.list_sandboxes().await {
        Ok(s) => runtime_pods.extend(s.into_iter().map(|s| (s.pod.uid.clone(), s.pod))),
        Err(e) => tracing::warn!(error = %e, "listing sandboxes failed"),
    }
    match inner.runtime.list_containers().await {
        Ok(c) => runtime_pods.extend(c.into_iter().map(|c| (c.pod.uid.clone(), c.pod))),
        Err(e) => tracing::warn!(error = %e, "listing containers failed"),
    }
    // Volume directories of pods that are gone from both the API and the runtime (deleted
    // while the agent was down): upstream `cleanupOrphanedPodDirs`.
    if let Ok(entries) = std::fs::read_dir(&inner.cfg.pods_dir) {
        let active: HashSet<String> = lock(&inner.workers).keys().cloned().collect();
        for e in entries.flatten() {
            let uid = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&uid) && !runtime_pods.contains_key(&uid) && !active.contains(&uid) {
                tracing::info!(uid = %uid, "removing the volumes of a pod that no longer exists");
                if let Err(err) = volumes::teardown(&inner.cfg.pods_dir, &uid) {
                    tracing::warn!(uid = %uid, error = %err, "removing orphaned pod volumes failed");
                }
            }
        }
    }
    for (uid, pod) in runtime_pods {
        if !known.contains(&uid) {
            tracing::info!(pod = %pod.name, namespace = %pod.namespace, uid = %uid, "cleaning up pod no longer in the API");
            ensure_worker(inner, pod);
        }
    }
}

/// Unmounts and removes the pod's volume directory once its containers are gone.
fn remove_volumes(cfg: &SyncConfig, pod: &PodRef) {
    if let Err(e) = volumes::teardown(&cfg.pods_dir, &pod.uid) {
        tracing::warn!(pod = %pod.name, uid = %pod.uid, error = %e, "removing pod volumes failed");
    }
}

fn find(store: &Store<Pod>, pod: &PodRef) -> Option<Arc<Pod>> {
    store
        .get(&ObjectRef::new(&pod.name).within(&pod.namespace))
        .filter(|p| p.metadata.uid.as_deref() == Some(pod.uid.as_str()))
}

async fn worker(inner: Arc<Inner>, pod_ref: PodRef, notify: Arc<Notify>) {
    let rt = inner.runtime.as_ref();
    let events = inner.events.as_ref();
    let api_for = |ns: &str| Api::<Pod>::namespaced(inner.client.clone(), ns);
    let mut state = PodState::default();
    let mut objects = PodObjects::default();
    let mut probes = ProbeManager::default();
    let mut last_pod: Option<Arc<Pod>> = None;
    // The status last written and the resourceVersion the store showed then: while the store
    // has not caught up with our own write, do not write the same status again.
    let mut last_write: Option<(serde_json::Value, Option<String>)> = None;
    loop {
        let mut wait = RESYNC;
        match find(&inner.store, &pod_ref) {
            None => {
                // A pod that vanished without graceful deletion (force-deleted, or never seen
                // terminating) is killed with the minimum grace period, as upstream does for a
                // deletion grace period of 0.
                let grace = last_pod
                    .as_deref()
                    .filter(|p| p.metadata.deletion_grace_period_seconds.is_some())
                    .map(grace_period)
                    .unwrap_or(ORPHAN_GRACE);
                match kill_pod(rt, &pod_ref.uid, grace, last_pod.as_deref(), events).await {
                    Ok(()) => {
                        remove_volumes(&inner.cfg, &pod_ref);
                        let dir = pod_log_dir(&inner.cfg.log_root, &pod_ref);
                        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                            if e.kind() != std::io::ErrorKind::NotFound {
                                tracing::warn!(dir = %dir.display(), error = %e, "removing pod logs failed");
                            }
                        }
                        lock(&inner.workers).remove(&pod_ref.uid);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(pod = %pod_ref.name, uid = %pod_ref.uid, error = %e, "cleaning up pod failed");
                        wait = RETRY;
                    }
                }
            }
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                // Graceful deletion: stop with the pod's grace period, remove everything, then
                // finish the deletion with gracePeriodSeconds=0 and a UID precondition so a new
                // pod of the same name is never deleted by mistake (kubelet status manager).
                match kill_pod(rt, &pod_ref.uid, grace_period(&pod), Some(&pod), events).await {
                    Ok(()) => {
                        remove_volumes(&inner.cfg, &pod_ref);
                        let dp = DeleteParams {
                            grace_period_seconds: Some(0),
                            preconditions: Some(Preconditions {
                                uid: Some(pod_ref.uid.clone()),
                                resource_version: None,
                            }),
                            ..Default::default()
                        };
                        match api_for(&pod_ref.namespace).delete(&pod_ref.name, &dp).await {
                            Ok(_) => tracing::info!(pod = %pod_ref.name, namespace = %pod_ref.namespace, "pod deleted"),
                            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                            Err(e) => {
                                tracing::warn!(pod = %pod_ref.name, error = %e, "deleting pod failed");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(pod = %pod_ref.name, error = %e, "stopping pod failed"),
                }
                wait = RETRY;
                last_pod = Some(pod);
            }
            Some(pod) => {
                let env = service_env(&pod, &inner.services.state());
                objects = objects::fetch(&inner.client, &pod, &objects, SystemTime::now()).await;
                state.probes = probes.snapshot();
                match sync_pod(rt, &inner.cfg, &pod, &mut state, events, &env, &objects, SystemTime::now()).await {
                    Ok(out) => {
                        let pod_ip = state.sandbox.as_ref().and_then(|s| s.ip).unwrap_or(inner.cfg.node_ip);
                        probes.update(
                            &pod,
                            &out.containers,
                            pod_ip,
                            inner.runtime.clone(),
                            inner.events.clone(),
                            notify.clone(),
                        );
                        state.probes = probes.snapshot();
                        let mut status = compute(&StatusInput {
                            pod: &pod,
                            sandbox: state.sandbox.as_ref(),
                            containers: &out.containers,
                            waiting: &state.waiting,
                            node_ip: inner.cfg.node_ip,
                            now: k8s_openapi::jiff::Timestamp::now(),
                            probes: &state.probes,
                        });
                        termination::apply(&mut status, &state.termination_messages);
                        if out.deadline_exceeded {
                            termination::fail_deadline(&mut status);
                        }
                        let value = serde_json::to_value(&status).unwrap_or_default();
                        let rv = pod.metadata.resource_version.clone();
                        let stale_repeat = last_write.as_ref().is_some_and(|(v, at)| *v == value && *at == rv);
                        if !unchanged(pod.status.as_ref(), &status) && !stale_repeat {
                            let patch = json!({ "status": value });
                            match api_for(&pod_ref.namespace)
                                .patch_status(&pod_ref.name, &PatchParams::default(), &Patch::Merge(&patch))
                                .await
                            {
                                Ok(_) => last_write = Some((value, rv)),
                                Err(e) => {
                                    tracing::warn!(pod = %pod_ref.name, error = %e, "writing pod status failed");
                                    wait = RETRY;
                                }
                            }
                        }
                        if let Some(r) = out.requeue_after {
                            // A little past the deadline, so the back-off has surely ended.
                            wait = wait.min(r + Duration::from_millis(100));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pod = %pod_ref.name, namespace = %pod_ref.namespace, error = %e, "pod sync failed");
                        wait = RETRY;
                    }
                }
                last_pod = Some(pod);
            }
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => {
                lock(&inner.workers).remove(&pod_ref.uid);
                return;
            }
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
