//! The browser viewer's caches: recently opened slides and recently served Deep Zoom
//! tiles, both bounded, shared by every request through the service state.

use std::sync::Arc;

use axum::body::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::serve::jobs::store::Job;
use crate::slide::SlideError;
use crate::slide::deepzoom::DeepZoom;

/// Open slides kept: each holds an OpenSlide handle with its own decoded-tile cache.
pub const DEFAULT_MAX_SLIDES: usize = 8;
/// Bytes of encoded tiles kept (about 2,000 tiles of 256 px at JPEG quality 85).
pub const DEFAULT_MAX_TILE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TileKey {
    pub(super) job: String,
    pub(super) level: u32,
    pub(super) col: u32,
    pub(super) row: u32,
}

/// Weighs a cached tile by its size, so the tile cache is bounded in bytes.
#[derive(Debug, Clone)]
pub(super) struct TileBytes;

impl Weighter<TileKey, Bytes> for TileBytes {
    fn weight(&self, key: &TileKey, tile: &Bytes) -> u64 {
        (tile.len() + key.job.len()) as u64
    }
}

/// Recently opened slides and recently served tiles, both bounded.
pub struct SlideTiles {
    slides: Cache<String, Arc<DeepZoom>>,
    pub(super) tiles: Cache<TileKey, Bytes, TileBytes>,
}

impl Default for SlideTiles {
    fn default() -> Self {
        SlideTiles::new(DEFAULT_MAX_SLIDES, DEFAULT_MAX_TILE_BYTES)
    }
}

impl SlideTiles {
    pub fn new(max_slides: usize, max_tile_bytes: u64) -> SlideTiles {
        SlideTiles {
            slides: Cache::new(max_slides.max(1)),
            // The item estimate only sizes the hash table; the weight is the bound.
            tiles: Cache::with_weighter(
                (max_tile_bytes / (24 << 10)).max(16) as usize,
                max_tile_bytes.max(1),
                TileBytes,
            ),
        }
    }

    /// Drops everything cached for `job` (its files are being deleted).
    pub fn forget(&self, job: &str) {
        self.slides.remove(job);
        self.tiles.retain(|key: &TileKey, _: &Bytes| key.job != job);
    }

    /// The job's slide opened for tiling, from the cache or opened now. Blocking.
    pub(super) fn slide(&self, job: &Job) -> Result<Arc<DeepZoom>, SlideError> {
        self.slides.get_or_insert_with(job.id.as_str(), || {
            DeepZoom::open(&job.slide_path).map(Arc::new)
        })
    }
}
