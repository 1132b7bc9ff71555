//! Grading a slide: the data path from an open slide to per-class heatmaps and a grade.
//!
//! [`tissue`] finds tissue on a thumbnail, [`tiling`] lays tiles over it, [`pipeline`]
//! reads and scores the tiles through the engine, [`heatmaps`] stitches their Grad-CAM
//! maps and [`rule`] turns tile probabilities into a Gleason grade.

pub mod heatmaps;
pub mod pipeline;
pub mod rule;
pub mod tiling;
pub mod tissue;
