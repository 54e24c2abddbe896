//! Low-rank experts on the device: the bank of their factors ([`LowRankFactors`]),
//! per-sample routing and the routing features (projection scores).

use std::collections::{BTreeMap, BTreeSet};

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use rayon::prelude::*;

use crate::model::{ModuleAdapter, VisionOutput};
use crate::util::{download, transpose, upload};
use crate::{ClipVisionConfig, ClipVisionModel, ModuleId, VitError};

/// Low-rank factors `U diag(s) V^T`, the form the bank uploads (defined in `madeit-stream`,
/// which every crate that exchanges experts shares).
pub use madeit_stream::LowRankFactors;

/// The experts of one module on the device, concatenated along the rank.
#[derive(Debug, Clone)]
pub(crate) struct ModuleExperts {
    pub(crate) d_out: usize,
    /// Rank of each expert.
    pub(crate) ranks: Vec<usize>,
    /// Start column of each expert in `v` / row in `su`.
    pub(crate) offsets: Vec<usize>,
    /// `[d_in, R]`: `V_1 | V_2 | ...`, `R = sum of ranks`.
    pub(crate) v: Tensor<2>,
    /// `[R, d_out]`: `diag(s_1) U_1^T` stacked over `diag(s_2) U_2^T`, ...
    pub(crate) su: Tensor<2>,
    /// `[R, E]` with a 1 where rank column `k` belongs to expert `e` (sums per expert).
    pub(crate) membership: Tensor<2>,
}

impl ModuleExperts {
    pub(crate) fn num_experts(&self) -> usize {
        self.ranks.len()
    }

    /// `V_e`, `[d_in, r_e]` (a column slice of `v`).
    fn v_of(&self, e: usize) -> Tensor<2> {
        self.v.clone().narrow(1, self.offsets[e], self.ranks[e])
    }

    /// `diag(s_e) U_e^T`, `[r_e, d_out]`.
    fn su_of(&self, e: usize) -> Tensor<2> {
        self.su.clone().narrow(0, self.offsets[e], self.ranks[e])
    }
}

/// Low-rank experts of any number of target modules, uploaded to a device once and shared by
/// the routed, gated and scored forwards.
///
/// Module `m` holds experts `e = 0..E_m`, each `Delta W_{m,e} = U diag(s) V^T`. Internally the
/// experts of a module are concatenated along the rank (`V = [V_1 | ... | V_E]`,
/// `S U^T = [diag(s_1) U_1^T; ...]`) so that all of them can be applied with two matmuls, and
/// `s` is folded into `U^T`: `Delta W x = (diag(s) U^T)^T (V^T x)`.
#[derive(Debug, Clone)]
pub struct ExpertBank {
    pub(crate) modules: BTreeMap<ModuleId, ModuleExperts>,
    device: Device,
}

impl ExpertBank {
    /// Uploads `experts` (module -> its experts, in expert-index order) for a tower with
    /// `config` to `device`. Modules with an empty list are skipped.
    ///
    /// # Errors
    /// [`VitError::UnknownModule`] for a layer beyond the config, [`VitError::ExpertShape`]
    /// when an expert's dimensions are not the module's weight shape.
    pub fn new<I>(config: &ClipVisionConfig, experts: I, device: &Device) -> Result<Self, VitError>
    where
        I: IntoIterator<Item = (ModuleId, Vec<LowRankFactors>)>,
    {
        let mut modules = BTreeMap::new();
        for (id, list) in experts {
            if id.layer >= config.num_hidden_layers {
                return Err(VitError::UnknownModule {
                    module: id,
                    num_layers: config.num_hidden_layers,
                });
            }
            if list.is_empty() {
                continue;
            }
            let (d_out, d_in) = config.module_dims(id.kind);
            for (e, f) in list.iter().enumerate() {
                if f.d_out() != d_out || f.d_in() != d_in {
                    return Err(VitError::ExpertShape {
                        module: id,
                        expert: e,
                        expected_out: d_out,
                        expected_in: d_in,
                        got_out: f.d_out(),
                        got_in: f.d_in(),
                    });
                }
            }
            modules.insert(id, Self::upload_module(d_out, d_in, &list, device));
        }
        Ok(Self {
            modules,
            device: device.clone(),
        })
    }

