//! The pure mathematics of MINGLE: gradient projection, effective rank, the projection of a
//! task vector against earlier experts, subspace growth, seed draws and the KL.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use common::{randn_mat, random_seed_images};
use faer::{Mat, MatRef};
use madeit_adapt::{
    AdaptError, GateProjection, GradientProjector, SeedBatches, build_expert, effective_rank,
    experts_svd, extend_basis, mean_kl, project_out_block, select_seed_indices, top_directions,
};
use madeit_linalg::{TruncatedSvd, orthonormalize, thin_svd};
use madeit_vit::{ClipVisionConfig, LowRankFactors, ModuleId, ModuleKind};
use proptest::prelude::*;

const M: ModuleId = ModuleId::new(0, ModuleKind::Q);

fn orthonormal(d: usize, k: usize, seed: u64) -> Mat<f32> {
    if k == 0 {
        return Mat::zeros(d, 0);
    }
    let q = orthonormalize(randn_mat(d, k, seed).as_ref()).unwrap();
    Mat::from_fn(d, k, |i, j| q[(i, j)] as f32)
}

fn grad(d: usize, seed: u64) -> Vec<f32> {
    let g = randn_mat(d, 1, seed);
    (0..d).map(|i| g[(i, 0)] as f32).collect()
}

/// `U^T g` in f64.
fn coords(u: MatRef<'_, f32>, g: &[f32]) -> Vec<f64> {
    (0..u.ncols())
        .map(|p| {
            (0..u.nrows())
                .map(|i| f64::from(u[(i, p)]) * f64::from(g[i]))
                .sum()
        })
        .collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// gamma = 0 makes every lambda exactly 1: the relaxed projector is the hard one.
    #[test]
    fn relaxed_with_gamma_zero_is_the_hard_projector(d in 2usize..24, k in 1usize..6, seed in 0u64..1000, steps in 1usize..6) {
        let k = k.min(d);
        let u = orthonormal(d, k, seed);
        let mut relaxed = GradientProjector::new(u.as_ref(), GateProjection::Relaxed, 0.0, 0.99);
        let mut hard = GradientProjector::new(u.as_ref(), GateProjection::Hard, 1.0, 0.99);
        for s in 0..steps {
            let g = grad(d, seed * 31 + s as u64);
            prop_assert_eq!(relaxed.project(&g).unwrap(), hard.project(&g).unwrap());
        }
        prop_assert!(relaxed.lambdas().iter().all(|l| *l == 1.0));
    }

    /// The hard projector removes every stored direction: U^T g' = 0, and it leaves the
    /// orthogonal complement alone.
    #[test]
    fn hard_projection_is_orthogonal_to_the_subspace(d in 2usize..32, k in 1usize..8, seed in 0u64..1000) {
        let k = k.min(d);
        let u = orthonormal(d, k, seed);
        let g = grad(d, seed + 7);
        let mut p = GradientProjector::new(u.as_ref(), GateProjection::Hard, 1.0, 0.99);
        let out = p.project(&g).unwrap();
        let scale = norm(&g).max(1e-12);
        for c in coords(u.as_ref(), &out) {
            prop_assert!(c.abs() <= 1e-5 * scale, "U^T g' = {c}");
        }
        // g - g' lies in span(U): its projection on U reproduces it.
        let diff: Vec<f32> = g.iter().zip(&out).map(|(a, b)| a - b).collect();
        let c = coords(u.as_ref(), &diff);
        let back: Vec<f64> = (0..d).map(|i| (0..k).map(|p| f64::from(u[(i, p)]) * c[p]).sum()).collect();
        for (a, b) in diff.iter().zip(&back) {
            prop_assert!((f64::from(*a) - b).abs() <= 1e-5 * scale);
        }
    }

    /// The relaxed projector scales each stored coordinate by (1 - lambda_p), lambda_p =
    /// exp(-gamma h_p) with the EMA h of |c_p| / ||g||, and never lengthens the gradient.
    #[test]
    fn relaxed_projection_follows_the_formula(d in 2usize..24, k in 1usize..6, seed in 0u64..1000, gamma in 0.0f64..50.0, beta in 0.0f64..0.999) {
        let k = k.min(d);
        let u = orthonormal(d, k, seed);
        let mut p = GradientProjector::new(u.as_ref(), GateProjection::Relaxed, gamma, beta);
        let mut h = vec![0.0f64; k];
        for s in 0..3u64 {
            let g = grad(d, seed * 13 + s);
            let c = coords(u.as_ref(), &g);
            let gn = norm(&g);
            for (hp, cp) in h.iter_mut().zip(&c) {
                *hp = beta * *hp + (1.0 - beta) * cp.abs() / (gn + 1e-12);
            }
            let out = p.project(&g).unwrap();
            for (a, b) in p.interference().iter().zip(&h) {
                prop_assert!((a - b).abs() <= 1e-12);
            }
            let c_out = coords(u.as_ref(), &out);
            for ((co, ci), hp) in c_out.iter().zip(&c).zip(&h) {
                let lambda = (-gamma * hp).exp();
                prop_assert!((co - (1.0 - lambda) * ci).abs() <= 1e-5 * gn.max(1e-12));
            }
            prop_assert!(norm(&out) <= gn * (1.0 + 1e-6) + 1e-12);
        }
    }

    /// exp(entropy) of n equal singular values is n; in general 1 <= k_eff <= nonzero count.
    #[test]
    fn effective_rank_bounds(s in prop::collection::vec(0.0f64..10.0, 1..40), n in 1usize..50) {
        prop_assert_eq!(effective_rank(&vec![2.5; n]), n);
        let nonzero = s.iter().filter(|x| **x != 0.0).count();
        let k = effective_rank(&s);
        if nonzero == 0 {
            prop_assert_eq!(k, 0);
        } else {
            prop_assert!(k >= 1 && k <= nonzero, "k = {k}, nonzero = {nonzero}");
        }
    }

    /// The SVD of the earlier experts' sum from their factors equals the dense SVD (both the
    /// QR-core path, R < min(m, n), and the dense path).
    #[test]
    fn experts_svd_matches_the_dense_sum(m in 3usize..20, n in 3usize..20, ranks in prop::collection::vec(1usize..6, 1..4), seed in 0u64..1000) {
        let experts: Vec<LowRankFactors> = ranks
            .iter()
            .enumerate()
            .map(|(e, &r)| {
                let r = r.min(m).min(n);
                let u = randn_mat(m, r, seed + e as u64 * 3);
                let v = randn_mat(n, r, seed + e as u64 * 3 + 1);
                let f32s = |x: &Mat<f64>| Mat::from_fn(x.nrows(), x.ncols(), |i, j| x[(i, j)] as f32);
                let s: Vec<f32> = (0..r).map(|k| 1.0 + k as f32).collect();
                LowRankFactors::from_mats(f32s(&u).as_ref(), &s, f32s(&v).as_ref()).unwrap()
            })
            .collect();
        let svd = experts_svd(M, m, n, &experts).unwrap();
        let mut dense = Mat::<f64>::zeros(m, n);
        for f in &experts {
            let r = f.rank();
            for i in 0..m {
                for j in 0..n {
                    dense[(i, j)] += (0..r)
                        .map(|k| f64::from(f.u()[i * r + k]) * f64::from(f.s()[k]) * f64::from(f.v()[j * r + k]))
                        .sum::<f64>();
                }
            }
        }
        let want = thin_svd(dense.as_ref()).unwrap();
        let scale = want.s.first().copied().unwrap_or(1.0).max(1.0);
        for (i, w) in want.s.iter().enumerate() {
            let got = svd.s.get(i).copied().unwrap_or(0.0);
            prop_assert!((got - w).abs() <= 1e-8 * scale, "s[{i}] = {got}, dense {w}");
        }
        let rec = svd.reconstruct();
        for i in 0..m {
            for j in 0..n {
                prop_assert!((rec[(i, j)] - dense[(i, j)]).abs() <= 1e-8 * scale);
            }
        }
    }

    /// Zeroing the leading k x k block of C = U^T tau V with full singular bases equals the
    /// thin-factor formula tau - U_k (U_k^T tau V_k) V_k^T.
    #[test]
    fn block_projection_matches_the_full_basis_formula(m in 2usize..12, n in 2usize..12, k in 0usize..6, seed in 0u64..1000) {
        let k = k.min(m).min(n);
        let u = orthonormalize(randn_mat(m, m, seed).as_ref()).unwrap();
        let v = orthonormalize(randn_mat(n, n, seed + 1).as_ref()).unwrap();
        let tau = randn_mat(m, n, seed + 2);
        let got = project_out_block(tau.as_ref(), u.as_ref(), v.as_ref(), k);
        let mut c = u.transpose() * &tau * &v;
        for i in 0..k {
            for j in 0..k {
                c[(i, j)] = 0.0;
            }
        }
        let want = &u * &c * v.transpose();
        for i in 0..m {
            for j in 0..n {
                prop_assert!((got[(i, j)] - want[(i, j)]).abs() <= 1e-10);
            }
        }
    }

    /// After the QR update the basis is orthonormal, keeps the old span and contains the
    /// new directions.
    #[test]
    fn extended_basis_is_orthonormal_and_nested(d in 3usize..20, k_old in 0usize..6, k in 1usize..4, seed in 0u64..1000) {
        let k_old = k_old.min(d);
        let old = orthonormal(d, k_old, seed);
        let new = randn_mat(d, k, seed + 9);
        let q = extend_basis(M, old.as_ref(), new.as_ref()).unwrap();
        prop_assert_eq!(q.ncols(), (k_old + k).min(d));
        let q64 = Mat::from_fn(d, q.ncols(), |i, j| f64::from(q[(i, j)]));
        let gram = q64.transpose() * &q64;
        for i in 0..q.ncols() {
            for j in 0..q.ncols() {
                let want = if i == j { 1.0 } else { 0.0 };
                prop_assert!((gram[(i, j)] - want).abs() <= 1e-5);
            }
        }
        // Every old and new column lies in span(Q).
        let old64 = Mat::from_fn(d, k_old, |i, j| f64::from(old[(i, j)]));
        for x in [old64, new] {
            let res = &x - &q64 * (q64.transpose() * &x);
            prop_assert!(res.norm_l2() <= 1e-4 * x.norm_l2().max(1.0));
        }
    }
}

