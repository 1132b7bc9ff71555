//! Labelled patch data sets for training and evaluation, and the metrics computed on them.
//!
//! Layouts ([`Layout`]):
//! - **SICAPv2** ([`load_sicapv2`]): `images/*.jpg` plus the partition spreadsheets
//!   `partition/Validation/Val1/{Train,Test}.xlsx` (train / validation) and
//!   `partition/Test/Test.xlsx` (test). One-hot columns `NC, G3, G4, G5`; `G4C`
//!   (cribriform) counts as G4.
//! - **Image folders** ([`load_folder`]): `<root>/<class>/*.{jpg,png}`, or
//!   `<root>/{train,val,test}/<class>/…`. Class folder names are matched case-insensitively
//!   (`g3` is G3).
//! - **CSV** ([`load_csv`]): `path,label[,split]`, paths relative to the CSV's folder, an
//!   optional header row.
//! - **Synthetic** ([`synthetic::generate`]): renders patches with [`crate::synth`] and
//!   writes them as a CSV data set (`slidegrade synth`).
//!
//! Samples without a split are given one by a stable hash of their path (70% train, 15%
//! validation, 15% test), so the same files always land in the same split.
//!
//! Nothing here needs burn: the data set only names files and labels; the trainer decodes,
//! augments and downsamples them (with [`crate::slide::resize_area`]).

pub mod cli;
pub mod scores;
pub mod synthetic;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::synth::Class;

/// Written beside a synthetic set's `labels.csv`; its text is the data description in
/// `model.json`, and its presence marks the set as synthetic.
pub const MARKER_FILE: &str = "SYNTHETIC.txt";

/// Which part of the data a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// A stable FNV-1a hash of `key` (the same on every machine and run).
    pub fn path_hash(key: &str) -> u64 {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h
    }

    /// `train`, `val`/`valid`/`validation`, `test` (case-insensitive).
    pub fn from_name(s: &str) -> Option<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Split::Train),
            "val" | "valid" | "validation" => Some(Split::Val),
            "test" | "testing" => Some(Split::Test),
            _ => None,
        }
    }

    /// The split a sample without one gets: a stable FNV-1a hash of `key`, 70/15/15.
    pub fn by_hash(key: &str) -> Split {
        match Split::path_hash(key) % 100 {
            0..70 => Split::Train,
            70..85 => Split::Val,
            _ => Split::Test,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Sicapv2,
    Folder,
    Csv,
}

/// One labelled image file.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    /// Index into [`Class::ALL`].
    pub label: usize,
    pub split: Split,
}

/// A labelled set of patch files.
#[derive(Debug, Clone)]
pub struct DataSet {
    pub samples: Vec<Sample>,
    /// A human description for `model.json`, e.g. `sicapv2 at /data/SICAPv2`.
    pub description: String,
    /// True for the built-in synthetic set.
    pub synthetic: bool,
}

impl DataSet {
    /// Loads `path` in `layout`.
    pub fn load(path: &Path, layout: Layout) -> Result<DataSet> {
        match layout {
            Layout::Sicapv2 => load_sicapv2(path),
            Layout::Folder => load_folder(path),
            Layout::Csv => load_csv(path),
        }
    }

