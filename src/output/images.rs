//! Renders a graded slide for people and for other tools.
//!
//! - [`heatmap_image`] / [`write_heatmaps`]: each class's Grad-CAM map as an RGBA PNG at
//!   one pixel per cell, transparent where there is no evidence (or no tile), so that a
//!   viewer can lay it over the slide.
//! - [`overlay_image`] / [`write_overlay`]: the slide thumbnail with one class's map
//!   blended in, and a legend below it (colour bar, class, caption lines). Text is drawn
//!   with the built-in 8×8 bitmap font of `font8x8`: no font file is read and nothing is
//!   downloaded at run time.
//!
//! Per-tile tables (CSV, GeoJSON) are in [`super::tables`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage, Rgba, RgbaImage};

use crate::grade::heatmaps::Heatmaps;

/// Opacity of the hottest cell in the overlay. Capped below 1 so that the tissue under
/// a hot region stays visible: the point of the overlay is to see *what* the model
/// looked at.
pub const MAX_OVERLAY_ALPHA: f32 = 0.6;

/// Legend geometry, in output pixels. The 8×8 font is drawn at ×2: at ×1 it is hard to
/// read on a high-DPI screen or in a printed report.
const FONT_SCALE: u32 = 2;
const GLYPH: u32 = 8 * FONT_SCALE;
const LINE: u32 = GLYPH + 6;
const PAD: u32 = 10;
const GAP: u32 = 8;
const BAR_WIDTH: u32 = 256;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([20, 20, 20]);
const BAR_FRAME: Rgb<u8> = Rgb([90, 90, 90]);

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode image: {0}")]
    Image(String),
    /// The caller's data cannot be rendered (class out of range, a probability vector
    /// that does not match the class list, an empty canvas, a non-positive scale).
    #[error("cannot render: {0}")]
    BadInput(String),
}

impl RenderError {
    pub fn kind(&self) -> &'static str {
        match self {
            RenderError::Io { .. } => "render_io",
            RenderError::Image(_) => "image_encode_failed",
            RenderError::BadInput(_) => "bad_input",
        }
    }
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RenderError + '_ {
    move |source| RenderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Keeps I/O failures apart from encoding failures when saving an image, so that a
/// full disk reads as an I/O error with its path.
fn image_error(path: &Path) -> impl FnOnce(image::ImageError) -> RenderError + '_ {
    move |e| match e {
        image::ImageError::IoError(source) => RenderError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => RenderError::Image(format!("{}: {other}", path.display())),
    }
}

/// Turbo (Google's improved jet): the rainbow scale Grad-CAM figures usually use, so
/// readers need no new key, but without jet's false bands. `v` is clamped to 0–1.
fn colormap(v: f32) -> [u8; 3] {
    let c = colorous::TURBO.eval_continuous(f64::from(v));
    [c.r, c.g, c.b]
}

/// A fixed colour per class, shared by the overlay legend and the GeoJSON
/// classification so that a class looks the same everywhere. The Gleason classes get
/// the conventional traffic-light progression (benign green → G3 yellow → G4 orange →
/// G5 red); any other class takes the `index`-th entry of a palette that avoids those
/// four hues (d3's category10 without its green, orange, red and olive).
pub fn class_colour(name: &str, index: usize) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 6] = [
        [31, 119, 180],  // blue
        [148, 103, 189], // purple
        [140, 86, 75],   // brown
        [227, 119, 194], // pink
        [127, 127, 127], // grey
        [23, 190, 207],  // cyan
    ];
    match name.trim().to_ascii_uppercase().as_str() {
        "NC" | "BENIGN" => [44, 160, 44],
        "G3" => [255, 215, 0],
        "G4" => [255, 140, 0],
        "G5" => [214, 39, 40],
        _ => PALETTE[index % PALETTE.len()],
    }
}

/// Keeps `[A-Za-z0-9_-]` and replaces everything else with `_`, so a class name from a
/// model manifest can never add a directory level, a hidden file or a shell
/// metacharacter to an output path.
pub fn sanitise_file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() {
        "class".to_string()
    } else {
        stem
    }
}

