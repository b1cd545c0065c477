//! The type checker: the types a structural schema gives `self` (apiextensions'
//! `SchemaDeclType`), and a check of a rule against them, so that a CRD whose rule names a
//! field the schema does not have, calls an unknown function or compares an int with a string
//! is refused when the CRD is written, with cel-go's messages (`undefined field 'x'`,
//! `undeclared reference to 'f' (in container '')`, `found no matching overload for '_+_'
//! applied to '(int, string)'`). Where a type is not known statically (`dyn`: int-or-string,
//! values out of `dyn()`), the check lets it through and evaluation decides.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::parser::{BinOp, Expr, Issue, Lit, Macro};
use super::value::{escape, visible};

#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    Dyn,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    /// An object with declared properties (escaped names).
    Object(Arc<BTreeMap<String, Ty>>),
    Optional(Box<Ty>),
    Type,
    Quantity,
    /// `net.IP`, `net.CIDR`, `kubernetes.URL`, `kubernetes.Semver`, `kubernetes.NamedFormat`.
    Ip,
    Cidr,
    Url,
    Semver,
    Format,
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Dyn => write!(f, "dyn"),
            Ty::Null => write!(f, "null_type"),
            Ty::Bool => write!(f, "bool"),
            Ty::Int => write!(f, "int"),
            Ty::Uint => write!(f, "uint"),
            Ty::Double => write!(f, "double"),
            Ty::String => write!(f, "string"),
            Ty::Bytes => write!(f, "bytes"),
            Ty::Duration => write!(f, "google.protobuf.Duration"),
            Ty::Timestamp => write!(f, "google.protobuf.Timestamp"),
            Ty::List(t) => write!(f, "list({t})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Object(_) => write!(f, "object"),
            Ty::Optional(t) => write!(f, "optional_type({t})"),
            Ty::Type => write!(f, "type"),
            Ty::Quantity => write!(f, "kubernetes.Quantity"),
            Ty::Ip => write!(f, "net.IP"),
            Ty::Cidr => write!(f, "net.CIDR"),
            Ty::Url => write!(f, "kubernetes.URL"),
            Ty::Semver => write!(f, "kubernetes.Semver"),
            Ty::Format => write!(f, "kubernetes.NamedFormat"),
        }
    }
}

fn flag(s: &Value, k: &str) -> bool {
    s.get(k) == Some(&Value::Bool(true))
}

/// The type of values at schema node `s`; None when rules cannot see them. `resource` marks the
/// root of an object or embedded resource (apiVersion, kind, metadata.name/generateName).
pub fn schema_type(s: &Value, resource: bool) -> Option<Ty> {
    if flag(s, "x-kubernetes-int-or-string") {
        return Some(Ty::Dyn);
    }
    if !visible(s) {
        return None;
    }
    Some(match s.get("type").and_then(|t| t.as_str()).unwrap_or("") {
        "array" => {
            Ty::List(Box::new(schema_type(s.get("items")?, flag(s.get("items")?, "x-kubernetes-embedded-resource"))?))
        }
        "object" => {
            if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
                return Some(Ty::Map(
                    Box::new(Ty::String),
                    Box::new(schema_type(a, flag(a, "x-kubernetes-embedded-resource"))?),
                ));
            }
            let mut fields = BTreeMap::new();
            for (k, ps) in s.get("properties").and_then(|p| p.as_object()).into_iter().flatten() {
                if resource && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let (Some(name), Some(t)) = (escape(k), schema_type(ps, flag(ps, "x-kubernetes-embedded-resource")))
                else {
                    continue;
                };
                fields.insert(name, t);
            }
            if resource {
                fields.insert("apiVersion".into(), Ty::String);
                fields.insert("kind".into(), Ty::String);
                let mut meta = BTreeMap::new();
                meta.insert("name".into(), Ty::String);
                meta.insert("generateName".into(), Ty::String);
                fields.insert("metadata".into(), Ty::Object(Arc::new(meta)));
            }
            Ty::Object(Arc::new(fields))
        }
        "string" => match s.get("format").and_then(|f| f.as_str()) {
            Some("byte") => Ty::Bytes,
            Some("duration") => Ty::Duration,
            Some("date" | "date-time" | "datetime") => Ty::Timestamp,
            _ => Ty::String,
        },
        "integer" => Ty::Int,
        "number" => Ty::Double,
        "boolean" => Ty::Bool,
        _ => return None,
    })
}

