//! The durable job store: SQLite in WAL mode.
//!
//! Every accepted job is a row before the API answers 202, so a `kill -9` loses nothing:
//! on start-up, jobs left `running` by a dead process go back to `queued`. One connection
//! behind a mutex is enough here: statements take microseconds to milliseconds and the
//! grading work itself happens outside the lock.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

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
    /// An http(s) URL that gets the finished job, signed (`POST /v1/slides` only; the
    /// server needs `--webhook-secret`).
    #[schema(pattern = "^https?://[^/]+")]
    pub callback_url: Option<String>,
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open the job store at {path}: {detail}")]
    Open { path: PathBuf, detail: String },
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Sqlite(_) => "store_error",
            StoreError::Open { .. } => "store_unavailable",
        }
    }
}

pub struct Store {
    conn: Mutex<Connection>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    slide_path TEXT NOT NULL,
    slide_name TEXT NOT NULL,
    uploaded INTEGER NOT NULL,
    model TEXT,
    mpp REAL,
    accession_number TEXT,
    specimen_id TEXT,
    callback_url TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    progress_done INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_type TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    out_dir TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, created_at);
CREATE TABLE IF NOT EXISTS webhooks (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
";

const JOB_COLUMNS: &str = "id, state, created_at, started_at, finished_at, slide_path, slide_name, uploaded, \
     model, mpp, accession_number, specimen_id, callback_url, progress_done, progress_total, \
     error, error_type, attempts, out_dir";

fn delivery_from_row(r: &Row) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        job_id: r.get(0)?,
        url: r.get(1)?,
        state: r.get(2)?,
        attempts: r.get(3)?,
        next_attempt_at: r.get(4)?,
        last_status: r.get(5)?,
        last_error: r.get(6)?,
        payload: r.get(7)?,
    })
}

fn job_from_row(row: &Row) -> rusqlite::Result<Job> {
    Ok(Job {
        id: row.get(0)?,
        state: {
            let text: String = row.get(1)?;
            JobState::parse(&text).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Text,
                    format!("unknown job state `{text}`").into(),
                )
            })?
        },
        created_at: row.get(2)?,
        started_at: row.get(3)?,
        finished_at: row.get(4)?,
        slide_path: PathBuf::from(row.get::<_, String>(5)?),
        slide_name: row.get(6)?,
        uploaded: row.get(7)?,
        request: JobRequest {
            model: row.get(8)?,
            mpp: row.get(9)?,
            accession_number: row.get(10)?,
            specimen_id: row.get(11)?,
            callback_url: row.get(12)?,
        },
        progress_done: row.get(13)?,
        progress_total: row.get(14)?,
        error: row.get(15)?,
        error_type: row.get(16)?,
        attempts: row.get(17)?,
        out_dir: PathBuf::from(row.get::<_, String>(18)?),
    })
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

