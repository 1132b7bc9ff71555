//! The training loop: Adam, class-balanced oversampling, augmentation before downsampling,
//! best-validation-QWK epoch kept, checkpoint and resume, a progress bar, and the plots.
//!
//! One loop trains both roles: a Teacher is a run with CE only and no teacher; a Student
//! is a run whose [`LossWeights`] pull it toward a given [`Teacher`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::data::{ImageSet, Splits, augment, balanced_epoch, one_hot, rng_for, to_tensor};
use super::loss::{LossWeights, at_plus, cross_entropy, feature_matching, knowledge_distillation};
use super::model::{Cnn, CnnConfig};
use crate::dataset::metrics::Metrics;

/// Everything one run needs besides the data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSpec {
    pub name: String,
    pub model: CnnConfig,
    pub weights: LossWeights,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// Limit on optimiser steps per epoch (None: one pass over the balanced epoch).
    pub max_steps_per_epoch: Option<usize>,
}

/// A trained model in inference mode, used as the source of distillation.
pub struct Teacher {
    pub model: Cnn,
    pub input_size: u32,
}

/// The trainable part of a run: the network, plus the FM channel adapter when needed.
#[derive(Module, Debug)]
pub struct Trainable {
    pub net: Cnn,
    /// `[k_teacher, k_student]`, only when FM is on and the channel counts differ.
    pub adapter: Option<Param<Tensor<2>>>,
}

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

/// What is saved beside the checkpoint so a run can resume.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    spec: TrainSpec,
    /// Epochs done.
    epochs_done: usize,
    best_epoch: Option<usize>,
    best_qwk: f64,
    history: Vec<EpochLog>,
}

pub struct TrainOutcome {
    /// The best-validation-QWK model, in inference mode (plain device).
    pub model: Cnn,
    pub best_epoch: usize,
    pub val: Metrics,
    pub test: Metrics,
    pub history: Vec<EpochLog>,
    /// Mean training throughput (images per second, forward + backward + teacher).
    pub images_per_sec: f64,
    pub run_dir: PathBuf,
}

/// The autodiff device used for training and the plain one for inference.
pub fn devices() -> (Device, Device) {
    let plain = Device::default();
    (plain.clone(), plain.autodiff())
}

const STATE_FILE: &str = "state.json";
const MODEL_FILE: &str = "checkpoint-model.bpk";
const OPTIM_FILE: &str = "checkpoint-optim.bpk";
const BEST_FILE: &str = "best-model.bpk";

