//! C. LoRA-WEMoE on a tiny random tower: attention by continual task arithmetic, MLP experts,
//! router rows per task, the shared MLP router, adaptation, state and input validation.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use burn::prelude::*;
use common::{
    Fixture, UnwrapAdmission, absorb, absorb_with, absorbed, adam, adam_lr, expert_model, fixture,
    random_head,
};
use madeit_adapt::{
    AdamOptions, AdaptError, AdmitError, ContinualMethod, LoraWemoe, SeedImages, TestTimeMerger,
    WemoeConfig,
};
use madeit_params::max_abs_diff;
use madeit_stream::TaskId;
use madeit_vit::{
    ClipVisionConfig, ClipVisionModel, ExpertBank, GateBank, GateSharing, GateTraining, GateValues,
    LinearGate, ModuleId, ModuleKind,
};

fn quick() -> WemoeConfig {
    WemoeConfig {
        adam: adam(4, 4),
        ..WemoeConfig::default()
    }
}

fn merger(f: &Fixture, cfg: WemoeConfig) -> LoraWemoe {
    LoraWemoe::new(cfg, f.cfg.clone(), Device::flex()).unwrap()
}

fn embed(model: &ClipVisionModel, seed: &SeedImages) -> Vec<f32> {
    model
        .embed(seed.pixels().to_vec(), seed.len())
        .unwrap()
        .data()
        .to_vec()
}

#[test]
fn routers_gain_one_row_per_task_and_experts_follow_the_rank_rule() {
    let f = fixture(3, 10);
    let mut m = merger(&f, quick());
    for t in 0..3 {
        let report = absorb(&mut m, &f, t);
        assert_eq!(report.base.step, t + 1);
        assert_eq!(report.losses.len(), 4);
        for layer in 0..f.cfg.num_hidden_layers {
            let fc1 = ModuleId::new(layer, ModuleKind::Fc1);
            let fc2 = ModuleId::new(layer, ModuleKind::Fc2);
            assert_eq!(
                m.routers().gates(fc1).len(),
                t + 1,
                "layer {layer} step {t}"
            );
            assert!(m.routers().gates(fc2).is_empty());
            assert_eq!(m.experts(fc1).len(), t + 1);
            assert_eq!(m.experts(fc2).len(), t + 1);
            // Rank 64 capped at half of min(128, 64) = 32 for the first task, 16 after.
            let want = if t == 0 { 32 } else { 16 };
            assert_eq!(m.experts(fc1)[t].rank(), want);
            // Attention modules get no experts.
            assert!(m.experts(ModuleId::new(layer, ModuleKind::Q)).is_empty());
        }
    }
}

#[test]
fn attention_is_continual_task_arithmetic_and_mlp_biases_stay_pretrained() {
    let f = fixture(2, 10);
    let m = absorbed(merger(&f, quick()), &f, 2);
    let model = expert_model(&m, &f);
    for name in f.theta0.keys() {
        let p0 = f.theta0.get(name).unwrap().data();
        let got = model.backbone.get(name).unwrap().data();
        let is_attention = name.contains("self_attn.");
        for (k, (&a, &g)) in p0.iter().zip(got).enumerate() {
            let want = if is_attention {
                let t1 = f.tasks[0].1.get(name).unwrap().data()[k];
                let t2 = f.tasks[1].1.get(name).unwrap().data()[k];
                a + 0.3 * (t1 - a) + 0.3 * (t2 - a)
            } else {
                a
            };
            assert!((g - want).abs() < 1e-5, "{name}[{k}]: {g} vs {want}");
        }
    }
    // Experts on fc1 and fc2 only, one per task.
    assert_eq!(model.experts.len(), 2 * f.cfg.num_hidden_layers);
    assert!(model.experts.values().all(|e| e.len() == 2));
}

