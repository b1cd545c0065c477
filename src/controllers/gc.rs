//! Garbage collection by ownerReferences (upstream `pkg/controller/garbagecollector`):
//!
//! - background: an object all of whose owners are gone is deleted; an object that lost only
//!   some owners has the dangling references removed;
//! - foreground: an owner the API server marked with the `foregroundDeletion` finalizer has its
//!   dependents deleted, and the finalizer is removed once no dependent with
//!   `blockOwnerDeletion` is left (the API server then deletes the owner);
//! - orphan: an owner marked with the `orphan` finalizer has its references removed from every
//!   dependent, then the finalizer removed.
//!
//! Minimal on purpose: dependents are Pods, ReplicaSets, Jobs, ControllerRevisions and
//! PersistentVolumeClaims, owners are judged only for kinds the collector watches (Deployment,
//! ReplicaSet, StatefulSet, DaemonSet, ReplicationController, Job, CronJob, and Pod, which owns
//! the claims of a scaled-down StatefulSet pod under whenScaled=Delete). An owner of any other kind counts as present, so an
//! unknown kind never causes a deletion. Absence seen in the cache is confirmed with a live GET
//! (comparing UIDs, since a new object may reuse the name) before anything is deleted, as
//! upstream's `attemptToDeleteItem` does.

use super::podutil;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often every dependent is checked, catching owners deleted while nothing was watching.
const RESYNC: Duration = Duration::from_secs(30);

/// Errors while collecting one object; logged, and the object is looked at again next resync.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// A call to the API server failed.
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What the collector does with one dependent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// At least one owner exists (or cannot be judged), no reference dangles.
    Keep,
    /// Every owner is gone: delete the dependent.
    Delete,
    /// Some owners are gone: drop the references with these UIDs.
    RemoveRefs(Vec<String>),
}

/// Decides from each owner reference's state: `Some(true)` present, `Some(false)` confirmed
/// absent, `None` not judged (untracked kind or lookup failed).
pub fn decide(meta: &ObjectMeta, owner_present: impl Fn(&OwnerReference) -> Option<bool>) -> Verdict {
    let refs = meta.owner_references.as_deref().unwrap_or(&[]);
    if refs.is_empty() || meta.deletion_timestamp.is_some() {
        return Verdict::Keep;
    }
    let states: Vec<(&OwnerReference, Option<bool>)> = refs.iter().map(|r| (r, owner_present(r))).collect();
    let dangling: Vec<String> = states.iter().filter(|(_, s)| *s == Some(false)).map(|(r, _)| r.uid.clone()).collect();
    if dangling.is_empty() {
        Verdict::Keep
    } else if dangling.len() == refs.len() {
        Verdict::Delete
    } else {
        Verdict::RemoveRefs(dangling)
    }
}

/// The caches of owner kinds the collector can judge.
#[derive(Clone)]
struct Owners {
    client: kube::Client,
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    jobs: Store<Job>,
    cronjobs: Store<CronJob>,
    statefulsets: Store<StatefulSet>,
    daemonsets: Store<DaemonSet>,
    rcs: Store<ReplicationController>,
    pods: Store<Pod>,
}

