//! Turns a trained (or random test) [`Network`] into a model folder that meets the
//! contract: `model.onnx` from [`crate::onnx_writer`] and `model.json` with its sha256,
//! then loads the folder back through [`crate::model::load`] so that an export that the
//! server would refuse fails here instead.

use std::path::Path;

use crate::model::{
    self, ChannelOrder, FORMAT_VERSION, InputSpec, Manifest, ModelError, OutputSpec, Role,
    Training, VerifiedModel,
};
use crate::network::Network;
use crate::onnx_writer::{self, GraphNames, WriteError};

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
        },
        onnx_sha256,
        training: info.training.clone(),
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
    let bytes = onnx_writer::write(
        net,
        &GraphNames::default(),
        &info.name,
        &dir.join(model::ONNX_FILE),
    )?;
    let manifest = manifest_for(net, info, model::sha256_hex(&bytes));
    model::write_manifest(dir, &manifest).map_err(|source| ExportError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(model::load(dir)?)
}
