//! `pods/{name}/log`: finds the pod's node and streams the kubelet's
//! `/containerLogs/{ns}/{pod}/{container}` back, as kube-apiserver does. The API server
//! authenticates to the kubelet with its kubelet-client certificate.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;

use super::errors::{ApiError, ApiResult};
use super::handlers::Req;
use super::objects;
use crate::registry;

pub type KubeletHttp = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// Accepts any server certificate. Used where nothing better is possible: for kubelet serving
/// certificates (upstream kube-apiserver does not verify them unless
/// `--kubelet-certificate-authority` is given; skiff's kubelets self-sign theirs), and by a
/// joining server fetching the cluster CA before it knows it (the join token's CA hash, when
/// present, then checks what it got).
#[derive(Debug)]
pub struct AnyServerCert(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An HTTPS client presenting `cert_pem`/`key_pem` to kubelets.
pub fn kubelet_client(cert_pem: &str, key_pem: &str) -> anyhow::Result<KubeletHttp> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("no private key in kubelet client key"))?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_client_auth_cert(certs, key)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(cfg).https_only().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// The address and port of a node's kubelet.
pub async fn kubelet_address(req: &Req, node: &str) -> ApiResult<(String, i64)> {
    let nodes = registry::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("nodes not registered"))?;
    let n = objects::get(req.st.store.as_ref(), nodes, None, node).await?;
    let addrs = n.obj.pointer("/status/addresses").and_then(|a| a.as_array()).cloned().unwrap_or_default();
    let ip = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|t| addrs.iter().find(|a| a["type"] == *t).and_then(|a| a["address"].as_str()).map(String::from))
        .ok_or_else(|| ApiError::bad_request(format!("node {node:?} has no address; is its kubelet running?")))?;
    let port = n.obj.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(|p| p.as_i64()).unwrap_or(10250);
    Ok((ip, port))
}

pub async fn pod_log(req: &Req) -> ApiResult<Response> {
    let pod =
        objects::get(req.st.store.as_ref(), &req.r, req.ns.as_deref(), req.name.as_deref().unwrap_or("")).await?.obj;
    let name = req.name.clone().unwrap_or_default();
    let names: Vec<String> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(|c| c.as_array()).cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let app: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let container = match req.q.get("container").filter(|c| !c.is_empty()) {
        Some(c) if names.iter().any(|n| n == c) => c.to_string(),
        Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if app.len() == 1 => app[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                app.join(" ")
            )))
        }
    };
    let node = pod.pointer("/spec/nodeName").and_then(|n| n.as_str()).filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "container {container:?} in pod {name:?} is waiting to start: pod is not scheduled yet"
        ))
    })?;
    let (ip, port) = kubelet_address(req, node).await?;
    let mut query = Vec::new();
    for k in [
        "follow",
        "previous",
        "timestamps",
        "tailLines",
        "sinceSeconds",
        "sinceTime",
        "limitBytes",
        "insecureSkipTLSVerifyBackend",
    ] {
        if let Some(v) = req.q.get(k) {
            query.push(format!("{k}={}", form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()));
        }
    }
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
    let url = format!(
        "https://{host}:{port}/containerLogs/{}/{name}/{container}{}{}",
        req.ns.clone().unwrap_or_default(),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let uri: hyper::Uri = url.parse().map_err(|e| ApiError::internal(format!("kubelet URL {url}: {e}")))?;
    let resp = req
        .st
        .kubelet
        .get(uri)
        .await
        .map_err(|e| ApiError::new(502, "InternalError", format!("Get \"{url}\": {e}")))?;
    let status = resp.status();
    let body = Body::new(resp.into_body().map_err(|e| std::io::Error::other(e.to_string())));
    if !status.is_success() {
        let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        // A kubelet Status passes through; plain text becomes one.
        if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v["kind"] == "Status") {
            return Ok((
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                [("content-type", "application/json")],
                bytes,
            )
                .into_response());
        }
        return Err(ApiError::new(
            status.as_u16(),
            if status.as_u16() == 404 { "NotFound" } else { "BadRequest" },
            text,
        ));
    }
    Ok((StatusCode::OK, [("content-type", "text/plain")], body).into_response())
}
