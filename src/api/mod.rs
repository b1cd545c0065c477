//! The Kubernetes API server: axum over rustls on one HTTPS port. Authentication by client
//! certificate (CN = user, O = groups) happens at the TLS layer; everything else is routed by
//! parsing the path the way kube-apiserver's RequestInfoFactory does.

pub mod admission;
pub mod apply;
pub mod auth;
pub mod crd;
pub mod decode;
pub mod discovery;
pub mod errors;
pub mod handlers;
pub mod logs;
pub mod metrics;
pub mod namespaces;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod policy;
pub mod protobuf;
pub mod proxy;
pub mod query;
pub mod rawjson;
pub mod request;
pub mod selector;
pub mod stream;
pub mod watch;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::Ipv4Addr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Cidr;
use crate::store::Store;
use errors::ApiError;
use handlers::{json_response, Req};

/// Shared state of the API server.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub service_cidr: Cidr,
    /// IPs the allocator never hands out (the `kubernetes` service's and the DNS service's).
    pub reserved_ips: Vec<Ipv4Addr>,
    pub node_port_range: (u16, u16),
    /// Client for kubelet APIs (logs, exec, port-forward).
    pub kubelet: logs::KubeletHttp,
    /// Largest accepted request body.
    pub max_body: usize,
    /// `host:port` clients use to reach this server.
    pub advertise: String,
    /// RBAC policy and the Node authorizer.
    pub authz: auth::Authorizer,
    /// Signs and verifies service-account tokens.
    pub sa_signer: auth::tokens::Signer,
    /// `--token-auth-file`'s static tokens, if one was given.
    pub static_tokens: Option<auth::tokenfile::TokenFile>,
    /// Built-in and custom resources (kept current from the CRDs in the store).
    pub registry: Arc<crate::registry::Registry>,
    /// Node Summaries behind metrics.k8s.io, briefly cached.
    pub metrics: metrics::MetricsCache,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn anonymous() -> User {
        User { name: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()] }
    }
    pub fn is_anonymous(&self) -> bool {
        self.name == "system:anonymous"
    }
}

/// Reads CN and O from a client certificate (already verified against the client CA by rustls).
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, x) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = x.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    let mut groups: Vec<String> =
        x.subject().iter_organization().filter_map(|o| o.as_str().ok().map(String::from)).collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

