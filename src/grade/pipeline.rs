//! Grades one slide: open → tissue → tile grid → read ∥ infer → grade → stitch.
//!
//! Reading and inference overlap: a reader thread cuts tiles through the slide reader and
//! sends batches over a bounded channel, and the calling thread runs them through the
//! engine pool. The channel bound keeps memory flat on huge slides: the reader can be at
//! most `read_ahead` batches ahead. The maps are stitched after the tally, because each
//! tile's weight is its neighbourhood-smoothed probability ([`stitch_maps`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;

use crate::grade::heatmaps::Heatmaps;
use crate::grade::rule::{self, Grade, PatternAreas};
use crate::grade::tiling::{self, TileGrid, TileSpec};
use crate::grade::tissue::{self, TissueParams};
use crate::model::contract::Manifest;
use crate::model::engine::{EngineError, EnginePool, TileOutput};
use crate::slide::{Slide, SlideError, SlideProperties};

#[derive(Debug, Clone)]
pub struct GradeOptions {
    /// Tiles per inference batch; `None`: [`default_batch_size`] for the model's tiles.
    pub batch_size: Option<usize>,
    /// Batches the reader may prepare ahead of inference.
    pub read_ahead: usize,
    /// Threads that read (decode) the tiles of one batch together; `None`:
    /// [`default_read_threads`].
    pub read_threads: Option<usize>,
    /// A tile is graded when at least this share of it is tissue.
    pub min_tissue: f64,
    /// A tile counts as the most probable class of the mean over its neighbours within
    /// this many tiles (0 = its own argmax); see [`rule::tile_classes`]. `None`: the
    /// model's recommendation (`grading` in model.json), else
    /// [`DEFAULT_SMOOTHING_RADIUS`].
    pub smoothing_radius: Option<u32>,
    /// A Gleason pattern whose (smoothed) area is below this, in mm², counts as benign
    /// for the grade ([`PatternAreas::without_patterns_below`]); 0 reports any pattern.
    /// `None`: the model's recommendation, else 0.
    pub min_pattern_mm2: Option<f64>,
    /// µm/px to use when the slide does not state it.
    pub mpp_override: Option<f64>,
    pub tissue: TissueParams,
    /// Longest side of the thumbnail used for tissue detection and the overlay.
    pub max_thumbnail_side: u32,
    /// Set from another thread to stop grading at the next batch (cancel, shutdown).
    pub stop: Option<Arc<AtomicBool>>,
    /// When set, the slide is first probed (opened, overview and first tile decoded) in a
    /// child process, so a file that crashes the C decoders fails the grade with
    /// `decoder_crashed` instead of killing this process (see `slide::isolated`).
    pub decoder: Option<crate::slide::isolated::Decoder>,
}

impl Default for GradeOptions {
    fn default() -> Self {
        GradeOptions {
            batch_size: None,
            read_ahead: 4,
            read_threads: None,
            min_tissue: 0.25,
            smoothing_radius: None,
            min_pattern_mm2: None,
            mpp_override: None,
            tissue: TissueParams::default(),
            max_thumbnail_side: 2048,
            stop: None,
            decoder: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GradeError {
    #[error(transparent)]
    Slide(#[from] SlideError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "not a brightfield slide (median thumbnail brightness {median_brightness} of 255): fluorescence and dark-field slides cannot be graded by an H&E model"
    )]
    NotBrightfield { median_brightness: u8 },
    #[error(
        "model class `{0}` is not a Gleason pattern this grader knows (expected NC, G3, G4, G5)"
    )]
    UnknownClass(String),
    #[error("the tile reader stopped unexpectedly")]
    ReaderStopped,
    #[error("grading was stopped before it finished")]
    Stopped,
}

impl GradeError {
    pub fn kind(&self) -> &'static str {
        match self {
            GradeError::Slide(e) => e.kind(),
            GradeError::Engine(e) => e.kind(),
            GradeError::NotBrightfield { .. } => "not_brightfield",
            GradeError::UnknownClass(_) => "unsupported_model_classes",
            GradeError::ReaderStopped => "internal",
            GradeError::Stopped => "stopped",
        }
    }
}

/// Where the time went, per stage, in milliseconds. `read` and `infer` overlap, so they
/// can add up to more than the wall time of the tile loop (`tiles_wall`).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StageTimes {
    pub open_ms: f64,
    pub tissue_ms: f64,
    pub read_ms: f64,
    pub infer_ms: f64,
    pub tiles_wall_ms: f64,
    pub stitch_ms: f64,
    pub write_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Graded,
    NoTissue,
}

