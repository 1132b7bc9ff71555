//! A minimal writer of tiled, pyramidal (Big)TIFF files, just enough for OpenSlide's
//! `generic-tiff` reader.
//!
//! Why our own: the `tiff` crate (image-rs) writes strips only, and a slide needs tiles.
//! A TIFF container is small: a header, the tiles' bytes anywhere in the file, and per
//! pyramid level one directory (IFD) of tags that points at them. This writer streams
//! tiles to disk as they come, in any order, and writes the directories at the end, so
//! nothing but the tile offsets is held in memory. Identical tiles (the glass
//! background) are written once and shared: TIFF allows any number of tiles to point at
//! the same bytes.
//!
//! What OpenSlide needs to read such a file as a multi-resolution slide (checked by the
//! tests): every level tiled; levels after the first marked `NewSubfileType` = reduced
//! image; all levels in the main IFD chain, largest first. It reports
//! `openslide.mpp-x/y` from `XResolution`/`YResolution` when `ResolutionUnit` is
//! centimetre.
//!
//! Tiles are JPEG (Compression 7) with Photometric YCbCr: each tile is a complete JFIF
//! stream (no shared `JPEGTables`) from `image`'s encoder, which does not subsample
//! chroma, hence `YCbCrSubSampling` = 1, 1. That is the layout of most scanner files
//! (SVS), which OpenSlide decodes with its own libjpeg path.

use std::io::{self, Seek, SeekFrom, Write};

/// TIFF field types used here.
const ASCII: u16 = 2;
const SHORT: u16 = 3;
const LONG: u16 = 4;
const RATIONAL: u16 = 5;
const LONG8: u16 = 16;

/// The value of one tag.
#[derive(Debug, Clone)]
enum Value {
    Ascii(String),
    Short(Vec<u16>),
    Long(Vec<u32>),
    Long8(Vec<u64>),
    Rational(Vec<(u32, u32)>),
}

impl Value {
    fn field_type(&self) -> u16 {
        match self {
            Value::Ascii(_) => ASCII,
            Value::Short(_) => SHORT,
            Value::Long(_) => LONG,
            Value::Long8(_) => LONG8,
            Value::Rational(_) => RATIONAL,
        }
    }

    fn count(&self) -> u64 {
        match self {
            // NUL-terminated.
            Value::Ascii(s) => s.len() as u64 + 1,
            Value::Short(v) => v.len() as u64,
            Value::Long(v) => v.len() as u64,
            Value::Long8(v) => v.len() as u64,
            Value::Rational(v) => v.len() as u64,
        }
    }

