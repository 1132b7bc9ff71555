//! The browser viewer: the page at `/` with its embedded assets, and Deep Zoom tiles of
//! a job's slide for it.
//!
//! The page (`web/index.html`, `web/viewer.js`, `web/viewer.css`) and the OpenSeadragon
//! build from npm (`web/node_modules`, pinned in `web/package-lock.json`) are compiled
//! into the binary, so the viewer works with no network and no files beside the binary.
//! The page and its assets need no key; everything they fetch goes through the API's
//! usual auth.
//!
//! Tiles come from [`crate::slide::deepzoom`]. Opening a slide and cutting a tile are
//! blocking OpenSlide calls, so both run in `spawn_blocking`; open slides and encoded
//! tiles are kept in bounded in-memory caches (`tile_cache::SlideTiles`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::auth::authorize;
use super::error::{ApiError, JobErrors, KeyedErrors};
use super::jobs::load_job;
use super::state::AppState;
use super::tile_cache::TileKey;
use crate::serve::jobs::store::{Job, JobState, KeyRole};
use crate::slide::SlideError;
use crate::slide::deepzoom::DeepZoom;

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const VIEWER_JS: &str = include_str!("../../../web/viewer.js");
const VIEWER_CSS: &str = include_str!("../../../web/viewer.css");
/// Path checked by build.rs, which says to run `make setup` when it is missing.
const OPENSEADRAGON_JS: &[u8] = include_bytes!(
    "../../../web/node_modules/openseadragon/build/openseadragon/openseadragon.min.js"
);

/// Only this origin may provide scripts, styles, images and connections: the page cannot
/// load anything from another host even by mistake. Tiles and heatmaps arrive as
/// `blob:` URLs (fetched with the API key); OpenSeadragon sets inline styles.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; \
     style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// A job's slide never changes, so its tiles may be cached by the browser; `private`
/// because they are behind a key.
const TILE_CACHE_CONTROL: &str = "private, max-age=86400, immutable";

/// The job, if its slide can still be shown: the file is there (slides are deleted with
/// the job's outputs after the retention time, or by `DELETE /v1/jobs/{id}`).
fn job_with_slide(state: &AppState, id: &str) -> Result<Job, ApiError> {
    let job = load_job(state, id)?;
    if !job.slide_path.is_file() {
        return Err(ApiError::NotFound(format!(
            "the slide of job {id} is no longer stored (slides are deleted with the job's \
             outputs after the retention time)"
        )));
    }
    Ok(job)
}

/// Opens the job's slide in a blocking task. A slide that cannot be opened for a job
/// that failed is reported as the job's failure (409), which is what the user needs to
/// know; otherwise the slide error speaks for itself.
async fn open_slide(state: &Arc<AppState>, job: Job) -> Result<(Job, Arc<DeepZoom>), ApiError> {
    let viewer = state.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let slide = viewer.viewer.slide(&job);
        (job, slide)
    })
    .await?;
    match opened {
        (job, Ok(slide)) => Ok((job, slide)),
        (job, Err(_)) if job.state == JobState::Failed => Err(ApiError::NotReady(format!(
            "job {} failed before its slide could be opened: {}",
            job.id,
            job.error.unwrap_or_default()
        ))),
        (_, Err(e)) => Err(e.into()),
    }
}

fn tile_response(content_type: &'static str, body: impl Into<Body>) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(TILE_CACHE_CONTROL),
            ),
        ],
        body.into(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/jobs/{id}/slide.dzi", tag = "viewer", description = "Deep Zoom descriptor (DZI XML) of the job's slide: level-0 size, 254 px JPEG tiles with 1 px overlap, at `slide_files/`. Available from submission until the slide is deleted. KeyRole: read.", params(("id" = String, Path, description = "job id")), responses((status = 200, description = "Deep Zoom descriptor", body = String, content_type = "application/xml"), JobErrors, KeyedErrors))]
pub(super) async fn slide_dzi(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, KeyRole::Read, "read slides")?;
    let job = job_with_slide(&state, &id)?;
    let (_, slide) = open_slide(&state, job).await?;
    Ok(tile_response("application/xml", slide.dzi_xml()))
}

