//! The HorizontalPodAutoscaler controller (upstream pkg/controller/podautoscaler), for
//! autoscaling/v2 `Resource` metrics (cpu, memory) read from metrics.k8s.io.
//!
//! Every sync period (15 s, upstream's `--horizontal-pod-autoscaler-sync-period`) each HPA is
//! reconciled: the target's scale subresource gives the current replicas and the pod selector,
//! the pods and their metrics give a proposal per metric (the largest wins), the proposal is
//! stabilized and rate-limited (behavior, or the pre-behavior rules when `spec.behavior` is
//! unset), the scale subresource is updated, and status, conditions and Events are written.
//!
//! The replica computation ([`resource_replicas`]) and the normalization ([`normalize`],
//! [`normalize_with_behavior`]) are pure functions over plain data; times are milliseconds
//! since the Unix epoch.

use super::events::{object_ref, Recorder};
use super::passes;
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, MetricSpec, MetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Upstream's `--horizontal-pod-autoscaler-sync-period` default.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(15);
/// Upstream's `--horizontal-pod-autoscaler-tolerance`.
pub const TOLERANCE: f64 = 0.1;
/// Upstream's `--horizontal-pod-autoscaler-cpu-initialization-period`.
const CPU_INITIALIZATION_PERIOD_MS: i64 = 5 * 60 * 1000;
/// Upstream's `--horizontal-pod-autoscaler-initial-readiness-delay`.
const INITIAL_READINESS_DELAY_MS: i64 = 30 * 1000;
/// Upstream's `--horizontal-pod-autoscaler-downscale-stabilization` (used without behavior).
const DOWNSCALE_STABILIZATION_MS: i64 = 5 * 60 * 1000;

// ---------------------------------------------------------------------------------------------
// Replica calculation (upstream replica_calculator.go)

/// What the calculation needs to know about one pod matched by the target's selector.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub name: String,
    /// `status.phase`.
    pub phase: String,
    pub deleting: bool,
    /// The Ready condition: (status is True, lastTransitionTime in ms).
    pub ready: Option<(bool, Option<i64>)>,
    /// `status.startTime` in ms.
    pub start_time: Option<i64>,
    /// Sum of the containers' requests of the resource in milli-units; None when a container
    /// has none.
    pub request_milli: Option<i64>,
    /// The first container without a request (for the error message).
    pub container_without_request: Option<String>,
}

/// One pod's usage of the resource (sum over its containers), in milli-units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodMetric {
    pub timestamp_ms: i64,
    pub window_ms: i64,
    pub value_milli: i64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// `averageUtilization`: percent of the pods' requests.
    Utilization(i32),
    /// `averageValue` per pod, in milli-units.
    AverageValue(i64),
}

/// A metric's replica proposal and what it measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    /// Percent of requests (Utilization targets only).
    pub utilization: Option<i32>,
    /// Average usage per pod with metrics, in milli-units.
    pub average_milli: i64,
}

#[derive(Debug, Default)]
struct Groups {
    ready: i32,
    unready: Vec<String>,
    missing: Vec<String>,
    ignored: Vec<String>,
}

