//! Two libraries about formats: cel-go's strings extension at the version Kubernetes 1.33 uses
//! (`'%s is %d'.format([a, b])`, `strings.quote(s)`), and Kubernetes' `format` library, whose
//! named formats validate a string with apimachinery's messages
//! (`format.dns1123Label().validate(s)` is `optional.none()` when valid, else the messages).

use std::sync::Arc;

use super::eval::{err, no_overload, EvalError, R};
use super::library::{format_g, to_string};
use super::net::{go_quote, request_uri_error};
use super::value::Val;
use crate::registry::validation::{label_pattern, DNS1035_LABEL_MSG, DNS1123_LABEL_MSG, DNS1123_SUBDOMAIN_MSG};

/// The format library's names, in its order.
pub const NAMES: &[&str] = &[
    "dns1123Label",
    "dns1123Subdomain",
    "dns1035Label",
    "qualifiedName",
    "dns1123LabelPrefix",
    "dns1123SubdomainPrefix",
    "dns1035LabelPrefix",
    "labelValue",
    "uri",
    "uuid",
    "byte",
    "date",
    "datetime",
];

const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn max_len(s: &str, n: usize, out: &mut Vec<String>) {
    if s.len() > n {
        out.push(format!("must be no more than {n} characters"));
    }
}

fn dns1123_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    max_len(s, 63, &mut out);
    if !label_pattern(s, false) {
        out.push(DNS1123_LABEL_MSG.into());
    }
    out
}

fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    max_len(s, 253, &mut out);
    if !s.split('.').all(|p| label_pattern(p, false)) {
        out.push(DNS1123_SUBDOMAIN_MSG.into());
    }
    out
}

fn dns1035_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    max_len(s, 63, &mut out);
    if !label_pattern(s, true) {
        out.push(DNS1035_LABEL_MSG.into());
    }
    out
}

/// apimachinery's `maskTrailingDash`, for the `…Prefix` formats (a generateName may end in `-`).
fn mask_trailing_dash(s: &str) -> String {
    if s.len() > 1 && s.ends_with('-') {
        // The last two characters become `a` (Go drops two bytes; characters keep this panic-free).
        let mut t = s[..s.len() - 1].to_string();
        t.pop();
        t.push('a');
        t
    } else {
        s.to_string()
    }
}

