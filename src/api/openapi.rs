//! OpenAPI v2 (`/openapi/v2`) and v3 (`/openapi/v3`, one document per group/version) for every
//! served kind. Schemas come from k8s-openapi's schemars implementations (upstream names and
//! descriptions, so `kubectl explain` reads them); each kind's schema gets
//! `x-kubernetes-group-version-kind`, list fields get the `x-kubernetes-patch-merge-key` /
//! `x-kubernetes-patch-strategy` extensions kubectl uses to compute strategic merge patches,
//! and each path's operations list the `dryRun`/`fieldManager`/`fieldValidation` parameters
//! kubectl checks for before it relies on server-side field validation.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use super::ApiState;
use crate::registry::typed::{with_type, KindVisitor};
use crate::registry::{self, Registry, Resource, BUILTIN};

struct Register<'a>(&'a mut schemars::SchemaGenerator);

impl KindVisitor for Register<'_> {
    type Out = String;
    fn visit<T: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema>(self) -> String {
        self.0.subschema_for::<T>();
        T::schema_name().into_owned()
    }
}

pub struct Docs {
    /// "api/v1" → (document, hash)
    pub v3: BTreeMap<String, (String, String)>,
    pub v3_index: String,
    pub v2: String,
}

/// The built-in part, computed once: definitions (OpenAPI 3 form) and v2 paths.
struct Base {
    defs: Map<String, Value>,
    v3: BTreeMap<String, (String, String)>,
    v2_paths: Map<String, Value>,
}

/// The patch metadata of a list property: (merge key, strategy); the key is empty for a
/// primitive list merged as a set. Shares patch.rs's table so kubectl computes the patches the
/// server applies.
fn patch_meta(prop: &str, item_ref: &str) -> Option<(&'static str, &'static str)> {
    if super::patch::merges_primitives(prop) {
        return Some(("", "merge"));
    }
    // An unknown element type (a primitive list) has no merge key.
    if item_ref.is_empty() {
        return None;
    }
    super::patch::list_merge_key(prop, item_ref).map(|k| (k, "merge"))
}

fn item_ref(prop: &Value) -> String {
    let items = prop.get("items").cloned().unwrap_or(Value::Null);
    let r = items.get("$ref").or_else(|| items.pointer("/allOf/0/$ref")).and_then(|r| r.as_str()).unwrap_or("");
    r.rsplit('/').next().unwrap_or("").to_string()
}

fn add_patch_extensions(defs: &mut Map<String, Value>) {
    for (_, def) in defs.iter_mut() {
        let Some(props) = def.get_mut("properties").and_then(|p| p.as_object_mut()) else { continue };
        for (name, prop) in props.iter_mut() {
            if prop.get("type").and_then(|t| t.as_str()) != Some("array") {
                continue;
            }
            let r = item_ref(prop);
            if let Some((key, strategy)) = patch_meta(name, &r) {
                if let Some(o) = prop.as_object_mut() {
                    if !key.is_empty() {
                        o.insert("x-kubernetes-patch-merge-key".into(), json!(key));
                    }
                    o.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
                }
            }
        }
    }
}

/// Upstream's `+listType`/`+listMapKey` markers where they say more than the patch merge key
/// (structured-merge-diff keys these lists by all their keys; kube-openapi reads a patch merge
/// key as a one-key map list and a merge strategy without a key as a set). k8s-openapi's schemas
/// do not carry the markers, so they are added here, from k8s.io/api at v1.33.
const LIST_TYPES: &[(&str, &str, &str, &[&str])] = &[
    ("io.k8s.api.core.v1.Container", "ports", "map", &["containerPort", "protocol"]),
    ("io.k8s.api.core.v1.EphemeralContainer", "ports", "map", &["containerPort", "protocol"]),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "map", &["port", "protocol"]),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", "map", &["topologyKey", "whenUnsatisfiable"]),
    ("io.k8s.api.core.v1.PodSpec", "containers", "map", &["name"]),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", "map", &["name"]),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", "map", &["name"]),
    ("io.k8s.api.core.v1.PodSpec", "volumes", "map", &["name"]),
    ("io.k8s.api.core.v1.PodSpec", "tolerations", "atomic", &[]),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", "set", &[]),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", "map", &["uid"]),
];

/// The defaults of list-map keys SMD fills in for elements that omit them (the API's defaults:
/// ports are TCP).
pub fn builtin_key_default(key: &str) -> Option<Value> {
    (key == "protocol").then(|| json!("TCP"))
}

