//! Resource metrics and autoscaling end to end on one real node: a Deployment whose container
//! spins a busy loop (capped by a CPU limit, so it does not take the host) shows non-zero CPU in
//! `kubectl top pod` (with `-A` and `--containers` too) and `kubectl top node` works, both read
//! from the API server's metrics.k8s.io, which asks the kubelet's `/stats/summary` (also served
//! as Prometheus text at `/metrics/resource`). Then
//! `kubectl autoscale --cpu-percent=50 --min=1 --max=3` makes an HPA that scales the Deployment
//! up to 3, and `kubectl describe hpa` shows the SuccessfulRescale event. The server runs with
//! `--horizontal-pod-autoscaler-sync-period 2s` to keep the test short.

use crate::harness::{self, Cluster, NodeOptions};
use std::time::Duration;

const READY: Duration = Duration::from_secs(60);

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: burner
spec:
  replicas: 1
  selector:
    matchLabels:
      app: burner
  template:
    metadata:
      labels:
        app: burner
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: spin
          image: docker.io/library/busybox:1.36
          command: ["sh", "-c", "while true; do :; done"]
          resources:
            requests:
              cpu: 20m
              memory: 8Mi
            limits:
              cpu: 100m
"#;

/// Millicores in a `kubectl top` CPU column (`12m`, `1`).
fn millicores(s: &str) -> Option<u64> {
    match s.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => s.parse::<u64>().ok().map(|c| c * 1000),
    }
}

