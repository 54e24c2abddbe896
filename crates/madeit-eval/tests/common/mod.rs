//! Helpers shared by the run-loop tests: a random tower, perturbed copies of it, and
//! saving a tower in the Hugging Face layout.

#![allow(dead_code)]

use std::path::Path;

use madeit_data::{ImageSet, write_split};
use madeit_eval::benchmark::Benchmark;
use madeit_params::{ParamDict, Tensor};
use madeit_vit::TaskHead;
use madeit_vit::{
    CONFIG_FILE, ClipVisionConfig, PROJECTION_WEIGHT, WEIGHTS_FILE, expected_tensors,
};
use rand::{RngExt, SeedableRng};
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

pub fn save_tower(dir: &Path, config: &ClipVisionConfig, params: &ParamDict) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(
        dir.join(CONFIG_FILE),
        config.to_json_string().expect("json"),
    )
    .expect("write");
    params.save(&dir.join(WEIGHTS_FILE)).expect("save");
}

/// The tasks of [`tiny_zoo`].
pub const TASKS: [&str; 3] = ["alpha", "beta", "gamma"];
pub const CLASSES: [usize; 3] = [4, 3, 5];
pub const TEST_IMAGES: usize = 24;
pub const SEED_IMAGES: usize = 12;

pub fn random_split(
    rng: &mut ChaCha8Rng,
    config: &ClipVisionConfig,
    n: usize,
    classes: usize,
    names: &[String],
) -> ImageSet {
    let (s, c) = (config.image_size, config.num_channels);
    let images: Vec<u8> = (0..n * s * s * c).map(|_| rng.random()).collect();
    // Classes in turn: with 12 seed images every class has at least 2.
    let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    ImageSet::new(images, n, s, s, c, labels, names.to_vec()).expect("set")
}

/// Writes the tiny zoo (with seed splits) into `dir` and returns its benchmark.
pub fn tiny_zoo(dir: &Path) -> Benchmark {
    let config = ClipVisionConfig::tiny();
    let pre = random_tower(&config, 1);
    save_tower(&dir.join("pretrained"), &config, &pre);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (t, (&name, &classes)) in TASKS.iter().zip(&CLASSES).enumerate() {
        let ft = perturbed(&pre, 100 + t as u64, 0.05);
        save_tower(&dir.join("finetuned").join(name), &config, &ft);
        let w = Tensor::new(
            vec![classes, config.projection_dim],
            normal(&mut rng, classes * config.projection_dim, 1.0),
        )
        .expect("head");
        let names: Vec<String> = (0..classes).map(|c| format!("{name}-{c}")).collect();
        let head = TaskHead::new(name, &w, names.clone()).expect("head");
        std::fs::create_dir_all(dir.join("heads")).expect("mkdir");
        head.save(&dir.join("heads").join(format!("{name}.safetensors")))
            .expect("save head");
        for (split, n) in [("test", TEST_IMAGES), ("seed", SEED_IMAGES)] {
            let set = random_split(&mut rng, &config, n, classes, &names);
            write_split(
                &dir.join("data")
                    .join(name)
                    .join(format!("{split}.safetensors")),
                &set,
                name,
                split,
            )
            .expect("split");
        }
    }
    Benchmark::from_layout(dir, &TASKS).expect("benchmark")
}
