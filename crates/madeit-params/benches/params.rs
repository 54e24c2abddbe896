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

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use madeit_params::{DType, ParamDict, Tensor};

fn layer(seed: u32) -> ParamDict {
    // Each module has a weight and a bias as long as the weight's first dimension.
    let modules: [(&str, &[usize]); 8] = [
        ("self_attn.q_proj", &[768, 768]),
        ("self_attn.k_proj", &[768, 768]),
        ("self_attn.v_proj", &[768, 768]),
        ("self_attn.out_proj", &[768, 768]),
        ("layer_norm1", &[768]),
        ("mlp.fc1", &[3072, 768]),
        ("mlp.fc2", &[768, 3072]),
        ("layer_norm2", &[768]),
    ];
    let mut d = ParamDict::new();
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    for (module, weight) in modules {
        for (param, shape) in [("weight", weight.to_vec()), ("bias", vec![weight[0]])] {
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
                d.insert(format!("encoder.layers.0.{module}.{param}"), t);
            }
        }
    }
    d
}

/// Takes `samples` samples measured for `seconds` after a 0.5 s warm-up, with the throughput
/// counted in the parameters of `dict`.
fn configure(
    group: &mut BenchmarkGroup<'_, WallTime>,
    samples: usize,
    seconds: u64,
    dict: &ParamDict,
) {
    group
        .sample_size(samples)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(seconds))
        .throughput(Throughput::Elements(dict.numel() as u64));
}

fn bench_algebra(c: &mut Criterion) {
    let a = layer(1);
    let b = layer(2);
    let mut group = c.benchmark_group("algebra");
    configure(&mut group, 20, 3, &a);
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
    configure(&mut group, 10, 4, &a);
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
