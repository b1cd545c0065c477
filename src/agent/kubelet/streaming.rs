//! The kubelet's streaming endpoints: `/exec/{ns}/{pod}/{container}` and
//! `/attach/{ns}/{pod}/{container}` over WebSocket `v5.channel.k8s.io`, the protocol kubectl 1.32
//! speaks first (kubectl-streaming guide §1–§2), and the older channel protocols other clients
//! offer (`v4.channel.k8s.io` for the Python client, base64 and pre-v4 ones: negotiation and
//! framing in `super::channel_protocol`); `/portForward/{ns}/{pod}` is handed to
//! `super::portforward` (kubectl's SPDY tunnel) or `super::portforward_ws` (the v4 channel
//! protocol). The API server relays the upgraded connection byte for byte (`src/api/stream.rs`),
//! subprotocol header included, so this is where the frames are read and written.
//!
//! Protocol facts reproduced here (guide §2; v5 unless said otherwise):
//! - the first byte is the channel: 0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize. Only the
//!   base64 protocols send text messages (a text message would make kubectl drop every stream);
//!   the client's messages are read alike whether text or binary.
//! - right after the upgrade an empty message goes to the lowest channel the server writes
//!   (stdout, else stderr, else status), as upstream's kubelet and API server tell the client the
//!   session is established.
//! - with a tty nothing is sent on channel 2 (kubectl reports "Unknown stream id 2").
//! - resize messages are `{"Width":W,"Height":H}` JSON values, possibly split or batched across
//!   messages, so they go through a streaming decoder.
//! - the client's `[255, ch]` half-closes channel `ch` (kubectl sends `[255,0]` at stdin EOF,
//!   which `kubectl cp` relies on); any other length is a protocol error. The server never sends
//!   255 messages (kubectl ignores them): output ends when the socket closes. Older protocols
//!   have no close signal: their stdin ends with the session.
//! - the end is one JSON Status on channel 3 (v4 too; v1–v3 send an error text, or nothing for
//!   success) and then Close 1000; an exit code becomes `NonZeroExitCode` with an `ExitCode`
//!   cause kubectl (and the Python client) turn into an exit status.
//!
//! A request that is not a WebSocket upgrade gets 400 (upstream's "Upgrade request required"),
//! as does one offering no channel protocol skiff serves (a client offering none at all gets
//! `channel.k8s.io` framing, as upstream); the SPDY fallback is not served.
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
use axum::http::{HeaderMap, StatusCode};
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

pub use super::channel_protocol::{Inbound, Protocol, CLOSE, RESIZE, STATUS, STDERR, STDIN, STDOUT};

/// The subprotocol kubectl 1.30+ offers (guide §2).
pub const V5: &str = "v5.channel.k8s.io";

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

/// Checks the upgrade and picks the subprotocol before switching protocols.
fn negotiate(
    ws: Option<WebSocketUpgrade>,
    headers: &HeaderMap,
    served: &[Protocol],
) -> Result<(WebSocketUpgrade, Protocol), Box<Response>> {
    let Some(ws) = ws else {
        return Err(Box::new(status_response(StatusCode::BAD_REQUEST, "BadRequest", "Upgrade request required")));
    };
    let offered = super::channel_protocol::offered(headers);
    let proto = super::channel_protocol::negotiate(&offered, served)
        .map_err(|e| Box::new(status_response(StatusCode::BAD_REQUEST, "BadRequest", &e)))?;
    // axum echoes the one name given here; `Unnamed` answers without the header, as upstream.
    let ws = match proto.name() {
        Some(name) => ws.protocols([name]),
        None => ws,
    };
    Ok((ws, proto))
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
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    handle(st, Kind::Exec, ns, pod, None, container, q, &headers, ws.ok())
}

