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
//!
//! Past the floor, α buys nothing more, and what makes an answered request late is the time it
//! spends waiting: in the queue, and in a full batch whose every step serves all its rows. The
//! same rule then moves a second dial, the shed levels ([`SHED`]): each level down narrows the
//! workers' batch and the queue's share of the objective (fewer requests in the server at once,
//! so by Little's law each waits less; the rest is refused at the door), and recovery undoes them
//! before it raises α. Measured at 2× capacity (BENCHMARKS.md, "Shed levels" and "A finer shed
//! ladder"): the server's p99 of answered requests went from 2–3× over the objective to within
//! it on both packages; the converted model still answers 50–57% more than with α fixed; the direct
//! SNN, where α can buy at most a third more capacity, answers as many as with α fixed under the
//! tightest objective and up to 31% more under a looser one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
/// within the objective instead of answering everyone late. Shed levels past the first tighten it
/// ([`SHED`]).
pub const QUEUE_BUDGET: f64 = 0.5;

/// One shed level: each worker's batch is `--max-batch` divided by `batch_divisor` (at least 1),
/// and the queue budget is `queue_share` of the p99 objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shed {
    pub batch_divisor: usize,
    pub queue_share: f64,
}

/// The shed levels, from the one in force when α reaches its floor (level 0) to the tightest.
/// Level 1 is what held the objective in the measurement (batch 8 → 4, queue share 0.5 → 0.3:
/// server p99 9.6 → 6.9 ms against 7.8, answered 4 522 → 4 450 req/s, within the noise). At
/// batch 4 the queue share tightens before the batch halves again (which also halves the door's
/// "more queued than the workers can take"): in an interleaved A/B at 1.4× capacity this ladder
/// answered 18% more than 8 / 0.5 → 4 / 0.3 → 2 / 0.2 → 1 / 0.15, with the objective held by
/// both (BENCHMARKS.md, "A finer shed ladder").
pub const SHED: [Shed; 6] = [
    Shed {
        batch_divisor: 1,
        queue_share: QUEUE_BUDGET,
    },
    Shed {
        batch_divisor: 2,
        queue_share: 0.3,
    },
    Shed {
        batch_divisor: 2,
        queue_share: 0.2,
    },
    Shed {
        batch_divisor: 2,
        queue_share: 0.15,
    },
    Shed {
        batch_divisor: 4,
        queue_share: 0.15,
    },
    Shed {
        batch_divisor: 8,
        queue_share: 0.15,
    },
];

impl Shed {
    /// Level `level`, the tightest past the last.
    pub fn at(level: usize) -> Shed {
        SHED[level.min(SHED.len() - 1)]
    }

    /// The batch limit at this level for `max_batch`.
    pub fn batch_limit(&self, max_batch: usize) -> usize {
        (max_batch / self.batch_divisor).max(1)
    }

    /// The queue budget at this level for a p99 objective of `p99_ms`.
    pub fn queue_budget(&self, p99_ms: f64) -> Duration {
        Duration::from_secs_f64(p99_ms * self.queue_share / 1e3)
    }
}
/// The latency a shed request counts as in the controller's window: a miss of any objective.
pub const SHED_LATENCY: Duration = Duration::from_secs(3600);
/// A tick in which at least this share of the default-policy requests was shed is overload:
/// idle engine time in it does not count as calm. The least a server at 1.1× its capacity must
/// shed is 9%; a deep shed level at half load sheds about 3% (BENCHMARKS.md, "Shed levels").
pub const OVERLOAD_SHED_SHARE: f64 = 0.1;

/// What the controller reads of one tick's default-policy requests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// The p99 with shed requests counted at [`SHED_LATENCY`] (`None`: no requests).
    pub p99_ms: Option<f64>,
    /// The p99 of the answered requests alone (`None`: none answered).
    pub answered_p99_ms: Option<f64>,
    /// The share of the requests that were shed.
    pub shed_share: f64,
}

/// The queue budget of a default-policy request under `policy` at shed level `shed`: set while
/// adaptive α is on and its dial (α, or `learned_threshold` under the learned rule) sits at the
/// floor.
pub fn queue_budget(
    policy: &crate::exit::ExitPolicy,
    learned_threshold: Option<f64>,
    shed: usize,
) -> Option<Duration> {
    let a = policy.adaptive?;
    let dial = match policy.rule {
        crate::exit::RuleKind::Learned => learned_threshold?,
        _ => policy.alpha,
    };
    (dial <= a.floor_alpha + 1e-12).then(|| Shed::at(shed).queue_budget(a.p99_ms))
}

