//! `model.json` parsing and validation (src/model.rs): any text either parses into a
//! manifest that passes `validate`, or is refused with an error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slidegrade::model::{self, ManifestParseError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match model::parse_manifest(text) {
        Ok(manifest) => {
            // What parses is valid, and survives a round trip unchanged.
            assert!(manifest.validate().is_ok());
            let again = serde_json::to_string(&manifest).unwrap();
            let reparsed = model::parse_manifest(&again).unwrap();
            // NaN never gets here: JSON has no NaN, and validate refuses non-finite std.
            assert_eq!(manifest.name, reparsed.name);
            assert_eq!(manifest.classes, reparsed.classes);
            assert_eq!(manifest.onnx_sha256, reparsed.onnx_sha256);
        }
        Err(ManifestParseError::Version(v)) => assert_ne!(v, model::FORMAT_VERSION),
        Err(ManifestParseError::Invalid(detail)) => assert!(!detail.is_empty()),
    }
});
