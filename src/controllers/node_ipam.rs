//! Node IPAM (upstream `pkg/controller/nodeipam`, range allocator): every Node without
//! `spec.podCIDR` gets the next free /24 of `--cluster-cidr`, written to `spec.podCIDR` and
//! `spec.podCIDRs`. The agent's pod network reads it from there.
//!
//! No CIDR is ever handed out twice: allocation waits for the initial node list, rebuilds the
//! used set from it (and again after every re-list), and remembers allocations whose patch the
//! watch has not shown yet. A deleted node's CIDR is released.

use crate::config::Cidr;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Upstream `--node-cidr-mask-size` default for IPv4.
pub const NODE_MASK: u8 = 24;

/// Why the allocator cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IpamError {
    /// The cluster network is smaller than one node's share.
    #[error("--cluster-cidr {cluster} is smaller than a /{node_mask} per node: use a prefix of /{node_mask} or shorter (e.g. 10.42.0.0/16)")]
    ClusterTooSmall { cluster: Cidr, node_mask: u8 },
    /// Every node-sized block is taken.
    #[error("--cluster-cidr {0} has no free /{NODE_MASK} left for another node")]
    Exhausted(Cidr),
}

/// Hands out node-sized blocks of the cluster network (upstream `cidrset.CidrSet`).
#[derive(Debug, Clone)]
pub struct Allocator {
    cluster: Cidr,
    node_mask: u8,
    used: BTreeSet<u32>,
    /// Where the next search starts, so a just-released block is not reused at once.
    next: u32,
}

impl Allocator {
    pub fn new(cluster: Cidr, node_mask: u8) -> Result<Allocator, IpamError> {
        if node_mask < cluster.prefix || node_mask > 30 {
            return Err(IpamError::ClusterTooSmall { cluster, node_mask });
        }
        Ok(Allocator { cluster, node_mask, used: BTreeSet::new(), next: 0 })
    }

    fn blocks(&self) -> u32 {
        1u32 << (self.node_mask - self.cluster.prefix).min(31)
    }

    fn block(&self, i: u32) -> Cidr {
        let base = u32::from(self.cluster.addr) + (i << (32 - self.node_mask as u32));
        Cidr { addr: Ipv4Addr::from(base), prefix: self.node_mask }
    }

    /// The block index of `cidr` if it is one of ours.
    fn index(&self, cidr: &str) -> Option<u32> {
        let c = Cidr::parse(cidr)?;
        if c.prefix != self.node_mask || !self.cluster.contains(c.addr) {
            return None;
        }
        Some((u32::from(c.addr) - u32::from(self.cluster.addr)) >> (32 - self.node_mask as u32))
    }

    /// Marks a CIDR some node already has as taken. Returns false for CIDRs outside our range
    /// (set by hand or by another allocator), which are left alone.
    pub fn occupy(&mut self, cidr: &str) -> bool {
        match self.index(cidr) {
            Some(i) => {
                self.used.insert(i);
                true
            }
            None => false,
        }
    }

    pub fn release(&mut self, cidr: &str) {
        if let Some(i) = self.index(cidr) {
            self.used.remove(&i);
        }
    }

    /// The next free block, searching round-robin from the last allocation.
    pub fn allocate(&mut self) -> Result<Cidr, IpamError> {
        let n = self.blocks();
        for k in 0..n {
            let i = (self.next + k) % n;
            if !self.used.contains(&i) {
                self.used.insert(i);
                self.next = (i + 1) % n;
                return Ok(self.block(i));
            }
        }
        Err(IpamError::Exhausted(self.cluster))
    }

    pub fn clear(&mut self) {
        self.used.clear();
    }
}

fn pod_cidr(node: &Node) -> Option<String> {
    node.spec.as_ref().and_then(|s| s.pod_cidr.clone()).filter(|c| !c.is_empty())
}

