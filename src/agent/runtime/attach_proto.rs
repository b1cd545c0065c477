//! The wire protocol between the agent and an attach-mode `skiff logger` (the process that owns a
//! stdin container's FIFOs, see [`super::attach`]), and the bounded per-client output queue the
//! logger keeps. Pure: no I/O beyond `Read`/`Write` on whatever stream is handed in.
//!
//! A frame is one kind byte, a big-endian `u32` payload length, then the payload. The agent
//! opens with `Hello` (JSON [`Hello`]: which streams it wants); the logger answers `Ack` (JSON
//! [`Ack`]: the container's tty / stdinOnce settings and whether its stdin is still open), then
//! relays output as `Stdout`/`Stderr` frames while the agent sends `Stdin` frames and, once its
//! client's stdin has ended, one `StdinEof`. The logger's last frame is `End` (JSON [`End`]):
//! the container's output has ended, or this client fell too far behind and was dropped.
//!
//! The framing is the logger's own rather than the kubelet's WebSocket channels because the two
//! ends live in different processes with different lifetimes: the logger outlives agent restarts
//! and must never block on an agent, so it needs explicit lengths (no message boundaries on a unix
//! stream) and an explicit end reason (a dropped slow client is not the same as an exited
//! container).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{Read, Write};

/// Frames larger than this are a protocol error (the logger sends at most one pipe read,
/// 32 KiB; kubectl's stdin messages are smaller still).
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Output a client may have queued in the logger before it is dropped as too slow. The
/// container is never made to wait for a client (DESIGN: a container must never stall because
/// of its readers), so a client that falls this far behind loses its session instead.
pub const CLIENT_BACKLOG: usize = 1024 * 1024;

/// Header length: kind byte + u32 length.
pub const HEADER: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    Ack = 2,
    Stdin = 3,
    StdinEof = 4,
    Stdout = 5,
    Stderr = 6,
    End = 7,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Ack,
            3 => Kind::Stdin,
            4 => Kind::StdinEof,
            5 => Kind::Stdout,
            6 => Kind::Stderr,
            7 => Kind::End,
            _ => return None,
        })
    }
}

/// What a peer sent that does not follow this protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The kind byte is none of [`Kind`]'s.
    #[error("unknown attach frame kind {0}")]
    UnknownKind(u8),
    /// The length field exceeds [`MAX_PAYLOAD`].
    #[error("attach frame of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLong(u64),
    /// A JSON payload (hello, ack, end) did not decode.
    #[error("bad attach {what} message: {detail}")]
    BadJson { what: &'static str, detail: String },
    /// The first frame was not the expected one.
    #[error("expected an attach {expected:?} frame, got {got:?}")]
    Unexpected { expected: Kind, got: Kind },
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// Encodes a frame. Callers never pass more than [`MAX_PAYLOAD`] (the logger's reads and the
/// kubelet's WebSocket messages are bounded); a longer payload would be refused by the peer.
pub fn encode(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Parses a header into the frame kind and payload length.
pub fn parse_header(h: [u8; HEADER]) -> Result<(Kind, usize), ProtoError> {
    let kind = Kind::from_byte(h[0]).ok_or(ProtoError::UnknownKind(h[0]))?;
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(ProtoError::TooLong(len as u64));
    }
    Ok((kind, len))
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Proto(#[from] ProtoError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame from a blocking stream. `Ok(None)` is a clean end of stream between frames;
/// an end inside a frame is an `UnexpectedEof` error.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, ReadError> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (kind, len) = parse_header(h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame { kind, payload }))
}

/// Writes one frame to a blocking stream.
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&encode(kind, payload))
}

/// The agent's opening message: which of the container's streams this client wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// The logger's answer: how the container's IO is set up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The container has a terminal: its output is all on stdout, and resizes apply.
    pub tty: bool,
    /// `stdinOnce`: the container's stdin closes when the first client with stdin ends.
    pub stdin_once: bool,
    /// The container's stdin can still take input (false once a `stdinOnce` stdin has closed).
    pub stdin_open: bool,
    /// The container's output has already ended (it exited; the logger is finishing).
    #[serde(default)]
    pub ended: bool,
}

/// Why the logger ends a client's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EndReason {
    /// The container closed its output (it exited); everything it wrote was delivered.
    Exited,
    /// The client fell more than [`CLIENT_BACKLOG`] bytes behind and output was dropped.
    TooSlow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub reason: EndReason,
    /// The backlog limit the client exceeded (with `TooSlow`), in bytes.
    #[serde(default)]
    pub limit: u64,
}

/// Decodes a JSON payload (hello, ack, end).
pub fn decode_json<T: serde::de::DeserializeOwned>(what: &'static str, payload: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(payload).map_err(|e| ProtoError::BadJson { what, detail: e.to_string() })
}

/// Encodes a JSON message as a frame.
pub fn json_frame<T: Serialize>(kind: Kind, msg: &T) -> Vec<u8> {
    // These small structs of bools and enums always serialise.
    encode(kind, &serde_json::to_vec(msg).unwrap_or_default())
}

/// What a client's writer does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send these bytes (one encoded frame).
    Send(Vec<u8>),
    /// Send the end frame for this reason, then close.
    End(End),
    /// Nothing queued: wait.
    Wait,
    /// Already ended: stop.
    Done,
}

