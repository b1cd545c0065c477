//! Per-kind strategy: the resources skiff serves (the table discovery, routing and storage
//! keys are derived from), and for each kind its normalisation, defaulting, validation and
//! table columns. Pure functions over JSON.
//!
//! Built-in resources live in a static table; custom resources (one per served version of each
//! established CustomResourceDefinition) live in a [`dynamic::Registry`] that the API server keeps
//! current from the store. Both are [`Resource`]s: built-ins borrow `'static` strings, custom
//! ones own theirs (behind an `Arc`, freed when a CRD update replaces them).

pub mod cel;
pub mod convert;
pub mod custom;
pub mod defaults;
pub mod dynamic;
pub mod listtype;
pub mod rules;
pub mod schema;
pub mod tables;
pub mod typed;
pub mod validation;

use std::borrow::Cow;
use std::sync::Arc;

pub use dynamic::{Registry, ResRef};

/// A name: borrowed for built-ins, owned for custom resources.
pub type Str = Cow<'static, str>;

/// One served resource (a kind at one group/version).
#[derive(Debug, PartialEq)]
pub struct Resource {
    /// API group; "" for core.
    pub group: Str,
    pub version: Str,
    pub kind: Str,
    pub plural: Str,
    pub singular: Str,
    pub namespaced: bool,
    pub short_names: Cow<'static, [Str]>,
    pub categories: Cow<'static, [Str]>,
    /// Subresources served under `{name}/…`.
    pub subresources: Cow<'static, [Str]>,
    /// What a CustomResourceDefinition says about this version (schema, columns, scale);
    /// None for built-in kinds.
    pub custom: Option<Arc<custom::CustomInfo>>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `/api/v1` or `/apis/<group>/<version>`.
    pub fn group_version_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `deployments.apps`, as upstream names resources in messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Storage key prefix: `/registry/<group>/<plural>/` (group `core` for the core group).
    pub fn key_prefix(&self) -> String {
        // events.k8s.io Events share core Events' storage (the same objects in two versions).
        let g: &str = match &*self.group {
            "" | "events.k8s.io" => "core",
            g => g,
        };
        format!("/registry/{g}/{}/", self.plural)
    }

