//! Spectral energy of task vectors: how much of a weight update lives in a few directions.
//!
//! For the task vector of one linear module, `T = W_finetuned - W_pretrained` (`[out, in]`)
//! with singular values `s_1 >= s_2 >= ... >= s_r`, `r = min(out, in)`, the energy of the top
//! fraction `f` is
//!
//! ```text
//! E_f(T) = (sum_{i <= k} s_i^2) / (sum_{i <= r} s_i^2),    k = ceil(f r)
//! ```
//!
//! `E_f` near 1 means the update is nearly low rank, the property that subspace-based
//! merging (OPCM's projections, MADE-IT's low-rank experts) relies on. For reference, a
//! matrix of i.i.d. Gaussian entries of the same shape has a flat spectrum and a much lower
//! `E_f`; [`EnergyReport`] carries that baseline too. SVDs are computed with
//! [`madeit_linalg::thin_svd`] in `f64`.

use madeit_params::ParamDict;
use madeit_vit::{ClipVisionConfig, ModuleId, ModuleKind};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ZooError};

/// The default fraction of singular values: the top 10 %.
pub const DEFAULT_ENERGY_FRACTION: f64 = 0.1;

/// `E_f` of a spectrum `s` (any order; see the module docs). 0 for an all-zero spectrum.
#[must_use]
pub fn top_energy(s: &[f64], fraction: f64) -> f64 {
    let mut sq: Vec<f64> = s.iter().map(|x| x * x).collect();
    sq.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = sq.iter().sum();
    if total <= 0.0 || sq.is_empty() {
        return 0.0;
    }
    let k = ((fraction * sq.len() as f64).ceil() as usize).clamp(1, sq.len());
    sq.iter().take(k).sum::<f64>() / total
}

fn spectrum(m: faer::MatRef<'_, f64>) -> Result<Vec<f64>> {
    Ok(madeit_linalg::thin_svd(m)?.s)
}

/// The energy of one module kind over all layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleEnergy {
    /// The module kind (q, k, v, out, fc1, fc2).
    pub kind: ModuleKind,
    /// `E_f` of each layer's task vector, layer 0 first.
    pub per_layer: Vec<f64>,
    /// Mean of `per_layer`.
    pub mean: f64,
    /// `E_f` of a Gaussian random matrix of the same shape (a flat-spectrum reference).
    pub gaussian_baseline: f64,
}

/// `E_f` of a task vector for every module kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyReport {
    /// The fraction `f` of singular values counted.
    pub fraction: f64,
    /// One entry per module kind, in the order q, k, v, out, fc1, fc2.
    pub modules: Vec<ModuleEnergy>,
}

impl EnergyReport {
    /// The entry of `kind`, if present.
    #[must_use]
    pub fn get(&self, kind: ModuleKind) -> Option<&ModuleEnergy> {
        self.modules.iter().find(|m| m.kind == kind)
    }
}

/// A `rows × cols` matrix of standard normal entries from a ChaCha8 stream (Box–Muller).
fn gaussian(rows: usize, cols: usize, seed: u64) -> faer::Mat<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    faer::Mat::from_fn(rows, cols, |_, _| {
        let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    })
}

/// `E_f` of the task vector `finetuned - pretrained` of every target module (see the module
/// docs). Both dicts use bare or `vision_model.`-prefixed HF names.
///
/// # Errors
/// [`ZooError::InvalidConfig`] for `fraction` outside `(0, 1]`; [`ZooError::Params`] naming a
/// missing tensor or one that is not a matrix; [`ZooError::Parameter`] for a shape mismatch;
/// [`ZooError::Linalg`] when an SVD fails.
pub fn task_vector_energy(
    pretrained: &ParamDict,
    finetuned: &ParamDict,
    config: &ClipVisionConfig,
    fraction: f64,
) -> Result<EnergyReport> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(ZooError::InvalidConfig {
            field: "energy fraction",
            reason: format!("{fraction} is not in (0, 1]"),
        });
    }
    let prefix = if pretrained
        .keys()
        .any(|k| k.starts_with(madeit_vit::VISION_PREFIX))
    {
        madeit_vit::VISION_PREFIX
    } else {
        ""
    };
    let mut modules = Vec::with_capacity(ModuleKind::ALL.len());
    for kind in ModuleKind::ALL {
        let mut per_layer = Vec::with_capacity(config.num_hidden_layers);
        for layer in 0..config.num_hidden_layers {
            let name = format!("{prefix}{}", ModuleId::new(layer, kind).weight_name());
            let a = pretrained
                .get(&name)?
                .to_mat_f64()
                .map_err(|e| e.in_tensor(&name))?;
            let b = finetuned
                .get(&name)?
                .to_mat_f64()
                .map_err(|e| e.in_tensor(&name))?;
            if a.nrows() != b.nrows() || a.ncols() != b.ncols() {
                return Err(ZooError::Parameter {
                    name,
                    reason: format!(
                        "pretrained {}x{}, fine-tuned {}x{}",
                        a.nrows(),
                        a.ncols(),
                        b.nrows(),
                        b.ncols()
                    ),
                });
            }
            let t = &b - &a;
            per_layer.push(top_energy(&spectrum(t.as_ref())?, fraction));
        }
        let (rows, cols) = config.module_dims(kind);
        let baseline = top_energy(&spectrum(gaussian(rows, cols, 0x5eed).as_ref())?, fraction);
        let mean = per_layer.iter().sum::<f64>() / per_layer.len().max(1) as f64;
        modules.push(ModuleEnergy {
            kind,
            per_layer,
            mean,
            gaussian_baseline: baseline,
        });
    }
    Ok(EnergyReport { fraction, modules })
}
