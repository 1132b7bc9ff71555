//! The model: what a bundled model promises ([`contract`]: `model.json` checked against its
//! ONNX graph), how it runs ([`engine`]: ONNX Runtime, CUDA else CPU, pooled sessions), and
//! which models a folder holds ([`registry`]: one scan, one default-model rule).

pub mod contract;
pub mod engine;
pub mod registry;
