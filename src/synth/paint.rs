//! The H&E renderer: tissue of a given class at any position and resolution.
//!
//! How a pixel is made:
//! 1. The pixel is split into k×k point samples, k = ⌈mpp / 0.5 µm⌉, so samples are never
//!    more than [`MAX_SAMPLE_SPACING_UM`] apart. Samples sit at fixed fractions of the
//!    pixel, so a pixel of 8 µm and the 64 pixels of 1 µm that tile it use *the same*
//!    sample points: area-averaging a 1 µm/px render to 8 µm/px reproduces the 8 µm/px
//!    render up to rounding. (At 0.25 µm/px, k = 1 and the samples are 0.25 µm apart.)
//! 2. Each sample asks the morphology (glands, nuclei, stroma; see [`super::appearance`])
//!    how much haematoxylin and eosin sits there, as optical densities.
//! 3. Beer–Lambert turns densities into transmitted light per channel, with stain
//!    vectors that vary smoothly over the slide (see [`Stain`]), and the pixel is the
//!    mean transmitted light of its samples: averaging light, not densities, is what a
//!    camera (and an area-averaging resize) does.
//!
//! Everything is a pure function of `(seed, class, position)`: random numbers come from
//! hashing lattice cells ([`super::rng`]), and the small caches below only remember the
//! last lattice cells looked up.

use image::{Rgb, RgbImage};

use super::appearance::{
    ARCHITECTURES, BLOCKY_EXTENT, MORPH, Morph, NUC_JITTER, SECOND_LATTICE, STROMA_CELL, UNIT_CELL,
    UNIT_PROB, UNIT_PROB2,
};
use super::class::Class;
use super::rng::{
    CellTracker, Noise, Noise1, cell_hash, exp_neg4, layer_key, lerp, rehash, unit16,
};

/// Colour of empty glass (outside the tissue). Slightly off-white and grey, as a scanner
/// sees it; its saturation is far below what [`crate::grade::tissue`] counts as tissue.
pub const GLASS: [u8; 3] = [242, 242, 240];

/// Largest distance between two point samples, in µm. Nucleoli (~1.4 µm) and chromatin
/// grains (~1 µm) are the finest structures, so 0.5 µm resolves everything drawn.
pub const MAX_SAMPLE_SPACING_UM: f64 = 0.5;

/// Haematoxylin optical density per unit stain, (R, G, B): Ruifrok & Johnston's vector.
const H_OD: [f32; 3] = [0.65, 0.70, 0.29];
/// Eosin: a pink that absorbs green most and some blue.
const E_OD: [f32; 3] = [0.10, 0.88, 0.45];

/// Amplitude of the domain warp that makes every shape irregular (µm).
const WARP_UM: f64 = 6.0;

/// How much the density of glands (and sheets) drifts over the slide: a unit's
/// probability is scaled by 1 ± this.
const DENSITY_SWING: f64 = 0.5;

// Random layers. Per-class layers add the class index.
const L_WARP: u64 = 1;
/// Fibre streaks and offsets of direction k: `L_FIBRE + 2k` and `L_FIBRE + 2k + 1`.
const L_FIBRE: u64 = 100;
const L_ROUGH: u64 = 4;
const L_CHROMATIN: u64 = 5;
const L_BASAL: u64 = 6;
const L_STAIN_A: u64 = 7;
const L_STAIN_B: u64 = 8;
const L_STAIN_SEED: u64 = 9;
const L_SHEET_A: u64 = 10;
const L_SHEET_B: u64 = 11;
const L_DENSITY: u64 = 12;
const L_UNIT: u64 = 16;
const L_UNIT2: u64 = 20;
const L_NUC: u64 = 32;
const L_CRIB: u64 = 48;
const L_STROMA: u64 = 64;

/// (haematoxylin, eosin) of the non-cellular parts.
const EMPTY_LUMEN: [f32; 2] = [0.0, 0.025];
const SECRETION: [f32; 2] = [0.04, 0.21];
const CLEFT: [f32; 2] = [0.0, 0.015];

/// Point samples per pixel along each axis at `mpp` µm/px.
pub(crate) fn samples_per_axis(mpp: f64) -> usize {
    // The small slack keeps e.g. 1.0 / 0.5 at exactly 2 despite float noise.
    ((mpp / MAX_SAMPLE_SPACING_UM) - 1e-9).ceil().max(1.0) as usize
}

