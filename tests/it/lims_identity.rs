//! The patient and order identity an LIS sends with a slide, end to end on the real
//! binary: stored with the job, echoed in the ORU^R01 (PID, ORC, OBR) and the FHIR Bundle,
//! and never written to the logs.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::serve_process::{JOB_WAIT, Serve, slow_model};

const PATIENT_ID: &str = "MRN-73310942";
const PATIENT_NAME: &str = "Quellhorst, Ottilie";
const PLACER: &str = "LIS-ORD-55801";
const FILLER: &str = "LAB-FO-90417";
const ACCESSION: &str = "SP26-044712";

#[test]
fn patient_and_order_numbers_are_stored_echoed_and_never_logged() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let slides = data.join("slides");
    let dir = tempfile::tempdir().unwrap();
    slow_model(dir.path());
    let mut server = Serve::start(dir.path(), &slides, &["--workers", "1"]);
    let body = serde_json::json!({
        "path": slides.join("CMU-1-Small-Region.svs"),
        "accession_number": ACCESSION,
        "patient_id": PATIENT_ID,
        "patient_name": PATIENT_NAME,
        "placer_order_number": PLACER,
        "filler_order_number": FILLER,
    });
    let response = reqwest::blocking::Client::new()
        .post(format!("http://{}/v1/slides", server.addr))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 202);
    let job: Value = response.json().unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    for (field, value) in [
        ("patient_id", PATIENT_ID),
        ("patient_name", PATIENT_NAME),
        ("placer_order_number", PLACER),
        ("filler_order_number", FILLER),
    ] {
        assert_eq!(job[field], value, "{job}");
    }

    let deadline = Instant::now() + JOB_WAIT;
    while server.job(&id)["state"] != "done" {
        assert!(Instant::now() < deadline, "{}", server.job(&id));
        std::thread::sleep(Duration::from_millis(100));
    }

    let (status, oru) = common::http_get(server.addr, &format!("/v1/jobs/{id}/hl7"));
    assert_eq!(status, 200, "{oru}");
    let segment = |name: &str| -> Vec<String> {
        oru.split('\r')
            .find(|s| s.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {oru:?}"))
            .split('|')
            .map(str::to_string)
            .collect()
    };
    let pid = segment("PID");
    assert_eq!(
        (pid[3].as_str(), pid[5].as_str()),
        (PATIENT_ID, "Quellhorst^Ottilie")
    );
    let orc = segment("ORC");
    assert_eq!(
        (orc[1].as_str(), orc[2].as_str(), orc[3].as_str()),
        ("RE", PLACER, FILLER)
    );
    let obr = segment("OBR");
    assert_eq!((obr[2].as_str(), obr[3].as_str()), (PLACER, FILLER));

    let (status, bundle) = common::http_get(server.addr, &format!("/v1/jobs/{id}/fhir"));
    assert_eq!(status, 200, "{bundle}");
    let bundle: Value = serde_json::from_str(&bundle).unwrap();
    let report = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "DiagnosticReport")
        .unwrap();
    assert_eq!(report["subject"]["identifier"]["value"], PATIENT_ID);
    assert_eq!(report["subject"]["display"], "Ottilie Quellhorst");
    let identifiers = report["identifier"].to_string();
    assert!(
        identifiers.contains(PLACER) && identifiers.contains(FILLER),
        "{identifiers}"
    );

    server.terminate();
    assert!(server.wait_for_exit().success());
    let log: Vec<String> = server.drain_log().iter().map(Value::to_string).collect();
    assert!(log.len() > 5, "the log was captured: {log:?}");
    for secret in [
        PATIENT_ID,
        "Quellhorst",
        "Ottilie",
        PLACER,
        FILLER,
        ACCESSION,
    ] {
        let leaked: Vec<_> = log.iter().filter(|line| line.contains(secret)).collect();
        assert!(leaked.is_empty(), "`{secret}` in the log: {leaked:?}");
    }
}
