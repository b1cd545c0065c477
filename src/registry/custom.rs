//! Custom resources: what one served version of a CustomResourceDefinition contributes to the
//! registry (its schema, printer columns and scale paths), built from the CRD's JSON, and the
//! CRD's own strategy: validation of the definition and the status the server sets on it
//! (apiextensions-apiserver's validation, naming and establishing controllers). Pure.

use serde_json::{json, Value};
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use super::rules::Rules;

use super::validation::{is_dns1123_label, is_dns1123_subdomain, Cause};
use super::{Resource, Str};

/// The CRD key prefix in the store.
pub const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";
/// Finalizer that holds a deleted CRD until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// One `additionalPrinterColumns` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// `subresources.scale`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// What a CRD says about one of its served versions.
#[derive(Debug, PartialEq)]
pub struct CustomInfo {
    /// `<plural>.<group>`.
    pub crd_name: String,
    /// The version's `schema.openAPIV3Schema` (Null when absent).
    pub schema: Value,
    pub printer_columns: Vec<PrinterColumn>,
    pub scale: Option<ScalePaths>,
    pub storage_version: String,
    /// The CRD's `spec.names.listKind`.
    pub list_kind: String,
    /// The schema's `x-kubernetes-validations`, compiled once (on first use or when the
    /// registry takes this version in).
    pub rules: RulesCell,
}

impl CustomInfo {
    /// The compiled validation rules of this version's schema.
    pub fn rules(&self) -> &Rules {
        self.rules.0.get_or_init(|| Rules::compile(&self.schema))
    }
}

/// Holds compiled rules. Derived from the schema, so it takes no part in comparisons.
#[derive(Default)]
pub struct RulesCell(OnceLock<Rules>);

impl PartialEq for RulesCell {
    fn eq(&self, _: &RulesCell) -> bool {
        true
    }
}

impl std::fmt::Debug for RulesCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RulesCell(compiled: {})", self.0.get().is_some())
    }
}

fn s(v: Option<&Value>) -> String {
    v.and_then(|x| x.as_str()).unwrap_or("").to_string()
}

fn strs(v: Option<&Value>) -> Vec<Str> {
    v.and_then(|x| x.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).map(|x| Cow::Owned(x.to_string())).collect())
        .unwrap_or_default()
}

/// Whether the CRD's status says Established=True.
pub fn is_established(crd: &Value) -> bool {
    condition(crd, "Established").is_some_and(|c| c.get("status").and_then(|s| s.as_str()) == Some("True"))
}

fn condition<'a>(crd: &'a Value, ty: &str) -> Option<&'a Value> {
    crd.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(|t| t.as_str()) == Some(ty)))
}