/// Renders `width`×`height` pixels at `mpp` µm/px whose top-left corner is at
/// `origin_um`, asking `label` which class (or glass, `None`) lies at each sample point.
/// Panics unless `mpp` is finite and positive.
pub(crate) fn render_with<L>(
    mut label: L,
    origin_um: (f64, f64),
    width: u32,
    height: u32,
    mpp: f64,
    seed: u64,
) -> RgbImage
where
    L: FnMut(f64, f64) -> Option<Class>,
{
    assert!(
        mpp.is_finite() && mpp > 0.0,
        "µm per pixel must be finite and > 0, got {mpp}"
    );
    let k = samples_per_axis(mpp);
    let inv_n = 1.0 / (k * k) as f32;
    let glass = GLASS.map(|c| f32::from(c) / 255.0);
    let mut sampler = Sampler::new(seed);
    let mut stains = StainField::new(seed);
    let w = width as usize;
    let mut acc = vec![[0f32; 3]; w];
    let mut img = RgbImage::new(width, height);
    // Sample offsets inside a pixel, in pixels.
    let offsets: Vec<f64> = (0..k).map(|s| (s as f64 + 0.5) / k as f64).collect();
    for py in 0..height {
        acc.fill([0.0; 3]);
        // Walk sample rows, not pixels, so consecutive samples are neighbours and the
        // lattice caches hit.
        for &oy in &offsets {
            let y = origin_um.1 + (f64::from(py) + oy) * mpp;
            for (px, a) in acc.iter_mut().enumerate() {
                for &ox in &offsets {
                    let x = origin_um.0 + (px as f64 + ox) * mpp;
                    let t = match label(x, y) {
                        None => glass,
                        Some(class) => {
                            let [hd, ed] = sampler.tissue(class, x, y);
                            stains.at(x, y).transmit(hd, ed)
                        }
                    };
                    a[0] += t[0];
                    a[1] += t[1];
                    a[2] += t[2];
                }
            }
        }
        for (px, a) in acc.iter().enumerate() {
            let to_u8 = |v: f32| (v * inv_n * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
            img.put_pixel(px as u32, py, Rgb([to_u8(a[0]), to_u8(a[1]), to_u8(a[2])]));
        }
    }
    img
}

/// Stain vectors at one place: how much light each channel loses per unit of
/// haematoxylin and of eosin, plus a little background density.
#[derive(Debug, Clone, Copy)]
struct Stain {
    h: [f32; 3],
    e: [f32; 3],
    bg: f32,
}

impl Stain {
    /// Transmitted light (0–1) per channel through densities `h` and `e` (Beer–Lambert).
    #[inline]
    fn transmit(&self, h: f32, e: f32) -> [f32; 3] {
        let od = |c: usize| h * self.h[c] + e * self.e[c] + self.bg;
        let [r, g, b, _] = exp_neg4([od(0), od(1), od(2), 0.0]);
        [r, g, b]
    }
}

/// Stain variation: a per-seed offset (one slide's staining run) plus a field that
/// drifts over ~1.5 mm (uneven staining and thickness within a slide). Intensities vary
/// by up to about ×0.55–1.8 (haematoxylin) and ×0.6–1.65 (eosin), and the haematoxylin
/// hue between redder and bluer purple: more than the classes differ in overall colour,
/// so colour alone is weak evidence. Training patches drawn ≥ 3 mm apart, or from
/// different seeds, get independent stains.
///
/// The field is held constant over [`STAIN_CELL_UM`] squares of a fixed grid: still a
/// pure function of position (so tiles and resolutions agree exactly), but evaluated
/// once per square instead of per sample. From one square to the next the stain
/// intensity changes by at most ~0.5% (the field's steepest slope), which moves a pixel
/// by at most about one grey level: invisible, and far below JPEG's error.
struct StainField {
    a: Noise,
    b: Noise,
    global: [f32; 4],
    cell: CellTracker,
    stain: Stain,
}

/// Side of the squares over which the stain is constant, µm.
const STAIN_CELL_UM: f64 = 8.0;

impl StainField {
    fn new(seed: u64) -> StainField {
        let g = layer_key(seed, L_STAIN_SEED);
        let mut field = StainField {
            a: Noise::new(seed, L_STAIN_A, 1500.0),
            b: Noise::new(seed, L_STAIN_B, 1500.0),
            global: [0, 1, 2, 3].map(|k| (2.0 * unit16(g, k) - 1.0) as f32),
            cell: CellTracker::new(),
            stain: Stain {
                h: H_OD,
                e: E_OD,
                bg: 0.0,
            },
        };
        field.stain = field.compute(0.5 * STAIN_CELL_UM, 0.5 * STAIN_CELL_UM);
        field
    }

    /// The stain at `(x, y)` µm (that of its grid square's centre).
    #[inline]
    fn at(&mut self, x: f64, y: f64) -> Stain {
        let inv = 1.0 / STAIN_CELL_UM;
        if self.cell.locate(x * inv, y * inv) {
            let (i, j) = self.cell.ij;
            self.stain = self.compute(
                (i as f64 + 0.5) * STAIN_CELL_UM,
                (j as f64 + 0.5) * STAIN_CELL_UM,
            );
        }
        self.stain
    }

    fn compute(&mut self, x: f64, y: f64) -> Stain {
        let [n0, n1] = self.a.eval2(x, y);
        let [n2, n3] = self.b.eval2(x, y);
        let g = self.global;
        let sh = (0.3 * n0 + 0.3 * g[0]).exp();
        let se = (0.25 * n1 + 0.25 * g[1]).exp();
        // Haematoxylin hue: positive = bluer (less blue absorbed, more red absorbed).
        let hue = 0.5 * n2 + 0.5 * g[2];
        // Eosin hue: positive = more magenta.
        let ehue = 0.5 * n3 + 0.5 * g[3];
        Stain {
            h: [
                (H_OD[0] + 0.14 * hue) * sh,
                H_OD[1] * sh,
                (H_OD[2] - 0.12 * hue) * sh,
            ],
            e: [
                (E_OD[0] - 0.04 * ehue) * se,
                E_OD[1] * se,
                (E_OD[2] - 0.10 * ehue) * se,
            ],
            bg: 0.02 + 0.012 * n3,
        }
    }
}

/// Stand-in unit for solid sheets: no lumen, no basal layer, no holes.
const SHEET: Unit = Unit {
    exists: true,
    cx: 0.0,
    cy: 0.0,
    cos: 1.0,
    sin: 0.0,
    inv_a: 0.0,
    inv_b: 0.0,
    blocky: false,
    lumen: 0.0,
    secretion: false,
    crib: 0.0,
    necrotic: false,
    basal_from: f64::INFINITY,
    outer: 1.0,
    tone: 1.0,
};

/// One gland / nest / sheet: an ellipse or rounded square in its lattice cell.
#[derive(Debug, Clone, Copy, Default)]
struct Unit {
    exists: bool,
    cx: f64,
    cy: f64,
    cos: f64,
    sin: f64,
    inv_a: f64,
    inv_b: f64,
    blocky: bool,
    /// Lumen radius / unit radius (0 = none).
    lumen: f64,
    secretion: bool,
    /// Cribriform hole density of this unit.
    crib: f64,
    /// The lumen is comedonecrosis.
    necrotic: bool,
    /// Normalised distance where the basal layer starts (> 1 = none).
    basal_from: f64,
    /// Outer edge of the retraction cleft (normalised distance).
    outer: f64,
    /// Per-unit staining variation of the cytoplasm.
    tone: f32,
}

impl Unit {
    /// The unit of cell `(i, j)` of a lattice of spacing `cell` where a cell holds one
    /// with probability `prob`.
    fn generate(m: &Morph, cell: f64, prob: f64, key: u64, i: i64, j: i64) -> Unit {
        let h = cell_hash(key, i, j);
        if unit16(h, 0) >= prob {
            return Unit::default();
        }
        let (h2, h3) = (rehash(h), rehash(rehash(h)));
        let h4 = rehash(h3);
        // Which architecture: the class sets the mix, the architecture the shape.
        let pick = unit16(h4, 0);
        let mut kind = 0;
        let mut cumulative = m.arch[0];
        while kind < 2 && pick >= cumulative {
            kind += 1;
            cumulative += m.arch[kind];
        }
        let arch = &ARCHITECTURES[kind];
        let blocky = unit16(h2, 0) < arch.blocky_prob;
        let a = cell * lerp(arch.radius.0, arch.radius.1, unit16(h, 1));
        let aspect = lerp(arch.aspect.0, arch.aspect.1, unit16(h, 2));
        let extent = a * if blocky { BLOCKY_EXTENT } else { 1.0 } * (1.0 + m.retraction);
        // Jitter the centre as far as the cell allows, so the unit (and its cleft) stays
        // inside its own cell and one lookup per sample suffices.
        let slack = (0.5 * cell - extent).max(0.0);
        let cx = (i as f64 + 0.5) * cell + slack * (2.0 * unit16(h3, 0) - 1.0);
        let cy = (j as f64 + 0.5) * cell + slack * (2.0 * unit16(h3, 1) - 1.0);
        let angle = std::f64::consts::PI * unit16(h, 3);
        let (sin, cos) = angle.sin_cos();
        let solid = arch.lumen.1 == 0.0;
        Unit {
            exists: true,
            cx,
            cy,
            cos,
            sin,
            inv_a: 1.0 / a,
            inv_b: aspect / a,
            blocky,
            lumen: m.lumen_scale * lerp(arch.lumen.0, arch.lumen.1, unit16(h2, 1)),
            secretion: unit16(h2, 2) < m.secretion_prob,
            // Holes only in solid nests: glands have their lumen.
            crib: if solid {
                lerp(m.crib_density.0, m.crib_density.1, unit16(h2, 3))
            } else {
                0.0
            },
            necrotic: unit16(h4, 1) < m.comedo_prob,
            // Basal cells are ~2.5 µm thick, measured along the minor axis.
            basal_from: if m.basal_layer {
                1.0 - 2.5 * aspect / a
            } else {
                f64::INFINITY
            },
            outer: 1.0 + m.retraction,
            tone: (0.85 + 0.3 * unit16(h3, 2)) as f32,
        }
    }

    /// Squared normalised distance from the centre: < 1 inside. (Squared, so that the
    /// many samples outside any unit need no square root.)
    #[inline]
    fn distance2(&self, x: f64, y: f64) -> f64 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.cos + dy * self.sin) * self.inv_a;
        let v = (dy * self.cos - dx * self.sin) * self.inv_b;
        let (u2, v2) = (u * u, v * v);
        if self.blocky {
            (u2 * u2 + v2 * v2).sqrt()
        } else {
            u2 + v2
        }
    }
}

