//! The continual-merging contract of the data-free methods: the stream's one trait,
//! [`ContinualMethod`], with its types fixed ([`ContinualMerger`]). A merger absorbs one
//! fine-tuned model at a time ([`Step`]) and can be asked for the merged model at any point.

use madeit_params::ParamDict;

use crate::{MergeError, MergerState, MethodConfig};
use madeit_stream::{ContinualMethod, StepReport};

/// A data-free continual merger: the stream's [`ContinualMethod`] fed fine-tuned models one
/// task at a time with nothing else (`Extras = ()`); it keeps a merged model, never the
/// earlier fine-tuned models and never any data. Every method of the `madeit-merge` registry
/// is one; it is also `Send + Sync` and states its [`MethodConfig`].
///
/// The contract of [`ContinualMethod`] holds: inputs validated with typed errors
/// ([`MergeError::Admission`] for a task the stream refuses, [`MergeError::Linalg`] and
/// [`MergeError::Degenerate`] for method failures), atomic steps, bit-identical resumption
/// from [`state`](ContinualMethod::state) / [`restore`](ContinualMethod::restore)
/// ([`MergeError::InvalidState`], [`MergeError::StateTensor`]), no I/O.
///
/// ```
/// use madeit_merge::{ContinualMerger, ContinualMethod, MethodConfig, Step, TaskId};
/// use madeit_params::{ParamDict, Tensor};
///
/// let dict = |v: [f32; 2]| -> ParamDict {
///     let mut p = ParamDict::new();
///     p.insert("w", Tensor::new(vec![2], v.to_vec()).unwrap());
///     p
/// };
/// let theta0 = dict([0.0, 0.0]);
/// let mut merger = MethodConfig::default_for("task_arithmetic")?.build()?;
/// merger.absorb(&Step::new(&theta0, &dict([1.0, 0.0]), &TaskId::new("a")))?;
/// merger.absorb(&Step::new(&theta0, &dict([0.0, 2.0]), &TaskId::new("b")))?;
/// let merged = merger.merged(&theta0)?;
/// assert_eq!(merged.get("w")?.data(), &[0.3, 0.6]); // θ0 + 0.3 (τ_a + τ_b)
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait ContinualMerger:
    ContinualMethod<Extras = (), State = MergerState, Report = StepReport, Error = MergeError>
    + Send
    + Sync
{
    /// The configuration this merger runs with.
    fn config(&self) -> MethodConfig;

    /// The dense merged weights (weight-space methods); tensors keep `pretrained`'s order
    /// and dtypes.
    ///
    /// # Errors
    /// As [`merged_model`](ContinualMethod::merged_model), and [`MergeError::NotDense`] for
    /// methods that keep experts.
    fn merged(&self, pretrained: &ParamDict) -> Result<ParamDict, MergeError> {
        self.merged_model(pretrained)?
            .into_dense()
            .ok_or(MergeError::NotDense {
                method: self.method(),
                kind: "low-rank experts on a backbone",
            })
    }
}
