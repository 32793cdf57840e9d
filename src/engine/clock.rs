//! How busy a model's workers are: each worker records the time it spends waiting for work, and
//! busy time is the rest of its life. Waiting includes the optional spin before blocking; busy
//! includes everything a worker does for a request (admission, encoder, steps, exit scoring,
//! replies, shadow rows), so a saturated engine reads close to 100% whatever the model's mix of
//! fixed and per-step work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One worker's record: waited nanoseconds so far, and since when it waits now (0: working).
#[derive(Default)]
struct Slot {
    waited_ns: AtomicU64,
    /// Nanoseconds since the epoch, plus one, at which the current wait began; 0 while working.
    waiting_since: AtomicU64,
}

/// The busy clocks of one model's workers.
pub struct BusyClock {
    epoch: Instant,
    slots: Vec<Slot>,
}

impl BusyClock {
    pub fn new(workers: usize) -> Self {
        BusyClock {
            epoch: Instant::now(),
            slots: (0..workers).map(|_| Slot::default()).collect(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Worker `i` starts waiting for work.
    pub fn wait_begins(&self, i: usize) {
        if let Some(s) = self.slots.get(i) {
            s.waiting_since.store(self.now_ns() + 1, Ordering::Release);
        }
    }

    /// Worker `i` has work again.
    pub fn wait_ends(&self, i: usize) {
        if let Some(s) = self.slots.get(i) {
            let since = s.waiting_since.swap(0, Ordering::AcqRel);
            if since > 0 {
                let waited = self.now_ns().saturating_sub(since - 1);
                s.waited_ns.fetch_add(waited, Ordering::AcqRel);
            }
        }
    }

    /// Busy seconds summed over the workers since the clock started (a wait in progress counts
    /// up to now). Workers that have not started yet count as busy.
    pub fn busy_seconds(&self) -> f64 {
        let now = self.now_ns();
        let waited: u64 = self
            .slots
            .iter()
            .map(|s| {
                let since = s.waiting_since.load(Ordering::Acquire);
                let current = if since > 0 {
                    now.saturating_sub(since - 1)
                } else {
                    0
                };
                s.waited_ns.load(Ordering::Acquire) + current
            })
            .sum();
        let lived = now as f64 * self.slots.len() as f64;
        ((lived - waited as f64) / 1e9).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn waiting_is_not_busy_and_a_wait_in_progress_counts() {
        let c = BusyClock::new(2);
        c.wait_begins(0);
        c.wait_begins(1);
        std::thread::sleep(Duration::from_millis(50));
        // Both workers have waited since (almost) the start: next to nothing is busy.
        assert!(c.busy_seconds() < 0.005, "{}", c.busy_seconds());
        c.wait_ends(0);
        std::thread::sleep(Duration::from_millis(50));
        let b = c.busy_seconds();
        assert!((0.045..0.2).contains(&b), "worker 0 busy ~50 ms: {b}");
        c.wait_ends(1);
        c.wait_ends(1); // a second end without a begin changes nothing
        assert!(c.busy_seconds() >= b);
    }
}
