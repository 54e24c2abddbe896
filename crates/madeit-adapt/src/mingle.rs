//! MINGLE: mixtures of null-space gated low-rank experts (Qiu et al., 2025), as a
//! [`TestTimeMerger`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use burn::prelude::Device;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use indexmap::IndexMap;
use madeit_merge::{ExpertModel, Fingerprint, LowRankExpert, MergedModel, TaskId, TaskRecord};
use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_vit::{
    ClipVisionConfig, ClipVisionModel, ExpertBank, GateBank, GateTraining, GateValues, LinearGate,
    LowRankFactors, ModuleId, TaskHead, VISION_PREFIX, VitError,
};
use rayon::prelude::*;

use crate::admit::{Admitted, admit_task, check_seed_images};
use crate::config::MINGLE;
use crate::expert::{ExpertStats, build_expert};
use crate::subspace::{extend_basis, top_directions};
use crate::tta::{GateTrainer, SeedTask, seed_pass, teacher_logits};
use crate::{
    ADAPT_STATE_FORMAT, ADAPT_STATE_VERSION, AdaptError, AdaptMetadata, AdaptReport, AdaptState,
    GateProjection, GatedModel, GradientProjector, MingleConfig, SeedBatches, SeedImages,
    TestTimeMerger,
};

/// SplitMix64: independent seeds for the random streams of each step.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of random stream `stream` of step `step` (1-based).
fn stream_seed(seed: u64, step: usize, stream: u64) -> u64 {
    splitmix(splitmix(seed ^ splitmix(step as u64)) ^ stream)
}

const STREAM_GATES: u64 = 1;
const STREAM_BATCHES: u64 = 2;
const STREAM_PASS: u64 = 3;
const STREAM_EXPERT_SVD: u64 = 4;
const STREAM_SUBSPACE_SVD: u64 = 5;

/// The weight of `module` in `dict`, under its bare or `vision_model.`-prefixed name.
fn target_weight(dict: &ParamDict, module: ModuleId) -> Result<(String, &HostTensor), AdaptError> {
    let bare = module.weight_name();
    if let Ok(t) = dict.get(&bare) {
        return Ok((bare, t));
    }
    let full = format!("{VISION_PREFIX}{bare}");
    dict.get(&full)
        .map(|t| (full.clone(), t))
        .map_err(|_| AdaptError::TargetWeight {
            name: bare,
            reason: "missing (looked for the bare and the `vision_model.` names)".into(),
        })
}

/// `||sum_e U_e diag(s_e) V_e^T||_F^2 = tr((B^T B)(A^T A))` with `B = [U_e diag(s_e)]`,
/// `A = [V_e]`, without forming the dense matrix.
fn experts_frobenius_sq(experts: &[LowRankFactors]) -> f64 {
    let total: usize = experts.iter().map(LowRankFactors::rank).sum();
    let (Some(first), true) = (experts.first(), total > 0) else {
        return 0.0;
    };
    let (d_out, d_in) = (first.d_out(), first.d_in());
    let mut b = Mat::<f64>::zeros(d_out, total);
    let mut a = Mat::<f64>::zeros(d_in, total);
    let mut off = 0;
    for f in experts {
        let r = f.rank();
        if f.d_out() != d_out || f.d_in() != d_in {
            continue;
        }
        for k in 0..r {
            let s = f64::from(f.s()[k]);
            for i in 0..d_out {
                b[(i, off + k)] = f64::from(f.u()[i * r + k]) * s;
            }
            for i in 0..d_in {
                a[(i, off + k)] = f64::from(f.v()[i * r + k]);
            }
        }
        off += r;
    }
    let gram = |m: MatRef<'_, f64>| {
        let mut g = Mat::<f64>::zeros(m.ncols(), m.ncols());
        matmul(g.as_mut(), Accum::Replace, m.transpose(), m, 1.0, Par::Seq);
        g
    };
    let (gb, ga) = (gram(b.as_ref()), gram(a.as_ref()));
    let mut acc = 0.0;
    for j in 0..total {
        for i in 0..total {
            acc += gb[(i, j)] * ga[(i, j)];
        }
    }
    acc.max(0.0)
}

