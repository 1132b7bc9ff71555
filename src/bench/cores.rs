//! Tunes the grading rule on whole slides (issue 12 §10): the smoothing radius and the
//! minimum area a Gleason pattern needs to count, chosen on generated cores of every
//! pattern whose seeds differ from those of the ground-truth test
//! (`tests/it/grade_synthetic.rs` uses seeds 3–11), so the test stays a held-out check.
//!
//! Each slide is inferred once per model; every (radius, minimum area) pair is then
//! applied to the same tile outputs with [`pipeline::tally`] and the rule, and the table
//! counts the slides whose Gleason score equals the truth.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use image::GrayImage;

use super::common::{header, load_models};
use crate::grade::pipeline::{self, GradeOptions, class_patterns};
use crate::grade::tiling::TileSpec;
use crate::model::contract::{self, GradingDefaults};
use crate::model::engine::{EngineArgs, EnginePool, TileOutput};
use crate::synth::{CorePattern, SlideSpec, SlideTruth, write_slide};

#[derive(Debug, Clone, clap::Args)]
pub struct CoresArgs {
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Models (folder names); default: every valid model in --models-dir.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Replicates: each writes one core of every pattern (9 slides) with its own seeds.
    /// 9 (81 cores) because 27 cores left the 1.25× Student's radii 1 and 3 tied, and the
    /// tie-break then chose the rule that graded 72 of 81 instead of 77 (RESULTS.md).
    #[arg(long, default_value_t = 9)]
    pub replicates: u64,
    /// Seeds start here (slide k of replicate r uses `first_seed + 16 r + k`); keep them
    /// clear of the test's 3–11.
    #[arg(long, default_value_t = 1000)]
    pub first_seed: u64,
    /// Smoothing radii to try, in tiles (the shipped rules were chosen on these defaults).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3")]
    pub radii: Vec<u32>,
    /// Minimum pattern areas to try, mm².
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.05,0.1,0.2,0.3,0.5,0.75,1"
    )]
    pub min_areas: Vec<f64>,
    /// Where the generated slides are kept (reused when present).
    #[arg(long, default_value = "target/bench/cores")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Record each model's best settings in its model.json (`grading`), where the grader
    /// takes them as the model's defaults. model.json is not covered by the ONNX sha256.
    #[arg(long)]
    pub write_recommendation: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// One generated core and its truth.
struct Core {
    path: PathBuf,
    spec: SlideSpec,
    truth: SlideTruth,
    /// The ground-truth mask of the pointing game, drawn once: every model and weighting
    /// plays on it.
    mask: GrayImage,
}

fn cores(args: &CoresArgs) -> anyhow::Result<Vec<Core>> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let mut out = Vec::new();
    for r in 0..args.replicates {
        for (k, pattern) in CorePattern::ALL.into_iter().enumerate() {
            let seed = args.first_seed + 16 * r + k as u64;
            let path = args.dir.join(format!("core-{seed}.tiff"));
            let truth_path = args.dir.join(format!("core-{seed}_truth.json"));
            // The same 6 × 2 mm, 20× geometry as the ground-truth test.
            let spec = SlideSpec::with_pattern(12_288, 4_096, 0.5, seed, pattern);
            let truth = match std::fs::read_to_string(&truth_path) {
                Ok(text) if path.exists() => serde_json::from_str(&text)
                    .with_context(|| format!("cannot parse {}", truth_path.display()))?,
                _ => write_slide(&path, &spec)?,
            };
            let mask = spec.mask();
            out.push(Core {
                path,
                spec,
                truth,
                mask,
            });
        }
    }
    Ok(out)
}

