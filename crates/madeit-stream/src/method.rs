//! The one contract of every continual method: [`ContinualMethod`], fed one [`Step`] at a
//! time.

use std::fmt;

use madeit_params::ParamDict;

use crate::{Ledger, MergedModel, StepReport, TaskId};

/// What a continual method is given at one step of a stream: the pretrained model `θ_0`
/// (the same at every step), the task's fine-tuned model `θ_t` (the method forms the task
/// vector `τ_t = θ_t − θ_0` itself, after the stream's admission checks), the task's name,
/// and whatever else the kind of method needs ([`ContinualMethod::Extras`]): nothing for a
/// data-free method (`()`), unlabeled seed images and the task's head for a test-time method,
/// training data for one that trains.
///
/// ```
/// use madeit_params::{ParamDict, Tensor};
/// use madeit_stream::{Step, TaskId};
///
/// let mut theta0 = ParamDict::new();
/// theta0.insert("w", Tensor::new(vec![2], vec![0.0, 0.0]).unwrap());
/// let mut theta1 = ParamDict::new();
/// theta1.insert("w", Tensor::new(vec![2], vec![1.0, 0.0]).unwrap());
/// let task = TaskId::new("a");
/// let step = Step::new(&theta0, &theta1, &task); // a data-free step: no extras
/// assert_eq!(step.task.as_str(), "a");
/// let with_data = step.with_extras(&[3_u8, 4]); // what another kind of method is given
/// assert_eq!(with_data.extras, &[3, 4]);
/// ```
#[derive(Debug)]
pub struct Step<'a, X: ?Sized = ()> {
    /// `θ_0`, the pretrained model the stream was started on.
    pub pretrained: &'a ParamDict,
    /// `θ_t`, the task's fine-tuned model: `θ_0`'s tensor names, shapes and dtypes.
    pub finetuned: &'a ParamDict,
    /// The task's name, unique in the stream.
    pub task: &'a TaskId,
    /// What the method needs besides the two models.
    pub extras: &'a X,
}

impl<X: ?Sized> Clone for Step<'_, X> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<X: ?Sized> Copy for Step<'_, X> {}

impl<'a> Step<'a> {
    /// A step that carries the two models and the task's name alone (data-free methods).
    #[must_use]
    pub fn new(pretrained: &'a ParamDict, finetuned: &'a ParamDict, task: &'a TaskId) -> Self {
        Self {
            pretrained,
            finetuned,
            task,
            extras: &(),
        }
    }
}

impl<'a, X: ?Sized> Step<'a, X> {
    /// The same step carrying `extras` instead.
    #[must_use]
    pub fn with_extras<Y: ?Sized>(self, extras: &'a Y) -> Step<'a, Y> {
        Step {
            pretrained: self.pretrained,
            finetuned: self.finetuned,
            task: self.task,
            extras,
        }
    }
}

/// A continual method: it is fed one task at a time ([`absorb`](Self::absorb) a [`Step`])
/// and keeps a merged model, never the earlier fine-tuned models. Every method of the
/// project implements it: the data-free methods of `madeit-merge` (its `ContinualMerger` is
/// this trait with `Extras = ()`, plus its configuration) and the test-time methods of
/// `madeit-adapt` (its `TestTimeMerger` is this trait with seed images and a head as
/// `Extras`, plus the gated forward). A run loop drives any of them through this one
/// contract.
///
/// Every implementation
/// - validates its inputs (the stream's admission, [`Ledger::admit`]: names, shapes, dtypes,
///   finiteness, the pretrained model being the same at every step, no task absorbed twice;
///   then what its extras must satisfy) and returns a typed error naming the problem;
/// - is atomic: a failed [`absorb`](Self::absorb) leaves it unchanged;
/// - can be saved ([`state`](Self::state)) and resumed ([`restore`](Self::restore)); a
///   resumed stream produces bit-identical results to an uninterrupted one;
/// - does no I/O (a run loop loads the models and extras and saves the state).
pub trait ContinualMethod: fmt::Debug {
    /// What a step carries besides the two models (`()`: nothing).
    type Extras: ?Sized;
    /// A snapshot of the method's state ([`state`](Self::state)).
    type State;
    /// What one step reports; [`StepReport`] or a richer report that converts into one.
    type Report: Into<StepReport>;
    /// The method's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The registry name of the method (`"opcm"`, `"mingle"`, ...).
    fn method(&self) -> &'static str;

    /// Absorbs one more task.
    ///
    /// # Errors
    /// The stream's refusal of the task (wrapping [`crate::AdmitError`]), a refusal of the
    /// extras, and method-specific errors. On error the method is unchanged.
    fn absorb(&mut self, step: &Step<'_, Self::Extras>) -> Result<Self::Report, Self::Error>;

    /// The stream's ledger: the pretrained fingerprint and the record of every absorbed
    /// task.
    fn ledger(&self) -> &Ledger;

    /// Number of tasks absorbed so far.
    fn num_tasks(&self) -> usize {
        self.ledger().len()
    }

    /// The tasks absorbed so far, in order.
    fn tasks(&self) -> Vec<TaskId> {
        self.ledger().task_ids()
    }

    /// The merged model after the tasks absorbed so far: dense weights, or a backbone with
    /// low-rank experts.
    ///
    /// # Errors
    /// Before the first task, and when `pretrained` is not the model the stream was built
    /// on.
    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, Self::Error>;

    /// A snapshot of everything the method needs to continue the stream.
    ///
    /// # Errors
    /// When the state cannot be serialised.
    fn state(&self) -> Result<Self::State, Self::Error>;

    /// Replaces the method's state by a snapshot taken with [`state`](Self::state) from a
    /// method of the same kind and configuration. On error the method is unchanged.
    ///
    /// # Errors
    /// Another method or configuration, malformed metadata, a tensor missing or of the
    /// wrong shape.
    fn restore(&mut self, state: &Self::State) -> Result<(), Self::Error>;
}
