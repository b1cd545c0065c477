//! The WebSocket channel subprotocols of exec, attach and the legacy WebSocket port-forward:
//! which one a client gets, and how each frames its messages (pure functions; the sessions are
//! in `super::streaming` and `super::portforward_ws`).
//!
//! kubectl 1.30+ offers only `v5.channel.k8s.io` (kubectl-streaming guide §2). Other clients
//! (the Python `kubernetes` client, client-go before 1.30's WebSocket users, browser consoles)
//! offer the older names that upstream's kubelet serves
//! (`pkg/kubelet/cri/streaming/remotecommand/websocket.go`, framing in apimachinery's
//! `pkg/util/httpstream/wsstream/conn.go`):
//!
//! | subprotocol | framing | error channel (3) | close signal |
//! |---|---|---|---|
//! | `v5.channel.k8s.io` | binary | JSON `Status` | `[255, ch]` |
//! | `v4.channel.k8s.io` | binary | JSON `Status` | no |
//! | `v4.base64.channel.k8s.io` | base64 text | JSON `Status` | no |
//! | `v3.channel.k8s.io`, `v2.channel.k8s.io` | binary | plain-text message on failure | no |
//! | `channel.k8s.io`, none offered | binary | plain-text message on failure | no |
//! | `base64.channel.k8s.io` | base64 text | plain-text message on failure | no |
//!
//! - Binary framing: the first byte is the channel, the rest is data.
//! - Base64 framing: a text message whose first byte is the ASCII digit of the channel
//!   (`'0' + ch`), then the data in standard base64 (both directions).
//! - A client may send its messages as text or binary frames whatever the protocol: upstream
//!   reads both alike (`websocket.Message.Receive` into a `[]byte`), and the Python client
//!   sends `write_stdin("…")` strings as text frames.
//! - Only v5 has the close signal. Under an older protocol `[255, …]` is a message for a channel
//!   that does not exist, which upstream ignores; the client's stdin then ends only with the
//!   socket (upstream's reason for v5, guide §6).
//! - v1–v3 report success by sending nothing on channel 3 and a failure as its message text
//!   (upstream's `v1WriteStatusFunc`); v4 and v5 send the JSON Status (`v4WriteStatusFunc`).
//! - The resize channel (4) is read under every protocol, as upstream's kubelet opens it for all
//!   of them (`createChannels`); clients older than v3 never write to it.
//!
//! Choice: the best protocol the client offers, in [`EXEC_PROTOCOLS`] order (v5 first, a
//! binary protocol before its base64 twin). Upstream's wsstream takes the client's first
//! offered name instead; the two agree for every client that lists its protocols newest first
//! (kubectl, client-go, the Python client).

use axum::extract::ws::Message;
use axum::http::HeaderMap;
use base64::Engine;
use bytes::Bytes;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;
/// The v5 close signal's marker byte (`[255, channel]`).
pub const CLOSE: u8 = 255;

/// A channel subprotocol. [`Protocol::Unnamed`] is a client that offered none: upstream serves it
/// `channel.k8s.io` framing and answers without a `Sec-WebSocket-Protocol` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V5,
    V4,
    V4Base64,
    V3,
    V2,
    V1,
    V1Base64,
    Unnamed,
}

/// What exec and attach serve, best first.
pub const EXEC_PROTOCOLS: &[Protocol] = &[
    Protocol::V5,
    Protocol::V4,
    Protocol::V4Base64,
    Protocol::V3,
    Protocol::V2,
    Protocol::V1,
    Protocol::V1Base64,
    Protocol::Unnamed,
];

/// What the legacy WebSocket port-forward serves (upstream's `portforward/websocket.go`: v4 in
/// both framings, or no subprotocol at all).
pub const PORT_FORWARD_PROTOCOLS: &[Protocol] = &[Protocol::V4, Protocol::V4Base64, Protocol::Unnamed];

