//! Service endpoints (upstream `pkg/controller/endpoint` and `pkg/controller/endpointslice`):
//! for every Service with a selector, the pods it selects become a core/v1 `Endpoints` object
//! (what `kubectl describe service` 1.32 and older clients read) and `discovery.k8s.io/v1`
//! EndpointSlices (what the service proxy and DNS read).
//!
//! Pods are grouped by the ports the Service's `targetPort`s resolve to on them (a named port may
//! differ per pod), one EndpointSlice per group, as upstream does. Slices get deterministic
//! names (`<service>-<hash of the ports>`), so a reconcile needs no memory of earlier ones.
//! Slices and Endpoints of a deleted Service are removed by this controller.

use super::informer::Informers;
use super::podutil::is_ready;
use futures::{future, StreamExt};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// What can stop one Service sync; retried after a pause.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// A call to the API server failed.
    #[error("{action} for service {service}: {source}")]
    Api {
        action: &'static str,
        service: String,
        #[source]
        source: kube::Error,
    },
}

/// The container port a Service port's `targetPort` means on `pod` (upstream
/// `podutil.FindPort`): a number as is, a name looked up among the pod's container ports with
/// the same protocol; `None` if the pod has no such named port.
pub fn resolve_port(target: Option<&IntOrString>, port: i32, protocol: &str, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            pod.spec.as_ref()?.containers.iter().flat_map(|c| c.ports.iter().flatten()).find_map(|p| {
                (p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                    .then_some(p.container_port)
            })
        }
    }
}

/// One slice's worth: resolved ports (name, port, protocol, appProtocol) and its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub ports: Vec<(String, i32, String, Option<String>)>,
    pub pods: Vec<Arc<Pod>>,
}

/// The pods backing `svc`, grouped by resolved ports. Pods without an IP or finished are left
/// out; terminating pods stay in (marked terminating) as upstream's slices keep them.
pub fn groups(svc: &Service, pods: &[Arc<Pod>]) -> Vec<Group> {
    let Some(spec) = svc.spec.as_ref() else { return vec![] };
    let Some(sel) = spec.selector.as_ref().filter(|s| !s.is_empty()) else { return vec![] };
    let ns = svc.metadata.namespace.as_deref();
    let mut out: Vec<Group> = vec![];
    for pod in pods {
        if pod.metadata.namespace.as_deref() != ns
            || !sel.iter().all(|(k, v)| pod.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
        {
            continue;
        }
        let st = pod.status.as_ref();
        if st.and_then(|s| s.pod_ip.as_deref()).is_none_or(|ip| ip.is_empty())
            || matches!(st.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
        {
            continue;
        }
        let mut ports = vec![];
        for p in spec.ports.iter().flatten() {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            if let Some(n) = resolve_port(p.target_port.as_ref(), p.port, &proto, pod) {
                ports.push((p.name.clone().unwrap_or_default(), n, proto, p.app_protocol.clone()));
            }
        }
        match out.iter_mut().find(|g| g.ports == ports) {
            Some(g) => g.pods.push(pod.clone()),
            None => out.push(Group { ports, pods: vec![pod.clone()] }),
        }
    }
    out
}

fn fnv32a(s: &str) -> u32 {
    s.bytes().fold(2_166_136_261u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16_777_619))
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

fn owner(svc: &Service) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    vec![super::podutil::controller_ref(svc)]
}

/// The EndpointSlices for `svc` (upstream `endpointslice` reconciler, one slice per port group).
pub fn desired_slices(svc: &Service, groups: &[Group]) -> Vec<EndpointSlice> {
    let name = svc.name_any();
    let publish_not_ready = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    groups
        .iter()
        .map(|g| {
            let key = format!("{:?}", g.ports);
            let mut endpoints: Vec<Endpoint> = g
                .pods
                .iter()
                .map(|p| {
                    let terminating = p.metadata.deletion_timestamp.is_some();
                    let serving = is_ready(p);
                    Endpoint {
                        addresses: vec![p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default()],
                        conditions: Some(EndpointConditions {
                            ready: Some(publish_not_ready || (serving && !terminating)),
                            serving: Some(serving),
                            terminating: Some(terminating),
                        }),
                        node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                        target_ref: Some(target_ref(p)),
                        ..Default::default()
                    }
                })
                .collect();
            endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            let mut labels: BTreeMap<String, String> = svc.metadata.labels.clone().unwrap_or_default();
            labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
            labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
            EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{:08x}", fnv32a(&key))),
                    namespace: svc.metadata.namespace.clone(),
                    labels: Some(labels),
                    owner_references: Some(owner(svc)),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints,
                ports: Some(
                    g.ports
                        .iter()
                        .map(|(n, p, proto, app)| EndpointPort {
                            name: Some(n.clone()),
                            port: Some(*p),
                            protocol: Some(proto.clone()),
                            app_protocol: app.clone(),
                        })
                        .collect(),
                ),
            }
        })
        .collect()
}

