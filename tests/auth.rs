//! Authentication and RBAC with real kubectl: client certificates, service-account tokens,
//! `auth can-i`, `auth whoami`, `create token`, and anonymous access.

mod common;
use common::{require_kubectl, TestServer};

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
    // kubectl always prompts for a password without credentials, so curl plays the anonymous client.
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        assert!(!common::must_run(), "curl is required in CI");
        return;
    }
    let run = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-o", "-", "-w", "\n%{http_code}", &format!("https://127.0.0.1:{}{path}", s.port)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_string(), body.to_string())
    };
    assert_eq!(run("/version").0, "200");
    assert_eq!(run("/healthz"), ("200".to_string(), "ok".to_string()));
    let (code, body) = run("/api/v1/namespaces");
    assert_eq!(code, "403");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reason"], "Forbidden");
    assert!(
        status["message"].as_str().unwrap().contains("User \"system:anonymous\" cannot list resource \"namespaces\""),
        "{body}"
    );
    assert_eq!(run("/openapi/v3").0, "403");
}
