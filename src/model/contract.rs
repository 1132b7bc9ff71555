//! The model contract: `models/<name>/model.json` beside `model.onnx`.
//!
//! The JSON is the only thing the server trusts about a model, and only the exporter
//! writes it. Loading checks the ONNX file's sha256 and then the graph's input and outputs
//! against the JSON (names, ranks, class count, input size, CAM grid), so a model that
//! does not match is refused with an error naming the mismatch, before any session exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use onnx_ir::{Message, ModelProto, ValueInfoProto};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the `model.json` schema. Bump it on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "model.json";
pub const ONNX_FILE: &str = "model.onnx";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Teacher,
    Student,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub version: String,
    pub role: Role,
    /// One plain sentence for humans, e.g. that a model was trained on synthetic data.
    pub description: String,
    /// Class names in the order of the `logits` and `cam` outputs, e.g. `NC, G3, G4, G5`.
    pub classes: Vec<String>,
    pub input: InputSpec,
    pub outputs: OutputSpec,
    /// Hex sha256 of `model.onnx`.
    pub onnx_sha256: String,
    pub training: Training,
    /// The grading rule's settings recommended for this model, chosen on whole slides
    /// (`slidegrade bench cores`); the grader's flags override them. Absent: the
    /// grader's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grading: Option<GradingDefaults>,
}

/// Settings of the grading rule tuned for one model: a noisier tile classifier needs
/// more smoothing and a larger minimum area before a pattern counts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GradingDefaults {
    /// Neighbourhood radius, in tiles, of the smoothing of tile probabilities.
    pub smoothing_radius: u32,
    /// A Gleason pattern covering less than this, in mm², counts as benign.
    pub min_pattern_mm2: f64,
    /// How they were chosen, for people (which slides, what score).
    pub chosen_on: String,
}

/// How tiles are turned into the graph's input tensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    /// Tiles are square, `size_px` × `size_px`.
    pub size_px: u32,
    /// Resolution the model was trained at, µm per pixel.
    pub mpp: f64,
    /// Nominal objective magnification matching `mpp` (10× ≈ 1 µm/px), for people.
    pub magnification: f64,
    /// Always `RGB` today; recorded so that a BGR model is refused rather than misread.
    pub channel_order: ChannelOrder,
    /// `x = (pixel · scale − mean[c]) / std[c]`.
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub enum ChannelOrder {
    #[serde(rename = "RGB")]
    Rgb,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// `[N, C]` logits.
    pub logits: String,
    /// `[N, C, h, w]` Grad-CAM maps.
    pub cam: String,
    /// `[h, w]` of the CAM grid.
    pub cam_grid: [u32; 2],
    /// `[N, C, h, w]` AT+ maps (`Σ_k ReLU(α_ck A_k)`, the map that AT+ distils), on the
    /// CAM grid. Optional: models exported before it existed have none
    /// (`slidegrade upgrade-model` adds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<String>,
}

/// Where a model came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// Data set description, e.g. `synthetic (seed 1)` or a path and layout.
    pub data: String,
    pub synthetic_data: bool,
    pub seed: u64,
    /// Loss term → weight, e.g. `ce: 1, kd: 0, fm: 0.1, at_plus: 10`.
    pub loss_weights: BTreeMap<String, f64>,
    /// Metric name → value on the validation split (best epoch).
    pub validation_metrics: BTreeMap<String, f64>,
    /// Metric name → value on the test split.
    pub test_metrics: BTreeMap<String, f64>,
    pub notice: String,
    /// The training recipe by name, e.g. `CE + AT+` (absent in models exported before
    /// recipes were named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// Why this model was the one shipped, e.g. the validation figures it was chosen on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model name that could leave the models folder (see `registry::load_named`).
    #[error("invalid model name `{0}`: a model is named by its folder in the models folder")]
    InvalidName(String),
    #[error("model folder {0} has no {MANIFEST_FILE}")]
    MissingManifest(PathBuf),
    #[error("model folder {0} has no {ONNX_FILE}")]
    MissingOnnx(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest: {detail}")]
    InvalidManifest { path: PathBuf, detail: String },
    #[error("{path}: format_version {found} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedFormat { path: PathBuf, found: u32 },
    #[error("{ONNX_FILE} sha256 is {actual}, but {MANIFEST_FILE} says {expected}")]
    ShaMismatch { expected: String, actual: String },
    #[error("{ONNX_FILE} is not a readable ONNX model: {0}")]
    InvalidOnnx(String),
    #[error("graph does not match {MANIFEST_FILE}: {0}")]
    GraphMismatch(String),
}

