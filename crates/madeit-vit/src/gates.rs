//! MINGLE's gated mixture of low-rank experts, with gates as trainable burn parameters.

use burn::module::{Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::experts::ExpertBank;
use crate::model::{ModuleAdapter, VisionOutput};
use crate::util::{download, first_non_finite, upload};
use crate::{ClipVisionConfig, ClipVisionModel, ModuleId, VitError};

/// One linear gate on a module input: `g(x) = w^T x + b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearGate {
    /// `w`, `[d_in]`.
    pub weight: Vec<f32>,
    /// `b`.
    pub bias: f32,
}

/// Gate values of every module as plain numbers (to save, restore and inspect them).
///
/// Module `m` has one gate per expert, in the expert order of the [`ExpertBank`] they are
/// used with.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GateValues {
    /// `(module, its gates)`, one entry per module, in forward order.
    pub modules: Vec<(ModuleId, Vec<LinearGate>)>,
}

impl GateValues {
    /// No gates.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The gates of `module` (empty when it has none).
    #[must_use]
    pub fn gates(&self, module: ModuleId) -> &[LinearGate] {
        self.modules
            .iter()
            .find(|(m, _)| *m == module)
            .map_or(&[], |(_, g)| g.as_slice())
    }

    /// Appends `gate` to the gates of `module`.
    pub fn push(&mut self, module: ModuleId, gate: LinearGate) {
        match self.modules.iter_mut().find(|(m, _)| *m == module) {
            Some((_, g)) => g.push(gate),
            None => {
                self.modules.push((module, vec![gate]));
                self.modules.sort_by_key(|(m, _)| *m);
            }
        }
    }

    /// Appends one new gate to each of `modules`, initialised as in MINGLE:
    /// `w ~ N(0, std^2)` i.i.d., `b = bias` (MINGLE: 0), from a ChaCha8 stream seeded with
    /// `seed` (modules drawn in the order given).
    ///
    /// # Errors
    /// [`VitError::UnknownModule`] for a layer beyond `config`; [`VitError::InvalidConfig`]
    /// when `std` is negative or not finite.
    pub fn push_random(
        &mut self,
        config: &ClipVisionConfig,
        modules: impl IntoIterator<Item = ModuleId>,
        std: f32,
        bias: f32,
        seed: u64,
    ) -> Result<(), VitError> {
        let normal = Normal::new(0.0f32, std).map_err(|e| VitError::InvalidConfig {
            field: "gate init std",
            reason: e.to_string(),
        })?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for m in modules {
            if m.layer >= config.num_hidden_layers {
                return Err(VitError::UnknownModule {
                    module: m,
                    num_layers: config.num_hidden_layers,
                });
            }
            let (_, d_in) = config.module_dims(m.kind);
            let weight = (0..d_in).map(|_| normal.sample(&mut rng)).collect();
            self.push(m, LinearGate { weight, bias });
        }
        Ok(())
    }
}

/// Which gates of a [`GateBank`] are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GateTraining {
    /// No gate requires a gradient (evaluation).
    #[default]
    Frozen,
    /// Only the last gate of every module (MINGLE: the gate of the newest expert; earlier
    /// gates stay frozen).
    Newest,
    /// Every gate.
    All,
}

/// The gates of one module: one `w` (`[d_in]`) and one `b` (`[1]`) per expert.
#[derive(Module, Debug)]
pub struct ModuleGates {
    weights: Vec<Param<Tensor<1>>>,
    biases: Vec<Param<Tensor<1>>>,
}

/// MINGLE gates of every module, as a burn [`Module`] whose parameters an optimizer updates.
///
/// Used with [`ClipVisionModel::forward_gated`]: each target module `m` with experts
/// `B_e A_e` (= `U_e diag(s_e) V_e^T`) computes
///
/// `y = X W0^T + b0 + sum_e gbar_e (X A_e^T B_e^T)`,
/// `gbar_e = mean over the batch of (mean over tokens of (w_e^T x + b_e))`
///
/// (the gate is averaged over the whole batch, so a batch must hold one task; no softmax).
/// Create the bank on an autodiff device (`Device::flex().autodiff()`) to train it; the
/// backbone and the expert factors are plain tensors, so gradients reach only the gate
/// parameters that require them ([`GateTraining`]).
///
/// Training loop sketch (burn's `Optimizer::step(lr, module, grads)`):
/// `loss.backward()` -> `GradientsParams::from_grads(grads, &gates)` -> optionally edit a
/// gate's gradient with [`weight_grad`](Self::weight_grad) /
/// [`set_weight_grad`](Self::set_weight_grad) (MINGLE's gradient projection) -> step.
#[derive(Module, Debug)]
pub struct GateBank {
    modules: Vec<ModuleGates>,
    #[module(skip)]
    ids: Vec<ModuleId>,
    #[module(skip)]
    sharing: GateSharing,
}

