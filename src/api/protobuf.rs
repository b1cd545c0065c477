//! Decodes Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`: the
//! `k8s\0` magic, then a `runtime.Unknown` envelope holding the object) into JSON, so every
//! later step sees one representation. kubectl 1.32's typed commands (`create namespace`,
//! `create configmap`, `create deployment`, `auth can-i`, …) send these and never retry in JSON.
//!
//! The wire format is decoded generically from `embedded/protobuf-fields.txt` (tag → JSON
//! name and type for every message, generated from k8s-pb and k8s-openapi by
//! `tools/gen-protobuf-table.py`), plus the few messages whose JSON form is special (Time,
//! Quantity, IntOrString, RawExtension, Duration).

use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

const TABLE: &str = include_str!("../../embedded/protobuf-fields.txt");
const MAX_DEPTH: usize = 64;

#[derive(Debug)]
struct Field {
    json: String,
    kind: String,
    repeated: bool,
    msg: Option<String>,
}

fn table() -> &'static HashMap<String, HashMap<u64, Field>> {
    static T: OnceLock<HashMap<String, HashMap<u64, Field>>> = OnceLock::new();
    T.get_or_init(|| {
        let mut out: HashMap<String, HashMap<u64, Field>> = HashMap::new();
        let mut cur: Option<String> = None;
        for line in TABLE.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["M", name] => {
                    cur = Some(name.to_string());
                    out.entry(name.to_string()).or_default();
                }
                ["F", tag, json, kind, label, rest @ ..] => {
                    if let (Some(c), Ok(tag)) = (&cur, tag.parse::<u64>()) {
                        let f = Field {
                            json: json.to_string(),
                            kind: kind.to_string(),
                            repeated: *label == "rep",
                            msg: rest.first().map(|s| s.to_string()),
                        };
                        out.entry(c.clone()).or_default().insert(tag, f);
                    }
                }
                _ => {}
            }
        }
        out
    })
}

/// Pointer fields whose explicit zero/false differs from leaving them out. Other zero scalars
/// are dropped, as the JSON encoding's `omitempty` would (Go's protobuf marshalling writes
/// non-pointer fields even when zero).
const KEEP_ZERO: &[&str] = &[
    "replicas",
    "parallelism",
    "completions",
    "backoffLimit",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "ttlSecondsAfterFinished",
    "gracePeriodSeconds",
    "expirationSeconds",
    "defaultMode",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "priority",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "allowPrivilegeEscalation",
    "immutable",
    "suspend",
    "shareProcessNamespace",
    "setHostnameAsFQDN",
    "runAsNonRoot",
    "readOnlyRootFilesystem",
    "privileged",
    "hostUsers",
    "minAvailable",
    "maxUnavailable",
    "maxSurge",
    "partition",
];

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i).ok_or("truncated varint")?;
            self.i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()? as usize;
        let end =
            self.i.checked_add(n).filter(|e| *e <= self.b.len()).ok_or("length-delimited field runs past the end")?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }
    fn fixed(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.i.checked_add(n).filter(|e| *e <= self.b.len()).ok_or("truncated fixed field")?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }
    fn done(&self) -> bool {
        self.i >= self.b.len()
    }
    /// Reads one field header: (tag, wire type).
    fn key(&mut self) -> Result<(u64, u8), String> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }
    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.fixed(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.fixed(4).map(|_| ()),
            w => Err(format!("unsupported wire type {w}")),
        }
    }
}

