//! Images without a transfer service (containerd 1.6 has none): tarball import and registry
//! pulls write blobs through the content service, record the image, and unpack the layers into
//! the snapshotter through the diff service, under a lease, with the GC labels containerd's Go
//! client sets (guide §1–§3).

use super::client::{call, Client, ClientError, Lease};
use super::spec::ImageConfig;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::Descriptor;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Blobs are written in pieces well under gRPC's 16 MiB message limit (guide §1.3).
const CHUNK: usize = 256 * 1024;

/// Errors of image import, pull and unpack.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The tarball could not be read.
    #[error("image tarball {path}: {reason}; provide an uncompressed OCI-layout or `docker save` tar")]
    Tar { path: String, reason: String },
    /// A manifest, index or config is malformed or unsupported.
    #[error("image {image}: {reason}")]
    Format { image: String, reason: String },
    /// A layer did not unpack to the diff ID its config promises.
    #[error("layer {layer} unpacked to {got}, config says {want}: the image is corrupt, re-import or re-pull it")]
    DiffIdMismatch { layer: String, want: String, got: String },
    /// A registry pull failed.
    #[error("pull {image}: {reason}")]
    Pull { image: String, reason: String },
    #[error("image {0} not found in containerd")]
    NotFound(String),
}

fn fmt_err(image: &str, reason: impl Into<String>) -> ImageError {
    ImageError::Format { image: image.to_string(), reason: reason.into() }
}

/// The snapshotter every rootfs lives in.
pub const SNAPSHOTTER: &str = "overlayfs";

/// The GOARCH name of this machine, for picking a manifest out of an index.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        other => other,
    }
}

/// Chain IDs from diff IDs (OCI image spec): `chain[0] = diff[0]`,
/// `chain[i] = sha256("<chain[i-1]> <diff[i]>")`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))),
        };
        out.push(next);
    }
    out
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A parsed descriptor from a manifest or index.
#[derive(Debug, Clone, PartialEq)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    pub annotations: HashMap<String, String>,
    pub platform: Option<(String, String)>,
}

impl Desc {
    pub fn from_json(v: &Value) -> Option<Desc> {
        Some(Desc {
            media_type: v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("").to_string(),
            digest: v.get("digest")?.as_str()?.to_string(),
            size: v.get("size")?.as_i64()?,
            annotations: v
                .get("annotations")
                .and_then(|a| a.as_object())
                .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .unwrap_or_default(),
            platform: v.get("platform").map(|p| {
                (
                    p.get("os").and_then(|s| s.as_str()).unwrap_or("").to_string(),
                    p.get("architecture").and_then(|s| s.as_str()).unwrap_or("").to_string(),
                )
            }),
        })
    }

    pub fn to_proto(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

fn is_index(mt: &str) -> bool {
    mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST
}

/// Picks this platform's manifest from an index's `manifests` (Go keeps one match).
pub fn pick_platform(manifests: &[Desc]) -> Option<&Desc> {
    manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|(os, arch)| os == "linux" && arch == go_arch()))
        .or_else(|| if manifests.len() == 1 { manifests.first() } else { None })
}

// ---------------------------------------------------------------------------------------------
// Content store helpers

/// Does the content store already hold this blob?
pub async fn has_blob(c: &Client, digest: &str) -> Result<bool, ClientError> {
    match c.content().info(c.req(api::InfoRequest { digest: digest.to_string() })).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(call("content info")(s)),
    }
}

/// Writes one blob from a blocking reader (a tarball entry); see [`write_blob_stream`].
pub async fn write_blob(c: &Client, lease: &Lease, desc: &Desc, data: impl Read + Send) -> Result<(), ImageError> {
    let digest = desc.digest.clone();
    let chunks = futures::stream::unfold(Some(data), move |state| {
        let digest = digest.clone();
        async move {
            let mut r = state?;
            let mut buf = vec![0u8; CHUNK];
            match read_full(&mut r, &mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), Some(r)))
                }
                Err(e) => Some((Err(format!("read {digest}: {e}")), None)),
            }
        }
    });
    write_blob_stream(c, lease, desc, Box::pin(chunks)).await
}

