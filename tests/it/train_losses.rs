//! The four losses against values worked out by hand, and AT+'s gradient reaching both the
//! feature maps and the classifier weights.

use burn::tensor::{Device, Tensor, TensorData};
use slidegrade::train::loss::{
    at_plus, attention_maps, cross_entropy, feature_matching, knowledge_distillation,
    normalise_maps, resize_maps,
};

fn t2(v: Vec<f32>, shape: [usize; 2], d: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), d)
}

fn t4(v: Vec<f32>, shape: [usize; 4], d: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v, shape), d)
}

fn value<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn close(a: f32, b: f32, tol: f32) {
    assert!((a - b).abs() < tol, "{a} vs {b}");
}

#[test]
fn cross_entropy_by_hand() {
    let d = Device::default();
    // logits [0, ln 3] → softmax [1/4, 3/4]. Sample 1 is class 1: −ln(3/4);
    // sample 2 (same logits) is class 0: −ln(1/4). Mean = (ln(4/3) + ln 4)/2.
    let logits = t2(vec![0.0, 3f32.ln(), 0.0, 3f32.ln()], [2, 2], &d);
    let targets = t2(vec![0.0, 1.0, 1.0, 0.0], [2, 2], &d);
    let ce = value(cross_entropy(logits, targets))[0];
    close(ce, ((4.0f32 / 3.0).ln() + 4f32.ln()) / 2.0, 1e-5);
}

#[test]
fn knowledge_distillation_by_hand() {
    let d = Device::default();
    // T = 2: teacher logits [0, 2 ln 3] / T = [0, ln 3] → p = [1/4, 3/4].
    // Student logits [0, 0] → q = [1/2, 1/2].
    // KL(p‖q) = 1/4 ln(1/2) + 3/4 ln(3/2) = 3/4 ln 3 − ln 2; × T² = 3 ln 3 − 4 ln 2.
    let teacher = t2(vec![0.0, 2.0 * 3f32.ln()], [1, 2], &d);
    let student = t2(vec![0.0, 0.0], [1, 2], &d);
    let kl = 0.75 * 3f32.ln() - 2f32.ln();
    let kd = value(knowledge_distillation(
        student.clone(),
        teacher.clone(),
        2.0,
        false,
    ))[0];
    close(kd, kl, 1e-5);
    let kd = value(knowledge_distillation(student, teacher, 2.0, true))[0];
    close(kd, 4.0 * kl, 1e-5);
}

#[test]
fn knowledge_distillation_is_zero_when_the_student_matches() {
    let d = Device::default();
    // A KL divergence, not a cross-entropy: no Teacher entropy left over.
    let logits = t2(vec![0.3, -1.2, 2.0, 0.1, 0.0, 0.5, -0.5, 1.5], [2, 4], &d);
    for t in [1.0, 4.0] {
        let kd = value(knowledge_distillation(
            logits.clone(),
            logits.clone(),
            t,
            true,
        ))[0];
        close(kd, 0.0, 1e-6);
    }
}

#[test]
fn feature_matching_by_hand() {
    let d = Device::default();
    // Sample 1: student 0, teacher [1, 1, 1, 3] → MSE 12/4 = 3, RMSE √3.
    // Sample 2: equal maps → 0. Batch mean √3/2.
    let student = t4(
        vec![0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 7.0, 8.0],
        [2, 1, 2, 2],
        &d,
    );
    let teacher = t4(
        vec![1.0, 1.0, 1.0, 3.0, 5.0, 6.0, 7.0, 8.0],
        [2, 1, 2, 2],
        &d,
    );
    let fm = value(feature_matching(student, teacher, None))[0];
    close(fm, 3f32.sqrt() / 2.0, 1e-5);
}

#[test]
fn feature_matching_adapts_grid_and_channels() {
    let d = Device::default();
    // Teacher 1 channel on a 2×2 grid [1, 1, 1, 3] → area average 1.5 on the 1×1 grid.
    // Student 2 channels [1], [2] with adapter [0.5, 0.25] → 0.5 + 0.5 = 1.0. RMSE 0.5.
    let student = t4(vec![1.0, 2.0], [1, 2, 1, 1], &d);
    let teacher = t4(vec![1.0, 1.0, 1.0, 3.0], [1, 1, 2, 2], &d);
    let adapter = t2(vec![0.5, 0.25], [1, 2], &d);
    let fm = value(feature_matching(student, teacher, Some(adapter)))[0];
    close(fm, 0.5, 1e-5);
}

