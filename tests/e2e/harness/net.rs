//! Network namespaces for test nodes, and the "switch": one more namespace holding a bridge that
//! every node's `eth0` is plugged into. All links are created directly inside the test's own
//! namespaces (`ip -n`), so the host's interfaces, routes, sysctls and nftables are never touched.

use super::{run_ok, unique_name};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The small private range used only inside the test's namespaces (the switch and its nodes).
/// It stays clear of skiff's default cluster (10.42.0.0/16) and service (10.43.0.0/16) ranges.
pub const SUBNET: [u8; 3] = [172, 31, 250];
pub const PREFIX: u8 = 24;
/// The switch's own address on its bridge; nodes use it as their default gateway. The switch
/// namespace does not forward, so nothing sent there goes anywhere.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1);

const IP_TIMEOUT: Duration = Duration::from_secs(20);

fn ip(args: &[&str]) -> Result<String, String> {
    run_ok(Command::new("ip").args(args), IP_TIMEOUT)
}

/// A network namespace created by this test (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
    /// Inode of the namespace, which identifies every process inside it.
    pub inode: u64,
    deleted: bool,
}

impl Netns {
    /// Creates `skiff-e2e-<pid>-<n>` with its loopback up.
    pub fn create() -> Netns {
        Self::create_named(unique_name())
    }

    pub fn create_named(name: String) -> Netns {
        ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("creating network namespace {name}: {e}"));
        let inode = std::fs::metadata(format!("/var/run/netns/{name}"))
            .unwrap_or_else(|e| panic!("netns {name} has no /var/run/netns entry: {e}"))
            .ino();
        let ns = Netns { name, inode, deleted: false };
        ns.ip(&["link", "set", "lo", "up"]).unwrap_or_else(|e| panic!("lo up in {}: {e}", ns.name));
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `ip -n NAME ARGS…` (ip switches namespaces in its own process only).
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside this namespace: `nsenter --net=PATH -- program`.
    /// (Not `ip netns exec`, which also remounts /sys.)
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        c
    }

    /// Deletes the namespace (idempotent). Processes still inside keep it alive, so callers kill
    /// them first (see `cleanup`).
    pub fn delete(&mut self) {
        if self.deleted {
            return;
        }
        self.deleted = true;
        if self.path().exists() {
            if let Err(e) = ip(&["netns", "delete", &self.name]) {
                eprintln!("[e2e] warning: deleting netns {}: {e}", self.name);
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A namespace holding bridge `br0`; nodes are attached with veth pairs.
pub struct Switch {
    pub ns: Netns,
    ports: Mutex<u8>,
}

impl Switch {
    pub fn new() -> Switch {
        let ns = Netns::create();
        let gw = format!("{GATEWAY}/{PREFIX}");
        for args in [
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["addr", "add", gw.as_str(), "dev", "br0"],
            vec!["link", "set", "br0", "up"],
        ] {
            ns.ip(&args).unwrap_or_else(|e| panic!("setting up switch {}: {e}", ns.name));
        }
        Switch { ns, ports: Mutex::new(0) }
    }

    /// Plugs `node` in: a veth pair with `p<k>` on the bridge and `eth0` in the node, the node
    /// address 172.31.250.(10+k)/24 and a default route via the switch (a service VIP needs a
    /// route covering it before the nat OUTPUT hook runs). Returns the node's address.
    pub fn attach(&self, node: &Netns) -> Ipv4Addr {
        let k = {
            let mut p = self.ports.lock().unwrap();
            *p += 1;
            *p
        };
        assert!(k < 200, "too many nodes on one switch");
        let port = format!("p{k}");
        let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 10 + k);
        let cidr = format!("{addr}/{PREFIX}");
        let gw = GATEWAY.to_string();
        let fail = |e: String| -> ! { panic!("attaching {} to switch {}: {e}", node.name, self.ns.name) };
        self.ns
            .ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node.name])
            .unwrap_or_else(|e| fail(e));
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"]).unwrap_or_else(|e| fail(e));
        node.ip(&["addr", "add", &cidr, "dev", "eth0"]).unwrap_or_else(|e| fail(e));
        node.ip(&["link", "set", "eth0", "up"]).unwrap_or_else(|e| fail(e));
        node.ip(&["route", "add", "default", "via", &gw]).unwrap_or_else(|e| fail(e));
        addr
    }
}

impl Default for Switch {
    fn default() -> Self {
        Self::new()
    }
}
