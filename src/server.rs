//! The HTTP API (axum). Handlers stay thin: they authorise, call the library, and turn
//! its errors into `{error, error_type}` JSON through [`crate::api_error`], the one place
//! that maps errors to statuses.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::api_error::ApiError;
use crate::auth;
use crate::engine::{EngineConfig, EnginePool};
use crate::jobs::store::{Insert, Job, JobRequest, NewJob, Role};
use crate::jobs::{Jobs, Models, remove_job_files};
use crate::model::{self, Manifest};
use crate::wsi::Slide;

/// A model folder that was refused, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedModel {
    pub folder: String,
    pub error: String,
    pub error_type: &'static str,
}

/// The models found in a folder: those that passed the contract and have sessions, and
/// those that were refused.
pub struct LoadedModels {
    pub pools: Vec<Arc<EnginePool>>,
    pub refused: Vec<RefusedModel>,
}

/// Loads every model folder under `dir`. A folder that fails the contract, or whose
/// session cannot be built, is refused with one log line and kept out of service; the
/// other models still load. A missing or empty `dir` gives no models.
pub fn load_models(dir: &Path, config: &EngineConfig) -> LoadedModels {
    let mut folders: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    folders.sort();
    let mut loaded = LoadedModels {
        pools: Vec::new(),
        refused: Vec::new(),
    };
    for folder in folders {
        let pool = model::load(&folder)
            .map_err(|e| (e.to_string(), e.kind()))
            .and_then(|m| EnginePool::new(&m, config).map_err(|e| (e.to_string(), e.kind())));
        match pool {
            Ok(pool) => {
                let m = pool.manifest();
                tracing::info!(
                    model = %m.name,
                    version = %m.version,
                    role = ?m.role,
                    mpp = m.input.mpp,
                    provider = pool.provider().as_str(),
                    "loaded model"
                );
                crate::metrics::global()
                    .execution_provider
                    .with_label_values(&[m.name.as_str(), pool.provider().as_str()])
                    .set(1);
                loaded.pools.push(Arc::new(pool));
            }
            Err((error, error_type)) => {
                tracing::warn!(folder = %folder.display(), %error, "refused model");
                loaded.refused.push(RefusedModel {
                    folder: folder.display().to_string(),
                    error,
                    error_type,
                });
            }
        }
    }
    if loaded.pools.is_empty() {
        tracing::warn!(dir = %dir.display(), "no models loaded; grading endpoints will refuse work");
    }
    loaded
}

/// API settings that are not about jobs.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Without keys, every request is allowed (only for loopback, checked by the CLI).
    pub require_auth: bool,
    /// Folders a `{"path": ...}` submission may name.
    pub shared_roots: Vec<PathBuf>,
    pub max_upload_bytes: u64,
    /// JSON bodies above this are refused with 413.
    pub max_json_bytes: usize,
    /// Time limit for ordinary requests (uploads get `upload_timeout`).
    pub request_timeout: Duration,
    pub upload_timeout: Duration,
    /// `POST /v1/grade` only takes slides up to this many level-0 pixels...
    pub sync_max_pixels: u64,
    /// ...and answers within this time, or gives up with 503.
    pub sync_timeout: Duration,
    /// Seconds a client is told to wait when the queue is full.
    pub retry_after_secs: u64,
    /// Allowed CORS origins; empty means CORS is off.
    pub cors_origins: Vec<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            require_auth: true,
            shared_roots: Vec::new(),
            max_upload_bytes: 4 << 30,
            max_json_bytes: 64 << 10,
            request_timeout: Duration::from_secs(60),
            upload_timeout: Duration::from_secs(3600),
            sync_max_pixels: 100_000_000,
            sync_timeout: Duration::from_secs(30),
            retry_after_secs: 30,
            cors_origins: Vec::new(),
        }
    }
}

pub struct AppState {
    pub models: Arc<Models>,
    pub refused: Vec<RefusedModel>,
    pub jobs: Arc<Jobs>,
    pub api: ApiSettings,
    /// Open slides and served tiles of the browser viewer.
    pub viewer: crate::viewer::SlideTiles,
}

