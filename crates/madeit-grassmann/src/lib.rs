//! Subspaces as points of the Grassmann manifold and the distances between them.
//!
//! A [`Subspace`] is an `r`-dimensional subspace of `R^d` held as a `d x r` basis `A` with
//! orthonormal columns (`A^T A = I`); its orthogonal projector is `P_A = A A^T`. Everything
//! here depends only on the subspace, not on the basis chosen for it: replacing `A` by
//! `A R` for any orthogonal `r x r` matrix `R` changes no result.
//!
//! For subspaces `A` (rank `r_a`) and `B` (rank `r_b`) of the same `R^d`, with
//! `k = min(r_a, r_b)` principal angles `0 <= θ_1 <= … <= θ_k <= π/2`
//! (`cos θ_i` = the singular values of `A^T B`):
//!
//! | quantity | formula |
//! |---|---|
//! | [`overlap`](Subspace::overlap) | `‖A^T B‖_F^2 = tr(P_A P_B) = Σ cos^2 θ_i` |
//! | [`affinity`](Subspace::affinity) | `s(A, B) = ‖A^T B‖_F^2 / k` (mean `cos^2 θ_i`, in `[0, 1]`) |
//! | [`chordal_distance`](Subspace::chordal_distance) | `d_c = (Σ sin^2 θ_i)^{1/2}`; equal ranks: `‖P_A - P_B‖_F / √2` |
//! | [`projection_distance`](Subspace::projection_distance) | `‖P_A - P_B‖_F = (2 d_c^2 + |r_a - r_b|)^{1/2}` |
//! | [`expert_affinity`] | `S = (s(U_a, U_c) + s(V_a, V_c)) / 2` |
//!
//! With equal ranks `s(A, B) = 1 - d_c^2 / r`. All are symmetric in `A` and `B`.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use madeit_linalg::{
    LinalgError, Real, SvdWorkspace, check_matrix, default_orthonormal_tolerance, faer,
    orthonormality_error,
};
use thiserror::Error;

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum GrassmannError {
    /// The proposed basis does not have orthonormal columns.
    #[error(
        "basis is not orthonormal: max |A^T A - I| = {max_deviation:e} > tolerance {tolerance:e}"
    )]
    NotOrthonormal {
        /// `max_ij |(A^T A - I)_ij|` of the proposed basis.
        max_deviation: f64,
        /// The tolerance it was compared against.
        tolerance: f64,
    },
    /// The proposed basis has more columns than rows, so it cannot be orthonormal.
    #[error("a {dim}x{rank} basis cannot span a {rank}-dimensional subspace of R^{dim}")]
    RankExceedsDimension {
        /// Ambient dimension (rows of the basis).
        dim: usize,
        /// Number of basis vectors (columns).
        rank: usize,
    },
    /// Two subspaces live in spaces of different dimensions.
    #[error("subspaces of R^{left} and R^{right} cannot be compared ({what})")]
    DimensionMismatch {
        /// Which comparison failed (for example `"affinity"` or `"expert_affinity: V"`).
        what: &'static str,
        /// Ambient dimension of the left subspace.
        left: usize,
        /// Ambient dimension of the right subspace.
        right: usize,
    },
    /// The basis matrix is empty or not finite, or a factorisation failed.
    #[error(transparent)]
    Linalg(#[from] LinalgError),
}

/// An `r`-dimensional subspace of `R^d`, stored as a `d x r` basis with orthonormal
/// columns.
///
/// Orthonormal by construction: [`Subspace::new`] checks `max |A^T A - I| <= tol`
/// (default tolerance [`default_orthonormal_tolerance`], `sqrt(d) * 64 eps`), and
/// [`Subspace::orthonormalized`] builds the basis by QR.
#[derive(Debug, Clone, PartialEq)]
pub struct Subspace<T> {
    basis: Mat<T>,
}

