//! `skiff logger`: started by containerd's shim through a `binary://` log URI. Reads the
//! container's stdout (fd 3) and stderr (fd 4) and appends CRI-format lines to a file.
//!
//! The shim hands the logger fd 3 (stdout), fd 4 (stderr) and fd 5, a pipe it waits on: the task
//! start blocks until fd 5 is closed, so it is closed as soon as the log file is open (guide §5).
//! The logger is the shim's child, so container output outlives the agent and containerd.
//!
//! Line format (the kubelet's CRI log format, as containerd's CRI plugin writes it):
//! `2016-10-06T00:17:09.669794202Z stdout F text`; lines longer than 16 KiB are split into `P`
//! (partial) records followed by a final `F` record.

use crate::cli::LoggerArgs;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Longest record body before a line is split, as in containerd's CRI plugin (16 KiB).
pub const MAX_RECORD: usize = 16 * 1024;

/// What can stop the logger.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log file (or its directory) could not be created or opened.
    #[error("cannot open log file {path}: {source}; check the kubelet's log directory is writable")]
    Open { path: String, source: std::io::Error },
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
                    Err(e) => eprintln!("skiff logger: {e}"),
                }
            }
        }
        self.file.write_all(bytes)
    }
}

fn pump(mut input: File, stream: Stream, out: Arc<Mutex<LogFile>>) {
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
                eprintln!("skiff logger: write failed: {e}");
            }
        }
    };
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => write(splitter.feed(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("skiff logger: read {} failed: {e}", stream.as_str());
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
    let file = open_log(&args.path);
    // Whatever happened, release the shim: it waits on fd 5 before starting the task, and a
    // logger that failed must not hang the container start forever.
    if fd_open(5) {
        // SAFETY: fd 5 is the shim's ready pipe, owned by this process and used nowhere else.
        unsafe { libc::close(5) };
    }
    let out =
        Arc::new(Mutex::new(LogFile { path: args.path.clone(), file: file?, checked: std::time::Instant::now() }));
    let mut threads = Vec::new();
    for (fd, stream) in [(3, Stream::Stdout), (4, Stream::Stderr)] {
        if !fd_open(fd) {
            continue;
        }
        // SAFETY: the shim passes these descriptors to us; nothing else in this process owns them.
        let input = unsafe { File::from_raw_fd(fd) };
        let out = out.clone();
        threads.push(std::thread::spawn(move || pump(input, stream, out)));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
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

    #[test]
    fn the_log_file_and_its_directories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/0.log");
        open_log(&p).unwrap();
        assert!(p.exists());
    }
}