fn with_task(e: AdaptError, task: &TaskId) -> AdaptError {
    match e {
        AdaptError::SeedData { reason, .. } => AdaptError::SeedData {
            task: task.clone(),
            reason,
        },
        AdaptError::Head { reason, .. } => AdaptError::Head {
            task: task.clone(),
            reason,
        },
        other => other,
    }
}

/// MINGLE (*Mixtures of Null-Space Gated Low-Rank Experts for Test-Time Continual Model
/// Merging*, Qiu et al., 2025), following the reference implementation's behaviour.
///
/// Per task `t` and target module `m` (weight `W0`, input `x`):
///
/// 1. **Expert.** `tau = W_t - W0`, projected off the top-`k_eff` singular block of the
///    earlier experts' sum and truncated to rank `r` (see [`build_expert`]). Frozen.
/// 2. **Gate.** A new linear gate `g_t(X) = w_t^T x + b_t` on the module input,
///    `w_t ~ N(0, 0.01^2)`, `b_t = 0`; earlier gates are frozen. The module computes
///    `y = X (W0 + sum_e gbar_e B_e A_e)^T + b0` with `gbar_e` the gate averaged over tokens,
///    then over the batch (no softmax).
/// 3. **Test-time adaptation.** `steps` Adam steps (lr `1e-4`, batches of 16 seed samples)
///    on `-(1/B) sum softmax(z_t / 2) . log_softmax(z / 2)`, the KL to the fine-tuned model at
///    temperature 2 (`z = 100 cos(embedding, head)`), training only the new gates
///    ([`GateTrainer`]); for `t >= 2` the gate-weight gradient is projected off the module's
///    stored input subspace with adaptive relaxation ([`GradientProjector`]).
/// 4. **Subspace update.** The seed set is run through the merged model; per module input,
///    the top-`k` directions of `sum x x^T` are appended to the stored basis `U` and
///    re-orthonormalised by QR.
///
/// Non-target parameters (embeddings, layer norms, biases, the projection) stay pretrained.
/// The merged model is evaluated with [`gated_model`](TestTimeMerger::gated_model) on
/// batches of one task.
///
/// Randomness (gate initialisation, batch order, randomized SVDs) comes from ChaCha8 / SplitMix
/// streams derived from `config.seed` and the step index, so a resumed stream draws the same
/// numbers as an uninterrupted one.
///
/// Report metrics ([`AdaptReport::metrics`]): `modules`, `steps`, `mean_k_eff`, `max_k_eff`,
/// `mean_expert_rank`, `mean_projected_fraction` (`||tau'|| / ||tau||`),
/// `mean_kept_fraction` (`||B A|| / ||tau'||`), `lambda_mean` / `lambda_min` /
/// `interference_mean` (over projected modules and directions, after the last step),
/// `subspace_dim_max`, `non_target_delta_norm` (norm of the part of the task vector MINGLE
/// discards), `seconds_experts`, `seconds_teacher`, `seconds_adaptation`,
/// `seconds_subspace`.
#[derive(Debug)]
pub struct Mingle {
    config: MingleConfig,
    vision: ClipVisionConfig,
    device: Device,
    modules: Vec<ModuleId>,
    pretrained: Option<Fingerprint>,
    tasks: Vec<TaskRecord>,
    experts: BTreeMap<ModuleId, Vec<LowRankFactors>>,
    gates: GateValues,
    subspaces: BTreeMap<ModuleId, Mat<f32>>,
    /// The pretrained tower, kept between steps (not part of the state).
    backbone: Option<(Fingerprint, ClipVisionModel)>,
}

