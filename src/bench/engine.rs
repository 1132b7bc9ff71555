//! Engine throughput (issue 7 §1): tiles per second through [`EnginePool::infer`]
//! (normalisation, ONNX Runtime, softmax and CAM), by batch size and intra-op threads,
//! for every model. `--dump-tiles` writes the same tiles for `scripts/bench-ort-python.sh`,
//! which times the Python `onnxruntime` package on them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::common::{header, load_models, median};
use crate::model::engine::{EngineArgs, EnginePool};

#[derive(Debug, Clone, clap::Args)]
pub struct EngineBenchArgs {
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Models to time (folder names); default: every valid model in --models-dir.
    #[arg(long = "model")]
    pub models: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub batch_sizes: Vec<usize>,
    /// Intra-op thread counts to try (0 = ONNX Runtime's default, every core).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Seconds of inference per measurement (at least one batch).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Measurements per setting; the table gives the median.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Also write each model's tiles as raw RGB (`<dir>/<model>.rgb`, N×S×S×3 bytes) for
    /// the Python comparison.
    #[arg(long)]
    pub dump_tiles: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Tiles with random content: inference cost does not depend on what tiles show, and a
/// fixed seed lets the Python comparison run on exactly the same bytes.
pub fn bench_tiles(count: usize, size: u32, seed: u64) -> Vec<RgbImage> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| RgbImage::from_fn(size, size, |_, _| image::Rgb(rng.random())))
        .collect()
}

pub fn run(args: &EngineBenchArgs) -> anyhow::Result<()> {
    let base = args.engine.init()?;
    let models = load_models(&args.models_dir, &args.models)?;
    let max_batch = args.batch_sizes.iter().copied().max().unwrap_or(1).max(1);
    let mut s = String::new();
    let _ = writeln!(s, "### Engine throughput\n\n{}", header());
    let _ = writeln!(
        s,
        "- Tiles/s through `EnginePool::infer` (normalise, ONNX Runtime CPU, softmax, CAM), one session, median of {} runs of ≥ {} s each.\n",
        args.repeats.max(1),
        args.seconds
    );
    let mut head = String::from("| model | tile px | intra-op threads |");
    let mut rule = String::from("|---|---|---|");
    for b in &args.batch_sizes {
        let _ = write!(head, " batch {b} |");
        rule.push_str("---|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for model in &models {
        let m = &model.manifest;
        let tiles = bench_tiles(max_batch, m.input.size_px, 1);
        if let Some(dir) = &args.dump_tiles {
            dump(dir, &m.name, &tiles)?;
        }
        for &threads in &args.threads {
            let mut config = base.clone();
            config.intra_threads = threads;
            config.sessions = 1;
            let pool = EnginePool::new(model, &config)?;
            let mut line = format!("| {} | {} | {} |", m.name, m.input.size_px, threads);
            for &batch in &args.batch_sizes {
                let batch = batch.max(1);
                pool.infer(&tiles[..batch])?; // warm-up: first run allocates
                let mut rates = Vec::new();
                for _ in 0..args.repeats.max(1) {
                    rates.push(throughput(&pool, &tiles[..batch], args.seconds)?);
                }
                let _ = write!(line, " {:.0} |", median(&rates));
            }
            eprintln!("{line}");
            let _ = writeln!(s, "{line}");
        }
    }
    print!("{s}");
    Ok(())
}

/// Tiles/s over at least `seconds` (and at least one batch).
pub(crate) fn throughput(
    pool: &EnginePool,
    batch: &[RgbImage],
    seconds: f64,
) -> anyhow::Result<f64> {
    let budget = Duration::from_secs_f64(seconds);
    let t = Instant::now();
    let mut done = 0usize;
    while done == 0 || t.elapsed() < budget {
        pool.infer(batch)?;
        done += batch.len();
    }
    Ok(done as f64 / t.elapsed().as_secs_f64())
}

fn dump(dir: &Path, name: &str, tiles: &[RgbImage]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes: Vec<u8> = tiles
        .iter()
        .flat_map(|t| t.as_raw().iter().copied())
        .collect();
    std::fs::write(dir.join(format!("{name}.rgb")), bytes)?;
    Ok(())
}
