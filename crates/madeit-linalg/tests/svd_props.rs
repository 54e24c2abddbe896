//! Identities of the thin and exact truncated SVD, the polar factor and QR.

mod support;

use madeit_linalg::faer::Mat;
use madeit_linalg::{
    SvdWorkspace, TruncatedSvd, orthonormalize, polar_factor, random, thin_svd, truncated_svd,
};
use proptest::prelude::*;
use support::{config, diff_norm, gaussian_matrix, orth_err, tall_gaussian_matrix};

proptest! {
    #![proptest_config(config(48))]

    /// A = U diag(s) V^T, U and V orthonormal, s non-negative and non-increasing.
    #[test]
    fn thin_svd_reconstructs((a, _seed) in gaussian_matrix(12)) {
        let svd = thin_svd(a.as_ref()).expect("finite input");
        let k = a.nrows().min(a.ncols());
        prop_assert_eq!((svd.u.nrows(), svd.u.ncols()), (a.nrows(), k));
        prop_assert_eq!((svd.v.nrows(), svd.v.ncols()), (a.ncols(), k));
        prop_assert!(orth_err(svd.u.as_ref()) < 1e-12);
        prop_assert!(orth_err(svd.v.as_ref()) < 1e-12);
        prop_assert!(svd.s.iter().all(|&x| x >= 0.0));
        prop_assert!(svd.s.windows(2).all(|w| w[0] >= w[1]));
        let err = diff_norm(svd.reconstruct().as_ref(), a.as_ref());
        prop_assert!(err <= 1e-12 * (1.0 + a.norm_l2()), "reconstruction error {err}");
    }

    /// Eckart–Young: the exact rank-r truncation has Frobenius error sqrt(sum_{i>r} s_i^2),
    /// and its triplets are the leading triplets of the thin SVD.
    #[test]
    fn exact_truncation_is_eckart_young((a, _seed) in gaussian_matrix(12), frac in 0.0..1.0f64) {
        let k = a.nrows().min(a.ncols());
        let r = 1 + ((k - 1) as f64 * frac) as usize;
        let full = thin_svd(a.as_ref()).expect("finite input");
        let trunc = truncated_svd(a.as_ref(), r, TruncatedSvd::Exact).expect("valid rank");
        prop_assert_eq!(trunc.rank(), r);
        prop_assert_eq!(&trunc.s[..], &full.s[..r]);
        let err = diff_norm(trunc.reconstruct().as_ref(), a.as_ref());
        let optimal = full.s[r..].iter().map(|x| x * x).sum::<f64>().sqrt();
        prop_assert!((err - optimal).abs() <= 1e-10 * (1.0 + a.norm_l2()), "{err} vs {optimal}");
    }

    /// The polar factor has orthonormal columns and A = polar(A) H with H symmetric PSD.
    #[test]
    fn polar_factor_is_orthonormal_and_factorises(a in tall_gaussian_matrix(10)) {
        let q = polar_factor(a.as_ref()).expect("finite input");
        prop_assert!(orth_err(q.as_ref()) < 1e-12);
        let h = q.transpose() * &a;
        prop_assert!(diff_norm(h.as_ref(), h.transpose()) < 1e-10 * (1.0 + a.norm_l2()));
        prop_assert!(diff_norm((&q * &h).as_ref(), a.as_ref()) < 1e-10 * (1.0 + a.norm_l2()));
        let eig = h.self_adjoint_eigenvalues(madeit_linalg::faer::Side::Lower).expect("symmetric");
        prop_assert!(eig.iter().all(|&x| x >= -1e-10 * (1.0 + a.norm_l2())));
    }

    /// polar(A) is the closest orthonormal-column matrix: no random orthonormal matrix and
    /// no re-orthonormalised perturbation of polar(A) is closer to A.
    #[test]
    fn polar_factor_is_closest(a in tall_gaussian_matrix(10), seed in any::<u64>(), eps in 1e-4..0.5f64) {
        let (m, n) = a.shape();
        let q = polar_factor(a.as_ref()).expect("finite input");
        let best = diff_norm(a.as_ref(), q.as_ref());
        let tol = 1e-10 * (1.0 + a.norm_l2());
        let other = random::orthonormal::<f64>(m, n, seed).expect("m >= n");
        prop_assert!(diff_norm(a.as_ref(), other.as_ref()) >= best - tol);
        // A nearby orthonormal matrix: polar factor of a perturbation of Q.
        let noise = random::gaussian::<f64>(m, n, seed ^ 1);
        let nearby = polar_factor((&q + &noise * eps).as_ref()).expect("finite");
        prop_assert!(orth_err(nearby.as_ref()) < 1e-12);
        prop_assert!(diff_norm(a.as_ref(), nearby.as_ref()) >= best - tol);
    }

    /// QR: Q^T Q = I, Q R = A with R = Q^T A upper triangular and diag(R) >= 0, and an
    /// orthonormal input comes back unchanged.
    #[test]
    fn orthonormalize_is_qr((a, _seed) in gaussian_matrix(12)) {
        let (m, n) = a.shape();
        let q = orthonormalize(a.as_ref()).expect("finite input");
        prop_assert_eq!((q.nrows(), q.ncols()), (m, m.min(n)));
        prop_assert!(orth_err(q.as_ref()) < 1e-12);
        let r = q.transpose() * &a;
        let scale = 1e-10 * (1.0 + a.norm_l2());
        for j in 0..n {
            for i in (j + 1)..r.nrows() {
                prop_assert!(r[(i, j)].abs() <= scale, "R[{i},{j}] = {}", r[(i, j)]);
            }
        }
        for j in 0..m.min(n) {
            prop_assert!(r[(j, j)] >= -scale);
        }
        prop_assert!(diff_norm((&q * &r).as_ref(), a.as_ref()) <= scale);
        let again = orthonormalize(q.as_ref()).expect("finite");
        prop_assert!(diff_norm(again.as_ref(), q.as_ref()) < 1e-12);
    }

    /// One workspace reused across shapes gives the same results as fresh calls.
    #[test]
    fn workspace_reuse_matches_fresh_calls(seeds in proptest::collection::vec((1..20usize, 1..20usize, any::<u64>()), 3)) {
        let mut ws = SvdWorkspace::<f64>::new();
        for (m, n, seed) in seeds {
            let a = random::gaussian::<f64>(m, n, seed);
            let k = m.min(n);
            let r = k.div_ceil(3);
            let method = TruncatedSvd::Randomized { oversample: 2, power_iters: 1, seed };
            prop_assert_eq!(ws.thin_svd(a.as_ref()).expect("ok"), thin_svd(a.as_ref()).expect("ok"));
            prop_assert_eq!(
                ws.truncated_svd(a.as_ref(), r, method).expect("ok"),
                truncated_svd(a.as_ref(), r, method).expect("ok")
            );
            prop_assert_eq!(ws.orthonormalize(a.as_ref()).expect("ok"), orthonormalize(a.as_ref()).expect("ok"));
        }
    }
}

