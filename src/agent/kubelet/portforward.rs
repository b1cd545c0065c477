//! `kubectl port-forward` on the kubelet: `/portForward/{ns}/{pod}` upgraded to a WebSocket with
//! subprotocol `SPDY/3.1+portforward.k8s.io`, whose binary messages carry a raw SPDY/3 byte
//! stream (kubectl-streaming guide §4). kubectl 1.32 speaks it first; the API server relays the
//! upgrade byte for byte (`src/api/stream.rs`), so the SPDY session is terminated here.
//!
//! Facts reproduced (guide §3–§4):
//! - SPDY frames do not line up with WebSocket messages (2, 2, 4, … byte messages were seen), so
//!   incoming bytes are buffered and cut into frames here.
//! - header blocks are zlib streams, one compression context per direction, the client's with
//!   the SPDY/3 dictionary ([`DICTIONARY`]). Our replies are compressed without a dictionary
//!   (a zlib reader only checks a dictionary the stream header asks for).
//! - per local connection kubectl opens `streamtype: error` (and half-closes it), then
//!   `streamtype: data`, both with `port` and the same `requestid`; each stream gets a SYN_REPLY.
//! - the server dials the pod port when the pair is complete, FINs the data stream when the pod
//!   side closes, then FINs the error stream; text on the error stream is an error kubectl shows
//!   (and it ends the whole session).
//! - PING frames are echoed; the client never sends WINDOW_UPDATE, so no flow control is
//!   enforced; GOAWAY or a closed socket ends the session and every connection.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::agent::runtime::{ContainerState, Runtime};

