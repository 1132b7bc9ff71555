//! Assembles the service: job store, models, workers, webhook delivery, file clean-up and
//! the HTTP server, and shuts them down in order.
//!
//! Shutdown on the given signal: the server stops accepting connections and finishes
//! in-flight requests; workers stop claiming jobs; running jobs get `shutdown_grace` to
//! finish, then are stopped at their next batch and put back in the queue, so the next
//! start (or another replica) picks them up. Nothing accepted is lost.
//!
//! Beside the workers run three loops: webhook delivery, lease expiry (jobs of replicas
//! that died go back to the queue) and retention clean-up, which takes a store lock so
//! that one replica at a time does it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::grade::pipeline::GradeOptions;
use crate::grader::GradingArgs;
use crate::model::engine::EngineArgs;
use tokio::sync::watch;

use crate::model::engine::{EngineConfig, EnginePool};
use crate::model::registry::{RefusedModel, Registry};
use crate::serve::http::{self, ApiSettings, AppState};
use crate::serve::jobs::store::{Store, StoreError, StoreLocation};
use crate::serve::jobs::{JobSettings, Jobs, Models, webhook};

/// `slidegrade serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
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
    /// Seconds a replica holds a claimed job without renewing its lease (it renews every
    /// third of this). A replica that dies has its jobs requeued this long after.
    #[arg(long, env = "SLIDEGRADE_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..))]
    lease_secs: u64,
    /// Secret for the webhooks' HMAC-SHA256 signature. Without it, callbacks are refused.
    #[arg(long, env = "SLIDEGRADE_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// First webhook retry delay, seconds; doubles per attempt up to an hour.
    #[arg(long, env = "SLIDEGRADE_WEBHOOK_RETRY_SECS", default_value_t = 5)]
    webhook_retry_secs: u64,
    /// Webhook attempts before giving up.
    #[arg(long, env = "SLIDEGRADE_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    webhook_max_attempts: u32,
    /// Listen for HL7 v2 orders (OML^O21, ORM^O01) over MLLP on this address, e.g.
    /// `0.0.0.0:2575`. Off by default. Orders name slides under --shared-root.
    #[arg(long, env = "SLIDEGRADE_MLLP_BIND")]
    mllp_bind: Option<SocketAddr>,
    /// Send every finished job's ORU^R01 over MLLP to this receiver (`host:port`),
    /// retried until it answers AA, as webhooks are retried. Off by default.
    #[arg(long, env = "SLIDEGRADE_MLLP_RESULTS")]
    mllp_results: Option<String>,
    /// Allowed CORS origins (comma-separated). Empty: CORS is off.
    #[arg(long, env = "SLIDEGRADE_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    #[command(flatten)]
    grading: GradingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Where the service keeps its state.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// Folder for uploads, results and (without --database-url) the SQLite job store.
    /// Replicas sharing a PostgreSQL store must share this folder too.
    #[arg(long, env = "SLIDEGRADE_DATA_DIR", default_value = "var")]
    pub data_dir: PathBuf,
    /// A PostgreSQL job store, `postgres://user:password@host:5432/database`, shared by
    /// every replica. Without it the store is an embedded SQLite file in --data-dir.
    #[arg(long, env = "SLIDEGRADE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl DataArgs {
    pub fn store_location(&self) -> Result<StoreLocation, StoreError> {
        StoreLocation::new(&self.data_dir, self.database_url.as_deref())
    }
}

/// Runs `slidegrade serve` until SIGTERM or Ctrl-C.
pub fn run_cli(args: ServeArgs) -> anyhow::Result<()> {
    if args.no_auth && !args.bind.ip().is_loopback() {
        anyhow::bail!(
            "--no-auth is only allowed on a loopback address, not {}",
            args.bind
        );
    }
    let grade = args.grading.options()?;
    let engine = args.engine.init()?;
    let secs = std::time::Duration::from_secs;
    let config = ServiceConfig {
        models_dir: args.models_dir,
        engine,
        store: args.data.store_location()?,
        api: http::ApiSettings {
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
        jobs: crate::serve::jobs::JobSettings {
            workers: args.workers,
            queue_capacity: args.queue_capacity,
            data_dir: args.data.data_dir,
            grade: GradeOptions {
                decoder: if args.decode_in_process {
                    None
                } else {
                    Some(crate::slide::isolated::Decoder::current_exe()?)
                },
                ..grade
            },
            webhook: crate::serve::jobs::webhook::WebhookSettings {
                secret: args.webhook_secret,
                retry_base: secs(args.webhook_retry_secs),
                max_attempts: args.webhook_max_attempts.max(1),
                ..Default::default()
            },
            lease: secs(args.lease_secs),
            hl7_results: args.mllp_results,
        },
        retention: secs(args.retention_hours.saturating_mul(3600)),
        shutdown_grace: secs(args.shutdown_grace_secs),
    };
    if args.no_auth {
        tracing::warn!("authentication is off (--no-auth); loopback only");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let mut service = Service::build(&config).await?;
        if let Some(addr) = args.mllp_bind {
            let mllp = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(addr = %mllp.local_addr()?, "MLLP listening");
            service = service.with_mllp(mllp);
        }
        let listener = tokio::net::TcpListener::bind(args.bind).await?;
        tracing::info!(addr = %listener.local_addr()?, models = service.state.models.pools.len(), "listening");
        service.run(listener, shutdown_signal()).await?;
        Ok(())
    })
}

