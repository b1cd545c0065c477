//! The kubelet's streaming endpoints: `/exec/{ns}/{pod}/{container}` and
//! `/attach/{ns}/{pod}/{container}` over WebSocket `v5.channel.k8s.io` (and `/portForward/{ns}/{pod}`,
//! handed to `super::portforward`), the protocol kubectl 1.32
//! speaks first (kubectl-streaming guide §1–§2). The API server relays the upgraded connection
//! byte for byte (`src/api/stream.rs`), so this is where the frames are read and written.
//!
//! Protocol facts reproduced here (guide §2):
//! - binary messages only; the first byte is the channel: 0 stdin, 1 stdout, 2 stderr,
//!   3 status, 4 resize. A text message would make kubectl drop every stream, so none is sent.
//! - with a tty nothing is sent on channel 2 (kubectl reports "Unknown stream id 2").
//! - resize messages are `{"Width":W,"Height":H}` JSON values, possibly split or batched across
//!   messages, so they go through a streaming decoder.
//! - the client's `[255, ch]` half-closes channel `ch` (kubectl sends `[255,0]` at stdin EOF,
//!   which `kubectl cp` relies on); any other length is a protocol error. The server never sends
//!   255 messages (kubectl ignores them): output ends when the socket closes.
//! - the end is one JSON Status on channel 3 and then Close 1000; an exit code becomes
//!   `NonZeroExitCode` with an `ExitCode` cause kubectl turns into its own exit status.
//!
//! Anything but a WebSocket upgrade offering `v5.channel.k8s.io` gets 400 (upstream's
//! "Upgrade request required"); the SPDY fallback is not served.
//!
//! Attach: a container started with `stdin: true` has a live stream through its attach-mode
//! logger ([`Runtime::attach`]): input goes to its stdin, its output from now on comes back, and
//! resizes reach its terminal; when the client's stdin ends the session ends, except with
//! `stdinOnce` and no tty, where the container's stdin is closed and the output relayed until the
//! container exits ([`session_ends_with_stdin`], containerd CRI's rule). Any other container's
//! output goes through the `binary://` logger into its CRI log file only, so attach follows that
//! file from its end and relays new lines on channels 1 and 2; input is ignored, as upstream
//! ignores it for a container without stdin. Both end with Success once the container stops.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::agent::runtime::{
    AttachOptions, AttachSession, ContainerState, ContainerStatus, ExecOptions, Runtime, RuntimeError, TermSize,
};

/// The only subprotocol served (guide §2).
pub const V5: &str = "v5.channel.k8s.io";

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;
/// The close signal's marker byte (`[255, channel]`).
pub const CLOSE: u8 = 255;

/// A message from the client, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Stdin(Bytes),
    Resize(Bytes),
    /// `[255, ch]`: the client will send nothing more on `ch`.
    CloseChannel(u8),
    /// An empty message or a channel the server does not read; ignored.
    Ignored,
}

/// Decodes one binary message. Errors name the protocol violation; they never panic.
pub fn decode(msg: &[u8]) -> Result<Inbound, String> {
    let Some((&ch, rest)) = msg.split_first() else { return Ok(Inbound::Ignored) };
    match ch {
        STDIN => Ok(Inbound::Stdin(Bytes::copy_from_slice(rest))),
        RESIZE => Ok(Inbound::Resize(Bytes::copy_from_slice(rest))),
        CLOSE if rest.len() == 1 => Ok(Inbound::CloseChannel(rest[0])),
        CLOSE => Err(format!("close signal must be 2 bytes, got {}", msg.len())),
        _ => Ok(Inbound::Ignored),
    }
}

/// A server message: channel byte, then the data.
pub fn frame(channel: u8, data: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Bytes::from(v)
}

/// Resize JSON values arriving in arbitrary pieces.
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    /// Feeds bytes; returns every complete size. A malformed value is an error (and dropped).
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TermSize>, String> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TermSize>();
        let mut consumed = 0;
        let res = loop {
            match it.next() {
                None => break Ok(()),
                Some(Ok(s)) => {
                    out.push(s);
                    consumed = it.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break Ok(()),
                Some(Err(e)) => break Err(format!("bad resize message: {e}")),
            }
        };
        match res {
            Ok(()) => {
                self.buf.drain(..consumed);
                // Whitespace (the newline kubectl appends) is all that is left, or a partial value.
                if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                    self.buf.clear();
                }
                if self.buf.len() > 4096 {
                    self.buf.clear();
                    return Err("resize message too long".into());
                }
                Ok(out)
            }
            Err(e) => {
                self.buf.clear();
                Err(e)
            }
        }
    }
}

