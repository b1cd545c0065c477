//! The CEL evaluator: walks the syntax tree with CEL's semantics (errors absorbed by `&&`/`||`
//! when the other side decides, commutatively; checked integer arithmetic; `all`/`exists` that
//! prefer a decisive result over an error), charging every step to a cost budget so that no rule
//! can run away: apiserver stops a rule at 1,000,000 cost units (`PerCallLimit`) and a whole
//! object at 10,000,000 (`RuntimeCELCostBudget`).

use std::sync::Arc;

use super::library;
use super::parser::{BinOp, Expr, Lit, Macro};
use super::value::{Key, ListKind, ListVal, MapVal, Val, MAX_DURATION_NANOS};

/// Why an evaluation stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// A CEL runtime error, in cel-go's words (`no such key: x`, `integer overflow`).
    Msg(String),
    /// The per-call cost limit was reached.
    CostLimit,
}

pub type R<T> = Result<T, EvalError>;

pub fn err<T>(m: impl Into<String>) -> R<T> {
    Err(EvalError::Msg(m.into()))
}

pub fn no_overload<T>() -> R<T> {
    err("no such overload")
}

/// A cost meter; `charge` fails once the limit is passed.
pub struct Meter {
    pub used: u64,
    pub limit: u64,
}

impl Meter {
    pub fn new(limit: u64) -> Meter {
        Meter { used: 0, limit }
    }
    pub fn charge(&mut self, n: u64) -> R<()> {
        self.used = self.used.saturating_add(n);
        if self.used > self.limit {
            return Err(EvalError::CostLimit);
        }
        Ok(())
    }
}

/// Variables in scope: the activation's (`self`, `oldSelf`) under the comprehension variables.
pub struct Scope<'a> {
    pub vars: Vec<(Arc<str>, Val)>,
    pub meter: &'a mut Meter,
}

impl Scope<'_> {
    fn lookup(&self, name: &str) -> Option<&Val> {
        self.vars.iter().rev().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }
}

