//! CEL source text → syntax tree: a hand-written lexer and recursive-descent parser for the
//! grammar of the CEL spec (github.com/google/cel-spec, `doc/langdef.md`), with the macros
//! (`has`, `all`, `exists`, `exists_one`, `map`, `filter`, and the two-variable forms of cel-go's
//! `ext.TwoVarComprehensions`: `all(k, v, p)`, `exists`, `existsOne`, `transformList`,
//! `transformMap`, `transformMapEntry`) expanded while parsing, as cel-go does. Errors carry cel-go's wording and the 1-based line:column cel-go reports
//! (`Syntax error: mismatched input '<EOF>' expecting …`).

use std::sync::Arc;

/// How deep expressions may nest: cel-go refuses deeper ones too (its parser's recursion limit),
/// and it bounds the evaluator's recursion.
const MAX_DEPTH: usize = 100;

/// Byte offset of a node in the source (errors turn it into line:column).
pub type Pos = usize;

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

impl BinOp {
    /// The operator's function name in cel-go messages (`_+_`, `@in`).
    pub fn name(self) -> &'static str {
        match self {
            BinOp::Add => "_+_",
            BinOp::Sub => "_-_",
            BinOp::Mul => "_*_",
            BinOp::Div => "_/_",
            BinOp::Rem => "_%_",
            BinOp::Eq => "_==_",
            BinOp::Ne => "_!=_",
            BinOp::Lt => "_<_",
            BinOp::Le => "_<=_",
            BinOp::Gt => "_>_",
            BinOp::Ge => "_>=_",
            BinOp::In => "@in",
        }
    }
}

/// The comprehension macros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Macro {
    All,
    Exists,
    ExistsOne,
    /// `map(x, f)` and `map(x, p, f)` (with a filter).
    Map,
    Filter,
    /// `optMap(x, f)` on optionals.
    OptMap,
    /// `transformList(i, v, f)` and `transformList(i, v, p, f)` (two variables only).
    TransformList,
    /// `transformMap(k, v, f)` and `transformMap(k, v, p, f)`: the key kept, the value transformed.
    TransformMap,
    /// `transformMapEntry(k, v, f)` and `transformMapEntry(k, v, p, f)`: `f` yields a map merged
    /// into the result.
    TransformMapEntry,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Pos, Lit),
    Ident(Pos, Arc<str>),
    /// `a.f`; `test` for `has(a.f)`, `optional` for `a.?f`.
    Select {
        pos: Pos,
        operand: Box<Expr>,
        field: Arc<str>,
        test: bool,
        optional: bool,
    },
    /// `a[i]`; `optional` for `a[?i]`.
    Index {
        pos: Pos,
        operand: Box<Expr>,
        index: Box<Expr>,
        optional: bool,
    },
    /// `f(args)` or `target.f(args)`.
    Call {
        pos: Pos,
        target: Option<Box<Expr>>,
        func: Arc<str>,
        args: Vec<Expr>,
    },
    List(Pos, Vec<Expr>),
    Map(Pos, Vec<(Expr, Expr)>),
    Not(Pos, Box<Expr>),
    Neg(Pos, Box<Expr>),
    Binary(Pos, BinOp, Box<Expr>, Box<Expr>),
    And(Pos, Box<Expr>, Box<Expr>),
    Or(Pos, Box<Expr>, Box<Expr>),
    Cond(Pos, Box<Expr>, Box<Expr>, Box<Expr>),
    Comprehension {
        pos: Pos,
        kind: Macro,
        range: Box<Expr>,
        /// The element (lists) or key (maps); with `var2`, the index or key.
        var: Arc<str>,
        /// The second variable of a two-variable comprehension: the element or value.
        var2: Option<Arc<str>>,
        /// The predicate (all/exists/exists_one/filter, the filter of a 3-argument map or a
        /// 4-argument transform) or the transform (map, optMap, 3-argument transforms).
        body: Box<Expr>,
        /// The transform of a 3-argument `map(x, p, f)` or a 4-argument `transformList(i, v, p, f)`.
        transform: Option<Box<Expr>>,
    },
}

