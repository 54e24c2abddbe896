//! Random test data shared by the integration tests of the vit crate and the adapt crate
//! (which includes this file by path): Gaussian values and a random vision tower.

use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_vit::{ClipVisionConfig, expected_tensors};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
