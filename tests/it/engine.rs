//! The ONNX writer and the engine, checked against the independent forward pass in
//! `network.rs`; and the model contract's refusals.

use crate::common;

use std::sync::Arc;

use image::RgbImage;
use rand::{Rng, SeedableRng, rngs::StdRng};
use slidegrade::model::contract::{self, ModelError};
use slidegrade::model::engine::{
    Device, Engine, EngineConfig, EngineError, EnginePool, OrtEngine, Provider,
};

fn random_tiles(n: usize, side: u32, seed: u64) -> Vec<RgbImage> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| RgbImage::from_fn(side, side, |_, _| image::Rgb(rng.random())))
        .collect()
}

/// Normalisation written out again here, so the test does not trust `engine::normalise`.
fn reference_input(tiles: &[RgbImage], mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let mut out = Vec::new();
    for tile in tiles {
        for c in 0..3 {
            for y in 0..tile.height() {
                for x in 0..tile.width() {
                    out.push((tile.get_pixel(x, y).0[c] as f32 / 255.0 - mean[c]) / std[c]);
                }
            }
        }
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn exported_graph_matches_reference_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (net, model) = common::tiny_model(dir.path(), "tiny", 11);
    let mut engine = OrtEngine::new(&model, &EngineConfig::default()).unwrap();
    assert_eq!(engine.provider(), Provider::Cpu);

    // Batch size is dynamic: run 1 and 5 tiles through the same session.
    for n in [1usize, 5] {
        let tiles = random_tiles(n, 16, n as u64);
        let out = engine.infer(&tiles).unwrap();
        assert_eq!(out.len(), n);
        let m = &model.manifest;
        let reference = net.forward(&reference_input(&tiles, m.input.mean, m.input.std), n);
        let logits: Vec<f32> = out.iter().flat_map(|o| o.logits.clone()).collect();
        let cam: Vec<f32> = out.iter().flat_map(|o| o.cam.clone()).collect();
        let attention: Vec<f32> = out.iter().flat_map(|o| o.attention.clone()).collect();
        let (dl, dc, da) = (
            max_abs_diff(&logits, &reference.logits),
            max_abs_diff(&cam, &reference.cam),
            max_abs_diff(&attention, &reference.attention),
        );
        assert!(dl < 1e-4, "logits differ by {dl}");
        assert!(dc < 1e-4, "cam differs by {dc}");
        assert_eq!(attention.len(), cam.len(), "the AT+ maps are exported");
        assert!(da < 1e-4, "AT+ maps differ by {da}");
        assert!(
            cam.iter().any(|v| *v > 0.0),
            "a CAM of all zeros would prove nothing"
        );
        // ReLU per channel before the sum keeps at least what the sum's ReLU keeps, and
        // strictly more wherever channels disagree: the two maps are not the same map.
        assert!(attention.iter().zip(&cam).all(|(a, c)| *a >= *c - 1e-6));
        assert!(attention.iter().zip(&cam).any(|(a, c)| *a > *c + 1e-4));
        for o in &out {
            let sum: f32 = o.probabilities.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
        }
    }
}

/// A model exported before the AT+ output existed gets it from `upgrade-model`'s graph
/// edit, with the same values as a fresh export.
#[test]
fn attention_output_is_added_to_an_older_graph() {
    use slidegrade::build::onnx::{self, GraphNames};
    let dir = tempfile::tempdir().unwrap();
    let (net, model) = common::tiny_model(dir.path(), "tiny", 12);
    // The same network written as before: no attention output in graph or manifest.
    use onnx_ir::Message;
    let mut old = onnx::to_model(&net, &GraphNames::default(), "tiny").unwrap();
    let graph = old.graph.mut_or_insert_default();
    let added = |name: &str| name.starts_with("attention");
    graph.output.retain(|o| !added(&o.name));
    graph.node.retain(|n| !n.output.iter().any(|o| added(o)));
    graph.initializer.retain(|t| !added(&t.name));
    let bytes = old.write_to_bytes().unwrap();
    let upgraded = onnx::with_attention(&bytes, "attention").unwrap().unwrap();
    assert!(
        onnx::with_attention(&upgraded, "attention")
            .unwrap()
            .is_none(),
        "a second upgrade changes nothing"
    );
    let model_dir = model.dir.clone();
    std::fs::write(model_dir.join("model.onnx"), &upgraded).unwrap();
    let mut manifest = model.manifest.clone();
    manifest.onnx_sha256 = slidegrade::model::contract::sha256_hex(&upgraded);
    slidegrade::model::contract::write_manifest(&model_dir, &manifest).unwrap();
    let model = slidegrade::model::contract::load(&model_dir).unwrap();
    let mut engine = OrtEngine::new(&model, &EngineConfig::default()).unwrap();
    let tiles = random_tiles(3, 16, 5);
    let out = engine.infer(&tiles).unwrap();
    let m = &model.manifest;
    let reference = net.forward(&reference_input(&tiles, m.input.mean, m.input.std), 3);
    let attention: Vec<f32> = out.iter().flat_map(|o| o.attention.clone()).collect();
    let d = max_abs_diff(&attention, &reference.attention);
    assert!(d < 1e-4, "AT+ maps differ by {d}");
}

#[test]
fn wrong_tile_size_is_a_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = common::tiny_model(dir.path(), "tiny", 1);
    let mut engine = OrtEngine::new(&model, &EngineConfig::default()).unwrap();
    let err = engine.infer(&random_tiles(1, 17, 0)).unwrap_err();
    assert!(matches!(err, EngineError::BadInput(_)), "{err}");
    assert!(engine.infer(&[]).unwrap().is_empty());
}

