//! CEL's functions as Kubernetes offers them to CRD rules: the standard library (`size`,
//! `contains`, `startsWith`, `endsWith`, `matches`, conversions, duration and timestamp
//! accessors), cel-go's strings extension (`lowerAscii`, `upperAscii`, `split`, `join`,
//! `replace`, `trim`, `indexOf`, `substring`, `charAt`, …), cel-go's sets extension, optionals,
//! and Kubernetes' own libraries: lists (`isSorted`, `sum`, `min`, `max`, `indexOf`,
//! `lastIndexOf`), regex (`find`, `findAll`) and quantity (k8s.io/apiserver/pkg/cel/library).
//! Every function charges the meter for the work it does on strings and lists.

use std::cmp::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::eval::{duration, err, no_overload, size_of, EvalError, Meter, R};
use super::net;
use super::semver::Semver;
use super::value::{Key, ListVal, MapVal, Val};

/// Calls function `name` (with `target` for the receiver-style form `x.f()`).
pub fn call(name: &str, target: Option<Val>, args: Vec<Val>, meter: &mut Meter) -> R<Val> {
    // Work proportional to the inputs' sizes, charged before doing it.
    let work: u64 = target.iter().chain(args.iter()).map(size_of).sum();
    meter.charge(work / 10)?;
    match target {
        Some(t) => member(name, t, args, meter),
        None => global(name, args, meter),
    }
}

