//! `kubectl exec`, `cp`, `attach` and `port-forward` with real kubectl 1.32 against one skiff
//! node (issue #4: pods exec/attach): WebSocket v5 from kubectl through the API server's upgrade
//! proxy to the kubelet, and containerd Tasks.Exec underneath. Then a container's own stdin:
//! `kubectl attach -i`, `kubectl run -i --rm` and `kubectl run -it` through the attach-mode
//! logger that owns a stdin container's FIFOs. Last, the Python `kubernetes` client's exec,
//! attach and port-forward over the v5 and v4 channel protocols (`tests/python/stream_check.py`).

use crate::harness::{self, Cluster, Node, BUSYBOX_IMAGE};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const READY: Duration = Duration::from_secs(60);

/// kubectl 1.32 (the `kubectl` on PATH may be newer; 1.32 is the client skiff promises).
const KUBECTL_132: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

/// `sh -c SCRIPT` inside the node's namespace, where `$K` is kubectl 1.32 with the node's
/// kubeconfig (so tests can pipe into kubectl).
fn sh(n: &Node, script: &str) -> Command {
    let mut cmd = n.netns.command("sh");
    let k = format!(
        "{KUBECTL_132} --kubeconfig {} --cache-dir {} --request-timeout=30s",
        n.kubeconfig.display(),
        n.data_dir.join("kubectl-cache").display()
    );
    cmd.env("K", k).args(["-c", script]);
    cmd
}

fn run_sh(n: &Node, script: &str) -> harness::Run {
    harness::run(&mut sh(n, script), Duration::from_secs(60)).unwrap_or_else(|e| panic!("{script}: {e}"))
}

fn pod_manifest(name: &str, command: &str, restart: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"restartPolicy":"{restart}",
        "terminationGracePeriodSeconds":1,
        "containers":[{{"name":"main","image":"{BUSYBOX_IMAGE}","command":["sh","-c","{command}"]}}]}}}}"#
    )
}

fn wait_running(n: &mut Node, pod: &str) {
    n.wait_for(&format!("pod {pod} Running"), READY, |n| {
        let out = n.try_kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase} {.metadata.uid}"])?;
        let mut f = out.split_whitespace();
        let (phase, uid) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        n.remember_pods([uid.to_string()]);
        if phase == "Running" {
            Ok(())
        } else {
            Err(format!("phase {phase:?}"))
        }
    });
}

