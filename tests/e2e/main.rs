//! End-to-end tests: whole skiff nodes in network namespaces, real containerd, real kubectl.
//!
//! Run with `cargo test --test e2e -- --test-threads=1` as root (`tests/run` does). Without root
//! or the tools a test prints why and skips; with `CI=true` it fails instead.
//!
//! - `harness/`: nodes, namespaces, the switch, waiting, kubectl, cleanup.
//! - `selftest.rs`: the harness checked on its own (no skiff needed).
//! - `skeleton.rs`: the walking skeleton, one node from start to `kubectl logs`.
//! - `pod_features.rs`: volumes, env from Secrets, probes and liveness restarts on one node.
//! - `streaming.rs`: `kubectl exec`/`cp`/`attach`/`port-forward` (kubectl 1.32, WebSocket v5 and
//!   the SPDY tunnel) and the Python client's exec/attach/port-forward (v4, v5) on one node.
//! - `autoscaling.rs`: `kubectl top` from metrics.k8s.io and an HPA scaling a busy Deployment.

mod autoscaling;
mod harness;
mod pod_features;
mod selftest;
mod skeleton;
mod storage;
mod streaming;
