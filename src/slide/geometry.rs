//! Pure slide geometry: which pyramid level to read, what to ask OpenSlide for, and how
//! big the result is. Nothing here touches a file, so every edge case is unit-tested
//! without slides.
//!
//! Conventions (OpenSlide's): positions are in **level-0** pixels; a level with
//! downsample `d` has pixels `d` level-0 pixels wide; µm/px of level `i` is
//! `mpp(level 0) × downsample(i)`.

use serde::Serialize;

use super::error::{SlideError, validate_mpp};

/// Relative tolerance when comparing a level's µm/px (or downsample) with a target.
///
/// Scanners store rounded downsamples (TCGA-CR-7395 reports 2.0005 for a true 2×
/// level, because 4443 / 2 was rounded to 2221), and `target / mpp` picks up float noise,
/// so an exact comparison would skip a level that is, physically, exactly the target.
pub const LEVEL_TOLERANCE: f64 = 1e-3;

/// One pyramid level as OpenSlide reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Level {
    /// OpenSlide's level index (what `read_region` takes).
    pub index: u32,
    /// Width in pixels of this level.
    pub width: u32,
    /// Height in pixels of this level.
    pub height: u32,
    /// Level-0 pixels per pixel of this level (1.0 for level 0).
    pub downsample: f64,
}

impl Level {
    /// Whether the level can be read at all: non-empty, with a downsample that is a
    /// finite number ≥ 1 (a NaN or sub-1 downsample would break every computation below).
    pub fn is_usable(&self) -> bool {
        self.width > 0 && self.height > 0 && self.downsample.is_finite() && self.downsample >= 1.0
    }
}

/// Position in `levels` of the coarsest usable level whose downsample is at most
/// `max_downsample` (within [`LEVEL_TOLERANCE`]), i.e. the cheapest level that is still
/// at least as fine as the target, so the result is only ever shrunk.
///
/// When no level qualifies (the target is finer than level 0, or `max_downsample` is
/// NaN), the finest usable level is returned and the caller upsamples. `None` only when
/// no level is usable. Among levels with equal downsamples the first wins.
pub fn choose_level(levels: &[Level], max_downsample: f64) -> Option<usize> {
    let limit = max_downsample * (1.0 + LEVEL_TOLERANCE);
    let usable = || levels.iter().enumerate().filter(|(_, l)| l.is_usable());
    let coarsest_qualifying = usable().filter(|(_, l)| l.downsample <= limit).fold(
        None::<(usize, f64)>,
        |best, (i, l)| match best {
            Some((_, d)) if d >= l.downsample => best,
            _ => Some((i, l.downsample)),
        },
    );
    let finest = || {
        usable()
            .fold(None::<(usize, f64)>, |best, (i, l)| match best {
                Some((_, d)) if d <= l.downsample => best,
                _ => Some((i, l.downsample)),
            })
            .map(|(i, _)| i)
    };
    coarsest_qualifying.map(|(i, _)| i).or_else(finest)
}

/// What to read from OpenSlide for one region request, and how to turn it into the
/// requested output. Built by [`plan_read`]; `Slide::read_region_at_mpp` executes it.
///
/// The region is read into a white "canvas" of level pixels covering the whole request.
/// OpenSlide's addresses are unsigned here, so the part of a request left of / above the
/// slide is not read but left white; the part right of / below it is read, and OpenSlide
/// returns it transparent, which also becomes white.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReadPlan {
    /// OpenSlide level index to read.
    pub level: u32,
    /// That level's downsample.
    pub level_downsample: f64,
    /// Level-0 address passed to OpenSlide: the request's origin clamped to ≥ 0.
    pub address: (u32, u32),
    /// Size, in level pixels, of what OpenSlide reads.
    pub read_size: (u32, u32),
    /// Size, in level pixels, of the canvas covering the whole request.
    pub canvas_size: (u32, u32),
    /// Where the read lands on the canvas (non-zero only for a negative origin).
    pub paste_at: (u32, u32),
    /// Size of the image returned, in pixels at the target µm/px.
    pub output_size: (u32, u32),
}