pub fn run(args: &CoresArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.radii.is_empty() && !args.min_areas.is_empty(),
        "--radii and --min-areas need at least one value each"
    );
    let cores = cores(args)?;
    let config = args.engine.init()?;
    let models = load_models(&args.models_dir, &args.models)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Grading rule on generated cores (not the test's)\n\n{}\n- {} slides: {} replicate(s) of the nine patterns, seeds from {}. Cell: slides graded with the exact Gleason score.\n",
        header(),
        cores.len(),
        args.replicates,
        args.first_seed
    );
    let options = GradeOptions {
        batch_size: Some(args.batch_size.max(1)),
        ..GradeOptions::default()
    };
    for model in &models {
        let pool = EnginePool::new(model, &config)?;
        let manifest = pool.manifest().clone();
        let patterns = class_patterns(&manifest)?;
        // Inferred once; the rule's settings are applied to these outputs below.
        let mut inferred: Vec<(Vec<(TileSpec, TileOutput)>, f64)> = Vec::new();
        let mut grids = Vec::new();
        for core in &cores {
            let graded = pipeline::grade_slide(&core.path, &pool, &options, &mut |_, _| {})?;
            let um2_per_px = graded.slide.mpp_x * graded.slide.mpp_y;
            inferred.push((graded.tiles, um2_per_px));
            grids.push(graded.grid);
        }
        let _ = writeln!(s, "#### {}\n", manifest.name);
        let mut head = "| radius |".to_string();
        let mut rule_line = "|---|".to_string();
        let mut sorted = args.min_areas.clone();
        sorted.sort_by(f64::total_cmp);
        for m in &sorted {
            let _ = write!(head, " ≥ {m} mm² |");
            rule_line.push_str("---|");
        }
        let _ = writeln!(s, "{head}\n{rule_line}");
        let mut best: Option<(usize, u32, f64)> = None;
        let mut radii = args.radii.clone();
        radii.sort_unstable();
        let mut min_areas = args.min_areas.clone();
        min_areas.sort_by(f64::total_cmp);
        for &radius in &radii {
            let tallies: Vec<_> = inferred
                .iter()
                .map(|(tiles, um2)| {
                    pipeline::tally(tiles, &manifest.classes, &patterns, *um2, radius)
                })
                .collect();
            let mut row = format!("| {radius} |");
            for &min in &min_areas {
                let exact = tallies
                    .iter()
                    .zip(&cores)
                    .filter(|(tally, core)| tally.grade(min).gleason == core.truth.grade.gleason)
                    .count();
                let _ = write!(row, " {exact}/{} |", cores.len());
                // Ties go to the smaller minimum area, then the smaller radius: the
                // settings that hide the fewest small true foci.
                let better = best.is_none_or(|(b, r, m)| {
                    exact > b || (exact == b && (min < m || (min == m && radius < r)))
                });
                if better {
                    best = Some((exact, radius, min));
                }
            }
            let _ = writeln!(s, "{row}");
        }
        if let Some((exact, radius, min)) = best {
            let _ = writeln!(
                s,
                "\nBest: radius {radius}, minimum {min} mm²: {exact}/{} exact. Misgraded there (areas G3/G4/G5 mm², graded; truth):\n",
                cores.len()
            );
            for ((tiles, um2), core) in inferred.iter().zip(&cores) {
                let tally = pipeline::tally(tiles, &manifest.classes, &patterns, *um2, radius);
                let graded = tally.grade(min);
                let truth = &core.truth.grade;
                if graded.gleason != truth.gleason {
                    let (a, t) = (&tally.areas, &core.truth.areas_mm2);
                    let _ = writeln!(
                        s,
                        "- {}: graded {} from {:.2}/{:.2}/{:.2}; truth {} ({:.2}/{:.2}/{:.2})",
                        core.path.file_name().unwrap_or_default().to_string_lossy(),
                        graded.gleason,
                        a.g3,
                        a.g4,
                        a.g5,
                        truth.gleason,
                        t.g3,
                        t.g4,
                        t.g5
                    );
                }
            }
            let _ = writeln!(s);
            // The pointing game with the rule the grader uses now (model.json's, or the
            // default), not the best above: that is what users see.
            let rule_radius = manifest
                .grading
                .as_ref()
                .map_or(pipeline::DEFAULT_SMOOTHING_RADIUS, |g| g.smoothing_radius);
            let _ = writeln!(
                s,
                "Pointing game with the model's grading rule (smoothing radius {rule_radius}): the peak of each predicted, present pattern's map within one map cell of its true region. The maps weighted by each tile's own probability (radius 0), and by the smoothed probability the grade counts with (what the grader does):\n\n| map weight | Grad-CAM | AT+ map |\n|---|---|---|"
            );
            for weight_radius in [0, rule_radius] {
                let (hits, attention_hits) = pointing_game(
                    &manifest,
                    &patterns,
                    &inferred,
                    &grids,
                    &cores,
                    rule_radius,
                    weight_radius,
                );
                let _ = writeln!(
                    s,
                    "| radius {weight_radius} | {} | {} |",
                    hits.fraction(),
                    attention_hits.fraction()
                );
            }
            let _ = writeln!(s);
            if args.write_recommendation {
                let mut manifest = manifest.clone();
                manifest.grading = Some(GradingDefaults {
                    smoothing_radius: radius,
                    min_pattern_mm2: min,
                    chosen_on: format!(
                        "slidegrade bench cores: {exact}/{} generated cores graded exactly (seeds from {}, apart from the ground-truth test's); ties to the smaller area, then radius",
                        cores.len(),
                        args.first_seed
                    ),
                });
                contract::write_manifest(&model.dir, &manifest)
                    .with_context(|| format!("cannot write {}", model.dir.display()))?;
                contract::load(&model.dir)?;
            }
            eprintln!(
                "{}: best radius {radius}, min {min} mm²: {exact}/{}",
                manifest.name,
                cores.len()
            );
        }
    }
    print!("{s}");
    Ok(())
}

