//! HL7 v2 orders in over MLLP (`serve --mllp-bind`), the way an LIS or an interface
//! engine (Mirth Connect, Rhapsody) sends them when a case is accessioned.
//!
//! - **Framing** (MLLP, HL7 v2 Appendix C): each message is `0x0B`, the message, `0x1C
//!   0x0D`; bytes outside a frame are ignored, as the standard allows.
//! - **Messages**: `OML^O21` (v2.5.1), and `ORM^O01` for older LIS. Parsed with the
//!   `hl7-parser` crate; only the fields below are read.
//! - **The slide** is named by an `OBX` whose OBX-3 identifier is `SLIDE_PATH` (OBX-5: a
//!   path under `--shared-root`), or by its barcode: the container id in `SAC-3`, else
//!   the specimen id in `SPM-2`, matched to the one slide file of that name (any slide
//!   extension) under the shared roots.
//! - **The job** is queued as a `{"path": ...}` submission is, with the patient (PID-3,
//!   PID-5), the order numbers (ORC-2, ORC-3) and the specimen (SPM-2) from the order.
//!   The idempotency key is the sending application plus the placer order number (ORC-2),
//!   so an order sent twice makes one job.
//! - **The answer** is `ACK^O21` (or `ACK^O01`): `AA` with the job id in MSA-3 when the job
//!   exists; `AE` with an ERR segment (HL7 table 0357 code and the reason) when the order
//!   cannot become a job (no slide named, unknown or ambiguous barcode, a path outside the
//!   share, not a slide); `AR` when the server cannot take work now (queue full, shutting
//!   down) or the message is not an order: the sender should resend later.
//!
//! Results go out the same way (`serve --mllp-results HOST:PORT`): each finished job's
//! ORU^R01 is framed, sent, and delivered once the receiver's ACK says AA (or CA); any
//! other answer, or none, is retried with backoff like a webhook
//! ([`crate::serve::jobs::outbox`]), every attempt shown on `GET /v1/jobs/{id}`.
//!
//! Nothing from an order is logged except its control id and the outcome: patient and
//! order identifiers stay out of the logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hl7_parser::Message;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::output::lims::hl7::{SENDING_APPLICATION, control_id, escape};
use crate::serve::http::AppState;
use crate::serve::http::error::ApiError;
use crate::serve::http::intake::queue_shared_slide;
use crate::serve::jobs::outbox::Attempt;
use crate::serve::jobs::store::{Delivery, JobRequest};

const START_BLOCK: u8 = 0x0b;
const END_BLOCK: u8 = 0x1c;
const CARRIAGE_RETURN: u8 = 0x0d;

/// A message larger than this is refused and the connection closed (an order is a few KB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// OBX-3 identifier of the observation that carries the slide's path.
pub const SLIDE_PATH_OBSERVATION: &str = "SLIDE_PATH";

/// File extensions of slides, for finding one by its barcode.
const SLIDE_EXTENSIONS: &[&str] = &[
    "svs", "tif", "tiff", "ndpi", "vms", "vmu", "scn", "mrxs", "svslide", "bif", "dcm",
];

#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    #[error("MLLP frame over {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("MLLP frame not ended by 0x1C 0x0D")]
    BadTrailer,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the next framed message; `None` at the end of the stream.
pub async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, MllpError> {
    let mut skipped = Vec::new();
    // Anything before the start byte (keep-alive newlines, noise) is ignored.
    if reader.read_until(START_BLOCK, &mut skipped).await? == 0
        || skipped.last() != Some(&START_BLOCK)
    {
        return Ok(None);
    }
    let mut message = Vec::new();
    let limited = &mut reader.take(MAX_MESSAGE_BYTES as u64 + 1);
    limited.read_until(END_BLOCK, &mut message).await?;
    if message.last() != Some(&END_BLOCK) {
        return Err(if message.len() > MAX_MESSAGE_BYTES {
            MllpError::TooLarge
        } else {
            MllpError::BadTrailer
        });
    }
    message.pop();
    if reader.read_u8().await? != CARRIAGE_RETURN {
        return Err(MllpError::BadTrailer);
    }
    Ok(Some(message))
}

