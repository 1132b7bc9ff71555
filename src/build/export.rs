//! Turns a trained (or random test) [`Network`] into a model folder that meets the
//! contract: `model.onnx` from [`crate::build::onnx`] and `model.json` with its sha256,
//! then loads the folder back through [`crate::model::contract::load`] so that an export that the
//! server would refuse fails here instead.

use std::path::{Path, PathBuf};

use crate::build::network::Network;
use crate::build::onnx::{self, GraphNames, WriteError};
use crate::model::contract::{
    self, ChannelOrder, FORMAT_VERSION, InputSpec, Manifest, ModelError, OutputSpec, Role,
    Training, VerifiedModel,
};

/// Everything in the manifest that the network itself does not know.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub name: String,
    pub version: String,
    pub role: Role,
    pub description: String,
    pub classes: Vec<String>,
    pub mpp: f64,
    pub magnification: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub training: Training,
}

impl ExportInfo {
    /// ImageNet-style normalisation over pixels scaled to [0, 1].
    pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("class names ({names}) do not match the network's {outputs} outputs")]
    ClassCount { names: usize, outputs: usize },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot write into {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("exported model does not load: {0}")]
    Verify(#[from] ModelError),
}

impl ExportError {
    pub fn kind(&self) -> &'static str {
        match self {
            ExportError::ClassCount { .. } => "class_count_mismatch",
            ExportError::Write(e) => e.kind(),
            ExportError::Io { .. } => "export_io",
            ExportError::Verify(e) => e.kind(),
        }
    }
}

/// The input normalisation the manifest records, so the engine can apply it.
pub fn manifest_for(net: &Network, info: &ExportInfo, onnx_sha256: String) -> Manifest {
    let names = GraphNames::default();
    let grid = net.cam_grid() as u32;
    Manifest {
        format_version: FORMAT_VERSION,
        name: info.name.clone(),
        version: info.version.clone(),
        role: info.role,
        description: info.description.clone(),
        classes: info.classes.clone(),
        input: InputSpec {
            name: names.input,
            size_px: net.input_size as u32,
            mpp: info.mpp,
            magnification: info.magnification,
            channel_order: ChannelOrder::Rgb,
            scale: 1.0 / 255.0,
            mean: info.mean,
            std: info.std,
        },
        outputs: OutputSpec {
            logits: names.logits,
            cam: names.cam,
            cam_grid: [grid, grid],
            attention: Some(names.attention),
        },
        onnx_sha256,
        training: info.training.clone(),
        grading: None,
    }
}

/// Writes `dir/model.onnx` and `dir/model.json` and verifies them.
pub fn export(net: &Network, info: &ExportInfo, dir: &Path) -> Result<VerifiedModel, ExportError> {
    if info.classes.len() != net.classes() {
        return Err(ExportError::ClassCount {
            names: info.classes.len(),
            outputs: net.classes(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let bytes = onnx::write(
        net,
        &GraphNames::default(),
        &info.name,
        &dir.join(contract::ONNX_FILE),
    )?;
    let manifest = manifest_for(net, info, contract::sha256_hex(&bytes));
    contract::write_manifest(dir, &manifest).map_err(|source| ExportError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(contract::load(dir)?)
}

/// Export a small CNN with random weights as a model folder. For trying the server
/// and the grader before trained models exist; its predictions mean nothing.
#[derive(Debug, clap::Args)]
pub struct RandomModelArgs {
    /// Output folder, e.g. models/random-1.25x.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "random")]
    pub name: String,
    /// Tile side in pixels.
    #[arg(long, default_value_t = 64)]
    pub input_size: usize,
    /// µm per pixel the model claims to read (8.0 is about 1.25×).
    #[arg(long, default_value_t = 8.0)]
    pub mpp: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `slidegrade export-random`.
pub fn run_random_cli(args: RandomModelArgs) -> anyhow::Result<()> {
    let net = Network::random(
        &crate::build::network::Architecture {
            input_size: args.input_size,
            channels: vec![16, 32, 64],
            pool_after: vec![true, true, false],
            kernel: 3,
            classes: 4,
            batch_norm: true,
        },
        args.seed,
    );
    let info = ExportInfo {
        name: args.name,
        version: "0.0.0-random".into(),
        role: Role::Student,
        description:
            "Random weights for exercising the software. Not a classifier; not for clinical use."
                .into(),
        classes: ["NC", "G3", "G4", "G5"].map(String::from).to_vec(),
        mpp: args.mpp,
        magnification: 10.0 / args.mpp,
        mean: ExportInfo::IMAGENET_MEAN,
        std: ExportInfo::IMAGENET_STD,
        training: Training {
            data: "none: random weights".into(),
            synthetic_data: true,
            seed: args.seed,
            notice: "Not trained. Not for clinical use.".into(),
            ..Training::default()
        },
    };
    let model = export(&net, &info, &args.out)?;
    println!(
        "wrote {} (sha256 {})",
        model.dir.display(),
        model.manifest.onnx_sha256
    );
    Ok(())
}

/// Adds the AT+ map output to a model folder exported before it existed: rewrites
/// `model.onnx` (atomically) and `model.json` (the output's name and the new sha256), then
/// loads the folder back. Returns false when the model already has it.
pub fn add_attention_output(dir: &Path) -> Result<bool, ExportError> {
    let model = contract::load(dir)?;
    if model.manifest.outputs.attention.is_some() {
        return Ok(false);
    }
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ExportError::Io { path, source }
    };
    let bytes = std::fs::read(&model.onnx_path).map_err(io(&model.onnx_path))?;
    let name = GraphNames::default().attention;
    let Some(upgraded) = onnx::with_attention(&bytes, &name)? else {
        return Ok(false);
    };
    let tmp = model.onnx_path.with_extension("onnx.part");
    std::fs::write(&tmp, &upgraded).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &model.onnx_path).map_err(io(&model.onnx_path))?;
    let mut manifest = model.manifest;
    manifest.outputs.attention = Some(name);
    manifest.onnx_sha256 = contract::sha256_hex(&upgraded);
    contract::write_manifest(dir, &manifest).map_err(io(dir))?;
    contract::load(dir)?;
    Ok(true)
}

/// Add the AT+ map output to model folders exported before it existed.
#[derive(Debug, clap::Args)]
pub struct UpgradeModelArgs {
    /// Model folders (each with model.json and model.onnx).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
}

/// Runs `slidegrade upgrade-model`.
pub fn run_upgrade_cli(args: &UpgradeModelArgs) -> anyhow::Result<()> {
    for dir in &args.dirs {
        let changed =
            add_attention_output(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let what = if changed {
            "added the attention output"
        } else {
            "already has the attention output"
        };
        println!("{}: {what}", dir.display());
    }
    Ok(())
}