/// The resources an established CRD serves: one per `served` version. Names come from
/// `status.acceptedNames` (what the naming controller accepted), falling back to `spec.names`.
pub fn resources_from_crd(crd: &Value) -> Vec<Resource> {
    if !is_established(crd) {
        return Vec::new();
    }
    let spec = &crd["spec"];
    let names = match crd.pointer("/status/acceptedNames") {
        Some(n) if n.get("plural").and_then(|p| p.as_str()).is_some_and(|p| !p.is_empty()) => n,
        _ => &spec["names"],
    };
    let group = s(spec.get("group"));
    let plural = s(names.get("plural"));
    let kind = s(names.get("kind"));
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Vec::new();
    }
    let singular = match s(names.get("singular")) {
        x if x.is_empty() => kind.to_lowercase(),
        x => x,
    };
    let list_kind = match s(names.get("listKind")) {
        x if x.is_empty() => format!("{kind}List"),
        x => x,
    };
    let namespaced = spec.get("scope").and_then(|x| x.as_str()) != Some("Cluster");
    let versions = spec.get("versions").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v.get("storage") == Some(&Value::Bool(true)))
        .map(|v| s(v.get("name")))
        .unwrap_or_default();
    let crd_name = s(crd.pointer("/metadata/name"));
    let mut out = Vec::new();
    for v in &versions {
        if v.get("served") != Some(&Value::Bool(true)) {
            continue;
        }
        let version = s(v.get("name"));
        if version.is_empty() {
            continue;
        }
        let mut subresources: Vec<Str> = Vec::new();
        if v.pointer("/subresources/status").is_some_and(|x| !x.is_null()) {
            subresources.push(Cow::Borrowed("status"));
        }
        let scale = v.pointer("/subresources/scale").filter(|x| !x.is_null()).map(|sc| ScalePaths {
            spec_replicas: s(sc.get("specReplicasPath")),
            status_replicas: s(sc.get("statusReplicasPath")),
            label_selector: sc.get("labelSelectorPath").and_then(|x| x.as_str()).map(String::from),
        });
        if scale.is_some() {
            subresources.push(Cow::Borrowed("scale"));
        }
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(|c| c.as_array())
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: s(c.get("name")),
                        ty: s(c.get("type")),
                        format: s(c.get("format")),
                        description: s(c.get("description")),
                        priority: c.get("priority").and_then(|p| p.as_i64()).unwrap_or(0),
                        json_path: s(c.get("jsonPath")),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let info = CustomInfo {
            crd_name: crd_name.clone(),
            schema: v.pointer("/schema/openAPIV3Schema").cloned().unwrap_or(Value::Null),
            printer_columns,
            scale,
            storage_version: storage_version.clone(),
            list_kind: list_kind.clone(),
            rules: RulesCell::default(),
        };
        out.push(Resource {
            group: Cow::Owned(group.clone()),
            version: Cow::Owned(version),
            kind: Cow::Owned(kind.clone()),
            plural: Cow::Owned(plural.clone()),
            singular: Cow::Owned(singular.clone()),
            namespaced,
            short_names: Cow::Owned(strs(names.get("shortNames"))),
            categories: Cow::Owned(strs(names.get("categories"))),
            subresources: Cow::Owned(subresources),
            custom: Some(Arc::new(info)),
        });
    }
    out
}

// ---------- the CRD's own strategy ----------

/// Validates a CustomResourceDefinition (apiextensions validation, the parts users meet) being
/// created.
pub fn validate_crd(crd: &Value) -> Vec<Cause> {
    validate_crd_replacing(crd, None)
}

