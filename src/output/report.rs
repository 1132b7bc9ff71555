//! Writes a grading result into an output folder:
//!
//! - `result.json`: the versioned result ([`GradeReport`], schema [`RESULT_SCHEMA`]);
//! - `heatmap_<class>.png`: one colour-mapped Grad-CAM map per class, one pixel per cell
//!   (where it lies on the slide: [`HeatmapGeometry`], `heatmap` in `result.json`);
//! - `attention_<class>.png`: the same for the AT+ maps, when the model exports them;
//! - `overlay.png`: the primary class's map over the thumbnail, with a legend;
//! - `tiles.csv`: WSInfer's columns `minx,miny,width,height,prob_<class>`;
//! - `tiles.geojson`: tiles with classification and measurements, for QuPath.
//!
//! Files are written to a temporary name and renamed, so a reader never sees half a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::grade::heatmaps::Heatmaps;
use crate::grade::pipeline::{Graded, Outcome, StageTimes};
use crate::grade::rule::Grade;
use crate::model::contract::{Manifest, Role};
use crate::output::images::{self, RenderError};
use crate::output::tables;
use crate::slide::SlideProperties;

/// Version of `result.json`. Bump the major part on any incompatible change, the minor
/// part when fields are added (1.1: `heatmap`; 1.3: `heatmap.attention_layers`,
/// `tiles.min_pattern_mm2`).
pub const RESULT_SCHEMA: &str = "slidegrade.result/1.3";

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ModelIdentity {
    pub name: String,
    pub version: String,
    pub role: Role,
    pub onnx_sha256: String,
    pub classes: Vec<String>,
    pub provider: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Magnification {
    /// µm/px the model reads at.
    pub mpp: f64,
    /// Nominal objective magnification of that resolution.
    pub objective: f64,
    /// Tile side in pixels at that resolution.
    pub tile_px: u32,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TileSummary {
    /// Tiles in the whole grid over the slide.
    pub grid: u64,
    /// Tiles with enough tissue, all inferred.
    pub inferred: usize,
    pub min_tissue: f64,
    /// Neighbourhood radius, in tiles, of the smoothing that decides each tile's class
    /// for the areas and the grade (0 = none).
    pub smoothing_radius: u32,
    /// A Gleason pattern covering less than this, in mm², counted as benign for the
    /// grade (0 = every pattern counts).
    pub min_pattern_mm2: f64,
}

/// Where the `heatmap_<class>.png` images lie on the slide, so that a viewer can lay
/// them over it exactly.
///
/// Heatmap pixel `(i, j)` covers the level-0 square from
/// `origin + (i, j) · level0_px_per_px` to `origin + (i + 1, j + 1) · level0_px_per_px`.
/// The tile grid starts at the slide's origin and covers the whole slide with whole
/// tiles, so the heatmap's extent is usually *larger* than the slide (the last column
/// and row of tiles run past its right and bottom edges): scale the image by
/// `level0_px_per_px`, not to the slide's size.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HeatmapGeometry {
    /// PNG size in pixels (one pixel per Grad-CAM cell).
    pub width_px: u32,
    pub height_px: u32,
    /// Level-0 pixels per heatmap pixel, on both axes (cells are square in level-0
    /// pixels, as the tiles are).
    pub level0_px_per_px: f64,
    /// Level-0 position `[x, y]` of the heatmap's top-left corner.
    pub origin_level0_px: [f64; 2],
    /// Level-0 size `[width, height]` the heatmap covers: size in pixels ×
    /// `level0_px_per_px`.
    pub extent_level0_px: [f64; 2],
    /// µm per heatmap pixel `[x, y]`.
    pub um_per_px: [f64; 2],
    /// One entry per class, in the model's class order.
    pub layers: Vec<HeatmapLayer>,
    /// The AT+ maps' files (`attention_<stem>.png`, same geometry), when the model
    /// exports them. Grad-CAM (`layers`) sums the channels' evidence and then clips at 0;
    /// the AT+ map clips each channel first, the map the Students were distilled on.
    #[serde(default)]
    pub attention_layers: Vec<HeatmapLayer>,
}

/// One class's heatmap file.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HeatmapLayer {
    pub class: String,
    /// File name in the output folder, `heatmap_<stem>.png`; the API serves it at
    /// `/v1/jobs/{id}/heatmap/<stem>.png`.
    pub file: String,
}

