//! CUDA against the CPU (issue 16 §5), in one process: every model runs the same tiles
//! through a CPU session and a CUDA session; the table gives the largest output difference
//! (logits, Grad-CAM, AT+ map) and tiles/s on each. Fails when CUDA cannot be loaded
//! (never a silent CPU fallback) or when any difference exceeds the tolerance.
//! `scripts/gpu-check.sh` runs it with the GPU build of ONNX Runtime.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::common::{header, load_models};
use super::engine::{bench_tiles, throughput};
use crate::model::engine::{Device, EngineArgs, EnginePool, Provider, TileOutput};

#[derive(Debug, Clone, clap::Args)]
pub struct DevicesArgs {
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Models (folder names); default: every valid model in --models-dir.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Tiles per batch, for both the comparison and the timing.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Seconds of inference per timing.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Largest allowed |CUDA − CPU| on any output.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f32,
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn max_abs_diff(a: &[TileOutput], b: &[TileOutput], field: fn(&TileOutput) -> &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| field(x).iter().zip(field(y)))
        .map(|(x, y)| (x - y).abs())
        // NaN wins, so that a NaN output fails the check instead of vanishing.
        .fold(0.0, |acc, d| if d.is_nan() || d > acc { d } else { acc })
}

fn tiles_per_second(
    pool: &EnginePool,
    batch: &[image::RgbImage],
    seconds: f64,
) -> anyhow::Result<f64> {
    pool.infer(batch)?; // warm-up: the first run allocates (and on CUDA, compiles kernels)
    throughput(pool, batch, seconds)
}

pub fn run(args: &DevicesArgs) -> anyhow::Result<()> {
    let base = args.engine.init()?;
    let models = load_models(&args.models_dir, &args.models)?;
    let mut s = String::new();
    let _ = writeln!(s, "### CUDA against the CPU\n\n{}", header());
    let _ = writeln!(
        s,
        "- The same {} random tiles per model through a CPU and a CUDA session; max |Δ| over every value; tiles/s over ≥ {} s after a warm-up batch.\n",
        args.batch_size, args.seconds
    );
    let _ = writeln!(
        s,
        "| model | tile px | max |Δ| logits | max |Δ| Grad-CAM | max |Δ| AT+ map | CPU tiles/s | CUDA tiles/s | CUDA / CPU |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    let mut failures = Vec::new();
    for model in &models {
        let m = &model.manifest;
        let tiles = bench_tiles(args.batch_size.max(1), m.input.size_px, 1);
        let mut cpu_config = base.clone();
        cpu_config.device = Device::Cpu;
        let mut cuda_config = base.clone();
        cuda_config.device = Device::Cuda;
        cuda_config.require_cuda = true;
        let cpu = EnginePool::new(model, &cpu_config)?;
        let cuda = EnginePool::new(model, &cuda_config)?;
        anyhow::ensure!(
            cuda.provider() == Provider::Cuda,
            "{}: the CUDA session runs on {:?}",
            m.name,
            cuda.provider()
        );
        let (a, b) = (cpu.infer(&tiles)?, cuda.infer(&tiles)?);
        let diffs = [
            max_abs_diff(&a, &b, |o| &o.logits),
            max_abs_diff(&a, &b, |o| &o.cam),
            max_abs_diff(&a, &b, |o| &o.attention),
        ];
        if diffs.iter().any(|d| d.is_nan() || *d > args.tolerance) {
            failures.push(format!(
                "{}: max |Δ| {diffs:?} > {}",
                m.name, args.tolerance
            ));
        }
        let cpu_rate = tiles_per_second(&cpu, &tiles, args.seconds)?;
        let cuda_rate = tiles_per_second(&cuda, &tiles, args.seconds)?;
        let line = format!(
            "| {} | {} | {:.1e} | {:.1e} | {:.1e} | {:.0} | {:.0} | {:.1}× |",
            m.name,
            m.input.size_px,
            diffs[0],
            diffs[1],
            diffs[2],
            cpu_rate,
            cuda_rate,
            cuda_rate / cpu_rate
        );
        eprintln!("{line}");
        let _ = writeln!(s, "{line}");
    }
    print!("{s}");
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}
