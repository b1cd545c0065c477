//! The default RBAC objects every cluster starts with (upstream's bootstrap policy, trimmed to
//! what skiff's components and users need): cluster-admin bound to system:masters, the
//! aggregated admin/edit/view roles, discovery and self-review for every authenticated user,
//! health and version for everyone, and the scheduler's and controller manager's roles.

use serde_json::{json, Value};

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules})
}

fn aggregated(name: &str, label: &str, extra_labels: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": extra_labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]}, "rules": []})
}

fn binding(name: &str, role: &str, subjects: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": subjects})
}

fn group(g: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g})
}
fn user(u: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u})
}

/// (ClusterRoles, ClusterRoleBindings)
pub fn objects() -> (Vec<Value>, Vec<Value>) {
    let boot = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    let workloads = [
        "pods",
        "pods/attach",
        "pods/exec",
        "pods/portforward",
        "pods/proxy",
        "pods/eviction",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "services",
        "services/proxy",
        "endpoints",
        "persistentvolumeclaims",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "serviceaccounts/token",
        "events",
    ];
    let apps = [
        "deployments",
        "deployments/scale",
        "deployments/rollback",
        "replicasets",
        "replicasets/scale",
        "statefulsets",
        "statefulsets/scale",
        "daemonsets",
    ];
    let view_core = [
        "pods",
        "pods/log",
        "pods/status",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "replicationcontrollers/status",
        "services",
        "services/status",
        "endpoints",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "configmaps",
        "serviceaccounts",
        "events",
        "limitranges",
        "resourcequotas",
        "resourcequotas/status",
        "namespaces",
        "namespaces/status",
        "bindings",
    ];
    let roles = vec![
        role(
            "cluster-admin",
            boot.clone(),
            vec![rule(&["*"], &["*"], &["*"]), json!({"nonResourceURLs": ["*"], "verbs": ["*"]})],
        ),
        aggregated("admin", "rbac.authorization.k8s.io/aggregate-to-admin", boot.clone()),
        aggregated(
            "edit",
            "rbac.authorization.k8s.io/aggregate-to-edit",
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
        ),
        aggregated(
            "view",
            "rbac.authorization.k8s.io/aggregate-to-view",
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
        ),
        role(
            "system:aggregate-to-admin",
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            vec![
                rule(
                    &["rbac.authorization.k8s.io"],
                    &["roles", "rolebindings"],
                    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                ),
                rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
            ],
        ),
        role(
            "system:aggregate-to-edit",
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
            vec![
                rule(&[""], &workloads, WRITE),
                rule(&["apps"], &apps, WRITE),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
                rule(&["batch"], &["jobs", "cronjobs"], WRITE),
                rule(&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
                rule(&["policy"], &["poddisruptionbudgets"], WRITE),
                rule(&[""], &["secrets"], READ),
            ],
        ),
        role(
            "system:aggregate-to-view",
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-view": "true"}),
            vec![
                rule(&[""], &view_core, READ),
                rule(
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                    READ,
                ),
                rule(&["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"], READ),
                rule(&["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(&["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"], READ),
                rule(&["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
            ],
        ),
        // metrics-server's role: `kubectl top` for every view/edit/admin holder.
        role(
            "system:aggregated-metrics-reader",
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-view": "true",
                "rbac.authorization.k8s.io/aggregate-to-edit": "true", "rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            vec![rule(&["metrics.k8s.io"], &["pods", "nodes"], READ)],
        ),
        role(
            "system:discovery",
            boot.clone(),
            vec![
                json!({"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}),
            ],
        ),
        role(
            "system:public-info-viewer",
            boot.clone(),
            vec![
                json!({"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}),
            ],
        ),
        role(
            "system:basic-user",
            boot.clone(),
            vec![
                rule(&["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], &["create"]),
                rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
            ],
        ),
        role(
            "system:kube-scheduler",
            boot.clone(),
            vec![
                rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
                rule(&["coordination.k8s.io"], &["leases"], &["create", "get", "list", "watch", "update"]),
                rule(
                    &[""],
                    &[
                        "nodes",
                        "namespaces",
                        "services",
                        "replicationcontrollers",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                    ],
                    READ,
                ),
                rule(&[""], &["pods"], &["delete", "get", "list", "watch", "patch", "update"]),
                rule(&[""], &["bindings", "pods/binding"], &["create"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                // Upstream's system:volume-scheduler: selected-node on claims, claimRef on volumes.
                rule(&[""], &["persistentvolumeclaims", "persistentvolumes"], &["patch", "update"]),
                rule(&["apps"], &["replicasets", "statefulsets"], READ),
                rule(&["policy"], &["poddisruptionbudgets"], READ),
                rule(
                    &["storage.k8s.io"],
                    &["storageclasses", "csinodes", "csidrivers", "csistoragecapacities", "volumeattachments"],
                    READ,
                ),
                rule(&["scheduling.k8s.io"], &["priorityclasses"], READ),
            ],
        ),
        // Kubelet client certificates: who may have their requests approved automatically
        // (the csrapproving controller checks these with a SubjectAccessReview).
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            boot.clone(),
            vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests/nodeclient"], &["create"])],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            boot.clone(),
            vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests/selfnodeclient"], &["create"])],
        ),
        role(
            "system:node-bootstrapper",
            boot.clone(),
            vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests"], &["create", "get", "list", "watch"])],
        ),
        // skiff's controllers run as one identity and manage nearly every kind.
        role("system:kube-controller-manager", boot.clone(), vec![rule(&["*"], &["*"], &["*"])]),
    ];
    let bindings = vec![
        binding("cluster-admin", "cluster-admin", json!([group("system:masters")])),
        binding("system:discovery", "system:discovery", json!([group("system:authenticated")])),
        binding("system:basic-user", "system:basic-user", json!([group("system:authenticated")])),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            json!([group("system:authenticated"), group("system:unauthenticated")]),
        ),
        binding("system:kube-scheduler", "system:kube-scheduler", json!([user("system:kube-scheduler")])),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            json!([user("system:kube-controller-manager")]),
        ),
        // As kubeadm's `kubeadm:node-autoapprove-certificate-rotation`: a kubelet renewing its
        // own client certificate gets it without a human.
        binding(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            json!([group("system:nodes")]),
        ),
    ];
    (roles, bindings)
}
