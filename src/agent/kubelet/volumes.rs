//! Pod volumes, prepared by the kubelet under `<data-dir>/agent/pods/<uid>/volumes/<plugin>/<name>`
//! (upstream `/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`) and handed to
//! the runtime as bind mounts per `volumeMounts` (readOnly, subPath).
//!
//! - `emptyDir`: a directory; `medium: Memory` is a tmpfs sized by `sizeLimit`.
//! - `hostPath`: the node path itself, after upstream's `type` checks.
//! - `persistentVolumeClaim`: the claim's bound PersistentVolume (read by [`fetch_claims`]),
//!   whose `hostPath` or `local` path is bind-mounted like a hostPath; a claim that is not
//!   bound yet keeps the pod waiting (upstream "error processing PVC ns/name: PVC is not
//!   bound"). Directories of local-path volumes are created world-writable (0777), as k3s'
//!   provisioner creates them, so non-root containers can write.
//! - `configMap`, `secret`, `downwardAPI`, `projected` (with `serviceAccountToken`, the
//!   `kube-api-access-*` shape): their files are computed purely ([`payload`]) and written by
//!   the [`atomic_write`]r the way upstream's `AtomicWriter` does — a fresh `..<timestamp>`
//!   directory, a `..data` symlink swapped by rename, and user-visible `key -> ..data/key`
//!   links — so a container never sees a half-updated volume. Each sync rewrites them only when
//!   the content changed, which keeps mounted ConfigMaps and Secrets up to date.
//!
//! Secret and projected volumes live on a tmpfs, as upstream's memory-backed wrappers do.
//! [`teardown`] unmounts whatever the kubelet mounted under the pod directory and removes it.

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::container_spec::{resource_field, SpecError};
use super::objects::PodObjects;
use crate::agent::runtime::Mount;

/// Upstream default file mode of configMap/secret/downwardAPI/projected volumes (0644).
pub const DEFAULT_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VolumeError {
    /// A referenced object or key is missing, or a path is invalid; the message is upstream's.
    #[error("{0}")]
    Config(String),
    /// A hostPath does not match its `type`.
    #[error("hostPath type check failed: {path} is not a {want}")]
    HostPathType { path: String, want: &'static str },
    /// Writing the volume on the node failed.
    #[error("{0}")]
    Io(String),
}

fn io(what: &str, p: &Path, e: std::io::Error) -> VolumeError {
    VolumeError::Io(format!("{what} {}: {e}", p.display()))
}

/// What the kubelet found for one persistentVolumeClaim of a pod, by claim name.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Bound, and this is its volume.
    Bound(Box<PersistentVolume>),
    /// Not usable yet; upstream's reason (without the "error processing PVC" prefix).
    Waiting(String),
}

/// Reads the claims a pod's volumes name and their volumes (upstream
/// `desiredStateOfWorldPopulator.getPVCExtractPV` and `getPVSpec`).
pub async fn fetch_claims(client: &kube::Client, pod: &Pod, ns: &str) -> HashMap<String, Claim> {
    use kube::api::Api;
    let mut out = HashMap::new();
    let names: std::collections::BTreeSet<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()))
        .collect();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for name in names {
        let state = match pvcs.get_opt(&name).await {
            Err(e) => Claim::Waiting(format!("failed to fetch PVC from API server: {e}")),
            Ok(None) => Claim::Waiting(format!(
                "failed to fetch PVC from API server: persistentvolumeclaims {name:?} not found"
            )),
            Ok(Some(c)) => claim_volume(&c, &pvs).await,
        };
        out.insert(name, state);
    }
    out
}

async fn claim_volume(c: &PersistentVolumeClaim, pvs: &kube::api::Api<PersistentVolume>) -> Claim {
    if c.metadata.deletion_timestamp.is_some() {
        return Claim::Waiting("can't start pod because PVC is being deleted".into());
    }
    let bound = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let vn = c.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
    if !bound || vn.is_empty() {
        return Claim::Waiting("PVC is not bound".into());
    }
    match pvs.get_opt(&vn).await {
        Err(e) => Claim::Waiting(format!("failed to fetch PV {vn} from API server: {e}")),
        Ok(None) => {
            Claim::Waiting(format!("failed to fetch PV {vn} from API server: persistentvolumes {vn:?} not found"))
        }
        Ok(Some(pv)) => {
            let ref_uid = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.clone());
            if ref_uid.is_none() || ref_uid != c.metadata.uid {
                return Claim::Waiting(format!(
                    "found PV object {vn:?} but it has a ClaimRef that does not point to the PVC's UID"
                ));
            }
            Claim::Bound(Box::new(pv))
        }
    }
}

