//! The external etcd backend (`--datastore-endpoint`): the [`Store`] trait mapped onto etcd v3
//! through `etcd-client`, for users who outgrow the embedded store (issue #3).
//!
//! The mapping keeps etcd's own numbers, as kube-apiserver does: revisions, create/mod
//! revisions and versions are etcd's, so resourceVersions match what `etcdctl` shows.
//!
//! - `range` is an etcd Range over `[prefix, prefix_end)` (or `(start_after, prefix_end)`)
//!   with etcd's limit, `more`, `count` and read revision; reads are linearizable (etcd's
//!   default, not `serializable`).
//! - `txn` is one etcd Txn: compares on version, create/mod revision or value, then puts (with
//!   `prev_kv`), deletes (with `prev_kv`) and gets.
//! - `watch` is an etcd watch over the prefix from `after_revision + 1` with `prev_kv` and
//!   `progress_notify` (as kube-apiserver's watcher asks): etcd's progress notifications become
//!   [`WatchMessage::Progress`], i.e. watch bookmarks. etcd sends them only for synced watchers,
//!   through the same channel as events, so one never overtakes an event; their interval is
//!   etcd's `--experimental-watch-progress-notify-interval` (10 minutes by default; set it to a
//!   few seconds for timely bookmarks). `WatchProgressRequest` is not used: etcd 3.4 answers it
//!   out of band, before events still queued for the watcher.
//! - Compacted revisions (a range at, or a watch from, a revision etcd has discarded) answer
//!   [`StoreError::Compacted`], which the API turns into `410 Gone`.
//! - TTL keys (Events) are attached to leases. As kube-apiserver's lease manager does, a lease
//!   is reused for every put with the same TTL for a short while (5% of the TTL, at most 60 s)
//!   and granted that much longer, so keys never expire early and a burst of Events costs one
//!   lease, not one per key.
//! - Compaction runs on an interval exactly as kube-apiserver's compactor: every interval each
//!   server bumps the `compact_rev_key` key with a compare on its version (so of several skiff
//!   servers sharing one etcd only one compacts per interval) and compacts to the revision it
//!   saw at the previous interval. etcd's own `--auto-compaction-*` may be used instead; set
//!   the interval to zero then.

use super::*;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, TxnOp,
    TxnOpResponse, WatchOptions,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The key kube-apiserver's compactor uses as its logical clock (same name, so skiff and a
/// kube-apiserver moved onto the same etcd agree).
pub const COMPACT_REV_KEY: &[u8] = b"compact_rev_key";

/// How to reach the etcd cluster (k3s' `--datastore-*` flags).
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `https://host:2379` or `http://host:2379`, one or more.
    pub endpoints: Vec<String>,
    /// CA that signed the etcd servers' certificates (`--datastore-cafile`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for etcd's client-cert-auth (`--datastore-certfile`,
    /// `--datastore-keyfile`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// kube-apiserver's `--etcd-compaction-interval` (5 minutes); zero leaves compaction to
    /// etcd's `--auto-compaction-retention`.
    pub compaction_interval: Duration,
    /// How long one unary request may take before answering `Unavailable`.
    pub request_timeout: Duration,
    /// How long [`EtcdStore::connect`] keeps trying to reach etcd at start-up.
    pub connect_timeout: Duration,
}

impl EtcdConfig {
    /// Parses `--datastore-endpoint` (comma-separated) and checks it names etcd.
    pub fn new(endpoint_flag: &str) -> Result<EtcdConfig, String> {
        let endpoints: Vec<String> = endpoint_flag
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err("--datastore-endpoint is empty; give https://HOST:2379 (comma-separate several)".into());
        }
        for e in &endpoints {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                return Err(format!(
                    "--datastore-endpoint {e:?}: only etcd endpoints (https://HOST:2379 or http://HOST:2379) are supported; skiff has no kine for SQL databases"
                ));
            }
        }
        Ok(EtcdConfig {
            endpoints,
            ca_file: None,
            cert_file: None,
            key_file: None,
            compaction_interval: Duration::from_secs(300),
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(60),
        })
    }
}

