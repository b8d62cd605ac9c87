//! Attempt counters of the retry simulation, bounded in entries and bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// At most this many keys are tracked; the oldest is forgotten first.
const MAX_KEYS: usize = 10_000;
/// At most this many bytes of keys are tracked.
const MAX_KEY_BYTES: usize = 4 << 20;

/// Counts failed attempts per key (the request's `uuid`).
#[derive(Debug, Default)]
pub(crate) struct RetryTracker {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    failures: HashMap<String, u64>,
    /// Keys in insertion order, for eviction.
    order: VecDeque<String>,
    key_bytes: usize,
}

impl RetryTracker {
    /// Records an attempt for `key` and says whether it must fail: the first
    /// `succeed_after` attempts for a key fail, later ones succeed.
    pub(crate) fn attempt_fails(&self, key: &str, succeed_after: u64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(failures) = inner.failures.get_mut(key) {
            if *failures < succeed_after {
                *failures += 1;
                return true;
            }
            return false;
        }
        if succeed_after == 0 {
            return false;
        }
        while !inner.order.is_empty()
            && (inner.order.len() >= MAX_KEYS || inner.key_bytes + key.len() > MAX_KEY_BYTES)
        {
            if let Some(oldest) = inner.order.pop_front() {
                inner.key_bytes -= oldest.len();
                inner.failures.remove(&oldest);
            }
        }
        inner.key_bytes += key.len();
        inner.order.push_back(key.to_owned());
        inner.failures.insert(key.to_owned(), 1);
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_the_first_n_attempts_per_key() {
        let tracker = RetryTracker::default();
        let run = |key, n| {
            (0..4)
                .map(|_| tracker.attempt_fails(key, n))
                .collect::<Vec<_>>()
        };
        assert_eq!(run("a", 2), [true, true, false, false]);
        assert_eq!(run("b", 0), [false, false, false, false]);
        assert_eq!(run("c", 1), [true, false, false, false]);
        // Keys are independent, and a finished key keeps succeeding.
        assert!(!tracker.attempt_fails("a", 2));
    }

    #[test]
    fn forgets_the_oldest_keys_beyond_the_bound() {
        let tracker = RetryTracker::default();
        for i in 0..MAX_KEYS + 5 {
            assert!(tracker.attempt_fails(&format!("key-{i}"), 3));
        }
        assert_eq!(tracker.len(), MAX_KEYS);
        // key-0 was evicted: counting starts again.
        assert!(tracker.attempt_fails("key-0", 1));
        assert!(!tracker.attempt_fails("key-0", 1));
        // A recent key kept its count (1 failure so far, then a second, then success).
        let recent = format!("key-{}", MAX_KEYS + 4);
        assert!(tracker.attempt_fails(&recent, 2));
        assert!(!tracker.attempt_fails(&recent, 2));
    }

    #[test]
    fn bounds_key_bytes() {
        let tracker = RetryTracker::default();
        let big = "x".repeat(MAX_KEY_BYTES / 2 + 1);
        assert!(tracker.attempt_fails(&format!("1{big}"), 1));
        assert!(tracker.attempt_fails(&format!("2{big}"), 1));
        assert_eq!(tracker.len(), 1);
    }
}
