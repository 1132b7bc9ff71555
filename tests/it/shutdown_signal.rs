//! SIGTERM on the real binary: `slidegrade serve` stops taking work, exits 0, leaves no
//! job marked running, and a restart on the same data folder finishes every accepted job.

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use slidegrade::build::export::export;
use slidegrade::serve::jobs::store::{JobState, Store};

/// Upper bounds for polling only; nothing asserts how long anything took.
const START_WAIT: Duration = Duration::from_secs(180);
const JOB_WAIT: Duration = Duration::from_secs(600);
const EXIT_WAIT: Duration = Duration::from_secs(120);

/// A `slidegrade serve` process, killed if a test fails while it runs.
struct Serve {
    child: Child,
    addr: SocketAddr,
    /// Its log lines (JSON), read from stderr by a thread.
    log: mpsc::Receiver<serde_json::Value>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Serve {
    fn start(dir: &Path, slides: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_slidegrade"))
            .args(["--log-format", "json", "serve", "--bind", "127.0.0.1:0"])
            .args(["--no-auth", "--workers", "1", "--intra-threads", "1"])
            // Grace 0: a running job is stopped and requeued at once, which is the path
            // this test is about.
            .args(["--shutdown-grace-secs", "0"])
            .arg("--models-dir")
            .arg(dir.join("models"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--shared-root")
            .arg(slides)
            .env("RUST_LOG", "info,ort=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start slidegrade serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("server: {line}");
                if let Ok(value) = serde_json::from_str(&line) {
                    let _ = tx.send(value);
                }
            }
        });
        let mut serve = Serve {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        // Port 0: the bound address is only known from the "listening" line.
        let listening = serve.wait_for_log("listening");
        serve.addr = listening["fields"]["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr in {listening}"));
        serve
    }

    /// Waits for the log line with this message.
    fn wait_for_log(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + START_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line["fields"]["message"] == message => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no `{message}` log line (exit status: {:?})",
                    self.child.try_wait()
                ),
            }
        }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn job(&self, id: &str) -> serde_json::Value {
        let (status, body) = common::http_get(self.addr, &format!("/v1/jobs/{id}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

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
    // A tiny model at 2 µm/px: CMU-1-Small-Region becomes about 1,600 tiles, so a job
    // has many batches at which a stop request is seen.
    let mut info = common::export_info("tiny");
    info.mpp = 2.0;
    export(
        &common::tiny_network(3),
        &info,
        &dir.path().join("models/tiny"),
    )
    .unwrap();

    let mut server = Serve::start(dir.path(), &slides);
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
    let mut server = Serve::start(dir.path(), &slides);
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