#[test]
fn kubectl_exec_cp_attach_and_port_forward_work_against_busybox_pods() {
    if !harness::require(harness::NODE_TOOLS) {
        return;
    }
    if !Path::new(KUBECTL_132).is_file() {
        assert!(!harness::in_ci(), "{KUBECTL_132} missing under CI=true");
        eprintln!("SKIPPED: {KUBECTL_132} missing");
        return;
    }
    let mut cluster = Cluster::single_server(READY);
    let n = cluster.server();
    let work = tempfile::tempdir().expect("temp dir");

    let manifest = work.path().join("sleeper.json");
    std::fs::write(&manifest, pod_manifest("sleeper", "sleep 3600", "Always")).expect("write manifest");
    n.kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
    wait_running(n, "sleeper");

    // Output, then the exit code becomes kubectl's (NonZeroExitCode status on channel 3).
    let r = run_sh(n, "$K exec sleeper -- sh -c 'echo hi; echo oops >&2; exit 3'");
    assert_eq!(r.status.code(), Some(3), "exit code: {r}");
    assert_eq!(r.stdout, "hi\n", "{r}");
    assert!(r.stderr.contains("oops"), "remote stderr reaches kubectl's stderr: {r}");
    assert!(r.stderr.contains("command terminated with exit code 3"), "{r}");

    // stdin round-trips, and its end ([255,0] → CloseIO) lets `cat` finish.
    let r = run_sh(n, "printf 'data\\nmore' | $K exec -i sleeper -- cat");
    assert!(r.ok(), "{r}");
    assert_eq!(r.stdout, "data\nmore");
    let big = work.path().join("big.bin");
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &blob).expect("write blob");
    let r = run_sh(n, &format!("$K exec -i sleeper -- md5sum < {}", big.display()));
    let local = harness::run_ok(Command::new("md5sum").arg(&big), Duration::from_secs(10)).expect("md5sum");
    assert_eq!(r.stdout.split_whitespace().next(), local.split_whitespace().next(), "300 kB through stdin: {r}");

    // A tty: `script` gives kubectl a terminal, so `-it` allocates a pty in the container and
    // kubectl sends its size on the resize channel.
    let r = run_sh(n, "script -qec \"stty cols 123 rows 45; $K exec -it sleeper -- sh -c 'stty size; tty'\" /dev/null");
    assert!(r.ok(), "{r}");
    assert!(r.stdout.contains("45 123"), "the pty has the client's size: {r}");
    assert!(r.stdout.contains("/dev/pts/"), "a pty was allocated: {r}");

    // kubectl cp in (tar -x with stdin closed by [255,0]) and out (tar c on stdout).
    let src = work.path().join("in.txt");
    std::fs::write(&src, "copied through the exec stream\n").expect("write src");
    let r = run_sh(n, &format!("$K cp {} sleeper:/tmp/in.txt", src.display()));
    assert!(r.ok(), "cp into the pod: {r}");
    let r = run_sh(n, "$K exec sleeper -- cat /tmp/in.txt");
    assert_eq!(r.stdout, "copied through the exec stream\n", "{r}");
    let dst = work.path().join("out.txt");
    let r = run_sh(n, &format!("$K cp sleeper:/tmp/in.txt {}", dst.display()));
    assert!(r.ok(), "cp out of the pod: {r}");
    assert_eq!(std::fs::read_to_string(&dst).unwrap_or_default(), "copied through the exec stream\n");

    // Errors users can meet.
    let r = run_sh(n, "$K exec sleeper -c nope -- true");
    assert!(!r.ok() && r.stderr.contains("container nope is not valid for pod sleeper"), "{r}");
    let r = run_sh(n, "$K exec sleeper -- /no/such/program");
    assert!(!r.ok(), "a missing program fails: {r}");
    let r = run_sh(n, "$K get --raw '/api/v1/namespaces/default/pods/sleeper/exec?command=true&stdout=true'");
    assert!(!r.ok() && r.stderr.contains("Upgrade request required"), "a plain GET is refused: {r}");

    // attach relays what the container writes from now on and ends when it exits.
    std::fs::write(
        work.path().join("talker.json"),
        pod_manifest("talker", "sleep 4; for i in 1 2 3; do echo tick $i; sleep 1; done", "Never"),
    )
    .expect("write manifest");
    n.kubectl_ok(&["apply", "-f", work.path().join("talker.json").to_str().expect("utf-8 path")]);
    wait_running(n, "talker");
    let r = run_sh(n, "$K attach talker");
    assert!(r.stdout.contains("tick 3"), "attach shows the container's output: {r}");
    n.wait_for("talker Succeeded", READY, |n| {
        let p = n.try_kubectl(&["get", "pod", "talker", "-o", "jsonpath={.status.phase}"])?;
        if p == "Succeeded" {
            Ok(())
        } else {
            Err(p)
        }
    });
    let r = run_sh(n, "$K exec talker -- true");
    assert!(!r.ok() && r.stderr.contains("completed pod"), "no exec into a finished pod: {r}");

    // port-forward: SPDY/3 inside the WebSocket, to busybox httpd in the pod's network namespace.
    std::fs::write(
        work.path().join("web.json"),
        pod_manifest(
            "web",
            "mkdir -p /www && echo hello-pf > /www/index.html && exec httpd -f -p 8080 -h /www",
            "Always",
        ),
    )
    .expect("write manifest");
    n.kubectl_ok(&["apply", "-f", work.path().join("web.json").to_str().expect("utf-8 path")]);
    wait_running(n, "web");
    let pf_log = work.path().join("pf.log");
    let script = format!(
        "$K port-forward pod/web 18080:8080 > {log} 2>&1 & PF=$!
         for i in $(seq 100); do grep -q Forwarding {log} && break; sleep 0.1; done
         busybox wget -qO- http://127.0.0.1:18080/; busybox wget -qO- http://127.0.0.1:18080/index.html
         kill $PF; wait $PF; cat {log}",
        log = pf_log.display()
    );
    let r = run_sh(n, &script);
    assert_eq!(r.stdout.matches("hello-pf").count(), 2, "two connections through one port-forward: {r}");
    assert!(r.stdout.contains("Forwarding from 127.0.0.1:18080 -> 8080"), "{r}");
    assert!(!r.stdout.contains("error"), "{r}");

    n.kubectl_ok(&["delete", "pod", "sleeper", "talker", "web", "--wait=true"]);
    let problems = cluster.shutdown();
    assert!(problems.is_empty(), "left behind after teardown: {problems:?}");
}

