//! DefaultPreemption (upstream `framework/plugins/defaultpreemption` and
//! `framework/preemption`): when a pod fits nowhere, find the node where evicting the fewest,
//! least important lower-priority pods makes room, preferring victims whose loss no
//! PodDisruptionBudget forbids.
//!
//! Pure: [`preempt`] reads the cache and returns the node and victims, or the message upstream
//! appends to FailedScheduling after `preemption:`. The caller deletes the victims and sets
//! `status.nominatedNodeName`.
//!
//! As upstream's `SelectVictimsOnNode`, each node rejected for reasons eviction can cure is
//! dry-run: all its lower-priority pods are taken away — from the node's totals and host ports
//! and, through the PreFilter extensions (`spread::update`, `interpod::update`), from the counts
//! topology spreading and inter-pod (anti-)affinity filter by — and *every* filter runs again.
//! So a pod blocked by lower-priority pods' resources, host ports, required anti-affinity (its
//! own or theirs) or the spread domains they fill can preempt them. Then the victims are given
//! back one by one, most important first (those a budget protects first), keeping each that
//! still leaves the pod fitting. Nodes rejected for reasons no eviction cures (selectors, node
//! affinity, taints, cordons, volumes: upstream's UnschedulableAndUnresolvable) are skipped.

use super::cache::{priority, Cache, NodeInfo, PlacedPod};
use super::filter::{self, PodInfo};
use super::{interpod, labels, spread};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use std::cmp::Ordering;

pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// A pod to evict.
#[derive(Debug, Clone, PartialEq)]
pub struct Victim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub priority: i32,
    /// `status.startTime` (`None`: not started, which counts as now).
    pub start: Option<Timestamp>,
}

/// Where the pod goes once its victims are gone.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub node: String,
    /// Most important first.
    pub victims: Vec<Victim>,
    pub pdb_violations: usize,
}

/// Upstream `PodEligibleToPreemptOthers`: `Err` carries the message. `failures` are the nodes
/// the filters rejected, with their reasons.
pub fn eligible(pod: &Pod, cache: &Cache, failures: &[(String, Vec<String>)]) -> Result<(), String> {
    if pod.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("not eligible due to preemptionPolicy=Never.".into());
    }
    let Some(nominated) = cache.nominated_node(pod) else { return Ok(()) };
    // A nominated node the pod can no longer go to at all is no reason to wait.
    let unresolvable = failures
        .iter()
        .find(|(n, _)| *n == nominated)
        .is_some_and(|(_, reasons)| reasons.iter().any(|r| filter::is_unresolvable(r)));
    if unresolvable {
        return Ok(());
    }
    // Victims already on their way out on the nominated node: wait for them rather than
    // preempting more.
    if let Some(node) = cache.node(&nominated) {
        let prio = priority(pod);
        let terminating =
            node.pods.iter().filter_map(|k| cache.pod(k)).any(|p| p.group.terminating && p.priority < prio);
        if terminating {
            return Err("not eligible due to a terminating pod on the nominated node.".into());
        }
    }
    Ok(())
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

