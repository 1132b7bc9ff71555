//! The whole recipe of the paper in one call: data → Teacher (CE) at the highest
//! magnification → Students at each lower magnification for each ablation (CE, +KD, +FM,
//! +AT+, all) and seed → export + ONNX Runtime parity → `RESULTS.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::data::{Splits, load_splits, to_square};
use super::export::{ExportReport, export_checked};
use super::loss::LossWeights;
use super::model::CnnConfig;
use super::trainer::{Teacher, TrainOutcome, TrainSpec, devices, train};
use crate::dataset::metrics::mean_std;
use crate::dataset::{DataSet, Layout};
use crate::export::ExportInfo;
use crate::model::{Role, Training};
use crate::synth::Class;

/// One ablation row of the paper's table.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
pub enum Method {
    /// Cross-entropy only (no distillation).
    Ce,
    /// CE + soft labels.
    Kd,
    /// CE + feature maps.
    Fm,
    /// CE + Grad-CAM attention (the paper's AT+).
    At,
    /// CE + KD + FM + AT+.
    All,
}

impl Method {
    pub const ALL: [Method; 5] = [Method::Ce, Method::Kd, Method::Fm, Method::At, Method::All];

    pub fn label(self) -> &'static str {
        match self {
            Method::Ce => "CE",
            Method::Kd => "CE + KD",
            Method::Fm => "CE + FM",
            Method::At => "CE + AT+",
            Method::All => "CE + KD + FM + AT+",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Method::Ce => "ce",
            Method::Kd => "kd",
            Method::Fm => "fm",
            Method::At => "at",
            Method::All => "all",
        }
    }

    /// The weights of this row, taken from the full set `w`.
    pub fn weights(self, w: &LossWeights) -> LossWeights {
        let mut out = LossWeights {
            ce: w.ce,
            kd: 0.0,
            fm: 0.0,
            at_plus: 0.0,
            temperature: w.temperature,
        };
        match self {
            Method::Ce => {}
            Method::Kd => out.kd = w.kd,
            Method::Fm => out.fm = w.fm,
            Method::At => out.at_plus = w.at_plus,
            Method::All => {
                out.kd = w.kd;
                out.fm = w.fm;
                out.at_plus = w.at_plus;
            }
        }
        out
    }
}

/// How the Student's CAM grid is brought to the Teacher's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum GridMatch {
    /// Students pool fewer times, so their grid equals the Teacher's.
    Stages,
    /// Students pool as often as the Teacher; the Teacher's maps are area-averaged down.
    Resize,
}

/// Where the data comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DataSource {
    /// Render (or reuse) the synthetic set in `dir`.
    Synthetic {
        dir: PathBuf,
        train_per_class: usize,
        val_per_class: usize,
        test_per_class: usize,
        seed: u64,
    },
    Files {
        path: PathBuf,
        layout: Layout,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipeConfig {
    pub data: DataSource,
    /// Teacher input side (px); images are area-averaged to it.
    pub teacher_size: u32,
    /// µm/px of the Teacher's input (1.0 ≈ 10×).
    pub teacher_mpp: f64,
    /// Student input sides (px), same field of view.
    pub student_sizes: Vec<u32>,
    pub methods: Vec<Method>,
    pub seeds: Vec<u64>,
    pub teacher_width: usize,
    pub teacher_depth: usize,
    pub teacher_pools: usize,
    pub student_width: usize,
    pub student_depth: usize,
    pub grid_match: GridMatch,
    pub teacher_epochs: usize,
    pub student_epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub max_steps_per_epoch: Option<usize>,
    /// Full-recipe weights (each method takes its subset).
    pub weights: LossWeights,
    /// Runs, checkpoints, plots, and every exported model.
    pub out: PathBuf,
    /// Where the shipped models go (Teacher + full-recipe Students of the first seed).
    pub models_dir: Option<PathBuf>,
    pub results: PathBuf,
    pub resume: bool,
    /// The command line, written at the end of `RESULTS.md`.
    pub command: String,
}

/// One trained and exported model.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub name: String,
    pub method: Option<Method>,
    pub size_px: u32,
    pub magnification: f64,
    pub seed: u64,
    pub best_epoch: usize,
    pub val: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
    pub images_per_sec: f64,
    pub train_secs: f64,
    pub mflops: f64,
    pub export: ExportReport,
}

