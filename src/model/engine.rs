//! ONNX Runtime behind a small synchronous trait.
//!
//! [`OrtEngine`] owns one `ort` session: it normalises a batch of RGB u8 tiles as the
//! manifest says, runs the graph and returns per-tile class probabilities and Grad-CAM
//! maps. `Session::run` needs `&mut self`, so concurrent callers go through an
//! [`EnginePool`]: a fixed set of sessions that callers check out and return, blocking
//! while all are busy (call it from a blocking thread, not an async task).
//!
//! The CUDA execution provider is asked for when configured. If it cannot load (no GPU,
//! no CUDA libraries), the engine logs one warning and falls back to the CPU, unless
//! `require_cuda` says to fail. [`EnginePool::provider`] reports which one is active.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use image::RgbImage;
use ort::ep::ExecutionProvider;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

use crate::model::contract::{InputSpec, Manifest, VerifiedModel};

/// The execution provider asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

/// The execution provider actually running a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub device: Device,
    /// With `Device::Cuda`, fail instead of falling back to the CPU.
    pub require_cuda: bool,
    pub cuda_device_id: i32,
    /// ONNX Runtime intra-op threads per session (0 = ONNX Runtime's default).
    pub intra_threads: usize,
    /// Let idle intra-op threads spin-wait for the next batch (ONNX Runtime's default).
    /// Off by default: spinning threads take the cores from the slide reader that feeds
    /// the engine, and from other sessions.
    pub intra_spinning: bool,
    /// Sessions per model in an [`EnginePool`]; each can run one batch at a time.
    pub sessions: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            device: Device::Cpu,
            require_cuda: false,
            cuda_device_id: 0,
            intra_threads: 0,
            intra_spinning: false,
            sessions: 1,
        }
    }
}

/// Engine settings as command-line flags, shared by every subcommand that runs a model.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Execution provider to ask for. `cuda` falls back to the CPU with a warning when
    /// CUDA cannot load, unless --require-cuda.
    #[arg(long, env = "SLIDEGRADE_DEVICE", value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Fail instead of falling back to the CPU when CUDA is asked for but unavailable.
    #[arg(long, env = "SLIDEGRADE_REQUIRE_CUDA")]
    pub require_cuda: bool,
    /// CUDA device ordinal.
    #[arg(long, env = "SLIDEGRADE_CUDA_DEVICE", default_value_t = 0)]
    pub cuda_device: i32,
    /// ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime use every core.
    /// On a shared host, sessions × threads should not exceed the cores.
    #[arg(long, env = "SLIDEGRADE_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
    /// Let idle ONNX Runtime threads spin-wait for work. Lowers latency when a session
    /// has the machine to itself; costs the slide reader and other sessions CPU.
    #[arg(long, env = "SLIDEGRADE_INTRA_SPINNING")]
    pub intra_spinning: bool,
    /// Sessions per model: how many batches of one model can run at once.
    #[arg(long, env = "SLIDEGRADE_SESSIONS_PER_MODEL", default_value_t = 1)]
    pub sessions_per_model: usize,
    /// Path to libonnxruntime.so. Defaults to the copy under .deps/ from `make setup`.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
}

impl EngineArgs {
    /// Loads ONNX Runtime and returns the engine settings.
    pub fn init(&self) -> Result<EngineConfig, EngineError> {
        let path = self.ort_dylib.clone().unwrap_or_else(default_runtime_path);
        init_runtime(&path)?;
        Ok(EngineConfig {
            device: self.device,
            require_cuda: self.require_cuda,
            cuda_device_id: self.cuda_device,
            intra_threads: self.intra_threads,
            intra_spinning: self.intra_spinning,
            sessions: self.sessions_per_model,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "cannot load ONNX Runtime from {path}: {detail} (run `make setup` or set ORT_DYLIB_PATH)"
    )]
    Runtime { path: PathBuf, detail: String },
    #[error("CUDA execution provider is required but unavailable: {0}")]
    CudaUnavailable(String),
    #[error("cannot create an ONNX Runtime session for {model}: {detail}")]
    Session { model: String, detail: String },
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("model output does not match its manifest: {0}")]
    BadOutput(String),
}

impl EngineError {
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Runtime { .. } => "runtime_unavailable",
            EngineError::CudaUnavailable(_) => "cuda_unavailable",
            EngineError::Session { .. } => "session_failed",
            EngineError::BadInput(_) => "bad_input",
            EngineError::Inference(_) => "inference_failed",
            EngineError::BadOutput(_) => "bad_model_output",
        }
    }
}

/// One tile's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TileOutput {
    /// Raw logits, in manifest class order.
    pub logits: Vec<f32>,
    /// Softmax of the logits, in manifest class order.
    pub probabilities: Vec<f32>,
    /// `[C, h, w]` Grad-CAM maps, row-major, same class order.
    pub cam: Vec<f32>,
    /// `[C, h, w]` AT+ maps, the same layout; empty when the model has no such output.
    pub attention: Vec<f32>,
}

