//! DefaultPreemption (upstream `framework/plugins/defaultpreemption` and
//! `framework/preemption`): when a pod fits nowhere, find the node where evicting the fewest,
//! least important lower-priority pods makes room, preferring victims whose loss no
//! PodDisruptionBudget forbids.
//!
//! Pure: [`preempt`] reads the cache and returns the node and victims, or the message upstream
//! appends to FailedScheduling after `preemption:`. The caller deletes the victims and sets
//! `status.nominatedNodeName`. Only what requests and host ports take is simulated: a node
//! rejected by another filter (affinity, spreading) is not a candidate.

use super::cache::{priority, Cache, NodeInfo, PlacedPod};
use super::filter::{self, PodInfo};
use super::labels;
use k8s_openapi::api::core::v1::Pod;

pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// A pod to evict.
#[derive(Debug, Clone, PartialEq)]
pub struct Victim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub priority: i32,
}

/// Where the pod goes once its victims are gone.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Victim>,
    pub pdb_violations: usize,
}

/// Upstream `PodEligibleToPreemptOthers`: `Err` carries the message.
pub fn eligible(pod: &Pod, cache: &Cache) -> Result<(), String> {
    if pod.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("not eligible due to preemptionPolicy=Never.".into());
    }
    // Victims already on their way out on the nominated node: wait for them rather than
    // preempting more.
    if let Some(node) = cache.nominated_node(pod).and_then(|n| cache.node(&n).cloned()) {
        let prio = priority(pod);
        let terminating =
            node.pods.iter().filter_map(|k| cache.pod(k)).any(|p| p.group.terminating && p.priority < prio);
        if terminating {
            return Err("not eligible due to a terminating pod on the nominated node.".into());
        }
    }
    Ok(())
}

fn fits(info: &PodInfo<'_>, node: &NodeInfo) -> Result<(), Vec<String>> {
    filter::node_ports(info, node)?;
    filter::node_resources_fit(info, node)
}

/// Whether removing pods can cure these reasons in our simulation.
fn resource_reasons(reasons: &[String]) -> bool {
    reasons.iter().all(|r| r.starts_with("Insufficient ") || r == filter::ERR_TOO_MANY_PODS || r == filter::ERR_PORTS)
}

/// Splits victims (most important first) into those whose eviction would exceed a
/// PodDisruptionBudget's allowance and the rest (upstream `filterPodsWithPDBViolation`).
type Victims<'a> = Vec<(&'a str, &'a PlacedPod)>;

fn split_by_pdb<'a>(cache: &Cache, victims: Victims<'a>) -> (Victims<'a>, Victims<'a>) {
    let mut allowed: Vec<(String, &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector, i32)> = cache
        .pdbs
        .values()
        .filter_map(|p| {
            let sel = p.spec.as_ref()?.selector.as_ref()?;
            Some((
                p.metadata.namespace.clone().unwrap_or_default(),
                sel,
                p.status.as_ref().map(|s| s.disruptions_allowed).unwrap_or(0),
            ))
        })
        .collect();
    let (mut violating, mut ok) = (vec![], vec![]);
    for v in victims {
        let mut violates = false;
        for (ns, sel, left) in allowed.iter_mut() {
            if *ns != v.1.group.namespace || labels::is_empty(sel) || !labels::selector_matches(sel, &v.1.group.labels)
            {
                continue;
            }
            *left -= 1;
            if *left < 0 {
                violates = true;
            }
        }
        if violates {
            violating.push(v);
        } else {
            ok.push(v);
        }
    }
    (violating, ok)
}

/// Dry-runs preemption on one node the filters rejected for `reasons`: the victims, or the
/// node's status message(s).
fn select_victims(
    info: &PodInfo<'_>,
    cache: &Cache,
    node: &NodeInfo,
    reasons: &[String],
) -> Result<Candidate, Vec<String>> {
    let prio = priority(info.pod);
    let mut potential: Vec<(&str, &PlacedPod)> = node
        .pods
        .iter()
        .filter_map(|k| cache.pod(k).map(|p| (k.as_str(), p)))
        .filter(|(_, p)| p.priority < prio)
        .collect();
    if potential.is_empty() {
        return Err(vec![NO_VICTIMS.into()]);
    }
    if !resource_reasons(reasons) {
        return Err(reasons.to_vec());
    }
    let mut sim = node.clone();
    for (_, p) in &potential {
        sim.remove(&p.usage);
    }
    fits(info, &sim)?;
    // Most important first; reprieve as many as still leave room, PDB-protected ones first.
    potential.sort_by(|a, b| b.1.priority.cmp(&a.1.priority).then_with(|| a.0.cmp(b.0)));
    let (violating, ok) = split_by_pdb(cache, potential);
    let mut victims = vec![];
    let mut pdb_violations = 0;
    for (list, counts) in [(violating, true), (ok, false)] {
        for (_, p) in list {
            sim.add(&p.usage);
            if fits(info, &sim).is_err() {
                sim.remove(&p.usage);
                pdb_violations += counts as usize;
                victims.push(Victim {
                    namespace: p.group.namespace.clone(),
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                    priority: p.priority,
                });
            }
        }
    }
    Ok(Candidate { node: node.name().to_string(), victims, pdb_violations })
}

