//! Saved merger state, fingerprints of models and the bookkeeping shared by every method.

use madeit_params::{DType, ParamDict, ParamsError};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use indexmap::IndexMap;

use crate::{MergeError, MethodConfig, StepReport};
use madeit_stream::Admitted;
pub use madeit_stream::{Fingerprint, TaskRecord, exact_f64};

/// Identifies the metadata of a saved merger state.
pub const STATE_FORMAT: &str = "madeit-merge-state";
/// Version of the saved-state layout written by this crate.
pub const STATE_VERSION: u32 = 1;

/// The JSON part of a saved merger state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateMetadata {
    /// Always [`STATE_FORMAT`].
    pub format: String,
    /// Layout version ([`STATE_VERSION`]).
    pub version: u32,
    /// The method and its configuration.
    pub config: MethodConfig,
    /// Fingerprint of the pretrained model, once a task has been absorbed.
    pub pretrained: Option<Fingerprint>,
    /// Absorbed tasks, in order.
    pub tasks: Vec<TaskRecord>,
    /// Method-specific scalars (exact bits where they matter).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A saved merger: named `f32` tensors plus [`StateMetadata`].
///
/// Store the tensors with `ParamDict::save` (they are all tagged `F32`, so the round trip is
/// exact) and the metadata with [`MergerState::metadata_json`] (for example in the
/// safetensors `__metadata__` map); rebuild with [`MergerState::from_parts`] and resume with
/// [`crate::resume`] or [`ContinualMethod::restore`](crate::ContinualMethod::restore).
#[derive(Debug, Clone, PartialEq)]
pub struct MergerState {
    /// Configuration, tasks, fingerprints and scalars.
    pub metadata: StateMetadata,
    /// Method-specific tensors (for the weight-space methods `merged.<name>` or
    /// `tau_max.<name>`).
    pub tensors: ParamDict,
}

impl MergerState {
    /// The method this state belongs to.
    #[must_use]
    pub fn method(&self) -> &'static str {
        self.metadata.config.name()
    }

    /// The metadata as compact JSON.
    ///
    /// # Errors
    /// [`MergeError::InvalidState`] if serialisation fails (it does not for states built by
    /// this crate).
    pub fn metadata_json(&self) -> Result<String, MergeError> {
        serde_json::to_string(&self.metadata).map_err(|e| MergeError::InvalidState {
            method: self.method(),
            reason: format!("cannot serialise metadata: {e}"),
        })
    }

    /// Rebuilds a state from the JSON written by [`metadata_json`](Self::metadata_json) and
    /// the saved tensors.
    ///
    /// # Errors
    /// [`MergeError::InvalidConfig`] for malformed JSON (including an unknown method or key)
    /// or a wrong format tag or version.
    pub fn from_parts(metadata_json: &str, tensors: ParamDict) -> Result<Self, MergeError> {
        let metadata: StateMetadata =
            serde_json::from_str(metadata_json).map_err(|e| MergeError::InvalidConfig {
                method: None,
                message: format!("merger state metadata: {e}"),
            })?;
        if metadata.format != STATE_FORMAT || metadata.version != STATE_VERSION {
            return Err(MergeError::InvalidConfig {
                method: Some(metadata.config.name().to_owned()),
                message: format!(
                    "merger state has format `{}` version {}, expected `{STATE_FORMAT}` version {STATE_VERSION}",
                    metadata.format, metadata.version
                ),
            });
        }
        Ok(Self { metadata, tensors })
    }
}

/// The stream's ledger ([`madeit_stream::Ledger`]: the pretrained fingerprint, the record
/// of absorbed tasks and the one admission of a task), with what the methods of this crate
/// add: step reports, and saving and restoring it in a [`MergerState`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Ledger(madeit_stream::Ledger);

