//! The training and distillation harness (cargo feature `train`): burn on the Flex CPU
//! backend (rayon + SIMD).
//!
//! - [`cnn`]: Teacher/Student CNNs in the [`crate::build::network::Network`] shape.
//! - [`loss`]: CE, KD, FM and AT+.
//! - [`data`]: batches, balanced oversampling, augmentation before downsampling.
//! - [`history`]: one record per epoch, for checkpoints and plots.
//! - [`trainer`]: the loop (Adam, best-val-QWK epoch, checkpoint/resume, plots).
//! - [`to_onnx`]: burn → `Network` → ONNX + `model.json`, parity in ONNX Runtime.
//! - [`recipe`]: the whole paper recipe: replicates, rows, what ships.
//! - [`results`]: the recipe's section of `RESULTS.md`, with paired statistics.
//! - [`cli`]: `train`, `distill`-style flags and `recipe` subcommands.

pub mod cli;
pub mod cnn;
pub mod data;
pub mod history;
pub mod loss;
pub mod plot;
pub mod recipe;
pub mod results;
pub mod to_onnx;
pub mod trainer;
