//! Classification metrics of the paper: balanced accuracy, quadratic-weighted Cohen's kappa
//! (QWK), macro F1, per-class recall, and the confusion matrix they all come from.
//!
//! Conventions (the same as scikit-learn's): a class with no true samples is left out of
//! balanced accuracy and gets recall 0 in [`Metrics::recall`]; F1 of a class with no true
//! and no predicted samples is 0; QWK of a perfectly agreeing but constant labelling (where
//! the expected disagreement is 0) is 1.

use serde::{Deserialize, Serialize};

/// `matrix[t][p]` counts samples of true class `t` predicted as `p`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub matrix: Vec<Vec<u64>>,
}

impl ConfusionMatrix {
    /// Counts `(truth, prediction)` pairs over `classes` classes.
    ///
    /// # Panics
    /// If the slices differ in length or a label is `≥ classes`.
    pub fn new(truth: &[usize], predicted: &[usize], classes: usize) -> ConfusionMatrix {
        assert_eq!(
            truth.len(),
            predicted.len(),
            "truth and predictions differ in length"
        );
        let mut matrix = vec![vec![0u64; classes]; classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            assert!(t < classes && p < classes, "label out of range");
            matrix[t][p] += 1;
        }
        ConfusionMatrix { matrix }
    }

    pub fn classes(&self) -> usize {
        self.matrix.len()
    }

    pub fn total(&self) -> u64 {
        self.matrix.iter().flatten().sum()
    }

    fn row_sum(&self, t: usize) -> u64 {
        self.matrix[t].iter().sum()
    }

    fn col_sum(&self, p: usize) -> u64 {
        self.matrix.iter().map(|r| r[p]).sum()
    }
}

/// Every metric of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub qwk: f64,
    pub macro_f1: f64,
    /// Recall of each class (0 for a class with no true samples).
    pub recall: Vec<f64>,
    pub confusion: ConfusionMatrix,
}

impl Metrics {
    pub fn from_labels(truth: &[usize], predicted: &[usize], classes: usize) -> Metrics {
        Metrics::from_confusion(ConfusionMatrix::new(truth, predicted, classes))
    }

    pub fn from_confusion(confusion: ConfusionMatrix) -> Metrics {
        Metrics {
            accuracy: accuracy(&confusion),
            balanced_accuracy: balanced_accuracy(&confusion),
            qwk: quadratic_weighted_kappa(&confusion),
            macro_f1: macro_f1(&confusion),
            recall: recall(&confusion),
            confusion,
        }
    }

    /// Name → value, as recorded in `model.json`.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, f64> {
        let mut m = std::collections::BTreeMap::new();
        m.insert("accuracy".to_string(), self.accuracy);
        m.insert("balanced_accuracy".to_string(), self.balanced_accuracy);
        m.insert("qwk".to_string(), self.qwk);
        m.insert("macro_f1".to_string(), self.macro_f1);
        m
    }
}

pub fn accuracy(cm: &ConfusionMatrix) -> f64 {
    let total = cm.total();
    if total == 0 {
        return 0.0;
    }
    (0..cm.classes()).map(|c| cm.matrix[c][c]).sum::<u64>() as f64 / total as f64
}

/// Recall of each class: `cm[c][c] / Σ_p cm[c][p]` (0 when the class has no samples).
pub fn recall(cm: &ConfusionMatrix) -> Vec<f64> {
    (0..cm.classes())
        .map(|c| {
            let n = cm.row_sum(c);
            if n == 0 {
                0.0
            } else {
                cm.matrix[c][c] as f64 / n as f64
            }
        })
        .collect()
}

/// Mean recall over the classes that have at least one true sample.
pub fn balanced_accuracy(cm: &ConfusionMatrix) -> f64 {
    let present: Vec<usize> = (0..cm.classes()).filter(|&c| cm.row_sum(c) > 0).collect();
    if present.is_empty() {
        return 0.0;
    }
    let r = recall(cm);
    present.iter().map(|&c| r[c]).sum::<f64>() / present.len() as f64
}

