//! The static token file of `--token-auth-file`, in kube-apiserver's format
//! (k8s.io/apiserver/plugin/pkg/authenticator/token/tokenfile): CSV records
//! `token,user,uid[,"group1,group2"]`, read with Go's `encoding/csv` rules — fields split on
//! commas, a field may be double-quoted (then it may hold commas, newlines and `""` for a
//! quote), a bare `"` inside an unquoted field is an error, blank lines are skipped, and there
//! are no comments (a `#` line is a record like any other, so it fails the three-field rule).
//! A record with fewer than three fields stops start-up; an empty token is skipped and a
//! duplicate token replaces the earlier one, each with a warning, as upstream does.

use std::collections::HashMap;

/// Who a static token authenticates as.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenUser {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// The tokens of one file.
#[derive(Debug, Clone, Default)]
pub struct TokenFile {
    tokens: HashMap<String, TokenUser>,
}

/// Why a token file was refused: the file and line, and what is wrong there.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("--token-auth-file {path}: line {line}: {what}")]
pub struct TokenFileError {
    pub path: String,
    pub line: usize,
    pub what: String,
}

impl TokenFile {
    /// Reads and parses `path`.
    pub fn load(path: &std::path::Path) -> Result<TokenFile, TokenFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| TokenFileError {
            path: shown.clone(),
            line: 0,
            what: format!("cannot read it: {e}"),
        })?;
        let text = String::from_utf8(text).map_err(|e| TokenFileError {
            path: shown.clone(),
            line: 0,
            what: format!("not UTF-8 text: {e}"),
        })?;
        let (file, warnings) =
            TokenFile::parse(&text).map_err(|(line, what)| TokenFileError { path: shown.clone(), line, what })?;
        for (line, w) in warnings {
            tracing::warn!(file = %shown, line, "{w}");
        }
        Ok(file)
    }

    /// Parses the file's text. Errors are (line, message); warnings likewise.
    pub fn parse(text: &str) -> Result<(TokenFile, Vec<LineNote>), LineNote> {
        let mut tokens = HashMap::new();
        let mut warnings = Vec::new();
        for (line, record) in csv_records(text)? {
            if record.len() < 3 {
                return Err((
                    line,
                    format!("must have at least 3 columns (token, user name, user uid), found {}", record.len()),
                ));
            }
            if record[0].is_empty() {
                warnings.push((line, "empty token skipped".to_string()));
                continue;
            }
            // Upstream splits the fourth field on commas; empty names (a trailing comma, an
            // empty field) would only ever match an RBAC subject named "", so they are dropped.
            let groups = record
                .get(3)
                .map(|g| g.split(',').filter(|s| !s.is_empty()).map(String::from).collect())
                .unwrap_or_default();
            let user = TokenUser { name: record[1].clone(), uid: record[2].clone(), groups };
            if tokens.insert(record[0].clone(), user).is_some() {
                warnings.push((line, "duplicate token: this line replaces the earlier one".to_string()));
            }
        }
        Ok((TokenFile { tokens }, warnings))
    }

    pub fn lookup(&self, token: &str) -> Option<&TokenUser> {
        self.tokens.get(token)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// A message about one line of the file: (line number, what).
pub type LineNote = (usize, String);

/// One CSV record and the line it starts on.
type Record = (usize, Vec<String>);

/// Splits CSV text into records, each with the line it starts on (Go's `encoding/csv` with its
/// defaults: `,` separator, no comment character, no lazy quotes, leading spaces kept).
fn csv_records(text: &str) -> Result<Vec<Record>, LineNote> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    loop {
        // Skip blank lines (Go's reader ignores them).
        while let Some(&c) = chars.peek() {
            match c {
                '\n' => {
                    chars.next();
                    line += 1;
                }
                '\r' if at_crlf(&chars) => {
                    chars.next();
                }
                _ => break,
            }
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let start = line;
        let mut record = Vec::new();
        loop {
            let mut field = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err((start, "extraneous or missing \" in quoted-field".into())),
                        Some('"') => match chars.peek().copied() {
                            Some('"') => {
                                chars.next();
                                field.push('"');
                            }
                            Some(',' | '\n') | None => break,
                            Some('\r') if at_crlf(&chars) => break,
                            Some(_) => return Err((line, "extraneous or missing \" in quoted-field".into())),
                        },
                        Some('\n') => {
                            line += 1;
                            field.push('\n');
                        }
                        Some(c) => field.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    match c {
                        ',' | '\n' => break,
                        '\r' if at_crlf(&chars) => break,
                        '"' => return Err((line, "bare \" in non-quoted-field".into())),
                        _ => {
                            field.push(c);
                            chars.next();
                        }
                    }
                }
            }
            record.push(field);
            match chars.next() {
                Some(',') => continue,
                Some('\r') => {
                    chars.next();
                    line += 1;
                    break;
                }
                Some('\n') => {
                    line += 1;
                    break;
                }
                _ => break,
            }
        }
        out.push((start, record));
    }
}

/// Whether the iterator is at `\r\n` (Go's reader treats it as a line end).
fn at_crlf(it: &std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    let mut it = it.clone();
    it.next() == Some('\r') && it.next() == Some('\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<TokenFile, (usize, String)> {
        TokenFile::parse(t).map(|(f, _)| f)
    }

    #[test]
    fn records_give_user_uid_and_quoted_groups() {
        let f = parse("t1,alice,1001,\"dev,ops\"\n\nt2,bob,1002\r\nt3,carol,1003,viewers\n").unwrap();
        let a = f.lookup("t1").unwrap();
        assert_eq!((a.name.as_str(), a.uid.as_str()), ("alice", "1001"));
        assert_eq!(a.groups, vec!["dev", "ops"]);
        assert!(f.lookup("t2").unwrap().groups.is_empty());
        assert_eq!(f.lookup("t3").unwrap().groups, vec!["viewers"]);
        assert_eq!(f.len(), 3);
        assert!(f.lookup("t4").is_none());
    }

    #[test]
    fn quoted_fields_keep_commas_quotes_and_newlines() {
        let f = parse("\"a,b\",\"say \"\"hi\"\"\",u,\"g1,\ng2\"").unwrap();
        let u = f.lookup("a,b").unwrap();
        assert_eq!(u.name, "say \"hi\"");
        assert_eq!(u.groups, vec!["g1", "\ng2"]);
    }

    #[test]
    fn short_records_are_errors_naming_their_line() {
        assert_eq!(
            parse("t1,alice,1\n\nt2,bob\n").unwrap_err(),
            (3, "must have at least 3 columns (token, user name, user uid), found 2".to_string())
        );
        // No comment syntax upstream: a comment line is a one-field record.
        assert_eq!(parse("# tokens\nt,u,1").unwrap_err().0, 1);
    }

    #[test]
    fn bad_quoting_is_an_error() {
        assert_eq!(parse("t,a\"b,1").unwrap_err(), (1, "bare \" in non-quoted-field".to_string()));
        assert_eq!(parse("t,u,1\n\"open,u,1").unwrap_err().0, 2);
        assert!(parse("\"t\"x,u,1").is_err());
    }

    #[test]
    fn empty_tokens_are_skipped_and_duplicates_replace_with_warnings() {
        let (f, warnings) = TokenFile::parse(",nobody,0\nt,first,1\nt,second,2\n").unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f.lookup("t").unwrap().name, "second");
        assert_eq!(warnings.iter().map(|w| w.0).collect::<Vec<_>>(), vec![1, 3]);
    }
}
