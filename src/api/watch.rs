//! Watch: a chunked stream of `{"type": …, "object": …}` lines built from the store's ordered
//! events, with label/field selector transitions (an object leaving the selector is DELETED,
//! entering is ADDED), bookmarks from the store's progress notifications, `sendInitialEvents`,
//! `timeoutSeconds`, and 410 Gone as an ERROR event for a compacted resourceVersion — as
//! kube-apiserver's watch cache serves it.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

use super::errors::{ApiError, ApiResult};
use super::handlers::{Req, Selectors};
use super::objects;
use crate::store::{EventKind, RangeRequest, StoreError, WatchMessage};

fn line(v: &Value) -> bytes::Bytes {
    let mut s = v.to_string();
    s.push('\n');
    bytes::Bytes::from(s)
}

/// An event line around an object already in JSON (see [`super::rawjson`]).
fn raw_line(ty: &str, object: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    bytes::Bytes::from(out)
}

/// The line for one store event of a watch served raw, `Some(None)` when the selectors leave it
/// out (same transitions as the `Value` path), `None` when the new object does not parse (the
/// `Value` path then reports it).
fn raw_event(ev: &crate::store::Event, sel: &Selectors, partial: bool) -> Option<Option<bytes::Bytes>> {
    use super::rawjson::RawObject;
    let rev = ev.kv.mod_revision;
    let everything = sel.labels.is_empty() && sel.fields.is_empty();
    // An update seen by a watch without selectors needs nothing of the old object.
    let skip_old = everything && ev.kind == EventKind::Put;
    let old = ev.prev_kv.as_ref().filter(|_| !skip_old).and_then(|p| RawObject::parse(&p.value));
    let had_old = if skip_old { ev.prev_kv.is_some() } else { old.is_some() };
    let old_m = had_old && (everything || old.as_ref().is_some_and(|o| sel.matches_raw(o)));
    let (ty, obj) = match ev.kind {
        EventKind::Put => {
            let new = RawObject::parse(&ev.kv.value)?;
            let new_m = everything || sel.matches_raw(&new);
            let ty = match (had_old, old_m, new_m) {
                (_, true, true) => "MODIFIED",
                (false, _, true) | (true, false, true) => "ADDED",
                (_, true, false) => "DELETED",
                _ => return Some(None),
            };
            (ty, new)
        }
        EventKind::Delete => match old {
            Some(o) if old_m => ("DELETED", o),
            _ => return Some(None),
        },
    };
    let mut bytes = Vec::with_capacity(ev.kv.value.len() + 32);
    obj.write_served(rev, partial, &mut bytes);
    Some(Some(raw_line(ty, &bytes)))
}

