//! Target modules and the Hugging Face parameter names of the vision tower.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ClipVisionConfig;

/// Which of the six linear maps of an encoder layer a [`ModuleId`] names.
///
/// | kind | HF module (inside `encoder.layers.N.`) | weight shape `[out, in]` |
/// |---|---|---|
/// | `Q` | `self_attn.q_proj` | `[d, d]` |
/// | `K` | `self_attn.k_proj` | `[d, d]` |
/// | `V` | `self_attn.v_proj` | `[d, d]` |
/// | `Out` | `self_attn.out_proj` | `[d, d]` |
/// | `Fc1` | `mlp.fc1` | `[intermediate, d]` |
/// | `Fc2` | `mlp.fc2` | `[d, intermediate]` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TargetKind {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    Out,
    /// First MLP layer.
    Fc1,
    /// Second MLP layer.
    Fc2,
}

impl TargetKind {
    /// All six kinds, in forward order (q, k, v share one input).
    pub const ALL: [Self; 6] = [Self::Q, Self::K, Self::V, Self::Out, Self::Fc1, Self::Fc2];

    /// The HF module path inside `encoder.layers.N.`, e.g. `self_attn.q_proj`.
    #[must_use]
    pub const fn hf_module(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::Out => "self_attn.out_proj",
            Self::Fc1 => "mlp.fc1",
            Self::Fc2 => "mlp.fc2",
        }
    }

    /// Whether this is one of the attention maps (q, k, v, out) rather than the MLP.
    #[must_use]
    pub const fn is_attention(self) -> bool {
        matches!(self, Self::Q | Self::K | Self::V | Self::Out)
    }

    /// `(d_out, d_in)` of this module's weight under `config`.
    #[must_use]
    pub const fn dims(self, config: &ClipVisionConfig) -> (usize, usize) {
        let d = config.hidden_size;
        match self {
            Self::Q | Self::K | Self::V | Self::Out => (d, d),
            Self::Fc1 => (config.intermediate_size, d),
            Self::Fc2 => (d, config.intermediate_size),
        }
    }
}

/// One target linear module: a layer index and a [`TargetKind`].
///
/// Its weight is `W` of shape `[d_out, d_in]` (PyTorch layout); the module computes
/// `y = x W^T + b` on every token `x`. Ordering is layer-major, then q, k, v, out, fc1, fc2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModuleId {
    /// Encoder layer, from 0.
    pub layer: usize,
    /// Which linear map of the layer.
    pub kind: TargetKind,
}

impl ModuleId {
    /// A module id.
    #[must_use]
    pub const fn new(layer: usize, kind: TargetKind) -> Self {
        Self { layer, kind }
    }

    /// Every target module of a tower with `num_layers` layers, in forward order.
    pub fn all(num_layers: usize) -> impl Iterator<Item = Self> {
        (0..num_layers).flat_map(|layer| TargetKind::ALL.map(|kind| Self { layer, kind }))
    }

    /// HF name of the weight without prefix, e.g. `encoder.layers.3.self_attn.q_proj.weight`.
    /// Prepend `vision_model.` for full `CLIPModel` checkpoints.
    #[must_use]
    pub fn weight_name(&self) -> String {
        format!(
            "encoder.layers.{}.{}.weight",
            self.layer,
            self.kind.hf_module()
        )
    }

    /// HF name of the bias without prefix, e.g. `encoder.layers.3.mlp.fc1.bias`.
    #[must_use]
    pub fn bias_name(&self) -> String {
        format!(
            "encoder.layers.{}.{}.bias",
            self.layer,
            self.kind.hf_module()
        )
    }

    /// Parses an HF weight or bias name, with or without the `vision_model.` prefix.
    /// Returns the module and whether the name is the weight (`true`) or the bias.
    #[must_use]
    pub fn parse(name: &str) -> Option<(Self, bool)> {
        let bare = name.strip_prefix(VISION_PREFIX).unwrap_or(name);
        let rest = bare.strip_prefix("encoder.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (module, param) = rest.rsplit_once('.')?;
        let is_weight = match param {
            "weight" => true,
            "bias" => false,
            _ => return None,
        };
        let kind = TargetKind::ALL
            .into_iter()
            .find(|k| k.hf_module() == module)?;
        Some((Self { layer, kind }, is_weight))
    }

    /// `(d_out, d_in)` of this module's weight under `config`.
    #[must_use]
    pub const fn dims(&self, config: &ClipVisionConfig) -> (usize, usize) {
        self.kind.dims(config)
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "encoder.layers.{}.{}", self.layer, self.kind.hf_module())
    }
}

