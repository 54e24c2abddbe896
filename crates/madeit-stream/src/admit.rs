//! Admission: the checks every continual method makes before it touches a new task's
//! fine-tuned model.
//!
//! A task is admitted when its name is new, the pretrained model has parameters, the
//! fine-tuned model has exactly the pretrained model's tensor names, shapes and dtypes,
//! both are finite (the pretrained model is checked at the first task), the pretrained
//! model is the one the stream started with (by [`Fingerprint`]), and the fine-tuned model
//! is not bit for bit one already absorbed. One pass over each pair of tensors
//! ([`scan_pair`]) hashes both and measures `‖τ‖²`; nothing is mutated until the method
//! commits.

use madeit_params::{ParamDict, ParamsError};
use rayon::prelude::*;

use crate::{Fingerprint, Step, TaskId, TaskRecord, scan_pair};

/// Why a task was not admitted (or why a stream's pretrained model is not the one it started
/// with). The method crates wrap it (`MergeError::Admission`, `AdaptError::Admission`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdmitError {
    /// A task with the same name was already absorbed.
    #[error("a task named `{task}` was already absorbed")]
    DuplicateTaskName {
        /// The task name.
        task: TaskId,
    },
    /// The pretrained model has no tensors or no elements.
    #[error("pretrained model has no parameters")]
    EmptyModel,
    /// The fine-tuned model does not match the pretrained model's names, shapes or dtypes
    /// (the wrapped error names the tensor).
    #[error("fine-tuned model of task `{task}` does not match the pretrained model: {source}")]
    Incompatible {
        /// The task being absorbed.
        task: TaskId,
        /// What differs, naming the tensor.
        #[source]
        source: ParamsError,
    },
    /// The fine-tuned model holds a NaN or an infinity.
    #[error("fine-tuned model of task `{task}` is not finite: {source}")]
    NonFinite {
        /// The task being absorbed.
        task: TaskId,
        /// The first non-finite value, naming the tensor.
        #[source]
        source: ParamsError,
    },
    /// The pretrained model holds a NaN or an infinity.
    #[error("pretrained model is not finite: {source}")]
    NonFinitePretrained {
        /// The task being absorbed.
        task: TaskId,
        /// The first non-finite value, naming the tensor.
        #[source]
        source: ParamsError,
    },
    /// The pretrained model passed now is not the one the stream started with.
    #[error(
        "pretrained model differs from the one this stream started with (fingerprint {got}, expected {expected})"
    )]
    PretrainedChanged {
        /// Fingerprint recorded at the first absorbed task.
        expected: Fingerprint,
        /// Fingerprint of the pretrained model passed now.
        got: Fingerprint,
    },
    /// The fine-tuned model is bit for bit one that was already absorbed.
    #[error("task `{task}` is an exact duplicate of already absorbed task `{previous}`")]
    DuplicateTask {
        /// The task being absorbed.
        task: TaskId,
        /// The earlier task with the same fingerprint.
        previous: TaskId,
    },
}

/// A task that passed every check, not yet committed.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// Fingerprint of the pretrained model.
    pub pretrained: Fingerprint,
    /// The task's record (name, fingerprint of its checkpoint, `‖τ‖`).
    pub record: TaskRecord,
}

/// What a stream has admitted: the pretrained model's fingerprint (from the first task on)
/// and the record of every absorbed task, in order. Every continual method keeps one. Its
/// JSON form is `{"pretrained": "<32 hex digits>" | null, "tasks": [records]}`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    /// Fingerprint of the pretrained model, once a task was absorbed.
    pub pretrained: Option<Fingerprint>,
    /// The absorbed tasks, in order.
    pub tasks: Vec<TaskRecord>,
}

impl Ledger {
    /// Checks a new task against the stream so far ([`admit`]). Mutates nothing.
    ///
    /// # Errors
    /// Every [`AdmitError`].
    pub fn admit<X: ?Sized>(&self, step: &Step<'_, X>) -> Result<Admitted, AdmitError> {
        admit(
            &self.tasks,
            self.pretrained,
            step.pretrained,
            step.finetuned,
            step.task,
        )
    }

