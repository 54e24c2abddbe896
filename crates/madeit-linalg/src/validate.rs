//! Input checks shared by every routine.

use faer::MatRef;

use crate::{LinalgError, Real};

/// Checks that `a` is non-empty and has only finite entries.
///
/// # Errors
/// [`LinalgError::EmptyMatrix`] if `a` has no rows or no columns, and
/// [`LinalgError::NonFinite`] naming `argument` and the position of the first NaN or
/// infinite entry in column-major order.
pub fn check_matrix<T: Real>(a: MatRef<'_, T>, argument: &'static str) -> Result<(), LinalgError> {
    let (rows, cols) = a.shape();
    if rows == 0 || cols == 0 {
        return Err(LinalgError::EmptyMatrix {
            argument,
            rows,
            cols,
        });
    }
    check_finite(a, argument)
}

/// Checks that every entry of `a` is finite (an empty matrix passes).
///
/// # Errors
/// [`LinalgError::NonFinite`] naming `argument` and the position of the first NaN or
/// infinite entry in column-major order.
pub fn check_finite<T: Real>(a: MatRef<'_, T>, argument: &'static str) -> Result<(), LinalgError> {
    // A row-major matrix is scanned row by row in memory order; only a matrix that holds a
    // non-finite value goes on to the column-major scan, which names the first one.
    if a.col_stride() == 1
        && a.row_stride() != 1
        && a.row_iter().all(|row| {
            row.try_as_row_major()
                .is_some_and(|r| column_is_finite(r.as_slice()))
        })
    {
        return Ok(());
    }
    for (col, column) in a.col_iter().enumerate() {
        if let Some(slice) = column.try_as_col_major().map(|c| c.as_slice())
            && column_is_finite(slice)
        {
            continue;
        }
        // Slow path: strided column, or a column that holds a non-finite value.
        for (row, x) in column.iter().enumerate() {
            if !x.finite() {
                return Err(LinalgError::NonFinite {
                    argument,
                    row,
                    col,
                    value: x.to_f64(),
                });
            }
        }
    }
    Ok(())
}

/// `true` iff every value is finite. `x * 0` is `±0` for finite `x` and NaN otherwise;
/// eight independent accumulators let the compiler vectorise the loop.
#[inline]
fn column_is_finite<T: Real>(xs: &[T]) -> bool {
    let zero = T::from_f64(0.0);
    let mut acc = [zero; 8];
    let mut chunks = xs.chunks_exact(8);
    for chunk in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += x * zero;
        }
    }
    let mut total = zero;
    for a in acc {
        total += a;
    }
    for &x in chunks.remainder() {
        total += x * zero;
    }
    total == zero
}

/// Checks that `k <= min(rows, cols)` and `k >= 1`.
pub(crate) fn check_rank(rank: usize, rows: usize, cols: usize) -> Result<(), LinalgError> {
    if rank == 0 {
        return Err(LinalgError::ZeroRank { rows, cols });
    }
    if rank > rows.min(cols) {
        return Err(LinalgError::RankTooLarge { rank, rows, cols });
    }
    Ok(())
}