pub fn router(state: Arc<AppState>) -> Router {
    let upload_limit =
        usize::try_from(state.api.max_upload_bytes.saturating_add(1 << 20)).unwrap_or(usize::MAX);
    let json_limit = state.api.max_json_bytes;
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
        .route("/v1/models", get(list_models))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job).delete(delete_job))
        .route("/v1/jobs/{id}/result", get(job_result))
        .route("/v1/jobs/{id}/overlay.png", get(job_overlay))
        .route("/v1/jobs/{id}/heatmap/{file}", get(job_heatmap))
        .route("/v1/jobs/{id}/tiles.geojson", get(job_geojson))
        .route("/v1/jobs/{id}/tiles.csv", get(job_csv))
        .route("/v1/jobs/{id}/fhir", get(job_fhir))
        .route("/v1/jobs/{id}/hl7", get(job_hl7))
        .route("/v1/jobs/{id}/slide.dzi", get(crate::viewer::slide_dzi))
        .route(
            "/v1/jobs/{id}/slide_files/{level}/{tile}",
            get(crate::viewer::slide_tile),
        )
        .route("/", get(crate::viewer::index))
        .route("/assets/{file}", get(crate::viewer::asset))
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.api.request_timeout,
        ))
        // Uploads stream large bodies: their own size and time limits.
        .merge(
            Router::new()
                .route("/v1/slides", post(submit_slide))
                .route("/v1/grade", post(grade_now))
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
    let m = crate::metrics::global();
    m.http_requests
        .with_label_values(&[&route, &method, &status])
        .inc();
    m.http_latency
        .with_label_values(&[&route, &method, &status])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Checks the bearer key against the store.
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    need: Role,
    action: &'static str,
) -> Result<(), ApiError> {
    if !state.api.require_auth {
        return Ok(());
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthenticated)?;
    let key = value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::Unauthenticated)?;
    let (_, role) = state
        .jobs
        .store
        .key_role(&auth::hash_key(key))?
        .ok_or(ApiError::InvalidKey)?;
    if auth::allows(role, need) {
        Ok(())
    } else {
        Err(ApiError::Forbidden {
            have: role.as_str(),
            action,
        })
    }
}

#[utoipa::path(get, path = "/healthz", tag = "ops", description = "Liveness: the process answers.", responses((status = 200, description = "alive")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when at least one model is loaded and the job store takes writes.
#[utoipa::path(get, path = "/readyz", tag = "ops", description = "Readiness: at least one model loaded and the job store writable.", responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let store_ok = state.jobs.store.check_writable();
    let ready = !state.models.pools.is_empty() && store_ok.is_ok();
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "models_loaded": state.models.pools.len(),
        "models_refused": state.refused.len(),
        "store_writable": store_ok.is_ok(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "ops", description = "Prometheus metrics (text exposition format).", responses((status = 200, description = "metrics")))]
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Ok(n) = state
        .jobs
        .store
        .count_in_state(crate::jobs::store::JobState::Queued)
    {
        crate::metrics::global().queue_depth.set(n as i64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "slidegrade",
        description = "Grades prostate biopsies from whole-slide images at low magnification, with Grad-CAM. Authenticate with `Authorization: Bearer <key>`. Errors are JSON `{error, error_type}`."
    ),
    paths(
        healthz,
        readyz,
        metrics,
        list_models,
        submit_slide,
        grade_now,
        list_jobs,
        get_job,
        delete_job,
        job_result,
        job_overlay,
        job_heatmap,
        job_geojson,
        job_csv,
        crate::viewer::slide_dzi,
        crate::viewer::slide_tile
    )
)]
struct ApiDoc;

/// The OpenAPI 3 document, generated from the handlers' annotations.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

/// A self-contained page that lists the API from /openapi.json (no CDN assets).
async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

#[derive(Serialize)]
struct ModelEntry<'a> {
    provider: &'static str,
    default: bool,
    #[serde(flatten)]
    manifest: &'a Manifest,
}