/// Unweighted mean of the per-class F1 = 2·tp / (2·tp + fp + fn), over all classes.
pub fn macro_f1(cm: &ConfusionMatrix) -> f64 {
    let k = cm.classes();
    if k == 0 {
        return 0.0;
    }
    let sum: f64 = (0..k)
        .map(|c| {
            let tp = cm.matrix[c][c] as f64;
            let fp = cm.col_sum(c) as f64 - tp;
            let fneg = cm.row_sum(c) as f64 - tp;
            let denom = 2.0 * tp + fp + fneg;
            if denom == 0.0 { 0.0 } else { 2.0 * tp / denom }
        })
        .sum();
    sum / k as f64
}

/// Cohen's kappa with quadratic weights `w_ij = (i−j)² / (k−1)²`:
/// `1 − Σ w·O / Σ w·E`, where `E` is the outer product of the marginals over the total.
pub fn quadratic_weighted_kappa(cm: &ConfusionMatrix) -> f64 {
    let k = cm.classes();
    let total = cm.total() as f64;
    if k < 2 || total == 0.0 {
        return 0.0;
    }
    let rows: Vec<f64> = (0..k).map(|i| cm.row_sum(i) as f64).collect();
    let cols: Vec<f64> = (0..k).map(|j| cm.col_sum(j) as f64).collect();
    let (mut observed, mut expected) = (0.0, 0.0);
    for (i, row) in rows.iter().enumerate() {
        for (j, col) in cols.iter().enumerate() {
            let w = ((i as f64 - j as f64) / (k as f64 - 1.0)).powi(2);
            observed += w * cm.matrix[i][j] as f64;
            expected += w * row * col / total;
        }
    }
    if expected == 0.0 {
        return if observed == 0.0 { 1.0 } else { 0.0 };
    }
    1.0 - observed / expected
}

/// Mean and sample standard deviation (n − 1; 0 for fewer than two values).
/// The mean of paired differences `a_i − b_i` with its two-sided 95% confidence interval
/// (Student's t with n − 1 degrees of freedom).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedDifference {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation of the differences.
    pub std: f64,
    pub ci95: (f64, f64),
}

/// Paired difference of `a` and `b` (same length, same pairing order). `None` for fewer
/// than two pairs: one pair has no spread, and no interval can be given.
pub fn paired_difference(a: &[f64], b: &[f64]) -> Option<PairedDifference> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (mean, std) = mean_std(&d);
    let half = t_975(d.len() - 1) * std / (d.len() as f64).sqrt();
    Some(PairedDifference {
        n: d.len(),
        mean,
        std,
        ci95: (mean - half, mean + half),
    })
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom (table to 30, then
/// a 1/df interpolation towards the normal's 1.96, within 0.3% of the exact value).
pub fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => 1.96 + (2.042 - 1.96) * 30.0 / df as f64,
    }
}

pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn paired_difference_by_hand() {
        // Differences 1, 2, 3: mean 2, sd 1, half-width t(2)·1/√3 = 4.303/√3.
        let d = paired_difference(&[11.0, 12.0, 13.0], &[10.0, 10.0, 10.0]).unwrap();
        assert_eq!(d.n, 3);
        close(d.mean, 2.0);
        close(d.std, 1.0);
        let half = 4.303 / 3f64.sqrt();
        close(d.ci95.0, 2.0 - half);
        close(d.ci95.1, 2.0 + half);
        // Pairing matters: the same values unpaired differ in order, not in the mean.
        let swapped = paired_difference(&[13.0, 12.0, 11.0], &[10.0, 10.0, 10.0]).unwrap();
        close(swapped.mean, 2.0);
        assert!(
            paired_difference(&[1.0], &[0.0]).is_none(),
            "one pair has no interval"
        );
        assert!(
            paired_difference(&[1.0, 2.0], &[0.0]).is_none(),
            "unpaired lengths"
        );
        assert!(t_975(200) > 1.96 && t_975(200) < t_975(30));
    }

    // truth:     0 0 0 1 1 2 2 2 3 3
    // predicted: 0 0 1 1 2 2 2 3 3 0
    // Confusion (rows = truth):
    //   [2 1 0 0]
    //   [0 1 1 0]
    //   [0 0 2 1]
    //   [1 0 0 1]
    const TRUTH: [usize; 10] = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3];
    const PRED: [usize; 10] = [0, 0, 1, 1, 2, 2, 2, 3, 3, 0];

    #[test]
    fn confusion_matrix_by_hand() {
        let cm = ConfusionMatrix::new(&TRUTH, &PRED, 4);
        assert_eq!(
            cm.matrix,
            vec![
                vec![2, 1, 0, 0],
                vec![0, 1, 1, 0],
                vec![0, 0, 2, 1],
                vec![1, 0, 0, 1]
            ]
        );
        assert_eq!(cm.total(), 10);
    }

    #[test]
    fn recall_and_balanced_accuracy_by_hand() {
        let m = Metrics::from_labels(&TRUTH, &PRED, 4);
        // Recalls: 2/3, 1/2, 2/3, 1/2.
        let r = [2.0 / 3.0, 0.5, 2.0 / 3.0, 0.5];
        for (a, b) in m.recall.iter().zip(r) {
            close(*a, b);
        }
        close(
            m.balanced_accuracy,
            (2.0 / 3.0 + 0.5 + 2.0 / 3.0 + 0.5) / 4.0,
        );
        close(m.accuracy, 0.6);
    }

    #[test]
    fn macro_f1_by_hand() {
        // F1 = 2tp / (2tp + fp + fn).
        // Class 0: tp 2, fp 1 (from class 3), fn 1 → 4/6 = 2/3.
        // Class 1: tp 1, fp 1, fn 1 → 2/4 = 1/2.
        // Class 2: tp 2, fp 1, fn 1 → 4/6 = 2/3.
        // Class 3: tp 1, fp 1, fn 1 → 1/2.
        let m = Metrics::from_labels(&TRUTH, &PRED, 4);
        close(m.macro_f1, (2.0 / 3.0 + 0.5 + 2.0 / 3.0 + 0.5) / 4.0);
    }

    #[test]
    fn qwk_by_hand() {
        // Rows (truth) = [3, 2, 3, 2], cols (pred) = [3, 2, 3, 2], N = 10, w = (i−j)²/9.
        // Observed Σ w·O: off-diagonal cells (0,1):1·1/9, (1,2):1·1/9, (2,3):1·1/9,
        // (3,0):1·9/9 → 3/9 + 1 = 12/9.
        // Expected E_ij = r_i·c_j/10; Σ_ij (i−j)²·r_i·c_j with r = c = [3,2,3,2]:
        //   i=0: 3·(0·3 + 1·2 + 4·3 + 9·2) = 3·32 = 96
        //   i=1: 2·(1·3 + 0·2 + 1·3 + 4·2) = 2·14 = 28
        //   i=2: 3·(4·3 + 1·2 + 0·3 + 1·2) = 3·16 = 48
        //   i=3: 2·(9·3 + 4·2 + 1·3 + 0·2) = 2·38 = 76
        //   total 248 → Σ w·E = 248 / (9·10).
        // κ = 1 − (12/9) / (248/90) = 1 − 120/248.
        let m = Metrics::from_labels(&TRUTH, &PRED, 4);
        close(m.qwk, 1.0 - 120.0 / 248.0);
    }

    #[test]
    fn perfect_and_degenerate_cases() {
        let m = Metrics::from_labels(&[0, 1, 2, 3], &[0, 1, 2, 3], 4);
        close(m.qwk, 1.0);
        close(m.balanced_accuracy, 1.0);
        close(m.macro_f1, 1.0);
        // A class absent from the truth is left out of balanced accuracy.
        let m = Metrics::from_labels(&[0, 0, 1], &[0, 1, 1], 4);
        close(m.balanced_accuracy, (0.5 + 1.0) / 2.0);
        // Reversed order is the worst agreement QWK can show for this marginal.
        let m = Metrics::from_labels(&[0, 3], &[3, 0], 4);
        assert!(m.qwk < -0.9, "{}", m.qwk);
    }

    #[test]
    fn mean_std_is_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        close(m, 2.0);
        close(s, 1.0);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }
}
