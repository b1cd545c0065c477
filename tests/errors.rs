//! Bad input thrown at the API over real HTTPS (and with kubectl 1.32 where it applies): each
//! case gets kube-apiserver's status code, `Status` reason and wording, and nothing answers
//! 500 or panics. The server's own objects are used read-only; what a case creates it deletes.

mod common;
use common::{require_kubectl, As, Http, TestServer};
use serde_json::{json, Value};

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const JSON: Option<&str> = Some("application/json");

/// Sends and checks code, reason and message (`message` is matched whole unless it ends
/// with `…`, then as a prefix). Returns the Status.
#[track_caller]
fn expect(
    h: &Http,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: &[u8],
    code: u16,
    reason: &str,
    message: &str,
) -> Value {
    let (got, v) = h.json(method, path, ct, body);
    assert_eq!((got, v["reason"].as_str()), (code, Some(reason)), "{method} {path}: {v}");
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["code"].as_u64(), Some(code as u64), "{v}");
    let m = v["message"].as_str().unwrap_or("");
    match message.strip_suffix('…') {
        Some(prefix) => assert!(m.starts_with(prefix), "{method} {path}:\n got {m:?}\nwant {message:?}"),
        None => assert_eq!(m, message, "{method} {path}"),
    }
    v
}

fn cm(name: &str) -> Vec<u8> {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "b"}})
        .to_string()
        .into_bytes()
}

#[test]
fn bodies_that_do_not_decode_or_are_of_another_kind_are_bad_requests() {
    let s = TestServer::start(&[]);
    let h = s.http(As::Admin);
    expect(&h, "POST", CMS, JSON, b"{nope", 400, "BadRequest", "the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: invalid character 'n' looking for beginning of object key string ({nope)");
    expect(&h, "POST", CMS, JSON, b"hello", 400, "BadRequest", "the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: invalid character 'h' looking for beginning of value (68656c6c6f)");
    expect(&h, "POST", CMS, JSON, b"", 400, "BadRequest", "the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: unexpected end of JSON input (<empty>)");
    expect(&h, "POST", CMS, JSON, b"[1,2]", 400, "BadRequest", "the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: json: cannot unmarshal array into Go value of type struct …");
    expect(&h, "POST", CMS, Some("application/yaml"), b"a: [\n", 400, "BadRequest", "the object provided is unrecognized (must be of type ConfigMap): error converting YAML to JSON: yaml: line 2: did not find expected node content (613a205b0a)");
    expect(
        &h,
        "POST",
        CMS,
        Some("application/yaml"),
        b"metadata: {name: x\n",
        400,
        "BadRequest",
        "the object provided is unrecognized (must be of type ConfigMap): error converting YAML to JSON: yaml: …",
    );
    expect(&h, "POST", CMS, JSON, br#"{"apiVersion":5}"#, 400, "BadRequest", "the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: json: cannot unmarshal number into Go struct field .apiVersion of type string ({\"apiVersion\":5})");

    // Another kind: the decoder cannot convert it into the URL's type.
    let pod = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}"#;
    expect(&h, "POST", CMS, JSON, pod, 400, "BadRequest", "Pod in version \"v1\" cannot be handled as a ConfigMap: converting (v1.Pod) to (core.ConfigMap): unknown conversion");
    expect(&h, "POST", "/apis/apps/v1/namespaces/default/deployments", JSON, &cm("x"), 400, "BadRequest", "ConfigMap in version \"v1\" cannot be handled as a Deployment: converting (v1.ConfigMap) to (apps.Deployment): unknown conversion");
    expect(&h, "POST", CMS, JSON, br#"{"apiVersion":"v1","kind":"Foo","metadata":{"name":"x"}}"#, 400, "BadRequest", "Foo in version \"v1\" cannot be handled as a ConfigMap: no kind \"Foo\" is registered for version \"v1\" in scheme \"pkg/api/legacyscheme/scheme.go:30\"");
    // The URL's kind in another version of its group: decoded, then refused by version.
    let old_deploy = br#"{"apiVersion":"apps/v1beta1","kind":"Deployment","metadata":{"name":"x"}}"#;
    expect(
        &h,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        JSON,
        old_deploy,
        400,
        "BadRequest",
        "the API version in the data (apps/v1beta1) does not match the expected API version (apps/v1)",
    );
    let hpa_v1 = br#"{"apiVersion":"autoscaling/v1","kind":"HorizontalPodAutoscaler","metadata":{"name":"x"}}"#;
    expect(
        &h,
        "POST",
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers",
        JSON,
        hpa_v1,
        400,
        "BadRequest",
        "the API version in the data (autoscaling/v1) does not match the expected API version (autoscaling/v2)",
    );
    // The same on update.
    assert_eq!(h.send("POST", CMS, JSON, &cm("audit-put")).0, 201);
    expect(&h, "PUT", &format!("{CMS}/audit-put"), JSON, pod, 400, "BadRequest", "Pod in version \"v1\" cannot be handled as a ConfigMap: converting (v1.Pod) to (core.ConfigMap): unknown conversion");
    expect(
        &h,
        "PUT",
        &format!("{CMS}/audit-put"),
        JSON,
        &cm("other"),
        400,
        "BadRequest",
        "the name of the object (other) does not match the name on the URL (audit-put)",
    );

    let other_ns = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"kube-system"}}"#;
    expect(
        &h,
        "POST",
        CMS,
        JSON,
        other_ns,
        400,
        "BadRequest",
        "the namespace of the provided object does not match the namespace sent on the request",
    );
    expect(&h, "POST", CMS, Some("text/plain"), b"x", 415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf");

    // Protobuf: no magic, a broken envelope, a truncated message.
    let pb = Some("application/vnd.kubernetes.protobuf");
    expect(&h, "POST", CMS, pb, b"hello", 400, "BadRequest", "the object provided is unrecognized (must be of type ConfigMap): provided data does not appear to be a protobuf message, expected prefix [107 56 115 0] (68656c6c6f)");
    let bodies: [&[u8]; 3] = [b"k8s\0garbage", b"k8s\0\x0a\x02\x0a", b"k8s\0\x0a\x0a\x0a\x02v1\x12\x04Pod"];
    for body in bodies {
        let msg = "the object provided is unrecognized (must be of type ConfigMap): …";
        expect(&h, "POST", CMS, pb, body, 400, "BadRequest", msg);
    }

    assert_eq!(h.send("DELETE", &format!("{CMS}/audit-put"), None, b"").0, 200);
}

