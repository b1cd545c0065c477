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
//! Simplification: associative lists are keyed by their single patch merge key (upstream uses
//! the full `listMapKeys`, e.g. containerPort+protocol for ports).

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

use super::patch::merge_key;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pe {
    /// An object field.
    F(String),
    /// A list element identified by its merge key (JSON text of `{key: value}`).
    K(String),
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

fn key_of(elem: &Value, key: &str) -> Option<Pe> {
    elem.get(key).map(|v| Pe::K(json!({ key: v }).to_string()))
}

/// The leaf fields `v` sets.
pub fn fields_of(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), "", &mut out);
    out
}

fn walk(v: &Value, path: &mut Path, field: &str, out: &mut FieldSet) {
    if skipped(path) {
        return;
    }
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, x) in o {
                path.push(Pe::F(k.clone()));
                walk(x, path, k, out);
                path.pop();
            }
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(|e| e.is_object()) => {
            let elems: Vec<&Value> = a.iter().collect();
            match merge_key(field, &elems) {
                Some(key) => {
                    for e in a {
                        match key_of(e, key) {
                            Some(k) => {
                                path.push(k);
                                path.push(Pe::Dot);
                                out.insert(path.clone());
                                path.pop();
                                walk(e, path, "", out);
                                path.pop();
                            }
                            None => {
                                out.insert(path.clone());
                            }
                        }
                    }
                }
                None => {
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

/// The value at `path`, if present.
pub fn get<'a>(v: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut cur = v;
    for (i, pe) in path.iter().enumerate() {
        cur = match pe {
            Pe::F(f) => cur.get(f)?,
            Pe::K(k) => {
                let want: Map<String, Value> = serde_json::from_str(k).ok()?;
                cur.as_array()?.iter().find(|e| want.iter().all(|(kk, vv)| e.get(kk) == Some(vv)))?
            }
            Pe::Dot => {
                debug_assert!(i == path.len() - 1);
                cur
            }
        };
    }
    Some(cur)
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
                match a.iter_mut().find(|e| want.iter().all(|(kk, vv)| e.get(kk) == Some(vv))) {
                    Some(x) => x,
                    None => return,
                }
            }
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
                a.retain(|e| !want.iter().all(|(kk, vv)| e.get(kk) == Some(vv)));
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
fn changed(old: &Value, new: &Value) -> FieldSet {
    let a = fields_of(old);
    let b = fields_of(new);
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
) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let touched = match old {
        Some(o) => changed(o, new),
        None => fields_of(new),
    };
    if touched.is_empty() {
        write_entries(new, &entries);
        return;
    }
    let current = fields_of(new);
    for e in entries.iter_mut() {
        e.fields.retain(|p| !touched.contains(p) && current.contains(p));
    }
    let sub = subresource.map(String::from);
    match entries.iter_mut().find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub) {
        Some(e) => {
            e.fields.extend(touched.into_iter().filter(|p| current.contains(p)));
            e.time = now();
        }
        None => entries.push(Entry {
            manager: manager.into(),
            operation: "Update".into(),
            api_version: api_version.into(),
            time: now(),
            subresource: sub,
            fields: touched.into_iter().filter(|p| current.contains(p)).collect(),
        }),
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
            Pe::K(k) => s.push_str(&format!("[{}]", k.trim_start_matches('{').trim_end_matches('}').replace(':', "="))),
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
) -> Result<Value, Conflicts> {
    let new_set = fields_of(applied);
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
    let _ = super::patch::strategic_merge(&mut result, &patch);
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
    entries.push(Entry {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: api_version.into(),
        time: now(),
        subresource: None,
        fields: new_set,
    });
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

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "d"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    #[test]
    fn fields_v1_round_trips_and_uses_keys_for_merge_lists() {
        let f = fields_of(&deploy(2, "x"));
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
        let live = apply(None, &deploy(2, "x"), "alice", "apps/v1", false).unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&live), &mut scaled, "kubectl-scale", "apps/v1", None);
        let err = apply(Some(&scaled), &deploy(2, "x"), "alice", "apps/v1", false).unwrap_err();
        assert_eq!(err.0, vec![("kubectl-scale".to_string(), ".spec.replicas".to_string())]);
        assert_eq!(
            err.message("apps/v1"),
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        let forced = apply(Some(&scaled), &deploy(2, "x"), "alice", "apps/v1", true).unwrap();
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
        let live = apply(None, &deploy(2, "x"), "alice", "apps/v1", false).unwrap();
        let both = apply(Some(&live), &deploy(2, "x"), "bob", "apps/v1", false).unwrap();
        assert_eq!(read_entries(&both).len(), 2);
    }

    #[test]
    fn fields_dropped_from_the_applied_config_are_removed_unless_shared() {
        let mut with_label = deploy(2, "x");
        with_label["metadata"]["labels"]["extra"] = json!("1");
        let live = apply(None, &with_label, "alice", "apps/v1", false).unwrap();
        let after = apply(Some(&live), &deploy(2, "x"), "alice", "apps/v1", false).unwrap();
        assert!(after["metadata"]["labels"].get("extra").is_none(), "{after}");
        // A second container applied then dropped goes away too.
        let mut two = deploy(2, "x");
        two["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "y"}));
        let live = apply(Some(&after), &two, "alice", "apps/v1", false).unwrap();
        assert_eq!(live["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 2);
        let back = apply(Some(&live), &deploy(2, "x"), "alice", "apps/v1", false).unwrap();
        assert_eq!(back["spec"]["template"]["spec"]["containers"], json!([{"name": "c", "image": "x"}]));
    }

    #[test]
    fn updates_take_fields_from_appliers() {
        let live = apply(None, &deploy(2, "x"), "alice", "apps/v1", false).unwrap();
        let mut edited = live.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("z");
        record_update(Some(&live), &mut edited, "kubectl-edit", "apps/v1", None);
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
}
