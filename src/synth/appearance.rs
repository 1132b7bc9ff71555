//! Per-class appearance: the numbers that make NC, G3, G4 and G5 look the way they do.
//!
//! Design rule (the point of this data set): the evidence for a class sits mostly in
//! **fine structure** that an 8 µm/px image cannot resolve, and only **partly** in coarse
//! structure. So:
//! - The coarse *architecture* is shared. Every class builds its tissue from the same
//!   three kinds of epithelial unit ([`ARCHITECTURES`]: large gland, small gland, solid
//!   nest) on the same lattices; a class only changes the *mix* (benign tissue is mostly
//!   large glands, pattern 5 mostly solid nests, but every class has some of each, as
//!   real tissue does: a benign gland cut tangentially shows no lumen, atrophy and
//!   adenosis make small benign glands). Gland density drifts over the slide the same way
//!   in every class.
//! - Lumen contents blur alike: white lumina, pale secretion (benign), poorly formed
//!   lumina (4) and comedonecrosis (5) all become a pale centre at 8 µm/px.
//! - The *fine* structure is class-specific in every unit: nuclear size, shape and
//!   chromatin, nucleoli, the basal-cell layer, 5–12 µm cribriform holes, lymphocytes
//!   or single tumour cells in the stroma.
//! - Mean haematoxylin and eosin per area are balanced between classes (classes with
//!   fewer epithelial nuclei have darker nuclei and more lymphocytes) to well within the
//!   stain variation (see `paint::StainField`), so colour alone is weak evidence.
//!
//! All lengths are µm; stain amounts are optical densities per unit stain vector.

/// One kind of epithelial unit, shared by all classes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Architecture {
    /// Semi-major axis as a fraction of [`UNIT_CELL`] (range drawn per unit).
    pub radius: (f64, f64),
    /// Ratio of the axes (≥ 1).
    pub aspect: (f64, f64),
    /// Share of units drawn as rounded squares instead of ellipses.
    pub blocky_prob: f64,
    /// Lumen radius as a fraction of the unit radius, before the class's
    /// [`Morph::lumen_scale`].
    pub lumen: (f64, f64),
}

/// Large gland, small gland, solid nest.
pub(crate) const ARCHITECTURES: [Architecture; 3] = [
    Architecture {
        radius: (0.34, 0.47),
        aspect: (1.0, 1.7),
        blocky_prob: 0.0,
        lumen: (0.45, 0.72),
    },
    Architecture {
        radius: (0.17, 0.28),
        aspect: (1.0, 1.6),
        blocky_prob: 0.0,
        lumen: (0.2, 0.45),
    },
    Architecture {
        radius: (0.28, 0.40),
        aspect: (1.0, 1.6),
        blocky_prob: 0.5,
        lumen: (0.0, 0.0),
    },
];

/// Spacing of the unit lattice (all classes).
pub(crate) const UNIT_CELL: f64 = 170.0;
/// Probability that a cell of the first unit lattice holds a unit.
pub(crate) const UNIT_PROB: f64 = 0.8;
/// The same for the second lattice, [`SECOND_LATTICE`] times finer, whose units fill
/// gaps and, where they overlap a first-lattice unit, fuse with it: this breaks the
/// regularity of one lattice.
pub(crate) const UNIT_PROB2: f64 = 0.45;
/// Cell size of the second unit lattice relative to the first.
pub(crate) const SECOND_LATTICE: f64 = 0.77;

