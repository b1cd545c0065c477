//! Streams into running containers: `kubectl exec` processes and `kubectl port-forward`
//! connections (guide containerd-native §5, "Exec").
//!
//! An exec is containerd's Tasks.Exec with a Process spec derived from the container's own
//! (same env, cwd, user, capabilities; new args and terminal flag), a unique exec id, and stdio
//! over FIFOs the agent creates under `<run>/exec/<exec id>/` and owns for the process's life:
//! - stdout/stderr: the read ends are opened non-blocking *before* Tasks.Exec, as Go's `cio`
//!   does, and the agent also holds a write end of each until the process has exited. A FIFO
//!   read returns EOF whenever no writer is open, so without that extra writer the reader could
//!   see EOF before the shim opened its end; once the process has exited and the extra writer is
//!   dropped, EOF means the shim has copied everything.
//! - both stdout and stderr FIFOs exist even when the client asked for neither: the 1.6 shim
//!   fails with `opening file ""` when one is empty and terminal is false (guide §5). With a
//!   terminal, stderr is empty (the pty merges the streams).
//! - stdin: opened read-write (never blocks, never ENXIO) before Exec. When the client's stdin
//!   ends the agent closes its end and calls CloseIO{stdin} so the shim closes the process's
//!   stdin (both are needed: the shim holds its own writer so that CloseIO can end the stream).
//! - a tty gets ResizePty for every resize the client sends.
//! - Wait gives the exit code; DeleteProcess frees the exec id; the FIFO directory is removed.
//!   Dropping the [`ExecSession`] before the exit kills the process (SIGKILL), as containerd's
//!   CRI does when the streaming connection goes away.
//!
//! Attach does not live here: a container's output goes through a logger to its CRI log file (so
//! it survives agent restarts); the kubelet follows that file, or for a container with stdin
//! talks to its attach-mode logger ([`super::attach`]).
//!
//! Port-forward connects to `127.0.0.1:PORT` from a short-lived OS thread that `setns`es into the
//! pod's pinned network namespace; the socket stays in that namespace after the thread exits.

use super::client::{call, Client};
use super::{Result, RuntimeError};
use bytes::Bytes;
use containerd_client::services::v1 as api;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The type URL containerd expects for an exec's Process spec (guide §5).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// A terminal size, as kubectl sends it on the resize channel: `{"Width":100,"Height":30}`
/// with capitalised keys (kubectl-streaming guide §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// What to run (the kubelet's view of an exec request).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOptions {
    /// argv; must not be empty.
    pub command: Vec<String>,
    /// Allocate a terminal (stdout and stderr merge into stdout).
    pub tty: bool,
    /// Give the process a stdin the caller writes to; otherwise it reads nothing.
    pub stdin: bool,
    /// The terminal's size at start (OCI `process.consoleSize`), so the first thing the process
    /// does already sees it; later changes go through [`ExecSession::resize`].
    pub initial_size: Option<TermSize>,
}

/// The streams of a running exec. Read `stdout` and `stderr` until they end, then `exit`.
pub struct ExecSession {
    /// The containerd exec id (unique within the container).
    pub exec_id: String,
    /// Bytes for the process's stdin; drop the sender to close it (EOF). `None` without stdin.
    pub stdin: Option<mpsc::Sender<Bytes>>,
    /// The process's stdout (with a tty: the terminal's output). Ends after the process exits.
    pub stdout: mpsc::Receiver<Bytes>,
    /// The process's stderr; ends at once with a tty.
    pub stderr: mpsc::Receiver<Bytes>,
    /// Terminal resizes (ignored without a tty).
    pub resize: mpsc::UnboundedSender<TermSize>,
    /// The exit code, sent once the output has been drained into `stdout`/`stderr`.
    pub exit: oneshot::Receiver<Result<i32>>,
    /// Kills the process if the session is dropped before it exits.
    pub kill_on_drop: DropGuard,
}

/// The exec's Process spec: the container's `process` with new `args` and `terminal`, as
/// containerd's CRI builds it (the exec inherits env, cwd, user, capabilities, rlimits). The
/// `consoleSize` of the container does not apply to a new terminal.
pub fn process_spec(container_spec: &serde_json::Value, opts: &ExecOptions) -> Result<serde_json::Value> {
    if opts.command.is_empty() {
        return Err(RuntimeError::Other("exec: a command is required".into()));
    }
    let mut p = container_spec
        .get("process")
        .filter(|p| p.is_object())
        .cloned()
        .ok_or_else(|| RuntimeError::Other("container spec has no process".into()))?;
    p["args"] = serde_json::json!(opts.command);
    p["terminal"] = serde_json::Value::Bool(opts.tty);
    if let Some(o) = p.as_object_mut() {
        match opts.initial_size.filter(|_| opts.tty) {
            Some(sz) => {
                o.insert("consoleSize".into(), serde_json::json!({"height": sz.height, "width": sz.width}));
            }
            None => {
                o.remove("consoleSize");
            }
        }
        // A command line for Windows only; never meant for an exec here.
        o.remove("commandLine");
    }
    Ok(p)
}

