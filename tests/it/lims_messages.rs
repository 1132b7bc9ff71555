//! The LIMS result messages checked by real external tools: the FHIR R4 Bundle by
//! fhir.resources (R4 models) and the HL7 v2.5.1 ORU^R01 by hl7apy (strict) and python-hl7,
//! through `scripts/validate_fhir.py` and `scripts/parse_hl7.py` in the project's `.venv/`
//! (made by `scripts/setup-python.sh`, which `make test` runs first).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};
use slidegrade::grade::pipeline::Outcome;
use slidegrade::grade::rule::{PatternAreas, grade};
use slidegrade::output::lims::{OrderIdentity, ReportContext, fhir, hl7};

/// hl7apy warnings that are expected, each a gap in hl7apy's copy of table 0396 (coding
/// systems) rather than in the message: "UCUM" is the units system the v2.5.1 lab results
/// guides use, and "HL7nnnn" is the standard's own pattern for "HL7 table nnnn".
const KNOWN_HL7APY_WARNINGS: &[&str] = &[
    "Warning: Value UCUM not in table HL70396 in element OBX_6.CE_3",
    "Warning: Value HL70487 not in table HL70396 in element SPM_4.CWE_3",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: the LIMS message validators live in the project's virtualenv. \
         Run `make test`, or `scripts/setup-python.sh` once, then rerun this test.",
        python.display()
    );
    python
}

/// Runs a validator script on `file` and returns its JSON output; fails with its stderr.
fn run_script(script: &str, file: &Path) -> Value {
    let out = Command::new(python())
        .arg(root().join("scripts").join(script))
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} rejected {}:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A PNG the size of a real overlay (a few hundred kB), so the ED segment is realistic.
fn overlay_png() -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let img = image::RgbImage::from_fn(400, 300, |x, y| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (state >> 24) as u8;
        image::Rgb([(x % 256) as u8, (y % 256) as u8, noise])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    bytes
}

/// A 3+4 biopsy; identifiers and the model version carry HL7 delimiters on purpose.
fn graded_case() -> ReportContext {
    ReportContext {
        job_id: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
        order: OrderIdentity {
            accession_number: Some("SP24-0123&A".into()),
            specimen_id: Some("SP24-0123-A1".into()),
            patient_id: Some("MRN-004217".into()),
            patient_name: Some("Doe, Jane".into()),
            placer_order_number: Some("ORD-77^LIS".into()),
            filler_order_number: None,
        },
        slide_name: "CMU-1-Small-Region.svs".into(),
        issued: UNIX_EPOCH + Duration::from_secs(1_730_000_000),
        outcome: Outcome::Graded,
        grade: Some(grade(&PatternAreas {
            benign: 10.0,
            g3: 2.5,
            g4: 1.5,
            g5: 0.0,
        })),
        confidence: Some(0.912_345),
        model_name: "prostate-student".into(),
        model_version: "1.2.0+git~3f2b|rc^1".into(),
        model_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        overlay_png: Some(overlay_png()),
    }
}

fn no_tissue_case() -> ReportContext {
    ReportContext {
        outcome: Outcome::NoTissue,
        grade: None,
        confidence: None,
        overlay_png: None,
        order: OrderIdentity {
            specimen_id: None,
            patient_id: None,
            ..graded_case().order
        },
        ..graded_case()
    }
}

fn resources<'a>(summary: &'a Value, kind: &str) -> Vec<&'a Value> {
    summary["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resourceType"] == kind)
        .collect()
}

fn observation<'a>(summary: &'a Value, code: &str) -> &'a Value {
    resources(summary, "Observation")
        .into_iter()
        .find(|o| o["code"].as_array().unwrap().iter().any(|c| c == code))
        .unwrap_or_else(|| panic!("no Observation coded {code}"))
}

fn codes(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect()
}

