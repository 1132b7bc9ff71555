//! The grading service, in-process on port 0: uploads, polling, results, idempotency,
//! every auth refusal, path roots, load shedding, cancellation, restart recovery,
//! webhooks, metrics and the OpenAPI document.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use slidegrade::grade::pipeline::GradeOptions;
use slidegrade::model::engine::EngineConfig;
use slidegrade::serve::http::auth::create_key;
use slidegrade::serve::http::{ApiSettings, AppState};
use slidegrade::serve::jobs::JobSettings;
use slidegrade::serve::jobs::store::KeyRole;
use slidegrade::serve::jobs::webhook::{SIGNATURE_HEADER, WebhookSettings, sign};
use slidegrade::serve::service::{self, ServiceConfig};

struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    running: common::Running,
    keys: Keys,
}

struct Keys {
    read: String,
    submit: String,
    admin: String,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn stop(self) {
        self.running.shutdown().await;
    }
}

struct Setup {
    dir: PathBuf,
    workers: usize,
    queue_capacity: u64,
    max_upload_bytes: u64,
    sync_max_pixels: u64,
    shared_roots: Vec<PathBuf>,
    webhook_secret: Option<String>,
}

impl Setup {
    fn new(dir: &Path) -> Setup {
        let models = dir.join("models");
        if !models.join("tiny").exists() {
            common::tiny_model(&models, "tiny", 1);
        }
        Setup {
            dir: dir.to_path_buf(),
            workers: 1,
            queue_capacity: 16,
            max_upload_bytes: 64 << 20,
            sync_max_pixels: 100_000_000,
            shared_roots: Vec::new(),
            webhook_secret: None,
        }
    }

    async fn start(&self) -> Server {
        let config = ServiceConfig {
            models_dir: self.dir.join("models"),
            engine: EngineConfig::default(),
            store: slidegrade::serve::jobs::store::StoreLocation::Sqlite(
                slidegrade::serve::jobs::store::store_path(&self.dir.join("data")),
            ),
            api: ApiSettings {
                shared_roots: self.shared_roots.clone(),
                max_upload_bytes: self.max_upload_bytes,
                sync_max_pixels: self.sync_max_pixels,
                retry_after_secs: 7,
                ..ApiSettings::default()
            },
            jobs: JobSettings {
                workers: self.workers,
                queue_capacity: self.queue_capacity,
                data_dir: self.dir.join("data"),
                grade: GradeOptions::default(),
                webhook: WebhookSettings {
                    secret: self.webhook_secret.clone(),
                    retry_base: Duration::from_secs(1),
                    max_attempts: 4,
                    ..WebhookSettings::default()
                },
                lease: Duration::from_secs(3),
                hl7_results: None,
            },
            retention: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(0),
        };
        let state = service::Service::build(&config).await.unwrap().state;
        let store = &state.jobs.store;
        let keys = Keys {
            read: create_key(store, "reader", KeyRole::Read).unwrap(),
            submit: create_key(store, "lis", KeyRole::Submit).unwrap(),
            admin: create_key(store, "ops", KeyRole::Admin).unwrap(),
        };
        let running = common::serve_on_loopback(state.clone(), &config).await;
        let addr = running.addr;
        Server {
            addr,
            state,
            running,
            keys,
        }
    }
}

fn slide(name: &str) -> Option<PathBuf> {
    common::shared_data().map(|d| d.join("slides").join(name))
}

