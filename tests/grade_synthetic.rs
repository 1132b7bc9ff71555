//! Issue 4: the grader against ground truth, on generated slides of every Gleason pattern
//! graded with the shipped, trained 10× Teacher (`models/teacher-10x`, written by
//! `scripts/distill-and-export.sh`). It grades these slides best of the shipped models
//! (the full-recipe 5× Student: 3 of 9 exact, 5 of 9 within one ISUP group).
//!
//! Checked per slide: the tissue found against the true tissue area; the Gleason score and
//! the ISUP grade group against the truth; and localisation by the pointing game: for each
//! cancer pattern that is both predicted and truly present, the peak of that class's
//! Grad-CAM heatmap must fall on that pattern's ground-truth region (within one heatmap
//! cell). The measured figures are printed; RESULTS.md records them.

use std::path::{Path, PathBuf};

use image::GrayImage;
use slidegrade::engine::{EngineConfig, EnginePool};
use slidegrade::model;
use slidegrade::pipeline::{GradeOptions, grade_slide};
use slidegrade::synth::{CorePattern, SlideSpec, write_slide};

/// The model under test, shipped in the repository.
const MODEL: &str = "teacher-10x";

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Whether the ground-truth mask holds class `code` (index + 1) within `radius` mask pixels
/// of `(x, y)`.
fn mask_has(mask: &GrayImage, x: f64, y: f64, radius: i64, code: u8) -> bool {
    let (cx, cy) = (x.floor() as i64, y.floor() as i64);
    (-radius..=radius).any(|dy| {
        (-radius..=radius).any(|dx| {
            let (px, py) = (cx + dx, cy + dy);
            px >= 0
                && py >= 0
                && (px as u32) < mask.width()
                && (py as u32) < mask.height()
                && mask.get_pixel(px as u32, py as u32).0[0] == code
        })
    })
}

#[test]
fn synthetic_slides_grade_as_their_ground_truth() {
    slidegrade::engine::init_runtime(&slidegrade::engine::default_runtime_path()).unwrap();
    let model = model::load(&models_dir().join(MODEL)).unwrap();
    let pool = EnginePool::new(&model, &EngineConfig::default()).unwrap();
    let classes = pool.manifest().classes.clone();
    let dir = tempfile::tempdir().unwrap();

    let (mut exact, mut isup_off_by_one, mut hits, mut pointings) = (0, 0, 0, 0);
    let mut lines = Vec::new();
    for (i, pattern) in CorePattern::ALL.into_iter().enumerate() {
        // A 6 × 2 mm slide at 20× holding one 5.5 mm core of this pattern.
        let spec = SlideSpec::with_pattern(12_288, 4_096, 0.5, 3 + i as u64, pattern);
        let path = dir.path().join(format!("core-{i}.tiff"));
        let truth = write_slide(&path, &spec).unwrap();
        let mask = spec.mask();
        let ds = f64::from(spec.mask_downsample());

        let graded = grade_slide(&path, &pool, &GradeOptions::default(), &mut |_, _| {}).unwrap();
        let grade = graded.grade.clone().expect("a core has tissue");

        // Tissue: the mask must find the core (a pen-rejection bug once lost a third of it).
        let found = graded.tissue_area_mm2 / truth.tissue_area_mm2;
        assert!(
            (0.9..1.1).contains(&found),
            "{pattern:?}: tissue {:.2} mm² found of {:.2} mm²",
            graded.tissue_area_mm2,
            truth.tissue_area_mm2
        );

        exact += usize::from(grade.gleason == truth.grade.gleason);
        let off = grade
            .isup_grade_group
            .abs_diff(truth.grade.isup_grade_group);
        isup_off_by_one += usize::from(off <= 1);

        // Pointing game over the cancer patterns predicted and present.
        let mut slide_hits = Vec::new();
        for (c, name) in classes.iter().enumerate() {
            let true_area = match name.as_str() {
                "G3" => truth.areas_mm2.g3,
                "G4" => truth.areas_mm2.g4,
                "G5" => truth.areas_mm2.g5,
                _ => continue,
            };
            let predicted = graded.class_areas_mm2.get(name).copied().unwrap_or(0.0);
            if true_area <= 0.0 || predicted <= 0.0 {
                continue;
            }
            let (x, y) = graded
                .heatmaps
                .peak(c)
                .expect("a predicted class has a map");
            // Tolerance: one heatmap cell, in mask pixels.
            let radius = (graded.heatmaps.cell_side / ds).ceil() as i64;
            let hit = mask_has(&mask, x / ds, y / ds, radius, c as u8 + 1);
            pointings += 1;
            hits += usize::from(hit);
            slide_hits.push(format!("{name}:{}", if hit { "hit" } else { "miss" }));
        }
        lines.push(format!(
            "{:>7}  truth {:>7} (ISUP {})  graded {:>7} (ISUP {})  tissue {:.2}/{:.2} mm²  {}",
            pattern.expected_gleason().split('=').next().unwrap_or(""),
            truth.grade.gleason,
            truth.grade.isup_grade_group,
            grade.gleason,
            grade.isup_grade_group,
            graded.tissue_area_mm2,
            truth.tissue_area_mm2,
            slide_hits.join(" ")
        ));
    }
    let n = CorePattern::ALL.len();
    eprintln!("{MODEL} on {n} synthetic cores:\n{}", lines.join("\n"));
    eprintln!(
        "exact Gleason {exact}/{n}; ISUP within one group {isup_off_by_one}/{n}; pointing game {hits}/{pointings}"
    );
    // Floors at the measured quality of the shipped model (RESULTS.md), so that a
    // regression in the grader, the tiling or the model fails here. The goal is
    // every score exact; see RESULTS.md for how far the shipped models are from it.
    assert!(pointings >= n - 1, "pointing game ran {pointings} times");
    assert!(
        hits * 10 >= pointings * 9,
        "pointing game {hits}/{pointings}"
    );
    assert_eq!(isup_off_by_one, n, "{}", lines.join("\n"));
    assert!(
        exact >= 4,
        "exact Gleason {exact}/{n}\n{}",
        lines.join("\n")
    );
}