    pub fn split(&self, split: Split) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.split == split).collect()
    }

    /// Samples per class in `split`.
    pub fn class_counts(&self, split: Split) -> [usize; 4] {
        let mut counts = [0; 4];
        for s in self.samples.iter().filter(|s| s.split == split) {
            counts[s.label] += 1;
        }
        counts
    }

    /// Fold `fold` of a stratified `k`-fold cross-validation over every sample, whatever
    /// split it had: within each class, samples sorted by a stable hash of their path are
    /// dealt to folds in turn, so each fold holds ⌊n/k⌋ or ⌈n/k⌉ of every class. Fold
    /// `fold` is the test split, fold `fold + 1 (mod k)` the validation split (the epoch
    /// to keep is chosen on it), and the other `k − 2` folds train. Each fold is one
    /// paired replicate of an ablation.
    pub fn cross_validation_fold(&self, k: usize, fold: usize) -> Result<DataSet> {
        if k < 3 || fold >= k {
            bail!("cross-validation needs k ≥ 3 and fold < k (got k = {k}, fold = {fold})");
        }
        let mut samples = self.samples.clone();
        let key = |s: &Sample| Split::path_hash(&s.path.to_string_lossy());
        samples.sort_by(|a, b| (a.label, key(a), &a.path).cmp(&(b.label, key(b), &b.path)));
        let mut rank = [0usize; 4];
        for s in &mut samples {
            let f = rank[s.label] % k;
            rank[s.label] += 1;
            s.split = if f == fold {
                Split::Test
            } else if f == (fold + 1) % k {
                Split::Val
            } else {
                Split::Train
            };
        }
        Ok(DataSet {
            samples,
            description: format!(
                "{}, stratified {k}-fold CV fold {}",
                self.description,
                fold + 1
            ),
            synthetic: self.synthetic,
        })
    }

    /// Every sample for training, and the same samples again as the validation split (the
    /// trainer needs one to pick its epoch; here it can only pick the epoch that fits the
    /// training data best). For a model shipped after cross-validation has measured the
    /// recipe: no sample is held out, so it has no test figures of its own.
    pub fn all_for_training(&self) -> DataSet {
        let train = self.samples.iter().map(|s| Sample {
            split: Split::Train,
            ..s.clone()
        });
        let val = self.samples.iter().map(|s| Sample {
            split: Split::Val,
            ..s.clone()
        });
        DataSet {
            samples: train.chain(val).collect(),
            description: format!("{}, all samples for training", self.description),
            synthetic: self.synthetic,
        }
    }

    /// One line per split: `train 120 [30 30 30 30]`.
    pub fn summary(&self) -> String {
        Split::ALL
            .iter()
            .map(|&sp| {
                let c = self.class_counts(sp);
                format!("{} {} {:?}", sp.name(), c.iter().sum::<usize>(), c)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A class label as written in data files: `NC`, `G3`, `G4`, `G5` (any case), `G4C` → G4,
/// or a class index `0`–`3`.
pub fn parse_label(s: &str) -> Option<usize> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("g4c") {
        return Some(Class::G4.index());
    }
    if let Some(c) = Class::from_name(t) {
        return Some(c.index());
    }
    t.parse::<usize>().ok().filter(|&i| i < Class::ALL.len())
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

/// `<root>/<class>/*.{jpg,png}` or `<root>/<split>/<class>/…`; also accepts flat files
/// named after their class (`<root>/NC.jpg`, `g3.jpg`, … as in `shared/data/patches`).
pub fn load_folder(root: &Path) -> Result<DataSet> {
    let mut samples = Vec::new();
    let add_class_dir =
        |samples: &mut Vec<Sample>, dir: &Path, label: usize, split: Option<Split>| -> Result<()> {
            for f in sorted_entries(dir)? {
                if f.is_file() && is_image(&f) {
                    let split = split.unwrap_or_else(|| Split::by_hash(&f.to_string_lossy()));
                    samples.push(Sample {
                        path: f,
                        label,
                        split,
                    });
                }
            }
            Ok(())
        };
    for entry in sorted_entries(root)? {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if entry.is_dir() {
            if let Some(split) = Split::from_name(&name) {
                for sub in sorted_entries(&entry)? {
                    let sub_name = sub.file_name().unwrap_or_default().to_string_lossy();
                    if let (true, Some(label)) = (sub.is_dir(), parse_label(&sub_name)) {
                        add_class_dir(&mut samples, &sub, label, Some(split))?;
                    }
                }
            } else if let Some(label) = parse_label(&name) {
                add_class_dir(&mut samples, &entry, label, None)?;
            }
        } else if entry.is_file() && is_image(&entry) {
            let stem = entry.file_stem().unwrap_or_default().to_string_lossy();
            if let Some(label) = parse_label(&stem) {
                let split = Split::by_hash(&entry.to_string_lossy());
                samples.push(Sample {
                    path: entry.clone(),
                    label,
                    split,
                });
            }
        }
    }
    if samples.is_empty() {
        bail!(
            "no labelled images under {} (expected <class>/*.jpg|png with classes NC, G3, G4, G5)",
            root.display()
        );
    }
    Ok(DataSet {
        samples,
        description: format!("image folders at {}", root.display()),
        synthetic: false,
    })
}

/// `path,label[,split]` rows; paths are relative to the CSV's folder. A first row whose
/// label does not parse is taken as a header.
pub fn load_csv(csv: &Path) -> Result<DataSet> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let base = csv.parent().unwrap_or(Path::new("."));
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 2 {
            bail!("{}:{}: expected path,label[,split]", csv.display(), i + 1);
        }
        let Some(label) = parse_label(fields[1]) else {
            if i == 0 {
                continue; // header
            }
            bail!(
                "{}:{}: unknown label {:?} (expected NC, G3, G4, G5, G4C or 0-3)",
                csv.display(),
                i + 1,
                fields[1]
            );
        };
        let path = base.join(fields[0]);
        let split = match fields.get(2).filter(|s| !s.is_empty()) {
            Some(s) => Split::from_name(s)
                .with_context(|| format!("{}:{}: unknown split {s:?}", csv.display(), i + 1))?,
            None => Split::by_hash(fields[0]),
        };
        samples.push(Sample { path, label, split });
    }
    if samples.is_empty() {
        bail!("{} lists no samples", csv.display());
    }
    let synthetic = base.join(MARKER_FILE).exists();
    Ok(DataSet {
        samples,
        description: if synthetic {
            std::fs::read_to_string(base.join(MARKER_FILE))
                .unwrap_or_default()
                .trim()
                .to_string()
        } else {
            format!("csv {}", csv.display())
        },
        synthetic,
    })
}

/// SICAPv2: `images/`, `partition/Validation/Val1/{Train,Test}.xlsx` give train and
/// validation, `partition/Test/Test.xlsx` gives test.
pub fn load_sicapv2(root: &Path) -> Result<DataSet> {
    let images = root.join("images");
    let parts = [
        ("partition/Validation/Val1/Train.xlsx", Split::Train),
        ("partition/Validation/Val1/Test.xlsx", Split::Val),
        ("partition/Test/Test.xlsx", Split::Test),
    ];
    let mut samples = Vec::new();
    for (rel, split) in parts {
        let rows = read_sicap_sheet(&root.join(rel))?;
        for (name, label) in rows {
            samples.push(Sample {
                path: images.join(&name),
                label,
                split,
            });
        }
    }
    Ok(DataSet {
        samples,
        description: format!("SICAPv2 (Val1 train/val, Test test) at {}", root.display()),
        synthetic: false,
    })
}

/// Reads one SICAPv2 partition sheet: `image_name` and one-hot `NC, G3, G4, G5[, G4C]`.
pub fn read_sicap_sheet(path: &Path) -> Result<Vec<(String, usize)>> {
    use calamine::{Data, Reader, open_workbook_auto};
    let mut wb =
        open_workbook_auto(path).with_context(|| format!("cannot open {}", path.display()))?;
    let range = wb
        .worksheet_range_at(0)
        .with_context(|| format!("{} has no sheet", path.display()))?
        .with_context(|| format!("cannot read the first sheet of {}", path.display()))?;
    let mut rows = range.rows();
    let header: Vec<String> = rows
        .next()
        .with_context(|| format!("{} is empty", path.display()))?
        .iter()
        .map(|c| c.to_string().trim().to_string())
        .collect();
    let col = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let name_col = col("image_name").with_context(|| {
        format!(
            "{}: no image_name column (header {header:?})",
            path.display()
        )
    })?;
    let class_cols: Vec<(usize, usize)> = [("NC", 0), ("G3", 1), ("G4", 2), ("G5", 3), ("G4C", 2)]
        .iter()
        .filter_map(|&(n, label)| col(n).map(|c| (c, label)))
        .collect();
    if class_cols.len() < 4 {
        bail!(
            "{}: expected one-hot columns NC, G3, G4, G5 (header {header:?})",
            path.display()
        );
    }
    let value = |d: &Data| -> f64 {
        match d {
            Data::Int(i) => *i as f64,
            Data::Float(f) => *f,
            Data::Bool(b) => f64::from(u8::from(*b)),
            Data::String(s) => s.trim().parse().unwrap_or(0.0),
            _ => 0.0,
        }
    };
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let name = row.get(name_col).map(|d| d.to_string()).unwrap_or_default();
        if name.trim().is_empty() {
            continue;
        }
        let label = class_cols
            .iter()
            .find(|&&(c, _)| row.get(c).map(value).unwrap_or(0.0) > 0.5)
            .map(|&(_, l)| l)
            .with_context(|| format!("{} row {}: no class is set", path.display(), i + 2))?;
        out.push((name.trim().to_string(), label));
    }
    Ok(out)
}

