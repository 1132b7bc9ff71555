//! The result as a FHIR R4 (4.0.1) Bundle.
//!
//! Bundle type `collection`: a set of resources with no further semantics. A `document`
//! Bundle would need a Composition and stands for an attested clinical document, which an
//! unsigned automated result is not; `collection` is also what a LIS can take apart
//! resource by resource. Entries, in order:
//!
//! - **DiagnosticReport**: status `final`, category Pathology (LOINC LP7839-6, HL7 v2-0074
//!   `SP`), code LOINC 66117-3 "Prostate Pathology biopsy report" (IHE PaLM RPC), the
//!   Observations as `result`, a `conclusion` sentence and the Grad-CAM overlay as a
//!   `presentedForm` (the overlay carries the grade as a caption, so it is a rendition of
//!   the report).
//! - **Observations**, each with `specimen` and `device` references:
//!   - Gleason score, LOINC 35266-6, value SNOMED CT (6–10) with text "3+4=7", and the
//!     primary and secondary patterns as components (LOINC 44641-9 / 44642-7, values SNOMED
//!     CT Gleason pattern) as IHE PaLM APSR codes them;
//!   - ISUP grade group, coded as mCODE's "Prostate Gleason Grade Group" (code SNOMED
//!     385377005, value SNOMED ISUP grade group) with IHE PaLM's LOINC 94734-1 and its LOINC
//!     answer as second codings. The resource does not claim the mCODE profile: that
//!     profile requires a Patient subject, which this service never knows;
//!   - tumour percentage, LOINC 44654-2, UCUM `%`;
//!   - model confidence, a local code.
//!
//!   A benign slide has only the tumour percentage (0) and the confidence; a slide with
//!   no tissue has no Observations and the conclusion "No tissue found."
//! - **Specimen**, when an accession number or specimen id is given (as
//!   `accessionIdentifier` / `identifier`).
//! - **Device**: the model (name, version, ONNX sha256 as an identifier).
//!
//! The patient, when the LIS sent an identifier, is a logical reference: `subject` with
//! the identifier (and the name as `display`) on the report and each Observation, so that
//! the receiver resolves it to its own Patient; this service holds no Patient resource.
//! The placer and filler order numbers are report identifiers typed `PLAC` and `FILL`
//! (HL7 v2-0203), the keys a LIS matches its order on. Every resource
//! that states a finding carries the HL7 security label AIAST ("Artificial Intelligence
//! asserted"). `fullUrl`s are `urn:uuid:`s derived from the job id, so the same job gives
//! the same Bundle.

use serde_json::{Value, json};

use super::codes::{self, Code};
use super::{ReportContext, base64, derived_uuid, fhir_instant};

