//! Validation of objects before they are stored, with upstream's field paths, reasons and
//! messages (k8s.io/apimachinery/pkg/util/validation and pkg/apis/*/validation).

use serde_json::Value;

use super::Resource;

/// One problem with one field, as a `Status` cause.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueDuplicate`, `FieldValueNotSupported`.
    pub reason: &'static str,
    pub field: String,
    /// Message without the field path, e.g. `Required value`.
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Cause {
        Cause { reason: "FieldValueRequired", field: field.into(), message: "Required value".into() }
    }
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Cause {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            v => v.to_string(),
        };
        Cause { reason: "FieldValueInvalid", field: field.into(), message: format!("Invalid value: {shown}: {detail}") }
    }
    /// An Invalid cause whose value is shown as given (upstream prints some values with Go's
    /// `%#v`, e.g. a whole ValidationRule).
    pub fn invalid_shown(field: impl Into<String>, shown: &str, detail: &str) -> Cause {
        Cause { reason: "FieldValueInvalid", field: field.into(), message: format!("Invalid value: {shown}: {detail}") }
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
        Cause { reason: "FieldValueDuplicate", field: field.into(), message: format!("Duplicate value: {value}") }
    }
    pub fn not_supported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Cause {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: {value}: supported values: {}", list.join(", ")),
        }
    }
}

pub(crate) const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub(crate) const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub(crate) const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// Checks a name against the rule of its kind. Returns one cause per broken rule, as
/// upstream's name validators return one message each (a too-long name with bad characters
/// gets both the length and the format message).
pub fn validate_name(r: &Resource, name: &str, field: &str) -> Vec<Cause> {
    let v = Value::String(name.to_string());
    // Upstream checks the length and the pattern separately, and its subdomain pattern has
    // no per-label length limit.
    let (pattern_ok, msg, max) = match (&*r.group, &*r.kind) {
        ("", "Namespace") => (label_pattern(name, false), DNS1123_LABEL_MSG, 63),
        ("", "Service") => (label_pattern(name, true), DNS1035_LABEL_MSG, 63),
        // Events and RBAC objects take any path segment name (IsValidPathSegmentName):
        // not `.` or `..`, no `/` or `%`, and no length rule of its own.
        ("", "Event") | ("events.k8s.io", "Event") | ("rbac.authorization.k8s.io", _) => {
            if name == "." || name == ".." {
                return vec![Cause::invalid(field, &v, &format!("may not be '{name}'"))];
            }
            return ["/", "%"]
                .iter()
                .filter(|c| name.contains(*c))
                .map(|c| Cause::invalid(field, &v, &format!("may not contain '{c}'")))
                .collect();
        }
        _ => (name.split('.').all(|p| label_pattern(p, false)), DNS1123_SUBDOMAIN_MSG, 253),
    };
    let mut out = Vec::new();
    if name.len() > max {
        out.push(Cause::invalid(field, &v, &format!("must be no more than {max} characters")));
    }
    if !pattern_ok {
        out.push(Cause::invalid(field, &v, msg));
    }
    out
}

/// Whether `s` matches the DNS label pattern, whatever its length. `alpha_first`: DNS-1035's
/// leading letter.
pub(crate) fn label_pattern(s: &str, alpha_first: bool) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && (!alpha_first || s.as_bytes()[0].is_ascii_lowercase())
}

fn validate_labels(labels: Option<&Value>, field: &str, out: &mut Vec<Cause>) {
    let Some(map) = labels.and_then(|l| l.as_object()) else { return };
    for (k, v) in map {
        let (prefix, name) = match k.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
        if !name_ok || prefix.is_some_and(|p| !is_dns1123_subdomain(p)) {
            out.push(Cause::invalid(
                field,
                &Value::String(k.clone()),
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ));
        }
        if let Some(s) = v.as_str() {
            let ok = s.is_empty()
                || (s.len() <= 63
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && s.as_bytes()[0].is_ascii_alphanumeric()
                    && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric());
            if !ok {
                out.push(Cause::invalid(
                    field,
                    v,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
                ));
            }
        }
    }
}

