//! What running the slide decoder in a child process costs (RELIABILITY.md):
//! medians over repeated runs of the probe (open + overview + first tile) in this
//! process and in a `slidegrade probe-slide` child, and of a whole grade in this process
//! and in a `slidegrade grade` child.
//!
//! cargo run --example isolation_cost -- SLIDE [RUNS] [SLIDEGRADE_BINARY]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use slidegrade::build::export::{ExportInfo, export};
use slidegrade::build::network::{Architecture, Network};
use slidegrade::grade::pipeline::{GradeOptions, grade_slide};
use slidegrade::model::contract::{Role, Training};
use slidegrade::model::engine::{EngineConfig, EnginePool};
use slidegrade::slide::isolated::{self, Decoder};

fn median_ms(runs: usize, mut f: impl FnMut()) -> (f64, f64, f64) {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2], times[times.len() - 1])
}

fn report(what: &str, (min, median, max): (f64, f64, f64)) {
    println!("{what:<44} median {median:8.1} ms  (min {min:.1}, max {max:.1})");
}

fn model(dir: &Path) -> PathBuf {
    let net = Network::random(
        &Architecture {
            input_size: 64,
            channels: vec![16, 32, 64],
            pool_after: vec![true, true, false],
            kernel: 3,
            classes: 4,
            batch_norm: true,
        },
        0,
    );
    let info = ExportInfo {
        name: "random".into(),
        version: "0".into(),
        role: Role::Student,
        description: "random weights, for timing only".into(),
        classes: ["NC", "G3", "G4", "G5"].map(String::from).to_vec(),
        mpp: 8.0,
        magnification: 1.25,
        mean: ExportInfo::IMAGENET_MEAN,
        std: ExportInfo::IMAGENET_STD,
        training: Training::default(),
    };
    export(&net, &info, &dir.join("random")).expect("export");
    dir.to_path_buf()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let slide = PathBuf::from(
        args.get(1)
            .expect("usage: isolation_cost SLIDE [RUNS] [BIN]"),
    );
    let runs: usize = args.get(2).map_or(21, |r| r.parse().expect("RUNS"));
    let exe = args.get(3).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug/slidegrade"),
        PathBuf::from,
    );
    let decoder = Decoder {
        exe: exe.clone(),
        timeout: Duration::from_secs(120),
    };
    println!(
        "slide {} ({runs} runs each, child {})",
        slide.display(),
        exe.display()
    );

    // Warm the page cache and the dynamic loader once before timing.
    isolated::probe(&slide, None).expect("probe");
    decoder.probe(&slide, None).expect("child probe");

    report(
        "probe in process",
        median_ms(runs, || {
            isolated::probe(&slide, None).unwrap();
        }),
    );
    report(
        "probe in a child (probe-slide)",
        median_ms(runs, || decoder.probe(&slide, None).unwrap()),
    );
    report(
        "child doing nothing (slidegrade --version)",
        median_ms(runs, || {
            assert!(
                Command::new(&exe)
                    .arg("--version")
                    .output()
                    .unwrap()
                    .status
                    .success()
            );
        }),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let models = model(dir.path());
    let config = EngineConfig::default();
    let verified = slidegrade::model::contract::load(&models.join("random")).expect("load");
    let pool = EnginePool::new(&verified, &config).expect("session");
    let options = GradeOptions::default();
    report(
        "whole grade in process (session reused)",
        median_ms(runs, || {
            grade_slide(&slide, &pool, &options, &mut |_, _| {}).unwrap();
        }),
    );
    let isolated_options = GradeOptions {
        decoder: Some(decoder.clone()),
        ..GradeOptions::default()
    };
    report(
        "whole grade in process + probe in a child",
        median_ms(runs, || {
            grade_slide(&slide, &pool, &isolated_options, &mut |_, _| {}).unwrap();
        }),
    );
    let out = dir.path().join("out");
    report(
        "whole grade + outputs in a child (grade CLI)",
        median_ms(runs, || {
            let status = Command::new(&exe)
                .args(["grade", "--quiet", "--model", "random", "--models-dir"])
                .arg(&models)
                .arg("--out")
                .arg(&out)
                .arg(&slide)
                .output()
                .unwrap();
            assert!(status.status.success(), "{status:?}");
        }),
    );
}