/// Writes one blob through the lock-step Content.Write stream: STAT, WRITE…, COMMIT (guide §1.3).
/// A blob that exists already is only added to the lease, so GC cannot take it before the image
/// refers to it. A partial ingest left by a crash is restarted from offset 0 (which truncates).
pub async fn write_blob_stream(
    c: &Client,
    lease: &Lease,
    desc: &Desc,
    mut data: std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, String>> + Send + '_>>,
) -> Result<(), ImageError> {
    use futures::StreamExt;
    if has_blob(c, &desc.digest).await? {
        let r = api::AddResourceRequest {
            id: lease.id.clone(),
            resource: Some(api::Resource { id: desc.digest.clone(), r#type: "content".into() }),
        };
        c.leases().add_resource(c.req(r)).await.map_err(call("lease add resource"))?;
        return Ok(());
    }
    let r#ref = format!("skiff-{}", desc.digest.replace(':', "-"));
    let (tx, rx) = tokio::sync::mpsc::channel::<api::WriteContentRequest>(2);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let send = |m: api::WriteContentRequest| {
        let tx = tx.clone();
        async move {
            tx.send(m).await.map_err(|_| ClientError::Call { op: "content write", status: "stream closed".into() })
        }
    };
    send(api::WriteContentRequest {
        action: api::WriteAction::Stat as i32,
        r#ref: r#ref.clone(),
        total: desc.size,
        expected: desc.digest.clone(),
        ..Default::default()
    })
    .await?;
    let mut resp = match c.content().write(c.leased(stream, lease)).await {
        Ok(r) => r.into_inner(),
        // Someone committed it between the check and now.
        Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
        Err(s) => return Err(call("content write")(s).into()),
    };
    let next = |r: Result<Option<api::WriteContentResponse>, tonic::Status>| match r {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(ClientError::Call { op: "content write", status: "stream ended early".into() }),
        Err(s) => Err(call("content write")(s)),
    };
    next(resp.message().await)?;
    let mut offset: i64 = 0;
    let abort = |r#ref: String| async move {
        let _ = c.content().abort(c.req(api::AbortRequest { r#ref })).await;
    };
    while let Some(chunk) = data.next().await {
        let chunk = match chunk {
            Ok(b) => b,
            Err(e) => {
                abort(r#ref.clone()).await;
                return Err(fmt_err(&desc.digest, e));
            }
        };
        for piece in chunk.chunks(CHUNK) {
            send(api::WriteContentRequest {
                action: api::WriteAction::Write as i32,
                r#ref: r#ref.clone(),
                offset,
                data: piece.to_vec(),
                ..Default::default()
            })
            .await?;
            offset = next(resp.message().await)?.offset;
        }
    }
    send(api::WriteContentRequest {
        action: api::WriteAction::Commit as i32,
        r#ref: r#ref.clone(),
        offset,
        total: desc.size,
        expected: desc.digest.clone(),
        ..Default::default()
    })
    .await?;
    match resp.message().await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => {
            abort(r#ref).await;
            Err(call("content commit")(s).into())
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads a whole blob from the content store (manifests and configs: small).
pub async fn read_blob(c: &Client, digest: &str) -> Result<Vec<u8>, ClientError> {
    let mut s = c
        .content()
        .read(c.req(api::ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 }))
        .await
        .map_err(call("content read"))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.map_err(call("content read"))? {
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

/// Sets labels on a blob (Content.Update with `labels.<key>` paths, as Go does).
pub async fn set_labels(c: &Client, digest: &str, labels: BTreeMap<String, String>) -> Result<(), ClientError> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let info = api::Info { digest: digest.to_string(), labels: labels.into_iter().collect(), ..Default::default() };
    c.content()
        .update(c.req(api::UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths }) }))
        .await
        .map_err(call("content update labels"))?;
    Ok(())
}

/// The GC labels a manifest or index needs so its children survive once the lease is gone.
pub fn gc_labels(media_type: &str, doc: &Value) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    let digest = |v: &Value| v.get("digest").and_then(|d| d.as_str()).map(String::from);
    if is_index(media_type) {
        for (i, m) in doc.get("manifests").and_then(|m| m.as_array()).into_iter().flatten().enumerate() {
            if let Some(d) = digest(m) {
                l.insert(format!("containerd.io/gc.ref.content.m.{i}"), d);
            }
        }
    } else {
        if let Some(d) = doc.get("config").and_then(digest) {
            l.insert("containerd.io/gc.ref.content.config".into(), d);
        }
        for (i, m) in doc.get("layers").and_then(|m| m.as_array()).into_iter().flatten().enumerate() {
            if let Some(d) = digest(m) {
                l.insert(format!("containerd.io/gc.ref.content.l.{i}"), d);
            }
        }
    }
    l
}

/// Creates or re-points the image record.
pub async fn put_image(c: &Client, name: &str, target: &Desc) -> Result<(), ClientError> {
    let image = api::Image { name: name.to_string(), target: Some(target.to_proto()), ..Default::default() };
    match c
        .images()
        .create(c.req(api::CreateImageRequest { image: Some(image.clone()), source_date_epoch: None }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            let mask = prost_types::FieldMask { paths: vec!["target".into()] };
            c.images()
                .update(c.req(api::UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(mask),
                    source_date_epoch: None,
                }))
                .await
                .map_err(call("update image"))?;
            Ok(())
        }
        Err(s) => Err(call("create image")(s)),
    }
}

/// Looks an image record up.
pub async fn get_image(c: &Client, name: &str) -> Result<Option<Desc>, ClientError> {
    match c.images().get(c.req(api::GetImageRequest { name: name.to_string() })).await {
        Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target).map(|t| Desc {
            media_type: t.media_type,
            digest: t.digest,
            size: t.size,
            annotations: HashMap::new(),
            platform: None,
        })),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(call("get image")(s)),
    }
}

/// An image resolved for running: its config and the snapshot its rootfs derives from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    /// Digest of the image record's target (manifest or index).
    pub id: String,
    pub config: ImageConfig,
    pub layers: Vec<Desc>,
    pub config_desc: Desc,
    pub diff_ids: Vec<String>,
}

