//! The option groups every test-time method shares: its Adam run ([`AdamOptions`]) and its
//! seed images ([`SeedImageOptions`]), and the parser of a method's configuration table
//! ([`parse_config`]).
//!
//! A method's configuration holds each group as a `#[serde(flatten)]` field, so the keys
//! stay at the top of the method's table (`lr = 1e-3`, `seed_source = "test_split"`), as
//! they always were. The configurations keep `deny_unknown_fields`: serde then refuses the
//! keys that neither the configuration nor a group took. serde's documentation does not
//! promise this for flattened fields, so a test pins it, and [`parse_config`], the parser
//! of the registry, checks the keys itself first, naming the known ones.

use burn::optim::AdamConfig;
use madeit_stream::ParameterError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{AdaptError, SeedBatches, SeedSource};

/// The Adam run of a test-time method, once per task: learning rate, moments, number of
/// steps and batch size. `Default` gives the values every reference uses (PyTorch's Adam
/// moments, learning rate 1e-4, 50 steps of 16 seed images).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamOptions {
    /// Adam learning rate (default 1e-4).
    pub lr: f64,
    /// Adam `beta_1` (default 0.9, PyTorch's).
    pub adam_beta1: f64,
    /// Adam `beta_2` (default 0.999, PyTorch's).
    pub adam_beta2: f64,
    /// Adam `epsilon` (default 1e-8, PyTorch's; burn's own default is 1e-5).
    pub adam_epsilon: f64,
    /// Adam steps per task (default 50; 0 keeps what the step starts from: the initial
    /// coefficients, gates or routers).
    pub steps: usize,
    /// Seed images per batch (default 16).
    pub batch_size: usize,
}

impl Default for AdamOptions {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            steps: 50,
            batch_size: 16,
        }
    }
}

impl AdamOptions {
    /// Checks every value's range: `lr` finite and >= 0, `adam_beta1` and `adam_beta2` in
    /// `[0, 1)`, `adam_epsilon` finite and > 0, `batch_size` at least 1.
    ///
    /// # Errors
    /// [`AdaptError::InvalidParameter`] of `method`, naming the first bad value.
    pub fn check(&self, method: &'static str) -> Result<(), AdaptError> {
        let bad = |parameter: &'static str, value: String, reason: &'static str| {
            Err(AdaptError::from(ParameterError::new(
                method, parameter, value, reason,
            )))
        };
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return bad("lr", self.lr.to_string(), "must be finite and >= 0");
        }
        for (name, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return bad(name, v.to_string(), "must lie in [0, 1)");
            }
        }
        if !(self.adam_epsilon > 0.0 && self.adam_epsilon.is_finite()) {
            return bad(
                "adam_epsilon",
                self.adam_epsilon.to_string(),
                "must be finite and > 0",
            );
        }
        if self.batch_size == 0 {
            return bad("batch_size", 0.to_string(), "must be at least 1");
        }
        Ok(())
    }

    /// The `steps` steps of this run, each with its mini-batch of the `n` seed images
    /// ([`SeedBatches`] shuffled from `seed`; an empty batch when `n` is 0).
    pub(crate) fn step_batches(
        &self,
        n: usize,
        seed: u64,
    ) -> impl Iterator<Item = (usize, Vec<usize>)> {
        let mut batches = SeedBatches::new(n, self.batch_size, seed);
        (0..self.steps).map(move |s| (s, batches.next().unwrap_or_default()))
    }

    /// burn's Adam with these moments (the learning rate is passed at each step).
    #[must_use]
    pub fn burn_config(&self) -> AdamConfig {
        AdamConfig::new()
            .with_beta_1(self.adam_beta1 as f32)
            .with_beta_2(self.adam_beta2 as f32)
            .with_epsilon(self.adam_epsilon as f32)
    }
}

/// Where the run loop takes a test-time method's unlabelled seed images from, and how many
/// per class. `Default`: 5 per class from the seed split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeedImageOptions {
    /// Unlabelled images per class the run loop should pass (default 5). Informational for
    /// the seed split (which already holds that many); used by
    /// [`select_seed_indices`](crate::select_seed_indices) for the test-split draw.
    pub seed_per_class: usize,
    /// Where the run loop takes them from (default: the seed split).
    pub seed_source: SeedSource,
}

impl Default for SeedImageOptions {
    fn default() -> Self {
        Self {
            seed_per_class: 5,
            seed_source: SeedSource::SeedSplit,
        }
    }
}

impl SeedImageOptions {
    /// Checks that `seed_per_class` is at least 1.
    ///
    /// # Errors
    /// [`AdaptError::InvalidParameter`] of `method`.
    pub fn check(&self, method: &'static str) -> Result<(), AdaptError> {
        if self.seed_per_class == 0 {
            return Err(AdaptError::from(ParameterError::new(
                method,
                "seed_per_class",
                0,
                "must be at least 1",
            )));
        }
        Ok(())
    }
}

/// Parses `method`'s configuration from a JSON value: an object whose keys are the
/// configuration's fields (nested option groups flattened), every key optional (missing
/// keys take the default), unknown keys rejected.
///
/// Every test-time configuration ([`MingleConfig`](crate::MingleConfig),
/// [`AdaMergingConfig`](crate::AdaMergingConfig), [`WemoeConfig`](crate::WemoeConfig)) has
/// these keys: snake_case, the option groups' keys ([`AdamOptions`], [`SeedImageOptions`]) at
/// the top level; missing keys take the default; unknown keys are rejected, by plain serde
/// too (the configurations deny unknown fields), and by this parser with a message that
/// also lists the known keys.
///
/// The keys are checked before the values, against those the default configuration writes
/// (all of its fields), so the message can list the known ones.
///
/// # Errors
/// [`AdaptError::InvalidConfig`]: not an object, an unknown key (the message names it and
/// lists the known ones), or a value of the wrong type.
pub fn parse_config<C: Default + DeserializeOwned + Serialize>(
    method: &'static str,
    value: serde_json::Value,
) -> Result<C, AdaptError> {
    let invalid = |message: String| AdaptError::InvalidConfig { method, message };
    let serde_json::Value::Object(given) = &value else {
        return Err(invalid(format!("expected a table of options, got {value}")));
    };
    let known = match serde_json::to_value(C::default()) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(_) => return Err(invalid("the configuration is not a table".into())),
        Err(e) => return Err(invalid(format!("cannot serialise the configuration: {e}"))),
    };
    if let Some(unknown) = given.keys().find(|k| !known.contains_key(k.as_str())) {
        let expected: Vec<String> = known.keys().map(|k| format!("`{k}`")).collect();
        return Err(invalid(format!(
            "unknown field `{unknown}`, expected one of {}",
            expected.join(", ")
        )));
    }
    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
}