impl ModelError {
    /// Stable machine-readable kind, used as `error_type` by the API.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::InvalidName(_) => "invalid_model_name",
            ModelError::MissingManifest(_) | ModelError::MissingOnnx(_) => "model_incomplete",
            ModelError::Io { .. } => "model_io",
            ModelError::InvalidManifest { .. } | ModelError::UnsupportedFormat { .. } => {
                "invalid_manifest"
            }
            ModelError::ShaMismatch { .. } => "model_sha256_mismatch",
            ModelError::InvalidOnnx(_) => "invalid_onnx",
            ModelError::GraphMismatch(_) => "model_graph_mismatch",
        }
    }
}

impl Manifest {
    /// Checks the manifest on its own: fields that must make sense before any file is read.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.classes.is_empty() {
            return Err("name and classes must not be empty".into());
        }
        if self.input.size_px == 0 || !(self.input.mpp.is_finite() && self.input.mpp > 0.0) {
            return Err("input.size_px and input.mpp must be positive".into());
        }
        if self.input.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err("input.std must be finite and non-zero".into());
        }
        // JSON numbers beyond f32's range (e.g. 1e40) deserialise to infinity rather than
        // failing, and would turn every input into ±inf/NaN (found by fuzzing).
        if !(self.input.scale.is_finite() && self.input.scale > 0.0)
            || self.input.mean.iter().any(|m| !m.is_finite())
        {
            return Err("input.scale must be finite and positive, input.mean finite".into());
        }
        if !(self.input.magnification.is_finite() && self.input.magnification > 0.0) {
            return Err("input.magnification must be positive".into());
        }
        if self.outputs.cam_grid.contains(&0) {
            return Err("outputs.cam_grid must be positive".into());
        }
        Ok(())
    }
}

/// A model whose files and graph were checked against its manifest.
#[derive(Debug, Clone)]
pub struct VerifiedModel {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub onnx_path: PathBuf,
}

/// Reads and checks the model in `dir`.
pub fn load(dir: &Path) -> Result<VerifiedModel, ModelError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let onnx_path = dir.join(ONNX_FILE);
    if !manifest_path.is_file() {
        return Err(ModelError::MissingManifest(dir.to_path_buf()));
    }
    if !onnx_path.is_file() {
        return Err(ModelError::MissingOnnx(dir.to_path_buf()));
    }
    let manifest = read_manifest(&manifest_path)?;
    let bytes = std::fs::read(&onnx_path).map_err(|source| ModelError::Io {
        path: onnx_path.clone(),
        source,
    })?;
    let actual = sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(&manifest.onnx_sha256) {
        return Err(ModelError::ShaMismatch {
            expected: manifest.onnx_sha256.clone(),
            actual,
        });
    }
    let graph =
        ModelProto::parse_from_bytes(&bytes).map_err(|e| ModelError::InvalidOnnx(e.to_string()))?;
    check_graph(&graph, &manifest).map_err(ModelError::GraphMismatch)?;
    Ok(VerifiedModel {
        dir: dir.to_path_buf(),
        manifest,
        onnx_path,
    })
}

pub fn read_manifest(path: &Path) -> Result<Manifest, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_manifest(&text).map_err(|e| match e {
        ManifestParseError::Version(found) => ModelError::UnsupportedFormat {
            path: path.to_path_buf(),
            found,
        },
        ManifestParseError::Invalid(detail) => ModelError::InvalidManifest {
            path: path.to_path_buf(),
            detail,
        },
    })
}

#[derive(Debug)]
pub enum ManifestParseError {
    Version(u32),
    Invalid(String),
}

impl ManifestParseError {
    /// The same kinds as the [`ModelError`] each becomes.
    pub fn kind(&self) -> &'static str {
        match self {
            ManifestParseError::Version(_) | ManifestParseError::Invalid(_) => "invalid_manifest",
        }
    }
}

/// Parses manifest text. The format version is read first so that a newer manifest gets
/// a version error rather than a confusing field error.
pub fn parse_manifest(text: &str) -> Result<Manifest, ManifestParseError> {
    #[derive(Deserialize)]
    struct VersionOnly {
        format_version: u32,
    }
    let version: VersionOnly =
        serde_json::from_str(text).map_err(|e| ManifestParseError::Invalid(e.to_string()))?;
    if version.format_version != FORMAT_VERSION {
        return Err(ManifestParseError::Version(version.format_version));
    }
    let manifest: Manifest =
        serde_json::from_str(text).map_err(|e| ManifestParseError::Invalid(e.to_string()))?;
    manifest.validate().map_err(ManifestParseError::Invalid)?;
    Ok(manifest)
}

/// Writes `manifest` as pretty JSON, atomically.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> std::io::Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let tmp = dir.join(format!("{MANIFEST_FILE}.part"));
    let text = serde_json::to_string_pretty(manifest).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(tmp, path)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A dimension read off the graph: a fixed size, or symbolic/unknown.
