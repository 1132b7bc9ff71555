//! The result as an HL7 v2.5.1 ORU^R01 message (segments separated by `\r`).
//!
//! Structure (ORU_R01 in v2.5.1: MSH, then PATIENT_RESULT = `[PATIENT] {ORDER_OBSERVATION}`):
//!
//! - **MSH**: sending application `SLIDEGRADE`, time, `ORU^R01^ORU_R01`, control id from
//!   the job id, processing id `P`, version `2.5.1`, character set `UNICODE UTF-8`.
//! - **PID** when the LIS sent a patient identifier: PID-3 the identifier, PID-5 the
//!   name as `family^given` (or `""`, HL7's explicit null, when no name was sent: PID-5 is
//!   required). Without an identifier there is no PID: the PATIENT group is optional, and
//!   a PID must not be invented.
//! - **ORC**: order control `RE` (observations to follow), ORC-2 the placer and ORC-3 the
//!   filler order number, as in OBR.
//! - **OBR**: OBR-2 the placer order number (as sent, else the accession number) and
//!   OBR-3 the filler order number (as sent, else `<job id>^SLIDEGRADE`), universal service id LOINC 66117-3 "Prostate
//!   Pathology biopsy report" (IHE PaLM RPC), observation and status-change times,
//!   diagnostic service section `SP` (table 0074), result status `F`.
//! - **OBX** (status `F`), codes as in the FHIR Bundle ([`super::codes`]):
//!   NM Gleason score (LOINC 35266-6), NM primary and secondary pattern (44641-9,
//!   44642-7), NM ISUP grade group (94734-1), NM tumour % (44654-2, units `%` UCUM),
//!   NM confidence (local), TX conclusion (22637-3), ST model identity (local), and the
//!   overlay as ED (`^IM^PNG^Base64^…`, local code) when there is one. Benign: no Gleason or
//!   grade group OBX; no tissue: only conclusion, model and overlay.
//! - A job that could not be graded gets the same MSH, PID, ORC and OBR with result status
//!   `X`, and the reason in an NTE ([`oru_r01_failed`]).
//! - **SPM** when a specimen id is given (SPM-2, type `TISS` from table 0487).
//!
//! Free text goes through [`escape`]; base64 needs none (its alphabet has no delimiter).

use super::codes::{self, Code};
use super::{OrderIdentity, ReportContext, base64, hl7_dtm, sha256_hex};

/// Sending application (MSH-3) and the namespace of the filler order number (OBR-3).
pub const SENDING_APPLICATION: &str = "SLIDEGRADE";

/// HL7 v2 escaping for the default delimiters `|^~\&` (v2.5.1 §2.7.4): each becomes an
/// escape sequence, and so do control characters (CR would end the segment), as `\Xhh\`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            c if c.is_ascii_control() => out.push_str(&format!("\\X{:02X}\\", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// MSH-10 is an ST of at most 20 characters in v2.5.1: the job id itself when it fits and
/// needs no escaping, otherwise the first 20 hex digits of its sha256.
pub fn control_id(job_id: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !job_id.is_empty() && job_id.len() <= 20 && job_id.chars().all(plain) {
        job_id.to_string()
    } else {
        sha256_hex(job_id.as_bytes())[..20].to_string()
    }
}

/// MSH, then PID, ORC and OBR for `order`, with `result_status` in OBR-25 (`F` final,
/// `X` the order could not be done).
fn order_segments(
    job_id: &str,
    order: &OrderIdentity,
    time: &str,
    result_status: &str,
) -> Vec<String> {
    let mut segments = vec![segment(&[
        "MSH",
        "^~\\&",
        SENDING_APPLICATION,
        "",
        "",
        "",
        time,
        "",
        "ORU^R01^ORU_R01",
        &control_id(job_id),
        "P",
        "2.5.1",
        "",
        "",
        "",
        "",
        "",
        "UNICODE UTF-8",
    ])];
    if let Some((id, name)) = order.patient() {
        let name = match name {
            Some((family, "")) => escape(family),
            Some((family, given)) => format!("{}^{}", escape(family), escape(given)),
            None => "\"\"".to_string(),
        };
        segments.push(segment(&["PID", "1", "", &escape(id), "", &name]));
    }
    let placer = order.placer_order().map(escape).unwrap_or_default();
    let filler = match order.filler_order() {
        Some(filler) => escape(filler),
        None => format!("{}^{SENDING_APPLICATION}", escape(job_id)),
    };
    segments.push(segment(&["ORC", "RE", &placer, &filler]));
    segments.push(segment(&[
        "OBR",
        "1",
        &placer,
        &filler,
        &cwe(codes::REPORT, "LN"),
        "",
        "",
        time, // OBR-7 observation date/time
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        time, // OBR-22 results report/status change
        "",
        codes::CATEGORY_SP.code, // OBR-24 diagnostic service section
        result_status,           // OBR-25 result status
    ]));
    segments
}

