//! Static cost estimation of a checked rule, as cel-go's `checker.Cost` with apiserver's library
//! cost model (k8s.io/apiserver/pkg/cel/library/cost.go) does it when a CRD is written: the
//! worst-case cost of one evaluation, with the sizes of strings, lists and maps bounded by the
//! schema's `maxLength`, `maxItems` and `maxProperties`, and by the 3 MiB request limit where the
//! schema gives no bound. apiextensions refuses a rule whose estimate (times the number of times
//! it can run, from the enclosing lists' and maps' bounds) passes 10,000,000, and a CRD whose rules
//! together pass 100,000,000.
//!
//! The units follow cel-go's: 1 per variable, field selection and plain function call, 10 and 30
//! for list and map literals, a tenth of a unit per character a string function traverses, and a
//! quarter per character of a regular expression. It need not agree with upstream to the unit;
//! it does agree on which rules are far over the limit (a comprehension over an unbounded list of
//! unbounded strings) and which are far under.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::check::{self, Env, Ty};
use super::parser::{BinOp, Expr, Lit, Macro};
use super::value::{escape, visible};

/// The largest estimated cost of one rule (apiextensions' `StaticEstimatedCostLimit`).
pub const STATIC_ESTIMATED_COST_LIMIT: u64 = 10_000_000;
/// The largest estimated cost of all rules of a CRD (`StaticEstimatedCRDCostLimit`).
pub const STATIC_ESTIMATED_CRD_COST_LIMIT: u64 = 100_000_000;
/// The largest request apiserver accepts, which bounds what a schema does not.
const MAX_REQUEST_SIZE: u64 = 3 * 1024 * 1024;

const STRING_TRAVERSAL: f64 = 0.1;
const REGEX_LENGTH: f64 = 0.25;

/// The size bounds of the values at a schema node (apiserver's `DeclType.MaxElements` and
/// `MinSerializedSize`).
#[derive(Debug, Default)]
pub struct Sz {
    /// The most characters (strings, ×4 for a maxLength in runes), items, or entries.
    pub max: u64,
    /// The fewest bytes a value takes serialized.
    pub min_size: u64,
    /// List items or map values.
    pub elem: Option<Arc<Sz>>,
    /// Object properties (escaped names).
    pub fields: BTreeMap<String, Arc<Sz>>,
    /// Whether the node is a map (keyed by strings of unknown length).
    pub is_map: bool,
}

fn int(s: &Value, k: &str) -> Option<u64> {
    s.get(k).and_then(|v| v.as_i64()).map(|n| n.max(0) as u64)
}

fn flag(s: &Value, k: &str) -> bool {
    s.get(k) == Some(&Value::Bool(true))
}