impl<T: Real> Subspace<T> {
    /// Wraps a basis that already has orthonormal columns (for example `U` or `V` of an
    /// SVD), checking `max_ij |(A^T A - I)_ij| <= sqrt(d) * 64 eps`.
    ///
    /// # Errors
    /// [`GrassmannError::Linalg`] for an empty or non-finite basis,
    /// [`GrassmannError::RankExceedsDimension`] if `r > d`, and
    /// [`GrassmannError::NotOrthonormal`] if the check fails.
    pub fn new(basis: Mat<T>) -> Result<Self, GrassmannError> {
        let tol = default_orthonormal_tolerance::<T>(basis.nrows());
        Self::with_tolerance(basis, tol)
    }

    /// As [`Subspace::new`] with an explicit tolerance on `max_ij |(A^T A - I)_ij|`.
    ///
    /// # Errors
    /// As [`Subspace::new`].
    pub fn with_tolerance(basis: Mat<T>, tolerance: T) -> Result<Self, GrassmannError> {
        check_matrix(basis.as_ref(), "basis")?;
        let (dim, rank) = basis.shape();
        if rank > dim {
            return Err(GrassmannError::RankExceedsDimension { dim, rank });
        }
        let dev = orthonormality_error(basis.as_ref());
        if !dev.finite() || dev > tolerance {
            return Err(GrassmannError::NotOrthonormal {
                max_deviation: dev.to_f64(),
                tolerance: tolerance.to_f64(),
            });
        }
        Ok(Self { basis })
    }

    /// The span of the columns of `a` (`d x r`, `r <= d`), with the basis computed by
    /// Householder QR (the thin `Q` of `a = Q R`, `diag(R) >= 0`).
    ///
    /// If `a` is rank-deficient the result still has rank `r`: the missing directions are
    /// filled by arbitrary orthonormal vectors.
    ///
    /// # Errors
    /// [`GrassmannError::Linalg`] for an empty or non-finite matrix and
    /// [`GrassmannError::RankExceedsDimension`] if `r > d`.
    pub fn orthonormalized(a: MatRef<'_, T>) -> Result<Self, GrassmannError> {
        check_matrix(a, "a")?;
        let (dim, rank) = a.shape();
        if rank > dim {
            return Err(GrassmannError::RankExceedsDimension { dim, rank });
        }
        Ok(Self {
            basis: SvdWorkspace::with_parallelism(Par::Seq).orthonormalize(a)?,
        })
    }

    /// Ambient dimension `d`.
    #[must_use]
    pub fn dim(&self) -> usize {
        self.basis.nrows()
    }

    /// Dimension `r` of the subspace (number of basis vectors).
    #[must_use]
    pub fn rank(&self) -> usize {
        self.basis.ncols()
    }

