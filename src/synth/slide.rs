//! The synthetic whole-slide writer: a layout of cores, rendered tile by tile into a
//! pyramidal TIFF, plus a ground-truth mask and JSON.
//!
//! **How the pyramid is built.** Level 0 is rendered tile by tile (256×256) in parallel,
//! one row of tiles at a time. Each finished level-0 tile is also shrunk 4× (exact 4×4
//! area average) into a 64×64 block of a one-tile-row buffer of level 1; when four
//! level-0 rows have filled it, level 1's row is encoded and shrunk into level 2's
//! buffer, and so on. So every level is the area average of level 0, the levels agree by
//! construction, and memory holds one tile row per level, never a whole level. (An
//! 80,000-px-wide slide needs about 20 MB of row buffers.)
//!
//! **Glass tiles** (wholly outside the tissue, decided from the layout's geometry, see
//! `Layout::classify_rect`) are not rendered: they all point at one shared JPEG of
//! [`GLASS`]. At every level a tile that came out entirely glass does the same. Tiles
//! wholly inside one region render that class directly; the rest (outlines, region
//! borders) ask the layout per sample, through a labeler that only looks at the few
//! centre-line segments and cuts near the tile.
//!
//! **Tile reuse for benchmark slides** ([`SlideSpec::tile_reuse`] = `Some(n)`): a level-0
//! tile wholly inside one class region shows that class rendered at the tile position
//! taken *modulo n tiles*, so at most 4·n² distinct interior tiles exist; each is
//! rendered and encoded once, written once, and every tile with the same (class,
//! position mod n) points at the same bytes. Edge and boundary tiles use the same
//! periodic texture position (so they join their neighbours) but the true layout. The
//! texture then repeats every n tiles, with a visible seam on the period lines: fine for
//! timing and memory benchmarks, wrong for training or for comparing pixels with
//! [`SlideSpec::render_region`]. Truth (mask, areas, grade) is unaffected.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{GrayImage, Luma, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::class::Class;
use super::layout::{CorePattern, CoreSpec, Layout, RectKind, random_cores};
use super::paint::{GLASS, render_with};
use super::tiff::{TiffMeta, TiffWriter};
use crate::grade::heatmaps::Heatmaps;
use crate::grade::rule::{Grade, PatternAreas, grade};

/// Tile edge in pixels, at every level.
pub const TILE: u32 = 256;
/// Each level is this many times smaller than the one above.
const LEVEL_FACTOR: u32 = 4;
/// Levels are added until the smallest fits in this many pixels per side.
const TOP_LEVEL_MAX: u32 = 512;
/// Format version of the truth JSON.
const TRUTH_VERSION: u32 = 1;

/// Errors of the slide writer. [`SynthError::kind`] gives a stable tag.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The spec cannot be rendered (the message says which field and why).
    #[error("invalid synthetic slide spec: {0}")]
    InvalidSpec(String),

    /// Writing an output file failed.
    #[error("cannot write {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },

    /// Encoding a tile or the mask failed.
    #[error("cannot encode {what}: {detail}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's message.
        detail: String,
    },
}

impl SynthError {
    /// Stable snake_case tag.
    pub fn kind(&self) -> &'static str {
        match self {
            SynthError::InvalidSpec(_) => "invalid_spec",
            SynthError::Io { .. } => "io",
            SynthError::Encode { .. } => "encode",
        }
    }
}

fn default_quality() -> u8 {
    90
}

/// What slide to write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideSpec {
    /// Level-0 width in pixels.
    pub width: u32,
    /// Level-0 height in pixels.
    pub height: u32,
    /// Level-0 µm per pixel (0.25 ≈ 40×, 0.5 ≈ 20×).
    pub mpp: f64,
    /// Seed of the tissue texture, the stain and the outline wobble.
    pub seed: u64,
    /// The tissue: cores in level-0 µm. Overlaps resolve to the first core listed.
    pub cores: Vec<CoreSpec>,
    /// JPEG quality of the tiles, 1–100.
    #[serde(default = "default_quality")]
    pub jpeg_quality: u8,
    /// Reuse interior tissue tiles with this period in tiles (see the module docs);
    /// `None` renders every tile. For benchmark slides only.
    #[serde(default)]
    pub tile_reuse: Option<u32>,
    /// Worker threads; 0 = all cores. Does not change the output.
    #[serde(default)]
    pub threads: usize,
}

/// One pyramid level as written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LevelInfo {
    pub width: u32,
    pub height: u32,
    /// Level-0 width / this width, as OpenSlide computes it.
    pub downsample: f64,
}