/// `{col}_{row}.jpeg` → `(col, row)`.
fn parse_tile_name(name: &str) -> Option<(u32, u32)> {
    let (col, row) = name.strip_suffix(".jpeg")?.split_once('_')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(col) && digits(row)) {
        return None;
    }
    Some((col.parse().ok()?, row.parse().ok()?))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/slide_files/{level}/{tile}", tag = "viewer", description = "One Deep Zoom tile of the job's slide as JPEG; `tile` is `{col}_{row}.jpeg`. Level 0 is 1×1 px, the last level is full resolution. KeyRole: read.", params(("id" = String, Path, description = "job id"), ("level" = u32, Path, description = "Deep Zoom level"), ("tile" = String, Path, description = "`{col}_{row}.jpeg`")), responses((status = 200, description = "JPEG tile", body = Vec<u8>, content_type = "image/jpeg"), JobErrors, KeyedErrors))]
pub(super) async fn slide_tile(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path((id, level, tile)): axum::extract::Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, KeyRole::Read, "read slides")?;
    let no_tile = || {
        ApiError::Slide(SlideError::NoSuchTile {
            detail: format!(
                "`{level}/{tile}`: tiles are `slide_files/{{level}}/{{col}}_{{row}}.jpeg`"
            ),
        })
    };
    let level: u32 = level.parse().map_err(|_| no_tile())?;
    let (col, row) = parse_tile_name(&tile).ok_or_else(no_tile)?;
    let job = job_with_slide(&state, &id)?;
    let key = TileKey {
        job: job.id.clone(),
        level,
        col,
        row,
    };
    if let Some(jpeg) = state.viewer.tiles.get(&key) {
        return Ok(tile_response("image/jpeg", jpeg));
    }
    let (_, slide) = open_slide(&state, job).await?;
    let jpeg = tokio::task::spawn_blocking(move || slide.tile_jpeg(level, col, row)).await??;
    let jpeg = Bytes::from(jpeg);
    state.viewer.tiles.insert(key, jpeg.clone());
    Ok(tile_response("image/jpeg", jpeg))
}

/// The viewer page. No key needed: it holds no data, and asks for a key when the API
/// answers 401.
pub async fn index() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// The page's scripts and styles, compiled into the binary.
pub async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (content_type, body, cache): (_, &'static [u8], _) = match file.as_str() {
        "viewer.js" => (
            "text/javascript; charset=utf-8",
            VIEWER_JS.as_bytes(),
            "no-cache",
        ),
        "viewer.css" => ("text/css; charset=utf-8", VIEWER_CSS.as_bytes(), "no-cache"),
        // Pinned in web/package-lock.json: changes only with a new binary.
        "openseadragon.min.js" => (
            "text/javascript; charset=utf-8",
            OPENSEADRAGON_JS,
            "public, max-age=86400",
        ),
        _ => return ApiError::NotFound(format!("no asset `{file}`")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_names() {
        assert_eq!(parse_tile_name("3_14.jpeg"), Some((3, 14)));
        for bad in [
            "3_14.jpg",
            "3-14.jpeg",
            "_1.jpeg",
            "1_.jpeg",
            "+1_2.jpeg",
            "1_2_3.jpeg",
            "99999999999_0.jpeg",
            "../1_2.jpeg",
        ] {
            assert_eq!(parse_tile_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn page_and_assets_are_embedded() {
        assert!(INDEX_HTML.contains("/assets/viewer.js"));
        assert!(INDEX_HTML.contains("/assets/openseadragon.min.js"));
        assert!(!OPENSEADRAGON_JS.is_empty());
    }
}
