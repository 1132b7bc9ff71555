//! `slidegrade bench`: reruns every figure in BENCHMARKS.md. Each subcommand prints a
//! Markdown section headed by the machine, the command and the date, ready to paste.
//! Timings never go in tests; they come from here.

pub mod agreement;
pub mod engine;
pub mod load;
pub mod patches;
pub mod read;
pub mod slide;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::model::{self, Role, VerifiedModel};

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Grade one large slide with every model, stage by stage; speed-up against the Teacher.
    Slide(slide::SlideArgs),
    /// Tiles at a model's resolution: the slide reader (nearest level, then resize) against
    /// a naive level-0 read followed by a resize, the way WSInfer reads.
    Read(read::ReadArgs),
    /// Engine throughput (tiles/s) by batch size and intra-op threads, per model.
    Engine(engine::EngineBenchArgs),
    /// Tile calls against the ground truth of a synthetic slide, read from the pyramid
    /// level (as grading does) and from level 0 with an area resize; tiles without true
    /// tissue and tissue area found.
    Agreement(agreement::AgreementArgs),
    /// Accuracy of the shipped models on labelled patches (e.g. the real Arvaniti TMA
    /// patches) through ONNX Runtime, each patch resized by its stated µm/px.
    Patches(patches::PatchesArgs),
    /// Load test against a running server on loopback: concurrent uploads and job
    /// submissions, throughput, latency percentiles, errors and the server's RSS.
    Load(load::LoadArgs),
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Slide(args) => slide::run(&args),
        BenchCommand::Read(args) => read::run(&args),
        BenchCommand::Engine(args) => engine::run(&args),
        BenchCommand::Load(args) => load::run(&args),
        BenchCommand::Agreement(args) => agreement::run(&args),
        BenchCommand::Patches(args) => patches::run(&args),
    }
}

/// The lines that head every benchmark section: machine, command, date.
pub fn header() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(String::new(), |kb| {
            format!(", {:.0} GiB RAM", kb / 1024.0 / 1024.0)
        });
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    format!(
        "- Machine: {cpu}, {cores} cores{mem_gib}\n- Command: `{command}`\n- Date: {date}\n- slidegrade {}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Every valid model under `dir` (or only the named ones), Teachers first, then Students
/// from the finest to the coarsest resolution. Refused folders are reported on stderr.
pub fn load_models(dir: &Path, names: &[String]) -> anyhow::Result<Vec<VerifiedModel>> {
    let dirs: Vec<PathBuf> = if names.is_empty() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read models folder {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join(model::MANIFEST_FILE).is_file())
            .collect();
        dirs.sort();
        dirs
    } else {
        names.iter().map(|n| dir.join(n)).collect()
    };
    let mut models = Vec::new();
    for d in dirs {
        match model::load(&d) {
            Ok(m) => models.push(m),
            Err(e) if names.is_empty() => eprintln!("skipping {}: {e}", d.display()),
            Err(e) => return Err(e.into()),
        }
    }
    models.sort_by(|a, b| {
        let key = |m: &VerifiedModel| (m.manifest.role != Role::Teacher, m.manifest.input.mpp);
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    anyhow::ensure!(!models.is_empty(), "no valid model in {}", dir.display());
    Ok(models)
}

/// A square region of `side` level-0 pixels read at full resolution and area-averaged to
/// `tile_px`: how patch data sets (and WSInfer) read, the baseline that the slide reader's
/// pyramid reads are compared with.
pub fn read_level0_resized(
    slide: &crate::wsi::Slide,
    x: i64,
    y: i64,
    side: u32,
    tile_px: u32,
) -> crate::wsi::Result<image::RgbImage> {
    let mpp = slide.properties().mpp_x;
    slide
        .read_region_at_mpp(x, y, side, side, mpp)
        .map(|full| crate::wsi::resize_area(&full, tile_px, tile_px))
}

/// Median of a non-empty sample (mean of the middle two for even sizes).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