/// A round or elliptic blob on a small lattice: a nucleus, a stromal cell or a hole.
#[derive(Debug, Clone, Copy)]
struct Blob {
    /// Random number left for decisions made at lookup time (a cribriform hole's
    /// density depends on its unit).
    draw: f64,
    /// Centre. NaN for an empty cell: every distance test then fails without a branch,
    /// which matters because whether a cell is empty is random, hence unpredictable.
    cx: f64,
    cy: f64,
    /// Orientation (unit vector) of the major axis.
    c: f64,
    s: f64,
    inv_a: f64,
    inv_b: f64,
    /// Squared normalised radius of a pale cytoplasm halo around the nucleus (0 = none).
    halo2: f64,
    kind: BlobKind,
    tone: f32,
    /// Centre of the nucleolus; NaN when there is none.
    nucleolus: (f64, f64),
}

/// What a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobKind {
    /// An epithelial nucleus, or a cribriform hole.
    Nucleus,
    /// Stroma: a spindle nucleus along the fibres.
    Fibroblast,
    /// Stroma: a small, round, very dark nucleus.
    Lymphocyte,
    /// Stroma: an infiltrating tumour cell (pattern 5), vesicular nucleus in a pale halo.
    TumourCell,
}

impl Blob {
    /// A blob of equivalent radius in `radius` and axis ratio up to `aspect` in cell
    /// `(i, j)` of a lattice of spacing `cell`.
    fn generate(
        key: u64,
        i: i64,
        j: i64,
        cell: f64,
        radius: (f64, f64),
        aspect: f64,
        nucleolus_prob: f64,
    ) -> Blob {
        let h = cell_hash(key, i, j);
        let h2 = rehash(h);
        let cx = (i as f64 + 0.5 + NUC_JITTER * (2.0 * unit16(h, 1) - 1.0)) * cell;
        let cy = (j as f64 + 0.5 + NUC_JITTER * (2.0 * unit16(h, 2) - 1.0)) * cell;
        let r = lerp(radius.0, radius.1, unit16(h, 3));
        let stretch = (1.0 + (aspect - 1.0) * unit16(h2, 0)).sqrt();
        let (dx, dy) = (2.0 * unit16(h2, 1) - 1.0, 2.0 * unit16(h2, 2) - 1.0);
        let norm = (dx * dx + dy * dy).sqrt().max(1e-6);
        let h3 = rehash(h2);
        let nucleolus = if unit16(h3, 0) < nucleolus_prob {
            (
                cx + 0.35 * r * (2.0 * unit16(h3, 1) - 1.0),
                cy + 0.35 * r * (2.0 * unit16(h3, 2) - 1.0),
            )
        } else {
            (f64::NAN, f64::NAN)
        };
        Blob {
            draw: unit16(h, 0),
            cx,
            cy,
            c: dx / norm,
            s: dy / norm,
            inv_a: 1.0 / (r * stretch),
            inv_b: stretch / r,
            halo2: 0.0,
            kind: BlobKind::Nucleus,
            tone: (0.85 + 0.3 * unit16(h2, 3)) as f32,
            nucleolus,
        }
    }

