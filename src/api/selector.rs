//! Label and field selectors in the query-string syntax kubectl sends
//! (k8s.io/apimachinery/pkg/labels and pkg/fields), and matching them against objects.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(pub Vec<Req>);

fn split_top(s: &str) -> Vec<&str> {
    // Split on commas outside parentheses.
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 317 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            let bad = || format!("unable to parse requirement: found '{p}', expected: identifier or operator");
            let r = if let Some(k) = p.strip_prefix('!') {
                Req::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                Req::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some(idx) = p.find(" notin ") {
                Req::NotIn(p[..idx].trim().into(), set_values(&p[idx + 7..]).ok_or_else(bad)?)
            } else if let Some(idx) = p.find(" in ") {
                Req::In(p[..idx].trim().into(), set_values(&p[idx + 4..]).ok_or_else(bad)?)
            } else {
                Req::Exists(p.to_string())
            };
            let key = match &r {
                Req::Eq(k, _)
                | Req::NotEq(k, _)
                | Req::In(k, _)
                | Req::NotIn(k, _)
                | Req::Exists(k)
                | Req::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(format!("unable to parse requirement: invalid label key {key:?}"));
            }
            reqs.push(r);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(|v| v.as_str());
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

fn set_values(s: &str) -> Option<Vec<String>> {
    let s = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(s.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

/// The fields each kind can be selected by, beyond metadata.name and metadata.namespace
/// (upstream's per-kind field label conversion functions).
fn supported(kind: &str, field: &str) -> bool {
    matches!(field, "metadata.name" | "metadata.namespace")
        || match kind {
            "Pod" => matches!(
                field,
                "spec.nodeName"
                    | "spec.restartPolicy"
                    | "spec.schedulerName"
                    | "spec.serviceAccountName"
                    | "spec.hostNetwork"
                    | "status.phase"
                    | "status.podIP"
                    | "status.nominatedNodeName"
            ),
            "Event" => {
                field.starts_with("involvedObject.")
                    || field.starts_with("regarding.")
                    || matches!(field, "reason" | "reportingComponent" | "reportingController" | "source" | "type")
            }
            "Secret" => field == "type",
            "Node" => field == "spec.unschedulable",
            "Namespace" => field == "status.phase",
            "ReplicaSet" | "ReplicationController" => field == "status.replicas",
            "Job" => field == "status.successful",
            _ => false,
        }
}

impl FieldSelector {
    pub fn parse(s: &str, kind: &str) -> Result<FieldSelector, String> {
        let mut out = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(out));
        }
        for part in s.split(',') {
            let p = part.trim();
            let (f, eq, v) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{p}'"));
            };
            let f = f.trim();
            if !supported(kind, f) {
                return Err(format!("field label not supported: {f}"));
            }
            out.push((f.to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value `metadata.name=` pins, if any (lets a list read one key).
    pub fn exact_name(&self) -> Option<&str> {
        self.0.iter().find(|(f, eq, _)| f == "metadata.name" && *eq).map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, o: &Value) -> bool {
        self.0.iter().all(|(f, eq, v)| {
            let path = format!("/{}", f.replace('.', "/"));
            let have = match o.pointer(&path) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                // Unset fields compare as their zero value, as upstream's field sets do.
                None | Some(Value::Null) => match f.as_str() {
                    "spec.hostNetwork" | "spec.unschedulable" => "false".into(),
                    _ => String::new(),
                },
                Some(other) => other.to_string(),
            };
            (have == *v) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_parse_every_operator() {
        let s = LabelSelector::parse("a=b,c!=d,e in (x, y),f notin (z),g,!h").unwrap();
        assert_eq!(s.0.len(), 6);
        let labels = json!({"a": "b", "c": "x", "e": "y", "f": "q", "g": "1"});
        assert!(s.matches(Some(&labels)));
        let labels = json!({"a": "b", "c": "x", "e": "y", "f": "q", "g": "1", "h": ""});
        assert!(!s.matches(Some(&labels)));
        assert!(LabelSelector::parse("").unwrap().matches(None));
        assert!(!LabelSelector::parse("app==web").unwrap().matches(None));
    }

    #[test]
    fn bad_label_selectors_are_rejected() {
        assert!(LabelSelector::parse("a in x").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn field_selectors_check_supported_fields() {
        let f = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", "Pod").unwrap();
        assert!(f.matches(&json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})));
        assert!(!f.matches(&json!({"spec": {"nodeName": "n2"}})));
        assert_eq!(FieldSelector::parse("spec.foo=x", "Pod").unwrap_err(), "field label not supported: spec.foo");
        let ev = FieldSelector::parse("involvedObject.name=web,involvedObject.kind=Pod", "Event").unwrap();
        assert!(ev.matches(&json!({"involvedObject": {"name": "web", "kind": "Pod"}})));
        assert_eq!(FieldSelector::parse("metadata.name=x", "ConfigMap").unwrap().exact_name(), Some("x"));
        assert!(FieldSelector::parse("spec.nodeName=", "Pod").unwrap().matches(&json!({"spec": {}})));
    }
}
