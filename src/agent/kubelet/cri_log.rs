//! Reading CRI-format container logs as `kubectl logs` shows them.
//!
//! Each line of `/var/log/pods/<ns>_<pod>_<uid>/<container>/<restart>.log` is
//! `<RFC3339Nano> <stdout|stderr> <P|F> <content>`. The upstream kubelet's `ReadLogs`
//! (pkg/kubelet/kuberuntime/logs) renders it: `P` (partial) segments lose their newline so they
//! join the `F` line that follows; with `timestamps` every physical segment gets its own
//! fixed-width (9-digit fraction) timestamp; `tailLines` counts physical lines from the end;
//! `since` drops older segments; `limitBytes` counts output bytes and may cut a line.
//!
//! Pure: works on bytes and lines; the log server does the file I/O.

use chrono::{DateTime, SecondsFormat, Utc};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CriLogError {
    /// A line that is not `<time> <stream> <tag> <content>`.
    #[error("malformed CRI log line: {0:?}")]
    Malformed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One physical line of a CRI log file.
#[derive(Debug, Clone, PartialEq)]
pub struct CriLine<'a> {
    pub time: DateTime<Utc>,
    pub stream: Stream,
    /// `P`: the runtime split a long line; the next segment continues it.
    pub partial: bool,
    pub content: &'a str,
}

/// Parses one line (without its trailing newline).
pub fn parse_line(line: &str) -> Result<CriLine<'_>, CriLogError> {
    let bad = || CriLogError::Malformed(line.chars().take(120).collect());
    let (ts, rest) = line.split_once(' ').ok_or_else(bad)?;
    let (stream, rest) = rest.split_once(' ').ok_or_else(bad)?;
    // The content may be empty: "<ts> stdout F" with or without the separating space.
    let (tag, content) = match rest.split_once(' ') {
        Some((t, c)) => (t, c),
        None => (rest, ""),
    };
    let time = DateTime::parse_from_rfc3339(ts).map_err(|_| bad())?.with_timezone(&Utc);
    let stream = match stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return Err(bad()),
    };
    // Tags are ':'-separated; the first is P or F (cri-api `LogTag`).
    let partial = match tag.split(':').next() {
        Some("P") => true,
        Some("F") => false,
        _ => return Err(bad()),
    };
    Ok(CriLine { time, stream, partial, content })
}

/// The query of `GET /containerLogs/...` once resolved (`sinceSeconds` turned into a time).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    pub timestamps: bool,
    /// Physical lines from the end; `None` = all.
    pub tail_lines: Option<u64>,
    pub since: Option<DateTime<Utc>>,
    pub limit_bytes: Option<u64>,
    pub follow: bool,
}

