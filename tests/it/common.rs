//! Helpers shared by the integration tests: tiny models built with the project's own
//! exporter, and the path to the shared real-slide fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use slidegrade::build::export::{ExportInfo, export};
use slidegrade::build::network::{Architecture, Network};
use slidegrade::model::contract::{Role, Training, VerifiedModel};

pub const CLASSES: [&str; 4] = ["NC", "G3", "G4", "G5"];

/// A small random CNN: 16 px input, two pooling stages, so a 4×4 CAM grid.
pub fn tiny_network(seed: u64) -> Network {
    Network::random(
        &Architecture {
            input_size: 16,
            channels: vec![6, 8, 10],
            pool_after: vec![true, true, false],
            kernel: 3,
            classes: CLASSES.len(),
            batch_norm: true,
        },
        seed,
    )
}

pub fn export_info(name: &str) -> ExportInfo {
    ExportInfo {
        name: name.to_string(),
        version: "0.0.1-test".into(),
        role: Role::Student,
        description: "random weights, for tests only".into(),
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        mpp: 8.0,
        magnification: 1.25,
        mean: ExportInfo::IMAGENET_MEAN,
        std: ExportInfo::IMAGENET_STD,
        training: Training {
            data: "none (random weights)".into(),
            synthetic_data: true,
            notice: "Not for clinical use.".into(),
            ..Training::default()
        },
    }
}

/// Exports a tiny random model into `dir/<name>` and returns it verified.
pub fn tiny_model(dir: &Path, name: &str, seed: u64) -> (Network, VerifiedModel) {
    let net = tiny_network(seed);
    let model = export(&net, &export_info(name), &dir.join(name)).expect("export tiny model");
    (net, model)
}

/// Set (to anything) by `.ci/run`: a missing `../shared/data` then fails the tests that
/// need it instead of skipping them, so CI cannot go green by not running them.
pub const REQUIRE_SHARED_DATA: &str = "SLIDEGRADE_REQUIRE_SHARED_DATA";

/// `../shared/data`, or None (with a message) when a user's clone lacks it; a panic instead
/// when [`REQUIRE_SHARED_DATA`] is set.
pub fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if dir.is_dir() {
        Some(dir)
    } else if std::env::var_os(REQUIRE_SHARED_DATA).is_some() {
        panic!(
            "{} is absent and {REQUIRE_SHARED_DATA} is set (see shared/data/MANIFEST.md)",
            dir.display()
        );
    } else {
        eprintln!(
            "skipping: {} is absent (see shared/data/MANIFEST.md)",
            dir.display()
        );
        None
    }
}

/// `GET http://{addr}{path}`: the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::blocking::get(format!("http://{addr}{path}")).expect("GET");
    let status = response.status().as_u16();
    (status, response.text().expect("response body"))
}

/// Mean absolute difference per channel between two images of equal size.
pub fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

/// A service running on a free loopback port in the current tokio runtime.
pub struct Running {
    pub addr: std::net::SocketAddr,
    /// Send (or drop) to shut the service down.
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves `state` with `config`'s retention and grace on 127.0.0.1, port 0.
pub async fn serve_on_loopback(
    state: std::sync::Arc<slidegrade::serve::http::AppState>,
    config: &slidegrade::serve::service::ServiceConfig,
) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = slidegrade::serve::service::Service::from_state(state, config);
    let task = tokio::spawn(service.run(listener, async {
        let _ = stopped.await;
    }));
    Running { addr, stop, task }
}

impl Running {
    /// Stops the service and waits for it, failing the test if it ended in error.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}
