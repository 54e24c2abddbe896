//! Low-rank factors `ΔW = U diag(s) V^T`: the one form of a low-rank expert that every crate
//! exchanges (the test-time methods build them, the device bank of `madeit-vit` uploads them,
//! an [`ExpertModel`](crate::ExpertModel) holds them).

use madeit_params::ParamsError;

/// Why low-rank factors were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactorsError {
    /// Inconsistent lengths (U, s, V do not agree on the rank), rank 0, or a dense form too
    /// large to hold.
    #[error("low-rank factors: {reason}")]
    Shape {
        /// What is inconsistent.
        reason: String,
    },
    /// A factor holds NaN or an infinity.
    #[error("non-finite value in {what} at flat index {index}")]
    NonFinite {
        /// Which factor (`expert factor u`, `s` or `v`).
        what: String,
        /// Flat index of the first non-finite element.
        index: usize,
    },
    /// The dense form could not be built as a tensor.
    #[error(transparent)]
    Tensor(#[from] ParamsError),
}

/// Low-rank factors of a weight update, `Delta W = U diag(s) V^T` (`[d_out, d_in]`, PyTorch
/// layout), as plain row-major `f32` buffers.
///
/// - `u`: `[d_out, r]`, the output basis (`B` in LoRA / MINGLE notation);
/// - `s`: `[r]`, the scales (all ones for a `B A` pair);
/// - `v`: `[d_in, r]`, the input basis (`A^T`).
///
/// Applied to a token `x` (`[d_in]`): `Delta W x = U (s * (V^T x))`. For implicit routing
/// (MADE-IT), `V` should have orthonormal columns so that `||X V||_F / ||X||_F` is the cosine
/// between the inputs and their projection on the expert's input subspace.
#[derive(Debug, Clone, PartialEq)]
pub struct LowRankFactors {
    d_out: usize,
    d_in: usize,
    rank: usize,
    u: Vec<f32>,
    s: Vec<f32>,
    v: Vec<f32>,
}

impl LowRankFactors {
    /// Factors from row-major buffers `u` (`[d_out, r]`), `s` (`[r]`), `v` (`[d_in, r]`),
    /// with `r = s.len()`.
    ///
    /// # Errors
    /// [`FactorsError::Shape`] when the lengths disagree or `r = 0`,
    /// [`FactorsError::NonFinite`] on NaN / infinity.
    pub fn new(
        d_out: usize,
        d_in: usize,
        u: Vec<f32>,
        s: Vec<f32>,
        v: Vec<f32>,
    ) -> Result<Self, FactorsError> {
        let rank = s.len();
        if rank == 0 {
            return Err(FactorsError::Shape {
                reason: "rank 0 (s is empty)".into(),
            });
        }
        let checks = [
            ("u", &u, d_out.checked_mul(rank)),
            ("v", &v, d_in.checked_mul(rank)),
        ];
        for (what, buf, want) in checks {
            if want != Some(buf.len()) {
                return Err(FactorsError::Shape {
                    reason: format!(
                        "{what} has {} values, expected {} x {rank} (rank from s)",
                        buf.len(),
                        if what == "u" { d_out } else { d_in }
                    ),
                });
            }
        }
        for (what, buf) in [("u", &u), ("s", &s), ("v", &v)] {
            if let Some(index) = buf.iter().position(|x| !x.is_finite()) {
                return Err(FactorsError::NonFinite {
                    what: format!("expert factor {what}"),
                    index,
                });
            }
        }
        Ok(Self {
            d_out,
            d_in,
            rank,
            u,
            s,
            v,
        })
    }

    /// Factors from faer matrices: `u` is `d_out x r`, `v` is `d_in x r` (as in a thin SVD
    /// `Delta W = U diag(s) V^T`).
    ///
    /// # Errors
    /// As [`new`](Self::new); also when `u` or `v` do not have `s.len()` columns.
    pub fn from_mats(
        u: faer::MatRef<'_, f32>,
        s: &[f32],
        v: faer::MatRef<'_, f32>,
    ) -> Result<Self, FactorsError> {
        if u.ncols() != s.len() || v.ncols() != s.len() {
            return Err(FactorsError::Shape {
                reason: format!(
                    "u has {} columns, v has {}, s has {} values",
                    u.ncols(),
                    v.ncols(),
                    s.len()
                ),
            });
        }
        Self::new(u.nrows(), v.nrows(), row_major(u), s.to_vec(), row_major(v))
    }

    /// Factors of a LoRA-style pair `Delta W = B A` with `b`: `d_out x r`, `a`: `r x d_in`
    /// (`U = B`, `s = 1`, `V = A^T`).
    ///
    /// # Errors
    /// As [`new`](Self::new); also when the inner dimensions differ.
    pub fn from_ba(
        b: faer::MatRef<'_, f32>,
        a: faer::MatRef<'_, f32>,
    ) -> Result<Self, FactorsError> {
        if b.ncols() != a.nrows() {
            return Err(FactorsError::Shape {
                reason: format!("B has {} columns but A has {} rows", b.ncols(), a.nrows()),
            });
        }
        let r = b.ncols();
        Self::new(
            b.nrows(),
            a.ncols(),
            row_major(b),
            vec![1.0; r],
            row_major(a.transpose()),
        )
    }

    /// Output dimension.
    #[must_use]
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Input dimension.
    #[must_use]
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Rank `r`.
    #[must_use]
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// `U`, row-major `[d_out, r]`.
    #[must_use]
    pub fn u(&self) -> &[f32] {
        &self.u
    }

    /// `s`, `[r]`.
    #[must_use]
    pub fn s(&self) -> &[f32] {
        &self.s
    }

    /// `V`, row-major `[d_in, r]`.
    #[must_use]
    pub fn v(&self) -> &[f32] {
        &self.v
    }

    /// The dense update `U diag(s) V^T` as a host tensor `[d_out, d_in]` (to merge into a
    /// weight with [`madeit_params::Tensor::axpy`]).
    ///
    /// # Errors
    /// [`FactorsError::Shape`] if `d_out * d_in` overflows.
    pub fn to_dense(&self) -> Result<madeit_params::Tensor, FactorsError> {
        let (m, n, r) = (self.d_out, self.d_in, self.rank);
        let len = m.checked_mul(n).ok_or_else(|| FactorsError::Shape {
            reason: format!("dense [{m} x {n}] is too large"),
        })?;
        let mut out = vec![0.0f32; len];
        for (i, row) in out.chunks_exact_mut(n.max(1)).enumerate() {
            let ui = &self.u[i * r..(i + 1) * r];
            for (o, vj) in row.iter_mut().zip(self.v.chunks_exact(r)) {
                *o = ui
                    .iter()
                    .zip(&self.s)
                    .zip(vj)
                    .map(|((a, s), b)| a * s * b)
                    .sum();
            }
        }
        Ok(madeit_params::Tensor::new(vec![m, n], out)?)
    }
}

fn row_major(m: faer::MatRef<'_, f32>) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.nrows() * m.ncols());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            out.push(m[(i, j)]);
        }
    }
    out
}
