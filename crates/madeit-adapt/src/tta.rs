//! Test-time adaptation of the newest gates, and the gated pass over the seed set that
//! measures the KL and the input covariances afterwards.

use std::collections::{BTreeMap, BTreeSet};

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use faer::Mat;
use madeit_vit::{
    ClipVisionModel, ExpertBank, GateBank, GateTraining, GateValues, LowRankFactors, ModuleAdapter,
    ModuleId, ModuleKind, TaskHead, VitError, distillation_loss, to_host,
};

use crate::persist::expert_bank;
use crate::{AdaptError, GradientProjector, MingleConfig, SeedImages};

fn upload<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn host_vec<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>, AdaptError> {
    Ok(to_host(t)?.into_data())
}

/// Logits of the fine-tuned (teacher) model on every seed sample, row-major
/// `[count, classes]`, computed in chunks of `batch_size` samples.
///
/// # Errors
/// Forward and head errors of the vision tower.
pub fn teacher_logits(
    teacher: &ClipVisionModel,
    head: &TaskHead,
    seed: &SeedImages,
    batch_size: usize,
) -> Result<Vec<f32>, AdaptError> {
    let mut out = Vec::with_capacity(seed.len() * head.num_classes());
    let idx: Vec<usize> = (0..seed.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let px = teacher.pixels(seed.gather(chunk), chunk.len())?;
        let logits = head.logits(teacher.forward(px)?.embedding())?;
        out.extend(host_vec(&logits)?);
    }
    Ok(out)
}

/// Mean `KL(p_teacher || p_student)` over rows of two logit buffers (`[n, classes]`,
/// row-major) at temperature `t`, in `f64`:
/// `KL = sum_c p_c (ln p_c - ln q_c)`, `p = softmax(teacher / t)`, `q = softmax(student / t)`.
/// Returns 0 for no rows.
#[must_use]
pub fn mean_kl(student: &[f32], teacher: &[f32], classes: usize, t: f64) -> f64 {
    if classes == 0 {
        return 0.0;
    }
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let z: Vec<f64> = row.iter().map(|x| f64::from(*x) / t).collect();
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + z.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        z.iter().map(|x| x - lse).collect()
    };
    let mut total = 0.0;
    let mut rows = 0usize;
    for (s, te) in student
        .chunks_exact(classes)
        .zip(teacher.chunks_exact(classes))
    {
        let lq = log_softmax(s);
        let lp = log_softmax(te);
        total += lp
            .iter()
            .zip(&lq)
            .map(|(p, q)| p.exp() * (p - q))
            .sum::<f64>();
        rows += 1;
    }
    if rows == 0 { 0.0 } else { total / rows as f64 }
}

/// The data of the current task that adaptation and evaluation passes read.
#[derive(Debug, Clone, Copy)]
pub struct SeedTask<'a> {
    /// The task's fixed head.
    pub head: &'a TaskHead,
    /// The unlabeled seed samples.
    pub seed: &'a SeedImages,
    /// Teacher logits of every seed sample, `[seed.len(), classes]` (see [`teacher_logits`]).
    pub teacher: &'a [f32],
}

/// Trains the newest gate of every module on seed batches: the loop of MINGLE's
/// test-time adaptation (Algorithm 1, inner loop).
///
/// The backbone (`theta_0`) and every expert are constants on the model's plain device; the
/// gates live on the matching autodiff device and only the newest gate of each module
/// (weight and bias) requires a gradient ([`GateTraining::Newest`]). One
/// [`step`](Self::step):
///
/// 1. `z_s = 100 cos(merged embedding, head)` on the batch (gates averaged over the batch),
///    `z_t` the teacher logits of the same samples;
/// 2. `L = -(1/B) sum_i softmax(z_t / T) . log_softmax(z_s / T)` (the KL up to the teacher's
///    entropy);
/// 3. the newest gate-weight gradient of every module with a stored subspace is projected
///    by its [`GradientProjector`];
/// 4. one Adam step (PyTorch's update rule; `epsilon` as configured).
pub struct GateTrainer<'a> {
    model: &'a ClipVisionModel,
    bank: ExpertBank,
    gates: Option<GateBank>,
    optim: ModuleOptimizer,
    projectors: BTreeMap<ModuleId, GradientProjector>,
    head: &'a TaskHead,
    seed: &'a SeedImages,
    teacher: &'a [f32],
    lr: f64,
    temperature: f64,
}