    /// Records an admitted task.
    pub fn commit(&mut self, admitted: Admitted) {
        self.pretrained = Some(admitted.pretrained);
        self.tasks.push(admitted.record);
    }

    /// The number of absorbed tasks.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task was absorbed yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The fingerprint of `pretrained` when it is the model the stream started with;
    /// `Ok(None)` before the first task (there is nothing to compare with yet).
    ///
    /// # Errors
    /// [`AdmitError::PretrainedChanged`] for another model.
    pub fn check_pretrained(
        &self,
        pretrained: &ParamDict,
    ) -> Result<Option<Fingerprint>, AdmitError> {
        let Some(expected) = self.pretrained else {
            return Ok(None);
        };
        let got = Fingerprint::of_params(pretrained);
        if got != expected {
            return Err(AdmitError::PretrainedChanged { expected, got });
        }
        Ok(Some(got))
    }

    /// The absorbed tasks' ids, in order.
    #[must_use]
    pub fn task_ids(&self) -> Vec<TaskId> {
        self.tasks.iter().map(|r| r.task.clone()).collect()
    }
}

/// Checks a new task against a stream kept as its task records (`tasks`) and the
/// pretrained fingerprint (`expected`, `None` before the first task), as the module docs
/// say, and computes its fingerprint and `‖τ‖`. Mutates nothing.
///
/// # Errors
/// Every [`AdmitError`].
pub fn admit(
    tasks: &[TaskRecord],
    expected: Option<Fingerprint>,
    pretrained: &ParamDict,
    finetuned: &ParamDict,
    task: &TaskId,
) -> Result<Admitted, AdmitError> {
    if tasks.iter().any(|r| &r.task == task) {
        return Err(AdmitError::DuplicateTaskName { task: task.clone() });
    }
    if pretrained.is_empty() || pretrained.numel() == 0 {
        return Err(AdmitError::EmptyModel);
    }
    let incompatible = |source| AdmitError::Incompatible {
        task: task.clone(),
        source,
    };
    pretrained
        .check_compatible(finetuned)
        .map_err(incompatible)?;
    let names: Vec<&str> = pretrained.keys().collect();
    let scanned: Vec<(&str, u128, u128, f64, bool, bool)> = names
        .par_iter()
        .map(|&name| {
            let p = pretrained.get(name)?;
            let f = finetuned.get(name)?;
            let (hp, hf, sq, p_ok, f_ok) = scan_pair(name, p, f);
            Ok((name, hp, hf, sq, p_ok, f_ok))
        })
        .collect::<Result<_, ParamsError>>()
        .map_err(incompatible)?;
    if scanned.iter().any(|s| !s.5) {
        // The sequential check names the first offending tensor and index.
        finetuned
            .check_finite()
            .map_err(|source| AdmitError::NonFinite {
                task: task.clone(),
                source,
            })?;
    }
    if expected.is_none() && scanned.iter().any(|s| !s.4) {
        pretrained
            .check_finite()
            .map_err(|source| AdmitError::NonFinitePretrained {
                task: task.clone(),
                source,
            })?;
    }
    let mut sorted: Vec<&(&str, u128, u128, f64, bool, bool)> = scanned.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let fp_pre = Fingerprint::combine(sorted.iter().map(|s| s.1));
    let fp_task = Fingerprint::combine(sorted.iter().map(|s| s.2));
    let norm = scanned.iter().map(|s| s.3).sum::<f64>().sqrt();
    if let Some(expected) = expected
        && expected != fp_pre
    {
        return Err(AdmitError::PretrainedChanged {
            expected,
            got: fp_pre,
        });
    }
    if let Some(prev) = tasks.iter().find(|r| r.fingerprint == fp_task) {
        return Err(AdmitError::DuplicateTask {
            task: task.clone(),
            previous: prev.task.clone(),
        });
    }
    Ok(Admitted {
        pretrained: fp_pre,
        record: TaskRecord {
            task: task.clone(),
            fingerprint: fp_task,
            task_vector_norm: norm,
        },
    })
}