/// The ground-truth mask beside the slide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskInfo {
    /// File name, in the slide's directory (`<stem>_mask.png`).
    pub file: String,
    /// Level-0 pixels per mask pixel (each mask pixel holds the class at its centre).
    pub downsample: u32,
    pub width: u32,
    pub height: u32,
    /// µm per mask pixel.
    pub mpp: f64,
    /// Meaning of the pixel values.
    pub values: String,
}

/// Tile counts of level 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TileCounts {
    /// All level-0 tiles.
    pub total: u64,
    /// Pointing at the shared glass tile.
    pub glass: u64,
    /// Rendered and written.
    pub rendered: u64,
    /// Pointing at an earlier tile's bytes (tile reuse).
    pub reused: u64,
}

/// What [`write_slide`] wrote, and the right answers for it (also saved as
/// `<stem>_truth.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideTruth {
    pub format_version: u32,
    /// Slide file name.
    pub slide: String,
    /// `"tiff"` or `"bigtiff"`, tiled 256×256, JPEG (YCbCr, no chroma subsampling).
    pub container: String,
    pub width: u32,
    pub height: u32,
    pub mpp: f64,
    pub seed: u64,
    pub levels: Vec<LevelInfo>,
    /// Class names; mask value `k + 1` is `classes[k]`.
    pub classes: Vec<String>,
    pub mask: MaskInfo,
    pub cores: Vec<CoreSpec>,
    /// Tissue area per class in mm², counted on the mask.
    pub areas_mm2: PatternAreas,
    pub tissue_area_mm2: f64,
    /// Gleason score and ISUP grade group of the true areas (the PANDA rule,
    /// [`crate::grade::rule::grade`]).
    pub grade: Grade,
    pub tile_reuse: Option<u32>,
    pub tiles: TileCounts,
    /// Size of the slide file in bytes.
    pub file_bytes: u64,
}

impl SlideSpec {
    /// A slide of random cores (1–3, one per ~5 mm of the shorter side), each of a random
    /// [`CorePattern`], all from `seed`.
    pub fn random(width: u32, height: u32, mpp: f64, seed: u64) -> SlideSpec {
        let cores = random_cores(
            f64::from(width) * mpp,
            f64::from(height) * mpp,
            seed,
            None,
            None,
        );
        SlideSpec::with_cores(width, height, mpp, seed, cores)
    }

    /// A slide with one core of `pattern` along its longer side ("a Gleason 3+4 core").
    pub fn with_pattern(
        width: u32,
        height: u32,
        mpp: f64,
        seed: u64,
        pattern: CorePattern,
    ) -> SlideSpec {
        let cores = random_cores(
            f64::from(width) * mpp,
            f64::from(height) * mpp,
            seed,
            Some(pattern),
            None,
        );
        SlideSpec::with_cores(width, height, mpp, seed, cores)
    }

    /// A slide with the given cores and default settings.
    pub fn with_cores(
        width: u32,
        height: u32,
        mpp: f64,
        seed: u64,
        cores: Vec<CoreSpec>,
    ) -> SlideSpec {
        SlideSpec {
            width,
            height,
            mpp,
            seed,
            cores,
            jpeg_quality: default_quality(),
            tile_reuse: None,
            threads: 0,
        }
    }

    /// The benchmark slide: 80,000 × 60,000 px at 0.25 µm/px (20 × 15 mm, a 40× scan)
    /// holding a 12-core biopsy set, about 1.5 cm² of tissue (the speed goal of issue 4);
    /// tile reuse with a period of 8 tiles keeps writing it to seconds.
    pub fn benchmark(seed: u64) -> SlideSpec {
        let (width, height, mpp) = (80_000, 60_000, 0.25);
        let cores = random_cores(
            f64::from(width) * mpp,
            f64::from(height) * mpp,
            seed,
            None,
            Some(12),
        );
        SlideSpec {
            tile_reuse: Some(8),
            ..SlideSpec::with_cores(width, height, mpp, seed, cores)
        }
    }

    /// Pyramid level sizes, level 0 first: each level a quarter of the one above
    /// (rounded up) until one fits in 512×512.
    pub fn level_sizes(&self) -> Vec<(u32, u32)> {
        let mut sizes = vec![(self.width, self.height)];
        let (mut w, mut h) = (self.width, self.height);
        while w.max(h) > TOP_LEVEL_MAX {
            w = w.div_ceil(LEVEL_FACTOR);
            h = h.div_ceil(LEVEL_FACTOR);
            sizes.push((w, h));
        }
        sizes
    }