/// Features `[1, 2, 1, 2]`: A_0 = [1, 2], A_1 = [−1, 4]; W = [[2, 1], [−1, 0.5]];
/// h·w = 2 so α = W/2 = [[1, 0.5], [−0.5, 0.25]].
/// Class 0: ReLU(1·A_0) + ReLU(0.5·A_1) = [1, 2] + [0, 2] = [1, 4].
/// Class 1: ReLU(−0.5·A_0) + ReLU(0.25·A_1) = [0, 0] + [0, 1] = [0, 1].
fn student_case(d: &Device) -> (Tensor<4>, Tensor<2>) {
    (
        t4(vec![1.0, 2.0, -1.0, 4.0], [1, 2, 1, 2], d),
        t2(vec![2.0, 1.0, -1.0, 0.5], [2, 2], d),
    )
}

#[test]
fn attention_maps_by_hand() {
    let d = Device::default();
    let (a, w) = student_case(&d);
    let maps = attention_maps(a, w);
    assert_eq!(maps.dims(), [1, 2, 1, 2]);
    assert_eq!(value(maps.clone()), vec![1.0, 4.0, 0.0, 1.0]);
    // Joint min–max per sample: min 0, max 4.
    let n = value(normalise_maps(maps));
    for (x, y) in n.iter().zip([0.25, 1.0, 0.0, 0.25]) {
        close(*x, y, 1e-5);
    }
}

#[test]
fn at_plus_by_hand() {
    let d = Device::default();
    let (a, w) = student_case(&d);
    // Teacher: 1 channel [1, 1], W_t = [[1], [1]] → both maps [0.5, 0.5]: constant, so its
    // normalised map is 0 everywhere (the ε keeps it finite).
    // RMSE = √((0.25² + 1² + 0² + 0.25²)/4) = √(1.125/4).
    let ta = t4(vec![1.0, 1.0], [1, 1, 1, 2], &d);
    let tw = t2(vec![1.0, 1.0], [2, 1], &d);
    let loss = value(at_plus(a, w, ta, tw))[0];
    close(loss, (1.125f32 / 4.0).sqrt(), 1e-4);
}

#[test]
fn at_plus_resizes_the_teacher_map_by_area_average() {
    let d = Device::default();
    let m = t4(vec![1.0, 2.0, 3.0, 6.0], [1, 1, 2, 2], &d);
    assert_eq!(value(resize_maps(m, 1)), vec![3.0]);
    // Student 1×1 grid: α = W, maps [ReLU(1) + ReLU(−1), ReLU(1) + ReLU(1)] = [1, 2] →
    // normalised [0, 1]. Teacher 2×2 A = [1, 2, 3, 4], W_t = [[1], [−1]], α = ±1/4:
    // class 0 = A/4, class 1 = 0; area average to 1×1: [0.625, 0] → normalised [1, 0].
    // RMSE([0, 1], [1, 0]) = 1. (Normalising before resizing would give ≈ 0.83.)
    let sa = t4(vec![1.0, -1.0], [1, 2, 1, 1], &d);
    let sw = t2(vec![1.0, 1.0, 1.0, -1.0], [2, 2], &d);
    let ta = t4(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2], &d);
    let tw = t2(vec![1.0, -1.0], [2, 1], &d);
    let loss = value(at_plus(sa, sw, ta, tw))[0];
    close(loss, 1.0, 1e-4);
}

#[test]
fn at_plus_gradient_reaches_features_and_classifier_weights() {
    let d = Device::default().autodiff();
    let (a, w) = student_case(&d);
    let a = a.require_grad();
    let w = w.require_grad();
    let ta = t4(vec![3.0, 1.0], [1, 1, 1, 2], &d);
    let tw = t2(vec![1.0, 0.2], [2, 1], &d);
    let loss = at_plus(a.clone(), w.clone(), ta, tw);
    let grads = loss.backward();
    let ga = value(a.grad(&grads).expect("gradient into the feature maps"));
    let gw = value(
        w.grad(&grads)
            .expect("gradient into the classifier weights"),
    );
    assert!(
        ga.iter().any(|g| g.abs() > 1e-6),
        "feature gradient is zero: {ga:?}"
    );
    assert!(
        gw.iter().any(|g| g.abs() > 1e-6),
        "weight gradient is zero: {gw:?}"
    );
    assert!(ga.iter().chain(&gw).all(|g| g.is_finite()));
}
