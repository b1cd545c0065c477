//! The CertificateSigningRequest approver (upstream `pkg/controller/certificates/approver`,
//! controller name `csrapproving`): a kubelet client certificate request
//! (`kubernetes.io/kube-apiserver-client-kubelet`, subject `system:node:<name>` in
//! `system:nodes`, client usages, no subjectAltNames) is approved when its requester may
//! `create certificatesigningrequests/selfnodeclient` (renewing its own identity: the requester's
//! name is the certificate's common name) or `certificatesigningrequests/nodeclient` (any node
//! identity, as bootstrap credentials do). The check is a SubjectAccessReview for the user the
//! API server recorded in `spec.username`/`spec.groups`. A request that no permission covers stays
//! pending for a human (`kubectl certificate approve`); serving certificates are never
//! auto-approved, as upstream.

use super::csr::{parse, validate, CsrError, KUBE_APISERVER_CLIENT_KUBELET};
use super::passes;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "certificatesigningrequest-approving-controller";
const RESYNC: Duration = Duration::from_secs(60);

/// A permission that approves a kind of request, and the condition message it leaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recognizer {
    pub subresource: &'static str,
    pub message: &'static str,
}

pub const SELF_NODE_CLIENT: Recognizer = Recognizer {
    subresource: "selfnodeclient",
    message: "Auto approving self kubelet client certificate after SubjectAccessReview.",
};
pub const NODE_CLIENT: Recognizer = Recognizer {
    subresource: "nodeclient",
    message: "Auto approving kubelet client certificate after SubjectAccessReview.",
};

fn decided(csr: &CertificateSigningRequest) -> bool {
    let st = csr.status.as_ref();
    st.and_then(|s| s.certificate.as_ref()).is_some_and(|c| !c.0.is_empty())
        || st
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| matches!(c.type_.as_str(), "Approved" | "Denied")))
}

/// The permissions to try for a request, in upstream's order; empty when it is not a kubelet
/// client request, already decided, or unparsable.
pub fn recognize(csr: &CertificateSigningRequest) -> Result<Vec<Recognizer>, CsrError> {
    if decided(csr) || csr.spec.signer_name != KUBE_APISERVER_CLIENT_KUBELET {
        return Ok(vec![]);
    }
    let req = parse(&csr.spec.request.0)?;
    let usages = csr.spec.usages.clone().unwrap_or_default();
    if !matches!(validate(KUBE_APISERVER_CLIENT_KUBELET, &req, &usages), Ok(true)) {
        return Ok(vec![]);
    }
    let mut out = vec![];
    if csr.spec.username.as_deref() == Some(req.common_name.as_str()) {
        out.push(SELF_NODE_CLIENT);
    }
    out.push(NODE_CLIENT);
    Ok(out)
}

/// The SubjectAccessReview that asks whether the requester holds `r`'s permission.
pub fn review(csr: &CertificateSigningRequest, r: &Recognizer) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            uid: csr.spec.uid.clone(),
            groups: csr.spec.groups.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(r.subresource.into()),
                verb: Some("create".into()),
                version: Some("*".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `csr` with the Approved condition upstream's approver appends.
pub fn approved(csr: &CertificateSigningRequest, r: &Recognizer) -> CertificateSigningRequest {
    let mut next = csr.clone();
    let now = Time(Timestamp::now());
    next.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new).push(
        CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some("AutoApproved".into()),
            message: Some(r.message.into()),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now),
        },
    );
    next
}

async fn sync(client: &kube::Client, csr: &CertificateSigningRequest) -> Result<(), String> {
    let name = csr.name_any();
    let tried = match recognize(csr) {
        Ok(t) => t,
        // The signer fails requests it cannot parse; nothing to approve.
        Err(_) => return Ok(()),
    };
    let sars: Api<SubjectAccessReview> = Api::all(client.clone());
    for r in &tried {
        let answer = sars.create(&PostParams::default(), &review(csr, r)).await.map_err(|e| e.to_string())?;
        if answer.status.is_some_and(|s| s.allowed) {
            let api: Api<CertificateSigningRequest> = Api::all(client.clone());
            api.replace_subresource("approval", &name, &PostParams::default(), &approved(csr, r))
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(csr = %name, user = ?csr.spec.username, permission = r.subresource, "auto-approved a kubelet client certificate request");
            return Ok(());
        }
    }
    if !tried.is_empty() {
        tracing::debug!(csr = %name, "recognized a kubelet client certificate request, but its requester may not have it approved automatically");
    }
    Ok(())
}