    /// Little-endian bytes.
    fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Ascii(s) => {
                let mut b = s.as_bytes().to_vec();
                b.push(0);
                b
            }
            Value::Short(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Value::Long(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Value::Long8(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Value::Rational(v) => v
                .iter()
                .flat_map(|(n, d)| n.to_le_bytes().into_iter().chain(d.to_le_bytes()))
                .collect(),
        }
    }
}

/// Tiles of one pyramid level.
#[derive(Debug, Clone)]
struct LevelTiles {
    width: u32,
    height: u32,
    tiles_x: u32,
    offsets: Vec<u64>,
    counts: Vec<u64>,
}

/// Image-wide metadata written into every level's directory.
#[derive(Debug, Clone)]
pub(crate) struct TiffMeta {
    /// Level-0 µm per pixel (becomes XResolution/YResolution in pixels per centimetre).
    pub mpp: f64,
    /// `ImageDescription` of level 0.
    pub description: String,
    /// `Software`.
    pub software: String,
}

/// Streams a tiled pyramidal TIFF: call [`write_tile`](Self::write_tile) or
/// [`write_blob`](Self::write_blob) + [`set_tile`](Self::set_tile) for every tile of
/// every level, then [`finish`](Self::finish).
pub(crate) struct TiffWriter<W: Write + Seek> {
    out: W,
    pos: u64,
    big: bool,
    tile: u32,
    levels: Vec<LevelTiles>,
}

/// Error for a classic TIFF that outgrows 32-bit offsets.
fn too_big() -> io::Error {
    io::Error::other("the file outgrew classic TIFF's 4 GiB limit; write a BigTIFF instead")
}

impl<W: Write + Seek> TiffWriter<W> {
    /// Starts a file with levels of `sizes` (width, height), largest first, cut into
    /// `tile`×`tile` tiles (a multiple of 16, as TIFF requires). `big` selects BigTIFF
    /// (64-bit offsets, needed past 4 GiB).
    pub(crate) fn new(mut out: W, big: bool, sizes: &[(u32, u32)], tile: u32) -> io::Result<Self> {
        assert!(
            tile > 0 && tile.is_multiple_of(16),
            "TIFF tile sizes are multiples of 16"
        );
        // Header with a first-IFD offset of 0, patched in `finish`.
        let header: Vec<u8> = if big {
            [
                &b"II"[..],
                &43u16.to_le_bytes(),
                &8u16.to_le_bytes(),
                &0u16.to_le_bytes(),
                &0u64.to_le_bytes(),
            ]
            .concat()
        } else {
            [&b"II"[..], &42u16.to_le_bytes(), &0u32.to_le_bytes()].concat()
        };
        out.write_all(&header)?;
        let levels = sizes
            .iter()
            .map(|&(width, height)| {
                let tiles_x = width.div_ceil(tile);
                let n = tiles_x as usize * height.div_ceil(tile) as usize;
                LevelTiles {
                    width,
                    height,
                    tiles_x,
                    offsets: vec![0; n],
                    counts: vec![0; n],
                }
            })
            .collect();
        Ok(TiffWriter {
            out,
            pos: header.len() as u64,
            big,
            tile,
            levels,
        })
    }

    /// Appends `bytes` (one compressed tile) and returns where they went, for
    /// [`set_tile`](Self::set_tile); one blob may serve many tiles.
    pub(crate) fn write_blob(&mut self, bytes: &[u8]) -> io::Result<(u64, u64)> {
        let offset = self.pos;
        let end = offset + bytes.len() as u64;
        if !self.big && end > u64::from(u32::MAX) {
            return Err(too_big());
        }
        self.out.write_all(bytes)?;
        self.pos = end;
        Ok((offset, bytes.len() as u64))
    }

    /// Points tile `(tx, ty)` of `level` at a blob written before.
    pub(crate) fn set_tile(&mut self, level: usize, tx: u32, ty: u32, blob: (u64, u64)) {
        let l = &mut self.levels[level];
        let i = ty as usize * l.tiles_x as usize + tx as usize;
        l.offsets[i] = blob.0;
        l.counts[i] = blob.1;
    }

    /// Writes `bytes` as tile `(tx, ty)` of `level`.
    pub(crate) fn write_tile(
        &mut self,
        level: usize,
        tx: u32,
        ty: u32,
        bytes: &[u8],
    ) -> io::Result<(u64, u64)> {
        let blob = self.write_blob(bytes)?;
        self.set_tile(level, tx, ty, blob);
        Ok(blob)
    }