/// The size bounds of schema node `s` (None where rules cannot see it), as `SchemaDeclType`
/// derives them.
pub fn schema_sizes(s: &Value, resource: bool) -> Option<Arc<Sz>> {
    let unbounded_string = MAX_REQUEST_SIZE - 2;
    if flag(s, "x-kubernetes-int-or-string") {
        let max = int(s, "maxLength").map(|n| n.saturating_mul(4)).unwrap_or(unbounded_string);
        return Some(Arc::new(Sz { max, min_size: 1, ..Sz::default() }));
    }
    if !visible(s) {
        return None;
    }
    let sz = match s.get("type").and_then(|t| t.as_str()).unwrap_or("") {
        "array" => {
            let items = s.get("items")?;
            let el = schema_sizes(items, flag(items, "x-kubernetes-embedded-resource"))?;
            let max = int(s, "maxItems").unwrap_or((MAX_REQUEST_SIZE - 2) / (el.min_size + 1));
            Sz { max, min_size: 2, elem: Some(el), ..Sz::default() }
        }
        "object" => {
            if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
                let el = schema_sizes(a, flag(a, "x-kubernetes-embedded-resource"))?;
                let max = int(s, "maxProperties").unwrap_or((MAX_REQUEST_SIZE - 2) / (el.min_size + 6));
                return Some(Arc::new(Sz { max, min_size: 2, elem: Some(el), is_map: true, ..Sz::default() }));
            }
            let required: Vec<&str> =
                s.get("required").and_then(|r| r.as_array()).into_iter().flatten().filter_map(|r| r.as_str()).collect();
            let mut fields = BTreeMap::new();
            let mut min_size = 2u64;
            for (k, ps) in s.get("properties").and_then(|p| p.as_object()).into_iter().flatten() {
                if resource && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let Some(f) = schema_sizes(ps, flag(ps, "x-kubernetes-embedded-resource")) else { continue };
                if required.contains(&k.as_str()) && ps.get("default").is_none() {
                    min_size += k.len() as u64 + f.min_size + 4;
                }
                if let Some(name) = escape(k) {
                    fields.insert(name, f);
                }
            }
            if resource {
                let string = || Arc::new(Sz { max: unbounded_string, min_size: 2, ..Sz::default() });
                fields.insert("apiVersion".into(), string());
                fields.insert("kind".into(), string());
                let mut meta = BTreeMap::new();
                meta.insert("name".into(), string());
                meta.insert("generateName".into(), string());
                fields.insert("metadata".into(), Arc::new(Sz { min_size: 2, fields: meta, ..Sz::default() }));
            }
            Sz { min_size, fields, ..Sz::default() }
        }
        "string" => {
            let (max, min_size) = match s.get("format").and_then(|f| f.as_str()) {
                Some("byte") => (int(s, "maxLength").unwrap_or(unbounded_string), 2),
                Some("duration") => (32, 3),
                Some("date") => (12, 12),
                Some("date-time") => (32, 21),
                _ => {
                    let max = match (int(s, "maxLength"), s.get("enum").and_then(|e| e.as_array())) {
                        (Some(n), _) => n.saturating_mul(4),
                        (None, Some(e)) if !e.is_empty() => {
                            e.iter().filter_map(|v| v.as_str()).map(|v| v.len() as u64).max().unwrap_or(0)
                        }
                        _ => unbounded_string,
                    };
                    (max, 2)
                }
            };
            Sz { max, min_size, ..Sz::default() }
        }
        "boolean" => Sz { min_size: 4, ..Sz::default() },
        "integer" | "number" => Sz { min_size: 1, ..Sz::default() },
        _ => return None,
    };
    Some(Arc::new(sz))
}

/// How many times a value at a node with this minimum serialized size can occur in one request
/// (the fallback cardinality of a rule under an unbounded list or map).
pub fn max_cardinality(min_size: u64) -> u64 {
    MAX_REQUEST_SIZE / (min_size + 1)
}

/// By how much the children of schema node `s` can repeat: a list's maxItems, a map's
/// maxProperties (None: unbounded), 1 for objects and scalars.
pub fn max_elements(s: &Value) -> Option<u64> {
    match s.get("type").and_then(|t| t.as_str()) {
        Some("object") if s.get("additionalProperties").is_some_and(|a| a.is_object()) => int(s, "maxProperties"),
        Some("array") => int(s, "maxItems"),
        _ => Some(1),
    }
}

/// A cost or size range.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Est {
    min: u64,
    max: u64,
}

const UNKNOWN: Est = Est { min: 0, max: u64::MAX };

fn fixed(n: u64) -> Est {
    Est { min: n, max: n }
}

impl Est {
    fn add(self, o: Est) -> Est {
        Est { min: self.min.saturating_add(o.min), max: self.max.saturating_add(o.max) }
    }
    fn mul(self, o: Est) -> Est {
        Est { min: self.min.saturating_mul(o.min), max: self.max.saturating_mul(o.max) }
    }
    fn factor(self, f: f64) -> Est {
        let m = |x: u64| {
            let v = (x as f64 * f).ceil();
            if v >= 1.8e19 {
                u64::MAX
            } else {
                v as u64
            }
        };
        Est { min: m(self.min), max: m(self.max) }
    }
    fn union(self, o: Est) -> Est {
        Est { min: self.min.min(o.min), max: self.max.max(o.max) }
    }
}

/// What the estimate knows of one subexpression.
#[derive(Clone)]
struct Node {
    cost: Est,
    /// The size computed from the expression itself (literals, results of string functions).
    size: Option<Est>,
    /// The schema node the value comes from.
    sz: Option<Arc<Sz>>,
    /// For list and map literals: the size range of the elements.
    elem: Option<Est>,
}

impl Node {
    fn cost(cost: Est) -> Node {
        Node { cost, size: None, sz: None, elem: None }
    }
}

