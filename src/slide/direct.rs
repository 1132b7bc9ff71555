//! A direct reader for the common case: pyramid levels stored as JPEG tiles in a TIFF
//! container (Aperio SVS, generic pyramidal TIFF), read without OpenSlide.
//!
//! Why: at low magnification, reading is the grader's slowest stage, and most of it is
//! OpenSlide's per-call overhead (tile cache, compositing, premultiplied ARGB) rather than
//! JPEG decoding. This reader locates a level's tiles from its TIFF directory (tile offsets
//! and byte counts, shared `JPEGTables`), decodes each tile once into a small cache, and
//! cuts regions from the decoded tiles. When the caller wants a coarser resolution than
//! the level, a tile is decoded at 1/2, 1/4 or 1/8 of its size in the DCT domain
//! (`jpeg-decoder`'s scaled IDCT), which skips most of the decoding work.
//!
//! Two decoders, both pure Rust: `zune-jpeg` decodes full-size tiles (SIMD IDCT and
//! colour conversion; about twice `jpeg-decoder`'s speed here, BENCHMARKS.md), and
//! `jpeg-decoder` decodes scaled ones, which `zune-jpeg` cannot. A tile whose colour space
//! `zune-jpeg` reads differently from the TIFF's photometric tag (it guesses from JPEG
//! markers and cannot be told) also goes to `jpeg-decoder`, which can.
//!
//! What it takes: every tiled, 8-bit, 3-sample, chunky, JPEG-compressed (TIFF compression
//! 7) directory whose size matches one of OpenSlide's levels. Anything else (JPEG 2000
//! SVS, DICOM, NDPI, MRXS, stripped or LZW TIFFs) is left to OpenSlide, level by level.
//! Colour: Photometric YCbCr tiles are converted with the JFIF matrix, RGB ones are taken
//! as stored, as OpenSlide does; an embedded ICC profile is ignored by both.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use image::RgbImage;
use jpeg_decoder::ColorTransform;
use tiff::decoder::Decoder;
use tiff::tags::Tag;

use super::geometry::Level;

/// TIFF `Compression` value of JPEG ("new-style", with optional `JPEGTables`).
const JPEG: u16 = 7;
/// TIFF `PhotometricInterpretation` values this reader takes.
const PHOTOMETRIC_RGB: u16 = 2;
const PHOTOMETRIC_YCBCR: u16 = 6;
/// Decoded tiles kept per open slide. The grid is read row by row, and a row of JPEG
/// tiles serves the next grid row too, so the cache must hold one row across the slide:
/// 80 tiles of 256 px on the 20 mm benchmark slide at 1 µm/px. At most 160 × 192 KiB
/// = 30 MiB per slide.
const CACHE_TILES: usize = 160;
/// A region spanning at least this many JPEG tiles is decoded on every core.
const PARALLEL_FROM_TILES: usize = 8;
/// JPEG tiles a region decodes before copying them out (12 MiB of 256 px tiles).
const TILE_GROUP: usize = 64;

/// One pyramid level stored as JPEG tiles.
#[derive(Debug, Clone)]
struct TiledLevel {
    width: u32,
    height: u32,
    tile_width: u32,
    tile_height: u32,
    tiles_across: u32,
    offsets: Vec<u64>,
    byte_counts: Vec<u64>,
    /// Abbreviated-stream tables (SOI, DQT/DHT, EOI), spliced in front of each tile.
    tables: Option<Vec<u8>>,
    transform: ColorTransform,
}

/// Tiles decoded at one scale, shared between the regions that overlap them.
type TileKey = (u32, u32, u8);

/// The direct reader of one slide file (see the module docs). `Send + Sync`: reads use
/// positioned I/O on a shared file handle, and the cache is concurrent.
pub struct DirectReader {
    file: File,
    /// By OpenSlide level index; `None` where that level is not JPEG tiles.
    levels: Vec<Option<TiledLevel>>,
    cache: quick_cache::sync::Cache<TileKey, Arc<RgbImage>>,
    codec: JpegCodec,
}

