//! Implicit routing: FPA, anchor, propagation, bifurcations, invariances, batch API.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

// The low-rank fixtures shared with `madeit-experts`'s own tests.
#[path = "../../madeit-experts/tests/common/mod.rs"]
mod common;

use common::*;
use faer::{Mat, MatRef};
use madeit_linalg::random::{gaussian, orthonormal};
use madeit_merge::made_it::{
    AbsorbReport, Action, Expert, ExpertsError, FeatureBatch, MadeIt, MadeItConfig, ModuleExperts,
    ModuleKind, ModuleReport, TargetModule, TokenAggregation,
};
use madeit_params::{ParamDict, Tensor};
use std::collections::BTreeSet;

/// Rows drawn from the span of `basis` (`d x r`).
fn inside(basis: MatRef<'_, f32>, tokens: usize, seed: u64) -> Mat<f32> {
    mul(
        gaussian::<f32>(tokens, basis.ncols(), seed).as_ref(),
        basis.transpose(),
    )
}

/// A model whose task `t` updates every target module with a rank-`r` delta whose input
/// subspace is columns `r*t .. r*t+r` of a per-module orthonormal basis (tasks have
/// mutually orthogonal input subspaces).
fn orthogonal_tasks(pre: &ParamDict, n: usize, r: usize) -> Vec<ParamDict> {
    let mut out = vec![ParamDict::new(); n];
    for (i, (name, t)) in pre.iter().enumerate() {
        let shape = t.shape().to_vec();
        for (task, ft) in out.iter_mut().enumerate() {
            let mut data = t.data().to_vec();
            if let [rows, cols] = shape[..] {
                let q = orthonormal::<f32>(cols, cols, 1000 + i as u64).unwrap();
                let v = q.subcols(r * task, r);
                let u = orthonormal::<f32>(rows, r, 7 * i as u64 + task as u64).unwrap();
                let s: Vec<f32> = (0..r).map(|k| 1.0 - 0.2 * k as f32).collect();
                let dw = dense(u.as_ref(), &s, v);
                for a in 0..rows {
                    for b in 0..cols {
                        data[a * cols + b] += dw[(a, b)];
                    }
                }
            }
            ft.insert(name, Tensor::new(shape.clone(), data).unwrap());
        }
    }
    out
}

fn absorbed(kappa: f64) -> (ParamDict, MadeIt) {
    let pre = pretrained(2, "", 31);
    let fts = orthogonal_tasks(&pre, 4, 3);
    let mut m = MadeIt::new(MadeItConfig {
        rho: 0.25,
        kappa,
        ..MadeItConfig::default()
    })
    .unwrap();
    for (t, ft) in fts.iter().enumerate() {
        m.absorb(&pre, ft, 100 + t as u32).unwrap();
    }
    (pre, m)
}

/// Features of a sample "from task `task`": in every module, rows inside the input
/// subspace of the expert serving `task`.
fn task_features(m: &MadeIt, task: u32, seed: u64) -> Vec<Mat<f32>> {
    m.modules()
        .iter()
        .enumerate()
        .map(|(i, me)| {
            let e = me.expert_of_task(task).unwrap();
            inside(me.experts()[e].v(), 5, seed + i as u64)
        })
        .collect()
}

fn refs(x: &[Mat<f32>]) -> Vec<MatRef<'_, f32>> {
    x.iter().map(Mat::as_ref).collect()
}

#[test]
fn routing_picks_the_expert_whose_subspace_contains_the_input() {
    let (_, m) = absorbed(f64::INFINITY);
    assert!(m.modules().iter().all(|me| me.len() == 4));
    for task in 100..104 {
        let x = task_features(&m, task, u64::from(task));
        let path = m.route(&refs(&x)).unwrap();
        assert_eq!(path.experts, m.task_path(task).unwrap().experts);
        assert_eq!(path.tasks, BTreeSet::from([task]));
        // All modules tie on 4 experts: the anchor is the deepest one (last fc2).
        assert_eq!(path.anchor, Some(m.modules().len() - 1));
        let a = path.fpa[m.modules().len() - 1].unwrap();
        assert!((a - 1.0).abs() < 1e-5, "{a}");
    }
}

