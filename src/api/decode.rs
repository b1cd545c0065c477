//! Request bodies read the way kube-apiserver's decoders read them, failing with its codes and
//! wording: a body that is not JSON/YAML/protobuf is `the object provided is unrecognized
//! (must be of type K): … (summary)` (handlers' `transformDecodeError`, with Go's
//! `encoding/json` syntax messages), an object of another kind is `BK in version "v" cannot be
//! handled as a K: …`, another version of the URL's kind is `the API version in the data (…)
//! does not match the expected API version (…)`, and duplicate fields are strict decoding
//! errors (sigs.k8s.io/json) like unknown ones.

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Value};

use super::errors::{ApiError, ApiResult};
use crate::registry::{self, validation::Cause, Resource};

/// Media types a create or update body may have (upstream's negotiation for built-in kinds;
/// custom resources have no protobuf form).
pub fn accepted_media_types(r: &Resource) -> &'static [&'static str] {
    if r.is_custom() {
        &["application/json", "application/yaml"]
    } else {
        &["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"]
    }
}

/// A 415 naming what is accepted (negotiation.NewUnsupportedMediaTypeError).
pub fn unsupported_media_type(accepted: &[&str]) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            accepted.join(", ")
        ),
    )
}

/// The start of a body for an error message: as text when it looks like a JSON object,
/// hex otherwise (handlers' `summarizeData(body, 30)`).
pub fn summarize(body: &[u8]) -> String {
    const MAX: usize = 30;
    let cut = &body[..body.len().min(MAX)];
    let more = if body.len() > MAX { " ..." } else { "" };
    match body.first() {
        None => "<empty>".into(),
        Some(b'{') => format!("{}{more}", String::from_utf8_lossy(cut)),
        Some(_) => format!("{}{more}", hex::encode(cut)),
    }
}

/// Go's reflect name of the internal type a kind decodes into (`core.ConfigMap`,
/// `apps.Deployment`), which upstream's conversion errors name.
fn internal_type(r: &Resource) -> String {
    let pkg = match &*r.group {
        "" | "events.k8s.io" => "core",
        "internal.apiserver.k8s.io" => "apiserverinternal",
        g => g.split('.').next().unwrap_or(g),
    };
    format!("{pkg}.{}", r.kind)
}

/// A body that is not an object of any kind (no kind could be read from it).
pub fn unrecognized(r: &Resource, why: &str, body: &[u8]) -> ApiError {
    ApiError::bad_request(format!(
        "the object provided is unrecognized (must be of type {}): {why} ({})",
        r.kind,
        summarize(body)
    ))
}

/// A body whose kind and version were read but that cannot become the URL's kind.
pub fn cannot_handle(r: &Resource, body_kind: &str, body_version: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("{body_kind} in version {body_version:?} cannot be handled as a {}: {why}", r.kind))
}

/// The strict decoding error of `Strict` field validation.
pub fn strict_error(r: &Resource, obj: &Value, errors: &[String]) -> ApiError {
    let (_, version) = split_api_version(obj.get("apiVersion").and_then(|v| v.as_str()).unwrap_or(""));
    let version = if version.is_empty() { r.version.to_string() } else { version.to_string() };
    cannot_handle(r, &r.kind, &version, &format!("strict decoding error: {}", errors.join(", ")))
}

fn split_api_version(av: &str) -> (&str, &str) {
    av.split_once('/').unwrap_or(("", av))
}

