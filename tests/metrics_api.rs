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

/// Polls `f` every 200 ms for up to `secs` seconds.
fn eventually<T>(what: &str, secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() > deadline => panic!("timed out waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

#[test]
fn the_hpa_controller_enforces_min_replicas_and_reports_missing_metrics() {
    if require_kubectl().is_none() {
        return;
    }
    let s = TestServer::start(&["--horizontal-pod-autoscaler-sync-period", "1s"]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
              "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                  "resources": {"requests": {"cpu": "100m"}}}]}}}}"#,
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
              "minReplicas": 2, "maxReplicas": 4,
              "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}]}}"#,
    );
    // Below minReplicas: scaled up through the scale subresource, with upstream's reason.
    eventually("the deployment scaled to minReplicas", 20, || {
        let r = s.ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.replicas}"]);
        if r == "2" {
            Ok(())
        } else {
            Err(r)
        }
    });
    eventually("the SuccessfulRescale event", 20, || {
        let d = s.ok(&["describe", "hpa", "web"]);
        if d.contains("New size: 2; reason: Current number of replicas below Spec.MinReplicas") {
            Ok(())
        } else {
            Err(d)
        }
    });
    // No node runs the pods, so no metrics: ScalingActive False, FailedGetResourceMetric.
    let cond = r#"jsonpath={.status.conditions[?(@.type=="ScalingActive")].status} {.status.conditions[?(@.type=="ScalingActive")].reason} {.status.conditions[?(@.type=="AbleToScale")].status}"#;
    eventually("ScalingActive False for lack of metrics", 30, || {
        let c = s.ok(&["get", "hpa", "web", "-o", cond]);
        if c == "False FailedGetResourceMetric True" {
            Ok(())
        } else {
            Err(c)
        }
    });
    let events = s.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web,reason=FailedGetResourceMetric",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("no metrics returned from resource metrics API"), "{events}");

    // A target scaled to zero disables autoscaling.
    s.ok(&["scale", "deployment", "web", "--replicas=0"]);
    eventually("ScalingDisabled", 30, || {
        let c = s.ok(&["get", "hpa", "web", "-o", cond]);
        if c.starts_with("False ScalingDisabled") {
            Ok(())
        } else {
            Err(c)
        }
    });
    assert_eq!(s.ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.replicas}"]), "0");

    // A target that does not exist: AbleToScale False, FailedGetScale.
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "gone"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gone"},
              "maxReplicas": 3}}"#,
    );
    eventually("FailedGetScale", 30, || {
        let c =
            s.ok(&["get", "hpa", "gone", "-o", r#"jsonpath={.status.conditions[?(@.type=="AbleToScale")].reason}"#]);
        if c == "FailedGetScale" {
            Ok(())
        } else {
            Err(c)
        }
    });
}
