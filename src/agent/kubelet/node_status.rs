//! The Node object this kubelet registers and the status it posts: labels, taints, addresses,
//! capacity and allocatable, nodeInfo, daemon endpoints and the four conditions, following the
//! kubelet's `kubelet_node_status.go` and `nodestatus/setters.go`. Pure.

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;

use super::host_info::HostInfo;
use crate::config::NodeConfig;

/// The version the node reports: the Kubernetes API level skiff serves, marked as skiff's.
pub const KUBELET_VERSION: &str = "v1.33.0+skiff";
/// Upstream default `maxPods`.
pub const MAX_PODS: u32 = 110;
/// Upstream default hard eviction thresholds, subtracted from capacity for allocatable:
/// `memory.available<100Mi`, `nodefs.available<10%`.
const EVICTION_MEMORY: u64 = 100 * 1024 * 1024;
const EVICTION_NODEFS_PERCENT: u64 = 10;

/// What the kubelet knows beyond the host facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub runtime_version: String,
    /// False until the pod network is configured (the node has a pod CIDR).
    pub network_ready: bool,
    /// False while the container runtime does not answer.
    pub runtime_ready: bool,
}

/// Well-known labels (kubelet `getNodeLabels` / `updateDefaultLabels`) plus the configured ones.
pub fn node_labels(cfg: &NodeConfig, host: &HostInfo) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("kubernetes.io/hostname".to_string(), cfg.node_name.clone());
    l.insert("kubernetes.io/os".to_string(), "linux".to_string());
    l.insert("kubernetes.io/arch".to_string(), host.architecture.clone());
    l.insert("beta.kubernetes.io/os".to_string(), "linux".to_string());
    l.insert("beta.kubernetes.io/arch".to_string(), host.architecture.clone());
    l.insert("node.kubernetes.io/instance-type".to_string(), "skiff".to_string());
    for (k, v) in &cfg.labels {
        l.insert(k.clone(), v.clone());
    }
    l
}

pub fn node_taints(cfg: &NodeConfig) -> Vec<Taint> {
    cfg.taints
        .iter()
        .map(|t| Taint {
            key: t.key.clone(),
            value: (!t.value.is_empty()).then(|| t.value.clone()),
            effect: t.effect.clone(),
            time_added: None,
        })
        .collect()
}