/// With a one-hot gate (weights 0, bias 1 for expert `e`, 0 for the others) the mixture is
/// the dense model `W0 + B_e A_e` on fc1 and fc2 of every layer.
#[test]
fn a_one_hot_gate_equals_the_dense_model_with_that_expert() {
    let f = fixture(2, 10);
    let m = absorbed(merger(&f, quick()), &f, 2);
    let merged = expert_model(&m, &f);
    let device = Device::flex();
    let backbone = ClipVisionModel::from_params_on(&f.cfg, &merged.backbone, &device).unwrap();
    let modules: Vec<ModuleId> = (0..f.cfg.num_hidden_layers)
        .flat_map(|l| {
            [
                ModuleId::new(l, ModuleKind::Fc1),
                ModuleId::new(l, ModuleKind::Fc2),
            ]
        })
        .collect();
    let bank = ExpertBank::new(
        &f.cfg,
        modules.iter().map(|&md| (md, m.experts(md).to_vec())),
        &device,
    )
    .unwrap();
    let images = &f.tasks[0].2;
    for e in 0..2 {
        let mut values = GateValues::new();
        for l in 0..f.cfg.num_hidden_layers {
            let fc1 = ModuleId::new(l, ModuleKind::Fc1);
            for k in 0..2 {
                values.push(
                    fc1,
                    LinearGate {
                        weight: vec![0.0; f.cfg.hidden_size],
                        bias: if k == e { 1.0 } else { 0.0 },
                    },
                );
            }
        }
        let gates = GateBank::new(&values, GateTraining::Frozen, &device)
            .unwrap()
            .with_sharing(GateSharing::SharedMlp);
        let px = backbone
            .pixels(images.pixels().to_vec(), images.len())
            .unwrap();
        let gated = backbone.forward_gated(px, &bank, &gates).unwrap();
        let gated = madeit_vit::to_host(&gated.embedding()).unwrap();

        let mut dense = merged.backbone.clone();
        for &md in &modules {
            let delta = m.experts(md)[e].to_dense().unwrap();
            let w = dense.get_mut(&md.weight_name()).unwrap();
            for (x, d) in w.data_mut().iter_mut().zip(delta.data()) {
                *x += d;
            }
        }
        let dense = ClipVisionModel::from_params_on(&f.cfg, &dense, &device).unwrap();
        let want = embed(&dense, images);
        let err = max_abs_diff(gated.data(), &want).expect("same length");
        assert!(err < 1e-4, "expert {e}: max |diff| {err}");
    }
}

#[test]
fn the_shared_router_rejects_gates_on_fc2_and_mismatched_counts() {
    let f = fixture(1, 10);
    let m = absorbed(merger(&f, quick()), &f, 1);
    let device = Device::flex();
    let fc1 = ModuleId::new(0, ModuleKind::Fc1);
    let fc2 = ModuleId::new(0, ModuleKind::Fc2);
    let bank = ExpertBank::new(
        &f.cfg,
        [
            (fc1, m.experts(fc1).to_vec()),
            (fc2, m.experts(fc2).to_vec()),
        ],
        &device,
    )
    .unwrap();
    // A shared-router gate bank of one zero-weight gate per `(module, width)`.
    let shared_gates = |gates: &[(ModuleId, usize)]| {
        let mut values = GateValues::new();
        for &(module, d) in gates {
            values.push(
                module,
                LinearGate {
                    weight: vec![0.0; d],
                    bias: 0.3,
                },
            );
        }
        GateBank::new(&values, GateTraining::Frozen, &device)
            .unwrap()
            .with_sharing(GateSharing::SharedMlp)
    };
    let (hidden, intermediate) = (f.cfg.hidden_size, f.cfg.intermediate_size);
    for (what, gates) in [
        (
            "a gate on fc2 of its own",
            [(fc1, hidden), (fc2, intermediate)],
        ),
        (
            "two router rows for one expert",
            [(fc1, hidden), (fc1, hidden)],
        ),
    ] {
        assert!(shared_gates(&gates).validate(&bank).is_err(), "{what}");
    }
}