    /// What the slide shows (without tile reuse) in the region whose top-left corner is
    /// level-0 pixel `(x0, y0)`, `width`×`height` pixels at `mpp` µm/px: the same
    /// convention as [`crate::slide::Slide::read_region_at_mpp`], so the two can be
    /// compared directly (they differ by JPEG error only).
    pub fn render_region(&self, x0: i64, y0: i64, width: u32, height: u32, mpp: f64) -> RgbImage {
        let layout = self.layout();
        let mut labeler = layout.labeler();
        let origin = (x0 as f64 * self.mpp, y0 as f64 * self.mpp);
        render_with(
            |x, y| labeler.label_at(x, y),
            origin,
            width,
            height,
            mpp,
            self.seed,
        )
    }

    /// Checks every field; the message names the problem.
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |m: String| Err(SynthError::InvalidSpec(m));
        if self.width == 0 || self.height == 0 {
            return bad(format!(
                "slide size {}×{} is empty",
                self.width, self.height
            ));
        }
        // OpenSlide and our reader take i64/u32 coordinates; a million pixels a side is
        // 250 mm at 0.25 µm/px, far beyond any glass slide.
        if self.width > 1_000_000 || self.height > 1_000_000 {
            return bad(format!(
                "slide size {}×{} exceeds 1,000,000 px a side",
                self.width, self.height
            ));
        }
        if !(self.mpp.is_finite() && (0.05..=50.0).contains(&self.mpp)) {
            return bad(format!(
                "µm per pixel must be within 0.05–50, got {}",
                self.mpp
            ));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return bad(format!(
                "JPEG quality must be 1–100, got {}",
                self.jpeg_quality
            ));
        }
        if let Some(n) = self.tile_reuse
            && !(1..=64).contains(&n)
        {
            return bad(format!("tile reuse period must be 1–64 tiles, got {n}"));
        }
        for (i, core) in self.cores.iter().enumerate() {
            core.validate()
                .map_err(|m| SynthError::InvalidSpec(format!("core {i}: {m}")))?;
        }
        Ok(())
    }

    /// Level-0 pixels per pixel of the ground-truth mask: the smallest power of two ≥ 8
    /// that keeps the mask within 2048 px a side (fine enough for areas to ~1%, small
    /// enough to view).
    pub fn mask_downsample(&self) -> u32 {
        mask_downsample(self.width, self.height)
    }

    /// The ground-truth mask (what `write_slide` saves as `<stem>_mask.png`): one pixel
    /// per [`mask_downsample`](Self::mask_downsample) level-0 pixels, holding the class
    /// at its centre as class index + 1, 0 for glass. Needs no rendering.
    pub fn mask(&self) -> GrayImage {
        let ds = self.mask_downsample();
        let (w, h) = (self.width.div_ceil(ds), self.height.div_ceil(ds));
        let step = f64::from(ds) * self.mpp;
        let layout = self.layout();
        let mut labeler = layout.labeler();
        GrayImage::from_fn(w, h, |x, y| {
            let label = labeler.label_at((f64::from(x) + 0.5) * step, (f64::from(y) + 0.5) * step);
            Luma([label.map_or(0, |c| c.index() as u8 + 1)])
        })
    }

    /// The pointing game's hit test: whether the ground-truth [`mask`](Self::mask)
    /// holds class index `class` within `tolerance` level-0 pixels (a square window,
    /// rounded up to whole mask pixels) of the level-0 point `peak`.
    pub fn mask_holds_near(
        &self,
        mask: &GrayImage,
        peak: (f64, f64),
        tolerance: f64,
        class: usize,
    ) -> bool {
        let ds = f64::from(self.mask_downsample());
        let radius = (tolerance / ds).ceil() as i64;
        let (cx, cy) = ((peak.0 / ds).floor() as i64, (peak.1 / ds).floor() as i64);
        let code = class as u8 + 1;
        (-radius..=radius).any(|dy| {
            (-radius..=radius).any(|dx| {
                let (x, y) = (cx + dx, cy + dy);
                u32::try_from(x)
                    .ok()
                    .zip(u32::try_from(y).ok())
                    .and_then(|(x, y)| mask.get_pixel_checked(x, y))
                    .is_some_and(|p| p.0[0] == code)
            })
        })
    }

    /// The pointing game on one graded slide of this spec: for each Gleason pattern that
    /// is both in `truth` and predicted (`class_areas_mm2` of its class > 0), whether the
    /// peak of its map in `maps` lies within one map cell of its true region on `mask`.
    /// `patterns[c]` is class `c`'s Gleason pattern (3–5; anything else is not played).
    /// Returns `(class index, hit)` per pointing, in class order.
    pub fn pointing_game(
        &self,
        mask: &GrayImage,
        truth: &PatternAreas,
        classes: &[String],
        patterns: &[u8],
        class_areas_mm2: &BTreeMap<String, f64>,
        maps: &Heatmaps,
    ) -> Vec<(usize, bool)> {
        classes
            .iter()
            .zip(patterns)
            .enumerate()
            .filter_map(|(c, (name, pattern))| {
                let true_area = match pattern {
                    3 => truth.g3,
                    4 => truth.g4,
                    5 => truth.g5,
                    _ => return None,
                };
                let predicted = class_areas_mm2.get(name).copied().unwrap_or(0.0);
                if true_area <= 0.0 || predicted <= 0.0 {
                    return None;
                }
                let hit = maps
                    .peak(c)
                    .is_some_and(|peak| self.mask_holds_near(mask, peak, maps.cell_side, c));
                Some((c, hit))
            })
            .collect()
    }

    /// True tissue area per class (mm², counted on [`mask`](Self::mask)) and the grade
    /// they give, as `write_slide` reports them; needs no rendering.
    pub fn true_grade(&self) -> (PatternAreas, Grade) {
        let areas = class_areas(&self.mask(), f64::from(self.mask_downsample()) * self.mpp);
        (areas, grade(&areas))
    }

    fn layout(&self) -> Layout {
        Layout::new(
            &self.cores,
            f64::from(self.width) * self.mpp,
            f64::from(self.height) * self.mpp,
            self.seed,
        )
    }

    fn thread_count(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            crate::threads::cores()
        }
    }
}

