//! The expert forwards (routed, gated, scored, recorded) against dense merges.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeSet;

use common::{Experts, host, max_abs_diff, random_factors, random_params, random_pixels, rows};
use madeit_params::ParamDict;
use madeit_vit::{
    ClipVisionConfig, ClipVisionModel, ExpertBank, LowRankFactors, ModuleId, ModuleKind, Routing,
    TokenAggregation, VisionOutput, VitError,
};

const TOL: f32 = 1e-4;

fn setup() -> (ClipVisionConfig, ParamDict, ClipVisionModel) {
    let cfg = ClipVisionConfig::tiny();
    let dict = random_params(&cfg, 11);
    let model = ClipVisionModel::from_params(&cfg, &dict).unwrap();
    (cfg, dict, model)
}

/// One module of every kind, spread over both layers.
fn some_modules() -> Vec<ModuleId> {
    vec![
        ModuleId::new(0, ModuleKind::Q),
        ModuleId::new(1, ModuleKind::K),
        ModuleId::new(0, ModuleKind::V),
        ModuleId::new(1, ModuleKind::Out),
        ModuleId::new(0, ModuleKind::Fc1),
        ModuleId::new(1, ModuleKind::Fc2),
        ModuleId::new(0, ModuleKind::Fc2),
    ]
}

/// `dict` with `W_m += Delta W` for every `(m, factors)`.
fn merged(dict: &ParamDict, updates: &[(ModuleId, &LowRankFactors)]) -> ParamDict {
    let mut out = dict.clone();
    for (m, f) in updates {
        out.get_mut(&m.weight_name())
            .unwrap()
            .axpy(1.0, &f.to_dense().unwrap())
            .unwrap();
    }
    out
}

/// Two experts of different ranks per module.
fn experts(cfg: &ClipVisionConfig, modules: &[ModuleId]) -> Experts {
    modules
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (o, n) = cfg.module_dims(m.kind);
            let seed = 100 + 10 * i as u64;
            (
                *m,
                vec![
                    random_factors(o, n, 3, seed),
                    random_factors(o, n, 5, seed + 1),
                ],
            )
        })
        .collect()
}

/// [`experts`] of `modules` and their bank on the model's device.
fn expert_bank(
    cfg: &ClipVisionConfig,
    model: &ClipVisionModel,
    modules: &[ModuleId],
) -> (Experts, ExpertBank) {
    let list = experts(cfg, modules);
    let bank = ExpertBank::new(cfg, list.clone(), model.device()).unwrap();
    (list, bank)
}

/// [`setup`] with [`some_modules`], their [`experts`] and the bank of those.
fn setup_with_experts() -> (
    ClipVisionConfig,
    ParamDict,
    ClipVisionModel,
    Vec<ModuleId>,
    Experts,
    ExpertBank,
) {
    let (cfg, dict, model) = setup();
    let modules = some_modules();
    let (list, bank) = expert_bank(&cfg, &model, &modules);
    (cfg, dict, model, modules, list, bank)
}

/// `last_hidden_state`, `pooled_output` and `image_embeds` on the host.
fn outputs_host(out: &VisionOutput) -> [madeit_params::Tensor; 3] {
    [
        host(&out.last_hidden_state),
        host(&out.pooled_output),
        host(out.image_embeds.as_ref().unwrap()),
    ]
}

fn forward_host(model: &ClipVisionModel, px: &[f32], batch: usize) -> [madeit_params::Tensor; 3] {
    let out = model
        .forward(model.pixels(px.to_vec(), batch).unwrap())
        .unwrap();
    outputs_host(&out)
}

/// The routed forward of the pixels `px` (a batch of `batch` images).
fn routed(
    model: &ClipVisionModel,
    px: Vec<f32>,
    batch: usize,
    bank: &ExpertBank,
    routing: &Routing,
) -> VisionOutput {
    model
        .forward_routed(model.pixels(px, batch).unwrap(), bank, routing)
        .unwrap()
}

/// The plain model of `dict` with `updates` merged in (see [`merged`]).
fn merged_model(
    cfg: &ClipVisionConfig,
    dict: &ParamDict,
    updates: &[(ModuleId, &LowRankFactors)],
) -> ClipVisionModel {
    ClipVisionModel::from_params(cfg, &merged(dict, updates)).unwrap()
}

