//! Building models: [`network`] (a CNN's weights and an independent forward pass),
//! [`onnx`] (that network as an ONNX graph with `logits` and Grad-CAM `cam`) and
//! [`export`] (graph + `model.json`, verified against the contract).

pub mod export;
pub mod network;
pub mod onnx;
