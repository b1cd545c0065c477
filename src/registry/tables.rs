//! Table output (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the columns and cells
//! kube-apiserver's printers produce for each kind (pkg/printers/internalversion), so
//! `kubectl get` prints what users know.

use serde_json::{json, Value};

use super::custom::CustomInfo;
use super::Resource;

pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub format: &'static str,
    pub priority: i32,
    pub description: &'static str,
}

const fn col(name: &'static str, ty: &'static str, priority: i32) -> Column {
    Column { name, ty, format: "", priority, description: "" }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};
const AGE: Column = Column {
    name: "Age",
    ty: "string",
    format: "",
    priority: 0,
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
};

/// Column definitions for a kind.
pub fn columns(r: &Resource) -> Vec<Column> {
    if let Some(storage) = super::convert::storage_of(r) {
        return columns(storage);
    }
    match (&*r.group, &*r.kind) {
        ("", "Pod") => vec![
            NAME,
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            AGE,
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        ("", "Node") => vec![
            NAME,
            col("Status", "string", 0),
            col("Roles", "string", 0),
            AGE,
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        ("", "Namespace") => vec![NAME, col("Status", "string", 0), AGE],
        ("", "Service") => vec![
            NAME,
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            AGE,
            col("Selector", "string", 1),
        ],
        ("", "ConfigMap") => vec![NAME, col("Data", "string", 0), AGE],
        ("", "Secret") => vec![NAME, col("Type", "string", 0), col("Data", "string", 0), AGE],
        ("", "ServiceAccount") => vec![NAME, col("Secrets", "string", 0), AGE],
        ("", "Endpoints") => vec![NAME, col("Endpoints", "string", 0), AGE],
        ("", "Event") => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
            col("Subobject", "string", 1),
            col("Source", "string", 1),
            col("First Seen", "string", 1),
            col("Count", "string", 1),
            col("Name", "string", 1),
        ],
        ("apps", "Deployment") => vec![
            NAME,
            col("Ready", "string", 0),
            col("Up-to-date", "string", 0),
            col("Available", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "ReplicaSet") | ("", "ReplicationController") => vec![
            NAME,
            col("Desired", "string", 0),
            col("Current", "string", 0),
            col("Ready", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("coordination.k8s.io", "Lease") => vec![NAME, col("Holder", "string", 0), AGE],
        ("rbac.authorization.k8s.io", "RoleBinding") | ("rbac.authorization.k8s.io", "ClusterRoleBinding") => vec![
            NAME,
            col("Role", "string", 0),
            AGE,
            col("Users", "string", 1),
            col("Groups", "string", 1),
            col("ServiceAccounts", "string", 1),
        ],
        ("rbac.authorization.k8s.io", _) | ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![NAME, col("Created At", "date", 0)]
        }
        ("storage.k8s.io", "StorageClass") => vec![
            NAME,
            col("Provisioner", "string", 0),
            col("ReclaimPolicy", "string", 0),
            col("VolumeBindingMode", "string", 0),
            col("AllowVolumeExpansion", "string", 0),
            AGE,
        ],
        ("scheduling.k8s.io", "PriorityClass") => vec![
            NAME,
            col("Value", "integer", 0),
            col("Global-Default", "boolean", 0),
            AGE,
            col("PreemptionPolicy", "string", 1),
        ],
        ("networking.k8s.io", "Ingress") => vec![
            NAME,
            col("Class", "string", 0),
            col("Hosts", "string", 0),
            col("Address", "string", 0),
            col("Ports", "string", 0),
            AGE,
        ],
        ("policy", "PodDisruptionBudget") => vec![
            NAME,
            col("Min Available", "string", 0),
            col("Max Unavailable", "string", 0),
            col("Allowed Disruptions", "integer", 0),
            AGE,
        ],
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            NAME,
            col("Reference", "string", 0),
            col("Targets", "string", 0),
            col("MinPods", "string", 0),
            col("MaxPods", "string", 0),
            col("Replicas", "string", 0),
            AGE,
        ],
        ("batch", "Job") => {
            vec![NAME, col("Status", "string", 0), col("Completions", "string", 0), col("Duration", "string", 0), AGE]
        }
        ("apps", "StatefulSet") => {
            vec![NAME, col("Ready", "string", 0), AGE, col("Containers", "string", 1), col("Images", "string", 1)]
        }
        ("apps", "DaemonSet") => vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Node Selector", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "ControllerRevision") => {
            vec![NAME, col("Controller", "string", 0), col("Revision", "integer", 0), AGE]
        }
        ("", "PersistentVolume") => vec![
            NAME,
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("Reclaim Policy", "string", 0),
            col("Status", "string", 0),
            col("Claim", "string", 0),
            col("StorageClass", "string", 0),
            col("VolumeAttributesClass", "string", 0),
            col("Reason", "string", 0),
            AGE,
            col("VolumeMode", "string", 1),
        ],
        ("", "PersistentVolumeClaim") => vec![
            NAME,
            col("Status", "string", 0),
            col("Volume", "string", 0),
            col("Capacity", "string", 0),
            col("Access Modes", "string", 0),
            col("StorageClass", "string", 0),
            col("VolumeAttributesClass", "string", 0),
            AGE,
            col("VolumeMode", "string", 1),
        ],
        ("", "ResourceQuota") => vec![NAME, AGE, col("Request", "string", 0), col("Limit", "string", 0)],
        ("certificates.k8s.io", "CertificateSigningRequest") => vec![
            NAME,
            AGE,
            col("SignerName", "string", 0),
            col("Requestor", "string", 0),
            col("RequestedDuration", "string", 0),
            col("Condition", "string", 0),
        ],
        _ => vec![NAME, AGE],
    }
}

/// Upstream's `duration.HumanDuration`: `45s`, `3m20s`, `5h`, `2d3h`, `400d`, `3y10d`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = hours / 24;
        let dy = days % 365;
        return if dy == 0 { format!("{}y", days / 365) } else { format!("{}y{dy}d", days / 365) };
    }
    format!("{}y", hours / 24 / 365)
}

