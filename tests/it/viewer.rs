//! The browser viewer's server side, in-process on port 0: the page and its assets are
//! self-contained, the Deep Zoom descriptor and tiles of a job's slide are right, bad
//! tiles and gone slides give JSON errors, and the heatmap geometry in result.json puts
//! the heatmap exactly over the slide. (The page itself is driven in a real browser by
//! web/tests/viewer.test.mjs.)

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use slidegrade::grade::pipeline::GradeOptions;
use slidegrade::model::engine::{EngineConfig, EnginePool};
use slidegrade::serve::http::auth::create_key;
use slidegrade::serve::http::{ApiSettings, AppState};
use slidegrade::serve::jobs::JobSettings;
use slidegrade::serve::jobs::store::{Insert, JobRequest, KeyRole, NewJob};
use slidegrade::serve::jobs::webhook::WebhookSettings;
use slidegrade::serve::service::{self, ServiceConfig};
use slidegrade::slide::Slide;

const CMU: &str = "CMU-1-Small-Region.svs";

struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    running: common::Running,
    read: String,
    submit: String,
    admin: String,
}

impl Server {
    async fn start(dir: &Path) -> Server {
        common::tiny_model(&dir.join("models"), "tiny", 1);
        let config = ServiceConfig {
            models_dir: dir.join("models"),
            engine: EngineConfig::default(),
            store: slidegrade::serve::jobs::store::StoreLocation::Sqlite(
                slidegrade::serve::jobs::store::store_path(&dir.join("data")),
            ),
            api: ApiSettings::default(),
            jobs: JobSettings {
                workers: 1,
                queue_capacity: 16,
                data_dir: dir.join("data"),
                grade: GradeOptions::default(),
                webhook: WebhookSettings::default(),
                lease: Duration::from_secs(3),
                hl7_results: None,
            },
            retention: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(0),
        };
        let state = service::Service::build(&config).await.unwrap().state;
        let store = &state.jobs.store;
        let read = create_key(store, "viewer", KeyRole::Read).unwrap();
        let submit = create_key(store, "lis", KeyRole::Submit).unwrap();
        let admin = create_key(store, "ops", KeyRole::Admin).unwrap();
        let running = common::serve_on_loopback(state.clone(), &config).await;
        let addr = running.addr;
        Server {
            addr,
            state,
            running,
            read,
            submit,
            admin,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(&self.read)
            .send()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.running.shutdown().await;
    }
}

async fn json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn wait_for_job(server: &Server, id: &str) -> Value {
    for _ in 0..600 {
        let (status, job) = json(server.get(&format!("/v1/jobs/{id}")).await).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if ["done", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("job {id} did not finish");
}

/// The value of XML attribute `name` in `xml` (the descriptor is one flat element pair).
fn attribute<'a>(xml: &'a str, name: &str) -> &'a str {
    let start = xml
        .find(&format!(" {name}=\""))
        .unwrap_or_else(|| panic!("{name} missing in {xml}"))
        + name.len()
        + 3;
    let len = xml[start..].find('"').unwrap();
    &xml[start..start + len]
}

/// Asserts a JSON error with this status and `error_type`.
async fn assert_error(response: reqwest::Response, status: StatusCode, error_type: &str) {
    let (got, body) = json(response).await;
    assert_eq!(
        (got, body["error_type"].as_str()),
        (status, Some(error_type)),
        "{body}"
    );
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_assets_are_served_without_a_key_and_load_nothing_from_other_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();

    let page = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("<title>slidegrade viewer</title>"));

