//! `skiff server`: start order store → PKI and kubeconfig → API server → bootstrap objects →
//! controllers and scheduler → the node's own agent. Each step waits for the previous one's
//! readiness explicitly; nothing sleeps to let another part start.

pub mod bootstrap;
pub mod join;
pub mod shared_pki;
pub mod snapshot;

use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::pki::{self, ClusterPki, Leaf};
use crate::store::Store;

/// Everything `run` started, for in-process tests.
pub struct Running {
    pub admin_kubeconfig: String,
    pub port: u16,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Why the server stopped on its own (it was removed from the cluster), if it did.
    pub removed: Arc<std::sync::OnceLock<String>>,
}

pub async fn run(cfg: ServerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| {
        format!("cannot listen on {}: is another server running? (--https-listen-port)", cfg.listen)
    })?;
    let running = start(cfg, listener, shutdown.clone()).await?;
    shutdown.cancelled().await;
    for t in running.tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
    }
    match running.removed.get() {
        Some(why) => Err(anyhow::anyhow!("{why}")),
        None => Ok(()),
    }
}

/// Connects to the external etcd of `--datastore-endpoint`, if there is one (no peer routes:
/// servers sharing an etcd need none; they share the cluster PKI through it, [`shared_pki`]).
async fn open_external_store(cfg: &ServerConfig) -> anyhow::Result<Option<Arc<dyn Store>>> {
    let Some(etcd) = &cfg.datastore else { return Ok(None) };
    snapshot::mark_datastore(&cfg.node.data_dir, Some(&etcd.endpoints.join(",")))?;
    let db = cfg.node.data_dir.join("server/db");
    if db.exists() {
        tracing::warn!(dir = %db.display(), "this data dir holds an embedded store, which is not used with --datastore-endpoint");
    }
    let store =
        crate::store::etcd::EtcdStore::connect(etcd.clone()).await.context("connecting to the external etcd")?;
    Ok(Some(Arc::new(store)))
}

/// Opens the embedded Raft store (alone, first of an HA group, or joined through
/// [`join::prepare`]) with its peer routes on the HTTPS port.
async fn open_store(
    cfg: &ServerConfig,
    pki: &ClusterPki,
    listener: &tokio::net::TcpListener,
    serving: (&str, &str),
    node_id: u64,
    removal: &join::Removed,
) -> anyhow::Result<(Arc<dyn Store>, Option<join::PeerRoutesUntilApi>)> {
    snapshot::mark_datastore(&cfg.node.data_dir, cfg.datastore.as_ref().map(|d| d.endpoints.join(",")).as_deref())?;
    let (store, handoff) = join::open_raft(cfg, pki, listener, serving, node_id, removal).await?;
    Ok((store, handoff))
}

