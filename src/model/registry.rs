//! The model registry: the one place that scans a models folder, and the one rule for the
//! model used when a request names none. The CLI, the service and the bench all go
//! through it, so they agree on what a folder holds and on which model is the default.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::contract::{self, Manifest, ModelError, Role, VerifiedModel};

/// A model folder that was refused, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RefusedModel {
    pub folder: String,
    pub error: String,
    pub error_type: &'static str,
}

/// What a models folder holds: the models that passed the contract, and the folders that
/// did not.
#[derive(Debug, Default)]
pub struct Registry {
    /// In folder-name order.
    pub models: Vec<VerifiedModel>,
    pub refused: Vec<RefusedModel>,
}

impl Registry {
    /// Checks every subfolder of `dir`, in name order. A folder that fails the contract is
    /// refused with its reason and the others still load; a missing or unreadable `dir`
    /// holds nothing.
    pub fn scan(dir: &Path) -> Registry {
        let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        folders.sort();
        let mut registry = Registry::default();
        for folder in folders {
            match contract::load(&folder) {
                Ok(model) => registry.models.push(model),
                Err(e) => registry.refuse(&folder, e.to_string(), e.kind()),
            }
        }
        registry
    }

    /// Records `folder` as refused (also used by callers whose later checks fail, such as
    /// building an ONNX Runtime session).
    pub fn refuse(&mut self, folder: &Path, error: String, error_type: &'static str) {
        tracing::warn!(folder = %folder.display(), %error, "refused model");
        self.refused.push(RefusedModel {
            folder: folder.display().to_string(),
            error,
            error_type,
        });
    }

    /// The model a request that names none gets (see [`default_index`]).
    pub fn default_model(&self) -> Option<&VerifiedModel> {
        default_index(self.models.iter().map(|m| &m.manifest)).map(|i| &self.models[i])
    }
}

/// Loads the model in `dir/<name>`. Names that could leave `dir` (a path separator, a
/// leading dot, empty) are refused before anything is read.
pub fn load_named(dir: &Path, name: &str) -> Result<VerifiedModel, ModelError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(ModelError::InvalidName(name.to_string()));
    }
    contract::load(&dir.join(name))
}

/// The one default-model rule, over manifests in any order:
/// 1. a Student before the Teacher: grading at low magnification is the product;
/// 2. the coarsest µm/px: the fastest Student;
/// 3. trained on real tissue before synthetic-trained: users grade real slides;
/// 4. the first name in byte order, so the choice never depends on folder listing order.
pub fn default_index<'a>(manifests: impl IntoIterator<Item = &'a Manifest>) -> Option<usize> {
    manifests
        .into_iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| default_order(a, b))
        .map(|(i, _)| i)
}

/// The order behind [`default_index`]: the default model sorts first.
fn default_order(a: &Manifest, b: &Manifest) -> Ordering {
    let student = |m: &Manifest| m.role != Role::Student;
    student(a)
        .cmp(&student(b))
        .then(b.input.mpp.total_cmp(&a.input.mpp))
        .then(a.training.synthetic_data.cmp(&b.training.synthetic_data))
        .then_with(|| a.name.cmp(&b.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, role: Role, mpp: f64, synthetic: bool) -> Manifest {
        Manifest {
            format_version: contract::FORMAT_VERSION,
            name: name.into(),
            version: "1".into(),
            role,
            description: String::new(),
            classes: vec!["NC".into(), "G3".into()],
            input: contract::InputSpec {
                name: "input".into(),
                size_px: 16,
                mpp,
                magnification: 10.0 / mpp,
                channel_order: contract::ChannelOrder::Rgb,
                scale: 1.0 / 255.0,
                mean: [0.0; 3],
                std: [1.0; 3],
            },
            outputs: contract::OutputSpec {
                logits: "logits".into(),
                cam: "cam".into(),
                cam_grid: [4, 4],
                attention: None,
            },
            onnx_sha256: String::new(),
            training: contract::Training {
                synthetic_data: synthetic,
                ..contract::Training::default()
            },
            grading: None,
        }
    }

    #[test]
    fn default_is_the_coarsest_student_real_before_synthetic_then_by_name() {
        let all = [
            manifest("teacher", Role::Teacher, 1.0, true),
            manifest("student-5x", Role::Student, 2.0, true),
            manifest("student-1p25x", Role::Student, 8.0, true),
            manifest("student-1p25x-real", Role::Student, 8.0, false),
            manifest("b-student-1p25x", Role::Student, 8.0, true),
        ];
        assert_eq!(default_index(&all), Some(3));
        assert_eq!(default_index(&all[..3]), Some(2));
        assert_eq!(default_index([&all[2], &all[4]]), Some(1));
        assert_eq!(default_index(&all[..1]), Some(0));
        assert_eq!(default_index(&all[..0]), None);
    }

    #[test]
    fn names_that_leave_the_folder_are_refused() {
        for name in ["", "../x", "a/b", "a\\b", ".hidden"] {
            let err = load_named(Path::new("/nonexistent"), name).unwrap_err();
            assert_eq!(err.kind(), "invalid_model_name", "{name}");
        }
    }
}