/// The rustls server configuration: our serving certificate, and client certificates checked
/// against the client CA but optional (anonymous requests reach only the health endpoints).
pub fn tls_config(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("serving key has no private key"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut client_ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

pub fn router(state: Arc<ApiState>) -> Router {
    // Server-to-server routes (Raft, joins): outside authn/RBAC, they check peers themselves.
    let peers = state.store.peer_router().unwrap_or_default();
    Router::new()
        .route("/version", get(|| async { json_response(StatusCode::OK, &discovery::version()) }))
        .route("/version/", get(|| async { json_response(StatusCode::OK, &discovery::version()) }))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/openapi/v2", get(openapi::v2))
        .route("/openapi/v3", get(openapi::v3_index))
        .route("/openapi/v3/{*path}", get(openapi::v3_group))
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
        .merge(peers)
}

fn is_resource_path(reg: &crate::registry::Registry, path: &str) -> bool {
    matches!(request::parse(reg, path), Some(request::Parsed::Resource(_)))
}

/// Resolves the caller (client certificate from the TLS layer, or a bearer token), and
/// authorizes non-resource requests (`/version`, `/openapi/…`, discovery) against RBAC.
/// Resource requests are authorized in `dispatch`, where their attributes are known.
async fn authenticate(
    State(st): State<Arc<ApiState>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut user = req.extensions().get::<User>().cloned().unwrap_or_else(User::anonymous);
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string());
    if let Some(token) = bearer.filter(|t| !t.is_empty()) {
        match auth::authenticate_bearer(&st, &token).await {
            Ok(u) => user = u,
            Err(e) => return e.into_response(),
        }
    }
    let path = req.uri().path().to_string();
    // Anonymous requests are authenticated only for the public health and version endpoints,
    // as kube-apiserver's `anonymous.conditions` (AuthenticationConfiguration) limits them:
    // any other path is unauthenticated, a 401, not an RBAC 403.
    if user.is_anonymous() && !ANONYMOUS_PATHS.contains(&path.as_str()) {
        return ApiError::new(401, "Unauthorized", "Unauthorized").into_response();
    }
    if !is_resource_path(&st.registry, &path) {
        let a = auth::rbac::Attributes {
            verb: req.method().as_str().to_lowercase(),
            path: Some(path),
            ..Default::default()
        };
        if let Err(e) = st.authz.authorize(st.store.as_ref(), &user, &a).await {
            return e.into_response();
        }
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

/// The authorizer's verb for a request (upstream's RequestInfo verb).
fn verb_of(req: &Req) -> &'static str {
    match (&req.method, req.name.is_some()) {
        (&Method::GET, false) if req.q.flag("watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) | (&Method::HEAD, _) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

/// The paths anonymous callers may reach (upstream's `system:public-info-viewer` paths).
const ANONYMOUS_PATHS: &[&str] = &["/version", "/version/", "/healthz", "/livez", "/readyz"];

/// `/healthz`, `/livez`, `/readyz`: `ok`, or with `?verbose` each check on its own line and a
/// summary (`[+]ping ok` … `healthz check passed`), as kube-apiserver's healthz handler
/// writes them. A failing check is a 500 with the listing, its reason withheld (logged).
async fn health(State(st): State<Arc<ApiState>>, uri: Uri) -> Response {
    let name = uri.path().trim_start_matches('/');
    let verbose = query::Query::parse(uri.query()).get("verbose").is_some();
    let etcd = st.store.current_revision().await;
    let lines = match &etcd {
        Ok(_) => "[+]ping ok\n[+]log ok\n[+]etcd ok\n".to_string(),
        Err(e) => {
            tracing::warn!(check = "etcd", error = %e, "{name} check failed");
            "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n".to_string()
        }
    };
    let text = |body: String| ([("content-type", "text/plain; charset=utf-8")], body);
    match etcd {
        Ok(_) if verbose => (StatusCode::OK, text(format!("{lines}{name} check passed\n"))).into_response(),
        Ok(_) => (StatusCode::OK, text("ok".into())).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, text(format!("{lines}{name} check failed\n"))).into_response(),
    }
}

/// Serves HTTPS on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let app = router(state);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| user_from_cert(c.as_ref()))
                .unwrap_or_else(User::anonymous);
            let svc = hyper_util::service::TowerToHyperService::new(app.layer(Extension(user)));
            let io = hyper_util::rt::TokioIo::new(tls);
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // kube-apiserver's per-connection stream limit (client-go multiplexes a component's
            // watches and requests over one connection).
            builder.http2().max_concurrent_streams(250);
            let conn = builder.serve_connection_with_upgrades(io, svc);
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended with error") },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

async fn dispatch(
    State(st): State<Arc<ApiState>>,
    Extension(user): Extension<User>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    upgrade: Option<Extension<hyper::upgrade::OnUpgrade>>,
    body: Body,
) -> Response {
    let path = uri.path().to_string();
    let accept = headers.get("accept").and_then(|a| a.to_str().ok()).unwrap_or("").to_string();
    if accept.contains("application/vnd.kubernetes.protobuf") && !accept.contains("json") && !accept.contains("*/*") {
        return ApiError::not_acceptable(
            "only the following media types are accepted: application/json, application/yaml",
        )
        .into_response();
    }
    match path.as_str() {
        "/api" | "/api/" => {
            return if discovery::wants_aggregated(&accept) {
                discovery::aggregated_response(&st.registry, true)
            } else {
                json_response(StatusCode::OK, &discovery::api_versions(&st.advertise))
            }
        }
        "/apis" | "/apis/" => {
            return if discovery::wants_aggregated(&accept) {
                discovery::aggregated_response(&st.registry, false)
            } else {
                json_response(StatusCode::OK, &discovery::api_group_list(&st.registry))
            }
        }
        _ => {}
    }
    // metrics.k8s.io is computed from the kubelets, not stored (`metrics.rs`).
    if let Some(p) = metrics::parse(&path) {
        return metrics::serve(&st, &user, &method, p, uri.query()).await.unwrap_or_else(|e| e.into_response());
    }
    let parsed = match request::parse(&st.registry, &path) {
        Some(p) => p,
        None => return (StatusCode::NOT_FOUND, "404 page not found\n").into_response(),
    };
    let t = match parsed {
        request::Parsed::Group(g) => {
            return match discovery::group(&st.registry, &g) {
                Some(v) => json_response(StatusCode::OK, &v),
                None => {
                    ApiError::new(404, "NotFound", "the server could not find the requested resource").into_response()
                }
            }
        }
        request::Parsed::GroupVersion { group, version } => {
            return match discovery::resource_list(&st.registry, &group, &version) {
                Some(v) => json_response(StatusCode::OK, &v),
                None => {
                    ApiError::new(404, "NotFound", "the server could not find the requested resource").into_response()
                }
            }
        }
        request::Parsed::NotFound => {
            return ApiError::new(404, "NotFound", "the server could not find the requested resource").into_response()
        }
        request::Parsed::Resource(t) => t,
    };
    let req = Req {
        st: st.clone(),
        r: t.resource,
        ns: t.namespace,
        name: t.name,
        sub: t.subresource,
        q: query::Query::parse(uri.query()),
        headers,
        method: method.clone(),
    };
    // Subresources like pods/exec are checked with their verb on the subresource.
    let a = auth::rbac::Attributes {
        verb: verb_of(&req).into(),
        group: req.r.group.to_string(),
        resource: req.r.plural.to_string(),
        // `proxy/<path>` is authorized as the `proxy` subresource.
        subresource: req.sub.as_deref().map(|s| s.split('/').next().unwrap_or(s).to_string()).unwrap_or_default(),
        namespace: req.ns.clone().unwrap_or_default(),
        name: req.name.clone().unwrap_or_default(),
        path: None,
    };
    if let Err(e) = st.authz.authorize(st.store.as_ref(), &user, &a).await {
        return e.into_response();
    }
    let span = tracing::debug_span!("request", verb = %method, resource = %req.r.plural, ns = ?req.ns, name = ?req.name, user = %user.name);
    let _e = span.enter();
    match resource_request(req, body, &user, upgrade.map(|u| u.0)).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn resource_request(
    req: Req,
    body: Body,
    user: &User,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> errors::ApiResult<Response> {
    if req.r.is_virtual() {
        if req.method != Method::POST || req.name.is_some() {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({})",
                req.method
            )));
        }
        let b = handlers::read_body(&req.st, body).await?;
        return auth::reviews::create(&req, user, &b).await;
    }
    if let Some(sub) = req.sub.as_deref() {
        // `proxy/<path>` addresses the proxy subresource with a path after it.
        let first = sub.split('/').next().unwrap_or(sub);
        if first == "proxy" && req.r.has_subresource("proxy") && req.name.is_some() {
            return proxy::proxy(&req, body).await;
        }
        if !req.r.has_subresource(sub) {
            return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
        }
    }
    if req.r.namespaced && req.ns.is_none() && req.name.is_some() {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    handlers::validate_write_options(&req.method, &req.q)?;
    let m = req.method.clone();
    let has_name = req.name.is_some();
    match (m, has_name, req.sub.as_deref()) {
        (Method::GET, false, _) => {
            if req.q.flag("watch") {
                watch::serve(req).await
            } else {
                handlers::list(&req).await
            }
        }
        (Method::GET, true, None | Some("status") | Some("approval")) => handlers::get(&req).await,
        (Method::GET, true, Some("scale")) => handlers::get_scale(&req).await,
        (Method::GET, true, Some("log")) => logs::pod_log(&req).await,
        (_, true, Some("exec" | "attach" | "portforward")) if req.r.plural == "pods" => {
            stream::pod_stream(&req, user, upgrade).await
        }
        (Method::POST, false, None) => {
            let b = handlers::read_body(&req.st, body).await?;
            handlers::create(&req, &b, user).await
        }
        (Method::POST, true, Some("token")) => {
            let b = handlers::read_body(&req.st, body).await?;
            auth::reviews::token_request(&req, &b).await
        }
        (Method::POST, true, Some("eviction")) => {
            let b = handlers::read_body(&req.st, body).await?;
            policy::evict(&req, &b).await
        }
        (Method::POST, true, Some("binding")) => {
            let b = handlers::read_body(&req.st, body).await?;
            handlers::bind(&req, &b).await
        }
        (Method::PUT, true, _) => {
            let b = handlers::read_body(&req.st, body).await?;
            handlers::update(&req, &b).await
        }
        (Method::PATCH, true, _) => {
            let b = handlers::read_body(&req.st, body).await?;
            handlers::patch(&req, &b).await
        }
        (Method::DELETE, true, None) => {
            let b = handlers::read_body(&req.st, body).await?;
            handlers::delete(&req, &b).await
        }
        (Method::DELETE, false, None) => {
            let b = handlers::read_body(&req.st, body).await?;
            handlers::delete_collection(&req, &b).await
        }
        (m, _, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}
