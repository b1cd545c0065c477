//! Field ownership (`metadata.managedFields`) and server-side apply
//! (k8s.io/apimachinery/pkg/util/managedfields, sigs.k8s.io/structured-merge-diff).
//!
//! Every write records which manager set which fields, as FieldsV1 (`f:` for object fields,
//! `k:{…}` for elements of lists with a merge key, `.` for the element itself). An apply
//! (`PATCH` with `application/apply-patch+yaml`) merges the applied configuration into the live
//! object, refuses to change fields another manager owns with a different value unless
//! `force=true` (409 with one cause per field, upstream's wording), and removes fields this
//! manager applied before but no longer does, unless another manager also owns them.
//!
//! Lists and maps follow the object's schema, as structured-merge-diff does: a list with
//! `x-kubernetes-list-type: map` is keyed by all its `x-kubernetes-list-map-keys` (FieldsV1
//! `k:{"containerPort":80,"protocol":"TCP"}`, keys sorted, a missing key taking its default), a
//! `set` by its values (`v:"a"`), and `atomic` lists and `x-kubernetes-map-type: atomic` maps are
//! owned and replaced whole. Custom resources use their CRD's schema (a list without a list type
//! is atomic); built-in kinds use skiff's OpenAPI definitions, which carry upstream's list types
//! and, where a list has none, its patch merge key (kube-openapi reads that as a one-key map).
//! With no schema at all (tests, unknown fields), lists fall back to the patch merge keys the
//! built-in types declare.

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

use super::patch::merge_key;
use crate::registry::Resource;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pe {
    /// An object field.
    F(String),
    /// A list element identified by its keys (JSON text of `{key: value, …}`, keys sorted).
    K(String),
    /// An element of a set, by its value (JSON text).
    V(String),
    /// The element itself (`.`), recorded for list elements.
    Dot,
}

pub type Path = Vec<Pe>;
pub type FieldSet = BTreeSet<Path>;

/// Fields that identify or describe the object rather than being set by managers.
fn skipped(path: &[Pe]) -> bool {
    matches!(path, [Pe::F(a)] if a == "apiVersion" || a == "kind" || a == "status")
        || matches!(path, [Pe::F(m), Pe::F(f)] if m == "metadata" && matches!(f.as_str(),
            "name" | "namespace" | "uid" | "resourceVersion" | "creationTimestamp" | "generation"
            | "managedFields" | "deletionTimestamp" | "deletionGracePeriodSeconds" | "selfLink"))
}

/// How a list behaves under apply.
#[derive(Debug, Clone, PartialEq)]
pub enum ListSem {
    Atomic,
    Set,
    /// Keyed by these fields.
    Map(Vec<String>),
}

/// The schema an object is walked by: a node of a CRD schema or of the built-in definitions
/// (`$ref`s resolve through `defs`), or nothing (fall back to the built-in merge keys).
#[derive(Clone, Copy)]
pub struct Shape<'a> {
    node: Option<&'a Value>,
    defs: &'a Map<String, Value>,
    /// A CRD schema: lists without a list type are atomic.
    custom: bool,
}

impl<'a> Shape<'a> {
    /// The shape of kind `r`'s objects.
    pub fn of(r: &'a Resource) -> Shape<'a> {
        match &r.custom {
            // Structural schemas have no `$ref`s.
            Some(c) => Shape { node: Some(&c.schema).filter(|s| !s.is_null()), custom: true, ..Shape::none() },
            None => match super::openapi::builtin_shape(r) {
                Some(k) => Shape { node: k.defs.get(&k.root), defs: &k.defs, custom: false },
                None => Shape::none(),
            },
        }
    }

    /// No schema: lists are keyed by the patch merge keys of the built-in types.
    pub fn none() -> Shape<'static> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        Shape { node: None, defs: EMPTY.get_or_init(Map::new), custom: false }
    }

