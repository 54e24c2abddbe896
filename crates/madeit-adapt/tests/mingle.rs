//! MINGLE end to end on a tiny random tower: experts, gates, adaptation, subspaces, state,
//! variants and input validation.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;

use burn::prelude::*;
use common::{
    Fixture, UnwrapAdmission, absorb, absorb_with, absorbed, fixture, quick_config, random_params,
};
use madeit_adapt::{
    AdamOptions, AdaptError, AdaptState, AdmitError, ContinualMethod, GateProjection, GateTrainer,
    GradientProjector, Mingle, MingleConfig, SeedBatches, SeedImages, SeedTask, TargetSet,
    TestTimeMerger, seed_pass, teacher_logits,
};
use madeit_params::ParamDict;
use madeit_stream::{MergedModel, TaskId};
use madeit_vit::{ClipVisionConfig, ClipVisionModel, GateValues, ModuleId, ModuleKind};

fn merger(f: &Fixture, config: MingleConfig) -> Mingle {
    Mingle::new(config, f.cfg.clone(), Device::flex()).unwrap()
}

#[test]
fn two_tasks_grow_experts_gates_and_subspaces() {
    let f = fixture(2, 10);
    let mut m = merger(&f, quick_config());
    let n_mod = 6 * f.cfg.num_hidden_layers;
    assert_eq!(m.modules().len(), n_mod);
    let r1 = absorb(&mut m, &f, 0);
    assert_eq!((r1.base.step, r1.losses.len(), r1.seed_samples), (1, 6, 10));
    assert!(r1.kl_after.is_finite() && r1.kl_after >= 0.0);
    // No subspace yet at task 1: no projection, no lambda metrics.
    assert!(!r1.base.metrics.contains_key("lambda_mean"));
    assert_eq!(r1.base.metrics["mean_k_eff"], 0.0);
    let r2 = absorb(&mut m, &f, 1);
    assert_eq!(r2.base.step, 2);
    assert!(r2.base.metrics["mean_k_eff"] >= 1.0);
    assert!(r2.base.metrics["lambda_mean"] > 0.0 && r2.base.metrics["lambda_mean"] <= 1.0);
    assert!(r2.base.metrics["mean_projected_fraction"] < 1.0);
    for &module in m.modules() {
        let (d_out, d_in) = f.cfg.module_dims(module.kind);
        let experts = m.experts(module);
        assert_eq!(experts.len(), 2);
        // Rank 64 capped at half the smaller side of the module.
        assert_eq!(experts[0].rank(), 64.min(d_out.min(d_in) / 2));
        assert_eq!(m.gate_values().gates(module).len(), 2);
        let u = m.subspace(module).unwrap();
        assert_eq!(u.shape(), (d_in, 6), "k = 3 directions per task");
        let gram = u.transpose() * u;
        for i in 0..6 {
            for j in 0..6 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((gram[(i, j)] - want).abs() < 1e-5);
            }
        }
    }
    // q, k and v read the same input: same subspace.
    let q = m.subspace(ModuleId::new(1, ModuleKind::Q)).unwrap();
    let v = m.subspace(ModuleId::new(1, ModuleKind::V)).unwrap();
    assert_eq!(q, v);
    assert_eq!(m.tasks(), vec![TaskId::new("task0"), TaskId::new("task1")]);

    // The merged model as named tensors: one expert per task on every target weight.
    let MergedModel::Experts(em) = m.merged_model(&f.theta0).unwrap() else {
        panic!("MINGLE keeps experts")
    };
    assert_eq!(em.experts.len(), n_mod);
    let name = ModuleId::new(0, ModuleKind::Fc1).weight_name();
    let list = &em.experts[&name];
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].tasks, vec![TaskId::new("task1")]);
    // up . down = U diag(s) V^T of the stored factors.
    let f1 = &m.experts(ModuleId::new(0, ModuleKind::Fc1))[1];
    let dense = f1.to_dense().unwrap();
    let (up, down) = (list[1].up(), list[1].down());
    let prod = up.as_mat().unwrap() * down.as_mat().unwrap();
    let (rows, cols) = prod.shape();
    for i in 0..rows {
        for j in 0..cols {
            assert!((prod[(i, j)] - dense.data()[i * cols + j]).abs() < 1e-5);
        }
    }
}