    /// Bytes written so far.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Writes the directories (one per level, chained largest first) and returns the
    /// output. Fails if a tile was never set.
    pub(crate) fn finish(mut self, meta: &TiffMeta) -> io::Result<W> {
        let level0_width = self.levels.first().map_or(1, |l| l.width);
        let mut next_field: u64 = if self.big { 8 } else { 4 };
        for index in 0..self.levels.len() {
            let level = &self.levels[index];
            if let Some(i) = level.counts.iter().position(|&c| c == 0) {
                return Err(io::Error::other(format!(
                    "tile {i} of level {index} was never written"
                )));
            }
            let tags = self.tags(index, level0_width, meta);
            let ifd = self.write_ifd(&tags)?;
            // Link the previous directory (or the header) to this one.
            self.patch(next_field, ifd)?;
            next_field = ifd + self.ifd_size(tags.len()) - if self.big { 8 } else { 4 };
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn tags(&self, index: usize, level0_width: u32, meta: &TiffMeta) -> Vec<(u16, Value)> {
        let level = &self.levels[index];
        // This level's own resolution: level 0's µm/px times its (actual) downsample.
        let mpp = meta.mpp * f64::from(level0_width) / f64::from(level.width);
        // Pixels per centimetre as a rational with three decimals.
        let res = (1e7 / mpp).round().clamp(1.0, f64::from(u32::MAX)) as u32;
        let resolution = Value::Rational(vec![(res, 1000)]);
        let (offsets, counts) = if self.big {
            (
                Value::Long8(level.offsets.clone()),
                Value::Long8(level.counts.clone()),
            )
        } else {
            // Classic offsets fit: `write_blob` refused anything past 4 GiB.
            let narrow = |v: &[u64]| Value::Long(v.iter().map(|&x| x as u32).collect());
            (narrow(&level.offsets), narrow(&level.counts))
        };
        let mut tags = vec![
            // NewSubfileType: 1 = reduced-resolution version of the first image.
            (254, Value::Long(vec![u32::from(index > 0)])),
            (256, Value::Long(vec![level.width])),
            (257, Value::Long(vec![level.height])),
            (258, Value::Short(vec![8, 8, 8])),
            // Compression: 7 = JPEG ("new-style", one complete stream per tile).
            (259, Value::Short(vec![7])),
            // PhotometricInterpretation: 6 = YCbCr.
            (262, Value::Short(vec![6])),
            (277, Value::Short(vec![3])),
            (282, resolution.clone()),
            (283, resolution),
            // PlanarConfiguration: 1 = chunky.
            (284, Value::Short(vec![1])),
            // ResolutionUnit: 3 = centimetre.
            (296, Value::Short(vec![3])),
            (305, Value::Ascii(meta.software.clone())),
            (322, Value::Long(vec![self.tile])),
            (323, Value::Long(vec![self.tile])),
            (324, offsets),
            (325, counts),
            // YCbCrSubSampling 1, 1: `image`'s JPEG encoder keeps full-resolution chroma.
            (530, Value::Short(vec![1, 1])),
            // ReferenceBlackWhite for full-range JFIF YCbCr.
            (
                532,
                Value::Rational(vec![
                    (0, 1),
                    (255, 1),
                    (128, 1),
                    (255, 1),
                    (128, 1),
                    (255, 1),
                ]),
            ),
        ];
        if index == 0 {
            tags.push((270, Value::Ascii(meta.description.clone())));
        }
        tags.sort_by_key(|(tag, _)| *tag);
        tags
    }

    fn ifd_size(&self, entries: usize) -> u64 {
        if self.big {
            8 + 20 * entries as u64 + 8
        } else {
            2 + 12 * entries as u64 + 4
        }
    }

    /// Writes the out-of-line values, then the directory (with a next-IFD offset of 0);
    /// returns the directory's offset.
    fn write_ifd(&mut self, tags: &[(u16, Value)]) -> io::Result<u64> {
        let inline = if self.big { 8 } else { 4 };
        let mut entries = Vec::with_capacity(tags.len());
        for (tag, value) in tags {
            let bytes = value.bytes();
            let field = if bytes.len() <= inline {
                let mut b = bytes;
                b.resize(inline, 0);
                b
            } else {
                self.align()?;
                let (offset, _) = self.write_blob(&bytes)?;
                if self.big {
                    offset.to_le_bytes().to_vec()
                } else {
                    (offset as u32).to_le_bytes().to_vec()
                }
            };
            entries.push((*tag, value.field_type(), value.count(), field));
        }
        self.align()?;
        let mut ifd = Vec::with_capacity(self.ifd_size(entries.len()) as usize);
        if self.big {
            ifd.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        } else {
            ifd.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        }
        for (tag, ty, count, field) in entries {
            ifd.extend_from_slice(&tag.to_le_bytes());
            ifd.extend_from_slice(&ty.to_le_bytes());
            if self.big {
                ifd.extend_from_slice(&count.to_le_bytes());
            } else {
                ifd.extend_from_slice(&(count as u32).to_le_bytes());
            }
            ifd.extend_from_slice(&field);
        }
        ifd.extend_from_slice(&vec![0; inline]);
        let (offset, _) = self.write_blob(&ifd)?;
        Ok(offset)
    }

    /// Pads to an 8-byte boundary (TIFF wants word-aligned offsets; 8 suits BigTIFF).
    fn align(&mut self) -> io::Result<()> {
        let pad = (8 - self.pos % 8) % 8;
        if pad > 0 {
            self.write_blob(&[0; 8][..pad as usize])?;
        }
        Ok(())
    }

    /// Writes the offset `value` at file position `at`, then returns to the end.
    fn patch(&mut self, at: u64, value: u64) -> io::Result<()> {
        self.out.seek(SeekFrom::Start(at))?;
        if self.big {
            self.out.write_all(&value.to_le_bytes())?;
        } else {
            self.out
                .write_all(&u32::try_from(value).map_err(|_| too_big())?.to_le_bytes())?;
        }
        self.out.seek(SeekFrom::Start(self.pos))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slide::{MppSource, Slide};
    use image::{Rgb, RgbImage};

    fn jpeg(img: &RgbImage) -> Vec<u8> {
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95)
            .encode_image(img)
            .unwrap();
        buf
    }

    /// A two-level slide whose every tile has a distinct flat colour, read back through
    /// OpenSlide: levels, µm/px and pixels must all come out right.
    fn round_trip(big: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join(if big { "big.tiff" } else { "classic.tiff" });
        let tile = 256;
        let sizes = [(600, 300), (150, 75)];
        let colour = |level: u32, tx: u32, ty: u32| {
            Rgb([
                40 + 60 * tx as u8,
                50 + 100 * ty as u8,
                200 - 100 * level as u8,
            ])
        };
        let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut w = TiffWriter::new(file, big, &sizes, tile).unwrap();
        for (level, &(width, height)) in sizes.iter().enumerate() {
            for ty in 0..height.div_ceil(tile) {
                for tx in 0..width.div_ceil(tile) {
                    let img = RgbImage::from_pixel(tile, tile, colour(level as u32, tx, ty));
                    w.write_tile(level, tx, ty, &jpeg(&img)).unwrap();
                }
            }
        }
        let meta = TiffMeta {
            mpp: 0.25,
            description: "test".into(),
            software: "slidegrade test".into(),
        };
        w.finish(&meta).unwrap();

        let slide = Slide::open(&path, None).unwrap();
        let p = slide.properties();
        assert_eq!(p.vendor.as_deref(), Some("generic-tiff"));
        assert_eq!(
            (p.mpp_x, p.mpp_y, p.mpp_source),
            (0.25, 0.25, MppSource::Metadata)
        );
        let dims: Vec<_> = p
            .levels
            .iter()
            .map(|l| (l.width, l.height, l.downsample))
            .collect();
        assert_eq!(dims, vec![(600, 300, 1.0), (150, 75, 4.0)]);
        // Centre of tile (2, 1) at level 0, and of tile (0, 0) at level 1.
        let px = slide
            .read_region_at_mpp(2 * 256 + 20, 256 + 10, 1, 1, 0.25)
            .unwrap();
        let want = colour(0, 2, 1).0;
        let got = px.get_pixel(0, 0).0;
        assert!(
            want.iter().zip(got).all(|(a, b)| a.abs_diff(b) <= 3),
            "{want:?} vs {got:?}"
        );
        let px = slide.read_region_at_mpp(100, 100, 1, 1, 1.0).unwrap();
        let want = colour(1, 0, 0).0;
        let got = px.get_pixel(0, 0).0;
        assert!(
            want.iter().zip(got).all(|(a, b)| a.abs_diff(b) <= 3),
            "{want:?} vs {got:?}"
        );
    }

    #[test]
    fn classic_tiff_opens_in_openslide() {
        round_trip(false);
    }

    #[test]
    fn bigtiff_opens_in_openslide() {
        round_trip(true);
    }

    #[test]
    fn missing_tiles_are_an_error() {
        let mut w =
            TiffWriter::new(std::io::Cursor::new(Vec::new()), false, &[(300, 10)], 256).unwrap();
        w.write_tile(0, 0, 0, b"x").unwrap();
        let meta = TiffMeta {
            mpp: 1.0,
            description: String::new(),
            software: String::new(),
        };
        let err = w.finish(&meta).err().unwrap();
        assert!(err.to_string().contains("tile 1 of level 0"), "{err}");
    }
}
