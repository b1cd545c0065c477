//! RBAC evaluation (k8s.io/kubernetes/plugin/pkg/auth/authorizer/rbac): a request is allowed
//! when a ClusterRoleBinding, or a RoleBinding in the request's namespace, binds one of the
//! user's identities to a role with a rule that covers the request. ClusterRoles with an
//! `aggregationRule` get the union of the rules of the ClusterRoles their selectors match.
//! Pure functions over the RBAC objects; the cache that feeds them lives in `mod.rs`.

use serde_json::Value;

use super::super::User;

/// What a request does, as the authorizer sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// Set for non-resource requests (`/version`, `/openapi/v3`, …).
    pub path: Option<String>,
}

fn strs(v: Option<&Value>) -> Vec<&str> {
    v.and_then(|x| x.as_array()).into_iter().flatten().filter_map(|x| x.as_str()).collect()
}

/// Whether one PolicyRule covers the request.
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strs(rule.get("verbs"));
    if !verbs.iter().any(|v| *v == "*" || *v == a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return strs(rule.get("nonResourceURLs"))
            .iter()
            .any(|u| *u == "*" || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*'))));
    }
    if !strs(rule.get("apiGroups")).iter().any(|g| *g == "*" || *g == a.group) {
        return false;
    }
    let full = if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let res_ok = strs(rule.get("resources")).iter().any(|r| {
        *r == "*"
            || *r == full
            || (a.subresource.is_empty() && *r == a.resource)
            || (r.starts_with("*/") && !a.subresource.is_empty() && r[2..] == a.subresource)
    });
    if !res_ok {
        return false;
    }
    let names = strs(rule.get("resourceNames"));
    names.is_empty() || (!a.name.is_empty() && names.contains(&a.name.as_str()))
}

/// Whether a binding's subjects include the user.
pub fn binds(binding: &Value, user: &User, binding_ns: &str) -> bool {
    binding.get("subjects").and_then(|s| s.as_array()).into_iter().flatten().any(|s| {
        let name = s.get("name").and_then(|n| n.as_str()).unwrap_or("");
        match s.get("kind").and_then(|k| k.as_str()) {
            Some("User") => user.name == name,
            Some("Group") => user.groups.iter().any(|g| g == name),
            Some("ServiceAccount") => {
                let ns = s.get("namespace").and_then(|n| n.as_str()).filter(|n| !n.is_empty()).unwrap_or(binding_ns);
                user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    })
}

fn labels_match(selector: &Value, labels: Option<&Value>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(|v| v.as_str());
    let ml_ok = selector
        .get("matchLabels")
        .and_then(|m| m.as_object())
        .is_none_or(|m| m.iter().all(|(k, v)| get(k) == v.as_str()));
    let ex_ok = selector.get("matchExpressions").and_then(|m| m.as_array()).is_none_or(|es| {
        es.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let vals = strs(e.get("values"));
            match e["operator"].as_str() {
                Some("In") => get(key).is_some_and(|v| vals.contains(&v)),
                Some("NotIn") => get(key).is_none_or(|v| !vals.contains(&v)),
                Some("Exists") => get(key).is_some(),
                Some("DoesNotExist") => get(key).is_none(),
                _ => false,
            }
        })
    });
    ml_ok && ex_ok
}

/// The effective rules of a ClusterRole, aggregation included.
pub fn cluster_role_rules<'a>(role: &'a Value, all: &'a [Value]) -> Vec<&'a Value> {
    match role.pointer("/aggregationRule/clusterRoleSelectors").and_then(|s| s.as_array()) {
        Some(selectors) => all
            .iter()
            .filter(|r| r.pointer("/metadata/name") != role.pointer("/metadata/name"))
            .filter(|r| selectors.iter().any(|sel| labels_match(sel, r.pointer("/metadata/labels"))))
            .flat_map(|r| r.get("rules").and_then(|x| x.as_array()).into_iter().flatten())
            .collect(),
        None => role.get("rules").and_then(|x| x.as_array()).into_iter().flatten().collect(),
    }
}

/// Everything RBAC decides on.
#[derive(Default, Clone)]
pub struct Policy {
    pub cluster_roles: Vec<Value>,
    pub cluster_role_bindings: Vec<Value>,
    pub roles: Vec<Value>,
    pub role_bindings: Vec<Value>,
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("")
}
fn ns_of(v: &Value) -> &str {
    v.pointer("/metadata/namespace").and_then(|n| n.as_str()).unwrap_or("")
}