impl Resolved {
    pub fn chain_id(&self) -> Option<String> {
        chain_ids(&self.diff_ids).pop()
    }
}

/// Follows an image record to this platform's manifest and config.
pub async fn resolve(c: &Client, name: &str) -> Result<Resolved, ImageError> {
    let target = get_image(c, name).await?.ok_or_else(|| ImageError::NotFound(name.to_string()))?;
    let mut desc = target.clone();
    let mut manifest: Value =
        serde_json::from_slice(&read_blob(c, &desc.digest).await?).map_err(|e| fmt_err(name, e.to_string()))?;
    let mut mt = if desc.media_type.is_empty() {
        manifest.get("mediaType").and_then(|m| m.as_str()).unwrap_or("").to_string()
    } else {
        desc.media_type.clone()
    };
    if is_index(&mt) || manifest.get("manifests").is_some() {
        let list: Vec<Desc> = manifest
            .get("manifests")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
            .filter_map(Desc::from_json)
            .collect();
        desc = pick_platform(&list)
            .cloned()
            .ok_or_else(|| fmt_err(name, format!("no manifest for linux/{} in the index", go_arch())))?;
        manifest =
            serde_json::from_slice(&read_blob(c, &desc.digest).await?).map_err(|e| fmt_err(name, e.to_string()))?;
        mt = desc.media_type.clone();
    }
    if manifest.get("schemaVersion").and_then(|v| v.as_i64()) == Some(1) {
        return Err(fmt_err(name, "Docker schema 1 images are not supported; rebuild or re-push the image"));
    }
    let _ = mt;
    let config_desc =
        manifest.get("config").and_then(Desc::from_json).ok_or_else(|| fmt_err(name, "manifest has no config"))?;
    let layers: Vec<Desc> =
        manifest.get("layers").and_then(|l| l.as_array()).into_iter().flatten().filter_map(Desc::from_json).collect();
    let config_bytes = read_blob(c, &config_desc.digest).await?;
    let config = ImageConfig::from_json(&config_bytes).map_err(|e| fmt_err(name, e.to_string()))?;
    let cfg: Value = serde_json::from_slice(&config_bytes).map_err(|e| fmt_err(name, e.to_string()))?;
    let diff_ids: Vec<String> = cfg
        .pointer("/rootfs/diff_ids")
        .and_then(|d| d.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(fmt_err(name, format!("{} layers but {} diff_ids in the config", layers.len(), diff_ids.len())));
    }
    Ok(Resolved { name: name.to_string(), id: target.digest, config, layers, config_desc, diff_ids })
}

