//! Saved state of a test-time merger: named `f32` tensors plus JSON metadata.

use madeit_params::ParamDict;
use madeit_stream::{Fingerprint, TaskRecord};
use madeit_vit::{ClipVisionConfig, ModuleId};
use serde::{Deserialize, Serialize};

use crate::AdaptError;

/// Identifies the metadata of a saved test-time merger.
pub const ADAPT_STATE_FORMAT: &str = "madeit-adapt-state";
/// Version of the saved-state layout written by this crate.
pub const ADAPT_STATE_VERSION: u32 = 1;

/// The JSON part of a saved test-time merger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptMetadata {
    /// Always [`ADAPT_STATE_FORMAT`].
    pub format: String,
    /// Layout version ([`ADAPT_STATE_VERSION`]).
    pub version: u32,
    /// Method name.
    pub method: String,
    /// The method's configuration (its serde form).
    pub config: serde_json::Value,
    /// The vision tower the state belongs to.
    pub vision: ClipVisionConfig,
    /// Target modules, in forward order.
    pub modules: Vec<ModuleId>,
    /// Fingerprint of the pretrained model, once a task has been absorbed.
    pub pretrained: Option<Fingerprint>,
    /// Absorbed tasks, in order.
    pub tasks: Vec<TaskRecord>,
}

/// A saved test-time merger: named `f32` tensors plus [`AdaptMetadata`].
///
/// Store the tensors with `ParamDict::save` (all `F32`, so the round trip is exact) and the
/// metadata with [`metadata_json`](Self::metadata_json) (for example in a JSON file next to
/// them); rebuild with [`from_parts`](Self::from_parts) and resume with
/// [`ContinualMethod::restore`](crate::ContinualMethod::restore).
///
/// MINGLE's tensors, for every target module `M` (its HF module path, e.g.
/// `encoder.layers.0.self_attn.q_proj`) and expert `e` (task order, from 0):
///
/// | name | shape | content |
/// |---|---|---|
/// | `expert.M.e.u` | `[d_out, r]` | `B_e = U_r` |
/// | `expert.M.e.s` | `[r]` | `s_r` (`A_e = diag(s_r) V_r^T`) |
/// | `expert.M.e.v` | `[d_in, r]` | `V_r` |
/// | `gate.M.weight` | `[E, d_in]` | gate weights `w_e` |
/// | `gate.M.bias` | `[E]` | gate biases `b_e` |
/// | `subspace.M` | `[d_in, K]` | the stored input subspace `U` (absent before the first task) |
///
/// The interference scores `h` are reset at every task and therefore not saved.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptState {
    /// Configuration, tower, tasks and fingerprints.
    pub metadata: AdaptMetadata,
    /// Method tensors.
    pub tensors: ParamDict,
}

impl AdaptState {
    /// The metadata as compact JSON.
    ///
    /// # Errors
    /// [`AdaptError::InvalidState`] if serialisation fails.
    pub fn metadata_json(&self) -> Result<String, AdaptError> {
        serde_json::to_string(&self.metadata).map_err(|e| AdaptError::InvalidState {
            method: "?",
            reason: format!("cannot serialise metadata: {e}"),
        })
    }

    /// Rebuilds a state from the JSON written by [`metadata_json`](Self::metadata_json) and
    /// the saved tensors.
    ///
    /// # Errors
    /// [`AdaptError::InvalidState`] for malformed JSON or a wrong format tag or version.
    pub fn from_parts(metadata_json: &str, tensors: ParamDict) -> Result<Self, AdaptError> {
        let metadata: AdaptMetadata =
            serde_json::from_str(metadata_json).map_err(|e| AdaptError::InvalidState {
                method: "?",
                reason: format!("metadata: {e}"),
            })?;
        if metadata.format != ADAPT_STATE_FORMAT || metadata.version != ADAPT_STATE_VERSION {
            return Err(AdaptError::InvalidState {
                method: "?",
                reason: format!(
                    "state has format `{}` version {}, expected `{ADAPT_STATE_FORMAT}` version {ADAPT_STATE_VERSION}",
                    metadata.format, metadata.version
                ),
            });
        }
        Ok(Self { metadata, tensors })
    }
}
