//! From slide bytes to the first tile: write the input to a file, open it as a slide
//! (OpenSlide 4 and its decoders, through src/wsi), then run what the server's probe runs
//! (overview plan, first tile of the finest and coarsest level) and read a model-sized
//! tile at 8 µm/px. Every outcome must be a `SlideError`, not a panic, an abort or an
//! allocation past libFuzzer's limits.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use slidegrade::wsi::{Slide, isolated};

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("slidegrade-fuzz-{}.tiff", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).unwrap();
    // A fixed µm/px, so that files without resolution metadata still reach the reads.
    if isolated::probe(path, Some(0.5)).is_err() {
        return;
    }
    if let Ok(slide) = Slide::open(path, Some(0.5)) {
        let _ = slide.read_region_at_mpp(0, 0, 64, 64, 8.0);
    }
});
