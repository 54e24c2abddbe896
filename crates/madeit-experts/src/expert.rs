//! Low-rank experts and the expert set of one module.

use crate::error::{ExpertsError, Result};
use crate::targets::TargetModule;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use madeit_grassmann::Subspace;
use madeit_params::Tensor;
use std::collections::BTreeSet;

/// Largest tolerated `max |Q^T Q - I|` of an expert basis ([`Expert::new`]). Bases
/// produced by `f32` SVDs are orthonormal to about `1e-6`; `1e-3` only rejects bases that
/// are not orthonormal at all.
pub const BASIS_TOLERANCE: f32 = 1e-3;

/// A low-rank expert `dW_e = U diag(s) V^T` (PyTorch `[out, in]` layout) and the set of
/// task ids it serves.
///
/// `U` is `d_out x r` and `V` is `d_in x r`, both with orthonormal columns; `s` holds `r`
/// non-negative values in non-increasing order. `U` spans the expert's output subspace
/// and `V` its input subspace (points of the Grassmann manifolds `Gr(r, d_out)` and
/// `Gr(r, d_in)`).
#[derive(Debug, Clone, PartialEq)]
pub struct Expert {
    u: Subspace<f32>,
    s: Vec<f32>,
    v: Subspace<f32>,
    tasks: BTreeSet<u32>,
}

impl Expert {
    /// Builds an expert, validating its factors: `u` is `d_out x r`, `v` is `d_in x r`,
    /// `s.len() == r >= 1`, all values finite, `s >= 0` non-increasing, `U` and `V`
    /// orthonormal within [`BASIS_TOLERANCE`], and `tasks` non-empty.
    /// `module` names the module in the error.
    pub fn new(
        module: &str,
        u: Mat<f32>,
        s: Vec<f32>,
        v: Mat<f32>,
        tasks: BTreeSet<u32>,
    ) -> Result<Self> {
        let bad = |reason: String| ExpertsError::InvalidExpert {
            module: module.to_owned(),
            reason,
        };
        let r = s.len();
        if r == 0 {
            return Err(bad("rank 0".to_owned()));
        }
        if u.ncols() != r || v.ncols() != r {
            return Err(bad(format!(
                "U has {} columns, V has {}, s has {} values",
                u.ncols(),
                v.ncols(),
                r
            )));
        }
        if u.nrows() < r || v.nrows() < r {
            return Err(bad(format!(
                "rank {r} exceeds a dimension (U is {}x{}, V is {}x{})",
                u.nrows(),
                r,
                v.nrows(),
                r
            )));
        }
        if tasks.is_empty() {
            return Err(bad("empty task set".to_owned()));
        }
        if let Some(i) = s.iter().position(|x| !x.is_finite() || *x < 0.0) {
            return Err(bad(format!("singular value {i} is negative or not finite")));
        }
        if s.windows(2).any(|w| w[0] < w[1]) {
            return Err(bad("singular values are not non-increasing".to_owned()));
        }
        let basis = |name: &str, m: Mat<f32>| {
            Subspace::with_tolerance(m, BASIS_TOLERANCE)
                .map_err(|e| bad(format!("{name} is not an orthonormal basis: {e}")))
        };
        let u = basis("U", u)?;
        let v = basis("V", v)?;
        Ok(Self { u, s, v, tasks })
    }

    /// Output basis `U` (`d_out x r`).
    pub fn u(&self) -> MatRef<'_, f32> {
        self.u.basis()
    }

    /// Output subspace (span of `U`).
    pub fn u_subspace(&self) -> &Subspace<f32> {
        &self.u
    }

    /// Input subspace (span of `V`).
    pub fn v_subspace(&self) -> &Subspace<f32> {
        &self.v
    }

    /// Singular values `s` (length `r`, non-increasing).
    pub fn s(&self) -> &[f32] {
        &self.s
    }

    /// Input basis `V` (`d_in x r`).
    pub fn v(&self) -> MatRef<'_, f32> {
        self.v.basis()
    }

    /// Rank `r`.
    pub fn rank(&self) -> usize {
        self.s.len()
    }

    /// Output dimension `d_out`.
    pub fn d_out(&self) -> usize {
        self.u.dim()
    }

    /// Input dimension `d_in`.
    pub fn d_in(&self) -> usize {
        self.v.dim()
    }

    /// Task ids served by this expert.
    pub fn tasks(&self) -> &BTreeSet<u32> {
        &self.tasks
    }

    /// `||dW_e||_F = ||s||_2`.
    pub fn frobenius_norm(&self) -> f64 {
        self.s
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }

    /// The dense delta `dW_e = U diag(s) V^T` as a `d_out x d_in` matrix.
    pub fn dense(&self) -> Mat<f32> {
        let mut us = self.u.basis().to_owned();
        for (j, &sj) in self.s.iter().enumerate() {
            for x in us.col_mut(j).iter_mut() {
                *x *= sj;
            }
        }
        let mut out = Mat::zeros(self.d_out(), self.d_in());
        matmul(
            out.as_mut(),
            Accum::Replace,
            us.as_ref(),
            self.v.basis().transpose(),
            1.0f32,
            Par::Seq,
        );
        out
    }

    /// The dense delta as a row-major `[d_out, d_in]` tensor (PyTorch layout).
    pub fn dense_tensor(&self) -> Tensor {
        Tensor::from_mat(self.dense().as_ref())
    }
}

/// Widens an `f32` matrix to `f64`.
pub(crate) fn to_f64(a: MatRef<'_, f32>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| f64::from(a[(i, j)]))
}

