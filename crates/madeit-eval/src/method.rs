//! What a stream runs: a weight-space method of the `madeit-merge` registry, a test-time
//! method of `madeit-adapt` (MINGLE, C. LW AdaMerging, C. LoRA-WEMoE) or the sequential
//! fine-tuning reference (C. Fine-Tuned). Names, kinds and defaults come from the
//! [`registry`].
//!
//! All are written as one table tagged by `method`. A registry method keeps the form of
//! [`MethodConfig`] (`{ method = "ties", lambda = 0.5 }`); the others are `method = NAME`
//! plus any field of their configuration ([`MingleConfig`], [`AdaMergingConfig`],
//! [`WemoeConfig`], [`SequentialConfig`]; unknown keys rejected, missing keys at the
//! reference defaults):
//!
//! ```toml
//! methods = [
//!     "mingle",                                                      # reference defaults
//!     { method = "mingle", projection = "hard", label = "mingle-hard" },  # hard null space
//!     { method = "mingle", targets = "lightweight", label = "mingle-lw" }, # q, k, v, fc1
//!     { method = "mingle", steps = 20, seed_source = "test_split" },
//!     "c_lw_adamerging",                                             # discards earlier merges
//!     { method = "c_lw_adamerging", accumulate = true, label = "c_lw_adamerging-acc" },
//!     "c_lora_wemoe",
//!     { method = "c_lora_wemoe", first_rank = 16, label = "c_lora_wemoe-r16" }, # one rank
//!     "c_finetuned",                                                 # needs training data
//! ]
//! ```

use madeit_adapt::{
    AdaMergingConfig, LORA_WEMOE, LW_ADAMERGING, LoraWemoe, LwAdaMerging, MINGLE, Mingle,
    MingleConfig, SeedSource, TestTimeMerger, WemoeConfig,
};
use madeit_merge::{MethodConfig, MethodInfo};
use madeit_vit::ClipVisionConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::RunError;
use crate::registry::{self, MethodDescriptor, MethodKind};
use crate::sequential::{C_FINETUNED, SequentialConfig};

/// One method of a stream or experiment: a registry method, a test-time method or the
/// sequential fine-tuning reference.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MethodSpec {
    /// A weight-space continual merger of the `madeit-merge` registry.
    Merge(MethodConfig),
    /// MINGLE, a test-time continual merger (needs each task's seed images and head).
    Mingle(MingleConfig),
    /// C. LW AdaMerging, a test-time continual merger (per-tensor coefficients learned by
    /// entropy minimisation on the seed images).
    AdaMerging(AdaMergingConfig),
    /// C. LoRA-WEMoE, a test-time continual merger (attention by task arithmetic, MLP
    /// mixtures of low-rank experts with routers retrained at every step).
    Wemoe(WemoeConfig),
    /// C. Fine-Tuned: sequential fine-tuning through the order on the zoo's training data
    /// (a reference row, not a merge: it needs training data).
    Sequential(SequentialConfig),
}

/// `From<Config> for MethodSpec`, one line per variant.
macro_rules! spec_from {
    ($($config:ty => $variant:ident),* $(,)?) => {$(
        impl From<$config> for MethodSpec {
            fn from(c: $config) -> Self {
                Self::$variant(c)
            }
        }
    )*};
}

spec_from! {
    MethodConfig => Merge,
    MingleConfig => Mingle,
    AdaMergingConfig => AdaMerging,
    WemoeConfig => Wemoe,
    SequentialConfig => Sequential,
}

/// Where a test-time method's unlabelled seed images come from and how many are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedSetup {
    /// The split they are drawn from.
    pub source: SeedSource,
    /// At most this many per class.
    pub per_class: usize,
    /// Seed of the stratified draw.
    pub seed: u64,
}

