//! Resource arithmetic for scheduling: parsing `resource.Quantity` strings and computing what a
//! pod asks of a node, following `k8s.io/component-helpers/resource.PodRequests`.
//!
//! Everything here is pure; quantities are kept as milli-units in `i128` so that cpu ("250m")
//! and memory ("1Gi", "1e9") share one representation without overflow.

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// A set of resources in milli-units, keyed by resource name (`cpu`, `memory`, `pods`, …).
pub type Resources = BTreeMap<String, i128>;

/// The cpu a pod without a cpu request is assumed to use when scoring (upstream
/// `DefaultMilliCPURequest`, 100m): it keeps many request-less pods from piling onto one node.
pub const DEFAULT_MILLI_CPU_REQUEST: i128 = 100;
/// The memory assumed for scoring a pod without a memory request (upstream
/// `DefaultMemoryRequest`, 200 MiB), in milli-bytes.
pub const DEFAULT_MEMORY_REQUEST_MILLI: i128 = 200 * 1024 * 1024 * 1000;

/// Parses a Kubernetes quantity ("100m", "1.5", "2Gi", "1e3", "500M") into milli-units,
/// rounding fractions of a milli-unit up, as `Quantity.MilliValue` does. `None` if malformed.
pub fn parse_milli(q: &str) -> Option<i128> {
    let s = q.trim();
    if s.is_empty() {
        return None;
    }
    // Split the numeric part from the suffix.
    let num_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let (mant_neg, digits) = match num.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    if digits.is_empty() || digits.matches('.').count() > 1 || digits.contains(['+', '-']) {
        return None;
    }
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    // value = mantissa * 10^scale10 * 2^scale2
    let mantissa_str = format!("{int_part}{frac_part}");
    let mantissa: i128 = if mantissa_str.is_empty() { 0 } else { mantissa_str.parse().ok()? };
    let mut scale10: i32 = -(frac_part.len() as i32);
    let mut scale2: u32 = 0;
    match suffix {
        "" => {}
        "n" => scale10 -= 9,
        "u" => scale10 -= 6,
        "m" => scale10 -= 3,
        "k" => scale10 += 3,
        "M" => scale10 += 6,
        "G" => scale10 += 9,
        "T" => scale10 += 12,
        "P" => scale10 += 15,
        "E" => scale10 += 18,
        "Ki" => scale2 = 10,
        "Mi" => scale2 = 20,
        "Gi" => scale2 = 30,
        "Ti" => scale2 = 40,
        "Pi" => scale2 = 50,
        "Ei" => scale2 = 60,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().ok()?;
            scale10 += exp;
        }
        _ => return None,
    }
    // Milli-units: one more factor of 10^3.
    scale10 += 3;
    let mut v = mantissa.checked_mul(1i128.checked_shl(scale2)?)?;
    if scale10 >= 0 {
        v = v.checked_mul(10i128.checked_pow(scale10 as u32)?)?;
    } else {
        let d = 10i128.checked_pow((-scale10) as u32)?;
        // Round up (away from zero for positives) like MilliValue's ceiling.
        v = (v + d - 1) / d;
    }
    Some(if mant_neg { -v } else { v })
}

/// Adds `b` into `a`.
pub fn add(a: &mut Resources, b: &Resources) {
    for (k, v) in b {
        *a.entry(k.clone()).or_insert(0) += v;
    }
}

/// Raises each resource of `a` to at least its value in `b`.
fn max_into(a: &mut Resources, b: &Resources) {
    for (k, v) in b {
        let e = a.entry(k.clone()).or_insert(0);
        if *v > *e {
            *e = *v;
        }
    }
}

/// Converts a `ResourceList` into milli-units, skipping unparsable quantities (the API server
/// validates them, so a bad one here means a bug elsewhere, not a reason to stop scheduling).
pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
    list.into_iter().flatten().filter_map(|(k, q)| parse_milli(&q.0).map(|v| (k.clone(), v))).collect()
}

/// A container's requests. The API server defaults requests to limits where only limits are
/// given (`SetDefaults_ResourceRequirements`); repeat that here so a client that skipped defaulting
/// does not get a free pass.
pub fn container_requests(c: &Container) -> Resources {
    let r = c.resources.as_ref();
    let mut req = from_list(r.and_then(|r| r.requests.as_ref()));
    for (k, v) in from_list(r.and_then(|r| r.limits.as_ref())) {
        req.entry(k).or_insert(v);
    }
    req
}

