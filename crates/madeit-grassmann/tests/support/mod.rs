//! Shared proptest strategies for the integration tests of this crate: random subspaces
//! and rotations, generated from seeds so that failures print a reproducible case.
#![allow(dead_code)]

use madeit_grassmann::Subspace;
use madeit_linalg::faer::Mat;
use madeit_linalg::random;
use proptest::prelude::*;

/// A proptest config with `cases` cases (small: the suite must stay fast on 2 cores).
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// A Haar-random `r`-dimensional subspace of `R^d`.
pub fn subspace(d: usize, r: usize, seed: u64) -> Subspace<f64> {
    Subspace::new(random::orthonormal::<f64>(d, r, seed).expect("r <= d")).expect("orthonormal")
}

/// A Haar-random `r x r` orthogonal matrix.
pub fn rotation(r: usize, seed: u64) -> Mat<f64> {
    random::orthonormal::<f64>(r, r, seed).expect("square")
}

/// The same subspace with its basis rotated by `R`: `A R`.
pub fn rotated(s: &Subspace<f64>, r: &Mat<f64>) -> Subspace<f64> {
    Subspace::new(s.basis() * r).expect("rotation keeps orthonormality")
}

/// `(d, r)` with `1 <= r <= d <= max_d`.
pub fn dim_rank(max_d: usize) -> impl Strategy<Value = (usize, usize)> {
    (1..=max_d).prop_flat_map(|d| (Just(d), 1..=d))
}

/// Two random subspaces of one `R^d` with equal ranks, and a seed for further draws.
pub fn equal_rank_pair(max_d: usize) -> impl Strategy<Value = (Subspace<f64>, Subspace<f64>, u64)> {
    (dim_rank(max_d), any::<u64>()).prop_map(|((d, r), seed)| {
        (
            subspace(d, r, seed),
            subspace(d, r, seed.wrapping_add(1)),
            seed,
        )
    })
}

/// Two random subspaces of one `R^d` with independent ranks.
pub fn any_rank_pair(max_d: usize) -> impl Strategy<Value = (Subspace<f64>, Subspace<f64>, u64)> {
    (1..=max_d, any::<u64>())
        .prop_flat_map(|(d, seed)| (Just(d), 1..=d, 1..=d, Just(seed)))
        .prop_map(|(d, ra, rb, seed)| {
            (
                subspace(d, ra, seed),
                subspace(d, rb, seed.wrapping_add(1)),
                seed,
            )
        })
}

/// A pair sharing `shared` directions exactly (plus independent random ones), so that
/// some principal angles are zero and others are not: `A = orth([C | X])`,
/// `B = orth([C | Y])`.
pub fn overlapping_pair(
    max_d: usize,
) -> impl Strategy<Value = (Subspace<f64>, Subspace<f64>, usize)> {
    (2..=max_d, any::<u64>())
        .prop_flat_map(|(d, seed)| (Just(d), 1..=d / 2, 0..=d / 2, Just(seed)))
        .prop_map(|(d, r, shared, seed)| {
            let shared = shared.min(r);
            let c = random::gaussian::<f64>(d, shared, seed);
            let x = random::gaussian::<f64>(d, r - shared, seed ^ 1);
            let y = random::gaussian::<f64>(d, r - shared, seed ^ 2);
            let stack = |extra: &Mat<f64>| {
                Mat::from_fn(d, r, |i, j| {
                    if j < shared {
                        c[(i, j)]
                    } else {
                        extra[(i, j - shared)]
                    }
                })
            };
            let a = Subspace::orthonormalized(stack(&x).as_ref()).expect("valid");
            let b = Subspace::orthonormalized(stack(&y).as_ref()).expect("valid");
            (a, b, shared)
        })
}

/// `P = A A^T`.
pub fn projector(s: &Subspace<f64>) -> Mat<f64> {
    s.basis() * s.basis().transpose()
}
