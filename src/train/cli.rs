//! CLI of the harness: `slidegrade train recipe` (the whole paper recipe, what
//! `scripts/distill-and-export.sh` runs: the Teacher, every Student row, the export and
//! the RESULTS.md section).

use std::path::PathBuf;

use anyhow::Result;

use super::data::{AugmentConfig, StudentRead};
use super::loss::LossWeights;
use super::recipe::{DataSource, GridMatch, Method, RecipeConfig};
use super::trainer::LrSchedule;
use crate::dataset::Layout;
use crate::dataset::synthetic::PatchKind;

#[derive(Debug, clap::Subcommand)]
pub enum TrainCommand {
    /// Train the Teacher and every Student ablation, export them, write RESULTS.md.
    #[command(args_override_self = true)]
    Recipe(Box<RecipeArgs>),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RecipeArgs {
    /// Small data, narrow models, 1–2 epochs: the CI smoke run (minutes).
    #[arg(long)]
    pub quick: bool,
    /// Real data instead of the synthetic set.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Layout of --data.
    #[arg(long, value_enum, default_value = "folder")]
    pub layout: Layout,
    /// µm/px of the --data images. When given, the loader resizes them to the Teacher's
    /// µm/px (and Students get theirs from that); without it, each image is taken to
    /// cover the Teacher's field. The Arvaniti TMA patches are 0.23.
    #[arg(long)]
    pub data_mpp: Option<f64>,
    /// Stratified k-fold cross-validation over all of --data: each fold is a replicate
    /// (test fold, the next fold for validation, the rest for training). Replaces --seeds.
    #[arg(long, conflicts_with = "train_on_all")]
    pub cv_folds: Option<usize>,
    /// Train on every sample of --data (the validation split is the training data, and
    /// there is no test split): for the models shipped once cross-validation has
    /// measured the recipe.
    #[arg(long)]
    pub train_on_all: bool,
    /// Seeds, comma-separated (one replicate of every Student row per seed; mean ± std
    /// and paired differences in RESULTS.md).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub seeds: Vec<u64>,
    /// Train a Teacher per seed (default: the first seed's Teacher teaches every seed).
    #[arg(long)]
    pub teacher_per_seed: bool,
    /// Methods, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ce,kd,fm,at,paper,all"
    )]
    pub methods: Vec<Method>,
    /// Synthetic set: how a cancer patch holds its pattern.
    #[arg(long, value_enum, default_value = "focal")]
    pub kind: PatchKind,
    /// Teacher input side (px).
    #[arg(long)]
    pub teacher_size: Option<u32>,
    /// µm/px of the Teacher's input (1.0 ≈ 10×). For SICAPv2 (512 px at 10×) resized to
    /// 128 px, that is 4.0.
    #[arg(long, default_value_t = 1.0)]
    pub teacher_mpp: f64,
    /// Student input sides (px), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub student_sizes: Option<Vec<u32>>,
    #[arg(long)]
    pub teacher_width: Option<usize>,
    /// Teacher conv blocks. 8 blocks with 4 pools see 134 px, the whole 128 px patch.
    #[arg(long)]
    pub teacher_depth: Option<usize>,
    /// Teacher 2×2 pools (the CAM grid is the input side / 2^pools).
    #[arg(long, default_value_t = 4)]
    pub teacher_pools: usize,
    #[arg(long)]
    pub student_width: Option<usize>,
    #[arg(long, default_value_t = 5)]
    pub student_depth: usize,
    #[arg(long, value_enum, default_value = "stages")]
    pub grid_match: GridMatch,
    #[arg(long)]
    pub teacher_epochs: Option<usize>,
    #[arg(long)]
    pub student_epochs: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    pub lr_schedule: LrSchedule,
    #[arg(long)]
    pub max_steps_per_epoch: Option<usize>,
    /// Synthetic set: training patches per class.
    #[arg(long)]
    pub train_per_class: Option<usize>,
    /// Synthetic set: validation patches per class.
    #[arg(long)]
    pub val_per_class: Option<usize>,
    /// Synthetic set: test patches per class.
    #[arg(long)]
    pub test_per_class: Option<usize>,
    /// Synthetic set seed.
    #[arg(long, default_value_t = 7)]
    pub data_seed: u64,
    #[arg(long, default_value_t = 1.0)]
    pub ce: f32,
    #[arg(long, default_value_t = 1.0)]
    pub kd: f32,
    /// KD temperature (the authors use 1).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Multiply KD by T² (Hinton et al.; the authors do not).
    #[arg(long)]
    pub kd_t_squared: bool,
    #[arg(long, default_value_t = 0.1)]
    pub fm: f32,
    /// AT+ weight when --at-plus-grid is empty.
    #[arg(long, default_value_t = 10.0)]
    pub at_plus: f32,
    /// AT+ weights to choose from on validation (CE + AT+ row, first replicate, per
    /// magnification); the choice is used by the CE + AT+ and all-terms rows.
    #[arg(long, value_delimiter = ',')]
    pub at_plus_grid: Option<Vec<f32>>,
    /// HED stain jitter σ (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub hed_sigma: f32,
    /// Scale jitter ± (0.1 = ±10%); default 0.1 for --data, 0 for the synthetic set.
    #[arg(long)]
    pub scale_jitter: Option<f32>,
    /// How Students' training inputs are made from the Teacher's view.
    #[arg(long, value_enum, default_value = "mixed")]
    pub student_read: StudentRead,
    /// Fixed augmented views per training image for distillation, with the Teacher's
    /// outputs cached per view (0: fresh views and no cache).
    #[arg(long, default_value_t = 8)]
    pub views_per_image: usize,
    /// Start every run from the run of the same name in this earlier recipe's --out
    /// (pretraining on synthetic data, then fine-tuning here).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Appended to the shipped models' names, e.g. `-real` → `teacher-10x-real`.
    #[arg(long, default_value = "")]
    pub name_suffix: String,
    /// Work folder: synthetic data, runs (checkpoints, curves.png, confusion.png), exports.
    #[arg(long, default_value = "target/distill")]
    pub out: PathBuf,
    /// Ship the Teacher and, per magnification, the Student row with the best
    /// validation QWK here.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    #[arg(long, default_value = "RESULTS.md")]
    pub results: PathBuf,
    /// The section of --results this run replaces (default: `synthetic` or `real`).
    #[arg(long)]
    pub results_section: Option<String>,
    /// Continue runs from their last checkpoint.
    #[arg(long)]
    pub resume: bool,
}