/// Rounds an `f64` matrix to `f32`.
pub(crate) fn to_f32(a: MatRef<'_, f64>) -> Mat<f32> {
    #[allow(clippy::cast_possible_truncation)]
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] as f32)
}

/// A change to the experts of a module (MADE-IT's evolution), checked by
/// [`ModuleExperts::check_change`] and applied by [`ModuleExperts::apply_change`].
#[derive(Debug, Clone, PartialEq)]
pub enum ExpertChange {
    /// A new expert, after the others.
    Push(Expert),
    /// Expert `index` replaced by `expert` (a consolidation).
    Replace {
        /// The expert replaced.
        index: usize,
        /// Its replacement, serving its tasks and the new one.
        expert: Expert,
    },
}

/// The experts of one target module.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleExperts {
    module: TargetModule,
    rank: usize,
    experts: Vec<Expert>,
}

impl ModuleExperts {
    /// Builds a module's expert set, checking that every expert has the module's shape
    /// and rank `rank`, and that no task id appears in two experts.
    pub fn new(module: TargetModule, rank: usize, experts: Vec<Expert>) -> Result<Self> {
        let name = module.name().to_owned();
        if rank == 0 || rank > module.d_out.min(module.d_in) {
            return Err(ExpertsError::InvalidExpert {
                module: name,
                reason: format!(
                    "rank {rank} is not in 1..={} for a {}x{} module",
                    module.d_out.min(module.d_in),
                    module.d_out,
                    module.d_in
                ),
            });
        }
        let mut out = Self {
            module,
            rank,
            experts: Vec::with_capacity(experts.len()),
        };
        for e in experts {
            out.apply_change(ExpertChange::Push(e))?;
        }
        Ok(out)
    }

    /// The module.
    pub fn module(&self) -> &TargetModule {
        &self.module
    }

    /// The module's name (weight key without `.weight`).
    pub fn name(&self) -> &str {
        self.module.name()
    }

    /// Expert rank `r` of this module.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The experts, in creation order.
    pub fn experts(&self) -> &[Expert] {
        &self.experts
    }

    /// Number of experts.
    pub fn len(&self) -> usize {
        self.experts.len()
    }

    /// `true` before the first task.
    pub fn is_empty(&self) -> bool {
        self.experts.is_empty()
    }

    /// Expert `index`, or [`ExpertsError::ExpertIndex`].
    pub fn expert(&self, index: usize) -> Result<&Expert> {
        self.experts
            .get(index)
            .ok_or_else(|| ExpertsError::ExpertIndex {
                module: self.name().to_owned(),
                index,
                count: self.experts.len(),
            })
    }

    /// Index of the expert serving `task`, if any.
    pub fn expert_of_task(&self, task: u32) -> Option<usize> {
        self.experts.iter().position(|e| e.tasks.contains(&task))
    }

    /// Union of the task sets of all experts.
    pub fn tasks(&self) -> BTreeSet<u32> {
        self.experts
            .iter()
            .flat_map(|e| e.tasks.iter().copied())
            .collect()
    }

    /// Checks that `change` keeps the module consistent, without applying it.
    ///
    /// # Errors
    /// [`ExpertsError::ExpertIndex`] for a replacement of an expert that does not exist;
    /// [`ExpertsError::InvalidExpert`] if the expert does not have the module's shape and
    /// rank, serves a task another expert serves, or (a replacement) drops a task of the
    /// expert it replaces: a consolidation adds tasks, it never drops one.
    pub fn check_change(&self, change: &ExpertChange) -> Result<()> {
        match change {
            ExpertChange::Push(expert) => self.check_expert(expert, None),
            ExpertChange::Replace { index, expert } => {
                let old = self.expert(*index)?;
                if let Some(t) = old.tasks().iter().find(|t| !expert.tasks().contains(t)) {
                    return Err(self.invalid(format!(
                        "the expert replacing expert {index} drops its task {t}"
                    )));
                }
                self.check_expert(expert, Some(*index))
            }
        }
    }

    /// Applies `change` after [`ModuleExperts::check_change`], and returns the index of the
    /// expert it added or replaced.
    ///
    /// # Errors
    /// As [`ModuleExperts::check_change`]; the module is then unchanged.
    pub fn apply_change(&mut self, change: ExpertChange) -> Result<usize> {
        self.check_change(&change)?;
        match change {
            ExpertChange::Push(expert) => {
                self.experts.push(expert);
                Ok(self.experts.len() - 1)
            }
            ExpertChange::Replace { index, expert } => {
                if let Some(slot) = self.experts.get_mut(index) {
                    *slot = expert;
                }
                Ok(index)
            }
        }
    }

    /// Checks `expert` against the module's shape and rank and against the task sets of
    /// the other experts (all but `replacing`).
    fn check_expert(&self, expert: &Expert, replacing: Option<usize>) -> Result<()> {
        let (m, rank) = (&self.module, self.rank);
        if expert.d_out() != m.d_out || expert.d_in() != m.d_in || expert.rank() != rank {
            return Err(self.invalid(format!(
                "an expert of {}x{} and rank {} does not fit a {}x{} module of rank {rank}",
                expert.d_out(),
                expert.d_in(),
                expert.rank(),
                m.d_out,
                m.d_in
            )));
        }
        for (i, other) in self.experts.iter().enumerate() {
            if Some(i) == replacing {
                continue;
            }
            if let Some(t) = expert.tasks().iter().find(|t| other.tasks().contains(t)) {
                return Err(self.invalid(format!("task {t} is served by two experts")));
            }
        }
        Ok(())
    }

    fn invalid(&self, reason: String) -> ExpertsError {
        ExpertsError::InvalidExpert {
            module: self.name().to_owned(),
            reason,
        }
    }
}
