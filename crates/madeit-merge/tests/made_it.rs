//! MADE-IT behind the continual-merging contract: configuration, merged expert model,
//! task-id mapping, atomic steps and bit-identical resumption.
#![allow(clippy::unwrap_used, clippy::panic, clippy::float_cmp)]

mod common;

use common::{
    assert_rejected, assert_resumes_bit_identically, build_default, flattened, single, stream,
    with_value,
};
use madeit_merge::made_it::{MadeIt, NonTargetRule, TokenAggregation};
use madeit_merge::{
    ContinualMerger, ContinualMethod, ExpertModel, ExpertRouting, MadeItConfig, MadeItMerger,
    MergeError, MergedModel, MethodConfig, Step, TaskId,
};
use madeit_params::{ParamDict, Tensor};

fn id(s: &str) -> TaskId {
    TaskId::new(s)
}

fn configs() -> Vec<MadeItConfig> {
    vec![
        MadeItConfig {
            rho: 0.5,
            ..MadeItConfig::default()
        },
        // Lower threshold: consolidations happen, and the non-target mean is kept.
        MadeItConfig {
            rho: 0.5,
            kappa: -0.5,
            non_target: NonTargetRule::RunningMean,
            token_aggregation: TokenAggregation::ClsOnly,
            ..MadeItConfig::default()
        },
    ]
}

fn experts(model: MergedModel) -> ExpertModel {
    match model {
        MergedModel::Experts(m) => m,
        other => panic!("expected an expert model, got {other:?}"),
    }
}

/// `up · down` of an expert as a row-major `[out, in]` buffer.
fn product(up: &Tensor, down: &Tensor) -> Vec<f32> {
    let (u, d) = (up.as_mat().unwrap(), down.as_mat().unwrap());
    let mut out = Vec::new();
    for i in 0..u.nrows() {
        for j in 0..d.ncols() {
            out.push((0..u.ncols()).map(|k| u[(i, k)] * d[(k, j)]).sum());
        }
    }
    out
}

#[test]
fn configuration_parses_checks_and_builds() {
    let c = MethodConfig::from_toml_str("method = \"made_it\"").unwrap();
    assert_eq!(c, MethodConfig::MadeIt(MadeItConfig::default()));
    assert_eq!(c.name(), "made_it");
    assert_eq!(MethodConfig::default_for("made_it").unwrap(), c);
    let c = MethodConfig::from_toml_str(
        "method = \"made_it\"\nrho = 0.25\nkappa = \"inf\"\nhistory = \"per_module\"\n\
         svd = { randomized = { oversample = 4, power_iters = 2, seed = 9 } }",
    )
    .unwrap();
    let MethodConfig::MadeIt(inner) = &c else {
        panic!("{c:?}")
    };
    assert_eq!(inner.rho, 0.25);
    assert!(inner.kappa.is_infinite());
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(MethodConfig::from_json_str(&json).unwrap(), c, "{json}");

    let err = MethodConfig::from_toml_str("method = \"made_it\"\nrhoo = 0.1").unwrap_err();
    assert!(err.to_string().contains("rhoo"), "{err}");
    assert_rejected("method = \"made_it\"\nrho = 1.5", "rho");
    assert!(
        MadeItMerger::new(MadeItConfig {
            kappa: f64::NAN,
            ..MadeItConfig::default()
        })
        .is_err()
    );
}

