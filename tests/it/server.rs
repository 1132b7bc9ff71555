//! Model loading at start-up: valid models load, the others are refused with a reason.

use crate::common;

use slidegrade::model::engine::EngineConfig;
use slidegrade::serve::service::load_models;

#[test]
fn loads_valid_models_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_model(dir.path(), "good", 1);
    let (_, tampered) = common::tiny_model(dir.path(), "tampered", 2);
    std::fs::write(&tampered.onnx_path, b"not the model the manifest describes").unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();

    let (pools, refused) = load_models(dir.path(), &EngineConfig::default());
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].manifest().name, "good");
    let refused: Vec<(&str, &str)> = refused
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
    assert!(
        load_models(&dir.path().join("missing"), &EngineConfig::default())
            .0
            .is_empty()
    );
}
