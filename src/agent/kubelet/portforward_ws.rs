//! Port-forward over the WebSocket channel protocol (`v4.channel.k8s.io`, its base64 twin, or no
//! subprotocol), the one the Python `kubernetes` client's `portforward()` and other pre-tunnel
//! WebSocket clients speak; kubectl 1.31+ tunnels SPDY instead (`super::portforward`). Reproduces
//! upstream's kubelet (`pkg/kubelet/cri/streaming/portforward/websocket.go`) and containerd's CRI
//! `PortForward` underneath it:
//! - the ports are in the query, `port=80,8080` (the API server rewrites the client's `ports=`),
//!   checked before the upgrade;
//! - port `i` (in query order) gets two channels: data `2i` (both ways) and error `2i+1` (server
//!   to client); the first message on each is the port as a little-endian u16, which the
//!   Python client checks;
//! - each port is one connection to the pod, dialled at once; it ends when the pod side closes
//!   (or the session does: the protocol has no half-close). A failure is written as text on the
//!   port's error channel;
//! - the session ends, with Close 1000, once every port's connection has ended; a client closing
//!   the socket ends them all. Client messages for an error channel or an unknown channel are
//!   ignored, as are malformed base64 ones (upstream logs and drops them).

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::channel_protocol::Protocol;
use crate::agent::runtime::Runtime;

/// The query parameter upstream's kubelet reads (`api.PortHeader`).
pub const PORT_PARAM: &str = "port";

/// Channels are one byte, two per port.
pub const MAX_PORTS: usize = 128;

/// The ports of a request: every `port` value, each a comma-separated list of decimal numbers
/// from 1 to 65535 (Go's `ParseUint(p, 10, 16)`: digits only, no sign or spaces). Messages are
/// upstream's.
pub fn parse_ports(raw_query: Option<&str>) -> Result<Vec<u16>, String> {
    let values: Vec<String> = form_urlencoded::parse(raw_query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == PORT_PARAM)
        .map(|(_, v)| v.into_owned())
        .collect();
    if values.is_empty() {
        return Err(format!("query parameter {PORT_PARAM:?} is required"));
    }
    let mut ports = Vec::new();
    for value in &values {
        if value.is_empty() {
            return Err(format!("query parameter {PORT_PARAM:?} cannot be empty"));
        }
        for p in value.split(',') {
            let port: u16 = match p.parse() {
                Ok(n) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("unable to parse {value:?} as a port: {p:?} is not a number from 1 to 65535")),
            };
            if port < 1 {
                return Err(format!("port {value:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if ports.len() > MAX_PORTS {
        return Err(format!("at most {MAX_PORTS} ports can be forwarded over one connection, got {}", ports.len()));
    }
    Ok(ports)
}

/// The data channel of the `i`-th port.
pub fn data_channel(i: usize) -> u8 {
    (i * 2) as u8
}

/// The error channel of the `i`-th port.
pub fn error_channel(i: usize) -> u8 {
    (i * 2 + 1) as u8
}

/// The port index whose data channel `channel` is, among `ports` ports (error channels and
/// channels past the last port: `None`).
pub fn data_port(channel: u8, ports: usize) -> Option<usize> {
    let i = usize::from(channel / 2);
    (channel % 2 == 0 && i < ports).then_some(i)
}

/// Upgrades the request (the caller has checked the query and picked `proto`).
pub fn serve(
    rt: Arc<dyn Runtime>,
    ns: String,
    pod: String,
    uid: Option<String>,
    ports: Vec<u16>,
    proto: Protocol,
    ws: WebSocketUpgrade,
) -> axum::response::Response {
    ws.on_upgrade(move |socket| session(rt, socket, ns, pod, uid, ports, proto))
}

async fn session(
    rt: Arc<dyn Runtime>,
    socket: WebSocket,
    ns: String,
    pod: String,
    uid: Option<String>,
    ports: Vec<u16>,
    proto: Protocol,
) {
    let (mut sink, mut stream) = socket.split();
    // Both channels of every port announce it before any data (the client checks the number).
    for (i, port) in ports.iter().enumerate() {
        for ch in [data_channel(i), error_channel(i)] {
            if sink.send(proto.encode(ch, &port.to_le_bytes())).await.is_err() {
                return;
            }
        }
    }
    let uid = super::portforward::pod_uid(rt.as_ref(), &ns, &pod, uid.as_deref()).await;
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let mut inputs = Vec::with_capacity(ports.len());
    let mut forwards = tokio::task::JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        inputs.push(Some(tx));
        let target = Target { pod: format!("{ns}/{pod}"), uid: uid.clone(), port, index: i, proto };
        forwards.spawn(forward(rt.clone(), target, rx, out_tx.clone()));
    }
    drop(out_tx);
    // Everything the connections send, then Close 1000 once the last of them has ended.
    let mut writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
        let _ = sink.flush().await;
    });
    let client_gone = loop {
        tokio::select! {
            msg = stream.next() => {
                let data = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    // Upstream reads text frames like binary ones.
                    Some(Ok(Message::Text(t))) => Bytes::copy_from_slice(t.as_str().as_bytes()),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break true,
                    // Pings are answered by the WebSocket layer.
                    Some(Ok(_)) => continue,
                };
                let (ch, payload) = match proto.split(&data) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "port-forward: dropping a malformed message");
                        continue;
                    }
                };
                let Some(slot) = data_port(ch, ports.len()).and_then(|i| inputs.get_mut(i)) else { continue };
                if let Some(tx) = slot {
                    if !payload.is_empty() && tx.send(payload).await.is_err() {
                        // That port's connection has ended; later data has nowhere to go.
                        *slot = None;
                    }
                }
            }
            _ = forwards.join_next() => {
                if forwards.is_empty() {
                    break false;
                }
            }
        }
    };
    drop(inputs);
    if client_gone {
        forwards.abort_all();
        writer.abort();
        return;
    }
    // Deliver what is queued and the Close while still reading the socket, so that pongs go out
    // and the client's own Close ends the wait.
    let client_closed = async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    tokio::pin!(client_closed);
    tokio::select! {
        _ = &mut writer => {
            // The client answers our Close with its own.
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut client_closed).await;
        }
        _ = &mut client_closed => writer.abort(),
    }
}

