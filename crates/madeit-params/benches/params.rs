//! Throughput of the dictionary arithmetic and of safetensors I/O on one ViT-B/32 encoder
//! layer's weights (q, k, v, out: 768x768; fc1: 3072x768; fc2: 768x3072; biases and layer
//! norms), 7,087,872 parameters, 28.4 MB as F32.
//!
//! Groups: `algebra` (dot, l2_norm, axpy, sub) and `io` (save and load as F32 and F16; files
//! go to a temporary directory, so the page cache is warm after the first iteration).
//!
//! `cargo bench -p madeit-params --bench params`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use madeit_params::{DType, ParamDict, Tensor};

fn layer(seed: u32) -> ParamDict {
    let shapes: [(&str, Vec<usize>); 16] = [
        ("self_attn.q_proj.weight", vec![768, 768]),
        ("self_attn.q_proj.bias", vec![768]),
        ("self_attn.k_proj.weight", vec![768, 768]),
        ("self_attn.k_proj.bias", vec![768]),
        ("self_attn.v_proj.weight", vec![768, 768]),
        ("self_attn.v_proj.bias", vec![768]),
        ("self_attn.out_proj.weight", vec![768, 768]),
        ("self_attn.out_proj.bias", vec![768]),
        ("layer_norm1.weight", vec![768]),
        ("layer_norm1.bias", vec![768]),
        ("mlp.fc1.weight", vec![3072, 768]),
        ("mlp.fc1.bias", vec![3072]),
        ("mlp.fc2.weight", vec![768, 3072]),
        ("mlp.fc2.bias", vec![768]),
        ("layer_norm2.weight", vec![768]),
        ("layer_norm2.bias", vec![768]),
    ];
    let mut d = ParamDict::new();
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                // xorshift32, mapped to [-0.05, 0.05)
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32 - 0.5) * 0.1
            })
            .collect();
        if let Ok(t) = Tensor::new(shape, data) {
            d.insert(format!("encoder.layers.0.{name}"), t);
        }
    }
    d
}

fn bench_algebra(c: &mut Criterion) {
    let a = layer(1);
    let b = layer(2);
    let mut group = c.benchmark_group("algebra");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(a.numel() as u64));
    group.bench_function("dot", |bch| bch.iter(|| black_box(&a).dot(black_box(&b))));
    group.bench_function("l2_norm", |bch| bch.iter(|| black_box(&a).l2_norm()));
    group.bench_function("sub", |bch| bch.iter(|| black_box(&a).sub(black_box(&b))));
    let mut y = a.clone();
    group.bench_function("axpy", |bch| bch.iter(|| y.axpy(1e-3, black_box(&b))));
    group.finish();
}

fn bench_io(c: &mut Criterion) {
    let a = layer(3);
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let mut group = c.benchmark_group("io");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(a.numel() as u64));
    for dtype in [DType::F32, DType::F16] {
        let path = dir.path().join(format!("layer-{dtype}.safetensors"));
        group.bench_function(format!("save_{dtype}"), |bch| {
            bch.iter(|| a.save_as(&path, dtype))
        });
        group.bench_function(format!("load_{dtype}"), |bch| {
            bch.iter(|| ParamDict::load(&path))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_algebra, bench_io);
criterion_main!(benches);