pub fn eval(e: &Expr, sc: &mut Scope) -> R<Val> {
    sc.meter.charge(1)?;
    match e {
        Expr::Lit(_, l) => Ok(match l {
            Lit::Null => Val::Null,
            Lit::Bool(b) => Val::Bool(*b),
            Lit::Int(i) => Val::Int(*i),
            Lit::Uint(u) => Val::Uint(*u),
            Lit::Double(d) => Val::Double(*d),
            Lit::Str(s) => Val::Str(s.clone()),
            Lit::Bytes(b) => Val::Bytes(b.clone()),
        }),
        Expr::Ident(_, n) => match sc.lookup(n) {
            Some(v) => Ok(v.clone()),
            None => match &**n {
                // Type names are values too (`type(x) == int`).
                "int" | "uint" | "double" | "bool" | "string" | "bytes" | "list" | "map" | "null_type" | "type" => {
                    Ok(Val::Type(n.clone()))
                }
                _ => err(format!("no such attribute: {n}")),
            },
        },
        Expr::Select { operand, field, test, optional, .. } => {
            if super::check::is_net_type(operand, field, |n| sc.lookup(n).is_some()) {
                return Ok(Val::Type(Arc::from(format!("net.{field}").as_str())));
            }
            let v = eval(operand, sc)?;
            select(v, field, *test, *optional)
        }
        Expr::Index { operand, index, optional, .. } => {
            let v = eval(operand, sc)?;
            let i = eval(index, sc)?;
            index_val(v, &i, *optional)
        }
        Expr::Call { func, target, args, .. } => {
            let t = match target {
                Some(t) => Some(eval(t, sc)?),
                None => None,
            };
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(a, sc)?);
            }
            library::call(func, t, vals, sc.meter)
        }
        Expr::List(_, xs) => {
            let mut items = Vec::with_capacity(xs.len());
            for x in xs {
                items.push(eval(x, sc)?);
            }
            Ok(Val::list(items))
        }
        Expr::Map(_, kvs) => {
            let mut m = MapVal::default();
            for (k, v) in kvs {
                let kv = eval(k, sc)?;
                let key = Key::from_val(&kv)
                    .ok_or_else(|| EvalError::Msg(format!("unsupported key type: {}", kv.type_name())))?;
                let vv = eval(v, sc)?;
                if m.entries.insert(key, vv).is_some() {
                    return err(format!("Failed with repeated key: {}", display(&kv)));
                }
            }
            Ok(Val::Map(Arc::new(m)))
        }
        Expr::Not(_, x) => match eval(x, sc)? {
            Val::Bool(b) => Ok(Val::Bool(!b)),
            _ => no_overload(),
        },
        Expr::Neg(_, x) => match eval(x, sc)? {
            Val::Int(i) => i.checked_neg().map(Val::Int).ok_or_else(|| EvalError::Msg("integer overflow".into())),
            Val::Double(d) => Ok(Val::Double(-d)),
            Val::Duration(d) => Ok(Val::Duration(-d)),
            _ => no_overload(),
        },
        Expr::And(_, a, b) => {
            let l = eval(a, sc);
            if matches!(l, Ok(Val::Bool(false))) {
                return Ok(Val::Bool(false));
            }
            if matches!(l, Err(EvalError::CostLimit)) {
                return l;
            }
            let r = eval(b, sc);
            match (l, r) {
                (_, Ok(Val::Bool(false))) => Ok(Val::Bool(false)),
                (_, Err(EvalError::CostLimit)) => Err(EvalError::CostLimit),
                (Ok(Val::Bool(true)), Ok(Val::Bool(true))) => Ok(Val::Bool(true)),
                (Err(e), _) => Err(e),
                (_, Err(e)) => Err(e),
                _ => no_overload(),
            }
        }
        Expr::Or(_, a, b) => {
            let l = eval(a, sc);
            if matches!(l, Ok(Val::Bool(true))) {
                return Ok(Val::Bool(true));
            }
            if matches!(l, Err(EvalError::CostLimit)) {
                return l;
            }
            let r = eval(b, sc);
            match (l, r) {
                (_, Ok(Val::Bool(true))) => Ok(Val::Bool(true)),
                (_, Err(EvalError::CostLimit)) => Err(EvalError::CostLimit),
                (Ok(Val::Bool(false)), Ok(Val::Bool(false))) => Ok(Val::Bool(false)),
                (Err(e), _) => Err(e),
                (_, Err(e)) => Err(e),
                _ => no_overload(),
            }
        }
        Expr::Cond(_, c, t, f) => match eval(c, sc)? {
            Val::Bool(true) => eval(t, sc),
            Val::Bool(false) => eval(f, sc),
            _ => no_overload(),
        },
        Expr::Binary(_, op, a, b) => {
            let l = eval(a, sc)?;
            let r = eval(b, sc)?;
            binary(*op, l, r, sc.meter)
        }
        Expr::Comprehension { kind, range, var, var2, body, transform, .. } => {
            let r = eval(range, sc)?;
            comprehension(*kind, r, (var, var2.as_ref()), body, transform.as_deref(), sc)
        }
    }
}

fn select(v: Val, field: &str, test: bool, optional: bool) -> R<Val> {
    match v {
        Val::Map(m) => {
            let got = m.get(&Key::Str(Arc::from(field)));
            if test {
                return Ok(Val::Bool(got.is_some()));
            }
            if optional {
                return Ok(Val::Optional(got.cloned().map(Arc::new)));
            }
            got.cloned().ok_or_else(|| EvalError::Msg(format!("no such key: {field}")))
        }
        // `opt.?field` and `opt.field` on an optional map (optional chaining).
        Val::Optional(o) if optional || !test => match o {
            None => Ok(Val::Optional(None)),
            Some(inner) => {
                let r = select((*inner).clone(), field, test, true)?;
                Ok(r)
            }
        },
        _ => no_overload(),
    }
}

fn index_val(v: Val, i: &Val, optional: bool) -> R<Val> {
    match (&v, i) {
        (Val::Optional(None), _) => Ok(Val::Optional(None)),
        (Val::Optional(Some(inner)), _) => index_val((**inner).clone(), i, true),
        (Val::List(l), _) => {
            let idx = match i {
                Val::Int(n) => Some(*n),
                Val::Uint(u) => i64::try_from(*u).ok(),
                Val::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e18 => Some(*d as i64),
                _ => return no_overload(),
            };
            let got = idx.and_then(|n| usize::try_from(n).ok()).and_then(|n| l.items.get(n));
            if optional {
                return Ok(Val::Optional(got.cloned().map(Arc::new)));
            }
            match got {
                Some(x) => Ok(x.clone()),
                None => err(format!("index '{}' out of range in list size '{}'", display(i), l.items.len())),
            }
        }
        (Val::Map(m), _) => {
            let key = match i {
                Val::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e18 => Some(Key::Int(*d as i64)),
                _ => Key::from_val(i),
            };
            let Some(key) = key else { return no_overload() };
            let got = m.get(&key);
            if optional {
                return Ok(Val::Optional(got.cloned().map(Arc::new)));
            }
            match got {
                Some(x) => Ok(x.clone()),
                None => err(format!("no such key: {}", display(i))),
            }
        }
        _ => no_overload(),
    }
}