/// The Node to create at registration (status is posted separately, through `/status`).
pub fn new_node(cfg: &NodeConfig, host: &HostInfo) -> Node {
    let taints = node_taints(cfg);
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            labels: Some(node_labels(cfg, host)),
            // Upstream marks nodes whose controllers may attach volumes.
            annotations: Some(BTreeMap::from([(
                "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec { taints: (!taints.is_empty()).then_some(taints), ..Default::default() }),
        status: None,
    }
}

/// Taints the existing node must gain at re-registration: configured ones it lacks (matched by
/// key and effect, as upstream compares taints).
pub fn missing_taints(cfg: &NodeConfig, existing: &[Taint]) -> Vec<Taint> {
    node_taints(cfg).into_iter().filter(|t| !existing.iter().any(|e| e.key == t.key && e.effect == t.effect)).collect()
}

fn kib(bytes: u64) -> Quantity {
    Quantity(format!("{}Ki", bytes / 1024))
}

fn condition(
    old: &[NodeCondition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: &Timestamp,
) -> NodeCondition {
    let status = if ok { "True" } else { "False" };
    let last = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(*now));
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(*now)),
        last_transition_time: Some(last),
    }
}

/// The status to post. `old` keeps transition times stable and fields other components own.
pub fn node_status(
    cfg: &NodeConfig,
    host: &HostInfo,
    health: &Health,
    old: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let mut st = old.cloned().unwrap_or_default();
    let old_conds = old.and_then(|o| o.conditions.clone()).unwrap_or_default();

    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), Quantity(host.cpu_cores.to_string()));
    capacity.insert("memory".to_string(), kib(host.memory_bytes));
    capacity.insert("pods".to_string(), Quantity(MAX_PODS.to_string()));
    capacity.insert("ephemeral-storage".to_string(), kib(host.disk_bytes));
    capacity.insert("hugepages-2Mi".to_string(), Quantity("0".into()));
    let mut allocatable = capacity.clone();
    allocatable.insert("memory".to_string(), kib(host.memory_bytes.saturating_sub(EVICTION_MEMORY)));
    allocatable.insert(
        "ephemeral-storage".to_string(),
        Quantity((host.disk_bytes - host.disk_bytes * EVICTION_NODEFS_PERCENT / 100).to_string()),
    );

    // Pressure conditions from the same thresholds as eviction.
    let memory_pressure = host.memory_available_bytes.is_some_and(|a| a < EVICTION_MEMORY);
    let disk_pressure = host
        .disk_available_bytes
        .is_some_and(|a| host.disk_bytes > 0 && a * 100 < host.disk_bytes * EVICTION_NODEFS_PERCENT);
    // Upstream joins the runtime errors of `nodestatus.ReadyCondition` with ", ".
    let mut not_ready = Vec::new();
    if !health.runtime_ready {
        not_ready.push("container runtime is down");
    }
    if !health.network_ready {
        // The message upstream shows while the CRI reports NetworkReady=false.
        not_ready.push(
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady \
             message:Network plugin returns error: the node has no pod CIDR yet",
        );
    }
    let ready = not_ready.is_empty();
    let ready_msg = if ready { "kubelet is posting ready status".to_string() } else { not_ready.join(", ") };
    st.conditions = Some(vec![
        if memory_pressure {
            condition(
                &old_conds,
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
                &now,
            )
        } else {
            condition(
                &old_conds,
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                &now,
            )
        },
        if disk_pressure {
            condition(&old_conds, "DiskPressure", true, "KubeletHasDiskPressure", "kubelet has disk pressure", &now)
        } else {
            condition(
                &old_conds,
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                &now,
            )
        },
        condition(
            &old_conds,
            "PIDPressure",
            false,
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
            &now,
        ),
        if ready {
            condition(&old_conds, "Ready", true, "KubeletReady", &ready_msg, &now)
        } else {
            condition(&old_conds, "Ready", false, "KubeletNotReady", &ready_msg, &now)
        },
    ]);
    st.addresses = Some(vec![
        NodeAddress { type_: "InternalIP".into(), address: cfg.node_ip.to_string() },
        NodeAddress { type_: "Hostname".into(), address: cfg.node_name.clone() },
    ]);
    st.capacity = Some(capacity);
    st.allocatable = Some(allocatable);
    st.daemon_endpoints =
        Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(cfg.kubelet_port) }) });
    st.node_info = Some(NodeSystemInfo {
        architecture: host.architecture.clone(),
        boot_id: host.boot_id.clone(),
        container_runtime_version: health.runtime_version.clone(),
        kernel_version: host.kernel_version.clone(),
        kube_proxy_version: String::new(),
        kubelet_version: KUBELET_VERSION.into(),
        machine_id: host.machine_id.clone(),
        operating_system: "linux".into(),
        os_image: host.os_image.clone(),
        system_uuid: host.machine_id.clone(),
        swap: None,
    });
    st.phase = None;
    st
}

