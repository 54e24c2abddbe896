//! Shared helpers of the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::panic, missing_docs)]

use std::path::PathBuf;

use burn::prelude::*;
use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_vit::{ClipVisionConfig, LowRankFactors, expected_tensors, to_host};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

pub fn randn(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    // Box-Muller; adequate for test data.
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(1e-7);
            let u2: f32 = rng.random::<f32>();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

/// A random bare-layout vision tower for `cfg`, with a projection.
pub fn random_params(cfg: &ClipVisionConfig, seed: u64) -> ParamDict {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut dict = ParamDict::new();
    let mut shapes = expected_tensors(cfg);
    shapes.push((
        "visual_projection.weight".into(),
        vec![cfg.projection_dim, cfg.hidden_size],
    ));
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let data = if name.contains("norm") && name.ends_with("weight") {
            randn(&mut rng, n, 0.2)
                .into_iter()
                .map(|x| 1.0 + x)
                .collect()
        } else if name.ends_with("bias") || name.contains("norm") {
            randn(&mut rng, n, 0.1)
        } else if shape.len() >= 2 {
            let fan_in: usize = shape[1..].iter().product();
            randn(&mut rng, n, 1.0 / (fan_in as f32).sqrt())
        } else {
            randn(&mut rng, n, 0.5)
        };
        dict.insert(name, HostTensor::new(shape, data).unwrap());
    }
    dict
}

/// Random factors `[d_out x r] diag(s) [d_in x r]^T` with a spectrum that makes the update
/// matter (entries of Delta W of order 0.1).
pub fn random_factors(d_out: usize, d_in: usize, rank: usize, seed: u64) -> LowRankFactors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let u = randn(&mut rng, d_out * rank, 1.0 / (d_out as f32).sqrt());
    let v = randn(&mut rng, d_in * rank, 1.0 / (d_in as f32).sqrt());
    let s = (0..rank).map(|k| 2.0 / (1.0 + k as f32)).collect();
    LowRankFactors::new(d_out, d_in, u, s, v).unwrap()
}

pub fn random_pixels(cfg: &ClipVisionConfig, batch: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    randn(
        &mut rng,
        batch * cfg.num_channels * cfg.image_size * cfg.image_size,
        1.0,
    )
}

pub fn host<const D: usize>(t: &Tensor<D>) -> HostTensor {
    to_host(t).unwrap()
}

pub fn max_abs_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Rows `start..start + len` along the first axis of a host tensor.
pub fn rows(t: &HostTensor, start: usize, len: usize) -> HostTensor {
    let per: usize = t.shape()[1..].iter().product();
    let mut shape = t.shape().to_vec();
    shape[0] = len;
    HostTensor::new(shape, t.data()[start * per..(start + len) * per].to_vec()).unwrap()
}