/// Morphology of one class.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Morph {
    // --- Architecture. ---
    /// Share of large glands, small glands and solid nests among the units.
    pub arch: [f64; 3],
    /// Scales lumina (0 = none: pattern 5 is solid).
    pub lumen_scale: f64,
    /// Irregularity of the luminal border: papillary infolding (benign) or poorly formed
    /// lumina (pattern 4).
    pub lumen_rough: f32,
    /// Probability that a lumen holds pale pink secretion rather than being empty.
    pub secretion_prob: f64,
    /// Comedonecrosis: a lumen is filled with necrotic debris with this probability
    /// (pattern 5's "lumina" are necrotic centres of solid nests). Blurred, it looks
    /// like a lumen with secretion; up close it is full of nuclear fragments.
    pub comedo_prob: f64,
    /// A thin, dashed layer of flat basal-cell nuclei along the unit border (benign only).
    pub basal_layer: bool,
    /// Width of the white retraction cleft around a unit, as a fraction of its radius.
    pub retraction: f64,
    /// Cribriform holes in solid nests and sheets: lattice spacing (0 = none), hole
    /// radius, per-unit hole density.
    pub crib_cell: f64,
    pub crib_radius: (f64, f64),
    pub crib_density: (f64, f64),
    /// Solid sheets between units: epithelium wherever a smooth noise exceeds this
    /// (`INFINITY` = none).
    pub sheet_threshold: f32,
    /// Comedonecrosis in the middle of sheets, where the noise exceeds the sheet
    /// threshold by this much (`INFINITY` = none).
    pub necrosis: f32,

    // --- Epithelial nuclei, on their own lattice. ---
    pub nuc_cell: f64,
    /// Equivalent radius (area-preserving) range.
    pub nuc_radius: (f64, f64),
    /// Largest axis ratio (pleomorphism).
    pub nuc_aspect: f64,
    pub nuc_prob: f64,
    /// Haematoxylin density of a nucleus.
    pub nuc_h: f32,
    /// 0 = evenly dark (benign, small hyperchromatic nuclei); 1 = pale centre with a dark
    /// rim (vesicular chromatin of cancer nuclei).
    pub vesicular: f32,
    /// Amplitude of the coarse chromatin texture (≈1 µm grains).
    pub chromatin: f32,
    /// Probability of a visible nucleolus (~1.4 µm across): the classic fine-scale sign
    /// of prostate cancer, and invisible at 8 µm/px.
    pub nucleolus_prob: f64,
    /// Cytoplasm (haematoxylin, eosin).
    pub cyto: (f32, f32),

    // --- Stroma. ---
    pub stroma_e: f32,
    /// Stromal cells per stromal lattice cell: fibroblasts, lymphocytes, and infiltrating
    /// single tumour cells (pattern 5).
    pub fibro_prob: f64,
    pub lymph_prob: f64,
    pub single_cell_prob: f64,
}

/// Most a nucleus or hole may stick out of its lattice cell: centres are jittered by up to
/// this fraction of the cell from its centre. With a semi-major axis below
/// `(1 − NUC_JITTER) × cell`, a point can only be covered by the cells of its own 2×2
/// quadrant neighbourhood, so four lookups suffice per sample.
pub(crate) const NUC_JITTER: f64 = 0.3;

/// How far a rounded-square unit (|u|⁴ + |v|⁴ = 1) reaches along its diagonal, in units
/// of its semi-axis: 2^(1/4) ≈ 1.19.
pub(crate) const BLOCKY_EXTENT: f64 = 1.189_207_115;

/// Lattice spacing of stromal cells.
pub(crate) const STROMA_CELL: f64 = 14.0;

