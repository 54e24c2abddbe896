//! Forward throughput at ViT-B/32 shape (batch 32): plain, per-sample routed (scoring pass +
//! routed pass) and MINGLE-gated.
//!
//! Weights: the directory named by `MADEIT_VIT_B32_DIR` (written by
//! `scripts/clip_reference.py --vit-b-32 DIR`, the same weights
//! `scripts/bench_forward_torch.py` times), or random weights generated here when unset.
//! Experts: 8 random rank-40 experts on each of the 72 target modules.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_vit::{
    ClipVisionConfig, ClipVisionModel, ExpertBank, GateBank, GateTraining, GateValues,
    LowRankFactors, ModuleId, Routing, TokenAggregation, VisionOutput, expected_tensors,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BATCH: usize = 32;
const EXPERTS: usize = 8;
const RANK: usize = 40;

fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| scale * (2.0 * rng.random::<f32>() - 1.0))
        .collect()
}

fn model() -> ClipVisionModel {
    if let Ok(dir) = std::env::var("MADEIT_VIT_B32_DIR") {
        eprintln!("weights: {dir}");
        return ClipVisionModel::load_dir(std::path::Path::new(&dir)).expect("load model dir");
    }
    eprintln!("weights: random (set MADEIT_VIT_B32_DIR to use a saved model)");
    let cfg = ClipVisionConfig::vit_b_32();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut dict = ParamDict::new();
    let mut shapes = expected_tensors(&cfg);
    shapes.push(("visual_projection.weight".into(), vec![512, 768]));
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let data = if name.contains("norm") && name.ends_with("weight") {
            vec![1.0; n]
        } else {
            uniform(&mut rng, n, 0.03)
        };
        dict.insert(name, HostTensor::new(shape, data).expect("shape"));
    }
    ClipVisionModel::from_params(&cfg, &dict).expect("model")
}

fn experts(cfg: &ClipVisionConfig) -> Vec<(ModuleId, Vec<LowRankFactors>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    ModuleId::all(cfg.num_hidden_layers)
        .map(|m| {
            let (o, n) = cfg.module_dims(m.kind);
            let list = (0..EXPERTS)
                .map(|_| {
                    let u = uniform(&mut rng, o * RANK, (3.0 / o as f32).sqrt());
                    let v = uniform(&mut rng, n * RANK, (3.0 / n as f32).sqrt());
                    let s = (0..RANK).map(|k| 0.5 / (1.0 + k as f32)).collect();
                    LowRankFactors::new(o, n, u, s, v).expect("factors")
                })
                .collect();
            (m, list)
        })
        .collect()
}

fn bench_forward(c: &mut Criterion) {
    let model = model();
    let cfg = model.config().clone();
    let device = model.device().clone();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let px_host = uniform(
        &mut rng,
        BATCH * cfg.num_channels * cfg.image_size * cfg.image_size,
        1.5,
    );
    let pixels = model.pixels(px_host, BATCH).expect("pixels");
    let list = experts(&cfg);
    let bank = ExpertBank::new(&cfg, list, &device).expect("bank");
    let mut gate_values = GateValues::new();
    for seed in 0..EXPERTS as u64 {
        gate_values
            .push_random(&cfg, ModuleId::all(cfg.num_hidden_layers), 0.01, 0.0, seed)
            .expect("gates");
    }
    let gates = GateBank::new(&gate_values, GateTraining::Frozen, &device).expect("gate bank");

    // Routing: for every module, each sample takes the expert with the highest projection
    // score (MADE-IT's FPA), computed in a theta_0 pass.
    let route = |pixels: Tensor<4>, tokens: TokenAggregation| {
        let (_, scores) = model
            .forward_scored(pixels.clone(), &bank, None, tokens)
            .expect("scores");
        let mut routing = Routing::new(BATCH);
        for m in scores.modules() {
            let e = scores.num_experts(m);
            let row = scores.module(m).expect("scored");
            let choice = row
                .chunks_exact(e)
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .fold(
                            (0, f32::MIN),
                            |b, (i, v)| if *v > b.1 { (i, *v) } else { b },
                        )
                        .0
                })
                .map(Some)
                .collect();
            routing.set(m, choice).expect("routing");
        }
        routing
    };
    let fixed_routing = route(pixels.clone(), TokenAggregation::Frobenius);

    let mut group = c.benchmark_group("vit_b32_forward_batch32");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(5));
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(BATCH as u64));
    // What a bench keeps of a forward: the image embeddings, read back.
    let embeds = |out: VisionOutput| black_box(out.image_embeds.map(|t| t.into_data()));
    group.bench_function("plain", |b| {
        b.iter(|| embeds(model.forward(pixels.clone()).expect("forward")));
    });
    for (name, tokens) in [
        ("routed_with_scoring_pass", TokenAggregation::Frobenius),
        ("routed_with_cls_scoring_pass", TokenAggregation::ClsOnly),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let routing = route(pixels.clone(), tokens);
                let out = model
                    .forward_routed(pixels.clone(), &bank, &routing)
                    .expect("routed");
                embeds(out)
            });
        });
    }
    group.bench_function("scoring_pass_only", |b| {
        b.iter(|| black_box(route(pixels.clone(), TokenAggregation::Frobenius)));
    });
    // One path for the whole batch (expert 0 in every module), as when a batch holds one
    // task's images and MADE-IT's path-consistent router sends them all to that task's
    // experts: one batched low-rank update per module.
    let mut one_path = Routing::new(BATCH);
    for m in fixed_routing.modules().collect::<Vec<_>>() {
        one_path.set_all(m, 0);
    }
    for (name, routing) in [
        ("routed_pass_one_path", &one_path),
        ("routed_pass_only", &fixed_routing),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = model
                    .forward_routed(pixels.clone(), &bank, routing)
                    .expect("routed");
                embeds(out)
            });
        });
    }
    group.bench_function("gated_8_experts", |b| {
        b.iter(|| {
            let out = model
                .forward_gated(pixels.clone(), &bank, &gates)
                .expect("gated");
            embeds(out)
        });
    });
    group.finish();
}

criterion_group!(benches, bench_forward);
criterion_main!(benches);