#[test]
fn large_gamma_relaxes_towards_no_projection() {
    // lambda = exp(-gamma h): as soon as h > 0, a large gamma lets the gradient through
    // (gamma -> infinity: no projection), a zero gamma blocks it (hard null space).
    let u = orthonormal(10, 3, 5);
    let g = grad(10, 6);
    let mut p = GradientProjector::new(u.as_ref(), GateProjection::Relaxed, 1e6, 0.99);
    let out = p.project(&g).unwrap();
    let diff: f64 = g
        .iter()
        .zip(&out)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(diff <= 1e-6 * norm(&g), "|g - g'| = {diff}");
    let mut none = GradientProjector::new(u.as_ref(), GateProjection::None, 1.0, 0.99);
    assert_eq!(none.project(&g).unwrap(), g);
    assert!(
        none.project(&[1.0]).is_none(),
        "a gradient of the wrong width is refused"
    );
}

#[test]
fn effective_rank_edge_cases() {
    assert_eq!(effective_rank(&[]), 0);
    assert_eq!(effective_rank(&[0.0, 0.0]), 0);
    assert_eq!(effective_rank(&[3.0, 0.0, 0.0]), 1);
    assert_eq!(effective_rank(&[f64::NAN, 1.0]), 0);
    // A dominant value: exp(H) is close to 1.
    assert_eq!(effective_rank(&[100.0, 1e-3, 1e-3]), 1);
}