struct Var {
    name: Arc<str>,
    sz: Option<Arc<Sz>>,
    size: Option<Est>,
}

struct Cx {
    vars: Vec<Var>,
    types: Env,
}

impl Cx {
    fn ty(&mut self, e: &Expr) -> Ty {
        check::check(e, &mut self.types).unwrap_or(Ty::Dyn)
    }
}

fn size_of(n: &Node, ty: &Ty) -> Est {
    if let Some(s) = n.size {
        return s;
    }
    if let Some(z) = &n.sz {
        return Est { min: 0, max: z.max };
    }
    match ty {
        Ty::Bool | Ty::Int | Ty::Uint | Ty::Double | Ty::Duration | Ty::Timestamp | Ty::Null => fixed(1),
        _ => UNKNOWN,
    }
}

/// The worst-case cost of one evaluation of `e` (already type-checked with `vars` in scope),
/// with each variable's values bounded by its schema node.
pub fn estimate(e: &Expr, vars: &[(&str, Ty, Option<Arc<Sz>>)]) -> u64 {
    let mut cx = Cx {
        vars: vars.iter().map(|(n, _, z)| Var { name: Arc::from(*n), sz: z.clone(), size: None }).collect(),
        types: Env::new(vars.iter().map(|(n, t, _)| (Arc::from(*n), t.clone())).collect()),
    };
    node(e, &mut cx).cost.max
}