    /// The orthonormal basis, `d x r`.
    #[must_use]
    pub fn basis(&self) -> MatRef<'_, T> {
        self.basis.as_ref()
    }

    /// Gives back the basis.
    #[must_use]
    pub fn into_basis(self) -> Mat<T> {
        self.basis
    }

    fn check_dim(&self, other: &Self, what: &'static str) -> Result<(), GrassmannError> {
        if self.dim() == other.dim() {
            Ok(())
        } else {
            Err(GrassmannError::DimensionMismatch {
                what,
                left: self.dim(),
                right: other.dim(),
            })
        }
    }

    /// `A^T B`, the `r_a x r_b` matrix of cosines between the basis vectors.
    ///
    /// # Errors
    /// [`GrassmannError::DimensionMismatch`] if `d_a != d_b`.
    pub fn cross_gram(&self, other: &Self) -> Result<Mat<T>, GrassmannError> {
        self.check_dim(other, "cross_gram")?;
        Ok(cross(self.basis(), other.basis()))
    }

    /// Overlap `‖A^T B‖_F^2 = tr(P_A P_B) = Σ_i cos^2 θ_i`, in `[0, min(r_a, r_b)]`.
    ///
    /// # Errors
    /// [`GrassmannError::DimensionMismatch`] if `d_a != d_b`.
    pub fn overlap(&self, other: &Self) -> Result<T, GrassmannError> {
        self.check_dim(other, "overlap")?;
        let k = T::from_usize(self.rank().min(other.rank()));
        Ok(cross(self.basis(), other.basis())
            .squared_norm_l2()
            .clamp_(T::from_f64(0.0), k))
    }

    /// Projection affinity
    /// `s(A, B) = ‖A^T B‖_F^2 / min(r_a, r_b) = (1/k) Σ_{i<=k} cos^2 θ_i`, in `[0, 1]`:
    /// 1 iff one subspace contains the other, 0 iff they are orthogonal. With equal
    /// ranks `s = tr(P_A P_B) / r = 1 - d_c^2 / r`. Clamped to `[0, 1]` against rounding.
    ///
    /// # Errors
    /// [`GrassmannError::DimensionMismatch`] if `d_a != d_b`.
    pub fn affinity(&self, other: &Self) -> Result<T, GrassmannError> {
        self.check_dim(other, "affinity")?;
        let k = T::from_usize(self.rank().min(other.rank()));
        let s = cross(self.basis(), other.basis()).squared_norm_l2() / k;
        Ok(s.clamp_(T::from_f64(0.0), T::from_f64(1.0)))
    }

    /// Principal angles `0 <= θ_1 <= … <= θ_k <= π/2`, `k = min(r_a, r_b)`, ascending.
    ///
    /// `cos θ_i = σ_i(A^T B)` (clamped to `[0, 1]`). Because `acos` cannot resolve angles
    /// below about `sqrt(eps)` from a cosine near 1, angles up to `π/4` are taken from the
    /// sines instead: `sin θ_i` are the singular values of the residual `Y - X (X^T Y)`,
    /// where `X` is the basis of larger rank and `Y` the other (Knyazev and Argentati 2002).
    ///
    /// # Errors
    /// [`GrassmannError::DimensionMismatch`] if `d_a != d_b`; [`GrassmannError::Linalg`] if
    /// an SVD does not converge.
    pub fn principal_angles(&self, other: &Self) -> Result<Vec<T>, GrassmannError> {
        self.check_dim(other, "principal_angles")?;
        let (x, y) = self.larger_first(other);
        let m = cross(x, y);
        let cosines = singular_values(m.as_ref())?;
        let res = residual(x, y, m.as_ref());
        let sines_desc = singular_values(res.as_ref())?;
        let k = y.ncols();
        let angles = cosines
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let c = c.to_f64().clamp(0.0, 1.0);
                // sines come in descending order: the i-th smallest angle has the
                // i-th smallest sine.
                let s = sines_desc
                    .get(k - 1 - i)
                    .map_or(0.0, |s| s.to_f64().clamp(0.0, 1.0));
                let theta = if c * c >= 0.5 { s.asin() } else { c.acos() };
                T::from_f64(theta)
            })
            .collect();
        Ok(angles)
    }

    /// Chordal distance `d_c = (Σ_{i<=k} sin^2 θ_i)^{1/2}`, `k = min(r_a, r_b)`.
    ///
    /// Computed as `‖Y - X (X^T Y)‖_F` (`X` the basis of larger rank, `Y` the other),
    /// which is accurate for small angles. With equal ranks `d_c^2 = ‖P_A - P_B‖_F^2 / 2 =
    /// r - ‖A^T B‖_F^2`; with different ranks it is `k - ‖A^T B‖_F^2`, so that always
    /// `s(A, B) = 1 - d_c^2 / k`.
    ///
    /// # Errors
    /// [`GrassmannError::DimensionMismatch`] if `d_a != d_b`.
    pub fn chordal_distance(&self, other: &Self) -> Result<T, GrassmannError> {
        self.check_dim(other, "chordal_distance")?;
        Ok(self.chordal_sq(other).sqrt_())
    }

    /// Projection (Frobenius) distance `‖P_A - P_B‖_F = (r_a + r_b - 2 ‖A^T B‖_F^2)^{1/2}
    /// = (2 d_c^2 + |r_a - r_b|)^{1/2}`; `√2 d_c` for equal ranks.
    ///
    /// # Errors
    /// [`GrassmannError::DimensionMismatch`] if `d_a != d_b`.
    pub fn projection_distance(&self, other: &Self) -> Result<T, GrassmannError> {
        self.check_dim(other, "projection_distance")?;
        let extra = T::from_usize(self.rank().abs_diff(other.rank()));
        Ok((T::from_f64(2.0) * self.chordal_sq(other) + extra).sqrt_())
    }

    /// `(X, Y)` with `X` the basis of larger rank (ties: `self` first).
    fn larger_first<'a>(&'a self, other: &'a Self) -> (MatRef<'a, T>, MatRef<'a, T>) {
        if self.rank() >= other.rank() {
            (self.basis(), other.basis())
        } else {
            (other.basis(), self.basis())
        }
    }

    /// `Σ sin^2 θ_i = ‖Y - X X^T Y‖_F^2`, clamped to `[0, k]`.
    fn chordal_sq(&self, other: &Self) -> T {
        let (x, y) = self.larger_first(other);
        let m = cross(x, y);
        let k = T::from_usize(y.ncols());
        residual(x, y, m.as_ref())
            .squared_norm_l2()
            .clamp_(T::from_f64(0.0), k)
    }
}

