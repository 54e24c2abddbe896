//! Continual-learning metrics: the accuracy matrix, ACC, BWT, and mean ± std over orders.
//!
//! Notation (tasks in the order they are merged, `T` of them): `θ^(j)` is the merged model
//! after the first `j` tasks, and `a_i(θ^(j))` its accuracy on the `i`-th task. Then
//!
//! - average accuracy `ACC = (1/T) Σ_{i=1..T} a_i(θ^(T))`;
//! - backward transfer `BWT = (1/(T−1)) Σ_{i=1..T−1} [a_i(θ^(T)) − a_i(θ^(i))]`, how much the
//!   accuracy on a task changed between the step that added it and the end (negative values
//!   are forgetting). It is undefined for `T = 1`.
//!
//! In code, indices are 0-based positions in the processing order: entry `(i, j)` of an
//! [`AccuracyMatrix`] is the accuracy on the `i`-th task of the order after step `j`, i.e. after
//! merging tasks `0..=j`, so `a_i(θ^(j))` of the formulas is `get(i − 1, j − 1)`. Accuracies are
//! stored as given (fractions or percentages; the metrics are linear and keep the unit).

use serde::{Deserialize, Serialize};

use crate::EvalError;

/// A `T × T` matrix of accuracies: entry `(i, j)` is the accuracy on task `i` after merge step
/// `j` (0-based positions in the task order), `None` where it was not computed.
///
/// Only the lower triangle (`i ≤ j`) is meaningful for the protocol; ACC needs the last column,
/// BWT the last column and the diagonal. Serialised as `{"rows": [[..], ..]}` with `null` for
/// entries that were not computed; deserialisation checks squareness and finiteness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AccuracyMatrixRepr", into = "AccuracyMatrixRepr")]
pub struct AccuracyMatrix {
    n: usize,
    /// Row-major, `entries[i * n + j]`.
    entries: Vec<Option<f64>>,
}

/// The serialised form of an [`AccuracyMatrix`].
#[derive(Serialize, Deserialize)]
struct AccuracyMatrixRepr {
    rows: Vec<Vec<Option<f64>>>,
}

impl TryFrom<AccuracyMatrixRepr> for AccuracyMatrix {
    type Error = EvalError;

    fn try_from(r: AccuracyMatrixRepr) -> Result<Self, EvalError> {
        Self::from_rows(r.rows)
    }
}

impl From<AccuracyMatrix> for AccuracyMatrixRepr {
    fn from(m: AccuracyMatrix) -> Self {
        Self { rows: m.rows() }
    }
}

impl AccuracyMatrix {
    /// An empty (`None` everywhere) matrix for `n_tasks ≥ 1` tasks.
    ///
    /// # Errors
    /// [`EvalError::NoTasks`] for `n_tasks = 0`.
    pub fn new(n_tasks: usize) -> Result<Self, EvalError> {
        if n_tasks == 0 {
            return Err(EvalError::NoTasks);
        }
        let len = n_tasks
            .checked_mul(n_tasks)
            .ok_or(EvalError::TooManyTasks { n_tasks })?;
        Ok(Self {
            n: n_tasks,
            entries: vec![None; len],
        })
    }

    /// Builds a matrix from its rows (`rows[i][j]` = accuracy on task `i` after step `j`).
    ///
    /// # Errors
    /// [`EvalError::NoTasks`] for no rows, [`EvalError::NotSquare`] if a row's length differs
    /// from the number of rows, [`EvalError::NonFiniteAccuracy`] for NaN/Inf entries.
    pub fn from_rows(rows: Vec<Vec<Option<f64>>>) -> Result<Self, EvalError> {
        let n = rows.len();
        let mut m = Self::new(n)?;
        for (i, row) in rows.into_iter().enumerate() {
            if row.len() != n {
                return Err(EvalError::NotSquare {
                    row: i,
                    len: row.len(),
                    expected: n,
                });
            }
            for (j, v) in row.into_iter().enumerate() {
                if let Some(v) = v {
                    m.set(i, j, v)?;
                }
            }
        }
        Ok(m)
    }

