//! Where tissue lies on a synthetic slide, and which class each part is.
//!
//! A slide holds biopsy *cores*: long, gently curved bands of tissue about 1 mm wide
//! (what an 18 G needle cuts). A core is a centre line (a polyline) with a half-width,
//! whose outline wobbles a little, cut across into consecutive *regions* of one class
//! each (e.g. benign, then pattern 3, then pattern 4). Cuts are placed so that each
//! region gets its stated share of the core's *area*, round ends included, and the cut
//! lines wobble too.
//!
//! [`Layout::label_at`] answers "which class is at this point" for one point;
//! [`Layout::classify_rect`] answers, conservatively, whether a whole tile is glass, one
//! class, or mixed, which is what lets the slide writer share glass tiles and reuse
//! tissue tiles without ever looking at a pixel.

use serde::{Deserialize, Serialize};

use super::class::Class;
use super::rng::{Noise, cell_hash, layer_key, lerp, rehash, unit16};

/// The outline's half-width varies by up to this fraction.
const EDGE_WOBBLE: f64 = 0.12;
/// Feature size of the outline's wobble, µm.
const EDGE_SCALE_UM: f64 = 250.0;
/// Cut lines between regions move by up to this many µm.
const CUT_WOBBLE_UM: f64 = 60.0;
/// Feature size of the cuts' wobble, µm.
const CUT_SCALE_UM: f64 = 180.0;

const L_EDGE: u64 = 200;
const L_CUT: u64 = 201;
const L_LAYOUT: u64 = 202;

/// One region of a core: a class and its share of the core's area.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub class: Class,
    /// Share of the core's area (the shares of a core are normalised to sum to 1).
    pub fraction: f64,
}

/// A biopsy core: tissue within `half_width_um` of a centre line, split along its length
/// into regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoreSpec {
    /// Centre line in level-0 slide µm (x right, y down), at least two points.
    pub centerline: Vec<(f64, f64)>,
    /// Half the core's width, µm (the outline wobbles ±12% around it).
    pub half_width_um: f64,
    /// Regions from the first centre-line point to the last.
    pub regions: Vec<Region>,
}

/// Ready-made cores with a known Gleason score, for tests and demos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CorePattern {
    Benign,
    Gleason33,
    Gleason34,
    Gleason43,
    Gleason44,
    Gleason35,
    Gleason45,
    Gleason54,
    Gleason55,
}

impl CorePattern {
    /// Every pattern.
    pub const ALL: [CorePattern; 9] = [
        CorePattern::Benign,
        CorePattern::Gleason33,
        CorePattern::Gleason34,
        CorePattern::Gleason43,
        CorePattern::Gleason44,
        CorePattern::Gleason35,
        CorePattern::Gleason45,
        CorePattern::Gleason54,
        CorePattern::Gleason55,
    ];

    /// The regions, in order along the core. Shares keep well clear of the grading
    /// rule's thresholds (equal areas, the 5% minority), so that outline wobble cannot
    /// change the grade.
    pub fn regions(self) -> Vec<Region> {
        use Class::{G3, G4, G5, Nc};
        let r = |class, fraction| Region { class, fraction };
        match self {
            CorePattern::Benign => vec![r(Nc, 1.0)],
            CorePattern::Gleason33 => vec![r(Nc, 0.45), r(G3, 0.55)],
            CorePattern::Gleason34 => vec![r(Nc, 0.3), r(G3, 0.45), r(G4, 0.25)],
            CorePattern::Gleason43 => vec![r(Nc, 0.25), r(G4, 0.5), r(G3, 0.25)],
            CorePattern::Gleason44 => vec![r(Nc, 0.35), r(G4, 0.65)],
            CorePattern::Gleason35 => vec![r(Nc, 0.3), r(G3, 0.5), r(G5, 0.2)],
            CorePattern::Gleason45 => vec![r(Nc, 0.25), r(G4, 0.5), r(G5, 0.25)],
            CorePattern::Gleason54 => vec![r(Nc, 0.2), r(G5, 0.5), r(G4, 0.3)],
            CorePattern::Gleason55 => vec![r(Nc, 0.3), r(G5, 0.7)],
        }
    }

