//! Lease-based leader election (client-go `tools/leaderelection` with a `LeaseLock`): in an HA
//! group only the server holding the coordination.k8s.io/v1 Lease runs the controllers (Lease
//! `kube-system/kube-controller-manager`) or the scheduler (`kube-system/kube-scheduler`).
//!
//! Timings are upstream's defaults: a 15 s lease, renewed every 2 s, given up if it could not be
//! renewed for 10 s, so a dead leader is replaced within about 15 s. Writes use the Lease's
//! resourceVersion, so two candidates never both win: the API server rejects the slower update.
//! On shutdown the lease is released (upstream `ReleaseOnCancel`) so a successor need not wait.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Why one acquire or renew attempt failed; the elector logs it and tries again.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Another candidate holds a valid lease.
    #[error("lease {0} is held by {1}")]
    HeldElsewhere(String, String),
    /// The API call failed (including a conflict with another candidate's write).
    #[error("lease {lease}: {source}")]
    Api {
        lease: String,
        #[source]
        source: kube::Error,
    },
}

/// Whether `me` may take `spec` at `now`: the lease is free, ours, or expired.
pub fn may_acquire(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> bool {
    let Some(s) = spec else { return true };
    let holder = s.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == me {
        return true;
    }
    let renewed = s.renew_time.as_ref().or(s.acquire_time.as_ref()).map(|t| t.0.as_second());
    let duration = i64::from(s.lease_duration_seconds.unwrap_or(LEASE_DURATION.as_secs() as i32));
    renewed.is_none_or(|r| r + duration < now.as_second())
}

/// The spec `me` writes when taking or renewing the lease.
pub fn claimed(prev: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseSpec {
    let ours = prev.and_then(|p| p.holder_identity.as_deref()) == Some(me);
    let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: if ours { prev.and_then(|p| p.acquire_time.clone()) } else { Some(MicroTime(now)) },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || prev.is_none() { transitions } else { transitions + 1 }),
        ..Default::default()
    }
}

/// One attempt to take or renew the lease.
async fn try_acquire(api: &Api<Lease>, name: &str, me: &str) -> Result<(), LeaderError> {
    let err = |source| LeaderError::Api { lease: name.to_string(), source };
    let now = Timestamp::now();
    match api.get_opt(name).await.map_err(err)? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() },
                spec: Some(claimed(None, me, now)),
            };
            api.create(&PostParams::default(), &lease).await.map_err(err)?;
        }
        Some(mut lease) => {
            if !may_acquire(lease.spec.as_ref(), me, now) {
                let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
                return Err(LeaderError::HeldElsewhere(name.to_string(), holder));
            }
            lease.spec = Some(claimed(lease.spec.as_ref(), me, now));
            // PUT with the resourceVersion we read: a concurrent candidate's write makes this
            // fail with a conflict instead of silently sharing leadership.
            api.replace(name, &PostParams::default(), &lease).await.map_err(err)?;
        }
    }
    Ok(())
}

async fn release(api: &Api<Lease>, name: &str, me: &str) {
    if let Ok(Some(mut lease)) = api.get_opt(name).await {
        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(me) {
            if let Some(s) = lease.spec.as_mut() {
                s.holder_identity = None;
                s.lease_duration_seconds = Some(1);
            }
            if let Err(e) = api.replace(name, &PostParams::default(), &lease).await {
                tracing::debug!(error = %e, lease = name, "could not release lease");
            }
        }
    }
}

/// The identity this process campaigns under: stable across restarts on one host, so a
/// restarted single server takes its own lease back at once instead of waiting for it to expire.
pub fn identity() -> String {
    crate::server::hostname()
}

/// Runs `work` while holding Lease `kube-system/<name>`, until `shutdown` fires. `work` gets a
/// token that is cancelled when leadership is lost; it is started again on re-election.
pub async fn run_as_leader<F, Fut>(client: kube::Client, name: &str, shutdown: CancellationToken, work: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_as(client, name, &identity(), shutdown, work).await
}

/// [`run_as_leader`] under an explicit identity (tests run several candidates in one process).
pub async fn run_as<F, Fut>(client: kube::Client, name: &str, me: &str, shutdown: CancellationToken, work: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, "kube-system");
    let me = me.to_string();
    loop {
        // Campaign.
        loop {
            match try_acquire(&api, name, &me).await {
                Ok(()) => break,
                Err(e) => tracing::debug!(error = %e, "not the leader yet"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY_PERIOD) => {}
            }
        }
        tracing::info!(lease = name, identity = %me, "became leader");
        let term = shutdown.child_token();
        let task = tokio::spawn(work(term.clone()));
        // Hold: renew every retry period; give up after the renew deadline without success.
        let mut last_renew = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    term.cancel();
                    let _ = task.await;
                    release(&api, name, &me).await;
                    return;
                }
                _ = tokio::time::sleep(RETRY_PERIOD) => {}
            }
            match try_acquire(&api, name, &me).await {
                Ok(()) => last_renew = Instant::now(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew leadership");
                    if last_renew.elapsed() >= RENEW_DEADLINE || matches!(e, LeaderError::HeldElsewhere(..)) {
                        break;
                    }
                }
            }
        }
        tracing::warn!(lease = name, "lost leadership; stopping until re-elected");
        term.cancel();
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn held_by(who: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            renew_time: Some(MicroTime(ts(renewed))),
            acquire_time: Some(MicroTime(ts(renewed))),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_released_own_or_expired_lease_may_be_taken() {
        assert!(may_acquire(None, "a", ts(100)));
        assert!(may_acquire(Some(&LeaseSpec::default()), "a", ts(100)));
        assert!(may_acquire(Some(&held_by("a", 99)), "a", ts(100)));
        assert!(!may_acquire(Some(&held_by("b", 90)), "a", ts(100)), "b renewed 10 s ago");
        assert!(may_acquire(Some(&held_by("b", 80)), "a", ts(100)), "b missed its 15 s");
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let taken = claimed(Some(&held_by("b", 80)), "a", ts(100));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.acquire_time, Some(MicroTime(ts(100))));
        let renewed = claimed(Some(&held_by("a", 80)), "a", ts(100));
        assert_eq!(renewed.lease_transitions, Some(2));
        assert_eq!(renewed.acquire_time, Some(MicroTime(ts(80))));
        assert_eq!(renewed.renew_time, Some(MicroTime(ts(100))));
        assert_eq!(claimed(None, "a", ts(1)).lease_transitions, Some(0));
    }
}