    fn upload_module(
        d_out: usize,
        d_in: usize,
        list: &[LowRankFactors],
        device: &Device,
    ) -> ModuleExperts {
        let ranks: Vec<usize> = list.iter().map(|f| f.rank()).collect();
        let total: usize = ranks.iter().sum();
        let mut offsets = Vec::with_capacity(ranks.len());
        let mut acc = 0;
        for r in &ranks {
            offsets.push(acc);
            acc += r;
        }
        // V: [d_in, R] row-major, expert e in columns offsets[e]..
        let mut v = vec![0.0f32; d_in * total];
        // S U^T: [R, d_out] row-major.
        let mut su = Vec::with_capacity(total * d_out);
        let mut membership = vec![0.0f32; total * list.len()];
        for (e, f) in list.iter().enumerate() {
            let off = offsets[e];
            for i in 0..d_in {
                v[i * total + off..i * total + off + f.rank()]
                    .copy_from_slice(&f.v()[i * f.rank()..(i + 1) * f.rank()]);
            }
            let ut = transpose(f.u(), d_out, f.rank()); // [r, d_out]
            for (k, row) in ut.chunks_exact(d_out).enumerate() {
                let s = f.s()[k];
                su.extend(row.iter().map(|x| x * s));
                membership[(off + k) * list.len() + e] = 1.0;
            }
        }
        ModuleExperts {
            d_out,
            ranks,
            offsets,
            v: upload(v, [d_in, total], device),
            su: upload(su, [total, d_out], device),
            membership: upload(membership, [total, list.len()], device),
        }
    }

    /// Number of experts of `module` (0 when it has none).
    #[must_use]
    pub fn num_experts(&self, module: ModuleId) -> usize {
        self.modules
            .get(&module)
            .map_or(0, ModuleExperts::num_experts)
    }

    /// Ranks of the experts of `module`.
    #[must_use]
    pub fn ranks(&self, module: ModuleId) -> &[usize] {
        self.modules
            .get(&module)
            .map_or(&[], |m| m.ranks.as_slice())
    }

    /// Modules with at least one expert, in forward order.
    pub fn modules(&self) -> impl Iterator<Item = ModuleId> + '_ {
        self.modules.keys().copied()
    }

    /// The device the factors live on.
    #[must_use]
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// Which expert each sample uses in each module: `choice[m][i] = Some(e)` adds expert `e` of
/// module `m` to sample `i`, `None` (or a module absent from the table) adds nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    batch: usize,
    choices: BTreeMap<ModuleId, Vec<Option<usize>>>,
}

impl Routing {
    /// An empty routing table for `batch` samples (every module uses no expert).
    #[must_use]
    pub fn new(batch: usize) -> Self {
        Self {
            batch,
            choices: BTreeMap::new(),
        }
    }

    /// Sets the per-sample choices of `module`.
    ///
    /// # Errors
    /// [`VitError::Routing`] when `choices.len()` is not the batch size.
    pub fn set(&mut self, module: ModuleId, choices: Vec<Option<usize>>) -> Result<(), VitError> {
        if choices.len() != self.batch {
            return Err(VitError::Routing {
                module,
                reason: format!("{} choices for a batch of {}", choices.len(), self.batch),
            });
        }
        self.choices.insert(module, choices);
        Ok(())
    }

    /// Routes every sample of `module` to expert `expert`.
    pub fn set_all(&mut self, module: ModuleId, expert: usize) {
        self.choices.insert(module, vec![Some(expert); self.batch]);
    }

    /// The choices of `module`, if set.
    #[must_use]
    pub fn get(&self, module: ModuleId) -> Option<&[Option<usize>]> {
        self.choices.get(&module).map(Vec::as_slice)
    }

    /// Batch size.
    #[must_use]
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Modules with choices, in forward order.
    pub fn modules(&self) -> impl Iterator<Item = ModuleId> + '_ {
        self.choices.keys().copied()
    }

    /// Checks the table against a bank: every chosen expert must exist.
    ///
    /// # Errors
    /// [`VitError::Routing`] naming the module and sample.
    pub fn validate(&self, bank: &ExpertBank) -> Result<(), VitError> {
        for (m, choices) in &self.choices {
            let n = bank.num_experts(*m);
            if let Some((i, e)) = choices
                .iter()
                .enumerate()
                .find_map(|(i, c)| c.filter(|e| *e >= n).map(|e| (i, e)))
            {
                return Err(VitError::Routing {
                    module: *m,
                    reason: format!("sample {i} is routed to expert {e}, the module has {n}"),
                });
            }
        }
        Ok(())
    }
}