impl std::fmt::Debug for GateTrainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateTrainer")
            .field("modules", &self.bank.modules().count())
            .field("projectors", &self.projectors.len())
            .field("lr", &self.lr)
            .field("temperature", &self.temperature)
            .finish_non_exhaustive()
    }
}

impl<'a> GateTrainer<'a> {
    /// Sets up the adaptation: `experts` and `gates` hold every module's experts and gates,
    /// the newest last (one gate per expert); `projectors` the gradient projectors of the
    /// modules that have a stored subspace; `task` the head, the seed samples and their
    /// teacher logits.
    ///
    /// # Errors
    /// [`AdaptError::Vit`] when experts, gates and model disagree; [`AdaptError::SeedData`]
    /// / [`AdaptError::Head`] (task named `"?"`) when the teacher logits do not fit.
    pub fn new(
        model: &'a ClipVisionModel,
        experts: &BTreeMap<ModuleId, Vec<LowRankFactors>>,
        gates: &GateValues,
        projectors: BTreeMap<ModuleId, GradientProjector>,
        task: SeedTask<'a>,
        config: &MingleConfig,
    ) -> Result<Self, AdaptError> {
        let SeedTask {
            head,
            seed,
            teacher,
        } = task;
        if teacher.len() != seed.len() * head.num_classes() {
            return Err(AdaptError::Head {
                task: "?".into(),
                reason: format!(
                    "{} teacher logits for {} seed samples of {} classes",
                    teacher.len(),
                    seed.len(),
                    head.num_classes()
                ),
            });
        }
        let device = model.device().clone();
        let bank = expert_bank(model.config(), experts, &device)?;
        let gates = GateBank::new(gates, GateTraining::Newest, &device.clone().autodiff())?;
        gates.validate(&bank)?;
        for (m, p) in &projectors {
            let e = bank.num_experts(*m);
            if e == 0 {
                return Err(AdaptError::Module {
                    module: *m,
                    reason: "a gradient projector on a module without experts".into(),
                });
            }
            let (_, d_in) = model.config().module_dims(m.kind);
            if p.dim() != d_in {
                return Err(AdaptError::Module {
                    module: *m,
                    reason: format!("projector of width {}, module input width {d_in}", p.dim()),
                });
            }
        }
        let optim = config.adam.burn_config().init();
        Ok(Self {
            model,
            bank,
            gates: Some(gates),
            optim,
            projectors,
            head,
            seed,
            teacher,
            lr: config.adam.lr,
            temperature: config.temperature,
        })
    }

    fn gate_bank(&self) -> Result<&GateBank, AdaptError> {
        self.gates.as_ref().ok_or_else(|| {
            AdaptError::Vit(VitError::Backend {
                message: "gate bank lost after a failed optimizer step".into(),
            })
        })
    }

    /// The distillation loss on the seed samples `batch` and the gradients of the trainable
    /// gate parameters (before any projection).
    ///
    /// # Errors
    /// Forward errors; [`AdaptError::SeedData`] (task `"?"`) for an empty batch or an index
    /// beyond the seed set.
    pub fn loss_and_gradients(
        &self,
        batch: &[usize],
    ) -> Result<(f64, GradientsParams), AdaptError> {
        let gates = self.gate_bank()?;
        if batch.is_empty() || batch.iter().any(|i| *i >= self.seed.len()) {
            return Err(AdaptError::SeedData {
                task: "?".into(),
                reason: format!(
                    "batch {batch:?} is empty or indexes beyond {} samples",
                    self.seed.len()
                ),
            });
        }
        let b = batch.len();
        let c = self.head.num_classes();
        let px = self.model.pixels(self.seed.gather(batch), b)?;
        let out = self.model.forward_gated(px, &self.bank, gates)?;
        let student = self.head.logits(out.embedding())?;
        let mut t = Vec::with_capacity(b * c);
        for &i in batch {
            t.extend_from_slice(self.teacher.get(i * c..(i + 1) * c).unwrap_or(&[]));
        }
        let teacher = upload(t, [b, c], self.model.device());
        let loss = distillation_loss(student, teacher, self.temperature)?;
        let value = host_vec(&loss)?
            .first()
            .copied()
            .map_or(f64::NAN, f64::from);
        let grads = GradientsParams::from_grads(loss.backward(), gates);
        Ok((value, grads))
    }