fn stdin_pod_manifest(name: &str, command: &str, restart: &str, stdin_once: bool) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"restartPolicy":"{restart}",
        "terminationGracePeriodSeconds":1,
        "containers":[{{"name":"main","image":"{BUSYBOX_IMAGE}","stdin":true,"stdinOnce":{stdin_once},
        "command":["sh","-c","{command}"]}}]}}}}"#
    )
}

fn wait_gone(n: &mut Node, pod: &str) {
    n.wait_for(&format!("pod {pod} deleted"), READY, |n| {
        let r = n.kubectl(&["get", "pod", pod, "-o", "name"]);
        if !r.ok() && r.stderr.contains("NotFound") {
            Ok(())
        } else {
            Err(format!("still there: {r}"))
        }
    });
}

#[test]
fn kubectl_attach_i_and_run_i_rm_and_run_it_reach_a_containers_stdin() {
    if !harness::require(harness::NODE_TOOLS) {
        return;
    }
    if !Path::new(KUBECTL_132).is_file() {
        assert!(!harness::in_ci(), "{KUBECTL_132} missing under CI=true");
        eprintln!("SKIPPED: {KUBECTL_132} missing");
        return;
    }
    let mut cluster = Cluster::single_server(READY);
    let n = cluster.server();
    let work = tempfile::tempdir().expect("temp dir");

    // A long-running reader with stdin but not stdinOnce: every attach may type into it, and
    // the end of one client's input detaches without closing the container's stdin.
    let manifest = work.path().join("reader.json");
    std::fs::write(
        &manifest,
        stdin_pod_manifest("reader", "while read l; do echo got $l; done; echo stdin closed", "Always", false),
    )
    .expect("write manifest");
    n.kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
    wait_running(n, "reader");
    // Output written before an attach is not replayed; what the input causes comes back. The
    // pause keeps kubectl's stdin open until the answer is back (at stdin EOF it detaches).
    let r = run_sh(n, "(echo one; sleep 3) | $K attach -i reader -c main");
    assert!(r.ok(), "{r}");
    assert!(r.stdout.contains("got one"), "input reached the container and its answer came back: {r}");
    let r = run_sh(n, "(echo two; sleep 3) | $K attach -i reader -c main");
    assert!(r.ok() && r.stdout.contains("got two") && !r.stdout.contains("got one"), "a second attach: {r}");
    assert!(!r.stdout.contains("stdin closed"), "the container's stdin stays open between attaches: {r}");
    let phase = n.kubectl_ok(&["get", "pod", "reader", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Running", "detaching leaves the container running");
    // Output still goes to the CRI log.
    let logs = n.kubectl_ok(&["logs", "reader"]);
    assert_eq!(logs, "got one\ngot two\n", "kubectl logs sees the attached output");

    // The logger that owns the FIFOs outlives the agent: after a restart of skiff the same
    // container still takes input, and its output still reaches the client and the log.
    n.restart(Duration::from_secs(30));
    n.wait_api(READY);
    let node = n.name.clone();
    n.wait_ready(&node, READY);
    let r = run_sh(n, "(echo three; sleep 3) | $K attach -i reader -c main");
    assert!(r.ok() && r.stdout.contains("got three"), "attach after an agent restart: {r}");
    let rc = n.kubectl_ok(&["get", "pod", "reader", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"]);
    assert_eq!(rc, "0", "the container was re-adopted, not restarted");
    assert_eq!(n.kubectl_ok(&["logs", "reader"]), "got one\ngot two\ngot three\n");

    // Input for a container without stdin is ignored; its output is still relayed.
    std::fs::write(
        work.path().join("quiet.json"),
        pod_manifest("quiet", "sleep 4; echo tick; sleep 1; echo tock", "Never"),
    )
    .expect("write manifest");
    n.kubectl_ok(&["apply", "-f", work.path().join("quiet.json").to_str().expect("utf-8 path")]);
    wait_running(n, "quiet");
    let r = run_sh(n, "echo ignored | $K attach -i quiet");
    assert!(r.ok(), "attach -i to a container without stdin is no error: {r}");
    assert!(r.stdout.contains("tock"), "its output is relayed until it exits: {r}");

    // kubectl run -i --rm: stdinOnce, so the end of the piped input closes the container's
    // stdin; kubectl returns the container's exit code and deletes the pod.
    let image = BUSYBOX_IMAGE;
    let r = run_sh(
        n,
        &format!(
            "echo hello | $K run -i --rm --restart=Never once --image={image} -- sh -c 'read x; echo got $x; exit 3'"
        ),
    );
    assert_eq!(r.status.code(), Some(3), "the container's exit code: {r}");
    assert!(r.stdout.contains("got hello"), "{r}");
    assert!(r.stdout.contains("pod \"once\" deleted"), "--rm deleted the pod: {r}");
    wait_gone(n, "once");
    // stdin EOF reaches a container that reads to the end.
    let r = run_sh(
        n,
        &format!("printf 'a\\nb\\n' | $K run -i --rm --restart=Never eof --image={image} -- sh -c 'wc -l; echo done'"),
    );
    assert!(r.ok(), "{r}");
    assert!(r.stdout.contains('2') && r.stdout.contains("done"), "cat-like readers see EOF: {r}");
    wait_gone(n, "eof");

    // kubectl run -it: `script` gives kubectl a terminal, so the pod gets a tty and kubectl sends
    // its size on channel 4 (ResizePty on the container's pty) before the delayed input.
    let r = run_sh(
        n,
        &format!(
            "(sleep 3; printf 'hello\\r') | script -qec \"stty cols 123 rows 45; $K run -it --rm --restart=Never tty \
             --image={image} -- sh -c 'read x; stty size; tty; echo got \\$x'\" /dev/null"
        ),
    );
    assert!(r.ok(), "{r}");
    assert!(r.stdout.contains("45 123"), "the container's pty has kubectl's size: {r}");
    assert!(r.stdout.contains("/dev/pts/"), "the container has a pty: {r}");
    assert!(r.stdout.contains("got hello"), "typed input reached it: {r}");
    wait_gone(n, "tty");

    n.kubectl_ok(&["delete", "pod", "reader", "quiet", "--wait=true"]);
    let problems = cluster.shutdown();
    assert!(problems.is_empty(), "left behind after teardown: {problems:?}");
}

/// The official Python `kubernetes` client (`kubernetes.stream.stream`/`portforward`), which
/// offers `v5.channel.k8s.io` and `v4.channel.k8s.io` and speaks the v4 channel protocol for
/// port-forward: `tests/python/stream_check.py` runs inside the node's namespace against one
/// node, through the API server's relay to the kubelet.
#[test]
fn python_client_exec_attach_and_port_forward_over_the_v4_and_v5_channel_protocols() {
    if !harness::require(harness::NODE_TOOLS) {
        return;
    }
    let has_client =
        Command::new("python3").args(["-c", "import kubernetes"]).output().is_ok_and(|o| o.status.success());
    if !has_client {
        assert!(!harness::in_ci(), "the Python kubernetes client is required under CI=true");
        eprintln!("SKIPPED: python3 with the kubernetes package is not installed");
        return;
    }
    let mut cluster = Cluster::single_server(READY);
    let n = cluster.server();
    let work = tempfile::tempdir().expect("temp dir");
    for (name, manifest) in [
        ("sleeper", pod_manifest("sleeper", "sleep 3600", "Always")),
        ("reader", stdin_pod_manifest("reader", "while read l; do echo got $l; done", "Always", false)),
        (
            "web",
            pod_manifest(
                "web",
                "mkdir -p /www && echo hello-pf > /www/index.html && exec httpd -f -p 8080 -h /www",
                "Always",
            ),
        ),
    ] {
        let path = work.path().join(format!("{name}.json"));
        std::fs::write(&path, manifest).expect("write manifest");
        n.kubectl_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
    }
    for pod in ["sleeper", "reader", "web"] {
        wait_running(n, pod);
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/stream_check.py");
    let mut cmd = n.netns.command("python3");
    cmd.arg(script).arg(&n.kubeconfig).arg("default");
    let r = harness::run(&mut cmd, Duration::from_secs(180)).unwrap_or_else(|e| panic!("stream_check.py: {e}"));
    eprintln!("{}", r.stdout);
    assert!(r.ok() && r.stdout.contains("stream checks passed"), "{r}\n{}", n.context());

    n.kubectl_ok(&["delete", "pod", "sleeper", "reader", "web", "--wait=true"]);
    let problems = cluster.shutdown();
    assert!(problems.is_empty(), "left behind after teardown: {problems:?}");
}