impl HeatmapGeometry {
    pub fn of(
        heatmaps: &Heatmaps,
        attention: Option<&Heatmaps>,
        slide: &SlideProperties,
    ) -> HeatmapGeometry {
        let side = heatmaps.cell_side;
        let layers = |prefix: &str, maps: &Heatmaps| -> Vec<HeatmapLayer> {
            maps.classes
                .iter()
                .zip(images::heatmap_file_stems(&maps.classes))
                .map(|(class, stem)| HeatmapLayer {
                    class: class.clone(),
                    file: format!("{prefix}_{stem}.png"),
                })
                .collect()
        };
        HeatmapGeometry {
            width_px: heatmaps.width,
            height_px: heatmaps.height,
            level0_px_per_px: side,
            origin_level0_px: [0.0, 0.0],
            extent_level0_px: [
                f64::from(heatmaps.width) * side,
                f64::from(heatmaps.height) * side,
            ],
            um_per_px: [side * slide.mpp_x, side * slide.mpp_y],
            layers: layers("heatmap", heatmaps),
            attention_layers: attention.map_or_else(Vec::new, |maps| layers("attention", maps)),
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GradeReport {
    pub schema: String,
    pub slidegrade_version: String,
    pub outcome: Outcome,
    pub slide: SlideProperties,
    pub model: ModelIdentity,
    pub magnification: Magnification,
    /// `None` when no tissue was found.
    pub grade: Option<Grade>,
    /// Tissue-weighted mean of the tiles' top class probability (0–1).
    pub confidence: Option<f64>,
    pub tissue_area_mm2: f64,
    /// Tissue area by predicted class, mm².
    pub class_areas_mm2: BTreeMap<String, f64>,
    pub tiles: TileSummary,
    pub heatmap: HeatmapGeometry,
    pub timings_ms: StageTimes,
    pub notice: String,
}

pub const NOTICE: &str = "Research software. Not for clinical use.";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ReportError {
    pub fn kind(&self) -> &'static str {
        match self {
            ReportError::Render(e) => e.kind(),
            ReportError::Io { .. } => "io",
        }
    }
}

pub fn build_report(
    graded: &Graded,
    manifest: &Manifest,
    provider: &'static str,
    min_tissue: f64,
) -> GradeReport {
    GradeReport {
        schema: RESULT_SCHEMA.to_string(),
        slidegrade_version: env!("CARGO_PKG_VERSION").to_string(),
        outcome: graded.outcome,
        slide: graded.slide.clone(),
        model: ModelIdentity {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            role: manifest.role,
            onnx_sha256: manifest.onnx_sha256.clone(),
            classes: manifest.classes.clone(),
            provider: provider.to_string(),
        },
        magnification: Magnification {
            mpp: manifest.input.mpp,
            objective: manifest.input.magnification,
            tile_px: manifest.input.size_px,
        },
        grade: graded.grade.clone(),
        confidence: graded.confidence,
        tissue_area_mm2: graded.tissue_area_mm2,
        class_areas_mm2: graded.class_areas_mm2.clone(),
        tiles: TileSummary {
            grid: u64::from(graded.grid.cols) * u64::from(graded.grid.rows),
            inferred: graded.tiles.len(),
            min_tissue,
            smoothing_radius: graded.smoothing_radius,
            min_pattern_mm2: graded.min_pattern_mm2,
        },
        heatmap: HeatmapGeometry::of(&graded.heatmaps, graded.attention.as_ref(), &graded.slide),
        timings_ms: graded.times.clone(),
        notice: NOTICE.to_string(),
    }
}

/// The class the overlay shows: the primary Gleason pattern's class, or the most
/// common class when the slide is benign.
fn overlay_class(report: &GradeReport) -> usize {
    let classes = &report.model.classes;
    if let Some(primary) = report.grade.as_ref().and_then(|g| g.primary) {
        let name = format!("G{primary}");
        if let Some(i) = classes.iter().position(|c| c.eq_ignore_ascii_case(&name)) {
            return i;
        }
    }
    classes
        .iter()
        .enumerate()
        .max_by(|a, b| {
            let area = |c: &String| report.class_areas_mm2.get(c).copied().unwrap_or(0.0);
            area(a.1).total_cmp(&area(b.1))
        })
        .map_or(0, |(i, _)| i)
}

fn caption(report: &GradeReport) -> Vec<String> {
    let mut lines = Vec::new();
    match &report.grade {
        Some(g) => {
            lines.push(format!(
                "Gleason {}  ISUP {}",
                g.gleason, g.isup_grade_group
            ));
            lines.push(format!("tumour {:.1}%", g.tumour_percent));
        }
        None => lines.push("no tissue found".into()),
    }
    lines.push(format!(
        "model {} v{}",
        report.model.name, report.model.version
    ));
    lines.push(NOTICE.into());
    lines
}

/// Writes every output into `dir` (created if missing), `result.json` last, its write
/// time covering all of them.
pub fn write_outputs(
    dir: &Path,
    graded: &Graded,
    report: &mut GradeReport,
) -> Result<(), ReportError> {
    let started = Instant::now();
    write_maps_and_tables(dir, graded, &report.model.classes)?;
    write_result(dir, graded, report, started)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + use<> {
    let path = path.to_path_buf();
    move |source| ReportError::Io { path, source }
}

/// What a caller needs as soon as the grade is known: `overlay.png` (the LIMS results
/// carry it) and `result.json`, whose `timings_ms.write_ms` is the time since `started`.
pub fn write_result(
    dir: &Path,
    graded: &Graded,
    report: &mut GradeReport,
    started: Instant,
) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    images::write_overlay(
        &dir.join("overlay.png"),
        &graded.thumbnail,
        graded.thumbnail_downsample,
        &graded.heatmaps,
        overlay_class(report),
        &caption(report),
    )?;
    report.timings_ms.write_ms = started.elapsed().as_secs_f64() * 1000.0;
    report.timings_ms.total_ms += report.timings_ms.write_ms;
    let path = dir.join("result.json");
    let tmp = dir.join("result.json.part");
    let text = serde_json::to_string_pretty(report).map_err(|e| ReportError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&tmp, text + "\n").map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
    Ok(())
}

/// The rest, which a job server writes after the job is done: `heatmap_<class>.png`,
/// `attention_<class>.png`, `tiles.csv` and `tiles.geojson`.
pub fn write_maps_and_tables(
    dir: &Path,
    graded: &Graded,
    classes: &[String],
) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    // Images on one thread, tables on another: the two halves take similar time.
    let (images, tables) = std::thread::scope(|scope| {
        let tables = scope.spawn(|| -> Result<(), RenderError> {
            tables::write_tiles_csv(&dir.join("tiles.csv"), classes, &graded.tiles)?;
            tables::write_tiles_geojson(
                &dir.join("tiles.geojson"),
                classes,
                &graded.tiles,
                &graded.tile_classes,
            )
        });
        let images = images::write_heatmaps(dir, &graded.heatmaps, "heatmap").and_then(|_| {
            match &graded.attention {
                Some(maps) => images::write_heatmaps(dir, maps, "attention").map(|_| ()),
                None => Ok(()),
            }
        });
        let tables = tables
            .join()
            .unwrap_or_else(|_| Err(RenderError::BadInput("the table writer panicked".into())));
        (images, tables)
    });
    images?;
    tables?;
    Ok(())
}