/// Sorts pods as upstream's `groupPods`: deleted/failed ones are ignored, pending ones and
/// (for cpu) ones not yet ready or whose metric predates their readiness are unready, ones
/// without a metric are missing, the rest ready.
fn group_pods(pods: &[PodInfo], metrics: &HashMap<String, PodMetric>, cpu: bool, now: i64) -> Groups {
    let mut g = Groups::default();
    for p in pods {
        if p.deleting || p.phase == "Failed" {
            g.ignored.push(p.name.clone());
            continue;
        }
        if p.phase == "Pending" {
            g.unready.push(p.name.clone());
            continue;
        }
        let Some(m) = metrics.get(&p.name) else {
            g.missing.push(p.name.clone());
            continue;
        };
        if cpu {
            let unready = match (p.ready, p.start_time) {
                (None, _) | (_, None) => true,
                (Some((status, transition)), Some(start)) => {
                    let transition = transition.unwrap_or(start);
                    if start + CPU_INITIALIZATION_PERIOD_MS > now {
                        // Still initializing: only metrics taken after it became ready count.
                        !status || m.timestamp_ms < transition + m.window_ms
                    } else {
                        // Never became ready since it started (within the readiness delay).
                        !status && start + INITIAL_READINESS_DELAY_MS > transition
                    }
                }
            };
            if unready {
                g.unready.push(p.name.clone());
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// Total usage and total request of the pods in `metrics` (Utilization).
fn utilization_ratio(
    metrics: &HashMap<String, i64>,
    requests: &HashMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut usage, mut request) = (0i64, 0i64);
    for (pod, v) in metrics {
        let r = requests.get(pod).ok_or_else(|| format!("missing request for pod {pod}"))?;
        usage += v;
        request += r;
    }
    if request == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = (usage * 100 / request) as i32;
    let average = usage / metrics.len().max(1) as i64;
    Ok((f64::from(utilization) / f64::from(target), utilization, average))
}

fn average_ratio(metrics: &HashMap<String, i64>, target: i64) -> (f64, i64) {
    let sum: i64 = metrics.values().sum();
    let avg = sum / metrics.len().max(1) as i64;
    (avg as f64 / target as f64, avg)
}

/// The replica count one Resource metric asks for (upstream `GetResourceReplicas` and
/// `GetRawResourceReplicas`): `ceil(ready pods × usage/target)`, unchanged within the
/// tolerance; pods without metrics count as using 100% of the target when scaling down and
/// 0% when scaling up, unready pods as 0% when scaling up, and a proposal that these
/// assumptions would reverse keeps the current count.
pub fn resource_replicas(
    current: i32,
    target: Target,
    cpu: bool,
    pods: &[PodInfo],
    metrics: &HashMap<String, PodMetric>,
    tolerance: f64,
    now: i64,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let g = group_pods(pods, metrics, cpu, now);
    let mut usage: HashMap<String, i64> = metrics
        .iter()
        .filter(|(k, _)| pods.iter().any(|p| &p.name == *k))
        .filter(|(k, _)| !g.ignored.contains(k) && !g.unready.contains(k))
        .map(|(k, m)| (k.clone(), m.value_milli))
        .collect();
    if usage.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let mut requests = HashMap::new();
    if let Target::Utilization(_) = target {
        for p in pods {
            match p.request_milli {
                Some(r) => {
                    requests.insert(p.name.clone(), r);
                }
                None => {
                    return Err(format!(
                        "missing request for {} in container {} of Pod {}",
                        if cpu { "cpu" } else { "memory" },
                        p.container_without_request.as_deref().unwrap_or(""),
                        p.name
                    ))
                }
            }
        }
    }
    let ratio_of = |usage: &HashMap<String, i64>| -> Result<(f64, Option<i32>, i64), String> {
        match target {
            Target::Utilization(t) => {
                let (r, u, avg) = utilization_ratio(usage, &requests, t)?;
                Ok((r, Some(u), avg))
            }
            Target::AverageValue(t) => {
                let (r, avg) = average_ratio(usage, t);
                Ok((r, None, avg))
            }
        }
    };
    let (ratio, utilization, average) = ratio_of(&usage)?;
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if (1.0 - ratio).abs() <= tolerance {
            return Ok(Proposal { replicas: current, utilization, average_milli: average });
        }
        let replicas = (ratio * f64::from(g.ready)).ceil() as i32;
        return Ok(Proposal { replicas, utilization, average_milli: average });
    }
    // Pods without metrics: 100% of the target when scaling down, 0% when scaling up.
    if !g.missing.is_empty() {
        for m in &g.missing {
            let v = if ratio < 1.0 {
                match target {
                    Target::Utilization(_) => requests.get(m).copied().unwrap_or(0),
                    Target::AverageValue(t) => t,
                }
            } else {
                0
            };
            usage.insert(m.clone(), v);
        }
    }
    if scale_up_with_unready {
        for u in &g.unready {
            usage.insert(u.clone(), 0);
        }
    }
    let (new_ratio, _, _) = ratio_of(&usage)?;
    if (1.0 - new_ratio).abs() <= tolerance || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        return Ok(Proposal { replicas: current, utilization, average_milli: average });
    }
    let replicas = (new_ratio * usage.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(Proposal { replicas: current, utilization, average_milli: average });
    }
    Ok(Proposal { replicas, utilization, average_milli: average })
}

// ---------------------------------------------------------------------------------------------
// Normalization (upstream horizontal.go)

/// A condition to set: (type, status, reason, message).
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

fn cond(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Cond {
    Cond { type_, status, reason, message: message.into() }
}

/// A past recommendation (for stabilization).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recommendation {
    pub at_ms: i64,
    pub replicas: i32,
}

/// A past rescale (for the rate policies).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleEvent {
    pub at_ms: i64,
    pub change: i32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SelectPolicy {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicyType {
    Pods,
    Percent,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub stabilization_window_seconds: i32,
    pub select_policy: SelectPolicy,
    /// (type, value, periodSeconds)
    pub policies: Vec<(PolicyType, i32, i32)>,
}

impl Rules {
    /// Upstream's defaults for scale up: no stabilization, +4 pods or +100% per 15 s.
    pub fn default_up() -> Rules {
        Rules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![(PolicyType::Pods, 4, 15), (PolicyType::Percent, 100, 15)],
        }
    }
    /// Upstream's defaults for scale down: 300 s stabilization, −100% per 15 s.
    pub fn default_down() -> Rules {
        Rules {
            stabilization_window_seconds: 300,
            select_policy: SelectPolicy::Max,
            policies: vec![(PolicyType::Percent, 100, 15)],
        }
    }

    /// `rules` with the unset fields taken from `default`.
    fn from_spec(rules: Option<&HPAScalingRules>, default: Rules) -> Rules {
        let Some(r) = rules else { return default };
        Rules {
            stabilization_window_seconds: r
                .stabilization_window_seconds
                .unwrap_or(default.stabilization_window_seconds),
            select_policy: match r.select_policy.as_deref() {
                Some("Min") => SelectPolicy::Min,
                Some("Disabled") => SelectPolicy::Disabled,
                Some(_) => SelectPolicy::Max,
                None => default.select_policy,
            },
            policies: match &r.policies {
                Some(ps) if !ps.is_empty() => ps
                    .iter()
                    .map(|p| {
                        let t = if p.type_ == "Percent" { PolicyType::Percent } else { PolicyType::Pods };
                        (t, p.value, p.period_seconds)
                    })
                    .collect(),
                _ => default.policies,
            },
        }
    }
}

/// The HPA's memory between syncs (upstream keeps it in the controller, not the object).
#[derive(Debug, Clone, Default)]
pub struct History {
    pub recommendations: Vec<Recommendation>,
    pub scale_up: Vec<ScaleEvent>,
    pub scale_down: Vec<ScaleEvent>,
}

impl History {
    /// Records a rescale from `from` to `to` (only with behavior, as upstream), dropping events
    /// older than the longest policy period.
    pub fn record_scale(&mut self, behavior: Option<&(Rules, Rules)>, from: i32, to: i32, now: i64) {
        let Some((up, down)) = behavior else { return };
        let longest = |r: &Rules| r.policies.iter().map(|p| i64::from(p.2)).max().unwrap_or(0) * 1000;
        if to > from {
            let keep = longest(up);
            self.scale_up.retain(|e| e.at_ms + keep > now);
            self.scale_up.push(ScaleEvent { at_ms: now, change: to - from });
        } else if to < from {
            let keep = longest(down);
            self.scale_down.retain(|e| e.at_ms + keep > now);
            self.scale_down.push(ScaleEvent { at_ms: now, change: from - to });
        }
    }

    /// Stores a recommendation, replacing one older than `keep_ms` if there is one.
    fn record_recommendation(&mut self, replicas: i32, now: i64, keep_ms: i64) {
        let rec = Recommendation { at_ms: now, replicas };
        match self.recommendations.iter_mut().find(|r| r.at_ms + keep_ms < now) {
            Some(old) => *old = rec,
            None => self.recommendations.push(rec),
        }
    }
}

/// Without `spec.behavior` (upstream `normalizeDesiredReplicas`): the highest recommendation
/// of the last 5 minutes, then at most max(2×current, 4) and within min/max. Returns the
/// replicas and the AbleToScale and ScalingLimited conditions.
pub fn normalize(h: &mut History, current: i32, desired: i32, min: i32, max: i32, now: i64) -> (i32, Cond, Cond) {
    let cutoff = now - DOWNSCALE_STABILIZATION_MS;
    let stabilized = h.recommendations.iter().filter(|r| r.at_ms >= cutoff).map(|r| r.replicas).fold(desired, i32::max);
    h.record_recommendation(desired, now, DOWNSCALE_STABILIZATION_MS);
    let able = if stabilized != desired {
        cond(
            "AbleToScale",
            true,
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        )
    } else {
        cond("AbleToScale", true, "ReadyForNewScale", "recommended size matches current size")
    };
    let scale_up_limit = (2 * current).max(4);
    let (max_allowed, reason, message) = if max > scale_up_limit {
        (scale_up_limit, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
    } else {
        (max, "TooManyReplicas", "the desired replica count is more than the maximum replica count")
    };
    let (out, limited) = if stabilized < min {
        (
            min,
            cond(
                "ScalingLimited",
                true,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            ),
        )
    } else if stabilized > max_allowed {
        (max_allowed, cond("ScalingLimited", true, reason, message))
    } else {
        (
            stabilized,
            cond("ScalingLimited", false, "DesiredWithinRange", "the desired count is within the acceptable range"),
        )
    };
    (out, able, limited)
}

fn change_in_period(events: &[ScaleEvent], period_seconds: i32, now: i64) -> i32 {
    let cutoff = now - i64::from(period_seconds) * 1000;
    events.iter().filter(|e| e.at_ms > cutoff).map(|e| e.change).sum()
}

fn scale_up_limit(current: i32, h: &History, rules: &Rules, now: i64) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => i32::min,
        SelectPolicy::Max => i32::max,
    };
    let mut result = if rules.select_policy == SelectPolicy::Min { i32::MAX } else { i32::MIN };
    for &(t, value, period) in &rules.policies {
        let start = current - change_in_period(&h.scale_up, period, now) + change_in_period(&h.scale_down, period, now);
        let proposed = match t {
            PolicyType::Pods => start.saturating_add(value),
            PolicyType::Percent => (f64::from(start) * (1.0 + f64::from(value) / 100.0)).ceil() as i32,
        };
        result = pick(result, proposed);
    }
    result
}