    /// The gradient of the newest gate weight of `module` in `grads` (`None` when it has
    /// none).
    ///
    /// # Errors
    /// [`AdaptError::Vit`] when the module has no gates.
    pub fn newest_weight_grad(
        &self,
        grads: &GradientsParams,
        module: ModuleId,
    ) -> Result<Option<Vec<f32>>, AdaptError> {
        let gates = self.gate_bank()?;
        let newest = gates.num_gates(module).saturating_sub(1);
        Ok(gates.weight_grad(grads, module, newest)?)
    }

    /// One adaptation step on `batch` (see the type docs); returns the loss before the step.
    /// A non-finite loss is returned as is and the gates are left unchanged.
    ///
    /// # Errors
    /// As [`loss_and_gradients`](Self::loss_and_gradients); [`AdaptError::Module`] when a
    /// gradient does not fit its projector.
    pub fn step(&mut self, batch: &[usize]) -> Result<f64, AdaptError> {
        let (loss, mut grads) = self.loss_and_gradients(batch)?;
        if !loss.is_finite() {
            return Ok(loss);
        }
        let gates = self.gates.as_ref().ok_or_else(|| {
            AdaptError::Vit(VitError::Backend {
                message: "gate bank lost after a failed optimizer step".into(),
            })
        })?;
        for (m, proj) in &mut self.projectors {
            let newest = gates.num_gates(*m).saturating_sub(1);
            if let Some(g) = gates.weight_grad(&grads, *m, newest)? {
                let projected = proj.project(&g).ok_or_else(|| AdaptError::Module {
                    module: *m,
                    reason: format!(
                        "gradient of length {}, projector width {}",
                        g.len(),
                        proj.dim()
                    ),
                })?;
                gates.set_weight_grad(&mut grads, *m, newest, &projected)?;
            }
        }
        if let Some(g) = self.gates.take() {
            self.gates = Some(self.optim.step(self.lr, g, grads));
        }
        Ok(loss)
    }

    /// The current gate values.
    ///
    /// # Errors
    /// [`AdaptError::Vit`] when a parameter cannot be read back.
    pub fn gates(&self) -> Result<GateValues, AdaptError> {
        Ok(self.gate_bank()?.to_values()?)
    }

    /// The gradient projectors (with their interference scores so far).
    #[must_use]
    pub fn projectors(&self) -> &BTreeMap<ModuleId, GradientProjector> {
        &self.projectors
    }

    /// Consumes the trainer, returning the gate values and the projectors.
    ///
    /// # Errors
    /// As [`gates`](Self::gates).
    pub fn finish(self) -> Result<(GateValues, BTreeMap<ModuleId, GradientProjector>), AdaptError> {
        let g = self.gates()?;
        Ok((g, self.projectors))
    }
}

/// Which module input a module reads (q, k and v of a layer share one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum InputSlot {
    Attn(usize),
    Out(usize),
    Fc1(usize),
    Fc2(usize),
}

impl InputSlot {
    pub(crate) fn of(m: ModuleId) -> Self {
        match m.kind {
            ModuleKind::Q | ModuleKind::K | ModuleKind::V => Self::Attn(m.layer),
            ModuleKind::Out => Self::Out(m.layer),
            ModuleKind::Fc1 => Self::Fc1(m.layer),
            ModuleKind::Fc2 => Self::Fc2(m.layer),
        }
    }
}

/// One module's frozen mixture on the device: `delta = ((X V) * gcols) SU` with
/// `gbar = w xbar + b` (the gated forward of `madeit-vit`, re-implemented here so that one
/// pass can also record inputs).
struct Mixture {
    d_out: usize,
    v: Tensor<2>,
    su: Tensor<2>,
    membership: Tensor<2>,
    w: Tensor<2>,
    b: Tensor<2>,
}

