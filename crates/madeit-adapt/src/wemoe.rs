//! C. LoRA-WEMoE: continual weight-ensembling mixture of low-rank MLP experts with routers
//! retrained at every step (the reference's `c_wemoe`), as a [`TestTimeMerger`].

use std::collections::BTreeMap;
use std::time::Instant;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use indexmap::IndexMap;
use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_stream::{Ledger, MergedModel, ParameterError, StepReport};
use madeit_vit::{
    ClipVisionConfig, ClipVisionModel, GateBank, GateSharing, GateTraining, GateValues,
    LowRankFactors, ModuleId, ModuleKind,
};
use serde::{Deserialize, Serialize};

use crate::admit::{admit_step, check_head};
use crate::entropy::entropy_loss;
use crate::expert::build_expert;
use crate::options::{AdamOptions, SeedImageOptions};
use crate::persist::{
    ScaleOn, StateReader, StateWriter, check_backbone, check_stream, expert_bank, expert_model,
    stream_seed, vision_tensor,
};
use crate::tta::{mean_kl, teacher_logits};
use crate::{
    AdaptError, AdaptReport, AdaptState, ContinualMethod, GatedModel, SvdMethod, TestTimeExtras,
    TestTimeMerger, TestTimeStep,
};

/// Registry name of C. LoRA-WEMoE.
pub const LORA_WEMOE: &str = "c_lora_wemoe";

/// C. LoRA-WEMoE's configuration. `Default` gives the reference's values.
///
/// The expert rank of a module `d_out x d_in` at step `t` is
/// `max(1, min(r_t, floor(max_rank_fraction * min(d_out, d_in))))` with `r_1 = first_rank`
/// and `r_t = rank` afterwards (the reference: 64 for the first task of the order, 16 for
/// the others). Set `first_rank = rank` for one rank for all tasks. The cap changes nothing
/// on CLIP models (ViT-B: 64 of 768) and is the same rule as MINGLE's
/// ([`crate::MingleConfig::effective_rank`]).
///
/// Keys: see [`parse_config`](crate::parse_config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WemoeConfig {
    /// Continual task-arithmetic coefficient of the attention weights and biases (0.3).
    pub attention_lambda: f64,
    /// Expert rank of the first task of the order (64).
    pub first_rank: usize,
    /// Expert rank of every later task (16).
    pub rank: usize,
    /// Rank cap as a fraction of the module's smaller side (0.5; see the type docs).
    pub max_rank_fraction: f64,
    /// Standard deviation of a new router row's weights (0.01).
    pub router_init_std: f64,
    /// Bias of a new router row (0.3).
    pub router_init_bias: f64,
    /// Seed of the router initialisation, the batch order and the seed-sample draw.
    pub seed: u64,
    /// How the experts' truncated SVDs are computed (exact).
    pub expert_svd: SvdMethod,
    /// The Adam run of the routers at each task (keys `lr`, `adam_beta1`, `adam_beta2`,
    /// `adam_epsilon`, `steps`, `batch_size`; the reference's values by default). The
    /// learning rate must be > 0 here.
    #[serde(flatten)]
    pub adam: AdamOptions,
    /// The seed images (keys `seed_per_class`, `seed_source`; 5 per class from the seed
    /// split by default).
    #[serde(flatten)]
    pub seed_images: SeedImageOptions,
}

impl Default for WemoeConfig {
    fn default() -> Self {
        Self {
            attention_lambda: 0.3,
            first_rank: 64,
            rank: 16,
            max_rank_fraction: 0.5,
            router_init_std: 0.01,
            router_init_bias: 0.3,
            seed: 0,
            expert_svd: SvdMethod::Exact,
            adam: AdamOptions::default(),
            seed_images: SeedImageOptions::default(),
        }
    }
}

impl WemoeConfig {
    /// The expert rank of a `d_out x d_in` module at 1-based step `step` (see the type docs).
    #[must_use]
    pub fn effective_rank(&self, step: usize, d_out: usize, d_in: usize) -> usize {
        let r = if step <= 1 {
            self.first_rank
        } else {
            self.rank
        };
        let side = d_out.min(d_in);
        let cap = (self.max_rank_fraction * side as f64).floor();
        let cap = if cap.is_finite() && cap >= 1.0 {
            cap as usize
        } else {
            1
        };
        r.min(cap).clamp(1, side.max(1))
    }