fn node(e: &Expr, cx: &mut Cx) -> Node {
    match e {
        Expr::Lit(_, l) => Node {
            cost: fixed(0),
            size: match l {
                Lit::Str(s) => Some(fixed(s.chars().count() as u64)),
                Lit::Bytes(b) => Some(fixed(b.len() as u64)),
                _ => None,
            },
            sz: None,
            elem: None,
        },
        Expr::Ident(_, n) => {
            let v = cx.vars.iter().rev().find(|v| v.name == *n);
            Node { cost: fixed(1), size: v.and_then(|v| v.size), sz: v.and_then(|v| v.sz.clone()), elem: None }
        }
        Expr::Select { operand, field, test, optional, .. } => {
            if check::is_net_type(operand, field, |n| cx.vars.iter().any(|v| &*v.name == n)) {
                return Node::cost(fixed(1));
            }
            let o = node(operand, cx);
            if *test {
                return Node::cost(o.cost);
            }
            let ot = cx.ty(operand);
            let extra = if *optional || matches!(ot, Ty::Object(_) | Ty::Map(..) | Ty::Optional(_)) { 1 } else { 0 };
            let sz =
                o.sz.as_ref().and_then(|z| if z.is_map { z.elem.clone() } else { z.fields.get(&**field).cloned() });
            Node { cost: o.cost.add(fixed(extra)), size: None, sz, elem: None }
        }
        Expr::Index { operand, index, .. } => {
            let o = node(operand, cx);
            let i = node(index, cx);
            let sz = o.sz.as_ref().and_then(|z| z.elem.clone());
            Node {
                cost: o.cost.add(i.cost).add(fixed(1)),
                size: if sz.is_none() { o.elem } else { None },
                sz,
                elem: None,
            }
        }
        Expr::List(_, xs) => {
            let mut cost = fixed(10);
            let mut elem: Option<Est> = None;
            for x in xs {
                let n = node(x, cx);
                let t = cx.ty(x);
                let s = size_of(&n, &t);
                elem = Some(elem.map_or(s, |e| e.union(s)));
                cost = cost.add(n.cost);
            }
            Node { cost, size: Some(fixed(xs.len() as u64)), sz: None, elem }
        }
        Expr::Map(_, kvs) => {
            let mut cost = fixed(30);
            let mut elem: Option<Est> = None;
            for (k, v) in kvs {
                cost = cost.add(node(k, cx).cost);
                let n = node(v, cx);
                let t = cx.ty(v);
                let s = size_of(&n, &t);
                elem = Some(elem.map_or(s, |e| e.union(s)));
                cost = cost.add(n.cost);
            }
            Node { cost, size: Some(fixed(kvs.len() as u64)), sz: None, elem }
        }
        Expr::Not(_, x) | Expr::Neg(_, x) => Node::cost(node(x, cx).cost.add(fixed(1))),
        Expr::And(_, a, b) | Expr::Or(_, a, b) => {
            let (a, b) = (node(a, cx), node(b, cx));
            Node::cost(Est { min: a.cost.min, max: a.cost.max.saturating_add(b.cost.max) })
        }
        Expr::Cond(_, c, t, f) => {
            let c = node(c, cx);
            let (tt, ft) = (cx.ty(t), cx.ty(f));
            let (tn, fn_) = (node(t, cx), node(f, cx));
            let size = size_of(&tn, &tt).union(size_of(&fn_, &ft));
            Node { cost: c.cost.add(tn.cost.union(fn_.cost)), size: Some(size), sz: None, elem: None }
        }
        Expr::Binary(_, op, a, b) => binary(*op, a, b, cx),
        Expr::Call { target, func, args, .. } => call(target.as_deref(), func, args, cx),
        Expr::Comprehension { kind, range, var, var2, body, transform, .. } => {
            let r = node(range, cx);
            let rt = cx.ty(range);
            let count = size_of(&r, &rt);
            // The variables' size bounds and types (see `check`): with two variables, a list's
            // index (an int) and element, a map's key and value.
            let elem_sz = || r.sz.as_ref().and_then(|z| z.elem.clone());
            let key = || Some(Arc::new(Sz::default()));
            let (first, second) = match (&rt, var2.is_some()) {
                (Ty::List(el), false) => ((elem_sz(), r.elem, (**el).clone()), None),
                (Ty::List(el), true) => ((None, None, Ty::Int), Some((elem_sz(), r.elem, (**el).clone()))),
                (Ty::Map(k, v), two) => ((key(), None, (**k).clone()), two.then(|| (elem_sz(), None, (**v).clone()))),
                (Ty::Optional(t), _) => ((r.sz.clone(), r.size, (**t).clone()), None),
                (Ty::Object(_), two) => ((key(), None, Ty::String), two.then_some((None, None, Ty::Dyn))),
                (_, two) => ((None, None, Ty::Dyn), two.then_some((None, None, Ty::Dyn))),
            };
            let mut bound = vec![(var.clone(), first)];
            if let (Some(v2), Some(second)) = (var2, second) {
                bound.push((v2.clone(), second));
            }
            for (name, (sz, size, ty)) in &bound {
                cx.vars.push(Var { name: name.clone(), sz: sz.clone(), size: *size });
                cx.types.push(name.clone(), ty.clone());
            }
            let b = node(body, cx);
            let t = transform.as_ref().map(|t| node(t, cx));
            for _ in &bound {
                cx.vars.pop();
                cx.types.pop();
            }
            let tcost = t.map(|t| t.cost).unwrap_or(fixed(0));
            // cel-go's expansions: the accumulator's initial value and the result (fixed), the
            // loop condition and step (per element). `cel.@mapInsert` is a plain call (1) over
            // the accumulator (1), for transformMap the key variable (1), and the value.
            let (fixed_cost, per_item) = match kind {
                Macro::All => (fixed(1), fixed(3).add(b.cost)),
                Macro::Exists => (fixed(1), fixed(4).add(b.cost)),
                Macro::ExistsOne => (fixed(2), fixed(2).add(b.cost)),
                Macro::Map | Macro::TransformList => (fixed(11), fixed(12).add(b.cost).add(tcost)),
                Macro::TransformMap => (fixed(31), fixed(3).add(b.cost).add(tcost)),
                Macro::TransformMapEntry => (fixed(31), fixed(2).add(b.cost).add(tcost)),
                Macro::Filter => (fixed(11), fixed(13).add(b.cost)),
                Macro::OptMap => return Node::cost(r.cost.add(r.cost).add(fixed(3)).add(b.cost)),
            };
            let cost = r.cost.add(fixed_cost).add(count.mul(per_item));
            let builds = matches!(
                kind,
                Macro::Map | Macro::Filter | Macro::TransformList | Macro::TransformMap | Macro::TransformMapEntry
            );
            let size = builds.then_some(Est { min: 0, max: count.max });
            Node { cost, size, sz: None, elem: None }
        }
    }
}

