//! `slidegrade grade` on every real slide in ../shared/data/slides: each one gets a
//! result or a clear, specific refusal. The model is a random-weight one made by the
//! project's own exporter, so only the pipeline is under test here, not the grade.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

fn grade(slide: &Path, models: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slidegrade"))
        .arg("grade")
        .arg(slide)
        .arg("--models-dir")
        .arg(models)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(extra)
        .output()
        .expect("run slidegrade")
}

fn stderr_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a refusal");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    stderr
}

fn result(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap()
}

#[test]
fn every_real_slide_gets_a_result_or_a_specific_refusal() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let slides = data.join("slides");
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    common::tiny_model(&models, "tiny", 1);
    let out = |name: &str| dir.path().join(name);

    // The canonical H&E slide: graded, with every output.
    let o = grade(
        &slides.join("CMU-1-Small-Region.svs"),
        &models,
        &out("cmu"),
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = result(&out("cmu"));
    assert_eq!(r["schema"], "slidegrade.result/1.3");
    assert_eq!(r["outcome"], "graded");
    assert_eq!(r["model"]["name"], "tiny");
    assert_eq!(r["model"]["onnx_sha256"].as_str().unwrap().len(), 64);
    assert!(r["tiles"]["inferred"].as_u64().unwrap() > 0);
    assert!(r["grade"]["isup_grade_group"].as_u64().unwrap() <= 5);
    for file in [
        "overlay.png",
        "heatmap_NC.png",
        "heatmap_G5.png",
        "tiles.csv",
        "tiles.geojson",
    ] {
        assert!(out("cmu").join(file).is_file(), "{file} missing");
    }
    let csv = std::fs::read_to_string(out("cmu").join("tiles.csv")).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "minx,miny,width,height,prob_NC,prob_G3,prob_G4,prob_G5"
    );
    assert_eq!(
        csv.lines().count() as u64 - 1,
        r["tiles"]["inferred"].as_u64().unwrap()
    );
    for stage in [
        "open_ms",
        "tissue_ms",
        "read_ms",
        "infer_ms",
        "stitch_ms",
        "write_ms",
    ] {
        assert!(r["timings_ms"][stage].as_f64().unwrap() >= 0.0, "{stage}");
    }

    // No µm/px: refused with a request for --mpp; graded once it is given.
    let tcga = slides.join("TCGA-CR-7395-01A-01-TS1.svs");
    let line = stderr_line(&grade(&tcga, &models, &out("tcga"), &[]));
    assert!(line.contains("--mpp"), "{line}");
    assert!(!out("tcga").join("result.json").exists());
    let o = grade(&tcga, &models, &out("tcga"), &["--mpp", "0.5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(result(&out("tcga"))["slide"]["mpp_source"], "override");

    // DICOM that OpenSlide 4 reads: graded (its 29 µm/px level 0 is upsampled to 8 µm/px).
    let o = grade(
        &slides.join("camelyon-multiframe.dcm"),
        &models,
        &out("dicom"),
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(result(&out("dicom"))["slide"]["vendor"], "dicom");

    // DICOM that no reader accepts.
    let line = stderr_line(&grade(
        &slides.join("TCGA-XK-AAJU-prostate-nonstandard.dcm"),
        &models,
        &out("bad-dicom"),
        &[],
    ));
    assert!(
        line.contains("does not recognize") || line.contains("cannot open"),
        "{line}"
    );

    // Fluorescence: refused as not brightfield.
    let line = stderr_line(&grade(
        &slides.join("hamamatsu-fluorescence-DAPI.ndpi"),
        &models,
        &out("fluo"),
        &[],
    ));
    assert!(line.contains("not a brightfield slide"), "{line}");
}

#[test]
fn bad_grade_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let slide = dir.path().join("x.svs");
    std::fs::write(&slide, b"not a slide").unwrap();
    let line = stderr_line(&grade(&slide, &models, &dir.path().join("o"), &[]));
    assert!(line.contains("no valid model"), "{line}");
    common::tiny_model(&models, "tiny", 1);
    let line = stderr_line(&grade(
        &slide,
        &models,
        &dir.path().join("o"),
        &["--min-tissue", "2"],
    ));
    assert!(line.contains("--min-tissue"), "{line}");
    let line = stderr_line(&grade(
        &slide,
        &models,
        &dir.path().join("o"),
        &["--model", "../etc"],
    ));
    assert!(line.contains("invalid model name"), "{line}");
    let line = stderr_line(&grade(&slide, &models, &dir.path().join("o"), &[]));
    assert!(line.contains("does not recognize"), "{line}");
}

#[test]
fn synthetic_slides_grade_and_an_empty_one_gives_no_tissue() {
    use slidegrade::synth::{SlideSpec, write_slide};
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    common::tiny_model(&models, "tiny", 1);

    // A slide of glass only: a valid result that says no tissue was found.
    let empty = dir.path().join("empty.tiff");
    write_slide(&empty, &SlideSpec::with_cores(2048, 2048, 0.5, 1, vec![])).unwrap();
    let o = grade(&empty, &models, &dir.path().join("empty-out"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = result(&dir.path().join("empty-out"));
    assert_eq!(r["outcome"], "no_tissue");
    assert!(r["grade"].is_null());
    assert_eq!(r["tiles"]["inferred"], 0);

    // The CLI writes a pyramidal slide that the grader reads through OpenSlide.
    let slide = dir.path().join("core.tiff");
    let out = Command::new(env!("CARGO_BIN_EXE_slidegrade"))
        .args([
            "synth-slide",
            slide.to_str().unwrap(),
            "--width",
            "4096",
            "--height",
            "3072",
            "--pattern",
            "3+4",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("core_truth.json").is_file());
    let o = grade(&slide, &models, &dir.path().join("core-out"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = result(&dir.path().join("core-out"));
    assert_eq!(r["outcome"], "graded");
    assert_eq!(r["slide"]["vendor"], "generic-tiff");
    assert!(r["tiles"]["inferred"].as_u64().unwrap() > 0);
}