#[test]
fn adaptation_lowers_the_kl_on_the_seed_set() {
    // A larger step size than the paper's 1e-4 so that a few steps on a tiny tower move the
    // gates visibly.
    let f = fixture(1, 10);
    let cfg = MingleConfig {
        report_initial_kl: true,
        adam: AdamOptions {
            lr: 1e-2,
            steps: 25,
            ..quick_config().adam
        },
        ..quick_config()
    };
    let mut m = merger(&f, cfg);
    let r = absorb(&mut m, &f, 0);
    let before = r.kl_before.unwrap();
    assert!(
        before > 1e-3,
        "the fine-tuned model must differ from the pretrained one"
    );
    assert!(r.kl_after < 0.8 * before, "KL {before} -> {}", r.kl_after);
    let head: f64 = r.losses[..5].iter().sum();
    let tail: f64 = r.losses[r.losses.len() - 5..].iter().sum();
    assert!(tail < head, "losses {:?}", r.losses);
}

#[test]
fn gradients_reach_only_the_new_gates_and_hard_projection_is_orthogonal() {
    let f = fixture(2, 10);
    let config = MingleConfig {
        projection: GateProjection::Hard,
        ..quick_config()
    };
    let mut m = merger(&f, config.clone());
    absorb(&mut m, &f, 0);
    let before = m.gate_values().clone();
    absorb(&mut m, &f, 1);
    let after = m.gate_values();
    for &module in m.modules() {
        // The first task's gate is frozen bit for bit; the new one moved.
        assert_eq!(after.gates(module)[0], before.gates(module)[0], "{module}");
        assert_eq!(after.gates(module).len(), 2);
    }

    // One step by hand on the state after task 1, with a second expert and gate added.
    let mut m1 = merger(&f, config.clone());
    absorb(&mut m1, &f, 0);
    let backbone = ClipVisionModel::from_params(&f.cfg, &f.theta0).unwrap();
    let (_, ft, seed, head) = &f.tasks[1];
    let teacher_model = ClipVisionModel::from_params(&f.cfg, ft).unwrap();
    let teacher = teacher_logits(&teacher_model, head, seed, 4).unwrap();
    let mut experts = BTreeMap::new();
    let mut gates = m1.gate_values().clone();
    for &module in m1.modules() {
        let mut list = m1.experts(module).to_vec();
        list.push(list[0].clone());
        experts.insert(module, list);
    }
    gates
        .push_random(&f.cfg, m1.modules().iter().copied(), 0.01, 0.0, 9)
        .unwrap();
    let projectors: BTreeMap<ModuleId, GradientProjector> = m1
        .modules()
        .iter()
        .map(|&module| {
            let u = m1.subspace(module).unwrap();
            (
                module,
                GradientProjector::new(u, GateProjection::Hard, 1.0, 0.99),
            )
        })
        .collect();
    let trainer = GateTrainer::new(
        &backbone,
        &experts,
        &gates,
        projectors.clone(),
        SeedTask {
            head,
            seed,
            teacher: &teacher,
        },
        &config,
    )
    .unwrap();
    let (loss, grads) = trainer.loss_and_gradients(&[0, 1, 2]).unwrap();
    assert!(loss.is_finite());
    // Only the newest gate of every module (weight and bias) has a gradient.
    assert_eq!(grads.len(), 2 * m1.modules().len());
    let mut nonzero = 0;
    for (module, proj) in projectors {
        let mut proj = proj;
        let u = m1.subspace(module).unwrap();
        let g = trainer.newest_weight_grad(&grads, module).unwrap().unwrap();
        let norm: f64 = g.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            nonzero += 1;
        }
        let p = proj.project(&g).unwrap();
        for c in 0..u.ncols() {
            let dot: f64 = (0..u.nrows())
                .map(|i| f64::from(u[(i, c)]) * f64::from(p[i]))
                .sum();
            assert!(
                dot.abs() <= 1e-5 * norm.max(1e-12),
                "{module}: U^T g' = {dot}"
            );
        }
    }
    assert!(nonzero > 0, "some gate gradient must be nonzero");
}