#[test]
fn build_expert_keeps_a_low_rank_update_and_blocks_earlier_directions() {
    let (m, n, r) = (24, 16, 6);
    let w0 = Mat::from_fn(m, n, |i, j| ((i * 7 + j * 3) % 11) as f32 * 0.1);
    let low = |seed: u64, rank: usize| {
        randn_mat(m, rank, seed) * randn_mat(rank, n, seed + 1).as_ref() * 0.1
    };
    // The rank-`r` expert of the update `d` on `w0`, projected against `previous` or not.
    let build = |d: &Mat<f64>, previous: &[LowRankFactors], project: bool| {
        let wt = Mat::from_fn(m, n, |i, j| w0[(i, j)] + d[(i, j)] as f32);
        build_expert(
            M,
            w0.as_ref(),
            wt.as_ref(),
            previous,
            r,
            project,
            TruncatedSvd::Exact,
        )
        .unwrap()
    };
    // Task 1: a rank-3 update is reproduced exactly by a rank-6 expert.
    let d1 = low(1, 3);
    let (e1, s1) = build(&d1, &[], true);
    assert_eq!((s1.k_eff, s1.rank), (0, r));
    assert!((s1.kept_fraction - 1.0).abs() < 1e-6);
    let dense = e1.to_dense().unwrap();
    for i in 0..m {
        for j in 0..n {
            assert!((f64::from(dense.data()[i * n + j]) - d1[(i, j)]).abs() < 1e-5);
        }
    }
    // Task 2: the new expert has no component in the top-k_eff block of expert 1.
    let d2 = low(7, 3) + &d1 * 0.5;
    let (e2, s2) = build(&d2, std::slice::from_ref(&e1), true);
    assert!(s2.k_eff >= 1 && s2.k_eff <= 3, "k_eff = {}", s2.k_eff);
    assert!(s2.projected_norm < s2.tau_norm);
    let prev = experts_svd(M, m, n, std::slice::from_ref(&e1)).unwrap();
    let k = s2.k_eff;
    // The norms of an expert's update and of its top-k block in expert 1's singular bases.
    let block_norms = |e: &LowRankFactors| {
        let t = e.to_dense().unwrap();
        let dense = Mat::from_fn(m, n, |i, j| f64::from(t.data()[i * n + j]));
        let block = prev.u.subcols(0, k).transpose() * &dense * prev.v.subcols(0, k);
        (block.norm_l2(), dense.norm_l2())
    };
    let (block, dense2) = block_norms(&e2);
    assert!(block <= 1e-5 * dense2, "block {block}");
    // Without the projection the block is not removed.
    let (e3, s3) = build(&d2, std::slice::from_ref(&e1), false);
    assert_eq!(s3.k_eff, 0);
    let (block, dense3) = block_norms(&e3);
    assert!(block > 1e-2 * dense3);
}

