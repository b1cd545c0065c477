//! Stdio for containers started with `stdin: true`, and `kubectl attach` sessions to them.
//!
//! containerd 1.6's shim ignores the stdin path when stdout is a `binary://` log URI (its binary
//! IO has no stdin), so these containers get plain FIFOs instead, in a short per-container
//! directory `<run>/attach/<16 hex digits>/` holding `stdin`, `stdout`, `stderr` (none with a
//! tty: the shim wires the pty to stdout and ignores stderr) and the attach socket `sock`. The
//! order matters and is what this module owns:
//! 1. [`prepare`]: make the FIFOs, open the output read ends non-blocking and stdin read-write (so
//!    neither open waits for the other side), and bind the attach socket.
//! 2. Tasks.Create with those paths: the shim's blocking opens of the FIFOs find our ends, and
//!    once Create returns the shim's writers are open (so EOF on our read ends will mean the
//!    container's output has ended, never "no writer yet").
//! 3. [`PreparedIo::spawn_logger`]: start `skiff logger` in attach mode with those descriptors
//!    inherited, in its own session (it must outlive the agent: the shim holds its own read end
//!    of each output FIFO, so without a reader the container would stall once a pipe filled).
//!    The task has not started yet, so no output can be missed; the socket already accepts.
//! 4. Tasks.Start.
//!
//! The logger is the agent's child rather than the shim's (no shim IO mode both honours stdin
//! and starts a logger); when the agent exits it is re-parented like the shim itself.
//!
//! [`connect`] is the agent's end of an attach: it speaks [`super::attach_proto`] to the logger
//! and turns the socket into channels for the kubelet, calling containerd (through
//! [`TaskControl`]) for what only the shim can do: CloseIO when a `stdinOnce` stdin ends (the shim
//! holds its own stdin writer so that it can close stdin on request) and ResizePty.
//!
//! Unix socket addresses are limited to 108 bytes and data dirs can be long, so the socket is
//! always bound and dialled through `/proc/self/fd/<dir fd>/sock`, which is short whatever the
//! directory's path.

use super::attach_proto::{self as proto, Ack, EndReason, Hello, Kind};
use super::{Result, RuntimeError, TermSize};
use async_trait::async_trait;
use bytes::Bytes;
use sha2::Digest;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The attach socket's name inside the container's FIFO directory.
pub const SOCKET_NAME: &str = "sock";

/// How long the agent waits for the logger's answer to its hello.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Which of the container's streams a client wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An attach session to a container's main process. Read `stdout`/`stderr` until they end, then
/// `end` says why. Dropping the session detaches (the container keeps running).
pub struct AttachSession {
    /// The container has a terminal: all output comes on `stdout`, resizes apply.
    pub tty: bool,
    /// The container's `stdinOnce`: its stdin closes when this session's stdin ends (unless tty).
    pub stdin_once: bool,
    /// Input for the container's stdin; dropping the sender ends this client's stdin. `None` if
    /// the client did not ask for stdin or the container's stdin has already been closed.
    pub stdin: Option<mpsc::Sender<Bytes>>,
    pub stdout: mpsc::Receiver<Bytes>,
    /// Ends at once with a tty.
    pub stderr: mpsc::Receiver<Bytes>,
    /// Terminal resizes (ignored without a tty).
    pub resize: mpsc::UnboundedSender<TermSize>,
    /// Why the output ended: `Ok` when the container closed it (exited), `Err` with a message
    /// for the user otherwise (dropped as too slow, logger gone).
    pub end: oneshot::Receiver<std::result::Result<(), String>>,
    /// Closes the connection when the session is dropped.
    pub detach_on_drop: DropGuard,
}

/// What an attach needs from containerd for the container's main process.
#[async_trait]
pub trait TaskControl: Send + Sync + 'static {
    /// CloseIO{stdin}: the shim closes its own writer of the stdin FIFO.
    async fn close_stdin(&self);
    /// ResizePty of the main process's terminal.
    async fn resize(&self, size: TermSize);
}

/// [`TaskControl`] over containerd's Tasks service, for the main process (exec id "").
pub struct ContainerdTask {
    pub client: super::client::Client,
    pub container_id: String,
}

