//! The harness checked on its own, without skiff: node namespaces on a switch, processes run in
//! them and cleaned up by pid, and the busybox test image imported into and run by a private
//! containerd, with nothing left behind afterwards.

use crate::harness::cleanup::{self, Footprint};
use crate::harness::containerd::Containerd;
use crate::harness::{self, net, run, run_ok, Netns, Switch, BUSYBOX_IMAGE, MARKER_ENV};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// The host's own interfaces, addresses and routes (what the harness must never change).
fn host_network() -> String {
    let links = run_ok(Command::new("ip").args(["-o", "link", "show"]), T).unwrap();
    let routes = run_ok(Command::new("ip").args(["route", "show", "table", "all"]), T).unwrap();
    let addrs = run_ok(Command::new("ip").args(["-o", "addr", "show"]), T).unwrap();
    format!("{links}\n{routes}\n{addrs}")
}

/// Fails if the host's network shows anything of the test's: its address range, its bridge or
/// switch ports, or links that appeared since `before`. (Only what the test could have made is
/// looked at, so other users of a shared machine changing their own links do not matter.)
fn assert_host_untouched(before: &str, ns_names: &[&str]) {
    let now = host_network();
    let subnet = format!("{}.{}.{}.", net::SUBNET[0], net::SUBNET[1], net::SUBNET[2]);
    assert!(!now.contains(&subnet), "the host has an address or route in the test range {subnet}0/24:\n{now}");
    let link_name = |l: &str| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap().to_string());
    let old: Vec<String> = before.lines().filter_map(link_name).collect();
    for l in now.lines().take_while(|l| !l.is_empty()) {
        if let Some(name) = link_name(l) {
            let ours = name == "br0" || name == "eth0" || (name.starts_with('p') && name[1..].parse::<u32>().is_ok());
            assert!(!ours || old.contains(&name), "a test link {name} appeared on the host: {l}");
        }
        for ns in ns_names {
            assert!(!l.contains(ns), "the host's links mention {ns}: {l}");
        }
    }
}