#[test]
fn kubectl_top_shows_cpu_and_an_hpa_scales_a_busy_deployment_up() {
    if !harness::require(harness::NODE_TOOLS) {
        return;
    }
    let opts =
        NodeOptions { args: vec!["--horizontal-pod-autoscaler-sync-period".into(), "2s".into()], ..Default::default() };
    let mut cluster = Cluster::single_server_with(opts, READY);
    let n = cluster.server();
    let manifest = n.data_dir.join("burner.yaml");
    std::fs::write(&manifest, MANIFEST).expect("writing the test manifest into the node's data dir");
    n.kubectl_ok(&["apply", "-f", &manifest.to_string_lossy()]);

    // The metrics API is discoverable.
    let groups = n.kubectl_ok(&["api-versions"]);
    assert!(groups.lines().any(|l| l == "metrics.k8s.io/v1beta1"), "api-versions: {groups}");

    let pod = n.wait_for("the burner pod Running", READY, |n| {
        let out = n.try_kubectl(&[
            "get",
            "pods",
            "-l",
            "app=burner",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.status.phase}{\"\\n\"}{end}",
        ])?;
        let f: Vec<&str> = out.split_whitespace().collect();
        if f.len() >= 2 {
            n.remember_pods([f[1].to_string()]);
        }
        match f.as_slice() {
            [name, _, "Running"] => Ok(name.to_string()),
            _ => Err(format!("pods: {out}")),
        }
    });

    // `kubectl top pod` shows the busy loop's CPU (a rate, so after two samples).
    let row = n.wait_for("`kubectl top pod` to show non-zero CPU for the burner", Duration::from_secs(45), |n| {
        let out = n.try_kubectl(&["top", "pod", "-l", "app=burner"])?;
        let row = out.lines().find(|l| l.starts_with(&pod)).ok_or(format!("top pod: {out}"))?.to_string();
        let cpu = row.split_whitespace().nth(1).and_then(millicores).ok_or(format!("top pod row: {row}"))?;
        if cpu > 0 {
            Ok(row)
        } else {
            Err(format!("top pod: {out}"))
        }
    });
    eprintln!("[e2e] kubectl top pod: {row}");
    // The PodMetrics object itself: the container's CPU and a non-zero memory working set.
    let raw = n.kubectl_ok(&["get", "--raw", &format!("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/{pod}")]);
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("PodMetrics {raw}: {e}"));
    assert_eq!(m["containers"][0]["name"], "spin", "{m}");
    let mem = m["containers"][0]["usage"]["memory"].as_str().unwrap_or("");
    assert!(!mem.is_empty() && mem != "0", "memory working set: {m}");
    let all = n.kubectl_ok(&["top", "pod", "-A", "--containers"]);
    let line = all.lines().find(|l| l.contains(&pod)).unwrap_or_else(|| panic!("top pod -A --containers: {all}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"default"), "namespace column: {line}");
    assert_eq!(f.get(2), Some(&"spin"), "container column: {line}");

    // The kubelet's own endpoints, through the API server's nodes/proxy.
    let summary = n.kubectl_ok(&["get", "--raw", "/api/v1/nodes/node-1/proxy/stats/summary"]);
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap_or_else(|e| panic!("{summary}: {e}"));
    assert_eq!(summary["node"]["nodeName"], "node-1");
    assert!(summary["node"]["cpu"]["usageNanoCores"].as_u64().is_some(), "{summary}");
    let prom = n.kubectl_ok(&["get", "--raw", "/api/v1/nodes/node-1/proxy/metrics/resource"]);
    assert!(
        prom.contains(&format!(
            "container_cpu_usage_seconds_total{{container=\"spin\",namespace=\"default\",pod=\"{pod}\"}}"
        )),
        "/metrics/resource:\n{prom}"
    );

    // `kubectl top node` lists the node with its usage.
    let nodes = n.kubectl_ok(&["top", "node"]);
    let row = nodes.lines().find(|l| l.starts_with("node-1")).unwrap_or_else(|| panic!("top node: {nodes}"));
    let cpu = row.split_whitespace().nth(1).and_then(millicores);
    assert!(cpu.is_some_and(|c| c > 0), "top node row: {row}");
    let mem = row.split_whitespace().nth(3).and_then(|m| m.strip_suffix("Mi")).and_then(|m| m.parse::<u64>().ok());
    assert!(mem.is_some_and(|m| m > 0), "top node memory: {row}");

    // The HPA scales the Deployment up to its maximum: 100m used of a 20m request is far above 50%.
    let out = n.kubectl_ok(&["autoscale", "deployment", "burner", "--cpu-percent=50", "--min=1", "--max=3"]);
    assert!(out.contains("burner autoscaled"), "autoscale said: {out}");
    n.wait_for("the deployment scaled to 3 by the HPA", Duration::from_secs(60), |n| {
        let r = n.try_kubectl(&["get", "deployment", "burner", "-o", "jsonpath={.spec.replicas}"])?;
        if r.trim() == "3" {
            Ok(())
        } else {
            Err(format!("spec.replicas: {r}"))
        }
    });
    let d = n.wait_for("`describe hpa` to show the rescale", Duration::from_secs(30), |n| {
        let d = n.try_kubectl(&["describe", "hpa", "burner"])?;
        if d.contains("SuccessfulRescale")
            && d.contains("New size: 3; reason: cpu resource utilization (percentage of request) above target")
        {
            Ok(d)
        } else {
            Err(format!("describe hpa:\n{d}"))
        }
    });
    for want in ["Min replicas:", "Max replicas:", "AbleToScale", "ScalingActive", "ValidMetricFound"] {
        assert!(d.contains(want), "`describe hpa` lacks {want:?}:\n{d}");
    }
    let status = n.kubectl_ok(&[
        "get",
        "hpa",
        "burner",
        "-o",
        "jsonpath={.status.desiredReplicas} {.status.currentMetrics[0].resource.name} {.status.lastScaleTime}",
    ]);
    let f: Vec<&str> = status.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"3"), "hpa status: {status}");
    assert_eq!(f.get(1), Some(&"cpu"), "hpa status: {status}");
    assert!(f.get(2).is_some_and(|t| t.ends_with('Z')), "hpa status lastScaleTime: {status}");

    // Scaled pods get uids remembered for the teardown check.
    let uids = n.kubectl_ok(&["get", "pods", "-l", "app=burner", "-o", "jsonpath={.items[*].metadata.uid}"]);
    n.remember_pods(uids.split_whitespace().map(String::from));
    n.kubectl_ok(&["delete", "hpa", "burner"]);
    n.kubectl_ok(&["delete", "deployment", "burner"]);

    let problems = cluster.shutdown();
    assert!(problems.is_empty(), "teardown left things behind: {problems:?}");
}
