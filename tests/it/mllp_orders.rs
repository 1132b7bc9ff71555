//! HL7 v2 orders over MLLP on the real binary, sent by a real MLLP client (python-hl7's
//! `MLLPClient`, `scripts/mllp_send.py`): an OML^O21 naming a shared slide is answered AA
//! with the job id and becomes a job carrying the order's patient and order numbers; the
//! same order again makes no second job; an ORM^O01 names its slide by barcode; and every
//! order that cannot become a job gets AE or AR with an ERR segment saying why. Results go
//! back over MLLP to a real receiver (python-hl7's asyncio MLLP server,
//! `scripts/mllp_receive.py`) that is down at first: retried until it is up, then received
//! exactly once.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::serve_process::{JOB_WAIT, Serve, slow_model};

fn order(kind: &str, control: &str, placer: &str, slide: &str) -> String {
    [
        format!("MSH|^~\\&|LIS|PATH|SLIDEGRADE|LAB|20261206120000||{kind}|{control}|P|2.5.1"),
        "PID|1||MRN-5521^^^HOSP^MR||Brandt^Ilse".into(),
        format!("ORC|NW|{placer}|"),
        format!("OBR|1|{placer}||88305^Surgical pathology^CPT4"),
        slide.into(),
    ]
    .join("\r")
        + "\r"
}

