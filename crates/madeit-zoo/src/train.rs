//! The training loop: mini-batch Adam on the cross-entropy of cosine logits, with a warm-up
//! and cosine learning-rate schedule, deterministic for a given seed.
//!
//! One step on a batch `(x_i, y_i)`, `i = 1..B`:
//!
//! ```text
//! e_i      = f_theta(x_i)                                  (pooled image embedding)
//! logit_ic = s * <e_i / ||e_i||, w_c / ||w_c||>            (cosine logits, scale s)
//! loss     = -(1/B) sum_i log softmax(logit_i)_{y_i}
//! theta   <- Adam(theta, grad loss, lr_t)
//! ```
//!
//! The class matrix `W` is trainable during pretraining (a cosine classifier over the
//! pretraining classes) and frozen during fine-tuning (the task's head, `s = 100`, CLIP's
//! logit scale), where only the vision tower moves.
//!
//! Determinism: batches come from a ChaCha8 stream seeded with the configuration's seed
//! (Fisher–Yates shuffles written out here, so they cannot change with a `rand` release);
//! initial weights from [`crate::model::init_params`]. burn's flex backend parallelises matrix
//! products over output blocks and its reductions over rows, so results do not depend on
//! thread timing; the unit tests check that two trainings give bit-identical weights.

use burn::module::Param;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use madeit_data::ImageSet;
pub(crate) use madeit_data::split::{below, shuffle};
use madeit_vit::ClipVisionModel;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ZooError};
use crate::model::{download, matrix_tensor, pixels_tensor};

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of optimizer steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up from `lr / warmup_steps` to `lr`.
    pub warmup_steps: usize,
    /// Decoupled weight decay (AdamW) when positive; plain Adam when 0.
    pub weight_decay: f32,
    /// Largest random translation, in pixels, applied to each training image (0 = none);
    /// uncovered pixels repeat the nearest edge pixel.
    pub max_shift: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 64,
            lr: 1e-3,
            warmup_steps: 10,
            weight_decay: 0.0,
            max_shift: 0,
        }
    }
}