pub struct ServiceConfig {
    pub models_dir: PathBuf,
    pub engine: EngineConfig,
    pub store: StoreLocation,
    pub api: ApiSettings,
    pub jobs: JobSettings,
    /// Finished jobs' files are deleted after this long.
    pub retention: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Loading the models panicked (a bug, or a native library that aborted a check).
    #[error("loading the models failed: {0}")]
    ModelLoading(String),
}

impl ServiceError {
    pub fn kind(&self) -> &'static str {
        match self {
            ServiceError::Store(_) => "store_error",
            ServiceError::ModelLoading(_) => "model_loading_failed",
        }
    }
}

/// The models a folder holds, with an ONNX Runtime session pool each. A folder that fails
/// the contract, or whose session cannot be built, is refused with its reason (see
/// `GET /v1/models`) and the other models still load.
pub fn load_models(
    dir: &std::path::Path,
    config: &EngineConfig,
) -> (Vec<Arc<EnginePool>>, Vec<RefusedModel>) {
    let mut registry = Registry::scan(dir);
    let mut pools = Vec::new();
    for model in std::mem::take(&mut registry.models) {
        match EnginePool::new(&model, config) {
            Ok(pool) => {
                let m = pool.manifest();
                tracing::info!(
                    model = %m.name,
                    version = %m.version,
                    role = ?m.role,
                    mpp = m.input.mpp,
                    provider = pool.provider().as_str(),
                    "loaded model"
                );
                crate::telemetry::global()
                    .execution_provider
                    .with_label_values(&[m.name.as_str(), pool.provider().as_str()])
                    .set(1);
                pools.push(Arc::new(pool));
            }
            Err(e) => registry.refuse(&model.dir, e.to_string(), e.kind()),
        }
    }
    if pools.is_empty() {
        tracing::warn!(dir = %dir.display(), "no models loaded; grading endpoints will refuse work");
    }
    (pools, registry.refused)
}

/// The assembled service, ready to [`run`](Service::run).
pub struct Service {
    pub state: Arc<AppState>,
    retention: Duration,
    shutdown_grace: Duration,
    /// Where HL7 orders arrive over MLLP, if anywhere.
    mllp: Option<TcpListener>,
}

impl Service {
    /// Opens (and migrates) the store and loads the models.
    pub async fn build(config: &ServiceConfig) -> Result<Service, ServiceError> {
        let store = Arc::new(Store::open_at(&config.store)?);
        tracing::info!(store = %config.store, "job store open");
        let (dir, engine) = (config.models_dir.clone(), config.engine.clone());
        let (pools, refused) = tokio::task::spawn_blocking(move || load_models(&dir, &engine))
            .await
            .map_err(|e| ServiceError::ModelLoading(e.to_string()))?;
        let models = Arc::new(Models::new(pools));
        let state = Arc::new(AppState {
            models: models.clone(),
            refused,
            jobs: Jobs::new(store, models, config.jobs.clone()),
            api: config.api.clone(),
            viewer: crate::serve::http::tile_cache::SlideTiles::default(),
        });
        Ok(Service::from_state(state, config))
    }

    /// A service around an already assembled state (tests build their own).
    pub fn from_state(state: Arc<AppState>, config: &ServiceConfig) -> Service {
        Service {
            state,
            retention: config.retention,
            shutdown_grace: config.shutdown_grace,
            mllp: None,
        }
    }

    /// Also takes HL7 orders over MLLP on `listener` (`serve --mllp-bind`).
    pub fn with_mllp(mut self, listener: TcpListener) -> Service {
        self.mllp = Some(listener);
        self
    }