/// The node path of a persistentVolumeClaim volume, creating a DirectoryOrCreate directory.
fn claim_path(objects: &PodObjects, ns: &str, src: &PersistentVolumeClaimVolumeSource) -> Result<PathBuf, VolumeError> {
    let name = &src.claim_name;
    let waiting = |m: &str| VolumeError::Config(format!("error processing PVC {ns}/{name}: {m}"));
    let pv = match objects.claims.get(name) {
        None => return Err(waiting("the claim could not be read yet")),
        Some(Claim::Waiting(m)) => return Err(waiting(m)),
        Some(Claim::Bound(pv)) => pv,
    };
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let spec = pv.spec.clone().unwrap_or_default();
    if let Some(h) = &spec.host_path {
        let local_path = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
            .is_some_and(|p| p == crate::controllers::local_path::PROVISIONER);
        let p = Path::new(&h.path);
        if local_path && std::fs::symlink_metadata(p).is_err() {
            std::fs::create_dir_all(p).map_err(|e| io("creating", p, e))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).map_err(|e| io("chmod", p, e))?;
        }
        check_host_path(&h.path, h.type_.as_deref().unwrap_or(""))?;
        return Ok(PathBuf::from(&h.path));
    }
    if let Some(l) = &spec.local {
        // Upstream local volumes must exist; they are never created.
        if std::fs::metadata(&l.path).is_err() {
            return Err(VolumeError::Config(format!(
                "path {:?} of local PersistentVolume {pv_name} does not exist on this node",
                l.path
            )));
        }
        return Ok(PathBuf::from(&l.path));
    }
    Err(VolumeError::Config(format!(
        "PersistentVolume {pv_name} is of a type this kubelet cannot mount (hostPath and local are supported)"
    )))
}

/// `<pods_dir>/<uid>`.
pub fn pod_dir(pods_dir: &Path, uid: &str) -> PathBuf {
    pods_dir.join(uid)
}

/// The upstream plugin directory name of a volume (`kubernetes.io~configmap`, …), or `None`
/// for a hostPath (used in place) or an unsupported kind.
pub fn plugin(v: &Volume) -> Option<&'static str> {
    Some(if v.empty_dir.is_some() {
        "kubernetes.io~empty-dir"
    } else if v.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if v.secret.is_some() {
        "kubernetes.io~secret"
    } else if v.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else if v.projected.is_some() {
        "kubernetes.io~projected"
    } else {
        return None;
    })
}

/// Where a volume lives on the node.
pub fn volume_path(pods_dir: &Path, uid: &str, v: &Volume) -> Option<PathBuf> {
    if let Some(h) = &v.host_path {
        return Some(PathBuf::from(&h.path));
    }
    Some(pod_dir(pods_dir, uid).join("volumes").join(plugin(v)?).join(&v.name))
}

/// One file of an API-data volume: relative path → bytes and mode.
pub type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// A relative path inside a volume: no `..`, not absolute (upstream `validatePath`).
fn check_rel(p: &str) -> Result<(), VolumeError> {
    let path = Path::new(p);
    if p.is_empty() || path.is_absolute() || path.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(VolumeError::Config(format!("invalid path {p:?}: must be relative and may not contain '..'")));
    }
    if p.starts_with("..") {
        return Err(VolumeError::Config(format!("invalid path {p:?}: may not start with '..'")));
    }
    Ok(())
}

/// `items` (or every key) of a ConfigMap/Secret into the payload (upstream `MakePayload`).
fn add_keys(
    out: &mut Payload,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    kind: &str,
    name: &str,
    optional: bool,
) -> Result<(), VolumeError> {
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                let Some(v) = data.get(&it.key) else {
                    if optional {
                        continue;
                    }
                    return Err(VolumeError::Config(format!(
                        "configuration error: key {:?} not found in {kind} {name:?}",
                        it.key
                    )));
                };
                check_rel(&it.path)?;
                let mode = it.mode.map(|m| m as u32).unwrap_or(default_mode);
                out.insert(it.path.clone(), (v.clone(), mode));
            }
        }
        _ => {
            for (k, v) in data {
                check_rel(k)?;
                out.insert(k.clone(), (v.clone(), default_mode));
            }
        }
    }
    Ok(())
}

/// Upstream `formatMap`: `key="value"` lines sorted by key, values quoted Go-style.
fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

