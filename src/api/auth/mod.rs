//! Authentication and authorization. Client certificates are read at the TLS layer
//! (`api::user_from_cert`); bearer tokens (service-account JWTs) here. Authorization runs the
//! Node authorizer for kubelets, then RBAC, as kube-apiserver's default
//! `--authorization-mode=Node,RBAC` does.

pub mod defaults;
pub mod rbac;
pub mod reviews;
pub mod tokenfile;
pub mod tokens;

use futures::StreamExt;
use serde_json::Value;
use std::sync::{Arc, RwLock};

use super::errors::ApiError;
use super::objects;
use super::User;
use crate::registry;
use crate::store::{RangeRequest, Store};
use rbac::{Attributes, Policy};

const RBAC_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

/// The RBAC policy, kept current from a store watch.
#[derive(Clone, Default)]
pub struct Authorizer {
    policy: Arc<RwLock<Policy>>,
}

async fn load_policy(store: &dyn Store) -> Result<(Policy, i64), crate::store::StoreError> {
    let resp = store.range(RangeRequest { prefix: RBAC_PREFIX.as_bytes().to_vec(), ..Default::default() }).await?;
    let mut p = Policy::default();
    for kv in &resp.kvs {
        let Ok(v) = serde_json::from_slice::<Value>(&kv.value) else { continue };
        let key = String::from_utf8_lossy(&kv.key);
        let rest = &key[RBAC_PREFIX.len()..];
        match rest.split('/').next() {
            Some("clusterroles") => p.cluster_roles.push(v),
            Some("clusterrolebindings") => p.cluster_role_bindings.push(v),
            Some("roles") => p.roles.push(v),
            Some("rolebindings") => p.role_bindings.push(v),
            _ => {}
        }
    }
    Ok((p, resp.revision))
}