fn validate_fhir(ctx: &ReportContext, dir: &Path) -> Value {
    let path = dir.join("bundle.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&fhir::bundle(ctx)).unwrap(),
    )
    .unwrap();
    let summary = run_script("validate_fhir.py", &path);
    assert_eq!(summary["fhirVersion"], "4.0.1");
    assert_eq!(summary["type"], "collection");
    summary
}

fn assert_known_hl7apy_warnings(parsed: &Value) {
    for w in parsed["hl7apy_warnings"].as_array().unwrap() {
        let w = w.as_str().unwrap();
        assert!(
            KNOWN_HL7APY_WARNINGS.contains(&w),
            "unexpected hl7apy warning: {w}"
        );
    }
}

fn parse_hl7(ctx: &ReportContext, dir: &Path) -> Value {
    let path = dir.join("message.hl7");
    std::fs::write(&path, hl7::oru_r01(ctx)).unwrap();
    let parsed = run_script("parse_hl7.py", &path);
    assert_known_hl7apy_warnings(&parsed);
    let msh = &parsed["msh"];
    assert_eq!(msh["sending_application"], "SLIDEGRADE");
    assert_eq!(msh["message_type"], "ORU^R01^ORU_R01");
    assert_eq!(msh["control_id"], hl7::control_id(&ctx.job_id));
    assert_eq!(msh["processing_id"], "P");
    assert_eq!(msh["version"], "2.5.1");
    // OBR-2/3 and ORC-2/3 echo the order numbers: the placer's as sent (else the
    // accession number), the filler's as sent (else the job id).
    let placer = ctx.order.placer_order().unwrap();
    let filler = ctx
        .order
        .filler_order()
        .map_or_else(|| format!("{}^SLIDEGRADE", ctx.job_id), str::to_string);
    let obr = &parsed["obr"];
    assert_eq!(obr["placer_order_number"], placer);
    assert_eq!(obr["filler_order_number"], filler);
    let orc = &parsed["orc"];
    assert_eq!(orc["order_control"], "RE");
    assert_eq!(orc["placer_order_number"], placer);
    assert_eq!(orc["filler_order_number"], filler);
    assert_eq!(
        obr["universal_service_id"],
        "66117-3^Prostate Pathology biopsy report^LN"
    );
    assert_eq!(obr["result_status"], "F");
    parsed
}

fn obx<'a>(parsed: &'a Value, code: &str) -> &'a Value {
    parsed["obx"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["code"] == code)
        .unwrap_or_else(|| panic!("no OBX coded {code}"))
}

