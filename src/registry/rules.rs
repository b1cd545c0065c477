//! `x-kubernetes-validations`: the CEL rules of a CRD's structural schema, compiled once per
//! served version ([`Rules::compile`]) and evaluated on every write of a custom resource with
//! apiextensions-apiserver's semantics (pkg/apiserver/schema/cel/validation.go):
//!
//! - `self` is the value at the rule's schema node; a rule is skipped where the value is absent
//!   or null.
//! - A rule using `oldSelf` (a transition rule) runs only on update and only where an old value
//!   correlates (same property, same map key, the element of a `map` list with the same keys),
//!   unless `optionalOldSelf`, which binds `oldSelf` as an optional instead.
//! - A failure is `<path>: Invalid value: "<schema type>": <message>` (or Forbidden, Required,
//!   Duplicate after `reason`), at `fieldPath` below the node if given; the message is the
//!   evaluated `messageExpression`, else `message`, else `failed rule: <rule>`. The path of the
//!   object's root is `<nil>`, as upstream prints a nil field path.
//! - Each rule may use 1,000,000 cost units, all rules of an object 10,000,000 together.
//!
//! It also checks the rules of a CRD when the CRD is written ([`check_crd_rules`]), with the
//! messages apiextensions' CRD validation gives. A rule or message expression the CRD did not
//! have before compiles there with the CEL environment of the compatibility version
//! ([`cel::NEW_MINOR`]); one it had, and every rule when custom resources are validated, with the
//! full one ([`Preexisting`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};

use super::cel::{self, value, CompileError, EvalError, Meter, Program, Ty, Val, Want};
use super::validation::Cause;

fn flag(s: &Value, k: &str) -> bool {
    s.get(k) == Some(&Value::Bool(true))
}

/// One compiled rule.
#[derive(Debug)]
struct Rule {
    src: String,
    /// The program, or why it did not compile (the detail after `rule compile error: `).
    program: Result<Program, String>,
    message: String,
    message_expression: Option<Program>,
    reason: Option<String>,
    /// The normalized `fieldPath` (`spec.replicas`), when given and valid.
    field_path: Option<String>,
    optional_old_self: bool,
}

impl Rule {
    /// `ruleErrorString`: the message when there is one, else the rule.
    fn error_string(&self) -> &str {
        if self.message.is_empty() {
            self.src.trim()
        } else {
            self.message.trim()
        }
    }
}

/// The rules at one schema node and below.
#[derive(Debug, Default)]
struct Node {
    /// The node's schema (to convert `self` from JSON), kept only where the node has rules.
    schema: Value,
    resource: bool,
    rules: Vec<Rule>,
    props: BTreeMap<String, Node>,
    items: Option<Box<Node>>,
    additional: Option<Box<Node>>,
    /// For list-type map lists: the keys that correlate old and new elements.
    map_keys: Option<Vec<String>>,
}

/// The compiled `x-kubernetes-validations` of one schema (empty when it has none).
#[derive(Debug, Default)]
pub struct Rules {
    root: Option<Node>,
}

fn type_of(s: &Value) -> String {
    s.get("type").and_then(|t| t.as_str()).unwrap_or("").to_string()
}

fn compile_rule(r: &Value, self_ty: Option<&Ty>, schema: &Value) -> Rule {
    let s = |k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let src = s("rule");
    let optional_old_self = flag(r, "optionalOldSelf");
    let program = match self_ty {
        None => Err(format!(
            "rule declared on schema that does not support validation rules type: '{}' x-kubernetes-preserve-unknown-fields: '{}'",
            type_of(schema),
            flag(schema, "x-kubernetes-preserve-unknown-fields")
        )),
        Some(t) => compile(&src, t, optional_old_self, Want::Bool).map_err(|e| rule_error_detail(&e, "")),
    };
    let message_expression = match (self_ty, s("messageExpression")) {
        (Some(t), m) if !m.trim().is_empty() => compile(&m, t, optional_old_self, Want::String).ok(),
        _ => None,
    };
    let field_path = r.get("fieldPath").and_then(|p| p.as_str()).and_then(|p| field_path(p, schema).ok());
    Rule {
        src,
        program,
        message: s("message"),
        message_expression,
        reason: r.get("reason").and_then(|x| x.as_str()).map(String::from),
        field_path,
        optional_old_self,
    }
}

fn compile(src: &str, self_ty: &Ty, optional_old_self: bool, want: Want) -> Result<Program, CompileError> {
    compile_at(src, self_ty, optional_old_self, want, cel::STORED_MINOR)
}

fn compile_at(
    src: &str,
    self_ty: &Ty,
    optional_old_self: bool,
    want: Want,
    minor: u32,
) -> Result<Program, CompileError> {
    let old = if optional_old_self { Ty::Optional(Box::new(self_ty.clone())) } else { self_ty.clone() };
    Program::compile_at(src, &[("self", self_ty.clone()), ("oldSelf", old)], want, minor)
}

/// The rules and message expressions a CRD had before an update, anywhere in its schemas
/// (apiextensions' `preexistingExpressions`): these compile with the full CEL environment (a
/// CRD stored by this version keeps working), new ones with the compatibility version's.
#[derive(Debug, Default)]
pub struct Preexisting {
    rules: HashSet<String>,
    messages: HashSet<String>,
}

