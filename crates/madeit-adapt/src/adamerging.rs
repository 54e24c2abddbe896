//! Continual layer-wise AdaMerging (`C. LW AdaMerging` of MINGLE's tables), a test-time
//! continual merger that learns one merging coefficient per parameter tensor by entropy
//! minimisation on the current task's unlabeled seed samples.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use burn::prelude::*;
use indexmap::IndexMap;
use madeit_params::{DType, ParamDict, Tensor as HostTensor};
use madeit_stream::{Ledger, MergedModel, ParameterError, StepReport, TaskId};
use madeit_vit::functional::{TowerTensors, forward};
use madeit_vit::{
    ClipVisionConfig, ClipVisionModel, ExpertBank, GateBank, GateTraining, GateValues,
    PROJECTION_WEIGHT, VISION_PREFIX, VitError, expected_tensors,
};
use serde::{Deserialize, Serialize};

use crate::admit::{Admitted, admit_step, check_head};
use crate::entropy::{ENTROPY_EPSILON, entropy_loss};
use crate::options::{AdamOptions, SeedImageOptions};
use crate::persist::{StateReader, StateWriter, check_backbone, check_stream, stream_seed};
use crate::{
    AdaptError, AdaptReport, AdaptState, ContinualMethod, GatedModel, SeedImages, TestTimeExtras,
    TestTimeMerger, TestTimeStep,
};

/// Registry name of continual layer-wise AdaMerging.
pub const LW_ADAMERGING: &str = "c_lw_adamerging";

/// Configuration of [`LwAdaMerging`]. `Default` gives the reference code's values.
///
/// Keys: see [`parse_config`](crate::parse_config). Values are range-checked once by
/// [`check`](Self::check).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaMergingConfig {
    /// `false` (default, the reference's behaviour): every step starts over from `theta_0`
    /// with only the current task, `theta^(t) = theta_0 + clamp(L) tau_t`. `true`: the
    /// previous merged model is the base, `theta^(t) = theta^(t-1) + clamp(L) tau_t`, earlier
    /// coefficients frozen.
    pub accumulate: bool,
    /// Initial value of every coefficient (default 0.3), in `[0, 1]`.
    pub init: f64,
    /// Seed of the batch order (default 42).
    pub seed: u64,
    /// The Adam run of each task (keys `lr`, `adam_beta1`, `adam_beta2`, `adam_epsilon`,
    /// `steps`, `batch_size`; the reference's values by default). With `steps = 0` the
    /// step keeps the initial coefficients.
    #[serde(flatten)]
    pub adam: AdamOptions,
    /// The seed images (keys `seed_per_class`, `seed_source`; 5 per class from the seed
    /// split by default).
    #[serde(flatten)]
    pub seed_images: SeedImageOptions,
}

impl Default for AdaMergingConfig {
    fn default() -> Self {
        Self {
            accumulate: false,
            init: 0.3,
            seed: 42,
            adam: AdamOptions::default(),
            seed_images: SeedImageOptions::default(),
        }
    }
}

impl AdaMergingConfig {
    /// Checks every value's range.
    ///
    /// # Errors
    /// [`AdaptError::InvalidParameter`] naming the first bad value.
    pub fn check(&self) -> Result<(), AdaptError> {
        ParameterError::unit_interval(LW_ADAMERGING, "init", self.init)?;
        self.adam.check(LW_ADAMERGING)?;
        self.seed_images.check(LW_ADAMERGING)
    }
}

/// The random stream of the seed batches (the same stream number as MINGLE's).
const STREAM_BATCHES: u64 = 2;