#[test]
fn the_merged_model_is_the_backbone_with_the_experts_of_every_target_weight() {
    let (pre, tasks) = stream(4, 41);
    for cfg in configs() {
        let mut m = MadeItMerger::new(cfg.clone()).unwrap();
        for (i, ft) in tasks.iter().enumerate() {
            let r = m
                .absorb(&Step::new(&pre, ft, &id(&format!("t{i}"))))
                .unwrap();
            assert_eq!(r.step, i + 1);
            assert!(r.merged_delta_norm > 0.0);
            assert_eq!(m.task_id(&id(&format!("t{i}"))), Some(i as u32));
        }
        assert!(matches!(
            m.merged(&pre),
            Err(MergeError::NotDense {
                method: "made_it",
                ..
            })
        ));
        let model = experts(m.merged_model(&pre).unwrap());
        assert_eq!(
            model.routing,
            ExpertRouting::MadeItPaths {
                tokens: cfg.token_aggregation
            }
        );
        let state: &MadeIt = m.experts();
        let names: Vec<&str> = model.experts.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "encoder.layers.0.self_attn.q_proj.weight",
                "encoder.layers.0.mlp.fc1.weight",
                "encoder.layers.0.mlp.fc2.weight",
            ]
        );
        for (mi, me) in state.modules().iter().enumerate() {
            let list = &model.experts[&me.module().weight_key];
            assert_eq!(list.len(), me.len());
            for (e, x) in list.iter().enumerate() {
                // up · down is the expert's delta, and down^T has orthonormal columns.
                let dense = state.dense_delta(mi, e).unwrap();
                for (a, b) in product(&x.up(), &x.down()).iter().zip(dense.data()) {
                    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
                }
                let down = x.down();
                let d = down.as_mat().unwrap();
                for p in 0..d.nrows() {
                    for q in 0..d.nrows() {
                        let dot: f32 = (0..d.ncols()).map(|j| d[(p, j)] * d[(q, j)]).sum();
                        let want = if p == q { 1.0 } else { 0.0 };
                        assert!((dot - want).abs() < 1e-4, "V^T V [{p},{q}] = {dot}");
                    }
                }
                let want: Vec<TaskId> = me.experts()[e]
                    .tasks()
                    .iter()
                    .map(|&t| id(&format!("t{t}")))
                    .collect();
                assert_eq!(x.tasks, want);
            }
        }
        // Backbone: θ0, plus the running mean of the non-target task vectors if asked.
        for (name, p) in pre.iter() {
            let got = model.backbone.get(name).unwrap().data();
            let is_target = model.experts.contains_key(name);
            for (k, (&g, &p0)) in got.iter().zip(p.data()).enumerate() {
                let want = if cfg.non_target == NonTargetRule::RunningMean && !is_target {
                    let mean: f64 = tasks
                        .iter()
                        .map(|t| f64::from(t.get(name).unwrap().data()[k]) - f64::from(p0))
                        .sum::<f64>()
                        / tasks.len() as f64;
                    f64::from(p0) + mean
                } else {
                    f64::from(p0)
                };
                assert!((f64::from(g) - want).abs() < 1e-5, "{name}[{k}]");
            }
        }
        // The oracle path of a task, applied to the backbone, is `materialize`.
        let path = state.task_path(2).unwrap();
        let dense = state.materialize(&pre, &path).unwrap();
        for (name, t) in dense.iter() {
            let mut w = model.backbone.get(name).unwrap().data().to_vec();
            if let Some(list) = model.experts.get(name) {
                let x = list.iter().find(|x| x.tasks.contains(&id("t2"))).unwrap();
                for (a, b) in w.iter_mut().zip(product(&x.up(), &x.down())) {
                    *a += b;
                }
            }
            for (a, b) in w.iter().zip(t.data()) {
                assert!((a - b).abs() < 1e-5, "{name}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn a_resumed_stream_is_bit_identical_to_an_uninterrupted_one() {
    let (pre, tasks) = stream(5, 42);
    for cfg in configs() {
        assert_resumes_bit_identically(&MethodConfig::MadeIt(cfg), &pre, &tasks);
    }
}

#[test]
fn a_tampered_state_is_rejected_and_leaves_the_merger_unchanged() {
    let (pre, tasks) = stream(2, 43);
    let config = MethodConfig::MadeIt(configs().remove(0));
    let mut m = config.build().unwrap();
    for (i, ft) in tasks.iter().enumerate() {
        m.absorb(&Step::new(&pre, ft, &id(&format!("t{i}"))))
            .unwrap();
    }
    let good = m.state().unwrap();
    let mut target = config.build().unwrap();

    let mut missing = good.clone();
    let key = missing
        .tensors
        .keys()
        .find(|k| k.ends_with(".expert0.V"))
        .unwrap()
        .to_owned();
    missing.tensors.remove(&key);
    let err = target.restore(&missing).unwrap_err();
    assert!(err.to_string().contains(&key), "{err}");

    let mut extra = good.clone();
    extra
        .tensors
        .insert("experts.stray", Tensor::zeros(vec![1]).unwrap());
    assert!(target.restore(&extra).is_err());

    let mut ids = good.clone();
    ids.metadata.extra["task_ids"] = serde_json::json!([1, 0]);
    assert!(matches!(
        target.restore(&ids),
        Err(MergeError::InvalidState { .. })
    ));
    assert_eq!(target.num_tasks(), 0);
    target.restore(&good).unwrap();
    assert_eq!(target.state().unwrap(), good);
}

#[test]
fn failed_steps_change_nothing() {
    let (pre, tasks) = stream(3, 44);
    let mut m = build_default("made_it");
    m.absorb(&Step::new(&pre, &tasks[0], &id("a"))).unwrap();
    let before = m.state().unwrap();

    let nan = with_value(&tasks[1], "encoder.layers.0.mlp.fc2.weight", 5, f32::NAN);
    let err = m.absorb(&Step::new(&pre, &nan, &id("b"))).unwrap_err();
    assert!(
        matches!(
            err,
            MergeError::Admission(madeit_merge::AdmitError::NonFinite { .. })
        ),
        "{err:?}"
    );
    assert_eq!(m.state().unwrap(), before);

    let reshaped = flattened(&tasks[1], "encoder.layers.0.mlp.fc1.weight");
    let err = m.absorb(&Step::new(&pre, &reshaped, &id("b"))).unwrap_err();
    assert!(err.to_string().contains("fc1.weight"), "{err}");
    assert_eq!(m.state().unwrap(), before);

    // The failed steps did not consume a task id: the next task is id 1.
    m.absorb(&Step::new(&pre, &tasks[1], &id("b"))).unwrap();
    let mm = MadeItMerger::new(MadeItConfig::default()).unwrap();
    assert_eq!(mm.task_id(&id("b")), None);
    let model = experts(m.merged_model(&pre).unwrap());
    assert!(
        model
            .experts
            .values()
            .flatten()
            .flat_map(|x| &x.tasks)
            .all(|t| t.as_str() == "a" || t.as_str() == "b")
    );

    // A model without target modules is refused by MADE-IT itself, atomically.
    let plain = single("w", vec![2, 2], vec![0.0; 4]);
    let mut ft = ParamDict::new();
    ft.insert(
        "w",
        Tensor::new(vec![2, 2], vec![1.0, 0.0, 0.0, 0.0]).unwrap(),
    );
    let mut fresh = build_default("made_it");
    let empty = fresh.state().unwrap();
    let err = fresh.absorb(&Step::new(&plain, &ft, &id("a"))).unwrap_err();
    assert!(matches!(err, MergeError::Experts { .. }), "{err:?}");
    assert_eq!(fresh.state().unwrap(), empty);
    assert_eq!(fresh.num_tasks(), 0);
}