impl Mixture {
    fn new(
        module: ModuleId,
        experts: &[LowRankFactors],
        gates: &GateValues,
        device: &Device,
    ) -> Result<Self, AdaptError> {
        let g = gates.gates(module);
        let first = experts.first().ok_or_else(|| AdaptError::Module {
            module,
            reason: "no experts".into(),
        })?;
        let (d_out, d_in) = (first.d_out(), first.d_in());
        if g.len() != experts.len() || g.iter().any(|x| x.weight.len() != d_in) {
            return Err(AdaptError::Module {
                module,
                reason: format!(
                    "{} gates for {} experts of input width {d_in}",
                    g.len(),
                    experts.len()
                ),
            });
        }
        let total: usize = experts.iter().map(LowRankFactors::rank).sum();
        let e_count = experts.len();
        let mut v = vec![0.0f32; d_in * total];
        let mut su = Vec::with_capacity(total * d_out);
        let mut membership = vec![0.0f32; total * e_count];
        let mut off = 0;
        for (e, f) in experts.iter().enumerate() {
            if f.d_out() != d_out || f.d_in() != d_in {
                return Err(AdaptError::Module {
                    module,
                    reason: format!(
                        "expert {e} is {}x{}, expert 0 {d_out}x{d_in}",
                        f.d_out(),
                        f.d_in()
                    ),
                });
            }
            let r = f.rank();
            for i in 0..d_in {
                for k in 0..r {
                    v[i * total + off + k] = f.v()[i * r + k];
                }
            }
            for k in 0..r {
                let s = f.s()[k];
                su.extend((0..d_out).map(|i| f.u()[i * r + k] * s));
                membership[(off + k) * e_count + e] = 1.0;
            }
            off += r;
        }
        let w: Vec<f32> = g.iter().flat_map(|x| x.weight.iter().copied()).collect();
        let b: Vec<f32> = g.iter().map(|x| x.bias).collect();
        Ok(Self {
            d_out,
            v: upload(v, [d_in, total], device),
            su: upload(su, [total, d_out], device),
            membership: upload(membership, [total, e_count], device),
            w: upload(w, [e_count, d_in], device),
            b: upload(b, [1, e_count], device),
        })
    }

    fn delta(&self, x: &Tensor<3>) -> Tensor<3> {
        let [b, n, d_in] = x.dims();
        let xbar = x.clone().mean_dim(1).mean_dim(0).reshape([1, d_in]);
        let gbar = xbar.matmul(self.w.clone().transpose()) + self.b.clone(); // [1, E]
        let gcols = gbar.matmul(self.membership.clone().transpose()); // [1, R]
        (x.clone().reshape([b * n, d_in]).matmul(self.v.clone()) * gcols)
            .matmul(self.su.clone())
            .reshape([b, n, self.d_out])
    }
}

/// The frozen gated forward that also accumulates `sum x x^T` of chosen module inputs.
struct RecordingPass {
    mixtures: BTreeMap<ModuleId, Mixture>,
    /// Module whose input is recorded for each slot (the first targeted module reading it).
    record_at: BTreeMap<ModuleId, InputSlot>,
    covariances: BTreeMap<InputSlot, Tensor<2>>,
}

impl ModuleAdapter for RecordingPass {
    fn adapt(&mut self, module: ModuleId, x: &Tensor<3>) -> Result<Option<Tensor<3>>, VitError> {
        if let Some(slot) = self.record_at.get(&module) {
            let [b, n, d] = x.dims();
            let xs = x.clone().reshape([b * n, d]);
            let gram = xs.clone().transpose().matmul(xs);
            let acc = match self.covariances.remove(slot) {
                Some(c) => c + gram,
                None => gram,
            };
            self.covariances.insert(*slot, acc);
        }
        Ok(self.mixtures.get(&module).map(|m| m.delta(x)))
    }
}

