//! The Teacher and Student CNNs in burn, in exactly the shape [`crate::build::network::Network`]
//! describes (so that export is a copy of weights): blocks of Conv(k, stride 1, same
//! padding) + BatchNorm + ReLU (+ 2×2 max pool), the last block without ReLU (the Grad-CAM
//! feature map is taken before it), then global average pooling and a linear head.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::build::network::{self, Network};

/// Shape of a CNN: width, depth and where it downsamples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CnnConfig {
    /// Square input side in pixels.
    pub input_size: usize,
    /// Output channels of each conv block (depth = its length).
    pub channels: Vec<usize>,
    /// Which blocks end with a 2×2 max pool (same length as `channels`).
    pub pool_after: Vec<bool>,
    pub kernel: usize,
    pub classes: usize,
}

impl CnnConfig {
    /// A VGG-like stack: `depth` blocks of widths `width·2^⌊i·stages/depth⌋` (capped at
    /// `8·width`), pooling after the first `pools` stages so that the CAM grid is
    /// `input_size / 2^pools`.
    pub fn vgg_like(input_size: usize, width: usize, depth: usize, pools: usize) -> CnnConfig {
        assert!(
            depth >= 1 && pools <= depth,
            "need 1 ≤ depth and pools ≤ depth"
        );
        let mut channels = Vec::with_capacity(depth);
        let mut pool_after = vec![false; depth];
        // Spread the pools over the first blocks, one per block, leaving the last block
        // without a pool (its output is the CAM feature map).
        let pool_slots = depth.saturating_sub(1).max(1);
        for p in 0..pools {
            let at = (p * pool_slots) / pools.max(1);
            pool_after[at.min(depth - 1)] = true;
        }
        let mut stage = 0usize;
        for (i, &pooled) in pool_after.iter().enumerate() {
            channels.push((width << stage.min(3)).max(1));
            if pooled && i + 1 < depth {
                stage += 1;
            }
        }
        CnnConfig {
            input_size,
            channels,
            pool_after,
            kernel: 3,
            classes: 4,
        }
    }

    /// Side of the CAM grid.
    pub fn cam_grid(&self) -> usize {
        self.pool_after
            .iter()
            .filter(|&&p| p)
            .fold(self.input_size, |s, _| s / 2)
    }

    /// Receptive field of one cell of the last feature map (the CAM grid), in input
    /// pixels: each k×k convolution widens it by (k − 1) input strides, each 2×2 pool by
    /// one and doubles the stride.
    pub fn receptive_field(&self) -> usize {
        let (mut field, mut stride) = (1usize, 1usize);
        for &pooled in &self.pool_after {
            field += (self.kernel - 1) * stride;
            if pooled {
                field += stride;
                stride *= 2;
            }
        }
        field
    }

    pub fn feature_channels(&self) -> usize {
        self.channels.last().copied().unwrap_or(3)
    }

    /// Multiply–accumulate operations of one forward pass (convs + head), ×2 = FLOPs.
    pub fn flops(&self) -> u64 {
        let mut side = self.input_size as u64;
        let mut cin = 3u64;
        let mut macs = 0u64;
        for (&c, &p) in self.channels.iter().zip(&self.pool_after) {
            let k = self.kernel as u64;
            macs += side * side * c as u64 * cin * k * k;
            cin = c as u64;
            if p {
                side /= 2;
            }
        }
        macs += cin * self.classes as u64;
        2 * macs
    }

    pub fn init(&self, device: &Device) -> Cnn {
        let last = self.channels.len() - 1;
        let mut cin = 3;
        let mut layers = Vec::new();
        for (i, (&cout, &pool)) in self.channels.iter().zip(&self.pool_after).enumerate() {
            layers.push(ConvLayer {
                conv: Conv2dConfig::new([cin, cout], [self.kernel, self.kernel])
                    .with_padding(PaddingConfig2d::Same)
                    .init(device),
                bn: BatchNormConfig::new(cout).init(device),
                relu: i != last,
                pool: pool.then(|| MaxPool2dConfig::new([2, 2]).init()),
            });
            cin = cout;
        }
        let k = cin;
        let weight = Initializer::KaimingUniform {
            gain: 1.0 / 3f64.sqrt(),
            fan_out_only: false,
        }
        .init_with([self.classes, k], Some(k), Some(self.classes), device);
        let bias = Initializer::Zeros.init([self.classes], device);
        Cnn {
            layers,
            weight,
            bias,
            input_size: self.input_size,
        }
    }
}

