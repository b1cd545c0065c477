//! `skiff snapshot save|ls|restore` and scheduled snapshots (`--snapshot-schedule-cron`,
//! `--snapshot-retention`), as k3s' `etcd-snapshot` does it.
//!
//! `save` asks the running server: it POSTs `/skiff/v1/snapshot` to the URL in
//! `<data-dir>/server/cred/admin.kubeconfig` with that kubeconfig's `system:masters` client
//! certificate, and the server writes a linearizable snapshot to
//! `<data-dir>/server/snapshots/<name>-<node id>-<unix seconds>` (the store's files are locked
//! by the running server, so nothing else may open them). `restore` works on a stopped server's
//! data dir: the old store directory is moved aside and the snapshot becomes a new one-server
//! cluster with the same keys and revisions. The schedule runs beside the server and saves
//! through the same endpoint, then keeps the newest `--snapshot-retention` scheduled files.

use anyhow::Context;
use std::path::{Path, PathBuf};

use super::join::{self, SnapshotRequest, SnapshotResponse};
use crate::store::raft::{restore_snapshot, RaftStoreConfig, SnapshotInfo};

/// Name prefix of scheduled snapshots (retention only ever deletes these).
pub const SCHEDULED: &str = "scheduled";

/// The file recording that a server's data dir uses an external etcd (its endpoints).
fn datastore_marker(data_dir: &Path) -> PathBuf {
    data_dir.join("server/datastore-endpoint")
}

/// Records (`Some(endpoints)`) or clears (`None`) that the server on `data_dir` stores its data
/// in an external etcd, so `skiff snapshot` can say where snapshots come from instead.
pub fn mark_datastore(data_dir: &Path, endpoints: Option<&str>) -> anyhow::Result<()> {
    let marker = datastore_marker(data_dir);
    match endpoints {
        Some(e) => crate::pki::write_file(&marker, e.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", marker.display()))?,
        None => match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", marker.display())),
        },
    }
    Ok(())
}

/// An error when the server on `data_dir` uses an external etcd: its snapshots are etcd's job.
pub fn refuse_if_external(data_dir: &Path) -> anyhow::Result<()> {
    if let Ok(ep) = std::fs::read_to_string(datastore_marker(data_dir)) {
        anyhow::bail!(
            "this server stores its data in the external etcd at {}: snapshots are etcd's job (`etcdctl snapshot save FILE` against one member; `etcdctl snapshot restore` to restore)",
            ep.trim()
        );
    }
    Ok(())
}

/// Reads (server URL, CA PEM, client cert PEM, client key PEM) from a kubeconfig.
pub fn admin_credentials(kubeconfig: &Path) -> anyhow::Result<(String, String, String, String)> {
    use base64::Engine;
    let text = std::fs::read_to_string(kubeconfig).with_context(|| {
        format!(
            "reading {}: is this the data dir of a server that has started once? (--data-dir)",
            kubeconfig.display()
        )
    })?;
    let v: serde_json::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", kubeconfig.display()))?;
    let field = |ptr: &str| -> anyhow::Result<String> {
        v.pointer(ptr)
            .and_then(|s| s.as_str())
            .map(String::from)
            .ok_or_else(|| anyhow::anyhow!("{} has no {ptr}", kubeconfig.display()))
    };
    let b64 = |ptr: &str| -> anyhow::Result<String> {
        let raw = base64::engine::general_purpose::STANDARD.decode(field(ptr)?.trim())?;
        Ok(String::from_utf8(raw)?)
    };
    Ok((
        field("/clusters/0/cluster/server")?,
        b64("/clusters/0/cluster/certificate-authority-data")?,
        b64("/users/0/user/client-certificate-data")?,
        b64("/users/0/user/client-key-data")?,
    ))
}

/// `skiff snapshot save`: asks the server running on `data_dir` for a snapshot named `name`.
pub async fn save(data_dir: &Path, name: &str) -> anyhow::Result<SnapshotResponse> {
    refuse_if_external(data_dir)?;
    let (url, ca, cert, key) = admin_credentials(&data_dir.join("server/cred/admin.kubeconfig"))?;
    let tls = join::client_tls(Some(&ca), Some((&cert, &key)))?;
    let body = serde_json::to_vec(&SnapshotRequest { name: name.to_string() })?;
    let (status, answer) =
        join::https_call(tls, hyper::Method::POST, &format!("{url}{}", join::SNAPSHOT_PATH), Some(body))
            .await
            .with_context(|| format!("asking the server at {url} for a snapshot: is `skiff server` running?"))?;
    if !status.is_success() {
        anyhow::bail!("the server refused the snapshot ({status}): {}", String::from_utf8_lossy(&answer));
    }
    Ok(serde_json::from_slice(&answer)?)
}