impl ReadPlan {
    /// Whether the canvas must be enlarged to the output (target finer than the level).
    pub fn upsamples(&self) -> bool {
        self.canvas_size.0 < self.output_size.0 || self.canvas_size.1 < self.output_size.1
    }
}

/// A region request: origin in level-0 pixels, size in output pixels at `target_mpp`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionRequest {
    /// Left edge, level-0 pixels (may be negative: that part comes back white).
    pub x0: i64,
    /// Top edge, level-0 pixels (may be negative: that part comes back white).
    pub y0: i64,
    /// Output width in pixels at `target_mpp`.
    pub width: u32,
    /// Output height in pixels at `target_mpp`.
    pub height: u32,
    /// Output resolution, µm per pixel.
    pub target_mpp: f64,
}

/// Plans a read of `req` from a slide with `levels` (level 0 first) whose level 0 has
/// `mpp = (x, y)` µm/px, refusing anything that would allocate more than `max_pixels`
/// pixels (checked for both the level read and the output, before anything is allocated).
///
/// Errors: `InvalidMpp` for a bad target, `InvalidRegion` for an empty size or a region
/// entirely outside the slide, `TooLarge` over the budget.
pub fn plan_read(
    levels: &[Level],
    mpp: (f64, f64),
    req: &RegionRequest,
    max_pixels: u64,
) -> Result<ReadPlan, SlideError> {
    let target = validate_mpp(req.target_mpp)?;
    let level0 = level0(levels)?;
    if req.width == 0 || req.height == 0 {
        return Err(SlideError::InvalidRegion {
            detail: format!(
                "region size must be at least 1x1 pixel, got {}x{}",
                req.width, req.height
            ),
        });
    }
    check_budget(u64::from(req.width) * u64::from(req.height), max_pixels)?;

    // Level-0 pixels per output pixel, per axis (µm/px may differ slightly by axis).
    let (scale_x, scale_y) = (target / mpp.0, target / mpp.1);
    let extent_x = f64::from(req.width) * scale_x;
    let extent_y = f64::from(req.height) * scale_y;
    let (x0, y0) = (req.x0 as f64, req.y0 as f64);
    let inside = x0 < f64::from(level0.width)
        && y0 < f64::from(level0.height)
        && x0 + extent_x > 0.0
        && y0 + extent_y > 0.0;
    if !inside {
        return Err(SlideError::InvalidRegion {
            detail: format!(
                "region at ({}, {}) spanning {extent_x:.0}x{extent_y:.0} level-0 pixels lies \
                 entirely outside the slide ({}x{})",
                req.x0, req.y0, level0.width, level0.height
            ),
        });
    }

    // A level must be at least as fine as the target on both axes.
    let max_downsample = target / mpp.0.max(mpp.1);
    let chosen = choose_level(levels, max_downsample)
        .and_then(|i| levels.get(i))
        .ok_or_else(no_usable_level)?;
    let ds = chosen.downsample;
    let canvas_w = canvas_extent(extent_x / ds, req.width);
    let canvas_h = canvas_extent(extent_y / ds, req.height);
    // The float product saturates when cast, so an absurd size still reports "too large".
    check_budget((canvas_w * canvas_h) as u64, max_pixels)?;
    // Within the budget, so both sides fit in u32 (the budget is far below u32::MAX²,
    // and each side is at least 1).
    let canvas = (to_u32(canvas_w), to_u32(canvas_h));

    // x0 < width ≤ u32::MAX, so the clamped origin fits.
    let address = (to_u32(x0.max(0.0)), to_u32(y0.max(0.0)));
    let paste_x = paste_offset(f64::from(address.0) - x0, ds, canvas.0);
    let paste_y = paste_offset(f64::from(address.1) - y0, ds, canvas.1);
    Ok(ReadPlan {
        level: chosen.index,
        level_downsample: ds,
        address,
        read_size: (canvas.0 - paste_x, canvas.1 - paste_y),
        canvas_size: canvas,
        paste_at: (paste_x, paste_y),
        output_size: (req.width, req.height),
    })
}