/// A new exec id: letters, digits and `-` (containerd's identifier rules, ≤ 76 characters).
pub fn new_exec_id() -> String {
    format!("exec-{}", &uuid::Uuid::new_v4().simple().to_string()[..20])
}

fn io_err<'a>(what: &str, p: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    let what = what.to_string();
    move |e| RuntimeError::Other(format!("{what} {}: {e}", p.display()))
}

fn mkfifo(p: &Path) -> Result<()> {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)
        .map_err(|e| RuntimeError::Other(format!("mkfifo {}: {e}", p.display())))
}

/// An output FIFO: its non-blocking read end, and a write end held until the process exits.
struct OutFifo {
    path: PathBuf,
    reader: pipe::Receiver,
    keepalive: std::fs::File,
}

fn out_fifo(path: PathBuf) -> Result<OutFifo> {
    use std::os::unix::fs::OpenOptionsExt;
    mkfifo(&path)?;
    let reader = pipe::OpenOptions::new().open_receiver(&path).map_err(io_err("open", &path))?;
    // Succeeds without blocking because a reader exists.
    let keepalive = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(io_err("open", &path))?;
    Ok(OutFifo { path, reader, keepalive })
}

/// Copies a FIFO into a channel until EOF. If the consumer went away it keeps draining, so the
/// process never blocks on a full pipe (guide §8, FIFO backpressure).
async fn pump(mut r: pipe::Receiver, tx: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut open = true;
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if open && tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    open = false;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading exec output failed");
                return;
            }
        }
    }
}

/// Starts `opts.command` in the running task of `container_id`.
pub async fn exec(client: &Client, run_dir: &Path, container_id: &str, opts: &ExecOptions) -> Result<ExecSession> {
    let c = client;
    let rec = match c.containers().get(c.req(api::GetContainerRequest { id: container_id.to_string() })).await {
        Ok(r) => r.into_inner().container.ok_or_else(|| RuntimeError::NotFound(container_id.to_string()))?,
        Err(s) if s.code() == tonic::Code::NotFound => return Err(RuntimeError::NotFound(container_id.to_string())),
        Err(s) => return Err(call("get container")(s).into()),
    };
    let spec: serde_json::Value = rec
        .spec
        .as_ref()
        .and_then(|a| serde_json::from_slice(&a.value).ok())
        .ok_or_else(|| RuntimeError::Other(format!("container {container_id} has no readable OCI spec")))?;
    let process = process_spec(&spec, opts)?;
    let exec_id = new_exec_id();
    let dir = run_dir.join("exec").join(&exec_id);
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let started = start(c, &dir, container_id, &exec_id, opts, &process).await;
    let (stdout, stderr, stdin) = match started {
        Ok(x) => x,
        Err(e) => {
            // Exec may have been registered before Start failed: free the id.
            let _ = c
                .tasks()
                .delete_process(c.req(api::DeleteProcessRequest {
                    container_id: container_id.to_string(),
                    exec_id: exec_id.clone(),
                }))
                .await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };

    let (out_tx, out_rx) = mpsc::channel(16);
    let (err_tx, err_rx) = mpsc::channel(16);
    let mut keepalive = vec![stdout.keepalive];
    let mut readers = vec![tokio::spawn(pump(stdout.reader, out_tx))];
    if let Some(e) = stderr {
        keepalive.push(e.keepalive);
        readers.push(tokio::spawn(pump(e.reader, err_tx)));
    } else {
        drop(err_tx);
    }

    // stdin: copy until the client closes it, then close our end and CloseIO (see header).
    let (stdin_tx, stdin_task) = match stdin {
        Some(mut w) => {
            let (tx, mut rx) = mpsc::channel::<Bytes>(16);
            let (c2, cid, eid) = (c.clone(), container_id.to_string(), exec_id.clone());
            let task = tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if let Err(e) = w.write_all(&b).await {
                        tracing::debug!(error = %e, "writing exec stdin failed");
                        break;
                    }
                }
                drop(w);
                let r = api::CloseIoRequest { container_id: cid, exec_id: eid, stdin: true };
                if let Err(s) = c2.tasks().close_io(c2.req(r)).await {
                    tracing::debug!(error = %s.message(), "CloseIO failed");
                }
            });
            (Some(tx), Some(task))
        }
        None => (None, None),
    };

    let (resize_tx, mut resize_rx) = mpsc::unbounded_channel::<TermSize>();
    let resize_task = if opts.tty {
        let (c2, cid, eid) = (c.clone(), container_id.to_string(), exec_id.clone());
        Some(tokio::spawn(async move {
            while let Some(sz) = resize_rx.recv().await {
                let r = api::ResizePtyRequest {
                    container_id: cid.clone(),
                    exec_id: eid.clone(),
                    width: sz.width.into(),
                    height: sz.height.into(),
                };
                if let Err(s) = c2.tasks().resize_pty(c2.req(r)).await {
                    tracing::debug!(error = %s.message(), "ResizePty failed");
                }
            }
        }))
    } else {
        None
    };

    let cancel = CancellationToken::new();
    let (exit_tx, exit_rx) = oneshot::channel();
    let (c2, cid, eid, stop) = (c.clone(), container_id.to_string(), exec_id.clone(), cancel.clone());
    tokio::spawn(async move {
        let code = tokio::select! {
            r = wait(&c2, &cid, &eid) => r,
            _ = stop.cancelled() => {
                tracing::debug!(container = %cid, exec = %eid, "exec stream gone; killing the process");
                let k = api::KillRequest { container_id: cid.clone(), exec_id: eid.clone(), signal: 9, all: false };
                let _ = c2.tasks().kill(c2.req(k)).await;
                tokio::time::timeout(Duration::from_secs(10), wait(&c2, &cid, &eid))
                    .await
                    .unwrap_or_else(|_| Err(RuntimeError::Other("exec did not exit after SIGKILL".into())))
            }
        };
        // The process is gone: without our extra writers, EOF now means the shim is done.
        drop(keepalive);
        for mut r in readers {
            if tokio::time::timeout(Duration::from_secs(10), &mut r).await.is_err() {
                // A background child still holds the output; stop waiting for it.
                r.abort();
            }
        }
        if let Some(t) = stdin_task {
            t.abort();
        }
        if let Some(t) = resize_task {
            t.abort();
        }
        let d = api::DeleteProcessRequest { container_id: cid.clone(), exec_id: eid.clone() };
        if let Err(s) = c2.tasks().delete_process(c2.req(d)).await {
            tracing::debug!(container = %cid, exec = %eid, error = %s.message(), "DeleteProcess failed");
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = exit_tx.send(code);
    });

    Ok(ExecSession {
        exec_id,
        stdin: stdin_tx,
        stdout: out_rx,
        stderr: err_rx,
        resize: resize_tx,
        exit: exit_rx,
        kill_on_drop: cancel.drop_guard(),
    })
}

