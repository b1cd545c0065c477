//! The resourcequota controller (upstream's `resourcequota-controller`): keeps every
//! ResourceQuota's `status.hard` equal to its `spec.hard` and `status.used` equal to what the
//! namespace's objects use, so `kubectl describe quota` shows the Used column and usage that
//! deletions free is given back.
//!
//! Admission charges `status.used` as it admits objects (src/api/policy.rs); this controller
//! recomputes it from the stored objects when the quota or a pod, ConfigMap, Secret, Service or
//! PVC of its namespace changes, and every 30 s for the other counted kinds. The status is written with the resourceVersion it
//! was computed against, so it never overwrites a charge made meanwhile.

use crate::api::policy::{format_quantity, legacy_quota_name, quota_usage};
use crate::registry::{self, Resource};
use futures::{future, StreamExt};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, ResourceQuota, ResourceQuotaStatus, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often usage of kinds this controller does not watch is recomputed.
const RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("{action} for quota {namespace}/{name}: {source}")]
    Api {
        action: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The resource a quota key counts or sums over: `pods`, `requests.cpu`, `count/deployments.apps`…
/// None for keys skiff does not track (they are reported as used 0).
pub fn resource_of(key: &str) -> Option<&'static Resource> {
    let builtin = |group: &str, plural: &str| registry::BUILTIN.iter().find(|r| r.group == group && r.plural == plural);
    if let Some(counted) = key.strip_prefix("count/") {
        let (plural, group) = counted.split_once('.').unwrap_or((counted, ""));
        return builtin(group, plural);
    }
    match key {
        "cpu" | "memory" | "requests.cpu" | "requests.memory" | "limits.cpu" | "limits.memory" => builtin("", "pods"),
        "requests.storage" => builtin("", "persistentvolumeclaims"),
        "services.nodeports" | "services.loadbalancers" => builtin("", "services"),
        other => registry::BUILTIN.iter().find(|r| r.group.is_empty() && legacy_quota_name(&r.kind) == Some(other)),
    }
}

/// The status a quota should have, given the usage computed per key.
pub fn desired_status(hard: &BTreeMap<String, Quantity>, usage: &BTreeMap<String, f64>) -> ResourceQuotaStatus {
    let used =
        hard.keys().map(|k| (k.clone(), Quantity(format_quantity(k, usage.get(k).copied().unwrap_or(0.0))))).collect();
    ResourceQuotaStatus { hard: Some(hard.clone()), used: Some(used) }
}

pub struct Context {
    client: kube::Client,
}

async fn list_values(client: &kube::Client, r: &Resource, ns: &str) -> Result<Vec<serde_json::Value>, kube::Error> {
    let gvk = GroupVersionKind::gvk(&r.group, &r.version, &r.kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &r.plural);
    let api: Api<DynamicObject> =
        if r.namespaced { Api::namespaced_with(client.clone(), ns, &ar) } else { Api::all_with(client.clone(), &ar) };
    let list = api.list(&ListParams::default()).await?;
    Ok(list.items.into_iter().filter_map(|o| serde_json::to_value(o).ok()).collect())
}

pub async fn reconcile(q: Arc<ResourceQuota>, ctx: Arc<Context>) -> Result<Action, QuotaError> {
    let ns = q.namespace().unwrap_or_default();
    let name = q.name_any();
    let err = |action: &str| {
        let (action, namespace, name) = (action.to_string(), ns.clone(), name.clone());
        move |source| QuotaError::Api { action, namespace, name, source }
    };
    let hard = q.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
    // Group the keys by the resource they are computed from, so each kind is listed once.
    let mut by_resource: BTreeMap<String, (&'static Resource, Vec<String>)> = BTreeMap::new();
    for k in hard.keys() {
        if let Some(r) = resource_of(k) {
            by_resource.entry(r.qualified_plural()).or_insert((r, Vec::new())).1.push(k.clone());
        }
    }
    let mut usage = BTreeMap::new();
    for (r, keys) in by_resource.values() {
        let objects = list_values(&ctx.client, r, &ns).await.map_err(err(&format!("listing {}", r.plural)))?;
        usage.extend(quota_usage(r, &objects, keys));
    }
    let want = desired_status(&hard, &usage);
    if q.status.as_ref() == Some(&want) {
        return Ok(Action::requeue(RESYNC));
    }
    let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
    let mut updated = (*q).clone();
    updated.status = Some(want);
    updated.metadata.managed_fields = None;
    match api.replace_status(&name, &PostParams::default(), &updated).await {
        Ok(_) => Ok(Action::requeue(RESYNC)),
        // A newer version (an admission charge, a spec edit): it triggers another pass.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Action::requeue(Duration::from_millis(200))),
        Err(e) => Err(err("writing status")(e)),
    }
}

fn error_policy(_q: Arc<ResourceQuota>, e: &QuotaError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "resourcequota-controller: will retry");
    Action::requeue(Duration::from_secs(2))
}

