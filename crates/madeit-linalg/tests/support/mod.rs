//! Shared proptest strategies and helpers for the integration tests of this crate.
//!
//! Matrices are generated from a seed (`madeit_linalg::random`), so every strategy is a
//! strategy over shapes and seeds; failures print the shape and seed that reproduce them.
#![allow(dead_code)]

use faer::{Mat, MatRef};
use madeit_linalg::faer;
use madeit_linalg::random;
use proptest::prelude::*;

/// A proptest config with `cases` cases (small: the suite must stay fast on 2 cores).
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Shape `(m, n)` with both sides in `1..=max`.
pub fn shape(max: usize) -> impl Strategy<Value = (usize, usize)> {
    (1..=max, 1..=max)
}

/// A Gaussian `m x n` matrix with `m, n` in `1..=max`, with its seed.
pub fn gaussian_matrix(max: usize) -> impl Strategy<Value = (Mat<f64>, u64)> {
    (shape(max), any::<u64>())
        .prop_map(|((m, n), seed)| (random::gaussian::<f64>(m, n, seed), seed))
}

/// A Gaussian `m x n` matrix with `m >= n` (tall or square), sides in `1..=max`.
pub fn tall_gaussian_matrix(max: usize) -> impl Strategy<Value = Mat<f64>> {
    (1..=max, any::<u64>()).prop_flat_map(move |(n, seed)| {
        (n..=max.max(n)).prop_map(move |m| random::gaussian::<f64>(m, n, seed))
    })
}

/// Frobenius norm of `a - b`.
pub fn diff_norm(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    (a - b).norm_l2()
}

/// `Q^T Q`.
pub fn gram(q: MatRef<'_, f64>) -> Mat<f64> {
    q.transpose() * q
}

/// `max |Q^T Q - I|`.
pub fn orth_err(q: MatRef<'_, f64>) -> f64 {
    madeit_linalg::orthonormality_error(q)
}

/// `||A^T B||_F^2 / min(r_a, r_b)` for orthonormal `A`, `B`: 1 when the spans agree.
pub fn subspace_affinity(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    (a.transpose() * b).squared_norm_l2() / a.ncols().min(b.ncols()) as f64
}

/// Singular values `exp(-i / tau)`, `i = 0..len`.
pub fn decaying(len: usize, tau: f64) -> Vec<f64> {
    (0..len).map(|i| (-(i as f64) / tau).exp()).collect()
}

/// Singular values linear from 1 down to 0.5.
pub fn flat(len: usize) -> Vec<f64> {
    (0..len)
        .map(|i| 1.0 - 0.5 * i as f64 / (len.max(2) - 1) as f64)
        .collect()
}
