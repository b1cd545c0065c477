//! The Common Expression Language as CustomResourceDefinition validation rules use it
//! (`x-kubernetes-validations`): parse ([`parser`]), type-check against the types a schema gives
//! `self` ([`check`]), evaluate with a cost meter ([`eval`]) over values converted from JSON
//! ([`value`]) with the functions Kubernetes offers ([`library`]).
//!
//! Written here rather than taken from a crate: the evaluator must charge every step to a cost
//! budget (apiserver stops a rule at 1,000,000 units and an object at 10,000,000, so a nested
//! `all` over a large list cannot pin a core), rules are type-checked against the schema when a
//! CRD is written (a misspelt field is refused then, as upstream, not at the first object), and
//! `set`/`map` lists compare without order. The crates that exist (`cel-interpreter`, `cel`)
//! offer none of the three, and `cel-interpreter` 0.9 panics on `1 / 0` and on overflow.

pub mod check;
pub mod cost;
pub mod eval;
pub mod formats;
pub mod library;
pub mod net;
pub mod parser;
pub mod semver;
pub mod value;

use std::sync::Arc;

pub use check::Ty;
pub use eval::{EvalError, Meter};
pub use value::Val;

/// The cost one rule may use in one evaluation (apiserver's `PerCallLimit`).
pub const PER_CALL_LIMIT: u64 = 1_000_000;
/// The cost all rules of one object may use together (apiserver's `RuntimeCELCostBudget`).
pub const RUNTIME_BUDGET: u64 = 10_000_000;

/// The Kubernetes minor version (1.33) whose CEL environment skiff offers, as apiserver's
/// `StoredExpressions` environment: rules a CRD already had compile with all of it, and so do
/// rules when custom resources are validated.
pub const STORED_MINOR: u32 = 33;
/// The compatibility version (n-1) whose environment (`NewExpressions`) a rule new to a CRD
/// compiles with, so that a server rolled back one version still runs every rule it accepted:
/// the semver library (1.33) is not there, two-variable comprehensions (1.32) are.
pub const NEW_MINOR: u32 = 32;

/// What an expression must evaluate to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Want {
    Bool,
    String,
}

/// A compiled (parsed and checked) expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    expr: parser::Expr,
    /// Whether it refers to `oldSelf` (a transition rule).
    pub uses_old_self: bool,
}

/// A compile failure, in the words apiextensions puts after the field path.
#[derive(Debug, Clone, PartialEq)]
pub enum CompileError {
    /// Syntax or type errors, formatted as cel-go's issues (`ERROR: <input>:1:6: …`).
    Issues(String),
    /// The expression has the wrong result type.
    ResultType(Ty),
}

impl Program {
    /// Parses and checks `src` with the given variables in scope, in the full environment.
    pub fn compile(src: &str, vars: &[(&str, Ty)], want: Want) -> Result<Program, CompileError> {
        Program::compile_at(src, vars, want, STORED_MINOR)
    }

    /// As [`Program::compile`], with the functions of Kubernetes 1.`minor`'s environment.
    pub fn compile_at(src: &str, vars: &[(&str, Ty)], want: Want, minor: u32) -> Result<Program, CompileError> {
        let expr = parser::parse(src).map_err(|i| CompileError::Issues(parser::format_issues(src, &[i])))?;
        let vars = vars.iter().map(|(n, t)| (Arc::from(*n), t.clone())).collect();
        let mut env = check::Env::at(vars, minor);
        let ty = check::check(&expr, &mut env).map_err(|i| CompileError::Issues(parser::format_issues(src, &[i])))?;
        let ok = match want {
            Want::Bool => ty == Ty::Bool,
            Want::String => ty == Ty::String,
        };
        if !ok {
            return Err(CompileError::ResultType(ty));
        }
        let uses_old_self = expr.references("oldSelf");
        Ok(Program { expr, uses_old_self })
    }