fn since(ts: Option<&Value>, now: i64) -> String {
    match ts.and_then(|t| t.as_str()).and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => human_duration(now - t.timestamp()),
        None => "<unknown>".into(),
    }
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// An autoscaling/v2 HPA's TARGETS cell as kubectl prints it: `cpu: 70%/50%` per metric
/// (`<unknown>` before the first status), the first two then `+ N more...`, `<none>` if empty.
fn hpa_targets(o: &Value) -> String {
    let specs = o.pointer("/spec/metrics").and_then(Value::as_array).cloned().unwrap_or_default();
    let statuses = o.pointer("/status/currentMetrics").and_then(Value::as_array).cloned().unwrap_or_default();
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
            let src = match ty {
                "Resource" => "resource",
                "ContainerResource" => "containerResource",
                "Pods" => "pods",
                "Object" => "object",
                _ => "external",
            };
            let target = &m[src]["target"];
            let current = statuses.get(i).map(|st| &st[src]["current"]);
            let name = match ty {
                "Resource" | "ContainerResource" => s(m[src].get("name")),
                _ => s(m[src].pointer("/metric/name")),
            };
            let (cur, tgt) = match target.get("averageUtilization").and_then(Value::as_i64) {
                Some(u) => (
                    current
                        .and_then(|c| c.get("averageUtilization"))
                        .and_then(Value::as_i64)
                        .map(|c| format!("{c}%"))
                        .unwrap_or("<unknown>".into()),
                    format!("{u}%"),
                ),
                None => {
                    let key = if target.get("averageValue").is_some() { "averageValue" } else { "value" };
                    let cur = current.and_then(|c| c.get(key)).map(|c| s(Some(c))).filter(|c| !c.is_empty());
                    let tgt = s(target.get(key));
                    (cur.unwrap_or("<unknown>".into()), if tgt.is_empty() { "<auto>".into() } else { tgt })
                }
            };
            format!("{name}: {cur}/{tgt}")
        })
        .collect();
    match list.len() {
        0 => "<none>".into(),
        1 | 2 => list.join(", "),
        n => format!("{} + {} more...", list[..2].join(", "), n - 2),
    }
}

fn int(v: Option<&Value>) -> i64 {
    v.and_then(|x| x.as_i64()).unwrap_or(0)
}

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
fn access_modes(v: Option<&Value>) -> String {
    let modes: Vec<&str> = v
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| match m.as_str() {
            Some("ReadWriteOnce") => Some("RWO"),
            Some("ReadOnlyMany") => Some("ROX"),
            Some("ReadWriteMany") => Some("RWX"),
            Some("ReadWriteOncePod") => Some("RWOP"),
            _ => None,
        })
        .collect();
    modes.join(",")
}

