//! Shadow runs: an online estimate of what early exit costs in accuracy, without labels.
//!
//! A request on the model's default policy that exits before the model's T is answered at once as
//! usual; a sampled fraction of those (the policy's `shadow_fraction`) then keeps its row in the
//! worker's batch and runs on to T. There its class is compared with the class it answered, and
//! `seenn_shadow_total{agree}` counts the result. A shadow is the lowest-priority work there is:
//!
//! - it only starts in a spare row: at most [`default_rows`] shadow rows per worker (each one costs
//!   a row's share of every step it is in), and never while requests wait in the queue (the server
//!   is saturated then);
//! - newcomers take rows from shadows first (the fewest timesteps run go first, as they have the
//!   most left): a worker admits waiting requests up to the batch width in live rows whatever its
//!   shadows, so requests that still wait after an admission mean a batch full of live rows and no
//!   shadow left in it;
//! - it is not a request: no client, deadline, answer or request metric (`seenn_active_requests`,
//!   timesteps, exits, batch size) sees it; `seenn_shadow_rows` and `seenn_shadow_steps_total` do.
//!
//! Every sampled shadow that does not reach T is counted in `seenn_shadow_dropped_total`. Dropping
//! depends on load, not on the input, so the shadows that finish stay a fair sample of the early
//! exits (under traffic whose content does not change with load).

use std::hash::{BuildHasher, Hasher};

use crate::exit::RuleKind;

/// A row whose answer was sent and that keeps running to T.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shadow {
    /// The rule the answer was given under (the `rule` label of `seenn_shadow_total`).
    pub rule: RuleKind,
    /// The class that was answered.
    pub class_id: usize,
}

/// Shadow rows a worker may hold at once unless `--max-shadow-rows` says otherwise: one per eight
/// rows of `--max-batch`, at least one. On a CPU, where a step costs about the same per row at any
/// batch size, one shadow row among eight live ones makes a full step about 1/8 longer at most.
pub fn default_rows(max_batch: usize) -> usize {
    (max_batch / 8).max(1)
}

/// Which shadow rows to evict to free `n` rows: `rows` holds (row index, timesteps run) of every
/// shadow; the ones with the fewest timesteps go first (they have the most steps left, and the
/// least work is lost). Returns their indices in descending order, so that removing them one by
/// one with `swap_remove` never moves a row still to be removed.
pub fn eviction(rows: &mut [(usize, usize)], n: usize) -> Vec<usize> {
    rows.sort_by_key(|&(i, t)| (t, std::cmp::Reverse(i)));
    let mut out: Vec<usize> = rows.iter().take(n).map(|&(i, _)| i).collect();
    out.sort_unstable_by(|a, b| b.cmp(a));
    out
}

/// Picks which early exits become shadows, without a random-number dependency: error diffusion
/// with a dithered threshold. Every eligible exit adds `fraction` to an accumulator; the exit is
/// picked when the accumulator reaches a threshold drawn uniformly from [0.5, 1.5), which then
/// takes 1 off it. The accumulator stays within [-0.5, 1.5), so after n eligible exits the number
/// picked is within 1.5 of n × fraction: the configured fraction exactly, in the long run and at
/// any traffic level. The dither (a xorshift generator seeded from the standard library's random
/// hash keys) keeps the picks from locking onto a period of the traffic: plain error diffusion at
/// 0.01 picks every 100th exit, so a client replaying a fixed cycle of inputs would always have the
/// same ones checked.
#[derive(Debug, Clone)]
pub struct Sampler {
    acc: f64,
    state: u64,
}

impl Sampler {
    /// A sampler whose dither starts from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Sampler {
            acc: 0.0,
            state: seed | 1,
        }
    }

    /// A sampler with a seed of its own (each worker gets a different one).
    pub fn seeded() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        Self::new(h.finish())
    }

    /// Uniform in [0, 1) (xorshift64*).
    fn unit(&mut self) -> f64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether this eligible early exit becomes a shadow, at `fraction` (0 or NaN: never; ≥ 1:
    /// always).
    pub fn sample(&mut self, fraction: f64) -> bool {
        if fraction.is_nan() || fraction <= 0.0 {
            return false;
        }
        if fraction >= 1.0 {
            return true;
        }
        self.acc += fraction;
        let threshold = 0.5 + self.unit();
        if self.acc >= threshold {
            self.acc -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_configured_fraction_within_one_and_a_half_at_every_point() {
        for (seed, f) in [(1, 0.01), (2, 0.1), (3, 0.37), (4, 0.5), (5, 0.999)] {
            let mut s = Sampler::new(seed);
            let mut picked = 0u64;
            for n in 1..=20_000u64 {
                picked += u64::from(s.sample(f));
                let want = n as f64 * f;
                assert!(
                    (picked as f64 - want).abs() < 1.5,
                    "f={f}: {picked} picked after {n} exits, want {want}"
                );
            }
        }
    }

    #[test]
    fn zero_is_off_and_one_is_every_exit() {
        let mut s = Sampler::new(7);
        assert!((0..1000).all(|_| !s.sample(0.0)));
        assert!((0..1000).all(|_| !s.sample(f64::NAN)));
        assert!((0..1000).all(|_| !s.sample(-0.5)));
        assert!((0..1000).all(|_| s.sample(1.0)));
    }

    #[test]
    fn picks_do_not_lock_onto_a_period_of_the_traffic() {
        // At 0.25, plain error diffusion would pick exit 3, 7, 11, ...: always the same input of a
        // 4-cycle. With the dither every position of the cycle gets checked.
        let mut s = Sampler::new(11);
        let mut per_phase = [0u32; 4];
        for i in 0..4000 {
            if s.sample(0.25) {
                per_phase[i % 4] += 1;
            }
        }
        let total = per_phase.iter().sum::<u32>();
        assert!(total.abs_diff(1000) <= 1, "{per_phase:?}");
        assert!(per_phase.iter().all(|&c| c > 50), "{per_phase:?}");
        // Two workers' samplers are seeded differently.
        let (mut a, mut b) = (Sampler::seeded(), Sampler::seeded());
        let pa: Vec<bool> = (0..200).map(|_| a.sample(0.3)).collect();
        let pb: Vec<bool> = (0..200).map(|_| b.sample(0.3)).collect();
        assert_ne!(pa, pb);
    }

    #[test]
    fn eviction_frees_the_rows_with_the_most_left_highest_index_first() {
        // (row, timesteps run): rows 5 and 1 have run 1 step, row 3 two, row 0 three.
        let mut rows = vec![(0, 3), (1, 1), (3, 2), (5, 1)];
        assert_eq!(eviction(&mut rows.clone(), 1), vec![5]);
        assert_eq!(eviction(&mut rows.clone(), 2), vec![5, 1]);
        assert_eq!(eviction(&mut rows.clone(), 3), vec![5, 3, 1]);
        assert_eq!(eviction(&mut rows, 10), vec![5, 3, 1, 0]);
        assert_eq!(eviction(&mut [], 2), Vec::<usize>::new());
    }

    #[test]
    fn default_rows_are_an_eighth_of_the_batch_and_at_least_one() {
        assert_eq!(default_rows(1), 1);
        assert_eq!(default_rows(8), 1);
        assert_eq!(default_rows(32), 4);
    }
}
