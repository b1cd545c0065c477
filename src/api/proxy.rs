//! `services/{name}/proxy/…` and `nodes/{name}/proxy/…`: the API server as an HTTP proxy to a
//! Service's endpoints or a node's kubelet, as kube-apiserver serves them (`kubectl proxy`,
//! `kubectl get --raw /api/v1/nodes/N/proxy/healthz`). A service name may carry a port
//! (`name:port`) and a scheme (`https:name:port`); skiff proxies plain HTTP to services.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::errors::{ApiError, ApiResult};
use super::handlers::Req;
use super::objects;
use crate::registry;

fn rest_and_query(req: &Req) -> String {
    let sub = req.sub.as_deref().unwrap_or("proxy");
    let rest = sub.strip_prefix("proxy").unwrap_or("");
    let rest = if rest.is_empty() { "/".to_string() } else { rest.to_string() };
    let q: Vec<String> = req
        .q
        .pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>(),
                form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect();
    if q.is_empty() {
        rest
    } else {
        format!("{rest}?{}", q.join("&"))
    }
}

fn relay(status: u16, headers: &hyper::HeaderMap, body: Body) -> Response {
    let mut resp = (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), body).into_response();
    for (k, v) in headers {
        if !matches!(k.as_str(), "connection" | "transfer-encoding" | "keep-alive" | "upgrade") {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
    }
    resp
}

pub async fn proxy(req: &Req, body: Body) -> ApiResult<Response> {
    let name = req.name.clone().unwrap_or_default();
    let path = rest_and_query(req);
    match &*req.r.kind {
        "Node" => {
            if req.method != Method::GET && req.method != Method::HEAD {
                return Err(ApiError::method_not_allowed("skiff proxies only GET and HEAD to kubelets"));
            }
            let (ip, port) = super::logs::kubelet_address(req, &name).await?;
            let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
            let url = format!("https://{host}:{port}{path}");
            let uri: hyper::Uri = url.parse().map_err(|e| ApiError::bad_request(format!("{url}: {e}")))?;
            let resp = req.st.kubelet.get(uri).await.map_err(|e| {
                ApiError::new(503, "ServiceUnavailable", format!("error trying to reach node {name}: {e}"))
            })?;
            let (parts, b) = resp.into_parts();
            Ok(relay(
                parts.status.as_u16(),
                &parts.headers,
                Body::new(b.map_err(|e| std::io::Error::other(e.to_string()))),
            ))
        }
        "Service" => {
            let (scheme, svc, port) = match name.split(':').collect::<Vec<_>>().as_slice() {
                [s] => ("", s.to_string(), String::new()),
                [s, p] => ("", s.to_string(), p.to_string()),
                [sch, s, p] => (*sch, s.to_string(), p.to_string()),
                _ => return Err(ApiError::bad_request(format!("invalid service proxy name {name:?}"))),
            };
            if scheme == "https" {
                return Err(ApiError::bad_request("skiff proxies services over plain HTTP only"));
            }
            let ns = req.ns.clone().unwrap_or_default();
            let svc_obj = objects::get(req.st.store.as_ref(), &req.r, Some(&ns), &svc).await?.obj;
            let ports = svc_obj.pointer("/spec/ports").and_then(|p| p.as_array()).cloned().unwrap_or_default();
            let sp = if port.is_empty() {
                ports.first().cloned()
            } else {
                ports
                    .iter()
                    .find(|p| {
                        p["name"].as_str() == Some(&port)
                            || port.parse::<i64>().is_ok_and(|n| p["port"].as_i64() == Some(n))
                    })
                    .cloned()
            }
            .ok_or_else(|| {
                ApiError::new(503, "ServiceUnavailable", format!("no service port {port:?} found for service {svc:?}"))
            })?;
            let eps =
                registry::find("", "v1", "endpoints").ok_or_else(|| ApiError::internal("endpoints not registered"))?;
            let ep = objects::get(req.st.store.as_ref(), eps, Some(&ns), &svc)
                .await
                .map_err(|_| {
                    ApiError::new(503, "ServiceUnavailable", format!("no endpoints available for service {svc:?}"))
                })?
                .obj;
            let port_name = sp["name"].as_str().unwrap_or("");
            let target = ep.get("subsets").and_then(|s| s.as_array()).into_iter().flatten().find_map(|sub| {
                let addr = sub.pointer("/addresses/0/ip")?.as_str()?.to_string();
                let ports = sub.get("ports")?.as_array()?;
                let p = ports.iter().find(|p| p["name"].as_str().unwrap_or("") == port_name).or(ports.first())?;
                Some((addr, p["port"].as_i64()?))
            });
            let (ip, p) = target.ok_or_else(|| {
                ApiError::new(503, "ServiceUnavailable", format!("no endpoints available for service {svc:?}"))
            })?;
            let url = format!("http://{ip}:{p}{path}");
            let uri: hyper::Uri = url.parse().map_err(|e| ApiError::bad_request(format!("{url}: {e}")))?;
            let bytes =
                axum::body::to_bytes(body, req.st.max_body).await.map_err(|_| ApiError::too_large(req.st.max_body))?;
            let mut out = hyper::Request::builder().method(req.method.clone()).uri(uri);
            if let Some(ct) = req.headers.get("content-type") {
                out = out.header("content-type", ct);
            }
            let out = out.body(http_body_util::Full::new(bytes)).map_err(|e| ApiError::internal(e.to_string()))?;
            let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
            let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(out))
                .await
                .map_err(|_| ApiError::new(504, "Timeout", format!("timed out reaching {url}")))?
                .map_err(|e| ApiError::new(503, "ServiceUnavailable", format!("error trying to reach service: {e}")))?;
            let (parts, b) = resp.into_parts();
            Ok(relay(
                parts.status.as_u16(),
                &parts.headers,
                Body::new(b.map_err(|e| std::io::Error::other(e.to_string()))),
            ))
        }
        _ => Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    }
}
