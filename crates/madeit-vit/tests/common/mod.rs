//! Shared helpers of the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::panic, missing_docs)]

use std::path::PathBuf;

use burn::prelude::*;
use madeit_params::Tensor as HostTensor;
use madeit_vit::{ClipVisionConfig, LowRankFactors, ModuleId, to_host};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

// Shared with the adapt crate's tests (included there by path).
mod random;
#[allow(unused_imports)]
pub use random::{randn, random_params};

/// Expert factors per module.
pub type Experts = Vec<(ModuleId, Vec<LowRankFactors>)>;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
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
    a.max_abs_diff(b).unwrap()
}

/// Rows `start..start + len` along the first axis of a host tensor.
pub fn rows(t: &HostTensor, start: usize, len: usize) -> HostTensor {
    let per: usize = t.shape()[1..].iter().product();
    let mut shape = t.shape().to_vec();
    shape[0] = len;
    HostTensor::new(shape, t.data()[start * per..(start + len) * per].to_vec()).unwrap()
}
