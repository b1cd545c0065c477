//! Built-in kinds served in more than one group/version. Each has one storage version; objects
//! are converted from it on every read and to it on every write, as kube-apiserver does:
//!
//! - HorizontalPodAutoscaler: stored as autoscaling/v2, also served as autoscaling/v1. v1 has
//!   only a CPU utilization target; what it cannot express travels in the round-trip
//!   annotations (`autoscaling.alpha.kubernetes.io/metrics`, `…/current-metrics`,
//!   `…/conditions`, `…/behavior`), so an object read and written back as v1 loses nothing.
//! - Event: stored as core/v1, also served as events.k8s.io/v1 (same storage, same objects).
//!
//! Pure functions over JSON.

use serde_json::{json, Map, Value};

use super::validation::Cause;
use super::Resource;

pub const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
pub const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
pub const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
pub const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";
const ROUND_TRIP: [&str; 4] =
    [METRICS_ANNOTATION, CURRENT_METRICS_ANNOTATION, CONDITIONS_ANNOTATION, BEHAVIOR_ANNOTATION];

/// The storage resource of `r` when `r` is a non-storage version of a built-in kind.
pub fn storage_of(r: &Resource) -> Option<&'static Resource> {
    if r.is_custom() {
        return None;
    }
    match (&*r.group, &*r.version, &*r.kind) {
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => {
            super::find("autoscaling", "v2", "horizontalpodautoscalers")
        }
        ("events.k8s.io", "v1", "Event") => super::find("", "v1", "events"),
        _ => None,
    }
}

/// Converts an object of `r`'s version to its storage version (unchanged for storage versions).
pub fn to_storage(r: &Resource, v: Value) -> Value {
    if storage_of(r).is_none() {
        return v;
    }
    match &*r.group {
        "autoscaling" => hpa_v1_to_v2(v),
        "events.k8s.io" => event_events_to_core(v),
        _ => v,
    }
}

/// Converts a stored object to `r`'s version (unchanged for storage versions).
pub fn from_storage(r: &Resource, v: Value) -> Value {
    if storage_of(r).is_none() {
        return v;
    }
    match &*r.group {
        "autoscaling" => hpa_v2_to_v1(v),
        "events.k8s.io" => event_core_to_events(v),
        _ => v,
    }
}

fn obj(v: &mut Value) -> Option<&mut Map<String, Value>> {
    v.as_object_mut()
}

/// Removes key `k` from map `m` and returns its value unless it is null.
fn take(m: &mut Map<String, Value>, k: &str) -> Option<Value> {
    m.remove(k).filter(|v| !v.is_null())
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
        && m.pointer("/resource/target/averageUtilization").is_some_and(|u| !u.is_null())
}

fn annotations(v: &mut Value) -> Option<&mut Map<String, Value>> {
    v.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut)
}

fn set_annotation(v: &mut Value, k: &str, val: String) {
    let Some(o) = obj(v) else { return };
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let ann = meta.as_object_mut().map(|m| m.entry("annotations").or_insert_with(|| json!({})));
    if let Some(ann) = ann {
        if !ann.is_object() {
            *ann = json!({});
        }
        if let Some(a) = ann.as_object_mut() {
            a.insert(k.to_string(), Value::String(val));
        }
    }
}

/// Drops the round-trip annotations; removes `annotations` when nothing else is left.
fn drop_round_trip(v: &mut Value) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(a) = annotations(v) {
        for k in ROUND_TRIP {
            if let Some(x) = a.remove(k) {
                out.insert(k.to_string(), x);
            }
        }
        if a.is_empty() {
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("annotations");
            }
        }
    }
    out
}

