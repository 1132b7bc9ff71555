//! The durable job store, on SQLite (embedded, the default) or PostgreSQL (shared by
//! many replicas); see [`db`] for how one set of statements serves both.
//!
//! Every accepted job is a row before the API answers 202, so a `kill -9` loses nothing.
//! Work is handed out by **leases**: a replica claims a queued job atomically (on
//! PostgreSQL with `FOR UPDATE SKIP LOCKED`, so replicas never wait on each other's
//! claims), stamps it with its own name and a lease deadline, and renews the lease while
//! it grades. A replica that dies stops renewing; once the lease runs out, any replica
//! puts the job back in the queue (or fails it after too many attempts). Starting a
//! replica therefore never touches jobs that live replicas hold. Webhook attempts and the
//! retention clean-up are leased the same way, so each runs on one replica at a time.

pub mod db;
mod migrations;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use db::now_ms;
use db::{Backend, Dialect, Row, Sql};
pub use db::{StoreError, now};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state stored as `s`, or `None` for a value this build does not know (a newer
    /// schema, or a damaged row): that is an error, never silently "failed".
    fn parse(s: &str) -> Option<JobState> {
        match s {
            "queued" => Some(JobState::Queued),
            "running" => Some(JobState::Running),
            "done" => Some(JobState::Done),
            "failed" => Some(JobState::Failed),
            "cancelled" => Some(JobState::Cancelled),
            _ => None,
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

/// What a client asked for; stored with the job. It is also the optional part of a
/// submission's body (the JSON form flattens it beside `path`, the multipart form sends
/// each as a text field).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobRequest {
    /// A loaded model's name (`GET /v1/models`); default: the server's default model.
    pub model: Option<String>,
    /// Level-0 µm per pixel, for slides that do not record it (overrides the metadata).
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1000.0)]
    pub mpp: Option<f64>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    pub accession_number: Option<String>,
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    pub specimen_id: Option<String>,
    /// The LIS's patient identifier (HL7 PID-3, FHIR Patient identifier). Stored with the
    /// job and echoed in the ORU^R01 and the FHIR Bundle; never logged.
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    pub patient_id: Option<String>,
    /// The patient's name as `Family, Given` (or a family name alone): HL7 PID-5, FHIR
    /// Reference display. Used only with `patient_id` (a name identifies no one); never
    /// logged.
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    pub patient_name: Option<String>,
    /// The LIS's order number (ORC-2 and OBR-2; default: the accession number).
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    pub placer_order_number: Option<String>,
    /// The lab system's order number (ORC-3 and OBR-3; default: the job id).
    #[schema(max_length = 128, pattern = "^[^|^~\\\\&\\r\\n]*$")]
    pub filler_order_number: Option<String>,
    /// An http(s) URL that gets the finished job, signed (`POST /v1/slides` only; the
    /// server needs `--webhook-secret`).
    #[schema(pattern = "^https?://[^/]+")]
    pub callback_url: Option<String>,
}

impl JobRequest {
    /// The patient and order identity, as the result messages echo it.
    pub fn order_identity(&self) -> crate::output::lims::OrderIdentity {
        crate::output::lims::OrderIdentity {
            accession_number: self.accession_number.clone(),
            specimen_id: self.specimen_id.clone(),
            patient_id: self.patient_id.clone(),
            patient_name: self.patient_name.clone(),
            placer_order_number: self.placer_order_number.clone(),
            filler_order_number: self.filler_order_number.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    pub id: String,
    pub state: JobState,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// File name only; the full path stays server-side.
    pub slide_name: String,
    #[serde(skip)]
    pub slide_path: PathBuf,
    /// Whether the slide was uploaded (the store owns and later deletes it).
    #[serde(skip)]
    pub uploaded: bool,
    #[serde(flatten)]
    pub request: JobRequest,
    pub progress_done: u64,
    pub progress_total: u64,
    pub error: Option<String>,
    pub error_type: Option<String>,
    pub attempts: u32,
    /// The replica grading the job, or that graded it (`host-pid-random`).
    pub worker: Option<String>,
    #[serde(skip)]
    pub out_dir: PathBuf,
}

/// A webhook delivery waiting or done.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub job_id: String,
    pub url: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(skip)]
    pub payload: String,
}

/// What an API key may do. Each role includes the ones before it (derived order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    Read,
    Submit,
    Admin,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Read => "read",
            KeyRole::Submit => "submit",
            KeyRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<KeyRole> {
        match s {
            "read" => Some(KeyRole::Read),
            "submit" => Some(KeyRole::Submit),
            "admin" => Some(KeyRole::Admin),
            _ => None,
        }
    }
}