#[derive(Module, Debug)]
pub struct ConvLayer {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    pub relu: bool,
    pub pool: Option<MaxPool2d>,
}

#[derive(Module, Debug)]
pub struct Cnn {
    pub layers: Vec<ConvLayer>,
    /// Classifier `[classes, features]` (the `W` of Grad-CAM).
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
    pub input_size: usize,
}

/// What the losses need from one forward pass.
#[derive(Debug, Clone)]
pub struct CnnOutput {
    /// `[n, classes]`.
    pub logits: Tensor<2>,
    /// Last feature map before ReLU, `[n, k, h, w]`.
    pub features: Tensor<4>,
}

impl Cnn {
    pub fn forward(&self, input: Tensor<4>) -> CnnOutput {
        let mut x = input;
        for layer in &self.layers {
            x = layer.bn.forward(layer.conv.forward(x));
            if layer.relu {
                x = relu(x);
            }
            if let Some(pool) = &layer.pool {
                x = pool.forward(x);
            }
        }
        let [n, k, _, _] = x.dims();
        let pooled = x.clone().mean_dim(3).mean_dim(2).reshape([n, k]);
        let logits =
            pooled.matmul(self.weight.val().transpose()) + self.bias.val().unsqueeze_dim::<2>(0);
        CnnOutput {
            logits,
            features: x,
        }
    }

    /// Closed-form Grad-CAM of every class as the exported graph computes it:
    /// `cam_c = ReLU(Σ_k W_ck/(h·w)·A_k)`, `[n, classes, h, w]`.
    pub fn cam(&self, features: Tensor<4>) -> Tensor<4> {
        let [n, k, h, w] = features.dims();
        let weight = self.weight.val();
        let [classes, _] = weight.dims();
        let flat = features.reshape([n, k, h * w]);
        let alpha = weight.div_scalar((h * w) as f32).unsqueeze_dim::<3>(0); // [1, C, K]
        let cam = alpha.repeat_dim(0, n).matmul(flat); // [n, C, hw]
        relu(cam.reshape([n, classes, h, w]))
    }

    /// The weights as the export hand-off format (BatchNorm kept, running statistics in).
    pub fn to_network(&self) -> anyhow::Result<Network> {
        let vec1 = |t: Tensor<1>| floats(t.into_data());
        let mut blocks = Vec::new();
        for layer in &self.layers {
            let weight = layer.conv.weight.val();
            let [cout, cin, k, _] = weight.dims();
            let bias = layer
                .conv
                .bias
                .as_ref()
                .map(|b| vec1(b.val()))
                .transpose()?
                .unwrap_or_else(|| vec![0.0; cout]);
            blocks.push(network::ConvBlock {
                in_channels: cin,
                out_channels: cout,
                kernel: k,
                weight: floats(weight.into_data())?,
                bias,
                batch_norm: Some(network::BatchNorm {
                    gamma: vec1(layer.bn.gamma.val())?,
                    beta: vec1(layer.bn.beta.val())?,
                    running_mean: vec1(layer.bn.running_mean.value())?,
                    running_var: vec1(layer.bn.running_var.value())?,
                    eps: layer.bn.epsilon as f32,
                }),
                relu: layer.relu,
                max_pool: layer.pool.is_some(),
            });
        }
        Ok(Network {
            input_size: self.input_size,
            blocks,
            classifier: network::Classifier {
                weight: floats(self.weight.val().into_data())?,
                bias: vec1(self.bias.val())?,
            },
        })
    }
}

/// A tensor's values as `f32`, or an error naming the dtype it holds instead: exporting
/// or scoring with an empty vector would fail far from the cause, or not at all.
pub fn floats(data: TensorData) -> anyhow::Result<Vec<f32>> {
    data.try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("expected f32 tensor data: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receptive_fields_by_hand() {
        // conv 3 → pool 4 (stride 2) → conv 8 → pool 10 (4) → conv 18 → pool 22 (8)
        // → conv 38 → pool 46 (16) → conv 78: the Teacher before issue 12.
        let old = CnnConfig::vgg_like(128, 16, 5, 4);
        assert_eq!(old.receptive_field(), 78);
        assert_eq!(old.cam_grid(), 8);
        // Depth 8 with the same 4 pools covers a 128 px patch and keeps the 8×8 grid.
        let deep = CnnConfig::vgg_like(128, 16, 8, 4);
        assert!(deep.receptive_field() >= 128, "{}", deep.receptive_field());
        assert_eq!(deep.cam_grid(), 8);
        assert_eq!(CnnConfig::vgg_like(16, 4, 1, 0).receptive_field(), 3);
    }
}
