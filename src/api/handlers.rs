//! The resource verbs: get, list, create, update, patch, delete, deletecollection, and the
//! status/scale/binding subresources, with upstream object semantics (uid, creationTimestamp,
//! generation bumped by spec changes only, finalizers and deletionTimestamp, graceful pod
//! deletion, status subresources that ignore spec and vice versa).

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::Arc;

use super::errors::{ApiError, ApiResult};
use super::objects::{self, Stored};
use super::patch::{self, PatchKind};
use super::query::Query;
use super::selector::{FieldSelector, LabelSelector};
use super::ApiState;
use crate::registry::{self, defaults, typed, validation, ResRef, Resource};
use crate::store::RangeRequest;

/// Everything a resource handler needs about the request.
pub struct Req {
    pub st: Arc<ApiState>,
    pub r: ResRef,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub q: Query,
    pub headers: HeaderMap,
    pub method: Method,
}

impl Req {
    fn ns(&self) -> Option<&str> {
        self.ns.as_deref()
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
    fn accept(&self) -> &str {
        self.headers.get("accept").and_then(|a| a.to_str().ok()).unwrap_or("")
    }
    pub fn wants_table(&self) -> bool {
        self.accept().split(',').next().is_some_and(|first| first.contains("as=Table"))
    }
    /// `as=PartialObjectMetadata` / `as=PartialObjectMetadataList`: metadata only.
    pub fn wants_metadata(&self) -> bool {
        self.accept().split(',').next().is_some_and(|first| first.contains("as=PartialObjectMetadata"))
    }
    fn content_type(&self) -> &str {
        self.headers.get("content-type").and_then(|a| a.to_str().ok()).unwrap_or("application/json")
    }
}

pub fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Decodes a JSON or YAML request body.
pub fn decode_body(ct: &str, body: &[u8]) -> ApiResult<Value> {
    let base = ct.split(';').next().unwrap_or("").trim();
    match base {
        ""
        | "application/json"
        | "application/merge-patch+json"
        | "application/json-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/apply-patch+json"
        | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body of the request could not be decoded as JSON: {e}"))),
        "application/yaml" | "application/apply-patch+yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body of the request could not be decoded as YAML: {e}"))),
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body).map_err(|e| {
            ApiError::bad_request(format!("the body of the request could not be decoded as protobuf: {e}"))
        }),
        _ => Err(super::decode::unsupported_media_type(&[
            "application/json",
            "application/yaml",
            "application/vnd.kubernetes.protobuf",
        ])),
    }
}

/// Reads the body, enforcing the size limit.
pub async fn read_body(st: &ApiState, body: Body) -> ApiResult<bytes::Bytes> {
    use http_body_util::BodyExt;
    // Past the limit the rest is read and discarded (up to a cap), so the client gets the 413
    // Status instead of a connection torn down while it is still sending.
    const DRAIN_CAP: usize = 64 << 20;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= st.max_body {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_CAP {
                break;
            }
        }
    }
    if seen > st.max_body {
        return Err(ApiError::too_large(st.max_body));
    }
    Ok(buf.freeze())
}

/// Checks apiVersion/kind against the URL (upstream's decoder and handler checks, see
/// [`super::decode::check_type`]), fills them in, and checks namespace and name.
fn check_identity(req: &Req, obj: &mut Value, name_from_url: Option<&str>) -> ApiResult<()> {
    let r = &req.r;
    let shown_name =
        name_from_url.or_else(|| obj.pointer("/metadata/name").and_then(|n| n.as_str())).unwrap_or("").to_string();
    super::decode::check_type(r, obj, &shown_name)?;
    let Some(o) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(format!("the body of the request must be a {} object", r.kind)));
    };
    o.insert("apiVersion".into(), json!(r.api_version()));
    o.insert("kind".into(), json!(r.kind));
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    if r.namespaced {
        match (meta.get("namespace").and_then(|n| n.as_str()), req.ns()) {
            (Some(a), Some(b)) if !a.is_empty() && a != b => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            (_, Some(b)) => {
                meta.insert("namespace".into(), json!(b));
            }
            _ => {}
        }
    } else {
        meta.remove("namespace");
    }
    if let Some(url_name) = name_from_url {
        match meta.get("name").and_then(|n| n.as_str()) {
            Some(n) if n != url_name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({url_name})"
                )))
            }
            _ => {
                meta.insert("name".into(), json!(url_name));
            }
        }
    }
    Ok(())
}

/// Typed normalisation with `fieldValidation` handling. Returns warnings for `Warn`.
fn normalize(req: &Req, obj: Value) -> ApiResult<(Value, Vec<String>)> {
    let n = typed::normalize(&req.r, obj).map_err(ApiError::bad_request)?;
    let mut warnings = Vec::new();
    if !n.unknown_fields.is_empty() {
        let msgs: Vec<String> = n.unknown_fields.iter().map(|f| format!("unknown field {f:?}")).collect();
        match req.q.get("fieldValidation").unwrap_or("Warn") {
            "Strict" => return Err(super::decode::strict_error(&req.r, &n.value, &msgs)),
            "Ignore" => {}
            _ => warnings = msgs,
        }
    }
    Ok((n.value, warnings))
}

/// Decodes a create or update body. Duplicate fields are strict decoding errors: under
/// `fieldValidation=Strict` they fail the request together with any unknown fields (one
/// message, as upstream's decoder collects them); under `Warn` (the default) they come back as
/// warnings, and the last value is the one kept, as in Go.
fn decode_write_body(req: &Req, body: &[u8]) -> ApiResult<(Value, Vec<String>)> {
    let (obj, dups) = super::decode::decode_object(&req.r, req.content_type(), body)?;
    if dups.is_empty() {
        return Ok((obj, Vec::new()));
    }
    let mut msgs: Vec<String> = dups.iter().map(|f| format!("duplicate field {f:?}")).collect();
    match req.q.get("fieldValidation").unwrap_or("Warn") {
        "Strict" => {
            if let Ok(n) = typed::normalize(&req.r, obj.clone()) {
                msgs.extend(n.unknown_fields.iter().map(|f| format!("unknown field {f:?}")));
            }
            Err(super::decode::strict_error(&req.r, &obj, &msgs))
        }
        "Ignore" => Ok((obj, Vec::new())),
        _ => Ok((obj, msgs)),
    }
}