    /// Prefix of one namespace's objects (or of all objects when `ns` is None).
    pub fn key_prefix_in(&self, ns: Option<&str>) -> String {
        match (self.namespaced, ns) {
            (true, Some(ns)) => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }

    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        match (self.namespaced, ns) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// Create-only resources that are computed, never stored (access and token reviews).
    pub fn is_virtual(&self) -> bool {
        matches!(&*self.group, "authorization.k8s.io" | "authentication.k8s.io")
    }

    pub fn has_subresource(&self, s: &str) -> bool {
        self.subresources.iter().any(|x| x == s)
    }

    /// A custom resource (served from a CustomResourceDefinition).
    pub fn is_custom(&self) -> bool {
        self.custom.is_some()
    }
}

const ALL: &[Str] = &[Cow::Borrowed("all")];
const NONE: &[Str] = &[];

/// `&["a", "b"]` as a static list of borrowed names.
macro_rules! names {
    ($($n:expr),* $(,)?) => { &[$(Cow::Borrowed($n)),*] };
}

macro_rules! res {
    ($g:expr, $v:expr, $kind:expr, $plural:expr, $singular:expr, $ns:expr, $short:expr, $cat:expr, $sub:expr) => {
        Resource {
            group: Cow::Borrowed($g),
            version: Cow::Borrowed($v),
            kind: Cow::Borrowed($kind),
            plural: Cow::Borrowed($plural),
            singular: Cow::Borrowed($singular),
            namespaced: $ns,
            short_names: Cow::Borrowed($short),
            categories: Cow::Borrowed($cat),
            subresources: Cow::Borrowed($sub),
            custom: None,
        }
    };
}

/// Every built-in resource skiff serves. Discovery, routing and storage follow this table.
pub static BUILTIN: &[Resource] = &[
    res!("", "v1", "Namespace", "namespaces", "namespace", false, names!("ns"), NONE, names!("status", "finalize")),
    res!("", "v1", "Node", "nodes", "node", false, names!("no"), NONE, names!("status", "proxy")),
    res!(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        true,
        names!("po"),
        ALL,
        names!("status", "binding", "eviction", "log", "exec", "attach", "portforward")
    ),
    res!("", "v1", "Service", "services", "service", true, names!("svc"), ALL, names!("status", "proxy")),
    res!("", "v1", "Endpoints", "endpoints", "endpoints", true, names!("ep"), NONE, NONE),
    res!("", "v1", "ConfigMap", "configmaps", "configmap", true, names!("cm"), NONE, NONE),
    res!("", "v1", "Secret", "secrets", "secret", true, NONE, NONE, NONE),
    res!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", true, names!("sa"), NONE, names!("token")),
    res!("", "v1", "Event", "events", "event", true, names!("ev"), NONE, NONE),
    res!(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        false,
        names!("pv"),
        NONE,
        names!("status")
    ),
    res!(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        true,
        names!("pvc"),
        NONE,
        names!("status")
    ),
    res!(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        "replicationcontroller",
        true,
        names!("rc"),
        ALL,
        names!("status", "scale")
    ),
    res!("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", true, names!("quota"), NONE, names!("status")),
    res!("", "v1", "LimitRange", "limitranges", "limitrange", true, names!("limits"), NONE, NONE),
    res!("", "v1", "PodTemplate", "podtemplates", "podtemplate", true, NONE, NONE, NONE),
    res!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        names!("deploy"),
        ALL,
        names!("status", "scale")
    ),
    res!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", true, names!("rs"), ALL, names!("status", "scale")),
    res!(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        names!("sts"),
        ALL,
        names!("status", "scale")
    ),
    res!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true, names!("ds"), ALL, names!("status")),
    res!("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", true, NONE, NONE, NONE),
    res!("batch", "v1", "Job", "jobs", "job", true, NONE, ALL, names!("status")),
    res!("batch", "v1", "CronJob", "cronjobs", "cronjob", true, names!("cj"), ALL, names!("status")),
    res!("coordination.k8s.io", "v1", "Lease", "leases", "lease", true, NONE, NONE, NONE),
    res!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", true, NONE, NONE, NONE),
    res!(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        names!("hpa"),
        ALL,
        names!("status")
    ),
    // Also served as autoscaling/v1, converted from the v2 storage version (registry::convert).
    res!(
        "autoscaling",
        "v1",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        names!("hpa"),
        ALL,
        names!("status")
    ),
    // Stored as core/v1 Events (registry::convert).
    res!("events.k8s.io", "v1", "Event", "events", "event", true, names!("ev"), NONE, NONE),
    res!(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        true,
        names!("pdb"),
        NONE,
        names!("status")
    ),
    res!("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", true, names!("ing"), NONE, names!("status")),
    res!("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", false, NONE, NONE, NONE),
    res!(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        true,
        names!("netpol"),
        NONE,
        NONE
    ),
    res!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", false, NONE, NONE, NONE),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        NONE,
        NONE,
        NONE
    ),
    res!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", true, NONE, NONE, NONE),
    res!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", true, NONE, NONE, NONE),
    res!("storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", false, names!("sc"), NONE, NONE),
    res!("storage.k8s.io", "v1", "CSIDriver", "csidrivers", "csidriver", false, NONE, NONE, NONE),
    res!("storage.k8s.io", "v1", "CSINode", "csinodes", "csinode", false, NONE, NONE, NONE),
    res!(
        "storage.k8s.io",
        "v1",
        "VolumeAttachment",
        "volumeattachments",
        "volumeattachment",
        false,
        NONE,
        NONE,
        names!("status")
    ),
    res!(
        "storage.k8s.io",
        "v1",
        "CSIStorageCapacity",
        "csistoragecapacities",
        "csistoragecapacity",
        true,
        NONE,
        NONE,
        NONE
    ),
    res!(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        "priorityclass",
        false,
        names!("pc"),
        NONE,
        NONE
    ),
    res!(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
        false,
        names!("csr"),
        NONE,
        names!("status", "approval")
    ),
    res!("node.k8s.io", "v1", "RuntimeClass", "runtimeclasses", "runtimeclass", false, NONE, NONE, NONE),
    res!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        false,
        NONE,
        NONE,
        NONE
    ),
    res!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        false,
        NONE,
        NONE,
        NONE
    ),
    res!(
        "authorization.k8s.io",
        "v1",
        "SubjectAccessReview",
        "subjectaccessreviews",
        "subjectaccessreview",
        false,
        NONE,
        NONE,
        NONE
    ),
    res!(
        "authorization.k8s.io",
        "v1",
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        true,
        NONE,
        NONE,
        NONE
    ),
    res!(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview",
        false,
        NONE,
        NONE,
        NONE
    ),
    res!("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", "tokenreview", false, NONE, NONE, NONE),
    res!(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        false,
        names!("crd", "crds"),
        names!("api-extensions"),
        names!("status")
    ),
];