/// Level pixels needed to cover `exact` (a float extent), snapped to the output size when
/// within [`LEVEL_TOLERANCE`] of it, so a level that *is* the target (up to a rounded
/// downsample) is copied as is instead of being resampled by a fraction of a pixel.
fn canvas_extent(exact: f64, output: u32) -> f64 {
    let output = f64::from(output);
    if (exact - output).abs() <= output * LEVEL_TOLERANCE {
        output
    } else {
        exact.round().max(1.0)
    }
}

/// Level-pixel offset on the canvas of a read that starts `level0_gap` level-0 pixels
/// after the request's origin; always leaves at least one column/row to read.
fn paste_offset(level0_gap: f64, downsample: f64, canvas: u32) -> u32 {
    to_u32((level0_gap / downsample).round()).min(canvas.saturating_sub(1))
}

/// What to read for a thumbnail: a whole level, then resized to `output_size`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThumbnailPlan {
    /// OpenSlide level index to read (all of it).
    pub level: u32,
    /// That level's size in pixels.
    pub level_size: (u32, u32),
    /// Thumbnail size.
    pub output_size: (u32, u32),
}

/// Thumbnail size for a `width`×`height` slide: the longer side becomes `max_side`
/// (never more than the slide's own, so a thumbnail never upsamples), the other keeps the
/// aspect ratio, rounded, at least 1. `None` for `max_side == 0` or an empty slide.
pub fn thumbnail_size(width: u32, height: u32, max_side: u32) -> Option<(u32, u32)> {
    if max_side == 0 || width == 0 || height == 0 {
        return None;
    }
    let long = width.max(height);
    let target_long = max_side.min(long);
    let scale = f64::from(target_long) / f64::from(long);
    let short = |side: u32| to_u32((f64::from(side) * scale).round()).clamp(1, target_long);
    Some(if width >= height {
        (target_long, short(height))
    } else {
        (short(width), target_long)
    })
}

/// Plans a thumbnail with longer side `max_side`, read from the coarsest level that is
/// still at least as large as the thumbnail (never level 0 when a coarser one will do).
pub fn plan_thumbnail(
    levels: &[Level],
    max_side: u32,
    max_pixels: u64,
) -> Result<ThumbnailPlan, SlideError> {
    let level0 = level0(levels)?;
    let (out_w, out_h) =
        thumbnail_size(level0.width, level0.height, max_side).ok_or_else(|| {
            SlideError::InvalidRegion {
                detail: format!("thumbnail size must be at least 1 pixel, got {max_side}"),
            }
        })?;
    check_budget(u64::from(out_w) * u64::from(out_h), max_pixels)?;
    let max_downsample = (f64::from(level0.width) / f64::from(out_w))
        .min(f64::from(level0.height) / f64::from(out_h));
    let chosen = choose_level(levels, max_downsample)
        .and_then(|i| levels.get(i))
        .ok_or_else(no_usable_level)?;
    check_budget(
        u64::from(chosen.width) * u64::from(chosen.height),
        max_pixels,
    )?;
    Ok(ThumbnailPlan {
        level: chosen.index,
        level_size: (chosen.width, chosen.height),
        output_size: (out_w, out_h),
    })
}

/// Output size of the whole slide at `target_mpp` (for `thumbnail_at_mpp`), at least 1×1.
pub fn size_at_mpp(level0: (u32, u32), mpp: (f64, f64), target_mpp: f64) -> (u32, u32) {
    let side = |len: u32, mpp: f64| to_u32((f64::from(len) * mpp / target_mpp).round()).max(1);
    (side(level0.0, mpp.0), side(level0.1, mpp.1))
}