/// Creates the FIFOs, registers the exec and starts it.
async fn start(
    c: &Client,
    dir: &Path,
    container_id: &str,
    exec_id: &str,
    opts: &ExecOptions,
    process: &serde_json::Value,
) -> Result<(OutFifo, Option<OutFifo>, Option<pipe::Sender>)> {
    let stdout = out_fifo(dir.join("stdout"))?;
    let stderr = if opts.tty { None } else { Some(out_fifo(dir.join("stderr"))?) };
    let (stdin_path, stdin) = if opts.stdin {
        let p = dir.join("stdin");
        mkfifo(&p)?;
        // Read-write: opening never blocks or fails for want of a reader (Linux FIFO rule).
        let w = pipe::OpenOptions::new().read_write(true).open_sender(&p).map_err(io_err("open", &p))?;
        (p.display().to_string(), Some(w))
    } else {
        (String::new(), None)
    };
    let value = serde_json::to_vec(process).map_err(|e| RuntimeError::Other(e.to_string()))?;
    let req = api::ExecProcessRequest {
        container_id: container_id.to_string(),
        exec_id: exec_id.to_string(),
        stdin: stdin_path,
        stdout: stdout.path.display().to_string(),
        stderr: stderr.as_ref().map(|e| e.path.display().to_string()).unwrap_or_default(),
        terminal: opts.tty,
        spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.into(), value }),
    };
    c.tasks().exec(c.req(req)).await.map_err(|s| match s.code() {
        tonic::Code::NotFound | tonic::Code::FailedPrecondition => {
            RuntimeError::NotFound(format!("container {container_id} is not running: {}", s.message()))
        }
        _ => call("exec")(s).into(),
    })?;
    let r = api::StartRequest { container_id: container_id.to_string(), exec_id: exec_id.to_string() };
    c.tasks().start(c.req(r)).await.map_err(call("start exec"))?;
    if let (true, Some(sz)) = (opts.tty, opts.initial_size) {
        // consoleSize is the runtime's to honour; set the size on the pty as well.
        let r = api::ResizePtyRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            width: sz.width.into(),
            height: sz.height.into(),
        };
        if let Err(s) = c.tasks().resize_pty(c.req(r)).await {
            tracing::debug!(error = %s.message(), "initial ResizePty failed");
        }
    }
    Ok((stdout, stderr, stdin))
}