#[test]
fn the_recording_pass_matches_the_gated_model() {
    let f = fixture(2, 10);
    let m = absorbed(merger(&f, quick_config()), &f, 2);
    let backbone = ClipVisionModel::from_params(&f.cfg, &f.theta0).unwrap();
    let gated = m.gated_model(&backbone).unwrap();
    let (_, ft, seed, head) = &f.tasks[1];
    let teacher_model = ClipVisionModel::from_params(&f.cfg, ft).unwrap();
    let teacher = teacher_logits(&teacher_model, head, seed, 4).unwrap();
    let batches = SeedBatches::new(seed.len(), 4, 5).epoch();
    let experts: BTreeMap<_, _> = m
        .modules()
        .iter()
        .map(|&x| (x, m.experts(x).to_vec()))
        .collect();
    let pass = seed_pass(
        &backbone,
        &experts,
        m.gate_values(),
        SeedTask {
            head,
            seed,
            teacher: &teacher,
        },
        &batches,
        2.0,
        &Default::default(),
    )
    .unwrap();
    let mut student = Vec::new();
    let mut reference = Vec::new();
    for b in &batches {
        student.extend(
            gated
                .logits(head, seed.gather(b), b.len())
                .unwrap()
                .into_data(),
        );
        for &i in b {
            reference.extend_from_slice(&teacher[i * 5..(i + 1) * 5]);
        }
    }
    let kl = madeit_adapt::mean_kl(&student, &reference, 5, 2.0);
    assert!(
        (kl - pass.kl).abs() <= 1e-4 * kl.max(1.0),
        "{kl} vs {}",
        pass.kl
    );
}

fn save_and_load(state: &AdaptState) -> AdaptState {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    state.tensors.save(&path).unwrap();
    let json = state.metadata_json().unwrap();
    AdaptState::from_parts(&json, ParamDict::load(&path).unwrap()).unwrap()
}

#[test]
fn state_round_trip_resumes_the_stream() {
    let f = fixture(3, 10);
    let mut a = absorbed(merger(&f, quick_config()), &f, 2);
    let state = save_and_load(&a.state().unwrap());
    let mut b = merger(&f, quick_config());
    b.restore(&state).unwrap();
    assert_eq!(b.state().unwrap(), a.state().unwrap());
    assert_eq!(b.tasks(), a.tasks());
    assert_eq!(
        b.merged_model(&f.theta0).unwrap(),
        a.merged_model(&f.theta0).unwrap()
    );
    // The next task gives the same result on the resumed and the uninterrupted merger.
    let ra = absorb(&mut a, &f, 2);
    let rb = absorb(&mut b, &f, 2);
    assert_eq!(ra.losses, rb.losses);
    assert_eq!(a.state().unwrap(), b.state().unwrap());
}

#[test]
fn restore_rejects_foreign_or_damaged_states() {
    let f = fixture(1, 10);
    let a = absorbed(merger(&f, quick_config()), &f, 1);
    let state = a.state().unwrap();
    let fresh = || merger(&f, quick_config());

    let mut other = merger(
        &f,
        MingleConfig {
            rank: 8,
            ..quick_config()
        },
    );
    assert!(matches!(
        other.restore(&state),
        Err(AdaptError::InvalidState { .. })
    ));
    assert_eq!(other.num_tasks(), 0);

    // The name of the first state tensor starting with `prefix`.
    let first_tensor = |prefix: &str| {
        state
            .tensors
            .keys()
            .find(|k| k.starts_with(prefix))
            .unwrap()
            .to_owned()
    };
    let mut missing = state.clone();
    let name = first_tensor("gate.");
    missing.tensors.remove(&name);
    let mut m = fresh();
    assert!(
        matches!(m.restore(&missing), Err(AdaptError::StateTensor { name: n, .. }) if n == name)
    );
    assert_eq!(m.num_tasks(), 0, "a failed restore changes nothing");

    let mut extra = state.clone();
    extra.tensors.insert(
        "stray",
        madeit_params::Tensor::new(vec![1], vec![0.0]).unwrap(),
    );
    assert!(matches!(
        fresh().restore(&extra),
        Err(AdaptError::StateTensor { .. })
    ));

    let mut bad_shape = state.clone();
    bad_shape.tensors.insert(
        first_tensor("subspace."),
        madeit_params::Tensor::new(vec![2, 2], vec![0.0; 4]).unwrap(),
    );
    assert!(matches!(
        fresh().restore(&bad_shape),
        Err(AdaptError::StateTensor { .. })
    ));

    let mut wrong_method = state.clone();
    wrong_method.metadata.method = "opcm".into();
    assert!(matches!(
        fresh().restore(&wrong_method),
        Err(AdaptError::InvalidState { .. })
    ));
    assert!(AdaptState::from_parts("{", ParamDict::new()).is_err());
    let json = state
        .metadata_json()
        .unwrap()
        .replace("madeit-adapt-state", "other");
    assert!(AdaptState::from_parts(&json, ParamDict::new()).is_err());
}

