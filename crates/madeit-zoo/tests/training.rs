//! The training loop on a micro configuration and synthetic data: the loss decreases, the
//! frozen head stays frozen, the same seed gives bit-identical weights, and the tower's
//! training forward (on an autodiff device) agrees with its inference forward.

#![allow(clippy::panic)] // Tests report unexpected variants by panicking.

mod common;

use burn::prelude::*;
use madeit_params::ParamDict;
use madeit_vit::{ClipVisionConfig, ClipVisionModel, VitError};
use madeit_zoo::train::{CosineClassifier, TrainConfig, Trainee, train};
use madeit_zoo::{ZooError, init_tower, tower_from_params};

fn micro_train(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 16,
        lr: 2e-3,
        warmup_steps: 2,
        weight_decay: 0.0,
        max_shift: 1,
    }
}

/// Trains a fresh micro tower for `steps` steps in a pool of `threads` threads; returns the
/// weights as safetensors bytes and the run's losses.
fn run(seed: u64, steps: usize, threads: usize) -> (Vec<u8>, Vec<f32>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        let data = common::blocks(4, 16, 32, 3, 11);
        let device = Device::flex().autodiff();
        let vit = init_tower(&common::micro_config(), seed, &device).expect("init");
        let classifier =
            CosineClassifier::random(4, 32, 10.0, seed + 1, &device).expect("classifier");
        let (trainee, log) = train(
            Trainee { vit, classifier },
            &data,
            &micro_train(steps),
            seed + 2,
            "test",
            &mut |_| {},
        )
        .expect("train");
        let params = trainee.vit.to_params().expect("params");
        let bytes = params
            .to_safetensors_bytes(&madeit_params::SaveOptions::default())
            .expect("bytes");
        (bytes, log.losses)
    })
}

#[test]
fn loss_decreases_on_learnable_data() {
    let (_, losses) = run(3, 200, 2);
    let first: f32 = losses.iter().take(5).sum::<f32>() / 5.0;
    let last: f32 = losses.iter().rev().take(5).sum::<f32>() / 5.0;
    assert!(
        last < 0.7 * first,
        "loss went from {first} to {last}: {losses:?}"
    );
}

#[test]
fn same_seed_gives_identical_weights() {
    let (a, la) = run(5, 8, 2);
    let (b, lb) = run(5, 8, 2);
    assert_eq!(la, lb, "losses differ");
    assert!(a == b, "weights differ between two runs with the same seed");
    let (c, _) = run(6, 8, 2);
    assert!(a != c, "a different seed gave the same weights");
}

#[test]
fn thread_count_does_not_change_weights() {
    let (a, _) = run(9, 6, 1);
    let (b, _) = run(9, 6, 2);
    assert!(a == b, "weights differ between 1 and 2 threads");
}

#[test]
fn frozen_head_stays_fixed_and_only_the_tower_moves() {
    let device = Device::flex().autodiff();
    let config = common::micro_config();
    let vit = init_tower(&config, 1, &device).expect("init");
    let before = vit.to_params().expect("params");
    let head: Vec<f32> = (0..4 * 32).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
    let classifier =
        CosineClassifier::new(head.clone(), 4, 32, 100.0, false, &device).expect("head");
    let data = common::blocks(4, 8, 32, 3, 2);
    let (trainee, _) = train(
        Trainee { vit, classifier },
        &data,
        &micro_train(3),
        4,
        "ft",
        &mut |_| {},
    )
    .expect("train");
    assert_eq!(trainee.classifier.weight().expect("weight"), head);
    let after = trainee.vit.to_params().expect("params");
    let moved = after.sub(&before).expect("sub").l2_norm();
    assert!(moved > 0.0, "the tower did not move");
}

/// The micro configuration, the plain (non-autodiff) device, a micro tower initialised from
/// `seed` on it, and the tower's weights.
fn micro_vit(seed: u64) -> (ClipVisionConfig, Device, ClipVisionModel, ParamDict) {
    let config = common::micro_config();
    let device = Device::flex();
    let vit = init_tower(&config, seed, &device).expect("init");
    let params = vit.to_params().expect("params");
    (config, device, vit, params)
}

