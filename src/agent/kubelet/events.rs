//! core/v1 Events about pods, as the kubelet's event recorder emits them (`source.component`
//! kubelet, `source.host` the node). Best-effort by design: events go through a bounded queue to
//! a background task, and a full queue or a failed POST drops the event, so pod work never waits
//! on the API for them (upstream's broadcaster drops too when its queue is full).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One event about a pod (or one of its containers).
#[derive(Debug, Clone, PartialEq)]
pub struct PodEvent {
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// `spec.containers{name}` / `spec.initContainers{name}` when about a container.
    pub field_path: Option<String>,
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl PodEvent {
    pub fn new(
        pod: &Pod,
        field_path: Option<String>,
        type_: &'static str,
        reason: &'static str,
        message: String,
    ) -> Self {
        PodEvent {
            namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            field_path,
            type_,
            reason,
            message,
        }
    }
}

/// Where pod events go.
pub trait EventSink: Send + Sync {
    fn emit(&self, ev: PodEvent);
}

/// Keeps events in memory, for tests.
#[derive(Default)]
pub struct CollectingSink(Mutex<Vec<PodEvent>>);

impl CollectingSink {
    pub fn reasons(&self) -> Vec<&'static str> {
        self.0.lock().map(|v| v.iter().map(|e| e.reason).collect()).unwrap_or_default()
    }
    pub fn events(&self) -> Vec<PodEvent> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl EventSink for CollectingSink {
    fn emit(&self, ev: PodEvent) {
        if let Ok(mut v) = self.0.lock() {
            v.push(ev);
        }
    }
}

/// Builds the Event object the API stores.
pub fn to_event(ev: &PodEvent, node: &str, now: Timestamp) -> Event {
    // Upstream names events `<object>.<unix nanos in hex>`.
    let nanos = now.as_nanosecond();
    let time = Time(now);
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", ev.pod_name, nanos)),
            namespace: Some(ev.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(ev.pod_name.clone()),
            namespace: Some(ev.namespace.clone()),
            uid: Some(ev.pod_uid.clone()),
            field_path: ev.field_path.clone(),
            ..Default::default()
        },
        reason: Some(ev.reason.into()),
        message: Some(ev.message.clone()),
        type_: Some(ev.type_.into()),
        count: Some(1),
        first_timestamp: Some(time.clone()),
        last_timestamp: Some(time),
        source: Some(EventSource { component: Some("kubelet".into()), host: Some(node.into()) }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(node.into()),
        ..Default::default()
    }
}

/// What makes two events the same for aggregation: pod uid, field path, reason, message.
type EventKey = (String, Option<String>, &'static str, String);

/// Sends events to the API server in the background.
pub struct Recorder {
    tx: mpsc::Sender<PodEvent>,
}

impl Recorder {
    pub fn spawn(client: kube::Client, node: String, shutdown: CancellationToken) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<PodEvent>(256);
        tokio::spawn(async move {
            // Repeats of the same event (same pod, container, reason and message) bump `count`
            // and `lastTimestamp` of the Event already posted, as upstream's EventCorrelator
            // does, instead of piling up new objects (a crash loop repeats BackOff for hours).
            let mut seen: HashMap<EventKey, (String, i32)> = HashMap::new();
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = rx.recv() => match ev { Some(e) => e, None => break },
                };
                let api: Api<Event> = Api::namespaced(client.clone(), &ev.namespace);
                let key = (ev.pod_uid.clone(), ev.field_path.clone(), ev.reason, ev.message.clone());
                let now = Timestamp::now();
                if let Some((name, count)) = seen.get_mut(&key) {
                    *count += 1;
                    let patch = serde_json::json!({ "count": *count, "lastTimestamp": Time(now) });
                    match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                        Ok(_) => continue,
                        Err(e) => tracing::debug!(error = %e, "updating repeated event failed; posting a new one"),
                    }
                }
                let event = to_event(&ev, &node, now);
                let name = event.metadata.name.clone().unwrap_or_default();
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => {
                        if seen.len() >= 4096 {
                            seen.clear();
                        }
                        seen.insert(key, (name, 1));
                    }
                    Err(e) => tracing::debug!(error = %e, reason = ev.reason, pod = %ev.pod_name, "dropping event"),
                }
            }
        });
        Recorder { tx }
    }
}

impl EventSink for Recorder {
    fn emit(&self, ev: PodEvent) {
        if self.tx.try_send(ev).is_err() {
            tracing::debug!("event queue full; dropping event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_the_kubelet_and_node_as_its_source() {
        let ev = PodEvent {
            namespace: "ns".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            field_path: Some("spec.containers{app}".into()),
            type_: "Normal",
            reason: "Started",
            message: "Started container app".into(),
        };
        let e = to_event(&ev, "node1", Timestamp::from_second(1_700_000_000).unwrap());
        assert_eq!(e.metadata.name.as_deref(), Some("p.17979cfe362a0000"));
        let src = e.source.unwrap();
        assert_eq!((src.component.as_deref(), src.host.as_deref()), (Some("kubelet"), Some("node1")));
        assert_eq!(e.reporting_component.as_deref(), Some("kubelet"));
        assert_eq!(e.involved_object.field_path.as_deref(), Some("spec.containers{app}"));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Pod"));
    }

    #[tokio::test]
    async fn a_repeated_event_bumps_the_count_of_the_one_already_posted() {
        let api = crate::agent::kubelet::fake_api::FakeApi::start().await;
        let shutdown = CancellationToken::new();
        let rec = Recorder::spawn(api.client(), "n1".into(), shutdown.clone());
        let ev = PodEvent {
            namespace: "default".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            field_path: None,
            type_: "Warning",
            reason: "BackOff",
            message: "Back-off restarting failed container app in pod p_default(u)".into(),
        };
        rec.emit(ev.clone());
        rec.emit(ev);
        for _ in 0..100 {
            if api.list("events").first().is_some_and(|e| e["count"] == 2) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let events = api.list("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["count"], 2);
        assert_eq!(events[0]["source"]["component"], "kubelet");
        shutdown.cancel();
    }
}