async fn snapshot_exists(c: &Client, key: &str) -> Result<bool, ClientError> {
    let r = snap::StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_string() };
    match c.snapshots().stat(c.req(r)).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(call("snapshot stat")(s)),
    }
}

/// Unpacks the image's layers into the snapshotter (skipping those already there) and labels
/// the blobs so the snapshots stay alive once the lease is gone (guide §3).
pub async fn unpack(c: &Client, img: &Resolved, lease: &Lease) -> Result<String, ImageError> {
    let chains = chain_ids(&img.diff_ids);
    let top = chains.last().cloned().ok_or_else(|| fmt_err(&img.name, "image has no layers"))?;
    if !snapshot_exists(c, &top).await? {
        for (i, layer) in img.layers.iter().enumerate() {
            let chain = &chains[i];
            if snapshot_exists(c, chain).await? {
                continue;
            }
            let parent = if i == 0 { String::new() } else { chains[i - 1].clone() };
            let key = format!("extract-{} {}", uuid::Uuid::new_v4().simple(), chain);
            let prep = snap::PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            };
            let mounts = match c.snapshots().prepare(c.leased(prep, lease)).await {
                Ok(r) => r.into_inner().mounts,
                Err(s) if s.code() == tonic::Code::AlreadyExists => continue,
                Err(s) => return Err(call("snapshot prepare")(s).into()),
            };
            let applied = c
                .diff()
                .apply(c.leased(
                    api::ApplyRequest {
                        diff: Some(layer.to_proto()),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    lease,
                ))
                .await;
            let remove = || async {
                let r = snap::RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.clone() };
                let _ = c.snapshots().remove(c.req(r)).await;
            };
            let applied = match applied {
                Ok(r) => r.into_inner().applied.map(|d| d.digest).unwrap_or_default(),
                Err(s) => {
                    remove().await;
                    return Err(call("diff apply")(s).into());
                }
            };
            if applied != img.diff_ids[i] {
                remove().await;
                return Err(ImageError::DiffIdMismatch {
                    layer: layer.digest.clone(),
                    want: img.diff_ids[i].clone(),
                    got: applied,
                });
            }
            let commit = snap::CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: chain.clone(),
                key: key.clone(),
                labels: HashMap::new(),
            };
            match c.snapshots().commit(c.leased(commit, lease)).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => remove().await,
                Err(s) => {
                    remove().await;
                    return Err(call("snapshot commit")(s).into());
                }
            }
            set_labels(c, &layer.digest, [("containerd.io/uncompressed".to_string(), img.diff_ids[i].clone())].into())
                .await?;
        }
    }
    set_labels(
        c,
        &img.config_desc.digest,
        [(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top.clone())].into(),
    )
    .await?;
    Ok(top)
}

// ---------------------------------------------------------------------------------------------
// Tarball import

/// Where each regular file of an (uncompressed) tar sits, so blobs stream straight from disk.
struct TarIndex {
    path: PathBuf,
    entries: HashMap<String, (u64, u64)>,
}

