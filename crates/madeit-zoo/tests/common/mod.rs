//! Synthetic data shared by the tests: images whose class is visible (a bright block whose
//! position encodes the class), so that a tiny tower can learn them in a few steps.

#![allow(dead_code)]

use std::path::Path;

use madeit_data::{ImageSet, SourceData, SourceId, TaskData, prepare_task, task_by_name};
use madeit_vit::ClipVisionConfig;
use madeit_zoo::{BuildConfig, BuildOptions, BuildOutcome, Zoo, build_zoo_from_tasks};

/// A deterministic pseudo-random byte stream (xorshift64*).
pub struct Bytes(u64);

impl Bytes {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
    }
}

/// `per_class` images of `classes` classes, `side × side × channels`: a class-dependent
/// background level (`20 c`) with low noise, plus a bright `side/4` block at a
/// class-dependent place.
pub fn blocks(
    classes: usize,
    per_class: usize,
    side: usize,
    channels: usize,
    seed: u64,
) -> ImageSet {
    let mut rng = Bytes::new(seed);
    let n = classes * per_class;
    let b = side / 4;
    let mut images = Vec::with_capacity(n * side * side * channels);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        let (by, bx) = ((c / 4) % 4 * b, (c % 4) * b);
        for y in 0..side {
            for x in 0..side {
                let on = y >= by && y < by + b && x >= bx && x < bx + b;
                for _ in 0..channels {
                    let noise = rng.next() / 8;
                    let background = (20 * c as u8).saturating_add(noise);
                    images.push(if on {
                        230u8.saturating_add(noise / 8)
                    } else {
                        background
                    });
                }
            }
        }
        labels.push(c as u32);
    }
    let names = (0..classes).map(|c| format!("class{c}")).collect();
    ImageSet::new(images, n, side, side, channels, labels, names).expect("valid synthetic set")
}

/// The tower of the tests: width 32, 2 layers, 32-pixel images, 8-pixel patches.
pub fn micro_config() -> ClipVisionConfig {
    // The tiny tower's layers, heads, images, patches and activation.
    ClipVisionConfig {
        hidden_size: 32,
        intermediate_size: 64,
        projection_dim: 32,
        ..ClipVisionConfig::tiny()
    }
}

/// Two synthetic tasks (`mnist` and `rotated_mnist` built from a synthetic 28 × 28 "MNIST"
/// source of 10 classes × 30 images), through the data crate's real task preparation.
pub fn synthetic_tasks() -> Vec<TaskData> {
    let source = SourceData {
        source: SourceId::Mnist,
        images: blocks(10, 30, 28, 1, 7),
        official_test: None,
        pretrain_labels: None,
    };
    ["mnist", "rotated_mnist"]
        .iter()
        .map(|name| prepare_task(&source, &task_by_name(name).expect("task")).expect("prepare"))
        .collect()
}

/// Builds the micro zoo of the synthetic tasks under `dir`; returns it and the task data.
pub fn micro_zoo(dir: &Path) -> (Zoo, Vec<TaskData>) {
    let mut config = BuildConfig::micro();
    config.model = micro_config();
    let opts = BuildOptions {
        zoo_dir: dir.join("zoo"),
        cache_dir: dir.join("cache-unused"),
        config,
        force: false,
        threads: Some(2),
    };
    let tasks = synthetic_tasks();
    match build_zoo_from_tasks(&opts, &tasks, &mut |_| {}).expect("build") {
        BuildOutcome::Built(_) => {}
        BuildOutcome::AlreadyComplete(_) => panic!("nothing was there"),
    }
    (Zoo::open(&opts.zoo_dir).expect("open"), tasks)
}