/// The subprotocol kubectl 1.32 offers for port-forward over WebSocket.
pub const PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1), 1423
/// bytes: length-prefixed header names and values, then common strings.
#[rustfmt::skip]
pub const DICTIONARY: &[u8] = &[
    0x00, 0x00, 0x00, 0x07, 0x6f, 0x70, 0x74, 0x69, 0x6f, 0x6e, 0x73, 0x00, 0x00, 0x00, 0x04, 0x68,
    0x65, 0x61, 0x64, 0x00, 0x00, 0x00, 0x04, 0x70, 0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x03, 0x70,
    0x75, 0x74, 0x00, 0x00, 0x00, 0x06, 0x64, 0x65, 0x6c, 0x65, 0x74, 0x65, 0x00, 0x00, 0x00, 0x05,
    0x74, 0x72, 0x61, 0x63, 0x65, 0x00, 0x00, 0x00, 0x06, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x00,
    0x00, 0x00, 0x0e, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65,
    0x74, 0x00, 0x00, 0x00, 0x0f, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f,
    0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x0f, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x6c,
    0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65, 0x00, 0x00, 0x00, 0x0d, 0x61, 0x63, 0x63, 0x65, 0x70,
    0x74, 0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x73, 0x00, 0x00, 0x00, 0x03, 0x61, 0x67, 0x65, 0x00,
    0x00, 0x00, 0x05, 0x61, 0x6c, 0x6c, 0x6f, 0x77, 0x00, 0x00, 0x00, 0x0d, 0x61, 0x75, 0x74, 0x68,
    0x6f, 0x72, 0x69, 0x7a, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0d, 0x63, 0x61, 0x63,
    0x68, 0x65, 0x2d, 0x63, 0x6f, 0x6e, 0x74, 0x72, 0x6f, 0x6c, 0x00, 0x00, 0x00, 0x0a, 0x63, 0x6f,
    0x6e, 0x6e, 0x65, 0x63, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74,
    0x65, 0x6e, 0x74, 0x2d, 0x62, 0x61, 0x73, 0x65, 0x00, 0x00, 0x00, 0x10, 0x63, 0x6f, 0x6e, 0x74,
    0x65, 0x6e, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f, 0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x10,
    0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65,
    0x00, 0x00, 0x00, 0x0e, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x65, 0x6e, 0x67,
    0x74, 0x68, 0x00, 0x00, 0x00, 0x10, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x6f,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0b, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,
    0x74, 0x2d, 0x6d, 0x64, 0x35, 0x00, 0x00, 0x00, 0x0d, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74,
    0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,
    0x74, 0x2d, 0x74, 0x79, 0x70, 0x65, 0x00, 0x00, 0x00, 0x04, 0x64, 0x61, 0x74, 0x65, 0x00, 0x00,
    0x00, 0x04, 0x65, 0x74, 0x61, 0x67, 0x00, 0x00, 0x00, 0x06, 0x65, 0x78, 0x70, 0x65, 0x63, 0x74,
    0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x70, 0x69, 0x72, 0x65, 0x73, 0x00, 0x00, 0x00, 0x04, 0x66,
    0x72, 0x6f, 0x6d, 0x00, 0x00, 0x00, 0x04, 0x68, 0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x08, 0x69,
    0x66, 0x2d, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x00, 0x00, 0x00, 0x11, 0x69, 0x66, 0x2d, 0x6d, 0x6f,
    0x64, 0x69, 0x66, 0x69, 0x65, 0x64, 0x2d, 0x73, 0x69, 0x6e, 0x63, 0x65, 0x00, 0x00, 0x00, 0x0d,
    0x69, 0x66, 0x2d, 0x6e, 0x6f, 0x6e, 0x65, 0x2d, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x00, 0x00, 0x00,
    0x08, 0x69, 0x66, 0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00, 0x13, 0x69, 0x66, 0x2d,
    0x75, 0x6e, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69, 0x65, 0x64, 0x2d, 0x73, 0x69, 0x6e, 0x63, 0x65,
    0x00, 0x00, 0x00, 0x0d, 0x6c, 0x61, 0x73, 0x74, 0x2d, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69, 0x65,
    0x64, 0x00, 0x00, 0x00, 0x08, 0x6c, 0x6f, 0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00,
    0x0c, 0x6d, 0x61, 0x78, 0x2d, 0x66, 0x6f, 0x72, 0x77, 0x61, 0x72, 0x64, 0x73, 0x00, 0x00, 0x00,
    0x06, 0x70, 0x72, 0x61, 0x67, 0x6d, 0x61, 0x00, 0x00, 0x00, 0x12, 0x70, 0x72, 0x6f, 0x78, 0x79,
    0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e, 0x74, 0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00, 0x00,
    0x13, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x7a, 0x61,
    0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x05, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00,
    0x07, 0x72, 0x65, 0x66, 0x65, 0x72, 0x65, 0x72, 0x00, 0x00, 0x00, 0x0b, 0x72, 0x65, 0x74, 0x72,
    0x79, 0x2d, 0x61, 0x66, 0x74, 0x65, 0x72, 0x00, 0x00, 0x00, 0x06, 0x73, 0x65, 0x72, 0x76, 0x65,
    0x72, 0x00, 0x00, 0x00, 0x02, 0x74, 0x65, 0x00, 0x00, 0x00, 0x07, 0x74, 0x72, 0x61, 0x69, 0x6c,
    0x65, 0x72, 0x00, 0x00, 0x00, 0x11, 0x74, 0x72, 0x61, 0x6e, 0x73, 0x66, 0x65, 0x72, 0x2d, 0x65,
    0x6e, 0x63, 0x6f, 0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x07, 0x75, 0x70, 0x67, 0x72, 0x61,
    0x64, 0x65, 0x00, 0x00, 0x00, 0x0a, 0x75, 0x73, 0x65, 0x72, 0x2d, 0x61, 0x67, 0x65, 0x6e, 0x74,
    0x00, 0x00, 0x00, 0x04, 0x76, 0x61, 0x72, 0x79, 0x00, 0x00, 0x00, 0x03, 0x76, 0x69, 0x61, 0x00,
    0x00, 0x00, 0x07, 0x77, 0x61, 0x72, 0x6e, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x10, 0x77, 0x77,
    0x77, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e, 0x74, 0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00,
    0x00, 0x06, 0x6d, 0x65, 0x74, 0x68, 0x6f, 0x64, 0x00, 0x00, 0x00, 0x03, 0x67, 0x65, 0x74, 0x00,
    0x00, 0x00, 0x06, 0x73, 0x74, 0x61, 0x74, 0x75, 0x73, 0x00, 0x00, 0x00, 0x06, 0x32, 0x30, 0x30,
    0x20, 0x4f, 0x4b, 0x00, 0x00, 0x00, 0x07, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x00, 0x00,
    0x00, 0x08, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x31, 0x2e, 0x31, 0x00, 0x00, 0x00, 0x03, 0x75, 0x72,
    0x6c, 0x00, 0x00, 0x00, 0x06, 0x70, 0x75, 0x62, 0x6c, 0x69, 0x63, 0x00, 0x00, 0x00, 0x0a, 0x73,
    0x65, 0x74, 0x2d, 0x63, 0x6f, 0x6f, 0x6b, 0x69, 0x65, 0x00, 0x00, 0x00, 0x0a, 0x6b, 0x65, 0x65,
    0x70, 0x2d, 0x61, 0x6c, 0x69, 0x76, 0x65, 0x00, 0x00, 0x00, 0x06, 0x6f, 0x72, 0x69, 0x67, 0x69,
    0x6e, 0x31, 0x30, 0x30, 0x31, 0x30, 0x31, 0x32, 0x30, 0x31, 0x32, 0x30, 0x32, 0x32, 0x30, 0x35,
    0x32, 0x30, 0x36, 0x33, 0x30, 0x30, 0x33, 0x30, 0x32, 0x33, 0x30, 0x33, 0x33, 0x30, 0x34, 0x33,
    0x30, 0x35, 0x33, 0x30, 0x36, 0x33, 0x30, 0x37, 0x34, 0x30, 0x32, 0x34, 0x30, 0x35, 0x34, 0x30,
    0x36, 0x34, 0x30, 0x37, 0x34, 0x30, 0x38, 0x34, 0x30, 0x39, 0x34, 0x31, 0x30, 0x34, 0x31, 0x31,
    0x34, 0x31, 0x32, 0x34, 0x31, 0x33, 0x34, 0x31, 0x34, 0x34, 0x31, 0x35, 0x34, 0x31, 0x36, 0x34,
    0x31, 0x37, 0x35, 0x30, 0x32, 0x35, 0x30, 0x34, 0x35, 0x30, 0x35, 0x32, 0x30, 0x33, 0x20, 0x4e,
    0x6f, 0x6e, 0x2d, 0x41, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x74, 0x61, 0x74, 0x69, 0x76, 0x65,
    0x20, 0x49, 0x6e, 0x66, 0x6f, 0x72, 0x6d, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x32, 0x30, 0x34, 0x20,
    0x4e, 0x6f, 0x20, 0x43, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x33, 0x30, 0x31, 0x20, 0x4d, 0x6f,
    0x76, 0x65, 0x64, 0x20, 0x50, 0x65, 0x72, 0x6d, 0x61, 0x6e, 0x65, 0x6e, 0x74, 0x6c, 0x79, 0x34,
    0x30, 0x30, 0x20, 0x42, 0x61, 0x64, 0x20, 0x52, 0x65, 0x71, 0x75, 0x65, 0x73, 0x74, 0x34, 0x30,
    0x31, 0x20, 0x55, 0x6e, 0x61, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x7a, 0x65, 0x64, 0x34, 0x30,
    0x33, 0x20, 0x46, 0x6f, 0x72, 0x62, 0x69, 0x64, 0x64, 0x65, 0x6e, 0x34, 0x30, 0x34, 0x20, 0x4e,
    0x6f, 0x74, 0x20, 0x46, 0x6f, 0x75, 0x6e, 0x64, 0x35, 0x30, 0x30, 0x20, 0x49, 0x6e, 0x74, 0x65,
    0x72, 0x6e, 0x61, 0x6c, 0x20, 0x53, 0x65, 0x72, 0x76, 0x65, 0x72, 0x20, 0x45, 0x72, 0x72, 0x6f,
    0x72, 0x35, 0x30, 0x31, 0x20, 0x4e, 0x6f, 0x74, 0x20, 0x49, 0x6d, 0x70, 0x6c, 0x65, 0x6d, 0x65,
    0x6e, 0x74, 0x65, 0x64, 0x35, 0x30, 0x33, 0x20, 0x53, 0x65, 0x72, 0x76, 0x69, 0x63, 0x65, 0x20,
    0x55, 0x6e, 0x61, 0x76, 0x61, 0x69, 0x6c, 0x61, 0x62, 0x6c, 0x65, 0x4a, 0x61, 0x6e, 0x20, 0x46,
    0x65, 0x62, 0x20, 0x4d, 0x61, 0x72, 0x20, 0x41, 0x70, 0x72, 0x20, 0x4d, 0x61, 0x79, 0x20, 0x4a,
    0x75, 0x6e, 0x20, 0x4a, 0x75, 0x6c, 0x20, 0x41, 0x75, 0x67, 0x20, 0x53, 0x65, 0x70, 0x74, 0x20,
    0x4f, 0x63, 0x74, 0x20, 0x4e, 0x6f, 0x76, 0x20, 0x44, 0x65, 0x63, 0x20, 0x30, 0x30, 0x3a, 0x30,
    0x30, 0x3a, 0x30, 0x30, 0x20, 0x4d, 0x6f, 0x6e, 0x2c, 0x20, 0x54, 0x75, 0x65, 0x2c, 0x20, 0x57,
    0x65, 0x64, 0x2c, 0x20, 0x54, 0x68, 0x75, 0x2c, 0x20, 0x46, 0x72, 0x69, 0x2c, 0x20, 0x53, 0x61,
    0x74, 0x2c, 0x20, 0x53, 0x75, 0x6e, 0x2c, 0x20, 0x47, 0x4d, 0x54, 0x63, 0x68, 0x75, 0x6e, 0x6b,
    0x65, 0x64, 0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x68, 0x74, 0x6d, 0x6c, 0x2c, 0x69, 0x6d, 0x61,
    0x67, 0x65, 0x2f, 0x70, 0x6e, 0x67, 0x2c, 0x69, 0x6d, 0x61, 0x67, 0x65, 0x2f, 0x6a, 0x70, 0x67,
    0x2c, 0x69, 0x6d, 0x61, 0x67, 0x65, 0x2f, 0x67, 0x69, 0x66, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78, 0x6d, 0x6c, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78, 0x68, 0x74, 0x6d, 0x6c, 0x2b, 0x78, 0x6d, 0x6c,
    0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x70, 0x6c, 0x61, 0x69, 0x6e, 0x2c, 0x74, 0x65, 0x78, 0x74,
    0x2f, 0x6a, 0x61, 0x76, 0x61, 0x73, 0x63, 0x72, 0x69, 0x70, 0x74, 0x2c, 0x70, 0x75, 0x62, 0x6c,
    0x69, 0x63, 0x70, 0x72, 0x69, 0x76, 0x61, 0x74, 0x65, 0x6d, 0x61, 0x78, 0x2d, 0x61, 0x67, 0x65,
    0x3d, 0x67, 0x7a, 0x69, 0x70, 0x2c, 0x64, 0x65, 0x66, 0x6c, 0x61, 0x74, 0x65, 0x2c, 0x73, 0x64,
    0x63, 0x68, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65, 0x74, 0x3d, 0x75, 0x74, 0x66, 0x2d, 0x38, 0x63,
    0x68, 0x61, 0x72, 0x73, 0x65, 0x74, 0x3d, 0x69, 0x73, 0x6f, 0x2d, 0x38, 0x38, 0x35, 0x39, 0x2d,
    0x31, 0x2c, 0x75, 0x74, 0x66, 0x2d, 0x2c, 0x2a, 0x2c, 0x65, 0x6e, 0x71, 0x3d, 0x30, 0x2e,
];

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const FLAG_FIN: u8 = 0x01;