fn downward_file(
    pod: &Pod,
    f: &DownwardAPIVolumeFile,
    node_cpu_millis: u64,
    node_memory_bytes: u64,
) -> Result<Vec<u8>, VolumeError> {
    let m = &pod.metadata;
    if let Some(r) = &f.field_ref {
        let v = match r.field_path.as_str() {
            "metadata.labels" => format_map(m.labels.as_ref()),
            "metadata.annotations" => format_map(m.annotations.as_ref()),
            "metadata.name" => m.name.clone().unwrap_or_default(),
            "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
            "metadata.uid" => m.uid.clone().unwrap_or_default(),
            p => {
                let key = |prefix: &str| p.strip_prefix(prefix).and_then(|s| s.strip_suffix("']")).map(str::to_string);
                if let Some(k) = key("metadata.labels['") {
                    m.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
                } else if let Some(k) = key("metadata.annotations['") {
                    m.annotations.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
                } else {
                    return Err(VolumeError::Config(format!("unsupported downwardAPI fieldPath {p:?}")));
                }
            }
        };
        return Ok(v.into_bytes());
    }
    if let Some(r) = &f.resource_field_ref {
        let spec = pod.spec.as_ref();
        let name = r.container_name.clone().unwrap_or_default();
        let c: Container = spec
            .and_then(|s| s.containers.iter().chain(s.init_containers.iter().flatten()).find(|c| c.name == name))
            .cloned()
            .ok_or_else(|| VolumeError::Config(format!("downwardAPI resourceFieldRef: no container {name:?}")))?;
        let v = resource_field(
            &c,
            &r.resource,
            r.divisor.as_ref().map(|d| d.0.as_str()),
            node_cpu_millis,
            node_memory_bytes,
        )
        .map_err(|e: SpecError| VolumeError::Config(e.to_string()))?;
        return Ok(v.into_bytes());
    }
    Ok(Vec::new())
}

fn cm_data(cm: &k8s_openapi::api::core::v1::ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut d: BTreeMap<String, Vec<u8>> =
        cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    d.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
    d
}

fn secret_data(s: &k8s_openapi::api::core::v1::Secret) -> BTreeMap<String, Vec<u8>> {
    let mut d: BTreeMap<String, Vec<u8>> = s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    d.extend(s.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
    d
}

fn mode(m: Option<i32>) -> u32 {
    m.map(|m| (m as u32) & 0o7777).unwrap_or(DEFAULT_MODE)
}

/// The files of an API-data volume (configMap, secret, downwardAPI, projected); `None` for
/// other kinds. Upstream messages: `configmap "x" not found`, `secret "x" not found`; an
/// `optional` source that is missing contributes nothing.
pub fn payload(
    pod: &Pod,
    v: &Volume,
    objects: &PodObjects,
    node_cpu_millis: u64,
    node_memory_bytes: u64,
) -> Result<Option<Payload>, VolumeError> {
    let mut out = Payload::new();
    let cm = |name: &str, optional: bool| -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
        match objects.config_maps.get(name).cloned().flatten() {
            Some(c) => Ok(Some(cm_data(&c))),
            None if optional => Ok(None),
            None => Err(VolumeError::Config(format!("configmap {name:?} not found"))),
        }
    };
    let secret = |name: &str, optional: bool| -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
        match objects.secrets.get(name).cloned().flatten() {
            Some(s) => Ok(Some(secret_data(&s))),
            None if optional => Ok(None),
            None => Err(VolumeError::Config(format!("secret {name:?} not found"))),
        }
    };
    if let Some(c) = &v.config_map {
        let opt = c.optional == Some(true);
        if let Some(d) = cm(&c.name, opt)? {
            add_keys(&mut out, &d, c.items.as_ref(), mode(c.default_mode), "ConfigMap", &c.name, opt)?;
        }
    } else if let Some(s) = &v.secret {
        let opt = s.optional == Some(true);
        let name = s.secret_name.clone().unwrap_or_default();
        if let Some(d) = secret(&name, opt)? {
            add_keys(&mut out, &d, s.items.as_ref(), mode(s.default_mode), "Secret", &name, opt)?;
        }
    } else if let Some(d) = &v.downward_api {
        let dm = mode(d.default_mode);
        for f in d.items.iter().flatten() {
            check_rel(&f.path)?;
            let m = f.mode.map(|m| m as u32).unwrap_or(dm);
            out.insert(f.path.clone(), (downward_file(pod, f, node_cpu_millis, node_memory_bytes)?, m));
        }
    } else if let Some(p) = &v.projected {
        let dm = mode(p.default_mode);
        for src in p.sources.iter().flatten() {
            if let Some(c) = &src.config_map {
                let opt = c.optional == Some(true);
                if let Some(d) = cm(&c.name, opt)? {
                    add_keys(&mut out, &d, c.items.as_ref(), dm, "ConfigMap", &c.name, opt)?;
                }
            }
            if let Some(s) = &src.secret {
                let opt = s.optional == Some(true);
                if let Some(d) = secret(&s.name, opt)? {
                    add_keys(&mut out, &d, s.items.as_ref(), dm, "Secret", &s.name, opt)?;
                }
            }
            for f in src.downward_api.iter().flat_map(|d| d.items.iter().flatten()) {
                check_rel(&f.path)?;
                let m = f.mode.map(|m| m as u32).unwrap_or(dm);
                out.insert(f.path.clone(), (downward_file(pod, f, node_cpu_millis, node_memory_bytes)?, m));
            }
            if let Some(t) = &src.service_account_token {
                check_rel(&t.path)?;
                let key = (t.audience.clone().unwrap_or_default(), t.expiration_seconds.unwrap_or(3600));
                let tok = objects.tokens.get(&key).ok_or_else(|| {
                    VolumeError::Config(format!(
                        "failed to fetch token: no token for service account {:?} yet (the TokenRequest failed; see the kubelet log)",
                        pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into())
                    ))
                })?;
                // Upstream writes the token 0600 unless defaultMode says otherwise (the
                // projected volume's mode applies to every file).
                out.insert(t.path.clone(), (tok.token.clone().into_bytes(), dm));
            }
        }
    } else {
        return Ok(None);
    }
    Ok(Some(out))
}