impl Expr {
    pub fn pos(&self) -> Pos {
        match self {
            Expr::Lit(p, _)
            | Expr::Ident(p, _)
            | Expr::List(p, _)
            | Expr::Map(p, _)
            | Expr::Not(p, _)
            | Expr::Neg(p, _)
            | Expr::Binary(p, ..)
            | Expr::And(p, ..)
            | Expr::Or(p, ..)
            | Expr::Cond(p, ..) => *p,
            Expr::Select { pos, .. }
            | Expr::Index { pos, .. }
            | Expr::Call { pos, .. }
            | Expr::Comprehension { pos, .. } => *pos,
        }
    }

    /// Whether the expression refers to the variable `name` (not shadowed by a comprehension).
    pub fn references(&self, name: &str) -> bool {
        match self {
            Expr::Lit(..) => false,
            Expr::Ident(_, n) => &**n == name,
            Expr::Select { operand, .. } => operand.references(name),
            Expr::Index { operand, index, .. } => operand.references(name) || index.references(name),
            Expr::Call { target, args, .. } => {
                target.as_ref().is_some_and(|t| t.references(name)) || args.iter().any(|a| a.references(name))
            }
            Expr::List(_, xs) => xs.iter().any(|x| x.references(name)),
            Expr::Map(_, kvs) => kvs.iter().any(|(k, v)| k.references(name) || v.references(name)),
            Expr::Not(_, x) | Expr::Neg(_, x) => x.references(name),
            Expr::Binary(_, _, a, b) | Expr::And(_, a, b) | Expr::Or(_, a, b) => {
                a.references(name) || b.references(name)
            }
            Expr::Cond(_, a, b, c) => a.references(name) || b.references(name) || c.references(name),
            Expr::Comprehension { range, var, var2, body, transform, .. } => {
                range.references(name)
                    || (&**var != name
                        && var2.as_deref() != Some(name)
                        && (body.references(name) || transform.as_ref().is_some_and(|t| t.references(name))))
            }
        }
    }
}

/// A syntax or type error at a position, printed as cel-go prints issues.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub pos: Pos,
    pub message: String,
}

/// cel-go's issue text: `ERROR: <input>:1:6: <message>` followed by the source line and a caret.
pub fn format_issues(src: &str, issues: &[Issue]) -> String {
    let mut out = Vec::new();
    for i in issues {
        let (line, col, text) = line_col(src, i.pos);
        let mut s = format!("ERROR: <input>:{line}:{col}: {}", i.message);
        s.push_str(&format!("\n | {text}\n | {}^", ".".repeat(col.saturating_sub(1))));
        out.push(s);
    }
    out.join("\n")
}

fn line_col(src: &str, pos: Pos) -> (usize, usize, &str) {
    let pos = pos.min(src.len());
    let mut line = 1;
    let mut start = 0;
    for (i, c) in src.char_indices() {
        if i >= pos {
            break;
        }
        if c == '\n' {
            line += 1;
            start = i + 1;
        }
    }
    let end = src[start..].find('\n').map(|e| start + e).unwrap_or(src.len());
    let col = src.get(start..pos).map(|s| s.chars().count()).unwrap_or(0) + 1;
    (line, col, &src[start..end])
}

// ---------- lexer ----------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(String),
    Bytes(Vec<u8>),
    Ident(String),
    /// Punctuation and operators, as written.
    P(&'static str),
    Eof,
}

impl Tok {
    fn shown(&self, src: &str, start: usize, end: usize) -> String {
        match self {
            Tok::Eof => "<EOF>".into(),
            _ => src.get(start..end).unwrap_or("").to_string(),
        }
    }
}

struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

const PUNCT: &[&str] = &[
    "==", "!=", "<=", ">=", "&&", "||", ".?", "[?", "<", ">", "!", "+", "-", "*", "/", "%", "?", ":", ".", ",", "(",
    ")", "[", "]", "{", "}", "=",
];

