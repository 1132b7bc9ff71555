//! `slidegrade serve` as a child process, for the tests that need the real binary
//! (signals, `kill -9`, several replicas).

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Exports a tiny model at 2 µm/px into `dir/models/tiny`: CMU-1-Small-Region becomes
/// about 1,600 tiles, so a job has many batches (at which a stop request is seen) and
/// runs long enough to be interrupted in the middle.
pub fn slow_model(dir: &Path) {
    slow_model_at(dir, 2.0);
}

/// [`slow_model`] at `mpp` µm/px: finer means more tiles and longer jobs (0.5 µm/px, level
/// 0 of CMU-1-Small-Region: about 16 times as many tiles as at 2 µm/px).
pub fn slow_model_at(dir: &Path, mpp: f64) {
    let mut info = common::export_info("tiny");
    info.mpp = mpp;
    slidegrade::build::export::export(&common::tiny_network(3), &info, &dir.join("models/tiny"))
        .expect("export the tiny model");
}

/// Upper bounds for polling only; nothing asserts how long anything took.
pub const START_WAIT: Duration = Duration::from_secs(180);
pub const JOB_WAIT: Duration = Duration::from_secs(600);
pub const EXIT_WAIT: Duration = Duration::from_secs(120);

/// A `slidegrade serve` process, killed if a test fails while it runs.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its log lines (JSON), read from stderr by a thread.
    log: mpsc::Receiver<serde_json::Value>,
    /// The lines `wait_for_log` has read so far.
    pub seen: Vec<serde_json::Value>,
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
    /// Serves `dir/models` with data in `dir/data`, `slides` as the shared root, and
    /// `extra` arguments (`--workers` among them).
    pub fn start(dir: &Path, slides: &Path, extra: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_slidegrade"))
            .args(["--log-format", "json", "serve", "--bind", "127.0.0.1:0"])
            .args(["--no-auth", "--intra-threads", "1"])
            // Grace 0: a running job is stopped and requeued at once, which is the path
            // this test is about.
            .args(["--shutdown-grace-secs", "0"])
            .arg("--models-dir")
            .arg(dir.join("models"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--shared-root")
            .arg(slides)
            .args(extra)
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
            seen: Vec::new(),
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
    pub fn wait_for_log(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + START_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line["fields"]["message"] == message {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no `{message}` log line (exit status: {:?})",
                    self.child.try_wait()
                ),
            }
        }
    }

    /// Every log line received so far that no `wait_for_log` consumed.
    pub fn drain_log(&self) -> Vec<serde_json::Value> {
        self.log.try_iter().collect()
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub fn wait_for_exit(&mut self) -> ExitStatus {
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

    pub fn job(&self, id: &str) -> serde_json::Value {
        let (status, body) = common::http_get(self.addr, &format!("/v1/jobs/{id}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}