/// The final Status on channel 3 (guide §2 "Ending").
pub fn status_json(result: &Result<i32, String>) -> String {
    match result {
        Ok(0) => r#"{"metadata":{},"status":"Success"}"#.to_string(),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{code}], exit code {code}"),
            "reason": "NonZeroExitCode",
            // The cause type is serialised under `reason`; the message is the decimal code.
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
        .to_string(),
        Err(msg) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": msg,
            "reason": "InternalError",
            "code": 500,
        })
        .to_string(),
    }
}

/// Go's `strconv.ParseBool` (kubectl sends `true`; upstream's API server rewrites it to `1`).
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Some(false),
        _ => None,
    }
}

/// The exec/attach query: `command` once per argv element, and the stream flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamQuery {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

pub fn parse_query(raw: Option<&str>) -> Result<StreamQuery, String> {
    let mut q = StreamQuery::default();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let flag = |v: &str| parse_bool(v).ok_or_else(|| format!("{k}: invalid boolean {v:?}"));
        match k.as_ref() {
            "command" => q.command.push(v.into_owned()),
            "stdin" | "input" => q.stdin = flag(&v)?,
            "stdout" | "output" => q.stdout = flag(&v)?,
            "stderr" | "error" => q.stderr = flag(&v)?,
            "tty" => q.tty = flag(&v)?,
            _ => {}
        }
    }
    if q.tty {
        // A terminal merges stderr into stdout; kubectl drops stderr with -t (guide §1).
        q.stderr = false;
    }
    if !(q.stdin || q.stdout || q.stderr) {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    Ok(q)
}

#[derive(Clone)]
struct StreamState {
    runtime: Arc<dyn Runtime>,
}

/// The streaming routes (merged into the kubelet server's router).
pub fn router(runtime: Arc<dyn Runtime>) -> Router {
    Router::new()
        .route("/exec/{namespace}/{pod}/{container}", any(exec))
        .route("/exec/{namespace}/{pod}/{uid}/{container}", any(exec_uid))
        .route("/attach/{namespace}/{pod}/{container}", any(attach))
        .route("/attach/{namespace}/{pod}/{uid}/{container}", any(attach_uid))
        .route("/portForward/{namespace}/{pod}", any(port_forward))
        .route("/portForward/{namespace}/{pod}/{uid}", any(port_forward_uid))
        .with_state(StreamState { runtime })
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

/// Checks the upgrade and the subprotocol before switching protocols.
fn negotiate(ws: Option<WebSocketUpgrade>) -> Result<WebSocketUpgrade, Box<Response>> {
    let Some(ws) = ws else {
        return Err(Box::new(status_response(StatusCode::BAD_REQUEST, "BadRequest", "Upgrade request required")));
    };
    let ws = ws.protocols([V5]);
    if ws.selected_protocol().is_none() {
        // axum would upgrade without a protocol, which kubectl treats as a failure anyway.
        return Err(Box::new(status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "unsupported streaming protocol: this kubelet speaks WebSocket v5.channel.k8s.io only (kubectl 1.30+)",
        )));
    }
    Ok(ws)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Exec,
    Attach,
}

async fn exec(
    State(st): State<StreamState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    handle(st, Kind::Exec, ns, pod, None, container, q, ws.ok())
}

