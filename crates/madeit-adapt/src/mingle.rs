//! MINGLE: mixtures of null-space gated low-rank experts (Qiu et al., 2025), as a
//! [`TestTimeMerger`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use burn::prelude::Device;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use indexmap::IndexMap;
use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_stream::{Fingerprint, Ledger, MergedModel, StepReport, TaskId};
use madeit_vit::{
    ClipVisionConfig, ClipVisionModel, GateBank, GateTraining, GateValues, LowRankFactors, ModuleId,
};
use rayon::prelude::*;

use crate::admit::{Admitted, admit_step, check_head};
use crate::config::MINGLE;
use crate::expert::{ExpertStats, build_expert};
use crate::persist::{
    ScaleOn, StateReader, StateWriter, check_backbone, check_stream, expert_bank, expert_model,
    stream_seed, vision_tensor,
};
use crate::subspace::{extend_basis, top_directions};
use crate::tta::{GateTrainer, SeedTask, seed_pass, teacher_logits};
use crate::{
    AdaptError, AdaptReport, AdaptState, ContinualMethod, GateProjection, GatedModel,
    GradientProjector, MingleConfig, SeedBatches, TestTimeExtras, TestTimeMerger, TestTimeStep,
};

const STREAM_GATES: u64 = 1;
const STREAM_BATCHES: u64 = 2;
const STREAM_PASS: u64 = 3;
const STREAM_EXPERT_SVD: u64 = 4;
const STREAM_SUBSPACE_SVD: u64 = 5;

/// The weight of `module` in `dict`, under its bare or `vision_model.`-prefixed name.
fn target_weight(dict: &ParamDict, module: ModuleId) -> Result<(String, &HostTensor), AdaptError> {
    vision_tensor(dict, &module.weight_name())
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
/// Report metrics (the `metrics` of [`AdaptReport::base`]): `modules`, `steps`, `mean_k_eff`,
/// `max_k_eff`, `mean_expert_rank`, `mean_projected_fraction` (`||tau'|| / ||tau||`),
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
    ledger: Ledger,
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
            ledger: Ledger::default(),
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
                let (d_out, d_in) = self.vision.module_dims(m.kind);
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
        input: &TestTimeStep<'_>,
    ) -> Result<(Committed, AdaptReport), AdaptError> {
        let (pretrained, finetuned) = (input.pretrained, input.finetuned);
        let TestTimeExtras { seed, head } = input.extras;
        let task = &admitted.record.task;
        let cfg = &self.config;
        let step = self.ledger.tasks.len() + 1;
        let backbone = self.backbone_for(admitted.pretrained, pretrained)?;
        check_head(task, head, backbone.embedding_dim())?;

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
            cfg.gate_init_bias as f32,
            stream_seed(cfg.seed, step, STREAM_GATES),
        )?;

        // Teacher logits on every seed sample (the teacher is deterministic, so computing them
        // once equals recomputing them per batch).
        let t0 = Instant::now();
        let teacher_model = ClipVisionModel::from_params_on(&self.vision, finetuned, &self.device)?;
        let teacher = teacher_logits(&teacher_model, head, seed, cfg.adam.batch_size)?;
        drop(teacher_model);
        let seconds_teacher = t0.elapsed().as_secs_f64();

        let seed_task = SeedTask {
            head,
            seed,
            teacher: &teacher,
        };
        let n = seed.len();
        let pass_batches = SeedBatches::new(
            n,
            cfg.adam.batch_size,
            stream_seed(cfg.seed, step, STREAM_PASS),
        )
        .epoch();
        // One pass of the merged model over the seed set, recording the inputs of `record`.
        let pass_with = |gates: &GateValues, record: &BTreeSet<ModuleId>| {
            seed_pass(
                &backbone,
                &experts,
                gates,
                seed_task,
                &pass_batches,
                cfg.temperature,
                record,
            )
            .map_err(|e| with_task(e, task))
        };
        let kl_before = if cfg.report_initial_kl {
            Some(pass_with(&gates, &BTreeSet::new())?.kl)
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
        let mut losses = Vec::with_capacity(cfg.adam.steps);
        let seed_batches = stream_seed(cfg.seed, step, STREAM_BATCHES);
        for (s, batch) in cfg.adam.step_batches(n, seed_batches) {
            let loss = trainer.step(&batch).map_err(|e| with_task(e, task))?;
            losses.push(AdaptError::finite_loss(task, s, loss)?);
        }
        let (gates, projectors) = trainer.finish()?;
        let seconds_adaptation = t0.elapsed().as_secs_f64();

        // 4. Subspace update from the merged model's inputs on the seed set.
        let t0 = Instant::now();
        let record: BTreeSet<ModuleId> = self.modules.iter().copied().collect();
        let pass = pass_with(&gates, &record)?;
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
        metrics.insert("steps".to_owned(), cfg.adam.steps as f64);
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
            base: StepReport {
                method: MINGLE.to_owned(),
                step,
                task: task.clone(),
                task_vector_norm: total,
                merged_delta_norm,
                metrics,
            },
            seed_samples: n,
            seed_source: cfg.seed_images.seed_source,
            losses,
            kl_before,
            kl_after: pass.kl,
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
        check_stream(MINGLE, &self.ledger, pretrained)
    }
}