/// Variables in scope while checking, and the Kubernetes minor version whose CEL environment
/// declares the functions (see [`super::STORED_MINOR`]).
pub struct Env {
    vars: Vec<(Arc<str>, Ty)>,
    minor: u32,
}

impl Env {
    /// This version's full environment.
    pub fn new(vars: Vec<(Arc<str>, Ty)>) -> Env {
        Env { vars, minor: super::STORED_MINOR }
    }
    /// The environment of Kubernetes 1.`minor`: libraries introduced later are undeclared.
    pub fn at(vars: Vec<(Arc<str>, Ty)>, minor: u32) -> Env {
        Env { vars, minor }
    }
    pub fn push(&mut self, n: Arc<str>, t: Ty) {
        self.vars.push((n, t));
    }
    pub fn pop(&mut self) {
        self.vars.pop();
    }
    fn get(&self, n: &str) -> Option<&Ty> {
        self.vars.iter().rev().find(|(v, _)| &**v == n).map(|(_, t)| t)
    }
}

fn issue<T>(pos: usize, message: impl Into<String>) -> Result<T, Issue> {
    Err(Issue { pos, message: message.into() })
}

fn no_match<T>(pos: usize, f: &str, args: &[&Ty]) -> Result<T, Issue> {
    let list: Vec<String> = args.iter().map(|t| t.to_string()).collect();
    issue(pos, format!("found no matching overload for '{f}' applied to '({})'", list.join(", ")))
}

fn no_member_match<T>(pos: usize, f: &str, target: &Ty, args: &[Ty]) -> Result<T, Issue> {
    let list: Vec<String> = args.iter().map(|t| t.to_string()).collect();
    issue(pos, format!("found no matching overload for '{f}' applied to '{target}.({})'", list.join(", ")))
}

/// Whether values of the two types may meet (equality, list elements): same type, or dyn.
fn compatible(a: &Ty, b: &Ty) -> bool {
    match (a, b) {
        (Ty::Dyn, _) | (_, Ty::Dyn) => true,
        (Ty::Null, _) | (_, Ty::Null) => true,
        (Ty::List(x), Ty::List(y)) => compatible(x, y),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => compatible(k1, k2) && compatible(v1, v2),
        (Ty::Object(_), Ty::Object(_)) => true,
        // A map literal and an object of the schema are both maps to rules.
        (Ty::Object(_), Ty::Map(..)) | (Ty::Map(..), Ty::Object(_)) => true,
        (Ty::Optional(x), Ty::Optional(y)) => compatible(x, y),
        _ => a == b,
    }
}

fn numeric(t: &Ty) -> bool {
    matches!(t, Ty::Int | Ty::Uint | Ty::Double)
}

fn dynish(t: &Ty) -> bool {
    *t == Ty::Dyn
}

