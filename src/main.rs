//! The `slidegrade` command line. Every failure prints one line to stderr and exits
//! non-zero; every setting is a flag with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use slidegrade::engine::{self, Device, EngineConfig};
use slidegrade::export::{ExportInfo, export};
use slidegrade::model::{self, Role, Training};
use slidegrade::network::{Architecture, Network};
use slidegrade::server::{self, AppState};
use slidegrade::wsi::Slide;
use slidegrade::{pipeline, report};

#[derive(Parser)]
#[command(
    name = "slidegrade",
    version,
    about = "Grade prostate biopsies from whole-slide images at low magnification, with Grad-CAM"
)]
struct Cli {
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "SLIDEGRADE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API with every valid model in the models folder.
    Serve(ServeArgs),
    /// Print a slide's vendor, levels, µm/px and objective power.
    Info {
        slide: PathBuf,
        /// µm per pixel to use when the slide does not record it.
        #[arg(long)]
        mpp: Option<f64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Grade a slide: tissue, tiles, inference, Grad-CAM heatmaps, Gleason and ISUP.
    /// Writes result.json, heatmap_<class>.png, overlay.png, tiles.csv and tiles.geojson.
    Grade(GradeArgs),
    /// Check a model folder against the contract (sha256, graph vs model.json).
    CheckModel {
        dir: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Export a small CNN with random weights as a model folder. For trying the server
    /// and the grader before trained models exist; its predictions mean nothing.
    ExportRandom {
        /// Output folder, e.g. models/random-1.25x.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "random")]
        name: String,
        /// Tile side in pixels.
        #[arg(long, default_value_t = 64)]
        input_size: usize,
        /// µm per pixel the model claims to read (8.0 is about 1.25×).
        #[arg(long, default_value_t = 8.0)]
        mpp: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Args)]
struct EngineArgs {
    /// Execution provider to ask for. `cuda` falls back to the CPU with a warning when
    /// CUDA cannot load, unless --require-cuda.
    #[arg(long, env = "SLIDEGRADE_DEVICE", value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Fail instead of falling back to the CPU when CUDA is asked for but unavailable.
    #[arg(long, env = "SLIDEGRADE_REQUIRE_CUDA")]
    require_cuda: bool,
    /// CUDA device ordinal.
    #[arg(long, env = "SLIDEGRADE_CUDA_DEVICE", default_value_t = 0)]
    cuda_device: i32,
    /// ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime use every core.
    /// On a shared host, sessions × threads should not exceed the cores.
    #[arg(long, env = "SLIDEGRADE_INTRA_THREADS", default_value_t = 0)]
    intra_threads: usize,
    /// Sessions per model: how many batches of one model can run at once.
    #[arg(long, env = "SLIDEGRADE_SESSIONS_PER_MODEL", default_value_t = 1)]
    sessions_per_model: usize,
    /// Path to libonnxruntime.so. Defaults to the copy under .deps/ from `make setup`.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib: Option<PathBuf>,
}

impl EngineArgs {
    /// Loads ONNX Runtime and returns the engine settings.
    fn init(&self) -> anyhow::Result<EngineConfig> {
        let path = self
            .ort_dylib
            .clone()
            .unwrap_or_else(engine::default_runtime_path);
        engine::init_runtime(&path)?;
        Ok(EngineConfig {
            device: self.device,
            require_cuda: self.require_cuda,
            cuda_device_id: self.cuda_device,
            intra_threads: self.intra_threads,
            sessions: self.sessions_per_model,
        })
    }
}

#[derive(Args)]
struct GradeArgs {
    slide: PathBuf,
    /// Model name (a folder under --models-dir). Default: the student with the coarsest
    /// resolution, the fastest.
    #[arg(long, env = "SLIDEGRADE_MODEL")]
    model: Option<String>,
    #[arg(long, env = "SLIDEGRADE_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,
    /// µm per pixel of level 0, for slides that do not record it (overrides metadata).
    #[arg(long)]
    mpp: Option<f64>,
    /// Output folder. Default: `<slide name>.slidegrade` beside the current directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tiles per inference batch.
    #[arg(long, env = "SLIDEGRADE_BATCH_SIZE", default_value_t = 16)]
    batch_size: usize,
    /// Minimum share of tissue (0–1) for a tile to be graded.
    #[arg(long, env = "SLIDEGRADE_MIN_TISSUE", default_value_t = 0.25)]
    min_tissue: f64,
    /// Batches the slide reader may prepare ahead of inference.
    #[arg(long, default_value_t = 4)]
    read_ahead: usize,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SLIDEGRADE_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Folder of model folders (`<name>/model.onnx` + `model.json`).
    #[arg(long, env = "SLIDEGRADE_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,
    #[command(flatten)]
    engine: EngineArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, joined.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args),
        Command::Info { slide, mpp, json } => {
            let slide = Slide::open(&slide, mpp)?;
            let props = slide.properties();
            if json {
                println!("{}", serde_json::to_string_pretty(props)?);
            } else {
                print_properties(props);
            }
            Ok(())
        }
        Command::Grade(args) => grade(args),
        Command::CheckModel { dir, engine } => {
            let model = model::load(&dir)?;
            let config = engine.init()?;
            let pool = engine::EnginePool::new(&model, &config)?;
            let m = pool.manifest();
            println!(
                "ok: {} {} ({:?}, {} px at {} µm/px, classes {:?}, provider {})",
                m.name,
                m.version,
                m.role,
                m.input.size_px,
                m.input.mpp,
                m.classes,
                pool.provider().as_str()
            );
            Ok(())
        }
        Command::ExportRandom {
            out,
            name,
            input_size,
            mpp,
            seed,
        } => {
            let net = Network::random(
                &Architecture {
                    input_size,
                    channels: vec![16, 32, 64],
                    pool_after: vec![true, true, false],
                    kernel: 3,
                    classes: 4,
                    batch_norm: true,
                },
                seed,
            );
            let info = ExportInfo {
                name,
                version: "0.0.0-random".into(),
                role: Role::Student,
                description: "Random weights for exercising the software. Not a classifier; not for clinical use.".into(),
                classes: ["NC", "G3", "G4", "G5"].map(String::from).to_vec(),
                mpp,
                magnification: 10.0 / mpp,
                mean: ExportInfo::IMAGENET_MEAN,
                std: ExportInfo::IMAGENET_STD,
                training: Training {
                    data: "none: random weights".into(),
                    synthetic_data: true,
                    seed,
                    notice: "Not trained. Not for clinical use.".into(),
                    ..Training::default()
                },
            };
            let model = export(&net, &info, &out)?;
            println!(
                "wrote {} (sha256 {})",
                model.dir.display(),
                model.manifest.onnx_sha256
            );
            Ok(())
        }
    }
}

