//! Termination messages (`terminationMessagePath`, `terminationMessagePolicy`) and the pod's
//! `activeDeadlineSeconds`, as the kubelet does them.
//!
//! - Each container instance gets a node file `<pods_dir>/<uid>/containers/<name>/<restart>`
//!   bind-mounted read-write at its `terminationMessagePath` (default `/dev/termination-log`),
//!   upstream's `containers/<name>/<id>` layout. Once the container exits the kubelet reads at
//!   most 4096 bytes of it (upstream `maxMessageLength`); with `FallbackToLogsOnError`, an
//!   empty file and a non-zero exit use the last 80 lines / 2048 bytes of the container's log.
//!   The message lands in `state.terminated.message` (and later `lastState`).
//! - `activeDeadlineSeconds` counts from `status.startTime`; once exceeded the pod is failed
//!   with reason `DeadlineExceeded` (upstream `activeDeadlineHandler`).

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::cri_log::parse_line;
use crate::agent::runtime::Mount;

/// Upstream `kubecontainer.MaxContainerTerminationMessageLength`.
pub const MAX_MESSAGE: usize = 4096;
/// Upstream `kubecontainer.MaxContainerTerminationMessageLogLength` and `…LogLines`.
pub const MAX_LOG_BYTES: usize = 2048;
pub const MAX_LOG_LINES: usize = 80;
/// Status reason and message of a pod past its deadline (upstream `activeDeadlineHandler`).
pub const DEADLINE_REASON: &str = "DeadlineExceeded";
pub const DEADLINE_MESSAGE: &str = "Pod was active on the node longer than the specified deadline";

/// The node file backing one container instance's termination message.
pub fn message_file(pods_dir: &Path, uid: &str, name: &str, restart_count: u32) -> PathBuf {
    pods_dir.join(uid).join("containers").join(name).join(restart_count.to_string())
}

/// Creates the (empty) message file and returns its mount; `None` when the container sets an
/// empty path.
pub fn prepare(pods_dir: &Path, uid: &str, c: &Container, restart_count: u32) -> Result<Option<Mount>, String> {
    let path = c.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
    if path.is_empty() {
        return Ok(None);
    }
    let file = message_file(pods_dir, uid, &c.name, restart_count);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(&file, b"").map_err(|e| format!("creating {}: {e}", file.display()))?;
    // World-writable, so a non-root container user can write its message (upstream 0666).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("chmod {}: {e}", file.display()))?;
    Ok(Some(Mount { container_path: path, host_path: file, read_only: false }))
}

/// The last `MAX_LOG_LINES` lines, at most `MAX_LOG_BYTES`, of a CRI log's content.
pub fn log_tail(cri_log: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for l in cri_log.lines() {
        let Ok(p) = parse_line(l) else { continue };
        cur.push_str(p.content);
        if !p.partial {
            lines.push(std::mem::take(&mut cur) + "\n");
        }
    }
    let start = lines.len().saturating_sub(MAX_LOG_LINES);
    let joined: String = lines[start..].concat();
    let cut = joined.len().saturating_sub(MAX_LOG_BYTES);
    // Keep to a character boundary.
    let cut = (cut..=joined.len()).find(|i| joined.is_char_boundary(*i)).unwrap_or(joined.len());
    joined[cut..].to_string()
}

/// The message of an exited container instance (upstream `getTerminationMessage`).
pub fn read_message(file: &Path, fallback_to_logs: bool, exit_code: i32, log_path: &Path) -> String {
    let mut msg = std::fs::read(file).unwrap_or_default();
    msg.truncate(MAX_MESSAGE);
    let msg = String::from_utf8_lossy(&msg).into_owned();
    if msg.is_empty() && fallback_to_logs && exit_code != 0 {
        return log_tail(&std::fs::read_to_string(log_path).unwrap_or_default());
    }
    msg
}