    /// The Gleason score [`crate::grade::rule::grade`] gives a core of this pattern, as it
    /// writes it (`"3+4=7"`, `"benign"`).
    pub fn expected_gleason(self) -> &'static str {
        match self {
            CorePattern::Benign => "benign",
            CorePattern::Gleason33 => "3+3=6",
            CorePattern::Gleason34 => "3+4=7",
            CorePattern::Gleason43 => "4+3=7",
            CorePattern::Gleason44 => "4+4=8",
            CorePattern::Gleason35 => "3+5=8",
            CorePattern::Gleason45 => "4+5=9",
            CorePattern::Gleason54 => "5+4=9",
            CorePattern::Gleason55 => "5+5=10",
        }
    }

    /// Parses `"benign"`, `"3+4"`, `"3+4=7"`, `"gleason34"`...
    pub fn from_name(name: &str) -> Option<CorePattern> {
        let n = name.trim().to_ascii_lowercase();
        let digits: String = n
            .split('=')
            .next()?
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        if n == "benign" || n == "nc" {
            return Some(CorePattern::Benign);
        }
        CorePattern::ALL.into_iter().find(|p| {
            p.expected_gleason()
                .split('=')
                .next()
                .map(|s| s.replace('+', ""))
                == Some(digits.clone())
        })
    }
}

impl CoreSpec {
    /// A core along a gentle arc: centred at `center`, `length_um` long, heading
    /// `angle_rad` (0 = along +x) at its middle and turning by `bend_rad` in all.
    pub fn arc(
        center: (f64, f64),
        length_um: f64,
        angle_rad: f64,
        bend_rad: f64,
        half_width_um: f64,
        regions: Vec<Region>,
    ) -> CoreSpec {
        const POINTS: usize = 25;
        let step = length_um / (POINTS - 1) as f64;
        let mut pts = Vec::with_capacity(POINTS);
        let mut p = (0.0, 0.0);
        for k in 0..POINTS {
            pts.push(p);
            // Heading at the middle of the next step.
            let t = (k as f64 + 0.5) / (POINTS - 1) as f64 - 0.5;
            let heading = angle_rad + bend_rad * t;
            p = (p.0 + step * heading.cos(), p.1 + step * heading.sin());
        }
        // Centre the arc's midpoint on `center`.
        let mid = pts[POINTS / 2];
        let centerline = pts
            .into_iter()
            .map(|(x, y)| (x - mid.0 + center.0, y - mid.1 + center.1))
            .collect();
        CoreSpec {
            centerline,
            half_width_um,
            regions,
        }
    }

    /// Checks the core is drawable; the message says what is wrong.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.centerline.len() < 2 {
            return Err("a core needs at least two centre-line points".into());
        }
        if self
            .centerline
            .iter()
            .any(|(x, y)| !x.is_finite() || !y.is_finite())
        {
            return Err("core centre-line points must be finite".into());
        }
        if !(self.half_width_um.is_finite() && self.half_width_um > 0.0) {
            return Err(format!(
                "core half-width must be > 0 µm, got {}",
                self.half_width_um
            ));
        }
        let length: f64 = self.centerline.windows(2).map(|w| dist(w[0], w[1])).sum();
        if length <= 0.0 {
            return Err("a core's centre line must have a length".into());
        }
        if self.regions.is_empty() {
            return Err("a core needs at least one region".into());
        }
        if self
            .regions
            .iter()
            .any(|r| !(r.fraction.is_finite() && r.fraction > 0.0))
        {
            return Err("region fractions must be finite and > 0".into());
        }
        Ok(())
    }
}

