//! The fuzz binaries link slidegrade, which links libopenslide.so.1 from .deps/; a
//! library's build script cannot give its dependents an rpath, so this one does (same
//! variable as the main build.rs, set by the repository's .cargo/config.toml).
fn main() {
    println!("cargo:rerun-if-env-changed=SLIDEGRADE_OPENSLIDE_LIB_DIR");
    if let Ok(dir) = std::env::var("SLIDEGRADE_OPENSLIDE_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
