//! Training throughput of the zoo's tower on synthetic images, for sizing the build.
//!
//! `cargo run --release -p madeit-zoo --example train_speed -- HIDDEN LAYERS PATCH MLP BATCH STEPS`

use burn::prelude::*;
use madeit_data::ImageSet;
use madeit_vit::{Activation, ClipVisionConfig};
use madeit_zoo::model::init_tower;
use madeit_zoo::train::{CosineClassifier, TrainConfig, Trainee, train};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let get = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (hidden, layers, patch, mlp, batch, steps) = (
        get(0, 96),
        get(1, 4),
        get(2, 4),
        get(3, 192),
        get(4, 64),
        get(5, 20),
    );
    let config = ClipVisionConfig {
        hidden_size: hidden,
        intermediate_size: mlp,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        image_size: 32,
        patch_size: patch,
        num_channels: 3,
        layer_norm_eps: 1e-5,
        hidden_act: Activation::QuickGelu,
        projection_dim: hidden,
    };
    let n = 2048;
    let images: Vec<u8> = (0..n * 32 * 32 * 3)
        .map(|i| ((i * 2654435761usize) >> 7) as u8)
        .collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    let set = ImageSet::new(
        images,
        n,
        32,
        32,
        3,
        labels,
        (0..10).map(|c| c.to_string()).collect(),
    )?;
    let device = Device::flex().autodiff();
    let vit = init_tower(&config, 1, &device)?;
    let classifier = CosineClassifier::random(10, hidden, 16.0, 2, &device)?;
    let cfg = TrainConfig {
        steps,
        batch_size: batch,
        lr: 1e-3,
        warmup_steps: 2,
        weight_decay: 0.0,
        max_shift: 0,
    };
    let (_, log) = train(
        Trainee { vit, classifier },
        &set,
        &cfg,
        3,
        "speed",
        &mut |_| {},
    )?;
    println!(
        "d={hidden} L={layers} p={patch} mlp={mlp} batch={batch}: {:.1} images/s train ({} steps, {:.2}s), loss {:.3} -> {:.3}",
        log.images_seen as f64 / log.seconds,
        steps,
        log.seconds,
        log.first_loss,
        log.last_loss
    );
    Ok(())
}