/// Validates the options every write takes from the query (upstream's
/// ValidateCreateOptions/UpdateOptions/PatchOptions/DeleteOptions): `dryRun` may only be
/// `All`, `fieldValidation` only `Ignore`, `Warn` or `Strict`. A bad value is a 422 naming the
/// options kind, not something to ignore.
pub fn validate_write_options(method: &Method, q: &Query) -> ApiResult<()> {
    let kind = match *method {
        Method::POST => "CreateOptions",
        Method::PUT => "UpdateOptions",
        Method::PATCH => "PatchOptions",
        Method::DELETE => "DeleteOptions",
        _ => return Ok(()),
    };
    let mut causes = Vec::new();
    let dry_run = q.all("dryRun");
    if dry_run.iter().any(|d| d != "All") {
        let shown: Vec<String> = dry_run.iter().map(|d| format!("{d:?}")).collect();
        causes.push(validation::Cause {
            reason: "FieldValueNotSupported",
            field: "dryRun".into(),
            message: format!("Unsupported value: []string{{{}}}: supported values: \"All\"", shown.join(", ")),
        });
    }
    if *method != Method::DELETE {
        if let Some(v) = q.get("fieldValidation").filter(|v| !matches!(*v, "" | "Ignore" | "Strict" | "Warn")) {
            causes.push(validation::Cause::not_supported(
                "fieldValidation",
                &json!(v),
                &["", "Ignore", "Strict", "Warn"],
            ));
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    let kind = format!("{kind}.meta.k8s.io");
    let mut e = ApiError::new(422, "Invalid", validation::invalid_message(&kind, "", &causes));
    e.details = Some(json!({
        "group": "meta.k8s.io",
        "kind": kind.trim_end_matches(".meta.k8s.io"),
        "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
    }));
    Err(e)
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let v = format!("299 - {:?}", w);
        if let Ok(h) = axum::http::HeaderValue::from_str(&v) {
            resp.headers_mut().append("warning", h);
        }
    }
    resp
}

/// Kinds whose `generation` tracks spec changes (custom resources always have one).
fn has_generation(r: &Resource) -> bool {
    matches!(&*r.group, "apps" | "batch" | "apiextensions.k8s.io")
        || matches!(&*r.kind, "ReplicationController" | "Pod" | "PodDisruptionBudget")
        || r.is_custom()
}

/// The list kind of a resource (`PodList`, or a CRD's `spec.names.listKind`).
pub fn list_kind(r: &Resource) -> String {
    match &r.custom {
        Some(c) if !c.list_kind.is_empty() => c.list_kind.clone(),
        _ => format!("{}List", r.kind),
    }
}

fn status_subresource(r: &Resource) -> bool {
    r.has_subresource("status")
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_name(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    // Upstream truncates the prefix to leave room for the suffix; cut on a character
    // boundary so a multi-byte name cannot split a character (validation rejects it later).
    let mut cut = prefix.len().min(58);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    let prefix = &prefix[..cut];
    let suffix: String = (0..5).map(|_| NAME_CHARS[rng.gen_range(0..NAME_CHARS.len())] as char).collect();
    format!("{prefix}{suffix}")
}

async fn ensure_namespace_usable(req: &Req) -> ApiResult<()> {
    let Some(ns) = req.ns() else { return Ok(()) };
    if !req.r.namespaced {
        return Ok(());
    }
    let nsr = registry::find("", "v1", "namespaces").ok_or_else(|| ApiError::internal("namespaces not registered"))?;
    // This server's applied state first, as upstream's NamespaceLifecycle reads its informer: a
    // linearizable read waits for every write in flight to apply, which doubled a create's
    // latency under load. Only a namespace not found there (created a moment ago through another
    // server) is looked up linearizably.
    // The namespace's bytes are only looked into for metadata.deletionTimestamp (decoding the
    // whole object on every create cost more than the rest of this check).
    let kv = match objects::get_serializable_kv(req.st.store.as_ref(), nsr, None, ns).await? {
        Some(kv) => kv,
        None => req.st.store.get(nsr.key(None, ns).as_bytes()).await?.0.ok_or_else(|| ApiError::not_found(nsr, ns))?,
    };
    let terminating = match super::rawjson::RawObject::parse(&kv.value) {
        Some(o) => o.meta_is_set("deletionTimestamp"),
        None => objects::decode_as(nsr, &kv)?.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()),
    };
    if terminating {
        return Err(ApiError::forbidden(format!(
            "{} {:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            req.r.qualified_plural(),
            req.name.clone().unwrap_or_default()
        )));
    }
    Ok(())
}

// ---------- get / list ----------

/// The metadata-only form of an object.
pub fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
}

pub async fn get(req: &Req) -> ApiResult<Response> {
    let s = objects::get(req.st.store.as_ref(), &req.r, req.ns(), req.name()).await?;
    if req.wants_metadata() {
        return Ok(json_response(StatusCode::OK, &partial(&s.obj)));
    }
    if req.wants_table() {
        return Ok(json_response(StatusCode::OK, &table(req, &[s.obj], &s.rev.to_string(), None)));
    }
    Ok(json_response(StatusCode::OK, &s.obj))
}

/// Builds a meta.k8s.io/v1 Table for `objs`.
pub fn table(req: &Req, objs: &[Value], rv: &str, cont: Option<&str>) -> Value {
    let now = chrono::Utc::now().timestamp();
    let include = req.q.get("includeObject").unwrap_or("Metadata");
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let object = match include {
                "Object" => o.clone(),
                "None" => Value::Null,
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))}),
            };
            json!({"cells": registry::tables::row(&req.r, o, now), "object": object})
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": registry::tables::column_definitions(&req.r),
        "rows": rows,
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: i64,
    start: String,
}

fn encode_continue(rv: i64, start: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&Continue { rv, start: start.into() }).unwrap_or_default())
}

/// Reads a continue token, refusing a foreign or damaged one as upstream's storage does
/// (`invalid continue token: continue key is not valid: …`, a 400).
fn decode_continue(s: &str) -> ApiResult<Continue> {
    use base64::Engine;
    let bad = |why: String| ApiError::bad_request(format!("invalid continue token: continue key is not valid: {why}"));
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|e| bad(e.to_string()))?;
    let c: Continue = serde_json::from_slice(&b).map_err(|_| bad(super::decode::go_json_error(&b)))?;
    if c.rv <= 0 {
        return Err(ApiError::bad_request(
            "invalid continue token: continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        ));
    }
    Ok(c)
}

/// A resourceVersion parameter as a revision, refused as upstream's versioner words it.
pub fn parse_resource_version(rv: &str) -> ApiResult<i64> {
    rv.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: invalid syntax"
        ))
    })
}

