//! `slidegrade bench`: reruns every figure in BENCHMARKS.md. Each subcommand prints a
//! Markdown section headed by the machine, the command and the date, ready to paste.
//! Timings never go in tests; they come from here.

pub mod agreement;
pub mod common;
pub mod cores;
pub mod decode;
pub mod devices;
pub mod engine;
pub mod load;
pub mod patches;
pub mod read;
pub mod slide;
pub mod store;

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Grade one large slide with every model, stage by stage; speed-up against the Teacher.
    Slide(slide::SlideArgs),
    /// Tiles at a model's resolution: the slide reader (nearest level, then resize) against
    /// a naive level-0 read followed by a resize, the way WSInfer reads.
    Read(read::ReadArgs),
    /// Decoding one level's JPEG tiles, Mpx/s: jpeg-decoder, zune-jpeg (one core and
    /// every core) and OpenSlide; `--dump-tiles` for the libjpeg-turbo comparison.
    Decode(decode::DecodeArgs),
    /// Engine throughput (tiles/s) by batch size and intra-op threads, per model.
    Engine(engine::EngineBenchArgs),
    /// Tile calls against the ground truth of a synthetic slide, read from the pyramid
    /// level (as grading does) and from level 0 with an area resize; tiles without true
    /// tissue and tissue area found.
    Agreement(agreement::AgreementArgs),
    /// Tunes the grading rule (smoothing radius, minimum pattern area) on generated cores
    /// of every Gleason pattern, seeds apart from the ground-truth test's.
    Cores(cores::CoresArgs),
    /// CUDA against the CPU: output differences and tiles/s per model, in one process.
    Devices(devices::DevicesArgs),
    /// Accuracy of the shipped models on labelled patches (e.g. the real Arvaniti TMA
    /// patches) through ONNX Runtime, each patch resized by its stated µm/px.
    Patches(patches::PatchesArgs),
    /// Load test against a running server on loopback: concurrent uploads and job
    /// submissions, throughput, latency percentiles, errors and the server's RSS.
    Load(load::LoadArgs),
    /// Job-store throughput: jobs claimed and finished per second, SQLite or PostgreSQL,
    /// by number of concurrent claimers.
    Store(store::StoreBenchArgs),
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Slide(args) => slide::run(&args),
        BenchCommand::Read(args) => read::run(&args),
        BenchCommand::Decode(args) => decode::run(&args),
        BenchCommand::Engine(args) => engine::run(&args),
        BenchCommand::Load(args) => load::run(&args),
        BenchCommand::Agreement(args) => agreement::run(&args),
        BenchCommand::Patches(args) => patches::run(&args),
        BenchCommand::Cores(args) => cores::run(&args),
        BenchCommand::Devices(args) => devices::run(&args),
        BenchCommand::Store(args) => store::run(&args),
    }
}