/// A client's output backlog in the logger: frames waiting to be written to its socket, at most
/// [`CLIENT_BACKLOG`] bytes (cap settable for tests). Pushing never blocks: past the cap the
/// backlog is discarded and the client is ended as too slow, so the pumps reading the container's
/// pipes never wait on a client.
#[derive(Debug)]
pub struct OutQueue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    cap: usize,
    ending: Option<EndReason>,
    done: bool,
}

impl OutQueue {
    pub fn new(cap: usize) -> OutQueue {
        OutQueue { frames: VecDeque::new(), bytes: 0, cap, ending: None, done: false }
    }

    /// Queues a frame. Returns false if the client is (now) being ended instead.
    pub fn push(&mut self, frame: Vec<u8>) -> bool {
        if self.ending.is_some() || self.done {
            return false;
        }
        if self.bytes + frame.len() > self.cap {
            self.frames.clear();
            self.bytes = 0;
            self.ending = Some(EndReason::TooSlow);
            return false;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        true
    }

    /// The container's output ended: deliver what is queued, then end with `reason`. A reason
    /// already set (too slow) is kept.
    pub fn finish(&mut self, reason: EndReason) {
        if self.ending.is_none() {
            self.ending = Some(reason);
        }
    }

    /// The client went away: drop everything.
    pub fn close(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        self.done = true;
    }

    pub fn pop(&mut self) -> Next {
        if self.done {
            return Next::Done;
        }
        if let Some(f) = self.frames.pop_front() {
            self.bytes -= f.len();
            return Next::Send(f);
        }
        match self.ending {
            Some(reason) => {
                self.done = true;
                let limit = if reason == EndReason::TooSlow { self.cap as u64 } else { 0 };
                Next::End(End { reason, limit })
            }
            None => Next::Wait,
        }
    }

    /// Bytes waiting.
    pub fn backlog(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_a_byte_stream() {
        let mut wire = Vec::new();
        write_frame(&mut wire, Kind::Stdout, b"hello").unwrap();
        write_frame(&mut wire, Kind::StdinEof, b"").unwrap();
        assert_eq!(&wire[..5], &[5, 0, 0, 0, 5]);
        let mut r = &wire[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some(Frame { kind: Kind::Stdout, payload: b"hello".to_vec() }));
        assert_eq!(read_frame(&mut r).unwrap(), Some(Frame { kind: Kind::StdinEof, payload: vec![] }));
        assert!(read_frame(&mut r).unwrap().is_none(), "a clean end between frames");
    }

    #[test]
    fn bad_headers_and_truncated_frames_are_errors_not_panics() {
        assert_eq!(parse_header([9, 0, 0, 0, 0]), Err(ProtoError::UnknownKind(9)));
        assert!(matches!(parse_header([3, 0xff, 0xff, 0xff, 0xff]), Err(ProtoError::TooLong(_))));
        let mut r: &[u8] = &[3, 0, 0];
        assert!(matches!(read_frame(&mut r), Err(ReadError::Io(_))), "end inside a header");
        let mut r: &[u8] = &[3, 0, 0, 0, 4, b'a'];
        assert!(matches!(read_frame(&mut r), Err(ReadError::Io(_))), "end inside a payload");
        assert!(decode_json::<Hello>("hello", b"{not json").is_err());
    }

    #[test]
    fn json_messages_use_camel_case_and_decode_back() {
        let ack = Ack { tty: true, stdin_once: true, stdin_open: false, ended: false };
        let f = json_frame(Kind::Ack, &ack);
        assert_eq!(f[0], Kind::Ack as u8);
        assert_eq!(&f[HEADER..], br#"{"tty":true,"stdinOnce":true,"stdinOpen":false,"ended":false}"#);
        assert_eq!(decode_json::<Ack>("ack", &f[HEADER..]).unwrap(), ack);
        let end: End = decode_json("end", br#"{"reason":"tooSlow"}"#).unwrap();
        assert_eq!(end.reason, EndReason::TooSlow);
    }

    #[test]
    fn a_queue_delivers_in_order_then_its_end_reason() {
        let mut q = OutQueue::new(100);
        assert_eq!(q.pop(), Next::Wait);
        assert!(q.push(vec![1; 10]));
        assert!(q.push(vec![2; 10]));
        assert_eq!(q.backlog(), 20);
        q.finish(EndReason::Exited);
        assert!(!q.push(vec![3]), "nothing is queued after the end");
        assert_eq!(q.pop(), Next::Send(vec![1; 10]));
        assert_eq!(q.pop(), Next::Send(vec![2; 10]));
        assert_eq!(q.pop(), Next::End(End { reason: EndReason::Exited, limit: 0 }));
        assert_eq!(q.pop(), Next::Done);
    }

    #[test]
    fn a_client_past_its_backlog_cap_is_ended_as_too_slow_and_its_backlog_freed() {
        let mut q = OutQueue::new(25);
        assert!(q.push(vec![0; 20]));
        assert!(!q.push(vec![0; 10]), "over the cap");
        assert_eq!(q.backlog(), 0, "the backlog is released at once");
        q.finish(EndReason::Exited);
        assert_eq!(q.pop(), Next::End(End { reason: EndReason::TooSlow, limit: 25 }), "the first reason wins");
    }

    #[test]
    fn a_closed_queue_drops_everything() {
        let mut q = OutQueue::new(100);
        q.push(vec![1]);
        q.close();
        assert_eq!(q.pop(), Next::Done);
        assert!(!q.push(vec![1]));
    }
}
