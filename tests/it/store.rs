//! The job store's contract, one suite run against both back-ends: the embedded SQLite
//! file and a real PostgreSQL cluster (see `postgres.rs`). "Replicas" here are separate
//! `Store` instances on the same database, as separate processes would hold.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use slidegrade::serve::jobs::store::{
    AttemptRecord, Callback, Insert, JobRequest, JobState, KeyRole, NewJob, Outbox, Store,
    StoreLocation,
};

use crate::postgres::TempPostgres;

/// A database that tests open `Store`s on.
struct Db {
    location: StoreLocation,
    _dir: tempfile::TempDir,
    _server: Option<TempPostgres>,
}

impl Db {
    fn open(&self) -> Store {
        Store::open_at(&self.location).expect("open store")
    }
}

fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    Db {
        location: StoreLocation::Sqlite(dir.path().join("jobs.db")),
        _dir: dir,
        _server: None,
    }
}

fn postgres() -> Db {
    let server = TempPostgres::start();
    Db {
        location: StoreLocation::Postgres(server.url.clone()),
        _dir: tempfile::tempdir().unwrap(),
        _server: Some(server),
    }
}

/// Each test function below runs once per back-end.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(&super::sqlite()) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(&super::postgres()) } )*
        }
    };
}

on_both_backends!(
    an_expired_lease_requeues_the_job_and_counts_the_attempt,
    a_restarted_replica_leaves_live_leases_alone,
    a_job_that_keeps_killing_replicas_fails_after_max_attempts,
    idempotency_key_returns_same_job_or_conflicts,
    one_key_sent_to_two_replicas_at_once_makes_one_job,
    concurrent_claims_never_hand_out_a_job_twice,
    cancel_only_applies_to_queued_jobs,
    graceful_release_requeues_at_once,
    webhook_deliveries_are_leased_to_one_replica,
    the_retention_lock_has_one_holder,
    keys_round_trip,
    reopening_applies_no_migration_twice,
);

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(600);

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

fn insert(store: &Store, id: &str) {
    let req = JobRequest::default();
    assert!(matches!(
        store.insert(&new_job(id, None, "h", &req)).unwrap(),
        Insert::Created(_)
    ));
}

fn an_expired_lease_requeues_the_job_and_counts_the_attempt(db: &Db) {
    let (a, b) = (db.open(), db.open());
    insert(&a, "j1");
    insert(&a, "j2");
    let claimed = a.claim_next("replica-a", SHORT).unwrap().unwrap();
    assert_eq!(
        (claimed.id.as_str(), claimed.state, claimed.attempts),
        ("j1", JobState::Running, 1)
    );
    assert_eq!(claimed.worker.as_deref(), Some("replica-a"));
    assert!(
        a.renew_lease("j1", "replica-a", SHORT).unwrap(),
        "still a's"
    );
    // Replica a dies: nobody renews.
    std::thread::sleep(SHORT * 2);
    let recovered = b.expire_leases(3).unwrap();
    assert_eq!((recovered.requeued, recovered.failed), (1, 0));
    assert_eq!(b.count_in_state(JobState::Queued).unwrap(), 2);
    let again = b.claim_next("replica-b", LONG).unwrap().unwrap();
    assert_eq!(
        (again.id.as_str(), again.attempts),
        ("j1", 2),
        "oldest first, attempt counted"
    );
    // The dead replica's late heartbeat and outcome are refused.
    assert!(!a.renew_lease("j1", "replica-a", LONG).unwrap());
    assert!(
        !a.finish("j1", "replica-a", JobState::Done, None, &[])
            .unwrap()
    );
    assert!(
        b.finish("j1", "replica-b", JobState::Done, None, &[])
            .unwrap()
    );
    let done = b.get("j1").unwrap().unwrap();
    assert_eq!(
        (done.state, done.worker.as_deref()),
        (JobState::Done, Some("replica-b"))
    );
}

fn a_restarted_replica_leaves_live_leases_alone(db: &Db) {
    let a = db.open();
    insert(&a, "j1");
    a.claim_next("replica-a", LONG).unwrap().unwrap();
    // Replica b starts (or restarts) while a grades.
    let b = db.open();
    assert_eq!(b.expire_leases(3).unwrap(), Default::default());
    let job = b.get("j1").unwrap().unwrap();
    assert_eq!(
        (job.state, job.worker.as_deref()),
        (JobState::Running, Some("replica-a"))
    );
    assert!(b.claim_next("replica-b", LONG).unwrap().is_none());
    assert!(
        a.finish("j1", "replica-a", JobState::Done, None, &[])
            .unwrap()
    );
}

