//! Asynchronous grading jobs: the durable store, a pool of workers, and webhook delivery.
//!
//! A job is a row in the store before the API answers 202. Workers claim the oldest
//! queued job under a lease (see [`store`]), renew the lease while they grade it on a
//! blocking thread, write the outputs into the job's folder and record the outcome; a
//! finished job with a callback URL gets a signed webhook. The queue is bounded by
//! `queue_capacity` queued jobs: beyond it the API sheds load with 503.

pub mod outbox;
pub mod store;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::grade::pipeline::{GradeError, GradeOptions};
use crate::grader::{Grader, GraderError, MapsAndTables};
use crate::model::engine::EnginePool;

use crate::output::lims::ReportContext;
use crate::output::report::ReportError;
use store::{Job, JobState, Store};

/// The models a server grades with, by name.
pub struct Models {
    pub pools: BTreeMap<String, Arc<EnginePool>>,
    /// Used when a request names no model (the rule: `model::registry::default_index`).
    pub default: Option<String>,
}

impl Models {
    pub fn new(pools: Vec<Arc<EnginePool>>) -> Models {
        let default = crate::model::registry::default_index(pools.iter().map(|p| p.manifest()))
            .map(|i| pools[i].manifest().name.clone());
        let pools = pools
            .into_iter()
            .map(|p| (p.manifest().name.clone(), p))
            .collect();
        Models { pools, default }
    }

    pub fn resolve(&self, name: Option<&str>) -> Option<(&str, &Arc<EnginePool>)> {
        let name = name.or(self.default.as_deref())?;
        self.pools.get_key_value(name).map(|(k, v)| (k.as_str(), v))
    }
}

/// What a running job should do when its stop flag is raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancel,
    Shutdown,
    /// The job's lease could not be renewed: another replica may hold it now.
    LeaseLost,
}

struct Running {
    flag: Arc<AtomicBool>,
    reason: Option<StopReason>,
}

#[derive(Clone)]
pub struct JobSettings {
    /// Grading workers. 0 accepts and queues jobs without grading them (maintenance).
    pub workers: usize,
    pub queue_capacity: u64,
    /// Folder for uploads and job outputs.
    pub data_dir: PathBuf,
    pub grade: GradeOptions,
    pub webhook: webhook::WebhookSettings,
    /// How long a claimed job stays this replica's without a heartbeat; renewed every
    /// third of it. A dead replica's jobs go back in the queue after this.
    pub lease: Duration,
    /// `host:port` of an MLLP receiver that gets every finished job's ORU^R01
    /// (`--mllp-results`), retried as webhooks are.
    pub hl7_results: Option<String>,
}

/// Starts a job may have. A job whose lease ran out was interrupted by a crash; after this
/// many starts it fails as `interrupted` instead of going back in the queue (see
/// [`store::Store::expire_leases`]).
pub const MAX_ATTEMPTS: u32 = 3;

/// In a job's output folder while its heatmaps and tile tables are still being written
/// (the job is already done: `result.json` and the overlay come first).
pub const OUTPUTS_PENDING: &str = "outputs.pending";
/// In a job's output folder when its heatmaps and tile tables could not be written; holds
/// the reason.
pub const OUTPUTS_ERROR: &str = "outputs.error";

pub struct Jobs {
    pub store: Arc<Store>,
    pub models: Arc<Models>,
    pub settings: JobSettings,
    /// This process's name as a lease owner.
    pub replica: String,
    wake: Arc<Notify>,
    running: Mutex<HashMap<String, Running>>,
    /// Cleared when shutdown starts: submissions are refused from then on, even while
    /// the HTTP server still finishes the connections it has.
    accepting: AtomicBool,
}

impl Jobs {
    pub fn new(store: Arc<Store>, models: Arc<Models>, settings: JobSettings) -> Arc<Jobs> {
        let wake = Arc::new(Notify::new());
        let announced = wake.clone();
        store.on_job_announced(move || announced.notify_one());
        Arc::new(Jobs {
            store,
            models,
            settings,
            replica: store::replica_name(),
            wake,
            running: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
        })
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.settings.data_dir.join("uploads")
    }

