//! `seenn calibrate models/NAME --data DATA`: the package measured on the user's own labelled data
//! through the serving engine (every sample run to T with no exit): accuracy per step, AET, SEENN-I's
//! α table at several temperatures with each setting's agreement with the full-T answer, the chosen
//! default (written to `manifest.json`), `calibration.json`, golden samples from the data, and the
//! model card's calibration section with the accuracy–timesteps curve (`accuracy_vs_timesteps.svg`).

pub mod data;
mod plot;
pub mod table;

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use crate::model::{self, manifest::Manifest, LoadError, PackageError};
use crate::npy;
use crate::runtime::{self, Device, RuntimeError, SessionOptions};
use crate::simulate::SimulateError;

/// Why a package cannot be calibrated on the data, or its files not written.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(transparent)]
    Package(#[from] LoadError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Simulate(#[from] SimulateError),
    /// The calibration.json about to be written does not read back as the server reads it.
    #[error("the calibration written would not read back")]
    ReadBack(#[source] PackageError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot serialize {what}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write golden sample {name}")]
    Sample {
        name: String,
        #[source]
        source: npy::NpyError,
    },
}

/// An I/O error on `path` while doing `action` (read, write, …).
fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CalibrateError {
    let path = path.to_path_buf();
    move |source| CalibrateError::Io {
        action,
        path,
        source,
    }
}

/// A serialization error of `what`.
fn serialize(what: &'static str) -> impl FnOnce(serde_json::Error) -> CalibrateError {
    move |source| CalibrateError::Serialize { what, source }
}

#[derive(Debug, Clone, Args)]
pub struct CalibrateArgs {
    /// The model package folder.
    pub model: PathBuf,
    /// Labelled data: an .npz with `x` and `y`, or a folder of images with one subfolder per class.
    #[arg(long)]
    pub data: PathBuf,
    /// Samples of the data to keep as golden samples (the first ones, in order).
    #[arg(long, default_value_t = 8)]
    pub golden: usize,
    /// Rows per engine step.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Measure and print, but write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, env = "SEENN_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: &CalibrateArgs) -> anyhow::Result<()> {
    let manifest = model::read_manifest(&args.model)?;
    let labelled = data::load(&args.data, &manifest)?;
    let z = outputs_to_t(args, &manifest, &labelled)?;
    let agg = table::aggregates(&z, manifest.exit.aggregation);
    let t = table::table(&agg, &labelled.labels);
    print_summary(&manifest, &t);
    if args.dry_run {
        return Ok(());
    }
    Ok(write(
        &args.model,
        &args.data,
        &manifest,
        &labelled,
        &z,
        &t,
        args.golden,
    )?)
}

/// Every sample run to its last frame (T for a static input) through the engine's batch buffers
/// (`seenn simulate`), in chunks: `z[n][t]` is sample n's raw output after step t + 1.
pub fn outputs_to_t(
    args: &CalibrateArgs,
    manifest: &Manifest,
    labelled: &data::Labelled,
) -> Result<Vec<Vec<Vec<f32>>>, CalibrateError> {
    const CHUNK: usize = 1000;
    let (env, _) = runtime::init(args.ort_lib.as_deref())?;
    let opts = SessionOptions {
        device: Device::Cpu,
        intra_threads: 1,
    };
    let mut sessions = crate::graphs::load_sessions(&args.model, manifest, &env, &opts)?;
    let dims = manifest.input.dims().to_vec();
    let frame: usize = dims.iter().product();
    let per_step = manifest.input.per_step();
    let k = manifest.num_classes();
    let n = labelled.inputs.len();
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(n as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "calibrate [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut z = Vec::with_capacity(n);
    let mut first = 0;
    while first < n {
        let rows = CHUNK.min(n - first);
        let chunk = &labelled.inputs[first..first + rows];
        let (shape, data) = if per_step {
            // [N, t, …] samples to the [t, N, …] simulate takes; every sample has t frames.
            let t = chunk[0].len() / frame.max(1);
            let mut data = Vec::with_capacity(t * rows * frame);
            for f in 0..t {
                for x in chunk {
                    data.extend_from_slice(&x[f * frame..(f + 1) * frame]);
                }
            }
            let mut shape = vec![t, rows];
            shape.extend_from_slice(&dims);
            (shape, data)
        } else {
            let mut shape = vec![rows];
            shape.extend_from_slice(&dims);
            (shape, chunk.concat())
        };
        let x = npy::Array {
            shape,
            dtype: labelled.dtype,
            data,
        };
        let steps = (!per_step).then_some(manifest.timesteps);
        let sim = crate::simulate::simulate(&mut sessions, manifest, &x, steps, args.max_batch)?;
        for r in 0..rows {
            z.push(
                (0..sim.steps)
                    .map(|t| sim.outputs[(t * rows + r) * k..(t * rows + r + 1) * k].to_vec())
                    .collect(),
            );
        }
        bar.inc(rows as u64);
        first += rows;
    }
    bar.finish_and_clear();
    Ok(z)
}

fn print_summary(manifest: &Manifest, t: &table::Table) {
    let last = t.accuracy_per_t.last().copied().unwrap_or(0.0);
    println!(
        "{}: {} samples, accuracy at t = 1..{}: {}",
        manifest.name,
        t.samples,
        t.timesteps,
        t.accuracy_per_t
            .iter()
            .map(|a| format!("{:.2}", a * 100.0))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!(
        "AET {:.3}; chosen: temperature {}, α {} → {:.2}% at {:.3} timesteps (full T {:.2}%), \
         agreement with full T {:.2}% ({})",
        t.aet,
        t.chosen.temperature,
        t.chosen.alpha,
        t.chosen.accuracy * 100.0,
        t.chosen.avg_timesteps,
        last * 100.0,
        t.chosen.agreement_with_full_t * 100.0,
        t.chosen_by
    );
    if t.chosen.avg_timesteps >= t.timesteps as f64 - 1e-9 {
        println!(
            "warning: no setting exits before T at full-T accuracy on this data; every request will run all {} steps",
            t.timesteps
        );
    }
}

fn write(
    dir: &Path,
    data_path: &Path,
    manifest: &Manifest,
    labelled: &data::Labelled,
    z: &[Vec<Vec<f32>>],
    t: &table::Table,
    golden_count: usize,
) -> Result<(), CalibrateError> {
    let data_name = data_path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The α sweep at every temperature tried.
    let temperature_sweep: Vec<_> = table::TEMPERATURES
        .iter()
        .map(|&temp| json!({"temperature": temp, "alpha_sweep": table::sweep_at(t, temp)}))
        .collect();
    let calibration = json!({
        "split": format!("user data: {data_name}"),
        "samples": t.samples,
        "accuracy_per_t": t.accuracy_per_t,
        "aet": t.aet,
        "empirical_earliest": t.empirical_earliest,
        "temperature": t.chosen.temperature,
        "chosen_alpha": t.chosen.alpha,
        "chosen_by": t.chosen_by,
        "aggregation": manifest.exit.aggregation,
        "alpha_sweep": table::sweep_at(t, t.chosen.temperature),
        "temperature_sweep": temperature_sweep,
        "made_by": "seenn calibrate (the serving engine, every sample run to T)",
    });
    // Check it reads back as the server will read it.
    let text = serde_json::to_string_pretty(&calibration).map_err(serialize("calibration.json"))?;
    model::parse_calibration(text.as_bytes(), manifest.timesteps)
        .map_err(CalibrateError::ReadBack)?;

    // manifest.json: the chosen default, every other field as it was.
    let mpath = dir.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).map_err(io("read", &mpath))?)
            .map_err(|source| CalibrateError::Json {
                path: mpath.clone(),
                source,
            })?;
    m["exit"]["default_alpha"] = json!(t.chosen.alpha);
    m["exit"]["temperature"] = json!(t.chosen.temperature);
    m["exit"]["default_rule"] = json!("confidence");

    let golden = golden(dir, manifest, labelled, z, t, golden_count)?;
    let card = card(dir, manifest, t, &data_name);
    let svg = plot::curve(&manifest.name, t);

    // Everything prepared: write, the manifest last (a reader sees the old default until then).
    let put = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &p).map_err(io("replace", &p))
    };
    put("calibration.json", text.as_bytes())?;
    put("golden.json", golden.as_bytes())?;
    put("MODEL_CARD.md", card.as_bytes())?;
    put("accuracy_vs_timesteps.svg", svg.as_bytes())?;
    let mtext = serde_json::to_string_pretty(&m).map_err(serialize("manifest.json"))? + "\n";
    put("manifest.json", mtext.as_bytes())?;
    println!(
        "wrote {}: calibration.json, golden.json (+ samples/), MODEL_CARD.md, accuracy_vs_timesteps.svg; \
         manifest.json now defaults to α {} at temperature {}",
        dir.display(),
        t.chosen.alpha,
        t.chosen.temperature
    );
    Ok(())
}

