//! Per-namespace service account plumbing: upstream's `serviceaccount-controller` (a `default`
//! ServiceAccount in every namespace, recreated if deleted) and `root-ca-cert-publisher` (the
//! `kube-root-ca.crt` ConfigMap whose `ca.crt` is the CA that signs the API server's serving
//! certificate, so projected service account volumes can verify `kubernetes.default.svc`).
//!
//! Both skip namespaces that are being deleted, as upstream does, so they never race the
//! namespace controller. A ConfigMap whose data drifted from the CA is rewritten.

use crate::controllers::events::{object_ref, Recorder};
use futures::{future, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The account every pod runs as unless it names another.
pub const DEFAULT_SA: &str = "default";
/// Upstream `RootCACertConfigMapName`.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The data key the publisher writes.
pub const ROOT_CA_KEY: &str = "ca.crt";
/// Upstream's `kubernetes.io/description` annotation on the ConfigMap.
pub const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using \
     internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed \
     across distributions of Kubernetes clusters.";
const COMPONENT: &str = "serviceaccount-controller";

/// Why a namespace could not be brought in line; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountError {
    /// An API call failed.
    #[error("{action} in namespace {namespace}: {source}")]
    Api {
        action: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

/// What the ConfigMap needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaAction {
    /// It is there with the right data.
    Keep,
    /// It is missing.
    Create,
    /// It exists but `ca.crt` differs (or is missing): rewrite the data.
    Update,
}

/// What one namespace needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub create_default_sa: bool,
    pub ca: CaAction,
}

/// Whether the namespace is on its way out (upstream skips those: creating objects in a
/// terminating namespace is refused anyway).
pub fn terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// The pure decision for one namespace.
pub fn plan(ns: &Namespace, has_default_sa: bool, cm: Option<&ConfigMap>, ca_pem: &str) -> Plan {
    if terminating(ns) {
        return Plan { create_default_sa: false, ca: CaAction::Keep };
    }
    let ca = match cm {
        None => CaAction::Create,
        Some(cm) if cm.data.as_ref().and_then(|d| d.get(ROOT_CA_KEY)).map(String::as_str) == Some(ca_pem) => {
            CaAction::Keep
        }
        Some(_) => CaAction::Update,
    };
    Plan { create_default_sa: !has_default_sa, ca }
}

/// The ConfigMap the publisher writes into `namespace`.
pub fn root_ca_configmap(namespace: &str, ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CA_CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            annotations: Some(BTreeMap::from([("kubernetes.io/description".into(), ROOT_CA_DESCRIPTION.into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(ROOT_CA_KEY.into(), ca_pem.into())])),
        ..Default::default()
    }
}

pub struct Context {
    client: kube::Client,
    ca_pem: String,
    recorder: Recorder,
}

/// Brings one namespace in line with [`plan`].
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ServiceAccountError> {
    let name = ns.name_any();
    let err = |action: &'static str| {
        let namespace = name.clone();
        move |source| ServiceAccountError::Api { action, namespace, source }
    };
    if terminating(&ns) {
        return Ok(Action::await_change());
    }
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let has_sa = sas.get_opt(DEFAULT_SA).await.map_err(err("reading the default ServiceAccount"))?.is_some();
    let cm = cms.get_opt(ROOT_CA_CONFIGMAP).await.map_err(err("reading kube-root-ca.crt"))?;
    let p = plan(&ns, has_sa, cm.as_ref(), &ctx.ca_pem);
    if p.create_default_sa {
        let sa = ServiceAccount {
            metadata: ObjectMeta { name: Some(DEFAULT_SA.into()), namespace: Some(name.clone()), ..Default::default() },
            ..Default::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::info!(namespace = %name, "created the default ServiceAccount"),
            // Another writer (or an earlier attempt whose answer was lost) got there first.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(err("creating the default ServiceAccount")(e)),
        }
    }
    match p.ca {
        CaAction::Keep => {}
        CaAction::Create => match cms.create(&PostParams::default(), &root_ca_configmap(&name, &ctx.ca_pem)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                ctx.recorder.warning(
                    object_ref(ns.as_ref()),
                    "FailedCreate",
                    format!("creating {ROOT_CA_CONFIGMAP}: {e}"),
                );
                return Err(err("creating kube-root-ca.crt")(e));
            }
        },
        CaAction::Update => {
            let patch = serde_json::json!({
                "metadata": {"annotations": {"kubernetes.io/description": ROOT_CA_DESCRIPTION}},
                "data": {ROOT_CA_KEY: ctx.ca_pem},
            });
            cms.patch(ROOT_CA_CONFIGMAP, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err("updating kube-root-ca.crt"))?;
        }
    }
    Ok(Action::await_change())
}

