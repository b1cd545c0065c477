//! Command-line argument structs (clap derive). No logic lives here: `config.rs` turns these into
//! validated configuration. Every flag can also come from a `SKIFF_` environment variable and,
//! for the subcommands that flatten [`ConfigFileArgs`], from `/etc/skiff/config.yaml`
//! (`config/file.rs` turns the file into flags placed before the command line's).

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
// Values from the config file are passed as flags ahead of the command line's, so a flag given
// twice must mean "the last one wins" (as Go's flag package, and so k3s, do), not an error.
#[command(name = "skiff", version, about = "A Kubernetes distribution in one executable", args_override_self = true)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `skiff=debug`.
    #[arg(long, global = true, env = "SKIFF_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process; boxing the big server variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (and, unless --disable-agent, a node agent).
    Server(ServerArgs),
    /// Run a node agent that joins an existing server.
    Agent(AgentArgs),
    /// Save, list and restore snapshots of the embedded store.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Container log writer started by containerd's shim (internal).
    #[command(hide = true)]
    Logger(LoggerArgs),
}

/// `--config`: where the k3s-style config file is. `config/file.rs` reads it before clap parses
/// the command line (its values become flags), so this field only makes clap accept the flag
/// and show it in `--help`.
#[derive(Debug, Args, Clone)]
pub struct ConfigFileArgs {
    /// YAML file of flag values (keys are long flag names without the dashes); FILE.d/*.yaml
    /// drop-ins are read after it. Command-line flags override it; it overrides SKIFF_* variables.
    #[arg(long = "config", short = 'c', env = "SKIFF_CONFIG_FILE", value_name = "FILE", default_value = crate::config::file::DEFAULT_PATH)]
    pub config: PathBuf,
}

/// Flags shared by `server` and `agent` that describe the node.
#[derive(Debug, Args, Clone)]
pub struct NodeArgs {
    /// Directory holding all state.
    #[arg(long, env = "SKIFF_DATA_DIR", default_value = "/var/lib/skiff")]
    pub data_dir: PathBuf,
    /// IP address this node advertises (default: the first non-loopback address).
    #[arg(long, env = "SKIFF_NODE_IP")]
    pub node_ip: Option<IpAddr>,
    /// Node name (default: the host name).
    #[arg(long, env = "SKIFF_NODE_NAME")]
    pub node_name: Option<String>,
    /// Label to add to the node, as KEY=VALUE (repeatable).
    #[arg(long = "node-label", env = "SKIFF_NODE_LABEL", value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taint to add to the node, as KEY=VALUE:EFFECT (repeatable).
    #[arg(long = "node-taint", env = "SKIFF_NODE_TAINT", value_delimiter = ',')]
    pub node_taints: Vec<String>,
    /// containerd socket to use; without it the agent starts and manages its own containerd.
    #[arg(long, env = "SKIFF_CONTAINER_RUNTIME_ENDPOINT")]
    pub container_runtime_endpoint: Option<PathBuf>,
    /// containerd namespace for this node's containers.
    #[arg(long, env = "SKIFF_CONTAINERD_NAMESPACE", default_value = "k8s.skiff.io")]
    pub containerd_namespace: String,
    /// Port of the kubelet API (logs, exec, port-forward).
    #[arg(long, env = "SKIFF_KUBELET_PORT", default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Parent cgroup for pods.
    #[arg(long, env = "SKIFF_CGROUP_ROOT", default_value = "skiff")]
    pub cgroup_root: String,
    /// Pod network backend between nodes.
    #[arg(long, env = "SKIFF_FLANNEL_BACKEND", default_value = "vxlan")]
    pub flannel_backend: String,
}

