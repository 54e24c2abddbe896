//! The input subspaces of earlier tasks: after a task's adaptation, the top-`k` directions
//! of the uncentred covariance of each module's inputs on the seed set are appended to the
//! module's basis (paper section 3.4, "hard null-space projection"; Algorithm 1).
//!
//! ```text
//! Sigma = sum over seed samples and tokens of x x^T          (d x d)
//! U_new = top-k left singular vectors of Sigma
//! U    <- orthonormalize([U | U_new])                        (d x min(d, K + k))
//! ```

use faer::{Mat, MatRef};
use madeit_linalg::{TruncatedSvd, orthonormalize, truncated_svd};
use madeit_vit::ModuleId;

use crate::AdaptError;

/// The top-`k` left singular vectors (= eigenvectors of the largest eigenvalues) of a
/// symmetric positive semi-definite `d x d` matrix `sigma`, `d x min(k, d)`.
///
/// # Errors
/// [`AdaptError::Module`] for a non-square matrix or `k = 0`, [`AdaptError::Linalg`] when
/// the decomposition fails (NaN entries included).
pub fn top_directions(
    module: ModuleId,
    sigma: MatRef<'_, f64>,
    k: usize,
    method: TruncatedSvd,
) -> Result<Mat<f64>, AdaptError> {
    let d = sigma.nrows();
    if sigma.ncols() != d || d == 0 || k == 0 {
        return Err(AdaptError::Module {
            module,
            reason: format!(
                "input covariance must be square and non-empty and k >= 1 (got {}x{}, k = {k})",
                sigma.nrows(),
                sigma.ncols()
            ),
        });
    }
    let svd = truncated_svd(sigma, k.min(d), method).map_err(|source| AdaptError::Linalg {
        module,
        what: "input covariance",
        source,
    })?;
    Ok(svd.u)
}

/// `orthonormalize([old | new])` as `f32`: the stored basis grown by the new directions
/// (QR; at most `d` columns). `old` may have zero columns.
///
/// # Errors
/// [`AdaptError::Module`] when the row counts differ, [`AdaptError::Linalg`] on NaN.
pub fn extend_basis(
    module: ModuleId,
    old: MatRef<'_, f32>,
    new: MatRef<'_, f64>,
) -> Result<Mat<f32>, AdaptError> {
    let d = new.nrows();
    if old.ncols() > 0 && old.nrows() != d {
        return Err(AdaptError::Module {
            module,
            reason: format!(
                "stored subspace has {} rows, the new directions {d}",
                old.nrows()
            ),
        });
    }
    let k_old = old.ncols();
    let both = Mat::<f64>::from_fn(d, k_old + new.ncols(), |i, j| {
        if j < k_old {
            f64::from(old[(i, j)])
        } else {
            new[(i, j - k_old)]
        }
    });
    let q = orthonormalize(both.as_ref()).map_err(|source| AdaptError::Linalg {
        module,
        what: "input subspace",
        source,
    })?;
    Ok(Mat::from_fn(q.nrows(), q.ncols(), |i, j| q[(i, j)] as f32))
}