    fn with(self, node: Option<&'a Value>) -> Shape<'a> {
        Shape { node, ..self }
    }

    /// The node with `$ref`/`allOf: [{$ref}]` followed.
    fn resolved(self) -> Option<&'a Value> {
        let mut n = self.node?;
        for _ in 0..16 {
            // (Direct lookups: `Value::pointer` allocates for every path token.)
            let r = n
                .get("$ref")
                .or_else(|| n.get("allOf").and_then(|a| a.get(0)).and_then(|a| a.get("$ref")))
                .and_then(|r| r.as_str());
            match r.and_then(|r| r.rsplit('/').next()).and_then(|name| self.defs.get(name)) {
                Some(d) => n = d,
                None => return Some(n),
            }
        }
        Some(n)
    }

    fn prop(self, k: &str, root: bool) -> Shape<'a> {
        if root && k == "metadata" {
            // A CRD's schema leaves metadata to ObjectMeta.
            return self.with(self.defs.get("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"));
        }
        let n = self.resolved();
        let p = n.and_then(|n| n.get("properties")).and_then(|p| p.get(k));
        let a = n.and_then(|n| n.get("additionalProperties")).filter(|a| a.is_object());
        self.with(p.or(a))
    }

    fn items(self) -> Shape<'a> {
        self.with(self.resolved().and_then(|n| n.get("items")))
    }

    fn map_atomic(self) -> bool {
        self.resolved().and_then(|n| n.get("x-kubernetes-map-type")).and_then(|t| t.as_str()) == Some("atomic")
    }

    /// The list semantics at this node; `field` and the elements guide the no-schema fallback.
    pub fn list_sem(self, field: &str, elems: &[&Value]) -> ListSem {
        let Some(n) = self.resolved() else {
            return match merge_key(field, elems) {
                Some(k) if elems.iter().all(|e| e.is_object()) => ListSem::Map(vec![k.to_string()]),
                _ if super::patch::merges_primitives(field) => ListSem::Set,
                _ => ListSem::Atomic,
            };
        };
        match n.get("x-kubernetes-list-type").and_then(|t| t.as_str()) {
            Some("set") => return ListSem::Set,
            Some("map") => return ListSem::Map(crate::registry::listtype::map_keys(n)),
            Some(_) => return ListSem::Atomic,
            None => {}
        }
        if self.custom {
            return ListSem::Atomic;
        }
        let merge = n.get("x-kubernetes-patch-strategy").and_then(|s| s.as_str()).is_some_and(|s| s.contains("merge"));
        match n.get("x-kubernetes-patch-merge-key").and_then(|k| k.as_str()) {
            Some(k) if merge => ListSem::Map(vec![k.to_string()]),
            _ if merge => ListSem::Set,
            _ => ListSem::Atomic,
        }
    }

    /// The default of a list-map key field of this list's elements.
    fn key_default(self, key: &str) -> Option<Value> {
        let d = self.items().prop(key, false).resolved().and_then(|n| n.get("default")).cloned();
        d.or_else(|| if self.custom { None } else { super::openapi::builtin_key_default(key) })
    }

    /// The key path element of a map-list element; None when a key is missing with no default.
    fn key_of(self, elem: &Value, keys: &[String]) -> Option<Pe> {
        let mut sorted: Vec<&String> = keys.iter().collect();
        sorted.sort();
        let mut m = Map::new();
        for k in sorted {
            let v = elem.get(k).cloned().or_else(|| self.key_default(k))?;
            m.insert(k.clone(), v);
        }
        Some(Pe::K(Value::Object(m).to_string()))
    }
}

/// The leaf fields `v` sets, with no schema (lists keyed by the built-in merge keys).
pub fn fields_of(v: &Value) -> FieldSet {
    fields_in(v, Shape::none())
}

/// The leaf fields `v` sets, walking by `shape`.
pub fn fields_in(v: &Value, shape: Shape) -> FieldSet {
    let mut out = FieldSet::new();
    walk(v, shape, &mut Vec::new(), "", &mut out);
    out
}