/// Runs until `shutdown` fires.
pub async fn run(client: kube::Client, informers: super::informer::Informers, shutdown: CancellationToken) {
    let controller = Controller::new(Api::<ResourceQuota>::all(client.clone()), watcher::Config::default());
    let quotas = controller.store();
    // A change of a counted object re-checks every quota of its namespace (a deletion frees
    // its units at once); other kinds are caught by the periodic resync.
    fn in_namespace<K: kube::Resource>(
        quotas: &kube::runtime::reflector::Store<ResourceQuota>,
        obj: &K,
    ) -> Vec<ObjectRef<ResourceQuota>> {
        let ns = obj.meta().namespace.clone();
        quotas.state().into_iter().filter(|q| q.namespace() == ns).map(|q| ObjectRef::from_obj(q.as_ref())).collect()
    }
    let (q1, q2, q3, q4, q5) = (quotas.clone(), quotas.clone(), quotas.clone(), quotas.clone(), quotas);
    let pod_events =
        informers.pods.events().map(move |ev| futures::stream::iter(in_namespace(&q1, ev.object()))).flatten();
    // Only the namespace of a ConfigMap, Secret, Service or PVC matters here (usage is counted
    // from a fresh list), so these are metadata-only watches: a 1 KiB ConfigMap written is
    // not encoded, sent and decoded whole for the sake of its namespace.
    fn namespace_of<K>(
        client: &kube::Client,
        quotas: kube::runtime::reflector::Store<ResourceQuota>,
    ) -> impl futures::Stream<Item = ObjectRef<ResourceQuota>> + Send + 'static
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        watcher::watcher(Api::<PartialObjectMeta<K>>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .touched_objects()
            .filter_map(|r| future::ready(r.ok()))
            .flat_map(move |m| futures::stream::iter(in_namespace(&quotas, &m)))
    }
    let controller = controller
        .reconcile_on(pod_events)
        .reconcile_on(namespace_of::<ConfigMap>(&client, q2))
        .reconcile_on(namespace_of::<Secret>(&client, q3))
        .reconcile_on(namespace_of::<Service>(&client, q4))
        .reconcile_on(namespace_of::<PersistentVolumeClaim>(&client, q5));
    let ctx = Arc::new(Context { client });
    controller
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "resourcequota-controller");
            }
            future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_keys_map_to_the_resources_they_count() {
        assert_eq!(resource_of("pods").map(|r| r.kind.to_string()).as_deref(), Some("Pod"));
        assert_eq!(resource_of("requests.cpu").map(|r| r.kind.to_string()).as_deref(), Some("Pod"));
        assert_eq!(resource_of("limits.memory").map(|r| r.kind.to_string()).as_deref(), Some("Pod"));
        assert_eq!(resource_of("configmaps").map(|r| r.kind.to_string()).as_deref(), Some("ConfigMap"));
        assert_eq!(resource_of("services.nodeports").map(|r| r.kind.to_string()).as_deref(), Some("Service"));
        assert_eq!(
            resource_of("requests.storage").map(|r| r.kind.to_string()).as_deref(),
            Some("PersistentVolumeClaim")
        );
        assert_eq!(resource_of("count/deployments.apps").map(|r| r.kind.to_string()).as_deref(), Some("Deployment"));
        assert_eq!(resource_of("count/secrets").map(|r| r.kind.to_string()).as_deref(), Some("Secret"));
        assert!(resource_of("count/widgets.example.com").is_none());
        assert!(resource_of("nvidia.com/gpu").is_none());
    }

    #[test]
    fn usage_is_counted_and_summed_per_key() {
        let pods = registry::BUILTIN.iter().find(|r| r.kind == "Pod").expect("pods");
        let pod = |cpu: &str, mem: &str, phase: &str| {
            serde_json::json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}, "limits": {"memory": mem}}}]},
                "status": {"phase": phase}})
        };
        let objs = vec![pod("250m", "64Mi", "Running"), pod("500m", "64Mi", "Pending"), pod("1", "1Gi", "Succeeded")];
        let keys: Vec<String> =
            ["pods", "requests.cpu", "requests.memory", "limits.memory"].iter().map(|s| s.to_string()).collect();
        let u: BTreeMap<String, f64> = quota_usage(pods, &objs, &keys).into_iter().collect();
        assert_eq!(u["pods"], 2.0, "terminal pods do not count");
        assert!((u["requests.cpu"] - 0.75).abs() < 1e-9);
        let hard: BTreeMap<String, Quantity> = keys.iter().map(|k| (k.clone(), Quantity("10".into()))).collect();
        let st = desired_status(&hard, &u);
        let used = st.used.expect("used");
        assert_eq!(used["requests.cpu"].0, "750m");
        assert_eq!(used["requests.memory"].0, "128Mi");
        assert_eq!(used["pods"].0, "2");
        assert_eq!(st.hard, Some(hard));
    }

    #[test]
    fn untracked_keys_report_zero() {
        let hard = BTreeMap::from([("nvidia.com/gpu".to_string(), Quantity("2".into()))]);
        let st = desired_status(&hard, &BTreeMap::new());
        assert_eq!(st.used.expect("used")["nvidia.com/gpu"].0, "0");
    }
}