/// Sends each message over one MLLP connection; one parsed ACK per message.
fn send(mllp: SocketAddr, dir: &Path, messages: &[String]) -> Vec<Value> {
    let files: Vec<_> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let path = dir.join(format!("msg-{i}.hl7"));
            std::fs::write(&path, m).unwrap();
            path
        })
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/mllp_send.py"))
        .args([mllp.ip().to_string(), mllp.port().to_string()])
        .args(&files)
        .output()
        .expect("run .venv/bin/python (make test sets it up)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The LIS's results interface: `scripts/mllp_receive.py` (hl7apy's MLLP server), saving
/// what it receives under `dir/received`; killed on drop.
struct Receiver {
    child: std::process::Child,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn results_receiver(dir: &Path, port: u16) -> (Receiver, std::path::PathBuf) {
    use std::io::BufRead;
    let received = dir.join("received");
    std::fs::create_dir_all(&received).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/mllp_receive.py"))
        .arg(&received)
        .args(["--port", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run .venv/bin/python (make test sets it up)");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let reported: u16 = first
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port from the receiver: {first:?}"));
    assert_eq!(reported, port, "{first:?}");
    (Receiver { child }, received)
}

#[test]
fn orders_over_mllp_become_jobs_and_every_refusal_says_why() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let slides = data.join("slides");
    let dir = tempfile::tempdir().unwrap();
    slow_model(dir.path());
    // A second shared root holding a file that is not a slide.
    let other = dir.path().join("other-share");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("fake.svs"), b"not a slide").unwrap();
    let other_root = other.display().to_string();
    // The LIS's results interface is down at first: nothing listens on this port yet.
    let results_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let results_to = format!("127.0.0.1:{results_port}");
    let mut server = Serve::start(
        dir.path(),
        &slides,
        &[
            "--workers",
            "1",
            "--mllp-bind",
            "127.0.0.1:0",
            "--shared-root",
            &other_root,
            "--mllp-results",
            &results_to,
            "--webhook-retry-secs",
            "1",
        ],
    );
    let mllp: SocketAddr = server
        .seen
        .iter()
        .find(|l| l["fields"]["message"] == "MLLP listening")
        .and_then(|l| l["fields"]["addr"].as_str()?.parse().ok())
        .expect("an `MLLP listening` log line with the address");

    let by_path = "OBX|1|ST|SLIDE_PATH^Slide path^L||CMU-1-Small-Region.svs";
    let acks = send(
        mllp,
        dir.path(),
        &[
            order("OML^O21^OML_O21", "C1", "ORD-100", by_path),
            // The same order again (a resend with a new control id): the same job.
            order("OML^O21^OML_O21", "C2", "ORD-100", by_path),
            // An older LIS: ORM^O01, the slide named by its barcode in SPM-2.
            order(
                "ORM^O01^ORM_O01",
                "C3",
                "ORD-101",
                "SPM|1|CMU-1-Small-Region",
            ),
            order(
                "OML^O21^OML_O21",
                "C4",
                "ORD-102",
                "OBX|1|ST|SLIDE_PATH^^L||/etc/passwd",
            ),
            order(
                "OML^O21^OML_O21",
                "C5",
                "ORD-103",
                "OBX|1|ST|SLIDE_PATH^^L||no-such.svs",
            ),
            order("OML^O21^OML_O21", "C6", "ORD-104", "NTE|1||no slide named"),
            order("OML^O21^OML_O21", "C7", "ORD-105", "SPM|1|NO-SUCH-BARCODE"),
            order(
                "OML^O21^OML_O21",
                "C8",
                "ORD-106",
                &format!("OBX|1|ST|SLIDE_PATH^^L||{other_root}/fake.svs"),
            ),
            order("ADT^A01^ADT_A01", "C9", "ORD-107", by_path),
            order("OML^O21^OML_O21", "C10", "ORD-108", by_path).replace("|P|2.5.1", "|P|2.2"),
            "THIS IS NOT HL7\r".to_string(),
        ],
    );
    let code = |i: usize| {
        let a = &acks[i];
        (
            a["code"].as_str().unwrap().to_string(),
            a["error_code"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(acks.len(), 11, "{acks:?}");
    for (i, ack) in acks.iter().take(10).enumerate() {
        assert_eq!(ack["control_id"], format!("C{}", i + 1), "{ack}");
    }
    assert_eq!(acks[0]["message_type"], "ACK^O21^ACK");
    assert_eq!(acks[2]["message_type"], "ACK^O01^ACK");
    assert_eq!(code(0), ("AA".into(), "".into()));
    let job = acks[0]["job_id"].as_str().unwrap().to_string();
    assert_eq!(acks[1]["job_id"], job.as_str(), "one job per order");
    assert_eq!(code(2), ("AA".into(), "".into()));
    assert_ne!(acks[2]["job_id"], job.as_str());
    assert_eq!(code(3), ("AE".into(), "204".into()), "outside the share");
    assert!(
        acks[3]["error_text"]
            .as_str()
            .unwrap()
            .contains("path_forbidden")
    );
    assert_eq!(code(4), ("AE".into(), "204".into()), "unknown path");
    assert_eq!(code(5), ("AE".into(), "101".into()), "no slide named");
    assert_eq!(code(6), ("AE".into(), "204".into()), "unknown barcode");
    assert_eq!(code(7).0, "AE", "not a slide: {}", acks[7]);
    assert_eq!(code(8), ("AR".into(), "200".into()), "not an order");
    assert_eq!(code(9), ("AR".into(), "203".into()), "the wrong version");
    assert_eq!(code(10), ("AR".into(), "100".into()), "not an HL7 message");

    // The job carries the order's identity and is graded like any other.
    let deadline = Instant::now() + JOB_WAIT;
    let graded = loop {
        let j = server.job(&job);
        if j["state"] == "done" {
            break j;
        }
        assert!(Instant::now() < deadline, "{j}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(graded["patient_id"], "MRN-5521");
    assert_eq!(graded["patient_name"], "Brandt, Ilse");
    assert_eq!(graded["placer_order_number"], "ORD-100");
    let (status, oru) = common::http_get(server.addr, &format!("/v1/jobs/{job}/hl7"));
    assert_eq!(status, 200);
    assert!(oru.contains("\rPID|1||MRN-5521||Brandt^Ilse\r"), "{oru:?}");
    assert!(oru.contains("\rORC|RE|ORD-100|"), "{oru:?}");

    // Results out: while the receiver is down, attempts fail and are retried; once it
    // is up, each graded job's ORU^R01 arrives exactly once.
    let jobs = [job.clone(), acks[2]["job_id"].as_str().unwrap().to_string()];
    let deadline = Instant::now() + JOB_WAIT;
    while server.job(&job)["hl7_result"]["attempts"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "{}", server.job(&job));
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = server.job(&job)["hl7_result"].clone();
    assert_eq!(refused["state"], "pending", "{refused}");
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{refused}"
    );
    let (receiver, received) = results_receiver(dir.path(), results_port);
    let views = loop {
        let views: Vec<Value> = jobs.iter().map(|id| server.job(id)).collect();
        if views
            .iter()
            .all(|v| v["hl7_result"]["state"] == "delivered")
        {
            break views;
        }
        assert!(Instant::now() < deadline, "{views:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let attempts: Vec<u64> = views
        .iter()
        .map(|v| v["hl7_result"]["attempts"].as_u64().unwrap())
        .collect();
    assert!(
        attempts[0] >= 2,
        "retried after the receiver came up: {views:?}"
    );
    // A moment more, for any second delivery to show up.
    std::thread::sleep(Duration::from_secs(3));
    let messages: Vec<String> = std::fs::read_dir(&received)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "hl7"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(
        messages.len(),
        2,
        "one ORU per job, each once: {messages:?}"
    );
    let ours = messages
        .iter()
        .find(|m| m.contains("\rORC|RE|ORD-100|"))
        .expect("the ORU for ORD-100");
    assert!(ours.starts_with("MSH|^~\\&|SLIDEGRADE|"), "{ours:?}");
    assert!(
        ours.contains("\rPID|1||MRN-5521||Brandt^Ilse\r"),
        "{ours:?}"
    );
    assert!(ours.contains("\rOBR|1|ORD-100|"), "{ours:?}");
    drop(receiver);

    server.terminate();
    assert!(server.wait_for_exit().success());
    let log: Vec<String> = server.drain_log().iter().map(Value::to_string).collect();
    for secret in ["MRN-5521", "Brandt", "Ilse"] {
        assert!(
            log.iter().all(|l| !l.contains(secret)),
            "`{secret}` in the log"
        );
    }
}
