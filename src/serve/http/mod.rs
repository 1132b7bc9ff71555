//! The HTTP API (axum). Handlers stay thin: they authorise, call the library, and turn
//! its errors into `{error, error_type}` JSON through [`crate::serve::http::error`], the one place
//! that maps errors to statuses.

pub mod auth;
pub mod error;
pub(crate) mod intake;
mod jobs;
mod lims;
mod openapi;
mod ops;
mod results;
pub mod state;
pub mod tile_cache;
pub mod viewer;

pub use intake::{
    PathSubmission, idempotency_key, parse_path_submission, resolve_shared_path, safe_file_name,
};
pub use openapi::openapi_document;
pub use state::{ApiSettings, AppState};

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use error::ApiError;

pub fn router(state: Arc<AppState>) -> Router {
    let upload_limit =
        usize::try_from(state.api.max_upload_bytes.saturating_add(1 << 20)).unwrap_or(usize::MAX);
    let json_limit = state.api.max_json_bytes;
    let mut app = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .route("/docs", get(openapi::docs))
        .route("/v1/models", get(ops::list_models))
        .route("/v1/jobs", get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job).delete(jobs::delete_job))
        .route("/v1/jobs/{id}/result", get(results::job_result))
        .route("/v1/jobs/{id}/overlay.png", get(results::job_overlay))
        .route("/v1/jobs/{id}/heatmap/{file}", get(results::job_heatmap))
        .route(
            "/v1/jobs/{id}/attention/{file}",
            get(results::job_attention),
        )
        .route("/v1/jobs/{id}/tiles.geojson", get(results::job_geojson))
        .route("/v1/jobs/{id}/tiles.csv", get(results::job_csv))
        .route("/v1/jobs/{id}/fhir", get(lims::job_fhir))
        .route("/v1/jobs/{id}/hl7", get(lims::job_hl7))
        .route("/v1/jobs/{id}/slide.dzi", get(viewer::slide_dzi))
        .route(
            "/v1/jobs/{id}/slide_files/{level}/{tile}",
            get(viewer::slide_tile),
        )
        .route("/", get(viewer::index))
        .route("/assets/{file}", get(viewer::asset))
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.api.request_timeout,
        ))
        // Uploads stream large bodies: their own size and time limits.
        .merge(
            Router::new()
                .route("/v1/slides", post(intake::submit_slide))
                .route("/v1/grade", post(intake::grade_now))
                .layer(DefaultBodyLimit::max(upload_limit))
                .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    state.api.upload_timeout,
                )),
        )
        .fallback(not_found)
        .layer(middleware::from_fn(record_metrics));
    if !state.api.cors_origins.is_empty() {
        let origins: Vec<_> = state
            .api
            .cors_origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect();
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods(tower_http::cors::Any)
                .allow_headers(tower_http::cors::Any),
        );
    }
    app.with_state(state)
}

/// Serves until `shutdown` completes, then lets in-flight requests finish.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Counts requests and latency by route template (never the raw path: ids would explode
/// the label space), method and status.
async fn record_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let m = crate::telemetry::global();
    m.http_requests
        .with_label_values(&[&route, &method, &status])
        .inc();
    m.http_latency
        .with_label_values(&[&route, &method, &status])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