/// Writes the slide at `path` (a `.tiff`), its mask `<stem>_mask.png` and truth
/// `<stem>_truth.json` beside it, and returns the truth.
///
/// The slide is written to `<path>.partial` and renamed when complete, so a reader never
/// sees half a slide. BigTIFF is used when the pixels (all levels, uncompressed) exceed
/// 3.5 GiB, i.e. whenever the compressed file could conceivably pass classic TIFF's 4 GiB.
pub fn write_slide(path: &Path, spec: &SlideSpec) -> Result<SlideTruth, SynthError> {
    spec.validate()?;
    let layout = spec.layout();
    let sizes = spec.level_sizes();
    let raw_bytes: u64 = sizes
        .iter()
        .map(|&(w, h)| 3 * u64::from(w) * u64::from(h))
        .sum();
    let big = raw_bytes > 3584 * 1024 * 1024;

    let partial = path.with_file_name(format!(
        "{}.partial",
        path.file_name()
            .map_or_else(|| "slide".into(), |n| n.to_string_lossy())
    ));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SynthError::Io { path: p, source }
    };
    let written = (|| {
        let file = BufWriter::with_capacity(1 << 20, File::create(&partial).map_err(io(&partial))?);
        let mut writer = TiffWriter::new(file, big, &sizes, TILE).map_err(io(&partial))?;
        let tiles = write_pyramid(&mut writer, spec, &layout, &sizes).map_err(|e| match e {
            PyramidError::Io(source) => SynthError::Io {
                path: partial.clone(),
                source,
            },
            PyramidError::Encode(detail) => SynthError::Encode {
                what: "a JPEG tile".into(),
                detail,
            },
        })?;
        let meta = TiffMeta {
            mpp: spec.mpp,
            description: format!(
                "slidegrade synthetic H&E slide; seed={}; mpp={}; NOT A REAL PATIENT SLIDE",
                spec.seed, spec.mpp
            ),
            software: format!("slidegrade {}", env!("CARGO_PKG_VERSION")),
        };
        writer.finish(&meta).map_err(io(&partial))?;
        std::fs::rename(&partial, path).map_err(io(path))?;
        Ok::<_, SynthError>(tiles)
    })();
    let tiles = match written {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };

    let (mask, mask_info) = write_mask(path, spec)?;
    let areas = class_areas(&mask, mask_info.mpp);
    let truth = SlideTruth {
        format_version: TRUTH_VERSION,
        slide: file_name(path),
        container: if big { "bigtiff" } else { "tiff" }.into(),
        width: spec.width,
        height: spec.height,
        mpp: spec.mpp,
        seed: spec.seed,
        levels: sizes
            .iter()
            .map(|&(width, height)| LevelInfo {
                width,
                height,
                downsample: f64::from(spec.width) / f64::from(width),
            })
            .collect(),
        classes: Class::NAMES.iter().map(|s| s.to_string()).collect(),
        mask: mask_info,
        cores: spec.cores.clone(),
        areas_mm2: areas,
        tissue_area_mm2: areas.total(),
        grade: grade(&areas),
        tile_reuse: spec.tile_reuse,
        tiles,
        file_bytes: std::fs::metadata(path).map_err(io(path))?.len(),
    };
    let truth_path = sibling(path, "_truth.json");
    let json = serde_json::to_vec_pretty(&truth).map_err(|e| SynthError::Encode {
        what: "the truth JSON".into(),
        detail: e.to_string(),
    })?;
    std::fs::write(&truth_path, json).map_err(io(&truth_path))?;
    Ok(truth)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<dir>/<stem><suffix>` for the slide at `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "slide".into(), |s| s.to_string_lossy());
    path.with_file_name(format!("{stem}{suffix}"))
}

