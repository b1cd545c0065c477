//! Persistent volumes, disruption budgets and certificate signing requests against an in-process
//! `skiff server` with no agent, driven with real kubectl 1.32: fake Node objects stand in for
//! kubelets, and the test plays the kubelet's and the scheduler's parts (marking pods Ready,
//! annotating claims with their selected node).

mod common;

use common::{require_kubectl, TestServer};
use std::time::{Duration, Instant};

/// Polls `kubectl <args>` until `ok(stdout)` holds, failing after 60 s with the last output.
fn wait_for(s: &TestServer, what: &str, args: &[&str], ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, out, err) = s.kubectl(args);
        if ok(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: kubectl {args:?}\nstdout: {out}\nstderr: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get(s: &TestServer, kind: &str, name: &str, path: &str) -> String {
    s.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")]).1
}

fn host_path_pv(name: &str, size: &str, policy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {name}\n  labels: {{tier: static}}\nspec:\n  capacity: {{storage: {size}}}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: {policy}\n  hostPath: {{path: /tmp/skiff-storage-test-{name}}}\n"
    )
}

fn claim(name: &str, size: &str, class: Option<&str>) -> String {
    let class = class.map(|c| format!("  storageClassName: \"{c}\"\n")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: {size}}}}}\n{class}"
    )
}

