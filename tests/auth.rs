//! Authentication and RBAC with real kubectl: client certificates, service-account tokens,
//! `auth can-i`, `auth whoami`, `create token`, the static token file, and anonymous access.

mod common;
use common::{require_kubectl, As, TestServer};

#[test]
fn admin_can_do_anything_and_says_who_it_is() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    assert_eq!(s.ok(&["auth", "can-i", "delete", "nodes"]).trim(), "yes");
    let who = s.ok(&["auth", "whoami"]);
    assert!(who.contains("system:admin") && who.contains("system:masters"), "{who}");
    let list = s.ok(&["auth", "can-i", "--list"]);
    assert!(list.contains("*.*"), "{list}");
    assert!(s
        .ok(&["get", "clusterroles", "-o", "name"])
        .contains("clusterrole.rbac.authorization.k8s.io/cluster-admin"));
}

#[test]
fn a_service_account_gets_only_what_rbac_grants() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok(&["create", "serviceaccount", "robot"]);
    let token = s.ok(&["create", "token", "robot"]).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let server = format!("https://127.0.0.1:{}", s.port);
    let as_robot = |args: &[&str]| {
        let mut a = vec![
            "--token",
            token.as_str(),
            "--server",
            server.as_str(),
            "--insecure-skip-tls-verify=true",
            "--kubeconfig",
            "/dev/null",
        ];
        a.extend_from_slice(args);
        let k = common::kubectl_path().unwrap();
        let out = std::process::Command::new(k).args(&a).stdin(std::process::Stdio::null()).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_, who, _) = as_robot(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(who, "system:serviceaccount:default:robot");
    let (ok, _, err) = as_robot(&["get", "pods"]);
    assert!(
        !ok && err
            .contains("pods is forbidden: User \"system:serviceaccount:default:robot\" cannot list resource \"pods\""),
        "{err}"
    );
    assert_eq!(as_robot(&["auth", "can-i", "list", "pods"]).1.trim(), "no");
    s.ok(&["create", "rolebinding", "robot-view", "--clusterrole=view", "--serviceaccount=default:robot"]);
    let mut allowed = false;
    for _ in 0..50 {
        if as_robot(&["get", "pods"]).0 {
            allowed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(allowed, "view binding never took effect");
    let (ok, _, err) = as_robot(&["get", "pods", "-n", "kube-system"]);
    assert!(!ok && err.contains("forbidden"), "a namespaced binding must not reach other namespaces: {err}");
    let (ok, _, err) = as_robot(&["delete", "svc", "kubernetes"]);
    assert!(!ok && err.contains("forbidden"), "{err}");
    // Deleting the account revokes its tokens.
    s.ok(&["delete", "serviceaccount", "robot"]);
    let (ok, _, err) = as_robot(&["get", "pods"]);
    assert!(!ok && err.contains("Unauthorized"), "{err}");
}

#[test]
fn anonymous_callers_reach_only_health_and_version() {
    let s = TestServer::start(&[]);
    let anon = s.http(As::Anonymous);
    let (code, v) = anon.json("GET", "/version", None, b"");
    assert_eq!((code, v["major"].as_str()), (200, Some("1")));
    assert_eq!(anon.send("GET", "/version/", None, b"").0, 200);
    for p in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(anon.send("GET", p, None, b""), (200, "ok".to_string()), "{p}");
        let (code, text) = anon.send("GET", &format!("{p}?verbose"), None, b"");
        let name = &p[1..];
        assert_eq!(code, 200, "{p}?verbose");
        assert!(text.contains("[+]etcd ok") && text.ends_with(&format!("{name} check passed\n")), "{p}: {text}");
    }
    // Everything else, discovery and OpenAPI included, is unauthenticated: 401 with a Status.
    for p in [
        "/api",
        "/apis",
        "/api/v1",
        "/apis/apps/v1",
        "/api/v1/namespaces",
        "/api/v1/namespaces/default/pods",
        "/openapi/v2",
        "/openapi/v3",
        "/healthz/etcd",
        "/metrics",
        "/nothing",
    ] {
        let (code, v) = anon.json("GET", p, None, b"");
        assert_eq!(code, 401, "{p}: {v}");
        assert_eq!(
            (v["kind"].as_str(), v["reason"].as_str(), v["code"].as_i64()),
            (Some("Status"), Some("Unauthorized"), Some(401)),
            "{p}: {v}"
        );
        assert_eq!(v["message"], "Unauthorized", "{p}");
    }
    let (code, _) = anon.json("POST", "/api/v1/namespaces", Some("application/json"), br#"{"metadata":{"name":"x"}}"#);
    assert_eq!(code, 401);
    // A bad bearer token is a 401 even where anonymous callers are let in: a token that does
    // not authenticate never falls back to anonymous.
    for bad in ["garbage", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.AAAA"] {
        let c = s.http(As::Token(bad));
        for p in ["/version", "/healthz", "/api/v1/namespaces"] {
            let (code, v) = c.json("GET", p, None, b"");
            assert_eq!((code, v["reason"].as_str()), (401, Some("Unauthorized")), "{bad} {p}: {v}");
        }
    }
}

#[test]
fn a_token_of_a_deleted_or_recreated_service_account_is_unauthorized() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok(&["create", "serviceaccount", "temp"]);
    let token = s.ok(&["create", "token", "temp"]).trim().to_string();
    assert_eq!(s.http(As::Token(&token)).send("GET", "/version", None, b"").0, 200);
    s.ok(&["delete", "serviceaccount", "temp"]);
    s.ok(&["create", "serviceaccount", "temp"]);
    // Same name, new uid: the old token is bound to the old account.
    let (code, v) = s.http(As::Token(&token)).json("GET", "/api/v1/namespaces/default/pods", None, b"");
    assert_eq!((code, v["reason"].as_str()), (401, Some("Unauthorized")), "{v}");
}

const TOKENS: &str =
    "admin-token-1,alice,1001,\"system:masters\"\n\nviewer-token-2,bob,1002,\"devs,qa\"\nplain-token-3,carol,1003\n";

/// kubectl with only a token: no kubeconfig credentials.
fn kubectl_with_token(s: &TestServer, token: &str, args: &[&str]) -> (bool, String, String) {
    let server = format!("https://127.0.0.1:{}", s.port);
    let mut a =
        vec!["--token", token, "--server", &server, "--insecure-skip-tls-verify=true", "--kubeconfig", "/dev/null"];
    a.extend_from_slice(args);
    let out = std::process::Command::new(common::kubectl_path().unwrap())
        .args(&a)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn static_token_file_users_authenticate_with_their_groups_and_meet_rbac() {
    let Some(()) = require_kubectl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.csv");
    std::fs::write(&file, TOKENS).unwrap();
    let s = TestServer::start(&["--token-auth-file", file.to_str().unwrap()]);

    let (ok, who, err) = kubectl_with_token(&s, "viewer-token-2", &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{err}");
    let who: serde_json::Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "bob");
    assert_eq!(who["status"]["userInfo"]["groups"], serde_json::json!(["devs", "qa", "system:authenticated"]));
    let (ok, _, err) = kubectl_with_token(&s, "plain-token-3", &["auth", "whoami"]);
    assert!(ok && err.is_empty(), "{err}");

    // RBAC applies: bob may do nothing until his group is bound.
    let (ok, _, err) = kubectl_with_token(&s, "viewer-token-2", &["get", "pods"]);
    assert!(!ok && err.contains("pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""), "{err}");
    assert_eq!(kubectl_with_token(&s, "viewer-token-2", &["auth", "can-i", "list", "pods"]).1.trim(), "no");
    s.ok(&["create", "rolebinding", "devs-view", "--clusterrole=view", "--group=devs"]);
    let mut allowed = false;
    for _ in 0..50 {
        if kubectl_with_token(&s, "viewer-token-2", &["get", "pods"]).0 {
            allowed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(allowed, "the group binding never took effect");
    let (ok, _, err) = kubectl_with_token(&s, "viewer-token-2", &["create", "configmap", "x"]);
    assert!(!ok && err.contains("forbidden"), "view does not create: {err}");
    let (ok, _, err) = kubectl_with_token(&s, "plain-token-3", &["get", "pods"]);
    assert!(!ok && err.contains("User \"carol\" cannot list"), "the binding is for the group only: {err}");

    // A token naming system:masters is an administrator.
    let (ok, out, err) = kubectl_with_token(&s, "admin-token-1", &["get", "nodes", "-o", "name"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = kubectl_with_token(&s, "admin-token-1", &["create", "namespace", "made-by-alice"]);
    assert!(ok, "{err}");
    s.ok(&["delete", "namespace", "made-by-alice", "--wait=false"]);
    s.ok(&["delete", "rolebinding", "devs-view"]);

    // A token not in the file is a 401.
    let (ok, _, err) = kubectl_with_token(&s, "not-in-the-file", &["get", "pods"]);
    assert!(!ok && err.contains("Unauthorized"), "{err}");
    let (code, v) = s.http(As::Token("not-in-the-file")).json("GET", "/version", None, b"");
    assert_eq!((code, v["reason"].as_str()), (401, Some("Unauthorized")));
}

#[test]
fn a_bad_token_file_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.csv");
    std::fs::write(&file, "t1,alice,1001\n\nt2,bob\n").unwrap();
    let err = match TestServer::try_start(&["--token-auth-file", file.to_str().unwrap()]) {
        Ok(_) => panic!("a server started with a two-column token line"),
        Err(e) => e,
    };
    assert!(
        err.contains(&format!(
            "--token-auth-file {}: line 3: must have at least 3 columns (token, user name, user uid), found 2",
            file.display()
        )),
        "{err}"
    );
    std::fs::write(&file, "t1,ali\"ce,1001\n").unwrap();
    let err = TestServer::try_start(&["--token-auth-file", file.to_str().unwrap()]).err().expect("refused");
    assert!(err.contains("line 1: bare \" in non-quoted-field"), "{err}");
    let missing = dir.path().join("missing.csv");
    let err = TestServer::try_start(&["--token-auth-file", missing.to_str().unwrap()]).err().expect("refused");
    assert!(err.contains("missing.csv") && err.contains("cannot read it"), "{err}");
}