/// The FHIR R4 Bundle for one job.
pub fn bundle(ctx: &ReportContext) -> Value {
    let urn = |kind: &str| format!("urn:uuid:{}", derived_uuid(&ctx.job_id, kind));
    let issued = fhir_instant(ctx.issued);
    let device_url = urn("Device");
    let specimen_url =
        (ctx.accession().is_some() || ctx.specimen().is_some()).then(|| urn("Specimen"));

    let subject = ctx.order.patient().map(|(id, name)| {
        let mut reference = json!({ "identifier": { "value": id } });
        if let Some((family, given)) = name {
            reference["display"] = json!(if given.is_empty() {
                family.to_string()
            } else {
                format!("{given} {family}")
            });
        }
        reference
    });
    let observation = |code: Value, value: (&str, Value)| {
        let mut o = json!({
            "resourceType": "Observation",
            "meta": { "security": [coding(codes::AI_ASSERTED)] },
            "status": "final",
            "category": [concept(&[codes::CATEGORY_LABORATORY], None)],
            "code": code,
            "issued": issued,
            "device": { "reference": device_url },
        });
        if let Some(subject) = &subject {
            o["subject"] = subject.clone();
        }
        if let Some(url) = &specimen_url {
            o["specimen"] = json!({ "reference": url });
        }
        o[value.0] = value.1;
        o
    };

    let mut observations: Vec<(String, Value)> = Vec::new();
    if let Some((g, primary, secondary)) = ctx.cancer() {
        let score = codes::gleason_score(g.gleason_score)
            .into_iter()
            .collect::<Vec<_>>();
        let mut gleason = observation(
            concept(&[codes::GLEASON_SCORE], None),
            ("valueCodeableConcept", concept(&score, Some(&g.gleason))),
        );
        gleason["component"] = json!([
            pattern_component(codes::GLEASON_PRIMARY, primary),
            pattern_component(codes::GLEASON_SECONDARY, secondary),
        ]);
        observations.push((urn("Observation/gleason-score"), gleason));

        let values: Vec<Code> = [
            codes::grade_group_mcode(primary, secondary),
            codes::grade_group_answer(g.isup_grade_group),
        ]
        .into_iter()
        .flatten()
        .collect();
        let text = format!("ISUP grade group {}", g.isup_grade_group);
        observations.push((
            urn("Observation/isup-grade-group"),
            observation(
                concept(&[codes::GRADE_GROUP_MCODE, codes::GRADE_GROUP], None),
                ("valueCodeableConcept", concept(&values, Some(&text))),
            ),
        ));
    }
    if let Some(percent) = ctx.tumour_percent() {
        observations.push((
            urn("Observation/tumour-percent"),
            observation(
                concept(&[codes::TUMOUR_PERCENT], None),
                ("valueQuantity", quantity(percent, "%", "%")),
            ),
        ));
    }
    if let Some(confidence) = ctx.confidence_reported() {
        observations.push((
            urn("Observation/confidence"),
            observation(
                concept(&[codes::CONFIDENCE], None),
                ("valueQuantity", quantity(confidence, "1", "1")),
            ),
        ));
    }

    let mut identifiers = vec![json!({ "system": codes::JOB_SYSTEM, "value": ctx.job_id })];
    if let Some(accession) = ctx.accession() {
        identifiers.push(accession_identifier(accession));
    }
    if let Some(placer) = ctx.order.placer_order() {
        identifiers.push(order_identifier(codes::PLACER_ID_TYPE, placer));
    }
    if let Some(filler) = ctx.order.filler_order() {
        identifiers.push(order_identifier(codes::FILLER_ID_TYPE, filler));
    }
    let mut report = json!({
        "resourceType": "DiagnosticReport",
        "meta": { "security": [coding(codes::AI_ASSERTED)] },
        "identifier": identifiers,
        "status": "final",
        "category": [concept(&[codes::CATEGORY_PATHOLOGY, codes::CATEGORY_SP], None)],
        "code": concept(&[codes::REPORT], Some("Prostate biopsy grading (automated)")),
        "issued": issued,
        "conclusion": ctx.conclusion(),
    });
    if let Some(subject) = &subject {
        report["subject"] = subject.clone();
    }
    if let Some(url) = &specimen_url {
        report["specimen"] = json!([{ "reference": url }]);
    }
    if !observations.is_empty() {
        report["result"] = observations
            .iter()
            .map(|(url, _)| json!({ "reference": url }))
            .collect();
    }
    if let Some(png) = &ctx.overlay_png {
        report["presentedForm"] = json!([{
            "contentType": "image/png",
            "data": base64(png),
            "title": format!("Grad-CAM overlay: {}", ctx.slide_name),
        }]);
    }

    let mut entries = vec![entry(urn("DiagnosticReport"), report)];
    entries.extend(observations.into_iter().map(|(url, o)| entry(url, o)));
    if let Some(url) = specimen_url {
        let mut specimen = json!({ "resourceType": "Specimen" });
        if let Some(accession) = ctx.accession() {
            specimen["accessionIdentifier"] = accession_identifier(accession);
        }
        if let Some(id) = ctx.specimen() {
            specimen["identifier"] = json!([{ "system": codes::SPECIMEN_SYSTEM, "value": id }]);
        }
        entries.push(entry(url, specimen));
    }
    entries.push(entry(device_url, device(ctx)));

    json!({
        "resourceType": "Bundle",
        "identifier": { "system": codes::JOB_SYSTEM, "value": ctx.job_id },
        "type": "collection",
        "timestamp": issued,
        "entry": entries,
    })
}

fn device(ctx: &ReportContext) -> Value {
    json!({
        "resourceType": "Device",
        "identifier": [{ "system": codes::MODEL_SHA256_SYSTEM, "value": ctx.model_sha256 }],
        "status": "active",
        "manufacturer": "slidegrade",
        "deviceName": [{ "name": ctx.model_name, "type": "model-name" }],
        "type": { "text": "Prostate biopsy grading model (CNN with Grad-CAM)" },
        "version": [
            { "type": { "text": "model" }, "value": ctx.model_version },
            { "type": { "text": "slidegrade" }, "value": env!("CARGO_PKG_VERSION") },
        ],
        "note": [{ "text": crate::output::report::NOTICE }],
    })
}

fn entry(full_url: String, resource: Value) -> Value {
    json!({ "fullUrl": full_url, "resource": resource })
}

fn coding(c: Code) -> Value {
    let mut v = json!({ "system": c.system, "code": c.code });
    if !c.display.is_empty() {
        v["display"] = json!(c.display);
    }
    v
}