fn dims(info: &ValueInfoProto) -> Option<Vec<Option<i64>>> {
    let ty = info.type_.as_ref()?;
    if !ty.has_tensor_type() {
        return None;
    }
    let shape = ty.tensor_type().shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| d.has_dim_value().then(|| d.dim_value()))
            .collect(),
    )
}

fn check_graph(model: &ModelProto, manifest: &Manifest) -> Result<(), String> {
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(format!(
            "expected exactly one input, found {}",
            inputs.len()
        ));
    };
    let size = i64::from(manifest.input.size_px);
    expect_shape(
        input,
        &manifest.input.name,
        &[None, Some(3), Some(size), Some(size)],
        "input",
    )?;

    let find_output = |name: &str| {
        graph.output.iter().find(|o| o.name == name).ok_or_else(|| {
            let found: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
            format!("no output named `{name}` (outputs: {found:?})")
        })
    };
    let classes = manifest.classes.len() as i64;
    let [h, w] = manifest.outputs.cam_grid.map(i64::from);
    expect_shape(
        find_output(&manifest.outputs.logits)?,
        &manifest.outputs.logits,
        &[None, Some(classes)],
        "logits",
    )?;
    expect_shape(
        find_output(&manifest.outputs.cam)?,
        &manifest.outputs.cam,
        &[None, Some(classes), Some(h), Some(w)],
        "cam",
    )?;
    if let Some(attention) = &manifest.outputs.attention {
        expect_shape(
            find_output(attention)?,
            attention,
            &[None, Some(classes), Some(h), Some(w)],
            "attention",
        )?;
    }
    Ok(())
}

/// Compares a graph value's shape with the expected one; `None` in `expected` means the
/// dimension may be anything (the dynamic batch).
fn expect_shape(
    info: &ValueInfoProto,
    name: &str,
    expected: &[Option<i64>],
    what: &str,
) -> Result<(), String> {
    if info.name != name {
        return Err(format!(
            "{what} is named `{}`, manifest says `{name}`",
            info.name
        ));
    }
    let found = dims(info).ok_or_else(|| format!("{what} `{name}` has no tensor shape"))?;
    if found.len() != expected.len() {
        return Err(format!(
            "{what} `{name}` has rank {}, manifest implies rank {}",
            found.len(),
            expected.len()
        ));
    }
    for (axis, (f, e)) in found.iter().zip(expected).enumerate() {
        if let Some(e) = e
            && *f != Some(*e)
        {
            let f = f.map_or("dynamic".to_string(), |v| v.to_string());
            let meaning = match (what, axis) {
                ("logits", 1) | ("cam" | "attention", 1) => " (class count)",
                ("cam" | "attention", 2 | 3) => " (CAM grid)",
                ("input", 2) | ("input", 3) => " (tile size)",
                _ => "",
            };
            return Err(format!(
                "{what} `{name}` axis {axis}{meaning} is {f}, manifest implies {e}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid manifest's JSON with one field replaced.
    fn manifest_json(field: &str, value: &str) -> String {
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            name: "m".into(),
            version: "1".into(),
            role: Role::Student,
            description: "d".into(),
            classes: vec!["NC".into(), "G3".into()],
            input: InputSpec {
                name: "image".into(),
                size_px: 16,
                mpp: 8.0,
                magnification: 1.25,
                channel_order: ChannelOrder::Rgb,
                scale: 1.0 / 255.0,
                mean: [0.5; 3],
                std: [0.25; 3],
            },
            outputs: OutputSpec {
                logits: "logits".into(),
                cam: "cam".into(),
                cam_grid: [4, 4],
                attention: None,
            },
            onnx_sha256: "00".into(),
            training: Training::default(),
            grading: None,
        };
        let mut value_json: serde_json::Value = serde_json::to_value(&manifest).unwrap();
        value_json["input"][field] = serde_json::from_str(value).unwrap();
        value_json.to_string()
    }

    #[test]
    fn out_of_range_f32_values_are_refused_not_read_as_infinity() {
        assert!(parse_manifest(&manifest_json("scale", "0.5")).is_ok());
        for (field, value) in [
            // The fuzzer's find: 2.2e58 in `mean` parsed as f32 infinity and was accepted.
            ("mean", "[0.48, 2.2e58, 0.406]"),
            ("scale", "1e39"),
            ("scale", "0"),
            ("std", "[1e39, 1, 1]"),
            ("magnification", "-1"),
        ] {
            let err = parse_manifest(&manifest_json(field, value)).unwrap_err();
            assert!(
                matches!(err, ManifestParseError::Invalid(_)),
                "{field}: {err:?}"
            );
        }
    }
}
