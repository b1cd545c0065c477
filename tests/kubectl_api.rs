//! Real kubectl 1.32 against an in-process `skiff server --disable-agent`.

mod common;
use common::{require_kubectl, TestServer};

const DEPLOY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: docker.io/library/busybox:1.36
        command: ["sh", "-c", "sleep 3600"]
"#;

#[test]
fn version_discovery_and_builtin_namespaces() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    assert!(s.ok(&["version"]).contains("Server Version: v1.33"));
    let res = s.ok(&["api-resources"]);
    for want in ["deployments", "deploy", "replicasets", "rs", "pods", "po", "leases"] {
        assert!(res.split_whitespace().any(|w| w == want), "api-resources lacks {want}:\n{res}");
    }
    let ns = s.ok(&["get", "namespaces", "-o", "name"]);
    for want in ["namespace/default", "namespace/kube-system", "namespace/kube-public", "namespace/kube-node-lease"] {
        assert!(ns.contains(want), "{ns}");
    }
    let svc = s.ok(&["get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(svc, "10.43.0.1");
}

#[test]
fn apply_creates_then_is_unchanged_then_configures() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    assert!(s.ok_stdin(&["apply", "-f", "-"], DEPLOY).contains("deployment.apps/web created"));
    assert!(s.ok_stdin(&["apply", "-f", "-"], DEPLOY).contains("deployment.apps/web unchanged"));
    let changed = DEPLOY.replace("replicas: 2", "replicas: 3");
    assert!(s.ok_stdin(&["apply", "-f", "-"], &changed).contains("deployment.apps/web configured"));
    assert_eq!(s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.metadata.generation}"]), "3 2");
    // Defaults were filled in.
    assert_eq!(s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.strategy.rollingUpdate.maxSurge}"]), "25%");
    let diff = changed.replace("sleep 3600", "sleep 60");
    let (_, out, _) = s.kubectl_stdin(&["diff", "-f", "-"], Some(&diff));
    assert!(out.contains("sleep 60"), "kubectl diff output: {out}");
}

#[test]
fn get_describe_label_scale_delete_behave_like_a_cluster() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok_stdin(&["apply", "-f", "-"], DEPLOY);
    let table = s.ok(&["get", "deploy", "-o", "wide"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("CONTAINERS") && table.contains("docker.io/library/busybox:1.36") && table.contains("app=web"),
        "{table}"
    );
    s.ok(&["label", "deploy", "web", "tier=front"]);
    s.ok(&["annotate", "deploy", "web", "note=hello"]);
    assert!(s.ok(&["get", "deploy", "-l", "tier=front", "-o", "name"]).contains("deployment.apps/web"));
    assert!(!s.ok(&["get", "deploy", "-l", "tier in (back)", "-o", "name"]).contains("web"));
    s.ok(&["scale", "deploy", "web", "--replicas=5"]);
    assert_eq!(s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]), "5");
    let d = s.ok(&["describe", "deploy", "web"]);
    assert!(d.contains("Replicas:") && d.contains("5 desired") && d.contains("note: hello"), "{d}");
    assert!(s.ok(&["delete", "deploy", "web"]).contains("deleted"));
    let (ok, _, err) = s.kubectl(&["get", "deploy", "web"]);
    assert!(!ok && err.contains("deployments.apps \"web\" not found"), "{err}");
}

#[test]
fn errors_are_statuses_with_upstream_messages() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    let bad_name = DEPLOY.replace("name: web\n  labels", "name: Web_1\n  labels");
    let (ok, _, err) = s.kubectl_stdin(&["apply", "-f", "-"], Some(&bad_name));
    assert!(!ok && err.contains("is invalid") && err.contains("metadata.name"), "{err}");
    let unknown = DEPLOY.replace("replicas: 2", "replicas: 2\n  bogus: 1");
    let (ok, _, err) = s.kubectl_stdin(&["apply", "-f", "-"], Some(&unknown));
    assert!(!ok && err.contains("unknown field \"spec.bogus\""), "{err}");
    let mismatch = DEPLOY.replace("matchLabels: {app: web}", "matchLabels: {app: other}");
    let (ok, _, err) = s.kubectl_stdin(&["apply", "-f", "-"], Some(&mismatch));
    assert!(!ok && err.contains("`selector` does not match template `labels`"), "{err}");
}