#[test]
fn training_forward_matches_the_inference_forward() {
    // The tower on an autodiff device (the training path: burn ops throughout) against the
    // same weights on the plain device (the inference path, with its fused host kernels).
    let (config, _, _, params) = micro_vit(12);
    let device = Device::flex().autodiff();
    let vit = tower_from_params(&config, &params, &device).expect("trainable");
    let reference = ClipVisionModel::from_params(&config, &params).expect("reference");
    let data = common::blocks(3, 2, 32, 3, 1);
    let idx: Vec<usize> = (0..data.n).collect();
    let pixels = data
        .normalized_nchw(&idx, &madeit_data::NORM_MEAN, &madeit_data::NORM_STD)
        .expect("pixels");
    let ours = vit
        .forward(Tensor::from_data(
            TensorData::new(pixels.clone(), [data.n, 3, 32, 32]),
            &device,
        ))
        .expect("forward")
        .pooled_output
        .into_data()
        .try_to_vec::<f32>()
        .expect("vec");
    let theirs = reference.embed(pixels, data.n).expect("embed");
    assert_eq!(theirs.shape(), [data.n, 32]);
    let max_diff = madeit_params::max_abs_diff(&ours, theirs.data()).expect("same length");
    assert!(max_diff < 1e-4, "forwards differ by {max_diff}");
}

#[test]
fn params_round_trip_exactly() {
    let (config, device, _, params) = micro_vit(4);
    let again = tower_from_params(&config, &params, &device)
        .expect("from")
        .to_params()
        .expect("to");
    assert_eq!(params, again);
    // The reference tower accepts the dict and writes it back unchanged.
    let reference = ClipVisionModel::from_params(&config, &params).expect("reference");
    let back: ParamDict = reference.to_params().expect("back");
    assert_eq!(params, back);
}

#[test]
fn missing_tensor_is_named() {
    let (config, device, _, mut params) = micro_vit(4);
    params.remove("encoder.layers.1.mlp.fc2.bias");
    match tower_from_params(&config, &params, &device) {
        Err(ZooError::Vit(e)) => match e {
            VitError::Checkpoint { report } => {
                let missing: Vec<&str> = report.missing.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(missing, ["encoder.layers.1.mlp.fc2.bias"]);
            }
            other => panic!("expected a missing-tensor report, got {other:?}"),
        },
        other => panic!("expected a missing-tensor error, got {other:?}"),
    }
}

#[test]
fn bad_config_and_data_are_rejected() {
    let bad = TrainConfig {
        steps: 0,
        ..TrainConfig::default()
    };
    assert!(matches!(
        bad.check(),
        Err(ZooError::InvalidConfig { field: "steps", .. })
    ));
    let device = Device::flex().autodiff();
    let vit = init_tower(&common::micro_config(), 1, &device).expect("init");
    let classifier = CosineClassifier::random(2, 32, 10.0, 1, &device).expect("classifier");
    // Four classes of data for a two-class classifier.
    let data = common::blocks(4, 2, 32, 3, 1);
    let err = train(
        Trainee { vit, classifier },
        &data,
        &micro_train(1),
        0,
        "x",
        &mut |_| {},
    );
    assert!(matches!(err, Err(ZooError::InvalidData { .. })));
}

#[test]
fn schedule_warms_up_then_decays_to_zero() {
    let cfg = TrainConfig {
        steps: 110,
        lr: 1.0,
        warmup_steps: 10,
        ..TrainConfig::default()
    };
    assert!((cfg.lr_at(0) - 0.1).abs() < 1e-12);
    assert!((cfg.lr_at(9) - 1.0).abs() < 1e-12);
    assert!((cfg.lr_at(10) - 1.0).abs() < 1e-12);
    assert!((cfg.lr_at(60) - 0.5).abs() < 1e-12);
    assert!(cfg.lr_at(109) < 1e-3);
    let lrs: Vec<f64> = (10..110).map(|t| cfg.lr_at(t)).collect();
    assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
}
