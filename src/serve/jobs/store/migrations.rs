//! The store's schema, as numbered migrations applied in order on either back-end.
//!
//! Each migration has a SQLite and a PostgreSQL text where the dialects differ (column
//! types, the insertion-order column) and one text where they agree. A store records the
//! versions it has applied in `schema_migrations`; applying runs under a lock (an
//! IMMEDIATE transaction on SQLite, a transaction-scoped advisory lock on PostgreSQL), so
//! replicas that start together migrate once.
//!
//! Version 1 is the schema from before migrations existed, written with `IF NOT EXISTS`
//! so that such a store adopts it unchanged.

use super::db::{Dialect, Sql, StoreError, now};

struct Migration {
    version: i64,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: "
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
);",
        // BIGINT throughout: the store binds every integer as 64-bit. `rowid` is the
        // insertion order, as SQLite's implicit column of that name.
        postgres: "
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    rowid BIGINT GENERATED ALWAYS AS IDENTITY,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    slide_path TEXT NOT NULL,
    slide_name TEXT NOT NULL,
    uploaded BIGINT NOT NULL,
    model TEXT,
    mpp DOUBLE PRECISION,
    accession_number TEXT,
    specimen_id TEXT,
    callback_url TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    progress_done BIGINT NOT NULL DEFAULT 0,
    progress_total BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    error_type TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    out_dir TEXT NOT NULL
);
CREATE INDEX jobs_by_state ON jobs(state, created_at);
CREATE TABLE webhooks (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_status BIGINT,
    last_error TEXT,
    payload TEXT NOT NULL
);
CREATE TABLE api_keys (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);",
    },
    // Leases: a running job and a webhook attempt each belong to one replica until the
    // lease runs out (unix milliseconds); `locks` holds named leases (retention clean-up);
    // `probe` is written by `/readyz`.
    Migration {
        version: 2,
        sqlite: LEASES,
        postgres: LEASES,
    },
    // The patient and order identity an LIS sends with a job, echoed in its HL7 and FHIR
    // results.
    Migration {
        version: 3,
        sqlite: PATIENT_AND_ORDER,
        postgres: PATIENT_AND_ORDER,
    },
    // Results sent over MLLP (`--mllp-results`): an outbox like `webhooks`, one row per
    // job; `last_status` stays empty (there is no HTTP status), the ACK code goes in
    // `last_error` when it is not AA.
    Migration {
        version: 4,
        sqlite: HL7_RESULTS,
        postgres: HL7_RESULTS,
    },
];

const HL7_RESULTS: &str = "
CREATE TABLE hl7_results (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_status BIGINT,
    last_error TEXT,
    payload TEXT NOT NULL,
    lease_owner TEXT,
    lease_until_ms BIGINT
);
CREATE INDEX hl7_results_due ON hl7_results(state, next_attempt_at);";

const PATIENT_AND_ORDER: &str = "
ALTER TABLE jobs ADD COLUMN patient_id TEXT;
ALTER TABLE jobs ADD COLUMN patient_name TEXT;
ALTER TABLE jobs ADD COLUMN placer_order_number TEXT;
ALTER TABLE jobs ADD COLUMN filler_order_number TEXT;";

const LEASES: &str = "
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until_ms BIGINT;
CREATE INDEX jobs_by_lease ON jobs(state, lease_until_ms);
ALTER TABLE webhooks ADD COLUMN lease_owner TEXT;
ALTER TABLE webhooks ADD COLUMN lease_until_ms BIGINT;
CREATE INDEX webhooks_due ON webhooks(state, next_attempt_at);
CREATE TABLE locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until_ms BIGINT NOT NULL);
CREATE TABLE probe (t BIGINT);";

/// The newest schema version this build knows.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies the migrations `db` has not seen, in order, inside the caller's transaction.
/// Returns the versions applied. A store newer than this build is refused rather than
/// used half-understood.
pub fn apply(db: &mut dyn Sql) -> Result<Vec<i64>, StoreError> {
    let dialect = db.dialect();
    if dialect == Dialect::Postgres {
        // Serialises replicas that start together; released at commit.
        db.execute("SELECT pg_advisory_xact_lock(7239010001)", &[])?;
    }
    db.batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )?;
    let current = db
        .query_opt("SELECT MAX(version) FROM schema_migrations", &[])?
        .map(|row| row.opt_int(0))
        .transpose()?
        .flatten()
        .unwrap_or(0);
    if current > latest() {
        return Err(StoreError::Open {
            location: "the job store".into(),
            detail: format!(
                "its schema is version {current}, newer than this build's {}: upgrade slidegrade",
                latest()
            ),
        });
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        db.batch(match dialect {
            Dialect::Sqlite => migration.sqlite,
            Dialect::Postgres => migration.postgres,
        })?;
        db.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            &[migration.version.into(), now().into()],
        )?;
        applied.push(migration.version);
    }
    Ok(applied)
}