/// Trains one model. Checkpoints go to `run_dir` after every epoch; with `resume`, a run
/// whose `state.json` matches `spec` continues after its last finished epoch.
pub fn train(
    spec: &TrainSpec,
    data: &Splits,
    teacher: Option<&Teacher>,
    run_dir: &Path,
    resume: bool,
) -> Result<TrainOutcome> {
    if data.train.is_empty() || data.val.is_empty() {
        bail!("training needs train and validation samples");
    }
    if spec.weights.needs_teacher() && teacher.is_none() {
        bail!("{}: KD, FM and AT+ need a teacher", spec.name);
    }
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let (plain, ad) = devices();
    ad.seed(spec.seed);
    let classes = spec.model.classes;
    let size = spec.model.input_size as u32;

    let mut trainable = Trainable {
        net: spec.model.init(&ad),
        adapter: None,
    };
    if let Some(t) = teacher {
        let kt = t.model.weight.val().dims()[1];
        let ks = spec.model.feature_channels();
        if spec.weights.fm != 0.0 && kt != ks {
            trainable.adapter = Some(
                Initializer::KaimingUniform {
                    gain: 1.0 / 3f64.sqrt(),
                    fan_out_only: false,
                }
                .init_with([kt, ks], Some(ks), Some(kt), &ad),
            );
        }
    }
    let mut optim = AdamConfig::new().init();
    let mut state = RunState {
        spec: spec.clone(),
        epochs_done: 0,
        best_epoch: None,
        best_qwk: f64::NEG_INFINITY,
        history: Vec::new(),
    };

    let state_path = run_dir.join(STATE_FILE);
    if resume && state_path.exists() {
        let saved: RunState = serde_json::from_str(&std::fs::read_to_string(&state_path)?)
            .with_context(|| format!("cannot parse {}", state_path.display()))?;
        if serde_json::to_value(&saved.spec)? == serde_json::to_value(spec)? {
            trainable = trainable
                .try_load_file(run_dir.join(MODEL_FILE))
                .map_err(|e| anyhow::anyhow!("cannot load checkpoint: {e:?}"))?;
            optim = optim
                .load(run_dir.join(OPTIM_FILE))
                .map_err(|e| anyhow::anyhow!("cannot load optimiser state: {e:?}"))?;
            eprintln!(
                "{}: resuming after epoch {} of {}",
                spec.name, saved.epochs_done, spec.epochs
            );
            state = saved;
        } else {
            eprintln!(
                "{}: checkpoint is for other settings; starting afresh",
                spec.name
            );
        }
    }

    let mut total_images = 0usize;
    let mut total_secs = 0f64;
    for epoch in state.epochs_done..spec.epochs {
        let mut rng = rng_for(spec.seed, 1, epoch as u64);
        let mut order = balanced_epoch(&data.train.labels, classes, &mut rng);
        if let Some(max) = spec.max_steps_per_epoch {
            order.truncate(max * spec.batch_size);
        }
        let steps = order.len().div_ceil(spec.batch_size);
        let bar = indicatif::ProgressBar::new(steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} {bar:20} {pos}/{len} {elapsed}<{eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{} epoch {}/{}", spec.name, epoch + 1, spec.epochs));
        let mut sums = [0f64; 5];
        let started = Instant::now();
        for (step, batch) in order.chunks(spec.batch_size).enumerate() {
            let views: Vec<_> = batch
                .iter()
                .map(|&i| augment(&data.train.images[i], &mut rng))
                .collect();
            let refs: Vec<_> = views.iter().collect();
            let labels: Vec<usize> = batch.iter().map(|&i| data.train.labels[i]).collect();
            let x = to_tensor(&refs, size, &ad);
            let out = trainable.net.forward(x);
            let w = spec.weights;
            let ce = cross_entropy(out.logits.clone(), one_hot(&labels, classes, &ad));
            let mut loss = ce.clone().mul_scalar(w.ce);
            let mut parts = [0f64; 4];
            parts[0] = scalar(&ce);
            if let Some(t) = teacher.filter(|_| w.needs_teacher()) {
                let tx = to_tensor(&refs, t.input_size, &plain);
                let tout = t.model.forward(tx);
                let t_logits = tout.logits.autodiff();
                let t_features = tout.features.autodiff();
                if w.kd != 0.0 {
                    let kd = knowledge_distillation(out.logits.clone(), t_logits, w.temperature);
                    parts[1] = scalar(&kd);
                    loss = loss + kd.mul_scalar(w.kd);
                }
                if w.fm != 0.0 {
                    let fm = feature_matching(
                        out.features.clone(),
                        t_features.clone(),
                        trainable.adapter.as_ref().map(|a| a.val()),
                    );
                    parts[2] = scalar(&fm);
                    loss = loss + fm.mul_scalar(w.fm);
                }
                if w.at_plus != 0.0 {
                    let at = at_plus(
                        out.features.clone(),
                        trainable.net.weight.val(),
                        t_features,
                        t.model.weight.val().autodiff(),
                    );
                    parts[3] = scalar(&at);
                    loss = loss + at.mul_scalar(w.at_plus);
                }
            }
            let loss_value = scalar(&loss);
            if !loss_value.is_finite() {
                bail!(
                    "{}: loss became {loss_value} at epoch {}",
                    spec.name,
                    epoch + 1
                );
            }
            let grads = GradientsParams::from_grads(loss.backward(), &trainable);
            trainable = optim.step(spec.lr, trainable, grads);
            sums[0] += loss_value;
            for (s, p) in sums[1..].iter_mut().zip(parts) {
                *s += p;
            }
            bar.inc(1);
            if step % 4 == 0 {
                let n = (step + 1) as f64;
                bar.set_message(format!(
                    "loss {:.3} ce {:.3} kd {:.3} fm {:.3} at+ {:.3}",
                    sums[0] / n,
                    sums[1] / n,
                    sums[2] / n,
                    sums[3] / n,
                    sums[4] / n
                ));
            }
        }
        let secs = started.elapsed().as_secs_f64();
        total_images += order.len();
        total_secs += secs;
        let val = evaluate(&trainable.net.valid(), &data.val, &plain);
        let n = steps.max(1) as f64;
        let log = EpochLog {
            epoch: epoch + 1,
            loss: sums[0] / n,
            ce: sums[1] / n,
            kd: sums[2] / n,
            fm: sums[3] / n,
            at_plus: sums[4] / n,
            val_balanced_accuracy: val.balanced_accuracy,
            val_qwk: val.qwk,
            val_macro_f1: val.macro_f1,
            images_per_sec: order.len() as f64 / secs.max(1e-9),
        };
        bar.finish_with_message(format!(
            "loss {:.3} | val bal.acc {:.3} QWK {:.3} F1 {:.3} | {:.1} img/s",
            log.loss, log.val_balanced_accuracy, log.val_qwk, log.val_macro_f1, log.images_per_sec
        ));
        if val.qwk > state.best_qwk || state.best_epoch.is_none() {
            state.best_qwk = val.qwk;
            state.best_epoch = Some(epoch + 1);
            trainable
                .net
                .clone()
                .save_file(run_dir.join(BEST_FILE))
                .map_err(|e| anyhow::anyhow!("cannot save best model: {e:?}"))?;
        }
        state.history.push(log);
        state.epochs_done = epoch + 1;
        trainable
            .clone()
            .save_file(run_dir.join(MODEL_FILE))
            .map_err(|e| anyhow::anyhow!("cannot save checkpoint: {e:?}"))?;
        optim
            .save(run_dir.join(OPTIM_FILE))
            .map_err(|e| anyhow::anyhow!("cannot save optimiser state: {e:?}"))?;
        std::fs::write(&state_path, serde_json::to_string_pretty(&state)?)?;
    }

    let best = spec
        .model
        .init(&ad)
        .try_load_file(run_dir.join(BEST_FILE))
        .map_err(|e| anyhow::anyhow!("cannot load best model: {e:?}"))?
        .valid();
    let val = evaluate(&best, &data.val, &plain);
    let test = if data.test.is_empty() {
        val.clone()
    } else {
        evaluate(&best, &data.test, &plain)
    };
    let images_per_sec = if total_secs > 0.0 {
        total_images as f64 / total_secs
    } else {
        state.history.iter().map(|h| h.images_per_sec).sum::<f64>()
            / state.history.len().max(1) as f64
    };
    super::plot::training_curves(&state.history, &spec.name, &run_dir.join("curves.png"))?;
    super::plot::confusion_matrix(
        &test.confusion,
        &format!("{} (test)", spec.name),
        &run_dir.join("confusion.png"),
    )?;
    Ok(TrainOutcome {
        model: best,
        best_epoch: state.best_epoch.unwrap_or(0),
        val,
        test,
        history: state.history,
        images_per_sec,
        run_dir: run_dir.to_path_buf(),
    })
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone()
        .into_data()
        .try_into_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .map_or(f64::NAN, f64::from)
}

/// Predicted class of every image of `set` (model in inference mode).
pub fn predict(model: &Cnn, set: &ImageSet, device: &Device) -> Vec<usize> {
    let size = model.input_size as u32;
    let mut out = Vec::with_capacity(set.len());
    for chunk in set.images.chunks(64) {
        let refs: Vec<_> = chunk.iter().collect();
        let logits = model.forward(to_tensor(&refs, size, device)).logits;
        let [n, c] = logits.dims();
        let v = logits.into_data().try_into_vec::<f32>().unwrap_or_default();
        for i in 0..n {
            let row = &v[i * c..(i + 1) * c];
            let arg = (0..c)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0);
            out.push(arg);
        }
    }
    out
}

pub fn evaluate(model: &Cnn, set: &ImageSet, device: &Device) -> Metrics {
    let predicted = predict(model, set, device);
    Metrics::from_labels(&set.labels, &predicted, model.weight.val().dims()[0])
}
