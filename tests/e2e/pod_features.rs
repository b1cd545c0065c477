//! Kubelet pod features end to end on one real node: a configMap volume (served by httpd and
//! updated in place when the ConfigMap changes), an env var from a Secret, a readiness httpGet
//! probe that makes the pod Ready, and a liveness exec probe that starts failing so the
//! container is restarted (restartCount goes up, with upstream's events). Deleting the pod
//! removes its volume directory. Two short pods check the termination message and
//! `activeDeadlineSeconds`, and one reads the standard `kube-api-access-*` projected volume
//! (bound token, CA, namespace; the test publishes `kube-root-ca.crt` itself as no controller
//! does yet). The node leaves nothing behind.

use crate::harness::{self, Cluster};
use std::time::Duration;

const READY: Duration = Duration::from_secs(60);

const MANIFEST: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: site
data:
  index.html: from-configmap-v1
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
data:
  password: czNjcmV0
---
apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: web
      image: docker.io/library/busybox:1.36
      command:
        - sh
        - -c
        - |
          echo "password=$PASSWORD"
          touch /tmp/healthy
          (sleep 12; rm -f /tmp/healthy) &
          exec httpd -f -p 8080 -h /www
      env:
        - name: PASSWORD
          valueFrom:
            secretKeyRef:
              name: creds
              key: password
      ports:
        - name: http
          containerPort: 8080
      volumeMounts:
        - name: site
          mountPath: /www
      readinessProbe:
        httpGet:
          path: /index.html
          port: http
        periodSeconds: 2
      livenessProbe:
        exec:
          command: ["cat", "/tmp/healthy"]
        initialDelaySeconds: 2
        periodSeconds: 2
        failureThreshold: 2
  volumes:
    - name: site
      configMap:
        name: site
"#;

const SHORT_PODS: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: robot
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-root-ca.crt
data:
  ca.crt: |
    -----BEGIN CERTIFICATE-----
    test
    -----END CERTIFICATE-----
---
apiVersion: v1
kind: Pod
metadata:
  name: token-reader
spec:
  serviceAccountName: robot
  restartPolicy: Never
  containers:
    - name: main
      image: docker.io/library/busybox:1.36
      command:
        - sh
        - -c
        - cd /var/run/secrets/kubernetes.io/serviceaccount && echo "token=$(head -c 3 token) ns=$(cat namespace) ca=$(grep -c BEGIN ca.crt)"
      volumeMounts:
        - name: kube-api-access-test
          mountPath: /var/run/secrets/kubernetes.io/serviceaccount
          readOnly: true
  volumes:
    - name: kube-api-access-test
      projected:
        defaultMode: 420
        sources:
          - serviceAccountToken:
              expirationSeconds: 3607
              path: token
          - configMap:
              name: kube-root-ca.crt
              items:
                - key: ca.crt
                  path: ca.crt
          - downwardAPI:
              items:
                - path: namespace
                  fieldRef:
                    apiVersion: v1
                    fieldPath: metadata.namespace
---
apiVersion: v1
kind: Pod
metadata:
  name: says-bye
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: docker.io/library/busybox:1.36
      command: ["sh", "-c", "printf bye > /dev/termination-log; exit 3"]
---
apiVersion: v1
kind: Pod
metadata:
  name: deadline
spec:
  activeDeadlineSeconds: 5
  terminationGracePeriodSeconds: 2
  containers:
    - name: main
      image: docker.io/library/busybox:1.36
      command: ["sleep", "3600"]
"#;

fn jsonpath(n: &crate::harness::Node, path: &str) -> Result<String, String> {
    n.try_kubectl(&["get", "pod", "probed", "-o", &format!("jsonpath={path}")])
}

