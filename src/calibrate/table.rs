//! The calibration table from per-step outputs and labels: accuracy per step, AET, SEENN-I's α sweep
//! at several temperatures, the agreement of every setting with the full-T answer, and the chosen
//! default. Pure functions over `z[n][t][k]`, the same formulas as the trainer (`seenn.py`).

use serde::Serialize;

use crate::model::manifest::{Aggregation, SweepRow};

/// α values every sweep tries (the trainer's grid).
pub const ALPHA_GRID: [f64; 28] = [
    0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.992, 0.994,
    0.995, 0.996, 0.997, 0.998, 0.999, 0.9993, 0.9995, 0.9997, 0.9999, 0.99995, 0.99999, 0.999999,
];

/// Temperatures the sweep tries: a sum of 0/1 spikes gives a flat softmax at temperature 1, so a
/// spiking readout usually needs one below 1; a converted network's large logits one above.
pub const TEMPERATURES: [f64; 9] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0];

/// The accuracy a chosen setting may give up against full T (0.2 percentage points).
pub const ACCURACY_TOLERANCE: f64 = 0.002;

/// Per-step outputs of N samples: `z[n][t]` is the output after step t + 1, K values.
pub struct Outputs {
    pub z: Vec<Vec<Vec<f32>>>,
    pub labels: Vec<usize>,
}

/// The aggregate Z_t of every sample and step, as the server's exit rule computes it (float64).
pub fn aggregates(z: &[Vec<Vec<f32>>], how: Aggregation) -> Vec<Vec<Vec<f64>>> {
    z.iter()
        .map(|steps| {
            let k = steps.first().map_or(0, Vec::len);
            let mut sum = vec![0.0f64; k];
            steps
                .iter()
                .enumerate()
                .map(|(t, out)| {
                    for (s, v) in sum.iter_mut().zip(out) {
                        *s += f64::from(*v);
                    }
                    match how {
                        Aggregation::Sum => sum.clone(),
                        Aggregation::Mean => sum.iter().map(|s| s / (t + 1) as f64).collect(),
                        Aggregation::Last => out.iter().map(|v| f64::from(*v)).collect(),
                    }
                })
                .collect()
        })
        .collect()
}

/// The class the server answers for an aggregate (argmax, first on ties).
fn class_of(agg: &[f64]) -> usize {
    crate::exit::score(agg, 1.0).1
}

/// One setting's result on the data.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub temperature: f64,
    pub alpha: f64,
    pub accuracy: f64,
    pub avg_timesteps: f64,
    pub exits_per_t: Vec<u64>,
    pub agreement_with_full_t: f64,
}

impl Row {
    pub fn sweep_row(&self) -> SweepRow {
        SweepRow {
            alpha: self.alpha,
            accuracy: self.accuracy,
            avg_timesteps: self.avg_timesteps,
            exits_per_t: self.exits_per_t.clone(),
            agreement_with_full_t: Some(self.agreement_with_full_t),
        }
    }
}

/// What calibration measured.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub samples: usize,
    pub timesteps: usize,
    pub accuracy_per_t: Vec<f64>,
    pub aet: f64,
    pub empirical_earliest: f64,
    /// Every (temperature, α) setting tried.
    pub rows: Vec<Row>,
    pub chosen: Row,
    pub chosen_by: String,
}

/// SEENN-I at (α, temperature): exit step (1-based) and class per sample.
pub fn confidence_exits(
    agg: &[Vec<Vec<f64>>],
    alpha: f64,
    temperature: f64,
) -> Vec<(usize, usize)> {
    agg.iter()
        .map(|steps| {
            let last = steps.len() - 1;
            // The server's own score (exit::score), so a setting exits here exactly where it would there.
            let t = (0..last)
                .find(|&t| crate::exit::score(&steps[t], temperature).0 > alpha)
                .unwrap_or(last);
            (t + 1, class_of(&steps[t]))
        })
        .collect()
}

/// The whole table. `agg` must hold at least one sample with at least one step.
pub fn table(agg: &[Vec<Vec<f64>>], labels: &[usize]) -> Table {
    let n = agg.len();
    let t_max = agg.first().map_or(0, Vec::len);
    let correct: Vec<Vec<bool>> = agg
        .iter()
        .zip(labels)
        .map(|(steps, y)| steps.iter().map(|s| class_of(s) == *y).collect())
        .collect();
    let count = |t: usize| correct.iter().filter(|c| c[t]).count() as f64;
    let accuracy_per_t: Vec<f64> = (0..t_max).map(|t| count(t) / n as f64).collect();
    // The paper's AET: (|C_1| + Σ_{t≥2} t·(|C_t| − |C_{t−1}|) + T·|W|) / N.
    let mut total = count(0);
    for t in 1..t_max {
        total += (t + 1) as f64 * (count(t) - count(t - 1));
    }
    total += t_max as f64 * (n as f64 - count(t_max - 1));
    let earliest: f64 = correct
        .iter()
        .map(|c| c.iter().position(|&x| x).map_or(t_max, |t| t + 1) as f64)
        .sum();
    let full: Vec<usize> = agg.iter().map(|s| class_of(&s[t_max - 1])).collect();
    let mut rows = Vec::new();
    for &temperature in &TEMPERATURES {
        for &alpha in &ALPHA_GRID {
            let exits = confidence_exits(agg, alpha, temperature);
            let mut exits_per_t = vec![0u64; t_max];
            for (t, _) in &exits {
                exits_per_t[t - 1] += 1;
            }
            let right = exits
                .iter()
                .zip(labels)
                .filter(|((_, c), y)| c == *y)
                .count();
            let agree = exits
                .iter()
                .zip(&full)
                .filter(|((_, c), f)| c == *f)
                .count();
            rows.push(Row {
                temperature,
                alpha,
                accuracy: right as f64 / n as f64,
                avg_timesteps: exits.iter().map(|(t, _)| *t as f64).sum::<f64>() / n as f64,
                exits_per_t,
                agreement_with_full_t: agree as f64 / n as f64,
            });
        }
    }
    let full_accuracy = accuracy_per_t[t_max - 1];
    let (chosen, chosen_by) = choose(&rows, full_accuracy);
    Table {
        samples: n,
        timesteps: t_max,
        accuracy_per_t,
        aet: total / n as f64,
        empirical_earliest: earliest / n as f64,
        rows,
        chosen,
        chosen_by,
    }
}

