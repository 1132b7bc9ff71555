//! CLI of the harness: `slidegrade recipe` (the whole paper recipe, what
//! `scripts/distill-and-export.sh` runs) and `slidegrade train` (one Teacher, or one
//! Student distilled from a Teacher checkpoint run).

use std::path::PathBuf;

use anyhow::Result;

use super::loss::LossWeights;
use super::recipe::{DataSource, GridMatch, Method, RecipeConfig};
use crate::dataset::Layout;

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
    /// Seeds, comma-separated (one run of everything per seed; mean ± std in RESULTS.md).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub seeds: Vec<u64>,
    /// Methods, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ce,kd,fm,at,all"
    )]
    pub methods: Vec<Method>,
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
    #[arg(long)]
    pub student_width: Option<usize>,
    #[arg(long, default_value_t = 5)]
    pub depth: usize,
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
    #[arg(long)]
    pub max_steps_per_epoch: Option<usize>,
    /// Synthetic set: training patches per class.
    #[arg(long)]
    pub train_per_class: Option<usize>,
    /// Synthetic set: validation and test patches per class (each).
    #[arg(long)]
    pub eval_per_class: Option<usize>,
    /// Synthetic set seed.
    #[arg(long, default_value_t = 7)]
    pub data_seed: u64,
    #[arg(long, default_value_t = 1.0)]
    pub ce: f32,
    #[arg(long, default_value_t = 1.0)]
    pub kd: f32,
    #[arg(long, default_value_t = 4.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.1)]
    pub fm: f32,
    #[arg(long, default_value_t = 10.0)]
    pub at_plus: f32,
    /// Work folder: synthetic data, runs (checkpoints, curves.png, confusion.png), exports.
    #[arg(long, default_value = "target/distill")]
    pub out: PathBuf,
    /// Also export the Teacher and the full-recipe Students of the first seed here.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    #[arg(long, default_value = "RESULTS.md")]
    pub results: PathBuf,
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
            },
            None => {
                let train = pick(self.train_per_class, 16, 200);
                let eval = pick(self.eval_per_class, 8, 50);
                DataSource::Synthetic {
                    dir: self
                        .out
                        .join(format!("synthetic-{train}-{eval}-seed{}", self.data_seed)),
                    train_per_class: train,
                    val_per_class: eval,
                    test_per_class: eval,
                    seed: self.data_seed,
                }
            }
        };
        let command = std::iter::once("scripts/distill-and-export.sh".to_string())
            .chain(std::env::args().skip(2))
            .collect::<Vec<_>>()
            .join(" ");
        RecipeConfig {
            data,
            teacher_size: self.teacher_size.unwrap_or(128),
            teacher_mpp: self.teacher_mpp,
            student_sizes: self
                .student_sizes
                .clone()
                .unwrap_or_else(|| vec![64, 32, 16]),
            methods: self.methods.clone(),
            seeds: self.seeds.clone(),
            teacher_width: pick(self.teacher_width, 4, 16),
            teacher_depth: self.depth,
            teacher_pools: 4,
            student_width: pick(self.student_width, 4, 16),
            student_depth: self.depth,
            grid_match: self.grid_match,
            teacher_epochs: pick(self.teacher_epochs, 2, 12),
            student_epochs: pick(self.student_epochs, 2, 12),
            batch_size: self.batch_size,
            lr: self.lr,
            max_steps_per_epoch: self.max_steps_per_epoch,
            weights: LossWeights {
                ce: self.ce,
                kd: self.kd,
                fm: self.fm,
                at_plus: self.at_plus,
                temperature: self.temperature,
            },
            out: self.out.clone(),
            models_dir: self.models_dir.clone(),
            results: self.results.clone(),
            resume: self.resume,
            command,
        }
    }
}

pub fn run(cmd: TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Recipe(args) => {
            super::recipe::run(&args.config())?;
            Ok(())
        }
    }
}