fn add_list_type_extensions(defs: &mut Map<String, Value>) {
    for (def, prop, ty, keys) in LIST_TYPES {
        if let Some(p) = defs.get_mut(*def).and_then(|d| d.pointer_mut(&format!("/properties/{prop}"))) {
            if let Some(o) = p.as_object_mut() {
                o.insert("x-kubernetes-list-type".into(), json!(ty));
                if !keys.is_empty() {
                    o.insert("x-kubernetes-list-map-keys".into(), json!(keys));
                }
            }
        }
    }
}

/// A built-in kind's definitions as server-side apply walks objects by them: generated when
/// the kind is first written, then stripped to the structure and the patch and list-type
/// extensions. Every write records its managedFields through these, so they must not cost what
/// the served OpenAPI documents do (descriptions are most of those; the documents stay unbuilt
/// until a client asks). Built per kind, because an idle server writes a dozen kinds of the
/// fifty: generating them all touched megabytes of schema code and kept the shapes of pods,
/// workloads and CRDs that nothing had asked for.
pub struct KindShape {
    /// The kind's definition and every definition it references.
    pub defs: Map<String, Value>,
    /// The kind's own definition's name in `defs`.
    pub root: String,
}

fn kind_shape(r: &'static Resource) -> Option<KindShape> {
    let (mut defs, names) = generate_defs(std::slice::from_ref(r));
    let (_, root) = names.into_iter().next()?;
    for d in defs.values_mut() {
        strip_to_shape(d);
    }
    Some(KindShape { defs, root })
}

/// The shape of built-in kind `r` (None for kinds without a k8s-openapi type).
pub fn builtin_shape(r: &Resource) -> Option<&'static KindShape> {
    static SHAPES: OnceLock<Vec<OnceLock<Option<KindShape>>>> = OnceLock::new();
    let slots = SHAPES.get_or_init(|| BUILTIN.iter().map(|_| OnceLock::new()).collect());
    let i = registry::builtin_position(r)?;
    slots.get(i)?.get_or_init(|| BUILTIN.get(i).and_then(kind_shape)).as_ref()
}

/// Keeps what walking by schema reads: references, nesting, defaults and the extensions.
fn strip_to_shape(s: &mut Value) {
    let Some(o) = s.as_object_mut() else { return };
    o.retain(|k, _| {
        matches!(k.as_str(), "$ref" | "allOf" | "properties" | "items" | "additionalProperties" | "default")
            || (k.starts_with("x-kubernetes-") && k != "x-kubernetes-group-version-kind")
    });
    if let Some(p) = o.get_mut("properties").and_then(|p| p.as_object_mut()) {
        p.values_mut().for_each(strip_to_shape);
    }
    for k in ["items", "additionalProperties"] {
        if let Some(v) = o.get_mut(k) {
            strip_to_shape(v);
        }
    }
    if let Some(a) = o.get_mut("allOf").and_then(|a| a.as_array_mut()) {
        a.iter_mut().for_each(strip_to_shape);
    }
}

fn refs_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if k == "$ref" {
                    if let Some(s) = x.as_str() {
                        out.push(s.rsplit('/').next().unwrap_or("").to_string());
                    }
                } else {
                    refs_in(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs_in(x, out)),
        _ => {}
    }
}

fn reachable(defs: &Map<String, Value>, roots: &[String]) -> Map<String, Value> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.to_vec();
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(d) = defs.get(&n) {
            let mut found = Vec::new();
            refs_in(d, &mut found);
            todo.extend(found);
        }
    }
    seen.into_iter().filter_map(|n| defs.get(&n).map(|d| (n, d.clone()))).collect()
}

fn op_id(verb: &str, r: &Resource, namespaced_path: bool, collection: bool) -> String {
    let g = if r.group.is_empty() { "Core".to_string() } else { r.group.split('.').next().unwrap_or("").to_string() };
    let g = g[..1].to_uppercase() + &g[1..];
    let v = r.version[..1].to_uppercase() + &r.version[1..];
    let ns = if namespaced_path { "Namespaced" } else { "" };
    let suffix = if collection && verb == "list" { format!("{}", r.kind) } else { r.kind.to_string() };
    format!("{verb}{g}{v}{ns}{suffix}")
}

/// Query parameter objects; `v3` selects OpenAPI 3 (`schema`) or Swagger 2 (`type`) form.
fn param(name: &str, v3: bool) -> Value {
    if v3 {
        json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
    } else {
        json!({"name": name, "in": "query", "type": "string", "uniqueItems": true})
    }
}

fn path_param(name: &str, v3: bool) -> Value {
    if v3 {
        json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
    } else {
        json!({"name": name, "in": "path", "required": true, "type": "string", "uniqueItems": true})
    }
}

