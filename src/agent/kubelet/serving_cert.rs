//! The kubelet's HTTPS identity and client authentication. Like the upstream kubelet without
//! `--tls-cert-file`, it makes its own CA and a serving certificate signed by it (SANs: node IP
//! and node name), kept under `<data-dir>/agent/` and reused while still valid for this node.
//! Clients must present a certificate from the kubelet client CA (the API server's
//! kubelet-client certificate), as `--client-ca-file` requires.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing the certificate files failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Certificate generation failed.
    #[error("generating the kubelet serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM did not hold what it should.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the certificate, key or client CA.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// `serving-kubelet.crt` / `.key`, as k3s names them.
pub fn paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("agent");
    (dir.join("serving-kubelet.crt"), dir.join("serving-kubelet.key"))
}

/// True when `cert_pem`'s first certificate is currently valid and names `ip` and `name`.
fn fits(cert_pem: &str, ip: IpAddr, name: &str) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else { return false };
    let Ok(cert) = pem.parse_x509() else { return false };
    if !cert.validity().is_valid() {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else { return false };
    let ip_bytes: Vec<u8> = match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    let names = &san.value.general_names;
    let has_ip = names
        .iter()
        .any(|g| matches!(g, x509_parser::extensions::GeneralName::IPAddress(b) if *b == ip_bytes.as_slice()));
    let has_name = names.iter().any(|g| matches!(g, x509_parser::extensions::GeneralName::DNSName(n) if *n == name));
    has_ip && has_name
}

/// A fresh CA and serving certificate; returns (certificate chain PEM: leaf then CA, key PEM).
pub fn generate(ip: IpAddr, name: &str) -> Result<(String, String), CertError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{name}-ca"));
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![name.to_string()])?;
    leaf.subject_alt_names.push(SanType::IpAddress(ip));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name.to_string());
    leaf.distinguished_name = dn;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((format!("{}{}", cert.pem(), ca_cert.pem()), key.serialize_pem()))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.to_path_buf(), source }
}

/// Loads the serving certificate from the data dir, or makes and stores a new one.
pub fn load_or_create(data_dir: &Path, ip: IpAddr, name: &str) -> Result<(String, String), CertError> {
    let (crt, key) = paths(data_dir);
    if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
        if fits(&c, ip, name) {
            return Ok((c, k));
        }
        tracing::info!(path = %crt.display(), "kubelet serving certificate expired or names another node; replacing it");
    }
    let (c, k) = generate(ip, name)?;
    if let Some(dir) = crt.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    write_private(&key, &k)?;
    std::fs::write(&crt, &c).map_err(io(&crt))?;
    Ok((c, k))
}

fn write_private(path: &Path, data: &str) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(data.as_bytes()).map_err(io(path))
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let v = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(format!("bad certificate PEM: {e}")))?;
    if v.is_empty() {
        return Err(CertError::Pem("no certificate in PEM".into()));
    }
    Ok(v)
}

/// rustls configuration: this certificate, client certificates required and checked against
/// `client_ca_pem`, HTTP/1.1 and HTTP/2.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(client_ca_pem)? {
        roots.add(c).map_err(|e| CertError::Tls(format!("kubelet client CA: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| CertError::Pem(format!("bad key PEM: {e}")))?
        .ok_or_else(|| CertError::Pem("no private key in PEM".into()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CertError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem)?, key)
        .map_err(|e| CertError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_certificate_is_reused_only_for_the_same_node() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let (c1, _) = load_or_create(dir.path(), ip, "n1").unwrap();
        assert!(fits(&c1, ip, "n1"));
        let (c2, _) = load_or_create(dir.path(), ip, "n1").unwrap();
        assert_eq!(c1, c2, "reused");
        let (c3, _) = load_or_create(dir.path(), "192.0.2.8".parse().unwrap(), "n1").unwrap();
        assert_ne!(c1, c3, "a new IP needs a new certificate");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(paths(dir.path()).1).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