fn qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn qualified_name(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [n] => *n,
        [prefix, n] => {
            if prefix.is_empty() {
                out.push("prefix part must be non-empty".into());
            } else {
                out.extend(dns1123_subdomain(prefix).into_iter().map(|m| format!("prefix part {m}")));
            }
            *n
        }
        _ => {
            return vec![format!(
                "a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )]
        }
    };
    if name.is_empty() {
        out.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        out.push("name part must be no more than 63 characters".into());
    }
    if !qualified_part(name) {
        out.push(format!("name part {QUALIFIED_NAME_MSG}"));
    }
    out
}

fn label_value(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    max_len(s, 63, &mut out);
    if !s.is_empty() && !qualified_part(s) {
        out.push(LABEL_VALUE_MSG.into());
    }
    out
}

fn is_uuid(s: &str) -> bool {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    let dashes_ok = match s.len() {
        32 => !s.contains('-'),
        36 => [8, 13, 18, 23].iter().all(|&i| s.as_bytes()[i] == b'-') && s.matches('-').count() == 4,
        _ => false,
    };
    dashes_ok && hex.len() == 32 && hex.iter().all(|b| b.is_ascii_hexdigit())
}

/// Validates `s` against format `name`: the problems, empty when it is valid.
pub fn validate(name: &str, s: &str) -> Vec<String> {
    use base64::Engine;
    match name {
        "dns1123Label" => dns1123_label(s),
        "dns1123Subdomain" => dns1123_subdomain(s),
        "dns1035Label" => dns1035_label(s),
        "qualifiedName" => qualified_name(s),
        "dns1123LabelPrefix" => dns1123_label(&mask_trailing_dash(s)),
        "dns1123SubdomainPrefix" => dns1123_subdomain(&mask_trailing_dash(s)),
        "dns1035LabelPrefix" => dns1035_label(&mask_trailing_dash(s)),
        "labelValue" => label_value(s),
        "uri" => request_uri_error(s).into_iter().collect(),
        "uuid" if !is_uuid(s) => vec!["does not match the UUID format".into()],
        "byte" if base64::engine::general_purpose::STANDARD.decode(s).is_err() => vec!["invalid base64".into()],
        "date" if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_err() => vec!["invalid date".into()],
        "datetime" if chrono::DateTime::parse_from_rfc3339(s).is_err() => vec!["invalid datetime".into()],
        _ => Vec::new(),
    }
}

/// `format.named(name)` and `format.<name>()`.
pub fn global(f: &str, args: &[Val]) -> R<Val> {
    let find = |n: &str| NAMES.iter().find(|x| **x == n).copied();
    match (f, args) {
        ("named", [Val::Str(n)]) => Ok(Val::Optional(find(n).map(|n| Arc::new(Val::Format(n))))),
        (n, []) => find(n).map(Val::Format).ok_or_else(|| EvalError::Msg(format!("no such overload: format.{n}"))),
        _ => no_overload(),
    }
}

/// `<Format>.validate(s)`: `optional.none()` when valid, else the list of problems.
pub fn validate_call(name: &str, s: &str) -> Val {
    let errs = validate(name, s);
    if errs.is_empty() {
        return Val::Optional(None);
    }
    Val::Optional(Some(Arc::new(Val::list(errs.iter().map(|e| Val::str(e)).collect()))))
}

// ---------- strings.format ----------

/// How `%s` shows a value; strings inside lists and maps are quoted.
fn show(v: &Val, nested: bool) -> R<String> {
    Ok(match v {
        Val::Str(s) if nested => go_quote(s),
        Val::Str(s) => s.to_string(),
        Val::Double(d) => format_g(*d),
        Val::List(l) => {
            let items: R<Vec<String>> = l.items.iter().map(|x| show(x, true)).collect();
            format!("[{}]", items?.join(", "))
        }
        Val::Map(m) => {
            let mut items = Vec::with_capacity(m.entries.len());
            for (k, x) in &m.entries {
                items.push(format!("{}:{}", show(&k.to_val(), true)?, show(x, true)?));
            }
            format!("{{{}}}", items.join(", "))
        }
        Val::Null | Val::Bool(_) | Val::Int(_) | Val::Uint(_) | Val::Bytes(_) | Val::Duration(_) | Val::Timestamp(_) | Val::Type(_) => {
            to_string(v)?
        }
        other => {
            return err(format!(
                "error during formatting: string clause can only be used on strings, bools, bytes, ints, doubles, maps, lists, types, durations, and timestamps, was given {}",
                other.type_name()
            ))
        }
    })
}

fn fixed(v: &Val, prec: usize, sci: bool) -> R<String> {
    let d = match v {
        Val::Double(d) => *d,
        Val::Int(i) => *i as f64,
        Val::Uint(u) => *u as f64,
        Val::Str(s) => match &**s {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => return err("error during formatting: only doubles, ints, uints and the strings \"NaN\", \"Infinity\" and \"-Infinity\" may be used with fixed-point and scientific clauses"),
        },
        _ => return err(format!("error during formatting: fixed-point clause can only be used on doubles, was given {}", v.type_name())),
    };
    if d.is_nan() {
        return Ok("NaN".into());
    }
    if d.is_infinite() {
        return Ok(if d > 0.0 { "Infinity".into() } else { "-Infinity".into() });
    }
    if !sci {
        return Ok(format!("{d:.prec$}"));
    }
    // Go's %e: at least two exponent digits, with a sign.
    let s = format!("{d:.prec$e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    Ok(format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs()))
}

fn integer(v: &Val, verb: char) -> R<String> {
    let (neg, mag): (bool, u128) = match v {
        Val::Int(i) => (*i < 0, i.unsigned_abs() as u128),
        Val::Uint(u) => (false, *u as u128),
        Val::Bool(b) if verb == 'b' => (false, u128::from(*b)),
        Val::Str(s) if matches!(verb, 'x' | 'X') => {
            let h: String = s.bytes().map(|b| format!("{b:02x}")).collect();
            return Ok(if verb == 'X' { h.to_uppercase() } else { h });
        }
        Val::Bytes(b) if matches!(verb, 'x' | 'X') => {
            let h: String = b.iter().map(|b| format!("{b:02x}")).collect();
            return Ok(if verb == 'X' { h.to_uppercase() } else { h });
        }
        _ => {
            let what = match verb {
                'd' => "decimal clause can only be used on integers",
                'b' => "only integers and bools can be formatted as binary",
                'o' => "octal clause can only be used on integers",
                _ => "only integers, byte buffers, and strings can be formatted as hex",
            };
            return err(format!("error during formatting: {what}, was given {}", v.type_name()));
        }
    };
    let digits = match verb {
        'd' => mag.to_string(),
        'b' => format!("{mag:b}"),
        'o' => format!("{mag:o}"),
        'x' => format!("{mag:x}"),
        _ => format!("{mag:X}"),
    };
    Ok(if neg { format!("-{digits}") } else { digits })
}

/// `<string>.format(<list>)`.
pub fn format(fmt: &str, args: &[Val]) -> R<Val> {
    let mut out = String::with_capacity(fmt.len());
    let mut chars = fmt.chars().peekable();
    let mut next = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        let mut prec: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(*d);
                chars.next();
            }
            prec = Some(p.parse().map_err(|_| {
                EvalError::Msg(
                    "could not parse formatting clause: unable to convert precision specifier to integer".into(),
                )
            })?);
        }
        let Some(verb) = chars.next() else {
            return err("could not parse formatting clause: unexpected end of format string");
        };
        if !matches!(verb, 's' | 'd' | 'f' | 'e' | 'b' | 'o' | 'x' | 'X') {
            return err(format!(
                "could not parse formatting clause: unrecognized formatting clause {}",
                go_quote(&verb.to_string())
            ));
        }
        let Some(arg) = args.get(next) else {
            return err(format!("index {next} out of range"));
        };
        next += 1;
        // Precision is capped, as cel-go caps it, so a clause cannot ask for a huge string.
        let p = prec.unwrap_or(6).min(100);
        out.push_str(&match verb {
            's' => show(arg, false)?,
            'f' => fixed(arg, p, false)?,
            'e' => fixed(arg, p, true)?,
            v => integer(arg, v)?,
        });
    }
    Ok(Val::str(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_formats_validate_with_apimachinerys_messages() {
        assert!(validate("dns1123Label", "my-name").is_empty());
        assert_eq!(validate("dns1123Label", "My_Name"), vec![DNS1123_LABEL_MSG.to_string()]);
        assert_eq!(validate("dns1123Label", &"a".repeat(64)), vec!["must be no more than 63 characters".to_string()]);
        assert!(
            validate("dns1123LabelPrefix", "my-prefix-").is_empty()
                && !validate("dns1123Label", "my-prefix-").is_empty()
        );
        assert!(validate("dns1123Subdomain", "apiextensions.k8s.io").is_empty());
        assert!(validate("dns1035Label", "1abc") == vec![DNS1035_LABEL_MSG.to_string()]);
        assert!(validate("qualifiedName", "apiextensions.k8s.io/v1beta1").is_empty());
        assert_eq!(validate("qualifiedName", "/x"), vec!["prefix part must be non-empty".to_string()]);
        assert!(validate("labelValue", "").is_empty() && !validate("labelValue", "-x").is_empty());
        assert!(validate("uuid", "123e4567-e89b-12d3-a456-426614174000").is_empty());
        assert_eq!(validate("uuid", "123"), vec!["does not match the UUID format".to_string()]);
        assert!(
            validate("byte", "aGVsbG8=").is_empty() && validate("byte", "!!") == vec!["invalid base64".to_string()]
        );
        assert!(validate("date", "2021-01-01").is_empty() && !validate("date", "2021-13-01").is_empty());
        assert!(
            validate("datetime", "2021-01-01T00:00:00Z").is_empty() && !validate("datetime", "yesterday").is_empty()
        );
        assert_eq!(validate("uri", "../x"), vec!["parse \"../x\": invalid URI for request".to_string()]);
    }

    #[test]
    fn format_strings_substitute_as_cel_go() {
        let f = |s: &str, a: Vec<Val>| match format(s, &a) {
            Ok(Val::Str(s)) => s.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(f("%s and %d", vec![Val::str("str"), Val::Int(42)]), "str and 42");
        assert_eq!(
            f("%f|%.2f|%e", vec![Val::Double(3.14), Val::Double(2.0), Val::Double(2.71828)]),
            "3.140000|2.00|2.718280e+00"
        );
        assert_eq!(f("%b %o %x %X %%", vec![Val::Int(5), Val::Int(30), Val::Int(26), Val::Int(26)]), "101 36 1a 1A %");
        assert_eq!(f("%s", vec![Val::list(vec![Val::Int(1), Val::str("a")])]), "[1, \"a\"]");
        assert_eq!(f("%x", vec![Val::str("hi")]), "6869");
        assert!(format("%d %d", &[Val::Int(1)]).unwrap_err() == EvalError::Msg("index 1 out of range".into()));
        assert!(format("%z", &[Val::Int(1)]).is_err() && format("%d", &[Val::str("x")]).is_err());
    }
}
