//! Events for `kubectl describe`: core/v1 Events written the way client-go's `EventRecorder`
//! writes them (`involvedObject`, `source.component`, `firstTimestamp`, `lastTimestamp`,
//! `count`), with its correlator's de-duplication: a repeat of the same reason and message for
//! the same object bumps `count` instead of creating a new Event.
//!
//! Best-effort by design, as upstream: recording never blocks or fails a reconcile. Events go
//! through a bounded channel to one writer task and are dropped (with a debug log) when it is full.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Resource;
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Queue length before events are dropped (client-go's broadcaster buffers 1000).
const QUEUE: usize = 1000;
/// Entries remembered for de-duplication (client-go's LRU holds 4096).
const REMEMBERED: usize = 4096;

/// `Normal` or `Warning`, the two upstream event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Debug)]
struct Pending {
    involved: ObjectReference,
    type_: EventType,
    reason: String,
    message: String,
    at: Timestamp,
}

/// A cheap, cloneable handle that records events for one component.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Pending>>,
}

/// A reference to `obj` for `involvedObject`.
pub fn object_ref<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let m = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}

impl Recorder {
    /// Starts the writer task for `component` (e.g. `replicaset-controller`).
    pub fn new(client: kube::Client, component: &'static str, shutdown: CancellationToken) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(client, component, rx, shutdown));
        Recorder { tx: Some(tx) }
    }

    /// A recorder that drops everything, for tests of code that records events.
    pub fn disabled() -> Recorder {
        Recorder { tx: None }
    }

    pub fn normal(&self, involved: ObjectReference, reason: &str, message: String) {
        self.record(involved, EventType::Normal, reason, message);
    }

    pub fn warning(&self, involved: ObjectReference, reason: &str, message: String) {
        self.record(involved, EventType::Warning, reason, message);
    }

    fn record(&self, involved: ObjectReference, type_: EventType, reason: &str, message: String) {
        let Some(tx) = &self.tx else { return };
        let p = Pending { involved, type_, reason: reason.to_string(), message, at: Timestamp::now() };
        if let Err(e) = tx.try_send(p) {
            tracing::debug!(error = %e, "event queue full or closed; dropping event");
        }
    }
}

/// The Event client-go would create for a first occurrence.
pub fn build_event(
    component: &str,
    involved: &ObjectReference,
    type_: EventType,
    reason: &str,
    message: &str,
    at: Timestamp,
) -> Event {
    let obj_name = involved.name.clone().unwrap_or_default();
    // client-go names events `<object>.<unix nanos in hex>` so they sort by time.
    let name = format!("{obj_name}.{:x}", at.as_nanosecond().max(0));
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            // Events about cluster-scoped objects live in `default`, as upstream.
            namespace: Some(involved.namespace.clone().unwrap_or_else(|| "default".into())),
            ..Default::default()
        },
        involved_object: involved.clone(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        source: Some(EventSource { component: Some(component.to_string()), host: None }),
        first_timestamp: Some(Time(at)),
        last_timestamp: Some(Time(at)),
        count: Some(1),
        type_: Some(type_.as_str().to_string()),
        event_time: None::<MicroTime>,
        reporting_component: Some(component.to_string()),
        reporting_instance: Some(component.to_string()),
        ..Default::default()
    }
}

/// The correlator key: same object, type, reason and message count as one event.
fn dedup_key(p: &Pending) -> String {
    format!(
        "{}/{}/{}/{}/{}/{}",
        p.involved.kind.as_deref().unwrap_or(""),
        p.involved.namespace.as_deref().unwrap_or(""),
        p.involved.name.as_deref().unwrap_or(""),
        p.involved.uid.as_deref().unwrap_or(""),
        p.reason,
        p.message
    )
}

async fn writer(
    client: kube::Client,
    component: &'static str,
    mut rx: mpsc::Receiver<Pending>,
    shutdown: CancellationToken,
) {
    // key → (namespace, event name, count)
    let mut seen: HashMap<String, (String, String, i32)> = HashMap::new();
    loop {
        let p = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let key = dedup_key(&p);
        if let Some((ns, name, count)) = seen.get(&key).cloned() {
            let api: Api<Event> = Api::namespaced(client.clone(), &ns);
            let patch = serde_json::json!({
                "count": count + 1,
                "lastTimestamp": Time(p.at),
            });
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    seen.insert(key, (ns, name, count + 1));
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, event = %name, "could not bump event count; creating a new event");
                    seen.remove(&key);
                }
            }
        }
        let ev = build_event(component, &p.involved, p.type_, &p.reason, &p.message, p.at);
        let ns = ev.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        match api.create(&PostParams::default(), &ev).await {
            Ok(created) => {
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
                let name = created.metadata.name.or(ev.metadata.name).unwrap_or_default();
                seen.insert(key, (ns, name, 1));
            }
            Err(e) => tracing::warn!(error = %e, reason = %p.reason, "could not write event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    #[test]
    fn events_carry_the_upstream_fields_kubectl_describe_reads() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let at = Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let ev = build_event(
            "default-scheduler",
            &object_ref(&pod),
            EventType::Normal,
            "Scheduled",
            "Successfully assigned shop/web-1 to n1",
            at,
        );
        assert_eq!(ev.metadata.namespace.as_deref(), Some("shop"));
        assert!(ev.metadata.name.as_deref().is_some_and(|n| n.starts_with("web-1.")));
        assert_eq!(ev.involved_object.kind.as_deref(), Some("Pod"));
        assert_eq!(ev.involved_object.api_version.as_deref(), Some("v1"));
        assert_eq!(ev.involved_object.uid.as_deref(), Some("u1"));
        assert_eq!(ev.source.and_then(|s| s.component).as_deref(), Some("default-scheduler"));
        assert_eq!(ev.count, Some(1));
        assert_eq!(ev.type_.as_deref(), Some("Normal"));
        assert_eq!(ev.first_timestamp, Some(Time(at)));
        assert_eq!(ev.last_timestamp, Some(Time(at)));
    }

    #[test]
    fn events_about_cluster_scoped_objects_go_to_the_default_namespace() {
        let node = k8s_openapi::api::core::v1::Node {
            metadata: ObjectMeta { name: Some("n1".into()), ..Default::default() },
            ..Default::default()
        };
        let ev = build_event("c", &object_ref(&node), EventType::Warning, "R", "m", Timestamp::UNIX_EPOCH);
        assert_eq!(ev.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
    }

    #[test]
    fn a_disabled_recorder_accepts_events_silently() {
        Recorder::disabled().normal(ObjectReference::default(), "R", "m".into());
    }
}