/// Everything the grader found, before it is written anywhere.
pub struct Graded {
    pub outcome: Outcome,
    pub slide: SlideProperties,
    pub grade: Option<Grade>,
    /// Tissue area per class (each tile's tissue goes to its class in `tile_classes`),
    /// mm².
    pub class_areas_mm2: BTreeMap<String, f64>,
    /// Tissue-weighted mean of each tile's top probability, 0–1.
    pub confidence: Option<f64>,
    pub tissue_area_mm2: f64,
    pub grid: TileGrid,
    pub tiles: Vec<(TileSpec, TileOutput)>,
    /// The class index each of `tiles` counts as, after neighbourhood smoothing.
    pub tile_classes: Vec<usize>,
    /// The smoothing radius used, in tiles.
    pub smoothing_radius: u32,
    /// The minimum area a Gleason pattern needed to count, mm².
    pub min_pattern_mm2: f64,
    /// Grad-CAM per class, stitched (standard Grad-CAM: ReLU after the channel sum).
    pub heatmaps: Heatmaps,
    /// The AT+ maps per class (ReLU per channel, before the sum: the map the Students
    /// were distilled on), stitched the same way; `None` when the model has no such output.
    pub attention: Option<Heatmaps>,
    pub thumbnail: RgbImage,
    /// Level-0 pixels per thumbnail pixel.
    pub thumbnail_downsample: f64,
    pub times: StageTimes,
}

