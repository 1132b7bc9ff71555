//! The one table from error kinds to HTTP statuses.
//!
//! Every layer has its own error enum with a stable `kind()` string; the API wraps them
//! here and nowhere else decides a status. Bodies are always `{error, error_type}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::engine::EngineError;
use crate::model::ModelError;
use crate::wsi::SlideError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Slide(#[from] SlideError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl ApiError {
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Slide(e) => e.kind(),
            ApiError::Model(e) => e.kind(),
            ApiError::Engine(e) => e.kind(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Slide(e) => match e {
                SlideError::NotFound(_) => StatusCode::NOT_FOUND,
                SlideError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                // The slide itself is the problem: well-formed request, unusable content.
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            },
            // A model that fails its contract is a server-side configuration problem.
            ApiError::Model(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Engine(e) => match e {
                EngineError::BadInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
                EngineError::Runtime { .. } | EngineError::CudaUnavailable(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({ "error": self.to_string(), "error_type": self.error_type() });
        (self.status(), Json(body)).into_response()
    }
}