pub fn check(e: &Expr, env: &mut Env) -> Result<Ty, Issue> {
    match e {
        Expr::Lit(_, l) => Ok(match l {
            Lit::Null => Ty::Null,
            Lit::Bool(_) => Ty::Bool,
            Lit::Int(_) => Ty::Int,
            Lit::Uint(_) => Ty::Uint,
            Lit::Double(_) => Ty::Double,
            Lit::Str(_) => Ty::String,
            Lit::Bytes(_) => Ty::Bytes,
        }),
        Expr::Ident(pos, n) => match env.get(n) {
            Some(t) => Ok(t.clone()),
            None => match &**n {
                "int" | "uint" | "double" | "bool" | "string" | "bytes" | "list" | "map" | "null_type" | "type" => {
                    Ok(Ty::Type)
                }
                _ => issue(*pos, format!("undeclared reference to '{n}' (in container '')")),
            },
        },
        Expr::Select { pos, operand, field, test, optional } => {
            if is_net_type(operand, field, |n| env.get(n).is_some()) {
                return Ok(Ty::Type);
            }
            let t = check(operand, env)?;
            let ft = select_type(*pos, &t, field)?;
            Ok(if *test {
                Ty::Bool
            } else if *optional || matches!(t, Ty::Optional(_)) {
                match ft {
                    Ty::Optional(_) => ft,
                    other => Ty::Optional(Box::new(other)),
                }
            } else {
                ft
            })
        }
        Expr::Index { pos, operand, index, optional } => {
            let t = check(operand, env)?;
            let i = check(index, env)?;
            let (inner, was_opt) = match t {
                Ty::Optional(x) => (*x, true),
                x => (x, false),
            };
            let r = match &inner {
                Ty::List(el) if matches!(i, Ty::Int | Ty::Uint | Ty::Dyn) => (**el).clone(),
                Ty::Map(k, v) if compatible(k, &i) => (**v).clone(),
                Ty::Object(_) if matches!(i, Ty::String | Ty::Dyn) => Ty::Dyn,
                Ty::Dyn => Ty::Dyn,
                _ => return no_match(*pos, "_[_]", &[&inner, &i]),
            };
            Ok(if *optional || was_opt { Ty::Optional(Box::new(r)) } else { r })
        }
        Expr::Call { pos, target, func, args } => {
            let tt = match target {
                Some(t) => Some(check(t, env)?),
                None => None,
            };
            let mut ats = Vec::with_capacity(args.len());
            for a in args {
                ats.push(check(a, env)?);
            }
            if let (Some(Ty::String), "matches" | "find" | "findAll", Some(Expr::Lit(p, Lit::Str(re)))) =
                (&tt, &**func, args.first())
            {
                if let Err(e) = regex::Regex::new(re) {
                    return issue(*p, format!("invalid regular expression: {e}"));
                }
            }
            match tt {
                Some(t) => member_type(*pos, func, &t, &ats),
                None => global_type(*pos, func, &ats, env.minor),
            }
        }
        Expr::List(_, xs) => {
            let mut el: Option<Ty> = None;
            for x in xs {
                let t = check(x, env)?;
                el = Some(match el {
                    None => t,
                    Some(prev) if prev == t => prev,
                    Some(_) => Ty::Dyn,
                });
            }
            Ok(Ty::List(Box::new(el.unwrap_or(Ty::Dyn))))
        }
        Expr::Map(_, kvs) => {
            let (mut kt, mut vt): (Option<Ty>, Option<Ty>) = (None, None);
            for (k, v) in kvs {
                let a = check(k, env)?;
                let b = check(v, env)?;
                kt = Some(match kt {
                    None => a,
                    Some(p) if p == a => p,
                    Some(_) => Ty::Dyn,
                });
                vt = Some(match vt {
                    None => b,
                    Some(p) if p == b => p,
                    Some(_) => Ty::Dyn,
                });
            }
            Ok(Ty::Map(Box::new(kt.unwrap_or(Ty::Dyn)), Box::new(vt.unwrap_or(Ty::Dyn))))
        }
        Expr::Not(pos, x) => match check(x, env)? {
            Ty::Bool | Ty::Dyn => Ok(Ty::Bool),
            t => no_match(*pos, "!_", &[&t]),
        },
        Expr::Neg(pos, x) => match check(x, env)? {
            t @ (Ty::Int | Ty::Double | Ty::Duration | Ty::Dyn) => Ok(t),
            t => no_match(*pos, "-_", &[&t]),
        },
        Expr::And(pos, a, b) | Expr::Or(pos, a, b) => {
            let (x, y) = (check(a, env)?, check(b, env)?);
            let name = if matches!(e, Expr::And(..)) { "_&&_" } else { "_||_" };
            if matches!(x, Ty::Bool | Ty::Dyn) && matches!(y, Ty::Bool | Ty::Dyn) {
                Ok(Ty::Bool)
            } else {
                no_match(*pos, name, &[&x, &y])
            }
        }
        Expr::Cond(pos, c, t, f) => {
            let ct = check(c, env)?;
            if !matches!(ct, Ty::Bool | Ty::Dyn) {
                return no_match(*pos, "_?_:_", &[&ct]);
            }
            let (a, b) = (check(t, env)?, check(f, env)?);
            Ok(if a == b { a } else { Ty::Dyn })
        }
        Expr::Binary(pos, op, a, b) => {
            let (x, y) = (check(a, env)?, check(b, env)?);
            binary_type(*pos, *op, &x, &y)
        }
        Expr::Comprehension { pos, kind, range, var, var2, body, transform } => {
            let rt = check(range, env)?;
            let not_a_range = || {
                issue(
                    range.pos(),
                    format!(
                        "expression of type '{rt}' cannot be range of a comprehension (must be list, map, or dynamic)"
                    ),
                )
            };
            // The variables' types: the element or key; with two variables, the index or key and
            // the element or value.
            let (vt, v2t) = match (&rt, kind, var2.is_some()) {
                (Ty::Optional(t), Macro::OptMap, _) => ((**t).clone(), None),
                (Ty::Dyn, _, two) => (Ty::Dyn, two.then_some(Ty::Dyn)),
                (_, Macro::OptMap, _) => return no_member_match(*pos, "optMap", &rt, &[]),
                (Ty::List(t), _, false) => ((**t).clone(), None),
                (Ty::List(t), _, true) => (Ty::Int, Some((**t).clone())),
                (Ty::Map(k, v), _, two) => ((**k).clone(), two.then(|| (**v).clone())),
                (Ty::Object(_), _, two) => (Ty::String, two.then_some(Ty::Dyn)),
                _ => return not_a_range(),
            };
            env.vars.push((var.clone(), vt.clone()));
            if let (Some(v2), Some(t)) = (var2, &v2t) {
                env.vars.push((v2.clone(), t.clone()));
            }
            let bt = check(body, env);
            let tt = transform.as_ref().map(|t| check(t, env));
            env.vars.pop();
            if var2.is_some() {
                env.vars.pop();
            }
            let bt = bt?;
            let predicate = matches!(kind, Macro::All | Macro::Exists | Macro::ExistsOne | Macro::Filter)
                || (matches!(kind, Macro::Map | Macro::TransformList | Macro::TransformMap | Macro::TransformMapEntry)
                    && transform.is_some());
            if predicate && !matches!(bt, Ty::Bool | Ty::Dyn) {
                return issue(body.pos(), format!("expected type 'bool' but found '{bt}'"));
            }
            // What a transform yields: the last argument.
            let out = tt.transpose()?.unwrap_or(bt);
            Ok(match kind {
                Macro::All | Macro::Exists | Macro::ExistsOne => Ty::Bool,
                Macro::Filter => Ty::List(Box::new(vt)),
                Macro::Map | Macro::TransformList => Ty::List(Box::new(out)),
                Macro::TransformMap => Ty::Map(Box::new(vt), Box::new(out)),
                // cel-go merges the entry with `cel.@mapInsert(map, map)`.
                Macro::TransformMapEntry => match out {
                    Ty::Map(..) => out,
                    Ty::Dyn => Ty::Map(Box::new(Ty::Dyn), Box::new(Ty::Dyn)),
                    t => {
                        let accu = Ty::Map(Box::new(Ty::Dyn), Box::new(Ty::Dyn));
                        return no_match(*pos, "cel.@mapInsert", &[&accu, &t]);
                    }
                },
                Macro::OptMap => Ty::Optional(Box::new(out)),
            })
        }
    }
}

