//! Defaulting, as kube-apiserver's `SetDefaults_*` functions and default admission plugins fill
//! in fields a user left out. Applied on create and update, before validation; pure functions
//! that only add what is missing.

use serde_json::{json, Map, Value};

use super::Resource;

/// Sets `obj[key] = v` if absent.
fn set_default(obj: &mut Map<String, Value>, key: &str, v: Value) {
    if obj.get(key).is_none_or(|x| x.is_null()) {
        obj.insert(key.to_string(), v);
    }
}

fn obj_at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut cur = v;
    for p in path {
        let o = cur.as_object_mut()?;
        if !o.contains_key(*p) {
            o.insert(p.to_string(), json!({}));
        }
        cur = o.get_mut(*p)?;
    }
    cur.as_object_mut()
}

/// `imagePullPolicy` default: Always for `:latest` or an untagged image, else IfNotPresent.
pub fn default_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn default_container(c: &mut Value) {
    let Some(c) = c.as_object_mut() else { return };
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    let image = c.get("image").and_then(|i| i.as_str()).unwrap_or("").to_string();
    set_default(c, "imagePullPolicy", json!(default_pull_policy(&image)));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(|p| p.as_array_mut()) {
        for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    if let Some(env) = c.get_mut("env").and_then(|p| p.as_array_mut()) {
        for e in env.iter_mut() {
            if let Some(f) = e.pointer_mut("/valueFrom/fieldRef").and_then(|f| f.as_object_mut()) {
                set_default(f, "apiVersion", json!("v1"));
            }
        }
    }
}

/// Pod spec defaults (SetDefaults_PodSpec, SetDefaults_Container).
pub fn pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else { return };
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "securityContext", json!({}));
    set_default(s, "schedulerName", json!("default-scheduler"));
    set_default(s, "enableServiceLinks", json!(true));
    for key in ["containers", "initContainers"] {
        if let Some(cs) = s.get_mut(key).and_then(|c| c.as_array_mut()) {
            cs.iter_mut().for_each(default_container);
        }
    }
    if let Some(vols) = s.get_mut("volumes").and_then(|c| c.as_array_mut()) {
        for v in vols.iter_mut().filter_map(|v| v.as_object_mut()) {
            for src in ["configMap", "secret"] {
                if let Some(o) = v.get_mut(src).and_then(|x| x.as_object_mut()) {
                    set_default(o, "defaultMode", json!(420));
                }
            }
        }
    }
}

/// Admission defaults for a new Pod (ServiceAccount, DefaultTolerationSeconds); Priority is
/// resolved by `api::admission::pod_priority`, which must tell a client's value from none.
fn pod_admission(spec: &mut Map<String, Value>) {
    set_default(spec, "serviceAccountName", json!("default"));
    let sa = spec.get("serviceAccountName").cloned().unwrap_or(json!("default"));
    set_default(spec, "serviceAccount", sa);
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(t) = tolerations.as_array_mut() {
        for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
            let has = t.iter().any(|x| x["key"] == key && x["effect"] == "NoExecute");
            if !has {
                t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

fn template(v: &mut Value) {
    if let Some(spec) = v.pointer_mut("/spec/template/spec") {
        pod_spec(spec);
    }
}

/// The metrics of an HorizontalPodAutoscaler that names none: 80% of the pods' cpu requests
/// (upstream `DefaultCPUUtilization`).
pub fn default_hpa_metrics() -> Value {
    json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}])
}

