//! Assembles the service: job store, models, workers, webhook delivery, file clean-up and
//! the HTTP server, and shuts them down in order.
//!
//! Shutdown on the given signal: the server stops accepting connections and finishes
//! in-flight requests; workers stop claiming jobs; running jobs get `shutdown_grace` to
//! finish, then are stopped at their next batch and put back in the queue, so the next
//! start picks them up. Nothing accepted is lost.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::engine::EngineConfig;
use crate::jobs::store::{Store, StoreError};
use crate::jobs::{JobSettings, Jobs, Models, webhook};
use crate::server::{self, ApiSettings, AppState};

pub struct ServiceConfig {
    pub models_dir: PathBuf,
    pub engine: EngineConfig,
    /// Job store, uploads and results live here.
    pub data_dir: PathBuf,
    pub api: ApiSettings,
    pub jobs: JobSettings,
    /// Finished jobs' files are deleted after this long.
    pub retention: Duration,
    pub shutdown_grace: Duration,
}

pub fn store_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("slidegrade.db")
}

/// Opens the store, requeues jobs a dead process left running, and loads the models.
pub async fn build(config: &ServiceConfig) -> Result<Arc<AppState>, StoreError> {
    let store = Arc::new(Store::open(&store_path(&config.data_dir))?);
    let recovered = store.recover_interrupted(crate::jobs::MAX_ATTEMPTS)?;
    if recovered.requeued > 0 {
        tracing::warn!(
            requeued = recovered.requeued,
            "jobs left running by a previous process were queued again"
        );
    }
    if recovered.failed > 0 {
        tracing::error!(
            failed = recovered.failed,
            max_attempts = crate::jobs::MAX_ATTEMPTS,
            "jobs interrupted on every attempt were failed as `interrupted`"
        );
    }
    let (dir, engine) = (config.models_dir.clone(), config.engine.clone());
    let loaded = tokio::task::spawn_blocking(move || server::load_models(&dir, &engine))
        .await
        .unwrap_or_else(|_| server::LoadedModels {
            pools: Vec::new(),
            refused: Vec::new(),
        });
    let models = Arc::new(Models::new(loaded.pools));
    Ok(Arc::new(AppState {
        models: models.clone(),
        refused: loaded.refused,
        jobs: Jobs::new(store, models, config.jobs.clone()),
        api: config.api.clone(),
        viewer: crate::viewer::SlideTiles::default(),
    }))
}

/// Runs the whole service on `listener` until `shutdown` completes.
pub async fn run(
    state: Arc<AppState>,
    listener: TcpListener,
    retention: Duration,
    shutdown_grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = state.jobs.spawn_workers(stop_rx.clone());
    let deliveries = tokio::spawn(webhook::deliver_loop(
        state.jobs.store.clone(),
        state.jobs.settings.webhook.clone(),
        stop_rx.clone(),
    ));
    let cleaner = tokio::spawn(clean_up_loop(
        state.jobs.clone(),
        retention,
        stop_rx.clone(),
    ));

    let signal_tx = stop_tx.clone();
    let accepting = state.jobs.clone();
    let served = server::run(listener, state.clone(), async move {
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
    let _ = cleaner.await;
    tracing::info!("shut down");
    served
}

async fn clean_up_loop(jobs: Arc<Jobs>, retention: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        match jobs.clean_up(retention) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed expired job files"),
            Err(e) => tracing::error!(%e, "clean-up failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60).min(retention.max(Duration::from_secs(1)))) => {},
            _ = stop.changed() => return,
        }
    }
}