struct Routed<'a> {
    bank: &'a ExpertBank,
    routing: &'a Routing,
}

impl ModuleAdapter for Routed<'_> {
    fn adapt(&mut self, module: ModuleId, x: &Tensor<3>) -> Result<Option<Tensor<3>>, VitError> {
        let (Some(choices), Some(me)) = (self.routing.get(module), self.bank.modules.get(&module))
        else {
            return Ok(None);
        };
        let [b, n, d_in] = x.dims();
        // Group samples by expert.
        let mut groups: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        for (i, c) in choices.iter().enumerate() {
            if let Some(e) = c {
                groups.entry(*e).or_default().push(i as i64);
            }
        }
        if groups.is_empty() {
            return Ok(None);
        }
        let apply = |xs: Tensor<3>, e: usize| -> Tensor<3> {
            let [k, n, _] = xs.dims();
            xs.reshape([k * n, d_in])
                .matmul(me.v_of(e))
                .matmul(me.su_of(e))
                .reshape([k, n, me.d_out])
        };
        if groups.len() == 1
            && let Some((e, idx)) = groups.iter().next()
            && idx.len() == b
        {
            return Ok(Some(apply(x.clone(), *e)));
        }
        let device = x.device();
        // Groups are independent and their matmuls are small (below gemm's own threading
        // threshold at ViT-B sizes), so run them in parallel.
        let parts: Vec<(Tensor<1, Int>, Tensor<3>)> = groups
            .into_par_iter()
            .map(|(e, idx)| {
                let len = idx.len();
                let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [len]), &device);
                let part = apply(x.clone().select(0, idx.clone()), e);
                (idx, part)
            })
            .collect();
        let mut delta = Tensor::<3>::zeros([b, n, me.d_out], &device);
        for (idx, part) in parts {
            delta = delta.select_assign(0, idx, part, IndexingUpdateOp::Add);
        }
        Ok(Some(delta))
    }
}

/// How token features are aggregated into one routing score per sample (the one
/// definition of `madeit-params`).
pub use madeit_params::modules::TokenAggregation;

/// Per-sample projection scores of target-module inputs on expert input subspaces
/// ([`ClipVisionModel::forward_scored`]).
///
/// For module `m`, sample `i` and expert `e`:
/// `score = ||X_i V_e||_F / ||X_i||_F` (the FPA of MADE-IT), where `X_i` is the sample's
/// module input (all tokens or the class token) and `V_e` the expert's input basis. With
/// orthonormal `V_e` it lies in `[0, 1]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutingScores {
    batch: usize,
    scores: BTreeMap<ModuleId, Vec<f32>>,
    num_experts: BTreeMap<ModuleId, usize>,
}

impl RoutingScores {
    /// Batch size.
    #[must_use]
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Scores of `module` as a row-major `[batch, E]` buffer, if it was scored.
    #[must_use]
    pub fn module(&self, module: ModuleId) -> Option<&[f32]> {
        self.scores.get(&module).map(Vec::as_slice)
    }

    /// Score of `expert` of `module` for `sample`.
    #[must_use]
    pub fn get(&self, module: ModuleId, sample: usize, expert: usize) -> Option<f32> {
        let e = *self.num_experts.get(&module)?;
        if expert >= e {
            return None;
        }
        self.scores.get(&module)?.get(sample * e + expert).copied()
    }

    /// Number of experts scored in `module`.
    #[must_use]
    pub fn num_experts(&self, module: ModuleId) -> usize {
        self.num_experts.get(&module).copied().unwrap_or(0)
    }

    /// Scored modules, in forward order.
    pub fn modules(&self) -> impl Iterator<Item = ModuleId> + '_ {
        self.scores.keys().copied()
    }
}

struct Scorer<'a> {
    bank: &'a ExpertBank,
    modules: Option<&'a BTreeSet<ModuleId>>,
    tokens: TokenAggregation,
    out: RoutingScores,
}