impl Owners {
    /// Cache lookup: `Some(true)` present, `Some(false)` absent from the cache, `None` untracked.
    fn cached(&self, r: &OwnerReference, ns: &str) -> Option<bool> {
        let uid_in = |uid: Option<&String>| uid.is_some_and(|u| *u == r.uid);
        match (r.api_version.as_str(), r.kind.as_str()) {
            ("apps/v1", "Deployment") => Some(
                self.deployments
                    .state()
                    .iter()
                    .any(|d| d.metadata.namespace.as_deref() == Some(ns) && uid_in(d.metadata.uid.as_ref())),
            ),
            ("apps/v1", "ReplicaSet") => Some(
                self.replicasets
                    .state()
                    .iter()
                    .any(|d| d.metadata.namespace.as_deref() == Some(ns) && uid_in(d.metadata.uid.as_ref())),
            ),
            ("batch/v1", "Job") => Some(
                self.jobs
                    .state()
                    .iter()
                    .any(|d| d.metadata.namespace.as_deref() == Some(ns) && uid_in(d.metadata.uid.as_ref())),
            ),
            ("batch/v1", "CronJob") => Some(
                self.cronjobs
                    .state()
                    .iter()
                    .any(|d| d.metadata.namespace.as_deref() == Some(ns) && uid_in(d.metadata.uid.as_ref())),
            ),
            ("apps/v1", "StatefulSet") => Some(
                self.statefulsets
                    .state()
                    .iter()
                    .any(|d| d.metadata.namespace.as_deref() == Some(ns) && uid_in(d.metadata.uid.as_ref())),
            ),
            ("apps/v1", "DaemonSet") => Some(
                self.daemonsets
                    .state()
                    .iter()
                    .any(|d| d.metadata.namespace.as_deref() == Some(ns) && uid_in(d.metadata.uid.as_ref())),
            ),
            ("v1", "ReplicationController") => Some(
                self.rcs
                    .state()
                    .iter()
                    .any(|d| d.metadata.namespace.as_deref() == Some(ns) && uid_in(d.metadata.uid.as_ref())),
            ),
            ("v1", "Pod") => Some(
                self.pods
                    .state()
                    .iter()
                    .any(|d| d.metadata.namespace.as_deref() == Some(ns) && uid_in(d.metadata.uid.as_ref())),
            ),
            _ => None,
        }
    }

    /// Live confirmation that the owner with this UID is gone.
    async fn confirmed_absent(&self, r: &OwnerReference, ns: &str) -> Option<bool> {
        async fn live<K>(api: Api<K>, r: &OwnerReference) -> Option<bool>
        where
            K: Resource + Clone + DeserializeOwned + Debug,
            K::DynamicType: Default,
        {
            match api.get_opt(&r.name).await {
                Ok(Some(o)) => Some(o.meta().uid.as_deref() != Some(r.uid.as_str())),
                Ok(None) => Some(true),
                Err(e) => {
                    tracing::debug!(error = %e, owner = %r.name, "gc: owner lookup failed; not judging");
                    None
                }
            }
        }
        match r.kind.as_str() {
            "Deployment" => live(Api::<Deployment>::namespaced(self.client.clone(), ns), r).await,
            "ReplicaSet" => live(Api::<ReplicaSet>::namespaced(self.client.clone(), ns), r).await,
            "Job" => live(Api::<Job>::namespaced(self.client.clone(), ns), r).await,
            "CronJob" => live(Api::<CronJob>::namespaced(self.client.clone(), ns), r).await,
            "StatefulSet" => live(Api::<StatefulSet>::namespaced(self.client.clone(), ns), r).await,
            "DaemonSet" => live(Api::<DaemonSet>::namespaced(self.client.clone(), ns), r).await,
            "ReplicationController" => live(Api::<ReplicationController>::namespaced(self.client.clone(), ns), r).await,
            "Pod" => live(Api::<Pod>::namespaced(self.client.clone(), ns), r).await,
            _ => None,
        }
    }

    /// The verdict for one dependent, confirming cache absences live.
    async fn judge(&self, meta: &ObjectMeta) -> Verdict {
        let ns = meta.namespace.clone().unwrap_or_default();
        let refs = meta.owner_references.clone().unwrap_or_default();
        let mut states = vec![];
        for r in &refs {
            let s = match self.cached(r, &ns) {
                Some(false) => self.confirmed_absent(r, &ns).await.map(|absent| !absent),
                other => other,
            };
            states.push((r.uid.clone(), s));
        }
        decide(meta, |r| states.iter().find(|(u, _)| *u == r.uid).and_then(|(_, s)| *s))
    }
}