/// The ListOptions rules upstream validates before listing (ValidateListOptions): a
/// `resourceVersionMatch` needs a resourceVersion, not a continue token, and a known value.
fn validate_list_options(q: &Query) -> ApiResult<()> {
    let Some(m) = q.get("resourceVersionMatch").filter(|m| !m.is_empty()) else { return Ok(()) };
    let rv = q.get("resourceVersion").unwrap_or("");
    let mut causes = Vec::new();
    if rv.is_empty() {
        causes.push(validation::Cause {
            reason: "FieldValueForbidden",
            field: "resourceVersionMatch".into(),
            message: "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
        });
    }
    if q.get("continue").is_some_and(|c| !c.is_empty()) {
        causes.push(validation::Cause {
            reason: "FieldValueForbidden",
            field: "resourceVersionMatch".into(),
            message: "Forbidden: resourceVersionMatch is forbidden when continue is provided".into(),
        });
    }
    match m {
        "Exact" if rv == "0" => causes.push(validation::Cause {
            reason: "FieldValueForbidden",
            field: "resourceVersionMatch".into(),
            message: "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"".into(),
        }),
        "Exact" | "NotOlderThan" => {}
        other => causes.push(validation::Cause::not_supported(
            "resourceVersionMatch",
            &json!(other),
            &["Exact", "NotOlderThan", ""],
        )),
    }
    if causes.is_empty() {
        return Ok(());
    }
    let mut e = ApiError::new(422, "Invalid", validation::invalid_message("ListOptions.meta.k8s.io", "", &causes));
    e.details = Some(json!({"group": "meta.k8s.io", "kind": "ListOptions",
        "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>()}));
    Err(e)
}

/// The 410 for a continue token whose revision was compacted (upstream's wording).
fn continue_expired() -> ApiError {
    ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
}

pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn from(req: &Req) -> ApiResult<Selectors> {
        Ok(Selectors {
            labels: LabelSelector::parse(req.q.get("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?,
            fields: FieldSelector::parse(req.q.get("fieldSelector").unwrap_or(""), &req.r.kind)
                .map_err(ApiError::bad_request)?,
        })
    }
    pub fn matches(&self, o: &Value) -> bool {
        self.labels.matches(o.pointer("/metadata/labels")) && self.fields.matches(o)
    }

    /// Whether these selectors can be decided from an object's metadata alone (labels, name
    /// and namespace), as [`Selectors::matches_raw`] does.
    pub fn metadata_only(&self) -> bool {
        self.fields.0.iter().all(|(f, _, _)| f == "metadata.name" || f == "metadata.namespace")
    }

    /// [`Selectors::matches`] on a stored object left raw; only for [`Selectors::metadata_only`].
    pub fn matches_raw(&self, o: &super::rawjson::RawObject<'_>) -> bool {
        if !self.labels.is_empty() && !self.labels.matches(o.labels().as_ref()) {
            return false;
        }
        if self.fields.is_empty() {
            return true;
        }
        let meta = json!({"metadata": {"name": o.meta_str("name"), "namespace": o.meta_str("namespace")}});
        self.fields.matches(&meta)
    }
}

/// Lists objects (limit/continue, resourceVersion semantics, selectors). Returns the items,
/// the list's resourceVersion and the continue token.
pub async fn list_objects(req: &Req) -> ApiResult<(Vec<Value>, i64, Option<String>, Option<i64>)> {
    let sel = Selectors::from(req)?;
    list_with(req, &sel, |kv| {
        let o = objects::decode_as(&req.r, kv)?;
        Ok(sel.matches(&o).then_some(o))
    })
    .await
}

/// A page of a list as JSON bytes, each item as stored but for its resourceVersion (see
/// [`super::rawjson`]); for kinds served as stored and metadata-only selectors.
async fn list_raw(
    req: &Req,
    sel: &Selectors,
    partial: bool,
) -> ApiResult<(Vec<Vec<u8>>, i64, Option<String>, Option<i64>)> {
    list_with(req, sel, |kv| {
        let mut out = Vec::with_capacity(kv.value.len() + 32);
        match super::rawjson::RawObject::parse(&kv.value) {
            Some(o) if sel.matches_raw(&o) => o.write_served(kv.mod_revision, partial, &mut out),
            Some(_) => return Ok(None),
            // Not an object: the Value path names the broken key.
            None => {
                let o = objects::decode_as(&req.r, kv)?;
                if !sel.matches(&o) {
                    return Ok(None);
                }
                out = serde_json::to_vec(&o).map_err(|e| ApiError::internal(e.to_string()))?;
            }
        }
        Ok(Some(out))
    })
    .await
}

/// Walks the store for a list: limit/continue, resourceVersion semantics; `accept` turns each
/// stored object into an item, or `None` when the selectors leave it out.
async fn list_with<T>(
    req: &Req,
    sel: &Selectors,
    mut accept: impl FnMut(&crate::store::KeyValue) -> ApiResult<Option<T>>,
) -> ApiResult<(Vec<T>, i64, Option<String>, Option<i64>)> {
    validate_list_options(&req.q)?;
    // A negative limit means no limit upstream (only a positive one pages).
    let limit = req.q.int("limit")?.filter(|l| *l > 0).map(|l| l as usize);
    let (mut revision, mut start_after) = (0i64, String::new());
    let continuing = req.q.get("continue").is_some_and(|c| !c.is_empty());
    if let Some(c) = req.q.get("continue").filter(|c| !c.is_empty()) {
        if req.q.get("resourceVersion").is_some_and(|v| !v.is_empty() && v != "0") {
            return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
        }
        let c = decode_continue(c)?;
        revision = c.rv;
        start_after = c.start;
    } else {
        let rv = req.q.get("resourceVersion").unwrap_or("");
        let rvm = req.q.get("resourceVersionMatch").unwrap_or("");
        if !rv.is_empty() && rv != "0" {
            let n = parse_resource_version(rv)?;
            if rvm == "Exact" {
                revision = n;
            } else {
                let cur = req.st.store.current_revision().await?;
                if n > cur {
                    return Err(ApiError::timeout(format!("Too large resource version: {n}, current: {cur}")));
                }
            }
        } else if rvm == "Exact" {
            return Err(ApiError::bad_request(
                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"\" or \"0\"",
            ));
        }
    }
    let prefix = match sel.fields.exact_name().filter(|_| req.ns.is_some() || !req.r.namespaced) {
        Some(n) => req.r.key(req.ns(), n),
        None => req.r.key_prefix_in(req.ns()),
    };
    let exact = sel.fields.exact_name().is_some() && (req.ns.is_some() || !req.r.namespaced);
    let mut items = Vec::new();
    let mut cont = None;
    let mut remaining = None;
    // Page through the store until `limit` matching items are found (selectors filter after read).
    loop {
        let want = limit
            .map(|l| (l - items.len()).max(1) * if sel.labels.is_empty() && sel.fields.is_empty() { 1 } else { 4 });
        let resp = req
            .st
            .store
            .range(RangeRequest {
                prefix: prefix.as_bytes().to_vec(),
                start_after: start_after.as_bytes().to_vec(),
                limit: want.unwrap_or(0),
                revision,
                count_only: false,
                serializable: false,
            })
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Compacted { .. } if continuing => continue_expired(),
                e => e.into(),
            })?;
        revision = resp.revision;
        let mut last_key = String::new();
        let mut stopped_early = false;
        for kv in &resp.kvs {
            last_key = String::from_utf8_lossy(&kv.key).into_owned();
            if exact && kv.key != prefix.as_bytes() {
                continue;
            }
            if let Some(item) = accept(kv)? {
                items.push(item);
            }
            if limit.is_some_and(|l| items.len() >= l) {
                stopped_early = true;
                break;
            }
        }
        let more = resp.more
            || (stopped_early
                && resp.kvs.last().map(|k| String::from_utf8_lossy(&k.key).into_owned()) != Some(last_key.clone()));
        if limit.is_some_and(|l| items.len() >= l) {
            if more {
                cont = Some(encode_continue(revision, &last_key));
                if sel.labels.is_empty() && sel.fields.is_empty() {
                    let left = req
                        .st
                        .store
                        .range(RangeRequest {
                            prefix: prefix.as_bytes().to_vec(),
                            start_after: last_key.as_bytes().to_vec(),
                            revision,
                            count_only: true,
                            ..Default::default()
                        })
                        .await?;
                    remaining = Some(left.count as i64);
                }
            }
            break;
        }
        if !resp.more {
            break;
        }
        start_after = last_key;
    }
    Ok((items, revision, cont, remaining))
}

pub async fn list(req: &Req) -> ApiResult<Response> {
    let sel = Selectors::from(req)?;
    if !req.wants_table() && objects::served_as_stored(&req.r) && sel.metadata_only() {
        let partial = req.wants_metadata();
        let (items, rev, cont, remaining) = list_raw(req, &sel, partial).await?;
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if let Some(c) = cont {
            meta["continue"] = json!(c);
        }
        if let Some(n) = remaining {
            meta["remainingItemCount"] = json!(n);
        }
        let head = if partial {
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
        } else {
            json!({"kind": list_kind(&req.r), "apiVersion": req.r.api_version(), "metadata": meta})
        };
        let mut body = serde_json::to_vec(&head).map_err(|e| ApiError::internal(e.to_string()))?;
        body.pop(); // the closing brace
        body.extend_from_slice(b",\"items\":[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item);
        }
        body.extend_from_slice(b"]}");
        return Ok((StatusCode::OK, [("content-type", "application/json")], body).into_response());
    }
    let (items, rev, cont, remaining) = list_objects(req).await?;
    if req.wants_metadata() {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if let Some(c) = &cont {
            meta["continue"] = json!(c);
        }
        let items: Vec<Value> = items.iter().map(partial).collect();
        return Ok(json_response(
            StatusCode::OK,
            &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items}),
        ));
    }
    if req.wants_table() {
        return Ok(json_response(StatusCode::OK, &table(req, &items, &rev.to_string(), cont.as_deref())));
    }
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    if let Some(n) = remaining {
        meta["remainingItemCount"] = json!(n);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": list_kind(&req.r), "apiVersion": req.r.api_version(), "metadata": meta, "items": items}),
    ))
}