#[test]
fn graded_bundle_validates_as_fhir_r4() {
    let ctx = graded_case();
    let g = ctx.grade.clone().unwrap();
    assert_eq!((g.gleason.as_str(), g.isup_grade_group), ("3+4=7", 2));
    let dir = tempfile::tempdir().unwrap();
    let summary = validate_fhir(&ctx, dir.path());

    let report = resources(&summary, "DiagnosticReport")[0];
    assert_eq!(report["status"], "final");
    assert_eq!(codes(&report["code"]), ["http://loinc.org|66117-3"]);
    assert!(codes(&report["category"]).contains(&"http://loinc.org|LP7839-6"));
    assert_eq!(report["conclusion"], ctx.conclusion());
    // The patient as a logical reference (the LIS resolves it to its own Patient), and
    // the order numbers as typed identifiers.
    assert_eq!(report["subject"], Value::Null, "no literal reference");
    assert_eq!(report["subject_identifier"], "MRN-004217");
    assert_eq!(report["subject_display"], "Jane Doe");
    let typed = |code: &str| {
        report["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| codes(&i["type"]).contains(&code))
            .map(|i| i["value"].clone())
    };
    assert_eq!(
        typed("http://terminology.hl7.org/CodeSystem/v2-0203|PLAC"),
        Some("ORD-77^LIS".into())
    );
    assert_eq!(
        typed("http://terminology.hl7.org/CodeSystem/v2-0203|FILL"),
        None
    );
    assert_eq!(report["result"].as_array().unwrap().len(), 4);
    let form = &report["presentedForm"][0];
    assert_eq!(form["contentType"], "image/png");
    assert_eq!(
        form["sha256"],
        sha256_hex(ctx.overlay_png.as_ref().unwrap())
    );

    let gleason = observation(&summary, "http://loinc.org|35266-6");
    assert_eq!(gleason["valueCodeableConcept"]["text"], g.gleason);
    assert_eq!(
        codes(&gleason["valueCodeableConcept"]["codes"]),
        ["http://snomed.info/sct|57403001"]
    );
    let components = gleason["component"].as_array().unwrap();
    assert_eq!(codes(&components[0]["code"]), ["http://loinc.org|44641-9"]);
    assert_eq!(
        codes(&components[0]["value"]),
        ["http://snomed.info/sct|369772003"]
    );
    assert_eq!(codes(&components[1]["code"]), ["http://loinc.org|44642-7"]);
    assert_eq!(
        codes(&components[1]["value"]),
        ["http://snomed.info/sct|369773008"]
    );

    let group = observation(&summary, "http://loinc.org|94734-1");
    assert!(codes(&group["code"]).contains(&"http://snomed.info/sct|385377005"));
    assert_eq!(
        codes(&group["valueCodeableConcept"]["codes"]),
        [
            "http://snomed.info/sct|1279714001",
            "http://loinc.org|LA30795-1"
        ]
    );

    let tumour = observation(&summary, "http://loinc.org|44654-2");
    assert_eq!(
        tumour["valueQuantity"]["value"],
        ctx.tumour_percent().unwrap()
    );
    assert_eq!(tumour["valueQuantity"]["value"], 28.6);
    assert_eq!(tumour["valueQuantity"]["code"], "%");
    let confidence = observation(&summary, "urn:slidegrade:code|confidence");
    assert_eq!(confidence["valueQuantity"]["value"], 0.912);
    for o in resources(&summary, "Observation") {
        assert_eq!(o["subject_identifier"], "MRN-004217");
        assert!(o["device"].as_str().unwrap().starts_with("urn:uuid:"));
        assert!(o["specimen"].as_str().unwrap().starts_with("urn:uuid:"));
    }

    let specimen = resources(&summary, "Specimen")[0];
    assert_eq!(specimen["accessionIdentifier"], "SP24-0123&A");
    assert_eq!(specimen["identifier"][0], "SP24-0123-A1");
    let device = resources(&summary, "Device")[0];
    assert_eq!(device["identifier"][0], ctx.model_sha256);
    assert_eq!(device["deviceName"][0], ctx.model_name);
    assert_eq!(device["version"][0], ctx.model_version);
}

#[test]
fn graded_oru_r01_parses_strictly_as_hl7_v2_5_1() {
    let ctx = graded_case();
    let g = ctx.grade.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let parsed = parse_hl7(&ctx, dir.path());

    let segments = codes(&parsed["segments"]);
    assert_eq!(segments.first(), Some(&"MSH"));
    assert_eq!(
        &segments[..4],
        ["MSH", "PID", "ORC", "OBR"],
        "ORU_R01 order: PATIENT then ORDER_OBSERVATION"
    );
    let pid = &parsed["pid"];
    assert_eq!(
        (&pid["patient_id"], &pid["family"], &pid["given"]),
        (&"MRN-004217".into(), &"Doe".into(), &"Jane".into())
    );
    assert_eq!(
        parsed["orc"]["placer_order_number"], "ORD-77^LIS",
        "escaped and back"
    );
    assert_eq!(segments.iter().filter(|s| **s == "OBX").count(), 9);
    assert_eq!(parsed["spm"]["specimen_id"], "SP24-0123-A1");

    let nm = |code: &str| {
        let o = obx(&parsed, code);
        assert_eq!(
            (&o["type"], &o["status"]),
            (&Value::from("NM"), &Value::from("F")),
            "{code}"
        );
        o["value"].as_f64().unwrap()
    };
    assert_eq!(nm("35266-6"), f64::from(g.gleason_score));
    assert_eq!(nm("44641-9"), f64::from(g.primary.unwrap()));
    assert_eq!(nm("44642-7"), f64::from(g.secondary.unwrap()));
    assert_eq!(nm("94734-1"), f64::from(g.isup_grade_group));
    assert_eq!(nm("44654-2"), ctx.tumour_percent().unwrap());
    assert_eq!(obx(&parsed, "44654-2")["units"], "%^percent^UCUM");
    assert_eq!(nm("confidence"), ctx.confidence_reported().unwrap());
    // Free text comes back unescaped, delimiters and all.
    assert_eq!(obx(&parsed, "22637-3")["value"], ctx.conclusion());
    assert_eq!(obx(&parsed, "model")["value"], ctx.model_identity());
    assert!(ctx.model_identity().contains("+git~3f2b|rc^1"));
    let ed = &obx(&parsed, "overlay")["value"];
    assert_eq!(
        (&ed["type"], &ed["subtype"], &ed["encoding"]),
        (&"IM".into(), &"PNG".into(), &"Base64".into())
    );
    assert_eq!(ed["sha256"], sha256_hex(ctx.overlay_png.as_ref().unwrap()));
}

#[test]
fn no_tissue_messages_validate_and_carry_no_grade() {
    let ctx = no_tissue_case();
    let dir = tempfile::tempdir().unwrap();

    let summary = validate_fhir(&ctx, dir.path());
    let report = resources(&summary, "DiagnosticReport")[0];
    assert!(
        report["conclusion"]
            .as_str()
            .unwrap()
            .starts_with("No tissue found.")
    );
    assert_eq!(report["result"].as_array().unwrap().len(), 0);
    assert_eq!(report["presentedForm"].as_array().unwrap().len(), 0);
    assert!(resources(&summary, "Observation").is_empty());
    assert_eq!(resources(&summary, "Device").len(), 1);
    assert_eq!(
        resources(&summary, "Specimen").len(),
        1,
        "the accession number still routes it"
    );

    let parsed = parse_hl7(&ctx, dir.path());
    let obx_codes: Vec<&str> = parsed["obx"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["code"].as_str().unwrap())
        .collect();
    assert_eq!(obx_codes, ["22637-3", "model"]);
    assert_eq!(obx(&parsed, "22637-3")["value"], ctx.conclusion());
    assert_eq!(parsed["spm"], Value::Null);
    assert_eq!(
        parsed["pid"],
        Value::Null,
        "no patient identifier sent: no PID"
    );
    assert_eq!(parsed["orc"]["order_control"], "RE");
}

/// A job that could not be graded is still answered: the ORU^R01 with result status X
/// and the reason in an NTE, valid at hl7apy's strict level.
#[test]
fn failed_job_oru_r01_parses_strictly_with_status_x() {
    let ctx = graded_case();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("failed.hl7");
    let reason = "decoder_crashed: the slide's decoder crashed | tile 12^3";
    std::fs::write(
        &path,
        hl7::oru_r01_failed(&ctx.job_id, &ctx.order, ctx.issued, reason),
    )
    .unwrap();
    let parsed = run_script("parse_hl7.py", &path);
    assert_known_hl7apy_warnings(&parsed);
    let segments = codes(&parsed["segments"]);
    assert_eq!(segments, ["MSH", "PID", "ORC", "OBR", "NTE"]);
    assert_eq!(parsed["obr"]["result_status"], "X");
    assert_eq!(parsed["obr"]["placer_order_number"], "ORD-77^LIS");
    assert_eq!(parsed["pid"]["patient_id"], "MRN-004217");
    assert_eq!(parsed["nte"], reason);
}