fn scalar(kind: &str, wire: u8, r: &mut Reader) -> Result<Vec<Value>, String> {
    // Packed repeated scalars arrive length-delimited.
    if wire == 2 && matches!(kind, "int32" | "int64" | "bool" | "double") {
        let mut inner = Reader { b: r.bytes()?, i: 0 };
        let mut out = Vec::new();
        while !inner.done() {
            out.extend(scalar(kind, if kind == "double" { 1 } else { 0 }, &mut inner)?);
        }
        return Ok(out);
    }
    Ok(vec![match kind {
        "int32" => json!(r.varint()? as i64 as i32),
        "int64" => json!(r.varint()? as i64),
        "bool" => json!(r.varint()? != 0),
        "double" => {
            let b = r.fixed(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            json!(f64::from_le_bytes(a))
        }
        "string" => json!(String::from_utf8(r.bytes()?.to_vec()).map_err(|_| "string field is not UTF-8")?),
        "bytes" => json!(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
        k => return Err(format!("unsupported field kind {k}")),
    }])
}

fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let neg = nanos < 0;
    let mut n = nanos.unsigned_abs();
    let h = n / 3_600_000_000_000;
    n %= 3_600_000_000_000;
    let m = n / 60_000_000_000;
    n %= 60_000_000_000;
    let s = n as f64 / 1e9;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{s}s"));
    out
}

fn special(name: &str, b: &[u8]) -> Result<Option<Value>, String> {
    let mut r = Reader { b, i: 0 };
    let mut fields: HashMap<u64, Value> = HashMap::new();
    let kinds: &[(u64, &str)] = match name {
        "io.k8s.apimachinery.pkg.apis.meta.v1.Time" | "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            &[(1, "int64"), (2, "int32")]
        }
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => &[(1, "string")],
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => &[(1, "int64"), (2, "int32"), (3, "string")],
        "io.k8s.apimachinery.pkg.runtime.RawExtension" | "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            &[(1, "bytes")]
        }
        "io.k8s.apimachinery.pkg.apis.meta.v1.Duration" => &[(1, "int64")],
        _ => return Ok(None),
    };
    while !r.done() {
        let (tag, wire) = r.key()?;
        match kinds.iter().find(|(t, _)| *t == tag) {
            Some((_, k)) if *k == "bytes" => {
                let raw = r.bytes()?;
                fields.insert(tag, serde_json::from_slice(raw).unwrap_or(Value::Null));
            }
            Some((_, k)) => {
                let v = scalar(k, wire, &mut r)?;
                if let Some(v) = v.into_iter().next() {
                    fields.insert(tag, v);
                }
            }
            None => r.skip(wire)?,
        }
    }
    let int = |t: u64| fields.get(&t).and_then(|v| v.as_i64()).unwrap_or(0);
    Ok(Some(match name {
        n if n.ends_with("Time") => {
            let (secs, nanos) = (int(1), int(2));
            if secs == 0 && nanos == 0 {
                Value::Null
            } else {
                let t = chrono::DateTime::from_timestamp(secs, nanos as u32).ok_or("time out of range")?;
                if n.ends_with("MicroTime") {
                    json!(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                } else {
                    json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                }
            }
        }
        n if n.ends_with("Quantity") => fields.remove(&1).unwrap_or(json!("0")),
        n if n.ends_with("IntOrString") => {
            if int(1) == 1 {
                fields.remove(&3).unwrap_or(json!(""))
            } else {
                json!(int(2))
            }
        }
        n if n.ends_with("Duration") => json!(go_duration(int(1))),
        _ => fields.remove(&1).unwrap_or(Value::Null),
    }))
}

fn message(name: &str, b: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("message nested too deeply".into());
    }
    if let Some(v) = special(name, b)? {
        return Ok(v);
    }
    let fields = table().get(name).ok_or_else(|| format!("no protobuf description for {name}"))?;
    let mut out = Map::new();
    let mut r = Reader { b, i: 0 };
    while !r.done() {
        let (tag, wire) = r.key()?;
        let Some(f) = fields.get(&tag) else {
            r.skip(wire)?;
            continue;
        };
        if let Some(map_kind) = f.kind.strip_prefix("map:") {
            let (_, vkind) = map_kind.split_once(':').unwrap_or(("string", "string"));
            let mut e = Reader { b: r.bytes()?, i: 0 };
            let (mut k, mut v) = (String::new(), Value::Null);
            while !e.done() {
                let (t, w) = e.key()?;
                match t {
                    1 => {
                        k = scalar("string", w, &mut e)?
                            .into_iter()
                            .next()
                            .and_then(|s| s.as_str().map(String::from))
                            .unwrap_or_default()
                    }
                    2 if vkind == "message" => v = message(f.msg.as_deref().unwrap_or(""), e.bytes()?, depth + 1)?,
                    2 => v = scalar(vkind, w, &mut e)?.into_iter().next().unwrap_or(Value::Null),
                    _ => e.skip(w)?,
                }
            }
            if v.is_null() && vkind == "string" {
                v = json!("");
            }
            let m = out.entry(f.json.clone()).or_insert_with(|| json!({}));
            if let Some(m) = m.as_object_mut() {
                m.insert(k, v);
            }
            continue;
        }
        let vals = if f.kind == "message" {
            vec![message(f.msg.as_deref().unwrap_or(""), r.bytes()?, depth + 1)?]
        } else {
            scalar(&f.kind, wire, &mut r)?
        };
        if f.repeated {
            let a = out.entry(f.json.clone()).or_insert_with(|| json!([]));
            if let Some(a) = a.as_array_mut() {
                a.extend(vals);
            }
        } else if let Some(v) = vals.into_iter().next() {
            let keep = match &v {
                Value::Null => false,
                Value::String(s) => !s.is_empty(),
                Value::Bool(false) => KEEP_ZERO.contains(&f.json.as_str()),
                Value::Number(n) if n.as_f64() == Some(0.0) => KEEP_ZERO.contains(&f.json.as_str()),
                _ => true,
            };
            if keep {
                out.insert(f.json.clone(), v);
            }
        }
    }
    Ok(Value::Object(out))
}

