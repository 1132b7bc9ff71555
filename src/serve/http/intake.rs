//! Taking slides in: `POST /v1/slides` (a job) and `POST /v1/grade` (graded within the
//! request), as a multipart upload or a path under a shared root, checked before anything
//! is queued.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::auth::authorize;
use super::error::{ApiError, KeyedErrors, SubmissionErrors};
use super::state::AppState;

use crate::grader::Grader;
use crate::output::report::GradeReport;
use crate::serve::jobs::store::{Insert, Job, JobRequest, KeyRole, NewJob};
use crate::slide::Slide;

use super::jobs::{JobView, job_view};

/// The JSON form of a submission: a slide already on a shared volume (its schema:
/// [`PathSubmissionBody`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSubmission {
    /// The slide's path, under one of the server's shared roots.
    pub path: String,
    #[serde(flatten)]
    pub options: JobRequest,
}

/// The multipart form of a submission: the slide file and the optional fields of
/// [`JobRequest`], each a text part (an empty part, or `null`, is absent). Only the
/// OpenAPI document uses this type: `receive_upload` streams the parts to disk as they
/// come. The fields are listed, not flattened, so that the schema can refuse parts the
/// server refuses (`additionalProperties: false`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
pub struct SlideUpload {
    /// The slide file.
    #[schema(value_type = String, format = Binary)]
    slide: Vec<u8>,
    /// See [`JobRequest`].
    model: Option<String>,
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1000.0)]
    mpp: Option<f64>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    accession_number: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    specimen_id: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    patient_id: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    patient_name: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    placer_order_number: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    filler_order_number: Option<String>,
    #[schema(pattern = "^https?://[^/]+")]
    callback_url: Option<String>,
}

/// The JSON form of `POST /v1/slides` as the OpenAPI document states it: [`PathSubmission`]
/// with its fields listed, so that the schema refuses fields the server refuses
/// (`additionalProperties: false`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
pub struct PathSubmissionBody {
    /// The slide's path, under one of the server's shared roots.
    #[schema(min_length = 1, pattern = "^[^\\x00]+$")]
    path: String,
    /// See [`JobRequest`].
    model: Option<String>,
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1000.0)]
    mpp: Option<f64>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    accession_number: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    specimen_id: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    patient_id: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    patient_name: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    placer_order_number: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    filler_order_number: Option<String>,
    #[schema(pattern = "^https?://[^/]+")]
    callback_url: Option<String>,
}

/// The JSON form of `POST /v1/grade` (schema only): [`PathSubmissionBody`] without
/// `callback_url`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
pub struct SyncPathSubmission {
    #[schema(min_length = 1, pattern = "^[^\\x00]+$")]
    path: String,
    model: Option<String>,
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1000.0)]
    mpp: Option<f64>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    accession_number: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    specimen_id: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    patient_id: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    patient_name: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    placer_order_number: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    filler_order_number: Option<String>,
}

/// The multipart form of `POST /v1/grade` (schema only; see [`SlideUpload`]).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
pub struct SyncSlideUpload {
    /// The slide file.
    #[schema(value_type = String, format = Binary)]
    slide: Vec<u8>,
    /// See [`JobRequest`].
    model: Option<String>,
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1000.0)]
    mpp: Option<f64>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    accession_number: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    specimen_id: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    patient_id: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    patient_name: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    placer_order_number: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    filler_order_number: Option<String>,
}

/// Parses the JSON form of a submission (pure, so the fuzzer can reach it).
pub fn parse_path_submission(bytes: &[u8]) -> Result<PathSubmission, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The `Idempotency-Key` header, if any: visible ASCII, 1–255 characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 255) {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1–255 characters".into(),
        ));
    }
    Ok(key)
}

/// A slide ready to be graded: where it is, and whether we own the file.
struct AcceptedSlide {
    path: PathBuf,
    name: String,
    uploaded: bool,
    /// Identifies the slide's content for idempotency: upload sha256 or canonical path.
    identity: String,
    options: JobRequest,
}