/// Where the store lives: `--database-url`, or the SQLite file in the data folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL (may hold a password: never log it whole).
    Postgres(String),
}

impl StoreLocation {
    /// `database_url` if given (it must be a PostgreSQL URL), else SQLite in `data_dir`.
    pub fn new(data_dir: &Path, database_url: Option<&str>) -> Result<StoreLocation, StoreError> {
        match database_url {
            None => Ok(StoreLocation::Sqlite(store_path(data_dir))),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(StoreLocation::Postgres(url.to_string()))
            }
            Some(url) => Err(StoreError::Open {
                location: db::redact(url),
                detail: "--database-url must start with postgres:// or postgresql:// (without it, the store is SQLite in --data-dir)".into(),
            }),
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreLocation::Postgres(url) => f.write_str(&db::redact(url)),
        }
    }
}

pub struct Store {
    backend: Backend,
}

fn deadline_ms(lease: Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

/// The PostgreSQL channel a new or requeued job is announced on.
pub const JOBS_CHANNEL: &str = "slidegrade_jobs";

const JOB_COLUMNS: &str = "id, state, created_at, started_at, finished_at, slide_path, slide_name, uploaded, \
     model, mpp, accession_number, specimen_id, callback_url, progress_done, progress_total, \
     error, error_type, attempts, out_dir, lease_owner, patient_id, patient_name, \
     placer_order_number, filler_order_number";

const DELIVERY_COLUMNS: &str =
    "job_id, url, state, attempts, next_attempt_at, last_status, last_error, payload";

fn delivery_from_row(r: &Row) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        job_id: r.text(0)?,
        url: r.text(1)?,
        state: r.text(2)?,
        attempts: r.count(3)?,
        next_attempt_at: r.count(4)?,
        last_status: r.opt_count(5)?,
        last_error: r.opt_text(6)?,
        payload: r.text(7)?,
    })
}

fn job_from_row(row: &Row) -> Result<Job, StoreError> {
    let state = row.text(1)?;
    Ok(Job {
        id: row.text(0)?,
        state: JobState::parse(&state)
            .ok_or_else(|| StoreError::Decode(format!("unknown job state `{state}`")))?,
        created_at: row.count(2)?,
        started_at: row.opt_count(3)?,
        finished_at: row.opt_count(4)?,
        slide_path: PathBuf::from(row.text(5)?),
        slide_name: row.text(6)?,
        uploaded: row.int(7)? != 0,
        request: JobRequest {
            model: row.opt_text(8)?,
            mpp: row.opt_real(9)?,
            accession_number: row.opt_text(10)?,
            specimen_id: row.opt_text(11)?,
            callback_url: row.opt_text(12)?,
            patient_id: row.opt_text(20)?,
            patient_name: row.opt_text(21)?,
            placer_order_number: row.opt_text(22)?,
            filler_order_number: row.opt_text(23)?,
        },
        progress_done: row.count(13)?,
        progress_total: row.count(14)?,
        error: row.opt_text(15)?,
        error_type: row.opt_text(16)?,
        attempts: row.count(17)?,
        out_dir: PathBuf::from(row.text(18)?),
        worker: row.opt_text(19)?,
    })
}

fn jobs_from_rows(rows: Vec<Row>) -> Result<Vec<Job>, StoreError> {
    rows.iter().map(job_from_row).collect()
}

fn select_job(db: &mut dyn Sql, id: &str) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    db.query_opt(&sql, &[id.into()])?
        .as_ref()
        .map(job_from_row)
        .transpose()
}

/// `FOR UPDATE SKIP LOCKED` where the dialect has it: concurrent claimers on PostgreSQL
/// each skip the rows another is taking instead of queueing behind its lock. SQLite has
/// one writer at a time, so its claims are serial anyway.
fn skip_locked(db: &dyn Sql) -> &'static str {
    match db.dialect() {
        Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    }
}

/// Tells the other replicas that a job is waiting (PostgreSQL only; a SQLite store is
/// used by one process, whose workers are woken in memory).
fn announce_job(db: &mut dyn Sql) -> Result<(), StoreError> {
    if db.dialect() == Dialect::Postgres {
        db.execute(&format!("NOTIFY {JOBS_CHANNEL}"), &[])?;
    }
    Ok(())
}

