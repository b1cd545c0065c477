//! Reading and writing objects in the store: JSON values under their registry keys, with
//! `metadata.resourceVersion` taken from the key's mod revision on every read (it is never
//! trusted from the stored bytes).

use serde_json::Value;

use super::errors::{ApiError, ApiResult};
use crate::registry::Resource;
use crate::store::{txn, KeyValue, OpResponse, Store};

/// An object as stored, with the revision that last changed it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub obj: Value,
    pub rev: i64,
}

/// Decodes a stored value and stamps its resourceVersion.
pub fn decode(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!("stored object {} is not valid JSON: {e}", String::from_utf8_lossy(&kv.key)))
    })?;
    set_rv(&mut v, kv.mod_revision);
    Ok(v)
}

/// Decodes a stored object of resource `r`, in `r`'s version (custom resources are stored in
/// their CRD's storage version; conversion strategy None only rewrites apiVersion).
pub fn decode_as(r: &Resource, kv: &KeyValue) -> ApiResult<Value> {
    let mut v = decode(kv)?;
    convert(r, &mut v);
    Ok(v)
}

/// Whether objects of `r` are served as stored, but for their resourceVersion (no version
/// conversion), so reads may skip the `Value` tree ([`super::rawjson`]).
pub fn served_as_stored(r: &Resource) -> bool {
    !r.is_custom() && crate::registry::convert::storage_of(r).is_none()
}

/// Rewrites a custom object's apiVersion to `r`'s version (conversion strategy None).
pub fn convert(r: &Resource, v: &mut Value) {
    if crate::registry::convert::storage_of(r).is_some() {
        *v = crate::registry::convert::from_storage(r, std::mem::take(v));
        return;
    }
    if r.is_custom() {
        if let Some(o) = v.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(r.api_version()));
        }
    }
}

/// The bytes to store for an object of `r`: custom objects in their storage version.
fn encode_for(r: &Resource, v: &Value) -> Vec<u8> {
    if crate::registry::convert::storage_of(r).is_some() {
        return encode(&crate::registry::convert::to_storage(r, v.clone()));
    }
    match r.custom.as_ref().filter(|c| !c.storage_version.is_empty() && c.storage_version != *r.version) {
        Some(c) => {
            let mut v = v.clone();
            v["apiVersion"] = Value::String(format!("{}/{}", r.group, c.storage_version));
            encode(&v)
        }
        None => encode(v),
    }
}

pub fn set_rv(v: &mut Value, rev: i64) {
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

/// The bytes to store: the object without its resourceVersion.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

pub async fn get(store: &dyn Store, r: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Stored> {
    let (kv, _) = store.get(r.key(ns, name).as_bytes()).await?;
    stored(r, name, kv)
}

/// [`get`] from this server's applied state (a serializable read): for admission's lookups,
/// which read informer caches upstream (eventually consistent, as these are).
pub async fn get_serializable(store: &dyn Store, r: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Stored> {
    stored(r, name, get_serializable_kv(store, r, ns, name).await?)
}

/// [`get_serializable`], the stored bytes left undecoded.
pub async fn get_serializable_kv(
    store: &dyn Store,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<Option<crate::store::KeyValue>> {
    let key = r.key(ns, name).into_bytes();
    let resp = store
        .range(crate::store::RangeRequest { prefix: key.clone(), serializable: true, ..Default::default() })
        .await?;
    Ok(resp.kvs.into_iter().find(|kv| kv.key == key))
}

fn stored(r: &Resource, name: &str, kv: Option<crate::store::KeyValue>) -> ApiResult<Stored> {
    match kv {
        Some(kv) => Ok(Stored { obj: decode_as(r, &kv)?, rev: kv.mod_revision }),
        None => Err(ApiError::not_found(r, name)),
    }
}

/// Stores a new object; AlreadyExists if the key is taken. Returns the stored object.
pub async fn create(
    store: &dyn Store,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
    mut obj: Value,
    ttl: Option<u64>,
) -> ApiResult<Value> {
    let resp = store.txn(txn::create(r.key(ns, name).as_bytes(), encode_for(r, &obj), ttl)).await?;
    if !resp.succeeded {
        return Err(ApiError::already_exists(r, name));
    }
    set_rv(&mut obj, resp.revision);
    Ok(obj)
}

/// Replaces an object if it is still at revision `expected`; Conflict otherwise.
pub async fn update(
    store: &dyn Store,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
    mut obj: Value,
    expected: i64,
    ttl: Option<u64>,
) -> ApiResult<Value> {
    let resp = store.txn(txn::update(r.key(ns, name).as_bytes(), encode_for(r, &obj), expected, ttl)).await?;
    if !resp.succeeded {
        return match resp.responses.first() {
            Some(OpResponse::Get { kv: None }) => Err(ApiError::not_found(r, name)),
            _ => Err(ApiError::stale(r, name)),
        };
    }
    set_rv(&mut obj, resp.revision);
    Ok(obj)
}

/// Deletes an object if it is still at revision `expected`.
pub async fn delete(store: &dyn Store, r: &Resource, ns: Option<&str>, name: &str, expected: i64) -> ApiResult<i64> {
    let resp = store.txn(txn::delete(r.key(ns, name).as_bytes(), expected)).await?;
    if !resp.succeeded {
        return match resp.responses.first() {
            Some(OpResponse::Get { kv: None }) => Err(ApiError::not_found(r, name)),
            _ => Err(ApiError::stale(r, name)),
        };
    }
    Ok(resp.revision)
}