/// A synchronous inference backend.
pub trait Engine: Send {
    /// Runs a batch of square RGB tiles of the model's input size.
    fn infer(&mut self, tiles: &[RgbImage]) -> Result<Vec<TileOutput>, EngineError>;
    fn provider(&self) -> Provider;
    fn manifest(&self) -> &Manifest;
}

static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();
static CUDA_WARNED: AtomicBool = AtomicBool::new(false);

/// The ONNX Runtime library to load: the explicit path if given (flag or `ORT_DYLIB_PATH`),
/// else the copy `scripts/setup-native.sh` put under `.deps/` when this binary was built.
pub fn default_runtime_path() -> PathBuf {
    PathBuf::from(env!("SLIDEGRADE_DEFAULT_ORT_DYLIB"))
}

/// Loads ONNX Runtime once per process. Later calls return the first environment: ONNX
/// Runtime allows a single environment per process.
pub fn init_runtime(path: &Path) -> Result<&'static ort::environment::Environment, EngineError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let runtime_error = |detail: String| EngineError::Runtime {
        path: path.to_path_buf(),
        detail,
    };
    if !path.is_file() {
        return Err(runtime_error("file not found".into()));
    }
    let env = ort::init_from(path)
        .map_err(|e| runtime_error(e.to_string()))?
        .with_name("slidegrade")
        .build()
        .map_err(|e| runtime_error(e.to_string()))?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

fn environment() -> Result<&'static ort::environment::Environment, EngineError> {
    match ENVIRONMENT.get() {
        Some(env) => Ok(env),
        None => init_runtime(&default_runtime_path()),
    }
}

pub struct OrtEngine {
    session: Session,
    manifest: Arc<Manifest>,
    provider: Provider,
}

impl OrtEngine {
    pub fn new(model: &VerifiedModel, config: &EngineConfig) -> Result<OrtEngine, EngineError> {
        let env = environment()?;
        let name = model.manifest.name.clone();
        let session_error = |e: ort::Error| EngineError::Session {
            model: name.clone(),
            detail: e.to_string(),
        };
        let builder = || -> Result<_, EngineError> {
            let mut b = Session::builder(env)
                .map_err(session_error)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| session_error(e.into()))?
                .with_intra_op_spinning(config.intra_spinning)
                .map_err(|e| session_error(e.into()))?;
            if config.intra_threads > 0 {
                b = b
                    .with_intra_threads(config.intra_threads)
                    .map_err(|e| session_error(e.into()))?;
            }
            Ok(b)
        };

        let mut provider = Provider::Cpu;
        let mut session = None;
        if config.device == Device::Cuda {
            let cuda = ort::ep::CUDA::default()
                .with_device_id(config.cuda_device_id)
                .build()
                .error_on_failure();
            let attempt = builder()?
                .with_execution_providers([cuda])
                .map_err(|e| e.to_string())
                .and_then(|mut b| {
                    b.commit_from_file(&model.onnx_path)
                        .map_err(|e| e.to_string())
                });
            match attempt {
                Ok(s) => {
                    provider = Provider::Cuda;
                    session = Some(s);
                }
                Err(detail) if config.require_cuda => {
                    return Err(EngineError::CudaUnavailable(detail));
                }
                Err(detail) => {
                    // One warning per process, not one per session or model.
                    if !CUDA_WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%detail, "CUDA execution provider unavailable; falling back to CPU");
                    }
                }
            }
        }
        let session = match session {
            Some(s) => s,
            None => builder()?
                .commit_from_file(&model.onnx_path)
                .map_err(session_error)?,
        };
        Ok(OrtEngine {
            session,
            manifest: Arc::new(model.manifest.clone()),
            provider,
        })
    }

    /// Whether ONNX Runtime was built with the CUDA provider (the GPU wheel), without
    /// trying to load it.
    pub fn cuda_compiled_in() -> bool {
        environment().is_ok() && ort::ep::CUDA::is_available().unwrap_or(false)
    }
}

/// Packs tiles into the `[N, 3, S, S]` float tensor the graph takes:
/// `x = (pixel · scale − mean[c]) / std[c]`.
pub fn normalise(tiles: &[RgbImage], spec: &InputSpec) -> Result<Vec<f32>, EngineError> {
    let s = spec.size_px;
    let area = (s * s) as usize;
    let mut out = vec![0.0f32; tiles.len() * 3 * area];
    for (t, tile) in tiles.iter().enumerate() {
        if tile.dimensions() != (s, s) {
            return Err(EngineError::BadInput(format!(
                "tile {t} is {}x{}, the model takes {s}x{s}",
                tile.width(),
                tile.height()
            )));
        }
        let base = t * 3 * area;
        for (p, px) in tile.pixels().enumerate() {
            for c in 0..3 {
                out[base + c * area + p] =
                    (f32::from(px.0[c]) * spec.scale - spec.mean[c]) / spec.std[c];
            }
        }
    }
    Ok(out)
}

