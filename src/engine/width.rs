//! How many requests a worker runs in one step: the batch width, chosen per model from what a
//! request-step costs at each batch size (the cost curve), measured when the model loads.
//!
//! A wider batch pays only where a step over more rows costs less per row. Every row of the batch
//! runs every step, so a request that needs all T steps waits for T steps of the whole batch: on a
//! CPU, where a step over 8 rows costs nearly 8 steps over one, batching stretches a long
//! request's time up to eightfold for a few percent of throughput. On a GPU the per-row cost falls
//! steeply with the rows, and the curve says batch. The width is a cap, never a target: a step runs
//! the rows it has, and the engine never waits to fill a batch. Requests beyond the width wait in
//! the model's queue, which is first in, first out, so the oldest request takes the next free row.

use std::time::{Duration, Instant};

use ort::session::Session;

use super::slots::Slots;
use crate::error::Error;

/// A wider batch is chosen only when it saves more than this share of a request-step's cost
/// against every narrower width measured.
pub const PAYS: f64 = 0.10;

/// Interleaved rounds over the widths, and timed steps per width in a round.
const ROUNDS: usize = 7;
const STEPS: usize = 4;

/// The width setting (`--batch-width`): measured at load, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchWidth {
    /// Measure the cost curve at load and take the narrowest width within [`PAYS`] of the
    /// cheapest.
    Auto,
    /// This many rows (at most `--max-batch`), without measuring.
    Fixed(usize),
}

impl std::str::FromStr for BatchWidth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(BatchWidth::Auto),
            n => match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(BatchWidth::Fixed(n)),
                _ => Err(format!(
                    "{s:?} is not a batch width; accepted: auto, or a number of rows from 1"
                )),
            },
        }
    }
}

impl std::fmt::Display for BatchWidth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchWidth::Auto => f.write_str("auto"),
            BatchWidth::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// What one step over `rows` rows cost when measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct CostPoint {
    pub rows: usize,
    /// The median time of one step over `rows` rows, in microseconds.
    pub step_us: f64,
    /// `step_us / rows`: what one request-step costs at this width.
    pub per_row_us: f64,
}

/// How a model's batch width was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChosenBy {
    /// The narrowest width within [`PAYS`] of the cheapest request-step on the measured curve.
    Measured,
    /// `--batch-width N`.
    Fixed,
}

impl std::fmt::Display for ChosenBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChosenBy::Measured => "measured",
            ChosenBy::Fixed => "fixed",
        })
    }
}

/// The engine's batch width for a model, and how it was chosen.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct WidthChoice {
    /// `--max-batch`: the widest the engine may go.
    pub max_batch: usize,
    /// The most requests a worker runs in one step.
    pub width: usize,
    pub chosen_by: ChosenBy,
    /// The cost curve measured at load (empty when fixed).
    pub curve: Vec<CostPoint>,
}

impl WidthChoice {
    pub fn fixed(width: usize, max_batch: usize) -> WidthChoice {
        WidthChoice {
            max_batch,
            width: width.clamp(1, max_batch.max(1)),
            chosen_by: ChosenBy::Fixed,
            curve: Vec::new(),
        }
    }

    pub fn measured(curve: Vec<CostPoint>, max_batch: usize) -> WidthChoice {
        WidthChoice {
            max_batch,
            width: choose(&curve, max_batch),
            chosen_by: ChosenBy::Measured,
            curve,
        }
    }

    /// The curve on one line for the start-up log: `1:198µs 2:190µs … → 1`.
    pub fn summary(&self) -> String {
        let points: Vec<String> = self
            .curve
            .iter()
            .map(|p| format!("{}:{:.0}µs", p.rows, p.per_row_us))
            .collect();
        format!("{} -> {}", points.join(" "), self.width)
    }
}

/// The narrowest width (at most `max_batch`) whose cost per request-step is within [`PAYS`] of
/// the cheapest on the curve: a wider batch must save more than that share to be worth its
/// rows' longer steps. An empty curve gives `max_batch`.
pub fn choose(curve: &[CostPoint], max_batch: usize) -> usize {
    let max_batch = max_batch.max(1);
    let usable: Vec<&CostPoint> = curve
        .iter()
        .filter(|p| p.rows >= 1 && p.rows <= max_batch && p.per_row_us.is_finite())
        .collect();
    let Some(best) = usable
        .iter()
        .map(|p| p.per_row_us)
        .min_by(|a, b| a.total_cmp(b))
    else {
        return max_batch;
    };
    usable
        .iter()
        .filter(|p| p.per_row_us <= best * (1.0 + PAYS))
        .map(|p| p.rows)
        .min()
        .unwrap_or(max_batch)
}

