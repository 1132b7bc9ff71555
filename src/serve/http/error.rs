//! The one table from error kinds to HTTP statuses.
//!
//! Every layer has its own error enum with a stable `kind()` string; the API wraps them
//! here and nowhere else decides a status. Bodies are always `{error, error_type}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::grade::pipeline::GradeError;
use crate::grader::GraderError;
use crate::model::contract::ModelError;
use crate::model::engine::EngineError;
use crate::serve::jobs::store::StoreError;
use crate::slide::SlideError;

/// Every error response's body.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// One line for people.
    pub error: String,
    /// A stable machine-readable kind, e.g. `model_not_found`, `missing_mpp`.
    pub error_type: &'static str,
}

/// The errors any route that takes an API key can answer (OpenAPI responses).
#[derive(utoipa::IntoResponses)]
pub enum KeyedErrors {
    /// No `Authorization: Bearer <key>`, or an unknown or revoked key.
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// The key's role cannot do this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The request took longer than the server's time limit (no body).
    #[response(status = 408)]
    Timeout,
    /// A server-side failure (job store, model, a task that panicked).
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// The errors of a route that names a job (OpenAPI responses).
#[derive(utoipa::IntoResponses)]
pub enum JobErrors {
    /// No such job.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The job has not finished, or failed, so the output does not exist.
    #[response(status = 409)]
    NotReady(ErrorBody),
}

/// The errors of a submission, beyond those of every keyed route (OpenAPI responses).
#[derive(utoipa::IntoResponses)]
pub enum SubmissionErrors {
    /// A malformed body, form field, header or value.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// The named model is not loaded.
    #[response(status = 404)]
    UnknownModel(ErrorBody),
    /// `Idempotency-Key` reused with a different request.
    #[response(status = 409)]
    IdempotencyConflict(ErrorBody),
    /// The upload or JSON body is too large, or the slide too large or slow to grade
    /// synchronously.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Not a readable slide, no µm/px, or not brightfield.
    #[response(status = 422)]
    Unprocessable(ErrorBody),
    /// The queue is full, no model is loaded, or the server is shutting down; see
    /// `Retry-After`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("missing `Authorization: Bearer <key>` header")]
    Unauthenticated,
    #[error("unknown or revoked API key")]
    InvalidKey,
    #[error("this key's role ({have}) cannot {action}")]
    Forbidden {
        have: &'static str,
        action: &'static str,
    },
    #[error("path is outside the configured shared roots")]
    PathForbidden,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("the job queue is full ({queued} queued); retry later")]
    QueueFull { queued: u64, retry_after_secs: u64 },
    #[error("the server is shutting down and takes no new jobs; retry later")]
    ShuttingDown { retry_after_secs: u64 },
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    #[error("{0}")]
    NotReady(String),
    #[error("no model is loaded; the server cannot grade")]
    NoModels,
    #[error("model `{0}` is not loaded (see GET /v1/models)")]
    UnknownModel(String),
    #[error(transparent)]
    Slide(#[from] SlideError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Grade(#[from] GraderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Stable machine-readable kind: the `error_type` of the response body.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::InvalidKey => "invalid_api_key",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::PathForbidden => "path_forbidden",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::ShuttingDown { .. } => "shutting_down",
            ApiError::IdempotencyConflict => "idempotency_conflict",
            ApiError::NotReady(_) => "not_ready",
            ApiError::NoModels => "no_models",
            ApiError::UnknownModel(_) => "model_not_found",
            ApiError::Slide(e) => e.kind(),
            ApiError::Model(e) => e.kind(),
            ApiError::Engine(e) => e.kind(),
            ApiError::Grade(e) => e.kind(),
            ApiError::Store(e) => e.kind(),
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) | ApiError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated | ApiError::InvalidKey => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } | ApiError::PathForbidden => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QueueFull { .. } | ApiError::ShuttingDown { .. } | ApiError::NoModels => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::IdempotencyConflict | ApiError::NotReady(_) => StatusCode::CONFLICT,
            ApiError::Slide(e) => ApiError::status_of_slide(e),
            ApiError::Grade(GraderError::Grade(e)) => match e {
                GradeError::Slide(s) => ApiError::status_of_slide(s),
                GradeError::NotBrightfield { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                GradeError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
                GradeError::Engine(e) => ApiError::status_of_engine(e),
                // A model whose classes are not Gleason patterns, or a reader thread that
                // died: the server's problem, not the request's.
                GradeError::UnknownClass(_) | GradeError::ReaderStopped => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            ApiError::Grade(GraderError::Report(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            // A model that fails its contract is a server-side configuration problem.
            ApiError::Model(_) | ApiError::Store(_) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Engine(e) => ApiError::status_of_engine(e),
        }
    }

    fn status_of_slide(e: &SlideError) -> StatusCode {
        match e {
            SlideError::NotFound(_) | SlideError::NoSuchTile { .. } => StatusCode::NOT_FOUND,
            SlideError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // The server could not run its decoder process: not the client's fault.
            SlideError::DecoderUnavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
            // The slide itself is the problem: well-formed request, unusable content.
            SlideError::UnsupportedFormat { .. }
            | SlideError::Corrupt { .. }
            | SlideError::MissingMpp { .. }
            | SlideError::InvalidMpp(_)
            | SlideError::NoPyramid { .. }
            | SlideError::DecoderCrashed { .. }
            | SlideError::InvalidRegion { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn status_of_engine(e: &EngineError) -> StatusCode {
        match e {
            EngineError::BadInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
            EngineError::Runtime { .. } | EngineError::CudaUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // The model misbehaved on a well-formed tile: the server's problem.
            EngineError::Session { .. } | EngineError::Inference(_) | EngineError::BadOutput(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// A blocking task that panicked or was cancelled: always the server's fault.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        let what = if e.is_panic() {
            "panicked"
        } else {
            "was cancelled"
        };
        ApiError::Internal(format!("a background task {what}"))
    }
}

impl From<GradeError> for ApiError {
    fn from(e: GradeError) -> Self {
        ApiError::Grade(GraderError::Grade(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error_type = self.kind(), error = %self, "request failed");
        }
        let body = serde_json::json!({ "error": self.to_string(), "error_type": self.kind() });
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::QueueFull {
                retry_after_secs, ..
            }
            | ApiError::ShuttingDown { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthenticated | ApiError::InvalidKey => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
