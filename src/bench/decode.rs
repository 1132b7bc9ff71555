//! Decoding throughput of one pyramid level's JPEG tiles (issue 16 §4), in Mpx/s of
//! decoded level pixels, one core unless said: `jpeg-decoder`, `zune-jpeg` (the direct
//! reader's decoder), `zune-jpeg` spread over every core, and OpenSlide's `read_region`
//! of each tile's rectangle. `--dump-tiles` writes the same tile streams as `.jpg` files
//! for `scripts/bench-libjpeg-turbo.sh`, which times one core of libjpeg-turbo on them.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use super::common::{header, median};
use crate::slide::Slide;
use crate::slide::direct::JpegCodec;

#[derive(Debug, Clone, clap::Args)]
pub struct DecodeArgs {
    /// Slide to read. Default: the synthetic benchmark slide of `bench slide`.
    #[arg(long, default_value = "target/bench/benchmark-seed1.tiff")]
    pub slide: PathBuf,
    /// Pyramid levels (OpenSlide indices). Default: every level stored as JPEG tiles.
    #[arg(long, value_delimiter = ',')]
    pub levels: Vec<u32>,
    /// At most this many tiles per level: the largest compressed ones, which hold tissue
    /// (a blank tile decodes several times faster and is not what grading reads).
    #[arg(long, default_value_t = 1000)]
    pub max_tiles: u32,
    /// Passes over those tiles; the table gives the median.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Also write each level's tile streams to `DIR/level<N>/<index>.jpg`.
    #[arg(long)]
    pub dump_tiles: Option<PathBuf>,
}

pub fn run(args: &DecodeArgs) -> anyhow::Result<()> {
    let slide = Slide::open(&args.slide, None)?;
    let direct = slide
        .direct_reader()
        .with_context(|| format!("{}: no level stored as JPEG tiles", args.slide.display()))?;
    let levels: Vec<u32> = if args.levels.is_empty() {
        slide
            .properties()
            .levels
            .iter()
            .map(|l| l.index)
            .filter(|&l| direct.covers(l))
            .collect()
    } else {
        args.levels.clone()
    };
    let cores = crate::threads::cores();

    let mut s = String::new();
    let _ = writeln!(s, "### Decoding a level's JPEG tiles\n\n{}", header());
    let _ = writeln!(
        s,
        "- Slide: `{}`. Mpx/s of decoded level pixels, median of {} passes. The JPEG streams are read from the file once, before timing (tables spliced in); OpenSlide reads each tile's rectangle from a freshly opened slide per pass, file reads included (from the page cache).\n",
        args.slide.display(),
        args.repeats.max(1)
    );
    let _ = writeln!(
        s,
        "| level | tile px | tiles | jpeg-decoder, 1 core | zune-jpeg, 1 core | zune-jpeg, {cores} cores | OpenSlide read_region, 1 core |\n|---|---|---|---|---|---|---|"
    );
    for level in levels {
        let (tw, th, across, down) = direct
            .tile_grid(level)
            .with_context(|| format!("level {level} is not stored as JPEG tiles"))?;
        let total = across * down;
        let n = args.max_tiles.clamp(1, total);
        let sizes = direct.tile_byte_counts(level).unwrap_or_default();
        let mut indices: Vec<u32> = (0..total).collect();
        indices.sort_by_key(|&i| std::cmp::Reverse(sizes.get(i as usize).copied()));
        indices.truncate(n as usize);
        indices.sort_unstable();
        let streams = indices
            .iter()
            .map(|&i| direct.tile_stream_at(level, i))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(dir) = &args.dump_tiles {
            let dir = dir.join(format!("level{level}"));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for (i, stream) in indices.iter().zip(&streams) {
                let path = dir.join(format!("{i:06}.jpg"));
                std::fs::write(&path, stream)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        let mpx = f64::from(n) * f64::from(tw) * f64::from(th) / 1e6;
        let rate = |seconds: Vec<f64>| mpx / median(&seconds);
        let timed = |run: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<f64> {
            let mut seconds = Vec::new();
            for _ in 0..args.repeats.max(1) {
                let t = Instant::now();
                run()?;
                seconds.push(t.elapsed().as_secs_f64());
            }
            Ok(rate(seconds))
        };
        let decode_all = |streams: &[Vec<u8>], codec| -> anyhow::Result<()> {
            for stream in streams {
                direct.decode_tile(level, stream, codec)?;
            }
            Ok(())
        };
        let jpeg_decoder = timed(&|| decode_all(&streams, JpegCodec::JpegDecoder))?;
        let zune = timed(&|| decode_all(&streams, JpegCodec::Zune))?;
        let zune_all_cores = timed(&|| {
            crate::threads::map_in_order(
                &streams,
                cores,
                |stream| direct.decode_tile(level, stream, JpegCodec::Zune).map(drop),
                || crate::slide::direct::DirectError::DecoderPanicked,
            )?;
            Ok(())
        })?;
        let mut seconds = Vec::new();
        for _ in 0..args.repeats.max(1) {
            let fresh = Slide::open(&args.slide, None)?.without_direct_reader();
            let t = Instant::now();
            for &i in &indices {
                let origin = ((i % across) * tw, (i / across) * th);
                fresh.read_level_with_openslide(level, origin, (tw, th))?;
            }
            seconds.push(t.elapsed().as_secs_f64());
        }
        let openslide = rate(seconds);
        let _ = writeln!(
            s,
            "| {level} | {tw}×{th} | {n} | {jpeg_decoder:.1} | {zune:.1} | {zune_all_cores:.1} | {openslide:.1} |"
        );
    }
    print!("{s}");
    Ok(())
}