#[test]
fn a_stale_update_gets_a_conflict() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok_stdin(&["apply", "-f", "-"], DEPLOY);
    let old = s.ok(&["get", "deploy", "web", "-o", "json"]);
    s.ok(&["scale", "deploy", "web", "--replicas=4"]);
    let (ok, _, err) = s.kubectl_stdin(&["replace", "-f", "-"], Some(&old));
    assert!(!ok && err.contains("the object has been modified"), "{err}");
}

#[test]
fn watch_sees_changes() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok_stdin(&["apply", "-f", "-"], DEPLOY);
    let k = common::kubectl_path().unwrap();
    let child = std::process::Command::new(k)
        .args([
            "--kubeconfig",
            s.kubeconfig.to_str().unwrap(),
            "get",
            "deploy",
            "-w",
            "--request-timeout=4s",
            "-o",
            "jsonpath={.spec.replicas}{\"\\n\"}",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    s.ok(&["scale", "deploy", "web", "--replicas=7"]);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "2") && text.lines().any(|l| l == "7"), "watch output: {text}");
}

#[test]
fn typed_create_commands_send_protobuf_and_work() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok(&["create", "namespace", "foo"]);
    s.ok(&["create", "configmap", "c1", "--from-literal=a=b", "-n", "foo"]);
    s.ok(&["create", "deployment", "d1", "--image=busybox:1.36", "--replicas=0", "-n", "foo"]);
    s.ok(&["create", "service", "nodeport", "np", "--tcp=80:8080", "-n", "foo"]);
    s.ok(&["create", "secret", "generic", "s2", "--from-literal=x=y", "-n", "foo"]);
    assert_eq!(s.ok(&["get", "cm", "c1", "-n", "foo", "-o", "jsonpath={.data.a}"]), "b");
    assert_eq!(s.ok(&["get", "deploy", "d1", "-n", "foo", "-o", "jsonpath={.spec.replicas}"]), "0");
    assert_eq!(s.ok(&["get", "secret", "s2", "-n", "foo", "-o", "jsonpath={.data.x}"]), "eQ==");
    let np = s.ok(&[
        "get",
        "svc",
        "np",
        "-n",
        "foo",
        "-o",
        "jsonpath={.spec.ports[0].nodePort} {.spec.ports[0].targetPort} {.spec.clusterIP}",
    ]);
    let parts: Vec<&str> = np.split(' ').collect();
    let port: u16 = parts[0].parse().unwrap();
    assert!((30000..=32767).contains(&port), "{np}");
    assert_eq!(parts[1], "8080");
    assert!(parts[2].starts_with("10.43."), "{np}");
    // Deleting the namespace removes its content, then the namespace.
    s.ok(&["delete", "namespace", "foo", "--wait=true", "--timeout=30s"]);
    let (ok, _, err) = s.kubectl(&["get", "namespace", "foo"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = s.kubectl(&["create", "configmap", "late", "-n", "foo"]);
    assert!(!ok && err.contains("namespaces \"foo\" not found"), "{err}");
}

#[test]
fn get_describe_delete_work_for_every_skeleton_kind() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    let manifests = r#"
apiVersion: v1
kind: Namespace
metadata: {name: kinds}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm, namespace: kinds}
data: {a: b}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: kinds}
spec:
  selector: {app: x}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: pod, namespace: kinds, labels: {app: x}}
spec:
  containers: [{name: c, image: "busybox:1.36"}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: rs, namespace: kinds}
spec:
  replicas: 0
  selector: {matchLabels: {app: rs}}
  template:
    metadata: {labels: {app: rs}}
    spec: {containers: [{name: c, image: "busybox:1.36"}]}
---
apiVersion: v1
kind: Node
metadata: {name: fake-node, labels: {kind: test}}
"#;
    s.ok_stdin(&["apply", "-f", "-"], manifests);
    for (kind, name, ns, want) in [
        ("namespace", "kinds", "", "Active"),
        ("configmap", "cm", "kinds", "cm"),
        ("service", "svc", "kinds", "ClusterIP"),
        ("pod", "pod", "kinds", "Pending"),
        ("replicaset", "rs", "kinds", "rs"),
        ("node", "fake-node", "", "fake-node"),
    ] {
        let nsargs: Vec<&str> = if ns.is_empty() { vec![] } else { vec!["-n", ns] };
        let mut get = vec!["get", kind, name];
        get.extend(&nsargs);
        let out = s.ok(&get);
        assert!(out.starts_with("NAME") || out.starts_with("LAST SEEN"), "{kind}: {out}");
        assert!(out.contains(want), "{kind}: {out}");
        let mut describe = vec!["describe", kind, name];
        describe.extend(&nsargs);
        let d = s.ok(&describe);
        assert!(d.contains("Name:") && d.contains(name), "{kind}: {d}");
    }
    for (kind, name) in [("pod", "pod"), ("replicaset", "rs"), ("service", "svc"), ("configmap", "cm")] {
        assert!(s.ok(&["delete", kind, name, "-n", "kinds"]).contains("deleted"), "{kind}");
        let (ok, _, err) = s.kubectl(&["get", kind, name, "-n", "kinds"]);
        assert!(!ok && err.contains("not found"), "{kind}: {err}");
    }
    s.ok(&["delete", "node", "fake-node"]);
    s.ok(&["delete", "namespace", "kinds", "--timeout=30s"]);
}