/// Decodes a create or update body of content type `ct` into a JSON object. Returns the object
/// and its duplicate fields as strict decoding errors (`duplicate field "data"`), which the
/// caller rejects or warns about as `fieldValidation` says.
pub fn decode_object(r: &Resource, ct: &str, body: &[u8]) -> ApiResult<(Value, Vec<String>)> {
    let base = ct.split(';').next().unwrap_or("").trim();
    let (v, dups) = match base {
        "" | "application/json" | "*/*" => {
            let v: Value = serde_json::from_slice(body).map_err(|_| {
                unrecognized(r, &format!("couldn't get version/kind; json parse error: {}", go_json_error(body)), body)
            })?;
            (v, duplicate_fields(body))
        }
        "application/yaml" | "text/yaml" => {
            let v: Value = serde_yaml::from_slice(body)
                .map_err(|e| unrecognized(r, &format!("error converting YAML to JSON: {}", yaml_error(&e)), body))?;
            (v, Vec::new())
        }
        "application/vnd.kubernetes.protobuf" if !r.is_custom() => {
            let v = super::protobuf::decode(body).map_err(|e| unrecognized(r, &e, body))?;
            (v, Vec::new())
        }
        _ => return Err(unsupported_media_type(accepted_media_types(r))),
    };
    let v = match v {
        // `null` decodes to an empty object of the URL's kind upstream.
        Value::Null => json!({}),
        Value::Object(_) => v,
        other => {
            return Err(unrecognized(
                r,
                &format!("couldn't get version/kind; json parse error: json: cannot unmarshal {} into Go value of type struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }}", go_type_name(&other)),
                body,
            ))
        }
    };
    for f in ["apiVersion", "kind"] {
        if let Some(x) = v.get(f).filter(|x| !x.is_string() && !x.is_null()) {
            return Err(unrecognized(
                r,
                &format!(
                    "couldn't get version/kind; json parse error: json: cannot unmarshal {} into Go struct field .{f} of type string",
                    go_type_name(x)
                ),
                body,
            ));
        }
    }
    Ok((v, dups))
}

/// Checks the body's apiVersion and kind against the URL's, in upstream's order: the decoder
/// first turns the body into the URL's internal type (another kind fails there, as a
/// conversion or unknown-kind error), then the handler compares the versions. Custom
/// resources decode as unstructured, so only the version is compared there and the kind is
/// left to validation (`kind: Invalid value`).
pub fn check_type(r: &Resource, obj: &Value, name: &str) -> ApiResult<()> {
    let av = obj.get("apiVersion").and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    let kind = obj.get("kind").and_then(|v| v.as_str()).filter(|s| !s.is_empty()).unwrap_or(&r.kind);
    let av = av.map(String::from).unwrap_or_else(|| r.api_version());
    let (group, version) = split_api_version(&av);
    let version_mismatch = || {
        ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            r.api_version()
        ))
    };
    if r.is_custom() {
        if av != r.api_version() {
            return Err(version_mismatch());
        }
        if kind != r.kind {
            let v = Value::String(kind.to_string());
            return Err(ApiError::invalid(r, name, &[Cause::invalid("kind", &v, &format!("must be {}", r.kind))]));
        }
        return Ok(());
    }
    if kind == r.kind && group == r.group {
        return if version == r.version { Ok(()) } else { Err(version_mismatch()) };
    }
    match registry::find_kind(group, kind) {
        Some(known) => Err(cannot_handle(
            r,
            kind,
            version,
            &format!("converting ({version}.{}) to ({}): unknown conversion", known.kind, internal_type(r)),
        )),
        None => Err(cannot_handle(
            r,
            kind,
            version,
            &format!(
                "no kind {kind:?} is registered for version {av:?} in scheme \"pkg/api/legacyscheme/scheme.go:30\""
            ),
        )),
    }
}

/// The JSON type name Go's decoder uses in `cannot unmarshal X into …`.
pub(crate) fn go_type_name(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Null => "null",
    }
}

/// A YAML syntax error as sigs.k8s.io/yaml words it (`yaml: line 2: did not find expected
/// node content`): libyaml's problem, which both parsers share, and the line.
fn yaml_error(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    let problem = text.split(" at line ").next().unwrap_or(&text);
    match e.location() {
        Some(l) => format!("yaml: line {}: {problem}", l.line()),
        None => format!("yaml: {problem}"),
    }
}

/// The first syntax error in `b` in Go's `encoding/json` words (`invalid character 'n'
/// looking for beginning of object key string`, `unexpected end of JSON input`), for bodies
/// serde_json refused.
pub fn go_json_error(b: &[u8]) -> String {
    let mut s = Scan { b, i: 0, depth: 0 };
    let r = s.value().and_then(|()| {
        s.ws();
        match s.peek() {
            None => Ok(()),
            Some(c) => Err(invalid(c, "after top-level value")),
        }
    });
    match r {
        Err(m) => m,
        // serde refused something Go accepts (a number out of range, lone surrogates...).
        Ok(()) => "invalid JSON".into(),
    }
}