/// Looks up a served resource by group, version and plural name.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    by_plural(plural).find(|r| r.group == group && r.version == version)
}

/// Positions in [`BUILTIN`] by plural name, built once: every request looks its resource up,
/// and a scan of the whole table showed in profiles.
fn plural_index() -> &'static std::collections::HashMap<&'static str, Vec<usize>> {
    static INDEX: std::sync::OnceLock<std::collections::HashMap<&'static str, Vec<usize>>> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut m: std::collections::HashMap<&'static str, Vec<usize>> = std::collections::HashMap::new();
        for (i, r) in BUILTIN.iter().enumerate() {
            m.entry(r.plural.as_ref()).or_default().push(i);
        }
        m
    })
}

/// The built-ins named `plural` (a handful at most: one per group and version).
pub fn by_plural(plural: &str) -> impl Iterator<Item = &'static Resource> + '_ {
    plural_index().get(plural).into_iter().flatten().filter_map(|i| BUILTIN.get(*i))
}

/// The position in [`BUILTIN`] of the built-in with `r`'s group, version and kind.
pub fn builtin_position(r: &Resource) -> Option<usize> {
    plural_index()
        .get(&*r.plural)?
        .iter()
        .copied()
        .find(|i| BUILTIN.get(*i).is_some_and(|b| b.group == r.group && b.version == r.version && b.kind == r.kind))
}

/// Looks up a served resource by group and kind (any served version).
pub fn find_kind(group: &str, kind: &str) -> Option<&'static Resource> {
    BUILTIN.iter().find(|r| r.group == group && r.kind == kind)
}

/// The built-in group/versions, core first, in discovery order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in BUILTIN {
        let (Cow::Borrowed(g), Cow::Borrowed(v)) = (&r.group, &r.version) else { continue };
        if !out.contains(&(*g, *v)) {
            out.push((*g, *v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_keys_follow_the_design_layout() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(pods.key(Some("default"), "web"), "/registry/core/pods/default/web");
        let deploy = find("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.key_prefix_in(Some("a")), "/registry/apps/deployments/a/");
        let nodes = find("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(None, "n1"), "/registry/core/nodes/n1");
    }

    #[test]
    fn every_resource_has_a_unique_plural_per_group_and_a_typed_schema() {
        for r in BUILTIN {
            assert_eq!(
                BUILTIN.iter().filter(|o| o.group == r.group && o.version == r.version && o.plural == r.plural).count(),
                1,
                "{}",
                r.plural
            );
            assert!(
                typed::normalize(
                    r,
                    serde_json::json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": {"name": "x"}})
                )
                .is_ok(),
                "{}",
                r.kind
            );
        }
    }
}
