//! Shipped models on labelled patches, through ONNX Runtime exactly as they are served
//! (issue 12 §8): what the synthetic-trained models score on real tissue, and what the
//! real-tissue models score on patches from other sources.
//!
//! Each image is brought to the model's µm/px using the data's stated µm/px, then cut
//! into as many whole model fields as fit (centred); the patch's call is the mean of the
//! fields' probabilities. A 750 px patch at 0.23 µm/px (173 µm) is one centred 128 µm
//! field; a 512 px patch at 1 µm/px is 4 × 4 fields.

use std::fmt::Write as _;
use std::path::PathBuf;

use image::RgbImage;

use super::common::{header, load_models};
use crate::dataset::scores::Metrics;
use crate::dataset::{DataSet, Layout, load_image};
use crate::model::engine::{EngineArgs, EnginePool};
use crate::slide::resize_area;

#[derive(Debug, Clone, clap::Args)]
pub struct PatchesArgs {
    /// Labelled patches (every split is used).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "folder")]
    pub layout: Layout,
    /// µm/px of the patches (the Arvaniti TMA patches: 0.23).
    #[arg(long)]
    pub data_mpp: f64,
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Models (folder names); default: every valid model in --models-dir.
    #[arg(long = "model")]
    pub models: Vec<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: &PatchesArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.data_mpp.is_finite() && args.data_mpp > 0.0,
        "--data-mpp must be a positive number of µm per pixel"
    );
    let data = DataSet::load(&args.data, args.layout)?;
    anyhow::ensure!(
        !data.samples.is_empty(),
        "no patches in {}",
        args.data.display()
    );
    let images: Vec<RgbImage> = data
        .samples
        .iter()
        .map(|s| load_image(&s.path))
        .collect::<anyhow::Result<_>>()?;
    let truth: Vec<usize> = data.samples.iter().map(|s| s.label).collect();
    let config = args.engine.init()?;
    let models = load_models(&args.models_dir, &args.models)?;
    let mut s = String::new();
    let _ = writeln!(s, "### Shipped models on labelled patches\n\n{}", header());
    let _ = writeln!(
        s,
        "- Data: {} ({} patches at {} µm/px).\n",
        data.description,
        images.len(),
        args.data_mpp
    );
    let _ = writeln!(
        s,
        "| model | trained on | fields per patch | n | balanced acc. | QWK | macro F1 | confusion (rows: truth NC..G5) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for model in &models {
        let pool = EnginePool::new(model, &config)?;
        let m = &model.manifest;
        let mut predicted = Vec::with_capacity(images.len());
        let mut fields_per_patch = 0;
        for img in &images {
            let fields = fields_of(img, args.data_mpp, m.input.mpp, m.input.size_px);
            fields_per_patch = fields.len();
            let outputs = pool.infer(&fields)?;
            let classes = m.classes.len();
            let mut mean = vec![0f32; classes];
            for o in &outputs {
                for (acc, p) in mean.iter_mut().zip(&o.probabilities) {
                    *acc += p / outputs.len() as f32;
                }
            }
            predicted.push(
                (0..classes)
                    .max_by(|&a, &b| mean[a].total_cmp(&mean[b]))
                    .unwrap_or(0),
            );
        }
        let metrics = Metrics::from_labels(&truth, &predicted, m.classes.len());
        let trained_on = if m.training.synthetic_data {
            "synthetic"
        } else {
            "real"
        };
        let _ = writeln!(
            s,
            "| {} | {trained_on} | {fields_per_patch} | {} | {:.1}% | {:.3} | {:.1}% | {:?} |",
            m.name,
            images.len(),
            100.0 * metrics.balanced_accuracy,
            metrics.qwk,
            100.0 * metrics.macro_f1,
            metrics.confusion.matrix
        );
        eprintln!(
            "{}: balanced accuracy {:.3}",
            m.name, metrics.balanced_accuracy
        );
    }
    print!("{s}");
    Ok(())
}

/// The whole model fields (`size_px` at `model_mpp`) that fit in `img` (at `data_mpp`),
/// centred, each resized to `size_px` with an area filter.
pub fn fields_of(img: &RgbImage, data_mpp: f64, model_mpp: f64, size_px: u32) -> Vec<RgbImage> {
    let field = (f64::from(size_px) * model_mpp / data_mpp).round().max(1.0) as u32;
    let (w, h) = img.dimensions();
    let (nx, ny) = ((w / field).max(1), (h / field).max(1));
    let field_w = field.min(w);
    let field_h = field.min(h);
    let (x0, y0) = (
        (w.saturating_sub(nx * field_w)) / 2,
        (h.saturating_sub(ny * field_h)) / 2,
    );
    let mut out = Vec::with_capacity((nx * ny) as usize);
    for j in 0..ny {
        for i in 0..nx {
            let crop = image::imageops::crop_imm(
                img,
                x0 + i * field_w,
                y0 + j * field_h,
                field_w,
                field_h,
            )
            .to_image();
            out.push(resize_area(&crop, size_px, size_px));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_are_cut_into_whole_model_fields() {
        // 750 px at 0.23 µm/px (172.5 µm) holds one 128 µm field of a 16 px, 8 µm/px model.
        let tma = RgbImage::new(750, 750);
        let fields = fields_of(&tma, 0.23, 8.0, 16);
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].dimensions(), (16, 16));
        // 512 px at 1 µm/px holds 4 × 4 fields of 128 µm.
        assert_eq!(fields_of(&RgbImage::new(512, 512), 1.0, 1.0, 128).len(), 16);
        // A patch smaller than one field is used whole.
        assert_eq!(fields_of(&RgbImage::new(50, 50), 1.0, 1.0, 128).len(), 1);
    }
}
