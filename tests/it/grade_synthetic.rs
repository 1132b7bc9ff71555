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
use slidegrade::grade::pipeline::{GradeOptions, Graded, class_patterns, grade_slide};
use slidegrade::model::contract;
use slidegrade::model::engine::{EngineConfig, EnginePool};
use slidegrade::synth::{CorePattern, SlideSpec, SlideTruth, write_slide};

/// Each shipped model, the least number of the nine slides it must grade exactly, and the
/// least share of pointing-game hits, on both Grad-CAM and the AT+ map. The floors are
/// issue 12's: 9 exact for the Teacher, 7 for every Student, and 90% pointing for every
/// model. Each model grades with the rule in its model.json (chosen on other cores by
/// `slidegrade bench cores`). Measured 2026-12-07: 9, 8, 9, 9 exact; pointing 13/13 for
/// the Teacher, 5× and 2.5× Students on both maps, and 12/13 for the 1.25× Student, whose
/// rule was re-tuned on 81 generated cores (radius 3, where 27 had tied radii 1 and 3;
/// RESULTS.md). With radius 1 it graded 8/9 and pointed 11/13 on Grad-CAM.
const MODELS: [(&str, usize, f64); 4] = [
    ("teacher-10x", 9, 0.9),
    ("student-5x", 7, 0.9),
    ("student-2p5x", 7, 0.9),
    ("student-1p25x", 7, 0.9),
];

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// One generated slide and its answers.
struct Case {
    pattern: CorePattern,
    path: PathBuf,
    truth: SlideTruth,
    spec: SlideSpec,
    mask: GrayImage,
}

/// How one model did on the nine slides.
#[derive(Default)]
struct Score {
    exact: usize,
    isup_within_one: usize,
    hits: usize,
    pointings: usize,
    /// The same pointing game on the AT+ maps, for models that export them.
    attention_hits: usize,
    attention_pointings: usize,
    lines: Vec<String>,
}

impl Score {
    fn add(&mut self, case: &Case, graded: &Graded, classes: &[String], patterns: &[u8]) {
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
        let play = |maps| {
            case.spec.pointing_game(
                &case.mask,
                &truth.areas_mm2,
                classes,
                patterns,
                &graded.class_areas_mm2,
                maps,
            )
        };
        let mut slide_hits = Vec::new();
        for (c, hit) in play(&graded.heatmaps) {
            self.pointings += 1;
            self.hits += usize::from(hit);
            let verdict = if hit { "hit" } else { "miss" };
            slide_hits.push(format!("{}:{verdict}", classes[c]));
        }
        if let Some(attention) = &graded.attention {
            for (_, hit) in play(attention) {
                self.attention_pointings += 1;
                self.attention_hits += usize::from(hit);
            }
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
                spec,
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
        let patterns = class_patterns(pool.manifest()).unwrap();
        let mut score = Score::default();
        for case in &cases {
            let graded =
                grade_slide(&case.path, &pool, &GradeOptions::default(), &mut |_, _| {}).unwrap();
            score.add(case, &graded, &classes, &patterns);
        }
        report.push(format!(
            "{name}: exact Gleason {}/{n}; ISUP within one group {}/{n}; pointing game {}/{} (Grad-CAM), {}/{} (AT+ map)\n{}",
            score.exact,
            score.isup_within_one,
            score.hits,
            score.pointings,
            score.attention_hits,
            score.attention_pointings,
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
        if (score.attention_hits as f64) < min_hits * score.attention_pointings as f64 {
            failures.push(format!(
                "{name}: pointing game on the AT+ map {}/{}",
                score.attention_hits, score.attention_pointings
            ));
        }
    }
    let report = report.join("\n");
    eprintln!("{report}");
    assert!(failures.is_empty(), "{}\n{report}", failures.join("\n"));
}

/// Issue 12 §10: on the 12-core benchmark slide (touching cores, 162 mm² of true tissue),
/// the tissue mask neither bridges cores nor loses tissue: under 3% of the graded tiles
/// hold no true tissue, and the area found is within 5% of the truth. The mask does not
/// depend on the model's weights, only on its tile size; the 1.25× Student is the default
/// and the fastest.
#[test]
fn benchmark_slide_tissue_is_found_without_bridging_cores() {
    slidegrade::model::engine::init_runtime(&slidegrade::model::engine::default_runtime_path())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("benchmark.tiff");
    let spec = SlideSpec::benchmark(1);
    let truth = write_slide(&path, &spec).unwrap();
    let mask = spec.mask();
    let model = contract::load(&models_dir().join("student-1p25x")).unwrap();
    let pool = EnginePool::new(&model, &EngineConfig::default()).unwrap();
    let graded = grade_slide(&path, &pool, &GradeOptions::default(), &mut |_, _| {}).unwrap();
    let without = graded
        .tiles
        .iter()
        .filter(|(spec, _)| slidegrade::bench::agreement::true_class(spec, &truth, &mask).is_none())
        .count();
    let share = without as f64 / graded.tiles.len() as f64;
    let found = graded.tissue_area_mm2 / truth.tissue_area_mm2;
    eprintln!(
        "benchmark slide: {} tiles, {without} without true tissue ({:.2}%); tissue {:.1} of {:.1} mm²",
        graded.tiles.len(),
        100.0 * share,
        graded.tissue_area_mm2,
        truth.tissue_area_mm2
    );
    assert!(
        share < 0.03,
        "{:.2}% of tiles hold no true tissue",
        100.0 * share
    );
    assert!(
        (found - 1.0).abs() < 0.05,
        "tissue found {:.1} mm² of {:.1}",
        graded.tissue_area_mm2,
        truth.tissue_area_mm2
    );
}