/// Starts every server component on an already-bound listener.
pub async fn start(
    cfg: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let data = cfg.node.data_dir.clone();
    let port = listener.local_addr()?.port();
    let node_id = join::prepare(&cfg, port).await?;
    let tls_dir = data.join("server/tls");

    // Join token (the distribution issue uses it for agents and servers joining).
    let token_path = data.join("server/token");
    if !token_path.exists() {
        let secret = cfg.token.clone().unwrap_or_else(|| {
            use rand::Rng;
            let b: [u8; 16] = rand::thread_rng().gen();
            hex::encode(b)
        });
        pki::write_file(&token_path, secret.as_bytes(), 0o600)?;
    }
    let external = open_external_store(&cfg).await?;
    if let Some(store) = &external {
        let token =
            std::fs::read_to_string(&token_path).with_context(|| format!("reading {}", token_path.display()))?;
        shared_pki::sync(store.as_ref(), &tls_dir, token.trim())
            .await
            .context("sharing the cluster PKI through the datastore")?;
    }
    let pki = ClusterPki::load_or_create(&tls_dir).context("creating the cluster PKI")?;

    // Serving certificate: every name clients may use to reach us.
    let first_service_ip = cfg.service_cidr.nth(1).unwrap_or(Ipv4Addr::new(10, 43, 0, 1));
    let mut sans: Vec<String> = vec![
        "127.0.0.1".into(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        first_service_ip.to_string(),
        cfg.node.node_ip.to_string(),
        cfg.advertise_address.to_string(),
        cfg.node.node_name.clone(),
        hostname(),
    ];
    sans.extend(cfg.tls_sans.iter().cloned());
    if !cfg.listen.ip().is_unspecified() {
        sans.push(cfg.listen.ip().to_string());
    }
    let mut seen = std::collections::HashSet::new();
    sans.retain(|s| !s.is_empty() && seen.insert(s.clone()));
    let (serving_cert, serving_key) =
        pki.leaf("serving-kube-apiserver", &Leaf::Server { cn: "kube-apiserver".into(), sans })?;

    // Admin kubeconfig.
    let (admin_cert, admin_key) =
        pki.leaf("client-admin", &Leaf::Client { cn: "system:admin".into(), groups: vec!["system:masters".into()] })?;
    let local_url = format!("https://127.0.0.1:{port}");
    let admin_kubeconfig = pki::kubeconfig(&local_url, &pki.server_ca.cert_pem, &admin_cert, &admin_key);
    pki::write_file(&data.join("server/cred/admin.kubeconfig"), admin_kubeconfig.as_bytes(), 0o600)?;
    pki::write_file(&cfg.write_kubeconfig, admin_kubeconfig.as_bytes(), cfg.write_kubeconfig_mode).with_context(
        || format!("writing the kubeconfig to {} (--write-kubeconfig)", cfg.write_kubeconfig.display()),
    )?;

    let removal = join::Removed::new(shutdown.clone());
    // A joiner serves its Raft routes on its own until the API server below takes them over.
    let (store, peer_routes) = match external {
        Some(store) => (store, None),
        None => open_store(&cfg, &pki, &listener, (&serving_cert, &serving_key), node_id, &removal).await?,
    };
    let (kc_cert, kc_key) = pki.leaf(
        "client-kube-apiserver-kubelet",
        &Leaf::Client { cn: "kube-apiserver-kubelet-client".into(), groups: vec!["system:masters".into()] },
    )?;
    let advertise = match cfg.advertise_address {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        a => format!("{a}:{port}"),
    };
    let dns_ip = match cfg.node.cluster_dns {
        IpAddr::V4(a) => Some(a),
        _ => None,
    };
    // Like the bootstrap objects below: ride through a store briefly without a quorum (a
    // joiner's first reads can meet an election) instead of exiting.
    let authz = while_store_unavailable("loading the RBAC policy", &shutdown, || async {
        Ok(crate::api::auth::Authorizer::start(store.clone()).await?)
    })
    .await?;
    let sa_signer =
        crate::api::auth::tokens::Signer::from_pem(&pki.service_account_key_pem).map_err(|e| anyhow::anyhow!("{e}"))?;
    let static_tokens = match &cfg.token_auth_file {
        Some(path) => {
            let f = crate::api::auth::tokenfile::TokenFile::load(path)?;
            tracing::info!(file = %path.display(), tokens = f.len(), "static bearer tokens loaded");
            Some(f)
        }
        None => None,
    };
    let state = Arc::new(crate::api::ApiState {
        authz,
        sa_signer,
        static_tokens,
        store,
        service_cidr: cfg.service_cidr,
        reserved_ips: [Some(first_service_ip), dns_ip].into_iter().flatten().collect(),
        node_port_range: cfg.node_port_range,
        kubelet: crate::api::logs::kubelet_client(&kc_cert, &kc_key)?,
        max_body: 3 * 1024 * 1024,
        advertise,
        registry: Arc::new(crate::registry::Registry::new()),
        metrics: Default::default(),
    });
    while_store_unavailable("loading the CustomResourceDefinitions", &shutdown, || async {
        Ok(crate::api::crd::start(state.clone()).await?)
    })
    .await?;
    let tls = crate::api::tls_config(&serving_cert, &serving_key, &pki.client_ca.cert_pem)?;
    let mut tasks = Vec::new();
    let (st, sd) = (state.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::api::serve(listener, tls, st, sd).await {
            tracing::error!(error = %e, "API server stopped");
        }
    }));
    drop(peer_routes);
    // In an HA group the store can be briefly without a leader (one just died, an election
    // is on): wait that out rather than exit, as a server is expected to ride through it.
    while_store_unavailable("creating the cluster's built-in objects", &shutdown, || {
        bootstrap::objects(&state, &cfg, first_service_ip, port)
    })
    .await?;
    crate::api::namespaces::resume(state.clone()).await;
    tracing::info!(url = %local_url, kubeconfig = %cfg.write_kubeconfig.display(), "API server ready");

    // In-process clients: each component with its own identity.
    let client_for = |cn: &str, groups: Vec<String>, file: &str| -> anyhow::Result<String> {
        let (c, k) = pki.leaf(file, &Leaf::Client { cn: cn.into(), groups })?;
        Ok(pki::kubeconfig(&local_url, &pki.server_ca.cert_pem, &c, &k))
    };
    let cm_kc = client_for("system:kube-controller-manager", vec![], "client-controller")?;
    let sched_kc = client_for("system:kube-scheduler", vec![], "client-scheduler")?;
    let cm = crate::client::new(kube_config(&cm_kc).await?)?;
    let sched = crate::client::new(kube_config(&sched_kc).await?)?;
    let mut ccfg = crate::controllers::ControllerConfig::new(
        cfg.node.cluster_cidr,
        pki.server_ca.cert_pem.clone(),
        cfg.disable.clone(),
    );
    ccfg.local_path_dir = data.join("storage");
    ccfg.hpa_sync_period = cfg.hpa_sync_period;
    ccfg.csr_signing = Some(Arc::new(crate::controllers::csr::SigningKeys {
        client_ca_cert: pki.client_ca.cert_pem.clone(),
        client_ca_key: pki.client_ca.key_pem(),
        server_ca_cert: pki.server_ca.cert_pem.clone(),
        server_ca_key: pki.server_ca.key_pem(),
    }));
    // One pod watch for the controllers and the scheduler, whichever of them leads here.
    let pod_hub = crate::controllers::informer::PodHub::new(cm.clone());
    let sd = shutdown.clone();
    let hub = pod_hub.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::controllers::run(cm, ccfg, hub, sd).await {
            tracing::error!(error = %e, "controllers stopped");
        }
    }));
    let sd = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::scheduler::run(sched, pod_hub, sd).await {
            tracing::error!(error = %e, "scheduler stopped");
        }
    }));

    if !cfg.disable_agent {
        let node_kc = client_for(
            &format!("system:node:{}", cfg.node.node_name),
            vec!["system:nodes".into()],
            &format!("client-node-{}", cfg.node.node_name),
        )?;
        let mut node = cfg.node.clone();
        node.labels.push(("node-role.kubernetes.io/control-plane".into(), "true".into()));
        node.labels.push(("node-role.kubernetes.io/master".into(), "true".into()));
        let creds = crate::agent::AgentCredentials {
            kube: kube_config(&node_kc).await?,
            kubelet_client_ca_pem: pki.client_ca.cert_pem.clone(),
        };
        let sd = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::agent::run(node, creds, sd.clone()).await {
                tracing::error!(error = %format!("{e:#}"), "agent stopped");
            }
        }));
    }
    Ok(Running { admin_kubeconfig, port, tasks, removed: removal.why })
}