#[async_trait]
impl TaskControl for ContainerdTask {
    async fn close_stdin(&self) {
        use containerd_client::services::v1 as api;
        let c = &self.client;
        let r = api::CloseIoRequest { container_id: self.container_id.clone(), exec_id: String::new(), stdin: true };
        // NotFound: the container exited meanwhile, and its stdin with it.
        if let Err(s) = c.tasks().close_io(c.req(r)).await {
            tracing::debug!(container = %self.container_id, error = %s.message(), "CloseIO of the container's stdin failed");
        }
    }

    async fn resize(&self, size: TermSize) {
        use containerd_client::services::v1 as api;
        let c = &self.client;
        let r = api::ResizePtyRequest {
            container_id: self.container_id.clone(),
            exec_id: String::new(),
            width: size.width.into(),
            height: size.height.into(),
        };
        if let Err(s) = c.tasks().resize_pty(c.req(r)).await {
            tracing::debug!(container = %self.container_id, error = %s.message(), "ResizePty failed");
        }
    }
}

/// The container's FIFO directory: short (a hash of the id) so paths stay readable in `ls`, and
/// unique per container id.
pub fn dir_for(run_dir: &Path, container_id: &str) -> PathBuf {
    let h = sha2::Sha256::digest(container_id.as_bytes());
    run_dir.join("attach").join(&hex::encode(h)[..16])
}

fn io_err(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let msg = format!("{what} {}", p.display());
    move |e| RuntimeError::Other(format!("{msg}: {e}"))
}

/// `/proc/self/fd/<fd of dir>/<name>`: a socket address that fits in `sockaddr_un` whatever the
/// directory's path (see the module header). `dir` must stay open while it is used.
fn short_addr(dir: &File, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

fn open_dir(dir: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(dir)
}

/// Binds a unix socket at `dir/name`, however long `dir` is.
pub fn bind_in(dir: &Path, name: &str) -> std::io::Result<UnixListener> {
    let d = open_dir(dir)?;
    UnixListener::bind(short_addr(&d, name))
}

/// Connects to the unix socket at `dir/name`, however long `dir` is. Non-blocking (a logger
/// that stopped accepting must not hold a runtime thread), at most [`ACK_TIMEOUT`].
pub async fn connect_in(dir: &Path, name: &str) -> std::io::Result<tokio::net::UnixStream> {
    let d = open_dir(dir)?;
    // `d` stays open until the connect has completed: the address goes through it.
    let r = tokio::time::timeout(ACK_TIMEOUT, tokio::net::UnixStream::connect(short_addr(&d, name))).await;
    drop(d);
    r.map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the attach socket did not accept"))?
}

/// The FIFOs and socket of one container, opened and ready for Tasks.Create.
pub struct PreparedIo {
    pub dir: PathBuf,
    pub stdin_path: PathBuf,
    pub stdout_path: PathBuf,
    /// `None` with a tty.
    pub stderr_path: Option<PathBuf>,
    stdin: File,
    stdout: File,
    stderr: Option<File>,
    listener: UnixListener,
}

fn mkfifo(p: &Path) -> Result<()> {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)
        .map_err(|e| RuntimeError::Other(format!("mkfifo {}: {e}", p.display())))
}

fn open_reader(p: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    mkfifo(p)?;
    // Non-blocking: a FIFO's read end opens at once, without a writer.
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p).map_err(io_err("open", p))
}

/// Step 1 (module header): a fresh directory with the FIFOs and the bound socket.
pub fn prepare(dir: &Path, tty: bool) -> Result<PreparedIo> {
    use std::os::unix::fs::DirBuilderExt;
    // A leftover of an earlier container with the same id (ids are random, so only after a
    // crash mid-start) would make mkfifo fail.
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", dir)(e)),
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err("create", dir))?;
    let stdin_path = dir.join("stdin");
    mkfifo(&stdin_path)?;
    // Read-write: never blocks, never ENXIO, and keeps a writer on the FIFO so the container's
    // stdin stays open while nobody is attached.
    let stdin =
        std::fs::OpenOptions::new().read(true).write(true).open(&stdin_path).map_err(io_err("open", &stdin_path))?;
    let stdout_path = dir.join("stdout");
    let stdout = open_reader(&stdout_path)?;
    let (stderr_path, stderr) = if tty {
        (None, None)
    } else {
        let p = dir.join("stderr");
        let f = open_reader(&p)?;
        (Some(p), Some(f))
    };
    let listener = bind_in(dir, SOCKET_NAME).map_err(io_err("bind attach socket in", dir))?;
    Ok(PreparedIo { dir: dir.to_path_buf(), stdin_path, stdout_path, stderr_path, stdin, stdout, stderr, listener })
}

