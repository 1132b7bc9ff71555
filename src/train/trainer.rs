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
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::cnn::{Cnn, CnnConfig, floats};
use super::data::{
    AugmentConfig, ImageSet, Splits, StudentRead, augment, balanced_epoch, one_hot, rng_for,
    student_view, to_tensor,
};
use super::history::EpochLog;
use super::loss::{LossWeights, at_plus, cross_entropy, feature_matching, knowledge_distillation};
use crate::dataset::scores::Metrics;

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
    /// How views are drawn from the (high-resolution) training images.
    #[serde(default)]
    pub augment: AugmentConfig,
    /// How the model's input is made from a view when it is smaller than the view (a
    /// Student): as patch sets are made, as grading reads a slide, or both.
    #[serde(default)]
    pub student_read: StudentRead,
    /// Views per training image when distilling: each image has this many fixed
    /// augmented views, and each epoch uses one of them, so that the Teacher's outputs
    /// for a view are computed once ([`TeacherCache`]). 0: a fresh view every time (and
    /// the Teacher runs on every step). Every run given a Teacher (CE-only Students too)
    /// draws from these views, so that the rows of a replicate are paired on their data;
    /// a run without one (the Teacher itself) draws fresh views.
    #[serde(default)]
    pub views_per_image: usize,
    /// Start from these weights (a `best-model.bpk` of the same architecture) instead
    /// of a random initialisation: fine-tuning.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// How the learning rate changes over the run.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
}

/// Learning rate over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `lr` throughout.
    Constant,
    /// Cosine decay from `lr` to 0 over all steps (Loshchilov and Hutter, without
    /// restarts). With a constant rate the validation accuracy of the Teacher on focal
    /// patches swung by 20 points from one epoch to the next, so "the best validation
    /// epoch" was mostly luck.
    #[default]
    Cosine,
}

impl LrSchedule {
    /// The rate at `step` of `total` steps.
    pub fn at(self, lr: f64, step: usize, total: usize) -> f64 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                0.5 * lr * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
        }
    }
}

/// A trained model in inference mode, used as the source of distillation.
pub struct Teacher {
    pub model: Cnn,
    pub input_size: u32,
    /// Its outputs on the fixed views of a training set, shared by every Student
    /// distilled from it.
    pub cache: TeacherCache,
}

impl Teacher {
    pub fn new(model: Cnn, input_size: u32) -> Teacher {
        Teacher {
            model,
            input_size,
            cache: TeacherCache::default(),
        }
    }
}

/// The Teacher's logits and last feature maps (from which FM's target and AT+'s maps are
/// computed; both are a few small tensor ops, the forward pass is the cost) per fixed
/// augmented view, keyed by `(view seed, image index, view index)`. A Student's step
/// looks its batch up and runs the Teacher only on the views never seen before, so all
/// Students after the first distil at about the cost of a CE-only Student.
///
/// Valid for one training set: a caller that trains on other data with the same Teacher
/// must [`clear`](TeacherCache::clear) it.
#[derive(Default)]
pub struct TeacherCache {
    entries: std::cell::RefCell<std::collections::HashMap<(u64, usize, usize), CachedOutput>>,
    hits: std::cell::Cell<usize>,
    misses: std::cell::Cell<usize>,
}

struct CachedOutput {
    logits: Vec<f32>,
    features: Vec<f32>,
}

impl TeacherCache {
    pub fn clear(&self) {
        self.entries.borrow_mut().clear();
    }

    /// Lookups answered from the cache and lookups that ran the Teacher, so far.
    pub fn hits_and_misses(&self) -> (usize, usize) {
        (self.hits.get(), self.misses.get())
    }
}

/// The Teacher's outputs for one batch of views, on the training device.
struct TeacherBatch {
    logits: Tensor<2>,
    features: Tensor<4>,
}

