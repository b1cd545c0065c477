//! Cluster PKI: the server CA (signs serving certificates), the client CA (signs client
//! certificates: CN = user, O = groups, as kube-apiserver's x509 authenticator reads them), the
//! service-account signing key, and kubeconfig files. Everything lives under
//! `<data-dir>/server/tls/` and is created on first start, then reused.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file under the TLS directory failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A stored certificate or key does not parse; delete it to have it regenerated.
    #[error("{path}: not a valid PEM certificate or key ({reason}); move it away to have skiff create a new one")]
    BadPem { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

type Result<T> = std::result::Result<T, PkiError>;

fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::Io { path: path.into(), source: e }),
    }
}

/// Writes a file atomically (temp + rename) with the given mode.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| PkiError::Io { path: path.into(), source: e };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(())
}

/// A certificate authority whose key we hold.
pub struct Ca {
    pub cert_pem: String,
    key: KeyPair,
}

impl Ca {
    fn load_or_create(dir: &Path, name: &str, cn: &str) -> Result<Ca> {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        if let (Some(c), Some(k)) = (read(&crt)?, read(&key)?) {
            let kp =
                KeyPair::from_pem(&k).map_err(|e| PkiError::BadPem { path: key.clone(), reason: e.to_string() })?;
            // Check the certificate parses too, so a damaged file fails here with its name.
            Issuer::from_ca_cert_pem(&c, &kp)
                .map_err(|e| PkiError::BadPem { path: crt.clone(), reason: e.to_string() })?;
            return Ok(Ca { cert_pem: c, key: kp });
        }
        let kp = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{cn}@{}", chrono::Utc::now().timestamp()));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut p, 10);
        let cert = p.self_signed(&kp)?;
        write_file(&key, kp.serialize_pem().as_bytes(), 0o600)?;
        write_file(&crt, cert.pem().as_bytes(), 0o644)?;
        Ok(Ca { cert_pem: cert.pem(), key: kp })
    }

    /// The CA's private key (PEM), for signers that issue certificates on request (the CSR
    /// controller).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a leaf certificate; returns (certificate PEM, key PEM).
    pub fn issue(&self, leaf: &Leaf) -> Result<(String, String)> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let kp = KeyPair::generate()?;
        let (mut p, eku) = match leaf {
            Leaf::Server { sans, .. } => (CertificateParams::new(sans.clone())?, ExtendedKeyUsagePurpose::ServerAuth),
            Leaf::Client { .. } => (CertificateParams::new(Vec::<String>::new())?, ExtendedKeyUsagePurpose::ClientAuth),
        };
        let mut dn = DistinguishedName::new();
        match leaf {
            Leaf::Server { cn, .. } => dn.push(DnType::CommonName, cn.clone()),
            Leaf::Client { cn, groups } => {
                for g in groups {
                    dn.push(DnType::OrganizationName, g.clone());
                }
                dn.push(DnType::CommonName, cn.clone());
            }
        }
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![eku];
        p.use_authority_key_identifier_extension = true;
        set_validity(&mut p, 1);
        let cert = p.signed_by(&kp, &issuer)?;
        Ok((cert.pem(), kp.serialize_pem()))
    }
}

fn set_validity(p: &mut CertificateParams, years: i32) {
    use chrono::Datelike;
    let now = chrono::Utc::now();
    // Back-date an hour for clock skew between nodes, as k3s does.
    let start = now - chrono::Duration::hours(1);
    p.not_before = rcgen::date_time_ymd(start.year(), start.month() as u8, start.day() as u8);
    p.not_after = rcgen::date_time_ymd(now.year() + years, now.month() as u8, now.day().min(28) as u8);
}

pub enum Leaf {
    Server { cn: String, sans: Vec<String> },
    Client { cn: String, groups: Vec<String> },
}

/// All of the cluster's keys and CAs.
pub struct ClusterPki {
    pub dir: PathBuf,
    pub server_ca: Ca,
    pub client_ca: Ca,
    /// PEM (PKCS#8) of the ECDSA P-256 key that signs service-account tokens.
    pub service_account_key_pem: String,
}