/// The controller's rule, free of clocks and I/O so it can be tested on synthetic series.
#[derive(Debug, Clone)]
pub struct Controller {
    /// (α, calibrated average timesteps) from the configured α (index 0) down to the floor (last).
    levels: Vec<(f64, f64)>,
    level: usize,
    /// The shed level (index into [`SHED`]); above 0 only while α is at its floor.
    shed: usize,
    calm: u32,
    /// Ticks in a row, while shedding, whose answered p99 was under `RECOVER_BELOW` × objective.
    shed_calm: u32,
    /// The last tick moved the shed level down: the next one still measures requests admitted
    /// before the move (the queue and batches it built), so it does not move it again.
    shed_settling: bool,
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
            shed: 0,
            calm: 0,
            shed_calm: 0,
            shed_settling: false,
            p99_ms: cfg.p99_ms,
        }
    }

    pub fn alpha(&self) -> f64 {
        self.levels[self.level].0
    }

    /// The shed level in force (0 unless α is at its floor and the objective is still missed).
    pub fn shed(&self) -> usize {
        self.shed
    }

    /// The engine's busy share one level up, from `utilization` now: scaled by the two levels'
    /// average timesteps (`None` at the configured α, or without a cost). One shed level up
    /// runs the same α: the same share.
    fn utilization_one_level_up(&self, utilization: f64) -> Option<f64> {
        if self.shed > 0 {
            return Some(utilization);
        }
        let up = self.levels.get(self.level.checked_sub(1)?)?.1;
        let now = self.levels[self.level].1;
        (now > 0.0 && up.is_finite()).then(|| utilization * up / now)
    }

    /// One control period: `p99_ms` of the requests answered in it (`None`: there were none) and
    /// the engine's `utilization` in it (busy share of its workers, when known). Returns the new
    /// α when it changes; a move of the shed level alone returns `None` (read [`Self::shed`]).
    /// α and the shed levels are one ladder: down through α to its floor, then through the shed
    /// levels; up the other way.
    pub fn tick(&mut self, p99_ms: Option<f64>, utilization: Option<f64>) -> Option<f64> {
        self.tick_window(
            &Window {
                p99_ms,
                answered_p99_ms: p99_ms,
                shed_share: 0.0,
            },
            utilization,
        )
    }

    /// [`Self::tick`] on a whole [`Window`]: its `p99_ms` counts shed requests as misses
    /// ([`SHED_LATENCY`]), so while the server sheds more than 1% of a tick's requests it is a
    /// miss and α stays at its floor; `answered_p99_ms` leaves them out and is what the shed
    /// levels act on (the objective is about the requests answered): a level down when it misses
    /// the objective while the engine is busy (not in the tick right after a level down, which
    /// still measures the requests admitted before it), a level up after `RECOVER_TICKS` ticks in
    /// a row under `RECOVER_BELOW` × the objective, else hold.
    pub fn tick_window(&mut self, window: &Window, utilization: Option<f64>) -> Option<f64> {
        let (p99_ms, answered_p99_ms) = (window.p99_ms, window.answered_p99_ms);
        let before = self.level;
        // While the server sheds a good share of the requests (`OVERLOAD_SHED_SHARE`), an engine
        // with idle time is not headroom: shedding keeps the queue short, and at a narrow batch
        // the workers find it empty now and then. Counting that idle time as calm let the shed
        // levels and α come back up in the middle of an overload (BENCHMARKS.md, "Shed levels").
        // A few sheds do not block recovery: the tight budget of a deep shed level sheds a few
        // percent even at half load, and would otherwise hold itself in place.
        let shedding = window.shed_share >= OVERLOAD_SHED_SHARE;
        let idle = !shedding
            && utilization
                .and_then(|u| self.utilization_one_level_up(u))
                .is_some_and(|u| u < RECOVER_UTILIZATION);
        // For the same reason, while shedding the engine counts as busy: the shed levels' short
        // queue leaves the workers idle now and then however overloaded the server is, and at
        // 70% busy a level that missed the objective would otherwise be held (BENCHMARKS.md,
        // "A finer shed ladder").
        let busy = shedding || utilization.is_none_or(|u| u >= LOWER_UTILIZATION);
        match p99_ms {
            Some(p) if p > self.p99_ms && busy => {
                self.calm = 0;
                if self.level + 1 < self.levels.len() {
                    self.level += 1;
                } else {
                    self.tick_shed(answered_p99_ms);
                }
            }
            Some(p) if p > self.p99_ms * RECOVER_BELOW && !idle => self.calm = 0,
            // No answers while the engine is busy (every request failed or was refused): hold.
            None if utilization.is_some_and(|u| u >= LOWER_UTILIZATION) => self.calm = 0,
            // Calm, or idle without shedding: the overload is over, and the shed levels now only
            // refuse requests that could be answered in time, so they come off one per tick; α
            // comes back one level per `RECOVER_TICKS` calm ticks (its hysteresis).
            _ => {
                self.calm = self.calm.saturating_add(1);
                if self.shed > 0 {
                    self.shed -= 1;
                    self.calm = 0;
                    self.shed_calm = 0;
                } else if self.calm >= RECOVER_TICKS && self.level > 0 {
                    self.level -= 1;
                    self.calm = 0;
                }
            }
        }
        (self.level != before).then(|| self.alpha())
    }

    /// A busy, slow tick with α at its floor moves the shed level on the answered requests' p99:
    /// over the objective a level down (not in the tick right after one), under
    /// `RECOVER_BELOW` × it for `RECOVER_TICKS` ticks a level up, else hold.
    fn tick_shed(&mut self, answered_p99_ms: Option<f64>) {
        let settling = std::mem::take(&mut self.shed_settling);
        match answered_p99_ms {
            Some(a) if a > self.p99_ms => {
                self.shed_calm = 0;
                if !settling && self.shed + 1 < SHED.len() {
                    self.shed += 1;
                    self.shed_settling = true;
                }
            }
            Some(a) if a < self.p99_ms * RECOVER_BELOW && self.shed > 0 => {
                self.shed_calm += 1;
                if self.shed_calm >= RECOVER_TICKS {
                    self.shed -= 1;
                    self.shed_calm = 0;
                }
            }
            _ => self.shed_calm = 0,
        }
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

/// What requests and the controller share per model: the latencies of default-policy requests
/// since the last tick, and the shed level in force (set by the controller, read by every
/// request's queue budget). The shed level is not persisted: it describes the load of the
/// moment, and a restarted server starts at level 0 (α, which is persisted, resumes where it
/// was).
#[derive(Default)]
pub struct LatencyWindows {
    windows: std::sync::RwLock<BTreeMap<String, Arc<ModelWindow>>>,
}

/// One model's samples since the last tick and its shed level.
#[derive(Default)]
struct ModelWindow {
    samples: Mutex<Vec<f64>>,
    shed: AtomicUsize,
}

/// Samples kept per model and tick at most (memory stays bounded under any load).
const MAX_SAMPLES: usize = 100_000;

impl LatencyWindows {
    pub fn new<'a>(models: impl Iterator<Item = &'a str>) -> Self {
        let w = LatencyWindows::default();
        for m in models {
            w.ensure(m);
        }
        w
    }

    /// Gives `model` a window (a model loaded after start); its shed level is kept across a swap.
    pub fn ensure(&self, model: &str) {
        if self.get(model).is_none() {
            if let Ok(mut w) = self.windows.write() {
                w.entry(model.to_string()).or_default();
            }
        }
    }

    fn get(&self, model: &str) -> Option<Arc<ModelWindow>> {
        self.windows.read().ok()?.get(model).cloned()
    }

    pub fn record(&self, model: &str, latency: Duration) {
        if let Some(w) = self.get(model) {
            if let Ok(mut w) = w.samples.lock() {
                if w.len() < MAX_SAMPLES {
                    w.push(latency.as_secs_f64() * 1e3);
                }
            }
        }
    }

    /// `model`'s shed level in force.
    pub fn shed(&self, model: &str) -> usize {
        self.get(model)
            .map_or(0, |w| w.shed.load(Ordering::Relaxed))
    }

    /// Sets `model`'s shed level; returns the level it had.
    pub fn set_shed(&self, model: &str, level: usize) -> usize {
        self.get(model)
            .map_or(0, |w| w.shed.swap(level, Ordering::Relaxed))
    }

    /// The window since the last call, and a fresh one.
    pub fn take(&self, model: &str) -> Window {
        let Some(mut samples) = self
            .get(model)
            .and_then(|w| w.samples.lock().ok().map(|mut s| std::mem::take(&mut *s)))
        else {
            return Window::default();
        };
        let all = p99(&mut samples);
        // Sorted by `p99`: the answered requests are the ones before the first shed.
        let shed_ms = SHED_LATENCY.as_secs_f64() * 1e3;
        let answered = samples.partition_point(|&x| x < shed_ms);
        let shed_share = match samples.len() {
            0 => 0.0,
            n => (n - answered) as f64 / n as f64,
        };
        Window {
            p99_ms: all,
            answered_p99_ms: p99(&mut samples[..answered]),
            shed_share,
        }
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

    /// A tick of overload at the floor: half the requests shed, the answered ones' p99 `answered`.
    fn shedding(answered: f64) -> Window {
        Window {
            p99_ms: Some(SHED_LATENCY.as_secs_f64() * 1e3),
            answered_p99_ms: Some(answered),
            shed_share: 0.5,
        }
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
        assert_eq!(queue_budget(&p, None, 0), None, "adaptive off");
        p.adaptive = Some(a);
        assert_eq!(
            queue_budget(&p, None, 0),
            None,
            "above the floor: α still buys capacity"
        );
        p.alpha = 0.8;
        assert_eq!(queue_budget(&p, None, 0), Some(Duration::from_millis(20)));
        // Shed levels tighten it: 0.3 and (past the last level, the last) 0.15 of 40 ms.
        assert_eq!(queue_budget(&p, None, 1), Some(Duration::from_millis(12)));
        assert_eq!(queue_budget(&p, None, 9), Some(Duration::from_millis(6)));
        // Under the learned rule the dial is the threshold.
        p.rule = RuleKind::Learned;
        assert_eq!(queue_budget(&p, Some(0.9), 0), None);
        assert_eq!(
            queue_budget(&p, Some(0.8), 0),
            Some(Duration::from_millis(20))
        );
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
    fn past_the_floor_it_sheds_level_by_level_and_undoes_that_first() {
        let mut c = at_floor();
        assert_eq!(c.shed(), 0);
        // Slow ticks while the engine is busy: the shed levels, one per two ticks (the tick after
        // a move still measures the requests admitted before it), up to the last.
        for want in 1..SHED.len() {
            assert_eq!(c.tick(Some(80.0), Some(0.95)), None, "α stays at its floor");
            assert_eq!(c.shed(), want);
            assert_eq!(c.tick(Some(80.0), Some(0.95)), None);
            assert_eq!(c.shed(), want, "settling");
        }
        c.tick(Some(80.0), Some(0.95));
        assert_eq!(c.shed(), SHED.len() - 1, "no level past the last");
        assert_eq!(c.alpha(), 0.8);
        // Calm (the overload is over): the shed levels come off first, one per tick, then α
        // comes back up one level per RECOVER_TICKS calm ticks.
        let mut trail = Vec::new();
        for tick in 1..=30 {
            c.tick(Some(10.0), Some(0.9));
            if trail.last().map(|&(_, s, a)| (s, a)) != Some((c.shed(), c.alpha())) {
                trail.push((tick, c.shed(), c.alpha()));
            }
        }
        let last = SHED.len() - 1;
        let mut want: Vec<_> = (0..last).rev().map(|l| (last - l, l, 0.8)).collect();
        let r = RECOVER_TICKS as usize;
        want.extend([(last + r, 0, 0.9), (last + 2 * r, 0, 0.94)]);
        assert_eq!(trail, want);
    }

    #[test]
    fn a_slow_tick_with_engine_headroom_holds_unless_the_server_sheds() {
        // A slow tick with engine headroom is not the engine's queue: hold.
        let mut c = at_floor();
        c.tick(Some(80.0), Some(0.5));
        assert_eq!(c.shed(), 0);
        // Unless the server sheds: then the idle time is the short queue's, and a missed
        // objective still takes the next level (a few sheds do not count as shedding).
        let few = Window {
            shed_share: 0.05,
            ..shedding(80.0)
        };
        c.tick_window(&few, Some(0.5));
        assert_eq!(c.shed(), 0);
        c.tick_window(&shedding(80.0), Some(0.5));
        assert_eq!(c.shed(), 1);
    }

    #[test]
    fn near_the_objective_with_engine_headroom_it_recovers() {
        // Near the objective but with an engine that has headroom at that level: recovery too.
        let mut c = at_floor();
        c.tick(Some(80.0), Some(0.95));
        assert_eq!(c.shed(), 1);
        for _ in 0..RECOVER_TICKS {
            c.tick(Some(45.0), Some(0.6));
        }
        assert_eq!((c.shed(), c.alpha()), (0, 0.8));
    }

    #[test]
    fn while_it_sheds_an_idle_engine_holds_the_dials_but_a_few_sheds_do_not() {
        // Not while the server sheds: idle time there comes from the short queue, not from a
        // fall of the load. Shed level and α hold, however idle the engine looks.
        let mut c = at_floor();
        c.tick_window(&shedding(80.0), Some(0.95));
        assert_eq!(c.shed(), 1);
        for _ in 0..10 {
            assert_eq!(c.tick_window(&shedding(45.0), Some(0.3)), None);
        }
        assert_eq!((c.shed(), c.alpha()), (1, 0.8));
        // A few sheds (a deep level's tight budget at half load) do not hold it there: with the
        // engine idle, the dials come back.
        let few = Window {
            shed_share: 0.03,
            ..shedding(45.0)
        };
        for _ in 0..RECOVER_TICKS {
            c.tick_window(&few, Some(0.3));
        }
        assert_eq!((c.shed(), c.alpha()), (0, 0.8));
    }

    #[test]
    fn shedding_at_the_floor_the_answered_p99_moves_the_levels() {
        // Shedding at the floor: the p99 with the shed requests misses every tick (α holds);
        // the answered requests' p99 moves the shed levels: over the objective a level down,
        // in the band hold, under 0.6 × it for RECOVER_TICKS ticks a level up.
        let mut c = at_floor();
        for _ in 0..3 {
            c.tick_window(&shedding(80.0), Some(0.95));
        }
        assert_eq!(c.shed(), 2);
        for _ in 0..10 {
            assert_eq!(c.tick_window(&shedding(45.0), Some(0.95)), None);
            assert_eq!(c.shed(), 2, "answered p99 in the band: hold");
        }
        for _ in 0..RECOVER_TICKS - 1 {
            c.tick_window(&shedding(10.0), Some(0.95));
        }
        c.tick_window(&shedding(45.0), Some(0.95));
        assert_eq!(c.shed(), 2, "a run of calm ticks broken by one in the band");
        for _ in 0..RECOVER_TICKS {
            c.tick_window(&shedding(10.0), Some(0.95));
        }
        assert_eq!(
            (c.shed(), c.alpha()),
            (1, 0.8),
            "a level up; α stays at its floor"
        );
        for _ in 0..10 {
            c.tick_window(&shedding(10.0), Some(0.95));
        }
        assert_eq!(
            (c.shed(), c.alpha()),
            (0, 0.8),
            "α only comes back when shedding stops"
        );
    }

    #[test]
    fn the_shed_levels_batch_limits() {
        // The batch limits of the levels for --max-batch 8 and 3.
        let limits = |mb| SHED.iter().map(|s| s.batch_limit(mb)).collect::<Vec<_>>();
        assert_eq!(limits(8), vec![8, 4, 4, 4, 2, 1]);
        assert_eq!(limits(3), vec![3, 1, 1, 1, 1, 1]);
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
    fn a_window_gives_the_p99_with_and_without_the_shed_requests() {
        let w = LatencyWindows::new(["m"].into_iter());
        for ms in 1..=98 {
            w.record("m", Duration::from_millis(ms));
        }
        w.record("m", SHED_LATENCY);
        w.record("m", SHED_LATENCY);
        let shed_ms = SHED_LATENCY.as_secs_f64() * 1e3;
        assert_eq!(
            w.take("m"),
            Window {
                p99_ms: Some(shed_ms),
                answered_p99_ms: Some(98.0),
                shed_share: 0.02
            }
        );
        assert_eq!(w.take("m"), Window::default(), "a fresh window");
        assert_eq!(w.take("other"), Window::default());
        // The shed level lives beside the window, 0 until the controller sets it.
        assert_eq!(w.shed("m"), 0);
        assert_eq!(w.set_shed("m", 2), 0);
        assert_eq!(w.shed("m"), 2);
        assert_eq!(
            w.take("m"),
            Window::default(),
            "taking a window keeps the level"
        );
        assert_eq!(w.shed("m"), 2);
        assert_eq!(w.shed("other"), 0);
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(p99(&mut v), Some(198.0));
        assert_eq!(p99(&mut [7.0]), Some(7.0));
        assert_eq!(p99(&mut []), None);
    }
}
