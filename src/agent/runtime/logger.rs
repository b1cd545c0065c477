//! `skiff logger`: started by containerd's shim through a `binary://` log URI. Reads the
//! container's stdout (fd 3) and stderr (fd 4) and appends CRI-format lines to a file.
//!
//! The shim hands the logger fd 3 (stdout), fd 4 (stderr) and fd 5, a pipe it waits on: the task
//! start blocks until fd 5 is closed, so it is closed as soon as the log file is open (guide §5).
//! The logger is the shim's child, so container output outlives the agent and containerd.
//!
//! Attach mode (`--listen-fd …`): for a container with `stdin: true` the agent starts the logger
//! itself (containerd 1.6's shim ignores a stdin path when stdout is a `binary://` URI, so such a
//! container needs plain FIFOs, which the shim never hands to a logger). The agent passes the
//! already-open FIFO ends and a bound unix listener as inherited descriptors (their numbers are
//! arguments), so the FIFOs have a reader before the shim opens them and the socket accepts before
//! the logger has even run. The logger then also serves [`super::attach_proto`] on that socket:
//! each client gets the output from then on through a bounded backlog (a slow client is ended,
//! the container never waits for it), and its input goes to the stdin FIFO, which the logger
//! holds open read-write so the container's stdin stays open while nobody is attached. It runs
//! in its own session, so it outlives the agent just as a shim's logger does, and exits once the
//! container's output has ended and its clients have been told.
//!
//! Line format (the kubelet's CRI log format, as containerd's CRI plugin writes it):
//! `2016-10-06T00:17:09.669794202Z stdout F text`; lines longer than 16 KiB are split into `P`
//! (partial) records followed by a final `F` record.

use super::attach_proto::{self as proto, Ack, EndReason, Hello, Kind, Next, OutQueue};
use crate::cli::LoggerArgs;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest record body before a line is split, as in containerd's CRI plugin (16 KiB).
pub const MAX_RECORD: usize = 16 * 1024;

/// What can stop the logger.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log file (or its directory) could not be created or opened.
    #[error("cannot open log file {path}: {source}; check the kubelet's log directory is writable")]
    Open { path: String, source: std::io::Error },
    /// An attach-mode descriptor argument names no open descriptor (the logger is started by the
    /// agent, not by hand).
    #[error("--{what} {fd} is not an open file descriptor of this process")]
    BadFd { what: &'static str, fd: i32 },
    /// Attach mode needs all of --stdout-fd, --stdin-fd and --listen-fd.
    #[error("attach mode needs --stdout-fd, --stdin-fd and --listen-fd")]
    MissingFd,
}

/// A diagnostic on stderr. Never panics (eprintln! does when stderr is a broken pipe, and an
/// attach-mode logger's stderr is the agent's, which may be long gone).
fn note(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "skiff logger: {msg}");
}

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One CRI log line: timestamp with nanoseconds, stream, `P`/`F` tag, body, newline.
pub fn format_record(ts: chrono::DateTime<chrono::Utc>, stream: Stream, partial: bool, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 48);
    out.extend_from_slice(ts.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(body);
    out.push(b'\n');
    out
}

/// Splits a byte stream into records: `(partial, body)` without the newline.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; returns every record that is complete (a full line or a 16 KiB piece).
    pub fn feed(&mut self, data: &[u8]) -> Vec<(bool, Vec<u8>)> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            match self.pending.iter().position(|b| *b == b'\n') {
                Some(i) if i <= MAX_RECORD => {
                    let mut line: Vec<u8> = self.pending.drain(..=i).collect();
                    line.pop();
                    out.push((false, line));
                }
                _ if self.pending.len() > MAX_RECORD => {
                    out.push((true, self.pending.drain(..MAX_RECORD).collect()));
                }
                _ => break,
            }
        }
        out
    }

    /// End of stream: whatever is left is a final record (no trailing newline was written).
    pub fn finish(&mut self) -> Option<(bool, Vec<u8>)> {
        if self.pending.is_empty() {
            None
        } else {
            Some((false, std::mem::take(&mut self.pending)))
        }
    }
}

