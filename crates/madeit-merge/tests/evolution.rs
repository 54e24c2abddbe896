//! Expert evolution: thresholds, consolidation limits, errors, non-target handling.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

// The low-rank fixtures shared with `madeit-experts`'s own tests.
#[path = "../../madeit-experts/tests/common/mod.rs"]
mod common;

use common::*;
use madeit_merge::made_it::{
    Action, AffinityMetric, CandidateSvd, ExpertsError, HistoryScope, MadeIt, MadeItConfig,
    MergeRule, NonTargetRule, ThresholdStats, target_modules,
};
use madeit_params::{ParamDict, Tensor};

fn config(kappa: f64) -> MadeItConfig {
    MadeItConfig {
        rho: 0.25,
        kappa,
        ..MadeItConfig::default()
    }
}

fn run(cfg: MadeItConfig, pre: &ParamDict, tasks: &[(u32, ParamDict)]) -> MadeIt {
    let mut m = MadeIt::new(cfg).unwrap();
    for (id, ft) in tasks {
        m.absorb(pre, ft, *id).unwrap();
    }
    m
}

fn distinct_tasks(pre: &ParamDict, n: u32) -> Vec<(u32, ParamDict)> {
    (0..n)
        .map(|i| (10 + i, finetuned(pre, 100 + u64::from(i), 3, 0.5)))
        .collect()
}

/// A `layers`-layer model from `seed`, `n` distinct tasks on it, and the result of
/// absorbing them in order under `cfg`.
fn absorb_distinct(
    layers: usize,
    seed: u64,
    n: u32,
    cfg: MadeItConfig,
) -> (ParamDict, Vec<(u32, ParamDict)>, MadeIt) {
    let pre = pretrained(layers, "", seed);
    let tasks = distinct_tasks(&pre, n);
    let m = run(cfg, &pre, &tasks);
    (pre, tasks, m)
}

#[test]
fn first_task_creates_one_expert_per_module_with_the_rho_rank() {
    let (_, _, m) = absorb_distinct(2, 1, 1, config(1.0));
    assert_eq!(m.modules().len(), 12);
    for me in m.modules() {
        assert_eq!(me.len(), 1);
        let want = (0.25 * me.module().d_out.min(me.module().d_in) as f64).round() as usize;
        assert_eq!(me.rank(), want.max(1));
        assert_eq!(
            me.experts()[0].tasks().iter().copied().collect::<Vec<_>>(),
            vec![10]
        );
    }
    let rep = &m.history()[0];
    assert_eq!(rep.step, 1);
    assert_eq!(rep.created(), 12);
    assert!(
        rep.modules
            .iter()
            .all(|r| r.scores.is_empty() && r.threshold.is_none())
    );
}

#[test]
fn rank_formula_rounds_and_clamps() {
    let c = MadeItConfig {
        rho: 0.1,
        ..MadeItConfig::default()
    };
    assert_eq!(c.rank_for(768, 768), 77);
    assert_eq!(c.rank_for(3072, 768), 77);
    assert_eq!(c.rank_for(4, 4), 1); // round(0.4) = 0 -> 1
    assert_eq!(c.rank_for(5, 100), 1); // round(0.5) = 1
    let c = MadeItConfig {
        rho: 1.0,
        ..MadeItConfig::default()
    };
    assert_eq!(c.rank_for(7, 3), 3);
}

#[test]
fn kappa_plus_infinity_never_consolidates() {
    let pre = pretrained(2, "", 1);
    let tasks = distinct_tasks(&pre, 4);
    // Also feed the same model twice: even a duplicate never consolidates.
    let mut tasks = tasks;
    tasks.push((99, tasks[0].1.clone()));
    for history in [HistoryScope::Pooled, HistoryScope::PerModule] {
        let cfg = MadeItConfig {
            history,
            ..config(f64::INFINITY)
        };
        let m = run(cfg, &pre, &tasks);
        for me in m.modules() {
            assert_eq!(me.len(), tasks.len());
            for (e, (id, _)) in me.experts().iter().zip(&tasks) {
                assert_eq!(e.tasks().iter().copied().collect::<Vec<_>>(), vec![*id]);
            }
        }
        for rep in &m.history()[1..] {
            assert_eq!(rep.consolidated(), 0);
            for r in &rep.modules {
                assert_eq!(r.threshold.unwrap().threshold, f64::INFINITY);
            }
        }
    }
}