fn paths_for(r: &Resource, schema: &str, v3: bool) -> Map<String, Value> {
    let gvk = json!({"group": r.group, "kind": r.kind, "version": r.version});
    let reference = if v3 { format!("#/components/schemas/{schema}") } else { format!("#/definitions/{schema}") };
    let body = |_: &str| -> Value {
        if v3 {
            json!({"content": {"*/*": {"schema": {"$ref": reference}}}, "required": true})
        } else {
            json!({"name": "body", "in": "body", "required": true, "schema": {"$ref": reference}})
        }
    };
    let resp = || -> Value {
        if v3 {
            json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": reference}}}}})
        } else {
            json!({"200": {"description": "OK", "schema": {"$ref": reference}}})
        }
    };
    let write_params = |extra: &[&str]| -> Vec<Value> {
        let mut p: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation"].iter().map(|n| param(n, v3)).collect();
        p.extend(extra.iter().map(|n| param(n, v3)));
        p
    };
    let mut out = Map::new();
    let gvp = r.group_version_path();
    let scopes: Vec<bool> = if r.namespaced { vec![true] } else { vec![false] };
    for namespaced in scopes {
        let base = if namespaced {
            format!("{gvp}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{gvp}/{}", r.plural)
        };
        let mut common = vec![];
        if namespaced {
            common.push(path_param("namespace", v3));
        }
        let mk = |verb: &str, action: &str, params: Vec<Value>, with_body: bool, collection: bool| -> Value {
            let mut op = json!({
                "operationId": op_id(verb, r, namespaced, collection),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": resp(),
            });
            if with_body {
                if v3 {
                    op["requestBody"] = body(verb);
                } else if let Some(p) = op["parameters"].as_array_mut() {
                    p.push(body(verb));
                }
            }
            op
        };
        let list_params: Vec<Value> = [
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "resourceVersionMatch",
            "watch",
            "timeoutSeconds",
            "allowWatchBookmarks",
            "sendInitialEvents",
        ]
        .iter()
        .map(|n| param(n, v3))
        .collect();
        out.insert(
            base.clone(),
            json!({
                "parameters": common,
                "get": mk("list", "list", list_params, false, true),
                "post": mk("create", "post", write_params(&[]), true, true),
                "delete": mk("deletecollection", "deletecollection", vec![param("labelSelector", v3), param("fieldSelector", v3)], false, true),
            }),
        );
        let mut item_params = common.clone();
        item_params.insert(0, path_param("name", v3));
        out.insert(
            format!("{base}/{{name}}"),
            json!({
                "parameters": item_params,
                "get": mk("read", "get", vec![], false, false),
                "put": mk("replace", "put", write_params(&[]), true, false),
                "patch": mk("patch", "patch", write_params(&["force"]), true, false),
                "delete": mk("delete", "delete", vec![param("dryRun", v3), param("gracePeriodSeconds", v3), param("propagationPolicy", v3)], false, false),
            }),
        );
        if r.has_subresource("scale") && r.is_custom() {
            let scale_ref = if v3 {
                "#/components/schemas/io.k8s.api.autoscaling.v1.Scale"
            } else {
                "#/definitions/io.k8s.api.autoscaling.v1.Scale"
            };
            let scale_body = if v3 {
                json!({"content": {"*/*": {"schema": {"$ref": scale_ref}}}, "required": true})
            } else {
                json!({"name": "body", "in": "body", "required": true, "schema": {"$ref": scale_ref}})
            };
            let scale_gvk = json!({"group": "autoscaling", "kind": "Scale", "version": "v1"});
            let resp = if v3 {
                json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": scale_ref}}}}})
            } else {
                json!({"200": {"description": "OK", "schema": {"$ref": scale_ref}}})
            };
            let op = |verb: &str, action: &str, with_body: bool| -> Value {
                let mut op = json!({
                    "operationId": format!("{verb}{}Scale", op_id("", r, namespaced, false)),
                    "x-kubernetes-action": action,
                    "x-kubernetes-group-version-kind": scale_gvk,
                    "parameters": if with_body { write_params(&[]) } else { vec![] },
                    "responses": resp,
                });
                if with_body {
                    if v3 {
                        op["requestBody"] = scale_body.clone();
                    } else if let Some(p) = op["parameters"].as_array_mut() {
                        p.push(scale_body.clone());
                    }
                }
                op
            };
            out.insert(
                format!("{base}/{{name}}/scale"),
                json!({
                    "parameters": item_params,
                    "get": op("read", "get", false),
                    "put": op("replace", "put", true),
                    "patch": op("patch", "patch", true),
                }),
            );
        }
        if r.has_subresource("status") {
            out.insert(
                format!("{base}/{{name}}/status"),
                json!({
                    "parameters": item_params,
                    "get": mk("read", "get", vec![], false, false),
                    "put": mk("replace", "put", write_params(&[]), true, false),
                    "patch": mk("patch", "patch", write_params(&["force"]), true, false),
                }),
            );
        }
    }
    out
}

