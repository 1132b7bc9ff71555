//! The `slidegrade` command line. Every failure prints one line to stderr and exits
//! non-zero; every setting is a flag with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use slidegrade::engine::{self, EngineArgs};
use slidegrade::export::{ExportInfo, export};
use slidegrade::model::{self, Role, Training};
use slidegrade::network::{Architecture, Network};
use slidegrade::server;
use slidegrade::wsi::Slide;
use slidegrade::{pipeline, report, service};

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
    #[command(flatten)]
    Data(slidegrade::dataset::cli::DataCommand),
    #[cfg(feature = "train")]
    #[command(flatten)]
    Train(slidegrade::train::cli::TrainCommand),
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
    /// Write a synthetic pyramidal slide (tiled TIFF with µm/px) with known Gleason
    /// regions, plus `<stem>_mask.png` and `<stem>_truth.json` beside it.
    SynthSlide {
        /// Output .tiff path.
        out: PathBuf,
        /// Level-0 width in pixels.
        #[arg(long, default_value_t = 8192)]
        width: u32,
        /// Level-0 height in pixels.
        #[arg(long, default_value_t = 6144)]
        height: u32,
        /// Level-0 µm per pixel (0.25 ≈ 40×).
        #[arg(long, default_value_t = 0.5)]
        mpp: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// One core of this pattern (e.g. `3+4`, `benign`); default: random cores.
        #[arg(long)]
        pattern: Option<String>,
        /// The 80,000 × 60,000 px, 0.25 µm/px benchmark slide (ignores size flags).
        #[arg(long)]
        benchmark: bool,
    },
    /// Rerun the figures of BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        command: slidegrade::bench::BenchCommand,
    },
    /// Manage API keys for the server.
    Keys {
        #[command(flatten)]
        data: DataArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Grade a slide: tissue, tiles, inference, Grad-CAM heatmaps, Gleason and ISUP.
    /// Writes result.json, heatmap_<class>.png, overlay.png, tiles.csv and tiles.geojson.
    Grade(GradeArgs),
    /// Internal: open a slide and decode its overview and first tile, for a server that
    /// runs this in a child process (`wsi::isolated`). Prints JSON; exit 3 on a slide
    /// error.
    #[command(name = "probe-slide", hide = true)]
    ProbeSlide {
        slide: PathBuf,
        #[arg(long)]
        mpp: Option<f64>,
    },
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
    /// Each tile counts as the most probable class of the mean over its neighbours
    /// within this many tiles; 0 takes each tile's own most probable class. Removes
    /// isolated single-tile calls, which the grading rule would otherwise report.
    #[arg(long, env = "SLIDEGRADE_SMOOTHING_RADIUS", default_value_t = 1)]
    smoothing_radius: u32,
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
    /// Decode uploaded slides only in this process. By default each slide is first
    /// probed (opened, overview and first tile decoded) in a child process, so that a
    /// crash in the C decoders refuses the slide instead of taking the server down.
    #[arg(long, env = "SLIDEGRADE_DECODE_IN_PROCESS")]
    decode_in_process: bool,
    /// Address to listen on.
    #[arg(long, env = "SLIDEGRADE_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Folder of model folders (`<name>/model.onnx` + `model.json`).
    #[arg(long, env = "SLIDEGRADE_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Serve without API keys. Refused unless --bind is a loopback address.
    #[arg(long, env = "SLIDEGRADE_NO_AUTH")]
    no_auth: bool,
    /// Folder that `{"path": ...}` submissions may name (repeatable). None: path
    /// submissions are refused with 403.
    #[arg(
        long = "shared-root",
        env = "SLIDEGRADE_SHARED_ROOTS",
        value_delimiter = ','
    )]
    shared_roots: Vec<PathBuf>,
    /// Largest upload in MiB (413 above).
    #[arg(long, env = "SLIDEGRADE_MAX_UPLOAD_MB", default_value_t = 4096)]
    max_upload_mb: u64,
    /// Largest JSON body in KiB (413 above).
    #[arg(long, env = "SLIDEGRADE_MAX_JSON_KB", default_value_t = 64)]
    max_json_kb: usize,
    /// Time limit for ordinary requests, seconds (408 after).
    #[arg(long, env = "SLIDEGRADE_REQUEST_TIMEOUT_SECS", default_value_t = 60)]
    request_timeout_secs: u64,
    /// Time limit for uploads, seconds.
    #[arg(long, env = "SLIDEGRADE_UPLOAD_TIMEOUT_SECS", default_value_t = 3600)]
    upload_timeout_secs: u64,
    /// Grading workers (jobs graded at once).
    #[arg(long, env = "SLIDEGRADE_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Queued jobs before the API answers 503 with Retry-After.
    #[arg(long, env = "SLIDEGRADE_QUEUE_CAPACITY", default_value_t = 64)]
    queue_capacity: u64,
    /// Retry-After seconds when the queue is full.
    #[arg(long, env = "SLIDEGRADE_RETRY_AFTER_SECS", default_value_t = 30)]
    retry_after_secs: u64,
    /// POST /v1/grade takes slides up to this many level-0 megapixels...
    #[arg(long, env = "SLIDEGRADE_SYNC_MAX_MEGAPIXELS", default_value_t = 100)]
    sync_max_megapixels: u64,
    /// ...and answers within this many seconds (413 otherwise: submit a job instead).
    #[arg(long, env = "SLIDEGRADE_SYNC_TIMEOUT_SECS", default_value_t = 30)]
    sync_timeout_secs: u64,
    /// Delete finished jobs' files after this many hours.
    #[arg(long, env = "SLIDEGRADE_RETENTION_HOURS", default_value_t = 168)]
    retention_hours: u64,
    /// Seconds running jobs get to finish on SIGTERM before they are requeued.
    #[arg(long, env = "SLIDEGRADE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    shutdown_grace_secs: u64,
    /// Secret for the webhooks' HMAC-SHA256 signature. Without it, callbacks are refused.
    #[arg(long, env = "SLIDEGRADE_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// First webhook retry delay, seconds; doubles per attempt up to an hour.
    #[arg(long, env = "SLIDEGRADE_WEBHOOK_RETRY_SECS", default_value_t = 5)]
    webhook_retry_secs: u64,
    /// Webhook attempts before giving up.
    #[arg(long, env = "SLIDEGRADE_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    webhook_max_attempts: u32,
    /// Allowed CORS origins (comma-separated). Empty: CORS is off.
    #[arg(long, env = "SLIDEGRADE_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Tiles per inference batch.
    #[arg(long, env = "SLIDEGRADE_BATCH_SIZE", default_value_t = 16)]
    batch_size: usize,
    /// Minimum share of tissue (0–1) for a tile to be graded.
    #[arg(long, env = "SLIDEGRADE_MIN_TISSUE", default_value_t = 0.25)]
    min_tissue: f64,
    /// Each tile counts as the most probable class of the mean over its neighbours
    /// within this many tiles; 0 takes each tile's own most probable class. Removes
    /// isolated single-tile calls, which the grading rule would otherwise report.
    #[arg(long, env = "SLIDEGRADE_SMOOTHING_RADIUS", default_value_t = 1)]
    smoothing_radius: u32,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct DataArgs {
    /// Folder for the job store (SQLite), uploads and results.
    #[arg(long, env = "SLIDEGRADE_DATA_DIR", default_value = "var")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key and print it (shown once; only its hash is stored).
    Create {
        /// Who or what uses the key, e.g. `lis`.
        #[arg(long)]
        name: String,
        /// read, submit or admin.
        #[arg(long)]
        role: String,
    },
    /// List keys (names and roles, never the keys).
    List,
    /// Revoke every key with this name.
    Revoke {
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // The decoder child's exit code and stdout are its protocol with the server.
    if let Command::ProbeSlide { slide, mpp } = &cli.command {
        return slidegrade::wsi::isolated::child_main(slide, *mpp);
    }
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
        // `main` answers it with the child protocol; here it is a plain probe.
        Command::ProbeSlide { slide, mpp } => {
            slidegrade::wsi::isolated::probe(&slide, mpp)?;
            Ok(())
        }
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
        Command::Data(cmd) => slidegrade::dataset::cli::run(cmd),
        #[cfg(feature = "train")]
        Command::Train(cmd) => slidegrade::train::cli::run(cmd),
        Command::Grade(args) => grade(args),
        Command::Keys { data, command } => keys(&data, command),
        Command::Bench { command } => slidegrade::bench::run(command),
        Command::SynthSlide {
            out,
            width,
            height,
            mpp,
            seed,
            pattern,
            benchmark,
        } => {
            use slidegrade::synth::{CorePattern, SlideSpec};
            let spec = match (benchmark, pattern) {
                (true, _) => SlideSpec::benchmark(seed),
                (false, Some(p)) => {
                    let pattern = CorePattern::from_name(&p)
                        .ok_or_else(|| anyhow::anyhow!("unknown --pattern `{p}`"))?;
                    SlideSpec::with_pattern(width, height, mpp, seed, pattern)
                }
                (false, None) => SlideSpec::random(width, height, mpp, seed),
            };
            let truth = slidegrade::synth::write_slide(&out, &spec)?;
            println!(
                "wrote {} ({} x {} px at {} µm/px, {} levels)",
                out.display(),
                truth.width,
                truth.height,
                truth.mpp,
                truth.levels.len()
            );
            Ok(())
        }
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
        smoothing_radius: args.smoothing_radius,
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

fn keys(data: &DataArgs, command: KeysCommand) -> anyhow::Result<()> {
    let store = slidegrade::jobs::store::Store::open(&service::store_path(&data.data_dir))?;
    match command {
        KeysCommand::Create { name, role } => {
            let role = slidegrade::jobs::store::Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!("--role must be read, submit or admin, not `{role}`")
            })?;
            println!("{}", slidegrade::auth::create_key(&store, &name, role)?);
        }
        KeysCommand::List => {
            for (name, role, created) in store.list_keys()? {
                println!("{name}\t{}\tcreated {created}", role.as_str());
            }
        }
        KeysCommand::Revoke { name } => {
            let n = store.revoke_key(&name)?;
            println!("revoked {n} key(s) named {name}");
        }
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.no_auth && !args.bind.ip().is_loopback() {
        anyhow::bail!(
            "--no-auth is only allowed on a loopback address, not {}",
            args.bind
        );
    }
    if !(0.0..=1.0).contains(&args.min_tissue) {
        anyhow::bail!(
            "--min-tissue must be between 0 and 1, got {}",
            args.min_tissue
        );
    }
    let engine = args.engine.init()?;
    let secs = std::time::Duration::from_secs;
    let config = service::ServiceConfig {
        models_dir: args.models_dir,
        engine,
        data_dir: args.data.data_dir.clone(),
        api: server::ApiSettings {
            require_auth: !args.no_auth,
            shared_roots: args.shared_roots,
            max_upload_bytes: args.max_upload_mb.saturating_mul(1 << 20),
            max_json_bytes: args.max_json_kb.saturating_mul(1 << 10),
            request_timeout: secs(args.request_timeout_secs),
            upload_timeout: secs(args.upload_timeout_secs),
            sync_max_pixels: args.sync_max_megapixels.saturating_mul(1_000_000),
            sync_timeout: secs(args.sync_timeout_secs),
            retry_after_secs: args.retry_after_secs,
            cors_origins: args.cors_origins,
        },
        jobs: slidegrade::jobs::JobSettings {
            workers: args.workers,
            queue_capacity: args.queue_capacity,
            data_dir: args.data.data_dir,
            grade: pipeline::GradeOptions {
                batch_size: args.batch_size.max(1),
                min_tissue: args.min_tissue,
                smoothing_radius: args.smoothing_radius,
                decoder: if args.decode_in_process {
                    None
                } else {
                    Some(slidegrade::wsi::isolated::Decoder::current_exe()?)
                },
                ..pipeline::GradeOptions::default()
            },
            webhook: slidegrade::jobs::webhook::WebhookSettings {
                secret: args.webhook_secret,
                retry_base: secs(args.webhook_retry_secs),
                max_attempts: args.webhook_max_attempts.max(1),
                ..Default::default()
            },
        },
        retention: secs(args.retention_hours.saturating_mul(3600)),
        shutdown_grace: secs(args.shutdown_grace_secs),
    };
    if args.no_auth {
        tracing::warn!("authentication is off (--no-auth); loopback only");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let state = service::build(&config).await?;
        let listener = tokio::net::TcpListener::bind(args.bind).await?;
        tracing::info!(addr = %listener.local_addr()?, models = state.models.pools.len(), "listening");
        service::run(state, listener, config.retention, config.shutdown_grace, shutdown_signal()).await?;
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
