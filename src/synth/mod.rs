//! Synthetic prostate histology: an H&E renderer and a whole-slide writer.
//!
//! Two uses, one module:
//! - [`render_patch`] draws tissue of one class (`NC`, `G3`, `G4`, `G5`) at any position
//!   and resolution: the built-in training set.
//! - [`write_slide`] writes a pyramidal tiled TIFF that OpenSlide opens as a
//!   `generic-tiff` slide with its µm/px, plus a ground-truth mask and JSON: test and
//!   benchmark slides with known answers.
//!
//! **What the data is built to test.** The method distils a 10× Teacher into Students
//! that see 2.5×–1.25×. That only makes sense if the class evidence sits mostly in *fine*
//! structure that low resolution blurs away (nuclear size and shape, nucleoli, chromatin,
//! basal cells, small cribriform lumina) and only partly in *coarse* structure (gland
//! size, big lumina, a slight colour shift that per-slide stain variation swamps). See
//! [`appearance`] for how each class is drawn and why, and [`paint`] for how resolution is
//! handled (a render at 8 µm/px equals the area average of one at 1 µm/px).
//!
//! Everything is a pure function of `(seed, class, position)`, so any region renders on
//! its own: tiles of a slide in parallel, training patches in any order.
//!
//! Modules: [`class`] the four tissue classes; [`rng`] hashing and noise; [`appearance`]
//! per-class appearance; [`paint`] the renderer; [`layout`] where tissue and classes lie on a slide; [`tiff`] a minimal tiled
//! (Big)TIFF writer; [`slide`] the slide writer that ties them together.

mod appearance;
mod class;
mod layout;
mod paint;
mod rng;
mod slide;
mod tiff;

use std::path::PathBuf;

use image::RgbImage;

pub use class::Class;
pub use layout::{CorePattern, CoreSpec, Region};
pub use paint::{GLASS, MAX_SAMPLE_SPACING_UM};
pub use slide::{
    LevelInfo, MaskInfo, SlideSpec, SlideTruth, SynthError, TILE, TileCounts, write_slide,
};

/// A square `size_px`×`size_px` patch of `class` tissue at `mpp` µm/px whose top-left
/// corner is at `origin_um` (µm, in the tissue plane of `seed`).
///
/// Deterministic: the same arguments give the same bytes. Every pixel is a pure function
/// of its position, so overlapping patches on the same pixel grid agree exactly where
/// they overlap, and a patch at 8 µm/px equals the area average (see
/// [`crate::slide::resize_area`]) of the same field at 1 µm/px up to rounding. Staining
/// varies smoothly with position and per seed: patches whose origins lie ≥ 3 mm apart,
/// or that have different seeds, get independent stains. At one seed and place, the
/// stroma's fibres and the stain are the same for every class (so that a slide's stroma
/// runs on across the border between two regions).
///
/// Cost grows with the area in µm² (samples are ≤ 0.5 µm apart), not with the pixel
/// count: 512 px at 1 µm/px and 64 px at 8 µm/px cost the same.
///
/// # Panics
/// If `mpp` is not finite and positive.
pub fn render_patch(
    class: Class,
    origin_um: (f64, f64),
    size_px: u32,
    mpp: f64,
    seed: u64,
) -> RgbImage {
    render_region(class, origin_um, size_px, size_px, mpp, seed)
}

/// [`render_patch`] for a rectangle of `width`×`height` pixels.
///
/// # Panics
/// If `mpp` is not finite and positive.
pub fn render_region(
    class: Class,
    origin_um: (f64, f64),
    width: u32,
    height: u32,
    mpp: f64,
    seed: u64,
) -> RgbImage {
    paint::render_with(|_, _| Some(class), origin_um, width, height, mpp, seed)
}

/// Where a core ends inside a patch: tissue lies inside a circle of `radius_um` whose
/// edge crosses the patch, glass outside it. Real tiles at the rim of a biopsy core look
/// like this, and a model that has only seen all-tissue patches reads the glass as lumina.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoreEdge {
    /// Direction from the tissue towards the glass, in radians.
    pub angle: f64,
    /// Where the edge crosses the line through the patch centre along `angle`, as a
    /// fraction of the patch side from the centre (−0.5 … 0.5; positive = more tissue).
    pub offset: f64,
    /// Curvature radius of the edge in µm (a core's half-width at its end, more along
    /// its sides).
    pub radius_um: f64,
}

