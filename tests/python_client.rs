//! The official Python `kubernetes` client against an in-process server.

mod common;
use common::{must_run, TestServer};

#[test]
fn python_kubernetes_client_crud_selectors_and_resumed_watch() {
    let has_client = std::process::Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_client {
        assert!(!must_run(), "the Python kubernetes client is required in CI (pip install kubernetes)");
        eprintln!("skipping: python3 with the kubernetes package is not installed");
        return;
    }
    let s = TestServer::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_check.py");
    let out = std::process::Command::new("python3").arg(script).arg(&s.kubeconfig).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("all checks passed"), "{text}");
}