async fn exec_uid(
    State(st): State<StreamState>,
    UrlPath((ns, pod, uid, container)): UrlPath<(String, String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    handle(st, Kind::Exec, ns, pod, Some(uid), container, q, &headers, ws.ok())
}

async fn attach(
    State(st): State<StreamState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    handle(st, Kind::Attach, ns, pod, None, container, q, &headers, ws.ok())
}

async fn attach_uid(
    State(st): State<StreamState>,
    UrlPath((ns, pod, uid, container)): UrlPath<(String, String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    handle(st, Kind::Attach, ns, pod, Some(uid), container, q, &headers, ws.ok())
}

async fn port_forward(
    State(st): State<StreamState>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    handle_port_forward(st, ns, pod, None, q, &headers, ws.ok())
}

async fn port_forward_uid(
    State(st): State<StreamState>,
    UrlPath((ns, pod, uid)): UrlPath<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    handle_port_forward(st, ns, pod, Some(uid), q, &headers, ws.ok())
}

/// kubectl 1.31+ offers `SPDY/3.1+portforward.k8s.io` (its SPDY tunnel); anything else is the
/// channel protocol of upstream's `portforward/websocket.go`, whose ports are in the query.
fn handle_port_forward(
    st: StreamState,
    ns: String,
    pod: String,
    uid: Option<String>,
    raw_query: Option<String>,
    headers: &HeaderMap,
    ws: Option<WebSocketUpgrade>,
) -> Response {
    let Some(ws) = ws else {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "Upgrade request required");
    };
    let offered = super::channel_protocol::offered(headers);
    if offered.iter().any(|p| p == super::portforward::PROTOCOL) {
        return super::portforward::serve(st.runtime, ns, pod, uid, ws);
    }
    // Upstream checks the ports before the upgrade: a bad query is a 400, not a broken session.
    let ports = match super::portforward_ws::parse_ports(raw_query.as_deref()) {
        Ok(p) => p,
        Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let (ws, proto) = match negotiate(Some(ws), headers, super::channel_protocol::PORT_FORWARD_PROTOCOLS) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    super::portforward_ws::serve(st.runtime, ns, pod, uid, ports, proto, ws)
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
    headers: &HeaderMap,
    ws: Option<WebSocketUpgrade>,
) -> Response {
    let q = match parse_query(raw_query.as_deref()) {
        Ok(q) => q,
        Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    if kind == Kind::Exec && q.command.is_empty() {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "you must specify at least one command");
    }
    let (ws, proto) = match negotiate(ws, headers, super::channel_protocol::EXEC_PROTOCOLS) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    ws.on_upgrade(move |mut socket| async move {
        // Upstream's "the connection is established" message (module header).
        if socket.send(proto.encode(ready_channel(&q), &[])).await.is_err() {
            return;
        }
        // Errors from here on reach the user as a Failure status (kubectl prints "error: …").
        let target = find_container(st.runtime.as_ref(), &ns, &pod, uid.as_deref(), &container).await;
        match (kind, target) {
            (_, Err(e)) => finish(socket, proto, Err(e)).await,
            (Kind::Exec, Ok(c)) => run_exec(st.runtime, socket, proto, c, q).await,
            (Kind::Attach, Ok(c)) => run_attach(st.runtime, socket, proto, c, q).await,
        }
    })
}

/// The lowest channel the server writes to: stdout, else stderr, else the status channel.
pub fn ready_channel(q: &StreamQuery) -> u8 {
    if q.stdout {
        STDOUT
    } else if q.stderr {
        STDERR
    } else {
        STATUS
    }
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

/// Sends the final status on channel 3 (if the protocol has one for `result`), then Close 1000.
async fn finish(mut socket: WebSocket, proto: Protocol, result: Result<i32, String>) {
    if let Some(m) = proto.final_status(&result) {
        let _ = socket.send(m).await;
    }
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

/// Reads client messages: stdin → `stdin`, resizes → `resize`, `[255,0]` (v5) closes stdin.
async fn read_client(
    mut rx: futures::stream::SplitStream<WebSocket>,
    proto: Protocol,
    mut stdin: Option<tokio::sync::mpsc::Sender<Bytes>>,
    resize: tokio::sync::mpsc::UnboundedSender<TermSize>,
) -> ClientEnd {
    let mut sizes = ResizeDecoder::default();
    while let Some(msg) = rx.next().await {
        let data = match msg {
            Ok(Message::Binary(b)) => b,
            // Upstream reads text frames like binary ones (channel_protocol's header).
            Ok(Message::Text(t)) => Bytes::copy_from_slice(t.as_str().as_bytes()),
            Ok(Message::Close(_)) | Err(_) => return ClientEnd::Gone,
            // Pings are answered by the WebSocket layer.
            Ok(_) => continue,
        };
        match proto.decode(&data) {
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

async fn run_exec(rt: Arc<dyn Runtime>, socket: WebSocket, proto: Protocol, c: ContainerStatus, q: StreamQuery) {
    // Read the client from the start: with a tty kubectl sends the terminal size first
    // (guide §2), and the process should start with it rather than race a later ResizePty.
    let (mut tx, rx) = socket.split();
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::unbounded_channel::<TermSize>();
    let mut reader = tokio::spawn(read_client(rx, proto, q.stdin.then_some(stdin_tx), resize_tx));
    let initial_size =
        if q.tty { tokio::time::timeout(Duration::from_secs(1), resize_rx.recv()).await.ok().flatten() } else { None };
    let opts = ExecOptions { command: q.command.clone(), tty: q.tty, stdin: q.stdin, initial_size };
    let session = match rt.exec(&c.id, &opts).await {
        Ok(s) => s,
        Err(e) => {
            reader.abort();
            return finish_split(tx, proto, Err(format!("exec in container {}: {e}", c.name))).await;
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
                Some(b) if q.stdout => if tx.send(proto.encode(STDOUT, &b)).await.is_err() {
                    client_end = Some(ClientEnd::Gone);
                    break;
                },
                Some(_) => {}
                None => out_open = false,
            },
            b = stderr.recv(), if err_open => match b {
                // Never channel 2 with a tty (guide §2); the runtime sends nothing there anyway.
                Some(b) if q.stderr && !q.tty => if tx.send(proto.encode(STDERR, &b)).await.is_err() {
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
    finish_split(tx, proto, result).await;
    drop(kill_on_drop);
}

/// [`finish`] on a split socket (the read half belongs to the aborted reader).
async fn finish_split(
    mut tx: futures::stream::SplitSink<WebSocket, Message>,
    proto: Protocol,
    result: Result<i32, String>,
) {
    if let Some(m) = proto.final_status(&result) {
        let _ = tx.send(m).await;
    }
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

async fn run_attach(rt: Arc<dyn Runtime>, socket: WebSocket, proto: Protocol, c: ContainerStatus, q: StreamQuery) {
    let opts = AttachOptions { stdin: q.stdin, stdout: q.stdout, stderr: q.stderr };
    match rt.attach(&c.id, &opts).await {
        Ok(Some(session)) => relay_attach(socket, proto, q, session).await,
        Ok(None) => follow_log(rt, socket, proto, c, q).await,
        Err(RuntimeError::NotFound(m)) => {
            finish(socket, proto, Err(format!("container {} is not running: {m}", c.name))).await
        }
        Err(e) => finish(socket, proto, Err(format!("attaching to container {}: {e}", c.name))).await,
    }
}

/// Attach to a container with a live stream ([`AttachSession`]): client input to its stdin,
/// its output from now on to the client, resizes to its terminal.
async fn relay_attach(socket: WebSocket, proto: Protocol, q: StreamQuery, session: AttachSession) {
    let AttachSession { tty, stdin_once, stdin, mut stdout, mut stderr, resize, end, detach_on_drop } = session;
    let (mut tx, rx) = socket.split();
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::unbounded_channel::<TermSize>();
    let mut reader = tokio::spawn(read_client(rx, proto, q.stdin.then_some(stdin_tx), resize_tx));
    // `stdin` is None when the container has no (more) stdin: input is then read and dropped,
    // and its end changes nothing (upstream ignores attach input for such a container).
    let mut stdin = stdin;
    let (mut out_open, mut err_open, mut in_open, mut resize_open) = (true, true, q.stdin, true);
    let mut result = None;
    while out_open || err_open {
        tokio::select! {
            b = stdout.recv(), if out_open => match b {
                Some(b) if q.stdout => if tx.send(proto.encode(STDOUT, &b)).await.is_err() {
                    return;
                },
                Some(_) => {}
                None => out_open = false,
            },
            b = stderr.recv(), if err_open => match b {
                // Never channel 2 with a tty (guide §2); the logger sends no stderr then anyway.
                Some(b) if q.stderr && !tty => if tx.send(proto.encode(STDERR, &b)).await.is_err() {
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
    finish_split(tx, proto, result).await;
}

/// Attach to a container whose output only goes to its log file: follow the file from its end.
/// Input is read and dropped (the container has no stdin to give it to).
async fn follow_log(rt: Arc<dyn Runtime>, socket: WebSocket, proto: Protocol, c: ContainerStatus, q: StreamQuery) {
    let mut file = match tokio::fs::File::open(&c.log_path).await {
        Ok(f) => f,
        Err(e) => return finish(socket, proto, Err(format!("opening the log of container {}: {e}", c.name))).await,
    };
    // Attach shows what the container writes from now on.
    if let Err(e) = file.seek(std::io::SeekFrom::End(0)).await {
        return finish(socket, proto, Err(format!("reading the log of container {}: {e}", c.name))).await;
    }
    let (mut tx, rx) = socket.split();
    let (resize_tx, _resize_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut reader = tokio::spawn(read_client(rx, proto, None, resize_tx));
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
                if (wanted || (q.tty && q.stdout)) && tx.send(proto.encode(ch, &data)).await.is_err() {
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
    finish_split(tx, proto, Ok(0)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message as WsMsg};

    async fn kubelet() -> std::net::SocketAddr {
        kubelet_rt("/nonexistent/0.log").await.0
    }

    /// A kubelet on the fake runtime with one running container `c1` (`default/p1`, `main`)
    /// whose log file is `log_path`.
    async fn kubelet_rt(log_path: &str) -> (std::net::SocketAddr, Arc<FakeRuntime>) {
        let rt = Arc::new(FakeRuntime::with_running_container(log_path));
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

    /// Runs one v5 session: sends `input` messages, returns (stdout, stderr, status JSON, close code).
    async fn session(addr: std::net::SocketAddr, path: &str, input: &[&[u8]]) -> (String, String, String, Option<u16>) {
        let input: Vec<WsMsg> = input.iter().map(|m| WsMsg::Binary(Bytes::copy_from_slice(m))).collect();
        let r = session_with(addr, path, Some(V5), input).await;
        assert_eq!(r.protocol.as_deref(), Some(V5));
        assert!(!r.text, "v5 sends binary messages only");
        (r.stdout, r.stderr, r.status, r.close)
    }

    /// What a session sent back, channels decoded with the negotiated protocol.
    struct Outcome {
        protocol: Option<String>,
        stdout: String,
        stderr: String,
        status: String,
        /// Messages on channel 3 (v1–v3 send none for success).
        status_messages: usize,
        /// Whether any message was text.
        text: bool,
        /// The first message's (channel, data length): upstream's "connection established" one.
        first: Option<(u8, usize)>,
        close: Option<u16>,
    }

    /// Runs one session offering `protocols` (none: no header), sending `input` as is.
    async fn session_with(
        addr: std::net::SocketAddr,
        path: &str,
        protocols: Option<&str>,
        input: Vec<WsMsg>,
    ) -> Outcome {
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        if let Some(p) = protocols {
            req.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
        }
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        let protocol = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string());
        let proto = match protocol.as_deref() {
            None => Protocol::Unnamed,
            Some(name) => *super::super::channel_protocol::EXEC_PROTOCOLS
                .iter()
                .find(|p| p.name() == Some(name))
                .expect("a served protocol"),
        };
        for m in input {
            ws.send(m).await.unwrap();
        }
        let mut o = Outcome {
            protocol,
            stdout: String::new(),
            stderr: String::new(),
            status: String::new(),
            status_messages: 0,
            text: false,
            first: None,
            close: None,
        };
        while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
            let raw = match m {
                WsMsg::Binary(b) => b.to_vec(),
                WsMsg::Text(t) => {
                    o.text = true;
                    t.as_bytes().to_vec()
                }
                WsMsg::Close(f) => {
                    o.close = f.map(|f| u16::from(f.code));
                    continue;
                }
                _ => continue,
            };
            let (ch, data) = proto.split(&raw).unwrap().expect("no empty messages");
            o.first.get_or_insert((ch, data.len()));
            let data = String::from_utf8(data.to_vec()).unwrap();
            match ch {
                STDOUT => o.stdout.push_str(&data),
                STDERR => o.stderr.push_str(&data),
                STATUS => {
                    o.status_messages += 1;
                    o.status.push_str(&data)
                }
                other => panic!("unexpected channel {other}"),
            }
        }
        o
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
        // Offering no protocol skiff serves is refused before switching, with a Status.
        let mut req = format!("ws://{addr}/exec/default/p1/main?command=ls&stdout=1").into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", "v9.channel.k8s.io".parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400);
                let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
                assert!(body.contains("\"kind\":\"Status\"") && body.contains("not supported"), "{body}");
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_python_clients_v4_gets_the_exit_code_as_a_json_status() {
        let addr = kubelet().await;
        let r = session_with(
            addr,
            "/exec/default/p1/main?command=exit&command=3&stdout=1&stderr=1",
            Some("v4.channel.k8s.io"),
            vec![],
        )
        .await;
        assert_eq!(r.protocol.as_deref(), Some("v4.channel.k8s.io"));
        assert!(!r.text);
        assert_eq!(r.first, Some((STDOUT, 0)), "an empty stdout message opens the session");
        let v: serde_json::Value = serde_json::from_str(&r.status).unwrap();
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert_eq!(r.close, Some(1000));
        let r = session_with(
            addr,
            "/exec/default/p1/main?command=stderr&command=oops&stdout=1&stderr=1",
            Some("v4.channel.k8s.io"),
            vec![],
        )
        .await;
        assert_eq!((r.stderr.as_str(), r.status.as_str()), ("oops\n", r#"{"metadata":{},"status":"Success"}"#));
    }

    #[tokio::test]
    async fn text_frames_from_the_client_are_stdin_too() {
        // The Python client's write_stdin("…") sends text frames, channel byte first.
        let addr = kubelet().await;
        let r = session_with(
            addr,
            "/exec/default/p1/main?command=cat&stdin=1&stdout=1",
            Some("v5.channel.k8s.io, v4.channel.k8s.io"),
            vec![WsMsg::Text("\u{0}typed".into()), WsMsg::Binary(Bytes::from_static(&[CLOSE, STDIN]))],
        )
        .await;
        assert_eq!(r.protocol.as_deref(), Some(V5), "the Python client's offer gets v5");
        assert_eq!(r.stdout, "typed");
        assert!(r.status.contains("Success"), "{}", r.status);
    }

    #[tokio::test]
    async fn before_v5_the_close_signal_is_no_close_and_stdin_ends_with_the_socket() {
        let (addr, rt) = kubelet_rt("/nonexistent/0.log").await;
        let mut req =
            format!("ws://{addr}/exec/default/p1/main?command=cat&stdin=1&stdout=1").into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", "v4.channel.k8s.io".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(WsMsg::Binary(Bytes::from_static(b"\x00hi"))).await.unwrap();
        ws.send(WsMsg::Binary(Bytes::from_static(&[CLOSE, STDIN]))).await.unwrap();
        let mut out = Vec::new();
        while out != b"hi" {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
                Some(Ok(WsMsg::Binary(b))) if b.first() == Some(&STDOUT) => out.extend_from_slice(&b[1..]),
                other => panic!("unexpected {other:?}"),
            }
        }
        // `cat` still runs: [255,0] was a message for a channel v4 does not have.
        let more = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
        assert!(more.is_err(), "nothing more until the client goes: {more:?}");
        assert!(rt.calls().iter().any(|c| matches!(c, Call::Exec { .. })));
        ws.close(None).await.unwrap();
    }

    #[tokio::test]
    async fn base64_protocols_send_text_frames_with_a_channel_digit_and_read_base64_stdin() {
        let addr = kubelet().await;
        let r = session_with(
            addr,
            "/exec/default/p1/main?command=echo&command=hi&stdout=1",
            Some("v4.base64.channel.k8s.io"),
            vec![],
        )
        .await;
        assert_eq!(r.protocol.as_deref(), Some("v4.base64.channel.k8s.io"));
        assert!(r.text, "base64 data travels in text messages");
        assert_eq!((r.stdout.as_str(), r.status.as_str()), ("hi\n", r#"{"metadata":{},"status":"Success"}"#));
        // Input: "0" + base64; the old base64 protocol has no close signal, so `exit` ends it.
        let r = session_with(
            addr,
            "/exec/default/p1/main?command=exit&command=2&stdin=1&stdout=1",
            Some("base64.channel.k8s.io"),
            vec![WsMsg::Text("0aGk=".into())],
        )
        .await;
        assert!(r.text);
        assert!(r.status.ends_with("exit code 2"), "pre-v4: the error as text: {:?}", r.status);
        // Malformed base64 is a protocol error reported on the status channel, not a panic.
        let r = session_with(
            addr,
            "/exec/default/p1/main?command=cat&stdin=1&stdout=1",
            Some("v4.base64.channel.k8s.io"),
            vec![WsMsg::Text("0!!".into())],
        )
        .await;
        assert!(r.status.contains("invalid base64 data on channel 0"), "{}", r.status);
    }

    #[tokio::test]
    async fn pre_v4_protocols_say_nothing_for_success_and_the_message_for_a_failure() {
        let addr = kubelet().await;
        for offer in
            [Some("channel.k8s.io"), Some("v2.channel.k8s.io"), Some("v3.channel.k8s.io, channel.k8s.io"), None]
        {
            let r = session_with(addr, "/exec/default/p1/main?command=echo&command=ok&stdout=1", offer, vec![]).await;
            assert_eq!(r.stdout, "ok\n", "{offer:?}");
            assert_eq!(r.status_messages, 0, "{offer:?}: success is silence");
            assert_eq!(r.close, Some(1000));
            let r = session_with(addr, "/exec/default/nope/main?command=ls&stdout=1", offer, vec![]).await;
            assert!(
                r.status.contains("not found on this node") && !r.status.starts_with('{'),
                "{offer:?}: {}",
                r.status
            );
        }
        let r = session_with(addr, "/exec/default/p1/main?command=echo&command=ok&stdout=1", None, vec![]).await;
        assert_eq!(r.protocol, None, "no subprotocol offered, none in the answer");
        let r = session_with(
            addr,
            "/exec/default/p1/main?command=echo&command=ok&stdout=1",
            Some("v3.channel.k8s.io, channel.k8s.io"),
            vec![],
        )
        .await;
        assert_eq!(r.protocol.as_deref(), Some("v3.channel.k8s.io"));
    }

    #[test]
    fn the_first_message_goes_to_the_lowest_channel_the_server_writes() {
        let q = |stdout, stderr| StreamQuery { stdout, stderr, ..Default::default() };
        assert_eq!(ready_channel(&q(true, true)), STDOUT);
        assert_eq!(ready_channel(&q(false, true)), STDERR);
        assert_eq!(ready_channel(&q(false, false)), STATUS);
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
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
                // The empty stdout message that opens every session.
                Some(Ok(WsMsg::Binary(b))) if b[..] == [STDOUT] => continue,
                Some(Ok(WsMsg::Binary(b))) => {
                    assert_eq!(&b[..], b"\x02new line\n", "only output from now on");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
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