/// Decodes an image file to RGB.
pub fn load_image(path: &Path) -> Result<image::RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("cannot decode {}", path.display()))?
        .to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_validation_folds_are_stratified_and_disjoint() {
        let samples = (0..50)
            .flat_map(|i| {
                (0..4).map(move |label| Sample {
                    path: PathBuf::from(format!("c{label}/im{i}.jpg")),
                    label,
                    split: Split::Train,
                })
            })
            .collect();
        let data = DataSet {
            samples,
            description: "toy".into(),
            synthetic: false,
        };
        let mut tested = std::collections::HashSet::new();
        for fold in 0..5 {
            let f = data.cross_validation_fold(5, fold).unwrap();
            assert_eq!(f.class_counts(Split::Test), [10; 4]);
            assert_eq!(f.class_counts(Split::Val), [10; 4]);
            assert_eq!(f.class_counts(Split::Train), [30; 4]);
            for s in f.split(Split::Test) {
                assert!(tested.insert(s.path.clone()), "tested twice: {:?}", s.path);
            }
            // The next fold's test split is this fold's validation split.
            let next = data.cross_validation_fold(5, (fold + 1) % 5).unwrap();
            let val: Vec<_> = f.split(Split::Val).iter().map(|s| s.path.clone()).collect();
            let next_test: Vec<_> = next
                .split(Split::Test)
                .iter()
                .map(|s| s.path.clone())
                .collect();
            assert_eq!(val, next_test);
        }
        assert_eq!(tested.len(), 200, "every sample is tested exactly once");
        assert!(data.cross_validation_fold(2, 0).is_err());
        assert!(data.cross_validation_fold(5, 5).is_err());
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("NC"), Some(0));
        assert_eq!(parse_label("g3"), Some(1));
        assert_eq!(parse_label("G4C"), Some(2));
        assert_eq!(parse_label("3"), Some(3));
        assert_eq!(parse_label("G6"), None);
        assert_eq!(Split::from_name("Validation"), Some(Split::Val));
    }

    #[test]
    fn hash_split_is_stable_and_roughly_70_15_15() {
        let splits: Vec<Split> = (0..1000)
            .map(|i| Split::by_hash(&format!("img{i}.png")))
            .collect();
        let train = splits.iter().filter(|&&s| s == Split::Train).count();
        assert!((600..800).contains(&train), "{train}");
        assert_eq!(Split::by_hash("a.png"), Split::by_hash("a.png"));
    }
}