/// Which input drives the gates of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateSharing {
    /// Every module with experts has its own gates on its own input (MINGLE).
    #[default]
    PerModule,
    /// One router per layer on the MLP input (the output of `layer_norm2`, fc1's input):
    /// the gates stored on fc1 weight fc1's experts **and** fc2's experts, fc2 has no gates
    /// of its own and must hold as many experts as fc1 has gates (WEMoE's MLP mixture).
    /// Modules other than fc1 / fc2 keep their own gates.
    SharedMlp,
}

impl GateBank {
    /// Uploads `values` to `device`; `training` selects the gates that require gradients.
    ///
    /// # Errors
    /// [`VitError::Gates`] for a module with gates of different widths,
    /// [`VitError::NonFiniteInput`] on NaN / infinity.
    pub fn new(
        values: &GateValues,
        training: GateTraining,
        device: &Device,
    ) -> Result<Self, VitError> {
        let mut modules = Vec::with_capacity(values.modules.len());
        let mut ids = Vec::with_capacity(values.modules.len());
        let mut sorted: Vec<&(ModuleId, Vec<LinearGate>)> = values.modules.iter().collect();
        sorted.sort_by_key(|(m, _)| *m);
        for pair in sorted.windows(2) {
            if let [a, b] = pair
                && a.0 == b.0
            {
                return Err(VitError::Gates {
                    module: a.0,
                    reason: "listed twice".into(),
                });
            }
        }
        for (id, gates) in sorted {
            let n = gates.len();
            let mut weights = Vec::with_capacity(n);
            let mut biases = Vec::with_capacity(n);
            let d_in = gates.first().map_or(0, |g| g.weight.len());
            for (e, g) in gates.iter().enumerate() {
                if g.weight.len() != d_in || d_in == 0 {
                    return Err(VitError::Gates {
                        module: *id,
                        reason: format!(
                            "gate {e} has width {}, gate 0 has {d_in} (must be equal and positive)",
                            g.weight.len()
                        ),
                    });
                }
                if let Some((index, _)) = first_non_finite(&g.weight) {
                    return Err(VitError::NonFiniteInput {
                        what: format!("gate {e} of {id}"),
                        index,
                    });
                }
                if !g.bias.is_finite() {
                    return Err(VitError::NonFiniteInput {
                        what: format!("gate bias {e} of {id}"),
                        index: 0,
                    });
                }
                let trainable = match training {
                    GateTraining::Frozen => false,
                    GateTraining::Newest => e + 1 == n,
                    GateTraining::All => true,
                };
                let w = Param::from_tensor(upload(g.weight.clone(), [d_in], device))
                    .set_require_grad(trainable);
                let b = Param::from_tensor(upload(vec![g.bias], [1], device))
                    .set_require_grad(trainable);
                weights.push(w);
                biases.push(b);
            }
            modules.push(ModuleGates { weights, biases });
            ids.push(*id);
        }
        Ok(Self {
            modules,
            ids,
            sharing: GateSharing::PerModule,
        })
    }

    /// The same gates with another [`GateSharing`] rule.
    #[must_use]
    pub fn with_sharing(mut self, sharing: GateSharing) -> Self {
        self.sharing = sharing;
        self
    }

    /// Which input drives the gates.
    #[must_use]
    pub fn sharing(&self) -> GateSharing {
        self.sharing
    }

    /// The module whose gates weight the experts of `module`: `module` itself, or fc1 of the
    /// same layer for fc2 under [`GateSharing::SharedMlp`].
    #[must_use]
    pub fn gate_source(&self, module: ModuleId) -> ModuleId {
        if self.sharing == GateSharing::SharedMlp && module.kind == crate::ModuleKind::Fc2 {
            ModuleId::new(module.layer, crate::ModuleKind::Fc1)
        } else {
            module
        }
    }

    /// The gate values as plain numbers.
    ///
    /// # Errors
    /// [`VitError::Backend`] if a parameter cannot be read back.
    pub fn to_values(&self) -> Result<GateValues, VitError> {
        let mut out = GateValues::new();
        for (id, mg) in self.ids.iter().zip(&self.modules) {
            let mut gates = Vec::with_capacity(mg.weights.len());
            for (w, b) in mg.weights.iter().zip(&mg.biases) {
                gates.push(LinearGate {
                    weight: download(&w.val())?,
                    bias: download(&b.val())?.first().copied().unwrap_or(0.0),
                });
            }
            out.modules.push((*id, gates));
        }
        Ok(out)
    }