fn validate_containers(spec: &Value, path: &str, out: &mut Vec<Cause>) {
    let cs = spec.get("containers").and_then(|c| c.as_array());
    match cs {
        None => out.push(Cause::required(format!("{path}.containers"))),
        Some(cs) if cs.is_empty() => out.push(Cause::required(format!("{path}.containers"))),
        Some(_) => {}
    }
    let mut seen = Vec::new();
    for key in ["initContainers", "containers"] {
        for (i, c) in spec.get(key).and_then(|c| c.as_array()).into_iter().flatten().enumerate() {
            let p = format!("{path}.{key}[{i}]");
            match c.get("name").and_then(|n| n.as_str()) {
                None | Some("") => out.push(Cause::required(format!("{p}.name"))),
                Some(n) => {
                    if !is_dns1123_label(n) {
                        out.push(Cause::invalid(format!("{p}.name"), &c["name"], DNS1123_LABEL_MSG));
                    } else if seen.contains(&n) {
                        out.push(Cause::duplicate(format!("{p}.name"), &c["name"]));
                    }
                    seen.push(n);
                }
            }
            if c.get("image").and_then(|n| n.as_str()).is_none_or(|s| s.trim().is_empty()) {
                out.push(Cause::required(format!("{p}.image")));
            }
            if let Some(pp) = c.get("imagePullPolicy") {
                if !matches!(pp.as_str(), Some("Always" | "IfNotPresent" | "Never")) {
                    out.push(Cause::not_supported(
                        format!("{p}.imagePullPolicy"),
                        pp,
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
            }
        }
    }
    if let Some(rp) = spec.get("restartPolicy") {
        if !matches!(rp.as_str(), Some("Always" | "OnFailure" | "Never")) {
            out.push(Cause::not_supported(format!("{path}.restartPolicy"), rp, &["Always", "OnFailure", "Never"]));
        }
    }
}

pub fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let ml = selector.get("matchLabels").and_then(|m| m.as_object());
    let ok_labels = ml.is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let ok_exprs = selector.get("matchExpressions").and_then(|m| m.as_array()).is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let vals: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
            let have = labels.get(key).and_then(|v| v.as_str());
            match e["operator"].as_str() {
                Some("In") => have.is_some_and(|h| vals.contains(&h)),
                Some("NotIn") => have.is_none_or(|h| !vals.contains(&h)),
                Some("Exists") => have.is_some(),
                Some("DoesNotExist") => have.is_none(),
                _ => false,
            }
        })
    });
    ok_labels && ok_exprs
}

fn validate_workload(v: &Value, out: &mut Vec<Cause>, require_selector: bool) {
    if let Some(r) = v.pointer("/spec/replicas") {
        if r.as_i64().is_some_and(|n| n < 0) {
            out.push(Cause::invalid("spec.replicas", r, "must be greater than or equal to 0"));
        }
    }
    let selector = v.pointer("/spec/selector");
    let empty_sel = selector.is_none_or(|s| {
        s.get("matchLabels").and_then(|m| m.as_object()).is_none_or(|m| m.is_empty())
            && s.get("matchExpressions").and_then(|m| m.as_array()).is_none_or(|m| m.is_empty())
    });
    if require_selector && empty_sel {
        out.push(Cause::required("spec.selector"));
    }
    let labels = v.pointer("/spec/template/metadata/labels").cloned().unwrap_or(Value::Null);
    if let Some(sel) = selector.filter(|_| !empty_sel) {
        if !selector_matches(sel, &labels) {
            out.push(Cause::invalid(
                "spec.template.metadata.labels",
                &labels,
                "`selector` does not match template `labels`",
            ));
        }
    }
    match v.pointer("/spec/template/spec") {
        Some(spec) => validate_containers(spec, "spec.template.spec", out),
        None => out.push(Cause::required("spec.template.spec.containers")),
    }
}

/// Validates an object of kind `r` (after defaulting); `old` is the stored object on update
/// (transition rules of custom resources compare with it). Empty = valid.
pub fn validate(r: &Resource, v: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    if let Some(name) = v.pointer("/metadata/name").and_then(|n| n.as_str()) {
        out.extend(validate_name(r, name, "metadata.name"));
    }
    validate_labels(v.pointer("/metadata/labels"), "metadata.labels", &mut out);
    if let Some(c) = &r.custom {
        let schema_errors = super::schema::validate(&c.schema, v);
        // As upstream: a value of the wrong type would make the rules' errors meaningless.
        let blocking = schema_errors.iter().any(|e| e.message.contains(" must be of type "));
        out.extend(schema_errors);
        out.extend(super::listtype::validate(&c.schema, v));
        let rules = c.rules();
        if !rules.is_empty() {
            if blocking {
                out.push(Cause::invalid(
                    "<nil>",
                    &Value::String("null".into()),
                    "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
                ));
            } else {
                out.extend(rules.validate(v, old));
            }
        }
        return out;
    }
    match (&*r.group, &*r.kind) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            out.extend(super::custom::validate_crd_replacing(v, old))
        }
        ("events.k8s.io", "Event") => out.extend(super::convert::validate_event_v1(v)),
        ("", "Pod") => match v.get("spec") {
            Some(spec) => validate_containers(spec, "spec", &mut out),
            None => out.push(Cause::required("spec.containers")),
        },
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "StatefulSet") | ("apps", "DaemonSet") => {
            validate_workload(v, &mut out, true)
        }
        ("", "ReplicationController") => validate_workload(v, &mut out, false),
        ("", "Service") => {
            let headless = v.pointer("/spec/clusterIP").and_then(|c| c.as_str()) == Some("None");
            let ty = v.pointer("/spec/type").and_then(|t| t.as_str()).unwrap_or("ClusterIP");
            if !matches!(ty, "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
                out.push(Cause::not_supported(
                    "spec.type",
                    &v["spec"]["type"],
                    &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
                ));
            }
            let ports = v.pointer("/spec/ports").and_then(|p| p.as_array());
            if ty != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
                out.push(Cause::required("spec.ports"));
            }
            for (i, p) in ports.into_iter().flatten().enumerate() {
                match p.get("port").and_then(|x| x.as_i64()) {
                    Some(n) if (1..=65535).contains(&n) => {}
                    Some(_) => out.push(Cause::invalid(
                        format!("spec.ports[{i}].port"),
                        &p["port"],
                        "must be between 1 and 65535, inclusive",
                    )),
                    None => out.push(Cause::required(format!("spec.ports[{i}].port"))),
                }
                if ports.is_some_and(|ps| ps.len() > 1)
                    && p.get("name").and_then(|n| n.as_str()).is_none_or(|n| n.is_empty())
                {
                    out.push(Cause::required(format!("spec.ports[{i}].name")));
                }
            }
        }
        _ => {}
    }
    out
}