fn binary(op: BinOp, a: &Expr, b: &Expr, cx: &mut Cx) -> Node {
    let (an, bn) = (node(a, cx), node(b, cx));
    let (at, bt) = (cx.ty(a), cx.ty(b));
    let args = an.cost.add(bn.cost);
    let (asz, bsz) = (size_of(&an, &at), size_of(&bn, &bt));
    let stringish = |t: &Ty| matches!(t, Ty::String | Ty::Bytes);
    match op {
        BinOp::Eq | BinOp::Ne => Node::cost(compare_cost(asz, bsz).add(args)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge if stringish(&at) && stringish(&bt) => {
            Node::cost(compare_cost(asz, bsz).add(args))
        }
        BinOp::In if matches!(bt, Ty::List(_)) => Node::cost(bsz.add(args)),
        BinOp::Add if stringish(&at) && stringish(&bt) => {
            let size = asz.add(bsz);
            Node { cost: size.factor(STRING_TRAVERSAL).add(args), size: Some(size), sz: None, elem: None }
        }
        BinOp::Add if matches!(at, Ty::List(_)) => {
            let elem = match (an.elem, bn.elem) {
                (Some(x), Some(y)) => Some(x.union(y)),
                _ => None,
            };
            Node { cost: fixed(1).add(args), size: Some(asz.add(bsz)), sz: None, elem }
        }
        _ => Node::cost(fixed(1).add(args)),
    }
}

/// Equality and ordering of strings, bytes and collections: a traversal of the smaller side.
fn compare_cost(a: Est, b: Est) -> Est {
    let smallest = a.max.min(b.max);
    Est { min: u64::from(smallest > 0), max: smallest }.factor(STRING_TRAVERSAL)
}

fn call(target: Option<&Expr>, f: &str, args: &[Expr], cx: &mut Cx) -> Node {
    let tn = target.map(|t| node(t, cx));
    let tt = target.map(|t| cx.ty(t)).unwrap_or(Ty::Dyn);
    let mut arg_cost = tn.as_ref().map(|t| t.cost).unwrap_or(fixed(0));
    let mut sizes = Vec::with_capacity(args.len());
    let mut arg_tys = Vec::with_capacity(args.len());
    for a in args {
        let n = node(a, cx);
        let t = cx.ty(a);
        arg_cost = arg_cost.add(n.cost);
        sizes.push(size_of(&n, &t));
        arg_tys.push(t);
    }
    let ts = tn.as_ref().map(|n| size_of(n, &tt)).unwrap_or(UNKNOWN);
    let arg = |i: usize| sizes.get(i).copied().unwrap_or(UNKNOWN);
    let one = fixed(1);
    let done = |cost: Est, size: Option<Est>| Node { cost: cost.add(arg_cost), size, sz: None, elem: None };
    // The size bounds of a list target's elements, and their type.
    let elem = || -> (Est, Ty) {
        let el_ty = match &tt {
            Ty::List(t) => (**t).clone(),
            _ => Ty::Dyn,
        };
        let n = tn.as_ref();
        let es = match (n.and_then(|n| n.sz.as_ref()).and_then(|z| z.elem.as_ref()), n.and_then(|n| n.elem)) {
            (Some(z), _) => Est { min: 0, max: z.max },
            (None, Some(e)) => e,
            _ => size_of(&Node::cost(fixed(0)), &el_ty),
        };
        (es, el_ty)
    };
    match (target.is_some(), f) {
        (false, "dyn") => {
            let mut n = args.first().map(|a| node(a, cx)).unwrap_or(Node::cost(fixed(0)));
            n.cost = n.cost.add(one);
            n
        }
        (true, "startsWith" | "endsWith") => done(arg(0).factor(STRING_TRAVERSAL), None),
        (true, "contains") => done(ts.factor(STRING_TRAVERSAL).mul(arg(0).factor(STRING_TRAVERSAL)), None),
        (true, "matches") => done(ts.add(one).factor(STRING_TRAVERSAL).mul(arg(0).factor(REGEX_LENGTH)), None),
        (true, "find" | "findAll") => {
            let cost = ts.add(one).factor(STRING_TRAVERSAL).mul(arg(0).factor(REGEX_LENGTH));
            done(cost, Some(Est { min: 0, max: ts.max }))
        }
        (true, "lowerAscii" | "upperAscii" | "substring" | "trim" | "reverse") => {
            done(ts.factor(STRING_TRAVERSAL), Some(ts))
        }
        (true, "replace") if args.len() >= 2 => {
            let (from, with) = (arg(0), arg(1));
            let max = if from.min == 0 {
                ts.max.saturating_add(1).saturating_mul(with.max).saturating_add(ts.max)
            } else if with.max <= from.min {
                ts.max
            } else {
                ts.max.div_ceil(from.min).saturating_mul(with.max)
            };
            done(ts.factor(2.0 * STRING_TRAVERSAL), Some(Est { min: 0, max }))
        }
        (true, "split") => done(ts.factor(2.0 * STRING_TRAVERSAL), Some(Est { min: 0, max: ts.max })),
        (true, "join") => {
            let (es, _) = elem();
            let mut sz = ts.mul(es);
            if let Some(sep) = sizes.first() {
                sz = sz.add(sep.mul(Est { min: ts.min.saturating_sub(1), max: ts.max.saturating_sub(1) }));
            }
            done(sz.factor(STRING_TRAVERSAL), Some(sz))
        }
        (true, "isSorted" | "sum" | "min" | "max" | "indexOf" | "lastIndexOf") => {
            if matches!(tt, Ty::String) {
                return done(ts.factor(STRING_TRAVERSAL), None);
            }
            let (es, el_ty) = elem();
            let mut per = one;
            if matches!(el_ty, Ty::String | Ty::Bytes) {
                per = per.add(es.factor(STRING_TRAVERSAL));
            }
            done(ts.mul(per), None)
        }
        (true, "format") => done(ts.factor(STRING_TRAVERSAL), Some(ts.add(arg(0)))),
        (false, "strings.quote") => {
            let s = arg(0);
            let size = Est { min: s.min.saturating_add(2), max: s.max.saturating_mul(2).saturating_add(2) };
            done(s.factor(STRING_TRAVERSAL), Some(size))
        }
        (false, "url") => done(arg(0).factor(STRING_TRAVERSAL), None),
        (false, "bytes" | "string") if matches!(arg_tys.first(), Some(Ty::String | Ty::Bytes)) => {
            done(arg(0).factor(STRING_TRAVERSAL), Some(arg(0)))
        }
        (true, "containsIP" | "containsCIDR") => {
            let mut cost = Est { min: 1, max: 4 };
            if f == "containsCIDR" {
                cost = cost.add(Est { min: 1, max: 2 }).add(one);
            }
            if matches!(arg_tys.first(), Some(Ty::String)) {
                cost = cost.add(arg(0).factor(STRING_TRAVERSAL));
            }
            done(cost, None)
        }
        _ => done(one, None),
    }
}

/// Go's rendering of how far over budget a cost is (`getCostErrorMessage`).
pub fn cost_error_message(what: &str, cost: u64, limit: u64) -> String {
    let f = cost as f64 / limit as f64;
    let factor = if f > 100.0 {
        "more than 100x".to_string()
    } else if f < 1.5 {
        format!("{f:.6}x")
    } else {
        format!("{f:.1}x")
    };
    format!("{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cost_of(rule: &str, schema: Value) -> u64 {
        let ty = check::schema_type(&schema, false).unwrap();
        let sz = schema_sizes(&schema, false);
        let p = super::super::Program::compile(rule, &[("self", ty.clone())], super::super::Want::Bool).unwrap();
        p.estimated_cost(&[("self", ty, sz)])
    }

    #[test]
    fn unbounded_comprehensions_over_unbounded_strings_are_far_over_the_limit() {
        let unbounded = json!({"type": "array", "items": {"type": "string"}});
        let c = cost_of("self.all(x, x.matches('^[a-z]+$'))", unbounded);
        assert!(c > 100 * STATIC_ESTIMATED_COST_LIMIT, "{c}");
        let bounded = json!({"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 64}});
        let c = cost_of("self.all(x, x.matches('^[a-z]+$'))", bounded);
        // 10 items × (3 + 1 + ⌈257 × 0.1⌉ × ⌈8 × 0.25⌉) + 2.
        assert_eq!(c, 10 * (3 + 1 + 26 * 2) + 2);
    }

    #[test]
    fn costs_follow_cel_gos_units() {
        let s = json!({"type": "object", "properties": {
            "a": {"type": "integer"}, "b": {"type": "integer"},
            "name": {"type": "string", "maxLength": 10},
            "tags": {"type": "array", "maxItems": 5, "items": {"type": "string", "maxLength": 4}},
            "m": {"type": "object", "maxProperties": 3, "additionalProperties": {"type": "string"}}}});
        // Two selections of self (1 + 1 each) and the comparison (1).
        assert_eq!(cost_of("self.a < self.b", s.clone()), 5);
        assert_eq!(cost_of("self.name.startsWith('ab')", s.clone()), 2 + 1);
        // ⌈40 × 0.1⌉ × ⌈2 × 0.1⌉ for contains.
        assert_eq!(cost_of("self.name.contains('ab')", s.clone()), 2 + 4);
        assert_eq!(cost_of("self.tags.exists(t, t == 'x')", s.clone()), 2 + 1 + 5 * (4 + 1 + 1));
        assert_eq!(cost_of("has(self.name)", s.clone()), 1);
        // Per key: the loop (3), the index (1 + self.m + k = 4), size() (1) and the comparison (1).
        assert_eq!(cost_of("self.m.all(k, self.m[k].size() < 3)", s.clone()), 2 + 1 + 3 * (3 + 4 + 1 + 1));
        let c = cost_of("self.tags.all(a, self.tags.all(b, a != b || true))", s);
        assert!(c > 5 * 5 && c < 1000, "{c}");
    }

    #[test]
    fn two_variable_comprehensions_cost_as_cel_go_estimates_them() {
        let s = json!({"type": "object", "properties": {
            "tags": {"type": "array", "maxItems": 5, "items": {"type": "string", "maxLength": 4}},
            "m": {"type": "object", "maxProperties": 3, "additionalProperties": {"type": "string", "maxLength": 2}}}});
        // The maxima of cel-go's own estimates (ext/comprehensions_test.go).
        for (rule, cost) in [
            ("[1, 2, 3, 4].all(i, v, i < 5 && v > 0)", 39),
            ("{1: 1, 2: 2, 3: 3}.all(i, v, i < 5 && v > 0)", 52),
            ("[].transformList(i, v, v) == []", 31),
            ("[1].transformList(i, v, i) == [0]", 45),
            ("[3, 2, 1].transformList(i, v, v > i, v) == [3, 2]", 80),
            ("{1: 2}.transformMap(k, v, v + 1) == {1: 3}", 97),
            ("{1: 2, 3: 4, 5: 6}.transformMap(k, v, k % 3 == 0, v + 1) == {3: 5}", 116),
            ("{1: 2}.transformMapEntry(k, v, {v: k}) == {2: 1}", 126),
        ] {
            assert_eq!(cost_of(rule, s.clone()), cost, "{rule}");
        }
        // Over the schema's bounds: 3 entries × (3 + v.size() < 3), and the value's maxLength
        // (×4 for runes) for startsWith.
        assert_eq!(cost_of("self.m.all(k, v, v.size() < 3)", s.clone()), 2 + 1 + 3 * (3 + 3));
        assert_eq!(cost_of("self.m.exists(k, v, k.startsWith(v))", s.clone()), 2 + 1 + 3 * (4 + 2 + 1));
        assert_eq!(cost_of("self.tags.existsOne(i, v, i == 0)", s.clone()), 2 + 2 + 5 * (2 + 2));
        let unbounded = json!({"type": "array", "items": {"type": "string"}});
        let c = cost_of("self.all(i, x, x.matches('^[a-z]+$'))", unbounded.clone());
        assert!(c > 100 * STATIC_ESTIMATED_COST_LIMIT, "{c}");
        let c = cost_of("self.transformMap(i, x, x.lowerAscii()).size() > 0", unbounded);
        assert!(c > STATIC_ESTIMATED_COST_LIMIT, "{c}");
    }

    #[test]
    fn messages_render_the_factor_as_go_does() {
        assert!(cost_error_message("estimated rule cost", 10_000_000_000, 10_000_000)
            .starts_with("estimated rule cost exceeds budget by factor of more than 100x (try simplifying"));
        assert!(cost_error_message("x", 12_000_000, 10_000_000).contains("factor of 1.200000x"));
        assert!(cost_error_message("x", 51_600_000, 10_000_000).contains("factor of 5.2x"));
    }
}