impl Mingle {
    /// An empty merger for towers with `vision`'s shape, computing on `device` (for example
    /// `Device::flex()`; gates are trained on its autodiff counterpart).
    ///
    /// # Errors
    /// [`AdaptError::InvalidParameter`] from [`MingleConfig::check`]; [`AdaptError::Vit`]
    /// for an invalid tower configuration.
    pub fn new(
        config: MingleConfig,
        vision: ClipVisionConfig,
        device: Device,
    ) -> Result<Self, AdaptError> {
        config.check()?;
        vision.validate()?;
        let modules = config.targets.modules(&vision);
        Ok(Self {
            config,
            vision,
            device,
            modules,
            pretrained: None,
            tasks: Vec::new(),
            experts: BTreeMap::new(),
            gates: GateValues::new(),
            subspaces: BTreeMap::new(),
            backbone: None,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &MingleConfig {
        &self.config
    }

    /// The tower configuration.
    #[must_use]
    pub fn vision(&self) -> &ClipVisionConfig {
        &self.vision
    }

    /// Target modules, in forward order.
    #[must_use]
    pub fn modules(&self) -> &[ModuleId] {
        &self.modules
    }

    /// The experts of `module`, in task order.
    #[must_use]
    pub fn experts(&self, module: ModuleId) -> &[LowRankFactors] {
        self.experts.get(&module).map_or(&[], Vec::as_slice)
    }

    /// Every gate, as plain numbers.
    #[must_use]
    pub fn gate_values(&self) -> &GateValues {
        &self.gates
    }

    /// The stored input subspace `U` (`d_in x K`) of `module`, once a task was absorbed.
    #[must_use]
    pub fn subspace(&self, module: ModuleId) -> Option<MatRef<'_, f32>> {
        self.subspaces.get(&module).map(Mat::as_ref)
    }

    fn admit(
        &self,
        pretrained: &ParamDict,
        finetuned: &ParamDict,
        task: &TaskId,
    ) -> Result<Admitted, AdaptError> {
        admit_task(&self.tasks, self.pretrained, pretrained, finetuned, task)
    }

    fn check_seed(&self, task: &TaskId, seed: &SeedImages) -> Result<(), AdaptError> {
        check_seed_images(&self.vision, task, seed)
    }

    /// The pretrained tower on the device (cached between steps).
    fn backbone_for(
        &self,
        fp: Fingerprint,
        pretrained: &ParamDict,
    ) -> Result<ClipVisionModel, AdaptError> {
        match &self.backbone {
            Some((f, m)) if *f == fp => Ok(m.clone()),
            _ => Ok(ClipVisionModel::from_params_on(
                &self.vision,
                pretrained,
                &self.device,
            )?),
        }
    }

    fn new_experts(
        &self,
        step: usize,
        pretrained: &ParamDict,
        finetuned: &ParamDict,
    ) -> Result<Vec<(ModuleId, LowRankFactors, ExpertStats)>, AdaptError> {
        let svd_seed = stream_seed(self.config.seed, step, STREAM_EXPERT_SVD);
        self.modules
            .par_iter()
            .enumerate()
            .map(|(i, &m)| {
                let (name, w0) = target_weight(pretrained, m)?;
                let (_, wt) = target_weight(finetuned, m)?;
                let (d_out, d_in) = m.dims(&self.vision);
                let shape_err = |t: &HostTensor| AdaptError::TargetWeight {
                    name: name.clone(),
                    reason: format!("shape {:?}, expected [{d_out}, {d_in}]", t.shape()),
                };
                if w0.shape() != [d_out, d_in] {
                    return Err(shape_err(w0));
                }
                if wt.shape() != [d_out, d_in] {
                    return Err(shape_err(wt));
                }
                let rank = self.config.effective_rank(d_out, d_in);
                let (f, stats) = build_expert(
                    m,
                    w0.as_mat()?,
                    wt.as_mat()?,
                    self.experts(m),
                    rank,
                    self.config.project_experts,
                    self.config.expert_svd.to_linalg(svd_seed ^ i as u64),
                )?;
                Ok((m, f, stats))
            })
            .collect()
    }

    /// Runs one task end to end on local copies; the caller commits.
    #[allow(clippy::too_many_lines)]
    fn run_task(
        &self,
        admitted: &Admitted,
        pretrained: &ParamDict,
        finetuned: &ParamDict,
        seed: &SeedImages,
        head: &TaskHead,
    ) -> Result<(Committed, AdaptReport), AdaptError> {
        let task = &admitted.record.task;
        let cfg = &self.config;
        let step = self.tasks.len() + 1;
        let backbone = self.backbone_for(admitted.pretrained, pretrained)?;
        if head.dim() != backbone.embedding_dim() {
            return Err(AdaptError::Head {
                task: task.clone(),
                reason: format!(
                    "head dimension {}, the model's embedding dimension is {}",
                    head.dim(),
                    backbone.embedding_dim()
                ),
            });
        }

        // 1. Experts.
        let t0 = Instant::now();
        let built = self.new_experts(step, pretrained, finetuned)?;
        let seconds_experts = t0.elapsed().as_secs_f64();
        let mut experts = self.experts.clone();
        let mut stats = Vec::with_capacity(built.len());
        for (m, f, s) in built {
            experts.entry(m).or_default().push(f);
            stats.push(s);
        }

        // 2. Gates: a new one per module, N(0, std^2) weights, configured bias.
        let mut gates = self.gates.clone();
        gates.push_random(
            &self.vision,
            self.modules.iter().copied(),
            cfg.gate_init_std as f32,
            stream_seed(cfg.seed, step, STREAM_GATES),
        )?;
        for (_, list) in &mut gates.modules {
            if let Some(g) = list.last_mut() {
                g.bias = cfg.gate_init_bias as f32;
            }
        }

        // Teacher logits on every seed sample (the teacher is deterministic, so computing them
        // once equals recomputing them per batch).
        let t0 = Instant::now();
        let teacher_model = ClipVisionModel::from_params_on(&self.vision, finetuned, &self.device)?;
        let teacher = teacher_logits(&teacher_model, head, seed, cfg.batch_size)?;
        drop(teacher_model);
        let seconds_teacher = t0.elapsed().as_secs_f64();

        let seed_task = SeedTask {
            head,
            seed,
            teacher: &teacher,
        };
        let n = seed.len();
        let pass_batches =
            SeedBatches::new(n, cfg.batch_size, stream_seed(cfg.seed, step, STREAM_PASS)).epoch();
        let kl_before = if cfg.report_initial_kl {
            let p = seed_pass(
                &backbone,
                &experts,
                &gates,
                seed_task,
                &pass_batches,
                cfg.temperature,
                &BTreeSet::new(),
            )
            .map_err(|e| with_task(e, task))?;
            Some(p.kl)
        } else {
            None
        };

        // 3. Test-time adaptation of the new gates.
        let t0 = Instant::now();
        let projectors: BTreeMap<ModuleId, GradientProjector> =
            if cfg.projection == GateProjection::None {
                BTreeMap::new()
            } else {
                self.subspaces
                    .iter()
                    .map(|(m, u)| {
                        (
                            *m,
                            GradientProjector::new(u.as_ref(), cfg.projection, cfg.gamma, cfg.beta),
                        )
                    })
                    .collect()
            };
        let mut trainer = GateTrainer::new(&backbone, &experts, &gates, projectors, seed_task, cfg)
            .map_err(|e| with_task(e, task))?;
        let mut batches = SeedBatches::new(
            n,
            cfg.batch_size,
            stream_seed(cfg.seed, step, STREAM_BATCHES),
        );
        let mut losses = Vec::with_capacity(cfg.steps);
        for s in 0..cfg.steps {
            let batch = batches.next().unwrap_or_default();
            let loss = trainer.step(&batch).map_err(|e| with_task(e, task))?;
            if !loss.is_finite() {
                return Err(AdaptError::NonFiniteLoss {
                    task: task.clone(),
                    step: s,
                    value: loss,
                });
            }
            losses.push(loss);
        }
        let (gates, projectors) = trainer.finish()?;
        let seconds_adaptation = t0.elapsed().as_secs_f64();

        // 4. Subspace update from the merged model's inputs on the seed set.
        let t0 = Instant::now();
        let record: BTreeSet<ModuleId> = self.modules.iter().copied().collect();
        let pass = seed_pass(
            &backbone,
            &experts,
            &gates,
            seed_task,
            &pass_batches,
            cfg.temperature,
            &record,
        )
        .map_err(|e| with_task(e, task))?;
        let svd = cfg
            .subspace_svd
            .to_linalg(stream_seed(cfg.seed, step, STREAM_SUBSPACE_SVD));
        let updated: Vec<Vec<(ModuleId, Mat<f32>)>> = pass
            .covariances
            .par_iter()
            .map(|cov| -> Result<Vec<(ModuleId, Mat<f32>)>, AdaptError> {
                let Some(&first) = cov.modules.first() else {
                    return Ok(Vec::new());
                };
                let top = top_directions(first, cov.to_mat().as_ref(), cfg.subspace_k, svd)?;
                cov.modules
                    .iter()
                    .map(|&m| {
                        let empty = Mat::<f32>::zeros(cov.dim, 0);
                        let old = self.subspaces.get(&m).unwrap_or(&empty);
                        Ok((m, extend_basis(m, old.as_ref(), top.as_ref())?))
                    })
                    .collect()
            })
            .collect::<Result<_, _>>()?;
        let mut subspaces = self.subspaces.clone();
        for (m, u) in updated.into_iter().flatten() {
            subspaces.insert(m, u);
        }
        let seconds_subspace = t0.elapsed().as_secs_f64();

        // Report.
        let count = stats.len().max(1) as f64;
        let mut metrics = IndexMap::new();
        metrics.insert("modules".to_owned(), self.modules.len() as f64);
        metrics.insert("steps".to_owned(), cfg.steps as f64);
        metrics.insert(
            "mean_k_eff".to_owned(),
            stats.iter().map(|s| s.k_eff as f64).sum::<f64>() / count,
        );
        metrics.insert(
            "max_k_eff".to_owned(),
            stats.iter().map(|s| s.k_eff).max().unwrap_or(0) as f64,
        );
        metrics.insert(
            "mean_expert_rank".to_owned(),
            stats.iter().map(|s| s.rank as f64).sum::<f64>() / count,
        );
        metrics.insert(
            "mean_projected_fraction".to_owned(),
            stats
                .iter()
                .map(|s| {
                    if s.tau_norm > 0.0 {
                        s.projected_norm / s.tau_norm
                    } else {
                        1.0
                    }
                })
                .sum::<f64>()
                / count,
        );
        metrics.insert(
            "mean_kept_fraction".to_owned(),
            stats.iter().map(|s| s.kept_fraction).sum::<f64>() / count,
        );
        let lambdas: Vec<f64> = projectors
            .values()
            .flat_map(GradientProjector::lambdas)
            .collect();
        let scores: Vec<f64> = projectors
            .values()
            .flat_map(|p| p.interference().to_vec())
            .collect();
        if !lambdas.is_empty() {
            metrics.insert(
                "lambda_mean".to_owned(),
                lambdas.iter().sum::<f64>() / lambdas.len() as f64,
            );
            metrics.insert(
                "lambda_min".to_owned(),
                lambdas.iter().copied().fold(f64::INFINITY, f64::min),
            );
            metrics.insert(
                "interference_mean".to_owned(),
                scores.iter().sum::<f64>() / scores.len().max(1) as f64,
            );
        }
        metrics.insert(
            "subspace_dim_max".to_owned(),
            subspaces.values().map(Mat::ncols).max().unwrap_or(0) as f64,
        );
        let target_sq: f64 = stats.iter().map(|s| s.tau_norm * s.tau_norm).sum();
        let total = admitted.record.task_vector_norm;
        metrics.insert(
            "non_target_delta_norm".to_owned(),
            (total * total - target_sq).max(0.0).sqrt(),
        );
        metrics.insert("seconds_experts".to_owned(), seconds_experts);
        metrics.insert("seconds_teacher".to_owned(), seconds_teacher);
        metrics.insert("seconds_adaptation".to_owned(), seconds_adaptation);
        metrics.insert("seconds_subspace".to_owned(), seconds_subspace);
        let merged_delta_norm = experts
            .values()
            .map(|e| experts_frobenius_sq(e))
            .sum::<f64>()
            .sqrt();
        let report = AdaptReport {
            method: MINGLE.to_owned(),
            step,
            task: task.clone(),
            task_vector_norm: total,
            merged_delta_norm,
            seed_samples: n,
            seed_source: cfg.seed_source,
            losses,
            kl_before,
            kl_after: pass.kl,
            metrics,
        };
        Ok((
            Committed {
                experts,
                gates,
                subspaces,
                backbone,
            },
            report,
        ))
    }

    fn check_stream(&self, pretrained: &ParamDict) -> Result<Fingerprint, AdaptError> {
        let Some(expected) = self.pretrained else {
            return Err(AdaptError::EmptyStream { method: MINGLE });
        };
        let got = Fingerprint::of_params(pretrained);
        if got != expected {
            return Err(AdaptError::PretrainedChanged { expected, got });
        }
        Ok(got)
    }
}

/// The new values of one step, applied only when the whole step succeeded.
struct Committed {
    experts: BTreeMap<ModuleId, Vec<LowRankFactors>>,
    gates: GateValues,
    subspaces: BTreeMap<ModuleId, Mat<f32>>,
    backbone: ClipVisionModel,
}

fn state_err(name: &str, reason: impl Into<String>) -> AdaptError {
    AdaptError::StateTensor {
        method: MINGLE,
        name: name.to_owned(),
        reason: reason.into(),
    }
}

fn put(
    dict: &mut ParamDict,
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
) -> Result<(), AdaptError> {
    let t = HostTensor::new(shape, data).map_err(|e| state_err(&name, e.to_string()))?;
    dict.insert(name, t);
    Ok(())
}

fn take<'a>(
    dict: &'a ParamDict,
    name: &str,
    used: &mut BTreeSet<String>,
) -> Result<&'a HostTensor, AdaptError> {
    let t = dict.get(name).map_err(|_| state_err(name, "missing"))?;
    used.insert(name.to_owned());
    Ok(t)
}

