//! The one Grader: a model and options in, a report out.
//!
//! Grading a slide and turning the result into a report is the same work whether the CLI,
//! the synchronous endpoint, a job worker or the bench asks for it, so it is written once
//! here: [`crate::grade::pipeline`] finds tissue and scores the tiles, [`crate::output::report`] builds
//! `result.json` and, when an output folder is given, writes every file into it. The
//! stage times go to the Prometheus histograms on the way.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::grade::pipeline::{self, GradeError, GradeOptions, Progress};
use crate::model::engine::{EngineArgs, EnginePool};
use crate::model::registry::{self, Registry};
use crate::output::report::{self, GradeReport, ReportError};

#[derive(Debug, thiserror::Error)]
pub enum GraderError {
    #[error(transparent)]
    Grade(#[from] GradeError),
    #[error(transparent)]
    Report(#[from] ReportError),
}

impl GraderError {
    pub fn kind(&self) -> &'static str {
        match self {
            GraderError::Grade(e) => e.kind(),
            GraderError::Report(e) => e.kind(),
        }
    }
}

/// A loaded model and the options every slide it grades shares.
pub struct Grader<'a> {
    pool: &'a EnginePool,
    options: GradeOptions,
}

impl<'a> Grader<'a> {
    pub fn new(pool: &'a EnginePool, options: GradeOptions) -> Self {
        Grader { pool, options }
    }

    pub fn options(&self) -> &GradeOptions {
        &self.options
    }

    /// Grades the slide at `slide` and builds its report; with `out_dir`, also writes
    /// `result.json`, the heatmaps, the overlay and the tile tables there.
    pub fn grade(
        &self,
        slide: &Path,
        out_dir: Option<&Path>,
        progress: Progress,
    ) -> Result<GradeReport, GraderError> {
        let (graded, mut result) = self.grade_and_report(slide, progress)?;
        if let Some(dir) = out_dir {
            report::write_outputs(dir, &graded, &mut result)?;
            observe_write(result.timings_ms.write_ms);
        }
        Ok(result)
    }

    /// Like [`Grader::grade`] into `out_dir`, but writes only what the grade's callers need
    /// at once (`result.json` and `overlay.png`); the heatmaps and tile tables are left in
    /// the returned [`MapsAndTables`], for the caller to write once the job is done.
    pub fn grade_deferring_outputs(
        &self,
        slide: &Path,
        out_dir: &Path,
        progress: Progress,
    ) -> Result<(GradeReport, MapsAndTables), GraderError> {
        let (graded, mut result) = self.grade_and_report(slide, progress)?;
        report::write_result(out_dir, &graded, &mut result, std::time::Instant::now())?;
        observe_write(result.timings_ms.write_ms);
        let rest = MapsAndTables {
            dir: out_dir.to_path_buf(),
            classes: result.model.classes.clone(),
            graded,
        };
        Ok((result, rest))
    }

    fn grade_and_report(
        &self,
        slide: &Path,
        progress: Progress,
    ) -> Result<(pipeline::Graded, GradeReport), GraderError> {
        let graded = pipeline::grade_slide(slide, self.pool, &self.options, progress)?;
        let metrics = crate::telemetry::global();
        let t = &graded.times;
        for (stage, ms) in [
            ("open", t.open_ms),
            ("tissue", t.tissue_ms),
            ("read", t.read_ms),
            ("infer", t.infer_ms),
            ("stitch", t.stitch_ms),
        ] {
            metrics
                .stage_seconds
                .with_label_values(&[stage])
                .observe(ms / 1000.0);
        }
        let result = report::build_report(
            &graded,
            self.pool.manifest(),
            self.pool.provider().as_str(),
            self.options.min_tissue,
        );
        Ok((graded, result))
    }
}

fn observe_write(ms: f64) {
    crate::telemetry::global()
        .stage_seconds
        .with_label_values(&["write"])
        .observe(ms / 1000.0);
}

/// The outputs of a graded slide that are not needed to know its grade: per-class
/// heatmaps, AT+ maps, `tiles.csv` and `tiles.geojson`. Holds the graded slide (tile
/// outputs, maps) until [`MapsAndTables::write`].
pub struct MapsAndTables {
    dir: PathBuf,
    classes: Vec<String>,
    graded: pipeline::Graded,
}

impl MapsAndTables {
    /// Writes them (each file atomically) and returns the time it took, in ms.
    pub fn write(self) -> Result<f64, ReportError> {
        let t = std::time::Instant::now();
        report::write_maps_and_tables(&self.dir, &self.graded, &self.classes)?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        crate::telemetry::global()
            .stage_seconds
            .with_label_values(&["write_maps_and_tables"])
            .observe(ms / 1000.0);
        Ok(ms)
    }
}

