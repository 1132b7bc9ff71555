//! The synthetic histology renderer and slide writer, end to end: patches, then a slide
//! written to disk and read back through the project's own OpenSlide reader.
//!
//! Timings (release, by hand):
//! `cargo test --release --test synth_slide -- --ignored --nocapture`

use crate::common;

use common::mean_abs_diff;

use image::{GrayImage, RgbImage};
use slidegrade::grade::rule::{PatternAreas, grade};
use slidegrade::grade::tissue;
use slidegrade::slide::{MppSource, Slide, resize_area};
use slidegrade::synth::{
    Class, CorePattern, GLASS, SlideSpec, SlideTruth, render_patch, render_region, write_slide,
};

fn mean_rgb(img: &RgbImage) -> [f64; 3] {
    let mut m = [0.0; 3];
    for p in img.pixels() {
        for (mc, v) in m.iter_mut().zip(p.0) {
            *mc += f64::from(v);
        }
    }
    m.map(|v| v / f64::from(img.width() * img.height()))
}

#[test]
fn same_arguments_give_identical_bytes() {
    let a = render_patch(Class::G4, (130.0, -40.0), 96, 1.0, 7);
    let b = render_patch(Class::G4, (130.0, -40.0), 96, 1.0, 7);
    assert_eq!(a.as_raw(), b.as_raw());
    let other_seed = render_patch(Class::G4, (130.0, -40.0), 96, 1.0, 8);
    assert!(mean_abs_diff(&a, &other_seed) > 5.0);
}

#[test]
fn overlapping_patches_agree_where_they_overlap() {
    // Tiles of a slide are rendered separately: the shared part must match exactly.
    let whole = render_region(Class::G3, (0.0, 0.0), 128, 64, 1.0, 3);
    let right = render_region(Class::G3, (64.0, 0.0), 64, 64, 1.0, 3);
    let crop = image::imageops::crop_imm(&whole, 64, 0, 64, 64).to_image();
    assert_eq!(crop.as_raw(), right.as_raw());
}

#[test]
fn classes_differ() {
    let patches: Vec<RgbImage> = Class::ALL
        .iter()
        .map(|&c| render_patch(c, (0.0, 0.0), 160, 1.0, 11))
        .collect();
    // The stroma's fibres and the stain are the same for every class at one seed and
    // place (so that a slide's stroma runs on across region borders): the glands,
    // nuclei and stromal cells make the difference.
    for i in 0..4 {
        for j in i + 1..4 {
            let d = mean_abs_diff(&patches[i], &patches[j]);
            assert!(d > 3.0, "{} vs {}: {d}", Class::ALL[i], Class::ALL[j]);
        }
    }
    // H&E-like: on average pink to purple (eosin and haematoxylin both absorb green most).
    for (c, p) in Class::ALL.iter().zip(&patches) {
        let [r, g, b] = mean_rgb(p);
        assert!(
            r > g + 20.0 && b > g + 20.0,
            "{c}: mean {r:.0} {g:.0} {b:.0}"
        );
    }
}

#[test]
fn coarse_render_is_the_area_average_of_the_fine_one() {
    for class in [Class::Nc, Class::G5] {
        let fine = render_patch(class, (500.0, 250.0), 256, 1.0, 5);
        let coarse = render_patch(class, (500.0, 250.0), 32, 8.0, 5);
        let averaged = resize_area(&fine, 32, 32);
        let d = mean_abs_diff(&averaged, &coarse);
        assert!(d < 1.0, "{class}: mean abs diff {d}");
    }
}

