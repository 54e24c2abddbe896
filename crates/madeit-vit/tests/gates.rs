//! MINGLE's gated forward: the mixture it computes, and where its gradients go.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use common::{Experts, host, max_abs_diff, random_factors, random_params, random_pixels};
use madeit_params::ParamDict;
use madeit_vit::{
    ClipVisionConfig, ClipVisionModel, ExpertBank, GateBank, GateTraining, GateValues, LinearGate,
    LowRankFactors, ModuleId, ModuleKind, TaskHead, VitError, distillation_loss,
};

fn setup() -> (ClipVisionConfig, ParamDict, ClipVisionModel) {
    let cfg = ClipVisionConfig::tiny();
    let dict = random_params(&cfg, 31);
    let model = ClipVisionModel::from_params(&cfg, &dict).unwrap();
    (cfg, dict, model)
}

fn two_experts(cfg: &ClipVisionConfig, m: ModuleId, seed: u64) -> Vec<LowRankFactors> {
    let (o, n) = cfg.module_dims(m.kind);
    vec![
        random_factors(o, n, 4, seed),
        random_factors(o, n, 2, seed + 1),
    ]
}

/// A gate with the given weights and a zero bias.
fn gate(weight: Vec<f32>) -> LinearGate {
    LinearGate { weight, bias: 0.0 }
}

/// [`two_experts`] on each of `modules`, the `i`-th seeded with `seed + 5 i`.
fn experts_for(cfg: &ClipVisionConfig, modules: &[ModuleId], seed: u64) -> Experts {
    modules
        .iter()
        .enumerate()
        .map(|(i, m)| (*m, two_experts(cfg, *m, seed + 5 * i as u64)))
        .collect()
}

/// [`setup`] with [`experts_for`] `modules` and their bank on the model's device.
fn setup_with_experts(
    modules: &[ModuleId],
    seed: u64,
) -> (
    ClipVisionConfig,
    ParamDict,
    ClipVisionModel,
    Experts,
    ExpertBank,
) {
    let (cfg, dict, model) = setup();
    let experts = experts_for(&cfg, modules, seed);
    let bank = ExpertBank::new(&cfg, experts.clone(), model.device()).unwrap();
    (cfg, dict, model, experts, bank)
}

fn gates_for(cfg: &ClipVisionConfig, modules: &[ModuleId], seed: u64) -> GateValues {
    let mut g = GateValues::new();
    // Larger than MINGLE's 0.01 init so that the gates visibly matter in the tests.
    g.push_random(cfg, modules.iter().copied(), 0.3, 0.0, seed)
        .unwrap();
    g.push_random(cfg, modules.iter().copied(), 0.3, 0.0, seed + 1)
        .unwrap();
    for (_, gates) in &mut g.modules {
        gates[0].bias = 0.5;
        gates[1].bias = -0.25;
    }
    g
}

#[test]
fn gated_forward_is_the_gate_weighted_dense_merge() {
    // Gates on q, k, v of layer 0: their shared input does not depend on any gate, so the
    // expected gate values can be computed from the plain forward's recorded inputs.
    let modules = [
        ModuleId::new(0, ModuleKind::Q),
        ModuleId::new(0, ModuleKind::K),
        ModuleId::new(0, ModuleKind::V),
    ];
    let (cfg, dict, model, experts, bank) = setup_with_experts(&modules, 50);
    let values = gates_for(&cfg, &modules, 7);
    let gates = GateBank::new(&values, GateTraining::Frozen, model.device()).unwrap();
    let batch = 3;
    let px = random_pixels(&cfg, batch, 8);
    let out = model
        .forward_gated(model.pixels(px.clone(), batch).unwrap(), &bank, &gates)
        .unwrap();

    let (_, inputs) = model
        .forward_with_inputs(model.pixels(px.clone(), batch).unwrap(), None)
        .unwrap();
    let mut merged = dict.clone();
    for (m, fs) in &experts {
        let x = inputs.to_host(*m).unwrap();
        let d = x.shape()[2];
        let rows = x.data().len() / d;
        let mut mean = vec![0.0f64; d];
        for row in x.data().chunks_exact(d) {
            for (a, v) in mean.iter_mut().zip(row) {
                *a += f64::from(*v) / rows as f64;
            }
        }
        for (e, f) in fs.iter().enumerate() {
            let g = &values.gates(*m)[e];
            let gbar: f64 = g
                .weight
                .iter()
                .zip(&mean)
                .map(|(w, x)| f64::from(*w) * x)
                .sum::<f64>()
                + f64::from(g.bias);
            merged
                .get_mut(&m.weight_name())
                .unwrap()
                .axpy(gbar as f32, &f.to_dense().unwrap())
                .unwrap();
        }
    }
    let dense = ClipVisionModel::from_params(&cfg, &merged).unwrap();
    let want = dense
        .forward(dense.pixels(px.clone(), batch).unwrap())
        .unwrap();
    let d = max_abs_diff(
        &host(&out.last_hidden_state),
        &host(&want.last_hidden_state),
    );
    assert!(d <= 1e-4, "last_hidden_state max|diff| = {d}");
    let d = max_abs_diff(
        &host(out.image_embeds.as_ref().unwrap()),
        &host(want.image_embeds.as_ref().unwrap()),
    );
    assert!(d <= 1e-4, "image_embeds max|diff| = {d}");
    let plain = model.forward(model.pixels(px, batch).unwrap()).unwrap();
    assert!(
        max_abs_diff(
            &host(&plain.last_hidden_state),
            &host(&want.last_hidden_state)
        ) > 1e-2
    );
}