/// Words CEL reserves: they may not be used as identifiers.
pub(super) const RESERVED: &[&str] = &[
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

fn lex(src: &str) -> Result<Vec<Token>, Issue> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        // String and bytes literals, with the r/R (raw) and b/B (bytes) prefixes.
        let (mut raw, mut bytes, mut q) = (false, false, i);
        while q < b.len() && q - i < 2 && matches!(b[q], b'r' | b'R' | b'b' | b'B') {
            match b[q] {
                b'r' | b'R' => raw = true,
                _ => bytes = true,
            }
            q += 1;
        }
        if q < b.len() && (b[q] == b'"' || b[q] == b'\'') {
            let (text, end) = lex_string(src, q, raw, start)?;
            // A bytes literal holds any bytes; a string literal must be valid UTF-8.
            let tok = if bytes {
                Tok::Bytes(text)
            } else {
                match String::from_utf8(text) {
                    Ok(s) => Tok::Str(s),
                    Err(_) => {
                        return Err(Issue {
                            pos: start,
                            message: "Syntax error: invalid UTF-8 in string literal".into(),
                        })
                    }
                }
            };
            out.push(Token { tok, start, end });
            i = end;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let (tok, end) = lex_number(src, i)?;
            out.push(Token { tok, start, end });
            i = end;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let mut j = i;
            while j < b.len() && is_ident_byte(b[j]) {
                j += 1;
            }
            out.push(Token { tok: Tok::Ident(src[i..j].to_string()), start, end: j });
            i = j;
            continue;
        }
        match PUNCT.iter().find(|p| b[i..].starts_with(p.as_bytes())) {
            Some(p) => {
                out.push(Token { tok: Tok::P(p), start, end: i + p.len() });
                i += p.len();
            }
            None => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(Issue { pos: i, message: format!("Syntax error: token recognition error at: '{ch}'") });
            }
        }
    }
    out.push(Token { tok: Tok::Eof, start: b.len(), end: b.len() });
    Ok(out)
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn lex_number(src: &str, i: usize) -> Result<(Tok, usize), Issue> {
    let b = src.as_bytes();
    let bad = |m: &str| Issue { pos: i, message: m.to_string() };
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X')) {
        let mut j = i + 2;
        while j < b.len() && b[j].is_ascii_hexdigit() {
            j += 1;
        }
        let digits = &src[i + 2..j];
        if matches!(b.get(j), Some(b'u' | b'U')) {
            let v = u64::from_str_radix(digits, 16).map_err(|_| bad("invalid uint literal"))?;
            return Ok((Tok::Uint(v), j + 1));
        }
        let v = i64::from_str_radix(digits, 16).map_err(|_| bad("invalid int literal"))?;
        return Ok((Tok::Int(v), j));
    }
    let mut j = i;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    let mut float = false;
    if j < b.len() && b[j] == b'.' && b.get(j + 1).is_some_and(|d| d.is_ascii_digit()) {
        float = true;
        j += 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
    }
    if j < b.len() && matches!(b[j], b'e' | b'E') {
        let mut k = j + 1;
        if k < b.len() && matches!(b[k], b'+' | b'-') {
            k += 1;
        }
        if k < b.len() && b[k].is_ascii_digit() {
            float = true;
            j = k;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
        }
    }
    let text = &src[i..j];
    if float {
        let v: f64 = text.parse().map_err(|_| bad("invalid double literal"))?;
        return Ok((Tok::Double(v), j));
    }
    if matches!(b.get(j), Some(b'u' | b'U')) {
        let v: u64 = text.parse().map_err(|_| bad("invalid uint literal"))?;
        return Ok((Tok::Uint(v), j + 1));
    }
    // An int literal may be i64::MIN's magnitude only under a unary minus; the parser folds it.
    match text.parse::<i64>() {
        Ok(v) => Ok((Tok::Int(v), j)),
        Err(_) if text == "9223372036854775808" => Ok((Tok::Uint(9223372036854775808), j)),
        Err(_) => Err(bad("invalid int literal")),
    }
}