    /// Validates every value once.
    ///
    /// # Errors
    /// [`AdaptError::InvalidParameter`] naming the first bad field.
    pub fn check(&self) -> Result<(), AdaptError> {
        let bad = |parameter: &'static str, value: f64, reason: &'static str| {
            Err(AdaptError::from(ParameterError::new(
                LORA_WEMOE, parameter, value, reason,
            )))
        };
        let finite_pos = |x: f64| x.is_finite() && x > 0.0;
        ParameterError::finite(LORA_WEMOE, "attention_lambda", self.attention_lambda)?;
        if self.first_rank == 0 {
            return bad("first_rank", 0.0, "must be at least 1");
        }
        if self.rank == 0 {
            return bad("rank", 0.0, "must be at least 1");
        }
        if !finite_pos(self.max_rank_fraction) || self.max_rank_fraction > 1.0 {
            return bad(
                "max_rank_fraction",
                self.max_rank_fraction,
                "must lie in (0, 1]",
            );
        }
        if !self.router_init_std.is_finite() || self.router_init_std < 0.0 {
            return bad(
                "router_init_std",
                self.router_init_std,
                "must be finite and >= 0",
            );
        }
        ParameterError::finite(LORA_WEMOE, "router_init_bias", self.router_init_bias)?;
        if !finite_pos(self.adam.lr) {
            return bad("lr", self.adam.lr, "must be finite and > 0");
        }
        self.adam.check(LORA_WEMOE)?;
        self.seed_images.check(LORA_WEMOE)
    }
}

/// The attention parameters merged by continual task arithmetic: q, k, v and out_proj
/// weights and biases of every layer (bare names).
fn attention_names(config: &ClipVisionConfig) -> Vec<String> {
    (0..config.num_hidden_layers)
        .flat_map(|l| {
            [ModuleKind::Q, ModuleKind::K, ModuleKind::V, ModuleKind::Out]
                .into_iter()
                .flat_map(move |k| {
                    let m = ModuleId::new(l, k);
                    [m.weight_name(), m.bias_name()]
                })
        })
        .collect()
}

/// The MLP modules that receive experts: fc1 and fc2 of every layer.
fn mlp_modules(config: &ClipVisionConfig) -> Vec<ModuleId> {
    (0..config.num_hidden_layers)
        .flat_map(|l| {
            [
                ModuleId::new(l, ModuleKind::Fc1),
                ModuleId::new(l, ModuleKind::Fc2),
            ]
        })
        .collect()
}

const STREAM_ROUTER: u64 = 11;
const STREAM_BATCHES: u64 = 12;
const STREAM_SVD: u64 = 13;

/// C. LoRA-WEMoE, the continual weight-ensembling MoE baseline of the MINGLE paper, with the
/// reference code's behaviour (`method/mingle/c_wemoe.py`).
///
/// Per task `t`:
///
/// 1. **Attention** weights and biases (q, k, v, out_proj) are merged by continual task
///    arithmetic: `theta_attn = theta0_attn + lambda sum_{i<=t} tau_i` (`lambda = 0.3`).
///    Every other non-MLP parameter (embeddings, layer norms, the projection) and the MLP
///    biases stay pretrained (bias deltas are dropped).
/// 2. **Experts.** fc1 and fc2 of every layer gain one expert each, the truncated SVD of the
///    weight delta `W_t - W0` (`B = U_r`, `A = diag(s_r) V_r^T`; rank per
///    [`WemoeConfig::effective_rank`]).
/// 3. **Router.** One linear router per layer on the MLP input (the output of `layer_norm2`):
///    `g(X) = W_r xbar + b_r`, `xbar` the mean over tokens, then over the batch; it gains a
///    row for the new expert (`N(0, 0.01^2)`, bias 0.3). The same gate values weight fc1's
///    and fc2's experts: `W_fc = W0 + sum_e g_e B_e A_e`, no softmax
///    ([`GateSharing::SharedMlp`]).
/// 4. **Test-time adaptation.** *All* router rows of all layers are trained (Adam, lr
///    `1e-4`, 50 steps, batches of 16) by entropy minimisation
///    ([`entropy_loss`]) on the current task's seed samples, which is why the method forgets
///    much: earlier tasks' rows move to serve the newest task.
///
/// The merged model is evaluated with [`gated_model`](TestTimeMerger::gated_model) on batches
/// of one task (the router averages over the batch).
///
/// Report: `losses` holds the entropy before each step; `kl_before` is `None`; `kl_after`
/// is the mean `KL(fine-tuned || merged)` (temperature 1) on the seed set after the
/// adaptation, a measure of how far the merged model is from the task's own checkpoint.
/// Metrics: `experts_per_module`, `expert_rank`, `steps`, `entropy_first`, `entropy_last`,
/// `router_bias_mean`, `seconds_experts`, `seconds_adaptation`.
#[derive(Debug)]
pub struct LoraWemoe {
    config: WemoeConfig,
    vision: ClipVisionConfig,
    device: Device,
    modules: Vec<ModuleId>,
    ledger: Ledger,
    /// `lambda sum_i tau_i` of every attention parameter (bare names).
    attention: ParamDict,
    experts: BTreeMap<ModuleId, Vec<LowRankFactors>>,
    /// Router rows, stored as gates of each layer's fc1.
    routers: GateValues,
}