impl Teacher {
    /// The Teacher's outputs for `views`, whose cache keys are `keys` (None: no cache).
    fn outputs(
        &self,
        views: &[&image::RgbImage],
        keys: Option<&[(u64, usize, usize)]>,
        plain: &Device,
        ad: &Device,
    ) -> anyhow::Result<TeacherBatch> {
        let Some(keys) = keys else {
            let out = self.model.forward(to_tensor(views, self.input_size, plain));
            return Ok(TeacherBatch {
                logits: out.logits.autodiff(),
                features: out.features.autodiff(),
            });
        };
        let missing: Vec<usize> = {
            let entries = self.cache.entries.borrow();
            (0..keys.len())
                .filter(|&i| !entries.contains_key(&keys[i]))
                .collect()
        };
        self.cache
            .hits
            .set(self.cache.hits.get() + keys.len() - missing.len());
        self.cache
            .misses
            .set(self.cache.misses.get() + missing.len());
        if !missing.is_empty() {
            let batch: Vec<&image::RgbImage> = missing.iter().map(|&i| views[i]).collect();
            let out = self
                .model
                .forward(to_tensor(&batch, self.input_size, plain));
            let [n, classes] = out.logits.dims();
            let per = out.features.dims().iter().skip(1).product::<usize>();
            let logits = floats(out.logits.into_data())?;
            let features = floats(out.features.into_data())?;
            let mut entries = self.cache.entries.borrow_mut();
            for (j, &i) in missing.iter().enumerate().take(n) {
                entries.insert(
                    keys[i],
                    CachedOutput {
                        logits: logits[j * classes..(j + 1) * classes].to_vec(),
                        features: features[j * per..(j + 1) * per].to_vec(),
                    },
                );
            }
        }
        let entries = self.cache.entries.borrow();
        let [_, k, h, w] = self.feature_shape();
        let classes = self.model.weight.val().dims()[0];
        let mut logits = Vec::with_capacity(keys.len() * classes);
        let mut features = Vec::with_capacity(keys.len() * k * h * w);
        for key in keys {
            // Every key was inserted above.
            if let Some(e) = entries.get(key) {
                logits.extend_from_slice(&e.logits);
                features.extend_from_slice(&e.features);
            }
        }
        let n = keys.len();
        Ok(TeacherBatch {
            logits: Tensor::from_data(TensorData::new(logits, [n, classes]), ad),
            features: Tensor::from_data(TensorData::new(features, [n, k, h, w]), ad),
        })
    }

    /// `[1, K, h, w]` of the Teacher's last feature map.
    fn feature_shape(&self) -> [usize; 4] {
        let k = self.model.weight.val().dims()[1];
        let mut side = self.model.input_size;
        for layer in &self.model.layers {
            if layer.pool.is_some() {
                side /= 2;
            }
        }
        [1, k, side, side]
    }
}

/// The trainable part of a run: the network, plus the FM channel adapter when needed.
#[derive(Module, Debug)]
pub struct Trainable {
    pub net: Cnn,
    /// `[k_teacher, k_student]`, only when FM is on and the channel counts differ.
    pub adapter: Option<Param<Tensor<2>>>,
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