impl TrainConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`ZooError::InvalidConfig`] naming the first bad field.
    pub fn check(&self) -> Result<()> {
        let bad = |field: &'static str, reason: &str| {
            Err(ZooError::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        if self.steps == 0 {
            return bad("steps", "must be positive");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be positive");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", "must be finite and positive");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", "must be finite and non-negative");
        }
        if self.max_shift > 8 {
            return bad("max_shift", "must be at most 8 pixels");
        }
        Ok(())
    }

    /// The learning rate of step `t` (0-based): linear warm-up
    /// `lr (t + 1) / warmup` for `t < warmup`, then the cosine decay
    /// `lr (1 + cos(pi (t - warmup) / (steps - warmup))) / 2`.
    #[must_use]
    pub fn lr_at(&self, t: usize) -> f64 {
        if t < self.warmup_steps {
            return self.lr * (t + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((t - self.warmup_steps) as f64 / span).min(1.0);
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The classes a training run separates: a `[classes, dim]` matrix `W` and the logit scale
/// `s` of `s cos(e, w_c)`.
#[derive(Module, Debug)]
pub struct CosineClassifier {
    weight: Param<Tensor<2>>,
    #[module(skip)]
    scale: f32,
}

impl CosineClassifier {
    /// A classifier with the given rows (`[classes, dim]`, row-major); `trainable` selects
    /// whether the optimizer updates them.
    ///
    /// # Errors
    /// [`ZooError::InvalidData`] when `weight.len() != classes * dim` or it is empty.
    pub fn new(
        weight: Vec<f32>,
        classes: usize,
        dim: usize,
        scale: f32,
        trainable: bool,
        device: &Device,
    ) -> Result<Self> {
        if classes == 0 || dim == 0 || weight.len() != classes * dim {
            return Err(ZooError::InvalidData {
                what: "classifier".into(),
                reason: format!("{} numbers for [{classes}, {dim}]", weight.len()),
            });
        }
        let t = matrix_tensor(weight, classes, dim, device);
        Ok(Self {
            weight: Param::from_tensor(t).set_require_grad(trainable),
            scale,
        })
    }

    /// A trainable classifier with rows `~ N(0, 1)` from a ChaCha8 stream seeded with
    /// `seed` (Box–Muller on uniform draws).
    ///
    /// # Errors
    /// As [`CosineClassifier::new`].
    pub fn random(
        classes: usize,
        dim: usize,
        scale: f32,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let weight = (0..classes * dim)
            .map(|_| standard_normal(&mut rng))
            .collect();
        Self::new(weight, classes, dim, scale, true, device)
    }

    /// Logits `s * normalize(e) normalize(W)^T`, `[batch, classes]`.
    #[must_use]
    pub fn logits(&self, embeds: Tensor<2>) -> Tensor<2> {
        let w = self.weight.val();
        let w = w.clone() / w.square().sum_dim(1).sqrt().clamp_min(1e-12);
        let e = embeds.clone() / embeds.square().sum_dim(1).sqrt().clamp_min(1e-12);
        e.matmul(w.transpose()) * self.scale
    }

    /// The rows, `[classes, dim]` row-major.
    ///
    /// # Errors
    /// [`ZooError::Backend`] on read failure.
    pub fn weight(&self) -> Result<Vec<f32>> {
        download(&self.weight.val())
    }
}

/// A standard normal draw (Box–Muller), independent of `rand_distr`'s algorithms.
fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// The tower and its classifier, trained together.
#[derive(Module, Debug)]
pub struct Trainee {
    /// The vision tower.
    pub vit: ClipVisionModel,
    /// The classifier (frozen or not).
    pub classifier: CosineClassifier,
}

/// What a training run reports after each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// Steps done (1-based).
    pub step: usize,
    /// Total steps.
    pub steps: usize,
    /// Loss of this step's batch.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
}

/// Summary of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainLog {
    /// Mean loss of the first 10 % of steps.
    pub first_loss: f32,
    /// Mean loss of the last 10 % of steps.
    pub last_loss: f32,
    /// Loss of every step.
    pub losses: Vec<f32>,
    /// Images seen (`steps * batch_size`).
    pub images_seen: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Endless batches of indices `0..n`: each pass is a fresh shuffle; a batch that crosses the
/// end of a pass continues into the next, so every batch has the same size.
pub(crate) struct Batches {
    order: Vec<usize>,
    pos: usize,
    rng: ChaCha8Rng,
}

impl Batches {
    pub(crate) fn new(n: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut rng);
        Self { order, pos: 0, rng }
    }

    pub(crate) fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(size);
        while out.len() < size && !self.order.is_empty() {
            if self.pos == self.order.len() {
                shuffle(&mut self.order, &mut self.rng);
                self.pos = 0;
            }
            let take = (size - out.len()).min(self.order.len() - self.pos);
            out.extend_from_slice(
                self.order
                    .get(self.pos..self.pos + take)
                    .unwrap_or_default(),
            );
            self.pos += take;
        }
        out
    }

    /// A shift in `-max..=max` for augmentation.
    fn shift(&mut self, max: usize) -> isize {
        if max == 0 {
            return 0;
        }
        below(&mut self.rng, 2 * max as u64 + 1) as isize - max as isize
    }
}

/// Normalised pixels `[len, C, H, W]` of `set`'s images at `indices`, each translated by
/// `(dy, dx)` from `shifts` when given. Uncovered pixels repeat the nearest edge pixel
/// (`out[y][x] = in[clamp(y - dy)][clamp(x - dx)]`), so the fill matches the background
/// whatever its colour.
pub(crate) fn batch_pixels(
    set: &ImageSet,
    indices: &[usize],
    shifts: Option<&[(isize, isize)]>,
) -> Result<Vec<f32>> {
    let mut x = set.normalized_nchw(indices, &madeit_data::NORM_MEAN, &madeit_data::NORM_STD)?;
    let Some(shifts) = shifts else { return Ok(x) };
    let (c, h, w) = (set.channels, set.height, set.width);
    let len = c * h * w;
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    let mut tmp = vec![0.0f32; len];
    for (img, &(dy, dx)) in x.chunks_exact_mut(len).zip(shifts) {
        if dy == 0 && dx == 0 {
            continue;
        }
        for ch in 0..c {
            for y in 0..h {
                let sy = clamp(y as isize - dy, h);
                for xx in 0..w {
                    let sx = clamp(xx as isize - dx, w);
                    if let (Some(t), Some(&v)) = (
                        tmp.get_mut(ch * h * w + y * w + xx),
                        img.get(ch * h * w + sy * w + sx),
                    ) {
                        *t = v;
                    }
                }
            }
        }
        img.copy_from_slice(&tmp);
    }
    Ok(x)
}

