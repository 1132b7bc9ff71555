//! The whole recipe of the paper in one call: data → Teacher (CE) at the highest
//! magnification → Students at each lower magnification for each ablation row (CE, +KD,
//! +FM, +AT+, the paper's recipe, all four) and replicate → export + ONNX Runtime parity →
//! the chosen models → a section of `RESULTS.md` with paired statistics.
//!
//! Replicates are seeds (one Teacher, trained once with the first seed, teaches every
//! seed's Students unless `teacher_per_seed`) or the folds of a stratified
//! cross-validation (a Teacher per fold, since the data differ). Rows are paired by
//! replicate: every row of one replicate sees the same data, views and Teacher.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::cnn::{Cnn, CnnConfig};
use super::data::{AugmentConfig, Splits, StudentRead, load_splits, to_square};
use super::loss::LossWeights;
use super::to_onnx::{ExportReport, export_checked};
use super::trainer::{LrSchedule, Teacher, TrainOutcome, TrainSpec, devices, train};
use crate::build::export::ExportInfo;
use crate::dataset::scores::mean_std;
use crate::dataset::synthetic::PatchKind;
use crate::dataset::{DataSet, Layout};
use crate::model::contract::{Role, Training};
use crate::synth::Class;

/// The paper's published Student recipe at 2.5×: CE + FM 0.1 + AT+ 10, KD off.
pub const PAPER_FM: f32 = 0.1;
pub const PAPER_AT_PLUS: f32 = 10.0;

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
    /// CE + Grad-CAM attention (the paper's AT+), weight chosen on validation.
    At,
    /// The authors' published recipe: CE + FM 0.1 + AT+ 10, KD off.
    Paper,
    /// CE + KD + FM + AT+.
    All,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::Ce,
        Method::Kd,
        Method::Fm,
        Method::At,
        Method::Paper,
        Method::All,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Method::Ce => "CE",
            Method::Kd => "CE + KD",
            Method::Fm => "CE + FM",
            Method::At => "CE + AT+",
            Method::Paper => "paper (CE + FM 0.1 + AT+ 10)",
            Method::All => "CE + KD + FM + AT+",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Method::Ce => "ce",
            Method::Kd => "kd",
            Method::Fm => "fm",
            Method::At => "at",
            Method::Paper => "paper",
            Method::All => "all",
        }
    }

    /// Whether the row uses the AT+ weight chosen on validation.
    pub fn uses_chosen_at_plus(self) -> bool {
        matches!(self, Method::At | Method::All)
    }

    /// The weights of this row: its terms from the full set `w`, with `at_plus` as the
    /// AT+ weight; the paper row uses the paper's constants.
    pub fn weights(self, w: &LossWeights, at_plus: f32) -> LossWeights {
        let mut out = LossWeights {
            ce: w.ce,
            kd: 0.0,
            fm: 0.0,
            at_plus: 0.0,
            temperature: w.temperature,
            kd_t_squared: w.kd_t_squared,
        };
        match self {
            Method::Ce => {}
            Method::Kd => out.kd = w.kd,
            Method::Fm => out.fm = w.fm,
            Method::At => out.at_plus = at_plus,
            Method::Paper => {
                out.fm = PAPER_FM;
                out.at_plus = PAPER_AT_PLUS;
            }
            Method::All => {
                out.kd = w.kd;
                out.fm = w.fm;
                out.at_plus = at_plus;
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
        kind: PatchKind,
    },
    Files {
        path: PathBuf,
        layout: Layout,
        /// µm/px of the files; when given, images are resized to the Teacher's µm/px
        /// instead of being taken to cover the Teacher's field.
        mpp: Option<f64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipeConfig {
    pub data: DataSource,
    /// Stratified k-fold cross-validation: each fold is a replicate (instead of seeds).
    pub cv_folds: Option<usize>,
    /// Train on every sample (validation = training data, no test split): the family
    /// shipped after cross-validation has measured its recipe.
    pub train_on_all: bool,
    /// Teacher input side (px); images are area-averaged to it.
    pub teacher_size: u32,
    /// µm/px of the Teacher's input (1.0 ≈ 10×).
    pub teacher_mpp: f64,
    /// Student input sides (px), same field of view.
    pub student_sizes: Vec<u32>,
    pub methods: Vec<Method>,
    pub seeds: Vec<u64>,
    /// Train a Teacher for every seed instead of one for all.
    pub teacher_per_seed: bool,
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
    pub lr_schedule: LrSchedule,
    pub max_steps_per_epoch: Option<usize>,
    /// Full-recipe weights (each method takes its subset).
    pub weights: LossWeights,
    /// AT+ weights to choose from on validation (first replicate, CE + AT+ row, per
    /// magnification); empty: use `weights.at_plus`.
    pub at_plus_grid: Vec<f32>,
    pub augment: AugmentConfig,
    pub student_read: StudentRead,
    /// Fixed views per training image for distillation (0: no Teacher cache).
    pub views_per_image: usize,
    /// A previous recipe's `out` folder: every run starts from the weights of the run of
    /// the same name there (first seed or fold found): fine-tuning.
    pub init_from: Option<PathBuf>,
    /// Appended to the shipped models' names (`teacher-10x-real`), so that families
    /// trained on other data can be served side by side.
    pub name_suffix: String,
    /// Runs, checkpoints, plots, and every exported model.
    pub out: PathBuf,
    /// Where the shipped models go: the Teacher, and per magnification the Student row
    /// with the best validation QWK.
    pub models_dir: Option<PathBuf>,
    pub results: PathBuf,
    /// The section of `results` this recipe owns (others are kept).
    pub results_section: String,
    pub resume: bool,
    /// The command line, written with the results.
    pub command: String,
}

impl RecipeConfig {
    /// One run of this recipe (`init_from` set when fine-tuning finds a run of that name).
    fn spec(
        &self,
        name: String,
        model: &CnnConfig,
        weights: LossWeights,
        epochs: usize,
        seed: u64,
        views_per_image: usize,
    ) -> TrainSpec {
        TrainSpec {
            init_from: pretrained(self.init_from.as_deref(), &name),
            name,
            model: model.clone(),
            weights,
            epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            lr_schedule: self.lr_schedule,
            seed,
            max_steps_per_epoch: self.max_steps_per_epoch,
            augment: self.augment,
            student_read: self.student_read,
            views_per_image,
        }
    }
}

/// One trained and exported model.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub name: String,
    pub method: Option<Method>,
    pub size_px: u32,
    pub magnification: f64,
    /// The replicate: the seed, or the fold number (1-based) in cross-validation.
    pub replicate: u64,
    pub seed: u64,
    /// A run of the AT+ weight search that was not chosen (not a row of the table).
    pub search_only: bool,
    pub weights: LossWeights,
    pub best_epoch: usize,
    pub val: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
    pub images_per_sec: f64,
    pub train_secs: f64,
    pub mflops: f64,
    pub model: CnnConfig,
    pub run_dir: PathBuf,
    pub teacher_cache: Option<(usize, usize)>,
    pub export: ExportReport,
}

pub(crate) fn fmt_mag(m: f64) -> String {
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
            kind,
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
            kind: *kind,
        }),
        DataSource::Files { path, layout, .. } => DataSet::load(path, *layout),
    }
}