    let mut net = spec.model.init(&ad);
    if let Some(init) = &spec.init_from {
        net = net.try_load_file(init.clone()).map_err(|e| {
            anyhow::anyhow!("cannot load initial weights {}: {e:?}", init.display())
        })?;
    }
    let mut trainable = Trainable { net, adapter: None };
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
    // Every Student of a replicate draws from the same fixed views, CE-only ones too, so
    // that the rows compared are paired on their data as well as their seed.
    let pooled = teacher.is_some() && spec.views_per_image > 0;
    let view_size = teacher.map_or(size, |t| t.input_size);
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
            // A pooled view is a pure function of (seed, image, view index), so that the
            // Teacher's outputs for it can be cached and reused by every Student.
            let keys: Vec<(u64, usize, usize)> = batch
                .iter()
                .map(|&i| {
                    let v = if pooled {
                        rng.random_range(0..spec.views_per_image)
                    } else {
                        0
                    };
                    (spec.seed, i, v)
                })
                .collect();
            let views: Vec<_> = keys
                .iter()
                .map(|&(seed, i, v)| {
                    let img = &data.train.images[i];
                    if pooled {
                        augment(
                            img,
                            view_size,
                            &spec.augment,
                            &mut rng_for(seed, 3 + v as u64, i as u64),
                        )
                    } else {
                        augment(img, view_size, &spec.augment, &mut rng)
                    }
                })
                .collect();
            let refs: Vec<_> = views.iter().collect();
            // A Student's input is its own copy of the view; a run at the view's size (the
            // Teacher) takes the view itself.
            let student_inputs: Vec<_> = if view_size == size {
                Vec::new()
            } else {
                views
                    .iter()
                    .map(|v| student_view(v, size, spec.student_read, &mut rng))
                    .collect()
            };
            let input_refs: Vec<_> = if view_size == size {
                refs.clone()
            } else {
                student_inputs.iter().collect()
            };
            let labels: Vec<usize> = batch.iter().map(|&i| data.train.labels[i]).collect();
            let x = to_tensor(&input_refs, size, &ad);
            let out = trainable.net.forward(x);
            let w = spec.weights;
            let ce = cross_entropy(out.logits.clone(), one_hot(&labels, classes, &ad));
            let mut loss = ce.clone().mul_scalar(w.ce);
            let mut parts = [0f64; 4];
            parts[0] = scalar(&ce);
            if let Some(t) = teacher.filter(|_| w.needs_teacher()) {
                let tout = t.outputs(&refs, pooled.then_some(&keys[..]), &plain, &ad)?;
                let t_logits = tout.logits;
                let t_features = tout.features;
                if w.kd != 0.0 {
                    let kd = knowledge_distillation(
                        out.logits.clone(),
                        t_logits,
                        w.temperature,
                        w.kd_t_squared,
                    );
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
            let lr = spec
                .lr_schedule
                .at(spec.lr, epoch * steps + step, spec.epochs * steps);
            trainable = optim.step(lr, trainable, grads);
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
        let val = evaluate(&trainable.net.valid(), &data.val, &plain)?;
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
    let val = evaluate(&best, &data.val, &plain)?;
    let test = if data.test.is_empty() {
        val.clone()
    } else {
        evaluate(&best, &data.test, &plain)?
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
pub fn predict(model: &Cnn, set: &ImageSet, device: &Device) -> anyhow::Result<Vec<usize>> {
    let size = model.input_size as u32;
    let mut out = Vec::with_capacity(set.len());
    for chunk in set.images.chunks(64) {
        let refs: Vec<_> = chunk.iter().collect();
        let logits = model.forward(to_tensor(&refs, size, device)).logits;
        let [n, c] = logits.dims();
        let v = floats(logits.into_data())?;
        for i in 0..n {
            let row = &v[i * c..(i + 1) * c];
            let arg = (0..c)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0);
            out.push(arg);
        }
    }
    Ok(out)
}

pub fn evaluate(model: &Cnn, set: &ImageSet, device: &Device) -> anyhow::Result<Metrics> {
    let predicted = predict(model, set, device)?;
    Ok(Metrics::from_labels(
        &set.labels,
        &predicted,
        model.weight.val().dims()[0],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_decays_from_lr_to_zero() {
        let s = LrSchedule::Cosine;
        assert_eq!(s.at(1e-3, 0, 100), 1e-3);
        assert!((s.at(1e-3, 50, 100) - 5e-4).abs() < 1e-12);
        assert!(s.at(1e-3, 100, 100).abs() < 1e-12);
        assert!(s.at(1e-3, 30, 100) > s.at(1e-3, 31, 100));
        assert_eq!(LrSchedule::Constant.at(1e-3, 99, 100), 1e-3);
    }
}