/// Puts the messages (by runtime container id) into the terminated states of `status`.
pub fn apply(status: &mut PodStatus, messages: &HashMap<String, String>) {
    let all = status.container_statuses.iter_mut().flatten().chain(status.init_container_statuses.iter_mut().flatten());
    for cs in all {
        for st in [cs.state.as_mut(), cs.last_state.as_mut()].into_iter().flatten() {
            if let Some(t) = st.terminated.as_mut() {
                let id = t.container_id.as_deref().and_then(|i| i.strip_prefix("containerd://")).unwrap_or_default();
                if let Some(m) = messages.get(id).filter(|m| !m.is_empty()) {
                    t.message = Some(m.clone());
                }
            }
        }
    }
}

/// How long until the pod's active deadline; `Some(ZERO)` once exceeded, `None` without one
/// (or before the pod has a start time).
pub fn deadline_left(pod: &Pod, now: SystemTime) -> Option<Duration> {
    let secs = pod.spec.as_ref()?.active_deadline_seconds?;
    let start = pod.status.as_ref()?.start_time.as_ref()?;
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(start.0.as_second()).ok()?);
    let end = start + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Some(end.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Marks the status Failed/DeadlineExceeded (the kubelet writes this once the deadline passed).
pub fn fail_deadline(status: &mut PodStatus) {
    status.phase = Some("Failed".into());
    status.reason = Some(DEADLINE_REASON.into());
    status.message = Some(DEADLINE_MESSAGE.into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_message_file_is_mounted_at_the_default_path_and_read_back_capped() {
        let d = tempfile::tempdir().unwrap();
        let c = Container { name: "c".into(), ..Default::default() };
        let m = prepare(d.path(), "u1", &c, 2).unwrap().unwrap();
        assert_eq!(m.container_path, "/dev/termination-log");
        assert_eq!(m.host_path, d.path().join("u1/containers/c/2"));
        std::fs::write(&m.host_path, "x".repeat(5000)).unwrap();
        assert_eq!(read_message(&m.host_path, false, 1, Path::new("/nonexistent")).len(), MAX_MESSAGE);
    }

    #[test]
    fn fallback_to_logs_uses_the_log_tail_only_on_error_with_an_empty_file() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("msg");
        std::fs::write(&file, "").unwrap();
        let log = d.path().join("0.log");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("2026-01-01T00:00:00.000000000Z stdout F line {i}\n"));
        }
        text.push_str("2026-01-01T00:00:00.000000000Z stderr P part-\n2026-01-01T00:00:00.000000000Z stderr F end\n");
        std::fs::write(&log, text).unwrap();
        let m = read_message(&file, true, 1, &log);
        assert!(m.ends_with("line 99\npart-end\n"), "{m:?}");
        assert_eq!(m.lines().count(), MAX_LOG_LINES);
        assert_eq!(read_message(&file, true, 0, &log), "", "success keeps the empty message");
        assert_eq!(read_message(&file, false, 1, &log), "");
    }

    #[test]
    fn messages_land_in_terminated_states_by_container_id() {
        let mut st: PodStatus = serde_json::from_value(json!({"containerStatuses": [{
            "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 1,
            "state": {"terminated": {"exitCode": 1, "containerID": "containerd://c2"}},
            "lastState": {"terminated": {"exitCode": 1, "containerID": "containerd://c1"}}}]}))
        .unwrap();
        let msgs: HashMap<String, String> = [("c1".into(), "old".into()), ("c2".into(), "new".into())].into();
        apply(&mut st, &msgs);
        let cs = &st.container_statuses.unwrap()[0];
        assert_eq!(cs.state.as_ref().unwrap().terminated.as_ref().unwrap().message.as_deref(), Some("new"));
        assert_eq!(cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap().message.as_deref(), Some("old"));
    }

    #[test]
    fn the_active_deadline_counts_from_the_start_time() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [], "activeDeadlineSeconds": 30},
            "status": {"startTime": "2026-01-01T00:00:00Z"}}))
        .unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(deadline_left(&pod, start + Duration::from_secs(10)), Some(Duration::from_secs(20)));
        assert_eq!(deadline_left(&pod, start + Duration::from_secs(31)), Some(Duration::ZERO));
        let mut st = PodStatus::default();
        fail_deadline(&mut st);
        assert_eq!((st.phase.as_deref(), st.reason.as_deref()), (Some("Failed"), Some("DeadlineExceeded")));
    }
}
