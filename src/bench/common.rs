//! What every benchmark shares: the machine header, model loading, the level-0 reference
//! read and the median.

use std::path::Path;

use crate::model::contract::{Role, VerifiedModel};
use crate::model::registry::{self, Registry};

/// The lines that head every benchmark section: machine, command, date.
pub fn header() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = crate::threads::cores();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(String::new(), |kb| {
            format!(", {:.0} GiB RAM", kb / 1024.0 / 1024.0)
        });
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    format!(
        "- Machine: {cpu}, {cores} cores{mem_gib}\n- Command: `{command}`\n- Date: {date}\n- slidegrade {}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Every valid model under `dir` (or only the named ones), Teachers first, then Students
/// from the finest to the coarsest resolution. Refused folders are reported on stderr.
pub fn load_models(dir: &Path, names: &[String]) -> anyhow::Result<Vec<VerifiedModel>> {
    let mut models = if names.is_empty() {
        let registry = Registry::scan(dir);
        for refused in &registry.refused {
            eprintln!("skipping {}: {}", refused.folder, refused.error);
        }
        registry.models
    } else {
        names
            .iter()
            .map(|name| registry::load_named(dir, name))
            .collect::<Result<Vec<_>, _>>()?
    };
    // Tables read Teacher first, then finest to coarsest.
    models.sort_by(|a, b| {
        let key = |m: &VerifiedModel| (m.manifest.role != Role::Teacher, m.manifest.input.mpp);
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    anyhow::ensure!(!models.is_empty(), "no valid model in {}", dir.display());
    Ok(models)
}

/// A square region of `side` level-0 pixels read at full resolution and area-averaged to
/// `tile_px`: how patch data sets (and WSInfer) read, the baseline that the slide reader's
/// pyramid reads are compared with.
pub fn read_level0_resized(
    slide: &crate::slide::Slide,
    x: i64,
    y: i64,
    side: u32,
    tile_px: u32,
) -> crate::slide::Result<image::RgbImage> {
    let mpp = slide.properties().mpp_x;
    slide
        .read_region_at_mpp(x, y, side, side, mpp)
        .map(|full| crate::slide::resize_area(&full, tile_px, tile_px))
}

/// Median of a non-empty sample (mean of the middle two for even sizes).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