fn walk(v: &Value, shape: Shape, path: &mut Path, field: &str, out: &mut FieldSet) {
    if skipped(path) {
        return;
    }
    match v {
        Value::Object(o) if !o.is_empty() && (!shape.map_atomic() || path.is_empty()) => {
            let root = path.is_empty();
            for (k, x) in o {
                path.push(Pe::F(k.clone()));
                walk(x, shape.prop(k, root), path, k, out);
                path.pop();
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let elems: Vec<&Value> = a.iter().collect();
            match shape.list_sem(field, &elems) {
                ListSem::Map(keys) if a.iter().all(|e| e.is_object()) => {
                    for e in a {
                        match shape.key_of(e, &keys) {
                            Some(k) => {
                                path.push(k);
                                path.push(Pe::Dot);
                                out.insert(path.clone());
                                path.pop();
                                walk(e, shape.items(), path, "", out);
                                path.pop();
                            }
                            None => {
                                out.insert(path.clone());
                            }
                        }
                    }
                }
                ListSem::Set => {
                    for e in a {
                        path.push(Pe::V(e.to_string()));
                        out.insert(path.clone());
                        path.pop();
                    }
                }
                _ => {
                    out.insert(path.clone());
                }
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
}

/// Merges an applied configuration into the live object by `shape`: map lists merge element by
/// key, sets take the union, atomic lists and maps are replaced.
pub fn merge(live: &mut Value, applied: &Value, shape: Shape, field: &str, root: bool) {
    match applied {
        Value::Object(p) if !shape.map_atomic() || root => {
            if !live.is_object() {
                *live = Value::Object(Map::new());
            }
            let Some(o) = live.as_object_mut() else { return };
            for (k, v) in p {
                if v.is_null() {
                    o.remove(k);
                    continue;
                }
                let cur = o.entry(k.clone()).or_insert(Value::Null);
                merge(cur, v, shape.prop(k, root), k, false);
            }
        }
        Value::Array(items) => {
            let cur: Vec<Value> = match live {
                Value::Array(a) => std::mem::take(a),
                _ => Vec::new(),
            };
            let all: Vec<&Value> = cur.iter().chain(items.iter()).collect();
            let merged = match shape.list_sem(field, &all) {
                ListSem::Map(keys) if all.iter().all(|e| e.is_object()) => {
                    let mut out = cur;
                    for e in items {
                        let k = shape.key_of(e, &keys);
                        match out.iter().position(|c| k.is_some() && shape.key_of(c, &keys) == k) {
                            Some(i) => merge(&mut out[i], e, shape.items(), "", false),
                            None => out.push(e.clone()),
                        }
                    }
                    out
                }
                ListSem::Set => {
                    let mut out = cur;
                    for e in items {
                        if !out.contains(e) {
                            out.push(e.clone());
                        }
                    }
                    out
                }
                _ => items.clone(),
            };
            *live = Value::Array(merged);
        }
        other => *live = other.clone(),
    }
}

/// The value at `path`, if present.
pub fn get<'a>(v: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut cur = v;
    for (i, pe) in path.iter().enumerate() {
        cur = match pe {
            Pe::F(f) => cur.get(f)?,
            Pe::K(k) => {
                let want: Map<String, Value> = serde_json::from_str(k).ok()?;
                cur.as_array()?.iter().find(|e| key_matches(e, &want))?
            }
            Pe::V(x) => {
                let want: Value = serde_json::from_str(x).ok()?;
                cur.as_array()?.iter().find(|e| **e == want)?
            }
            Pe::Dot => {
                debug_assert!(i == path.len() - 1);
                cur
            }
        };
    }
    Some(cur)
}

/// Whether a list element has the given key values; a key the element omits matches its
/// default (the only keys with defaults are the ones `Shape::key_of` filled in).
fn key_matches(e: &Value, want: &Map<String, Value>) -> bool {
    want.iter().all(|(k, v)| match e.get(k) {
        Some(x) => x == v,
        None => super::openapi::builtin_key_default(k).as_ref() == Some(v),
    })
}

/// Removes the value at `path` (a field, or a keyed list element).
pub fn remove(v: &mut Value, path: &[Pe]) {
    let path: Vec<&Pe> = path.iter().filter(|p| **p != Pe::Dot).collect();
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = v;
    for pe in parents {
        cur = match pe {
            Pe::F(f) => match cur.get_mut(f.as_str()) {
                Some(x) => x,
                None => return,
            },
            Pe::K(k) => {
                let Ok(want) = serde_json::from_str::<Map<String, Value>>(k) else { return };
                let Some(a) = cur.as_array_mut() else { return };
                match a.iter_mut().find(|e| key_matches(e, &want)) {
                    Some(x) => x,
                    None => return,
                }
            }
            // Set elements are leaves; nothing lies below them.
            Pe::V(_) => return,
            Pe::Dot => cur,
        };
    }
    match last {
        Pe::F(f) => {
            if let Some(o) = cur.as_object_mut() {
                o.remove(f.as_str());
            }
        }
        Pe::K(k) => {
            if let (Ok(want), Some(a)) = (serde_json::from_str::<Map<String, Value>>(k), cur.as_array_mut()) {
                a.retain(|e| !key_matches(e, &want));
            }
        }
        Pe::V(x) => {
            if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(x), cur.as_array_mut()) {
                a.retain(|e| *e != want);
            }
        }
        Pe::Dot => {}
    }
}

/// FieldsV1 JSON (a trie) from a field set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for pe in path {
            let k = match pe {
                Pe::F(f) => format!("f:{f}"),
                Pe::K(k) => format!("k:{k}"),
                Pe::V(x) => format!("v:{x}"),
                Pe::Dot => ".".into(),
            };
            let next = cur.entry(k).or_insert_with(|| json!({}));
            let Some(m) = next.as_object_mut() else { break };
            cur = m;
        }
    }
    Value::Object(root)
}