    pub fn results_dir(&self, id: &str) -> PathBuf {
        self.settings.data_dir.join("results").join(id)
    }

    /// Whether the queue can take another job.
    pub fn has_room(&self) -> Result<bool, store::StoreError> {
        Ok(self.store.count_in_state(JobState::Queued)? < self.settings.queue_capacity)
    }

    /// Whether new jobs are taken (false once shutdown has started).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Refuses new jobs from now on (shutdown).
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Wakes a worker after a job was queued.
    pub fn notify(&self) {
        self.refresh_queue_gauge();
        self.wake.notify_one();
    }

    fn refresh_queue_gauge(&self) {
        if let Ok(n) = self.store.count_in_state(JobState::Queued) {
            crate::telemetry::global().queue_depth.set(n as i64);
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cancels a job: a queued one at once, a running one at its next batch. Returns
    /// false when the job had already finished.
    pub fn cancel(&self, id: &str) -> Result<bool, store::StoreError> {
        if self.store.cancel_if_queued(id)? {
            self.refresh_queue_gauge();
            return Ok(true);
        }
        if let Some(run) = self.running().get_mut(id) {
            run.reason = Some(StopReason::Cancel);
            run.flag.store(true, Ordering::Relaxed);
            return Ok(true);
        }
        Ok(false)
    }

    pub fn running_count(&self) -> usize {
        self.running().len()
    }

    /// Starts the workers; they stop claiming jobs when `shutdown` turns true.
    pub fn spawn_workers(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.settings.workers)
            .map(|_| {
                let jobs = self.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { jobs.worker(shutdown).await })
            })
            .collect()
    }