impl std::fmt::Debug for DirectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectReader")
            .field(
                "levels",
                &self.levels.iter().map(Option::is_some).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a region could not be read directly (the caller then falls back or reports it).
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("reading tile bytes: {0}")]
    Io(#[from] std::io::Error),
    #[error("decoding a JPEG tile: {0}")]
    Jpeg(#[from] jpeg_decoder::Error),
    /// zune-jpeg's message, on one line (some of its messages end in a newline).
    #[error("decoding a JPEG tile: {0}")]
    Zune(String),
    #[error("level {0} is not stored as JPEG tiles")]
    LevelNotCovered(u32),
    #[error("tile ({0}, {1}) is not in the file's tile table")]
    MissingTile(u32, u32),
    #[error("a JPEG tile decoded to {0} bytes, expected {1}")]
    BadTile(usize, usize),
    #[error("a JPEG decoder thread panicked")]
    DecoderPanicked,
}

impl From<zune_jpeg::errors::DecodeErrors> for DirectError {
    fn from(e: zune_jpeg::errors::DecodeErrors) -> Self {
        DirectError::Zune(
            e.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

/// Which decoder a full-size tile goes through (scaled ones always use `jpeg-decoder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JpegCodec {
    /// `zune-jpeg`, falling back to `jpeg-decoder` where it would misread the colour space.
    #[default]
    Zune,
    /// `jpeg-decoder` only (the reader before zune-jpeg; kept for the benchmark).
    JpegDecoder,
}

impl DirectReader {
    /// The direct reader for `path`, or `None` when no level of `levels` is stored as
    /// JPEG tiles (or the file is not a TIFF): then OpenSlide reads everything.
    pub fn open(path: &Path, levels: &[Level]) -> Option<DirectReader> {
        let tiled = match tiled_directories(path) {
            Ok(tiled) => tiled,
            Err(e) => {
                tracing::debug!(path = %path.display(), %e, "no direct reader");
                return None;
            }
        };
        let mut by_level: Vec<Option<TiledLevel>> = Vec::new();
        for level in levels {
            let index = level.index as usize;
            if by_level.len() <= index {
                by_level.resize_with(index + 1, || None);
            }
            by_level[index] = tiled
                .iter()
                .find(|t| (t.width, t.height) == (level.width, level.height))
                .cloned();
        }
        if by_level.iter().all(Option::is_none) {
            return None;
        }
        let file = File::open(path).ok()?;
        Some(DirectReader {
            file,
            levels: by_level,
            cache: quick_cache::sync::Cache::new(CACHE_TILES),
            codec: JpegCodec::default(),
        })
    }

    /// This reader with full-size tiles decoded by `codec`.
    pub fn with_codec(mut self, codec: JpegCodec) -> DirectReader {
        self.codec = codec;
        self
    }

    /// The complete JPEG stream of tile `index` (row-major) of `level`, tables spliced
    /// in: what `bench decode` times each decoder on.
    pub fn tile_stream_at(&self, level: u32, index: u32) -> Result<Vec<u8>, DirectError> {
        let l = self.level(level)?;
        self.tile_stream(l, index % l.tiles_across, index / l.tiles_across)
    }

    /// The compressed size of every tile of `level`, row-major.
    pub fn tile_byte_counts(&self, level: u32) -> Option<&[u64]> {
        self.level(level).ok().map(|l| l.byte_counts.as_slice())
    }

    /// The JPEG tile grid of `level`: tile width and height, tiles across and down.
    pub fn tile_grid(&self, level: u32) -> Option<(u32, u32, u32, u32)> {
        let l = self.level(level).ok()?;
        Some((
            l.tile_width,
            l.tile_height,
            l.tiles_across,
            l.height.div_ceil(l.tile_height),
        ))
    }

    /// Decodes one tile stream of `level` at full size with `codec`, bypassing the cache.
    pub fn decode_tile(
        &self,
        level: u32,
        stream: &[u8],
        codec: JpegCodec,
    ) -> Result<RgbImage, DirectError> {
        decode(stream, self.level(level)?, 1, codec)
    }

    fn level(&self, level: u32) -> Result<&TiledLevel, DirectError> {
        match self.levels.get(level as usize) {
            Some(Some(l)) => Ok(l),
            _ => Err(DirectError::LevelNotCovered(level)),
        }
    }

    /// Whether OpenSlide level `level` is read directly.
    pub fn covers(&self, level: u32) -> bool {
        self.levels.get(level as usize).is_some_and(Option::is_some)
    }

    /// The `size` pixels of `level` starting at level pixel `origin`, decoded at
    /// 1/`scale` (1, 2, 4 or 8): the result is `ceil(size / scale)` and covers the same
    /// area. Pixels beyond the level are white, as OpenSlide's transparent ones become.
    pub fn read(
        &self,
        level: u32,
        origin: (u32, u32),
        size: (u32, u32),
        scale: u32,
    ) -> Result<RgbImage, DirectError> {
        let l = self.level(level)?;
        let s = scale.clamp(1, 8);
        let out_w = size.0.div_ceil(s);
        let out_h = size.1.div_ceil(s);
        let mut out = RgbImage::from_pixel(out_w, out_h, image::Rgb([255, 255, 255]));
        let (x0, y0) = origin;
        let x1 = (x0 + size.0).min(l.width);
        let y1 = (y0 + size.1).min(l.height);
        if x0 >= x1 || y0 >= y1 {
            return Ok(out);
        }
        // Scaled tile sides: a tile decodes to ceil(side / s) pixels.
        let (tw, th) = (l.tile_width, l.tile_height);
        let (stw, sth) = (tw.div_ceil(s), th.div_ceil(s));
        let needed: Vec<(u32, u32)> = (y0 / th..=(y1 - 1) / th)
            .flat_map(|ty| (x0 / tw..=(x1 - 1) / tw).map(move |tx| (tx, ty)))
            .collect();
        // In groups, so that a large region holds at most a group of decoded tiles
        // beyond what it has copied.
        for group in needed.chunks(TILE_GROUP) {
            let decoded = self.tiles(level, l, group, s)?;
            for (&(tx, ty), tile) in group.iter().zip(decoded) {
                // The part of this tile inside the region, in scaled pixels.
                let tile_x = tx * tw;
                let tile_y = ty * th;
                let from_x = x0.max(tile_x);
                let to_x = x1.min(tile_x + tw);
                let from_y = y0.max(tile_y);
                let to_y = y1.min(tile_y + th);
                let (sx0, sx1) = ((from_x - tile_x) / s, (to_x - tile_x).div_ceil(s).min(stw));
                let (sy0, sy1) = ((from_y - tile_y) / s, (to_y - tile_y).div_ceil(s).min(sth));
                let dx = (from_x - x0) / s;
                let dy = (from_y - y0) / s;
                // Row by row, as slices: this copy runs for every grid tile.
                let cols =
                    (sx1.min(tile.width()).saturating_sub(sx0)).min(out_w.saturating_sub(dx));
                let rows =
                    (sy1.min(tile.height()).saturating_sub(sy0)).min(out_h.saturating_sub(dy));
                let (src_stride, dst_stride) = (tile.width() as usize * 3, out_w as usize * 3);
                let len = cols as usize * 3;
                let (src, dst) = (tile.as_raw(), &mut *out);
                for row in 0..rows as usize {
                    let from = (sy0 as usize + row) * src_stride + sx0 as usize * 3;
                    let to = (dy as usize + row) * dst_stride + dx as usize * 3;
                    dst[to..to + len].copy_from_slice(&src[from..from + len]);
                }
            }
        }
        Ok(out)
    }

    /// The tiles `needed` of `level` decoded at 1/`s`, in order. A large region (an
    /// overview for tissue detection spans hundreds of tiles) is decoded on every core;
    /// a grid tile's few are decoded here, the grader spreading its grid tiles instead.
    fn tiles(
        &self,
        level: u32,
        l: &TiledLevel,
        needed: &[(u32, u32)],
        s: u32,
    ) -> Result<Vec<Arc<RgbImage>>, DirectError> {
        let threads = if needed.len() < PARALLEL_FROM_TILES {
            1
        } else {
            crate::threads::cores()
        };
        crate::threads::map_in_order(
            needed,
            threads,
            |&(tx, ty)| self.tile(level, l, tx, ty, s),
            || DirectError::DecoderPanicked,
        )
    }

    /// Tile `(tx, ty)` of `level` decoded at 1/`s`, from the cache or the file.
    fn tile(
        &self,
        level: u32,
        l: &TiledLevel,
        tx: u32,
        ty: u32,
        s: u32,
    ) -> Result<Arc<RgbImage>, DirectError> {
        let key = (level, ty * l.tiles_across + tx, s as u8);
        self.cache.get_or_insert_with(&key, || {
            let stream = self.tile_stream(l, tx, ty)?;
            decode(&stream, l, s, self.codec).map(Arc::new)
        })
    }

    /// Tile `(tx, ty)`'s bytes from the file, as a complete JPEG stream.
    fn tile_stream(&self, l: &TiledLevel, tx: u32, ty: u32) -> Result<Vec<u8>, DirectError> {
        let index = (ty * l.tiles_across + tx) as usize;
        let (Some(&offset), Some(&count)) = (l.offsets.get(index), l.byte_counts.get(index)) else {
            return Err(DirectError::MissingTile(tx, ty));
        };
        let mut bytes = vec![0u8; count as usize];
        self.file.read_exact_at(&mut bytes, offset)?;
        Ok(match &l.tables {
            Some(tables) => splice_tables(tables, &bytes),
            None => bytes,
        })
    }
}

/// An abbreviated tile stream with the shared tables spliced in: the tables' SOI and
/// segments, then the tile after its own SOI (the tables' EOI dropped).
fn splice_tables(tables: &[u8], tile: &[u8]) -> Vec<u8> {
    let tables = tables.strip_suffix(&[0xFF, 0xD9]).unwrap_or(tables);
    let tile = tile.strip_prefix(&[0xFF, 0xD8]).unwrap_or(tile);
    let mut stream = Vec::with_capacity(tables.len() + tile.len());
    stream.extend_from_slice(tables);
    stream.extend_from_slice(tile);
    stream
}

fn decode(
    stream: &[u8],
    l: &TiledLevel,
    s: u32,
    codec: JpegCodec,
) -> Result<RgbImage, DirectError> {
    if s == 1
        && codec == JpegCodec::Zune
        && let Some(tile) = decode_zune(stream, l)?
    {
        return Ok(tile);
    }
    let mut decoder = jpeg_decoder::Decoder::new(stream);
    decoder.set_color_transform(l.transform);
    decoder.read_info()?;
    let (w, h) = if s > 1 {
        let (w, h) = decoder.scale(
            (l.tile_width.div_ceil(s)) as u16,
            (l.tile_height.div_ceil(s)) as u16,
        )?;
        (u32::from(w), u32::from(h))
    } else {
        let info = decoder.info().ok_or(DirectError::BadTile(0, 0))?;
        (u32::from(info.width), u32::from(info.height))
    };
    let pixels = decoder.decode()?;
    let expected = (w * h * 3) as usize;
    if pixels.len() != expected {
        return Err(DirectError::BadTile(pixels.len(), expected));
    }
    RgbImage::from_raw(w, h, pixels).ok_or(DirectError::BadTile(0, expected))
}

/// A full-size tile through `zune-jpeg`; `None` when it would read the stream's colour
/// space differently from the TIFF's photometric tag (then `jpeg-decoder` decodes it).
fn decode_zune(stream: &[u8], l: &TiledLevel) -> Result<Option<RgbImage>, DirectError> {
    use zune_core::colorspace::ColorSpace;
    let options =
        zune_core::options::DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(stream),
        options,
    );
    decoder.decode_headers()?;
    let expected = match l.transform {
        ColorTransform::YCbCr => ColorSpace::YCbCr,
        _ => ColorSpace::RGB,
    };
    if decoder.input_colorspace() != Some(expected) {
        return Ok(None);
    }
    let (w, h) = decoder
        .info()
        .map_or((0, 0), |i| (u32::from(i.width), u32::from(i.height)));
    let pixels = decoder.decode()?;
    let expected = (w * h * 3) as usize;
    if pixels.len() != expected {
        return Err(DirectError::BadTile(pixels.len(), expected));
    }
    Ok(RgbImage::from_raw(w, h, pixels))
}

/// Every directory in the file's main chain that this reader can take.
fn tiled_directories(path: &Path) -> tiff::TiffResult<Vec<TiledLevel>> {
    let mut decoder = Decoder::new(File::open(path)?)?;
    let mut out = Vec::new();
    loop {
        if let Some(level) = as_tiled_level(&mut decoder)? {
            out.push(level);
        }
        if !decoder.more_images() {
            break;
        }
        decoder.next_image()?;
    }
    Ok(out)
}

fn as_tiled_level(d: &mut Decoder<File>) -> tiff::TiffResult<Option<TiledLevel>> {
    let unsigned = |d: &mut Decoder<File>, tag| d.find_tag_unsigned::<u32>(tag);
    let compression = unsigned(d, Tag::Compression)?;
    let photometric = unsigned(d, Tag::PhotometricInterpretation)?;
    let samples = unsigned(d, Tag::SamplesPerPixel)?.unwrap_or(1);
    let planar = unsigned(d, Tag::PlanarConfiguration)?.unwrap_or(1);
    let bits = d
        .find_tag_unsigned_vec::<u32>(Tag::BitsPerSample)?
        .unwrap_or_default();
    let (Some(tile_width), Some(tile_height)) =
        (unsigned(d, Tag::TileWidth)?, unsigned(d, Tag::TileLength)?)
    else {
        return Ok(None); // stripped (e.g. an SVS label or macro image)
    };
    let transform = match photometric.map(|p| p as u16) {
        Some(PHOTOMETRIC_YCBCR) => ColorTransform::YCbCr,
        Some(PHOTOMETRIC_RGB) => ColorTransform::RGB,
        _ => return Ok(None),
    };
    if compression != Some(u32::from(JPEG))
        || samples != 3
        || planar != 1
        || bits.iter().any(|&b| b != 8)
        || tile_width == 0
        || tile_height == 0
    {
        return Ok(None);
    }
    let (width, height) = d.dimensions()?;
    let offsets = d.get_tag_u64_vec(Tag::TileOffsets)?;
    let byte_counts = d.get_tag_u64_vec(Tag::TileByteCounts)?;
    let tiles_across = width.div_ceil(tile_width);
    let tiles = tiles_across as usize * height.div_ceil(tile_height) as usize;
    if offsets.len() < tiles || byte_counts.len() < tiles {
        return Ok(None);
    }
    let tables = d
        .find_tag(Tag::JPEGTables)?
        .map(|v| v.into_u8_vec())
        .transpose()?;
    Ok(Some(TiledLevel {
        width,
        height,
        tile_width,
        tile_height,
        tiles_across,
        offsets,
        byte_counts,
        tables,
        transform,
    }))
}