#[test]
fn singular_values_of_a_known_spectrum() {
    let spectrum = [5.0, 3.0, 2.0, 0.5];
    for seed in 0..4 {
        let a = random::with_spectrum::<f64>(9, 7, &spectrum, seed).expect("valid");
        let svd = thin_svd(a.as_ref()).expect("finite");
        for (got, want) in svd.s.iter().zip(spectrum) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert!(svd.s[4..].iter().all(|&x| x < 1e-12));
    }
}

#[test]
fn f32_matches_f64_to_single_precision() {
    let a64 = random::gaussian::<f64>(40, 25, 9);
    let a32 = Mat::<f32>::from_fn(40, 25, |i, j| a64[(i, j)] as f32);
    let s64 = thin_svd(a64.as_ref()).expect("finite").s;
    let s32 = thin_svd(a32.as_ref()).expect("finite").s;
    for (x, y) in s64.iter().zip(&s32) {
        assert!((x - f64::from(*y)).abs() < 2e-6 * s64[0], "{x} vs {y}");
    }
    let q = polar_factor(a32.as_ref()).expect("finite");
    assert!(madeit_linalg::orthonormality_error(q.as_ref()) < 1e-5);
}

#[test]
fn wide_polar_factor_has_orthonormal_rows() {
    let a = random::gaussian::<f64>(4, 9, 3);
    let q = polar_factor(a.as_ref()).expect("finite");
    assert_eq!(q.shape(), (4, 9));
    assert!(madeit_linalg::orthonormality_error(q.transpose()) < 1e-12);
}
