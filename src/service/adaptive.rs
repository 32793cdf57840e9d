//! Adaptive α: under load, answer everyone a little earlier instead of refusing some.
//!
//! The controlled quantity is the p99 of the end-to-end latency of requests that run under the
//! model's *default* policy (requests that set their own `alpha` or `rule` are neither measured
//! nor changed): that is the latency the objective promises, and it includes the queue wait that
//! grows first under overload. Every tick (`--adaptive-interval-ms`) the controller reads the p99
//! of the requests answered since the last tick and moves α along the calibrated α levels
//! (calibration.json's sweep, between the configured α and the floor that costs
//! `max_accuracy_drop` on the validation split):
//!
//! - p99 above the objective while the engine is busy (at least `LOWER_UTILIZATION` of its
//!   workers' time): one level down (fewer timesteps), never below the floor;
//! - p99 below `RECOVER_BELOW` × objective (or no traffic), or an engine that would stay under
//!   `RECOVER_UTILIZATION` busy one level up, for `RECOVER_TICKS` ticks in a row: one level up,
//!   never above the configured α;
//! - in between: hold. The band and the run of calm ticks are the hysteresis that keeps α from
//!   oscillating when the load sits near capacity.
//!
//! It is an overload controller: α is the engine's dial, so it moves only when the engine is what
//! is short. A p99 over the objective while the engine has headroom (a noisy one-second window at
//! normal load, or time spent outside the engine) is not something fewer timesteps would fix.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

pub use crate::exit::AdaptiveAlpha;

/// Recovery starts only when the p99 is this far under the objective.
pub const RECOVER_BELOW: f64 = 0.6;
/// Calm ticks in a row before α moves one level back up.
pub const RECOVER_TICKS: u32 = 3;
/// A tick also counts as calm, whatever the p99, when the engine would stay busy less than this
/// share of its workers' time one level up: its busy share now, scaled by the ratio of the two
/// levels' calibrated average timesteps (an upper bound: per-request work that does not grow with
/// timesteps is scaled too). With the objective set to what the server meets at normal load,
/// about half of the one-second windows there are over it, and the p99 alone would keep α low
/// after the peak; the margin under `LOWER_UTILIZATION` keeps a raised α from being lowered again
/// at the same load.
pub const RECOVER_UTILIZATION: f64 = 0.7;
/// A missed objective lowers α only when the engine was busy at least this share of its workers'
/// time (or its utilization is unknown): below it, the queue is not what makes requests late.
pub const LOWER_UTILIZATION: f64 = 0.75;
/// Once the controller has lowered the dial to its accuracy floor, a default-policy request may
/// wait in the queue at most this share of the p99 objective (the rest is for its timesteps and
/// the transport); one that waited longer is shed with 429 when a worker reaches it. α buys
/// capacity within the accuracy bound; beyond that, the bounded wait keeps the answered requests
/// within the objective instead of answering everyone late.
pub const QUEUE_BUDGET: f64 = 0.5;
/// The latency a shed request counts as in the controller's window: a miss of any objective.
pub const SHED_LATENCY: Duration = Duration::from_secs(3600);

/// The queue budget of a default-policy request under `policy`: set while adaptive α is on and
/// its dial (α, or `learned_threshold` under the learned rule) sits at the floor.
pub fn queue_budget(
    policy: &crate::exit::ExitPolicy,
    learned_threshold: Option<f64>,
) -> Option<Duration> {
    let a = policy.adaptive?;
    let dial = match policy.rule {
        crate::exit::RuleKind::Learned => learned_threshold?,
        _ => policy.alpha,
    };
    (dial <= a.floor_alpha + 1e-12).then(|| Duration::from_secs_f64(a.p99_ms * QUEUE_BUDGET / 1e3))
}

/// The controller's rule, free of clocks and I/O so it can be tested on synthetic series.
#[derive(Debug, Clone)]
pub struct Controller {
    /// (α, calibrated average timesteps) from the configured α (index 0) down to the floor (last).
    levels: Vec<(f64, f64)>,
    level: usize,
    calm: u32,
    p99_ms: f64,
}