#[test]
fn a_node_namespace_on_the_switch_runs_processes_and_is_removed_without_trace() {
    if !harness::require(&["ip", "nsenter", "busybox"]) {
        return;
    }
    let host_before = host_network();
    let switch = Switch::new();
    let node = Netns::create();
    let addr = switch.attach(&node);
    let (node_name, switch_name) = (node.name.clone(), switch.ns.name.clone());
    let (node_ino, switch_ino) = (node.inode, switch.ns.inode);
    assert!(node_name.starts_with(&format!("skiff-e2e-{}-", std::process::id())), "{node_name}");

    // The node sees its own eth0 with its address and reaches the switch.
    let ip_out = run_ok(node.command("ip").args(["-o", "-4", "addr", "show", "dev", "eth0"]), T).unwrap();
    assert!(ip_out.contains(&format!("{addr}/{}", net::PREFIX)), "node eth0: {ip_out}");
    let routes = run_ok(node.command("ip").args(["route"]), T).unwrap();
    assert!(routes.contains(&format!("default via {}", net::GATEWAY)), "node routes: {routes}");
    assert_host_untouched(&host_before, &[&node_name, &switch_name]);
    let ping = run(node.command("busybox").args(["ping", "-c", "1", "-W", "2", &net::GATEWAY.to_string()]), T).unwrap();
    assert!(ping.ok(), "node cannot reach its switch: {ping}");

    // A process group in the node (as skiff would be), plus a daemon that escaped it with
    // setsid (as containerd's shims do): both found and killed by pid.
    let dir = tempfile::Builder::new().prefix(&format!("{node_name}-")).tempdir().unwrap();
    let mut cmd = node.command("busybox");
    cmd.args(["sh", "-c", "setsid busybox sleep 3600 </dev/null >/dev/null 2>&1 & exec busybox sleep 3600"])
        .env(MARKER_ENV, &node_name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut leader = cmd.spawn().unwrap();
    let fp = Footprint {
        marker: node_name.clone(),
        netns_inode: Some(node_ino),
        cgroup_root: node_name.clone(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    harness::wait_for(
        "two processes in the node",
        T,
        || match fp.pids().len() {
            2 => Ok(()),
            n => Err(format!("{n} processes")),
        },
        String::new,
    );
    let pids = fp.pids();
    assert!(pids.contains(&(leader.id() as i32)), "leader {} not found by netns/marker: {pids:?}", leader.id());
    assert_eq!(cleanup::pids_in_netns(node_ino).len(), 2, "both processes are in the node namespace");
    assert_eq!(cleanup::pids_with_marker(&node_name).len(), 2, "both processes carry the marker");

    let problems = fp.teardown(Some(&mut leader), Duration::from_secs(5));
    assert!(problems.is_empty(), "teardown problems: {problems:?}");
    for p in &pids {
        assert!(!Path::new(&format!("/proc/{p}")).exists() || is_zombie(*p), "pid {p} survived teardown");
    }

    drop(node);
    drop(switch);
    drop(dir);
    for (name, ino) in [(&node_name, node_ino), (&switch_name, switch_ino)] {
        assert!(!Path::new(&format!("/var/run/netns/{name}")).exists(), "netns {name} still present");
        assert!(cleanup::pids_in_netns(ino).is_empty(), "processes left in {name}");
    }
    assert!(cleanup::mounts().iter().all(|m| !m.mount_point.contains(&node_name)), "mounts left");
    assert_host_untouched(&host_before, &[&node_name, &switch_name]);
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')).unwrap_or(false))
        .unwrap_or(true)
}

#[test]
fn the_busybox_image_imports_into_a_private_containerd_and_runs() {
    if !harness::require(&[
        "ip",
        "nsenter",
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "python3",
        "busybox",
    ]) {
        return;
    }
    let host_before = host_network();
    let node = Netns::create();
    let mut ctrd = Containerd::start(&node);
    let tar = harness::busybox_tar();

    // `ctr images import` of the OCI-layout tar names the image from its annotation.
    ctrd.ctr_ok(&["images", "import", tar.to_str().unwrap()]);
    let images = ctrd.ctr_ok(&["images", "ls", "-q"]);
    assert!(images.lines().any(|l| l.trim() == BUSYBOX_IMAGE), "imported images: {images}");

    // A container runs to completion and its output comes back.
    let hello_cg = format!("/{}/hello", ctrd.cgroup_root);
    let out = ctrd.ctr_ok(&[
        "run",
        "--rm",
        "--cgroup",
        &hello_cg,
        BUSYBOX_IMAGE,
        "hello",
        "sh",
        "-c",
        "echo hello from $(cat /var/www/index.html)",
    ]);
    assert!(out.contains("hello from hello from skiff"), "container output: {out:?}");

    // A long-running container: left running on purpose, for the cleanup to find.
    let sleeper_cg = format!("/{}/sleeper", ctrd.cgroup_root);
    ctrd.ctr_ok(&["run", "-d", "--cgroup", &sleeper_cg, BUSYBOX_IMAGE, "sleeper", "sleep", "3600"]);
    let tasks = ctrd.ctr_ok(&["tasks", "ls"]);
    let row = tasks.lines().find(|l| l.starts_with("sleeper")).unwrap_or_else(|| panic!("no sleeper task: {tasks}"));
    assert!(row.contains("RUNNING"), "sleeper task: {row}");
    let task_pid: i32 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    let fp = ctrd.footprint().clone();
    let cgroups = cleanup::cgroup_dirs(&ctrd.cgroup_root);
    assert!(!cgroups.is_empty(), "no cgroup named {} was created", ctrd.cgroup_root);
    assert!(cleanup::pids_in_cgroups(&cgroups).contains(&task_pid), "sleeper pid {task_pid} not in {cgroups:?}");
    let all = fp.pids();
    assert!(all.contains(&task_pid), "the container process is found: {all:?}");
    assert!(all.contains(&(ctrd.pid().unwrap() as i32)), "containerd is found: {all:?}");
    assert!(all.len() >= 3, "containerd, a shim and the container at least: {all:?}");
    let rootfs_mounts: Vec<_> =
        cleanup::mounts().into_iter().filter(|m| m.mount_point.starts_with(ctrd.dir().to_str().unwrap())).collect();
    assert!(!rootfs_mounts.is_empty(), "the sleeper's rootfs is mounted under the state dir");
    let dir = ctrd.dir().to_path_buf();
    let runc_state = Path::new("/run/containerd/runc").join(&ctrd.namespace);
    assert!(runc_state.exists(), "runc keeps its state in {}", runc_state.display());

    // Everything goes: processes (containerd, shim, container), mounts, cgroups, runc state,
    // shim sockets, the temp dir, the namespace.
    let problems = ctrd.shutdown();
    assert!(problems.is_empty(), "teardown problems: {problems:?}");
    assert!(fp.leftovers().is_empty(), "left behind: {:?}", fp.leftovers());
    for p in &all {
        assert!(!Path::new(&format!("/proc/{p}")).exists() || is_zombie(*p), "pid {p} survived");
    }
    assert!(!runc_state.exists(), "{} left", runc_state.display());
    assert!(!dir.exists() || harness::keep_files(), "{} left", dir.display());
    let name = node.name.clone();
    drop(node);
    assert!(!Path::new(&format!("/var/run/netns/{name}")).exists());
    assert_host_untouched(&host_before, &[&name]);
}

#[test]
fn under_ci_a_missing_prerequisite_fails_instead_of_skipping() {
    // Run in a child process so the environment change is its own.
    if std::env::var("SKIFF_E2E_CHILD").is_ok() {
        harness::require(&["skiff-e2e-no-such-program"]);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let name = "selftest::under_ci_a_missing_prerequisite_fails_instead_of_skipping";
    let go = |ci: &str| {
        run(
            Command::new(&exe)
                .args([name, "--exact", "--nocapture", "--test-threads=1"])
                .env("SKIFF_E2E_CHILD", "1")
                .env("CI", ci),
            T,
        )
        .unwrap()
    };
    let skipped = go("false");
    assert!(skipped.ok(), "without CI the test skips: {skipped}");
    assert!(skipped.stderr.contains("SKIPPED") && skipped.stderr.contains("skiff-e2e-no-such-program"), "{skipped}");
    let failed = go("true");
    assert!(!failed.ok(), "with CI=true it fails: {failed}");
    assert!(
        failed.stdout.contains("prerequisites missing") || failed.stderr.contains("prerequisites missing"),
        "{failed}"
    );
}

/// The Deployment and Service documents of `examples/web.yaml`.
fn web_example() -> (serde_json::Value, serde_json::Value) {
    use serde::Deserialize;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<serde_json::Value> =
        serde_yaml::Deserializer::from_str(&text).map(|d| serde_json::Value::deserialize(d).unwrap()).collect();
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}")).clone();
    (find("Deployment"), find("Service"))
}

#[test]
fn the_web_example_is_a_deployment_and_a_service_that_match() {
    let (deploy, svc) = web_example();
    assert_eq!(deploy["apiVersion"], "apps/v1");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in deploy["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the selector matches the pod template");
    }
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the Service selects the pods");
    }
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    // A non-latest tag: imagePullPolicy defaults to IfNotPresent, so the preloaded image is used.
    assert_eq!(c["image"], BUSYBOX_IMAGE);
    assert!(c.get("imagePullPolicy").is_none());
    let port = &c["ports"][0];
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], port["name"], "the Service targets the named port");
}

