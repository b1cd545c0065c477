//! Discovery: `/version`, `/api`, `/apis`, the group and group/version documents, and
//! aggregated discovery (apidiscovery.k8s.io/v2), all derived from the resource table, so
//! `kubectl api-resources` lists every kind with its short names, categories and verbs.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::registry::{Registry, Resource};

pub const KUBE_VERSION: &str = "v1.33.0+skiff";

pub fn version() -> Value {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": KUBE_VERSION,
        "gitCommit": option_env!("SKIFF_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("linux/{arch}"),
    })
}

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// (verbs, group, version, kind) of a subresource.
fn sub_info<'a>(r: &'a Resource, sub: &str) -> (Vec<&'static str>, &'a str, &'a str, &'a str) {
    let (group, version, kind): (&str, &str, &str) = (&r.group, &r.version, &r.kind);
    match sub {
        "status" => (vec!["get", "patch", "update"], group, version, kind),
        "scale" => (vec!["get", "patch", "update"], "autoscaling", "v1", "Scale"),
        "binding" => (vec!["create"], "", "v1", "Binding"),
        "eviction" => (vec!["create"], "policy", "v1", "Eviction"),
        "log" => (vec!["get"], "", "v1", "Pod"),
        "exec" => (vec!["create", "get"], "", "v1", "PodExecOptions"),
        "attach" => (vec!["create", "get"], "", "v1", "PodAttachOptions"),
        "portforward" => (vec!["create", "get"], "", "v1", "PodPortForwardOptions"),
        "proxy" => (
            vec!["create", "delete", "get", "patch", "update"],
            "",
            "v1",
            match kind {
                "Node" => "NodeProxyOptions",
                "Service" => "ServiceProxyOptions",
                _ => "PodProxyOptions",
            },
        ),
        "token" => (vec!["create"], "authentication.k8s.io", "v1", "TokenRequest"),
        "finalize" => (vec!["update"], "", "v1", "Namespace"),
        "approval" => (vec!["get", "patch", "update"], group, version, kind),
        _ => (vec!["get"], group, version, kind),
    }
}

fn verbs_of(r: &Resource) -> Vec<&'static str> {
    if r.is_virtual() {
        return vec!["create"];
    }
    VERBS.to_vec()
}

/// `/api/v1` or `/apis/<g>/<v>`: an APIResourceList.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let rs: Vec<_> = reg.all().into_iter().filter(|r| r.group == group && r.version == version).collect();
    if rs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for r in &rs {
        let r: &Resource = r;
        let mut e = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "verbs": verbs_of(r),
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        out.push(e);
        for s in r.subresources.iter() {
            let (verbs, g, v, k) = sub_info(r, s);
            let mut e = json!({"name": format!("{}/{s}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": k, "verbs": verbs});
            if g != &*r.group || v != &*r.version {
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            out.push(e);
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}))
}

/// Kubernetes version priority (`v2` > `v1` > `v1beta2` > `v1beta1` > `v1alpha1` > others by
/// name), as upstream orders a group's versions; the first is the preferred one.
fn version_key(v: &str) -> (u8, i64, i64, String) {
    let parse = |s: &str| -> Option<(i64, u8, i64)> {
        let rest = s.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let major: i64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((major, 3, 0));
        }
        let (stage, n) = if let Some(n) = tail.strip_prefix("beta") {
            (2, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (1, n)
        } else {
            return None;
        };
        Some((major, stage, n.parse().ok()?))
    };
    match parse(v) {
        Some((major, stage, minor)) => (4 - stage, -major, -minor, String::new()),
        None => (9, 0, 0, v.to_string()),
    }
}

/// A group's versions, preferred first.
fn versions_of_group(reg: &Registry, group: &str) -> Vec<String> {
    let mut vs: Vec<String> = reg.group_versions().into_iter().filter(|(g, _)| g == group).map(|(_, v)| v).collect();
    vs.sort_by_key(|v| version_key(v));
    vs
}