/// The smallest power of two ≥ 8 that keeps the mask within 2048 px a side.
fn mask_downsample(width: u32, height: u32) -> u32 {
    let mut ds = 8;
    while width.max(height).div_ceil(ds) > 2048 {
        ds *= 2;
    }
    ds
}

fn write_mask(path: &Path, spec: &SlideSpec) -> Result<(GrayImage, MaskInfo), SynthError> {
    let mask = spec.mask();
    let mask_path = sibling(path, "_mask.png");
    mask.save(&mask_path).map_err(|e| SynthError::Encode {
        what: format!("the mask {}", mask_path.display()),
        detail: e.to_string(),
    })?;
    let ds = spec.mask_downsample();
    let info = MaskInfo {
        file: file_name(&mask_path),
        downsample: ds,
        width: mask.width(),
        height: mask.height(),
        mpp: f64::from(ds) * spec.mpp,
        values: "0 = glass, 1 = NC, 2 = G3, 3 = G4, 4 = G5 (class index + 1)".into(),
    };
    Ok((mask, info))
}

/// Area per class in mm² from a mask with `mpp` µm per pixel.
pub(crate) fn class_areas(mask: &GrayImage, mpp: f64) -> PatternAreas {
    let mut counts = [0u64; 5];
    for p in mask.pixels() {
        if let Some(c) = counts.get_mut(usize::from(p.0[0])) {
            *c += 1;
        }
    }
    let mm2 = |n: u64| n as f64 * mpp * mpp * 1e-6;
    PatternAreas {
        benign: mm2(counts[1]),
        g3: mm2(counts[2]),
        g4: mm2(counts[3]),
        g5: mm2(counts[4]),
    }
}

/// A step error of the pyramid writer, private to this module: `write_slide` turns it
/// into a [`SynthError`] (which has the `kind()`) with the path it was writing.
enum PyramidError {
    Io(std::io::Error),
    Encode(String),
}

impl From<std::io::Error> for PyramidError {
    fn from(e: std::io::Error) -> Self {
        PyramidError::Io(e)
    }
}

/// One rendered tile: its JPEG and its 4× area-averaged block for the next level.
struct Encoded {
    jpeg: Vec<u8>,
    block: RgbImage,
}

/// A level-0 tile that must be rendered.
struct Job {
    /// Texture origin (µm): the true position, or the periodic one under tile reuse.
    origin: (f64, f64),
    /// Added to texture positions to get true positions, for the layout.
    shift: (f64, f64),
    /// `Some(class)`: wholly that class; `None`: ask the layout per point.
    class: Option<Class>,
}

/// What a level-0 tile position becomes.
enum Plan {
    Glass,
    /// Result `k` of this row's jobs.
    Job(usize, Option<ReuseKey>),
    /// An earlier tile's bytes (tile reuse).
    Reuse(ReuseKey),
}

type ReuseKey = (Class, u32, u32);

/// A reusable interior tile: where its bytes are and its block.
struct Reusable {
    blob: (u64, u64),
    block: RgbImage,
}

