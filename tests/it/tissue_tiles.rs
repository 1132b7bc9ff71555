//! Tissue detection on real TCGA tiles (histolab's fixtures): the tissue tile is kept;
//! the no-tissue, red-pen and almost-white tiles are dropped.

use crate::common;

use slidegrade::grade::tissue::{TissueParams, detect};

/// A tile is kept when at least this fraction of it is tissue (the default of `grade --min-tissue`).
const KEEP: f64 = 0.25;

#[test]
fn real_tiles_are_kept_or_dropped() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let cases = [
        (
            "histolab_tile_tissue-level0-4302-10273-4814-10785.png",
            true,
        ),
        ("histolab_tile_no-tissue.png", false),
        ("histolab_tile_no-tissue-red-pen.png", false),
        ("histolab_tile_almost-white-1.png", false),
    ];
    for (file, keep) in cases {
        let tile = image::open(data.join("tiles").join(file))
            .unwrap()
            .to_rgb8();
        let fraction = detect(&tile, &TissueParams::default()).fraction();
        eprintln!("{file}: tissue fraction {fraction:.3}");
        assert_eq!(
            fraction >= KEEP,
            keep,
            "{file}: tissue fraction {fraction:.3}"
        );
        if !keep {
            assert!(
                fraction < 0.1,
                "{file}: {fraction:.3} is too close to the threshold"
            );
        }
    }
}