#[test]
fn adaptation_lowers_the_entropy_on_a_fixed_batch() {
    let f = fixture(1, 10);
    // One batch holding every seed image, a larger step size: the entropy must go down.
    let cfg = WemoeConfig {
        adam: adam_lr(15, 10, 1e-2),
        ..WemoeConfig::default()
    };
    let mut m = merger(&f, cfg);
    let report = absorb(&mut m, &f, 0);
    let first = report.losses[0];
    let last = *report.losses.last().unwrap();
    assert!(last < first, "entropy {first} -> {last}");
    assert!(report.kl_after.is_finite() && report.kl_after >= 0.0);
}

#[test]
fn state_round_trips_and_a_resumed_stream_matches() {
    let f = fixture(2, 10);
    let mut a = absorbed(merger(&f, quick()), &f, 1);
    let state = a.state().unwrap();
    let mut b = merger(&f, quick());
    b.restore(&state).unwrap();
    assert_eq!(b.state().unwrap(), state);
    absorb(&mut a, &f, 1);
    absorb(&mut b, &f, 1);
    assert_eq!(a.state().unwrap(), b.state().unwrap());
    // The gated model of both gives the same embeddings.
    let base = ClipVisionModel::from_params_on(&f.cfg, &f.theta0, &Device::flex()).unwrap();
    let ga = a.gated_model(&base).unwrap();
    let gb = b.gated_model(&base).unwrap();
    let img = &f.tasks[1].2;
    let ea = ga.embed(img.pixels().to_vec(), img.len()).unwrap();
    let eb = gb.embed(img.pixels().to_vec(), img.len()).unwrap();
    assert_eq!(ea.data(), eb.data());
    // A state of another configuration is refused.
    let mut c = merger(&f, WemoeConfig { rank: 8, ..quick() });
    assert!(matches!(
        c.restore(&state),
        Err(AdaptError::InvalidState { .. })
    ));
}

#[test]
fn bad_inputs_are_typed_errors_and_leave_the_merger_unchanged() {
    let f = fixture(2, 10);
    let mut m = absorbed(merger(&f, quick()), &f, 1);
    let before = m.state().unwrap();
    let (id, theta, seed, head) = &f.tasks[1];
    // NaN weights.
    let mut bad = theta.clone();
    bad.get_mut("encoder.layers.0.mlp.fc1.weight")
        .unwrap()
        .data_mut()[3] = f32::NAN;
    let x = TaskId::new("x");
    let e = absorb_with(&mut m, &f.theta0, &bad, &x, seed.clone(), head).unwrap_admission();
    assert!(matches!(e, AdmitError::NonFinite { .. }), "{e}");
    // The same task name twice.
    let id0 = &f.tasks[0].0;
    let e = absorb_with(&mut m, &f.theta0, theta, id0, seed.clone(), head).unwrap_admission();
    assert!(matches!(e, AdmitError::DuplicateTaskName { .. }), "{e}");
    // No seed images.
    let no_seed = SeedImages::new(Vec::new(), 0);
    let e = absorb_with(&mut m, &f.theta0, theta, id, no_seed, head).unwrap_err();
    assert!(matches!(e, AdaptError::SeedData { .. }), "{e}");
    // A head of the wrong width.
    let wrong = random_head(
        &ClipVisionConfig {
            projection_dim: 16,
            ..f.cfg.clone()
        },
        5,
        9,
    );
    let e = absorb_with(&mut m, &f.theta0, theta, id, seed.clone(), &wrong).unwrap_err();
    assert!(matches!(e, AdaptError::Head { .. }), "{e}");
    assert_eq!(m.state().unwrap(), before);
    // Invalid configuration.
    assert!(matches!(
        LoraWemoe::new(
            WemoeConfig {
                rank: 0,
                ..WemoeConfig::default()
            },
            f.cfg.clone(),
            Device::flex()
        ),
        Err(AdaptError::InvalidParameter(_))
    ));
}

