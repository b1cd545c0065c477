//! Stored objects served without building a JSON tree. Reads and watches of built-in kinds
//! need only one change to the stored bytes, `metadata.resourceVersion`; parsing each object into
//! a `serde_json::Value` and printing it again cost most of a 5,000-item list and most of the
//! CPU of a watch event. Here the object is split into its top-level and metadata members as
//! borrowed raw JSON (validated, not allocated), and written back with the resourceVersion set.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// A JSON object's members in order, each value left as raw JSON.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// A member name, borrowed unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A stored object split into its members and its metadata's members.
pub struct RawObject<'a> {
    top: Vec<(Cow<'a, str>, &'a RawValue)>,
    metadata: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RawObject<'a> {
    /// `None` when `bytes` is not a JSON object (callers then take the `Value` path, which
    /// reports the error).
    pub fn parse(bytes: &'a [u8]) -> Option<RawObject<'a>> {
        let top: Members<'a> = serde_json::from_slice(bytes).ok()?;
        let metadata = match top.0.iter().find(|(k, _)| k == "metadata") {
            Some((_, raw)) => serde_json::from_str::<Members<'a>>(raw.get()).ok()?.0,
            None => vec![],
        };
        Some(RawObject { top: top.0, metadata })
    }

    fn meta(&self, name: &str) -> Option<&'a RawValue> {
        self.metadata.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// Whether `metadata` has member `name` with a value other than `null`.
    pub fn meta_is_set(&self, name: &str) -> bool {
        self.meta(name).is_some_and(|raw| raw.get() != "null")
    }

    /// `metadata.labels`, parsed (for label selectors).
    pub fn labels(&self) -> Option<Value> {
        self.meta("labels").and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    /// A string member of `metadata` (`name`, `namespace`).
    pub fn meta_str(&self, name: &str) -> Option<String> {
        self.meta(name).and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    /// Appends the object to `out` with `metadata.resourceVersion` set to `rev` (the stored
    /// one, if any, dropped).
    pub fn write_with_rv(&self, rev: i64, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut wrote_meta = false;
        for (i, (k, v)) in self.top.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_key(out, k);
            if k == "metadata" && !wrote_meta {
                wrote_meta = true;
                self.write_metadata(rev, out);
            } else {
                out.extend_from_slice(v.get().as_bytes());
            }
        }
        if !wrote_meta {
            if !self.top.is_empty() {
                out.push(b',');
            }
            write_key(out, "metadata");
            self.write_metadata(rev, out);
        }
        out.push(b'}');
    }

    /// Appends the object as a `meta.k8s.io/v1` PartialObjectMetadata (its metadata only, with
    /// `resourceVersion` set to `rev`), what `as=PartialObjectMetadata` asks for.
    pub fn write_partial_with_rv(&self, rev: i64, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#);
        self.write_metadata(rev, out);
        out.push(b'}');
    }

    /// [`RawObject::write_partial_with_rv`] when `partial`, else [`RawObject::write_with_rv`].
    pub fn write_served(&self, rev: i64, partial: bool, out: &mut Vec<u8>) {
        if partial {
            self.write_partial_with_rv(rev, out)
        } else {
            self.write_with_rv(rev, out)
        }
    }

    fn write_metadata(&self, rev: i64, out: &mut Vec<u8>) {
        out.push(b'{');
        for (mk, mv) in self.metadata.iter().filter(|(mk, _)| mk != "resourceVersion") {
            write_key(out, mk);
            out.extend_from_slice(mv.get().as_bytes());
            out.push(b',');
        }
        out.extend_from_slice(format!("\"resourceVersion\":\"{rev}\"}}").as_bytes());
    }
}

fn write_key(out: &mut Vec<u8>, k: &str) {
    // A str always serializes.
    let _ = serde_json::to_writer(&mut *out, k);
    out.push(b':');
}

/// `bytes` with `metadata.resourceVersion` set to `rev`, or `None` if they are not an object.
pub fn with_rv(bytes: &[u8], rev: i64) -> Option<Vec<u8>> {
    let o = RawObject::parse(bytes)?;
    let mut out = Vec::with_capacity(bytes.len() + 32);
    o.write_with_rv(rev, &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(v: Value, rev: i64) -> Value {
        let bytes = serde_json::to_vec(&v).expect("serializes");
        serde_json::from_slice(&with_rv(&bytes, rev).expect("an object")).expect("valid JSON")
    }

    #[test]
    fn the_resource_version_is_set_and_everything_else_kept() {
        let v = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "labels": {"x": "y"}, "resourceVersion": "7"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "template": {"metadata": {"name": "inner"}}},
            "status": {}});
        let out = roundtrip(v.clone(), 42);
        let mut want = v;
        want["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(out, want);
        // The nested metadata of a template is not touched.
        assert_eq!(out["spec"]["template"]["metadata"], json!({"name": "inner"}));
    }

    #[test]
    fn empty_or_missing_metadata_gets_one() {
        assert_eq!(
            roundtrip(json!({"kind": "X", "metadata": {}}), 3),
            json!({"kind": "X", "metadata": {"resourceVersion": "3"}})
        );
        assert_eq!(roundtrip(json!({"kind": "X"}), 3), json!({"kind": "X", "metadata": {"resourceVersion": "3"}}));
        assert_eq!(roundtrip(json!({}), 3), json!({"metadata": {"resourceVersion": "3"}}));
    }

    #[test]
    fn escaped_names_and_strings_survive() {
        let v = json!({"metadata": {"name": "a", "annotations": {"q\"uote": "line\nbreak \\ \u{e9}"}}, "data": {"k\\": "\"}"}});
        let out = roundtrip(v.clone(), 1);
        assert_eq!(out["metadata"]["annotations"], v["metadata"]["annotations"]);
        assert_eq!(out["data"], v["data"]);
    }

    #[test]
    fn labels_and_names_are_read_without_the_rest() {
        let bytes = br#"{"metadata":{"name":"n1","namespace":"ns","labels":{"app":"web"}},"spec":{"huge":[1,2,3]}}"#;
        let o = RawObject::parse(bytes).expect("object");
        assert_eq!(o.labels(), Some(json!({"app": "web"})));
        assert_eq!(o.meta_str("name").as_deref(), Some("n1"));
        assert_eq!(o.meta_str("namespace").as_deref(), Some("ns"));
        assert!(o.meta_is_set("labels") && !o.meta_is_set("deletionTimestamp"));
        let o = RawObject::parse(br#"{"metadata":{"deletionTimestamp":null}}"#).expect("object");
        assert!(!o.meta_is_set("deletionTimestamp"));
    }

    #[test]
    fn partial_metadata_is_the_metadata_alone_with_the_version_set() {
        let v = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "resourceVersion": "7", "labels": {"x": "y"}},
            "data": {"k": "v"}});
        let bytes = serde_json::to_vec(&v).expect("serializes");
        let mut out = Vec::new();
        RawObject::parse(&bytes).expect("object").write_partial_with_rv(9, &mut out);
        let mut want = crate::api::handlers::partial(&v);
        want["metadata"]["resourceVersion"] = json!("9");
        assert_eq!(serde_json::from_slice::<Value>(&out).expect("valid JSON"), want);
        out.clear();
        RawObject::parse(b"{\"kind\":\"X\"}").expect("object").write_partial_with_rv(2, &mut out);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).expect("valid JSON"),
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "2"}})
        );
    }

    #[test]
    fn what_is_not_an_object_is_refused() {
        assert!(with_rv(b"[1,2]", 1).is_none());
        assert!(with_rv(b"{\"metadata\": 5}", 1).is_none());
        assert!(with_rv(b"{\"a\":", 1).is_none());
        assert!(with_rv(b"", 1).is_none());
    }
}