    async fn worker(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let claimed = match self.store.claim_next(&self.replica, self.settings.lease) {
                Ok(job) => job,
                Err(e) => {
                    tracing::error!(%e, "cannot claim a job");
                    None
                }
            };
            let Some(job) = claimed else {
                // Poll as a fallback: a notify can be missed between the check and the wait.
                tokio::select! {
                    _ = self.wake.notified() => {},
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {},
                    _ = shutdown.changed() => {},
                }
                continue;
            };
            self.refresh_queue_gauge();
            let jobs = self.clone();
            let id = job.id.clone();
            let flag = Arc::new(AtomicBool::new(false));
            self.running().insert(
                id.clone(),
                Running {
                    flag: flag.clone(),
                    reason: None,
                },
            );
            let heartbeat = tokio::spawn(self.clone().heartbeat(id.clone()));
            let graded = tokio::task::spawn_blocking(move || jobs.run(job, flag)).await;
            heartbeat.abort();
            if let Err(e) = graded {
                tracing::error!(job = %id, %e, "grading thread panicked");
                self.running().remove(&id);
                let _ = self.store.finish(
                    &id,
                    &self.replica,
                    JobState::Failed,
                    Some(("internal error", "internal")),
                    &[],
                );
            }
        }
    }

    /// Renews the lease on a running job every third of its length. If the job is no
    /// longer this replica's (the lease ran out while the database was unreachable, and
    /// another replica took the job), the grading stops and its outcome is dropped.
    async fn heartbeat(self: Arc<Self>, id: String) {
        let lease = self.settings.lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            match self.store.renew_lease(&id, &self.replica, lease) {
                Ok(true) => {}
                Ok(false) => {
                    if let Some(run) = self.running().get_mut(&id) {
                        run.reason.get_or_insert(StopReason::LeaseLost);
                        run.flag.store(true, Ordering::Relaxed);
                    }
                    return;
                }
                // Keep trying: the lease has two more renewals' worth of slack.
                Err(e) => tracing::warn!(job = %id, %e, "cannot renew the job's lease"),
            }
        }
    }

    /// Asks running jobs to stop and go back to the queue (graceful shutdown after the
    /// grace period). They stop at their next batch.
    pub fn requeue_running(&self) {
        for run in self.running().values_mut() {
            run.reason = Some(StopReason::Shutdown);
            run.flag.store(true, Ordering::Relaxed);
        }
    }

    fn run(&self, job: Job, flag: Arc<AtomicBool>) {
        let started = Instant::now();
        let metrics = crate::telemetry::global();
        metrics.jobs_running.inc();
        tracing::info!(job = %job.id, attempt = job.attempts, "job started");
        let outcome = self.grade(&job, flag);
        metrics.jobs_running.dec();
        let reason = self.running().remove(&job.id).and_then(|r| r.reason);
        let (state, error, rest) = match outcome {
            Ok(rest) => (JobState::Done, None, Some(rest)),
            Err(GradeFailure::Grade(GraderError::Grade(GradeError::Stopped)))
                if reason == Some(StopReason::Shutdown) =>
            {
                if let Err(e) = self.store.release(&job.id, &self.replica) {
                    tracing::error!(job = %job.id, %e, "cannot requeue");
                }
                tracing::info!(job = %job.id, "job requeued for shutdown");
                return;
            }
            Err(GradeFailure::Grade(GraderError::Grade(GradeError::Stopped)))
                if reason == Some(StopReason::LeaseLost) =>
            {
                tracing::warn!(job = %job.id, "job's lease lost; its outcome is dropped");
                return;
            }
            Err(GradeFailure::Grade(GraderError::Grade(GradeError::Stopped))) => {
                (JobState::Cancelled, None, None)
            }
            Err(e) => (JobState::Failed, Some((e.to_string(), e.kind())), None),
        };
        let error_ref = error.as_ref().map(|(m, k)| (m.as_str(), *k));
        let mut callbacks = Vec::new();
        if let Some(url) = job.request.callback_url.as_deref() {
            callbacks.push(store::Callback {
                outbox: store::Outbox::Webhook,
                url,
                payload: &webhook::payload,
            });
        }
        if let Some(receiver) = self.settings.hl7_results.as_deref() {
            callbacks.push(store::Callback {
                outbox: store::Outbox::Hl7Results,
                url: receiver,
                payload: &hl7_result,
            });
        }
        match self
            .store
            .finish(&job.id, &self.replica, state, error_ref, &callbacks)
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(job = %job.id, "job's lease lost before its outcome was recorded; another replica owns it");
                return;
            }
            Err(e) => tracing::error!(job = %job.id, %e, "cannot record job outcome"),
        }
        metrics
            .jobs_finished
            .with_label_values(&[state.as_str()])
            .inc();
        tracing::info!(
            job = %job.id,
            state = state.as_str(),
            error_type = error.as_ref().map_or("", |e| e.1),
            seconds = started.elapsed().as_secs_f64(),
            "job finished"
        );
        // After `done` is recorded (and its webhook queued): the grade does not wait for
        // the heatmaps and tile tables (issue 16 §3).
        if let Some(rest) = rest {
            self.write_maps_and_tables(&job, rest);
        }
    }

    /// Grades the job's slide and writes `result.json` and the overlay; the rest of the
    /// outputs come back to be written after the job is recorded done.
    fn grade(&self, job: &Job, stop: Arc<AtomicBool>) -> Result<MapsAndTables, GradeFailure> {
        let (_, pool) = self
            .models
            .resolve(job.request.model.as_deref())
            .ok_or_else(|| GradeFailure::Model(job.request.model.clone().unwrap_or_default()))?;
        let options = GradeOptions {
            mpp_override: job.request.mpp,
            stop: Some(stop),
            ..self.settings.grade.clone()
        };
        let mut last_update = Instant::now();
        // Written before the job can be done, removed when the maps and tables are: a
        // client asking for them in between is told to retry (`http::results`).
        std::fs::create_dir_all(&job.out_dir)
            .and_then(|()| std::fs::write(job.out_dir.join(OUTPUTS_PENDING), b""))
            .map_err(|e| {
                GradeFailure::Grade(GraderError::Report(ReportError::Io {
                    path: job.out_dir.join(OUTPUTS_PENDING),
                    source: e,
                }))
            })?;
        let (_, rest) = Grader::new(pool, options).grade_deferring_outputs(
            &job.slide_path,
            &job.out_dir,
            &mut |done, total| {
                // Progress goes to the store at most twice a second, and always at the end.
                if done == total || last_update.elapsed() > Duration::from_millis(500) {
                    last_update = Instant::now();
                    let _ = self.store.set_progress(&job.id, done as u64, total as u64);
                }
            },
        )?;
        Ok(rest)
    }

    /// Writes a done job's heatmaps and tile tables, then removes the pending marker.
    /// A failure is recorded beside them (`outputs.error`), where the results routes
    /// report it, since the job's grade stands.
    fn write_maps_and_tables(&self, job: &Job, rest: MapsAndTables) {
        match rest.write() {
            Ok(ms) => tracing::info!(job = %job.id, ms, "heatmaps and tile tables written"),
            Err(e) => {
                tracing::error!(job = %job.id, %e, "cannot write the heatmaps and tile tables");
                let _ = std::fs::write(job.out_dir.join(OUTPUTS_ERROR), e.to_string());
            }
        }
        if let Err(e) = std::fs::remove_file(job.out_dir.join(OUTPUTS_PENDING)) {
            tracing::error!(job = %job.id, %e, "cannot remove the outputs' pending marker");
        }
    }

    /// Deletes the files of jobs finished more than `max_age` ago, and their uploads.
    /// Call it on one replica at a time (see `serve::service`).
    pub fn clean_up(&self, max_age: Duration) -> Result<usize, store::StoreError> {
        let before = store::now().saturating_sub(max_age.as_secs());
        let old = self.store.finished_before(before)?;
        for job in &old {
            remove_job_files(job);
            self.store.delete(&job.id)?;
        }
        Ok(old.len())
    }
}