/// A [`Store`] on an etcd v3 cluster.
pub struct EtcdStore {
    client: Client,
    request_timeout: Duration,
    /// TTL in seconds → (lease id, when that lease expires).
    leases: tokio::sync::Mutex<HashMap<u64, (i64, Instant)>>,
    /// The highest compaction revision seen (our own compactions, compacted watches); a hint
    /// for [`Store::compact_revision`], which etcd does not report directly.
    known_compact: AtomicI64,
    cancel: CancellationToken,
    endpoints: String,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What an etcd error means to the trait.
enum Kind {
    Compacted,
    Future,
    Other(StoreError),
}

fn classify(e: etcd_client::Error) -> Kind {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let m = s.message();
            if m.contains("required revision has been compacted") {
                Kind::Compacted
            } else if m.contains("required revision is a future revision") {
                Kind::Future
            } else {
                use tonic::Code;
                match s.code() {
                    Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled => {
                        Kind::Other(StoreError::Unavailable(format!("etcd: {m}")))
                    }
                    // "etcdserver: no leader", "request timed out", "too many requests".
                    _ if m.contains("no leader") || m.contains("timed out") || m.contains("too many requests") => {
                        Kind::Other(StoreError::Unavailable(format!("etcd: {m}")))
                    }
                    c => Kind::Other(StoreError::Internal(format!("etcd answered {c:?}: {m}"))),
                }
            }
        }
        etcd_client::Error::TransportError(e) => {
            Kind::Other(StoreError::Unavailable(format!("cannot reach etcd: {e}")))
        }
        etcd_client::Error::IoError(e) => Kind::Other(StoreError::Unavailable(format!("cannot reach etcd: {e}"))),
        other => Kind::Other(StoreError::Internal(format!("etcd client: {other}"))),
    }
}

fn plain(e: etcd_client::Error) -> StoreError {
    match classify(e) {
        Kind::Compacted => StoreError::Compacted { requested: 0, compact_revision: 0 },
        Kind::Future => StoreError::FutureRevision { requested: 0, current: 0 },
        Kind::Other(e) => e,
    }
}

fn kv(k: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: k.key().to_vec(),
        value: bytes::Bytes::copy_from_slice(k.value()),
        create_revision: k.create_revision(),
        mod_revision: k.mod_revision(),
        version: k.version(),
    }
}

/// etcd's `[key, range_end)` for a prefix and a continuation key. An empty prefix is every
/// key (etcd has no empty key: start at `\0`, end `\0` = no upper bound).
pub fn range_keys(prefix: &[u8], start_after: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let end = prefix_end(prefix).unwrap_or_else(|| vec![0]);
    let start = if !start_after.is_empty() && start_after >= prefix {
        let mut k = start_after.to_vec();
        k.push(0);
        k
    } else if prefix.is_empty() {
        vec![0]
    } else {
        prefix.to_vec()
    };
    (start, end)
}

/// kube-apiserver's lease reuse window for a TTL: 5% of it, at most 60 seconds.
pub fn lease_reuse_seconds(ttl: u64) -> u64 {
    (ttl / 20).min(60)
}

fn timeout_err(what: &str, t: Duration) -> StoreError {
    StoreError::Unavailable(format!("etcd did not answer {what} within {t:?}"))
}