#[test]
fn build_expert_rejects_bad_shapes_and_ranks() {
    let a = Mat::<f32>::zeros(4, 3);
    let b = Mat::<f32>::zeros(3, 4);
    assert!(matches!(
        build_expert(M, a.as_ref(), b.as_ref(), &[], 1, true, TruncatedSvd::Exact),
        Err(AdaptError::Module { .. })
    ));
    for rank in [0, 4] {
        assert!(matches!(
            build_expert(
                M,
                a.as_ref(),
                a.as_ref(),
                &[],
                rank,
                true,
                TruncatedSvd::Exact
            ),
            Err(AdaptError::Module { .. })
        ));
    }
    let mut nan = Mat::<f32>::zeros(4, 3);
    nan[(1, 1)] = f32::NAN;
    assert!(matches!(
        build_expert(
            M,
            a.as_ref(),
            nan.as_ref(),
            &[],
            2,
            true,
            TruncatedSvd::Exact
        ),
        Err(AdaptError::Linalg { .. })
    ));
    // An earlier expert of another shape.
    let other = LowRankFactors::new(5, 3, vec![0.0; 5], vec![1.0], vec![0.0; 3]).unwrap();
    assert!(matches!(
        build_expert(
            M,
            a.as_ref(),
            a.as_ref(),
            &[other],
            2,
            true,
            TruncatedSvd::Exact
        ),
        Err(AdaptError::Module { .. })
    ));
}