/// True when `new` differs from `old` in more than heartbeat times, so it must be posted now
/// rather than at the next periodic report.
pub fn meaningfully_changed(old: Option<&NodeStatus>, new: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        serde_json::to_value(s).ok()
    };
    match old {
        Some(o) => strip(o) != strip(new),
        None => true,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Cidr, Taint as CfgTaint};
    use std::path::PathBuf;

    pub(crate) fn cfg() -> NodeConfig {
        NodeConfig {
            data_dir: PathBuf::from("/var/lib/skiff"),
            node_name: "n1".into(),
            node_ip: "192.0.2.9".parse().unwrap(),
            labels: vec![("tier".into(), "edge".into())],
            taints: vec![CfgTaint { key: "dedicated".into(), value: "x".into(), effect: "NoSchedule".into() }],
            container_runtime_endpoint: None,
            containerd_namespace: "k8s.io".into(),
            kubelet_port: 10250,
            cgroup_root: "skiff".into(),
            cluster_cidr: Cidr::parse("10.42.0.0/16").unwrap(),
            cluster_dns: "10.43.0.10".parse().unwrap(),
            flannel_backend: "vxlan".into(),
        }
    }

    fn host() -> HostInfo {
        HostInfo {
            hostname: "box".into(),
            cpu_cores: 4,
            memory_bytes: 8 << 30,
            memory_available_bytes: Some(4 << 30),
            disk_bytes: 100 << 30,
            disk_available_bytes: Some(50 << 30),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel_version: "6.18.0".into(),
            architecture: "arm64".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
        }
    }

    fn ready() -> Health {
        Health { runtime_version: "containerd://1.6.20".into(), network_ready: true, runtime_ready: true }
    }

    fn cond<'a>(s: &'a NodeStatus, t: &str) -> &'a NodeCondition {
        s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_new_node_carries_well_known_and_configured_labels_and_taints() {
        let n = new_node(&cfg(), &host());
        let l = n.metadata.labels.unwrap();
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert_eq!(l["kubernetes.io/arch"], "arm64");
        assert_eq!(l["node.kubernetes.io/instance-type"], "skiff");
        assert_eq!(l["tier"], "edge");
        let t = &n.spec.unwrap().taints.unwrap()[0];
        assert_eq!((t.key.as_str(), t.value.as_deref(), t.effect.as_str()), ("dedicated", Some("x"), "NoSchedule"));
    }

    #[test]
    fn the_status_reports_capacity_addresses_info_and_ready() {
        let s = node_status(&cfg(), &host(), &ready(), None, Timestamp::from_second(1_700_000_000).unwrap());
        let cap = s.capacity.as_ref().unwrap();
        assert_eq!(cap["cpu"].0, "4");
        assert_eq!(cap["memory"].0, "8388608Ki");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(s.allocatable.as_ref().unwrap()["memory"].0, format!("{}Ki", 8 * 1024 * 1024 - 100 * 1024));
        let addrs = s.addresses.as_ref().unwrap();
        assert_eq!((addrs[0].type_.as_str(), addrs[0].address.as_str()), ("InternalIP", "192.0.2.9"));
        assert_eq!((addrs[1].type_.as_str(), addrs[1].address.as_str()), ("Hostname", "n1"));
        let info = s.node_info.as_ref().unwrap();
        assert_eq!(info.kubelet_version, "v1.33.0+skiff");
        assert_eq!(info.container_runtime_version, "containerd://1.6.20");
        assert_eq!(info.operating_system, "linux");
        assert_eq!(s.daemon_endpoints.as_ref().unwrap().kubelet_endpoint.as_ref().unwrap().port, 10250);
        let r = cond(&s, "Ready");
        assert_eq!((r.status.as_str(), r.reason.as_deref()), ("True", Some("KubeletReady")));
        assert_eq!(r.message.as_deref(), Some("kubelet is posting ready status"));
        assert_eq!(cond(&s, "MemoryPressure").reason.as_deref(), Some("KubeletHasSufficientMemory"));
        assert_eq!(cond(&s, "DiskPressure").reason.as_deref(), Some("KubeletHasNoDiskPressure"));
        assert_eq!(cond(&s, "PIDPressure").reason.as_deref(), Some("KubeletHasSufficientPID"));
    }

    #[test]
    fn a_node_without_pod_network_is_not_ready() {
        let s = node_status(&cfg(), &host(), &Health { network_ready: false, ..ready() }, None, Timestamp::UNIX_EPOCH);
        let r = cond(&s, "Ready");
        assert_eq!((r.status.as_str(), r.reason.as_deref()), ("False", Some("KubeletNotReady")));
        let s = node_status(&cfg(), &host(), &Health { runtime_ready: false, ..ready() }, None, Timestamp::UNIX_EPOCH);
        assert_eq!(cond(&s, "Ready").message.as_deref(), Some("container runtime is down"));
    }

    #[test]
    fn heartbeats_alone_are_not_a_change_but_transitions_keep_their_time() {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = Timestamp::from_second(1_700_000_100).unwrap();
        let a = node_status(&cfg(), &host(), &ready(), None, t0);
        let b = node_status(&cfg(), &host(), &ready(), Some(&a), t1);
        assert!(!meaningfully_changed(Some(&a), &b));
        assert_eq!(cond(&b, "Ready").last_transition_time, cond(&a, "Ready").last_transition_time);
        assert_eq!(cond(&b, "Ready").last_heartbeat_time, Some(Time(t1)));
        let mut low = host();
        low.memory_available_bytes = Some(1 << 20);
        let c = node_status(&cfg(), &low, &ready(), Some(&b), t1);
        assert!(meaningfully_changed(Some(&b), &c));
        assert_eq!(cond(&c, "MemoryPressure").status, "True");
    }

    #[test]
    fn only_missing_taints_are_added_to_an_existing_node() {
        let existing = node_taints(&cfg());
        assert!(missing_taints(&cfg(), &existing).is_empty());
        assert_eq!(missing_taints(&cfg(), &[]).len(), 1);
    }
}
