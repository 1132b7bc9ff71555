//! Reading tiles at low magnification (issue 7 §1): the slide reader (coarsest level at
//! least as fine as the target, then an area resize) against the naive way, level 0 read
//! at full resolution and then resized, which is how WSInfer reads.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use super::common::{header, median, read_level0_resized};
use crate::grade::tiling;
use crate::grade::tissue::{self, TissueParams};
use crate::slide::Slide;

#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    /// Slide to read. Default: the synthetic benchmark slide of `bench slide`.
    #[arg(long, default_value = "target/bench/benchmark-seed1.tiff")]
    pub slide: PathBuf,
    /// Target resolutions, µm/px (8 ≈ 1.25×, 4 ≈ 2.5×, 2 ≈ 5×, 1 ≈ 10×).
    #[arg(long, value_delimiter = ',', default_value = "8,4,2,1")]
    pub mpp: Vec<f64>,
    /// Field of view of one tile, µm (the models read 128 µm tiles).
    #[arg(long, default_value_t = 128.0)]
    pub tile_um: f64,
    /// Tiles read per method and resolution: consecutive tissue tiles of the grid (row-major),
    /// from the middle of the slide.
    #[arg(long, default_value_t = 200)]
    pub tiles: usize,
    /// Passes over those tiles; the table gives the median.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

pub fn run(args: &ReadArgs) -> anyhow::Result<()> {
    let slide = Slide::open(&args.slide, None)?;
    let props = slide.properties().clone();
    let slide_mpp = props.mpp_x;
    // Tissue tiles, as the grader would choose them.
    let thumb = slide.thumbnail_at_mpp((args.tile_um / 8.0).max(slide_mpp))?;
    let mask = tissue::detect(&thumb, &TissueParams::default());
    let (w0, h0) = slide.dimensions();
    let side = args.tile_um / slide_mpp;
    let grid = tiling::grid(u64::from(w0), u64::from(h0), side, &mask, 0.5);
    anyhow::ensure!(
        !grid.tiles.is_empty(),
        "no tissue tiles in {}",
        args.slide.display()
    );
    let n = args.tiles.max(1).min(grid.tiles.len());
    let start = (grid.tiles.len() - n) / 2;
    let picks = &grid.tiles[start..start + n];

    let mut s = String::new();
    let _ = writeln!(s, "### Reading tiles at low magnification\n\n{}", header());
    let _ = writeln!(
        s,
        "- Slide: `{}` ({} × {} px at {} µm/px, {} levels); {} tissue tiles of {} µm, median of {} passes.\n",
        args.slide.display(),
        w0,
        h0,
        slide_mpp,
        props.levels.len(),
        picks.len(),
        args.tile_um,
        args.repeats.max(1)
    );
    let _ = writeln!(
        s,
        "| target µm/px | tile px | naive level-0 + resize tiles/s | reader tiles/s | speed-up | mean abs. difference (0–255) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for &mpp in &args.mpp {
        let tile_px = (args.tile_um / mpp).round() as u32;
        let level0_px = side.round() as u32;
        let mut reader = Vec::new();
        let mut naive = Vec::new();
        let mut diff = 0.0;
        for _ in 0..args.repeats.max(1) {
            // Each method starts from a freshly opened slide: OpenSlide caches decoded
            // tiles per handle, and a warm cache would favour whichever method runs second.
            let fresh = || Slide::open(&args.slide, None);
            let slide = fresh()?;
            let t = Instant::now();
            let ours: Vec<_> = picks
                .iter()
                .map(|p| slide.read_region_at_mpp(p.x as i64, p.y as i64, tile_px, tile_px, mpp))
                .collect::<Result<_, _>>()?;
            reader.push(picks.len() as f64 / t.elapsed().as_secs_f64());
            let slide = fresh()?;
            let t = Instant::now();
            let theirs: Vec<_> = picks
                .iter()
                .map(|p| read_level0_resized(&slide, p.x as i64, p.y as i64, level0_px, tile_px))
                .collect::<Result<_, _>>()?;
            naive.push(picks.len() as f64 / t.elapsed().as_secs_f64());
            // The two must show the same thing: only the level's own downsampling differs.
            diff = mean_abs_diff(&ours, &theirs);
        }
        let (r, n) = (median(&reader), median(&naive));
        let _ = writeln!(
            s,
            "| {mpp} | {tile_px} | {n:.0} | {r:.0} | {:.1}× | {diff:.2} |",
            r / n
        );
        eprintln!("{mpp} µm/px: naive {n:.0} tiles/s, reader {r:.0} tiles/s");
    }
    print!("{s}");
    Ok(())
}

fn mean_abs_diff(a: &[image::RgbImage], b: &[image::RgbImage]) -> f64 {
    let (mut sum, mut n) = (0u64, 0u64);
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.as_raw().iter().zip(y.as_raw()) {
            sum += u64::from(p.abs_diff(*q));
            n += 1;
        }
    }
    sum as f64 / n.max(1) as f64
}