/// The outcome of inserting a job with an idempotency key.
#[derive(Debug)]
pub enum Insert {
    Created(Job),
    /// Same key, same request: the earlier job.
    Existing(Job),
    /// Same key, different request.
    Conflict,
}

/// A new job's fields.
pub struct NewJob<'a> {
    pub id: &'a str,
    pub slide_path: &'a Path,
    pub slide_name: &'a str,
    pub uploaded: bool,
    pub request: &'a JobRequest,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: &'a str,
    pub out_dir: &'a Path,
}

/// What [`Store::expire_leases`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Jobs put back in the queue.
    pub requeued: u64,
    /// Jobs failed as `interrupted` after too many attempts.
    pub failed: u64,
}

/// Where finished jobs' messages wait to be delivered, each attempt leased and recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbox {
    /// Signed JSON events POSTed to `callback_url`.
    Webhook,
    /// ORU^R01 messages sent over MLLP to `--mllp-results`.
    Hl7Results,
}

impl Outbox {
    fn table(self) -> &'static str {
        match self {
            Outbox::Webhook => "webhooks",
            Outbox::Hl7Results => "hl7_results",
        }
    }
}

/// One delivery attempt as recorded: `state` is `pending` (retry at `next_attempt_at`),
/// `delivered` or `failed` (gave up); the receiver's status code and the error, if any.
pub struct AttemptRecord<'a> {
    pub state: &'a str,
    pub next_attempt_at: u64,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
}

/// A finished job's message to deliver, queued in the same transaction that records the
/// outcome.
pub struct Callback<'a> {
    pub outbox: Outbox,
    /// Where to: the callback URL, or the MLLP receiver's `host:port`.
    pub url: &'a str,
    /// The event body, built from the finished job.
    pub payload: &'a dyn Fn(&Job) -> String,
}

impl Store {
    /// Opens (and migrates) the store at `location`.
    pub fn open_at(location: &StoreLocation) -> Result<Store, StoreError> {
        let backend = match location {
            StoreLocation::Sqlite(path) => db::open_sqlite(path)?,
            // Enough clients for the workers, the webhook loop and a few requests at once.
            StoreLocation::Postgres(url) => {
                Backend::Postgres(Box::new(db::PgPool::connect(url, 8)?))
            }
        };
        let store = Store { backend };
        let applied = store.backend.transaction(migrations::apply)?;
        if !applied.is_empty() {
            tracing::info!(store = %location, versions = ?applied, "job store schema migrated");
        }
        Ok(store)
    }

