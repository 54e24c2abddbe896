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
use madeit_linalg::faer::{Mat, Par};
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

/// Benchmarks, in group `name`, `make(rank)` (built once per shape) on a seeded Gaussian
/// matrix of every shape, measuring `measure_s` seconds each.
fn over_shapes<R, O>(c: &mut Criterion, name: &str, measure_s: u64, make: impl Fn(usize) -> R)
where
    R: FnMut(&Mat<f32>) -> O,
{
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(measure_s));
    for (m, n) in SHAPES {
        let a = random::gaussian::<f32>(m, n, 1);
        let mut run = make(rank_of(m, n));
        group.bench_with_input(BenchmarkId::from_parameter(label(m, n)), &a, |b, a| {
            b.iter(|| run(a));
        });
    }
    group.finish();
}

fn bench_svd(c: &mut Criterion) {
    over_shapes(c, "thin_svd", 3, |_| |a: &Mat<f32>| thin_svd(a.as_ref()));
    over_shapes(c, "truncated_exact", 3, |rank| {
        move |a: &Mat<f32>| truncated_svd(a.as_ref(), rank, TruncatedSvd::Exact)
    });
    over_shapes(c, "truncated_randomized", 2, |rank| {
        let mut ws = SvdWorkspace::new();
        move |a: &Mat<f32>| ws.truncated_svd(a.as_ref(), rank, TruncatedSvd::randomized(7))
    });
    // The same with all work on the calling thread (`Par::Seq`), which wins when the
    // machine is busy with other work.
    over_shapes(c, "truncated_randomized_seq", 2, |rank| {
        let mut ws = SvdWorkspace::with_parallelism(Par::Seq);
        move |a: &Mat<f32>| ws.truncated_svd(a.as_ref(), rank, TruncatedSvd::randomized(7))
    });
}

criterion_group!(benches, bench_svd);
criterion_main!(benches);
