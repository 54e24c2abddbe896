//! The error type of this crate.

use thiserror::Error;

/// Everything that can go wrong in a `madeit-linalg` routine.
///
/// Inputs are validated before any factorisation starts, so a routine either returns a
/// result for a valid input or one of these variants; none of them panics on bad input.
/// `argument` names the offending parameter of the routine that was called (for example
/// `"a"` in [`thin_svd`](crate::thin_svd)); callers that know the tensor behind it (a
/// parameter name of a checkpoint) wrap this error with that name.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum LinalgError {
    /// A matrix entry is NaN or infinite.
    #[error("matrix `{argument}` has a non-finite value ({value}) at row {row}, column {col}")]
    NonFinite {
        /// Name of the offending argument.
        argument: &'static str,
        /// Row of the first non-finite entry found (column-major scan order).
        row: usize,
        /// Column of that entry.
        col: usize,
        /// The entry itself, widened to `f64` (NaN, `inf` or `-inf`).
        value: f64,
    },
    /// A matrix has no rows or no columns.
    #[error("matrix `{argument}` is empty ({rows}x{cols})")]
    EmptyMatrix {
        /// Name of the offending argument.
        argument: &'static str,
        /// Number of rows.
        rows: usize,
        /// Number of columns.
        cols: usize,
    },
    /// A requested rank exceeds `min(rows, cols)`.
    #[error("rank {rank} exceeds min(rows, cols) of a {rows}x{cols} matrix")]
    RankTooLarge {
        /// The requested rank.
        rank: usize,
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
    },
    /// A requested rank is zero.
    #[error("rank 0 requested for a {rows}x{cols} matrix; the rank must be at least 1")]
    ZeroRank {
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
    },
    /// A matrix that must have orthonormal columns does not: `max |(Q^T Q - I)_ij|` exceeds
    /// the tolerance.
    #[error(
        "matrix `{argument}` does not have orthonormal columns: max |Q^T Q - I| = {max_deviation:e} > tolerance {tolerance:e}"
    )]
    NotOrthonormal {
        /// Name of the offending argument.
        argument: &'static str,
        /// `max_ij |(Q^T Q - I)_ij|`.
        max_deviation: f64,
        /// The tolerance it was compared against.
        tolerance: f64,
    },
    /// Two matrices that must have matching shapes do not.
    #[error("shape mismatch in {operation}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The operation that was attempted.
        operation: &'static str,
        /// Expected `(rows, cols)`.
        expected: (usize, usize),
        /// Actual `(rows, cols)`.
        got: (usize, usize),
    },
    /// The iterative SVD kernel did not converge (faer's `SvdError::NoConvergence`).
    #[error("the SVD of a {rows}x{cols} matrix did not converge")]
    NoConvergence {
        /// Rows of the matrix that was decomposed.
        rows: usize,
        /// Columns of the matrix that was decomposed.
        cols: usize,
    },
}
