//! Persistent storage end to end on one real node: a claim of the default `local-path` class
//! (the test annotates it with its selected node, the scheduler's part) is provisioned as a
//! hostPath volume under the node's `<data-dir>/storage`; a pod writes a file into it, is
//! deleted, and a second pod (mounting the claim readOnly) reads the file and cannot write. A pod
//! whose claim is not bound yet waits with a FailedMount event and starts once the claim is
//! bound. Deleting the claims deletes the volumes and the agent removes their directories.

use crate::harness::{self, Cluster, Node};
use std::time::Duration;

const READY: Duration = Duration::from_secs(60);

fn claim(name: &str, node: Option<&str>) -> String {
    let ann =
        node.map(|n| format!("  annotations:\n    volume.kubernetes.io/selected-node: {n}\n")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\n{ann}spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 10Mi\n"
    )
}

fn pod(name: &str, node: &str, claim: &str, read_only: bool, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: {image}
      command: ["sh", "-c", "{script}"]
      volumeMounts:
        - name: data
          mountPath: /data
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: {claim}
        readOnly: {read_only}
"#,
        image = harness::BUSYBOX_IMAGE
    )
}

fn apply(n: &Node, file: &str, manifest: &str) {
    let path = n.data_dir.join(file);
    std::fs::write(&path, manifest).expect("writing a manifest into the node's data dir");
    n.kubectl_ok(&["apply", "-f", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
}

/// Waits for the pod to finish with Succeeded; returns its logs.
fn finished(n: &mut Node, name: &str) -> String {
    n.wait_for(&format!("pod {name} Succeeded"), READY, |n| {
        let out = n.try_kubectl(&["get", "pod", name, "-o", "jsonpath={.metadata.uid} {.status.phase}"])?;
        if let Some(uid) = out.split_whitespace().next() {
            n.remember_pods([uid.to_string()]);
        }
        match out.split_whitespace().nth(1) {
            Some("Succeeded") => Ok(()),
            other => Err(format!("phase {other:?}")),
        }
    });
    n.kubectl_ok(&["logs", name])
}

fn delete_pod(n: &mut Node, name: &str) {
    n.kubectl_ok(&["delete", "pod", name, "--wait=false"]);
    n.wait_for(&format!("pod {name} gone"), READY, |n| {
        let r = n.kubectl(&["get", "pod", name]);
        if r.ok() {
            Err("still listed".into())
        } else {
            Ok(())
        }
    });
}

#[test]
fn a_local_path_volume_keeps_data_across_pods_and_is_removed_with_its_claim() {
    if !harness::require(harness::NODE_TOOLS) {
        return;
    }
    let mut cluster = Cluster::single_server(READY);
    let n = cluster.server();
    let node = n.name.clone();
    let storage = n.data_dir.join("storage");

    // The claim, with the node the scheduler would have picked.
    apply(n, "pvc.yaml", &claim("data", Some(&node)));
    let (pv, path) = n.wait_for("claim data Bound", READY, |n| {
        let out = n.try_kubectl(&["get", "pvc", "data", "-o", "jsonpath={.status.phase} {.spec.volumeName}"])?;
        match out.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["Bound", pv] => {
                let path = n.try_kubectl(&["get", "pv", pv, "-o", "jsonpath={.spec.hostPath.path}"])?;
                Ok((pv.to_string(), std::path::PathBuf::from(path)))
            }
            _ => Err(format!("phase volumeName: {out:?}")),
        }
    });
    assert!(path.starts_with(&storage), "{} is under {}", path.display(), storage.display());
    assert_eq!(
        n.kubectl_ok(&[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.metadata.annotations.skiff\\.io/local-path-storage-dir}"
        ]),
        storage.to_string_lossy()
    );

    // A pod writes; the file lands in the volume's directory on the node.
    apply(n, "writer.yaml", &pod("writer", &node, "data", false, "echo hello-from-writer > /data/greeting"));
    finished(n, "writer");
    assert_eq!(std::fs::read_to_string(path.join("greeting")).expect("the file on the node"), "hello-from-writer\n");
    delete_pod(n, "writer");

    // A second pod sees it through a read-only mount of the same claim.
    apply(
        n,
        "reader.yaml",
        &pod(
            "reader",
            &node,
            "data",
            true,
            "cat /data/greeting; touch /data/x 2>/dev/null && echo writable || echo read-only",
        ),
    );
    let logs = finished(n, "reader");
    assert_eq!(logs, "hello-from-writer\nread-only\n");
    delete_pod(n, "reader");

    // A pod whose claim is not bound yet waits (FailedMount) and starts once it is bound.
    apply(n, "late.yaml", &claim("late", None));
    apply(n, "early.yaml", &pod("early", &node, "late", false, "echo started > /data/started"));
    n.wait_for("the FailedMount event of the waiting pod", READY, |n| {
        let ev = n.try_kubectl(&["get", "events", "--field-selector", "involvedObject.name=early"])?;
        if ev.contains("FailedMount") && ev.contains("PVC is not bound") {
            Ok(())
        } else {
            Err(format!("events: {ev}"))
        }
    });
    let phase = n.kubectl_ok(&["get", "pod", "early", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Pending");
    n.kubectl_ok(&["annotate", "pvc", "late", &format!("volume.kubernetes.io/selected-node={node}")]);
    finished(n, "early");
    delete_pod(n, "early");

    // The claims go: the volumes are deleted and the agent removes their directories.
    n.kubectl_ok(&["delete", "pvc", "data", "late"]);
    n.wait_for("the volumes and their directories to go away", Duration::from_secs(90), |n| {
        let pvs = n.try_kubectl(&["get", "pv", "-o", "name"])?;
        let dirs: Vec<String> = std::fs::read_dir(&storage)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if pvs.trim().is_empty() && dirs.is_empty() {
            Ok(())
        } else {
            Err(format!("volumes: {pvs:?}; directories in {}: {dirs:?} (was {pv})", storage.display()))
        }
    });

    let problems = cluster.shutdown();
    assert!(problems.is_empty(), "left behind after teardown: {problems:?}");
}