fn assert_close(got: &VisionOutput, want: &[madeit_params::Tensor; 3]) {
    let got = outputs_host(got);
    for (name, (g, w)) in ["last_hidden_state", "pooled_output", "image_embeds"]
        .iter()
        .zip(got.iter().zip(want))
    {
        let d = max_abs_diff(g, w);
        assert!(d <= TOL, "{name}: max|diff| = {d}");
    }
}

#[test]
fn routed_with_one_expert_equals_the_dense_merge() {
    let (cfg, dict, model, modules, list, bank) = setup_with_experts();
    let batch = 3;
    let px = random_pixels(&cfg, batch, 1);
    for expert in [0, 1] {
        let mut routing = Routing::new(batch);
        for m in &modules {
            routing.set_all(*m, expert);
        }
        let out = routed(&model, px.clone(), batch, &bank, &routing);
        let updates: Vec<_> = list.iter().map(|(m, fs)| (*m, &fs[expert])).collect();
        let dense = merged_model(&cfg, &dict, &updates);
        let want = forward_host(&dense, &px, batch);
        assert_close(&out, &want);
        // The update is large enough for the comparison to mean something.
        let plain = forward_host(&model, &px, batch);
        assert!(max_abs_diff(&plain[0], &want[0]) > 1e-2);
    }
}

#[test]
fn routed_with_no_experts_equals_the_plain_forward() {
    let (cfg, _, model) = setup();
    let batch = 2;
    let px = random_pixels(&cfg, batch, 2);
    let plain = forward_host(&model, &px, batch);
    let empty = ExpertBank::new(&cfg, Vec::new(), model.device()).unwrap();
    let out = routed(&model, px.clone(), batch, &empty, &Routing::new(batch));
    assert_close(&out, &plain);
    // A bank with experts but a routing table that chooses none.
    let (_, bank) = expert_bank(&cfg, &model, &some_modules());
    let mut routing = Routing::new(batch);
    routing.set(some_modules()[0], vec![None, None]).unwrap();
    let out = routed(&model, px, batch, &bank, &routing);
    assert_close(&out, &plain);
}

#[test]
fn per_sample_routing_equals_running_each_sample_with_its_merge() {
    let (cfg, dict, model, modules, list, bank) = setup_with_experts();
    let batch = 4;
    let px = random_pixels(&cfg, batch, 3);
    // Sample i uses expert choice[i] in every module; sample 3 uses none in module 0.
    let choice = [Some(1), Some(0), Some(1), None];
    let mut routing = Routing::new(batch);
    for (k, m) in modules.iter().enumerate() {
        let mut c = choice.to_vec();
        if k > 0 {
            c[3] = Some(k % 2);
        }
        routing.set(*m, c).unwrap();
    }
    let out = routed(&model, px.clone(), batch, &bank, &routing);
    let per = cfg.num_channels * cfg.image_size * cfg.image_size;
    for i in 0..batch {
        let updates: Vec<_> = list
            .iter()
            .filter_map(|(m, fs)| routing.get(*m).unwrap()[i].map(|e| (*m, &fs[e])))
            .collect();
        let dense = merged_model(&cfg, &dict, &updates);
        let want = forward_host(&dense, &px[i * per..(i + 1) * per], 1);
        for (g, w) in outputs_host(&out).iter().zip(&want) {
            let d = max_abs_diff(&rows(g, i, 1), w);
            assert!(d <= TOL, "sample {i}: max|diff| = {d}");
        }
    }
}

#[test]
fn routing_errors_are_typed() {
    let (cfg, _, model) = setup();
    let m = ModuleId::new(0, ModuleKind::Q);
    let (_, bank) = expert_bank(&cfg, &model, &[m]);
    let px = || model.pixels(random_pixels(&cfg, 2, 4), 2).unwrap();
    let mut routing = Routing::new(2);
    routing.set(m, vec![Some(0), Some(2)]).unwrap();
    assert!(matches!(
        model.forward_routed(px(), &bank, &routing),
        Err(VitError::Routing { module, .. }) if module == m
    ));
    assert!(matches!(
        Routing::new(2).set(m, vec![None]),
        Err(VitError::Routing { .. })
    ));
    let mut wrong_batch = Routing::new(3);
    wrong_batch.set_all(m, 0);
    assert!(matches!(
        model.forward_routed(px(), &bank, &wrong_batch),
        Err(VitError::Routing { .. })
    ));
    // Experts of the wrong shape and on a layer the model lacks.
    let bad = random_factors(64, 128, 2, 1);
    assert!(matches!(
        ExpertBank::new(&cfg, vec![(m, vec![bad])], model.device()),
        Err(VitError::ExpertShape {
            expected_out: 64,
            expected_in: 64,
            got_in: 128,
            ..
        })
    ));
    let far = ModuleId::new(5, ModuleKind::Q);
    assert!(matches!(
        ExpertBank::new(
            &cfg,
            vec![(far, vec![random_factors(64, 64, 2, 1)])],
            model.device()
        ),
        Err(VitError::UnknownModule { .. })
    ));
}