#[test]
fn a_pod_with_volumes_secret_env_and_probes_runs_gets_ready_and_is_restarted_by_liveness() {
    if !harness::require(harness::NODE_TOOLS) {
        return;
    }
    let mut cluster = Cluster::single_server(READY);
    let n = cluster.server();
    let manifest = n.data_dir.join("pod-features.yaml");
    std::fs::write(&manifest, MANIFEST).expect("writing the test manifest into the node's data dir");
    let manifest_arg = manifest.to_string_lossy().into_owned();
    n.kubectl_ok(&["apply", "-f", &manifest_arg]);

    // Ready through the readiness probe; the uid is remembered for teardown checks.
    let (uid, ip) = n.wait_for("pod probed Running and Ready", READY, |n| {
        let out = jsonpath(n, r#"{.metadata.uid} {.status.podIP} {.status.conditions[?(@.type=="Ready")].status}"#)?;
        let f: Vec<&str> = out.split_whitespace().collect();
        if let Some(uid) = f.first() {
            n.remember_pods([uid.to_string()]);
        }
        match f.as_slice() {
            [uid, ip, "True"] => Ok((uid.to_string(), ip.to_string())),
            _ => Err(format!("uid ip Ready: {out:?}")),
        }
    });

    // The Secret reached the environment.
    n.wait_for("`kubectl logs probed` to show the secret env var", Duration::from_secs(30), |n| {
        let logs = n.try_kubectl(&["logs", "probed"])?;
        if logs.contains("password=s3cret") {
            Ok(())
        } else {
            Err(format!("logs: {logs:?}"))
        }
    });

    // The configMap volume is mounted where httpd serves from; a change to the ConfigMap
    // reaches the running pod through the ..data swap.
    let fetch = |n: &crate::harness::Node| -> Result<String, String> {
        let mut cmd = n.netns.command("busybox");
        cmd.args(["wget", "-qO-", &format!("http://{ip}:8080/index.html")]);
        let r = harness::run(&mut cmd, Duration::from_secs(10))?;
        if r.ok() {
            Ok(r.stdout)
        } else {
            Err(format!("wget: {r}"))
        }
    };
    n.wait_for("the configMap volume served by httpd", Duration::from_secs(30), |n| {
        let body = fetch(n)?;
        if body.contains("from-configmap-v1") {
            Ok(())
        } else {
            Err(format!("body: {body:?}"))
        }
    });
    n.kubectl_ok(&[
        "patch",
        "configmap",
        "site",
        "--type=merge",
        "-p",
        r#"{"data":{"index.html":"from-configmap-v2"}}"#,
    ]);
    n.wait_for("the updated ConfigMap in the running pod", Duration::from_secs(60), |n| {
        let body = fetch(n)?;
        if body.contains("from-configmap-v2") {
            Ok(())
        } else {
            Err(format!("body: {body:?}"))
        }
    });

    // The liveness probe starts failing after ~12 s: the container is restarted.
    n.wait_for("restartCount to go up through the liveness probe", Duration::from_secs(90), |n| {
        let rc = jsonpath(n, "{.status.containerStatuses[0].restartCount}")?;
        match rc.trim().parse::<u32>() {
            Ok(c) if c >= 1 => Ok(()),
            _ => Err(format!("restartCount {rc:?}")),
        }
    });
    n.wait_for("the liveness events", Duration::from_secs(30), |n| {
        let ev = n.try_kubectl(&["get", "events", "--field-selector", "involvedObject.name=probed"])?;
        if ev.contains("Liveness probe failed") && ev.contains("failed liveness probe, will be restarted") {
            Ok(())
        } else {
            Err(format!("events: {ev}"))
        }
    });

    // Deleting the pod removes its volumes from the node.
    n.kubectl_ok(&["delete", "pod", "probed", "--wait=false"]);
    let pod_dir = n.data_dir.join("agent").join("pods").join(&uid);
    n.wait_for("the pod and its volume directory to go away", READY, |n| {
        let r = n.kubectl(&["get", "pod", "probed"]);
        if r.ok() || pod_dir.exists() {
            Err(format!("pod still listed: {}; {} exists: {}", r.ok(), pod_dir.display(), pod_dir.exists()))
        } else {
            Ok(())
        }
    });
    // Termination message and active deadline.
    let short = n.data_dir.join("short-pods.yaml");
    std::fs::write(&short, SHORT_PODS).expect("writing the short pods manifest");
    let short_arg = short.to_string_lossy().into_owned();
    n.kubectl_ok(&["apply", "-f", &short_arg]);
    n.wait_for("the termination message of says-bye", READY, |n| {
        let out = n.try_kubectl(&[
            "get",
            "pod",
            "says-bye",
            "-o",
            "jsonpath={.metadata.uid} {.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].state.terminated.message}",
        ])?;
        if let Some(uid) = out.split_whitespace().next() {
            n.remember_pods([uid.to_string()]);
        }
        if out.ends_with(" 3 bye") {
            Ok(())
        } else {
            Err(format!("uid exitCode message: {out:?}"))
        }
    });
    n.wait_for("token-reader to print its kube-api-access volume", READY, |n| {
        let logs = n.try_kubectl(&["logs", "token-reader"])?;
        if logs.contains("token=eyJ ns=default ca=1") {
            Ok(())
        } else {
            Err(format!("logs: {logs:?}"))
        }
    });
    n.wait_for("pod deadline Failed with DeadlineExceeded", READY, |n| {
        let out = n.try_kubectl(&[
            "get",
            "pod",
            "deadline",
            "-o",
            "jsonpath={.metadata.uid} {.status.phase} {.status.reason}",
        ])?;
        if let Some(uid) = out.split_whitespace().next() {
            n.remember_pods([uid.to_string()]);
        }
        if out.ends_with(" Failed DeadlineExceeded") {
            Ok(())
        } else {
            Err(format!("uid phase reason: {out:?}"))
        }
    });
    n.kubectl_ok(&["delete", "-f", &short_arg, "--wait=false"]);
    n.wait_for("the short pods to go away", READY, |n| {
        let out = n.try_kubectl(&["get", "pods", "-o", "name"])?;
        if out.contains("says-bye") || out.contains("deadline") || out.contains("token-reader") {
            Err(format!("pods: {out}"))
        } else {
            Ok(())
        }
    });
    let _ = std::fs::remove_file(&short);
    n.kubectl_ok(&["delete", "configmap", "site"]);
    n.kubectl_ok(&["delete", "secret", "creds"]);
    let _ = std::fs::remove_file(&manifest);

    let problems = cluster.shutdown();
    assert!(problems.is_empty(), "left behind after teardown: {problems:?}");
}
