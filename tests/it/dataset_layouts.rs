//! Data loaders: the four real patches through the folder layout, CSV, the split layout,
//! and the synthetic set's determinism.

use std::path::{Path, PathBuf};

use crate::common;
use slidegrade::dataset::synthetic::{PatchKind, SynthSetConfig, generate};
use slidegrade::dataset::{DataSet, Layout, Split, load_image};

fn real_patches() -> Option<PathBuf> {
    common::shared_data().map(|d| d.join("patches/prostate"))
}

#[test]
fn the_four_real_patches_load_through_the_folder_layout() {
    let Some(root) = real_patches() else { return };
    // They sit as flat files named after their class (NC.jpg, g3.jpg, …); copy them into
    // the <class>/ layout as a user would, and load both.
    let flat = DataSet::load(&root, Layout::Folder).unwrap();
    let mut labels: Vec<usize> = flat.samples.iter().map(|s| s.label).collect();
    labels.sort();
    assert_eq!(labels, vec![0, 1, 2, 3]);

    let dir = tempfile::tempdir().unwrap();
    for s in &flat.samples {
        let name = s.path.file_name().unwrap().to_string_lossy().to_string();
        let class = Path::new(&name)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .to_string();
        std::fs::create_dir_all(dir.path().join(&class)).unwrap();
        std::fs::copy(&s.path, dir.path().join(&class).join(&name)).unwrap();
    }
    let set = DataSet::load(dir.path(), Layout::Folder).unwrap();
    assert_eq!(set.samples.len(), 4);
    for s in &set.samples {
        let img = load_image(&s.path).unwrap();
        assert!(img.width() > 0 && img.height() > 0);
    }
}

#[test]
fn csv_and_split_folders() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 100, 150]));
    for (split, class) in [("train", "NC"), ("val", "g4"), ("test", "G5")] {
        let d = dir.path().join("folders").join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        img.save(d.join("a.png")).unwrap();
    }
    let set = DataSet::load(&dir.path().join("folders"), Layout::Folder).unwrap();
    assert_eq!(set.class_counts(Split::Train), [1, 0, 0, 0]);
    assert_eq!(set.class_counts(Split::Val), [0, 0, 1, 0]);
    assert_eq!(set.class_counts(Split::Test), [0, 0, 0, 1]);

    img.save(dir.path().join("x.png")).unwrap();
    std::fs::write(
        dir.path().join("labels.csv"),
        "path,label,split\nx.png,G4C,train\nx.png,3,test\nx.png,g3\n",
    )
    .unwrap();
    let set = DataSet::load(&dir.path().join("labels.csv"), Layout::Csv).unwrap();
    assert_eq!(set.samples.len(), 3);
    assert_eq!(set.samples[0].label, 2, "G4C counts as G4");
    assert_eq!(set.samples[0].split, Split::Train);
    assert_eq!(set.samples[1].split, Split::Test);
    assert!(!set.synthetic);

    std::fs::write(dir.path().join("bad.csv"), "path,label\nx.png,G7\n").unwrap();
    let err = DataSet::load(&dir.path().join("bad.csv"), Layout::Csv).unwrap_err();
    assert!(format!("{err:#}").contains("unknown label"), "{err:#}");
}

#[test]
fn synthetic_set_is_deterministic_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthSetConfig {
        out: dir.path().join("a"),
        train_per_class: 1,
        val_per_class: 1,
        test_per_class: 0,
        size_px: 16,
        mpp: 4.0,
        seed: 3,
        threads: 2,
        edge_share: 0.25,
        kind: PatchKind::Focal,
    };
    let a = generate(&cfg).unwrap();
    assert!(a.synthetic);
    assert_eq!(a.class_counts(Split::Train), [1, 1, 1, 1]);
    assert_eq!(a.class_counts(Split::Val), [1, 1, 1, 1]);
    let b = generate(&SynthSetConfig {
        out: dir.path().join("b"),
        ..cfg.clone()
    })
    .unwrap();
    for (x, y) in a.samples.iter().zip(&b.samples) {
        assert_eq!(load_image(&x.path).unwrap(), load_image(&y.path).unwrap());
    }
    // A second call with the same settings reuses the files.
    let again = generate(&cfg).unwrap();
    assert_eq!(again.samples.len(), a.samples.len());
}

#[test]
fn sicapv2_partition_spreadsheets_give_the_splits_and_labels() {
    // A miniature of SICAPv2's real layout (tests/fixtures/sicapv2, written with openpyxl):
    // images/*.jpg, partition/Validation/Val1/{Train,Test}.xlsx and
    // partition/Test/{Train,Test}.xlsx with columns image_name, NC, G3, G4, G5, G4C. Rows
    // flagged only in G4C (cribriform) must count as G4.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sicapv2");
    let set = DataSet::load(&root, Layout::Sicapv2).unwrap();
    let of = |split: Split| -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = set
            .samples
            .iter()
            .filter(|s| s.split == split)
            .map(|s| {
                let name = s.path.file_name().unwrap().to_string_lossy();
                (name[..10].to_string(), s.label)
            })
            .collect();
        v.sort();
        v
    };
    let pairs = |v: &[(&str, usize)]| -> Vec<(String, usize)> {
        v.iter().map(|(n, l)| (n.to_string(), *l)).collect()
    };
    assert_eq!(
        of(Split::Train),
        pairs(&[
            ("16B0001851", 0),
            ("16B0001851", 1),
            ("17B0003935", 2),
            ("18B0006169", 3)
        ])
    );
    assert_eq!(
        of(Split::Val),
        pairs(&[("16B0003388", 0), ("16B0003388", 2)])
    );
    assert_eq!(
        of(Split::Test),
        pairs(&[("18B0005478", 1), ("18B0005478", 2), ("18B0005478", 3)])
    );
    for s in &set.samples {
        assert!(load_image(&s.path).is_ok(), "{}", s.path.display());
    }

    // A file that is not a workbook is refused with its path.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.xlsx");
    std::fs::write(&bad, b"not a spreadsheet").unwrap();
    let err = slidegrade::dataset::read_sicap_sheet(&bad).unwrap_err();
    assert!(format!("{err:#}").contains("bad.xlsx"), "{err:#}");
}
