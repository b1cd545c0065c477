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

macro_rules! typed {
    ($r:expr, $v:expr, { $( ($g:literal, $k:literal) => $t:ty ),* $(,)? }) => {
        match ($r.group, $r.kind) {
            $( ($g, $k) => roundtrip::<$t>($v), )*
            _ => Ok($v),
        }
    };
}

/// Decodes and re-encodes an object of resource `r`. Errors carry upstream's wording:
/// `Pod in version "v1" cannot be handled as a Pod: …`.
pub fn normalize(r: &Resource, v: Value) -> Result<Normalized, String> {
    use k8s_openapi::api::{
        apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord, core::v1 as core, discovery::v1 as disc,
    };
    let orig = v.clone();
    let out = typed!(r, v, {
        ("", "Namespace") => core::Namespace,
        ("", "Node") => core::Node,
        ("", "Pod") => core::Pod,
        ("", "Service") => core::Service,
        ("", "Endpoints") => core::Endpoints,
        ("", "ConfigMap") => core::ConfigMap,
        ("", "Secret") => core::Secret,
        ("", "ServiceAccount") => core::ServiceAccount,
        ("", "Event") => core::Event,
        ("", "PersistentVolume") => core::PersistentVolume,
        ("", "PersistentVolumeClaim") => core::PersistentVolumeClaim,
        ("", "ReplicationController") => core::ReplicationController,
        ("", "ResourceQuota") => core::ResourceQuota,
        ("", "LimitRange") => core::LimitRange,
        ("", "PodTemplate") => core::PodTemplate,
        ("apps", "Deployment") => apps::Deployment,
        ("apps", "ReplicaSet") => apps::ReplicaSet,
        ("apps", "StatefulSet") => apps::StatefulSet,
        ("apps", "DaemonSet") => apps::DaemonSet,
        ("apps", "ControllerRevision") => apps::ControllerRevision,
        ("batch", "Job") => batch::Job,
        ("batch", "CronJob") => batch::CronJob,
        ("coordination.k8s.io", "Lease") => coord::Lease,
        ("discovery.k8s.io", "EndpointSlice") => disc::EndpointSlice,
    })
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