/// Largest frame accepted (SPDY's length field is 24 bits).
const MAX_FRAME: usize = 1 << 24;
/// Largest decompressed header block accepted.
const MAX_HEADERS: usize = 1 << 20;

/// One SPDY/3 frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Control { kind: u16, flags: u8, data: Bytes },
    Data { stream: u32, flags: u8, data: Bytes },
}

/// Cuts the first complete frame off `buf` (`None` until one is complete).
pub fn parse_frame(buf: &mut bytes::BytesMut) -> Result<Option<Frame>, String> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
    if buf.len() < 8 + len {
        return Ok(None);
    }
    let head = buf.split_to(8);
    let data = buf.split_to(len).freeze();
    if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != 3 {
            return Err(format!("unsupported SPDY version {version}"));
        }
        Ok(Some(Frame::Control { kind: u16::from_be_bytes([head[2], head[3]]), flags: head[4], data }))
    } else {
        let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
        Ok(Some(Frame::Data { stream, flags: head[4], data }))
    }
}

fn len24(n: usize) -> [u8; 3] {
    let b = (n.min(MAX_FRAME - 1) as u32).to_be_bytes();
    [b[1], b[2], b[3]]
}

/// A control frame (version 3).
pub fn control(kind: u16, flags: u8, payload: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&[0x80, 0x03]);
    v.extend_from_slice(&kind.to_be_bytes());
    v.push(flags);
    v.extend_from_slice(&len24(payload.len()));
    v.extend_from_slice(payload);
    Bytes::from(v)
}

