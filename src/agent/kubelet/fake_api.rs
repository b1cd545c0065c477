//! A tiny in-memory Kubernetes API for the kubelet's own tests: create, get, list and watch
//! (with `fieldSelector`), PUT, JSON merge patch (also on `/status`) and delete, for any
//! resource path, over plain HTTP. Just enough to drive the real kube-rs client, watcher and
//! reflector the kubelet uses; the real API server lives in `api/`.

use axum::body::{Body, Bytes};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

type Key = (String, String, String); // resource, namespace, name

#[derive(Default)]
struct Db {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<(u64, String, &'static str, Value)>,
    requests: Vec<(String, String, String)>, // method, path?query, body
}

#[derive(Clone)]
pub struct FakeApi {
    db: Arc<Mutex<Db>>,
    tx: broadcast::Sender<(u64, String, &'static str, Value)>,
    pub url: String,
    stop: CancellationToken,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if Arc::strong_count(&self.db) <= 2 {
            self.stop.cancel();
        }
    }
}

struct Target {
    resource: String,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match segs.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        _ => (String::new(), rest),
    };
    Some(Target {
        resource: rest.first()?.to_string(),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

fn query_map(uri: &Uri) -> BTreeMap<String, String> {
    url_pairs(uri.query().unwrap_or_default())
}

fn url_pairs(q: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn matches_selector(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector else { return true };
    sel.split(',').filter(|s| !s.is_empty()).all(|term| {
        let Some((field, want)) = term.split_once('=') else { return true };
        let ptr = format!("/{}", field.replace('.', "/"));
        obj.pointer(&ptr).and_then(Value::as_str).unwrap_or_default() == want
    })
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "reason": reason, "message": message, "code": code});
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake API");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let api = FakeApi {
            db: Arc::new(Mutex::new(Db::default())),
            tx: broadcast::channel(1024).0,
            url,
            stop: CancellationToken::new(),
        };
        let handler_api = api.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let api = handler_api.clone();
            async move { api.handle(method, uri, body).await }
        });
        let stop = api.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        });
        api
    }

    pub fn client(&self) -> kube::Client {
        let cfg = kube::Config::new(self.url.parse().expect("fake API URL"));
        kube::Client::try_from(cfg).expect("client for fake API")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, db: &mut Db, key: Key, mut obj: Value, kind: &'static str) -> Value {
        db.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(db.rv.to_string());
        if kind == "DELETED" {
            db.objects.remove(&key);
        } else {
            db.objects.insert(key.clone(), obj.clone());
        }
        db.log.push((db.rv, key.0.clone(), kind, obj.clone()));
        let _ = self.tx.send((db.rv, key.0, kind, obj.clone()));
        obj
    }

    /// Test access: the stored object.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(&(resource.into(), ns.into(), name.into())).cloned()
    }

    pub fn list(&self, resource: &str) -> Vec<Value> {
        self.lock().objects.iter().filter(|(k, _)| k.0 == resource).map(|(_, v)| v.clone()).collect()
    }

    /// Test access: creates or replaces an object (emits a watch event).
    pub fn put(&self, resource: &str, ns: &str, name: &str, obj: Value) {
        let mut db = self.lock();
        let key = (resource.to_string(), ns.to_string(), name.to_string());
        let kind = if db.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        self.write(&mut db, key, obj, kind);
    }

    /// Every request seen, as (method, path?query, body).
    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.lock().requests.clone()
    }

    async fn handle(&self, method: Method, uri: Uri, body: Bytes) -> Response {
        let pq = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
        self.lock().requests.push((method.to_string(), pq, String::from_utf8_lossy(&body).into_owned()));
        let Some(t) = parse_path(uri.path()) else { return status(404, "NotFound", "no such path".into()) };
        let q = query_map(&uri);
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match (method, t.name.clone()) {
            (Method::GET, None) if q.get("watch").map(String::as_str) == Some("true") => self.watch(t, q),
            (Method::GET, None) => {
                let db = self.lock();
                let items: Vec<Value> = db
                    .objects
                    .iter()
                    .filter(|(k, v)| {
                        k.0 == t.resource
                            && (t.namespace.is_empty() || k.1 == t.namespace)
                            && matches_selector(v, q.get("fieldSelector"))
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                axum::Json(json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": db.rv.to_string()}, "items": items}))
                    .into_response()
            }
            (Method::POST, None) => {
                let mut obj = body;
                let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let key = (t.resource.clone(), t.namespace.clone(), name.clone());
                let mut db = self.lock();
                if db.objects.contains_key(&key) {
                    return status(409, "AlreadyExists", format!("{} {name:?} already exists", t.resource));
                }
                if obj["metadata"]["uid"].is_null() {
                    obj["metadata"]["uid"] = json!(format!("uid-{}-{}", t.resource, db.rv + 1));
                }
                if !t.namespace.is_empty() {
                    obj["metadata"]["namespace"] = json!(t.namespace);
                }
                let created = self.write(&mut db, key, obj, "ADDED");
                (StatusCode::CREATED, axum::Json(created)).into_response()
            }
            (m, Some(name)) => {
                let key = (t.resource.clone(), t.namespace.clone(), name.clone());
                let mut db = self.lock();
                let Some(current) = db.objects.get(&key).cloned() else {
                    return status(404, "NotFound", format!("{} {name:?} not found", t.resource));
                };
                match m {
                    Method::GET => axum::Json(current).into_response(),
                    Method::PUT => {
                        let out = self.write(&mut db, key, body, "MODIFIED");
                        axum::Json(out).into_response()
                    }
                    Method::PATCH => {
                        let mut next = current;
                        let patch =
                            if t.sub.as_deref() == Some("status") { json!({"status": body["status"]}) } else { body };
                        json_patch::merge(&mut next, &patch);
                        let out = self.write(&mut db, key, next, "MODIFIED");
                        axum::Json(out).into_response()
                    }
                    Method::DELETE => {
                        if let Some(uid) = body.pointer("/preconditions/uid").and_then(Value::as_str) {
                            if current["metadata"]["uid"].as_str() != Some(uid) {
                                return status(409, "Conflict", "uid precondition failed".into());
                            }
                        }
                        let out = self.write(&mut db, key, current, "DELETED");
                        axum::Json(out).into_response()
                    }
                    _ => status(405, "MethodNotAllowed", "method not allowed".into()),
                }
            }
            _ => status(405, "MethodNotAllowed", "method not allowed".into()),
        }
    }

    fn watch(&self, t: Target, q: BTreeMap<String, String>) -> Response {
        let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let selector = q.get("fieldSelector").cloned();
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        // Subscribe and read the history under one lock: no event falls in between.
        let (mut live, backlog) = {
            let db = self.lock();
            (self.tx.subscribe(), db.log.iter().filter(|e| e.0 > from).cloned().collect::<Vec<_>>())
        };
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut last = from;
            let relevant = |e: &(u64, String, &'static str, Value)| {
                e.1 == t.resource
                    && (t.namespace.is_empty() || e.3["metadata"]["namespace"].as_str() == Some(t.namespace.as_str()))
                    && matches_selector(&e.3, selector.as_ref())
            };
            for e in backlog {
                last = e.0;
                if relevant(&e) {
                    let line = format!("{}\n", json!({"type": e.2, "object": e.3}));
                    if tx.send(Ok(Bytes::from(line))).await.is_err() {
                        return;
                    }
                }
            }
            loop {
                let e = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    e = live.recv() => match e { Ok(e) => e, Err(_) => return },
                };
                if e.0 <= last || !relevant(&e) {
                    continue;
                }
                last = e.0;
                let line = format!("{}\n", json!({"type": e.2, "object": e.3}));
                if tx.send(Ok(Bytes::from(line))).await.is_err() {
                    return;
                }
            }
        });
        Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