impl RecipeArgs {
    pub fn config(&self) -> RecipeConfig {
        let q = self.quick;
        let pick =
            |v: Option<usize>, quick: usize, full: usize| v.unwrap_or(if q { quick } else { full });
        let data = match &self.data {
            Some(path) => DataSource::Files {
                path: path.clone(),
                layout: self.layout,
                mpp: self.data_mpp,
            },
            None => {
                let train = pick(self.train_per_class, 16, DEFAULT_TRAIN_PER_CLASS);
                let val = pick(self.val_per_class, 8, DEFAULT_VAL_PER_CLASS);
                let test = pick(self.test_per_class, 8, DEFAULT_TEST_PER_CLASS);
                let kind = self.kind.name();
                DataSource::Synthetic {
                    dir: self.out.join(format!(
                        "synthetic-{kind}-{train}-{val}-{test}-seed{}",
                        self.data_seed
                    )),
                    train_per_class: train,
                    val_per_class: val,
                    test_per_class: test,
                    seed: self.data_seed,
                    kind: self.kind,
                }
            }
        };
        // As the user can rerun it: the binary's own name varies (target/release/…, a
        // study binary), and the script adds flags of its own before exec'ing this.
        let command = std::iter::once("slidegrade train".to_string())
            .chain(std::env::args().skip(2))
            .collect::<Vec<_>>()
            .join(" ");
        let real = self.data.is_some();
        RecipeConfig {
            data,
            cv_folds: self.cv_folds,
            train_on_all: self.train_on_all,
            teacher_size: self.teacher_size.unwrap_or(128),
            teacher_mpp: self.teacher_mpp,
            student_sizes: self
                .student_sizes
                .clone()
                .unwrap_or_else(|| vec![64, 32, 16]),
            methods: self.methods.clone(),
            seeds: self.seeds.clone(),
            teacher_per_seed: self.teacher_per_seed,
            teacher_width: pick(self.teacher_width, 4, 16),
            teacher_depth: pick(self.teacher_depth, 5, 8),
            teacher_pools: self.teacher_pools,
            student_width: pick(self.student_width, 4, 16),
            student_depth: self.student_depth,
            grid_match: self.grid_match,
            teacher_epochs: pick(self.teacher_epochs, 2, DEFAULT_TEACHER_EPOCHS),
            student_epochs: pick(self.student_epochs, 2, DEFAULT_STUDENT_EPOCHS),
            batch_size: self.batch_size,
            lr: self.lr,
            lr_schedule: self.lr_schedule,
            max_steps_per_epoch: self.max_steps_per_epoch,
            weights: LossWeights {
                ce: self.ce,
                kd: self.kd,
                fm: self.fm,
                at_plus: self.at_plus,
                temperature: self.temperature,
                kd_t_squared: self.kd_t_squared,
            },
            at_plus_grid: self.at_plus_grid.clone().unwrap_or_else(|| {
                if q {
                    vec![3.0, 10.0]
                } else {
                    vec![1.0, 3.0, 10.0, 30.0]
                }
            }),
            augment: AugmentConfig {
                hed_sigma: self.hed_sigma,
                scale_jitter: self.scale_jitter.unwrap_or(if real { 0.1 } else { 0.0 }),
            },
            student_read: self.student_read,
            views_per_image: self.views_per_image,
            init_from: self.init_from.clone(),
            name_suffix: self.name_suffix.clone(),
            out: self.out.clone(),
            models_dir: self.models_dir.clone(),
            results: self.results.clone(),
            results_section: self
                .results_section
                .clone()
                .unwrap_or_else(|| if real { "real" } else { "synthetic" }.to_string()),
            resume: self.resume,
            command,
        }
    }
}

/// The default profile's synthetic set: issue 12 asks for ≥ 1,000 test and ≥ 250
/// validation patches per class, so that one balanced accuracy has a standard error of
/// about 0.7 points; training data is what fits the ~90 min budget on 2 cores.
pub const DEFAULT_TRAIN_PER_CLASS: usize = 300;
pub const DEFAULT_VAL_PER_CLASS: usize = 250;
pub const DEFAULT_TEST_PER_CLASS: usize = 1000;
pub const DEFAULT_TEACHER_EPOCHS: usize = 30;
pub const DEFAULT_STUDENT_EPOCHS: usize = 15;

pub fn run(cmd: TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Recipe(args) => {
            let config = args.config();
            let outcome = super::recipe::run(&config)?;
            super::results::write_section(&config, &outcome)?;
            Ok(())
        }
    }
}
