//! One `absorb` step of every method at CLIP ViT-B/32 scale.
//!
//! The model has every parameter of a ViT-B/32 vision tower (12 layers; q, k, v, out
//! 768×768, fc1 3072×768, fc2 768×3072, biases, layer norms, class/patch/position
//! embeddings: 87,456,000 values). Task vectors are random low-rank-plus-noise: rank-16
//! products plus Gaussian noise on matrices, Gaussian noise elsewhere. Each merger is primed
//! with two tasks and the third step is measured (a fresh copy of the primed merger is
//! restored from its state outside the timed region).
//!
//! Each step is measured twice: in wall-clock time, and in CPU time of the whole process
//! (user + system, all threads, from `/proc/self/stat`, Linux only), which is what the step
//! costs independently of other work sharing the machine; on an otherwise idle machine with
//! `c` cores the wall time of a well-parallelised step approaches CPU time / `c`.
//!
//! Also measured: the pieces of one OPCM linear-weight step (f64 thin SVD, projection) at
//! the two shapes that occur.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use faer::Mat;
use madeit_linalg::random::gaussian;
use madeit_merge::{MethodConfig, Step, TaskId, opcm_projection, resume};
use madeit_params::{ParamDict, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

const D: usize = 768;
const F: usize = 3072;

/// Names and shapes of a CLIP ViT-B/32 vision tower (transformers layout, no prefix).
fn vit_b32_layout() -> Vec<(String, Vec<usize>)> {
    madeit_vit::expected_tensors(&madeit_vit::ClipVisionConfig::vit_b_32())
}

fn noise(n: usize, scale: f64, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let g: f64 = StandardNormal.sample(&mut rng);
            (g * scale) as f32
        })
        .collect()
}

/// Pretrained weights: N(0, 0.02²).
fn pretrained() -> ParamDict {
    let layout = vit_b32_layout();
    layout
        .par_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product();
            let t = Tensor::new(shape.clone(), noise(n, 0.02, i as u64)).expect("shape");
            (name.clone(), t)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect()
}

/// `θ_0 + τ` with `τ` = rank-16 product (Frobenius scale ~ 0.5 per matrix) plus N(0, 1e-3²)
/// noise on matrices, N(0, 1e-3²) elsewhere.
fn finetuned(pre: &ParamDict, task: u64) -> ParamDict {
    let names: Vec<(&str, &Tensor)> = pre.iter().collect();
    names
        .par_iter()
        .enumerate()
        .map(|(i, &(name, p))| {
            let seed = task * 100_000 + i as u64;
            let mut tau = noise(p.numel(), 1e-3, seed);
            if let &[m, n] = p.shape() {
                let a = gaussian::<f64>(m, 16, seed ^ 0xa5a5);
                let b = gaussian::<f64>(n, 16, seed ^ 0x5a5a);
                let s = 0.5 / (16.0 * (m * n) as f64).sqrt();
                let low = Mat::<f64>::from_fn(m, n, |r, c| {
                    (0..16).map(|k| a[(r, k)] * b[(c, k)]).sum::<f64>() * s
                });
                for r in 0..m {
                    for c in 0..n {
                        tau[r * n + c] += low[(r, c)] as f32;
                    }
                }
            }
            let data = p.data().iter().zip(&tau).map(|(a, b)| a + b).collect();
            let t = Tensor::new(p.shape().to_vec(), data).expect("shape");
            (name.to_owned(), t)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect()
}

/// CPU time (user + system) of this process, all threads, in seconds.
fn cpu_seconds() -> f64 {
    // Fields after the `(comm)` entry: state is field 3, utime 14, stime 15 (clock ticks,
    // USER_HZ = 100 on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (Linux)");
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Criterion measurement: process CPU time (reported in the time units of wall time).
struct CpuTime;

static WALL: WallTime = WallTime;

impl Measurement for CpuTime {
    type Intermediate = f64;
    type Value = f64;

    fn start(&self) -> f64 {
        cpu_seconds()
    }
    fn end(&self, start: f64) -> f64 {
        cpu_seconds() - start
    }
    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }
    fn zero(&self) -> f64 {
        0.0
    }
    fn to_f64(&self, value: &f64) -> f64 {
        value * 1e9
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

/// The pretrained model and three fine-tuned models, built once.
fn models() -> &'static (ParamDict, Vec<ParamDict>) {
    static MODELS: OnceLock<(ParamDict, Vec<ParamDict>)> = OnceLock::new();
    MODELS.get_or_init(|| {
        let pre = pretrained();
        assert_eq!(pre.numel(), 87_456_000);
        let tasks = (1..=3).map(|t| finetuned(&pre, t)).collect();
        (pre, tasks)
    })
}

fn absorb_step_in<M: Measurement>(c: &mut Criterion<M>, group_name: &str) {
    let (pre, tasks) = models();
    let mut group = c.benchmark_group(group_name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    // Every registered data-free method with its defaults, then two variants.
    let configs = madeit_merge::METHODS
        .iter()
        .map(|info| {
            (
                info.name,
                MethodConfig::default_for(info.name).expect("registered"),
            )
        })
        .chain(std::iter::once((
            // The default (`svd = auto`) is randomized at this shape; the exact path for
            // comparison.
            "made_it_exact_svd",
            MethodConfig::from_json_str(r#"{"method": "made_it", "svd": "exact"}"#).expect("valid"),
        )))
        .chain(std::iter::once((
            // The default OPCM decomposes in f32 (the reference's precision).
            "opcm_f64",
            MethodConfig::from_json_str(r#"{"method": "opcm", "precision": "f64"}"#)
                .expect("valid"),
        )));
    for (name, cfg) in configs {
        let mut primed = cfg.build().expect("valid defaults");
        for (t, ft) in tasks.iter().take(2).enumerate() {
            primed
                .absorb(&Step::new(pre, ft, &TaskId::new(format!("t{t}"))))
                .expect("absorb");
        }
        let state = primed.state().expect("state");
        drop(primed);
        let third = TaskId::new("t2");
        group.bench_function(name, |b| {
            b.iter_batched(
                || resume(&state).expect("resume"),
                |mut m| {
                    black_box(
                        m.absorb(&Step::new(pre, &tasks[2], &third))
                            .expect("absorb"),
                    );
                    m
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn absorb_step(c: &mut Criterion) {
    absorb_step_in(c, "absorb_vit_b32_step3");
}

fn absorb_step_cpu(c: &mut Criterion<CpuTime>) {
    absorb_step_in(c, "absorb_vit_b32_step3_cpu");
}

fn opcm_pieces(c: &mut Criterion) {
    let mut group = c.benchmark_group("opcm_linear_weight_f64");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (m, n) in [(D, D), (F, D)] {
        let d = gaussian::<f64>(m, n, 1);
        let tau = gaussian::<f64>(m, n, 2);
        group.bench_function(format!("thin_svd_{m}x{n}"), |b| {
            b.iter(|| black_box(madeit_linalg::thin_svd(d.as_ref()).expect("svd")));
        });
        group.bench_function(format!("svd_and_projection_{m}x{n}"), |b| {
            b.iter(|| black_box(opcm_projection(d.as_ref(), tau.as_ref(), 0.5).expect("proj")));
        });
    }
    group.finish();
}

criterion_group!(wall, absorb_step, opcm_pieces);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(CpuTime);
    targets = absorb_step_cpu
}
criterion_main!(wall, cpu);
