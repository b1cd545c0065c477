//! The network types of Kubernetes' CEL libraries: `net.IP` and `net.CIDR` (parsed as Go's
//! `net/netip` parses, with apiserver's extra refusals: no zones, no IPv4-mapped IPv6) and
//! `kubernetes.URL` (Go's `net/url`: `url.ParseRequestURI` to accept, `url.Parse` to split). The
//! error texts are Go's, since users see them in CRD rule failures.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Go's `strconv.Quote`: a double-quoted string with Go's escapes.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------- IP addresses (net/netip) ----------

fn addr_error(input: &str, msg: &str, at: Option<&str>) -> String {
    match at {
        Some(a) if !a.is_empty() => format!("ParseAddr({}): {msg} (at {})", go_quote(input), go_quote(a)),
        _ => format!("ParseAddr({}): {msg}", go_quote(input)),
    }
}

/// A parsed address and whether it carried a zone (`fe80::1%eth0`).
struct Parsed {
    addr: IpAddr,
    zone: bool,
}

/// `netip.ParseAddr`.
fn parse_addr(s: &str) -> Result<Parsed, String> {
    for b in s.bytes() {
        match b {
            b'.' => return parse_v4(s, s).map(|a| Parsed { addr: IpAddr::V4(a), zone: false }),
            b':' => return parse_v6(s),
            b'%' => return Err(addr_error(s, "missing IPv6 address", None)),
            _ => {}
        }
    }
    Err(addr_error(s, "unable to parse IP", None))
}

/// `parseIPv4`; `input` is what error messages name.
fn parse_v4(s: &str, input: &str) -> Result<Ipv4Addr, String> {
    let b = s.as_bytes();
    let mut fields = [0u8; 4];
    let (mut val, mut pos, mut digits) = (0u32, 0usize, 0usize);
    for i in 0..b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            if digits == 1 && val == 0 {
                return Err(addr_error(input, "IPv4 field has octet with leading zero", None));
            }
            val = val * 10 + u32::from(c - b'0');
            digits += 1;
            if val > 255 {
                return Err(addr_error(input, "IPv4 field has value >255", None));
            }
        } else if c == b'.' {
            if i == 0 || i == b.len() - 1 || b[i - 1] == b'.' {
                return Err(addr_error(input, "IPv4 field must have at least one digit", s.get(i..)));
            }
            if pos == 3 {
                return Err(addr_error(input, "IPv4 address too long", None));
            }
            fields[pos] = val as u8;
            pos += 1;
            val = 0;
            digits = 0;
        } else {
            return Err(addr_error(input, "unexpected character", s.get(i..)));
        }
    }
    if pos < 3 {
        return Err(addr_error(input, "IPv4 address too short", None));
    }
    fields[3] = val as u8;
    Ok(Ipv4Addr::from(fields))
}