impl Preexisting {
    /// Those of the stored CRD `crd` (None on create: every expression is new).
    pub fn of(crd: Option<&Value>) -> Preexisting {
        let mut p = Preexisting::default();
        let Some(spec) = crd.and_then(|c| c.get("spec")) else { return p };
        if let Some(s) = spec.pointer("/validation/openAPIV3Schema") {
            p.collect(s);
        }
        for v in spec.get("versions").and_then(|v| v.as_array()).into_iter().flatten() {
            if let Some(s) = v.pointer("/schema/openAPIV3Schema") {
                p.collect(s);
            }
        }
        p
    }

    /// Walks every subschema, as apiextensions' `SchemaHas` does.
    fn collect(&mut self, s: &Value) {
        let Some(o) = s.as_object() else { return };
        for r in o.get("x-kubernetes-validations").and_then(|r| r.as_array()).into_iter().flatten() {
            if let Some(rule) = r.get("rule").and_then(|x| x.as_str()) {
                self.rules.insert(rule.to_string());
            }
            if let Some(m) = r.get("messageExpression").and_then(|x| x.as_str()).filter(|m| !m.is_empty()) {
                self.messages.insert(m.to_string());
            }
        }
        for k in ["properties", "patternProperties", "definitions", "dependencies"] {
            for sub in o.get(k).and_then(|x| x.as_object()).into_iter().flat_map(|m| m.values()) {
                self.collect(sub);
            }
        }
        for k in ["allOf", "anyOf", "oneOf"] {
            for sub in o.get(k).and_then(|x| x.as_array()).into_iter().flatten() {
                self.collect(sub);
            }
        }
        for k in ["items", "additionalProperties", "additionalItems", "not"] {
            match o.get(k) {
                Some(Value::Array(xs)) => xs.iter().for_each(|x| self.collect(x)),
                Some(x) => self.collect(x),
                None => {}
            }
        }
    }

    /// The environment a rule (or, with `message`, a message expression) compiles with.
    fn minor(&self, expr: &str, message: bool) -> u32 {
        let set = if message { &self.messages } else { &self.rules };
        if set.contains(expr) {
            cel::STORED_MINOR
        } else {
            cel::NEW_MINOR
        }
    }
}

/// The detail apiextensions gives a compile failure (`compilation failed: ERROR: …`).
fn rule_error_detail(e: &CompileError, what: &str) -> String {
    match (e, what) {
        (CompileError::Issues(s), "") => format!("compilation failed: {s}"),
        (CompileError::Issues(s), w) => format!("{w} compilation failed: {s}"),
        (CompileError::ResultType(_), "") => "cel expression must evaluate to a bool".into(),
        (CompileError::ResultType(_), w) => format!("{w} must evaluate to a string"),
    }
}

impl Rules {
    /// Compiles every rule of `schema` (a CRD version's `openAPIV3Schema`).
    pub fn compile(schema: &Value) -> Rules {
        Rules { root: node(schema, true) }
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// Evaluates the rules on `obj` (and `old`, on update). Empty = all rules hold.
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut out = Vec::new();
        if let Some(n) = &self.root {
            let mut budget = cel::RUNTIME_BUDGET as i64;
            validate_node(n, obj, old, "", &mut budget, &mut out);
        }
        out
    }
}

fn node(s: &Value, resource: bool) -> Option<Node> {
    let rules_json = s.get("x-kubernetes-validations").and_then(|r| r.as_array());
    let mut n = Node { resource, ..Default::default() };
    if let Some(rs) = rules_json.filter(|r| !r.is_empty()) {
        let ty = cel::check::schema_type(s, resource);
        n.rules = rs.iter().map(|r| compile_rule(r, ty.as_ref(), s)).collect();
        n.schema = s.clone();
    }
    for (k, ps) in s.get("properties").and_then(|p| p.as_object()).into_iter().flatten() {
        if resource && k == "metadata" {
            continue;
        }
        if let Some(c) = node(ps, flag(ps, "x-kubernetes-embedded-resource")) {
            n.props.insert(k.clone(), c);
        }
    }
    if let Some(items) = s.get("items") {
        n.items = node(items, flag(items, "x-kubernetes-embedded-resource")).map(Box::new);
        if s.get("x-kubernetes-list-type").and_then(|t| t.as_str()) == Some("map") {
            n.map_keys = Some(super::listtype::map_keys(s));
        }
    }
    if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
        n.additional = node(a, flag(a, "x-kubernetes-embedded-resource")).map(Box::new);
    }
    let empty = n.rules.is_empty() && n.props.is_empty() && n.items.is_none() && n.additional.is_none();
    (!empty).then_some(n)
}

fn shown_path(path: &str) -> String {
    if path.is_empty() {
        "<nil>".into()
    } else {
        path.to_string()
    }
}