/// Validates a CustomResourceDefinition replacing `old` (None on create): the CEL expressions
/// `old` already had compile with the full environment, new ones with the compatibility
/// version's.
pub fn validate_crd_replacing(crd: &Value, old: Option<&Value>) -> Vec<Cause> {
    let pre = super::rules::Preexisting::of(old);
    let mut out = Vec::new();
    let spec = &crd["spec"];
    let group = s(spec.get("group"));
    let plural = s(spec.pointer("/names/plural"));
    let name = s(crd.pointer("/metadata/name"));
    if name != format!("{plural}.{group}") {
        out.push(Cause::invalid("metadata.name", &json!(name), "must be spec.names.plural+\".\"+spec.group"));
    }
    if group.is_empty() {
        out.push(Cause::required("spec.group"));
    } else if !is_dns1123_subdomain(&group) || !group.contains('.') {
        out.push(Cause::invalid("spec.group", &json!(group), "should be a domain with at least one dot"));
    }
    match spec.get("scope").and_then(|x| x.as_str()) {
        Some("Namespaced" | "Cluster") => {}
        None | Some("") => out.push(Cause::required("spec.scope")),
        Some(_) => out.push(Cause::not_supported("spec.scope", &spec["scope"], &["Cluster", "Namespaced"])),
    }
    for (field, required) in [("plural", true), ("singular", false), ("kind", true), ("listKind", false)] {
        let v = s(spec.pointer(&format!("/names/{field}")));
        if v.is_empty() {
            if required {
                out.push(Cause::required(format!("spec.names.{field}")));
            }
            continue;
        }
        let ok = if matches!(field, "kind" | "listKind") {
            v.bytes().all(|b| b.is_ascii_alphanumeric()) && v.as_bytes()[0].is_ascii_alphabetic()
        } else {
            is_dns1123_label(&v)
        };
        if !ok {
            out.push(Cause::invalid(
                format!("spec.names.{field}"),
                &json!(v),
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            ));
        }
    }
    for (i, sn) in spec.pointer("/names/shortNames").and_then(|x| x.as_array()).into_iter().flatten().enumerate() {
        if !sn.as_str().is_some_and(is_dns1123_label) {
            out.push(Cause::invalid(
                format!("spec.names.shortNames[{i}]"),
                sn,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            ));
        }
    }
    let versions = spec.get("versions").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    if versions.is_empty() {
        out.push(Cause::required("spec.versions"));
    }
    let storage = versions.iter().filter(|v| v.get("storage") == Some(&Value::Bool(true))).count();
    if !versions.is_empty() && storage != 1 {
        out.push(Cause::invalid(
            "spec.versions",
            &Value::Array(versions.clone()),
            "must have exactly one version marked as storage version",
        ));
    }
    // Upstream lifts a schema all versions share to `spec.validation` before validating, so its
    // errors name `spec.validation.openAPIV3Schema…` and are reported once.
    let shared = !versions.is_empty()
        && versions
            .iter()
            .all(|v| v.pointer("/schema/openAPIV3Schema") == versions[0].pointer("/schema/openAPIV3Schema"))
        && versions[0].pointer("/schema/openAPIV3Schema").is_some_and(|s| !s.is_null());
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let vn = s(v.get("name"));
        if vn.is_empty() {
            out.push(Cause::required(format!("spec.versions[{i}].name")));
        } else if !is_dns1123_label(&vn) {
            out.push(Cause::invalid(format!("spec.versions[{i}].name"), &json!(vn), "must be a valid DNS label"));
        }
        if seen.contains(&vn) {
            out.push(Cause::duplicate(format!("spec.versions[{i}].name"), &json!(vn)));
        }
        seen.push(vn);
        match v.pointer("/schema/openAPIV3Schema") {
            None | Some(Value::Null) => out.push(Cause::required(format!("spec.versions[{i}].schema.openAPIV3Schema"))),
            Some(_) if shared && i > 0 => {}
            Some(sch) => {
                let base = if shared {
                    "spec.validation.openAPIV3Schema".to_string()
                } else {
                    format!("spec.versions[{i}].schema.openAPIV3Schema")
                };
                if sch.get("type").and_then(|t| t.as_str()) != Some("object") {
                    out.push(Cause::invalid(
                        format!("{base}.type"),
                        sch.get("type").unwrap_or(&Value::Null),
                        "must be object at the root",
                    ));
                }
                let before = out.len();
                super::schema::check_structural(sch, &base, true, &mut out);
                if out.len() == before {
                    super::rules::check_crd_rules(sch, &base, true, &pre, None, &mut out);
                }
            }
        }
        if let Some(sc) = v.pointer("/subresources/scale").filter(|x| !x.is_null()) {
            for k in ["specReplicasPath", "statusReplicasPath"] {
                let p = s(sc.get(k));
                if p.is_empty() {
                    out.push(Cause::required(format!("spec.versions[{i}].subresources.scale.{k}")));
                } else if !p.starts_with('.') {
                    out.push(Cause::invalid(
                        format!("spec.versions[{i}].subresources.scale.{k}"),
                        &json!(p),
                        "should be a json path under .spec or .status",
                    ));
                }
            }
        }
    }
    if !versions.iter().any(|v| v.get("served") == Some(&Value::Bool(true))) && !versions.is_empty() {
        out.push(Cause::invalid(
            "spec.versions",
            &Value::Array(versions.clone()),
            "must have at least one version marked as served",
        ));
    }
    out
}