#[test]
fn recorded_inputs_are_the_module_inputs() {
    let (cfg, _, model) = setup();
    let batch = 2;
    let px = model.pixels(random_pixels(&cfg, batch, 5), batch).unwrap();
    let (out, inputs) = model.forward_with_inputs(px.clone(), None).unwrap();
    assert_eq!(inputs.len(), 6 * cfg.num_hidden_layers);
    let n = cfg.num_positions();
    for (m, x) in inputs.iter() {
        let (_, d_in) = cfg.module_dims(m.kind);
        assert_eq!(x.dims(), [batch, n, d_in], "{m}");
    }
    // q, k and v share their input.
    let q = host(inputs.get(ModuleId::new(1, ModuleKind::Q)).unwrap());
    let v = host(inputs.get(ModuleId::new(1, ModuleKind::V)).unwrap());
    assert_eq!(q, v);
    // The recording forward is the plain forward.
    let plain = model.forward(px.clone()).unwrap();
    assert_eq!(host(&plain.last_hidden_state), host(&out.last_hidden_state));
    // A subset.
    let only: BTreeSet<_> = [ModuleId::new(0, ModuleKind::Fc2)].into();
    let (_, inputs) = model.forward_with_inputs(px, Some(&only)).unwrap();
    assert_eq!(inputs.len(), 1);
    // fc2's input is the activation of fc1's output: nonnegative-ish quick-GELU values are
    // bounded below by min_x x sigmoid(1.702 x) > -0.23.
    let fc2 = inputs.to_host(ModuleId::new(0, ModuleKind::Fc2)).unwrap();
    assert!(fc2.data().iter().all(|x| *x > -0.23));
}

#[test]
fn projection_scores_match_a_host_computation() {
    let (cfg, _, model) = setup();
    let modules = some_modules();
    // Orthonormal-column V (from a thin QR of random factors) for a score in [0, 1].
    let list: Vec<_> = experts(&cfg, &modules)
        .into_iter()
        .map(|(m, fs)| {
            let fs = fs
                .into_iter()
                .map(|f| {
                    let v = faer::MatRef::from_row_major_slice(f.v(), f.d_in(), f.rank());
                    let q = v.qr().compute_thin_Q();
                    let u = faer::MatRef::from_row_major_slice(f.u(), f.d_out(), f.rank());
                    LowRankFactors::from_mats(u, f.s(), q.as_ref()).unwrap()
                })
                .collect();
            (m, fs)
        })
        .collect();
    let bank = ExpertBank::new(&cfg, list.clone(), model.device()).unwrap();
    let batch = 3;
    let px = model.pixels(random_pixels(&cfg, batch, 6), batch).unwrap();
    let (_, inputs) = model.forward_with_inputs(px.clone(), None).unwrap();
    for tokens in [TokenAggregation::Frobenius, TokenAggregation::ClsOnly] {
        let (_, scores) = model
            .forward_scored(px.clone(), &bank, None, tokens)
            .unwrap();
        assert_eq!(scores.modules().count(), modules.len());
        for (m, fs) in &list {
            let x = inputs.to_host(*m).unwrap();
            let [_, n, d] = x.shape() else { unreachable!() };
            let (n, d) = (*n, *d);
            let used = if tokens == TokenAggregation::ClsOnly {
                1
            } else {
                n
            };
            for i in 0..batch {
                for (e, f) in fs.iter().enumerate() {
                    let r = f.rank();
                    let (mut num, mut den) = (0.0f64, 0.0f64);
                    for t in 0..used {
                        let row = &x.data()[(i * n + t) * d..(i * n + t + 1) * d];
                        den += row.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>();
                        for k in 0..r {
                            let p: f64 = (0..d)
                                .map(|j| f64::from(row[j]) * f64::from(f.v()[j * r + k]))
                                .sum();
                            num += p * p;
                        }
                    }
                    let want = (num / den).sqrt() as f32;
                    let got = scores.get(*m, i, e).unwrap();
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{m} sample {i} expert {e}: {got} vs {want}"
                    );
                    assert!((0.0..=1.0 + 1e-5).contains(&got));
                }
            }
        }
    }
    // Restricting the scored modules.
    let only: BTreeSet<_> = [modules[2]].into();
    let (_, scores) = model
        .forward_scored(px, &bank, Some(&only), TokenAggregation::Frobenius)
        .unwrap();
    assert_eq!(scores.modules().collect::<Vec<_>>(), vec![modules[2]]);
    assert_eq!(scores.num_experts(modules[2]), 2);
    assert_eq!(scores.module(modules[2]).unwrap().len(), 3 * 2);
}