impl PreparedIo {
    /// The logger's arguments after `logger`, given the descriptor numbers it inherits.
    fn logger_args(&self, log_path: &Path, tty: bool, stdin_once: bool) -> Vec<String> {
        let mut a = vec![
            format!("--path={}", log_path.display()),
            format!("--attach-dir={}", self.dir.display()),
            format!("--stdout-fd={}", self.stdout.as_raw_fd()),
            format!("--stdin-fd={}", self.stdin.as_raw_fd()),
            format!("--listen-fd={}", self.listener.as_raw_fd()),
        ];
        if let Some(e) = &self.stderr {
            a.push(format!("--stderr-fd={}", e.as_raw_fd()));
        }
        if tty {
            a.push("--tty".into());
        }
        if stdin_once {
            a.push("--stdin-once".into());
        }
        a
    }

    /// Step 3 (module header): starts `<logger> logger …` with our descriptors inherited, in a
    /// new session, and closes the agent's copies. Returns the logger's pid.
    pub fn spawn_logger(self, logger: &Path, log_path: &Path, tty: bool, stdin_once: bool) -> Result<u32> {
        let args = self.logger_args(log_path, tty, stdin_once);
        let mut fds = vec![self.stdin.as_raw_fd(), self.stdout.as_raw_fd(), self.listener.as_raw_fd()];
        fds.extend(self.stderr.as_ref().map(|e| e.as_raw_fd()));
        let mut cmd = tokio::process::Command::new(logger);
        cmd.arg("logger").args(&args);
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        // Not the agent's cwd: a long-lived process should pin nothing of the agent's (and
        // tools that find a node's processes by their directory find it with the FIFOs).
        cmd.current_dir(&self.dir);
        // stderr stays the agent's: the logger's rare diagnostics land in the agent's log.
        cmd.kill_on_drop(false);
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, setsid) run. They
        // clear close-on-exec on exactly our descriptors, in the child only, so no other process
        // the agent spawns meanwhile inherits them; the numbers stay the ones in `args`.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &fds {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Its own session: a signal to the agent's process group (a service manager
                // stopping skiff, a terminal's ^C) does not reach it.
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| RuntimeError::Other(format!("starting the attach logger {}: {e}", logger.display())))?;
        let pid = child.id().unwrap_or(0);
        // Dropping the Child leaves the process running; tokio reaps it when it exits.
        drop(child);
        Ok(pid)
    }
}

/// Frames from an async stream. `Ok(None)`: clean end between frames.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::result::Result<Option<proto::Frame>, proto::ReadError> {
    let mut h = [0u8; proto::HEADER];
    match r.read(&mut h[..1]).await? {
        0 => return Ok(None),
        _ => r.read_exact(&mut h[1..]).await?,
    };
    let (kind, len) = proto::parse_header(h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(proto::Frame { kind, payload }))
}