fn global(name: &str, mut args: Vec<Val>, meter: &mut Meter) -> R<Val> {
    if name == "size" && args.len() == 1 {
        return size(&args[0]);
    }
    if let Some(ns) = name.strip_prefix("optional.") {
        return match (ns, args.as_slice()) {
            ("of", [v]) => Ok(Val::Optional(Some(Arc::new(v.clone())))),
            ("none", []) => Ok(Val::Optional(None)),
            ("ofNonZeroValue", [v]) => Ok(Val::Optional((!is_zero(v)).then(|| Arc::new(v.clone())))),
            _ => no_overload(),
        };
    }
    if let Some(f) = name.strip_prefix("sets.") {
        let (Some(Val::List(a)), Some(Val::List(b))) = (args.first(), args.get(1)) else { return no_overload() };
        meter.charge((a.items.len() as u64).saturating_mul(b.items.len() as u64))?;
        let has = |l: &ListVal, x: &Val| l.items.iter().any(|y| y.equals(x));
        return match f {
            "contains" => Ok(Val::Bool(b.items.iter().all(|x| has(a, x)))),
            "equivalent" => Ok(Val::Bool(b.items.iter().all(|x| has(a, x)) && a.items.iter().all(|x| has(b, x)))),
            "intersects" => Ok(Val::Bool(b.items.iter().any(|x| has(a, x)))),
            _ => no_overload(),
        };
    }
    if let Some(f) = name.strip_prefix("format.") {
        return super::formats::global(f, &args);
    }
    if matches!(name, "semver" | "isSemver") {
        let (text, normalize) = match args.as_slice() {
            [Val::Str(s)] => (s.clone(), false),
            [Val::Str(s), Val::Bool(b)] => (s.clone(), *b),
            _ => return no_overload(),
        };
        let r = if normalize { Semver::parse_normalized(&text) } else { Semver::parse(&text) };
        return match (name, r) {
            ("semver", Ok(v)) => Ok(Val::Semver(Arc::new(v))),
            ("semver", Err(e)) => err(e),
            (_, r) => Ok(Val::Bool(r.is_ok())),
        };
    }
    if args.len() != 1 {
        return no_overload();
    }
    let v = args.remove(0);
    if let Val::Str(s) = &v {
        match name {
            "ip" => return net::parse_ip(s).map(Val::Ip).map_err(EvalError::Msg),
            "isIP" => return Ok(Val::Bool(net::parse_ip(s).is_ok())),
            "ip.isCanonical" => {
                let a = net::parse_ip(s).map_err(EvalError::Msg)?;
                return Ok(Val::Bool(net::ip_string(&a) == **s));
            }
            "cidr" => return net::parse_cidr(s).map(|(a, b)| Val::Cidr(a, b)).map_err(EvalError::Msg),
            "isCIDR" => return Ok(Val::Bool(net::is_cidr(s))),
            "url" => return net::parse_url(s).map(|u| Val::Url(Arc::new(u))).map_err(EvalError::Msg),
            "isURL" => return Ok(Val::Bool(net::is_url(s))),
            "strings.quote" => return Ok(Val::str(&net::go_quote(s))),
            _ => {}
        }
    }
    match name {
        "int" => to_int(v),
        "uint" => to_uint(v),
        "double" => to_double(v),
        "string" => to_string(&v).map(|s| Val::Str(Arc::from(s.as_str()))),
        "bytes" => match v {
            Val::Bytes(b) => Ok(Val::Bytes(b)),
            Val::Str(s) => Ok(Val::Bytes(s.as_bytes().into())),
            _ => no_overload(),
        },
        "bool" => match v {
            Val::Bool(b) => Ok(Val::Bool(b)),
            Val::Str(s) => match &*s {
                "true" | "True" | "TRUE" | "t" | "1" => Ok(Val::Bool(true)),
                "false" | "False" | "FALSE" | "f" | "0" => Ok(Val::Bool(false)),
                _ => err("type conversion error from 'string' to 'bool'"),
            },
            _ => no_overload(),
        },
        "dyn" => Ok(v),
        "type" => Ok(Val::Type(Arc::from(v.type_name()))),
        "duration" => match v {
            Val::Duration(d) => Ok(Val::Duration(d)),
            Val::Str(s) => duration(parse_duration(&s).map_err(EvalError::Msg)?),
            _ => no_overload(),
        },
        "timestamp" => match v {
            Val::Timestamp(t) => Ok(Val::Timestamp(t)),
            Val::Str(s) => match DateTime::parse_from_rfc3339(&s) {
                Ok(t) => check_timestamp(t.with_timezone(&Utc)),
                Err(_) => err(format!(
                    "parsing time \"{s}\" as \"2006-01-02T15:04:05Z07:00\": cannot parse \"{s}\" as \"2006\""
                )),
            },
            Val::Int(i) => match DateTime::from_timestamp(i, 0) {
                Some(t) => check_timestamp(t),
                None => err("timestamp out of range"),
            },
            _ => no_overload(),
        },
        "quantity" => match v {
            Val::Str(s) => match Quantity::parse(&s) {
                Some(q) => Ok(Val::Quantity(Arc::new(q))),
                None => {
                    err("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
                }
            },
            _ => no_overload(),
        },
        "isQuantity" => match v {
            Val::Str(s) => Ok(Val::Bool(Quantity::parse(&s).is_some())),
            _ => no_overload(),
        },
        _ => err(format!("no such overload: {name}")),
    }
}

fn member(name: &str, t: Val, args: Vec<Val>, meter: &mut Meter) -> R<Val> {
    match (&t, name, args.as_slice()) {
        (_, "size", []) => size(&t),
        (Val::Str(s), "contains", [Val::Str(x)]) => Ok(Val::Bool(s.contains(&**x))),
        (Val::Str(s), "startsWith", [Val::Str(x)]) => Ok(Val::Bool(s.starts_with(&**x))),
        (Val::Str(s), "endsWith", [Val::Str(x)]) => Ok(Val::Bool(s.ends_with(&**x))),
        (Val::Str(s), "matches", [Val::Str(re)]) => {
            let re = compile_regex(re)?;
            Ok(Val::Bool(re.is_match(s)))
        }
        (Val::Str(s), "find", [Val::Str(re)]) => {
            let re = compile_regex(re)?;
            Ok(Val::str(re.find(s).map(|m| m.as_str()).unwrap_or("")))
        }
        (Val::Str(s), "findAll", [Val::Str(re), rest @ ..]) => {
            let re = compile_regex(re)?;
            let limit = match rest {
                [] => -1,
                [Val::Int(n)] => *n,
                _ => return no_overload(),
            };
            let mut out = Vec::new();
            for m in re.find_iter(s) {
                if limit >= 0 && out.len() as i64 >= limit {
                    break;
                }
                out.push(Val::str(m.as_str()));
            }
            Ok(Val::list(out))
        }
        (Val::Str(s), "lowerAscii", []) => Ok(Val::str(&s.to_ascii_lowercase())),
        (Val::Str(s), "upperAscii", []) => Ok(Val::str(&s.to_ascii_uppercase())),
        (Val::Str(s), "trim", []) => Ok(Val::str(s.trim())),
        (Val::Str(s), "reverse", []) => Ok(Val::str(&s.chars().rev().collect::<String>())),
        (Val::Str(s), "charAt", [Val::Int(i)]) => {
            let n = s.chars().count() as i64;
            if *i < 0 || *i > n {
                return err(format!("index out of range: {i}"));
            }
            Ok(Val::str(&s.chars().nth(*i as usize).map(String::from).unwrap_or_default()))
        }
        (Val::Str(s), "indexOf" | "lastIndexOf", [Val::Str(x), rest @ ..]) => {
            let chars: Vec<char> = s.chars().collect();
            let needle: Vec<char> = x.chars().collect();
            let from = match rest {
                [] => None,
                [Val::Int(i)] => Some(*i),
                _ => return no_overload(),
            };
            if let Some(f) = from {
                if f < 0 || f as usize > chars.len() {
                    return err(format!("index out of range: {f}"));
                }
            }
            let fits = |i: usize| i + needle.len() <= chars.len() && chars[i..i + needle.len()] == needle[..];
            let found = if name == "indexOf" {
                let start = from.unwrap_or(0) as usize;
                (start..=chars.len()).find(|&i| fits(i))
            } else {
                let end = from.map(|f| f as usize).unwrap_or(chars.len());
                (0..=end.min(chars.len())).rev().find(|&i| fits(i))
            };
            Ok(Val::Int(found.map(|i| i as i64).unwrap_or(-1)))
        }
        (Val::Str(s), "substring", [Val::Int(a), rest @ ..]) => {
            let chars: Vec<char> = s.chars().collect();
            let b = match rest {
                [] => chars.len() as i64,
                [Val::Int(b)] => *b,
                _ => return no_overload(),
            };
            if *a < 0 || *a as usize > chars.len() {
                return err(format!("index out of range: {a}"));
            }
            if b < 0 || b as usize > chars.len() {
                return err(format!("index out of range: {b}"));
            }
            if *a > b {
                return err(format!("invalid substring range. start: {a}, end: {b}"));
            }
            Ok(Val::str(&chars[*a as usize..b as usize].iter().collect::<String>()))
        }
        (Val::Str(s), "replace", [Val::Str(from), Val::Str(to), rest @ ..]) => {
            let n = match rest {
                [] => -1,
                [Val::Int(n)] => *n,
                _ => return no_overload(),
            };
            meter.charge(s.len() as u64 / 10)?;
            Ok(Val::str(&if n < 0 { s.replace(&**from, to) } else { s.replacen(&**from, to, n as usize) }))
        }
        (Val::Str(s), "split", [Val::Str(sep), rest @ ..]) => {
            let n = match rest {
                [] => -1,
                [Val::Int(n)] => *n,
                _ => return no_overload(),
            };
            let parts: Vec<Val> = match n {
                0 => Vec::new(),
                n if n < 0 => split(s, sep, usize::MAX),
                n => split(s, sep, n as usize),
            };
            meter.charge(parts.len() as u64)?;
            Ok(Val::list(parts))
        }
        (Val::List(l), "join", rest) => {
            let sep = match rest {
                [] => "",
                [Val::Str(s)] => s,
                _ => return no_overload(),
            };
            let mut parts = Vec::with_capacity(l.items.len());
            for x in &l.items {
                match x {
                    Val::Str(s) => parts.push(s.to_string()),
                    _ => return no_overload(),
                }
            }
            Ok(Val::str(&parts.join(sep)))
        }
        (Val::List(l), "isSorted", []) => {
            meter.charge(l.items.len() as u64)?;
            for w in l.items.windows(2) {
                match w[0].compare(&w[1]) {
                    Some(Ordering::Greater) => return Ok(Val::Bool(false)),
                    Some(_) => {}
                    None => return no_overload(),
                }
            }
            Ok(Val::Bool(true))
        }
        (Val::List(l), "sum", []) => {
            meter.charge(l.items.len() as u64)?;
            let mut acc = match l.items.first() {
                None => return Ok(Val::Int(0)),
                Some(Val::Int(_)) => Val::Int(0),
                Some(Val::Uint(_)) => Val::Uint(0),
                Some(Val::Double(_)) => Val::Double(0.0),
                Some(Val::Duration(_)) => Val::Duration(0),
                Some(_) => return no_overload(),
            };
            for x in &l.items {
                acc = super::eval::binary(super::parser::BinOp::Add, acc, x.clone(), meter)?;
            }
            Ok(acc)
        }
        (Val::List(l), "min" | "max", []) => {
            meter.charge(l.items.len() as u64)?;
            let Some(first) = l.items.first() else {
                return err(format!("{name} called on empty list"));
            };
            let mut best = first.clone();
            for x in &l.items[1..] {
                let o = x.compare(&best).ok_or(EvalError::Msg("no such overload".into()))?;
                if (name == "min" && o == Ordering::Less) || (name == "max" && o == Ordering::Greater) {
                    best = x.clone();
                }
            }
            Ok(best)
        }
        (Val::List(l), "indexOf" | "lastIndexOf", [x]) => {
            meter.charge(l.items.len() as u64)?;
            let found = if name == "indexOf" {
                l.items.iter().position(|y| y.equals(x))
            } else {
                l.items.iter().rposition(|y| y.equals(x))
            };
            Ok(Val::Int(found.map(|i| i as i64).unwrap_or(-1)))
        }
        (Val::Optional(o), "hasValue", []) => Ok(Val::Bool(o.is_some())),
        (Val::Optional(o), "value", []) => match o {
            Some(v) => Ok((**v).clone()),
            None => err("optional.none() dereference"),
        },
        (Val::Optional(o), "orValue", [d]) => Ok(o.as_ref().map(|v| (**v).clone()).unwrap_or_else(|| d.clone())),
        (Val::Optional(o), "or", [Val::Optional(other)]) => Ok(Val::Optional(o.clone().or_else(|| other.clone()))),
        (Val::Duration(d), f, []) => {
            let secs = d / 1_000_000_000;
            Ok(Val::Int(match f {
                "getHours" => secs / 3600,
                "getMinutes" => secs / 60,
                "getSeconds" => secs,
                "getMilliseconds" => d / 1_000_000,
                _ => return no_overload(),
            } as i64))
        }
        (Val::Timestamp(ts), f, rest) => {
            let tz = match rest {
                [] => None,
                [Val::Str(z)] => Some(z.clone()),
                _ => return no_overload(),
            };
            timestamp_field(*ts, f, tz.as_deref())
        }
        (Val::Quantity(q), f, rest) => quantity_call(q, f, rest),
        (Val::Str(s), "format", [Val::List(l)]) => {
            meter.charge(l.items.len() as u64)?;
            super::formats::format(s, &l.items)
        }
        (Val::Format(n), "validate", [Val::Str(s)]) => Ok(super::formats::validate_call(n, s)),
        (Val::Ip(a), f, []) => Ok(match f {
            "family" => Val::Int(if a.is_ipv4() { 4 } else { 6 }),
            "isUnspecified" => Val::Bool(a.is_unspecified()),
            "isLoopback" => Val::Bool(net::is_loopback(a)),
            "isLinkLocalMulticast" => Val::Bool(net::is_link_local_multicast(a)),
            "isLinkLocalUnicast" => Val::Bool(net::is_link_local_unicast(a)),
            "isGlobalUnicast" => Val::Bool(net::is_global_unicast(a)),
            _ => return no_overload(),
        }),
        (Val::Cidr(n, bits), "containsIP", [x]) => {
            let ip = match x {
                Val::Ip(ip) => *ip,
                Val::Str(s) => net::parse_ip(s).map_err(EvalError::Msg)?,
                _ => return no_overload(),
            };
            Ok(Val::Bool(net::cidr_contains_ip(n, *bits, &ip)))
        }
        (Val::Cidr(n, bits), "containsCIDR", [x]) => {
            let (o, ob) = match x {
                Val::Cidr(o, ob) => (*o, *ob),
                Val::Str(s) => net::parse_cidr(s).map_err(EvalError::Msg)?,
                _ => return no_overload(),
            };
            Ok(Val::Bool(net::cidr_contains_cidr(n, *bits, &o, ob)))
        }
        (Val::Cidr(n, bits), f, []) => Ok(match f {
            "ip" => Val::Ip(*n),
            "masked" => Val::Cidr(net::masked(n, *bits), *bits),
            "prefixLength" => Val::Int(i64::from(*bits)),
            _ => return no_overload(),
        }),
        (Val::Url(u), f, []) => Ok(match f {
            "getScheme" => Val::str(&u.scheme),
            "getHost" => Val::str(&u.host),
            "getHostname" => Val::str(u.hostname()),
            "getPort" => Val::str(u.port()),
            "getEscapedPath" => Val::str(&u.escaped_path()),
            "getQuery" => {
                let mut entries = std::collections::BTreeMap::new();
                for (k, vs) in u.query() {
                    entries
                        .insert(Key::Str(Arc::from(k.as_str())), Val::list(vs.iter().map(|v| Val::str(v)).collect()));
                }
                Val::Map(Arc::new(MapVal { entries }))
            }
            _ => return no_overload(),
        }),
        (Val::Semver(v), f, []) => Ok(Val::Int(match f {
            "major" => v.major as i64,
            "minor" => v.minor as i64,
            "patch" => v.patch as i64,
            _ => return no_overload(),
        })),
        (Val::Semver(v), f, [Val::Semver(o)]) => {
            let c = v.compare(o);
            Ok(match f {
                "isLessThan" => Val::Bool(c == Ordering::Less),
                "isGreaterThan" => Val::Bool(c == Ordering::Greater),
                "compareTo" => Val::Int(c as i64),
                _ => return no_overload(),
            })
        }
        _ => no_overload(),
    }
}

fn split(s: &str, sep: &str, n: usize) -> Vec<Val> {
    if sep.is_empty() {
        // Go's strings.SplitN with an empty separator splits into characters.
        let chars: Vec<char> = s.chars().collect();
        let mut out: Vec<Val> = Vec::new();
        for (i, c) in chars.iter().enumerate() {
            if out.len() + 1 == n {
                out.push(Val::str(&chars[i..].iter().collect::<String>()));
                return out;
            }
            out.push(Val::str(&c.to_string()));
        }
        return out;
    }
    s.splitn(n, sep).map(Val::str).collect()
}

fn compile_regex(re: &str) -> R<regex::Regex> {
    // RE2 syntax, as cel-go's; the regex crate's engine is linear-time like RE2's.
    regex::RegexBuilder::new(re)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| EvalError::Msg(format!("error parsing regexp: {e}")))
}