/// One port of a session.
struct Target {
    /// `ns/name`, for messages.
    pod: String,
    uid: Result<String, String>,
    port: u16,
    index: usize,
    proto: Protocol,
}

/// One port's connection: dials the pod port, then copies both ways until the pod side closes
/// or the client's input ends (containerd's `PortForward` returns when either copy does).
async fn forward(rt: Arc<dyn Runtime>, t: Target, mut from_client: mpsc::Receiver<Bytes>, out: mpsc::Sender<Message>) {
    let fail = |msg: String| {
        let out = out.clone();
        async move {
            tracing::debug!(error = %msg, "port-forward failed");
            let _ = out.send(t.proto.encode(error_channel(t.index), msg.as_bytes())).await;
        }
    };
    let uid = match &t.uid {
        Ok(u) => u.clone(),
        Err(e) => return fail(format!("error forwarding port {} to pod {}: {e}", t.port, t.pod)).await,
    };
    let tcp = match rt.port_forward(&uid, t.port).await {
        Ok(s) => s,
        Err(e) => {
            return fail(format!("error forwarding port {} to pod {}, uid {uid}: {e}", t.port, t.pod)).await;
        }
    };
    let (mut r, mut w) = tcp.into_split();
    let to_pod = async move {
        while let Some(b) = from_client.recv().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
    };
    let from_pod = async {
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if out.send(t.proto.encode(data_channel(t.index), &chunk[..n])).await.is_err() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    };
    tokio::select! {
        _ = to_pod => {}
        r = from_pod => {
            if let Err(e) = r {
                fail(format!("error forwarding port {} to pod {}, uid {uid}: {e}", t.port, t.pod)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_repeated_comma_separated_port_parameters() {
        assert_eq!(parse_ports(Some("port=80")), Ok(vec![80]));
        assert_eq!(parse_ports(Some("port=80,8080&port=1")), Ok(vec![80, 8080, 1]));
        assert_eq!(parse_ports(Some("port=80%2C81")), Ok(vec![80, 81]), "form-encoded commas");
        assert_eq!(parse_ports(Some("port=65535")), Ok(vec![65535]));
    }

    #[test]
    fn bad_port_queries_are_refused_with_upstreams_messages() {
        assert_eq!(parse_ports(None), Err("query parameter \"port\" is required".to_string()));
        assert_eq!(parse_ports(Some("ports=80")), Err("query parameter \"port\" is required".to_string()));
        assert_eq!(parse_ports(Some("port=")), Err("query parameter \"port\" cannot be empty".to_string()));
        assert_eq!(parse_ports(Some("port=0")), Err("port \"0\" must be > 0".to_string()));
        for bad in ["port=http", "port=65536", "port=-1", "port=%2B80", "port=80,", "port=%2080", "port=1,x"] {
            let e = parse_ports(Some(bad)).unwrap_err();
            assert!(e.starts_with("unable to parse"), "{bad}: {e}");
        }
        let many = (1..=129).map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        assert!(parse_ports(Some(&format!("port={many}"))).unwrap_err().contains("at most 128"));
        let most = (1..=128).map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        assert_eq!(parse_ports(Some(&format!("port={most}"))).map(|p| p.len()), Ok(128));
    }

    #[test]
    fn each_port_has_a_data_and_an_error_channel() {
        assert_eq!((data_channel(0), error_channel(0)), (0, 1));
        assert_eq!((data_channel(1), error_channel(1)), (2, 3));
        assert_eq!((data_channel(127), error_channel(127)), (254, 255));
        assert_eq!(data_port(0, 2), Some(0));
        assert_eq!(data_port(2, 2), Some(1));
        assert_eq!(data_port(1, 2), None, "the client does not write error channels");
        assert_eq!(data_port(4, 2), None, "no third port");
        assert_eq!(data_port(254, 128), Some(127));
        assert_eq!(data_port(255, 128), None);
    }

    // --- whole sessions over a real WebSocket, against the fake runtime ---

    use crate::agent::kubelet::fake_runtime::FakeRuntime;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message as WsMsg};

    /// A kubelet whose pod `default/p1` has port 80 served by a one-shot echo server (it answers
    /// `echo:` + the first read, then closes) and no other port.
    async fn kubelet() -> std::net::SocketAddr {
        let rt = Arc::new(FakeRuntime::with_running_container("/nonexistent"));
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        rt.serve_port(80, echo.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    if let Ok(n) = c.read(&mut buf).await {
                        let mut reply = b"echo:".to_vec();
                        reply.extend_from_slice(&buf[..n]);
                        let _ = c.write_all(&reply).await;
                    }
                });
            }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, crate::agent::kubelet::streaming::router(rt)).await });
        addr
    }

    type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    async fn open(addr: std::net::SocketAddr, query: &str, protocols: &str) -> (Client, Option<String>) {
        let mut req = format!("ws://{addr}/portForward/default/p1?{query}").into_client_request().unwrap();
        if !protocols.is_empty() {
            req.headers_mut().insert("sec-websocket-protocol", protocols.parse().unwrap());
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        let proto = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string());
        (ws, proto)
    }

    /// Every message until the server closes: (raw payload, whether it was text), and the close code.
    async fn drain(ws: &mut Client) -> (Vec<(Vec<u8>, bool)>, Option<u16>) {
        let mut msgs = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
                Some(Ok(WsMsg::Binary(b))) => msgs.push((b.to_vec(), false)),
                Some(Ok(WsMsg::Text(t))) => msgs.push((t.as_bytes().to_vec(), true)),
                Some(Ok(WsMsg::Close(f))) => return (msgs, f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return (msgs, None),
            }
        }
    }

    #[tokio::test]
    async fn the_python_clients_offer_gets_v4_port_prefixes_data_and_a_close_when_the_pod_closes() {
        let addr = kubelet().await;
        let (mut ws, proto) = open(addr, "port=80", "v5.channel.k8s.io,v4.channel.k8s.io").await;
        assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"), "v5 has no port-forward");
        // Sent as text, the way the Python client's str writes go: read like binary.
        ws.send(WsMsg::Text("\u{0}ping".into())).await.unwrap();
        let (msgs, close) = drain(&mut ws).await;
        assert_eq!(msgs[0], (vec![0, 80, 0], false), "data channel: port 80, little-endian");
        assert_eq!(msgs[1], (vec![1, 80, 0], false), "error channel: port 80");
        let data: Vec<u8> = msgs[2..].iter().flat_map(|(m, _)| m[1..].to_vec()).collect();
        assert!(msgs[2..].iter().all(|(m, _)| m[0] == 0), "{msgs:?}");
        assert_eq!(data, b"echo:ping");
        assert_eq!(close, Some(1000), "the pod closed, so the session ends");
    }

    #[tokio::test]
    async fn a_port_nobody_serves_reports_on_its_error_channel_and_the_other_port_still_works() {
        let addr = kubelet().await;
        let (mut ws, _) = open(addr, "port=81,80", "v4.channel.k8s.io").await;
        // Port 80 is the second pair: channels 2 and 3.
        ws.send(WsMsg::Binary(Bytes::from_static(b"\x02hello"))).await.unwrap();
        // Writes to an error channel and to channels past the last port are ignored.
        ws.send(WsMsg::Binary(Bytes::from_static(b"\x03junk"))).await.unwrap();
        ws.send(WsMsg::Binary(Bytes::from_static(b"\x09junk"))).await.unwrap();
        let (msgs, close) = drain(&mut ws).await;
        let on = |ch: u8| -> Vec<u8> {
            msgs.iter().filter(|(m, _)| m[0] == ch).flat_map(|(m, _)| m[1..].to_vec()).collect()
        };
        assert_eq!(&on(0), &[81, 0]);
        let err = String::from_utf8(on(1)).unwrap();
        assert!(err.starts_with("Q\0error forwarding port 81 to pod default/p1, uid u1: "), "{err:?}");
        assert_eq!(on(2), b"\x50\x00echo:hello");
        assert_eq!(on(3), [80, 0], "no error for the port that worked");
        assert_eq!(close, Some(1000));
    }

    #[tokio::test]
    async fn base64_port_forward_frames_are_text_with_a_channel_digit() {
        use base64::Engine;
        let addr = kubelet().await;
        let (mut ws, proto) = open(addr, "port=80", "v4.base64.channel.k8s.io").await;
        assert_eq!(proto.as_deref(), Some("v4.base64.channel.k8s.io"));
        let b64 = base64::engine::general_purpose::STANDARD;
        ws.send(WsMsg::Text(format!("0{}", b64.encode("b64")).into())).await.unwrap();
        let (msgs, close) = drain(&mut ws).await;
        assert!(msgs.iter().all(|(_, text)| *text), "base64 messages are text");
        assert_eq!(msgs[0].0, format!("0{}", b64.encode([80u8, 0])).into_bytes());
        assert_eq!(msgs[1].0, format!("1{}", b64.encode([80u8, 0])).into_bytes());
        let data: Vec<u8> = msgs[2..].iter().flat_map(|(m, _)| b64.decode(&m[1..]).unwrap()).collect();
        assert_eq!(data, b"echo:b64");
        assert_eq!(close, Some(1000));
    }

    #[tokio::test]
    async fn refusals_come_before_the_upgrade_as_400_statuses() {
        let addr = kubelet().await;
        for (query, protocols, want) in [
            ("", "v4.channel.k8s.io", "query parameter \\\"port\\\" is required"),
            ("port=x", "v4.channel.k8s.io", "unable to parse"),
            ("port=80", "v5.channel.k8s.io", "not supported"),
        ] {
            let mut req = format!("ws://{addr}/portForward/default/p1?{query}").into_client_request().unwrap();
            req.headers_mut().insert("sec-websocket-protocol", protocols.parse().unwrap());
            match tokio_tungstenite::connect_async(req).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    assert_eq!(resp.status(), 400);
                    let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
                    assert!(body.contains("\"kind\":\"Status\"") && body.contains(want), "{query} {protocols}: {body}");
                }
                other => panic!("{query} {protocols}: expected a 400, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_client_that_closes_ends_the_forward() {
        let addr = kubelet().await;
        // No subprotocol at all: upstream's "" entry, binary framing, no header in the answer.
        let (mut ws, proto) = open(addr, "port=80", "").await;
        assert_eq!(proto, None);
        for _ in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap();
            assert!(matches!(m, Some(Ok(WsMsg::Binary(_)))), "{m:?}");
        }
        ws.close(None).await.unwrap();
        let rest =
            tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = ws.next().await {} }).await;
        assert!(rest.is_ok(), "the server finished the close handshake");
    }
}
