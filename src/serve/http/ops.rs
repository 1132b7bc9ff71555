//! Operations: liveness, readiness, Prometheus metrics, the OpenAPI document and its
//! page, and the model list.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::auth::authorize;
use super::error::{ApiError, KeyedErrors};
use super::state::AppState;

use crate::model::contract::Manifest;
use crate::model::registry::RefusedModel;
use crate::serve::jobs::store::KeyRole;

/// `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub models_loaded: usize,
    pub models_refused: usize,
    pub store_writable: bool,
}

/// One loaded model in `GET /v1/models`: its manifest, the execution provider it runs on,
/// and whether requests that name no model get it.
#[derive(Debug, Serialize)]
pub struct ModelEntry {
    pub provider: &'static str,
    pub default: bool,
    #[serde(flatten)]
    pub manifest: Manifest,
}

/// The schema of [`ModelEntry`]: the manifest's properties plus `provider` and `default`.
/// Written out because the manifest refuses unknown fields (`additionalProperties:
/// false`), which a derived `allOf` would apply to `provider` and `default` too.
impl utoipa::PartialSchema for ModelEntry {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
        let mut object = match <Manifest as utoipa::PartialSchema>::schema() {
            utoipa::openapi::RefOr::T(Schema::Object(object)) => object,
            _ => Object::new(),
        };
        object.additional_properties = None;
        object.properties.insert(
            "provider".into(),
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "the execution provider the model runs on: cpu or cuda",
                ))
                .into(),
        );
        object.properties.insert(
            "default".into(),
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .description(Some("requests that name no model get this one"))
                .into(),
        );
        object
            .required
            .extend(["provider".into(), "default".into()]);
        Schema::Object(object).into()
    }
}

impl utoipa::ToSchema for ModelEntry {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <Manifest as utoipa::ToSchema>::schemas(schemas);
    }
}

/// `GET /v1/models`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelEntry>,
    pub refused: Vec<RefusedModel>,
}

#[utoipa::path(get, path = "/healthz", tag = "ops", description = "Liveness: the process answers.", responses((status = 200, description = "alive", body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready when at least one model is loaded and the job store takes writes.
#[utoipa::path(get, path = "/readyz", tag = "ops", description = "Readiness: at least one model loaded and the job store writable.", responses((status = 200, description = "ready", body = Readiness), (status = 503, description = "not ready", body = Readiness)))]
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let store_ok = state.jobs.store.check_writable();
    let ready = !state.models.pools.is_empty() && store_ok.is_ok();
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        models_loaded: state.models.pools.len(),
        models_refused: state.refused.len(),
        store_writable: store_ok.is_ok(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "ops", description = "Prometheus metrics (text exposition format).", responses((status = 200, description = "metrics", body = String, content_type = "text/plain")))]
pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Ok(n) = state
        .jobs
        .store
        .count_in_state(crate::serve::jobs::store::JobState::Queued)
    {
        crate::telemetry::global().queue_depth.set(n as i64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/models", tag = "models", description = "Loaded models (manifests, active execution provider) and refused model folders. Role: read.", responses((status = 200, description = "models", body = ModelList), KeyedErrors))]
pub(super) async fn list_models(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<ModelList>, ApiError> {
    authorize(&state, &headers, KeyRole::Read, "list models")?;
    let models = state
        .models
        .pools
        .values()
        .map(|p| ModelEntry {
            provider: p.provider().as_str(),
            default: state.models.default.as_deref() == Some(p.manifest().name.as_str()),
            manifest: p.manifest().clone(),
        })
        .collect();
    Ok(Json(ModelList {
        models,
        refused: state.refused.clone(),
    }))
}