/// `parseIPv6`.
fn parse_v6(input: &str) -> Result<Parsed, String> {
    let (mut s, zone) = match input.find('%') {
        Some(i) => {
            if i + 1 == input.len() {
                return Err(addr_error(input, "zone must be a non-empty string", None));
            }
            (&input[..i], true)
        }
        None => (input, false),
    };
    let mut ip = [0u8; 16];
    let mut ellipsis: Option<usize> = None;
    if s.starts_with("::") {
        ellipsis = Some(0);
        s = &s[2..];
        if s.is_empty() {
            return Ok(Parsed { addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED), zone });
        }
    }
    let mut i = 0usize;
    while i < 16 {
        let b = s.as_bytes();
        let mut off = 0usize;
        let mut acc: u32 = 0;
        while off < b.len() {
            let Some(d) = (b[off] as char).to_digit(16) else { break };
            acc = (acc << 4) + d;
            if acc > 0xffff {
                return Err(addr_error(input, "IPv6 field has value >=2^16", Some(s)));
            }
            off += 1;
        }
        if off == 0 {
            return Err(addr_error(input, "each colon-separated field must have at least one digit", Some(s)));
        }
        if off < b.len() && b[off] == b'.' {
            if ellipsis.is_none() && i != 12 {
                return Err(addr_error(
                    input,
                    "embedded IPv4 address must replace the final 2 fields of the address",
                    Some(s),
                ));
            }
            if i + 4 > 16 {
                return Err(addr_error(
                    input,
                    "too many hex fields to fit an embedded IPv4 at the end of the address",
                    Some(s),
                ));
            }
            let v4 = parse_v4(s, s).map_err(|e| addr_error(input, &e, Some(s)))?;
            ip[i..i + 4].copy_from_slice(&v4.octets());
            s = "";
            i += 4;
            break;
        }
        ip[i] = (acc >> 8) as u8;
        ip[i + 1] = acc as u8;
        i += 2;
        s = &s[off..];
        if s.is_empty() {
            break;
        }
        if !s.starts_with(':') {
            return Err(addr_error(input, "unexpected character, want colon", Some(s)));
        } else if s.len() == 1 {
            return Err(addr_error(input, "colon must be followed by more characters", Some(s)));
        }
        s = &s[1..];
        if s.starts_with(':') {
            if ellipsis.is_some() {
                return Err(addr_error(input, "multiple :: in address", Some(s)));
            }
            ellipsis = Some(i);
            s = &s[1..];
            if s.is_empty() {
                break;
            }
        }
    }
    if !s.is_empty() {
        return Err(addr_error(input, "trailing garbage after address", Some(s)));
    }
    if i < 16 {
        let Some(e) = ellipsis else { return Err(addr_error(input, "address string too short", None)) };
        let n = 16 - i;
        for j in (e..i).rev() {
            ip[j + n] = ip[j];
        }
        for b in ip.iter_mut().skip(e).take(n) {
            *b = 0;
        }
    } else if ellipsis.is_some() {
        return Err(addr_error(input, "the :: must expand to at least one field of zeros", None));
    }
    Ok(Parsed { addr: IpAddr::V6(Ipv6Addr::from(ip)), zone })
}

fn is_4in6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// `ip(<string>)`: an IPv4 or IPv6 address, without zone, not IPv4-mapped.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let p = parse_addr(s)
        .map_err(|e| format!("IP Address {} parse error during conversion from string: {e}", go_quote(s)))?;
    if p.zone {
        return Err(format!("IP address {} with zone value is not allowed", go_quote(s)));
    }
    if is_4in6(&p.addr) {
        return Err(format!("IPv4-mapped IPv6 address {} is not allowed", go_quote(s)));
    }
    Ok(p.addr)
}

/// The canonical text (Go's `Addr.String`, RFC 5952 for IPv6 — the same as Rust's `Display`).
pub fn ip_string(a: &IpAddr) -> String {
    a.to_string()
}

pub fn is_loopback(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.octets()[0] == 127,
        IpAddr::V6(v) => *v == Ipv6Addr::LOCALHOST,
    }
}

fn is_multicast(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.octets()[0] & 0xf0 == 0xe0,
        IpAddr::V6(v) => v.octets()[0] == 0xff,
    }
}

pub fn is_link_local_unicast(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.octets()[0] == 169 && v.octets()[1] == 254,
        IpAddr::V6(v) => v.segments()[0] & 0xffc0 == 0xfe80,
    }
}

pub fn is_link_local_multicast(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v) => v.segments()[0] & 0xff0f == 0xff02,
    }
}

pub fn is_global_unicast(a: &IpAddr) -> bool {
    if let IpAddr::V4(v) = a {
        if v.is_unspecified() || v.is_broadcast() {
            return false;
        }
    }
    !a.is_unspecified() && !is_loopback(a) && !is_multicast(a) && !is_link_local_unicast(a)
}

// ---------- CIDR prefixes ----------

/// `netip.ParsePrefix`, in Go's words.
fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let bad = |m: &str| format!("netip.ParsePrefix({}): {m}", go_quote(s));
    let Some(i) = s.rfind('/') else { return Err(bad("no '/'")) };
    let p = parse_addr(&s[..i]).map_err(|e| bad(&e))?;
    if p.zone {
        return Err(bad("IPv6 zones cannot be present in a prefix"));
    }
    let bits = &s[i + 1..];
    let bad_bits = || bad(&format!("bad bits after slash: {}", go_quote(bits)));
    if bits.len() > 1 && !matches!(bits.as_bytes()[0], b'1'..=b'9') {
        return Err(bad_bits());
    }
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_bits());
    }
    let n: u32 = bits.parse().map_err(|_| bad_bits())?;
    let max = if p.addr.is_ipv4() { 32 } else { 128 };
    if n > max {
        return Err(bad("prefix length out of range"));
    }
    Ok((p.addr, n as u8))
}