#[test]
fn routing_with_consolidated_experts_everywhere_takes_the_only_expert() {
    let (_, m) = absorbed(f64::NEG_INFINITY);
    let x = task_features(&m, 102, 5);
    let path = m.route(&refs(&x)).unwrap();
    assert!(path.experts.iter().all(|&e| e == 0));
    assert_eq!(path.tasks, (100..104).collect());
}

#[test]
fn routing_is_invariant_to_rotating_expert_bases() {
    let (_, m) = absorbed(f64::INFINITY);
    let mut rotated = Vec::new();
    for (i, me) in m.modules().iter().enumerate() {
        let r = me.rank();
        let experts = me
            .experts()
            .iter()
            .enumerate()
            .map(|(k, e)| {
                let rot = rotation(r, (i * 10 + k) as u64);
                Expert::new(
                    me.name(),
                    mul(e.u(), rot.as_ref()),
                    e.s().to_vec(),
                    mul(e.v(), rot.as_ref()),
                    e.tasks().clone(),
                )
                .unwrap()
            })
            .collect();
        rotated.push(ModuleExperts::new(me.module().clone(), r, experts).unwrap());
    }
    let mr = MadeIt::from_parts(
        m.config().clone(),
        rotated,
        m.tasks().to_vec(),
        m.history().to_vec(),
        None,
    )
    .unwrap();
    for seed in 0..8u64 {
        // Generic inputs (not aligned with any expert).
        let x: Vec<Mat<f32>> = m
            .modules()
            .iter()
            .map(|me| {
                gaussian::<f32>(
                    4,
                    me.module().d_in,
                    77 + seed * 100 + me.module().layer as u64,
                )
            })
            .collect();
        let a = m.route(&refs(&x)).unwrap();
        let b = mr.route(&refs(&x)).unwrap();
        assert_eq!(a.experts, b.experts);
        assert_eq!(a.tasks, b.tasks);
        for (p, q) in a.fpa.iter().zip(&b.fpa) {
            assert_eq!(p.is_some(), q.is_some());
            if let (Some(p), Some(q)) = (p, q) {
                assert!((p - q).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn batch_routing_equals_per_sample_routing() {
    let (_, m) = absorbed(f64::INFINITY);
    let samples: Vec<Vec<Mat<f32>>> = (0..5u32)
        .map(|b| task_features(&m, 100 + b % 4, u64::from(b)))
        .collect();
    let tokens = 5;
    let buffers: Vec<Vec<f32>> = (0..m.modules().len())
        .map(|i| {
            let mut buf = Vec::new();
            for s in &samples {
                let x = &s[i];
                for r in 0..x.nrows() {
                    for c in 0..x.ncols() {
                        buf.push(x[(r, c)]);
                    }
                }
            }
            buf
        })
        .collect();
    let batches: Vec<FeatureBatch<'_>> = m
        .modules()
        .iter()
        .zip(&buffers)
        .map(|(me, b)| FeatureBatch::new(b, samples.len(), tokens, me.module().d_in).unwrap())
        .collect();
    let paths = m.route_batch(&batches).unwrap();
    assert_eq!(paths.len(), 5);
    for (p, s) in paths.iter().zip(&samples) {
        // Same decisions; the scores agree up to f32 rounding (the batch reads row-major
        // buffers, the per-sample call faer matrices, so the products may round
        // differently).
        let q = m.route(&refs(s)).unwrap();
        assert_eq!(
            (&p.experts, &p.tasks, p.anchor),
            (&q.experts, &q.tasks, q.anchor)
        );
        assert_eq!(p.fpa.len(), q.fpa.len());
        for (a, b) in p.fpa.iter().zip(&q.fpa) {
            match (a, b) {
                (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-6, "{a} vs {b}"),
                (None, None) => {}
                other => panic!("a score on one side only: {other:?}"),
            }
        }
    }
    assert!(FeatureBatch::new(&buffers[0], 5, tokens, 3).is_err());
}

fn module(layer: usize, kind: ModuleKind, d: usize) -> TargetModule {
    TargetModule {
        weight_key: format!("encoder.layers.{layer}.{}", kind.weight_suffix()),
        layer,
        kind,
        d_out: d,
        d_in: d,
    }
}

/// A hand-built state: module `i` has experts with input bases `bases[i][k]` serving
/// `tasks[i][k]`.
fn designed(
    config: MadeItConfig,
    layout: &[(ModuleKind, Vec<Vec<u32>>)],
    d: usize,
) -> (MadeIt, Vec<Vec<Mat<f32>>>) {
    let r = 2;
    let mut modules = Vec::new();
    let mut bases = Vec::new();
    let mut all = BTreeSet::new();
    for (i, (kind, groups)) in layout.iter().enumerate() {
        let q = orthonormal::<f32>(d, d, 40 + i as u64).unwrap();
        let mut experts = Vec::new();
        let mut vs = Vec::new();
        for (k, g) in groups.iter().enumerate() {
            let v = q.subcols(r * k, r).to_owned();
            let u = orthonormal::<f32>(d, r, 90 + (i * 10 + k) as u64).unwrap();
            let tasks: BTreeSet<u32> = g.iter().copied().collect();
            all.extend(tasks.iter().copied());
            experts.push(Expert::new("m", u, vec![1.0, 0.5], v.clone(), tasks).unwrap());
            vs.push(v);
        }
        modules.push(ModuleExperts::new(module(0, *kind, d), r, experts).unwrap());
        bases.push(vs);
    }
    let tasks: Vec<u32> = all.into_iter().collect();
    let history = tasks
        .iter()
        .enumerate()
        .map(|(i, &t)| AbsorbReport {
            step: i + 1,
            task: t,
            modules: modules
                .iter()
                .map(|m| ModuleReport {
                    module: m.name().to_owned(),
                    scores: Vec::new(),
                    best: None,
                    threshold: None,
                    action: Action::Created { expert: 0 },
                    experts_after: 1,
                })
                .collect(),
        })
        .collect();
    (
        MadeIt::from_parts(config, modules, tasks, history, None).unwrap(),
        bases,
    )
}

fn cfg(agg: TokenAggregation) -> MadeItConfig {
    MadeItConfig {
        rho: 0.25,
        token_aggregation: agg,
        ..MadeItConfig::default()
    }
}

/// A designed state over q, k and v (`d = 8`) whose anchor is v and where q bifurcates:
/// q's experts serve {1}, {2}, {3, 4}; k's and v's serve {1, 2}, {3}, {4}.
fn bifurcating() -> (MadeIt, Vec<Vec<Mat<f32>>>) {
    use ModuleKind::{K, Q, V};
    let layout = vec![
        (Q, vec![vec![1], vec![2], vec![3, 4]]),
        (K, vec![vec![1, 2], vec![3], vec![4]]),
        (V, vec![vec![1, 2], vec![3], vec![4]]),
    ];
    designed(cfg(TokenAggregation::Frobenius), &layout, 8)
}

#[test]
fn bifurcation_is_resolved_by_fpa_and_narrows_the_task_set() {
    let (m, bases) = bifurcating();
    assert_eq!(m.anchor().unwrap(), 2, "ties go to the deepest module");
    // A task-2 sample: q's expert 1, k's and v's expert 0.
    let x = vec![
        inside(bases[0][1].as_ref(), 3, 1),
        inside(bases[1][0].as_ref(), 3, 2),
        inside(bases[2][0].as_ref(), 3, 3),
    ];
    let path = m.route(&refs(&x)).unwrap();
    assert_eq!(path.anchor, Some(2));
    assert_eq!(path.experts, vec![1, 0, 0]);
    assert_eq!(path.tasks, BTreeSet::from([2]));
    assert!(path.fpa[1].is_none(), "k had a single candidate");
    assert!(path.fpa[0].is_some(), "q was a bifurcation");
    // A task-1 sample goes the other way at q.
    let x = vec![
        inside(bases[0][0].as_ref(), 3, 4),
        x[1].clone(),
        x[2].clone(),
    ];
    let path = m.route(&refs(&x)).unwrap();
    assert_eq!(path.experts, vec![0, 0, 0]);
    assert_eq!(path.tasks, BTreeSet::from([1]));
}

#[test]
fn propagation_overrides_local_fpa_outside_the_task_set() {
    use ModuleKind::{K, Q};
    // The anchor (q, 3 experts) picks task 3; k's best local match would be the expert
    // of tasks {1, 2}, but only the expert of {3} is consistent.
    let layout = vec![
        (Q, vec![vec![1], vec![2], vec![3]]),
        (K, vec![vec![1, 2], vec![3]]),
    ];
    let (m, bases) = designed(cfg(TokenAggregation::Frobenius), &layout, 8);
    let x = vec![
        inside(bases[0][2].as_ref(), 3, 1),
        inside(bases[1][0].as_ref(), 3, 2),
    ];
    let path = m.route(&refs(&x)).unwrap();
    assert_eq!(path.anchor, Some(0));
    assert_eq!(path.experts, vec![2, 1]);
    assert_eq!(path.tasks, BTreeSet::from([3]));
}

#[test]
fn visit_order_goes_outward_deeper_first() {
    let (_, m) = absorbed(f64::INFINITY);
    assert_eq!(m.modules().len(), 12);
    assert_eq!(m.visit_order(2), vec![3, 1, 4, 0, 5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(m.visit_order(11), (0..11).rev().collect::<Vec<_>>());
}

#[test]
fn cls_only_aggregation_uses_the_first_token() {
    use ModuleKind::Q;
    let layout = vec![(Q, vec![vec![1], vec![2]])];
    let (mf, bases) = designed(cfg(TokenAggregation::Frobenius), &layout, 8);
    let (mc, _) = designed(cfg(TokenAggregation::ClsOnly), &layout, 8);
    // Row 0 inside task 1's subspace, four larger rows inside task 2's.
    let mut x = inside(bases[0][1].as_ref(), 5, 3);
    for j in 0..x.ncols() {
        for i in 1..5 {
            x[(i, j)] *= 10.0;
        }
    }
    let row0 = inside(bases[0][0].as_ref(), 1, 4);
    for j in 0..x.ncols() {
        x[(0, j)] = row0[(0, j)];
    }
    assert_eq!(mf.route(&[x.as_ref()]).unwrap().experts, vec![1]);
    assert_eq!(mc.route(&[x.as_ref()]).unwrap().experts, vec![0]);
    assert!((mc.fpa(0, 0, x.as_ref()).unwrap() - 1.0).abs() < 1e-5);
}

#[test]
fn routing_errors() {
    let empty = MadeIt::new(MadeItConfig::default()).unwrap();
    assert!(matches!(empty.route(&[]), Err(ExpertsError::NoExperts)));
    let (_, m) = absorbed(f64::INFINITY);
    let x = task_features(&m, 100, 1);
    let r = refs(&x);
    assert!(matches!(
        m.route(&r[1..]),
        Err(ExpertsError::Features { .. })
    ));
    let wrong = gaussian::<f32>(3, 5, 1);
    let mut bad = r.clone();
    bad[0] = wrong.as_ref();
    assert!(matches!(m.route(&bad), Err(ExpertsError::Features { .. })));
    let mut nan = x[3].clone();
    nan[(1, 2)] = f32::NAN;
    let mut bad = r.clone();
    bad[3] = nan.as_ref();
    let err = m.route(&bad).unwrap_err();
    assert!(
        matches!(&err, ExpertsError::NonFinite { name, .. } if name.contains(m.modules()[3].name())),
        "{err}"
    );
    let none = Mat::<f32>::zeros(0, m.modules()[0].module().d_in);
    let mut bad = r.clone();
    bad[0] = none.as_ref();
    assert!(matches!(m.route(&bad), Err(ExpertsError::Features { .. })));
}

#[test]
fn materialize_checks_the_path() {
    let (pre, m) = absorbed(f64::INFINITY);
    let mut p = m.task_path(101).unwrap();
    p.experts.pop();
    assert!(matches!(
        m.materialize(&pre, &p),
        Err(ExpertsError::Path { .. })
    ));
    let mut p = m.task_path(101).unwrap();
    p.experts[0] = 9;
    assert!(matches!(
        m.materialize(&pre, &p),
        Err(ExpertsError::ExpertIndex { .. })
    ));
    assert!(matches!(m.task_path(5), Err(ExpertsError::Path { .. })));
}

/// Scores of every expert of every module for one sample, as `route_from_scores` takes them.
fn all_scores(m: &MadeIt, x: &[Mat<f32>]) -> Vec<Vec<f64>> {
    m.modules()
        .iter()
        .enumerate()
        .map(|(i, me)| {
            (0..me.len())
                .map(|e| m.fpa(i, e, x[i].as_ref()).unwrap())
                .collect()
        })
        .collect()
}

fn task_sets(m: &MadeIt) -> Vec<Vec<BTreeSet<u32>>> {
    m.modules()
        .iter()
        .map(|me| me.experts().iter().map(|e| e.tasks().clone()).collect())
        .collect()
}

#[test]
fn routing_from_precomputed_scores_equals_feature_routing() {
    let (m, _) = bifurcating();
    let sets = task_sets(&m);
    for seed in 0..20u64 {
        // Unstructured inputs, so that every rule (anchor argmax, bifurcations) is exercised
        // on arbitrary scores.
        let x: Vec<Mat<f32>> = (0..3)
            .map(|i| gaussian::<f32>(3, 8, 1000 * seed + i))
            .collect();
        let want = m.route(&refs(&x)).unwrap();
        let got = madeit_merge::made_it::route_from_scores(&sets, &all_scores(&m, &x)).unwrap();
        assert_eq!(got, want, "seed {seed}");
    }
    let (_, m) = absorbed(1.0);
    let sets = task_sets(&m);
    for task in 100..104 {
        let x = task_features(&m, task, u64::from(task) + 7);
        let got = madeit_merge::made_it::route_from_scores(&sets, &all_scores(&m, &x)).unwrap();
        assert_eq!(got, m.route(&refs(&x)).unwrap());
    }
}

#[test]
fn routing_from_scores_rejects_malformed_inputs() {
    let sets = vec![
        vec![BTreeSet::from([1]), BTreeSet::from([2])],
        vec![BTreeSet::from([1, 2])],
    ];
    let ok = vec![vec![0.2, 0.9], vec![0.5]];
    let path = madeit_merge::made_it::route_from_scores(&sets, &ok).unwrap();
    assert_eq!(path.experts, vec![1, 0]);
    assert_eq!(path.tasks, BTreeSet::from([2]));
    assert!(matches!(
        madeit_merge::made_it::route_from_scores(&sets, &ok[..1]),
        Err(ExpertsError::Features { .. })
    ));
    assert!(matches!(
        madeit_merge::made_it::route_from_scores(&sets, &[vec![0.2], vec![0.5]]),
        Err(ExpertsError::Features { .. })
    ));
    assert!(matches!(
        madeit_merge::made_it::route_from_scores(&sets, &[vec![f64::NAN, 0.1], vec![0.5]]),
        Err(ExpertsError::NonFinite { .. })
    ));
    assert!(matches!(
        madeit_merge::made_it::route_from_scores(&[], &[]),
        Err(ExpertsError::NoExperts)
    ));
    // Task sets that do not partition one set: no consistent expert.
    let broken = vec![
        vec![BTreeSet::from([1]), BTreeSet::from([2])],
        vec![BTreeSet::from([3])],
    ];
    assert!(matches!(
        madeit_merge::made_it::route_from_scores(&broken, &ok),
        Err(ExpertsError::RoutingInvariant { .. })
    ));
}
