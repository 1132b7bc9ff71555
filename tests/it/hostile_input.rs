//! Hostile inputs (issue 7): every file in the corpus (tests/hostile/, plus what is
//! generated here because it is big, empty or derived from the shared slides) gets a
//! specific refusal from the API (4xx, JSON `{error, error_type}`), from a job (state
//! `failed` with an error type), and from the CLI (one `error: ...` line, non-zero exit,
//! no panic); and the server is still up afterwards (`/healthz`, and a normal upload is
//! still accepted). RELIABILITY.md lists the corpus and the expected errors.

use crate::common;

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use slidegrade::build::onnx::{self, GraphNames};
use slidegrade::grade::pipeline::GradeOptions;
use slidegrade::model::contract::{self, ModelError};
use slidegrade::model::engine::EngineConfig;
use slidegrade::serve::http::{ApiSettings, AppState};
use slidegrade::serve::jobs::JobSettings;
use slidegrade::serve::jobs::webhook::WebhookSettings;
use slidegrade::serve::service::{self, ServiceConfig};
use slidegrade::slide::isolated::Decoder;
use slidegrade::slide::{Slide, SlideError};

const BIN: &str = env!("CARGO_BIN_EXE_slidegrade");

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile")
        .join(name)
}

fn cmu() -> Option<PathBuf> {
    common::shared_data().map(|d| d.join("slides/CMU-1-Small-Region.svs"))
}

/// Deterministic noise (xorshift), so a failure reproduces.
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A small JPEG with the corpus zip appended: a valid JPEG and a valid ZIP at once.
fn make_jpeg_zip_polyglot() -> Vec<u8> {
    let image =
        image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 128]));
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut bytes)
        .encode_image(&image)
        .unwrap();
    assert_eq!(&bytes[..2], [0xff, 0xd8]);
    bytes.extend(std::fs::read(corpus("archive.svs")).unwrap());
    bytes
}

// ---------------------------------------------------------------------------------------
// The server, in process on port 0, with the decoder in a child process as `serve` runs it.

struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    running: common::Running,
    client: reqwest::Client,
}

async fn start(dir: &Path, workers: usize, decoder_exe: &Path) -> Server {
    let models = dir.join("models");
    if !models.join("tiny").exists() {
        common::tiny_model(&models, "tiny", 1);
    }
    let config = ServiceConfig {
        models_dir: models,
        engine: EngineConfig::default(),
        store: slidegrade::serve::jobs::store::StoreLocation::Sqlite(
            slidegrade::serve::jobs::store::store_path(&dir.join("data")),
        ),
        api: ApiSettings {
            require_auth: false,
            shared_roots: vec![dir.to_path_buf()],
            max_upload_bytes: 64 << 20,
            ..ApiSettings::default()
        },
        jobs: JobSettings {
            workers,
            queue_capacity: 16,
            data_dir: dir.join("data"),
            grade: GradeOptions {
                decoder: Some(Decoder {
                    exe: decoder_exe.to_path_buf(),
                    timeout: Duration::from_secs(60),
                }),
                ..GradeOptions::default()
            },
            webhook: WebhookSettings::default(),
            lease: Duration::from_secs(3),
            hl7_results: None,
        },
        retention: Duration::from_secs(3600),
        shutdown_grace: Duration::from_secs(0),
    };
    let state = service::Service::build(&config).await.unwrap().state;
    let running = common::serve_on_loopback(state.clone(), &config).await;
    let addr = running.addr;
    Server {
        addr,
        state,
        running,
        client: reqwest::Client::new(),
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn upload_bytes(&self, file_name: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let form = Form::new().part("slide", Part::bytes(bytes).file_name(file_name.to_string()));
        let response = self
            .client
            .post(self.url("/v1/slides"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        json(response).await
    }

    async fn upload(&self, path: &Path) -> (StatusCode, Value) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        self.upload_bytes(&name, std::fs::read(path).unwrap()).await
    }

    async fn wait_for_job(&self, id: &str) -> Value {
        for _ in 0..600 {
            let response = self
                .client
                .get(self.url(&format!("/v1/jobs/{id}")))
                .send()
                .await
                .unwrap();
            let (status, job) = json(response).await;
            assert_eq!(status, StatusCode::OK, "{job}");
            if ["done", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("job {id} did not finish");
    }

    /// The server answers, and still takes a real slide (or, without the shared data,
    /// still lists its model).
    async fn assert_alive(&self) {
        let (status, body) =
            json(self.client.get(self.url("/healthz")).send().await.unwrap()).await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::OK, &Value::from("ok"))
        );
        let (status, body) = json(
            self.client
                .get(self.url("/v1/models"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["models"][0]["name"], "tiny", "{body}");
        if let Some(cmu) = cmu() {
            let (status, body) = self.upload(&cmu).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        }
    }

    async fn stop(self) {
        self.running.shutdown().await;
    }
}

async fn json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{status}: body is not JSON: {text:?}"));
    (status, value)
}

/// A refusal: this status, this `error_type`, and a message.
fn assert_refused(got: &(StatusCode, Value), status: StatusCode, error_type: &str) -> String {
    let (got_status, body) = got;
    assert_eq!(
        (*got_status, body["error_type"].as_str()),
        (status, Some(error_type)),
        "{body}"
    );
    let message = body["error"].as_str().expect("error message").to_string();
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "{message:?}"
    );
    message
}

/// Uploads `bytes` as `name` and expects the refusal, then checks the server is alive.
async fn refuse_upload(name: &str, bytes: Vec<u8>, error_type: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 0, Path::new(BIN)).await;
    let got = server.upload_bytes(name, bytes).await;
    let message = assert_refused(&got, StatusCode::UNPROCESSABLE_ENTITY, error_type);
    server.assert_alive().await;
    // Nothing refused is left behind: the only upload is the normal one, if any.
    let jobs = server.state.jobs.store.list_recent(10).unwrap();
    assert!(
        jobs.iter()
            .all(|j| j.slide_name == "CMU-1-Small-Region.svs"),
        "{jobs:?}"
    );
    server.stop().await;
    message
}

// ---------------------------------------------------------------------------------------
// The CLI.

fn slidegrade<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run slidegrade")
}