    /// Number of tasks `T`.
    #[must_use]
    pub fn n_tasks(&self) -> usize {
        self.n
    }

    fn index(&self, task: usize, step: usize) -> Result<usize, EvalError> {
        if task >= self.n || step >= self.n {
            return Err(EvalError::IndexOutOfRange {
                task,
                step,
                n_tasks: self.n,
            });
        }
        Ok(task * self.n + step)
    }

    /// Records the accuracy on task `task` after step `step`.
    ///
    /// # Errors
    /// [`EvalError::IndexOutOfRange`], or [`EvalError::NonFiniteAccuracy`] for NaN/Inf.
    pub fn set(&mut self, task: usize, step: usize, accuracy: f64) -> Result<(), EvalError> {
        if !accuracy.is_finite() {
            return Err(EvalError::NonFiniteAccuracy {
                task,
                step,
                value: accuracy,
            });
        }
        let k = self.index(task, step)?;
        if let Some(slot) = self.entries.get_mut(k) {
            *slot = Some(accuracy);
        }
        Ok(())
    }

    /// The accuracy on task `task` after step `step`, `None` if not computed.
    ///
    /// # Errors
    /// [`EvalError::IndexOutOfRange`].
    pub fn get(&self, task: usize, step: usize) -> Result<Option<f64>, EvalError> {
        let k = self.index(task, step)?;
        Ok(self.entries.get(k).copied().flatten())
    }

    /// Like [`AccuracyMatrix::get`], but a missing entry is an error.
    ///
    /// # Errors
    /// [`EvalError::IndexOutOfRange`] or [`EvalError::MissingAccuracy`].
    pub fn require(&self, task: usize, step: usize) -> Result<f64, EvalError> {
        self.get(task, step)?
            .ok_or(EvalError::MissingAccuracy { task, step })
    }

    /// The rows, `rows[i][j]` = accuracy on task `i` after step `j`.
    #[must_use]
    pub fn rows(&self) -> Vec<Vec<Option<f64>>> {
        self.entries
            .chunks(self.n.max(1))
            .map(<[_]>::to_vec)
            .collect()
    }

    /// Final accuracies `a_i(θ^(T))` for every task (the last column).
    ///
    /// # Errors
    /// [`EvalError::MissingAccuracy`] naming the first missing entry.
    pub fn final_accuracies(&self) -> Result<Vec<f64>, EvalError> {
        let last = self.n - 1;
        (0..self.n).map(|i| self.require(i, last)).collect()
    }

    /// Average accuracy after the last step, `ACC = (1/T) Σ_i a_i(θ^(T))`.
    ///
    /// # Errors
    /// [`EvalError::MissingAccuracy`] if an entry of the last column is missing.
    pub fn acc(&self) -> Result<f64, EvalError> {
        let f = self.final_accuracies()?;
        Ok(f.iter().sum::<f64>() / f.len() as f64)
    }

    /// Backward transfer `BWT = (1/(T−1)) Σ_{i<T} [a_i(θ^(T)) − a_i(θ^(i))]`; `Ok(None)` for
    /// `T = 1`, where no task is revisited and BWT is undefined.
    ///
    /// # Errors
    /// [`EvalError::MissingAccuracy`] if a needed entry (last column or diagonal `(i, i)`,
    /// `i < T − 1`) is missing.
    pub fn bwt(&self) -> Result<Option<f64>, EvalError> {
        if self.n < 2 {
            return Ok(None);
        }
        let last = self.n - 1;
        let mut sum = 0.0;
        for i in 0..last {
            sum += self.require(i, last)? - self.require(i, i)?;
        }
        Ok(Some(sum / last as f64))
    }

    /// Average accuracy over the tasks seen so far after step `step`,
    /// `(1/(step+1)) Σ_{i ≤ step} a_i(θ^(step+1))` (0-based `step`; equals
    /// [`AccuracyMatrix::acc`] at the last step). This is the curve plotted against the number
    /// of merged tasks.
    ///
    /// # Errors
    /// [`EvalError::IndexOutOfRange`] or [`EvalError::MissingAccuracy`].
    pub fn seen_tasks_accuracy(&self, step: usize) -> Result<f64, EvalError> {
        let mut sum = 0.0;
        for i in 0..=step {
            sum += self.require(i, step)?;
        }
        Ok(sum / (step + 1) as f64)
    }
}