#[test]
fn oversized_bodies_are_refused_at_upstreams_limit() {
    let s = TestServer::start(&[]);
    let h = s.http(As::Admin);
    // kube-apiserver's MaxRequestBodyBytes: 3 MiB.
    let limit = 3 * 1024 * 1024;
    let big = vec![b' '; limit + 1];
    expect(&h, "POST", CMS, JSON, &big, 413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728");
    expect(
        &h,
        "PATCH",
        &format!("{CMS}/x"),
        Some("application/merge-patch+json"),
        &big,
        413,
        "RequestEntityTooLarge",
        "Request entity too large: limit is 3145728",
    );
    // At the limit it is read (and then judged on its content).
    let mut at = cm("audit-at-limit");
    at.resize(limit, b' ');
    assert_eq!(h.send("POST", CMS, JSON, &at).0, 201);
    assert_eq!(h.send("DELETE", &format!("{CMS}/audit-at-limit"), None, b"").0, 200);
}

#[test]
fn unknown_and_duplicate_fields_follow_field_validation() {
    let s = TestServer::start(&[]);
    let h = s.http(As::Admin);
    let unknown = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"foo":1}"#;
    expect(
        &h,
        "POST",
        &format!("{CMS}?fieldValidation=Strict"),
        JSON,
        unknown,
        400,
        "BadRequest",
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"foo\"",
    );
    let nested = br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"foo":1,"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"i","bar":2}]}}}}"#;
    expect(&h, "POST", "/apis/apps/v1/namespaces/default/deployments?fieldValidation=Strict", JSON, nested, 400, "BadRequest", "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.foo\", unknown field \"spec.template.spec.containers[0].bar\"");
    let dup = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"audit-dup","name":"audit-dup"},"data":{"a":"1"},"data":{"b":"2"},"foo":1}"#;
    expect(&h, "POST", &format!("{CMS}?fieldValidation=Strict"), JSON, dup, 400, "BadRequest", "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: duplicate field \"metadata.name\", duplicate field \"data\", unknown field \"foo\"");
    // Warn (the default): accepted, the last value kept, each problem a warning.
    let (code, text) = h.send("POST", &format!("{CMS}?dryRun=All"), JSON, dup);
    assert_eq!(code, 201, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"], json!({"b": "2"}));
    // Ignore: accepted quietly.
    assert_eq!(h.send("POST", &format!("{CMS}?dryRun=All&fieldValidation=Ignore"), JSON, dup).0, 201);
    expect(&h, "POST", &format!("{CMS}?fieldValidation=Bogus"), JSON, &cm("x"), 422, "Invalid", "CreateOptions.meta.k8s.io \"\" is invalid: fieldValidation: Unsupported value: \"Bogus\": supported values: \"\", \"Ignore\", \"Strict\", \"Warn\"");
    expect(&h, "POST", &format!("{CMS}?dryRun=Bogus"), JSON, &cm("x"), 422, "Invalid", "CreateOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{\"Bogus\"}: supported values: \"All\"");
    expect(&h, "DELETE", &format!("{CMS}/x?dryRun=Bogus"), None, b"", 422, "Invalid", "DeleteOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{\"Bogus\"}: supported values: \"All\"");
    expect(&h, "PATCH", &format!("{CMS}/x?dryRun=Bogus"), Some("application/merge-patch+json"), b"{}", 422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{\"Bogus\"}: supported values: \"All\"");
    assert_eq!(h.send("GET", &format!("{CMS}/audit-dup"), None, b"").0, 404, "dry runs store nothing");
}

#[test]
fn names_breaking_their_kinds_rule_are_invalid_with_causes() {
    let s = TestServer::start(&[]);
    let h = s.http(As::Admin);
    let subdomain = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    let label = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
    let v = expect(
        &h,
        "POST",
        CMS,
        JSON,
        &cm("Bad_Name"),
        422,
        "Invalid",
        &format!("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": {subdomain}"),
    );
    assert_eq!(
        v["details"]["causes"],
        json!([{"reason": "FieldValueInvalid", "message": format!("Invalid value: \"Bad_Name\": {subdomain}"), "field": "metadata.name"}])
    );
    assert_eq!((v["details"]["name"].as_str(), v["details"]["kind"].as_str()), (Some("Bad_Name"), Some("ConfigMap")));
    let long = "a".repeat(254);
    expect(&h, "POST", CMS, JSON, &cm(&long), 422, "Invalid", &format!("ConfigMap \"{long}\" is invalid: metadata.name: Invalid value: \"{long}\": must be no more than 253 characters"));
    // A subdomain's parts have no length rule of their own.
    let long_part = format!("{}.b", "a".repeat(70));
    assert_eq!(h.send("POST", &format!("{CMS}?dryRun=All"), JSON, &cm(&long_part)).0, 201);
    let ns =
        |n: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}).to_string().into_bytes();
    expect(
        &h,
        "POST",
        "/api/v1/namespaces",
        JSON,
        &ns("a.b"),
        422,
        "Invalid",
        &format!("Namespace \"a.b\" is invalid: metadata.name: Invalid value: \"a.b\": {label}"),
    );
    let long_ns = "A".repeat(64);
    let v = expect(&h, "POST", "/api/v1/namespaces", JSON, &ns(&long_ns), 422, "Invalid", &format!("Namespace \"{long_ns}\" is invalid: [metadata.name: Invalid value: \"{long_ns}\": must be no more than 63 characters, metadata.name: Invalid value: \"{long_ns}\": {label}]"));
    assert_eq!(v["details"]["causes"].as_array().map(|c| c.len()), Some(2));
    let svc =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1abc"}, "spec": {"ports": [{"port": 80}]}});
    expect(&h, "POST", "/api/v1/namespaces/default/services", JSON, svc.to_string().as_bytes(), 422, "Invalid", "Service \"1abc\" is invalid: metadata.name: Invalid value: \"1abc\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')");
    // Path segment names (RBAC): `..`, `/`, `%`; upper case is fine.
    let cr = |n: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": n}})
            .to_string()
            .into_bytes()
    };
    let crs = "/apis/rbac.authorization.k8s.io/v1/clusterroles";
    expect(&h, "POST", crs, JSON, &cr(".."), 422, "Invalid", "ClusterRole.rbac.authorization.k8s.io \"..\" is invalid: metadata.name: Invalid value: \"..\": may not be '..'");
    expect(&h, "POST", crs, JSON, &cr("a/b%c"), 422, "Invalid", "ClusterRole.rbac.authorization.k8s.io \"a/b%c\" is invalid: [metadata.name: Invalid value: \"a/b%c\": may not contain '/', metadata.name: Invalid value: \"a/b%c\": may not contain '%']");
    assert_eq!(h.send("POST", &format!("{crs}?dryRun=All"), JSON, &cr("Upper:Case")).0, 201);
    expect(
        &h,
        "POST",
        CMS,
        JSON,
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#,
        422,
        "Invalid",
        "ConfigMap \"\" is invalid: metadata.name: Required value: name or generateName is required",
    );
}