    // Every src/href is on this server (or inline data); none names another host.
    let mut links = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            links.push(rest[..rest.find('"').unwrap()].to_string());
        }
    }
    assert!(links.len() >= 3, "{links:?}");
    for link in &links {
        assert!(
            (link.starts_with('/') && !link.starts_with("//")) || link.starts_with("data:"),
            "external or relative asset {link}"
        );
    }
    assert!(!html.contains("http://") && !html.contains("https://"));

    for (asset, content_type) in [
        (
            "/assets/openseadragon.min.js",
            "text/javascript; charset=utf-8",
        ),
        ("/assets/viewer.js", "text/javascript; charset=utf-8"),
        ("/assets/viewer.css", "text/css; charset=utf-8"),
    ] {
        assert!(links.iter().any(|l| l == asset), "{asset} not linked");
        let response = client.get(server.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert_eq!(response.headers()["content-type"], content_type);
        let body = response.text().await.unwrap();
        assert!(body.len() > 1000, "{asset}");
        if asset.ends_with(".css") {
            assert!(!body.contains("url("), "the stylesheet loads nothing");
        }
    }
    let osd = client
        .get(server.url("/assets/openseadragon.min.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(osd.contains("OpenSeadragon"));
    assert_error(
        client
            .get(server.url("/assets/other.js"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // The page is public; the slide behind it is not.
    assert_error(
        client
            .get(server.url("/v1/jobs/x/slide.dzi"))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;

    let (_, openapi) = json(server.get("/openapi.json").await).await;
    for path in [
        "/v1/jobs/{id}/slide.dzi",
        "/v1/jobs/{id}/slide_files/{level}/{tile}",
    ] {
        assert!(openapi["paths"][path]["get"].is_object(), "{path}");
        let description = openapi["paths"][path]["get"]["description"]
            .as_str()
            .unwrap();
        assert!(description.ends_with("KeyRole: read."), "{description}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_zoom_tiles_of_a_graded_job() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let cmu = data.join("slides").join(CMU);
    let (width, height) = Slide::open(&cmu, None).unwrap().dimensions();
    assert_eq!((width, height), (2220, 2967));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();

    let form = Form::new().part(
        "slide",
        Part::bytes(tokio::fs::read(&cmu).await.unwrap()).file_name(CMU),
    );
    let response = client
        .post(server.url("/v1/slides"))
        .bearer_auth(&server.submit)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (_, job) = json(response).await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(
        job["links"]["slide_dzi"],
        format!("/v1/jobs/{id}/slide.dzi")
    );
    assert_eq!(wait_for_job(&server, &id).await["state"], "done");

    // The descriptor: level-0 size, 254 px JPEG tiles with 1 px overlap.
    let response = server.get(&format!("/v1/jobs/{id}/slide.dzi")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/xml");
    let xml = response.text().await.unwrap();
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("<Image xmlns=\"http://schemas.microsoft.com/deepzoom/2008\""));
    assert_eq!(attribute(&xml, "Width"), width.to_string());
    assert_eq!(attribute(&xml, "Height"), height.to_string());
    assert_eq!(attribute(&xml, "TileSize"), "254");
    assert_eq!(attribute(&xml, "Overlap"), "1");
    assert_eq!(attribute(&xml, "Format"), "jpeg");

    // Deep Zoom levels halve down to 1×1: ceil(log2(2967)) = 12 is full resolution.
    let top = 12;
    let tile = |level: u32, name: &str| {
        let path = format!("/v1/jobs/{id}/slide_files/{level}/{name}");
        let server = &server;
        async move { server.get(&path).await }
    };
    let cols = width.div_ceil(254);
    let rows = height.div_ceil(254);
    for (level, name, size) in [
        // Inner edges carry one overlap pixel each.
        (top, "0_0.jpeg", (255, 255)),
        (top, "1_1.jpeg", (256, 256)),
        // The last column and row end at the slide's edge.
        (
            top,
            &format!("{}_{}.jpeg", cols - 1, rows - 1) as &str,
            (width - (cols - 1) * 254 + 1, height - (rows - 1) * 254 + 1),
        ),
        (top - 1, "0_0.jpeg", (255, 255)),
        (0, "0_0.jpeg", (1, 1)),
    ] {
        let response = tile(level, name).await;
        assert_eq!(response.status(), StatusCode::OK, "{level}/{name}");
        assert_eq!(response.headers()["content-type"], "image/jpeg");
        assert!(
            response.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("max-age="),
        );
        let bytes = response.bytes().await.unwrap();
        let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
            .unwrap_or_else(|e| panic!("{level}/{name}: {e}"));
        assert_eq!((image.width(), image.height()), size, "{level}/{name}");
    }
    // A second read comes from the cache, byte for byte.
    let first = tile(top, "0_0.jpeg").await.bytes().await.unwrap();
    let again = tile(top, "0_0.jpeg").await.bytes().await.unwrap();
    assert_eq!(first, again);

    // Outside the pyramid, or not a tile name: 404 with a JSON body.
    let beyond = [
        format!("{}/0_0.jpeg", top + 1),
        format!("{top}/{cols}_0.jpeg"),
        format!("{top}/0_{rows}.jpeg"),
        format!("{top}/0_0.png"),
        format!("{top}/0-0.jpeg"),
        "x/0_0.jpeg".to_string(),
        "-1/0_0.jpeg".to_string(),
    ];
    for path in beyond {
        assert_error(
            server
                .get(&format!("/v1/jobs/{id}/slide_files/{path}"))
                .await,
            StatusCode::NOT_FOUND,
            "tile_not_found",
        )
        .await;
    }
    assert_error(
        server.get("/v1/jobs/no-such-job/slide.dzi").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // The heatmap geometry that the page uses to lay each class's map over the slide.
    let (_, result) = json(server.get(&format!("/v1/jobs/{id}/result")).await).await;
    let g = &result["heatmap"];
    let layers = g["layers"].as_array().unwrap();
    assert_eq!(layers.len(), common::CLASSES.len());
    for (layer, class) in layers.iter().zip(common::CLASSES) {
        assert_eq!(layer["class"], class);
        assert_eq!(layer["file"], format!("heatmap_{class}.png"));
        // Heatmaps follow the job's `done` by a moment (409 not_ready until then).
        let mut png = server
            .get(&format!("/v1/jobs/{id}/heatmap/{class}.png"))
            .await;
        for _ in 0..100 {
            if png.status() != StatusCode::CONFLICT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            png = server
                .get(&format!("/v1/jobs/{id}/heatmap/{class}.png"))
                .await;
        }
        assert_eq!(png.status(), StatusCode::OK);
        let png = image::load_from_memory(&png.bytes().await.unwrap()).unwrap();
        assert_eq!(
            (u64::from(png.width()), u64::from(png.height())),
            (
                g["width_px"].as_u64().unwrap(),
                g["height_px"].as_u64().unwrap()
            )
        );
    }

    // A job whose slide was deleted: 404 that says so, not a stale tile from the cache.
    let job = server.state.jobs.store.get(&id).unwrap().unwrap();
    std::fs::remove_file(&job.slide_path).unwrap();
    for path in ["slide.dzi", "slide_files/12/0_0.jpeg"] {
        let (status, body) = json(server.get(&format!("/v1/jobs/{id}/{path}")).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("no longer stored"),
            "{body}"
        );
    }
    let response = client
        .delete(server.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_error(
        server.get(&format!("/v1/jobs/{id}/slide.dzi")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_failed_on_an_unreadable_slide_answers_409() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    // The API refuses such an upload at submission; a file that went bad in the queue
    // reaches the worker, which fails the job.
    let slide_dir = dir.path().join("data/uploads/bad");
    std::fs::create_dir_all(&slide_dir).unwrap();
    let slide: PathBuf = slide_dir.join("broken.svs");
    std::fs::write(&slide, b"not a slide").unwrap();
    let id = "00000000-0000-4000-8000-000000000001";
    let inserted = server
        .state
        .jobs
        .store
        .insert(&NewJob {
            id,
            slide_path: &slide,
            slide_name: "broken.svs",
            uploaded: true,
            request: &JobRequest::default(),
            idempotency_key: None,
            request_hash: "test",
            out_dir: &server.state.jobs.results_dir(id),
        })
        .unwrap();
    assert!(matches!(inserted, Insert::Created(_)));
    server.state.jobs.notify();
    assert_eq!(wait_for_job(&server, id).await["state"], "failed");

    for path in ["slide.dzi", "slide_files/0/0_0.jpeg"] {
        let (status, body) = json(server.get(&format!("/v1/jobs/{id}/{path}")).await).await;
        assert_eq!(
            (status, body["error_type"].as_str()),
            (StatusCode::CONFLICT, Some("not_ready")),
            "{body}"
        );
        assert!(body["error"].as_str().unwrap().contains("failed"), "{body}");
    }
    server.stop().await;
}

/// Where the heatmap lies, in numbers, for the CMU slide graded by a model reading 16 px
/// tiles at 8 µm/px with a 4×4 Grad-CAM grid.
#[test]
fn heatmap_geometry_of_the_cmu_slide() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = common::tiny_model(dir.path(), "tiny", 1);
    let pool = EnginePool::new(&model, &EngineConfig::default()).unwrap();
    let options = GradeOptions::default();
    let graded = slidegrade::grade::pipeline::grade_slide(
        &data.join("slides").join(CMU),
        &pool,
        &options,
        &mut |_, _| {},
    )
    .unwrap();
    let report = slidegrade::output::report::build_report(
        &graded,
        pool.manifest(),
        "cpu",
        options.min_tissue,
    );
    let g = &report.heatmap;
    let (slide_w, slide_h) = (2220.0, 2967.0);
    assert_eq!(report.slide.mpp_x, 0.499);

    // A tile is 16 px × 8 µm/px = 128 µm = 256.513 level-0 px; a cell is a quarter of it
    // (64.128 px, 32 µm).
    let tile_side = 16.0 * 8.0 / 0.499;
    assert!((g.level0_px_per_px - tile_side / 4.0).abs() < 1e-9);
    assert!((g.um_per_px[0] - 32.0).abs() < 1e-9 && (g.um_per_px[1] - 32.0).abs() < 1e-9);
    // 9 × 12 tiles cover the slide: ceil(2220 / 256.513) and ceil(2967 / 256.513).
    assert_eq!((g.width_px, g.height_px), (9 * 4, 12 * 4));
    assert_eq!(g.origin_level0_px, [0.0, 0.0]);
    assert_eq!(
        g.extent_level0_px,
        [
            f64::from(g.width_px) * g.level0_px_per_px,
            f64::from(g.height_px) * g.level0_px_per_px
        ]
    );
    // The heatmap runs past the slide's right and bottom edges by less than a tile:
    // scaling it to the slide's width would shift every cell.
    let [extent_w, extent_h] = g.extent_level0_px;
    assert!(
        extent_w > slide_w && extent_w - slide_w < tile_side,
        "{extent_w}"
    );
    assert!(
        extent_h > slide_h && extent_h - slide_h < tile_side,
        "{extent_h}"
    );
    assert!((extent_w - 2308.617).abs() < 1e-3, "{extent_w}");
    assert!((extent_h - 3078.156).abs() < 1e-3, "{extent_h}");

    // Every inferred tile's cells sit in the heatmap at the tile's level-0 position.
    for (tile, _) in &graded.tiles {
        let cell_x = tile.x / g.level0_px_per_px;
        let cell_y = tile.y / g.level0_px_per_px;
        assert!((cell_x - f64::from(tile.col * 4)).abs() < 1e-9);
        assert!((cell_y - f64::from(tile.row * 4)).abs() < 1e-9);
    }
    // And the PNG the API serves is exactly width_px × height_px.
    let png = slidegrade::output::images::heatmap_image(&graded.heatmaps, 0);
    assert_eq!(png.dimensions(), (g.width_px, g.height_px));
}
