//! Dense linear algebra on faer: thin, truncated and randomized SVD, polar decomposition, QR.
//!
//! Matrices are [`faer::Mat`] / [`faer::MatRef`] over `T: `[`Real`] (`f32` or `f64`; see
//! [`Real`] for which precision to use where). Every routine validates its input first —
//! empty matrices, NaN or infinite entries and impossible ranks give a typed
//! [`LinalgError`] naming the argument and position — and never panics on bad input.
//!
//! | routine | result |
//! |---|---|
//! | [`thin_svd`] | `A = U diag(s) V^T`, `k = min(m, n)` |
//! | [`truncated_svd`] | top-`r` triplets, exact or randomized ([`TruncatedSvd`]) |
//! | [`polar_factor`] | `U V^T`, the closest matrix with orthonormal columns |
//! | [`orthonormalize`] | thin `Q` of `A = Q R` with `diag(R) >= 0` |
//! | [`check_orthonormal`] | `max |Q^T Q - I| <= tol` |
//!
//! For hot loops, [`SvdWorkspace`] keeps the scratch buffers between calls and carries an
//! explicit faer parallelism setting. [`random`] builds seeded test matrices.

mod error;
pub mod random;
mod real;
mod svd;
mod validate;

pub use error::LinalgError;
pub use faer;
pub use real::Real;
pub use svd::{
    Svd, SvdWorkspace, TruncatedSvd, orthonormalize, polar_factor, thin_svd, truncated_svd,
};
pub use validate::{check_finite, check_matrix};

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};

/// `max_ij |(Q^T Q - I)_ij|` for a matrix `Q` (zero for an exactly orthonormal one).
#[must_use]
pub fn orthonormality_error<T: Real>(q: MatRef<'_, T>) -> T {
    let k = q.ncols();
    let mut gram = Mat::zeros(k, k);
    matmul(
        gram.as_mut(),
        Accum::Replace,
        q.transpose(),
        q,
        T::from_f64(1.0),
        faer::get_global_parallelism(),
    );
    let mut worst = T::from_f64(0.0);
    for (j, col) in gram.col_iter().enumerate() {
        for (i, &x) in col.iter().enumerate() {
            let target = if i == j {
                T::from_f64(1.0)
            } else {
                T::from_f64(0.0)
            };
            worst = worst.max_((x - target).abs_());
        }
    }
    worst
}

/// Checks that `q` has orthonormal columns: `max_ij |(Q^T Q - I)_ij| <= tolerance`.
///
/// # Errors
/// [`LinalgError::EmptyMatrix`] or [`LinalgError::NonFinite`] (naming `argument`), or
/// [`LinalgError::NotOrthonormal`] with the measured deviation.
pub fn check_orthonormal<T: Real>(
    q: MatRef<'_, T>,
    tolerance: T,
    argument: &'static str,
) -> Result<(), LinalgError> {
    check_matrix(q, argument)?;
    let dev = orthonormality_error(q);
    if !dev.finite() || dev > tolerance {
        return Err(LinalgError::NotOrthonormal {
            argument,
            max_deviation: dev.to_f64(),
            tolerance: tolerance.to_f64(),
        });
    }
    Ok(())
}

/// Default orthonormality tolerance for `T` at ambient dimension `dim`:
/// `sqrt(dim) * 64 eps` (about `2.1e-4` for `f32` and `3.9e-13` for `f64` at `dim = 768`),
/// loose enough for bases produced by QR or SVD in that precision, tight enough to catch
/// any basis that is not orthonormal.
#[must_use]
pub fn default_orthonormal_tolerance<T: Real>(dim: usize) -> T {
    T::from_usize(dim.max(1)).sqrt_() * T::from_f64(64.0) * T::EPSILON
}
