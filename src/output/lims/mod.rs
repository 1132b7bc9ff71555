//! Result messages for a laboratory information system (LIS/LIMS): one graded job as a
//! FHIR R4 Bundle ([`fhir::bundle`]) or as an HL7 v2.5.1 ORU^R01 message ([`hl7::oru_r01`]).
//!
//! Both are built from one [`ReportContext`] and use the same codes ([`codes`]), so the two
//! formats never disagree. Both echo the [`OrderIdentity`] the LIS sent with the slide
//! (patient, order numbers, accession number, specimen), so that it can match the result
//! to its patient and order; what it did not send is left out, never invented.
//!
//! Output is reproducible: the same context gives the same bytes (resource ids are derived
//! from the job id, timestamps come from the context).

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::grade::pipeline::Outcome;
use crate::grade::rule::Grade;
use crate::output::report::{GradeReport, NOTICE};

pub mod fhir;
pub mod hl7;

/// Who and what a result is for, as the LIS sent it with the slide. All optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderIdentity {
    /// The LIS's case number.
    pub accession_number: Option<String>,
    pub specimen_id: Option<String>,
    /// The LIS's patient identifier (PID-3; FHIR `subject.identifier`).
    pub patient_id: Option<String>,
    /// `Family, Given`, or a family name alone (PID-5; FHIR `subject.display`).
    pub patient_name: Option<String>,
    /// The order number of the system that placed the order (ORC-2, OBR-2).
    pub placer_order_number: Option<String>,
    /// The order number of the system that fills it (ORC-3, OBR-3).
    pub filler_order_number: Option<String>,
}

impl OrderIdentity {
    /// The accession number, unless blank.
    pub fn accession(&self) -> Option<&str> {
        non_blank(&self.accession_number)
    }

    /// The specimen id, unless blank.
    pub fn specimen(&self) -> Option<&str> {
        non_blank(&self.specimen_id)
    }

    /// The patient's identifier and, if given, `(family, given)` name. None without an
    /// identifier: a name alone identifies no one.
    pub fn patient(&self) -> Option<(&str, Option<(&str, &str)>)> {
        let id = non_blank(&self.patient_id)?;
        let name = non_blank(&self.patient_name).map(|name| match name.split_once(',') {
            Some((family, given)) => (family.trim(), given.trim()),
            None => (name.trim(), ""),
        });
        Some((id, name))
    }

    /// The placer order number: as sent, else the accession number (the LIS's case number
    /// is its order number when it sends no other).
    pub fn placer_order(&self) -> Option<&str> {
        non_blank(&self.placer_order_number).or_else(|| self.accession())
    }

    /// The filler order number as sent, if any; otherwise the job id names the order.
    pub fn filler_order(&self) -> Option<&str> {
        non_blank(&self.filler_order_number)
    }
}

/// Everything a result message says about one job.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportContext {
    pub job_id: String,
    pub order: OrderIdentity,
    /// The slide's file name (no directories).
    pub slide_name: String,
    /// When the result was issued (the job's finish time).
    pub issued: SystemTime,
    pub outcome: Outcome,
    /// `None` when no tissue was found. Holds the tumour percentage too.
    pub grade: Option<Grade>,
    /// Tissue-weighted mean of the tiles' top class probability, 0–1.
    pub confidence: Option<f64>,
    pub model_name: String,
    pub model_version: String,
    /// sha256 of the model's ONNX file, lower-case hex.
    pub model_sha256: String,
    /// `overlay.png`, embedded in both messages when given.
    pub overlay_png: Option<Vec<u8>>,
}

impl ReportContext {
    /// From the server's job record and the job's `result.json` content.
    pub fn from_report(
        job_id: impl Into<String>,
        order: OrderIdentity,
        issued: SystemTime,
        report: &GradeReport,
        overlay_png: Option<Vec<u8>>,
    ) -> Self {
        ReportContext {
            job_id: job_id.into(),
            order,
            slide_name: report.slide.file_name.clone(),
            issued,
            outcome: report.outcome,
            grade: report.grade.clone(),
            confidence: report.confidence,
            model_name: report.model.name.clone(),
            model_version: report.model.version.clone(),
            model_sha256: report.model.onnx_sha256.clone(),
            overlay_png,
        }
    }

    /// The grade, when there was tissue to grade.
    pub fn graded(&self) -> Option<&Grade> {
        match self.outcome {
            Outcome::Graded => self.grade.as_ref(),
            Outcome::NoTissue => None,
        }
    }