fn level0(levels: &[Level]) -> Result<&Level, SlideError> {
    levels
        .first()
        .filter(|l| l.is_usable())
        .ok_or_else(no_usable_level)
}

fn no_usable_level() -> SlideError {
    SlideError::Corrupt {
        detail: "the slide has no readable pyramid level".to_owned(),
    }
}

fn check_budget(requested_pixels: u64, budget: u64) -> Result<(), SlideError> {
    if requested_pixels > budget {
        Err(SlideError::TooLarge {
            requested_pixels,
            budget,
        })
    } else {
        Ok(())
    }
}

/// Float to u32, saturating (Rust's `as` saturates and maps NaN to 0); callers have
/// already bounded the value, this only keeps an overflow from being possible at all.
fn to_u32(v: f64) -> u32 {
    v as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(index: u32, width: u32, height: u32, downsample: f64) -> Level {
        Level {
            index,
            width,
            height,
            downsample,
        }
    }

    /// The NDPI's pyramid: 3968×4864, downsamples 1..64.
    fn ndpi() -> Vec<Level> {
        (0..7)
            .map(|i| level(i, 3968 >> i, 4864 >> i, f64::from(1u32 << i)))
            .collect()
    }

    fn req(x0: i64, y0: i64, width: u32, height: u32, target_mpp: f64) -> RegionRequest {
        RegionRequest {
            x0,
            y0,
            width,
            height,
            target_mpp,
        }
    }

    const BUDGET: u64 = 64 * 1024 * 1024;

    #[test]
    fn choose_level_picks_coarsest_level_not_coarser_than_target() {
        let levels = ndpi();
        assert_eq!(choose_level(&levels, 1.0), Some(0));
        assert_eq!(choose_level(&levels, 3.9), Some(1));
        // Exactly on a level, and a hair below it from float noise: still that level.
        assert_eq!(choose_level(&levels, 4.0), Some(2));
        assert_eq!(choose_level(&levels, 4.0 * (1.0 - 1e-6)), Some(2));
        assert_eq!(choose_level(&levels, 4.5), Some(2));
        assert_eq!(choose_level(&levels, 1000.0), Some(6));
    }

    #[test]
    fn choose_level_falls_back_to_finest_when_target_is_finer_than_level0() {
        assert_eq!(choose_level(&ndpi(), 0.25), Some(0));
        assert_eq!(choose_level(&ndpi(), f64::NAN), Some(0));
    }

    #[test]
    fn choose_level_accepts_rounded_downsample() {
        // TCGA-CR-7395: a 2× level stored as 2.0005.
        let levels = [
            level(0, 4443, 3567, 1.0),
            level(1, 2221, 1783, 2.000_505_550_065_996_7),
        ];
        assert_eq!(choose_level(&levels, 2.0), Some(1));
    }

    #[test]
    fn choose_level_skips_unusable_levels_and_handles_none() {
        let levels = [
            level(0, 100, 100, 1.0),
            level(1, 50, 50, f64::NAN),
            level(2, 0, 25, 4.0),
            level(3, 12, 12, 0.5),
            level(4, 6, 6, f64::INFINITY),
        ];
        assert_eq!(choose_level(&levels, 100.0), Some(0));
        assert_eq!(choose_level(&[], 4.0), None);
        assert_eq!(choose_level(&[level(0, 0, 0, 1.0)], 4.0), None);
    }

    #[test]
    fn choose_level_ignores_order() {
        let levels = [
            level(2, 25, 25, 4.0),
            level(0, 100, 100, 1.0),
            level(1, 50, 50, 2.0),
        ];
        assert_eq!(choose_level(&levels, 3.0), Some(2));
        assert_eq!(choose_level(&levels, 0.5), Some(1));
    }

    #[test]
    fn plan_read_on_exact_level_needs_no_resampling() {
        // 0.228 µm/px level 0, target 4× coarser: level 2 is the target exactly.
        let mpp = 0.228;
        let plan = plan_read(
            &ndpi(),
            (mpp, mpp),
            &req(1000, 2000, 256, 128, 4.0 * mpp),
            BUDGET,
        )
        .unwrap();
        assert_eq!(plan.level, 2);
        assert_eq!(plan.address, (1000, 2000));
        assert_eq!(plan.canvas_size, (256, 128));
        assert_eq!(plan.read_size, (256, 128));
        assert_eq!(plan.paste_at, (0, 0));
        assert_eq!(plan.output_size, (256, 128));
        assert!(!plan.upsamples());
    }

    #[test]
    fn plan_read_between_levels_reads_finer_level_and_shrinks() {
        // 6× coarser: level 2 (4×) read at 1.5× the output size.
        let plan = plan_read(&ndpi(), (0.25, 0.25), &req(0, 0, 100, 200, 1.5), BUDGET).unwrap();
        assert_eq!(plan.level, 2);
        assert_eq!(plan.canvas_size, (150, 300));
        assert!(!plan.upsamples());
    }

    #[test]
    fn plan_read_finer_than_level0_upsamples_level0() {
        let plan = plan_read(&ndpi(), (0.5, 0.5), &req(0, 0, 100, 100, 0.25), BUDGET).unwrap();
        assert_eq!(plan.level, 0);
        assert_eq!(plan.canvas_size, (50, 50));
        assert!(plan.upsamples());
    }

    #[test]
    fn plan_read_uses_each_axis_mpp() {
        // Camelyon DICOM: 28.969 × 28.968 µm/px; the level is chosen on the coarser axis.
        let levels = [level(0, 1152, 700, 1.0)];
        let plan = plan_read(
            &levels,
            (28.969, 28.968),
            &req(0, 0, 576, 350, 57.937),
            BUDGET,
        )
        .unwrap();
        assert_eq!(plan.level, 0);
        assert_eq!(plan.canvas_size, (1152, 700));
    }

    #[test]
    fn plan_read_clamps_negative_origin_and_paints_the_rest_white() {
        // Level 1 (2×): origin 20 level-0 px left of / 40 above the slide = 10 / 20 level px.
        let plan = plan_read(&ndpi(), (1.0, 1.0), &req(-20, -40, 100, 100, 2.0), BUDGET).unwrap();
        assert_eq!(plan.level, 1);
        assert_eq!(plan.address, (0, 0));
        assert_eq!(plan.paste_at, (10, 20));
        assert_eq!(plan.read_size, (90, 80));
        assert_eq!(plan.canvas_size, (100, 100));
    }

    #[test]
    fn plan_read_allows_partial_overlap_at_far_edges() {
        let plan = plan_read(&ndpi(), (1.0, 1.0), &req(3900, 4800, 200, 200, 1.0), BUDGET).unwrap();
        assert_eq!(plan.read_size, (200, 200));
    }

    #[test]
    fn plan_read_rejects_regions_fully_outside() {
        let levels = ndpi();
        for r in [
            req(3968, 0, 10, 10, 1.0),
            req(0, 4864, 10, 10, 1.0),
            req(-10, 0, 10, 10, 1.0),
            req(0, -20, 10, 10, 2.0),
            req(i64::MAX, i64::MAX, 10, 10, 1.0),
            req(i64::MIN, 0, 10, 10, 1.0),
        ] {
            let err = plan_read(&levels, (1.0, 1.0), &r, BUDGET).unwrap_err();
            assert_eq!(err.kind(), "invalid_region", "{r:?}: {err}");
        }
    }

    #[test]
    fn plan_read_rejects_empty_sizes_and_bad_targets() {
        let levels = ndpi();
        for r in [req(0, 0, 0, 10, 1.0), req(0, 0, 10, 0, 1.0)] {
            let err = plan_read(&levels, (1.0, 1.0), &r, BUDGET).unwrap_err();
            assert_eq!(err.kind(), "invalid_region");
        }
        for target in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e6] {
            let err = plan_read(&levels, (1.0, 1.0), &req(0, 0, 1, 1, target), BUDGET).unwrap_err();
            assert_eq!(err.kind(), "invalid_mpp", "{target}");
        }
    }

    #[test]
    fn plan_read_enforces_budget_on_output_and_on_level_read() {
        let levels = ndpi();
        // Output over budget.
        let err =
            plan_read(&levels, (1.0, 1.0), &req(0, 0, 1000, 1001, 1.0), 1_000_000).unwrap_err();
        assert!(matches!(
            err,
            SlideError::TooLarge {
                requested_pixels: 1_001_000,
                budget: 1_000_000
            }
        ));
        // Output tiny, but the target is 1.9× coarser than level 0 and there is no
        // level in between, so level 0 would be read at 1.9² the output's pixels.
        let two_levels = [level(0, 100_000, 100_000, 1.0), level(1, 1000, 1000, 100.0)];
        let err = plan_read(
            &two_levels,
            (1.0, 1.0),
            &req(0, 0, 1000, 1000, 1.9),
            2_000_000,
        )
        .unwrap_err();
        assert_eq!(err.kind(), "too_large");
        // Maximum sizes never overflow.
        let err = plan_read(
            &levels,
            (1.0, 1.0),
            &req(0, 0, u32::MAX, u32::MAX, 1.0),
            BUDGET,
        )
        .unwrap_err();
        assert_eq!(err.kind(), "too_large");
    }

    #[test]
    fn plan_read_without_levels_is_an_error_not_a_panic() {
        let err = plan_read(&[], (1.0, 1.0), &req(0, 0, 1, 1, 1.0), BUDGET).unwrap_err();
        assert_eq!(err.kind(), "corrupt");
    }

    #[test]
    fn thumbnail_size_keeps_aspect_and_never_upsamples() {
        assert_eq!(thumbnail_size(2220, 2967, 512), Some((383, 512)));
        assert_eq!(thumbnail_size(4443, 3567, 1000), Some((1000, 803)));
        assert_eq!(thumbnail_size(100, 100, 50), Some((50, 50)));
        assert_eq!(thumbnail_size(100, 50, 1000), Some((100, 50)));
        // Extreme aspect: the short side stays ≥ 1.
        assert_eq!(thumbnail_size(100_000, 1, 100), Some((100, 1)));
        assert_eq!(thumbnail_size(1, u32::MAX, 10), Some((1, 10)));
        assert_eq!(thumbnail_size(10, 10, 0), None);
        assert_eq!(thumbnail_size(0, 10, 10), None);
    }

    #[test]
    fn plan_thumbnail_reads_coarsest_adequate_level() {
        let levels = ndpi();
        // 4864 / 512 = 9.5: level 3 (8×, 496×608) is the coarsest still ≥ 512 high.
        let plan = plan_thumbnail(&levels, 512, BUDGET).unwrap();
        assert_eq!(plan.level, 3);
        assert_eq!(plan.level_size, (496, 608));
        assert_eq!(plan.output_size, (418, 512));
        // Exactly a level's size: that level.
        assert_eq!(plan_thumbnail(&levels, 608, BUDGET).unwrap().level, 3);
        assert_eq!(plan_thumbnail(&levels, 10_000, BUDGET).unwrap().level, 0);
    }

    #[test]
    fn plan_thumbnail_refuses_a_level_over_budget() {
        let levels = [level(0, 50_000, 50_000, 1.0)];
        let err = plan_thumbnail(&levels, 256, BUDGET).unwrap_err();
        assert_eq!(err.kind(), "too_large");
        assert_eq!(
            plan_thumbnail(&levels, 0, BUDGET).unwrap_err().kind(),
            "invalid_region"
        );
    }

    #[test]
    fn size_at_mpp_scales_each_axis() {
        assert_eq!(size_at_mpp((2220, 2967), (0.499, 0.499), 8.0), (138, 185));
        assert_eq!(size_at_mpp((10, 10), (1.0, 1.0), 1e6), (1, 1));
    }
}