/// Indexed by `Class::index()`.
pub(crate) const MORPH: [Morph; 4] = [
    // NC: mostly large glands with papillary infolding and pale secretion, a two-layer
    // lining (dashed basal layer under a row of small, dark, round nuclei) and clear
    // cytoplasm; lymphocytes in the stroma (chronic inflammation is common in benign
    // prostate).
    Morph {
        arch: [0.45, 0.25, 0.3],
        lumen_scale: 0.85,
        lumen_rough: 0.12,
        secretion_prob: 0.6,
        comedo_prob: 0.0,
        basal_layer: true,
        retraction: 0.0,
        crib_cell: 0.0,
        crib_radius: (0.0, 0.0),
        crib_density: (0.0, 0.0),
        sheet_threshold: f32::INFINITY,
        necrosis: f32::INFINITY,
        nuc_cell: 8.0,
        nuc_radius: (2.1, 2.7),
        nuc_aspect: 1.3,
        nuc_prob: 0.85,
        nuc_h: 1.55,
        vesicular: 0.0,
        chromatin: 0.08,
        nucleolus_prob: 0.0,
        cyto: (0.08, 0.24),
        stroma_e: 0.50,
        fibro_prob: 0.30,
        lymph_prob: 0.2,
        single_cell_prob: 0.0,
    },
    // G3: mostly small, discrete, well-formed glands with round, smooth lumina and a
    // single cell layer; enlarged nuclei, some nucleoli; retraction clefts.
    Morph {
        arch: [0.3, 0.4, 0.3],
        lumen_scale: 1.0,
        lumen_rough: 0.03,
        secretion_prob: 0.4,
        comedo_prob: 0.0,
        basal_layer: false,
        retraction: 0.05,
        crib_cell: 0.0,
        crib_radius: (0.0, 0.0),
        crib_density: (0.0, 0.0),
        sheet_threshold: f32::INFINITY,
        necrosis: f32::INFINITY,
        nuc_cell: 8.5,
        nuc_radius: (2.9, 3.5),
        nuc_aspect: 1.25,
        nuc_prob: 0.85,
        nuc_h: 1.2,
        vesicular: 0.5,
        chromatin: 0.2,
        nucleolus_prob: 0.4,
        cyto: (0.10, 0.28),
        stroma_e: 0.50,
        fibro_prob: 0.30,
        lymph_prob: 0.12,
        single_cell_prob: 0.0,
    },
    // G4: mostly fused, cribriform nests with many small punched-out lumina; glands have
    // ragged, poorly formed lumina; larger nuclei, frequent nucleoli.
    Morph {
        arch: [0.25, 0.3, 0.45],
        lumen_scale: 1.0,
        lumen_rough: 0.2,
        secretion_prob: 0.3,
        comedo_prob: 0.0,
        basal_layer: false,
        retraction: 0.05,
        crib_cell: 13.0,
        crib_radius: (3.0, 7.0),
        crib_density: (0.25, 0.6),
        sheet_threshold: 0.45,
        necrosis: f32::INFINITY,
        nuc_cell: 9.0,
        nuc_radius: (3.3, 4.1),
        nuc_aspect: 1.35,
        nuc_prob: 0.9,
        nuc_h: 1.0,
        vesicular: 0.6,
        chromatin: 0.3,
        nucleolus_prob: 0.55,
        cyto: (0.11, 0.28),
        stroma_e: 0.50,
        fibro_prob: 0.30,
        lymph_prob: 0.12,
        single_cell_prob: 0.0,
    },
    // G5: solid nests and sheets without true lumina: where other classes have a lumen,
    // pattern 5 has comedonecrosis (or a cystic space); single cells in the stroma;
    // large pleomorphic vesicular nuclei with prominent nucleoli.
    Morph {
        arch: [0.3, 0.25, 0.45],
        lumen_scale: 1.0,
        lumen_rough: 0.0,
        secretion_prob: 0.0,
        comedo_prob: 0.7,
        basal_layer: false,
        retraction: 0.05,
        crib_cell: 0.0,
        crib_radius: (0.0, 0.0),
        crib_density: (0.0, 0.0),
        sheet_threshold: 0.5,
        necrosis: 0.3,
        nuc_cell: 9.5,
        nuc_radius: (3.5, 4.6),
        nuc_aspect: 1.6,
        nuc_prob: 0.9,
        nuc_h: 0.8,
        vesicular: 0.7,
        chromatin: 0.4,
        nucleolus_prob: 0.7,
        cyto: (0.12, 0.26),
        stroma_e: 0.48,
        fibro_prob: 0.25,
        lymph_prob: 0.1,
        single_cell_prob: 0.15,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_fits_the_lookup_assumptions() {
        for (k, m) in MORPH.iter().enumerate() {
            // Nuclei and holes must stay within reach of the 2×2 quadrant lookup.
            let major = m.nuc_radius.1 * m.nuc_aspect.sqrt();
            assert!(major < (1.0 - NUC_JITTER) * m.nuc_cell, "class {k} nuclei");
            if m.crib_cell > 0.0 {
                assert!(
                    m.crib_radius.1 < (1.0 - NUC_JITTER) * m.crib_cell,
                    "class {k}"
                );
            }
            assert!((m.arch.iter().sum::<f64>() - 1.0).abs() < 1e-9, "class {k}");
            // A unit (with its cleft) must fit in its own cell: see `paint::Unit`.
            for a in &ARCHITECTURES {
                let shape = if a.blocky_prob > 0.0 {
                    BLOCKY_EXTENT
                } else {
                    1.0
                };
                assert!(
                    a.radius.1 * shape * (1.0 + m.retraction) <= 0.5,
                    "class {k}"
                );
                assert!(a.radius.0 <= a.radius.1 && a.aspect.0 >= 1.0);
            }
        }
    }
}
