//! The OpenAPI 3 document (`/openapi.json`), generated from the handlers' annotations,
//! and the page that lists it (`/docs`).

use axum::Json;
use axum::response::Html;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "slidegrade",
        description = "Grades prostate biopsies from whole-slide images at low magnification, with Grad-CAM. Authenticate with `Authorization: Bearer <key>`. Errors are JSON `{error, error_type}`."
    ),
    paths(
        openapi,
        docs,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        super::ops::list_models,
        super::intake::submit_slide,
        super::intake::grade_now,
        super::jobs::list_jobs,
        super::jobs::get_job,
        super::jobs::delete_job,
        super::results::job_result,
        super::results::job_overlay,
        super::results::job_heatmap,
        super::results::job_attention,
        super::results::job_geojson,
        super::results::job_csv,
        super::lims::job_fhir,
        super::lims::job_hl7,
        super::viewer::slide_dzi,
        super::viewer::slide_tile
    )
)]
struct ApiDoc;

/// The OpenAPI 3 document, generated from the handlers' annotations.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

#[utoipa::path(get, path = "/openapi.json", tag = "ops", description = "This document (OpenAPI 3.1).", responses((status = 200, description = "the OpenAPI document", body = Object)))]
pub(super) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

/// A self-contained page that lists the API from /openapi.json (no CDN assets).
#[utoipa::path(get, path = "/docs", tag = "ops", description = "A page that lists the API from /openapi.json (no external assets).", responses((status = 200, description = "HTML page", body = String, content_type = "text/html")))]
pub(super) async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