/// The one `error: ...` line of a failed run (and no panic, no backtrace).
fn cli_error<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = slidegrade(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
    lines[0].to_string()
}

/// `slidegrade grade` on `slide` with a tiny model in `dir`, expecting a one-line error.
fn cli_grade_error(dir: &Path, slide: &Path) -> String {
    let models = dir.join("cli-models");
    if !models.join("tiny").exists() {
        common::tiny_model(&models, "tiny", 2);
    }
    let out = dir.join("cli-out");
    cli_error(&[
        OsStr::new("grade"),
        OsStr::new("--quiet"),
        OsStr::new("--models-dir"),
        models.as_os_str(),
        OsStr::new("--model"),
        OsStr::new("tiny"),
        OsStr::new("--out"),
        out.as_os_str(),
        slide.as_os_str(),
    ])
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

// ---------------------------------------------------------------------------------------
// The cases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_svs_is_not_recognised() {
    let Some(cmu) = cmu() else { return };
    // The first 200 KB: tile data only, the TIFF directories (at the end) are gone.
    let bytes = std::fs::read(&cmu).unwrap()[..200_000].to_vec();
    let message = refuse_upload("truncated.svs", bytes.clone(), "unsupported_format").await;
    assert!(message.contains("does not recognize"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "truncated.svs", &bytes);
    let line = cli_error(&[OsStr::new("info"), path.as_os_str()]);
    assert!(
        line.contains("cannot open") && line.contains("truncated.svs"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svs_with_destroyed_tile_data_is_corrupt() {
    let Some(cmu) = cmu() else { return };
    // Directories intact, JPEG tile data zeroed: it opens, and the first decode fails.
    let mut bytes = std::fs::read(&cmu).unwrap();
    bytes[16..1_273_756].fill(0);
    let message = refuse_upload("zeroed.svs", bytes.clone(), "corrupt").await;
    // The direct tile reader's JPEG decoder says why ("decoding a JPEG tile: …"), as
    // OpenSlide's libjpeg did ("Not a JPEG file") before it.
    assert!(message.contains("JPEG"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "zeroed.svs", &bytes);
    let line = cli_grade_error(dir.path(), &path);
    assert!(line.contains("slide data is unreadable"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_named_svs() {
    let bytes = noise(256 << 10, 7);
    let message = refuse_upload("random.svs", bytes.clone(), "unsupported_format").await;
    assert!(message.contains("does not recognize"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "random.svs", &bytes);
    let line = cli_error(&[OsStr::new("info"), path.as_os_str()]);
    assert!(line.contains("does not recognize"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiff_claiming_a_million_by_a_million_pixels_is_refused_before_allocating() {
    let path = corpus("huge-dimensions.tiff");
    // The header alone is fine: opening reads no pixels.
    let slide = Slide::open(&path, None).unwrap();
    assert_eq!(slide.dimensions(), (1_000_000, 1_000_000));
    // Any read of the whole slide is refused by the pixel budget, before a buffer exists.
    let err = slide.thumbnail_at_mpp(500.0).unwrap_err();
    assert!(matches!(err, SlideError::NoPyramid { .. }), "{err}");
    let err = slide
        .read_region_at_mpp(0, 0, 100_000, 100_000, 0.5)
        .unwrap_err();
    assert!(matches!(err, SlideError::TooLarge { .. }), "{err}");
    // A small read is fine (the tiles are absent, so white).
    let tile = slide.read_region_at_mpp(0, 0, 64, 64, 0.5).unwrap();
    assert!(tile.pixels().all(|p| p.0 == [255; 3]));

    let message = refuse_upload("huge.tiff", std::fs::read(&path).unwrap(), "no_pyramid").await;
    assert!(
        message.contains("1000000x1000000") && message.contains("pyramid"),
        "{message}"
    );

    let dir = tempfile::tempdir().unwrap();
    let line = cli_grade_error(dir.path(), &path);
    assert!(line.contains("no pyramid level small enough"), "{line}");
    let info = slidegrade(&[OsStr::new("info"), OsStr::new("--json"), path.as_os_str()]);
    assert!(info.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_file() {
    let message = refuse_upload("empty.svs", Vec::new(), "unsupported_format").await;
    assert!(message.contains("does not recognize"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "empty.svs", b"");
    let line = cli_error(&[OsStr::new("info"), path.as_os_str()]);
    assert!(line.contains("does not recognize"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_archive() {
    let bytes = std::fs::read(corpus("archive.svs")).unwrap();
    assert_eq!(&bytes[..4], b"PK\x03\x04");
    let message = refuse_upload("archive.svs", bytes, "unsupported_format").await;
    assert!(message.contains("does not recognize"), "{message}");

    let line = cli_error(&[OsStr::new("info"), corpus("archive.svs").as_os_str()]);
    assert!(line.contains("does not recognize"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_zip_polyglot() {
    let bytes = make_jpeg_zip_polyglot();
    let message = refuse_upload("polyglot.svs", bytes.clone(), "unsupported_format").await;
    assert!(message.contains("cannot open"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "polyglot.jpg", &bytes);
    let line = cli_error(&[OsStr::new("info"), path.as_os_str()]);
    assert!(line.contains("cannot open"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let name = OsString::from_vec(b"slide-\xff\xfe.svs".to_vec());
    assert!(name.to_str().is_none());

    // CLI: a real slide under a non-UTF-8 name opens; its name is shown lossily.
    if let Some(cmu) = cmu() {
        let path = dir.path().join(&name);
        std::fs::copy(&cmu, &path).unwrap();
        let out = slidegrade(&[OsStr::new("info"), OsStr::new("--json"), path.as_os_str()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let props: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(props["file_name"], "slide-\u{fffd}\u{fffd}.svs");
    }
    // ...and a bad file under such a name still fails on one line.
    let bad = dir.path().join(OsStr::from_bytes(b"bad-\xff.svs"));
    std::fs::write(&bad, b"not a slide").unwrap();
    let line = cli_error(&[OsStr::new("info"), bad.as_os_str()]);
    assert!(line.contains("does not recognize"), "{line}");

    // Multipart: the raw bytes \xff\xfe in the filename. The upload is judged by its
    // content and stored under a safe name.
    let server = start(dir.path(), 0, Path::new(BIN)).await;
    let body_with = |content: &[u8]| {
        let mut body = Vec::new();
        body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"slide\"; filename=\"slide-\xff\xfe.svs\"\r\nContent-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        body
    };
    let post = |body: Vec<u8>| {
        server
            .client
            .post(server.url("/v1/slides"))
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(body)
            .send()
    };
    let got = json(post(body_with(b"not a slide")).await.unwrap()).await;
    assert_refused(&got, StatusCode::UNPROCESSABLE_ENTITY, "unsupported_format");
    if let Some(cmu) = cmu() {
        let (status, job) =
            json(post(body_with(&std::fs::read(cmu).unwrap())).await.unwrap()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        // The name cannot be read as text, so it is stored under the neutral `slide`.
        assert_eq!(job["slide_name"], "slide", "{job}");
    }
    server.assert_alive().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_malformed_json_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 0, Path::new(BIN)).await;
    // A fresh connection per request: the server closes the connection after refusing an
    // oversized body, and a pooled connection could be reused while it is closing.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let post = |route: &str, body: Vec<u8>| {
        client
            .post(server.url(route))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // 1 MiB of JSON, 16 times the 64 KiB limit, on both JSON routes. (Far larger bodies
    // get the same answer, but the server closes the connection after it without reading
    // the rest, so a client still writing sees a broken pipe instead: see RELIABILITY.md.)
    let huge = serde_json::to_vec(&serde_json::json!({ "path": "a".repeat(1 << 20) })).unwrap();
    for route in ["/v1/slides", "/v1/grade"] {
        let got = json(post(route, huge.clone()).await.unwrap()).await;
        let message = assert_refused(&got, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        assert!(message.contains("JSON body over"), "{message}");
    }
    // Within the limit but nested 30,000 deep, in a field the flattened options buffer:
    // serde's recursion limit, not a stack overflow.
    let deep = format!(
        "{{\"path\": \"a.svs\", \"x\": {}{}}}",
        "[".repeat(30_000),
        "]".repeat(30_000)
    )
    .into_bytes();
    let got = json(post("/v1/slides", deep).await.unwrap()).await;
    let message = assert_refused(&got, StatusCode::BAD_REQUEST, "bad_request");
    assert!(message.contains("recursion limit"), "{message}");
    // Not UTF-8, and a path with a NUL byte.
    let got = json(
        post("/v1/slides", b"{\"path\": \"\xff\xfe\"}".to_vec())
            .await
            .unwrap(),
    )
    .await;
    assert_refused(&got, StatusCode::BAD_REQUEST, "bad_request");
    let got = json(
        post("/v1/slides", br#"{"path": "a\u0000b.svs"}"#.to_vec())
            .await
            .unwrap(),
    )
    .await;
    assert_refused(&got, StatusCode::BAD_REQUEST, "bad_request");
    server.assert_alive().await;
    server.stop().await;
}

/// `slidegrade serve` as a child process on port 0 with `models`; returns its address,
/// its JSON log events up to "listening", and the process.
fn serve(dir: &Path, models: &Path) -> (SocketAddr, Vec<Value>, std::process::Child) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--no-auth",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "0",
        ])
        .args(["--log-format", "json"])
        .arg("--models-dir")
        .arg(models)
        .arg("--data-dir")
        .arg(dir.join("serve-data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut events = Vec::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "server exited: {events:?}"
        );
        let event: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"));
        if event["fields"]["message"] == "listening" {
            break event["fields"]["addr"].as_str().unwrap().parse().unwrap();
        }
        events.push(event);
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (addr, events, child)
}

#[test]
fn model_whose_sha256_does_not_match_is_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let (_, tampered) = common::tiny_model(&models, "tampered", 3);
    let mut bytes = std::fs::read(&tampered.onnx_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&tampered.onnx_path, bytes).unwrap();

    let err = contract::load(&tampered.dir).unwrap_err();
    assert!(matches!(err, ModelError::ShaMismatch { .. }), "{err}");
    assert_eq!(err.kind(), "model_sha256_mismatch");

    let line = cli_error(&[OsStr::new("check-model"), tampered.dir.as_os_str()]);
    assert!(
        line.contains("sha256") && line.contains("model.json says"),
        "{line}"
    );

    // The server logs the refusal, serves nothing from that folder, and is not ready.
    let (addr, log, mut child) = serve(dir.path(), &models);
    let refused = log
        .iter()
        .find(|event| event["fields"]["message"] == "refused model")
        .unwrap_or_else(|| panic!("no `refused model` line in {log:?}"));
    let fields = &refused["fields"];
    assert_eq!(refused["level"], "WARN", "{refused}");
    assert!(
        fields["folder"].as_str().unwrap().ends_with("tampered"),
        "{refused}"
    );
    assert!(
        fields["error"].as_str().unwrap().contains("sha256"),
        "{refused}"
    );
    let (status, body) = common::http_get(addr, "/v1/models");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["models"], serde_json::json!([]));
    assert_eq!(body["refused"][0]["error_type"], "model_sha256_mismatch");
    assert_eq!(common::http_get(addr, "/readyz").0, 503);
    assert_eq!(common::http_get(addr, "/healthz").0, 200);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Replaces `dir/model.onnx` with `model` and records its sha256, so that only the
/// graph check can refuse it.
fn install_graph(dir: &Path, model: &onnx_ir::ModelProto) {
    use onnx_ir::Message;
    let bytes = model.write_to_bytes().unwrap();
    std::fs::write(dir.join(contract::ONNX_FILE), &bytes).unwrap();
    let mut manifest = contract::read_manifest(&dir.join(contract::MANIFEST_FILE)).unwrap();
    manifest.onnx_sha256 = contract::sha256_hex(&bytes);
    contract::write_manifest(dir, &manifest).unwrap();
}

#[test]
fn onnx_with_the_wrong_outputs_is_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let net = common::tiny_network(4);

    // Only `logits`: the CAM head is gone.
    let (_, only_logits) = common::tiny_model(dir.path(), "only-logits", 4);
    let mut graph = onnx::to_model(&net, &GraphNames::default(), "only-logits").unwrap();
    graph
        .graph
        .mut_or_insert_default()
        .output
        .retain(|o| o.name == "logits");
    install_graph(&only_logits.dir, &graph);

    // Both outputs there, under other names.
    let (_, renamed) = common::tiny_model(dir.path(), "renamed", 4);
    let names = GraphNames {
        logits: "scores".into(),
        cam: "heat".into(),
        ..GraphNames::default()
    };
    install_graph(
        &renamed.dir,
        &onnx::to_model(&net, &names, "renamed").unwrap(),
    );

    for (model_dir, expected) in [
        (
            &only_logits.dir,
            r#"no output named `cam` (outputs: ["logits"])"#,
        ),
        (
            &renamed.dir,
            r#"no output named `logits` (outputs: ["scores", "heat", "attention"])"#,
        ),
    ] {
        let err = contract::load(model_dir).unwrap_err();
        assert!(matches!(err, ModelError::GraphMismatch(_)), "{err}");
        assert!(
            err.to_string().contains(expected),
            "`{err}` should say {expected}"
        );
        let line = cli_error(&[OsStr::new("check-model"), model_dir.as_os_str()]);
        assert!(line.contains(expected), "{line}");
    }
}

/// A stand-in for the decoder binary: crashes (SIGSEGV) on files whose name contains
/// `crash-now`, crashes on the second probe of files named `crash-later` (so the upload
/// passes and the job's own probe dies), and hands everything else to the real binary.
fn crashing_decoder(dir: &Path) -> PathBuf {
    let exe = dir.join("crashing-decoder.sh");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/sh\n\
             case \"$2\" in\n\
               *crash-now*) kill -SEGV $$ ;;\n\
               *crash-later*) if [ -e \"$2.probed\" ]; then kill -SEGV $$; fi; touch \"$2.probed\"; exit 0 ;;\n\
             esac\n\
             exec '{BIN}' \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_crash_refuses_the_slide_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let decoder = crashing_decoder(dir.path());
    let server = start(dir.path(), 1, &decoder).await;

    // At submission: the probe's child dies, the upload is refused, nothing is queued.
    let got = server.upload_bytes("crash-now.svs", noise(1024, 1)).await;
    let message = assert_refused(&got, StatusCode::UNPROCESSABLE_ENTITY, "decoder_crashed");
    assert!(message.contains("signal 11 (SIGSEGV)"), "{message}");
    assert!(server.state.jobs.store.list_recent(10).unwrap().is_empty());

    // In the job: the upload passes, the job's probe dies, the job fails with the reason.
    let (status, job) = server.upload_bytes("crash-later.svs", noise(1024, 2)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job = server.wait_for_job(job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error_type"], "decoder_crashed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("SIGSEGV"), "{job}");

    // Still serving, and a real slide still grades end to end.
    server.assert_alive().await;
    if cmu().is_some() {
        let jobs = server.state.jobs.store.list_recent(1).unwrap();
        let done = server.wait_for_job(&jobs[0].id).await;
        assert_eq!(done["state"], "done", "{done}");
    }
    server.stop().await;
}

/// Found by `fuzz/slide_open` (RELIABILITY.md): a 3.6 KB mutation of huge-dimensions.tiff
/// on which `openslide_open` asks for an 8 GiB buffer (and copes when refused), whose
/// resolution tags claim a 1.27 km wide slide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzer_found_tiff_is_refused_by_the_pixel_budget() {
    let path = corpus("fuzz-openslide-8gib-malloc.tiff");
    let message = refuse_upload("found.tiff", std::fs::read(&path).unwrap(), "no_pyramid").await;
    assert!(message.contains("1000000x1000000"), "{message}");
    let dir = tempfile::tempdir().unwrap();
    let line = cli_grade_error(dir.path(), &path);
    assert!(line.contains("no pyramid level small enough"), "{line}");
}