/// Class `class`'s map normalised to 0–1, colour-mapped, one pixel per cell. Cells at 0
/// (no evidence, or no tile inferred there) are fully transparent; all others are
/// opaque, and the viewer that overlays the image chooses the layer's opacity.
///
/// # Panics
/// If `class` is not below `heatmaps.maps.len()` (as [`Heatmaps::normalised`]).
pub fn heatmap_image(heatmaps: &Heatmaps, class: usize) -> RgbaImage {
    let values = heatmaps.normalised(class);
    let width = heatmaps.width as usize;
    RgbaImage::from_fn(heatmaps.width, heatmaps.height, |x, y| {
        match values.get(y as usize * width + x as usize).copied() {
            // `v > 0.0` is also false for NaN, which thus stays transparent.
            Some(v) if v > 0.0 => {
                let [r, g, b] = colormap(v.min(1.0));
                Rgba([r, g, b, 255])
            }
            _ => Rgba([0, 0, 0, 0]),
        }
    })
}

/// The stem `<stem>` of each class's heatmap file `heatmap_<stem>.png`, in class order
/// (also the `{class}` of the API's `/heatmap/{class}.png`). Names are sanitised with
/// [`sanitise_file_stem`]; two classes that would land on the same file (also on a
/// case-insensitive file system) get `_<class index>` appended to the later one.
pub fn heatmap_file_stems(classes: &[String]) -> Vec<String> {
    let mut used = HashSet::new();
    classes
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let mut stem = sanitise_file_stem(name);
            while !used.insert(stem.to_ascii_lowercase()) {
                stem = format!("{stem}_{c}");
            }
            stem
        })
        .collect()
}

