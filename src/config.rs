//! Turns command-line flags into validated configuration. Pure: no I/O but what the caller
//! passes in (the host name and the addresses of this machine), so every rule is unit-tested.
//!
//! The flags come from three places, merged before clap parses them: the command line, the
//! k3s-style config file `/etc/skiff/config.yaml` (with its `config.yaml.d/*.yaml` drop-ins; see
//! [`file`], which turns it into flags) and `SKIFF_*` environment variables. Precedence, as in
//! k3s: command line > file > environment > default; a repeatable flag's command-line values are
//! added to the file's.

pub mod file;

use crate::cli::{AgentArgs, NodeArgs, ServerArgs};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A CIDR flag did not parse.
    #[error("--{flag}: {value:?} is not an IPv4 CIDR like 10.42.0.0/16")]
    BadCidr { flag: &'static str, value: String },
    /// A port range flag did not parse.
    #[error("--service-node-port-range: {0:?} is not a range like 30000-32767")]
    BadPortRange(String),
    /// A label flag did not parse.
    #[error("--node-label: {0:?} is not KEY=VALUE")]
    BadLabel(String),
    /// A taint flag did not parse.
    #[error("--node-taint: {0:?} is not KEY=VALUE:EFFECT with EFFECT NoSchedule, PreferNoSchedule or NoExecute")]
    BadTaint(String),
    /// A file mode did not parse.
    #[error("--write-kubeconfig-mode: {0:?} is not an octal mode like 0600")]
    BadMode(String),
    /// The node has no usable address.
    #[error("no node IP: pass --node-ip")]
    NoNodeIp,
    /// A name that is not a valid DNS-1123 subdomain.
    #[error("--node-name: {0:?} must be lowercase letters, digits, '-' and '.', at most 253 characters")]
    BadNodeName(String),
    /// The external datastore flags are malformed or combined with embedded-store flags.
    #[error("{0}")]
    Datastore(String),
}

/// An IPv4 network, e.g. 10.42.0.0/16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        let mask = Self::mask_of(prefix);
        Some(Cidr { addr: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }
    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix as u32)
        }
    }
    pub fn mask(&self) -> u32 {
        Self::mask_of(self.prefix)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
    /// Number of addresses in the network.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix as u32)
    }
    /// The n-th address of the network (n = 0 is the network address).
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        if n >= self.size() {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.addr) + n as u32))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

/// What an agent needs to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub node_name: String,
    pub node_ip: IpAddr,
    pub labels: Vec<(String, String)>,
    pub taints: Vec<Taint>,
    pub container_runtime_endpoint: Option<PathBuf>,
    pub containerd_namespace: String,
    pub kubelet_port: u16,
    pub cgroup_root: String,
    pub cluster_cidr: Cidr,
    pub cluster_dns: IpAddr,
    pub flannel_backend: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node: NodeConfig,
    pub listen: SocketAddr,
    pub advertise_address: IpAddr,
    pub tls_sans: Vec<String>,
    pub write_kubeconfig: PathBuf,
    pub write_kubeconfig_mode: u32,
    pub token: Option<String>,
    /// `--token-auth-file`: static bearer tokens (read at start-up, not here: this is pure).
    pub token_auth_file: Option<PathBuf>,
    pub cluster_init: bool,
    pub join_server: Option<String>,
    pub cluster_reset: bool,
    pub service_cidr: Cidr,
    pub node_port_range: (u16, u16),
    pub disable_agent: bool,
    pub disable: Vec<String>,
    pub datastore_endpoint: Option<String>,
    /// The external etcd (`--datastore-*`), resolved; None for the embedded store.
    pub datastore: Option<crate::store::etcd::EtcdConfig>,
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub hpa_sync_period: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: NodeConfig,
    pub server: String,
    pub token: String,
}

/// Facts about the machine that the pure resolution needs.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub hostname: String,
    pub first_ip: Option<IpAddr>,
}

fn parse_cidr(flag: &'static str, v: &str) -> Result<Cidr, ConfigError> {
    Cidr::parse(v).ok_or_else(|| ConfigError::BadCidr { flag, value: v.to_string() })
}