impl AcceptedSlide {
    fn discard(&self) {
        if self.uploaded
            && let Some(dir) = self.path.parent()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Reads either a multipart upload (field `slide` plus optional text fields) or a JSON
/// `{"path": ...}` body.
async fn read_submission(state: &AppState, request: Request) -> Result<AcceptedSlide, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let multipart = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        return receive_upload(state, multipart).await;
    }
    if !content_type.starts_with("application/json") {
        return Err(ApiError::BadRequest(
            "send multipart/form-data with a `slide` file, or JSON {\"path\": ...}".into(),
        ));
    }
    let bytes = axum::body::to_bytes(request.into_body(), state.api.max_json_bytes)
        .await
        .map_err(|_| {
            ApiError::PayloadTooLarge(format!("JSON body over {} bytes", state.api.max_json_bytes))
        })?;
    let body = parse_path_submission(&bytes)?;
    let path = resolve_shared_path(&state.api.shared_roots, &body.path)?;
    let name = path
        .file_name()
        .map_or("slide".into(), |n| n.to_string_lossy().into_owned());
    Ok(AcceptedSlide {
        identity: format!("path:{}", path.display()),
        path,
        name,
        uploaded: false,
        options: body.options,
    })
}

/// Canonicalises `requested` and checks that it lies under one of `roots`, so `..`
/// segments and symlinks cannot escape them.
pub fn resolve_shared_path(roots: &[PathBuf], requested: &str) -> Result<PathBuf, ApiError> {
    if requested.is_empty() || requested.contains('\0') {
        return Err(ApiError::BadRequest(
            "`path` must be a non-empty path".into(),
        ));
    }
    let requested = Path::new(requested);
    // Relative paths are taken relative to the first root.
    let joined = match roots.first() {
        Some(root) if requested.is_relative() => root.join(requested),
        _ => requested.to_path_buf(),
    };
    let inside = |p: &Path| {
        roots
            .iter()
            .filter_map(|r| r.canonicalize().ok())
            .any(|root| p.starts_with(root))
    };
    match joined.canonicalize() {
        Ok(path) if inside(&path) => Ok(path),
        Ok(_) => Err(ApiError::PathForbidden),
        // A missing file outside the roots is still forbidden: do not reveal existence.
        Err(_)
            if joined
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir)) =>
        {
            Err(ApiError::PathForbidden)
        }
        Err(_) if !roots.iter().any(|r| joined.starts_with(r)) => Err(ApiError::PathForbidden),
        Err(_) => Err(ApiError::NotFound("no slide at that path".into())),
    }
}

/// Keeps letters, digits, `.`, `-` and `_` of an uploaded file name, so it can be stored.
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "slide".into()
    } else {
        cleaned
    }
}