    /// Runs the whole service on `listener` until `shutdown` completes.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Service {
            state,
            retention,
            shutdown_grace,
            mllp,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let workers = state.jobs.spawn_workers(stop_rx.clone());
        let deliveries = tokio::spawn(webhook::deliver_loop(
            state.jobs.store.clone(),
            state.jobs.replica.clone(),
            state.jobs.settings.webhook.clone(),
            stop_rx.clone(),
        ));
        let hl7_results = state.jobs.settings.hl7_results.is_some().then(|| {
            tokio::spawn(crate::serve::jobs::outbox::deliver_loop(
                state.jobs.store.clone(),
                state.jobs.replica.clone(),
                crate::serve::jobs::store::Outbox::Hl7Results,
                state.jobs.settings.webhook.clone(),
                stop_rx.clone(),
                |delivery| async move { crate::serve::mllp::send_result(&delivery).await },
            ))
        });
        let leases = tokio::spawn(expire_leases_loop(state.jobs.clone(), stop_rx.clone()));
        let orders = mllp.map(|listener| {
            tokio::spawn(crate::serve::mllp::serve_orders(
                listener,
                state.clone(),
                stop_rx.clone(),
            ))
        });
        let cleaner = tokio::spawn(clean_up_loop(
            state.jobs.clone(),
            retention,
            stop_rx.clone(),
        ));

        let signal_tx = stop_tx.clone();
        let accepting = state.jobs.clone();
        let served = http::run(listener, state.clone(), async move {
            shutdown.await;
            // Before the log line: the server still answers the connections it holds, and
            // from here on their submissions get 503 `shutting_down`.
            accepting.stop_accepting();
            tracing::info!("shutting down: no new requests or jobs");
            let _ = signal_tx.send(true);
        })
        .await;
        let _ = stop_tx.send(true);

        // Give running jobs the grace period, then stop them and put them back in the queue.
        let deadline = Instant::now() + shutdown_grace;
        while state.jobs.running_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if state.jobs.running_count() > 0 {
            tracing::warn!(
                running = state.jobs.running_count(),
                "grace period over; requeueing running jobs"
            );
            state.jobs.requeue_running();
        }
        for worker in workers {
            let _ = worker.await;
        }
        let _ = deliveries.await;
        let _ = leases.await;
        if let Some(hl7_results) = hl7_results {
            let _ = hl7_results.await;
        }
        if let Some(orders) = orders {
            let _ = orders.await;
        }
        let _ = cleaner.await;
        tracing::info!("shut down");
        served
    }
}

/// Puts the jobs of replicas that died back in the queue (or fails them after
/// [`MAX_ATTEMPTS`](crate::serve::jobs::MAX_ATTEMPTS)), at start and then twice per lease.
/// Every replica runs it: each statement is atomic, so two replicas expiring the same
/// lease requeue the job once.
async fn expire_leases_loop(jobs: Arc<Jobs>, mut stop: watch::Receiver<bool>) {
    let max_attempts = crate::serve::jobs::MAX_ATTEMPTS;
    loop {
        match jobs.store.expire_leases(max_attempts) {
            Ok(recovered) => {
                if recovered.requeued > 0 {
                    tracing::warn!(
                        requeued = recovered.requeued,
                        "jobs whose replica stopped renewing their lease were queued again"
                    );
                    jobs.notify();
                }
                if recovered.failed > 0 {
                    tracing::error!(
                        failed = recovered.failed,
                        max_attempts,
                        "jobs interrupted on every attempt were failed as `interrupted`"
                    );
                }
            }
            Err(e) => tracing::error!(%e, "cannot expire job leases"),
        }
        tokio::select! {
            _ = tokio::time::sleep(jobs.settings.lease / 2) => {},
            _ = stop.changed() => return,
        }
    }
}

/// Deletes expired jobs' files every minute, on whichever replica holds the
/// `retention` lock (held for two minutes and renewed by its holder each round, so one
/// replica keeps doing it until it stops).
async fn clean_up_loop(jobs: Arc<Jobs>, retention: Duration, mut stop: watch::Receiver<bool>) {
    let period = Duration::from_secs(60).min(retention.max(Duration::from_secs(1)));
    loop {
        match jobs.store.try_lock("retention", &jobs.replica, period * 2) {
            Ok(true) => match jobs.clean_up(retention) {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed expired job files"),
                Err(e) => tracing::error!(%e, "clean-up failed"),
            },
            Ok(false) => {}
            Err(e) => tracing::error!(%e, "cannot take the retention lock"),
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {},
            _ = stop.changed() => return,
        }
    }
}

/// Completes on SIGTERM or Ctrl-C: the shutdown signal `slidegrade serve` runs until.
pub async fn shutdown_signal() {
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