/// A volume's or claim's phase as upstream prints it: `Terminating` once deletion started.
fn phase_or_terminating(o: &Value) -> String {
    if o.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
        return "Terminating".into();
    }
    s(o.pointer("/status/phase"))
}

fn or_unset(x: String) -> String {
    if x.is_empty() {
        "<unset>".into()
    } else {
        x
    }
}

fn or_none(x: String) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x
    }
}

fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else { return "<none>".into() };
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(|m| m.as_object()) {
        parts.extend(m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))));
    }
    if let Some(es) = sel.get("matchExpressions").and_then(|m| m.as_array()) {
        for e in es {
            let key = e["key"].as_str().unwrap_or("");
            let vals: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
            parts.push(match e["operator"].as_str().unwrap_or("") {
                "In" => format!("{key} in ({})", vals.join(",")),
                "NotIn" => format!("{key} notin ({})", vals.join(",")),
                "Exists" => key.to_string(),
                "DoesNotExist" => format!("!{key}"),
                op => format!("{key} {op}"),
            });
        }
    }
    or_none(parts.join(","))
}

fn map_selector(sel: Option<&Value>) -> String {
    match sel.and_then(|m| m.as_object()) {
        Some(m) if !m.is_empty() => {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
        }
        _ => "<none>".into(),
    }
}

fn containers_images(spec: Option<&Value>) -> (String, String) {
    let cs: Vec<&Value> =
        spec.and_then(|s| s.get("containers")).and_then(|c| c.as_array()).into_iter().flatten().collect();
    let names: Vec<String> = cs.iter().map(|c| s(c.get("name"))).collect();
    let images: Vec<String> = cs.iter().map(|c| s(c.get("image"))).collect();
    (names.join(","), images.join(","))
}

/// The pod STATUS column, as kubectl computes it (printPod).
pub fn pod_status_reason(p: &Value) -> (String, i64, i64, Option<String>) {
    let st = &p["status"];
    let mut reason = s(st.get("phase"));
    if let Some(r) = st.get("reason").and_then(|r| r.as_str()).filter(|r| !r.is_empty()) {
        reason = r.to_string();
    }
    let mut restarts = 0;
    let mut ready = 0;
    let mut last_restart: Option<String> = None;
    let init_specs = p.pointer("/spec/initContainers").and_then(|c| c.as_array()).map(|c| c.len()).unwrap_or(0);
    let mut initializing = false;
    let note_restart = |c: &Value, last: &mut Option<String>| {
        if let Some(f) = c.pointer("/lastState/terminated/finishedAt").and_then(|f| f.as_str()) {
            if last.as_deref().is_none_or(|l| l < f) {
                *last = Some(f.to_string());
            }
        }
    };
    for (i, c) in st.get("initContainerStatuses").and_then(|c| c.as_array()).into_iter().flatten().enumerate() {
        restarts += int(c.get("restartCount"));
        note_restart(c, &mut last_restart);
        let term = c.pointer("/state/terminated");
        let wait_reason = c.pointer("/state/waiting/reason").and_then(|r| r.as_str()).unwrap_or("");
        if term.is_some_and(|t| int(t.get("exitCode")) == 0) {
            continue;
        }
        if let Some(t) = term {
            reason = match t.get("reason").and_then(|r| r.as_str()).filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None if int(t.get("signal")) != 0 => format!("Init:Signal:{}", int(t.get("signal"))),
                None => format!("Init:ExitCode:{}", int(t.get("exitCode"))),
            };
        } else if !wait_reason.is_empty() && wait_reason != "PodInitializing" {
            reason = format!("Init:{wait_reason}");
        } else {
            reason = format!("Init:{i}/{init_specs}");
        }
        initializing = true;
        break;
    }
    if !initializing {
        restarts = 0;
        let mut has_running = false;
        let statuses: Vec<&Value> =
            st.get("containerStatuses").and_then(|c| c.as_array()).into_iter().flatten().collect();
        for c in statuses.iter().rev() {
            restarts += int(c.get("restartCount"));
            note_restart(c, &mut last_restart);
            let waiting = c.pointer("/state/waiting/reason").and_then(|r| r.as_str()).filter(|r| !r.is_empty());
            let term = c.pointer("/state/terminated");
            if let Some(w) = waiting {
                reason = w.to_string();
            } else if let Some(t) = term {
                reason = match t.get("reason").and_then(|r| r.as_str()).filter(|r| !r.is_empty()) {
                    Some(r) => r.to_string(),
                    None if int(t.get("signal")) != 0 => format!("Signal:{}", int(t.get("signal"))),
                    None => format!("ExitCode:{}", int(t.get("exitCode"))),
                };
            } else if c.get("ready") == Some(&Value::Bool(true)) && c.pointer("/state/running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = st
                .get("conditions")
                .and_then(|c| c.as_array())
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            reason = if pod_ready { "Running".into() } else { "NotReady".into() };
        }
    }
    if p.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) {
        reason = if s(st.get("reason")) == "NodeLost" { "Unknown".into() } else { "Terminating".into() };
    }
    (reason, ready, restarts, last_restart)
}