/// Renders and writes every tile of every level; see the module docs.
fn write_pyramid<W: std::io::Write + std::io::Seek>(
    writer: &mut TiffWriter<W>,
    spec: &SlideSpec,
    layout: &Layout,
    sizes: &[(u32, u32)],
) -> Result<TileCounts, PyramidError> {
    let threads = spec.thread_count();
    let quality = spec.jpeg_quality;
    let glass_tile = RgbImage::from_pixel(TILE, TILE, Rgb(GLASS));
    let glass_blob = writer.write_blob(&encode_jpeg(&glass_tile, quality)?)?;
    let mut pyramid = Pyramid::new(sizes);
    let mut cache: HashMap<ReuseKey, Reusable> = HashMap::new();
    let mut counts = TileCounts::default();
    let (tiles_x, tiles_y) = (sizes[0].0.div_ceil(TILE), sizes[0].1.div_ceil(TILE));
    let tile_um = f64::from(TILE) * spec.mpp;
    let started = std::time::Instant::now();
    let mut next_report = 0.1;

    for ty in 0..tiles_y {
        let mut jobs = Vec::new();
        let mut plans = Vec::with_capacity(tiles_x as usize);
        let mut pending: HashMap<ReuseKey, usize> = HashMap::new();
        for tx in 0..tiles_x {
            let (x0, y0) = (f64::from(tx) * tile_um, f64::from(ty) * tile_um);
            let kind = layout.classify_rect(x0, y0, x0 + tile_um, y0 + tile_um);
            let periodic = spec.tile_reuse.map(|n| (tx % n, ty % n));
            let origin = periodic.map_or((x0, y0), |(px, py)| {
                (f64::from(px) * tile_um, f64::from(py) * tile_um)
            });
            let shift = (x0 - origin.0, y0 - origin.1);
            let plan = match (kind, periodic) {
                (RectKind::Glass, _) => Plan::Glass,
                (RectKind::Pure(class), Some((px, py))) => {
                    let key = (class, px, py);
                    if cache.contains_key(&key) || pending.contains_key(&key) {
                        Plan::Reuse(key)
                    } else {
                        pending.insert(key, jobs.len());
                        jobs.push(Job {
                            origin,
                            shift,
                            class: Some(class),
                        });
                        Plan::Job(jobs.len() - 1, Some(key))
                    }
                }
                (RectKind::Pure(class), None) => {
                    jobs.push(Job {
                        origin,
                        shift,
                        class: Some(class),
                    });
                    Plan::Job(jobs.len() - 1, None)
                }
                (RectKind::Mixed, _) => {
                    jobs.push(Job {
                        origin,
                        shift,
                        class: None,
                    });
                    Plan::Job(jobs.len() - 1, None)
                }
            };
            plans.push(plan);
        }

        let rendered = parallel_map(&jobs, threads, |job| -> Result<Encoded, PyramidError> {
            let img = match job.class {
                Some(class) => render_with(
                    |_, _| Some(class),
                    job.origin,
                    TILE,
                    TILE,
                    spec.mpp,
                    spec.seed,
                ),
                None => {
                    let (sx, sy) = job.shift;
                    let (x0, y0) = (job.origin.0 + sx, job.origin.1 + sy);
                    let tile_um = f64::from(TILE) * spec.mpp;
                    let mut labeler = layout.labeler_for_rect(x0, y0, x0 + tile_um, y0 + tile_um);
                    render_with(
                        |x, y| labeler.label_at(x + sx, y + sy),
                        job.origin,
                        TILE,
                        TILE,
                        spec.mpp,
                        spec.seed,
                    )
                }
            };
            Ok(Encoded {
                jpeg: encode_jpeg(&img, quality)?,
                block: shrink4(&img),
            })
        });
        let mut rendered: Vec<Option<Encoded>> = rendered
            .into_iter()
            .map(|r| r.map(Some))
            .collect::<Result<_, _>>()?;

        for (tx, plan) in (0..tiles_x).zip(plans) {
            counts.total += 1;
            match plan {
                Plan::Glass => {
                    counts.glass += 1;
                    // Row buffers start as glass: nothing to pass down.
                    writer.set_tile(0, tx, ty, glass_blob);
                }
                Plan::Job(k, key) => {
                    counts.rendered += 1;
                    let done = rendered[k].take().expect("each job is used once");
                    let blob = writer.write_tile(0, tx, ty, &done.jpeg)?;
                    pyramid.add_block(1, tx, ty, &done.block);
                    if let Some(key) = key {
                        cache.insert(
                            key,
                            Reusable {
                                blob,
                                block: done.block,
                            },
                        );
                    }
                }
                Plan::Reuse(key) => {
                    counts.reused += 1;
                    let hit = &cache[&key];
                    writer.set_tile(0, tx, ty, hit.blob);
                    pyramid.add_block(1, tx, ty, &hit.block);
                }
            }
        }
        if pyramid.levels() > 1 && (ty % LEVEL_FACTOR == LEVEL_FACTOR - 1 || ty + 1 == tiles_y) {
            pyramid.flush(1, ty / LEVEL_FACTOR, writer, glass_blob, quality, threads)?;
        }

        let done = f64::from(ty + 1) / f64::from(tiles_y);
        if done >= next_report {
            tracing::info!(
                progress = format!("{:.0}%", 100.0 * done),
                bytes = writer.position(),
                elapsed_s = started.elapsed().as_secs_f64(),
                "writing synthetic slide"
            );
            next_report += 0.1;
        }
    }
    Ok(counts)
}

