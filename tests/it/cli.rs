//! The `slidegrade` binary: `info` prints properties or JSON, and every failure is one
//! line on stderr with a non-zero exit.

use crate::common;

use std::process::{Command, Output};

fn slidegrade(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slidegrade"))
        .args(args)
        .output()
        .expect("run slidegrade")
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    lines[0].to_string()
}

#[test]
fn info_json_reports_the_cmu_slide() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let slide = data.join("slides/CMU-1-Small-Region.svs");
    let out = slidegrade(&["info", "--json", slide.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["vendor"], "aperio");
    assert!((json["mpp_x"].as_f64().unwrap() - 0.499).abs() < 1e-3);
    assert_eq!(json["objective_power"], 20.0);
    assert_eq!(json["levels"][0]["width"], 2220);

    let text = slidegrade(&["info", slide.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("aperio"));
}

#[test]
fn info_without_mpp_asks_for_it_and_accepts_the_override() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let slide = data.join("slides/TCGA-CR-7395-01A-01-TS1.svs");
    let line = one_line_error(&slidegrade(&["info", slide.to_str().unwrap()]));
    assert!(line.contains("--mpp"), "{line}");
    let out = slidegrade(&["info", "--json", "--mpp", "0.5", slide.to_str().unwrap()]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mpp_source"], "override");
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_slide = dir.path().join("notes.svs");
    std::fs::write(&not_a_slide, "hello").unwrap();
    let line = one_line_error(&slidegrade(&["info", not_a_slide.to_str().unwrap()]));
    assert!(line.contains("does not recognize"), "{line}");

    let line = one_line_error(&slidegrade(&["info", "/no/such/slide.svs"]));
    assert!(
        line.contains("not found") || line.contains("No such"),
        "{line}"
    );

    let line = one_line_error(&slidegrade(&["check-model", dir.path().to_str().unwrap()]));
    assert!(line.contains("model.json"), "{line}");
}

#[test]
fn export_random_then_check_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let export = slidegrade(&[
        "export-random",
        "--out",
        out.to_str().unwrap(),
        "--input-size",
        "32",
    ]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let check = slidegrade(&["check-model", out.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).starts_with("ok: random"));
}

#[test]
fn bench_patches_scores_every_real_patch_and_refuses_a_bad_scale() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    common::tiny_model(dir.path(), "tiny", 1);
    let patches = data.join("patches/arvaniti");
    let out = slidegrade(&[
        "bench",
        "patches",
        "--data",
        patches.to_str().unwrap(),
        "--data-mpp",
        "0.23",
        "--models-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("| tiny |"))
        .unwrap_or_else(|| panic!("no row for the model in:\n{table}"));
    assert!(row.contains("| synthetic | 1 | 200 |"), "{row}");
    // The confusion matrix (last cell) counts every patch once.
    let confusion = row.trim_end_matches(" |").rsplit("| ").next().unwrap();
    let total: u64 = confusion
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 200, "{row}");

    let line = one_line_error(&slidegrade(&[
        "bench",
        "patches",
        "--data",
        patches.to_str().unwrap(),
        "--data-mpp",
        "0",
        "--models-dir",
        dir.path().to_str().unwrap(),
    ]));
    assert!(line.contains("--data-mpp"), "{line}");
}
