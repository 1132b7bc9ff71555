//! The HTTP API (axum). Handlers stay thin: they call the library and turn its errors into
//! `{error, error_type}` JSON through [`crate::api_error`], the one place that maps errors
//! to statuses.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::api_error::ApiError;
use crate::engine::{EngineConfig, EnginePool};
use crate::model::{self, Manifest};

/// A model that passed the contract and has sessions ready.
pub struct LoadedModel {
    pub pool: Arc<EnginePool>,
}

/// A model folder that was refused, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedModel {
    pub folder: String,
    pub error: String,
    pub error_type: &'static str,
}

pub struct AppState {
    pub models: Vec<LoadedModel>,
    pub refused: Vec<RefusedModel>,
}

impl AppState {
    /// Loads every model folder under `dir`. A folder that fails the contract, or whose
    /// session cannot be built, is refused with one log line and kept out of service; the
    /// other models still load. A missing or empty `dir` gives a server with no models.
    pub fn load_models(dir: &Path, config: &EngineConfig) -> AppState {
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
        let mut state = AppState {
            models: Vec::new(),
            refused: Vec::new(),
        };
        for folder in folders {
            let loaded = model::load(&folder)
                .map_err(|e| (e.to_string(), e.kind()))
                .and_then(|m| EnginePool::new(&m, config).map_err(|e| (e.to_string(), e.kind())));
            match loaded {
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
                    state.models.push(LoadedModel {
                        pool: Arc::new(pool),
                    });
                }
                Err((error, error_type)) => {
                    tracing::warn!(folder = %folder.display(), %error, "refused model");
                    state.refused.push(RefusedModel {
                        folder: folder.display().to_string(),
                        error,
                        error_type,
                    });
                }
            }
        }
        if state.models.is_empty() {
            tracing::warn!(dir = %dir.display(), "no models loaded; grading endpoints will refuse work");
        }
        state
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/models", get(list_models))
        .fallback(not_found)
        .with_state(state)
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

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready once the model folder has been read. Readiness does not require a model: an
/// empty `models/` is a valid (if idle) deployment, and `/v1/models` says what loaded.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let body = serde_json::json!({
        "status": "ready",
        "models_loaded": state.models.len(),
        "models_refused": state.refused.len(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

#[derive(Serialize)]
struct ModelEntry<'a> {
    provider: &'static str,
    #[serde(flatten)]
    manifest: &'a Manifest,
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let models: Vec<ModelEntry> = state
        .models
        .iter()
        .map(|m| ModelEntry {
            provider: m.pool.provider().as_str(),
            manifest: m.pool.manifest(),
        })
        .collect();
    Json(serde_json::json!({ "models": models, "refused": state.refused }))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
