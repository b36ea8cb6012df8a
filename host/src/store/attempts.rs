//! Counters of attempts at secrets (logins, one-time codes, password
//! checks), for `crypto.take-attempt`: each attempt takes its slot before
//! its secret is checked, atomically, so concurrent guesses get no more
//! checks than the same guesses one after another.
//!
//! They are kept in memory, not in the redb file: counting them durably
//! would cost a write per guess and leave every guesser's counter on disk,
//! and a restart, the one thing that forgets them, is the operator's, not
//! a client's. A counter lives for its window and is swept after it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most counters one attempt may take slots on.
pub const MAX_COUNTERS: usize = 8;
/// Longest window, in seconds (a day).
pub const MAX_WINDOW_SECS: u32 = 86_400;

/// Every plugin's counters.
#[derive(Default)]
pub struct Attempts {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (plugin, key) -> its window.
    counters: HashMap<(String, String), Window>,
    /// Counters there were after the last sweep: the next sweeps when
    /// there are twice as many.
    swept: usize,
}

struct Window {
    ends: Instant,
    taken: u32,
}

impl Attempts {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a slot on each of `counters` (key, limit) of `plugin`, all or
    /// none: false when one is at its limit in its current window.
    pub fn take(&self, plugin: &str, counters: &[(String, u32)], window: Duration) -> bool {
        let now = Instant::now();
        let mut inner = self.inner();
        let live = |w: &Window| w.ends > now;
        for (key, limit) in counters {
            let taken = inner
                .counters
                .get(&(plugin.to_string(), key.clone()))
                .filter(|w| live(w))
                .map_or(0, |w| w.taken);
            if taken >= *limit {
                return false;
            }
        }
        for (key, _) in counters {
            let w = inner
                .counters
                .entry((plugin.to_string(), key.clone()))
                .or_insert(Window {
                    ends: now + window,
                    taken: 0,
                });
            if !live(w) {
                *w = Window {
                    ends: now + window,
                    taken: 0,
                };
            }
            w.taken += 1;
        }
        if inner.counters.len() >= 2 * inner.swept.max(512) {
            inner.counters.retain(|_, w| live(w));
            inner.swept = inner.counters.len();
        }
        true
    }

    /// Give back one slot on each of `keys` of `plugin` still in its window.
    pub fn passed(&self, plugin: &str, keys: &[String]) {
        let now = Instant::now();
        let mut inner = self.inner();
        for key in keys {
            if let Some(w) = inner.counters.get_mut(&(plugin.to_string(), key.clone()))
                && w.ends > now
            {
                w.taken = w.taken.saturating_sub(1);
            }
        }
    }

    /// Counters kept now (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner().counters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
        pairs.iter().map(|(k, l)| (k.to_string(), *l)).collect()
    }

    #[test]
    fn slots_are_taken_all_or_none_and_passes_give_them_back() {
        let attempts = Attempts::default();
        let minute = Duration::from_secs(60);
        let both = counters(&[("client/a", 2), ("user/ann", 3)]);
        assert!(attempts.take("p", &both, minute));
        assert!(attempts.take("p", &both, minute));
        // The client is at its limit: nothing is taken from the user.
        assert!(!attempts.take("p", &both, minute));
        let other = counters(&[("client/b", 2), ("user/ann", 3)]);
        assert!(attempts.take("p", &other, minute), "ann's third slot");
        assert!(!attempts.take("p", &other, minute), "ann is at 3");
        // A success gives its slot back; another plugin's keys are apart.
        attempts.passed("p", &["user/ann".to_string()]);
        assert!(attempts.take("p", &other, minute));
        assert!(attempts.take("q", &both, minute));
    }

    #[test]
    fn windows_end_and_expired_counters_are_swept() {
        let attempts = Attempts::default();
        let short = Duration::from_millis(1);
        for i in 0..2000 {
            assert!(attempts.take("p", &counters(&[(&format!("k{i}"), 1)]), short));
        }
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            attempts.take("p", &counters(&[("k0", 1)]), short),
            "a new window"
        );
        for i in 0..1100 {
            attempts.take("p", &counters(&[(&format!("n{i}"), 1)]), short);
        }
        assert!(
            attempts.len() < 2000,
            "expired counters swept: {}",
            attempts.len()
        );
    }
}