// ---------- create ----------

pub async fn create(req: &Req, body: &[u8], user: &super::User) -> ApiResult<Response> {
    let (mut obj, mut warnings) = decode_write_body(req, body)?;
    check_identity(req, &mut obj, None)?;
    record_requester(req, &mut obj, user);
    let (obj, w) = create_object(req, obj).await?;
    warnings.extend(w);
    Ok(with_warnings(json_response(StatusCode::CREATED, &obj), &warnings))
}

/// A CertificateSigningRequest records who asked for it (upstream's `PrepareForCreate`): the
/// requester's name and groups replace whatever the body says, so approvers can trust them.
fn record_requester(req: &Req, obj: &mut Value, user: &super::User) {
    if req.r.group != "certificates.k8s.io" || req.r.plural != "certificatesigningrequests" {
        return;
    }
    if let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.insert("username".into(), json!(user.name));
        spec.insert("groups".into(), json!(user.groups));
        spec.remove("uid");
        spec.remove("extra");
    }
}

/// The field manager of a request (the `fieldManager` parameter, else the User-Agent).
fn manager(req: &Req) -> String {
    super::apply::manager_of(req.q.get("fieldManager"), req.headers.get("user-agent").and_then(|u| u.to_str().ok()))
}

/// The create path shared by POST and internal callers; records the creator's fields.
pub async fn create_object(req: &Req, obj: Value) -> ApiResult<(Value, Vec<String>)> {
    create_object_as(req, obj, true).await
}