#[test]
fn static_volumes_bind_smallest_first_and_follow_their_reclaim_policy_after_the_claim_goes() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    for (n, size, policy) in [("pv-big", "5Gi", "Retain"), ("pv-small", "1Gi", "Retain"), ("pv-del", "3Gi", "Delete")] {
        s.ok_stdin(&["apply", "-f", "-"], &host_path_pv(n, size, policy));
    }
    wait_for(&s, "pv-small Available", &["get", "pv", "pv-small", "-o", "jsonpath={.status.phase}"], |o| {
        o == "Available"
    });
    // An explicit empty class: only static volumes without a class (no default class applies).
    s.ok_stdin(&["apply", "-f", "-"], &claim("small", "500Mi", Some("")));
    wait_for(&s, "claim small Bound", &["get", "pvc", "small", "-o", "jsonpath={.status.phase}"], |o| o == "Bound");
    assert_eq!(get(&s, "pvc", "small", "{.spec.volumeName}"), "pv-small", "the smallest fitting volume");
    assert_eq!(get(&s, "pvc", "small", "{.status.capacity.storage}"), "1Gi");
    assert_eq!(get(&s, "pvc", "small", "{.status.accessModes[0]}"), "ReadWriteOnce");
    let ann = get(&s, "pvc", "small", "{.metadata.annotations}");
    assert!(ann.contains(r#""pv.kubernetes.io/bind-completed":"yes""#), "{ann}");
    assert!(ann.contains(r#""pv.kubernetes.io/bound-by-controller":"yes""#), "{ann}");
    wait_for(&s, "pv-small Bound", &["get", "pv", "pv-small", "-o", "jsonpath={.status.phase}"], |o| o == "Bound");
    assert_eq!(get(&s, "pv", "pv-small", "{.spec.claimRef.name}"), "small");
    assert_eq!(get(&s, "pv", "pv-small", "{.spec.claimRef.uid}"), get(&s, "pvc", "small", "{.metadata.uid}"));

    // A claim pre-bound to a volume by name gets it even though a smaller one would fit.
    s.ok_stdin(&["apply", "-f", "-"], &format!("{}  volumeName: pv-del\n", claim("named", "1Gi", Some(""))));
    wait_for(&s, "claim named Bound", &["get", "pvc", "named", "-o", "jsonpath={.status.phase}"], |o| o == "Bound");
    assert_eq!(get(&s, "pvc", "named", "{.spec.volumeName}"), "pv-del");

    // A claim nothing fits stays Pending and says why.
    s.ok_stdin(&["apply", "-f", "-"], &claim("huge", "100Gi", Some("")));
    wait_for(&s, "the FailedBinding event", &["get", "events", "--field-selector", "involvedObject.name=huge"], |o| {
        o.contains("FailedBinding") && o.contains("no persistent volumes available for this claim")
    });
    assert_eq!(get(&s, "pvc", "huge", "{.status.phase}"), "Pending");

    // Claims deleted: Retain keeps the volume Released; Delete of a static hostPath volume has no
    // deleter (as upstream), so it is Failed with a VolumeFailedDelete event.
    s.ok(&["delete", "pvc", "small", "named"]);
    wait_for(&s, "pv-small Released", &["get", "pv", "pv-small", "-o", "jsonpath={.status.phase}"], |o| {
        o == "Released"
    });
    wait_for(&s, "pv-del Failed", &["get", "pv", "pv-del", "-o", "jsonpath={.status.phase}"], |o| o == "Failed");
    wait_for(
        &s,
        "the VolumeFailedDelete event",
        &["get", "events", "--field-selector", "involvedObject.name=pv-del"],
        |o| o.contains("VolumeFailedDelete"),
    );
    // A Released volume is not handed to a new claim.
    s.ok_stdin(&["apply", "-f", "-"], &claim("again", "1Gi", Some("")));
    wait_for(&s, "claim again Bound", &["get", "pvc", "again", "-o", "jsonpath={.spec.volumeName}"], |o| o == "pv-big");
    assert_eq!(get(&s, "pv", "pv-small", "{.status.phase}"), "Released");
    s.ok(&["delete", "pvc", "again", "huge"]);
    s.ok(&["delete", "pv", "pv-big", "pv-small", "pv-del"]);
}

#[test]
fn wait_for_first_consumer_claims_are_provisioned_on_the_selected_node_and_deleted_with_the_claim() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    let sc = s.ok(&["get", "storageclass"]);
    assert!(sc.contains("local-path (default)") && sc.contains("rancher.io/local-path"), "{sc}");
    assert!(sc.contains("WaitForFirstConsumer") && sc.contains("Delete"), "{sc}");
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {kubernetes.io/hostname: n1}\n  annotations: {skiff.io/local-path-storage-dir: /srv/n1-storage}\n",
    );
    // No class given: the default (local-path) applies, and nothing happens before a consumer.
    s.ok_stdin(&["apply", "-f", "-"], &claim("data", "2Gi", None));
    wait_for(
        &s,
        "the WaitForFirstConsumer event",
        &["get", "events", "--field-selector", "involvedObject.name=data"],
        |o| o.contains("WaitForFirstConsumer") && o.contains("waiting for first consumer to be created before binding"),
    );
    assert_eq!(get(&s, "pvc", "data", "{.status.phase}"), "Pending");
    assert_eq!(s.ok(&["get", "pv", "-o", "name"]), "", "nothing provisioned yet");

    // The scheduler's part: it picked n1.
    s.ok(&["annotate", "pvc", "data", "volume.kubernetes.io/selected-node=n1"]);
    wait_for(&s, "claim data Bound", &["get", "pvc", "data", "-o", "jsonpath={.status.phase}"], |o| o == "Bound");
    let uid = get(&s, "pvc", "data", "{.metadata.uid}");
    let pv = format!("pvc-{uid}");
    assert_eq!(get(&s, "pvc", "data", "{.spec.volumeName}"), pv);
    assert_eq!(get(&s, "pv", &pv, "{.spec.hostPath.path}"), format!("/srv/n1-storage/pvc-{uid}_default_data"));
    assert_eq!(get(&s, "pv", &pv, "{.spec.hostPath.type}"), "DirectoryOrCreate");
    assert_eq!(get(&s, "pv", &pv, "{.spec.capacity.storage}"), "2Gi");
    assert_eq!(get(&s, "pv", &pv, "{.spec.persistentVolumeReclaimPolicy}"), "Delete");
    assert_eq!(get(&s, "pv", &pv, "{.spec.storageClassName}"), "local-path");
    assert_eq!(
        get(&s, "pv", &pv, "{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}"),
        "n1"
    );
    assert!(get(&s, "pv", &pv, "{.metadata.annotations}")
        .contains(r#""pv.kubernetes.io/provisioned-by":"rancher.io/local-path""#));
    assert!(get(&s, "pvc", "data", "{.metadata.annotations}")
        .contains(r#""volume.kubernetes.io/storage-provisioner":"rancher.io/local-path""#));
    wait_for(
        &s,
        "the ProvisioningSucceeded event",
        &["get", "events", "--field-selector", "involvedObject.name=data"],
        |o| o.contains("ProvisioningSucceeded") && o.contains(&pv),
    );

    // A node that does not announce a storage dir gets the server's `<data-dir>/storage`.
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n2\n  labels: {kubernetes.io/hostname: n2}\n",
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        &claim("other", "1Gi", None)
            .replace("  name: other\n", "  name: other\n  annotations: {volume.kubernetes.io/selected-node: n2}\n"),
    );
    wait_for(&s, "claim other Bound", &["get", "pvc", "other", "-o", "jsonpath={.status.phase}"], |o| o == "Bound");
    let other_pv = get(&s, "pvc", "other", "{.spec.volumeName}");
    let want = s.dir.path().join("data/storage");
    assert!(get(&s, "pv", &other_pv, "{.spec.hostPath.path}").starts_with(&want.display().to_string()));

    // Reclaim policy Delete: the claim goes, the volume follows.
    s.ok(&["delete", "pvc", "data", "other"]);
    wait_for(&s, "the provisioned volumes deleted", &["get", "pv", "-o", "name"], |o| o.trim().is_empty());
    s.ok(&["delete", "node", "n1", "n2"]);
}

const WEB: &str = "apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: busybox:1.36}]
";

#[test]
fn disruption_budget_status_follows_pods_becoming_ready() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok_stdin(&["apply", "-f", "-"], WEB);
    wait_for(&s, "three pods", &["get", "pods", "-l", "app=web", "-o", "name"], |o| o.lines().count() == 3);
    s.ok(&["create", "pdb", "min2", "--selector=app=web", "--min-available=2"]);
    s.ok(&["create", "pdb", "half", "--selector=app=web", "--max-unavailable=50%"]);
    let status = |name: &str| {
        get(
            &s,
            "pdb",
            name,
            "{.status.expectedPods} {.status.desiredHealthy} {.status.currentHealthy} {.status.disruptionsAllowed} {.status.observedGeneration} {.status.conditions[0].type}={.status.conditions[0].status}/{.status.conditions[0].reason}",
        )
    };
    // No pod Ready yet.
    wait_for(&s, "min2 status", &["get", "pdb", "min2", "-o", "jsonpath={.status.observedGeneration}"], |o| o == "1");
    assert_eq!(status("min2"), "3 2 0 0 1 DisruptionAllowed=False/InsufficientPods");
    wait_for(&s, "half status", &["get", "pdb", "half", "-o", "jsonpath={.status.observedGeneration}"], |o| o == "1");
    // maxUnavailable 50% of the ReplicaSet's 3: ceil(1.5) = 2 may be missing, so 1 is desired.
    assert_eq!(status("half"), "3 1 0 0 1 DisruptionAllowed=False/InsufficientPods");

    // The kubelet's part: the pods become Ready one by one.
    let pods = s.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]);
    let names: Vec<&str> = pods.split_whitespace().collect();
    let ready = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#;
    s.ok(&["patch", "pod", names[0], "--subresource=status", "--type=merge", "-p", ready]);
    wait_for(&s, "one healthy", &["get", "pdb", "half", "-o", "jsonpath={.status.currentHealthy}"], |o| o == "1");
    assert_eq!(status("min2"), "3 2 1 0 1 DisruptionAllowed=False/InsufficientPods");
    assert_eq!(status("half"), "3 1 1 0 1 DisruptionAllowed=False/InsufficientPods");
    for n in &names[1..] {
        s.ok(&["patch", "pod", n, "--subresource=status", "--type=merge", "-p", ready]);
    }
    wait_for(&s, "three healthy", &["get", "pdb", "min2", "-o", "jsonpath={.status.currentHealthy}"], |o| o == "3");
    assert_eq!(status("min2"), "3 2 3 1 1 DisruptionAllowed=True/SufficientPods");
    wait_for(&s, "three healthy (half)", &["get", "pdb", "half", "-o", "jsonpath={.status.currentHealthy}"], |o| {
        o == "3"
    });
    assert_eq!(status("half"), "3 1 3 2 1 DisruptionAllowed=True/SufficientPods");

    // Changing the budget: the controller catches up.
    s.ok(&["patch", "pdb", "min2", "--type=merge", "-p", r#"{"spec":{"minAvailable":3}}"#]);
    wait_for(&s, "minAvailable 3 observed", &["get", "pdb", "min2", "-o", "jsonpath={.status.desiredHealthy}"], |o| {
        o == "3"
    });
    let generation = get(&s, "pdb", "min2", "{.metadata.generation}");
    let generation = if generation.is_empty() { "1".to_string() } else { generation };
    assert_eq!(status("min2"), format!("3 3 3 0 {generation} DisruptionAllowed=False/InsufficientPods"));

    // Scaling the ReplicaSet changes the expected count of the percentage budget.
    s.ok(&["scale", "rs", "web", "--replicas=4"]);
    wait_for(&s, "4 expected", &["get", "pdb", "half", "-o", "jsonpath={.status.expectedPods}"], |o| o == "4");
    wait_for(&s, "half re-evaluated", &["get", "pdb", "half", "-o", "jsonpath={.status.desiredHealthy}"], |o| o == "2");
    s.ok(&["delete", "pdb", "min2", "half"]);
    s.ok(&["delete", "rs", "web"]);
}

fn csr_manifest(name: &str, signer: &str, usages: &str, pem: &str) -> String {
    use base64::Engine;
    let req = base64::engine::general_purpose::STANDARD.encode(pem);
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  signerName: {signer}\n  usages: {usages}\n  request: {req}\n"
    )
}

fn request(cn: &str, orgs: &[&str]) -> (String, String) {
    let kp = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    let mut dn = rcgen::DistinguishedName::new();
    for o in orgs {
        dn.push(rcgen::DnType::OrganizationName, *o);
    }
    dn.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name = dn;
    let csr = p.serialize_request(&kp).expect("csr").pem().expect("pem");
    (csr, kp.serialize_pem())
}

#[test]
fn an_approved_csr_gets_a_certificate_that_chains_to_the_client_ca_and_authenticates() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    let (pem, key) = request("alice", &["devs"]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        &csr_manifest("alice", "kubernetes.io/kube-apiserver-client", "[client auth]", &pem),
    );
    s.ok(&["certificate", "approve", "alice"]);
    assert_eq!(get(&s, "csr", "alice", "{.status.conditions[0].type}"), "Approved");
    let b64 = wait_for(&s, "the certificate", &["get", "csr", "alice", "-o", "jsonpath={.status.certificate}"], |o| {
        !o.is_empty()
    });
    use base64::Engine;
    let cert_pem = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64.trim()).expect("base64"))
        .expect("PEM text");

    // It parses, names alice in group devs, and is signed by the cluster's client CA.
    let der = |pem: &str| x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM").1.contents;
    let cert_der = der(&cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).expect("certificate");
    assert_eq!(cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()), Some("alice"));
    assert_eq!(cert.subject().iter_organization().next().and_then(|c| c.as_str().ok()), Some("devs"));
    let ca_pem = std::fs::read_to_string(s.dir.path().join("data/server/tls/client-ca.crt")).expect("client CA");
    let ca_der = der(&ca_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("CA");
    assert_eq!(cert.issuer(), ca.subject());
    cert.verify_signature(Some(ca.public_key())).expect("signed by the client CA");

    // And the API server accepts it: alice is who she says.
    let server_ca = std::fs::read_to_string(s.dir.path().join("data/server/tls/server-ca.crt")).expect("server CA");
    let kc = skiff::pki::kubeconfig(&format!("https://127.0.0.1:{}", s.port), &server_ca, &cert_pem, &key);
    let kc_path = s.dir.path().join("alice.kubeconfig");
    std::fs::write(&kc_path, kc).expect("kubeconfig");
    let out = std::process::Command::new(common::kubectl_path().expect("kubectl"))
        .arg("--kubeconfig")
        .arg(&kc_path)
        .args(["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"])
        .output()
        .expect("kubectl");
    let who = String::from_utf8_lossy(&out.stdout);
    assert!(who.starts_with("alice ") && who.contains("devs"), "{who} {}", String::from_utf8_lossy(&out.stderr));

    // Denied: no certificate. A kubelet-client request from a non-node: Failed.
    let (pem, _) = request("bob", &[]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        &csr_manifest("bob", "kubernetes.io/kube-apiserver-client", "[client auth]", &pem),
    );
    s.ok(&["certificate", "deny", "bob"]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        &csr_manifest(
            "mallory",
            "kubernetes.io/kube-apiserver-client-kubelet",
            "[digital signature, client auth]",
            &pem,
        ),
    );
    s.ok(&["certificate", "approve", "mallory"]);
    wait_for(
        &s,
        "mallory Failed",
        &["get", "csr", "mallory", "-o", "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}"],
        |o| o == "SignerValidationFailure",
    );
    assert!(get(&s, "csr", "mallory", "{.status.conditions}").contains("subject organization is not system:nodes"));
    assert_eq!(get(&s, "csr", "mallory", "{.status.certificate}"), "");
    assert_eq!(get(&s, "csr", "bob", "{.status.certificate}"), "");
    assert_eq!(get(&s, "csr", "bob", "{.status.conditions[0].type}"), "Denied");
    s.ok(&["delete", "csr", "alice", "bob", "mallory"]);
}

