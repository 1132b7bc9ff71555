//! Bakes the locations of the project-local native libraries (see scripts/setup-native.sh)
//! into the binary, so `target/*/slidegrade` runs without LD_LIBRARY_PATH, and checks
//! that the viewer's npm packages (scripts/setup-web.sh) are there to be embedded.

/// The OpenSeadragon build `src/viewer.rs` embeds with `include_bytes!`.
const OPENSEADRAGON: &str =
    "web/node_modules/openseadragon/build/openseadragon/openseadragon.min.js";

fn main() {
    // Without this check the build would stop at `include_bytes!` with a bare "No such
    // file"; say what to run instead.
    println!("cargo:rerun-if-changed={OPENSEADRAGON}");
    if !std::path::Path::new(OPENSEADRAGON).is_file() {
        println!(
            "cargo::error={OPENSEADRAGON} is missing: run `make setup` (or scripts/setup-web.sh) \
             to install the viewer's pinned npm packages into web/node_modules"
        );
    }
    println!("cargo:rerun-if-env-changed=SLIDEGRADE_OPENSLIDE_LIB_DIR");
    println!("cargo:rerun-if-env-changed=SLIDEGRADE_DEFAULT_ORT_DYLIB");
    if let Ok(dir) = std::env::var("SLIDEGRADE_OPENSLIDE_LIB_DIR") {
        // libopenslide.so.1 from the openslide-bin wheel is found through the rpath.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    let ort = std::env::var("SLIDEGRADE_DEFAULT_ORT_DYLIB").unwrap_or_default();
    println!("cargo:rustc-env=SLIDEGRADE_DEFAULT_ORT_DYLIB={ort}");
}