/// `RFC3339NanoFixed` of the kubelet: always nine fractional digits.
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Byte offset in `data` where the last `n` physical lines start (upstream
/// `tail.FindTailLineStartIndex`). A trailing newline does not start an empty line.
pub fn tail_start(data: &[u8], n: u64) -> usize {
    if n == 0 {
        return data.len();
    }
    let mut end = data.len();
    if end > 0 && data[end - 1] == b'\n' {
        end -= 1;
    }
    let mut seen = 0u64;
    for i in (0..end).rev() {
        if data[i] == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// Turns CRI lines into the bytes a client sees, keeping `limitBytes` across calls so a
/// follow stream stops at the limit too.
#[derive(Debug)]
pub struct Renderer {
    opts: LogOptions,
    written: u64,
}

impl Renderer {
    pub fn new(opts: LogOptions) -> Self {
        Renderer { opts, written: 0 }
    }

    /// True once `limitBytes` is used up: the caller stops reading.
    pub fn exhausted(&self) -> bool {
        matches!(self.opts.limit_bytes, Some(l) if self.written >= l)
    }

    /// Appends the rendering of one physical line to `out`. Malformed lines are skipped
    /// (upstream logs and skips them too).
    pub fn push_line(&mut self, line: &str, out: &mut Vec<u8>) {
        if self.exhausted() {
            return;
        }
        let parsed = match parse_line(line.strip_suffix('\r').unwrap_or(line)) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "skipping log line");
                return;
            }
        };
        if matches!(self.opts.since, Some(s) if parsed.time < s) {
            return;
        }
        let mut piece = Vec::with_capacity(parsed.content.len() + 40);
        if self.opts.timestamps {
            piece.extend_from_slice(format_timestamp(&parsed.time).as_bytes());
            piece.push(b' ');
        }
        piece.extend_from_slice(parsed.content.as_bytes());
        if !parsed.partial {
            piece.push(b'\n');
        }
        if let Some(limit) = self.opts.limit_bytes {
            let room = (limit - self.written.min(limit)) as usize;
            piece.truncate(room);
        }
        self.written += piece.len() as u64;
        out.extend_from_slice(&piece);
    }

    /// Renders every complete line of `data` (a whole file or the part after the tail offset).
    pub fn render_all(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for raw in data.split(|b| *b == b'\n') {
            if raw.is_empty() {
                continue;
            }
            self.push_line(&String::from_utf8_lossy(raw), &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "2016-10-06T00:17:09.669794202Z stdout F first\n\
2016-10-06T00:17:10.000000000Z stderr P part one, \n\
2016-10-06T00:17:10.5Z stderr P part two, \n\
2016-10-06T00:17:11.000000001Z stderr F end\n\
2016-10-06T00:17:12Z stdout F last\n";

    fn render(opts: LogOptions) -> String {
        let data = FILE.as_bytes();
        let start = opts.tail_lines.map(|n| tail_start(data, n)).unwrap_or(0);
        String::from_utf8(Renderer::new(opts).render_all(&data[start..])).unwrap()
    }

    #[test]
    fn a_line_parses_into_time_stream_tag_and_content() {
        let l = parse_line("2016-10-06T00:17:09.669794202Z stdout F hello world").unwrap();
        assert_eq!(l.stream, Stream::Stdout);
        assert!(!l.partial);
        assert_eq!(l.content, "hello world");
        assert_eq!(format_timestamp(&l.time), "2016-10-06T00:17:09.669794202Z");
        assert_eq!(parse_line("2016-10-06T00:17:09Z stderr P").unwrap().content, "");
        assert!(parse_line("garbage").is_err());
        assert!(parse_line("2016-10-06T00:17:09Z stdin F x").is_err());
    }

    #[test]
    fn partial_lines_join_with_the_full_line_that_follows() {
        assert_eq!(render(LogOptions::default()), "first\npart one, part two, end\nlast\n");
    }

    #[test]
    fn timestamps_prefix_every_segment_with_nine_fraction_digits() {
        let out = render(LogOptions { timestamps: true, ..Default::default() });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "2016-10-06T00:17:09.669794202Z first");
        assert_eq!(
            lines[1],
            "2016-10-06T00:17:10.000000000Z part one, 2016-10-06T00:17:10.500000000Z part two, \
2016-10-06T00:17:11.000000001Z end"
        );
    }

    #[test]
    fn tail_lines_counts_physical_lines_from_the_end() {
        assert_eq!(render(LogOptions { tail_lines: Some(1), ..Default::default() }), "last\n");
        assert_eq!(render(LogOptions { tail_lines: Some(2), ..Default::default() }), "end\nlast\n");
        assert_eq!(render(LogOptions { tail_lines: Some(0), ..Default::default() }), "");
        assert_eq!(render(LogOptions { tail_lines: Some(99), ..Default::default() }), render(LogOptions::default()));
        assert_eq!(tail_start(b"a\nb", 1), 2);
    }

    #[test]
    fn since_drops_older_segments() {
        let since = DateTime::parse_from_rfc3339("2016-10-06T00:17:11Z").unwrap().with_timezone(&Utc);
        assert_eq!(render(LogOptions { since: Some(since), ..Default::default() }), "end\nlast\n");
    }

    #[test]
    fn limit_bytes_counts_output_bytes_and_may_cut_a_line() {
        let mut r = Renderer::new(LogOptions { limit_bytes: Some(8), ..Default::default() });
        let out = r.render_all(FILE.as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), "first\npa");
        assert!(r.exhausted());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let data = b"nonsense\n2016-10-06T00:17:12Z stdout F ok\n";
        assert_eq!(Renderer::new(LogOptions::default()).render_all(data), b"ok\n");
    }
}