impl CoreEdge {
    /// A random edge from `seed`: any direction, 10–90% tissue, radius 300–3000 µm.
    pub fn random(seed: u64) -> CoreEdge {
        let unit = |shift: u32| ((seed.rotate_left(shift) >> 11) as f64) / (1u64 << 53) as f64;
        CoreEdge {
            angle: unit(7) * std::f64::consts::TAU,
            offset: (unit(29) - 0.5) * 0.8,
            radius_um: 300.0 + unit(47) * 2700.0,
        }
    }
}

/// [`render_patch`] at the rim of a core: `class` tissue on one side of `edge`, glass on
/// the other. The tissue is the same as [`render_patch`]'s where it is present.
///
/// # Panics
/// If `mpp` is not finite and positive.
pub fn render_edge_patch(
    class: Class,
    origin_um: (f64, f64),
    size_px: u32,
    mpp: f64,
    seed: u64,
    edge: CoreEdge,
) -> RgbImage {
    let side_um = f64::from(size_px) * mpp;
    let (nx, ny) = (edge.angle.cos(), edge.angle.sin());
    // The circle's centre lies behind the edge, on the tissue side.
    let back = edge.radius_um - edge.offset * side_um;
    let centre = (
        origin_um.0 + side_um / 2.0 - nx * back,
        origin_um.1 + side_um / 2.0 - ny * back,
    );
    let r2 = edge.radius_um * edge.radius_um;
    paint::render_with(
        |x, y| {
            let (dx, dy) = (x - centre.0, y - centre.1);
            (dx * dx + dy * dy < r2).then_some(class)
        },
        origin_um,
        size_px,
        size_px,
        mpp,
        seed,
    )
}

/// A cancer focus inside a patch, as in SICAPv2 and real biopsies: one lobed blob of the
/// patch's pattern covering `area_fraction` of it, among benign glands and stroma. Its
/// geometry is in fractions of the patch side, so one focus fits any resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Focus {
    /// Centre, as fractions of the patch side from its top-left corner.
    pub centre: (f64, f64),
    /// Mean radius as a fraction of the patch side.
    pub radius: f64,
    /// Amplitudes and phases of the 2- and 3-lobed outline terms.
    pub lobes: [(f64, f64); 2],
}

impl Focus {
    /// Smallest and largest share of the patch a random focus covers.
    pub const AREA_RANGE: (f64, f64) = (0.10, 0.40);

    /// A random focus from `seed`: area 10–40% of the patch, a lobed outline, placed so
    /// that it lies wholly inside the patch.
    pub fn random(seed: u64) -> Focus {
        let unit = |shift: u32| ((seed.rotate_left(shift) >> 11) as f64) / (1u64 << 53) as f64;
        let area = Self::AREA_RANGE.0 + unit(5) * (Self::AREA_RANGE.1 - Self::AREA_RANGE.0);
        let lobes = [
            (0.15 * unit(13), unit(19) * std::f64::consts::TAU),
            (0.10 * unit(23), unit(31) * std::f64::consts::TAU),
        ];
        // Area of r(θ) = R(1 + Σ a cos(kθ + φ)) is πR²(1 + Σ a²/2).
        let shape = 1.0 + lobes.iter().map(|(a, _)| a * a / 2.0).sum::<f64>();
        let radius = (area / (std::f64::consts::PI * shape)).sqrt();
        let reach = (radius * (1.0 + lobes[0].0 + lobes[1].0)).min(0.5);
        let place = |u: f64| reach + u * (1.0 - 2.0 * reach);
        Focus {
            centre: (place(unit(37)), place(unit(43))),
            radius,
            lobes,
        }
    }

    /// Whether the point at fractions `(fx, fy)` of the patch side lies in the focus.
    pub fn contains(&self, fx: f64, fy: f64) -> bool {
        let (dx, dy) = (fx - self.centre.0, fy - self.centre.1);
        let theta = dy.atan2(dx);
        let [(a2, p2), (a3, p3)] = self.lobes;
        let r = self.radius * (1.0 + a2 * (2.0 * theta + p2).cos() + a3 * (3.0 * theta + p3).cos());
        dx * dx + dy * dy < r * r
    }
}