/// Sample mean and standard deviation with Bessel's correction (`ddof = 1`):
/// `mean = (1/n) Σ x_k`, `std = sqrt(Σ (x_k − mean)² / (n − 1))`.
///
/// With a single value the standard deviation is undefined and returned as `None`
/// (NumPy would give NaN).
///
/// # Errors
/// [`EvalError::EmptySample`] for no values, [`EvalError::NonFiniteSample`] for NaN/Inf.
pub fn mean_std(values: &[f64]) -> Result<(f64, Option<f64>), EvalError> {
    if values.is_empty() {
        return Err(EvalError::EmptySample);
    }
    if let Some(index) = values.iter().position(|x| !x.is_finite()) {
        return Err(EvalError::NonFiniteSample {
            index,
            value: values.get(index).copied().unwrap_or(f64::NAN),
        });
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return Ok((mean, None));
    }
    let ss: f64 = values.iter().map(|x| (x - mean) * (x - mean)).sum();
    Ok((mean, Some((ss / (n - 1.0)).sqrt())))
}

/// ACC and BWT of one run (one task order).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// Average final accuracy.
    pub acc: f64,
    /// Backward transfer (`None` for a single task).
    pub bwt: Option<f64>,
}

impl AccuracyMatrix {
    /// ACC and BWT together.
    ///
    /// # Errors
    /// As [`AccuracyMatrix::acc`] and [`AccuracyMatrix::bwt`].
    pub fn metrics(&self) -> Result<RunMetrics, EvalError> {
        Ok(RunMetrics {
            acc: self.acc()?,
            bwt: self.bwt()?,
        })
    }
}

/// A mean and sample standard deviation (`ddof = 1`) over runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    /// Sample mean.
    pub mean: f64,
    /// Sample standard deviation, `None` for a single run.
    pub std: Option<f64>,
    /// Number of runs.
    pub n: usize,
}

impl MeanStd {
    /// Summarises `values` (see [`mean_std`]).
    ///
    /// # Errors
    /// As [`mean_std`].
    pub fn of(values: &[f64]) -> Result<Self, EvalError> {
        let (mean, std) = mean_std(values)?;
        Ok(Self {
            mean,
            std,
            n: values.len(),
        })
    }
}

/// ACC and BWT summarised over several task orders, as the protocol reports them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// ACC over orders.
    pub acc: MeanStd,
    /// BWT over orders (`None` for single-task runs).
    pub bwt: Option<MeanStd>,
}

/// Computes ACC and BWT for every run and summarises them as mean ± std (ddof 1).
///
/// # Errors
/// [`EvalError::EmptySample`] for no runs, [`EvalError::TaskCountMismatch`] if the runs do not
/// all have the same number of tasks, or any error of [`AccuracyMatrix::metrics`].
pub fn summarize_orders(runs: &[AccuracyMatrix]) -> Result<OrderSummary, EvalError> {
    let first = runs.first().ok_or(EvalError::EmptySample)?;
    if let Some((run, m)) = runs
        .iter()
        .enumerate()
        .find(|(_, m)| m.n_tasks() != first.n_tasks())
    {
        return Err(EvalError::TaskCountMismatch {
            run,
            expected: first.n_tasks(),
            got: m.n_tasks(),
        });
    }
    let metrics: Vec<RunMetrics> = runs
        .iter()
        .map(AccuracyMatrix::metrics)
        .collect::<Result<_, _>>()?;
    let accs: Vec<f64> = metrics.iter().map(|m| m.acc).collect();
    let bwts: Option<Vec<f64>> = metrics.iter().map(|m| m.bwt).collect();
    Ok(OrderSummary {
        acc: MeanStd::of(&accs)?,
        bwt: bwts.map(|b| MeanStd::of(&b)).transpose()?,
    })
}