/// Writes one framed message.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &[u8],
) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(message.len() + 3);
    frame.push(START_BLOCK);
    frame.extend_from_slice(message);
    frame.extend_from_slice(&[END_BLOCK, CARRIAGE_RETURN]);
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Where an order says its slide is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlideRef {
    /// OBX `SLIDE_PATH`: a path under a shared root.
    Path(String),
    /// SAC-3 or SPM-2: the slide's barcode, its file name without extension.
    Barcode(String),
}

/// The parts of an order that become a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub slide: Option<SlideRef>,
    pub request: JobRequest,
}

/// What an ACK needs from the message it answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// MSH-3, MSH-4: the sender, who becomes the ACK's receiver.
    pub sending_application: String,
    pub sending_facility: String,
    /// MSH-9.2: O21 or O01 (the ACK's trigger).
    pub trigger: String,
    /// MSH-10.
    pub control_id: String,
}

/// Why an order becomes no job: the ACK code, the HL7 table 0357 error code, and the
/// reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub acknowledgment: &'static str,
    pub code: &'static str,
    pub reason: String,
}

impl Refusal {
    fn error(code: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal {
            acknowledgment: "AE",
            code,
            reason: reason.into(),
        }
    }

    fn reject(code: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal {
            acknowledgment: "AR",
            code,
            reason: reason.into(),
        }
    }

    /// An intake refusal: the server's own state (5xx) is a reject to resend later;
    /// the order's content (4xx) is an error the sender must fix.
    fn from_intake(e: &ApiError) -> Refusal {
        let reason = format!("{}: {e}", e.kind());
        match e.status().as_u16() {
            409 => Refusal::error("205", reason),
            403 | 404 => Refusal::error("204", reason),
            s if s >= 500 => Refusal::reject("207", reason),
            _ => Refusal::error("207", reason),
        }
    }
}

/// Decoded (unescaped) text at `query`, `None` when absent or empty.
fn text(message: &Message, query: &str) -> Option<String> {
    let value = message.query(query)?;
    let decoded = value.display(&message.separators).to_string();
    let decoded = decoded.trim();
    (!decoded.is_empty()).then(|| decoded.to_string())
}

/// Reads an order: its header (what the ACK answers; as much as could be read) and the
/// order, or the refusal to answer with.
pub fn parse_order(raw: &str) -> (Header, Result<Order, Refusal>) {
    // Interface engines differ on segment terminators; accept \r, \n and \r\n.
    let message = match hl7_parser::parse_message_with_lenient_newlines(raw) {
        Ok(message) => message,
        Err(e) => {
            let refusal = Refusal::reject("100", format!("not an HL7 v2 message: {e}"));
            return (Header::default(), Err(refusal));
        }
    };
    let header = Header {
        sending_application: text(&message, "MSH.3").unwrap_or_default(),
        sending_facility: text(&message, "MSH.4").unwrap_or_default(),
        trigger: text(&message, "MSH.9.2").unwrap_or_default(),
        control_id: text(&message, "MSH.10").unwrap_or_default(),
    };
    let version = text(&message, "MSH.12.1").unwrap_or_default();
    if !supported_version(&version) {
        let refusal = Refusal::reject(
            "203",
            format!(
                "unsupported HL7 version `{version}`: send v2.3 to v2.8 (OML^O21 needs v2.5 or later)"
            ),
        );
        return (header, Err(refusal));
    }
    let kind = (text(&message, "MSH.9.1"), text(&message, "MSH.9.2"));
    match (kind.0.as_deref(), kind.1.as_deref()) {
        (Some("OML"), Some("O21")) | (Some("ORM"), Some("O01")) => {}
        _ => {
            let refusal = Refusal::reject(
                "200",
                format!(
                    "unsupported message type {}^{}: send OML^O21 or ORM^O01",
                    kind.0.unwrap_or_default(),
                    kind.1.unwrap_or_default()
                ),
            );
            return (header, Err(refusal));
        }
    }

    let slide_path = message
        .segments()
        .filter(|s| s.name == "OBX")
        .find(|obx| {
            obx.field(3)
                .and_then(|f| f.component(1))
                .is_some_and(|c| c.raw_value() == SLIDE_PATH_OBSERVATION)
        })
        .and_then(|obx| obx.field(5))
        .map(|f| f.display(&message.separators).to_string())
        .filter(|p| !p.trim().is_empty());
    let barcode = text(&message, "SAC.3.1").or_else(|| text(&message, "SPM.2.1"));
    let slide = match (slide_path, barcode.clone()) {
        (Some(path), _) => Some(SlideRef::Path(path)),
        (None, Some(barcode)) => Some(SlideRef::Barcode(barcode)),
        (None, None) => None,
    };
    let patient_name = match (text(&message, "PID.5.1"), text(&message, "PID.5.2")) {
        (Some(family), Some(given)) => Some(format!("{family}, {given}")),
        (family, _) => family,
    };
    let request = JobRequest {
        patient_id: text(&message, "PID.3.1"),
        patient_name,
        placer_order_number: text(&message, "ORC.2.1").or_else(|| text(&message, "OBR.2.1")),
        filler_order_number: text(&message, "ORC.3.1").or_else(|| text(&message, "OBR.3.1")),
        specimen_id: text(&message, "SPM.2.1"),
        ..JobRequest::default()
    };
    (header, Ok(Order { slide, request }))
}