impl EtcdStore {
    /// Connects to etcd (retrying until `connect_timeout`), checks it answers, and starts the
    /// compactor.
    pub async fn connect(cfg: EtcdConfig) -> Result<EtcdStore, StoreError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(30), Duration::from_secs(10))
            .with_keep_alive_while_idle(true)
            // Like kube-apiserver: a member cut off from its cluster's leader fails requests
            // (and cancels watches) rather than serving stale data.
            .with_require_leader(true);
        let https = cfg.endpoints.iter().any(|e| e.starts_with("https://"));
        let read = |p: &PathBuf, flag: &str| {
            std::fs::read(p).map_err(|e| StoreError::Internal(format!("reading {flag} {}: {e}", p.display())))
        };
        if https {
            let mut tls = etcd_client::TlsOptions::new();
            match &cfg.ca_file {
                Some(ca) => {
                    tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca, "--datastore-cafile")?))
                }
                None => return Err(StoreError::Internal(
                    "an https:// --datastore-endpoint needs --datastore-cafile (the CA of etcd's serving certificates)"
                        .into(),
                )),
            }
            match (&cfg.cert_file, &cfg.key_file) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(etcd_client::Identity::from_pem(
                        read(c, "--datastore-certfile")?,
                        read(k, "--datastore-keyfile")?,
                    ))
                }
                (None, None) => {}
                _ => return Err(StoreError::Internal(
                    "--datastore-certfile and --datastore-keyfile go together (etcd's client certificate and its key)"
                        .into(),
                )),
            }
            opts = opts.with_tls(tls);
        } else if cfg.ca_file.is_some() || cfg.cert_file.is_some() || cfg.key_file.is_some() {
            return Err(StoreError::Internal(
                "--datastore-cafile/--datastore-certfile/--datastore-keyfile need https:// endpoints".into(),
            ));
        }
        if https && cfg.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(StoreError::Internal("--datastore-endpoint mixes http:// and https:// endpoints".into()));
        }
        let endpoints = cfg.endpoints.join(",");
        let deadline = Instant::now() + cfg.connect_timeout;
        let mut delay = Duration::from_millis(100);
        let client = loop {
            let attempt = async {
                let c = Client::connect(cfg.endpoints.clone(), Some(opts.clone())).await.map_err(plain)?;
                // A linearizable read: proves the endpoint is etcd, TLS works, and it has a leader.
                c.kv_client().get(COMPACT_REV_KEY, Some(GetOptions::new().with_count_only())).await.map_err(plain)?;
                Ok::<_, StoreError>(c)
            };
            let err = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(Ok(c)) => break c,
                Ok(Err(e)) => e,
                Err(_) => timeout_err("the first request", Duration::from_secs(10)),
            };
            if Instant::now() + delay > deadline {
                return Err(StoreError::Unavailable(format!(
                    "cannot use etcd at {endpoints}: {err}; check --datastore-endpoint, the --datastore-* TLS files, and that etcd is healthy"
                )));
            }
            tracing::info!(endpoints = %endpoints, error = %err, "etcd not reachable yet; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        };
        tracing::info!(endpoints = %endpoints, "using etcd as the cluster store");
        let store = EtcdStore {
            client,
            request_timeout: cfg.request_timeout,
            leases: tokio::sync::Mutex::new(HashMap::new()),
            known_compact: AtomicI64::new(0),
            cancel: CancellationToken::new(),
            endpoints,
        };
        if !cfg.compaction_interval.is_zero() {
            tokio::spawn(compactor(
                store.client.clone(),
                cfg.compaction_interval,
                store.request_timeout,
                store.cancel.clone(),
            ));
        }
        Ok(store)
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    async fn timed<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<Result<T, etcd_client::Error>> {
        tokio::time::timeout(self.request_timeout, f).await.map_err(|_| timeout_err(what, self.request_timeout))
    }

    /// Whether a read at `revision` is still possible (not compacted away). Future revisions
    /// count as readable: they are not compacted.
    async fn readable(&self, revision: i64) -> Result<bool> {
        let opts = GetOptions::new().with_count_only().with_revision(revision);
        match self.timed("a range", self.client.kv_client().get(COMPACT_REV_KEY, Some(opts))).await? {
            Ok(_) => Ok(true),
            Err(e) => match classify(e) {
                Kind::Compacted => Ok(false),
                Kind::Future => Ok(true),
                Kind::Other(e) => Err(e),
            },
        }
    }

    fn note_compacted(&self, revision: i64) {
        self.known_compact.fetch_max(revision, Ordering::Relaxed);
    }

    async fn compacted_error(&self, requested: i64) -> StoreError {
        let compact_revision =
            self.compact_revision().await.unwrap_or_else(|_| self.known_compact.load(Ordering::Relaxed));
        StoreError::Compacted { requested, compact_revision }
    }

    /// A lease for a put with this TTL: the current one for the TTL while it outlives the new
    /// key's TTL by less than the reuse window, else a new one (kube-apiserver's leaseManager).
    async fn lease_for(&self, ttl: u64) -> Result<i64> {
        let ttl = ttl.max(1);
        let reuse = lease_reuse_seconds(ttl);
        let mut leases = self.leases.lock().await;
        let now = Instant::now();
        if let Some((id, expires)) = leases.get(&ttl) {
            let valid = now + Duration::from_secs(ttl) < *expires;
            let sufficient = now + Duration::from_secs(ttl + reuse) >= *expires;
            if valid && sufficient {
                return Ok(*id);
            }
        }
        let granted = self
            .timed("a lease grant", self.client.lease_client().grant((ttl + reuse) as i64, None))
            .await?
            .map_err(plain)?;
        leases.insert(ttl, (granted.id(), now + Duration::from_secs(ttl + reuse)));
        Ok(granted.id())
    }

    async fn op(&self, op: &Op) -> Result<TxnOp> {
        Ok(match op {
            Op::Put { key, value, ttl_seconds } => {
                let mut o = PutOptions::new().with_prev_key();
                if let Some(ttl) = ttl_seconds {
                    o = o.with_lease(self.lease_for(*ttl).await?);
                }
                TxnOp::put(key.clone(), value.clone(), Some(o))
            }
            Op::Delete { key } => TxnOp::delete(key.clone(), Some(DeleteOptions::new().with_prev_key())),
            Op::Get { key } => TxnOp::get(key.clone(), None),
        })
    }
}