#[test]
fn the_web_example_container_runs_and_serves_with_the_test_image() {
    if !harness::require(&[
        "ip",
        "nsenter",
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "python3",
        "busybox",
    ]) {
        return;
    }
    let (deploy, _) = web_example();
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<String> =
        c["command"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();

    let node = Netns::create();
    let ctrd = Containerd::start(&node);
    ctrd.ctr_ok(&["images", "import", harness::busybox_tar().to_str().unwrap()]);
    let log = ctrd.dir().join("web.log");
    let log_uri = format!("file://{}", log.display());
    let cgroup = format!("/{}/web", ctrd.cgroup_root);
    let mut args = vec!["run", "-d", "--log-uri", &log_uri, "--cgroup", &cgroup, BUSYBOX_IMAGE, "web"];
    args.extend(command.iter().map(String::as_str));
    ctrd.ctr_ok(&args);

    let url = format!("http://127.0.0.1:{port}/");
    let page = harness::wait_for(
        "the example's httpd to answer inside its container",
        T,
        || {
            let r = ctrd.ctr(&["tasks", "exec", "--exec-id", "probe", "web", "wget", "-qO-", &url])?;
            if r.ok() {
                Ok(r.stdout)
            } else {
                Err(r.to_string())
            }
        },
        || harness::tail(&log, 20),
    );
    assert!(page.starts_with("hello from "), "page: {page:?}");
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(out.contains("web: serving /www on :8080"), "container output: {out:?}");
    assert_eq!(port, 8080);
}

#[test]
fn a_skiff_node_runs_inside_its_namespace_and_is_torn_down_without_trace() {
    // Needs no API: only that `skiff server` starts and keeps running in the node.
    if !harness::require(&["ip", "nsenter", "python3", "busybox"]) {
        return;
    }
    let mut cluster = crate::harness::Cluster::new();
    let i = cluster.add(crate::harness::NodeOptions::default());
    let n = &mut cluster.nodes[i];
    let pid = n.pid().unwrap() as i32;
    // nsenter enters the namespace, then execs skiff in place (same pid).
    let skiff = Path::new(crate::harness::node::skiff_bin());
    harness::wait_for(
        "nsenter to exec skiff",
        T,
        || match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(exe) if exe == skiff => Ok(()),
            other => Err(format!("/proc/{pid}/exe: {other:?}")),
        },
        || n.context(),
    );
    let fp = n.footprint();
    assert!(cleanup::pids_in_netns(n.netns.inode).contains(&pid), "skiff runs in the node's netns");
    assert!(cleanup::pids_with_marker(&fp.marker).contains(&pid), "skiff carries the marker");
    assert!(n.data_dir.join("agent/images/busybox.tar").is_file(), "the image is preloaded");
    std::thread::sleep(Duration::from_secs(2));
    n.assert_running();
    let (netns, data_dir) = (n.netns.name.clone(), n.data_dir.clone());

    let problems = cluster.shutdown();
    assert!(problems.is_empty(), "left behind: {problems:?}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid), "skiff {pid} survived");
    assert!(fp.leftovers().is_empty(), "left behind: {:?}", fp.leftovers());
    assert!(!Path::new(&format!("/var/run/netns/{netns}")).exists(), "netns {netns} left");
    assert!(!data_dir.exists() || harness::keep_files(), "{} left", data_dir.display());
}