/// Mean cross-entropy `-(1/B) sum_i log softmax(logits_i)_{y_i}` for `[B, K]` logits.
pub(crate) fn cross_entropy(logits: Tensor<2>, labels: &[u32]) -> Tensor<1> {
    let [b, k] = logits.dims();
    let mut onehot = vec![0.0f32; b * k];
    for (i, &y) in labels.iter().enumerate() {
        if let Some(v) = onehot.get_mut(i * k + y as usize) {
            *v = 1.0;
        }
    }
    let device = logits.device().without_autodiff();
    let target = matrix_tensor(onehot, b, k, &device);
    (log_softmax(logits, 1) * target).sum().neg() / b.max(1) as f64
}

fn optimizer(cfg: &TrainConfig) -> ModuleOptimizer {
    if cfg.weight_decay > 0.0 {
        AdamWConfig::new()
            .with_weight_decay(cfg.weight_decay)
            .init()
    } else {
        AdamConfig::new().init()
    }
}

/// Trains `trainee` on `data` (every label must be a class of the classifier) for
/// `cfg.steps` steps, calling `on_step` after each. `seed` drives batch order and
/// augmentation. `stage` names the run in errors.
///
/// # Errors
/// [`ZooError::InvalidConfig`] for a bad configuration, [`ZooError::InvalidData`] for empty
/// data or images that do not fit the tower, [`ZooError::Diverged`] when the loss is not
/// finite, and the errors of the forward.
pub fn train(
    mut trainee: Trainee,
    data: &ImageSet,
    cfg: &TrainConfig,
    seed: u64,
    stage: &str,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<(Trainee, TrainLog)> {
    cfg.check()?;
    let vc = trainee.vit.config().clone();
    if data.n == 0 {
        return Err(ZooError::InvalidData {
            what: stage.into(),
            reason: "no training images".into(),
        });
    }
    if (data.height, data.width, data.channels) != (vc.image_size, vc.image_size, vc.num_channels) {
        return Err(ZooError::InvalidData {
            what: stage.into(),
            reason: format!(
                "images are {}x{}x{}, the tower takes {}x{}x{}",
                data.height,
                data.width,
                data.channels,
                vc.image_size,
                vc.image_size,
                vc.num_channels
            ),
        });
    }
    let classes = trainee.classifier.weight.val().dims()[0];
    if let Some(l) = data.labels.iter().find(|&&l| l as usize >= classes) {
        return Err(ZooError::InvalidData {
            what: stage.into(),
            reason: format!("label {l} but the classifier has {classes} classes"),
        });
    }
    let device = trainee.classifier.weight.val().device();
    let start = std::time::Instant::now();
    let mut optim = optimizer(cfg);
    let mut batches = Batches::new(data.n, seed);
    let mut losses = Vec::with_capacity(cfg.steps);
    for t in 0..cfg.steps {
        let idx = batches.next_batch(cfg.batch_size);
        let shifts: Option<Vec<(isize, isize)>> = (cfg.max_shift > 0).then(|| {
            idx.iter()
                .map(|_| (batches.shift(cfg.max_shift), batches.shift(cfg.max_shift)))
                .collect()
        });
        let labels: Vec<u32> = idx
            .iter()
            .map(|&i| data.labels.get(i).copied().unwrap_or(0))
            .collect();
        let x = pixels_tensor(
            batch_pixels(data, &idx, shifts.as_deref())?,
            idx.len(),
            &vc,
            &device,
        );
        let emb = trainee.vit.forward(x)?.pooled_output;
        let loss = cross_entropy(trainee.classifier.logits(emb), &labels);
        let value = download(&loss.clone().without_autodiff())?
            .first()
            .copied()
            .unwrap_or(f32::NAN);
        if !value.is_finite() {
            return Err(ZooError::Diverged {
                stage: stage.into(),
                step: t,
                loss: value,
            });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &trainee);
        let lr = cfg.lr_at(t);
        trainee = optim.step(lr, trainee, grads);
        losses.push(value);
        on_step(&StepInfo {
            step: t + 1,
            steps: cfg.steps,
            loss: value,
            lr,
        });
    }
    let tenth = (losses.len() / 10).max(1);
    let mean = |s: &[f32]| s.iter().map(|&x| f64::from(x)).sum::<f64>() / s.len().max(1) as f64;
    let log = TrainLog {
        first_loss: mean(losses.get(..tenth).unwrap_or_default()) as f32,
        last_loss: mean(losses.get(losses.len() - tenth..).unwrap_or_default()) as f32,
        losses,
        images_seen: cfg.steps * cfg.batch_size,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((trainee, log))
}