impl Policy {
    fn role_rules<'a>(&'a self, role_ref: &Value, ns: &str) -> Vec<&'a Value> {
        let name = role_ref.get("name").and_then(|n| n.as_str()).unwrap_or("");
        match role_ref.get("kind").and_then(|k| k.as_str()) {
            Some("ClusterRole") => self
                .cluster_roles
                .iter()
                .find(|r| name_of(r) == name)
                .map(|r| cluster_role_rules(r, &self.cluster_roles))
                .unwrap_or_default(),
            Some("Role") => self
                .roles
                .iter()
                .find(|r| name_of(r) == name && ns_of(r) == ns)
                .map(|r| r.get("rules").and_then(|x| x.as_array()).into_iter().flatten().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Every rule that applies to `user` in `namespace` ("" = cluster-wide bindings only).
    pub fn rules_for<'a>(&'a self, user: &User, namespace: &str) -> Vec<&'a Value> {
        let mut out = Vec::new();
        for b in self.cluster_role_bindings.iter().filter(|b| binds(b, user, "")) {
            out.extend(self.role_rules(b.get("roleRef").unwrap_or(&Value::Null), ""));
        }
        if !namespace.is_empty() {
            for b in self.role_bindings.iter().filter(|b| ns_of(b) == namespace && binds(b, user, namespace)) {
                out.extend(self.role_rules(b.get("roleRef").unwrap_or(&Value::Null), namespace));
            }
        }
        out
    }

    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        self.rules_for(user, &a.namespace).iter().any(|r| rule_allows(r, a))
    }
}

/// Upstream's denial message.
pub fn forbidden_message(user: &User, a: &Attributes) -> String {
    if let Some(p) = &a.path {
        return format!("forbidden: User {:?} cannot {} path {p:?}", user.name, a.verb);
    }
    let res = if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let qualified = if a.group.is_empty() { a.resource.clone() } else { format!("{}.{}", a.resource, a.group) };
    let head = if a.name.is_empty() {
        format!("{qualified} is forbidden")
    } else {
        format!("{qualified} {:?} is forbidden", a.name)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    format!("{head}: User {:?} cannot {} resource {res:?} in API group {:?} {scope}", user.name, a.verb, a.group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> User {
        User { name: name.into(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    fn attrs(verb: &str, group: &str, resource: &str, ns: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: ns.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_names() {
        let r = json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]});
        assert!(rule_allows(&r, &attrs("get", "", "pods", "x")));
        assert!(!rule_allows(&r, &attrs("delete", "", "pods", "x")));
        assert!(!rule_allows(&r, &attrs("get", "apps", "pods", "x")));
        let mut log = attrs("get", "", "pods", "x");
        log.subresource = "log".into();
        assert!(rule_allows(&r, &log));
        log.subresource = "exec".into();
        assert!(!rule_allows(&r, &log));
        let named = json!({"apiGroups": ["*"], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["*"]});
        let mut a = attrs("update", "", "configmaps", "x");
        a.name = "a".into();
        assert!(rule_allows(&named, &a));
        a.name = "b".into();
        assert!(!rule_allows(&named, &a));
    }

    #[test]
    fn non_resource_urls_match_with_wildcards() {
        let r = json!({"nonResourceURLs": ["/apis/*", "/version"], "verbs": ["get"]});
        let a = |p: &str| Attributes { verb: "get".into(), path: Some(p.into()), ..Default::default() };
        assert!(rule_allows(&r, &a("/version")));
        assert!(rule_allows(&r, &a("/apis/apps/v1")));
        assert!(!rule_allows(&r, &a("/api/v1")));
    }

    #[test]
    fn role_bindings_grant_only_in_their_namespace() {
        let p = Policy {
            roles: vec![
                json!({"metadata": {"name": "reader", "namespace": "a"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}),
            ],
            role_bindings: vec![
                json!({"metadata": {"name": "b", "namespace": "a"}, "roleRef": {"kind": "Role", "name": "reader"},
                "subjects": [{"kind": "User", "name": "bob"}]}),
            ],
            ..Default::default()
        };
        let bob = user("bob", &["system:authenticated"]);
        assert!(p.allows(&bob, &attrs("list", "", "pods", "a")));
        assert!(!p.allows(&bob, &attrs("list", "", "pods", "b")));
        assert!(!p.allows(&user("eve", &[]), &attrs("list", "", "pods", "a")));
    }

    #[test]
    fn aggregated_cluster_roles_union_their_sources() {
        let p = Policy {
            cluster_roles: vec![
                json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "view"}}]}}),
                json!({"metadata": {"name": "pods-view", "labels": {"agg": "view"}}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
            ],
            cluster_role_bindings: vec![
                json!({"metadata": {"name": "v"}, "roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "Group", "name": "viewers"}]}),
            ],
            ..Default::default()
        };
        assert!(p.allows(&user("x", &["viewers"]), &attrs("get", "", "pods", "any")));
    }

    #[test]
    fn service_account_subjects_match_their_user_name() {
        let b = json!({"metadata": {"namespace": "ns1"}, "subjects": [{"kind": "ServiceAccount", "name": "robot"}]});
        assert!(binds(&b, &user("system:serviceaccount:ns1:robot", &[]), "ns1"));
        assert!(!binds(&b, &user("system:serviceaccount:ns2:robot", &[]), "ns1"));
    }

    #[test]
    fn denial_messages_follow_upstream() {
        let u = user("bob", &[]);
        assert_eq!(
            forbidden_message(&u, &attrs("list", "", "pods", "default")),
            "pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let mut a = attrs("get", "apps", "deployments", "");
        a.name = "web".into();
        assert_eq!(
            forbidden_message(&u, &a),
            "deployments.apps \"web\" is forbidden: User \"bob\" cannot get resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
    }
}
