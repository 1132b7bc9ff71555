//! A plain CNN as the model contract describes it: blocks of Conv (+ BatchNorm) (+ ReLU)
//! (+ 2×2 MaxPool), then global average pooling and one linear layer, plus the closed-form
//! Grad-CAM of that head.
//!
//! This is the hand-off format between training and export: the trainer fills a
//! [`Network`] with learned weights and [`crate::build::onnx`] turns it into ONNX. The
//! naive [`Network::forward`] here is deliberately independent of ONNX Runtime (no BatchNorm
//! folding, direct loops), so tests can check the exported graph against it.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Inference-time BatchNorm parameters of one conv layer.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub eps: f32,
}

/// One convolution (stride 1, "same" zero padding) and what follows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvBlock {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Odd kernel side; padding is `kernel / 2` so the spatial size is kept.
    pub kernel: usize,
    /// `[out_channels, in_channels, kernel, kernel]`, row-major.
    pub weight: Vec<f32>,
    /// `[out_channels]`.
    pub bias: Vec<f32>,
    pub batch_norm: Option<BatchNorm>,
    pub relu: bool,
    /// 2×2 max pool with stride 2 after the activation.
    pub max_pool: bool,
}

/// The linear layer after global average pooling.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    /// `[classes, features]`, row-major (PyTorch/ONNX Gemm with `transB = 1`).
    pub weight: Vec<f32>,
    /// `[classes]`.
    pub bias: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// Square input side in pixels.
    pub input_size: usize,
    pub blocks: Vec<ConvBlock>,
    pub classifier: Classifier,
}

/// Shape of a network, enough to build one with random weights.
#[derive(Debug, Clone)]
pub struct Architecture {
    pub input_size: usize,
    /// Output channels of each conv block.
    pub channels: Vec<usize>,
    /// Which blocks end with a 2×2 max pool.
    pub pool_after: Vec<bool>,
    pub kernel: usize,
    pub classes: usize,
    pub batch_norm: bool,
}

/// Output of a forward pass over a batch of `n` images.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// `[n, classes]`.
    pub logits: Vec<f32>,
    /// `[n, classes, cam_h, cam_w]`.
    pub cam: Vec<f32>,
    /// `[n, classes, cam_h, cam_w]`: the AT+ maps, `Σ_k ReLU(W_ck/(h·w) · A_k)`.
    pub attention: Vec<f32>,
}