impl TarIndex {
    fn open(path: &Path) -> Result<TarIndex, ImageError> {
        let terr = |e: std::io::Error| ImageError::Tar { path: path.display().to_string(), reason: e.to_string() };
        let f = std::fs::File::open(path).map_err(terr)?;
        let mut magic = [0u8; 2];
        let mut probe = &f;
        if probe.read(&mut magic).map_err(terr)? == 2 && magic == [0x1f, 0x8b] {
            return Err(ImageError::Tar {
                path: path.display().to_string(),
                reason: "the outer tar is gzipped".into(),
            });
        }
        (&f).seek(SeekFrom::Start(0)).map_err(terr)?;
        let mut ar = tar::Archive::new(f);
        let mut entries = HashMap::new();
        for e in ar.entries().map_err(terr)? {
            let e = e.map_err(terr)?;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let name = e.path().map_err(terr)?.to_string_lossy().trim_start_matches("./").to_string();
            entries.insert(name, (e.raw_file_position(), e.size()));
        }
        Ok(TarIndex { path: path.to_path_buf(), entries })
    }

    fn reader(&self, name: &str) -> Result<Option<(std::io::Take<std::fs::File>, u64)>, ImageError> {
        let Some(&(off, size)) = self.entries.get(name) else { return Ok(None) };
        let terr = |e: std::io::Error| ImageError::Tar { path: self.path.display().to_string(), reason: e.to_string() };
        let mut f = std::fs::File::open(&self.path).map_err(terr)?;
        f.seek(SeekFrom::Start(off)).map_err(terr)?;
        Ok(Some((f.take(size), size)))
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, ImageError> {
        match self.reader(name)? {
            None => Ok(None),
            Some((mut r, size)) => {
                let mut v = Vec::with_capacity(size as usize);
                r.read_to_end(&mut v)
                    .map_err(|e| ImageError::Tar { path: self.path.display().to_string(), reason: e.to_string() })?;
                Ok(Some(v))
            }
        }
    }

    fn blob_path(digest: &str) -> String {
        format!("blobs/{}", digest.replacen(':', "/", 1))
    }

    fn digest_of(&self, name: &str) -> Result<Option<(String, u64)>, ImageError> {
        let Some((mut r, size)) = self.reader(name)? else { return Ok(None) };
        let mut h = Sha256::new();
        std::io::copy(&mut r, &mut h)
            .map_err(|e| ImageError::Tar { path: self.path.display().to_string(), reason: e.to_string() })?;
        Ok(Some((format!("sha256:{}", hex::encode(h.finalize())), size)))
    }
}

/// Streams a blob of an OCI layout into the content store.
async fn write_from_tar(c: &Client, lease: &Lease, tar: &TarIndex, desc: &Desc, entry: &str) -> Result<(), ImageError> {
    let (r, _) = tar.reader(entry)?.ok_or_else(|| ImageError::Tar {
        path: tar.path.display().to_string(),
        reason: format!("{entry} is missing"),
    })?;
    write_blob(c, lease, desc, r).await
}

/// Imports an OCI manifest or index (and what it references) from an OCI layout tar.
async fn import_oci_tree(c: &Client, lease: &Lease, tar: &TarIndex, desc: &Desc) -> Result<(), ImageError> {
    let entry = TarIndex::blob_path(&desc.digest);
    let bytes = tar.read(&entry)?.ok_or_else(|| ImageError::Tar {
        path: tar.path.display().to_string(),
        reason: format!("{entry} is missing"),
    })?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| fmt_err(&desc.digest, e.to_string()))?;
    let mt = if desc.media_type.is_empty() {
        doc.get("mediaType").and_then(|m| m.as_str()).unwrap_or("").to_string()
    } else {
        desc.media_type.clone()
    };
    if is_index(&mt) || doc.get("manifests").is_some() {
        let list: Vec<Desc> =
            doc.get("manifests").and_then(|m| m.as_array()).into_iter().flatten().filter_map(Desc::from_json).collect();
        // Only this platform's manifest is imported; the index still references the others
        // (their absence is what Go's platform-filtered import leaves too).
        let chosen = pick_platform(&list)
            .cloned()
            .ok_or_else(|| fmt_err(&desc.digest, format!("no linux/{} manifest", go_arch())))?;
        Box::pin(import_oci_tree(c, lease, tar, &chosen)).await?;
    } else {
        let mut children: Vec<Desc> =
            doc.get("layers").and_then(|l| l.as_array()).into_iter().flatten().filter_map(Desc::from_json).collect();
        children.extend(doc.get("config").and_then(Desc::from_json));
        for child in &children {
            write_from_tar(c, lease, tar, child, &TarIndex::blob_path(&child.digest)).await?;
        }
    }
    write_blob(c, lease, desc, std::io::Cursor::new(bytes)).await?;
    set_labels(c, &desc.digest, gc_labels(&mt, &doc)).await?;
    Ok(())
}

