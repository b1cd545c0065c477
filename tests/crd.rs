//! CustomResourceDefinitions driven by real kubectl 1.32 against an in-process server: a CRD
//! with two versions, short names, categories, printer columns and status/scale subresources;
//! custom resources created, validated, pruned, defaulted, explained, scaled, watched, and
//! removed with their CRD.

mod common;
use common::{kubectl_path, require_kubectl, TestServer};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names:
    plural: crontabs
    singular: crontab
    kind: CronTab
    shortNames: [ct]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: CronTabSpec says when the job runs and with which image.
            required: [cronSpec]
            properties:
              cronSpec:
                type: string
                description: The schedule in cron format.
                pattern: '^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$'
              image:
                type: string
              replicas:
                type: integer
                minimum: 0
                default: 1
              mode:
                type: string
                enum: [fast, slow]
                default: slow
          status:
            type: object
            properties:
              replicas:
                type: integer
              selector:
                type: string
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.selector
    additionalPrinterColumns:
    - name: Spec
      type: string
      jsonPath: .spec.cronSpec
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

const CR: &str = r#"
apiVersion: stable.example.com/v1
kind: CronTab
metadata:
  name: my-cron
spec:
  cronSpec: "* * * * */5"
  image: my-awesome-cron-image
"#;

/// kubectl with its own discovery cache, so no other test's cache leaks in.
fn k(s: &TestServer, args: &[&str]) -> (bool, String, String) {
    k_stdin(s, args, None)
}

fn k_stdin(s: &TestServer, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let cache = s.dir.path().join("kcache");
    let cache_arg = format!("--cache-dir={}", cache.display());
    let mut all = vec![cache_arg.as_str()];
    all.extend_from_slice(args);
    s.kubectl_stdin(&all, stdin)
}

fn ok(s: &TestServer, args: &[&str]) -> String {
    let (ok, out, err) = k(s, args);
    assert!(ok, "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}");
    out
}

fn ok_stdin(s: &TestServer, args: &[&str], stdin: &str) -> String {
    let (ok, out, err) = k_stdin(s, args, Some(stdin));
    assert!(ok, "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}");
    out
}

/// Retries `f` until it returns Some (the registry follows CRDs through a store watch).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn install_crd(s: &TestServer) {
    let out = ok_stdin(s, &["apply", "-f", "-"], CRD);
    assert!(out.contains("customresourcedefinition.apiextensions.k8s.io/crontabs.stable.example.com"), "{out}");
    ok(s, &["wait", "--for=condition=Established", "crd/crontabs.stable.example.com", "--timeout=20s"]);
    eventually("crontabs in api-resources", || {
        let (_, out, _) = k(s, &["api-resources", "--api-group=stable.example.com"]);
        out.contains("crontabs").then_some(())
    });
}

