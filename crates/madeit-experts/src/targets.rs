//! Recognition of MADE-IT's target modules in a CLIP vision tower's parameter names.
//!
//! The target modules are the six linear weights of every encoder layer, in Hugging Face
//! naming, with or without the `vision_model.` prefix:
//! `[vision_model.]encoder.layers.N.self_attn.{q,k,v,out}_proj.weight` and
//! `[vision_model.]encoder.layers.N.mlp.{fc1,fc2}.weight`.

use crate::error::{ExpertsError, Result};
use madeit_params::ParamDict;
use serde::{Deserialize, Serialize};

/// Which linear map of an encoder layer a module is: the one vocabulary of
/// `madeit-params` (its derived order, the forward order `q, k, v, out_proj, fc1, fc2`, is
/// the in-layer order used everywhere in this crate, routing tie breaks included).
pub use madeit_params::modules::ModuleKind;

/// One target module: the weight's key, its layer and kind, and its shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetModule {
    /// Key of the weight tensor, e.g. `vision_model.encoder.layers.3.mlp.fc1.weight`.
    pub weight_key: String,
    /// Encoder layer index `N`.
    pub layer: usize,
    /// Which linear map.
    pub kind: ModuleKind,
    /// Output dimension (rows of the `[out, in]` weight).
    pub d_out: usize,
    /// Input dimension (columns of the `[out, in]` weight).
    pub d_in: usize,
}

impl TargetModule {
    /// The module's name: the weight key without its `.weight` suffix, e.g.
    /// `vision_model.encoder.layers.3.mlp.fc1`. Store tensor keys start with it.
    pub fn name(&self) -> &str {
        self.weight_key
            .strip_suffix(".weight")
            .unwrap_or(&self.weight_key)
    }

    /// Depth key of the forward order: `(layer, kind)`.
    pub fn depth(&self) -> (usize, ModuleKind) {
        (self.layer, self.kind)
    }
}

/// Parses a key as a target-module weight key: `(layer, kind)` or `None`.
///
/// Accepts `encoder.layers.N.<suffix>` and `vision_model.encoder.layers.N.<suffix>` with
/// `<suffix>` one of [`ModuleKind::weight_suffix`] and `N` a decimal integer.
pub fn parse_target_key(key: &str) -> Option<(usize, ModuleKind)> {
    madeit_params::modules::ModuleId::parse_weight(key).map(|id| (id.layer, id.kind))
}

/// The target modules of a parameter dictionary, sorted in forward order
/// (`layer`, then [`ModuleKind`] order).
///
/// Errors: [`ExpertsError::NotAMatrix`] if a matching key is not 2-D,
/// [`ExpertsError::NoTargetModules`] if none matches, and
/// [`ExpertsError::ModuleSetMismatch`] if two keys map to the same `(layer, kind)` (a
/// dictionary holding both prefixed and unprefixed names).
pub fn target_modules(params: &ParamDict) -> Result<Vec<TargetModule>> {
    let mut out = Vec::new();
    for (key, tensor) in params.iter() {
        let Some((layer, kind)) = parse_target_key(key) else {
            continue;
        };
        let shape = tensor.shape();
        let &[d_out, d_in] = shape else {
            return Err(ExpertsError::NotAMatrix {
                name: key.to_owned(),
                shape: shape.to_vec(),
            });
        };
        out.push(TargetModule {
            weight_key: key.to_owned(),
            layer,
            kind,
            d_out,
            d_in,
        });
    }
    if out.is_empty() {
        return Err(ExpertsError::NoTargetModules);
    }
    out.sort_by_key(TargetModule::depth);
    for pair in out.windows(2) {
        if let [a, b] = pair
            && a.depth() == b.depth()
        {
            return Err(ExpertsError::ModuleSetMismatch {
                reason: format!(
                    "`{}` and `{}` are the same module (layer {}, {})",
                    a.weight_key, b.weight_key, a.layer, a.kind
                ),
            });
        }
    }
    Ok(out)
}