fn compare(c: &Compare) -> EtcdCompare {
    let op = match c.result {
        CompareResult::Equal => CompareOp::Equal,
        CompareResult::NotEqual => CompareOp::NotEqual,
        CompareResult::Greater => CompareOp::Greater,
        CompareResult::Less => CompareOp::Less,
    };
    let key = c.key.clone();
    match &c.target {
        CompareTarget::Version(v) => EtcdCompare::version(key, op, *v),
        CompareTarget::CreateRevision(r) => EtcdCompare::create_revision(key, op, *r),
        CompareTarget::ModRevision(r) => EtcdCompare::mod_revision(key, op, *r),
        CompareTarget::Value(v) => EtcdCompare::value(key, op, v.clone()),
    }
}

fn op_response(r: TxnOpResponse) -> Result<OpResponse> {
    Ok(match r {
        TxnOpResponse::Put(p) => OpResponse::Put { prev: p.prev_key().map(kv) },
        TxnOpResponse::Delete(d) => OpResponse::Delete { prev: d.prev_kvs().first().map(kv) },
        TxnOpResponse::Get(g) => OpResponse::Get { kv: g.kvs().first().map(kv) },
        TxnOpResponse::Txn(_) => return Err(StoreError::Internal("etcd answered a nested txn we never sent".into())),
    })
}

/// kube-apiserver's compactor loop (`storage/etcd3/compact.go`).
async fn compactor(client: Client, interval: Duration, request_timeout: Duration, cancel: CancellationToken) {
    // `version` is the compactor's logical clock (the version of compact_rev_key); `rev` the
    // revision seen at the previous run, compacted to at this one.
    let (mut version, mut rev) = (0i64, 0i64);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match tokio::time::timeout(request_timeout * 2, compact_once(&client, version, rev)).await {
            Ok(Ok((v, r))) => (version, rev) = (v, r),
            Ok(Err(e)) => tracing::warn!(error = %e, "etcd compaction failed; will retry"),
            Err(_) => tracing::warn!("etcd compaction timed out; will retry"),
        }
    }
}

/// One compactor round: claims the round with a compare on `compact_rev_key`'s version (another
/// server that already claimed it wins; adopt its clock), then compacts to `rev`.
async fn compact_once(client: &Client, version: i64, rev: i64) -> Result<(i64, i64), StoreError> {
    let txn = etcd_client::Txn::new()
        .when([EtcdCompare::version(COMPACT_REV_KEY, CompareOp::Equal, version)])
        .and_then([TxnOp::put(COMPACT_REV_KEY, rev.to_string(), None)])
        .or_else([TxnOp::get(COMPACT_REV_KEY, None)]);
    let r = client.kv_client().txn(txn).await.map_err(plain)?;
    let current = r.header().map(|h| h.revision()).unwrap_or(0);
    if !r.succeeded() {
        let theirs = r.op_responses().into_iter().find_map(|o| match o {
            TxnOpResponse::Get(g) => g.kvs().first().map(|k| k.version()),
            _ => None,
        });
        return Ok((theirs.unwrap_or(0), current));
    }
    if rev > 0 {
        match client.kv_client().compact(rev, None).await {
            Ok(_) => tracing::debug!(revision = rev, "compacted etcd history"),
            Err(e) => match classify(e) {
                Kind::Compacted => {}
                Kind::Future => {}
                Kind::Other(e) => return Err(e),
            },
        }
    }
    Ok((version + 1, current))
}

/// Splits one watch response's events into one message per revision, in order.
fn per_revision(events: &[etcd_client::Event]) -> Vec<Vec<Event>> {
    let mut out: Vec<Vec<Event>> = Vec::new();
    let mut last = i64::MIN;
    for e in events {
        let Some(k) = e.kv() else { continue };
        let kind = match e.event_type() {
            etcd_client::EventType::Put => EventKind::Put,
            etcd_client::EventType::Delete => EventKind::Delete,
        };
        let ev = Event { kind, kv: kv(k), prev_kv: e.prev_kv().map(kv) };
        if ev.kv.mod_revision != last || out.is_empty() {
            last = ev.kv.mod_revision;
            out.push(Vec::new());
        }
        if let Some(batch) = out.last_mut() {
            batch.push(ev);
        }
    }
    out
}