/// `cidr(<string>)`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    // Upstream wraps the parse error twice, so the prefix text appears twice.
    let (addr, bits) = parse_prefix(s).map_err(|e| {
        format!("network address parse error during conversion from string: network address parse error during conversion from string: {e}")
    })?;
    if is_4in6(&addr) {
        return Err(format!(
            "network address parse error during conversion from string: IPv4-mapped IPv6 address {} is not allowed",
            go_quote(s)
        ));
    }
    Ok((addr, bits))
}

/// Whether `cidr(...)` would succeed.
pub fn is_cidr(s: &str) -> bool {
    matches!(parse_prefix(s), Ok((a, _)) if !is_4in6(&a))
}

fn to_u128(a: &IpAddr) -> (u128, u32) {
    match a {
        IpAddr::V4(v) => (u128::from(u32::from(*v)), 32),
        IpAddr::V6(v) => (u128::from(*v), 128),
    }
}

fn from_u128(x: u128, ipv4: bool) -> IpAddr {
    if ipv4 {
        IpAddr::V4(Ipv4Addr::from(x as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(x))
    }
}

/// The address with the bits after the prefix cleared (`Prefix.Masked`).
pub fn masked(a: &IpAddr, bits: u8) -> IpAddr {
    let (x, width) = to_u128(a);
    let host = width - u32::from(bits);
    let mask = if host >= 128 { 0 } else { (!0u128) << host };
    let mask = if width == 32 { mask & 0xffff_ffff } else { mask };
    from_u128(x & mask, a.is_ipv4())
}

/// `Prefix.Contains`: same family, and the first `bits` bits agree.
pub fn cidr_contains_ip(net: &IpAddr, bits: u8, ip: &IpAddr) -> bool {
    net.is_ipv4() == ip.is_ipv4() && masked(net, bits) == masked(ip, bits)
}

/// apiserver's containsCIDR: the other prefix is at least as long and inside this one.
pub fn cidr_contains_cidr(net: &IpAddr, bits: u8, other: &IpAddr, other_bits: u8) -> bool {
    net.is_ipv4() == other.is_ipv4() && bits <= other_bits && masked(net, bits) == masked(other, bits)
}

pub fn cidr_string(a: &IpAddr, bits: u8) -> String {
    format!("{}/{bits}", ip_string(a))
}

// ---------- URLs (net/url) ----------

/// A URL split as Go's `url.Parse` splits it.
#[derive(Debug, Clone, PartialEq)]
pub struct Url {
    /// The text it was parsed from (equality compares it).
    pub text: String,
    pub scheme: String,
    /// The host (and port), unescaped.
    pub host: String,
    /// The unescaped path and the path as written.
    pub path: String,
    pub raw_path: String,
    pub raw_query: String,
}

fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Path,
    Host,
    UserPassword,
    QueryComponent,
    Fragment,
}

/// `shouldEscape` of net/url.
fn should_escape(c: u8, mode: Mode) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    let host_sub_delim = matches!(
        c,
        b'!' | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'['
            | b']'
            | b'<'
            | b'>'
            | b'"'
    );
    if mode == Mode::Host && host_sub_delim {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => match mode {
            Mode::Path => c == b'?',
            Mode::UserPassword => matches!(c, b'@' | b'/' | b'?' | b':'),
            Mode::QueryComponent => true,
            Mode::Fragment => false,
            Mode::Host => true,
        },
        _ => {
            if mode == Mode::Fragment && matches!(c, b'!' | b'(' | b')' | b'*') {
                return false;
            }
            true
        }
    }
}