    /// Modules with gates, in forward order.
    pub fn modules(&self) -> impl Iterator<Item = ModuleId> + '_ {
        self.ids.iter().copied()
    }

    /// Number of gates of `module`.
    #[must_use]
    pub fn num_gates(&self, module: ModuleId) -> usize {
        self.get(module).map_or(0, |g| g.weights.len())
    }

    fn get(&self, module: ModuleId) -> Option<&ModuleGates> {
        let i = self.ids.binary_search(&module).ok()?;
        self.modules.get(i)
    }

    fn param(&self, module: ModuleId, expert: usize) -> Result<&Param<Tensor<1>>, VitError> {
        self.get(module)
            .and_then(|g| g.weights.get(expert))
            .ok_or_else(|| VitError::Gates {
                module,
                reason: format!(
                    "no gate {expert} (the module has {})",
                    self.num_gates(module)
                ),
            })
    }

    /// Parameter id of gate `expert`'s weight `w` in `module` (the key of its gradient in
    /// [`GradientsParams`]).
    ///
    /// # Errors
    /// [`VitError::Gates`] when there is no such gate.
    pub fn weight_param_id(&self, module: ModuleId, expert: usize) -> Result<ParamId, VitError> {
        Ok(self.param(module, expert)?.id)
    }

    /// The gradient of gate `expert`'s weight in `module`, as `[d_in]` numbers; `None` when it
    /// has none (frozen gate, or not reached by the loss).
    ///
    /// # Errors
    /// [`VitError::Gates`] when there is no such gate, [`VitError::Backend`] on read failure.
    pub fn weight_grad(
        &self,
        grads: &GradientsParams,
        module: ModuleId,
        expert: usize,
    ) -> Result<Option<Vec<f32>>, VitError> {
        let id = self.weight_param_id(module, expert)?;
        grads.get::<1>(id).map(|g| download(&g)).transpose()
    }

    /// Replaces the gradient of gate `expert`'s weight in `module` (e.g. after MINGLE's
    /// projection `g <- g - ((g U) * lambda) U^T`).
    ///
    /// # Errors
    /// [`VitError::Gates`] when there is no such gate or `grad` has the wrong length.
    pub fn set_weight_grad(
        &self,
        grads: &mut GradientsParams,
        module: ModuleId,
        expert: usize,
        grad: &[f32],
    ) -> Result<(), VitError> {
        let p = self.param(module, expert)?;
        let d_in = p.val().dims()[0];
        if grad.len() != d_in {
            return Err(VitError::Gates {
                module,
                reason: format!(
                    "gradient of length {}, the gate has width {d_in}",
                    grad.len()
                ),
            });
        }
        let device = p.val().device().without_autodiff();
        grads.register::<1>(p.id, upload(grad.to_vec(), [d_in], &device));
        Ok(())
    }

    /// Checks that every module of `bank` has exactly one gate per expert, of the module's
    /// input width, and that no gate sits on a module without experts.
    ///
    /// # Errors
    /// [`VitError::Gates`] naming the module.
    pub fn validate(&self, bank: &ExpertBank) -> Result<(), VitError> {
        for m in bank.modules() {
            let n = bank.num_experts(m);
            let source = self.gate_source(m);
            if source != m {
                if self.num_gates(m) != 0 {
                    return Err(VitError::Gates {
                        module: m,
                        reason: format!("has gates of its own, but its experts follow {source}"),
                    });
                }
                let g = self.num_gates(source);
                if g != n {
                    return Err(VitError::Gates {
                        module: m,
                        reason: format!("{n} experts follow the {g} gates of {source}"),
                    });
                }
                if bank.num_experts(source) == 0 {
                    return Err(VitError::Gates {
                        module: m,
                        reason: format!("its experts follow {source}, which has no experts"),
                    });
                }
                continue;
            }
            let g = self.num_gates(m);
            if g != n {
                return Err(VitError::Gates {
                    module: m,
                    reason: format!("{g} gates for {n} experts"),
                });
            }
            let d_in = bank.modules.get(&m).map_or(0, |me| me.v.dims()[0]);
            if let Some(mg) = self.get(m)
                && let Some(w) = mg.weights.iter().find(|w| w.val().dims()[0] != d_in)
            {
                return Err(VitError::Gates {
                    module: m,
                    reason: format!(
                        "gate width {}, module input width {d_in}",
                        w.val().dims()[0]
                    ),
                });
            }
        }
        if let Some(m) = self.modules().find(|m| bank.num_experts(*m) == 0) {
            return Err(VitError::Gates {
                module: m,
                reason: "gates on a module without experts".into(),
            });
        }
        Ok(())
    }
}