async fn wait(c: &Client, container_id: &str, exec_id: &str) -> Result<i32> {
    let r = api::WaitRequest { container_id: container_id.to_string(), exec_id: exec_id.to_string() };
    let w = c.tasks().wait(c.req(r)).await.map_err(call("wait exec"))?.into_inner();
    Ok(w.exit_status as i32)
}

/// Connects to `127.0.0.1:port` inside the network namespace pinned at `netns` (`None`: this
/// process's own namespace). `setns(CLONE_NEWNET)` changes only the calling thread, so a fresh
/// thread does it and exits; the socket keeps the namespace it was created in.
pub async fn connect_in_netns(netns: Option<PathBuf>, port: u16) -> Result<tokio::net::TcpStream> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("skiff-portforward".into())
        .spawn(move || {
            let r = (|| -> std::result::Result<std::net::TcpStream, String> {
                if let Some(ns) = &netns {
                    let f = std::fs::File::open(ns).map_err(|e| format!("open {}: {e}", ns.display()))?;
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("setns {}: {e}", ns.display()))?;
                }
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .map_err(|e| format!("dial tcp 127.0.0.1:{port}: {e}"))?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok(s)
            })();
            let _ = tx.send(r);
        })
        .map_err(|e| RuntimeError::Other(format!("port-forward thread: {e}")))?;
    let s =
        rx.await.map_err(|_| RuntimeError::Other("port-forward thread died".into()))?.map_err(RuntimeError::Other)?;
    tokio::net::TcpStream::from_std(s).map_err(|e| RuntimeError::Other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_process_inherits_the_container_process_with_new_args_and_terminal() {
        let spec = serde_json::json!({"process": {"args": ["sleep", "1d"], "env": ["PATH=/bin", "A=b"],
            "cwd": "/work", "user": {"uid": 5, "gid": 6}, "terminal": true, "consoleSize": {"height": 1, "width": 2}}});
        let p = process_spec(
            &spec,
            &ExecOptions { command: vec!["sh".into(), "-c".into(), "id".into()], ..Default::default() },
        )
        .unwrap();
        assert_eq!(p["args"], serde_json::json!(["sh", "-c", "id"]));
        assert_eq!(p["terminal"], false);
        assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "A=b"]));
        assert_eq!((p["cwd"].as_str(), p["user"]["uid"].as_u64()), (Some("/work"), Some(5)));
        assert!(p.get("consoleSize").is_none());
        let tty = ExecOptions {
            command: vec!["sh".into()],
            tty: true,
            initial_size: Some(TermSize { width: 80, height: 24 }),
            ..Default::default()
        };
        assert_eq!(process_spec(&spec, &tty).unwrap()["consoleSize"], serde_json::json!({"height": 24, "width": 80}));
    }

    #[test]
    fn an_exec_needs_a_command_and_a_container_process() {
        let spec = serde_json::json!({"process": {"args": ["x"]}});
        assert!(process_spec(&spec, &ExecOptions::default()).is_err());
        assert!(process_spec(&serde_json::json!({}), &ExecOptions { command: vec!["x".into()], ..Default::default() })
            .is_err());
    }

    #[test]
    fn exec_ids_are_unique_valid_identifiers() {
        let (a, b) = (new_exec_id(), new_exec_id());
        assert_ne!(a, b);
        assert!(a.len() <= 76 && a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
    }

    #[test]
    fn resize_messages_use_kubectls_capitalised_keys() {
        let s: TermSize = serde_json::from_str(r#"{"Width":100,"Height":30}"#).unwrap();
        assert_eq!(s, TermSize { width: 100, height: 30 });
    }

    #[tokio::test]
    async fn output_fifos_deliver_everything_and_end_only_after_the_keepalive_writer_goes() {
        let dir = tempfile::tempdir().unwrap();
        let f = out_fifo(dir.path().join("out")).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let pump = tokio::spawn(pump(f.reader, tx));
        // No writer but ours yet: the reader must not see EOF.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!pump.is_finished());
        {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(&f.path).unwrap();
            w.write_all(b"hello").unwrap();
        }
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"hello"));
        drop(f.keepalive);
        tokio::time::timeout(Duration::from_secs(5), pump).await.unwrap().unwrap();
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_port_forward_connection_reaches_a_listener_in_this_namespace() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let mut s = connect_in_netns(None, port).await.unwrap();
        let (mut a, _) = l.accept().await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // A closed port is an error, not a panic.
        drop(l);
        assert!(connect_in_netns(None, port).await.is_err());
    }
}