/// What is currently published in `dir` (through `..data`), to skip writes that change nothing.
fn current(dir: &Path) -> Option<Payload> {
    let data = dir.join("..data");
    let target = std::fs::read_link(&data).ok()?;
    let root = dir.join(target);
    let mut out = Payload::new();
    fn walk(root: &Path, rel: &Path, out: &mut Payload) -> Option<()> {
        for e in std::fs::read_dir(root.join(rel)).ok()? {
            let e = e.ok()?;
            let r = rel.join(e.file_name());
            let md = e.metadata().ok()?;
            if md.is_dir() {
                walk(root, &r, out)?;
            } else {
                let bytes = std::fs::read(root.join(&r)).ok()?;
                out.insert(r.to_string_lossy().into_owned(), (bytes, md.permissions().mode() & 0o7777));
            }
        }
        Some(())
    }
    walk(&root, Path::new(""), &mut out)?;
    Some(out)
}

/// Publishes `payload` in `dir` atomically (upstream `AtomicWriter.Write`): writes a new
/// `..<timestamp>` directory, points `..data_tmp` at it and renames that over `..data`, then
/// makes a `name -> ..data/name` link for each top-level entry, removes links for names that
/// went away and the previous timestamped directory. Returns whether anything changed.
pub fn atomic_write(dir: &Path, payload: &Payload) -> Result<bool, VolumeError> {
    if current(dir).as_ref() == Some(payload) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    let stamp = chrono_like_stamp();
    let ts_name = format!("..{stamp}");
    let ts = dir.join(&ts_name);
    std::fs::create_dir(&ts).map_err(|e| io("creating", &ts, e))?;
    for (rel, (bytes, m)) in payload {
        let p = ts.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
        }
        std::fs::write(&p, bytes).map_err(|e| io("writing", &p, e))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*m)).map_err(|e| io("chmod", &p, e))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts_name, &tmp).map_err(|e| io("linking", &tmp, e))?;
    std::fs::rename(&tmp, dir.join("..data")).map_err(|e| io("publishing", &dir.join("..data"), e))?;
    // User-visible names: one link per top-level entry.
    let tops: std::collections::BTreeSet<String> =
        payload.keys().filter_map(|k| k.split('/').next().map(str::to_string)).collect();
    for t in &tops {
        let link = dir.join(t);
        if std::fs::read_link(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(t), &link).map_err(|e| io("linking", &link, e))?;
        }
    }
    for e in std::fs::read_dir(dir).map_err(|e| io("reading", dir, e))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old.filter(|o| o != Path::new(&ts_name)) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

/// A unique, sortable name for a payload generation (upstream uses `..2006_01_02_15_04_05.<rand>`).
fn chrono_like_stamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}_{:09}.{}", now.as_secs(), now.subsec_nanos(), std::process::id())
}

