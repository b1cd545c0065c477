//! CEL values, and the conversion of a JSON object into them as apiextensions-apiserver's
//! `UnstructuredToVal` does: typed by the structural schema (`number` is a double, strings with
//! `format: duration`/`date-time`/`date`/`byte` are durations, timestamps and bytes), fields the
//! schema does not declare are invisible, null fields are absent, property names are escaped
//! (`x-prop` → `x__dash__prop`), and lists know their `x-kubernetes-list-type` (equality of
//! `set` and `map` lists ignores order).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// How a list compares and concatenates (`x-kubernetes-list-type`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ListKind {
    #[default]
    Atomic,
    Set,
    /// A map list with its `x-kubernetes-list-map-keys` (escaped names).
    Map(Arc<[Arc<str>]>),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Str(Arc<str>),
}

impl Key {
    pub fn from_val(v: &Val) -> Option<Key> {
        Some(match v {
            Val::Bool(b) => Key::Bool(*b),
            Val::Int(i) => Key::Int(*i),
            Val::Uint(u) => Key::Uint(*u),
            Val::Str(s) => Key::Str(s.clone()),
            _ => return None,
        })
    }
    pub fn to_val(&self) -> Val {
        match self {
            Key::Bool(b) => Val::Bool(*b),
            Key::Int(i) => Val::Int(*i),
            Key::Uint(u) => Val::Uint(*u),
            Key::Str(s) => Val::Str(s.clone()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct MapVal {
    pub entries: BTreeMap<Key, Val>,
}

impl MapVal {
    /// Looks a key up; int and uint keys of equal value find each other, as in CEL.
    pub fn get(&self, k: &Key) -> Option<&Val> {
        self.entries.get(k).or_else(|| match k {
            Key::Int(i) => u64::try_from(*i).ok().and_then(|u| self.entries.get(&Key::Uint(u))),
            Key::Uint(u) => i64::try_from(*u).ok().and_then(|i| self.entries.get(&Key::Int(i))),
            _ => None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ListVal {
    pub items: Vec<Val>,
    pub kind: ListKind,
}

/// A CEL value. Collections are shared (`Arc`), so binding `self` into comprehensions is cheap.
#[derive(Debug, Clone)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
    List(Arc<ListVal>),
    Map(Arc<MapVal>),
    /// Nanoseconds.
    Duration(i128),
    Timestamp(DateTime<Utc>),
    /// A type value (`type(x)`, `int`), by name.
    Type(Arc<str>),
    Optional(Option<Arc<Val>>),
    Quantity(Arc<super::library::Quantity>),
    /// `net.IP`.
    Ip(std::net::IpAddr),
    /// `net.CIDR`: an address (not necessarily masked) and a prefix length.
    Cidr(std::net::IpAddr, u8),
    /// `kubernetes.URL`.
    Url(Arc<super::net::Url>),
    /// `kubernetes.Semver`.
    Semver(Arc<super::semver::Semver>),
    /// `kubernetes.NamedFormat`, by its name in the format library (`dns1123Label`).
    Format(&'static str),
}

/// CEL's duration range: about ±10000 years.
pub const MAX_DURATION_NANOS: i128 = 315_576_000_000 * 1_000_000_000;

impl Val {
    pub fn str(s: &str) -> Val {
        Val::Str(Arc::from(s))
    }
    pub fn list(items: Vec<Val>) -> Val {
        Val::List(Arc::new(ListVal { items, kind: ListKind::Atomic }))
    }

    /// The type name cel-go prints (`int`, `list`, `google.protobuf.Duration`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Null => "null_type",
            Val::Bool(_) => "bool",
            Val::Int(_) => "int",
            Val::Uint(_) => "uint",
            Val::Double(_) => "double",
            Val::Str(_) => "string",
            Val::Bytes(_) => "bytes",
            Val::List(_) => "list",
            Val::Map(_) => "map",
            Val::Duration(_) => "google.protobuf.Duration",
            Val::Timestamp(_) => "google.protobuf.Timestamp",
            Val::Type(_) => "type",
            Val::Optional(_) => "optional_type",
            Val::Quantity(_) => "kubernetes.Quantity",
            Val::Ip(_) => "net.IP",
            Val::Cidr(..) => "net.CIDR",
            Val::Url(_) => "kubernetes.URL",
            Val::Semver(_) => "kubernetes.Semver",
            Val::Format(_) => "kubernetes.NamedFormat",
        }
    }

    /// CEL equality: numbers compare across int/uint/double; `set` and `map` lists ignore order.
    pub fn equals(&self, o: &Val) -> bool {
        match (self, o) {
            (Val::Null, Val::Null) => true,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (Val::Str(a), Val::Str(b)) => a == b,
            (Val::Bytes(a), Val::Bytes(b)) => a == b,
            (Val::Duration(a), Val::Duration(b)) => a == b,
            (Val::Timestamp(a), Val::Timestamp(b)) => a == b,
            (Val::Type(a), Val::Type(b)) => a == b,
            (Val::Quantity(a), Val::Quantity(b)) => a.compare(b) == Ordering::Equal,
            (Val::Ip(a), Val::Ip(b)) => a == b,
            (Val::Cidr(a, x), Val::Cidr(b, y)) => a == b && x == y,
            (Val::Url(a), Val::Url(b)) => a.text == b.text,
            (Val::Semver(a), Val::Semver(b)) => a.compare(b) == Ordering::Equal,
            (Val::Format(a), Val::Format(b)) => a == b,
            (Val::Optional(a), Val::Optional(b)) => match (a, b) {
                (None, None) => true,
                (Some(x), Some(y)) => x.equals(y),
                _ => false,
            },
            (Val::List(a), Val::List(b)) => {
                if a.items.len() != b.items.len() {
                    return false;
                }
                if a.kind != ListKind::Atomic && a.kind == b.kind {
                    // Unordered: every element of one has an equal one in the other (elements of
                    // sets and keys of map lists are unique, so counting is not needed).
                    return a.items.iter().all(|x| b.items.iter().any(|y| x.equals(y)));
                }
                a.items.iter().zip(b.items.iter()).all(|(x, y)| x.equals(y))
            }
            (Val::Map(a), Val::Map(b)) => {
                a.entries.len() == b.entries.len()
                    && a.entries.iter().all(|(k, v)| b.get(k).is_some_and(|w| v.equals(w)))
            }
            _ => match (self.as_number(), o.as_number()) {
                (Some(a), Some(b)) => num_cmp(a, b) == Some(Ordering::Equal),
                _ => false,
            },
        }
    }

    fn as_number(&self) -> Option<Num> {
        match self {
            Val::Int(i) => Some(Num::I(*i)),
            Val::Uint(u) => Some(Num::U(*u)),
            Val::Double(d) => Some(Num::D(*d)),
            _ => None,
        }
    }

    /// CEL ordering (`<`): numbers across types, strings, bytes, bools, durations, timestamps.
    /// None when the two are not comparable.
    pub fn compare(&self, o: &Val) -> Option<Ordering> {
        match (self, o) {
            (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
            (Val::Str(a), Val::Str(b)) => Some(a.cmp(b)),
            (Val::Bytes(a), Val::Bytes(b)) => Some(a.cmp(b)),
            (Val::Duration(a), Val::Duration(b)) => Some(a.cmp(b)),
            (Val::Timestamp(a), Val::Timestamp(b)) => Some(a.cmp(b)),
            (Val::Quantity(a), Val::Quantity(b)) => Some(a.compare(b)),
            _ => num_cmp(self.as_number()?, o.as_number()?),
        }
    }

    pub fn is_numeric(&self) -> bool {
        self.as_number().is_some()
    }
}

#[derive(Clone, Copy)]
enum Num {
    I(i64),
    U(u64),
    D(f64),
}

fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::I(x), Num::I(y)) => Some(x.cmp(&y)),
        (Num::U(x), Num::U(y)) => Some(x.cmp(&y)),
        (Num::I(x), Num::U(y)) => Some(if x < 0 { Ordering::Less } else { (x as u64).cmp(&y) }),
        (Num::U(x), Num::I(y)) => Some(if y < 0 { Ordering::Greater } else { x.cmp(&(y as u64)) }),
        (Num::D(x), Num::D(y)) => x.partial_cmp(&y),
        (Num::I(x), Num::D(y)) => int_double_cmp(x as i128, y),
        (Num::U(x), Num::D(y)) => int_double_cmp(x as i128, y),
        (Num::D(x), Num::I(y)) => int_double_cmp(y as i128, x).map(Ordering::reverse),
        (Num::D(x), Num::U(y)) => int_double_cmp(y as i128, x).map(Ordering::reverse),
    }
}

/// Compares an integer with a double exactly (no rounding of large integers through f64).
fn int_double_cmp(i: i128, d: f64) -> Option<Ordering> {
    if d.is_nan() {
        return None;
    }
    if d >= 1.8e19 {
        return Some(Ordering::Less);
    }
    if d <= -1.0e19 {
        return Some(Ordering::Greater);
    }
    let t = d.trunc() as i128;
    match i.cmp(&t) {
        Ordering::Equal => {
            let frac = d - d.trunc();
            Some(if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            })
        }
        o => Some(o),
    }
}

// ---------- names ----------

/// A property name as CEL expressions see it (apiserver's `cel.Escape`), or None when the name
/// cannot be written in CEL at all (such properties are not visible to rules).
pub fn escape(name: &str) -> Option<String> {
    // CEL's literals and keywords, and every reserved word, are escaped as `__word__`.
    if matches!(name, "true" | "false" | "null" | "in") || super::parser::RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut chars = name.chars();
    let first = chars.next()?;
    let ok_first = first.is_ascii_alphabetic() || matches!(first, '_' | '.' | '-' | '/');
    if !ok_first || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')) {
        return None;
    }
    let mut out = String::with_capacity(name.len());
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' if b.get(i + 1) == Some(&b'_') => {
                out.push_str("__underscores__");
                i += 2;
                continue;
            }
            b'.' => out.push_str("__dot__"),
            b'-' => out.push_str("__dash__"),
            b'/' => out.push_str("__slash__"),
            c => out.push(c as char),
        }
        i += 1;
    }
    Some(out)
}