/// autoscaling/v2 → autoscaling/v1 (upstream's Convert_autoscaling_HorizontalPodAutoscaler_To_v1).
pub fn hpa_v2_to_v1(mut v: Value) -> Value {
    drop_round_trip(&mut v);
    let Some(o) = obj(&mut v) else { return v };
    o.insert("apiVersion".into(), json!("autoscaling/v1"));
    let mut other = Vec::new();
    let mut behavior = None;
    if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
        let metrics = take(spec, "metrics").and_then(|m| m.as_array().cloned()).unwrap_or_default();
        for m in metrics {
            if is_cpu_utilization(&m) {
                spec.insert(
                    "targetCPUUtilizationPercentage".into(),
                    m["resource"]["target"]["averageUtilization"].clone(),
                );
            } else {
                other.push(m);
            }
        }
        behavior = take(spec, "behavior");
    }
    let mut current = Vec::new();
    let mut conditions = Vec::new();
    if let Some(status) = o.get_mut("status").and_then(Value::as_object_mut) {
        current = take(status, "currentMetrics").and_then(|m| m.as_array().cloned()).unwrap_or_default();
        for m in &current {
            if m["type"] == "Resource" && m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu") {
                if let Some(u) = m.pointer("/resource/current/averageUtilization").filter(|u| !u.is_null()) {
                    status.insert("currentCPUUtilizationPercentage".into(), u.clone());
                }
            }
        }
        conditions = take(status, "conditions").and_then(|m| m.as_array().cloned()).unwrap_or_default();
        // v1 requires desiredReplicas; v2 has it too, so it is already there when set.
    }
    if !other.is_empty() {
        set_annotation(&mut v, METRICS_ANNOTATION, Value::Array(other).to_string());
    }
    if !current.is_empty() {
        set_annotation(&mut v, CURRENT_METRICS_ANNOTATION, Value::Array(current).to_string());
    }
    if let Some(b) = behavior {
        set_annotation(&mut v, BEHAVIOR_ANNOTATION, b.to_string());
    }
    if !conditions.is_empty() {
        set_annotation(&mut v, CONDITIONS_ANNOTATION, Value::Array(conditions).to_string());
    }
    v
}

/// autoscaling/v1 → autoscaling/v2 (upstream's Convert_v1_HorizontalPodAutoscaler_To_autoscaling).
pub fn hpa_v1_to_v2(mut v: Value) -> Value {
    let saved = drop_round_trip(&mut v);
    let parse = |k: &str| -> Option<Value> {
        saved.get(k).and_then(Value::as_str).and_then(|s| serde_json::from_str::<Value>(s).ok())
    };
    let Some(o) = obj(&mut v) else { return v };
    o.insert("apiVersion".into(), json!("autoscaling/v2"));
    if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
        let mut metrics: Vec<Value> = parse(METRICS_ANNOTATION).and_then(|m| m.as_array().cloned()).unwrap_or_default();
        if let Some(cpu) = take(spec, "targetCPUUtilizationPercentage") {
            metrics.push(json!({
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}},
            }));
        }
        if metrics.is_empty() {
            // The v2 default a v1 object without targetCPUUtilizationPercentage gets.
            spec.insert("metrics".into(), super::defaults::default_hpa_metrics());
        } else {
            spec.insert("metrics".into(), Value::Array(metrics));
        }
        if let Some(b) = parse(BEHAVIOR_ANNOTATION) {
            spec.insert("behavior".into(), b);
        }
    }
    let current = parse(CURRENT_METRICS_ANNOTATION);
    let conditions = parse(CONDITIONS_ANNOTATION);
    if let Some(status) = o.get_mut("status").and_then(Value::as_object_mut) {
        let cpu = take(status, "currentCPUUtilizationPercentage");
        match (current, cpu) {
            (Some(c), _) => {
                status.insert("currentMetrics".into(), c);
            }
            (None, Some(cpu)) => {
                status.insert(
                    "currentMetrics".into(),
                    json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}}]),
                );
            }
            (None, None) => {}
        }
        if let Some(c) = conditions {
            status.insert("conditions".into(), c);
        }
    }
    v
}

/// Renames `from` to `to` in `m` (dropping nulls).
fn rename(m: &mut Map<String, Value>, from: &str, to: &str) {
    if let Some(x) = take(m, from) {
        m.insert(to.to_string(), x);
    }
}

/// core/v1 Event → events.k8s.io/v1 Event (upstream's Convert_core_Event_To_v1_Event).
pub fn event_core_to_events(mut v: Value) -> Value {
    let Some(o) = obj(&mut v) else { return v };
    o.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    rename(o, "message", "note");
    rename(o, "involvedObject", "regarding");
    rename(o, "reportingComponent", "reportingController");
    rename(o, "source", "deprecatedSource");
    rename(o, "firstTimestamp", "deprecatedFirstTimestamp");
    rename(o, "lastTimestamp", "deprecatedLastTimestamp");
    rename(o, "count", "deprecatedCount");
    if o.get("deprecatedSource").is_some_and(|s| s.as_object().is_some_and(|m| m.is_empty())) {
        o.remove("deprecatedSource");
    }
    if o.get("deprecatedCount").is_some_and(|c| c.as_i64() == Some(0)) {
        o.remove("deprecatedCount");
    }
    if let Some(series) = o.get_mut("series").and_then(Value::as_object_mut) {
        series.remove("state");
    }
    v
}