/// Upstream `hostPathTypeChecker`.
fn check_host_path(path: &str, type_: &str) -> Result<(), VolumeError> {
    let p = Path::new(path);
    let md = std::fs::metadata(p);
    use std::os::unix::fs::FileTypeExt;
    let fail = |want| Err(VolumeError::HostPathType { path: path.to_string(), want });
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if md.is_err() {
                std::fs::create_dir_all(p).map_err(|e| io("creating", p, e))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).map_err(|e| io("chmod", p, e))?;
                return Ok(());
            }
            if md.is_ok_and(|m| m.is_dir()) {
                Ok(())
            } else {
                fail("directory")
            }
        }
        "Directory" => {
            if md.is_ok_and(|m| m.is_dir()) {
                Ok(())
            } else {
                fail("directory")
            }
        }
        "FileOrCreate" => {
            if md.is_err() {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
                }
                std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|e| io("creating", p, e))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).map_err(|e| io("chmod", p, e))?;
                return Ok(());
            }
            if md.is_ok_and(|m| m.is_file()) {
                Ok(())
            } else {
                fail("file")
            }
        }
        "File" => {
            if md.is_ok_and(|m| m.is_file()) {
                Ok(())
            } else {
                fail("file")
            }
        }
        "Socket" => {
            if md.is_ok_and(|m| m.file_type().is_socket()) {
                Ok(())
            } else {
                fail("socket")
            }
        }
        "CharDevice" => {
            if md.is_ok_and(|m| m.file_type().is_char_device()) {
                Ok(())
            } else {
                fail("character device")
            }
        }
        "BlockDevice" => {
            if md.is_ok_and(|m| m.file_type().is_block_device()) {
                Ok(())
            } else {
                fail("block device")
            }
        }
        other => Err(VolumeError::Config(format!("unknown hostPath type {other:?}"))),
    }
}

/// Whether something is mounted exactly at `p` (from /proc/self/mountinfo).
fn mounted_at(p: &Path) -> bool {
    mount_points().iter().any(|m| m == p)
}

fn mount_points() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Field 5 is the mount point, with spaces etc. escaped as octal (\040).
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")))
        .collect()
}

/// Upstream emptyDir `setupTmpfs`: a tmpfs whose size is `sizeLimit` (unset: half of RAM,
/// tmpfs's own default).
fn mount_tmpfs(dir: &Path, size_limit: Option<&str>) -> Result<(), VolumeError> {
    if mounted_at(dir) {
        return Ok(());
    }
    let mut data = String::from("mode=0777");
    if let Some(bytes) = size_limit.and_then(super::resources::parse_quantity) {
        data.push_str(&format!(",size={}", bytes.ceil() as u64));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| VolumeError::Io(format!("mounting tmpfs on {}: {e} (the kubelet needs CAP_SYS_ADMIN)", dir.display())))
}