/// golden.json from the first samples of the data, with their true labels.
fn golden(
    dir: &Path,
    manifest: &Manifest,
    labelled: &data::Labelled,
    z: &[Vec<Vec<f32>>],
    t: &table::Table,
    count: usize,
) -> Result<String, CalibrateError> {
    let samples_dir = dir.join("samples");
    std::fs::create_dir_all(&samples_dir).map_err(io("create", &samples_dir))?;
    let is_image = !labelled.files.is_empty();
    let mut entries = Vec::new();
    for i in 0..count.min(labelled.inputs.len()) {
        let file = if is_image {
            let src = &labelled.files[i];
            let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("png");
            let name = format!("samples/{i:03}.{ext}");
            std::fs::copy(src, dir.join(&name)).map_err(io("copy", src))?;
            name
        } else {
            let name = format!("samples/{i:03}.npy");
            let bytes = npy::write(labelled.dtype, &labelled.sample_shape, &labelled.inputs[i])
                .map_err(|source| CalibrateError::Sample {
                    name: name.clone(),
                    source,
                })?;
            std::fs::write(dir.join(&name), bytes).map_err(io("write", &dir.join(&name)))?;
            name
        };
        let steps = frames_of(manifest, labelled, i);
        let agg = table::aggregates(&z[i..i + 1], manifest.exit.aggregation);
        let trimmed: Vec<Vec<f64>> = agg[0][..steps].to_vec();
        let (exit_t, class_id) =
            table::confidence_exits(&[trimmed], t.chosen.alpha, t.chosen.temperature)[0];
        entries.push(json!({
            "file": file,
            "label": labelled.labels[i],
            "logits": z[i][..steps],
            "exit_timestep": exit_t,
            "class_id": class_id,
        }));
    }
    serde_json::to_string(&json!({
        "rule": "confidence",
        "alpha": t.chosen.alpha,
        "temperature": t.chosen.temperature,
        "aggregation": manifest.exit.aggregation,
        "atol": 1e-4,
        "batch_size": "the calibration batch (rows are independent)",
        "labels_are": "true labels",
        "samples": entries,
    }))
    .map_err(serialize("golden.json"))
}