fn dist(a: (f64, f64), b: (f64, f64)) -> f64 {
    (a.0 - b.0).hypot(a.1 - b.1)
}

/// A random layout for a `width_um`×`height_um` slide: 1–3 cores (one per ~5 mm of the
/// short side) along the long side, each of a random [`CorePattern`]; or, given a
/// `pattern`, one core of that pattern; or, given a `count`, that many cores packed side by
/// side (a 12-core biopsy set on one slide covers about 1.5 cm² of a 20 × 15 mm slide).
pub(crate) fn random_cores(
    width_um: f64,
    height_um: f64,
    seed: u64,
    pattern: Option<CorePattern>,
    count: Option<usize>,
) -> Vec<CoreSpec> {
    let key = layer_key(seed, L_LAYOUT);
    let (long, short, transpose) = if width_um >= height_um {
        (width_um, height_um, false)
    } else {
        (height_um, width_um, true)
    };
    let n = match (count, pattern) {
        (Some(n), _) => n.max(1),
        (None, Some(_)) => 1,
        (None, None) => ((short / 5000.0).floor() as usize).clamp(1, 3),
    };
    let band = short / n as f64;
    // Packed cores fill more of their band (real sets are laid close together); sparse ones
    // leave glass between them.
    let width_share = if count.is_some() { 0.35 } else { 0.25 };
    (0..n)
        .map(|i| {
            let h = cell_hash(key, i as i64, 0);
            let h2 = rehash(h);
            let pattern =
                pattern.unwrap_or(CorePattern::ALL[(h2 % CorePattern::ALL.len() as u64) as usize]);
            let half_width = (width_share * band).min(450.0) * lerp(0.8, 1.0, unit16(h, 0));
            // Keep the round ends (and their wobble) off the slide's edges.
            let usable = long - 2.0 * (half_width * (1.0 + EDGE_WOBBLE) + 0.02 * long);
            let length = usable * lerp(0.8, 1.0, unit16(h, 1));
            // Packed cores lie nearly straight: a bend or tilt of a sparse core's size would
            // carry them across their narrow band, into a neighbour or off the slide.
            let sway = if count.is_some() { 0.1 } else { 1.0 };
            let bend = sway * lerp(-0.3, 0.3, unit16(h, 2));
            let tilt = sway * lerp(-0.05, 0.05, unit16(h, 3));
            let along = 0.5 * long + (usable - length) * lerp(-0.5, 0.5, unit16(h2 >> 8, 0));
            let across = (i as f64 + 0.5) * band;
            let (center, angle) = if transpose {
                ((across, along), std::f64::consts::FRAC_PI_2 + tilt)
            } else {
                ((along, across), tilt)
            };
            CoreSpec::arc(center, length, angle, bend, half_width, pattern.regions())
        })
        .collect()
}

/// What a rectangle of the slide holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RectKind {
    /// Glass only.
    Glass,
    /// Tissue of one class only.
    Pure(Class),
    /// Anything else (an edge, a boundary between regions): decide per point.
    Mixed,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    a: (f64, f64),
    dir: (f64, f64),
    len: f64,
}

impl Segment {
    /// Distance from `p` to this segment.
    #[inline]
    fn distance(&self, p: (f64, f64)) -> f64 {
        let (dx, dy) = (p.0 - self.a.0, p.1 - self.a.1);
        let t = (dx * self.dir.0 + dy * self.dir.1).clamp(0.0, self.len);
        (dx - t * self.dir.0).hypot(dy - t * self.dir.1)
    }
}

/// Distance from `p` to the nearest of `segments` (infinite if there are none).
#[inline]
fn distance_to(segments: &[Segment], p: (f64, f64)) -> f64 {
    let mut best = f64::INFINITY;
    for s in segments {
        let (dx, dy) = (p.0 - s.a.0, p.1 - s.a.1);
        let t = (dx * s.dir.0 + dy * s.dir.1).clamp(0.0, s.len);
        let (ex, ey) = (dx - t * s.dir.0, dy - t * s.dir.1);
        best = best.min(ex * ex + ey * ey);
    }
    best.sqrt()
}