fn scale_down_limit(current: i32, h: &History, rules: &Rules, now: i64) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => i32::max,
        SelectPolicy::Max => i32::min,
    };
    let mut result = if rules.select_policy == SelectPolicy::Min { i32::MIN } else { i32::MAX };
    for &(t, value, period) in &rules.policies {
        let start = current - change_in_period(&h.scale_up, period, now) + change_in_period(&h.scale_down, period, now);
        let proposed = match t {
            PolicyType::Pods => start - value,
            PolicyType::Percent => (f64::from(start) * (1.0 - f64::from(value) / 100.0)) as i32,
        };
        result = pick(result, proposed);
    }
    result
}

/// With `spec.behavior` (upstream `normalizeDesiredReplicasWithBehaviors`): the proposal held
/// between the lowest recommendation of the scale-up window and the highest of the scale-down
/// window, then limited by the rate policies and min/max.
pub fn normalize_with_behavior(
    h: &mut History,
    up: &Rules,
    down: &Rules,
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    now: i64,
) -> (i32, Cond, Cond) {
    let up_cutoff = now - i64::from(up.stabilization_window_seconds) * 1000;
    let down_cutoff = now - i64::from(down.stabilization_window_seconds) * 1000;
    let (mut up_rec, mut down_rec) = (desired, desired);
    for r in &h.recommendations {
        if r.at_ms > up_cutoff {
            up_rec = up_rec.min(r.replicas);
        }
        if r.at_ms > down_cutoff {
            down_rec = down_rec.max(r.replicas);
        }
    }
    let stabilized = current.max(up_rec).min(down_rec);
    let keep = (now - up_cutoff).max(now - down_cutoff);
    h.record_recommendation(desired, now, keep);
    let able = if stabilized != desired {
        if desired >= current {
            cond(
                "AbleToScale",
                true,
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        } else {
            cond(
                "AbleToScale",
                true,
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        }
    } else {
        cond("AbleToScale", true, "ReadyForNewScale", "recommended size matches current size")
    };
    let within =
        cond("ScalingLimited", false, "DesiredWithinRange", "the desired count is within the acceptable range");
    let (out, limited) = if stabilized > current {
        let limit = scale_up_limit(current, h, up, now).max(current);
        let (allowed, reason, message) = if max > limit {
            (limit, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
        } else {
            (max, "TooManyReplicas", "the desired replica count is more than the maximum replica count")
        };
        if stabilized > allowed {
            (allowed, cond("ScalingLimited", true, reason, message))
        } else {
            (stabilized, within)
        }
    } else if stabilized < current {
        let limit = scale_down_limit(current, h, down, now).min(current);
        let (allowed, reason, message) = if min < limit {
            (limit, "ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate")
        } else {
            (min, "TooFewReplicas", "the desired replica count is less than the minimum replica count")
        };
        if stabilized < allowed {
            (allowed, cond("ScalingLimited", true, reason, message))
        } else {
            (stabilized, within)
        }
    } else {
        (stabilized, within)
    };
    (out, able, limited)
}

// ---------------------------------------------------------------------------------------------
// Reading pods and metrics

/// A quantity in milli-units (`500m` → 500, `1` → 1000, `64Mi` → 67108864000).
pub fn milli(q: &str) -> Option<i64> {
    let v = crate::agent::kubelet::resources::parse_quantity(q)?;
    let m = (v * 1000.0).round();
    (m.is_finite() && m.abs() < 9.0e18).then_some(m as i64)
}

fn ms(t: &Timestamp) -> i64 {
    t.as_millisecond()
}

fn parse_time_ms(s: &str) -> Option<i64> {
    s.parse::<Timestamp>().ok().map(|t| t.as_millisecond())
}

/// A pod as [`resource_replicas`] sees it, for `resource` (and only `container` when set).
pub fn pod_info(pod: &Pod, resource: &str, container: Option<&str>) -> PodInfo {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status == "True", c.last_transition_time.as_ref().map(|t| ms(&t.0))));
    let mut request = Some(0i64);
    let mut without = None;
    for c in pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default() {
        if container.is_some_and(|n| n != c.name) {
            continue;
        }
        match c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| milli(&q.0))
        {
            Some(v) => request = request.map(|r| r + v),
            None => {
                request = None;
                without.get_or_insert_with(|| c.name.clone());
            }
        }
    }
    PodInfo {
        name: pod.name_any(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        ready,
        start_time: status.and_then(|s| s.start_time.as_ref()).map(|t| ms(&t.0)),
        request_milli: request,
        container_without_request: without,
    }
}

/// Per-pod usage of `resource` from a PodMetricsList (summed over containers, or only
/// `container`); pods where that container is missing are left out.
pub fn pod_metrics(list: &Value, resource: &str, container: Option<&str>) -> HashMap<String, PodMetric> {
    let mut out = HashMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let Some(name) = item.pointer("/metadata/name").and_then(Value::as_str) else { continue };
        let mut sum = 0i64;
        let mut found = false;
        for c in item["containers"].as_array().into_iter().flatten() {
            if container.is_some_and(|n| c["name"] != n) {
                continue;
            }
            if let Some(v) = c.pointer(&format!("/usage/{resource}")).and_then(Value::as_str).and_then(milli) {
                sum += v;
                found = true;
            }
        }
        if !found {
            continue;
        }
        let timestamp_ms = item["timestamp"].as_str().and_then(parse_time_ms).unwrap_or(0);
        let window_ms = item["window"]
            .as_str()
            .and_then(|w| w.strip_suffix('s'))
            .and_then(|w| w.parse::<f64>().ok())
            .map(|s| (s * 1000.0) as i64)
            .unwrap_or(0);
        out.insert(name.to_string(), PodMetric { timestamp_ms, window_ms, value_milli: sum });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The controller

/// Runs the HPA controller with the default sync period.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    run_with_period(client, DEFAULT_SYNC_PERIOD, shutdown).await
}

/// Runs the HPA controller: every `period`, every HPA of the cluster (from a watch cache); new
/// and changed HPAs (generation) at once.
pub async fn run_with_period(client: kube::Client, period: Duration, shutdown: CancellationToken) {
    let notify = Arc::new(Notify::new());
    let hpas = passes::cache(
        Api::<HorizontalPodAutoscaler>::all(client.clone()),
        notify.clone(),
        shutdown.clone(),
        "horizontalpodautoscaling",
    );
    if !passes::ready(&shutdown, vec![passes::when_ready(&hpas)]).await {
        return;
    }
    let recorder = Recorder::new(client.clone(), "horizontal-pod-autoscaler", shutdown.clone());
    let mut histories: HashMap<String, History> = HashMap::new();
    // key → (last sync, generation synced)
    let mut synced: HashMap<String, (tokio::time::Instant, Option<i64>)> = HashMap::new();
    loop {
        let mut live = std::collections::HashSet::new();
        let mut next = period;
        for hpa in hpas.state() {
            let key = format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any());
            live.insert(key.clone());
            let gen = hpa.metadata.generation;
            match synced.get(&key) {
                Some((at, g)) if *g == gen && at.elapsed() < period => {
                    next = next.min(period - at.elapsed());
                    continue;
                }
                _ => {}
            }
            synced.insert(key.clone(), (tokio::time::Instant::now(), gen));
            let h = histories.entry(key.clone()).or_default();
            if let Err(e) = reconcile(&client, &recorder, &hpa, h).await {
                tracing::info!(hpa = %key, error = %e, "horizontal pod autoscaler sync failed");
            }
        }
        histories.retain(|k, _| live.contains(k));
        synced.retain(|k, _| live.contains(k));
        // New and changed HPAs wake the loop at once; each is synced once per period.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = notify.notified() => {}
            _ = tokio::time::sleep(next.max(Duration::from_millis(10))) => {}
        }
    }
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Human name of a metric, as upstream's events and conditions say it.
fn metric_name(resource: &str, target: &Target) -> String {
    match target {
        Target::Utilization(_) => format!("{resource} resource utilization (percentage of request)"),
        Target::AverageValue(_) => format!("{resource} resource"),
    }
}