/// The tower tensors of `dict` as `(name in dict, bare name)`, sorted by bare name: every
/// tensor of [`expected_tensors`] plus `visual_projection.weight` when present. Other tensors
/// (buffers, a text tower) are not part of the list.
fn tower_names(config: &ClipVisionConfig, dict: &ParamDict) -> Vec<(String, String)> {
    let prefixed = dict.keys().any(|k| k.starts_with(VISION_PREFIX));
    let mut wanted: BTreeSet<String> = expected_tensors(config)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    wanted.insert(PROJECTION_WEIGHT.to_owned());
    let mut out: Vec<(String, String)> = dict
        .keys()
        .filter_map(|name| {
            let bare = if name == PROJECTION_WEIGHT || !prefixed {
                Some(name)
            } else {
                name.strip_prefix(VISION_PREFIX)
            }?;
            wanted
                .contains(bare)
                .then(|| (name.to_owned(), bare.to_owned()))
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

fn upload<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn host_vec<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>, AdaptError> {
    Ok(madeit_vit::to_host(t)?.into_data())
}

fn with_task(e: AdaptError, task: &TaskId) -> AdaptError {
    match e {
        AdaptError::SeedData { reason, .. } => AdaptError::SeedData {
            task: task.clone(),
            reason,
        },
        other => other,
    }
}

/// Mean of `-sum_c p_c ln(p_c + 1e-8)` over the rows of row-major logits `[n, classes]`,
/// in `f64` (the host form of [`entropy_loss`]).
fn mean_entropy(logits: &[f32], classes: usize) -> f64 {
    let mut total = 0.0;
    let mut rows = 0usize;
    for row in logits.chunks_exact(classes.max(1)) {
        let max = row
            .iter()
            .map(|x| f64::from(*x))
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|x| (f64::from(*x) - max).exp()).collect();
        let z: f64 = e.iter().sum();
        total -= e
            .iter()
            .map(|v| {
                let p = v / z;
                p * (p + ENTROPY_EPSILON).ln()
            })
            .sum::<f64>();
        rows += 1;
    }
    if rows == 0 { 0.0 } else { total / rows as f64 }
}

/// Continual layer-wise AdaMerging, the `C. LW AdaMerging` baseline of MINGLE's tables
/// (reference: MINGLE's `c_adamerging.py`; AdaMerging: Yang et al., ICLR 2024).
///
/// Per task `t`, with `tau_t = theta_t - theta_0` and one coefficient `L_k` per parameter
/// tensor `k` of the vision tower (every linear weight and bias, layer norm, the patch,
/// position and class embeddings, the projection when present):
///
/// `theta(L)[k] = base[k] + clamp(L_k, 0, 1) tau_t[k]`,
///
/// with `base = theta_0` ([`AdaMergingConfig::accumulate`] `= false`, the reference: every
/// step discards the earlier merges) or `base = theta^(t-1)` (`accumulate = true`: earlier
/// coefficients are frozen inside the previous merged model). `L` starts at `init` (0.3)
/// and takes `steps` Adam steps (PyTorch's update rule, computed on the host for the `K`
/// coefficients) on the mean entropy `-sum p ln(p + 1e-8)` ([`entropy_loss`]) of
/// `100 cos(embedding, head)` on shuffled batches of the current task's seed samples. The
/// forward runs through [`madeit_vit::functional::forward`] with the weights computed from
/// `L` on the device's autodiff counterpart; `base` and `tau_t` are constants. The clamp is
/// applied in the forward and in the final merge; the learned coefficients themselves are
/// not clipped (the gradient of the clamp is zero outside `[0, 1]`, as in PyTorch).
/// Tensors of the checkpoint outside the tower (buffers, a text tower) keep their
/// pretrained values.
///
/// Report ([`AdaptReport`]): `losses` holds the batch entropy before each step;
/// `kl_before` is `None`; **`kl_after` is not a KL** but the mean entropy of the final
/// merged model over the whole seed set (one extra forward pass over it; this method has no
/// teacher). `merged_delta_norm` is `||theta^(t) - theta_0||`. Metrics: `accumulate` (0 or
/// 1), `tensors` (`K`), `steps`, `coefficient_mean` / `coefficient_min` /
/// `coefficient_max` (of the clamped coefficients of this step), `coefficients_clamped`
/// (how many learned values lie outside `[0, 1]`), `seconds_adaptation`,
/// `seconds_final_pass`.
///
/// State tensors: `merged.<name>` (the merged model, every tensor of the checkpoint under its
/// own name) and `coefficients.<e>` (`[K]`, the learned, unclamped coefficients of step `e`,
/// from 0, in the sorted order of the bare tensor names). The metadata's `modules` list is
/// empty (the method has no target modules).
#[derive(Debug)]
pub struct LwAdaMerging {
    config: AdaMergingConfig,
    vision: ClipVisionConfig,
    device: Device,
    ledger: Ledger,
    coefficients: Vec<Vec<f32>>,
    merged: ParamDict,
}

impl LwAdaMerging {
    /// An empty merger for towers with `vision`'s shape, computing on `device` (for example
    /// `Device::flex()`; the coefficients are trained on its autodiff counterpart).
    ///
    /// # Errors
    /// [`AdaptError::InvalidParameter`] from [`AdaMergingConfig::check`]; [`AdaptError::Vit`]
    /// for an invalid tower configuration.
    pub fn new(
        config: AdaMergingConfig,
        vision: ClipVisionConfig,
        device: Device,
    ) -> Result<Self, AdaptError> {
        config.check()?;
        vision.validate()?;
        Ok(Self {
            config,
            vision,
            device,
            ledger: Ledger::default(),
            coefficients: Vec::new(),
            merged: ParamDict::new(),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &AdaMergingConfig {
        &self.config
    }

    /// The tower configuration.
    #[must_use]
    pub fn vision(&self) -> &ClipVisionConfig {
        &self.vision
    }

    /// The learned (unclamped) coefficients of every step, in task order; each vector follows
    /// the sorted order of the bare tensor names ([`coefficient_names`](Self::coefficient_names)).
    #[must_use]
    pub fn coefficients(&self) -> &[Vec<f32>] {
        &self.coefficients
    }

    /// The bare names of the tensors that carry a coefficient, in coefficient order (empty
    /// before the first task).
    #[must_use]
    pub fn coefficient_names(&self) -> Vec<String> {
        tower_names(&self.vision, &self.merged)
            .into_iter()
            .map(|(_, b)| b)
            .collect()
    }

    fn pixels(&self, seed: &SeedImages, batch: &[usize]) -> Result<Tensor<4>, AdaptError> {
        let c = &self.vision;
        if batch.is_empty() || batch.iter().any(|i| *i >= seed.len()) {
            return Err(AdaptError::SeedData {
                task: "?".into(),
                reason: format!(
                    "batch {batch:?} is empty or indexes beyond {} samples",
                    seed.len()
                ),
            });
        }
        Ok(upload(
            seed.gather(batch),
            [batch.len(), c.num_channels, c.image_size, c.image_size],
            &self.device,
        ))
    }

    /// Runs one task on local copies; the caller commits.
    #[allow(clippy::too_many_lines)]
    fn run_task(
        &self,
        admitted: &Admitted,
        input: &TestTimeStep<'_>,
    ) -> Result<(ParamDict, Vec<f32>, AdaptReport), AdaptError> {
        let (pretrained, finetuned) = (input.pretrained, input.finetuned);
        let TestTimeExtras { seed, head } = input.extras;
        let task = &admitted.record.task;
        let cfg = &self.config;
        let step = self.ledger.tasks.len() + 1;
        let base_dict = if cfg.accumulate && !self.ledger.tasks.is_empty() {
            &self.merged
        } else {
            pretrained
        };
        // Uploads and checks the base (names, shapes, finiteness against the tower config).
        let base = TowerTensors::from_params(&self.vision, base_dict, &self.device)?;
        let names = tower_names(&self.vision, pretrained);
        let embedding_dim = if base.has_projection() {
            self.vision.projection_dim
        } else {
            self.vision.hidden_size
        };
        check_head(task, head, embedding_dim)?;
        // Task vectors of the tower tensors, flattened, on the plain device.
        let mut taus: Vec<(String, Tensor<1>)> = Vec::with_capacity(names.len());
        for (name, bare) in &names {
            let p = pretrained.get(name)?;
            let f = finetuned.get(name)?;
            let tau: Vec<f32> = f.data().iter().zip(p.data()).map(|(b, a)| b - a).collect();
            taus.push((bare.clone(), upload(tau, [p.numel()], &self.device)));
        }
        let k = taus.len();

        // Test-time adaptation of the coefficients.
        let t0 = Instant::now();
        let ad = self.device.clone().autodiff();
        let mut coeffs = vec![cfg.init as f32; k];
        let (mut m1, mut m2) = (vec![0.0f64; k], vec![0.0f64; k]);
        let (b1, b2) = (cfg.adam.adam_beta1, cfg.adam.adam_beta2);
        let n = seed.len();
        let mut losses = Vec::with_capacity(cfg.adam.steps);
        let seed_batches = stream_seed(cfg.seed, step, STREAM_BATCHES);
        for (s, batch) in cfg.adam.step_batches(n, seed_batches) {
            let px = self.pixels(seed, &batch).map_err(|e| with_task(e, task))?;
            let l = upload(coeffs.clone(), [k], &ad).require_grad();
            let c = l.clone().clamp(0.0, 1.0);
            let mut weights = BTreeMap::new();
            for (i, (bare, tau)) in taus.iter().enumerate() {
                let b = base.get(bare).cloned().ok_or_else(|| {
                    AdaptError::Vit(VitError::Backend {
                        message: format!("internal: base tensor `{bare}` lost"),
                    })
                })?;
                weights.insert(bare.clone(), b + tau.clone() * c.clone().narrow(0, i, 1));
            }
            let weights = TowerTensors::new(&self.vision, weights)?;
            let out = forward(&self.vision, &weights, px)?;
            let loss = entropy_loss(head.logits(out.embedding())?);
            let value = host_vec(&loss)?
                .first()
                .copied()
                .map_or(f64::NAN, f64::from);
            losses.push(AdaptError::finite_loss(task, s, value)?);
            let grads = loss.backward();
            let g = match l.grad(&grads) {
                Some(g) => host_vec(&g)?,
                None => vec![0.0; k],
            };
            // PyTorch's Adam (no weight decay, no amsgrad).
            let t = (s + 1) as i32;
            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            for i in 0..k {
                let gi = f64::from(g.get(i).copied().unwrap_or(0.0));
                m1[i] = b1 * m1[i] + (1.0 - b1) * gi;
                m2[i] = b2 * m2[i] + (1.0 - b2) * gi * gi;
                let update =
                    cfg.adam.lr * (m1[i] / c1) / ((m2[i] / c2).sqrt() + cfg.adam.adam_epsilon);
                coeffs[i] = (f64::from(coeffs[i]) - update) as f32;
            }
        }
        let seconds_adaptation = t0.elapsed().as_secs_f64();
        drop(taus);
        drop(base);

        // The merged model on the host: base + clamp(L_k) tau_k for tower tensors, the
        // pretrained value elsewhere (in f64, rounded once).
        let coeff_of: BTreeMap<&str, f64> = names
            .iter()
            .zip(&coeffs)
            .map(|((name, _), c)| (name.as_str(), f64::from(c.clamp(0.0, 1.0))))
            .collect();
        let mut merged = ParamDict::new();
        let mut delta_sq = 0.0f64;
        for (name, p) in pretrained.iter() {
            let data: Vec<f32> = match coeff_of.get(name) {
                Some(&c) => {
                    let b = base_dict.get(name)?;
                    let f = finetuned.get(name)?;
                    b.data()
                        .iter()
                        .zip(f.data().iter().zip(p.data()))
                        .map(|(&bv, (&fv, &pv))| {
                            (f64::from(bv) + c * (f64::from(fv) - f64::from(pv))) as f32
                        })
                        .collect()
                }
                None => p.data().to_vec(),
            };
            delta_sq += data
                .iter()
                .zip(p.data())
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum::<f64>();
            merged.insert(
                name,
                HostTensor::new(p.shape().to_vec(), data)?.with_dtype(p.dtype()),
            );
        }

        // Mean entropy of the final merged model over the seed set.
        let t0 = Instant::now();
        let model = ClipVisionModel::from_params_on(&self.vision, &merged, &self.device)?;
        let classes = head.num_classes();
        let mut logits = Vec::with_capacity(n * classes);
        let idx: Vec<usize> = (0..n).collect();
        for chunk in idx.chunks(cfg.adam.batch_size) {
            let px = self.pixels(seed, chunk).map_err(|e| with_task(e, task))?;
            logits.extend(host_vec(&head.logits(model.forward(px)?.embedding())?)?);
        }
        drop(model);
        let final_entropy = mean_entropy(&logits, classes);
        let seconds_final_pass = t0.elapsed().as_secs_f64();

        let clamped: Vec<f64> = coeffs
            .iter()
            .map(|c| f64::from(c.clamp(0.0, 1.0)))
            .collect();
        let mut metrics = IndexMap::new();
        metrics.insert(
            "accumulate".to_owned(),
            if cfg.accumulate { 1.0 } else { 0.0 },
        );
        metrics.insert("tensors".to_owned(), k as f64);
        metrics.insert("steps".to_owned(), cfg.adam.steps as f64);
        metrics.insert(
            "coefficient_mean".to_owned(),
            clamped.iter().sum::<f64>() / k.max(1) as f64,
        );
        metrics.insert(
            "coefficient_min".to_owned(),
            clamped.iter().copied().fold(f64::INFINITY, f64::min),
        );
        metrics.insert(
            "coefficient_max".to_owned(),
            clamped.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        metrics.insert(
            "coefficients_clamped".to_owned(),
            coeffs.iter().filter(|c| !(0.0..=1.0).contains(*c)).count() as f64,
        );
        metrics.insert("seconds_adaptation".to_owned(), seconds_adaptation);
        metrics.insert("seconds_final_pass".to_owned(), seconds_final_pass);
        let report = AdaptReport {
            base: StepReport {
                method: LW_ADAMERGING.to_owned(),
                step,
                task: task.clone(),
                task_vector_norm: admitted.record.task_vector_norm,
                merged_delta_norm: delta_sq.sqrt(),
                metrics,
            },
            seed_samples: n,
            seed_source: cfg.seed_images.seed_source,
            losses,
            kl_before: None,
            kl_after: final_entropy,
        };
        Ok((merged, coeffs, report))
    }

    fn check_stream(&self, pretrained: &ParamDict) -> Result<(), AdaptError> {
        check_stream(LW_ADAMERGING, &self.ledger, pretrained).map(|_| ())
    }
}

/// A [`AdaptError::StateTensor`] about the merged tensor `name`.
fn merged_err(name: &str, reason: impl Into<String>) -> AdaptError {
    AdaptError::StateTensor {
        method: LW_ADAMERGING,
        name: format!("merged.{name}"),
        reason: reason.into(),
    }
}

impl ContinualMethod for LwAdaMerging {
    test_time_contract!(LW_ADAMERGING);

    fn absorb(&mut self, input: &TestTimeStep<'_>) -> Result<AdaptReport, AdaptError> {
        let admitted = admit_step(&self.ledger, &self.vision, input)?;
        let (merged, coeffs, report) = self.run_task(&admitted, input)?;
        self.merged = merged;
        self.coefficients.push(coeffs);
        self.ledger.commit(admitted);
        Ok(report)
    }

    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, AdaptError> {
        self.check_stream(pretrained)?;
        let mut out = ParamDict::new();
        for (name, p) in pretrained.iter() {
            let t = self
                .merged
                .get(name)
                .map_err(|_| merged_err(name, "missing"))?;
            if t.shape() != p.shape() {
                return Err(merged_err(
                    name,
                    format!("shape {:?}, pretrained {:?}", t.shape(), p.shape()),
                ));
            }
            out.insert(name, t.clone().with_dtype(p.dtype()));
        }
        Ok(MergedModel::Dense(out))
    }

    fn state(&self) -> Result<AdaptState, AdaptError> {
        let mut w = StateWriter::new(LW_ADAMERGING);
        w.put_dict("merged.", &self.merged)?;
        for (e, c) in self.coefficients.iter().enumerate() {
            w.put(format!("coefficients.{e}"), vec![c.len()], c.clone())?;
        }
        w.finish(&self.config, &self.vision, &[], &self.ledger)
    }

    fn restore(&mut self, state: &AdaptState) -> Result<(), AdaptError> {
        let mut r = StateReader::open(state, LW_ADAMERGING, &self.config, &self.vision, &[])?;
        let t = state.metadata.tasks.len();
        let mut merged = ParamDict::new();
        for (name, tensor) in r.tensors().iter() {
            if let Some(inner) = name.strip_prefix("merged.") {
                if let Some(i) = tensor.data().iter().position(|x| !x.is_finite()) {
                    return Err(r.err(name, format!("non-finite value at {i}")));
                }
                merged.insert(inner, tensor.clone().with_dtype(DType::F32));
                r.mark(name);
            }
        }
        let names = tower_names(&self.vision, &merged);
        if t > 0 {
            // The merged model must be a whole tower of this shape.
            TowerTensors::from_params(&self.vision, &merged, &self.device)
                .map_err(|e| r.err("merged.*", e.to_string()))?;
        } else if !merged.is_empty() {
            return Err(r.err("merged.*", "a merged model without tasks"));
        }
        let coefficients = (0..t)
            .map(|e| {
                r.take_finite(&format!("coefficients.{e}"), &[names.len()])
                    .map(|c| c.data().to_vec())
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.ledger = r.finish()?;
        self.merged = merged;
        self.coefficients = coefficients;
        Ok(())
    }
}

impl TestTimeMerger for LwAdaMerging {
    fn gated_model(&self, backbone: &ClipVisionModel) -> Result<GatedModel, AdaptError> {
        check_backbone(
            LW_ADAMERGING,
            self.ledger.tasks.len(),
            backbone,
            &self.vision,
        )?;
        let device = backbone.device();
        let model = ClipVisionModel::from_params_on(&self.vision, &self.merged, device)?;
        let bank = ExpertBank::new(&self.vision, std::iter::empty(), device)?;
        let gates = GateBank::new(&GateValues::new(), GateTraining::Frozen, device)?;
        GatedModel::new(model, bank, gates)
    }
}