#[test]
fn patches_that_are_malformed_or_do_not_apply() {
    let s = TestServer::start(&[]);
    let h = s.http(As::Admin);
    assert_eq!(h.send("POST", CMS, JSON, &cm("audit-patch")).0, 201);
    let p = format!("{CMS}/audit-patch");
    expect(&h, "PATCH", &p, Some("application/foo+json"), b"{}", 415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml");
    expect(
        &h,
        "PATCH",
        &p,
        JSON,
        b"{}",
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: …",
    );
    let jp = Some("application/json-patch+json");
    expect(
        &h,
        "PATCH",
        &p,
        jp,
        br#"{"op":"test"}"#,
        400,
        "BadRequest",
        "error decoding patch: json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp",
    );
    expect(
        &h,
        "PATCH",
        &p,
        jp,
        b"[1]",
        400,
        "BadRequest",
        "error decoding patch: json: cannot unmarshal number into Go value of type handlers.jsonPatchOp",
    );
    expect(&h, "PATCH", &p, jp, b"[{", 400, "BadRequest", "error decoding patch: unexpected end of JSON input");
    // Operations that do not apply: upstream's generic 422, the reason in the cause.
    let v = expect(
        &h,
        "PATCH",
        &p,
        jp,
        br#"[{"op":"remove","path":"/data/zzz"}]"#,
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
    );
    assert!(v["details"]["causes"][0]["message"].as_str().is_some_and(|m| m.contains("/data/zzz")), "{v}");
    expect(
        &h,
        "PATCH",
        &p,
        jp,
        br#"[{"op":"test","path":"/data/a","value":"not-b"}]"#,
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
    );
    expect(
        &h,
        "PATCH",
        &p,
        jp,
        br#"[{"op":"frob","path":"/data/a"}]"#,
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
    );
    let ops: Vec<Value> = (0..10_001).map(|_| json!({"op": "test", "path": "/data/a", "value": "b"})).collect();
    expect(
        &h,
        "PATCH",
        &p,
        jp,
        Value::Array(ops).to_string().as_bytes(),
        413,
        "RequestEntityTooLarge",
        "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001",
    );
    let mp = Some("application/merge-patch+json");
    expect(
        &h,
        "PATCH",
        &p,
        mp,
        b"[1]",
        400,
        "BadRequest",
        "error decoding patch: json: cannot unmarshal array into Go value of type map[string]interface {}",
    );
    expect(
        &h,
        "PATCH",
        &p,
        mp,
        b"\"x\"",
        400,
        "BadRequest",
        "error decoding patch: json: cannot unmarshal string into Go value of type map[string]interface {}",
    );
    expect(
        &h,
        "PATCH",
        &p,
        mp,
        b"{x",
        400,
        "BadRequest",
        "error decoding patch: invalid character 'x' looking for beginning of object key string",
    );
    expect(&h, "PATCH", &p, mp, b"null", 400, "BadRequest", "Invalid JSON Patch");
    let smp = Some("application/strategic-merge-patch+json");
    expect(
        &h,
        "PATCH",
        &p,
        smp,
        b"[1]",
        400,
        "BadRequest",
        "json: cannot unmarshal array into Go value of type map[string]interface {}",
    );
    let apply = "application/apply-patch+yaml";
    expect(
        &h,
        "PATCH",
        &format!("{p}?fieldManager=t"),
        Some(apply),
        b"a: [\n",
        400,
        "BadRequest",
        "error decoding YAML: error converting YAML to JSON: yaml: line 2: did not find expected node content",
    );
    expect(
        &h,
        "PATCH",
        &format!("{p}?fieldManager=t"),
        Some(apply),
        b"- a\n",
        400,
        "BadRequest",
        "error decoding YAML: json: cannot unmarshal array into Go value of type map[string]interface {}",
    );
    // A patch changing the kind or namespace.
    expect(&h, "PATCH", &p, mp, br#"{"kind":"Pod"}"#, 400, "BadRequest", "Pod in version \"v1\" cannot be handled as a ConfigMap: converting (v1.Pod) to (core.ConfigMap): unknown conversion");
    expect(
        &h,
        "PATCH",
        &p,
        mp,
        br#"{"metadata":{"namespace":"kube-system"}}"#,
        400,
        "BadRequest",
        "the namespace of the provided object does not match the namespace sent on the request",
    );
    // The object is untouched.
    let (code, v) = h.json("GET", &p, None, b"");
    assert_eq!((code, &v["data"]), (200, &json!({"a": "b"})));
    assert_eq!(h.send("DELETE", &p, None, b"").0, 200);
}

#[test]
fn list_and_watch_parameters_are_checked() {
    let s = TestServer::start(&[]);
    let h = s.http(As::Admin);
    expect(
        &h,
        "GET",
        &format!("{CMS}?resourceVersion=abc"),
        None,
        b"",
        400,
        "BadRequest",
        "resourceVersion: Invalid value: \"abc\": strconv.ParseUint: parsing \"abc\": invalid syntax",
    );
    expect(
        &h,
        "GET",
        &format!("{CMS}?watch=1&resourceVersion=abc"),
        None,
        b"",
        400,
        "BadRequest",
        "resourceVersion: Invalid value: \"abc\": strconv.ParseUint: parsing \"abc\": invalid syntax",
    );
    expect(
        &h,
        "GET",
        &format!("{CMS}?watch=1&resourceVersion=-5"),
        None,
        b"",
        400,
        "BadRequest",
        "resourceVersion: Invalid value: \"-5\": …",
    );
    expect(
        &h,
        "GET",
        &format!("{CMS}?labelSelector=a%20b"),
        None,
        b"",
        400,
        "BadRequest",
        "unable to parse requirement: …",
    );
    expect(
        &h,
        "GET",
        &format!("{CMS}?labelSelector=x%20in%20(a"),
        None,
        b"",
        400,
        "BadRequest",
        "unable to parse requirement: …",
    );
    expect(
        &h,
        "GET",
        &format!("{CMS}?fieldSelector=spec.foo%3Dx"),
        None,
        b"",
        400,
        "BadRequest",
        "field label not supported: spec.foo",
    );
    expect(
        &h,
        "GET",
        &format!("{CMS}?fieldSelector=foo"),
        None,
        b"",
        400,
        "BadRequest",
        "invalid selector: 'foo'; can't understand 'foo'",
    );
    expect(
        &h,
        "GET",
        &format!("{CMS}?watch=1&fieldSelector=foo"),
        None,
        b"",
        400,
        "BadRequest",
        "invalid selector: 'foo'; can't understand 'foo'",
    );
    expect(
        &h,
        "GET",
        &format!("{CMS}?limit=abc"),
        None,
        b"",
        400,
        "BadRequest",
        "strconv.ParseInt: parsing \"abc\": invalid syntax",
    );
    expect(
        &h,
        "GET",
        &format!("{CMS}?limit=99999999999999999999"),
        None,
        b"",
        400,
        "BadRequest",
        "strconv.ParseInt: parsing \"99999999999999999999\": value out of range",
    );
    // A negative limit is no limit, as upstream.
    let (code, v) = h.json("GET", "/api/v1/namespaces?limit=-1", None, b"");
    assert_eq!(code, 200, "{v}");
    assert!(v["metadata"].get("continue").is_none() && !v["items"].as_array().unwrap().is_empty(), "{v}");
    expect(
        &h,
        "GET",
        &format!("{CMS}?limit=1&continue=zzz"),
        None,
        b"",
        400,
        "BadRequest",
        "invalid continue token: continue key is not valid: …",
    );
    expect(
        &h,
        "GET",
        &format!("{CMS}?limit=1&continue=%21%21"),
        None,
        b"",
        400,
        "BadRequest",
        "invalid continue token: continue key is not valid: …",
    );
    // base64 of {"rv":0,"start":"x"}.
    expect(&h, "GET", &format!("{CMS}?limit=1&continue=eyJydiI6MCwic3RhcnQiOiJ4In0"), None, b"", 400, "BadRequest", "invalid continue token: continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)");
    expect(
        &h,
        "GET",
        &format!("{CMS}?limit=1&continue=eyJydiI6MSwic3RhcnQiOiJ4In0&resourceVersion=5"),
        None,
        b"",
        400,
        "BadRequest",
        "specifying resource version is not allowed when using continue",
    );
    expect(&h, "GET", &format!("{CMS}?resourceVersionMatch=NotOlderThan"), None, b"", 422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided");
    expect(&h, "GET", &format!("{CMS}?resourceVersion=1&resourceVersionMatch=Bogus"), None, b"", 422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Unsupported value: \"Bogus\": supported values: \"Exact\", \"NotOlderThan\", \"\"");
    // A valid continue token from a real page works.
    let (_, page) = h.json("GET", &format!("{CMS}?limit=1"), None, b"");
    if let Some(c) = page["metadata"]["continue"].as_str() {
        assert_eq!(h.send("GET", &format!("{CMS}?limit=1&continue={c}"), None, b"").0, 200);
    }
}

#[test]
fn kubectl_reports_bad_input_with_upstreams_words() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    // Typed create sends protobuf; the name rule still applies.
    let (ok, _, err) = s.kubectl(&["create", "configmap", "Bad_Name"]);
    assert!(!ok && err.contains("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{err}");
    let (ok, _, err) = s.kubectl(&["create", "namespace", "a.b"]);
    assert!(!ok && err.contains("Namespace \"a.b\" is invalid") && err.contains("RFC 1123 label"), "{err}");
    // `create -f` is Strict by default.
    let unknown = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: audit-k\nfoo: 1\n";
    let (ok, _, err) = s.kubectl_stdin(&["create", "-f", "-"], Some(unknown));
    assert!(!ok && err.contains("Error from server (BadRequest): error when creating \"STDIN\": ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"foo\""), "{err}");
    let (ok, _, err) = s.kubectl(&["get", "configmaps", "-l", "a b"]);
    assert!(!ok && err.contains("unable to parse requirement"), "{err}");
    let (ok, _, err) = s.kubectl(&["get", "configmaps", "--field-selector", "spec.foo=x"]);
    assert!(!ok && err.contains("field label not supported: spec.foo"), "{err}");
    let (ok, _, err) = s.kubectl(&["create", "configmap", "audit-k", "--dry-run=server", "-o", "name"]);
    assert!(ok, "{err}");
    let (ok, _, err) = s.kubectl(&[
        "patch",
        "configmap",
        "kube-root-ca.crt",
        "--type=json",
        "-p",
        "[{\"op\":\"test\",\"path\":\"/data/nope\",\"value\":\"x\"}]",
    ]);
    // kubectl prints the Status's cause (upstream sends none, so it prints the bare message).
    assert!(!ok && err.contains("The request is invalid: patch: operation '/0' failed at path '/data/nope'"), "{err}");
    let (ok, _, err) = s.kubectl(&["patch", "configmap", "kube-root-ca.crt", "--type=merge", "-p", "[1]"]);
    assert!(!ok && err.contains("cannot unmarshal array"), "{err}");
}
