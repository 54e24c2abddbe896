//! SVD timings at the shapes of ViT-B (768) and ViT-L (1024) linear weights, f32.
//!
//! Groups: `thin_svd`, `truncated_exact`, `truncated_randomized` (rank = round(0.1 x min
//! dim), default oversampling 10 and 2 power iterations) and `truncated_randomized_seq`
//! (the same on one thread). Inputs are seeded Gaussian matrices: a slowly decaying
//! (Marchenko–Pastur) spectrum with no low-rank structure to exploit.
//!
//! `cargo bench -p madeit-linalg --bench svd`; set `RAYON_NUM_THREADS` to pin the threads.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use madeit_linalg::faer::Par;
use madeit_linalg::{SvdWorkspace, TruncatedSvd, random, thin_svd, truncated_svd};

const SHAPES: [(usize, usize); 5] = [
    (768, 768),
    (3072, 768),
    (768, 3072),
    (1024, 1024),
    (4096, 1024),
];

/// `round(0.1 x min(m, n))`: 77 for 768, 102 for 1024.
fn rank_of(m: usize, n: usize) -> usize {
    (m.min(n) as f64 * 0.1).round() as usize
}

fn label(m: usize, n: usize) -> String {
    format!("{m}x{n}")
}

fn bench_svd(c: &mut Criterion) {
    let mut group = c.benchmark_group("thin_svd");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (m, n) in SHAPES {
        let a = random::gaussian::<f32>(m, n, 1);
        group.bench_with_input(BenchmarkId::from_parameter(label(m, n)), &a, |b, a| {
            b.iter(|| thin_svd(a.as_ref()));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("truncated_exact");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (m, n) in SHAPES {
        let a = random::gaussian::<f32>(m, n, 1);
        let rank = rank_of(m, n);
        group.bench_with_input(BenchmarkId::from_parameter(label(m, n)), &a, |b, a| {
            b.iter(|| truncated_svd(a.as_ref(), rank, TruncatedSvd::Exact));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("truncated_randomized");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (m, n) in SHAPES {
        let a = random::gaussian::<f32>(m, n, 1);
        let rank = rank_of(m, n);
        let mut ws = SvdWorkspace::new();
        group.bench_with_input(BenchmarkId::from_parameter(label(m, n)), &a, |b, a| {
            b.iter(|| ws.truncated_svd(a.as_ref(), rank, TruncatedSvd::randomized(7)));
        });
    }
    group.finish();

    // The same with all work on the calling thread (`Par::Seq`), which wins when the
    // machine is busy with other work.
    let mut group = c.benchmark_group("truncated_randomized_seq");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (m, n) in SHAPES {
        let a = random::gaussian::<f32>(m, n, 1);
        let rank = rank_of(m, n);
        let mut ws = SvdWorkspace::with_parallelism(Par::Seq);
        group.bench_with_input(BenchmarkId::from_parameter(label(m, n)), &a, |b, a| {
            b.iter(|| ws.truncated_svd(a.as_ref(), rank, TruncatedSvd::randomized(7)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_svd);
criterion_main!(benches);