/// The LIMS message context of a graded job: its record, its `result.json` and overlay.
pub fn report_context(
    job: &Job,
    report: &crate::output::report::GradeReport,
    overlay_png: Option<Vec<u8>>,
) -> ReportContext {
    ReportContext::from_report(
        job.id.clone(),
        job.request.order_identity(),
        finished_at(job),
        report,
        overlay_png,
    )
}

fn finished_at(job: &Job) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(job.finished_at.unwrap_or(job.created_at))
}

/// The ORU^R01 sent over MLLP for a finished job: the graded result, or result status X
/// with the reason when it failed or was cancelled.
fn hl7_result(job: &Job) -> String {
    let graded = (job.state == JobState::Done)
        .then(|| std::fs::read(job.out_dir.join("result.json")).ok())
        .flatten()
        .and_then(|bytes| {
            serde_json::from_slice::<crate::output::report::GradeReport>(&bytes).ok()
        });
    match graded {
        Some(report) => {
            let overlay = std::fs::read(job.out_dir.join("overlay.png")).ok();
            crate::output::lims::hl7::oru_r01(&report_context(job, &report, overlay))
        }
        None => {
            let reason = match (&job.error_type, &job.error) {
                (Some(kind), Some(message)) => format!("{kind}: {message}"),
                _ if job.state == JobState::Cancelled => "cancelled".to_string(),
                _ => "no result could be produced".to_string(),
            };
            crate::output::lims::hl7::oru_r01_failed(
                &job.id,
                &job.request.order_identity(),
                finished_at(job),
                &reason,
            )
        }
    }
}

/// Removes a job's outputs and, if the store owns it, its uploaded slide.
pub fn remove_job_files(job: &Job) {
    let _ = std::fs::remove_dir_all(&job.out_dir);
    if job.uploaded
        && let Some(dir) = job.slide_path.parent()
    {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[derive(Debug, thiserror::Error)]
enum GradeFailure {
    #[error(transparent)]
    Grade(#[from] GraderError),
    #[error("model `{0}` is not loaded")]
    Model(String),
}

impl GradeFailure {
    fn kind(&self) -> &'static str {
        match self {
            GradeFailure::Grade(e) => e.kind(),
            GradeFailure::Model(_) => "model_not_found",
        }
    }
}
