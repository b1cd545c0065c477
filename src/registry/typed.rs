//! Normalisation through the k8s-openapi types: decoding an object into its typed struct checks
//! every field's type (with the field path in the error), and encoding it back prunes fields the
//! kind does not have — what kube-apiserver's decoding does. Comparing the input with the
//! round-tripped value names the unknown fields, for `fieldValidation=Strict|Warn`.

use super::Resource;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

#[derive(Debug, PartialEq)]
pub struct Normalized {
    pub value: Value,
    /// Paths like `spec.foo` of fields the kind does not have (dropped from `value`).
    pub unknown_fields: Vec<String>,
}

/// Decodes `v` as the typed struct `T` and encodes it back.
fn roundtrip<T: DeserializeOwned + Serialize>(v: Value) -> Result<Value, String> {
    let t: T = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    serde_json::to_value(t).map_err(|e| e.to_string())
}

/// Something done with the typed struct of a kind (decode it, describe its schema, …).
pub trait KindVisitor {
    type Out;
    fn visit<T: DeserializeOwned + Serialize + schemars::JsonSchema>(self) -> Self::Out;
}

/// Calls `v.visit::<T>()` with the k8s-openapi type of resource `r`; None for kinds without one.
pub fn with_type<V: KindVisitor>(r: &Resource, v: V) -> Option<V::Out> {
    use k8s_openapi::api::{
        apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz, autoscaling::v2 as autoscaling,
        batch::v1 as batch, certificates::v1 as certs, coordination::v1 as coord, core::v1 as core,
        discovery::v1 as disc, networking::v1 as net, node::v1 as node, policy::v1 as policy, rbac::v1 as rbac,
        scheduling::v1 as sched, storage::v1 as storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    Some(match (&*r.group, &*r.kind) {
        ("", "Namespace") => v.visit::<core::Namespace>(),
        ("", "Node") => v.visit::<core::Node>(),
        ("", "Pod") => v.visit::<core::Pod>(),
        ("", "Service") => v.visit::<core::Service>(),
        ("", "Endpoints") => v.visit::<core::Endpoints>(),
        ("", "ConfigMap") => v.visit::<core::ConfigMap>(),
        ("", "Secret") => v.visit::<core::Secret>(),
        ("", "ServiceAccount") => v.visit::<core::ServiceAccount>(),
        ("", "Event") => v.visit::<core::Event>(),
        ("", "PersistentVolume") => v.visit::<core::PersistentVolume>(),
        ("", "PersistentVolumeClaim") => v.visit::<core::PersistentVolumeClaim>(),
        ("", "ReplicationController") => v.visit::<core::ReplicationController>(),
        ("", "ResourceQuota") => v.visit::<core::ResourceQuota>(),
        ("", "LimitRange") => v.visit::<core::LimitRange>(),
        ("", "PodTemplate") => v.visit::<core::PodTemplate>(),
        ("apps", "Deployment") => v.visit::<apps::Deployment>(),
        ("apps", "ReplicaSet") => v.visit::<apps::ReplicaSet>(),
        ("apps", "StatefulSet") => v.visit::<apps::StatefulSet>(),
        ("apps", "DaemonSet") => v.visit::<apps::DaemonSet>(),
        ("apps", "ControllerRevision") => v.visit::<apps::ControllerRevision>(),
        ("batch", "Job") => v.visit::<batch::Job>(),
        ("batch", "CronJob") => v.visit::<batch::CronJob>(),
        ("coordination.k8s.io", "Lease") => v.visit::<coord::Lease>(),
        ("discovery.k8s.io", "EndpointSlice") => v.visit::<disc::EndpointSlice>(),
        ("autoscaling", "HorizontalPodAutoscaler") if r.version == "v1" => {
            v.visit::<k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler>()
        }
        ("autoscaling", "HorizontalPodAutoscaler") => v.visit::<autoscaling::HorizontalPodAutoscaler>(),
        ("events.k8s.io", "Event") => v.visit::<k8s_openapi::api::events::v1::Event>(),
        ("policy", "PodDisruptionBudget") => v.visit::<policy::PodDisruptionBudget>(),
        ("networking.k8s.io", "Ingress") => v.visit::<net::Ingress>(),
        ("networking.k8s.io", "IngressClass") => v.visit::<net::IngressClass>(),
        ("networking.k8s.io", "NetworkPolicy") => v.visit::<net::NetworkPolicy>(),
        ("rbac.authorization.k8s.io", "ClusterRole") => v.visit::<rbac::ClusterRole>(),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => v.visit::<rbac::ClusterRoleBinding>(),
        ("rbac.authorization.k8s.io", "Role") => v.visit::<rbac::Role>(),
        ("rbac.authorization.k8s.io", "RoleBinding") => v.visit::<rbac::RoleBinding>(),
        ("storage.k8s.io", "StorageClass") => v.visit::<storage::StorageClass>(),
        ("storage.k8s.io", "CSIDriver") => v.visit::<storage::CSIDriver>(),
        ("storage.k8s.io", "CSINode") => v.visit::<storage::CSINode>(),
        ("storage.k8s.io", "VolumeAttachment") => v.visit::<storage::VolumeAttachment>(),
        ("storage.k8s.io", "CSIStorageCapacity") => v.visit::<storage::CSIStorageCapacity>(),
        ("scheduling.k8s.io", "PriorityClass") => v.visit::<sched::PriorityClass>(),
        ("certificates.k8s.io", "CertificateSigningRequest") => v.visit::<certs::CertificateSigningRequest>(),
        ("node.k8s.io", "RuntimeClass") => v.visit::<node::RuntimeClass>(),
        ("authorization.k8s.io", "SelfSubjectAccessReview") => v.visit::<authz::SelfSubjectAccessReview>(),
        ("authorization.k8s.io", "SelfSubjectRulesReview") => v.visit::<authz::SelfSubjectRulesReview>(),
        ("authorization.k8s.io", "SubjectAccessReview") => v.visit::<authz::SubjectAccessReview>(),
        ("authorization.k8s.io", "LocalSubjectAccessReview") => v.visit::<authz::LocalSubjectAccessReview>(),
        ("authentication.k8s.io", "SelfSubjectReview") => v.visit::<authn::SelfSubjectReview>(),
        ("authentication.k8s.io", "TokenReview") => v.visit::<authn::TokenReview>(),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => v.visit::<apiext::CustomResourceDefinition>(),
        _ => return None,
    })
}

struct Roundtrip(Value);

impl KindVisitor for Roundtrip {
    type Out = Result<Value, String>;
    fn visit<T: DeserializeOwned + Serialize + schemars::JsonSchema>(self) -> Self::Out {
        roundtrip::<T>(self.0)
    }
}

/// Decodes and re-encodes an object of resource `r`. Errors carry upstream's wording:
/// `Pod in version "v1" cannot be handled as a Pod: …`.
pub fn normalize(r: &Resource, v: Value) -> Result<Normalized, String> {
    if let Some(c) = &r.custom {
        // Custom resources: the CRD's structural schema prunes (no typed struct to decode into).
        let mut v = v;
        let unknown_fields = super::schema::prune(&c.schema, &mut v);
        return Ok(Normalized { value: v, unknown_fields });
    }
    let orig = v.clone();
    let out = with_type(r, Roundtrip(v))
        .unwrap_or_else(|| Ok(orig.clone()))
        .map_err(|e| format!("{} in version {:?} cannot be handled as a {}: {e}", r.kind, r.version, r.kind))?;
    let mut unknown = Vec::new();
    diff_unknown(&orig, &out, "", &mut unknown);
    Ok(Normalized { value: out, unknown_fields: unknown })
}

fn diff_unknown(orig: &Value, rt: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, rt) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(bv) => diff_unknown(v, bv, &p, out),
                    // A null or empty value the type drops is not an unknown field.
                    None if v.is_null() => {}
                    None if matches!(k.as_str(), "creationTimestamp") => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                diff_unknown(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> &'static Resource {
        crate::registry::find("", "v1", "pods").unwrap()
    }

    #[test]
    fn unknown_fields_are_named_and_pruned() {
        let n = normalize(
            pods(),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}], "extra": true}}),
        )
        .unwrap();
        assert_eq!(n.unknown_fields, vec!["spec.containers[0].bogus".to_string(), "spec.extra".to_string()]);
        assert!(n.value["spec"].get("extra").is_none());
        assert_eq!(n.value["spec"]["containers"][0]["image"], "i");
    }

    #[test]
    fn wrong_types_name_the_field_in_upstream_wording() {
        let e = normalize(
            crate::registry::find("apps", "v1", "deployments").unwrap(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": "three"}}),
        )
        .unwrap_err();
        assert!(e.starts_with("Deployment in version \"v1\" cannot be handled as a Deployment: spec.replicas"), "{e}");
    }

    #[test]
    fn labels_and_quantities_survive_unchanged() {
        let v = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"memory": "64Mi", "cpu": "100m"}},
            "ports": [{"containerPort": 80}]}]}});
        let n = normalize(pods(), v.clone()).unwrap();
        assert!(n.unknown_fields.is_empty());
        assert_eq!(n.value["metadata"]["labels"], v["metadata"]["labels"]);
        assert_eq!(n.value["spec"]["containers"][0]["resources"], v["spec"]["containers"][0]["resources"]);
    }
}
