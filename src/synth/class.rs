//! The four tissue classes the synthetic tissue is drawn in.

use serde::{Deserialize, Serialize};

/// The four tissue classes, in the models' output order (SICAPv2's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Class {
    /// Non-cancerous.
    #[serde(rename = "NC")]
    Nc,
    /// Gleason pattern 3.
    G3,
    /// Gleason pattern 4.
    G4,
    /// Gleason pattern 5.
    G5,
}

impl Class {
    /// All classes, in index order.
    pub const ALL: [Class; 4] = [Class::Nc, Class::G3, Class::G4, Class::G5];

    /// Class names in index order, as in `model.json`.
    pub const NAMES: [&'static str; 4] = ["NC", "G3", "G4", "G5"];

    /// Position in [`Class::ALL`] (the model's output index).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class at `index`, or `None` if `index ≥ 4`.
    pub fn from_index(index: usize) -> Option<Class> {
        Class::ALL.get(index).copied()
    }

    /// `"NC"`, `"G3"`, `"G4"` or `"G5"`.
    pub fn name(self) -> &'static str {
        Class::NAMES[self.index()]
    }

    /// The class named `name` (case-insensitive), or `None`.
    pub fn from_name(name: &str) -> Option<Class> {
        Class::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name.trim()))
            .and_then(Class::from_index)
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