/// The grading flags the `grade` and `serve` commands share.
#[derive(Debug, Clone, clap::Args)]
pub struct GradingArgs {
    /// Tiles per inference batch. Default: 16 Teacher tiles' worth of pixels (16 tiles
    /// of 128 px, 64 of 64 px, 256 of 32 or 16 px).
    #[arg(long, env = "SLIDEGRADE_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Threads that read and decode tiles. Default: half the cores; ONNX Runtime uses
    /// the rest.
    #[arg(long, env = "SLIDEGRADE_READ_THREADS")]
    pub read_threads: Option<usize>,
    /// Minimum share of tissue (0–1) for a tile to be graded.
    #[arg(long, env = "SLIDEGRADE_MIN_TISSUE", default_value_t = 0.25)]
    pub min_tissue: f64,
    /// Each tile counts as the most probable class of the mean over its neighbours
    /// within this many tiles; 0 takes each tile's own most probable class. Removes
    /// isolated single-tile calls, which the grading rule would otherwise report.
    /// Default: the model's recommendation (`grading` in its model.json), else 1.
    #[arg(long, env = "SLIDEGRADE_SMOOTHING_RADIUS")]
    pub smoothing_radius: Option<u32>,
    /// A Gleason pattern covering less than this many mm² (after smoothing) counts as
    /// benign for the grade; 0 reports any pattern however small. Default: the model's
    /// recommendation, else 0.
    #[arg(long, env = "SLIDEGRADE_MIN_PATTERN_MM2")]
    pub min_pattern_mm2: Option<f64>,
    /// Batches the slide reader may prepare ahead of inference.
    #[arg(long, env = "SLIDEGRADE_READ_AHEAD", default_value_t = 4)]
    pub read_ahead: usize,
}

impl GradingArgs {
    /// The options these flags give, or why they make no sense.
    pub fn options(&self) -> anyhow::Result<GradeOptions> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.min_tissue),
            "--min-tissue must be between 0 and 1, got {}",
            self.min_tissue
        );
        if let Some(min) = self.min_pattern_mm2 {
            anyhow::ensure!(
                min.is_finite() && min >= 0.0,
                "--min-pattern-mm2 must be a non-negative number of mm², got {min}"
            );
        }
        Ok(GradeOptions {
            batch_size: self.batch_size.map(|b| b.max(1)),
            read_threads: self.read_threads.map(|t| t.max(1)),
            read_ahead: self.read_ahead.max(1),
            min_tissue: self.min_tissue,
            smoothing_radius: self.smoothing_radius,
            min_pattern_mm2: self.min_pattern_mm2,
            ..GradeOptions::default()
        })
    }
}

/// `slidegrade grade`: one slide, graded into an output folder.
#[derive(Debug, clap::Args)]
pub struct GradeArgs {
    slide: PathBuf,
    /// Model name (a folder under --models-dir). Default: see `model::registry`: the
    /// Student with the coarsest resolution, the fastest.
    #[arg(long, env = "SLIDEGRADE_MODEL")]
    model: Option<String>,
    #[arg(long, env = "SLIDEGRADE_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,
    /// µm per pixel of level 0, for slides that do not record it (overrides metadata).
    #[arg(long)]
    mpp: Option<f64>,
    /// Output folder. Default: `<slide name>.slidegrade` in the current directory.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    grading: GradingArgs,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `slidegrade grade`: prints one summary line on success.
pub fn run_cli(args: GradeArgs) -> anyhow::Result<()> {
    let options = GradeOptions {
        mpp_override: args.mpp,
        ..args.grading.options()?
    };
    let config = args.engine.init()?;
    let model = match args.model.as_deref() {
        Some(name) => registry::load_named(&args.models_dir, name)?,
        None => Registry::scan(&args.models_dir)
            .default_model()
            .cloned()
            .with_context(|| {
                format!(
                    "no valid model in {}; pass --models-dir or --model",
                    args.models_dir.display()
                )
            })?,
    };
    let pool = EnginePool::new(&model, &config)?;
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} tiles ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("grading with {}", model.manifest.name));
    let out = args.out.unwrap_or_else(|| {
        let name = args
            .slide
            .file_name()
            .map_or("slide".into(), |n| n.to_string_lossy().into_owned());
        PathBuf::from(format!("{name}.slidegrade"))
    });
    let report =
        Grader::new(&pool, options).grade(&args.slide, Some(&out), &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
    bar.finish_and_clear();
    match &report.grade {
        Some(g) => println!(
            "{}: Gleason {} (ISUP grade group {}), tumour {:.1}%, {} tiles, {:.0} ms -> {}",
            report.slide.file_name,
            g.gleason,
            g.isup_grade_group,
            g.tumour_percent,
            report.tiles.inferred,
            report.timings_ms.total_ms,
            out.display()
        ),
        None => println!(
            "{}: no tissue found -> {}",
            report.slide.file_name,
            out.display()
        ),
    }
    Ok(())
}