/// A field set from FieldsV1 JSON.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    fn go(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(o) = v.as_object() else { return };
        if o.is_empty() && !path.is_empty() {
            out.insert(path.clone());
            return;
        }
        for (k, x) in o {
            let pe = if let Some(f) = k.strip_prefix("f:") {
                Pe::F(f.to_string())
            } else if let Some(kk) = k.strip_prefix("k:") {
                Pe::K(kk.to_string())
            } else if let Some(vv) = k.strip_prefix("v:") {
                Pe::V(vv.to_string())
            } else if k == "." {
                Pe::Dot
            } else {
                continue;
            };
            path.push(pe);
            go(x, path, out);
            path.pop();
        }
    }
    go(v, &mut Vec::new(), &mut out);
    out
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    /// A manager's entry written now.
    fn new(manager: &str, operation: &str, api_version: &str, subresource: Option<String>, fields: FieldSet) -> Entry {
        Entry {
            manager: manager.into(),
            operation: operation.into(),
            api_version: api_version.into(),
            time: now(),
            subresource,
            fields,
        }
    }
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or("").to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or("").to_string(),
            time: e["time"].as_str().unwrap_or("").to_string(),
            subresource: e["subresource"].as_str().map(String::from),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({"manager": e.manager, "operation": e.operation, "apiVersion": e.api_version, "time": e.time,
                "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields)});
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Leaf paths whose values differ between `old` and `new` (set, changed, or removed).
fn changed(old: &Value, new: &Value, shape: Shape) -> FieldSet {
    let a = fields_in(old, shape);
    let b = fields_in(new, shape);
    let mut out: FieldSet = b.iter().filter(|p| get(old, p) != get(new, p) || !a.contains(*p)).cloned().collect();
    out.extend(a.difference(&b).cloned());
    out
}

/// Records a non-apply write (create, update, non-apply patch) by `manager`: it takes over the
/// fields it changed; other managers lose them.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    subresource: Option<&str>,
    shape: Shape,
) {
    let sub = subresource.map(String::from);
    let Some(old) = old else {
        // A create: every field is the creator's (one walk of the object, not two).
        let fields = fields_in(new, shape);
        let entries =
            if fields.is_empty() { vec![] } else { vec![Entry::new(manager, "Update", api_version, sub, fields)] };
        write_entries(new, &entries);
        return;
    };
    let mut entries = read_entries(old);
    let touched = changed(old, new, shape);
    if touched.is_empty() {
        write_entries(new, &entries);
        return;
    }
    let current = fields_in(new, shape);
    for e in entries.iter_mut() {
        e.fields.retain(|p| !touched.contains(p) && current.contains(p));
    }
    match entries.iter_mut().find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub) {
        Some(e) => {
            e.fields.extend(touched.into_iter().filter(|p| current.contains(p)));
            e.time = now();
        }
        None => entries.push(Entry::new(
            manager,
            "Update",
            api_version,
            sub,
            touched.into_iter().filter(|p| current.contains(p)).collect(),
        )),
    }
    write_entries(new, &entries);
}