/// The core/v1 Endpoints for `svc` (upstream endpoints controller): ready pods in `addresses`,
/// not-ready ones in `notReadyAddresses`, terminating pods left out.
pub fn desired_endpoints(svc: &Service, groups: &[Group]) -> Endpoints {
    let publish_not_ready = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let subsets: Vec<EndpointSubset> = groups
        .iter()
        .filter_map(|g| {
            let addr = |p: &Arc<Pod>| EndpointAddress {
                ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
                node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(target_ref(p)),
                hostname: None,
            };
            let live: Vec<&Arc<Pod>> = g.pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
            let mut ready: Vec<EndpointAddress> =
                live.iter().filter(|p| publish_not_ready || is_ready(p)).map(|p| addr(p)).collect();
            let mut not_ready: Vec<EndpointAddress> =
                live.iter().filter(|p| !(publish_not_ready || is_ready(p))).map(|p| addr(p)).collect();
            if ready.is_empty() && not_ready.is_empty() {
                return None;
            }
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            Some(EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: Some(
                    g.ports
                        .iter()
                        .map(|(n, p, proto, app)| CorePort {
                            name: (!n.is_empty()).then(|| n.clone()),
                            port: *p,
                            protocol: Some(proto.clone()),
                            app_protocol: app.clone(),
                        })
                        .collect(),
                ),
            })
        })
        .collect();
    Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            labels: svc.metadata.labels.clone(),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

/// Everything a sync needs besides the Service.
pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
}

/// One idempotent sync of a Service's Endpoints and EndpointSlices.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, EndpointsError> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let key = format!("{ns}/{name}");
    let err = |action: &'static str| {
        let service = key.clone();
        move |source| EndpointsError::Api { action, service, source }
    };
    // Services without a selector have hand-managed endpoints.
    if svc.spec.as_ref().and_then(|s| s.selector.as_ref()).is_none_or(|s| s.is_empty())
        || svc.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let pods: Vec<Arc<Pod>> =
        ctx.pods.state().into_iter().filter(|p| p.metadata.namespace.as_deref() == Some(&ns)).collect();
    let gs = groups(&svc, &pods);

    let ep_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let mut want_ep = desired_endpoints(&svc, &gs);
    match ep_api.get_opt(&name).await.map_err(err("reading endpoints"))? {
        None => {
            ep_api.create(&PostParams::default(), &want_ep).await.map_err(err("creating endpoints"))?;
        }
        Some(cur) if cur.subsets != want_ep.subsets || cur.metadata.labels != want_ep.metadata.labels => {
            want_ep.metadata.resource_version = cur.metadata.resource_version;
            ep_api.replace(&name, &PostParams::default(), &want_ep).await.map_err(err("updating endpoints"))?;
        }
        Some(_) => {}
    }

    let slice_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let existing = slice_api.list(&lp).await.map_err(err("listing endpoint slices"))?.items;
    let want = desired_slices(&svc, &gs);
    for mut s in want.iter().cloned() {
        let sname = s.name_any();
        match existing.iter().find(|e| e.name_any() == sname) {
            None => {
                slice_api.create(&PostParams::default(), &s).await.map_err(err("creating endpoint slice"))?;
            }
            Some(cur)
                if cur.endpoints != s.endpoints || cur.ports != s.ports || cur.metadata.labels != s.metadata.labels =>
            {
                s.metadata.resource_version = cur.metadata.resource_version.clone();
                slice_api.replace(&sname, &PostParams::default(), &s).await.map_err(err("updating endpoint slice"))?;
            }
            Some(_) => {}
        }
    }
    for stale in existing.iter().filter(|e| !want.iter().any(|w| w.metadata.name == e.metadata.name)) {
        match slice_api.delete(&stale.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(err("deleting endpoint slice")(e)),
        }
    }
    Ok(Action::await_change())
}

