//! Request parsing of `POST /v1/slides` (src/server.rs): the JSON body, the shared-root
//! path check, the Idempotency-Key header and the upload file-name sanitiser. Each either
//! accepts or gives a 4xx `ApiError`; never a panic, never a path outside the root.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use slidegrade::server::{
    idempotency_key, parse_path_submission, resolve_shared_path, safe_file_name,
};

/// A shared root with one slide in it and a secret beside it.
fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base =
            std::env::temp_dir().join(format!("slidegrade-fuzz-root-{}", std::process::id()));
        std::fs::create_dir_all(base.join("shared/sub")).unwrap();
        std::fs::write(base.join("shared/a.svs"), b"a").unwrap();
        std::fs::write(base.join("shared/sub/b.svs"), b"b").unwrap();
        std::fs::write(base.join("secret.svs"), b"s").unwrap();
        base.join("shared")
    })
}

fn check_path(requested: &str) {
    let roots = [root().clone()];
    match resolve_shared_path(&roots, requested) {
        Ok(path) => {
            let canonical_root = roots[0].canonicalize().unwrap();
            assert!(
                path.starts_with(&canonical_root),
                "{requested:?} escaped to {path:?}"
            );
        }
        Err(e) => assert!(e.status().is_client_error(), "{requested:?}: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // The JSON body.
    match parse_path_submission(data) {
        Ok(submission) => check_path(&submission.path),
        Err(e) => assert_eq!(e.error_type(), "bad_request"),
    }
    // The same bytes as a raw path, an Idempotency-Key and an upload file name.
    let text = String::from_utf8_lossy(data);
    check_path(&text);
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", value);
        match idempotency_key(&headers) {
            Ok(Some(key)) => assert!((1..=255).contains(&key.len())),
            Ok(None) => unreachable!("the header is set"),
            Err(e) => assert_eq!(e.error_type(), "bad_request"),
        }
    }
    let name = safe_file_name(&text);
    assert!(!name.is_empty() && !name.starts_with('.'), "{name:?}");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "{name:?}"
    );
    assert!(
        !Path::new(&name)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    );
});