impl Authorizer {
    /// Loads the policy and keeps it current. The watch is opened before the first load, so a
    /// change between the two is never missed (a reload is idempotent).
    pub async fn start(store: Arc<dyn Store>) -> Result<Authorizer, crate::store::StoreError> {
        let first = store.watch(RBAC_PREFIX.as_bytes().to_vec(), 0).await?;
        let (p, rev) = load_policy(store.as_ref()).await?;
        let a = Authorizer { policy: Arc::new(RwLock::new(p)) };
        let policy = a.policy.clone();
        tokio::spawn(async move {
            let mut from = rev;
            let mut stream = Some(first);
            loop {
                let w = match stream.take() {
                    Some(w) => Ok(w),
                    None => store.watch(RBAC_PREFIX.as_bytes().to_vec(), from).await,
                };
                match w {
                    Ok(mut w) => {
                        while let Some(m) = w.next().await {
                            match m {
                                Ok(crate::store::WatchMessage::Events(evs)) => {
                                    from = from.max(evs.last().map(|e| e.kv.mod_revision).unwrap_or(from));
                                    match load_policy(store.as_ref()).await {
                                        Ok((p, _)) => {
                                            if let Ok(mut g) = policy.write() {
                                                *g = p;
                                            }
                                        }
                                        Err(e) => tracing::warn!(error = %e, "reloading RBAC policy failed"),
                                    }
                                }
                                Ok(crate::store::WatchMessage::Progress(r)) => from = from.max(r),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "RBAC watch failed; reloading");
                        if let Ok((p, rev)) = load_policy(store.as_ref()).await {
                            from = rev;
                            if let Ok(mut g) = policy.write() {
                                *g = p;
                            }
                        }
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
        Ok(a)
    }

    /// A snapshot of the current policy.
    pub fn policy(&self) -> Policy {
        self.policy.read().map(|g| g.clone()).unwrap_or_default()
    }

    fn rbac_allows(&self, user: &User, a: &Attributes) -> bool {
        self.policy.read().map(|g| g.allows(user, a)).unwrap_or(false)
    }

    /// Decides a request. `store` lets the Node authorizer check which node a pod is bound to.
    pub async fn authorize(&self, store: &dyn Store, user: &User, a: &Attributes) -> Result<(), ApiError> {
        if user.groups.iter().any(|g| g == "system:masters") {
            return Ok(());
        }
        if let Some(node) = node_of(user) {
            if node_allows(store, node, a).await {
                return Ok(());
            }
        }
        if self.rbac_allows(user, a) {
            return Ok(());
        }
        Err(ApiError::forbidden(rbac::forbidden_message(user, a)))
    }
}

/// The node name of a kubelet identity (`system:node:<name>` in group `system:nodes`).
pub fn node_of(user: &User) -> Option<&str> {
    if !user.groups.iter().any(|g| g == "system:nodes") {
        return None;
    }
    user.name.strip_prefix("system:node:")
}

const READ: &[&str] = &["get", "list", "watch"];

/// Authenticates a bearer token: one of `--token-auth-file`'s static tokens, or a
/// service-account JWT whose account still exists with the same uid (so deleting the account
/// revokes its tokens). Anything else is a 401, never an anonymous request, as upstream's
/// union authenticator answers a token no authenticator accepts.
pub async fn authenticate_bearer(st: &super::ApiState, token: &str) -> Result<User, ApiError> {
    let unauthorized = || ApiError::new(401, "Unauthorized", "Unauthorized");
    if let Some(u) = st.static_tokens.as_ref().and_then(|f| f.lookup(token)) {
        let mut groups = u.groups.clone();
        // Upstream's AuthenticatedGroupAdder: every authenticated user is in
        // system:authenticated, once.
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        return Ok(User { name: u.name.clone(), groups });
    }
    let c = st.sa_signer.verify(token, chrono::Utc::now().timestamp()).map_err(|_| unauthorized())?;
    let sas = registry::find("", "v1", "serviceaccounts").ok_or_else(unauthorized)?;
    let sa = objects::get(st.store.as_ref(), sas, Some(&c.namespace), &c.service_account)
        .await
        .map_err(|_| unauthorized())?;
    if sa.obj.pointer("/metadata/uid").and_then(|u| u.as_str()) != Some(c.service_account_uid.as_str()) {
        return Err(unauthorized());
    }
    Ok(User {
        name: format!("system:serviceaccount:{}:{}", c.namespace, c.service_account),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", c.namespace),
            "system:authenticated".into(),
        ],
    })
}

/// The Node authorizer (plugin/pkg/auth/authorizer/node), simplified: a kubelet reads what it
/// needs to run pods and writes only its own Node, Lease, and the pods bound to it.
/// Simplification: secrets and configmaps are readable by any node, not only those its pods
/// reference.
async fn node_allows(store: &dyn Store, node: &str, a: &Attributes) -> bool {
    let verb = a.verb.as_str();
    let read = READ.contains(&verb);
    match (a.group.as_str(), a.resource.as_str(), a.subresource.as_str()) {
        ("", "nodes", _) => read || verb == "create" || a.name == node,
        ("coordination.k8s.io", "leases", "") => {
            a.namespace == "kube-node-lease" && (a.name == node || verb == "create" || read)
        }
        ("", "events", "") | ("events.k8s.io", "events", "") => matches!(verb, "create" | "update" | "patch") || read,
        ("", "pods", "") if read => true,
        ("", "pods", "status") | ("", "pods", "") => {
            if !matches!(verb, "update" | "patch" | "delete" | "get") || a.name.is_empty() {
                return false;
            }
            let Some(r) = registry::find("", "v1", "pods") else { return false };
            match objects::get(store, r, Some(&a.namespace), &a.name).await {
                Ok(p) => p.obj.pointer("/spec/nodeName").and_then(|n| n.as_str()) == Some(node),
                Err(_) => false,
            }
        }
        (
            "",
            "configmaps"
            | "secrets"
            | "persistentvolumeclaims"
            | "persistentvolumes"
            | "serviceaccounts"
            | "services"
            | "endpoints",
            "",
        ) => read,
        ("discovery.k8s.io", "endpointslices", "") => read,
        ("", "serviceaccounts", "token") => verb == "create",
        ("certificates.k8s.io", "certificatesigningrequests", "") => read || verb == "create",
        ("storage.k8s.io", "csidrivers" | "csinodes" | "volumeattachments", _) => read,
        ("node.k8s.io", "runtimeclasses", "") => read,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemStore;

    fn kubelet(n: &str) -> User {
        User { name: format!("system:node:{n}"), groups: vec!["system:nodes".into(), "system:authenticated".into()] }
    }

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            path: None,
        }
    }

    #[tokio::test]
    async fn a_kubelet_writes_only_its_own_node_and_pods() {
        let store = MemStore::new();
        let pods = registry::find("", "v1", "pods").unwrap();
        let pod = serde_json::json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"}});
        objects::create(&store, pods, Some("d"), "p", pod, None).await.unwrap();
        let a = Authorizer::default();
        assert!(a.authorize(&store, &kubelet("n1"), &attrs("patch", "", "nodes", "status", "", "n1")).await.is_ok());
        assert!(a.authorize(&store, &kubelet("n1"), &attrs("patch", "", "nodes", "status", "", "n2")).await.is_err());
        assert!(a.authorize(&store, &kubelet("n1"), &attrs("patch", "", "pods", "status", "d", "p")).await.is_ok());
        assert!(a.authorize(&store, &kubelet("n2"), &attrs("patch", "", "pods", "status", "d", "p")).await.is_err());
        assert!(a.authorize(&store, &kubelet("n1"), &attrs("list", "", "pods", "", "", "")).await.is_ok());
        assert!(a
            .authorize(&store, &kubelet("n1"), &attrs("delete", "apps", "deployments", "", "d", "x"))
            .await
            .is_err());
        let e = a.authorize(&store, &kubelet("n1"), &attrs("create", "", "namespaces", "", "", "")).await.unwrap_err();
        assert_eq!(e.code, 403);
    }

    #[tokio::test]
    async fn the_policy_follows_the_store() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let a = Authorizer::start(store.clone()).await.unwrap();
        let bob = User { name: "bob".into(), groups: vec!["system:authenticated".into()] };
        let list_pods = attrs("list", "", "pods", "", "default", "");
        assert!(a.authorize(store.as_ref(), &bob, &list_pods).await.is_err());
        let crs = registry::find("rbac.authorization.k8s.io", "v1", "clusterrolebindings").unwrap();
        let cr = registry::find("rbac.authorization.k8s.io", "v1", "clusterroles").unwrap();
        objects::create(store.as_ref(), cr, None, "r", serde_json::json!({"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}), None).await.unwrap();
        objects::create(store.as_ref(), crs, None, "b", serde_json::json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "r"}, "subjects": [{"kind": "User", "name": "bob"}]}), None).await.unwrap();
        for _ in 0..50 {
            if a.authorize(store.as_ref(), &bob, &list_pods).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("binding never took effect");
    }
}
