//! The OpenAPI 3 description of the HTTP API, generated from the handlers' annotations. It is
//! served at /openapi.json, printed by `seenn openapi`, and committed as `proto/openapi.json`
//! (a test checks the committed file against this).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::http;
use crate::kserve::rest;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "seenn-serve",
        description = "Inference server for spiking neural networks with early exit (SEENN): each input runs only as many timesteps as it needs. The same models also answer the Open Inference Protocol (KServe v2) under /v2 and over gRPC.",
        license(name = "Apache-2.0")
    ),
    paths(
        http::classify_default,
        http::classify_named,
        http::list_models,
        http::get_model,
        http::list_samples,
        http::get_sample,
        http::get_exit_policy,
        http::put_exit_policy,
        http::healthz,
        http::readyz,
        http::metrics,
        http::index,
        openapi_json,
        rest::server_metadata,
        rest::live,
        rest::ready,
        rest::model_metadata,
        rest::model_metadata_version,
        rest::model_ready,
        rest::model_ready_version,
        rest::infer,
        rest::infer_version,
        rest::repository_index,
        rest::repository_load,
        rest::repository_unload,
        http::admin_repository,
        http::admin_load,
        http::admin_unload,
    ),
    modifiers(&AdminToken),
    tags(
        (name = "classify", description = "Classification with early exit"),
        (name = "models", description = "Served models"),
        (name = "admin", description = "Exit-policy administration (bearer token)"),
        (name = "health", description = "Health, readiness and metrics"),
        (name = "open-inference", description = "Open Inference Protocol (KServe v2) REST"),
        (name = "web", description = "The web page and this document"),
    )
)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This API's OpenAPI 3 description.
#[utoipa::path(get, path = "/openapi.json", tag = "web",
    responses((status = 200, description = "The OpenAPI document", body = serde_json::Value)))]
pub async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        spec_json(),
    )
        .into_response()
}

/// The document as pretty JSON with a trailing newline (the committed file's exact bytes).
pub fn spec_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the OpenAPI document: {e}\"}}"));
    s.push('\n');
    s
}