/// A cut between regions k and k+1: points with `(p − at) · normal > 0` lie past it.
#[derive(Debug, Clone, Copy)]
struct Cut {
    at: (f64, f64),
    normal: (f64, f64),
}

impl Cut {
    /// Signed distance of `p` past the cut.
    #[inline]
    fn signed(&self, p: (f64, f64)) -> f64 {
        (p.0 - self.at.0) * self.normal.0 + (p.1 - self.at.1) * self.normal.1
    }
}

#[derive(Debug, Clone)]
struct Core {
    segments: Vec<Segment>,
    half_width: f64,
    cuts: Vec<Cut>,
    classes: Vec<Class>,
}

impl Core {
    fn compile(spec: &CoreSpec) -> Core {
        let segments: Vec<Segment> = spec
            .centerline
            .windows(2)
            .filter_map(|w| {
                let len = dist(w[0], w[1]);
                (len > 0.0).then(|| Segment {
                    a: w[0],
                    dir: ((w[1].0 - w[0].0) / len, (w[1].1 - w[0].1) / len),
                    len,
                })
            })
            .collect();
        let hw = spec.half_width_um;
        let total: f64 = spec.regions.iter().map(|r| r.fraction).sum();
        // Area along the core, from the start cap (s < 0) through the body to the end
        // cap (s > length): width 2√(hw² − s²) in the caps, 2·hw in between.
        let length: f64 = segments.iter().map(|s| s.len).sum();
        let width_at = |s: f64| {
            let beyond = if s < 0.0 { -s } else { (s - length).max(0.0) };
            2.0 * (hw * hw - beyond * beyond).max(0.0).sqrt()
        };
        const STEPS: usize = 4096;
        let (s0, s1) = (-hw, length + hw);
        let ds = (s1 - s0) / STEPS as f64;
        let mut cumulative = Vec::with_capacity(STEPS + 1);
        let mut area = 0.0;
        cumulative.push(0.0);
        for k in 0..STEPS {
            area += width_at(s0 + (k as f64 + 0.5) * ds) * ds;
            cumulative.push(area);
        }
        let mut cuts = Vec::new();
        let mut share = 0.0;
        for r in &spec.regions[..spec.regions.len() - 1] {
            share += r.fraction / total;
            let target = share * area;
            let k = cumulative.partition_point(|&a| a < target).min(STEPS);
            cuts.push(point_across(&segments, s0 + k as f64 * ds, length));
        }
        Core {
            segments,
            half_width: hw,
            cuts,
            classes: spec.regions.iter().map(|r| r.class).collect(),
        }
    }

    /// Distance from `p` to the centre line.
    fn distance(&self, p: (f64, f64)) -> f64 {
        distance_to(&self.segments, p)
    }
}

/// The cut at arc length `s` along the centre line (extended straight past its ends).
fn point_across(segments: &[Segment], s: f64, length: f64) -> Cut {
    let (first, last) = (segments[0], segments[segments.len() - 1]);
    if s <= 0.0 {
        return Cut {
            at: (first.a.0 + s * first.dir.0, first.a.1 + s * first.dir.1),
            normal: first.dir,
        };
    }
    if s >= length {
        let beyond = s - length + last.len;
        return Cut {
            at: (
                last.a.0 + beyond * last.dir.0,
                last.a.1 + beyond * last.dir.1,
            ),
            normal: last.dir,
        };
    }
    let mut left = s;
    for seg in segments {
        if left <= seg.len {
            return Cut {
                at: (seg.a.0 + left * seg.dir.0, seg.a.1 + left * seg.dir.1),
                normal: seg.dir,
            };
        }
        left -= seg.len;
    }
    Cut {
        at: (
            last.a.0 + last.len * last.dir.0,
            last.a.1 + last.len * last.dir.1,
        ),
        normal: last.dir,
    }
}