async fn exec_uid(
    State(st): State<StreamState>,
    UrlPath((ns, pod, uid, container)): UrlPath<(String, String, String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    handle(st, Kind::Exec, ns, pod, Some(uid), container, q, ws.ok())
}

async fn attach(
    State(st): State<StreamState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    handle(st, Kind::Attach, ns, pod, None, container, q, ws.ok())
}

async fn attach_uid(
    State(st): State<StreamState>,
    UrlPath((ns, pod, uid, container)): UrlPath<(String, String, String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    handle(st, Kind::Attach, ns, pod, Some(uid), container, q, ws.ok())
}

async fn port_forward(
    State(st): State<StreamState>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => super::portforward::serve(st.runtime, ns, pod, None, ws),
        Err(_) => status_response(StatusCode::BAD_REQUEST, "BadRequest", "Upgrade request required"),
    }
}

async fn port_forward_uid(
    State(st): State<StreamState>,
    UrlPath((ns, pod, uid)): UrlPath<(String, String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => super::portforward::serve(st.runtime, ns, pod, Some(uid), ws),
        Err(_) => status_response(StatusCode::BAD_REQUEST, "BadRequest", "Upgrade request required"),
    }
}

#[allow(clippy::too_many_arguments)]
fn handle(
    st: StreamState,
    kind: Kind,
    ns: String,
    pod: String,
    uid: Option<String>,
    container: String,
    raw_query: Option<String>,
    ws: Option<WebSocketUpgrade>,
) -> Response {
    let q = match parse_query(raw_query.as_deref()) {
        Ok(q) => q,
        Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    if kind == Kind::Exec && q.command.is_empty() {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "you must specify at least one command");
    }
    let ws = match negotiate(ws) {
        Ok(ws) => ws,
        Err(r) => return *r,
    };
    ws.on_upgrade(move |socket| async move {
        // Errors from here on reach the user as a Failure status (kubectl prints "error: …").
        let target = find_container(st.runtime.as_ref(), &ns, &pod, uid.as_deref(), &container).await;
        match (kind, target) {
            (_, Err(e)) => finish(socket, Err(e)).await,
            (Kind::Exec, Ok(c)) => run_exec(st.runtime, socket, c, q).await,
            (Kind::Attach, Ok(c)) => run_attach(st.runtime, socket, c, q).await,
        }
    })
}

/// The running container `name` of the pod (its newest instance).
async fn find_container(
    rt: &dyn Runtime,
    ns: &str,
    pod: &str,
    uid: Option<&str>,
    name: &str,
) -> Result<ContainerStatus, String> {
    let all = rt.list_containers().await.map_err(|e| format!("listing containers: {e}"))?;
    let mut mine: Vec<ContainerStatus> = all
        .into_iter()
        .filter(|c| c.pod.namespace == ns && c.pod.name == pod && c.name == name)
        .filter(|c| uid.is_none_or(|u| c.pod.uid == u))
        .collect();
    if mine.is_empty() {
        return Err(format!("container {name:?} of pod {ns}/{pod} not found on this node"));
    }
    mine.sort_by_key(|c| c.restart_count);
    mine.into_iter()
        .rev()
        .find(|c| matches!(c.state, ContainerState::Running { .. }))
        .ok_or_else(|| format!("container {name} is not running"))
}

/// Sends the final Status on channel 3, then Close 1000.
async fn finish(mut socket: WebSocket, result: Result<i32, String>) {
    let status = status_json(&result);
    let _ = socket.send(Message::Binary(frame(STATUS, status.as_bytes()))).await;
    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    // Let the close handshake finish (the client answers with its own Close).
    let _ =
        tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = socket.next().await {} }).await;
}

/// What the client sent, for the output side of a session.
enum ClientEnd {
    /// The socket closed or failed: stop (dropping the session kills an exec).
    Gone,
    /// A protocol error: report it.
    Protocol(String),
}

/// Reads client messages: stdin → `stdin`, resizes → `resize`, `[255,0]` closes stdin.
async fn read_client(
    mut rx: futures::stream::SplitStream<WebSocket>,
    mut stdin: Option<tokio::sync::mpsc::Sender<Bytes>>,
    resize: tokio::sync::mpsc::UnboundedSender<TermSize>,
) -> ClientEnd {
    let mut sizes = ResizeDecoder::default();
    while let Some(msg) = rx.next().await {
        let data = match msg {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(_)) | Err(_) => return ClientEnd::Gone,
            // Pings are answered by the WebSocket layer; text is not part of v5.
            Ok(_) => continue,
        };
        match decode(&data) {
            Ok(Inbound::Stdin(b)) => {
                if let Some(tx) = &stdin {
                    if tx.send(b).await.is_err() {
                        // The process closed its stdin; later input has nowhere to go.
                        stdin = None;
                    }
                }
            }
            Ok(Inbound::Resize(b)) => match sizes.push(&b) {
                Ok(v) => {
                    for s in v {
                        let _ = resize.send(s);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "ignoring resize"),
            },
            Ok(Inbound::CloseChannel(STDIN)) => stdin = None,
            Ok(_) => {}
            Err(e) => return ClientEnd::Protocol(e),
        }
    }
    ClientEnd::Gone
}