/// The prefix of vision-tower tensors in `CLIPModel` and `CLIPVisionModelWithProjection`
/// checkpoints.
pub const VISION_PREFIX: &str = "vision_model.";

/// Name of the projection weight (`[projection_dim, hidden_size]`, no bias); never prefixed.
pub const PROJECTION_WEIGHT: &str = "visual_projection.weight";

/// How tensor names are spelled in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KeyLayout {
    /// Bare `CLIPVisionModel` names (`embeddings.class_embedding`, ...), as transformers 5
    /// saves a standalone vision model.
    #[default]
    Bare,
    /// `vision_model.`-prefixed names, as in `CLIPModel` and `CLIPVisionModelWithProjection`
    /// checkpoints and hub files.
    VisionModel,
}

impl KeyLayout {
    /// The prefix of vision-tower tensors (`""` or `"vision_model."`).
    #[must_use]
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Bare => "",
            Self::VisionModel => VISION_PREFIX,
        }
    }

    /// The checkpoint name of a bare vision-tower name (the projection is never prefixed).
    #[must_use]
    pub fn full_name(self, bare: &str) -> String {
        if bare == PROJECTION_WEIGHT {
            bare.to_owned()
        } else {
            format!("{}{bare}", self.prefix())
        }
    }
}

/// Buffers and tensors that a vision checkpoint may carry and that are not weights of the
/// vision tower: ignored on load.
pub(crate) fn is_ignored(bare_or_full: &str) -> bool {
    let n = bare_or_full;
    n == "embeddings.position_ids"
        || n == "vision_model.embeddings.position_ids"
        || n.starts_with("text_model.")
        || n == "text_projection.weight"
        || n == "logit_scale"
}

/// Appends the tensors of `layers` transformer encoder layers of width `d` and MLP width `i`
/// (the vision and text towers share them) as `(bare name, shape)`, in the order
/// transformers writes them.
pub(crate) fn push_encoder_layers(
    out: &mut Vec<(String, Vec<usize>)>,
    layers: usize,
    d: usize,
    i: usize,
) {
    for l in 0..layers {
        let pre = format!("encoder.layers.{l}.");
        for kind in [TargetKind::K, TargetKind::V, TargetKind::Q, TargetKind::Out] {
            out.push((format!("{pre}{}.weight", kind.hf_module()), vec![d, d]));
            out.push((format!("{pre}{}.bias", kind.hf_module()), vec![d]));
        }
        for (module, weight, bias) in [
            ("layer_norm1", vec![d], vec![d]),
            ("mlp.fc1", vec![i, d], vec![i]),
            ("mlp.fc2", vec![d, i], vec![d]),
            ("layer_norm2", vec![d], vec![d]),
        ] {
            out.push((format!("{pre}{module}.weight"), weight));
            out.push((format!("{pre}{module}.bias"), bias));
        }
    }
}

/// Every tensor of the tower (without `visual_projection`) as `(bare name, shape)`, in the
/// order transformers writes them.
#[must_use]
pub fn expected_tensors(config: &ClipVisionConfig) -> Vec<(String, Vec<usize>)> {
    let d = config.hidden_size;
    let i = config.intermediate_size;
    let c = config.num_channels;
    let p = config.patch_size;
    let mut out = vec![
        ("embeddings.class_embedding".to_owned(), vec![d]),
        (
            "embeddings.patch_embedding.weight".to_owned(),
            vec![d, c, p, p],
        ),
        (
            "embeddings.position_embedding.weight".to_owned(),
            vec![config.num_positions(), d],
        ),
        ("pre_layrnorm.weight".to_owned(), vec![d]),
        ("pre_layrnorm.bias".to_owned(), vec![d]),
    ];
    push_encoder_layers(&mut out, config.num_hidden_layers, d, i);
    out.push(("post_layernorm.weight".to_owned(), vec![d]));
    out.push(("post_layernorm.bias".to_owned(), vec![d]));
    out
}