/// Prepares every volume of the pod and returns its node path by name. Idempotent: called on
/// each sync, it rewrites API-data volumes whose content changed.
pub fn setup(
    pods_dir: &Path,
    pod: &Pod,
    objects: &PodObjects,
    node_cpu_millis: u64,
    node_memory_bytes: u64,
) -> Result<HashMap<String, PathBuf>, (String, VolumeError)> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = HashMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let fail = |e| (v.name.clone(), e);
        if let Some(src) = &v.persistent_volume_claim {
            out.insert(v.name.clone(), claim_path(objects, &ns, src).map_err(fail)?);
            continue;
        }
        let Some(path) = volume_path(pods_dir, &uid, v) else {
            // Unsupported kinds (csi, ephemeral, …) are skipped; a container that
            // mounts one fails with a clear message in `container_mounts`.
            continue;
        };
        if let Some(h) = &v.host_path {
            check_host_path(&h.path, h.type_.as_deref().unwrap_or("")).map_err(fail)?;
        } else if let Some(e) = &v.empty_dir {
            std::fs::create_dir_all(&path).map_err(|e| fail(io("creating", &path, e)))?;
            if e.medium.as_deref() == Some("Memory") {
                mount_tmpfs(&path, e.size_limit.as_ref().map(|q| q.0.as_str())).map_err(fail)?;
            } else {
                // Upstream emptyDir directories are world-writable (0777).
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| fail(io("chmod", &path, e)))?;
            }
        } else if let Some(files) = payload(pod, v, objects, node_cpu_millis, node_memory_bytes).map_err(fail)? {
            // Upstream backs secret and projected volumes with a memory-medium emptyDir, so
            // secrets and tokens never reach the disk (or an SD card).
            if v.secret.is_some() || v.projected.is_some() {
                std::fs::create_dir_all(&path).map_err(|e| fail(io("creating", &path, e)))?;
                mount_tmpfs(&path, None).map_err(fail)?;
            }
            if atomic_write(&path, &files).map_err(fail)? {
                tracing::debug!(volume = %v.name, path = %path.display(), "volume content updated");
            }
        }
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// Bind mounts for a container's `volumeMounts`. API-data volumes are always read-only
/// (upstream `ReadOnlyAPIDataVolumes`); a `subPath` must stay inside the volume and is
/// created as a directory when missing (upstream `doSafeMakeDir`).
pub fn container_mounts(pod: &Pod, c: &Container, vols: &HashMap<String, PathBuf>) -> Result<Vec<Mount>, VolumeError> {
    let volumes: HashMap<&str, &Volume> =
        pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).map(|v| (v.name.as_str(), v)).collect();
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(host) = vols.get(&m.name) else {
            let kind = volumes
                .get(m.name.as_str())
                .map(|_| "a volume kind this kubelet does not support")
                .unwrap_or("no such volume in the pod spec");
            return Err(VolumeError::Config(format!("volumeMount {:?} of container {:?}: {kind}", m.name, c.name)));
        };
        let api_data = volumes.get(m.name.as_str()).is_some_and(|v| {
            v.config_map.is_some() || v.secret.is_some() || v.downward_api.is_some() || v.projected.is_some()
        });
        let mut host_path = host.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            check_rel(sub)?;
            host_path = host.join(sub);
            if !api_data && std::fs::symlink_metadata(&host_path).is_err() {
                std::fs::create_dir_all(&host_path).map_err(|e| io("creating subPath", &host_path, e))?;
            }
        }
        // A claim mounted readOnly in the pod's volume is read-only in every container.
        let claim_ro = volumes
            .get(m.name.as_str())
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .is_some_and(|c| c.read_only == Some(true));
        out.push(Mount {
            container_path: m.mount_path.clone(),
            host_path,
            read_only: m.read_only.unwrap_or(false) || api_data || claim_ro,
        });
    }
    Ok(out)
}

