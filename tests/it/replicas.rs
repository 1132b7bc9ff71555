//! Two `slidegrade serve` processes on one PostgreSQL store and one data folder, as
//! replicas behind a load balancer: a `kill -9` mid-job loses nothing, every accepted job
//! finishes exactly once with exactly one webhook, one idempotency key sent to both makes
//! one job, and either replica serves the other's results.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::postgres::TempPostgres;
use crate::serve_process::{JOB_WAIT, Serve, slow_model_at};

/// A webhook receiver on loopback: answers 200 to every POST and counts them by job.
fn webhook_receiver() -> (SocketAddr, Arc<Mutex<BTreeMap<String, u32>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let counts = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            if let Ok(event) = serde_json::from_slice::<Value>(&body)
                && let Some(id) = event["job_id"].as_str()
            {
                *counts.lock().unwrap().entry(id.to_string()).or_default() += 1;
            }
            let _ = reader
                .into_inner()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (addr, seen)
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn submit(addr: SocketAddr, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut request = client().post(format!("http://{addr}/v1/slides")).json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().unwrap();
    (
        response.status().as_u16(),
        response.json().unwrap_or_default(),
    )
}

/// The pid part of a job's `worker` (`host-pid-random`).
fn worker_pid(job: &Value) -> Option<u32> {
    let worker = job["worker"].as_str()?;
    worker.rsplit('-').nth(1)?.parse().ok()
}

/// One line per job (id, state, attempts, worker, error): short enough that a failure message
/// survives CI cutting long output, where each job's whole JSON did not.
fn brief(jobs: &[Value]) -> String {
    jobs.iter()
        .map(|j| {
            format!(
                "{} {} attempts={} worker={} error={}",
                j["id"], j["state"], j["attempts"], j["worker"], j["error"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn replica_args<'a>(url: &'a str, workers: &'a str) -> Vec<&'a str> {
    vec![
        "--workers",
        workers,
        "--database-url",
        url,
        "--lease-secs",
        "3",
        "--webhook-secret",
        "replicas",
        "--webhook-retry-secs",
        "1",
    ]
}

/// The shared slides, a PostgreSQL cluster, and a folder with a slow tiny model. None
/// when the shared data is absent.
struct Setup {
    slides: PathBuf,
    cmu: PathBuf,
    pg: TempPostgres,
    dir: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    let slides = common::shared_data()?.join("slides");
    let dir = tempfile::tempdir().unwrap();
    // Level 0 of the CMU slide (about 10,000 tiles, 1.6 s a job): the kill below must land
    // while a job runs, between a's "job started" log line and the end of that job (at
    // 2 µm/px an optimised build finishes a job in a fraction of a second).
    slow_model_at(dir.path(), 0.5);
    Some(Setup {
        cmu: slides.join("CMU-1-Small-Region.svs"),
        slides,
        pg: TempPostgres::start(),
        dir,
    })
}

#[test]
fn a_replica_killed_mid_job_loses_nothing_and_nothing_happens_twice() {
    let Some(setup) = setup() else {
        return;
    };
    let (slides, cmu, pg, dir) = (&setup.slides, &setup.cmu, &setup.pg, &setup.dir);
    let (hook, deliveries) = webhook_receiver();
    let args = replica_args(&pg.url, "1");
    let mut a = Serve::start(dir.path(), slides, &args);
    let b = Serve::start(dir.path(), slides, &args);

    let body = serde_json::json!({ "path": cmu, "callback_url": format!("http://{hook}/hook") });
    let ids: Vec<String> = (0..8)
        .map(|i| {
            let (status, job) = submit(if i % 2 == 0 { a.addr } else { b.addr }, &body, None);
            assert_eq!(status, 202, "{job}");
            job["id"].as_str().unwrap().to_string()
        })
        .collect();

    // Kill a once it has finished a job and is in the middle of another. a's own log says
    // when: after its first "job finished", each "job started" line names the job it has
    // just claimed (polling every job over HTTP instead could miss a's 1.6-s windows on
    // a loaded machine). To be sure the kill lands mid-job, a is frozen (SIGSTOP) and the
    // job checked through b: still running on a means a cannot have finished it;
    // otherwise a resumes and we wait for its next job.
    let a_pid = a.child.id();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &a_pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig}");
    };
    a.wait_for_log("job finished");
    let killed_job = loop {
        let started = a.wait_for_log("job started");
        let id = started["fields"]["job"].as_str().unwrap().to_string();
        signal("-STOP");
        let job = b.job(&id);
        if job["state"] == "running" && worker_pid(&job) == Some(a_pid) {
            break id;
        }
        signal("-CONT");
    };
    a.child.kill().unwrap();
    a.child.wait().unwrap();

    // b finishes every accepted job, the killed one on a second attempt.
    let deadline = Instant::now() + JOB_WAIT * 2;
    let jobs: Vec<Value> = loop {
        let jobs: Vec<Value> = ids.iter().map(|id| b.job(id)).collect();
        if jobs.iter().all(|j| j["state"] == "done") {
            break jobs;
        }
        let ended_badly = jobs
            .iter()
            .any(|j| ["failed", "cancelled"].contains(&j["state"].as_str().unwrap()));
        assert!(!ended_badly, "a job ended badly: {}", brief(&jobs));
        assert!(Instant::now() < deadline, "not all done: {}", brief(&jobs));
        std::thread::sleep(Duration::from_millis(200));
    };
    for job in &jobs {
        let id = job["id"].as_str().unwrap();
        let expected_attempts = if id == killed_job { 2 } else { 1 };
        assert_eq!(job["attempts"], expected_attempts, "{job}");
        if id == killed_job {
            assert_eq!(worker_pid(job), Some(b.child.id()), "b regraded it: {job}");
        }
        // Results are on the shared data folder: b serves every one, a's included.
        let (status, result) = common::http_get(b.addr, &format!("/v1/jobs/{id}/result"));
        assert_eq!(status, 200, "{result}");
        let result: Value = serde_json::from_str(&result).unwrap();
        assert_eq!(
            result["slide"]["file_name"], "CMU-1-Small-Region.svs",
            "{result}"
        );
        assert!(result["tiles"].is_object(), "{result}");
    }
    assert!(
        jobs.iter().any(|j| worker_pid(j) == Some(a_pid)),
        "a graded at least one of the results b served"
    );

    // Exactly one webhook per job: wait for all, then a little longer for any duplicate.
    let deadline = Instant::now() + JOB_WAIT;
    while deliveries.lock().unwrap().len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "webhooks: {:?}",
            deliveries.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let seen = deliveries.lock().unwrap().clone();
    assert_eq!(seen.len(), ids.len(), "{seen:?}");
    assert!(
        seen.values().all(|&n| n == 1),
        "a webhook went out twice: {seen:?}"
    );
    for id in &ids {
        let job = b.job(id);
        assert_eq!(job["webhook"]["state"], "delivered", "{job}");
        assert_eq!(job["webhook"]["attempts"], 1, "{job}");
    }
}

#[test]
fn one_idempotency_key_sent_to_both_replicas_makes_one_job() {
    let Some(setup) = setup() else {
        return;
    };
    let (slides, cmu, pg, dir) = (&setup.slides, &setup.cmu, &setup.pg, &setup.dir);
    // No workers: this is about intake only.
    let args = replica_args(&pg.url, "0");
    let a = Serve::start(dir.path(), slides, &args);
    let b = Serve::start(dir.path(), slides, &args);
    let body = serde_json::json!({ "path": cmu });
    for round in 0..10 {
        let key = format!("lis-order-{round}");
        let (key, body) = (key.as_str(), &body);
        let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
            let sends: Vec<_> = [a.addr, b.addr, a.addr, b.addr]
                .into_iter()
                .map(|addr| scope.spawn(move || submit(addr, body, Some(key))))
                .collect();
            sends.into_iter().map(|s| s.join().unwrap()).collect()
        });
        let ids: std::collections::BTreeSet<_> = answers
            .iter()
            .map(|(status, job)| {
                assert!([200, 202].contains(status), "{status} {job}");
                job["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids.len(), 1, "{answers:?}");
    }
    let (status, list) = common::http_get(a.addr, "/v1/jobs");
    assert_eq!(status, 200, "{list}");
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(10), "{list}");
}