fn parse_labels(v: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    v.iter()
        .map(|l| match l.split_once('=') {
            Some((k, val)) if !k.is_empty() => Ok((k.to_string(), val.to_string())),
            _ => Err(ConfigError::BadLabel(l.clone())),
        })
        .collect()
}

fn parse_taints(v: &[String]) -> Result<Vec<Taint>, ConfigError> {
    v.iter()
        .map(|t| {
            let (kv, effect) = t.rsplit_once(':').ok_or_else(|| ConfigError::BadTaint(t.clone()))?;
            if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                return Err(ConfigError::BadTaint(t.clone()));
            }
            let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
            if k.is_empty() {
                return Err(ConfigError::BadTaint(t.clone()));
            }
            Ok(Taint { key: k.into(), value: val.into(), effect: effect.into() })
        })
        .collect()
}

fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn resolve_node(
    a: &NodeArgs,
    host: &HostFacts,
    cluster_cidr: Cidr,
    cluster_dns: IpAddr,
) -> Result<NodeConfig, ConfigError> {
    let node_name = a.node_name.clone().unwrap_or_else(|| host.hostname.to_lowercase());
    if !valid_node_name(&node_name) {
        return Err(ConfigError::BadNodeName(node_name));
    }
    let node_ip = a.node_ip.or(host.first_ip).ok_or(ConfigError::NoNodeIp)?;
    Ok(NodeConfig {
        data_dir: a.data_dir.clone(),
        node_name,
        node_ip,
        labels: parse_labels(&a.node_labels)?,
        taints: parse_taints(&a.node_taints)?,
        container_runtime_endpoint: a.container_runtime_endpoint.clone(),
        containerd_namespace: a.containerd_namespace.clone(),
        kubelet_port: a.kubelet_port,
        cgroup_root: a.cgroup_root.clone(),
        cluster_cidr,
        cluster_dns,
        flannel_backend: a.flannel_backend.clone(),
    })
}

pub fn resolve_server(a: &ServerArgs, host: &HostFacts) -> Result<ServerConfig, ConfigError> {
    let cluster_cidr = parse_cidr("cluster-cidr", &a.cluster_cidr)?;
    let service_cidr = parse_cidr("service-cidr", &a.service_cidr)?;
    let node = resolve_node(&a.node, host, cluster_cidr, a.cluster_dns)?;
    let range = a
        .service_node_port_range
        .split_once('-')
        .and_then(|(lo, hi)| Some((lo.trim().parse::<u16>().ok()?, hi.trim().parse::<u16>().ok()?)))
        .filter(|(lo, hi)| lo <= hi && *lo > 0)
        .ok_or_else(|| ConfigError::BadPortRange(a.service_node_port_range.clone()))?;
    let mode = u32::from_str_radix(a.write_kubeconfig_mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| ConfigError::BadMode(a.write_kubeconfig_mode.clone()))?;
    let datastore = resolve_datastore(a)?;
    Ok(ServerConfig {
        listen: SocketAddr::new(a.bind_address, a.https_listen_port),
        advertise_address: a.advertise_address.unwrap_or(node.node_ip),
        node,
        tls_sans: a.tls_san.clone(),
        write_kubeconfig: a.write_kubeconfig.clone(),
        write_kubeconfig_mode: mode,
        token: a.token.clone(),
        token_auth_file: a.token_auth_file.clone(),
        cluster_init: a.cluster_init,
        join_server: a.server.clone(),
        cluster_reset: a.cluster_reset,
        service_cidr,
        node_port_range: range,
        disable_agent: a.disable_agent,
        disable: a.disable.clone(),
        datastore_endpoint: a.datastore_endpoint.clone(),
        datastore,
        hpa_sync_period: a.horizontal_pod_autoscaler_sync_period,
    })
}

