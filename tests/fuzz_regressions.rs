//! Replays the fuzz corpora on stable Rust, without libFuzzer: every committed seed
//! (`fuzz/seeds/<target>/`) and every input that once broke a target (`fuzz/regressions/<target>/`)
//! goes through the same harness as the fuzz targets (`fuzz/harness.rs`), which asserts the
//! properties each call must keep; on top of that, the committed packages' own files must be
//! accepted and known-bad inputs refused.

#[path = "../fuzz/harness.rs"]
mod harness;
#[path = "../fuzz/kserve_harness.rs"]
mod kserve_harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use harness::{HttpOutcome, PackageFile};
use seenn_serve::error::Error;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of a corpus folder, sorted; none when the folder does not exist.
fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(repo().join(dir)) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Vec<u8>)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            !n.starts_with('.') && !n.ends_with(".md")
        })
        .map(|e| {
            let p = e.path();
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (format!("{dir}/{}", e.file_name().to_string_lossy()), data)
        })
        .collect();
    v.sort();
    v
}

/// Runs `f` on every input, collecting the panics so that one failure names every bad file.
fn replay<T>(inputs: &[(String, Vec<u8>)], f: impl Fn(&[u8]) -> T) -> Vec<(String, T)> {
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for (name, data) in inputs {
        match catch_unwind(AssertUnwindSafe(|| f(data))) {
            Ok(r) => out.push((name.clone(), r)),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failed.push(format!("{name}: {msg}"));
            }
        }
    }
    assert!(failed.is_empty(), "panicked on:\n{}", failed.join("\n"));
    out
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let v = corpus(&format!("fuzz/seeds/{target}"));
    assert!(v.len() >= 4, "fuzz/seeds/{target} holds {} files", v.len());
    v
}

/// The committed packages: (folder, manifest.json bytes, calibration.json bytes when the package
/// has one: it is optional).
fn packages() -> Vec<(PathBuf, Vec<u8>, Option<Vec<u8>>)> {
    let mut v = Vec::new();
    for root in ["models", "models-bench"] {
        for dir in seenn_serve::registry::package_dirs(&repo().join(root)).expect("package folder")
        {
            let m = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
            let c = dir
                .join("calibration.json")
                .is_file()
                .then(|| std::fs::read(dir.join("calibration.json")).expect("calibration.json"));
            v.push((dir, m, c));
        }
    }
    assert!(v.len() >= 3, "{} packages", v.len());
    v
}

fn samples() -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    for (dir, _, _) in packages() {
        let Ok(rd) = std::fs::read_dir(dir.join("samples")) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "png") {
                let data = std::fs::read(&p).expect("sample");
                v.push((p, data));
            }
        }
    }
    v.sort();
    assert!(v.len() >= 10, "{} samples", v.len());
    v
}