    /// The same cell, empty.
    fn absent(self) -> Blob {
        Blob {
            cx: f64::NAN,
            cy: f64::NAN,
            halo2: 0.0,
            ..self
        }
    }

    /// Turns a generic blob (radius 4.2 µm, round) of the stromal lattice into the
    /// stromal cell its draw says, given the fibre direction `(c, s)` at its centre.
    fn stromal(self, m: &Morph, (c, s): (f64, f64)) -> Blob {
        let p_fibro = m.fibro_prob;
        let p_lymph = p_fibro + m.lymph_prob;
        let p_tumour = p_lymph + m.single_cell_prob;
        let no_nucleolus = (f64::NAN, f64::NAN);
        if self.draw < p_fibro {
            // Spindle nucleus along the fibres, ~8 × 2.2 µm.
            Blob {
                kind: BlobKind::Fibroblast,
                c,
                s,
                inv_a: 1.0 / 4.0,
                inv_b: 1.0 / 1.1,
                nucleolus: no_nucleolus,
                ..self
            }
        } else if self.draw < p_lymph {
            Blob {
                kind: BlobKind::Lymphocyte,
                inv_a: 1.0 / 2.2,
                inv_b: 1.0 / 2.2,
                nucleolus: no_nucleolus,
                ..self
            }
        } else if self.draw < p_tumour {
            // Nucleus 4.2 µm in radius, cytoplasm out to 6.5 µm.
            Blob {
                kind: BlobKind::TumourCell,
                halo2: (6.5f64 / 4.2).powi(2),
                ..self
            }
        } else {
            self.absent()
        }
    }