#[test]
fn bad_inputs_are_rejected_and_leave_the_merger_unchanged() {
    let f = fixture(2, 10);
    let mut m = merger(&f, quick_config());
    assert!(matches!(
        m.merged_model(&f.theta0),
        Err(AdaptError::EmptyStream { .. })
    ));
    let backbone = ClipVisionModel::from_params(&f.cfg, &f.theta0).unwrap();
    assert!(matches!(
        m.gated_model(&backbone),
        Err(AdaptError::EmptyStream { .. })
    ));
    absorb(&mut m, &f, 0);
    let snapshot = m.state().unwrap();
    let (id0, ft0, seed0, head0) = &f.tasks[0];
    let (id1, ft1, seed1, head1) = &f.tasks[1];

    let e = absorb_with(&mut m, &f.theta0, ft1, id0, seed1.clone(), head1).unwrap_admission();
    assert!(matches!(e, AdmitError::DuplicateTaskName { .. }), "{e}");
    let e = absorb_with(&mut m, &f.theta0, ft0, id1, seed0.clone(), head0).unwrap_admission();
    assert!(matches!(e, AdmitError::DuplicateTask { .. }), "{e}");
    let other0 = random_params(&f.cfg, 77);
    let e = absorb_with(&mut m, &other0, ft1, id1, seed1.clone(), head1).unwrap_admission();
    assert!(matches!(e, AdmitError::PretrainedChanged { .. }), "{e}");
    let mut nan = ft1.clone();
    nan.get_mut("encoder.layers.0.mlp.fc1.weight")
        .unwrap()
        .data_mut()[3] = f32::NAN;
    let e = absorb_with(&mut m, &f.theta0, &nan, id1, seed1.clone(), head1).unwrap_admission();
    assert!(matches!(e, AdmitError::NonFinite { .. }), "{e}");
    assert!(
        e.to_string().contains("encoder.layers.0.mlp.fc1.weight"),
        "{e}"
    );
    let mut short = ft1.clone();
    short.remove("encoder.layers.1.mlp.fc2.bias");
    let e = absorb_with(&mut m, &f.theta0, &short, id1, seed1.clone(), head1).unwrap_admission();
    assert!(matches!(e, AdmitError::Incompatible { .. }), "{e}");
    let mut px = seed1.pixels().to_vec();
    px[5] = f32::INFINITY;
    for (what, seed) in [
        ("no seed images", SeedImages::new(Vec::new(), 0)),
        ("10 values for 2 images", SeedImages::new(vec![0.0; 10], 2)),
        ("an infinite pixel", SeedImages::new(px, seed1.len())),
    ] {
        let e = absorb_with(&mut m, &f.theta0, ft1, id1, seed, head1).unwrap_err();
        assert!(matches!(e, AdaptError::SeedData { .. }), "{what}: {e}");
    }
    let wide = madeit_params::Tensor::new(vec![3, 7], vec![1.0; 21]).unwrap();
    let wide = madeit_vit::TaskHead::new("wide", &wide, Vec::new()).unwrap();
    let e = absorb_with(&mut m, &f.theta0, ft1, id1, seed1.clone(), &wide).unwrap_err();
    assert!(matches!(e, AdaptError::Head { .. }), "{e}");
    assert_eq!(m.state().unwrap(), snapshot, "failed steps change nothing");
    let other_tower = ClipVisionModel::from_params(
        &ClipVisionConfig {
            num_hidden_layers: 1,
            ..f.cfg.clone()
        },
        &{
            let mut p = f.theta0.clone();
            let names: Vec<String> = p
                .keys()
                .filter(|k| k.contains("layers.1."))
                .map(str::to_owned)
                .collect();
            for n in names {
                p.remove(&n);
            }
            p
        },
    )
    .unwrap();
    assert!(m.gated_model(&other_tower).is_err());
    // The good step still works afterwards.
    absorb(&mut m, &f, 1);
    assert_eq!(m.num_tasks(), 2);
}

