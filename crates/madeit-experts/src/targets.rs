//! Recognition of MADE-IT's target modules in a CLIP vision tower's parameter names.
//!
//! The target modules are the six linear weights of every encoder layer, in Hugging Face
//! naming, with or without the `vision_model.` prefix:
//! `[vision_model.]encoder.layers.N.self_attn.{q,k,v,out}_proj.weight` and
//! `[vision_model.]encoder.layers.N.mlp.{fc1,fc2}.weight`.

use crate::error::{ExpertsError, Result};
use madeit_params::ParamDict;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Which linear map of an encoder layer a module is.
///
/// The derived order is the **in-layer order** used everywhere in this crate (routing tie
/// breaks included): the forward order of the layer, `q, k, v, out_proj, fc1, fc2`
/// (`q`, `k` and `v` are computed in parallel; they are ordered as HF declares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.out_proj`
    Out,
    /// `mlp.fc1`
    Fc1,
    /// `mlp.fc2`
    Fc2,
}

impl ModuleKind {
    /// All kinds in in-layer order.
    pub const ALL: [ModuleKind; 6] = [
        ModuleKind::Q,
        ModuleKind::K,
        ModuleKind::V,
        ModuleKind::Out,
        ModuleKind::Fc1,
        ModuleKind::Fc2,
    ];

    /// The key suffix after `encoder.layers.N.`, e.g. `self_attn.q_proj.weight`.
    pub fn suffix(self) -> &'static str {
        match self {
            ModuleKind::Q => "self_attn.q_proj.weight",
            ModuleKind::K => "self_attn.k_proj.weight",
            ModuleKind::V => "self_attn.v_proj.weight",
            ModuleKind::Out => "self_attn.out_proj.weight",
            ModuleKind::Fc1 => "mlp.fc1.weight",
            ModuleKind::Fc2 => "mlp.fc2.weight",
        }
    }

    /// `true` for the attention projections.
    pub fn is_attention(self) -> bool {
        matches!(
            self,
            ModuleKind::Q | ModuleKind::K | ModuleKind::V | ModuleKind::Out
        )
    }
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModuleKind::Q => "q_proj",
            ModuleKind::K => "k_proj",
            ModuleKind::V => "v_proj",
            ModuleKind::Out => "out_proj",
            ModuleKind::Fc1 => "fc1",
            ModuleKind::Fc2 => "fc2",
        })
    }
}

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
/// `<suffix>` one of [`ModuleKind::suffix`] and `N` a decimal integer.
pub fn parse_target_key(key: &str) -> Option<(usize, ModuleKind)> {
    let rest = key.strip_prefix("vision_model.").unwrap_or(key);
    let rest = rest.strip_prefix("encoder.layers.")?;
    let (num, suffix) = rest.split_once('.')?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let layer: usize = num.parse().ok()?;
    let kind = ModuleKind::ALL.into_iter().find(|k| k.suffix() == suffix)?;
    Some((layer, kind))
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