    /// Squared normalised distance (< 1 inside) along its own axes.
    #[inline]
    fn distance2(&self, x: f64, y: f64) -> f64 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.c + dy * self.s) * self.inv_a;
        let v = (dy * self.c - dx * self.s) * self.inv_b;
        u * u + v * v
    }
}

/// A direct-mapped cache of blobs by lattice cell: consecutive samples along a row
/// revisit the same few cells, and generating a blob costs several hashes.
struct BlobCache {
    keys: [(u64, i64, i64); 16],
    blobs: [Blob; 16],
}

impl BlobCache {
    fn new() -> BlobCache {
        let empty = Blob {
            draw: 1.0,
            cx: f64::NAN,
            cy: f64::NAN,
            c: 1.0,
            s: 0.0,
            inv_a: 1.0,
            inv_b: 1.0,
            halo2: 0.0,
            kind: BlobKind::Nucleus,
            tone: 1.0,
            nucleolus: (f64::NAN, f64::NAN),
        };
        BlobCache {
            keys: [(0, i64::MIN, i64::MIN); 16],
            blobs: [empty; 16],
        }
    }

    /// The slot holding the blob of cell `(i, j)` of layer `key` (made by `make` on a
    /// miss). The four cells of a 2×2 neighbourhood always land in different slots.
    #[inline]
    fn get(&mut self, key: u64, i: i64, j: i64, make: impl FnOnce() -> Blob) -> usize {
        let slot = ((i & 3) | ((j & 3) << 2)) as usize;
        if self.keys[slot] != (key, i, j) {
            self.keys[slot] = (key, i, j);
            self.blobs[slot] = make();
        }
        slot
    }
}

/// The blobs that can cover a point: those of its own lattice cell and of the three
/// neighbours on the side of the nearer cell borders (see [`NUC_JITTER`]). The set only
/// changes when a point crosses a half-cell line, so it is kept until then.
struct Neighbourhood {
    cache: BlobCache,
    /// Tracks half-cells (lattice coordinates doubled).
    half: CellTracker,
    key: u64,
    slots: [usize; 4],
}

impl Neighbourhood {
    fn new() -> Neighbourhood {
        Neighbourhood {
            cache: BlobCache::new(),
            half: CellTracker::new(),
            key: 0,
            slots: [0; 4],
        }
    }

    /// Cache slots of the four candidate blobs for lattice point `(fx, fy)` of layer
    /// `key`; `make(i, j)` generates the blob of cell `(i, j)`.
    #[inline]
    fn around(
        &mut self,
        key: u64,
        fx: f64,
        fy: f64,
        mut make: impl FnMut(i64, i64) -> Blob,
    ) -> [usize; 4] {
        if self.half.locate(2.0 * fx, 2.0 * fy) || key != self.key {
            self.key = key;
            let (hx, hy) = self.half.ij;
            let (i, j) = (hx.div_euclid(2), hy.div_euclid(2));
            let di = if hx.rem_euclid(2) == 0 { -1 } else { 1 };
            let dj = if hy.rem_euclid(2) == 0 { -1 } else { 1 };
            for (slot, (a, b)) in
                self.slots
                    .iter_mut()
                    .zip([(i, j), (i + di, j), (i, j + dj), (i + di, j + dj)])
            {
                *slot = self.cache.get(key, a, b, || make(a, b));
            }
        }
        self.slots
    }

    #[inline]
    fn blob(&self, slot: usize) -> &Blob {
        &self.cache.blobs[slot]
    }
}

/// Per-render state: the noise fields and lattice caches. Holds no state that changes
/// what is drawn.
struct Sampler {
    warp: Noise,
    /// Fibre streaks and their sideways offsets, one pair per [`FIBRE_DIRECTIONS`].
    fibres: [(Noise1, Noise1); 4],
    rough: Noise,
    chromatin: Noise,
    basal: Noise,
    sheet_a: Noise,
    sheet_b: Noise,
    density: Noise,
    /// Per lattice (first, second), per class.
    unit_keys: [[u64; 4]; 2],
    nuc_keys: [u64; 4],
    crib_keys: [u64; 4],
    stroma_keys: [u64; 4],
    /// 1 / lattice spacing, per class: nuclei, holes.
    inv_nuc_cell: [f64; 4],
    inv_crib_cell: [f64; 4],
    /// Last unit looked up per lattice: its class, cell and the unit.
    unit_cache: [(usize, CellTracker, Unit); 2],
    nuclei: Neighbourhood,
    holes: Neighbourhood,
    stroma_cells: Neighbourhood,
}