fn size(v: &Val) -> R<Val> {
    Ok(Val::Int(match v {
        Val::Str(s) => s.chars().count() as i64,
        Val::Bytes(b) => b.len() as i64,
        Val::List(l) => l.items.len() as i64,
        Val::Map(m) => m.entries.len() as i64,
        _ => return no_overload(),
    }))
}

fn is_zero(v: &Val) -> bool {
    match v {
        Val::Null => true,
        Val::Bool(b) => !b,
        Val::Int(i) => *i == 0,
        Val::Uint(u) => *u == 0,
        Val::Double(d) => *d == 0.0,
        Val::Str(s) => s.is_empty(),
        Val::Bytes(b) => b.is_empty(),
        Val::List(l) => l.items.is_empty(),
        Val::Map(m) => m.entries.is_empty(),
        Val::Duration(d) => *d == 0,
        Val::Timestamp(t) => t.timestamp() == 0 && t.timestamp_subsec_nanos() == 0,
        _ => false,
    }
}

fn to_int(v: Val) -> R<Val> {
    let overflow = || EvalError::Msg("integer overflow".into());
    match v {
        Val::Int(i) => Ok(Val::Int(i)),
        Val::Uint(u) => i64::try_from(u).map(Val::Int).map_err(|_| overflow()),
        Val::Double(d) => {
            if d.is_nan() || d <= -9.223_372_036_854_776e18 || d >= 9.223_372_036_854_776e18 {
                return Err(overflow());
            }
            Ok(Val::Int(d as i64))
        }
        Val::Str(s) => s
            .parse::<i64>()
            .map(Val::Int)
            .map_err(|_| EvalError::Msg(format!("strconv.ParseInt: parsing {:?}: invalid syntax", &*s))),
        Val::Duration(d) => Ok(Val::Int((d / 1_000_000_000) as i64)),
        Val::Timestamp(t) => Ok(Val::Int(t.timestamp())),
        _ => no_overload(),
    }
}