fn a_job_that_keeps_killing_replicas_fails_after_max_attempts(db: &Db) {
    let store = db.open();
    insert(&store, "j1");
    for attempt in 1..=3 {
        let claimed = store
            .claim_next(&format!("replica-{attempt}"), SHORT)
            .unwrap()
            .unwrap();
        assert_eq!(claimed.attempts, attempt);
        std::thread::sleep(SHORT * 2);
        let recovered = store.expire_leases(3).unwrap();
        let expected = if attempt < 3 { (1, 0) } else { (0, 1) };
        assert_eq!((recovered.requeued, recovered.failed), expected);
    }
    let job = store.get("j1").unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.error_type.as_deref(), Some("interrupted"));
    assert!(job.error.unwrap().contains("3 times"));
    assert!(
        store.claim_next("replica-4", LONG).unwrap().is_none(),
        "not retried"
    );
}

fn idempotency_key_returns_same_job_or_conflicts(db: &Db) {
    let store = db.open();
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
    assert_eq!(store.count_in_state(JobState::Queued).unwrap(), 1);
}

fn one_key_sent_to_two_replicas_at_once_makes_one_job(db: &Db) {
    let replicas = [Arc::new(db.open()), Arc::new(db.open())];
    for round in 0..5 {
        let key = format!("key-{round}");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let store = replicas[i % 2].clone();
                let key = key.clone();
                std::thread::spawn(move || {
                    let req = JobRequest::default();
                    let id = format!("job-{round}-{i}");
                    match store.insert(&new_job(&id, Some(&key), "h", &req)).unwrap() {
                        Insert::Created(job) => (true, job.id),
                        Insert::Existing(job) => (false, job.id),
                        Insert::Conflict => panic!("same request hash"),
                    }
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|(created, _)| *created).count(),
            1,
            "{results:?}"
        );
        let ids: BTreeSet<_> = results.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(ids.len(), 1, "everyone got the same job: {results:?}");
    }
    assert_eq!(replicas[0].count_in_state(JobState::Queued).unwrap(), 5);
}

fn concurrent_claims_never_hand_out_a_job_twice(db: &Db) {
    let first = db.open();
    for i in 0..40 {
        insert(&first, &format!("j{i:02}"));
    }
    let replicas = [Arc::new(first), Arc::new(db.open())];
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let store = replicas[i % 2].clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while let Some(job) = store.claim_next(&format!("worker-{i}"), LONG).unwrap() {
                    mine.push(job.id);
                }
                mine
            })
        })
        .collect();
    let claimed: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let unique: BTreeSet<_> = claimed.iter().cloned().collect();
    assert_eq!((claimed.len(), unique.len()), (40, 40));
    assert_eq!(replicas[0].count_in_state(JobState::Running).unwrap(), 40);
}

fn cancel_only_applies_to_queued_jobs(db: &Db) {
    let store = db.open();
    insert(&store, "a");
    insert(&store, "b");
    store.claim_next("r", LONG).unwrap();
    assert!(!store.cancel_if_queued("a").unwrap(), "a is running");
    assert!(store.cancel_if_queued("b").unwrap());
    assert!(store.claim_next("r", LONG).unwrap().is_none());
    assert_eq!(store.get("b").unwrap().unwrap().state, JobState::Cancelled);
}

fn graceful_release_requeues_at_once(db: &Db) {
    let store = db.open();
    insert(&store, "a");
    store.claim_next("r1", LONG).unwrap().unwrap();
    store.release("a", "someone-else").unwrap();
    assert_eq!(
        store.get("a").unwrap().unwrap().state,
        JobState::Running,
        "not theirs"
    );
    store.release("a", "r1").unwrap();
    let again = store.claim_next("r2", LONG).unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempts), ("a", 2));
}

