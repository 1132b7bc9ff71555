//! A finished job's outputs: `result.json`, the overlay, heatmaps and tile tables.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::auth::authorize;
use super::error::{ApiError, JobErrors, KeyedErrors};
use super::state::AppState;
use crate::output::report::GradeReport;

use crate::serve::jobs::store::{Job, JobState, KeyRole};
use crate::serve::jobs::{OUTPUTS_ERROR, OUTPUTS_PENDING};

use super::jobs::load_job;

/// A finished job and the bytes of one of its output files: the job is read from the
/// store once, and a job that is not done, or failed, is 409.
pub async fn finished_job_file(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    file: &str,
) -> Result<(Job, Vec<u8>), ApiError> {
    authorize(state, headers, KeyRole::Read, "read results")?;
    let job = load_job(state, id)?;
    match job.state {
        JobState::Done => {}
        JobState::Failed => {
            return Err(ApiError::NotReady(format!(
                "job failed: {}",
                job.error.unwrap_or_default()
            )));
        }
        other => return Err(ApiError::NotReady(format!("job is {}", other.as_str()))),
    }
    let bytes = match tokio::fs::read(job.out_dir.join(file)).await {
        Ok(bytes) => bytes,
        // result.json and the overlay are written before the job is done; the heatmaps
        // and tile tables just after (`jobs::OUTPUTS_PENDING`).
        Err(_) if job.out_dir.join(OUTPUTS_PENDING).exists() => {
            return Err(ApiError::NotReady(format!(
                "job {id} is done; its {file} is still being written, retry in a second"
            )));
        }
        Err(_) => {
            let reason = tokio::fs::read_to_string(job.out_dir.join(OUTPUTS_ERROR))
                .await
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            return Err(ApiError::NotFound(format!(
                "job {id} has no {file}{reason}"
            )));
        }
    };
    Ok((job, bytes))
}

/// Serves one output file of a finished job.
async fn job_file(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    file: &str,
    content_type: &'static str,
) -> Result<Response, ApiError> {
    let (_, bytes) = finished_job_file(state, headers, id, file).await?;
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from(bytes)).into_response())
}

pub type JobPath = axum::extract::Path<String>;

#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "results", description = "result.json of a finished job. Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "the file", body = GradeReport, content_type = "application/json"), JobErrors, KeyedErrors))]
pub(super) async fn job_result(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): JobPath,
) -> Result<Response, ApiError> {
    job_file(&state, &headers, &id, "result.json", "application/json").await
}

#[utoipa::path(get, path = "/v1/jobs/{id}/overlay.png", tag = "results", description = "Grad-CAM overlay with legend. Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "the file", body = Vec<u8>, content_type = "image/png"), JobErrors, KeyedErrors))]
pub(super) async fn job_overlay(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): JobPath,
) -> Result<Response, ApiError> {
    job_file(&state, &headers, &id, "overlay.png", "image/png").await
}

#[utoipa::path(get, path = "/v1/jobs/{id}/tiles.geojson", tag = "results", description = "Tiles for QuPath (GeoJSON FeatureCollection). Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "the file", body = Object, content_type = "application/geo+json"), JobErrors, KeyedErrors))]
pub(super) async fn job_geojson(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): JobPath,
) -> Result<Response, ApiError> {
    job_file(
        &state,
        &headers,
        &id,
        "tiles.geojson",
        "application/geo+json",
    )
    .await
}

#[utoipa::path(get, path = "/v1/jobs/{id}/tiles.csv", tag = "results", description = "Tiles in WSInfer CSV columns. Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "the file", body = String, content_type = "text/csv"), JobErrors, KeyedErrors))]
pub(super) async fn job_csv(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): JobPath,
) -> Result<Response, ApiError> {
    job_file(&state, &headers, &id, "tiles.csv", "text/csv").await
}

#[utoipa::path(get, path = "/v1/jobs/{id}/heatmap/{file}", tag = "results", description = "One class's Grad-CAM heatmap PNG (one pixel per CAM cell; placement in result.json `heatmap`). Role: read.", params(("id" = String, Path, description = "job id"), ("file" = String, Path, description = "`<class stem>.png`, as in result.json `heatmap.layers[].file`")), responses((status = 200, description = "PNG", body = Vec<u8>, content_type = "image/png"), JobErrors, KeyedErrors))]
pub(super) async fn job_heatmap(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path((id, file)): axum::extract::Path<(String, String)>,
) -> Result<Response, ApiError> {
    class_map(&state, &headers, &id, &file, "heatmap").await
}

#[utoipa::path(get, path = "/v1/jobs/{id}/attention/{file}", tag = "results", description = "One class's AT+ map PNG (the map AT+ distils, Σ_k ReLU(α_ck A_k); one pixel per CAM cell, placed like the heatmap), for models that export it: result.json `heatmap.attention_layers`. Role: read.", params(("id" = String, Path, description = "job id"), ("file" = String, Path, description = "`<class stem>.png`, as in result.json `heatmap.attention_layers[].file`")), responses((status = 200, description = "PNG", body = Vec<u8>, content_type = "image/png"), JobErrors, KeyedErrors))]
pub(super) async fn job_attention(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path((id, file)): axum::extract::Path<(String, String)>,
) -> Result<Response, ApiError> {
    class_map(&state, &headers, &id, &file, "attention").await
}

/// `<kind>_<class>.png` of a job, where `file` is `<class>.png` and names no other file.
async fn class_map(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    file: &str,
    kind: &str,
) -> Result<Response, ApiError> {
    let class = file.strip_suffix(".png").unwrap_or(file);
    let safe = crate::output::images::sanitise_file_stem(class);
    if safe != class {
        return Err(ApiError::NotFound(format!(
            "no {kind} map for class `{class}`"
        )));
    }
    job_file(
        state,
        headers,
        id,
        &format!("{kind}_{safe}.png"),
        "image/png",
    )
    .await
}