fn to_uint(v: Val) -> R<Val> {
    let overflow = || EvalError::Msg("unsigned integer overflow".into());
    match v {
        Val::Uint(u) => Ok(Val::Uint(u)),
        Val::Int(i) => u64::try_from(i).map(Val::Uint).map_err(|_| overflow()),
        Val::Double(d) => {
            if d.is_nan() || !(0.0..1.844_674_407_370_955_2e19).contains(&d) {
                return Err(overflow());
            }
            Ok(Val::Uint(d as u64))
        }
        Val::Str(s) => s
            .parse::<u64>()
            .map(Val::Uint)
            .map_err(|_| EvalError::Msg(format!("strconv.ParseUint: parsing {:?}: invalid syntax", &*s))),
        _ => no_overload(),
    }
}

fn to_double(v: Val) -> R<Val> {
    match v {
        Val::Double(d) => Ok(Val::Double(d)),
        Val::Int(i) => Ok(Val::Double(i as f64)),
        Val::Uint(u) => Ok(Val::Double(u as f64)),
        Val::Str(s) => s
            .parse::<f64>()
            .map(Val::Double)
            .map_err(|_| EvalError::Msg(format!("strconv.ParseFloat: parsing {:?}: invalid syntax", &*s))),
        _ => no_overload(),
    }
}