/// Applies the kind's defaults. `create` is true for new objects (admission defaults apply).
pub fn apply(r: &Resource, v: &mut Value, create: bool) {
    if let Some(c) = &r.custom {
        super::schema::default(&c.schema, v);
        return;
    }
    match (&*r.group, &*r.kind) {
        ("autoscaling", "HorizontalPodAutoscaler") => {
            if let Some(s) = obj_at(v, &["spec"]) {
                set_default(s, "minReplicas", json!(1));
                // autoscaling/v2 (upstream SetDefaults_HorizontalPodAutoscaler): no metrics means
                // 80% of the cpu requested. A v1 object gets it on its conversion to v2.
                if &*r.version == "v2" && s.get("metrics").and_then(|m| m.as_array()).is_none_or(|m| m.is_empty()) {
                    s.insert("metrics".into(), default_hpa_metrics());
                }
            }
        }
        ("", "Pod") => {
            if let Some(spec) = v.get_mut("spec") {
                pod_spec(spec);
                if create {
                    if let Some(s) = spec.as_object_mut() {
                        pod_admission(s);
                    }
                }
            }
            if create {
                if let Some(st) = obj_at(v, &["status"]) {
                    set_default(st, "phase", json!("Pending"));
                    set_default(st, "qosClass", json!("BestEffort"));
                }
            }
        }
        ("apps", "Deployment") => {
            if let Some(s) = obj_at(v, &["spec"]) {
                set_default(s, "replicas", json!(1));
                set_default(s, "revisionHistoryLimit", json!(10));
                set_default(s, "progressDeadlineSeconds", json!(600));
                set_default(s, "strategy", json!({"type": "RollingUpdate"}));
                if let Some(st) = s.get_mut("strategy").and_then(|x| x.as_object_mut()) {
                    if st.get("type").and_then(|t| t.as_str()) == Some("RollingUpdate") {
                        let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                        if let Some(ru) = ru.as_object_mut() {
                            set_default(ru, "maxUnavailable", json!("25%"));
                            set_default(ru, "maxSurge", json!("25%"));
                        }
                    }
                }
            }
            template(v);
        }
        ("apps", "ReplicaSet") | ("", "ReplicationController") => {
            if let Some(s) = obj_at(v, &["spec"]) {
                set_default(s, "replicas", json!(1));
            }
            template(v);
        }
        ("apps", "StatefulSet") => {
            if let Some(s) = obj_at(v, &["spec"]) {
                set_default(s, "replicas", json!(1));
                set_default(s, "podManagementPolicy", json!("OrderedReady"));
                set_default(s, "revisionHistoryLimit", json!(10));
                set_default(s, "updateStrategy", json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}));
            }
            template(v);
        }
        ("apps", "DaemonSet") => {
            if let Some(s) = obj_at(v, &["spec"]) {
                set_default(s, "revisionHistoryLimit", json!(10));
                set_default(
                    s,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
            }
            template(v);
        }
        ("batch", "Job") => {
            if let Some(s) = obj_at(v, &["spec"]) {
                set_default(s, "parallelism", json!(1));
                set_default(s, "completions", json!(1));
                set_default(s, "backoffLimit", json!(6));
                set_default(s, "completionMode", json!("NonIndexed"));
                set_default(s, "suspend", json!(false));
            }
            if let Some(spec) = v.pointer_mut("/spec/template/spec") {
                pod_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            if let Some(s) = obj_at(v, &["spec"]) {
                set_default(s, "concurrencyPolicy", json!("Allow"));
                set_default(s, "suspend", json!(false));
                set_default(s, "successfulJobsHistoryLimit", json!(3));
                set_default(s, "failedJobsHistoryLimit", json!(1));
            }
            if let Some(spec) = v.pointer_mut("/spec/jobTemplate/spec/template/spec") {
                pod_spec(spec);
            }
        }
        ("", "Service") => {
            if let Some(s) = obj_at(v, &["spec"]) {
                set_default(s, "type", json!("ClusterIP"));
                set_default(s, "sessionAffinity", json!("None"));
                set_default(s, "internalTrafficPolicy", json!("Cluster"));
                set_default(s, "ipFamilies", json!(["IPv4"]));
                set_default(s, "ipFamilyPolicy", json!("SingleStack"));
                if matches!(s.get("type").and_then(|t| t.as_str()), Some("NodePort") | Some("LoadBalancer")) {
                    set_default(s, "externalTrafficPolicy", json!("Cluster"));
                }
                if let Some(ports) = s.get_mut("ports").and_then(|p| p.as_array_mut()) {
                    for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set_default(p, "targetPort", port);
                        }
                    }
                }
            }
        }
        ("", "Namespace") => {
            if let Some(s) = obj_at(v, &["spec"]) {
                set_default(s, "finalizers", json!(["kubernetes"]));
            }
            if let Some(s) = obj_at(v, &["status"]) {
                set_default(s, "phase", json!("Active"));
            }
        }
        ("", "Secret") => {
            if let Some(o) = v.as_object_mut() {
                set_default(o, "type", json!("Opaque"));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    #[test]
    fn latest_and_untagged_images_default_to_always_pull() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("busybox@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn an_hpa_without_metrics_targets_80_percent_cpu_and_one_replica_at_least() {
        let mut h = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "a"}, "maxReplicas": 3}});
        apply(find("autoscaling", "v2", "horizontalpodautoscalers").unwrap(), &mut h, true);
        assert_eq!(h["spec"]["minReplicas"], 1);
        assert_eq!(h["spec"]["metrics"], default_hpa_metrics());
        assert_eq!(h["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80);
        // Metrics that are given stay.
        let mem = json!([{"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "1Gi"}}}]);
        let mut h = json!({"spec": {"minReplicas": 2, "maxReplicas": 3, "metrics": mem.clone()}});
        apply(find("autoscaling", "v2", "horizontalpodautoscalers").unwrap(), &mut h, true);
        assert_eq!((h["spec"]["minReplicas"].clone(), h["spec"]["metrics"].clone()), (json!(2), mem));
    }

    #[test]
    fn a_new_pod_gets_spec_and_admission_defaults() {
        let mut p =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}});
        apply(find("", "v1", "pods").unwrap(), &mut p, true);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(p["status"]["phase"], "Pending");
    }

    #[test]
    fn user_values_are_never_overwritten() {
        let mut d = json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"}, "template": {"spec": {"containers": []}}}});
        apply(find("apps", "v1", "deployments").unwrap(), &mut d, true);
        assert_eq!(d["spec"]["replicas"], 0);
        assert!(d["spec"]["strategy"].get("rollingUpdate").is_none());
        assert_eq!(d["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
    }

    #[test]
    fn service_ports_default_target_port_and_protocol() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply(find("", "v1", "services").unwrap(), &mut s, true);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["type"], "ClusterIP");
    }
}
