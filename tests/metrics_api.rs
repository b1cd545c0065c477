//! metrics.k8s.io on a control plane without nodes: discoverable the way kubectl looks for it
//! (legacy and aggregated discovery), lists empty, unknown names are NotFound Statuses, pods
//! whose node cannot be asked have no metrics, and `kubectl top` says what upstream says.

mod common;
use common::{require_kubectl, TestServer};

#[test]
fn the_metrics_api_is_discoverable_and_answers_sensibly_without_nodes() {
    if require_kubectl().is_none() {
        return;
    }
    let s = TestServer::start(&[]);

    // Discovery: aggregated (kubectl's default) and the legacy documents.
    let versions = s.ok(&["api-versions"]);
    assert!(versions.lines().any(|l| l == "metrics.k8s.io/v1beta1"), "api-versions: {versions}");
    let resources = s.ok(&["api-resources", "--api-group=metrics.k8s.io", "-o", "wide"]);
    let pods = resources.lines().find(|l| l.starts_with("pods ")).unwrap_or_else(|| panic!("{resources}"));
    assert!(pods.contains("PodMetrics") && pods.contains("true") && pods.contains("get,list"), "{pods}");
    let nodes = resources.lines().find(|l| l.starts_with("nodes ")).unwrap_or_else(|| panic!("{resources}"));
    assert!(nodes.contains("NodeMetrics") && nodes.contains("false"), "{nodes}");
    let group: serde_json::Value = serde_json::from_str(&s.ok(&["get", "--raw", "/apis/metrics.k8s.io"])).unwrap();
    assert_eq!(group["preferredVersion"]["groupVersion"], "metrics.k8s.io/v1beta1");
    let list: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1"])).unwrap();
    assert_eq!(list["kind"], "APIResourceList");
    let groups: serde_json::Value = serde_json::from_str(&s.ok(&["get", "--raw", "/apis"])).unwrap();
    assert!(groups["groups"].as_array().unwrap().iter().any(|g| g["name"] == "metrics.k8s.io"), "{groups}");

    // Empty lists.
    let nodes: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"])).unwrap();
    assert_eq!(nodes["kind"], "NodeMetricsList");
    assert_eq!(nodes["items"], serde_json::json!([]));
    let pods: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dweb",
    ]))
    .unwrap();
    assert_eq!(pods["kind"], "PodMetricsList");
    assert_eq!(pods["items"], serde_json::json!([]));

    // A pod bound to a node that does not exist has no metrics (and the list still answers).
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ghost", "labels": {"app": "ghost"}},
            "spec": {"nodeName": "nowhere", "containers": [{"name": "c", "image": "busybox"}]}}"#,
    );
    let pods: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/pods"])).unwrap();
    assert_eq!(pods["items"], serde_json::json!([]));

    // Errors are Statuses with upstream reasons.
    let (ok, _, err) = s.kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/ghost"]);
    assert!(!ok, "{err}");
    assert!(err.contains(r#"(NotFound): podmetrics.metrics.k8s.io "ghost" not found"#), "{err}");
    let (ok, _, err) = s.kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/services"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
    let (ok, _, err) = s.kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes?watch=true"]);
    assert!(!ok && err.contains("MethodNotAllowed"), "{err}");

    // kubectl top: what it says with no metrics.
    let (ok, out, err) = s.kubectl(&["top", "pod", "-l", "app=none"]);
    assert!(ok, "top pod: {out} {err}");
    assert!(err.contains("No resources found in default namespace"), "top pod: {out} {err}");
    let (ok, _, err) = s.kubectl(&["top", "node"]);
    assert!(!ok && err.contains("metrics not available yet"), "top node: {err}");

    // The metrics reader role is aggregated into view/edit/admin.
    let role = s.ok(&[
        "get",
        "clusterrole",
        "system:aggregated-metrics-reader",
        "-o",
        "jsonpath={.rules[0].apiGroups[0]} {.metadata.labels}",
    ]);
    assert!(role.starts_with("metrics.k8s.io") && role.contains("aggregate-to-view"), "{role}");
}