/// The cells of one row.
pub fn row(r: &Resource, o: &Value, now: i64) -> Vec<Value> {
    if let Some(storage) = super::convert::storage_of(r) {
        return row(storage, &super::convert::to_storage(r, o.clone()), now);
    }
    if let Some(c) = &r.custom {
        return custom_row(c, o, now);
    }
    let name = json!(s(o.pointer("/metadata/name")));
    let age = json!(since(o.pointer("/metadata/creationTimestamp"), now));
    match (&*r.group, &*r.kind) {
        ("", "Pod") => {
            let (reason, ready, restarts, last) = pod_status_reason(o);
            let total = o.pointer("/spec/containers").and_then(|c| c.as_array()).map(|c| c.len()).unwrap_or(0);
            let restarts = match last {
                Some(l) if restarts > 0 => format!("{restarts} ({} ago)", since(Some(&Value::String(l)), now)),
                _ => restarts.to_string(),
            };
            let gates = o.pointer("/spec/readinessGates").and_then(|g| g.as_array()).map(|g| g.len()).unwrap_or(0);
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(reason),
                json!(restarts),
                age,
                json!(or_none(s(o.pointer("/status/podIP")))),
                json!(or_none(s(o.pointer("/spec/nodeName")))),
                json!(or_none(s(o.pointer("/status/nominatedNodeName")))),
                json!(if gates == 0 { "<none>".to_string() } else { format!("0/{gates}") }),
            ]
        }
        ("", "Node") => {
            let conds: Vec<&Value> =
                o.pointer("/status/conditions").and_then(|c| c.as_array()).into_iter().flatten().collect();
            let mut status =
                match conds.iter().find(|c| c["type"] == "Ready").map(|c| c["status"].as_str().unwrap_or("")) {
                    Some("True") => "Ready".to_string(),
                    Some("False") => "NotReady".to_string(),
                    _ => "Unknown".to_string(),
                };
            if o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = o
                .pointer("/metadata/labels")
                .and_then(|l| l.as_object())
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .filter(|r| !r.is_empty())
                        .map(String::from)
                        .or_else(|| (k == "kubernetes.io/role").then(|| v.as_str().unwrap_or("").to_string()))
                })
                .collect();
            roles.sort();
            let addr = |t: &str| {
                o.pointer("/status/addresses")
                    .and_then(|a| a.as_array())
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == t)
                    .map(|a| s(a.get("address")))
                    .unwrap_or_default()
            };
            vec![
                name,
                json!(status),
                json!(or_none(roles.join(","))),
                age,
                json!(s(o.pointer("/status/nodeInfo/kubeletVersion"))),
                json!(or_none(addr("InternalIP"))),
                json!(or_none(addr("ExternalIP"))),
                json!(s(o.pointer("/status/nodeInfo/osImage"))),
                json!(s(o.pointer("/status/nodeInfo/kernelVersion"))),
                json!(s(o.pointer("/status/nodeInfo/containerRuntimeVersion"))),
            ]
        }
        ("", "Namespace") => vec![name, json!(s(o.pointer("/status/phase"))), age],
        ("", "Service") => {
            let ty = s(o.pointer("/spec/type"));
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(|p| p.as_array())
                .into_iter()
                .flatten()
                .map(|p| match p.get("nodePort").and_then(|n| n.as_i64()) {
                    Some(np) => format!("{}:{np}/{}", int(p.get("port")), s(p.get("protocol"))),
                    None => format!("{}/{}", int(p.get("port")), s(p.get("protocol"))),
                })
                .collect();
            let ingress: Vec<String> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(|i| i.as_array())
                .into_iter()
                .flatten()
                .map(|i| s(i.get("ip")).to_string())
                .filter(|i| !i.is_empty())
                .collect();
            let external: Vec<String> = o
                .pointer("/spec/externalIPs")
                .and_then(|i| i.as_array())
                .into_iter()
                .flatten()
                .map(|i| s(Some(i)))
                .collect();
            let ext = match ty.as_str() {
                "ExternalName" => s(o.pointer("/spec/externalName")),
                "LoadBalancer" if ingress.is_empty() && external.is_empty() => "<pending>".into(),
                "LoadBalancer" => [ingress, external].concat().join(","),
                _ => or_none(external.join(",")),
            };
            vec![
                name,
                json!(ty),
                json!(or_none(s(o.pointer("/spec/clusterIP")))),
                json!(ext),
                json!(or_none(ports.join(","))),
                age,
                json!(map_selector(o.pointer("/spec/selector"))),
            ]
        }
        ("", "ConfigMap") => {
            let n = o.get("data").and_then(|d| d.as_object()).map(|d| d.len()).unwrap_or(0)
                + o.get("binaryData").and_then(|d| d.as_object()).map(|d| d.len()).unwrap_or(0);
            vec![name, json!(n), age]
        }
        ("", "Secret") => {
            let n = o.get("data").and_then(|d| d.as_object()).map(|d| d.len()).unwrap_or(0);
            vec![name, json!(s(o.get("type"))), json!(n), age]
        }
        ("", "ServiceAccount") => {
            vec![name, json!(o.get("secrets").and_then(|d| d.as_array()).map(|d| d.len()).unwrap_or(0)), age]
        }
        ("", "Endpoints") => {
            let mut eps = Vec::new();
            for sub in o.get("subsets").and_then(|d| d.as_array()).into_iter().flatten() {
                let ports: Vec<i64> = sub
                    .get("ports")
                    .and_then(|p| p.as_array())
                    .into_iter()
                    .flatten()
                    .map(|p| int(p.get("port")))
                    .collect();
                for a in sub.get("addresses").and_then(|p| p.as_array()).into_iter().flatten() {
                    if ports.is_empty() {
                        eps.push(s(a.get("ip")));
                    }
                    for p in &ports {
                        eps.push(format!("{}:{p}", s(a.get("ip"))));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name, json!(or_none(shown)), age]
        }
        ("", "Event") => {
            let last = o
                .get("lastTimestamp")
                .filter(|t| !t.is_null())
                .or_else(|| o.get("eventTime"))
                .or(o.pointer("/metadata/creationTimestamp"));
            let first = o.get("firstTimestamp").filter(|t| !t.is_null()).or(o.pointer("/metadata/creationTimestamp"));
            let obj = format!(
                "{}/{}",
                s(o.pointer("/involvedObject/kind")).to_lowercase(),
                s(o.pointer("/involvedObject/name"))
            );
            let source = {
                let c = s(o.pointer("/source/component"));
                let h = s(o.pointer("/source/host"));
                if h.is_empty() {
                    c
                } else {
                    format!("{c}, {h}")
                }
            };
            vec![
                json!(since(last, now)),
                json!(s(o.get("type"))),
                json!(s(o.get("reason"))),
                json!(obj),
                json!(s(o.get("message"))),
                json!(s(o.pointer("/involvedObject/fieldPath"))),
                json!(source),
                json!(since(first, now)),
                json!(int(o.get("count")).max(1)),
                name,
            ]
        }
        ("apps", "Deployment") => {
            let (c, i) = containers_images(o.pointer("/spec/template/spec"));
            vec![
                name,
                json!(format!("{}/{}", int(o.pointer("/status/readyReplicas")), int(o.pointer("/spec/replicas")))),
                json!(int(o.pointer("/status/updatedReplicas"))),
                json!(int(o.pointer("/status/availableReplicas"))),
                age,
                json!(c),
                json!(i),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        ("apps", "ReplicaSet") | ("", "ReplicationController") => {
            let (c, i) = containers_images(o.pointer("/spec/template/spec"));
            let sel = if r.kind == "ReplicaSet" {
                selector_string(o.pointer("/spec/selector"))
            } else {
                map_selector(o.pointer("/spec/selector"))
            };
            vec![
                name,
                json!(int(o.pointer("/spec/replicas"))),
                json!(int(o.pointer("/status/replicas"))),
                json!(int(o.pointer("/status/readyReplicas"))),
                age,
                json!(c),
                json!(i),
                json!(sel),
            ]
        }
        ("coordination.k8s.io", "Lease") => vec![name, json!(or_none(s(o.pointer("/spec/holderIdentity")))), age],
        ("rbac.authorization.k8s.io", "RoleBinding") | ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            let subjects: Vec<&Value> = o.get("subjects").and_then(|x| x.as_array()).into_iter().flatten().collect();
            let of = |k: &str| -> String {
                subjects
                    .iter()
                    .filter(|x| x["kind"] == k)
                    .map(|x| {
                        if k == "ServiceAccount" {
                            format!("{}/{}", s(x.get("namespace")), s(x.get("name")))
                        } else {
                            s(x.get("name"))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!("{}/{}", s(o.pointer("/roleRef/kind")), s(o.pointer("/roleRef/name")))),
                age,
                json!(of("User")),
                json!(of("Group")),
                json!(of("ServiceAccount")),
            ]
        }
        ("rbac.authorization.k8s.io", _) | ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![name, json!(s(o.pointer("/metadata/creationTimestamp")))]
        }
        ("storage.k8s.io", "StorageClass") => {
            let default = o
                .pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                .and_then(|v| v.as_str())
                == Some("true");
            let n = s(o.pointer("/metadata/name"));
            vec![
                json!(if default { format!("{n} (default)") } else { n }),
                json!(s(o.get("provisioner"))),
                json!(o.get("reclaimPolicy").and_then(|v| v.as_str()).unwrap_or("Delete")),
                json!(o.get("volumeBindingMode").and_then(|v| v.as_str()).unwrap_or("Immediate")),
                json!(o.get("allowVolumeExpansion").and_then(|v| v.as_bool()).unwrap_or(false).to_string()),
                age,
            ]
        }
        ("scheduling.k8s.io", "PriorityClass") => vec![
            name,
            json!(int(o.get("value"))),
            json!(o.get("globalDefault").and_then(|v| v.as_bool()).unwrap_or(false)),
            age,
            json!(s(o.get("preemptionPolicy"))),
        ],
        ("networking.k8s.io", "Ingress") => {
            let hosts: Vec<String> = o
                .pointer("/spec/rules")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
                .map(|r| s(r.get("host")))
                .filter(|h| !h.is_empty())
                .collect();
            let addrs: Vec<String> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
                .map(|i| if i.get("ip").is_some() { s(i.get("ip")) } else { s(i.get("hostname")) })
                .collect();
            let tls = o.pointer("/spec/tls").and_then(|t| t.as_array()).is_some_and(|t| !t.is_empty());
            vec![
                name,
                json!(or_none(s(o.pointer("/spec/ingressClassName")))),
                json!(if hosts.is_empty() { "*".to_string() } else { hosts.join(",") }),
                json!(addrs.join(",")),
                json!(if tls { "80, 443" } else { "80" }),
                age,
            ]
        }
        ("policy", "PodDisruptionBudget") => vec![
            name,
            json!(o
                .pointer("/spec/minAvailable")
                .map(|v| s(Some(v)))
                .filter(|v| !v.is_empty())
                .unwrap_or("N/A".into())),
            json!(o
                .pointer("/spec/maxUnavailable")
                .map(|v| s(Some(v)))
                .filter(|v| !v.is_empty())
                .unwrap_or("N/A".into())),
            json!(int(o.pointer("/status/disruptionsAllowed"))),
            age,
        ],
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            name,
            json!(format!(
                "{}/{}",
                s(o.pointer("/spec/scaleTargetRef/kind")),
                s(o.pointer("/spec/scaleTargetRef/name"))
            )),
            json!(hpa_targets(o)),
            json!(o.pointer("/spec/minReplicas").and_then(|v| v.as_i64()).unwrap_or(1).to_string()),
            json!(int(o.pointer("/spec/maxReplicas")).to_string()),
            json!(int(o.pointer("/status/currentReplicas")).to_string()),
            age,
        ],
        ("batch", "Job") => {
            let conds: Vec<&Value> =
                o.pointer("/status/conditions").and_then(|c| c.as_array()).into_iter().flatten().collect();
            let has = |t: &str| conds.iter().any(|c| c["type"] == t && c["status"] == "True");
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if has("Suspended") {
                "Suspended"
            } else {
                "Running"
            };
            let completions = match o.pointer("/spec/completions").and_then(|c| c.as_i64()) {
                Some(c) => format!("{}/{c}", int(o.pointer("/status/succeeded"))),
                None => format!("{}/1 of {}", int(o.pointer("/status/succeeded")), int(o.pointer("/spec/parallelism"))),
            };
            let start = o
                .pointer("/status/startTime")
                .and_then(|t| t.as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            let end = o
                .pointer("/status/completionTime")
                .and_then(|t| t.as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            let duration = match (start, end) {
                (Some(s), Some(e)) => human_duration(e.timestamp() - s.timestamp()),
                (Some(s), None) => human_duration(now - s.timestamp()),
                _ => String::new(),
            };
            vec![name, json!(status), json!(completions), json!(duration), age]
        }
        ("apps", "StatefulSet") => {
            let (c, i) = containers_images(o.pointer("/spec/template/spec"));
            vec![
                name,
                json!(format!("{}/{}", int(o.pointer("/status/readyReplicas")), int(o.pointer("/spec/replicas")))),
                age,
                json!(c),
                json!(i),
            ]
        }
        ("apps", "DaemonSet") => {
            let (c, i) = containers_images(o.pointer("/spec/template/spec"));
            let node_selector: Vec<String> = o
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(|n| n.as_object())
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            vec![
                name,
                json!(int(o.pointer("/status/desiredNumberScheduled"))),
                json!(int(o.pointer("/status/currentNumberScheduled"))),
                json!(int(o.pointer("/status/numberReady"))),
                json!(int(o.pointer("/status/updatedNumberScheduled"))),
                json!(int(o.pointer("/status/numberAvailable"))),
                json!(or_none(node_selector.join(","))),
                age,
                json!(c),
                json!(i),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        ("apps", "ControllerRevision") => {
            let controller = o
                .pointer("/metadata/ownerReferences")
                .and_then(|r| r.as_array())
                .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
                .map(|r| {
                    let group = s(r.get("apiVersion")).split('/').next().unwrap_or("").to_string();
                    let kind = s(r.get("kind")).to_lowercase();
                    let gk = if s(r.get("apiVersion")).contains('/') { format!("{kind}.{group}") } else { kind };
                    format!("{gk}/{}", s(r.get("name")))
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(controller), json!(int(o.get("revision"))), age]
        }
        ("", "PersistentVolume") => {
            let claim = match o.pointer("/spec/claimRef") {
                Some(c) if c.is_object() => format!("{}/{}", s(c.get("namespace")), s(c.get("name"))),
                _ => String::new(),
            };
            vec![
                name,
                json!(s(o.pointer("/spec/capacity/storage"))),
                json!(access_modes(o.pointer("/spec/accessModes"))),
                json!(s(o.pointer("/spec/persistentVolumeReclaimPolicy"))),
                json!(phase_or_terminating(o)),
                json!(claim),
                json!(s(o.pointer("/spec/storageClassName"))),
                json!(or_unset(s(o.pointer("/spec/volumeAttributesClassName")))),
                json!(s(o.pointer("/status/reason"))),
                age,
                json!(or_none(s(o.pointer("/spec/volumeMode")))),
            ]
        }
        ("", "PersistentVolumeClaim") => {
            let bound = o.pointer("/status/phase").and_then(|p| p.as_str()) == Some("Bound");
            let (capacity, modes) = if bound {
                (s(o.pointer("/status/capacity/storage")), access_modes(o.pointer("/status/accessModes")))
            } else {
                (String::new(), String::new())
            };
            vec![
                name,
                json!(phase_or_terminating(o)),
                json!(s(o.pointer("/spec/volumeName"))),
                json!(capacity),
                json!(modes),
                json!(s(o.pointer("/spec/storageClassName"))),
                json!(or_unset(s(o.pointer("/spec/volumeAttributesClassName")))),
                age,
                json!(or_none(s(o.pointer("/spec/volumeMode")))),
            ]
        }
        ("", "ResourceQuota") => {
            let used = o.pointer("/status/used").and_then(|u| u.as_object());
            let (mut request, mut limit) = (Vec::new(), Vec::new());
            for (k, h) in o.pointer("/status/hard").and_then(|h| h.as_object()).into_iter().flatten() {
                let u = used.and_then(|u| u.get(k)).map(|v| s(Some(v))).unwrap_or_else(|| "0".into());
                let entry = format!("{k}: {u}/{}", s(Some(h)));
                if k.starts_with("limits.") {
                    limit.push(entry);
                } else {
                    request.push(entry);
                }
            }
            vec![name, age, json!(request.join(", ")), json!(limit.join(", "))]
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            let mut conds: Vec<String> = o
                .pointer("/status/conditions")
                .and_then(|c| c.as_array())
                .into_iter()
                .flatten()
                .map(|c| s(c.get("type")))
                .collect();
            if conds.is_empty() {
                conds.push("Pending".into());
            }
            if o.pointer("/status/certificate").and_then(|c| c.as_str()).is_some_and(|c| !c.is_empty()) {
                conds.push("Issued".into());
            }
            let requestor = s(o.pointer("/spec/username"));
            let duration = o
                .pointer("/spec/expirationSeconds")
                .and_then(|d| d.as_i64())
                .map(human_duration)
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                age,
                json!(s(o.pointer("/spec/signerName"))),
                json!(requestor),
                json!(duration),
                json!(conds.join(",")),
            ]
        }
        _ => vec![name, age],
    }
}

/// The Table's column definitions as JSON.
pub fn column_definitions(r: &Resource) -> Vec<Value> {
    if let Some(c) = &r.custom {
        return custom_column_definitions(c);
    }
    columns(r)
        .iter()
        .map(|c| json!({"name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority}))
        .collect()
}

/// A custom resource's columns: NAME and its `additionalPrinterColumns`, or NAME and AGE when
/// it has none (apiextensions-apiserver's tableconvertor).
fn custom_column_definitions(c: &CustomInfo) -> Vec<Value> {
    let mut out = vec![
        json!({"name": NAME.name, "type": NAME.ty, "format": NAME.format, "description": NAME.description, "priority": 0}),
    ];
    if c.printer_columns.is_empty() {
        out.push(
            json!({"name": AGE.name, "type": "date", "format": "", "description": AGE.description, "priority": 0}),
        );
    }
    for p in &c.printer_columns {
        out.push(json!({"name": p.name, "type": p.ty, "format": p.format, "description": p.description, "priority": p.priority}));
    }
    out
}

fn custom_row(c: &CustomInfo, o: &Value, now: i64) -> Vec<Value> {
    let mut out = vec![json!(s(o.pointer("/metadata/name")))];
    if c.printer_columns.is_empty() {
        out.push(json!(since(o.pointer("/metadata/creationTimestamp"), now)));
    }
    for p in &c.printer_columns {
        let found = super::custom::json_path(o, &p.json_path);
        let cell = match found.as_slice() {
            [] => Value::Null,
            [one] => (*one).clone(),
            many => json!(many
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")),
        };
        // Dates print as ages; other values as they are (kubectl formats numbers and booleans).
        let cell = match (p.ty.as_str(), &cell) {
            ("date", Value::String(_)) => json!(since(Some(&cell), now)),
            (_, Value::Object(_) | Value::Array(_)) => json!(cell.to_string()),
            _ => cell,
        };
        out.push(cell);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    #[test]
    fn durations_print_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(5 * 3600 + 60 * 7), "5h7m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(400 * 86400), "400d");
    }

    #[test]
    fn pod_status_column_follows_printpod() {
        let running = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
        assert_eq!(pod_status_reason(&running).0, "Running");
        assert_eq!(pod_status_reason(&running).1, 1);
        let crash = json!({"status": {"phase": "Running", "containerStatuses": [{"restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(pod_status_reason(&crash).0, "CrashLoopBackOff");
        assert_eq!(pod_status_reason(&crash).2, 3);
        let init = json!({"spec": {"initContainers": [{}, {}]}, "status": {"phase": "Pending",
            "initContainerStatuses": [{"state": {"terminated": {"exitCode": 0}}}, {"state": {"running": {}}}]}});
        assert_eq!(pod_status_reason(&init).0, "Init:1/2");
        let deleting =
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status_reason(&deleting).0, "Terminating");
    }

    #[test]
    fn node_row_shows_ready_and_roles() {
        let n = json!({"metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/master": "true"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.0+skiff"}}});
        let cells = row(
            find("", "v1", "nodes").unwrap(),
            &n,
            chrono::DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z").unwrap().timestamp(),
        );
        assert_eq!(cells[1], "Ready");
        assert_eq!(cells[2], "control-plane,master");
        assert_eq!(cells[3], "60s");
        assert_eq!(cells.len(), columns(find("", "v1", "nodes").unwrap()).len());
    }

    #[test]
    fn every_kind_has_as_many_cells_as_columns() {
        for r in crate::registry::BUILTIN {
            assert_eq!(row(r, &json!({}), 0).len(), columns(r).len(), "{}", r.kind);
        }
    }

    #[test]
    fn service_ports_show_node_ports() {
        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.5", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}});
        let cells = row(find("", "v1", "services").unwrap(), &svc, 0);
        assert_eq!(cells[4], "80:30080/TCP");
        assert_eq!(cells[3], "<none>");
    }
}