async fn run_exec(rt: Arc<dyn Runtime>, socket: WebSocket, c: ContainerStatus, q: StreamQuery) {
    // Read the client from the start: with a tty kubectl sends the terminal size first
    // (guide §2), and the process should start with it rather than race a later ResizePty.
    let (mut tx, rx) = socket.split();
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::unbounded_channel::<TermSize>();
    let mut reader = tokio::spawn(read_client(rx, q.stdin.then_some(stdin_tx), resize_tx));
    let initial_size =
        if q.tty { tokio::time::timeout(Duration::from_secs(1), resize_rx.recv()).await.ok().flatten() } else { None };
    let opts = ExecOptions { command: q.command.clone(), tty: q.tty, stdin: q.stdin, initial_size };
    let session = match rt.exec(&c.id, &opts).await {
        Ok(s) => s,
        Err(e) => {
            reader.abort();
            return finish_split(tx, Err(format!("exec in container {}: {e}", c.name))).await;
        }
    };
    tracing::debug!(container = %c.id, exec = %session.exec_id, command = ?q.command, "exec started");
    let crate::agent::runtime::ExecSession { stdin, mut stdout, mut stderr, resize, exit, kill_on_drop, .. } = session;
    // Client stdin and resizes → the process; the end of stdin_rx ([255,0]) drops `stdin` (EOF).
    let forward = tokio::spawn(async move {
        let mut stdin = stdin;
        loop {
            tokio::select! {
                b = stdin_rx.recv(), if stdin.is_some() => match (b, &stdin) {
                    (Some(b), Some(tx)) => if tx.send(b).await.is_err() { stdin = None },
                    _ => stdin = None,
                },
                s = resize_rx.recv() => match s {
                    Some(s) => { let _ = resize.send(s); }
                    None => return,
                },
            }
        }
    });
    let (mut out_open, mut err_open) = (true, true);
    let mut client_end = None;
    while out_open || err_open {
        tokio::select! {
            b = stdout.recv(), if out_open => match b {
                Some(b) if q.stdout => if tx.send(Message::Binary(frame(STDOUT, &b))).await.is_err() {
                    client_end = Some(ClientEnd::Gone);
                    break;
                },
                Some(_) => {}
                None => out_open = false,
            },
            b = stderr.recv(), if err_open => match b {
                // Never channel 2 with a tty (guide §2); the runtime sends nothing there anyway.
                Some(b) if q.stderr && !q.tty => if tx.send(Message::Binary(frame(STDERR, &b))).await.is_err() {
                    client_end = Some(ClientEnd::Gone);
                    break;
                },
                Some(_) => {}
                None => err_open = false,
            },
            r = &mut reader, if client_end.is_none() => {
                client_end = Some(r.unwrap_or(ClientEnd::Gone));
                if matches!(client_end, Some(ClientEnd::Gone) | Some(ClientEnd::Protocol(_))) {
                    break;
                }
            }
        }
    }
    let result = match client_end {
        Some(ClientEnd::Gone) => {
            // Nobody to report to; dropping the guard kills the process.
            reader.abort();
            forward.abort();
            drop(kill_on_drop);
            return;
        }
        Some(ClientEnd::Protocol(e)) => Err(e),
        None => match exit.await {
            Ok(Ok(code)) => Ok(code),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the exec ended without an exit status".to_string()),
        },
    };
    reader.abort();
    forward.abort();
    finish_split(tx, result).await;
    drop(kill_on_drop);
}

/// [`finish`] on a split socket (the read half belongs to the aborted reader).
async fn finish_split(mut tx: futures::stream::SplitSink<WebSocket, Message>, result: Result<i32, String>) {
    let status = status_json(&result);
    let _ = tx.send(Message::Binary(frame(STATUS, status.as_bytes()))).await;
    let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    let _ = tx.flush().await;
}

/// One CRI log line (`<time> <stream> <P|F> <content>`): the stream's channel and the bytes to
/// relay (a partial line keeps no newline, so it joins the next segment).
fn cri_line(line: &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let _time = parts.next()?;
    let ch = match parts.next()? {
        b"stdout" => STDOUT,
        b"stderr" => STDERR,
        _ => return None,
    };
    let tag = parts.next()?;
    let mut content = parts.next().unwrap_or_default().to_vec();
    if tag != b"P" {
        content.push(b'\n');
    }
    Some((ch, content))
}

/// Whether an attach session ends when its client's stdin ends, as containerd's CRI decides
/// (`ContainerIO.Attach`): with `stdinOnce` and no tty the container's stdin is closed instead and
/// the output keeps flowing until the container exits (what `kubectl run -i` relies on);
/// otherwise the client detaches and the container keeps running.
pub fn session_ends_with_stdin(stdin_once: bool, tty: bool) -> bool {
    !stdin_once || tty
}

async fn run_attach(rt: Arc<dyn Runtime>, socket: WebSocket, c: ContainerStatus, q: StreamQuery) {
    let opts = AttachOptions { stdin: q.stdin, stdout: q.stdout, stderr: q.stderr };
    match rt.attach(&c.id, &opts).await {
        Ok(Some(session)) => relay_attach(socket, q, session).await,
        Ok(None) => follow_log(rt, socket, c, q).await,
        Err(RuntimeError::NotFound(m)) => {
            finish(socket, Err(format!("container {} is not running: {m}", c.name))).await
        }
        Err(e) => finish(socket, Err(format!("attaching to container {}: {e}", c.name))).await,
    }
}

