//! The tile grid over a slide's tissue, as pure geometry.
//!
//! Tiles are squares of `tile_px` pixels at the model's µm/px. On level 0 that is
//! `tile_px · model_mpp / slide_mpp` pixels (a float: slide and model resolutions rarely
//! divide). The grid starts at the slide's origin, does not overlap, and covers the whole
//! slide (edge tiles read past the border, which the reader paints white). A tile is kept
//! when its share of tissue in the thumbnail mask reaches `min_tissue`.

use serde::Serialize;

use crate::grade::tissue::TissueMask;

/// One tile of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TileSpec {
    pub col: u32,
    pub row: u32,
    /// Level-0 origin in pixels.
    pub x: f64,
    pub y: f64,
    /// Level-0 side in pixels.
    pub side: f64,
    /// Share of the tile that the tissue mask covers, 0–1.
    pub tissue_fraction: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TileGrid {
    /// Level-0 side of every tile, pixels.
    pub side: f64,
    pub cols: u32,
    pub rows: u32,
    /// Kept tiles, row-major.
    pub tiles: Vec<TileSpec>,
}

/// Level-0 pixels per tile side.
pub fn tile_side_level0(tile_px: u32, model_mpp: f64, slide_mpp: f64) -> f64 {
    f64::from(tile_px) * model_mpp / slide_mpp
}

/// Builds the grid over a `width × height` level-0 slide; `mask` covers the whole slide
/// at any scale (its own width/height give the scale).
pub fn grid(width: u64, height: u64, side: f64, mask: &TissueMask, min_tissue: f64) -> TileGrid {
    let cols = (width as f64 / side).ceil().max(0.0) as u32;
    let rows = (height as f64 / side).ceil().max(0.0) as u32;
    let sx = f64::from(mask.mask.width()) / width.max(1) as f64;
    let sy = f64::from(mask.mask.height()) / height.max(1) as f64;
    let mut tiles = Vec::new();
    for row in 0..rows {
        for col in 0..cols {
            let (x, y) = (f64::from(col) * side, f64::from(row) * side);
            // The tile's footprint in mask pixels, at least one pixel wide.
            let (mx0, my0) = ((x * sx).floor(), (y * sy).floor());
            let mx1 = ((x + side) * sx).ceil().max(mx0 + 1.0);
            let my1 = ((y + side) * sy).ceil().max(my0 + 1.0);
            let tissue_fraction = mask.fraction_in(mx0 as u32, my0 as u32, mx1 as u32, my1 as u32);
            if tissue_fraction >= min_tissue && tissue_fraction > 0.0 {
                tiles.push(TileSpec {
                    col,
                    row,
                    x,
                    y,
                    side,
                    tissue_fraction,
                });
            }
        }
    }
    TileGrid {
        side,
        cols,
        rows,
        tiles,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    #[test]
    fn tile_side_follows_resolution_ratio() {
        // A 64 px tile at 8 µm/px on a 0.25 µm/px slide spans 2048 level-0 px.
        assert_eq!(tile_side_level0(64, 8.0, 0.25), 2048.0);
        assert!((tile_side_level0(64, 8.0, 0.499) - 1026.052).abs() < 1e-3);
    }

    #[test]
    fn grid_keeps_only_tissue_tiles_and_covers_edges() {
        // 1000×600 slide, mask at 1/10 scale with tissue in the left half.
        let mask = TissueMask {
            mask: GrayImage::from_fn(100, 60, |x, _| Luma([if x < 50 { 255 } else { 0 }])),
        };
        let g = grid(1000, 600, 256.0, &mask, 0.5);
        assert_eq!(
            (g.cols, g.rows),
            (4, 3),
            "partial edge tiles are part of the grid"
        );
        // Columns 0 and 1 (0–512 px) are tissue; column 1 spans 256–512, half of it tissue.
        assert!(g.tiles.iter().all(|t| t.col <= 1));
        assert_eq!(g.tiles.len(), 6);
        let strict = grid(1000, 600, 256.0, &mask, 1.0);
        assert!(strict.tiles.iter().all(|t| t.col == 0));
    }

    #[test]
    fn empty_mask_gives_no_tiles() {
        let mask = TissueMask {
            mask: GrayImage::new(10, 10),
        };
        assert!(grid(1000, 1000, 100.0, &mask, 0.0).tiles.is_empty());
    }
}