    /// `(grade, primary, secondary)` when cancer was found.
    pub fn cancer(&self) -> Option<(&Grade, u8, u8)> {
        let g = self.graded()?;
        match (g.primary, g.secondary) {
            (Some(p), Some(s)) if g.isup_grade_group > 0 => Some((g, p, s)),
            _ => None,
        }
    }

    /// The accession number, unless blank.
    pub fn accession(&self) -> Option<&str> {
        self.order.accession()
    }

    /// The specimen id, unless blank.
    pub fn specimen(&self) -> Option<&str> {
        self.order.specimen()
    }

    /// Tumour percentage as reported: one decimal place.
    pub fn tumour_percent(&self) -> Option<f64> {
        self.graded().map(|g| round_to(g.tumour_percent, 1))
    }

    /// Confidence as reported: three decimal places.
    pub fn confidence_reported(&self) -> Option<f64> {
        self.graded()?;
        self.confidence.map(|c| round_to(c, 3))
    }

    /// The report's conclusion: the finding, then the notice that this is research software.
    pub fn conclusion(&self) -> String {
        let finding = match (self.graded(), self.cancer()) {
            (None, _) => "No tissue found.".to_string(),
            (Some(_), Some((g, _, _))) => format!(
                "Gleason score {}, ISUP grade group {}; tumour {:.1}% of tissue.",
                g.gleason,
                g.isup_grade_group,
                self.tumour_percent().unwrap_or(0.0)
            ),
            (Some(_), None) => "No Gleason pattern 3, 4 or 5 found (benign).".to_string(),
        };
        // The model is named in its own field (Device, OBX); this stays short for HL7
        // receivers that cap OBX-5 text at an ST's 199 characters.
        format!("{finding} Automated result (slidegrade). {NOTICE}")
    }

    /// "name vVERSION sha256:HEX", for free-text fields.
    pub fn model_identity(&self) -> String {
        format!(
            "{} v{} sha256:{}",
            self.model_name, self.model_version, self.model_sha256
        )
    }
}

fn non_blank(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.trim().is_empty())
}

/// The codes both messages use. Sources (cited per code):
/// - mCODE STU4 (HL7 US), profile "Prostate Gleason Grade Group"
///   (`mcode-prostate-gleason-grade-group`): code SNOMED 385377005, value from the
///   "Gleason Grade Value Set" (ISUP grade group with its Gleason score, SNOMED).
/// - IHE PaLM APSR as profiled by the German MII pathology module (`mii-pr-patho-finding`):
///   LOINC 35266-6, 44641-9, 44642-7, 94734-1 and 44654-2, SNOMED Gleason pattern and
///   score codes.
/// - IHE PaLM Radiology Pathology Concordance (RPC): DiagnosticReport code 66117-3 with
///   category LOINC LP7839-6; HL7 v2 table 0074 "SP" for the same category.
/// - LOINC answer list LL5543-5 for the grade group answers (display exactly as LOINC
///   publishes it, typo in group 5 included).
pub mod codes {
    pub const LOINC: &str = "http://loinc.org";
    pub const SNOMED: &str = "http://snomed.info/sct";
    pub const UCUM: &str = "http://unitsofmeasure.org";
    pub const V2_0074: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";
    pub const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
    pub const OBSERVATION_CATEGORY: &str =
        "http://terminology.hl7.org/CodeSystem/observation-category";
    pub const V3_OBSERVATION_VALUE: &str =
        "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
    /// This service's own codes, for what no standard code exists (confidence, model, overlay).
    pub const LOCAL: &str = "urn:slidegrade:code";
    pub const JOB_SYSTEM: &str = "urn:slidegrade:job";
    pub const ACCESSION_SYSTEM: &str = "urn:slidegrade:accession";
    pub const SPECIMEN_SYSTEM: &str = "urn:slidegrade:specimen";
    pub const MODEL_SHA256_SYSTEM: &str = "urn:slidegrade:model-sha256";

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Code {
        pub system: &'static str,
        pub code: &'static str,
        pub display: &'static str,
    }

    const fn loinc(code: &'static str, display: &'static str) -> Code {
        Code {
            system: LOINC,
            code,
            display,
        }
    }

    const fn snomed(code: &'static str, display: &'static str) -> Code {
        Code {
            system: SNOMED,
            code,
            display,
        }
    }

    const fn local(code: &'static str, display: &'static str) -> Code {
        Code {
            system: LOCAL,
            code,
            display,
        }
    }