#[utoipa::path(get, path = "/v1/models", tag = "models", description = "Loaded models (manifests, active execution provider) and refused model folders. Role: read.", responses((status = 200, description = "models"), (status = 401, description = "no or unknown key")))]
async fn list_models(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, Role::Read, "list models")?;
    let models: Vec<ModelEntry> = state
        .models
        .pools
        .values()
        .map(|p| ModelEntry {
            provider: p.provider().as_str(),
            default: state.models.default.as_deref() == Some(p.manifest().name.as_str()),
            manifest: p.manifest(),
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "models": models, "refused": state.refused }),
    ))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// The JSON form of a submission: a slide already on a shared volume.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSubmission {
    pub path: String,
    #[serde(flatten)]
    pub options: SubmissionOptions,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubmissionOptions {
    pub model: Option<String>,
    pub mpp: Option<f64>,
    pub accession_number: Option<String>,
    pub specimen_id: Option<String>,
    pub callback_url: Option<String>,
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
    options: SubmissionOptions,
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
    let mut options = SubmissionOptions::default();
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
                    options: SubmissionOptions::default(),
                });
                let mut file = tokio::fs::File::create(&path)
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
                slide.identity = format!("upload:{}", hex::encode(hasher.finalize()));
            } else {
                let text = field.text().await.map_err(multipart_error)?;
                let text = text.trim().to_string();
                let value = (!text.is_empty()).then_some(text);
                match name.as_str() {
                    "model" => options.model = value,
                    "accession_number" => options.accession_number = value,
                    "specimen_id" => options.specimen_id = value,
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
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.len() > 128 || v.contains(['|', '^', '~', '\\', '&', '\r', '\n']))
        {
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
        None => crate::wsi::isolated::probe(&path, mpp).map(|_| ()),
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
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
        "callback_url": o.callback_url,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The job as the API shows it.
fn job_view(job: &Job) -> serde_json::Value {
    let mut value = serde_json::to_value(job).unwrap_or_default();
    let id = &job.id;
    value["links"] = serde_json::json!({
        "self": format!("/v1/jobs/{id}"),
        "result": format!("/v1/jobs/{id}/result"),
        "overlay": format!("/v1/jobs/{id}/overlay.png"),
        "tiles_geojson": format!("/v1/jobs/{id}/tiles.geojson"),
        "tiles_csv": format!("/v1/jobs/{id}/tiles.csv"),
        "fhir": format!("/v1/jobs/{id}/fhir"),
        "hl7": format!("/v1/jobs/{id}/hl7"),
        "slide_dzi": format!("/v1/jobs/{id}/slide.dzi"),
    });
    value
}

#[utoipa::path(post, path = "/v1/slides", tag = "jobs", description = "Submit a slide for grading: multipart (`slide` file + optional `model`, `mpp`, `accession_number`, `specimen_id`, `callback_url` fields) or JSON `{\"path\": ..., ...}` under a shared root. Honours `Idempotency-Key`. Role: submit.", responses((status = 202, description = "accepted; Location names the job"), (status = 400, description = "malformed request"), (status = 403, description = "path outside the shared roots, or role too low"), (status = 409, description = "Idempotency-Key reused with a different request"), (status = 413, description = "upload too large"), (status = 422, description = "not a readable slide, or no µm/px"), (status = 503, description = "queue full, or the server is shutting down; see Retry-After")))]
async fn submit_slide(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    authorize(&state, request.headers(), Role::Submit, "submit slides")?;
    let idempotency_key = idempotency_key(request.headers())?;
    // Checked before reading the body and again just before the insert: the upload can
    // take minutes, during which the queue fills or shutdown starts.
    let intake_open = |state: &AppState| -> Result<(), ApiError> {
        let retry_after_secs = state.api.retry_after_secs;
        if !state.jobs.is_accepting() {
            return Err(ApiError::ShuttingDown { retry_after_secs });
        }
        if !state.jobs.has_room()? {
            let queued = state
                .jobs
                .store
                .count_in_state(crate::jobs::store::JobState::Queued)?;
            return Err(ApiError::QueueFull {
                queued,
                retry_after_secs,
            });
        }
        Ok(())
    };
    intake_open(&state)?;
    let slide = read_submission(&state, request).await?;
    if let Err(e) = validate(&state, &slide).await {
        slide.discard();
        return Err(e);
    }
    let id = uuid::Uuid::new_v4().to_string();
    let out_dir = state.jobs.results_dir(&id);
    let o = &slide.options;
    let job_request = JobRequest {
        model: o.model.clone(),
        mpp: o.mpp,
        accession_number: o.accession_number.clone(),
        specimen_id: o.specimen_id.clone(),
        callback_url: o.callback_url.clone(),
    };
    let hash = request_hash(&slide);
    if let Err(e) = intake_open(&state) {
        slide.discard();
        return Err(e);
    }
    let inserted = state.jobs.store.insert(&NewJob {
        id: &id,
        slide_path: &slide.path,
        slide_name: &slide.name,
        uploaded: slide.uploaded,
        request: &job_request,
        idempotency_key: idempotency_key.as_deref(),
        request_hash: &hash,
        out_dir: &out_dir,
    });
    let job = match inserted {
        Ok(Insert::Created(job)) => {
            tracing::info!(job = %job.id, uploaded = job.uploaded, "job queued");
            state.jobs.notify();
            job
        }
        Ok(Insert::Existing(job)) => {
            slide.discard();
            job
        }
        Ok(Insert::Conflict) => {
            slide.discard();
            return Err(ApiError::IdempotencyConflict);
        }
        Err(e) => {
            slide.discard();
            return Err(e.into());
        }
    };
    let location = format!("/v1/jobs/{}", job.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(job_view(&job)),
    )
        .into_response())
}

/// Grades a small slide within the request and answers with the result JSON.
#[utoipa::path(post, path = "/v1/grade", tag = "jobs", description = "Grade a small slide synchronously (up to --sync-max-pixels level-0 pixels and --sync-timeout-secs); same body as POST /v1/slides without callback. Role: submit.", responses((status = 200, description = "result JSON"), (status = 413, description = "too large or too slow for synchronous grading"), (status = 422, description = "not a readable slide")))]
async fn grade_now(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    authorize(&state, request.headers(), Role::Submit, "grade slides")?;
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
    let options = crate::pipeline::GradeOptions {
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
        let graded = crate::pipeline::grade_slide(&path, &pool, &options, &mut |_, _| {})?;
        let report = crate::report::build_report(
            &graded,
            pool.manifest(),
            pool.provider().as_str(),
            options.min_tissue,
        );
        Ok(serde_json::to_value(report).unwrap_or_default())
    });
    match tokio::time::timeout(state.api.sync_timeout, task).await {
        Ok(joined) => {
            Ok(Json(joined.map_err(|e| ApiError::Internal(e.to_string()))??).into_response())
        }
        Err(_) => {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            Err(ApiError::PayloadTooLarge(format!(
                "grading took over {} s; submit it to POST /v1/slides",
                state.api.sync_timeout.as_secs()
            )))
        }
    }
}

