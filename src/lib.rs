//! slidegrade: grades prostate biopsies from whole-slide images at low magnification.
//!
//! The data path, one module per stage (data flows down this list):
//! - [`wsi`]: open a slide, read regions at a target µm/px (OpenSlide 4.x).
//! - [`model`]: the model contract (`model.json`) and its checks against the ONNX graph.
//! - [`engine`]: ONNX Runtime sessions (CUDA, else CPU) behind a synchronous trait, pooled.
//! - [`server`]: the HTTP API; [`viewer`]: the browser page at `/` and Deep Zoom tiles.
//!
//! Model building: [`network`] (a CNN's weights and an independent forward pass) and
//! [`onnx_writer`] (that network as an ONNX graph with `logits` and Grad-CAM `cam`).

pub mod api_error;
pub mod auth;
pub mod bench;
pub mod dataset;
pub mod engine;
pub mod export;
pub mod grading;
pub mod jobs;
pub mod lims;
pub mod metrics;
pub mod model;
pub mod network;
pub mod onnx_writer;
pub mod pipeline;
pub mod render;
pub mod report;
pub mod server;
pub mod service;
pub mod stitch;
pub mod synth;
pub mod tiling;
pub mod tissue;
#[cfg(feature = "train")]
pub mod train;
pub mod viewer;
pub mod wsi;