/// Numerically stable softmax of one row of logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

impl Engine for OrtEngine {
    fn infer(&mut self, tiles: &[RgbImage]) -> Result<Vec<TileOutput>, EngineError> {
        if tiles.is_empty() {
            return Ok(Vec::new());
        }
        let m = &*self.manifest;
        let n = tiles.len();
        let s = m.input.size_px as usize;
        let data = normalise(tiles, &m.input)?;
        let input = Tensor::from_array(([n, 3, s, s], data.into_boxed_slice()))
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![m.input.name.as_str() => input])
            .map_err(|e| EngineError::Inference(e.to_string()))?;

        let classes = m.classes.len();
        let [h, w] = m.outputs.cam_grid.map(|v| v as usize);
        let extract = |name: &str, expected: &[usize]| -> Result<Vec<f32>, EngineError> {
            let value = outputs
                .get(name)
                .ok_or_else(|| EngineError::BadOutput(format!("no output `{name}`")))?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| EngineError::BadOutput(format!("`{name}`: {e}")))?;
            let dims: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
            if dims != expected {
                return Err(EngineError::BadOutput(format!(
                    "`{name}` has shape {dims:?}, expected {expected:?}"
                )));
            }
            Ok(data.to_vec())
        };
        let logits = extract(&m.outputs.logits, &[n, classes])?;
        let cam = extract(&m.outputs.cam, &[n, classes, h, w])?;
        let attention = match &m.outputs.attention {
            Some(name) => Some(extract(name, &[n, classes, h, w])?),
            None => None,
        };
        let per_cam = classes * h * w;
        Ok(logits
            .chunks_exact(classes)
            .zip(cam.chunks_exact(per_cam))
            .enumerate()
            .map(|(i, (l, c))| TileOutput {
                logits: l.to_vec(),
                probabilities: softmax(l),
                cam: c.to_vec(),
                attention: attention
                    .as_ref()
                    .map_or_else(Vec::new, |a| a[i * per_cam..(i + 1) * per_cam].to_vec()),
            })
            .collect())
    }

    fn provider(&self) -> Provider {
        self.provider
    }

    fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

/// A fixed set of sessions for one model, shared by many callers.
pub struct EnginePool {
    idle: Mutex<Vec<Box<dyn Engine>>>,
    freed: Condvar,
    manifest: Arc<Manifest>,
    provider: Provider,
}

impl EnginePool {
    /// Builds `config.sessions` ONNX Runtime sessions for `model`.
    pub fn new(model: &VerifiedModel, config: &EngineConfig) -> Result<EnginePool, EngineError> {
        let engines = (0..config.sessions.max(1))
            .map(|_| OrtEngine::new(model, config).map(|e| Box::new(e) as Box<dyn Engine>))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EnginePool::from_engines(engines))
    }

    /// Pools engines built elsewhere (any [`Engine`]). Panics on an empty list: a pool
    /// with no engine would block forever.
    pub fn from_engines(engines: Vec<Box<dyn Engine>>) -> EnginePool {
        let first = engines.first().expect("a pool needs at least one engine");
        let manifest = Arc::new(first.manifest().clone());
        let provider = first.provider();
        EnginePool {
            idle: Mutex::new(engines),
            freed: Condvar::new(),
            manifest,
            provider,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Runs a batch on the first free session, waiting for one if all are busy.
    pub fn infer(&self, tiles: &[RgbImage]) -> Result<Vec<TileOutput>, EngineError> {
        let engine = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(engine) = idle.pop() {
                    break engine;
                }
                idle = self.freed.wait(idle).unwrap_or_else(|e| e.into_inner());
            }
        };
        // Return the session even if inference panics, so the pool never shrinks.
        struct Return<'a> {
            pool: &'a EnginePool,
            engine: Option<Box<dyn Engine>>,
        }
        impl Drop for Return<'_> {
            fn drop(&mut self) {
                if let Some(engine) = self.engine.take() {
                    let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                    idle.push(engine);
                    self.pool.freed.notify_one();
                }
            }
        }
        let mut checked_out = Return {
            pool: self,
            engine: None,
        };
        let engine = checked_out.engine.insert(engine);
        engine.infer(tiles)
    }
}
/// Check a model folder against the contract (sha256, graph vs model.json).
#[derive(Debug, clap::Args)]
pub struct CheckModelArgs {
    pub dir: PathBuf,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Runs `slidegrade check-model`: the contract checks, then a session in the engine.
pub fn run_check_cli(args: &CheckModelArgs) -> anyhow::Result<()> {
    let model = crate::model::contract::load(&args.dir)?;
    let config = args.engine.init()?;
    let pool = EnginePool::new(&model, &config)?;
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