/// Upstream's message for an Invalid status: `Pod "x" is invalid: a: Required value` or with
/// several causes `Pod "x" is invalid: [a: …, b: …]`.
pub fn invalid_message(kind: &str, name: &str, causes: &[Cause]) -> String {
    let parts: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
    if parts.len() == 1 {
        format!("{kind} {name:?} is invalid: {}", parts[0])
    } else {
        format!("{kind} {name:?} is invalid: [{}]", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;
    use serde_json::json;

    #[test]
    fn names_follow_each_kinds_rule() {
        let ns = find("", "v1", "namespaces").unwrap();
        let svc = find("", "v1", "services").unwrap();
        let pod = find("", "v1", "pods").unwrap();
        assert!(validate_name(ns, "kube-system", "metadata.name").is_empty());
        assert_eq!(validate_name(ns, "a.b", "metadata.name").len(), 1);
        assert_eq!(validate_name(svc, "1abc", "metadata.name").len(), 1);
        assert!(validate_name(pod, "web-1.x", "metadata.name").is_empty());
        let long: Vec<String> =
            validate_name(ns, &"a".repeat(64), "metadata.name").into_iter().map(|c| c.message).collect();
        assert_eq!(long.len(), 1, "{long:?}");
        assert!(long[0].ends_with("must be no more than 63 characters"), "{long:?}");
        assert_eq!(validate_name(ns, &"A".repeat(64), "metadata.name").len(), 2);
        assert_eq!(validate_name(pod, &"a".repeat(254), "metadata.name").len(), 1);
        let crs = find("rbac.authorization.k8s.io", "v1", "clusterroles").unwrap();
        assert_eq!(validate_name(crs, "..", "metadata.name")[0].message, "Invalid value: \"..\": may not be '..'");
        let both: Vec<String> = validate_name(crs, "a/b%", "metadata.name").into_iter().map(|c| c.message).collect();
        assert_eq!(
            both,
            vec!["Invalid value: \"a/b%\": may not contain '/'", "Invalid value: \"a/b%\": may not contain '%'"]
        );
        assert!(validate_name(crs, "system:aggregate-to-view", "metadata.name").is_empty());
        let c = validate_name(pod, "Bad_Name", "metadata.name").remove(0);
        assert!(c.message.starts_with("Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{}", c.message);
    }

    #[test]
    fn a_pod_needs_containers_with_names_and_images() {
        let pod = find("", "v1", "pods").unwrap();
        let causes = validate(
            pod,
            &json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}, {"name": "c", "image": "x"}]}}),
            None,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.containers[0].image", "spec.containers[1].name"]);
        assert_eq!(causes[1].reason, "FieldValueDuplicate");
    }

    #[test]
    fn a_deployment_selector_must_match_its_template() {
        let d = find("apps", "v1", "deployments").unwrap();
        let causes = validate(
            d,
            &json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            None,
        );
        assert_eq!(causes.len(), 1);
        assert!(causes[0].message.contains("`selector` does not match template `labels`"));
    }

    #[test]
    fn invalid_messages_match_upstream_form() {
        let one = vec![Cause::required("spec.containers")];
        assert_eq!(invalid_message("Pod", "p", &one), "Pod \"p\" is invalid: spec.containers: Required value");
        let two = vec![Cause::required("a"), Cause::required("b")];
        assert_eq!(invalid_message("Pod", "p", &two), "Pod \"p\" is invalid: [a: Required value, b: Required value]");
    }
}