/// Creates an object; `record` false means its managedFields were already computed (apply).
async fn create_object_as(req: &Req, obj: Value, record: bool) -> ApiResult<(Value, Vec<String>)> {
    let r = &req.r;
    let (mut obj, warnings) = normalize(req, obj)?;
    {
        let meta = obj
            .get_mut("metadata")
            .and_then(|m| m.as_object_mut())
            .ok_or_else(|| ApiError::bad_request("metadata is required"))?;
        let name = meta.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string();
        if name.is_empty() {
            match meta.get("generateName").and_then(|n| n.as_str()).filter(|g| !g.is_empty()) {
                Some(g) => {
                    let g = generate_name(g);
                    meta.insert("name".into(), json!(g));
                }
                None => {
                    return Err(ApiError::invalid(
                        r,
                        "",
                        &[validation::Cause {
                            reason: "FieldValueRequired",
                            field: "metadata.name".into(),
                            message: "Required value: name or generateName is required".into(),
                        }],
                    ))
                }
            }
        }
        if meta.get("resourceVersion").and_then(|v| v.as_str()).is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        if has_generation(r) {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
    }
    if status_subresource(r) && !matches!(&*r.kind, "Node" | "Namespace" | "PersistentVolume") {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
    let name = obj.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
    ensure_namespace_usable(req).await?;
    defaults::apply(r, &mut obj, true);
    super::policy::mutate(req, &mut obj).await?;
    let causes = validation::validate(r, &obj, None);
    if !causes.is_empty() {
        return Err(ApiError::invalid(r, &name, &causes));
    }
    super::policy::validate(req, &obj).await?;
    super::crd::on_write(req, None, &mut obj).await?;
    super::admission::on_create(req, &mut obj).await?;
    if record {
        super::apply::record_update(None, &mut obj, &manager(req), &r.api_version(), None, super::apply::Shape::of(r));
    }
    if req.q.dry_run()? {
        return Ok((obj, warnings));
    }
    let ttl = (r.kind == "Event").then_some(3600);
    match objects::create(req.st.store.as_ref(), r, req.ns(), &name, obj.clone(), ttl).await {
        Ok(o) => Ok((o, warnings)),
        Err(e) => {
            super::admission::undo_create(req, &obj).await;
            Err(e)
        }
    }
}

// ---------- update / patch ----------

/// Which part of the object a write may change.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Main,
    Status,
}

/// Merges `new` onto `old` for an update: keeps system metadata, keeps status on main-resource
/// updates and everything but status on status updates, bumps generation on spec changes.
fn prepare_update(r: &Resource, old: &Value, mut new: Value, part: Part) -> Value {
    if part == Part::Status {
        let mut merged = old.clone();
        merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        if merged["status"].is_null() {
            if let Some(o) = merged.as_object_mut() {
                o.remove("status");
            }
        }
        // Status writers may change labels/annotations? Upstream: only status (and for some
        // kinds a few metadata fields); keep it simple and strict.
        return merged;
    }
    for k in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
        match old.pointer(&format!("/metadata/{k}")) {
            Some(v) => new["metadata"][k] = v.clone(),
            None => {
                if let Some(m) = new.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                    m.remove(k);
                }
            }
        }
    }
    if status_subresource(r) {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    if has_generation(r) {
        // Upstream: everything outside metadata (and status, when it is a subresource) counts;
        // custom resources without a status subresource bump on status changes too.
        let keep_status = r.is_custom() && !status_subresource(r);
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("metadata");
                if !keep_status {
                    o.remove("status");
                }
            }
            v
        };
        if strip(old) != strip(&new) {
            let g = old.pointer("/metadata/generation").and_then(|g| g.as_i64()).unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
    }
    new
}

/// Validates and writes an updated object at `expected` revision; deletes it instead when the
/// update removed the last finalizer of an object being deleted.
async fn write_update(
    req: &Req,
    old: &Stored,
    new: Value,
    part: Part,
    record: bool,
) -> ApiResult<(Value, Vec<String>)> {
    let r = &req.r;
    let (new, warnings) = normalize(req, new)?;
    let mut new = prepare_update(r, &old.obj, new, part);
    defaults::apply(r, &mut new, false);
    let causes = validation::validate(r, &new, Some(&old.obj));
    if !causes.is_empty() {
        return Err(ApiError::invalid(r, req.name(), &causes));
    }
    super::crd::on_write(req, Some(&old.obj), &mut new).await?;
    super::admission::on_update(req, &old.obj, &mut new)?;
    if record {
        let sub = (part == Part::Status).then_some("status");
        super::apply::record_update(
            Some(&old.obj),
            &mut new,
            &manager(req),
            &r.api_version(),
            sub,
            super::apply::Shape::of(r),
        );
    } else if let Some(mf) = old.obj.pointer("/metadata/managedFields").cloned() {
        // A status write through apply keeps the main resource's ownership records.
        if new.pointer("/metadata/managedFields").is_none() {
            new["metadata"]["managedFields"] = mf;
        }
    }
    let strip_rv = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            m.remove("resourceVersion");
        }
        v
    };
    if req.q.dry_run()? {
        return Ok((new, warnings));
    }
    // No-op writes keep the resourceVersion, as upstream does.
    if strip_rv(&new) == strip_rv(&old.obj) {
        return Ok((old.obj.clone(), warnings));
    }
    let terminating = new.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null());
    let no_finalizers = new.pointer("/metadata/finalizers").and_then(|f| f.as_array()).is_none_or(|f| f.is_empty());
    if terminating && no_finalizers && !(r.kind == "Pod" && pod_needs_kubelet(&new)) && r.kind != "Namespace" {
        objects::delete(req.st.store.as_ref(), r, req.ns(), req.name(), old.rev).await?;
        super::admission::on_delete(req, &new).await;
        return Ok((new, warnings));
    }
    let ttl = (r.kind == "Event").then_some(3600);
    let out = objects::update(req.st.store.as_ref(), r, req.ns(), req.name(), new, old.rev, ttl).await?;
    Ok((out, warnings))
}

pub async fn update(req: &Req, body: &[u8]) -> ApiResult<Response> {
    let (mut obj, mut warnings) = decode_write_body(req, body)?;
    let name = req.name().to_string();
    let part = match req.sub.as_deref() {
        Some("status") | Some("approval") => Part::Status,
        Some("scale") => return update_scale(req, obj).await,
        Some("finalize") if req.r.kind == "Namespace" => Part::Main,
        None => Part::Main,
        Some(s) => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({s})"
            )))
        }
    };
    check_identity(req, &mut obj, Some(&name))?;
    let old = objects::get(req.st.store.as_ref(), &req.r, req.ns(), &name).await?;
    if let Some(rv) = obj.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()).filter(|v| !v.is_empty()) {
        if rv != old.rev.to_string() {
            return Err(ApiError::stale(&req.r, &name));
        }
    }
    if req.sub.as_deref() == Some("finalize") {
        let mut merged = old.obj.clone();
        merged["spec"]["finalizers"] = obj.pointer("/spec/finalizers").cloned().unwrap_or(json!([]));
        obj = merged;
    }
    let (out, w) = write_update(req, &old, obj, part, true).await?;
    warnings.extend(w);
    Ok(with_warnings(json_response(StatusCode::OK, &out), &warnings))
}

