//! The scheduling queue, after upstream `PriorityQueue`'s three parts: an active queue of pods
//! to try now, a back-off set of pods waiting out `1s·2^(attempts-1)` (capped at 10 s) after a
//! failure, and an unschedulable set of pods that fit nowhere and wait for the cluster to change
//! (a node appears or changes, a pod goes away) or for 5 minutes to pass.
//!
//! Pure: time comes in as arguments, so the policy is unit-tested without sleeping.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Upstream `podInitialBackoffDuration`.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Upstream `podMaxBackoffDuration`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Upstream `podMaxInUnschedulablePodsDuration`: retry even if nothing seems to have changed.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

/// Back-off after `attempts` failed tries.
pub fn backoff(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF)
}

/// A pod handed out by [`Queue::pop`], remembering the cluster epoch it was tried in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub key: String,
    epoch: u64,
}

#[derive(Debug, Default)]
pub struct Queue {
    active: VecDeque<String>,
    queued: HashSet<String>,
    backoff: HashMap<String, Instant>,
    unschedulable: HashMap<String, Instant>,
    attempts: HashMap<String, u32>,
    in_flight: HashSet<String>,
    /// Bumped whenever the cluster changes in a way that may make pods schedulable; a pod that
    /// failed in an older epoch goes to back-off rather than waiting for another change.
    epoch: u64,
}

impl Queue {
    /// A pod that needs scheduling was added or changed.
    pub fn add(&mut self, key: &str, now: Instant) {
        if self.queued.contains(key) || self.backoff.contains_key(key) || self.in_flight.contains(key) {
            return;
        }
        if let Some(since) = self.unschedulable.remove(key) {
            // An update to the pod itself may have made it schedulable: retry after its back-off.
            self.requeue_after_backoff(key, since, now);
            return;
        }
        self.push_active(key);
    }

    /// The pod no longer needs scheduling (bound elsewhere, deleted).
    pub fn remove(&mut self, key: &str) {
        if self.queued.remove(key) {
            self.active.retain(|k| k != key);
        }
        self.backoff.remove(key);
        self.unschedulable.remove(key);
        self.attempts.remove(key);
    }

    /// The next pod to try, after promoting back-offs that have expired and unschedulable pods
    /// that waited too long.
    pub fn pop(&mut self, now: Instant) -> Option<Attempt> {
        self.promote(now);
        let key = self.active.pop_front()?;
        self.queued.remove(&key);
        self.in_flight.insert(key.clone());
        Some(Attempt { key, epoch: self.epoch })
    }

    /// The attempt bound the pod.
    pub fn done(&mut self, a: &Attempt) {
        self.in_flight.remove(&a.key);
        self.attempts.remove(&a.key);
    }

    /// The pod fits on no node. If the cluster changed while we were trying, try again after
    /// back-off; otherwise wait for a change.
    pub fn unschedulable(&mut self, a: &Attempt, now: Instant) {
        self.in_flight.remove(&a.key);
        *self.attempts.entry(a.key.clone()).or_insert(0) += 1;
        if a.epoch != self.epoch {
            self.requeue_after_backoff(&a.key, now, now);
        } else {
            self.unschedulable.insert(a.key.clone(), now);
        }
    }

    /// The attempt failed for another reason (an API error): retry after back-off.
    pub fn error(&mut self, a: &Attempt, now: Instant) {
        self.in_flight.remove(&a.key);
        *self.attempts.entry(a.key.clone()).or_insert(0) += 1;
        self.requeue_after_backoff(&a.key, now, now);
    }

    /// The attempt was abandoned without a verdict (the pod vanished or was bound meanwhile).
    pub fn forget(&mut self, a: &Attempt) {
        self.in_flight.remove(&a.key);
        self.attempts.remove(&a.key);
    }

    /// Something changed that may let unschedulable pods fit (upstream
    /// `MoveAllToActiveOrBackoffQueue`).
    pub fn cluster_changed(&mut self, now: Instant) {
        self.epoch += 1;
        let keys: Vec<(String, Instant)> = self.unschedulable.drain().collect();
        for (k, since) in keys {
            self.requeue_after_backoff(&k, since, now);
        }
    }