/// Validates an update of a CRD: group, names.plural and scope are fixed, and a version listed
/// in `status.storedVersions` may not be removed.
pub fn validate_crd_update(old: &Value, new: &Value) -> Vec<Cause> {
    let mut out = validate_crd_replacing(new, Some(old));
    for (p, f) in
        [("/spec/group", "spec.group"), ("/spec/scope", "spec.scope"), ("/spec/names/plural", "spec.names.plural")]
    {
        if old.pointer(p) != new.pointer(p) {
            out.push(Cause::invalid(f, new.pointer(p).unwrap_or(&Value::Null), "field is immutable"));
        }
    }
    let names: Vec<String> = new
        .pointer("/spec/versions")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().map(|v| s(v.get("name"))).collect())
        .unwrap_or_default();
    for sv in old.pointer("/status/storedVersions").and_then(|v| v.as_array()).into_iter().flatten() {
        if let Some(sv) = sv.as_str() {
            if !names.iter().any(|n| n == sv) {
                out.push(Cause::invalid("status.storedVersions", &json!(sv), "must appear in spec.versions"));
            }
        }
    }
    out
}

fn set_condition(conds: &mut Vec<Value>, ty: &str, status: &str, reason: &str, message: &str, now: &str) {
    if let Some(c) = conds.iter_mut().find(|c| c.get("type").and_then(|t| t.as_str()) == Some(ty)) {
        let changed = c.get("status").and_then(|s| s.as_str()) != Some(status);
        c["status"] = json!(status);
        c["reason"] = json!(reason);
        c["message"] = json!(message);
        if changed {
            c["lastTransitionTime"] = json!(now);
        }
        return;
    }
    conds.push(json!({"type": ty, "status": status, "reason": reason, "message": message, "lastTransitionTime": now}));
}

/// The names another CRD of the same group already holds (accepted plural, singular, kind,
/// listKind, short names).
fn claimed_names(others: &[Value], group: &str, me: &str) -> (Vec<String>, Vec<String>) {
    let mut resources = Vec::new();
    let mut kinds = Vec::new();
    for o in others {
        if s(o.pointer("/spec/group")) != group || s(o.pointer("/metadata/name")) == me {
            continue;
        }
        let n = match o.pointer("/status/acceptedNames") {
            Some(n) if !s(n.get("plural")).is_empty() => n,
            _ => continue,
        };
        for k in ["plural", "singular"] {
            let v = s(n.get(k));
            if !v.is_empty() {
                resources.push(v);
            }
        }
        resources.extend(strs(n.get("shortNames")).into_iter().map(|x| x.into_owned()));
        for k in ["kind", "listKind"] {
            let v = s(n.get(k));
            if !v.is_empty() {
                kinds.push(v);
            }
        }
    }
    (resources, kinds)
}

