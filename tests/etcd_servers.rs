//! Several `skiff server`s on one external etcd (`--datastore-endpoint`), through the real binary
//! on loopback: they share the cluster PKI through the datastore (sealed with the join token), so
//! one admin kubeconfig works on all of them and they serve the same objects; a server with
//! another token is refused instead of starting a second cluster on the same data.

mod procs;

use procs::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn have_etcd() -> bool {
    let found = std::env::var("PATH").unwrap_or_default().split(':').any(|d| Path::new(d).join("etcd").is_file());
    if !found {
        assert!(std::env::var("CI").map(|v| v != "true").unwrap_or(true), "etcd (etcd-server) is required in CI");
        eprintln!("skipping: etcd not installed");
    }
    found
}

fn datastore_flags(etcd: &skiff::store::etcd::testing::LocalEtcd, token: &str) -> Vec<String> {
    let (ca, cert, key) = etcd.tls.clone().expect("etcd with TLS");
    vec![
        "--datastore-endpoint".into(),
        etcd.endpoint.clone(),
        "--datastore-cafile".into(),
        ca.display().to_string(),
        "--datastore-certfile".into(),
        cert.display().to_string(),
        "--datastore-keyfile".into(),
        key.display().to_string(),
        "--token".into(),
        token.into(),
    ]
}

#[test]
fn servers_sharing_an_etcd_share_the_cluster_pki_and_refuse_a_foreign_token() {
    if !have_etcd() {
        return;
    }
    let root = TestDir::new();
    let root = root.path();
    rt().block_on(async {
        let etcd = skiff::store::etcd::testing::LocalEtcd::start(&root.join("etcd"), true).await.expect("start etcd");
        let s1 = spawn(root, "s1", "s1", &datastore_flags(&etcd, "shared-secret"));
        wait_ready(&s1, root, "s1").await;
        let s2 = spawn(root, "s2", "s2", &datastore_flags(&etcd, "K10deadbeef::server:shared-secret"));
        wait_ready(&s2, root, "s2").await;

        // The same CAs and service-account key on both.
        for f in skiff::server::shared_pki::SHARED_FILES {
            let a = std::fs::read(s1.data.join("server/tls").join(f)).expect("s1 file");
            let b = std::fs::read(s2.data.join("server/tls").join(f)).expect("s2 file");
            assert_eq!(a, b, "{f} differs between s1 and s2");
        }
        // Nothing secret in the datastore in the clear.
        let mut stored = Vec::new();
        for entry in walk(&root.join("etcd/data")) {
            stored.extend(std::fs::read(entry).unwrap_or_default());
        }
        let key = std::fs::read_to_string(s1.data.join("server/tls/server-ca.key")).expect("key");
        let body = key.lines().nth(1).expect("a key line");
        assert!(!String::from_utf8_lossy(&stored).contains(body), "the CA key is stored in the clear");

        // s1's admin credentials work on s2, and both serve the same objects.
        assert_eq!(create_cm(&s1, "cm-shared", "one").await, Some(201));
        let (status, seen) =
            call_as(&s1, s2.port, hyper::Method::GET, "/api/v1/namespaces/default/configmaps/cm-shared", None)
                .await
                .expect("s2 answers s1's admin");
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["data"]["v"], "one");

        // A server with another token is refused, with a message that says why.
        let mut s3 = spawn(root, "s3", "s3", &datastore_flags(&etcd, "other-secret"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = s3.child.try_wait().expect("try_wait") {
                break st;
            }
            assert!(Instant::now() < deadline, "s3 with a foreign token still runs:\n{}", log_of(root, "s3"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(!status.success());
        assert!(log_of(root, "s3").contains("another token"), "{}", log_of(root, "s3"));
        drop((s2, s1));
        drop(etcd);
    });
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
