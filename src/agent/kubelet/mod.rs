//! The kubelet: registers the Node and keeps its Lease and status fresh, runs the pods bound to
//! this node through the [`Runtime`](crate::agent::runtime::Runtime), writes their status, and
//! serves container logs to the API server.

pub mod backoff;
pub mod container_spec;
pub mod cri_log;
pub mod events;
pub mod fake_runtime;
pub mod host_info;
pub mod node;
pub mod node_status;
pub mod pod_status;
pub mod pod_sync;
pub mod pod_workers;
pub mod resources;
pub mod server;
pub mod serving_cert;