/// The definitions of built-in kinds `kinds` and all they reference (schemars from
/// k8s-openapi, tagged with their kinds, with the patch and list-type extensions), and each
/// kind's definition name.
fn generate_defs(kinds: &'static [Resource]) -> (Map<String, Value>, Vec<(&'static Resource, String)>) {
    let mut gen = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut names: Vec<(&'static Resource, String)> = Vec::new();
    for r in kinds {
        if let Some(n) = with_type(r, Register(&mut gen)) {
            names.push((r, n));
        }
    }
    let mut defs = gen.take_definitions(true);
    for (r, n) in &names {
        if let Some(d) = defs.get_mut(n).and_then(|d| d.as_object_mut()) {
            d.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": r.group, "kind": r.kind, "version": r.version}]),
            );
        }
    }
    add_patch_extensions(&mut defs);
    add_list_type_extensions(&mut defs);
    (defs, names)
}

fn build_base() -> Base {
    let (defs, names) = generate_defs(BUILTIN);
    let info = info();
    let mut v3 = BTreeMap::new();
    for (g, v) in registry::group_versions() {
        let in_gv: Vec<&(&Resource, String)> = names.iter().filter(|(r, _)| r.group == g && r.version == v).collect();
        let mut paths = Map::new();
        for (r, n) in &in_gv {
            paths.extend(paths_for(r, n, true));
        }
        let roots: Vec<String> = in_gv.iter().map(|(_, n)| n.clone()).collect();
        let doc = json!({"openapi": "3.0.0", "info": info, "paths": paths, "components": {"schemas": reachable(&defs, &roots)}});
        let text = doc.to_string();
        let hash = hash_of(&text);
        let key = if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") };
        v3.insert(key, (text, hash));
    }
    let mut v2_paths = Map::new();
    for (r, n) in &names {
        v2_paths.extend(paths_for(r, n, false));
    }
    Base { defs, v3, v2_paths }
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(build_base)
}

fn info() -> Value {
    json!({"title": "Kubernetes", "version": crate::api::discovery::KUBE_VERSION})
}

fn hash_of(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes())).to_uppercase()
}

/// The definition name upstream gives a custom kind: the reversed group, version and kind
/// (`com.example.stable.v1.CronTab`).
fn custom_def_name(r: &Resource) -> String {
    let mut g: Vec<&str> = r.group.split('.').collect();
    g.reverse();
    format!("{}.{}.{}", g.join("."), r.version, r.kind)
}

/// A custom kind's definition: its CRD schema, with `metadata` as ObjectMeta and the
/// apiVersion/kind fields described, tagged with its group/version/kind.
fn custom_def(r: &Resource, meta_ref: &str) -> Value {
    let mut d = r.custom.as_ref().map(|c| c.schema.clone()).unwrap_or(Value::Null);
    if !d.is_object() {
        d = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    }
    if !d.get("properties").is_some_and(|p| p.is_object()) {
        d["properties"] = json!({});
    }
    d["properties"]["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"});
    d["properties"]["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"});
    d["properties"]["metadata"] = json!({"allOf": [{"$ref": meta_ref}], "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"});
    d["x-kubernetes-group-version-kind"] = json!([{"group": r.group, "kind": r.kind, "version": r.version}]);
    d
}