/// events.k8s.io/v1 Event → core/v1 Event (upstream's Convert_v1_Event_To_core_Event).
pub fn event_events_to_core(mut v: Value) -> Value {
    let Some(o) = obj(&mut v) else { return v };
    o.insert("apiVersion".into(), json!("v1"));
    rename(o, "note", "message");
    rename(o, "regarding", "involvedObject");
    rename(o, "reportingController", "reportingComponent");
    rename(o, "deprecatedSource", "source");
    rename(o, "deprecatedFirstTimestamp", "firstTimestamp");
    rename(o, "deprecatedLastTimestamp", "lastTimestamp");
    rename(o, "deprecatedCount", "count");
    if !o.contains_key("involvedObject") {
        o.insert("involvedObject".into(), json!({}));
    }
    v
}

/// events.k8s.io/v1 validation (upstream's ValidateEventCreate for the new API): the fields
/// the new API makes required, and the note's size.
pub fn validate_event_v1(v: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    if v.get("eventTime").is_none_or(Value::is_null) {
        out.push(Cause::required("eventTime"));
    }
    if let Some(series) = v.get("series").filter(|x| !x.is_null()) {
        if series.get("count").and_then(Value::as_i64).unwrap_or(0) < 2 {
            out.push(Cause::invalid("series.count", &series["count"], "should be at least 2"));
        }
        if series.get("lastObservedTime").is_none_or(Value::is_null) {
            out.push(Cause::required("series.lastObservedTime"));
        }
    }
    let rc = s("reportingController");
    if rc.is_empty() {
        out.push(Cause::required("reportingController"));
    } else if rc.len() > 316 || rc.contains(' ') {
        out.push(Cause::invalid("reportingController", &json!(rc), "must be a qualified name"));
    }
    let ri = s("reportingInstance");
    if ri.is_empty() {
        out.push(Cause::required("reportingInstance"));
    } else if ri.len() > 128 {
        out.push(Cause::invalid("reportingInstance", &json!(ri), "can have at most 128 characters"));
    }
    for f in ["action", "reason"] {
        let x = s(f);
        if x.is_empty() {
            out.push(Cause::required(f));
        } else if x.len() > 128 {
            out.push(Cause::invalid(f, &json!(x), "can have at most 128 characters"));
        }
    }
    let ty = s("type");
    if !matches!(ty, "Normal" | "Warning") {
        out.push(Cause::not_supported("type", &json!(ty), &["Normal", "Warning"]));
    }
    let note = s("note");
    if note.len() > 1024 {
        out.push(Cause::invalid("note", &json!(""), "can have at most 1024 characters"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa_v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "annotations": {"keep": "me"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 3,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
            },
            "status": {
                "currentReplicas": 1, "desiredReplicas": 2,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 70, "averageValue": "7m"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}],
            },
        })
    }

    #[test]
    fn hpa_v2_to_v1_maps_cpu_and_keeps_the_rest_in_annotations() {
        let v1 = hpa_v2_to_v1(hpa_v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert!(v1["spec"].get("metrics").is_none());
        assert!(v1["spec"].get("behavior").is_none());
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 70);
        assert!(v1["status"].get("conditions").is_none());
        let ann = &v1["metadata"]["annotations"];
        assert_eq!(ann["keep"], "me");
        let other: Value = serde_json::from_str(ann[METRICS_ANNOTATION].as_str().unwrap()).unwrap();
        assert_eq!(other[0]["resource"]["name"], "memory");
        assert!(ann[BEHAVIOR_ANNOTATION].is_string());
        assert!(ann[CONDITIONS_ANNOTATION].is_string());
        assert!(ann[CURRENT_METRICS_ANNOTATION].is_string());
    }

    #[test]
    fn hpa_round_trips_through_v1() {
        let back = hpa_v1_to_v2(hpa_v2_to_v1(hpa_v2()));
        let mut want = hpa_v2();
        // v1 puts the other metrics first and the CPU target last, as upstream.
        assert_eq!(back["spec"]["metrics"], want["spec"]["metrics"]);
        assert_eq!(back["status"], want["status"]);
        assert_eq!(back["spec"]["behavior"], want["spec"]["behavior"]);
        want["metadata"]["annotations"] = json!({"keep": "me"});
        assert_eq!(back["metadata"], want["metadata"]);
        assert_eq!(back, want);
    }

    #[test]
    fn an_hpa_v1_without_a_cpu_target_gets_the_80_percent_default() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "a"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "a"}, "maxReplicas": 2}});
        let v2 = hpa_v1_to_v2(v1);
        assert_eq!(v2["spec"]["metrics"], crate::registry::defaults::default_hpa_metrics());
        assert_eq!(hpa_v2_to_v1(v2)["spec"]["targetCPUUtilizationPercentage"], 80);
    }

    #[test]
    fn hpa_v1_cpu_only_becomes_a_resource_metric_and_annotations_vanish() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "a", "annotations": {}},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "a"}, "maxReplicas": 2, "targetCPUUtilizationPercentage": 40},
            "status": {"currentReplicas": 0, "desiredReplicas": 0, "currentCPUUtilizationPercentage": 10}});
        let v2 = hpa_v1_to_v2(v1);
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"],
            json!({"type": "Utilization", "averageUtilization": 40})
        );
        assert_eq!(v2["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"], 10);
        assert!(v2["spec"].get("targetCPUUtilizationPercentage").is_none());
        let back = hpa_v2_to_v1(v2);
        assert_eq!(back["spec"]["targetCPUUtilizationPercentage"], 40);
        assert!(
            back["metadata"].get("annotations").is_none()
                || back["metadata"]["annotations"].get(METRICS_ANNOTATION).is_none()
        );
    }

    #[test]
    fn a_v1_write_drops_stale_cpu_metric_but_keeps_other_metrics() {
        // A v1 client changes the CPU target of an object read as v1; the memory metric
        // (carried in the annotation) survives.
        let mut v1 = hpa_v2_to_v1(hpa_v2());
        v1["spec"]["targetCPUUtilizationPercentage"] = json!(80);
        let v2 = hpa_v1_to_v2(v1);
        let metrics = v2["spec"]["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 2);
        assert_eq!(metrics[0]["resource"]["name"], "memory");
        assert_eq!(metrics[1]["resource"]["target"]["averageUtilization"], 80);
    }

    fn core_event() -> Value {
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
            "reason": "Started", "message": "hello", "type": "Normal",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:01:00Z", "count": 3,
            "reportingComponent": "kubelet", "reportingInstance": "n1", "action": "Start",
            "eventTime": null, "related": {"kind": "Node", "name": "n1"}})
    }

    #[test]
    fn core_event_to_events_v1_renames_fields() {
        let e = event_core_to_events(core_event());
        assert_eq!(e["apiVersion"], "events.k8s.io/v1");
        assert_eq!(e["note"], "hello");
        assert_eq!(e["regarding"]["name"], "p");
        assert_eq!(e["reportingController"], "kubelet");
        assert_eq!(e["deprecatedSource"]["host"], "n1");
        assert_eq!(e["deprecatedCount"], 3);
        assert_eq!(e["deprecatedFirstTimestamp"], "2024-01-01T00:00:00Z");
        assert_eq!(e["related"]["kind"], "Node");
        for gone in ["message", "involvedObject", "source", "count", "firstTimestamp", "reportingComponent"] {
            assert!(e.get(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn events_round_trip() {
        let want = core_event();
        let back = event_events_to_core(event_core_to_events(core_event()));
        assert_eq!(back, want);
    }

    #[test]
    fn events_v1_validation_requires_the_new_fields() {
        let e = json!({"metadata": {"name": "x"}, "type": "Normal", "note": "n".repeat(1025)});
        let fields: Vec<String> = validate_event_v1(&e).iter().map(|c| c.field.clone()).collect();
        for f in ["eventTime", "reportingController", "reportingInstance", "action", "reason", "note"] {
            assert!(fields.iter().any(|x| x == f), "{f} in {fields:?}");
        }
        let ok = json!({"eventTime": "2024-01-01T00:00:00.000000Z", "reportingController": "example.com/c",
            "reportingInstance": "i", "action": "Do", "reason": "Because", "type": "Warning", "note": "fine"});
        assert!(validate_event_v1(&ok).is_empty());
    }
}
