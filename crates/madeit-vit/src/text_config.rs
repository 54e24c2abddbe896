//! The text-tower configuration, mirroring Hugging Face's `CLIPTextConfig`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{json_object, nested_config, read_config_file};
use crate::{Activation, VitError};

/// Upper bounds on the sizes of a text configuration, checked before anything is allocated.
/// They are far above every published CLIP (ViT-bigG's text tower: width 1280, 32 layers,
/// 49,408 tokens, 77 positions) and keep a hostile `config.json` from exhausting memory.
pub mod limits {
    /// Largest `hidden_size` and `projection_dim`.
    pub const MAX_WIDTH: usize = 1 << 14;
    /// Largest `intermediate_size`.
    pub const MAX_INTERMEDIATE: usize = 1 << 16;
    /// Largest `num_hidden_layers`.
    pub const MAX_LAYERS: usize = 256;
    /// Largest `max_position_embeddings` (the context length).
    pub const MAX_POSITIONS: usize = 1 << 12;
    /// Largest `vocab_size` (token ids must stay exact as `f32`, below 2^24).
    pub const MAX_VOCAB: usize = 1 << 22;
    /// Largest number of scalar weights the configuration may describe (2^34, 64 GiB of F32).
    pub const MAX_PARAMS: usize = 1 << 34;
}

/// Configuration of a CLIP text tower, with Hugging Face `config.json` field names.
///
/// Missing fields take the defaults of transformers' `CLIPTextConfig` (the text tower of
/// ViT-B/32 and ViT-B/16), unknown fields are ignored. A full `CLIPConfig` (with a nested
/// `text_config`) is accepted by [`ClipTextConfig::from_json_str`], which then takes the
/// top-level `projection_dim`.
///
/// `eos_token_id` decides how the pooled output is chosen, exactly as transformers'
/// `CLIPTextModel` does: the value 2 (the OpenAI configurations, written before the field was
/// corrected) pools at the position of the largest token id of each sequence, any other value
/// at the first position holding that id (see [`PoolingRule`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// Number of tokens of the vocabulary (rows of the token embedding).
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    /// Width of the residual stream.
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    /// Width of the MLP hidden layer.
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Number of attention heads; must divide `hidden_size`.
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    /// Number of positions, the longest token sequence the tower takes (77 for CLIP).
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Epsilon of every layer norm.
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// MLP activation.
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: Activation,
    /// Output width of `text_projection` (used only when the checkpoint has one).
    #[serde(default = "defaults::projection_dim")]
    pub projection_dim: usize,
    /// End-of-text token id, or the legacy value 2 (see [`PoolingRule`]).
    #[serde(default = "defaults::eos_token_id")]
    pub eos_token_id: i64,
    /// Start-of-text token id (informational; the tokenizer adds the token).
    #[serde(default = "defaults::bos_token_id")]
    pub bos_token_id: Option<i64>,
    /// Padding token id (informational; padding is masked out).
    #[serde(default = "defaults::pad_token_id")]
    pub pad_token_id: Option<i64>,
}

mod defaults {
    use super::Activation;
    pub(super) fn vocab_size() -> usize {
        49408
    }
    pub(super) fn hidden_size() -> usize {
        512
    }
    pub(super) fn intermediate_size() -> usize {
        2048
    }
    pub(super) fn num_hidden_layers() -> usize {
        12
    }
    pub(super) fn num_attention_heads() -> usize {
        8
    }
    pub(super) fn max_position_embeddings() -> usize {
        77
    }
    pub(super) fn layer_norm_eps() -> f64 {
        1e-5
    }
    pub(super) fn hidden_act() -> Activation {
        Activation::QuickGelu
    }
    pub(super) fn projection_dim() -> usize {
        512
    }
    pub(super) fn eos_token_id() -> i64 {
        49407
    }
    #[allow(clippy::unnecessary_wraps)]
    pub(super) fn bos_token_id() -> Option<i64> {
        Some(49406)
    }
    #[allow(clippy::unnecessary_wraps)]
    pub(super) fn pad_token_id() -> Option<i64> {
        Some(1)
    }
}

/// How the pooled output of a token sequence is chosen (transformers' `CLIPTextModel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingRule {
    /// `eos_token_id == 2` (the OpenAI configurations): the position of the largest token id
    /// of each (padded) sequence, the first one on ties. CLIP's end-of-text token is the last
    /// of its vocabulary, so this is the end token as long as no larger id was added.
    LargestId,
    /// Any other `eos_token_id`: the first position holding that id, or position 0 when the
    /// sequence has none.
    FirstEos(i64),
}

impl Default for ClipTextConfig {
    /// The text tower of CLIP ViT-B/32 and ViT-B/16 (transformers' `CLIPTextConfig()`).
    fn default() -> Self {
        Self::vit_b()
    }
}