    /// DiagnosticReport.code / OBR-4 (IHE PaLM RPC).
    pub const REPORT: Code = loinc("66117-3", "Prostate Pathology biopsy report");
    /// DiagnosticReport.category (IHE SDC/eCC on FHIR, US Core) ...
    pub const CATEGORY_PATHOLOGY: Code = loinc("LP7839-6", "Pathology");
    /// ... and its HL7 v2 equivalent (table 0074), also OBR-24.
    pub const CATEGORY_SP: Code = Code {
        system: V2_0074,
        code: "SP",
        display: "Surgical Pathology",
    };
    pub const GLEASON_SCORE: Code = loinc("35266-6", "Gleason score in Specimen Qualitative");
    pub const GLEASON_PRIMARY: Code = loinc("44641-9", "Gleason pattern.primary in Prostate tumor");
    pub const GLEASON_SECONDARY: Code =
        loinc("44642-7", "Gleason pattern.secondary in Prostate tumor");
    /// The grade group observation's code in mCODE ...
    pub const GRADE_GROUP_MCODE: Code = snomed(
        "385377005",
        "Gleason grade finding for prostatic cancer (finding)",
    );
    /// ... and in IHE PaLM/LOINC.
    pub const GRADE_GROUP: Code = loinc(
        "94734-1",
        "Prostate cancer grade group [Score] in Prostate tumor Qualitative",
    );
    /// Percentage of the prostatic tissue involved by tumour (CAP/PaLM, used for cores).
    pub const TUMOUR_PERCENT: Code = loinc("44654-2", "Tissue involved by tumor in Prostate tumor");
    /// The narrative conclusion (HL7 v2 OBX).
    pub const CONCLUSION: Code = loinc("22637-3", "Pathology report final diagnosis");
    pub const CONFIDENCE: Code = local(
        "confidence",
        "Model confidence (mean top-class probability)",
    );
    pub const MODEL: Code = local("model", "Grading model identity");
    pub const OVERLAY: Code = local("overlay", "Grad-CAM overlay image");

    /// v2-0203 "ACSN": marks an identifier as the accession number.
    pub const ACCESSION_ID_TYPE: Code = Code {
        system: V2_0203,
        code: "ACSN",
        display: "Accession ID",
    };
    pub const PLACER_ID_TYPE: Code = Code {
        system: V2_0203,
        code: "PLAC",
        display: "Placer Identifier",
    };
    pub const FILLER_ID_TYPE: Code = Code {
        system: V2_0203,
        code: "FILL",
        display: "Filler Identifier",
    };
    pub const CATEGORY_LABORATORY: Code = Code {
        system: OBSERVATION_CATEGORY,
        code: "laboratory",
        display: "Laboratory",
    };
    /// HL7 security label for content asserted by an AI (THO v3-ObservationValue).
    pub const AI_ASSERTED: Code = Code {
        system: V3_OBSERVATION_VALUE,
        code: "AIAST",
        display: "Artificial Intelligence asserted",
    };

    /// SNOMED CT Gleason pattern (MII patho module; mCODE uses the same concepts).
    pub fn gleason_pattern(pattern: u8) -> Option<Code> {
        Some(match pattern {
            3 => snomed("369772003", "Gleason Pattern 3 (finding)"),
            4 => snomed("369773008", "Gleason Pattern 4 (finding)"),
            5 => snomed("369774002", "Gleason Pattern 5 (finding)"),
            _ => return None,
        })
    }

    /// SNOMED CT Gleason score 6–10 (MII patho module's Gleason score value set). The
    /// display is left out: the sources disagree on its wording.
    pub fn gleason_score(score: u8) -> Option<Code> {
        let code = match score {
            6 => "84556003",
            7 => "57403001",
            8 => "33013007",
            9 => "58925000",
            10 => "24514009",
            _ => return None,
        };
        Some(snomed(code, ""))
    }

    /// SNOMED CT's description of an ISUP grade group concept.
    macro_rules! isup {
        ($group:literal, $score:literal) => {
            concat!(
                "International Society of Urological Pathology grade group ",
                $group,
                " (Gleason score ",
                $score,
                ") (qualifier value)"
            )
        };
    }