async fn collect<K>(owners: &Owners, obj: &K) -> Result<(), GcError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let meta = obj.meta();
    if meta.owner_references.as_ref().is_none_or(|r| r.is_empty()) {
        return Ok(());
    }
    let ns = meta.namespace.clone().unwrap_or_default();
    let name = obj.name_any();
    let kind: &'static str = match K::kind(&()).as_ref() {
        "Pod" => "Pod",
        "Job" => "Job",
        "ControllerRevision" => "ControllerRevision",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        _ => "ReplicaSet",
    };
    let api: Api<K> = Api::namespaced(owners.client.clone(), &ns);
    let err = |action: &'static str| {
        let (namespace, name) = (ns.clone(), name.clone());
        move |source| GcError::Api { action, kind, namespace, name, source }
    };
    match owners.judge(meta).await {
        Verdict::Keep => Ok(()),
        Verdict::Delete => {
            tracing::info!(kind, namespace = %ns, name = %name, "gc: all owners gone; deleting");
            // Only this incarnation: a new object with the same name keeps living.
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: meta.uid.clone(), resource_version: None }),
                ..DeleteParams::background()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                Err(e) => Err(err("deleting")(e)),
            }
        }
        Verdict::RemoveRefs(uids) => {
            let keep: Vec<OwnerReference> =
                meta.owner_references.iter().flatten().filter(|r| !uids.contains(&r.uid)).cloned().collect();
            let patch =
                serde_json::json!({"metadata": {"ownerReferences": keep, "resourceVersion": meta.resource_version}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(err("removing dangling owner references from"))
        }
    }
}

/// What wakes the collector.
#[derive(Debug)]
enum Wake {
    /// An object with this UID was deleted: its dependents may be garbage, and a foreground
    /// owner waiting for it may be done.
    Gone(String),
    /// An owner got a deletionTimestamp with a foreground or orphan finalizer.
    Finalizing,
}

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

fn has_gc_finalizer(m: &ObjectMeta) -> bool {
    m.deletion_timestamp.is_some() && m.finalizers.iter().flatten().any(|f| f == FOREGROUND || f == ORPHAN)
}

/// Feeds a reflector store from a watch, telling the collector about deletions and owners
/// waiting for it.
fn spawn_reflector<K>(api: Api<K>, gone: mpsc::UnboundedSender<Wake>, shutdown: CancellationToken) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev { Some(ev) => ev, None => return },
            };
            match ev {
                Ok(watcher::Event::Delete(o)) => {
                    if let Some(uid) = o.meta().uid.clone() {
                        let _ = gone.send(Wake::Gone(uid));
                    }
                }
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) if has_gc_finalizer(o.meta()) => {
                    let _ = gone.send(Wake::Finalizing);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, kind = %K::kind(&()), "gc: watch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    reader
}

