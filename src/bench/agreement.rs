//! Tile calls against the truth on a synthetic slide with a ground-truth mask (issue 12
//! §5 and §10): for every model, the tiles the grader picks, read two ways:
//!
//! - **pyramid**: what grading reads (the coarsest pyramid level at least as fine as the
//!   model, stored as JPEG, then an area resize), straight from the pipeline;
//! - **level 0**: the same tiles read at full resolution and area-averaged, the way patch
//!   data sets (and WSInfer) are made.
//!
//! A tile's true class is the most common tissue class of the truth mask inside it. The
//! table also gives how many graded tiles hold no true tissue at all, and the tissue
//! area found against the truth: both measure the tissue mask, not the model.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use image::GrayImage;

use super::common::{header, load_models, read_level0_resized};
use crate::grade::pipeline::{self, GradeOptions};
use crate::grade::tiling::TileSpec;
use crate::model::engine::{EngineArgs, EnginePool};
use crate::slide::Slide;
use crate::synth::SlideTruth;

#[derive(Debug, Clone, clap::Args)]
pub struct AgreementArgs {
    /// A synthetic slide with its `<stem>_truth.json` and mask beside it. Default: the
    /// benchmark slide of `bench slide` (written to target/bench/ if missing).
    #[arg(long)]
    pub slide: Option<PathBuf>,
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Models (folder names); default: every valid model in --models-dir.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Seed of the synthetic benchmark slide.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// One model's figures.
pub struct Agreement {
    pub tiles: usize,
    /// Graded tiles without any true tissue.
    pub tiles_without_tissue: usize,
    /// Share of the tiles with true tissue whose own argmax equals the true class.
    pub pyramid: f64,
    pub level0: f64,
    pub tissue_found_mm2: f64,
}

pub fn run(args: &AgreementArgs) -> anyhow::Result<()> {
    let (slide_path, truth) = match &args.slide {
        Some(path) => {
            let truth_path = path.with_file_name(format!(
                "{}_truth.json",
                path.file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
            ));
            let truth: SlideTruth = serde_json::from_str(
                &std::fs::read_to_string(&truth_path)
                    .with_context(|| format!("cannot read {}", truth_path.display()))?,
            )
            .with_context(|| format!("cannot parse {}", truth_path.display()))?;
            (path.clone(), truth)
        }
        None => {
            let (path, truth) = super::slide::benchmark_slide(args.seed)?;
            (path, truth.context("the benchmark slide has no truth")?)
        }
    };
    let mask_path = slide_path.with_file_name(&truth.mask.file);
    let mask = image::open(&mask_path)
        .with_context(|| format!("cannot read {}", mask_path.display()))?
        .to_luma8();
    let config = args.engine.init()?;
    let models = load_models(&args.models_dir, &args.models)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Tile calls against the truth, two ways of reading\n\n{}",
        header()
    );
    let _ = writeln!(
        s,
        "- Slide: `{}` ({} × {} px at {} µm/px), true tissue {:.1} mm², true grade {}.\n",
        slide_path.display(),
        truth.width,
        truth.height,
        truth.mpp,
        truth.tissue_area_mm2,
        truth.grade.gleason
    );
    let _ = writeln!(
        s,
        "| model | µm/px | graded tiles | tiles with no true tissue | tissue found mm² (truth {:.1}) | agreement, pyramid read | agreement, level 0 + area |",
        truth.tissue_area_mm2
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for model in &models {
        let pool = EnginePool::new(model, &config)?;
        let a = measure(&slide_path, &truth, &mask, &pool, args.batch_size)?;
        let m = &model.manifest;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} ({:.1}%) | {:.1} | {:.1}% | {:.1}% |",
            m.name,
            m.input.mpp,
            a.tiles,
            a.tiles_without_tissue,
            100.0 * a.tiles_without_tissue as f64 / a.tiles.max(1) as f64,
            a.tissue_found_mm2,
            100.0 * a.pyramid,
            100.0 * a.level0
        );
        eprintln!(
            "{}: pyramid {:.1}%, level 0 {:.1}%",
            m.name,
            100.0 * a.pyramid,
            100.0 * a.level0
        );
    }
    print!("{s}");
    Ok(())
}

/// Grades `slide` with `pool` (pyramid reads), rereads the same tiles from level 0, and
/// compares both sets of calls with the truth.
pub fn measure(
    slide_path: &std::path::Path,
    truth: &SlideTruth,
    mask: &GrayImage,
    pool: &EnginePool,
    batch_size: usize,
) -> anyhow::Result<Agreement> {
    let options = GradeOptions {
        batch_size: Some(batch_size.max(1)),
        ..GradeOptions::default()
    };
    let graded = pipeline::grade_slide(slide_path, pool, &options, &mut |_, _| {})?;
    let manifest = pool.manifest();
    let tile_px = manifest.input.size_px;
    let slide = Slide::open(slide_path, None)?;
    let mut level0_calls = Vec::with_capacity(graded.tiles.len());
    for chunk in graded.tiles.chunks(batch_size.max(1)) {
        let images = chunk
            .iter()
            .map(|(spec, _)| {
                let (x, y) = (spec.x.round() as i64, spec.y.round() as i64);
                read_level0_resized(&slide, x, y, spec.side.round() as u32, tile_px)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for out in pool.infer(&images)? {
            level0_calls.push(argmax(&out.probabilities));
        }
    }
    let (mut with_tissue, mut agree_pyramid, mut agree_level0, mut without) = (0, 0, 0, 0);
    for ((spec, out), level0) in graded.tiles.iter().zip(&level0_calls) {
        match true_class(spec, truth, mask) {
            None => without += 1,
            Some(c) => {
                with_tissue += 1;
                agree_pyramid += usize::from(argmax(&out.probabilities) == c);
                agree_level0 += usize::from(*level0 == c);
            }
        }
    }
    Ok(Agreement {
        tiles: graded.tiles.len(),
        tiles_without_tissue: without,
        pyramid: agree_pyramid as f64 / with_tissue.max(1) as f64,
        level0: agree_level0 as f64 / with_tissue.max(1) as f64,
        tissue_found_mm2: graded.tissue_area_mm2,
    })
}

fn argmax(p: &[f32]) -> usize {
    (0..p.len())
        .max_by(|&a, &b| p[a].total_cmp(&p[b]))
        .unwrap_or(0)
}

/// The most common tissue class of the truth mask inside the tile (mask value k + 1 is
/// class k), or None when the tile holds no true tissue.
pub fn true_class(spec: &TileSpec, truth: &SlideTruth, mask: &GrayImage) -> Option<usize> {
    let ds = f64::from(truth.mask.downsample);
    let (w, h) = mask.dimensions();
    let x0 = (spec.x / ds).floor().max(0.0) as u32;
    let y0 = (spec.y / ds).floor().max(0.0) as u32;
    let x1 = (((spec.x + spec.side) / ds).ceil() as u32).min(w);
    let y1 = (((spec.y + spec.side) / ds).ceil() as u32).min(h);
    let mut counts = [0usize; 256];
    for y in y0..y1 {
        for x in x0..x1 {
            counts[usize::from(mask.get_pixel(x, y).0[0])] += 1;
        }
    }
    (1..256)
        .filter(|&v| counts[v] > 0)
        .max_by_key(|&v| counts[v])
        .map(|v| v - 1)
}