/// A data frame.
pub fn data(stream: u32, flags: u8, payload: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    v.push(flags);
    v.extend_from_slice(&len24(payload.len()));
    v.extend_from_slice(payload);
    Bytes::from(v)
}

/// A header block before compression: count, then length-prefixed names and values (u32 BE).
pub fn encode_headers(h: &[(&str, &str)]) -> Vec<u8> {
    let mut v = (h.len() as u32).to_be_bytes().to_vec();
    for (k, val) in h {
        v.extend_from_slice(&(k.len() as u32).to_be_bytes());
        v.extend_from_slice(k.as_bytes());
        v.extend_from_slice(&(val.len() as u32).to_be_bytes());
        v.extend_from_slice(val.as_bytes());
    }
    v
}

/// Parses a decompressed header block; names are lower-cased, values split on NUL.
pub fn decode_headers(b: &[u8]) -> Result<Vec<(String, String)>, String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err("truncated header block".into());
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn u32_of(b: &mut &[u8]) -> Result<usize, String> {
        let h = take(b, 4)?;
        Ok(u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
    }
    let mut b = b;
    let n = u32_of(&mut b)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let kl = u32_of(&mut b)?;
        let k = String::from_utf8_lossy(take(&mut b, kl)?).to_ascii_lowercase();
        let vl = u32_of(&mut b)?;
        let v = take(&mut b, vl)?;
        for part in v.split(|c| *c == 0) {
            out.push((k.clone(), String::from_utf8_lossy(part).into_owned()));
        }
    }
    Ok(out)
}

