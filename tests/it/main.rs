//! The integration tests, one binary: linking ONNX Runtime, OpenSlide and burn once instead
//! of once per test file is most of what a cold `cargo test` costs here.

mod common;

mod api_conformance;
mod architecture;
mod cli;
mod dataset_layouts;
mod engine;
mod grade_slides;
mod grade_synthetic;
mod hostile_input;
mod lims_identity;
mod lims_messages;
mod mllp_orders;
mod postgres;
mod replicas;
mod serve_process;
mod server;
mod service;
mod shutdown_signal;
mod store;
mod synth_slide;
mod tissue_tiles;
#[cfg(feature = "train")]
mod train_losses;
#[cfg(feature = "train")]
mod train_pipeline;
mod viewer;
mod wsi_slides;