#[test]
fn option_groups_take_flat_keys_and_unknown_keys_are_refused() {
    use madeit_adapt::{
        AdaMergingConfig, LW_ADAMERGING, MINGLE, MingleConfig, SeedImageOptions, SeedSource,
        parse_config,
    };
    let given = serde_json::json!({"lr": 0.01, "steps": 3, "seed_source": "test_split"});
    let wemoe: WemoeConfig = parse_config("c_lora_wemoe", given.clone()).unwrap();
    let ada: AdaMergingConfig = parse_config(LW_ADAMERGING, given.clone()).unwrap();
    let mingle: MingleConfig = parse_config(MINGLE, given).unwrap();
    let (d_wemoe, d_ada, d_mingle) = (
        WemoeConfig::default(),
        AdaMergingConfig::default(),
        MingleConfig::default(),
    );
    let adam = AdamOptions {
        lr: 0.01,
        steps: 3,
        ..AdamOptions::default()
    };
    let images = SeedImageOptions {
        seed_source: SeedSource::TestSplit,
        ..SeedImageOptions::default()
    };
    // The given keys land in the groups; every other key keeps its method's default (WEMoE's
    // seed is 0, the others' 42).
    let expect_wemoe = WemoeConfig {
        adam,
        seed_images: images,
        ..d_wemoe.clone()
    };
    assert_eq!(wemoe, expect_wemoe);
    assert_eq!((wemoe.seed, ada.seed, mingle.seed), (0, 42, 42));
    let expect_ada = AdaMergingConfig {
        adam,
        seed_images: images,
        ..d_ada.clone()
    };
    assert_eq!(ada, expect_ada);
    assert_eq!((mingle.adam, mingle.seed_images), (adam, images));

    // Written back with flat keys, and read again to the same value.
    let written = serde_json::to_value(&d_mingle).unwrap();
    for key in [
        "lr",
        "adam_epsilon",
        "steps",
        "batch_size",
        "seed_per_class",
        "seed",
    ] {
        assert!(written.get(key).is_some(), "{key} missing from {written}");
    }
    assert!(written.get("adam").is_none() && written.get("seed_images").is_none());
    assert_eq!(
        parse_config::<MingleConfig>(MINGLE, written).unwrap(),
        d_mingle
    );

    // Plain serde refuses unknown keys too (`deny_unknown_fields` beside flattened groups:
    // not promised by serde's documentation, so pinned here), and takes the groups' keys.
    let plain = |v: serde_json::Value| serde_json::from_value::<WemoeConfig>(v);
    assert!(plain(serde_json::json!({"adam_beta3": 0.5})).is_err());
    assert!(plain(serde_json::json!({"rnak": 3})).is_err());
    assert!(serde_json::from_value::<MingleConfig>(serde_json::json!({"stpes": 3})).is_err());
    assert!(serde_json::from_value::<AdaMergingConfig>(serde_json::json!({"lrr": 1.0})).is_err());
    assert_eq!(
        plain(serde_json::json!({"lr": 0.01, "steps": 3, "seed_source": "test_split"})).unwrap(),
        expect_wemoe
    );

    // An unknown key, at the top level or beside a group's keys, is refused by name, and the
    // message lists the known keys (the groups' among them).
    for (key, value) in [("adam_beta3", 0.5), ("rnak", 3.0)] {
        let err =
            parse_config::<WemoeConfig>("c_lora_wemoe", serde_json::json!({key: value, "lr": 0.1}))
                .expect_err(key);
        assert!(
            matches!(&err, AdaptError::InvalidConfig { message, .. }
                if message.contains(key) && message.contains("`adam_epsilon`")
                    && message.contains("`first_rank`")),
            "{err}"
        );
    }
    assert!(matches!(
        parse_config::<AdaMergingConfig>(LW_ADAMERGING, serde_json::json!([1, 2])),
        Err(AdaptError::InvalidConfig { .. })
    ));
    // A wrong type inside a group is refused too.
    assert!(matches!(
        parse_config::<MingleConfig>(MINGLE, serde_json::json!({"steps": "many"})),
        Err(AdaptError::InvalidConfig { .. })
    ));
}
