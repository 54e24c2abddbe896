//! Target modules and the Hugging Face parameter names of the vision tower.

use serde::{Deserialize, Serialize};

use crate::ClipVisionConfig;

/// The module vocabulary is `madeit-params`'s, shared with the expert stores.
pub use madeit_params::modules::{ModuleId, ModuleKind, VISION_PREFIX};

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
        prefixed_name(self.prefix(), PROJECTION_WEIGHT, bare)
    }
}

/// The checkpoint name of the bare tower name `bare` under `prefix`; the tower's
/// `projection` weight is never prefixed.
pub(crate) fn prefixed_name(prefix: &str, projection: &str, bare: &str) -> String {
    if bare == projection {
        bare.to_owned()
    } else {
        format!("{prefix}{bare}")
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
        for kind in [ModuleKind::K, ModuleKind::V, ModuleKind::Q, ModuleKind::Out] {
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
