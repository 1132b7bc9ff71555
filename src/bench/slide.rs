//! Time per slide by stage, for every model on the same slide, in one run (issue 4 §5,
//! issue 7 §1). The default slide is the synthetic 80,000 × 60,000 px benchmark slide,
//! written on first use.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use super::common::{header, load_models, median};
use crate::grade::pipeline::{GradeOptions, StageTimes};
use crate::grader::Grader;
use crate::model::contract::Role;
use crate::model::engine::{EngineArgs, EnginePool};
use crate::synth::{SlideSpec, SlideTruth, write_slide};

#[derive(Debug, Clone, clap::Args)]
pub struct SlideArgs {
    /// Slide to grade. Default: the synthetic benchmark slide (80,000 × 60,000 px at
    /// 0.25 µm/px), written to target/bench/ if missing.
    #[arg(long)]
    pub slide: Option<PathBuf>,
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Models to time (folder names); default: every valid model in --models-dir.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Gradings per model; the table gives medians.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Tiles per batch (default: the grader's, by tile size).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Threads that read the tiles (default: the grader's, half the cores).
    #[arg(long)]
    pub read_threads: Option<usize>,
    /// Seed of the synthetic benchmark slide.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The medians of one model's gradings.
struct Row {
    name: String,
    role: Role,
    mpp: f64,
    tile_px: u32,
    tiles: usize,
    tissue_mm2: f64,
    gleason: String,
    times: StageTimes,
    /// Heatmaps and tile tables, written after the grade is done (not in `total`).
    after_done_ms: f64,
}

pub fn run(args: &SlideArgs) -> anyhow::Result<()> {
    let (slide, truth) = match &args.slide {
        Some(path) => (path.clone(), None),
        None => benchmark_slide(args.seed)?,
    };
    let config = args.engine.init()?;
    let models = load_models(&args.models_dir, &args.models)?;
    let options = GradeOptions {
        batch_size: args.batch_size,
        read_threads: args.read_threads,
        ..GradeOptions::default()
    };
    let scratch = tempfile_dir()?;
    let mut rows = Vec::new();
    for model in &models {
        let pool = EnginePool::new(model, &config)?;
        let mut runs: Vec<StageTimes> = Vec::new();
        let mut after_done = Vec::new();
        let mut last = None;
        for _ in 0..args.repeats.max(1) {
            // As a job server grades: the grade is done once result.json and the overlay
            // are written; the maps and tables follow.
            let (rep, rest) = Grader::new(&pool, options.clone()).grade_deferring_outputs(
                &slide,
                &scratch.join(&model.manifest.name),
                &mut |_, _| {},
            )?;
            after_done.push(rest.write()?);
            runs.push(rep.timings_ms.clone());
            last = Some(rep);
        }
        let rep = last.context("no grading ran")?;
        let m = &model.manifest;
        let stat = |f: fn(&StageTimes) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let row = Row {
            name: m.name.clone(),
            role: m.role,
            mpp: m.input.mpp,
            tile_px: m.input.size_px,
            tiles: rep.tiles.inferred,
            tissue_mm2: rep.tissue_area_mm2,
            gleason: rep.grade.as_ref().map_or("no tissue".into(), |g| {
                format!("{} (ISUP {})", g.gleason, g.isup_grade_group)
            }),
            times: StageTimes {
                open_ms: stat(|t| t.open_ms),
                tissue_ms: stat(|t| t.tissue_ms),
                read_ms: stat(|t| t.read_ms),
                infer_ms: stat(|t| t.infer_ms),
                tiles_wall_ms: stat(|t| t.tiles_wall_ms),
                stitch_ms: stat(|t| t.stitch_ms),
                write_ms: stat(|t| t.write_ms),
                total_ms: stat(|t| t.total_ms),
            },
            after_done_ms: median(&after_done),
        };
        eprintln!(
            "{}: {} tiles, median {:.0} ms",
            row.name, row.tiles, row.times.total_ms
        );
        rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    print!("{}", table(&slide, truth.as_ref(), args, &rows));
    Ok(())
}

/// Writes (once) and returns the synthetic benchmark slide and its ground truth.
pub(crate) fn benchmark_slide(seed: u64) -> anyhow::Result<(PathBuf, Option<SlideTruth>)> {
    let dir = PathBuf::from("target/bench");
    let path = dir.join(format!("benchmark-seed{seed}.tiff"));
    let truth_path = dir.join(format!("benchmark-seed{seed}_truth.json"));
    if !path.is_file() || !truth_path.is_file() {
        std::fs::create_dir_all(&dir)?;
        eprintln!("writing the benchmark slide {} ...", path.display());
        write_slide(&path, &SlideSpec::benchmark(seed))?;
    }
    let truth: SlideTruth = serde_json::from_str(&std::fs::read_to_string(&truth_path)?)
        .with_context(|| format!("cannot parse {}", truth_path.display()))?;
    Ok((path, Some(truth)))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("slidegrade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn table(
    slide: &std::path::Path,
    truth: Option<&SlideTruth>,
    args: &SlideArgs,
    rows: &[Row],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Time per slide by stage\n\n{}", header());
    let _ = write!(s, "- Slide: `{}`", slide.display());
    if let Some(t) = truth {
        let _ = write!(
            s,
            " ({} × {} px at {} µm/px, {:.1} mm² of tissue, true grade Gleason {})",
            t.width, t.height, t.mpp, t.tissue_area_mm2, t.grade.gleason
        );
    }
    let _ = writeln!(
        s,
        "\n- Medians of {} gradings per model, batch {}, read threads {}, CPU execution provider; read and infer overlap (reader threads), so `tiles` is their wall time. `write` is result.json and the overlay, on the critical path; `total` is the time to a done grade; the heatmaps and tile tables are written after it (last column).\n",
        args.repeats.max(1),
        args.batch_size.map_or_else(
            || "by tile size (16 tiles of 128 px, 256 of 16 px)".to_string(),
            |b| b.to_string()
        ),
        args.read_threads
            .unwrap_or_else(crate::grade::pipeline::default_read_threads)
    );
    let _ = writeln!(
        s,
        "| model | µm/px | tile px | tiles | tissue mm² | grade | open | tissue | read | infer | tiles (wall) | stitch | write | total ms | speed-up vs Teacher | slowest stage | maps & tables, after done |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let teacher_ms = rows
        .iter()
        .find(|r| r.role == Role::Teacher)
        .map(|r| r.times.total_ms);
    for r in rows {
        let t = &r.times;
        let speedup = teacher_ms.map_or("–".into(), |tm| format!("{:.1}×", tm / t.total_ms));
        let stages = [
            ("open", t.open_ms),
            ("tissue", t.tissue_ms),
            ("read", t.read_ms),
            ("infer", t.infer_ms),
            ("stitch", t.stitch_ms),
            ("write", t.write_ms),
        ];
        let slowest = stages
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or("", |s| s.0);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0} |",
            r.name,
            r.mpp,
            r.tile_px,
            r.tiles,
            r.tissue_mm2,
            r.gleason,
            t.open_ms,
            t.tissue_ms,
            t.read_ms,
            t.infer_ms,
            t.tiles_wall_ms,
            t.stitch_ms,
            t.write_ms,
            t.total_ms,
            speedup,
            slowest,
            r.after_done_ms
        );
    }
    s
}