async fn receive_upload(
    state: &AppState,
    mut multipart: Multipart,
) -> Result<AcceptedSlide, ApiError> {
    let mut options = JobRequest::default();
    let mut saved: Option<AcceptedSlide> = None;
    let result: Result<(), ApiError> = async {
        while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or("").to_string();
            if name == "slide" {
                if saved.is_some() {
                    return Err(ApiError::BadRequest(
                        "only one `slide` field is allowed".into(),
                    ));
                }
                let file_name = safe_file_name(field.file_name().unwrap_or("slide"));
                let dir = state
                    .jobs
                    .uploads_dir()
                    .join(uuid::Uuid::new_v4().to_string());
                tokio::fs::create_dir_all(&dir)
                    .await
                    .map_err(|e| ApiError::Internal(format!("cannot create upload folder: {e}")))?;
                let path = dir.join(&file_name);
                // Recorded before streaming, so a failed upload is deleted below.
                let slide = saved.insert(AcceptedSlide {
                    path: path.clone(),
                    name: file_name,
                    uploaded: true,
                    identity: String::new(),
                    options: JobRequest::default(),
                });
                // Streamed under a temporary name and renamed when complete, so that no
                // reader (another replica on the shared data folder, or a restart) ever
                // sees a partial slide under the real name.
                let partial = dir.join(".upload.partial");
                let mut file = tokio::fs::File::create(&partial)
                    .await
                    .map_err(|e| ApiError::Internal(format!("cannot store upload: {e}")))?;
                // Stream to disk chunk by chunk; the whole slide is never in memory.
                let mut hasher = Sha256::new();
                let mut written: u64 = 0;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    written += chunk.len() as u64;
                    if written > state.api.max_upload_bytes {
                        return Err(ApiError::PayloadTooLarge(format!(
                            "upload over the {} byte limit",
                            state.api.max_upload_bytes
                        )));
                    }
                    hasher.update(&chunk);
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| ApiError::Internal(format!("cannot store upload: {e}")))?;
                }
                file.flush()
                    .await
                    .map_err(|e| ApiError::Internal(format!("cannot store upload: {e}")))?;
                // On a network share, data must reach the server before the job row
                // tells other replicas the file is there.
                file.sync_all()
                    .await
                    .map_err(|e| ApiError::Internal(format!("cannot store upload: {e}")))?;
                drop(file);
                tokio::fs::rename(&partial, &path)
                    .await
                    .map_err(|e| ApiError::Internal(format!("cannot store upload: {e}")))?;
                slide.identity = format!("upload:{}", hex::encode(hasher.finalize()));
            } else {
                let text = field.text().await.map_err(multipart_error)?;
                let text = text.trim().to_string();
                // An empty field, or `null` (as JSON spells "no value"), is absent.
                let value = (!text.is_empty() && text != "null").then_some(text);
                match name.as_str() {
                    "model" => options.model = value,
                    "accession_number" => options.accession_number = value,
                    "specimen_id" => options.specimen_id = value,
                    "patient_id" => options.patient_id = value,
                    "patient_name" => options.patient_name = value,
                    "placer_order_number" => options.placer_order_number = value,
                    "filler_order_number" => options.filler_order_number = value,
                    "callback_url" => options.callback_url = value,
                    "mpp" => {
                        options.mpp = value
                            .map(|v| v.parse::<f64>())
                            .transpose()
                            .map_err(|_| ApiError::BadRequest("`mpp` must be a number".into()))?
                    }
                    other => return Err(ApiError::BadRequest(format!("unknown field `{other}`"))),
                }
            }
        }
        Ok(())
    }
    .await;
    match (result, saved) {
        (Ok(()), Some(mut slide)) => {
            slide.options = options;
            Ok(slide)
        }
        (Ok(()), None) => Err(ApiError::BadRequest(
            "multipart body has no `slide` file field".into(),
        )),
        (Err(e), saved) => {
            if let Some(slide) = saved {
                slide.discard();
            }
            Err(e)
        }
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("upload over the size limit".into())
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// Checks what can be checked before queueing, so a bad request fails now rather than
/// as a failed job: the model exists, the callback can be signed, the slide opens and
/// has a resolution.
async fn validate(state: &AppState, slide: &AcceptedSlide) -> Result<(), ApiError> {
    let o = &slide.options;
    if state.models.pools.is_empty() {
        return Err(ApiError::NoModels);
    }
    if state.models.resolve(o.model.as_deref()).is_none() {
        return Err(ApiError::UnknownModel(o.model.clone().unwrap_or_default()));
    }
    if let Some(url) = &o.callback_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ApiError::BadRequest(
                "`callback_url` must be an http(s) URL".into(),
            ));
        }
        if state.jobs.settings.webhook.secret.is_none() {
            return Err(ApiError::BadRequest(
                "callbacks need a webhook secret on the server (--webhook-secret)".into(),
            ));
        }
    }
    for (field, value) in [
        ("accession_number", &o.accession_number),
        ("specimen_id", &o.specimen_id),
        ("patient_id", &o.patient_id),
        ("patient_name", &o.patient_name),
        ("placer_order_number", &o.placer_order_number),
        ("filler_order_number", &o.filler_order_number),
    ] {
        if value.as_ref().is_some_and(|v| {
            v.chars().count() > 128 || v.contains(['|', '^', '~', '\\', '&', '\r', '\n'])
        }) {
            return Err(ApiError::BadRequest(format!(
                "`{field}` must be at most 128 characters without HL7 delimiters"
            )));
        }
    }
    let (path, mpp) = (slide.path.clone(), o.mpp);
    let decoder = state.jobs.settings.grade.decoder.clone();
    tokio::task::spawn_blocking(move || match decoder {
        // Untrusted bytes meet the C decoders here first: in a child process when
        // configured, so a crash refuses this slide instead of ending the server.
        Some(decoder) => decoder.probe(&path, mpp),
        None => crate::slide::isolated::probe(&path, mpp).map(|_| ()),
    })
    .await??;
    Ok(())
}