/// `string(x)`, as cel-go converts.
pub fn to_string(v: &Val) -> R<String> {
    Ok(match v {
        Val::Str(s) => s.to_string(),
        Val::Bool(b) => b.to_string(),
        Val::Int(i) => i.to_string(),
        Val::Uint(u) => u.to_string(),
        Val::Double(d) => format_g(*d),
        Val::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => return err("invalid UTF-8 in bytes, cannot convert to string"),
        },
        Val::Duration(d) => format_duration(*d),
        Val::Timestamp(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        Val::Type(t) => t.to_string(),
        Val::Null => "null".into(),
        Val::Quantity(q) => q.text.clone(),
        Val::Ip(a) => net::ip_string(a),
        Val::Cidr(a, b) => net::cidr_string(a, *b),
        _ => return no_overload(),
    })
}

/// Go's `%g` (shortest representation; exponent form below 1e-4 and from 1e21).
pub fn format_g(d: f64) -> String {
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let e = format!("{d:e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..21).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    format!("{d}")
}

/// A duration as cel-go prints it: seconds with an `s` suffix (`90s`, `1.5s`).
fn format_duration(d: i128) -> String {
    let secs = d / 1_000_000_000;
    let frac = (d % 1_000_000_000).abs();
    if frac == 0 {
        return format!("{secs}s");
    }
    let sign = if d < 0 && secs == 0 { "-" } else { "" };
    let f = format!("{frac:09}");
    format!("{sign}{secs}.{}s", f.trim_end_matches('0'))
}

/// Go's `time.ParseDuration` (`1h30m`, `1.5s`, `-300ms`), in nanoseconds.
pub fn parse_duration(s: &str) -> Result<i128, String> {
    let bad = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_end..];
        total += n * unit;
    }
    if total > 9.3e18 {
        return Err(bad());
    }
    let t = total.round() as i128;
    Ok(if neg { -t } else { t })
}