/// The client → server header decompression context (one per session).
pub struct HeaderInflater(Decompress);

impl Default for HeaderInflater {
    fn default() -> Self {
        HeaderInflater(Decompress::new(true))
    }
}

impl HeaderInflater {
    pub fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(4096);
            }
            let (in0, out0) = (self.0.total_in(), self.0.total_out());
            let r = self.0.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += (self.0.total_in() - in0) as usize;
            let produced = self.0.total_out() - out0;
            match r {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0.set_dictionary(DICTIONARY).map_err(|e| format!("header dictionary: {e}"))?;
                    continue;
                }
                Err(e) => return Err(format!("header decompression: {e}")),
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
            }
            if out.len() > MAX_HEADERS {
                return Err("header block too large".into());
            }
            if pos >= input.len() && produced == 0 {
                break;
            }
            if produced == 0 && self.0.total_in() == in0 {
                break;
            }
        }
        Ok(out)
    }
}

/// The server → client header compression context (no dictionary; see the module header).
pub struct HeaderDeflater(Compress);

impl Default for HeaderDeflater {
    fn default() -> Self {
        HeaderDeflater(Compress::new(Compression::default(), true))
    }
}

impl HeaderDeflater {
    pub fn deflate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + 128);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let in0 = self.0.total_in();
            if self.0.compress_vec(&input[pos..], &mut out, FlushCompress::Sync).is_err() {
                break;
            }
            pos += (self.0.total_in() - in0) as usize;
            // A sync flush that left output space unused is complete.
            if pos >= input.len() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?) & 0x7fff_ffff)
}

/// Upgrades `/portForward/{ns}/{pod}` (the caller has checked it is a WebSocket upgrade).
pub fn serve(
    rt: Arc<dyn Runtime>,
    ns: String,
    pod: String,
    uid: Option<String>,
    ws: WebSocketUpgrade,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ws = ws.protocols([PROTOCOL]);
    if ws.selected_protocol().is_none() {
        let msg = format!("unsupported port-forward protocol: this kubelet speaks {PROTOCOL} only (kubectl 1.31+)");
        return (axum::http::StatusCode::BAD_REQUEST, msg).into_response();
    }
    ws.on_upgrade(move |socket| session(rt, socket, ns, pod, uid))
}

/// The pod's uid on this node (its running instance if several).
pub(super) async fn pod_uid(rt: &dyn Runtime, ns: &str, pod: &str, uid: Option<&str>) -> Result<String, String> {
    let sandboxes = rt.list_sandboxes().await.map_err(|e| e.to_string())?;
    let mut uids: Vec<String> = sandboxes
        .into_iter()
        .filter(|s| s.pod.namespace == ns && s.pod.name == pod && uid.is_none_or(|u| s.pod.uid == u))
        .map(|s| s.pod.uid)
        .collect();
    if uids.len() > 1 {
        let running = rt.list_containers().await.unwrap_or_default();
        uids.sort_by_key(|u| {
            !running.iter().any(|c| &c.pod.uid == u && matches!(c.state, ContainerState::Running { .. }))
        });
    }
    uids.into_iter().next().ok_or_else(|| format!("pod {ns}/{pod} not found on this node"))
}