#[async_trait]
impl Store for EtcdStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let (start, end) = range_keys(&req.prefix, &req.start_after);
        let mut opts = GetOptions::new().with_range(end);
        if req.limit > 0 {
            opts = opts.with_limit(req.limit as i64);
        }
        if req.revision > 0 {
            opts = opts.with_revision(req.revision);
        }
        if req.count_only {
            opts = opts.with_count_only();
        }
        if req.serializable {
            opts = opts.with_serializable();
        }
        match self.timed("a range", self.client.kv_client().get(start, Some(opts))).await? {
            Ok(r) => Ok(RangeResponse {
                kvs: r.kvs().iter().map(kv).collect(),
                more: r.more(),
                count: r.count().max(0) as usize,
                // etcd's header has the current revision; a read at a past revision was read there.
                revision: if req.revision > 0 { req.revision } else { r.header().map(|h| h.revision()).unwrap_or(0) },
            }),
            Err(e) => Err(match classify(e) {
                Kind::Compacted => self.compacted_error(req.revision).await,
                Kind::Future => {
                    StoreError::FutureRevision { requested: req.revision, current: self.current_revision().await? }
                }
                Kind::Other(e) => e,
            }),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let mut success = Vec::with_capacity(txn.success.len());
        for o in &txn.success {
            success.push(self.op(o).await?);
        }
        let mut failure = Vec::with_capacity(txn.failure.len());
        for o in &txn.failure {
            failure.push(self.op(o).await?);
        }
        let t = etcd_client::Txn::new()
            .when(txn.compare.iter().map(compare).collect::<Vec<_>>())
            .and_then(success)
            .or_else(failure);
        let r = self.timed("a transaction", self.client.kv_client().txn(t)).await?.map_err(plain)?;
        let responses = r.op_responses().into_iter().map(op_response).collect::<Result<Vec<_>>>()?;
        Ok(TxnResponse { succeeded: r.succeeded(), revision: r.header().map(|h| h.revision()).unwrap_or(0), responses })
    }

    async fn watch(&self, prefix: Vec<u8>, after_revision: i64) -> Result<WatchStream> {
        // etcd reports a compacted start revision only asynchronously (a cancel after the
        // created answer); ask first so the caller gets the error up front, as from the
        // embedded store. A compaction racing with this still arrives, in the stream.
        if after_revision > 0 && !self.readable(after_revision + 1).await? {
            return Err(self.compacted_error(after_revision + 1).await);
        }
        let (start, end) = range_keys(&prefix, &[]);
        let mut opts = WatchOptions::new().with_range(end).with_prev_key().with_progress_notify();
        if after_revision > 0 {
            opts = opts.with_start_revision(after_revision + 1);
        }
        let mut ws =
            self.timed("a watch", self.client.watch_client().watch(start, Some(opts))).await?.map_err(plain)?;
        // Wait for etcd's "created" answer: only then is the watcher registered, so a write
        // made after `watch` returns is seen even by a watch "from now".
        let created = self.timed("a watch", ws.message()).await?.map_err(plain)?;
        let created = match created {
            Some(c) if c.created() && !c.canceled() => c,
            Some(c) if c.compact_revision() > 0 => {
                self.note_compacted(c.compact_revision());
                return Err(StoreError::Compacted {
                    requested: after_revision + 1,
                    compact_revision: c.compact_revision(),
                });
            }
            Some(c) => {
                return Err(StoreError::Unavailable(format!("etcd refused the watch: {}", c.cancel_reason())));
            }
            None => return Err(StoreError::Unavailable("etcd closed the watch stream".into())),
        };
        let mut seen =
            if after_revision > 0 { after_revision } else { created.header().map(|h| h.revision()).unwrap_or(0) };
        let (out, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    m = ws.message() => m,
                    _ = out.closed() => return,
                };
                let resp = match m {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = out.send(Err(StoreError::Unavailable("etcd closed the watch stream".into()))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = out.send(Err(plain(e))).await;
                        return;
                    }
                };
                if resp.canceled() {
                    let e = if resp.compact_revision() > 0 {
                        StoreError::Compacted { requested: seen + 1, compact_revision: resp.compact_revision() }
                    } else {
                        StoreError::Unavailable(format!("etcd canceled the watch: {}", resp.cancel_reason()))
                    };
                    let _ = out.send(Err(e)).await;
                    return;
                }
                if resp.events().is_empty() {
                    // A progress notification: nothing under the prefix up to this revision.
                    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                    // (An idle watch hears the same revision again: still progress.)
                    if rev >= seen {
                        seen = rev;
                        if out.send(Ok(WatchMessage::Progress(rev))).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                for batch in per_revision(resp.events()) {
                    let rev = batch.first().map(|e| e.kv.mod_revision).unwrap_or(seen);
                    seen = seen.max(rev);
                    if out.send(Ok(WatchMessage::Events(batch))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<i64> {
        let opts = GetOptions::new().with_count_only();
        let r =
            self.timed("a range", self.client.kv_client().get(COMPACT_REV_KEY, Some(opts))).await?.map_err(plain)?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// etcd does not report its compaction point; find the oldest readable revision by
    /// bisection (cheap count-only ranges), starting from the last one known.
    async fn compact_revision(&self) -> Result<i64> {
        let known = self.known_compact.load(Ordering::Relaxed);
        if known > 1 && self.readable(known).await? && !self.readable(known - 1).await? {
            return Ok(known);
        }
        if self.readable(1).await? {
            return Ok(known.min(1));
        }
        let (mut lo, mut hi) = (1i64, self.current_revision().await?);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.readable(mid).await? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        self.note_compacted(hi);
        Ok(hi)
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        match self.timed("a compaction", self.client.kv_client().compact(revision, None)).await? {
            Ok(_) => {
                self.note_compacted(revision);
                Ok(())
            }
            // Already compacted at or past it: nothing to do.
            Err(e) => match classify(e) {
                Kind::Compacted => Ok(()),
                Kind::Future => {
                    Err(StoreError::FutureRevision { requested: revision, current: self.current_revision().await? })
                }
                Kind::Other(e) => Err(e),
            },
        }
    }
}

/// A private etcd for tests: Debian's `etcd-server` on free loopback ports in a directory of
/// the caller's, plain HTTP or with TLS and client-certificate authentication, killed by PID
/// when dropped. Not used by the server itself.
#[doc(hidden)]
pub mod testing {
    use super::EtcdConfig;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    pub struct LocalEtcd {
        child: std::process::Child,
        /// The client URL.
        pub endpoint: String,
        /// (CA of etcd's serving certificate, client certificate, client key) when TLS is on.
        pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    }

    impl Drop for LocalEtcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> Result<u16, String> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
    }

    impl LocalEtcd {
        /// Starts etcd in `dir` (created) and waits until it answers. Progress notifications
        /// every second, so watch bookmarks come quickly.
        pub async fn start(dir: &Path, tls: bool) -> Result<LocalEtcd, String> {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let (cp, pp) = (free_port()?, free_port()?);
            let scheme = if tls { "https" } else { "http" };
            let client_url = format!("{scheme}://127.0.0.1:{cp}");
            let peer_url = format!("http://127.0.0.1:{pp}");
            let mut cmd = std::process::Command::new("etcd");
            cmd.args(["--name", "test", "--data-dir"])
                .arg(dir.join("data"))
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("test={peer_url}"), "--log-level", "error"])
                .args(["--experimental-watch-progress-notify-interval", "1s"]);
            let files = if tls {
                let pki = crate::pki::ClusterPki::load_or_create(&dir.join("pki")).map_err(|e| e.to_string())?;
                let (sc, sk) = pki
                    .leaf(
                        "etcd-server",
                        &crate::pki::Leaf::Server {
                            cn: "etcd".into(),
                            sans: vec!["127.0.0.1".into(), "localhost".into()],
                        },
                    )
                    .map_err(|e| e.to_string())?;
                let (cc, ck) = pki
                    .leaf("etcd-client", &crate::pki::Leaf::Client { cn: "skiff".into(), groups: vec![] })
                    .map_err(|e| e.to_string())?;
                let p = dir.join("pki");
                let w = |n: &str, c: &str| -> Result<PathBuf, String> {
                    let f = p.join(n);
                    std::fs::write(&f, c).map_err(|e| e.to_string())?;
                    Ok(f)
                };
                let (scf, skf, ccf, ckf) = (w("s.crt", &sc)?, w("s.key", &sk)?, w("c.crt", &cc)?, w("c.key", &ck)?);
                cmd.arg("--cert-file").arg(&scf).arg("--key-file").arg(&skf);
                cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(p.join("client-ca.crt"));
                Some((p.join("server-ca.crt"), ccf, ckf))
            } else {
                None
            };
            let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
            let child = cmd
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("starting etcd (install Debian's etcd-server): {e}"))?;
            let etcd = LocalEtcd { child, endpoint: client_url, tls: files };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut cfg = etcd.config();
                cfg.connect_timeout = Duration::from_millis(1);
                if super::EtcdStore::connect(cfg).await.is_ok() {
                    return Ok(etcd);
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
                    return Err(format!("etcd did not answer within 30s; its log:\n{log}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// A configuration reaching this etcd.
        pub fn config(&self) -> EtcdConfig {
            let mut c = EtcdConfig::new(&self.endpoint).expect("a valid endpoint");
            if let Some((ca, cert, key)) = &self.tls {
                c.ca_file = Some(ca.clone());
                c.cert_file = Some(cert.clone());
                c.key_file = Some(key.clone());
            }
            c
        }

        /// The `skiff server` flags reaching this etcd.
        pub fn server_flags(&self) -> Vec<String> {
            let mut f = vec!["--datastore-endpoint".to_string(), self.endpoint.clone()];
            if let Some((ca, cert, key)) = &self.tls {
                for (flag, p) in
                    [("--datastore-cafile", ca), ("--datastore-certfile", cert), ("--datastore-keyfile", key)]
                {
                    f.push(flag.into());
                    f.push(p.display().to_string());
                }
            }
            f
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::LocalEtcd;
    use super::*;

    #[test]
    fn range_keys_cover_the_prefix_and_continue_after_a_key() {
        assert_eq!(range_keys(b"/p/", b""), (b"/p/".to_vec(), b"/p0".to_vec()));
        assert_eq!(range_keys(b"/p/", b"/p/b"), (b"/p/b\0".to_vec(), b"/p0".to_vec()));
        assert_eq!(range_keys(b"", b""), (vec![0], vec![0]));
        assert_eq!(range_keys(b"\xff", b""), (b"\xff".to_vec(), vec![0]));
    }

    #[test]
    fn endpoints_must_be_etcd_urls() {
        let c = EtcdConfig::new("https://a:2379, https://b:2379/").unwrap();
        assert_eq!(c.endpoints, vec!["https://a:2379", "https://b:2379"]);
        assert!(EtcdConfig::new("http://127.0.0.1:2379").is_ok());
        assert!(EtcdConfig::new("mysql://u:p@tcp(db:3306)/k3s").unwrap_err().contains("only etcd"));
        assert!(EtcdConfig::new(" , ").is_err());
    }

    #[test]
    fn lease_reuse_window_is_five_percent_capped_at_a_minute() {
        assert_eq!(lease_reuse_seconds(3600), 60);
        assert_eq!(lease_reuse_seconds(600), 30);
        assert_eq!(lease_reuse_seconds(10), 0);
    }

    fn have_etcd() -> bool {
        let found = std::process::Command::new("etcd").arg("--version").output().is_ok();
        if !found {
            assert!(std::env::var("CI").map(|v| v != "true").unwrap_or(true), "etcd is required in CI");
            eprintln!("skipping: etcd not installed (Debian etcd-server)");
        }
        found
    }

    /// Deletes every key, so each conformance case sees an empty store (revisions go on).
    async fn wiped(cfg: EtcdConfig) -> EtcdStore {
        let s = EtcdStore::connect(cfg).await.unwrap();
        s.client.kv_client().delete(vec![0], Some(DeleteOptions::new().with_range(vec![0]))).await.unwrap();
        s
    }

    #[tokio::test]
    async fn conforms_to_the_store_contract_on_a_real_etcd_over_mutual_tls() {
        if !have_etcd() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let etcd = LocalEtcd::start(dir.path(), true).await.unwrap();
        assert!(etcd.endpoint.starts_with("https://"));
        let cfg = etcd.config();
        crate::store::conformance::run_all(|| wiped(cfg.clone())).await;

        // Without the client certificate etcd refuses us, and connect says what to check.
        let mut bad = etcd.config();
        bad.cert_file = None;
        bad.key_file = None;
        bad.connect_timeout = Duration::from_millis(1);
        let e = EtcdStore::connect(bad).await.err().expect("refused without a client certificate");
        assert!(e.to_string().contains("--datastore-endpoint"), "{e}");
    }

    #[tokio::test]
    async fn ttl_keys_share_a_lease_per_ttl_and_expire_watches_and_bookmarks_work() {
        use futures::StreamExt;
        if !have_etcd() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let etcd = LocalEtcd::start(dir.path(), false).await.unwrap();
        let s = EtcdStore::connect(etcd.config()).await.unwrap();
        let put = |k: &str, ttl: Option<u64>| Txn {
            success: vec![Op::Put { key: k.into(), value: bytes::Bytes::from_static(b"v"), ttl_seconds: ttl }],
            ..Default::default()
        };
        let mut w = s.watch(b"/e/".to_vec(), 0).await.unwrap();
        s.txn(put("/e/a", Some(2))).await.unwrap();
        s.txn(put("/e/b", Some(2))).await.unwrap();
        s.txn(put("/e/s1", Some(100))).await.unwrap();
        s.txn(put("/e/s2", Some(100))).await.unwrap();
        s.txn(put("/e/long", Some(3600))).await.unwrap();
        let lease = |k: &'static str| {
            let c = s.client.clone();
            async move { c.kv_client().get(k, None).await.unwrap().kvs()[0].lease() }
        };
        let (s1, s2, long) = (lease("/e/s1").await, lease("/e/s2").await, lease("/e/long").await);
        assert!(s1 != 0 && s1 == s2, "puts with one TTL share a lease: {s1} {s2}");
        assert_ne!(s1, long, "another TTL gets its own lease");
        // A TTL too short for a reuse window (5% of 2 s) gets a lease per put, as in kube-apiserver.
        assert!(lease("/e/a").await != 0);
        // The 2 s keys go (etcd deletes them with the lease); the watch sees the deletes with
        // their previous values.
        let mut deleted: Vec<Vec<u8>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while deleted.len() < 2 {
            let m = tokio::time::timeout_at(deadline.into(), w.next()).await.expect("expiry within 20s");
            if let Some(Ok(WatchMessage::Events(evs))) = m {
                for e in evs {
                    if e.kind == EventKind::Delete && !e.kv.key.starts_with(b"/e/s") {
                        assert_eq!(e.prev_kv.as_ref().map(|p| &p.value[..]), Some(&b"v"[..]));
                        deleted.push(e.kv.key);
                    }
                }
            }
        }
        deleted.sort();
        assert_eq!(deleted, vec![b"/e/a".to_vec(), b"/e/b".to_vec()]);
        assert!(s.get(b"/e/long").await.unwrap().0.is_some());
        // An idle watch gets progress notifications (bookmarks) at the current revision.
        let rev = s.current_revision().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline.into(), w.next()).await.expect("a progress notification") {
                Some(Ok(WatchMessage::Progress(r))) if r >= rev => break,
                Some(Ok(_)) => {}
                other => panic!("watch ended: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn compactor_compacts_to_the_revision_seen_one_interval_earlier() {
        if !have_etcd() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let etcd = LocalEtcd::start(dir.path(), false).await.unwrap();
        let s = EtcdStore::connect(etcd.config()).await.unwrap();
        let c = s.client.clone();
        for i in 0..5 {
            s.txn(Txn {
                success: vec![Op::Put { key: b"/c".to_vec(), value: vec![i].into(), ttl_seconds: None }],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        // Round 1 claims the clock and remembers the revision; round 2 compacts to it.
        let (v1, r1) = compact_once(&c, 0, 0).await.unwrap();
        assert_eq!(v1, 1);
        assert_eq!(s.compact_revision().await.unwrap(), 0);
        // A second server with a stale clock loses the round and adopts the winner's.
        assert_eq!(compact_once(&c, 0, 0).await.unwrap().0, 1);
        let (v2, _) = compact_once(&c, v1, r1).await.unwrap();
        assert_eq!(v2, 2);
        assert_eq!(s.compact_revision().await.unwrap(), r1);
        let e = s.watch(b"/".to_vec(), r1 - 2).await.err();
        assert!(matches!(e, Some(StoreError::Compacted { compact_revision, .. }) if compact_revision == r1), "{e:?}");
        // A compacted watch maps to 410 Gone in the API.
        let api: crate::api::errors::ApiError = StoreError::Compacted { requested: 1, compact_revision: r1 }.into();
        assert_eq!(api.status()["code"], 410);
    }
}