async fn upload(
    client: &reqwest::Client,
    server: &Server,
    path: &Path,
    fields: &[(&str, &str)],
    key: &str,
) -> reqwest::Response {
    let bytes = tokio::fs::read(path).await.unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut form = Form::new().part("slide", Part::bytes(bytes).file_name(name));
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    client
        .post(server.url("/v1/slides"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn wait_for_job(client: &reqwest::Client, server: &Server, id: &str) -> Value {
    for _ in 0..600 {
        let (status, job) = json(
            client
                .get(server.url(&format!("/v1/jobs/{id}")))
                .bearer_auth(&server.keys.read)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if ["done", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_poll_and_fetch_every_output() {
    let Some(cmu) = slide("CMU-1-Small-Region.svs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Setup::new(dir.path()).start().await;
    let client = reqwest::Client::new();

    let response = upload(
        &client,
        &server,
        &cmu,
        &[("accession_number", "S26-1234")],
        &server.keys.submit,
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let (_, job) = json(response).await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));

    let job = wait_for_job(&client, &server, &id).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["accession_number"], "S26-1234");
    assert!(job["progress_total"].as_u64().unwrap() > 0);
    assert_eq!(job["progress_done"], job["progress_total"]);

    let get = |path: String| {
        let client = client.clone();
        let key = server.keys.read.clone();
        let url = server.url(&path);
        async move { client.get(url).bearer_auth(key).send().await.unwrap() }
    };
    let (status, result) = json(get(format!("/v1/jobs/{id}/result")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["schema"], "slidegrade.result/1.3");
    assert_eq!(result["slide"]["file_name"], "CMU-1-Small-Region.svs");
    for (path, content_type) in [
        ("overlay.png", "image/png"),
        ("heatmap/G3.png", "image/png"),
        ("attention/G3.png", "image/png"),
        ("tiles.geojson", "application/geo+json"),
        ("tiles.csv", "text/csv"),
    ] {
        // The heatmaps and tile tables are written just after the job is done: until
        // then, 409 not_ready.
        let mut response = get(format!("/v1/jobs/{id}/{path}")).await;
        for _ in 0..100 {
            if response.status() != StatusCode::CONFLICT {
                break;
            }
            assert_eq!(json(response).await.1["error_type"], "not_ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
            response = get(format!("/v1/jobs/{id}/{path}")).await;
        }
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], content_type);
        assert!(!response.bytes().await.unwrap().is_empty());
    }
    for kind in ["heatmap", "attention"] {
        let response = get(format!("/v1/jobs/{id}/{kind}/..%2Fresult.png")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{kind}");
    }

    // What a client sees of a done job whose maps and tables are still being written,
    // and of one where writing them failed (the markers a worker leaves; issue 16 §3).
    let out_dir = dir.path().join("data/results").join(&id);
    assert!(
        !out_dir
            .join(slidegrade::serve::jobs::OUTPUTS_PENDING)
            .exists()
    );
    std::fs::remove_file(out_dir.join("tiles.csv")).unwrap();
    std::fs::write(out_dir.join(slidegrade::serve::jobs::OUTPUTS_PENDING), b"").unwrap();
    let (status, body) = json(get(format!("/v1/jobs/{id}/tiles.csv")).await).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::CONFLICT, Some("not_ready"))
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("still being written"),
        "{body}"
    );
    let (status, _) = json(get(format!("/v1/jobs/{id}/result")).await).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "result.json is there before the maps"
    );
    std::fs::remove_file(out_dir.join(slidegrade::serve::jobs::OUTPUTS_PENDING)).unwrap();
    std::fs::write(
        out_dir.join(slidegrade::serve::jobs::OUTPUTS_ERROR),
        "disk full",
    )
    .unwrap();
    let (status, body) = json(get(format!("/v1/jobs/{id}/tiles.csv")).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"].as_str().unwrap().ends_with("disk full"),
        "{body}"
    );

    // The LIMS messages of the finished job pass the real validators (scripts/setup-python.sh).
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "run `make test` (or scripts/setup-python.sh) to create .venv"
    );
    for (route, script) in [("fhir", "validate_fhir.py"), ("hl7", "parse_hl7.py")] {
        let response = get(format!("/v1/jobs/{id}/{route}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{route}");
        let file = dir.path().join(format!("message.{route}"));
        std::fs::write(&file, response.bytes().await.unwrap()).unwrap();
        let out = std::process::Command::new(&python)
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("scripts")
                    .join(script),
            )
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if route == "hl7" {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("S26-1234"),
                "accession routed back"
            );
        }
    }

    // Metrics saw the request and the tiles; OpenAPI and docs are served.
    let metrics = get("/metrics".into()).await.text().await.unwrap();
    assert!(
        metrics.contains(
            "slidegrade_http_requests_total{method=\"POST\",route=\"/v1/slides\",status=\"202\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("slidegrade_tiles_inferred_total"));
    assert!(metrics.contains("slidegrade_execution_provider{model=\"tiny\",provider=\"cpu\"} 1"));
    let (_, openapi) = json(get("/openapi.json".into()).await).await;
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    assert!(openapi["paths"]["/v1/slides"]["post"].is_object());
    assert_eq!(get("/docs".into()).await.status(), StatusCode::OK);
    let (status, ready) = json(get("/readyz".into()).await).await;
    assert_eq!(
        (status, ready["store_writable"].clone()),
        (StatusCode::OK, Value::Bool(true))
    );

    // Deleting a finished job removes it.
    let response = client
        .delete(server.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(&server.keys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get(format!("/v1/jobs/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let server = Setup::new(dir.path()).start().await;
    let client = reqwest::Client::new();
    let url = server.url("/v1/models");

    let (status, body) = json(client.get(&url).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    let response = client
        .get(&url)
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, body) = json(
        client
            .get(&url)
            .bearer_auth("sg_wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
    );
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(&server.keys.read)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // read cannot submit; submit cannot delete.
    let (status, body) = json(
        client
            .post(server.url("/v1/slides"))
            .bearer_auth(&server.keys.read)
            .json(&serde_json::json!({"path": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, _) = json(
        client
            .delete(server.url("/v1/jobs/x"))
            .bearer_auth(&server.keys.submit)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Health, readiness and metrics need no key.
    assert_eq!(
        client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_specific_errors_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(dir.path());
    setup.workers = 0;
    setup.max_upload_bytes = 4096;
    setup.shared_roots = vec![dir.path().join("shared")];
    std::fs::create_dir_all(dir.path().join("shared")).unwrap();
    std::fs::write(dir.path().join("secret.svs"), b"outside").unwrap();
    let server = setup.start().await;
    let client = reqwest::Client::new();
    let key = server.keys.submit.clone();
    let post_json = |body: Value| {
        let (client, url, key) = (client.clone(), server.url("/v1/slides"), key.clone());
        async move {
            json(
                client
                    .post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };

    let not_a_slide = dir.path().join("notes.svs");
    std::fs::write(&not_a_slide, b"hello, not a slide").unwrap();
    let (status, body) = json(upload(&client, &server, &not_a_slide, &[], &key).await).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unsupported_format")),
        "{body}"
    );

    let big = dir.path().join("big.svs");
    std::fs::write(&big, vec![7u8; 10_000]).unwrap();
    let (status, body) = json(upload(&client, &server, &big, &[], &key).await).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")),
        "{body}"
    );

    let (status, body) =
        json(upload(&client, &server, &not_a_slide, &[("mpp", "abc")], &key).await).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request")),
        "{body}"
    );
    let (status, body) =
        json(upload(&client, &server, &not_a_slide, &[("model", "nope")], &key).await).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::NOT_FOUND, Some("model_not_found")),
        "{body}"
    );
    let (status, _) = json(
        upload(
            &client,
            &server,
            &not_a_slide,
            &[("callback_url", "http://127.0.0.1:9/x")],
            &key,
        )
        .await,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "callbacks need a webhook secret"
    );

    // Traversal and paths outside the roots: 403.
    for path in [
        "../secret.svs",
        dir.path().join("secret.svs").to_str().unwrap(),
        "/etc/passwd",
    ] {
        let (status, body) = post_json(serde_json::json!({ "path": path })).await;
        assert_eq!(
            (status, body["error_type"].as_str()),
            (StatusCode::FORBIDDEN, Some("path_forbidden")),
            "{path}: {body}"
        );
    }
    let (status, body) = post_json(serde_json::json!({ "path": "missing.svs" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = post_json(serde_json::json!({ "nope": 1 })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let huge = "x".repeat(200_000);
    let (status, body) = post_json(serde_json::json!({ "path": huge })).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")),
        "{body}"
    );
    let response = client
        .post(server.url("/v1/slides"))
        .bearer_auth(&key)
        .body("plain")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // No refused upload is left on disk, and no job was created.
    let uploads = dir.path().join("data/uploads");
    let left = std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "refused uploads must be deleted");
    assert!(server.state.jobs.store.list_recent(10).unwrap().is_empty());

    // A slide without µm/px inside the root is refused with the reason.
    if let Some(tcga) = slide("TCGA-CR-7395-01A-01-TS1.svs") {
        std::fs::copy(&tcga, dir.path().join("shared/tcga.svs")).unwrap();
        let (status, body) = post_json(serde_json::json!({ "path": "tcga.svs" })).await;
        assert_eq!(
            (status, body["error_type"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("missing_mpp")),
            "{body}"
        );
        let (status, body) = post_json(serde_json::json!({ "path": "tcga.svs", "mpp": 0.5 })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_queue_limits_cancel_and_restart_lose_nothing() {
    let Some(cmu) = slide("CMU-1-Small-Region.svs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(dir.path());
    setup.workers = 0; // accept but do not grade: the queue fills
    setup.queue_capacity = 2;
    let server = setup.start().await;
    let client = reqwest::Client::new();
    let key = server.keys.submit.clone();
    let with_key = |idem: &str, accession: &str| {
        let (client, cmu, key, idem, accession) = (
            client.clone(),
            cmu.clone(),
            key.clone(),
            idem.to_string(),
            accession.to_string(),
        );
        let url = server.url("/v1/slides");
        async move {
            let bytes = tokio::fs::read(&cmu).await.unwrap();
            let form = Form::new()
                .part("slide", Part::bytes(bytes).file_name("cmu.svs"))
                .text("accession_number", accession);
            json(
                client
                    .post(url)
                    .bearer_auth(key)
                    .header("idempotency-key", idem)
                    .multipart(form)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let (status, first) = with_key("k1", "A1").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, again) = with_key("k1", "A1").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        again["id"], first["id"],
        "same key and body give the same job"
    );
    let (status, body) = with_key("k1", "A2").await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::CONFLICT, Some("idempotency_conflict"))
    );

    let (status, second) = with_key("k2", "A2").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // A small body: the server sheds load before reading it, and a large body still in
    // flight would see its connection closed instead of the 503.
    let small = dir.path().join("small.svs");
    std::fs::write(&small, b"tiny").unwrap();
    let response = upload(&client, &server, &small, &[], &key).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "7");
    let (_, body) = json(response).await;
    assert_eq!(body["error_type"], "queue_full");

    // Cancel the second while it is queued.
    let id2 = second["id"].as_str().unwrap().to_string();
    let response = client
        .delete(server.url(&format!("/v1/jobs/{id2}")))
        .bearer_auth(&server.keys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (_, job) = json(
        client
            .get(server.url(&format!("/v1/jobs/{id2}")))
            .bearer_auth(&server.keys.read)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(job["state"], "cancelled");
    let (status, body) = json(
        client
            .get(server.url(&format!("/v1/jobs/{id2}/result")))
            .bearer_auth(&server.keys.read)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::CONFLICT, Some("not_ready"))
    );

    // Simulate a crash mid-job: the first job is claimed (running) and the process dies.
    let claimed = server
        .state
        .jobs
        .store
        .claim_next("crashed-replica", Duration::from_secs(1))
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, first["id"].as_str().unwrap());
    server.stop().await;

    // Restart with a worker: the job is queued again and finishes.
    setup.workers = 1;
    let server = setup.start().await;
    let id1 = first["id"].as_str().unwrap();
    let job = wait_for_job(&client, &server, id1).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], 2);
    server.stop().await;
}

/// A webhook receiver on loopback that fails its first call, then accepts.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<(u16, String, String)>>>) {
    use axum::{Router, routing::post};
    let seen: Arc<Mutex<Vec<(u16, String, String)>>> = Arc::default();
    let log = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let mut log = log.lock().unwrap();
                let status = if log.is_empty() { 500 } else { 200 };
                let signature = headers
                    .get(SIGNATURE_HEADER)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                log.push((status, signature, body));
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_signed_retried_and_recorded() {
    let Some(cmu) = slide("CMU-1-Small-Region.svs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(dir.path());
    setup.webhook_secret = Some("s3cret".into());
    let server = setup.start().await;
    let client = reqwest::Client::new();
    let (hook, seen) = receiver().await;
    let callback = format!("http://{hook}/hook");
    let response = upload(
        &client,
        &server,
        &cmu,
        &[("callback_url", &callback), ("specimen_id", "SP-9")],
        &server.keys.submit,
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (_, job) = json(response).await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(wait_for_job(&client, &server, &id).await["state"], "done");

    let mut delivered = Value::Null;
    for _ in 0..100 {
        let (_, job) = json(
            client
                .get(server.url(&format!("/v1/jobs/{id}")))
                .bearer_auth(&server.keys.read)
                .send()
                .await
                .unwrap(),
        )
        .await;
        if job["webhook"]["state"] == "delivered" {
            delivered = job["webhook"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        delivered["attempts"], 2,
        "first attempt failed, the retry succeeded: {delivered}"
    );
    assert_eq!(delivered["last_status"], 200);
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    for (_, signature, body) in &calls {
        assert_eq!(
            signature,
            &sign("s3cret", body.as_bytes()),
            "HMAC over the exact body"
        );
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            (event["job_id"].as_str(), event["state"].as_str()),
            (Some(id.as_str()), Some("done"))
        );
        assert_eq!(event["specimen_id"], "SP-9");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_grade_within_bounds() {
    let Some(cmu) = slide("CMU-1-Small-Region.svs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(dir.path());
    let server = setup.start().await;
    let client = reqwest::Client::new();
    let form = || {
        Form::new().part(
            "slide",
            Part::bytes(std::fs::read(&cmu).unwrap()).file_name("cmu.svs"),
        )
    };
    let (status, result) = json(
        client
            .post(server.url("/v1/grade"))
            .bearer_auth(&server.keys.submit)
            .multipart(form())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["outcome"], "graded");
    server.stop().await;

    setup.sync_max_pixels = 1000;
    let server = setup.start().await;
    let (status, body) = json(
        client
            .post(server.url("/v1/grade"))
            .bearer_auth(&server.keys.submit)
            .multipart(form())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")),
        "{body}"
    );
    let uploads = dir.path().join("data/uploads");
    assert_eq!(
        std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0),
        0,
        "sync uploads are removed"
    );
    server.stop().await;
}

/// Concurrent submissions against a small queue: each answer is a 202 or a 503 with
/// `Retry-After`, the store holds exactly the jobs answered 202, and every one of them
/// is graded after a restart with a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_to_a_full_queue_lose_no_accepted_job() {
    let Some(cmu) = slide("CMU-1-Small-Region.svs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(dir.path());
    setup.workers = 0; // accept but do not grade: the queue fills
    setup.queue_capacity = 2;
    setup.shared_roots = vec![cmu.parent().unwrap().to_path_buf()];
    let server = setup.start().await;
    let client = reqwest::Client::new();
    let submit = || {
        client
            .post(server.url("/v1/slides"))
            .bearer_auth(&server.keys.submit)
            .json(&serde_json::json!({ "path": cmu }))
            .send()
    };
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let request = submit();
        burst.spawn(async move {
            let response = request.await.unwrap();
            let retry_after = response.headers().get("retry-after").cloned();
            let (status, body) = json(response).await;
            (status, retry_after, body)
        });
    }
    let mut accepted = Vec::new();
    let mut shed = 0;
    while let Some(answer) = burst.join_next().await {
        let (status, retry_after, body) = answer.unwrap();
        match status {
            StatusCode::ACCEPTED => accepted.push(body["id"].as_str().unwrap().to_string()),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error_type"], "queue_full", "{body}");
                assert_eq!(retry_after.unwrap(), "7");
                shed += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(accepted.len() + shed, 24);
    assert!(accepted.len() >= 2, "an empty queue of 2 takes at least 2");
    // Whatever the interleaving, the queue is now at capacity: the next one is shed.
    let response = submit().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "7");

    let store = &server.state.jobs.store;
    assert_eq!(
        store.list_recent(100).unwrap().len(),
        accepted.len(),
        "the store holds exactly the jobs answered 202"
    );
    server.stop().await;

    setup.workers = 1;
    let server = setup.start().await;
    for id in &accepted {
        let job = wait_for_job(&client, &server, id).await;
        assert_eq!(job["state"], "done", "{job}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_during_shutdown_get_503_shutting_down() {
    let Some(cmu) = slide("CMU-1-Small-Region.svs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(dir.path());
    setup.workers = 0;
    setup.shared_roots = vec![cmu.parent().unwrap().to_path_buf()];
    let server = setup.start().await;
    // What the service does first when a shutdown signal arrives, while the HTTP server
    // still answers the connections it holds.
    server.state.jobs.stop_accepting();
    let response = reqwest::Client::new()
        .post(server.url("/v1/slides"))
        .bearer_auth(&server.keys.submit)
        .json(&serde_json::json!({ "path": cmu }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "7");
    let (status, body) = json(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error_type"], "shutting_down", "{body}");
    assert!(
        server.state.jobs.store.list_recent(10).unwrap().is_empty(),
        "nothing was queued"
    );
    server.stop().await;
}