impl ModuleAdapter for Scorer<'_> {
    fn adapt(&mut self, module: ModuleId, x: &Tensor<3>) -> Result<Option<Tensor<3>>, VitError> {
        let Some(me) = self.bank.modules.get(&module) else {
            return Ok(None);
        };
        if self.modules.is_some_and(|m| !m.contains(&module)) {
            return Ok(None);
        }
        let [b, n, d_in] = x.dims();
        let (x, n) = match self.tokens {
            TokenAggregation::Frobenius => (x.clone(), n),
            TokenAggregation::ClsOnly => (x.clone().narrow(1, 0, 1), 1),
        };
        let total = me.v.dims()[1];
        let num = x
            .clone()
            .reshape([b * n, d_in])
            .matmul(me.v.clone())
            .square()
            .reshape([b, n, total])
            .sum_dim(1)
            .reshape([b, total])
            .matmul(me.membership.clone()); // [b, E]
        let den = x
            .square()
            .sum_dim(2)
            .sum_dim(1)
            .reshape([b, 1])
            .clamp_min(1e-30);
        let score = (num / den).sqrt();
        self.out.scores.insert(module, download(&score)?);
        self.out.num_experts.insert(module, me.num_experts());
        Ok(None)
    }
}

impl ClipVisionModel {
    /// The forward where every target module adds a low-rank expert chosen per sample:
    /// `y_i = W x_i + b + U_e diag(s_e) V_e^T x_i` with `e = routing[m][i]`.
    ///
    /// Samples are grouped by expert; each group costs two thin matmuls
    /// (`(X V_e)(diag(s_e) U_e^T)`), so no per-sample dense weight is ever formed.
    ///
    /// # Errors
    /// [`VitError::InputShape`]; [`VitError::Routing`] when the routing batch differs from
    /// the pixel batch or names a missing expert; [`VitError::Routing`] /
    /// [`VitError::UnknownModule`] for modules beyond the model.
    pub fn forward_routed(
        &self,
        pixels: Tensor<4>,
        bank: &ExpertBank,
        routing: &Routing,
    ) -> Result<VisionOutput, VitError> {
        let batch = pixels.dims()[0];
        if let Some(m) = routing.modules().next()
            && routing.batch() != batch
        {
            return Err(VitError::Routing {
                module: m,
                reason: format!(
                    "routing is for {} samples, the pixel batch has {batch}",
                    routing.batch()
                ),
            });
        }
        self.check_bank(bank)?;
        routing.validate(bank)?;
        self.forward_with_adapter(pixels, &mut Routed { bank, routing })
    }

    /// The plain forward that also computes [`RoutingScores`] of every module of `bank` (or
    /// of those in `modules`): one `theta_0` pass gives the routing features of all modules.
    ///
    /// # Errors
    /// As [`forward`](Self::forward), and when the bank does not fit the model.
    pub fn forward_scored(
        &self,
        pixels: Tensor<4>,
        bank: &ExpertBank,
        modules: Option<&BTreeSet<ModuleId>>,
        tokens: TokenAggregation,
    ) -> Result<(VisionOutput, RoutingScores), VitError> {
        self.check_bank(bank)?;
        let batch = pixels.dims()[0];
        let mut scorer = Scorer {
            bank,
            modules,
            tokens,
            out: RoutingScores {
                batch,
                ..RoutingScores::default()
            },
        };
        let out = self.forward_with_adapter(pixels, &mut scorer)?;
        Ok((out, scorer.out))
    }

    pub(crate) fn check_bank(&self, bank: &ExpertBank) -> Result<(), VitError> {
        let cfg = self.config();
        for (id, me) in &bank.modules {
            if id.layer >= cfg.num_hidden_layers {
                return Err(VitError::UnknownModule {
                    module: *id,
                    num_layers: cfg.num_hidden_layers,
                });
            }
            let (d_out, d_in) = cfg.module_dims(id.kind);
            if me.d_out != d_out || me.v.dims()[0] != d_in {
                return Err(VitError::ExpertShape {
                    module: *id,
                    expert: 0,
                    expected_out: d_out,
                    expected_in: d_in,
                    got_out: me.d_out,
                    got_in: me.v.dims()[0],
                });
            }
        }
        Ok(())
    }
}