/// A kube-rs configuration from kubeconfig YAML.
/// Runs `step` until it succeeds, retrying with backoff (200 ms doubling to 5 s) while it fails
/// only because the store is unavailable (no Raft leader, a quorum being re-formed) and the
/// server is not shutting down; any other error ends it, in the context `what`.
async fn while_store_unavailable<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if bootstrap::is_transient(&e) && !shutdown.is_cancelled() => {
                tracing::warn!(error = %e, "{what}: the store is unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e.context(what.to_string())),
        }
    }
}

pub async fn kube_config(yaml: &str) -> anyhow::Result<kube::Config> {
    let kc = kube::config::Kubeconfig::from_yaml(yaml)?;
    Ok(kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?)
}

/// The machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

/// The source address of the default route, or else the first non-loopback IPv4 address.
pub fn first_ip() -> Option<IpAddr> {
    // Connecting a UDP socket sends nothing; it only asks the kernel which source it would use.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    if s.connect("192.0.2.1:9").is_ok() {
        if let Ok(a) = s.local_addr() {
            if !a.ip().is_unspecified() {
                return Some(a.ip());
            }
        }
    }
    nix::ifaddrs::getifaddrs().ok()?.find_map(|i| {
        let a = i.address?.as_sockaddr_in()?.ip();
        (!a.is_loopback()).then_some(IpAddr::V4(a))
    })
}