/// Runs a comprehension macro over `range` with its variable, or (two-variable forms) its
/// index or key variable and its element or value variable.
fn comprehension(
    kind: Macro,
    range: Val,
    (var, var2): (&Arc<str>, Option<&Arc<str>>),
    body: &Expr,
    transform: Option<&Expr>,
    sc: &mut Scope,
) -> R<Val> {
    if kind == Macro::OptMap {
        return match range {
            Val::Optional(None) => Ok(Val::Optional(None)),
            Val::Optional(Some(v)) => {
                sc.vars.push((var.clone(), (*v).clone()));
                let r = eval(body, sc);
                sc.vars.pop();
                Ok(Val::Optional(Some(Arc::new(r?))))
            }
            _ => no_overload(),
        };
    }
    // Each step's first variable, and its second when there are two.
    let items: Vec<(Val, Option<Val>)> = match (&range, var2.is_some()) {
        (Val::List(l), false) => l.items.iter().map(|x| (x.clone(), None)).collect(),
        (Val::List(l), true) => {
            l.items.iter().enumerate().map(|(i, x)| (Val::Int(i as i64), Some(x.clone()))).collect()
        }
        (Val::Map(m), false) => m.entries.keys().map(|k| (k.to_val(), None)).collect(),
        (Val::Map(m), true) => m.entries.iter().map(|(k, v)| (k.to_val(), Some(v.clone()))).collect(),
        _ => return no_overload(),
    };
    let transforms = matches!(kind, Macro::Map | Macro::TransformList | Macro::TransformMap | Macro::TransformMapEntry);
    let mut first_err: Option<EvalError> = None;
    let mut count = 0usize;
    let mut out: Vec<Val> = Vec::new();
    let mut out_map = MapVal::default();
    for (first, second) in items {
        sc.meter.charge(1)?;
        let key = first.clone();
        sc.vars.push((var.clone(), first));
        let two = match (var2, second) {
            (Some(v2), Some(x)) => {
                sc.vars.push((v2.clone(), x));
                true
            }
            _ => false,
        };
        let r = eval(body, sc);
        let r = match (transforms, r, transform) {
            (true, Ok(Val::Bool(true)), Some(t)) => eval(t, sc).map(Some),
            (true, Ok(Val::Bool(false)), Some(_)) => Ok(None),
            (true, Ok(_), Some(_)) => no_overload(),
            (_, r, _) => r.map(Some),
        };
        if two {
            sc.vars.pop();
        }
        let current = sc.vars.pop().map(|(_, v)| v);
        match r {
            Err(EvalError::CostLimit) => return Err(EvalError::CostLimit),
            Err(e) => match kind {
                // all/exists keep looking for a decisive element; the others fail at once.
                Macro::All | Macro::Exists => {
                    first_err.get_or_insert(e);
                }
                _ => return Err(e),
            },
            Ok(None) => {}
            Ok(Some(v)) => match kind {
                Macro::All => match v {
                    Val::Bool(false) => return Ok(Val::Bool(false)),
                    Val::Bool(true) => {}
                    _ => return no_overload(),
                },
                Macro::Exists => match v {
                    Val::Bool(true) => return Ok(Val::Bool(true)),
                    Val::Bool(false) => {}
                    _ => return no_overload(),
                },
                Macro::ExistsOne => match v {
                    Val::Bool(true) => count += 1,
                    Val::Bool(false) => {}
                    _ => return no_overload(),
                },
                Macro::Filter => match v {
                    Val::Bool(true) => {
                        if let Some(c) = current {
                            out.push(c);
                        }
                    }
                    Val::Bool(false) => {}
                    _ => return no_overload(),
                },
                Macro::Map | Macro::TransformList => {
                    sc.meter.charge(1)?;
                    out.push(v);
                }
                Macro::TransformMap => {
                    sc.meter.charge(1)?;
                    map_insert(&mut out_map, &key, v)?;
                }
                Macro::TransformMapEntry => {
                    let Val::Map(entry) = v else { return no_overload() };
                    sc.meter.charge(entry.entries.len() as u64)?;
                    for (k, x) in &entry.entries {
                        map_insert(&mut out_map, &k.to_val(), x.clone())?;
                    }
                }
                Macro::OptMap => {}
            },
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(match kind {
        Macro::All => Val::Bool(true),
        Macro::Exists => Val::Bool(false),
        Macro::ExistsOne => Val::Bool(count == 1),
        Macro::TransformMap | Macro::TransformMapEntry => Val::Map(Arc::new(out_map)),
        _ => Val::list(out),
    })
}

/// Adds a new entry to a map being built (cel-go's `cel.@mapInsert`): a key already there, by
/// CEL equality (`0` and `0u` are the same key), is an error.
fn map_insert(m: &mut MapVal, k: &Val, v: Val) -> R<()> {
    let key = Key::from_val(k).ok_or_else(|| EvalError::Msg(format!("unsupported key type: {}", k.type_name())))?;
    if m.get(&key).is_some() {
        return err(format!("insert failed: key {} already exists", display(k)));
    }
    m.entries.insert(key, v);
    Ok(())
}

/// The binary operators.
pub fn binary(op: BinOp, l: Val, r: Val, meter: &mut Meter) -> R<Val> {
    use std::cmp::Ordering::*;
    let overflow = || EvalError::Msg("integer overflow".into());
    match op {
        BinOp::Eq | BinOp::Ne => {
            meter.charge(size_of(&l).min(size_of(&r)) / 10)?;
            let eq = l.equals(&r);
            Ok(Val::Bool(if op == BinOp::Eq { eq } else { !eq }))
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let Some(o) = l.compare(&r) else {
                // NaN compares false with everything; other mismatches have no overload.
                return if l.is_numeric() && r.is_numeric() { Ok(Val::Bool(false)) } else { no_overload() };
            };
            Ok(Val::Bool(match op {
                BinOp::Lt => o == Less,
                BinOp::Le => o != Greater,
                BinOp::Gt => o == Greater,
                _ => o != Less,
            }))
        }
        BinOp::In => match &r {
            Val::List(list) => {
                meter.charge(list.items.len() as u64)?;
                Ok(Val::Bool(list.items.iter().any(|x| x.equals(&l))))
            }
            Val::Map(m) => Ok(Val::Bool(match &l {
                Val::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e18 => m.get(&Key::Int(*d as i64)).is_some(),
                _ => Key::from_val(&l).is_some_and(|k| m.get(&k).is_some()),
            })),
            _ => no_overload(),
        },
        BinOp::Add => match (l, r) {
            (Val::Int(a), Val::Int(b)) => a.checked_add(b).map(Val::Int).ok_or_else(overflow),
            (Val::Uint(a), Val::Uint(b)) => a.checked_add(b).map(Val::Uint).ok_or_else(overflow),
            (Val::Double(a), Val::Double(b)) => Ok(Val::Double(a + b)),
            (Val::Str(a), Val::Str(b)) => {
                meter.charge(((a.len() + b.len()) / 10) as u64)?;
                Ok(Val::Str(Arc::from(format!("{a}{b}").as_str())))
            }
            (Val::Bytes(a), Val::Bytes(b)) => {
                meter.charge(((a.len() + b.len()) / 10) as u64)?;
                Ok(Val::Bytes([&a[..], &b[..]].concat().into()))
            }
            (Val::List(a), Val::List(b)) => {
                meter.charge((a.items.len() + b.items.len()) as u64)?;
                Ok(Val::List(Arc::new(concat_lists(&a, &b))))
            }
            (Val::Duration(a), Val::Duration(b)) => duration(a + b),
            (Val::Timestamp(t), Val::Duration(d)) | (Val::Duration(d), Val::Timestamp(t)) => timestamp_add(t, d),
            _ => no_overload(),
        },
        BinOp::Sub => match (l, r) {
            (Val::Int(a), Val::Int(b)) => a.checked_sub(b).map(Val::Int).ok_or_else(overflow),
            (Val::Uint(a), Val::Uint(b)) => a.checked_sub(b).map(Val::Uint).ok_or_else(overflow),
            (Val::Double(a), Val::Double(b)) => Ok(Val::Double(a - b)),
            (Val::Duration(a), Val::Duration(b)) => duration(a - b),
            (Val::Timestamp(t), Val::Duration(d)) => timestamp_add(t, -d),
            (Val::Timestamp(a), Val::Timestamp(b)) => {
                let d = (a - b).num_nanoseconds().map(i128::from).ok_or_else(overflow)?;
                duration(d)
            }
            _ => no_overload(),
        },
        BinOp::Mul => match (l, r) {
            (Val::Int(a), Val::Int(b)) => a.checked_mul(b).map(Val::Int).ok_or_else(overflow),
            (Val::Uint(a), Val::Uint(b)) => a.checked_mul(b).map(Val::Uint).ok_or_else(overflow),
            (Val::Double(a), Val::Double(b)) => Ok(Val::Double(a * b)),
            _ => no_overload(),
        },
        BinOp::Div => match (l, r) {
            (Val::Int(_), Val::Int(0)) | (Val::Uint(_), Val::Uint(0)) => err("division by zero"),
            (Val::Int(a), Val::Int(b)) => a.checked_div(b).map(Val::Int).ok_or_else(overflow),
            (Val::Uint(a), Val::Uint(b)) => Ok(Val::Uint(a / b)),
            (Val::Double(a), Val::Double(b)) => Ok(Val::Double(a / b)),
            _ => no_overload(),
        },
        BinOp::Rem => match (l, r) {
            (Val::Int(_), Val::Int(0)) | (Val::Uint(_), Val::Uint(0)) => err("modulus by zero"),
            (Val::Int(a), Val::Int(b)) => a.checked_rem(b).map(Val::Int).ok_or_else(overflow),
            (Val::Uint(a), Val::Uint(b)) => Ok(Val::Uint(a % b)),
            _ => no_overload(),
        },
    }
}

/// `X + Y` of lists: list-type set and map lists concatenate by their semantics (a union, a merge
/// by key keeping X's positions), as apiextensions' list values do.
fn concat_lists(a: &ListVal, b: &ListVal) -> ListVal {
    match (&a.kind, &b.kind) {
        (ListKind::Set, ListKind::Set) => {
            let mut items = a.items.clone();
            for y in &b.items {
                if !items.iter().any(|x| x.equals(y)) {
                    items.push(y.clone());
                }
            }
            ListVal { items, kind: ListKind::Set }
        }
        (ListKind::Map(ka), ListKind::Map(kb)) if ka == kb => {
            let key_of = |v: &Val| -> Vec<Option<Val>> {
                ka.iter()
                    .map(|k| match v {
                        Val::Map(m) => m.get(&Key::Str(k.clone())).cloned(),
                        _ => None,
                    })
                    .collect()
            };
            let same = |x: &[Option<Val>], y: &[Option<Val>]| {
                x.iter().zip(y).all(|(p, q)| match (p, q) {
                    (Some(p), Some(q)) => p.equals(q),
                    (None, None) => true,
                    _ => false,
                })
            };
            let mut items = a.items.clone();
            for y in &b.items {
                let ky = key_of(y);
                match items.iter().position(|x| same(&key_of(x), &ky)) {
                    Some(i) => items[i] = y.clone(),
                    None => items.push(y.clone()),
                }
            }
            ListVal { items, kind: a.kind.clone() }
        }
        _ => ListVal { items: a.items.iter().chain(b.items.iter()).cloned().collect(), kind: ListKind::Atomic },
    }
}

pub fn duration(d: i128) -> R<Val> {
    if d.abs() > MAX_DURATION_NANOS {
        return err("duration out of range");
    }
    Ok(Val::Duration(d))
}

fn timestamp_add(t: chrono::DateTime<chrono::Utc>, d: i128) -> R<Val> {
    let nanos = i64::try_from(d).map_err(|_| EvalError::Msg("timestamp out of range".into()))?;
    let out = t
        .checked_add_signed(chrono::Duration::nanoseconds(nanos))
        .ok_or_else(|| EvalError::Msg("timestamp out of range".into()))?;
    library::check_timestamp(out)
}

/// A rough size for cost accounting: characters of strings, elements of collections.
pub fn size_of(v: &Val) -> u64 {
    match v {
        Val::Str(s) => s.len() as u64,
        Val::Bytes(b) => b.len() as u64,
        Val::List(l) => l.items.len() as u64,
        Val::Map(m) => m.entries.len() as u64,
        _ => 1,
    }
}

/// How cel-go shows a value inside an error message (`no such key: x`, `index '3'`).
pub fn display(v: &Val) -> String {
    match v {
        Val::Str(s) => s.to_string(),
        other => library::to_string(other).unwrap_or_else(|_| other.type_name().to_string()),
    }
}
