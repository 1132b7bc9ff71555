//! Issue 4: the grader against ground truth, on generated slides of every Gleason pattern,
//! graded with each shipped, trained model (`models/`, written by
//! `scripts/distill-and-export.sh`).
//!
//! Checked per slide and model: the tissue found against the true tissue area; the
//! Gleason score and the ISUP grade group against the truth; and localisation by the
//! pointing game: for each cancer pattern that is both predicted and truly present, the
//! peak of that class's Grad-CAM heatmap must fall on that pattern's ground-truth region
//! (within one heatmap cell).
//!
//! The 10× Teacher must grade every slide exactly, as the issue asks. The Students are held
//! to their measured floors (RESULTS.md), so that a regression in the grader, the tiling
//! or a model fails here; the printed table gives the figures.

use std::path::{Path, PathBuf};

use image::GrayImage;
use slidegrade::grade::pipeline::{GradeOptions, Graded, grade_slide};
use slidegrade::model::contract;
use slidegrade::model::engine::{EngineConfig, EnginePool};
use slidegrade::synth::{CorePattern, SlideSpec, SlideTruth, write_slide};

/// Each shipped model, the least number of the nine slides it must grade exactly, and the
/// least share of pointing-game hits (measured 2026-11-26: 9, 5, 8, 1 exact; 13/13, 13/13,
/// 13/13, 11/13 hits).
const MODELS: [(&str, usize, f64); 4] = [
    ("teacher-10x", 9, 0.9),
    ("student-5x", 5, 0.9),
    ("student-2p5x", 8, 0.9),
    ("student-1p25x", 1, 0.8),
];

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

/// One generated slide and its answers.
struct Case {
    pattern: CorePattern,
    path: PathBuf,
    truth: SlideTruth,
    mask: GrayImage,
    mask_downsample: f64,
}

/// How one model did on the nine slides.
#[derive(Default)]
struct Score {
    exact: usize,
    isup_within_one: usize,
    hits: usize,
    pointings: usize,
    lines: Vec<String>,
}

impl Score {
    fn add(&mut self, case: &Case, graded: &Graded, classes: &[String]) {
        let grade = graded.grade.clone().expect("a core has tissue");
        let truth = &case.truth;
        // Tissue: the mask must find the core (a pen-rejection bug once lost a third of it).
        let found = graded.tissue_area_mm2 / truth.tissue_area_mm2;
        assert!(
            (0.9..1.1).contains(&found),
            "{:?}: tissue {:.2} mm² found of {:.2} mm²",
            case.pattern,
            graded.tissue_area_mm2,
            truth.tissue_area_mm2
        );
        self.exact += usize::from(grade.gleason == truth.grade.gleason);
        let off = grade
            .isup_grade_group
            .abs_diff(truth.grade.isup_grade_group);
        self.isup_within_one += usize::from(off <= 1);

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
            let ds = case.mask_downsample;
            let radius = (graded.heatmaps.cell_side / ds).ceil() as i64;
            let hit = mask_has(&case.mask, x / ds, y / ds, radius, c as u8 + 1);
            self.pointings += 1;
            self.hits += usize::from(hit);
            slide_hits.push(format!("{name}:{}", if hit { "hit" } else { "miss" }));
        }
        self.lines.push(format!(
            "  truth {:>7} (ISUP {})  graded {:>7} (ISUP {})  tissue {:.2}/{:.2} mm²  {}",
            truth.grade.gleason,
            truth.grade.isup_grade_group,
            grade.gleason,
            grade.isup_grade_group,
            graded.tissue_area_mm2,
            truth.tissue_area_mm2,
            slide_hits.join(" ")
        ));
    }
}

#[test]
fn synthetic_slides_grade_as_their_ground_truth() {
    slidegrade::model::engine::init_runtime(&slidegrade::model::engine::default_runtime_path())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Case> = CorePattern::ALL
        .into_iter()
        .enumerate()
        .map(|(i, pattern)| {
            // A 6 × 2 mm slide at 20× holding one 5.5 mm core of this pattern.
            let spec = SlideSpec::with_pattern(12_288, 4_096, 0.5, 3 + i as u64, pattern);
            let path = dir.path().join(format!("core-{i}.tiff"));
            let truth = write_slide(&path, &spec).unwrap();
            Case {
                pattern,
                path,
                truth,
                mask: spec.mask(),
                mask_downsample: f64::from(spec.mask_downsample()),
            }
        })
        .collect();
    let n = cases.len();

    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, floor, min_hits) in MODELS {
        let model = contract::load(&models_dir().join(name)).unwrap();
        let pool = EnginePool::new(&model, &EngineConfig::default()).unwrap();
        let classes = pool.manifest().classes.clone();
        let mut score = Score::default();
        for case in &cases {
            let graded =
                grade_slide(&case.path, &pool, &GradeOptions::default(), &mut |_, _| {}).unwrap();
            score.add(case, &graded, &classes);
        }
        report.push(format!(
            "{name}: exact Gleason {}/{n}; ISUP within one group {}/{n}; pointing game {}/{}\n{}",
            score.exact,
            score.isup_within_one,
            score.hits,
            score.pointings,
            score.lines.join("\n")
        ));
        if score.exact < floor {
            failures.push(format!("{name}: exact {}/{n}, floor {floor}", score.exact));
        }
        // The Grad-CAM peak of a predicted, present pattern lies on it, for every model:
        // localisation does not depend on the grade being right.
        if (score.hits as f64) < min_hits * score.pointings as f64 || score.pointings < n - 1 {
            failures.push(format!(
                "{name}: pointing game {}/{}",
                score.hits, score.pointings
            ));
        }
    }
    let report = report.join("\n");
    eprintln!("{report}");
    assert!(failures.is_empty(), "{}\n{report}", failures.join("\n"));
}
