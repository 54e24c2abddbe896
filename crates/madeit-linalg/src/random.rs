//! Seeded random matrices: Gaussian, orthonormal, and with a prescribed spectrum.
//!
//! Used by the randomized SVD (its Gaussian test matrix) and by tests and benchmarks that
//! need reproducible inputs. Every generator draws from ChaCha8 seeded with a `u64`, in
//! `f64`, and rounds to `T`, so `f32` and `f64` matrices of the same seed agree to `f32`
//! rounding.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::svd::scale_columns;
use crate::{LinalgError, Real, orthonormalize};

/// The increment of SplitMix64 (`2^64 / φ`, odd).
pub const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finaliser: a bijective avalanche mix of 64 bits. The one seed mixer of the
/// workspace: every derived seed and every hash lane that needs an avalanche goes through
/// it (or through [`splitmix64`]).
#[must_use]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One SplitMix64 output for state `z`: [`mix64`]`(z + GOLDEN_GAMMA)`. A well-mixed hash of
/// `z`, used to derive independent seeds.
#[must_use]
pub const fn splitmix64(z: u64) -> u64 {
    mix64(z.wrapping_add(GOLDEN_GAMMA))
}

/// `rows x cols` matrix of independent standard normal entries drawn from `rng`
/// (column by column).
pub fn gaussian_with<T: Real, R: Rng + ?Sized>(rows: usize, cols: usize, rng: &mut R) -> Mat<T> {
    let mut out = Mat::zeros(rows, cols);
    for col in out.col_iter_mut() {
        for x in col.iter_mut() {
            let g: f64 = StandardNormal.sample(rng);
            *x = T::from_f64(g);
        }
    }
    out
}

/// `rows x cols` matrix of independent standard normal entries, ChaCha8 seeded with `seed`.
#[must_use]
pub fn gaussian<T: Real>(rows: usize, cols: usize, seed: u64) -> Mat<T> {
    gaussian_with(rows, cols, &mut ChaCha8Rng::seed_from_u64(seed))
}

/// A `rows x cols` matrix with orthonormal columns, uniformly (Haar) distributed: the
/// sign-normalised Q factor of a Gaussian matrix.
///
/// # Errors
/// [`LinalgError::RankTooLarge`] if `cols > rows`, [`LinalgError::EmptyMatrix`] if either
/// is zero.
pub fn orthonormal<T: Real>(rows: usize, cols: usize, seed: u64) -> Result<Mat<T>, LinalgError> {
    if rows == 0 || cols == 0 {
        return Err(LinalgError::EmptyMatrix {
            argument: "orthonormal",
            rows,
            cols,
        });
    }
    if cols > rows {
        return Err(LinalgError::RankTooLarge {
            rank: cols,
            rows,
            cols: rows,
        });
    }
    orthonormalize(gaussian::<T>(rows, cols, seed).as_ref())
}

/// `U diag(s) V^T` with Haar-random `U` (`rows x k`) and `V` (`cols x k`), `k = s.len()`:
/// a `rows x cols` matrix whose non-zero singular values are exactly `s` (up to rounding).
///
/// # Errors
/// [`LinalgError::RankTooLarge`] if `s.len() > min(rows, cols)`, [`LinalgError::ZeroRank`]
/// if `s` is empty, [`LinalgError::NonFinite`] (argument `"singular_values"`) if a value is
/// not finite.
pub fn with_spectrum<T: Real>(
    rows: usize,
    cols: usize,
    singular_values: &[f64],
    seed: u64,
) -> Result<Mat<T>, LinalgError> {
    let k = singular_values.len();
    crate::validate::check_rank(k, rows, cols)?;
    if let Some((i, &x)) = singular_values
        .iter()
        .enumerate()
        .find(|(_, x)| !x.is_finite())
    {
        return Err(LinalgError::NonFinite {
            argument: "singular_values",
            row: i,
            col: 0,
            value: x,
        });
    }
    let mut u = orthonormal::<T>(rows, k, seed)?;
    let v = orthonormal::<T>(cols, k, seed ^ 0x9e37_79b9_7f4a_7c15)?;
    let s: Vec<T> = singular_values.iter().map(|&x| T::from_f64(x)).collect();
    scale_columns(u.as_mut(), &s);
    let mut out = Mat::zeros(rows, cols);
    matmul(
        out.as_mut(),
        Accum::Replace,
        u.as_ref(),
        v.transpose(),
        T::from_f64(1.0),
        faer::get_global_parallelism(),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // SplitMix64 seeded with 0 (Steele, Lea and Flood; Vigna's reference C code):
        // the state advances by GOLDEN_GAMMA before each output.
        let mut state = 0u64;
        let mut next = || {
            let out = splitmix64(state);
            state = state.wrapping_add(GOLDEN_GAMMA);
            out
        };
        assert_eq!(next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(next(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(next(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn mix64_is_a_bijection_on_a_sample() {
        let outs: std::collections::HashSet<u64> = (0..10_000u64).map(mix64).collect();
        assert_eq!(outs.len(), 10_000);
        assert_eq!(mix64(0), 0);
    }
}