/// (resource, container, target) of one metric.
type MetricTarget = (String, Option<String>, Target);

/// The metrics to evaluate: (resource, container, target); default cpu at 80% (upstream's
/// defaulting of an HPA without metrics).
fn metric_targets(specs: &[MetricSpec]) -> Vec<Result<MetricTarget, String>> {
    if specs.is_empty() {
        return vec![Ok(("cpu".into(), None, Target::Utilization(80)))];
    }
    specs
        .iter()
        .map(|m| {
            let (name, container, t) = match m.type_.as_str() {
                "Resource" => {
                    let r = m.resource.as_ref().ok_or("metric type Resource has no resource")?;
                    (r.name.clone(), None, &r.target)
                }
                "ContainerResource" => {
                    let r = m
                        .container_resource
                        .as_ref()
                        .ok_or("metric type ContainerResource has no containerResource")?;
                    (r.name.clone(), Some(r.container.clone()), &r.target)
                }
                other => {
                    return Err(format!("metric type {other} is not supported (only Resource and ContainerResource)"))
                }
            };
            let target = match (t.type_.as_str(), t.average_utilization, t.average_value.as_ref()) {
                ("Utilization", Some(u), _) => Target::Utilization(u),
                ("AverageValue", _, Some(v)) => {
                    Target::AverageValue(milli(&v.0).ok_or_else(|| format!("invalid averageValue {:?}", v.0))?)
                }
                (ty, _, _) => return Err(format!("invalid {name} metric target type {ty:?}")),
            };
            Ok((name, container, target))
        })
        .collect()
}