/// Runs the collector until `shutdown` fires.
pub async fn run(client: kube::Client, informers: super::informer::Informers, shutdown: CancellationToken) {
    let (tx, mut wake) = mpsc::unbounded_channel::<Wake>();
    let deployments = spawn_reflector(Api::<Deployment>::all(client.clone()), tx.clone(), shutdown.clone());
    let replicasets = spawn_reflector(Api::<ReplicaSet>::all(client.clone()), tx.clone(), shutdown.clone());
    let jobs = spawn_reflector(Api::<Job>::all(client.clone()), tx.clone(), shutdown.clone());
    let cronjobs = spawn_reflector(Api::<CronJob>::all(client.clone()), tx.clone(), shutdown.clone());
    let statefulsets = spawn_reflector(Api::<StatefulSet>::all(client.clone()), tx.clone(), shutdown.clone());
    let daemonsets = spawn_reflector(Api::<DaemonSet>::all(client.clone()), tx.clone(), shutdown.clone());
    let rcs = spawn_reflector(Api::<ReplicationController>::all(client.clone()), tx.clone(), shutdown.clone());
    let revisions = spawn_reflector(Api::<ControllerRevision>::all(client.clone()), tx.clone(), shutdown.clone());
    let claims = spawn_reflector(Api::<PersistentVolumeClaim>::all(client.clone()), tx.clone(), shutdown.clone());
    let pods = informers.pods.store();
    let mut pod_events = informers.pods.subscribe();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = sd.cancelled() => return,
                ev = pod_events.recv() => match ev { Some(ev) => ev, None => return },
            };
            match ev {
                super::informer::Event::Delete(p) => {
                    if let Some(uid) = p.metadata.uid.clone() {
                        let _ = tx.send(Wake::Gone(uid));
                    }
                }
                super::informer::Event::Apply(p) if has_gc_finalizer(&p.metadata) => {
                    let _ = tx.send(Wake::Finalizing);
                }
                super::informer::Event::Apply(_) => {}
            }
        }
    });
    for ready in [
        statefulsets.wait_until_ready().await.is_ok(),
        daemonsets.wait_until_ready().await.is_ok(),
        rcs.wait_until_ready().await.is_ok(),
        revisions.wait_until_ready().await.is_ok(),
        claims.wait_until_ready().await.is_ok(),
        jobs.wait_until_ready().await.is_ok(),
        cronjobs.wait_until_ready().await.is_ok(),
        deployments.wait_until_ready().await.is_ok(),
        replicasets.wait_until_ready().await.is_ok(),
        pods.wait_until_ready().await.is_ok(),
    ] {
        if !ready {
            return;
        }
    }
    let owners = Owners {
        client: client.clone(),
        deployments: deployments.clone(),
        replicasets: replicasets.clone(),
        jobs: jobs.clone(),
        cronjobs: cronjobs.clone(),
        statefulsets: statefulsets.clone(),
        daemonsets: daemonsets.clone(),
        rcs: rcs.clone(),
        pods: pods.clone(),
    };
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        // Which owner disappeared (None: look at everything).
        let uid: Option<String> = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => None,
            w = wake.recv() => match w {
                Some(Wake::Gone(u)) => Some(u),
                Some(Wake::Finalizing) => Some(String::new()),
                None => return,
            },
        };
        // Owners being deleted in the foreground or orphaning their dependents.
        let deps = Dependents { replicasets: &replicasets, jobs: &jobs, pods: &pods };
        for d in deployments.state().into_iter().filter(|o| has_gc_finalizer(&o.metadata)) {
            finalize_owner(&client, d.as_ref(), &deps).await;
        }
        for r in replicasets.state().into_iter().filter(|o| has_gc_finalizer(&o.metadata)) {
            finalize_owner(&client, r.as_ref(), &deps).await;
        }
        for j in jobs.state().into_iter().filter(|o| has_gc_finalizer(&o.metadata)) {
            finalize_owner(&client, j.as_ref(), &deps).await;
        }
        for c in cronjobs.state().into_iter().filter(|o| has_gc_finalizer(&o.metadata)) {
            finalize_owner(&client, c.as_ref(), &deps).await;
        }
        for p in pods.state().into_iter().filter(|o| has_gc_finalizer(&o.metadata)) {
            finalize_owner(&client, p.as_ref(), &deps).await;
        }
        for o in statefulsets.state().into_iter().filter(|o| has_gc_finalizer(&o.metadata)) {
            finalize_owner(&client, o.as_ref(), &deps).await;
        }
        for o in daemonsets.state().into_iter().filter(|o| has_gc_finalizer(&o.metadata)) {
            finalize_owner(&client, o.as_ref(), &deps).await;
        }
        for o in rcs.state().into_iter().filter(|o| has_gc_finalizer(&o.metadata)) {
            finalize_owner(&client, o.as_ref(), &deps).await;
        }
        if uid.as_deref() == Some("") {
            continue;
        }
        let owned_by = |m: &ObjectMeta| match &uid {
            Some(u) => m.owner_references.iter().flatten().any(|r| r.uid == *u),
            None => m.owner_references.as_ref().is_some_and(|r| !r.is_empty()),
        };
        // A just-deleted owner's dependents are usually few; the resync looks at all of them.
        for rs in replicasets.state().into_iter().filter(|r| owned_by(&r.metadata)) {
            if let Err(e) = collect(&owners, rs.as_ref()).await {
                tracing::warn!(error = %e, "gc");
            }
        }
        for j in jobs.state().into_iter().filter(|j| owned_by(&j.metadata)) {
            if let Err(e) = collect(&owners, j.as_ref()).await {
                tracing::warn!(error = %e, "gc");
            }
        }
        for p in pods.state().into_iter().filter(|p| owned_by(&p.metadata)) {
            if let Err(e) = collect(&owners, p.as_ref()).await {
                tracing::warn!(error = %e, "gc");
            }
        }
        for r in revisions.state().into_iter().filter(|r| owned_by(&r.metadata)) {
            if let Err(e) = collect(&owners, r.as_ref()).await {
                tracing::warn!(error = %e, "gc");
            }
        }
        for c in claims.state().into_iter().filter(|c| owned_by(&c.metadata)) {
            if let Err(e) = collect(&owners, c.as_ref()).await {
                tracing::warn!(error = %e, "gc");
            }
        }
    }
}

