//! The one table from error kinds to HTTP statuses.
//!
//! Every layer has its own error enum with a stable `kind()` string; the API wraps them
//! here and nowhere else decides a status. Bodies are always `{error, error_type}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::engine::EngineError;
use crate::jobs::store::StoreError;
use crate::model::ModelError;
use crate::pipeline::GradeError;
use crate::wsi::SlideError;

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
    Grade(#[from] GradeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn error_type(&self) -> &'static str {
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
            ApiError::Store(_) => "store_error",
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
            ApiError::Grade(e) => match e {
                GradeError::Slide(s) => ApiError::status_of_slide(s),
                GradeError::NotBrightfield { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                GradeError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
                GradeError::Engine(e) => ApiError::status_of_engine(e),
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
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
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn status_of_engine(e: &EngineError) -> StatusCode {
        match e {
            EngineError::BadInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
            EngineError::Runtime { .. } | EngineError::CudaUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error_type = self.error_type(), error = %self, "request failed");
        }
        let body =
            serde_json::json!({ "error": self.to_string(), "error_type": self.error_type() });
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