/// What `model.json` says of a model of this recipe.
struct Provenance<'a> {
    name: &'a str,
    role: Role,
    data: &'a DataSet,
    mpp: f64,
    record: &'a RunRecord,
    recipe: Option<String>,
    selection: Option<String>,
}

fn info(p: &Provenance) -> ExportInfo {
    let notice = if p.data.synthetic {
        "Trained on synthetic data only; NOT FOR CLINICAL USE.".to_string()
    } else {
        format!(
            "Trained on {} real patches ({}); research use only, NOT FOR CLINICAL USE.",
            p.data.samples.len(),
            p.data.description
        )
    };
    ExportInfo {
        name: p.name.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        role: p.role,
        description: format!(
            "{} at {}× ({} µm/px), trained by slidegrade on {}{}. {notice}",
            if p.role == Role::Teacher {
                "Teacher"
            } else {
                "Student"
            },
            fmt_mag(10.0 / p.mpp),
            p.mpp,
            p.data.description,
            p.recipe
                .as_ref()
                .map_or(String::new(), |r| format!(" with {r}")),
        ),
        classes: Class::NAMES.iter().map(|s| s.to_string()).collect(),
        mpp: p.mpp,
        magnification: 10.0 / p.mpp,
        mean: ExportInfo::IMAGENET_MEAN,
        std: ExportInfo::IMAGENET_STD,
        training: Training {
            data: p.data.description.clone(),
            synthetic_data: p.data.synthetic,
            seed: p.record.seed,
            loss_weights: p.record.weights.to_map(),
            validation_metrics: p.record.val.clone(),
            test_metrics: p.record.test.clone(),
            notice,
            recipe: p.recipe.clone(),
            selection: p.selection.clone(),
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

/// The name of a run: `teacher-10x-seed1`, `student-2p5x-at3-fold2`, …
fn run_name(role: &str, mag: f64, tag: Option<&str>, replicate: &Replicate) -> String {
    let tag = tag.map_or(String::new(), |t| format!("-{t}"));
    format!("{role}-{}x{tag}-{}", slug_mag(mag), replicate.label())
}

#[derive(Debug, Clone, Copy)]
struct Replicate {
    seed: u64,
    fold: Option<usize>,
}

impl Replicate {
    fn label(&self) -> String {
        match self.fold {
            Some(f) => format!("fold{}", f + 1),
            None => format!("seed{}", self.seed),
        }
    }

    fn id(&self) -> u64 {
        self.fold.map_or(self.seed, |f| f as u64 + 1)
    }
}

/// The weights a run of `cfg.init_from` with the same name (any replicate) left, if any.
fn pretrained(init_from: Option<&Path>, name: &str) -> Option<PathBuf> {
    let dir = init_from?.join("runs");
    let stem = name.rsplit_once('-').map_or(name, |(s, _)| s);
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once('-'))
                .is_some_and(|(s, _)| s == stem)
        })
        .map(|p| p.join("best-model.bpk"))
        .filter(|p| p.exists())
        .collect();
    candidates.sort();
    candidates.into_iter().next()
}