/// Timestamps are valid from year 1 to 9999.
pub fn check_timestamp(t: DateTime<Utc>) -> R<Val> {
    if !(1..=9999).contains(&t.year()) {
        return err("timestamp out of range");
    }
    Ok(Val::Timestamp(t))
}

fn timestamp_field(t: DateTime<Utc>, f: &str, tz: Option<&str>) -> R<Val> {
    let offset = match tz {
        None | Some("UTC") | Some("Z") => chrono::FixedOffset::east_opt(0),
        Some(z) => parse_offset(z),
    };
    let Some(offset) = offset else {
        return err(format!("unknown time zone {}", tz.unwrap_or("")));
    };
    let t = t.with_timezone(&offset);
    Ok(Val::Int(match f {
        "getFullYear" => t.year() as i64,
        "getMonth" => t.month0() as i64,
        "getDate" => t.day() as i64,
        "getDayOfMonth" => t.day0() as i64,
        "getDayOfWeek" => t.weekday().num_days_from_sunday() as i64,
        "getDayOfYear" => t.ordinal0() as i64,
        "getHours" => t.hour() as i64,
        "getMinutes" => t.minute() as i64,
        "getSeconds" => t.second() as i64,
        "getMilliseconds" => (t.nanosecond() / 1_000_000) as i64,
        _ => return no_overload(),
    }))
}