    /// mCODE's value for the grade group: SNOMED CT, one concept per Gleason combination
    /// (mCODE STU4 "Gleason Grade Value Set").
    pub fn grade_group_mcode(primary: u8, secondary: u8) -> Option<Code> {
        Some(match (primary, secondary) {
            (3, 3) => snomed("1279715000", isup!(1, "3 + 3 = 6")),
            (3, 4) => snomed("1279714001", isup!(2, "3 + 4 = 7")),
            (4, 3) => snomed("1279716004", isup!(3, "4 + 3 = 7")),
            (4, 4) => snomed("1279717008", isup!(4, "4 + 4 = 8")),
            (3, 5) => snomed("1279718003", isup!(4, "3 + 5 = 8")),
            (5, 3) => snomed("1279719006", isup!(4, "5 + 3 = 8")),
            (4, 5) => snomed("1279720000", isup!(5, "4 + 5 = 9")),
            (5, 4) => snomed("1279721001", isup!(5, "5 + 4 = 9")),
            (5, 5) => snomed("1279722008", isup!(5, "5 + 5 = 10")),
            _ => return None,
        })
    }

    /// LOINC answer (list LL5543-5) for a grade group 1–5.
    pub fn grade_group_answer(group: u8) -> Option<Code> {
        Some(match group {
            1 => loinc(
                "LA30794-4",
                "ISUP Grade (Grade Group) 1 (Gleason score <=6)",
            ),
            2 => loinc(
                "LA30795-1",
                "ISUP Grade (Grade Group) 2 (Gleason score 3+4=7)",
            ),
            3 => loinc(
                "LA30796-9",
                "ISUP Grade (Grade Group) 3 (Gleason score 4+3=7)",
            ),
            4 => loinc("LA30797-7", "ISUP Grade (Grade Group) 4 (Gleason score 8)"),
            5 => loinc(
                "LA30798-5",
                "ISUP Grade (Group Group) 5 (Gleason score 9-10)",
            ),
            _ => return None,
        })
    }
}

/// FHIR `instant`: `2024-05-01T12:34:56Z` (RFC 3339, UTC, whole seconds). Times before 1970
/// are clamped to the epoch (a result is never issued then).
pub(crate) fn fhir_instant(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t.max(UNIX_EPOCH)).to_string()
}

/// HL7 v2 DTM with an explicit UTC offset: `20240501123456+0000`.
pub(crate) fn hl7_dtm(t: SystemTime) -> String {
    let digits: String = fhir_instant(t)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    format!("{digits}+0000")
}

/// A UUID that depends only on the job id and `kind`, so a message is reproducible.
pub(crate) fn derived_uuid(job_id: &str, kind: &str) -> String {
    crate::output::name_based_id(&format!("slidegrade\0{job_id}\0{kind}"))
}

/// Standard base64 with padding (RFC 4648 §4), for the embedded PNG.
pub(crate) fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// sha256 of `bytes`, lower-case hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn round_to(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_time_formats() {
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723); // 2000-02-29 01:02:03
        assert_eq!(fhir_instant(t), "2000-02-29T01:02:03Z");
        assert_eq!(hl7_dtm(t), "20000229010203+0000");
        assert_eq!(fhir_instant(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(hl7_dtm(before), "19700101000000+0000");
        let y = UNIX_EPOCH + Duration::from_millis(1_735_689_599_900);
        assert_eq!(fhir_instant(y), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn derived_uuids_are_stable_and_distinct() {
        let a = derived_uuid("job-1", "DiagnosticReport");
        assert_eq!(a, derived_uuid("job-1", "DiagnosticReport"));
        assert_ne!(a, derived_uuid("job-1", "Device"));
        assert_ne!(a, derived_uuid("job-2", "DiagnosticReport"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "5", "version 5 (name-based)");
        assert!(
            matches!(&a[19..20], "8" | "9" | "a" | "b"),
            "RFC 9562 variant"
        );
        assert!(
            a.chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn grade_codes_cover_every_reportable_grade() {
        for p in 3..=5u8 {
            assert!(codes::gleason_pattern(p).is_some());
            for s in 3..=5u8 {
                let group = crate::grade::rule::isup_grade_group(p, s);
                let mcode = codes::grade_group_mcode(p, s).unwrap();
                assert!(
                    mcode.display.contains(&format!("grade group {group} ")),
                    "{p}+{s}"
                );
                assert!(
                    mcode.display.contains(&format!("{p} + {s} = {}", p + s)),
                    "{p}+{s}"
                );
                assert!(codes::grade_group_answer(group).is_some());
                assert!(codes::gleason_score(p + s).is_some());
            }
        }
        assert!(codes::gleason_pattern(2).is_none());
        assert!(codes::grade_group_answer(0).is_none());
    }
}
