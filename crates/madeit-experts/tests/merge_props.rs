//! Property tests of the low-rank numerics: consolidation identities, affinity and FPA
//! invariances, thin-factor formulas against dense references.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use faer::Mat;
use madeit_experts::math::{affinity, consolidate, flat_cosine, fpa, top_r_of_factors};
use madeit_experts::{AffinityMetric, Expert, MergeRule};
use madeit_linalg::random::{gaussian, orthonormal};
use madeit_linalg::thin_svd;
use proptest::prelude::*;
use std::collections::BTreeSet;

const TOL: f64 = 1e-4;

/// Sorted, well-separated positive singular values.
fn spectrum(r: usize, seed: u64) -> Vec<f32> {
    let g = gaussian::<f32>(r, 1, seed);
    let mut s: Vec<f32> = (0..r)
        .map(|i| 0.5 + (r - i) as f32 + 0.3 * g[(i, 0)].abs().min(0.45))
        .collect();
    s.sort_by(|a, b| b.partial_cmp(a).unwrap());
    s
}

fn expert(u: Mat<f32>, s: Vec<f32>, v: Mat<f32>, task: u32) -> Expert {
    Expert::new("test", u, s, v, BTreeSet::from([task])).unwrap()
}

fn random_expert(d_out: usize, d_in: usize, r: usize, seed: u64, task: u32) -> Expert {
    expert(
        orthonormal::<f32>(d_out, r, seed).unwrap(),
        spectrum(r, seed ^ 1),
        orthonormal::<f32>(d_in, r, seed ^ 2).unwrap(),
        task,
    )
}

fn to64(a: &Mat<f32>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| f64::from(a[(i, j)]))
}

/// Dense reference of the subspace merge: explicit polar factors (f64) and a dense SVD.
fn dense_subspace_merge_singular_values(e: &Expert, c: &Expert) -> (Vec<f64>, Mat<f64>) {
    let cat = |a: faer::MatRef<'_, f32>, b: faer::MatRef<'_, f32>| {
        let k = a.ncols();
        Mat::from_fn(a.nrows(), k + b.ncols(), |i, j| {
            f64::from(if j < k { a[(i, j)] } else { b[(i, j - k)] })
        })
    };
    let polar = |m: Mat<f64>| {
        let svd = thin_svd(m.as_ref()).unwrap();
        &svd.u * svd.v.transpose()
    };
    let up = polar(cat(e.u(), c.u()));
    let vp = polar(cat(e.v(), c.v()));
    let s: Vec<f64> = e.s().iter().chain(c.s()).map(|&x| f64::from(x)).collect();
    let mut us = up.clone();
    for (j, &sj) in s.iter().enumerate() {
        for x in us.col_mut(j).iter_mut() {
            *x *= sj;
        }
    }
    let m = &us * vp.transpose();
    (thin_svd(m.as_ref()).unwrap().s, m)
}

/// Smallest singular value of `[a b]`.
fn min_singular_value(a: faer::MatRef<'_, f32>, b: faer::MatRef<'_, f32>) -> f64 {
    let k = a.ncols();
    let cat = Mat::from_fn(a.nrows(), k + b.ncols(), |i, j| {
        f64::from(if j < k { a[(i, j)] } else { b[(i, j - k)] })
    });
    thin_svd(cat.as_ref())
        .unwrap()
        .s
        .last()
        .copied()
        .unwrap_or(0.0)
}