/// Images named in an OCI layout's index.json: `io.containerd.image.name`, else a
/// `org.opencontainers.image.ref.name` that is a full reference.
fn oci_image_names(index: &Value) -> Vec<(String, Desc)> {
    let mut out = Vec::new();
    for m in index.get("manifests").and_then(|m| m.as_array()).into_iter().flatten() {
        let Some(d) = Desc::from_json(m) else { continue };
        let name = d.annotations.get("io.containerd.image.name").cloned().or_else(|| {
            d.annotations
                .get("org.opencontainers.image.ref.name")
                .filter(|n| n.contains('/') || n.contains(':'))
                .cloned()
        });
        if let Some(n) = name.and_then(|n| super::names::normalize(&n).ok()) {
            out.push((n, d));
        }
    }
    out
}

/// Imports one OCI-layout or docker-archive tarball; returns the image names it created.
pub async fn import_tar(c: &Client, path: &Path) -> Result<Vec<String>, ImageError> {
    let tar = TarIndex::open(path)?;
    let lease = c.lease().await?;
    let res = import_tar_leased(c, &tar, &lease).await;
    lease.release().await;
    res
}

async fn import_tar_leased(c: &Client, tar: &TarIndex, lease: &Lease) -> Result<Vec<String>, ImageError> {
    let terr = |reason: String| ImageError::Tar { path: tar.path.display().to_string(), reason };
    let mut images: Vec<(String, Desc)> = Vec::new();
    if let Some(index) = tar.read("index.json")? {
        let index: Value = serde_json::from_slice(&index).map_err(|e| terr(format!("index.json: {e}")))?;
        images = oci_image_names(&index);
        for (_, d) in &images {
            import_oci_tree(c, lease, tar, d).await?;
        }
    }
    if images.is_empty() {
        if let Some(m) = tar.read("manifest.json")? {
            images = import_docker_archive(c, lease, tar, &m).await?;
        }
    }
    if images.is_empty() {
        return Err(terr("no named image inside: need index.json with an io.containerd.image.name annotation, or a docker-archive manifest.json with RepoTags".into()));
    }
    let mut names = Vec::new();
    for (name, target) in images {
        put_image(c, &name, &target).await?;
        let img = resolve(c, &name).await?;
        unpack(c, &img, lease).await?;
        tracing::info!(image = %name, id = %target.digest, "imported image");
        names.push(name);
    }
    Ok(names)
}