fn fmt_mag(m: f64) -> String {
    let s = format!("{m:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn slug_mag(m: f64) -> String {
    fmt_mag(m).replace('.', "p")
}

fn pools_for(cfg: &RecipeConfig, size: u32) -> usize {
    let teacher_grid = (cfg.teacher_size as usize) >> cfg.teacher_pools;
    match cfg.grid_match {
        GridMatch::Resize => cfg.teacher_pools.min(cfg.student_depth),
        GridMatch::Stages => {
            let mut pools = 0;
            while ((size as usize) >> (pools + 1)) >= teacher_grid.max(1)
                && pools + 1 < cfg.student_depth
            {
                pools += 1;
            }
            pools
        }
    }
}

pub fn load_data(cfg: &RecipeConfig) -> Result<DataSet> {
    match &cfg.data {
        DataSource::Synthetic {
            dir,
            train_per_class,
            val_per_class,
            test_per_class,
            seed,
        } => crate::dataset::synthetic::generate(&crate::dataset::synthetic::SynthSetConfig {
            out: dir.clone(),
            train_per_class: *train_per_class,
            val_per_class: *val_per_class,
            test_per_class: *test_per_class,
            size_px: cfg.teacher_size,
            mpp: cfg.teacher_mpp,
            seed: *seed,
            threads: 0,
            edge_share: crate::dataset::synthetic::DEFAULT_EDGE_SHARE,
        }),
        DataSource::Files { path, layout } => DataSet::load(path, *layout),
    }
}

fn info(
    name: &str,
    role: Role,
    data: &DataSet,
    mpp: f64,
    seed: u64,
    weights: &LossWeights,
    outcome: &TrainOutcome,
) -> ExportInfo {
    let notice = if data.synthetic {
        "Trained on synthetic data only; NOT FOR CLINICAL USE.".to_string()
    } else {
        "Research use only; not for clinical use.".to_string()
    };
    ExportInfo {
        name: name.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        role,
        description: format!(
            "{} at {}× ({mpp} µm/px), trained by slidegrade on {}. {notice}",
            if role == Role::Teacher {
                "Teacher"
            } else {
                "Student"
            },
            fmt_mag(10.0 / mpp),
            data.description
        ),
        classes: Class::NAMES.iter().map(|s| s.to_string()).collect(),
        mpp,
        magnification: 10.0 / mpp,
        mean: ExportInfo::IMAGENET_MEAN,
        std: ExportInfo::IMAGENET_STD,
        training: Training {
            data: data.description.clone(),
            synthetic_data: data.synthetic,
            seed,
            loss_weights: weights.to_map(),
            validation_metrics: outcome.val.to_map(),
            test_metrics: outcome.test.to_map(),
            notice,
        },
    }
}

fn parity_tiles(splits: &Splits, size: u32) -> Vec<image::RgbImage> {
    let src = if splits.test.is_empty() {
        &splits.val
    } else {
        &splits.test
    };
    src.images
        .iter()
        .take(8)
        .map(|i| to_square(i, size))
        .collect()
}

/// Runs the recipe and writes `RESULTS.md`; returns every run.
pub fn run(cfg: &RecipeConfig) -> Result<Vec<RunRecord>> {
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;
    let data = load_data(cfg)?;
    eprintln!("data: {} — {}", data.description, data.summary());
    let splits = load_splits(&data, cfg.teacher_size)?;
    let (plain, _) = devices();
    let mut records = Vec::new();
    for &seed in &cfg.seeds {
        let t_cfg = CnnConfig::vgg_like(
            cfg.teacher_size as usize,
            cfg.teacher_width,
            cfg.teacher_depth,
            cfg.teacher_pools,
        );
        let t_spec = TrainSpec {
            name: format!("teacher-{}x-seed{seed}", slug_mag(10.0 / cfg.teacher_mpp)),
            model: t_cfg.clone(),
            weights: LossWeights {
                kd: 0.0,
                fm: 0.0,
                at_plus: 0.0,
                ..cfg.weights
            },
            epochs: cfg.teacher_epochs,
            batch_size: cfg.batch_size,
            lr: cfg.lr,
            seed,
            max_steps_per_epoch: cfg.max_steps_per_epoch,
        };
        let t0 = Instant::now();
        let outcome = train(
            &t_spec,
            &splits,
            None,
            &cfg.out.join("runs").join(&t_spec.name),
            cfg.resume,
        )?;
        let secs = t0.elapsed().as_secs_f64();
        let export_name = format!("teacher-{}x", slug_mag(10.0 / cfg.teacher_mpp));
        let t_info = info(
            &export_name,
            Role::Teacher,
            &data,
            cfg.teacher_mpp,
            seed,
            &t_spec.weights,
            &outcome,
        );
        let report = export_checked(
            &outcome.model,
            &t_info,
            &cfg.out.join("exports").join(&t_spec.name),
            &parity_tiles(&splits, cfg.teacher_size),
            &plain,
        )?;
        eprintln!(
            "{}: test bal.acc {:.3} QWK {:.3}; parity logits {:.1e} CAM {:.1e}",
            t_spec.name,
            outcome.test.balanced_accuracy,
            outcome.test.qwk,
            report.max_abs_diff_logits,
            report.max_abs_diff_cam
        );
        if let (Some(dir), true) = (&cfg.models_dir, seed == cfg.seeds[0]) {
            export_checked(
                &outcome.model,
                &t_info,
                &dir.join(&export_name),
                &parity_tiles(&splits, cfg.teacher_size),
                &plain,
            )?;
        }
        records.push(RunRecord {
            name: t_spec.name.clone(),
            method: None,
            size_px: cfg.teacher_size,
            magnification: 10.0 / cfg.teacher_mpp,
            seed,
            best_epoch: outcome.best_epoch,
            val: outcome.val.to_map(),
            test: outcome.test.to_map(),
            images_per_sec: outcome.images_per_sec,
            train_secs: secs,
            mflops: t_cfg.flops() as f64 / 1e6,
            export: report,
        });
        let teacher = Teacher {
            model: outcome.model,
            input_size: cfg.teacher_size,
        };
        for &size in &cfg.student_sizes {
            let mpp = cfg.teacher_mpp * cfg.teacher_size as f64 / size as f64;
            let mag = 10.0 / mpp;
            let s_cfg = CnnConfig::vgg_like(
                size as usize,
                cfg.student_width,
                cfg.student_depth,
                pools_for(cfg, size),
            );
            for &method in &cfg.methods {
                let weights = method.weights(&cfg.weights);
                let spec = TrainSpec {
                    name: format!("student-{}x-{}-seed{seed}", slug_mag(mag), method.slug()),
                    model: s_cfg.clone(),
                    weights,
                    epochs: cfg.student_epochs,
                    batch_size: cfg.batch_size,
                    lr: cfg.lr,
                    seed,
                    max_steps_per_epoch: cfg.max_steps_per_epoch,
                };
                let t0 = Instant::now();
                let outcome = train(
                    &spec,
                    &splits,
                    Some(&teacher),
                    &cfg.out.join("runs").join(&spec.name),
                    cfg.resume,
                )?;
                let secs = t0.elapsed().as_secs_f64();
                let export_name = format!("student-{}x", slug_mag(mag));
                let s_info = info(
                    &export_name,
                    Role::Student,
                    &data,
                    mpp,
                    seed,
                    &weights,
                    &outcome,
                );
                let tiles = parity_tiles(&splits, size);
                let report = export_checked(
                    &outcome.model,
                    &s_info,
                    &cfg.out.join("exports").join(&spec.name),
                    &tiles,
                    &plain,
                )?;
                eprintln!(
                    "{}: test bal.acc {:.3} QWK {:.3}; parity logits {:.1e} CAM {:.1e}",
                    spec.name,
                    outcome.test.balanced_accuracy,
                    outcome.test.qwk,
                    report.max_abs_diff_logits,
                    report.max_abs_diff_cam
                );
                if let (Some(dir), true, true) =
                    (&cfg.models_dir, seed == cfg.seeds[0], method == Method::All)
                {
                    export_checked(
                        &outcome.model,
                        &s_info,
                        &dir.join(&export_name),
                        &tiles,
                        &plain,
                    )?;
                }
                records.push(RunRecord {
                    name: spec.name.clone(),
                    method: Some(method),
                    size_px: size,
                    magnification: mag,
                    seed,
                    best_epoch: outcome.best_epoch,
                    val: outcome.val.to_map(),
                    test: outcome.test.to_map(),
                    images_per_sec: outcome.images_per_sec,
                    train_secs: secs,
                    mflops: s_cfg.flops() as f64 / 1e6,
                    export: report,
                });
            }
        }
    }
    std::fs::write(
        cfg.out.join("runs.json"),
        serde_json::to_string_pretty(&records)?,
    )?;
    let mut text = results_markdown(cfg, &data, &records, started.elapsed().as_secs_f64());
    text.push_str(&hand_written_part(&cfg.results));
    std::fs::write(&cfg.results, text)
        .with_context(|| format!("cannot write {}", cfg.results.display()))?;
    eprintln!(
        "wrote {} ({:.0} s)",
        cfg.results.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(records)
}

/// Starts the part of `RESULTS.md` that people write; a rerun keeps it.
pub const HAND_WRITTEN_MARKER: &str = "<!-- written by hand below; the recipe keeps it -->";

/// The hand-written tail of an existing results file, from [`HAND_WRITTEN_MARKER`] on
/// (empty when there is no file or no marker), so that rerunning the recipe refreshes the
/// tables without deleting the analysis beneath them.
pub fn hand_written_part(results: &Path) -> String {
    std::fs::read_to_string(results)
        .ok()
        .and_then(|text| {
            text.find(HAND_WRITTEN_MARKER)
                .map(|at| format!("\n{}", &text[at..]))
        })
        .unwrap_or_default()
}

fn cell(values: &[f64]) -> String {
    let (m, s) = mean_std(values);
    format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * s)
}

/// The table in the paper's shape plus cost, parity and timing notes.
pub fn results_markdown(
    cfg: &RecipeConfig,
    data: &DataSet,
    records: &[RunRecord],
    secs: f64,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Results\n");
    let _ = writeln!(
        s,
        "Test-split metrics in % (mean ± sample std over {} seed(s): {:?}). Data: {} ({}). Not for clinical use.\n",
        cfg.seeds.len(),
        cfg.seeds,
        data.description,
        data.summary()
    );
    let _ = writeln!(
        s,
        "| method | magnification | input px | balanced acc. | QWK | macro F1 | MFLOPs/tile | ONNX Runtime ms/tile | train img/s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    let mut groups: Vec<(Option<Method>, u32)> = Vec::new();
    for r in records {
        if !groups.contains(&(r.method, r.size_px)) {
            groups.push((r.method, r.size_px));
        }
    }
    groups.sort_by_key(|&(m, size)| (std::cmp::Reverse(size), m));
    for (method, size) in groups {
        let rs: Vec<&RunRecord> = records
            .iter()
            .filter(|r| r.method == method && r.size_px == size)
            .collect();
        let get = |k: &str| -> Vec<f64> {
            rs.iter()
                .map(|r| r.test.get(k).copied().unwrap_or(f64::NAN))
                .collect()
        };
        let _ = writeln!(
            s,
            "| {} | {}× | {} | {} | {} | {} | {:.1} | {:.3} | {:.0} |",
            method.map_or("Teacher (CE)", Method::label),
            fmt_mag(rs[0].magnification),
            size,
            cell(&get("balanced_accuracy")),
            cell(&get("qwk")),
            cell(&get("macro_f1")),
            rs[0].mflops,
            rs.iter().map(|r| r.export.ms_per_tile).sum::<f64>() / rs.len() as f64,
            rs.iter().map(|r| r.images_per_sec).sum::<f64>() / rs.len() as f64,
        );
    }
    let max_logits = records
        .iter()
        .map(|r| r.export.max_abs_diff_logits)
        .fold(0f32, f32::max);
    let max_cam = records
        .iter()
        .map(|r| r.export.max_abs_diff_cam)
        .fold(0f32, f32::max);
    let _ = writeln!(s, "\n## Setup\n");
    let _ = writeln!(
        s,
        "- Teacher: {} px at {} µm/px, width {}, depth {}, {} pools. Students: {:?} px, width {}, depth {}, CAM grid matched by {:?}.",
        cfg.teacher_size,
        cfg.teacher_mpp,
        cfg.teacher_width,
        cfg.teacher_depth,
        cfg.teacher_pools,
        cfg.student_sizes,
        cfg.student_width,
        cfg.student_depth,
        cfg.grid_match
    );
    let _ = writeln!(
        s,
        "- Adam lr {}, batch {}, {} teacher / {} student epochs{}, class-balanced oversampling, best validation QWK epoch kept.",
        cfg.lr,
        cfg.batch_size,
        cfg.teacher_epochs,
        cfg.student_epochs,
        cfg.max_steps_per_epoch
            .map_or(String::new(), |m| format!(" (≤ {m} steps each)"))
    );
    let _ = writeln!(
        s,
        "- Loss weights (full recipe): CE {}, KD {} (T = {}), FM {}, AT+ {}.",
        cfg.weights.ce,
        cfg.weights.kd,
        cfg.weights.temperature,
        cfg.weights.fm,
        cfg.weights.at_plus
    );
    let _ = writeln!(
        s,
        "- ONNX Runtime parity over all {} exports: max |Δ| logits {:.2e}, CAM {:.2e} (limit 1e-4). ms/tile: CPU, batch of 8, best of 5.",
        records.len(),
        max_logits,
        max_cam
    );
    let _ = writeln!(
        s,
        "- Wall time of this run: {:.1} min on this machine.",
        secs / 60.0
    );
    let _ = writeln!(s, "\n## Command\n\n```sh\n{}\n```", cfg.command);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rerun_keeps_the_hand_written_analysis() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("RESULTS.md");
        assert_eq!(hand_written_part(&path), "", "no file yet");
        std::fs::write(&path, "# Results\n| table |\n").unwrap();
        assert_eq!(hand_written_part(&path), "", "no marker");
        std::fs::write(
            &path,
            format!("# Results\n| old table |\n\n{HAND_WRITTEN_MARKER}\n## Analysis\nAT+ helps.\n"),
        )
        .unwrap();
        let kept = hand_written_part(&path);
        assert!(
            kept.starts_with(&format!("\n{HAND_WRITTEN_MARKER}")),
            "{kept}"
        );
        assert!(kept.ends_with("## Analysis\nAT+ helps.\n"), "{kept}");
        assert!(!kept.contains("old table"));
    }
}