/// Upstream's JSON patch operation limit (`maxJSONPatchOperations`).
const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Reads a PATCH body as its patch type, failing as upstream's patchers do: a body that is not
/// JSON (or YAML, for apply), or not the shape its type needs (an array of operations, an
/// object), is a 400 with the decoder's message.
fn decode_patch(kind: PatchKind, body: &[u8]) -> ApiResult<Value> {
    use super::decode::{go_json_error, go_type_name as go_type};
    if kind == PatchKind::Apply {
        let v: Value = serde_yaml::from_slice(body).map_err(|e| {
            let text = e.to_string();
            let problem = text.split(" at line ").next().unwrap_or(&text).to_string();
            let line = e.location().map(|l| format!("line {}: ", l.line())).unwrap_or_default();
            ApiError::bad_request(format!("error decoding YAML: error converting YAML to JSON: yaml: {line}{problem}"))
        })?;
        if !v.is_object() {
            return Err(ApiError::bad_request(format!(
                "error decoding YAML: json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                go_type(&v)
            )));
        }
        return Ok(v);
    }
    // Strategic merge patches report the bare decoding error; the others say "error decoding
    // patch" (patch.go's strict pre-decoding under the default Warn field validation).
    let prefix = if kind == PatchKind::Strategic { "" } else { "error decoding patch: " };
    let v: Value =
        serde_json::from_slice(body).map_err(|_| ApiError::bad_request(format!("{prefix}{}", go_json_error(body))))?;
    match (kind, &v) {
        (PatchKind::Json, Value::Array(ops)) => {
            if let Some(op) = ops.iter().find(|o| !o.is_object()) {
                return Err(ApiError::bad_request(format!(
                    "{prefix}json: cannot unmarshal {} into Go value of type handlers.jsonPatchOp",
                    go_type(op)
                )));
            }
            if ops.len() > MAX_JSON_PATCH_OPERATIONS {
                return Err(ApiError::too_large_msg(format!(
                    "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
                    ops.len()
                )));
            }
        }
        (PatchKind::Json, other) => {
            return Err(ApiError::bad_request(format!(
                "{prefix}json: cannot unmarshal {} into Go value of type []handlers.jsonPatchOp",
                go_type(other)
            )))
        }
        // A null merge patch is not a patch (json-patch's ErrBadJSONPatch).
        (PatchKind::Merge, Value::Null) => return Err(ApiError::bad_request("Invalid JSON Patch")),
        (_, Value::Object(_)) => {}
        (_, other) => {
            return Err(ApiError::bad_request(format!(
                "{prefix}json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                go_type(other)
            )))
        }
    }
    Ok(v)
}

pub async fn patch(req: &Req, body: &[u8]) -> ApiResult<Response> {
    // Custom resources have no patch strategy metadata: upstream does not offer SMP for them.
    let accepted: &[&str] = if req.r.is_custom() {
        &["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
    } else {
        &[
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ]
    };
    let kind = PatchKind::from_content_type(req.content_type())
        .filter(|k| !(*k == PatchKind::Strategic && req.r.is_custom()))
        .ok_or_else(|| super::decode::unsupported_media_type(accepted))?;
    let patch_body = decode_patch(kind, body)?;
    let name = req.name().to_string();
    let part = match req.sub.as_deref() {
        Some("status") | Some("approval") => Part::Status,
        Some("scale") | None => Part::Main,
        Some(s) => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({s})"
            )))
        }
    };
    // Retry on conflicts unless the patch pins a resourceVersion (GuaranteedUpdate).
    for _ in 0..10 {
        if kind == PatchKind::Apply {
            match server_side_apply(req, &patch_body, part).await {
                Err(e)
                    if e.code == 409
                        && e.reason == "Conflict"
                        && e.details.as_ref().is_none_or(|d| d.get("causes").is_none()) =>
                {
                    continue
                }
                other => return other,
            }
        }
        let old = objects::get(req.st.store.as_ref(), &req.r, req.ns(), &name).await?;
        let scale_patch = req.sub.as_deref() == Some("scale");
        let mut target = if scale_patch { scale_of(&req.r, &old.obj)? } else { old.obj.clone() };
        patch::apply_standard(kind, &mut target, &patch_body).map_err(|e| {
            if kind == PatchKind::Json {
                // Upstream answers a JSON patch that does not apply (a missing path, a failed
                // `test`) with a generic 422 whose message drops the reason; the reason is
                // kept here as the Status's cause.
                let mut err =
                    ApiError::new(422, "Invalid", "the server rejected our request due to an error in our request");
                err.details =
                    Some(json!({"causes": [{"reason": "FieldValueInvalid", "message": e, "field": "patch"}]}));
                err
            } else {
                ApiError::new(422, "Invalid", e)
            }
        })?;
        if scale_patch {
            return write_scale(req, &old, &target).await;
        }
        check_identity(req, &mut target, Some(&name))?;
        let pinned = patch_body.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()).filter(|v| !v.is_empty());
        if let Some(rv) = pinned {
            if rv != old.rev.to_string() {
                return Err(ApiError::stale(&req.r, &name));
            }
        }
        match write_update(req, &old, target, part, true).await {
            Ok((out, warnings)) => return Ok(with_warnings(json_response(StatusCode::OK, &out), &warnings)),
            Err(e) if e.code == 409 && e.reason == "Conflict" && pinned.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::stale(&req.r, &name))
}