impl MethodSpec {
    /// The method's registry name (`ties`, `mingle`, ...).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Merge(c) => c.name(),
            Self::Mingle(_) => MINGLE,
            Self::AdaMerging(_) => LW_ADAMERGING,
            Self::Wemoe(_) => LORA_WEMOE,
            Self::Sequential(_) => C_FINETUNED,
        }
    }

    /// The method's registry entry (`None` only for a method missing from the registry,
    /// which the registry's tests rule out).
    #[must_use]
    pub fn descriptor(&self) -> Option<&'static MethodDescriptor> {
        registry::find(self.name())
    }

    /// What the method needs besides the checkpoints, from its registry entry.
    #[must_use]
    pub fn kind(&self) -> MethodKind {
        self.descriptor().map_or(MethodKind::DataFree, |d| d.kind)
    }

    /// Whether the method adapts at test time (is fed seed images and heads).
    #[must_use]
    pub fn is_test_time(&self) -> bool {
        self.kind() == MethodKind::TestTime
    }

    /// Whether the method needs the benchmark's training data (C. Fine-Tuned).
    #[must_use]
    pub fn needs_training_data(&self) -> bool {
        self.kind() == MethodKind::NeedsTrainingData
    }

    /// The seed-image setup of a test-time method (`None` otherwise).
    #[must_use]
    pub fn seed_setup(&self) -> Option<SeedSetup> {
        let (images, seed) = match self {
            Self::Mingle(c) => (c.seed_images, c.seed),
            Self::AdaMerging(c) => (c.seed_images, c.seed),
            Self::Wemoe(c) => (c.seed_images, c.seed),
            Self::Merge(_) | Self::Sequential(_) => return None,
        };
        Some(SeedSetup {
            source: images.seed_source,
            per_class: images.seed_per_class,
            seed,
        })
    }

    /// The registry configuration, for a weight-space method.
    #[must_use]
    pub fn as_merge(&self) -> Option<&MethodConfig> {
        match self {
            Self::Merge(c) => Some(c),
            _ => None,
        }
    }

    /// The configuration's serde form without the `method` key.
    ///
    /// # Errors
    /// [`RunError::InvalidConfig`] if it cannot be serialised.
    pub fn config_json(&self) -> Result<serde_json::Value, RunError> {
        let v = match self {
            Self::Merge(c) => serde_json::to_value(c),
            Self::Mingle(c) => serde_json::to_value(c),
            Self::AdaMerging(c) => serde_json::to_value(c),
            Self::Wemoe(c) => serde_json::to_value(c),
            Self::Sequential(c) => serde_json::to_value(c),
        };
        v.map_err(|e| RunError::config(e.to_string()))
    }

    /// The reference defaults of method `name` (any name of the
    /// [`registry`]).
    ///
    /// # Errors
    /// [`madeit_merge::MergeError::UnknownMethod`] listing every registered name, wrapped in
    /// [`RunError::Merge`].
    pub fn default_for(name: &str) -> Result<Self, RunError> {
        Ok(registry::method(name)?.default_config())
    }

    /// Parses a table with a `method` key (see the module docs).
    ///
    /// # Errors
    /// For the methods of this module: [`madeit_adapt::AdaptError::InvalidConfig`] (unknown
    /// key, wrong type) wrapped in [`RunError::Adapt`]. Otherwise as
    /// [`MethodConfig::from_json_value`], wrapped in [`RunError::Merge`]. Values are not
    /// range-checked: see [`check`](Self::check).
    pub fn from_json_value(value: serde_json::Value) -> Result<Self, RunError> {
        if let serde_json::Value::Object(map) = &value
            && let Some(name) = map.get("method").and_then(serde_json::Value::as_str)
        {
            let descriptor = registry::method(name)?;
            let mut fields = map.clone();
            fields.remove("method");
            return descriptor.parse(fields);
        }
        // Not a table, or no string `method`: the registry's parser names the problem.
        Ok(Self::Merge(MethodConfig::from_json_value(value)?))
    }

    /// Parses a TOML document with a `method` key.
    ///
    /// # Errors
    /// [`RunError::InvalidConfig`] for TOML syntax errors; as
    /// [`from_json_value`](Self::from_json_value).
    pub fn from_toml_str(text: &str) -> Result<Self, RunError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| RunError::config(e.to_string()))?;
        let value = serde_json::to_value(table).map_err(|e| RunError::config(e.to_string()))?;
        Self::from_json_value(value)
    }

    /// Validates every value once.
    ///
    /// # Errors
    /// [`madeit_merge::MergeError::InvalidParameter`] or
    /// [`madeit_adapt::AdaptError::InvalidParameter`], wrapped.
    pub fn check(&self) -> Result<(), RunError> {
        match self {
            Self::Merge(c) => Ok(c.check()?),
            Self::Mingle(c) => Ok(c.check()?),
            Self::AdaMerging(c) => Ok(c.check()?),
            Self::Wemoe(c) => Ok(c.check()?),
            Self::Sequential(c) => c.check(),
        }
    }

    /// What a results table must say next to the method's name: the mode of C. LW
    /// AdaMerging (`accumulate = false` discards earlier merges, as the reference does), and
    /// that C. Fine-Tuned needs training data; `None` for the others.
    #[must_use]
    pub fn table_note(&self) -> Option<String> {
        match self {
            Self::AdaMerging(c) => Some(if c.accumulate {
                "accumulate = true".to_owned()
            } else {
                "accumulate = false, as the reference".to_owned()
            }),
            Self::Sequential(c) => Some(match c.steps {
                None => "needs training data".to_owned(),
                Some(n) => format!("needs training data; {n} steps per task, not the zoo recipe"),
            }),
            _ => None,
        }
    }

    /// The registry entry of a weight-space method (`None` otherwise).
    #[must_use]
    pub fn info(&self) -> Option<&'static MethodInfo> {
        self.as_merge().map(MethodConfig::info)
    }

    /// An empty test-time merger for towers of shape `vision`, on `device` (`None` for a
    /// weight-space method or C. Fine-Tuned).
    ///
    /// # Errors
    /// As the merger's constructor, wrapped.
    pub fn build_test_time(
        &self,
        vision: &ClipVisionConfig,
        device: &burn::prelude::Device,
    ) -> Result<Option<Box<dyn TestTimeMerger>>, RunError> {
        let device = device.clone();
        Ok(match self {
            Self::Mingle(c) => Some(Box::new(Mingle::new(c.clone(), vision.clone(), device)?)),
            Self::AdaMerging(c) => Some(Box::new(LwAdaMerging::new(
                c.clone(),
                vision.clone(),
                device,
            )?)),
            Self::Wemoe(c) => Some(Box::new(LoraWemoe::new(c.clone(), vision.clone(), device)?)),
            Self::Merge(_) | Self::Sequential(_) => None,
        })
    }
}

/// The serde form of the methods of this module: `method = NAME` and the configuration's
/// fields.
#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    method: &'static str,
    #[serde(flatten)]
    config: &'a T,
}

impl Serialize for MethodSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let method = self.name();
        match self {
            Self::Merge(c) => c.serialize(s),
            Self::Mingle(config) => Tagged { method, config }.serialize(s),
            Self::AdaMerging(config) => Tagged { method, config }.serialize(s),
            Self::Wemoe(config) => Tagged { method, config }.serialize(s),
            Self::Sequential(config) => Tagged { method, config }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for MethodSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_json_value(value).map_err(serde::de::Error::custom)
    }
}