/// One saved snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// Unix seconds of the last modification.
    pub created: i64,
}

/// `skiff snapshot ls`: the snapshots in `<data-dir>/server/snapshots`, oldest first.
pub fn list(data_dir: &Path) -> anyhow::Result<Vec<Listed>> {
    refuse_if_external(data_dir)?;
    let dir = join::snapshot_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            continue;
        }
        let md = e.metadata()?;
        let created = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        out.push(Listed { name, path: e.path(), size: md.len(), created });
    }
    out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(out)
}

/// `skiff snapshot restore FILE --data-dir D`: makes D's store a new one-server cluster holding
/// the snapshot. D's server must be stopped; its old store moves to `server/db.old-<seconds>`.
pub fn restore(file: &Path, data_dir: &Path) -> anyhow::Result<SnapshotInfo> {
    refuse_if_external(data_dir)?;
    let dir = data_dir.join("server/db");
    if dir.exists() {
        let old = data_dir.join(format!("server/db.old-{}", chrono::Utc::now().timestamp()));
        std::fs::rename(&dir, &old)
            .with_context(|| format!("moving the old store {} aside to {}", dir.display(), old.display()))?;
        tracing::info!(old = %old.display(), "the previous store was moved aside");
    }
    let info = restore_snapshot(file, &RaftStoreConfig::new(dir.clone()))
        .with_context(|| format!("restoring {} into {}", file.display(), dir.display()))?;
    // The restored store is a new one-server cluster: this server is node 1 again (also if
    // restarted with --server still set).
    crate::pki::write_file(&join::node_id_path(data_dir), b"1", 0o644).context("writing the node id")?;
    Ok(info)
}

/// Keeps the newest `retention` scheduled snapshots; returns the deleted paths.
pub fn prune(data_dir: &Path, retention: usize) -> anyhow::Result<Vec<PathBuf>> {
    let scheduled: Vec<Listed> =
        list(data_dir)?.into_iter().filter(|l| l.name.starts_with(&format!("{SCHEDULED}-"))).collect();
    let excess = scheduled.len().saturating_sub(retention);
    let mut deleted = Vec::new();
    for l in scheduled.into_iter().take(excess) {
        std::fs::remove_file(&l.path).with_context(|| format!("deleting old snapshot {}", l.path.display()))?;
        deleted.push(l.path);
    }
    Ok(deleted)
}

/// A cron schedule, the common subset: five fields (minute hour day-of-month month
/// day-of-week), each `*`, `*/N`, a number, `A-B`, or a comma list of those, in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    fields: [Vec<bool>; 5],
}

impl Cron {
    pub fn parse(s: &str) -> Result<Cron, String> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "cron schedule {s:?} needs 5 fields (minute hour day month weekday), e.g. \"0 */12 * * *\""
            ));
        }
        let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)];
        let mut fields: [Vec<bool>; 5] = Default::default();
        for (i, (part, (lo, hi))) in parts.iter().zip(ranges).enumerate() {
            let mut set = vec![false; hi + 1];
            for item in part.split(',') {
                let (range, step) = match item.split_once('/') {
                    Some((r, n)) => {
                        (r, n.parse::<usize>().ok().filter(|n| *n > 0).ok_or(format!("bad step in {item:?}"))?)
                    }
                    None => (item, 1),
                };
                let (a, b) = if range == "*" {
                    (lo, hi)
                } else if let Some((a, b)) = range.split_once('-') {
                    (
                        a.parse().map_err(|_| format!("bad range {item:?}"))?,
                        b.parse().map_err(|_| format!("bad range {item:?}"))?,
                    )
                } else {
                    let v: usize = range.parse().map_err(|_| format!("bad value {item:?} in {s:?}"))?;
                    (v, if step > 1 { hi } else { v })
                };
                if a < lo || b > hi || a > b {
                    return Err(format!("{item:?} is outside {lo}-{hi} in {s:?}"));
                }
                for v in (a..=b).step_by(step) {
                    set[v] = true;
                }
            }
            fields[i] = set;
        }
        Ok(Cron { fields })
    }

    /// The first whole minute strictly after `t` that matches.
    pub fn next_after(&self, t: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        use chrono::{Datelike, DurationRound, Timelike};
        let mut m = t.duration_trunc(chrono::Duration::minutes(1)).ok()? + chrono::Duration::minutes(1);
        // Four years of minutes covers every satisfiable schedule (Feb 29 included).
        for _ in 0..(4 * 366 * 24 * 60) {
            let f = &self.fields;
            if f[3][m.month() as usize]
                && f[2][m.day() as usize]
                && f[4][m.weekday().num_days_from_sunday() as usize]
                && f[1][m.hour() as usize]
                && f[0][m.minute() as usize]
            {
                return Some(m);
            }
            m += chrono::Duration::minutes(1);
        }
        None
    }
}