/// A texture descriptor computed the same way at any resolution, standing in for
/// "what a classifier can see": each pixel gets one of 8 states (its brightness quartile
/// within the patch × whether it is bluer or redder than the patch median, so stain
/// intensity and hue cancel out), and the descriptor is the joint histogram of the states
/// of pixel pairs `d` apart (d = 1, 2, 4, 8 px; both axes), square-rooted, plus the mean
/// and spread of the colour.
fn descriptor(img: &RgbImage) -> Vec<f64> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let lum: Vec<i32> = img
        .pixels()
        .map(|p| i32::from(p[0]) + i32::from(p[1]) + i32::from(p[2]))
        .collect();
    let blue: Vec<i32> = img
        .pixels()
        .map(|p| i32::from(p[2]) - i32::from(p[0]))
        .collect();
    // q-th tertile.
    let quantile = |v: &[i32], q: usize| {
        let mut s = v.to_vec();
        s.sort_unstable();
        s[(s.len() - 1) * q / 3]
    };
    let cuts = [quantile(&lum, 1), quantile(&lum, 2)];
    let blue_median = {
        let mut s = blue.clone();
        s.sort_unstable();
        s[s.len() / 2]
    };
    let state: Vec<usize> = lum
        .iter()
        .zip(&blue)
        .map(|(&l, &b)| cuts.iter().filter(|&&c| l > c).count() * 2 + usize::from(b > blue_median))
        .collect();
    let mut out = Vec::new();
    for d in [1, 3] {
        let mut hist = [0.0f64; 36];
        let mut n = 0.0f64;
        for y in 0..h {
            for x in 0..w {
                let a = state[y * w + x];
                if x + d < w {
                    hist[a * 6 + state[y * w + x + d]] += 1.0;
                    n += 1.0;
                }
                if y + d < h {
                    hist[a * 6 + state[(y + d) * w + x]] += 1.0;
                    n += 1.0;
                }
            }
        }
        out.extend(hist.iter().map(|c| (c / n.max(1.0)).sqrt()));
    }
    let m = mean_rgb(img);
    out.extend(m);
    for (c, mean) in m.iter().enumerate() {
        let var = img
            .pixels()
            .map(|p| (f64::from(p[c]) - mean).powi(2))
            .sum::<f64>()
            / (w * h) as f64;
        out.push(var.sqrt());
    }
    out
}

/// Features only a fine image has: the distribution of the lengths of dark runs along
/// rows (nuclear size and chromatin pattern: solid small nuclei, vesicular rims,
/// nucleoli) and of bright runs (cribriform holes vs lumina), with per-patch thresholds
/// so that stain intensity cancels out.
fn fine_detail(img: &RgbImage) -> Vec<f64> {
    let w = img.width() as usize;
    let lum: Vec<i32> = img
        .pixels()
        .map(|p| i32::from(p[0]) + i32::from(p[1]) + i32::from(p[2]))
        .collect();
    let mut sorted = lum.clone();
    sorted.sort_unstable();
    let pct = |q: usize| sorted[(sorted.len() - 1) * q / 100];
    let bins = [2, 4, 7, 11, 20, usize::MAX];
    let runs = |hit: &dyn Fn(i32) -> bool| {
        let mut hist = [0.0f64; 6];
        for row in lum.chunks(w) {
            let mut len = 0;
            for &l in row.iter().chain(std::iter::once(&i32::MAX)) {
                if l != i32::MAX && hit(l) {
                    len += 1;
                } else if len > 0 {
                    hist[bins.iter().position(|&b| len <= b).unwrap_or(5)] += 1.0;
                    len = 0;
                }
            }
        }
        let total = hist.iter().sum::<f64>().max(1.0);
        hist.map(|c| (c / total).sqrt())
    };
    let (p10, p30, p85) = (pct(10), pct(30), pct(85));
    let mut out = Vec::new();
    out.extend(runs(&|l| l < p10));
    out.extend(runs(&|l| l < p30));
    out.extend(runs(&|l| l > p85.max(600)));
    out
}