#[test]
fn configuration_is_checked_and_parsed() {
    let cfg = ClipVisionConfig::tiny();
    let bad: [fn(&mut MingleConfig); 9] = [
        |c| c.rank = 0,
        |c| c.subspace_k = 0,
        |c| c.beta = 1.0,
        |c| c.gamma = -1.0,
        |c| c.adam.lr = f64::NAN,
        |c| c.temperature = 0.0,
        |c| c.max_rank_fraction = 1.5,
        |c| c.adam.batch_size = 0,
        |c| c.targets = TargetSet::Custom(Vec::new()),
    ];
    for edit in bad {
        let mut c = MingleConfig::default();
        edit(&mut c);
        assert!(
            matches!(
                Mingle::new(c.clone(), cfg.clone(), Device::flex()),
                Err(AdaptError::InvalidParameter(_))
            ),
            "{c:?}"
        );
    }
    let d = MingleConfig::default();
    assert_eq!(
        (
            d.rank,
            d.subspace_k,
            d.adam.steps,
            d.adam.batch_size,
            d.seed_images.seed_per_class
        ),
        (64, 3, 50, 16, 5)
    );
    assert_eq!(
        (d.gamma, d.beta, d.adam.lr, d.temperature, d.gate_init_std),
        (1.0, 0.99, 1e-4, 2.0, 0.01)
    );
    assert_eq!(d.effective_rank(768, 768), 64);
    assert_eq!(d.effective_rank(64, 128), 32);
    assert_eq!(d.effective_rank(3, 1), 1);
    let json = serde_json::to_string(&MingleConfig::lightweight()).unwrap();
    assert_eq!(
        MingleConfig::from_json_str(&json).unwrap(),
        MingleConfig::lightweight()
    );
    assert_eq!(
        MingleConfig::from_json_str(r#"{"projection": "hard", "targets": "lightweight"}"#).unwrap(),
        MingleConfig {
            projection: GateProjection::Hard,
            targets: TargetSet::Lightweight,
            ..MingleConfig::default()
        }
    );
    assert!(matches!(
        MingleConfig::from_json_str(r#"{"rnak": 3}"#),
        Err(AdaptError::InvalidConfig { .. })
    ));
}

#[test]
fn variants_change_targets_and_projection() {
    let f = fixture(2, 10);
    let light = merger(
        &f,
        MingleConfig {
            targets: TargetSet::Lightweight,
            ..quick_config()
        },
    );
    assert_eq!(light.modules().len(), 4 * f.cfg.num_hidden_layers);
    assert!(
        light
            .modules()
            .iter()
            .all(|m| !matches!(m.kind, ModuleKind::Out | ModuleKind::Fc2))
    );

    // A merger with the gate projection `projection` after both tasks, and the report of
    // the second.
    let two_tasks = |projection| {
        let config = MingleConfig {
            projection,
            ..quick_config()
        };
        let mut m = absorbed(merger(&f, config), &f, 1);
        let r = absorb(&mut m, &f, 1);
        (m, r)
    };
    let (hard, r) = two_tasks(GateProjection::Hard);
    assert_eq!(r.base.metrics["lambda_min"], 1.0);

    let (none, r) = two_tasks(GateProjection::None);
    assert!(!r.base.metrics.contains_key("lambda_mean"));

    let (relaxed, r) = two_tasks(GateProjection::Relaxed);
    assert!(r.base.metrics["lambda_min"] < 1.0 && r.base.metrics["lambda_min"] > 0.0);
    // The three variants train different gates from the same start.
    let g = |m: &Mingle| m.gate_values().gates(ModuleId::new(0, ModuleKind::Q))[1].clone();
    assert_ne!(g(&hard), g(&none));
    assert_ne!(g(&relaxed), g(&none));
    let _: &GateValues = relaxed.gate_values();
}
