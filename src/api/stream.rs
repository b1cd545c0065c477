//! `pods/{name}/exec`, `pods/{name}/attach` and `pods/{name}/portforward`: the API server checks
//! the request, then proxies the protocol upgrade to the pod's kubelet and copies bytes both ways,
//! as kube-apiserver's upgrade-aware proxy does (kubectl-streaming guide §6 "Proxying"):
//! 1. the client's `Authorization` header is not forwarded; the API server dials the kubelet over
//!    TLS with its own kubelet-client certificate ([`super::logs::kubelet_client`]);
//! 2. on the kubelet's 101 it answers the client 101 with the kubelet's upgrade headers, then
//!    joins the two upgraded connections;
//! 3. a kubelet answer of 400 or more is relayed as is; anything else is an error.
//!
//! Since both ends are skiff's, the subprotocol the client offers (`Sec-WebSocket-Protocol`) goes
//! to the kubelet and the kubelet's choice comes back in the 101, so whatever it negotiates —
//! `v5.channel.k8s.io` for kubectl, `v4.channel.k8s.io` for the Python client, the base64 and
//! pre-v4 ones, or kubectl's `SPDY/3.1+portforward.k8s.io` tunnel — holds end to end (the frames
//! are read in `agent::kubelet::streaming`); nothing here parses them. Port-forward's `ports`
//! query (WebSocket channel clients) becomes the kubelet's `port`, as upstream's
//! `PortForwardLocation` writes it.
//!
//! Checks made here, as upstream does: the request must be an upgrade (else 400 "Upgrade request
//! required"); exec and attach refuse Succeeded and Failed pods; port-forward needs phase
//! Running; the container must belong to the pod (defaulted when the pod has one). RBAC already
//! checked the request's verb on the subresource; since a GET upgrade starts a process just like
//! a POST, `create` is also required (the guide's "safe choice", what Kubernetes 1.35 enforces).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::errors::{ApiError, ApiResult};
use super::handlers::Req;
use super::{auth, logs, objects, User};

/// Request headers that make the upgrade (copied to the kubelet request).
const UPGRADE_REQUEST_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// Response headers of the kubelet's 101 relayed to the client.
const UPGRADE_RESPONSE_HEADERS: &[&str] =
    &["connection", "upgrade", "sec-websocket-accept", "sec-websocket-protocol", "x-stream-protocol-version"];

/// True when the request asks to switch protocols (`Connection: Upgrade` plus an `Upgrade`).
pub fn is_upgrade(h: &HeaderMap) -> bool {
    let connection_upgrade = h
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && h.contains_key("upgrade")
}

/// The kubelet path and query for a request (guide §6): `/exec|attach/NS/POD/CONTAINER` with
/// `command` repeated and the stream flags as `1`, or `/portForward/NS/POD` with the requested
/// ports as one `port=A,B` (none for kubectl, whose tunnel names ports per stream).
pub fn kubelet_path(sub: &str, ns: &str, pod: &str, container: &str, q: &[(String, String)]) -> ApiResult<String> {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    Ok(match sub {
        "portforward" => {
            let ports = forwarded_ports(q)?;
            if ports.is_empty() {
                format!("/portForward/{ns}/{pod}")
            } else {
                let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
                format!("/portForward/{ns}/{pod}?port={}", enc(&list.join(",")))
            }
        }
        _ => {
            let mut query = Vec::new();
            if sub == "exec" {
                for (k, v) in q.iter().filter(|(k, _)| k == "command") {
                    query.push(format!("{k}={}", enc(v)));
                }
            }
            for flag in ["stdin", "stdout", "stderr", "tty"] {
                if q.iter().any(|(k, v)| k == flag && parse_bool(v)) {
                    query.push(format!("{flag}=1"));
                }
            }
            format!("/{sub}/{ns}/{pod}/{}?{}", enc(container), query.join("&"))
        }
    })
}

