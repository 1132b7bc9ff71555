//! A finished job as a LIS message: FHIR R4 Bundle or HL7 v2 ORU^R01.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, JobErrors, KeyedErrors};
use super::state::AppState;
use crate::output::report::GradeReport;

use super::results::{JobPath, finished_job_file};

/// Builds the LIMS message context of a finished job from its stored outputs.
async fn report_context(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<crate::output::lims::ReportContext, ApiError> {
    let (job, bytes) = finished_job_file(state, headers, id, "result.json").await?;
    let summary: GradeReport = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Internal(format!("unreadable result.json: {e}")))?;
    let overlay = tokio::fs::read(job.out_dir.join("overlay.png")).await.ok();
    Ok(crate::serve::jobs::report_context(&job, &summary, overlay))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/fhir", tag = "results", description = "FHIR R4 Bundle (collection): DiagnosticReport, Observations for Gleason score, ISUP grade group and tumour %, the overlay as presentedForm, the model as a Device. Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "FHIR Bundle", body = Object, content_type = "application/fhir+json"), JobErrors, KeyedErrors))]
pub(super) async fn job_fhir(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): JobPath,
) -> Result<Response, ApiError> {
    let context = report_context(&state, &headers, &id).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/fhir+json")],
        Json(crate::output::lims::fhir::bundle(&context)),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/jobs/{id}/hl7", tag = "results", description = "HL7 v2.5.1 ORU^R01 message with OBX segments (segments end in CR). Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "HL7 v2 message", body = String, content_type = "x-application/hl7-v2+er7"), JobErrors, KeyedErrors))]
pub(super) async fn job_hl7(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): JobPath,
) -> Result<Response, ApiError> {
    let context = report_context(&state, &headers, &id).await?;
    Ok((
        [(header::CONTENT_TYPE, "x-application/hl7-v2+er7")],
        crate::output::lims::hl7::oru_r01(&context),
    )
        .into_response())
}