fn set_condition(conds: &mut Vec<HorizontalPodAutoscalerCondition>, c: &Cond) {
    let status = if c.status { "True" } else { "False" };
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now());
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => {
            if x.status != status {
                x.last_transition_time = Some(now);
            }
            x.status = status.into();
            x.reason = Some(c.reason.into());
            x.message = Some(c.message.clone());
        }
        None => conds.push(HorizontalPodAutoscalerCondition {
            type_: c.type_.into(),
            status: status.into(),
            reason: Some(c.reason.into()),
            message: Some(c.message.clone()),
            last_transition_time: Some(now),
        }),
    }
}

/// The target's scale API (any kind with a scale subresource, CRDs included).
async fn scale_api(
    client: &kube::Client,
    ns: &str,
    api_version: &str,
    kind: &str,
) -> Result<Api<DynamicObject>, String> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await.map_err(|e| e.to_string())?;
    Ok(Api::namespaced_with(client.clone(), ns, &ar))
}

/// Pod metrics of the pods matching `selector` in `ns`.
async fn fetch_pod_metrics(client: &kube::Client, ns: &str, selector: &str) -> Result<Value, String> {
    let sel: String = form_urlencoded::byte_serialize(selector.as_bytes()).collect();
    let url = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={sel}");
    let req = axum::http::Request::get(url).body(Vec::new()).map_err(|e| e.to_string())?;
    client.request::<Value>(req).await.map_err(|e| e.to_string())
}