impl Sampler {
    fn new(seed: u64) -> Sampler {
        let keys = |base: u64| [0, 1, 2, 3].map(|c| layer_key(seed, base + c));
        Sampler {
            warp: Noise::new(seed, L_WARP, 35.0),
            fibres: [0, 1, 2, 3].map(|k| {
                (
                    Noise1::new(seed, L_FIBRE + 2 * k, 1.8),
                    Noise1::new(seed, L_FIBRE + 2 * k + 1, 25.0),
                )
            }),
            rough: Noise::new(seed, L_ROUGH, 12.0),
            chromatin: Noise::new(seed, L_CHROMATIN, 0.9),
            basal: Noise::new(seed, L_BASAL, 3.0),
            sheet_a: Noise::new(seed, L_SHEET_A, 90.0),
            sheet_b: Noise::new(seed, L_SHEET_B, 35.0),
            density: Noise::new(seed, L_DENSITY, 450.0),
            unit_keys: [keys(L_UNIT), keys(L_UNIT2)],
            nuc_keys: keys(L_NUC),
            crib_keys: keys(L_CRIB),
            stroma_keys: keys(L_STROMA),
            inv_nuc_cell: MORPH.map(|m| 1.0 / m.nuc_cell),
            inv_crib_cell: MORPH.map(|m| {
                if m.crib_cell > 0.0 {
                    1.0 / m.crib_cell
                } else {
                    0.0
                }
            }),
            unit_cache: [(usize::MAX, CellTracker::new(), Unit::default()); 2],
            nuclei: Neighbourhood::new(),
            holes: Neighbourhood::new(),
            stroma_cells: Neighbourhood::new(),
        }
    }

    /// (haematoxylin, eosin) optical densities of `class` tissue at `(x, y)` µm.
    #[inline]
    fn tissue(&mut self, class: Class, x: f64, y: f64) -> [f32; 2] {
        let ci = class.index();
        let m = &MORPH[ci];
        // Warp the plane a little so glands, nuclei and fibres are never perfect shapes.
        let w = self.warp.eval2(x, y);
        let (qx, qy) = (x + WARP_UM * f64::from(w[0]), y + WARP_UM * f64::from(w[1]));

        // Sheets first: nests drawn over a sheet would cut it with their clefts.
        if m.sheet_threshold.is_finite() {
            let n = 0.67 * self.sheet_a.eval(qx, qy) + 0.33 * self.sheet_b.eval(qx, qy);
            let threshold =
                m.sheet_threshold - 0.2 * DENSITY_SWING as f32 * self.density.eval(qx, qy);
            if n > threshold + m.necrosis {
                return self.necrosis(qx, qy);
            }
            if n > threshold {
                let sheet = Unit {
                    crib: 0.5 * (m.crib_density.0 + m.crib_density.1),
                    ..SHEET
                };
                return self.epithelium(ci, m, &sheet, 0.5, qx, qy);
            }
            if n > threshold - 0.03 && self.rough.eval(qx, qy) > 0.0 {
                return CLEFT;
            }
        }
        for lattice in 0..2 {
            let unit = self.unit(ci, m, lattice, qx, qy);
            if !unit.exists {
                continue;
            }
            let d2 = unit.distance2(qx, qy);
            if d2 < 1.0 {
                let unit = *unit;
                return self.epithelium(ci, m, &unit, d2.sqrt(), qx, qy);
            }
            // Retraction clefts open along part of the border only.
            if d2 < unit.outer * unit.outer && self.rough.eval(qx, qy) > -0.2 {
                return CLEFT;
            }
        }
        self.stroma(ci, m, qx, qy, w)
    }

    /// The unit containing `(x, y)` in lattice 0 or 1, if that cell has one (check
    /// `exists`).
    #[inline]
    fn unit(&mut self, ci: usize, m: &Morph, lattice: usize, x: f64, y: f64) -> &Unit {
        let (cell, prob) = if lattice == 0 {
            (UNIT_CELL, UNIT_PROB)
        } else {
            (UNIT_CELL * SECOND_LATTICE, UNIT_PROB2)
        };
        let inv = 1.0 / cell;
        let moved = self.unit_cache[lattice].1.locate(x * inv, y * inv);
        if moved || self.unit_cache[lattice].0 != ci {
            let (i, j) = self.unit_cache[lattice].1.ij;
            // Gland density drifts over ~0.5 mm, the same way in every class, so the
            // share of stroma in a patch varies within a class as much as between them.
            let density = self
                .density
                .eval((i as f64 + 0.5) * cell, (j as f64 + 0.5) * cell);
            let prob = (prob * (1.0 + DENSITY_SWING * f64::from(density))).clamp(0.0, 1.0);
            let unit = Unit::generate(m, cell, prob, self.unit_keys[lattice][ci], i, j);
            self.unit_cache[lattice].0 = ci;
            self.unit_cache[lattice].2 = unit;
        }
        &self.unit_cache[lattice].2
    }