/// Every document for the resources `reg` serves now (built-ins plus CRDs).
fn build(reg: &Registry) -> Docs {
    let base = base();
    let custom = reg.custom();
    let mut v3 = base.v3.clone();
    const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
    const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";
    let mut groups: Vec<(String, String)> = Vec::new();
    for r in custom.iter() {
        let gv = (r.group.to_string(), r.version.to_string());
        if !groups.contains(&gv) {
            groups.push(gv);
        }
    }
    let mut v2_paths = base.v2_paths.clone();
    let mut v2_defs = base.defs.clone();
    for (g, v) in &groups {
        let mut paths = Map::new();
        let mut schemas = reachable(&base.defs, &[META.to_string(), SCALE.to_string()]);
        for r in custom.iter().filter(|r| &*r.group == g && &*r.version == v) {
            let name = custom_def_name(r);
            paths.extend(paths_for(r, &name, true));
            schemas.insert(name.clone(), custom_def(r, &format!("#/components/schemas/{META}")));
            v2_paths.extend(paths_for(r, &name, false));
            v2_defs.insert(name, custom_def(r, &format!("#/components/schemas/{META}")));
        }
        let doc = json!({"openapi": "3.0.0", "info": info(), "paths": paths, "components": {"schemas": schemas}});
        let text = doc.to_string();
        let hash = hash_of(&text);
        v3.insert(format!("apis/{g}/{v}"), (text, hash));
    }
    let index: Map<String, Value> = v3
        .iter()
        .map(|(k, (_, h))| (k.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{k}?hash={h}")})))
        .collect();
    let v2_defs = Value::Object(v2_defs).to_string().replace("#/components/schemas/", "#/definitions/");
    let v2_defs: Value = serde_json::from_str(&v2_defs).unwrap_or(json!({}));
    let v2 = json!({"swagger": "2.0", "info": info(), "paths": v2_paths, "definitions": v2_defs});
    Docs { v3, v3_index: json!({"paths": index}).to_string(), v2: v2.to_string() }
}

/// The documents for what `reg` serves, rebuilt when its CRDs change.
pub fn docs(reg: &Registry) -> Arc<Docs> {
    reg.cached(build)
}

fn json_text(body: String, immutable: bool) -> Response {
    let cache = if immutable { "public, immutable" } else { "no-cache, private" };
    (StatusCode::OK, [("content-type", "application/json"), ("cache-control", cache)], body).into_response()
}

pub async fn v2(State(st): State<Arc<ApiState>>) -> Response {
    json_text(docs(&st.registry).v2.clone(), false)
}

pub async fn v3_index(State(st): State<Arc<ApiState>>) -> Response {
    json_text(docs(&st.registry).v3_index.clone(), false)
}

pub async fn v3_group(State(st): State<Arc<ApiState>>, Path(p): Path<String>, RawQuery(q): RawQuery) -> Response {
    match docs(&st.registry).v3.get(p.trim_matches('/')) {
        Some((doc, hash)) => json_text(doc.clone(), q.is_some_and(|q| q.contains(hash.as_str()))),
        None => super::errors::ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource: no OpenAPI document for {p}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_documents_carry_gvk_patch_params_and_merge_keys() {
        let d = docs(&Registry::new());
        let (apps, _) = d.v3.get("apis/apps/v1").unwrap();
        let v: Value = serde_json::from_str(apps).unwrap();
        let dep = &v["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(dep["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        let patch = &v["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        let podspec = &v["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"];
        assert_eq!(podspec["properties"]["containers"]["x-kubernetes-patch-merge-key"], "name");
        let idx: Value = serde_json::from_str(&d.v3_index).unwrap();
        assert!(idx["paths"]["api/v1"]["serverRelativeURL"].as_str().unwrap().starts_with("/openapi/v3/api/v1?hash="));
    }

    #[test]
    fn v2_refs_point_at_definitions() {
        let d = docs(&Registry::new());
        assert!(!d.v2.contains("#/components/schemas/"));
        assert!(d.v2.contains("#/definitions/io.k8s.api.core.v1.PodSpec"));
    }

    #[test]
    fn crd_schemas_appear_in_both_documents_and_follow_crd_changes() {
        let reg = Registry::new();
        let mut crd = json!({
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "crontabs", "kind": "CronTab"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "description": "the spec", "properties": {"cronSpec": {"type": "string"}}}}}}}]}
        });
        crd["status"] = crate::registry::custom::compute_status(&crd, &[], "t");
        assert!(!docs(&reg).v3.contains_key("apis/stable.example.com/v1"));
        reg.set_crds(&[crd]);
        let d = docs(&reg);
        let (text, _) = d.v3.get("apis/stable.example.com/v1").expect("CRD group document");
        let v: Value = serde_json::from_str(text).unwrap();
        let def = &v["components"]["schemas"]["com.example.stable.v1.CronTab"];
        assert_eq!(def["x-kubernetes-group-version-kind"][0]["kind"], "CronTab");
        assert_eq!(def["properties"]["spec"]["description"], "the spec");
        assert!(v["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
        assert!(v["paths"]["/apis/stable.example.com/v1/namespaces/{namespace}/crontabs/{name}/scale"].is_object());
        assert!(d.v3_index.contains("apis/stable.example.com/v1"));
        assert!(
            d.v2.contains("#/definitions/com.example.stable.v1.CronTab")
                || d.v2.contains("com.example.stable.v1.CronTab")
        );
        reg.set_crds(&[]);
        assert!(!docs(&reg).v3.contains_key("apis/stable.example.com/v1"));
    }
}