fn dims() -> impl Strategy<Value = (usize, usize, usize, u64)> {
    (4usize..10, 4usize..10, any::<u64>()).prop_flat_map(|(a, b, seed)| {
        let rmax = a.min(b) / 2;
        (Just(a), Just(b), 1..=rmax, Just(seed))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn merging_an_expert_with_itself_returns_it((d_out, d_in, r, seed) in dims()) {
        let e = random_expert(d_out, d_in, r, seed, 1);
        let mut c = e.clone();
        let _ = &mut c;
        let c = expert(e.u().to_owned(), e.s().to_vec(), e.v().to_owned(), 2);
        let m = consolidate("t", MergeRule::SubspaceMerge, 1e-4, &e, &c, r).unwrap();
        let err = max_abs_diff(m.dense().as_ref(), e.dense().as_ref());
        prop_assert!(f64::from(err) < TOL * f64::from(e.s()[0]), "err {err}");
        prop_assert_eq!(m.tasks().iter().copied().collect::<Vec<_>>(), vec![1, 2]);
        let aff = affinity("t", AffinityMetric::Subspace, &m, &e).unwrap();
        prop_assert!(aff > 1.0 - 1e-5);
    }

    #[test]
    fn merging_experts_with_the_same_subspaces_averages_them(
        (d_out, d_in, r, seed) in dims(),
        rot in any::<u64>(),
    ) {
        let e = random_expert(d_out, d_in, r, seed, 1);
        let ru = rotation(r, rot);
        let rv = rotation(r, rot ^ 9);
        let c = expert(mul(e.u(), ru.as_ref()), spectrum(r, rot ^ 3), mul(e.v(), rv.as_ref()), 2);
        let m = consolidate("t", MergeRule::SubspaceMerge, 1e-4, &e, &c, r).unwrap();
        let mut want = e.dense();
        let dc = c.dense();
        for j in 0..want.ncols() {
            for i in 0..want.nrows() {
                want[(i, j)] = 0.5 * (want[(i, j)] + dc[(i, j)]);
            }
        }
        let err = max_abs_diff(m.dense().as_ref(), want.as_ref());
        prop_assert!(f64::from(err) < TOL * f64::from(e.s()[0] + c.s()[0]), "err {err}");
    }

    #[test]
    fn merging_orthogonal_experts_keeps_the_top_r_of_the_sum((d_out, d_in, r, seed) in dims()) {
        let qu = orthonormal::<f32>(d_out, 2 * r, seed).unwrap();
        let qv = orthonormal::<f32>(d_in, 2 * r, seed ^ 5).unwrap();
        let e = expert(qu.subcols(0, r).to_owned(), spectrum(r, seed ^ 6), qv.subcols(0, r).to_owned(), 1);
        let c = expert(qu.subcols(r, r).to_owned(), spectrum(r, seed ^ 7), qv.subcols(r, r).to_owned(), 2);
        let a = consolidate("t", MergeRule::SubspaceMerge, 1e-4, &e, &c, r).unwrap();
        let b = consolidate("t", MergeRule::SumTruncate, 1e-4, &e, &c, r).unwrap();
        let mut all: Vec<f32> = e.s().iter().chain(c.s()).copied().collect();
        all.sort_by(|x, y| y.partial_cmp(x).unwrap());
        for (k, want) in all.iter().take(r).enumerate() {
            prop_assert!((a.s()[k] - want).abs() < 1e-4 * all[0]);
            prop_assert!((b.s()[k] - want).abs() < 1e-4 * all[0]);
        }
        // Ties between the two spectra make the kept directions ambiguous; only compare
        // the deltas when the r-th and (r+1)-th values are separated.
        if all[r - 1] - all[r] > 1e-2 {
            let err = max_abs_diff(a.dense().as_ref(), b.dense().as_ref());
            prop_assert!(err < 1e-4 * all[0], "err {err}");
        }
    }

    #[test]
    fn subspace_merge_matches_the_dense_reference((d_out, d_in, r, seed) in dims(), s2 in any::<u64>()) {
        let e = random_expert(d_out, d_in, r, seed, 1);
        let c = random_expert(d_out, d_in, r, s2, 2);
        // The polar factor of [U_e U_c] is discontinuous where the concatenation is nearly
        // rank deficient (2r = d with nearly shared directions): there the implementation
        // drops directions under its tolerance and a plain dense polar does not, so the two
        // are only comparable on well-conditioned concatenations.
        prop_assume!(min_singular_value(e.u(), c.u()) > 1e-2 && min_singular_value(e.v(), c.v()) > 1e-2);
        let m = consolidate("t", MergeRule::SubspaceMerge, 1e-4, &e, &c, r).unwrap();
        let (sv, dense_m) = dense_subspace_merge_singular_values(&e, &c);
        for k in 0..r {
            prop_assert!((f64::from(m.s()[k]) - sv[k]).abs() < 1e-4 * sv[0], "{k}: {} vs {}", m.s()[k], sv[k]);
        }
        // ||M - M_r||_F is optimal: sqrt(sum_{i>r} sigma_i^2).
        let got = to64(&m.dense());
        let resid = (&dense_m - &got).norm_l2();
        let opt = sv[r..].iter().map(|x| x * x).sum::<f64>().sqrt();
        prop_assert!((resid - opt).abs() < 1e-4 * sv[0], "{resid} vs {opt}");
        prop_assert_eq!(m.rank(), r);
    }

    #[test]
    fn sum_truncate_is_the_best_rank_r_approximation((d_out, d_in, r, seed) in dims(), s2 in any::<u64>()) {
        let e = random_expert(d_out, d_in, r, seed, 1);
        let c = random_expert(d_out, d_in, r, s2, 2);
        let m = consolidate("t", MergeRule::SumTruncate, 1e-4, &e, &c, r).unwrap();
        let sum = &to64(&e.dense()) + &to64(&c.dense());
        let sv = thin_svd(sum.as_ref()).unwrap().s;
        let resid = (&sum - &to64(&m.dense())).norm_l2();
        let opt = sv[r..].iter().map(|x| x * x).sum::<f64>().sqrt();
        prop_assert!((resid - opt).abs() < 1e-4 * sv[0], "{resid} vs {opt}");
    }

    #[test]
    fn top_r_of_factors_matches_a_dense_svd(m in 3usize..9, n in 3usize..9, k in 1usize..6, seed in any::<u64>()) {
        let a = gaussian::<f64>(m, k, seed);
        let b = gaussian::<f64>(n, k, seed ^ 1);
        let d: Vec<f64> = (0..k).map(|i| 1.0 + i as f64 * 0.37).collect();
        let r = k.min(m).min(n);
        let (u, s, v) = top_r_of_factors(a.as_ref(), &d, b.as_ref(), r, "t").unwrap();
        let mut ad = a.clone();
        for (j, &dj) in d.iter().enumerate() {
            for x in ad.col_mut(j).iter_mut() { *x *= dj; }
        }
        let dense = &ad * b.transpose();
        let sv = thin_svd(dense.as_ref()).unwrap().s;
        for i in 0..r {
            prop_assert!((s[i] - sv[i]).abs() < 1e-9 * (1.0 + sv[0]));
        }
        let mut us = u.clone();
        for (j, &sj) in s.iter().enumerate() {
            for x in us.col_mut(j).iter_mut() { *x *= sj; }
        }
        let rec = &us * v.transpose();
        let resid = (&dense - &rec).norm_l2();
        let opt = sv[r..].iter().map(|x| x * x).sum::<f64>().sqrt();
        prop_assert!((resid - opt).abs() < 1e-9 * (1.0 + sv[0]));
    }

    #[test]
    fn affinity_is_rotation_invariant_symmetric_and_bounded(
        (d_out, d_in, r, seed) in dims(),
        s2 in any::<u64>(),
        rot in any::<u64>(),
    ) {
        let a = random_expert(d_out, d_in, r, seed, 1);
        let c = random_expert(d_out, d_in, r, s2, 2);
        let ar = expert(
            mul(a.u(), rotation(r, rot).as_ref()),
            a.s().to_vec(),
            mul(a.v(), rotation(r, rot ^ 1).as_ref()),
            1,
        );
        let s = affinity("t", AffinityMetric::Subspace, &a, &c).unwrap();
        let sr = affinity("t", AffinityMetric::Subspace, &ar, &c).unwrap();
        let st = affinity("t", AffinityMetric::Subspace, &c, &a).unwrap();
        prop_assert!((s - sr).abs() < 1e-5);
        prop_assert!((s - st).abs() < 1e-6);
        prop_assert!((0.0..=1.0).contains(&s));
        prop_assert!(affinity("t", AffinityMetric::Subspace, &a, &ar).unwrap() > 1.0 - 1e-5);
        // Agrees with s(A, B) = ||A^T B||_F^2 / r computed here.
        let direct = |x: faer::MatRef<'_, f32>, y: faer::MatRef<'_, f32>| {
            let g = mul(x.transpose(), y);
            f64::from(fro(g.as_ref())).powi(2) / r as f64
        };
        let manual = 0.5 * (direct(a.u(), c.u()) + direct(a.v(), c.v()));
        prop_assert!((s - manual).abs() < 1e-5);
    }

    #[test]
    fn flat_cosine_matches_the_dense_cosine((d_out, d_in, r, seed) in dims(), s2 in any::<u64>()) {
        let a = random_expert(d_out, d_in, r, seed, 1);
        let c = random_expert(d_out, d_in, r, s2, 2);
        let (da, dc) = (to64(&a.dense()), to64(&c.dense()));
        let mut dot = 0.0;
        for j in 0..da.ncols() {
            for i in 0..da.nrows() {
                dot += da[(i, j)] * dc[(i, j)];
            }
        }
        let want = dot / (da.norm_l2() * dc.norm_l2());
        prop_assert!((flat_cosine(&a, &c).unwrap() - want).abs() < 1e-5);
        prop_assert!((flat_cosine(&a, &a).unwrap() - 1.0).abs() < 1e-5);
        // Mismatched shapes are errors, not panics.
        let other = random_expert(d_out + 1, d_in, r, seed, 3);
        prop_assert!(flat_cosine(&a, &other).is_err());
        prop_assert!(consolidate("t", MergeRule::SubspaceMerge, 1e-4, &a, &other, r).is_err());
        prop_assert!(fpa(gaussian::<f32>(2, d_in + 1, seed).as_ref(), a.v()).is_err());
    }

    #[test]
    fn fpa_is_rotation_invariant_and_detects_containment(
        d in 4usize..12,
        tokens in 1usize..6,
        seed in any::<u64>(),
    ) {
        let r = d / 2;
        let q = orthonormal::<f32>(d, d, seed).unwrap();
        let v = q.subcols(0, r).to_owned();
        let vr = mul(v.as_ref(), rotation(r, seed ^ 3).as_ref());
        let x = gaussian::<f32>(tokens, d, seed ^ 4);
        let f = fpa(x.as_ref(), v.as_ref()).unwrap();
        prop_assert!((f - fpa(x.as_ref(), vr.as_ref()).unwrap()).abs() < 1e-5);
        prop_assert!((0.0..=1.0 + 1e-6).contains(&f));
        // Rows inside span(V): FPA = 1; rows orthogonal to it: FPA = 0.
        let inside = mul(gaussian::<f32>(tokens, r, seed ^ 5).as_ref(), v.transpose());
        prop_assert!((fpa(inside.as_ref(), v.as_ref()).unwrap() - 1.0).abs() < 1e-5);
        let outside = mul(gaussian::<f32>(tokens, d - r, seed ^ 6).as_ref(), q.subcols(r, d - r).transpose());
        prop_assert!(fpa(outside.as_ref(), v.as_ref()).unwrap() < 1e-5);
        prop_assert_eq!(fpa(Mat::<f32>::zeros(tokens, d).as_ref(), v.as_ref()).unwrap(), 0.0);
    }
}

/// The absorb step hands the candidate SVD `dW` as a row-major view of the weights'
/// difference; the factors must be the very same bits as from a column-major copy, on both
/// decomposition paths (the zoo's results depend on it).
#[test]
fn candidate_does_not_depend_on_the_memory_layout_of_dw() {
    use madeit_experts::CandidateSvd;
    use madeit_experts::math::candidate;
    for (d_out, d_in, r) in [(48, 32, 5), (32, 96, 4), (600, 520, 20)] {
        let dense = gaussian::<f32>(d_out, d_in, 7);
        let row_major: Vec<f32> = (0..d_out)
            .flat_map(|i| (0..d_in).map(move |j| (i, j)))
            .map(|(i, j)| dense[(i, j)])
            .collect();
        let view = faer::MatRef::from_row_major_slice(&row_major, d_out, d_in);
        for svd in [
            CandidateSvd::Exact,
            CandidateSvd::Randomized {
                oversample: 10,
                power_iters: 2,
                seed: 0,
            },
        ] {
            let a = candidate("m", dense.as_ref(), r, svd, 3, 1).unwrap();
            let b = candidate("m", view, r, svd, 3, 1).unwrap();
            let bits = |e: &Expert| -> Vec<u32> {
                let mut out: Vec<u32> = e.s().iter().map(|x| x.to_bits()).collect();
                for m in [e.u(), e.v()] {
                    for j in 0..m.ncols() {
                        out.extend(m.col(j).iter().map(|x| x.to_bits()));
                    }
                }
                out
            };
            assert_eq!(bits(&a), bits(&b), "{d_out}x{d_in} rank {r} with {svd:?}");
        }
    }
}