/// Runs the approver until shutdown.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let notify = Arc::new(Notify::new());
    let csrs: Store<CertificateSigningRequest> =
        passes::cache(Api::all(client.clone()), notify.clone(), shutdown.clone(), COMPONENT);
    if !passes::ready(&shutdown, vec![passes::when_ready(&csrs)]).await {
        return;
    }
    loop {
        for csr in csrs.state() {
            if let Err(e) = sync(&client, &csr).await {
                tracing::warn!(csr = %csr.name_any(), error = %e, "approving a certificate signing request failed; retrying");
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
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn request(cn: &str, orgs: &[&str], dns: &[&str]) -> String {
        let kp = rcgen::KeyPair::generate().expect("key");
        let mut p =
            rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).expect("params");
        let mut dn = rcgen::DistinguishedName::new();
        for o in orgs {
            dn.push(rcgen::DnType::OrganizationName, *o);
        }
        dn.push(rcgen::DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.serialize_request(&kp).expect("csr").pem().expect("pem")
    }

    fn csr(signer: &str, pem: &str, usages: &[&str], username: &str) -> CertificateSigningRequest {
        let mut c: CertificateSigningRequest = serde_json::from_value(json!({
            "metadata": {"name": "c"},
            "spec": {"signerName": signer, "usages": usages, "username": username, "groups": ["system:nodes", "system:authenticated"], "request": ""},
        }))
        .expect("csr");
        c.spec.request = ByteString(pem.as_bytes().to_vec());
        c
    }

    #[test]
    fn a_node_renewing_its_own_client_certificate_tries_selfnodeclient_then_nodeclient() {
        let pem = request("system:node:n1", &["system:nodes"], &[]);
        let c = csr(KUBE_APISERVER_CLIENT_KUBELET, &pem, &["digital signature", "client auth"], "system:node:n1");
        assert_eq!(recognize(&c).expect("parses"), vec![SELF_NODE_CLIENT, NODE_CLIENT]);
        let sar = review(&c, &SELF_NODE_CLIENT);
        assert_eq!(sar.spec.user.as_deref(), Some("system:node:n1"));
        let ra = sar.spec.resource_attributes.expect("resource attributes");
        assert_eq!(ra.subresource.as_deref(), Some("selfnodeclient"));
        assert_eq!(ra.verb.as_deref(), Some("create"));
        assert_eq!(ra.resource.as_deref(), Some("certificatesigningrequests"));

        // Another requester (a bootstrap identity) can only be approved as nodeclient.
        let c = csr(KUBE_APISERVER_CLIENT_KUBELET, &pem, &["digital signature", "client auth"], "system:bootstrap:abc");
        assert_eq!(recognize(&c).expect("parses"), vec![NODE_CLIENT]);
    }

    #[test]
    fn other_signers_bad_subjects_and_decided_requests_are_not_recognized() {
        let node = request("system:node:n1", &["system:nodes"], &[]);
        let u = &["digital signature", "client auth"];
        let serving =
            csr("kubernetes.io/kubelet-serving", &node, &["digital signature", "server auth"], "system:node:n1");
        assert!(recognize(&serving).expect("parses").is_empty());
        let not_node = request("alice", &["devs"], &[]);
        assert!(recognize(&csr(KUBE_APISERVER_CLIENT_KUBELET, &not_node, u, "alice")).expect("parses").is_empty());
        let with_san = request("system:node:n1", &["system:nodes"], &["n1.example"]);
        assert!(recognize(&csr(KUBE_APISERVER_CLIENT_KUBELET, &with_san, u, "system:node:n1"))
            .expect("parses")
            .is_empty());
        let wrong_usage = csr(KUBE_APISERVER_CLIENT_KUBELET, &node, &["server auth"], "system:node:n1");
        assert!(recognize(&wrong_usage).expect("parses").is_empty());

        let c = csr(KUBE_APISERVER_CLIENT_KUBELET, &node, u, "system:node:n1");
        let done = approved(&c, &NODE_CLIENT);
        let cond = &done.status.as_ref().and_then(|s| s.conditions.as_ref()).expect("conditions")[0];
        assert_eq!((cond.type_.as_str(), cond.reason.as_deref()), ("Approved", Some("AutoApproved")));
        assert!(recognize(&done).expect("decided").is_empty());

        let garbage = csr(KUBE_APISERVER_CLIENT_KUBELET, "not a PEM", u, "system:node:n1");
        assert!(recognize(&garbage).is_err());
    }
}