    /// Comedonecrosis: pale pink debris with dark nuclear fragments.
    fn necrosis(&mut self, x: f64, y: f64) -> [f32; 2] {
        if self.chromatin.eval(x, y) > 0.55 {
            [0.9, 0.15]
        } else {
            [0.05, 0.2]
        }
    }

    fn epithelium(
        &mut self,
        ci: usize,
        m: &Morph,
        unit: &Unit,
        d: f64,
        x: f64,
        y: f64,
    ) -> [f32; 2] {
        if unit.lumen > 0.0 {
            let rough = if m.lumen_rough > 0.0 {
                f64::from(m.lumen_rough * self.rough.eval(x, y))
            } else {
                0.0
            };
            if d + rough < unit.lumen {
                if unit.necrotic {
                    return self.necrosis(x, y);
                }
                return if unit.secretion {
                    SECRETION
                } else {
                    EMPTY_LUMEN
                };
            }
        }
        if m.basal_layer && d < unit.lumen + 0.4 * (1.0 - unit.lumen) {
            // Benign columnar cells: nuclei sit basally, the apical cytoplasm is clear.
            return [m.cyto.0, m.cyto.1 * unit.tone];
        }
        if unit.crib > 0.0 && d < 0.8 && self.in_hole(ci, m, unit.crib, x, y) {
            return EMPTY_LUMEN;
        }
        if d > unit.basal_from && self.basal.eval(x, y) > -0.1 {
            // Flat, dark basal-cell nuclei in a dashed line: benign glands' second layer.
            return [0.9, 0.1];
        }
        if let Some(nucleus) = self.epithelial_nucleus(ci, m, x, y) {
            return nucleus;
        }
        [m.cyto.0, m.cyto.1 * unit.tone]
    }

    fn in_hole(&mut self, ci: usize, m: &Morph, density: f64, x: f64, y: f64) -> bool {
        let key = self.crib_keys[ci];
        let (cell, inv) = (m.crib_cell, self.inv_crib_cell[ci]);
        let slots = self.holes.around(key, x * inv, y * inv, |i, j| {
            Blob::generate(key, i, j, cell, m.crib_radius, 1.2, 0.0)
        });
        slots.into_iter().any(|slot| {
            let hole = self.holes.blob(slot);
            hole.draw < density && hole.distance2(x, y) < 1.0
        })
    }

    fn epithelial_nucleus(&mut self, ci: usize, m: &Morph, x: f64, y: f64) -> Option<[f32; 2]> {
        let key = self.nuc_keys[ci];
        let cell = m.nuc_cell;
        // (normalised squared distance, slot) of the nearest nucleus covering the point.
        let mut best = (1.0, usize::MAX);
        let inv = self.inv_nuc_cell[ci];
        let slots = self.nuclei.around(key, x * inv, y * inv, |i, j| {
            let blob = Blob::generate(
                key,
                i,
                j,
                cell,
                m.nuc_radius,
                m.nuc_aspect,
                m.nucleolus_prob,
            );
            if blob.draw < m.nuc_prob {
                blob
            } else {
                blob.absent()
            }
        });
        for slot in slots {
            let blob = self.nuclei.blob(slot);
            // Overlapping nuclei split along the line of equal normalised distance, so
            // crowded nuclei abut instead of merging into blobs.
            let d2 = blob.distance2(x, y);
            if d2 < best.0 {
                best = (d2, slot);
            }
        }
        let (d2, slot) = best;
        if slot == usize::MAX {
            return None;
        }
        let blob = *self.nuclei.blob(slot);
        Some(self.nucleus_colour(m.nuc_h, m.vesicular, m.chromatin, &blob, d2, x, y))
    }

    #[allow(clippy::too_many_arguments)]
    fn nucleus_colour(
        &mut self,
        nuc_h: f32,
        vesicular: f32,
        chromatin: f32,
        blob: &Blob,
        d2: f64,
        x: f64,
        y: f64,
    ) -> [f32; 2] {
        // With no nucleolus the coordinates are NaN and the comparison is false.
        let (dx, dy) = (x - blob.nucleolus.0, y - blob.nucleolus.1);
        if dx * dx + dy * dy < 0.5 {
            return [1.3, 0.8];
        }
        let t = d2 as f32;
        // Vesicular nuclei: chromatin pushed to the membrane, pale centre.
        let rim = 1.0 - vesicular * 0.55 * (1.0 - t * t);
        let grain = 1.0 + chromatin * self.chromatin.eval(x, y);
        [nuc_h * blob.tone * rim * grain, 0.1]
    }