/// PostFilter: `failures` are the nodes the filters rejected, with their reasons.
pub fn preempt(info: &PodInfo<'_>, cache: &Cache, failures: &[(String, Vec<String>)]) -> Result<Candidate, String> {
    eligible(info.pod, cache)?;
    let total = cache.node_count();
    let mut statuses: Vec<Vec<String>> = vec![];
    let mut best: Option<Candidate> = None;
    for (name, reasons) in failures {
        let node = match cache.node(name) {
            Some(n) if !reasons.iter().any(|r| filter::is_unresolvable(r)) => n,
            _ => {
                statuses.push(vec![NOT_HELPFUL.into()]);
                continue;
            }
        };
        match select_victims(info, cache, node, reasons) {
            Err(r) => statuses.push(r),
            Ok(c) => {
                let rank = |c: &Candidate| {
                    (
                        c.pdb_violations,
                        c.victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN),
                        c.victims.iter().map(|v| v.priority as i64).sum::<i64>(),
                        c.victims.len(),
                    )
                };
                if best.as_ref().is_none_or(|b| rank(&c) < rank(b)) {
                    best = Some(c);
                }
            }
        }
    }
    best.ok_or_else(|| filter::fit_error(total, None, &statuses, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::labels::tests::{labels, sel};
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::api::core::v1::{Container, NodeCondition, NodeStatus, PodSpec, ResourceRequirements};
    use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    fn node(name: &str, cpu: &str) -> Node {
        Node {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            status: Some(NodeStatus {
                allocatable: Some(
                    [("cpu".to_string(), Quantity(cpu.into())), ("pods".to_string(), Quantity("110".into()))].into(),
                ),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(name: &str, node: Option<&str>, cpu: &str, prio: i32, app: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(labels(&[("app", app)])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                priority: Some(prio),
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_string(), Quantity(cpu.into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn failures(c: &Cache, p: &Pod) -> Vec<(String, Vec<String>)> {
        let info = PodInfo::new(p);
        c.nodes().filter_map(|n| filter::run_filters(&info, n).err().map(|r| (n.name().to_string(), r))).collect()
    }

    #[test]
    fn the_fewest_lowest_priority_pods_are_evicted() {
        let mut c = Cache::default();
        c.set_node(node("a", "2"));
        c.set_node(node("b", "2"));
        c.update_pod(&pod("a-low", Some("a"), "1", 10, "x"));
        c.update_pod(&pod("a-mid", Some("a"), "1", 50, "x"));
        c.update_pod(&pod("b-mid1", Some("b"), "1", 50, "x"));
        c.update_pod(&pod("b-mid2", Some("b"), "1", 50, "x"));
        let p = pod("high", None, "1", 100, "y");
        let cand = preempt(&PodInfo::new(&p), &c, &failures(&c, &p)).expect("candidate");
        assert_eq!(cand.node, "a");
        assert_eq!(cand.victims.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), vec!["a-low"]);
    }

    #[test]
    fn equal_or_higher_priority_pods_are_never_victims() {
        let mut c = Cache::default();
        c.set_node(node("a", "1"));
        c.update_pod(&pod("same", Some("a"), "1", 100, "x"));
        let p = pod("high", None, "1", 100, "y");
        assert_eq!(
            preempt(&PodInfo::new(&p), &c, &failures(&c, &p)),
            Err(format!("0/1 nodes are available: 1 {NO_VICTIMS}."))
        );
    }

    #[test]
    fn preemption_policy_never_is_honoured() {
        let mut c = Cache::default();
        c.set_node(node("a", "1"));
        c.update_pod(&pod("low", Some("a"), "1", 0, "x"));
        let mut p = pod("high", None, "1", 100, "y");
        if let Some(s) = p.spec.as_mut() {
            s.preemption_policy = Some("Never".into());
        }
        assert_eq!(
            preempt(&PodInfo::new(&p), &c, &failures(&c, &p)),
            Err("not eligible due to preemptionPolicy=Never.".into())
        );
    }

    #[test]
    fn nodes_rejected_for_unresolvable_reasons_are_not_candidates() {
        let mut c = Cache::default();
        c.set_node(node("a", "1"));
        c.update_pod(&pod("low", Some("a"), "1", 0, "x"));
        let p = pod("high", None, "1", 100, "y");
        let f = vec![("a".to_string(), vec![filter::ERR_AFFINITY.to_string()])];
        assert_eq!(preempt(&PodInfo::new(&p), &c, &f), Err(format!("0/1 nodes are available: 1 {NOT_HELPFUL}.")));
    }

    #[test]
    fn nodes_whose_victims_a_budget_protects_come_last() {
        let mut c = Cache::default();
        c.set_node(node("a", "1"));
        c.set_node(node("b", "1"));
        c.update_pod(&pod("guarded", Some("a"), "1", 0, "db"));
        c.update_pod(&pod("free", Some("b"), "1", 5, "web"));
        c.pdbs.insert(
            "default/db".into(),
            PodDisruptionBudget {
                metadata: ObjectMeta {
                    name: Some("db".into()),
                    namespace: Some("default".into()),
                    ..Default::default()
                },
                spec: Some(PodDisruptionBudgetSpec { selector: Some(sel(&[("app", "db")])), ..Default::default() }),
                status: Some(PodDisruptionBudgetStatus { disruptions_allowed: 0, ..Default::default() }),
            },
        );
        let p = pod("high", None, "1", 100, "y");
        let cand = preempt(&PodInfo::new(&p), &c, &failures(&c, &p)).expect("candidate");
        assert_eq!(cand.node, "b", "the budget outweighs the lower priority on a");
        assert_eq!(cand.pdb_violations, 0);
    }

    #[test]
    fn a_terminating_victim_on_the_nominated_node_stops_further_preemption() {
        let mut c = Cache::default();
        c.set_node(node("a", "1"));
        let mut low = pod("low", Some("a"), "1", 0, "x");
        low.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        c.update_pod(&low);
        let p = pod("high", None, "1", 100, "y");
        c.nominate(&p, "a");
        assert_eq!(eligible(&p, &c), Err("not eligible due to a terminating pod on the nominated node.".into()));
    }
}