impl std::ops::Deref for Ledger {
    type Target = madeit_stream::Ledger;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Ledger {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Ledger {
    /// Records an admitted task and returns the report of its step (the number of tasks
    /// absorbed, this one included) for `method`.
    pub(crate) fn commit_step(
        &mut self,
        admitted: Admitted,
        method: &str,
        merged_delta_norm: f64,
        metrics: IndexMap<String, f64>,
    ) -> StepReport {
        let task = admitted.record.task.clone();
        let task_vector_norm = admitted.record.task_vector_norm;
        self.commit(admitted);
        StepReport {
            method: method.to_owned(),
            step: self.tasks.len(),
            task,
            task_vector_norm,
            merged_delta_norm,
            metrics,
        }
    }

    /// The state of a method that keeps one set of tensors, saved under `prefix`, and no
    /// other data.
    pub(crate) fn dict_state(
        &self,
        config: MethodConfig,
        prefix: &str,
        params: &ParamDict,
    ) -> Result<MergerState, MergeError> {
        let mut tensors = ParamDict::new();
        export_tensors(&mut tensors, prefix, params);
        Ok(self.extra_state(config, &serde_json::Value::Null, tensors))
    }

    /// The state of a method that keeps `tensors` and the method-specific scalars `extra`
    /// (read back with [`read_extra`]).
    pub(crate) fn extra_state(
        &self,
        config: MethodConfig,
        extra: &impl Serialize,
        tensors: ParamDict,
    ) -> MergerState {
        let extra = serde_json::to_value(extra).unwrap_or(serde_json::Value::Null);
        MergerState {
            metadata: self.metadata(config, extra),
            tensors,
        }
    }

    /// The ledger and the tensors of a state written by [`Ledger::dict_state`], after
    /// checking that it belongs to `config` and holds only tensors under `prefix`.
    pub(crate) fn restore_dict(
        method: &'static str,
        config: &MethodConfig,
        state: &MergerState,
        prefix: &str,
    ) -> Result<(Self, ParamDict), MergeError> {
        let ledger = Self::from_state(method, config, state)?;
        check_state_tensors(method, state, prefix)?;
        Ok((ledger, import_tensors(state, prefix)))
    }

    /// Checks that a merged model can be built: at least one task, and `pretrained` is the
    /// model the stream was built on.
    pub(crate) fn check_merged(
        &self,
        method: &'static str,
        pretrained: &ParamDict,
    ) -> Result<(), MergeError> {
        match self.check_pretrained(pretrained)? {
            Some(_) => Ok(()),
            None => Err(MergeError::EmptyStream { method }),
        }
    }

    /// The metadata of a state with this ledger.
    pub(crate) fn metadata(&self, config: MethodConfig, extra: serde_json::Value) -> StateMetadata {
        StateMetadata {
            format: STATE_FORMAT.to_owned(),
            version: STATE_VERSION,
            config,
            pretrained: self.pretrained,
            tasks: self.tasks.clone(),
            extra,
        }
    }

    /// The ledger recorded in a state, after checking that it belongs to `config`.
    pub(crate) fn from_state(
        method: &'static str,
        config: &MethodConfig,
        state: &MergerState,
    ) -> Result<Self, MergeError> {
        let meta = &state.metadata;
        if meta.config.name() != method {
            return Err(MergeError::InvalidState {
                method,
                reason: format!("the state belongs to method `{}`", meta.config.name()),
            });
        }
        if &meta.config != config {
            return Err(MergeError::InvalidState {
                method,
                reason: format!(
                    "the state was written with configuration {:?}, this merger has {:?}",
                    meta.config, config
                ),
            });
        }
        if meta.pretrained.is_none() != meta.tasks.is_empty() {
            return Err(MergeError::InvalidState {
                method,
                reason: "a pretrained fingerprint is recorded if and only if tasks are".to_owned(),
            });
        }
        for (i, r) in meta.tasks.iter().enumerate() {
            if meta.tasks[..i].iter().any(|p| p.task == r.task) {
                return Err(MergeError::InvalidState {
                    method,
                    reason: format!("task `{}` is recorded twice", r.task),
                });
            }
            if !r.task_vector_norm.is_finite() || r.task_vector_norm < 0.0 {
                return Err(MergeError::InvalidState {
                    method,
                    reason: format!(
                        "task `{}` has an invalid task-vector norm {}",
                        r.task, r.task_vector_norm
                    ),
                });
            }
        }
        Ok(Self(madeit_stream::Ledger {
            pretrained: meta.pretrained,
            tasks: meta.tasks.clone(),
        }))
    }
}

/// The method-specific scalars of a state written by [`Ledger::extra_state`].
///
/// # Errors
/// [`MergeError::InvalidState`] when the metadata's `extra` is not an `E`.
pub(crate) fn read_extra<E: DeserializeOwned>(
    method: &'static str,
    state: &MergerState,
) -> Result<E, MergeError> {
    serde_json::from_value(state.metadata.extra.clone()).map_err(|e| MergeError::InvalidState {
        method,
        reason: format!("metadata `extra`: {e}"),
    })
}

/// Prefixes every tensor name with `prefix` and tags the tensors `F32` (the state keeps the
/// exact in-memory values).
pub(crate) fn export_tensors(out: &mut ParamDict, prefix: &str, params: &ParamDict) {
    for (name, t) in params.iter() {
        out.insert(format!("{prefix}{name}"), t.clone().with_dtype(DType::F32));
    }
}

/// Reads back the tensors exported under `prefix` (every tensor of the state must carry a
/// known prefix; the caller checks that).
pub(crate) fn import_tensors(state: &MergerState, prefix: &str) -> ParamDict {
    state
        .tensors
        .iter()
        .filter_map(|(name, t)| name.strip_prefix(prefix).map(|n| (n.to_owned(), t.clone())))
        .collect()
}

/// Checks that the state's tensors all carry `prefix` and that there is at least one iff
/// tasks were absorbed.
pub(crate) fn check_state_tensors(
    method: &'static str,
    state: &MergerState,
    prefix: &str,
) -> Result<(), MergeError> {
    if let Some(name) = state.tensors.keys().find(|k| !k.starts_with(prefix)) {
        return Err(MergeError::StateTensor {
            method,
            source: ParamsError::UnexpectedKey {
                name: name.to_owned(),
            },
        });
    }
    if state.metadata.tasks.is_empty() != state.tensors.is_empty() {
        return Err(MergeError::InvalidState {
            method,
            reason: format!(
                "{} tasks recorded but {} tensors",
                state.metadata.tasks.len(),
                state.tensors.len()
            ),
        });
    }
    Ok(())
}