/// `unescape` of net/url.
fn unescape(s: &str, mode: Mode) -> Result<String, String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |x: u8| (x as char).is_ascii_hexdigit();
                if i + 2 >= b.len() || !hex(b[i + 1]) || !hex(b[i + 2]) {
                    let end = (i + 3).min(b.len());
                    return Err(format!("invalid URL escape {}", go_quote(&String::from_utf8_lossy(&b[i..end]))));
                }
                if mode == Mode::Host && !s[i..].starts_with("%25") {
                    let v = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(0);
                    if v < 0x80 && v != b' ' {
                        return Err(format!("invalid URL escape {}", go_quote(&s[i..i + 3])));
                    }
                }
                i += 3;
            }
            c => {
                if mode == Mode::Host && c < 0x80 && should_escape(c, mode) {
                    return Err(format!("invalid character {} in host name", go_quote(&(c as char).to_string())));
                }
                i += 1;
            }
        }
    }
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(0));
                i += 3;
            }
            b'+' if mode == Mode::QueryComponent => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `escape(s, encodePath)`.
fn escape_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if should_escape(c, Mode::Path) {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(c as char);
        }
    }
    out
}

/// `validEncoded(s, encodePath)`.
fn valid_encoded_path(s: &str) -> bool {
    s.bytes().all(|c| {
        matches!(c, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@')
            || matches!(c, b'[' | b']' | b'%')
            || !should_escape(c, Mode::Path)
    })
}

fn valid_optional_port(p: &str) -> bool {
    p.is_empty() || (p.starts_with(':') && p[1..].bytes().all(|b| b.is_ascii_digit()))
}

fn parse_host(host: &str) -> Result<String, String> {
    if host.starts_with('[') {
        let Some(i) = host.rfind(']') else { return Err("missing ']' in host".into()) };
        let colon_port = &host[i + 1..];
        if !valid_optional_port(colon_port) {
            return Err(format!("invalid port {} after host", go_quote(colon_port)));
        }
        if let Some(z) = host[..i].find("%25") {
            let a = unescape(&host[..z], Mode::Host)?;
            let b = unescape(&host[z..i], Mode::Fragment)?;
            let c = unescape(&host[i..], Mode::Host)?;
            return Ok(format!("{a}{b}{c}"));
        }
    } else if let Some(i) = host.rfind(':') {
        let colon_port = &host[i..];
        if !valid_optional_port(colon_port) {
            return Err(format!("invalid port {} after host", go_quote(colon_port)));
        }
    }
    unescape(host, Mode::Host)
}

fn valid_userinfo(s: &str) -> bool {
    s.bytes().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b':'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b'@'
            )
    })
}

fn get_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                if i == 0 {
                    return Ok(("", raw));
                }
            }
            b':' => {
                if i == 0 {
                    return Err("missing protocol scheme".into());
                }
                return Ok((&raw[..i], &raw[i + 1..]));
            }
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

/// net/url's `parse(rawURL, viaRequest)`.
fn parse_url_inner(raw: &str, via_request: bool) -> Result<Url, String> {
    if raw.bytes().any(is_ctl) {
        return Err("net/url: invalid control character in URL".into());
    }
    if raw.is_empty() && via_request {
        return Err("empty url".into());
    }
    let mut u = Url {
        text: raw.to_string(),
        scheme: String::new(),
        host: String::new(),
        path: String::new(),
        raw_path: String::new(),
        raw_query: String::new(),
    };
    if raw == "*" {
        u.path = "*".into();
        u.raw_path = "*".into();
        return Ok(u);
    }
    let (scheme, rest) = get_scheme(raw)?;
    u.scheme = scheme.to_ascii_lowercase();
    let mut rest = rest.to_string();
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        rest.pop();
    } else if let Some((r, q)) = rest.split_once('?') {
        u.raw_query = q.to_string();
        rest = r.to_string();
    }
    if !rest.starts_with('/') {
        if !u.scheme.is_empty() {
            // An opaque URL (`mailto:x`): no host, no path.
            return Ok(u);
        }
        if via_request {
            return Err("invalid URI for request".into());
        }
        let segment = rest.split('/').next().unwrap_or("");
        if segment.contains(':') {
            return Err("first path segment in URL cannot contain colon".into());
        }
    }
    if (!u.scheme.is_empty() || (!via_request && !rest.starts_with("///"))) && rest.starts_with("//") {
        let after = &rest[2..];
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        let (userinfo, hostpart) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        u.host = parse_host(hostpart)?;
        if let Some(ui) = userinfo {
            if !valid_userinfo(ui) {
                return Err("net/url: invalid userinfo".into());
            }
            match ui.split_once(':') {
                Some((user, pass)) => {
                    unescape(user, Mode::UserPassword)?;
                    unescape(pass, Mode::UserPassword)?;
                }
                None => {
                    unescape(ui, Mode::UserPassword)?;
                }
            }
        }
        rest = path.to_string();
    }
    u.path = unescape(&rest, Mode::Path)?;
    u.raw_path = rest;
    Ok(u)
}