/// Expert affinity of two low-rank experts `U_a diag(s_a) V_a^T` and
/// `U_c diag(s_c) V_c^T`: `S = (s(U_a, U_c) + s(V_a, V_c)) / 2`, with `s` the projection
/// [`affinity`](Subspace::affinity) of the output (`U`) and input (`V`) subspaces.
/// In `[0, 1]`, symmetric, and invariant to rotations of any of the four bases.
///
/// # Errors
/// [`GrassmannError::DimensionMismatch`] if the `U` bases or the `V` bases live in
/// spaces of different dimensions.
pub fn expert_affinity<T: Real>(
    u_a: &Subspace<T>,
    v_a: &Subspace<T>,
    u_c: &Subspace<T>,
    v_c: &Subspace<T>,
) -> Result<T, GrassmannError> {
    u_a.check_dim(u_c, "expert_affinity: U")?;
    v_a.check_dim(v_c, "expert_affinity: V")?;
    let su = u_a.affinity(u_c)?;
    let sv = v_a.affinity(v_c)?;
    Ok((su + sv) * T::from_f64(0.5))
}

/// `X^T Y`.
fn cross<T: Real>(x: MatRef<'_, T>, y: MatRef<'_, T>) -> Mat<T> {
    let mut out = Mat::zeros(x.ncols(), y.ncols());
    matmul(
        out.as_mut(),
        Accum::Replace,
        x.transpose(),
        y,
        T::from_f64(1.0),
        Par::Seq,
    );
    out
}

/// `Y - X M` with `M = X^T Y`: the part of `Y` outside the span of `X`.
fn residual<T: Real>(x: MatRef<'_, T>, y: MatRef<'_, T>, m: MatRef<'_, T>) -> Mat<T> {
    let mut out = y.to_owned();
    matmul(out.as_mut(), Accum::Add, x, m, T::from_f64(-1.0), Par::Seq);
    out
}

/// Singular values, descending. The matrices here are small (`r x r`), so this runs on one
/// thread; every computation of this crate does, so results do not depend on the number
/// of threads.
fn singular_values<T: Real>(a: MatRef<'_, T>) -> Result<Vec<T>, GrassmannError> {
    Ok(SvdWorkspace::with_parallelism(Par::Seq).thin_svd(a)?.s)
}
