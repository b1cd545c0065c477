//! The node's pod network: a Linux bridge (`skiff0`) holding the pod CIDR's first address as the
//! pods' gateway, one veth pair per pod (one end on the bridge, the other moved into the pod's
//! pinned network namespace as `eth0`), and on-disk IPAM. Routing between nodes and masquerade
//! are not here.
//!
//! Netlink sockets talk to the network namespace they were opened in, and sysctls under
//! `/proc/sys/net` belong to the opener's namespace too. So every netlink call runs on a
//! dedicated OS thread that first `setns`es into the right namespace (the node's, or the pod's)
//! and drives a current-thread tokio runtime; the thread then exits, and no tokio worker ever
//! changes namespace.

pub mod ipam;

use crate::config::Cidr;
use futures::TryStreamExt;
use ipam::{Ipam, IpamState};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Name of the node bridge.
pub const BRIDGE: &str = "skiff0";

/// Errors of the pod network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The node has no `spec.podCIDR` yet.
    #[error("no pod CIDR set for this node yet; wait for the node controller to assign spec.podCIDR")]
    NoPodCidr,
    /// Every address of the pod CIDR is taken.
    #[error("pod CIDR {0} has no free address; delete pods or give the node a larger CIDR")]
    Exhausted(String),
    /// The IPAM file could not be read or written.
    #[error("IPAM state {path}: {reason}")]
    State { path: String, reason: String },
    /// A netlink request failed.
    #[error("netlink: {op}: {reason}")]
    Netlink { op: String, reason: String },
    /// Entering a network namespace failed.
    #[error("cannot enter network namespace {path}: {reason}; is the agent running as root?")]
    Namespace { path: String, reason: String },
    #[error("{0}")]
    Other(String),
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let op = op.into();
    move |e| NetworkError::Netlink { op, reason: e.to_string() }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| c.get()) == Some(-errno))
}

/// Runs `f` on a fresh OS thread inside the network namespace at `netns` (or the process's own
/// with `None`), with a current-thread tokio runtime, and returns its result.
pub async fn in_netns<T, F, Fut>(netns: Option<PathBuf>, f: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetworkError>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("skiff-netns".into())
        .spawn(move || {
            let run = || -> Result<T, NetworkError> {
                if let Some(p) = &netns {
                    let nserr = |reason: String| NetworkError::Namespace { path: p.display().to_string(), reason };
                    let file = std::fs::File::open(p).map_err(|e| nserr(e.to_string()))?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| nserr(e.to_string()))?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetworkError::Other(format!("tokio runtime: {e}")))?;
                rt.block_on(f())
            };
            let _ = tx.send(run());
        })
        .map_err(|e| NetworkError::Other(format!("spawn thread: {e}")))?;
    rx.await.map_err(|_| NetworkError::Other("network thread panicked".into()))?
}

fn connect() -> Result<Handle, NetworkError> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| NetworkError::Netlink { op: "open socket".into(), reason: e.to_string() })?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("get link {name}"))(e)),
    }
}

async fn set_up(h: &Handle, index: u32, what: &str) -> Result<(), NetworkError> {
    h.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.map_err(nl(format!("set {what} up")))
}

async fn add_addr(h: &Handle, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), NetworkError> {
    match h.address().add(index, IpAddr::V4(ip), prefix).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        Err(e) => Err(nl(format!("add address {ip}/{prefix}"))(e)),
    }
}

/// Creates the bridge with the gateway address and turns on forwarding, in the current netns.
async fn ensure_bridge(gateway: Ipv4Addr, prefix: u8) -> Result<u32, NetworkError> {
    let h = connect()?;
    let index = match link_index(&h, BRIDGE).await? {
        Some(i) => i,
        None => {
            match h.link().add(LinkBridge::new(BRIDGE).build()).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                Err(e) => return Err(nl(format!("create bridge {BRIDGE}"))(e)),
            }
            link_index(&h, BRIDGE)
                .await?
                .ok_or_else(|| NetworkError::Other(format!("bridge {BRIDGE} vanished after creation")))?
        }
    };
    add_addr(&h, index, gateway, prefix).await?;
    set_up(&h, index, BRIDGE).await?;
    // Pods reach anything beyond the bridge only if this namespace forwards. The sysctl file is
    // per network namespace (the opener's), so this never touches another namespace's setting.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
        .map_err(|e| NetworkError::Other(format!("enable ip_forward: {e}")))?;
    Ok(index)
}