/// Computes the status the server keeps on a CRD (naming and establishing controllers):
/// `acceptedNames`, conditions NamesAccepted and Established, and `storedVersions`.
/// `others` are the other CRDs in the store, for name conflicts.
pub fn compute_status(crd: &Value, others: &[Value], now: &str) -> Value {
    let mut status = crd.get("status").cloned().filter(|s| s.is_object()).unwrap_or_else(|| json!({}));
    let group = s(crd.pointer("/spec/group"));
    let me = s(crd.pointer("/metadata/name"));
    let names = crd.pointer("/spec/names").cloned().unwrap_or_else(|| json!({}));
    let (resources, kinds) = claimed_names(others, &group, &me);
    let mut conflict = None;
    let plural = s(names.get("plural"));
    let singular = s(names.get("singular"));
    let kind = s(names.get("kind"));
    let list_kind = match s(names.get("listKind")) {
        x if x.is_empty() => format!("{kind}List"),
        x => x,
    };
    if resources.contains(&plural) {
        conflict = Some(format!("{plural:?} is already in use"));
    } else if !singular.is_empty() && resources.contains(&singular) {
        conflict = Some(format!("{singular:?} is already in use"));
    } else if kinds.contains(&kind) {
        conflict = Some(format!("{kind:?} is already in use"));
    } else if kinds.contains(&list_kind) {
        conflict = Some(format!("{list_kind:?} is already in use"));
    } else {
        for sn in strs(names.get("shortNames")) {
            if resources.iter().any(|r| *r == *sn) {
                conflict = Some(format!("{sn:?} is already in use"));
                break;
            }
        }
    }
    let mut conds: Vec<Value> = status.get("conditions").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    match &conflict {
        None => {
            let mut accepted = names.clone();
            accepted["listKind"] = json!(list_kind);
            if singular.is_empty() {
                accepted["singular"] = json!(kind.to_lowercase());
            }
            status["acceptedNames"] = accepted;
            set_condition(&mut conds, "NamesAccepted", "True", "NoConflicts", "no conflicts found", now);
            set_condition(
                &mut conds,
                "Established",
                "True",
                "InitialNamesAccepted",
                "the initial names have been accepted",
                now,
            );
        }
        Some(msg) => {
            // Keep what was accepted before (the resource stays served under those names).
            if status.get("acceptedNames").is_none_or(|a| s(a.get("plural")).is_empty()) {
                status["acceptedNames"] = json!({"plural": "", "kind": ""});
            }
            set_condition(&mut conds, "NamesAccepted", "False", "MultipleNamesNotAllowed", msg, now);
            if !is_established(crd) {
                set_condition(&mut conds, "Established", "False", "NotAccepted", "not all names are accepted", now);
            }
        }
    }
    if crd.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) {
        set_condition(
            &mut conds,
            "Terminating",
            "True",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
            now,
        );
    }
    status["conditions"] = json!(conds);
    let storage = crd
        .pointer("/spec/versions")
        .and_then(|v| v.as_array())
        .and_then(|vs| vs.iter().find(|v| v.get("storage") == Some(&Value::Bool(true))))
        .map(|v| s(v.get("name")))
        .unwrap_or_default();
    let mut stored: Vec<Value> = status.get("storedVersions").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    if !storage.is_empty() && !stored.contains(&json!(storage)) {
        stored.push(json!(storage));
    }
    status["storedVersions"] = json!(stored);
    status
}

/// Evaluates the JSONPath subset printer columns and scale paths use: `.a.b`, `.a[0].b`,
/// `.a[*].b`, `.a[?(@.type=="Ready")].status`. Returns every match.
pub fn json_path<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    let p = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('$');
    let mut cur: Vec<&Value> = vec![v];
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            rest = &r[end..];
            if key.is_empty() {
                continue;
            }
            cur = cur.into_iter().filter_map(|x| x.get(key)).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { return Vec::new() };
            let sel = &r[..end];
            rest = &r[end + 1..];
            if sel == "*" {
                cur = cur.into_iter().filter_map(|x| x.as_array()).flatten().collect();
            } else if let Ok(i) = sel.parse::<i64>() {
                cur = cur
                    .into_iter()
                    .filter_map(|x| x.as_array())
                    .filter_map(|a| {
                        let idx = if i < 0 { a.len() as i64 + i } else { i };
                        usize::try_from(idx).ok().and_then(|i| a.get(i))
                    })
                    .collect();
            } else if let Some(f) = sel.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let Some((field, want)) = f.split_once("==") else { return Vec::new() };
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                let field = field.trim();
                cur = cur
                    .into_iter()
                    .filter_map(|x| x.as_array())
                    .flatten()
                    .filter(|e| {
                        json_path(e, &format!(".{field}")).first().is_some_and(|v| match v {
                            Value::String(s) => s == want,
                            other => serde_json::to_string(other).is_ok_and(|t| t == want),
                        })
                    })
                    .collect();
            } else {
                let key = sel.trim_matches(|c| c == '"' || c == '\'');
                cur = cur.into_iter().filter_map(|x| x.get(key)).collect();
            }
        } else {
            // A path without a leading dot: treat as a field name.
            rest = &rest[rest.len()..];
            let key = p.trim_start_matches('.');
            cur = cur.into_iter().filter_map(|x| x.get(key)).collect();
        }
    }
    cur
}