/// Moves `focus` (same size and outline) to where `class` tissue differs most from benign
/// tissue at this place and seed, as an annotator draws a focus around tumour glands. A
/// focus dropped at random often held only stroma, which is the same for every class, so
/// a third of the G3 patches showed under 3% of changed pixels and their label could not
/// be seen at any resolution.
pub fn place_focus(
    class: Class,
    origin_um: (f64, f64),
    size_px: u32,
    mpp: f64,
    seed: u64,
    focus: Focus,
) -> Focus {
    if class == Class::Nc {
        return focus;
    }
    let pattern = render_patch(class, origin_um, size_px, mpp, seed);
    let benign = render_patch(Class::Nc, origin_um, size_px, mpp, seed);
    // Every second pixel is enough to rank the candidate places.
    let changed: Vec<(f64, f64)> = pattern
        .enumerate_pixels()
        .filter(|(x, y, p)| {
            x % 2 == 0
                && y % 2 == 0
                && (0..3)
                    .map(|c| i32::from(p.0[c]).abs_diff(i32::from(benign.get_pixel(*x, *y).0[c])))
                    .sum::<u32>()
                    > 30
        })
        .map(|(x, y, _)| {
            let f = |v: u32| (f64::from(v) + 0.5) / f64::from(size_px);
            (f(x), f(y))
        })
        .collect();
    let reach = (focus.radius * (1.0 + focus.lobes[0].0 + focus.lobes[1].0)).min(0.5);
    let steps = 9;
    let mut best = (0usize, focus);
    for i in 0..steps {
        for j in 0..steps {
            let at = |k: usize| reach + (1.0 - 2.0 * reach) * k as f64 / (steps - 1) as f64;
            let candidate = Focus {
                centre: (at(i), at(j)),
                ..focus
            };
            let hits = changed
                .iter()
                .filter(|&&(x, y)| candidate.contains(x, y))
                .count();
            if hits > best.0 {
                best = (hits, candidate);
            }
        }
    }
    best.1
}

/// A patch labelled `class` the way SICAPv2 labels them: for a cancer class, a [`Focus`]
/// of that pattern among benign (NC) tissue; for NC, benign tissue throughout. Outside
/// the focus the pixels are those of the NC [`render_patch`] at the same place and seed.
///
/// # Panics
/// If `mpp` is not finite and positive.
pub fn render_focal_patch(
    class: Class,
    origin_um: (f64, f64),
    size_px: u32,
    mpp: f64,
    seed: u64,
    focus: Focus,
) -> RgbImage {
    if class == Class::Nc {
        return render_patch(class, origin_um, size_px, mpp, seed);
    }
    let side_um = f64::from(size_px) * mpp;
    paint::render_with(
        |x, y| {
            let inside = focus.contains((x - origin_um.0) / side_um, (y - origin_um.1) / side_um);
            Some(if inside { class } else { Class::Nc })
        },
        origin_um,
        size_px,
        size_px,
        mpp,
        seed,
    )
}

/// Write a synthetic pyramidal slide (tiled TIFF with µm/px) with known Gleason
/// regions, plus `<stem>_mask.png` and `<stem>_truth.json` beside it.
#[derive(Debug, clap::Args)]
pub struct SynthSlideArgs {
    /// Output .tiff path.
    pub out: PathBuf,
    /// Level-0 width in pixels.
    #[arg(long, default_value_t = 8192)]
    pub width: u32,
    /// Level-0 height in pixels.
    #[arg(long, default_value_t = 6144)]
    pub height: u32,
    /// Level-0 µm per pixel (0.25 ≈ 40×).
    #[arg(long, default_value_t = 0.5)]
    pub mpp: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// One core of this pattern (e.g. `3+4`, `benign`); default: random cores.
    #[arg(long)]
    pub pattern: Option<String>,
    /// The 80,000 × 60,000 px, 0.25 µm/px benchmark slide (ignores size flags).
    #[arg(long)]
    pub benchmark: bool,
}