fn concept(codings: &[Code], text: Option<&str>) -> Value {
    let mut v = json!({ "coding": codings.iter().map(|c| coding(*c)).collect::<Vec<_>>() });
    if let Some(text) = text {
        v["text"] = json!(text);
    }
    v
}

fn pattern_component(code: Code, pattern: u8) -> Value {
    let values: Vec<Code> = codes::gleason_pattern(pattern).into_iter().collect();
    json!({
        "code": concept(&[code], None),
        "valueCodeableConcept": concept(&values, Some(&format!("Gleason pattern {pattern}"))),
    })
}

fn quantity(value: f64, unit: &str, ucum: &str) -> Value {
    json!({ "value": value, "unit": unit, "system": codes::UCUM, "code": ucum })
}

fn order_identifier(kind: Code, value: &str) -> Value {
    json!({ "type": concept(&[kind], None), "value": value })
}

fn accession_identifier(accession: &str) -> Value {
    json!({
        "type": concept(&[codes::ACCESSION_ID_TYPE], None),
        "system": codes::ACCESSION_SYSTEM,
        "value": accession,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grade::pipeline::Outcome;
    use crate::grade::rule::{Grade, PatternAreas, grade};
    use std::collections::HashSet;
    use std::time::{Duration, UNIX_EPOCH};

    fn ctx(grade: Option<Grade>) -> ReportContext {
        ReportContext {
            job_id: "job-42".into(),
            order: crate::output::lims::OrderIdentity {
                accession_number: Some("S24-0001".into()),
                specimen_id: Some("S24-0001-A1".into()),
                ..Default::default()
            },
            slide_name: "biopsy.svs".into(),
            issued: UNIX_EPOCH + Duration::from_secs(1_714_566_896),
            outcome: if grade.is_some() {
                Outcome::Graded
            } else {
                Outcome::NoTissue
            },
            grade,
            confidence: Some(0.87654),
            model_name: "student".into(),
            model_version: "1.0.0".into(),
            model_sha256: "ab".repeat(32),
            overlay_png: Some(b"\x89PNG\r\n\x1a\nrest".to_vec()),
        }
    }

    fn graded_3_4() -> Grade {
        grade(&PatternAreas {
            benign: 7.0,
            g3: 2.0,
            g4: 1.0,
            g5: 0.0,
        })
    }

    fn resources<'a>(b: &'a Value, kind: &str) -> Vec<&'a Value> {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == kind)
            .collect()
    }

    fn has_code(concept: &Value, system: &str, code: &str) -> bool {
        concept["coding"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["system"] == system && c["code"] == code)
    }

    /// Every `reference` anywhere in the Bundle names one of its entries.
    fn assert_references_resolve(b: &Value) {
        let urls: HashSet<&str> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["fullUrl"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls.len(),
            b["entry"].as_array().unwrap().len(),
            "fullUrls are unique"
        );
        fn walk<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("reference", Value::String(s)) => out.push(s),
                            _ => walk(v, out),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(b, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            assert!(urls.contains(r), "unresolved reference {r}");
        }
    }

    #[test]
    fn graded_bundle_has_report_observations_specimen_and_device() {
        let b = bundle(&ctx(Some(graded_3_4())));
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "collection");
        assert_eq!(b["timestamp"], "2024-05-01T12:34:56Z");
        assert_references_resolve(&b);
        assert_eq!(
            b["entry"][0]["resource"]["resourceType"],
            "DiagnosticReport"
        );

        let report = resources(&b, "DiagnosticReport")[0];
        assert_eq!(report["status"], "final");
        assert!(has_code(&report["code"], codes::LOINC, "66117-3"));
        assert!(has_code(&report["category"][0], codes::LOINC, "LP7839-6"));
        assert!(has_code(&report["category"][0], codes::V2_0074, "SP"));
        assert_eq!(report["result"].as_array().unwrap().len(), 4);
        assert!(report.get("subject").is_none(), "no invented patient");
        let conclusion = report["conclusion"].as_str().unwrap();
        assert!(conclusion.starts_with("Gleason score 3+4=7, ISUP grade group 2; tumour 30.0%"));
        assert!(conclusion.ends_with(crate::output::report::NOTICE));
        let form = &report["presentedForm"][0];
        assert_eq!(form["contentType"], "image/png");
        assert_eq!(form["data"], base64(b"\x89PNG\r\n\x1a\nrest"));

        let obs = resources(&b, "Observation");
        assert_eq!(obs.len(), 4);
        for o in &obs {
            assert_eq!(o["status"], "final");
            assert!(
                o["device"]["reference"]
                    .as_str()
                    .unwrap()
                    .starts_with("urn:uuid:")
            );
            assert!(o["specimen"]["reference"].is_string());
            assert_eq!(o["meta"]["security"][0]["code"], "AIAST");
        }
        let gleason = obs
            .iter()
            .find(|o| has_code(&o["code"], codes::LOINC, "35266-6"))
            .unwrap();
        assert!(has_code(
            &gleason["valueCodeableConcept"],
            codes::SNOMED,
            "57403001"
        ));
        assert_eq!(gleason["valueCodeableConcept"]["text"], "3+4=7");
        let comps = gleason["component"].as_array().unwrap();
        assert!(has_code(&comps[0]["code"], codes::LOINC, "44641-9"));
        assert!(has_code(
            &comps[0]["valueCodeableConcept"],
            codes::SNOMED,
            "369772003"
        ));
        assert!(has_code(&comps[1]["code"], codes::LOINC, "44642-7"));
        assert!(has_code(
            &comps[1]["valueCodeableConcept"],
            codes::SNOMED,
            "369773008"
        ));

        let group = obs
            .iter()
            .find(|o| has_code(&o["code"], codes::LOINC, "94734-1"))
            .unwrap();
        assert!(has_code(&group["code"], codes::SNOMED, "385377005"));
        assert!(has_code(
            &group["valueCodeableConcept"],
            codes::SNOMED,
            "1279714001"
        ));
        assert!(has_code(
            &group["valueCodeableConcept"],
            codes::LOINC,
            "LA30795-1"
        ));

        let tumour = obs
            .iter()
            .find(|o| has_code(&o["code"], codes::LOINC, "44654-2"))
            .unwrap();
        assert_eq!(tumour["valueQuantity"]["value"], 30.0);
        assert_eq!(tumour["valueQuantity"]["code"], "%");
        let conf = obs
            .iter()
            .find(|o| has_code(&o["code"], codes::LOCAL, "confidence"))
            .unwrap();
        assert_eq!(conf["valueQuantity"]["value"], 0.877);

        let specimen = resources(&b, "Specimen")[0];
        assert_eq!(specimen["accessionIdentifier"]["value"], "S24-0001");
        assert_eq!(specimen["identifier"][0]["value"], "S24-0001-A1");
        let device = resources(&b, "Device")[0];
        assert_eq!(device["identifier"][0]["value"], "ab".repeat(32));
        assert_eq!(device["deviceName"][0]["name"], "student");
        assert_eq!(device["version"][0]["value"], "1.0.0");
    }

    #[test]
    fn bundle_is_reproducible() {
        let c = ctx(Some(graded_3_4()));
        assert_eq!(bundle(&c), bundle(&c));
        let mut other = c.clone();
        other.job_id = "job-43".into();
        assert_ne!(
            bundle(&c)["entry"][0]["fullUrl"],
            bundle(&other)["entry"][0]["fullUrl"]
        );
    }

    #[test]
    fn no_tissue_has_no_observations() {
        let b = bundle(&ctx(None));
        assert_references_resolve(&b);
        let report = resources(&b, "DiagnosticReport")[0];
        assert!(
            report["conclusion"]
                .as_str()
                .unwrap()
                .starts_with("No tissue found.")
        );
        assert!(report.get("result").is_none());
        assert!(resources(&b, "Observation").is_empty());
        assert_eq!(resources(&b, "Device").len(), 1);
    }

    #[test]
    fn benign_has_tumour_percent_but_no_grade() {
        let b = bundle(&ctx(Some(grade(&PatternAreas {
            benign: 5.0,
            ..Default::default()
        }))));
        assert_references_resolve(&b);
        let obs = resources(&b, "Observation");
        assert_eq!(obs.len(), 2);
        assert!(
            obs.iter()
                .all(|o| !has_code(&o["code"], codes::LOINC, "35266-6"))
        );
        let report = resources(&b, "DiagnosticReport")[0];
        assert!(report["conclusion"].as_str().unwrap().contains("benign"));
    }

    #[test]
    fn no_specimen_resource_without_identifiers() {
        let mut c = ctx(Some(graded_3_4()));
        c.order.accession_number = Some("  ".into());
        c.order.specimen_id = None;
        c.overlay_png = None;
        let b = bundle(&c);
        assert_references_resolve(&b);
        assert!(resources(&b, "Specimen").is_empty());
        let report = resources(&b, "DiagnosticReport")[0];
        assert!(report.get("specimen").is_none());
        assert!(report.get("presentedForm").is_none());
        assert_eq!(report["identifier"].as_array().unwrap().len(), 1);
    }
}
