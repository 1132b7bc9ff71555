//! The recipe's section of `RESULTS.md`: the table in the paper's shape (mean ± std and n
//! per row), paired differences from CE with 95% confidence intervals, the Teacher's lead,
//! the AT+ weight search, and the setup. Several recipes share one file, each owning the
//! text between its section markers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::cnn::CnnConfig;
use super::recipe::{
    Method, PAPER_AT_PLUS, PAPER_FM, RecipeConfig, RecipeOutcome, RunRecord, fmt_mag, val_qwk,
};
use crate::dataset::DataSet;
use crate::dataset::scores::{mean_std, paired_difference};

/// Replaces the text between this section's markers in `existing` with `body` (or adds
/// the section before the hand-written part, or at the end), keeping everything else:
/// several recipes (synthetic, real tissue) share one `RESULTS.md`, and people write
/// their analysis around the generated tables.
pub fn splice_section(existing: &str, name: &str, body: &str) -> String {
    let begin = format!("<!-- recipe section {name}: begin (generated; a rerun replaces it) -->");
    let end = format!("<!-- recipe section {name}: end -->");
    let block = format!("{begin}\n{}\n{end}", body.trim_end());
    if let (Some(b), Some(e)) = (existing.find(&begin), existing.find(&end))
        && b < e
    {
        return format!("{}{block}{}", &existing[..b], &existing[e + end.len()..]);
    }
    if let Some(at) = existing.find(HAND_WRITTEN_MARKER) {
        return format!("{}{block}\n\n{}", &existing[..at], &existing[at..]);
    }
    if existing.trim().is_empty() {
        format!("# Results\n\n{block}\n")
    } else {
        format!("{}\n\n{block}\n", existing.trim_end())
    }
}

/// Starts the part of `RESULTS.md` that people write; generated sections go above it.
pub const HAND_WRITTEN_MARKER: &str = "<!-- written by hand below; the recipe keeps it -->";

/// `mean ± std` in %, or the single value when there is one replicate (a spread of one
/// run is not zero, it is unknown).
fn cell(values: &[f64]) -> String {
    let (m, s) = mean_std(values);
    if values.len() < 2 {
        format!("{:.1}", 100.0 * m)
    } else {
        format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * s)
    }
}