/// `net.IP` and `net.CIDR` name types (unless `net` is a variable).
pub fn is_net_type(operand: &Expr, field: &str, bound: impl Fn(&str) -> bool) -> bool {
    matches!(operand, Expr::Ident(_, n) if &**n == "net" && !bound("net")) && matches!(field, "IP" | "CIDR")
}

fn select_type(pos: usize, t: &Ty, field: &str) -> Result<Ty, Issue> {
    match t {
        Ty::Object(fields) => match fields.get(field) {
            Some(ft) => Ok(ft.clone()),
            None => issue(pos, format!("undefined field '{field}'")),
        },
        Ty::Map(_, v) => Ok((**v).clone()),
        Ty::Dyn => Ok(Ty::Dyn),
        Ty::Optional(inner) => select_type(pos, inner, field),
        other => issue(pos, format!("type '{other}' does not support field selection")),
    }
}

fn binary_type(pos: usize, op: BinOp, x: &Ty, y: &Ty) -> Result<Ty, Issue> {
    let d = dynish(x) || dynish(y);
    let bad = || no_match(pos, op.name(), &[x, y]);
    match op {
        BinOp::Eq | BinOp::Ne => {
            if compatible(x, y) {
                Ok(Ty::Bool)
            } else {
                bad()
            }
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            // Kubernetes enables cross-type numeric comparisons.
            let ok = d
                || (numeric(x) && numeric(y))
                || (x == y && matches!(x, Ty::String | Ty::Bytes | Ty::Bool | Ty::Duration | Ty::Timestamp));
            if ok {
                Ok(Ty::Bool)
            } else {
                bad()
            }
        }
        BinOp::In => match y {
            Ty::List(el) if compatible(x, el) => Ok(Ty::Bool),
            Ty::Map(k, _) if compatible(x, k) => Ok(Ty::Bool),
            Ty::Object(_) if matches!(x, Ty::String | Ty::Dyn) => Ok(Ty::Bool),
            Ty::Dyn => Ok(Ty::Bool),
            _ => bad(),
        },
        BinOp::Add => match (x, y) {
            (Ty::Dyn, t) | (t, Ty::Dyn) => Ok(if matches!(t, Ty::Timestamp) { Ty::Dyn } else { t.clone() }),
            (a, b)
                if a == b && matches!(a, Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Bytes | Ty::Duration) =>
            {
                Ok(a.clone())
            }
            (Ty::List(a), Ty::List(b)) if compatible(a, b) => {
                Ok(Ty::List(Box::new(if a == b { (**a).clone() } else { Ty::Dyn })))
            }
            (Ty::Timestamp, Ty::Duration) | (Ty::Duration, Ty::Timestamp) => Ok(Ty::Timestamp),
            _ => bad(),
        },
        BinOp::Sub => match (x, y) {
            (Ty::Dyn, _) | (_, Ty::Dyn) => Ok(Ty::Dyn),
            (a, b) if a == b && matches!(a, Ty::Int | Ty::Uint | Ty::Double | Ty::Duration) => Ok(a.clone()),
            (Ty::Timestamp, Ty::Timestamp) => Ok(Ty::Duration),
            (Ty::Timestamp, Ty::Duration) => Ok(Ty::Timestamp),
            _ => bad(),
        },
        BinOp::Mul | BinOp::Div => match (x, y) {
            (Ty::Dyn, t) | (t, Ty::Dyn) if numeric(t) || dynish(t) => Ok(t.clone()),
            (a, b) if a == b && numeric(a) => Ok(a.clone()),
            _ => bad(),
        },
        BinOp::Rem => match (x, y) {
            (Ty::Dyn, t) | (t, Ty::Dyn) if matches!(t, Ty::Int | Ty::Uint | Ty::Dyn) => Ok(t.clone()),
            (a, b) if a == b && matches!(a, Ty::Int | Ty::Uint) => Ok(a.clone()),
            _ => bad(),
        },
    }
}

