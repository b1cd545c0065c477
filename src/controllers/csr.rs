//! The CertificateSigningRequest signer (upstream `pkg/controller/certificates/signer`): once a
//! CSR is Approved (`kubectl certificate approve`) and neither Denied nor Failed, it issues the
//! certificate for the built-in signers and writes it to `status.certificate`:
//!
//! - `kubernetes.io/kube-apiserver-client` and `kubernetes.io/kube-apiserver-client-kubelet`:
//!   signed by the cluster's client CA (the one the API server trusts for client certificates);
//! - `kubernetes.io/kubelet-serving`: signed by the server CA.
//!
//! A request the signer does not accept (upstream's per-signer checks: usages, and for the
//! kubelet signers the `system:nodes` organization, the `system:node:` common name and the
//! allowed subjectAltNames) gets a `Failed` condition with reason `SignerValidationFailure`.
//! The certificate lasts `spec.expirationSeconds` (at least 10 minutes), at most a year (upstream
//! `--cluster-signing-duration`) and never beyond the CA; it starts five minutes in the past for
//! clock skew, as upstream's backdating does. CSRs of other signers are left to their signers.

use super::passes;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use rcgen::{CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

pub const COMPONENT: &str = "certificatesigningrequest-signing-controller";
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// Upstream `--cluster-signing-duration` default (8760h).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest `expirationSeconds` upstream accepts.
const MIN_DURATION: Duration = Duration::from_secs(600);
/// Upstream backdates certificates by five minutes.
const BACKDATE: Duration = Duration::from_secs(300);
const RESYNC: Duration = Duration::from_secs(60);

/// The CA certificates and keys the signers use (PEM).
#[derive(Clone)]
pub struct SigningKeys {
    pub client_ca_cert: String,
    pub client_ca_key: String,
    pub server_ca_cert: String,
    pub server_ca_key: String,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKeys { .. }")
    }
}

/// Why a request cannot be signed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CsrError {
    /// `spec.request` is not a PEM `CERTIFICATE REQUEST` with a valid signature.
    #[error("unable to parse csr: {0}")]
    Parse(String),
    /// The request breaks the signer's rules (becomes the `Failed` condition's message).
    #[error("{0}")]
    Invalid(String),
    /// Issuing failed on our side (a damaged CA key); retried.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The parsed request's subject and names.
#[derive(Debug, Default, PartialEq, Clone)]
pub struct Request {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns: Vec<String>,
    pub ips: usize,
    pub emails: usize,
    pub uris: usize,
}

fn pem_der(pem: &[u8]) -> Result<Vec<u8>, CsrError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| CsrError::Parse(format!("{e}")))?;
    if p.label != "CERTIFICATE REQUEST" {
        return Err(CsrError::Parse("PEM block type must be CERTIFICATE REQUEST".into()));
    }
    Ok(p.contents)
}