impl Controller {
    /// `sweep`: every (α, average timesteps) calibration measured; `current`: the α in force now.
    pub fn new(cfg: &AdaptiveAlpha, sweep: &[(f64, f64)], current: f64) -> Self {
        let mut levels: Vec<(f64, f64)> = sweep
            .iter()
            .copied()
            .filter(|(a, _)| *a < cfg.configured_alpha && *a >= cfg.floor_alpha)
            .collect();
        levels.push((cfg.configured_alpha, cost_at(sweep, cfg.configured_alpha)));
        levels.sort_by(|a, b| b.0.total_cmp(&a.0));
        levels.dedup_by(|a, b| a.0 == b.0);
        // Start at the level nearest the α in force (after a restart, where the controller was).
        let level = levels
            .iter()
            .enumerate()
            .min_by(|a, b| {
                (a.1 .0 - current)
                    .abs()
                    .total_cmp(&(b.1 .0 - current).abs())
            })
            .map_or(0, |(i, _)| i);
        Controller {
            levels,
            level,
            calm: 0,
            p99_ms: cfg.p99_ms,
        }
    }

    pub fn alpha(&self) -> f64 {
        self.levels[self.level].0
    }

    /// The engine's busy share one level up, from `utilization` now: scaled by the two levels'
    /// average timesteps (`None` at the configured α, or without a cost).
    fn utilization_one_level_up(&self, utilization: f64) -> Option<f64> {
        let up = self.levels.get(self.level.checked_sub(1)?)?.1;
        let now = self.levels[self.level].1;
        (now > 0.0 && up.is_finite()).then(|| utilization * up / now)
    }

    /// One control period: `p99_ms` of the requests answered in it (`None`: there were none) and
    /// the engine's `utilization` in it (busy share of its workers, when known). Returns the new
    /// α when it changes.
    pub fn tick(&mut self, p99_ms: Option<f64>, utilization: Option<f64>) -> Option<f64> {
        let before = self.level;
        let idle = utilization
            .and_then(|u| self.utilization_one_level_up(u))
            .is_some_and(|u| u < RECOVER_UTILIZATION);
        let busy = utilization.is_none_or(|u| u >= LOWER_UTILIZATION);
        match p99_ms {
            Some(p) if p > self.p99_ms && busy => {
                self.calm = 0;
                self.level = (self.level + 1).min(self.levels.len() - 1);
            }
            Some(p) if p > self.p99_ms * RECOVER_BELOW && !idle => self.calm = 0,
            // No answers while the engine is busy (every request failed or was refused): hold.
            None if utilization.is_some_and(|u| u >= LOWER_UTILIZATION) => self.calm = 0,
            _ => {
                self.calm = self.calm.saturating_add(1);
                if self.calm >= RECOVER_TICKS && self.level > 0 {
                    self.level -= 1;
                    self.calm = 0;
                }
            }
        }
        (self.level != before).then(|| self.alpha())
    }
}

/// Average timesteps at `alpha`, interpolated linearly between the sweep's rows (sorted or not);
/// clamped to the first or last row outside them; NaN for an empty sweep.
fn cost_at(sweep: &[(f64, f64)], alpha: f64) -> f64 {
    let mut rows: Vec<(f64, f64)> = sweep.to_vec();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return f64::NAN;
    };
    if alpha <= first.0 {
        return first.1;
    }
    if alpha >= last.0 {
        return last.1;
    }
    rows.windows(2)
        .find(|w| alpha <= w[1].0)
        .map_or(last.1, |w| {
            let (a0, c0, a1, c1) = (w[0].0, w[0].1, w[1].0, w[1].1);
            if a1 > a0 {
                c0 + (c1 - c0) * (alpha - a0) / (a1 - a0)
            } else {
                c1
            }
        })
}