fn error_policy(svc: Arc<Service>, e: &EndpointsError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, service = %svc.name_any(), "endpoints sync failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Removes what this controller wrote for a deleted Service.
async fn cleanup(client: &kube::Client, svc: &Service) {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let ep: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    if let Err(e) = ep.delete(&name, &DeleteParams::default()).await {
        if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
            tracing::warn!(error = %e, service = %name, "could not delete endpoints of a deleted service");
        }
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"));
    match slices.list(&lp).await {
        Ok(list) => {
            for s in list.items {
                let _ = slices.delete(&s.name_any(), &DeleteParams::default()).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, service = %name, "could not list endpoint slices of a deleted service"),
    }
}

/// Runs the controller until `shutdown` fires.
pub async fn run(client: kube::Client, informers: Informers, shutdown: CancellationToken) {
    let pods = informers.pods.store();
    let controller = Controller::new(Api::<Service>::all(client.clone()), watcher::Config::default());
    let services = controller.store();
    // A pod event wakes every selecting Service in its namespace; a label change that makes a
    // pod leave a Service is caught because all Services of the namespace are looked at.
    let pod_events = informers
        .pods
        .events()
        .map(move |ev| {
            let ns = ev.object().metadata.namespace.clone();
            let refs: Vec<ObjectRef<Service>> = services
                .state()
                .iter()
                .filter(|s| s.metadata.namespace == ns)
                .filter(|s| s.spec.as_ref().and_then(|x| x.selector.as_ref()).is_some_and(|x| !x.is_empty()))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect();
            futures::stream::iter(refs)
        })
        .flatten();
    // Deleted Services: the controller never reconciles an object that is gone, so watch for it.
    let (c2, sd2) = (client.clone(), shutdown.clone());
    let deletions = tokio::spawn(async move {
        let mut stream = watcher(Api::<Service>::all(c2.clone()), watcher::Config::default()).boxed();
        loop {
            let ev = tokio::select! {
                _ = sd2.cancelled() => return,
                ev = stream.next() => match ev { Some(ev) => ev, None => return },
            };
            if let Ok(watcher::Event::Delete(s)) = ev {
                cleanup(&c2, &s).await;
            }
        }
    });
    let ctx = Arc::new(Context { client, pods });
    controller
        .reconcile_on(pod_events)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "endpoints controller");
            }
            future::ready(())
        })
        .await;
    deletions.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::podutil::tests::ready;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodStatus, ServicePort, ServiceSpec};

    fn svc(target: IntOrString) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("d".into()),
                uid: Some("s".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(target),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, ip: &str, port: i32, is_ready: bool) -> Arc<Pod> {
        let mut p = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("d".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("web".into()),
                        container_port: port,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus { pod_ip: Some(ip.into()), phase: Some("Running".into()), ..Default::default() }),
        };
        if is_ready {
            ready(&mut p, 1);
        }
        Arc::new(p)
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_split_slices() {
        let s = svc(IntOrString::String("web".into()));
        let pods = vec![
            pod("a", "10.42.0.2", 8080, true),
            pod("b", "10.42.0.3", 9090, true),
            pod("c", "10.42.0.4", 8080, false),
        ];
        let gs = groups(&s, &pods);
        assert_eq!(gs.len(), 2);
        let slices = desired_slices(&s, &gs);
        assert_eq!(slices.len(), 2);
        let first = &slices[0];
        assert_eq!(first.ports.as_ref().and_then(|p| p[0].port), Some(8080));
        assert_eq!(first.endpoints.len(), 2);
        assert_eq!(first.endpoints[1].conditions.as_ref().and_then(|c| c.ready), Some(false), "pod c is not ready");
        let labels = first.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(SERVICE_NAME_LABEL).map(String::as_str), Some("web"));
        assert_ne!(slices[0].metadata.name, slices[1].metadata.name);
        assert_eq!(desired_slices(&s, &gs)[0].metadata.name, first.metadata.name, "names are stable");
    }

    #[test]
    fn endpoints_split_ready_and_not_ready_addresses_and_drop_terminating_pods() {
        let s = svc(IntOrString::Int(8080));
        let mut gone = (*pod("t", "10.42.0.9", 8080, true)).clone();
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let pods = vec![pod("a", "10.42.0.2", 8080, true), pod("c", "10.42.0.4", 8080, false), Arc::new(gone)];
        let ep = desired_endpoints(&s, &groups(&s, &pods));
        let subsets = ep.subsets.unwrap_or_default();
        assert_eq!(subsets.len(), 1);
        let ips = |v: &Option<Vec<EndpointAddress>>| v.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>();
        assert_eq!(ips(&subsets[0].addresses), ["10.42.0.2"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.42.0.4"]);
        assert_eq!(subsets[0].ports.as_ref().map(|p| p[0].port), Some(8080));
        let slice = &desired_slices(&s, &groups(&s, &pods))[0];
        let term = slice.endpoints.iter().find(|e| e.addresses == ["10.42.0.9"]).and_then(|e| e.conditions.clone());
        assert_eq!(term.and_then(|c| c.terminating), Some(true), "slices keep terminating endpoints");
    }

    #[test]
    fn pods_without_an_ip_or_outside_the_selector_are_not_endpoints() {
        let s = svc(IntOrString::Int(80));
        let mut no_ip = (*pod("x", "", 80, true)).clone();
        if let Some(st) = no_ip.status.as_mut() {
            st.pod_ip = None;
        }
        let mut other = (*pod("y", "10.42.0.7", 80, true)).clone();
        other.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        assert!(groups(&s, &[Arc::new(no_ip), Arc::new(other)]).is_empty());
        let mut headless_selectorless = svc(IntOrString::Int(80));
        if let Some(sp) = headless_selectorless.spec.as_mut() {
            sp.selector = None;
        }
        assert!(groups(&headless_selectorless, &[pod("a", "10.42.0.2", 80, true)]).is_empty());
    }

    #[test]
    fn numeric_and_missing_target_ports_resolve_without_looking_at_the_pod() {
        let p = pod("a", "1.2.3.4", 1, true);
        assert_eq!(resolve_port(None, 80, "TCP", &p), Some(80));
        assert_eq!(resolve_port(Some(&IntOrString::Int(8080)), 80, "TCP", &p), Some(8080));
        assert_eq!(resolve_port(Some(&IntOrString::String("nope".into())), 80, "TCP", &p), None);
        assert_eq!(resolve_port(Some(&IntOrString::String("web".into())), 80, "UDP", &p), None, "protocol must match");
    }
}