/// Writes `<prefix>_<class>.png` (`heatmap_…` for Grad-CAM, `attention_…` for the AT+
/// maps) into `dir` (created if missing) for every class, in class order, and returns the
/// paths; names as [`heatmap_file_stems`].
pub fn write_heatmaps(
    dir: &Path,
    heatmaps: &Heatmaps,
    prefix: &str,
) -> Result<Vec<PathBuf>, RenderError> {
    if heatmaps.width == 0 || heatmaps.height == 0 {
        return Err(RenderError::BadInput("the heatmap canvas is empty".into()));
    }
    if heatmaps.maps.len() < heatmaps.classes.len() {
        return Err(RenderError::BadInput(format!(
            "{} classes but {} maps",
            heatmaps.classes.len(),
            heatmaps.maps.len()
        )));
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut paths = Vec::with_capacity(heatmaps.classes.len());
    for (c, stem) in heatmap_file_stems(&heatmaps.classes).iter().enumerate() {
        let path = dir.join(format!("{prefix}_{stem}.png"));
        let heatmap = heatmap_image(heatmaps, c);
        save_png(
            heatmap.as_raw(),
            heatmap.dimensions(),
            image::ExtendedColorType::Rgba8,
            &path,
        )?;
        paths.push(path);
    }
    Ok(paths)
}

/// For each output pixel along one axis, the heatmap cell under the pixel's centre, or
/// `None` past the canvas. Nearest rather than bilinear: a cell is one CAM value of one
/// tile, and interpolating would bleed colour into tiles that were never inferred.
fn cell_lookup(pixels: u32, cells_per_pixel: f64, cells: u32) -> Vec<Option<usize>> {
    (0..pixels)
        .map(|p| {
            let c = ((f64::from(p) + 0.5) * cells_per_pixel).floor();
            (c >= 0.0 && c < f64::from(cells)).then_some(c as usize)
        })
        .collect()
}

/// The thumbnail with class `class`'s normalised map blended in and a legend appended
/// below. The output is `max(thumbnail width, legend width)` wide (white to the right
/// of a narrow thumbnail) and `thumbnail height + legend height` tall.
///
/// `thumbnail_downsample` is level-0 pixels per thumbnail pixel, so one cell spans
/// `heatmaps.cell_side / thumbnail_downsample` thumbnail pixels, with cell (0, 0)
/// starting at thumbnail (0, 0). A cell's colour is blended with opacity
/// `value · MAX_OVERLAY_ALPHA`; cells at 0 leave the thumbnail untouched.
pub fn overlay_image(
    thumbnail: &RgbImage,
    thumbnail_downsample: f64,
    heatmaps: &Heatmaps,
    class: usize,
    caption: &[String],
) -> Result<RgbImage, RenderError> {
    let Some(class_name) = heatmaps.classes.get(class) else {
        return Err(RenderError::BadInput(format!(
            "class index {class} out of range ({} classes)",
            heatmaps.classes.len()
        )));
    };
    if class >= heatmaps.maps.len() {
        return Err(RenderError::BadInput(format!(
            "class index {class} has no map ({} maps)",
            heatmaps.maps.len()
        )));
    }
    if !(thumbnail_downsample.is_finite() && thumbnail_downsample > 0.0) {
        return Err(RenderError::BadInput(format!(
            "thumbnail downsample must be positive, got {thumbnail_downsample}"
        )));
    }
    if !(heatmaps.cell_side.is_finite() && heatmaps.cell_side > 0.0) {
        return Err(RenderError::BadInput(format!(
            "heatmap cell side must be positive, got {}",
            heatmaps.cell_side
        )));
    }

    let title = format!("Grad-CAM: {class_name}");
    let (legend_w, legend_h) = legend_size(&title, caption);
    let (tw, th) = thumbnail.dimensions();
    let mut out = RgbImage::from_pixel(tw.max(legend_w), th + legend_h, WHITE);
    image::imageops::replace(&mut out, thumbnail, 0, 0);

    // Colour and opacity per cell, computed once rather than per thumbnail pixel.
    let values = heatmaps.normalised(class);
    let blend: Vec<Option<([f32; 3], f32)>> = values
        .iter()
        .map(|&v| {
            (v > 0.0).then(|| {
                let v = v.min(1.0);
                (colormap(v).map(f32::from), v * MAX_OVERLAY_ALPHA)
            })
        })
        .collect();
    let cells_per_pixel = thumbnail_downsample / heatmaps.cell_side;
    let cols = cell_lookup(tw, cells_per_pixel, heatmaps.width);
    let rows = cell_lookup(th, cells_per_pixel, heatmaps.height);
    for (y, row) in rows.iter().enumerate() {
        let Some(row) = row else { continue };
        for (x, col) in cols.iter().enumerate() {
            let Some(col) = col else { continue };
            let i = row * heatmaps.width as usize + col;
            let Some(Some((colour, alpha))) = blend.get(i) else {
                continue;
            };
            let px = out.get_pixel_mut(x as u32, y as u32);
            for (channel, c) in px.0.iter_mut().zip(colour) {
                *channel = ((1.0 - alpha) * f32::from(*channel) + alpha * c).round() as u8;
            }
        }
    }

    let swatch = Rgb(class_colour(class_name, class));
    draw_legend(&mut out, 0, th, &title, swatch, caption);
    Ok(out)
}

/// [`overlay_image`], written to `path` as PNG whatever its extension.
pub fn write_overlay(
    path: &Path,
    thumbnail: &RgbImage,
    thumbnail_downsample: f64,
    heatmaps: &Heatmaps,
    class: usize,
    caption: &[String],
) -> Result<(), RenderError> {
    let overlay = overlay_image(thumbnail, thumbnail_downsample, heatmaps, class, caption)?;
    save_png(
        overlay.as_raw(),
        overlay.dimensions(),
        image::ExtendedColorType::Rgb8,
        path,
    )
}

/// Writes `image` as PNG with fast compression. The default level took most of the
/// write stage (itself a fifth of a 1.25× Student's time per slide), for files ~10–20%
/// smaller.
fn save_png(
    pixels: &[u8],
    (width, height): (u32, u32),
    colour: image::ExtendedColorType,
    path: &Path,
) -> Result<(), RenderError> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let file = std::fs::File::create(path).map_err(io_error(path))?;
    let mut writer = std::io::BufWriter::new(file);
    PngEncoder::new_with_quality(&mut writer, CompressionType::Fast, FilterType::Adaptive)
        .write_image(pixels, width, height, colour)
        .map_err(image_error(path))?;
    std::io::Write::flush(&mut writer).map_err(io_error(path))
}