#[test]
fn a_crd_is_served_validated_and_cleaned_up_like_upstream() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    install_crd(&s);

    // Status set by the server.
    let st = ok(
        &s,
        &[
            "get",
            "crd",
            "crontabs.stable.example.com",
            "-o",
            "jsonpath={.status.acceptedNames.kind} {.status.storedVersions} {.status.conditions[?(@.type==\"NamesAccepted\")].status}",
        ],
    );
    assert_eq!(st, "CronTab [\"v1\"] True");

    // Discovery: short name and category, both versions.
    let res = ok(&s, &["api-resources", "--api-group=stable.example.com", "-o", "wide"]);
    let line = res.lines().find(|l| l.starts_with("crontabs")).unwrap_or_else(|| panic!("{res}"));
    for want in ["ct", "stable.example.com/v1", "true", "CronTab", "all"] {
        assert!(line.split_whitespace().any(|w| w == want), "api-resources line lacks {want}: {line}");
    }
    let groups = ok(&s, &["get", "--raw", "/apis/stable.example.com"]);
    assert!(groups.contains("\"preferredVersion\":{\"groupVersion\":\"stable.example.com/v1\""), "{groups}");
    assert!(ok(&s, &["get", "--raw", "/apis/stable.example.com/v1beta1"]).contains("\"name\":\"crontabs\""));

    // Create through apply (YAML) and create; defaults are filled in.
    assert!(ok_stdin(&s, &["apply", "-f", "-"], CR).contains("crontab.stable.example.com/my-cron created"));
    assert!(ok_stdin(&s, &["apply", "-f", "-"], CR).contains("crontab.stable.example.com/my-cron unchanged"));
    let second = CR.replace("my-cron", "other-cron").replace("stable.example.com/v1", "stable.example.com/v1beta1");
    assert!(ok_stdin(&s, &["create", "-f", "-"], &second).contains("crontab.stable.example.com/other-cron created"));
    assert_eq!(
        ok(&s, &["get", "ct", "my-cron", "-o", "jsonpath={.spec.replicas} {.spec.mode} {.metadata.generation}"]),
        "1 slow 1"
    );
    // Stored in the storage version, served in every served version (conversion None).
    assert_eq!(
        ok(&s, &["get", "crontabs.v1beta1.stable.example.com", "my-cron", "-o", "jsonpath={.apiVersion}"]),
        "stable.example.com/v1beta1"
    );
    assert_eq!(ok(&s, &["get", "ct", "other-cron", "-o", "jsonpath={.apiVersion}"]), "stable.example.com/v1");

    // Printer columns through the short name, and `get all` through the category.
    let table = ok(&s, &["get", "ct"]);
    let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "SPEC", "REPLICAS", "AGE"], "{table}");
    let row = table.lines().find(|l| l.starts_with("my-cron")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("* * * * */5") && row.split_whitespace().any(|w| w == "1"), "{row}");
    assert!(ok(&s, &["get", "all"]).contains("crontab.stable.example.com/my-cron"));

    // A wrong type is a 422 with the field cause in upstream form.
    let bad = CR.replace("my-cron", "bad-cron").replace("image: my-awesome-cron-image", "replicas: three");
    let (okk, _, err) = k_stdin(&s, &["apply", "-f", "-"], Some(&bad));
    assert!(!okk, "an invalid CronTab was accepted");
    assert!(
        err.contains(
            r#"spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string""#
        ),
        "{err}"
    );
    let bad = CR.replace("my-cron", "bad-cron").replace("\"* * * * */5\"", "nonsense");
    let (_, _, err) = k_stdin(&s, &["create", "-f", "-"], Some(&bad));
    assert!(err.contains("spec.cronSpec in body should match"), "{err}");

    // Unknown fields: kubectl's default (Strict) refuses, --validate=false prunes.
    let extra = CR.replace("my-cron", "extra-cron").replace("image: my-awesome-cron-image", "image: x\n  bogus: 1");
    let (okk, _, err) = k_stdin(&s, &["create", "-f", "-"], Some(&extra));
    assert!(!okk && err.contains("unknown field \"spec.bogus\""), "{err}");
    ok_stdin(&s, &["create", "--validate=false", "-f", "-"], &extra);
    assert!(!ok(&s, &["get", "ct", "extra-cron", "-o", "jsonpath={.spec}"]).contains("bogus"));
    // Strategic merge patch has no meaning for custom resources.
    let (okk, _, err) = k(&s, &["patch", "ct", "extra-cron", "--type=strategic", "-p", "{\"spec\":{\"image\":\"y\"}}"]);
    assert!(!okk && err.contains("UnsupportedMediaType") || err.contains("unknown format"), "{err}");

    // Explain reads the CRD's schema from /openapi.
    let ex = ok(&s, &["explain", "ct.spec"]);
    assert!(ex.contains("cronSpec") && ex.contains("The schedule in cron format."), "{ex}");

    // Watch sees the changes that follow.
    let kubectl = kubectl_path().expect("kubectl");
    let mut watch = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .arg(format!("--cache-dir={}", s.dir.path().join("kcache").display()))
        .args(["get", "ct", "my-cron", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    std::thread::sleep(Duration::from_secs(1));

    // Scale through the scale subresource; status through the status subresource.
    ok(&s, &["scale", "ct", "my-cron", "--replicas=3"]);
    assert_eq!(ok(&s, &["get", "ct", "my-cron", "-o", "jsonpath={.spec.replicas} {.metadata.generation}"]), "3 2");
    ok(
        &s,
        &[
            "patch",
            "ct",
            "my-cron",
            "--subresource=status",
            "--type=merge",
            "-p",
            "{\"status\":{\"replicas\":3,\"selector\":\"app=cron\"}}",
        ],
    );
    let scale = ok(&s, &["get", "--raw", "/apis/stable.example.com/v1/namespaces/default/crontabs/my-cron/scale"]);
    assert!(scale.contains("\"selector\":\"app=cron\"") && scale.contains("\"replicas\":3"), "{scale}");
    // The main resource ignores status, and a status write does not bump generation.
    ok(&s, &["patch", "ct", "my-cron", "--type=merge", "-p", "{\"status\":{\"replicas\":9}}"]);
    assert_eq!(ok(&s, &["get", "ct", "my-cron", "-o", "jsonpath={.status.replicas} {.metadata.generation}"]), "3 2");
    // JSON patch works on the main resource.
    ok(
        &s,
        &[
            "patch",
            "ct",
            "my-cron",
            "--type=json",
            "-p",
            "[{\"op\":\"replace\",\"path\":\"/spec/mode\",\"value\":\"fast\"}]",
        ],
    );
    assert_eq!(ok(&s, &["get", "ct", "my-cron", "-o", "jsonpath={.spec.mode}"]), "fast");

    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let mut seen = String::new();
    if let Some(mut out) = watch.stdout.take() {
        let _ = out.read_to_string(&mut seen);
    }
    let _ = watch.wait();
    assert!(seen.contains("ADDED") && seen.contains("MODIFIED"), "watch output:\n{seen}");
    // Rows carry the printer columns: EVENT NAME SPEC REPLICAS AGE.
    assert!(
        seen.lines()
            .any(|l| l.starts_with("MODIFIED") && l.contains("my-cron") && l.split_whitespace().any(|w| w == "3")),
        "{seen}"
    );

    // Selectors and deletecollection.
    ok(&s, &["label", "ct", "other-cron", "tier=x"]);
    assert_eq!(ok(&s, &["get", "ct", "-l", "tier=x", "-o", "name"]).trim(), "crontab.stable.example.com/other-cron");
    assert_eq!(
        ok(&s, &["get", "ct", "--field-selector", "metadata.name=my-cron", "-o", "name"]).trim(),
        "crontab.stable.example.com/my-cron"
    );

    // Server-side apply records its manager; deletecollection honours the label selector.
    let ssa = CR.replace("my-cron", "ssa-cron");
    assert!(ok_stdin(&s, &["apply", "--server-side", "-f", "-"], &ssa).contains("serverside-applied"));
    let managers = ok(
        &s,
        &["get", "ct", "ssa-cron", "--show-managed-fields", "-o", "jsonpath={.metadata.managedFields[*].manager}"],
    );
    assert!(managers.contains("kubectl"), "{managers}");
    ok(&s, &["label", "ct", "ssa-cron", "tier=x"]);
    ok(&s, &["delete", "--raw", "/apis/stable.example.com/v1/namespaces/default/crontabs?labelSelector=tier%3Dx"]);
    let left = ok(&s, &["get", "ct", "-o", "name"]);
    assert!(left.contains("my-cron") && !left.contains("ssa-cron") && !left.contains("other-cron"), "{left}");

    // Deleting the CRD deletes its objects, then the CRD.
    ok(&s, &["delete", "crd", "crontabs.stable.example.com", "--timeout=30s"]);
    eventually("the CRD to go", || {
        let (_, _, err) = k(&s, &["get", "crd", "crontabs.stable.example.com"]);
        err.contains("NotFound").then_some(())
    });
    install_crd(&s);
    eventually("a fresh CRD with no objects", || {
        let (okk, out, err) = k(&s, &["get", "ct", "-A", "-o", "name"]);
        (okk && out.trim().is_empty() && !err.contains("error")).then_some(())
    });
    ok(&s, &["delete", "crd", "crontabs.stable.example.com"]);
}

#[test]
fn crd_definitions_are_validated_and_name_conflicts_are_reported() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    // Name must be <plural>.<group>; exactly one storage version; a schema is required.
    let wrong = CRD.replace("name: crontabs.stable.example.com", "name: wrong.stable.example.com");
    let (okk, _, err) = k_stdin(&s, &["create", "-f", "-"], Some(&wrong));
    assert!(
        !okk && err.contains("metadata.name") && err.contains("must be spec.names.plural+\".\"+spec.group"),
        "{err}"
    );
    let two = CRD.replace("storage: false", "storage: true");
    let (okk, _, err) = k_stdin(&s, &["create", "-f", "-"], Some(&two));
    assert!(!okk && err.contains("must have exactly one version marked as storage version"), "{err}");
    let scope = CRD.replace("scope: Namespaced", "scope: Everywhere");
    let (okk, _, err) = k_stdin(&s, &["create", "-f", "-"], Some(&scope));
    assert!(!okk && err.contains("spec.scope: Unsupported value: \"Everywhere\""), "{err}");

    install_crd(&s);
    // A second CRD claiming the same kind in the group is not accepted.
    let clash = CRD
        .replace("crontabs.stable.example.com", "crontabs2.stable.example.com")
        .replace("plural: crontabs", "plural: crontabs2")
        .replace("singular: crontab", "singular: crontab2")
        .replace("shortNames: [ct]", "shortNames: [ct2]");
    ok_stdin(&s, &["create", "-f", "-"], &clash);
    let st = ok(
        &s,
        &[
            "get",
            "crd",
            "crontabs2.stable.example.com",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"NamesAccepted\")].status} {.status.conditions[?(@.type==\"NamesAccepted\")].message}",
        ],
    );
    assert!(st.starts_with("False") && st.contains("\"CronTab\" is already in use"), "{st}");
    let (_, out, _) = k(&s, &["api-resources", "--api-group=stable.example.com"]);
    assert!(!out.contains("crontabs2"), "a CRD whose names were refused is not served:\n{out}");
    ok(&s, &["delete", "crd", "crontabs2.stable.example.com", "crontabs.stable.example.com"]);
}