/// The ORU^R01 for a job that could not be graded: result status `X` ("results cannot be
/// obtained for this observation") and the reason in an NTE.
pub fn oru_r01_failed(
    job_id: &str,
    order: &OrderIdentity,
    issued: std::time::SystemTime,
    reason: &str,
) -> String {
    let mut segments = order_segments(job_id, order, &hl7_dtm(issued), "X");
    segments.push(segment(&["NTE", "1", "L", &escape(reason)]));
    let mut message = segments.join("\r");
    message.push('\r');
    message
}

/// The ORU^R01 message for one job.
pub fn oru_r01(ctx: &ReportContext) -> String {
    let time = hl7_dtm(ctx.issued);
    let mut segments = order_segments(&ctx.job_id, &ctx.order, &time, "F");

    let mut obx = Vec::new();
    let nm = |n: f64| format!("{n}");
    if let Some((g, primary, secondary)) = ctx.cancer() {
        obx.push((
            "NM",
            cwe(codes::GLEASON_SCORE, "LN"),
            nm(g.gleason_score.into()),
            "",
        ));
        obx.push((
            "NM",
            cwe(codes::GLEASON_PRIMARY, "LN"),
            nm(primary.into()),
            "",
        ));
        obx.push((
            "NM",
            cwe(codes::GLEASON_SECONDARY, "LN"),
            nm(secondary.into()),
            "",
        ));
        obx.push((
            "NM",
            cwe(codes::GRADE_GROUP, "LN"),
            nm(g.isup_grade_group.into()),
            "",
        ));
    }
    if let Some(percent) = ctx.tumour_percent() {
        obx.push((
            "NM",
            cwe(codes::TUMOUR_PERCENT, "LN"),
            nm(percent),
            "%^percent^UCUM",
        ));
    }
    if let Some(confidence) = ctx.confidence_reported() {
        obx.push(("NM", cwe(codes::CONFIDENCE, "L"), nm(confidence), ""));
    }
    obx.push((
        "TX",
        cwe(codes::CONCLUSION, "LN"),
        escape(&ctx.conclusion()),
        "",
    ));
    obx.push((
        "ST",
        cwe(codes::MODEL, "L"),
        escape(&ctx.model_identity()),
        "",
    ));
    if let Some(png) = &ctx.overlay_png {
        // ED: source application ^ type of data ^ subtype ^ encoding ^ data.
        let ed = format!("{SENDING_APPLICATION}^IM^PNG^Base64^{}", base64(png));
        obx.push(("ED", cwe(codes::OVERLAY, "L"), ed, ""));
    }
    for (i, (kind, code, value, units)) in obx.iter().enumerate() {
        segments.push(segment(&[
            "OBX",
            &(i + 1).to_string(),
            kind,
            code,
            "",
            value,
            units,
            "",
            "",
            "",
            "",
            "F", // OBX-11 result status
            "",
            "",
            &time, // OBX-14 date/time of the observation
        ]));
    }

    if let Some(specimen) = ctx.specimen() {
        segments.push(segment(&[
            "SPM",
            "1",
            &escape(specimen),
            "",
            "TISS^Tissue^HL70487",
        ]));
    }
    let mut message = segments.join("\r");
    message.push('\r');
    message
}

/// `code^display^system` with the display escaped (LOINC displays hold no delimiters, but
/// local ones might).
fn cwe(code: Code, system: &str) -> String {
    format!("{}^{}^{system}", escape(code.code), escape(code.display))
}