fn global_type(pos: usize, f: &str, args: &[Ty], minor: u32) -> Result<Ty, Issue> {
    let a: Vec<&Ty> = args.iter().collect();
    let any = |t: &Ty| dynish(t);
    let one = |ok: &dyn Fn(&Ty) -> bool, out: Ty| -> Result<Ty, Issue> {
        match args {
            [t] if ok(t) || any(t) => Ok(out),
            _ => no_match(pos, f, &a),
        }
    };
    match f {
        "size" => one(&|t| matches!(t, Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(..) | Ty::Object(_)), Ty::Int),
        "int" => {
            one(&|t| matches!(t, Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Duration | Ty::Timestamp), Ty::Int)
        }
        "uint" => one(&|t| matches!(t, Ty::Int | Ty::Uint | Ty::Double | Ty::String), Ty::Uint),
        "double" => one(&|t| matches!(t, Ty::Int | Ty::Uint | Ty::Double | Ty::String), Ty::Double),
        "string" => one(
            &|t| {
                matches!(
                    t,
                    Ty::Int
                        | Ty::Uint
                        | Ty::Double
                        | Ty::String
                        | Ty::Bytes
                        | Ty::Bool
                        | Ty::Duration
                        | Ty::Timestamp
                        | Ty::Ip
                        | Ty::Cidr
                )
            },
            Ty::String,
        ),
        "bytes" => one(&|t| matches!(t, Ty::String | Ty::Bytes), Ty::Bytes),
        "bool" => one(&|t| matches!(t, Ty::String | Ty::Bool), Ty::Bool),
        "duration" => one(&|t| matches!(t, Ty::String | Ty::Duration), Ty::Duration),
        "timestamp" => one(&|t| matches!(t, Ty::String | Ty::Timestamp | Ty::Int), Ty::Timestamp),
        "quantity" => one(&|t| matches!(t, Ty::String), Ty::Quantity),
        "isQuantity" => one(&|t| matches!(t, Ty::String), Ty::Bool),
        "ip" => one(&|t| matches!(t, Ty::String), Ty::Ip),
        "strings.quote" => one(&|t| matches!(t, Ty::String), Ty::String),
        "format.named" => one(&|t| matches!(t, Ty::String), Ty::Optional(Box::new(Ty::Format))),
        n if n.strip_prefix("format.").is_some_and(|n| super::formats::NAMES.contains(&n)) => match args {
            [] => Ok(Ty::Format),
            _ => no_match(pos, f, &a),
        },
        "cidr" => one(&|t| matches!(t, Ty::String), Ty::Cidr),
        "url" => one(&|t| matches!(t, Ty::String), Ty::Url),
        "isIP" | "isCIDR" | "isURL" | "ip.isCanonical" => one(&|t| matches!(t, Ty::String), Ty::Bool),
        // The semver library came with 1.33; before, the names are undeclared (below).
        "semver" | "isSemver" if minor >= 33 => {
            let out = if f == "semver" { Ty::Semver } else { Ty::Bool };
            match args {
                [s] | [s, Ty::Bool | Ty::Dyn] if matches!(s, Ty::String | Ty::Dyn) => Ok(out),
                _ => no_match(pos, f, &a),
            }
        }
        "dyn" => one(&|_| true, Ty::Dyn),
        "type" => one(&|_| true, Ty::Type),
        "optional.of" | "optional.ofNonZeroValue" => match args {
            [t] => Ok(Ty::Optional(Box::new(t.clone()))),
            _ => no_match(pos, f, &a),
        },
        "optional.none" if args.is_empty() => Ok(Ty::Optional(Box::new(Ty::Dyn))),
        "sets.contains" | "sets.equivalent" | "sets.intersects" => match args {
            [x, y] if matches!(x, Ty::List(_) | Ty::Dyn) && matches!(y, Ty::List(_) | Ty::Dyn) => Ok(Ty::Bool),
            _ => no_match(pos, f, &a),
        },
        _ => issue(pos, format!("undeclared reference to '{f}' (in container '')")),
    }
}