/// The new values of one step, applied only when the whole step succeeded.
struct Committed {
    experts: BTreeMap<ModuleId, Vec<LowRankFactors>>,
    gates: GateValues,
    subspaces: BTreeMap<ModuleId, Mat<f32>>,
    backbone: ClipVisionModel,
}

impl ContinualMethod for Mingle {
    test_time_contract!(MINGLE);

    fn absorb(&mut self, input: &TestTimeStep<'_>) -> Result<AdaptReport, AdaptError> {
        let admitted = admit_step(&self.ledger, &self.vision, input)?;
        let (committed, report) = self.run_task(&admitted, input)?;
        self.experts = committed.experts;
        self.gates = committed.gates;
        self.subspaces = committed.subspaces;
        self.backbone = Some((admitted.pretrained, committed.backbone));
        self.ledger.commit(admitted);
        Ok(report)
    }

    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, AdaptError> {
        self.check_stream(pretrained)?;
        expert_model(
            pretrained.clone(),
            pretrained,
            &self.modules,
            |m| self.experts(m),
            &self.ledger.tasks,
            ScaleOn::Down,
        )
    }

    fn state(&self) -> Result<AdaptState, AdaptError> {
        let mut w = StateWriter::new(MINGLE);
        for &m in &self.modules {
            w.put_experts(m, self.experts(m))?;
            w.put_gates(&format!("gate.{m}"), self.gates.gates(m))?;
            if let Some(u) = self.subspaces.get(&m) {
                let (d, k) = u.shape();
                let data: Vec<f32> = (0..d)
                    .flat_map(|i| (0..k).map(move |j| u[(i, j)]))
                    .collect();
                w.put(format!("subspace.{m}"), vec![d, k], data)?;
            }
        }
        w.finish(&self.config, &self.vision, &self.modules, &self.ledger)
    }

    fn restore(&mut self, state: &AdaptState) -> Result<(), AdaptError> {
        let mut r = StateReader::open(state, MINGLE, &self.config, &self.vision, &self.modules)?;
        let t = state.metadata.tasks.len();
        let mut experts = BTreeMap::new();
        let mut gates = GateValues::new();
        let mut subspaces = BTreeMap::new();
        for &m in &self.modules {
            let (d_out, d_in) = self.vision.module_dims(m.kind);
            let list = r.experts(m, t, d_out, d_in)?;
            if t == 0 {
                continue;
            }
            experts.insert(m, list);
            for gate in r.gates(&format!("gate.{m}"), t, d_in)? {
                gates.push(m, gate);
            }
            let un = format!("subspace.{m}");
            let u = r.take(&un)?;
            let k = match *u.shape() {
                [rows, k] if rows == d_in && (1..=d_in).contains(&k) => k,
                _ => {
                    return Err(r.err(
                        &un,
                        format!(
                            "shape {:?}, expected [{d_in}, K] with 1 <= K <= {d_in}",
                            u.shape()
                        ),
                    ));
                }
            };
            if u.data().iter().any(|x| !x.is_finite()) {
                return Err(r.err(&un, "non-finite value"));
            }
            let data = u.data();
            subspaces.insert(m, Mat::from_fn(d_in, k, |i, j| data[i * k + j]));
        }
        self.ledger = r.finish()?;
        self.experts = experts;
        self.gates = gates;
        self.subspaces = subspaces;
        self.backbone = None;
        Ok(())
    }
}

impl TestTimeMerger for Mingle {
    fn gated_model(&self, backbone: &ClipVisionModel) -> Result<GatedModel, AdaptError> {
        check_backbone(MINGLE, self.ledger.tasks.len(), backbone, &self.vision)?;
        let device = backbone.device();
        let bank = expert_bank(&self.vision, &self.experts, device)?;
        let gates = GateBank::new(&self.gates, GateTraining::Frozen, device)?;
        GatedModel::new(backbone.clone(), bank, gates)
    }
}
