//! SIGTERM on the real binary: `slidegrade serve` stops taking work, exits 0, leaves no
//! job marked running, and a restart on the same data folder finishes every accepted job.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use slidegrade::serve::jobs::store::{JobState, Store};

use crate::serve_process::{JOB_WAIT, Serve, slow_model};

/// `POST /v1/slides` with a JSON body over a fresh connection. Transport failures are
/// returned, not panicked on: during shutdown they are the expected answer.
fn submit(addr: SocketAddr, slide: &Path) -> Result<(u16, serde_json::Value), reqwest::Error> {
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?
        .post(format!("http://{addr}/v1/slides"))
        .json(&serde_json::json!({ "path": slide }))
        .send()?;
    let status = response.status().as_u16();
    Ok((status, response.json().unwrap_or_default()))
}

#[test]
fn sigterm_exits_cleanly_refuses_work_and_requeues_for_the_next_start() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let slides = data.join("slides");
    let cmu = slides.join("CMU-1-Small-Region.svs");
    let dir = tempfile::tempdir().unwrap();
    slow_model(dir.path());

    let mut server = Serve::start(dir.path(), &slides, &["--workers", "1"]);
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let (status, job) = submit(server.addr, &cmu).expect("submit");
            assert_eq!(status, 202, "{job}");
            job["id"].as_str().unwrap().to_string()
        })
        .collect();
    // Signal while the first job is running (if it is already finished by the time we
    // look, the test still checks everything below, only not the requeue of a running
    // job).
    let deadline = Instant::now() + JOB_WAIT;
    while server.job(&ids[0])["state"] == "queued" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.terminate();
    server.wait_for_log("shutting down: no new requests or jobs");

    // After the server said it stops taking work, a submission is not accepted: the
    // listener is closed (connect or read fails), or the server still holds the
    // connection and answers 503 `shutting_down`.
    match submit(server.addr, &cmu) {
        Err(_) => {}
        Ok((status, body)) => {
            assert_eq!(status, 503, "accepted during shutdown: {body}");
            assert_eq!(body["error_type"], "shutting_down", "{body}");
        }
    }

    let status = server.wait_for_exit();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    drop(server);

    // The store, as the stopped process left it: nothing running (a running job was put
    // back in the queue), and all three jobs still there.
    {
        let store = Store::open(&slidegrade::serve::jobs::store::store_path(
            &dir.path().join("data"),
        ))
        .unwrap();
        assert_eq!(store.count_in_state(JobState::Running).unwrap(), 0);
        let queued = store.count_in_state(JobState::Queued).unwrap();
        let done = store.count_in_state(JobState::Done).unwrap();
        assert_eq!(queued + done, 3, "queued {queued}, done {done}");
    }

    // The next start finishes every accepted job.
    let mut server = Serve::start(dir.path(), &slides, &["--workers", "1"]);
    for id in &ids {
        let deadline = Instant::now() + JOB_WAIT;
        let job = loop {
            let job = server.job(id);
            if ["done", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
                break job;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(job["state"], "done", "{job}");
    }
    server.terminate();
    assert!(server.wait_for_exit().success());
}