#[test]
fn cuda_request_falls_back_to_cpu_or_fails_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = common::tiny_model(dir.path(), "tiny", 2);
    let want_cuda = EngineConfig {
        device: Device::Cuda,
        ..EngineConfig::default()
    };
    let engine = OrtEngine::new(&model, &want_cuda).unwrap();
    if OrtEngine::cuda_compiled_in() && engine.provider() == Provider::Cuda {
        eprintln!("CUDA is available here; the fallback path is not exercised");
        return;
    }
    assert_eq!(engine.provider(), Provider::Cpu);
    let required = EngineConfig {
        require_cuda: true,
        ..want_cuda
    };
    let err = OrtEngine::new(&model, &required)
        .err()
        .expect("CUDA must be refused");
    assert!(matches!(err, EngineError::CudaUnavailable(_)), "{err}");
}

#[test]
fn pool_serves_concurrent_callers_with_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = common::tiny_model(dir.path(), "tiny", 3);
    let config = EngineConfig {
        sessions: 2,
        intra_threads: 1,
        ..EngineConfig::default()
    };
    let pool = Arc::new(EnginePool::new(&model, &config).unwrap());
    let tiles = Arc::new(random_tiles(3, 16, 9));
    let expected = pool.infer(&tiles).unwrap();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (pool, tiles) = (pool.clone(), tiles.clone());
            std::thread::spawn(move || pool.infer(&tiles).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), expected);
    }
}

#[test]
fn model_with_tampered_onnx_is_refused_by_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = common::tiny_model(dir.path(), "tiny", 4);
    let mut bytes = std::fs::read(&model.onnx_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&model.onnx_path, bytes).unwrap();
    let err = contract::load(&model.dir).unwrap_err();
    assert!(matches!(err, ModelError::ShaMismatch { .. }), "{err}");
    assert_eq!(err.kind(), "model_sha256_mismatch");
}

/// Rewrites the manifest with `edit` and returns the load error's message.
fn load_error_after(edit: impl FnOnce(&mut contract::Manifest)) -> ModelError {
    let dir = tempfile::tempdir().unwrap();
    let (_, m) = common::tiny_model(dir.path(), "tiny", 5);
    let mut manifest = m.manifest.clone();
    edit(&mut manifest);
    contract::write_manifest(&m.dir, &manifest).unwrap();
    contract::load(&m.dir).unwrap_err()
}

type ManifestEdit = Box<dyn FnOnce(&mut contract::Manifest)>;

#[test]
fn graph_mismatches_are_named() {
    let cases: Vec<(ManifestEdit, &str)> = vec![
        (Box::new(|m| m.classes.push("G6".into())), "class count"),
        (Box::new(|m| m.outputs.cam_grid = [8, 8]), "CAM grid"),
        (
            Box::new(|m| m.outputs.cam = "gradcam".into()),
            "no output named `gradcam`",
        ),
        (
            Box::new(|m| m.outputs.logits = "scores".into()),
            "no output named `scores`",
        ),
        (Box::new(|m| m.input.size_px = 32), "tile size"),
        (
            Box::new(|m| m.input.name = "pixels".into()),
            "manifest says `pixels`",
        ),
    ];
    for (edit, expected) in cases {
        let err = load_error_after(edit);
        assert!(matches!(err, ModelError::GraphMismatch(_)), "{err}");
        assert!(
            err.to_string().contains(expected),
            "`{err}` should name {expected}"
        );
    }
}

#[test]
fn bad_manifests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, m) = common::tiny_model(dir.path(), "tiny", 6);
    let path = m.dir.join(contract::MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();

    std::fs::write(
        &path,
        text.replace("\"format_version\": 1", "\"format_version\": 99"),
    )
    .unwrap();
    let err = contract::load(&m.dir).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedFormat { found: 99, .. }),
        "{err}"
    );

    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    assert!(matches!(
        contract::load(&m.dir).unwrap_err(),
        ModelError::InvalidManifest { .. }
    ));

    std::fs::write(
        &path,
        text.replace("\"role\": \"student\"", "\"role\": \"oracle\""),
    )
    .unwrap();
    assert!(matches!(
        contract::load(&m.dir).unwrap_err(),
        ModelError::InvalidManifest { .. }
    ));

    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        contract::load(&m.dir).unwrap_err(),
        ModelError::MissingManifest(_)
    ));
}

#[test]
fn onnx_that_is_not_a_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, m) = common::tiny_model(dir.path(), "tiny", 7);
    let junk = b"this is not protobuf \xff\xff\xff\xff";
    std::fs::write(&m.onnx_path, junk).unwrap();
    let mut manifest = m.manifest.clone();
    manifest.onnx_sha256 = contract::sha256_hex(junk);
    contract::write_manifest(&m.dir, &manifest).unwrap();
    let err = contract::load(&m.dir).unwrap_err();
    assert!(matches!(err, ModelError::InvalidOnnx(_)), "{err}");
}
