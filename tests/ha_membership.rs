//! Membership operations of the embedded store's HA group, through the real `skiff` binary on
//! loopback: `kubectl delete node NAME` of a server removes it from the Raft membership (never
//! the last voter), and `skiff server --cluster-reset` turns the survivor of a group that lost
//! its quorum into a one-server cluster that keeps its data and takes writes.

mod procs;

use procs::*;
use skiff::server::join::{self, MembersResponse};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The two tests each run three servers; one group at a time is enough for two cores.
static ONE_GROUP_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits until `p` reports a membership satisfying `ok`; panics with the last one seen.
async fn wait_members(p: &Proc, what: &str, ok: impl Fn(&MembersResponse) -> bool) -> MembersResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = members(p).await;
        if let Some(m) = m.as_ref().filter(|m| ok(m)) {
            return MembersResponse { node_id: m.node_id, leader: m.leader, members: m.members.clone() };
        }
        assert!(Instant::now() < deadline, "{what}: membership is {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `p`'s process exits; panics (with `log()`) if it still runs after `limit`.
async fn wait_exit(p: &mut Proc, limit: Duration, log: impl Fn() -> String) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = p.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {limit:?}:\n{}", log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn voters(m: &MembersResponse) -> Vec<u64> {
    m.members.iter().filter(|(_, _, v)| *v).map(|(id, _, _)| *id).collect()
}