fn url_error(raw: &str, e: &str) -> String {
    format!("parse {}: {e}", go_quote(raw))
}

/// `url(<string>)`: accepted as `url.ParseRequestURI` accepts (an absolute URI or an absolute
/// path), then split as `url.Parse` splits (the fragment cut off).
pub fn parse_url(s: &str) -> Result<Url, String> {
    let conv = |e: String| format!("URL parse error during conversion from string: {e}");
    parse_url_inner(s, true).map_err(|e| conv(url_error(s, &e)))?;
    let (before, frag) = match s.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (s, None),
    };
    let mut u = parse_url_inner(before, false).map_err(|e| conv(url_error(before, &e)))?;
    if let Some(f) = frag {
        unescape(f, Mode::Fragment).map_err(|e| conv(url_error(s, &e)))?;
    }
    u.text = s.to_string();
    Ok(u)
}

pub fn is_url(s: &str) -> bool {
    parse_url_inner(s, true).is_ok()
}

/// The first validation error `url.ParseRequestURI` gives (for `format.uri()`).
pub fn request_uri_error(s: &str) -> Option<String> {
    parse_url_inner(s, true).err().map(|e| url_error(s, &e))
}

impl Url {
    fn split_host_port(&self) -> (&str, &str) {
        let mut host = self.host.as_str();
        let mut port = "";
        if let Some(c) = host.rfind(':') {
            if valid_optional_port(&host[c..]) {
                port = &host[c + 1..];
                host = &host[..c];
            }
        }
        if host.starts_with('[') && host.ends_with(']') && host.len() >= 2 {
            host = &host[1..host.len() - 1];
        }
        (host, port)
    }
    pub fn hostname(&self) -> &str {
        self.split_host_port().0
    }
    pub fn port(&self) -> &str {
        self.split_host_port().1
    }
    /// `URL.EscapedPath`.
    pub fn escaped_path(&self) -> String {
        if self.path == "*" {
            return "*".into();
        }
        if !self.raw_path.is_empty() && valid_encoded_path(&self.raw_path) {
            return self.raw_path.clone();
        }
        escape_path(&self.path)
    }
    /// `URL.Query`: keys to values in order; malformed pairs are skipped as Go skips them.
    pub fn query(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for pair in self.raw_query.split('&') {
            if pair.is_empty() || pair.contains(';') {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Ok(k), Ok(v)) = (unescape(k, Mode::QueryComponent), unescape(v, Mode::QueryComponent)) else {
                continue;
            };
            match out.iter_mut().find(|(x, _)| *x == k) {
                Some((_, vs)) => vs.push(v),
                None => out.push((k, vec![v])),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_fail_as_go_does() {
        assert_eq!(parse_ip("192.168.0.1").unwrap().to_string(), "192.168.0.1");
        assert_eq!(parse_ip("2001:DB8::0:0:68").unwrap().to_string(), "2001:db8::68");
        assert_eq!(parse_ip("::").unwrap().to_string(), "::");
        assert_eq!(
            parse_ip("192.168.0.1.0").unwrap_err(),
            "IP Address \"192.168.0.1.0\" parse error during conversion from string: ParseAddr(\"192.168.0.1.0\"): IPv4 address too long"
        );
        assert_eq!(
            parse_ip("2001:db8:::68").unwrap_err(),
            "IP Address \"2001:db8:::68\" parse error during conversion from string: ParseAddr(\"2001:db8:::68\"): each colon-separated field must have at least one digit (at \":68\")"
        );
        assert!(parse_ip("010.0.0.1").unwrap_err().ends_with("IPv4 field has octet with leading zero"));
        assert_eq!(parse_ip("fe80::1%eth0").unwrap_err(), "IP address \"fe80::1%eth0\" with zone value is not allowed");
        assert_eq!(
            parse_ip("::ffff:1.2.3.4").unwrap_err(),
            "IPv4-mapped IPv6 address \"::ffff:1.2.3.4\" is not allowed"
        );
        assert!(parse_ip("::1.2.3.4").is_ok());
        for bad in ["", "1", "1.2.3", "1.2.3.256", "1:2:3:4:5:6:7:8:9", "1::2::3", "12345::", ":", "1.2.3.4:80", "x"] {
            assert!(parse_ip(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_parse_contain_and_mask() {
        let (a, b) = parse_cidr("192.168.0.1/24").unwrap();
        assert_eq!(cidr_string(&masked(&a, b), b), "192.168.0.0/24");
        assert_eq!(
            parse_cidr("192.168.0.0/").unwrap_err(),
            "network address parse error during conversion from string: network address parse error during conversion from string: netip.ParsePrefix(\"192.168.0.0/\"): bad bits after slash: \"\""
        );
        assert!(parse_cidr("10.0.0.0/33").unwrap_err().ends_with("prefix length out of range"));
        assert!(parse_cidr("10.0.0.0/08").is_err() && parse_cidr("10.0.0.0/+8").is_err());
        let (n, nb) = parse_cidr("2001:db8::/32").unwrap();
        assert!(cidr_contains_ip(&n, nb, &parse_ip("2001:db8::1").unwrap()));
        assert!(!cidr_contains_ip(&n, nb, &parse_ip("2001:dc8::1").unwrap()));
        assert!(!cidr_contains_ip(&n, nb, &parse_ip("1.2.3.4").unwrap()));
        let (o, ob) = parse_cidr("2001:db8::/33").unwrap();
        assert!(cidr_contains_cidr(&n, nb, &o, ob) && !cidr_contains_cidr(&o, ob, &n, nb));
        let (z, zb) = parse_cidr("0.0.0.0/0").unwrap();
        assert!(cidr_contains_ip(&z, zb, &parse_ip("8.8.8.8").unwrap()));
    }

    #[test]
    fn urls_split_as_go_does() {
        let u = parse_url("https://user:pass@Example.com:80/path%20x/?k1=a&k2=b&k2=c#frag").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.hostname(), u.port()),
            ("https", "Example.com:80", "Example.com", "80")
        );
        assert_eq!(u.escaped_path(), "/path%20x/");
        assert_eq!(u.query(), vec![("k1".into(), vec!["a".into()]), ("k2".into(), vec!["b".into(), "c".into()])]);
        let u = parse_url("https://example.com/path with spaces/?key with spaces=value with spaces").unwrap();
        assert_eq!(u.escaped_path(), "/path%20with%20spaces/");
        assert_eq!(u.query(), vec![("key with spaces".into(), vec!["value with spaces".into()])]);
        let u = parse_url("https://[::1]:80/").unwrap();
        assert_eq!((u.host.as_str(), u.hostname(), u.port()), ("[::1]:80", "::1", "80"));
        let u = parse_url("/absolute-path").unwrap();
        assert_eq!((u.scheme.as_str(), u.host.as_str(), u.escaped_path()), ("", "", "/absolute-path".to_string()));
        assert_eq!(parse_url("https://example.com").unwrap().escaped_path(), "");
        assert_eq!(
            parse_url("https://a:b:c/").unwrap_err(),
            "URL parse error during conversion from string: parse \"https://a:b:c/\": invalid port \":c\" after host"
        );
        assert_eq!(
            parse_url("../relative-path").unwrap_err(),
            "URL parse error during conversion from string: parse \"../relative-path\": invalid URI for request"
        );
        assert!(!is_url("") && !is_url("a b") && is_url("mailto:x@y") && is_url("http://h/%41"));
        assert!(!is_url("http://h/%zz") && !is_url("http://h\x01/"));
    }
}