#[test]
fn to_dense_matches_the_factor_product() {
    let f = random_factors(5, 4, 3, 9);
    let dense = f.to_dense().unwrap();
    for i in 0..5 {
        for j in 0..4 {
            let want: f32 = (0..3)
                .map(|k| f.u()[i * 3 + k] * f.s()[k] * f.v()[j * 3 + k])
                .sum();
            assert!((dense.data()[i * 4 + j] - want).abs() < 1e-6);
        }
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// `from_ba(B, A)` is the LoRA product `B A`, and `from_mats(U, s, V)` the SVD form.
        #[test]
        fn factor_constructors_agree_with_products(
            m in 1usize..6, n in 1usize..6, r in 1usize..4,
            vals in proptest::collection::vec(-2.0f32..2.0, 72),
        ) {
            let b = faer::Mat::from_fn(m, r, |i, k| vals[i * r + k]);
            let a = faer::Mat::from_fn(r, n, |k, j| vals[36 + k * n + j]);
            let f = LowRankFactors::from_ba(b.as_ref(), a.as_ref()).unwrap();
            let want = &b * &a;
            let dense = f.to_dense().unwrap();
            for i in 0..m {
                for j in 0..n {
                    prop_assert!((dense.data()[i * n + j] - want[(i, j)]).abs() < 1e-4);
                }
            }
            let s: Vec<f32> = (0..r).map(|k| 1.0 + k as f32).collect();
            let g = LowRankFactors::from_mats(b.as_ref(), &s, a.transpose()).unwrap();
            let want = &b * faer::Mat::from_fn(r, r, |i, j| if i == j { s[i] } else { 0.0 }) * &a;
            let dense = g.to_dense().unwrap();
            for i in 0..m {
                for j in 0..n {
                    prop_assert!((dense.data()[i * n + j] - want[(i, j)]).abs() < 1e-3);
                }
            }
        }

        /// Routing is per sample: permuting the batch permutes the routed outputs.
        #[test]
        fn routed_forward_commutes_with_batch_permutation(
            choices in proptest::collection::vec(proptest::option::of(0usize..2), 3),
            seed in 0u64..1000,
        ) {
            let cfg = ClipVisionConfig::tiny();
            let dict = random_params(&cfg, 21);
            let model = ClipVisionModel::from_params(&cfg, &dict).unwrap();
            let m = ModuleId::new(1, ModuleKind::Fc1);
            let (_, bank) = expert_bank(&cfg, &model, &[m]);
            let px = random_pixels(&cfg, 3, seed);
            let per = px.len() / 3;
            let perm = [2usize, 0, 1];
            let px_p: Vec<f32> = perm.iter().flat_map(|&i| px[i * per..(i + 1) * per].to_vec()).collect();
            let mut r = Routing::new(3);
            r.set(m, choices.clone()).unwrap();
            let mut r_p = Routing::new(3);
            r_p.set(m, perm.iter().map(|&i| choices[i]).collect()).unwrap();
            let a = routed(&model, px, 3, &bank, &r);
            let b = routed(&model, px_p, 3, &bank, &r_p);
            let a = host(&a.pooled_output);
            let b = host(&b.pooled_output);
            for (k, &i) in perm.iter().enumerate() {
                prop_assert!(max_abs_diff(&rows(&a, i, 1), &rows(&b, k, 1)) < 1e-5);
            }
        }
    }
}
