//! The ReplicationController controller (upstream `pkg/controller/replication`, which is the
//! ReplicaSet controller behind an adapter): a ReplicationController is viewed as a ReplicaSet
//! whose selector is the equality selector `spec.selector` (the template's labels when empty, as
//! upstream defaulting does) and reconciled by the ReplicaSet sync in `replicaset.rs`, with
//! its own kind in owner references, events and status.

use super::replicaset::{self, Replicated};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec, ReplicaSetStatus};
use k8s_openapi::api::core::v1::ReplicationController;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use tokio_util::sync::CancellationToken;

/// Upstream's event source for this controller.
pub const COMPONENT: &str = "replication-controller";

impl Replicated for ReplicationController {
    fn as_replica_set(&self) -> ReplicaSet {
        let spec = self.spec.clone().unwrap_or_default();
        let template_labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone());
        let selector = spec.selector.clone().filter(|s| !s.is_empty()).or(template_labels);
        // Same field names and meanings: convert through JSON (conditions included).
        let status: Option<ReplicaSetStatus> = self
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| serde_json::from_value(v).ok());
        ReplicaSet {
            metadata: self.metadata.clone(),
            spec: Some(ReplicaSetSpec {
                replicas: spec.replicas,
                min_ready_seconds: spec.min_ready_seconds,
                // An RC without selector or template labels selects nothing rather than everything.
                selector: match selector {
                    Some(l) => LabelSelector { match_labels: Some(l), match_expressions: None },
                    None => LabelSelector {
                        match_labels: Some([("skiff.io/no-selector".to_string(), String::new())].into()),
                        match_expressions: None,
                    },
                },
                template: spec.template,
            }),
            status,
        }
    }
}

/// Runs the controller until `shutdown` fires.
pub async fn run(client: kube::Client, informers: super::informer::Informers, shutdown: CancellationToken) {
    replicaset::run_for::<ReplicationController>(client, informers, COMPONENT, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodTemplateSpec, ReplicationControllerSpec, ReplicationControllerStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn rc(selector: Option<BTreeMap<String, String>>) -> ReplicationController {
        ReplicationController {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("rc-uid".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(ReplicationControllerSpec {
                replicas: Some(3),
                selector,
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some(labels(&[("app", "web")])), ..Default::default() }),
                    spec: None,
                }),
                ..Default::default()
            }),
            status: Some(ReplicationControllerStatus { replicas: 2, ready_replicas: Some(1), ..Default::default() }),
        }
    }

    #[test]
    fn a_replication_controller_is_a_replica_set_with_an_equality_selector() {
        let rs = rc(Some(labels(&[("app", "web")]))).as_replica_set();
        let spec = rs.spec.clone().unwrap_or_default();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.selector.match_labels, Some(labels(&[("app", "web")])));
        assert_eq!(rs.metadata.uid.as_deref(), Some("rc-uid"));
        let st = rs.status.unwrap_or_default();
        assert_eq!((st.replicas, st.ready_replicas), (2, Some(1)));
    }

    #[test]
    fn an_empty_selector_defaults_to_the_template_labels() {
        let spec = rc(None).as_replica_set().spec.unwrap_or_default();
        assert_eq!(spec.selector.match_labels, Some(labels(&[("app", "web")])));
    }

    #[test]
    fn pods_of_a_replication_controller_are_owned_by_it() {
        let c = rc(None);
        let pod = replicaset::pod_from_template_for(&c, &c.as_replica_set());
        let owner = pod.metadata.owner_references.and_then(|o| o.into_iter().next()).unwrap_or_default();
        assert_eq!((owner.api_version.as_str(), owner.kind.as_str()), ("v1", "ReplicationController"));
        assert_eq!(owner.uid, "rc-uid");
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-"));
    }
}