/// Host-side and temporary peer names for a pod (interface names hold at most 15 bytes).
pub fn veth_names(uid: &str) -> (String, String) {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(uid.as_bytes()));
    (format!("veth{}", &h[..11]), format!("vtmp{}", &h[..11]))
}

/// The pod network of one node.
pub struct PodNetwork {
    node_netns: Option<PathBuf>,
    ipam: Mutex<Ipam>,
}

/// What a pod got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

impl PodNetwork {
    /// `state_dir` holds `ipam.json`; `node_netns` is the network namespace the node lives in
    /// (`None`: the agent process's own).
    pub fn new(state_dir: &Path, node_netns: Option<PathBuf>) -> Result<PodNetwork, NetworkError> {
        let ipam = Ipam::load(&state_dir.join("ipam.json"))?;
        Ok(PodNetwork { node_netns, ipam: Mutex::new(ipam) })
    }

    fn with_ipam<T>(&self, f: impl FnOnce(&mut Ipam) -> Result<T, NetworkError>) -> Result<T, NetworkError> {
        let mut g = self.ipam.lock().map_err(|_| NetworkError::Other("IPAM lock poisoned".into()))?;
        f(&mut g)
    }

    /// The pod CIDR, if set.
    pub fn pod_cidr(&self) -> Option<Cidr> {
        self.with_ipam(|i| Ok(i.state().cidr.as_deref().and_then(Cidr::parse))).ok().flatten()
    }

    /// The address a pod holds.
    pub fn ip_of(&self, uid: &str) -> Option<Ipv4Addr> {
        self.with_ipam(|i| Ok(i.state().lookup(uid))).ok().flatten()
    }