/// Row buffers of levels ≥ 1, filled with 4×-shrunk blocks of the level above.
struct Pyramid {
    sizes: Vec<(u32, u32)>,
    /// `rows[level]`: one row of tiles of `level` (unused for level 0).
    rows: Vec<RgbImage>,
}

impl Pyramid {
    fn new(sizes: &[(u32, u32)]) -> Pyramid {
        let rows = sizes
            .iter()
            .enumerate()
            .map(|(level, &(w, _))| {
                if level == 0 {
                    RgbImage::new(0, 0)
                } else {
                    RgbImage::from_pixel(w.div_ceil(TILE) * TILE, TILE, Rgb(GLASS))
                }
            })
            .collect();
        Pyramid {
            sizes: sizes.to_vec(),
            rows,
        }
    }

    fn levels(&self) -> usize {
        self.sizes.len()
    }

    /// Places the shrunk tile `(tx, ty)` of `level − 1` into `level`'s row buffer.
    fn add_block(&mut self, level: usize, tx: u32, ty: u32, block: &RgbImage) {
        if level >= self.levels() {
            return;
        }
        let side = TILE / LEVEL_FACTOR;
        let row = &mut self.rows[level];
        let (x0, y0) = (tx * side, (ty % LEVEL_FACTOR) * side);
        // The last block of a row can hang past the buffer: that part is padding.
        for y in 0..side {
            for x in 0..side.min(row.width().saturating_sub(x0)) {
                row.put_pixel(x0 + x, y0 + y, *block.get_pixel(x, y));
            }
        }
    }

    /// Encodes row `row` of `level` (complete), passes it down, and clears the buffer.
    fn flush<W: std::io::Write + std::io::Seek>(
        &mut self,
        level: usize,
        row: u32,
        writer: &mut TiffWriter<W>,
        glass_blob: (u64, u64),
        quality: u8,
        threads: usize,
    ) -> Result<(), PyramidError> {
        let tiles_x = self.sizes[level].0.div_ceil(TILE);
        let tiles_y = self.sizes[level].1.div_ceil(TILE);
        let buffer = std::mem::replace(
            &mut self.rows[level],
            RgbImage::from_pixel(tiles_x * TILE, TILE, Rgb(GLASS)),
        );
        let indices: Vec<u32> = (0..tiles_x).collect();
        let encoded = parallel_map(
            &indices,
            threads,
            |&tx| -> Result<Option<Encoded>, PyramidError> {
                let tile = image::imageops::crop_imm(&buffer, tx * TILE, 0, TILE, TILE).to_image();
                if tile.pixels().all(|p| p.0 == GLASS) {
                    return Ok(None);
                }
                Ok(Some(Encoded {
                    jpeg: encode_jpeg(&tile, quality)?,
                    block: shrink4(&tile),
                }))
            },
        );
        for (tx, done) in (0..tiles_x).zip(encoded) {
            match done? {
                None => writer.set_tile(level, tx, row, glass_blob),
                Some(done) => {
                    writer.write_tile(level, tx, row, &done.jpeg)?;
                    self.add_block(level + 1, tx, row, &done.block);
                }
            }
        }
        if level + 1 < self.levels()
            && (row % LEVEL_FACTOR == LEVEL_FACTOR - 1 || row + 1 == tiles_y)
        {
            self.flush(
                level + 1,
                row / LEVEL_FACTOR,
                writer,
                glass_blob,
                quality,
                threads,
            )?;
        }
        Ok(())
    }
}

fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, PyramidError> {
    let mut buf = Vec::with_capacity(64 * 1024);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality)
        .encode_image(img)
        .map_err(|e| PyramidError::Encode(e.to_string()))?;
    Ok(buf)
}

