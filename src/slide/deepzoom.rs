//! Deep Zoom (DZI) tiles of a slide for the browser viewer, cut by openslide-rs's
//! [`DeepZoomGenerator`] (a translation of openslide-python's).
//!
//! The pyramid covers the whole level-0 image (`limit_bounds` off), so Deep Zoom pixel
//! `(x, y)` of the full-resolution level is level-0 pixel `(x, y)`: the same frame as the
//! tile grid, the heatmaps and the CSV/GeoJSON exports. Cropping to the scanned bounds
//! would shift the slide against every one of those by the bounds' origin.

use std::io::Cursor;
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use openslide_rs::errors::OpenSlideError;
use openslide_rs::{Address, DeepZoomGenerator, DeepZoomOptions, OpenSlide};

use super::{ReadLimits, Result, SlideError, open_openslide};

/// Tile side without overlap. 254 + 2×1 overlap = 256 pixels for inner tiles, the
/// openslide-python default, which keeps tiles at a power-of-two size on the GPU.
pub const TILE_SIZE: u32 = 254;
/// Pixels each tile repeats from its neighbours, so that a viewer can blend seams.
pub const TILE_OVERLAP: u32 = 1;
/// JPEG quality of served tiles: H&E at 85 shows no visible artefacts at a third of
/// the size of quality 95.
pub const JPEG_QUALITY: u8 = 85;

/// A slide opened for Deep Zoom tiling. `Send + Sync`: OpenSlide handles may be read
/// from several threads at once (see [`super::Slide`]), and the rest is plain data.
#[derive(Debug)]
pub struct DeepZoom {
    generator: DeepZoomGenerator<OpenSlide>,
    limits: ReadLimits,
}

impl DeepZoom {
    /// Opens the slide at `path` for tiling. Unlike [`super::Slide::open`] this needs
    /// no µm/px: a viewer only shows pixels.
    pub fn open(path: impl AsRef<Path>) -> Result<DeepZoom> {
        let path = path.as_ref();
        let osr = open_openslide(path)?;
        let options = DeepZoomOptions::new(TILE_SIZE).with_overlap(TILE_OVERLAP);
        let generator =
            DeepZoomGenerator::new(osr, options).map_err(|e| SlideError::UnsupportedFormat {
                path: path.to_path_buf(),
                detail: format!("cannot build a Deep Zoom pyramid: {e}"),
            })?;
        Ok(DeepZoom {
            generator,
            limits: ReadLimits::default(),
        })
    }

    /// Full-resolution size in pixels, which is the slide's level-0 size.
    pub fn dimensions(&self) -> (u32, u32) {
        self.generator
            .level_dimensions()
            .last()
            .map_or((0, 0), |s| (s.w, s.h))
    }

    /// Deep Zoom levels: level 0 is 1×1, the last is full resolution.
    pub fn level_count(&self) -> u32 {
        self.generator.level_count()
    }

    /// Pixel size of Deep Zoom `level`, if it exists.
    pub fn level_dimensions(&self, level: u32) -> Option<(u32, u32)> {
        self.generator
            .level_dimensions()
            .get(level as usize)
            .map(|s| (s.w, s.h))
    }

    /// Tiles across and down at Deep Zoom `level`, if it exists.
    pub fn level_tiles(&self, level: u32) -> Option<(u32, u32)> {
        self.generator
            .level_tiles()
            .get(level as usize)
            .map(|s| (s.w, s.h))
    }

    /// The `.dzi` descriptor for JPEG tiles.
    pub fn dzi_xml(&self) -> String {
        let (w, h) = self.dimensions();
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <Image xmlns=\"http://schemas.microsoft.com/deepzoom/2008\" Format=\"jpeg\" \
             Overlap=\"{TILE_OVERLAP}\" TileSize=\"{TILE_SIZE}\"><Size Width=\"{w}\" Height=\"{h}\"/></Image>\n"
        )
    }

    /// Tile `(col, row)` of Deep Zoom `level` as a JPEG, transparent areas composited
    /// over the slide's background colour (white unless the slide says otherwise).
    ///
    /// Errors: [`SlideError::NoSuchTile`] for a level or tile outside the pyramid,
    /// [`SlideError::TooLarge`] when the read behind the tile exceeds the read budget
    /// (the coarse levels of a slide without a coarse pyramid level read the whole
    /// slide), [`SlideError::Corrupt`] when OpenSlide cannot decode the region.
    pub fn tile_jpeg(&self, level: u32, col: u32, row: u32) -> Result<Vec<u8>> {
        let address = Address { x: col, y: row };
        let info = self
            .generator
            .tile_info(level, address)
            .map_err(|e| match e {
                OpenSlideError::InvalidLevel { .. } | OpenSlideError::InvalidAddress { .. } => {
                    SlideError::NoSuchTile {
                        detail: e.to_string(),
                    }
                }
                other => SlideError::Corrupt {
                    detail: other.to_string(),
                },
            })?;
        let read_pixels = u64::from(info.region.size.w) * u64::from(info.region.size.h);
        if read_pixels > self.limits.max_pixels {
            return Err(SlideError::TooLarge {
                requested_pixels: read_pixels,
                budget: self.limits.max_pixels,
            });
        }
        let tile = self
            .generator
            .tile_rgb(level, address)
            .map_err(|e| SlideError::Corrupt {
                detail: format!("Deep Zoom tile {level}/{col}_{row}: {e}"),
            })?;
        let mut jpeg = Cursor::new(Vec::with_capacity(32 << 10));
        JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
            .encode_image(&tile)
            .map_err(|e| SlideError::Corrupt {
                detail: format!("cannot encode tile {level}/{col}_{row} as JPEG: {e}"),
            })?;
        Ok(jpeg.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_zoom_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<DeepZoom>();
    }
}