/// Steps a sample can run: its frames for a per-step model, else T.
fn frames_of(manifest: &Manifest, labelled: &data::Labelled, i: usize) -> usize {
    let frame: usize = manifest.input.dims().iter().product();
    match manifest.input.time {
        model::manifest::TimeMode::PerStep if frame > 0 => {
            (labelled.inputs[i].len() / frame).min(manifest.timesteps)
        }
        _ => manifest.timesteps,
    }
}

/// MODEL_CARD.md with its calibration section (re)written; the rest of the card is kept.
fn card(dir: &Path, manifest: &Manifest, t: &table::Table, data_name: &str) -> String {
    const HEAD: &str = "## Calibration";
    let old = std::fs::read_to_string(dir.join("MODEL_CARD.md"))
        .unwrap_or_else(|_| format!("# {}\n", manifest.name));
    let kept = match old.find(HEAD) {
        Some(i) => {
            let rest = &old[i + HEAD.len()..];
            let after = rest.find("\n## ").map(|j| &rest[j + 1..]).unwrap_or("");
            format!("{}{}", &old[..i], after)
        }
        None => old,
    };
    let mut s = String::new();
    s.push_str(&format!(
        "{HEAD}\n\n`seenn calibrate` on `{data_name}` ({} samples), every sample run to T = {} through the \
         serving engine; outputs aggregated by `{}`.\n\n",
        t.samples,
        t.timesteps,
        serde_json::to_value(manifest.exit.aggregation)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    ));
    s.push_str("| t | ");
    s.push_str(
        &(1..=t.timesteps)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    s.push_str(" |\n|---|");
    s.push_str(&"---|".repeat(t.timesteps));
    s.push_str("\n| accuracy (%) | ");
    s.push_str(
        &t.accuracy_per_t
            .iter()
            .map(|a| format!("{:.2}", a * 100.0))
            .collect::<Vec<_>>()
            .join(" | "),
    );
    s.push_str(&format!(
        " |\n\nAET {:.3}; empirical earliest correct step {:.3}.\n\n\
         **Default: SEENN-I at temperature {}, α {}**: {:.2}% at {:.3} timesteps on average, \
         agreeing with the full-T answer on {:.2}% of the samples; chosen as the {}.\n\n\
         Best setting per temperature (at full-T accuracy within 0.2 pp where one exists):\n\n\
         | temperature | α | accuracy | avg timesteps | agreement with full T |\n|---|---|---|---|---|\n",
        t.aet,
        t.empirical_earliest,
        t.chosen.temperature,
        t.chosen.alpha,
        t.chosen.accuracy * 100.0,
        t.chosen.avg_timesteps,
        t.chosen.agreement_with_full_t * 100.0,
        t.chosen_by
    ));
    let full = t.accuracy_per_t.last().copied().unwrap_or(0.0);
    for temp in table::TEMPERATURES {
        let best =
            table::best(t.rows.iter().filter(|r| r.temperature == temp), full).map(|(r, _)| r);
        if let Some(r) = best {
            s.push_str(&format!(
                "| {} | {} | {:.2}% | {:.3} | {:.2}% |\n",
                temp,
                r.alpha,
                r.accuracy * 100.0,
                r.avg_timesteps,
                r.agreement_with_full_t * 100.0
            ));
        }
    }
    s.push_str("\n![accuracy against average timesteps](accuracy_vs_timesteps.svg)\n");
    let mut out = kept.trim_end().to_string();
    out.push_str("\n\n");
    out.push_str(&s);
    out
}