/// Creates a ConfigMap, retrying while the group (re-)elects a leader.
async fn create_cm_eventually(p: &Proc, name: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match create_cm(p, name, value).await {
            Some(201) => return,
            // An earlier attempt went through after all.
            Some(409) => return,
            other => assert!(Instant::now() < deadline, "creating {name} kept failing: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (name, resourceVersion, data) of the test's ConfigMaps, sorted.
async fn test_configmaps(p: &Proc) -> Vec<(String, String, serde_json::Value)> {
    let (status, v) =
        call(p, hyper::Method::GET, "/api/v1/namespaces/default/configmaps", None).await.expect("list answered");
    assert_eq!(status, 200, "{v}");
    let mut out: Vec<_> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("cm-")))
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                i["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string(),
                i["data"].clone(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn node_id(p: &Proc) -> u64 {
    std::fs::read_to_string(join::node_id_path(&p.data)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1)
}

/// s1 (`--cluster-init`), then s2 and s3 joining it; returns once all three are voters.
async fn three_servers(root: &Path, token: &str) -> (Vec<Proc>, String) {
    let s1 = spawn(root, "s1", "s1", &["--cluster-init".into(), "--token".into(), token.into()]);
    wait_ready(&s1, root, "s1").await;
    let url = format!("https://127.0.0.1:{}", s1.port);
    let mut servers = vec![s1];
    for name in ["s2", "s3"] {
        let s = spawn(root, name, name, &["--server".into(), url.clone(), "--token".into(), token.into()]);
        wait_ready(&s, root, name).await;
        servers.push(s);
    }
    wait_members(&servers[0], "the joiners were not promoted", |m| voters(m).len() == 3).await;
    (servers, url)
}

/// Runs kubectl 1.32 with `p`'s admin kubeconfig; panics unless it succeeds.
fn kubectl(p: &Proc, args: &[&str]) -> String {
    let k = ["/usr/lib/google-cloud-sdk/bin/kubectl.1.32", "/usr/bin/kubectl"]
        .into_iter()
        .find(|k| Path::new(k).exists())
        .expect("kubectl 1.32");
    let out = Command::new(k)
        .arg("--kubeconfig")
        .arg(p.data.join("kubeconfig.yaml"))
        .args(args)
        .output()
        .expect("run kubectl");
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubectl {args:?}: {o}{e}");
    o.into_owned()
}

fn have_kubectl() -> bool {
    let found =
        ["/usr/lib/google-cloud-sdk/bin/kubectl.1.32", "/usr/bin/kubectl"].iter().any(|k| Path::new(k).exists());
    if !found {
        assert!(std::env::var("CI").map(|v| v != "true").unwrap_or(true), "kubectl is required in CI");
        eprintln!("skipping: kubectl not installed");
    }
    found
}

#[test]
fn deleting_a_servers_node_removes_it_from_the_raft_membership_but_never_the_last_voter() {
    if !have_kubectl() {
        return;
    }
    let _one = ONE_GROUP_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = TestDir::new();
    let root = root.path();
    rt().block_on(async {
        let (mut servers, url) = three_servers(root, "membership-secret").await;
        let ids: Vec<u64> = servers.iter().map(node_id).collect();
        assert_eq!(ids.len(), 3);
        // These servers run no agent, so nothing registers their Nodes: register them as a
        // kubelet would, under the servers' node names.
        for name in ["s1", "s2", "s3"] {
            let node = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
            let (status, v) =
                call(&servers[0], hyper::Method::POST, "/api/v1/nodes", Some(node)).await.expect("answer");
            assert_eq!(status, 201, "{v}");
        }

        // kubectl delete node s3: s3 leaves the membership; the two left keep taking writes.
        kubectl(&servers[0], &["delete", "node", "s3"]);
        let m =
            wait_members(&servers[0], "s3 was not removed", |m| m.members.iter().all(|(id, _, _)| *id != ids[2])).await;
        assert_eq!(voters(&m).len(), 2, "{m:?}");
        // The removed server notices, says why and stops with an error.
        let mut removed = servers.pop().expect("s3");
        let status = wait_exit(&mut removed, Duration::from_secs(30), || log_of(root, "s3")).await;
        assert!(!status.success(), "s3 exited with {status}");
        assert!(log_of(root, "s3").contains("was removed from the cluster"), "s3 log:\n{}", log_of(root, "s3"));
        drop(removed);
        // Started again on its old data, it refuses to serve that stale copy.
        let mut again = spawn(
            root,
            "s3",
            "s3-again",
            &["--server".into(), url.clone(), "--token".into(), "membership-secret".into()],
        );
        let status = wait_exit(&mut again, Duration::from_secs(60), || log_of(root, "s3-again")).await;
        assert!(!status.success(), "restarted s3 exited with {status}");
        assert!(log_of(root, "s3-again").contains("was removed from the cluster"), "{}", log_of(root, "s3-again"));
        drop(again);
        create_cm_eventually(&servers[0], "cm-after-s3", "x").await;
        assert!(get_cm(&servers[1], "cm-after-s3").await.is_some());
        let logs = format!("{}{}{}", log_of(root, "s1"), log_of(root, "s2"), log_of(root, "s3"));
        assert!(logs.contains("removed the server from the store's membership"), "the removal is logged");

        // Then s2: s1 is left alone, as the only voter, and leads.
        kubectl(&servers[0], &["delete", "node", "s2"]);
        let m =
            wait_members(&servers[0], "s2 was not removed", |m| voters(m) == vec![ids[0]] && m.leader == Some(ids[0]))
                .await;
        assert_eq!(m.members.len(), 1, "{m:?}");
        drop(servers.pop());
        create_cm_eventually(&servers[0], "cm-after-s2", "x").await;

        // The last voter stays, whatever happens to its Node object.
        kubectl(&servers[0], &["delete", "node", "s1"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !log_of(root, "s1").contains("not removing the last voter") {
            assert!(Instant::now() < deadline, "no refusal logged:\n{}", log_of(root, "s1"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let m = members(&servers[0]).await.expect("members");
        assert_eq!(voters(&m), vec![ids[0]]);
        assert_eq!(create_cm(&servers[0], "cm-after-s1", "x").await, Some(201));
    });
}

#[test]
fn cluster_reset_turns_the_survivor_of_a_lost_quorum_into_a_one_server_cluster_with_its_data() {
    let _one = ONE_GROUP_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = TestDir::new();
    let root = root.path();
    let token = "reset-secret";
    rt().block_on(async {
        let (mut servers, url) = three_servers(root, token).await;
        for i in 0..10 {
            create_cm_eventually(&servers[0], &format!("cm-{i}"), &format!("v{i}")).await;
        }
        // s3 (a joiner) is the survivor; it has every write (linearizable reads through it).
        let before = test_configmaps(&servers[2]).await;
        assert_eq!(before.len(), 10, "{before:?}");

        // Two of three die: the survivor has no quorum and cannot write.
        let s3 = servers.pop().expect("s3");
        servers.clear();
        assert_ne!(create_cm(&s3, "cm-no-quorum", "x").await, Some(201), "a minority must not take writes");
        drop(s3);

        // Restarted with --cluster-reset (its other flags unchanged, the server it joined dead).
        let joiner_flags = ["--server".to_string(), url.clone(), "--token".into(), token.into()];
        let reset_flags: Vec<String> = joiner_flags.iter().cloned().chain(["--cluster-reset".to_string()]).collect();
        let s3 = spawn(root, "s3", "s3-reset", &reset_flags);
        wait_ready(&s3, root, "s3-reset").await;
        let m = wait_members(&s3, "not a one-server cluster", |m| m.members.len() == 1 && m.leader.is_some()).await;
        assert_eq!(voters(&m), vec![m.node_id]);
        assert_eq!(test_configmaps(&s3).await, before, "contents and revisions survive the reset");
        assert_eq!(create_cm(&s3, "cm-after-reset", "x").await, Some(201));
        assert!(log_of(root, "s3-reset").contains("cluster reset"), "the reset is logged");
        drop(s3);

        // And it stays one: restarted without --cluster-reset it serves the same data.
        let s3 = spawn(root, "s3", "s3-after", &joiner_flags);
        wait_ready(&s3, root, "s3-after").await;
        let m = wait_members(&s3, "not a one-server cluster", |m| m.members.len() == 1).await;
        assert_eq!(voters(&m).len(), 1);
        assert!(get_cm(&s3, "cm-after-reset").await.is_some());
        assert_eq!(test_configmaps(&s3).await.len(), 11);
    });
}