/// Trains (or resumes) one run and exports it beside the others.
struct Trained {
    record: RunRecord,
    model: Cnn,
}

#[allow(clippy::too_many_arguments)]
fn train_and_export(
    cfg: &RecipeConfig,
    spec: &TrainSpec,
    method: Option<Method>,
    replicate: &Replicate,
    splits: &Splits,
    teacher: Option<&Teacher>,
    data: &DataSet,
    mpp: f64,
) -> Result<Trained> {
    let plain = devices().0;
    let t0 = Instant::now();
    let before = teacher.map(|t| t.cache.hits_and_misses());
    let outcome: TrainOutcome = train(
        spec,
        splits,
        teacher,
        &cfg.out.join("runs").join(&spec.name),
        cfg.resume,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let teacher_cache = match (teacher, before) {
        (Some(t), Some((h0, m0))) if spec.weights.needs_teacher() => {
            let (h, m) = t.cache.hits_and_misses();
            Some((h - h0, m - m0))
        }
        _ => None,
    };
    let size = spec.model.input_size as u32;
    let mut record = RunRecord {
        name: spec.name.clone(),
        method,
        size_px: size,
        magnification: 10.0 / mpp,
        replicate: replicate.id(),
        seed: spec.seed,
        search_only: false,
        weights: spec.weights,
        best_epoch: outcome.best_epoch,
        val: outcome.val.to_map(),
        test: outcome.test.to_map(),
        images_per_sec: outcome.images_per_sec,
        train_secs: secs,
        mflops: spec.model.flops() as f64 / 1e6,
        model: spec.model.clone(),
        run_dir: outcome.run_dir.clone(),
        teacher_cache,
        export: ExportReport::default(),
    };
    let role = if method.is_none() {
        Role::Teacher
    } else {
        Role::Student
    };
    let export_info = info(&Provenance {
        name: &spec.name,
        role,
        data,
        mpp,
        record: &record,
        recipe: method.map(|m| m.label().to_string()),
        selection: None,
    });
    record.export = export_checked(
        &outcome.model,
        &export_info,
        &cfg.out.join("exports").join(&spec.name),
        &parity_tiles(splits, size),
        &plain,
    )?;
    eprintln!(
        "{}: val QWK {:.3}, test bal.acc {:.3} QWK {:.3}; {:.0} img/s{}; parity logits {:.1e} CAM {:.1e}",
        spec.name,
        outcome.val.qwk,
        outcome.test.balanced_accuracy,
        outcome.test.qwk,
        outcome.images_per_sec,
        teacher_cache.map_or(String::new(), |(h, m)| format!(
            " (Teacher cache {h} hits, {m} misses)"
        )),
        record.export.max_abs_diff_logits,
        record.export.max_abs_diff_cam
    );
    Ok(Trained {
        record,
        model: outcome.model,
    })
}

/// Runs the recipe, ships the chosen models and writes its section of `RESULTS.md`;
/// returns every run.
/// What a recipe run leaves for its RESULTS.md section (`results::write_section`).
pub struct RecipeOutcome {
    pub data: DataSet,
    pub records: Vec<RunRecord>,
    /// The AT+ weight chosen on validation, per magnification (µm/px × 100).
    pub chosen_at_plus: BTreeMap<u32, f32>,
    pub teacher: CnnConfig,
    pub seconds: f64,
}

pub fn run(cfg: &RecipeConfig) -> Result<RecipeOutcome> {
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;
    if cfg.methods.is_empty() && !cfg.student_sizes.is_empty() {
        bail!("no methods to train");
    }
    let data = load_data(cfg)?;
    eprintln!("data: {} — {}", data.description, data.summary());
    let scale = match &cfg.data {
        DataSource::Files { mpp: Some(m), .. } => Some(m / cfg.teacher_mpp),
        _ => None,
    };
    let replicates: Vec<Replicate> = match cfg.cv_folds {
        Some(k) => (0..k)
            .map(|f| Replicate {
                seed: f as u64 + 1,
                fold: Some(f),
            })
            .collect(),
        None => cfg
            .seeds
            .iter()
            .map(|&seed| Replicate { seed, fold: None })
            .collect(),
    };
    let t_cfg = CnnConfig::vgg_like(
        cfg.teacher_size as usize,
        cfg.teacher_width,
        cfg.teacher_depth,
        cfg.teacher_pools,
    );
    let teacher_mag = 10.0 / cfg.teacher_mpp;
    let mut records: Vec<RunRecord> = Vec::new();
    let mut chosen_at_plus: BTreeMap<u32, f32> = BTreeMap::new();
    let mut shared: Option<(Splits, Teacher, RunRecord)> = None;
    for (ri, replicate) in replicates.iter().enumerate() {
        let rep_data = match (replicate.fold, cfg.cv_folds) {
            (Some(f), Some(k)) => data.cross_validation_fold(k, f)?,
            _ if cfg.train_on_all => data.all_for_training(),
            _ => data.clone(),
        };
        let fresh = shared.is_none() || replicate.fold.is_some() || cfg.teacher_per_seed;
        if fresh {
            let splits = load_splits(&rep_data, cfg.teacher_size, scale)?;
            let t_spec = cfg.spec(
                run_name("teacher", teacher_mag, None, replicate),
                &t_cfg,
                LossWeights {
                    kd: 0.0,
                    fm: 0.0,
                    at_plus: 0.0,
                    ..cfg.weights
                },
                cfg.teacher_epochs,
                replicate.seed,
                // The Teacher draws fresh views; the fixed ones are for distillation.
                0,
            );
            let trained = train_and_export(
                cfg,
                &t_spec,
                None,
                replicate,
                &splits,
                None,
                &rep_data,
                cfg.teacher_mpp,
            )?;
            shared = Some((
                splits,
                Teacher::new(trained.model, cfg.teacher_size),
                trained.record,
            ));
        }
        let Some((splits, teacher, teacher_record)) = shared.as_ref() else {
            bail!("no Teacher");
        };
        // Keys hold the seed, so entries of an earlier seed would never hit again.
        teacher.cache.clear();
        let mut teacher_record = teacher_record.clone();
        teacher_record.replicate = replicate.id();
        records.push(teacher_record);
        for &size in &cfg.student_sizes {
            let mpp = cfg.teacher_mpp * cfg.teacher_size as f64 / size as f64;
            let mag = 10.0 / mpp;
            let s_cfg = CnnConfig::vgg_like(
                size as usize,
                cfg.student_width,
                cfg.student_depth,
                pools_for(cfg, size),
            );
            let spec_for = |name: String, weights: LossWeights| -> TrainSpec {
                cfg.spec(
                    name,
                    &s_cfg,
                    weights,
                    cfg.student_epochs,
                    replicate.seed,
                    cfg.views_per_image,
                )
            };
            let needs_at = cfg.methods.iter().any(|m| m.uses_chosen_at_plus());
            let mut searched_at: Option<RunRecord> = None;
            if ri == 0 && needs_at && !cfg.at_plus_grid.is_empty() {
                // Choose the AT+ weight on validation, CE + AT+ row, first replicate.
                let mut search = Vec::new();
                for &w in &cfg.at_plus_grid {
                    let tag = format!("at{}", fmt_weight(w));
                    let spec = spec_for(
                        run_name("student", mag, Some(&tag), replicate),
                        Method::At.weights(&cfg.weights, w),
                    );
                    let t = train_and_export(
                        cfg,
                        &spec,
                        Some(Method::At),
                        replicate,
                        splits,
                        Some(teacher),
                        &rep_data,
                        mpp,
                    )?;
                    search.push(t.record);
                }
                let best = search
                    .iter()
                    .enumerate()
                    .max_by(|a, b| val_qwk(a.1).total_cmp(&val_qwk(b.1)))
                    .map_or(0, |(i, _)| i);
                chosen_at_plus.insert(size, search[best].weights.at_plus);
                for (i, mut r) in search.into_iter().enumerate() {
                    r.search_only = i != best;
                    if i == best {
                        searched_at = Some(r.clone());
                    }
                    records.push(r);
                }
            }
            let at_weight = chosen_at_plus
                .get(&size)
                .copied()
                .unwrap_or(cfg.weights.at_plus);
            for &method in &cfg.methods {
                if method == Method::At && searched_at.is_some() {
                    continue; // the chosen run of the search is this replicate's row
                }
                let spec = spec_for(
                    run_name("student", mag, Some(method.slug()), replicate),
                    method.weights(&cfg.weights, at_weight),
                );
                let t = train_and_export(
                    cfg,
                    &spec,
                    Some(method),
                    replicate,
                    splits,
                    Some(teacher),
                    &rep_data,
                    mpp,
                )?;
                records.push(t.record);
            }
        }
        // Write what is done so far, so an interrupted study still leaves its figures.
        std::fs::write(
            cfg.out.join("runs.json"),
            serde_json::to_string_pretty(&records)?,
        )?;
    }
    if let Some(dir) = &cfg.models_dir {
        ship(cfg, dir, &data, &records, &chosen_at_plus)?;
    }
    Ok(RecipeOutcome {
        data,
        records,
        chosen_at_plus,
        teacher: t_cfg,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn fmt_weight(w: f32) -> String {
    let s = format!("{w}");
    s.replace('.', "p")
}

pub(crate) fn val_qwk(r: &RunRecord) -> f64 {
    r.val.get("qwk").copied().unwrap_or(f64::NEG_INFINITY)
}

/// Mean validation QWK of each row at one size (table rows only).
fn rows_by_validation(records: &[RunRecord], size: u32) -> Vec<(Method, f64, usize)> {
    let mut rows: BTreeMap<Method, Vec<f64>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.size_px == size && !r.search_only)
    {
        if let Some(m) = r.method {
            rows.entry(m).or_default().push(val_qwk(r));
        }
    }
    rows.into_iter()
        .map(|(m, v)| (m, mean_std(&v).0, v.len()))
        .collect()
}

/// Exports the shipped models: the Teacher with the best validation QWK, and for each
/// Student size the row with the best mean validation QWK (never the test split), as
/// its replicate with the best validation QWK. Each `model.json` says why.
fn ship(
    cfg: &RecipeConfig,
    dir: &Path,
    data: &DataSet,
    records: &[RunRecord],
    chosen_at_plus: &BTreeMap<u32, f32>,
) -> Result<()> {
    let plain = devices().0;
    let table_rows: Vec<&RunRecord> = records.iter().filter(|r| !r.search_only).collect();
    let mut picks: Vec<(&RunRecord, Option<String>)> = Vec::new();
    if let Some(t) = table_rows
        .iter()
        .filter(|r| r.method.is_none())
        .max_by(|a, b| val_qwk(a).total_cmp(&val_qwk(b)))
    {
        picks.push((t, None));
    }
    for &size in &cfg.student_sizes {
        let rows = rows_by_validation(records, size);
        let Some(&(method, mean_qwk, n)) = rows.iter().max_by(|a, b| a.1.total_cmp(&b.1)) else {
            continue;
        };
        let Some(best) = table_rows
            .iter()
            .filter(|r| r.size_px == size && r.method == Some(method))
            .max_by(|a, b| val_qwk(a).total_cmp(&val_qwk(b)))
        else {
            continue;
        };
        let others = rows
            .iter()
            .filter(|r| r.0 != method)
            .map(|(m, q, _)| format!("{} {:.3}", m.label(), q))
            .collect::<Vec<_>>()
            .join(", ");
        let at = chosen_at_plus.get(&size).map_or(String::new(), |w| {
            format!(
                " AT+ weight {w} chosen on validation from {:?}.",
                cfg.at_plus_grid
            )
        });
        picks.push((
            best,
            Some(format!(
                "Best mean validation QWK at this magnification: {} {:.3} over {n} replicate(s) (others: {others}); shipped the replicate with the best validation QWK ({:.3}). The test split played no part.{at}",
                method.label(),
                mean_qwk,
                val_qwk(best)
            )),
        ));
    }
    for (record, selection) in picks {
        let selection = if cfg.train_on_all {
            Some(format!(
                "Trained on all {} samples, after cross-validation measured the recipe (RESULTS.md); its 'validation' figures are on its own training data. {}",
                data.samples.len(),
                selection.unwrap_or_default()
            ))
        } else {
            selection
        };
        let mpp = 10.0 / record.magnification;
        let role_name = if record.method.is_none() {
            "teacher"
        } else {
            "student"
        };
        let name = format!(
            "{role_name}-{}x{}",
            slug_mag(record.magnification),
            cfg.name_suffix
        );
        // As the trainer loads its best epoch: on the training device, then in inference
        // mode.
        let model = record
            .model
            .init(&devices().1)
            .try_load_file(record.run_dir.join("best-model.bpk"))
            .map_err(|e| anyhow::anyhow!("cannot load {}: {e:?}", record.run_dir.display()))?
            .valid();
        let export_info = info(&Provenance {
            name: &name,
            role: if record.method.is_none() {
                Role::Teacher
            } else {
                Role::Student
            },
            data,
            mpp,
            record,
            recipe: Some(
                record
                    .method
                    .map_or("CE (Teacher)", Method::label)
                    .to_string(),
            ),
            selection: selection.clone(),
        });
        export_checked(
            &model,
            &export_info,
            &dir.join(&name),
            &parity_images(record.size_px),
            &plain,
        )?;
        eprintln!("shipped {} as {}", record.name, dir.join(&name).display());
    }
    Ok(())
}

/// Tiles for the parity check of a shipped model: a deterministic synthetic patch of each
/// class (the check compares two implementations, so any tissue-like input serves).
fn parity_images(size: u32) -> Vec<image::RgbImage> {
    Class::ALL
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            crate::synth::render_patch(
                c,
                (500.0 * i as f64, 700.0),
                size,
                128.0 / f64::from(size),
                17,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_tuning_starts_from_the_run_of_the_same_row() {
        let dir = tempfile::tempdir().unwrap();
        for run in [
            "teacher-10x-seed1",
            "student-2p5x-at3-seed1",
            "student-2p5x-at3-seed2",
            "student-2p5x-at30-seed1",
        ] {
            let d = dir.path().join("runs").join(run);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("best-model.bpk"), b"weights").unwrap();
        }
        let root = Some(dir.path());
        let runs = dir.path().join("runs");
        assert_eq!(
            pretrained(root, "teacher-10x-fold3"),
            Some(runs.join("teacher-10x-seed1/best-model.bpk"))
        );
        // `at3` is not `at30`; the first seed found is used.
        assert_eq!(
            pretrained(root, "student-2p5x-at3-fold1"),
            Some(runs.join("student-2p5x-at3-seed1/best-model.bpk"))
        );
        assert_eq!(pretrained(root, "student-1p25x-ce-fold1"), None);
        assert_eq!(pretrained(None, "teacher-10x-fold1"), None);
    }

    #[test]
    fn each_row_takes_its_own_terms() {
        let w = LossWeights {
            ce: 1.0,
            kd: 1.0,
            fm: 0.5,
            at_plus: 10.0,
            temperature: 1.0,
            kd_t_squared: false,
        };
        let at = Method::At.weights(&w, 3.0);
        assert_eq!((at.kd, at.fm, at.at_plus), (0.0, 0.0, 3.0));
        let paper = Method::Paper.weights(&w, 3.0);
        assert_eq!(
            (paper.kd, paper.fm, paper.at_plus),
            (0.0, PAPER_FM, PAPER_AT_PLUS),
            "the paper row keeps the paper's weights"
        );
        let all = Method::All.weights(&w, 3.0);
        assert_eq!((all.kd, all.fm, all.at_plus), (1.0, 0.5, 3.0));
        assert!(!Method::Ce.weights(&w, 3.0).needs_teacher());
    }
}