/// Runs `slidegrade synth-slide`.
pub fn run_slide_cli(args: &SynthSlideArgs) -> anyhow::Result<()> {
    let spec = match (args.benchmark, &args.pattern) {
        (true, _) => SlideSpec::benchmark(args.seed),
        (false, Some(p)) => {
            let pattern = CorePattern::from_name(p)
                .ok_or_else(|| anyhow::anyhow!("unknown --pattern `{p}`"))?;
            SlideSpec::with_pattern(args.width, args.height, args.mpp, args.seed, pattern)
        }
        (false, None) => SlideSpec::random(args.width, args.height, args.mpp, args.seed),
    };
    let truth = write_slide(&args.out, &spec)?;
    println!(
        "wrote {} ({} x {} px at {} µm/px, {} levels)",
        args.out.display(),
        truth.width,
        truth.height,
        truth.mpp,
        truth.levels.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn a_focus_covers_its_share_and_the_rest_is_benign() {
        let (size, origin, seed) = (64u32, (800.0, 900.0), 11);
        let benign = render_patch(Class::Nc, origin, size, 2.0, seed);
        for focus_seed in 0..40u64 {
            let focus = Focus::random(focus_seed * 7919 + 3);
            let inside = |x: u32, y: u32| {
                let c = |v: u32| (f64::from(v) + 0.5) / f64::from(size);
                focus.contains(c(x), c(y))
            };
            let count = (0..size)
                .flat_map(|y| (0..size).map(move |x| (x, y)))
                .filter(|&(x, y)| inside(x, y))
                .count();
            let share = count as f64 / f64::from(size * size);
            assert!((0.08..=0.43).contains(&share), "focus covers {share}");
            // The focus lies inside the patch: its outline stays within [0, 1]².
            for k in 0..360 {
                let theta = f64::from(k).to_radians();
                let [(a2, p2), (a3, p3)] = focus.lobes;
                let r = focus.radius
                    * (1.0 + a2 * (2.0 * theta + p2).cos() + a3 * (3.0 * theta + p3).cos());
                let (x, y) = (
                    focus.centre.0 + r * theta.cos(),
                    focus.centre.1 + r * theta.sin(),
                );
                assert!(
                    (0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y),
                    "{focus:?}"
                );
            }
            if focus_seed < 3 {
                let img = render_focal_patch(Class::G4, origin, size, 2.0, seed, focus);
                // Pixels far from the focus (no sample of theirs is in it) are benign.
                let far = |x: u32, y: u32| {
                    (-1..=1).all(|dy: i32| {
                        (-1..=1).all(|dx: i32| {
                            !inside(x.saturating_add_signed(dx), y.saturating_add_signed(dy))
                        })
                    })
                };
                let mut differ_inside = 0;
                for (x, y, p) in img.enumerate_pixels() {
                    if far(x, y) {
                        assert_eq!(p, benign.get_pixel(x, y), "({x}, {y}) outside the focus");
                    } else if inside(x, y) && p != benign.get_pixel(x, y) {
                        differ_inside += 1;
                    }
                }
                assert!(differ_inside > count / 2, "the focus is drawn as G4");
                let nc = render_focal_patch(Class::Nc, origin, size, 2.0, seed, focus);
                assert_eq!(nc, benign, "a benign patch has no focus");
            }
        }
    }

    #[test]
    fn class_names_round_trip() {
        for c in Class::ALL {
            assert_eq!(Class::from_index(c.index()), Some(c));
            assert_eq!(Class::from_name(c.name()), Some(c));
        }
        assert_eq!(Class::from_name(" g4 "), Some(Class::G4));
        assert_eq!(Class::from_index(4), None);
        assert_eq!(serde_json::to_string(&Class::Nc).unwrap(), "\"NC\"");
        assert_eq!(serde_json::from_str::<Class>("\"G5\"").unwrap(), Class::G5);
    }

    #[test]
    fn edge_patches_hold_tissue_and_glass_on_the_right_sides() {
        let glass = Rgb(GLASS);
        let origin = (1000.0, 1000.0);
        // Edge facing +x through the centre, nearly straight: left half tissue.
        let edge = CoreEdge {
            angle: 0.0,
            offset: 0.0,
            radius_um: 1e6,
        };
        let img = render_edge_patch(Class::G3, origin, 64, 1.0, 5, edge);
        let full = render_patch(Class::G3, origin, 64, 1.0, 5);
        let glass_px = |x0: u32, x1: u32| {
            (0..64)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| *img.get_pixel(x, y) == glass)
                .count()
        };
        assert_eq!(glass_px(0, 31), 0, "left of the edge is tissue");
        assert_eq!(glass_px(33, 64), 31 * 64, "right of the edge is glass");
        // Where tissue is present it is the ordinary patch's tissue.
        assert_eq!(img.get_pixel(10, 20), full.get_pixel(10, 20));
        for seed in 0..200 {
            let e = CoreEdge::random(seed);
            assert!((0.0..std::f64::consts::TAU).contains(&e.angle));
            assert!((-0.4..=0.4).contains(&e.offset));
            assert!((300.0..=3000.0).contains(&e.radius_um));
        }
    }
}
