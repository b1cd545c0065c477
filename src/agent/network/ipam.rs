//! Pod IP address management for one node's pod CIDR, persisted on disk so an agent restart
//! never hands out an address that a pod still holds. Allocation walks round-robin from the last
//! address given out (as the CNI host-local plugin does), so a freed IP is not reused at once.

use super::NetworkError;
use crate::config::Cidr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The allocator's state: pure data, serialised as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpamState {
    /// The pod CIDR the allocations belong to.
    pub cidr: Option<String>,
    /// Last address handed out; the next search starts after it.
    pub last: Option<Ipv4Addr>,
    /// Address → pod uid.
    pub allocations: BTreeMap<Ipv4Addr, String>,
}

impl IpamState {
    /// The gateway: the network's first host address (`.1` of a /24), held by the node bridge.
    pub fn gateway(cidr: Cidr) -> Option<Ipv4Addr> {
        cidr.nth(1)
    }

    /// Switches to a pod CIDR. Allocations outside it are dropped (their pods cannot keep them).
    pub fn set_cidr(&mut self, cidr: Cidr) {
        let s = cidr.to_string();
        if self.cidr.as_deref() != Some(s.as_str()) {
            self.allocations.retain(|ip, _| cidr.contains(*ip));
            self.last = self.last.filter(|ip| cidr.contains(*ip));
            self.cidr = Some(s);
        }
    }

    /// The address a pod already holds.
    pub fn lookup(&self, uid: &str) -> Option<Ipv4Addr> {
        self.allocations.iter().find(|(_, u)| u.as_str() == uid).map(|(ip, _)| *ip)
    }

    /// Gives the pod an address (the same one again if it has one).
    pub fn allocate(&mut self, uid: &str) -> Result<Ipv4Addr, NetworkError> {
        if let Some(ip) = self.lookup(uid) {
            return Ok(ip);
        }
        let cidr = self.cidr.as_deref().and_then(Cidr::parse).ok_or(NetworkError::NoPodCidr)?;
        // Usable pod addresses: from .2 (after the gateway) to the one before broadcast.
        let first = 2u64;
        let last = cidr.size().saturating_sub(2);
        if last < first {
            return Err(NetworkError::Exhausted(cidr.to_string()));
        }
        let span = last - first + 1;
        let start = self
            .last
            .map(|ip| (u32::from(ip) - u32::from(cidr.addr)) as u64)
            .filter(|n| (first..=last).contains(n))
            .map(|n| n + 1 - first)
            .unwrap_or(0);
        for i in 0..span {
            let n = first + (start + i) % span;
            let Some(ip) = cidr.nth(n) else { continue };
            if let std::collections::btree_map::Entry::Vacant(e) = self.allocations.entry(ip) {
                e.insert(uid.to_string());
                self.last = Some(ip);
                return Ok(ip);
            }
        }
        Err(NetworkError::Exhausted(cidr.to_string()))
    }

    /// Frees the pod's address; unknown pods are fine (release is idempotent).
    pub fn release(&mut self, uid: &str) -> Option<Ipv4Addr> {
        let ip = self.lookup(uid)?;
        self.allocations.remove(&ip);
        Some(ip)
    }
}

/// [`IpamState`] backed by a JSON file, written atomically (temp file, fsync, rename).
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    state: IpamState,
}

impl Ipam {
    pub fn load(path: &Path) -> Result<Ipam, NetworkError> {
        let state = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| NetworkError::State {
                path: path.display().to_string(),
                reason: format!("{e}; move the corrupt file away, running pods will need re-creating"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IpamState::default(),
            Err(e) => return Err(NetworkError::State { path: path.display().to_string(), reason: e.to_string() }),
        };
        Ok(Ipam { path: path.to_path_buf(), state })
    }

    pub fn state(&self) -> &IpamState {
        &self.state
    }

    /// Applies `f` and persists the result before returning, so no caller sees an IP that is
    /// not on disk yet.
    pub fn update<T>(&mut self, f: impl FnOnce(&mut IpamState) -> Result<T, NetworkError>) -> Result<T, NetworkError> {
        let mut next = self.state.clone();
        let out = f(&mut next)?;
        if next != self.state {
            self.save(&next)?;
            self.state = next;
        }
        Ok(out)
    }

    fn save(&self, state: &IpamState) -> Result<(), NetworkError> {
        use std::io::Write;
        let err =
            |e: std::io::Error| NetworkError::State { path: self.path.display().to_string(), reason: e.to_string() };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(c: &str) -> IpamState {
        let mut s = IpamState::default();
        s.set_cidr(Cidr::parse(c).unwrap());
        s
    }

    #[test]
    fn the_first_pod_gets_dot_two_and_the_gateway_is_dot_one() {
        let mut s = state("10.42.0.0/24");
        assert_eq!(s.allocate("a").unwrap(), Ipv4Addr::new(10, 42, 0, 2));
        assert_eq!(IpamState::gateway(Cidr::parse("10.42.0.0/24").unwrap()), Some(Ipv4Addr::new(10, 42, 0, 1)));
    }

    #[test]
    fn allocating_twice_for_one_pod_returns_the_same_address() {
        let mut s = state("10.42.0.0/24");
        let a = s.allocate("a").unwrap();
        assert_eq!(s.allocate("a").unwrap(), a);
        assert_eq!(s.allocations.len(), 1);
    }

    #[test]
    fn a_released_address_is_not_reused_until_the_range_wraps() {
        let mut s = state("10.42.0.0/29"); // hosts .2 … .6
        let a = s.allocate("a").unwrap();
        s.release("a");
        let b = s.allocate("b").unwrap();
        assert_ne!(a, b);
        for u in ["c", "d", "e"] {
            s.allocate(u).unwrap();
        }
        // .2 is the only free one left: the walk wraps around to it.
        assert_eq!(s.allocate("f").unwrap(), a);
        assert!(matches!(s.allocate("g"), Err(NetworkError::Exhausted(_))));
    }

    #[test]
    fn no_cidr_means_no_address() {
        let mut s = IpamState::default();
        assert!(matches!(s.allocate("a"), Err(NetworkError::NoPodCidr)));
    }

    #[test]
    fn changing_the_cidr_drops_allocations_outside_it() {
        let mut s = state("10.42.0.0/24");
        s.allocate("a").unwrap();
        s.set_cidr(Cidr::parse("10.42.1.0/24").unwrap());
        assert!(s.allocations.is_empty());
        assert_eq!(s.allocate("b").unwrap(), Ipv4Addr::new(10, 42, 1, 2));
    }

    #[test]
    fn allocations_survive_a_reload_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ipam.json");
        let mut i = Ipam::load(&p).unwrap();
        let a = i
            .update(|s| {
                s.set_cidr(Cidr::parse("10.42.0.0/24").unwrap());
                s.allocate("a")
            })
            .unwrap();
        let mut j = Ipam::load(&p).unwrap();
        assert_eq!(j.state().lookup("a"), Some(a));
        let b = j.update(|s| s.allocate("b")).unwrap();
        assert_ne!(a, b);
    }
}
