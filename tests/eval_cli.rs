//! `seenn eval` on the committed packages reproduces the trainer's recorded test numbers: the Rust
//! preprocessing, engine and exit logic match the Python ones.

mod common;

use std::process::Command;

#[test]
fn eval_matches_the_trainer_on_every_committed_package() {
    for pkg in common::packages() {
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
            .arg(&pkg)
            .env("SEENN_LOG", "warn")
            .output()
            .expect("seenn eval runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}\n{}",
            pkg.display(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
        assert_eq!(v["matches_trainer"], true, "{}", pkg.display());
        let checks = v["trainer_comparison"].as_array().expect("checks");
        assert!(
            checks.len() >= 3,
            "{}: compared {} numbers",
            pkg.display(),
            checks.len()
        );
        assert_eq!(v["samples"], 10000, "the whole test set");
    }
}