#[test]
fn kappa_minus_infinity_always_consolidates() {
    let pre = pretrained(2, "", 1);
    let tasks = distinct_tasks(&pre, 4);
    for merge in [MergeRule::SubspaceMerge, MergeRule::SumTruncate] {
        let cfg = MadeItConfig {
            merge,
            ..config(f64::NEG_INFINITY)
        };
        let m = run(cfg, &pre, &tasks);
        for me in m.modules() {
            assert_eq!(me.len(), 1);
            assert_eq!(me.experts()[0].tasks().len(), tasks.len());
        }
        for rep in &m.history()[1..] {
            assert_eq!(rep.created(), 0);
            for r in &rep.modules {
                assert_eq!(r.action, Action::Consolidated { expert: 0 });
            }
        }
    }
}

#[test]
fn identical_tasks_collapse_to_one_expert_per_module() {
    // The same dW under different task ids: every score is 1, sigma = 0, tau = 1; a tie
    // at full affinity consolidates (see `MadeItConfig::tie_tolerance`).
    let pre = pretrained(2, "vision_model.", 3);
    let ft = finetuned(&pre, 42, 3, 0.5);
    let tasks: Vec<(u32, ParamDict)> = (0..4).map(|i| (i, ft.clone())).collect();
    for history in [HistoryScope::Pooled, HistoryScope::PerModule] {
        for kappa in [0.0, 1.0, 3.0] {
            for merge in [MergeRule::SubspaceMerge, MergeRule::SumTruncate] {
                let cfg = MadeItConfig {
                    history,
                    merge,
                    ..config(kappa)
                };
                let m = run(cfg, &pre, &tasks);
                for me in m.modules() {
                    assert_eq!(me.len(), 1, "{history:?} kappa {kappa} {merge:?}");
                    assert_eq!(me.experts()[0].tasks().len(), 4);
                }
                for rep in &m.history()[1..] {
                    for r in &rep.modules {
                        assert!(r.scores.iter().all(|&s| s > 1.0 - 1e-5), "{:?}", r.scores);
                        let st = r.threshold.unwrap();
                        assert!(st.std < 1e-5, "{st:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn strict_rule_with_ties_below_full_affinity_creates() {
    // The tie rule only applies at full affinity: a tie at a lower score creates.
    let c = config(1.0);
    assert!(c.consolidates(1.0, 1.0));
    assert!(c.consolidates(0.99995, 1.00002));
    assert!(!c.consolidates(0.5, 0.5));
    assert!(c.consolidates(0.51, 0.5));
    assert!(!c.consolidates(1.0, f64::INFINITY));
    assert!(c.consolidates(0.0, f64::NEG_INFINITY));
    assert!(!c.consolidates(0.9, 1.2));
}

#[test]
fn per_module_history_at_step_two_creates_unless_duplicate() {
    // One score per module at step 2: sigma = 0 and tau = that score, so distinct tasks
    // create (a tie below full affinity is not exceeded).
    let cfg = MadeItConfig {
        history: HistoryScope::PerModule,
        ..config(0.0)
    };
    let (_, _, m) = absorb_distinct(1, 5, 2, cfg);
    for r in &m.history()[1].modules {
        let st = r.threshold.unwrap();
        assert_eq!(st.count, 1);
        assert_eq!(st.std, 0.0);
        assert_eq!(st.threshold, r.scores[0]);
        assert_eq!(r.action, Action::Created { expert: 1 });
    }
}

#[test]
fn pooled_threshold_matches_recorded_history() {
    let cfg = config(0.5);
    let (_, _, m) = absorb_distinct(2, 7, 5, cfg.clone());
    let mut pool: Vec<f64> = Vec::new();
    for rep in &m.history()[1..] {
        for r in &rep.modules {
            pool.extend(&r.scores);
        }
        let n = pool.len() as f64;
        let mean = pool.iter().sum::<f64>() / n;
        let std = (pool.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        for r in &rep.modules {
            let st = r.threshold.unwrap();
            assert_eq!(st.count, pool.len());
            assert!((st.mean - mean).abs() < 1e-12);
            assert!((st.std - std).abs() < 1e-12);
            assert!((st.threshold - (mean + 0.5 * std)).abs() < 1e-12);
            let smax = r.scores.iter().cloned().fold(f64::MIN, f64::max);
            assert_eq!(
                r.action.is_consolidation(),
                cfg.consolidates(smax, st.threshold)
            );
            assert_eq!(r.best.map(|b| r.scores[b]), Some(smax));
            assert!(r.scores.iter().all(|s| (0.0..=1.0).contains(s)));
        }
    }
    let st = ThresholdStats::compute(&cfg, pool.iter()).unwrap();
    assert_eq!(st.count, pool.len());
}

#[test]
fn related_tasks_are_consolidated_and_unrelated_ones_kept_apart() {
    // Tasks 0 and 1 share their update subspace (different strengths); task 2 is
    // unrelated. With kappa = 0 the related pair merges, the unrelated one does not.
    let pre = pretrained(1, "", 9);
    let a = finetuned(&pre, 500, 3, 0.5);
    let mut b = ParamDict::new();
    for (name, t) in a.iter() {
        let p0 = pre.get(name).unwrap();
        let data: Vec<f32> = t
            .data()
            .iter()
            .zip(p0.data())
            .map(|(x, y)| y + 1.5 * (x - y))
            .collect();
        b.insert(name, Tensor::new(t.shape().to_vec(), data).unwrap());
    }
    let c = finetuned(&pre, 900, 3, 0.5);
    let m = run(config(0.0), &pre, &[(0, a), (1, b), (2, c)]);
    for me in m.modules() {
        assert_eq!(me.expert_of_task(0), me.expert_of_task(1), "{}", me.name());
        assert_ne!(me.expert_of_task(0), me.expert_of_task(2), "{}", me.name());
    }
}

#[test]
fn cosine_ablation_scores_in_range_and_duplicate_is_one() {
    let pre = pretrained(1, "", 11);
    let mut tasks = distinct_tasks(&pre, 3);
    tasks.push((77, tasks[1].1.clone()));
    for kappa in [1.0, f64::INFINITY] {
        let cfg = MadeItConfig {
            affinity: AffinityMetric::FlatCosine,
            ..config(kappa)
        };
        let m = run(cfg, &pre, &tasks);
        for rep in &m.history()[1..] {
            for r in &rep.modules {
                assert!(r.scores.iter().all(|s| (-1.0..=1.0).contains(s)));
            }
        }
        if kappa.is_infinite() {
            // No consolidation: the duplicate of task 11 scores 1 against its expert.
            let last = m.history().last().unwrap();
            for (me, r) in m.modules().iter().zip(&last.modules) {
                let e = me.expert_of_task(11).unwrap();
                assert!(r.scores[e] > 1.0 - 1e-5, "{}: {:?}", me.name(), r.scores);
                assert!(r.scores.iter().enumerate().all(|(k, s)| k == e || *s < 0.9));
            }
        }
    }
}

#[test]
fn rho_one_single_task_reproduces_the_fine_tuned_targets() {
    let pre = pretrained(1, "", 13);
    let ft = finetuned(&pre, 3, 3, 0.5);
    let cfg = MadeItConfig {
        rho: 1.0,
        ..MadeItConfig::default()
    };
    let m = run(cfg, &pre, &[(5, ft.clone())]);
    let merged = m.materialize(&pre, &m.task_path(5).unwrap()).unwrap();
    for (name, t) in merged.iter() {
        let want = if t.shape().len() == 2 {
            ft.get(name).unwrap()
        } else {
            pre.get(name).unwrap()
        };
        let err = t.max_abs_diff(want).unwrap();
        assert!(err < 1e-5, "{name}: {err}");
    }
}

#[test]
fn materialized_delta_is_the_rank_r_truncation() {
    let pre = pretrained(1, "", 15);
    let ft = finetuned(&pre, 4, 6, 0.5);
    let m = run(config(1.0), &pre, &[(1, ft.clone())]);
    let merged = m.materialize(&pre, &m.task_path(1).unwrap()).unwrap();
    for (i, me) in m.modules().iter().enumerate() {
        let key = &me.module().weight_key;
        let dw = ft.get(key).unwrap().sub(pre.get(key).unwrap()).unwrap();
        let svd = madeit_linalg::thin_svd(dw.as_mat().unwrap()).unwrap();
        let r = me.rank();
        let optimum: f32 = svd.s[r..].iter().map(|x| x * x).sum::<f32>().sqrt();
        let got = merged.get(key).unwrap().sub(ft.get(key).unwrap()).unwrap();
        let err = got.l2_norm() as f32;
        assert!(
            (err - optimum).abs() < 1e-4 * (1.0 + optimum),
            "{key}: {err} vs {optimum}"
        );
        let delta = m.dense_delta(i, 0).unwrap();
        let direct = merged.get(key).unwrap().sub(pre.get(key).unwrap()).unwrap();
        assert!(delta.sub(&direct).unwrap().l2_norm() < 1e-5);
    }
}

#[test]
fn running_mean_of_non_target_parameters() {
    let cfg = MadeItConfig {
        non_target: NonTargetRule::RunningMean,
        ..config(1.0)
    };
    let (pre, tasks, m) = absorb_distinct(1, 17, 3, cfg);
    let nt = m.non_target_mean().unwrap();
    assert_eq!(nt.count(), 3);
    let merged = m.materialize(&pre, &m.task_path(10).unwrap()).unwrap();
    let targets = target_modules(&pre).unwrap();
    for (name, p0) in pre.iter() {
        if targets.iter().any(|t| t.weight_key == name) {
            assert!(!nt.mean().contains(name));
            continue;
        }
        let mean: Vec<f32> = (0..p0.numel())
            .map(|k| {
                tasks
                    .iter()
                    .map(|(_, ft)| ft.get(name).unwrap().data()[k] - p0.data()[k])
                    .sum::<f32>()
                    / 3.0
            })
            .collect();
        for (k, want) in mean.iter().enumerate() {
            assert!((nt.mean().get(name).unwrap().data()[k] - want).abs() < 1e-6);
            assert!((merged.get(name).unwrap().data()[k] - (p0.data()[k] + want)).abs() < 1e-6);
        }
    }
    // The default rule keeps theta0.
    let m = run(config(1.0), &pre, &tasks);
    assert!(m.non_target_mean().is_none());
    let merged = m.materialize(&pre, &m.task_path(11).unwrap()).unwrap();
    assert_eq!(
        merged.get("pre_layrnorm.weight").unwrap(),
        pre.get("pre_layrnorm.weight").unwrap()
    );
}

#[test]
fn randomized_candidates_match_exact_ones_on_low_rank_updates() {
    let pre = pretrained(1, "", 19);
    let ft = finetuned(&pre, 8, 3, 0.5);
    let cfg = |svd| MadeItConfig {
        rho: 0.25,
        svd,
        ..MadeItConfig::default()
    };
    let exact = run(cfg(CandidateSvd::Exact), &pre, &[(1, ft.clone())]);
    let rand = run(
        cfg(CandidateSvd::Randomized {
            oversample: 4,
            power_iters: 2,
            seed: 3,
        }),
        &pre,
        &[(1, ft)],
    );
    for (a, b) in exact.modules().iter().zip(rand.modules()) {
        let (ea, eb) = (&a.experts()[0], &b.experts()[0]);
        // Only the rank-3 signal is well determined; compare the top-3 directions.
        let s = madeit_grassmann::Subspace::new(ea.u().subcols(0, 3).to_owned()).unwrap();
        let t = madeit_grassmann::Subspace::new(eb.u().subcols(0, 3).to_owned()).unwrap();
        assert!(s.affinity(&t).unwrap() > 0.999, "{}", a.name());
        for (x, y) in ea.s().iter().zip(eb.s()).take(3) {
            assert!((x - y).abs() < 1e-3 * ea.s()[0]);
        }
    }
}

#[test]
fn errors_leave_the_state_unchanged() {
    let pre = pretrained(1, "", 21);
    let ft = finetuned(&pre, 1, 3, 0.5);
    let mut m = MadeIt::new(config(1.0)).unwrap();
    m.absorb(&pre, &ft, 1).unwrap();
    let before = m.clone();

    assert!(matches!(
        m.absorb(&pre, &ft, 1),
        Err(ExpertsError::DuplicateTask { task: 1 })
    ));

    let key = "encoder.layers.0.mlp.fc1.weight";
    let mut bad = ft.get(key).unwrap().clone();
    bad.data_mut()[5] = f32::NAN;
    let err = m.absorb(&pre, &with_tensor(&ft, key, bad), 2).unwrap_err();
    assert!(
        matches!(&err, ExpertsError::NonFinite { name, index: 5 } if name == key),
        "{err}"
    );

    let wrong = Tensor::new(vec![MLP, D + 1], vec![0.0; MLP * (D + 1)]).unwrap();
    let err = m
        .absorb(&pre, &with_tensor(&ft, key, wrong), 2)
        .unwrap_err();
    assert!(
        matches!(&err, ExpertsError::ShapeMismatch { name, .. } if name == key),
        "{err}"
    );

    let mut missing = ft.clone();
    missing.remove(key);
    let err = m.absorb(&pre, &missing, 2).unwrap_err();
    assert!(
        matches!(&err, ExpertsError::MissingTensor { name, .. } if name == key),
        "{err}"
    );

    let extra = with_tensor(
        &ft,
        "extra.weight",
        Tensor::new(vec![1], vec![0.0]).unwrap(),
    );
    let err = m.absorb(&pre, &extra, 2).unwrap_err();
    assert!(matches!(&err, ExpertsError::MissingTensor { name, .. } if name == "extra.weight"));

    let pre2 = pretrained(2, "", 21);
    let ft2 = finetuned(&pre2, 1, 3, 0.5);
    let err = m.absorb(&pre2, &ft2, 2).unwrap_err();
    assert!(
        matches!(err, ExpertsError::ModuleSetMismatch { .. }),
        "{err}"
    );

    // A NaN in an unused non-target tensor is ignored under the default rule...
    let bias = "encoder.layers.0.mlp.fc1.bias";
    let mut nan_bias = ft.get(bias).unwrap().clone();
    nan_bias.data_mut()[0] = f32::NAN;
    assert_eq!(m, before);
    let mut m2 = m.clone();
    m2.absorb(&pre, &with_tensor(&ft, bias, nan_bias.clone()), 2)
        .unwrap();
    // ...but not under the running-mean rule.
    let mut m3 = MadeIt::new(MadeItConfig {
        non_target: NonTargetRule::RunningMean,
        ..config(1.0)
    })
    .unwrap();
    let err = m3
        .absorb(&pre, &with_tensor(&ft, bias, nan_bias), 2)
        .unwrap_err();
    assert!(
        matches!(&err, ExpertsError::NonFinite { name, .. } if name == bias),
        "{err}"
    );
    assert!(m3.tasks().is_empty());
}

#[test]
fn config_check_rejects_bad_values() {
    // Each case: the field named by the error, and how the default is spoiled.
    type Case = (&'static str, fn(&mut MadeItConfig));
    let cases: [Case; 6] = [
        ("rho", |c| c.rho = 0.0),
        ("rho", |c| c.rho = 1.5),
        ("rho", |c| c.rho = f64::NAN),
        ("kappa", |c| c.kappa = f64::NAN),
        ("polar_rank_tol", |c| c.polar_rank_tol = -1.0),
        ("tie_tolerance", |c| c.tie_tolerance = 0.7),
    ];
    for (field, spoil) in cases {
        let mut cfg = MadeItConfig::default();
        spoil(&mut cfg);
        match cfg.check() {
            Err(ExpertsError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
        assert!(MadeIt::new(cfg).is_err());
    }
    MadeItConfig::default().check().unwrap();
}

#[test]
fn config_serde_defaults_and_infinities() {
    let c: MadeItConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(c, MadeItConfig::default());
    assert_eq!(c.rho, 0.1);
    assert_eq!(c.kappa, 1.0);
    for kappa in [f64::INFINITY, f64::NEG_INFINITY, 2.5] {
        let c = MadeItConfig {
            kappa,
            ..MadeItConfig::default()
        };
        let back: MadeItConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
    assert!(serde_json::from_str::<MadeItConfig>(r#"{"rhoo": 1}"#).is_err());
    let c: MadeItConfig = serde_json::from_str(
        r#"{"svd": {"randomized": {"oversample": 5, "power_iters": 1, "seed": 9}}}"#,
    )
    .unwrap();
    assert_eq!(
        c.svd,
        CandidateSvd::Randomized {
            oversample: 5,
            power_iters: 1,
            seed: 9
        }
    );
    let c: MadeItConfig = serde_json::from_str(r#"{"svd": "exact"}"#).unwrap();
    assert_eq!(c.svd, CandidateSvd::Exact);
    let c: MadeItConfig = serde_json::from_str(
        r#"{"svd": {"auto": {"min_dim": 64, "oversample": 3, "power_iters": 1, "seed": 2}}}"#,
    )
    .unwrap();
    assert_eq!(
        c.svd,
        CandidateSvd::Auto {
            min_dim: 64,
            oversample: 3,
            power_iters: 1,
            seed: 2
        }
    );
    let back: MadeItConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let bad = MadeItConfig {
        svd: CandidateSvd::Auto {
            min_dim: 1,
            oversample: 1,
            power_iters: 65,
            seed: 0,
        },
        ..MadeItConfig::default()
    };
    assert!(bad.check().is_err());
}

#[test]
fn the_default_svd_is_randomized_from_512_up_and_exact_below() {
    let svd = MadeItConfig::default().svd;
    let randomized = CandidateSvd::Randomized {
        oversample: 10,
        power_iters: 2,
        seed: 0,
    };
    // CLIP ViT-B's modules.
    assert_eq!(svd.for_shape(768, 768), randomized);
    assert_eq!(svd.for_shape(3072, 768), randomized);
    assert_eq!(svd.for_shape(768, 3072), randomized);
    assert_eq!(svd.for_shape(512, 512), randomized);
    // The zoo's (width 144, MLP 576) and small test models.
    assert_eq!(svd.for_shape(144, 144), CandidateSvd::Exact);
    assert_eq!(svd.for_shape(576, 144), CandidateSvd::Exact);
    assert_eq!(svd.for_shape(511, 4096), CandidateSvd::Exact);
    // Explicit choices are kept whatever the shape.
    assert_eq!(CandidateSvd::Exact.for_shape(768, 768), CandidateSvd::Exact);
    assert_eq!(randomized.for_shape(8, 8), randomized);
}

#[test]
fn auto_gives_the_exact_result_below_its_threshold() {
    let pre = pretrained(1, "", 19);
    let ft = finetuned(&pre, 8, 3, 0.5);
    let exact = run(
        MadeItConfig {
            svd: CandidateSvd::Exact,
            ..MadeItConfig::default()
        },
        &pre,
        &[(1, ft.clone())],
    );
    let auto = run(MadeItConfig::default(), &pre, &[(1, ft)]);
    for (a, b) in exact.modules().iter().zip(auto.modules()) {
        let (ea, eb) = (&a.experts()[0], &b.experts()[0]);
        assert!(ea.u().to_owned() == eb.u().to_owned(), "{}", a.name());
        assert_eq!(ea.s(), eb.s(), "{}", a.name());
    }
}