/// Loss of the gated model against fixed teacher logits, on whichever device `gates` is.
fn loss(
    model: &ClipVisionModel,
    bank: &ExpertBank,
    gates: &GateBank,
    head: &TaskHead,
    px: &[f32],
    teacher: &Tensor<2>,
) -> Tensor<1> {
    let batch = teacher.dims()[0];
    let out = model
        .forward_gated(model.pixels(px.to_vec(), batch).unwrap(), bank, gates)
        .unwrap();
    let logits = head.logits(out.embedding()).unwrap();
    distillation_loss(logits, teacher.clone(), 2.0).unwrap()
}

#[test]
fn gradients_reach_only_the_trainable_gates_and_match_finite_differences() {
    let modules = [
        ModuleId::new(0, ModuleKind::Q),
        ModuleId::new(1, ModuleKind::Fc1),
    ];
    // Backbone and experts on the plain device; gates on the autodiff device.
    let (cfg, _, model, _, bank) = setup_with_experts(&modules, 70);
    let ad = model.device().clone().autodiff();
    let values = gates_for(&cfg, &modules, 9);
    let gates = GateBank::new(&values, GateTraining::Newest, &ad).unwrap();
    assert!(!model.device().is_autodiff() && !bank.device().is_autodiff());

    let head_w =
        madeit_params::Tensor::new(vec![5, 32], random_pixels(&cfg, 1, 1)[..160].to_vec()).unwrap();
    let head = TaskHead::new("t", &head_w, Vec::new()).unwrap();
    let batch = 2;
    let px = random_pixels(&cfg, batch, 12);
    let teacher = head
        .logits(
            model
                .forward(model.pixels(px.clone(), batch).unwrap())
                .unwrap()
                .embedding(),
        )
        .unwrap()
        * 0.5;

    let l = loss(&model, &bank, &gates, &head, &px, &teacher);
    let grads = l.backward();
    let gp = GradientsParams::from_grads(grads, &gates);
    // Newest gate of each module: one weight and one bias each, nothing else.
    assert_eq!(gp.len(), 2 * modules.len());
    for m in modules {
        assert!(
            gates.weight_grad(&gp, m, 0).unwrap().is_none(),
            "frozen gate of {m} has a gradient"
        );
        let g = gates
            .weight_grad(&gp, m, 1)
            .unwrap()
            .expect("trainable gate has a gradient");
        assert_eq!(g.len(), 64);
        let norm: f64 = g.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!(norm > 1e-6, "{m}: zero gradient");

        // Directional finite difference along the gradient: dL/dh (w + h g/|g|) = |g|.
        let eval = |h: f64| -> f64 {
            let mut v = values.clone();
            for (mm, gs) in &mut v.modules {
                if *mm == m {
                    for (w, gi) in gs[1].weight.iter_mut().zip(&g) {
                        *w += (h * f64::from(*gi) / norm) as f32;
                    }
                }
            }
            let plain_gates = GateBank::new(&v, GateTraining::Frozen, model.device()).unwrap();
            let l = loss(&model, &bank, &plain_gates, &head, &px, &teacher);
            f64::from(host(&l).data()[0])
        };
        let h = 1e-2;
        let fd = (eval(h) - eval(-h)) / (2.0 * h);
        assert!(
            (fd - norm).abs() <= 0.05 * norm + 1e-5,
            "{m}: finite difference {fd} vs gradient norm {norm}"
        );
    }

    // One Adam step moves the newest gates only.
    let mut optim = AdamConfig::new().init();
    let l = loss(&model, &bank, &gates, &head, &px, &teacher);
    let gp = GradientsParams::from_grads(l.backward(), &gates);
    let stepped = optim.step(1e-2, gates, gp);
    let after = stepped.to_values().unwrap();
    for m in modules {
        assert_eq!(after.gates(m)[0], values.gates(m)[0]);
        assert_ne!(after.gates(m)[1].weight, values.gates(m)[1].weight);
    }
}

