//! How the zoo's fine-tunes interact: the interference matrix and the accuracy of simple
//! weight-space merges of all tasks.
//!
//! The interference matrix has one row per evaluated task `i` and one column per task
//! vector `j`:
//!
//! ```text
//! M[i][j] = acc_i(theta_0 + tau_j) - acc_i(theta_0)
//! ```
//!
//! with `theta_0 + tau_j` the fine-tuned tower of task `j` and every accuracy measured
//! with task `i`'s fixed head on (an evenly spaced subset of) its test split. The diagonal
//! is each task's own gain; the off-diagonal says how much one task's update helps or
//! hurts the others. On CLIP the off-diagonal is close to zero or positive: each
//! fine-tune is a small, local move of a general backbone.

use madeit_data::{ImageSet, Split};
use madeit_params::ParamDict;
use madeit_vit::ClipVisionModel;

use crate::error::{Result, ZooError};
use crate::head::evaluate;
use crate::zoo::Zoo;

/// An evenly spaced subset of at most `cap` indices of `0..n` (`floor(k n / m)`,
/// `k < m = min(cap, n)`), the subset `madeit run` evaluates.
#[must_use]
pub fn evenly_spaced(n: usize, cap: Option<usize>) -> Vec<usize> {
    let m = cap.map_or(n, |c| c.min(n));
    (0..m).map(|k| k * n / m.max(1)).collect()
}

/// The interference matrix of a zoo (see the module docs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interference {
    /// Task names, in id order (rows and columns).
    pub tasks: Vec<String>,
    /// Test images evaluated per task.
    pub images: Vec<usize>,
    /// `acc_i(theta_0)`, per task.
    pub pretrained: Vec<f64>,
    /// `M[i][j] = acc_i(theta_0 + tau_j) - acc_i(theta_0)`.
    pub matrix: Vec<Vec<f64>>,
}

impl Interference {
    /// Mean of the off-diagonal entries (0 for a single task).
    #[must_use]
    pub fn mean_off_diagonal(&self) -> f64 {
        let mut sum = 0.0;
        let mut n = 0usize;
        for (i, row) in self.matrix.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                if i != j {
                    sum += v;
                    n += 1;
                }
            }
        }
        if n == 0 { 0.0 } else { sum / n as f64 }
    }

    /// Mean of the diagonal (each task's own gain).
    #[must_use]
    pub fn mean_diagonal(&self) -> f64 {
        let d: Vec<f64> = self
            .matrix
            .iter()
            .enumerate()
            .filter_map(|(i, row)| row.get(i).copied())
            .collect();
        d.iter().sum::<f64>() / d.len().max(1) as f64
    }
}

/// The test images of every task of `zoo` (at most `cap` each, [`evenly_spaced`]).
///
/// # Errors
/// The errors of reading the split files.
pub fn test_sets(zoo: &Zoo, cap: Option<usize>) -> Result<Vec<ImageSet>> {
    zoo.task_names()
        .iter()
        .map(|name| {
            let set = zoo.split(name, Split::Test)?;
            Ok(set.subset(&evenly_spaced(set.n, cap))?)
        })
        .collect()
}

/// Accuracy of `model` on every task (its own head, the given test sets).
///
/// # Errors
/// The errors of [`evaluate`] and of loading the heads.
pub fn accuracies(zoo: &Zoo, model: &ClipVisionModel, sets: &[ImageSet]) -> Result<Vec<f64>> {
    let batch = zoo.manifest().build.eval_batch_size;
    zoo.task_names()
        .iter()
        .zip(sets)
        .map(|(name, set)| evaluate(model, &zoo.head(name)?, set, batch))
        .collect()
}

/// The interference matrix of `zoo` on at most `cap` test images per task; `on_column` is
/// called after each column (task vector) with its index.
///
/// # Errors
/// The errors of loading the towers, heads and splits, and of [`evaluate`].
pub fn interference_matrix(
    zoo: &Zoo,
    cap: Option<usize>,
    on_column: &mut dyn FnMut(usize),
) -> Result<Interference> {
    let sets = test_sets(zoo, cap)?;
    let pretrained = accuracies(zoo, &zoo.pretrained_model()?, &sets)?;
    let names: Vec<String> = zoo.task_names().iter().map(|s| (*s).to_owned()).collect();
    let mut columns = Vec::with_capacity(names.len());
    for (j, name) in names.iter().enumerate() {
        let acc = accuracies(zoo, &zoo.finetuned_model(name)?, &sets)?;
        columns.push(acc);
        on_column(j);
    }
    let matrix = (0..names.len())
        .map(|i| {
            columns
                .iter()
                .map(|col| {
                    col.get(i).copied().unwrap_or(0.0) - pretrained.get(i).copied().unwrap_or(0.0)
                })
                .collect()
        })
        .collect();
    Ok(Interference {
        tasks: names,
        images: sets.iter().map(|s| s.n).collect(),
        pretrained,
        matrix,
    })
}

/// `theta_0 + sum_j lambda_j tau_j` for the zoo's tasks (`lambdas` in id order).
///
/// # Errors
/// [`ZooError::InvalidData`] when `lambdas` has not one entry per task; the errors of
/// loading the towers.
pub fn merged_params(zoo: &Zoo, lambdas: &[f64]) -> Result<ParamDict> {
    let names = zoo.task_names();
    if lambdas.len() != names.len() {
        return Err(ZooError::InvalidData {
            what: "merge".into(),
            reason: format!("{} weights for {} tasks", lambdas.len(), names.len()),
        });
    }
    let base = zoo.pretrained()?;
    let mut out = base.clone();
    for (name, &lambda) in names.iter().zip(lambdas) {
        let ft = zoo.finetuned(name)?;
        for (key, t) in out.iter_mut() {
            let (Ok(f), Ok(b)) = (ft.get(key), base.get(key)) else {
                return Err(ZooError::InvalidData {
                    what: "merge".into(),
                    reason: format!("tensor `{key}` is missing from `{name}`"),
                });
            };
            for ((o, &fv), &bv) in t.data_mut().iter_mut().zip(f.data()).zip(b.data()) {
                *o += (lambda * (f64::from(fv) - f64::from(bv))) as f32;
            }
        }
    }
    Ok(out)
}

/// Accuracy on every task of `theta_0 + sum_j lambda_j tau_j` (the average of the
/// fine-tunes for `lambda = 1/T`, task arithmetic for a constant `lambda`).
///
/// # Errors
/// As [`merged_params`] and [`accuracies`].
pub fn merged_accuracies(zoo: &Zoo, lambdas: &[f64], sets: &[ImageSet]) -> Result<Vec<f64>> {
    let params = merged_params(zoo, lambdas)?;
    let model = ClipVisionModel::from_params(zoo.config(), &params)?;
    accuracies(zoo, &model, sets)
}