impl Protocol {
    /// The `Sec-WebSocket-Protocol` name (none for [`Protocol::Unnamed`]).
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Protocol::V5 => "v5.channel.k8s.io",
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V4Base64 => "v4.base64.channel.k8s.io",
            Protocol::V3 => "v3.channel.k8s.io",
            Protocol::V2 => "v2.channel.k8s.io",
            Protocol::V1 => "channel.k8s.io",
            Protocol::V1Base64 => "base64.channel.k8s.io",
            Protocol::Unnamed => return None,
        })
    }

    /// Data travels base64-encoded in text messages.
    pub fn base64(self) -> bool {
        matches!(self, Protocol::V4Base64 | Protocol::V1Base64)
    }

    /// Channel 3 carries a JSON Status (v4 and later) rather than an error text.
    pub fn json_status(self) -> bool {
        matches!(self, Protocol::V5 | Protocol::V4 | Protocol::V4Base64)
    }

    /// `[255, ch]` half-closes channel `ch` (v5 only).
    pub fn close_signal(self) -> bool {
        self == Protocol::V5
    }

    /// One server message on `channel`.
    pub fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64() {
            let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            // Channels above 9 become the ASCII characters after '9', as Go's `'0'+num` does.
            s.push(char::from(b'0'.wrapping_add(channel)));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::Text(s.into())
        } else {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(channel);
            v.extend_from_slice(data);
            Message::Binary(Bytes::from(v))
        }
    }

    /// Splits a client message into its channel and (decoded) data; `None` for an empty message,
    /// which upstream skips.
    pub fn split(self, msg: &[u8]) -> Result<Option<(u8, Bytes)>, String> {
        let Some((&first, rest)) = msg.split_first() else { return Ok(None) };
        if !self.base64() {
            return Ok(Some((first, Bytes::copy_from_slice(rest))));
        }
        let channel = first.wrapping_sub(b'0');
        // Go's base64 decoder skips CR and LF; the Rust one would refuse them.
        let text: Vec<u8> = rest.iter().copied().filter(|b| *b != b'\r' && *b != b'\n').collect();
        let data = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .map_err(|e| format!("invalid base64 data on channel {channel}: {e}"))?;
        Ok(Some((channel, Bytes::from(data))))
    }

    /// Decodes one exec/attach client message. Errors name the protocol violation.
    pub fn decode(self, msg: &[u8]) -> Result<Inbound, String> {
        if self.close_signal() && msg.first() == Some(&CLOSE) {
            return match msg {
                [_, ch] => Ok(Inbound::CloseChannel(*ch)),
                _ => Err(format!("close signal must be 2 bytes, got {}", msg.len())),
            };
        }
        Ok(match self.split(msg)? {
            Some((STDIN, data)) => Inbound::Stdin(data),
            Some((RESIZE, data)) => Inbound::Resize(data),
            // Other channels, and 255 before v5, are channels the server does not read.
            _ => Inbound::Ignored,
        })
    }

    /// The last message on channel 3 for a session's result, if the protocol sends one.
    pub fn final_status(self, result: &Result<i32, String>) -> Option<Message> {
        if self.json_status() {
            return Some(self.encode(STATUS, status_json(result).as_bytes()));
        }
        // `v1WriteStatusFunc`: nothing for success, else the Status' message.
        match result {
            Ok(0) => None,
            Ok(code) => Some(self.encode(STATUS, exit_message(*code).as_bytes())),
            Err(msg) => Some(self.encode(STATUS, msg.as_bytes())),
        }
    }
}

/// A message from an exec/attach client, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Stdin(Bytes),
    Resize(Bytes),
    /// `[255, ch]` (v5): the client will send nothing more on `ch`.
    CloseChannel(u8),
    /// An empty message or a channel the server does not read; ignored.
    Ignored,
}