fn path_string(p: &[Pe]) -> String {
    let mut s = String::new();
    for pe in p {
        match pe {
            Pe::F(f) => {
                s.push('.');
                s.push_str(f);
            }
            // structured-merge-diff's form: `[containerPort=80,protocol="TCP"]`, `[="a"]`.
            Pe::K(k) => {
                let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            Pe::V(x) => s.push_str(&format!("[={x}]")),
            Pe::Dot => {}
        }
    }
    s
}

/// A refused apply: (manager, field) pairs, in upstream's message form.
#[derive(Debug, PartialEq)]
pub struct Conflicts(pub Vec<(String, String)>);

impl Conflicts {
    pub fn message(&self, api_version: &str) -> String {
        let n = self.0.len();
        let list: Vec<String> =
            self.0.iter().map(|(m, f)| format!("conflict with {m:?} using {api_version}: {f}")).collect();
        if n == 1 {
            format!("Apply failed with 1 conflict: {}", list[0])
        } else {
            format!("Apply failed with {n} conflicts: {}", list.join("\n"))
        }
    }
}

/// Server-side apply of `applied` by `manager` onto `live` (None = create). Returns the new
/// object (with managedFields), or the conflicts when `force` is false.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
    shape: Shape,
) -> Result<Value, Conflicts> {
    let new_set = fields_in(applied, shape);
    let mut entries = live.map(read_entries).unwrap_or_default();
    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    if let Some(live) = live {
        let mut conflicts: BTreeMap<(String, String), ()> = BTreeMap::new();
        for e in entries.iter().filter(|e| !(e.manager == manager && e.operation == "Apply")) {
            for p in new_set.intersection(&e.fields) {
                if *p.last().unwrap_or(&Pe::Dot) == Pe::Dot {
                    continue;
                }
                if get(live, p) != get(applied, p) {
                    conflicts.insert((e.manager.clone(), path_string(p)), ());
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(Conflicts(conflicts.into_keys().collect()));
        }
    }
    // Merge the applied configuration over the live object.
    let mut patch = applied.clone();
    if let Some(o) = patch.as_object_mut() {
        o.remove("status");
    }
    merge(&mut result, &patch, shape, "", true);
    // Drop what this manager applied before and no longer applies, unless others own it.
    let prev: FieldSet = entries
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply")
        .flat_map(|e| e.fields.clone())
        .collect();
    let others: FieldSet = entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.clone())
        .collect();
    let dropped: Vec<&Path> = prev.difference(&new_set).filter(|p| !others.contains(*p)).collect();
    // Whole keyed elements first (looked up by their key, which their own fields carry), then
    // the remaining leaves, deepest first.
    let mut gone_elems: Vec<Path> = Vec::new();
    for p in dropped.iter().filter(|p| p.last() == Some(&Pe::Dot)) {
        let elem = &p[..p.len() - 1];
        let still_owned = new_set.iter().chain(others.iter()).any(|q| q.len() > elem.len() && q.starts_with(elem));
        if !still_owned {
            remove(&mut result, elem);
            gone_elems.push(elem.to_vec());
        }
    }
    let mut leaves: Vec<&&Path> =
        dropped.iter().filter(|p| p.last() != Some(&Pe::Dot) && !gone_elems.iter().any(|e| p.starts_with(e))).collect();
    leaves.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in leaves {
        remove(&mut result, p);
    }
    // Ownership: this manager owns exactly what it applied; forced fields leave other managers.
    for e in entries.iter_mut().filter(|e| !(e.manager == manager && e.operation == "Apply")) {
        e.fields.retain(|p| {
            !new_set.contains(p) || p.last() == Some(&Pe::Dot) || live.is_some_and(|l| get(l, p) == get(applied, p))
        });
    }
    entries.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    entries.push(Entry::new(manager, "Apply", api_version, None, new_set));
    write_entries(&mut result, &entries);
    Ok(result)
}

/// The field manager of a non-apply request: the `fieldManager` parameter, else the client's
/// User-Agent program name (upstream's default).
pub fn manager_of(param: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = param.filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    user_agent
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(128).collect())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> Shape<'static> {
        Shape::of(crate::registry::find("apps", "v1", "deployments").unwrap())
    }

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "d"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    #[test]
    fn fields_v1_round_trips_and_uses_keys_for_merge_lists() {
        let f = fields_in(&deploy(2, "x"), sh());
        let v1 = to_fields_v1(&f);
        assert!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"].is_object(),
            "{v1}"
        );
        assert!(v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["."].is_object());
        assert!(v1["f:metadata"].get("f:name").is_none());
        assert_eq!(from_fields_v1(&v1), f);
    }

    #[test]
    fn apply_conflicts_with_another_managers_field_unless_forced() {
        let live = apply(None, &deploy(2, "x"), "alice", "apps/v1", false, sh()).unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&live), &mut scaled, "kubectl-scale", "apps/v1", None, sh());
        let err = apply(Some(&scaled), &deploy(2, "x"), "alice", "apps/v1", false, sh()).unwrap_err();
        assert_eq!(err.0, vec![("kubectl-scale".to_string(), ".spec.replicas".to_string())]);
        assert_eq!(
            err.message("apps/v1"),
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        let forced = apply(Some(&scaled), &deploy(2, "x"), "alice", "apps/v1", true, sh()).unwrap();
        assert_eq!(forced["spec"]["replicas"], 2);
        let owners: Vec<String> = read_entries(&forced)
            .into_iter()
            .filter(|e| e.fields.iter().any(|p| path_string(p) == ".spec.replicas"))
            .map(|e| e.manager)
            .collect();
        assert_eq!(owners, vec!["alice"]);
    }

    #[test]
    fn same_value_is_shared_not_a_conflict() {
        let live = apply(None, &deploy(2, "x"), "alice", "apps/v1", false, sh()).unwrap();
        let both = apply(Some(&live), &deploy(2, "x"), "bob", "apps/v1", false, sh()).unwrap();
        assert_eq!(read_entries(&both).len(), 2);
    }

    #[test]
    fn fields_dropped_from_the_applied_config_are_removed_unless_shared() {
        let mut with_label = deploy(2, "x");
        with_label["metadata"]["labels"]["extra"] = json!("1");
        let live = apply(None, &with_label, "alice", "apps/v1", false, sh()).unwrap();
        let after = apply(Some(&live), &deploy(2, "x"), "alice", "apps/v1", false, sh()).unwrap();
        assert!(after["metadata"]["labels"].get("extra").is_none(), "{after}");
        // A second container applied then dropped goes away too.
        let mut two = deploy(2, "x");
        two["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "y"}));
        let live = apply(Some(&after), &two, "alice", "apps/v1", false, sh()).unwrap();
        assert_eq!(live["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 2);
        let back = apply(Some(&live), &deploy(2, "x"), "alice", "apps/v1", false, sh()).unwrap();
        assert_eq!(back["spec"]["template"]["spec"]["containers"], json!([{"name": "c", "image": "x"}]));
    }

    #[test]
    fn updates_take_fields_from_appliers() {
        let live = apply(None, &deploy(2, "x"), "alice", "apps/v1", false, sh()).unwrap();
        let mut edited = live.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("z");
        record_update(Some(&live), &mut edited, "kubectl-edit", "apps/v1", None, sh());
        let e = read_entries(&edited);
        let img: Path = vec![
            Pe::F("spec".into()),
            Pe::F("template".into()),
            Pe::F("spec".into()),
            Pe::F("containers".into()),
            Pe::K("{\"name\":\"c\"}".into()),
            Pe::F("image".into()),
        ];
        assert!(e.iter().find(|x| x.manager == "kubectl-edit").unwrap().fields.contains(&img));
        assert!(!e.iter().find(|x| x.manager == "alice").unwrap().fields.contains(&img));
    }

    #[test]
    fn default_manager_comes_from_the_user_agent() {
        assert_eq!(manager_of(None, Some("kubectl/v1.32.5 (linux/amd64) kubernetes/abc")), "kubectl");
        assert_eq!(manager_of(Some("helm"), Some("kubectl/v1")), "helm");
    }

    #[test]
    fn container_ports_are_keyed_by_port_and_protocol() {
        let mut d = deploy(1, "x");
        d["spec"]["template"]["spec"]["containers"][0]["ports"] =
            json!([{"containerPort": 80}, {"containerPort": 80, "protocol": "UDP"}]);
        d["metadata"]["finalizers"] = json!(["a/b"]);
        let v1 = to_fields_v1(&fields_in(&d, sh()));
        let ports = &v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:ports"];
        assert!(ports["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["."].is_object(), "{ports}");
        assert!(ports["k:{\"containerPort\":80,\"protocol\":\"UDP\"}"]["f:protocol"].is_object(), "{ports}");
        assert!(v1["f:metadata"]["f:finalizers"]["v:\"a/b\""].is_object(), "{v1}");
        // A second manager adding a UDP port merges beside the TCP one.
        let live = apply(None, &d, "alice", "apps/v1", false, sh()).unwrap();
        let mut other = deploy(1, "x");
        other["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"containerPort": 53, "protocol": "UDP"}]);
        other["metadata"]["finalizers"] = json!(["c/d"]);
        let both = apply(Some(&live), &other, "bob", "apps/v1", false, sh()).unwrap();
        assert_eq!(both["spec"]["template"]["spec"]["containers"][0]["ports"].as_array().unwrap().len(), 3);
        assert_eq!(both["metadata"]["finalizers"], json!(["a/b", "c/d"]));
    }

    fn crd_res() -> crate::registry::Resource {
        let crd = json!({"metadata": {"name": "things.e.com"}, "spec": {"group": "e.com", "scope": "Namespaced",
            "names": {"plural": "things", "kind": "Thing"}, "versions": [{"name": "v1", "served": true, "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {
                "routes": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["host", "port"],
                    "items": {"type": "object", "required": ["host"], "properties": {
                        "host": {"type": "string"}, "port": {"type": "integer", "default": 80}, "backend": {"type": "string"}}}},
                "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                "args": {"type": "array", "items": {"type": "string"}},
                "sel": {"type": "object", "x-kubernetes-map-type": "atomic", "additionalProperties": {"type": "string"}}}}}}}}]}});
        let mut crd = crd;
        crd["status"] = crate::registry::custom::compute_status(&crd, &[], "t");
        crate::registry::custom::resources_from_crd(&crd).remove(0)
    }

    fn thing(spec: Value) -> Value {
        json!({"apiVersion": "e.com/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": spec})
    }

    #[test]
    fn custom_resources_merge_by_their_list_types() {
        let r = crd_res();
        let sh = Shape::of(&r);
        let a =
            thing(json!({"routes": [{"host": "a", "backend": "x"}], "tags": ["t1"], "args": ["1"], "sel": {"k": "v"}}));
        let live = apply(None, &a, "alice", "e.com/v1", false, sh).unwrap();
        let v1 = &live["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"];
        assert!(v1["f:routes"]["k:{\"host\":\"a\",\"port\":80}"]["f:backend"].is_object(), "{v1}");
        assert!(v1["f:tags"]["v:\"t1\""].is_object() && v1["f:args"] == json!({}) && v1["f:sel"] == json!({}), "{v1}");
        let b = thing(
            json!({"routes": [{"host": "a", "port": 8080, "backend": "y"}], "tags": ["t2"], "args": ["2"], "sel": {"j": "w"}}),
        );
        let err = apply(Some(&live), &b, "bob", "e.com/v1", false, sh).unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|(_, f)| f.as_str()).collect();
        assert_eq!(fields, vec![".spec.args", ".spec.sel"], "atomic fields conflict whole; keyed elements do not");
        let b = thing(json!({"routes": [{"host": "a", "port": 8080, "backend": "y"}], "tags": ["t2"]}));
        let both = apply(Some(&live), &b, "bob", "e.com/v1", false, sh).unwrap();
        assert_eq!(
            both["spec"]["routes"],
            json!([{"host": "a", "backend": "x"}, {"host": "a", "port": 8080, "backend": "y"}])
        );
        assert_eq!(both["spec"]["tags"], json!(["t1", "t2"]));
        // The same element set differently by another manager is a conflict on that element only.
        let c = thing(json!({"routes": [{"host": "a", "port": 8080, "backend": "z"}]}));
        let err = apply(Some(&both), &c, "carol", "e.com/v1", false, sh).unwrap_err();
        assert_eq!(err.0, vec![("bob".to_string(), ".spec.routes[host=\"a\",port=8080].backend".to_string())]);
    }
}