fn open_log(path: &Path) -> Result<File, LoggerError> {
    let err = |source| LoggerError::Open { path: path.display().to_string(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    OpenOptions::new().create(true).append(true).open(path).map_err(err)
}

/// The log file, reopened when the kubelet rotates it away (renames or deletes the path): the
/// inode behind the path is compared with ours at most once a second, so rotation needs no call
/// into the runtime (CRI's ReopenContainerLog).
struct LogFile {
    path: std::path::PathBuf,
    file: File,
    checked: std::time::Instant,
}

impl LogFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        if self.checked.elapsed() >= std::time::Duration::from_secs(1) {
            self.checked = std::time::Instant::now();
            let ours = self.file.metadata().map(|m| (m.dev(), m.ino())).ok();
            let theirs = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino())).ok();
            if ours != theirs {
                match open_log(&self.path) {
                    Ok(f) => self.file = f,
                    Err(e) => note(format_args!("{e}")),
                }
            }
        }
        self.file.write_all(bytes)
    }
}

/// Copies one output stream into the log (and hands each raw read to `relay`) until EOF.
fn pump(mut input: File, stream: Stream, out: Arc<Mutex<LogFile>>, relay: &dyn Fn(&[u8])) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 32 * 1024];
    let write = |records: Vec<(bool, Vec<u8>)>| {
        if records.is_empty() {
            return;
        }
        let now = chrono::Utc::now();
        let mut bytes = Vec::new();
        for (partial, body) in records {
            bytes.extend(format_record(now, stream, partial, &body));
        }
        // One write per batch under the lock keeps stdout and stderr records whole.
        if let Ok(mut f) = out.lock() {
            if let Err(e) = f.write(&bytes) {
                note(format_args!("write failed: {e}"));
            }
        }
    };
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                write(splitter.feed(&buf[..n]));
                // Attached clients get the bytes as read, not as log lines: a shell prompt has
                // no newline and must still show up at once.
                relay(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                note(format_args!("read {} failed: {e}", stream.as_str()));
                break;
            }
        }
    }
    write(splitter.finish().into_iter().collect());
}

/// Is `fd` an open descriptor of this process?
fn fd_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries descriptor flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