#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    #[command(flatten)]
    pub config: ConfigFileArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Address the API server listens on.
    #[arg(long, env = "SKIFF_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Address other nodes and clients use to reach this server (default: --node-ip).
    #[arg(long, env = "SKIFF_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<IpAddr>,
    /// HTTPS port of the API server.
    #[arg(long, env = "SKIFF_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Extra subject alternative name for the serving certificate (repeatable).
    #[arg(long = "tls-san", env = "SKIFF_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Where to write the admin kubeconfig.
    #[arg(long, env = "SKIFF_WRITE_KUBECONFIG", default_value = "/etc/skiff/skiff.yaml")]
    pub write_kubeconfig: PathBuf,
    /// File mode of the admin kubeconfig (octal).
    #[arg(long, env = "SKIFF_WRITE_KUBECONFIG_MODE", default_value = "0600")]
    pub write_kubeconfig_mode: String,
    /// Shared secret nodes use to join (default: generated, stored in the data dir).
    #[arg(long, env = "SKIFF_TOKEN")]
    pub token: Option<String>,
    /// Static bearer tokens, in kube-apiserver's `--token-auth-file` CSV format:
    /// `token,user,uid[,"group1,group2"]` per line.
    #[arg(long, env = "SKIFF_TOKEN_AUTH_FILE")]
    pub token_auth_file: Option<PathBuf>,
    // The three booleans take an optional value (`--cluster-init`, `--cluster-init=false`), as Go's
    // flags do in k3s, so a config file's `false` is a flag that overrides a SKIFF_ variable's `true`.
    /// Start the first server of a highly available group.
    #[arg(long, env = "SKIFF_CLUSTER_INIT", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub cluster_init: bool,
    /// Join the server group at this URL.
    #[arg(long, env = "SKIFF_SERVER")]
    pub server: Option<String>,
    /// Turn this member back into a one-node cluster, keeping its data.
    #[arg(long, env = "SKIFF_CLUSTER_RESET", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub cluster_reset: bool,
    /// Pod network range.
    #[arg(long, env = "SKIFF_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Service ClusterIP range.
    #[arg(long, env = "SKIFF_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// ClusterIP of the cluster DNS service.
    #[arg(long, env = "SKIFF_CLUSTER_DNS", default_value = "10.43.0.10")]
    pub cluster_dns: IpAddr,
    /// NodePort range.
    #[arg(long, env = "SKIFF_SERVICE_NODE_PORT_RANGE", default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Run only the control plane on this machine.
    #[arg(long, env = "SKIFF_DISABLE_AGENT", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", hide_default_value = true, value_name = "BOOL", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub disable_agent: bool,
    /// Built-in component not to run (repeatable).
    #[arg(long = "disable", env = "SKIFF_DISABLE", value_delimiter = ',')]
    pub disable: Vec<String>,
    /// Use an external etcd instead of the embedded store: https://HOST:2379 or http://HOST:2379,
    /// comma-separated for several members.
    #[arg(long, env = "SKIFF_DATASTORE_ENDPOINT")]
    pub datastore_endpoint: Option<String>,
    /// CA certificate of the etcd servers (for https:// datastore endpoints).
    #[arg(long, env = "SKIFF_DATASTORE_CAFILE")]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate presented to etcd.
    #[arg(long, env = "SKIFF_DATASTORE_CERTFILE")]
    pub datastore_certfile: Option<PathBuf>,
    /// Key of the client certificate presented to etcd.
    #[arg(long, env = "SKIFF_DATASTORE_KEYFILE")]
    pub datastore_keyfile: Option<PathBuf>,
    /// Take store snapshots on this cron schedule (UTC; `M H DOM MON DOW`, `*`, `*/N`, `A-B`, lists).
    #[arg(long, env = "SKIFF_SNAPSHOT_SCHEDULE_CRON")]
    pub snapshot_schedule_cron: Option<String>,
    /// How many scheduled snapshots to keep.
    #[arg(long, env = "SKIFF_SNAPSHOT_RETENTION", default_value_t = 5)]
    pub snapshot_retention: usize,
    /// How often the HorizontalPodAutoscaler controller syncs each HPA (`15s`, `500ms`, `1m`).
    #[arg(long, env = "SKIFF_HORIZONTAL_POD_AUTOSCALER_SYNC_PERIOD", default_value = "15s", value_parser = crate::config::parse_duration)]
    pub horizontal_pod_autoscaler_sync_period: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Ask the running server for a snapshot (written to <data-dir>/server/snapshots).
    Save {
        /// Snapshot name prefix; the file is NAME-<node id>-<unix seconds>.
        #[arg(long, default_value = "on-demand")]
        name: String,
        #[arg(long, env = "SKIFF_DATA_DIR", default_value = "/var/lib/skiff")]
        data_dir: PathBuf,
        #[command(flatten)]
        config: ConfigFileArgs,
    },
    /// List saved snapshots.
    Ls {
        #[arg(long, env = "SKIFF_DATA_DIR", default_value = "/var/lib/skiff")]
        data_dir: PathBuf,
        #[command(flatten)]
        config: ConfigFileArgs,
    },
    /// Restore a snapshot into a stopped server's data dir, as a new one-server cluster.
    Restore {
        /// Snapshot file.
        file: PathBuf,
        #[arg(long, env = "SKIFF_DATA_DIR", default_value = "/var/lib/skiff")]
        data_dir: PathBuf,
        #[command(flatten)]
        config: ConfigFileArgs,
    },
}

#[derive(Debug, Args, Clone)]
pub struct AgentArgs {
    #[command(flatten)]
    pub config: ConfigFileArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    /// URL of a server to join, e.g. https://10.0.0.1:6443.
    #[arg(long, env = "SKIFF_SERVER")]
    pub server: String,
    /// Join token printed by the server (or read from its data dir).
    #[arg(long, env = "SKIFF_TOKEN")]
    pub token: String,
}

#[derive(Debug, Args, Clone)]
pub struct LoggerArgs {
    /// CRI-format log file to append to.
    #[arg(long)]
    pub path: PathBuf,
    /// Attach mode (started by the agent for a container with stdin): the container's FIFO
    /// directory, whose attach socket is removed at exit.
    #[arg(long)]
    pub attach_dir: Option<PathBuf>,
    /// Attach mode: inherited read end of the stdout FIFO.
    #[arg(long)]
    pub stdout_fd: Option<i32>,
    /// Attach mode: inherited read end of the stderr FIFO (none with a tty).
    #[arg(long)]
    pub stderr_fd: Option<i32>,
    /// Attach mode: inherited read-write end of the stdin FIFO.
    #[arg(long)]
    pub stdin_fd: Option<i32>,
    /// Attach mode: inherited listening unix socket for attach clients.
    #[arg(long)]
    pub listen_fd: Option<i32>,
    /// Attach mode: the container has a terminal.
    #[arg(long)]
    pub tty: bool,
    /// Attach mode: the container's stdin closes when its first attached client ends it.
    #[arg(long)]
    pub stdin_once: bool,
}