/// The protobuf message name of a group/version/kind.
fn message_name(group: &str, version: &str, kind: &str) -> String {
    match group {
        "" => format!("io.k8s.api.core.{version}.{kind}"),
        "apiextensions.k8s.io" => format!("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{version}.{kind}"),
        "apiregistration.k8s.io" => format!("io.k8s.kube-aggregator.pkg.apis.apiregistration.{version}.{kind}"),
        "meta.k8s.io" => format!("io.k8s.apimachinery.pkg.apis.meta.{version}.{kind}"),
        g => format!("io.k8s.api.{}.{version}.{kind}", g.split('.').next().unwrap_or(g)),
    }
}

/// Decodes a `k8s\0`-framed protobuf body into a JSON object with apiVersion and kind set.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    // Upstream's protobuf serializer words a missing `k8s\0` prefix this way.
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or("provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]")?;
    let mut r = Reader { b: rest, i: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while !r.done() {
        let (tag, wire) = r.key()?;
        match tag {
            1 => {
                let mut tm = Reader { b: r.bytes()?, i: 0 };
                while !tm.done() {
                    let (t, w) = tm.key()?;
                    let s = scalar("string", w, &mut tm)?
                        .into_iter()
                        .next()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default();
                    match t {
                        1 => api_version = s,
                        2 => kind = s,
                        _ => {}
                    }
                }
            }
            2 => raw = r.bytes()?,
            _ => r.skip(wire)?,
        }
    }
    if kind.is_empty() {
        return Err("protobuf envelope names no kind".into());
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version.as_str()));
    let mut v = message(&message_name(group, version, &kind), raw, 0)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), json!(api_version));
        o.insert("kind".into(), json!(kind));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn field(tag: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(tag << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        field(1, api_version.as_bytes(), &mut tm);
        field(2, kind.as_bytes(), &mut tm);
        let mut u = b"k8s\0".to_vec();
        field(1, &tm, &mut u);
        field(2, raw, &mut u);
        u
    }

    #[test]
    fn a_configmap_with_labels_and_data_decodes() {
        let mut meta = Vec::new();
        field(1, b"cm1", &mut meta);
        let mut label = Vec::new();
        field(1, b"app", &mut label);
        field(2, b"web", &mut label);
        field(11, &label, &mut meta);
        field(3, b"", &mut meta); // empty namespace, as Go writes it
        let mut cm = Vec::new();
        field(1, &meta, &mut cm);
        let mut entry = Vec::new();
        field(1, b"k", &mut entry);
        field(2, b"v", &mut entry);
        field(2, &entry, &mut cm);
        let v = decode(&envelope("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1", "labels": {"app": "web"}}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn replicas_zero_is_kept_and_intorstring_decodes() {
        let mut spec = Vec::new();
        spec.extend([1 << 3, 0]); // replicas: 0 (varint)
        let mut d = Vec::new();
        field(2, &spec, &mut d);
        let v = decode(&envelope("apps/v1", "Deployment", &d)).unwrap();
        assert_eq!(v["spec"]["replicas"], 0);
        // A ServicePort with targetPort as a string.
        let mut ios = Vec::new();
        ios.extend([1 << 3, 1]);
        field(3, b"http", &mut ios);
        let mut port = Vec::new();
        port.extend([3 << 3, 80]);
        field(4, &ios, &mut port);
        let mut sspec = Vec::new();
        field(1, &port, &mut sspec);
        let mut svc = Vec::new();
        field(2, &sspec, &mut svc);
        let v = decode(&envelope("v1", "Service", &svc)).unwrap();
        assert_eq!(v["spec"]["ports"][0], json!({"port": 80, "targetPort": "http"}));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert!(decode(b"nope").is_err());
        assert!(decode(b"k8s\0\x0a\xff\xff\xff").is_err());
        let mut e = envelope("v1", "ConfigMap", &[0x0a, 0x05, 0x01]);
        e.truncate(e.len() - 1);
        assert!(decode(&e).is_err());
        assert!(decode(&envelope("v1", "NoSuchKind", &[])).is_err());
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(500_000_000), "0.5s");
    }
}