/// Exact 4×4 area average (the pyramid's downsampling), rounding to nearest.
fn shrink4(img: &RgbImage) -> RgbImage {
    let (w, h) = (img.width() / LEVEL_FACTOR, img.height() / LEVEL_FACTOR);
    let raw = img.as_raw();
    let stride = img.width() as usize * 3;
    RgbImage::from_fn(w, h, |x, y| {
        let mut sum = [0u32; 3];
        for dy in 0..4 {
            let row = (y as usize * 4 + dy) * stride + x as usize * 12;
            for dx in 0..4 {
                for (c, s) in sum.iter_mut().enumerate() {
                    *s += u32::from(raw[row + dx * 3 + c]);
                }
            }
        }
        Rgb(sum.map(|s| ((s + 8) / 16) as u8))
    })
}

/// `f` over `items` on up to `threads` scoped threads, results in order. Work is handed
/// out one item at a time, so a slow tile does not hold up a whole chunk.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item was processed")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_sizes_quarter_until_small() {
        let s = SlideSpec::random(80_000, 60_000, 0.25, 1);
        assert_eq!(
            s.level_sizes(),
            vec![
                (80_000, 60_000),
                (20_000, 15_000),
                (5_000, 3_750),
                (1_250, 938),
                (313, 235)
            ]
        );
        let s = SlideSpec::random(4096, 3072, 0.5, 1);
        assert_eq!(s.level_sizes(), vec![(4096, 3072), (1024, 768), (256, 192)]);
        assert_eq!(
            SlideSpec::random(300, 200, 0.5, 1).level_sizes(),
            vec![(300, 200)]
        );
    }

    #[test]
    fn shrink4_is_an_exact_area_average() {
        let img = RgbImage::from_fn(8, 4, |x, y| Rgb([(x * 10 + y) as u8, 0, 255]));
        let small = shrink4(&img);
        assert_eq!(small.dimensions(), (2, 1));
        // Mean of x in 0..4 (15) plus y in 0..4 (1.5) = 16.5, rounded up.
        assert_eq!(small.get_pixel(0, 0).0, [17, 0, 255]);
        assert_eq!(small.get_pixel(1, 0).0, [57, 0, 255]);
    }

    #[test]
    fn parallel_map_keeps_order() {
        let items: Vec<u32> = (0..100).collect();
        assert_eq!(
            parallel_map(&items, 3, |x| x * 2),
            items.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        assert!(parallel_map(&[] as &[u32], 4, |x| *x).is_empty());
    }

    #[test]
    fn mask_downsample_bounds_the_mask() {
        assert_eq!(mask_downsample(4096, 3072), 8);
        assert_eq!(mask_downsample(80_000, 60_000), 64);
        assert_eq!(mask_downsample(100, 100), 8);
    }

    #[test]
    fn mask_holds_near_looks_within_the_tolerance_only() {
        let spec = SlideSpec::random(800, 800, 0.5, 1);
        let ds = f64::from(spec.mask_downsample());
        // Class index 2 (code 3) at mask pixel (10, 10) only; 0 elsewhere.
        let mut mask = GrayImage::new(100, 100);
        mask.put_pixel(10, 10, Luma([3]));
        let at = |x: f64| (x * ds + 1.0, 10.0 * ds + 1.0);
        assert!(spec.mask_holds_near(&mask, at(10.0), 0.0, 2));
        assert!(
            !spec.mask_holds_near(&mask, at(10.0), 0.0, 1),
            "another class"
        );
        assert!(
            !spec.mask_holds_near(&mask, at(12.0), ds, 2),
            "two pixels away"
        );
        assert!(spec.mask_holds_near(&mask, at(12.0), 2.0 * ds, 2));
        // Off the mask's edge is no hit and no panic.
        assert!(!spec.mask_holds_near(&mask, (-5.0 * ds, -5.0 * ds), ds, 2));
    }

    #[test]
    fn invalid_specs_are_refused_with_a_reason() {
        let ok = SlideSpec::random(1024, 1024, 0.5, 1);
        ok.validate().unwrap();
        let cases = [
            SlideSpec {
                width: 0,
                ..ok.clone()
            },
            SlideSpec {
                mpp: 0.0,
                ..ok.clone()
            },
            SlideSpec {
                mpp: f64::NAN,
                ..ok.clone()
            },
            SlideSpec {
                jpeg_quality: 0,
                ..ok.clone()
            },
            SlideSpec {
                tile_reuse: Some(0),
                ..ok.clone()
            },
        ];
        for spec in cases {
            let err = spec.validate().unwrap_err();
            assert_eq!(err.kind(), "invalid_spec", "{err}");
        }
        let mut bad_core = ok.clone();
        bad_core.cores[0].regions.clear();
        assert!(
            bad_core
                .validate()
                .unwrap_err()
                .to_string()
                .contains("core 0")
        );
    }
}
