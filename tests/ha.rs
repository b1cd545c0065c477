//! Multi-process tests of the store's operations through the real `skiff` binary on loopback:
//! three servers forming an HA group through the join endpoint (writes through a joiner are
//! visible on the first server; killing the leader keeps writes going), and
//! `skiff snapshot save|ls|restore` keeping contents and revisions.

mod procs;

use procs::*;
use skiff::server::join;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn three_servers_join_through_the_https_port_and_survive_a_leader_kill() {
    let root = TestDir::new();
    let token = "ha-test-secret".to_string();
    rt().block_on(async {
        let mut servers: Vec<Option<Proc>> = Vec::new();
        let s1 = spawn(root.path(), "s1", "s1", &["--cluster-init".into(), "--token".into(), token.clone()]);
        wait_ready(&s1, root.path(), "s1").await;
        let url = format!("https://127.0.0.1:{}", s1.port);
        servers.push(Some(s1));
        for name in ["s2", "s3"] {
            let s = spawn(root.path(), name, name, &["--server".into(), url.clone(), "--token".into(), token.clone()]);
            wait_ready(&s, root.path(), name).await;
            servers.push(Some(s));
        }
        // Wait for both joiners to be promoted.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = members(servers[0].as_ref().expect("s1")).await;
            if m.as_ref().is_some_and(|m| m.members.iter().filter(|(_, _, v)| *v).count() == 3) {
                break;
            }
            assert!(Instant::now() < deadline, "the joiners were not promoted to voters: {m:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The joiners share the cluster CA: s3's admin credentials work on s1, and the PKI
        // files are identical.
        for f in ["server-ca.crt", "client-ca.key", "service-account.key"] {
            let a = std::fs::read(servers[0].as_ref().expect("s1").data.join("server/tls").join(f)).expect("read");
            let b = std::fs::read(servers[2].as_ref().expect("s3").data.join("server/tls").join(f)).expect("read");
            assert_eq!(a, b, "{f} differs between s1 and s3");
        }

        // A write through s3 (a follower, forwarded to the leader) is visible on s1.
        assert_eq!(create_cm(servers[2].as_ref().expect("s3"), "from-s3", "hello").await, Some(201));
        let seen = get_cm(servers[0].as_ref().expect("s1"), "from-s3").await.expect("visible on s1");
        assert_eq!(seen["data"]["v"], "hello");

        // Raft routes refuse callers without the peer certificate, even admins.
        let (status, _) =
            call(servers[0].as_ref().expect("s1"), hyper::Method::POST, "/raft/vote", Some(serde_json::json!({})))
                .await
                .expect("answer");
        assert_eq!(status, 403);
        // A join with the wrong token is refused.
        let ca = std::fs::read_to_string(servers[0].as_ref().expect("s1").data.join("server/tls/server-ca.crt"))
            .expect("ca");
        let tls = join::client_tls(Some(&ca), None).expect("tls");
        let body = serde_json::to_vec(&join::JoinRequest { token: "wrong".into(), addr: "https://127.0.0.9:1".into() })
            .expect("json");
        let (status, _) = join::https_call(tls, hyper::Method::POST, &format!("{url}{}", join::JOIN_PATH), Some(body))
            .await
            .expect("answer");
        assert_eq!(status.as_u16(), 401);

        // Kill -9 the leader; writes through a survivor succeed again within a few seconds.
        let leader = members(servers[0].as_ref().expect("s1")).await.and_then(|m| m.leader).expect("a leader");
        let leader_idx = {
            let mut idx = None;
            for (i, s) in servers.iter().enumerate() {
                if members(s.as_ref().expect("server")).await.map(|m| m.node_id) == Some(leader) {
                    idx = Some(i);
                }
            }
            idx.expect("leader among the servers")
        };
        drop(servers[leader_idx].take());
        let survivor = servers.iter().flatten().next().expect("a survivor");
        let killed_at = Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            if create_cm(survivor, &format!("after-kill-{n}"), "x").await == Some(201) {
                break;
            }
            if killed_at.elapsed() > Duration::from_secs(20) {
                let logs: Vec<String> = ["s1", "s2", "s3"]
                    .iter()
                    .map(|n| {
                        let l = std::fs::read_to_string(root.path().join(format!("{n}.log"))).unwrap_or_default();
                        let tail: Vec<&str> = l.lines().rev().take(15).collect();
                        // A panic's message comes before its backtrace, which fills the tail.
                        let panics: Vec<&str> = l.lines().filter(|x| x.contains("panicked at")).collect();
                        format!(
                            "--- {n}:\n{}\n{}",
                            panics.join("\n"),
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                panic!("no write succeeded after killing leader {leader}:\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("first write after the leader kill took {:?}", killed_at.elapsed());
        // Both survivors are still up (a server rides through its leader's death, even while
        // it is still creating its built-in objects), and see it and the earlier write.
        for s in servers.iter_mut().flatten() {
            assert!(matches!(s.child.try_wait(), Ok(None)), "a surviving server exited: {:?}", s.child.try_wait());
        }
        for s in servers.iter().flatten() {
            assert!(get_cm(s, &format!("after-kill-{n}")).await.is_some());
            assert!(get_cm(s, "from-s3").await.is_some());
        }
    });
}

fn skiff(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff")).args(args).output().expect("run skiff");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn snapshot_save_ls_restore_through_the_cli_keeps_contents_and_revisions() {
    let root = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let s = spawn(root.path(), "one", "one", &[]);
        wait_ready(&s, root.path(), "one").await;
        for i in 0..20 {
            assert_eq!(create_cm(&s, &format!("cm-{i}"), &format!("v{i}")).await, Some(201));
        }
        let (_, before) =
            call(&s, hyper::Method::GET, "/api/v1/namespaces/default/configmaps", None).await.expect("list");
        let data = s.data.display().to_string();
        let (ok, out) = skiff(&["snapshot", "save", "--name", "test", "--data-dir", &data]);
        assert!(ok, "snapshot save failed: {out}");
        let (ok, listed) = skiff(&["snapshot", "ls", "--data-dir", &data]);
        assert!(ok && listed.contains("test-1-"), "snapshot ls: {listed}");
        let file = skiff::server::snapshot::list(&s.data).expect("list")[0].path.clone();
        drop(s);

        // Restore into a new data dir and start a server on it.
        let restored_dir = root.path().join("restored");
        let (ok, out) = skiff(&[
            "snapshot",
            "restore",
            &file.display().to_string(),
            "--data-dir",
            &restored_dir.display().to_string(),
        ]);
        assert!(ok, "snapshot restore failed: {out}");
        let r = spawn(root.path(), "restored", "restored", &[]);
        wait_ready(&r, root.path(), "restored").await;
        let (_, after) =
            call(&r, hyper::Method::GET, "/api/v1/namespaces/default/configmaps", None).await.expect("list");
        let items = |v: &serde_json::Value| -> Vec<(String, String, serde_json::Value)> {
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
            out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            out
        };
        assert_eq!(items(&before).len(), 20);
        assert_eq!(items(&before), items(&after), "restored contents or revisions differ");
    });
}
