//! The slide reader against the real slides in `../shared/data/slides` (see
//! `../shared/data/MANIFEST.md`), plus files that are not slides at all.
//!
//! Every test skips, with a message, when the shared data is absent (a user's clone).

use crate::common;

use common::mean_abs_diff;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use slidegrade::slide::direct::JpegCodec;
use slidegrade::slide::{MppSource, ReadLimits, Slide, SlideError, resize_area};

const CMU: &str = "CMU-1-Small-Region.svs";
const TCGA_NO_MPP: &str = "TCGA-CR-7395-01A-01-TS1.svs";
const CAMELYON_DICOM: &str = "camelyon-multiframe.dcm";
const NDPI: &str = "hamamatsu-fluorescence-DAPI.ndpi";
const NONSTANDARD_DICOM: &str = "TCGA-XK-AAJU-prostate-nonstandard.dcm";

/// Path of a shared slide, or None (after saying why) when the shared data is absent.
fn slide_path(name: &str) -> Option<PathBuf> {
    common::shared_data().map(|d| d.join("slides").join(name))
}

fn open(name: &str, mpp: Option<f64>) -> Option<Slide> {
    let path = slide_path(name)?;
    Some(Slide::open(&path, mpp).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn open_err(path: &Path, mpp: Option<f64>) -> SlideError {
    match Slide::open(path, mpp) {
        Ok(s) => panic!("{} opened: {:?}", path.display(), s.properties()),
        Err(e) => e,
    }
}

fn assert_close(actual: f64, expected: f64, tol: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: {actual} is not within {tol} of {expected}"
    );
}

fn level_sizes(slide: &Slide) -> Vec<(u32, u32)> {
    let levels = &slide.properties().levels;
    levels.iter().map(|l| (l.width, l.height)).collect()
}

fn is_white(img: &RgbImage) -> bool {
    img.pixels().all(|p| p.0 == [255, 255, 255])
}

/// What each shared slide must do when opened without an override.
enum Expect {
    Opens { vendor: &'static str, levels: usize },
    Fails(&'static str),
}

fn expectation(name: &str) -> Option<Expect> {
    Some(match name {
        CMU => Expect::Opens {
            vendor: "aperio",
            levels: 1,
        },
        TCGA_NO_MPP => Expect::Fails("missing_mpp"),
        CAMELYON_DICOM => Expect::Opens {
            vendor: "dicom",
            levels: 1,
        },
        NDPI => Expect::Opens {
            vendor: "hamamatsu",
            levels: 7,
        },
        NONSTANDARD_DICOM => Expect::Fails("unsupported_format"),
        _ => return None,
    })
}

#[test]
fn every_shared_slide_opens_or_fails_as_expected() {
    let Some(dir) = slide_path("") else { return };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list shared slides")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert!(!names.is_empty(), "{} is empty", dir.display());
    for name in names {
        let path = dir.join(&name);
        let expect = expectation(&name)
            .unwrap_or_else(|| panic!("{name} is new in shared/data/slides: add an expectation"));
        match (Slide::open(&path, None), expect) {
            (Ok(slide), Expect::Opens { vendor, levels }) => {
                let props = slide.properties();
                eprintln!("{name}: {}", serde_json::to_string(props).expect("json"));
                assert_eq!(props.file_name, name);
                assert_eq!(props.vendor.as_deref(), Some(vendor), "{name}");
                assert_eq!(props.levels.len(), levels, "{name}");
                assert_eq!(props.mpp_source, MppSource::Metadata, "{name}");
                // Every readable slide gives a thumbnail without trouble.
                let thumb = slide.thumbnail(128).expect("thumbnail");
                assert_eq!(thumb.width().max(thumb.height()), 128, "{name}");
            }
            (Err(e), Expect::Fails(kind)) => {
                eprintln!("{name}: {} ({e})", e.kind());
                assert_eq!(e.kind(), kind, "{name}: {e}");
                assert!(!e.to_string().contains('\n'), "one-line message: {e}");
            }
            (Ok(slide), Expect::Fails(kind)) => {
                panic!("{name} opened, expected {kind}: {:?}", slide.properties())
            }
            (Err(e), Expect::Opens { .. }) => panic!("{name} failed to open: {e}"),
        }
    }
}

#[test]
fn cmu_small_region_properties() {
    let Some(slide) = open(CMU, None) else { return };
    let p = slide.properties();
    assert_eq!(p.vendor.as_deref(), Some("aperio"));
    assert_eq!(level_sizes(&slide), [(2220, 2967)]);
    assert_eq!(p.levels[0].downsample, 1.0);
    assert_close(p.mpp_x, 0.499, 1e-9, "mpp_x");
    assert_close(p.mpp_y, 0.499, 1e-9, "mpp_y");
    assert_eq!(p.mpp_source, MppSource::Metadata);
    assert_eq!(p.objective_power, Some(20.0));
}

#[test]
fn tcga_without_mpp_is_refused_unless_the_caller_states_it() {
    let Some(path) = slide_path(TCGA_NO_MPP) else {
        return;
    };
    let err = open_err(&path, None);
    assert!(matches!(err, SlideError::MissingMpp { .. }), "{err}");
    assert!(err.to_string().contains("--mpp"), "{err}");

    let slide = Slide::open(&path, Some(0.5)).expect("opens with an override");
    let p = slide.properties();
    assert_eq!(p.vendor.as_deref(), Some("aperio"));
    assert_eq!(level_sizes(&slide), [(4443, 3567), (2221, 1783)]);
    assert_close(p.levels[1].downsample, 2.0005, 1e-4, "level 1 downsample");
    assert_eq!(
        (p.mpp_x, p.mpp_y, p.mpp_source),
        (0.5, 0.5, MppSource::Override)
    );
    assert_eq!(p.objective_power, None);

    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1000.0] {
        assert_eq!(open_err(&path, Some(bad)).kind(), "invalid_mpp", "{bad}");
    }
}

#[test]
fn camelyon_dicom_opens_with_its_coarse_resolution() {
    let Some(slide) = open(CAMELYON_DICOM, None) else {
        return;
    };
    let p = slide.properties();
    assert_eq!(p.vendor.as_deref(), Some("dicom"));
    assert_eq!(level_sizes(&slide), [(1152, 700)]);
    // OpenSlide reports DICOM PixelSpacing (mm; row spacing first) as µm/px per axis:
    // 0.028969 mm across, 0.028968 mm down.
    assert_close(p.mpp_x, 28.969, 1e-6, "mpp_x");
    assert_close(p.mpp_y, 28.968, 1e-6, "mpp_y");
    assert_eq!(p.objective_power, None);
    // Half the resolution: the whole slide in 576×350.
    let half = slide.thumbnail_at_mpp(2.0 * 28.969).expect("read");
    assert_eq!(half.dimensions(), (576, 350));
    assert!(!is_white(&half), "the DICOM has tissue");
}

#[test]
fn hamamatsu_fluorescence_ndpi_opens() {
    let Some(slide) = open(NDPI, None) else {
        return;
    };
    let p = slide.properties();
    assert_eq!(p.vendor.as_deref(), Some("hamamatsu"));
    let expected: Vec<(u32, u32)> = (0..7).map(|i| (3968 >> i, 4864 >> i)).collect();
    assert_eq!(level_sizes(&slide), expected);
    for (i, l) in p.levels.iter().enumerate() {
        assert_eq!(l.downsample, f64::from(1u32 << i));
    }
    assert_close(p.mpp_x, 0.228_175, 1e-5, "mpp_x");
    assert_close(p.mpp_y, 0.228_175, 1e-5, "mpp_y");
    assert_eq!(p.objective_power, Some(40.0));
}

#[test]
fn nonstandard_dicom_is_unsupported() {
    let Some(path) = slide_path(NONSTANDARD_DICOM) else {
        return;
    };
    let err = open_err(&path, None);
    assert!(matches!(err, SlideError::UnsupportedFormat { .. }), "{err}");
    // An override does not make an unreadable file readable.
    assert_eq!(open_err(&path, Some(0.5)).kind(), "unsupported_format");
}

#[test]
fn files_that_are_not_slides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("x.svs");
    std::fs::write(&text, "this is not a slide\n").expect("write");
    let empty = dir.path().join("empty.svs");
    std::fs::write(&empty, b"").expect("write");
    let zip = dir.path().join("slide.zip");
    // An empty zip archive (end-of-central-directory record only).
    let mut eocd = b"PK\x05\x06".to_vec();
    eocd.extend_from_slice(&[0; 18]);
    std::fs::write(&zip, eocd).expect("write");

    for path in [&text, &empty, &zip, &dir.path().to_path_buf()] {
        let err = open_err(path, Some(0.5));
        assert_eq!(
            err.kind(),
            "unsupported_format",
            "{}: {err}",
            path.display()
        );
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
    let err = open_err(&dir.path().join("missing.svs"), None);
    assert!(matches!(err, SlideError::NotFound(_)), "{err}");
}

#[test]
fn coarse_read_on_ndpi_uses_a_coarse_level() {
    let Some(slide) = open(NDPI, None) else {
        return;
    };
    // 8 µm/px is 35× level 0: the coarsest level at least that fine is level 5 (32×).
    let plan = slide.plan_region(500, 700, 300, 200, 8.0).expect("plan");
    assert_ne!(plan.level, 0, "{plan:?}");
    assert_eq!(plan.level, 5, "{plan:?}");
    assert_eq!(plan.output_size, (300, 200));
    assert!(!plan.upsamples());
    let img = slide
        .read_region_at_mpp(500, 700, 300, 200, 8.0)
        .expect("read");
    assert_eq!(img.dimensions(), (300, 200));

    // Exactly a level's resolution (4×): that level, copied without resampling.
    let mpp4 = 4.0 * slide.properties().mpp_x;
    let plan = slide.plan_region(0, 0, 64, 64, mpp4).expect("plan");
    assert_eq!((plan.level, plan.canvas_size), (2, (64, 64)));

    // Finer than level 0: level 0, enlarged, still the requested size.
    let plan = slide.plan_region(0, 0, 64, 64, 0.1).expect("plan");
    assert!(plan.level == 0 && plan.upsamples(), "{plan:?}");
    let img = slide.read_region_at_mpp(0, 0, 64, 48, 0.1).expect("read");
    assert_eq!(img.dimensions(), (64, 48));
}

#[test]
fn coarse_level_read_matches_level0_shrunk() {
    // The same area read from level 1 and from level 0 (then halved) must agree: this
    // checks the level-0 → level coordinate mapping, not just sizes.
    let Some(slide) = open(TCGA_NO_MPP, Some(0.5)) else {
        return;
    };
    let (x0, y0) = (1000, 800);
    let plan = slide.plan_region(x0, y0, 400, 300, 1.0).expect("plan");
    assert_eq!(plan.level, 1, "rounded 2.0005 downsample must count as 2×");
    let coarse = slide
        .read_region_at_mpp(x0, y0, 400, 300, 1.0)
        .expect("read");
    let fine = slide
        .read_region_at_mpp(x0, y0, 800, 600, 0.5)
        .expect("read");
    let shrunk = resize_area(&fine, 400, 300);
    let diff = mean_abs_diff(&coarse, &shrunk);
    assert!(
        diff < 10.0,
        "level 1 and level 0 disagree: mean |Δ| = {diff}"
    );
    // A region shifted by 40 px (20 output px) disagrees far more: the test can fail.
    let shifted = slide
        .read_region_at_mpp(x0 + 40, y0, 400, 300, 1.0)
        .expect("read");
    assert!(mean_abs_diff(&shifted, &shrunk) > diff * 3.0);
}

#[test]
fn reads_above_the_budget_are_refused() {
    let Some(slide) = open(CMU, None) else { return };
    let slide = slide.with_limits(ReadLimits { max_pixels: 10_000 });
    // Output over budget.
    let err = slide.read_region_at_mpp(0, 0, 101, 100, 0.499).unwrap_err();
    assert!(
        matches!(
            err,
            SlideError::TooLarge {
                requested_pixels: 10_100,
                budget: 10_000
            }
        ),
        "{err}"
    );
    // Output fits (50×50) but the only level must be read at 4× that (200×200).
    let err = slide
        .read_region_at_mpp(0, 0, 50, 50, 4.0 * 0.499)
        .unwrap_err();
    assert_eq!(err.kind(), "too_large", "{err}");
    // Thumbnails too: the single level is 2220×2967.
    assert_eq!(slide.thumbnail(64).unwrap_err().kind(), "too_large");
    // Within budget is fine.
    assert!(slide.read_region_at_mpp(0, 0, 100, 100, 0.499).is_ok());
}

#[test]
fn cmu_thumbnail_keeps_aspect_ratio() {
    let Some(slide) = open(CMU, None) else { return };
    let thumb = slide.thumbnail(512).expect("thumbnail");
    // 2220×2967 → 383×512.
    assert_eq!(thumb.dimensions(), (383, 512));
    assert!(!is_white(&thumb));
    // Larger than the slide: the slide's own size, never enlarged.
    assert_eq!(
        slide.thumbnail(10_000).expect("thumb").dimensions(),
        (2220, 2967)
    );
    assert_eq!(slide.thumbnail(0).unwrap_err().kind(), "invalid_region");

    // The NDPI thumbnail comes from a coarse level, not level 0.
    let Some(ndpi) = open(NDPI, None) else { return };
    let plan = slidegrade::slide::geometry::plan_thumbnail(
        &ndpi.properties().levels,
        256,
        ndpi.limits().max_pixels,
    )
    .expect("plan");
    assert_eq!(plan.level, 4, "{plan:?}"); // 248×304 is the coarsest ≥ 256 high
    assert_eq!(ndpi.thumbnail(256).expect("thumb").dimensions(), (209, 256));
}

#[test]
fn pixels_outside_the_slide_are_white() {
    let Some(slide) = open(CMU, None) else { return };
    let mpp = slide.properties().mpp_x;
    let (w, _) = slide.dimensions();

    // Straddling the right edge: the part beyond the slide is white, the rest is not.
    let img = slide
        .read_region_at_mpp(i64::from(w) - 100, 1000, 200, 100, mpp)
        .expect("read");
    assert_eq!(img.dimensions(), (200, 100));
    assert!(is_white(
        &image::imageops::crop_imm(&img, 100, 0, 100, 100).to_image()
    ));
    assert!(!is_white(
        &image::imageops::crop_imm(&img, 0, 0, 100, 100).to_image()
    ));

    // Straddling the top-left corner (negative origin): outside white, inside read, and
    // the inside part matches a direct read of the same pixels.
    let img = slide
        .read_region_at_mpp(-50, 1000, 150, 100, mpp)
        .expect("read");
    assert!(is_white(
        &image::imageops::crop_imm(&img, 0, 0, 50, 100).to_image()
    ));
    let inside = image::imageops::crop_imm(&img, 50, 0, 100, 100).to_image();
    assert_eq!(
        inside,
        slide
            .read_region_at_mpp(0, 1000, 100, 100, mpp)
            .expect("read")
    );

    // Entirely outside, or empty: refused.
    for (x, y, rw, rh) in [(i64::from(w), 0, 10, 10), (0, -10, 10, 10), (0, 0, 0, 10)] {
        let err = slide.read_region_at_mpp(x, y, rw, rh, mpp).unwrap_err();
        assert_eq!(err.kind(), "invalid_region", "{err}");
    }
    for bad in [0.0, f64::NAN, -1.0] {
        let err = slide.read_region_at_mpp(0, 0, 10, 10, bad).unwrap_err();
        assert_eq!(err.kind(), "invalid_mpp", "{err}");
    }
}

#[test]
fn a_slide_is_shared_across_threads() {
    let Some(slide) = open(NDPI, None) else {
        return;
    };
    let slide = Arc::new(slide);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let slide = Arc::clone(&slide);
            std::thread::spawn(move || {
                slide
                    .read_region_at_mpp(i * 500, i * 500, 128, 128, 2.0)
                    .map(|img| img.dimensions())
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("thread").expect("read"), (128, 128));
    }
}

/// Issue 16 §2: on every shared slide the direct reader takes, its reads match OpenSlide's
/// read + area averaging within a mean absolute difference of 1 (of 255; the two JPEG
/// decoders' IDCTs round differently). With the optional 1/2 DCT-domain decoding
/// (`SLIDEGRADE_DCT_HALF`), reads at least twice as coarse as their level stay within
/// 2.5 (measured ≤ 2.0): the scaled IDCT is a different low-pass filter.
#[test]
fn direct_reads_match_openslide() {
    let dir = tempfile::tempdir().unwrap();
    let synthetic = dir.path().join("core.tiff");
    let spec = slidegrade::synth::SlideSpec::with_pattern(
        12_288,
        4_096,
        0.25,
        7,
        slidegrade::synth::CorePattern::ALL[3],
    );
    slidegrade::synth::write_slide(&synthetic, &spec).unwrap();
    let mut cases = vec![(
        synthetic,
        vec![
            (4_000i64, 1_000i64, 0.25),
            (3_000, 500, 1.0),
            (2_000, 800, 4.0),
            (5_000, 1_200, 8.0),
        ],
    )];
    if let Some(cmu) = slide_path(CMU) {
        cases.push((
            cmu,
            vec![
                (600, 900, 0.5),
                (300, 400, 1.0),
                (200, 200, 2.0),
                (0, 0, 4.0),
            ],
        ));
    }
    for (path, reads) in cases {
        // Both decoders of full-size tiles give the same pixels (zune-jpeg decodes them
        // by default; jpeg-decoder decodes scaled ones).
        let slide = Slide::open(&path, None).unwrap();
        let direct = slide.direct_reader().unwrap();
        let (_, _, across, down) = direct.tile_grid(0).unwrap();
        for index in (0..across * down).step_by(7).take(12) {
            let stream = direct.tile_stream_at(0, index).unwrap();
            let zune = direct.decode_tile(0, &stream, JpegCodec::Zune).unwrap();
            let other = direct
                .decode_tile(0, &stream, JpegCodec::JpegDecoder)
                .unwrap();
            let mad = mean_abs_diff(&zune, &other);
            assert!(
                mad <= 0.1,
                "{}: tile {index}: zune-jpeg and jpeg-decoder differ by {mad:.3}",
                path.display()
            );
        }
        let reference = Slide::open(&path, None).unwrap().without_direct_reader();
        assert!(!reference.reads_directly(0));
        for dct_half in [false, true] {
            let direct = Slide::open(&path, None).unwrap().with_dct_half(dct_half);
            assert!(
                direct.reads_directly(0),
                "{}: level 0 is JPEG tiles",
                path.display()
            );
            for &(x, y, mpp) in &reads {
                let a = direct.read_region_at_mpp(x, y, 256, 256, mpp).unwrap();
                let b = reference.read_region_at_mpp(x, y, 256, 256, mpp).unwrap();
                let mad = mean_abs_diff(&a, &b);
                let plan = reference.plan_region(x, y, 256, 256, mpp).unwrap();
                let scaled = dct_half && plan.read_size.0 >= 2 * plan.output_size.0;
                let limit = if scaled { 2.5 } else { 1.0 };
                eprintln!(
                    "{} at ({x}, {y}), {mpp} µm/px, DCT 1/2 {dct_half}: mean |Δ| {mad:.3}",
                    path.display()
                );
                assert!(
                    mad <= limit,
                    "{}: mean |Δ| {mad:.3} > {limit} at {mpp} µm/px",
                    path.display()
                );
            }
        }
    }
}
