//! The functional forward through caller-supplied weights: parity with the owned-weight
//! forward, gradients to a coefficient, and input checks.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;

use burn::prelude::*;
use common::{host, max_abs_diff, random_params, random_pixels};
use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_vit::functional::{TowerTensors, forward};
use madeit_vit::{ClipVisionConfig, ClipVisionModel, VISION_PREFIX, VitError};

const TOL: f32 = 1e-4;

fn check_parity(cfg: &ClipVisionConfig, params: &ParamDict) {
    let device = Device::flex();
    let model = ClipVisionModel::from_params_on(cfg, params, &device).unwrap();
    let weights = TowerTensors::from_params(cfg, params, &device).unwrap();
    let batch = 3;
    let px = model.pixels(random_pixels(cfg, batch, 7), batch).unwrap();
    let want = model.forward(px.clone()).unwrap();
    let got = forward(cfg, &weights, px).unwrap();
    let d_last = max_abs_diff(
        &host(&got.last_hidden_state),
        &host(&want.last_hidden_state),
    );
    let d_pooled = max_abs_diff(&host(&got.pooled_output), &host(&want.pooled_output));
    eprintln!("max|diff|: last_hidden_state {d_last:.2e}, pooled_output {d_pooled:.2e}");
    assert!(d_last <= TOL, "last_hidden_state max|diff| = {d_last}");
    assert!(d_pooled <= TOL, "pooled_output max|diff| = {d_pooled}");
    assert_eq!(got.image_embeds.is_some(), want.image_embeds.is_some());
    if let (Some(a), Some(b)) = (&got.image_embeds, &want.image_embeds) {
        let d = max_abs_diff(&host(a), &host(b));
        assert!(d <= TOL, "image_embeds max|diff| = {d}");
    }
}

#[test]
fn matches_the_owned_weight_forward() {
    let cfg = ClipVisionConfig::tiny();
    let params = random_params(&cfg, 11);
    check_parity(&cfg, &params);
}

#[test]
fn matches_without_projection_and_with_prefixed_names() {
    let cfg = ClipVisionConfig::tiny();
    let params = random_params(&cfg, 12);
    let mut prefixed = ParamDict::new();
    for (name, t) in params.iter() {
        if name == "visual_projection.weight" {
            continue;
        }
        prefixed.insert(format!("{VISION_PREFIX}{name}"), t.clone());
    }
    check_parity(&cfg, &prefixed);
}

#[test]
fn gradient_reaches_a_merging_coefficient() {
    // theta(c) = base + c * tau for every tensor; d(sum of embeddings^2)/dc must be nonzero
    // and match a central finite difference.
    let cfg = ClipVisionConfig::tiny();
    let base = random_params(&cfg, 21);
    let other = random_params(&cfg, 22);
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let batch = 2;
    let pixels = random_pixels(&cfg, batch, 3);
    let dims = [batch, cfg.num_channels, cfg.image_size, cfg.image_size];

    let loss_at = |c: Tensor<1>| -> Tensor<1> {
        let mut map = BTreeMap::new();
        for (name, b) in base.iter() {
            let o = other.get(name).unwrap();
            let tau: Vec<f32> = o.data().iter().zip(b.data()).map(|(x, y)| x - y).collect();
            let n = b.numel();
            let bt = Tensor::<1>::from_data(TensorData::new(b.data().to_vec(), [n]), &device);
            let tt = Tensor::<1>::from_data(TensorData::new(tau, [n]), &device);
            map.insert(name.to_owned(), bt + tt * c.clone());
        }
        let weights = TowerTensors::new(&cfg, map).unwrap();
        let px = Tensor::<4>::from_data(TensorData::new(pixels.clone(), dims), &device);
        let out = forward(&cfg, &weights, px).unwrap();
        out.embedding().square().sum()
    };

    let c0 = 0.3f32;
    let c = Tensor::<1>::from_data(TensorData::new(vec![c0], [1]), &ad).require_grad();
    let loss = loss_at(c.clone());
    let grads = loss.backward();
    let g = host(&c.grad(&grads).unwrap()).data()[0];

    let eps = 1e-2f32;
    let at = |v: f32| {
        let t = Tensor::<1>::from_data(TensorData::new(vec![v], [1]), &device);
        f64::from(host(&loss_at(t)).data()[0])
    };
    let fd = (at(c0 + eps) - at(c0 - eps)) / (2.0 * f64::from(eps));
    eprintln!("dL/dc autodiff {g:.6e}, finite difference {fd:.6e}");
    assert!(g.is_finite() && g.abs() > 1e-6, "gradient {g}");
    let rel = (f64::from(g) - fd).abs() / fd.abs().max(1e-6);
    assert!(rel < 2e-2, "autodiff {g} vs finite difference {fd}");
}

#[test]
fn construction_reports_missing_unexpected_and_mis_shaped_tensors() {
    let cfg = ClipVisionConfig::tiny();
    let device = Device::flex();
    let mut params = random_params(&cfg, 31);
    params.insert(
        "embeddings.class_embedding",
        HostTensor::new(vec![3], vec![0.0; 3]).unwrap(),
    );
    params.insert("bogus.weight", HostTensor::new(vec![1], vec![0.0]).unwrap());
    let mut flat = BTreeMap::new();
    for (name, t) in params.iter() {
        if name == "post_layernorm.bias" {
            continue;
        }
        flat.insert(
            name.to_owned(),
            Tensor::<1>::from_data(TensorData::new(t.data().to_vec(), [t.numel()]), &device),
        );
    }
    let err = TowerTensors::new(&cfg, flat).unwrap_err();
    let VitError::Checkpoint { report } = err else {
        panic!("expected a checkpoint report, got {err}");
    };
    assert_eq!(report.missing.len(), 1);
    assert_eq!(report.missing[0].0, "post_layernorm.bias");
    assert_eq!(report.unexpected, vec!["bogus.weight".to_owned()]);
    assert_eq!(report.mismatched.len(), 1);
    assert_eq!(report.mismatched[0].name, "embeddings.class_embedding");

    let err = TowerTensors::from_params(&cfg, &params, &device).unwrap_err();
    assert!(matches!(err, VitError::Checkpoint { .. }), "{err}");

    let mut nan = random_params(&cfg, 32);
    nan.get_mut("pre_layrnorm.weight").unwrap().data_mut()[2] = f32::NAN;
    let err = TowerTensors::from_params(&cfg, &nan, &device).unwrap_err();
    assert!(
        matches!(&err, VitError::NonFiniteWeight { name, index: 2, .. } if name == "pre_layrnorm.weight"),
        "{err}"
    );
}

#[test]
fn forward_rejects_bad_pixels_and_another_config() {
    let cfg = ClipVisionConfig::tiny();
    let device = Device::flex();
    let weights = TowerTensors::from_params(&cfg, &random_params(&cfg, 41), &device).unwrap();
    let bad = Tensor::<4>::zeros(
        [1, cfg.num_channels, cfg.image_size + 1, cfg.image_size],
        &device,
    );
    let err = forward(&cfg, &weights, bad).unwrap_err();
    assert!(matches!(err, VitError::InputShape { .. }), "{err}");
    let mut other = cfg.clone();
    other.layer_norm_eps *= 2.0;
    let px = Tensor::<4>::zeros(
        [1, cfg.num_channels, cfg.image_size, cfg.image_size],
        &device,
    );
    let err = forward(&other, &weights, px).unwrap_err();
    assert!(matches!(err, VitError::InvalidConfig { .. }), "{err}");
}
