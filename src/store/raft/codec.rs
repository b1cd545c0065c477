//! On-disk encodings of the Raft store, each value framed with a CRC-32 so a truncated or altered
//! file is detected at start-up instead of served (etcd likewise checksums its WAL records and
//! refuses to start on a mismatch). The checksum also covers the sled key a value is stored
//! under, so a value moved to another key is caught too.
//!
//! Layouts (integers big-endian):
//! - frame: `crc32(key ++ payload)` (4 bytes) ++ payload
//! - record (one MVCC change): rev i64, sub u32, flags u8 (bit 0 = put, bit 1 = has deadline),
//!   deadline u64, create_revision i64, version i64, key_len u32, key, value
//! - log entry: kind u8 (0 blank, 1 request, 2 membership), log id (u16 length ++ JSON), then
//!   a binary [`Request`] or the membership's JSON; values stay raw bytes, so a 1 KiB value
//!   costs 1 KiB in the log rather than ~3.5 KiB of JSON numbers
//! - snapshot data: magic, rev i64, compact_rev i64, count u64, then per record len u32 ++
//!   record, then crc32 of everything before it

use super::{Error, Request, TypeConfig};
use crate::store::mvcc::{Record, RecordRef};
use crate::store::{Compare, CompareResult, CompareTarget, KeyValue, Op, Txn};
use openraft::{Entry, EntryPayload, LogId};

/// Prefix of MVCC record keys in the state-machine tree; followed by rev (8) and sub (4).
pub const RECORD_PREFIX: u8 = b'k';
const SNAPSHOT_MAGIC: &[u8; 8] = b"SKIFFSN1";

pub fn frame(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(payload);
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&h.finalize().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a frame read from under `key`; `what` names it in the error.
pub fn unframe<'a>(key: &[u8], value: &'a [u8], what: &str) -> Result<&'a [u8], Error> {
    if value.len() < 4 {
        return Err(Error::Corrupt(format!("{what} is truncated ({} bytes)", value.len())));
    }
    let (crc, payload) = value.split_at(4);
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(payload);
    if crc != h.finalize().to_be_bytes() {
        return Err(Error::Corrupt(format!("{what} fails its checksum")));
    }
    Ok(payload)
}

pub fn record_key(rev: i64, sub: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = RECORD_PREFIX;
    k[1..9].copy_from_slice(&rev.to_be_bytes());
    k[9..13].copy_from_slice(&sub.to_be_bytes());
    k
}

pub fn encode_record(r: &Record) -> Vec<u8> {
    let r = r.as_ref();
    let mut out = Vec::with_capacity(record_len(&r));
    write_record(&mut out, &r);
    out
}

/// A record's fixed part: rev, sub, flags, deadline, create revision, version, key length.
const RECORD_HEADER: usize = 8 + 4 + 1 + 8 + 8 + 8 + 4;

fn record_len(r: &RecordRef<'_>) -> usize {
    RECORD_HEADER + r.key.len() + r.kv.map_or(0, |kv| kv.value.len())
}

fn write_record(out: &mut Vec<u8>, r: &RecordRef<'_>) {
    let (value, create, version) = match r.kv {
        Some(kv) => (&kv.value[..], kv.create_revision, kv.version),
        None => (&[][..], 0, 0),
    };
    out.extend_from_slice(&r.rev.to_be_bytes());
    out.extend_from_slice(&r.sub.to_be_bytes());
    out.push(u8::from(r.kv.is_some()) | (u8::from(r.deadline_ms.is_some()) << 1));
    out.extend_from_slice(&r.deadline_ms.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&create.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(r.key.len() as u32).to_be_bytes());
    out.extend_from_slice(r.key);
    out.extend_from_slice(value);
}