fn child(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// Returns false once the budget is spent (no further rules run).
fn validate_node(n: &Node, v: &Value, old: Option<&Value>, path: &str, budget: &mut i64, out: &mut Vec<Cause>) -> bool {
    if v.is_null() {
        return true;
    }
    let old = old.filter(|o| !o.is_null());
    if !n.rules.is_empty() && !run_rules(n, v, old, path, budget, out) {
        return false;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let o = old.and_then(|o| o.get(k));
                if let Some(c) = n.props.get(k) {
                    if !validate_node(c, x, o, &child(path, k), budget, out) {
                        return false;
                    }
                } else if let Some(c) = &n.additional {
                    if !validate_node(c, x, o, &format!("{path}[{k}]"), budget, out) {
                        return false;
                    }
                }
            }
        }
        Value::Array(a) => {
            if let Some(c) = &n.items {
                let olds = old.and_then(|o| o.as_array());
                for (i, x) in a.iter().enumerate() {
                    // Only elements of map lists correlate with an old element (by their keys).
                    let o = match (&n.map_keys, olds) {
                        (Some(keys), Some(olds)) => olds.iter().find(|e| super::listtype::same_keys(e, x, keys)),
                        _ => None,
                    };
                    if !validate_node(c, x, o, &format!("{path}[{i}]"), budget, out) {
                        return false;
                    }
                }
            }
        }
        _ => {}
    }
    true
}

fn run_rules(n: &Node, v: &Value, old: Option<&Value>, path: &str, budget: &mut i64, out: &mut Vec<Cause>) -> bool {
    let ty = json!(type_of(&n.schema));
    let at = shown_path(path);
    let invalid = |field: &str, detail: &str| Cause::invalid(field, &ty, detail);
    if *budget <= 0 {
        out.push(invalid(
            &at,
            "validation failed due to running out of cost budget, no further validation rules will be run",
        ));
        return false;
    }
    let me = value::from_json(v, &n.schema, n.resource);
    let old_val = old.map(|o| value::from_json(o, &n.schema, n.resource));
    for r in &n.rules {
        let program = match &r.program {
            Ok(p) => p,
            Err(detail) => {
                out.push(invalid(&at, &format!("rule compile error: {detail}")));
                continue;
            }
        };
        if program.uses_old_self && old_val.is_none() && !r.optional_old_self {
            continue;
        }
        let mut vars: Vec<(Arc<str>, Val)> = vec![(Arc::from("self"), me.clone())];
        if r.optional_old_self {
            vars.push((Arc::from("oldSelf"), Val::Optional(old_val.clone().map(Arc::new))));
        } else if let Some(o) = &old_val {
            vars.push((Arc::from("oldSelf"), o.clone()));
        }
        let mut meter = Meter::new(cel::PER_CALL_LIMIT);
        let result = program.eval(vars.clone(), &mut meter);
        if meter.used as i64 > *budget {
            out.push(invalid(
                &at,
                "validation failed due to running out of cost budget, no further validation rules will be run",
            ));
            return false;
        }
        *budget -= meter.used as i64;
        match result {
            Ok(Val::Bool(true)) => continue,
            Err(EvalError::CostLimit) => {
                out.push(invalid(&at, &format!("'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: {}", r.error_string())));
                return false;
            }
            Err(EvalError::Msg(m)) if m.starts_with("no such overload") => {
                out.push(invalid(&at, &format!("'{m}': call arguments did not match a supported operator, function or macro signature for rule: {}", r.error_string())));
                continue;
            }
            Err(EvalError::Msg(m)) => {
                out.push(invalid(&at, &format!("{m} evaluating rule: {}", r.error_string())));
                continue;
            }
            Ok(_) => {}
        }
        // The rule failed: work out the message and where to report it.
        let field = match &r.field_path {
            Some(p) => child(path, p),
            None => at.clone(),
        };
        let mut detail = None;
        if let Some(mp) = &r.message_expression {
            let mut meter = Meter::new(cel::PER_CALL_LIMIT);
            let got = mp.eval(vars, &mut meter);
            *budget -= meter.used as i64;
            if let Ok(Val::Str(s)) = got {
                let t = s.trim();
                // Upstream falls back to the static message for an empty, multi-line or
                // oversized result (5 KiB, MaxEvaluatedMessageExpressionSizeBytes).
                if !t.is_empty() && !t.contains('\n') && t.len() <= 5 * 1024 {
                    detail = Some(t.to_string());
                }
            }
        }
        let detail = detail.unwrap_or_else(|| {
            if r.message.is_empty() {
                format!("failed rule: {}", r.src.trim())
            } else {
                r.message.trim().to_string()
            }
        });
        out.push(match r.reason.as_deref() {
            Some("FieldValueForbidden") => {
                Cause { reason: "FieldValueForbidden", field, message: format!("Forbidden: {detail}") }
            }
            Some("FieldValueRequired") => {
                Cause { reason: "FieldValueRequired", field, message: format!("Required value: {detail}") }
            }
            Some("FieldValueDuplicate") => Cause::duplicate(field, &ty),
            _ => invalid(&field, &detail),
        });
    }
    true
}

// ---------- fieldPath ----------

