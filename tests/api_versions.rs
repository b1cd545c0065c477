//! Built-in kinds served in several group/versions, driven by real kubectl 1.32 against an
//! in-process server: HorizontalPodAutoscaler as autoscaling/v2 (storage) and autoscaling/v1,
//! Event as core/v1 (storage) and events.k8s.io/v1 — the same objects converted on every read,
//! write, list, watch and table.

mod common;
use common::{require_kubectl, TestServer};
use serde_json::{json, Value};

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

const DEPLOY: &str = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
 "spec":{"replicas":1,"selector":{"matchLabels":{"app":"web"}},
  "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"c","image":"nginx"}]}}}}"#;

#[test]
fn hpa_is_served_as_autoscaling_v1_and_v2() {
    if require_kubectl().is_none() {
        return;
    }
    let s = TestServer::start(&[]);
    s.ok_stdin(&["create", "-f", "-"], DEPLOY);
    s.ok(&["autoscale", "deployment", "web", "--cpu-percent=50", "--min=1", "--max=3"]);

    // Read back in both versions. The full resource name: kubectl 1.32 expands a short name
    // (`hpa.v1.autoscaling`) to group/resource only and drops the version, so that form gets
    // the preferred version (v2) from any API server.
    const HPA_V1: &str = "horizontalpodautoscalers.v1.autoscaling";
    const HPA_V2: &str = "horizontalpodautoscalers.v2.autoscaling";
    let v1 = parse(&s.ok(&["get", HPA_V1, "web", "-o", "json"]));
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
    assert_eq!(v1["spec"]["maxReplicas"], 3);
    assert!(v1["spec"].get("metrics").is_none(), "{v1}");
    let v2 = parse(&s.ok(&["get", HPA_V2, "web", "-o", "json"]));
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["name"], "cpu");
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 50);
    // One stored object in both versions. The HPA controller writes its status meanwhile, so
    // compare a v2 read with v1 reads just before and after it that agree.
    let rv = |res: &str| parse(&s.ok(&["get", res, "web", "-o", "json"]))["metadata"]["resourceVersion"].clone();
    let mut compared = false;
    for _ in 0..20 {
        let (before, in_v2, after) = (rv(HPA_V1), rv(HPA_V2), rv(HPA_V1));
        if before == after {
            assert_eq!(before, in_v2, "the v1 and v2 reads of one unchanged object differ in resourceVersion");
            compared = true;
            break;
        }
    }
    assert!(compared, "the HPA kept changing for 20 rounds of reads");

    // Default table columns (v2), and the same table through v1.
    for res in ["hpa", HPA_V1] {
        let table = s.ok(&["get", res]);
        let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
        assert_eq!(header, ["NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS", "AGE"], "{table}");
        assert!(table.contains("Deployment/web"), "{table}");
        assert!(table.contains("cpu: <unknown>/50%"), "{table}");
    }

    // Create through v1 with a JSON body, read as v2.
    let body = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "api"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70}});
    let created = parse(&s.ok_stdin(
        &["create", "--raw", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers", "-f", "-"],
        &body.to_string(),
    ));
    assert_eq!(created["apiVersion"], "autoscaling/v1");
    assert_eq!(created["spec"]["targetCPUUtilizationPercentage"], 70);
    let v2 = parse(&s.ok(&["get", HPA_V2, "api", "-o", "json"]));
    assert_eq!(v2["spec"]["minReplicas"], 2);
    assert_eq!(
        v2["spec"]["metrics"][0]["resource"]["target"],
        json!({"type": "Utilization", "averageUtilization": 70})
    );
    assert!(v2["metadata"]
        .get("annotations")
        .is_none_or(|a| a.get("autoscaling.alpha.kubernetes.io/metrics").is_none()));

    // A v2-only metric and behavior survive an update through v1.
    s.ok(&[
        "patch",
        HPA_V2,
        "api",
        "--type=merge",
        "-p",
        r#"{"spec":{"metrics":[{"type":"Resource","resource":{"name":"memory","target":{"type":"AverageValue","averageValue":"100Mi"}}},{"type":"Resource","resource":{"name":"cpu","target":{"type":"Utilization","averageUtilization":70}}}],"behavior":{"scaleDown":{"stabilizationWindowSeconds":30}}}}"#,
    ]);
    let mut v1 =
        parse(&s.ok(&["get", "--raw", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/api"]));
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 70);
    let ann = &v1["metadata"]["annotations"];
    assert!(ann["autoscaling.alpha.kubernetes.io/metrics"].as_str().is_some_and(|m| m.contains("memory")), "{v1}");
    assert!(ann["autoscaling.alpha.kubernetes.io/behavior"].is_string(), "{v1}");
    v1["spec"]["targetCPUUtilizationPercentage"] = json!(60);
    v1["spec"]["maxReplicas"] = json!(9);
    let replaced = parse(&s.ok_stdin(
        &["replace", "--raw", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/api", "-f", "-"],
        &v1.to_string(),
    ));
    assert_eq!(replaced["spec"]["maxReplicas"], 9);
    let v2 = parse(&s.ok(&["get", HPA_V2, "api", "-o", "json"]));
    let metrics = v2["spec"]["metrics"].as_array().expect("metrics");
    assert_eq!(metrics.len(), 2, "{v2}");
    assert_eq!(metrics[0]["resource"]["name"], "memory");
    assert_eq!(metrics[1]["resource"]["target"]["averageUtilization"], 60);
    assert_eq!(v2["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 30);
    assert!(v2["metadata"]
        .get("annotations")
        .is_none_or(|a| a.get("autoscaling.alpha.kubernetes.io/metrics").is_none()));

    // Patches through v1 apply to the v1 form.
    s.ok(&["patch", HPA_V1, "api", "--type=merge", "-p", r#"{"spec":{"targetCPUUtilizationPercentage":55}}"#]);
    s.ok(&["patch", HPA_V1, "api", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/minReplicas","value":3}]"#]);
    let v2 = parse(&s.ok(&["get", HPA_V2, "api", "-o", "json"]));
    assert_eq!(v2["spec"]["minReplicas"], 3);
    assert_eq!(v2["spec"]["metrics"][1]["resource"]["target"]["averageUtilization"], 55);
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["name"], "memory");

    // Strategic merge and server-side apply through v1.
    s.ok(&["patch", HPA_V1, "api", "--type=strategic", "-p", r#"{"spec":{"maxReplicas":7}}"#]);
    let applied = r#"{"apiVersion":"autoscaling/v1","kind":"HorizontalPodAutoscaler","metadata":{"name":"applied"},
      "spec":{"scaleTargetRef":{"apiVersion":"apps/v1","kind":"Deployment","name":"web"},"maxReplicas":4,"targetCPUUtilizationPercentage":65}}"#;
    s.ok_stdin(&["apply", "--server-side", "--field-manager=t", "-f", "-"], applied);
    let v2 = parse(&s.ok(&["get", HPA_V2, "applied", "-o", "json"]));
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 65, "{v2}");
    let v1 = parse(&s.ok(&["get", HPA_V1, "applied", "-o", "json"]));
    assert_eq!(v1["spec"]["maxReplicas"], 4);
    s.ok(&["delete", HPA_V2, "applied"]);
    let v2 = parse(&s.ok(&["get", HPA_V2, "api", "-o", "json"]));
    assert_eq!(v2["spec"]["maxReplicas"], 7);

    // Lists and deletes in v1.
    let list = parse(&s.ok(&["get", "--raw", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers"]));
    assert_eq!(list["kind"], "HorizontalPodAutoscalerList");
    assert_eq!(list["items"].as_array().map(|a| a.len()), Some(2));
    assert!(list["items"].as_array().unwrap().iter().all(|i| i["spec"].get("metrics").is_none()));
    s.ok(&["delete", HPA_V1, "api"]);
    let (ok, _, err) = s.kubectl(&["get", "hpa", "api"]);
    assert!(!ok && err.contains("NotFound") || err.contains("not found"), "{err}");

    // Discovery and explain.
    let res = s.ok(&["api-resources", "--api-group=autoscaling", "-o", "wide"]);
    assert!(res.contains("horizontalpodautoscalers"), "{res}");
    let v = parse(&s.ok(&["get", "--raw", "/apis/autoscaling"]));
    assert_eq!(v["preferredVersion"]["version"], "v2");
    let versions: Vec<&str> = v["versions"].as_array().unwrap().iter().filter_map(|x| x["version"].as_str()).collect();
    assert_eq!(versions, ["v2", "v1"]);
    let v1list = parse(&s.ok(&["get", "--raw", "/apis/autoscaling/v1"]));
    assert!(v1list["resources"].as_array().unwrap().iter().any(|r| r["name"] == "horizontalpodautoscalers"));
    let explain = s.ok(&["explain", "hpa.spec", "--api-version=autoscaling/v1"]);
    assert!(explain.contains("targetCPUUtilizationPercentage"), "{explain}");
}

fn core_event(name: &str, pod: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": name},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": "default"},
        "reason": "Pulled", "message": format!("pulled image for {pod}"), "type": "Normal",
        "source": {"component": "kubelet", "host": "n1"},
        "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:00:00Z", "count": 1})
}

#[test]
fn events_are_served_as_core_v1_and_events_k8s_io_v1() {
    if require_kubectl().is_none() {
        return;
    }
    let s = TestServer::start(&[]);
    s.ok_stdin(&["create", "-f", "-"], &core_event("ev-a", "alpha").to_string());
    s.ok_stdin(&["create", "-f", "-"], &core_event("ev-b", "beta").to_string());

    // The core event, as events.k8s.io/v1.
    let e = parse(&s.ok(&["get", "events.v1.events.k8s.io", "ev-a", "-o", "json"]));
    assert_eq!(e["apiVersion"], "events.k8s.io/v1");
    assert_eq!(e["note"], "pulled image for alpha");
    assert_eq!(e["regarding"]["name"], "alpha");
    assert_eq!(e["deprecatedSource"]["component"], "kubelet");
    assert_eq!(e["deprecatedCount"], 1);
    assert!(e.get("message").is_none() && e.get("involvedObject").is_none(), "{e}");

    // An events.k8s.io/v1 event, read as core/v1.
    let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "ev-c"},
        "eventTime": "2024-01-01T00:00:00.000000Z", "reportingController": "example.com/ctl",
        "reportingInstance": "ctl-1", "action": "Scale", "reason": "Scaled", "type": "Warning",
        "note": "scaled gamma", "regarding": {"apiVersion": "v1", "kind": "Pod", "name": "gamma", "namespace": "default"}});
    let created = parse(&s.ok_stdin(
        &["create", "--raw", "/apis/events.k8s.io/v1/namespaces/default/events", "-f", "-"],
        &new.to_string(),
    ));
    assert_eq!(created["apiVersion"], "events.k8s.io/v1");
    assert_eq!(created["note"], "scaled gamma");
    let core = parse(&s.ok(&["get", "events", "ev-c", "-o", "json"]));
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["message"], "scaled gamma");
    assert_eq!(core["involvedObject"]["name"], "gamma");
    assert_eq!(core["reportingComponent"], "example.com/ctl");
    assert_eq!(core["action"], "Scale");

    // Both versions list the same objects.
    for res in ["events", "events.v1.events.k8s.io"] {
        let names = s.ok(&["get", res, "-o", "name"]);
        for n in ["ev-a", "ev-b", "ev-c"] {
            assert!(names.contains(n), "{res}: {names}");
        }
    }
    let table = s.ok(&["get", "events.v1.events.k8s.io"]);
    assert!(table.contains("pod/gamma") && table.contains("Scaled"), "{table}");

    // kubectl events, and its --for filter.
    let out = s.ok(&["events"]);
    assert!(out.contains("pulled image for alpha") && out.contains("scaled gamma"), "{out}");
    let out = s.ok(&["events", "--for", "pod/alpha"]);
    assert!(out.contains("pulled image for alpha"), "{out}");
    assert!(!out.contains("beta") && !out.contains("gamma"), "{out}");
    // The new API's own field selector.
    let l = parse(&s.ok(&[
        "get",
        "--raw",
        "/apis/events.k8s.io/v1/namespaces/default/events?fieldSelector=regarding.name%3Dbeta",
    ]));
    let items = l["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{l}");
    assert_eq!(items[0]["note"], "pulled image for beta");

    // events.k8s.io/v1 validation.
    let bad = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "ev-bad"},
        "type": "Normal", "note": "x".repeat(1100), "regarding": {"kind": "Pod", "name": "p"}});
    let (ok, _, err) = s.kubectl_stdin(
        &["create", "--raw", "/apis/events.k8s.io/v1/namespaces/default/events", "-f", "-"],
        Some(&bad.to_string()),
    );
    assert!(!ok, "{err}");
    for f in [
        "eventTime: Required value",
        "reportingController: Required value",
        "action: Required value",
        "note: Invalid value",
    ] {
        assert!(err.contains(f), "{f} missing in {err}");
    }

    // Watches in both versions see the objects in their own version.
    let w = s.ok(&["get", "--raw", "/apis/events.k8s.io/v1/namespaces/default/events?watch=1&timeoutSeconds=1"]);
    let evs: Vec<Value> = w.lines().filter(|l| !l.trim().is_empty()).map(parse).collect();
    assert_eq!(evs.len(), 3, "{w}");
    assert!(evs.iter().all(|e| e["type"] == "ADDED" && e["object"]["apiVersion"] == "events.k8s.io/v1"));
    assert!(evs.iter().any(|e| e["object"]["note"] == "scaled gamma"));
    let w = s.ok(&["get", "--raw", "/api/v1/namespaces/default/events?watch=1&timeoutSeconds=1"]);
    let evs: Vec<Value> = w.lines().filter(|l| !l.trim().is_empty()).map(parse).collect();
    assert_eq!(evs.len(), 3, "{w}");
    assert!(evs.iter().all(|e| e["object"]["apiVersion"] == "v1" && e["object"].get("note").is_none()));

    // Deleting through one version removes it from both.
    s.ok(&["delete", "events.v1.events.k8s.io", "ev-a"]);
    let names = s.ok(&["get", "events", "-o", "name"]);
    assert!(!names.contains("ev-a") && names.contains("ev-b"), "{names}");

    let res = s.ok(&["api-resources", "--api-group=events.k8s.io"]);
    assert!(res.contains("events") && res.contains("events.k8s.io/v1"), "{res}");
    let explain = s.ok(&["explain", "events", "--api-version=events.k8s.io/v1"]);
    assert!(explain.contains("regarding"), "{explain}");
}