pub(crate) fn load_job(state: &AppState, id: &str) -> Result<Job, ApiError> {
    state
        .jobs
        .store
        .get(id)?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", description = "The 50 most recent jobs. Role: read.", responses((status = 200, description = "jobs")))]
async fn list_jobs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, Role::Read, "read jobs")?;
    let jobs: Vec<_> = state
        .jobs
        .store
        .list_recent(50)?
        .iter()
        .map(job_view)
        .collect();
    Ok(Json(serde_json::json!({ "jobs": jobs })))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", description = "A job: state (queued, running, done, failed, cancelled), progress, error, webhook delivery. Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "job"), (status = 404, description = "no such job")))]
async fn get_job(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, Role::Read, "read jobs")?;
    let job = load_job(&state, &id)?;
    let mut view = job_view(&job);
    if let Some(delivery) = state.jobs.store.delivery(&id)? {
        view["webhook"] = serde_json::to_value(delivery).unwrap_or_default();
    }
    Ok(Json(view))
}

/// Cancels a queued or running job; deletes a finished one with its files.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", description = "Cancel a queued or running job (202), or delete a finished one and its files (204). Role: admin.", params(("id" = String, Path, description = "job id")), responses((status = 202, description = "cancelling"), (status = 204, description = "deleted"), (status = 404, description = "no such job")))]
async fn delete_job(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Role::Admin, "delete jobs")?;
    let job = load_job(&state, &id)?;
    if !job.state.is_finished() && state.jobs.cancel(&id)? {
        return Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "id": id, "state": "cancelling" })),
        )
            .into_response());
    }
    remove_job_files(&job);
    state.viewer.forget(&id);
    state.jobs.store.delete(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Reads one output file of a finished job.
async fn job_file(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    file: &str,
    content_type: &'static str,
) -> Result<Response, ApiError> {
    authorize(state, headers, Role::Read, "read results")?;
    let job = load_job(state, id)?;
    match job.state {
        crate::jobs::store::JobState::Done => {}
        crate::jobs::store::JobState::Failed => {
            return Err(ApiError::NotReady(format!(
                "job failed: {}",
                job.error.unwrap_or_default()
            )));
        }
        other => return Err(ApiError::NotReady(format!("job is {}", other.as_str()))),
    }
    let path = job.out_dir.join(file);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::NotFound(format!("job {id} has no {file}")))?;
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from(bytes)).into_response())
}

type JobPath = axum::extract::Path<String>;

#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "results", description = "result.json of a finished job. Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "result"), (status = 409, description = "not finished or failed")))]
async fn job_result(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): JobPath,
) -> Result<Response, ApiError> {
    job_file(&state, &headers, &id, "result.json", "application/json").await
}