/// Fields joined by `|`, trailing empty fields dropped. For MSH, `fields[1]` is MSH-2:
/// MSH-1 is the separator itself.
fn segment(fields: &[&str]) -> String {
    let end = fields
        .iter()
        .rposition(|f| !f.is_empty())
        .map_or(0, |i| i + 1);
    fields[..end].join("|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grade::pipeline::Outcome;
    use crate::grade::rule::{PatternAreas, grade};
    use std::time::{Duration, UNIX_EPOCH};

    fn ctx() -> ReportContext {
        ReportContext {
            job_id: "job-42".into(),
            order: OrderIdentity {
                accession_number: Some("S24|0001^A".into()),
                specimen_id: Some("S24-0001-A1".into()),
                ..OrderIdentity::default()
            },
            slide_name: "biopsy.svs".into(),
            issued: UNIX_EPOCH + Duration::from_secs(1_714_566_896),
            outcome: Outcome::Graded,
            grade: Some(grade(&PatternAreas {
                benign: 7.0,
                g3: 1.0,
                g4: 2.0,
                g5: 0.0,
            })),
            confidence: Some(0.9),
            model_name: "student&co".into(),
            model_version: "1.0.0".into(),
            model_sha256: "cd".repeat(32),
            overlay_png: Some(vec![0x89, b'P', b'N', b'G']),
        }
    }

    fn fields<'a>(msg: &'a str, name: &str) -> Vec<Vec<&'a str>> {
        msg.split('\r')
            .filter(|s| s.starts_with(name))
            .map(|s| s.split('|').collect())
            .collect()
    }

    #[test]
    fn escape_replaces_every_delimiter() {
        assert_eq!(escape("a|b^c~d\\e&f"), "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f");
        assert_eq!(escape("line1\r\nline2"), "line1\\X0D\\\\X0A\\line2");
        assert_eq!(escape("plain 3+4=7 (ISUP 2) µm"), "plain 3+4=7 (ISUP 2) µm");
        assert_eq!(escape(""), "");
        // No delimiter survives escaping.
        let e = escape("|^~&\r");
        assert!(!e.contains(['|', '^', '~', '&', '\r']));
    }

    #[test]
    fn control_id_fits_msh10() {
        assert_eq!(control_id("job-42"), "job-42");
        let long = control_id("0123456789abcdef0123456789abcdef");
        assert_eq!(long.len(), 20);
        assert_eq!(long, control_id("0123456789abcdef0123456789abcdef"));
        assert_eq!(control_id("a|b").len(), 20);
    }

    #[test]
    fn pid_carries_the_identifier_and_the_name_or_an_explicit_null() {
        let pid = |name: Option<&str>| {
            let mut c = ctx();
            c.order.patient_id = Some("MRN|7".into());
            c.order.patient_name = name.map(str::to_string);
            let msg = oru_r01(&c);
            let fields = fields(&msg, "PID")[0].clone();
            (fields[3].to_string(), fields[5].to_string())
        };
        assert_eq!(
            pid(Some("Doe, Jane")),
            ("MRN\\F\\7".into(), "Doe^Jane".into())
        );
        assert_eq!(pid(Some("Doe")), ("MRN\\F\\7".into(), "Doe".into()));
        assert_eq!(pid(None), ("MRN\\F\\7".into(), "\"\"".into()));
        // A name without an identifier names no one: no PID.
        let mut c = ctx();
        c.order.patient_name = Some("Doe, Jane".into());
        assert!(!oru_r01(&c).contains("\rPID"));
    }

    #[test]
    fn message_has_the_expected_segments_and_values() {
        let msg = oru_r01(&ctx());
        assert!(msg.ends_with('\r'));
        assert!(!msg.contains('\n'));
        let names: Vec<&str> = msg.trim_end().split('\r').map(|s| &s[..3]).collect();
        assert_eq!(
            names,
            [
                "MSH", "ORC", "OBR", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX",
                "SPM"
            ]
        );
        assert!(!msg.contains("\rPID"), "no patient identifier sent: no PID");
        let orc = &fields(&msg, "ORC")[0];
        assert_eq!(
            (orc[1], orc[2], orc[3]),
            ("RE", "S24\\F\\0001\\S\\A", "job-42^SLIDEGRADE")
        );

        let msh = &fields(&msg, "MSH")[0];
        assert_eq!(msh[1], "^~\\&");
        assert_eq!(msh[2], "SLIDEGRADE");
        assert_eq!(msh[6], "20240501123456+0000");
        assert_eq!(msh[8], "ORU^R01^ORU_R01");
        assert_eq!(msh[9], "job-42");
        assert_eq!((msh[10], msh[11]), ("P", "2.5.1"));

        let obr = &fields(&msg, "OBR")[0];
        assert_eq!(obr[2], "S24\\F\\0001\\S\\A");
        assert_eq!(obr[3], "job-42^SLIDEGRADE");
        assert!(obr[4].starts_with("66117-3^"));
        assert_eq!((obr[24], obr[25]), ("SP", "F"));

        let obx = fields(&msg, "OBX");
        let value = |code: &str| {
            obx.iter()
                .find(|f| f[3].starts_with(&format!("{code}^")))
                .map(|f| (f[2], f[5], f.get(6).copied().unwrap_or("")))
                .unwrap()
        };
        assert_eq!(value("35266-6"), ("NM", "7", ""));
        assert_eq!(value("44641-9"), ("NM", "4", ""));
        assert_eq!(value("44642-7"), ("NM", "3", ""));
        assert_eq!(value("94734-1"), ("NM", "3", ""));
        assert_eq!(value("44654-2").1, "30");
        assert_eq!(value("44654-2").2, "%^percent^UCUM");
        assert_eq!(value("confidence"), ("NM", "0.9", ""));
        assert!(
            value("model")
                .1
                .starts_with("student\\T\\co v1.0.0 sha256:cdcd")
        );
        assert_eq!(value("overlay").1, "SLIDEGRADE^IM^PNG^Base64^iVBORw==");
        assert!(obx.iter().all(|f| f[11] == "F"));
        assert_eq!(fields(&msg, "SPM")[0][2], "S24-0001-A1");
    }

    #[test]
    fn no_tissue_has_only_conclusion_and_model() {
        let mut c = ctx();
        c.outcome = Outcome::NoTissue;
        c.grade = None;
        c.overlay_png = None;
        c.order.specimen_id = None;
        let msg = oru_r01(&c);
        let obx = fields(&msg, "OBX");
        assert_eq!(obx.len(), 2);
        assert!(obx[0][5].starts_with("No tissue found."));
        assert!(fields(&msg, "SPM").is_empty());
    }
}