// ---------- JSON → CEL ----------

fn flag(s: &Value, k: &str) -> bool {
    s.get(k) == Some(&Value::Bool(true))
}

/// Whether a schema node has a type CEL can see (apiextensions' `SchemaDeclType` is not nil):
/// nodes with no type (preserve-unknown-fields alone) are invisible to rules.
pub fn visible(s: &Value) -> bool {
    if flag(s, "x-kubernetes-int-or-string") {
        return true;
    }
    match s.get("type").and_then(|t| t.as_str()) {
        Some("array") => s.get("items").is_some_and(visible),
        Some("object") => match s.get("additionalProperties").filter(|a| a.is_object()) {
            Some(a) => visible(a),
            None => true,
        },
        Some("string" | "integer" | "number" | "boolean") => true,
        _ => false,
    }
}

/// Converts `v` (valid against `s`) into a CEL value. `resource` marks the root of an object or
/// an embedded resource: `apiVersion`, `kind` and `metadata.name`/`generateName` are visible
/// there even when the schema does not list them.
pub fn from_json(v: &Value, s: &Value, resource: bool) -> Val {
    if s.is_null() {
        return from_json_dyn(v);
    }
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => {
            if s.get("type").and_then(|t| t.as_str()) == Some("number") {
                Val::Double(n.as_f64().unwrap_or(0.0))
            } else if let Some(i) = n.as_i64() {
                Val::Int(i)
            } else if let Some(u) = n.as_u64() {
                Val::Uint(u)
            } else {
                Val::Double(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(st) => {
            if flag(s, "x-kubernetes-int-or-string") {
                return Val::str(st);
            }
            match s.get("format").and_then(|f| f.as_str()) {
                Some("byte") => {
                    use base64::Engine;
                    match base64::engine::general_purpose::STANDARD.decode(st) {
                        Ok(b) => Val::Bytes(b.into()),
                        Err(_) => Val::str(st),
                    }
                }
                Some("duration") => match super::library::parse_duration(st) {
                    Ok(d) => Val::Duration(d),
                    Err(_) => Val::str(st),
                },
                Some("date-time" | "datetime") => match DateTime::parse_from_rfc3339(st) {
                    Ok(t) => Val::Timestamp(t.with_timezone(&Utc)),
                    Err(_) => Val::str(st),
                },
                Some("date") => match chrono::NaiveDate::parse_from_str(st, "%Y-%m-%d") {
                    Ok(d) => match d.and_hms_opt(0, 0, 0) {
                        Some(t) => Val::Timestamp(t.and_utc()),
                        None => Val::str(st),
                    },
                    Err(_) => Val::str(st),
                },
                _ => Val::str(st),
            }
        }
        Value::Array(a) => {
            let items_s = s.get("items").unwrap_or(&Value::Null);
            let embedded = flag(items_s, "x-kubernetes-embedded-resource");
            let kind = list_kind(s);
            let items = a.iter().map(|x| from_json(x, items_s, embedded)).collect();
            Val::List(Arc::new(ListVal { items, kind }))
        }
        Value::Object(m) => {
            let mut entries = BTreeMap::new();
            if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
                let embedded = flag(a, "x-kubernetes-embedded-resource");
                for (k, x) in m {
                    if !x.is_null() {
                        entries.insert(Key::Str(Arc::from(k.as_str())), from_json(x, a, embedded));
                    }
                }
                return Val::Map(Arc::new(MapVal { entries }));
            }
            let props = s.get("properties").and_then(|p| p.as_object());
            for (k, x) in m {
                if x.is_null() {
                    continue;
                }
                if resource && matches!(k.as_str(), "apiVersion" | "kind") {
                    entries.insert(Key::Str(Arc::from(k.as_str())), from_json_dyn(x));
                    continue;
                }
                if resource && k == "metadata" {
                    let mut meta = BTreeMap::new();
                    for f in ["name", "generateName"] {
                        if let Some(Value::String(n)) = x.get(f) {
                            meta.insert(Key::Str(Arc::from(f)), Val::str(n));
                        }
                    }
                    entries.insert(Key::Str(Arc::from("metadata")), Val::Map(Arc::new(MapVal { entries: meta })));
                    continue;
                }
                let Some(ps) = props.and_then(|p| p.get(k)) else { continue };
                if !visible(ps) {
                    continue;
                }
                let Some(name) = escape(k) else { continue };
                entries.insert(
                    Key::Str(Arc::from(name.as_str())),
                    from_json(x, ps, flag(ps, "x-kubernetes-embedded-resource")),
                );
            }
            Val::Map(Arc::new(MapVal { entries }))
        }
    }
}

/// A list's kind from its schema.
pub fn list_kind(s: &Value) -> ListKind {
    match s.get("x-kubernetes-list-type").and_then(|t| t.as_str()) {
        Some("set") => ListKind::Set,
        Some("map") => {
            let keys: Vec<Arc<str>> = s
                .get("x-kubernetes-list-map-keys")
                .and_then(|k| k.as_array())
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str())
                .map(|k| Arc::from(escape(k).unwrap_or_else(|| k.to_string()).as_str()))
                .collect();
            ListKind::Map(keys.into())
        }
        _ => ListKind::Atomic,
    }
}