/// What [`Store::recover_interrupted`] did at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Jobs put back in the queue.
    pub requeued: usize,
    /// Jobs failed as `interrupted` after too many attempts.
    pub failed: usize,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_error = |detail: String| StoreError::Open {
            path: path.to_path_buf(),
            detail,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_error(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|e| open_error(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL is durable across process crashes in WAL mode; only a power cut can lose
        // the last transactions, which the job queue tolerates (the client retries).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a throwaway row to prove the store accepts writes (for `/readyz`).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute_batch(
            "BEGIN; CREATE TABLE IF NOT EXISTS probe (t INTEGER); DELETE FROM probe; INSERT INTO probe VALUES (1); COMMIT;",
        )?;
        Ok(())
    }

    /// Jobs a previous process left `running`: it died mid-job (a graceful shutdown puts
    /// its jobs back in the queue itself). Those already started `max_attempts` times fail
    /// with `interrupted`, so that a slide that kills the process (a decoder crash deep in
    /// its tiles) cannot take down every restart; the others go back in the queue.
    pub fn recover_interrupted(&self, max_attempts: u32) -> Result<Recovered, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let failed = tx.execute(
            "UPDATE jobs SET state = 'failed', finished_at = ?2, error_type = 'interrupted',
                 error = 'the server stopped while grading this job ' || attempts ||
                         ' times (it may crash the slide decoder); not retried'
             WHERE state = 'running' AND attempts >= ?1",
            params![max_attempts, now()],
        )?;
        let requeued = tx.execute(
            "UPDATE jobs SET state = 'queued', started_at = NULL WHERE state = 'running'",
            [],
        )?;
        tx.commit()?;
        Ok(Recovered { requeued, failed })
    }

    pub fn count_in_state(&self, state: JobState) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM jobs WHERE state = ?1",
            [state.as_str()],
            |r| r.get(0),
        )?)
    }

    /// Inserts a job, or resolves its idempotency key against an earlier one.
    pub fn insert(&self, job: &NewJob) -> Result<Insert, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(key) = job.idempotency_key {
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT id, request_hash FROM jobs WHERE idempotency_key = ?1",
                    [key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((id, hash)) = existing {
                if hash != job.request_hash {
                    return Ok(Insert::Conflict);
                }
                let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
                let found = tx.query_row(&sql, [id], job_from_row)?;
                return Ok(Insert::Existing(found));
            }
        }
        let r = job.request;
        tx.execute(
            "INSERT INTO jobs (id, state, created_at, slide_path, slide_name, uploaded, model, mpp,
                accession_number, specimen_id, callback_url, idempotency_key, request_hash, out_dir)
             VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                job.id,
                now(),
                job.slide_path.to_string_lossy(),
                job.slide_name,
                job.uploaded,
                r.model,
                r.mpp,
                r.accession_number,
                r.specimen_id,
                r.callback_url,
                job.idempotency_key,
                job.request_hash,
                job.out_dir.to_string_lossy(),
            ],
        )?;
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
        let created = tx.query_row(&sql, [job.id], job_from_row)?;
        tx.commit()?;
        Ok(Insert::Created(created))
    }

    pub fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
        Ok(self.conn().query_row(&sql, [id], job_from_row).optional()?)
    }

    pub fn list_recent(&self, limit: u32) -> Result<Vec<Job>, StoreError> {
        let conn = self.conn();
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?1");
        let mut stmt = conn.prepare(&sql)?;
        let jobs = stmt
            .query_map([limit], job_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(jobs)
    }

    /// Atomically moves the oldest queued job to `running` and returns it.
    pub fn claim_next(&self) -> Result<Option<Job>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "UPDATE jobs SET state = 'running', started_at = ?1, attempts = attempts + 1
             WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, rowid LIMIT 1)
             RETURNING {JOB_COLUMNS}"
        );
        Ok(conn.query_row(&sql, [now()], job_from_row).optional()?)
    }

    pub fn set_progress(&self, id: &str, done: u64, total: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET progress_done = ?2, progress_total = ?3 WHERE id = ?1",
            params![id, done, total],
        )?;
        Ok(())
    }

    /// Records a finished job. `error` is `(message, error_type)` for failures.
    pub fn finish(
        &self,
        id: &str,
        state: JobState,
        error: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET state = ?2, finished_at = ?3, error = ?4, error_type = ?5 WHERE id = ?1",
            params![id, state.as_str(), now(), error.map(|e| e.0), error.map(|e| e.1)],
        )?;
        Ok(())
    }

    /// Puts a running job back in the queue (graceful shutdown before it finished).
    pub fn requeue(&self, id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET state = 'queued', started_at = NULL WHERE id = ?1 AND state = 'running'",
            [id],
        )?;
        Ok(())
    }

    /// Cancels a queued job in one statement (so a worker cannot claim it meanwhile).
    /// Returns false if the job was not queued.
    pub fn cancel_if_queued(&self, id: &str) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1 AND state = 'queued'",
            params![id, now()],
        )?;
        Ok(n == 1)
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute("DELETE FROM webhooks WHERE job_id = ?1", [id])?;
        conn.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Finished jobs older than `before` (unix seconds), for file clean-up.
    pub fn finished_before(&self, before: u64) -> Result<Vec<Job>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished_at < ?1"
        );
        let mut stmt = conn.prepare(&sql)?;
        let jobs = stmt
            .query_map([before], job_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(jobs)
    }

    pub fn enqueue_delivery(
        &self,
        job_id: &str,
        url: &str,
        payload: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO webhooks (job_id, url, state, attempts, next_attempt_at, payload)
             VALUES (?1, ?2, 'pending', 0, ?3, ?4)",
            params![job_id, url, now(), payload],
        )?;
        Ok(())
    }

    pub fn due_deliveries(&self, at: u64) -> Result<Vec<Delivery>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT job_id, url, state, attempts, next_attempt_at, last_status, last_error, payload
             FROM webhooks WHERE state = 'pending' AND next_attempt_at <= ?1 ORDER BY next_attempt_at",
        )?;
        let rows = stmt
            .query_map([at], delivery_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn delivery(&self, job_id: &str) -> Result<Option<Delivery>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT job_id, url, state, attempts, next_attempt_at, last_status, last_error, payload
                 FROM webhooks WHERE job_id = ?1",
                [job_id],
                delivery_from_row,
            )
            .optional()?)
    }

    /// Records one delivery attempt: `state` is `pending` (retry at `next_attempt_at`),
    /// `delivered` or `failed` (gave up).
    pub fn record_attempt(
        &self,
        job_id: &str,
        state: &str,
        next_attempt_at: u64,
        status: Option<u16>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE webhooks SET state = ?2, attempts = attempts + 1, next_attempt_at = ?3,
                last_status = ?4, last_error = ?5 WHERE job_id = ?1",
            params![job_id, state, next_attempt_at, status, error],
        )?;
        Ok(())
    }

    pub fn add_key(&self, hash: &str, name: &str, role: KeyRole) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO api_keys (hash, name, role, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, name, role.as_str(), now()],
        )?;
        Ok(())
    }

    pub fn key_role(&self, hash: &str) -> Result<Option<(String, KeyRole)>, StoreError> {
        let row: Option<(String, String)> = self
            .conn()
            .query_row(
                "SELECT name, role FROM api_keys WHERE hash = ?1",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(name, role)| KeyRole::parse(&role).map(|r| (name, r))))
    }

    pub fn list_keys(&self) -> Result<Vec<(String, KeyRole, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT name, role, created_at FROM api_keys ORDER BY created_at")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(n, r, t)| KeyRole::parse(&r).map(|r| (n, r, t)))
            .collect())
    }

    pub fn revoke_key(&self, name: &str) -> Result<usize, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM api_keys WHERE name = ?1", [name])?)
    }
}

