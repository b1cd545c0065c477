//! Resource quantities (`100m`, `128Mi`, `1.5G`, `2e3`) and the pod QoS class, as
//! `k8s.io/apimachinery/pkg/api/resource` and `pkg/apis/core/v1/helper/qos` define them.
//! Pure.

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

use crate::agent::runtime::Resources;

/// The value of a quantity as a float (bytes for memory, cores for CPU), or `None` if it does
/// not parse. f64 is exact far beyond any node's memory.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (s, mult) in SUFFIXES {
        if let Some(num) = q.strip_suffix(s) {
            return num.parse::<f64>().ok().filter(|v| v.is_finite()).map(|v| v * mult);
        }
    }
    for (s, mult) in [("P", 1e15), ("E", 1e18)] {
        if let Some(num) = q.strip_suffix(s) {
            return num.parse::<f64>().ok().filter(|v| v.is_finite()).map(|v| v * mult);
        }
    }
    // Plain numbers and the decimal exponent form (`1e3`, `1E3`).
    q.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn get(map: &Option<BTreeMap<String, Quantity>>, key: &str) -> Option<f64> {
    map.as_ref()?.get(key).and_then(|q| parse_quantity(&q.0))
}

/// Requests default to limits when only limits are set (API defaulting does the same).
fn request(r: &ResourceRequirements, key: &str) -> Option<f64> {
    get(&r.requests, key).or_else(|| get(&r.limits, key))
}

/// CPU and memory settings the runtime applies to one container.
pub fn container_resources(c: &Container) -> Resources {
    let r = c.resources.clone().unwrap_or_default();
    // CPU rounds up to whole millicores, as the kubelet's MilliValue() does.
    let millis = |v: f64| (v * 1000.0).ceil() as u64;
    Resources {
        cpu_request_millis: request(&r, "cpu").map(millis),
        cpu_limit_millis: get(&r.limits, "cpu").map(millis),
        memory_limit_bytes: get(&r.limits, "memory").map(|v| v.ceil() as u64),
    }
}

/// `GetPodQOS`: Guaranteed when every container limits CPU and memory with requests equal to
/// limits; BestEffort when nothing requests or limits CPU or memory; Burstable otherwise.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let all: Vec<&Container> = spec.init_containers.iter().flatten().chain(spec.containers.iter()).collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.clone().unwrap_or_default();
        for key in ["cpu", "memory"] {
            let req = get(&r.requests, key);
            let lim = get(&r.limits, key);
            if req.is_some_and(|v| v > 0.0) || lim.is_some_and(|v| v > 0.0) {
                any = true;
            }
            match (request(&r, key), lim) {
                (Some(a), Some(b)) if a == b => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Container {
        let m = |v: &[(&str, &str)]| {
            (!v.is_empty()).then(|| v.iter().map(|(k, q)| (k.to_string(), Quantity(q.to_string()))).collect())
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements { requests: m(req), limits: m(lim), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn quantities_parse_in_binary_decimal_and_milli_forms() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("128Mi"), Some(134217728.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("1.5Gi"), Some(1610612736.0));
        assert_eq!(parse_quantity("lots"), None);
    }

    #[test]
    fn container_resources_take_requests_from_limits_when_missing() {
        let r = container_resources(&container(&[], &[("cpu", "500m"), ("memory", "64Mi")]));
        assert_eq!(r.cpu_request_millis, Some(500));
        assert_eq!(r.cpu_limit_millis, Some(500));
        assert_eq!(r.memory_limit_bytes, Some(64 * 1024 * 1024));
        let r = container_resources(&container(&[("cpu", "0.25")], &[]));
        assert_eq!((r.cpu_request_millis, r.cpu_limit_millis, r.memory_limit_bytes), (Some(250), None, None));
    }

    #[test]
    fn qos_class_follows_requests_and_limits() {
        let pod = |cs: Vec<Container>| PodSpec { containers: cs, ..Default::default() };
        assert_eq!(qos_class(&pod(vec![Container::default()])), "BestEffort");
        assert_eq!(qos_class(&pod(vec![container(&[], &[("cpu", "1"), ("memory", "1Gi")])])), "Guaranteed");
        assert_eq!(qos_class(&pod(vec![container(&[("cpu", "1")], &[("cpu", "2"), ("memory", "1Gi")])])), "Burstable");
        assert_eq!(
            qos_class(&pod(vec![container(&[], &[("cpu", "1"), ("memory", "1Gi")]), Container::default()])),
            "Burstable"
        );
    }
}