impl Network {
    /// A network with weights drawn from a seeded RNG (He-style scale), for tests and for
    /// exercising the server before trained models exist.
    pub fn random(arch: &Architecture, seed: u64) -> Network {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut uniform = |n: usize, scale: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-scale..scale)).collect()
        };
        let mut blocks = Vec::new();
        let mut in_channels = 3;
        let last = arch.channels.len().saturating_sub(1);
        for (i, &out_channels) in arch.channels.iter().enumerate() {
            let fan_in = (in_channels * arch.kernel * arch.kernel) as f32;
            let weight = uniform(
                out_channels * in_channels * arch.kernel * arch.kernel,
                (6.0 / fan_in).sqrt(),
            );
            let bias = uniform(out_channels, 0.1);
            let batch_norm = arch.batch_norm.then(|| BatchNorm {
                gamma: uniform(out_channels, 0.5).iter().map(|g| 1.0 + g).collect(),
                beta: uniform(out_channels, 0.2),
                running_mean: uniform(out_channels, 0.3),
                running_var: uniform(out_channels, 0.5).iter().map(|v| 1.0 + v).collect(),
                eps: 1e-5,
            });
            blocks.push(ConvBlock {
                in_channels,
                out_channels,
                kernel: arch.kernel,
                weight,
                bias,
                batch_norm,
                // The last block's output is the Grad-CAM feature map, taken before ReLU
                // like VGG16's conv5_3 in the paper's code.
                relu: i != last,
                max_pool: arch.pool_after.get(i).copied().unwrap_or(false),
            });
            in_channels = out_channels;
        }
        let features = in_channels;
        let classifier = Classifier {
            weight: uniform(arch.classes * features, (1.0 / features as f32).sqrt()),
            bias: uniform(arch.classes, 0.1),
        };
        Network {
            input_size: arch.input_size,
            blocks,
            classifier,
        }
    }

    pub fn classes(&self) -> usize {
        self.classifier.bias.len()
    }

    /// Channels of the last feature map (the classifier's input).
    pub fn feature_channels(&self) -> usize {
        self.blocks.last().map_or(3, |b| b.out_channels)
    }

    /// Side of the square CAM grid: the input side halved at every max pool.
    pub fn cam_grid(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| b.max_pool)
            .fold(self.input_size, |side, _| side / 2)
    }

    /// Checks that every tensor has the length its shape implies.
    pub fn validate(&self) -> Result<(), String> {
        let mut in_channels = 3;
        if self.input_size == 0 || self.blocks.is_empty() {
            return Err("a network needs a positive input size and at least one block".into());
        }
        for (i, b) in self.blocks.iter().enumerate() {
            if b.in_channels != in_channels {
                return Err(format!(
                    "block {i}: takes {} channels, previous gives {in_channels}",
                    b.in_channels
                ));
            }
            if b.kernel % 2 == 0 {
                return Err(format!("block {i}: kernel {} is not odd", b.kernel));
            }
            let expected = b.out_channels * b.in_channels * b.kernel * b.kernel;
            if b.weight.len() != expected || b.bias.len() != b.out_channels {
                return Err(format!("block {i}: weight or bias has the wrong length"));
            }
            if let Some(bn) = &b.batch_norm {
                let n = b.out_channels;
                if [&bn.gamma, &bn.beta, &bn.running_mean, &bn.running_var]
                    .iter()
                    .any(|v| v.len() != n)
                {
                    return Err(format!("block {i}: batch norm has the wrong length"));
                }
            }
            in_channels = b.out_channels;
        }
        if self.cam_grid() == 0 {
            return Err("too many max pools for the input size".into());
        }
        let classes = self.classes();
        if classes == 0 || self.classifier.weight.len() != classes * in_channels {
            return Err("classifier weight does not match [classes, features]".into());
        }
        Ok(())
    }

    /// The same network with every BatchNorm folded into its convolution:
    /// `w' = w·γ/√(σ²+ε)`, `b' = (b−μ)·γ/√(σ²+ε) + β`. Exact at inference time.
    pub fn folded(&self) -> Network {
        let mut net = self.clone();
        for block in &mut net.blocks {
            let Some(bn) = block.batch_norm.take() else {
                continue;
            };
            let per_out = block.in_channels * block.kernel * block.kernel;
            for o in 0..block.out_channels {
                let scale = bn.gamma[o] / (bn.running_var[o] + bn.eps).sqrt();
                for w in &mut block.weight[o * per_out..(o + 1) * per_out] {
                    *w *= scale;
                }
                block.bias[o] = (block.bias[o] - bn.running_mean[o]) * scale + bn.beta[o];
            }
        }
        net
    }

    /// Naive reference forward pass over `n` normalised images `[n, 3, S, S]`.
    ///
    /// Grad-CAM for a GAP + linear head has a closed form: ∂y_c/∂A_k(i,j) = W_ck/(h·w), so
    /// `cam_c = ReLU(Σ_k W_ck/(h·w) · A_k)` over the last feature map A (before ReLU). The
    /// AT+ map moves the ReLU inside the sum.
    pub fn forward(&self, input: &[f32], n: usize) -> Forward {
        let s = self.input_size;
        assert_eq!(input.len(), n * 3 * s * s, "input is not [n, 3, S, S]");
        let classes = self.classes();
        let grid = self.cam_grid();
        let mut logits = Vec::with_capacity(n * classes);
        let mut cam = Vec::with_capacity(n * classes * grid * grid);
        let mut attention = Vec::with_capacity(n * classes * grid * grid);
        for image in input.chunks_exact(3 * s * s) {
            let (features, side) = self
                .blocks
                .iter()
                .fold((image.to_vec(), s), |(x, side), block| {
                    block_forward(block, &x, side)
                });
            let k = self.feature_channels();
            let area = side * side;
            let pooled: Vec<f32> = features
                .chunks_exact(area)
                .map(|map| map.iter().sum::<f32>() / area as f32)
                .collect();
            for c in 0..classes {
                let w = &self.classifier.weight[c * k..(c + 1) * k];
                let dot: f32 = w.iter().zip(&pooled).map(|(a, b)| a * b).sum();
                logits.push(dot + self.classifier.bias[c]);
            }
            for c in 0..classes {
                let w = &self.classifier.weight[c * k..(c + 1) * k];
                for p in 0..area {
                    let terms = (0..k).map(|ch| w[ch] / area as f32 * features[ch * area + p]);
                    cam.push(terms.clone().sum::<f32>().max(0.0));
                    attention.push(terms.map(|t| t.max(0.0)).sum());
                }
            }
        }
        Forward {
            logits,
            cam,
            attention,
        }
    }
}