/// Parses a PEM CSR (upstream `ParseCSR`) and checks its signature.
pub fn parse(pem: &[u8]) -> Result<Request, CsrError> {
    let der = pem_der(pem)?;
    let (_, req) = X509CertificationRequest::from_der(&der).map_err(|e| CsrError::Parse(format!("{e}")))?;
    req.verify_signature().map_err(|e| CsrError::Parse(format!("invalid signature: {e}")))?;
    let subject = &req.certification_request_info.subject;
    let mut out = Request {
        common_name: subject.iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or("").to_string(),
        organizations: subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect(),
        ..Default::default()
    };
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(d) => out.dns.push(d.to_string()),
                    GeneralName::IPAddress(_) => out.ips += 1,
                    GeneralName::RFC822Name(_) => out.emails += 1,
                    GeneralName::URI(_) => out.uris += 1,
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

fn usage_set(usages: &[String]) -> std::collections::BTreeSet<&str> {
    usages.iter().map(String::as_str).collect()
}

/// Upstream's per-signer checks (`isKubeletServing`, `isKubeletClient`,
/// `validAPIServerClientUsages`). `Ok(false)`: not a signer of ours.
pub fn validate(signer: &str, r: &Request, usages: &[String]) -> Result<bool, CsrError> {
    let inv = |m: &str| Err(CsrError::Invalid(m.to_string()));
    let set = usage_set(usages);
    let node_subject = || -> Result<(), CsrError> {
        if r.organizations != ["system:nodes"] {
            return Err(CsrError::Invalid("subject organization is not system:nodes".into()));
        }
        if !r.common_name.starts_with("system:node:") {
            return Err(CsrError::Invalid("subject common name does not begin with system:node:".into()));
        }
        Ok(())
    };
    match signer {
        KUBE_APISERVER_CLIENT => {
            let mut client_auth = false;
            for u in usages {
                match u.as_str() {
                    "digital signature" | "key encipherment" => {}
                    "client auth" => client_auth = true,
                    other => return inv(&format!("invalid usage for client certificate: {other}")),
                }
            }
            if !client_auth {
                return inv("missing required usage for client certificate: client auth");
            }
            Ok(true)
        }
        KUBE_APISERVER_CLIENT_KUBELET => {
            node_subject()?;
            if !r.dns.is_empty() {
                return inv("DNS subjectAltNames are not allowed");
            }
            if r.emails > 0 {
                return inv("Email subjectAltNames are not allowed");
            }
            if r.ips > 0 {
                return inv("IP subjectAltNames are not allowed");
            }
            if r.uris > 0 {
                return inv("URI subjectAltNames are not allowed");
            }
            let ok = [
                vec!["client auth", "digital signature", "key encipherment"],
                vec!["client auth", "digital signature"],
            ]
            .iter()
            .any(|want| want.iter().copied().collect::<std::collections::BTreeSet<_>>() == set);
            if !ok {
                return inv("usages did not match [client auth digital signature key encipherment]");
            }
            Ok(true)
        }
        KUBELET_SERVING => {
            node_subject()?;
            if r.dns.is_empty() && r.ips == 0 {
                return inv("DNS or IP subjectAltName is required");
            }
            if r.emails > 0 {
                return inv("Email subjectAltNames are not allowed");
            }
            if r.uris > 0 {
                return inv("URI subjectAltNames are not allowed");
            }
            let ok = [
                vec!["digital signature", "key encipherment", "server auth"],
                vec!["digital signature", "server auth"],
            ]
            .iter()
            .any(|want| want.iter().copied().collect::<std::collections::BTreeSet<_>>() == set);
            if !ok {
                return inv("usages did not match [digital signature key encipherment server auth]");
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Key usages and extended key usages for `spec.usages` (upstream `keyUsagesFromStrings`).
pub fn key_usages(usages: &[String]) -> Result<(Vec<KeyUsagePurpose>, Vec<ExtendedKeyUsagePurpose>), CsrError> {
    let (mut ku, mut eku) = (Vec::new(), Vec::new());
    for u in usages {
        match u.as_str() {
            "signing" | "digital signature" => ku.push(KeyUsagePurpose::DigitalSignature),
            "content commitment" => ku.push(KeyUsagePurpose::ContentCommitment),
            "key encipherment" => ku.push(KeyUsagePurpose::KeyEncipherment),
            "key agreement" => ku.push(KeyUsagePurpose::KeyAgreement),
            "data encipherment" => ku.push(KeyUsagePurpose::DataEncipherment),
            "cert sign" => ku.push(KeyUsagePurpose::KeyCertSign),
            "crl sign" => ku.push(KeyUsagePurpose::CrlSign),
            "encipher only" => ku.push(KeyUsagePurpose::EncipherOnly),
            "decipher only" => ku.push(KeyUsagePurpose::DecipherOnly),
            "any" => eku.push(ExtendedKeyUsagePurpose::Any),
            "server auth" => eku.push(ExtendedKeyUsagePurpose::ServerAuth),
            "client auth" => eku.push(ExtendedKeyUsagePurpose::ClientAuth),
            "code signing" => eku.push(ExtendedKeyUsagePurpose::CodeSigning),
            "email protection" | "s/mime" => eku.push(ExtendedKeyUsagePurpose::EmailProtection),
            "timestamping" => eku.push(ExtendedKeyUsagePurpose::TimeStamping),
            "ocsp signing" => eku.push(ExtendedKeyUsagePurpose::OcspSigning),
            "ipsec end system" => eku.push(ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 5])),
            "ipsec tunnel" => eku.push(ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 6])),
            "ipsec user" => eku.push(ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 7])),
            "microsoft sgc" => eku.push(ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 311, 10, 3, 3])),
            "netscape sgc" => eku.push(ExtendedKeyUsagePurpose::Other(vec![2, 16, 840, 1, 113730, 4, 1])),
            other => return Err(CsrError::Invalid(format!("unrecognized usage: {other}"))),
        }
    }
    ku.dedup();
    Ok((ku, eku))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Issues the certificate for a PEM request, signed by the CA (`ca_cert`, `ca_key` PEM).