// ---------------------------------------------------------------------------------
// Legend

/// The glyph for `c`: ASCII, then Latin-1 (µ, é, ± …), then Greek; anything else is
/// drawn as `?` so that a caption never silently loses a character.
fn glyph(c: char) -> [u8; 8] {
    font8x8::BASIC_FONTS
        .get(c)
        .or_else(|| font8x8::LATIN_FONTS.get(c))
        .or_else(|| font8x8::GREEK_FONTS.get(c))
        .or_else(|| font8x8::BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

fn text_width(text: &str) -> u32 {
    u32::try_from(text.chars().count())
        .unwrap_or(u32::MAX)
        .saturating_mul(GLYPH)
}

/// Fills a rectangle, clipped to the image.
fn fill_rect(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, colour: Rgb<u8>) {
    let x1 = x.saturating_add(w).min(img.width());
    let y1 = y.saturating_add(h).min(img.height());
    for yy in y.min(y1)..y1 {
        for xx in x.min(x1)..x1 {
            img.put_pixel(xx, yy, colour);
        }
    }
}

/// Draws `text` with its top-left corner at (`x`, `y`), clipped to the image. In
/// font8x8 each byte is one row, top first, and bit 0 is the leftmost pixel.
fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, colour: Rgb<u8>) {
    let mut gx = x;
    for c in text.chars() {
        for (row, bits) in (0u32..).zip(glyph(c)) {
            for col in 0..8u32 {
                if bits & (1 << col) != 0 {
                    fill_rect(
                        img,
                        gx.saturating_add(col * FONT_SCALE),
                        y.saturating_add(row * FONT_SCALE),
                        FONT_SCALE,
                        FONT_SCALE,
                        colour,
                    );
                }
            }
        }
        gx = gx.saturating_add(GLYPH);
    }
}

/// Rows: [swatch] title; "low" [colour bar] "high"; one row per caption line.
fn legend_size(title: &str, caption: &[String]) -> (u32, u32) {
    let title_w = GLYPH + GAP + text_width(title);
    let bar_w = text_width("low") + GAP + BAR_WIDTH + GAP + text_width("high");
    let content_w = caption
        .iter()
        .map(|line| text_width(line))
        .fold(title_w.max(bar_w), u32::max);
    let rows = 2 + u32::try_from(caption.len()).unwrap_or(u32::MAX);
    (
        content_w.saturating_add(2 * PAD),
        rows.saturating_mul(LINE).saturating_add(2 * PAD),
    )
}

fn draw_legend(
    img: &mut RgbImage,
    x0: u32,
    y0: u32,
    title: &str,
    swatch: Rgb<u8>,
    caption: &[String],
) {
    let (x, mut y) = (x0 + PAD, y0 + PAD);

    // The class's own colour (as in the GeoJSON) ties the overlay to the tile export.
    fill_rect(img, x, y, GLYPH, GLYPH, BAR_FRAME);
    fill_rect(img, x + 1, y + 1, GLYPH - 2, GLYPH - 2, swatch);
    draw_text(img, x + GLYPH + GAP, y, title, INK);
    y += LINE;

    draw_text(img, x, y, "low", INK);
    let bar_x = x + text_width("low") + GAP;
    // A one-pixel frame keeps the dark low end of the scale visible on white.
    fill_rect(img, bar_x - 1, y - 1, BAR_WIDTH + 2, GLYPH + 2, BAR_FRAME);
    for i in 0..BAR_WIDTH {
        let v = i as f32 / (BAR_WIDTH - 1) as f32;
        fill_rect(img, bar_x + i, y, 1, GLYPH, Rgb(colormap(v)));
    }
    draw_text(img, bar_x + BAR_WIDTH + GAP, y, "high", INK);
    y += LINE;

    for line in caption {
        draw_text(img, x, y, line, INK);
        y += LINE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grade::tiling::TileGrid;
    use crate::grade::tiling::TileSpec;
    use crate::model::engine::TileOutput;

    fn classes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn tile(col: u32, row: u32, side: f64) -> TileSpec {
        TileSpec {
            col,
            row,
            x: f64::from(col) * side,
            y: f64::from(row) * side,
            side,
            tissue_fraction: 1.0,
        }
    }

    /// 2 × 2 grid of 100 px tiles with 2 × 2 CAM cells (cell side 50, canvas 4 × 4
    /// cells). Only tile (0, 0) is inferred; class 1's CAM there is hot in its top-left
    /// cell only.
    fn one_tile_heatmaps() -> Heatmaps {
        let grid = TileGrid {
            side: 100.0,
            cols: 2,
            rows: 2,
            tiles: vec![],
        };
        let mut maps = Heatmaps::new(&classes(&["NC", "G4"]), &grid, [2, 2]);
        let out = TileOutput {
            logits: vec![0.0, 1.0],
            probabilities: vec![0.2, 0.8],
            cam: vec![0.5, 0.5, 0.5, 0.5, 1.0, 0.0, 0.0, 0.0],
            attention: vec![],
        };
        maps.add(&tile(0, 0, 100.0), &out.probabilities, &out.cam, [2, 2]);
        maps
    }

    #[test]
    fn heatmap_is_one_pixel_per_cell_and_transparent_where_zero() {
        let maps = one_tile_heatmaps();
        let img = heatmap_image(&maps, 1);
        assert_eq!(img.dimensions(), (maps.width, maps.height));
        assert_eq!(img.dimensions(), (4, 4));
        // The hot cell: opaque, the top of the colour map.
        assert_eq!(img.get_pixel(0, 0).0, {
            let [r, g, b] = colormap(1.0);
            [r, g, b, 255]
        });
        // A zero cell inside the inferred tile and cells of tiles never inferred.
        for (x, y) in [(1, 0), (0, 1), (1, 1), (2, 0), (3, 3), (0, 3)] {
            assert_eq!(img.get_pixel(x, y).0[3], 0, "cell ({x}, {y})");
        }
        // Class 0 is 0.5 · 0.2 over the whole tile: normalised to 1 everywhere there.
        let img0 = heatmap_image(&maps, 0);
        assert!((0..2).all(|x| (0..2).all(|y| img0.get_pixel(x, y).0[3] == 255)));
        assert_eq!(img0.get_pixel(2, 2).0[3], 0);
    }

    #[test]
    fn heatmap_files_have_safe_unique_names() {
        let dir = tempfile::tempdir().unwrap();
        let grid = TileGrid {
            side: 10.0,
            cols: 1,
            rows: 1,
            tiles: vec![],
        };
        let names = classes(&["G4", "../x y", "g4", ""]);
        let maps = Heatmaps::new(&names, &grid, [2, 3]);
        let paths = write_heatmaps(&dir.path().join("maps"), &maps, "heatmap").unwrap();
        let files: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files,
            [
                "heatmap_G4.png",
                "heatmap____x_y.png",
                "heatmap_g4_2.png",
                "heatmap_class.png"
            ]
        );
        for p in &paths {
            assert_eq!(p.parent().unwrap(), dir.path().join("maps"));
            let img = image::open(p).unwrap().to_rgba8();
            assert_eq!(img.dimensions(), (3, 2));
            // All-zero maps are fully transparent.
            assert!(img.pixels().all(|px| px.0[3] == 0));
        }
    }

    #[test]
    fn cells_map_to_thumbnail_pixels_from_the_origin() {
        // 2.5 thumbnail px per cell: pixel centres 0.5, 1.5 → cell 0; 2.5 … 4.5 → cell 1.
        let cols = cell_lookup(6, 1.0 / 2.5, 2);
        assert_eq!(cols, [Some(0), Some(0), Some(1), Some(1), Some(1), None]);
    }

    #[test]
    fn overlay_blends_only_under_hot_cells_and_appends_a_legend() {
        let maps = one_tile_heatmaps();
        // The 200 × 200 level-0 slide at downsample 10: 20 × 20 px, 5 px per cell.
        let thumb = RgbImage::from_fn(20, 20, |x, y| Rgb([200, (x * 10) as u8, (y * 10) as u8]));
        let caption = classes(&["Gleason 3+4=7  ISUP 2", "tumour 23.4%", "µm/px 8.0"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overlay.png");
        write_overlay(&path, &thumb, 10.0, &maps, 1, &caption).unwrap();
        let out = image::open(&path).unwrap().to_rgb8();

        let (lw, lh) = legend_size("Grad-CAM: G4", &caption);
        assert_eq!(lh, 2 * PAD + 5 * LINE);
        assert_eq!(out.dimensions(), (20u32.max(lw), 20 + lh));

        // Under the hot cell (thumbnail 0..5 × 0..5): blended at the full cap.
        let hot = colormap(1.0);
        for (x, y) in [(0, 0), (4, 4), (2, 3)] {
            let before = thumb.get_pixel(x, y).0;
            let want: Vec<u8> = (0..3)
                .map(|k| {
                    ((1.0 - MAX_OVERLAY_ALPHA) * f32::from(before[k])
                        + MAX_OVERLAY_ALPHA * f32::from(hot[k]))
                    .round() as u8
                })
                .collect();
            assert_eq!(out.get_pixel(x, y).0.to_vec(), want, "pixel ({x}, {y})");
            assert_ne!(out.get_pixel(x, y), thumb.get_pixel(x, y));
        }
        // The zero cells of the inferred tile and the tiles never inferred: untouched.
        for (x, y) in [(5, 0), (9, 9), (0, 5), (12, 3), (19, 19), (3, 15)] {
            assert_eq!(out.get_pixel(x, y), thumb.get_pixel(x, y), "({x}, {y})");
        }
        // Right of the narrow thumbnail: white padding.
        assert_eq!(*out.get_pixel(25, 10), WHITE);
        // The legend has text and the colour bar's hot end.
        let legend = image::imageops::crop_imm(&out, 0, 20, out.width(), lh).to_image();
        assert!(legend.pixels().any(|p| *p == INK));
        assert!(legend.pixels().any(|p| p.0 == hot));
        assert!(legend.pixels().any(|p| p.0 == class_colour("G4", 1)));
    }

    #[test]
    fn overlay_rejects_bad_input() {
        let maps = one_tile_heatmaps();
        let thumb = RgbImage::new(4, 4);
        let err = overlay_image(&thumb, 10.0, &maps, 2, &[]).unwrap_err();
        assert_eq!(err.kind(), "bad_input");
        let err = overlay_image(&thumb, 0.0, &maps, 0, &[]).unwrap_err();
        assert_eq!(err.kind(), "bad_input");
    }

    #[test]
    fn class_colours_are_fixed_for_gleason_and_distinct_otherwise() {
        assert_eq!(class_colour("NC", 7), [44, 160, 44]);
        assert_eq!(class_colour("g5", 0), [214, 39, 40]);
        let fixed: Vec<[u8; 3]> = ["NC", "G3", "G4", "G5"]
            .iter()
            .map(|n| class_colour(n, 0))
            .collect();
        let others: HashSet<[u8; 3]> = (0..6).map(|i| class_colour("stroma", i)).collect();
        assert_eq!(others.len(), 6);
        assert!(others.iter().all(|c| !fixed.contains(c)));
    }
}
