//! Bakes the locations of the project-local native libraries (see scripts/setup-native.sh)
//! into the binary, so `target/*/slidegrade` runs without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=SLIDEGRADE_OPENSLIDE_LIB_DIR");
    println!("cargo:rerun-if-env-changed=SLIDEGRADE_DEFAULT_ORT_DYLIB");
    if let Ok(dir) = std::env::var("SLIDEGRADE_OPENSLIDE_LIB_DIR") {
        // libopenslide.so.1 from the openslide-bin wheel is found through the rpath.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    let ort = std::env::var("SLIDEGRADE_DEFAULT_ORT_DYLIB").unwrap_or_default();
    println!("cargo:rustc-env=SLIDEGRADE_DEFAULT_ORT_DYLIB={ort}");
}