/// A cursor over a byte slice that fails (instead of panicking) when data runs out.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'a str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(Error::Corrupt(format!("{} is truncated", self.what)));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn i64(&mut self) -> Result<i64, Error> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }
    fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn bad(&self, what: &str) -> Error {
        Error::Corrupt(format!("{} has an unknown {what}", self.what))
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn encode_ops(out: &mut Vec<u8>, ops: &[Op]) {
    out.extend_from_slice(&(ops.len() as u32).to_be_bytes());
    for op in ops {
        match op {
            Op::Put { key, value, ttl_seconds } => {
                out.push(0);
                put_bytes(out, key);
                put_bytes(out, value);
                match ttl_seconds {
                    Some(t) => {
                        out.push(1);
                        out.extend_from_slice(&t.to_be_bytes());
                    }
                    None => out.push(0),
                }
            }
            Op::Delete { key } => {
                out.push(1);
                put_bytes(out, key);
            }
            Op::Get { key } => {
                out.push(2);
                put_bytes(out, key);
            }
        }
    }
}

fn decode_ops(r: &mut Reader<'_>) -> Result<Vec<Op>, Error> {
    let n = r.u32()?;
    let mut ops = Vec::new();
    for _ in 0..n {
        ops.push(match r.u8()? {
            0 => {
                let key = r.bytes()?;
                let value = r.bytes()?;
                let ttl_seconds = match r.u8()? {
                    0 => None,
                    _ => Some(r.u64()?),
                };
                Op::Put { key, value: value.into(), ttl_seconds }
            }
            1 => Op::Delete { key: r.bytes()? },
            2 => Op::Get { key: r.bytes()? },
            _ => return Err(r.bad("operation")),
        });
    }
    Ok(ops)
}

pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    match req {
        Request::Txn { txn, now_ms } => {
            out.push(0);
            out.extend_from_slice(&now_ms.to_be_bytes());
            out.extend_from_slice(&(txn.compare.len() as u32).to_be_bytes());
            for c in &txn.compare {
                put_bytes(&mut out, &c.key);
                out.push(match c.result {
                    CompareResult::Equal => 0,
                    CompareResult::NotEqual => 1,
                    CompareResult::Greater => 2,
                    CompareResult::Less => 3,
                });
                match &c.target {
                    CompareTarget::Version(v) => {
                        out.push(0);
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                    CompareTarget::CreateRevision(v) => {
                        out.push(1);
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                    CompareTarget::ModRevision(v) => {
                        out.push(2);
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                    CompareTarget::Value(v) => {
                        out.push(3);
                        put_bytes(&mut out, v);
                    }
                }
            }
            encode_ops(&mut out, &txn.success);
            encode_ops(&mut out, &txn.failure);
        }
        Request::Compact { revision } => {
            out.push(1);
            out.extend_from_slice(&revision.to_be_bytes());
        }
        Request::Batch(reqs) => {
            out.push(2);
            out.extend_from_slice(&(reqs.len() as u32).to_be_bytes());
            for r in reqs {
                let b = encode_request(r);
                put_bytes(&mut out, &b);
            }
        }
    }
    out
}

fn decode_request(r: &mut Reader<'_>) -> Result<Request, Error> {
    match r.u8()? {
        0 => {
            let now_ms = r.u64()?;
            let n = r.u32()?;
            let mut compare = Vec::new();
            for _ in 0..n {
                let key = r.bytes()?;
                let result = match r.u8()? {
                    0 => CompareResult::Equal,
                    1 => CompareResult::NotEqual,
                    2 => CompareResult::Greater,
                    3 => CompareResult::Less,
                    _ => return Err(r.bad("compare result")),
                };
                let target = match r.u8()? {
                    0 => CompareTarget::Version(r.i64()?),
                    1 => CompareTarget::CreateRevision(r.i64()?),
                    2 => CompareTarget::ModRevision(r.i64()?),
                    3 => CompareTarget::Value(r.bytes()?),
                    _ => return Err(r.bad("compare target")),
                };
                compare.push(Compare { key, result, target });
            }
            let success = decode_ops(r)?;
            let failure = decode_ops(r)?;
            Ok(Request::Txn { txn: Txn { compare, success, failure }, now_ms })
        }
        1 => Ok(Request::Compact { revision: r.i64()? }),
        2 => {
            let n = r.u32()?;
            let mut reqs = Vec::new();
            for _ in 0..n {
                let b = r.bytes()?;
                reqs.push(decode_request_bytes(&b)?);
            }
            Ok(Request::Batch(reqs))
        }
        _ => Err(r.bad("request kind")),
    }
}

/// Decodes a request encoded by [`encode_request`] (a forwarded write).
pub fn decode_request_bytes(buf: &[u8]) -> Result<Request, Error> {
    let mut r = Reader { buf, what: "a forwarded request" };
    let req = decode_request(&mut r)?;
    if !r.buf.is_empty() {
        return Err(Error::Corrupt("a forwarded request has trailing bytes".into()));
    }
    Ok(req)
}

/// Encodes a log entry (without its frame).
pub fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, Error> {
    let json =
        |v: &dyn erased::Json| v.to_json().map_err(|e| Error::Internal(format!("encoding a raft log entry: {e}")));
    let log_id = json(&entry.log_id)?;
    let mut out = Vec::with_capacity(64);
    out.push(match &entry.payload {
        EntryPayload::Blank => 0,
        EntryPayload::Normal(_) => 1,
        EntryPayload::Membership(_) => 2,
    });
    out.extend_from_slice(&(log_id.len() as u16).to_be_bytes());
    out.extend_from_slice(&log_id);
    match &entry.payload {
        EntryPayload::Blank => {}
        EntryPayload::Normal(req) => out.extend_from_slice(&encode_request(req)),
        EntryPayload::Membership(m) => out.extend_from_slice(&json(m)?),
    }
    Ok(out)
}

pub fn decode_entry(buf: &[u8]) -> Result<Entry<TypeConfig>, Error> {
    let mut r = Reader { buf, what: "a raft log entry" };
    let kind = r.u8()?;
    let n = u16::from_be_bytes(r.array()?) as usize;
    let bad_json = |e: serde_json::Error| Error::Corrupt(format!("a raft log entry does not decode: {e}"));
    let log_id: LogId<u64> = serde_json::from_slice(r.take(n)?).map_err(bad_json)?;
    let payload = match kind {
        0 => EntryPayload::Blank,
        1 => EntryPayload::Normal(decode_request(&mut r)?),
        2 => EntryPayload::Membership(serde_json::from_slice(r.buf).map_err(bad_json)?),
        _ => return Err(r.bad("entry kind")),
    };
    Ok(Entry { log_id, payload })
}

type AppendHeader = (openraft::Vote<u64>, Option<LogId<u64>>, Option<LogId<u64>>);

/// AppendEntries on the wire: a JSON header (vote, prev_log_id, leader_commit), then each entry
/// in the binary log encoding, so replicated values travel as raw bytes.
pub fn encode_append(req: &openraft::raft::AppendEntriesRequest<TypeConfig>) -> Result<Vec<u8>, Error> {
    let header: AppendHeader = (req.vote, req.prev_log_id, req.leader_commit);
    let header = serde_json::to_vec(&header).map_err(|e| Error::Internal(format!("encoding AppendEntries: {e}")))?;
    let mut out = Vec::new();
    put_bytes(&mut out, &header);
    out.extend_from_slice(&(req.entries.len() as u32).to_be_bytes());
    for e in &req.entries {
        put_bytes(&mut out, &encode_entry(e)?);
    }
    Ok(out)
}

pub fn decode_append(buf: &[u8]) -> Result<openraft::raft::AppendEntriesRequest<TypeConfig>, Error> {
    let mut r = Reader { buf, what: "an AppendEntries request" };
    let header = r.bytes()?;
    let (vote, prev_log_id, leader_commit): AppendHeader = serde_json::from_slice(&header)
        .map_err(|e| Error::Corrupt(format!("an AppendEntries header does not decode: {e}")))?;
    let n = r.u32()?;
    let mut entries = Vec::new();
    for _ in 0..n {
        entries.push(decode_entry(&r.bytes()?)?);
    }
    Ok(openraft::raft::AppendEntriesRequest { vote, prev_log_id, entries, leader_commit })
}

/// serde_json behind a trait object, so one closure encodes differently typed parts.
mod erased {
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<Vec<u8>>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<Vec<u8>> {
            serde_json::to_vec(self)
        }
    }
}

pub fn decode_record(buf: &[u8]) -> Result<Record, Error> {
    let mut r = Reader { buf, what: "an MVCC record" };
    let rev = r.i64()?;
    let sub = r.u32()?;
    let [flags] = r.array::<1>()?;
    let deadline = r.u64()?;
    let create_revision = r.i64()?;
    let version = r.i64()?;
    let key_len = r.u32()? as usize;
    let key = r.take(key_len)?.to_vec();
    let value = r.buf.to_vec();
    let kv = (flags & 1 == 1).then(|| KeyValue {
        key: key.clone(),
        value: value.into(),
        create_revision,
        mod_revision: rev,
        version,
    });
    let deadline_ms = (flags & 2 == 2).then_some(deadline);
    Ok(Record { rev, sub, key, kv, deadline_ms })
}

/// The MVCC part of a Raft snapshot: counters plus every retained record.
/// Written into one buffer of the exact size, from borrowed records: the state is not copied
/// twice more on its way into a snapshot.
pub fn encode_snapshot(rev: i64, compact_rev: i64, records: &[RecordRef<'_>]) -> Vec<u8> {
    let size = SNAPSHOT_MAGIC.len() + 24 + records.iter().map(|r| 4 + record_len(r)).sum::<usize>() + 4;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&rev.to_be_bytes());
    out.extend_from_slice(&compact_rev.to_be_bytes());
    out.extend_from_slice(&(records.len() as u64).to_be_bytes());
    for r in records {
        out.extend_from_slice(&(record_len(r) as u32).to_be_bytes());
        write_record(&mut out, r);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

pub fn decode_snapshot(buf: &[u8]) -> Result<(i64, i64, Vec<Record>), Error> {
    if buf.len() < SNAPSHOT_MAGIC.len() + 28 || &buf[..8] != SNAPSHOT_MAGIC {
        return Err(Error::Corrupt("snapshot data is truncated or not a skiff snapshot".into()));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(Error::Corrupt("snapshot data fails its checksum".into()));
    }
    let mut r = Reader { buf: &body[8..], what: "snapshot data" };
    let rev = r.i64()?;
    let compact_rev = r.i64()?;
    let n = r.u64()?;
    let mut records = Vec::new();
    for _ in 0..n {
        let len = r.u32()? as usize;
        records.push(decode_record(r.take(len)?)?);
    }
    Ok((rev, compact_rev, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rev: i64, put: bool) -> Record {
        Record {
            rev,
            sub: 2,
            key: b"/a".to_vec(),
            kv: put.then(|| KeyValue {
                key: b"/a".to_vec(),
                value: bytes::Bytes::from_static(b"v"),
                create_revision: 1,
                mod_revision: rev,
                version: 3,
            }),
            deadline_ms: put.then_some(42),
        }
    }

    #[test]
    fn records_round_trip_puts_and_tombstones() {
        for r in [rec(5, true), rec(6, false)] {
            assert_eq!(decode_record(&encode_record(&r)).unwrap(), r);
        }
    }

    #[test]
    fn a_flipped_bit_or_a_moved_value_fails_the_frame_check() {
        let f = frame(b"key", b"payload");
        assert_eq!(unframe(b"key", &f, "x").unwrap(), b"payload");
        let mut bad = f.clone();
        bad[6] ^= 1;
        assert!(matches!(unframe(b"key", &bad, "x"), Err(Error::Corrupt(_))));
        assert!(matches!(unframe(b"other", &f, "x"), Err(Error::Corrupt(_))));
        assert!(matches!(unframe(b"key", &f[..3], "x"), Err(Error::Corrupt(_))));
    }

    #[test]
    fn requests_round_trip_through_the_binary_log_encoding() {
        let txn = Txn {
            compare: vec![
                Compare { key: b"/a".to_vec(), result: CompareResult::Less, target: CompareTarget::ModRevision(4) },
                Compare {
                    key: b"/b".to_vec(),
                    result: CompareResult::NotEqual,
                    target: CompareTarget::Value(b"x".to_vec()),
                },
            ],
            success: vec![
                Op::Put { key: b"/a".to_vec(), value: vec![0, 255, 7].into(), ttl_seconds: Some(3600) },
                Op::Delete { key: b"/b".to_vec() },
            ],
            failure: vec![
                Op::Get { key: b"/a".to_vec() },
                Op::Put { key: b"/c".to_vec(), value: vec![].into(), ttl_seconds: None },
            ],
        };
        let one = Request::Txn { txn, now_ms: 1234 };
        let batch = Request::Batch(vec![one.clone(), Request::Compact { revision: 2 }]);
        for req in [one, Request::Compact { revision: 9 }, batch] {
            let entry = Entry::<TypeConfig> {
                log_id: LogId::new(openraft::CommittedLeaderId::new(3, 1), 17),
                payload: EntryPayload::Normal(req),
            };
            let bytes = encode_entry(&entry).unwrap();
            assert_eq!(decode_entry(&bytes).unwrap(), entry);
            assert!(decode_entry(&bytes[..bytes.len() - 1]).is_err());
        }
    }

    #[test]
    fn append_entries_requests_round_trip_on_the_wire() {
        let lid = |i| LogId::new(openraft::CommittedLeaderId::new(2, 1), i);
        let req = openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(2, 1),
            prev_log_id: Some(lid(4)),
            entries: vec![
                Entry { log_id: lid(5), payload: EntryPayload::Blank },
                Entry { log_id: lid(6), payload: EntryPayload::Normal(Request::Compact { revision: 3 }) },
            ],
            leader_commit: Some(lid(5)),
        };
        let back = decode_append(&encode_append(&req).unwrap()).unwrap();
        assert_eq!(
            (back.vote, back.prev_log_id, back.entries, back.leader_commit),
            (req.vote, req.prev_log_id, req.entries, req.leader_commit)
        );
    }

    #[test]
    fn snapshots_round_trip_and_reject_truncation() {
        let (a, b) = (rec(5, true), rec(6, false));
        let s = encode_snapshot(9, 4, &[a.as_ref(), b.as_ref()]);
        assert_eq!(decode_snapshot(&s).unwrap(), (9, 4, vec![rec(5, true), rec(6, false)]));
        assert!(decode_snapshot(&s[..s.len() - 1]).is_err());
        assert!(decode_record(&encode_record(&rec(5, true))[..20]).is_err());
    }
}
