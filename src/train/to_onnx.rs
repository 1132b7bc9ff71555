//! burn weights → [`Network`](crate::build::network::Network) → `models/<name>/{model.onnx,
//! model.json}` with [`crate::build::export::export`], then a parity check in ONNX Runtime: the
//! exported graph's logits and CAM must match the burn forward pass within
//! [`PARITY_TOLERANCE`], or the export fails (and its folder is removed).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use super::cnn::{Cnn, floats};
use crate::build::export::{ExportInfo, export};
use crate::model::engine::{Engine, EngineConfig, OrtEngine, normalise};

/// Largest allowed |ONNX − burn| for logits and for CAM values.
pub const PARITY_TOLERANCE: f32 = 1e-4;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportReport {
    pub dir: PathBuf,
    pub max_abs_diff_logits: f32,
    pub max_abs_diff_cam: f32,
    /// Measured ONNX Runtime CPU time per tile (batches of `tiles.len()`), ms.
    pub ms_per_tile: f64,
    pub onnx_bytes: u64,
}

/// Exports `model` (inference mode) to `dir` and checks it against burn on `tiles`
/// (RGB at the model's input size).
pub fn export_checked(
    model: &Cnn,
    info: &ExportInfo,
    dir: &Path,
    tiles: &[RgbImage],
    device: &Device,
) -> Result<ExportReport> {
    if tiles.is_empty() {
        bail!("parity check needs at least one tile");
    }
    let net = model.to_network()?;
    net.validate()
        .map_err(|e| anyhow::anyhow!("network is malformed: {e}"))?;
    let verified =
        export(&net, info, dir).with_context(|| format!("export to {}", dir.display()))?;
    let mut engine = OrtEngine::new(&verified, &EngineConfig::default())
        .context("ONNX Runtime cannot open the exported model")?;
    let ort = engine.infer(tiles).context("ONNX Runtime inference")?;

    let input = normalise(tiles, &verified.manifest.input).context("normalising tiles")?;
    let s = model.input_size;
    let x = Tensor::<4>::from_data(TensorData::new(input, [tiles.len(), 3, s, s]), device);
    let out = model.forward(x);
    let attention = crate::train::loss::attention_maps(out.features.clone(), model.weight.val());
    let cam = model.cam(out.features);
    let logits = floats(out.logits.into_data())?;
    let cam = floats(cam.into_data())?;
    let attention = floats(attention.into_data())?;
    let (c, per_cam) = (logits.len() / tiles.len(), cam.len() / tiles.len());
    let mut max_logits = 0f32;
    let mut max_cam = 0f32;
    for (i, o) in ort.iter().enumerate() {
        for (a, b) in o.logits.iter().zip(&logits[i * c..(i + 1) * c]) {
            max_logits = max_logits.max((a - b).abs());
        }
        if o.cam.len() != per_cam {
            bail!(
                "ONNX CAM has {} values per tile, burn {per_cam}",
                o.cam.len()
            );
        }
        if o.attention.len() != per_cam {
            bail!(
                "ONNX AT+ map has {} values per tile, burn {per_cam}",
                o.attention.len()
            );
        }
        // The CAM figure covers both maps: Grad-CAM and the AT+ map the Student learnt.
        let range = i * per_cam..(i + 1) * per_cam;
        for (a, b) in o.cam.iter().zip(&cam[range.clone()]) {
            max_cam = max_cam.max((a - b).abs());
        }
        for (a, b) in o.attention.iter().zip(&attention[range]) {
            max_cam = max_cam.max((a - b).abs());
        }
    }
    if !(max_logits <= PARITY_TOLERANCE && max_cam <= PARITY_TOLERANCE) {
        let _ = std::fs::remove_dir_all(dir);
        bail!(
            "{}: ONNX Runtime and burn disagree (max |Δ| logits {max_logits:.2e}, CAM {max_cam:.2e}; limit {PARITY_TOLERANCE:.0e}); export removed",
            info.name
        );
    }
    // Timing: best of 5 runs over the same batch.
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        engine.infer(tiles)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let onnx_bytes = std::fs::metadata(&verified.onnx_path).map_or(0, |m| m.len());
    Ok(ExportReport {
        dir: dir.to_path_buf(),
        max_abs_diff_logits: max_logits,
        max_abs_diff_cam: max_cam,
        ms_per_tile: best * 1000.0 / tiles.len() as f64,
        onnx_bytes,
    })
}
