//! Slide reader (placeholder).
