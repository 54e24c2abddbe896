//! The randomized truncated SVD stays within its documented tolerances (see the docs of
//! `TruncatedSvd`) on decaying, flat, slowly decaying and low-rank-plus-noise spectra.

mod support;

use madeit_linalg::faer::{Mat, Scale};
use madeit_linalg::{Real, Svd, TruncatedSvd, random, thin_svd, truncated_svd};
use proptest::prelude::*;
use support::{config, decaying, flat};

/// Accuracy of `rand` against the exact top-`r` SVD of `a`.
struct Accuracy {
    /// `max_i |s_i(rand) - s_i(exact)| / s_1`.
    sv: f64,
    /// `1 - ||U_rand^T U_exact||_F^2 / r`, and the same for `V`.
    gap_u: f64,
    gap_v: f64,
    /// `||A - A_rand||_F / ||A - A_exact||_F - 1`.
    frob_excess: f64,
    /// Largest `s_i(rand) - s_i(exact)` (must not be positive beyond rounding).
    overshoot: f64,
}

fn gap<T: Real>(a: &Mat<T>, b: &Mat<T>) -> f64 {
    let m = a.transpose() * b;
    let k = a.ncols() as f64;
    // Sum of squares in f64, so that the gap is not lost to f32 rounding.
    let s: f64 = m
        .col_iter()
        .flat_map(|c| c.iter().map(|x| x.to_f64().powi(2)).collect::<Vec<_>>())
        .sum();
    (1.0 - s / k).max(0.0)
}

fn accuracy<T: Real>(a: &Mat<T>, r: usize, method: TruncatedSvd) -> (Accuracy, Svd<T>) {
    let exact = truncated_svd(a.as_ref(), r, TruncatedSvd::Exact).expect("exact");
    let rand = truncated_svd(a.as_ref(), r, method).expect("randomized");
    assert_eq!(rand.rank(), r);
    assert_eq!((rand.u.nrows(), rand.v.nrows()), (a.nrows(), a.ncols()));
    let s1 = exact.s[0].to_f64();
    let diffs: Vec<f64> = exact
        .s
        .iter()
        .zip(&rand.s)
        .map(|(x, y)| y.to_f64() - x.to_f64())
        .collect();
    let err_exact = (a - exact.reconstruct()).norm_l2().to_f64();
    let err_rand = (a - rand.reconstruct()).norm_l2().to_f64();
    let acc = Accuracy {
        sv: diffs.iter().fold(0.0f64, |m, d| m.max(d.abs())) / s1,
        gap_u: gap(&rand.u, &exact.u),
        gap_v: gap(&rand.v, &exact.v),
        frob_excess: err_rand / err_exact.max(f64::MIN_POSITIVE) - 1.0,
        overshoot: diffs.iter().fold(f64::NEG_INFINITY, |m, d| m.max(*d)) / s1,
    };
    (acc, rand)
}

/// Rank-`r` signal with singular values from 10 down to 5 plus Gaussian noise of spectral
/// norm about 1.
fn low_rank_plus_noise<T: Real>(m: usize, n: usize, r: usize, seed: u64) -> Mat<T> {
    let signal: Vec<f64> = (0..r)
        .map(|i| 10.0 - 5.0 * i as f64 / (r.max(2) - 1) as f64)
        .collect();
    let l = random::with_spectrum::<T>(m, n, &signal, seed).expect("valid");
    let g = random::gaussian::<T>(m, n, seed ^ 0xabcd);
    let scale = 1.0 / ((m as f64).sqrt() + (n as f64).sqrt());
    &l + &g * Scale(T::from_f64(scale))
}

const DEFAULTS: fn(u64) -> TruncatedSvd = TruncatedSvd::randomized;

/// Documented: decaying spectrum with s_r / s_1 = 1e-3.
fn check_decaying<T: Real>(m: usize, n: usize, r: usize, seed: u64, sv_tol: f64) {
    let tau = r as f64 / 1000f64.ln();
    let a = random::with_spectrum::<T>(m, n, &decaying(m.min(n), tau), seed).expect("valid");
    let (acc, _) = accuracy(&a, r, DEFAULTS(seed));
    assert!(
        acc.sv <= sv_tol,
        "sv error {} ({m}x{n}, r {r}, seed {seed}, {})",
        acc.sv,
        T::NAME
    );
    assert!(
        acc.gap_u <= 1e-4 && acc.gap_v <= 1e-4,
        "subspace gaps {} {}",
        acc.gap_u,
        acc.gap_v
    );
    assert!(
        acc.frob_excess <= 1e-3,
        "frobenius excess {}",
        acc.frob_excess
    );
}