    /// The estimated worst-case cost of one evaluation, with each variable's type and the size
    /// bounds of its schema node (see [`cost`]).
    pub fn estimated_cost(&self, vars: &[(&str, Ty, Option<Arc<cost::Sz>>)]) -> u64 {
        cost::estimate(&self.expr, vars)
    }

    /// Evaluates with `vars` bound, charging `meter`.
    pub fn eval(&self, vars: Vec<(Arc<str>, Val)>, meter: &mut Meter) -> Result<Val, EvalError> {
        let mut scope = eval::Scope { vars, meter };
        eval::eval(&self.expr, &mut scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "replicas": {"type": "integer"}, "maxReplicas": {"type": "integer"},
            "name": {"type": "string"}, "ratio": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "ports": {"type": "array", "items": {"type": "object", "properties": {"port": {"type": "integer"}, "name": {"type": "string"}}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "timeout": {"type": "string", "format": "duration"},
            "when": {"type": "string", "format": "date-time"},
            "size": {"x-kubernetes-int-or-string": true}
        }})
    }

    fn run(rule: &str, obj: Value) -> Result<Val, String> {
        let s = schema();
        let ty = check::schema_type(&s, false).unwrap();
        let p = Program::compile(rule, &[("self", ty)], Want::Bool).map_err(|e| format!("{e:?}"))?;
        let mut m = Meter::new(PER_CALL_LIMIT);
        p.eval(vec![(Arc::from("self"), value::from_json(&obj, &s, false))], &mut m).map_err(|e| format!("{e:?}"))
    }

    fn yes(rule: &str, obj: Value) {
        match run(rule, obj) {
            Ok(Val::Bool(true)) => {}
            other => panic!("{rule}: {other:?}"),
        }
    }

    fn no(rule: &str, obj: Value) {
        match run(rule, obj) {
            Ok(Val::Bool(false)) => {}
            other => panic!("{rule}: {other:?}"),
        }
    }

    #[test]
    fn arithmetic_comparisons_and_logic() {
        let o = json!({"replicas": 3, "maxReplicas": 5, "ratio": 0.5, "name": "web-1"});
        yes("self.replicas <= self.maxReplicas", o.clone());
        yes("self.replicas * 2 + 1 == 7 && self.replicas % 2 == 1 && self.replicas / 2 == 1", o.clone());
        yes("self.ratio < 1 && self.replicas > 2.5", o.clone());
        yes("self.replicas > 10 ? false : true", o.clone());
        no("!(self.replicas == 3)", o.clone());
        yes("-self.replicas == -3 && 2u + 3u == 5u && 1.5 * 2.0 == 3.0", o.clone());
        // Errors are absorbed by a decisive other side, in either order.
        yes("has(self.tags) && self.tags[0] == 'x' || true", o.clone());
        yes("self.tags[0] == 'x' || true", o.clone());
        no("self.tags[0] == 'x' && false", o.clone());
    }