/// Writes (or replaces) `cfg.results_section` of `cfg.results` with `outcome`'s figures.
pub fn write_section(cfg: &RecipeConfig, outcome: &RecipeOutcome) -> anyhow::Result<()> {
    let section = results_markdown(
        cfg,
        &outcome.data,
        &outcome.records,
        &outcome.chosen_at_plus,
        &outcome.teacher,
        outcome.seconds,
    );
    let existing = std::fs::read_to_string(&cfg.results).unwrap_or_default();
    let text = splice_section(&existing, &cfg.results_section, &section);
    std::fs::write(&cfg.results, text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", cfg.results.display()))?;
    eprintln!("wrote {} ({:.0} s)", cfg.results.display(), outcome.seconds);
    Ok(())
}

/// The generated section: the table in the paper's shape (mean ± std and n per row),
/// paired differences against CE with 95% CIs, the Teacher's lead, the AT+ weight search,
/// and the setup.
pub fn results_markdown(
    cfg: &RecipeConfig,
    data: &DataSet,
    records: &[RunRecord],
    chosen_at_plus: &BTreeMap<u32, f32>,
    teacher: &CnnConfig,
    secs: f64,
) -> String {
    let mut s = String::new();
    let replicates = match cfg.cv_folds {
        Some(k) => format!("{k} folds of a stratified cross-validation (each fold a replicate)"),
        None => format!("seeds {:?}", cfg.seeds),
    };
    let _ = writeln!(
        s,
        "## Results: {}\n\nTest-split metrics in %, mean ± sample std over replicates ({replicates}); n is the number of replicates, and a single run shows no spread. Data: {} ({}). {}\n",
        cfg.results_section,
        data.description,
        data.summary(),
        if data.synthetic {
            "Synthetic data only; not for clinical use."
        } else {
            "Real tissue; not for clinical use."
        }
    );
    let _ = writeln!(
        s,
        "| method | magnification | input px | n | balanced acc. | QWK | macro F1 | val QWK | MFLOPs/tile | ONNX Runtime ms/tile | train img/s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    let rows: Vec<&RunRecord> = records.iter().filter(|r| !r.search_only).collect();
    let mut groups: Vec<(Option<Method>, u32)> = Vec::new();
    for r in &rows {
        if !groups.contains(&(r.method, r.size_px)) {
            groups.push((r.method, r.size_px));
        }
    }
    groups.sort_by_key(|&(m, size)| (std::cmp::Reverse(size), m));
    let group = |method: Option<Method>, size: u32| -> Vec<&RunRecord> {
        let mut rs: Vec<&RunRecord> = rows
            .iter()
            .copied()
            .filter(|r| r.method == method && r.size_px == size)
            .collect();
        rs.sort_by_key(|r| r.replicate);
        rs.dedup_by_key(|r| r.replicate);
        rs
    };
    let metric = |rs: &[&RunRecord], split: &str, k: &str| -> Vec<f64> {
        rs.iter()
            .map(|r| {
                let m = if split == "val" { &r.val } else { &r.test };
                m.get(k).copied().unwrap_or(f64::NAN)
            })
            .collect()
    };
    for &(method, size) in &groups {
        let rs = group(method, size);
        // A shared Teacher is one run, whatever the number of replicates.
        let distinct: Vec<&RunRecord> = if method.is_none() {
            let mut d = rs.clone();
            d.dedup_by(|a, b| a.run_dir == b.run_dir);
            d
        } else {
            rs.clone()
        };
        let at = method
            .filter(|m| m.uses_chosen_at_plus())
            .and_then(|_| chosen_at_plus.get(&size))
            .map_or(String::new(), |w| format!(" (AT+ {w})"));
        let _ = writeln!(
            s,
            "| {}{at} | {}× | {} | {} | {} | {} | {} | {} | {:.1} | {:.3} | {:.0} |",
            method.map_or("Teacher (CE)", Method::label),
            fmt_mag(rs[0].magnification),
            size,
            distinct.len(),
            cell(&metric(&distinct, "test", "balanced_accuracy")),
            cell(&metric(&distinct, "test", "qwk")),
            cell(&metric(&distinct, "test", "macro_f1")),
            cell(&metric(&distinct, "val", "qwk")),
            rs[0].mflops,
            distinct.iter().map(|r| r.export.ms_per_tile).sum::<f64>() / distinct.len() as f64,
            distinct.iter().map(|r| r.images_per_sec).sum::<f64>() / distinct.len() as f64,
        );
    }

    let _ = writeln!(
        s,
        "\n### Paired differences (test balanced accuracy, points; pairs share replicate, data, views and Teacher)\n"
    );
    let _ = writeln!(
        s,
        "| comparison | magnification | n | mean difference | sd | 95% CI |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let sizes: Vec<u32> = cfg.student_sizes.clone();
    for &size in &sizes {
        let ce = group(Some(Method::Ce), size);
        let teacher = group(None, cfg.teacher_size);
        let mut comparisons: Vec<(String, Vec<&RunRecord>, Vec<&RunRecord>)> = Vec::new();
        for &m in cfg.methods.iter().filter(|&&m| m != Method::Ce) {
            comparisons.push((
                format!("{} − CE", m.label()),
                group(Some(m), size),
                ce.clone(),
            ));
        }
        comparisons.push(("Teacher − CE".to_string(), teacher.clone(), ce.clone()));
        for (label, a, b) in comparisons {
            let pairs: Vec<(f64, f64)> = a
                .iter()
                .filter_map(|x| {
                    b.iter().find(|y| y.replicate == x.replicate).map(|y| {
                        (
                            x.test.get("balanced_accuracy").copied().unwrap_or(f64::NAN),
                            y.test.get("balanced_accuracy").copied().unwrap_or(f64::NAN),
                        )
                    })
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let (xa, xb): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
            let mag =
                fmt_mag(10.0 / (cfg.teacher_mpp * f64::from(cfg.teacher_size) / f64::from(size)));
            match paired_difference(&xa, &xb) {
                Some(d) => {
                    let _ = writeln!(
                        s,
                        "| {label} | {mag}× | {} | {:+.1} | {:.1} | [{:+.1}, {:+.1}] |",
                        d.n,
                        100.0 * d.mean,
                        100.0 * d.std,
                        100.0 * d.ci95.0,
                        100.0 * d.ci95.1
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "| {label} | {mag}× | 1 | {:+.1} | – | none with one pair |",
                        100.0 * (xa[0] - xb[0])
                    );
                }
            }
        }
    }

    if !chosen_at_plus.is_empty() {
        let _ = writeln!(
            s,
            "\n### AT+ weight, chosen on validation (CE + AT+, first replicate)\n\n| magnification | weight | val QWK | val bal. acc. | chosen |\n|---|---|---|---|---|"
        );
        for r in records
            .iter()
            .filter(|r| r.method == Some(Method::At) && r.replicate == records[0].replicate)
        {
            if !chosen_at_plus.contains_key(&r.size_px) {
                continue;
            }
            let _ = writeln!(
                s,
                "| {}× | {} | {:.3} | {:.3} | {} |",
                fmt_mag(r.magnification),
                r.weights.at_plus,
                val_qwk(r),
                r.val.get("balanced_accuracy").copied().unwrap_or(f64::NAN),
                if chosen_at_plus.get(&r.size_px) == Some(&r.weights.at_plus) {
                    "yes"
                } else {
                    ""
                }
            );
        }
    }

    let cached: Vec<&RunRecord> = records
        .iter()
        .filter(|r| r.teacher_cache.is_some())
        .collect();
    let max_logits = records
        .iter()
        .map(|r| r.export.max_abs_diff_logits)
        .fold(0f32, f32::max);
    let max_cam = records
        .iter()
        .map(|r| r.export.max_abs_diff_cam)
        .fold(0f32, f32::max);
    let _ = writeln!(s, "\n### Setup\n");
    let _ = writeln!(
        s,
        "- Teacher: {} px at {} µm/px, width {}, depth {}, {} pools: receptive field {} px ({:.0} µm) of the {} px patch, CAM grid {}×{}, {:.1} MFLOPs.",
        cfg.teacher_size,
        cfg.teacher_mpp,
        cfg.teacher_width,
        cfg.teacher_depth,
        cfg.teacher_pools,
        teacher.receptive_field(),
        teacher.receptive_field() as f64 * cfg.teacher_mpp,
        cfg.teacher_size,
        teacher.cam_grid(),
        teacher.cam_grid(),
        teacher.flops() as f64 / 1e6,
    );
    let _ = writeln!(
        s,
        "- Students: {:?} px over the same field, width {}, depth {}, CAM grid matched by {:?}. {}",
        cfg.student_sizes,
        cfg.student_width,
        cfg.student_depth,
        cfg.grid_match,
        if cfg.teacher_per_seed || cfg.cv_folds.is_some() {
            "A Teacher per replicate."
        } else {
            "One Teacher (first seed) teaches every seed's Students."
        }
    );
    let _ = writeln!(
        s,
        "- Adam lr {} ({:?} schedule), batch {}, {} Teacher / {} Student epochs{}, class-balanced oversampling, best validation QWK epoch kept.",
        cfg.lr,
        cfg.lr_schedule,
        cfg.batch_size,
        cfg.teacher_epochs,
        cfg.student_epochs,
        cfg.max_steps_per_epoch
            .map_or(String::new(), |m| format!(" (≤ {m} steps each)"))
    );
    let _ = writeln!(
        s,
        "- Augmentation: flips/rotations, RGB gain/offset, HED jitter σ = {}, scale jitter ±{:.0}%. Student inputs made by {:?} reads (pyramid: JPEG q {}–{} at the pyramid level, then area average). Distillation uses {} fixed views per training image{}.",
        cfg.augment.hed_sigma,
        cfg.augment.scale_jitter * 100.0,
        cfg.student_read,
        super::data::PYRAMID_JPEG_QUALITY.0,
        super::data::PYRAMID_JPEG_QUALITY.1,
        cfg.views_per_image,
        if cfg.views_per_image > 0 {
            " (Teacher outputs cached per view)"
        } else {
            " (0: fresh views, Teacher run on every step)"
        }
    );
    let _ = writeln!(
        s,
        "- Loss weights: CE {}, KD {} (KL divergence, T = {}, T² {}), FM {}, AT+ {} unless chosen on validation from {:?}; paper row CE + FM {PAPER_FM} + AT+ {PAPER_AT_PLUS}.",
        cfg.weights.ce,
        cfg.weights.kd,
        cfg.weights.temperature,
        if cfg.weights.kd_t_squared {
            "on"
        } else {
            "off"
        },
        cfg.weights.fm,
        cfg.weights.at_plus,
        cfg.at_plus_grid
    );
    if let Some(init) = &cfg.init_from {
        let _ = writeln!(s, "- Fine-tuned from the runs in `{}`.", init.display());
    }
    if !cached.is_empty() {
        let (h, m) = cached.iter().fold((0, 0), |(h, m), r| {
            let (a, b) = r.teacher_cache.unwrap_or((0, 0));
            (h + a, m + b)
        });
        let _ = writeln!(
            s,
            "- Teacher cache: {h} lookups answered from the cache, {m} ran the Teacher ({:.0}% hits).",
            100.0 * h as f64 / (h + m).max(1) as f64
        );
    }
    let _ = writeln!(
        s,
        "- ONNX Runtime parity over all {} exports: max |Δ| logits {:.2e}, CAM {:.2e} (limit 1e-4). ms/tile: CPU, batch of 8, best of 5.",
        records.len(),
        max_logits,
        max_cam
    );
    let _ = writeln!(
        s,
        "- Wall time of this run: {:.1} min on this machine.",
        secs / 60.0
    );
    let _ = writeln!(s, "\nCommand:\n\n```sh\n{}\n```", cfg.command);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rerun_replaces_its_own_section_and_keeps_the_rest() {
        let first = splice_section("", "synthetic", "table A");
        assert!(first.starts_with("# Results\n"), "{first}");
        let with_notes = format!("{first}\n{HAND_WRITTEN_MARKER}\n## Analysis\nAT+ helps.\n");
        let real = splice_section(&with_notes, "real", "table R");
        let again = splice_section(&real, "synthetic", "table B");
        assert!(
            again.contains("table B") && !again.contains("table A"),
            "{again}"
        );
        assert!(again.contains("table R"), "the other section stays");
        assert!(again.ends_with("## Analysis\nAT+ helps.\n"), "{again}");
        // Generated sections stay above the hand-written part.
        assert!(again.find("table R").unwrap() < again.find(HAND_WRITTEN_MARKER).unwrap());
    }

    #[test]
    fn one_run_shows_no_spread() {
        assert_eq!(cell(&[0.865]), "86.5");
        assert_eq!(cell(&[0.8, 0.9]), "85.0 ± 7.1");
    }
}