struct Gated<'a> {
    bank: &'a ExpertBank,
    gates: &'a GateBank,
    /// `gbar` of the layer's fc1 gates, kept for fc2 under [`GateSharing::SharedMlp`].
    mlp_gbar: Option<(usize, Tensor<2>)>,
}

impl ModuleAdapter for Gated<'_> {
    fn adapt(&mut self, module: ModuleId, x: &Tensor<3>) -> Result<Option<Tensor<3>>, VitError> {
        let source = self.gates.gate_source(module);
        let shared = self.gates.sharing == GateSharing::SharedMlp;
        let me = self.bank.modules.get(&module);
        let [b, n, d_in] = x.dims();
        let gbar = if source == module {
            let Some(mg) = self.gates.get(module) else {
                return Ok(None);
            };
            if me.is_none() && !(shared && module.kind == crate::ModuleKind::Fc1) {
                return Ok(None);
            }
            let e = mg.weights.len();
            // gbar_e = mean_batch(mean_tokens(w_e^T x + b_e)) = w_e^T xbar + b_e (the gate is
            // affine, so averaging the input first is exact and cheaper).
            let xbar = x.clone().mean_dim(1).mean_dim(0).reshape([1, d_in]);
            let w = Tensor::stack::<2>(mg.weights.iter().map(Param::val).collect(), 0); // [E, d_in]
            let bias = Tensor::cat(mg.biases.iter().map(Param::val).collect(), 0).reshape([1, e]);
            let gbar = xbar.matmul(w.transpose()) + bias; // [1, E]
            if shared && module.kind == crate::ModuleKind::Fc1 {
                self.mlp_gbar = Some((module.layer, gbar.clone()));
            }
            gbar
        } else {
            if me.is_none() {
                return Ok(None);
            }
            match &self.mlp_gbar {
                Some((layer, g)) if *layer == module.layer => g.clone(),
                _ => {
                    return Err(VitError::Gates {
                        module,
                        reason: format!("the gates of {source} were not evaluated first"),
                    });
                }
            }
        };
        let Some(me) = me else {
            return Ok(None);
        };
        // Spread gbar_e over expert e's rank columns: [1, E] x [E, R].
        let gcols = gbar.matmul(me.membership.clone().transpose()); // [1, R]
        let rows = b * n;
        let x2 = x.clone().reshape([rows, d_in]);
        // The gate is one number per expert for the whole batch, so the update is one
        // matrix `dW^T = V diag(gcols) (SU)` for every row. Forming it costs
        // `d_in * R * d_out`; applying the factors row by row costs `rows * R * (d_in + d_out)`
        // and applying the dense update `rows * d_in * d_out`. Take the cheaper order (the
        // same product up to rounding; gradients flow through `gcols` either way).
        let rank = gcols.dims()[1];
        let dense_first =
            d_in * rank * me.d_out + rows * d_in * me.d_out <= rows * rank * (d_in + me.d_out);
        let delta = if dense_first {
            let update = (me.v.clone() * gcols).matmul(me.su.clone()); // [d_in, d_out]
            x2.matmul(update)
        } else {
            (x2.matmul(me.v.clone()) * gcols).matmul(me.su.clone())
        };
        Ok(Some(delta.reshape([b, n, me.d_out])))
    }
}

impl ClipVisionModel {
    /// The MINGLE forward: every module of `bank` adds `sum_e gbar_e B_e A_e x` with gates
    /// from `gates` (see [`GateBank`]). Differentiable with respect to the gate parameters
    /// when `gates` lives on an autodiff device.
    ///
    /// # Errors
    /// [`VitError::InputShape`]; [`VitError::Gates`] when gates and experts disagree.
    pub fn forward_gated(
        &self,
        pixels: Tensor<4>,
        bank: &ExpertBank,
        gates: &GateBank,
    ) -> Result<VisionOutput, VitError> {
        self.check_bank(bank)?;
        gates.validate(bank)?;
        self.forward_with_adapter(
            pixels,
            &mut Gated {
                bank,
                gates,
                mlp_gbar: None,
            },
        )
    }
}