/// `PodPortForwardOptions.ports`: every `ports` value, each a comma-separated list of integers
/// (upstream converts them to int32 and leaves the range check to the kubelet, which answers 400).
pub fn forwarded_ports(q: &[(String, String)]) -> ApiResult<Vec<i32>> {
    let mut ports = Vec::new();
    for (_, v) in q.iter().filter(|(k, _)| k == "ports") {
        for p in v.split(',') {
            let n = p.trim().parse::<i32>().map_err(|e| {
                ApiError::bad_request(format!(
                    "invalid value {p:?} for ports: {e} (ports are numbers, e.g. ports=80,8080)"
                ))
            })?;
            ports.push(n);
        }
    }
    Ok(ports)
}

/// Go's ParseBool, true side (kubectl sends `true`).
fn parse_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// The container an exec/attach addresses: the `container` parameter if the pod has it, else
/// the pod's only container (upstream's defaulting, with its messages).
pub fn choose_container(pod: &serde_json::Value, requested: Option<&str>) -> ApiResult<String> {
    let name = pod.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or_default();
    let list = |k: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{k}"))
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect()
    };
    let app = list("containers");
    let all: Vec<String> =
        app.iter().cloned().chain(list("initContainers")).chain(list("ephemeralContainers")).collect();
    match requested.filter(|c| !c.is_empty()) {
        Some(c) if all.iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if app.len() == 1 => Ok(app[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            app.join(" ")
        ))),
    }
}

