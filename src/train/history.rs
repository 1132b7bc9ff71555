//! The training history: one record per epoch, kept in the run's checkpoint state and
//! drawn by [`super::plot`].

use serde::{Deserialize, Serialize};

/// One line of the training history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub ce: f64,
    pub kd: f64,
    pub fm: f64,
    pub at_plus: f64,
    pub val_balanced_accuracy: f64,
    pub val_qwk: f64,
    pub val_macro_f1: f64,
    pub images_per_sec: f64,
}
