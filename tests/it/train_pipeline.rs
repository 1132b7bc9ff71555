//! The harness end to end on a tiny synthetic set: burn model ↔ `Network`, export with
//! ONNX Runtime parity, a Teacher and a fully distilled Student, checkpoint and resume.

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use slidegrade::build::export::ExportInfo;
use slidegrade::dataset::synthetic::{PatchKind, SynthSetConfig, generate};
use slidegrade::model::contract::{Role, Training};
use slidegrade::train::cnn::CnnConfig;
use slidegrade::train::data::load_splits;
use slidegrade::train::loss::LossWeights;
use slidegrade::train::to_onnx::{PARITY_TOLERANCE, export_checked};
use slidegrade::train::trainer::{Teacher, TrainSpec, devices, train};

fn info(name: &str) -> ExportInfo {
    ExportInfo {
        name: name.into(),
        version: "0.0.1".into(),
        role: Role::Student,
        description: "test".into(),
        classes: vec!["NC".into(), "G3".into(), "G4".into(), "G5".into()],
        mpp: 4.0,
        magnification: 2.5,
        mean: ExportInfo::IMAGENET_MEAN,
        std: ExportInfo::IMAGENET_STD,
        training: Training::default(),
    }
}

#[test]
fn burn_forward_matches_the_reference_network() {
    let (plain, _) = devices();
    let cfg = CnnConfig::vgg_like(16, 4, 3, 2);
    assert_eq!(cfg.cam_grid(), 4);
    let model = cfg.init(&plain).valid();
    let net = model.to_network().unwrap();
    net.validate().unwrap();
    assert_eq!(net.cam_grid(), 4);
    assert!(!net.blocks.last().unwrap().relu);
    let input: Vec<f32> = (0..2 * 3 * 256)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let reference = net.forward(&input, 2);
    let out = model.forward(Tensor::from_data(
        TensorData::new(input, [2, 3, 16, 16]),
        &plain,
    ));
    let cam = model
        .cam(out.features)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let logits = out.logits.into_data().try_into_vec::<f32>().unwrap();
    for (a, b) in logits
        .iter()
        .zip(&reference.logits)
        .chain(cam.iter().zip(&reference.cam))
    {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn teacher_and_distilled_student_train_export_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = generate(&SynthSetConfig {
        out: dir.path().join("data"),
        train_per_class: 3,
        val_per_class: 2,
        test_per_class: 2,
        size_px: 32,
        mpp: 2.0,
        seed: 5,
        threads: 2,
        edge_share: 0.0,
        kind: PatchKind::Focal,
    })
    .unwrap();
    let splits = load_splits(&data, 32, None).unwrap();
    let (plain, _) = devices();

    let t_spec = TrainSpec {
        name: "teacher".into(),
        model: CnnConfig::vgg_like(32, 4, 3, 2),
        weights: LossWeights::default(),
        epochs: 1,
        batch_size: 6,
        lr: 1e-3,
        seed: 1,
        max_steps_per_epoch: None,
        augment: Default::default(),
        student_read: Default::default(),
        views_per_image: 3,
        init_from: None,
        lr_schedule: Default::default(),
    };
    let teacher = train(
        &t_spec,
        &splits,
        None,
        &dir.path().join("runs/teacher"),
        false,
    )
    .unwrap();
    assert_eq!(teacher.history.len(), 1);
    assert!(dir.path().join("runs/teacher/curves.png").exists());
    assert!(dir.path().join("runs/teacher/confusion.png").exists());

    // Student at half the resolution with every term on; one pool fewer so the CAM grids
    // match, and fewer channels so FM needs its adapter.
    let s_spec = TrainSpec {
        name: "student".into(),
        model: CnnConfig::vgg_like(16, 2, 3, 1),
        weights: LossWeights {
            ce: 1.0,
            kd: 1.0,
            fm: 0.1,
            at_plus: 10.0,
            temperature: 4.0,
            kd_t_squared: true,
        },
        ..t_spec.clone()
    };
    let teacher = Teacher::new(teacher.model, 32);
    let run = dir.path().join("runs/student");
    let first = train(&s_spec, &splits, Some(&teacher), &run, false).unwrap();
    let h = &first.history[0];
    assert!(h.kd > 0.0 && h.fm > 0.0 && h.at_plus > 0.0, "{h:?}");

    // Resume: asking for 2 epochs continues after the first instead of starting again.
    let two = TrainSpec {
        epochs: 2,
        ..s_spec.clone()
    };
    // The spec changed (epochs), so a resume must refuse the old checkpoint; the same
    // spec resumes. Train 2 epochs from scratch, then resume with the same spec: no new
    // epoch is run.
    let full = train(&two, &splits, Some(&teacher), &run, false).unwrap();
    assert_eq!(full.history.len(), 2);
    let resumed = train(&two, &splits, Some(&teacher), &run, true).unwrap();
    assert_eq!(resumed.history.len(), 2);
    // The Teacher ran once per fixed view at most (12 images × 3 views), and the later
    // epochs and runs reused its outputs.
    let (hits, misses) = teacher.cache.hits_and_misses();
    assert_eq!(hits + misses, 12 * 3, "1 + 2 epochs of 12 images");
    assert!(misses <= 12 * 3 && hits > 0, "{hits} hits, {misses} misses");
    // The history goes through JSON in the checkpoint, which may change the last bit.
    let (a, b) = (resumed.history[1].loss, full.history[1].loss);
    assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");

    let tiles: Vec<_> = splits
        .test
        .images
        .iter()
        .map(|i| slidegrade::slide::resize_area(i, 16, 16))
        .collect();
    let report = export_checked(
        &resumed.model,
        &info("student-test"),
        &dir.path().join("models/s"),
        &tiles,
        &plain,
    )
    .unwrap();
    assert!(report.max_abs_diff_logits <= PARITY_TOLERANCE);
    assert!(report.max_abs_diff_cam <= PARITY_TOLERANCE);
    eprintln!(
        "parity: logits {:.2e}, CAM {:.2e}, {:.3} ms/tile",
        report.max_abs_diff_logits, report.max_abs_diff_cam, report.ms_per_tile
    );
    let m = slidegrade::model::contract::load(&dir.path().join("models/s")).unwrap();
    assert_eq!(m.manifest.outputs.cam_grid, [8, 8]);
}