/// A compiled layout: the cores of a slide of `width_um`×`height_um`.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    cores: Vec<Core>,
    width_um: f64,
    height_um: f64,
    seed: u64,
}

/// Point queries on a [`Layout`], with their own noise caches (one per thread).
pub(crate) struct Labeler<'a> {
    layout: &'a Layout,
    /// The cores that can matter, each with only the centre-line segments and cuts that
    /// can matter (all of them for a whole-slide labeler; a few for one tile).
    cores: Vec<LocalCore<'a>>,
    edge: Noise,
    cut: Noise,
}

/// A core as seen from one region of the slide.
struct LocalCore<'a> {
    core: &'a Core,
    segments: Vec<Segment>,
    /// Cuts every point of the region is known to be past.
    passed: usize,
    /// Cuts that must be checked per point.
    cuts: Vec<Cut>,
}

impl Layout {
    pub(crate) fn new(cores: &[CoreSpec], width_um: f64, height_um: f64, seed: u64) -> Layout {
        Layout {
            cores: cores.iter().map(Core::compile).collect(),
            width_um,
            height_um,
            seed,
        }
    }

    /// A labeler for anywhere on the slide.
    pub(crate) fn labeler(&self) -> Labeler<'_> {
        let cores = self
            .cores
            .iter()
            .map(|core| LocalCore {
                core,
                segments: core.segments.clone(),
                passed: 0,
                cuts: core.cuts.clone(),
            })
            .collect();
        self.make_labeler(cores)
    }

    /// A labeler that answers exactly like [`labeler`](Self::labeler) for points in the
    /// rectangle `[x0, x1) × [y0, y1)` µm, but only looks at the centre-line segments and
    /// cuts that can matter there. For a point within reach of a core (distance below
    /// the widest outline), the nearest segment is within that reach plus the
    /// rectangle's half-diagonal of its centre, so it is kept; for other points any kept
    /// segment is farther still, and the answer (outside) is the same.
    pub(crate) fn labeler_for_rect(&self, x0: f64, y0: f64, x1: f64, y1: f64) -> Labeler<'_> {
        let c = (0.5 * (x0 + x1), 0.5 * (y0 + y1));
        let r = 0.5 * (x1 - x0).hypot(y1 - y0);
        let cores = self
            .cores
            .iter()
            .filter_map(|core| {
                let reach = core.half_width * (1.0 + EDGE_WOBBLE) + r;
                let segments: Vec<Segment> = core
                    .segments
                    .iter()
                    .filter(|s| s.distance(c) <= reach)
                    .copied()
                    .collect();
                if segments.is_empty() {
                    return None;
                }
                let mut passed = 0;
                let mut cuts = Vec::new();
                for cut in &core.cuts {
                    let s = cut.signed(c);
                    if s.abs() > r + CUT_WOBBLE_UM {
                        passed += usize::from(s > 0.0);
                    } else {
                        cuts.push(*cut);
                    }
                }
                Some(LocalCore {
                    core,
                    segments,
                    passed,
                    cuts,
                })
            })
            .collect();
        self.make_labeler(cores)
    }

    fn make_labeler<'a>(&'a self, cores: Vec<LocalCore<'a>>) -> Labeler<'a> {
        Labeler {
            layout: self,
            cores,
            edge: Noise::new(self.seed, L_EDGE, EDGE_SCALE_UM),
            cut: Noise::new(self.seed, L_CUT, CUT_SCALE_UM),
        }
    }

    /// Conservatively classifies the rectangle `[x0, x1) × [y0, y1)` µm: `Glass` and
    /// `Pure` are guaranteed for every point inside (they use bounds on the wobble, not
    /// samples); anything uncertain is `Mixed`.
    pub(crate) fn classify_rect(&self, x0: f64, y0: f64, x1: f64, y1: f64) -> RectKind {
        let inside_slide = x0 >= 0.0 && y0 >= 0.0 && x1 <= self.width_um && y1 <= self.height_um;
        if x0 >= self.width_um || y0 >= self.height_um || x1 <= 0.0 || y1 <= 0.0 {
            return RectKind::Glass;
        }
        let c = (0.5 * (x0 + x1), 0.5 * (y0 + y1));
        let r = 0.5 * (x1 - x0).hypot(y1 - y0);
        for core in &self.cores {
            let d = core.distance(c);
            if d - r > core.half_width * (1.0 + EDGE_WOBBLE) {
                continue; // Entirely outside this core.
            }
            if !inside_slide || d + r >= core.half_width * (1.0 - EDGE_WOBBLE) {
                return RectKind::Mixed;
            }
            let mut region = 0;
            for cut in &core.cuts {
                let s = cut.signed(c);
                if s.abs() <= r + CUT_WOBBLE_UM {
                    return RectKind::Mixed;
                }
                region += usize::from(s > 0.0);
            }
            return RectKind::Pure(core.classes[region]);
        }
        RectKind::Glass
    }
}

