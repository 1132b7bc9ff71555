//! Stitches each tile's Grad-CAM grid into one slide-level heatmap per class. The same
//! stitching serves the AT+ maps of models that export them.
//!
//! Every tile contributes its `h × w` CAM cells at `(col·w + i, row·h + j)`, so the
//! canvas is `cols·w × rows·h` cells and one cell spans `side / w` level-0 pixels. Raw CAM
//! values are multiplied by a weight per tile and class: Grad-CAM says *where* a class's
//! evidence is within a tile but not *how likely* the class is, and a slide map should show
//! the second as well. The grader passes each tile's probabilities averaged over its
//! neighbourhood, the same ones the grade counts with (`grade::pipeline::stitch_maps`):
//! weighted by its own probability alone, a lone misread tile the grade discards could be
//! the map's peak, and on 81 generated tuning cores the 1.25× Student's peak fell on the
//! wrong pattern 15 times in 117, against 4 with the smoothed weight (RESULTS.md). Cells of
//! tiles that were not inferred stay 0.

use serde::Serialize;

use crate::grade::tiling::{TileGrid, TileSpec};

#[derive(Debug, Clone, Serialize)]
pub struct Heatmaps {
    pub classes: Vec<String>,
    /// Canvas size in cells.
    pub width: u32,
    pub height: u32,
    /// Level-0 pixels per cell side.
    pub cell_side: f64,
    /// One `width × height` row-major map per class.
    #[serde(skip)]
    pub maps: Vec<Vec<f32>>,
}

impl Heatmaps {
    pub fn new(classes: &[String], grid: &TileGrid, cam_grid: [u32; 2]) -> Heatmaps {
        let [h, w] = cam_grid;
        let (width, height) = (grid.cols * w, grid.rows * h);
        Heatmaps {
            classes: classes.to_vec(),
            width,
            height,
            cell_side: grid.side / f64::from(w),
            maps: vec![vec![0.0; width as usize * height as usize]; classes.len()],
        }
    }

    /// Places one tile's maps (`cells`, `[C, h, w]`: its Grad-CAM or its AT+ maps),
    /// weighted per class by `weights` (the grader passes smoothed probabilities).
    pub fn add(&mut self, tile: &TileSpec, weights: &[f32], cells: &[f32], cam_grid: [u32; 2]) {
        let [h, w] = cam_grid.map(|v| v as usize);
        let per_class = h * w;
        for (c, map) in self.maps.iter_mut().enumerate() {
            let p = weights.get(c).copied().unwrap_or(0.0);
            let Some(cam) = cells.get(c * per_class..(c + 1) * per_class) else {
                continue;
            };
            for i in 0..h {
                let y = tile.row as usize * h + i;
                for j in 0..w {
                    let x = tile.col as usize * w + j;
                    if x < self.width as usize && y < self.height as usize {
                        map[y * self.width as usize + x] = cam[i * w + j] * p;
                    }
                }
            }
        }
    }

    /// The map of class `c` scaled to 0–1 by its own maximum (all zeros stay zeros).
    pub fn normalised(&self, c: usize) -> Vec<f32> {
        let map = &self.maps[c];
        let max = map.iter().copied().fold(0.0f32, f32::max);
        if max <= 0.0 {
            return vec![0.0; map.len()];
        }
        map.iter().map(|v| v / max).collect()
    }

    /// Level-0 centre of the hottest cell of class `c`, if the map is not all zero.
    pub fn peak(&self, c: usize) -> Option<(f64, f64)> {
        let map = &self.maps[c];
        let (i, v) = map.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
        if *v <= 0.0 {
            return None;
        }
        let (x, y) = (i % self.width as usize, i / self.width as usize);
        Some((
            (x as f64 + 0.5) * self.cell_side,
            (y as f64 + 0.5) * self.cell_side,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::engine::TileOutput;

    #[test]
    fn tiles_land_in_their_cells_weighted_by_probability() {
        let grid = TileGrid {
            side: 100.0,
            cols: 2,
            rows: 1,
            tiles: vec![],
        };
        let classes = vec!["a".to_string(), "b".to_string()];
        let mut maps = Heatmaps::new(&classes, &grid, [2, 2]);
        assert_eq!((maps.width, maps.height, maps.cell_side), (4, 2, 50.0));
        let tile = TileSpec {
            col: 1,
            row: 0,
            x: 100.0,
            y: 0.0,
            side: 100.0,
            tissue_fraction: 1.0,
        };
        let out = TileOutput {
            logits: vec![0.0, 0.0],
            probabilities: vec![0.25, 0.75],
            cam: vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 8.0],
            attention: vec![],
        };
        maps.add(&tile, &out.probabilities, &out.cam, [2, 2]);
        assert_eq!(maps.maps[0], vec![0.0, 0.0, 0.25, 0.5, 0.0, 0.0, 0.75, 1.0]);
        assert_eq!(maps.maps[1][7], 6.0);
        assert_eq!(maps.normalised(1)[7], 1.0);
        // Hottest cell of class b: x=3, y=1 → centre (175, 75) in level-0 px.
        assert_eq!(maps.peak(1), Some((175.0, 75.0)));
    }
}