/// Methods cel-go and Kubernetes define, for telling "unknown" from "wrong receiver".
const METHODS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "find",
    "findAll",
    "lowerAscii",
    "upperAscii",
    "trim",
    "reverse",
    "charAt",
    "indexOf",
    "lastIndexOf",
    "substring",
    "replace",
    "split",
    "join",
    "isSorted",
    "sum",
    "min",
    "max",
    "hasValue",
    "value",
    "orValue",
    "or",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "getFullYear",
    "getMonth",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "isLessThan",
    "isGreaterThan",
    "compareTo",
    "sign",
    "asApproximateFloat",
    "asInteger",
    "isInteger",
    "add",
    "sub",
    "family",
    "isUnspecified",
    "isLoopback",
    "isLinkLocalMulticast",
    "isLinkLocalUnicast",
    "isGlobalUnicast",
    "containsIP",
    "containsCIDR",
    "ip",
    "masked",
    "prefixLength",
    "getScheme",
    "getHost",
    "getHostname",
    "getPort",
    "getEscapedPath",
    "getQuery",
    "major",
    "minor",
    "patch",
    "format",
    "validate",
];

fn member_type(pos: usize, f: &str, t: &Ty, args: &[Ty]) -> Result<Ty, Issue> {
    // `optional.of(x)` parses as a member call on the identifier `optional`.
    if !METHODS.contains(&f) {
        return issue(pos, format!("undeclared reference to '{f}' (in container '')"));
    }
    let is = |t: &Ty, want: &Ty| t == want || dynish(t);
    let s = &Ty::String;
    let i = &Ty::Int;
    let out = match (t, f, args) {
        (Ty::Dyn, _, _) => Some(match f {
            "contains"
            | "startsWith"
            | "endsWith"
            | "matches"
            | "isSorted"
            | "hasValue"
            | "isLessThan"
            | "isGreaterThan"
            | "isInteger"
            | "isUnspecified"
            | "isLoopback"
            | "isLinkLocalMulticast"
            | "isLinkLocalUnicast"
            | "isGlobalUnicast"
            | "containsIP"
            | "containsCIDR" => Ty::Bool,
            "size" | "indexOf" | "lastIndexOf" | "compareTo" | "sign" | "asInteger" | "family" | "prefixLength"
            | "major" | "minor" | "patch" => Ty::Int,
            "lowerAscii" | "upperAscii" | "trim" | "reverse" | "charAt" | "substring" | "replace" | "join" | "find"
            | "getScheme" | "getHost" | "getHostname" | "getPort" | "getEscapedPath" => Ty::String,
            "split" | "findAll" => Ty::List(Box::new(Ty::String)),
            "ip" => Ty::Ip,
            "masked" => Ty::Cidr,
            "getQuery" => Ty::Map(Box::new(Ty::String), Box::new(Ty::List(Box::new(Ty::String)))),
            "format" => Ty::String,
            "validate" => Ty::Optional(Box::new(Ty::List(Box::new(Ty::String)))),
            _ => Ty::Dyn,
        }),
        (Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(..) | Ty::Object(_), "size", []) => Some(Ty::Int),
        (Ty::String, "contains" | "startsWith" | "endsWith" | "matches", [a]) if is(a, s) => Some(Ty::Bool),
        (Ty::String, "find", [a]) if is(a, s) => Some(Ty::String),
        (Ty::String, "findAll", [a]) if is(a, s) => Some(Ty::List(Box::new(Ty::String))),
        (Ty::String, "findAll", [a, b]) if is(a, s) && is(b, i) => Some(Ty::List(Box::new(Ty::String))),
        (Ty::String, "lowerAscii" | "upperAscii" | "trim" | "reverse", []) => Some(Ty::String),
        (Ty::String, "charAt", [a]) if is(a, i) => Some(Ty::String),
        (Ty::String, "indexOf" | "lastIndexOf", [a]) if is(a, s) => Some(Ty::Int),
        (Ty::String, "indexOf" | "lastIndexOf", [a, b]) if is(a, s) && is(b, i) => Some(Ty::Int),
        (Ty::String, "substring", [a]) if is(a, i) => Some(Ty::String),
        (Ty::String, "substring", [a, b]) if is(a, i) && is(b, i) => Some(Ty::String),
        (Ty::String, "replace", [a, b]) if is(a, s) && is(b, s) => Some(Ty::String),
        (Ty::String, "replace", [a, b, c]) if is(a, s) && is(b, s) && is(c, i) => Some(Ty::String),
        (Ty::String, "split", [a]) if is(a, s) => Some(Ty::List(Box::new(Ty::String))),
        (Ty::String, "split", [a, b]) if is(a, s) && is(b, i) => Some(Ty::List(Box::new(Ty::String))),
        (Ty::List(el), "join", []) if is(el, s) => Some(Ty::String),
        (Ty::List(el), "join", [a]) if is(el, s) && is(a, s) => Some(Ty::String),
        (Ty::List(el), "isSorted", []) if comparable(el) => Some(Ty::Bool),
        (Ty::List(el), "sum", []) if matches!(**el, Ty::Int | Ty::Uint | Ty::Double | Ty::Duration | Ty::Dyn) => {
            Some((**el).clone())
        }
        (Ty::List(el), "min" | "max", []) if comparable(el) => Some((**el).clone()),
        (Ty::List(el), "indexOf" | "lastIndexOf", [a]) if compatible(el, a) => Some(Ty::Int),
        (Ty::Optional(_), "hasValue", []) => Some(Ty::Bool),
        (Ty::Optional(x), "value", []) => Some((**x).clone()),
        (Ty::Optional(x), "orValue", [a]) if compatible(x, a) => Some((**x).clone()),
        (Ty::Optional(x), "or", [Ty::Optional(y)]) if compatible(x, y) => Some(Ty::Optional(x.clone())),
        (Ty::Duration, "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds", []) => Some(Ty::Int),
        (
            Ty::Timestamp,
            "getFullYear" | "getMonth" | "getDate" | "getDayOfMonth" | "getDayOfWeek" | "getDayOfYear" | "getHours"
            | "getMinutes" | "getSeconds" | "getMilliseconds",
            [] | [Ty::String | Ty::Dyn],
        ) => Some(Ty::Int),
        (Ty::Quantity, "isLessThan" | "isGreaterThan", [Ty::Quantity | Ty::Dyn]) => Some(Ty::Bool),
        (Ty::Quantity, "compareTo", [Ty::Quantity | Ty::Dyn]) => Some(Ty::Int),
        (Ty::Quantity, "sign" | "asInteger", []) => Some(Ty::Int),
        (Ty::Quantity, "isInteger", []) => Some(Ty::Bool),
        (Ty::Quantity, "asApproximateFloat", []) => Some(Ty::Double),
        (Ty::Quantity, "add" | "sub", [Ty::Quantity | Ty::Int | Ty::Dyn]) => Some(Ty::Quantity),
        (Ty::Ip, "family", []) => Some(Ty::Int),
        (
            Ty::Ip,
            "isUnspecified" | "isLoopback" | "isLinkLocalMulticast" | "isLinkLocalUnicast" | "isGlobalUnicast",
            [],
        ) => Some(Ty::Bool),
        (Ty::Cidr, "containsIP", [Ty::Ip | Ty::String | Ty::Dyn]) => Some(Ty::Bool),
        (Ty::Cidr, "containsCIDR", [Ty::Cidr | Ty::String | Ty::Dyn]) => Some(Ty::Bool),
        (Ty::Cidr, "ip", []) => Some(Ty::Ip),
        (Ty::Cidr, "masked", []) => Some(Ty::Cidr),
        (Ty::Cidr, "prefixLength", []) => Some(Ty::Int),
        (Ty::Url, "getScheme" | "getHost" | "getHostname" | "getPort" | "getEscapedPath", []) => Some(Ty::String),
        (Ty::Url, "getQuery", []) => Some(Ty::Map(Box::new(Ty::String), Box::new(Ty::List(Box::new(Ty::String))))),
        (Ty::Semver, "major" | "minor" | "patch", []) => Some(Ty::Int),
        (Ty::String, "format", [Ty::List(_) | Ty::Dyn]) => Some(Ty::String),
        (Ty::Format, "validate", [Ty::String | Ty::Dyn]) => {
            Some(Ty::Optional(Box::new(Ty::List(Box::new(Ty::String)))))
        }
        (Ty::Semver, "isLessThan" | "isGreaterThan", [Ty::Semver | Ty::Dyn]) => Some(Ty::Bool),
        (Ty::Semver, "compareTo", [Ty::Semver | Ty::Dyn]) => Some(Ty::Int),
        _ => None,
    };
    match out {
        Some(t) => Ok(t),
        None => no_member_match(pos, f, t, args),
    }
}

fn comparable(t: &Ty) -> bool {
    matches!(
        t,
        Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Bytes | Ty::Bool | Ty::Duration | Ty::Timestamp | Ty::Dyn
    )
}