/// One attempt at a server-side apply (`application/apply-patch+yaml`).
async fn server_side_apply(req: &Req, body: &Value, part: Part) -> ApiResult<Response> {
    let name = req.name().to_string();
    let manager = req.q.get("fieldManager").filter(|m| !m.is_empty()).ok_or_else(|| {
        ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        )
    })?;
    if manager.len() > 128 {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes",
        ));
    }
    let force = req.q.flag("force");
    let mut applied = body.clone();
    check_identity(req, &mut applied, Some(&name))?;
    // Unknown fields follow fieldValidation; the applied configuration is the pruned one.
    let (applied, warnings) = normalize(req, applied)?;
    let api_version = req.r.api_version();
    let conflict = |c: super::apply::Conflicts| {
        let mut e = ApiError::new(409, "Conflict", c.message(&api_version));
        let mut d = json!({"name": name, "kind": req.r.plural});
        if !req.r.group.is_empty() {
            d["group"] = json!(req.r.group);
        }
        d["causes"] = json!(c.0.iter().map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m:?} using {api_version}"), "field": f})).collect::<Vec<_>>());
        e.details = Some(d);
        e
    };
    match objects::get(req.st.store.as_ref(), &req.r, req.ns(), &name).await {
        Err(e) if e.code == 404 && part == Part::Main => {
            let obj =
                super::apply::apply(None, &applied, manager, &api_version, force, super::apply::Shape::of(&req.r))
                    .map_err(conflict)?;
            let (out, w) = create_object_as(req, obj, false).await?;
            let mut w2 = warnings;
            w2.extend(w);
            Ok(with_warnings(json_response(StatusCode::CREATED, &out), &w2))
        }
        Err(e) => Err(e),
        Ok(old) => {
            let mut live = old.obj.clone();
            if part == Part::Status {
                // Apply to status: merge only the applied status.
                let mut st_only = json!({"apiVersion": applied["apiVersion"], "kind": applied["kind"], "metadata": applied["metadata"]});
                st_only["status"] = applied.get("status").cloned().unwrap_or(json!({}));
                let _ = super::patch::strategic_merge(&mut live, &json!({"status": st_only["status"]}));
                let (out, w) = write_update(req, &old, live, part, true).await?;
                return Ok(with_warnings(json_response(StatusCode::OK, &out), &[warnings, w].concat()));
            }
            let obj = super::apply::apply(
                Some(&live),
                &applied,
                manager,
                &api_version,
                force,
                super::apply::Shape::of(&req.r),
            )
            .map_err(conflict)?;
            let (out, w) = write_update(req, &old, obj, part, false).await?;
            Ok(with_warnings(json_response(StatusCode::OK, &out), &[warnings, w].concat()))
        }
    }
}

// ---------- scale ----------

fn scale_of(r: &Resource, o: &Value) -> ApiResult<Value> {
    if !r.has_subresource("scale") {
        return Err(ApiError::not_found(r, "scale"));
    }
    if let Some(sc) = r.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        return Ok(super::crd::scale_of(sc, o));
    }
    let sel = o.pointer("/spec/selector").cloned().unwrap_or(json!({}));
    let selector = match sel.get("matchLabels").or(if r.kind == "ReplicationController" { Some(&sel) } else { None }) {
        Some(m) => m
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
        None => String::new(),
    };
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": o.pointer("/metadata/name"),
            "namespace": o.pointer("/metadata/namespace"),
            "uid": o.pointer("/metadata/uid"),
            "resourceVersion": o.pointer("/metadata/resourceVersion"),
            "creationTimestamp": o.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": o.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": o.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    }))
}

pub async fn get_scale(req: &Req) -> ApiResult<Response> {
    let s = objects::get(req.st.store.as_ref(), &req.r, req.ns(), req.name()).await?;
    Ok(json_response(StatusCode::OK, &scale_of(&req.r, &s.obj)?))
}

async fn write_scale(req: &Req, old: &Stored, scale: &Value) -> ApiResult<Response> {
    let replicas = scale.pointer("/spec/replicas").and_then(|r| r.as_i64()).unwrap_or(0);
    if replicas < 0 {
        return Err(ApiError::new(422, "Invalid", format!("Scale.autoscaling {:?} is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0", req.name())));
    }
    if let Some(rv) = scale.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()).filter(|v| !v.is_empty()) {
        if rv != old.rev.to_string() {
            return Err(ApiError::stale(&req.r, req.name()));
        }
    }
    let mut new = old.obj.clone();
    match req.r.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        Some(sc) => registry::custom::set_path(&mut new, &sc.spec_replicas, json!(replicas)),
        None => new["spec"]["replicas"] = json!(replicas),
    }
    let (out, _) = write_update(req, old, new, Part::Main, true).await?;
    Ok(json_response(StatusCode::OK, &scale_of(&req.r, &out)?))
}

async fn update_scale(req: &Req, scale: Value) -> ApiResult<Response> {
    let old = objects::get(req.st.store.as_ref(), &req.r, req.ns(), req.name()).await?;
    write_scale(req, &old, &scale).await
}

// ---------- binding ----------

pub async fn bind(req: &Req, body: &[u8]) -> ApiResult<Response> {
    let b = decode_body(req.content_type(), body)?;
    let node = b.pointer("/target/name").and_then(|n| n.as_str()).filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::new(422, "Invalid", format!("Binding.core {:?} is invalid: target.name: Required value", req.name()))
    })?;
    for _ in 0..5 {
        let old = objects::get(req.st.store.as_ref(), &req.r, req.ns(), req.name()).await?;
        if old.obj.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) {
            return Err(ApiError::conflict(&req.r, req.name(), "pod is being deleted, cannot be assigned to a host"));
        }
        if let Some(cur) = old.obj.pointer("/spec/nodeName").and_then(|n| n.as_str()).filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                &req.r,
                req.name(),
                &format!("pod {} is already assigned to node {cur:?}", req.name()),
            ));
        }
        let mut new = old.obj.clone();
        new["spec"]["nodeName"] = json!(node);
        let conds = new["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
        conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
        new["status"]["conditions"] = json!(conds);
        match objects::update(req.st.store.as_ref(), &req.r, req.ns(), req.name(), new, old.rev, None).await {
            Ok(_) => {
                return Ok(json_response(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ))
            }
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::stale(&req.r, req.name()))
}

// ---------- delete ----------

/// A pod on a node is deleted gracefully: the kubelet stops it and then removes the object.
fn pod_needs_kubelet(p: &Value) -> bool {
    p.pointer("/spec/nodeName").and_then(|n| n.as_str()).is_some_and(|n| !n.is_empty())
        && !matches!(p.pointer("/status/phase").and_then(|s| s.as_str()), Some("Succeeded" | "Failed"))
}

#[derive(Default)]
struct DeleteOptions {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    rv: Option<String>,
}

