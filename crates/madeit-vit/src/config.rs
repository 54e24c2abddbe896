//! The vision-tower configuration, mirroring Hugging Face's `CLIPVisionConfig`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::VitError;

/// Largest `hidden_size` (and `projection_dim`, heads) a config may ask for.
pub const MAX_WIDTH: usize = 1 << 15;
/// Largest `num_hidden_layers` a config may ask for.
pub const MAX_LAYERS: usize = 1024;
/// Largest `image_size` a config may ask for, in pixels.
pub const MAX_IMAGE_SIZE: usize = 1 << 13;
/// Largest `num_channels` a config may ask for.
pub const MAX_CHANNELS: usize = 64;
/// Largest sequence length (patches plus the class token) a config may ask for.
pub const MAX_POSITIONS: usize = 1 << 16;

/// The MLP activation (`hidden_act` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Activation {
    /// `quick_gelu`: `x * sigmoid(1.702 x)` (the original CLIP models).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// `gelu`: the exact GELU, `x * Phi(x) = x/2 (1 + erf(x / sqrt 2))`.
    #[serde(rename = "gelu")]
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: `x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `relu`: `max(x, 0)`.
    #[serde(rename = "relu")]
    Relu,
}

/// Configuration of a CLIP vision tower, with Hugging Face `config.json` field names.
///
/// Missing fields take the defaults of transformers' `CLIPVisionConfig` (ViT-B/32), unknown
/// fields are ignored. A full `CLIPConfig` (with a nested `vision_config`) is accepted by
/// [`ClipVisionConfig::from_json_str`], which then takes the top-level `projection_dim`.
///
/// Derived sizes: `num_patches = (image_size / patch_size)^2`, sequence length
/// `num_positions = num_patches + 1` (the class token comes first), head dimension
/// `hidden_size / num_attention_heads`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    /// Width of the residual stream `d`.
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    /// Width of the MLP hidden layer (`fc1` output).
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Number of attention heads; must divide `hidden_size`.
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    /// Height and width of the (square) input image in pixels.
    #[serde(default = "defaults::image_size")]
    pub image_size: usize,
    /// Side of a square patch; must divide `image_size`.
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    /// Number of input channels.
    #[serde(default = "defaults::num_channels")]
    pub num_channels: usize,
    /// Epsilon of every layer norm.
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// MLP activation.
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: Activation,
    /// Output width of `visual_projection` (used only when the checkpoint has one).
    #[serde(default = "defaults::projection_dim")]
    pub projection_dim: usize,
}

mod defaults {
    use super::Activation;
    pub(super) fn hidden_size() -> usize {
        768
    }
    pub(super) fn intermediate_size() -> usize {
        3072
    }
    pub(super) fn num_hidden_layers() -> usize {
        12
    }
    pub(super) fn num_attention_heads() -> usize {
        12
    }
    pub(super) fn image_size() -> usize {
        224
    }
    pub(super) fn patch_size() -> usize {
        32
    }
    pub(super) fn num_channels() -> usize {
        3
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
}

impl Default for ClipVisionConfig {
    /// The ViT-B/32 preset (transformers' `CLIPVisionConfig()` defaults).
    fn default() -> Self {
        Self::vit_b_32()
    }
}

impl ClipVisionConfig {
    /// CLIP ViT-B/32 (`openai/clip-vit-base-patch32`): d = 768, 12 layers, 12 heads, 224 px,
    /// 32 px patches, quick-GELU, projection 512.
    #[must_use]
    pub fn vit_b_32() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 32,
            num_channels: 3,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            projection_dim: 512,
        }
    }

    /// CLIP ViT-B/16 (`openai/clip-vit-base-patch16`): as ViT-B/32 with 16 px patches.
    #[must_use]
    pub fn vit_b_16() -> Self {
        Self {
            patch_size: 16,
            ..Self::vit_b_32()
        }
    }

    /// CLIP ViT-L/14 (`openai/clip-vit-large-patch14`): d = 1024, MLP 4096, 24 layers,
    /// 16 heads, 224 px, 14 px patches, projection 768.
    #[must_use]
    pub fn vit_l_14() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            patch_size: 14,
            projection_dim: 768,
            ..Self::vit_b_32()
        }
    }

    /// A tiny tower for tests: d = 64, MLP 128, 2 layers, 4 heads, 32 px images, 8 px patches
    /// (17 tokens), quick-GELU, projection 32.
    #[must_use]
    pub fn tiny() -> Self {
        Self {
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            image_size: 32,
            patch_size: 8,
            num_channels: 3,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            projection_dim: 32,
        }
    }

    /// Checks every field and the relations between them.
    ///
    /// # Errors
    /// [`VitError::InvalidConfig`] naming the first offending field.
    pub fn validate(&self) -> Result<(), VitError> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
            ("projection_dim", self.projection_dim),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(VitError::InvalidConfig {
                    field,
                    reason: "must be positive".into(),
                });
            }
        }
        for (field, divisor, of, total) in [
            (
                "num_attention_heads",
                self.num_attention_heads,
                "hidden_size",
                self.hidden_size,
            ),
            ("patch_size", self.patch_size, "image_size", self.image_size),
        ] {
            if !total.is_multiple_of(divisor) {
                return Err(VitError::InvalidConfig {
                    field,
                    reason: format!("({divisor}) must divide {of} ({total})"),
                });
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(VitError::InvalidConfig {
                field: "layer_norm_eps",
                reason: format!("must be finite and positive, got {}", self.layer_norm_eps),
            });
        }
        // Bound every size before anything is allocated from it: a hostile or mistyped
        // config.json must fail here, not abort on an allocation.
        let bounds = [
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, 4 * MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_WIDTH),
            ("image_size", self.image_size, MAX_IMAGE_SIZE),
            ("num_channels", self.num_channels, MAX_CHANNELS),
            ("projection_dim", self.projection_dim, MAX_WIDTH),
        ];
        for (field, value, max) in bounds {
            if value > max {
                return Err(VitError::InvalidConfig {
                    field,
                    reason: format!("({value}) exceeds the supported maximum of {max}"),
                });
            }
        }
        if self.num_positions() > MAX_POSITIONS {
            return Err(VitError::InvalidConfig {
                field: "patch_size",
                reason: format!(
                    "({}) gives {} tokens per image for image_size {}, more than the supported \
                     {MAX_POSITIONS}",
                    self.patch_size,
                    self.num_positions(),
                    self.image_size
                ),
            });
        }
        Ok(())
    }

    /// Number of patches per image, `(image_size / patch_size)^2`.
    #[must_use]
    pub fn num_patches(&self) -> usize {
        let g = self.image_size / self.patch_size.max(1);
        g * g
    }

    /// `(d_out, d_in)` of the weight of a target module of this tower.
    #[must_use]
    pub const fn module_dims(&self, kind: crate::ModuleKind) -> (usize, usize) {
        kind.dims(self.hidden_size, self.intermediate_size)
    }

    /// Sequence length: patches plus the class token.
    #[must_use]
    pub fn num_positions(&self) -> usize {
        self.num_patches() + 1
    }

    /// Width of one attention head.
    #[must_use]
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Parses a `config.json` text: a `CLIPVisionConfig`, or a full `CLIPConfig` whose
    /// `vision_config` is used (with the top-level `projection_dim` when present). The result
    /// is validated.
    ///
    /// # Errors
    /// [`VitError::ConfigParse`] for malformed JSON or wrong field types (including an unknown
    /// `hidden_act`), [`VitError::InvalidConfig`] for inconsistent values.
    pub fn from_json_str(text: &str) -> Result<Self, VitError> {
        Self::parse(text, None)
    }

    /// Reads and parses a `config.json` file (see [`ClipVisionConfig::from_json_str`]).
    ///
    /// # Errors
    /// [`VitError::Io`] when the file cannot be read, otherwise as
    /// [`ClipVisionConfig::from_json_str`], naming the file.
    pub fn from_file(path: &Path) -> Result<Self, VitError> {
        Self::parse(&read_config_file(path)?, Some(path))
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Self, VitError> {
        let err = |message: String| VitError::ConfigParse {
            path: path.map(Path::to_path_buf),
            message,
        };
        let map = json_object(text).map_err(err)?;
        let cfg = match map.get("vision_config") {
            Some(vision) => {
                serde_path_to_error::deserialize::<_, Self>(nested_config(&map, vision))
                    .map_err(|e| err(format!("in `vision_config.{}`: {}", e.path(), e.inner())))?
            }
            None => serde_path_to_error::deserialize::<_, Self>(serde_json::Value::Object(map))
                .map_err(|e| err(format!("`{}`: {}", e.path(), e.inner())))?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Serialises this configuration as a `CLIPVisionConfig` `config.json`.
    ///
    /// # Errors
    /// [`VitError::ConfigParse`] if serialisation fails (it does not for valid configs).
    pub fn to_json_string(&self) -> Result<String, VitError> {
        let mut value = serde_json::to_value(self).map_err(|e| VitError::ConfigParse {
            path: None,
            message: e.to_string(),
        })?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("model_type".into(), "clip_vision_model".into());
        }
        serde_json::to_string_pretty(&value).map_err(|e| VitError::ConfigParse {
            path: None,
            message: e.to_string(),
        })
    }
}

/// Reads a `config.json` file as text, naming the file when it cannot be read.
pub(crate) fn read_config_file(path: &Path) -> Result<String, VitError> {
    std::fs::read_to_string(path).map_err(|source| VitError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A tower's configuration nested in a full `CLIPConfig` (`vision_config`, `text_config`),
/// taking the top-level `projection_dim` when there is one: it wins over the nested one.
pub(crate) fn nested_config(
    clip: &serde_json::Map<String, serde_json::Value>,
    nested: &serde_json::Value,
) -> serde_json::Value {
    let mut nested = nested.clone();
    if let (Some(proj), serde_json::Value::Object(n)) = (clip.get("projection_dim"), &mut nested) {
        n.insert("projection_dim".into(), proj.clone());
    }
    nested
}

/// Parses `text` as a JSON object; the error message otherwise (malformed JSON, or JSON
/// that is not an object).
pub(crate) fn json_object(
    text: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(text).map_err(|e: serde_json::Error| e.to_string())? {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err("expected a JSON object".into()),
    }
}
