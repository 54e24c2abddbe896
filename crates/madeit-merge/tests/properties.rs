//! Property tests of the mathematical identities behind the methods.
#![allow(clippy::unwrap_used, clippy::panic, clippy::cast_precision_loss)]

mod common;

use common::{
    elements, layout, mat_max_abs_diff, mean_at, merged_default, mm, random_dict, run,
    task_vector_sum,
};
use faer::Mat;
use madeit_linalg::thin_svd;
use madeit_merge::{
    Fingerprint, MethodConfig, TaskArithmeticConfig, TiesConfig, opcm_projection, split_rank,
};
use madeit_params::ParamDict;
use proptest::prelude::*;

fn mat(m: usize, n: usize, seed: u64) -> Mat<f64> {
    madeit_linalg::random::gaussian::<f64>(m, n, seed)
}

fn stream(n: usize, seed: u64) -> (ParamDict, Vec<ParamDict>) {
    let lay = layout(4, 5);
    let pre = random_dict(&lay, 0.5, seed);
    let tasks = (0..n as u64)
        .map(|i| {
            pre.add(&random_dict(&lay, 0.1, seed ^ ((i + 1) * 7919)))
                .unwrap()
        })
        .collect();
    (pre, tasks)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// In the singular bases of `d`, `P(τ)` has a zero diagonal and a zero leading `k × k`
    /// block and equals `τ` everywhere else; applying it twice changes nothing.
    #[test]
    fn opcm_projection_zeroes_exactly_the_diagonal_and_the_leading_block(
        m in 2usize..9, n in 2usize..9, seed in 0u64..10_000, alpha in 0.0f64..1.0,
    ) {
        let d = mat(m, n, seed);
        let tau = mat(m, n, seed + 1);
        let (p, k) = opcm_projection(d.as_ref(), tau.as_ref(), alpha).unwrap();
        let svd = thin_svd(d.as_ref()).unwrap();
        prop_assert_eq!(k, split_rank(&svd.s, alpha));
        let c_tau = mm(mm(svd.u.transpose(), tau.as_ref()).as_ref(), svd.v.as_ref());
        let c_p = mm(mm(svd.u.transpose(), p.as_ref()).as_ref(), svd.v.as_ref());
        let r = m.min(n);
        for i in 0..r {
            for j in 0..r {
                let zeroed = i == j || (i < k && j < k);
                let want = if zeroed { 0.0 } else { c_tau[(i, j)] };
                prop_assert!((c_p[(i, j)] - want).abs() < 1e-10, "C[{},{}]", i, j);
            }
        }
        // The part of τ outside the span of U (or V) is untouched.
        // (I − U U^T) τ = (I − U U^T) P(τ), and the same on the right with V.
        let in_u = |a: &Mat<f64>| mm(svd.u.as_ref(), mm(svd.u.transpose(), a.as_ref()).as_ref());
        let in_v = |a: &Mat<f64>| mm(mm(a.as_ref(), svd.v.as_ref()).as_ref(), svd.v.transpose());
        let (tu, pu) = (in_u(&tau), in_u(&p));
        let (tv, pv) = (in_v(&tau), in_v(&p));
        for i in 0..m {
            for j in 0..n {
                prop_assert!(((tau[(i, j)] - tu[(i, j)]) - (p[(i, j)] - pu[(i, j)])).abs() < 1e-10);
                prop_assert!(((tau[(i, j)] - tv[(i, j)]) - (p[(i, j)] - pv[(i, j)])).abs() < 1e-10);
            }
        }
        let (pp, _) = opcm_projection(d.as_ref(), p.as_ref(), alpha).unwrap();
        prop_assert!(mat_max_abs_diff(pp.as_ref(), p.as_ref()) < 1e-10);
    }

    /// The split rank is the first index whose cumulative singular-value mass exceeds α.
    #[test]
    fn split_rank_is_the_first_index_above_the_mass_threshold(
        s in proptest::collection::vec(0.0f64..10.0, 1..20), alpha in 0.0f64..1.0,
    ) {
        let mut s = s;
        s.sort_by(|a, b| b.total_cmp(a));
        let k = split_rank(&s, alpha);
        let total: f64 = s.iter().sum();
        let mass = |i: usize| s[..=i].iter().sum::<f64>() / total;
        if total > 0.0 && mass(s.len() - 1) > alpha {
            prop_assert!(mass(k) > alpha);
            if k > 0 {
                prop_assert!(mass(k - 1) <= alpha);
            }
        } else {
            prop_assert_eq!(k, 0);
        }
    }

    /// Continual task arithmetic is `θ_0 + λ Σ τ_i` whatever the stream.
    #[test]
    fn task_arithmetic_is_linear(n in 1usize..5, seed in 0u64..1000, lambda in -1.0f64..1.0) {
        let (pre, tasks) = stream(n, seed);
        let cfg = MethodConfig::TaskArithmetic(TaskArithmeticConfig { lambda });
        let merged = run(&cfg, &pre, &tasks).merged(&pre).unwrap();
        for (name, i, p0) in elements(&pre) {
            let want = f64::from(p0) + lambda * task_vector_sum(&tasks, name, i, p0);
            let got = f64::from(merged.get(name).unwrap().data()[i]);
            prop_assert!((got - want).abs() < 1e-5, "{}[{}]", name, i);
        }
    }

    /// SWA is the mean of the fine-tuned models.
    #[test]
    fn swa_is_the_mean(n in 1usize..6, seed in 0u64..1000) {
        let (pre, tasks) = stream(n, seed);
        let merged = merged_default("swa", &pre, &tasks);
        for (name, i, got) in elements(&merged) {
            prop_assert!((f64::from(got) - mean_at(&tasks, name, i)).abs() < 1e-6);
        }
    }

    /// OPCM keeps the merged task vector at the running mean task-vector norm.
    #[test]
    fn opcm_merged_norm_is_the_mean_task_vector_norm(n in 1usize..5, seed in 0u64..1000) {
        let (pre, tasks) = stream(n, seed);
        let merged = merged_default("opcm", &pre, &tasks);
        let mean = tasks.iter().map(|t| t.sub(&pre).unwrap().l2_norm()).sum::<f64>() / n as f64;
        let got = merged.sub(&pre).unwrap().l2_norm();
        prop_assert!((got - mean).abs() < 1e-5 * mean, "{} vs {}", got, mean);
    }

    /// MagMax keeps, per element, a task-vector entry at least as large as every other.
    #[test]
    fn magmax_keeps_the_largest_entry(n in 1usize..5, seed in 0u64..1000) {
        let (pre, tasks) = stream(n, seed);
        let merged = merged_default("magmax", &pre, &tasks);
        for (name, i, p0) in elements(&pre) {
            let taus: Vec<f32> =
                tasks.iter().map(|t| t.get(name).unwrap().data()[i] - p0).collect();
            let best = taus.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
            let want = f64::from(p0)
                + 0.5 * f64::from(*taus.iter().rev().find(|t| t.abs() == best).unwrap());
            let got = f64::from(merged.get(name).unwrap().data()[i]);
            prop_assert!((got - want).abs() < 1e-6);
        }
    }

    /// With nothing trimmed and rows that agree in sign, TIES is the plain sum of the rows:
    /// `θ^(2) = θ^(1) + λ ((θ^(1) − θ_0) + τ_2)`.
    #[test]
    fn ties_without_trim_or_conflict_is_the_sum(seed in 0u64..1000, lambda in 0.1f64..1.0) {
        let lay = layout(3, 4);
        let pre = random_dict(&lay, 0.5, seed);
        let abs = |p: ParamDict| -> ParamDict {
            p.into_iter().map(|(n, t)| (n, t.map(f32::abs))).collect()
        };
        let t1 = pre.add(&abs(random_dict(&lay, 0.1, seed + 1))).unwrap();
        let t2 = pre.add(&abs(random_dict(&lay, 0.1, seed + 2))).unwrap();
        let cfg = MethodConfig::Ties(TiesConfig { lambda, keep_fraction: 1.0, ..TiesConfig::default() });
        let merged = run(&cfg, &pre, &[t1.clone(), t2.clone()]).merged(&pre).unwrap();
        for (name, i, p0) in elements(&pre) {
            let p0 = f64::from(p0);
            let tau1 = f64::from(t1.get(name).unwrap().data()[i]) - p0;
            let tau2 = f64::from(t2.get(name).unwrap().data()[i]) - p0;
            let first = p0 + lambda * tau1;
            let want = first + lambda * ((first - p0) + tau2);
            let got = f64::from(merged.get(name).unwrap().data()[i]);
            prop_assert!((got - want).abs() < 1e-5, "{}[{}]", name, i);
        }
    }

    /// Fingerprints ignore tensor order and see any single changed bit.
    #[test]
    fn fingerprints_ignore_order_and_see_every_bit(
        seed in 0u64..1000, which in 0usize..10, index in 0usize..16, bit in 0u32..32,
    ) {
        let lay = layout(4, 5);
        let a = random_dict(&lay, 0.5, seed);
        let reversed: ParamDict = {
            let mut v: Vec<_> = a.clone().into_iter().collect();
            v.reverse();
            v.into_iter().collect()
        };
        prop_assert_eq!(Fingerprint::of_params(&a), Fingerprint::of_params(&reversed));
        let mut b = a.clone();
        let (_, t) = b.iter_mut().nth(which % lay.len()).unwrap();
        let data = t.data_mut();
        let i = index % data.len();
        data[i] = f32::from_bits(data[i].to_bits() ^ (1 << bit));
        prop_assert_ne!(Fingerprint::of_params(&a), Fingerprint::of_params(&b));
    }
}