#[test]
fn server_side_apply_tracks_managers_and_reports_conflicts() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    assert!(s.ok_stdin(&["apply", "--server-side", "-f", "-"], DEPLOY).contains("serverside-applied"));
    assert!(s.ok_stdin(&["apply", "--server-side", "-f", "-"], DEPLOY).contains("serverside-applied"));
    let mf = s.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}/{.metadata.managedFields[*].operation}",
        "--show-managed-fields",
    ]);
    assert!(mf.contains("kubectl") && mf.contains("Apply"), "{mf}");
    // Another manager takes spec.replicas; re-applying the old value now conflicts.
    s.ok(&["patch", "deploy", "web", "--type=merge", "-p", r#"{"spec":{"replicas":4}}"#, "--field-manager=ops"]);
    let (ok, _, err) = s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(DEPLOY));
    assert!(
        !ok && err.contains("Apply failed with 1 conflict: conflict with \"ops\" using apps/v1: .spec.replicas"),
        "{err}"
    );
    assert_eq!(s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]), "4");
    s.ok_stdin(&["apply", "--server-side", "--force-conflicts", "-f", "-"], DEPLOY);
    assert_eq!(s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]), "2");
    // A label dropped from the applied configuration is removed.
    let labelled =
        DEPLOY.replace("labels: {app: web}\nspec:\n  replicas", "labels: {app: web, extra: x}\nspec:\n  replicas");
    s.ok_stdin(&["apply", "--server-side", "-f", "-"], &labelled);
    assert_eq!(s.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.labels.extra}"]), "x");
    s.ok_stdin(&["apply", "--server-side", "-f", "-"], DEPLOY);
    assert_eq!(s.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.labels.extra}"]), "");
    // Server-side diff shows a pending change without making it.
    let changed = DEPLOY.replace("sleep 3600", "sleep 7");
    let (_, out, _) = s.kubectl_stdin(&["diff", "--server-side", "-f", "-"], Some(&changed));
    assert!(out.contains("sleep 7"), "{out}");
    assert!(s.ok(&["get", "deploy", "web", "-o", "yaml"]).contains("sleep 3600"));
}

#[test]
fn storage_and_quota_kinds_print_the_upstream_columns() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: pv1}\nspec:\n  capacity: {storage: 1Gi}\n  accessModes: [ReadWriteOnce, ReadOnlyMany]\n  persistentVolumeReclaimPolicy: Retain\n  storageClassName: manual\n  hostPath: {path: /tmp/pv1}\n",
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: c1}\nspec:\n  storageClassName: manual\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.ok(&["get", "pvc", "c1", "-o", "jsonpath={.status.phase}"]) != "Bound" {
        assert!(std::time::Instant::now() < deadline, "the claim was not bound");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let pv = s.ok(&["get", "pv"]);
    let header: Vec<&str> = pv.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "CAPACITY",
            "ACCESS",
            "MODES",
            "RECLAIM",
            "POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "REASON",
            "AGE"
        ],
        "{pv}"
    );
    let row: Vec<&str> = pv.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(&row[..7], ["pv1", "1Gi", "RWO,ROX", "Retain", "Bound", "default/c1", "manual"], "{pv}");
    let pvc = s.ok(&["get", "pvc"]);
    let row: Vec<&str> = pvc.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(&row[..6], ["c1", "Bound", "pv1", "1Gi", "RWO,ROX", "manual"], "{pvc}");
    s.ok(&["create", "quota", "q", "--hard=pods=4,limits.cpu=2"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let q = s.ok(&["get", "quota", "q"]);
        if q.contains("pods: 0/4") && q.contains("limits.cpu: 0/2") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "quota columns: {q}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
