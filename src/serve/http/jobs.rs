//! Jobs as the API shows them: list, read, cancel or delete.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::authorize;
use super::error::{ApiError, ErrorBody, KeyedErrors};
use super::state::AppState;

use crate::serve::jobs::remove_job_files;
use crate::serve::jobs::store::{Delivery, Job, KeyRole, Outbox};

/// The job `id`, or 404.
pub fn load_job(state: &AppState, id: &str) -> Result<Job, ApiError> {
    state
        .jobs
        .store
        .get(id)?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}

/// Where a job's outputs are served.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobLinks {
    #[serde(rename = "self")]
    pub this: String,
    pub result: String,
    pub overlay: String,
    pub tiles_geojson: String,
    pub tiles_csv: String,
    pub fhir: String,
    pub hl7: String,
    pub slide_dzi: String,
}

/// A job as the API shows it: its record, the links to its outputs, and (on
/// `GET /v1/jobs/{id}`) its webhook delivery.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    pub links: JobLinks,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Delivery>,
    /// The ORU^R01 sent over MLLP (`--mllp-results`), with every attempt counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hl7_result: Option<Delivery>,
}

/// `GET /v1/jobs`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

/// `DELETE /v1/jobs/{id}` of a job still queued or running.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Cancelling {
    pub id: String,
    /// Always `cancelling`.
    pub state: &'static str,
}

/// The job as the API shows it.
pub fn job_view(job: Job) -> JobView {
    let id = job.id.clone();
    JobView {
        links: JobLinks {
            this: format!("/v1/jobs/{id}"),
            result: format!("/v1/jobs/{id}/result"),
            overlay: format!("/v1/jobs/{id}/overlay.png"),
            tiles_geojson: format!("/v1/jobs/{id}/tiles.geojson"),
            tiles_csv: format!("/v1/jobs/{id}/tiles.csv"),
            fhir: format!("/v1/jobs/{id}/fhir"),
            hl7: format!("/v1/jobs/{id}/hl7"),
            slide_dzi: format!("/v1/jobs/{id}/slide.dzi"),
        },
        job,
        webhook: None,
        hl7_result: None,
    }
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", description = "The 50 most recent jobs. Role: read.", responses((status = 200, description = "jobs", body = JobList), KeyedErrors))]
pub(super) async fn list_jobs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<JobList>, ApiError> {
    authorize(&state, &headers, KeyRole::Read, "read jobs")?;
    let jobs = state
        .jobs
        .store
        .list_recent(50)?
        .into_iter()
        .map(job_view)
        .collect();
    Ok(Json(JobList { jobs }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", description = "A job: state (queued, running, done, failed, cancelled), progress, error, webhook delivery. Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "job", body = JobView), (status = 404, description = "no such job", body = ErrorBody), KeyedErrors))]
pub(super) async fn get_job(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<JobView>, ApiError> {
    authorize(&state, &headers, KeyRole::Read, "read jobs")?;
    let mut view = job_view(load_job(&state, &id)?);
    view.webhook = state.jobs.store.delivery(Outbox::Webhook, &id)?;
    view.hl7_result = state.jobs.store.delivery(Outbox::Hl7Results, &id)?;
    Ok(Json(view))
}

/// Cancels a queued or running job; deletes a finished one with its files.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", description = "Cancel a queued or running job (202), or delete a finished one and its files (204). Role: admin.", params(("id" = String, Path, description = "job id")), responses((status = 202, description = "cancelling", body = Cancelling), (status = 204, description = "deleted"), (status = 404, description = "no such job", body = ErrorBody), KeyedErrors))]
pub(super) async fn delete_job(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, KeyRole::Admin, "delete jobs")?;
    let job = load_job(&state, &id)?;
    if !job.state.is_finished() && state.jobs.cancel(&id)? {
        let body = Cancelling {
            id,
            state: "cancelling",
        };
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    remove_job_files(&job);
    state.viewer.forget(&id);
    state.jobs.store.delete(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