/// Unmounts what the kubelet mounted under the pod's directory (tmpfs emptyDirs), deepest
/// first, then removes the directory (upstream `cleanupOrphanedPodDirs`).
pub fn teardown(pods_dir: &Path, uid: &str) -> Result<(), VolumeError> {
    let dir = pod_dir(pods_dir, uid);
    let mut mounts: Vec<PathBuf> = mount_points().into_iter().filter(|m| m.starts_with(&dir)).collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| VolumeError::Io(format!("unmounting {}: {e}", m.display())))?;
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", &dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::kubelet::objects::Token;
    use serde_json::json;
    use std::time::{Duration, SystemTime};

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"b": "2", "a": "1"}},
            "spec": {"serviceAccountName": "robot", "volumes": volumes, "containers": [{"name": "c",
                "resources": {"limits": {"memory": "64Mi"}},
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"},
                                 {"name": "scratch", "mountPath": "/data", "subPath": "sub"}]}]}
        }))
        .unwrap()
    }

    fn objects() -> PodObjects {
        let mut o = PodObjects::default();
        o.config_maps.insert(
            "cfg".into(),
            Some(serde_json::from_value(json!({"data": {"a.conf": "A", "b.conf": "B"}})).unwrap()),
        );
        o.config_maps.insert(
            "kube-root-ca.crt".into(),
            Some(serde_json::from_value(json!({"data": {"ca.crt": "PEM"}})).unwrap()),
        );
        o.secrets.insert("s".into(), Some(serde_json::from_value(json!({"data": {"k": "c2VjcmV0"}})).unwrap()));
        let t = SystemTime::now();
        o.tokens.insert(
            (String::new(), 3607),
            Token { token: "jwt".into(), issued: t, expires: t + Duration::from_secs(3607) },
        );
        o
    }

    fn one(p: &Pod) -> Volume {
        p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0].clone()
    }

    #[test]
    fn volume_paths_follow_the_upstream_layout() {
        let p =
            pod(json!([{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "h", "hostPath": {"path": "/srv"}}]));
        let vs = p.spec.as_ref().unwrap().volumes.clone().unwrap();
        assert_eq!(
            volume_path(Path::new("/d/agent/pods"), "u1", &vs[0]).unwrap(),
            PathBuf::from("/d/agent/pods/u1/volumes/kubernetes.io~configmap/cfg")
        );
        assert_eq!(volume_path(Path::new("/d"), "u1", &vs[1]).unwrap(), PathBuf::from("/srv"));
    }

    #[test]
    fn secret_items_and_modes_and_optional_sources() {
        let p = pod(json!([{"name": "s", "secret": {"secretName": "s", "defaultMode": 0o400,
            "items": [{"key": "k", "path": "dir/key"}, {"key": "k", "path": "k2", "mode": 0o600}]}}]));
        let files = payload(&p, &one(&p), &objects(), 1000, 1 << 30).unwrap().unwrap();
        assert_eq!(files["dir/key"], (b"secret".to_vec(), 0o400));
        assert_eq!(files["k2"], (b"secret".to_vec(), 0o600));
        let p = pod(json!([{"name": "s", "secret": {"secretName": "missing"}}]));
        assert_eq!(
            payload(&p, &one(&p), &objects(), 1, 1),
            Err(VolumeError::Config("secret \"missing\" not found".into()))
        );
        let p = pod(json!([{"name": "s", "secret": {"secretName": "missing", "optional": true}}]));
        assert!(payload(&p, &one(&p), &objects(), 1, 1).unwrap().unwrap().is_empty());
        let p = pod(json!([{"name": "s", "secret": {"secretName": "s", "items": [{"key": "k", "path": "../x"}]}}]));
        assert!(matches!(payload(&p, &one(&p), &objects(), 1, 1), Err(VolumeError::Config(_))));
    }

    #[test]
    fn the_kube_api_access_projected_volume_has_token_ca_and_namespace() {
        let p = pod(json!([{"name": "kube-api-access-x", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}}]));
        let files = payload(&p, &one(&p), &objects(), 1, 1).unwrap().unwrap();
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(names, vec!["ca.crt", "namespace", "token"]);
        assert_eq!(files["token"].0, b"jwt");
        assert_eq!(files["namespace"], (b"ns".to_vec(), 0o644));
        // Without a token (TokenRequest failed) the volume cannot be set up.
        let mut o = objects();
        o.tokens.clear();
        assert!(payload(&p, &one(&p), &o, 1, 1).unwrap_err().to_string().contains("failed to fetch token"));
    }

    #[test]
    fn downward_api_labels_are_sorted_quoted_lines() {
        let p = pod(json!([{"name": "d", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}]}}]));
        let files = payload(&p, &one(&p), &objects(), 1, 1).unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&files["labels"].0), "a=\"1\"\nb=\"2\"");
        assert_eq!(files["mem"].0, b"64");
    }

    #[test]
    fn the_atomic_writer_swaps_data_and_drops_stale_names() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        let mut files = Payload::new();
        files.insert("a".into(), (b"1".to_vec(), 0o644));
        files.insert("sub/b".into(), (b"2".to_vec(), 0o600));
        assert!(atomic_write(&dir, &files).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert_eq!(std::fs::read_link(dir.join("a")).unwrap(), PathBuf::from("..data/a"));
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        assert!(!atomic_write(&dir, &files).unwrap(), "unchanged content is not rewritten");
        files.remove("sub/b");
        files.insert("a".into(), (b"changed".to_vec(), 0o644));
        assert!(atomic_write(&dir, &files).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "changed");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err(), "the stale link is gone");
        assert!(!dir.join(&first).exists(), "the previous generation is removed");
        assert_eq!(std::fs::metadata(dir.join("a")).unwrap().permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn setup_writes_volumes_and_mounts_resolve_sub_paths_read_only_for_api_data() {
        let d = tempfile::tempdir().unwrap();
        let p = pod(json!([{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "scratch", "emptyDir": {}}]));
        let vols = setup(d.path(), &p, &objects(), 1, 1).unwrap();
        let cfg = &vols["cfg"];
        assert_eq!(std::fs::read_to_string(cfg.join("b.conf")).unwrap(), "B");
        let c = &p.spec.as_ref().unwrap().containers[0];
        let mounts = container_mounts(&p, c, &vols).unwrap();
        assert_eq!(mounts[0], Mount { container_path: "/etc/cfg".into(), host_path: cfg.clone(), read_only: true });
        assert_eq!(mounts[1].host_path, vols["scratch"].join("sub"));
        assert!(mounts[1].host_path.is_dir() && !mounts[1].read_only);
        teardown(d.path(), "u1").unwrap();
        assert!(!d.path().join("u1").exists());
    }

    #[test]
    fn secret_volumes_live_on_a_tmpfs_that_teardown_unmounts() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = pod(json!([{"name": "s", "secret": {"secretName": "s"}}]));
        let vols = setup(d.path(), &p, &objects(), 1, 1).unwrap();
        assert!(mounted_at(&vols["s"]), "the secret volume is a mount point");
        assert_eq!(std::fs::read_to_string(vols["s"].join("k")).unwrap(), "secret");
        // A second sync neither remounts nor rewrites.
        setup(d.path(), &p, &objects(), 1, 1).unwrap();
        assert_eq!(mount_points().iter().filter(|m| **m == vols["s"]).count(), 1);
        teardown(d.path(), "u1").unwrap();
        assert!(!mounted_at(&vols["s"]));
        assert!(!d.path().join("u1").exists());
    }

    #[test]
    fn host_path_types_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let f = f.to_string_lossy().into_owned();
        assert!(check_host_path(&f, "File").is_ok());
        assert_eq!(
            check_host_path(&f, "Directory"),
            Err(VolumeError::HostPathType { path: f.clone(), want: "directory" })
        );
        let newdir = d.path().join("new/dir").to_string_lossy().into_owned();
        assert!(check_host_path(&newdir, "DirectoryOrCreate").is_ok());
        assert!(Path::new(&newdir).is_dir());
        assert!(check_host_path(&d.path().join("nope").to_string_lossy(), "Socket").is_err());
    }

    fn bound(pv: serde_json::Value) -> Claim {
        Claim::Bound(Box::new(serde_json::from_value(pv).unwrap()))
    }

    #[test]
    fn a_bound_claim_mounts_its_host_path_volume_and_honours_read_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("storage/pvc-1_ns_data");
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                                 {"name": "ro", "persistentVolumeClaim": {"claimName": "data", "readOnly": true}}],
                     "containers": [{"name": "c", "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                                                  {"name": "ro", "mountPath": "/ro"}]}]}
        }))
        .unwrap();
        let mut o = PodObjects::default();
        o.claims.insert(
            "data".into(),
            bound(json!({"metadata": {"name": "pvc-1",
                "annotations": {"pv.kubernetes.io/provisioned-by": "rancher.io/local-path"}},
                "spec": {"hostPath": {"path": dir.to_string_lossy(), "type": "DirectoryOrCreate"}}})),
        );
        let vols = setup(d.path(), &p, &o, 1, 1).unwrap();
        assert_eq!(vols["data"], dir);
        assert!(dir.is_dir());
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o777);
        let mounts = container_mounts(&p, &p.spec.as_ref().unwrap().containers[0], &vols).unwrap();
        assert_eq!(mounts[0], Mount { container_path: "/data".into(), host_path: dir.clone(), read_only: false });
        assert!(mounts[1].read_only);
        // Tearing the pod down leaves the volume's data alone.
        teardown(d.path(), "u1").unwrap();
        assert!(dir.is_dir());
    }

    #[test]
    fn a_claim_that_is_not_bound_keeps_the_pod_waiting_with_upstreams_reason() {
        let d = tempfile::tempdir().unwrap();
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                     "containers": [{"name": "c"}]}
        }))
        .unwrap();
        let mut o = PodObjects::default();
        o.claims.insert("data".into(), Claim::Waiting("PVC is not bound".into()));
        let (name, e) = setup(d.path(), &p, &o, 1, 1).unwrap_err();
        assert_eq!(name, "data");
        assert_eq!(e.to_string(), "error processing PVC ns/data: PVC is not bound");
        // A volume type the kubelet cannot mount says so.
        o.claims.insert(
            "data".into(),
            bound(json!({"metadata": {"name": "nfs-1"},
            "spec": {"nfs": {"server": "x", "path": "/"}}})),
        );
        let (_, e) = setup(d.path(), &p, &o, 1, 1).unwrap_err();
        assert!(e.to_string().contains("hostPath and local are supported"), "{e}");
        // A local volume must already exist.
        o.claims.insert(
            "data".into(),
            bound(json!({"metadata": {"name": "l"},
            "spec": {"local": {"path": d.path().join("missing").to_string_lossy()}}})),
        );
        assert!(setup(d.path(), &p, &o, 1, 1).is_err());
        o.claims.insert(
            "data".into(),
            bound(json!({"metadata": {"name": "l"},
            "spec": {"local": {"path": d.path().to_string_lossy()}}})),
        );
        assert_eq!(setup(d.path(), &p, &o, 1, 1).unwrap()["data"], d.path());
    }

    #[test]
    fn a_mount_of_an_unknown_volume_is_a_config_error() {
        let p = pod(json!([]));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let e = container_mounts(&p, c, &HashMap::new()).unwrap_err();
        assert!(e.to_string().contains("no such volume"), "{e}");
    }
}