/// Attaches to the logger serving `dir`'s socket (see the module header).
pub async fn connect(dir: &Path, opts: AttachOptions, control: Arc<dyn TaskControl>) -> Result<AttachSession> {
    let stream = connect_in(dir, SOCKET_NAME).await.map_err(|e| match e.kind() {
        // The logger removes its socket when the container's output has ended.
        std::io::ErrorKind::NotFound => RuntimeError::NotFound("its output has ended".into()),
        // The socket is there but nobody listens: the logger died without finishing, and the
        // container's output is no longer drained (it will stall once a pipe fills).
        std::io::ErrorKind::ConnectionRefused => {
            tracing::warn!(dir = %dir.display(), "a stdin container's attach logger is gone");
            RuntimeError::Other(format!(
                "the container's stdio logger is not running (attach socket {} refuses connections); its output is \
                 no longer logged, restart the pod",
                dir.join(SOCKET_NAME).display()
            ))
        }
        _ => RuntimeError::Other(format!("connecting to the container's attach socket in {}: {e}", dir.display())),
    })?;
    let (mut rx, mut tx) = stream.into_split();
    let hello = Hello { stdin: opts.stdin, stdout: opts.stdout, stderr: opts.stderr };
    tx.write_all(&proto::json_frame(Kind::Hello, &hello))
        .await
        .map_err(|e| RuntimeError::Other(format!("attach handshake: {e}")))?;
    let ack: Ack = match tokio::time::timeout(ACK_TIMEOUT, read_frame(&mut rx)).await {
        Err(_) => return Err(RuntimeError::Other("the container's logger did not answer the attach".into())),
        Ok(Ok(Some(f))) if f.kind == Kind::Ack => {
            proto::decode_json("ack", &f.payload).map_err(|e| RuntimeError::Other(e.to_string()))?
        }
        Ok(Ok(Some(f))) => {
            return Err(RuntimeError::Other(
                proto::ProtoError::Unexpected { expected: Kind::Ack, got: f.kind }.to_string(),
            ))
        }
        Ok(Ok(None)) => return Err(RuntimeError::NotFound("its output has ended".into())),
        Ok(Err(e)) => return Err(RuntimeError::Other(format!("attach handshake: {e}"))),
    };
    if ack.ended {
        return Err(RuntimeError::NotFound("its output has ended".into()));
    }

    let cancel = CancellationToken::new();
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(16);
    let (err_tx, err_rx) = mpsc::channel::<Bytes>(16);
    let (end_tx, end_rx) = oneshot::channel();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let end = loop {
            let f = tokio::select! {
                _ = stop.cancelled() => return,
                f = read_frame(&mut rx) => f,
            };
            match f {
                // A receiver the kubelet dropped just means nobody wants that stream.
                Ok(Some(f)) if f.kind == Kind::Stdout => {
                    let _ = out_tx.send(Bytes::from(f.payload)).await;
                }
                Ok(Some(f)) if f.kind == Kind::Stderr => {
                    let _ = err_tx.send(Bytes::from(f.payload)).await;
                }
                Ok(Some(f)) if f.kind == Kind::End => {
                    break match proto::decode_json::<proto::End>("end", &f.payload) {
                        Ok(proto::End { reason: EndReason::Exited, .. }) => Ok(()),
                        Ok(proto::End { reason: EndReason::TooSlow, limit }) => Err(format!(
                            "attach output dropped: this client fell more than {} KiB behind the container's \
                             output (the container is never made to wait); attach again or use kubectl logs",
                            limit / 1024
                        )),
                        Err(e) => Err(e.to_string()),
                    };
                }
                Ok(Some(f)) => break Err(format!("unexpected {:?} frame from the container's logger", f.kind)),
                Ok(None) => break Err("the container's logger closed the attach connection".into()),
                Err(e) => break Err(format!("reading from the container's logger: {e}")),
            }
        };
        let _ = end_tx.send(end);
    });

    let stdin = if opts.stdin && ack.stdin_open {
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(16);
        let (stop, control) = (cancel.clone(), control.clone());
        let close_container_stdin = ack.stdin_once && !ack.tty;
        tokio::spawn(async move {
            let mut ok = true;
            while let Some(b) = in_rx.recv().await {
                // Each WebSocket message is far below the frame limit; split anyway.
                for chunk in b.chunks(proto::MAX_PAYLOAD) {
                    if tx.write_all(&proto::encode(Kind::Stdin, chunk)).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    break;
                }
            }
            if ok {
                let _ = tx.write_all(&proto::encode(Kind::StdinEof, &[])).await;
            }
            // The logger drops its writer on StdinEof; the shim's own writer goes with CloseIO.
            // Both must close before the container reads EOF.
            if close_container_stdin {
                control.close_stdin().await;
            }
            // Keep the write half open: closing it would read as "client gone" to the logger
            // while output is still wanted.
            stop.cancelled().await;
        });
        Some(in_tx)
    } else {
        let stop = cancel.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            drop(tx);
        });
        None
    };

    let (resize_tx, mut resize_rx) = mpsc::unbounded_channel::<TermSize>();
    if ack.tty {
        tokio::spawn(async move {
            while let Some(sz) = resize_rx.recv().await {
                control.resize(sz).await;
            }
        });
    }
    Ok(AttachSession {
        tty: ack.tty,
        stdin_once: ack.stdin_once,
        stdin,
        stdout: out_rx,
        stderr: err_rx,
        resize: resize_tx,
        end: end_rx,
        detach_on_drop: cancel.drop_guard(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::runtime::logger::{serve_attach, AttachConfig};
    use std::io::{Read, Write};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl TaskControl for Recorder {
        async fn close_stdin(&self) {
            self.calls.lock().unwrap().push("close_stdin".into());
        }
        async fn resize(&self, size: TermSize) {
            self.calls.lock().unwrap().push(format!("resize {}x{}", size.width, size.height));
        }
    }

    /// A logger serving a prepared directory, with this test playing the shim: it holds the
    /// write ends of the output FIFOs and the read end of stdin.
    struct Rig {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        log: PathBuf,
        stdout: Option<File>,
        stderr: Option<File>,
        stdin: File,
        logger: std::thread::JoinHandle<()>,
    }

    fn rig(tty: bool, stdin_once: bool, backlog: usize) -> Rig {
        // A long directory: the socket must still bind (the /proc/self/fd route).
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("x".repeat(100)).join("attach");
        let io = prepare(&dir, tty).unwrap();
        assert_eq!(io.stderr_path.is_some(), !tty);
        let stdout = std::fs::OpenOptions::new().write(true).open(&io.stdout_path).unwrap();
        let stderr = io.stderr_path.as_ref().map(|p| std::fs::OpenOptions::new().write(true).open(p).unwrap());
        let stdin = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&io.stdin_path).unwrap()
        };
        let log = tmp.path().join("logs/0.log");
        let cfg = AttachConfig {
            log_path: log.clone(),
            stdout: io.stdout,
            stderr: io.stderr,
            stdin: io.stdin,
            listener: io.listener,
            socket_path: Some(dir.join(SOCKET_NAME)),
            tty,
            stdin_once,
            backlog,
        };
        let logger = std::thread::spawn(move || serve_attach(cfg).unwrap());
        Rig { _tmp: tmp, dir, log, stdout: Some(stdout), stderr, stdin, logger }
    }

    impl Rig {
        /// Reads what the "container" got on stdin within `wait`.
        fn stdin_bytes(&mut self, wait: Duration) -> Vec<u8> {
            let deadline = std::time::Instant::now() + wait;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while std::time::Instant::now() < deadline {
                match self.stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            got
        }

        /// The "container" exits: its output FIFOs close.
        fn exit(&mut self) {
            self.stdout.take();
            self.stderr.take();
        }
    }

    async fn recv(rx: &mut mpsc::Receiver<Bytes>) -> String {
        let b = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("output in time");
        String::from_utf8(b.expect("stream open").to_vec()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn output_from_now_on_reaches_the_client_and_the_log_and_input_reaches_stdin() {
        let mut r = rig(false, false, proto::CLIENT_BACKLOG);
        r.stdout.as_mut().unwrap().write_all(b"before attach\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let rec = Arc::new(Recorder::default());
        let opts = AttachOptions { stdin: true, stdout: true, stderr: true };
        let mut s = connect(&r.dir, opts, rec.clone()).await.unwrap();
        assert!(!s.tty && !s.stdin_once);
        r.stdout.as_mut().unwrap().write_all(b"hello\n").unwrap();
        assert_eq!(recv(&mut s.stdout).await, "hello\n", "output from before the attach is not replayed");
        r.stderr.as_mut().unwrap().write_all(b"oops").unwrap();
        assert_eq!(recv(&mut s.stderr).await, "oops");
        s.stdin.as_ref().unwrap().send(Bytes::from_static(b"typed\n")).await.unwrap();
        assert_eq!(r.stdin_bytes(Duration::from_millis(500)), b"typed\n");
        // Without stdinOnce the end of a client's stdin leaves the container's stdin open.
        s.stdin.take();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rec.calls.lock().unwrap().is_empty(), "no CloseIO without stdinOnce");
        r.exit();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), s.end).await.unwrap().unwrap(), Ok(()));
        tokio::task::spawn_blocking(move || r.logger.join().unwrap()).await.unwrap();
        let log = std::fs::read_to_string(&r.log).unwrap();
        assert!(log.contains(" stdout F before attach\n") && log.contains(" stdout F hello\n"), "{log}");
        assert!(log.contains(" stderr F oops\n"), "a last line without newline is flushed: {log}");
        assert!(!r.dir.join(SOCKET_NAME).exists(), "the socket goes with the logger");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn with_stdin_once_the_first_clients_stdin_end_closes_the_containers_stdin() {
        let mut r = rig(false, true, proto::CLIENT_BACKLOG);
        let rec = Arc::new(Recorder::default());
        let opts = AttachOptions { stdin: true, stdout: true, stderr: false };
        let mut s = connect(&r.dir, opts, rec.clone()).await.unwrap();
        assert!(s.stdin_once);
        s.stdin.as_ref().unwrap().send(Bytes::from_static(b"x\n")).await.unwrap();
        s.stdin.take();
        // Our test "shim" holds no writer, so once the logger lets go the FIFO reads EOF.
        assert_eq!(r.stdin_bytes(Duration::from_secs(2)), b"x\n");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rec.calls.lock().unwrap().as_slice(), ["close_stdin"]);
        // A later client finds stdin closed, and still gets output.
        let s2 = connect(&r.dir, opts, rec.clone()).await.unwrap();
        assert!(s2.stdin.is_none());
        r.stdout.as_mut().unwrap().write_all(b"still here\n").unwrap();
        assert_eq!(recv(&mut s.stdout).await, "still here\n");
        r.exit();
        drop((s, s2));
        tokio::task::spawn_blocking(move || r.logger.join().unwrap()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_tty_container_resizes_through_containerd_and_keeps_stdin_after_a_client_ends_it() {
        let mut r = rig(true, true, proto::CLIENT_BACKLOG);
        let rec = Arc::new(Recorder::default());
        let opts = AttachOptions { stdin: true, stdout: true, stderr: true };
        let mut s = connect(&r.dir, opts, rec.clone()).await.unwrap();
        assert!(s.tty);
        s.resize.send(TermSize { width: 80, height: 24 }).unwrap();
        r.stdout.as_mut().unwrap().write_all(b"$ ").unwrap();
        assert_eq!(recv(&mut s.stdout).await, "$ ", "a prompt without newline shows at once");
        s.stdin.take();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(rec.calls.lock().unwrap().as_slice(), ["resize 80x24"], "stdinOnce with a tty keeps stdin open");
        let s2 = connect(&r.dir, opts, rec.clone()).await.unwrap();
        assert!(s2.stdin.is_some());
        r.exit();
        drop((s, s2));
        tokio::task::spawn_blocking(move || r.logger.join().unwrap()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_client_that_stops_reading_is_dropped_and_the_container_never_waits() {
        let mut r = rig(false, false, 64 * 1024);
        let rec = Arc::new(Recorder::default());
        let opts = AttachOptions { stdin: false, stdout: true, stderr: false };
        let s = connect(&r.dir, opts, rec.clone()).await.unwrap();
        // The session's channel holds 16 messages and the socket buffers some more; past that
        // the client's 64 KiB backlog overflows. The "container" must be able to write 8 MiB.
        let mut out = r.stdout.take().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'y'; 32 * 1024];
            for _ in 0..256 {
                out.write_all(&chunk).unwrap();
            }
        });
        tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
        // Once the client reads again it gets what was in flight, then the end and its reason.
        let AttachSession { mut stdout, end, detach_on_drop: _attached, .. } = s;
        let drained = tokio::spawn(async move {
            let mut n = 0;
            while let Some(b) = stdout.recv().await {
                n += b.len();
            }
            n
        });
        let end = tokio::time::timeout(Duration::from_secs(10), end).await.unwrap().unwrap();
        assert!(drained.await.unwrap() < 8 * 1024 * 1024, "output was dropped, not queued without bound");
        assert!(end.unwrap_err().contains("fell more than 64 KiB behind"), "the slow client is told why");
        r.exit();
        tokio::task::spawn_blocking(move || r.logger.join().unwrap()).await.unwrap();
        assert!(std::fs::metadata(&r.log).unwrap().len() > 8 * 1024 * 1024, "the log got everything");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn attaching_after_the_output_ended_is_not_found() {
        let mut r = rig(false, false, proto::CLIENT_BACKLOG);
        r.exit();
        let dir = r.dir.clone();
        tokio::task::spawn_blocking(move || r.logger.join().unwrap()).await.unwrap();
        let rec = Arc::new(Recorder::default());
        let e = connect(&dir, AttachOptions { stdout: true, ..Default::default() }, rec).await.err().unwrap();
        assert!(matches!(e, RuntimeError::NotFound(_)), "{e}");
    }

    #[test]
    fn fifo_directories_are_short_and_unique_per_container() {
        let a = dir_for(Path::new("/var/lib/skiff/agent/run"), "main-0-0123456789abcdef");
        let b = dir_for(Path::new("/var/lib/skiff/agent/run"), "main-0-0123456789abcdee");
        assert_ne!(a, b);
        assert_eq!(a.file_name().unwrap().len(), 16);
        assert!(a.starts_with("/var/lib/skiff/agent/run/attach"));
    }
}