/// Hits out of pointings.
#[derive(Default)]
struct Hits {
    hits: usize,
    pointings: usize,
}

impl Hits {
    fn add(&mut self, hit: bool) {
        self.pointings += 1;
        self.hits += usize::from(hit);
    }

    fn fraction(&self) -> String {
        if self.pointings == 0 {
            return "–".into();
        }
        format!(
            "{}/{} ({:.1}%)",
            self.hits,
            self.pointings,
            100.0 * self.hits as f64 / self.pointings as f64
        )
    }
}

/// The pointing game of `tests/it/grade_synthetic.rs` on the tuning cores: for each
/// Gleason pattern both present in the truth and predicted (the tiles' calls smoothed over
/// `radius` tiles), whether the peak of its map, each tile weighted by its probabilities
/// smoothed over `weight_radius` tiles, lies within one map cell of its true region; on
/// Grad-CAM and, where the model exports them, the AT+ maps.
fn pointing_game(
    manifest: &contract::Manifest,
    patterns: &[u8],
    inferred: &[(Vec<(TileSpec, TileOutput)>, f64)],
    grids: &[crate::grade::tiling::TileGrid],
    cores: &[Core],
    radius: u32,
    weight_radius: u32,
) -> (Hits, Hits) {
    let (mut cam, mut attention) = (Hits::default(), Hits::default());
    for (((tiles, um2), grid), core) in inferred.iter().zip(grids).zip(cores) {
        let tally = pipeline::tally(tiles, &manifest.classes, patterns, *um2, radius);
        let weights = (weight_radius != radius)
            .then(|| pipeline::tally(tiles, &manifest.classes, patterns, *um2, weight_radius));
        let smoothed = &weights.as_ref().unwrap_or(&tally).smoothed_probabilities;
        let (heatmaps, attention_maps) = pipeline::stitch_maps(manifest, grid, tiles, smoothed);
        let play = |maps| {
            core.spec.pointing_game(
                &core.mask,
                &core.truth.areas_mm2,
                &manifest.classes,
                patterns,
                &tally.class_areas_mm2,
                maps,
            )
        };
        for (_, hit) in play(&heatmaps) {
            cam.add(hit);
        }
        if let Some(maps) = &attention_maps {
            for (_, hit) in play(maps) {
                attention.add(hit);
            }
        }
    }
    (cam, attention)
}