/// The subprotocols a request offers, in its order: every `Sec-WebSocket-Protocol` header,
/// each a comma-separated list.
pub fn offered(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The best of `served` that the client offers. A client that offers nothing gets
/// [`Protocol::Unnamed`] when it is served; one whose every offer is unknown gets an error
/// listing what is served.
pub fn negotiate(offered: &[String], served: &[Protocol]) -> Result<Protocol, String> {
    if offered.is_empty() && served.contains(&Protocol::Unnamed) {
        return Ok(Protocol::Unnamed);
    }
    served.iter().copied().find(|p| p.name().is_some_and(|n| offered.iter().any(|o| o == n))).ok_or_else(|| {
        let names: Vec<&str> = served.iter().filter_map(|p| p.name()).collect();
        format!("requested protocol(s) are not supported: {offered:?}; supports {names:?}")
    })
}

/// The message of a non-zero exit's Status (upstream's kubelet: "command terminated with
/// non-zero exit code: …").
fn exit_message(code: i32) -> String {
    format!("command terminated with non-zero exit code: error executing command, exit code {code}")
}

/// The JSON Status on channel 3 (guide §2 "Ending"), as `json.Marshal(metav1.Status)` writes it:
/// no kind or apiVersion.
pub fn status_json(result: &Result<i32, String>) -> String {
    match result {
        Ok(0) => r#"{"metadata":{},"status":"Success"}"#.to_string(),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": exit_message(*code),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn bytes_of(m: &Message) -> Vec<u8> {
        match m {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            other => panic!("not a data message: {other:?}"),
        }
    }

    #[test]
    fn the_best_offered_protocol_wins_whatever_the_clients_order() {
        use Protocol::*;
        let pick = |v: &[&str]| negotiate(&offers(v), EXEC_PROTOCOLS);
        assert_eq!(pick(&["v5.channel.k8s.io"]), Ok(V5), "kubectl 1.30+");
        assert_eq!(pick(&["v5.channel.k8s.io", "v4.channel.k8s.io"]), Ok(V5), "the Python client");
        assert_eq!(pick(&["v4.channel.k8s.io", "v5.channel.k8s.io"]), Ok(V5));
        assert_eq!(pick(&["channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io"]), Ok(V3));
        assert_eq!(pick(&["v2.channel.k8s.io", "channel.k8s.io"]), Ok(V2));
        assert_eq!(pick(&["base64.channel.k8s.io", "v4.base64.channel.k8s.io"]), Ok(V4Base64));
        assert_eq!(pick(&["v4.base64.channel.k8s.io", "v4.channel.k8s.io"]), Ok(V4), "binary before base64");
        assert_eq!(pick(&["x", "base64.channel.k8s.io"]), Ok(V1Base64));
        assert_eq!(pick(&[]), Ok(Unnamed), "no subprotocol: channel.k8s.io framing");
        let e = pick(&["SPDY/3.1+portforward.k8s.io", "v9.channel.k8s.io"]).unwrap_err();
        assert!(e.contains("not supported") && e.contains("v5.channel.k8s.io"), "{e}");
    }

    #[test]
    fn port_forward_serves_v4_only_and_never_v5() {
        let pick = |v: &[&str]| negotiate(&offers(v), PORT_FORWARD_PROTOCOLS);
        assert_eq!(pick(&["v5.channel.k8s.io", "v4.channel.k8s.io"]), Ok(Protocol::V4), "the Python client");
        assert_eq!(pick(&["v4.base64.channel.k8s.io"]), Ok(Protocol::V4Base64));
        assert_eq!(pick(&[]), Ok(Protocol::Unnamed));
        assert!(pick(&["v5.channel.k8s.io"]).is_err());
        assert!(pick(&["channel.k8s.io"]).is_err(), "upstream's port-forward has no v1 entry");
    }

    #[test]
    fn offered_protocols_come_from_every_header_line_and_comma_list() {
        let mut h = HeaderMap::new();
        assert!(offered(&h).is_empty());
        h.append("sec-websocket-protocol", "v5.channel.k8s.io, v4.channel.k8s.io".parse().unwrap());
        h.append("sec-websocket-protocol", "channel.k8s.io,,".parse().unwrap());
        assert_eq!(offered(&h), offers(&["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"]));
    }

    #[test]
    fn binary_protocols_frame_with_a_channel_byte() {
        for p in [Protocol::V5, Protocol::V4, Protocol::V3, Protocol::V1, Protocol::Unnamed] {
            assert_eq!(p.encode(STDOUT, b"hi"), Message::Binary(Bytes::from_static(&[1, b'h', b'i'])), "{p:?}");
            assert_eq!(p.split(&[0, b'x']).unwrap(), Some((0, Bytes::from_static(b"x"))));
            assert_eq!(p.split(&[]).unwrap(), None);
        }
    }

    #[test]
    fn base64_protocols_frame_with_an_ascii_digit_and_base64_text() {
        for p in [Protocol::V4Base64, Protocol::V1Base64] {
            // wsstream's own example: "\n" on stdout is "1Cg==".
            assert_eq!(p.encode(STDOUT, b"\n"), Message::Text("1Cg==".into()));
            assert_eq!(p.encode(STATUS, b""), Message::Text("3".into()), "an empty message is the digit alone");
            assert_eq!(p.split(b"0Zm9vCg==").unwrap(), Some((STDIN, Bytes::from_static(b"foo\n"))));
            assert_eq!(p.split(b"0Zm9v\r\nCg==").unwrap(), Some((STDIN, Bytes::from_static(b"foo\n"))));
            assert_eq!(p.split(b"4").unwrap(), Some((RESIZE, Bytes::new())));
            assert!(p.split(b"0not base64!").unwrap_err().contains("invalid base64 data on channel 0"));
            // Bytes below '0' wrap to a channel no one reads, rather than panicking.
            assert_eq!(p.split(b"\x01").unwrap().map(|(c, _)| c), Some(209));
            assert_eq!(p.decode(b"\x01").unwrap(), Inbound::Ignored);
        }
        assert_eq!(Protocol::V4Base64.encode(12, b""), Message::Text("<".into()), "'0' + 12, as Go writes it");
    }

    #[test]
    fn only_v5_reads_the_close_signal() {
        assert_eq!(Protocol::V5.decode(&[CLOSE, STDIN]).unwrap(), Inbound::CloseChannel(0));
        assert!(Protocol::V5.decode(&[CLOSE]).is_err(), "a close signal is exactly two bytes");
        assert!(Protocol::V5.decode(&[CLOSE, 0, 1]).is_err());
        for p in [Protocol::V4, Protocol::V3, Protocol::V2, Protocol::V1, Protocol::Unnamed] {
            assert_eq!(p.decode(&[CLOSE, STDIN]).unwrap(), Inbound::Ignored, "{p:?}: channel 255 is no channel");
            assert_eq!(p.decode(&[CLOSE]).unwrap(), Inbound::Ignored, "{p:?}");
        }
    }

    #[test]
    fn client_messages_map_to_stdin_and_resize_under_every_protocol() {
        for &p in EXEC_PROTOCOLS {
            let m = |ch: u8, data: &[u8]| bytes_of(&p.encode(ch, data));
            assert_eq!(p.decode(&m(STDIN, b"hi")).unwrap(), Inbound::Stdin(Bytes::from_static(b"hi")), "{p:?}");
            assert_eq!(p.decode(&m(RESIZE, b"{")).unwrap(), Inbound::Resize(Bytes::from_static(b"{")), "{p:?}");
            assert_eq!(p.decode(&m(STDOUT, b"x")).unwrap(), Inbound::Ignored, "{p:?}");
            assert_eq!(p.decode(&[]).unwrap(), Inbound::Ignored, "{p:?}");
        }
    }

    #[test]
    fn v4_and_v5_end_with_a_json_status_and_older_protocols_with_an_error_text_or_nothing() {
        for p in [Protocol::V5, Protocol::V4] {
            let m = p.final_status(&Ok(0)).unwrap();
            assert_eq!(bytes_of(&m), b"\x03{\"metadata\":{},\"status\":\"Success\"}");
            let v: serde_json::Value =
                serde_json::from_slice(&bytes_of(&p.final_status(&Ok(3)).unwrap())[1..]).unwrap();
            assert_eq!(v["reason"], "NonZeroExitCode");
            assert_eq!(v["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "3"}));
        }
        let m = Protocol::V4Base64.final_status(&Ok(0)).unwrap();
        let (ch, data) = Protocol::V4Base64.split(&bytes_of(&m)).unwrap().unwrap();
        assert_eq!((ch, &data[..]), (STATUS, &br#"{"metadata":{},"status":"Success"}"#[..]));
        for p in [Protocol::V3, Protocol::V2, Protocol::V1, Protocol::Unnamed, Protocol::V1Base64] {
            assert_eq!(p.final_status(&Ok(0)), None, "{p:?}: success is silence");
            let (ch, text) = p.split(&bytes_of(&p.final_status(&Err("boom".into())).unwrap())).unwrap().unwrap();
            assert_eq!((ch, &text[..]), (STATUS, &b"boom"[..]), "{p:?}");
            let (_, text) = p.split(&bytes_of(&p.final_status(&Ok(3)).unwrap())).unwrap().unwrap();
            assert!(std::str::from_utf8(&text).unwrap().ends_with("exit code 3"), "{p:?}");
        }
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
}