fn error_policy(_ns: Arc<Namespace>, e: &ServiceAccountError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "serviceaccount-controller: will retry");
    Action::requeue(Duration::from_secs(2))
}

/// Runs both duties until `shutdown` fires. A namespace is re-checked whenever it, its
/// `default` ServiceAccount or its `kube-root-ca.crt` ConfigMap changes (so deleting either
/// brings it back, as upstream).
pub async fn run(client: kube::Client, ca_pem: String, shutdown: CancellationToken) {
    let to_ns = |obj_ns: Option<String>| obj_ns.map(|ns| ObjectRef::<Namespace>::new(&ns));
    let controller = Controller::new(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .watches(
            Api::<ServiceAccount>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={DEFAULT_SA}")),
            move |sa| if sa.name_any() == DEFAULT_SA { to_ns(sa.namespace()) } else { None },
        )
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIGMAP}")),
            move |cm| if cm.name_any() == ROOT_CA_CONFIGMAP { to_ns(cm.namespace()) } else { None },
        );
    let ctx =
        Arc::new(Context { recorder: Recorder::new(client.clone(), COMPONENT, shutdown.clone()), client, ca_pem });
    controller
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "serviceaccount-controller");
            }
            future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceStatus;

    fn ns(phase: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta { name: Some("shop".into()), ..Default::default() },
            status: Some(NamespaceStatus { phase: Some(phase.into()), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_namespace_gets_the_default_account_and_the_ca_bundle() {
        let p = plan(&ns("Active"), false, None, "PEM");
        assert_eq!(p, Plan { create_default_sa: true, ca: CaAction::Create });
    }

    #[test]
    fn a_namespace_in_order_is_left_alone() {
        let cm = root_ca_configmap("shop", "PEM");
        assert_eq!(plan(&ns("Active"), true, Some(&cm), "PEM"), Plan { create_default_sa: false, ca: CaAction::Keep });
    }

    #[test]
    fn a_configmap_with_other_data_is_rewritten() {
        let cm = root_ca_configmap("shop", "OLD");
        assert_eq!(plan(&ns("Active"), true, Some(&cm), "PEM").ca, CaAction::Update);
        let empty = ConfigMap::default();
        assert_eq!(plan(&ns("Active"), true, Some(&empty), "PEM").ca, CaAction::Update);
    }

    #[test]
    fn terminating_namespaces_get_nothing_new() {
        assert_eq!(plan(&ns("Terminating"), false, None, "PEM"), Plan { create_default_sa: false, ca: CaAction::Keep });
    }

    #[test]
    fn the_configmap_carries_the_upstream_key_and_description() {
        let cm = root_ca_configmap("shop", "PEM");
        assert_eq!(cm.metadata.name.as_deref(), Some("kube-root-ca.crt"));
        assert_eq!(cm.data.as_ref().and_then(|d| d.get("ca.crt")).map(String::as_str), Some("PEM"));
        assert!(cm.metadata.annotations.is_some_and(|a| a.contains_key("kubernetes.io/description")));
    }
}