pub fn run(args: &LoggerArgs) -> anyhow::Result<()> {
    if args.listen_fd.is_some() || args.stdin_fd.is_some() || args.stdout_fd.is_some() {
        return Ok(run_attach(args)?);
    }
    let file = open_log(&args.path);
    // Whatever happened, release the shim: it waits on fd 5 before starting the task, and a
    // logger that failed must not hang the container start forever.
    if fd_open(5) {
        // SAFETY: fd 5 is the shim's ready pipe, owned by this process and used nowhere else.
        unsafe { libc::close(5) };
    }
    let out = Arc::new(Mutex::new(LogFile { path: args.path.clone(), file: file?, checked: Instant::now() }));
    let mut threads = Vec::new();
    for (fd, stream) in [(3, Stream::Stdout), (4, Stream::Stderr)] {
        if !fd_open(fd) {
            continue;
        }
        // SAFETY: the shim passes these descriptors to us; nothing else in this process owns them.
        let input = unsafe { File::from_raw_fd(fd) };
        let out = out.clone();
        threads.push(std::thread::spawn(move || pump(input, stream, out, &|_| {})));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Puts a descriptor in blocking mode: the agent opened the FIFO read ends non-blocking so that
/// opening never waited for the shim, but the pumps are threads doing blocking reads.
fn set_blocking(f: &File) {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL only change the status flags of a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags != -1 && flags & libc::O_NONBLOCK != 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

/// Takes ownership of an inherited descriptor named on the command line.
fn take_fd(what: &'static str, fd: Option<i32>) -> Result<File, LoggerError> {
    let fd = fd.ok_or(LoggerError::MissingFd)?;
    // 0-2 are our own stdio; anything else must be open.
    if fd < 3 || !fd_open(fd) {
        return Err(LoggerError::BadFd { what, fd });
    }
    // SAFETY: the agent passed this descriptor to us for this purpose; it is open (checked above)
    // and nothing else in this process owns it. Distinct arguments are checked by the caller.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// How an attach-mode logger is wired (see the module header).
pub struct AttachConfig {
    /// The CRI log file, written exactly as in `binary://` mode.
    pub log_path: PathBuf,
    /// Read end of the container's stdout FIFO (with a tty: the terminal's output).
    pub stdout: File,
    /// Read end of the stderr FIFO; `None` with a tty.
    pub stderr: Option<File>,
    /// The stdin FIFO, open read-write.
    pub stdin: File,
    pub listener: UnixListener,
    /// Removed when the logger is done, so a late client fails to connect instead of hanging.
    pub socket_path: Option<PathBuf>,
    pub tty: bool,
    pub stdin_once: bool,
    /// Per-client backlog cap ([`proto::CLIENT_BACKLOG`]).
    pub backlog: usize,
}

fn run_attach(args: &LoggerArgs) -> Result<(), LoggerError> {
    let fds = [args.stdout_fd, args.stderr_fd, args.stdin_fd, args.listen_fd];
    let given: Vec<i32> = fds.iter().flatten().copied().collect();
    let mut distinct = given.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != given.len() {
        return Err(LoggerError::BadFd {
            what: "*-fd (the same descriptor twice)",
            fd: given.first().copied().unwrap_or_default(),
        });
    }
    let stdout = take_fd("stdout-fd", args.stdout_fd)?;
    let stderr = match args.stderr_fd {
        Some(_) => Some(take_fd("stderr-fd", args.stderr_fd)?),
        None => None,
    };
    let stdin = take_fd("stdin-fd", args.stdin_fd)?;
    let listener = UnixListener::from(std::os::fd::OwnedFd::from(take_fd("listen-fd", args.listen_fd)?));
    let cfg = AttachConfig {
        log_path: args.path.clone(),
        stdout,
        stderr,
        stdin,
        listener,
        socket_path: args.attach_dir.as_ref().map(|d| d.join(super::attach::SOCKET_NAME)),
        tty: args.tty,
        stdin_once: args.stdin_once,
        backlog: proto::CLIENT_BACKLOG,
    };
    serve_attach(cfg)
}

/// One attached client, as the pumps and its writer thread share it.
struct Client {
    wants_stdout: bool,
    wants_stderr: bool,
    queue: Mutex<OutQueue>,
    ready: Condvar,
}

impl Client {
    fn queue(&self) -> std::sync::MutexGuard<'_, OutQueue> {
        // Nothing panics while holding these locks; recover the data if something ever did.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The clients and the container's stdin.
struct Hub {
    clients: Mutex<Vec<Arc<Client>>>,
    /// The output has ended: new clients are told so at once.
    ended: Mutex<bool>,
    /// Our read-write end of the stdin FIFO; `None` once a `stdinOnce` stdin was closed.
    stdin: Mutex<Option<File>>,
    tty: bool,
    stdin_once: bool,
    backlog: usize,
}

impl Hub {
    fn clients(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Client>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues output for every client that wants `kind`; a client past its backlog is ended
    /// (its writer sends the too-slow end) and leaves the list. Never blocks on a client.
    fn broadcast(&self, kind: Kind, data: &[u8]) {
        let frame = proto::encode(kind, data);
        self.clients().retain(|c| {
            let wanted = match kind {
                Kind::Stdout => c.wants_stdout,
                _ => c.wants_stderr,
            };
            if !wanted {
                return true;
            }
            let ok = c.queue().push(frame.clone());
            c.ready.notify_one();
            ok
        });
    }

    /// The container's output has ended: every client gets what is queued, then the end.
    fn finish(&self) {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = true;
        for c in self.clients().iter() {
            c.queue().finish(EndReason::Exited);
            c.ready.notify_one();
        }
    }

    fn stdin_open(&self) -> bool {
        self.stdin.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    /// Writes client input to the container's stdin. Blocks while the pipe is full (the
    /// container is not reading): that holds back this client only, which is the backpressure
    /// kubectl expects.
    fn write_stdin(&self, data: &[u8]) {
        let mut g = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = g.as_mut() {
            if let Err(e) = f.write_all(data) {
                note(format_args!("writing the container's stdin failed: {e}"));
            }
        }
    }

    /// A client that attached with stdin has ended it (or gone away). With `stdinOnce` and no
    /// tty the container's stdin closes now, as containerd's CRI does for kubectl (the agent
    /// also calls CloseIO, so the shim drops its own writer); otherwise it stays open for the
    /// next client.
    fn client_stdin_ended(&self) {
        if self.stdin_once && !self.tty {
            self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }
}

/// Serves attach clients while pumping the container's output into the log; returns once the
/// output has ended and the clients have been sent their end (or 5 s have passed).
pub fn serve_attach(cfg: AttachConfig) -> Result<(), LoggerError> {
    // Without its log file the logger must still drain the FIFOs (or the container would stall
    // once a pipe fills): write to /dev/null and keep retrying the path (LogFile::write).
    let file = match open_log(&cfg.log_path) {
        Ok(f) => f,
        Err(e) => {
            note(format_args!("{e}"));
            OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .map_err(|source| LoggerError::Open { path: "/dev/null".into(), source })?
        }
    };
    let log = LogFile { file, path: cfg.log_path, checked: Instant::now() };
    set_blocking(&cfg.stdin);
    let hub = Arc::new(Hub {
        clients: Mutex::new(Vec::new()),
        ended: Mutex::new(false),
        stdin: Mutex::new(Some(cfg.stdin)),
        tty: cfg.tty,
        stdin_once: cfg.stdin_once,
        backlog: cfg.backlog,
    });
    let out = Arc::new(Mutex::new(log));
    for f in [Some(&cfg.stdout), cfg.stderr.as_ref()].into_iter().flatten() {
        set_blocking(f);
    }
    let mut pumps = Vec::new();
    for (input, stream, kind) in
        [(Some(cfg.stdout), Stream::Stdout, Kind::Stdout), (cfg.stderr, Stream::Stderr, Kind::Stderr)]
    {
        let Some(input) = input else { continue };
        let (out, hub) = (out.clone(), hub.clone());
        pumps.push(std::thread::spawn(move || pump(input, stream, out, &|b| hub.broadcast(kind, b))));
    }
    let listener = cfg.listener;
    let accept_hub = hub.clone();
    // The accept thread is never joined: it ends with the process.
    let _ = std::thread::Builder::new().name("accept".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(s) => {
                    let hub = accept_hub.clone();
                    let _ = std::thread::Builder::new().spawn(move || serve_client(hub, s));
                }
                Err(e) => {
                    note(format_args!("accepting an attach client failed: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    });
    for p in pumps {
        let _ = p.join();
    }
    hub.finish();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !hub.clients().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(p) = &cfg.socket_path {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// One client connection: the handshake, then its input (on this thread) and output (on a
/// writer thread draining its queue).
fn serve_client(hub: Arc<Hub>, stream: UnixStream) {
    let mut reader = stream;
    let hello: Hello = {
        // A client that never says hello must not hold a thread forever.
        let _ = reader.set_read_timeout(Some(Duration::from_secs(10)));
        match proto::read_frame(&mut reader) {
            Ok(Some(f)) if f.kind == Kind::Hello => match proto::decode_json("hello", &f.payload) {
                Ok(h) => h,
                Err(e) => return note(format_args!("{e}")),
            },
            Ok(Some(f)) => {
                return note(format_args!("{}", proto::ProtoError::Unexpected { expected: Kind::Hello, got: f.kind }))
            }
            Ok(None) => return,
            Err(e) => return note(format_args!("attach handshake failed: {e}")),
        }
    };
    let _ = reader.set_read_timeout(None);
    let Ok(mut writer) = reader.try_clone() else { return };
    let client = Arc::new(Client {
        wants_stdout: hello.stdout,
        wants_stderr: hello.stderr && !hub.tty,
        queue: Mutex::new(OutQueue::new(hub.backlog)),
        ready: Condvar::new(),
    });
    // The ack is queued first and the client registered under the same lock the pumps take, so
    // it sees every byte written after this point and nothing from before (attach shows output
    // from now on, as upstream).
    {
        let mut clients = hub.clients();
        let ended = *hub.ended.lock().unwrap_or_else(|p| p.into_inner());
        let ack = Ack { tty: hub.tty, stdin_once: hub.stdin_once, stdin_open: hub.stdin_open(), ended };
        client.queue().push(proto::json_frame(Kind::Ack, &ack));
        if ended {
            client.queue().finish(EndReason::Exited);
        } else {
            clients.push(client.clone());
        }
    }
    let (wc, whub) = (client.clone(), hub.clone());
    let writer_thread = std::thread::spawn(move || {
        write_client(&wc, &mut writer);
        whub.clients().retain(|c| !Arc::ptr_eq(c, &wc));
        let _ = writer.shutdown(std::net::Shutdown::Both);
    });
    let mut stdin_live = hello.stdin;
    loop {
        match proto::read_frame(&mut reader) {
            Ok(Some(f)) => match f.kind {
                Kind::Stdin if stdin_live => hub.write_stdin(&f.payload),
                Kind::StdinEof if stdin_live => {
                    stdin_live = false;
                    hub.client_stdin_ended();
                }
                // Input from a client that did not ask for stdin (or already ended it) is
                // ignored, as upstream ignores attach input for a container without stdin.
                Kind::Stdin | Kind::StdinEof => {}
                other => {
                    note(format_args!("unexpected {other:?} frame from an attach client"));
                    break;
                }
            },
            Ok(None) => break,
            Err(e) => {
                note(format_args!("reading an attach client failed: {e}"));
                break;
            }
        }
    }
    // Gone without ending its stdin (the agent died or dropped the session): the same as an end.
    if stdin_live {
        hub.client_stdin_ended();
    }
    client.queue().close();
    client.ready.notify_one();
    hub.clients().retain(|c| !Arc::ptr_eq(c, &client));
    let _ = writer_thread.join();
}

/// Drains a client's queue onto its socket until the end (or the client is gone).
fn write_client(c: &Client, w: &mut UnixStream) {
    loop {
        let next = {
            let mut q = c.queue();
            loop {
                match q.pop() {
                    Next::Wait => q = c.ready.wait(q).unwrap_or_else(|p| p.into_inner()),
                    n => break n,
                }
            }
        };
        match next {
            Next::Send(b) => {
                if w.write_all(&b).is_err() {
                    c.queue().close();
                    return;
                }
            }
            Next::End(end) => {
                let _ = w.write_all(&proto::json_frame(Kind::End, &end));
                return;
            }
            Next::Wait | Next::Done => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_record_has_nanosecond_timestamp_stream_tag_and_body() {
        let ts = chrono::Utc.timestamp_opt(1475712429, 669794202).unwrap();
        let r = format_record(ts, Stream::Stdout, false, b"hello");
        assert_eq!(String::from_utf8(r).unwrap(), "2016-10-06T00:07:09.669794202Z stdout F hello\n");
        let r = format_record(ts, Stream::Stderr, true, b"x");
        assert!(String::from_utf8(r).unwrap().ends_with("Z stderr P x\n"));
    }

    #[test]
    fn lines_are_split_on_newlines_and_a_tail_waits_for_more() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"a\nbc"), vec![(false, b"a".to_vec())]);
        assert_eq!(s.feed(b"d\n"), vec![(false, b"bcd".to_vec())]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn a_long_line_becomes_partials_then_a_full_record() {
        let mut s = LineSplitter::default();
        let mut data = vec![b'x'; MAX_RECORD * 2 + 10];
        data.push(b'\n');
        let recs = s.feed(&data);
        assert_eq!(recs.len(), 3);
        assert!(recs[0].0 && recs[1].0 && !recs[2].0);
        assert_eq!(recs[0].1.len(), MAX_RECORD);
        assert_eq!(recs[2].1.len(), 10);
    }

    #[test]
    fn an_unterminated_last_line_is_flushed_at_eof() {
        let mut s = LineSplitter::default();
        assert!(s.feed(b"no newline").is_empty());
        assert_eq!(s.finish(), Some((false, b"no newline".to_vec())));
    }

    #[test]
    fn a_rotated_log_file_is_reopened_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        let mut lf = LogFile { path: p.clone(), file: open_log(&p).unwrap(), checked: std::time::Instant::now() };
        lf.write(b"one\n").unwrap();
        std::fs::rename(&p, dir.path().join("0.log.1")).unwrap();
        lf.checked -= std::time::Duration::from_secs(2);
        lf.write(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("0.log.1")).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
    }

    fn attach_args(stdout: Option<i32>, stdin: Option<i32>, listen: Option<i32>) -> LoggerArgs {
        LoggerArgs {
            path: "/nonexistent/0.log".into(),
            attach_dir: None,
            stdout_fd: stdout,
            stderr_fd: None,
            stdin_fd: stdin,
            listen_fd: listen,
            tty: false,
            stdin_once: false,
        }
    }

    #[test]
    fn attach_mode_refuses_missing_closed_or_repeated_descriptors() {
        let e = run_attach(&attach_args(Some(900), None, None)).unwrap_err();
        assert!(matches!(e, LoggerError::BadFd { fd: 900, .. }), "{e}");
        let e = run_attach(&attach_args(Some(1), Some(2), Some(0))).unwrap_err();
        assert!(matches!(e, LoggerError::BadFd { .. }), "our own stdio is never taken: {e}");
        let e = run_attach(&attach_args(Some(901), Some(901), Some(902))).unwrap_err();
        assert!(matches!(e, LoggerError::BadFd { .. }), "{e}");
        let f = tempfile::tempfile().unwrap();
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        let e = run_attach(&attach_args(None, Some(fd), Some(903))).unwrap_err();
        assert!(matches!(e, LoggerError::MissingFd), "{e}");
    }

    #[test]
    fn the_log_file_and_its_directories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/0.log");
        open_log(&p).unwrap();
        assert!(p.exists());
    }
}
