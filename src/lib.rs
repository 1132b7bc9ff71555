//! slidegrade: grades prostate biopsies from whole-slide images at low magnification.
//!
//! The modules in data-path order (a module uses only modules above it in this list):
//! - [`telemetry`]: Prometheus collectors that every stage observes.
//! - [`slide`]: open a slide, read regions at a target µm/px (OpenSlide 4.x).
//! - [`model`]: the model contract (`model.json`), the ONNX Runtime engine, the registry.
//! - [`grade`]: tissue, tiles, scoring, heatmaps, and the grading rule.
//! - [`output`]: `result.json`, heatmap images, tile tables, FHIR and HL7 messages.
//! - [`grader`]: the one `Grader` (model + options → report) that every caller uses.
//! - [`serve`]: the HTTP API, the viewer, the job queue and its workers.
//!
//! Beside the data path: [`build`] (a CNN as an ONNX graph and `model.json`), [`synth`]
//! (synthetic H&E patches and slides), [`dataset`] (patch sets and their scores),
//! [`train`] (the distillation harness, feature `train`) and [`bench`].

pub mod telemetry;
pub mod threads;

pub mod slide;

pub mod model;

pub mod grade;

pub mod output;

pub mod grader;

pub mod serve;

pub mod bench;
pub mod build;
pub mod dataset;
pub mod synth;
#[cfg(feature = "train")]
pub mod train;