const RULES_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.cel.example.com
spec:
  group: cel.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: self.replicas <= self.maxReplicas
              message: must be at most maxReplicas
              fieldPath: .replicas
            - rule: self.mode == oldSelf.mode
              message: mode is immutable
              reason: FieldValueForbidden
            - rule: "!has(self.name) || self.name.lowerAscii().startsWith('w')"
              messageExpression: "'name ' + self.name + ' must start with w'"
            properties:
              replicas: {type: integer}
              maxReplicas: {type: integer}
              mode: {type: string}
              name: {type: string}
              tags:
                type: array
                x-kubernetes-list-type: set
                items: {type: string}
              owners:
                type: object
                maxProperties: 10
                additionalProperties: {type: string, maxLength: 63}
                x-kubernetes-validations:
                - rule: self.all(team, owner, owner.startsWith(team + '-'))
                  message: each owner must belong to its team
              ports:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [port, protocol]
                items:
                  type: object
                  required: [port]
                  properties:
                    port: {type: integer}
                    protocol: {type: string, default: TCP}
                    name: {type: string}
"#;

fn widget(name: &str, spec: &str) -> String {
    format!("apiVersion: cel.example.com/v1\nkind: Widget\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

#[test]
fn cel_rules_and_list_types_behave_as_upstream() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);

    // A rule that does not compile refuses the CRD, with the compile error.
    let broken = RULES_CRD.replace("rule: self.replicas <= self.maxReplicas", "rule: self.replicas <=");
    let (okk, _, err) = k_stdin(&s, &["apply", "-f", "-"], Some(&broken));
    assert!(!okk, "a CRD with a broken rule was accepted");
    assert!(
        err.contains("spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{Rule:\"self.replicas <=\"")
            && err.contains("compilation failed: ERROR: <input>:1:17: Syntax error: mismatched input '<EOF>'"),
        "{err}"
    );
    let typo = RULES_CRD.replace("self.replicas <= self.maxReplicas", "self.replicas <= self.maxReplica");
    let (okk, _, err) = k_stdin(&s, &["apply", "-f", "-"], Some(&typo));
    assert!(!okk && err.contains("undefined field 'maxReplica'"), "{err}");

    // A rule whose estimated cost is over budget refuses the CRD (422, upstream's words); bounding
    // the list and its strings makes the same rule acceptable.
    let costly = RULES_CRD.replace(
        "              tags:\n                type: array\n",
        "              tags:\n                type: array\n                x-kubernetes-validations:\n                - rule: self.all(t, t.matches('^[a-z]+$'))\n",
    );
    assert!(costly.contains("t.matches"), "the replacement applied");
    let (okk, _, err) = k_stdin(&s, &["apply", "-f", "-"], Some(&costly));
    assert!(!okk, "a CRD with an unbounded rule was accepted");
    assert!(
        err.contains("spec.validation.openAPIV3Schema.properties[spec].properties[tags].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)")
            && err.contains("spec.validation.openAPIV3Schema: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget"),
        "{err}"
    );
    let bounded = costly
        .replace(
            "                type: array\n                x-kubernetes-validations:",
            "                type: array\n                maxItems: 50\n                x-kubernetes-validations:",
        )
        .replace("                items: {type: string}\n", "                items: {type: string, maxLength: 63}\n");
    let (okk, _, err) = k_stdin(&s, &["apply", "--dry-run=server", "-f", "-"], Some(&bounded));
    assert!(okk, "the bounded rule was refused: {err}");

    ok_stdin(&s, &["apply", "-f", "-"], RULES_CRD);
    ok(&s, &["wait", "--for=condition=Established", "crd/widgets.cel.example.com", "--timeout=20s"]);
    eventually("widgets in api-resources", || {
        let (_, out, _) = k(&s, &["api-resources", "--api-group=cel.example.com"]);
        out.contains("widgets").then_some(())
    });

    // A custom resource that breaks a rule is refused with the rule's message at its fieldPath.
    let bad = widget("w1", "  replicas: 5\n  maxReplicas: 3\n  mode: a\n");
    let (okk, _, err) = k_stdin(&s, &["apply", "-f", "-"], Some(&bad));
    assert!(!okk, "a Widget breaking its rule was accepted");
    assert!(err.contains("spec.replicas: Invalid value: \"object\": must be at most maxReplicas"), "{err}");
    let bad = widget("w1", "  replicas: 1\n  maxReplicas: 3\n  mode: a\n  name: Gadget\n");
    let (_, _, err) = k_stdin(&s, &["apply", "-f", "-"], Some(&bad));
    assert!(err.contains("spec: Invalid value: \"object\": name Gadget must start with w"), "{err}");
    // A two-variable comprehension (Kubernetes 1.32) over a map sees each key with its value.
    let owners = widget("w3", "  replicas: 1\n  maxReplicas: 3\n  mode: a\n  owners: {web: web-ann, db: db-bob}\n");
    let (okk, _, err) = k_stdin(&s, &["apply", "--dry-run=server", "-f", "-"], Some(&owners));
    assert!(okk, "owners matching their teams were refused: {err}");
    let (okk, _, err) = k_stdin(&s, &["apply", "-f", "-"], Some(&owners.replace("db-bob", "web-bob")));
    assert!(!okk, "an owner of another team was accepted");
    assert!(
        err.contains("is invalid: spec.owners: Invalid value: \"object\": each owner must belong to its team"),
        "{err}"
    );
    // Set elements and map-list keys are unique.
    let dup = widget("w1", "  replicas: 1\n  maxReplicas: 3\n  mode: a\n  tags: [x, y, x]\n");
    let (_, _, err) = k_stdin(&s, &["apply", "--validate=false", "-f", "-"], Some(&dup));
    assert!(err.contains("spec.tags[2]: Duplicate value: \"x\""), "{err}");

    // A transition rule runs on update only.
    let good = widget("w1", "  replicas: 1\n  maxReplicas: 3\n  mode: a\n");
    assert!(ok_stdin(&s, &["apply", "-f", "-"], &good).contains("widget.cel.example.com/w1 created"));
    let changed = good.replace("mode: a", "mode: b");
    let (okk, _, err) = k_stdin(&s, &["apply", "-f", "-"], Some(&changed));
    assert!(!okk && err.contains("spec: Forbidden: mode is immutable"), "{err}");
    ok_stdin(&s, &["apply", "-f", "-"], &good.replace("replicas: 1", "replicas: 2"));
    assert_eq!(ok(&s, &["get", "widget", "w1", "-o", "jsonpath={.spec.replicas}"]), "2");

    // Server-side apply by two managers onto a map list keyed by port+protocol: elements with
    // different keys merge, the same element set differently conflicts on that element.
    let a = widget("w2", "  replicas: 1\n  maxReplicas: 3\n  mode: a\n  ports:\n  - port: 80\n    name: http\n");
    ok_stdin(&s, &["apply", "--server-side", "--field-manager=alice", "-f", "-"], &a);
    let b = widget("w2", "  ports:\n  - port: 80\n    protocol: UDP\n    name: dns\n");
    ok_stdin(&s, &["apply", "--server-side", "--field-manager=bob", "-f", "-"], &b);
    assert_eq!(
        ok(&s, &["get", "widget", "w2", "-o", "jsonpath={range .spec.ports[*]}{.port}/{.protocol}={.name} {end}"]),
        "80/TCP=http 80/UDP=dns "
    );
    let fields = ok(
        &s,
        &[
            "get",
            "widget",
            "w2",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[?(@.manager==\"bob\")].fieldsV1}",
        ],
    );
    assert!(
        fields.contains(r#"k:{\"port\":80,\"protocol\":\"UDP\"}"#)
            || fields.contains(r#"k:{"port":80,"protocol":"UDP"}"#),
        "{fields}"
    );
    let steal = widget("w2", "  ports:\n  - port: 80\n    name: web\n");
    let (okk, _, err) = k_stdin(&s, &["apply", "--server-side", "--field-manager=bob", "-f", "-"], Some(&steal));
    assert!(!okk, "taking another manager's field did not conflict");
    assert!(
        err.contains("conflict with \"alice\"") && err.contains(".spec.ports[port=80,protocol=\"TCP\"].name"),
        "{err}"
    );
    ok_stdin(&s, &["apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-"], &steal);
    assert_eq!(
        ok(&s, &["get", "widget", "w2", "-o", "jsonpath={range .spec.ports[*]}{.port}/{.protocol}={.name} {end}"]),
        "80/TCP=web ",
        "bob's apply no longer lists the UDP port, so it goes"
    );

    // Strategic merge patch is refused for custom resources (415), as upstream.
    let (okk, _, err) = k(&s, &["patch", "widget", "w2", "--type=strategic", "-p", "{\"spec\":{\"mode\":\"a\"}}"]);
    assert!(!okk && (err.contains("UnsupportedMediaType") || err.contains("unknown format")), "{err}");

    ok(&s, &["delete", "crd", "widgets.cel.example.com", "--timeout=30s"]);
}