/// Applies one block to a `[C, side, side]` map; returns the new map and its side.
fn block_forward(block: &ConvBlock, x: &[f32], side: usize) -> (Vec<f32>, usize) {
    let (cin, cout, k) = (block.in_channels, block.out_channels, block.kernel);
    let pad = (k / 2) as isize;
    let area = side * side;
    let mut y = vec![0.0f32; cout * area];
    for o in 0..cout {
        for i in 0..side {
            for j in 0..side {
                let mut acc = block.bias[o];
                for c in 0..cin {
                    for di in 0..k {
                        for dj in 0..k {
                            let (si, sj) = (
                                i as isize + di as isize - pad,
                                j as isize + dj as isize - pad,
                            );
                            if si < 0 || sj < 0 || si >= side as isize || sj >= side as isize {
                                continue;
                            }
                            let w = block.weight[((o * cin + c) * k + di) * k + dj];
                            acc += w * x[c * area + si as usize * side + sj as usize];
                        }
                    }
                }
                if let Some(bn) = &block.batch_norm {
                    acc = (acc - bn.running_mean[o]) / (bn.running_var[o] + bn.eps).sqrt()
                        * bn.gamma[o]
                        + bn.beta[o];
                }
                if block.relu {
                    acc = acc.max(0.0);
                }
                y[o * area + i * side + j] = acc;
            }
        }
    }
    if !block.max_pool {
        return (y, side);
    }
    let half = side / 2;
    let mut pooled = vec![0.0f32; cout * half * half];
    for o in 0..cout {
        for i in 0..half {
            for j in 0..half {
                let at = |a: usize, b: usize| y[o * area + a * side + b];
                pooled[o * half * half + i * half + j] = at(2 * i, 2 * j)
                    .max(at(2 * i, 2 * j + 1))
                    .max(at(2 * i + 1, 2 * j))
                    .max(at(2 * i + 1, 2 * j + 1));
            }
        }
    }
    (pooled, half)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Network {
        Network::random(
            &Architecture {
                input_size: 8,
                channels: vec![4, 6],
                pool_after: vec![true, false],
                kernel: 3,
                classes: 3,
                batch_norm: true,
            },
            7,
        )
    }

    #[test]
    fn random_network_is_valid_and_has_expected_grid() {
        let net = tiny();
        net.validate().unwrap();
        assert_eq!(net.cam_grid(), 4);
        assert_eq!(net.feature_channels(), 6);
        assert!(
            !net.blocks.last().unwrap().relu,
            "features are taken before ReLU"
        );
    }

    #[test]
    fn folding_batch_norm_keeps_the_output() {
        let net = tiny();
        let input: Vec<f32> = (0..2 * 3 * 64)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let a = net.forward(&input, 2);
        let b = net.folded().forward(&input, 2);
        for (x, y) in a
            .logits
            .iter()
            .zip(&b.logits)
            .chain(a.cam.iter().zip(&b.cam))
        {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        assert!(net.folded().blocks.iter().all(|b| b.batch_norm.is_none()));
    }

    #[test]
    fn cam_averages_to_the_class_evidence() {
        // With non-negative features, Σ_ij cam_c = Σ_k W_ck·mean(A_k) when every term is ≥0;
        // check the closed form on a hand-built 1×1-conv network.
        let net = Network {
            input_size: 2,
            blocks: vec![ConvBlock {
                in_channels: 3,
                out_channels: 1,
                kernel: 1,
                weight: vec![1.0, 0.0, 0.0],
                bias: vec![0.0],
                batch_norm: None,
                relu: false,
                max_pool: false,
            }],
            classifier: Classifier {
                weight: vec![2.0, -1.0],
                bias: vec![0.5, 0.0],
            },
        };
        // Red channel = [1, 2, 3, 4]; other channels ignored by the conv.
        let input = [1.0, 2.0, 3.0, 4.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0];
        let out = net.forward(&input, 1);
        assert_eq!(out.logits, vec![2.0 * 2.5 + 0.5, -2.5]);
        assert_eq!(out.cam[..4], [0.5, 1.0, 1.5, 2.0]);
        assert_eq!(
            out.cam[4..],
            [0.0; 4],
            "negative evidence is clipped by ReLU"
        );
    }
}