/// A Go-style duration of one unit (`15s`, `500ms`, `2m`, `1h`), as upstream's duration flags
/// take them; at least one millisecond.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 =
        num.parse().map_err(|_| format!("invalid duration {s:?}: expected a number and a unit (15s, 500ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration {s:?}: the unit must be ms, s, m or h")),
    };
    let d = std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d < std::time::Duration::from_millis(1) {
        return Err(format!("invalid duration {s:?}: must be at least 1ms"));
    }
    Ok(d)
}

/// `--datastore-endpoint` and its TLS files. Servers sharing an etcd are peers of the etcd,
/// not of each other: the embedded store's HA flags make no sense with it (k3s likewise
/// ignores `--cluster-init` with an external datastore; refusing says so).
fn resolve_datastore(a: &ServerArgs) -> Result<Option<crate::store::etcd::EtcdConfig>, ConfigError> {
    let Some(ep) = a.datastore_endpoint.as_deref() else {
        if a.datastore_cafile.is_some() || a.datastore_certfile.is_some() || a.datastore_keyfile.is_some() {
            return Err(ConfigError::Datastore(
                "--datastore-cafile/--datastore-certfile/--datastore-keyfile need --datastore-endpoint".into(),
            ));
        }
        return Ok(None);
    };
    let refuse = |flag: &str, why: &str| {
        Err(ConfigError::Datastore(format!("{flag} cannot be used with --datastore-endpoint: {why}")))
    };
    if a.cluster_init {
        return refuse(
            "--cluster-init",
            "it starts the embedded store's HA group; servers on one etcd share it directly (start each with the same --datastore-endpoint and --token)",
        );
    }
    if a.server.is_some() {
        return refuse(
            "--server",
            "joining is for the embedded store; servers on one etcd share it directly (start each with the same --datastore-endpoint)",
        );
    }
    if a.cluster_reset {
        return refuse(
            "--cluster-reset",
            "it resets the embedded store; manage the etcd cluster's membership with etcdctl",
        );
    }
    if a.snapshot_schedule_cron.is_some() {
        return refuse(
            "--snapshot-schedule-cron",
            "snapshots of an external etcd are etcd's job (etcdctl snapshot save)",
        );
    }
    let mut c = crate::store::etcd::EtcdConfig::new(ep).map_err(ConfigError::Datastore)?;
    c.ca_file = a.datastore_cafile.clone();
    c.cert_file = a.datastore_certfile.clone();
    c.key_file = a.datastore_keyfile.clone();
    if c.cert_file.is_some() != c.key_file.is_some() {
        return Err(ConfigError::Datastore("--datastore-certfile and --datastore-keyfile go together".into()));
    }
    let https = c.endpoints.iter().any(|e| e.starts_with("https://"));
    if https && c.ca_file.is_none() {
        return Err(ConfigError::Datastore(
            "an https:// --datastore-endpoint needs --datastore-cafile (the CA of etcd's serving certificates)".into(),
        ));
    }
    if !https && (c.ca_file.is_some() || c.cert_file.is_some()) {
        return Err(ConfigError::Datastore("--datastore-cafile/--datastore-certfile need an https:// endpoint".into()));
    }
    Ok(Some(c))
}