    /// Opens the SQLite store file at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_at(&StoreLocation::Sqlite(path.to_path_buf()))
    }

    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Calls `wake` whenever another replica queues a job (PostgreSQL `LISTEN`). A no-op
    /// on SQLite.
    pub fn on_job_announced(&self, wake: impl Fn() + Send + Sync + 'static) {
        if let Backend::Postgres(pool) = &self.backend {
            pool.listen(JOBS_CHANNEL, wake);
        }
    }

    /// Writes a throwaway row to prove the store accepts writes (for `/readyz`).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.backend.transaction(|db| {
            db.execute("DELETE FROM probe", &[])?;
            db.execute("INSERT INTO probe (t) VALUES (?1)", &[now().into()])?;
            Ok(())
        })
    }

    /// Jobs whose lease ran out: their replica died (or lost the database for longer
    /// than the lease). The attempt that died was counted when it claimed the job; jobs
    /// already started `max_attempts` times fail with `interrupted`, so that a slide that
    /// kills the process (a decoder crash deep in its tiles) cannot take down replica
    /// after replica; the others go back in the queue. Jobs left `running` by a build
    /// from before leases have no deadline and count as expired.
    pub fn expire_leases(&self, max_attempts: u32) -> Result<Recovered, StoreError> {
        self.backend.transaction(|db| {
            let expired = "state = 'running' AND (lease_until_ms IS NULL OR lease_until_ms < ?1)";
            let failed = db.execute(
                &format!(
                    "UPDATE jobs SET state = 'failed', finished_at = ?3, error_type = 'interrupted',
                         error = 'the server stopped while grading this job ' || attempts ||
                                 ' times (it may crash the slide decoder); not retried',
                         lease_owner = NULL, lease_until_ms = NULL
                     WHERE {expired} AND attempts >= ?2"
                ),
                &[now_ms().into(), max_attempts.into(), now().into()],
            )?;
            let requeued = db.execute(
                &format!(
                    "UPDATE jobs SET state = 'queued', started_at = NULL, lease_owner = NULL,
                         lease_until_ms = NULL
                     WHERE {expired}"
                ),
                &[now_ms().into()],
            )?;
            if requeued > 0 {
                announce_job(db)?;
            }
            Ok(Recovered { requeued, failed })
        })
    }

    pub fn count_in_state(&self, state: JobState) -> Result<u64, StoreError> {
        self.backend.run(|db| {
            db.query_opt(
                "SELECT COUNT(*) FROM jobs WHERE state = ?1",
                &[state.as_str().into()],
            )?
            .map_or(Ok(0), |row| row.count(0))
        })
    }

    /// Inserts a job, or resolves its idempotency key against an earlier one. The key is
    /// unique in the schema, so the same key sent to two replicas at once makes one job:
    /// the second insert does nothing and reads the first one's row.
    pub fn insert(&self, job: &NewJob) -> Result<Insert, StoreError> {
        let r = job.request;
        self.backend.run(|db| {
            let sql = format!(
                "INSERT INTO jobs (id, state, created_at, slide_path, slide_name, uploaded, model, mpp,
                    accession_number, specimen_id, callback_url, idempotency_key, request_hash, out_dir,
                    patient_id, patient_name, placer_order_number, filler_order_number)
                 VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                    ?16, ?17)
                 ON CONFLICT (idempotency_key) DO NOTHING
                 RETURNING {JOB_COLUMNS}"
            );
            let params = [
                job.id.into(),
                now().into(),
                job.slide_path.to_string_lossy().into_owned().into(),
                job.slide_name.into(),
                job.uploaded.into(),
                r.model.as_deref().into(),
                r.mpp.into(),
                r.accession_number.as_deref().into(),
                r.specimen_id.as_deref().into(),
                r.callback_url.as_deref().into(),
                job.idempotency_key.into(),
                job.request_hash.into(),
                job.out_dir.to_string_lossy().into_owned().into(),
                r.patient_id.as_deref().into(),
                r.patient_name.as_deref().into(),
                r.placer_order_number.as_deref().into(),
                r.filler_order_number.as_deref().into(),
            ];
            if let Some(row) = db.query_opt(&sql, &params)? {
                announce_job(db)?;
                return Ok(Insert::Created(job_from_row(&row)?));
            }
            // Only the idempotency key can conflict: ids are fresh UUIDs.
            let sql = format!("SELECT {JOB_COLUMNS}, request_hash FROM jobs WHERE idempotency_key = ?1");
            let row = db
                .query_opt(&sql, &[job.idempotency_key.into()])?
                .ok_or_else(|| StoreError::Decode("an insert conflicted with no row".into()))?;
            if row.opt_text(24)?.as_deref() != Some(job.request_hash) {
                return Ok(Insert::Conflict);
            }
            Ok(Insert::Existing(job_from_row(&row)?))
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.backend.run(|db| select_job(db, id))
    }

    pub fn list_recent(&self, limit: u32) -> Result<Vec<Job>, StoreError> {
        self.backend.run(|db| {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?1"
            );
            jobs_from_rows(db.query(&sql, &[limit.into()])?)
        })
    }

    /// Atomically moves the oldest queued job to `running`, leased to `owner` for
    /// `lease`, and returns it.
    pub fn claim_next(&self, owner: &str, lease: Duration) -> Result<Option<Job>, StoreError> {
        self.backend.run(|db| {
            let sql = format!(
                "UPDATE jobs SET state = 'running', started_at = ?1, attempts = attempts + 1,
                     lease_owner = ?2, lease_until_ms = ?3
                 WHERE id = (SELECT id FROM jobs WHERE state = 'queued'
                             ORDER BY created_at, rowid LIMIT 1{})
                 RETURNING {JOB_COLUMNS}",
                skip_locked(db)
            );
            db.query_opt(
                &sql,
                &[now().into(), owner.into(), deadline_ms(lease).into()],
            )?
            .as_ref()
            .map(job_from_row)
            .transpose()
        })
    }

    /// Extends `owner`'s lease on a running job. False when the lease is no longer
    /// `owner`'s (it expired and the job was requeued or taken by another replica, or
    /// the job was deleted): the grading must stop and its outcome be dropped.
    pub fn renew_lease(&self, id: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        let n = self.backend.run(|db| {
            db.execute(
                "UPDATE jobs SET lease_until_ms = ?3
                 WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
                &[id.into(), owner.into(), deadline_ms(lease).into()],
            )
        })?;
        Ok(n == 1)
    }

    pub fn set_progress(&self, id: &str, done: u64, total: u64) -> Result<(), StoreError> {
        self.backend.run(|db| {
            db.execute(
                "UPDATE jobs SET progress_done = ?2, progress_total = ?3 WHERE id = ?1",
                &[id.into(), done.into(), total.into()],
            )
        })?;
        Ok(())
    }

    /// Records the outcome of `owner`'s attempt at a job (`error` is `(message,
    /// error_type)` for failures; the job keeps `owner` as its `worker`) and, in the same
    /// transaction, queues its webhook, so a
    /// crash cannot keep one without the other. False when `owner` no longer holds the
    /// job's lease: another replica has it now, and this outcome is dropped.
    pub fn finish(
        &self,
        id: &str,
        owner: &str,
        state: JobState,
        error: Option<(&str, &str)>,
        callbacks: &[Callback<'_>],
    ) -> Result<bool, StoreError> {
        self.backend.transaction(|db| {
            let n = db.execute(
                "UPDATE jobs SET state = ?2, finished_at = ?3, error = ?4, error_type = ?5,
                     lease_until_ms = NULL
                 WHERE id = ?1 AND state = 'running' AND lease_owner = ?6",
                &[
                    id.into(),
                    state.as_str().into(),
                    now().into(),
                    error.map(|e| e.0).into(),
                    error.map(|e| e.1).into(),
                    owner.into(),
                ],
            )?;
            if n == 0 {
                return Ok(false);
            }
            if callbacks.is_empty() {
                return Ok(true);
            }
            let Some(finished) = select_job(db, id)? else {
                return Ok(true);
            };
            for callback in callbacks {
                let sql = format!(
                    "INSERT INTO {} (job_id, url, state, attempts, next_attempt_at, payload)
                     VALUES (?1, ?2, 'pending', 0, ?3, ?4)
                     ON CONFLICT (job_id) DO UPDATE SET url = excluded.url, state = 'pending',
                         attempts = 0, next_attempt_at = excluded.next_attempt_at,
                         payload = excluded.payload, lease_owner = NULL, lease_until_ms = NULL",
                    callback.outbox.table()
                );
                db.execute(
                    &sql,
                    &[
                        id.into(),
                        callback.url.into(),
                        now().into(),
                        (callback.payload)(&finished).into(),
                    ],
                )?;
            }
            Ok(true)
        })
    }

    /// Puts `owner`'s running job back in the queue (graceful shutdown before it
    /// finished), so that any replica can take it at once instead of after the lease.
    pub fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        self.backend.run(|db| {
            let n = db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL, lease_owner = NULL,
                     lease_until_ms = NULL
                 WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
                &[id.into(), owner.into()],
            )?;
            if n > 0 {
                announce_job(db)?;
            }
            Ok(())
        })
    }

    /// Cancels a queued job in one statement (so a worker cannot claim it meanwhile).
    /// Returns false if the job was not queued.
    pub fn cancel_if_queued(&self, id: &str) -> Result<bool, StoreError> {
        let n = self.backend.run(|db| {
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1 AND state = 'queued'",
                &[id.into(), now().into()],
            )
        })?;
        Ok(n == 1)
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.backend.transaction(|db| {
            db.execute("DELETE FROM webhooks WHERE job_id = ?1", &[id.into()])?;
            db.execute("DELETE FROM hl7_results WHERE job_id = ?1", &[id.into()])?;
            db.execute("DELETE FROM jobs WHERE id = ?1", &[id.into()])?;
            Ok(())
        })
    }

    /// Finished jobs older than `before` (unix seconds), for file clean-up.
    pub fn finished_before(&self, before: u64) -> Result<Vec<Job>, StoreError> {
        self.backend.run(|db| {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs
                 WHERE state IN ('done', 'failed', 'cancelled') AND finished_at < ?1"
            );
            jobs_from_rows(db.query(&sql, &[before.into()])?)
        })
    }

    /// Takes (or renews) the named lock for `owner` until `lease` from now. False while
    /// another owner holds it unexpired. For work that must run on one replica at a time.
    pub fn try_lock(&self, name: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        self.backend.run(|db| {
            let won = db.query_opt(
                "INSERT INTO locks (name, owner, until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms
                 WHERE locks.until_ms < ?4 OR locks.owner = excluded.owner
                 RETURNING owner",
                &[name.into(), owner.into(), deadline_ms(lease).into(), now_ms().into()],
            )?;
            Ok(won.is_some())
        })
    }

    /// Claims the next due delivery in `outbox` for `owner` until `lease` from now, so
    /// that no other replica sends it meanwhile.
    pub fn claim_delivery(
        &self,
        outbox: Outbox,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Delivery>, StoreError> {
        self.backend.run(|db| {
            let free = "(lease_until_ms IS NULL OR lease_until_ms < ?4)";
            let sql = format!(
                "UPDATE {table} SET lease_owner = ?1, lease_until_ms = ?2
                 WHERE job_id = (SELECT job_id FROM {table}
                                 WHERE state = 'pending' AND next_attempt_at <= ?3 AND {free}
                                 ORDER BY next_attempt_at LIMIT 1{})
                   AND {free}
                 RETURNING {DELIVERY_COLUMNS}",
                skip_locked(db),
                table = outbox.table(),
            );
            db.query_opt(
                &sql,
                &[
                    owner.into(),
                    deadline_ms(lease).into(),
                    now().into(),
                    now_ms().into(),
                ],
            )?
            .as_ref()
            .map(delivery_from_row)
            .transpose()
        })
    }

    pub fn delivery(&self, outbox: Outbox, job_id: &str) -> Result<Option<Delivery>, StoreError> {
        self.backend.run(|db| {
            let sql = format!(
                "SELECT {DELIVERY_COLUMNS} FROM {} WHERE job_id = ?1",
                outbox.table()
            );
            db.query_opt(&sql, &[job_id.into()])?
                .as_ref()
                .map(delivery_from_row)
                .transpose()
        })
    }

    /// Records `owner`'s attempt at a delivery in `outbox` and releases its lease: `state` is `pending`
    /// (retry at `next_attempt_at`), `delivered` or `failed` (gave up). False when the
    /// lease had run out and another replica took the delivery over.
    pub fn record_attempt(
        &self,
        outbox: Outbox,
        job_id: &str,
        owner: &str,
        attempt: &AttemptRecord<'_>,
    ) -> Result<bool, StoreError> {
        let n = self.backend.run(|db| {
            let sql = format!(
                "UPDATE {} SET state = ?2, attempts = attempts + 1, next_attempt_at = ?3,
                     last_status = ?4, last_error = ?5, lease_owner = NULL, lease_until_ms = NULL
                 WHERE job_id = ?1 AND lease_owner = ?6",
                outbox.table()
            );
            db.execute(
                &sql,
                &[
                    job_id.into(),
                    attempt.state.into(),
                    attempt.next_attempt_at.into(),
                    attempt.status.map(u32::from).into(),
                    attempt.error.into(),
                    owner.into(),
                ],
            )
        })?;
        Ok(n == 1)
    }

    pub fn add_key(&self, hash: &str, name: &str, role: KeyRole) -> Result<(), StoreError> {
        self.backend.run(|db| {
            db.execute(
                "INSERT INTO api_keys (hash, name, role, created_at) VALUES (?1, ?2, ?3, ?4)",
                &[hash.into(), name.into(), role.as_str().into(), now().into()],
            )
        })?;
        Ok(())
    }

    pub fn key_role(&self, hash: &str) -> Result<Option<(String, KeyRole)>, StoreError> {
        let row = self.backend.run(|db| {
            db.query_opt(
                "SELECT name, role FROM api_keys WHERE hash = ?1",
                &[hash.into()],
            )
        })?;
        let Some(row) = row else { return Ok(None) };
        Ok(KeyRole::parse(&row.text(1)?).map(|role| (row.text(0).unwrap_or_default(), role)))
    }

    pub fn list_keys(&self) -> Result<Vec<(String, KeyRole, u64)>, StoreError> {
        let rows = self.backend.run(|db| {
            db.query(
                "SELECT name, role, created_at FROM api_keys ORDER BY created_at",
                &[],
            )
        })?;
        let mut keys = Vec::new();
        for row in rows {
            if let Some(role) = KeyRole::parse(&row.text(1)?) {
                keys.push((row.text(0)?, role, row.count(2)?));
            }
        }
        Ok(keys)
    }

    pub fn revoke_key(&self, name: &str) -> Result<u64, StoreError> {
        self.backend
            .run(|db| db.execute("DELETE FROM api_keys WHERE name = ?1", &[name.into()]))
    }
}

/// Where the SQLite store lives in a data folder.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("slidegrade.db")
}

/// A name for this process as a lease owner: host, pid and a random part (a pid is
/// reused after a restart; the random part keeps a restarted replica from mistaking the
/// dead one's leases for its own).
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}