    #[test]
    fn strings_lists_maps_and_macros() {
        let o = json!({"name": "Web-1", "tags": ["a", "b", "c"], "labels": {"app": "web"},
            "ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]});
        yes("self.name.size() == 5 && size(self.name) == 5", o.clone());
        yes("self.name.startsWith('We') && self.name.endsWith('-1') && self.name.contains('b-')", o.clone());
        yes("self.name.matches('^[A-Z][a-z]+-[0-9]$')", o.clone());
        yes("'a' in self.tags && !('z' in self.tags) && 'app' in self.labels", o.clone());
        yes("self.tags.all(t, t.size() == 1) && self.tags.exists(t, t == 'b')", o.clone());
        yes("self.tags.exists_one(t, t == 'c') && !self.tags.exists_one(t, t != 'c')", o.clone());
        yes("self.ports.map(p, p.port) == [80, 443] && self.ports.filter(p, p.port > 100).size() == 1", o.clone());
        yes("self.ports.map(p, p.port > 100, p.name) == ['https']", o.clone());
        yes("self.labels.all(k, self.labels[k] == 'web') && self.labels.app == 'web'", o.clone());
        yes("has(self.labels) && !has(self.replicas)", o.clone());
        yes("{'a': 1}.a == 1 && [1, 2] + [3] == [1, 2, 3]", o.clone());
    }

    #[test]
    fn conversions_durations_and_timestamps() {
        let o = json!({"replicas": 3, "timeout": "90s", "when": "2024-03-01T10:00:00Z", "size": "10"});
        yes("string(self.replicas) == '3' && int('42') == 42 && double(self.replicas) == 3.0", o.clone());
        yes("self.timeout == duration('1m30s') && self.timeout > duration('1m')", o.clone());
        yes("self.when.getFullYear() == 2024 && self.when.getMonth() == 2 && self.when.getHours() == 10", o.clone());
        yes("self.when + duration('24h') > self.when && timestamp('2024-03-01T10:00:00Z') == self.when", o.clone());
        yes("string(self.timeout) == '90s' && type(self.replicas) == int", o.clone());
        yes("int(self.size) == 10", o.clone());
    }

    #[test]
    fn kubernetes_libraries() {
        let o = json!({"tags": ["a", "b", "c"], "name": " Hello World "});
        yes("self.tags.isSorted() && ['b', 'a'].isSorted() == false", o.clone());
        yes("[1, 2, 3].sum() == 6 && [3, 1, 2].min() == 1 && [3, 1, 2].max() == 3", o.clone());
        yes("self.tags.indexOf('b') == 1 && self.tags.lastIndexOf('z') == -1", o.clone());
        yes(
            "self.name.trim().lowerAscii() == 'hello world' && self.name.upperAscii().trim() == 'HELLO WORLD'",
            o.clone(),
        );
        yes("self.name.trim().split(' ') == ['Hello', 'World'] && self.tags.join('-') == 'a-b-c'", o.clone());
        yes("self.name.replace('o', '0') == ' Hell0 W0rld ' && 'abc'.substring(1) == 'bc'", o.clone());
        yes("'hello'.indexOf('l') == 2 && 'hello'.charAt(1) == 'e'", o.clone());
        yes(
            "quantity('1Gi').isGreaterThan(quantity('1G')) && quantity('500m').compareTo(quantity('0.5')) == 0",
            o.clone(),
        );
        yes("isQuantity('10Mi') && !isQuantity('ten')", o.clone());
        yes("sets.contains(self.tags, ['a']) && sets.intersects(self.tags, ['c', 'z'])", o.clone());
        yes("'abc123'.find('[0-9]+') == '123' && 'a1b2'.findAll('[0-9]') == ['1', '2']", o.clone());
    }

    /// The error a rule fails to compile with.
    fn compile_err(rule: &str) -> String {
        let ty = check::schema_type(&schema(), false).unwrap();
        match Program::compile(rule, &[("self", ty)], Want::Bool) {
            Err(CompileError::Issues(s)) => s,
            other => panic!("{rule}: {other:?}"),
        }
    }

    #[test]
    fn ip_and_cidr_libraries() {
        let o = json!({"name": "10.0.0.7", "tags": ["10.0.0.0/8", "192.168.0.0/16"]});
        yes("isIP(self.name) && ip(self.name).family() == 4 && ip('::1').family() == 6", o.clone());
        no("isIP('192.168.0.1.0') || isIP('fe80::1%eth0') || isIP('::ffff:1.2.3.4')", o.clone());
        yes("ip.isCanonical('2001:db8::abcd') && !ip.isCanonical('2001:DB8::ABCD')", o.clone());
        yes("ip('0.0.0.0').isUnspecified() && ip('::').isUnspecified() && !ip('::1').isUnspecified()", o.clone());
        yes("ip('127.0.0.1').isLoopback() && ip('::1').isLoopback() && !ip('1.2.3.4').isLoopback()", o.clone());
        yes("ip('224.0.0.1').isLinkLocalMulticast() && !ip('224.0.1.1').isLinkLocalMulticast()", o.clone());
        yes("ip('ff02::1').isLinkLocalMulticast() && !ip('fd00::1').isLinkLocalMulticast()", o.clone());
        yes("ip('169.254.169.254').isLinkLocalUnicast() && ip('fe80::1').isLinkLocalUnicast()", o.clone());
        no("ip('192.168.0.1').isLinkLocalUnicast() || ip('fd80::1').isLinkLocalUnicast()", o.clone());
        yes("ip('192.168.0.1').isGlobalUnicast() && ip('2001:db8::abcd').isGlobalUnicast()", o.clone());
        no("ip('255.255.255.255').isGlobalUnicast() || ip('ff00::1').isGlobalUnicast()", o.clone());
        yes("string(ip('2001:DB8::0:68')) == '2001:db8::68' && ip('1.2.3.4') == ip('1.2.3.4')", o.clone());
        yes("ip('1.2.3.4') != ip('1.2.3.5') && type(ip('1.2.3.4')) == net.IP", o.clone());
        yes(
            "self.tags.exists(c, cidr(c).containsIP(self.name)) && cidr('10.0.0.0/8').containsIP(ip('10.1.2.3'))",
            o.clone(),
        );
        no(
            "cidr('192.168.0.0/24').containsIP('192.168.1.1') || cidr('2001:db8::/32').containsIP('1.2.3.4')",
            o.clone(),
        );
        yes("cidr('192.168.0.0/16').containsCIDR('192.168.10.0/24') && cidr('::/0').containsCIDR(cidr('2001:db8::/32'))", o.clone());
        no("cidr('192.168.0.0/24').containsCIDR(cidr('192.168.0.0/23'))", o.clone());
        yes("cidr('192.168.0.1/24').ip() == ip('192.168.0.1') && cidr('192.168.0.1/24').masked() == cidr('192.168.0.0/24')", o.clone());
        yes("cidr('192.168.0.1/24') != cidr('192.168.0.0/24') && cidr('::1/128').prefixLength() == 128", o.clone());
        yes("string(cidr('192.168.0.1/24').masked()) == '192.168.0.0/24' && type(cidr('::/0')) == net.CIDR", o.clone());
        yes(
            "isCIDR('10.0.0.0/8') && !isCIDR('10.0.0.0/33') && !isCIDR('10.0.0.0') && !isCIDR('::ffff:1.2.3.4/120')",
            o.clone(),
        );
        assert_eq!(
            run("ip('127.0.0.256') == ip('1.2.3.4')", o.clone()).unwrap_err(),
            "Msg(\"IP Address \\\"127.0.0.256\\\" parse error during conversion from string: ParseAddr(\\\"127.0.0.256\\\"): IPv4 field has value >255\")"
        );
        assert!(run("cidr('1.2.3.4/').prefixLength() > 0", o.clone()).unwrap_err().contains("bad bits after slash"));
        assert!(compile_err("isIP(cidr('192.168.0.0/24'))")
            .contains("found no matching overload for 'isIP' applied to '(net.CIDR)'"));
        assert!(compile_err("ip('1.2.3.4').family() == 'four'")
            .contains("found no matching overload for '_==_' applied to '(int, string)'"));
        assert!(compile_err("cidr('10.0.0.0/8').containsIP(1)")
            .contains("found no matching overload for 'containsIP' applied to 'net.CIDR.(int)'"));
        assert!(compile_err("ip(self.name) == cidr('10.0.0.0/8')").contains("applied to '(net.IP, net.CIDR)'"));
        assert!(compile_err("self.name.family() == 4").contains("applied to 'string.()'"));
    }

    #[test]
    fn url_library() {
        let o = json!({"name": "https://user:pw@Example.com:8443/a%20b/c?k1=a&k2=b&k2=c#frag"});
        yes(
            "isURL(self.name) && url(self.name).getScheme() == 'https' && url(self.name).getPort() == '8443'",
            o.clone(),
        );
        yes(
            "url(self.name).getHost() == 'Example.com:8443' && url(self.name).getHostname() == 'Example.com'",
            o.clone(),
        );
        yes("url(self.name).getEscapedPath() == '/a%20b/c'", o.clone());
        yes("url(self.name).getQuery() == {'k1': ['a'], 'k2': ['b', 'c']}", o.clone());
        yes("url(self.name).getQuery()['k2'][1] == 'c' && url('https://e.com/p?').getQuery().size() == 0", o.clone());
        yes(
            "url('https://[::1]:80/').getHost() == '[::1]:80' && url('https://[::1]:80/').getHostname() == '::1'",
            o.clone(),
        );
        yes("url('/absolute-path').getScheme() == '' && url('/absolute-path').getHost() == ''", o.clone());
        yes("url('https://example.com/path with spaces/').getEscapedPath() == '/path%20with%20spaces/'", o.clone());
        yes(
            "url('https://example.com').getEscapedPath() == '' && url('https://example.com/').getPort() == ''",
            o.clone(),
        );
        no("isURL('../relative-path') || isURL('https://a:b:c/') || isURL('')", o.clone());
        assert_eq!(
            run("url('../relative-path').getScheme() == ''", o.clone()).unwrap_err(),
            "Msg(\"URL parse error during conversion from string: parse \\\"../relative-path\\\": invalid URI for request\")"
        );
        assert!(
            compile_err("url(1).getScheme() == ''").contains("found no matching overload for 'url' applied to '(int)'")
        );
        assert!(compile_err("url(self.name).getQuery() == 'x'")
            .contains("applied to '(map(string, list(string)), string)'"));
        assert!(compile_err("url(self.name).getPort() == 80").contains("applied to '(string, int)'"));
    }

    #[test]
    fn semver_library() {
        let o = json!({"name": "1.2.3-beta.1+build.5"});
        yes("isSemver(self.name) && semver(self.name).major() == 1 && semver(self.name).minor() == 2", o.clone());
        yes("semver(self.name).patch() == 3 && semver(self.name).isLessThan(semver('1.2.3'))", o.clone());
        yes(
            "semver('1.2.3').isGreaterThan(semver('1.0.0')) && semver('1.2.3').compareTo(semver('2.0.0')) == -1",
            o.clone(),
        );
        yes(
            "semver('1.2.3').compareTo(semver('1.2.3')) == 0 && semver('1.2.3').compareTo(semver('0.1.2')) == 1",
            o.clone(),
        );
        yes("semver('1.2.3+a') == semver('1.2.3+b') && semver('1.2.3') != semver('1.0.0')", o.clone());
        yes("semver('v01.01', true) == semver('1.1.0') && isSemver('v1.0', true) && isSemver('1', true)", o.clone());
        no(
            "isSemver('v1.0.0') || isSemver('01.01.01') || isSemver('1.1') || isSemver(' 1.0.0') || isSemver('', true)",
            o.clone(),
        );
        no("semver('1.0.0').isLessThan(semver('1.0.0')) || semver('1.0.0').isGreaterThan(semver('1.0.0'))", o.clone());
        assert_eq!(
            run("semver('v1.0').major() == 1", o.clone()).unwrap_err(),
            "Msg(\"No Major.Minor.Patch elements found\")"
        );
        assert!(compile_err("isSemver([1, 2, 3])")
            .contains("found no matching overload for 'isSemver' applied to '(list(int))'"));
        assert!(compile_err("semver('1.0.0').isLessThan('2.0.0')")
            .contains("found no matching overload for 'isLessThan' applied to 'kubernetes.Semver.(string)'"));
        assert!(compile_err("semver('1.0.0', 'yes').major() == 1").contains("applied to '(string, string)'"));
    }

    #[test]
    fn two_variable_comprehensions() {
        let o = json!({"tags": ["a", "b", "c"], "labels": {"app": "web", "tier": "front"},
            "ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]});
        // Lists give the index and the element, maps the key and the value.
        yes("self.tags.all(i, t, self.tags[i] == t) && [1, 2, 3].all(i, j, i < j)", o.clone());
        no("{'hello': 'world', 'taco': 'taco'}.all(k, v, k != v)", o.clone());
        yes("self.labels.all(k, v, k.size() >= 3 && v.size() >= 3)", o.clone());
        no("self.labels.all(k, v, v == 'web')", o.clone());
        yes("self.labels.exists(k, v, k == 'tier' && v == 'front')", o.clone());
        no("[1, 2, 4, 8, 16].exists(i, v, v == 1024 && i == 10)", o.clone());
        yes("[1, 1, 2, 2, 3, 3].existsOne(i, v, i == 2 && v == 2)", o.clone());
        yes("{'i': 0, 'j': 1, 'k': 2}.exists_one(i, v, i == 'l' || v == 1)", o.clone());
        no("[1, 2, 1, 3, 1, 4].existsOne(i, v, i == 1 || v == 1)", o.clone());
        // As the one-variable forms, all and exists prefer a decisive element to an error.
        no("[0, 1].all(i, v, 10 / v == 5)", o.clone());
        yes("[0, 1].exists(i, v, 10 / v == 10)", o.clone());
        assert_eq!(run("[0, 1].all(i, v, 10 / v > 0)", o.clone()).unwrap_err(), "Msg(\"division by zero\")");
        // The transforms, with and without a filter.
        yes("[1, 2, 3].transformList(i, v, i * v + v) == [1, 4, 9]", o.clone());
        yes("[1, 2, 3].transformList(i, v, i % 2 == 0, i * v + v) == [1, 9]", o.clone());
        yes("self.labels.transformList(k, _, k) == ['app', 'tier']", o.clone());
        yes("self.labels.transformList(_, v, v) == ['web', 'front']", o.clone());
        yes("[1, 2, 3].transformMap(i, v, i * v + v) == {0: 1, 1: 4, 2: 9}", o.clone());
        yes("[1, 2, 3].transformMap(i, v, i % 2 == 0, i * v + v) == {0: 1, 2: 9}", o.clone());
        yes("self.labels.transformMap(k, v, v + '!') == {'app': 'web!', 'tier': 'front!'}", o.clone());
        yes("self.labels.transformMapEntry(k, v, {v: k}) == {'web': 'app', 'front': 'tier'}", o.clone());
        yes("self.ports.transformMapEntry(i, p, p.port > 100, {p.name: p.port}) == {'https': 443}", o.clone());
        yes("self.ports.transformMapEntry(i, p, {p.name: p.port, string(i): i}).size() == 4", o.clone());
        no("[].transformList(i, v, v) != [] || {}.transformMap(k, v, v) != {}", o.clone());
        // A key the entries repeat is an error, in cel-go's words; 0 and 0u are the same key.
        assert_eq!(
            run("[1, 1].transformMapEntry(i, v, {v: i}).size() == 2", o.clone()).unwrap_err(),
            "Msg(\"insert failed: key 1 already exists\")"
        );
        assert_eq!(
            run("[0, 0u].transformMapEntry(i, v, {v: i}).size() == 2", o.clone()).unwrap_err(),
            "Msg(\"insert failed: key 0 already exists\")"
        );
        // A variable shadows one of the same name; oldSelf as a variable is no transition rule.
        yes("self.tags.all(i, self, self.size() == 1)", o.clone());
        let map = Ty::Map(Box::new(Ty::String), Box::new(Ty::Int));
        let p = Program::compile(
            "self.all(k, oldSelf, oldSelf > 0)",
            &[("self", map.clone()), ("oldSelf", map)],
            Want::Bool,
        );
        assert!(!p.unwrap().uses_old_self);
        // Misuse is refused when the rule is compiled.
        assert!(compile_err("self.tags.all(i, i, i > 0)").contains("1:18: duplicate variable name: i"));
        assert!(compile_err("self.tags.all(i.j, k, true)").contains("argument must be a simple name"));
        assert!(compile_err("self.tags.exists(j, i.k, true)").contains("1:22: argument must be a simple name"));
        assert!(compile_err("self.tags.transformList(__result__, v, v) == []")
            .contains("iteration variable overwrites accumulator variable"));
        assert!(compile_err("self.tags.all(__result__, true)").contains("overwrites accumulator variable"));
        assert!(compile_err("self.name.existsOne(k, v, true)").contains(
            "expression of type 'string' cannot be range of a comprehension (must be list, map, or dynamic)"
        ));
        assert!(compile_err("self.tags.all(i, v, v)").contains("expected type 'bool' but found 'string'"));
        assert!(compile_err("self.tags.all(i, v, i == 'a')")
            .contains("found no matching overload for '_==_' applied to '(int, string)'"));
        assert!(compile_err("self.labels.exists(k, v, v > 1)").contains("applied to '(string, int)'"));
        assert!(compile_err("self.tags.transformList(i, v, 'x', v) == []")
            .contains("expected type 'bool' but found 'string'"));
        assert!(
            compile_err("self.tags.transformList(i, v, i) == ['a']").contains("applied to '(list(int), list(string))'")
        );
        assert!(compile_err("self.tags.transformMap(i, v, v)[0] == 1").contains("applied to '(string, int)'"));
        assert!(compile_err("self.labels.transformMapEntry(k, v, {v: 1})['a'] == 'b'")
            .contains("applied to '(int, string)'"));
        assert!(compile_err("self.labels.transformMapEntry(k, v, []) == {}")
            .contains("found no matching overload for 'cel.@mapInsert' applied to '(map(dyn, dyn), list(dyn))'"));
        let e = compile_err("self.tags.transformList(1, 2)");
        assert!(e.contains("undeclared reference to 'transformList'"), "{e}");
    }

    #[test]
    fn strings_format_quote_and_the_format_library() {
        let o = json!({"name": "web-1", "replicas": 3, "tags": ["a"]});
        yes("'%s has %d replicas'.format([self.name, self.replicas]) == 'web-1 has 3 replicas'", o.clone());
        yes("'%.2f|%x|%b|%o|%%'.format([1.5, 255, 5, 8]) == '1.50|ff|101|10|%'", o.clone());
        yes("'%s'.format([self.tags]) == '[\"a\"]'", o.clone());
        no("'%d'.format([1]) == '2'", o.clone());
        assert_eq!(run("'%d %d'.format([1]) == ''", o.clone()).unwrap_err(), "Msg(\"index 1 out of range\")");
        yes("strings.quote('say \"hi\"\\n') == '\"say \\\\\"hi\\\\\"\\\\n\"'", o.clone());
        yes("!format.dns1123Label().validate(self.name).hasValue()", o.clone());
        yes("format.dns1123Label().validate('Web_1').value()[0].startsWith('a lowercase RFC 1123 label')", o.clone());
        yes("format.named('dns1123Subdomain').hasValue() && !format.named('nope').hasValue()", o.clone());
        yes(
            "format.named('uuid').value().validate('123e4567-e89b-12d3-a456-426614174000') == optional.none()",
            o.clone(),
        );
        yes(
            "format.qualifiedName().validate('a/b/c').hasValue() && !format.labelValue().validate('').hasValue()",
            o.clone(),
        );
        no("format.uri().validate('https://example.com').hasValue()", o.clone());
        assert!(compile_err("'%d'.format(1) == ''")
            .contains("found no matching overload for 'format' applied to 'string.(int)'"));
        assert!(compile_err("format.dns1123Label().validate(1).hasValue()")
            .contains("found no matching overload for 'validate' applied to 'kubernetes.NamedFormat.(int)'"));
        assert!(compile_err("format.named(1).hasValue()")
            .contains("found no matching overload for 'format.named' applied to '(int)'"));
        assert!(compile_err("strings.quote(1) == ''")
            .contains("found no matching overload for 'strings.quote' applied to '(int)'"));
        assert!(compile_err("format.bogus().validate('x').hasValue()").contains("undeclared reference to 'format'"));
    }

    #[test]
    fn no_rule_text_panics() {
        // Every prefix of rules using the new functions, checked and (when they compile) run.
        let rules = [
            "cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16') && ip('fe80::1').isLinkLocalUnicast()",
            "url('https://[::1]:80/%zz?a=%zz;b&c').getQuery().size() >= 0",
            "semver('1.0.0-rc.1+b', true).compareTo(semver('v1', true)) < 0",
            "'%.200f%e%X%'.format([1.0, dyn('x'), 'é', 1]) != '' && format.dns1123LabelPrefix().validate('é-').hasValue()",
            "self.tags.transformMapEntry(i, v, v != 'é', {v: i}).all(k, v, [k].existsOne(j, w, w == k && j == v))",
            "{'a': [1], 'b': dyn(2)}.transformMap(k, v, k == 'a', dyn(v).transformList(i, x, x)).exists(k, v, v == [1])",
        ];
        let o = json!({"name": "x"});
        for r in rules {
            for (i, _) in r.char_indices() {
                let _ = run(&r[..i], o.clone());
            }
            let _ = run(r, o.clone());
        }
    }

    #[test]
    fn runtime_errors_have_cel_go_wording() {
        let o = json!({"replicas": 3, "tags": ["a"]});
        assert_eq!(run("self.name == 'x'", o.clone()).unwrap_err(), "Msg(\"no such key: name\")");
        assert_eq!(
            run("self.tags[5] == 'x'", o.clone()).unwrap_err(),
            "Msg(\"index '5' out of range in list size '1'\")"
        );
        assert_eq!(run("self.replicas / 0 == 1", o.clone()).unwrap_err(), "Msg(\"division by zero\")");
        assert_eq!(run("9223372036854775807 + self.replicas > 0", o.clone()).unwrap_err(), "Msg(\"integer overflow\")");
        assert_eq!(run("-(-9223372036854775807 - self.replicas) > 0", o).unwrap_err(), "Msg(\"integer overflow\")");
    }

    #[test]
    fn rules_are_type_checked_against_the_schema() {
        let ty = check::schema_type(&schema(), false).unwrap();
        let c = |r: &str| Program::compile(r, &[("self", ty.clone())], Want::Bool);
        let err = |r: &str| match c(r) {
            Err(CompileError::Issues(s)) => s,
            other => panic!("{r}: {other:?}"),
        };
        assert!(err("self.replica > 0").starts_with("ERROR: <input>:1:5: undefined field 'replica'"));
        assert!(err("foo > 0").starts_with("ERROR: <input>:1:1: undeclared reference to 'foo' (in container '')"));
        assert!(
            err("self.replicas == 'a'").contains("found no matching overload for '_==_' applied to '(int, string)'")
        );
        assert!(err("self.name.frobnicate()").contains("undeclared reference to 'frobnicate'"));
        assert!(err("self.replicas.startsWith('a')")
            .contains("found no matching overload for 'startsWith' applied to 'int.(string)'"));
        assert_eq!(c("self.replicas + 1"), Err(CompileError::ResultType(Ty::Int)));
        assert!(c("self.size == 'a' || self.size == 1").is_ok(), "int-or-string is dyn");
        assert!(c("oldSelf.replicas <= self.replicas").is_err(), "oldSelf is only there when declared");
        assert!(
            Program::compile("oldSelf == self", &[("self", Ty::Int), ("oldSelf", Ty::Int)], Want::Bool)
                .unwrap()
                .uses_old_self
        );
    }

    #[test]
    fn runaway_rules_stop_at_the_cost_limit() {
        let s = json!({"type": "array", "items": {"type": "integer"}});
        let big: Vec<i64> = (0..300).collect();
        let p = Program::compile(
            "self.all(a, self.all(b, self.all(c, a + b + c >= 0)))",
            &[("self", check::schema_type(&s, false).unwrap())],
            Want::Bool,
        )
        .unwrap();
        let mut m = Meter::new(PER_CALL_LIMIT);
        let started = std::time::Instant::now();
        let r = p.eval(vec![(Arc::from("self"), value::from_json(&json!(big), &s, false))], &mut m);
        assert!(matches!(r, Err(EvalError::CostLimit)), "{r:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