#[test]
fn top_directions_of_a_covariance_are_its_leading_eigenvectors() {
    let d = 12;
    let q = orthonormalize(randn_mat(d, d, 3).as_ref()).unwrap();
    let eig: Vec<f64> = (0..d).map(|i| 100.0 * 0.5f64.powi(i as i32)).collect();
    let sigma = Mat::from_fn(d, d, |i, j| {
        (0..d).map(|k| q[(i, k)] * eig[k] * q[(j, k)]).sum()
    });
    for method in [
        TruncatedSvd::Exact,
        TruncatedSvd::Randomized {
            oversample: 4,
            power_iters: 4,
            seed: 1,
        },
    ] {
        let top = top_directions(M, sigma.as_ref(), 3, method).unwrap();
        assert_eq!(top.shape(), (d, 3));
        for p in 0..3 {
            let dot: f64 = (0..d).map(|i| top[(i, p)] * q[(i, p)]).sum();
            assert!(
                (dot.abs() - 1.0).abs() < 1e-6,
                "{method:?}: direction {p}, |cos| = {}",
                dot.abs()
            );
        }
    }
    assert!(matches!(
        top_directions(M, Mat::<f64>::zeros(3, 2).as_ref(), 1, TruncatedSvd::Exact),
        Err(AdaptError::Module { .. })
    ));
    assert!(matches!(
        top_directions(M, sigma.as_ref(), 0, TruncatedSvd::Exact),
        Err(AdaptError::Module { .. })
    ));
}

#[test]
fn seed_draw_is_stratified_and_seeded() {
    // 3 classes with 10, 2 and 7 samples, interleaved.
    let labels: Vec<usize> = (0..19)
        .map(|i| {
            if i < 10 {
                0
            } else if i < 12 {
                1
            } else {
                2
            }
        })
        .rev()
        .collect();
    let idx = select_seed_indices(&labels, 5, 42);
    let count = |c: usize| idx.iter().filter(|&&i| labels[i] == c).count();
    assert_eq!((count(0), count(1), count(2)), (5, 2, 5));
    assert!(idx.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(idx, select_seed_indices(&labels, 5, 42));
    assert_ne!(idx, select_seed_indices(&labels, 5, 43));
    assert!(select_seed_indices(&[], 5, 1).is_empty());
}

#[test]
fn seed_batches_cover_every_sample_once_per_epoch() {
    let mut b = SeedBatches::new(10, 4, 3);
    let first: Vec<Vec<usize>> = (0..3).map(|_| b.next().unwrap()).collect();
    assert_eq!(
        first.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    let mut all: Vec<usize> = first.concat();
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    let second: Vec<usize> = (0..3).flat_map(|_| b.next().unwrap()).collect();
    assert_ne!(second, first.concat(), "every epoch is reshuffled");
    assert!(SeedBatches::new(0, 4, 1).next().is_none());
    let images = random_seed_images(&ClipVisionConfig::tiny(), 3, 1);
    assert_eq!(images.gather(&[2, 0]).len(), 2 * images.image_len());
}

#[test]
fn kl_is_zero_on_equal_logits_and_matches_the_distillation_loss() {
    let teacher = [1.0f32, 2.0, -1.0, 0.5, 0.0, 3.0];
    let student = [0.0f32, 1.0, 1.0, 2.0, -1.0, 0.0];
    assert!(mean_kl(&teacher, &teacher, 3, 2.0).abs() < 1e-12);
    let kl = mean_kl(&student, &teacher, 3, 2.0);
    assert!(kl > 0.0);
    // KL = cross-entropy - entropy of the teacher, both at temperature 2.
    let sm = |r: &[f32]| -> Vec<f64> {
        let e: Vec<f64> = r.iter().map(|x| (f64::from(*x) / 2.0).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    };
    let mut ce = 0.0;
    let mut ent = 0.0;
    for (s, t) in student.chunks(3).zip(teacher.chunks(3)) {
        let (q, p) = (sm(s), sm(t));
        ce -= p.iter().zip(&q).map(|(a, b)| a * b.ln()).sum::<f64>();
        ent -= p.iter().map(|a| a * a.ln()).sum::<f64>();
    }
    assert!((kl - (ce - ent) / 2.0).abs() < 1e-12);
}
