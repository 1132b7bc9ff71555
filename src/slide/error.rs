//! The slide layer's errors, and the µm/px bounds every reader checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Errors of the slide layer. Messages are one line and name what to do where possible;
/// [`SlideError::kind`] gives a stable machine-readable tag.
///
/// Serde: a decoder child process ([`super::isolated`]) reports its error to the server as JSON,
/// so that the error crossing the process boundary is the same variant.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum SlideError {
    /// No file at this path.
    #[error("slide not found: {}", .0.display())]
    NotFound(PathBuf),

    /// OpenSlide cannot open the file: not a slide, an unsupported DICOM layout, empty...
    #[error("cannot open {} as a whole-slide image: {detail}", .path.display())]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Why, usually OpenSlide's own message.
        detail: String,
    },

    /// The slide opened but reading pixels from it failed (truncated or damaged data).
    #[error("slide data is unreadable: {detail}")]
    Corrupt {
        /// What failed, with OpenSlide's message.
        detail: String,
    },

    /// The slide does not state its resolution and the caller gave none.
    #[error(
        "{} does not state its resolution (µm per pixel); pass it explicitly with --mpp \
         (CLI) or the `mpp` parameter (HTTP), e.g. 0.5 for a 20x scan",
        .path.display()
    )]
    MissingMpp {
        /// The file.
        path: PathBuf,
    },

    /// A µm/px value (override or target) that is not a finite number in (0, 1000).
    #[error("invalid resolution {0} µm per pixel: it must be a finite number > 0 and < 1000")]
    InvalidMpp(f64),

    /// A read that would allocate more pixels than [`super::ReadLimits::max_pixels`].
    #[error(
        "read of {requested_pixels} pixels exceeds the limit of {budget} pixels per read; \
         request a smaller region or a coarser µm/px"
    )]
    TooLarge {
        /// Pixels the read would need.
        requested_pixels: u64,
        /// The configured limit.
        budget: u64,
    },

    /// The whole slide cannot be seen within the read budget: even its coarsest pyramid
    /// level is over [`super::ReadLimits::max_pixels`] (a huge single-level file, or a header
    /// that claims absurd dimensions). Refused before anything is allocated.
    #[error(
        "slide of {width}x{height} px has no pyramid level small enough for an overview: \
         reading its coarsest level needs {requested_pixels} pixels, over the limit of \
         {budget} per read; save it as a pyramidal slide (with reduced-resolution levels)"
    )]
    NoPyramid {
        /// Level-0 width.
        width: u32,
        /// Level-0 height.
        height: u32,
        /// Pixels the overview read would need.
        requested_pixels: u64,
        /// The configured limit.
        budget: u64,
    },

    /// The slide decoder (OpenSlide and its codecs, run in a child process) died or hung
    /// on this file. Only [`super::isolated`] reports it; in-process, such a file would have
    /// taken the whole server down.
    #[error("the slide decoder crashed on {}: {detail}; the file is damaged or malicious", .path.display())]
    DecoderCrashed {
        /// The file.
        path: PathBuf,
        /// How it died (signal, timeout) and the last line it printed.
        detail: String,
    },

    /// The decoder child process could not be run at all (a server problem, not the
    /// slide's).
    #[error("cannot run the slide decoder process: {0}")]
    DecoderUnavailable(String),

    /// A region that is empty or lies entirely outside the slide.
    #[error("invalid region: {detail}")]
    InvalidRegion {
        /// What is wrong with it.
        detail: String,
    },

    /// A Deep Zoom level or tile address outside the slide's pyramid.
    #[error("no such Deep Zoom tile: {detail}")]
    NoSuchTile {
        /// Which level or address, and the pyramid's extent.
        detail: String,
    },
}

impl SlideError {
    /// Stable snake_case tag for this error (the HTTP layer maps it to a status code and
    /// returns it as `error_type`; changing one is an API change).
    pub fn kind(&self) -> &'static str {
        match self {
            SlideError::NotFound(_) => "not_found",
            SlideError::UnsupportedFormat { .. } => "unsupported_format",
            SlideError::Corrupt { .. } => "corrupt",
            SlideError::MissingMpp { .. } => "missing_mpp",
            SlideError::InvalidMpp(_) => "invalid_mpp",
            SlideError::TooLarge { .. } => "too_large",
            SlideError::InvalidRegion { .. } => "invalid_region",
            SlideError::NoPyramid { .. } => "no_pyramid",
            SlideError::DecoderCrashed { .. } => "decoder_crashed",
            SlideError::DecoderUnavailable(_) => "decoder_unavailable",
            SlideError::NoSuchTile { .. } => "tile_not_found",
        }
    }
}

/// Result of this module.
pub type Result<T, E = SlideError> = std::result::Result<T, E>;

/// Exclusive upper bound for any µm/px we accept. Brightfield scans are 0.1–1 µm/px and
/// the coarsest real input here is a 29 µm/px DICOM; 1000 µm/px (a whole slide in ~75
/// pixels) only catches unit mistakes such as mm or nm passed as µm.
pub const MAX_MPP: f64 = 1000.0;

/// Checks a µm/px value (finite, > 0, < [`MAX_MPP`]) and returns it.
pub fn validate_mpp(mpp: f64) -> Result<f64> {
    if mpp.is_finite() && mpp > 0.0 && mpp < MAX_MPP {
        Ok(mpp)
    } else {
        Err(SlideError::InvalidMpp(mpp))
    }
}