/// The cheapest of `rows` (fewest average steps) whose accuracy is within [`ACCURACY_TOLERANCE`]
/// of full T; ties go to the more accurate, then to the higher α. Without one: the most accurate.
/// The flag says which of the two it is.
pub fn best<'a>(
    rows: impl Iterator<Item = &'a Row> + Clone,
    full_accuracy: f64,
) -> Option<(&'a Row, bool)> {
    let within = rows
        .clone()
        .filter(|r| r.accuracy >= full_accuracy - ACCURACY_TOLERANCE - 1e-12)
        .min_by(|a, b| {
            a.avg_timesteps
                .total_cmp(&b.avg_timesteps)
                .then(b.accuracy.total_cmp(&a.accuracy))
                .then(b.alpha.total_cmp(&a.alpha))
        });
    match within {
        Some(r) => Some((r, true)),
        None => rows
            .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
            .map(|r| (r, false)),
    }
}

fn choose(rows: &[Row], full_accuracy: f64) -> (Row, String) {
    match best(rows.iter(), full_accuracy) {
        Some((r, true)) => (
            r.clone(),
            format!(
                "fewest average timesteps with accuracy within {} pp of full T ({:.2}%)",
                ACCURACY_TOLERANCE * 100.0,
                full_accuracy * 100.0
            ),
        ),
        Some((r, false)) => (r.clone(), "the most accurate setting".into()),
        None => (rows[0].clone(), "the only setting".into()),
    }
}

/// The chosen temperature's α sweep, sorted by α (what `calibration.json` stores).
pub fn sweep_at(table: &Table, temperature: f64) -> Vec<SweepRow> {
    table
        .rows
        .iter()
        .filter(|r| r.temperature == temperature)
        .map(Row::sweep_row)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs() -> Vec<Vec<Vec<f32>>> {
        // Sample 0: class 1 from the first step. Sample 1: wrong (class 0, by a margin of 1) at
        // t = 1, right by a margin of 2 from t = 2.
        vec![
            vec![vec![0.0, 3.0], vec![0.0, 3.0], vec![0.0, 3.0]],
            vec![vec![1.0, 0.0], vec![0.0, 3.0], vec![0.0, 3.0]],
        ]
    }

    #[test]
    fn sum_mean_and_last_aggregate_as_the_exit_rule_reads_them() {
        let z = outputs();
        assert_eq!(aggregates(&z, Aggregation::Sum)[1][1], vec![1.0, 3.0]);
        assert_eq!(aggregates(&z, Aggregation::Mean)[1][1], vec![0.5, 1.5]);
        assert_eq!(aggregates(&z, Aggregation::Last)[1][1], vec![0.0, 3.0]);
    }

    #[test]
    fn accuracy_aet_and_earliest_follow_the_trainer_formulas() {
        let t = table(&aggregates(&outputs(), Aggregation::Sum), &[1, 1]);
        assert_eq!(t.accuracy_per_t, vec![0.5, 1.0, 1.0]);
        // |C_1| = 1, then 2·(2 − 1) = 2, then 3·0; nobody is wrong at T: (1 + 2) / 2.
        assert!((t.aet - 1.5).abs() < 1e-12);
        assert!((t.empirical_earliest - 1.5).abs() < 1e-12);
        assert_eq!(t.rows.len(), TEMPERATURES.len() * ALPHA_GRID.len());
    }

    #[test]
    fn the_chosen_setting_keeps_full_t_accuracy_at_the_fewest_steps() {
        let t = table(&aggregates(&outputs(), Aggregation::Sum), &[1, 1]);
        assert_eq!(t.chosen.accuracy, 1.0);
        // Sample 1 must wait for t = 2: its first step is confidently wrong at a low α.
        assert_eq!(t.chosen.exits_per_t, vec![1, 1, 0]);
        assert!(t
            .rows
            .iter()
            .filter(|r| r.accuracy >= 1.0)
            .all(|r| r.avg_timesteps >= t.chosen.avg_timesteps));
    }

    #[test]
    fn confidence_is_strictly_above_alpha_and_the_last_step_always_exits() {
        let agg = vec![vec![vec![0.0, 0.0], vec![0.0, 0.0]]];
        // A flat softmax (0.5) never passes α = 0.5: the sample runs to T and answers class 0.
        assert_eq!(confidence_exits(&agg, 0.5, 1.0), vec![(2, 0)]);
    }
}