/// What a pod needs from a node: the larger of the sum of its containers (plus sidecars, i.e.
/// init containers with `restartPolicy: Always`) and its biggest init step, plus the pod
/// overhead — the same rule as upstream `resource.PodRequests`.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else { return Resources::new() };
    let mut reqs = Resources::new();
    for c in &spec.containers {
        add(&mut reqs, &container_requests(c));
    }
    let mut restartable = Resources::new();
    let mut init_max = Resources::new();
    for ic in spec.init_containers.iter().flatten() {
        let mut creq = container_requests(ic);
        if ic.restart_policy.as_deref() == Some("Always") {
            // A sidecar keeps running beside the app containers and every later init step.
            add(&mut reqs, &creq);
            add(&mut restartable, &creq);
            creq = restartable.clone();
        } else {
            add(&mut creq, &restartable);
        }
        max_into(&mut init_max, &creq);
    }
    max_into(&mut reqs, &init_max);
    add(&mut reqs, &from_list(spec.overhead.as_ref()));
    reqs
}

/// The requests used by score plugins: like [`pod_requests`] but a container without a cpu or
/// memory request counts as the upstream non-zero defaults (`GetNonzeroRequests`).
pub fn pod_nonzero_requests(pod: &Pod) -> (i128, i128) {
    let Some(spec) = pod.spec.as_ref() else { return (0, 0) };
    let nz = |c: &Container| {
        let r = container_requests(c);
        (
            r.get("cpu").copied().unwrap_or(DEFAULT_MILLI_CPU_REQUEST),
            r.get("memory").copied().unwrap_or(DEFAULT_MEMORY_REQUEST_MILLI),
        )
    };
    let (mut cpu, mut mem) = (0, 0);
    for c in &spec.containers {
        let (a, b) = nz(c);
        cpu += a;
        mem += b;
    }
    for ic in spec.init_containers.iter().flatten() {
        let (a, b) = nz(ic);
        cpu = cpu.max(a);
        mem = mem.max(b);
    }
    let o = from_list(spec.overhead.as_ref());
    (cpu + o.get("cpu").copied().unwrap_or(0), mem + o.get("memory").copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    pub(crate) fn container(name: &str, cpu: &str, mem: &str) -> Container {
        let mut req = BTreeMap::new();
        if !cpu.is_empty() {
            req.insert("cpu".to_string(), Quantity(cpu.into()));
        }
        if !mem.is_empty() {
            req.insert("memory".to_string(), Quantity(mem.into()));
        }
        Container {
            name: name.into(),
            resources: Some(ResourceRequirements { requests: Some(req), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn quantities_parse_to_milli_units() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("2Ki"), Some(2048 * 1000));
        assert_eq!(parse_milli("1Gi"), Some((1i128 << 30) * 1000));
        assert_eq!(parse_milli("500M"), Some(500_000_000 * 1000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("1n"), Some(1), "fractions of a milli round up");
        assert_eq!(parse_milli("abc"), None);
        assert_eq!(parse_milli("1Zi"), None);
        assert_eq!(parse_milli(""), None);
    }

    #[test]
    fn pod_requests_take_the_larger_of_containers_and_init_containers_plus_overhead() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container("a", "100m", "64Mi"), container("b", "200m", "")],
                init_containers: Some(vec![container("i", "500m", "32Mi")]),
                overhead: Some([("cpu".to_string(), Quantity("10m".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = pod_requests(&pod);
        assert_eq!(r["cpu"], 510);
        assert_eq!(r["memory"], 64 * 1024 * 1024 * 1000);
    }

    #[test]
    fn sidecar_init_containers_add_to_the_app_containers() {
        let mut sidecar = container("s", "100m", "");
        sidecar.restart_policy = Some("Always".into());
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container("a", "200m", "")],
                init_containers: Some(vec![sidecar, container("i", "250m", "")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        // app 200m + sidecar 100m = 300m; the later init step needs 250m + sidecar 100m = 350m.
        assert_eq!(pod_requests(&pod)["cpu"], 350);
    }

    #[test]
    fn limits_stand_in_for_missing_requests() {
        let c = Container {
            name: "a".into(),
            resources: Some(ResourceRequirements {
                limits: Some([("cpu".to_string(), Quantity("1".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(container_requests(&c)["cpu"], 1000);
    }

    #[test]
    fn nonzero_requests_fill_in_upstream_defaults() {
        let pod = Pod {
            spec: Some(PodSpec { containers: vec![container("a", "", "")], ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(pod_nonzero_requests(&pod), (DEFAULT_MILLI_CPU_REQUEST, DEFAULT_MEMORY_REQUEST_MILLI));
    }
}