/// Converts JSON with no schema information (dynamic values).
pub fn from_json_dyn(v: &Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Val::Int(i),
            (None, Some(u)) => Val::Uint(u),
            _ => Val::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Val::str(s),
        Value::Array(a) => Val::list(a.iter().map(from_json_dyn).collect()),
        Value::Object(m) => Val::Map(Arc::new(MapVal {
            entries: m
                .iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (Key::Str(Arc::from(k.as_str())), from_json_dyn(x)))
                .collect(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_escaped_as_apiserver_does() {
        assert_eq!(escape("x-prop").as_deref(), Some("x__dash__prop"));
        assert_eq!(escape("redact__d").as_deref(), Some("redact__underscores__d"));
        assert_eq!(escape("namespace").as_deref(), Some("__namespace__"));
        assert_eq!(escape("a.b/c").as_deref(), Some("a__dot__b__slash__c"));
        assert_eq!(escape("1abc"), None);
        assert_eq!(escape("has space"), None);
    }

    #[test]
    fn json_becomes_typed_values_by_schema() {
        let s = json!({"type": "object", "properties": {
            "n": {"type": "number"}, "i": {"type": "integer"}, "d": {"type": "string", "format": "duration"},
            "set": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "free": {"x-kubernetes-preserve-unknown-fields": true},
            "x-y": {"type": "string"}}});
        let v = from_json(
            &json!({"n": 1, "i": 2, "d": "1m30s", "set": ["a", "b"], "free": {"a": 1}, "x-y": "z", "undeclared": 1, "apiVersion": "v1", "metadata": {"name": "n", "uid": "u"}}),
            &s,
            true,
        );
        let Val::Map(m) = v else { panic!() };
        assert!(matches!(m.get(&Key::Str("n".into())), Some(Val::Double(x)) if *x == 1.0));
        assert!(matches!(m.get(&Key::Str("d".into())), Some(Val::Duration(d)) if *d == 90_000_000_000));
        assert!(m.get(&Key::Str("free".into())).is_none(), "fields of unknown type are invisible");
        assert!(m.get(&Key::Str("undeclared".into())).is_none());
        assert!(m.get(&Key::Str("x__dash__y".into())).is_some());
        let Some(Val::Map(meta)) = m.get(&Key::Str("metadata".into())) else { panic!() };
        assert_eq!(meta.entries.len(), 1, "only name and generateName of metadata");
        let set = m.get(&Key::Str("set".into())).unwrap();
        let other = Val::List(Arc::new(ListVal { items: vec![Val::str("b"), Val::str("a")], kind: ListKind::Set }));
        assert!(set.equals(&other), "sets compare without order");
    }

    #[test]
    fn numbers_compare_across_types_exactly() {
        assert!(Val::Int(1).equals(&Val::Double(1.0)));
        assert!(Val::Uint(3).equals(&Val::Int(3)));
        assert_eq!(Val::Int(i64::MAX).compare(&Val::Double(9.223372036854776e18)), Some(Ordering::Less));
        assert_eq!(Val::Int(-1).compare(&Val::Uint(0)), Some(Ordering::Less));
        assert_eq!(Val::Double(f64::NAN).compare(&Val::Int(1)), None);
    }
}