fn name(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

#[test]
fn http_request_seeds_and_regressions() {
    let seeds = replay(&seeds("http_request"), harness::http_request);
    let (mut images, mut tensors) = (0, 0);
    for (_, r) in &seeds {
        match r {
            Some(HttpOutcome::Image { tensor: Ok(_), .. }) => images += 1,
            Some(HttpOutcome::Tensor { check: Ok(()), .. }) => tensors += 1,
            _ => {}
        }
    }
    // The corpus reaches the end of both paths, not only the parsers' error branches.
    assert!(
        images >= 1 && tensors >= 1,
        "images {images}, tensors {tensors}"
    );
    for (file, r) in replay(
        &corpus("fuzz/regressions/http_request"),
        harness::http_request,
    ) {
        let r = r.unwrap_or_else(|| panic!("{file} is too short to frame"));
        assert!(!r.is_ok(), "{file} must be refused");
    }
}

#[test]
fn image_preprocess_seeds_and_regressions() {
    let inputs = seeds("image_preprocess");
    let results = replay(&inputs, harness::image_preprocess);
    let mut decoded = std::collections::BTreeSet::new();
    for ((_, data), (_, r)) in inputs.iter().zip(&results) {
        if let (Some(Ok(_)), Ok(f)) = (r, image::guess_format(&data[1..])) {
            decoded.insert(format!("{f:?}"));
        }
    }
    // Every accepted format has at least one seed that decodes all the way to a tensor.
    for f in ["Png", "Jpeg", "WebP", "Bmp", "Gif"] {
        assert!(
            decoded.contains(f),
            "no {f} seed decodes; decoded: {decoded:?}"
        );
    }
    for (file, r) in replay(
        &corpus("fuzz/regressions/image_preprocess"),
        harness::image_preprocess,
    ) {
        let r = r.unwrap_or_else(|| panic!("{file} is too short to frame"));
        assert!(r.is_err(), "{file} must be refused");
    }
}

#[test]
fn package_files_seeds() {
    let results = replay(&seeds("package_files"), harness::package_file);
    let (mut m, mut c, mut s) = (0, 0, 0);
    for (_, r) in &results {
        match r {
            Some(PackageFile::Manifest(Ok(_))) => m += 1,
            Some(PackageFile::Calibration { parsed: Ok(_), .. }) => c += 1,
            Some(PackageFile::State(Ok(_))) => s += 1,
            _ => {}
        }
    }
    assert!(
        m >= 1 && c >= 1 && s >= 1,
        "accepted: {m} manifests, {c} calibrations, {s} states"
    );
}

/// Manifests found by fuzzing that `Manifest::validate` once accepted although they break the
/// preprocessing or the engine: out-of-range numbers that read as infinite f32 (`input.mean`,
/// `states[].initial_value`), scale/std that normalise a pixel to infinity, and a state shape
/// whose element count overflows. See fuzz/README.md, "Findings".
#[test]
fn package_files_regressions() {
    let inputs = corpus("fuzz/regressions/package_files");
    assert!(inputs.len() >= 5, "{} regression inputs", inputs.len());
    for (file, r) in replay(&inputs, harness::package_file) {
        match r {
            Some(PackageFile::Manifest(Err(e))) => {
                assert!(!seenn_serve::error::chain(&e).is_empty(), "{file}")
            }
            _ => panic!("{file}: must be refused as a manifest"),
        }
    }
}

#[test]
fn committed_package_files_are_accepted() {
    for (dir, manifest, calibration) in packages() {
        let n = name(&dir);
        let framed = harness::package_input(harness::MANIFEST, 0, &manifest);
        let Some(PackageFile::Manifest(Ok(m))) = harness::package_file(&framed) else {
            panic!("{n}/manifest.json refused");
        };
        assert_eq!(
            Some(m.name.as_str()),
            dir.file_name().and_then(|s| s.to_str())
        );
        let t = m.timesteps;
        let Some(calibration) = calibration else {
            continue;
        };
        if t <= 64 {
            let framed = harness::package_input(harness::CALIBRATION, t, &calibration);
            assert!(
                matches!(
                    harness::package_file(&framed),
                    Some(PackageFile::Calibration { timesteps, parsed: Ok(_) }) if timesteps == t
                ),
                "{n}/calibration.json refused"
            );
        }
        // The calibration belongs to a T-step model: any other T is refused.
        let e = seenn_serve::error::chain(
            &seenn_serve::model::parse_calibration(&calibration, t + 1).unwrap_err(),
        );
        assert!(e.contains("accuracy_per_t"), "{n}: {e}");
    }
}

#[test]
fn state_files() {
    let ok = br#"{"version":1,"models":{"fashion-mnist":{"rule":"confidence","alpha":0.9,"timesteps":4},"b":{"rule":"fixed","alpha":1.0,"timesteps":2}}}"#;
    let framed = harness::package_input(harness::STATE, 0, ok);
    let Some(PackageFile::State(Ok(s))) = harness::package_file(&framed) else {
        panic!("state file refused");
    };
    assert_eq!(s.models.len(), 2);
    assert_eq!(s.models["fashion-mnist"].timesteps, 4);
    for bad in [
        &br#"{"version":1,"models":{"m":{"rule":"confidence","alpha":0.0,"timesteps":4}}}"#[..],
        br#"{"version":1,"models":{"m":{"rule":"confidence","alpha":1.5,"timesteps":4}}}"#,
        br#"{"version":1,"models":{"m":{"rule":"confidence","alpha":0.9,"timesteps":0}}}"#,
        br#"{"version":1,"models":{"m":{"rule":"greedy","alpha":0.9,"timesteps":4}}}"#,
        br#"{"version":1,"models":{"m":{"rule":"fixed","alpha":0.9}}}"#,
        br#"{"version":1,"models":{"m":{"rule":"fixed","alpha":0.9,"timesteps":-1}}}"#,
        br#"{"version":1,"models":[]}"#,
        b"{not json",
        b"",
    ] {
        let framed = harness::package_input(harness::STATE, 0, bad);
        assert!(
            matches!(
                harness::package_file(&framed),
                Some(PackageFile::State(Err(_)))
            ),
            "accepted {}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn committed_samples_preprocess_in_every_framing() {
    for (path, png) in samples() {
        let n = name(&path);
        for hint in [0, 1] {
            for resnet in [false, true] {
                let framed = harness::image_input(hint, resnet, false, &png);
                let want = if resnet { 3 * 32 * 32 } else { 28 * 28 };
                match harness::image_preprocess(&framed) {
                    Some(Ok(t)) => assert_eq!(t.len(), want, "{n}"),
                    _ => panic!("{n} (hint {hint}, resnet {resnet}) refused"),
                }
            }
        }
        // Over the pixel limit: refused as too large, before decoding.
        let framed = harness::image_input(0, false, true, &png);
        assert!(
            matches!(
                harness::image_preprocess(&framed),
                Some(Err(Error::TooLarge(_)))
            ),
            "{n}"
        );
        // As the HTTP body, raw, in JSON and in multipart.
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let json = format!(r#"{{"image":"{b64}","alpha":0.9,"top_k":3}}"#);
        let mut multipart = b"--X\r\nContent-Disposition: form-data; name=\"alpha\"\r\n\r\n0.9\r\n--X\r\nContent-Disposition: form-data; name=\"image\"; filename=\"s.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
        multipart.extend_from_slice(&png);
        multipart.extend_from_slice(b"\r\n--X--\r\n");
        for (ct, query, body) in [
            (0, "alpha=0.9", png.as_slice()),
            (9, "alpha=0.9", png.as_slice()),
            (5, "alpha=0.9&top_k=3", png.as_slice()),
            (6, "", json.as_bytes()),
            (7, "top_k=3", multipart.as_slice()),
        ] {
            match harness::http_request(&harness::http_input(ct, false, query, body)) {
                Some(HttpOutcome::Image {
                    opts,
                    bytes,
                    tensor: Ok(t),
                    ..
                }) => {
                    assert_eq!((bytes, t.len()), (png.len(), 784), "{n} as {ct}");
                    assert_eq!(opts.alpha, Some(0.9), "{n} as {ct}");
                }
                _ => panic!("{n} refused as content type {ct}"),
            }
            // The same body over a 512-byte limit is refused as too large.
            if body.len() > harness::SMALL_MAX_BODY_BYTES {
                let framed = harness::http_input(ct, true, query, body);
                assert!(
                    matches!(
                        harness::http_request(&framed),
                        Some(HttpOutcome::Rejected(Error::TooLarge(_)))
                    ),
                    "{n} as {ct} over the body limit"
                );
            }
        }
    }
}

#[test]
fn tensors_and_malformed_bodies() {
    let spec = harness::fashion_mnist();
    let values = vec!["0.25"; spec.len()].join(",");
    let ok = format!(r#"{{"tensor":[{values}],"alpha":0.9}}"#);
    match harness::http_request(&harness::http_input(6, false, "", ok.as_bytes())) {
        Some(HttpOutcome::Tensor {
            values,
            check: Ok(()),
            opts,
        }) => assert_eq!((values, opts.alpha), (784, Some(0.9))),
        _ => panic!("a 784-value tensor refused"),
    }
    for (ct, query, body) in [
        (6, "", &br#"{"tensor":[1,2,3]}"#[..]),
        (6, "", br#"{"tensor":[1e39]}"#),
        (6, "", br#"{"image":"!!"}"#),
        (6, "", br#"{"image":"aGk=","tensor":[1]}"#),
        (6, "", br#"{"image":"aGk=","colour":1}"#),
        (6, "", b"{"),
        (8, "", b"hello"),
        (0, "alpha=x", b"\x89PNG"),
        (0, "unknown=1", b"\x89PNG"),
        (0, "explain=maybe", b"\x89PNG"),
        (0, "%zz=1", b"\x89PNG"),
        (0, "", b""),
        (
            7,
            "",
            b"--X\r\nContent-Disposition: form-data; name=\"alpha\"\r\n\r\n0.9\r\n--X--\r\n",
        ),
        (7, "", b"not multipart"),
        (14, "", b"--X--\r\n"),
    ] {
        let framed = harness::http_input(ct, false, query, body);
        let r = harness::http_request(&framed).expect("framed");
        assert!(
            !r.is_ok(),
            "accepted {:?} {query:?} {}",
            harness::CONTENT_TYPES[ct],
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn kserve_request_seeds_and_regressions() {
    let seeds = replay(&seeds("kserve_request"), kserve_harness::kserve_request);
    // The hand-made seeds are what tritonclient sends: REST JSON and binary, gRPC raw and
    // contents, each accepted with one input.
    let mut accepted = 0;
    for (file, r) in &seeds {
        let name = file.rsplit('/').next().unwrap_or("");
        if name.starts_with("rest_") || name.starts_with("grpc_") {
            match r {
                Some(Ok(req)) => assert_eq!(req.inputs.len(), 1, "{file}"),
                other => panic!("{file}: the hand-made seed is refused: {other:?}"),
            }
            accepted += 1;
        }
    }
    assert_eq!(accepted, 7, "hand-made seeds (fuzz/make_kserve_seeds.py)");
    for (file, r) in replay(
        &corpus("fuzz/regressions/kserve_request"),
        kserve_harness::kserve_request,
    ) {
        assert!(!matches!(r, Some(Ok(_))), "{file}: must be refused");
    }
    // Known-bad bodies are refused with a client error that says why.
    use kserve_harness::{kserve_input, Transport};
    const BINARY_PAST_END: &[u8] = br#"{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]}"#;
    for (body, header, why) in [
        (&b"{"[..], None, "malformed"),
        (
            BINARY_PAST_END,
            Some(BINARY_PAST_END.len() as u16),
            "binary data",
        ),
        (
            br#"{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1e39]}]}"#,
            None,
            "finite",
        ),
        (
            br#"{"inputs": [], "parameters": {"alpha": [1]}}"#,
            None,
            "bool, a number or a string",
        ),
    ] {
        let r = kserve_harness::kserve_request(&kserve_input(Transport::Rest, header, body));
        match r {
            Some(Err(e)) => assert!(e.to_string().contains(why), "{e}"),
            other => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(body)),
        }
    }
}
