//! `slidegrade synth`: the data commands that need no burn.

use std::path::PathBuf;

use anyhow::Result;

use super::synthetic::{DEFAULT_EDGE_SHARE, PatchKind, SynthSetConfig, generate};

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Render the built-in synthetic H&E patch set (NC, G3, G4, G5) as a CSV data set
    /// (`labels.csv` + PNGs), deterministic given the seed. Not for clinical use.
    Synth(SynthArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct SynthArgs {
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Training patches per class.
    #[arg(long, default_value_t = 200)]
    pub train_per_class: usize,
    /// Validation patches per class.
    #[arg(long, default_value_t = 50)]
    pub val_per_class: usize,
    /// Test patches per class.
    #[arg(long, default_value_t = 50)]
    pub test_per_class: usize,
    /// Patch side in pixels at --mpp (the Teacher's input; Students get area-averaged copies).
    #[arg(long, default_value_t = 128)]
    pub size_px: u32,
    /// µm per pixel of the rendered patches (1.0 ≈ 10×).
    #[arg(long, default_value_t = 1.0)]
    pub mpp: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Share of each class's patches drawn at the rim of a core, part glass (0–1).
    #[arg(long, default_value_t = DEFAULT_EDGE_SHARE)]
    pub edge_share: f64,
    /// How a cancer patch holds its pattern: a focus among benign tissue (SICAPv2-like),
    /// or the whole patch.
    #[arg(long, value_enum, default_value = "focal")]
    pub kind: PatchKind,
}

impl SynthArgs {
    pub fn config(&self) -> SynthSetConfig {
        SynthSetConfig {
            out: self.out.clone(),
            train_per_class: self.train_per_class,
            val_per_class: self.val_per_class,
            test_per_class: self.test_per_class,
            size_px: self.size_px,
            mpp: self.mpp,
            seed: self.seed,
            threads: self.threads,
            edge_share: self.edge_share,
            kind: self.kind,
        }
    }
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Synth(args) => {
            let set = generate(&args.config())?;
            println!("{}: {}", args.out.display(), set.summary());
            Ok(())
        }
    }
}