fn webhook_deliveries_are_leased_to_one_replica(db: &Db) {
    let (a, b) = (db.open(), db.open());
    insert(&a, "j");
    a.claim_next("ra", LONG).unwrap().unwrap();
    let payload = |job: &slidegrade::serve::jobs::store::Job| {
        format!("{{\"state\":\"{}\"}}", job.state.as_str())
    };
    let callback = Callback {
        outbox: Outbox::Webhook,
        url: "http://lis.example/hook",
        payload: &payload,
    };
    assert!(
        a.finish("j", "ra", JobState::Done, None, &[callback])
            .unwrap()
    );
    let queued = b.delivery(Outbox::Webhook, "j").unwrap().unwrap();
    assert_eq!(
        (queued.state.as_str(), queued.payload.as_str()),
        ("pending", "{\"state\":\"done\"}")
    );

    let claimed = a
        .claim_delivery(Outbox::Webhook, "ra", SHORT)
        .unwrap()
        .unwrap();
    assert_eq!(claimed.job_id, "j");
    assert!(
        b.claim_delivery(Outbox::Webhook, "rb", LONG)
            .unwrap()
            .is_none(),
        "leased to a"
    );
    // a stalls past its lease; b takes the delivery over and a's late record is refused.
    std::thread::sleep(SHORT * 2);
    assert!(
        b.claim_delivery(Outbox::Webhook, "rb", LONG)
            .unwrap()
            .is_some()
    );
    assert!(
        !a.record_attempt(
            Outbox::Webhook,
            "j",
            "ra",
            &attempt("delivered", 0, Some(200), None)
        )
        .unwrap()
    );
    let retry_at = slidegrade::serve::jobs::store::now() + 100;
    assert!(
        b.record_attempt(
            Outbox::Webhook,
            "j",
            "rb",
            &attempt("pending", retry_at, Some(500), Some("HTTP 500"))
        )
        .unwrap()
    );
    assert!(
        a.claim_delivery(Outbox::Webhook, "ra", LONG)
            .unwrap()
            .is_none(),
        "not due yet"
    );
    let d = a.delivery(Outbox::Webhook, "j").unwrap().unwrap();
    assert_eq!(
        (d.attempts, d.last_status, d.state.as_str()),
        (1, Some(500), "pending")
    );
}

fn attempt<'a>(
    state: &'a str,
    next_attempt_at: u64,
    status: Option<u16>,
    error: Option<&'a str>,
) -> AttemptRecord<'a> {
    AttemptRecord {
        state,
        next_attempt_at,
        status,
        error,
    }
}

fn the_retention_lock_has_one_holder(db: &Db) {
    let (a, b) = (db.open(), db.open());
    assert!(a.try_lock("retention", "ra", SHORT).unwrap());
    assert!(!b.try_lock("retention", "rb", LONG).unwrap());
    assert!(
        a.try_lock("retention", "ra", SHORT).unwrap(),
        "the holder renews"
    );
    std::thread::sleep(SHORT * 2);
    assert!(
        b.try_lock("retention", "rb", LONG).unwrap(),
        "expired: b takes it"
    );
    assert!(!a.try_lock("retention", "ra", LONG).unwrap());
}

fn keys_round_trip(db: &Db) {
    let store = db.open();
    store.add_key("abc", "lis", KeyRole::Submit).unwrap();
    assert_eq!(
        store.key_role("abc").unwrap(),
        Some(("lis".into(), KeyRole::Submit))
    );
    assert_eq!(store.key_role("nope").unwrap(), None);
    assert_eq!(store.list_keys().unwrap().len(), 1);
    assert_eq!(store.revoke_key("lis").unwrap(), 1);
    assert_eq!(store.key_role("abc").unwrap(), None);
}

fn reopening_applies_no_migration_twice(db: &Db) {
    let store = db.open();
    insert(&store, "a");
    store.check_writable().unwrap();
    drop(store);
    let again = db.open();
    assert!(again.get("a").unwrap().is_some());
    again.check_writable().unwrap();
}

/// A store written by a build from before migrations and leases: it opens, migrates, and
/// the job that build left `running` (no lease deadline) goes back in the queue.
#[test]
fn a_sqlite_store_from_before_leases_is_migrated_and_its_running_job_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slidegrade.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, created_at INTEGER NOT NULL,
                started_at INTEGER, finished_at INTEGER, slide_path TEXT NOT NULL, slide_name TEXT NOT NULL,
                uploaded INTEGER NOT NULL, model TEXT, mpp REAL, accession_number TEXT, specimen_id TEXT,
                callback_url TEXT, idempotency_key TEXT UNIQUE, request_hash TEXT,
                progress_done INTEGER NOT NULL DEFAULT 0, progress_total INTEGER NOT NULL DEFAULT 0,
                error TEXT, error_type TEXT, attempts INTEGER NOT NULL DEFAULT 0, out_dir TEXT NOT NULL);
             CREATE TABLE webhooks (job_id TEXT PRIMARY KEY, url TEXT NOT NULL, state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL,
                last_status INTEGER, last_error TEXT, payload TEXT NOT NULL);
             CREATE TABLE api_keys (hash TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL,
                created_at INTEGER NOT NULL);
             INSERT INTO jobs (id, state, created_at, slide_path, slide_name, uploaded, attempts, out_dir)
                VALUES ('old', 'running', 1, '/s.svs', 's.svs', 0, 1, '/out');",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.get("old").unwrap().unwrap().state, JobState::Running);
    assert_eq!(store.expire_leases(3).unwrap().requeued, 1);
    let job = store.claim_next("r", LONG).unwrap().unwrap();
    assert_eq!((job.id.as_str(), job.attempts), ("old", 2));
}