/// Picks the named model, or the coarsest-resolution student (fastest) when unnamed.
fn choose_model(dir: &std::path::Path, name: Option<&str>) -> anyhow::Result<model::VerifiedModel> {
    if let Some(name) = name {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            anyhow::bail!("invalid model name `{name}`");
        }
        return Ok(model::load(&dir.join(name))?);
    }
    let mut candidates: Vec<model::VerifiedModel> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read models folder {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| model::load(&e.path()).ok())
        .collect();
    candidates.sort_by(|a, b| {
        let key =
            |m: &model::VerifiedModel| (m.manifest.role == Role::Student, m.manifest.input.mpp);
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    candidates.pop().ok_or_else(|| {
        anyhow::anyhow!(
            "no valid model in {}; pass --models-dir or --model",
            dir.display()
        )
    })
}

fn grade(args: GradeArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.min_tissue) {
        anyhow::bail!(
            "--min-tissue must be between 0 and 1, got {}",
            args.min_tissue
        );
    }
    let config = args.engine.init()?;
    let model = choose_model(&args.models_dir, args.model.as_deref())?;
    let pool = engine::EnginePool::new(&model, &config)?;
    let options = pipeline::GradeOptions {
        batch_size: args.batch_size.max(1),
        read_ahead: args.read_ahead.max(1),
        min_tissue: args.min_tissue,
        mpp_override: args.mpp,
        ..pipeline::GradeOptions::default()
    };
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} tiles ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("grading with {}", pool.manifest().name));
    let graded = pipeline::grade_slide(&args.slide, &pool, &options, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let out = args.out.unwrap_or_else(|| {
        let name = args
            .slide
            .file_name()
            .map_or("slide".into(), |n| n.to_string_lossy().into_owned());
        PathBuf::from(format!("{name}.slidegrade"))
    });
    let mut report = report::build_report(
        &graded,
        pool.manifest(),
        pool.provider().as_str(),
        options.min_tissue,
    );
    report::write_outputs(&out, &graded, &mut report)?;
    match &report.grade {
        Some(g) => println!(
            "{}: Gleason {} (ISUP grade group {}), tumour {:.1}%, {} tiles, {:.0} ms -> {}",
            graded.slide.file_name,
            g.gleason,
            g.isup_grade_group,
            g.tumour_percent,
            report.tiles.inferred,
            report.timings_ms.total_ms,
            out.display()
        ),
        None => println!(
            "{}: no tissue found -> {}",
            graded.slide.file_name,
            out.display()
        ),
    }
    Ok(())
}

fn print_properties(p: &slidegrade::wsi::SlideProperties) {
    println!("file:      {}", p.file_name);
    println!("vendor:    {}", p.vendor.as_deref().unwrap_or("unknown"));
    println!("µm/px:     {} x {} ({:?})", p.mpp_x, p.mpp_y, p.mpp_source);
    match p.objective_power {
        Some(power) => println!("objective: {power}x"),
        None => println!("objective: unknown"),
    }
    println!("levels:");
    for l in &p.levels {
        println!(
            "  {}: {} x {} (downsample {:.3})",
            l.index, l.width, l.height, l.downsample
        );
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.engine.init()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let dir = args.models_dir.clone();
        let state =
            tokio::task::spawn_blocking(move || AppState::load_models(&dir, &config)).await?;
        let listener = tokio::net::TcpListener::bind(args.bind).await?;
        tracing::info!(addr = %listener.local_addr()?, models = state.models.len(), "listening");
        server::run(listener, Arc::new(state), shutdown_signal()).await?;
        tracing::info!("shut down");
        Ok(())
    })
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown signal received");
}