    /// Stroma at warped position `(x, y)`; `warp` is the warp vector there.
    fn stroma(&mut self, ci: usize, m: &Morph, x: f64, y: f64, warp: [f32; 2]) -> [f32; 2] {
        // Fibromuscular bundles: streaks along a few fixed directions, blended by weights
        // that follow the warp field (~35 µm), so bundles interlace and turn. Fixed
        // directions keep the streak coordinate a plain projection: a direction that
        // varied per point would turn far-away coordinates into noise.
        let weights = fibre_weights(warp);
        let mut f = 0.0;
        let mut total = 1e-6;
        for (k, &wk) in weights.iter().enumerate() {
            if wk > 0.0 {
                let (c, s) = FIBRE_DIRECTIONS[k];
                let (along, across) = (x * c + y * s, y * c - x * s);
                let (streaks, offsets) = &mut self.fibres[k];
                // Streaks are shifted sideways every ~25 µm along them, so fibres end.
                f += wk * streaks.eval(across + 3.0 * f64::from(offsets.eval(along)));
                total += wk;
            }
        }
        let f = f / total;

        if let Some(cell) = self.stromal_cell(ci, m, x, y) {
            return cell;
        }
        let mut e = m.stroma_e * (1.0 + 0.18 * f);
        if f < -0.8 {
            // Thin clear gaps between bundles.
            e *= 0.55;
        }
        [0.05, e]
    }

    fn stromal_cell(&mut self, ci: usize, m: &Morph, x: f64, y: f64) -> Option<[f32; 2]> {
        let key = self.stroma_keys[ci];
        let inv = 1.0 / STROMA_CELL;
        let warp = &mut self.warp;
        let slots = self.stroma_cells.around(key, x * inv, y * inv, |i, j| {
            let blob = Blob::generate(key, i, j, STROMA_CELL, (4.2, 4.2), 1.0, 0.8);
            // The fibre direction at the cell's centre (see `stroma`); evaluating the
            // warp here costs a cache reload, but only once per stromal cell.
            let [wx, wy] = warp.eval2(blob.cx, blob.cy);
            blob.stromal(m, fibre_direction([wx, wy]))
        });
        // Nearest cell covering the point, and whether a tumour cell's halo does.
        let mut best = (1.0, usize::MAX);
        let mut halo = false;
        for slot in slots {
            let blob = self.stroma_cells.blob(slot);
            let d2 = blob.distance2(x, y);
            if d2 < best.0 {
                best = (d2, slot);
            }
            halo |= d2 < blob.halo2;
        }
        let (d2, slot) = best;
        if slot == usize::MAX {
            return halo.then_some([0.13, 0.28]);
        }
        let blob = *self.stroma_cells.blob(slot);
        Some(match blob.kind {
            BlobKind::Fibroblast => [1.15 * blob.tone, 0.1],
            BlobKind::Lymphocyte => [1.7 * blob.tone, 0.08],
            BlobKind::TumourCell | BlobKind::Nucleus => {
                self.nucleus_colour(1.0, 0.7, 0.4, &blob, d2, x, y)
            }
        })
    }
}

/// Directions of stroma fibres (unit vectors): 0°, 45°, 90°, 135°.
const FIBRE_DIRECTIONS: [(f64, f64); 4] = [
    (1.0, 0.0),
    (
        std::f64::consts::FRAC_1_SQRT_2,
        std::f64::consts::FRAC_1_SQRT_2,
    ),
    (0.0, 1.0),
    (
        -std::f64::consts::FRAC_1_SQRT_2,
        std::f64::consts::FRAC_1_SQRT_2,
    ),
];

/// Weights of the [`FIBRE_DIRECTIONS`] at a point with warp vector `warp`: at most two
/// are non-zero, and which dominate changes smoothly with the warp.
#[inline]
fn fibre_weights(warp: [f32; 2]) -> [f32; 4] {
    let (a, b) = (warp[0], warp[1]);
    let sq = |v: f32| if v > 0.0 { v * v } else { 0.0 };
    [sq(a), sq(b), sq(-a), sq(-b)]
}

/// The dominant fibre direction at a point with warp vector `warp`.
#[inline]
fn fibre_direction(warp: [f32; 2]) -> (f64, f64) {
    let w = fibre_weights(warp);
    let k = (0..4).fold(0, |best, k| if w[k] > w[best] { k } else { best });
    FIBRE_DIRECTIONS[k]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_never_exceed_half_a_micron() {
        assert_eq!(samples_per_axis(0.25), 1);
        assert_eq!(samples_per_axis(0.5), 1);
        assert_eq!(samples_per_axis(1.0), 2);
        assert_eq!(samples_per_axis(2.0), 4);
        assert_eq!(samples_per_axis(8.0), 16);
        assert_eq!(samples_per_axis(0.6), 2);
    }

    #[test]
    fn beer_lambert_is_white_without_stain_and_darker_with_more() {
        let s = Stain {
            h: H_OD,
            e: E_OD,
            bg: 0.0,
        };
        assert_eq!(s.transmit(0.0, 0.0), [1.0; 3]);
        let pink = s.transmit(0.0, 0.5);
        let purple = s.transmit(1.2, 0.1);
        // Eosin absorbs green most; haematoxylin leaves blue brightest.
        assert!(pink[1] < pink[2] && pink[2] < pink[0], "{pink:?}");
        assert!(purple[2] > purple[0] && purple[2] > purple[1], "{purple:?}");
    }
}
