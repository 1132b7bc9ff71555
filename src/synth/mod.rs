//! Synthetic prostate histology: an H&E renderer and a whole-slide writer.
//!
//! Two uses, one module:
//! - [`render_patch`] draws tissue of one class (`NC`, `G3`, `G4`, `G5`) at any position
//!   and resolution: the built-in training set.
//! - [`write_slide`] writes a pyramidal tiled TIFF that OpenSlide opens as a
//!   `generic-tiff` slide with its µm/px, plus a ground-truth mask and JSON: test and
//!   benchmark slides with known answers.
//!
//! **What the data is built to test.** The method distils a 10× Teacher into Students
//! that see 2.5×–1.25×. That only makes sense if the class evidence sits mostly in *fine*
//! structure that low resolution blurs away (nuclear size and shape, nucleoli, chromatin,
//! basal cells, small cribriform lumina) and only partly in *coarse* structure (gland
//! size, big lumina, a slight colour shift that per-slide stain variation swamps). See
//! [`morph`] for how each class is drawn and why, and [`render`] for how resolution is
//! handled (a render at 8 µm/px equals the area average of one at 1 µm/px).
//!
//! Everything is a pure function of `(seed, class, position)`, so any region renders on
//! its own: tiles of a slide in parallel, training patches in any order.
//!
//! Modules: [`rng`] hashing and noise; [`morph`] per-class morphology; [`render`] the
//! renderer; [`layout`] where tissue and classes lie on a slide; [`tiff`] a minimal tiled
//! (Big)TIFF writer; [`slide`] the slide writer that ties them together.

mod layout;
mod morph;
mod render;
mod rng;
mod slide;
mod tiff;

use image::RgbImage;
use serde::{Deserialize, Serialize};

pub use layout::{CorePattern, CoreSpec, Region};
pub use render::{GLASS, MAX_SAMPLE_SPACING_UM};
pub use slide::{
    LevelInfo, MaskInfo, SlideSpec, SlideTruth, SynthError, TILE, TileCounts, write_slide,
};

/// The four tissue classes, in the models' output order (SICAPv2's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Class {
    /// Non-cancerous.
    #[serde(rename = "NC")]
    Nc,
    /// Gleason pattern 3.
    G3,
    /// Gleason pattern 4.
    G4,
    /// Gleason pattern 5.
    G5,
}

impl Class {
    /// All classes, in index order.
    pub const ALL: [Class; 4] = [Class::Nc, Class::G3, Class::G4, Class::G5];

    /// Class names in index order, as in `model.json`.
    pub const NAMES: [&'static str; 4] = ["NC", "G3", "G4", "G5"];

    /// Position in [`Class::ALL`] (the model's output index).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class at `index`, or `None` if `index ≥ 4`.
    pub fn from_index(index: usize) -> Option<Class> {
        Class::ALL.get(index).copied()
    }

    /// `"NC"`, `"G3"`, `"G4"` or `"G5"`.
    pub fn name(self) -> &'static str {
        Class::NAMES[self.index()]
    }

    /// The class named `name` (case-insensitive), or `None`.
    pub fn from_name(name: &str) -> Option<Class> {
        Class::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name.trim()))
            .and_then(Class::from_index)
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A square `size_px`×`size_px` patch of `class` tissue at `mpp` µm/px whose top-left
/// corner is at `origin_um` (µm, in the tissue plane of `seed`).
///
/// Deterministic: the same arguments give the same bytes. Every pixel is a pure function
/// of its position, so overlapping patches on the same pixel grid agree exactly where
/// they overlap, and a patch at 8 µm/px equals the area average (see
/// [`crate::wsi::resize_area`]) of the same field at 1 µm/px up to rounding. Staining
/// varies smoothly with position and per seed: patches whose origins lie ≥ 3 mm apart,
/// or that have different seeds, get independent stains. At one seed and place, the
/// stroma's fibres and the stain are the same for every class (so that a slide's stroma
/// runs on across the border between two regions).
///
/// Cost grows with the area in µm² (samples are ≤ 0.5 µm apart), not with the pixel
/// count: 512 px at 1 µm/px and 64 px at 8 µm/px cost the same.
///
/// # Panics
/// If `mpp` is not finite and positive.
pub fn render_patch(
    class: Class,
    origin_um: (f64, f64),
    size_px: u32,
    mpp: f64,
    seed: u64,
) -> RgbImage {
    render_region(class, origin_um, size_px, size_px, mpp, seed)
}

/// [`render_patch`] for a rectangle of `width`×`height` pixels.
///
/// # Panics
/// If `mpp` is not finite and positive.
pub fn render_region(
    class: Class,
    origin_um: (f64, f64),
    width: u32,
    height: u32,
    mpp: f64,
    seed: u64,
) -> RgbImage {
    render::render_with(|_, _| Some(class), origin_um, width, height, mpp, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_round_trip() {
        for c in Class::ALL {
            assert_eq!(Class::from_index(c.index()), Some(c));
            assert_eq!(Class::from_name(c.name()), Some(c));
        }
        assert_eq!(Class::from_name(" g4 "), Some(Class::G4));
        assert_eq!(Class::from_index(4), None);
        assert_eq!(serde_json::to_string(&Class::Nc).unwrap(), "\"NC\"");
        assert_eq!(serde_json::from_str::<Class>("\"G5\"").unwrap(), Class::G5);
    }
}
