//! Position-keyed randomness: integer hashing and value noise.
//!
//! Every random choice in the renderer is a pure function of `(seed, layer, lattice
//! cell)`, never of a running generator. That is what lets any region of a slide (one
//! tile, one training patch) be rendered on its own and still agree with its neighbours,
//! with no global state and no order dependence between threads.

/// The 64-bit finaliser of MurmurHash3: a cheap bijection that spreads every input bit
/// over every output bit.
#[inline]
pub(crate) fn mix(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// A key for one random "layer" (gland grid, nuclei, a noise field...) of one seed, so
/// that layers sharing a lattice do not share their random numbers.
#[inline]
pub(crate) fn layer_key(seed: u64, layer: u64) -> u64 {
    mix(mix(seed ^ 0x5bd1_e995_9e37_79b9).wrapping_add(layer.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// Hash of lattice cell `(i, j)` in the layer `key`.
#[inline]
pub(crate) fn cell_hash(key: u64, i: i64, j: i64) -> u64 {
    mix(key
        ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (j as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
}

/// The `k`-th 16-bit field of `h` as a number in [0, 1). A hash gives four such values;
/// 1/65536 resolution is plenty for positions and sizes drawn from small ranges.
#[inline]
pub(crate) fn unit16(h: u64, k: u32) -> f64 {
    f64::from(((h >> (16 * k)) & 0xffff) as u16) * (1.0 / 65536.0)
}

/// A second, independent hash derived from `h` (for cells that need more than four
/// random numbers).
#[inline]
pub(crate) fn rehash(h: u64) -> u64 {
    mix(h ^ 0x2545_f491_4f6c_dd1d)
}

/// ⌊v⌋ as an integer. `f64::floor` is a libm call on baseline x86-64 (no SSE4.1), and
/// the renderer floors several times per sample; a truncating cast plus a correction is
/// a few instructions. Valid for |v| < 2⁶³.
#[inline]
pub(crate) fn floor_i64(v: f64) -> i64 {
    let t = v as i64;
    t - i64::from((t as f64) > v)
}

/// e^(−x) for x ≥ 0 (larger x clamps to ~1e-38), relative error < 10⁻⁵: a few
/// multiplications instead of a libm call. Three of these run per sample (Beer–Lambert
/// per channel). No float-to-integer casts (Rust's are saturating, hence slow and not
/// vectorisable): the integer part is rounded into the mantissa with a magic number.
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    // 1.5 · 2²³: adding it rounds to an integer, which lands in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let t = (-x * std::f32::consts::LOG2_E).max(-126.0);
    let z = t + MAGIC;
    let n = z - MAGIC;
    // f in [-0.5, 0.5]: Taylor series of 2^f.
    let f = t - n;
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5 + f * (0.055_504_1 + f * (0.009_618_1 + f * 0.001_333_6))));
    let k = z.to_bits().wrapping_sub(MAGIC.to_bits());
    p * f32::from_bits(k.wrapping_add(127) << 23)
}

/// [`exp_neg`] of four values at once (one per colour channel plus padding), written so
/// that the compiler turns it into SIMD.
#[inline]
pub(crate) fn exp_neg4(x: [f32; 4]) -> [f32; 4] {
    let mut out = [0.0; 4];
    for (o, v) in out.iter_mut().zip(x) {
        *o = exp_neg(v);
    }
    out
}

/// The lattice cell of the last point looked up, kept with its lower corner as floats, so
/// that "still in the same cell" (the common case: samples walk along rows) costs four
/// float comparisons instead of two float-to-integer round trips.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CellTracker {
    lo: (f64, f64),
    /// The cell's integer coordinates.
    pub(crate) ij: (i64, i64),
}

impl CellTracker {
    /// A tracker that matches no cell yet (NaN compares false).
    pub(crate) fn new() -> CellTracker {
        CellTracker {
            lo: (f64::NAN, f64::NAN),
            ij: (0, 0),
        }
    }

    /// Moves to the cell holding lattice point `(fx, fy)`; true if that is a new cell.
    /// `fx − lo` is exact near the cell (Sterbenz), so the test agrees with ⌊fx⌋.
    #[inline]
    pub(crate) fn locate(&mut self, fx: f64, fy: f64) -> bool {
        let (dx, dy) = (fx - self.lo.0, fy - self.lo.1);
        if (0.0..1.0).contains(&dx) && (0.0..1.0).contains(&dy) {
            return false;
        }
        self.ij = (floor_i64(fx), floor_i64(fy));
        self.lo = (self.ij.0 as f64, self.ij.1 as f64);
        true
    }

    /// Position of `(fx, fy)` inside the current cell, each in [0, 1).
    #[inline]
    pub(crate) fn frac(&self, fx: f64, fy: f64) -> (f64, f64) {
        (fx - self.lo.0, fy - self.lo.1)
    }
}

/// `lo + (hi − lo)·t`.
#[inline]
pub(crate) fn lerp(lo: f64, hi: f64, t: f64) -> f64 {
    lo + (hi - lo) * t
}

/// Smooth value noise on a square lattice of spacing `1 / inv_scale` µm, with the four
/// corner values of the last lattice cell cached.
///
/// Value noise (random values at lattice points, smoothstep-interpolated) is the cheapest
/// smooth noise there is; the cache makes it cheaper still, because the renderer walks
/// along rows and most consecutive samples fall in the same cell. The cache never
/// changes a result: the value is a pure function of the position.
#[derive(Debug, Clone)]
pub(crate) struct Noise {
    key: u64,
    inv_scale: f64,
    cell: CellTracker,
    /// Corner values (two independent channels each): [c00, c10, c01, c11].
    corners: [[f32; 2]; 4],
}

impl Noise {
    /// Noise of layer `layer` of `seed` with features about `scale_um` µm across.
    pub(crate) fn new(seed: u64, layer: u64, scale_um: f64) -> Noise {
        Noise {
            key: layer_key(seed, layer),
            inv_scale: 1.0 / scale_um,
            cell: CellTracker::new(),
            corners: [[0.0; 2]; 4],
        }
    }

    fn load(&mut self, i: i64, j: i64) {
        let corner = |di: i64, dj: i64| {
            let h = cell_hash(self.key, i + di, j + dj);
            // Two channels from the two halves of the hash, each in [-1, 1].
            // Via u32: converting a full u64 to a float is a slow path on x86-64.
            let a = f64::from(h as u32) * (2.0 / 4_294_967_295.0) - 1.0;
            let b = f64::from((h >> 32) as u32) * (2.0 / 4_294_967_295.0) - 1.0;
            [a as f32, b as f32]
        };
        self.corners = [corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)];
    }

    /// Both channels at `(x, y)` µm, each in [-1, 1].
    #[inline(always)]
    pub(crate) fn eval2(&mut self, x: f64, y: f64) -> [f32; 2] {
        let (fx, fy) = (x * self.inv_scale, y * self.inv_scale);
        if self.cell.locate(fx, fy) {
            let (i, j) = self.cell.ij;
            self.load(i, j);
        }
        let (tx, ty) = self.cell.frac(fx, fy);
        let (tx, ty) = (tx as f32, ty as f32);
        let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
        let c = &self.corners;
        let mut out = [0.0; 2];
        for (k, o) in out.iter_mut().enumerate() {
            let top = c[0][k] + (c[1][k] - c[0][k]) * sx;
            let bottom = c[2][k] + (c[3][k] - c[2][k]) * sx;
            *o = top + (bottom - top) * sy;
        }
        out
    }

    /// The first channel at `(x, y)` µm, in [-1, 1].
    #[inline(always)]
    pub(crate) fn eval(&mut self, x: f64, y: f64) -> f32 {
        self.eval2(x, y)[0]
    }
}

/// One-dimensional value noise with features about `1 / inv_scale` across, caching the
/// last interval. Stroma fibres use it on the coordinate across the fibre direction:
/// rotated 2-D noise would change lattice cell every few samples, 1-D far less often and
/// at half the cost per change.
#[derive(Debug, Clone)]
pub(crate) struct Noise1 {
    key: u64,
    inv_scale: f64,
    lo: f64,
    ends: [f32; 2],
}

impl Noise1 {
    pub(crate) fn new(seed: u64, layer: u64, scale_um: f64) -> Noise1 {
        Noise1 {
            key: layer_key(seed, layer),
            inv_scale: 1.0 / scale_um,
            lo: f64::NAN,
            ends: [0.0; 2],
        }
    }

    /// The noise at `t` µm, in [-1, 1].
    #[inline(always)]
    pub(crate) fn eval(&mut self, t: f64) -> f32 {
        let ft = t * self.inv_scale;
        let mut d = ft - self.lo;
        if !(0.0..1.0).contains(&d) {
            let i = floor_i64(ft);
            let value = |k: i64| {
                (f64::from(cell_hash(self.key, k, 0) as u32) * (2.0 / 4_294_967_295.0) - 1.0) as f32
            };
            self.ends = [value(i), value(i + 1)];
            self.lo = i as f64;
            d = ft - self.lo;
        }
        let d = d as f32;
        let s = d * d * (3.0 - 2.0 * d);
        self.ends[0] + (self.ends[1] - self.ends[0]) * s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_deterministic_and_spread() {
        assert_eq!(cell_hash(7, 3, -4), cell_hash(7, 3, -4));
        assert_ne!(cell_hash(7, 3, -4), cell_hash(7, -4, 3));
        assert_ne!(layer_key(1, 2), layer_key(2, 1));
        // Uniform-ish: the mean of many draws is near 1/2.
        let mean: f64 = (0..4000)
            .map(|i| unit16(cell_hash(11, i, i * 7), (i % 4) as u32))
            .sum::<f64>()
            / 4000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn fast_floor_and_exp_match_libm() {
        for v in [-2.5, -2.0, -0.1, 0.0, 0.3, 1.0, 7.9, -1e9 - 0.5, 123_456.7] {
            assert_eq!(floor_i64(v), v.floor() as i64, "{v}");
        }
        for k in 0..4000 {
            let x = k as f32 * 0.005;
            let (fast, exact) = (exp_neg(x), (-x).exp());
            assert!(
                (fast - exact).abs() <= 2e-4 * exact,
                "{x}: {fast} vs {exact}"
            );
        }
        assert!(exp_neg(500.0) < 1e-30);
    }

    #[test]
    fn noise_is_bounded_continuous_and_cache_independent() {
        let mut a = Noise::new(3, 1, 10.0);
        let mut prev = a.eval(0.0, 5.0);
        for k in 1..2000 {
            let x = f64::from(k) * 0.05;
            let v = a.eval(x, 5.0);
            assert!((-1.0..=1.0).contains(&v));
            assert!((v - prev).abs() < 0.05, "jump at {x}");
            prev = v;
        }
        let mut line = Noise1::new(3, 2, 4.0);
        let mut prev = line.eval(-50.0);
        for k in 1..2000 {
            let v = line.eval(-50.0 + f64::from(k) * 0.05);
            assert!((-1.0..=1.0).contains(&v) && (v - prev).abs() < 0.05);
            prev = v;
        }
        assert_eq!(line.eval(12.3), Noise1::new(3, 2, 4.0).eval(12.3));
        // A fresh instance (cold cache) agrees with a warm one anywhere.
        for &(x, y) in &[(-13.2, 7.7), (55.0, -0.1), (1e6 + 0.3, 2.5)] {
            let warm = a.eval2(x, y);
            let cold = Noise::new(3, 1, 10.0).eval2(x, y);
            assert_eq!(warm, cold);
        }
    }
}