/// What one step produced, applied only when the whole step succeeded.
struct Committed {
    attention: ParamDict,
    experts: BTreeMap<ModuleId, Vec<LowRankFactors>>,
    routers: GateValues,
}

impl LoraWemoe {
    /// An empty merger for towers of shape `vision`, computing on `device` (routers are
    /// trained on its autodiff counterpart).
    ///
    /// # Errors
    /// [`AdaptError::InvalidParameter`] from [`WemoeConfig::check`]; [`AdaptError::Vit`] for an
    /// invalid tower configuration.
    pub fn new(
        config: WemoeConfig,
        vision: ClipVisionConfig,
        device: Device,
    ) -> Result<Self, AdaptError> {
        config.check()?;
        vision.validate()?;
        let modules = mlp_modules(&vision);
        Ok(Self {
            config,
            vision,
            device,
            modules,
            ledger: Ledger::default(),
            attention: ParamDict::new(),
            experts: BTreeMap::new(),
            routers: GateValues::new(),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &WemoeConfig {
        &self.config
    }

    /// The experts of `module` (fc1 or fc2 of a layer), in task order.
    #[must_use]
    pub fn experts(&self, module: ModuleId) -> &[LowRankFactors] {
        self.experts.get(&module).map_or(&[], Vec::as_slice)
    }

    /// The router rows of every layer, stored as the gates of the layer's fc1 module.
    #[must_use]
    pub fn routers(&self) -> &GateValues {
        &self.routers
    }

    /// The backbone: `theta0` with the merged attention parameters `theta0 + attention`.
    fn backbone_params(
        &self,
        pretrained: &ParamDict,
        attention: &ParamDict,
    ) -> Result<ParamDict, AdaptError> {
        let mut out = pretrained.clone();
        for (bare, delta) in attention.iter() {
            let (name, p) = vision_tensor(pretrained, bare)?;
            let data: Vec<f32> = p
                .data()
                .iter()
                .zip(delta.data())
                .map(|(a, d)| a + d)
                .collect();
            out.insert(name, HostTensor::new(p.shape().to_vec(), data)?);
        }
        Ok(out)
    }

    fn run_task(
        &self,
        step: usize,
        input: &TestTimeStep<'_>,
    ) -> Result<(Committed, AdaptReport, f64), AdaptError> {
        let (task, pretrained, finetuned) = (input.task, input.pretrained, input.finetuned);
        let TestTimeExtras { seed, head } = input.extras;
        let cfg = &self.config;
        // 1. Attention by continual task arithmetic.
        let mut attention = ParamDict::new();
        for bare in attention_names(&self.vision) {
            let (_, p0) = vision_tensor(pretrained, &bare)?;
            let (_, pt) = vision_tensor(finetuned, &bare)?;
            let prev = self.attention.get(&bare).ok();
            let data: Vec<f32> = p0
                .data()
                .iter()
                .zip(pt.data())
                .enumerate()
                .map(|(i, (a, b))| {
                    let before = prev.map_or(0.0, |t| t.data()[i]);
                    before + (f64::from(b - a) * cfg.attention_lambda) as f32
                })
                .collect();
            attention.insert(bare, HostTensor::new(p0.shape().to_vec(), data)?);
        }

        // 2. Experts on fc1 and fc2.
        let t0 = Instant::now();
        let mut experts = self.experts.clone();
        let svd = cfg
            .expert_svd
            .to_linalg(stream_seed(cfg.seed, step, STREAM_SVD));
        let mut ranks = Vec::new();
        for &m in &self.modules {
            let (_, w0) = vision_tensor(pretrained, &m.weight_name())?;
            let (_, wt) = vision_tensor(finetuned, &m.weight_name())?;
            let (d_out, d_in) = self.vision.module_dims(m.kind);
            if w0.shape() != [d_out, d_in] || wt.shape() != [d_out, d_in] {
                return Err(AdaptError::TargetWeight {
                    name: m.weight_name(),
                    reason: format!(
                        "shapes {:?} and {:?}, expected [{d_out}, {d_in}]",
                        w0.shape(),
                        wt.shape()
                    ),
                });
            }
            let rank = cfg.effective_rank(step, d_out, d_in);
            let (f, _) = build_expert(m, w0.as_mat()?, wt.as_mat()?, &[], rank, false, svd)?;
            ranks.push(f.rank());
            experts.entry(m).or_default().push(f);
        }
        let seconds_experts = t0.elapsed().as_secs_f64();

        // 3. Routers: one new row per layer.
        let mut routers = self.routers.clone();
        let fc1: Vec<ModuleId> = self
            .modules
            .iter()
            .copied()
            .filter(|m| m.kind == ModuleKind::Fc1)
            .collect();
        routers.push_random(
            &self.vision,
            fc1.iter().copied(),
            cfg.router_init_std as f32,
            cfg.router_init_bias as f32,
            stream_seed(cfg.seed, step, STREAM_ROUTER),
        )?;

        // 4. Entropy minimisation over every router row.
        let t0 = Instant::now();
        let backbone_params = self.backbone_params(pretrained, &attention)?;
        let backbone =
            ClipVisionModel::from_params_on(&self.vision, &backbone_params, &self.device)?;
        check_head(task, head, backbone.embedding_dim())?;
        let bank = expert_bank(&self.vision, &experts, &self.device)?;
        let mut gates = Some(
            GateBank::new(&routers, GateTraining::All, &self.device.clone().autodiff())?
                .with_sharing(GateSharing::SharedMlp),
        );
        if let Some(g) = &gates {
            g.validate(&bank)?;
        }
        let mut optim: ModuleOptimizer = cfg.adam.burn_config().init();
        let mut losses = Vec::with_capacity(cfg.adam.steps);
        let seed_batches = stream_seed(cfg.seed, step, STREAM_BATCHES);
        for (s, batch) in cfg.adam.step_batches(seed.len(), seed_batches) {
            let Some(g) = gates.take() else { break };
            let px = backbone.pixels(seed.gather(&batch), batch.len())?;
            let out = backbone.forward_gated(px, &bank, &g)?;
            let loss = entropy_loss(head.logits(out.embedding())?);
            let value = madeit_vit::to_host(&loss)?
                .data()
                .first()
                .copied()
                .map_or(f64::NAN, f64::from);
            let value = AdaptError::finite_loss(task, s, value)?;
            let grads = GradientsParams::from_grads(loss.backward(), &g);
            gates = Some(optim.step(cfg.adam.lr, g, grads));
            losses.push(value);
        }
        let routers = match gates {
            Some(g) => g.to_values()?,
            None => routers,
        };
        let seconds_adaptation = t0.elapsed().as_secs_f64();

        // How far the merged model is from the task's checkpoint on the seed set.
        let teacher_model = ClipVisionModel::from_params_on(&self.vision, finetuned, &self.device)?;
        let teacher = teacher_logits(&teacher_model, head, seed, cfg.adam.batch_size)?;
        drop(teacher_model);
        let frozen = GateBank::new(&routers, GateTraining::Frozen, &self.device)?
            .with_sharing(GateSharing::SharedMlp);
        let model = GatedModel::new(backbone, bank, frozen)?;
        let mut student = Vec::with_capacity(teacher.len());
        let idx: Vec<usize> = (0..seed.len()).collect();
        for chunk in idx.chunks(cfg.adam.batch_size) {
            student.extend_from_slice(model.logits(head, seed.gather(chunk), chunk.len())?.data());
        }
        let kl_after = mean_kl(&student, &teacher, head.num_classes(), 1.0);

        let mut metrics = IndexMap::new();
        metrics.insert("experts_per_module".to_owned(), step as f64);
        metrics.insert(
            "expert_rank".to_owned(),
            ranks.iter().sum::<usize>() as f64 / ranks.len().max(1) as f64,
        );
        metrics.insert("steps".to_owned(), cfg.adam.steps as f64);
        if let (Some(f), Some(l)) = (losses.first(), losses.last()) {
            metrics.insert("entropy_first".to_owned(), *f);
            metrics.insert("entropy_last".to_owned(), *l);
        }
        let biases: Vec<f64> = routers
            .modules
            .iter()
            .flat_map(|(_, g)| g.iter().map(|x| f64::from(x.bias)))
            .collect();
        metrics.insert(
            "router_bias_mean".to_owned(),
            biases.iter().sum::<f64>() / biases.len().max(1) as f64,
        );
        metrics.insert("seconds_experts".to_owned(), seconds_experts);
        metrics.insert("seconds_adaptation".to_owned(), seconds_adaptation);
        let report = AdaptReport {
            base: StepReport {
                method: LORA_WEMOE.to_owned(),
                step,
                task: task.clone(),
                task_vector_norm: 0.0,
                merged_delta_norm: 0.0,
                metrics,
            },
            seed_samples: seed.len(),
            seed_source: cfg.seed_images.seed_source,
            losses,
            kl_before: None,
            kl_after,
        };
        let merged_delta_norm = attention
            .iter()
            .flat_map(|(_, t)| t.data().iter())
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        Ok((
            Committed {
                attention,
                experts,
                routers,
            },
            report,
            merged_delta_norm,
        ))
    }

    fn check_stream(&self, pretrained: &ParamDict) -> Result<(), AdaptError> {
        check_stream(LORA_WEMOE, &self.ledger, pretrained).map(|_| ())
    }
}

impl ContinualMethod for LoraWemoe {
    test_time_contract!(LORA_WEMOE);

    fn absorb(&mut self, input: &TestTimeStep<'_>) -> Result<AdaptReport, AdaptError> {
        let admitted = admit_step(&self.ledger, &self.vision, input)?;
        let step = self.ledger.tasks.len() + 1;
        let (committed, mut report, delta) = self.run_task(step, input)?;
        report.base.task_vector_norm = admitted.record.task_vector_norm;
        report.base.merged_delta_norm = delta;
        self.attention = committed.attention;
        self.experts = committed.experts;
        self.routers = committed.routers;
        self.ledger.commit(admitted);
        Ok(report)
    }

    /// The backbone with merged attention and the fc1 / fc2 experts (`up = U diag(s)`,
    /// `down = V^T`); the routers are part of the state and of the gated model only.
    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, AdaptError> {
        self.check_stream(pretrained)?;
        expert_model(
            self.backbone_params(pretrained, &self.attention)?,
            pretrained,
            &self.modules,
            |m| self.experts(m),
            &self.ledger.tasks,
            ScaleOn::Up,
        )
    }

    fn state(&self) -> Result<AdaptState, AdaptError> {
        let mut w = StateWriter::new(LORA_WEMOE);
        w.put_dict("attention.", &self.attention)?;
        for &m in &self.modules {
            w.put_experts(m, self.experts(m))?;
            w.put_gates(&format!("router.{m}"), self.routers.gates(m))?;
        }
        w.finish(&self.config, &self.vision, &self.modules, &self.ledger)
    }

    fn restore(&mut self, state: &AdaptState) -> Result<(), AdaptError> {
        let mut r =
            StateReader::open(state, LORA_WEMOE, &self.config, &self.vision, &self.modules)?;
        let t = state.metadata.tasks.len();
        let mut attention = ParamDict::new();
        if t > 0 {
            let expected: BTreeMap<String, Vec<usize>> = madeit_vit::expected_tensors(&self.vision)
                .into_iter()
                .collect();
            for bare in attention_names(&self.vision) {
                let name = format!("attention.{bare}");
                let shape = expected.get(&bare).cloned().unwrap_or_default();
                let x = r.take_finite(&name, &shape)?;
                attention.insert(bare, x.clone());
            }
        }
        let mut experts = BTreeMap::new();
        let mut routers = GateValues::new();
        for &m in &self.modules {
            if t == 0 {
                continue;
            }
            let (d_out, d_in) = self.vision.module_dims(m.kind);
            let list = r.experts(m, t, d_out, d_in)?;
            experts.insert(m, list);
            if m.kind != ModuleKind::Fc1 {
                continue;
            }
            for gate in r.gates(&format!("router.{m}"), t, d_in)? {
                routers.push(m, gate);
            }
        }
        self.ledger = r.finish()?;
        self.attention = attention;
        self.experts = experts;
        self.routers = routers;
        Ok(())
    }
}

impl TestTimeMerger for LoraWemoe {
    /// `backbone` must be the pretrained tower; the merged attention parameters are applied
    /// to a copy of it.
    fn gated_model(&self, backbone: &ClipVisionModel) -> Result<GatedModel, AdaptError> {
        check_backbone(LORA_WEMOE, self.ledger.tasks.len(), backbone, &self.vision)?;
        let device = backbone.device();
        let params = self.backbone_params(&backbone.to_params()?, &self.attention)?;
        let model = ClipVisionModel::from_params_on(&self.vision, &params, device)?;
        let bank = expert_bank(&self.vision, &self.experts, device)?;
        let gates = GateBank::new(&self.routers, GateTraining::Frozen, device)?
            .with_sharing(GateSharing::SharedMlp);
        GatedModel::new(model, bank, gates)
    }
}
