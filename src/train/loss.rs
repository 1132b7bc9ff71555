//! The four training terms: cross-entropy (CE), soft-label knowledge distillation (KD),
//! feature-map matching (FM) and Grad-CAM attention distillation (AT+, the paper's term).
//!
//! Every loss returns a one-element tensor (the batch mean). See `shared/DESIGN.md`.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::module::adaptive_avg_pool2d;
use serde::{Deserialize, Serialize};

/// Added to the min–max range in the AT+ normalisation.
pub const AT_EPSILON: f32 = 1e-6;
/// Added under the square root of the RMSE so that its gradient is finite at 0.
pub const RMSE_EPSILON: f32 = 1e-12;

/// The weight of each term (a flag each). Teacher training uses CE only.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossWeights {
    pub ce: f32,
    pub kd: f32,
    pub fm: f32,
    pub at_plus: f32,
    /// KD temperature T.
    pub temperature: f32,
    /// Multiply KD by T² (Hinton et al.), which keeps its gradient scale independent of T.
    /// The paper's authors use T = 1 without it.
    #[serde(default)]
    pub kd_t_squared: bool,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            ce: 1.0,
            kd: 0.0,
            fm: 0.0,
            at_plus: 0.0,
            temperature: 1.0,
            kd_t_squared: false,
        }
    }
}

impl LossWeights {
    pub fn needs_teacher(&self) -> bool {
        self.kd != 0.0 || self.fm != 0.0 || self.at_plus != 0.0
    }

    /// Term → weight, as recorded in `model.json`.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, f64> {
        [
            ("ce", self.ce),
            ("kd", self.kd),
            ("fm", self.fm),
            ("at_plus", self.at_plus),
            ("kd_temperature", self.temperature),
            ("kd_t_squared", f32::from(u8::from(self.kd_t_squared))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), f64::from(v)))
        .collect()
    }
}

/// Cross-entropy against one-hot (or soft) targets `[n, C]`, averaged over the batch.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let [n, _] = logits.dims();
    (log_softmax(logits, 1) * targets)
        .sum()
        .neg()
        .div_scalar(n as f32)
}

/// Soft-label KD as a KL divergence, `KL(p_T ‖ q_T)` with `p_T = softmax(t/T)` (the
/// Teacher's, constant) and `q_T = softmax(s/T)`, batch mean, times T² when `t_squared`.
/// Unlike the cross-entropy form it is zero when the Student matches the Teacher, so its
/// logged value falls as distillation succeeds (the Teacher's entropy is not in it).
pub fn knowledge_distillation(
    student_logits: Tensor<2>,
    teacher_logits: Tensor<2>,
    temperature: f32,
    t_squared: bool,
) -> Tensor<1> {
    let [n, _] = student_logits.dims();
    let teacher_log = log_softmax(teacher_logits.div_scalar(temperature).detach(), 1);
    let p = teacher_log.clone().exp();
    let student_log = log_softmax(student_logits.div_scalar(temperature), 1);
    let kl = (p * (teacher_log - student_log)).sum().div_scalar(n as f32);
    if t_squared {
        kl.mul_scalar(temperature * temperature)
    } else {
        kl
    }
}

/// RMSE of each sample over all its other dimensions, averaged over the batch.
pub fn rmse_per_sample<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<1> {
    let n = a.dims()[0];
    let per = a.dims().iter().product::<usize>() / n.max(1);
    let diff = (a - b).reshape([n, per]);
    diff.powi_scalar(2)
        .mean_dim(1)
        .add_scalar(RMSE_EPSILON)
        .sqrt()
        .mean()
}

/// Area-averages `[n, c, h, w]` maps down to a `grid`×`grid` grid (identity when equal).
pub fn resize_maps(maps: Tensor<4>, grid: usize) -> Tensor<4> {
    let [_, _, h, w] = maps.dims();
    if h == grid && w == grid {
        maps
    } else {
        adaptive_avg_pool2d(maps, [grid, grid])
    }
}

/// FM: RMSE between the Student's last feature map and the Teacher's, after bringing the
/// Teacher's to the Student's grid (area average) and, when the channel counts differ,
/// projecting the Student's channels with `adapter` (`[k_teacher, k_student]`, a learned
/// 1×1 convolution that is not exported).
pub fn feature_matching(
    student: Tensor<4>,
    teacher: Tensor<4>,
    adapter: Option<Tensor<2>>,
) -> Tensor<1> {
    let [n, ks, h, w] = student.dims();
    let teacher = resize_maps(teacher.detach(), h);
    let kt = teacher.dims()[1];
    let student = match adapter {
        Some(a) => a
            .unsqueeze_dim::<3>(0)
            .repeat_dim(0, n)
            .matmul(student.reshape([n, ks, h * w]))
            .reshape([n, kt, h, w]),
        None => {
            assert_eq!(ks, kt, "FM needs an adapter when channel counts differ");
            student
        }
    };
    rmse_per_sample(student, teacher)
}

/// The AT+ attention map of every class: `Σ_k ReLU(α_ck · A_k)` with `α_ck = W_ck/(h·w)`
/// (ReLU per channel, before the sum). `features` `[n, K, h, w]`, `weight` `[C, K]` →
/// `[n, C, h, w]`. Differentiable in both.
pub fn attention_maps(features: Tensor<4>, weight: Tensor<2>) -> Tensor<4> {
    let [n, k, h, w] = features.dims();
    let [c, _] = weight.dims();
    let alpha = weight.div_scalar((h * w) as f32).reshape([1, c, k, 1]);
    let a = features.reshape([n, 1, k, h * w]);
    relu(a * alpha).sum_dim(2).reshape([n, c, h, w])
}

/// Min–max normalisation of each sample's maps jointly over classes and positions:
/// `(m − min) / (max − min + ε)`.
pub fn normalise_maps(maps: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = maps.dims();
    let flat = maps.reshape([n, c * h * w]);
    let min = flat.clone().min_dim(1);
    let max = flat.clone().max_dim(1);
    let range = (max - min.clone()).add_scalar(AT_EPSILON);
    ((flat - min) / range).reshape([n, c, h, w])
}

/// AT+: per-sample RMSE between the normalised Teacher and Student Grad-CAM maps (all
/// classes), averaged over the batch. The Teacher's map is brought to the Student's grid
/// by area averaging before normalisation. Gradient flows into the Student's features and
/// classifier weights; the Teacher's side is constant.
pub fn at_plus(
    student_features: Tensor<4>,
    student_weight: Tensor<2>,
    teacher_features: Tensor<4>,
    teacher_weight: Tensor<2>,
) -> Tensor<1> {
    let grid = student_features.dims()[2];
    let teacher = attention_maps(teacher_features.detach(), teacher_weight.detach());
    let teacher = normalise_maps(resize_maps(teacher, grid));
    let student = normalise_maps(attention_maps(student_features, student_weight));
    rmse_per_sample(student, teacher)
}