/// One sync of one HPA (upstream `reconcileAutoscaler`).
pub async fn reconcile(
    client: &kube::Client,
    recorder: &Recorder,
    hpa: &HorizontalPodAutoscaler,
    history: &mut History,
) -> Result<(), String> {
    let ns = hpa.namespace().unwrap_or_default();
    let name = hpa.name_any();
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let spec = hpa.spec.clone().unwrap_or_default();
    let mut status = hpa.status.clone().unwrap_or_default();
    let mut conds = status.conditions.clone().unwrap_or_default();
    let r = &spec.scale_target_ref;
    let reference = format!("{}/{}", r.kind, r.name);
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let involved = object_ref(hpa);

    let write_status = |status: &mut k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerStatus,
                        conds: Vec<HorizontalPodAutoscalerCondition>| {
        status.conditions = Some(conds);
        status.observed_generation = hpa.metadata.generation;
        json!({ "status": status })
    };

    // The target's scale.
    let scale = match scale_api(client, &ns, r.api_version.as_deref().unwrap_or(""), &r.kind).await {
        Ok(a) => a.get_scale(&r.name).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let scale = match scale {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("the HPA controller was unable to get the target's current scale: {e}");
            recorder.warning(involved, "FailedGetScale", e.clone());
            set_condition(&mut conds, &cond("AbleToScale", false, "FailedGetScale", msg));
            let body = write_status(&mut status, conds);
            patch_status(&api, &name, body).await?;
            return Err(format!("failed to query scale subresource for {reference}: {e}"));
        }
    };
    set_condition(
        &mut conds,
        &cond(
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        ),
    );
    let spec_replicas = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let current = scale.status.as_ref().map(|s| s.replicas).unwrap_or(0);
    let selector = scale.status.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();

    let now = now_ms();
    let mut desired = 0;
    let mut rescale_reason = String::new();
    let mut metric_statuses: Vec<MetricStatus> = Vec::new();
    let behavior = spec.behavior.as_ref().map(|b| {
        (
            Rules::from_spec(b.scale_up.as_ref(), Rules::default_up()),
            Rules::from_spec(b.scale_down.as_ref(), Rules::default_down()),
        )
    });
    let rescale;
    if spec_replicas == 0 && min != 0 {
        rescale = false;
        set_condition(
            &mut conds,
            &cond(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            ),
        );
    } else if current > max {
        rescale_reason = "Current number of replicas above Spec.MaxReplicas".into();
        desired = max;
        rescale = desired != current;
    } else if current < min {
        rescale_reason = "Current number of replicas below Spec.MinReplicas".into();
        desired = min;
        rescale = desired != current;
    } else {
        let targets = metric_targets(spec.metrics.as_deref().unwrap_or_default());
        let total = targets.len();
        let mut best: Option<(i32, String)> = None;
        let mut first_error: Option<String> = None;
        let mut invalid = 0;
        let mut pods_cache: Option<Result<Vec<Pod>, String>> = None;
        let mut metrics_cache: Option<Result<Value, String>> = None;
        for t in targets {
            let result: Result<(i32, String, MetricStatus), String> = async {
                let (resource, container, target) = t?;
                if selector.is_empty() {
                    return Err("selector is required".to_string());
                }
                if pods_cache.is_none() {
                    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                    pods_cache = Some(
                        pods.list(&ListParams::default().labels(&selector)).await.map(|l| l.items).map_err(|e| e.to_string()),
                    );
                }
                if metrics_cache.is_none() {
                    metrics_cache = Some(fetch_pod_metrics(client, &ns, &selector).await);
                }
                let pods = pods_cache.clone().unwrap_or_else(|| Err("no pods".into()))?;
                let list = match metrics_cache.clone().unwrap_or_else(|| Err("no metrics".into())) {
                    Ok(l) => l,
                    Err(e) => {
                        let e = format!("unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {e}");
                        recorder.warning(involved.clone(), "FailedGetResourceMetric", e.clone());
                        return Err(e);
                    }
                };
                let metrics = pod_metrics(&list, &resource, container.as_deref());
                if metrics.is_empty() {
                    let e = format!(
                        "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
                    );
                    recorder.warning(involved.clone(), "FailedGetResourceMetric", e.clone());
                    return Err(e);
                }
                let infos: Vec<PodInfo> = pods.iter().map(|p| pod_info(p, &resource, container.as_deref())).collect();
                let p = resource_replicas(current, target, resource == "cpu", &infos, &metrics, TOLERANCE, now)
                    .map_err(|e| {
                        let what = if matches!(target, Target::Utilization(_)) { "utilization" } else { "usage" };
                        let e = format!("failed to get {resource} {what}: {e}");
                        recorder.warning(involved.clone(), "FailedGetResourceMetric", e.clone());
                        e
                    })?;
                let mut current_value = json!({"averageValue": quantity_milli(p.average_milli, &resource)});
                if let Some(u) = p.utilization {
                    current_value["averageUtilization"] = json!(u);
                }
                let status: MetricStatus = if let Some(c) = &container {
                    serde_json::from_value(json!({"type": "ContainerResource", "containerResource": {"name": resource, "container": c, "current": current_value}}))
                } else {
                    serde_json::from_value(json!({"type": "Resource", "resource": {"name": resource, "current": current_value}}))
                }
                .map_err(|e| e.to_string())?;
                Ok((p.replicas, metric_name(&resource, &target), status))
            }
            .await;
            match result {
                Ok((replicas, mname, st)) => {
                    metric_statuses.push(st);
                    if best.as_ref().is_none_or(|(b, _)| replicas > *b) {
                        best = Some((replicas, mname));
                    }
                }
                Err(e) => {
                    invalid += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        // Upstream: all metrics invalid, or some invalid and the valid ones would scale down,
        // is an error reported through the first invalid metric; otherwise scaling goes on.
        let best = best.filter(|(r, _)| invalid == 0 || *r >= spec_replicas);
        let Some((metric_desired, mname)) = best else {
            set_condition(
                &mut conds,
                &cond(
                    "ScalingActive",
                    false,
                    "FailedGetResourceMetric",
                    format!(
                        "the HPA was unable to compute the replica count: {}",
                        first_error.clone().unwrap_or_default()
                    ),
                ),
            );
            let e = format!(
                "invalid metrics ({invalid} invalid out of {total}), first error is: {}",
                first_error.unwrap_or_default()
            );
            recorder.warning(involved.clone(), "FailedComputeMetricsReplicas", e.clone());
            status.current_replicas = Some(current);
            status.current_metrics = Some(metric_statuses);
            let body = write_status(&mut status, conds);
            patch_status(&api, &name, body).await?;
            return Err(format!(
                "failed to compute desired number of replicas based on listed metrics for {reference}: {e}"
            ));
        };
        set_condition(
            &mut conds,
            &cond(
                "ScalingActive",
                true,
                "ValidMetricFound",
                format!("the HPA was able to successfully calculate a replica count from {mname}"),
            ),
        );
        if metric_desired > desired {
            desired = metric_desired;
        }
        if desired > current {
            rescale_reason = format!("{mname} above target");
        }
        if desired < current {
            rescale_reason = "All metrics below target".into();
        }
        let (n, able, limited) = match &behavior {
            None => normalize(history, current, desired, min, max, now),
            Some((up, down)) => normalize_with_behavior(history, up, down, current, desired, min, max, now),
        };
        set_condition(&mut conds, &able);
        set_condition(&mut conds, &limited);
        desired = n;
        rescale = desired != current;
    }

    if rescale {
        let api_target = scale_api(client, &ns, r.api_version.as_deref().unwrap_or(""), &r.kind).await?;
        let patch = Patch::Merge(json!({"spec": {"replicas": desired}}));
        match api_target.patch_scale(&r.name, &PatchParams::default(), &patch).await {
            Ok(_) => {
                set_condition(
                    &mut conds,
                    &cond(
                        "AbleToScale",
                        true,
                        "SucceededRescale",
                        format!("the HPA controller was able to update the target scale to {desired}"),
                    ),
                );
                recorder.normal(
                    involved.clone(),
                    "SuccessfulRescale",
                    format!("New size: {desired}; reason: {rescale_reason}"),
                );
                history.record_scale(behavior.as_ref(), current, desired, now);
                status.last_scale_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
                tracing::info!(hpa = %format!("{ns}/{name}"), from = current, to = desired, reason = %rescale_reason, "rescaled");
            }
            Err(e) => {
                recorder.warning(
                    involved.clone(),
                    "FailedRescale",
                    format!("New size: {desired}; reason: {rescale_reason}; error: {e}"),
                );
                set_condition(
                    &mut conds,
                    &cond(
                        "AbleToScale",
                        false,
                        "FailedUpdateScale",
                        format!("the HPA controller was unable to update the target scale: {e}"),
                    ),
                );
                status.current_replicas = Some(current);
                status.desired_replicas = current;
                let body = write_status(&mut status, conds);
                patch_status(&api, &name, body).await?;
                return Err(format!("failed to rescale {reference}: {e}"));
            }
        }
    }
    status.current_replicas = Some(current);
    status.desired_replicas = desired;
    status.current_metrics = Some(metric_statuses);
    let body = write_status(&mut status, conds);
    patch_status(&api, &name, body).await
}

/// A milli-unit average as a quantity: cpu in millicores, memory in whole bytes.
fn quantity_milli(v: i64, resource: &str) -> String {
    if resource == "cpu" {
        format!("{v}m")
    } else if v % 1000 == 0 {
        (v / 1000).to_string()
    } else {
        format!("{v}m")
    }
}

async fn patch_status(api: &Api<HorizontalPodAutoscaler>, name: &str, body: Value) -> Result<(), String> {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(body)).await.map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 10_000_000;
    const LONG_AGO: i64 = NOW - 3_600_000;

    fn pod(name: &str, request: i64) -> PodInfo {
        PodInfo {
            name: name.into(),
            phase: "Running".into(),
            deleting: false,
            ready: Some((true, Some(LONG_AGO))),
            start_time: Some(LONG_AGO),
            request_milli: Some(request),
            container_without_request: None,
        }
    }

    fn metrics(v: &[(&str, i64)]) -> HashMap<String, PodMetric> {
        v.iter()
            .map(|(n, x)| (n.to_string(), PodMetric { timestamp_ms: NOW - 1000, window_ms: 10_000, value_milli: *x }))
            .collect()
    }

    fn replicas(current: i32, target: Target, pods: &[PodInfo], m: &[(&str, i64)]) -> Result<i32, String> {
        resource_replicas(current, target, true, pods, &metrics(m), TOLERANCE, NOW).map(|p| p.replicas)
    }

    #[test]
    fn desired_replicas_are_the_ceiling_of_current_times_usage_over_target() {
        let pods = [pod("a", 100), pod("b", 100)];
        // 90% of requests against 50%: ceil(2 × 1.8) = 4.
        let p = resource_replicas(
            2,
            Target::Utilization(50),
            true,
            &pods,
            &metrics(&[("a", 90), ("b", 90)]),
            TOLERANCE,
            NOW,
        )
        .unwrap();
        assert_eq!(p, Proposal { replicas: 4, utilization: Some(90), average_milli: 90 });
        // 10% against 50%: ceil(2 × 0.2) = 1.
        assert_eq!(replicas(2, Target::Utilization(50), &pods, &[("a", 10), ("b", 10)]), Ok(1));
        // AverageValue: 300m average against 100m per pod: 6.
        assert_eq!(replicas(2, Target::AverageValue(100), &pods, &[("a", 200), ("b", 400)]), Ok(6));
    }

    #[test]
    fn a_ratio_within_the_tolerance_keeps_the_current_count() {
        let pods = [pod("a", 100), pod("b", 100)];
        assert_eq!(replicas(2, Target::Utilization(50), &pods, &[("a", 54), ("b", 54)]), Ok(2));
        assert_eq!(replicas(2, Target::Utilization(50), &pods, &[("a", 46), ("b", 46)]), Ok(2));
        assert_eq!(replicas(2, Target::Utilization(50), &pods, &[("a", 60), ("b", 60)]), Ok(3));
    }

    #[test]
    fn pods_without_metrics_count_as_full_when_scaling_down_and_empty_when_scaling_up() {
        let pods = [pod("a", 100), pod("b", 100), pod("c", 100)];
        // Scaling down: c assumed at 100% of its request; (10+10+100)/300 = 40% vs 50% → 0.8
        // ratio, ceil(3 × 0.8) = 3: the missing pod holds the count.
        assert_eq!(replicas(3, Target::Utilization(50), &pods, &[("a", 10), ("b", 10)]), Ok(3));
        // Scaling up: c assumed at 0; (200+200+0)/300 = 133% → ceil(3 × 2.66) = 8.
        assert_eq!(replicas(3, Target::Utilization(50), &pods, &[("a", 200), ("b", 200)]), Ok(8));
        // Scaling up only slightly: with c at 0 the direction reverses, so no change.
        assert_eq!(replicas(3, Target::Utilization(50), &pods, &[("a", 70), ("b", 70)]), Ok(3));
    }

    #[test]
    fn unready_pods_count_as_empty_when_scaling_up_and_are_ignored_otherwise() {
        let mut unready = pod("c", 100);
        unready.ready = Some((false, Some(NOW - 5000)));
        unready.start_time = Some(NOW - 10_000);
        let pods = [pod("a", 100), pod("b", 100), unready.clone()];
        // Scale up: c at 0: (100+100+0)/300 = 66% vs 50% → ceil(3 × 1.33) = 4.
        assert_eq!(replicas(3, Target::Utilization(50), &pods, &[("a", 100), ("b", 100), ("c", 500)]), Ok(4));
        // Scale down: c left out, ceil(2 × 0.2) = 1.
        assert_eq!(replicas(3, Target::Utilization(50), &pods, &[("a", 10), ("b", 10), ("c", 500)]), Ok(1));
        // Pending pods are unready too; deleted and failed pods are ignored.
        let mut pending = pod("d", 100);
        pending.phase = "Pending".into();
        let mut failed = pod("e", 100);
        failed.phase = "Failed".into();
        let mut deleting = pod("f", 100);
        deleting.deleting = true;
        let pods = [pod("a", 100), pending, failed, deleting];
        assert_eq!(replicas(4, Target::Utilization(50), &pods, &[("a", 10), ("e", 900), ("f", 900)]), Ok(1));
        // Only unready pods with metrics: an error, as upstream.
        assert!(replicas(1, Target::Utilization(50), &[unready], &[("c", 10)]).is_err());
    }

    #[test]
    fn memory_readiness_does_not_matter_and_missing_requests_are_errors() {
        let mut unready = pod("a", 1000);
        unready.ready = Some((false, Some(NOW - 5000)));
        unready.start_time = Some(NOW - 10_000);
        let p =
            resource_replicas(1, Target::Utilization(50), false, &[unready], &metrics(&[("a", 1000)]), TOLERANCE, NOW);
        assert_eq!(p.unwrap().replicas, 2);
        let mut no_req = pod("b", 0);
        no_req.request_milli = None;
        no_req.container_without_request = Some("app".into());
        let e = replicas(1, Target::Utilization(50), &[no_req.clone()], &[("b", 10)]).unwrap_err();
        assert_eq!(e, "missing request for cpu in container app of Pod b");
        // AverageValue needs no requests.
        assert_eq!(replicas(1, Target::AverageValue(10), &[no_req], &[("b", 20)]), Ok(2));
        assert!(replicas(1, Target::Utilization(50), &[], &[]).is_err());
    }

    #[test]
    fn without_behavior_scale_down_waits_five_minutes_and_scale_up_is_capped() {
        let mut h = History::default();
        // A recommendation of 5 a minute ago holds a later proposal of 2 at 5.
        let (n, _, _) = normalize(&mut h, 5, 5, 1, 10, NOW - 60_000);
        assert_eq!(n, 5);
        let (n, able, _) = normalize(&mut h, 5, 2, 1, 10, NOW);
        assert_eq!((n, able.reason), (5, "ScaleDownStabilized"));
        // Six minutes later the old recommendation no longer counts.
        let (n, able, _) = normalize(&mut h, 5, 2, 1, 10, NOW + 6 * 60_000);
        // The 2 recorded at NOW is still inside the window, so 2 wins.
        assert_eq!((n, able.reason), (2, "ReadyForNewScale"));
        // Scale up: at most max(2 × current, 4), then max replicas.
        let mut h = History::default();
        let (n, _, limited) = normalize(&mut h, 1, 10, 1, 20, NOW);
        assert_eq!((n, limited.reason, limited.status), (4, "ScaleUpLimit", true));
        let mut h = History::default();
        let (n, _, limited) = normalize(&mut h, 3, 10, 1, 5, NOW);
        assert_eq!((n, limited.reason), (5, "TooManyReplicas"));
        let mut h = History::default();
        let (n, _, limited) = normalize(&mut h, 3, 3, 1, 5, NOW);
        assert_eq!((n, limited.reason, limited.status), (3, "DesiredWithinRange", false));
    }

    #[test]
    fn behavior_policies_limit_the_rate_and_windows_stabilize() {
        let up = Rules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![(PolicyType::Pods, 2, 60)],
        };
        let down = Rules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![(PolicyType::Percent, 50, 60)],
        };
        let behavior = (up.clone(), down.clone());
        let mut h = History::default();
        // +2 pods per minute.
        let (n, _, limited) = normalize_with_behavior(&mut h, &up, &down, 2, 10, 1, 20, NOW);
        assert_eq!((n, limited.reason), (4, "ScaleUpLimit"));
        h.record_scale(Some(&behavior), 2, 4, NOW);
        // Within the same minute the budget is used up.
        let (n, _, _) = normalize_with_behavior(&mut h, &up, &down, 4, 10, 1, 20, NOW + 10_000);
        assert_eq!(n, 4);
        // After the period it is back.
        let (n, _, _) = normalize_with_behavior(&mut h, &up, &down, 4, 10, 1, 20, NOW + 61_000);
        assert_eq!(n, 6);
        // −50% per minute on the way down, then min replicas.
        let mut h = History::default();
        let (n, _, limited) = normalize_with_behavior(&mut h, &up, &down, 8, 1, 1, 20, NOW);
        assert_eq!((n, limited.reason), (4, "ScaleDownLimit"));
        let mut h = History::default();
        let (n, _, limited) = normalize_with_behavior(&mut h, &up, &down, 2, 0, 1, 20, NOW);
        assert_eq!((n, limited.reason), (1, "TooFewReplicas"));
        // Disabled scale down never scales down.
        let off = Rules { select_policy: SelectPolicy::Disabled, ..down.clone() };
        let (n, _, _) = normalize_with_behavior(&mut History::default(), &up, &off, 8, 1, 1, 20, NOW);
        assert_eq!(n, 8);
        // Select policy Min picks the most restrictive policy.
        let up_min = Rules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Min,
            policies: vec![(PolicyType::Pods, 4, 60), (PolicyType::Percent, 50, 60)],
        };
        let (n, _, _) = normalize_with_behavior(&mut History::default(), &up_min, &down, 4, 20, 1, 20, NOW);
        assert_eq!(n, 6);
    }

    #[test]
    fn the_default_scale_down_window_keeps_the_highest_recommendation_for_five_minutes() {
        let (up, down) = (Rules::default_up(), Rules::default_down());
        let mut h = History::default();
        let (n, _, _) = normalize_with_behavior(&mut h, &up, &down, 4, 4, 1, 10, NOW - 100_000);
        assert_eq!(n, 4);
        let (n, able, _) = normalize_with_behavior(&mut h, &up, &down, 4, 1, 1, 10, NOW);
        assert_eq!((n, able.reason), (4, "ScaleDownStabilized"));
        let (n, _, _) = normalize_with_behavior(&mut h, &up, &down, 4, 1, 1, 10, NOW + 301_000);
        assert_eq!(n, 1);
        // Scale-up window: the lowest recent recommendation applies.
        let slow_up = Rules { stabilization_window_seconds: 60, ..Rules::default_up() };
        let mut h = History::default();
        normalize_with_behavior(&mut h, &slow_up, &down, 2, 2, 1, 10, NOW - 30_000);
        let (n, able, _) = normalize_with_behavior(&mut h, &slow_up, &down, 2, 6, 1, 10, NOW);
        assert_eq!((n, able.reason), (2, "ScaleUpStabilized"));
    }

    #[test]
    fn metrics_lists_and_pods_turn_into_calculation_inputs() {
        let list = json!({"items": [
            {"metadata": {"name": "a"}, "timestamp": "2026-01-01T00:00:00Z", "window": "10s",
             "containers": [{"name": "app", "usage": {"cpu": "250m", "memory": "1Mi"}},
                            {"name": "side", "usage": {"cpu": "50000000n", "memory": "1Ki"}}]},
            {"metadata": {"name": "b"}, "timestamp": "bad", "containers": []},
        ]});
        let m = pod_metrics(&list, "cpu", None);
        assert_eq!(m.len(), 1);
        assert_eq!(m["a"].value_milli, 300);
        assert_eq!(m["a"].window_ms, 10_000);
        assert_eq!(pod_metrics(&list, "cpu", Some("side"))["a"].value_milli, 50);
        assert_eq!(pod_metrics(&list, "memory", Some("app"))["a"].value_milli, 1024 * 1024 * 1000);

        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a"},
            "spec": {"containers": [
                {"name": "app", "resources": {"requests": {"cpu": "200m"}}},
                {"name": "side", "resources": {"requests": {"cpu": "0.1"}}}]},
            "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z",
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"}]}
        }))
        .unwrap();
        let i = pod_info(&pod, "cpu", None);
        assert_eq!(i.request_milli, Some(300));
        assert_eq!(i.ready.map(|r| r.0), Some(true));
        assert_eq!(pod_info(&pod, "memory", None).container_without_request.as_deref(), Some("app"));
        assert_eq!(pod_info(&pod, "cpu", Some("side")).request_milli, Some(100));
    }
}
