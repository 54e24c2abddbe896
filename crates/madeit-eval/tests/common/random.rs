//! Random towers: a tower with normal weights in the Hugging Face layout (projection
//! included), and perturbed copies of it. Shared by the integration tests and the unit
//! tests of `src/evaluate`.

use madeit_params::{ParamDict, Tensor};
use madeit_vit::{ClipVisionConfig, PROJECTION_WEIGHT, expected_tensors};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

pub fn normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    let d = Normal::new(0.0f32, std).expect("valid normal");
    (0..n).map(|_| d.sample(rng)).collect()
}

pub fn random_tower(config: &ClipVisionConfig, seed: u64) -> ParamDict {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = ParamDict::new();
    let mut shapes = expected_tensors(config);
    shapes.push((
        PROJECTION_WEIGHT.to_owned(),
        vec![config.projection_dim, config.hidden_size],
    ));
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let data = if name.contains("norm") && name.ends_with(".weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            normal(&mut rng, n, 0.01)
        } else {
            normal(&mut rng, n, 0.2)
        };
        p.insert(name, Tensor::new(shape, data).expect("tensor"));
    }
    p
}

pub fn perturbed(base: &ParamDict, seed: u64, std: f32) -> ParamDict {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    base.map(|_, t| {
        let noise = normal(&mut rng, t.numel(), std);
        let data = t.data().iter().zip(noise).map(|(a, b)| a + b).collect();
        Tensor::new(t.shape().to_vec(), data).expect("tensor")
    })
}