proptest! {
    #![proptest_config(config(12))]

    #[test]
    fn decaying_spectrum_f64(seed in any::<u64>(), wide in any::<bool>()) {
        let (m, n) = if wide { (120, 180) } else { (180, 120) };
        check_decaying::<f64>(m, n, 12, seed, 1e-6);
    }

    #[test]
    fn decaying_spectrum_f32(seed in any::<u64>(), wide in any::<bool>()) {
        let (m, n) = if wide { (120, 180) } else { (180, 120) };
        check_decaying::<f32>(m, n, 12, seed, 1e-5);
    }

    /// Documented: low-rank plus noise, singular values 1e-6 (f64) / 1e-5 (f32) of s_1,
    /// subspaces within 1e-5, Frobenius error within 1e-5 of optimal.
    #[test]
    fn low_rank_plus_noise_is_recovered(seed in any::<u64>(), r in 2..16usize, wide in any::<bool>()) {
        let (m, n) = if wide { (100, 160) } else { (160, 100) };
        let a = low_rank_plus_noise::<f64>(m, n, r, seed);
        let (acc, _) = accuracy(&a, r, DEFAULTS(seed));
        prop_assert!(acc.sv <= 1e-6, "sv {}", acc.sv);
        prop_assert!(acc.gap_u <= 1e-5 && acc.gap_v <= 1e-5, "gaps {} {}", acc.gap_u, acc.gap_v);
        prop_assert!(acc.frob_excess <= 1e-5, "frob {}", acc.frob_excess);
        let a32 = low_rank_plus_noise::<f32>(m, n, r, seed);
        let (acc32, _) = accuracy(&a32, r, DEFAULTS(seed));
        prop_assert!(acc32.sv <= 1e-5, "f32 sv {}", acc32.sv);
        prop_assert!(acc32.gap_u <= 1e-5 && acc32.gap_v <= 1e-5, "f32 gaps {} {}", acc32.gap_u, acc32.gap_v);
    }

    /// Documented: flat spectrum (1 down to 0.5): Frobenius error within 3% of optimal,
    /// singular values at most 15% of s_1 low and never above the exact ones.
    #[test]
    fn flat_spectrum_is_near_optimal(seed in any::<u64>(), wide in any::<bool>()) {
        let (m, n) = if wide { (120, 180) } else { (180, 120) };
        let a = random::with_spectrum::<f64>(m, n, &flat(m.min(n)), seed).expect("valid");
        let (acc, _) = accuracy(&a, 12, DEFAULTS(seed));
        prop_assert!(acc.frob_excess <= 0.03, "frob {}", acc.frob_excess);
        prop_assert!(acc.sv <= 0.15, "sv {}", acc.sv);
        prop_assert!(acc.overshoot <= 1e-12, "overshoot {}", acc.overshoot);
    }

    /// Documented: slowly decaying spectrum exp(-i / 2r): Frobenius error within 5% of
    /// optimal, singular values at most 10% of s_1 low and never above the exact ones.
    #[test]
    fn slowly_decaying_spectrum_is_near_optimal(seed in any::<u64>()) {
        let r = 12;
        let s: Vec<f64> = (0..120).map(|i| (-(i as f64) / (2.0 * r as f64)).exp()).collect();
        let a = random::with_spectrum::<f64>(180, 120, &s, seed).expect("valid");
        let (acc, _) = accuracy(&a, r, DEFAULTS(seed));
        prop_assert!(acc.frob_excess <= 0.05, "frob {}", acc.frob_excess);
        prop_assert!(acc.sv <= 0.10, "sv {}", acc.sv);
        prop_assert!(acc.overshoot <= 1e-12, "overshoot {}", acc.overshoot);
    }
}

#[test]
fn randomized_factors_are_orthonormal_and_sorted() {
    let a = random::gaussian::<f32>(90, 70, 4);
    let svd = truncated_svd(a.as_ref(), 9, TruncatedSvd::randomized(4)).expect("valid");
    assert!(madeit_linalg::orthonormality_error(svd.u.as_ref()) < 1e-5);
    assert!(madeit_linalg::orthonormality_error(svd.v.as_ref()) < 1e-5);
    assert!(svd.s.windows(2).all(|w| w[0] >= w[1]));
    assert!(svd.s.iter().all(|&x| x >= 0.0));
}

#[test]
fn same_seed_same_result_other_seed_other_sketch() {
    let a = random::gaussian::<f64>(60, 50, 1);
    let m1 = truncated_svd(a.as_ref(), 5, TruncatedSvd::randomized(3)).expect("valid");
    let m2 = truncated_svd(a.as_ref(), 5, TruncatedSvd::randomized(3)).expect("valid");
    assert_eq!(m1, m2);
    let m3 = truncated_svd(a.as_ref(), 5, TruncatedSvd::randomized(4)).expect("valid");
    assert_ne!(m1.u, m3.u);
}

#[test]
fn power_iterations_improve_accuracy_on_a_slow_spectrum() {
    let s: Vec<f64> = (0..100).map(|i| 1.0 / (1.0 + i as f64).sqrt()).collect();
    let a = random::with_spectrum::<f64>(150, 100, &s, 2).expect("valid");
    let excess = |q| {
        let method = TruncatedSvd::Randomized {
            oversample: 5,
            power_iters: q,
            seed: 9,
        };
        accuracy(&a, 10, method).0.frob_excess
    };
    let (e0, e2) = (excess(0), excess(2));
    assert!(e2 < e0, "q=2 ({e2}) should beat q=0 ({e0})");
}

#[test]
fn a_sketch_as_wide_as_the_matrix_falls_back_to_the_exact_path() {
    let a = random::gaussian::<f64>(30, 20, 5);
    let exact = truncated_svd(a.as_ref(), 12, TruncatedSvd::Exact).expect("valid");
    // 12 + 10 >= min(30, 20): exact path, bit-identical.
    let rand = truncated_svd(a.as_ref(), 12, TruncatedSvd::randomized(0)).expect("valid");
    assert_eq!(exact, rand);
    let full = thin_svd(a.as_ref()).expect("valid");
    assert_eq!(&exact.s[..], &full.s[..12]);
}

#[test]
fn exact_low_rank_input_is_reproduced() {
    let a = random::with_spectrum::<f64>(80, 60, &[4.0, 3.0, 2.0, 1.0], 6).expect("valid");
    let svd = truncated_svd(a.as_ref(), 4, TruncatedSvd::randomized(1)).expect("valid");
    for (x, y) in svd.s.iter().zip([4.0, 3.0, 2.0, 1.0]) {
        assert!((x - y).abs() < 1e-12);
    }
    assert!((svd.reconstruct() - &a).norm_l2() < 1e-12);
}