impl ClipTextConfig {
    /// The text tower of CLIP ViT-B/32 and ViT-B/16: width 512, MLP 2048, 12 layers, 8 heads,
    /// 77 positions, 49,408 tokens, quick-GELU, projection 512, `eos_token_id` 49407.
    #[must_use]
    pub fn vit_b() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            projection_dim: 512,
            eos_token_id: 49407,
            bos_token_id: Some(49406),
            pad_token_id: Some(1),
        }
    }

    /// The text tower of CLIP ViT-L/14: width 768, MLP 3072, 12 heads, projection 768.
    #[must_use]
    pub fn vit_l() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            projection_dim: 768,
            ..Self::vit_b()
        }
    }

    /// The pooling rule `eos_token_id` selects.
    #[must_use]
    pub fn pooling_rule(&self) -> PoolingRule {
        if self.eos_token_id == 2 {
            PoolingRule::LargestId
        } else {
            PoolingRule::FirstEos(self.eos_token_id)
        }
    }

    /// Width of one attention head.
    #[must_use]
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks every field, bounds every size (see [`limits`]) and the relations between
    /// them, so that nothing is allocated for an unreasonable configuration.
    ///
    /// # Errors
    /// [`VitError::InvalidTextConfig`] naming the first offending field.
    pub fn validate(&self) -> Result<(), VitError> {
        let err =
            |field: &'static str, reason: String| VitError::InvalidTextConfig { field, reason };
        let bounded = [
            ("vocab_size", self.vocab_size, limits::MAX_VOCAB),
            ("hidden_size", self.hidden_size, limits::MAX_WIDTH),
            (
                "intermediate_size",
                self.intermediate_size,
                limits::MAX_INTERMEDIATE,
            ),
            (
                "num_hidden_layers",
                self.num_hidden_layers,
                limits::MAX_LAYERS,
            ),
            (
                "num_attention_heads",
                self.num_attention_heads,
                limits::MAX_WIDTH,
            ),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                limits::MAX_POSITIONS,
            ),
            ("projection_dim", self.projection_dim, limits::MAX_WIDTH),
        ];
        for (field, value, max) in bounded {
            if value == 0 || value > max {
                return Err(err(field, format!("({value}) must be in 1..={max}")));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(err(
                "num_attention_heads",
                format!(
                    "({}) must divide hidden_size ({})",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(err(
                "layer_norm_eps",
                format!("must be finite and positive, got {}", self.layer_norm_eps),
            ));
        }
        if self.eos_token_id < 0 {
            return Err(err(
                "eos_token_id",
                format!("must not be negative, got {}", self.eos_token_id),
            ));
        }
        if self.num_params().is_none_or(|n| n > limits::MAX_PARAMS) {
            return Err(err(
                "hidden_size",
                format!(
                    "the configuration describes more than {} weights",
                    limits::MAX_PARAMS
                ),
            ));
        }
        Ok(())
    }

    /// Number of scalar weights of the tower (projection included), `None` on overflow.
    #[must_use]
    pub fn num_params(&self) -> Option<usize> {
        let d = self.hidden_size;
        let i = self.intermediate_size;
        let per_layer = (4 * d)
            .checked_mul(d)?
            .checked_add(2 * d.checked_mul(i)?)?
            .checked_add(9 * d + i)?;
        self.vocab_size
            .checked_add(self.max_position_embeddings)?
            .checked_mul(d)?
            .checked_add(per_layer.checked_mul(self.num_hidden_layers)?)?
            .checked_add(2 * d)?
            .checked_add(self.projection_dim.checked_mul(d)?)
    }

    /// Parses a `config.json` text: a full `CLIPConfig` whose `text_config` is used (with the
    /// top-level `projection_dim` when present), or a `CLIPTextConfig` (`model_type`
    /// `clip_text_model`, as `CLIPTextModel` / `CLIPTextModelWithProjection` save it). The
    /// result is validated.
    ///
    /// # Errors
    /// [`VitError::NoTextTower`] for a configuration without a text tower (a
    /// `CLIPVisionConfig`), [`VitError::TextConfigParse`] for malformed JSON or wrong field
    /// types, [`VitError::InvalidTextConfig`] for inconsistent values.
    pub fn from_json_str(text: &str) -> Result<Self, VitError> {
        Self::parse(text, None)
    }

    /// Reads and parses a `config.json` file (see [`ClipTextConfig::from_json_str`]).
    ///
    /// # Errors
    /// [`VitError::Io`] when the file cannot be read, otherwise as
    /// [`ClipTextConfig::from_json_str`], naming the file.
    pub fn from_file(path: &Path) -> Result<Self, VitError> {
        Self::parse(&read_config_file(path)?, Some(path))
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Self, VitError> {
        let err = |message: String| VitError::TextConfigParse {
            path: path.map(Path::to_path_buf),
            message,
        };
        let map = json_object(text).map_err(err)?;
        let cfg = match map.get("text_config") {
            Some(t @ serde_json::Value::Object(_)) => {
                serde_json::from_value::<Self>(nested_config(&map, t))
                    .map_err(|e| err(format!("in `text_config`: {e}")))?
            }
            Some(_) => return Err(err("`text_config` is not a JSON object".into())),
            None => {
                let model_type = map.get("model_type").and_then(serde_json::Value::as_str);
                if model_type != Some("clip_text_model") {
                    return Err(VitError::NoTextTower {
                        path: path.map(Path::to_path_buf),
                        reason: format!(
                            "the configuration has no `text_config` and its model_type is {}, \
                             not `clip_text_model` (a vision-only checkpoint?)",
                            model_type.map_or_else(|| "missing".to_owned(), |t| format!("`{t}`"))
                        ),
                    });
                }
                serde_json::from_value::<Self>(serde_json::Value::Object(map))
                    .map_err(|e| err(e.to_string()))?
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