/// A fixed offset such as `+05:30` or `-08:00` (IANA zone names need a zone database, which
/// skiff does not carry).
fn parse_offset(z: &str) -> Option<chrono::FixedOffset> {
    let (sign, rest) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
    chrono::FixedOffset::east_opt(sign * secs)
}

// ---------- quantity ----------

/// A resource quantity (`1.5Gi`, `100m`, `2e3`), held exactly as `mantissa × 10^exp`.
#[derive(Debug, Clone)]
pub struct Quantity {
    pub text: String,
    mantissa: i128,
    exp: i32,
}

impl Quantity {
    /// Parses Kubernetes' quantity syntax (k8s.io/apimachinery/pkg/api/resource).
    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let num_end = s
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '+' || c == '-') && i == 0)))
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        let (num, suffix) = s.split_at(num_end);
        let (neg, digits) = match num.as_bytes().first()? {
            b'-' => (true, &num[1..]),
            b'+' => (false, &num[1..]),
            _ => (false, num),
        };
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') || digits.len() > 30 {
            return None;
        }
        let mut mantissa: i128 = format!("{int_part}{frac_part}").parse().ok()?;
        let mut exp = -(frac_part.len() as i32);
        let (bin, dec): (u32, i32) = match suffix {
            "" => (0, 0),
            "Ki" => (10, 0),
            "Mi" => (20, 0),
            "Gi" => (30, 0),
            "Ti" => (40, 0),
            "Pi" => (50, 0),
            "Ei" => (60, 0),
            "n" => (0, -9),
            "u" => (0, -6),
            "m" => (0, -3),
            "k" => (0, 3),
            "M" => (0, 6),
            "G" => (0, 9),
            "T" => (0, 12),
            "P" => (0, 15),
            "E" => (0, 18),
            e if e.starts_with(['e', 'E']) => (0, e[1..].parse::<i32>().ok().filter(|x| x.abs() <= 30)?),
            _ => return None,
        };
        mantissa = mantissa.checked_mul(1i128.checked_shl(bin)?)?;
        exp += dec;
        if neg {
            mantissa = -mantissa;
        }
        Some(Quantity { text: s.to_string(), mantissa, exp })
    }

    fn as_f64(&self) -> f64 {
        self.mantissa as f64 * 10f64.powi(self.exp)
    }

    /// Both mantissas at the smaller exponent, when that fits; None means compare as floats.
    fn aligned(&self, o: &Quantity) -> Option<(i128, i128, i32)> {
        let e = self.exp.min(o.exp);
        let scale = |m: i128, from: i32| m.checked_mul(10i128.checked_pow((from - e) as u32)?);
        Some((scale(self.mantissa, self.exp)?, scale(o.mantissa, o.exp)?, e))
    }

    pub fn compare(&self, o: &Quantity) -> Ordering {
        match self.aligned(o) {
            Some((a, b, _)) => a.cmp(&b),
            None => self.as_f64().partial_cmp(&o.as_f64()).unwrap_or(Ordering::Equal),
        }
    }
}