pub async fn serve(req: Req) -> ApiResult<Response> {
    let sel = Selectors::from(&req)?;
    let bookmarks = req.q.flag("allowWatchBookmarks");
    let send_initial = req.q.get("sendInitialEvents").map(|_| req.q.flag("sendInitialEvents"));
    let timeout = req.q.int("timeoutSeconds")?.filter(|t| *t > 0).map(|t| t as u64).unwrap_or(1800);
    let rv = req.q.get("resourceVersion").unwrap_or("").to_string();
    let prefix = match sel.fields.exact_name().filter(|_| req.ns.is_some() || !req.r.namespaced) {
        Some(n) => req.r.key(req.ns.as_deref(), n),
        None => req.r.key_prefix_in(req.ns.as_deref()),
    };
    let exact_key = sel.fields.exact_name().is_some() && (req.ns.is_some() || !req.r.namespaced);
    let table = req.wants_table();
    // A Table row carries the object as includeObject asks (kubectl's custom-columns -w wants it whole).
    let include = req.q.get("includeObject").unwrap_or("Metadata").to_string();
    let metadata_only = req.wants_metadata();
    // Plain objects (or their metadata) of kinds served as stored skip the Value tree.
    let raw = !table && objects::served_as_stored(&req.r) && sel.metadata_only();
    let store = req.st.store.clone();

    // Initial state: unset/"0" resourceVersion (or sendInitialEvents=true) lists first.
    let mut initial = Vec::new();
    let mut initial_raw = Vec::new();
    let list_first = send_initial.unwrap_or(rv.is_empty() || rv == "0");
    let mut from: i64 = if rv.is_empty() || rv == "0" { 0 } else { super::handlers::parse_resource_version(&rv)? };
    if list_first {
        let resp = store.range(RangeRequest { prefix: prefix.as_bytes().to_vec(), ..Default::default() }).await?;
        for kv in &resp.kvs {
            if exact_key && kv.key != prefix.as_bytes() {
                continue;
            }
            if raw {
                if let Some(o) = super::rawjson::RawObject::parse(&kv.value) {
                    if sel.matches_raw(&o) {
                        let mut bytes = Vec::with_capacity(kv.value.len() + 32);
                        o.write_served(kv.mod_revision, metadata_only, &mut bytes);
                        initial_raw.push(raw_line("ADDED", &bytes));
                    }
                    continue;
                }
            }
            let o = objects::decode_as(&req.r, kv)?;
            if sel.matches(&o) {
                initial.push(o);
            }
        }
        from = resp.revision;
    }
    let stream = match store.watch(prefix.as_bytes().to_vec(), from).await {
        Ok(s) => Ok(s),
        Err(StoreError::Compacted { compact_revision, .. }) => Err(compact_revision),
        Err(e) => return Err(e.into()),
    };
    let r = req.r.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let mut first_table = true;
        let wrap = |o: &Value, first: &mut bool| -> Value {
            if metadata_only {
                return super::handlers::partial(o);
            }
            if !table {
                return o.clone();
            }
            let mut t = json!({
                "kind": "Table",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": o.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))},
                "rows": [{"cells": crate::registry::tables::row(&r, o, chrono::Utc::now().timestamp()),
                          "object": match include.as_str() {
                              "Object" => o.clone(),
                              "None" => Value::Null,
                              _ => super::handlers::partial(o),
                          }}],
            });
            if *first {
                t["columnDefinitions"] = json!(crate::registry::tables::column_definitions(&r));
                *first = false;
            } else {
                t["columnDefinitions"] = json!([]);
            }
            t
        };
        for l in initial_raw {
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        for o in &initial {
            if tx.send(Ok(line(&json!({"type": "ADDED", "object": wrap(o, &mut first_table)})))).await.is_err() {
                return;
            }
        }
        if send_initial == Some(true) && bookmarks {
            let b = json!({"type": "BOOKMARK", "object": {"kind": r.kind, "apiVersion": r.api_version(),
                "metadata": {"resourceVersion": from.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}});
            if tx.send(Ok(line(&b))).await.is_err() {
                return;
            }
        }
        // Upstream's watch cache words it `too old resource version: <asked> (<oldest kept - 1>)`.
        let mut stream = match stream {
            Ok(s) => s,
            Err(compacted) => {
                let e = ApiError::gone(format!("too old resource version: {from} ({compacted})"));
                let _ = tx.send(Ok(line(&json!({"type": "ERROR", "object": e.status()})))).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            };
            let events = match msg {
                None => return,
                Some(Err(StoreError::Compacted { .. })) => {
                    let e = ApiError::gone("too old resource version");
                    let _ = tx.send(Ok(line(&json!({"type": "ERROR", "object": e.status()})))).await;
                    return;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "watch stream ended");
                    return;
                }
                Some(Ok(WatchMessage::Progress(rev))) => {
                    if bookmarks {
                        let b = json!({"type": "BOOKMARK", "object": {"kind": r.kind, "apiVersion": r.api_version(), "metadata": {"resourceVersion": rev.to_string()}}});
                        if tx.send(Ok(line(&b))).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Some(Ok(WatchMessage::Events(evs))) => evs,
            };
            for ev in evs_filter(&events, exact_key, prefix.as_bytes()) {
                if raw {
                    match raw_event(ev, &sel, metadata_only) {
                        Some(Some(l)) => {
                            if tx.send(Ok(l)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Some(None) => continue,
                        // Does not parse: the Value path below reports or skips it.
                        None => {}
                    }
                }
                let rev = ev.kv.mod_revision;
                let old = match &ev.prev_kv {
                    Some(p) => match objects::decode_as(&r, p) {
                        Ok(mut o) => {
                            objects::set_rv(&mut o, rev);
                            Some(o)
                        }
                        Err(_) => None,
                    },
                    None => None,
                };
                let (ty, obj) = match ev.kind {
                    EventKind::Put => {
                        let Ok(new) = objects::decode_as(&r, &ev.kv) else { continue };
                        let new_m = sel.matches(&new);
                        let old_m = old.as_ref().is_some_and(|o| sel.matches(o));
                        match (old.is_some(), old_m, new_m) {
                            (_, true, true) => ("MODIFIED", new),
                            (false, _, true) => ("ADDED", new),
                            (true, false, true) => ("ADDED", new),
                            (_, true, false) => ("DELETED", new),
                            _ => continue,
                        }
                    }
                    EventKind::Delete => match old {
                        Some(o) if sel.matches(&o) => ("DELETED", o),
                        _ => continue,
                    },
                };
                if tx.send(Ok(line(&json!({"type": ty, "object": wrap(&obj, &mut first_table)})))).await.is_err() {
                    return;
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((StatusCode::OK, [("content-type", "application/json")], body).into_response())
}

fn evs_filter<'a>(
    evs: &'a [crate::store::Event],
    exact: bool,
    key: &'a [u8],
) -> impl Iterator<Item = &'a crate::store::Event> + 'a {
    evs.iter().filter(move |e| !exact || e.kv.key == key)
}
