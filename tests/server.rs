//! The server starts in-process on port 0, loads the valid models in a folder, refuses
//! the others with a reason, and answers its health and model routes.

mod common;

use std::sync::Arc;

use slidegrade::engine::EngineConfig;
use slidegrade::server::{self, AppState};

#[test]
fn serves_health_and_models_and_refuses_bad_models() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_model(dir.path(), "good", 1);
    let (_, tampered) = common::tiny_model(dir.path(), "tampered", 2);
    std::fs::write(&tampered.onnx_path, b"not the model the manifest describes").unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();

    let state = AppState::load_models(dir.path(), &EngineConfig::default());
    assert_eq!(state.models.len(), 1);
    let refused: Vec<(&str, &str)> = state
        .refused
        .iter()
        .map(|r| (r.folder.rsplit('/').next().unwrap(), r.error_type))
        .collect();
    assert_eq!(
        refused,
        vec![
            ("empty", "model_incomplete"),
            ("tampered", "model_sha256_mismatch")
        ]
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(server::run(listener, Arc::new(state), async {
        let _ = stopped.await;
    }));

    let (status, body) = common::http_get(addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = common::http_get(addr, "/readyz");
    assert_eq!(status, 200);
    assert!(body.contains("\"models_loaded\":1"), "{body}");

    let (status, body) = common::http_get(addr, "/v1/models");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["models"][0]["name"], "good");
    assert_eq!(json["models"][0]["provider"], "cpu");
    assert_eq!(json["models"][0]["classes"].as_array().unwrap().len(), 4);
    assert_eq!(json["refused"].as_array().unwrap().len(), 2);

    let (status, body) = common::http_get(addr, "/no/such/route");
    assert_eq!(status, 404);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error_type"], "not_found");
    assert!(json["error"].is_string());

    stop.send(()).unwrap();
    runtime.block_on(server).unwrap().unwrap();
}
