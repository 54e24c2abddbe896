//! The continual-merging contract: a merger absorbs one fine-tuned model at a time and can be
//! asked for the merged model at any point. The types it speaks in (tasks, step reports,
//! merged models) are the stream contract of `madeit-stream`.

use std::fmt;

use madeit_params::ParamDict;

use crate::{MergeError, MergerState, MethodConfig};
use madeit_stream::{MergedModel, StepReport, TaskId};

/// A continual merger: it is fed fine-tuned models one task at a time and keeps a merged
/// model, never the earlier fine-tuned models and never any data.
///
/// Every implementation
/// - validates its inputs (names, shapes, dtypes, finiteness, the pretrained model being the
///   same at every step, no task absorbed twice) and returns a typed error naming the problem;
/// - is atomic: a failed [`absorb`](Self::absorb) leaves it unchanged;
/// - can be saved ([`state`](Self::state)) and resumed ([`restore`](Self::restore)); a
///   resumed stream produces bit-identical results to an uninterrupted one;
/// - does no I/O.
///
/// ```
/// use madeit_merge::{ContinualMerger, MethodConfig, TaskId};
/// use madeit_params::{ParamDict, Tensor};
///
/// let dict = |v: [f32; 2]| -> ParamDict {
///     let mut p = ParamDict::new();
///     p.insert("w", Tensor::new(vec![2], v.to_vec()).unwrap());
///     p
/// };
/// let theta0 = dict([0.0, 0.0]);
/// let mut merger = MethodConfig::default_for("task_arithmetic")?.build()?;
/// merger.absorb(&theta0, &dict([1.0, 0.0]), &TaskId::new("a"))?;
/// merger.absorb(&theta0, &dict([0.0, 2.0]), &TaskId::new("b"))?;
/// let merged = merger.merged(&theta0)?;
/// assert_eq!(merged.get("w")?.data(), &[0.3, 0.6]); // θ0 + 0.3 (τ_a + τ_b)
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait ContinualMerger: Send + Sync + fmt::Debug {
    /// The registry name of the method (`"opcm"`, `"ties"`, ...).
    fn method(&self) -> &'static str;

    /// The configuration this merger runs with.
    fn config(&self) -> MethodConfig;

    /// Absorbs the fine-tuned model of one more task.
    ///
    /// `pretrained` must be the same model at every step (checked by fingerprint);
    /// `finetuned` must have exactly its tensor names, shapes and dtypes.
    ///
    /// # Errors
    /// [`MergeError::Admission`] for a task the stream refuses ([`crate::AdmitError`]: a
    /// repeated name or checkpoint, a model that does not match the pretrained one or is not
    /// finite, an empty or changed pretrained model), and method-specific errors
    /// ([`MergeError::Linalg`], [`MergeError::Degenerate`]).
    fn absorb(
        &mut self,
        pretrained: &ParamDict,
        finetuned: &ParamDict,
        task: &TaskId,
    ) -> Result<StepReport, MergeError>;

    /// The stream's ledger: the pretrained fingerprint and the record of every absorbed
    /// task ([`madeit_stream::Ledger`]).
    fn ledger(&self) -> &madeit_stream::Ledger;

    /// Number of tasks absorbed so far.
    fn num_tasks(&self) -> usize {
        self.ledger().len()
    }

    /// The tasks absorbed so far, in order.
    fn tasks(&self) -> Vec<TaskId> {
        self.ledger().task_ids()
    }

    /// The merged model after the tasks absorbed so far.
    ///
    /// # Errors
    /// [`MergeError::EmptyStream`] before the first task, [`MergeError::Admission`]
    /// (`PretrainedChanged`)
    /// if `pretrained` is not the model the stream was built on.
    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, MergeError>;

    /// The dense merged weights (weight-space methods); tensors keep `pretrained`'s order
    /// and dtypes.
    ///
    /// # Errors
    /// As [`merged_model`](Self::merged_model), and [`MergeError::NotDense`] for methods
    /// that keep experts.
    fn merged(&self, pretrained: &ParamDict) -> Result<ParamDict, MergeError> {
        self.merged_model(pretrained)?
            .into_dense()
            .ok_or(MergeError::NotDense {
                method: self.method(),
                kind: "low-rank experts on a backbone",
            })
    }

    /// A snapshot of everything the merger needs to continue the stream: named `f32`
    /// tensors and JSON metadata (configuration, absorbed tasks and their fingerprints,
    /// exact scalars).
    fn state(&self) -> MergerState;

    /// Replaces the merger's state by a snapshot taken with [`state`](Self::state) from a
    /// merger of the same method and configuration.
    ///
    /// # Errors
    /// [`MergeError::InvalidState`] (other method or configuration, malformed metadata) or
    /// [`MergeError::StateTensor`] (a tensor missing or of the wrong shape). On error the
    /// merger is unchanged.
    fn restore(&mut self, state: &MergerState) -> Result<(), MergeError>;
}