/// Validates a rule's `fieldPath` (`.spec.replicas`, `.labels['a.b']`) against the schema and
/// returns it normalized (`spec.replicas`, `labels[a.b]`), as apiextensions' `ValidFieldPath`.
pub fn field_path(p: &str, schema: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut s = schema;
    let b = p.as_bytes();
    let mut i = 0;
    let invalid = || "does not refer to a valid field".to_string();
    let step = |name: &str, s: &mut &Value, out: &mut String| -> Result<(), String> {
        if let Some(next) = s.get("properties").and_then(|ps| ps.get(name)) {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(name);
            *s = next;
            Ok(())
        } else if s.get("properties").is_none() {
            match s.get("additionalProperties").filter(|a| a.is_object()) {
                Some(a) => {
                    out.push_str(&format!("[{name}]"));
                    *s = a;
                    Ok(())
                }
                None => Err(invalid()),
            }
        } else {
            Err(invalid())
        }
    };
    while i < b.len() {
        match b[i] {
            b'.' => {
                let rest = &p[i + 1..];
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                if end == 0 {
                    return Err("unexpected end of JSON path".into());
                }
                step(&rest[..end], &mut s, &mut out)?;
                i += 1 + end;
            }
            b'[' => {
                let rest = &p[i + 1..];
                if !rest.starts_with('\'') {
                    return Err(format!(
                        "expected single quoted string but got {}",
                        rest.split(']').next().unwrap_or("")
                    ));
                }
                let Some(close) = rest[1..].find("']") else { return Err("unexpected end of JSON path".into()) };
                let key = rest[1..1 + close].replace("\\'", "'");
                step(&key, &mut s, &mut out)?;
                i += 1 + 1 + close + 2;
            }
            c => return Err(format!("expected [ or . but got: {}", c as char)),
        }
    }
    Ok(out)
}

// ---------- checks when a CRD is written ----------

const REASONS: &[&str] = &["FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"];

/// A rule as Go's `%#v` prints apiextensions.ValidationRule: upstream puts it in the message of
/// a compile error, so kubectl users see this form.
fn go_rule(r: &Value) -> String {
    let s = |k: &str| format!("{:?}", r.get(k).and_then(|x| x.as_str()).unwrap_or(""));
    // A set pointer prints as its address in Go; any address will do, so a fixed one is shown.
    let reason = if r.get("reason").is_some_and(|x| x.is_string()) {
        "(*apiextensions.FieldValueErrorReason)(0xc000a1c0a0)"
    } else {
        "(*apiextensions.FieldValueErrorReason)(nil)"
    };
    let oos =
        if r.get("optionalOldSelf").is_some_and(|x| x.is_boolean()) { "(*bool)(0xc000a1c0a8)" } else { "(*bool)(nil)" };
    format!(
        "apiextensions.ValidationRule{{Rule:{}, Message:{}, MessageExpression:{}, Reason:{reason}, FieldPath:{}, OptionalOldSelf:{oos}}}",
        s("rule"),
        s("message"),
        s("messageExpression"),
        s("fieldPath")
    )
}

/// The estimated cost of a CRD's rules together (apiextensions' `TotalCost`): the sum, and the
/// most expensive rules (at most 4, each at least 1% of the CRD limit) to name when the sum is
/// over the limit.
#[derive(Default)]
struct TotalCost {
    total: u64,
    most_expensive: Vec<(String, u64)>,
}

impl TotalCost {
    fn observe(&mut self, path: String, cost: u64) {
        self.total = self.total.saturating_add(cost);
        if cost < cel::cost::STATIC_ESTIMATED_CRD_COST_LIMIT / 100 {
            return;
        }
        self.most_expensive.push((path, cost));
        self.most_expensive.sort_by_key(|e| std::cmp::Reverse(e.1));
        self.most_expensive.truncate(4);
    }
}

fn forbidden(field: String, detail: String) -> Cause {
    Cause { reason: "FieldValueForbidden", field, message: format!("Forbidden: {detail}") }
}

/// Checks the rules of a CRD version's schema, pushing causes under `base`
/// (`spec.validation.openAPIV3Schema`). `uncorrelatable` is the path of the nearest enclosing
/// list whose elements have no identity (transition rules cannot be used below it).
///
/// Each rule's estimated cost, times the number of times it can run (the product of the
/// enclosing lists' maxItems and maps' maxProperties, or what fits in a request where one is
/// unbounded), must stay within apiextensions' per-rule limit, and all of them together within
/// the per-CRD limit.
pub fn check_crd_rules(
    s: &Value,
    path: &str,
    resource: bool,
    pre: &Preexisting,
    uncorrelatable: Option<&str>,
    out: &mut Vec<Cause>,
) {
    let mut total = TotalCost::default();
    check_node(s, path, resource, uncorrelatable, Some(1), pre, &mut total, out);
    if total.total > cel::cost::STATIC_ESTIMATED_CRD_COST_LIMIT {
        for (p, _) in &total.most_expensive {
            out.push(forbidden(
                p.clone(),
                "contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema".into(),
            ));
        }
        out.push(forbidden(
            path.to_string(),
            cel::cost::cost_error_message(
                "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                total.total,
                cel::cost::STATIC_ESTIMATED_CRD_COST_LIMIT,
            ),
        ));
    }
}

/// The estimated cost of a compiled rule at node `s`, without and with its cardinality.
fn rule_cost(p: &Program, s: &Value, resource: bool, t: &Ty, optional: bool, cardinality: Option<u64>) -> (u64, u64) {
    let sz = cel::cost::schema_sizes(s, resource);
    let old = if optional { Ty::Optional(Box::new(t.clone())) } else { t.clone() };
    let raw = p.estimated_cost(&[("self", t.clone(), sz.clone()), ("oldSelf", old, sz.clone())]);
    let card = cardinality.unwrap_or_else(|| cel::cost::max_cardinality(sz.as_ref().map_or(0, |z| z.min_size)));
    (raw, if raw == 0 { 0 } else { raw.saturating_mul(card) })
}