/// k-fold cross-validated accuracy of multinomial logistic regression (standardised
/// features, L2 penalty, plain gradient descent): a stand-in for "how well can the
/// classes be told apart from these features".
fn cv_accuracy(samples: &[(usize, Vec<f64>)], folds: usize) -> f64 {
    let dims = samples[0].1.len();
    let mut correct = 0;
    let mut confusion = [[0usize; 4]; 4];
    for fold in 0..folds {
        let train: Vec<&(usize, Vec<f64>)> = samples
            .iter()
            .enumerate()
            .filter(|(i, _)| i % folds != fold)
            .map(|(_, s)| s)
            .collect();
        let n = train.len() as f64;
        let mean: Vec<f64> = (0..dims)
            .map(|d| train.iter().map(|s| s.1[d]).sum::<f64>() / n)
            .collect();
        let sd: Vec<f64> = (0..dims)
            .map(|d| {
                (train
                    .iter()
                    .map(|s| (s.1[d] - mean[d]).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt()
                    .max(1e-9)
            })
            .collect();
        let z = |f: &[f64]| -> Vec<f64> { (0..dims).map(|d| (f[d] - mean[d]) / sd[d]).collect() };
        let xs: Vec<(usize, Vec<f64>)> = train.iter().map(|(c, f)| (*c, z(f))).collect();
        let mut w = vec![vec![0.0; dims + 1]; 4];
        let scores = |w: &[Vec<f64>], x: &[f64]| -> Vec<f64> {
            w.iter()
                .map(|wk| wk[dims] + wk[..dims].iter().zip(x).map(|(a, b)| a * b).sum::<f64>())
                .collect()
        };
        for _ in 0..300 {
            let mut grad = vec![vec![0.0; dims + 1]; 4];
            for (c, x) in &xs {
                let s = scores(&w, x);
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for k in 0..4 {
                    let g = e[k] / total - f64::from(u8::from(k == *c));
                    for d in 0..dims {
                        grad[k][d] += g * x[d] / n;
                    }
                    grad[k][dims] += g / n;
                }
            }
            for k in 0..4 {
                for d in 0..=dims {
                    let l2 = if d < dims { 0.05 * w[k][d] } else { 0.0 };
                    w[k][d] -= 0.5 * (grad[k][d] + l2);
                }
            }
        }
        for (i, (c, f)) in samples.iter().enumerate() {
            if i % folds == fold {
                let s = scores(&w, &z(f));
                let best = (0..4).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
                correct += usize::from(best == *c);
                confusion[*c][best] += 1;
            }
        }
    }
    if std::env::var_os("SYNTH_DEBUG").is_some() {
        eprintln!("confusion (rows: truth NC G3 G4 G5): {confusion:?}");
    }
    correct as f64 / samples.len() as f64
}

/// Cross-validated accuracy of the same classifier on the same descriptor, given what a
/// Student at 8 µm/px sees, and what a Teacher at 1 µm/px sees (the 1 µm/px descriptor
/// plus the 8 µm/px one, since the fine image holds the coarse one): `(coarse, fine)`.
fn resolution_gap(per_class: usize, size_um: u32) -> (f64, f64) {
    let mut coarse = Vec::new();
    let mut fine = Vec::new();
    for k in 0..per_class {
        for class in Class::ALL {
            // Patches far apart and from different seeds: independent stains.
            let seed = 1000 + k as u64;
            let origin = (5000.0 * k as f64, 3000.0 * class.index() as f64);
            let img1 = render_patch(class, origin, size_um, 1.0, seed);
            let img8 = resize_area(&img1, size_um / 8, size_um / 8);
            let c = descriptor(&img8);
            let mut f = descriptor(&img1);
            f.extend(fine_detail(&img1));
            f.extend(&c);
            coarse.push((class.index(), c));
            fine.push((class.index(), f));
        }
    }
    if std::env::var_os("SYNTH_DEBUG").is_some() {
        let part = |v: &[(usize, Vec<f64>)], r: std::ops::Range<usize>| -> Vec<(usize, Vec<f64>)> {
            v.iter().map(|(c, f)| (*c, f[r.clone()].to_vec())).collect()
        };
        for (name, r) in [
            ("d1", 0..36),
            ("d3", 36..72),
            ("colour", 72..78),
            ("runs", 78..96),
        ] {
            let c = if r.end <= coarse[0].1.len() {
                cv_accuracy(&part(&coarse, r.clone()), 5)
            } else {
                f64::NAN
            };
            eprintln!(
                "{name}: coarse {c:.2} fine {:.2}",
                cv_accuracy(&part(&fine, r), 5)
            );
        }
    }
    // Five folds: samples come in class order, four folds would hold out one class.
    (cv_accuracy(&coarse, 5), cv_accuracy(&fine, 5))
}

/// The point of the data set: at 8 µm/px the classes are told apart well above chance
/// but far from perfectly; at 1 µm/px, by the same classifier on the same descriptor,
/// much better.
#[test]
fn class_evidence_sits_mostly_in_fine_structure() {
    let (coarse, fine) = resolution_gap(20, 256);
    eprintln!("logistic-regression accuracy: 8 µm/px {coarse:.2}, 1 µm/px {fine:.2}");
    assert!(
        coarse > 0.4,
        "coarse {coarse}: the coarse image should carry some evidence"
    );
    assert!(fine >= 0.8, "fine {fine}");
    assert!(fine - coarse >= 0.1, "coarse {coarse} vs fine {fine}");
}

/// Class shares of a mask, in mm².
fn mask_areas(mask: &GrayImage, mpp: f64) -> PatternAreas {
    let mut n = [0u64; 5];
    for p in mask.pixels() {
        n[usize::from(p.0[0])] += 1;
    }
    let mm2 = |k: u64| k as f64 * mpp * mpp * 1e-6;
    PatternAreas {
        benign: mm2(n[1]),
        g3: mm2(n[2]),
        g4: mm2(n[3]),
        g5: mm2(n[4]),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

#[test]
fn small_slide_reads_back_through_openslide() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core34.tiff");
    let spec = SlideSpec::with_pattern(4096, 3072, 0.5, 21, CorePattern::Gleason34);
    let truth = write_slide(&path, &spec).unwrap();
    assert!(!dir.path().join("core34.tiff.partial").exists());

    // The slide: generic TIFF, µm/px from its metadata, a 1-4-16 pyramid.
    let slide = Slide::open(&path, None).unwrap();
    let p = slide.properties();
    assert_eq!(p.vendor.as_deref(), Some("generic-tiff"));
    assert_eq!(p.mpp_source, MppSource::Metadata);
    assert!(close(p.mpp_x, 0.5) && close(p.mpp_y, 0.5), "{p:?}");
    let levels: Vec<_> = p
        .levels
        .iter()
        .map(|l| (l.width, l.height, l.downsample))
        .collect();
    assert_eq!(
        levels,
        vec![(4096, 3072, 1.0), (1024, 768, 4.0), (256, 192, 16.0)]
    );
    assert_eq!(truth.container, "tiff");
    assert_eq!(truth.levels.len(), 3);

    // Pixels: level 0 and level 1 match the renderer up to JPEG error.
    let (x0, y0) = (1800, 1300);
    let read0 = slide.read_region_at_mpp(x0, y0, 384, 384, 0.5).unwrap();
    let want0 = spec.render_region(x0, y0, 384, 384, 0.5);
    let d0 = mean_abs_diff(&read0, &want0);
    assert!(d0 < 4.0, "level 0: mean abs diff {d0}");
    let read1 = slide.read_region_at_mpp(0, 0, 1024, 768, 2.0).unwrap();
    let want1 = spec.render_region(0, 0, 1024, 768, 2.0);
    let d1 = mean_abs_diff(&read1, &want1);
    assert!(d1 < 3.0, "level 1: mean abs diff {d1}");
    // Glass around the core reads as glass (JPEG may move it by a unit or two).
    let corner = slide.read_region_at_mpp(0, 0, 64, 64, 0.5).unwrap();
    assert!(
        corner
            .pixels()
            .all(|px| px.0.iter().zip(GLASS).all(|(a, b)| a.abs_diff(b) <= 2)),
        "corner is not glass"
    );
    assert!(truth.tiles.glass > 0 && truth.tiles.rendered > 0 && truth.tiles.reused == 0);

    // The truth: JSON on disk equals what was returned; mask areas agree; grade right.
    let json = std::fs::read(dir.path().join("core34_truth.json")).unwrap();
    let on_disk: SlideTruth = serde_json::from_slice(&json).unwrap();
    // (Floats may differ in the last bit after a JSON round trip.)
    assert_eq!(
        (
            &on_disk.slide,
            &on_disk.mask.file,
            on_disk.tiles,
            &on_disk.grade.gleason
        ),
        (
            &truth.slide,
            &truth.mask.file,
            truth.tiles,
            &truth.grade.gleason
        )
    );
    assert!((on_disk.areas_mm2.g3 - truth.areas_mm2.g3).abs() < 1e-12);
    assert_eq!(spec.true_grade(), (truth.areas_mm2, truth.grade.clone()));
    let mask = image::open(dir.path().join(&truth.mask.file))
        .unwrap()
        .to_luma8();
    assert_eq!(mask.dimensions(), (truth.mask.width, truth.mask.height));
    assert_eq!(truth.mask.width * truth.mask.downsample, 4096);
    let areas = mask_areas(&mask, truth.mask.mpp);
    assert_eq!(areas, truth.areas_mm2);
    assert!(areas.g5 == 0.0 && areas.benign > 0.0 && areas.g3 > areas.g4 && areas.g4 > 0.0);
    assert_eq!(truth.grade, grade(&areas));
    assert_eq!(
        truth.grade.gleason,
        CorePattern::Gleason34.expected_gleason()
    );
    assert_eq!(truth.grade.isup_grade_group, 2);
    assert_eq!(truth.file_bytes, std::fs::metadata(&path).unwrap().len());

    // The mask agrees with the pixels: tissue where it says tissue.
    let thumb = slide.read_region_at_mpp(0, 0, 512, 384, 4.0).unwrap();
    let mut agree = 0;
    for (x, y, m) in mask.enumerate_pixels() {
        let px = thumb.get_pixel(x, y).0;
        let glassy = px.iter().zip(GLASS).all(|(a, b)| a.abs_diff(b) <= 3);
        agree += usize::from(glassy == (m.0[0] == 0));
    }
    let share = agree as f64 / f64::from(mask.width() * mask.height());

    // The project's tissue detector finds the core and nothing else.
    let found = tissue::detect(&thumb, &tissue::TissueParams::default());
    let truth_share = mask.pixels().filter(|m| m.0[0] > 0).count() as f64
        / f64::from(mask.width() * mask.height());
    assert!(
        (found.fraction() - truth_share).abs() < 0.05,
        "detector {:.3} vs truth {truth_share:.3}",
        found.fraction()
    );
    assert!(
        share > 0.97,
        "mask and pixels agree on {share:.3} of the slide"
    );
}

#[test]
fn every_pattern_grades_as_built() {
    // Truth depends on the layout only, so no slide needs to be written here; slides of
    // several sizes and aspect ratios exercise the layout generator.
    for (i, pattern) in CorePattern::ALL.into_iter().enumerate() {
        let (w, h, mpp) = [
            (4096, 3072, 0.5),
            (3000, 8000, 0.25),
            (60_000, 20_000, 0.25),
        ][i % 3];
        let spec = SlideSpec::with_pattern(w, h, mpp, i as u64, pattern);
        let (areas, grade) = spec.true_grade();
        assert_eq!(
            grade.gleason,
            pattern.expected_gleason(),
            "{pattern:?}: {areas:?}"
        );
        assert!(areas.total() > 0.1, "{pattern:?}: {areas:?}");
    }
}

#[test]
fn tile_reuse_shares_interior_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reuse.tiff");
    let spec = SlideSpec {
        tile_reuse: Some(2),
        ..SlideSpec::with_pattern(4096, 2048, 0.5, 4, CorePattern::Gleason44)
    };
    let truth = write_slide(&path, &spec).unwrap();
    assert!(truth.tiles.reused > 0, "{:?}", truth.tiles);
    assert_eq!(
        truth.tiles.total,
        truth.tiles.glass + truth.tiles.rendered + truth.tiles.reused
    );
    let slide = Slide::open(&path, None).unwrap();
    let region = slide.read_region_at_mpp(0, 0, 512, 256, 4.0).unwrap();
    assert!(mean_abs_diff(&region, &RgbImage::from_pixel(512, 256, image::Rgb(GLASS))) > 5.0);
    // Truth does not depend on how pixels were produced.
    let plain = write_slide(
        &dir.path().join("plain.tiff"),
        &SlideSpec {
            tile_reuse: None,
            ..spec.clone()
        },
    )
    .unwrap();
    assert_eq!(plain.areas_mm2, truth.areas_mm2);
    assert!(plain.file_bytes > truth.file_bytes);
}