fn request_hash(slide: &AcceptedSlide) -> String {
    let o = &slide.options;
    let canonical = serde_json::json!({
        "slide": slide.identity,
        "model": o.model,
        "mpp": o.mpp,
        "accession_number": o.accession_number,
        "specimen_id": o.specimen_id,
        "patient_id": o.patient_id,
        "patient_name": o.patient_name,
        "placer_order_number": o.placer_order_number,
        "filler_order_number": o.filler_order_number,
        "callback_url": o.callback_url,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

#[utoipa::path(post, path = "/v1/slides", tag = "jobs", description = "Submit a slide for grading: multipart (`slide` file + optional `model`, `mpp`, `accession_number`, `specimen_id`, `patient_id`, `patient_name`, `placer_order_number`, `filler_order_number`, `callback_url` fields) or JSON `{\"path\": ..., ...}` under a shared root. Honours `Idempotency-Key`. Role: submit.", params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "repeat a submission safely: the same key and request give the same job (visible ASCII, 1–255 characters)")), request_body(content((SlideUpload = "multipart/form-data"), (PathSubmissionBody = "application/json"))), responses((status = 202, description = "accepted; Location names the job", body = JobView), SubmissionErrors, KeyedErrors))]
pub(super) async fn submit_slide(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    authorize(&state, request.headers(), KeyRole::Submit, "submit slides")?;
    let idempotency_key = idempotency_key(request.headers())?;
    intake_open(&state)?;
    let slide = read_submission(&state, request).await?;
    let job = queue_slide(&state, slide, idempotency_key.as_deref())
        .await?
        .0;
    let location = format!("/v1/jobs/{}", job.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(job_view(job)),
    )
        .into_response())
}

/// Refuses new work while shutting down or while the queue is full. Checked before a body
/// is read and again just before the insert: an upload can take minutes, during which the
/// queue fills or shutdown starts.
pub(crate) fn intake_open(state: &AppState) -> Result<(), ApiError> {
    let retry_after_secs = state.api.retry_after_secs;
    if !state.jobs.is_accepting() {
        return Err(ApiError::ShuttingDown { retry_after_secs });
    }
    if !state.jobs.has_room()? {
        let queued = state
            .jobs
            .store
            .count_in_state(crate::serve::jobs::store::JobState::Queued)?;
        return Err(ApiError::QueueFull {
            queued,
            retry_after_secs,
        });
    }
    Ok(())
}

/// Queues a job for a slide under a shared root, as `{"path": ...}` does: the path must
/// lie under `--shared-root`, the slide must open, the queue must have room. Returns the
/// job and whether it is new (false: the idempotency key named an earlier one).
pub(crate) async fn queue_shared_slide(
    state: &AppState,
    path: &str,
    options: JobRequest,
    idempotency_key: Option<&str>,
) -> Result<(Job, bool), ApiError> {
    intake_open(state)?;
    let path = resolve_shared_path(&state.api.shared_roots, path)?;
    let name = path
        .file_name()
        .map_or("slide".into(), |n| n.to_string_lossy().into_owned());
    let slide = AcceptedSlide {
        identity: format!("path:{}", path.display()),
        path,
        name,
        uploaded: false,
        options,
    };
    queue_slide(state, slide, idempotency_key).await
}

/// Validates an accepted slide and inserts its job (or resolves the idempotency key);
/// an uploaded slide that does not become a new job is deleted.
async fn queue_slide(
    state: &AppState,
    slide: AcceptedSlide,
    idempotency_key: Option<&str>,
) -> Result<(Job, bool), ApiError> {
    if let Err(e) = validate(state, &slide).await {
        slide.discard();
        return Err(e);
    }
    let id = uuid::Uuid::new_v4().to_string();
    let out_dir = state.jobs.results_dir(&id);
    let job_request = slide.options.clone();
    let hash = request_hash(&slide);
    if let Err(e) = intake_open(state) {
        slide.discard();
        return Err(e);
    }
    let inserted = state.jobs.store.insert(&NewJob {
        id: &id,
        slide_path: &slide.path,
        slide_name: &slide.name,
        uploaded: slide.uploaded,
        request: &job_request,
        idempotency_key,
        request_hash: &hash,
        out_dir: &out_dir,
    });
    match inserted {
        Ok(Insert::Created(job)) => {
            tracing::info!(job = %job.id, uploaded = job.uploaded, "job queued");
            state.jobs.notify();
            Ok((job, true))
        }
        Ok(Insert::Existing(job)) => {
            slide.discard();
            Ok((job, false))
        }
        Ok(Insert::Conflict) => {
            slide.discard();
            Err(ApiError::IdempotencyConflict)
        }
        Err(e) => {
            slide.discard();
            Err(e.into())
        }
    }
}

/// Grades a small slide within the request and answers with the result JSON.
#[utoipa::path(post, path = "/v1/grade", tag = "jobs", description = "Grade a small slide within the request (up to --sync-max-megapixels level-0 megapixels and --sync-timeout-secs); the same bodies as POST /v1/slides, without `callback_url`. Role: submit.", request_body(content((SyncSlideUpload = "multipart/form-data"), (SyncPathSubmission = "application/json"))), responses((status = 200, description = "the result, as result.json", body = GradeReport), SubmissionErrors, KeyedErrors))]
pub(super) async fn grade_now(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    authorize(&state, request.headers(), KeyRole::Submit, "grade slides")?;
    let slide = read_submission(&state, request).await?;
    let outcome = grade_now_inner(&state, &slide).await;
    slide.discard();
    outcome
}

async fn grade_now_inner(state: &AppState, slide: &AcceptedSlide) -> Result<Response, ApiError> {
    if slide.options.callback_url.is_some() {
        return Err(ApiError::BadRequest(
            "`callback_url` is for POST /v1/slides".into(),
        ));
    }
    validate(state, slide).await?;
    let (_, pool) = state
        .models
        .resolve(slide.options.model.as_deref())
        .ok_or(ApiError::NoModels)?;
    let pool = pool.clone();
    let (path, mpp) = (slide.path.clone(), slide.options.mpp);
    let max_pixels = state.api.sync_max_pixels;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options = crate::grade::pipeline::GradeOptions {
        mpp_override: mpp,
        stop: Some(stop.clone()),
        ..state.jobs.settings.grade.clone()
    };
    let task = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, ApiError> {
        let (w, h) = Slide::open(&path, mpp)?.dimensions();
        if u64::from(w) * u64::from(h) > max_pixels {
            return Err(ApiError::PayloadTooLarge(format!(
                "slide has {} pixels; POST /v1/grade takes up to {max_pixels}; submit it to POST /v1/slides",
                u64::from(w) * u64::from(h)
            )));
        }
        let report = Grader::new(&pool, options).grade(&path, None, &mut |_, _| {})?;
        serde_json::to_value(report)
            .map_err(|e| ApiError::Internal(format!("cannot serialise the report: {e}")))
    });
    match tokio::time::timeout(state.api.sync_timeout, task).await {
        Ok(joined) => Ok(Json(joined??).into_response()),
        Err(_) => {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            Err(ApiError::PayloadTooLarge(format!(
                "grading took over {} s; submit it to POST /v1/slides",
                state.api.sync_timeout.as_secs()
            )))
        }
    }
}