async fn session(rt: Arc<dyn Runtime>, socket: WebSocket, ns: String, pod: String, uid: Option<String>) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(64);
    let writer = tokio::spawn(async move {
        while let Some(b) = out_rx.recv().await {
            if sink.send(Message::Binary(b)).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let uid = pod_uid(rt.as_ref(), &ns, &pod, uid.as_deref()).await;
    let mut buf = bytes::BytesMut::new();
    let mut inflater = HeaderInflater::default();
    let mut deflater = HeaderDeflater::default();
    // requestid → error stream id, until its data stream arrives.
    let mut error_streams: HashMap<String, u32> = HashMap::new();
    // data stream id → bytes for the pod connection (dropped on FIN or RST).
    let mut conns: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut tasks = Vec::new();
    'session: while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Binary(b)) => buf.extend_from_slice(&b),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        }
        if buf.len() > MAX_FRAME + 8 {
            tracing::debug!("port-forward: oversized SPDY frame; closing");
            break;
        }
        loop {
            let frame = match parse_frame(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "port-forward: bad SPDY frame; closing");
                    break 'session;
                }
            };
            match frame {
                Frame::Control { kind: SYN_STREAM, flags: _, data: d } => {
                    let Some(id) = be32(&d) else { break 'session };
                    let headers = match d
                        .get(10..)
                        .ok_or("short SYN_STREAM".to_string())
                        .and_then(|b| inflater.inflate(b))
                        .and_then(|h| decode_headers(&h))
                    {
                        Ok(h) => h,
                        Err(e) => {
                            // The compression context is shared: after an error it cannot recover.
                            tracing::debug!(error = %e, "port-forward: bad SYN_STREAM headers; closing");
                            break 'session;
                        }
                    };
                    let get =
                        |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
                    let mut reply = id.to_be_bytes().to_vec();
                    reply.extend_from_slice(&deflater.deflate(&encode_headers(&[])));
                    if out_tx.send(control(SYN_REPLY, 0, &reply)).await.is_err() {
                        break 'session;
                    }
                    let request = get("requestid");
                    match get("streamtype").as_str() {
                        "error" => {
                            error_streams.insert(request, id);
                        }
                        "data" => {
                            let err_id = error_streams.remove(&request);
                            let (tx, rx) = mpsc::channel::<Bytes>(16);
                            conns.insert(id, tx);
                            let port = get("port");
                            tasks.push(tokio::spawn(forward(
                                rt.clone(),
                                uid.clone(),
                                port,
                                id,
                                err_id,
                                rx,
                                out_tx.clone(),
                            )));
                        }
                        other => tracing::debug!(streamtype = other, "port-forward: unknown stream type"),
                    }
                }
                Frame::Control { kind: RST_STREAM, data: d, .. } => {
                    if let Some(id) = be32(&d) {
                        conns.remove(&id);
                    }
                }
                Frame::Control { kind: PING, data: d, .. } => {
                    if out_tx.send(control(PING, 0, &d)).await.is_err() {
                        break 'session;
                    }
                }
                Frame::Control { kind: GOAWAY, .. } => break 'session,
                Frame::Control { kind: HEADERS, data: d, .. } => {
                    // Keep the shared decompression context in step.
                    if d.get(4..).map(|b| inflater.inflate(b)).is_some_and(|r| r.is_err()) {
                        break 'session;
                    }
                }
                // SETTINGS, WINDOW_UPDATE and the rest change nothing here.
                Frame::Control { .. } => {}
                Frame::Data { stream, flags, data: d } => {
                    if let Some(tx) = conns.get(&stream) {
                        if !d.is_empty() && tx.send(d).await.is_err() {
                            conns.remove(&stream);
                        }
                    }
                    if flags & FLAG_FIN != 0 {
                        conns.remove(&stream);
                    }
                }
            }
        }
    }
    drop(conns);
    for t in tasks {
        t.abort();
    }
    drop(out_tx);
    writer.abort();
}