#[test]
fn replacing_a_gate_gradient_changes_the_step() {
    let m = ModuleId::new(0, ModuleKind::Fc2);
    let (cfg, _, model, _, bank) = setup_with_experts(&[m], 3);
    let ad = model.device().clone().autodiff();
    let values = gates_for(&cfg, &[m], 4);
    let gates = GateBank::new(&values, GateTraining::All, &ad).unwrap();
    let px = random_pixels(&cfg, 1, 5);
    let out = model
        .forward_gated(model.pixels(px, 1).unwrap(), &bank, &gates)
        .unwrap();
    let mut gp = GradientsParams::from_grads(out.pooled_output.sum().backward(), &gates);
    assert_eq!(gp.len(), 4);
    let d_in = cfg.intermediate_size;
    gates
        .set_weight_grad(&mut gp, m, 0, &vec![0.0; d_in])
        .unwrap();
    assert_eq!(
        gates.weight_grad(&gp, m, 0).unwrap().unwrap(),
        vec![0.0; d_in]
    );
    assert!(matches!(
        gates.set_weight_grad(&mut gp, m, 0, &[1.0]),
        Err(VitError::Gates { .. })
    ));
    assert!(matches!(
        gates.weight_grad(&gp, m, 7),
        Err(VitError::Gates { .. })
    ));
    // A zero weight gradient leaves that weight unchanged under Adam (its bias still moves).
    let mut optim = AdamConfig::new().init();
    let after = optim.step(1e-2, gates, gp).to_values().unwrap();
    assert_eq!(after.gates(m)[0].weight, values.gates(m)[0].weight);
    assert_ne!(after.gates(m)[0].bias, values.gates(m)[0].bias);
    assert_ne!(after.gates(m)[1].weight, values.gates(m)[1].weight);
}

#[test]
fn gates_and_experts_must_agree() {
    let m = ModuleId::new(1, ModuleKind::Out);
    let (cfg, _, model, _, bank) = setup_with_experts(&[m], 1);
    let px = || model.pixels(random_pixels(&cfg, 1, 2), 1).unwrap();
    // One gate for two experts.
    let mut one = GateValues::new();
    one.push_random(&cfg, [m], 0.01, 0.0, 1).unwrap();
    let gates = GateBank::new(&one, GateTraining::Frozen, model.device()).unwrap();
    assert!(matches!(
        model.forward_gated(px(), &bank, &gates),
        Err(VitError::Gates { module, .. }) if module == m
    ));
    // Gates on a module without experts.
    let mut extra = gates_for(&cfg, &[m], 2);
    extra
        .push_random(&cfg, [ModuleId::new(0, ModuleKind::Q)], 0.01, 0.0, 3)
        .unwrap();
    let gates = GateBank::new(&extra, GateTraining::Frozen, model.device()).unwrap();
    assert!(matches!(
        model.forward_gated(px(), &bank, &gates),
        Err(VitError::Gates { .. })
    ));
    // Gates of the wrong width.
    let mut wide = GateValues::new();
    for _ in 0..2 {
        wide.push(m, gate(vec![0.0; 128]));
    }
    let gates = GateBank::new(&wide, GateTraining::Frozen, model.device()).unwrap();
    assert!(matches!(
        model.forward_gated(px(), &bank, &gates),
        Err(VitError::Gates { .. })
    ));
    // Mixed widths inside one module, and NaN.
    let mut mixed = GateValues::new();
    mixed.push(m, gate(vec![0.0; 64]));
    mixed.push(m, gate(vec![0.0; 3]));
    assert!(GateBank::new(&mixed, GateTraining::Frozen, model.device()).is_err());
    let mut nan = GateValues::new();
    nan.push(m, gate(vec![f32::NAN; 64]));
    assert!(matches!(
        GateBank::new(&nan, GateTraining::Frozen, model.device()),
        Err(VitError::NonFiniteInput { .. })
    ));
}

#[test]
fn gate_values_round_trip_and_init_is_seeded() {
    let cfg = ClipVisionConfig::tiny();
    let modules = [
        ModuleId::new(0, ModuleKind::Q),
        ModuleId::new(1, ModuleKind::Fc2),
    ];
    let mut a = GateValues::new();
    a.push_random(&cfg, modules, 0.01, 0.0, 42).unwrap();
    let mut b = GateValues::new();
    b.push_random(&cfg, modules, 0.01, 0.0, 42).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.gates(modules[1])[0].weight.len(), cfg.intermediate_size);
    let w = &a.gates(modules[0])[0].weight;
    let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    assert!((0.005..0.02).contains(&std), "std {std}");
    let bank = GateBank::new(&a, GateTraining::Newest, &burn::tensor::Device::flex()).unwrap();
    assert_eq!(bank.to_values().unwrap(), a);
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(serde_json::from_str::<GateValues>(&json).unwrap(), a);
    // The bias is the one asked for; the weights do not depend on it.
    assert!(modules.iter().all(|&m| a.gates(m)[0].bias == 0.0));
    let mut biased = GateValues::new();
    biased.push_random(&cfg, modules, 0.01, 0.3, 42).unwrap();
    for m in modules {
        assert_eq!(biased.gates(m)[0].bias, 0.3);
        assert_eq!(biased.gates(m)[0].weight, a.gates(m)[0].weight);
    }
}