/// What to do for an owner carrying the foreground or orphan finalizer, given its dependents'
/// metadata (upstream `processDeletingDependentsItem` and `orphanDependents`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FinalizerWork {
    /// Dependents (indexes) to delete, in the foreground.
    pub delete: Vec<usize>,
    /// Dependents (indexes) whose reference to the owner is to be removed.
    pub release: Vec<usize>,
    /// Finalizers that may be removed from the owner once the above succeeded.
    pub remove_finalizers: Vec<&'static str>,
}

pub fn finalizer_work(owner: &ObjectMeta, deps: &[&ObjectMeta]) -> FinalizerWork {
    let mut w = FinalizerWork::default();
    if !has_gc_finalizer(owner) {
        return w;
    }
    let fins: Vec<&str> = owner.finalizers.iter().flatten().map(String::as_str).collect();
    if fins.contains(&ORPHAN) {
        w.release = (0..deps.len()).collect();
        w.remove_finalizers.push(ORPHAN);
    } else if fins.contains(&FOREGROUND) {
        w.delete = deps.iter().enumerate().filter(|(_, d)| d.deletion_timestamp.is_none()).map(|(i, _)| i).collect();
        let uid = owner.uid.as_deref().unwrap_or("");
        // Only dependents that block their owner's deletion hold it back, as upstream.
        let blocking = deps
            .iter()
            .any(|d| d.owner_references.iter().flatten().any(|r| r.uid == uid && r.block_owner_deletion == Some(true)));
        if !blocking {
            w.remove_finalizers.push(FOREGROUND);
        }
    }
    w
}

struct Dependents<'a> {
    replicasets: &'a Store<ReplicaSet>,
    jobs: &'a Store<Job>,
    pods: &'a Store<Pod>,
}

async fn finalize_owner<K>(client: &kube::Client, owner: &K, deps: &Dependents<'_>)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let m = owner.meta();
    let ns = m.namespace.clone().unwrap_or_default();
    let uid = m.uid.clone().unwrap_or_default();
    let refers = |d: &ObjectMeta| {
        d.namespace.as_deref() == Some(ns.as_str()) && d.owner_references.iter().flatten().any(|r| r.uid == uid)
    };
    let sets: Vec<_> = deps.replicasets.state().into_iter().filter(|r| refers(&r.metadata)).collect();
    let jobs: Vec<_> = deps.jobs.state().into_iter().filter(|j| refers(&j.metadata)).collect();
    let pods: Vec<_> = deps.pods.state().into_iter().filter(|p| refers(&p.metadata)).collect();
    let metas: Vec<&ObjectMeta> = sets
        .iter()
        .map(|r| &r.metadata)
        .chain(jobs.iter().map(|j| &j.metadata))
        .chain(pods.iter().map(|p| &p.metadata))
        .collect();
    let work = finalizer_work(m, &metas);
    let mut ok = true;
    for i in work.delete.iter().chain(work.release.iter()) {
        let releasing = work.release.contains(i);
        // Indexes run over the replica sets, then the jobs, then the pods.
        let r = if *i < sets.len() {
            act(Api::<ReplicaSet>::namespaced(client.clone(), &ns), &sets[*i].metadata, &uid, releasing).await
        } else if *i < sets.len() + jobs.len() {
            act(Api::<Job>::namespaced(client.clone(), &ns), &jobs[*i - sets.len()].metadata, &uid, releasing).await
        } else {
            let p = &pods[*i - sets.len() - jobs.len()];
            act(Api::<Pod>::namespaced(client.clone(), &ns), &p.metadata, &uid, releasing).await
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, owner = %owner.name_any(), "gc: could not process a dependent");
            ok = false;
        }
    }
    if !ok || work.remove_finalizers.is_empty() {
        return;
    }
    let keep: Vec<&String> =
        m.finalizers.iter().flatten().filter(|f| !work.remove_finalizers.contains(&f.as_str())).collect();
    let patch = serde_json::json!({"metadata": {"finalizers": keep, "resourceVersion": m.resource_version}});
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    match api.patch(&owner.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(error = %e, owner = %owner.name_any(), "gc: could not remove the deletion finalizer"),
    }
}

