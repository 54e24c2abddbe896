//! Input checks shared by the test-time mergers: a new task's weights against the stream,
//! and its seed images against the tower.

use madeit_params::{ParamDict, ParamsError};
use madeit_stream::{Fingerprint, TaskId, TaskRecord};
use madeit_vit::ClipVisionConfig;
use rayon::prelude::*;

use crate::{AdaptError, SeedImages};

/// A task that passed every input check, with its bookkeeping.
pub(crate) struct Admitted {
    /// Fingerprint of the pretrained model.
    pub(crate) pretrained: Fingerprint,
    /// The task's record (name, fingerprint, `||tau||`).
    pub(crate) record: TaskRecord,
}

/// Checks a new task against the stream so far (`tasks`, and the pretrained fingerprint
/// `expected` once a task was absorbed): no repeated name or checkpoint, compatible and
/// finite weights, the same pretrained model; computes `||tau||`.
pub(crate) fn admit_task(
    tasks: &[TaskRecord],
    expected: Option<Fingerprint>,
    pretrained: &ParamDict,
    finetuned: &ParamDict,
    task: &TaskId,
) -> Result<Admitted, AdaptError> {
    if tasks.iter().any(|r| &r.task == task) {
        return Err(AdaptError::DuplicateTaskName { task: task.clone() });
    }
    pretrained
        .check_compatible(finetuned)
        .map_err(|source| AdaptError::Incompatible {
            task: task.clone(),
            source,
        })?;
    finetuned
        .check_finite()
        .map_err(|source| AdaptError::NonFinite {
            task: task.clone(),
            which: "fine-tuned",
            source,
        })?;
    if expected.is_none() {
        pretrained
            .check_finite()
            .map_err(|source| AdaptError::NonFinite {
                task: task.clone(),
                which: "pretrained",
                source,
            })?;
    }
    let fp_pre = Fingerprint::of_params(pretrained);
    if let Some(expected) = expected
        && expected != fp_pre
    {
        return Err(AdaptError::PretrainedChanged {
            expected,
            got: fp_pre,
        });
    }
    let fp_task = Fingerprint::of_params(finetuned);
    if let Some(prev) = tasks.iter().find(|r| r.fingerprint == fp_task) {
        return Err(AdaptError::DuplicateTask {
            task: task.clone(),
            previous: prev.task.clone(),
        });
    }
    let names: Vec<&str> = pretrained.keys().collect();
    let sq: f64 = names
        .par_iter()
        .map(|&name| -> Result<f64, ParamsError> {
            let p = pretrained.get(name)?;
            let f = finetuned.get(name)?;
            Ok(p.data()
                .iter()
                .zip(f.data())
                .map(|(&a, &b)| (f64::from(b) - f64::from(a)).powi(2))
                .sum())
        })
        .collect::<Result<Vec<f64>, ParamsError>>()
        .map_err(|source| AdaptError::Incompatible {
            task: task.clone(),
            source,
        })?
        .iter()
        .sum();
    Ok(Admitted {
        pretrained: fp_pre,
        record: TaskRecord {
            task: task.clone(),
            fingerprint: fp_task,
            task_vector_norm: sq.sqrt(),
        },
    })
}

/// Checks that `seed` holds finite images of the tower's shape.
pub(crate) fn check_seed_images(
    c: &ClipVisionConfig,
    task: &TaskId,
    seed: &SeedImages,
) -> Result<(), AdaptError> {
    let per_image = c.num_channels * c.image_size * c.image_size;
    let err = |reason: String| AdaptError::SeedData {
        task: task.clone(),
        reason,
    };
    if seed.is_empty() {
        return Err(err("no seed samples".into()));
    }
    if seed.pixels().len() != seed.len() * per_image {
        return Err(err(format!(
            "{} pixel values for {} images of [{}, {}, {}]",
            seed.pixels().len(),
            seed.len(),
            c.num_channels,
            c.image_size,
            c.image_size
        )));
    }
    if let Some(i) = seed.pixels().iter().position(|x| !x.is_finite()) {
        return Err(err(format!("non-finite pixel value at flat index {i}")));
    }
    Ok(())
}