    /// When the earliest waiting pod becomes due, if any waits.
    pub fn next_due(&self) -> Option<Instant> {
        let b = self.backoff.values().min().copied();
        let u = self.unschedulable.values().min().map(|s| *s + MAX_UNSCHEDULABLE);
        match (b, u) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn is_unschedulable(&self, key: &str) -> bool {
        self.unschedulable.contains_key(key)
    }

    pub fn len_active(&self) -> usize {
        self.active.len()
    }

    fn push_active(&mut self, key: &str) {
        if self.queued.insert(key.to_string()) {
            self.active.push_back(key.to_string());
        }
    }

    fn requeue_after_backoff(&mut self, key: &str, last_try: Instant, now: Instant) {
        let due = last_try + backoff(self.attempts.get(key).copied().unwrap_or(1));
        if due <= now {
            self.push_active(key);
        } else {
            self.backoff.insert(key.to_string(), due);
        }
    }

    fn promote(&mut self, now: Instant) {
        let due: Vec<String> = self.backoff.iter().filter(|(_, t)| **t <= now).map(|(k, _)| k.clone()).collect();
        for k in due {
            self.backoff.remove(&k);
            self.push_active(&k);
        }
        let stale: Vec<String> =
            self.unschedulable.iter().filter(|(_, t)| **t + MAX_UNSCHEDULABLE <= now).map(|(k, _)| k.clone()).collect();
        for k in stale {
            self.unschedulable.remove(&k);
            self.push_active(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_ten() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(5), Duration::from_secs(10));
        assert_eq!(backoff(100), Duration::from_secs(10));
    }

    #[test]
    fn pods_are_handed_out_once_in_arrival_order() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.add("a", now);
        q.add("b", now);
        q.add("a", now);
        assert_eq!(q.pop(now).map(|a| a.key), Some("a".into()));
        q.add("a", now); // in flight: not queued twice
        assert_eq!(q.pop(now).map(|a| a.key), Some("b".into()));
        assert_eq!(q.pop(now), None);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_cluster_change_then_their_backoff() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.add("a", t0);
        let a = q.pop(t0).expect("queued");
        q.unschedulable(&a, t0);
        assert!(q.is_unschedulable("a"));
        assert_eq!(q.pop(t0 + Duration::from_secs(30)), None, "nothing changed: keep waiting");
        q.cluster_changed(t0 + Duration::from_millis(500));
        assert_eq!(q.pop(t0 + Duration::from_millis(600)), None, "still inside the 1 s back-off");
        assert_eq!(q.pop(t0 + Duration::from_secs(1)).map(|a| a.key), Some("a".into()));
    }

    #[test]
    fn a_change_during_the_attempt_sends_the_pod_to_backoff_instead_of_waiting() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.add("a", t0);
        let a = q.pop(t0).expect("queued");
        q.cluster_changed(t0);
        q.unschedulable(&a, t0);
        assert!(!q.is_unschedulable("a"));
        assert_eq!(q.next_due(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop(t0 + Duration::from_secs(1)).map(|a| a.key), Some("a".into()));
    }

    #[test]
    fn unschedulable_pods_are_retried_after_five_minutes_regardless() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.add("a", t0);
        let a = q.pop(t0).expect("queued");
        q.unschedulable(&a, t0);
        assert_eq!(q.next_due(), Some(t0 + MAX_UNSCHEDULABLE));
        assert_eq!(q.pop(t0 + MAX_UNSCHEDULABLE).map(|a| a.key), Some("a".into()));
    }

    #[test]
    fn api_errors_back_off_exponentially() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.add("a", t0);
        let a = q.pop(t0).expect("queued");
        q.error(&a, t0);
        let t1 = t0 + Duration::from_secs(1);
        let a = q.pop(t1).expect("after 1 s");
        q.error(&a, t1);
        assert_eq!(q.pop(t1 + Duration::from_secs(1)), None, "second failure waits 2 s");
        assert!(q.pop(t1 + Duration::from_secs(2)).is_some());
    }

    #[test]
    fn removed_pods_leave_every_part_of_the_queue() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.add("a", t0);
        q.remove("a");
        assert_eq!(q.pop(t0), None);
        q.add("b", t0);
        let b = q.pop(t0).expect("queued");
        q.unschedulable(&b, t0);
        q.remove("b");
        q.cluster_changed(t0 + Duration::from_secs(60));
        assert_eq!(q.pop(t0 + Duration::from_secs(60)), None);
    }
}