/// Sets the value at a simple dotted path (`.spec.replicas`), creating objects on the way.
pub fn set_path(v: &mut Value, path: &str, value: Value) {
    let keys: Vec<&str> = path.trim_start_matches('.').split('.').filter(|k| !k.is_empty()).collect();
    let Some((last, parents)) = keys.split_last() else { return };
    let mut cur = v;
    for k in parents {
        if !cur.get(*k).is_some_and(|x| x.is_object()) {
            cur[*k] = json!({});
        }
        cur = &mut cur[*k];
    }
    cur[*last] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {
                "group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"], "categories": ["all"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                     "additionalPrinterColumns": [{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}]},
                    {"name": "v1beta1", "served": true, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                    {"name": "v0", "served": false, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}}
                ]
            }
        })
    }

    #[test]
    fn a_valid_crd_passes_and_its_status_establishes_it() {
        let c = crd();
        assert_eq!(validate_crd(&c), vec![]);
        let st = compute_status(&c, &[], "2026-01-01T00:00:00Z");
        assert_eq!(st["acceptedNames"]["listKind"], "CronTabList");
        assert_eq!(st["storedVersions"], json!(["v1"]));
        let mut c2 = c.clone();
        c2["status"] = st;
        assert!(is_established(&c2));
        let rs = resources_from_crd(&c2);
        assert_eq!(rs.len(), 2, "only served versions");
        assert_eq!(rs[0].kind, "CronTab");
        assert!(rs[0].has_subresource("status") && rs[0].has_subresource("scale"));
        assert!(!rs[1].has_subresource("status"));
        assert_eq!(rs[0].short_names.as_ref(), &[Cow::Borrowed("ct")]);
        assert_eq!(rs[0].key(Some("ns"), "x"), "/registry/stable.example.com/crontabs/ns/x");
    }

    #[test]
    fn crd_validation_names_the_broken_fields() {
        let mut c = crd();
        c["metadata"]["name"] = json!("wrong.stable.example.com");
        c["spec"]["scope"] = json!("Global");
        c["spec"]["versions"][1]["storage"] = json!(true);
        let fields: Vec<String> = validate_crd(&c).into_iter().map(|c| c.field).collect();
        assert!(fields.contains(&"metadata.name".to_string()), "{fields:?}");
        assert!(fields.contains(&"spec.scope".to_string()), "{fields:?}");
        assert!(fields.contains(&"spec.versions".to_string()), "{fields:?}");
        let mut c = crd();
        c["spec"]["versions"][0]["schema"] = Value::Null;
        let fields: Vec<String> = validate_crd(&c).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["spec.versions[0].schema.openAPIV3Schema".to_string()]);
    }

    #[test]
    fn a_name_taken_by_another_crd_is_not_accepted() {
        let mut other = crd();
        other["metadata"]["name"] = json!("othertabs.stable.example.com");
        other["status"] = compute_status(&other, &[], "t");
        let mut mine = crd();
        mine["spec"]["names"]["plural"] = json!("mytabs");
        mine["metadata"]["name"] = json!("mytabs.stable.example.com");
        let st = compute_status(&mine, &[other], "t");
        let na = st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "NamesAccepted").unwrap();
        assert_eq!(na["status"], "False");
        assert!(na["message"].as_str().unwrap().contains("already in use"), "{na}");
        let mut m2 = mine.clone();
        m2["status"] = st;
        assert!(resources_from_crd(&m2).is_empty(), "a CRD never established serves nothing");
    }

    #[test]
    fn json_paths_of_printer_columns_evaluate() {
        let o = json!({"spec": {"replicas": 3}, "status": {"conditions": [{"type": "A", "status": "x"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(json_path(&o, ".spec.replicas"), vec![&json!(3)]);
        assert_eq!(json_path(&o, ".status.conditions[1].type"), vec![&json!("Ready")]);
        assert_eq!(json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"), vec![&json!("True")]);
        assert_eq!(json_path(&o, ".status.conditions[*].type").len(), 2);
        assert!(json_path(&o, ".spec.missing").is_empty());
        let mut v = json!({});
        set_path(&mut v, ".spec.replicas", json!(5));
        assert_eq!(v, json!({"spec": {"replicas": 5}}));
    }
}