fn delete_options(req: &Req, body: &[u8]) -> ApiResult<DeleteOptions> {
    let mut o = DeleteOptions {
        grace: req.q.int("gracePeriodSeconds")?,
        propagation: req.q.get("propagationPolicy").map(String::from),
        ..Default::default()
    };
    if !body.iter().all(|b| b.is_ascii_whitespace()) {
        let v = decode_body(req.content_type(), body)?;
        if let Some(g) = v.get("gracePeriodSeconds").and_then(|g| g.as_i64()) {
            o.grace = Some(g);
        }
        if let Some(p) = v.get("propagationPolicy").and_then(|g| g.as_str()) {
            o.propagation = Some(p.into());
        }
        if v.get("orphanDependents") == Some(&Value::Bool(true)) {
            o.propagation = Some("Orphan".into());
        }
        o.uid = v.pointer("/preconditions/uid").and_then(|u| u.as_str()).map(String::from);
        o.rv = v.pointer("/preconditions/resourceVersion").and_then(|u| u.as_str()).map(String::from);
    }
    if let Some(p) = &o.propagation {
        if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::bad_request(format!("propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\"")));
        }
    }
    Ok(o)
}

pub async fn delete(req: &Req, body: &[u8]) -> ApiResult<Response> {
    let opts = delete_options(req, body)?;
    let (code, out) = delete_one(req, req.name(), &opts).await?;
    Ok(json_response(code, &out))
}

async fn delete_one(req: &Req, name: &str, opts: &DeleteOptions) -> ApiResult<(StatusCode, Value)> {
    let r = &req.r;
    for _ in 0..10 {
        let old = objects::get(req.st.store.as_ref(), r, req.ns(), name).await?;
        if let Some(uid) = &opts.uid {
            if old.obj.pointer("/metadata/uid").and_then(|u| u.as_str()) != Some(uid.as_str()) {
                return Err(ApiError::conflict(
                    r,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        old.obj.pointer("/metadata/uid").and_then(|u| u.as_str()).unwrap_or("")
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.rv {
            if *rv != old.rev.to_string() {
                return Err(ApiError::conflict(r, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", old.rev)));
            }
        }
        let mut new = old.obj.clone();
        let already = old.obj.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null());
        let mut finalizers: Vec<Value> =
            new.pointer("/metadata/finalizers").and_then(|f| f.as_array()).cloned().unwrap_or_default();
        let propagation = opts.propagation.clone().unwrap_or_else(|| "Background".into());
        if !already {
            match propagation.as_str() {
                "Foreground" if !finalizers.contains(&json!("foregroundDeletion")) => {
                    finalizers.push(json!("foregroundDeletion"))
                }
                "Orphan" if !finalizers.contains(&json!("orphan")) => finalizers.push(json!("orphan")),
                _ => {}
            }
            super::crd::add_cleanup_finalizer(r, &mut finalizers);
        }
        let graceful_pod = r.kind == "Pod" && pod_needs_kubelet(&old.obj);
        let spec_grace = old.obj.pointer("/spec/terminationGracePeriodSeconds").and_then(|g| g.as_i64()).unwrap_or(30);
        let grace = if graceful_pod { opts.grace.unwrap_or(spec_grace).max(0) } else { 0 };
        let namespace_kind = r.kind == "Namespace";
        if finalizers.is_empty() && !(graceful_pod && grace > 0) && !namespace_kind {
            if req.q.dry_run()? {
                return Ok((StatusCode::OK, old.obj));
            }
            match objects::delete(req.st.store.as_ref(), r, req.ns(), name, old.rev).await {
                Ok(_) => {
                    super::admission::on_delete(req, &old.obj).await;
                    return Ok((StatusCode::OK, old.obj));
                }
                Err(e) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
        // Mark for deletion: finalizers, the kubelet or the namespace controller finish it.
        let cur_grace = old.obj.pointer("/metadata/deletionGracePeriodSeconds").and_then(|g| g.as_i64());
        if already
            && cur_grace.is_some_and(|c| c <= grace)
            && finalizers
                == old.obj.pointer("/metadata/finalizers").and_then(|f| f.as_array()).cloned().unwrap_or_default()
        {
            return Ok((StatusCode::ACCEPTED, old.obj));
        }
        let when = chrono::Utc::now() + chrono::Duration::seconds(grace);
        new["metadata"]["deletionTimestamp"] = json!(when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        if !finalizers.is_empty() {
            new["metadata"]["finalizers"] = json!(finalizers);
        }
        if namespace_kind {
            new["status"]["phase"] = json!("Terminating");
        }
        super::crd::mark_terminating(r, &mut new);
        if req.q.dry_run()? {
            return Ok((StatusCode::ACCEPTED, new));
        }
        match objects::update(req.st.store.as_ref(), r, req.ns(), name, new, old.rev, None).await {
            Ok(o) => {
                if namespace_kind {
                    super::namespaces::finalize_later(req.st.clone(), name.to_string());
                }
                return Ok((if graceful_pod || namespace_kind { StatusCode::OK } else { StatusCode::ACCEPTED }, o));
            }
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::stale(r, name))
}

pub async fn delete_collection(req: &Req, body: &[u8]) -> ApiResult<Response> {
    let opts = delete_options(req, body)?;
    let (items, rev, _, _) = list_objects(req).await?;
    let mut out = Vec::new();
    for o in items {
        let name = o.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
        let ns = o.pointer("/metadata/namespace").and_then(|n| n.as_str()).map(String::from);
        let sub = Req {
            st: req.st.clone(),
            r: req.r.clone(),
            ns: ns.or(req.ns.clone()),
            name: Some(name.clone()),
            sub: None,
            q: req.q.clone(),
            headers: req.headers.clone(),
            method: req.method.clone(),
        };
        match delete_one(&sub, &name, &opts).await {
            Ok((_, o)) => out.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": list_kind(&req.r), "apiVersion": req.r.api_version(), "metadata": {"resourceVersion": rev.to_string()}, "items": out}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_keep_the_prefix_and_never_split_characters() {
        let n = generate_name("web-");
        assert!(n.starts_with("web-") && n.len() == 9, "{n}");
        let long = "é".repeat(40);
        let n = generate_name(&long);
        assert!(n.len() <= 63 && n.is_char_boundary(n.len() - 5), "{n}");
    }

    #[test]
    fn bodies_that_are_not_json_or_yaml_are_bad_requests() {
        assert_eq!(decode_body("application/json", b"{nope").unwrap_err().code, 400);
        assert_eq!(decode_body("application/yaml", b"a: [").unwrap_err().code, 400);
        assert_eq!(decode_body("text/plain", b"x").unwrap_err().code, 415);
        assert_eq!(decode_body("application/vnd.kubernetes.protobuf", b"junk").unwrap_err().code, 400);
    }
}