/// One forwarded connection: dials the pod port, then copies both ways.
async fn forward(
    rt: Arc<dyn Runtime>,
    uid: Result<String, String>,
    port: String,
    data_id: u32,
    err_id: Option<u32>,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Bytes>,
) {
    let fail = |msg: String| {
        let out = out.clone();
        async move {
            tracing::debug!(error = %msg, "port-forward failed");
            if let Some(e) = err_id {
                let _ = out.send(data(e, 0, msg.as_bytes())).await;
                let _ = out.send(data(e, FLAG_FIN, &[])).await;
            }
            let _ = out.send(data(data_id, FLAG_FIN, &[])).await;
        }
    };
    let port_num: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return fail(format!("invalid port {port:?}")).await,
    };
    let uid = match uid {
        Ok(u) => u,
        Err(e) => return fail(e).await,
    };
    let tcp = match rt.port_forward(&uid, port_num).await {
        Ok(s) => s,
        Err(e) => return fail(format!("error forwarding port {port_num} to pod {uid}: {e}")).await,
    };
    let (mut r, mut w) = tcp.into_split();
    let to_pod = tokio::spawn(async move {
        while let Some(b) = from_client.recv().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
        // The client's FIN: half-close towards the pod.
        let _ = w.shutdown().await;
    });
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.send(data(data_id, 0, &chunk[..n])).await.is_err() {
                    to_pod.abort();
                    return;
                }
            }
        }
    }
    // The pod closed: FIN the data stream, then the (empty = success) error stream.
    let _ = out.send(data(data_id, FLAG_FIN, &[])).await;
    if let Some(e) = err_id {
        let _ = out.send(data(e, FLAG_FIN, &[])).await;
    }
    let _ = to_pod.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(DICTIONARY.ends_with(b"utf-,*,enq=0."));
    }

    #[test]
    fn frames_are_cut_from_a_byte_stream_in_any_pieces() {
        let mut wire = control(SYN_REPLY, 0, &[0, 0, 0, 1]).to_vec();
        wire.extend_from_slice(&data(3, FLAG_FIN, b"hello"));
        let mut buf = bytes::BytesMut::new();
        let mut frames = Vec::new();
        for piece in wire.chunks(3) {
            buf.extend_from_slice(piece);
            while let Some(f) = parse_frame(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::Control { kind: SYN_REPLY, flags: 0, data: Bytes::from_static(&[0, 0, 0, 1]) },
                Frame::Data { stream: 3, flags: FLAG_FIN, data: Bytes::from_static(b"hello") },
            ]
        );
        let mut bad = bytes::BytesMut::from(&[0x80, 0x02, 0, 1, 0, 0, 0, 0][..]);
        assert!(parse_frame(&mut bad).is_err(), "SPDY/2 is refused");
    }

    #[test]
    fn header_blocks_round_trip_through_dictionary_compression_across_frames() {
        // A client-side compressor with the SPDY dictionary (as Go's zlib.NewWriterLevelDict).
        let mut client = Compress::new(Compression::default(), true);
        client.set_dictionary(DICTIONARY).unwrap();
        let mut inflater = HeaderInflater::default();
        for (i, kind) in ["error", "data"].iter().enumerate() {
            let block = encode_headers(&[("streamtype", kind), ("port", "80"), ("requestid", &i.to_string())]);
            let mut z = Vec::with_capacity(512);
            client.compress_vec(&block, &mut z, FlushCompress::Sync).unwrap();
            let h = decode_headers(&inflater.inflate(&z).unwrap()).unwrap();
            assert_eq!(h[0], ("streamtype".to_string(), kind.to_string()));
            assert_eq!(h[2], ("requestid".to_string(), i.to_string()));
        }
        // Our replies decompress with a plain zlib reader, frame after frame.
        let mut deflater = HeaderDeflater::default();
        let mut reader = Decompress::new(true);
        for _ in 0..3 {
            let z = deflater.deflate(&encode_headers(&[]));
            let mut out = Vec::with_capacity(64);
            reader.decompress_vec(&z, &mut out, FlushDecompress::Sync).unwrap();
            assert_eq!(out, vec![0, 0, 0, 0]);
        }
    }

    #[test]
    fn malformed_header_blocks_are_errors_not_panics() {
        assert!(decode_headers(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(decode_headers(&[]).is_err());
        assert!(HeaderInflater::default().inflate(b"not zlib at all").is_err());
        assert_eq!(be32(&[1, 2]), None);
    }
}