/// The p99 of `samples` (nearest rank), `None` when empty.
pub fn p99(samples: &mut [f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((samples.len() as f64) * 0.99).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

/// Latencies of default-policy requests per model since the last tick.
#[derive(Default)]
pub struct LatencyWindows {
    windows: BTreeMap<String, Mutex<Vec<f64>>>,
}

/// Samples kept per model and tick at most (memory stays bounded under any load).
const MAX_SAMPLES: usize = 100_000;

impl LatencyWindows {
    pub fn new<'a>(models: impl Iterator<Item = &'a str>) -> Self {
        LatencyWindows {
            windows: models
                .map(|m| (m.to_string(), Mutex::new(Vec::new())))
                .collect(),
        }
    }

    pub fn record(&self, model: &str, latency: Duration) {
        if let Some(w) = self.windows.get(model) {
            if let Ok(mut w) = w.lock() {
                if w.len() < MAX_SAMPLES {
                    w.push(latency.as_secs_f64() * 1e3);
                }
            }
        }
    }

    /// The p99 since the last call, and a fresh window.
    pub fn take_p99(&self, model: &str) -> Option<f64> {
        let mut samples = std::mem::take(&mut *self.windows.get(model)?.lock().ok()?);
        p99(&mut samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWEEP: [(f64, f64); 6] = [
        (0.5, 1.04),
        (0.7, 1.2),
        (0.8, 1.31),
        (0.9, 1.49),
        (0.94, 1.6),
        (0.99, 1.95),
    ];

    /// Objective 50 ms, configured α 0.94, floor 0.8.
    fn cfg() -> AdaptiveAlpha {
        AdaptiveAlpha {
            p99_ms: 50.0,
            max_accuracy_drop: 0.005,
            configured_alpha: 0.94,
            floor_alpha: 0.8,
        }
    }

    fn controller() -> Controller {
        Controller::new(&cfg(), &SWEEP, 0.94)
    }

    /// A controller that two slow ticks took to its floor.
    fn at_floor() -> Controller {
        let mut c = controller();
        c.tick(Some(80.0), None);
        c.tick(Some(80.0), None);
        assert_eq!(c.alpha(), 0.8);
        c
    }

    #[test]
    fn an_idle_engine_recovers_while_the_p99_sits_near_the_objective() {
        let mut c = at_floor();
        // p99 40 ms: under the 50 ms objective but over 0.6 × it. A busy engine holds...
        for _ in 0..10 {
            assert_eq!(c.tick(Some(40.0), Some(0.95)), None);
        }
        // ...an engine busy 40% of the time recovers, one level per calm run, to the configured α.
        let mut changes = Vec::new();
        for _ in 0..10 {
            if let Some(a) = c.tick(Some(40.0), Some(0.4)) {
                changes.push(a);
            }
        }
        assert_eq!(changes, vec![0.9, 0.94]);
        // A busy engine that misses the objective lowers α again.
        assert_eq!(c.tick(Some(60.0), Some(0.9)), Some(0.9));
    }

    #[test]
    fn misses_while_the_engine_has_headroom_do_not_lower_alpha() {
        let mut c = controller();
        // Normal load with the objective at its own p99: windows alternate over and under it.
        // An engine busy half the time never lowers α...
        for i in 0..30 {
            let p = if i % 2 == 0 { 55.0 } else { 45.0 };
            assert_eq!(c.tick(Some(p), Some(0.5)), None, "tick {i}");
        }
        assert_eq!(c.alpha(), 0.94);
        // ...one under LOWER_UTILIZATION that would be over RECOVER_UTILIZATION one level up
        // (0.66 × 1.6 / 1.49 = 0.709) holds where it is...
        c.tick(Some(80.0), Some(0.95));
        assert_eq!(c.alpha(), 0.9);
        for _ in 0..10 {
            assert_eq!(c.tick(Some(55.0), Some(0.7)), None);
            assert_eq!(c.tick(Some(45.0), Some(0.66)), None);
        }
        // ...and after the peak, the same noisy windows at half load bring α back.
        let mut changes = Vec::new();
        for i in 0..10 {
            let p = if i % 2 == 0 { 55.0 } else { 45.0 };
            if let Some(a) = c.tick(Some(p), Some(0.5)) {
                changes.push(a);
            }
        }
        assert_eq!(changes, vec![0.94]);
    }

    #[test]
    fn the_queue_budget_applies_only_at_the_floor() {
        use crate::exit::{ExitPolicy, RuleKind};
        let a = AdaptiveAlpha {
            p99_ms: 40.0,
            ..cfg()
        };
        let mut p = ExitPolicy {
            rule: RuleKind::Confidence,
            alpha: 0.94,
            timesteps: 4,
            adaptive: None,
            threshold: None,
            bias_scale: None,
            shadow_fraction: 0.0,
        };
        assert_eq!(queue_budget(&p, None), None, "adaptive off");
        p.adaptive = Some(a);
        assert_eq!(
            queue_budget(&p, None),
            None,
            "above the floor: α still buys capacity"
        );
        p.alpha = 0.8;
        assert_eq!(queue_budget(&p, None), Some(Duration::from_millis(20)));
        // Under the learned rule the dial is the threshold.
        p.rule = RuleKind::Learned;
        assert_eq!(queue_budget(&p, Some(0.9)), None);
        assert_eq!(queue_budget(&p, Some(0.8)), Some(Duration::from_millis(20)));
    }

    #[test]
    fn lowers_one_level_per_slow_tick_and_stops_at_the_floor() {
        let mut c = controller();
        assert_eq!(c.alpha(), 0.94);
        assert_eq!(c.tick(Some(80.0), None), Some(0.9));
        assert_eq!(c.tick(Some(80.0), None), Some(0.8));
        for _ in 0..10 {
            assert_eq!(
                c.tick(Some(500.0), None),
                None,
                "never below the accuracy floor"
            );
        }
        assert_eq!(c.alpha(), 0.8);
    }

    #[test]
    fn recovers_after_calm_ticks_and_never_above_the_configured_alpha() {
        let mut c = at_floor();
        let mut changes = Vec::new();
        for _ in 0..20 {
            if let Some(a) = c.tick(Some(10.0), None) {
                changes.push(a);
            }
        }
        assert_eq!(
            changes,
            vec![0.9, 0.94],
            "one level per {RECOVER_TICKS} calm ticks"
        );
        assert_eq!(c.alpha(), 0.94);
        // No traffic counts as calm: a model that went idle returns to its configured α.
        let mut c = controller();
        c.tick(Some(80.0), None);
        for _ in 0..RECOVER_TICKS {
            c.tick(None, None);
        }
        assert_eq!(c.alpha(), 0.94);
        // No answers from a busy engine (every request refused or failed) is not calm.
        let mut c = controller();
        c.tick(Some(80.0), None);
        for _ in 0..10 {
            assert_eq!(c.tick(None, Some(0.95)), None);
        }
        assert_eq!(c.alpha(), 0.9);
        for _ in 0..RECOVER_TICKS {
            c.tick(None, Some(0.0));
        }
        assert_eq!(c.alpha(), 0.94);
    }

    #[test]
    fn holds_in_the_band_and_does_not_oscillate_near_capacity() {
        let mut c = controller();
        c.tick(Some(60.0), None);
        assert_eq!(c.alpha(), 0.9);
        // Latency that settles inside the band (between 0.6× and 1× the objective): no move.
        for p in [45.0, 31.0, 49.9, 35.0, 40.0, 30.5, 48.0, 33.0, 41.0, 44.0] {
            assert_eq!(c.tick(Some(p), None), None, "{p} ms is inside the band");
        }
        // Load flapping around the objective: α only steps down, and a calm tick between two
        // slow ones does not send it back up.
        let mut ups = 0;
        for i in 0..30 {
            let p = if i % 2 == 0 { 55.0 } else { 20.0 };
            if let Some(a) = c.tick(Some(p), None) {
                if a > 0.85 && p < 50.0 {
                    ups += 1;
                }
            }
        }
        assert_eq!(ups, 0);
        assert_eq!(c.alpha(), 0.8);
    }

    #[test]
    fn resumes_at_the_level_it_was_saved_at() {
        assert_eq!(Controller::new(&cfg(), &SWEEP, 0.9).alpha(), 0.9);
    }

    #[test]
    fn level_costs_interpolate_the_sweep() {
        assert_eq!(cost_at(&SWEEP, 0.9), 1.49);
        assert!((cost_at(&SWEEP, 0.85) - 1.40).abs() < 1e-12);
        assert_eq!(cost_at(&SWEEP, 0.1), 1.04);
        assert_eq!(cost_at(&SWEEP, 1.0), 1.95);
        assert!(cost_at(&[], 0.9).is_nan());
        // A configured α between two rows gets its interpolated cost as level 0.
        let configured = AdaptiveAlpha {
            configured_alpha: 0.92,
            ..cfg()
        };
        let c = Controller::new(&configured, &SWEEP, 0.92);
        assert_eq!(c.levels[0].0, 0.92);
        assert!((c.levels[0].1 - 1.545).abs() < 1e-9);
        assert_eq!(c.levels.len(), 3);
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(p99(&mut v), Some(198.0));
        assert_eq!(p99(&mut [7.0]), Some(7.0));
        assert_eq!(p99(&mut []), None);
    }
}