/// Runs kubectl as the client certificate `cert`/`key`; returns (success, stdout, stderr).
fn kubectl_as(s: &TestServer, name: &str, cert: &str, key: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let server_ca = std::fs::read_to_string(s.dir.path().join("data/server/tls/server-ca.crt")).expect("server CA");
    let kc = skiff::pki::kubeconfig(&format!("https://127.0.0.1:{}", s.port), &server_ca, cert, key);
    let kc_path = s.dir.path().join(format!("{name}.kubeconfig"));
    std::fs::write(&kc_path, kc).expect("kubeconfig");
    let mut child = std::process::Command::new(common::kubectl_path().expect("kubectl"))
        .arg("--kubeconfig")
        .arg(&kc_path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin");
    let out = child.wait_with_output().expect("kubectl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn a_kubelet_renewing_its_client_certificate_is_approved_automatically_and_others_wait() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    let pki = skiff::pki::ClusterPki::load_or_create(&s.dir.path().join("data/server/tls")).expect("cluster PKI");
    let client = |cn: &str, groups: &[&str]| {
        pki.client_ca
            .issue(&skiff::pki::Leaf::Client { cn: cn.into(), groups: groups.iter().map(|g| g.to_string()).collect() })
            .expect("client certificate")
    };
    let (node_cert, node_key) = client("system:node:n9", &["system:nodes"]);
    let (bob_cert, bob_key) = client("bob", &["devs"]);
    s.ok(&["create", "clusterrole", "csr-creator", "--verb=create,get", "--resource=certificatesigningrequests"]);
    s.ok(&["create", "clusterrolebinding", "bob-csr", "--clusterrole=csr-creator", "--user=bob"]);

    // Bob may create requests but holds neither nodeclient nor selfnodeclient: his stays pending.
    let (pem, _) = request("system:node:n9", &["system:nodes"]);
    let usages = "[digital signature, client auth]";
    let signer = "kubernetes.io/kube-apiserver-client-kubelet";
    let (ok, _, err) = kubectl_as(
        &s,
        "bob",
        &bob_cert,
        &bob_key,
        &["create", "-f", "-"],
        &csr_manifest("from-bob", signer, usages, &pem),
    );
    assert!(ok, "{err}");
    // The node renews its own certificate: approved by the controller, then signed.
    let (pem, _) = request("system:node:n9", &["system:nodes"]);
    let (ok, _, err) = kubectl_as(
        &s,
        "n9",
        &node_cert,
        &node_key,
        &["create", "-f", "-"],
        &csr_manifest("from-n9", signer, usages, &pem),
    );
    assert!(ok, "{err}");
    // The API server recorded who asked, whatever the body said.
    assert_eq!(get(&s, "csr", "from-n9", "{.spec.username}"), "system:node:n9");
    assert!(get(&s, "csr", "from-n9", "{.spec.groups}").contains("system:nodes"));
    assert_eq!(get(&s, "csr", "from-bob", "{.spec.username}"), "bob");
    wait_for(
        &s,
        "the node's request approved",
        &["get", "csr", "from-n9", "-o", "jsonpath={.status.conditions[0].reason}"],
        |o| o == "AutoApproved",
    );
    assert_eq!(
        get(&s, "csr", "from-n9", "{.status.conditions[0].message}"),
        "Auto approving self kubelet client certificate after SubjectAccessReview."
    );
    wait_for(&s, "the node's certificate", &["get", "csr", "from-n9", "-o", "jsonpath={.status.certificate}"], |o| {
        !o.is_empty()
    });
    let out = s.ok(&["get", "csr"]);
    let bob_line = out.lines().find(|l| l.starts_with("from-bob")).expect("bob's request listed");
    assert!(bob_line.contains("Pending"), "{out}");
    assert_eq!(get(&s, "csr", "from-bob", "{.status.conditions}"), "");
    s.ok(&["delete", "csr", "from-bob", "from-n9"]);
    s.ok(&["delete", "clusterrolebinding", "bob-csr"]);
    s.ok(&["delete", "clusterrole", "csr-creator"]);
}

#[test]
fn a_claim_in_use_by_a_pod_and_a_bound_volume_wait_for_their_users_before_going() {
    let Some(()) = require_kubectl() else { return };
    let s = TestServer::start(&[]);
    s.ok_stdin(&["apply", "-f", "-"], &host_path_pv("pv-kept", "1Gi", "Retain"));
    s.ok_stdin(&["apply", "-f", "-"], &claim("data", "1Gi", Some("")));
    assert_eq!(get(&s, "pvc", "data", "{.metadata.finalizers}"), r#"["kubernetes.io/pvc-protection"]"#);
    assert_eq!(get(&s, "pv", "pv-kept", "{.metadata.finalizers}"), r#"["kubernetes.io/pv-protection"]"#);
    wait_for(&s, "claim data Bound", &["get", "pvc", "data", "-o", "jsonpath={.status.phase}"], |o| o == "Bound");
    // A pod on a (fake) node mounts the claim.
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: user\nspec:\n  nodeName: nowhere\n  containers: [{name: c, image: busybox}]\n  volumes: [{name: d, persistentVolumeClaim: {claimName: data}}]\n",
    );

    // Deleting the claim only marks it while the pod runs; the volume stays Bound.
    s.ok(&["delete", "pvc", "data", "--wait=false"]);
    s.ok(&["delete", "pv", "pv-kept", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(get(&s, "pvc", "data", "{.metadata.deletionTimestamp}"), "", "marked for deletion");
    let out = s.ok(&["get", "pvc", "data"]);
    assert!(out.contains("Terminating"), "{out}");
    assert_eq!(get(&s, "pvc", "data", "{.metadata.finalizers}"), r#"["kubernetes.io/pvc-protection"]"#);
    assert_eq!(get(&s, "pv", "pv-kept", "{.status.phase}"), "Bound");
    assert_eq!(get(&s, "pv", "pv-kept", "{.metadata.finalizers}"), r#"["kubernetes.io/pv-protection"]"#);

    // The pod goes: the claim goes, the volume is Released (Retain), and then it goes too.
    s.ok(&["delete", "pod", "user", "--grace-period=0", "--force"]);
    wait_for(&s, "the claim gone", &["get", "pvc", "-o", "name"], |o| !o.contains("persistentvolumeclaim/data"));
    wait_for(&s, "the volume gone", &["get", "pv", "-o", "name"], |o| !o.contains("persistentvolume/pv-kept"));
}
