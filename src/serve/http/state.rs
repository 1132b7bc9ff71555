//! What every handler shares: the API settings and the service state.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::model::registry::RefusedModel;
use crate::serve::jobs::{Jobs, Models};

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
    pub viewer: super::tile_cache::SlideTiles,
}