pub fn resolve_agent(a: &AgentArgs, host: &HostFacts) -> Result<AgentConfig, ConfigError> {
    // An agent learns the cluster CIDR and DNS address from the server; these are the defaults.
    let cluster_cidr = Cidr::parse("10.42.0.0/16").ok_or(ConfigError::NoNodeIp)?;
    let node = resolve_node(&a.node, host, cluster_cidr, IpAddr::V4(Ipv4Addr::new(10, 43, 0, 10)))?;
    Ok(AgentConfig { node, server: a.server.clone(), token: a.token.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn host() -> HostFacts {
        HostFacts { hostname: "Box1".into(), first_ip: Some("192.0.2.5".parse().unwrap()) }
    }

    fn server(args: &[&str]) -> Result<ServerConfig, ConfigError> {
        let mut v = vec!["skiff", "server"];
        v.extend_from_slice(args);
        match Cli::parse_from(v).command {
            Command::Server(s) => resolve_server(&s, &host()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_follow_k3s() {
        let c = server(&[]).unwrap();
        assert_eq!(c.node.node_name, "box1");
        assert_eq!(c.listen.port(), 6443);
        assert_eq!(c.service_cidr.to_string(), "10.43.0.0/16");
        assert_eq!(c.node.cluster_cidr.to_string(), "10.42.0.0/16");
        assert_eq!(c.node_port_range, (30000, 32767));
        assert_eq!(c.write_kubeconfig_mode, 0o600);
        assert_eq!(c.advertise_address.to_string(), "192.0.2.5");
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        assert!(matches!(server(&["--cluster-cidr", "10.42/16"]), Err(ConfigError::BadCidr { .. })));
        assert!(matches!(server(&["--service-node-port-range", "9-1"]), Err(ConfigError::BadPortRange(_))));
        assert!(matches!(server(&["--node-taint", "a=b:Sometimes"]), Err(ConfigError::BadTaint(_))));
        assert!(matches!(server(&["--node-label", "=x"]), Err(ConfigError::BadLabel(_))));
        assert!(matches!(server(&["--node-name", "Bad_Name"]), Err(ConfigError::BadNodeName(_))));
        assert!(matches!(server(&["--write-kubeconfig-mode", "0999"]), Err(ConfigError::BadMode(_))));
    }

    #[test]
    fn an_external_etcd_takes_k3s_datastore_flags_and_refuses_embedded_store_flags() {
        let c = server(&[
            "--datastore-endpoint",
            "https://e1:2379,https://e2:2379",
            "--datastore-cafile",
            "/ca.crt",
            "--datastore-certfile",
            "/c.crt",
            "--datastore-keyfile",
            "/c.key",
        ])
        .unwrap();
        let d = c.datastore.unwrap();
        assert_eq!(d.endpoints, vec!["https://e1:2379", "https://e2:2379"]);
        assert_eq!(d.key_file, Some(PathBuf::from("/c.key")));
        assert!(server(&["--datastore-endpoint", "http://127.0.0.1:2379"]).unwrap().datastore.is_some());
        assert!(server(&[]).unwrap().datastore.is_none());
        let err = |args: &[&str]| match server(args) {
            Err(ConfigError::Datastore(m)) => m,
            other => panic!("{args:?}: {other:?}"),
        };
        let ep = ["--datastore-endpoint", "http://127.0.0.1:2379"];
        assert!(err(&[&ep[..], &["--cluster-init"]].concat()).contains("--cluster-init cannot be used"));
        assert!(err(&[&ep[..], &["--server", "https://x:6443"]].concat()).contains("--server cannot be used"));
        assert!(err(&[&ep[..], &["--cluster-reset"]].concat()).contains("etcdctl"));
        assert!(err(&[&ep[..], &["--snapshot-schedule-cron", "0 * * * *"]].concat()).contains("etcd's job"));
        assert!(err(&["--datastore-endpoint", "https://e:2379"]).contains("--datastore-cafile"));
        assert!(err(&["--datastore-endpoint", "postgres://db/k3s"]).contains("only etcd"));
        assert!(err(&["--datastore-cafile", "/ca.crt"]).contains("need --datastore-endpoint"));
    }

    #[test]
    fn labels_and_taints_parse() {
        let c =
            server(&["--node-label", "a=b", "--node-taint", "k=v:NoSchedule", "--node-taint", "x:NoExecute"]).unwrap();
        assert_eq!(c.node.labels, vec![("a".to_string(), "b".to_string())]);
        assert_eq!(c.node.taints[0], Taint { key: "k".into(), value: "v".into(), effect: "NoSchedule".into() });
        assert_eq!(c.node.taints[1].key, "x");
    }

    #[test]
    fn cidr_arithmetic() {
        let c = Cidr::parse("10.42.3.7/24").unwrap();
        assert_eq!(c.addr.to_string(), "10.42.3.0");
        assert!(c.contains("10.42.3.200".parse().unwrap()));
        assert!(!c.contains("10.42.4.1".parse().unwrap()));
        assert_eq!(c.nth(1).unwrap().to_string(), "10.42.3.1");
        assert_eq!(c.nth(256), None);
    }
}