#[utoipa::path(get, path = "/v1/jobs/{id}/overlay.png", tag = "results", description = "Grad-CAM overlay with legend. Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "PNG"), (status = 409, description = "not finished")))]
async fn job_overlay(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): JobPath,
) -> Result<Response, ApiError> {
    job_file(&state, &headers, &id, "overlay.png", "image/png").await
}

#[utoipa::path(get, path = "/v1/jobs/{id}/tiles.geojson", tag = "results", description = "Tiles for QuPath (GeoJSON). Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "GeoJSON"), (status = 409, description = "not finished")))]
async fn job_geojson(
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

#[utoipa::path(get, path = "/v1/jobs/{id}/tiles.csv", tag = "results", description = "Tiles in WSInfer CSV columns. Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "CSV"), (status = 409, description = "not finished")))]
async fn job_csv(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): JobPath,
) -> Result<Response, ApiError> {
    job_file(&state, &headers, &id, "tiles.csv", "text/csv").await
}

#[utoipa::path(get, path = "/v1/jobs/{id}/heatmap/{file}", tag = "results", description = "Heatmap PNG of one class, e.g. `G4.png`. Role: read.", params(("id" = String, Path, description = "job id"), ("file" = String, Path, description = "<class>.png")), responses((status = 200, description = "PNG"), (status = 404, description = "no such class")))]
async fn job_heatmap(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path((id, file)): axum::extract::Path<(String, String)>,
) -> Result<Response, ApiError> {
    let class = file.strip_suffix(".png").unwrap_or(&file);
    let safe = crate::render::sanitise_file_stem(class);
    if safe != class {
        return Err(ApiError::NotFound(format!(
            "no heatmap for class `{class}`"
        )));
    }
    job_file(
        &state,
        &headers,
        &id,
        &format!("heatmap_{safe}.png"),
        "image/png",
    )
    .await
}

/// The part of result.json the LIMS messages need.
#[derive(Deserialize)]
struct ResultSummary {
    outcome: crate::pipeline::Outcome,
    grade: Option<crate::grading::Grade>,
    confidence: Option<f64>,
    model: ResultModel,
    slide: ResultSlide,
}

#[derive(Deserialize)]
struct ResultModel {
    name: String,
    version: String,
    onnx_sha256: String,
}

#[derive(Deserialize)]
struct ResultSlide {
    file_name: String,
}

/// Builds the LIMS message context of a finished job from its stored outputs.
async fn report_context(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<crate::lims::ReportContext, ApiError> {
    let result = job_file(state, headers, id, "result.json", "application/json").await?;
    let bytes = axum::body::to_bytes(result.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let summary: ResultSummary = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Internal(format!("unreadable result.json: {e}")))?;
    let job = load_job(state, id)?;
    let overlay = tokio::fs::read(job.out_dir.join("overlay.png")).await.ok();
    let issued =
        std::time::UNIX_EPOCH + Duration::from_secs(job.finished_at.unwrap_or(job.created_at));
    Ok(crate::lims::ReportContext {
        job_id: job.id,
        accession_number: job.request.accession_number,
        specimen_id: job.request.specimen_id,
        slide_name: summary.slide.file_name,
        issued,
        outcome: summary.outcome,
        grade: summary.grade,
        confidence: summary.confidence,
        model_name: summary.model.name,
        model_version: summary.model.version,
        model_sha256: summary.model.onnx_sha256,
        overlay_png: overlay,
    })
}

#[utoipa::path(get, path = "/v1/jobs/{id}/fhir", tag = "results", description = "FHIR R4 Bundle (collection): DiagnosticReport, Observations for Gleason score, ISUP grade group and tumour %, the overlay as presentedForm, the model as a Device. Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "FHIR Bundle"), (status = 409, description = "not finished")))]
async fn job_fhir(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): JobPath,
) -> Result<Response, ApiError> {
    let context = report_context(&state, &headers, &id).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/fhir+json")],
        Json(crate::lims::fhir::bundle(&context)),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/jobs/{id}/hl7", tag = "results", description = "HL7 v2.5.1 ORU^R01 message with OBX segments (segments end in CR). Role: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "HL7 v2 message"), (status = 409, description = "not finished")))]
async fn job_hl7(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): JobPath,
) -> Result<Response, ApiError> {
    let context = report_context(&state, &headers, &id).await?;
    Ok((
        [(header::CONTENT_TYPE, "x-application/hl7-v2+er7")],
        crate::lims::hl7::oru_r01(&context),
    )
        .into_response())
}