/// The widths measured: powers of two up to `max_batch`, and `max_batch` itself.
pub fn widths(max_batch: usize) -> Vec<usize> {
    let max_batch = max_batch.max(1);
    let mut w: Vec<usize> = std::iter::successors(Some(1usize), |n| n.checked_mul(2))
        .take_while(|n| *n < max_batch)
        .collect();
    w.push(max_batch);
    w
}

/// Measures the step graph's cost at each of [`widths`]: rows of `blank` (an all-zero input) are
/// admitted, warmed up once, then timed over interleaved rounds (so a burst of noise lands on
/// every width alike); each width's median step time is its point. The slots are empty after.
pub fn measure(
    slots: &mut Slots,
    encoder: Option<&mut Session>,
    step: &mut Session,
    blank: &[f32],
) -> Result<Vec<CostPoint>, Error> {
    let widths = widths(slots.capacity());
    let images: Vec<&[f32]> = vec![blank; slots.capacity()];
    let mut encoder = encoder;
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS); widths.len()];
    let result: Result<(), Error> = (|| {
        for round in 0..=ROUNDS {
            for (i, &w) in widths.iter().enumerate() {
                slots.clear();
                slots.admit(&images[..w], encoder.as_deref_mut(), true)?;
                if round == 0 {
                    // Warm-up: the binding for this width is made, caches fill.
                    slots.step(step)?;
                    continue;
                }
                let started = Instant::now();
                for _ in 0..STEPS {
                    slots.step(step)?;
                }
                samples[i].push(started.elapsed() / STEPS as u32);
            }
        }
        Ok(())
    })();
    slots.clear();
    result?;
    Ok(widths
        .iter()
        .zip(samples.iter_mut())
        .map(|(&rows, s)| {
            s.sort();
            let step_us = s.get(s.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6);
            CostPoint {
                rows,
                step_us,
                per_row_us: step_us / rows as f64,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(per_row: &[(usize, f64)]) -> Vec<CostPoint> {
        per_row
            .iter()
            .map(|&(rows, c)| CostPoint {
                rows,
                step_us: c * rows as f64,
                per_row_us: c,
            })
            .collect()
    }

    #[test]
    fn a_cpu_curve_that_barely_falls_runs_one_row() {
        // A converted network on a CPU: 8 rows save 8% a request-step.
        let c = curve(&[(1, 198.0), (2, 192.0), (4, 188.0), (8, 183.0)]);
        assert_eq!(choose(&c, 8), 1);
    }

    #[test]
    fn a_curve_that_falls_steeply_batches() {
        // A GPU: the per-row cost keeps halving.
        let c = curve(&[
            (1, 900.0),
            (2, 460.0),
            (4, 240.0),
            (8, 125.0),
            (16, 66.0),
            (32, 35.0),
            (64, 19.0),
            (128, 11.0),
            (256, 7.0),
        ]);
        assert_eq!(choose(&c, 256), 256);
        // The cap holds, and points past it are not considered.
        assert_eq!(choose(&c, 64), 64);
    }

    #[test]
    fn the_narrowest_width_within_the_margin_wins() {
        // 4 rows cost 5% more per row than 8: close enough; 2 rows 30% more: not.
        let c = curve(&[(1, 60.0), (2, 26.0), (4, 21.0), (8, 20.0)]);
        assert_eq!(choose(&c, 8), 4);
        // A curve that rises (cache pressure at 8 rows) stays narrow.
        let c = curve(&[(1, 30.0), (2, 20.0), (4, 21.5), (8, 25.0)]);
        assert_eq!(choose(&c, 8), 2);
    }

    #[test]
    fn no_curve_means_the_cap() {
        assert_eq!(choose(&[], 8), 8);
        assert_eq!(choose(&curve(&[(16, 1.0)]), 8), 8);
    }

    #[test]
    fn widths_are_powers_of_two_and_the_cap() {
        assert_eq!(widths(1), vec![1]);
        assert_eq!(widths(8), vec![1, 2, 4, 8]);
        assert_eq!(widths(12), vec![1, 2, 4, 8, 12]);
    }

    #[test]
    fn the_setting_parses() {
        assert_eq!("auto".parse::<BatchWidth>(), Ok(BatchWidth::Auto));
        assert_eq!("4".parse::<BatchWidth>(), Ok(BatchWidth::Fixed(4)));
        let e = "0".parse::<BatchWidth>().expect_err("0 rows");
        assert!(e.contains("accepted: auto"), "{e}");
        assert!("wide".parse::<BatchWidth>().is_err());
    }
}