/// Runs beside `skiff server`: at every matching minute saves a `scheduled` snapshot through
/// the server and prunes to `retention`. Failures are logged and retried at the next tick.
pub async fn run_schedule(
    data_dir: PathBuf,
    cron: Cron,
    retention: usize,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let now = chrono::Utc::now();
        let Some(next) = cron.next_after(now) else {
            return tracing::error!("the snapshot schedule never matches; no scheduled snapshots will be taken");
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        match save(&data_dir, SCHEDULED).await {
            Ok(r) => tracing::info!(path = %r.path, revision = r.revision, "scheduled snapshot saved"),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "scheduled snapshot failed");
                continue;
            }
        }
        match prune(&data_dir, retention) {
            Ok(d) if !d.is_empty() => tracing::info!(deleted = ?d, "old scheduled snapshots deleted"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "pruning scheduled snapshots failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn cron_daily_at_a_fixed_time_fires_once_a_day() {
        let c = Cron::parse("30 2 * * *").unwrap();
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 2, 30, 0).unwrap();
        assert_eq!(c.next_after(t), Some(chrono::Utc.with_ymd_and_hms(2026, 1, 2, 2, 30, 0).unwrap()));
    }

    #[test]
    fn cron_steps_fire_every_n_units() {
        let c = Cron::parse("0 */12 * * *").unwrap();
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(c.next_after(t), Some(chrono::Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()));
        let c = Cron::parse("*/5 * * * *").unwrap();
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 7, 12).unwrap();
        assert_eq!(c.next_after(t), Some(chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 10, 0).unwrap()));
    }

    #[test]
    fn cron_rejects_malformed_schedules_with_a_hint() {
        assert!(Cron::parse("* * *").unwrap_err().contains("5 fields"));
        assert!(Cron::parse("61 * * * *").is_err());
        assert!(Cron::parse("*/0 * * * *").is_err());
    }

    #[test]
    fn snapshots_of_a_server_on_an_external_etcd_are_refused_with_a_pointer_to_etcdctl() {
        let d = tempfile::tempdir().unwrap();
        mark_datastore(d.path(), Some("https://e1:2379")).unwrap();
        let e = list(d.path()).unwrap_err().to_string();
        assert!(e.contains("etcd's job") && e.contains("https://e1:2379"), "{e}");
        assert!(restore(&d.path().join("x"), d.path()).is_err());
        mark_datastore(d.path(), None).unwrap();
        assert!(list(d.path()).unwrap().is_empty());
    }

    #[test]
    fn prune_keeps_the_newest_scheduled_snapshots_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = join::snapshot_dir(d.path());
        std::fs::create_dir_all(&dir).unwrap();
        for (i, n) in ["scheduled-1-100", "scheduled-1-200", "on-demand-1-150", "scheduled-1-300"].iter().enumerate() {
            let p = dir.join(n);
            std::fs::write(&p, b"x").unwrap();
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
        }
        let deleted = prune(d.path(), 2).unwrap();
        assert_eq!(deleted, vec![dir.join("scheduled-1-100")]);
        let left: Vec<String> = list(d.path()).unwrap().into_iter().map(|l| l.name).collect();
        assert_eq!(left, vec!["scheduled-1-200", "on-demand-1-150", "scheduled-1-300"]);
    }
}