pub fn sign(
    pem: &[u8],
    usages: &[String],
    expiration_seconds: Option<i32>,
    ca_cert: &str,
    ca_key: &str,
    now: SystemTime,
) -> Result<String, CsrError> {
    let text = std::str::from_utf8(pem).map_err(|e| CsrError::Parse(e.to_string()))?;
    let mut req = CertificateSigningRequestParams::from_pem(text).map_err(|e| CsrError::Parse(e.to_string()))?;
    let (ku, eku) = key_usages(usages)?;
    let p = &mut req.params;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = ku;
    p.extended_key_usages = eku;
    p.use_authority_key_identifier_extension = true;
    let serial: [u8; 16] = rand::random();
    // A positive serial: clear the top bit.
    let mut serial = serial.to_vec();
    serial[0] &= 0x7f;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let wanted = expiration_seconds
        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)).max(MIN_DURATION))
        .unwrap_or(MAX_DURATION)
        .min(MAX_DURATION);
    // Never beyond the CA's own expiry.
    let ca_der = pem_der_cert(ca_cert)?;
    let ca_not_after = x509_parser::parse_x509_certificate(&ca_der)
        .map(|(_, c)| c.validity().not_after.timestamp())
        .map_err(|e| CsrError::Sign(format!("CA certificate: {e}")))?;
    let end = (unix(now) + wanted.as_secs()).min(u64::try_from(ca_not_after).unwrap_or(0));
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + Duration::from_secs(unix(now).saturating_sub(BACKDATE.as_secs()));
    p.not_after = epoch + Duration::from_secs(end);
    let key = KeyPair::from_pem(ca_key).map_err(|e| CsrError::Sign(format!("CA key: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, &key).map_err(|e| CsrError::Sign(format!("CA certificate: {e}")))?;
    let cert = req.signed_by(&issuer).map_err(|e| CsrError::Sign(e.to_string()))?;
    Ok(cert.pem())
}

fn pem_der_cert(pem: &str) -> Result<Vec<u8>, CsrError> {
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| CsrError::Sign(format!("CA certificate: {e}")))?;
    Ok(p.contents)
}

fn has_true(csr: &CertificateSigningRequest, type_: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// What the signer should do with a CSR: nothing, fail it (message), or store a certificate.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Skip,
    Fail(String),
    Issued(String),
}

/// Upstream `signer.handle`, without the write.
pub fn handle(csr: &CertificateSigningRequest, keys: &SigningKeys, now: SystemTime) -> Result<Outcome, CsrError> {
    if !has_true(csr, "Approved") || has_true(csr, "Denied") || has_true(csr, "Failed") {
        return Ok(Outcome::Skip);
    }
    if csr.status.as_ref().and_then(|s| s.certificate.as_ref()).is_some_and(|c| !c.0.is_empty()) {
        return Ok(Outcome::Skip);
    }
    let spec = &csr.spec;
    let (ca_cert, ca_key) = match spec.signer_name.as_str() {
        KUBE_APISERVER_CLIENT | KUBE_APISERVER_CLIENT_KUBELET => (&keys.client_ca_cert, &keys.client_ca_key),
        KUBELET_SERVING => (&keys.server_ca_cert, &keys.server_ca_key),
        _ => return Ok(Outcome::Skip),
    };
    let usages = spec.usages.clone().unwrap_or_default();
    let req = parse(&spec.request.0)?;
    match validate(&spec.signer_name, &req, &usages) {
        Ok(true) => {}
        Ok(false) => return Ok(Outcome::Skip),
        Err(CsrError::Invalid(m)) => return Ok(Outcome::Fail(m)),
        Err(e) => return Err(e),
    }
    match sign(&spec.request.0, &usages, spec.expiration_seconds, ca_cert, ca_key, now) {
        Ok(c) => Ok(Outcome::Issued(c)),
        Err(CsrError::Invalid(m)) => Ok(Outcome::Fail(m)),
        Err(e) => Err(e),
    }
}

async fn sync(client: &kube::Client, keys: &SigningKeys, csr: &CertificateSigningRequest) -> Result<(), String> {
    let name = csr.name_any();
    let outcome = match handle(csr, keys, SystemTime::now()) {
        Ok(o) => o,
        // Upstream returns the parse error and retries; an unparsable request never gets
        // better, so it is failed instead of retried forever.
        Err(CsrError::Parse(m)) => Outcome::Fail(format!("unable to parse csr {name:?}: {m}")),
        Err(e) => return Err(e.to_string()),
    };
    let mut next = csr.clone();
    let st = next.status.get_or_insert_with(Default::default);
    match outcome {
        Outcome::Skip => return Ok(()),
        Outcome::Fail(message) => {
            let now = Time(Timestamp::now());
            st.conditions.get_or_insert_with(Vec::new).push(CertificateSigningRequestCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("SignerValidationFailure".into()),
                message: Some(message.clone()),
                last_update_time: Some(now.clone()),
                last_transition_time: Some(now),
            });
            tracing::info!(csr = %name, %message, "certificate signing request failed validation");
        }
        Outcome::Issued(pem) => {
            st.certificate = Some(ByteString(pem.into_bytes()));
            tracing::info!(csr = %name, signer = %csr.spec.signer_name, "issued a certificate");
        }
    }
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    api.replace_status(&name, &PostParams::default(), &next).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs the signer until shutdown.
pub async fn run(client: kube::Client, keys: Arc<SigningKeys>, shutdown: CancellationToken) {
    let notify = Arc::new(Notify::new());
    let csrs: Store<CertificateSigningRequest> =
        passes::cache(Api::all(client.clone()), notify.clone(), shutdown.clone(), COMPONENT);
    if !passes::ready(&shutdown, vec![passes::when_ready(&csrs)]).await {
        return;
    }
    loop {
        for csr in csrs.state() {
            if let Err(e) = sync(&client, &keys, &csr).await {
                tracing::warn!(csr = %csr.name_any(), error = %e, "signing a certificate signing request failed; retrying");
            }
        }
        if !passes::next(&notify, RESYNC, &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType};
    use serde_json::json;

    fn request(cn: &str, orgs: &[&str], sans: &[&str]) -> String {
        let kp = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let mut dn = DistinguishedName::new();
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.serialize_request(&kp).unwrap().pem().unwrap()
    }

    fn usages(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    fn keys() -> (tempfile::TempDir, SigningKeys) {
        let d = tempfile::tempdir().unwrap();
        let pki = crate::pki::ClusterPki::load_or_create(d.path()).unwrap();
        let keys = SigningKeys {
            client_ca_cert: pki.client_ca.cert_pem.clone(),
            client_ca_key: pki.client_ca.key_pem(),
            server_ca_cert: pki.server_ca.cert_pem.clone(),
            server_ca_key: pki.server_ca.key_pem(),
        };
        (d, keys)
    }

    fn csr(signer: &str, pem: &str, u: &[&str], conditions: serde_json::Value) -> CertificateSigningRequest {
        use base64::Engine;
        serde_json::from_value(json!({
            "metadata": {"name": "c"},
            "spec": {"signerName": signer, "usages": u,
                     "request": base64::engine::general_purpose::STANDARD.encode(pem)},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn requests_parse_with_subject_and_names() {
        let r = parse(request("system:node:n1", &["system:nodes"], &["n1.example", "10.0.0.1"]).as_bytes()).unwrap();
        assert_eq!(r.common_name, "system:node:n1");
        assert_eq!(r.organizations, vec!["system:nodes"]);
        assert_eq!(r.dns, vec!["n1.example"]);
        assert_eq!(r.ips, 1);
        assert!(matches!(
            parse(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(CsrError::Parse(_))
        ));
        assert!(matches!(parse(b"garbage"), Err(CsrError::Parse(_))));
    }

    #[test]
    fn the_client_signer_needs_client_auth_and_nothing_else() {
        let r = Request { common_name: "alice".into(), ..Default::default() };
        assert_eq!(validate(KUBE_APISERVER_CLIENT, &r, &usages(&["client auth", "digital signature"])), Ok(true));
        assert_eq!(
            validate(KUBE_APISERVER_CLIENT, &r, &usages(&["digital signature"])),
            Err(CsrError::Invalid("missing required usage for client certificate: client auth".into()))
        );
        assert_eq!(
            validate(KUBE_APISERVER_CLIENT, &r, &usages(&["client auth", "server auth"])),
            Err(CsrError::Invalid("invalid usage for client certificate: server auth".into()))
        );
        assert_eq!(validate("example.com/other", &r, &[]), Ok(false));
    }

    #[test]
    fn kubelet_signers_check_subject_names_and_usages() {
        let node = Request {
            common_name: "system:node:n1".into(),
            organizations: vec!["system:nodes".into()],
            ..Default::default()
        };
        let client = usages(&["digital signature", "key encipherment", "client auth"]);
        assert_eq!(validate(KUBE_APISERVER_CLIENT_KUBELET, &node, &client), Ok(true));
        let bad_org = Request { organizations: vec!["x".into()], ..node.clone() };
        assert_eq!(
            validate(KUBE_APISERVER_CLIENT_KUBELET, &bad_org, &client),
            Err(CsrError::Invalid("subject organization is not system:nodes".into()))
        );
        let bad_cn = Request { common_name: "alice".into(), ..node.clone() };
        assert!(validate(KUBE_APISERVER_CLIENT_KUBELET, &bad_cn, &client).is_err());
        let with_dns = Request { dns: vec!["n1".into()], ..node.clone() };
        assert_eq!(
            validate(KUBE_APISERVER_CLIENT_KUBELET, &with_dns, &client),
            Err(CsrError::Invalid("DNS subjectAltNames are not allowed".into()))
        );
        let serving = usages(&["digital signature", "key encipherment", "server auth"]);
        assert_eq!(
            validate(KUBELET_SERVING, &node, &serving),
            Err(CsrError::Invalid("DNS or IP subjectAltName is required".into()))
        );
        assert_eq!(validate(KUBELET_SERVING, &with_dns, &serving), Ok(true));
        assert!(validate(KUBELET_SERVING, &with_dns, &client).is_err());
    }

    #[test]
    fn approved_requests_get_a_certificate_chaining_to_the_right_ca() {
        let (_d, keys) = keys();
        let pem = request("alice", &["devs"], &[]);
        let approved = json!([{"type": "Approved", "status": "True", "reason": "KubectlApprove"}]);
        let c = csr(KUBE_APISERVER_CLIENT, &pem, &["client auth"], approved.clone());
        let Outcome::Issued(cert) = handle(&c, &keys, SystemTime::now()).unwrap() else { panic!("not issued") };
        let der = pem_der_cert(&cert).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(x.subject().iter_common_name().next().unwrap().as_str().unwrap(), "alice");
        assert_eq!(x.subject().iter_organization().next().unwrap().as_str().unwrap(), "devs");
        let ca_der = pem_der_cert(&keys.client_ca_cert).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(x.issuer(), ca.subject());
        x.verify_signature(Some(ca.public_key())).unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert!(life > 364 * 24 * 3600 && life <= 365 * 24 * 3600 + 300, "{life}");

        // expirationSeconds shortens it; kubelet-serving uses the server CA.
        let pem = request("system:node:n1", &["system:nodes"], &["n1"]);
        let mut c = csr(KUBELET_SERVING, &pem, &["digital signature", "server auth"], approved);
        c.spec.expiration_seconds = Some(3600);
        let Outcome::Issued(cert) = handle(&c, &keys, SystemTime::now()).unwrap() else { panic!("not issued") };
        let der = pem_der_cert(&cert).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sca_der = pem_der_cert(&keys.server_ca_cert).unwrap();
        let (_, sca) = x509_parser::parse_x509_certificate(&sca_der).unwrap();
        x.verify_signature(Some(sca.public_key())).unwrap();
        assert_eq!(x.validity().not_after.timestamp() - x.validity().not_before.timestamp(), 3600 + 300);
    }

    #[test]
    fn pending_denied_and_foreign_requests_are_left_alone_and_bad_ones_fail() {
        let (_d, keys) = keys();
        let pem = request("alice", &[], &[]);
        let now = SystemTime::now();
        assert_eq!(
            handle(&csr(KUBE_APISERVER_CLIENT, &pem, &["client auth"], json!([])), &keys, now),
            Ok(Outcome::Skip)
        );
        let denied = json!([{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]);
        assert_eq!(handle(&csr(KUBE_APISERVER_CLIENT, &pem, &["client auth"], denied), &keys, now), Ok(Outcome::Skip));
        let approved = json!([{"type": "Approved", "status": "True"}]);
        assert_eq!(
            handle(&csr("example.com/x", &pem, &["client auth"], approved.clone()), &keys, now),
            Ok(Outcome::Skip)
        );
        assert_eq!(
            handle(&csr(KUBE_APISERVER_CLIENT_KUBELET, &pem, &["client auth"], approved), &keys, now),
            Ok(Outcome::Fail("subject organization is not system:nodes".into()))
        );
    }
}
