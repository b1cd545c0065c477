//! Per-key exponential back-off, the kubelet's `flowcontrol.Backoff`: container restarts
//! (CrashLoopBackOff) and image pulls (ImagePullBackOff) both wait 10 s, then 20 s, 40 s, …
//! up to 5 min; an entry untouched for twice the maximum is forgotten, so a container that ran
//! for a long while starts again from 10 s.
//!
//! Pure: every call takes `now`, so tests drive the clock.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Upstream `kubelet.go`: `backOffPeriod = 10s`, `MaxContainerBackOff = 300s`.
pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Entry {
    backoff: Duration,
    last_update: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL, MAX)
    }
}

fn since(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, entries: HashMap::new() }
    }

    fn expired(&self, e: &Entry, now: SystemTime) -> bool {
        // flowcontrol.hasExpired: entries idle for 2 × max are reset.
        since(now, e.last_update) > self.max * 2
    }

    /// Records one more failure for `key` and returns the delay now in force.
    pub fn next(&mut self, key: &str, now: SystemTime) -> Duration {
        let (initial, max) = (self.initial, self.max);
        let fresh = match self.entries.get(key) {
            Some(e) => self.expired(e, now),
            None => true,
        };
        let e = self.entries.entry(key.to_string()).or_insert(Entry { backoff: initial, last_update: now });
        if fresh {
            e.backoff = initial;
        } else {
            e.backoff = (e.backoff * 2).min(max);
        }
        e.last_update = now;
        e.backoff
    }

    /// `IsInBackOffSince(key, event_time)`: the time left before `key` may be retried, counting
    /// from `event_time` (for a crashed container, when it finished), or `None` if it may go now.
    pub fn remaining_since(&self, key: &str, event_time: SystemTime, now: SystemTime) -> Option<(Duration, Duration)> {
        let e = self.entries.get(key)?;
        if since(event_time, e.last_update) > self.max * 2 {
            return None;
        }
        let elapsed = since(now, event_time);
        (elapsed < e.backoff).then(|| (e.backoff - elapsed, e.backoff))
    }

    /// `IsInBackOffSinceUpdate(key, now)`: back-off counted from the last recorded failure
    /// (image pulls). Returns (time left, current delay).
    pub fn remaining_since_update(&self, key: &str, now: SystemTime) -> Option<(Duration, Duration)> {
        let e = self.entries.get(key)?;
        if self.expired(e, now) {
            return None;
        }
        let elapsed = since(now, e.last_update);
        (elapsed < e.backoff).then(|| (e.backoff - elapsed, e.backoff))
    }

    /// Forgets `key` (after a successful pull, for instance).
    pub fn reset(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Drops every key starting with `prefix` (a pod's keys once the pod is gone).
    pub fn forget_prefix(&mut self, prefix: &str) {
        self.entries.retain(|k, _| !k.starts_with(prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn delays_double_from_ten_seconds_up_to_five_minutes() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|i| b.next("c", t(i)).as_secs()).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn first_crash_is_not_in_back_off_but_the_second_is() {
        let mut b = Backoff::default();
        assert_eq!(b.remaining_since("c", t(0), t(0)), None);
        b.next("c", t(0));
        // Crashed again 2 s after the restart: wait the remaining 8 s of the 10 s delay.
        let (left, delay) = b.remaining_since("c", t(2), t(4)).unwrap();
        assert_eq!((left.as_secs(), delay.as_secs()), (8, 10));
        assert_eq!(b.remaining_since("c", t(2), t(12)), None);
    }

    #[test]
    fn an_entry_idle_for_twice_the_maximum_starts_over() {
        let mut b = Backoff::default();
        for i in 0..5 {
            b.next("c", t(i));
        }
        assert_eq!(b.next("c", t(5 + 601)).as_secs(), 10);
    }

    #[test]
    fn pull_back_off_counts_from_the_last_failure() {
        let mut b = Backoff::default();
        b.next("pull", t(0));
        assert!(b.remaining_since_update("pull", t(9)).is_some());
        assert!(b.remaining_since_update("pull", t(10)).is_none());
        b.reset("pull");
        assert!(b.remaining_since_update("pull", t(1)).is_none());
    }
}