/// Handles `pods/{name}/{exec,attach,portforward}`.
pub async fn pod_stream(req: &Req, user: &User, upgrade: Option<OnUpgrade>) -> ApiResult<Response> {
    let sub = req.sub.clone().unwrap_or_default();
    let ns = req.ns.clone().unwrap_or_default();
    let name = req.name.clone().unwrap_or_default();
    if req.method != Method::GET && req.method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            req.method
        )));
    }
    if req.method == Method::GET {
        let a = auth::rbac::Attributes {
            verb: "create".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: sub.clone(),
            namespace: ns.clone(),
            name: name.clone(),
            path: None,
        };
        req.st.authz.authorize(req.st.store.as_ref(), user, &a).await?;
    }
    let pod = objects::get(req.st.store.as_ref(), &req.r, Some(&ns), &name).await?.obj;
    let phase = pod.pointer("/status/phase").and_then(|p| p.as_str()).unwrap_or("Pending");
    let container = if sub == "portforward" {
        if phase != "Running" {
            return Err(ApiError::bad_request(format!("pod {name} is not running and cannot be port-forwarded")));
        }
        String::new()
    } else {
        if phase == "Succeeded" || phase == "Failed" {
            return Err(ApiError::bad_request(format!(
                "cannot {sub} into a container in a completed pod; current phase is {phase}"
            )));
        }
        choose_container(&pod, req.q.get("container"))?
    };
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?;
    if !is_upgrade(&req.headers) {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let Some(client_upgrade) = upgrade else {
        // HTTP/2 has no Upgrade; kubectl uses HTTP/1.1 for streaming.
        return Err(ApiError::bad_request("Upgrade request required (use HTTP/1.1)"));
    };
    let (ip, port) = logs::kubelet_address(req, node).await?;
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
    let pairs = &req.q.pairs;
    let path = kubelet_path(&sub, &ns, &name, &container, pairs)?;
    let url = format!("https://{host}:{port}{path}");
    let uri: hyper::Uri = url.parse().map_err(|e| ApiError::internal(format!("kubelet URL {url}: {e}")))?;

    let mut kreq = hyper::Request::builder().method(req.method.clone()).uri(uri);
    for h in UPGRADE_REQUEST_HEADERS {
        for v in req.headers.get_all(*h) {
            kreq = kreq.header(*h, v.clone());
        }
    }
    let kreq = kreq
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::internal(format!("kubelet request: {e}")))?;
    let mut resp = req
        .st
        .kubelet
        .request(kreq)
        .await
        .map_err(|e| ApiError::new(502, "InternalError", format!("error dialing backend: {e}")))?;
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let kubelet_upgrade = hyper::upgrade::on(&mut resp);
        let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for h in UPGRADE_RESPONSE_HEADERS {
            for v in resp.headers().get_all(*h) {
                out = out.header(*h, v.clone());
            }
        }
        let (ns2, name2) = (ns.clone(), name.clone());
        tokio::spawn(async move {
            let (client, kubelet) = match tokio::join!(client_upgrade, kubelet_upgrade) {
                (Ok(c), Ok(k)) => (c, k),
                (c, k) => {
                    tracing::debug!(pod = %format!("{ns2}/{name2}"), client = ?c.err(), kubelet = ?k.err(), "stream upgrade failed");
                    return;
                }
            };
            let (mut c, mut k) = (TokioIo::new(client), TokioIo::new(kubelet));
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut k).await {
                tracing::debug!(pod = %format!("{ns2}/{name2}"), error = %e, "stream relay ended");
            }
        });
        return out.body(Body::empty()).map_err(|e| ApiError::internal(e.to_string()));
    }
    // The kubelet refused: relay its answer (a Status as is; plain text as a Status).
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
    if status.as_u16() >= 400 {
        if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v["kind"] == "Status") {
            return Ok(
                (status, [("content-type", HeaderValue::from_static("application/json"))], bytes).into_response()
            );
        }
        let reason = if status == StatusCode::NOT_FOUND { "NotFound" } else { "BadRequest" };
        return Err(ApiError::new(status.as_u16(), reason, String::from_utf8_lossy(&bytes).trim().to_string()));
    }
    Err(ApiError::internal(format!("kubelet answered {status} to a {sub} upgrade")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn kubelet_paths_repeat_commands_and_rewrite_flags_to_1() {
        let q = pairs(&[
            ("command", "sh"),
            ("command", "-c"),
            ("command", "echo a b"),
            ("container", "c1"),
            ("stderr", "true"),
            ("stdout", "true"),
            ("tty", "false"),
        ]);
        assert_eq!(
            kubelet_path("exec", "default", "p1", "c1", &q).unwrap(),
            "/exec/default/p1/c1?command=sh&command=-c&command=echo+a+b&stdout=1&stderr=1"
        );
        assert_eq!(kubelet_path("attach", "ns", "p", "c", &q).unwrap(), "/attach/ns/p/c?stdout=1&stderr=1");
        assert_eq!(kubelet_path("portforward", "ns", "p", "", &q).unwrap(), "/portForward/ns/p");
    }

    #[test]
    fn port_forward_ports_become_the_kubelets_port_parameter() {
        let q = pairs(&[("ports", "8080"), ("ports", "80, 9090")]);
        assert_eq!(kubelet_path("portforward", "ns", "p", "", &q).unwrap(), "/portForward/ns/p?port=8080%2C80%2C9090");
        let e = kubelet_path("portforward", "ns", "p", "", &pairs(&[("ports", "http")])).unwrap_err();
        assert_eq!(e.status()["code"], 400);
        assert!(e.status()["message"].as_str().unwrap().contains("invalid value \"http\" for ports"));
        // The kubelet checks the range (upstream: int32 here, 1–65535 there).
        assert_eq!(
            kubelet_path("portforward", "ns", "p", "", &pairs(&[("ports", "70000")])).unwrap(),
            "/portForward/ns/p?port=70000"
        );
    }

    #[test]
    fn only_connection_upgrade_requests_are_upgrades() {
        let mut h = HeaderMap::new();
        assert!(!is_upgrade(&h));
        h.insert("connection", HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(!is_upgrade(&h), "no Upgrade header");
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
    }

    #[test]
    fn the_container_defaults_only_when_the_pod_has_one() {
        let one = serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}],
            "initContainers": [{"name": "init"}]}});
        assert_eq!(choose_container(&one, None).unwrap(), "a");
        assert_eq!(choose_container(&one, Some("init")).unwrap(), "init");
        let e = choose_container(&one, Some("zz")).unwrap_err();
        assert!(e.status()["message"].as_str().unwrap().contains("container zz is not valid for pod p"));
        let two =
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert!(choose_container(&two, None).is_err());
        assert!(choose_container(&serde_json::json!({}), None).is_err(), "malformed pods are errors, not panics");
    }
}