const EOF_MSG: &str = "unexpected end of JSON input";
/// Deeper nesting than any real object: stop well before the stack does (Go stops at 10,000;
/// serde_json, which refused the body first, at 128).
const MAX_DEPTH: usize = 1_000;

fn quote_char(c: u8) -> String {
    match c {
        b'\'' => "'\\''".into(),
        b'"' => "'\"'".into(),
        b'\n' => "'\\n'".into(),
        b'\r' => "'\\r'".into(),
        b'\t' => "'\\t'".into(),
        c if c < 0x20 || c == 0x7f => format!("'\\x{c:02x}'"),
        c => format!("'{}'", char::from(c)),
    }
}

fn invalid(c: u8, ctx: &str) -> String {
    format!("invalid character {} {ctx}", quote_char(c))
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn next(&mut self) -> Result<u8, String> {
        let c = self.peek().ok_or(EOF_MSG)?;
        self.i += 1;
        Ok(c)
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn value(&mut self) -> Result<(), String> {
        self.ws();
        match self.next()? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => self.string(),
            b'-' => match self.next()? {
                c @ b'0'..=b'9' => self.number(c),
                c => Err(invalid(c, "in numeric literal")),
            },
            c @ b'0'..=b'9' => self.number(c),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            c => Err(invalid(c, "looking for beginning of value")),
        }
    }
    fn nest(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("exceeded max depth".into());
        }
        Ok(())
    }
    fn object(&mut self) -> Result<(), String> {
        self.nest()?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.ws();
            match self.next()? {
                b'"' => self.string()?,
                c => return Err(invalid(c, "looking for beginning of object key string")),
            }
            self.ws();
            match self.next()? {
                b':' => {}
                c => return Err(invalid(c, "after object key")),
            }
            self.value()?;
            self.ws();
            match self.next()? {
                b',' => continue,
                b'}' => {
                    self.depth -= 1;
                    return Ok(());
                }
                c => return Err(invalid(c, "after object key:value pair")),
            }
        }
    }
    fn array(&mut self) -> Result<(), String> {
        self.nest()?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.value()?;
            self.ws();
            match self.next()? {
                b',' => continue,
                b']' => {
                    self.depth -= 1;
                    return Ok(());
                }
                c => return Err(invalid(c, "after array element")),
            }
        }
    }
    fn string(&mut self) -> Result<(), String> {
        loop {
            match self.next()? {
                b'"' => return Ok(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            let c = self.next()?;
                            if !c.is_ascii_hexdigit() {
                                return Err(invalid(c, "in \\u hexadecimal character escape"));
                            }
                        }
                    }
                    c => return Err(invalid(c, "in string escape code")),
                },
                c if c < 0x20 => return Err(invalid(c, "in string literal")),
                _ => {}
            }
        }
    }
    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }
    fn number(&mut self, first: u8) -> Result<(), String> {
        if first != b'0' {
            self.digits();
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            match self.next()? {
                b'0'..=b'9' => self.digits(),
                c => return Err(invalid(c, "after decimal point in numeric literal")),
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            match self.next()? {
                b'0'..=b'9' => self.digits(),
                c => return Err(invalid(c, "in exponent of numeric literal")),
            }
        }
        Ok(())
    }
    fn literal(&mut self, word: &str) -> Result<(), String> {
        for expect in word.bytes().skip(1) {
            let c = self.next()?;
            if c != expect {
                return Err(invalid(c, &format!("in literal {word} (expecting {})", quote_char(expect))));
            }
        }
        Ok(())
    }
}

/// The paths of keys that appear twice in one JSON object (`data`, `spec.template.metadata`,
/// `spec.containers[0].name`), in document order; none when the body does not parse.
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    // serde_json's own recursion limit (128) bounds the walk; a refusal means no duplicates
    // are reported, and the body parsed already, so nothing is lost.
    if (Dups { path: String::new(), out: &mut out }).deserialize(&mut de).is_err() {
        return Vec::new();
    }
    out
}