impl TestTimeMerger for Mingle {
    fn method(&self) -> &'static str {
        MINGLE
    }

    fn absorb(
        &mut self,
        pretrained: &ParamDict,
        finetuned: &ParamDict,
        task: &TaskId,
        seed: &SeedImages,
        head: &TaskHead,
    ) -> Result<AdaptReport, AdaptError> {
        let admitted = self.admit(pretrained, finetuned, task)?;
        self.check_seed(task, seed)?;
        let (committed, report) = self.run_task(&admitted, pretrained, finetuned, seed, head)?;
        self.experts = committed.experts;
        self.gates = committed.gates;
        self.subspaces = committed.subspaces;
        self.backbone = Some((admitted.pretrained, committed.backbone));
        self.pretrained = Some(admitted.pretrained);
        self.tasks.push(admitted.record);
        Ok(report)
    }

    fn num_tasks(&self) -> usize {
        self.tasks.len()
    }

    fn tasks(&self) -> Vec<TaskId> {
        self.tasks.iter().map(|r| r.task.clone()).collect()
    }

    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, AdaptError> {
        self.check_stream(pretrained)?;
        let mut model = ExpertModel::new(pretrained.clone());
        for &m in &self.modules {
            let (name, _) = target_weight(pretrained, m)?;
            let list = self
                .experts(m)
                .iter()
                .zip(&self.tasks)
                .map(|(f, rec)| -> Result<LowRankExpert, AdaptError> {
                    let (d_out, d_in, r) = (f.d_out(), f.d_in(), f.rank());
                    let up = HostTensor::new(vec![d_out, r], f.u().to_vec())?;
                    let mut down = vec![0.0f32; r * d_in];
                    for (i, row) in f.v().chunks_exact(r).enumerate() {
                        for (k, (v, s)) in row.iter().zip(f.s()).enumerate() {
                            down[k * d_in + i] = v * s;
                        }
                    }
                    let down = HostTensor::new(vec![r, d_in], down)?;
                    Ok(LowRankExpert::new(up, down, vec![rec.task.clone()]))
                })
                .collect::<Result<Vec<_>, _>>()?;
            model.experts.insert(name, list);
        }
        Ok(MergedModel::Experts(model))
    }

    fn gated_model(&self, backbone: &ClipVisionModel) -> Result<GatedModel, AdaptError> {
        if self.tasks.is_empty() {
            return Err(AdaptError::EmptyStream { method: MINGLE });
        }
        if backbone.config() != &self.vision {
            return Err(AdaptError::Vit(VitError::InvalidConfig {
                field: "vision tower",
                reason: "the backbone's configuration differs from the merger's".into(),
            }));
        }
        let device = backbone.device();
        let bank = ExpertBank::new(
            &self.vision,
            self.experts.iter().map(|(m, e)| (*m, e.clone())),
            device,
        )?;
        let gates = GateBank::new(&self.gates, GateTraining::Frozen, device)?;
        GatedModel::new(backbone.clone(), bank, gates)
    }

    fn state(&self) -> Result<AdaptState, AdaptError> {
        let config = serde_json::to_value(&self.config).map_err(|e| AdaptError::InvalidState {
            method: MINGLE,
            reason: format!("cannot serialise the configuration: {e}"),
        })?;
        let mut tensors = ParamDict::new();
        for &m in &self.modules {
            for (e, f) in self.experts(m).iter().enumerate() {
                let p = format!("expert.{m}.{e}");
                put(
                    &mut tensors,
                    format!("{p}.u"),
                    vec![f.d_out(), f.rank()],
                    f.u().to_vec(),
                )?;
                put(
                    &mut tensors,
                    format!("{p}.s"),
                    vec![f.rank()],
                    f.s().to_vec(),
                )?;
                put(
                    &mut tensors,
                    format!("{p}.v"),
                    vec![f.d_in(), f.rank()],
                    f.v().to_vec(),
                )?;
            }
            let gates = self.gates.gates(m);
            if let Some(first) = gates.first() {
                let d_in = first.weight.len();
                let w: Vec<f32> = gates
                    .iter()
                    .flat_map(|g| g.weight.iter().copied())
                    .collect();
                put(
                    &mut tensors,
                    format!("gate.{m}.weight"),
                    vec![gates.len(), d_in],
                    w,
                )?;
                let b: Vec<f32> = gates.iter().map(|g| g.bias).collect();
                put(&mut tensors, format!("gate.{m}.bias"), vec![gates.len()], b)?;
            }
            if let Some(u) = self.subspaces.get(&m) {
                let (d, k) = u.shape();
                let data: Vec<f32> = (0..d)
                    .flat_map(|i| (0..k).map(move |j| u[(i, j)]))
                    .collect();
                put(&mut tensors, format!("subspace.{m}"), vec![d, k], data)?;
            }
        }
        Ok(AdaptState {
            metadata: AdaptMetadata {
                format: ADAPT_STATE_FORMAT.to_owned(),
                version: ADAPT_STATE_VERSION,
                method: MINGLE.to_owned(),
                config,
                vision: self.vision.clone(),
                modules: self.modules.clone(),
                pretrained: self.pretrained,
                tasks: self.tasks.clone(),
            },
            tensors,
        })
    }

    #[allow(clippy::too_many_lines)]
    fn restore(&mut self, state: &AdaptState) -> Result<(), AdaptError> {
        let meta = &state.metadata;
        let invalid = |reason: String| AdaptError::InvalidState {
            method: MINGLE,
            reason,
        };
        if meta.format != ADAPT_STATE_FORMAT || meta.version != ADAPT_STATE_VERSION {
            return Err(invalid(format!(
                "format `{}` version {}, expected `{ADAPT_STATE_FORMAT}` version {ADAPT_STATE_VERSION}",
                meta.format, meta.version
            )));
        }
        if meta.method != MINGLE {
            return Err(invalid(format!(
                "the state belongs to method `{}`",
                meta.method
            )));
        }
        let config: MingleConfig = serde_json::from_value(meta.config.clone())
            .map_err(|e| invalid(format!("configuration: {e}")))?;
        if config != self.config {
            return Err(invalid(format!(
                "the state was written with configuration {config:?}, this merger has {:?}",
                self.config
            )));
        }
        if meta.vision != self.vision {
            return Err(invalid(
                "the state belongs to a tower of another shape".into(),
            ));
        }
        if meta.modules != self.modules {
            return Err(invalid("the state has other target modules".into()));
        }
        if meta.pretrained.is_none() != meta.tasks.is_empty() {
            return Err(invalid(
                "pretrained fingerprint and task list disagree".into(),
            ));
        }
        let t = meta.tasks.len();
        let tensors = &state.tensors;
        let mut used = BTreeSet::new();
        let mut experts = BTreeMap::new();
        let mut gates = GateValues::new();
        let mut subspaces = BTreeMap::new();
        for &m in &self.modules {
            let (d_out, d_in) = m.dims(&self.vision);
            let mut list = Vec::with_capacity(t);
            for e in 0..t {
                let p = format!("expert.{m}.{e}");
                let (un, sn, vn) = (format!("{p}.u"), format!("{p}.s"), format!("{p}.v"));
                let u = take(tensors, &un, &mut used)?;
                let s = take(tensors, &sn, &mut used)?;
                let v = take(tensors, &vn, &mut used)?;
                let r = s.numel();
                if s.shape() != [r] || r == 0 {
                    return Err(state_err(
                        &sn,
                        format!("shape {:?}, expected [r] with r >= 1", s.shape()),
                    ));
                }
                if u.shape() != [d_out, r] {
                    return Err(state_err(
                        &un,
                        format!("shape {:?}, expected [{d_out}, {r}]", u.shape()),
                    ));
                }
                if v.shape() != [d_in, r] {
                    return Err(state_err(
                        &vn,
                        format!("shape {:?}, expected [{d_in}, {r}]", v.shape()),
                    ));
                }
                let f = LowRankFactors::new(
                    d_out,
                    d_in,
                    u.data().to_vec(),
                    s.data().to_vec(),
                    v.data().to_vec(),
                )
                .map_err(|err| state_err(&p, err.to_string()))?;
                list.push(f);
            }
            if t == 0 {
                continue;
            }
            experts.insert(m, list);
            let (wn, bn) = (format!("gate.{m}.weight"), format!("gate.{m}.bias"));
            let w = take(tensors, &wn, &mut used)?;
            let b = take(tensors, &bn, &mut used)?;
            if w.shape() != [t, d_in] {
                return Err(state_err(
                    &wn,
                    format!("shape {:?}, expected [{t}, {d_in}]", w.shape()),
                ));
            }
            if b.shape() != [t] {
                return Err(state_err(
                    &bn,
                    format!("shape {:?}, expected [{t}]", b.shape()),
                ));
            }
            for (row, bias) in w.data().chunks_exact(d_in).zip(b.data()) {
                if row.iter().any(|x| !x.is_finite()) || !bias.is_finite() {
                    return Err(state_err(&wn, "non-finite gate value"));
                }
                gates.push(
                    m,
                    LinearGate {
                        weight: row.to_vec(),
                        bias: *bias,
                    },
                );
            }
            let un = format!("subspace.{m}");
            let u = take(tensors, &un, &mut used)?;
            let [rows, k] = *u.shape() else {
                return Err(state_err(
                    &un,
                    format!("shape {:?}, expected [{d_in}, K]", u.shape()),
                ));
            };
            if rows != d_in || k == 0 || k > d_in {
                return Err(state_err(
                    &un,
                    format!(
                        "shape {:?}, expected [{d_in}, K] with 1 <= K <= {d_in}",
                        u.shape()
                    ),
                ));
            }
            if u.data().iter().any(|x| !x.is_finite()) {
                return Err(state_err(&un, "non-finite value"));
            }
            let data = u.data();
            subspaces.insert(m, Mat::from_fn(rows, k, |i, j| data[i * k + j]));
        }
        if let Some(extra) = tensors.keys().find(|k| !used.contains(*k)) {
            return Err(state_err(extra, "unexpected tensor"));
        }
        self.experts = experts;
        self.gates = gates;
        self.subspaces = subspaces;
        self.pretrained = meta.pretrained;
        self.tasks = meta.tasks.clone();
        self.backbone = None;
        Ok(())
    }
}