/// A start time as upstream orders it: not started yet is "now", later than any real one.
fn start_key(s: Option<Timestamp>) -> (bool, Timestamp) {
    (s.is_none(), s.unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Upstream `MoreImportantPod`: higher priority first, then the one running longer.
fn more_important(a: (i32, Option<Timestamp>), b: (i32, Option<Timestamp>)) -> Ordering {
    b.0.cmp(&a.0).then_with(|| start_key(a.1).cmp(&start_key(b.1)))
}

/// One node under simulation: its totals (with the room reserved for nominated pods at least as
/// important as the preemptor, as upstream's `RunFilterPluginsWithNominatedPods` adds them) and
/// the preemptor's PreFilter state, with pods taken away or given back.
struct Sim<'a, 'c> {
    info: &'c mut PodInfo<'a>,
    node: NodeInfo,
    cache: &'c Cache,
}

impl Sim<'_, '_> {
    /// Upstream `RemovePod` + `RunPreFilterExtensionRemovePod` (`delta` -1) or `AddPodInfo` +
    /// `RunPreFilterExtensionAddPod` (+1).
    fn change(&mut self, p: &PlacedPod, delta: i64) {
        if delta < 0 {
            self.node.remove(&p.usage);
        } else {
            self.node.add(&p.usage);
        }
        if let Some(mut st) = self.info.spread.take() {
            spread::update(&mut st, self.info, &self.node, &p.group, delta);
            self.info.spread = Some(st);
        }
        if let Some(st) = self.info.interpod.as_mut() {
            let terms = p.affinity.as_deref().and_then(|sig| self.cache.affinity_group(sig));
            interpod::update(st, self.info.pod, self.cache, &p.group, terms, self.node.labels(), delta);
        }
    }

    fn fits(&self) -> filter::Verdict {
        filter::run_filters(self.info, &self.node)
    }
}

/// Dry-runs preemption on one node: the victims, or the node's status message(s). `info`'s
/// PreFilter state is left as it was found.
fn select_victims(info: &mut PodInfo<'_>, cache: &Cache, node: &NodeInfo) -> Result<Candidate, Vec<String>> {
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
    let key = super::cache::pod_key(info.pod);
    let mut sim = Sim { info, node: node.clone(), cache };
    for r in cache.nominated_on(node.name(), &key, prio) {
        sim.node.add(&r.usage);
    }
    for (_, p) in &potential {
        sim.change(p, -1);
    }
    if let Err(reasons) = sim.fits() {
        for (_, p) in &potential {
            sim.change(p, 1);
        }
        return Err(reasons);
    }
    potential.sort_by(|a, b| more_important((a.1.priority, a.1.start), (b.1.priority, b.1.start)).then(a.0.cmp(b.0)));
    let (violating, ok) = split_by_pdb(cache, potential);
    let mut victims: Vec<&PlacedPod> = vec![];
    let mut pdb_violations = 0;
    for (list, counts) in [(violating, true), (ok, false)] {
        for (_, p) in list {
            sim.change(p, 1);
            if sim.fits().is_err() {
                sim.change(p, -1);
                pdb_violations += counts as usize;
                victims.push(p);
            }
        }
    }
    // Give the victims back too: the state serves the next node.
    for p in &victims {
        sim.change(p, 1);
    }
    if victims.is_empty() {
        // Upstream treats this as an error for the node (it fitted all along).
        return Err(vec![format!("expected at least one victim pod on node {:?}", node.name())]);
    }
    let mut victims: Vec<Victim> = victims
        .into_iter()
        .map(|p| Victim {
            namespace: p.group.namespace.clone(),
            name: p.name.clone(),
            uid: p.uid.clone(),
            priority: p.priority,
            start: p.start,
        })
        .collect();
    victims.sort_by(|a, b| more_important((a.priority, a.start), (b.priority, b.start)));
    Ok(Candidate { node: node.name().to_string(), victims, pdb_violations })
}

/// Upstream `pickOneNodeForPreemption`'s criteria as one ordering (smaller is better): fewest
/// budget violations, lowest most important victim, smallest priority sum (each priority
/// shifted by 2³¹ so that more victims never sum smaller), fewest victims, and the latest start
/// among the most important victims. Ties keep the first node found.
fn rank(c: &Candidate) -> (usize, i32, i64, usize, std::cmp::Reverse<(bool, Timestamp)>) {
    let top = c.victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN);
    let earliest = c.victims.iter().filter(|v| v.priority == top).map(|v| start_key(v.start)).min();
    (
        c.pdb_violations,
        top,
        c.victims.iter().map(|v| v.priority as i64 + (i32::MAX as i64 + 1)).sum(),
        c.victims.len(),
        std::cmp::Reverse(earliest.unwrap_or((true, Timestamp::UNIX_EPOCH))),
    )
}

/// PostFilter: `failures` are the nodes the filters rejected, with their reasons.
pub fn preempt(info: &PodInfo<'_>, cache: &Cache, failures: &[(String, Vec<String>)]) -> Result<Candidate, String> {
    eligible(info.pod, cache, failures)?;
    let total = cache.node_count();
    let mut statuses: Vec<Vec<String>> = vec![];
    let mut best: Option<Candidate> = None;
    // One copy of the PreFilter state for all nodes: each dry run restores what it changes.
    let mut sim_info = info.clone();
    for (name, reasons) in failures {
        // Readiness is the last filter here, but upstream's not-ready taint is checked before
        // the others: a node that is not ready is unresolvable whatever it failed on first.
        let usable = |n: &NodeInfo| n.facts.ready || info.tolerates_not_ready;
        let node = match cache.node(name) {
            Some(n) if usable(n) && !reasons.iter().any(|r| filter::is_unresolvable(r)) => n,
            _ => {
                statuses.push(vec![NOT_HELPFUL.into()]);
                continue;
            }
        };
        match select_victims(&mut sim_info, cache, node) {
            Err(r) => statuses.push(r),
            Ok(c) => {
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
    fn a_node_that_is_not_ready_is_not_a_candidate_whatever_it_failed_on_first() {
        let mut c = Cache::default();
        let mut n = node("a", "1");
        if let Some(cs) = n.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            cs[0].status = "False".into();
        }
        c.set_node(n);
        c.update_pod(&pod("low", Some("a"), "1", 0, "x"));
        let p = pod("high", None, "1", 100, "y");
        assert_eq!(failures(&c, &p), vec![("a".to_string(), vec!["Insufficient cpu".to_string()])]);
        assert_eq!(
            preempt(&PodInfo::new(&p), &c, &failures(&c, &p)),
            Err(format!("0/1 nodes are available: 1 {NOT_HELPFUL}."))
        );
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
        assert_eq!(eligible(&p, &c, &[]), Err("not eligible due to a terminating pod on the nominated node.".into()));
    }

    fn zoned(name: &str, cpu: &str, zone: &str) -> Node {
        let mut n = node(name, cpu);
        n.metadata.labels = Some(labels(&[("kubernetes.io/hostname", name), ("zone", zone)]));
        n
    }

    fn anti(app: &str, key: &str) -> k8s_openapi::api::core::v1::Affinity {
        k8s_openapi::api::core::v1::Affinity {
            pod_anti_affinity: Some(k8s_openapi::api::core::v1::PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![
                    k8s_openapi::api::core::v1::PodAffinityTerm {
                        label_selector: Some(sel(&[("app", app)])),
                        topology_key: key.into(),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_affinity(mut p: Pod, a: k8s_openapi::api::core::v1::Affinity) -> Pod {
        if let Some(s) = p.spec.as_mut() {
            s.affinity = Some(a);
        }
        p
    }

    /// The whole cycle as the scheduler runs it: PreFilter, every filter on every node, then
    /// PostFilter with the real reasons.
    fn run(c: &Cache, p: &Pod) -> Result<Candidate, String> {
        let info = PodInfo::prepare(p, c).expect("no PreFilter rejection");
        let failures: Vec<(String, Vec<String>)> =
            c.nodes().filter_map(|n| filter::run_filters(&info, n).err().map(|r| (n.name().to_string(), r))).collect();
        assert_eq!(failures.len(), c.node_count(), "the pod must fit nowhere: {failures:?}");
        preempt(&info, c, &failures)
    }

    fn names(c: &Candidate) -> Vec<&str> {
        c.victims.iter().map(|v| v.name.as_str()).collect()
    }

    #[test]
    fn a_lower_priority_pod_whose_anti_affinity_rejects_the_pod_is_preempted() {
        let mut c = Cache::default();
        c.set_node(zoned("a", "4", "z1"));
        c.update_pod(&with_affinity(pod("loner", Some("a"), "100m", 0, "db"), anti("web", "kubernetes.io/hostname")));
        c.update_pod(&pod("bystander", Some("a"), "100m", 0, "cache"));
        let cand = run(&c, &pod("web", None, "100m", 100, "web")).expect("candidate");
        assert_eq!((cand.node.as_str(), names(&cand)), ("a", vec!["loner"]), "only the pod in the way goes");
    }

    #[test]
    fn a_pod_whose_own_anti_affinity_matches_lower_priority_pods_preempts_them() {
        let mut c = Cache::default();
        c.set_node(zoned("a", "4", "z1"));
        c.update_pod(&pod("old-web", Some("a"), "100m", 0, "web"));
        c.update_pod(&pod("other", Some("a"), "100m", 0, "cache"));
        let p = with_affinity(pod("new-web", None, "100m", 100, "api"), anti("web", "kubernetes.io/hostname"));
        let cand = run(&c, &p).expect("candidate");
        assert_eq!(names(&cand), vec!["old-web"]);
    }

    #[test]
    fn anti_affinity_over_a_zone_needs_every_matching_pod_of_the_zone_on_one_node() {
        let mut c = Cache::default();
        c.set_node(zoned("a", "4", "z1"));
        c.set_node(zoned("b", "4", "z1"));
        c.update_pod(&pod("web-a", Some("a"), "100m", 0, "web"));
        c.update_pod(&pod("web-b", Some("b"), "100m", 0, "web"));
        let p = with_affinity(pod("api", None, "100m", 100, "api"), anti("web", "zone"));
        // Evicting one node's pod leaves the other's in the zone; each dry run starts afresh.
        assert_eq!(run(&c, &p), Err("0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.".into()));
        c.remove_pod(&pod("web-b", Some("b"), "100m", 0, "web"));
        assert_eq!(run(&c, &p).map(|c| c.node), Ok("a".into()));
    }

    #[test]
    fn a_spread_domain_filled_by_lower_priority_pods_is_relieved_by_preempting_just_enough() {
        let mut c = Cache::default();
        c.set_node(zoned("a", "4", "z1"));
        // z2's only node is full with a pod more important than the preemptor.
        c.set_node(zoned("b", "1", "z2"));
        for (name, n, cpu, prio) in [("w1", "a", "100m", 0), ("w2", "a", "100m", 5), ("w3", "b", "1", 500)] {
            c.update_pod(&pod(name, Some(n), cpu, prio, "web"));
        }
        let mut p = pod("w4", None, "100m", 100, "web");
        if let Some(s) = p.spec.as_mut() {
            s.topology_spread_constraints = Some(vec![k8s_openapi::api::core::v1::TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "zone".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: Some(sel(&[("app", "web")])),
                ..Default::default()
            }]);
        }
        // z1 holds 2 and z2 1: a third in z1 makes the skew 2. One victim is enough, the
        // less important one.
        let cand = run(&c, &p).expect("candidate");
        assert_eq!((cand.node.as_str(), names(&cand)), ("a", vec!["w1"]));
    }

    #[test]
    fn a_host_port_held_by_a_lower_priority_pod_is_freed() {
        let mut c = Cache::default();
        c.set_node(zoned("a", "4", "z1"));
        let with_port = |mut p: Pod| {
            if let Some(s) = p.spec.as_mut() {
                s.containers[0].ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                    container_port: 80,
                    host_port: Some(8080),
                    ..Default::default()
                }]);
            }
            p
        };
        c.update_pod(&with_port(pod("holder", Some("a"), "100m", 0, "x")));
        c.update_pod(&pod("idle", Some("a"), "100m", 0, "y"));
        let cand = run(&c, &with_port(pod("high", None, "100m", 100, "z"))).expect("candidate");
        assert_eq!(names(&cand), vec!["holder"]);
    }

    #[test]
    fn a_node_whose_taint_the_pod_does_not_tolerate_is_never_a_candidate() {
        let mut c = Cache::default();
        let mut n = zoned("a", "1", "z1");
        n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(vec![k8s_openapi::api::core::v1::Taint {
                key: "dedicated".into(),
                value: Some("batch".into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        c.set_node(n);
        c.update_pod(&pod("low", Some("a"), "1", 0, "x"));
        assert_eq!(
            run(&c, &pod("high", None, "1", 100, "y")),
            Err(format!("0/1 nodes are available: 1 {NOT_HELPFUL}."))
        );
    }

    #[test]
    fn with_equal_victims_the_node_whose_most_important_victim_started_last_is_chosen() {
        let started = |mut p: Pod, secs: i64| {
            p.status = Some(k8s_openapi::api::core::v1::PodStatus {
                start_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::from_second(secs).expect("time"),
                )),
                ..Default::default()
            });
            p
        };
        let mut c = Cache::default();
        c.set_node(node("old", "1"));
        c.set_node(node("new", "1"));
        c.update_pod(&started(pod("long-running", Some("old"), "1", 0, "x"), 1_000));
        c.update_pod(&started(pod("just-started", Some("new"), "1", 0, "x"), 2_000));
        assert_eq!(run(&c, &pod("high", None, "1", 100, "y")).map(|c| c.node), Ok("new".into()));
    }

    #[test]
    fn with_negative_priorities_fewer_victims_still_win() {
        let mut c = Cache::default();
        c.set_node(node("one", "2"));
        c.set_node(node("two", "2"));
        c.update_pod(&pod("big", Some("one"), "2", -10, "x"));
        c.update_pod(&pod("half1", Some("two"), "1", -10, "x"));
        c.update_pod(&pod("half2", Some("two"), "1", -10, "x"));
        // Raw sums would favour two (-20 < -10); upstream shifts each priority by 2³¹ first.
        assert_eq!(run(&c, &pod("high", None, "2", 0, "y")).map(|c| c.node), Ok("one".into()));
    }
}