/// Runs the allocator until `shutdown` fires.
pub async fn run(client: kube::Client, cluster: Cidr, shutdown: CancellationToken) {
    let mut alloc = match Allocator::new(cluster, NODE_MASK) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "node IPAM disabled");
            return;
        }
    };
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    // Allocations patched but not yet seen through the watch: node name → CIDR.
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut listing: Vec<Node> = vec![];
    let mut retry: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                for name in std::mem::take(&mut retry) {
                    match api.get_opt(&name).await {
                        Ok(Some(n)) => handle(&api, &mut alloc, &mut pending, &mut retry, n).await,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, node = %name, "node IPAM: could not re-read node");
                            retry.insert(name);
                        }
                    }
                }
                continue;
            }
            ev = stream.next() => match ev { Some(ev) => ev, None => return },
        };
        match ev {
            Err(e) => {
                tracing::warn!(error = %e, "node IPAM: node watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(n)) => listing.push(n),
            Ok(watcher::Event::InitDone) => {
                // Rebuild the used set from the full list before handing anything out.
                alloc.clear();
                for n in &listing {
                    if let Some(c) = pod_cidr(n) {
                        pending.remove(&n.name_any());
                        alloc.occupy(&c);
                    }
                }
                for c in pending.values() {
                    alloc.occupy(c);
                }
                for n in std::mem::take(&mut listing) {
                    handle(&api, &mut alloc, &mut pending, &mut retry, n).await;
                }
            }
            Ok(watcher::Event::Apply(n)) => handle(&api, &mut alloc, &mut pending, &mut retry, n).await,
            Ok(watcher::Event::Delete(n)) => {
                if let Some(c) = pod_cidr(&n) {
                    alloc.release(&c);
                }
                if let Some(c) = pending.remove(&n.name_any()) {
                    alloc.release(&c);
                }
            }
        }
    }
}

async fn handle(
    api: &Api<Node>,
    alloc: &mut Allocator,
    pending: &mut HashMap<String, String>,
    retry: &mut BTreeSet<String>,
    node: Node,
) {
    let name = node.name_any();
    if let Some(c) = pod_cidr(&node) {
        pending.remove(&name);
        alloc.occupy(&c);
        return;
    }
    if node.metadata.deletion_timestamp.is_some() || pending.contains_key(&name) {
        return;
    }
    let cidr = match alloc.allocate() {
        Ok(c) => c.to_string(),
        Err(e) => {
            tracing::error!(error = %e, node = %name, "node IPAM: cannot give the node a pod CIDR");
            retry.insert(name);
            return;
        }
    };
    let patch = serde_json::json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            tracing::info!(node = %name, pod_cidr = %cidr, "allocated pod CIDR");
            pending.insert(name, cidr);
        }
        Err(e) => {
            tracing::warn!(error = %e, node = %name, "node IPAM: could not set podCIDR; retrying");
            alloc.release(&cidr);
            retry.insert(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cidr {
        Cidr::parse("10.42.0.0/16").unwrap_or(Cidr { addr: Ipv4Addr::new(10, 42, 0, 0), prefix: 16 })
    }

    #[test]
    fn nodes_get_consecutive_slash_24s_of_the_cluster_cidr() -> Result<(), IpamError> {
        let mut a = Allocator::new(cluster(), 24)?;
        assert_eq!(a.allocate()?.to_string(), "10.42.0.0/24");
        assert_eq!(a.allocate()?.to_string(), "10.42.1.0/24");
        Ok(())
    }

    #[test]
    fn cidrs_existing_nodes_hold_are_never_handed_out_again() -> Result<(), IpamError> {
        let mut a = Allocator::new(cluster(), 24)?;
        assert!(a.occupy("10.42.0.0/24"));
        assert!(a.occupy("10.42.1.0/24"));
        assert!(!a.occupy("192.168.0.0/24"), "foreign CIDRs are ignored");
        assert_eq!(a.allocate()?.to_string(), "10.42.2.0/24");
        Ok(())
    }

    #[test]
    fn released_cidrs_are_reused_only_after_the_rest_of_the_range() -> Result<(), IpamError> {
        let small = Cidr::parse("10.0.0.0/23").unwrap_or(cluster());
        let mut a = Allocator::new(small, 24)?;
        let first = a.allocate()?;
        let second = a.allocate()?;
        assert_eq!(a.allocate(), Err(IpamError::Exhausted(small)));
        a.release(&first.to_string());
        assert_eq!(a.allocate()?, first);
        assert_ne!(first, second);
        Ok(())
    }

    #[test]
    fn a_cluster_cidr_smaller_than_a_node_block_is_refused() {
        let tiny = Cidr::parse("10.0.0.0/25").unwrap_or(cluster());
        assert!(matches!(Allocator::new(tiny, 24), Err(IpamError::ClusterTooSmall { .. })));
    }
}
