//! `seenn eval` on the committed packages reproduces the trainer's recorded test numbers: the Rust
//! preprocessing, engine and exit logic match the Python ones.

mod common;

use std::process::Command;

/// `seenn eval --json --check` on `pkg` with `extra` arguments; asserts it ran and agreed.
fn eval_checked(pkg: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_seenn"))
        .current_dir(common::repo())
        .args([
            "eval",
            "--json",
            "--check",
            "--quiet",
            "--concurrency",
            "8",
            "--model",
        ])
        .arg(pkg)
        .args(extra)
        .env("SEENN_LOG", "warn")
        .output()
        .expect("seenn eval runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {extra:?}: {}\n{}",
        pkg.display(),
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(v["matches_trainer"], true, "{} {extra:?}", pkg.display());
    assert_eq!(v["samples"], 10000, "the whole test set");
    v
}

#[test]
fn eval_matches_the_trainer_on_every_committed_package() {
    // The packages the trainer reported on (report.json: the Fashion-MNIST test set); imported
    // tensor packages have no trainer numbers to compare with.
    let reported = common::packages()
        .into_iter()
        .filter(|p| p.join("report.json").is_file());
    for pkg in reported {
        let v = eval_checked(&pkg, &[]);
        let checks = v["trainer_comparison"].as_array().expect("checks");
        assert!(
            checks.len() >= 3,
            "{}: compared {} numbers",
            pkg.display(),
            checks.len()
        );
        // A package with exit.onnx has its learned rule compared too.
        let m = seenn_serve::model::read_manifest(&pkg).expect("manifest");
        if m.graphs.exit.is_some() {
            let learned = checks
                .iter()
                .filter(|c| c["what"].as_str().is_some_and(|w| w.starts_with("learned")))
                .count();
            assert_eq!(
                learned,
                2,
                "{}: learned accuracy and avg timesteps",
                pkg.display()
            );
        }
    }
}

/// SEENN-II with a per-action bias (the admin's dial for `rule=policy`) through the engine equals
/// the trainer's bias-sweep row on the test set.
#[test]
fn eval_reproduces_the_policy_bias_sweep() {
    let pkg = common::policy_package();
    let v = eval_checked(&pkg, &["--bias-scale", "-7"]);
    let policy = v["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["rule"] == "policy"))
        .expect("policy rule");
    assert_eq!(policy["setting"], "bias_scale=-7");
    let checks = v["trainer_comparison"].as_array().expect("checks");
    assert!(
        checks.iter().any(|c| c["what"] == "SEENN-II avg timesteps"),
        "{checks:?}"
    );
}
