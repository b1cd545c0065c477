//! Admission with real kubectl: LimitRange defaults, ResourceQuota, PodDisruptionBudgets on
//! eviction (`kubectl drain`), default StorageClass.

mod common;
use common::{require_kubectl, TestServer};

fn pod(name: &str, labels: &str, cpu: Option<&str>) -> String {
    let res = cpu.map(|c| format!("\n    resources: {{requests: {{cpu: \"{c}\"}}}}")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36{res}\n"
    )
}

#[test]
fn limit_ranges_default_and_quotas_limit() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok(&["create", "namespace", "q"]);
    s.ok(&["create", "quota", "q1", "--hard=pods=1,requests.cpu=1", "-n", "q"]);
    let (ok, _, err) = s.kubectl_stdin(&["apply", "-n", "q", "-f", "-"], Some(&pod("p0", "a: b", None)));
    assert!(!ok && err.contains("failed quota: q1: must specify requests.cpu for: c"), "{err}");
    s.ok_stdin(
        &["apply", "-n", "q", "-f", "-"],
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: lr}\nspec:\n  limits:\n  - type: Container\n    defaultRequest: {cpu: 500m}\n    default: {cpu: 500m}\n    max: {cpu: \"1\"}\n",
    );
    s.ok_stdin(&["apply", "-n", "q", "-f", "-"], &pod("p1", "a: b", None));
    assert_eq!(
        s.ok(&["get", "pod", "p1", "-n", "q", "-o", "jsonpath={.spec.containers[0].resources.requests.cpu}"]),
        "500m"
    );
    let (ok, _, err) = s.kubectl_stdin(&["apply", "-n", "q", "-f", "-"], Some(&pod("p2", "a: b", None)));
    assert!(!ok && err.contains("exceeded quota: q1, requested: pods=1, used: pods=1, limited: pods=1"), "{err}");
    let big = pod("p3", "a: b", None)
        .replace("image: busybox:1.36", "image: busybox:1.36\n    resources: {limits: {cpu: \"2\"}}");
    let (ok, _, err) = s.kubectl_stdin(&["apply", "-n", "q", "-f", "-"], Some(&big));
    assert!(!ok && err.contains("maximum cpu usage per Container is 1, but limit is 2"), "{err}");
}

#[test]
fn drain_evicts_only_what_disruption_budgets_allow() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n");
    for p in ["a", "b"] {
        let manifest = pod(p, "app: x", Some("10m")).replace("spec:\n", "spec:\n  nodeName: n1\n");
        s.ok_stdin(&["apply", "-f", "-"], &manifest);
    }
    s.ok(&["create", "pdb", "x", "--selector=app=x", "--min-available=1"]);
    // No pod is Ready yet (no kubelet): the budget allows no disruption.
    let (ok, _, err) = s.kubectl(&["drain", "n1", "--force", "--grace-period=0", "--timeout=3s"]);
    assert!(!ok && err.contains("disruption budget"), "{err}");
    assert!(s.ok(&["get", "node", "n1"]).contains("SchedulingDisabled"), "drain cordons first");
    // Both pods become Ready (the kubelet's part): the disruption controller allows one eviction.
    for p in ["a", "b"] {
        s.ok(&[
            "patch",
            "pod",
            p,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#,
        ]);
    }
    for _ in 0..100 {
        if s.ok(&["get", "pdb", "x", "-o", "jsonpath={.status.disruptionsAllowed}"]) == "1" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (ok, _, err) = s.kubectl(&["drain", "n1", "--force", "--grace-period=0", "--timeout=4s"]);
    assert!(!ok, "only one eviction is allowed: {err}");
    let left = s.ok(&["get", "pods", "-o", "name"]);
    assert_eq!(left.lines().count(), 1, "exactly one pod was evicted: {left}");
}

#[test]
fn pvcs_without_a_class_get_the_default_storage_class() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: local-path\n  annotations: {storageclass.kubernetes.io/is-default-class: \"true\"}\nprovisioner: rancher.io/local-path\nvolumeBindingMode: WaitForFirstConsumer\n",
    );
    s.ok_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n");
    assert_eq!(s.ok(&["get", "pvc", "data", "-o", "jsonpath={.spec.storageClassName}"]), "local-path");
    assert!(s.ok(&["get", "sc"]).contains("local-path (default)"));
}

#[test]
fn quotas_hold_under_concurrent_creates_and_report_what_is_used() {
    let Some(()) = require_kubectl() else { return };
    let s = std::sync::Arc::new(TestServer::start(&[]));
    s.ok(&["create", "namespace", "cq"]);
    // Every namespace soon holds kube-root-ca.crt: then 4 more ConfigMaps fit under 5.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !s.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", "cq"]).0 {
        assert!(std::time::Instant::now() < deadline, "kube-root-ca.crt was not published");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    s.ok(&["create", "quota", "cms", "--hard=configmaps=5", "-n", "cq"]);
    let threads: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || s.kubectl(&["create", "configmap", &format!("c{i}"), "-n", "cq"]))
        })
        .collect();
    let results: Vec<(bool, String, String)> = threads.into_iter().map(|t| t.join().expect("thread")).collect();
    let created = results.iter().filter(|r| r.0).count();
    assert_eq!(created, 4, "exactly the free units are handed out: {results:?}");
    for (_, _, err) in results.iter().filter(|r| !r.0) {
        assert!(err.contains("exceeded quota: cms") || err.contains("Operation cannot be fulfilled"), "{err}");
    }
    let used = || {
        s.ok(&["get", "quota", "cms", "-n", "cq", "-o", "jsonpath={.status.used.configmaps}/{.status.hard.configmaps}"])
    };
    assert_eq!(used(), "5/5");
    assert!(s.ok(&["describe", "quota", "cms", "-n", "cq"]).contains("configmaps  5     5"));
    // Deleting one gives its unit back (the controller recomputes the usage).
    let victim = results.iter().position(|r| r.0).expect("one was created");
    s.ok(&["delete", "configmap", &format!("c{victim}"), "-n", "cq"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while used() != "4/5" {
        assert!(std::time::Instant::now() < deadline, "status.used did not drop: {}", used());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    s.ok(&["create", "configmap", "again", "-n", "cq"]);
}

#[test]
fn priority_comes_from_the_class_and_a_stated_other_value_is_refused() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    let with_priority = pod("p1", "a: b", None).replace("spec:\n", "spec:\n  priority: 7\n");
    let (ok, _, err) = s.kubectl_stdin(&["apply", "-f", "-"], Some(&with_priority));
    assert!(!ok && err.contains("the integer value of priority (7) must not be provided in pod spec"), "{err}");
    let critical = pod("p2", "a: b", None).replace("spec:\n", "spec:\n  priorityClassName: system-cluster-critical\n");
    s.ok_stdin(&["apply", "-f", "-"], &critical);
    assert_eq!(
        s.ok(&["get", "pod", "p2", "-o", "jsonpath={.spec.priority}/{.spec.preemptionPolicy}"]),
        "2000000000/PreemptLowerPriority"
    );
    s.ok_stdin(&["apply", "-f", "-"], &pod("p3", "a: b", None));
    assert_eq!(s.ok(&["get", "pod", "p3", "-o", "jsonpath={.spec.priority}"]), "0");
}