#[allow(clippy::too_many_arguments)]
fn check_node(
    s: &Value,
    path: &str,
    resource: bool,
    uncorrelatable: Option<&str>,
    cardinality: Option<u64>,
    pre: &Preexisting,
    total: &mut TotalCost,
    out: &mut Vec<Cause>,
) {
    if let Some(rules) = s.get("x-kubernetes-validations").and_then(|r| r.as_array()) {
        let before = out.len();
        let ty = cel::check::schema_type(s, resource);
        for (i, r) in rules.iter().enumerate() {
            let base = format!("{path}.x-kubernetes-validations[{i}]");
            let st = |k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            let (rule, msg, msg_expr, fp) = (st("rule"), st("message"), st("messageExpression"), st("fieldPath"));
            let nl = |x: &str| x.contains(['\n', '\r']);
            if rule.trim().is_empty() {
                out.push(Cause {
                    reason: "FieldValueRequired",
                    field: format!("{base}.rule"),
                    message: "Required value: rule is not specified".into(),
                });
            } else if !msg.is_empty() && msg.trim().is_empty() {
                out.push(Cause::invalid(
                    format!("{base}.message"),
                    &json!(msg),
                    "message must be non-empty if specified",
                ));
            } else if nl(msg.trim()) {
                out.push(Cause::invalid(
                    format!("{base}.message"),
                    &json!(msg),
                    "message must not contain line breaks",
                ));
            } else if nl(rule.trim()) && msg.trim().is_empty() {
                out.push(Cause {
                    reason: "FieldValueRequired",
                    field: format!("{base}.message"),
                    message: "Required value: message must be specified if rule contains line breaks".into(),
                });
            }
            if !msg_expr.is_empty() && msg_expr.trim().is_empty() {
                out.push(Cause {
                    reason: "FieldValueRequired",
                    field: format!("{base}.messageExpression"),
                    message: "Required value: messageExpression must be non-empty if specified".into(),
                });
            }
            if let Some(reason) = r.get("reason").and_then(|x| x.as_str()) {
                if !REASONS.contains(&reason) {
                    out.push(Cause::not_supported(format!("{base}.reason"), &json!(reason), REASONS));
                }
            }
            if !fp.is_empty() {
                if fp.trim().is_empty() {
                    out.push(Cause::invalid(
                        format!("{base}.fieldPath"),
                        &json!(fp),
                        "fieldPath must be non-empty if specified",
                    ));
                } else if nl(&fp) {
                    out.push(Cause::invalid(
                        format!("{base}.fieldPath"),
                        &json!(fp),
                        "fieldPath must not contain line breaks",
                    ));
                } else if field_path(&fp, s).is_err() {
                    out.push(Cause::invalid(format!("{base}.fieldPath"), &json!(fp), "fieldPath must be a valid path"));
                }
            }
        }
        // As upstream: compile only when the schema around the rules is sound.
        if out.len() == before {
            for (i, r) in rules.iter().enumerate() {
                let base = format!("{path}.x-kubernetes-validations[{i}]");
                let rule = r.get("rule").and_then(|x| x.as_str()).unwrap_or("");
                let Some(t) = &ty else {
                    out.push(Cause {
                        reason: "InternalError",
                        field: format!("{path}.x-kubernetes-validations"),
                        message: format!("Internal error: rule declared on schema that does not support validation rules type: '{}' x-kubernetes-preserve-unknown-fields: '{}'", type_of(s), flag(s, "x-kubernetes-preserve-unknown-fields")),
                    });
                    break;
                };
                let optional = flag(r, "optionalOldSelf");
                match compile_at(rule, t, optional, Want::Bool, pre.minor(rule, false)) {
                    Err(e) => {
                        out.push(Cause::invalid_shown(format!("{base}.rule"), &go_rule(r), &rule_error_detail(&e, "")))
                    }
                    Ok(p) => {
                        let (_, cost) = rule_cost(&p, s, resource, t, optional, cardinality);
                        if cost > cel::cost::STATIC_ESTIMATED_COST_LIMIT {
                            out.push(forbidden(
                                format!("{base}.rule"),
                                cel::cost::cost_error_message(
                                    "estimated rule cost",
                                    cost,
                                    cel::cost::STATIC_ESTIMATED_COST_LIMIT,
                                ),
                            ));
                        }
                        total.observe(format!("{base}.rule"), cost);
                        if p.uses_old_self {
                            if let Some(u) = uncorrelatable {
                                out.push(Cause::invalid(
                                    format!("{base}.rule"),
                                    &json!(rule),
                                    &format!(
                                        "oldSelf cannot be used on the uncorrelatable portion of the schema within {u}"
                                    ),
                                ));
                            }
                        } else if let Some(b) = r.get("optionalOldSelf").and_then(|x| x.as_bool()) {
                            out.push(Cause::invalid(
                                format!("{base}.optionalOldSelf"),
                                &json!(b),
                                "may not be set if oldSelf is not used in rule",
                            ));
                        }
                    }
                }
                if let Some(m) = r.get("messageExpression").and_then(|x| x.as_str()).filter(|m| !m.trim().is_empty()) {
                    match compile_at(m, t, optional, Want::String, pre.minor(m, true)) {
                        Err(e) => out.push(Cause::invalid_shown(
                            format!("{base}.messageExpression"),
                            &go_rule(r),
                            &rule_error_detail(&e, "messageExpression"),
                        )),
                        Ok(p) => {
                            // Upstream does not multiply a message's cost by the cardinality.
                            let (cost, _) = rule_cost(&p, s, resource, t, optional, cardinality);
                            if cost > cel::cost::STATIC_ESTIMATED_COST_LIMIT {
                                out.push(forbidden(
                                    format!("{base}.messageExpression"),
                                    cel::cost::cost_error_message(
                                        "estimated messageExpression cost",
                                        cost,
                                        cel::cost::STATIC_ESTIMATED_COST_LIMIT,
                                    ),
                                ));
                            }
                            total.observe(format!("{base}.messageExpression"), cost);
                        }
                    }
                }
            }
        }
    }
    // How many times each child can occur per occurrence of this node's value.
    let child_cardinality = cardinality.zip(cel::cost::max_elements(s)).map(|(a, b)| a.saturating_mul(b));
    for (k, ps) in s.get("properties").and_then(|p| p.as_object()).into_iter().flatten() {
        if resource && k == "metadata" {
            continue;
        }
        check_node(
            ps,
            &format!("{path}.properties[{k}]"),
            flag(ps, "x-kubernetes-embedded-resource"),
            uncorrelatable,
            child_cardinality,
            pre,
            total,
            out,
        );
    }
    if let Some(items) = s.get("items") {
        let items_path = format!("{path}.items");
        let keyed = s.get("x-kubernetes-list-type").and_then(|t| t.as_str()) == Some("map");
        let unc = if keyed {
            uncorrelatable.map(String::from)
        } else {
            Some(uncorrelatable.map(String::from).unwrap_or(items_path.clone()))
        };
        check_node(
            items,
            &items_path,
            flag(items, "x-kubernetes-embedded-resource"),
            unc.as_deref(),
            child_cardinality,
            pre,
            total,
            out,
        );
    }
    if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
        check_node(
            a,
            &format!("{path}.additionalProperties"),
            flag(a, "x-kubernetes-embedded-resource"),
            uncorrelatable,
            child_cardinality,
            pre,
            total,
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.replicas <= self.maxReplicas", "message": "must be at most maxReplicas", "fieldPath": ".replicas"},
                {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable", "reason": "FieldValueForbidden"},
                {"rule": "!has(self.name) || self.name.startsWith('web')", "messageExpression": "'name ' + self.name + ' must start with web'"}
            ],
            "properties": {
                "replicas": {"type": "integer"}, "maxReplicas": {"type": "integer"},
                "mode": {"type": "string"}, "name": {"type": "string"},
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port"],
                    "items": {"type": "object", "required": ["port"], "properties": {
                        "port": {"type": "integer"}, "protocol": {"type": "string"}},
                        "x-kubernetes-validations": [{"rule": "self.protocol == oldSelf.protocol", "message": "protocol is immutable"}]}},
                "labels": {"type": "object", "additionalProperties": {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() < 5"}]}}
            }}},
            "x-kubernetes-validations": [{"rule": "self.metadata.name.startsWith('x')"}]
        })
    }

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "e.com/v1", "kind": "T", "metadata": {"name": "x1"}, "spec": spec})
    }

    fn msgs(r: &Rules, v: &Value, old: Option<&Value>) -> Vec<String> {
        r.validate(v, old).into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn failed_rules_report_upstreams_paths_and_messages() {
        let r = Rules::compile(&schema());
        assert!(msgs(&r, &obj(json!({"replicas": 1, "maxReplicas": 2, "mode": "a"})), None).is_empty());
        let mut o = obj(json!({"replicas": 3, "maxReplicas": 2, "name": "db", "labels": {"a": "toolong"}}));
        o["metadata"]["name"] = json!("y");
        assert_eq!(
            msgs(&r, &o, None),
            vec![
                "<nil>: Invalid value: \"object\": failed rule: self.metadata.name.startsWith('x')",
                "spec.replicas: Invalid value: \"object\": must be at most maxReplicas",
                "spec: Invalid value: \"object\": name db must start with web",
                "spec.labels[a]: Invalid value: \"string\": failed rule: self.size() < 5",
            ]
        );
    }

    #[test]
    fn transition_rules_run_on_update_with_correlated_old_values() {
        let r = Rules::compile(&schema());
        let old =
            obj(json!({"replicas": 1, "maxReplicas": 2, "mode": "a", "ports": [{"port": 80, "protocol": "TCP"}]}));
        let new = obj(
            json!({"replicas": 1, "maxReplicas": 2, "mode": "b", "ports": [{"port": 443, "protocol": "UDP"}, {"port": 80, "protocol": "UDP"}]}),
        );
        assert!(msgs(&r, &new, None).is_empty(), "no oldSelf on create");
        assert_eq!(
            msgs(&r, &new, Some(&old)),
            vec![
                "spec: Forbidden: mode is immutable",
                "spec.ports[1]: Invalid value: \"object\": protocol is immutable"
            ]
        );
    }

    #[test]
    fn runtime_errors_and_cost_are_reported_as_upstream() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "x-kubernetes-validations": [{"rule": "self.a > 0", "message": "a must be positive"},
                {"rule": "self.l.all(x, self.l.all(y, self.l.all(z, x + y + z >= 0)))"}],
            "properties": {"a": {"type": "integer"}, "l": {"type": "array", "items": {"type": "integer"}}}}}});
        let r = Rules::compile(&s);
        let l: Vec<i64> = (0..200).collect();
        let m = msgs(&r, &obj(json!({"l": l})), None);
        assert_eq!(m[0], "spec: Invalid value: \"object\": no such key: a evaluating rule: a must be positive");
        assert_eq!(m[1], "spec: Invalid value: \"object\": 'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: self.l.all(x, self.l.all(y, self.l.all(z, x + y + z >= 0)))");
    }

    #[test]
    fn crd_rules_that_do_not_compile_are_refused_with_the_compile_error() {
        let mut out = Vec::new();
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"r": {"type": "integer"}, "l": {"type": "array", "items": {"type": "object", "properties": {"v": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "self.v == oldSelf.v"}]}}},
            "x-kubernetes-validations": [{"rule": "self.r >"}, {"rule": "self.q > 0"}, {"rule": "self.r", "optionalOldSelf": true},
                {"rule": "self.r > 0", "reason": "Bogus", "fieldPath": ".nope"}]}}});
        check_crd_rules(&s, "spec.validation.openAPIV3Schema", true, &Preexisting::default(), None, &mut out);
        let m: Vec<String> = out.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let base = "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations";
        assert!(m.iter().any(|x| x.starts_with(&format!("{base}[3].reason: Unsupported value: \"Bogus\""))), "{m:#?}");
        assert!(m.iter().any(|x| x == &format!("{base}[3].fieldPath: Invalid value: \".nope\": fieldPath must be a valid path")), "{m:#?}");
        // Compilation waits for the other problems at that node to be fixed, as upstream.
        let s2 = {
            let mut s2 = s.clone();
            s2["properties"]["spec"]["x-kubernetes-validations"].as_array_mut().unwrap().pop();
            s2
        };
        let mut out = Vec::new();
        check_crd_rules(&s2, "spec.validation.openAPIV3Schema", true, &Preexisting::default(), None, &mut out);
        let m: Vec<String> = out.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        assert!(m[0].starts_with(&format!("{base}[0].rule: Invalid value: apiextensions.ValidationRule{{Rule:\"self.r >\", Message:\"\", MessageExpression:\"\", Reason:(*apiextensions.FieldValueErrorReason)(nil), FieldPath:\"\", OptionalOldSelf:(*bool)(nil)}}: compilation failed: ERROR: <input>:1:9: Syntax error: mismatched input '<EOF>'")), "{m:#?}");
        assert!(m[1].contains("compilation failed: ERROR: <input>:1:5: undefined field 'q'"), "{m:#?}");
        assert!(m[2].ends_with("cel expression must evaluate to a bool"), "{m:#?}");
        assert!(
            m[3].starts_with("spec.validation.openAPIV3Schema.properties[spec].properties[l].items.x-kubernetes-validations[0].rule: Invalid value: \"self.v == oldSelf.v\": oldSelf cannot be used on the uncorrelatable portion of the schema within spec.validation.openAPIV3Schema.properties[spec].properties[l].items"),
            "{m:#?}"
        );
        assert_eq!(m.len(), 4, "{m:#?}");
    }

    #[test]
    fn new_expressions_compile_with_the_compatibility_versions_environment() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"v": {"type": "string", "maxLength": 20},
                "m": {"type": "object", "maxProperties": 5, "additionalProperties": {"type": "integer"}}},
            "x-kubernetes-validations": [
                {"rule": "isSemver(self.v)", "messageExpression": "isSemver(self.v, true) ? 'normalizable' : 'no version'"},
                {"rule": "self.m.all(k, v, v > 0)"}]}}});
        let causes = |pre: &Preexisting| {
            let mut out = Vec::new();
            check_crd_rules(&s, "spec.validation.openAPIV3Schema", true, pre, None, &mut out);
            out.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>()
        };
        // On create, semver (1.33) is undeclared; two-variable comprehensions (1.32) are there.
        let m = causes(&Preexisting::default());
        let base = "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0]";
        assert_eq!(m.len(), 2, "{m:#?}");
        assert!(m[0].starts_with(&format!("{base}.rule: Invalid value: ")), "{m:#?}");
        assert!(
            m[0].contains(
                "compilation failed: ERROR: <input>:1:9: undeclared reference to 'isSemver' (in container '')"
            ),
            "{m:#?}"
        );
        assert!(m[1].starts_with(&format!("{base}.messageExpression: ")), "{m:#?}");
        assert!(
            m[1].contains(
                "messageExpression compilation failed: ERROR: <input>:1:9: undeclared reference to 'isSemver'"
            ),
            "{m:#?}"
        );
        // An expression the stored CRD already had compiles with the full environment: rules and
        // message expressions are told apart, as upstream.
        let crd = |rule: &str, msg: &str| {
            json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"type": "object",
                "properties": {"spec": {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "object",
                    "x-kubernetes-validations": [{"rule": rule, "messageExpression": msg}]}}}}}}}}]}})
        };
        let old = crd("isSemver(self.v)", "isSemver(self.v, true) ? 'normalizable' : 'no version'");
        assert_eq!(causes(&Preexisting::of(Some(&old))), Vec::<String>::new());
        let old = crd("isSemver(self.v, true) ? 'normalizable' : 'no version'", "isSemver(self.v)");
        let m = causes(&Preexisting::of(Some(&old)));
        assert_eq!(m.len(), 2, "{m:#?}");
        // Custom resources are validated with the full environment.
        let r = Rules::compile(&s);
        let spec = |v: &str| json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"v": v, "m": {"a": 1}}});
        assert!(msgs(&r, &spec("1.0.0"), None).is_empty());
        assert_eq!(msgs(&r, &spec("1.0"), None), vec!["spec: Invalid value: \"object\": normalizable".to_string()]);
    }

    fn crd_causes(s: &Value) -> Vec<String> {
        let mut out = Vec::new();
        check_crd_rules(s, "spec.validation.openAPIV3Schema", true, &Preexisting::default(), None, &mut out);
        out.iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    fn names_schema(names: Value) -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"names": names}}}})
    }

    #[test]
    fn crd_rules_over_the_estimated_cost_budget_are_forbidden() {
        let hint = "(try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)";
        let base =
            "spec.validation.openAPIV3Schema.properties[spec].properties[names].x-kubernetes-validations[0].rule";
        let rule = json!([{"rule": "self.all(x, x.matches('^[a-z]+$'))"}]);
        let unbounded =
            names_schema(json!({"type": "array", "items": {"type": "string"}, "x-kubernetes-validations": rule}));
        assert_eq!(
            crd_causes(&unbounded),
            vec![
                format!("{base}: Forbidden: estimated rule cost exceeds budget by factor of more than 100x {hint}"),
                format!("{base}: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"),
                format!("spec.validation.openAPIV3Schema: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of more than 100x {hint}"),
            ]
        );
        let bounded = names_schema(json!({"type": "array", "maxItems": 100,
            "items": {"type": "string", "maxLength": 63}, "x-kubernetes-validations": rule}));
        assert_eq!(crd_causes(&bounded), Vec::<String>::new());

        // A cheap rule on the items of an unbounded list still runs once per item that fits in a
        // request: 53 units × 1,048,576 items.
        let items_base =
            "spec.validation.openAPIV3Schema.properties[spec].properties[names].items.x-kubernetes-validations[0].rule";
        let per_item = |list: Value| {
            let mut l = list;
            l["items"] = json!({"type": "string", "maxLength": 63, "x-kubernetes-validations": [{"rule": "self.matches('^[a-z]+$')"}]});
            crd_causes(&names_schema(l))
        };
        assert_eq!(
            per_item(json!({"type": "array"})),
            vec![format!("{items_base}: Forbidden: estimated rule cost exceeds budget by factor of 5.6x {hint}")]
        );
        assert!(per_item(json!({"type": "array", "maxItems": 1000})).is_empty());

        // A messageExpression is estimated too.
        let msg = names_schema(json!({"type": "array", "maxItems": 10, "items": {"type": "string"},
            "x-kubernetes-validations": [{"rule": "self.size() > 0",
                "messageExpression": "self.map(x, x.findAll('[a-z]+').join(',')).join(';')"}]}));
        let m = crd_causes(&msg);
        assert!(
            m[0].starts_with("spec.validation.openAPIV3Schema.properties[spec].properties[names].x-kubernetes-validations[0].messageExpression: Forbidden: estimated messageExpression cost exceeds budget by factor of"),
            "{m:#?}"
        );

        // Rules that are each within budget can still be too many together.
        let many: Vec<Value> = (0..17).map(|i| json!({"rule": format!("self.all(x, x.size() > {i})")})).collect();
        let total =
            names_schema(json!({"type": "array", "items": {"type": "string"}, "x-kubernetes-validations": many}));
        let m = crd_causes(&total);
        assert!(m.last().unwrap().starts_with("spec.validation.openAPIV3Schema: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of 1."), "{m:#?}");
        assert_eq!(
            m.iter()
                .filter(|x| x.ends_with(
                    "contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
                ))
                .count(),
            4,
            "{m:#?}"
        );
        assert!(!m.iter().any(|x| x.contains("estimated rule cost exceeds budget")), "{m:#?}");
    }

    #[test]
    fn field_paths_are_normalized_against_the_schema() {
        let s = json!({"type": "object", "properties": {"a": {"type": "object", "properties": {"b-c": {"type": "string"}}},
            "m": {"type": "object", "additionalProperties": {"type": "string"}}}});
        assert_eq!(field_path(".a['b-c']", &s).unwrap(), "a.b-c");
        assert_eq!(field_path(".m['k.1']", &s).unwrap(), "m[k.1]");
        assert!(field_path(".x", &s).is_err());
        assert!(field_path("a", &s).is_err());
    }
}
