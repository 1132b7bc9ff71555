//! The `slidegrade` command line. Every failure prints one line to stderr and exits
//! non-zero; every setting is a flag with an environment variable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Train, distil and export models (built with `--features train`).
    #[cfg(feature = "train")]
    Train {
        #[command(subcommand)]
        command: slidegrade::train::cli::TrainCommand,
    },
    /// Serve the HTTP API with every valid model in the models folder.
    // Boxed: its flags outweigh every other command's.
    Serve(Box<slidegrade::serve::service::ServeArgs>),
    /// Print a slide's vendor, levels, µm/px and objective power.
    Info(slidegrade::slide::InfoArgs),
    /// Write a synthetic pyramidal slide (tiled TIFF with µm/px) with known Gleason
    /// regions, plus `<stem>_mask.png` and `<stem>_truth.json` beside it.
    SynthSlide(slidegrade::synth::SynthSlideArgs),
    /// Rerun the figures of BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        command: slidegrade::bench::BenchCommand,
    },
    /// Manage API keys for the server.
    Keys {
        #[command(flatten)]
        data: slidegrade::serve::service::DataArgs,
        #[command(subcommand)]
        command: slidegrade::serve::http::auth::KeysCommand,
    },
    /// Grade a slide: tissue, tiles, inference, Grad-CAM heatmaps, Gleason and ISUP.
    /// Writes result.json, heatmap_<class>.png, overlay.png, tiles.csv and tiles.geojson.
    Grade(slidegrade::grader::GradeArgs),
    /// Internal: open a slide and decode its overview and first tile, for a server that
    /// runs this in a child process (`slide::isolated`). Prints JSON; exit 3 on a slide
    /// error.
    #[command(name = "probe-slide", hide = true)]
    ProbeSlide {
        slide: PathBuf,
        #[arg(long)]
        mpp: Option<f64>,
    },
    /// Check a model folder against the contract (sha256, graph vs model.json).
    CheckModel(slidegrade::model::engine::CheckModelArgs),
    /// Export a small CNN with random weights as a model folder. For trying the server
    /// and the grader before trained models exist; its predictions mean nothing.
    ExportRandom(slidegrade::build::export::RandomModelArgs),
    /// Add the AT+ map output (`attention`) to model folders exported before it existed.
    UpgradeModel(slidegrade::build::export::UpgradeModelArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // The decoder child's exit code and stdout are its protocol with the server.
    if let Command::ProbeSlide { slide, mpp } = &cli.command {
        return slidegrade::slide::isolated::child_main(slide, *mpp);
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
        Command::Serve(args) => slidegrade::serve::service::run_cli(*args),
        // `main` answers it with the child protocol; here it is a plain probe.
        Command::ProbeSlide { slide, mpp } => {
            slidegrade::slide::isolated::probe(&slide, mpp)?;
            Ok(())
        }
        Command::Info(args) => slidegrade::slide::run_info_cli(&args),
        Command::Data(cmd) => slidegrade::dataset::cli::run(cmd),
        #[cfg(feature = "train")]
        Command::Train { command } => slidegrade::train::cli::run(command),
        Command::Grade(args) => slidegrade::grader::run_cli(args),
        Command::Keys { data, command } => {
            slidegrade::serve::http::auth::run_cli(&data.store_location()?, command)
        }
        Command::Bench { command } => slidegrade::bench::run(command),
        Command::SynthSlide(args) => slidegrade::synth::run_slide_cli(&args),
        Command::CheckModel(args) => slidegrade::model::engine::run_check_cli(&args),
        Command::ExportRandom(args) => slidegrade::build::export::run_random_cli(args),
        Command::UpgradeModel(args) => slidegrade::build::export::run_upgrade_cli(&args),
    }
}