fn group_entry(reg: &Registry, group: &str) -> Value {
    let versions: Vec<Value> = versions_of_group(reg, group)
        .into_iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(json!({}))})
}

/// `/apis/<group>`: an APIGroup.
pub fn group(reg: &Registry, group: &str) -> Option<Value> {
    if group.is_empty() || !reg.all().iter().any(|r| r.group == group) {
        return None;
    }
    let mut g = group_entry(reg, group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

pub fn api_group_list(reg: &Registry) -> Value {
    let mut groups: Vec<String> = Vec::new();
    for (g, _) in reg.group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    let mut groups: Vec<Value> = groups.iter().map(|g| group_entry(reg, g)).collect();
    groups.push(super::metrics::group_entry());
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Aggregated discovery for the core group (`/api`) or all named groups (`/apis`).
pub fn aggregated(reg: &Registry, core: bool) -> Value {
    let mut items = Vec::new();
    let mut groups: Vec<String> = Vec::new();
    let all = reg.all();
    for (g, _) in reg.group_versions() {
        if (g.is_empty() == core) && !groups.contains(&g) {
            groups.push(g);
        }
    }
    for g in groups {
        let versions: Vec<Value> = versions_of_group(reg, &g)
            .into_iter()
            .map(|v| {
                let resources: Vec<Value> = all
                    .iter()
                    .filter(|r| r.group == g && r.version == v)
                    .map(|r| {
                        let r: &Resource = r;
                        let subs: Vec<Value> = r
                            .subresources
                            .iter()
                            .map(|s| {
                                let (verbs, sg, sv, sk) = sub_info(r, s);
                                json!({"subresource": s, "responseKind": {"group": sg, "version": sv, "kind": sk}, "verbs": verbs})
                            })
                            .collect();
                        let mut e = json!({
                            "resource": r.plural,
                            "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": r.singular,
                            "verbs": verbs_of(r),
                        });
                        if !r.short_names.is_empty() {
                            e["shortNames"] = json!(r.short_names);
                        }
                        if !r.categories.is_empty() {
                            e["categories"] = json!(r.categories);
                        }
                        if !subs.is_empty() {
                            e["subresources"] = json!(subs);
                        }
                        e
                    })
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(json!({"metadata": {"name": g}, "versions": versions}));
    }
    if !core {
        items.push(super::metrics::aggregated_item());
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// Whether the client asked for aggregated discovery (v2) first.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|a| a.contains("as=APIGroupDiscoveryList") && a.contains("v=v2") && !a.contains("v=v2beta1"))
}

pub fn aggregated_response(reg: &Registry, core: bool) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")],
        aggregated(reg, core).to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_resource_list_has_pods_with_subresources() {
        let l = resource_list(&Registry::new(), "", "v1").unwrap();
        let names: Vec<&str> = l["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"pods") && names.contains(&"pods/log") && names.contains(&"namespaces/finalize"));
        let pods = l["resources"].as_array().unwrap().iter().find(|r| r["name"] == "pods").unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
    }

    #[test]
    fn aggregated_discovery_lists_apps_deployments_with_scale() {
        let a = aggregated(&Registry::new(), false);
        let apps = a["items"].as_array().unwrap().iter().find(|g| g["metadata"]["name"] == "apps").unwrap();
        let d = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(d["scope"], "Namespaced");
        assert!(d["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["subresource"] == "scale" && s["responseKind"]["kind"] == "Scale"));
    }

    #[test]
    fn versions_sort_by_kubernetes_priority() {
        let mut vs = vec!["v1alpha1", "v1", "v2beta1", "foo", "v1beta2", "v2", "v1beta1"];
        vs.sort_by_key(|v| version_key(v));
        assert_eq!(vs, vec!["v2", "v1", "v2beta1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }

    #[test]
    fn kubectl_accept_header_selects_aggregated_discovery() {
        assert!(wants_aggregated("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert!(!wants_aggregated("application/json, */*"));
    }
}
