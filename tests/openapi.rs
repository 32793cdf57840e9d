//! The OpenAPI document: the committed proto/openapi.json is exactly what the code generates and
//! what the server serves, and every documented path and method is a real route.

mod common;

use common::*;

#[test]
fn committed_document_matches_the_code() {
    let committed = std::fs::read_to_string(repo().join("proto/openapi.json"))
        .expect("proto/openapi.json is committed");
    let generated = seenn_serve::openapi::spec_json();
    assert!(
        committed == generated,
        "proto/openapi.json is out of date with the handlers' annotations; regenerate it with \
         `./target/release/seenn openapi > proto/openapi.json`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_and_every_documented_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken-for-the-openapi-test\n").expect("write");
    let mut cfg = config(dir.path());
    cfg.admin_token_file = Some(token_file);
    let s = start(cfg).await;
    let c = client();
    let served = c
        .get(url(&s, "/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(served.status(), 200);
    let served = served.text().await.expect("body");
    assert_eq!(served, seenn_serve::openapi::spec_json());

    let doc: serde_json::Value = serde_json::from_str(&served).expect("JSON");
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "{} paths documented", paths.len());
    let samples: serde_json::Value = c
        .get(url(&s, "/v1/models/fashion-mnist/samples"))
        .send()
        .await
        .expect("samples")
        .json()
        .await
        .expect("JSON");
    let sample = samples["samples"][0]["file"]
        .as_str()
        .expect("a sample")
        .to_string();
    for (path, ops) in paths {
        let concrete = path
            .replace("{name}", "fashion-mnist")
            .replace("{model}", "fashion-mnist")
            .replace("{version}", "1")
            .replace("{file}", &sample);
        for method in ops.as_object().expect("operations").keys() {
            let req = match method.as_str() {
                "get" => c.get(url(&s, &concrete)),
                "post" => c.post(url(&s, &concrete)).body("x"),
                "put" => c.put(url(&s, &concrete)).body("{}"),
                other => panic!("unexpected method {other} on {path}"),
            };
            let resp = req
                .bearer_auth("t0ken-for-the-openapi-test")
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            // A documented route exists: it never gets the router's fallback or 405.
            assert!(
                status != 405 && !body.contains("no such route"),
                "{method} {path} is documented but not routed ({status}: {body})"
            );
        }
    }
    s.shutdown().await;
}
