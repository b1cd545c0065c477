//! The walking skeleton end to end (issue #2): the README's first command (`sh install.sh`, run
//! from this checkout inside a node namespace) starts a `skiff server` that becomes Ready, runs the
//! `examples/web.yaml` Deployment, serves its pods' logs, `get`/`describe`/`delete` behave, and
//! the README's `kill $(cat PIDFILE)` stops it.

use crate::harness::{self, cleanup, Cluster, Node, NodeOptions};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

const READY: Duration = Duration::from_secs(60);

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)
}

/// `(name, phase, podIP, uid)` of each pod with label app=web.
fn web_pods(n: &Node) -> Result<Vec<(String, String, String, String)>, String> {
    let out = n.try_kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.status.podIP} {.metadata.uid}{\"\\n\"}{end}",
    ])?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let g = |i: usize| f.get(i).map(|s| s.to_string()).unwrap_or_default();
            (g(0), g(1), g(2), g(3))
        })
        .collect())
}

#[test]
fn single_node_runs_the_web_example_and_serves_its_logs() {
    if !harness::require(harness::NODE_TOOLS) {
        return;
    }
    // install.sh preloads the busybox image itself (tests/images/mkimage.py), as for a user.
    let opts = NodeOptions { install_script: true, preload_busybox: false, ..Default::default() };
    let mut cluster = Cluster::single_server_with(opts, READY);
    let n = cluster.server();
    let images = n.data_dir.join("agent/images/busybox-1.36.tar");
    assert!(images.is_file(), "install.sh did not preload {}", images.display());
    let installed = n.data_dir.join("bin/skiff");
    assert!(installed.is_file(), "install.sh did not install {}", installed.display());

    // The node is listed and Ready.
    let nodes = n.kubectl_ok(&["get", "nodes"]);
    let row = nodes
        .lines()
        .find(|l| l.split_whitespace().next() == Some(n.name.as_str()))
        .unwrap_or_else(|| panic!("`kubectl get nodes` does not list {}:\n{nodes}", n.name));
    assert_eq!(row.split_whitespace().nth(1), Some("Ready"), "node row: {row}");

    // Apply the example a new user would apply.
    let web = example("web.yaml");
    let applied = n.kubectl_ok(&["apply", "-f", web.to_str().unwrap()]);
    assert!(applied.contains("deployment.apps/web created"), "apply said: {applied}");
    assert!(applied.contains("service/web created"), "apply said: {applied}");

    // Both replicas Running within 60 s, each with a pod IP from the cluster CIDR.
    let pods = n.wait_for("2 web pods Running", READY, |n| {
        let pods = web_pods(n)?;
        n.remember_pods(pods.iter().map(|p| p.3.clone()));
        let running: Vec<_> = pods.iter().filter(|p| p.1 == "Running" && !p.2.is_empty()).cloned().collect();
        if running.len() == 2 {
            Ok(running)
        } else {
            Err(format!("pods (name phase ip uid): {pods:?}"))
        }
    });
    for (name, _, ip, _) in &pods {
        let ip: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("pod {name} has podIP {ip:?}"));
        assert_eq!(ip.octets()[..2], [10, 42], "pod {name} IP {ip} is outside the default cluster CIDR 10.42.0.0/16");
    }

    // The containers run under the node's --cgroup-root (which is how teardown finds them).
    let cgroups = cleanup::cgroup_dirs(&n.cgroup_root);
    assert!(!cgroups.is_empty(), "no cgroup named {} (--cgroup-root) exists while pods run", n.cgroup_root);
    assert!(!cleanup::pids_in_cgroups(&cgroups).is_empty(), "no process runs under {cgroups:?}");

    // `kubectl logs` of a pod shows what its container printed.
    let (pod, _, pod_ip, _) = pods[0].clone();
    n.wait_for(&format!("`kubectl logs {pod}` to show the container's output"), Duration::from_secs(30), |n| {
        let logs = n.try_kubectl(&["logs", &pod])?;
        if logs.contains("web: serving /www on :8080") {
            Ok(())
        } else {
            Err(format!("logs so far: {logs:?}"))
        }
    });

    // The pod is reachable on its IP from the node (pod network on the node bridge).
    n.wait_for(&format!("http://{pod_ip}:8080/ to answer from the node"), Duration::from_secs(20), |n| {
        let mut cmd = n.netns.command("busybox");
        cmd.args(["wget", "-qO-", &format!("http://{pod_ip}:8080/")]);
        let r = harness::run(&mut cmd, Duration::from_secs(10))?;
        if r.ok() && r.stdout.contains(&format!("hello from {pod}")) {
            Ok(())
        } else {
            Err(format!("wget: {r}"))
        }
    });

    // The API server proxies to the node's kubelet and to the Service's endpoints.
    let health = n.kubectl_ok(&["get", "--raw", "/api/v1/nodes/node-1/proxy/healthz"]);
    assert_eq!(health.trim(), "ok", "nodes/proxy to the kubelet");
    n.wait_for("services/proxy to reach a web pod", Duration::from_secs(20), |n| {
        let out = n.try_kubectl(&["get", "--raw", "/api/v1/namespaces/default/services/web:http/proxy/"])?;
        if out.contains("hello from web-") {
            Ok(())
        } else {
            Err(format!("services/proxy: {out:?}"))
        }
    });

    // get / describe of each kind the example made.
    n.wait_for("deployment web 2/2 ready", READY, |n| {
        let out = n.try_kubectl(&["get", "deployment", "web"])?;
        let row = out.lines().find(|l| l.starts_with("web ")).ok_or(format!("no row for web: {out}"))?;
        if row.split_whitespace().nth(1) == Some("2/2") {
            Ok(())
        } else {
            Err(format!("get deployment: {out}"))
        }
    });
    let rs = n.kubectl_ok(&["get", "replicasets", "-l", "app=web", "-o", "name"]);
    assert_eq!(rs.lines().count(), 1, "one ReplicaSet for the deployment: {rs}");
    let svc = n.kubectl_ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP} {.spec.ports[0].port}"]);
    let mut f = svc.split_whitespace();
    let cluster_ip: Ipv4Addr = f.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("service web: {svc:?}"));
    assert_eq!(cluster_ip.octets()[..2], [10, 43], "ClusterIP {cluster_ip} is outside the default service CIDR");
    assert_eq!(f.next(), Some("80"));

    let d = n.kubectl_ok(&["describe", "deployment", "web"]);
    for want in ["Name:", "web", "Replicas:", "2 desired", "docker.io/library/busybox:1.36"] {
        assert!(d.contains(want), "`describe deployment web` lacks {want:?}:\n{d}");
    }
    let d = n.kubectl_ok(&["describe", "pod", &pod]);
    for want in ["Name:", pod.as_str(), "Node:", "Status:", "Running", "IP:", pod_ip.as_str()] {
        assert!(d.contains(want), "`describe pod {pod}` lacks {want:?}:\n{d}");
    }
    let d = n.kubectl_ok(&["describe", "service", "web"]);
    for want in ["Name:", "web", "Selector:", "app=web", "IP:", "80/TCP"] {
        assert!(d.contains(want), "`describe service web` lacks {want:?}:\n{d}");
    }

    // delete removes the deployment, its ReplicaSet and its pods.
    let deleted = n.kubectl_ok(&["delete", "-f", web.to_str().unwrap()]);
    assert!(deleted.contains("deployment.apps \"web\" deleted"), "delete said: {deleted}");
    assert!(deleted.contains("service \"web\" deleted"), "delete said: {deleted}");
    n.wait_for("web pods to go away", READY, |n| {
        let pods = web_pods(n)?;
        if pods.is_empty() {
            Ok(())
        } else {
            Err(format!("still there: {pods:?}"))
        }
    });
    let r = n.kubectl(&["get", "deployment", "web"]);
    assert!(!r.ok() && r.stderr.contains("NotFound"), "deployment web still found: {r}");
    let rs = n.kubectl_ok(&["get", "replicasets", "-l", "app=web", "-o", "name"]);
    assert!(rs.trim().is_empty(), "ReplicaSets left after delete: {rs}");

    // The README's way to stop it: `kill $(cat PIDFILE)`; skiff exits on SIGTERM.
    assert!(n.stop_installed(Duration::from_secs(20)), "skiff did not exit within 20s of SIGTERM\n{}", n.context());

    // Stopping the node leaves nothing behind: processes, mounts, cgroups, namespaces, files.
    let problems = cluster.shutdown();
    assert!(problems.is_empty(), "left behind after teardown: {problems:?}");
}