impl ClusterPki {
    /// Loads the PKI from `dir`, creating whatever is missing.
    pub fn load_or_create(dir: &Path) -> Result<ClusterPki> {
        std::fs::create_dir_all(dir).map_err(|e| PkiError::Io { path: dir.into(), source: e })?;
        let server_ca = Ca::load_or_create(dir, "server-ca", "skiff-server-ca")?;
        let client_ca = Ca::load_or_create(dir, "client-ca", "skiff-client-ca")?;
        let sa_path = dir.join("service-account.key");
        let service_account_key_pem = match read(&sa_path)? {
            Some(k) => {
                KeyPair::from_pem(&k).map_err(|e| PkiError::BadPem { path: sa_path.clone(), reason: e.to_string() })?;
                k
            }
            None => {
                let k = KeyPair::generate()?.serialize_pem();
                write_file(&sa_path, k.as_bytes(), 0o600)?;
                k
            }
        };
        Ok(ClusterPki { dir: dir.into(), server_ca, client_ca, service_account_key_pem })
    }

    /// A certificate stored as `<name>.crt`/`<name>.key`, issued on first use. A serving
    /// certificate is reissued when its SAN list changes (a new `--tls-san` or node IP).
    pub fn leaf(&self, name: &str, leaf: &Leaf) -> Result<(String, String)> {
        let crt = self.dir.join(format!("{name}.crt"));
        let key = self.dir.join(format!("{name}.key"));
        let stamp = self.dir.join(format!("{name}.params"));
        let want = match leaf {
            Leaf::Server { cn, sans } => format!("server {cn} {}", sans.join(",")),
            Leaf::Client { cn, groups } => format!("client {cn} {}", groups.join(",")),
        };
        if let (Some(c), Some(k), Some(s)) = (read(&crt)?, read(&key)?, read(&stamp)?) {
            if s == want {
                return Ok((c, k));
            }
        }
        let ca = match leaf {
            Leaf::Server { .. } => &self.server_ca,
            Leaf::Client { .. } => &self.client_ca,
        };
        let (c, k) = ca.issue(leaf)?;
        write_file(&key, k.as_bytes(), 0o600)?;
        write_file(&crt, c.as_bytes(), 0o644)?;
        write_file(&stamp, want.as_bytes(), 0o644)?;
        Ok((c, k))
    }
}

/// A kubeconfig with one cluster, one user (client certificate) and one context, all named
/// `default` as k3s does.
pub fn kubeconfig(server_url: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        server_url,
        b64(cert_pem),
        b64(key_pem)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_created_once_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let a = ClusterPki::load_or_create(d.path()).unwrap();
        let b = ClusterPki::load_or_create(d.path()).unwrap();
        assert_eq!(a.server_ca.cert_pem, b.server_ca.cert_pem);
        assert_eq!(a.service_account_key_pem, b.service_account_key_pem);
        assert_ne!(a.server_ca.cert_pem, a.client_ca.cert_pem);
    }

    #[test]
    fn client_certificates_carry_user_and_groups() {
        let d = tempfile::tempdir().unwrap();
        let p = ClusterPki::load_or_create(d.path()).unwrap();
        let (c, _) = p
            .leaf("admin", &Leaf::Client { cn: "system:admin".into(), groups: vec!["system:masters".into()] })
            .unwrap();
        let der = rustls_pemfile::certs(&mut c.as_bytes()).next().unwrap().unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(x.subject().iter_common_name().next().unwrap().as_str().unwrap(), "system:admin");
        assert_eq!(x.subject().iter_organization().next().unwrap().as_str().unwrap(), "system:masters");
    }

    #[test]
    fn serving_certificate_is_reissued_when_sans_change() {
        let d = tempfile::tempdir().unwrap();
        let p = ClusterPki::load_or_create(d.path()).unwrap();
        let l1 = Leaf::Server { cn: "kube-apiserver".into(), sans: vec!["127.0.0.1".into()] };
        let l2 = Leaf::Server { cn: "kube-apiserver".into(), sans: vec!["127.0.0.1".into(), "example.com".into()] };
        let a = p.leaf("serving", &l1).unwrap();
        assert_eq!(a, p.leaf("serving", &l1).unwrap());
        assert_ne!(a, p.leaf("serving", &l2).unwrap());
    }

    #[test]
    fn damaged_ca_file_is_reported_with_its_path() {
        let d = tempfile::tempdir().unwrap();
        ClusterPki::load_or_create(d.path()).unwrap();
        std::fs::write(d.path().join("server-ca.key"), "garbage").unwrap();
        let e = ClusterPki::load_or_create(d.path()).err().unwrap().to_string();
        assert!(e.contains("server-ca.key"), "{e}");
    }
}