fn quantity_call(q: &Quantity, f: &str, args: &[Val]) -> R<Val> {
    let other = |v: &Val| -> R<Quantity> {
        match v {
            Val::Quantity(o) => Ok((**o).clone()),
            Val::Int(i) => Ok(Quantity { text: i.to_string(), mantissa: *i as i128, exp: 0 }),
            _ => no_overload(),
        }
    };
    match (f, args) {
        ("isLessThan", [o]) => Ok(Val::Bool(q.compare(&other(o)?) == Ordering::Less)),
        ("isGreaterThan", [o]) => Ok(Val::Bool(q.compare(&other(o)?) == Ordering::Greater)),
        ("compareTo", [o]) => Ok(Val::Int(match q.compare(&other(o)?) {
            Ordering::Less => -1,
            Ordering::Equal => 0,
            Ordering::Greater => 1,
        })),
        ("sign", []) => Ok(Val::Int(q.mantissa.signum() as i64)),
        ("asApproximateFloat", []) => Ok(Val::Double(q.as_f64())),
        ("isInteger" | "asInteger", []) => {
            let int = if q.exp >= 0 {
                10i128.checked_pow(q.exp as u32).and_then(|p| q.mantissa.checked_mul(p))
            } else {
                let p = 10i128.checked_pow((-q.exp) as u32);
                p.filter(|p| q.mantissa % p == 0).map(|p| q.mantissa / p)
            };
            let int = int.and_then(|i| i64::try_from(i).ok());
            if f == "isInteger" {
                return Ok(Val::Bool(int.is_some()));
            }
            int.map(Val::Int).ok_or_else(|| EvalError::Msg("cannot convert value to integer".into()))
        }
        ("add" | "sub", [o]) => {
            let o = other(o)?;
            let (a, b, e) = q.aligned(&o).ok_or_else(|| EvalError::Msg("quantity overflow".into()))?;
            let m = if f == "add" { a.checked_add(b) } else { a.checked_sub(b) };
            let m = m.ok_or_else(|| EvalError::Msg("quantity overflow".into()))?;
            let text = format_quantity(m, e);
            Ok(Val::Quantity(Arc::new(Quantity { text, mantissa: m, exp: e })))
        }
        _ => no_overload(),
    }
}

fn format_quantity(m: i128, e: i32) -> String {
    let exact = |m: i128, e: i32| 10i128.checked_pow(e.unsigned_abs()).and_then(|p| m.checked_mul(p));
    if e >= 0 {
        if let Some(v) = exact(m, e) {
            return v.to_string();
        }
    } else if e >= -3 {
        // Milli-units when that is exact (Kubernetes' canonical form for fractions).
        if let Some(v) = exact(m, 3 + e) {
            return format!("{v}m");
        }
    }
    format_g(m as f64 * 10f64.powi(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formats_are_reproduced() {
        assert_eq!(format_g(1.5), "1.5");
        assert_eq!(format_g(1e21), "1e+21");
        assert_eq!(format_g(100000.0), "100000");
        assert_eq!(format_g(0.00001), "1e-05");
        assert_eq!(format_duration(90_000_000_000), "90s");
        assert_eq!(format_duration(1_500_000_000), "1.5s");
        assert_eq!(parse_duration("1h30m").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_duration("-300ms").unwrap(), -300_000_000);
        assert!(parse_duration("5 minutes").is_err());
    }

    #[test]
    fn quantities_compare_exactly() {
        let q = |s: &str| Quantity::parse(s).unwrap();
        assert_eq!(q("1Gi").compare(&q("1073741824")), Ordering::Equal);
        assert_eq!(q("100m").compare(&q("0.1")), Ordering::Equal);
        assert_eq!(q("1.5").compare(&q("2")), Ordering::Less);
        assert_eq!(q("2e3").compare(&q("2k")), Ordering::Equal);
        assert!(Quantity::parse("1.2.3").is_none());
        assert!(Quantity::parse("12XB").is_none());
    }
}
