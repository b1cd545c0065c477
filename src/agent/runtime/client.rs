//! A containerd connection bound to one containerd namespace: typed service clients plus the
//! metadata every call needs (`containerd-namespace`, and `containerd-lease` for calls that create
//! things, guide §1 and §7), and leases that are deleted when dropped.

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    events_client::EventsClient, images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient, version_client::VersionClient,
};
use std::path::Path;
use tonic::transport::Channel;

/// Errors talking to containerd.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket does not answer.
    #[error("cannot connect to containerd at {path}: {reason}; is containerd running (or pass no --container-runtime-endpoint to let skiff manage it)?")]
    Connect { path: String, reason: String },
    /// A call failed.
    #[error("containerd {op}: {status}")]
    Call { op: &'static str, status: String },
}

/// Status code of a failed call, so callers can treat AlreadyExists/NotFound as the outcomes
/// they are.
pub fn code(s: &tonic::Status) -> tonic::Code {
    s.code()
}

/// A tonic status → [`ClientError`] mapper for `map_err`.
pub fn call(op: &'static str) -> impl FnOnce(tonic::Status) -> ClientError {
    move |s| ClientError::Call { op, status: format!("{:?}: {}", s.code(), s.message()) }
}

/// One connection, one namespace.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    namespace: String,
}

/// The `containerd.io/gc.expire` label time for a lease: if the agent dies mid-import, the lease
/// and what it holds are collected a day later (Go's default).
fn expire_label() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(24)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Client {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Client, ClientError> {
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| ClientError::Connect { path: socket.display().to_string(), reason: format!("{e:?}") })?;
        let c = Client { channel, namespace: namespace.to_string() };
        // A channel connects lazily; ask for the version so a dead socket fails here.
        c.version().version(c.req(())).await.map_err(|e| ClientError::Connect {
            path: socket.display().to_string(),
            reason: e.message().to_string(),
        })?;
        Ok(c)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A request carrying the namespace header.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        r
    }

    /// A request carrying the namespace and lease headers.
    pub fn leased<T>(&self, msg: T, lease: &Lease) -> tonic::Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = lease.id.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    pub fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }

    /// Creates a lease that protects everything made under it from GC until [`Lease::release`].
    pub async fn lease(&self) -> Result<Lease, ClientError> {
        use containerd_client::services::v1::CreateRequest;
        let id = format!("skiff-{}", uuid::Uuid::new_v4().simple());
        let labels = [("containerd.io/gc.expire".to_string(), expire_label())].into_iter().collect();
        self.leases().create(self.req(CreateRequest { id: id.clone(), labels })).await.map_err(call("create lease"))?;
        Ok(Lease { id, client: self.clone() })
    }
}

/// A containerd lease. Release it once what it protects is referenced by an image, a container
/// or a GC label.
pub struct Lease {
    pub id: String,
    client: Client,
}

impl Lease {
    pub async fn release(self) {
        use containerd_client::services::v1::DeleteRequest;
        let r = self.client.req(DeleteRequest { id: self.id.clone(), sync: false });
        if let Err(e) = self.client.leases().delete(r).await {
            // Not fatal: the gc.expire label removes it within a day.
            tracing::warn!(lease = %self.id, error = %e.message(), "deleting containerd lease failed");
        }
    }
}