/// A `docker save` archive: builds the Docker schema2 manifest Go's importer builds (layer media
/// type from the gzip magic).
async fn import_docker_archive(
    c: &Client,
    lease: &Lease,
    tar: &TarIndex,
    manifest_json: &[u8],
) -> Result<Vec<(String, Desc)>, ImageError> {
    let terr = |reason: String| ImageError::Tar { path: tar.path.display().to_string(), reason };
    let list: Value = serde_json::from_slice(manifest_json).map_err(|e| terr(format!("manifest.json: {e}")))?;
    let mut out = Vec::new();
    for entry in list.as_array().into_iter().flatten() {
        let config_path = entry
            .get("Config")
            .and_then(|c| c.as_str())
            .ok_or_else(|| terr("manifest.json entry without Config".into()))?;
        let config = tar.read(config_path)?.ok_or_else(|| terr(format!("{config_path} missing")))?;
        let config_desc = Desc {
            media_type: MT_DOCKER_CONFIG.into(),
            digest: sha256_digest(&config),
            size: config.len() as i64,
            annotations: HashMap::new(),
            platform: None,
        };
        let mut layers = Vec::new();
        for l in entry.get("Layers").and_then(|l| l.as_array()).into_iter().flatten() {
            let lp = l.as_str().ok_or_else(|| terr("bad Layers entry".into()))?;
            let (digest, size) = tar.digest_of(lp)?.ok_or_else(|| terr(format!("{lp} missing")))?;
            let mut magic = [0u8; 2];
            if let Some((mut r, _)) = tar.reader(lp)? {
                let _ = read_full(&mut r, &mut magic);
            }
            let mt = if magic == [0x1f, 0x8b] { MT_DOCKER_LAYER_GZIP } else { MT_DOCKER_LAYER };
            let d =
                Desc { media_type: mt.into(), digest, size: size as i64, annotations: HashMap::new(), platform: None };
            write_from_tar(c, lease, tar, &d, lp).await?;
            layers.push(d);
        }
        write_blob(c, lease, &config_desc, std::io::Cursor::new(config.clone())).await?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_DOCKER_MANIFEST,
            "config": {"mediaType": config_desc.media_type, "digest": config_desc.digest, "size": config_desc.size},
            "layers": layers.iter().map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| terr(e.to_string()))?;
        let mdesc = Desc {
            media_type: MT_DOCKER_MANIFEST.into(),
            digest: sha256_digest(&bytes),
            size: bytes.len() as i64,
            annotations: HashMap::new(),
            platform: None,
        };
        write_blob(c, lease, &mdesc, std::io::Cursor::new(bytes)).await?;
        set_labels(c, &mdesc.digest, gc_labels(MT_DOCKER_MANIFEST, &manifest)).await?;
        for tag in entry.get("RepoTags").and_then(|t| t.as_array()).into_iter().flatten() {
            if let Some(n) = tag.as_str().and_then(|t| super::names::normalize(t).ok()) {
                out.push((n, mdesc.clone()));
            }
        }
    }
    Ok(out)
}

/// Imports every `*.tar` in `dir`; a bad tarball is logged and skipped so one file cannot stop
/// the node. Returns the names imported.
pub async fn import_dir(c: &Client, dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return names };
    let mut files: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "tar")).collect();
    files.sort();
    for f in files {
        match import_tar(c, &f).await {
            Ok(n) => names.extend(n),
            Err(e) => tracing::warn!(file = %f.display(), error = %e, "image import failed; fix or remove the tarball"),
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_chain_id_is_the_first_diff_id_and_later_ones_hash_the_pair() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], format!("sha256:{}", hex::encode(Sha256::digest(b"sha256:a sha256:b"))));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn gc_labels_reference_config_layers_and_index_children() {
        let m = serde_json::json!({"config": {"digest": "sha256:c"}, "layers": [{"digest": "sha256:l0"}, {"digest": "sha256:l1"}]});
        let l = gc_labels(MT_OCI_MANIFEST, &m);
        assert_eq!(l["containerd.io/gc.ref.content.config"], "sha256:c");
        assert_eq!(l["containerd.io/gc.ref.content.l.1"], "sha256:l1");
        let i = serde_json::json!({"manifests": [{"digest": "sha256:m"}]});
        assert_eq!(gc_labels(MT_OCI_INDEX, &i)["containerd.io/gc.ref.content.m.0"], "sha256:m");
    }

    #[test]
    fn this_platforms_manifest_is_picked_from_an_index() {
        let mk = |arch: &str| Desc {
            media_type: MT_OCI_MANIFEST.into(),
            digest: format!("sha256:{arch}"),
            size: 1,
            annotations: HashMap::new(),
            platform: Some(("linux".into(), arch.into())),
        };
        let list = vec![mk("s390x"), mk(go_arch())];
        assert_eq!(pick_platform(&list).unwrap().digest, format!("sha256:{}", go_arch()));
        assert!(pick_platform(&[mk("s390x"), mk("ppc64le")]).is_none() || go_arch() == "s390x");
    }

    #[test]
    fn image_names_come_from_the_containerd_annotation() {
        let idx = serde_json::json!({"manifests": [{"digest": "sha256:x", "size": 1, "annotations": {"io.containerd.image.name": "busybox:1.36"}}]});
        let n = oci_image_names(&idx);
        assert_eq!(n[0].0, "docker.io/library/busybox:1.36");
    }
}