/// Deletes a dependent in the foreground, or removes its reference to the owner `uid`.
async fn act<K>(api: Api<K>, dep: &ObjectMeta, uid: &str, release: bool) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let name = dep.name.clone().unwrap_or_default();
    let r = if release {
        let keep: Vec<&OwnerReference> = dep.owner_references.iter().flatten().filter(|r| r.uid != uid).collect();
        let patch = serde_json::json!({"metadata": {"ownerReferences": keep, "resourceVersion": dep.resource_version}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
    } else {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: dep.uid.clone(), resource_version: None }),
            ..DeleteParams::foreground()
        };
        api.delete(&name, &dp).await.map(|_| ())
    };
    match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other,
    }
}

/// Whether the object is controlled by an owner of `kind` (used by tests and diagnostics).
pub fn controlled_by_kind(meta: &ObjectMeta, kind: &str) -> bool {
    podutil::controller_of(meta).is_some_and(|r| r.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: format!("rs-{uid}"),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn meta(owners: &[&str]) -> ObjectMeta {
        ObjectMeta {
            name: Some("p".into()),
            owner_references: Some(owners.iter().map(|u| owner(u)).collect()),
            ..Default::default()
        }
    }

    fn terminating_owner(finalizer: &str) -> ObjectMeta {
        ObjectMeta {
            uid: Some("o".into()),
            deletion_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            )),
            finalizers: Some(vec![finalizer.into()]),
            ..Default::default()
        }
    }

    #[test]
    fn foreground_deletion_deletes_dependents_and_waits_for_blocking_ones() {
        let owner = terminating_owner(FOREGROUND);
        let dep = meta(&["o"]);
        let w = finalizer_work(&owner, &[&dep]);
        assert_eq!(w.delete, vec![0]);
        assert!(w.remove_finalizers.is_empty(), "a blockOwnerDeletion dependent holds the owner");
        assert_eq!(finalizer_work(&owner, &[]).remove_finalizers, vec![FOREGROUND]);
        let mut nonblocking = meta(&["o"]);
        if let Some(r) = nonblocking.owner_references.as_mut() {
            r[0].block_owner_deletion = None;
        }
        assert_eq!(finalizer_work(&owner, &[&nonblocking]).remove_finalizers, vec![FOREGROUND]);
    }

    #[test]
    fn orphan_deletion_releases_every_dependent_then_drops_the_finalizer() {
        let owner = terminating_owner(ORPHAN);
        let (a, b) = (meta(&["o"]), meta(&["o", "x"]));
        let w = finalizer_work(&owner, &[&a, &b]);
        assert_eq!(w.release, vec![0, 1]);
        assert!(w.delete.is_empty());
        assert_eq!(w.remove_finalizers, vec![ORPHAN]);
        assert_eq!(finalizer_work(&ObjectMeta::default(), &[&a]), FinalizerWork::default(), "live owners need nothing");
    }

    #[test]
    fn objects_whose_owners_are_all_gone_are_deleted() {
        assert_eq!(decide(&meta(&["a", "b"]), |_| Some(false)), Verdict::Delete);
    }

    #[test]
    fn objects_with_a_surviving_owner_lose_only_the_dangling_references() {
        assert_eq!(decide(&meta(&["a", "b"]), |r| Some(r.uid == "b")), Verdict::RemoveRefs(vec!["a".into()]));
    }

    #[test]
    fn owners_that_cannot_be_judged_protect_their_dependents() {
        assert_eq!(decide(&meta(&["a"]), |_| None), Verdict::Keep);
        assert_eq!(
            decide(&meta(&["a", "b"]), |r| if r.uid == "a" { None } else { Some(false) }),
            Verdict::RemoveRefs(vec!["b".into()])
        );
    }

    #[test]
    fn objects_without_owners_or_already_terminating_are_left_alone() {
        assert_eq!(decide(&ObjectMeta::default(), |_| Some(false)), Verdict::Keep);
        let mut m = meta(&["a"]);
        m.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(decide(&m, |_| Some(false)), Verdict::Keep);
        assert!(controlled_by_kind(&meta(&["a"]), "ReplicaSet"));
    }
}