/// Where the SQLite store lives in a data folder.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("slidegrade.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_job<'a>(
        id: &'a str,
        key: Option<&'a str>,
        hash: &'a str,
        req: &'a JobRequest,
    ) -> NewJob<'a> {
        NewJob {
            id,
            slide_path: Path::new("/tmp/x.svs"),
            slide_name: "x.svs",
            uploaded: false,
            request: req,
            idempotency_key: key,
            request_hash: hash,
            out_dir: Path::new("/tmp/out"),
        }
    }

    #[test]
    fn jobs_survive_reopen_and_running_jobs_are_requeued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let req = JobRequest::default();
        {
            let store = Store::open(&path).unwrap();
            store.insert(&new_job("a", None, "h", &req)).unwrap();
            store.insert(&new_job("b", None, "h", &req)).unwrap();
            let claimed = store.claim_next().unwrap().unwrap();
            assert_eq!(
                (claimed.id.as_str(), claimed.state),
                ("a", JobState::Running)
            );
            // Dropped without finishing, like a process killed mid-job.
        }
        let store = Store::open(&path).unwrap();
        let recovered = store.recover_interrupted(3).unwrap();
        assert_eq!((recovered.requeued, recovered.failed), (1, 0));
        assert_eq!(store.count_in_state(JobState::Queued).unwrap(), 2);
        let again = store.claim_next().unwrap().unwrap();
        assert_eq!((again.id.as_str(), again.attempts), ("a", 2));
    }

    #[test]
    fn a_job_that_keeps_killing_the_process_fails_after_max_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        Store::open(&path)
            .unwrap()
            .insert(&new_job("a", None, "h", &JobRequest::default()))
            .unwrap();
        for attempt in 1..=3 {
            // Each process claims the job and dies while grading it.
            let store = Store::open(&path).unwrap();
            let recovered = store.recover_interrupted(3).unwrap();
            let expected = if attempt == 1 { (0, 0) } else { (1, 0) };
            assert_eq!((recovered.requeued, recovered.failed), expected);
            assert_eq!(store.claim_next().unwrap().unwrap().attempts, attempt);
        }
        let store = Store::open(&path).unwrap();
        let recovered = store.recover_interrupted(3).unwrap();
        assert_eq!((recovered.requeued, recovered.failed), (0, 1));
        let job = store.get("a").unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.error_type.as_deref(), Some("interrupted"));
        assert!(job.error.unwrap().contains("3 times"));
        assert!(store.claim_next().unwrap().is_none(), "not retried");
    }

    #[test]
    fn idempotency_key_returns_same_job_or_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("jobs.db")).unwrap();
        let req = JobRequest::default();
        assert!(matches!(
            store.insert(&new_job("a", Some("k"), "h1", &req)).unwrap(),
            Insert::Created(_)
        ));
        match store.insert(&new_job("b", Some("k"), "h1", &req)).unwrap() {
            Insert::Existing(job) => assert_eq!(job.id, "a"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.insert(&new_job("c", Some("k"), "h2", &req)).unwrap(),
            Insert::Conflict
        ));
        assert!(store.get("b").unwrap().is_none());
    }

    #[test]
    fn cancel_only_applies_to_queued_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("jobs.db")).unwrap();
        let req = JobRequest::default();
        store.insert(&new_job("a", None, "h", &req)).unwrap();
        store.insert(&new_job("b", None, "h", &req)).unwrap();
        store.claim_next().unwrap();
        assert!(!store.cancel_if_queued("a").unwrap(), "a is running");
        assert!(store.cancel_if_queued("b").unwrap());
        assert!(store.claim_next().unwrap().is_none());
        assert_eq!(store.get("b").unwrap().unwrap().state, JobState::Cancelled);
    }

    #[test]
    fn keys_and_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("jobs.db")).unwrap();
        store.add_key("abc", "lis", KeyRole::Submit).unwrap();
        assert_eq!(
            store.key_role("abc").unwrap(),
            Some(("lis".into(), KeyRole::Submit))
        );
        assert_eq!(store.key_role("nope").unwrap(), None);
        store.enqueue_delivery("j", "http://x/", "{}").unwrap();
        assert_eq!(store.due_deliveries(now() + 1).unwrap().len(), 1);
        store
            .record_attempt("j", "pending", now() + 100, Some(500), Some("boom"))
            .unwrap();
        assert!(store.due_deliveries(now()).unwrap().is_empty());
        let d = store.delivery("j").unwrap().unwrap();
        assert_eq!((d.attempts, d.last_status), (1, Some(500)));
    }
}