struct Dups<'a> {
    path: String,
    out: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Dups<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Dups<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            let path = if self.path.is_empty() { k.clone() } else { format!("{}.{k}", self.path) };
            if !seen.insert(k) {
                self.out.push(path.clone());
            }
            map.next_value_seed(Dups { path, out: &mut *self.out })?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq.next_element_seed(Dups { path: format!("{}[{i}]", self.path), out: &mut *self.out })?.is_some() {
            i += 1;
        }
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm() -> &'static Resource {
        registry::find("", "v1", "configmaps").unwrap()
    }

    #[test]
    fn syntax_errors_use_gos_words() {
        assert_eq!(go_json_error(b"{nope"), "invalid character 'n' looking for beginning of object key string");
        assert_eq!(go_json_error(b"hello"), "invalid character 'h' looking for beginning of value");
        assert_eq!(go_json_error(b""), "unexpected end of JSON input");
        assert_eq!(go_json_error(b"{\"a\":1"), "unexpected end of JSON input");
        assert_eq!(go_json_error(b"{\"a\" 1}"), "invalid character '1' after object key");
        assert_eq!(go_json_error(b"{\"a\":1 \"b\":2}"), "invalid character '\"' after object key:value pair");
        assert_eq!(go_json_error(b"[1 2]"), "invalid character '2' after array element");
        assert_eq!(go_json_error(b"{} x"), "invalid character 'x' after top-level value");
        assert_eq!(go_json_error(b"tru"), "unexpected end of JSON input");
        assert_eq!(go_json_error(b"nul!"), "invalid character '!' in literal null (expecting 'l')");
        assert_eq!(go_json_error(b"\"a\nb\""), "invalid character '\\n' in string literal");
        assert_eq!(go_json_error(b"1.x"), "invalid character 'x' after decimal point in numeric literal");
        assert_eq!(go_json_error(&[b'['; 20_000]), "exceeded max depth");
    }

    #[test]
    fn undecodable_bodies_are_unrecognized_with_a_summary() {
        let e = decode_object(cm(), "application/json", b"{nope").unwrap_err();
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert_eq!(e.message, "the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: invalid character 'n' looking for beginning of object key string ({nope)");
        let e = decode_object(cm(), "application/json", b"[1]").unwrap_err();
        assert!(
            e.message.contains("json: cannot unmarshal array into Go value of type struct")
                && e.message.ends_with("(5b315d)"),
            "{}",
            e.message
        );
        let e = decode_object(cm(), "application/yaml", b"a: [\n").unwrap_err();
        assert!(
            e.message.contains("error converting YAML to JSON: yaml: line 2: did not find expected node content"),
            "{}",
            e.message
        );
        let e = decode_object(cm(), "text/plain", b"x").unwrap_err();
        assert_eq!(e.code, 415);
        assert_eq!(e.message, "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf");
        assert_eq!(summarize(&[b'x'; 40]), format!("{} ...", "78".repeat(30)));
    }

    #[test]
    fn duplicate_fields_are_found_with_their_paths() {
        let body = br#"{"data":{"a":"1","a":"2"},"data":{"b":1},"items":[{"n":1,"n":2}]}"#;
        assert_eq!(duplicate_fields(body), vec!["data.a", "data", "items[0].n"]);
        assert!(duplicate_fields(br#"{"a":{"a":1}}"#).is_empty());
    }

    #[test]
    fn other_kinds_and_versions_fail_as_upstream_words_it() {
        let deploy = registry::find("apps", "v1", "deployments").unwrap();
        let e = check_type(cm(), &json!({"apiVersion": "v1", "kind": "Pod"}), "x").unwrap_err();
        assert_eq!(e.message, "Pod in version \"v1\" cannot be handled as a ConfigMap: converting (v1.Pod) to (core.ConfigMap): unknown conversion");
        let e = check_type(deploy, &json!({"apiVersion": "apps/v1beta1", "kind": "Deployment"}), "x").unwrap_err();
        assert_eq!(
            e.message,
            "the API version in the data (apps/v1beta1) does not match the expected API version (apps/v1)"
        );
        let e = check_type(cm(), &json!({"apiVersion": "v1", "kind": "Foo"}), "x").unwrap_err();
        assert!(e.message.starts_with("Foo in version \"v1\" cannot be handled as a ConfigMap: no kind \"Foo\" is registered for version \"v1\""), "{}", e.message);
        assert!(check_type(cm(), &json!({}), "x").is_ok());
        assert!(check_type(deploy, &json!({"apiVersion": "apps/v1", "kind": "Deployment"}), "x").is_ok());
    }
}