/// Lexes a quoted literal starting at the quote `q`; returns its bytes and the end offset.
fn lex_string(src: &str, q: usize, raw: bool, start: usize) -> Result<(Vec<u8>, usize), Issue> {
    let b = src.as_bytes();
    let quote = b[q];
    let triple = b.get(q + 1) == Some(&quote) && b.get(q + 2) == Some(&quote);
    let mut i = if triple { q + 3 } else { q + 1 };
    let mut out = Vec::new();
    let unterminated =
        || Issue { pos: start, message: format!("Syntax error: token recognition error at: '{}'", &src[start..]) };
    loop {
        if i >= b.len() {
            return Err(unterminated());
        }
        if triple {
            if b[i] == quote && b.get(i + 1) == Some(&quote) && b.get(i + 2) == Some(&quote) {
                return Ok((out, i + 3));
            }
        } else if b[i] == quote {
            return Ok((out, i + 1));
        } else if b[i] == b'\n' || b[i] == b'\r' {
            return Err(unterminated());
        }
        if b[i] == b'\\' && !raw {
            let e = *b.get(i + 1).ok_or_else(unterminated)?;
            let simple = match e {
                b'a' => Some(7u8),
                b'b' => Some(8),
                b'f' => Some(12),
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b't' => Some(b'\t'),
                b'v' => Some(11),
                b'\\' => Some(b'\\'),
                b'\'' => Some(b'\''),
                b'"' => Some(b'"'),
                b'`' => Some(b'`'),
                b'?' => Some(b'?'),
                _ => None,
            };
            if let Some(c) = simple {
                out.push(c);
                i += 2;
                continue;
            }
            let bad = || Issue { pos: i, message: "Syntax error: invalid escape sequence".into() };
            let hex = |from: usize, n: usize| -> Result<u32, Issue> {
                let h = src.get(from..from + n).ok_or_else(bad)?;
                u32::from_str_radix(h, 16).map_err(|_| bad())
            };
            match e {
                b'x' | b'X' => {
                    out.push(hex(i + 2, 2)? as u8);
                    i += 4;
                }
                b'u' | b'U' => {
                    let n = if e == b'u' { 4 } else { 8 };
                    let c = char::from_u32(hex(i + 2, n)?).ok_or_else(bad)?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += 2 + n;
                }
                b'0'..=b'3' => {
                    let o = src.get(i + 1..i + 4).ok_or_else(bad)?;
                    out.push(u8::from_str_radix(o, 8).map_err(|_| bad())?);
                    i += 4;
                }
                _ => return Err(bad()),
            }
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
}

// ---------- parser ----------

/// A comprehension's variable: a simple name, not the accumulator's (but `optMap` does not look),
/// refused in the words cel-go v0.23 (Kubernetes 1.33's) uses for the macro `kind`.
fn iter_var(e: &Expr, kind: Macro) -> Result<Arc<str>, Issue> {
    match e {
        Expr::Ident(p, v) if &**v == ACCUMULATOR && kind != Macro::OptMap => {
            Err(Issue { pos: *p, message: "iteration variable overwrites accumulator variable".into() })
        }
        Expr::Ident(_, v) => Ok(v.clone()),
        other => {
            let message = match kind {
                Macro::Map | Macro::Filter => "argument is not an identifier",
                Macro::OptMap => "optMap() variable name must be a simple identifier",
                _ => "argument must be a simple name",
            };
            Err(Issue { pos: other.pos(), message: message.into() })
        }
    }
}

/// The name of cel-go's comprehension accumulator, which a macro variable may not take.
const ACCUMULATOR: &str = "__result__";

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    at: usize,
    depth: usize,
}

const PRIMARY_EXPECTED: &str =
    "{'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}";

/// Parses a CEL expression.
pub fn parse(src: &str) -> Result<Expr, Issue> {
    let toks = lex(src)?;
    let mut p = Parser { src, toks, at: 0, depth: 0 };
    let e = p.expr()?;
    if !matches!(p.peek(), Tok::Eof) {
        return Err(p.mismatched("<EOF>"));
    }
    Ok(e)
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.at.min(self.toks.len() - 1)].tok
    }
    fn pos(&self) -> Pos {
        self.toks[self.at.min(self.toks.len() - 1)].start
    }
    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        // Past the end stays past the end (peek shows EOF), so one step back is the token read.
        if self.at < self.toks.len() {
            self.at += 1;
        }
        t
    }
    fn is(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::P(x) if *x == p)
    }
    fn eat(&mut self, p: &str) -> bool {
        if self.is(p) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn mismatched(&self, expecting: &str) -> Issue {
        let t = &self.toks[self.at.min(self.toks.len() - 1)];
        let shown = t.tok.shown(self.src, t.start, t.end);
        Issue { pos: t.start, message: format!("Syntax error: mismatched input '{shown}' expecting {expecting}") }
    }
    fn expect(&mut self, p: &'static str) -> Result<(), Issue> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.mismatched(&format!("'{p}'")))
        }
    }
    fn enter(&mut self) -> Result<(), Issue> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Issue { pos: self.pos(), message: "expression recursion limit exceeded".into() });
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, Issue> {
        self.enter()?;
        let c = self.or()?;
        let out = if self.is("?") {
            let pos = self.pos();
            self.bump();
            let t = self.or()?;
            self.expect(":")?;
            let f = self.expr()?;
            Expr::Cond(pos, Box::new(c), Box::new(t), Box::new(f))
        } else {
            c
        };
        self.depth -= 1;
        Ok(out)
    }

    fn or(&mut self) -> Result<Expr, Issue> {
        let mut l = self.and()?;
        let mut n = 0;
        while self.is("||") {
            // Each link of a chain nests the tree one level deeper.
            self.enter()?;
            n += 1;
            let pos = self.pos();
            self.bump();
            let r = self.and()?;
            l = Expr::Or(pos, Box::new(l), Box::new(r));
        }
        self.depth -= n;
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, Issue> {
        let mut l = self.relation()?;
        let mut n = 0;
        while self.is("&&") {
            self.enter()?;
            n += 1;
            let pos = self.pos();
            self.bump();
            let r = self.relation()?;
            l = Expr::And(pos, Box::new(l), Box::new(r));
        }
        self.depth -= n;
        Ok(l)
    }

    fn relation(&mut self) -> Result<Expr, Issue> {
        let start = self.depth;
        let r = self.relation_chain();
        self.depth = start;
        r
    }

    fn relation_chain(&mut self) -> Result<Expr, Issue> {
        let mut l = self.addition()?;
        loop {
            let op = match self.peek() {
                Tok::P("==") => BinOp::Eq,
                Tok::P("!=") => BinOp::Ne,
                Tok::P("<") => BinOp::Lt,
                Tok::P("<=") => BinOp::Le,
                Tok::P(">") => BinOp::Gt,
                Tok::P(">=") => BinOp::Ge,
                Tok::Ident(w) if w == "in" => BinOp::In,
                _ => return Ok(l),
            };
            self.enter()?;
            let pos = self.pos();
            self.bump();
            let r = self.addition()?;
            l = Expr::Binary(pos, op, Box::new(l), Box::new(r));
        }
    }

    fn addition(&mut self) -> Result<Expr, Issue> {
        let start = self.depth;
        let r = self.addition_chain();
        self.depth = start;
        r
    }

    fn addition_chain(&mut self) -> Result<Expr, Issue> {
        let mut l = self.multiplication()?;
        loop {
            let op = match self.peek() {
                Tok::P("+") => BinOp::Add,
                Tok::P("-") => BinOp::Sub,
                _ => return Ok(l),
            };
            self.enter()?;
            let pos = self.pos();
            self.bump();
            let r = self.multiplication()?;
            l = Expr::Binary(pos, op, Box::new(l), Box::new(r));
        }
    }

    fn multiplication(&mut self) -> Result<Expr, Issue> {
        let start = self.depth;
        let r = self.multiplication_chain();
        self.depth = start;
        r
    }

    fn multiplication_chain(&mut self) -> Result<Expr, Issue> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::P("*") => BinOp::Mul,
                Tok::P("/") => BinOp::Div,
                Tok::P("%") => BinOp::Rem,
                _ => return Ok(l),
            };
            self.enter()?;
            let pos = self.pos();
            self.bump();
            let r = self.unary()?;
            l = Expr::Binary(pos, op, Box::new(l), Box::new(r));
        }
    }

    fn unary(&mut self) -> Result<Expr, Issue> {
        self.enter()?;
        let out = if self.is("!") {
            let pos = self.pos();
            let mut n = 0;
            while self.eat("!") {
                n += 1;
            }
            let e = self.member()?;
            if n % 2 == 1 {
                Expr::Not(pos, Box::new(e))
            } else {
                e
            }
        } else if self.is("-") {
            let pos = self.pos();
            let mut n = 0;
            while self.eat("-") {
                n += 1;
            }
            let e = self.member()?;
            // A negative literal is a literal (so -9223372036854775808 is an int).
            match (n % 2, e) {
                (0, e) => e,
                (_, Expr::Lit(p, Lit::Int(v))) => Expr::Lit(p, Lit::Int(-v)),
                (_, Expr::Lit(p, Lit::Double(v))) => Expr::Lit(p, Lit::Double(-v)),
                (_, Expr::Lit(p, Lit::Uint(9223372036854775808))) if !self.was_uint_suffix() => {
                    Expr::Lit(p, Lit::Int(i64::MIN))
                }
                (_, e) => Expr::Neg(pos, Box::new(e)),
            }
        } else {
            self.member()?
        };
        self.depth -= 1;
        Ok(out)
    }

    /// Whether the token just consumed was written with a `u` suffix.
    fn was_uint_suffix(&self) -> bool {
        let t = &self.toks[self.at.saturating_sub(1)];
        self.src.get(t.start..t.end).is_some_and(|s| s.ends_with(['u', 'U']))
    }

    fn member(&mut self) -> Result<Expr, Issue> {
        let start = self.depth;
        let r = self.member_chain();
        self.depth = start;
        r
    }

    fn member_chain(&mut self) -> Result<Expr, Issue> {
        let mut e = self.primary()?;
        loop {
            if self.is(".") || self.is(".?") || self.is("[") || self.is("[?") {
                self.enter()?;
            }
            if self.is(".") || self.is(".?") {
                let optional = self.is(".?");
                let pos = self.pos();
                self.bump();
                let name = match self.bump() {
                    Tok::Ident(n) => n,
                    _ => {
                        self.at = self.at.saturating_sub(1);
                        return Err(self.mismatched("IDENTIFIER"));
                    }
                };
                if !optional && self.is("(") {
                    let call_pos = self.pos();
                    self.bump();
                    let args = self.args(")")?;
                    e = self.member_call(call_pos, e, &name, args)?;
                } else {
                    e = Expr::Select { pos, operand: Box::new(e), field: name.into(), test: false, optional };
                }
            } else if self.is("[") || self.is("[?") {
                let optional = self.is("[?");
                let pos = self.pos();
                self.bump();
                let index = self.expr()?;
                self.expect("]")?;
                e = Expr::Index { pos, operand: Box::new(e), index: Box::new(index), optional };
            } else {
                return Ok(e);
            }
        }
    }

    fn args(&mut self, close: &'static str) -> Result<Vec<Expr>, Issue> {
        let mut out = Vec::new();
        if self.eat(close) {
            return Ok(out);
        }
        loop {
            out.push(self.expr()?);
            if self.eat(",") {
                // A trailing comma is allowed in list literals only.
                if close == "]" && self.eat(close) {
                    return Ok(out);
                }
                continue;
            }
            self.expect(close)?;
            return Ok(out);
        }
    }

    /// `target.name(args)`, expanding the comprehension macros.
    fn member_call(&mut self, pos: Pos, target: Expr, name: &str, mut args: Vec<Expr>) -> Result<Expr, Issue> {
        let kind = match (name, args.len()) {
            ("all", 2 | 3) => Some(Macro::All),
            ("exists", 2 | 3) => Some(Macro::Exists),
            ("exists_one" | "existsOne", 2 | 3) => Some(Macro::ExistsOne),
            ("map", 2 | 3) => Some(Macro::Map),
            ("filter", 2) => Some(Macro::Filter),
            ("optMap", 2) => Some(Macro::OptMap),
            ("transformList", 3 | 4) => Some(Macro::TransformList),
            ("transformMap", 3 | 4) => Some(Macro::TransformMap),
            ("transformMapEntry", 3 | 4) => Some(Macro::TransformMapEntry),
            _ => None,
        };
        let Some(kind) = kind else {
            // Namespaced functions (`optional.of(x)`, `sets.contains(a, b)`) are global calls.
            if let Expr::Ident(_, ns) = &target {
                let namespaced = match &**ns {
                    "optional" | "sets" => true,
                    "ip" => name == "isCanonical",
                    "strings" => name == "quote",
                    "format" => name == "named" || super::formats::NAMES.contains(&name),
                    _ => false,
                };
                if namespaced {
                    return Ok(Expr::Call { pos, target: None, func: format!("{ns}.{name}").into(), args });
                }
            }
            return Ok(Expr::Call { pos, target: Some(Box::new(target)), func: name.into(), args });
        };
        // Two variables: the quantifiers with 3 arguments, the transforms always.
        let two = match kind {
            Macro::All | Macro::Exists | Macro::ExistsOne => args.len() == 3,
            Macro::TransformList | Macro::TransformMap | Macro::TransformMapEntry => true,
            _ => false,
        };
        let mut rest = args.split_off(if two { 2 } else { 1 }).into_iter();
        let var = iter_var(&args[0], kind)?;
        let var2 = match args.get(1) {
            Some(a) => {
                let v = iter_var(a, kind)?;
                if v == var {
                    return Err(Issue { pos: a.pos(), message: format!("duplicate variable name: {v}") });
                }
                Some(v)
            }
            None => None,
        };
        let body = rest.next().map(Box::new).ok_or_else(|| Issue { pos, message: "missing macro body".into() })?;
        let transform = rest.next().map(Box::new);
        Ok(Expr::Comprehension { pos, kind, range: Box::new(target), var, var2, body, transform })
    }

    fn primary(&mut self) -> Result<Expr, Issue> {
        let pos = self.pos();
        match self.bump() {
            Tok::Int(v) => Ok(Expr::Lit(pos, Lit::Int(v))),
            Tok::Uint(v) => Ok(Expr::Lit(pos, Lit::Uint(v))),
            Tok::Double(v) => Ok(Expr::Lit(pos, Lit::Double(v))),
            Tok::Str(s) => Ok(Expr::Lit(pos, Lit::Str(s.into()))),
            Tok::Bytes(b) => Ok(Expr::Lit(pos, Lit::Bytes(b.into()))),
            Tok::Ident(w) => match w.as_str() {
                "true" => Ok(Expr::Lit(pos, Lit::Bool(true))),
                "false" => Ok(Expr::Lit(pos, Lit::Bool(false))),
                "null" => Ok(Expr::Lit(pos, Lit::Null)),
                "in" => {
                    self.at = self.at.saturating_sub(1);
                    Err(self.mismatched(PRIMARY_EXPECTED))
                }
                w if RESERVED.contains(&w) => Err(Issue { pos, message: format!("reserved identifier: {w}") }),
                _ => {
                    if self.is("(") {
                        let call_pos = self.pos();
                        self.bump();
                        let args = self.args(")")?;
                        if w == "has" {
                            return match args.as_slice() {
                                [Expr::Select { pos, operand, field, optional: false, .. }] => Ok(Expr::Select {
                                    pos: *pos,
                                    operand: operand.clone(),
                                    field: field.clone(),
                                    test: true,
                                    optional: false,
                                }),
                                [a] => Err(Issue { pos: a.pos(), message: "invalid argument to has() macro".into() }),
                                _ => Ok(Expr::Call { pos: call_pos, target: None, func: w.into(), args }),
                            };
                        }
                        return Ok(Expr::Call { pos: call_pos, target: None, func: w.into(), args });
                    }
                    if self.is("{") {
                        return Err(Issue { pos: self.pos(), message: "message construction is not supported".into() });
                    }
                    Ok(Expr::Ident(pos, w.into()))
                }
            },
            Tok::P("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::P("[") => Ok(Expr::List(pos, self.args("]")?)),
            Tok::P("{") => {
                let mut kvs = Vec::new();
                if !self.eat("}") {
                    loop {
                        let k = self.expr()?;
                        self.expect(":")?;
                        let v = self.expr()?;
                        kvs.push((k, v));
                        if self.eat(",") {
                            if self.eat("}") {
                                break;
                            }
                            continue;
                        }
                        self.expect("}")?;
                        break;
                    }
                }
                Ok(Expr::Map(pos, kvs))
            }
            Tok::P(".") => match self.bump() {
                // A leading dot names an identifier in the root scope.
                Tok::Ident(w) => Ok(Expr::Ident(pos, w.into())),
                _ => {
                    self.at = self.at.saturating_sub(1);
                    Err(self.mismatched("IDENTIFIER"))
                }
            },
            _ => {
                self.at = self.at.saturating_sub(1);
                Err(self.mismatched(PRIMARY_EXPECTED))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_macros_parse_as_cel_defines_them() {
        let e = parse("a || b && c == 1 + 2 * 3").unwrap();
        let Expr::Or(_, _, r) = e else { panic!("{e:?}") };
        assert!(matches!(*r, Expr::And(..)));
        let e = parse("self.items.all(i, i.size() > 0)").unwrap();
        assert!(matches!(e, Expr::Comprehension { kind: Macro::All, .. }), "{e:?}");
        let e = parse("has(self.spec)").unwrap();
        assert!(matches!(e, Expr::Select { test: true, .. }));
        assert!(matches!(parse("-9223372036854775808").unwrap(), Expr::Lit(_, Lit::Int(i64::MIN))));
        assert!(matches!(parse("'a\\n' + r'\\n' + '''x'y'''").unwrap(), Expr::Binary(..)));
        assert!(matches!(parse("[1, 2,]").unwrap(), Expr::List(_, v) if v.len() == 2));
        let e = parse("m.transformMap(k, v, k != 'a', v + 1)").unwrap();
        let Expr::Comprehension { kind: Macro::TransformMap, var, var2: Some(v2), transform: Some(_), .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!((&*var, &*v2), ("k", "v"));
        let e = parse("l.exists_one(i, v, v > i)").unwrap();
        assert!(matches!(e, Expr::Comprehension { kind: Macro::ExistsOne, var2: Some(_), transform: None, .. }));
        let e = parse("l.all(x, x > 0)").unwrap();
        assert!(matches!(e, Expr::Comprehension { kind: Macro::All, var2: None, .. }));
        // Not macros: too few arguments, or a one-variable form of a two-variable macro.
        assert!(matches!(parse("l.transformList(i, v)").unwrap(), Expr::Call { .. }));
        assert!(matches!(parse("l.filter(i, v, true)").unwrap(), Expr::Call { .. }));
    }

    #[test]
    fn two_variable_macros_refuse_what_cel_go_refuses() {
        let err = |s: &str| parse(s).unwrap_err();
        let e = err("[].all(i, i, i < i)");
        assert_eq!((e.message.as_str(), e.pos), ("duplicate variable name: i", 10));
        assert_eq!(
            err("[].all(__result__, i, __result__ < i)").message,
            "iteration variable overwrites accumulator variable"
        );
        assert_eq!(err("[].all(j, __result__, __result__ < j)").pos, 10);
        // The one-variable forms word it by macro, as cel-go v0.23.
        assert_eq!(err("[].map(1, 2)").message, "argument is not an identifier");
        assert_eq!(err("[].filter(a.b, true)").message, "argument is not an identifier");
        assert_eq!(err("[].exists_one(a.b, true)").message, "argument must be a simple name");
        assert_eq!(err("optional.none().optMap(a.b, 1)").message, "optMap() variable name must be a simple identifier");
        assert_eq!(err("[].map(__result__, 1)").message, "iteration variable overwrites accumulator variable");
        for bad in [
            "[].all(i.j, k, i.j < k)",
            "[].exists(j, i.k, j < i.k)",
            "[].existsOne(j, i.k, j < i.k)",
            "[].transformList(1, k, k)",
            "{}.transformMap(j, i.k, j + i.k)",
            "{}.transformMapEntry(i.j, k, {k: i.j})",
        ] {
            assert_eq!(err(bad).message, "argument must be a simple name", "{bad}");
        }
    }

    #[test]
    fn syntax_errors_have_cel_go_positions_and_wording() {
        let src = "self.replicas <";
        let e = parse(src).unwrap_err();
        assert_eq!(
            format_issues(src, &[e]),
            format!(
                "ERROR: <input>:1:16: Syntax error: mismatched input '<EOF>' expecting {PRIMARY_EXPECTED}\n | self.replicas <\n | ...............^"
            )
        );
        let e = parse("1 + this does").unwrap_err();
        assert_eq!(e.message, "Syntax error: mismatched input 'does' expecting <EOF>");
        assert_eq!(e.pos, 9);
        assert!(parse("self # 1").unwrap_err().message.contains("token recognition error at: '#'"));
        assert!(parse(&"(".repeat(500)).is_err(), "deep nesting is refused, not a stack overflow");
        for long in [vec!["1"; 50_000].join(" + "), vec!["a"; 50_000].join(" || "), format!("a{}", ".b".repeat(50_000))]
        {
            let e = parse(&long).unwrap_err();
            assert_eq!(e.message, "expression recursion limit exceeded");
        }
        assert!(parse(&vec!["a"; 60].join(" && ")).is_ok());
    }
}