/// Attach to a container with a live stream ([`AttachSession`]): client input to its stdin,
/// its output from now on to the client, resizes to its terminal.
async fn relay_attach(socket: WebSocket, q: StreamQuery, session: AttachSession) {
    let AttachSession { tty, stdin_once, stdin, mut stdout, mut stderr, resize, end, detach_on_drop } = session;
    let (mut tx, rx) = socket.split();
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::unbounded_channel::<TermSize>();
    let mut reader = tokio::spawn(read_client(rx, q.stdin.then_some(stdin_tx), resize_tx));
    // `stdin` is None when the container has no (more) stdin: input is then read and dropped,
    // and its end changes nothing (upstream ignores attach input for such a container).
    let mut stdin = stdin;
    let (mut out_open, mut err_open, mut in_open, mut resize_open) = (true, true, q.stdin, true);
    let mut result = None;
    while out_open || err_open {
        tokio::select! {
            b = stdout.recv(), if out_open => match b {
                Some(b) if q.stdout => if tx.send(Message::Binary(frame(STDOUT, &b))).await.is_err() {
                    return;
                },
                Some(_) => {}
                None => out_open = false,
            },
            b = stderr.recv(), if err_open => match b {
                // Never channel 2 with a tty (guide §2); the logger sends no stderr then anyway.
                Some(b) if q.stderr && !tty => if tx.send(Message::Binary(frame(STDERR, &b))).await.is_err() {
                    return;
                },
                Some(_) => {}
                None => err_open = false,
            },
            b = stdin_rx.recv(), if in_open => match b {
                Some(b) => {
                    if let Some(s) = &stdin {
                        if s.send(b).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                // [255,0], or the client is gone (then the reader branch ends the session).
                // Dropping our sender ends this client's stdin: with stdinOnce (no tty) the
                // runtime closes the container's stdin.
                None => {
                    in_open = false;
                    if stdin.take().is_some() && session_ends_with_stdin(stdin_once, tty) {
                        result = Some(Ok(0));
                        break;
                    }
                }
            },
            sz = resize_rx.recv(), if resize_open => match sz {
                Some(sz) => { let _ = resize.send(sz); }
                None => resize_open = false,
            },
            r = &mut reader => match r {
                Ok(ClientEnd::Protocol(e)) => {
                    result = Some(Err(e));
                    break;
                }
                // Nobody to report to: detach (dropping the session).
                _ => return,
            },
        }
    }
    let result = match result {
        Some(r) => r,
        None => match end.await {
            Ok(Ok(())) => Ok(0),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the attach ended without a reason".to_string()),
        },
    };
    reader.abort();
    drop((stdin, detach_on_drop));
    finish_split(tx, result).await;
}

/// Attach to a container whose output only goes to its log file: follow the file from its end.
/// Input is read and dropped (the container has no stdin to give it to).
async fn follow_log(rt: Arc<dyn Runtime>, socket: WebSocket, c: ContainerStatus, q: StreamQuery) {
    let mut file = match tokio::fs::File::open(&c.log_path).await {
        Ok(f) => f,
        Err(e) => return finish(socket, Err(format!("opening the log of container {}: {e}", c.name))).await,
    };
    // Attach shows what the container writes from now on.
    if let Err(e) = file.seek(std::io::SeekFrom::End(0)).await {
        return finish(socket, Err(format!("reading the log of container {}: {e}", c.name))).await;
    }
    let (mut tx, rx) = socket.split();
    let (resize_tx, _resize_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut reader = tokio::spawn(read_client(rx, None, resize_tx));
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    let mut last_check = std::time::Instant::now();
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut reader => return,
            _ = check.tick() => {}
        }
        loop {
            match file.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            if let Some((ch, data)) = cri_line(&line[..line.len() - 1]) {
                let wanted = (ch == STDOUT && q.stdout) || (ch == STDERR && q.stderr);
                // With a tty everything the container wrote goes to stdout (never channel 2).
                let ch = if q.tty { STDOUT } else { ch };
                if (wanted || (q.tty && q.stdout)) && tx.send(Message::Binary(frame(ch, &data))).await.is_err() {
                    reader.abort();
                    return;
                }
            }
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = std::time::Instant::now();
            let running = rt
                .list_containers()
                .await
                .map(|cs| cs.iter().any(|x| x.id == c.id && matches!(x.state, ContainerState::Running { .. })))
                .unwrap_or(true);
            if !running {
                break;
            }
        }
    }
    reader.abort();
    finish_split(tx, Ok(0)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_by_their_channel_byte() {
        assert_eq!(decode(&[0, b'h', b'i']).unwrap(), Inbound::Stdin(Bytes::from_static(b"hi")));
        assert_eq!(decode(&[4, b'{']).unwrap(), Inbound::Resize(Bytes::from_static(b"{")));
        assert_eq!(decode(&[255, 0]).unwrap(), Inbound::CloseChannel(0));
        assert_eq!(decode(&[]).unwrap(), Inbound::Ignored);
        assert_eq!(decode(&[1, 2]).unwrap(), Inbound::Ignored);
        assert!(decode(&[255]).is_err(), "a close signal is exactly two bytes");
        assert!(decode(&[255, 0, 1]).is_err());
        assert_eq!(&frame(STDOUT, b"x")[..], &[1, b'x']);
    }

    #[test]
    fn resizes_split_or_batched_across_messages_all_decode() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.push(b"{\"Width\":100,").unwrap(), vec![]);
        assert_eq!(
            d.push(b"\"Height\":30}\n{\"Width\":1,\"Height\":2}\n").unwrap(),
            vec![TermSize { width: 100, height: 30 }, TermSize { width: 1, height: 2 }]
        );
        assert!(d.push(b"]garbage").is_err());
        // After an error the decoder starts clean.
        assert_eq!(d.push(b"{\"Width\":5,\"Height\":6}").unwrap(), vec![TermSize { width: 5, height: 6 }]);
        assert!(d.push(&[b' '; 5000]).unwrap().is_empty());
        assert!(d.push(&[b'{'; 5000]).is_err(), "an endless value is cut off");
    }

    #[test]
    fn the_status_carries_the_exit_code_the_way_kubectl_reads_it() {
        assert_eq!(status_json(&Ok(0)), r#"{"metadata":{},"status":"Success"}"#);
        let v: serde_json::Value = serde_json::from_str(&status_json(&Ok(3))).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "3"}));
        let v: serde_json::Value = serde_json::from_str(&status_json(&Err("boom".into()))).unwrap();
        assert_eq!((v["status"].as_str(), v["message"].as_str()), (Some("Failure"), Some("boom")));
    }

    #[test]
    fn the_query_takes_repeated_commands_and_go_booleans() {
        let q = parse_query(Some("command=ls&command=-la&command=%2Ftmp%2Fa+b&stderr=true&stdout=1&tty=t")).unwrap();
        assert_eq!(q.command, vec!["ls", "-la", "/tmp/a b"]);
        assert!(q.stdout && q.tty && !q.stdin);
        assert!(!q.stderr, "a tty drops stderr");
        assert!(parse_query(Some("command=ls")).is_err(), "no stream at all");
        assert!(parse_query(Some("command=ls&stdout=maybe")).is_err());
        assert!(parse_query(None).is_err());
    }

    #[test]
    fn cri_log_lines_map_to_channels_and_partial_lines_keep_no_newline() {
        assert_eq!(cri_line(b"2024-01-01T00:00:00Z stdout F hi"), Some((STDOUT, b"hi\n".to_vec())));
        assert_eq!(cri_line(b"2024-01-01T00:00:00Z stderr P par"), Some((STDERR, b"par".to_vec())));
        assert_eq!(cri_line(b"2024-01-01T00:00:00Z stdout F "), Some((STDOUT, b"\n".to_vec())));
        assert_eq!(cri_line(b"garbage"), None);
        assert_eq!(cri_line(b""), None);
    }

    // --- whole sessions over a real WebSocket, against the fake runtime ---

    use crate::agent::kubelet::fake_runtime::{Call, FakeRuntime};
    use crate::agent::runtime::{ImageRef, PodRef, Sandbox};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message as WsMsg};

    async fn kubelet() -> std::net::SocketAddr {
        kubelet_rt("/nonexistent/0.log").await.0
    }

    /// A kubelet on the fake runtime with one running container `c1` (`default/p1`, `main`)
    /// whose log file is `log_path`.
    async fn kubelet_rt(log_path: &str) -> (std::net::SocketAddr, Arc<FakeRuntime>) {
        let rt = Arc::new(FakeRuntime::new());
        let pod = PodRef { uid: "u1".into(), namespace: "default".into(), name: "p1".into() };
        rt.insert(
            Sandbox { pod: pod.clone(), ip: None },
            ContainerStatus {
                id: "c1".into(),
                pod,
                name: "main".into(),
                image: ImageRef { name: "busybox".into(), id: "sha256:x".into() },
                state: ContainerState::Running { started_at: std::time::SystemTime::now() },
                restart_count: 0,
                log_path: log_path.into(),
            },
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let served = rt.clone();
        tokio::spawn(async move { axum::serve(l, router(served)).await });
        (addr, rt)
    }

    fn c1_running(rt: &FakeRuntime) -> bool {
        matches!(rt.container("u1", "main").map(|c| c.state), Some(ContainerState::Running { .. }))
    }

    /// Opens a v5 session and returns the socket.
    async fn open(
        addr: std::net::SocketAddr,
        path: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", V5.parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    }

    /// Runs one session: sends `input` messages, returns (stdout, stderr, status JSON, close code).
    async fn session(addr: std::net::SocketAddr, path: &str, input: &[&[u8]]) -> (String, String, String, Option<u16>) {
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", V5.parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.headers()["sec-websocket-protocol"], V5);
        for m in input {
            ws.send(WsMsg::Binary(Bytes::copy_from_slice(m))).await.unwrap();
        }
        let (mut out, mut err, mut status, mut close) = (Vec::new(), Vec::new(), Vec::new(), None);
        while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
            match m {
                WsMsg::Binary(b) => match b.first() {
                    Some(&STDOUT) => out.extend_from_slice(&b[1..]),
                    Some(&STDERR) => err.extend_from_slice(&b[1..]),
                    Some(&STATUS) => status.extend_from_slice(&b[1..]),
                    other => panic!("unexpected channel {other:?}"),
                },
                WsMsg::Close(f) => close = f.map(|f| u16::from(f.code)),
                WsMsg::Text(t) => panic!("text message {t}"),
                _ => {}
            }
        }
        let s = |v: Vec<u8>| String::from_utf8(v).unwrap();
        (s(out), s(err), s(status), close)
    }

    #[tokio::test]
    async fn stdin_flows_until_the_close_signal_and_the_session_ends_with_a_status_and_close_1000() {
        let addr = kubelet().await;
        let (out, _, status, close) = session(
            addr,
            "/exec/default/p1/main?command=cat&stdin=true&stdout=true&stderr=true",
            &[&[0, b'h', b'i'], &[0, b'!'], &[CLOSE, STDIN]],
        )
        .await;
        assert_eq!(out, "hi!");
        assert_eq!(status, r#"{"metadata":{},"status":"Success"}"#);
        assert_eq!(close, Some(1000));

        let (_, err, _, _) =
            session(addr, "/exec/default/p1/main?command=stderr&command=oops&stdout=1&stderr=1", &[]).await;
        assert_eq!(err, "oops\n");
        let (_, _, status, _) = session(addr, "/exec/default/p1/main?command=exit&command=3&stdout=1", &[]).await;
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(v["details"]["causes"][0]["message"], "3");
    }

    #[tokio::test]
    async fn a_tty_session_resizes_and_never_uses_channel_2() {
        let addr = kubelet().await;
        let (out, err, status, _) = session(
            addr,
            "/exec/default/p1/main?command=cat&stdin=1&stdout=1&tty=1",
            &[
                &[RESIZE, b'{', b'"'],
                b"\x04Width\":80,\"Height\":24}\n",
                b"\x04{\"Width\":100,\"Height\":30}\n",
                &[0, b'x'],
                &[CLOSE, 0],
            ],
        )
        .await;
        // The first size (split over two messages) starts the process. Whether the later resize
        // reaches the fake before stdin closes is a race in this test, so only the first size is
        // asserted here; later resizes are covered by resizes_split_or_batched_across_messages_all_decode.
        assert!(out.starts_with("80x24\n") && out.contains('x'), "{out:?}");
        assert!(err.is_empty());
        assert!(status.contains("Success"));
    }

    #[tokio::test]
    async fn errors_reach_the_client_as_failure_statuses_or_http_400() {
        let addr = kubelet().await;
        // A malformed close signal is a protocol error, reported and not a panic.
        let (_, _, status, _) = session(addr, "/exec/default/p1/main?command=cat&stdin=1&stdout=1", &[&[CLOSE]]).await;
        assert!(status.contains("close signal must be 2 bytes"), "{status}");
        let (_, _, status, _) = session(addr, "/exec/default/nope/main?command=ls&stdout=1", &[]).await;
        assert!(status.contains("not found on this node"), "{status}");
        // Without an upgrade: 400 "Upgrade request required".
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"GET /exec/default/p1/main?command=ls&stdout=1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut resp = String::new();
        tcp.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 400") && resp.contains("Upgrade request required"), "{resp}");
        // Offering only an older subprotocol is refused before switching.
        let mut req = format!("ws://{addr}/exec/default/p1/main?command=ls&stdout=1").into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", "v4.channel.k8s.io".parse().unwrap());
        assert!(tokio_tungstenite::connect_async(req).await.is_err());
    }

    #[test]
    fn only_stdin_once_without_a_tty_keeps_a_session_past_the_end_of_its_stdin() {
        assert!(!session_ends_with_stdin(true, false), "kubectl run -i: stdin closes, output flows on");
        assert!(session_ends_with_stdin(false, false));
        assert!(session_ends_with_stdin(true, true));
        assert!(session_ends_with_stdin(false, true));
    }

    #[tokio::test]
    async fn attach_with_stdin_once_closes_the_containers_stdin_and_relays_output_until_it_exits() {
        let (addr, rt) = kubelet_rt("/nonexistent/0.log").await;
        rt.make_attachable("c1", false, true);
        let (out, err, status, close) = session(
            addr,
            "/attach/default/p1/main?stdin=true&stdout=true&stderr=true",
            &[&[STDIN, b'h', b'i', b'\n'], &[CLOSE, STDIN]],
        )
        .await;
        assert_eq!(out, "hi\nEOF\n", "input reached the container, then its EOF, then its last output");
        assert!(err.is_empty());
        assert_eq!(status, r#"{"metadata":{},"status":"Success"}"#);
        assert_eq!(close, Some(1000));
        assert!(!c1_running(&rt), "the container exited on its stdin's EOF");
    }

    #[tokio::test]
    async fn without_stdin_once_the_end_of_stdin_detaches_and_the_container_keeps_running() {
        let (addr, rt) = kubelet_rt("/nonexistent/0.log").await;
        rt.make_attachable("c1", false, false);
        let (_, _, status, close) =
            session(addr, "/attach/default/p1/main?stdin=1&stdout=1&stderr=1", &[&[STDIN, b'x'], &[CLOSE, STDIN]])
                .await;
        assert!(status.contains("Success"), "{status}");
        assert_eq!(close, Some(1000));
        assert!(c1_running(&rt));
        assert!(rt.calls().contains(&Call::Attach { container_id: "c1".into(), stdin: true }));
    }

    #[tokio::test]
    async fn a_tty_attach_relays_resizes_and_input_and_never_uses_channel_2() {
        let (addr, rt) = kubelet_rt("/nonexistent/0.log").await;
        rt.make_attachable("c1", true, true);
        let mut ws = open(addr, "/attach/default/p1/main?stdin=true&stdout=true&tty=true").await;
        for m in [&b"\x04{\"Width\":80,\"Height\":24}\n"[..], &[STDIN, b'x']] {
            ws.send(WsMsg::Binary(Bytes::copy_from_slice(m))).await.unwrap();
        }
        let mut out = String::new();
        while !(out.contains("80x24\n") && out.contains('x')) {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
                Some(Ok(WsMsg::Binary(b))) => {
                    assert_eq!(b.first(), Some(&STDOUT), "only stdout with a tty");
                    out.push_str(std::str::from_utf8(&b[1..]).unwrap());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // With a tty the end of the client's stdin detaches (stdinOnce or not).
        ws.send(WsMsg::Binary(Bytes::from_static(&[CLOSE, STDIN]))).await.unwrap();
        let mut status = Vec::new();
        while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
            if let WsMsg::Binary(b) = m {
                assert_ne!(b.first(), Some(&STDERR));
                if b.first() == Some(&STATUS) {
                    status.extend_from_slice(&b[1..]);
                }
            }
        }
        assert_eq!(status, br#"{"metadata":{},"status":"Success"}"#);
        assert!(c1_running(&rt));
    }

    #[tokio::test]
    async fn attach_with_stdin_to_a_container_without_stdin_ignores_the_input_and_follows_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(&log, "2024-01-01T00:00:00Z stdout F old line\n").unwrap();
        let (addr, rt) = kubelet_rt(log.to_str().unwrap()).await;
        let mut ws = open(addr, "/attach/default/p1/main?stdin=true&stdout=true&stderr=true").await;
        ws.send(WsMsg::Binary(Bytes::from_static(&[STDIN, b'x']))).await.unwrap();
        ws.send(WsMsg::Binary(Bytes::from_static(&[CLOSE, STDIN]))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            f.write_all(b"2024-01-01T00:00:01Z stderr F new line\n").unwrap();
        }
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
            Some(Ok(WsMsg::Binary(b))) => assert_eq!(&b[..], b"\x02new line\n", "only output from now on"),
            other => panic!("unexpected {other:?}"),
        }
        rt.exit("c1", 0);
        let mut status = Vec::new();
        while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
            if let WsMsg::Binary(b) = m {
                if b.first() == Some(&STATUS) {
                    status.extend_from_slice(&b[1..]);
                }
            }
        }
        assert_eq!(status, br#"{"metadata":{},"status":"Success"}"#, "no Failure for the ignored stdin");
    }
}