/// Progress callback: `(tiles done, tiles total)`.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Maps a model's class names to Gleason patterns (0 = benign).
pub fn class_patterns(manifest: &Manifest) -> Result<Vec<u8>, GradeError> {
    manifest
        .classes
        .iter()
        .map(|c| match c.to_ascii_uppercase().as_str() {
            "NC" | "BENIGN" | "NON-CANCEROUS" => Ok(0),
            "G3" => Ok(3),
            // SICAPv2's cribriform G4 (G4C) is a Gleason 4 pattern.
            "G4" | "G4C" => Ok(4),
            "G5" => Ok(5),
            _ => Err(GradeError::UnknownClass(c.clone())),
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The overlay's longer side is at least this many pixels where the slide allows.
const MIN_OVERLAY_SIDE: u32 = 1024;

/// µm/px of the thumbnail used for tissue detection and the overlay: fine enough that a
/// tile spans at least 8 mask pixels and that the overlay's longer side has at least
/// [`MIN_OVERLAY_SIDE`] pixels, otherwise as coarse as possible (and within `max_side`,
/// and never finer than level 0). Coarse matters: reading and detection grow with the
/// thumbnail's pixels, and on a 40× slide a 2048-px thumbnail read from the 4 µm/px level
/// was 46% of the 1.25× Student's time; at 16 µm/px it is a level of the usual pyramid.
fn thumbnail_mpp(props: &SlideProperties, tile_um: f64, max_side: u32) -> f64 {
    let (w, h) = props.levels.first().map_or((1, 1), |l| (l.width, l.height));
    let extent_um = (f64::from(w) * props.mpp_x).max(f64::from(h) * props.mpp_y);
    let level0 = props.mpp_x.max(props.mpp_y);
    (tile_um / 8.0)
        .min(extent_um / f64::from(MIN_OVERLAY_SIDE))
        .max(extent_um / f64::from(max_side.max(1)))
        .max(level0)
}

fn median_brightness(image: &RgbImage) -> u8 {
    let mut histogram = [0usize; 256];
    for p in image.pixels() {
        let [r, g, b] = p.0;
        histogram[((u16::from(r) + u16::from(g) + u16::from(b)) / 3) as usize] += 1;
    }
    let half = image.pixels().len() / 2;
    let mut seen = 0;
    for (value, count) in histogram.iter().enumerate() {
        seen += count;
        if seen > half {
            return value as u8;
        }
    }
    255
}

/// Smoothing radius for models that recommend none.
pub const DEFAULT_SMOOTHING_RADIUS: u32 = 1;

/// Below this median brightness a thumbnail is not brightfield: glass under transmitted
/// light is near white, while fluorescence backgrounds are near black.
pub const MIN_BRIGHTFIELD_MEDIAN: u8 = 80;

type Batch = Result<(Vec<TileSpec>, Vec<RgbImage>, Duration), SlideError>;

pub fn grade_slide(
    path: &Path,
    pool: &EnginePool,
    options: &GradeOptions,
    progress: Progress,
) -> Result<Graded, GradeError> {
    let started = Instant::now();
    let mut times = StageTimes::default();
    let manifest = pool.manifest().clone();
    let patterns = class_patterns(&manifest)?;
    let recommended = manifest.grading.as_ref();
    let smoothing_radius = options
        .smoothing_radius
        .or(recommended.map(|g| g.smoothing_radius))
        .unwrap_or(DEFAULT_SMOOTHING_RADIUS);
    let min_pattern_mm2 = options
        .min_pattern_mm2
        .or(recommended.map(|g| g.min_pattern_mm2))
        .unwrap_or(0.0);

    let t = Instant::now();
    if let Some(decoder) = &options.decoder {
        decoder.probe(path, options.mpp_override)?;
    }
    let slide = Slide::open(path, options.mpp_override)?;
    let props = slide.properties().clone();
    times.open_ms = ms(t.elapsed());

    // Tissue mask on a thumbnail, then the grid at the model's resolution.
    let t = Instant::now();
    let model_mpp = manifest.input.mpp;
    let tile_px = manifest.input.size_px;
    let tile_um = f64::from(tile_px) * model_mpp;
    let thumb_mpp = thumbnail_mpp(&props, tile_um, options.max_thumbnail_side);
    let thumbnail = slide.thumbnail_at_mpp(thumb_mpp)?;
    let brightness = median_brightness(&thumbnail);
    if brightness < MIN_BRIGHTFIELD_MEDIAN {
        return Err(GradeError::NotBrightfield {
            median_brightness: brightness,
        });
    }
    let mask = tissue::detect_at_mpp(&thumbnail, thumb_mpp, &options.tissue);
    let (w0, h0) = slide.dimensions();
    let thumbnail_downsample = f64::from(w0) / f64::from(thumbnail.width().max(1));
    // Slides with non-square pixels use the x axis for tile geometry; reads honour both.
    let side = tiling::tile_side_level0(tile_px, model_mpp, props.mpp_x);
    let grid = tiling::grid(
        u64::from(w0),
        u64::from(h0),
        side,
        &mask,
        options.min_tissue,
    );
    times.tissue_ms = ms(t.elapsed());

    let mut tiles: Vec<(TileSpec, TileOutput)> = Vec::with_capacity(grid.tiles.len());
    let total = grid.tiles.len();
    progress(0, total);

    let t_tiles = Instant::now();
    let mut infer = Duration::ZERO;
    let mut read = Duration::ZERO;
    let read_threads = options
        .read_threads
        .unwrap_or_else(default_read_threads)
        .max(1);
    let batch_size = options
        .batch_size
        .unwrap_or_else(|| default_batch_size(tile_px))
        .max(1);
    std::thread::scope(|scope| -> Result<(), GradeError> {
        let (sender, receiver) = sync_channel::<Batch>(options.read_ahead.max(1));
        let slide = &slide;
        let grid = &grid;
        scope.spawn(move || {
            for chunk in grid.tiles.chunks(batch_size) {
                let t = Instant::now();
                // One read per tile. Reading each run of adjacent tiles in one call and
                // cutting it up measured no faster (BENCHMARKS.md): OpenSlide caches the
                // level tiles that neighbouring reads share.
                let read = |tile: &TileSpec| {
                    slide.read_region_at_mpp(
                        tile.x.round() as i64,
                        tile.y.round() as i64,
                        tile_px,
                        tile_px,
                        model_mpp,
                    )
                };
                // Several threads may share the slide: the direct reader's tile cache
                // makes a second thread wanting the same JPEG tile wait for the first
                // one's decode instead of repeating it, and OpenSlide handles are
                // thread-safe.
                let images = crate::threads::map_in_order(chunk, read_threads, read, || {
                    SlideError::Corrupt {
                        detail: "a tile reader thread panicked".into(),
                    }
                });
                let failed = images.is_err();
                let batch = images.map(|images| (chunk.to_vec(), images, t.elapsed()));
                // A closed channel means the consumer gave up; stop reading.
                if sender.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        consume(
            &receiver,
            pool,
            total,
            options.stop.as_deref(),
            |specs, outputs, read_time, infer_time| {
                read += read_time;
                infer += infer_time;
                tiles.extend(specs.into_iter().zip(outputs));
                progress(tiles.len(), total);
            },
        )
    })?;
    times.tiles_wall_ms = ms(t_tiles.elapsed());
    times.read_ms = ms(read);
    times.infer_ms = ms(infer);

    let um2_per_px = props.mpp_x * props.mpp_y;
    let tally = tally(
        &tiles,
        &manifest.classes,
        &patterns,
        um2_per_px,
        smoothing_radius,
    );
    let t = Instant::now();
    let (heatmaps, attention) =
        stitch_maps(&manifest, &grid, &tiles, &tally.smoothed_probabilities);
    times.stitch_ms = ms(t.elapsed());
    let outcome = if tiles.is_empty() {
        Outcome::NoTissue
    } else {
        Outcome::Graded
    };
    let graded = outcome == Outcome::Graded;
    times.total_ms = ms(started.elapsed());
    Ok(Graded {
        outcome,
        slide: props,
        grade: graded.then(|| tally.grade(min_pattern_mm2)),
        class_areas_mm2: tally.class_areas_mm2,
        confidence: graded.then_some(tally.confidence).flatten(),
        tissue_area_mm2: tally.tissue_area_mm2,
        grid,
        tiles,
        tile_classes: tally.tile_classes,
        smoothing_radius,
        min_pattern_mm2,
        heatmaps,
        attention,
        thumbnail,
        thumbnail_downsample,
        times,
    })
}

/// The slide maps of inferred tiles: Grad-CAM per class and, for models that export
/// them, the AT+ maps. Each tile's maps are weighted by its smoothed probabilities (the
/// neighbourhood mean the grade counts with, `smoothed[i]` for `tiles[i]`), so that a lone
/// tile the grade discards does not become the map's brightest spot.
pub fn stitch_maps(
    manifest: &Manifest,
    grid: &TileGrid,
    tiles: &[(TileSpec, TileOutput)],
    smoothed: &[Vec<f32>],
) -> (Heatmaps, Option<Heatmaps>) {
    let cam_grid = manifest.outputs.cam_grid;
    let mut heatmaps = Heatmaps::new(&manifest.classes, grid, cam_grid);
    let mut attention = manifest
        .outputs
        .attention
        .is_some()
        .then(|| Heatmaps::new(&manifest.classes, grid, cam_grid));
    for ((spec, output), weights) in tiles.iter().zip(smoothed) {
        heatmaps.add(spec, weights, &output.cam, cam_grid);
        if let Some(maps) = attention.as_mut() {
            maps.add(spec, weights, &output.attention, cam_grid);
        }
    }
    (heatmaps, attention)
}

/// The tiles' calls summed into areas.
pub struct Tally {
    /// Each tile's class probabilities averaged over its neighbourhood
    /// ([`rule::smoothed_probabilities`]).
    pub smoothed_probabilities: Vec<Vec<f32>>,
    /// The class index each tile counts as: the argmax of its smoothed probabilities.
    pub tile_classes: Vec<usize>,
    /// Tissue area per class name, mm².
    pub class_areas_mm2: BTreeMap<String, f64>,
    /// The same areas by Gleason pattern, before any minimum area is applied.
    pub areas: PatternAreas,
    /// Tissue-weighted mean of each tile's probability for the class it counts as.
    pub confidence: Option<f64>,
    pub tissue_area_mm2: f64,
}

impl Tally {
    /// The grade of these areas, patterns under `min_pattern_mm2` counted as benign: the
    /// one place the rule's minimum area is applied, for the grader and its tuning alike.
    pub fn grade(&self, min_pattern_mm2: f64) -> Grade {
        rule::grade(&self.areas.without_patterns_below(min_pattern_mm2))
    }
}

/// Each tile's tissue goes to the class it counts as after smoothing over `radius` tiles
/// ([`rule::tile_classes`]). Separate from [`grade_slide`] so that the grading rule's
/// settings can be tuned on tiles inferred once (`slidegrade bench cores`).
pub fn tally(
    tiles: &[(TileSpec, TileOutput)],
    classes: &[String],
    patterns: &[u8],
    um2_per_px: f64,
    radius: u32,
) -> Tally {
    let specs: Vec<TileSpec> = tiles.iter().map(|(spec, _)| *spec).collect();
    let probabilities: Vec<&[f32]> = tiles
        .iter()
        .map(|(_, output)| output.probabilities.as_slice())
        .collect();
    let smoothed_probabilities = rule::smoothed_probabilities(&specs, &probabilities, radius);
    let tile_classes = rule::tile_classes_of(&smoothed_probabilities);
    let mut class_areas_mm2: BTreeMap<String, f64> =
        classes.iter().map(|c| (c.clone(), 0.0)).collect();
    let mut areas = PatternAreas::default();
    let mut confidence_sum = 0.0;
    let mut tissue_area_mm2 = 0.0;
    for ((spec, output), &best) in tiles.iter().zip(&tile_classes) {
        let area = spec.tissue_fraction * spec.side * spec.side * um2_per_px / 1e6;
        let p = output.probabilities.get(best).copied().unwrap_or(0.0);
        *class_areas_mm2.entry(classes[best].clone()).or_default() += area;
        match patterns[best] {
            3 => areas.g3 += area,
            4 => areas.g4 += area,
            5 => areas.g5 += area,
            _ => areas.benign += area,
        }
        confidence_sum += f64::from(p) * area;
        tissue_area_mm2 += area;
    }
    Tally {
        smoothed_probabilities,
        tile_classes,
        class_areas_mm2,
        areas,
        confidence: (tissue_area_mm2 > 0.0).then(|| confidence_sum / tissue_area_mm2),
        tissue_area_mm2,
    }
}

/// Tiles per batch when none is set: the pixels of 16 Teacher tiles (16 × 128²), at most
/// 256 tiles. A batch then holds about the same memory and takes about as long whatever
/// the model, and small tiles are not run 16 at a time: the 1.25× Student (16 px) went
/// from 29,000 to 33,000 tiles/s between batches of 16 and 64 (BENCHMARKS.md).
pub fn default_batch_size(tile_px: u32) -> usize {
    let pixels = 16 * 128 * 128;
    let per_tile = (tile_px.max(1) as usize).pow(2);
    (pixels / per_tile).clamp(1, 256)
}

/// Reader threads when none is set: half the cores (at least one), the other half being
/// ONNX Runtime's. On 2 cores a second reader slowed the 1.25× Student's grade (816
/// against 745 ms, BENCHMARKS.md): it takes a core from inference, which is the wall.
pub fn default_read_threads() -> usize {
    (crate::threads::cores() / 2).max(1)
}

/// Runs every batch from the reader through the engine, in order.
fn consume(
    receiver: &Receiver<Batch>,
    pool: &EnginePool,
    total: usize,
    stop: Option<&AtomicBool>,
    mut on_batch: impl FnMut(Vec<TileSpec>, Vec<TileOutput>, Duration, Duration),
) -> Result<(), GradeError> {
    let mut done = 0;
    while done < total {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(GradeError::Stopped);
        }
        let (specs, images, read_time) =
            receiver.recv().map_err(|_| GradeError::ReaderStopped)??;
        let t = Instant::now();
        let outputs = pool.infer(&images)?;
        let metrics = crate::telemetry::global();
        metrics.batch_size.observe(images.len() as f64);
        metrics.ort_batch_seconds.observe(t.elapsed().as_secs_f64());
        metrics.tiles_inferred.inc_by(images.len() as u64);
        done += specs.len();
        on_batch(specs, outputs, read_time, t.elapsed());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slide::{Level, MppSource};

    fn props(w: u32, h: u32, mpp: f64) -> SlideProperties {
        SlideProperties {
            file_name: "x".into(),
            vendor: None,
            levels: vec![Level {
                index: 0,
                width: w,
                height: h,
                downsample: 1.0,
            }],
            mpp_x: mpp,
            mpp_y: mpp,
            mpp_source: MppSource::Metadata,
            objective_power: None,
        }
    }

    #[test]
    fn thumbnail_resolution_balances_detail_and_size() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // Small slide: the overlay keeps 1024 px on its longer side (1483.5 µm / 1024).
        let m = thumbnail_mpp(&props(2220, 2967, 0.5), 512.0, 2048);
        assert!(close(m, 2967.0 * 0.5 / 1024.0), "{m}");
        // 40× slide, 128 µm tiles: 8 mask pixels per tile, 16 µm/px (a pyramid level),
        // not the 9.8 µm/px of a 2048-px thumbnail.
        let m = thumbnail_mpp(&props(80_000, 60_000, 0.25), 128.0, 2048);
        assert!(close(m, 16.0), "{m}");
        // Large tiles: the overlay's 1024 px bound wins (20 mm over 1024 px).
        let m = thumbnail_mpp(&props(80_000, 60_000, 0.25), 512.0, 2048);
        assert!(close(m, 20_000.0 / 1024.0), "{m}");
        // A small size cap wins over both.
        let m = thumbnail_mpp(&props(80_000, 60_000, 0.25), 128.0, 512);
        assert!(close(m, 20_000.0 / 512.0), "{m}");
        // Never finer than level 0.
        assert_eq!(thumbnail_mpp(&props(100, 100, 8.0), 512.0, 2048), 8.0);
    }

    #[test]
    fn median_brightness_separates_glass_from_fluorescence() {
        let glass = RgbImage::from_pixel(10, 10, image::Rgb([240, 240, 240]));
        let dark = RgbImage::from_pixel(10, 10, image::Rgb([2, 1, 40]));
        assert_eq!(median_brightness(&glass), 240);
        assert!(median_brightness(&dark) < MIN_BRIGHTFIELD_MEDIAN);
    }
}
