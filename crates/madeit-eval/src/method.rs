//! What a stream runs: a weight-space method of the `madeit-merge` registry or a test-time
//! method of `madeit-adapt` (MINGLE).
//!
//! Both are written as one table tagged by `method`. A registry method keeps the form of
//! [`MethodConfig`] (`{ method = "ties", lambda = 0.5 }`); MINGLE is `method = "mingle"`
//! plus any field of [`MingleConfig`] (unknown keys rejected, missing keys at the reference
//! defaults):
//!
//! ```toml
//! methods = [
//!     "mingle",                                                      # reference defaults
//!     { method = "mingle", projection = "hard", label = "mingle-hard" },  # hard null space
//!     { method = "mingle", targets = "lightweight", label = "mingle-lw" }, # q, k, v, fc1
//!     { method = "mingle", steps = 20, seed_source = "test_split" },
//! ]
//! ```

use madeit_adapt::{MINGLE, Mingle, MingleConfig};
use madeit_merge::{MethodConfig, MethodInfo};
use madeit_vit::ClipVisionConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::RunError;

/// One method of a stream or experiment: a registry method or MINGLE.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MethodSpec {
    /// A weight-space continual merger of the `madeit-merge` registry.
    Merge(MethodConfig),
    /// MINGLE, a test-time continual merger (needs each task's seed images and head).
    Mingle(MingleConfig),
}

impl From<MethodConfig> for MethodSpec {
    fn from(c: MethodConfig) -> Self {
        Self::Merge(c)
    }
}

impl From<MingleConfig> for MethodSpec {
    fn from(c: MingleConfig) -> Self {
        Self::Mingle(c)
    }
}

/// Registry names of the test-time methods [`MethodSpec`] knows besides
/// [`madeit_merge::METHODS`].
pub const TEST_TIME_METHODS: [&str; 1] = [MINGLE];

impl MethodSpec {
    /// The method's registry name (`ties`, `mingle`, ...).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Merge(c) => c.name(),
            Self::Mingle(_) => MINGLE,
        }
    }

    /// Whether the method adapts at test time (is fed seed images and heads).
    #[must_use]
    pub fn is_test_time(&self) -> bool {
        matches!(self, Self::Mingle(_))
    }

    /// The registry configuration, for a weight-space method.
    #[must_use]
    pub fn as_merge(&self) -> Option<&MethodConfig> {
        match self {
            Self::Merge(c) => Some(c),
            Self::Mingle(_) => None,
        }
    }

    /// The reference defaults of method `name` (a registry name or `mingle`).
    ///
    /// # Errors
    /// [`madeit_merge::MergeError::UnknownMethod`] wrapped in [`RunError::Merge`].
    pub fn default_for(name: &str) -> Result<Self, RunError> {
        if name == MINGLE {
            return Ok(Self::Mingle(MingleConfig::default()));
        }
        Ok(Self::Merge(MethodConfig::default_for(name)?))
    }

    /// Parses a table with a `method` key (see the module docs).
    ///
    /// # Errors
    /// For `mingle`: [`madeit_adapt::AdaptError::InvalidConfig`] (unknown key, wrong type)
    /// wrapped in [`RunError::Adapt`]. Otherwise as [`MethodConfig::from_json_value`],
    /// wrapped in [`RunError::Merge`]. Values are not range-checked: see
    /// [`check`](Self::check).
    pub fn from_json_value(value: serde_json::Value) -> Result<Self, RunError> {
        if let serde_json::Value::Object(map) = &value
            && map.get("method").and_then(serde_json::Value::as_str) == Some(MINGLE)
        {
            let mut map = map.clone();
            map.remove("method");
            let cfg: MingleConfig = serde_json::from_value(serde_json::Value::Object(map))
                .map_err(|e| madeit_adapt::AdaptError::InvalidConfig {
                    method: MINGLE,
                    message: e.to_string(),
                })?;
            return Ok(Self::Mingle(cfg));
        }
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
        }
    }

    /// The registry entry of a weight-space method (`None` for MINGLE).
    #[must_use]
    pub fn info(&self) -> Option<&'static MethodInfo> {
        self.as_merge().map(MethodConfig::info)
    }

    /// An empty MINGLE merger for towers of shape `vision`, on the CPU (`None` for a
    /// weight-space method).
    ///
    /// # Errors
    /// As [`Mingle::new`], wrapped.
    pub fn build_mingle(&self, vision: &ClipVisionConfig) -> Result<Option<Mingle>, RunError> {
        match self {
            Self::Mingle(c) => Ok(Some(Mingle::new(
                c.clone(),
                vision.clone(),
                burn::prelude::Device::flex(),
            )?)),
            Self::Merge(_) => Ok(None),
        }
    }
}

/// MINGLE's serde form: the configuration's fields after `method = "mingle"`.
#[derive(Serialize)]
struct TaggedMingle<'a> {
    method: &'static str,
    #[serde(flatten)]
    config: &'a MingleConfig,
}

impl Serialize for MethodSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Merge(c) => c.serialize(s),
            Self::Mingle(c) => TaggedMingle {
                method: MINGLE,
                config: c,
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for MethodSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_json_value(value).map_err(serde::de::Error::custom)
    }
}