    /// Frees the addresses of pods `keep` says are gone (their sandbox directory vanished), so a
    /// lost pod cannot hold an address forever. Returns the uids released.
    pub fn release_stale(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<String>, NetworkError> {
        self.with_ipam(|i| {
            i.update(|s| {
                let gone: Vec<String> = s.allocations.values().filter(|u| !keep(u)).cloned().collect();
                for u in &gone {
                    s.release(u);
                }
                Ok(gone)
            })
        })
    }

    /// Records the node's pod CIDR and creates the bridge with its gateway address.
    pub async fn set_pod_cidr(&self, cidr: Cidr) -> Result<(), NetworkError> {
        self.with_ipam(|i| {
            i.update(|s| {
                s.set_cidr(cidr);
                Ok(())
            })
        })?;
        let gw = IpamState::gateway(cidr).ok_or(NetworkError::Exhausted(cidr.to_string()))?;
        in_netns(self.node_netns.clone(), move || ensure_bridge(gw, cidr.prefix)).await?;
        Ok(())
    }

    /// Gives the pod an IP and wires its network namespace to the bridge. Idempotent: a pod that
    /// already has its veth keeps it.
    pub async fn attach(&self, uid: &str, pod_netns: &Path) -> Result<Attachment, NetworkError> {
        let cidr = self.pod_cidr().ok_or(NetworkError::NoPodCidr)?;
        let gateway = IpamState::gateway(cidr).ok_or(NetworkError::Exhausted(cidr.to_string()))?;
        let ip = self.with_ipam(|i| i.update(|s| s.allocate(uid)))?;
        let (host, peer) = veth_names(uid);
        let pod_ns = pod_netns.to_path_buf();
        let prefix = cidr.prefix;
        let res = async {
            let moved = {
                let (host, peer, pod_ns) = (host.clone(), peer.clone(), pod_ns.clone());
                in_netns(self.node_netns.clone(), move || async move {
                    let bridge = ensure_bridge(gateway, prefix).await?;
                    let h = connect()?;
                    if link_index(&h, &host).await?.is_some() {
                        // The host end exists: either fully wired (a retry) or half-made after a
                        // crash. Start over so the pod end is certainly in the pod namespace.
                        let i = link_index(&h, &host).await?.unwrap_or_default();
                        h.link().del(i).execute().await.map_err(nl(format!("delete stale {host}")))?;
                    }
                    h.link()
                        .add(LinkVeth::new(&host, &peer).build())
                        .execute()
                        .await
                        .map_err(nl(format!("create veth {host}")))?;
                    let pi = link_index(&h, &peer)
                        .await?
                        .ok_or_else(|| NetworkError::Other(format!("veth peer {peer} missing")))?;
                    let ns = std::fs::File::open(&pod_ns).map_err(|e| NetworkError::Namespace {
                        path: pod_ns.display().to_string(),
                        reason: e.to_string(),
                    })?;
                    h.link()
                        .set(LinkUnspec::new_with_index(pi).setns_by_fd(ns.as_raw_fd()).build())
                        .execute()
                        .await
                        .map_err(nl("move veth into pod"))?;
                    let hi = link_index(&h, &host)
                        .await?
                        .ok_or_else(|| NetworkError::Other(format!("veth {host} missing")))?;
                    h.link()
                        .set(LinkUnspec::new_with_index(hi).controller(bridge).up().build())
                        .execute()
                        .await
                        .map_err(nl(format!("attach {host} to {BRIDGE}")))?;
                    Ok(())
                })
                .await
            };
            moved?;
            in_netns(Some(pod_ns), move || async move {
                let h = connect()?;
                if let Some(lo) = link_index(&h, "lo").await? {
                    set_up(&h, lo, "lo").await?;
                }
                let pi = link_index(&h, &peer)
                    .await?
                    .ok_or_else(|| NetworkError::Other(format!("veth {peer} not in pod namespace")))?;
                h.link()
                    .set(LinkUnspec::new_with_index(pi).name("eth0").build())
                    .execute()
                    .await
                    .map_err(nl("rename pod interface to eth0"))?;
                add_addr(&h, pi, ip, prefix).await?;
                set_up(&h, pi, "eth0").await?;
                let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(pi).build();
                match h.route().add(route).execute().await {
                    Ok(()) => Ok(()),
                    Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
                    Err(e) => Err(nl("add default route")(e)),
                }
            })
            .await
        }
        .await;
        if let Err(e) = &res {
            tracing::warn!(pod_uid = uid, error = %e, "pod network setup failed");
        }
        res.map(|()| Attachment { ip, gateway, prefix })
    }

    /// Deletes the pod's veth (its peer goes with it) and frees the IP. Idempotent.
    pub async fn detach(&self, uid: &str) -> Result<(), NetworkError> {
        let (host, _) = veth_names(uid);
        in_netns(self.node_netns.clone(), move || async move {
            let h = connect()?;
            if let Some(i) = link_index(&h, &host).await? {
                match h.link().del(i).execute().await {
                    Ok(()) => {}
                    Err(e) if is_errno(&e, libc::ENODEV) => {}
                    Err(e) => return Err(nl(format!("delete {host}"))(e)),
                }
            }
            Ok(())
        })
        .await?;
        self.with_ipam(|i| i.update(|s| Ok(s.release(uid))))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_vanished_pods_are_released_and_the_rest_kept() {
        let d = tempfile::tempdir().unwrap();
        let n = PodNetwork::new(d.path(), None).unwrap();
        n.with_ipam(|i| {
            i.update(|s| {
                s.set_cidr(Cidr::parse("10.42.0.0/24").unwrap());
                s.allocate("alive")?;
                s.allocate("gone").map(|_| ())
            })
        })
        .unwrap();
        assert_eq!(n.release_stale(|u| u == "alive").unwrap(), vec!["gone".to_string()]);
        let again = PodNetwork::new(d.path(), None).unwrap();
        assert!(again.ip_of("alive").is_some());
        assert!(again.ip_of("gone").is_none());
    }

    #[test]
    fn veth_names_fit_the_kernel_limit_and_differ_per_pod() {
        let (a, b) = veth_names("0b9d2c1e-aaaa-bbbb-cccc-123456789012");
        assert!(a.len() <= 15 && b.len() <= 15);
        assert_ne!(a, b);
        assert_ne!(veth_names("x").0, veth_names("y").0);
    }
}