impl Labeler<'_> {
    /// The class at `(x, y)` µm, or `None` for glass (also outside the slide).
    pub(crate) fn label_at(&mut self, x: f64, y: f64) -> Option<Class> {
        let layout = self.layout;
        if !(0.0..layout.width_um).contains(&x) || !(0.0..layout.height_um).contains(&y) {
            return None;
        }
        for local in &self.cores {
            let d = distance_to(&local.segments, (x, y));
            let hw = local.core.half_width;
            if d > hw * (1.0 + EDGE_WOBBLE) {
                continue;
            }
            // The noise is only needed near the outline.
            if d >= hw * (1.0 - EDGE_WOBBLE)
                && d >= hw * (1.0 + EDGE_WOBBLE * f64::from(self.edge.eval(x, y)))
            {
                continue;
            }
            let mut region = local.passed;
            for cut in &local.cuts {
                let s = cut.signed((x, y));
                let past = if s.abs() > CUT_WOBBLE_UM {
                    s > 0.0
                } else {
                    s + CUT_WOBBLE_UM * f64::from(self.cut.eval(x, y)) > 0.0
                };
                region += usize::from(past);
            }
            return Some(local.core.classes[region]);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn straight(regions: Vec<Region>) -> Layout {
        // A 2 mm × 0.6 mm core along y = 500 on a 3 mm × 1 mm slide.
        let core = CoreSpec::arc((1500.0, 500.0), 2000.0, 0.0, 0.0, 300.0, regions);
        Layout::new(&[core], 3000.0, 1000.0, 9)
    }

    #[test]
    fn labels_follow_the_regions() {
        let layout = straight(CorePattern::Gleason34.regions());
        let mut l = layout.labeler();
        assert_eq!(l.label_at(1500.0, 50.0), None, "glass above the core");
        assert_eq!(l.label_at(450.0, 500.0), Some(Class::Nc), "start");
        assert_eq!(l.label_at(2550.0, 500.0), Some(Class::G4), "end");
        assert_eq!(l.label_at(-1.0, 500.0), None, "outside the slide");
    }

    #[test]
    fn area_shares_match_the_regions() {
        let layout = straight(CorePattern::Gleason43.regions());
        let mut l = layout.labeler();
        let mut counts = [0usize; 5];
        for y in 0..250 {
            for x in 0..750 {
                let label = l.label_at(x as f64 * 4.0 + 2.0, y as f64 * 4.0 + 2.0);
                counts[label.map_or(0, |c| c.index() + 1)] += 1;
            }
        }
        let tissue: usize = counts[1..].iter().sum();
        let share = |c: Class| counts[c.index() + 1] as f64 / tissue as f64;
        // Wobble moves a few percent around.
        assert!((share(Class::Nc) - 0.25).abs() < 0.04, "{counts:?}");
        assert!((share(Class::G4) - 0.5).abs() < 0.04, "{counts:?}");
        assert!((share(Class::G3) - 0.25).abs() < 0.04, "{counts:?}");
    }

    #[test]
    fn rect_classes_are_never_wrong() {
        let layout = straight(CorePattern::Gleason35.regions());
        let mut l = layout.labeler();
        let mut kinds = [0usize; 3];
        for ty in 0..16 {
            for tx in 0..48 {
                let (x0, y0) = (tx as f64 * 64.0, ty as f64 * 64.0);
                let kind = layout.classify_rect(x0, y0, x0 + 64.0, y0 + 64.0);
                let expect = match kind {
                    RectKind::Glass => None,
                    RectKind::Pure(c) => Some(c),
                    RectKind::Mixed => {
                        kinds[2] += 1;
                        continue;
                    }
                };
                kinds[usize::from(expect.is_some())] += 1;
                for k in 0..=16 {
                    for m in 0..=16 {
                        let (x, y) = (x0 + k as f64 * 3.999, y0 + m as f64 * 3.999);
                        assert_eq!(l.label_at(x, y), expect, "{kind:?} at ({x}, {y})");
                    }
                }
            }
        }
        assert!(kinds.iter().all(|&n| n > 20), "{kinds:?}");
    }

    #[test]
    fn rect_labelers_agree_with_the_whole_slide_one() {
        // A bent core, so that several segments and both cuts matter somewhere.
        let core = CoreSpec::arc(
            (1500.0, 500.0),
            2400.0,
            0.1,
            0.8,
            250.0,
            CorePattern::Gleason45.regions(),
        );
        let layout = Layout::new(&[core], 3000.0, 1000.0, 5);
        let mut whole = layout.labeler();
        for ty in 0..10 {
            for tx in 0..30 {
                let (x0, y0) = (tx as f64 * 100.0, ty as f64 * 100.0);
                let mut local = layout.labeler_for_rect(x0, y0, x0 + 100.0, y0 + 100.0);
                for k in 0..40 {
                    let (x, y) = (
                        x0 + (k * 37 % 100) as f64 + 0.5,
                        y0 + (k * 61 % 100) as f64 + 0.25,
                    );
                    assert_eq!(local.label_at(x, y), whole.label_at(x, y), "({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn random_layouts_fit_the_slide() {
        for seed in 0..20 {
            let (w, h) = if seed % 2 == 0 {
                (20_000.0, 15_000.0)
            } else {
                (1_500.0, 2_000.0)
            };
            let pattern = (seed % 3 == 0).then_some(CorePattern::Gleason45);
            let count = (seed % 4 == 0).then_some(12);
            let cores = random_cores(w, h, seed, pattern, count);
            assert_eq!(cores.len(), count.unwrap_or(cores.len()));
            assert!(!cores.is_empty());
            for core in &cores {
                core.validate().unwrap();
                let margin = core.half_width_um * (1.0 + EDGE_WOBBLE);
                for &(x, y) in &core.centerline {
                    assert!(
                        x > margin && x < w - margin && y > margin && y < h - margin,
                        "seed {seed}: ({x}, {y}) in {w}×{h}"
                    );
                }
            }
        }
    }

    #[test]
    fn pattern_names_parse() {
        for p in CorePattern::ALL {
            assert_eq!(CorePattern::from_name(p.expected_gleason()), Some(p));
        }
        assert_eq!(CorePattern::from_name("3+4"), Some(CorePattern::Gleason34));
        assert_eq!(CorePattern::from_name("Benign"), Some(CorePattern::Benign));
        assert_eq!(CorePattern::from_name("2+2"), None);
    }
}