/// The uncentred covariance `sum x x^T` of one module input over the seed set.
#[derive(Debug, Clone, PartialEq)]
pub struct InputCovariance {
    /// The recorded modules that read this input (q, k and v of a layer share one).
    pub modules: Vec<ModuleId>,
    /// Input width `d`.
    pub dim: usize,
    /// Row-major `d x d` values (`f32`, accumulated on the device).
    pub data: Vec<f32>,
}

impl InputCovariance {
    /// The matrix in `f64`.
    ///
    /// The buffer is read in storage order into faer's column-major layout, which yields the
    /// transpose; `sum x x^T` is symmetric, so this is the same matrix up to the rounding of
    /// the accumulation (and reading it this way is several times faster than a strided
    /// copy at `d = 3072`). A buffer of the wrong length gives a NaN matrix, which the
    /// decompositions reject.
    #[must_use]
    pub fn to_mat(&self) -> Mat<f64> {
        let d = self.dim;
        if self.data.len() != d * d {
            return Mat::from_fn(d, d, |_, _| f64::NAN);
        }
        let mut out = Mat::<f64>::zeros(d, d);
        for (j, col) in self.data.chunks_exact(d.max(1)).enumerate() {
            for (i, x) in col.iter().enumerate() {
                out[(i, j)] = f64::from(*x);
            }
        }
        out
    }
}

/// What a pass of the merged model over the seed set measured.
#[derive(Debug, Clone)]
pub struct SeedPass {
    /// Mean `KL(teacher || merged)` at the distillation temperature over the seed set.
    pub kl: f64,
    /// The input covariances of the recorded modules, one per distinct input.
    pub covariances: Vec<InputCovariance>,
}

/// Runs the merged model (frozen gates) over the seed set in `batches` and returns the mean
/// KL to the teacher and, for every module of `record`, the uncentred covariance
/// `sum over samples and tokens of x x^T` of its input (modules sharing an input share one
/// accumulation).
///
/// # Errors
/// Forward errors and [`AdaptError::Module`] when experts and gates disagree.
pub fn seed_pass(
    model: &ClipVisionModel,
    experts: &BTreeMap<ModuleId, Vec<LowRankFactors>>,
    gates: &GateValues,
    task: SeedTask<'_>,
    batches: &[Vec<usize>],
    temperature: f64,
    record: &BTreeSet<ModuleId>,
) -> Result<SeedPass, AdaptError> {
    let SeedTask {
        head,
        seed,
        teacher,
    } = task;
    let device = model.device();
    let mut mixtures = BTreeMap::new();
    for (m, e) in experts {
        if !e.is_empty() {
            mixtures.insert(*m, Mixture::new(*m, e, gates, device)?);
        }
    }
    let mut record_at = BTreeMap::new();
    let mut readers: BTreeMap<InputSlot, Vec<ModuleId>> = BTreeMap::new();
    for m in record {
        let slot = InputSlot::of(*m);
        let list = readers.entry(slot).or_default();
        if list.is_empty() {
            record_at.insert(*m, slot);
        }
        list.push(*m);
    }
    let mut pass = RecordingPass {
        mixtures,
        record_at,
        covariances: BTreeMap::new(),
    };
    let c = head.num_classes();
    let mut student = Vec::new();
    let mut reference = Vec::new();
    for batch in batches {
        if batch.is_empty() {
            continue;
        }
        let px = model.pixels(seed.gather(batch), batch.len())?;
        let out = model.forward_with_adapter(px, &mut pass)?;
        student.extend(host_vec(&head.logits(out.embedding())?)?);
        for &i in batch {
            reference.extend_from_slice(teacher.get(i * c..(i + 1) * c).unwrap_or(&[]));
        }
    }
    let kl = mean_kl(&student, &reference, c, temperature);
    let mut covariances = Vec::with_capacity(pass.covariances.len());
    for (slot, cov) in std::mem::take(&mut pass.covariances) {
        let dim = cov.dims()[0];
        let data = host_vec(&cov)?;
        drop(cov);
        covariances.push(InputCovariance {
            modules: readers.remove(&slot).unwrap_or_default(),
            dim,
            data,
        });
    }
    Ok(SeedPass { kl, covariances })
}