/// HL7 v2.3 (ORM^O01 from older LIS) through v2.8: the fields read here have not moved
/// between those versions.
fn supported_version(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(2), Some(minor)) => (3..=8).contains(&minor),
        _ => false,
    }
}

/// The one slide file named `barcode` (any slide extension) under `roots`, searched
/// recursively.
pub fn find_by_barcode(roots: &[PathBuf], barcode: &str) -> Result<PathBuf, Refusal> {
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if is_slide_named(&path, barcode) {
                found.push(path);
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Refusal::error(
            "204",
            format!("no slide file named `{barcode}` under the shared roots"),
        )),
        n => Err(Refusal::error(
            "205",
            format!("{n} slide files are named `{barcode}`; send SLIDE_PATH instead"),
        )),
    }
}

fn is_slide_named(path: &Path, barcode: &str) -> bool {
    let stem = path.file_stem().and_then(|s| s.to_str());
    let ext = path.extension().and_then(|s| s.to_str());
    stem == Some(barcode)
        && ext.is_some_and(|e| SLIDE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The ACK for `header`: `AA` with `job_id`, or the refusal with an ERR segment.
pub fn ack(header: &Header, outcome: Result<&str, &Refusal>, now: std::time::SystemTime) -> String {
    let trigger = if header.trigger.is_empty() {
        "O21"
    } else {
        header.trigger.as_str()
    };
    let time = crate::output::lims::hl7_dtm(now);
    let ack_id = control_id(&format!("ack-{}-{time}", header.control_id));
    let msh = [
        "MSH",
        "^~\\&",
        SENDING_APPLICATION,
        "",
        &escape(&header.sending_application),
        &escape(&header.sending_facility),
        &time,
        "",
        &format!("ACK^{}^ACK", escape(trigger)),
        &ack_id,
        "P",
        "2.5.1",
    ]
    .join("|");
    let control = escape(&header.control_id);
    match outcome {
        Ok(job_id) => format!("{msh}\rMSA|AA|{control}|{}\r", escape(job_id)),
        Err(refusal) => format!(
            "{msh}\rMSA|{}|{control}\rERR|||{}^{}^HL70357|E||||{}\r",
            refusal.acknowledgment,
            refusal.code,
            escape(&refusal.reason),
            escape(&refusal.reason),
        ),
    }
}

/// Turns one order into a job: the job id, or why not.
async fn accept(state: &AppState, raw: &str) -> (Header, Result<String, Refusal>) {
    let (header, order) = parse_order(raw);
    let order = match order {
        Ok(order) => order,
        Err(refusal) => return (header, Err(refusal)),
    };
    let path = match order.slide {
        Some(SlideRef::Path(path)) => path,
        Some(SlideRef::Barcode(barcode)) => {
            let roots = state.api.shared_roots.clone();
            match tokio::task::spawn_blocking(move || find_by_barcode(&roots, &barcode)).await {
                Ok(Ok(path)) => path.display().to_string(),
                Ok(Err(refusal)) => return (header, Err(refusal)),
                Err(e) => return (header, Err(Refusal::reject("207", e.to_string()))),
            }
        }
        None => {
            let refusal = Refusal::error(
                "101",
                format!(
                    "the order names no slide: send an OBX with OBX-3 `{SLIDE_PATH_OBSERVATION}`, or the barcode in SAC-3 or SPM-2"
                ),
            );
            return (header, Err(refusal));
        }
    };
    // One job per order: the placer's order number within the sending application (or,
    // without one, the message control id).
    let order_key = order
        .request
        .placer_order_number
        .clone()
        .unwrap_or_else(|| format!("msh10:{}", header.control_id));
    let key = format!("hl7:{}:{order_key}", header.sending_application);
    let key: String = key
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    match queue_shared_slide(state, &path, order.request, Some(&key)).await {
        Ok((job, _)) => (header, Ok(job.id)),
        Err(e) => (header, Err(Refusal::from_intake(&e))),
    }
}

/// Sends one job's ORU^R01 to the receiver named in the delivery and reads its ACK.
pub async fn send_result(delivery: &Delivery) -> Attempt {
    let failed = |error: String| Attempt {
        status: None,
        error: Some(error),
    };
    let stream = match tokio::net::TcpStream::connect(delivery.url.as_str()).await {
        Ok(stream) => stream,
        Err(e) => return failed(format!("cannot connect to {}: {e}", delivery.url)),
    };
    let (read, mut write) = stream.into_split();
    if let Err(e) = write_frame(&mut write, delivery.payload.as_bytes()).await {
        return failed(format!("cannot send: {e}"));
    }
    let mut reader = tokio::io::BufReader::new(read);
    let ack = match read_frame(&mut reader).await {
        Ok(Some(ack)) => String::from_utf8_lossy(&ack).into_owned(),
        Ok(None) => return failed("the receiver closed the connection without an ACK".into()),
        Err(e) => return failed(format!("unreadable ACK: {e}")),
    };
    let Ok(message) = hl7_parser::parse_message_with_lenient_newlines(&ack) else {
        return failed("the answer is not an HL7 message".into());
    };
    match text(&message, "MSA.1").as_deref() {
        Some("AA" | "CA") => Attempt {
            status: None,
            error: None,
        },
        code => {
            let reason = text(&message, "ERR.3.2")
                .or_else(|| text(&message, "MSA.3"))
                .unwrap_or_default();
            failed(format!("ACK {}: {reason}", code.unwrap_or("without MSA-1")))
        }
    }
}

/// Accepts MLLP connections until `shutdown` turns true; each connection is served
/// message by message, each answered before the next is read (as MLLP senders expect).
pub async fn serve_orders(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::warn!(%e, "MLLP accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let (read, mut write) = socket.into_split();
            let mut reader = tokio::io::BufReader::new(read);
            loop {
                let frame = tokio::select! {
                    frame = read_frame(&mut reader) => frame,
                    _ = shutdown.changed() => return,
                };
                let raw = match frame {
                    Ok(Some(raw)) => raw,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(%peer, %e, "closing MLLP connection");
                        return;
                    }
                };
                let text = String::from_utf8_lossy(&raw);
                let (header, outcome) = accept(&state, &text).await;
                let code = outcome.as_ref().map_or_else(|r| r.acknowledgment, |_| "AA");
                match &outcome {
                    Ok(job) => {
                        tracing::info!(%peer, control_id = %header.control_id, %job, "HL7 order accepted")
                    }
                    Err(refusal) => {
                        tracing::warn!(%peer, control_id = %header.control_id, code, error = refusal.code, "HL7 order refused")
                    }
                }
                let answer = ack(&header, outcome.as_deref(), std::time::SystemTime::now());
                if let Err(e) = write_frame(&mut write, answer.as_bytes()).await {
                    tracing::warn!(%peer, %e, "cannot send the ACK");
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OML: &str = "MSH|^~\\&|LIS|PATH|SLIDEGRADE|LAB|20261206120000||OML^O21^OML_O21|MSG001|P|2.5.1\r\
PID|1||MRN-1^^^HOSP^MR||Doe^Jane\r\
ORC|NW|ORD-9|FIL-3\r\
OBR|1|ORD-9||88305^Surgical pathology^CPT4\r\
OBX|1|ST|SLIDE_PATH^Slide path^L||cases/a\\T\\b.svs\r\
SPM|1|S26-1-A1\r";

    #[test]
    fn an_oml_o21_with_a_slide_path_becomes_a_request() {
        let (header, order) = parse_order(OML);
        let order = order.unwrap();
        assert_eq!(order.slide, Some(SlideRef::Path("cases/a&b.svs".into())));
        assert_eq!(header.control_id, "MSG001");
        assert_eq!(header.trigger, "O21");
        let r = &order.request;
        assert_eq!(r.patient_id.as_deref(), Some("MRN-1"));
        assert_eq!(r.patient_name.as_deref(), Some("Doe, Jane"));
        assert_eq!(r.placer_order_number.as_deref(), Some("ORD-9"));
        assert_eq!(r.filler_order_number.as_deref(), Some("FIL-3"));
        assert_eq!(r.specimen_id.as_deref(), Some("S26-1-A1"));
    }

    #[test]
    fn without_slide_path_the_barcode_names_the_slide() {
        let orm = OML
            .replace("OML^O21^OML_O21", "ORM^O01^ORM_O01")
            .replace("OBX|1|ST|SLIDE_PATH^Slide path^L||cases/a\\T\\b.svs\r", "");
        let order = parse_order(&orm).1.unwrap();
        assert_eq!(order.slide, Some(SlideRef::Barcode("S26-1-A1".into())));
        let with_sac = format!("{orm}SAC|||BC-77\r");
        assert_eq!(
            parse_order(&with_sac).1.unwrap().slide,
            Some(SlideRef::Barcode("BC-77".into()))
        );
    }

    #[test]
    fn versions_outside_2_3_to_2_8_are_rejected() {
        for (version, ok) in [
            ("2.5.1", true),
            ("2.3", true),
            ("2.8", true),
            ("2.2", false),
            ("3.0", false),
            ("", false),
        ] {
            let message = OML.replace("|P|2.5.1", &format!("|P|{version}"));
            let refused = parse_order(&message).1.err().map(|r| r.code);
            assert_eq!(refused.is_none(), ok, "{version}: {refused:?}");
            if !ok {
                assert_eq!(refused, Some("203"));
            }
        }
    }

    #[test]
    fn other_message_types_are_rejected() {
        let adt = OML.replace("OML^O21^OML_O21", "ADT^A01^ADT_A01");
        let (header, order) = parse_order(&adt);
        let refusal = order.unwrap_err();
        assert_eq!((refusal.acknowledgment, refusal.code), ("AR", "200"));
        let ack = ack(&header, Err(&refusal), std::time::UNIX_EPOCH);
        assert!(ack.contains("\rMSA|AR|MSG001\rERR|||200^"), "{ack}");
        assert!(ack.starts_with("MSH|^~\\&|SLIDEGRADE||LIS|PATH|"), "{ack}");
    }

    #[test]
    fn barcodes_match_one_slide_file_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("2026/12")).unwrap();
        std::fs::write(dir.path().join("2026/12/BC-1.svs"), b"").unwrap();
        std::fs::write(dir.path().join("BC-1.txt"), b"").unwrap();
        std::fs::write(dir.path().join("BC-2.ndpi"), b"").unwrap();
        std::fs::write(dir.path().join("2026/BC-2.tiff"), b"").unwrap();
        let roots = [dir.path().to_path_buf()];
        assert!(
            find_by_barcode(&roots, "BC-1")
                .unwrap()
                .ends_with("2026/12/BC-1.svs")
        );
        assert_eq!(find_by_barcode(&roots, "BC-2").unwrap_err().code, "205");
        assert_eq!(find_by_barcode(&roots, "BC-3").unwrap_err().code, "204");
    }

    #[tokio::test]
    async fn frames_round_trip_and_noise_between_frames_is_skipped() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"MSH|one").await.unwrap();
        wire.extend_from_slice(b"\r\n");
        write_frame(&mut wire, b"MSH|two").await.unwrap();
        let mut reader = tokio::io::BufReader::new(wire.as_slice());
        assert_eq!(read_frame(&mut reader).await.unwrap().unwrap(), b"MSH|one");
        assert_eq!(read_frame(&mut reader).await.unwrap().unwrap(), b"MSH|two");
        assert!(read_frame(&mut reader).await.unwrap().is_none());
        let mut bad = tokio::io::BufReader::new(&b"\x0bMSH|x\x1cX"[..]);
        assert!(matches!(
            read_frame(&mut bad).await,
            Err(MllpError::BadTrailer)
        ));
    }
}
