//! Cost of MINGLE's test-time adaptation for one task.
//!
//! - `mingle/small`: a whole `absorb` of the second task (experts with the projection
//!   against the first task's experts, 50 Adam steps on batches of 16, subspace update) on the
//!   embedded zoo's tower shape (d = 96, MLP 384, 4 layers, 32 px, 8 px patches, no
//!   projection), 10 classes x 5 seed samples, random weights.
//! - `mingle/vit_b32/*`: the stages at CLIP ViT-B/32 shape (72 target modules, rank 64,
//!   second task), measured separately because a whole task takes minutes on 2 cores:
//!   one expert of a 768 x 768 and of a 3072 x 768 module (72 per task: 48 and 24), one
//!   adaptation step at batch 16 (forward, backward, projection of 72 gradients, Adam; 50
//!   per task), and the subspace pass on one batch of 16 seed images with the top-3
//!   directions of the 48 distinct module inputs.
//!
//! - `table_rows/small/*`: a whole `absorb` of the second task by C. LW AdaMerging (both
//!   modes) and C. LoRA-WEMoE with their defaults (50 Adam steps on batches of 16) on the
//!   same zoo-shaped tower and seed set.
//!
//! - `table_rows/vit_b32/*`: a whole `absorb` of the second task by the same two methods at
//!   ViT-B/32 shape with 1 and with 3 adaptation steps on 16 seed images, which separates the
//!   cost of one step from the per-task cost.
//!
//! Run: `cargo bench -p madeit-adapt --bench adapt` (add `-- small`, `-- vit_b32` or
//! `-- table_rows` to select).

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::Duration;

use burn::prelude::*;
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, criterion_group, criterion_main};
use faer::Mat;
use madeit_adapt::{
    AdaMergingConfig, AdamOptions, AdaptReport, GateProjection, GateTrainer, GradientProjector,
    LoraWemoe, LwAdaMerging, Mingle, MingleConfig, SeedBatches, SeedImages, SeedTask, Step,
    TestTimeExtras, TestTimeMerger, WemoeConfig, build_expert, extend_basis, seed_pass,
    teacher_logits, top_directions,
};
use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_stream::TaskId;
use madeit_vit::{
    ClipVisionConfig, ClipVisionModel, GateValues, LowRankFactors, ModuleId, TaskHead,
    expected_tensors,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| scale * (2.0 * rng.random::<f32>() - 1.0))
        .collect()
}

fn random_params(cfg: &ClipVisionConfig, projection: bool, seed: u64) -> ParamDict {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut dict = ParamDict::new();
    let mut shapes = expected_tensors(cfg);
    if projection {
        shapes.push((
            "visual_projection.weight".into(),
            vec![cfg.projection_dim, cfg.hidden_size],
        ));
    }
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let data = if name.contains("norm") && name.ends_with("weight") {
            vec![1.0; n]
        } else if shape.len() >= 2 {
            let fan_in: usize = shape[1..].iter().product();
            uniform(&mut rng, n, (3.0 / fan_in as f32).sqrt())
        } else {
            uniform(&mut rng, n, 0.02)
        };
        dict.insert(name, HostTensor::new(shape, data).unwrap());
    }
    dict
}

/// `base` plus a rank-8 update of relative size 0.2 on every target weight.
fn finetune(cfg: &ClipVisionConfig, base: &ParamDict, seed: u64) -> ParamDict {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = base.clone();
    for m in ModuleId::all(cfg.num_hidden_layers) {
        let (d_out, d_in) = cfg.module_dims(m.kind);
        let delta = low_rank(&mut rng, d_out, d_in, 8);
        let w = out.get_mut(&m.weight_name()).unwrap();
        let norm = w.l2_norm() as f32;
        let dn = delta.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (x, d) in w.data_mut().iter_mut().zip(&delta) {
            *x += 0.2 * norm / dn * d;
        }
    }
    out
}

fn low_rank(rng: &mut ChaCha8Rng, d_out: usize, d_in: usize, r: usize) -> Vec<f32> {
    let a = uniform(rng, d_out * r, 1.0);
    let b = uniform(rng, r * d_in, 1.0);
    let am = Mat::from_fn(d_out, r, |i, k| a[i * r + k]);
    let bm = Mat::from_fn(r, d_in, |k, j| b[k * d_in + j]);
    let p = am * bm;
    (0..d_out)
        .flat_map(|i| (0..d_in).map(move |j| (i, j)))
        .map(|(i, j)| p[(i, j)])
        .collect()
}

fn head(classes: usize, dim: usize, seed: u64) -> TaskHead {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w = HostTensor::new(vec![classes, dim], uniform(&mut rng, classes * dim, 1.0)).unwrap();
    TaskHead::new("bench", &w, Vec::new()).unwrap()
}

fn images(cfg: &ClipVisionConfig, count: usize, seed: u64) -> SeedImages {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = count * cfg.num_channels * cfg.image_size * cfg.image_size;
    SeedImages::new(uniform(&mut rng, n, 1.0), count)
}

fn zoo_shape() -> ClipVisionConfig {
    // The tiny tower's heads, images, patches and activation.
    ClipVisionConfig {
        hidden_size: 96,
        intermediate_size: 384,
        num_hidden_layers: 4,
        projection_dim: 96,
        ..ClipVisionConfig::tiny()
    }
}

/// A pretrained tower and two tasks (fine-tuned weights, 10-class head, seed images), drawn
/// with seeds `base` (tower), `base + 1`, `base + 2` (fine-tunes), `base + 3`, `base + 4`
/// (heads) and `base + 5`, `base + 6` (seed images).
struct TwoTasks {
    theta0: ParamDict,
    finetuned: [ParamDict; 2],
    /// Each task's seed images and head.
    extras: [TestTimeExtras; 2],
}

impl TwoTasks {
    fn new(cfg: &ClipVisionConfig, projection: bool, base: u64, seed_images: usize) -> Self {
        let theta0 = random_params(cfg, projection, base);
        let dim = if projection {
            cfg.projection_dim
        } else {
            cfg.hidden_size
        };
        Self {
            finetuned: [
                finetune(cfg, &theta0, base + 1),
                finetune(cfg, &theta0, base + 2),
            ],
            extras: [
                TestTimeExtras::new(images(cfg, seed_images, base + 5), head(10, dim, base + 3)),
                TestTimeExtras::new(images(cfg, seed_images, base + 6), head(10, dim, base + 4)),
            ],
            theta0,
        }
    }

    fn absorb(&self, m: &mut dyn TestTimeMerger, t: usize) -> AdaptReport {
        let id = TaskId::new(["a", "b"][t]);
        let step = Step::new(&self.theta0, &self.finetuned[t], &id);
        m.absorb(&step.with_extras(&self.extras[t])).unwrap()
    }
}

/// Benchmarks `id`: a whole `absorb` of task 2 by a merger from `make` that has absorbed task
/// 1 (restored from a saved state outside the timed region).
fn bench_task2(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    make: &dyn Fn() -> Box<dyn TestTimeMerger>,
    tasks: &TwoTasks,
) {
    let mut first = make();
    tasks.absorb(first.as_mut(), 0);
    let state = first.state().unwrap();
    drop(first);
    g.bench_function(id, |b| {
        b.iter_batched(
            || {
                let mut m = make();
                m.restore(&state).unwrap();
                m
            },
            |mut m| black_box(tasks.absorb(m.as_mut(), 1)),
            BatchSize::PerIteration,
        );
    });
}

fn small(c: &mut Criterion) {
    let cfg = zoo_shape();
    let tasks = TwoTasks::new(&cfg, false, 1, 50);
    let config = MingleConfig::default();
    let make = || -> Box<dyn TestTimeMerger> {
        Box::new(Mingle::new(config.clone(), cfg.clone(), Device::flex()).unwrap())
    };
    // One untimed run to print the stage breakdown of a step.
    let mut probe = make();
    tasks.absorb(probe.as_mut(), 0);
    let report = tasks.absorb(probe.as_mut(), 1);
    let stage = |k: &str| report.base.metrics.get(k).copied().unwrap_or(f64::NAN);
    eprintln!(
        "small shape, task 2: experts {:.3} s, teacher {:.3} s, adaptation {:.3} s, subspace {:.3} s; KL after {:.4}",
        stage("seconds_experts"),
        stage("seconds_teacher"),
        stage("seconds_adaptation"),
        stage("seconds_subspace"),
        report.kl_after
    );
    let mut g = c.benchmark_group("mingle");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    bench_task2(&mut g, "small/absorb_task2_50_steps", &make, &tasks);
    g.finish();
}

fn random_factors(d_out: usize, d_in: usize, r: usize, seed: u64) -> LowRankFactors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let u = Mat::from_fn(d_out, r, |_, _| rng.random::<f32>() - 0.5);
    let v = Mat::from_fn(d_in, r, |_, _| rng.random::<f32>() - 0.5);
    let qu = madeit_linalg::orthonormalize(u.as_ref()).unwrap();
    let qv = madeit_linalg::orthonormalize(v.as_ref()).unwrap();
    let s: Vec<f32> = (0..r).map(|k| 0.5 * 0.97f32.powi(k as i32)).collect();
    LowRankFactors::from_mats(qu.as_ref(), &s, qv.as_ref()).unwrap()
}

fn vit_b32(c: &mut Criterion) {
    let mut g = c.benchmark_group("mingle");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(30));

    // Expert construction of one module at task 2 (projection against a rank-64 expert).
    for (name, d_out, d_in) in [("768x768", 768, 768), ("3072x768", 3072, 768)] {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let w0 = Mat::from_fn(d_out, d_in, |_, _| 0.05 * (rng.random::<f32>() - 0.5));
        let delta = low_rank(&mut rng, d_out, d_in, 32);
        let wt = Mat::from_fn(d_out, d_in, |i, j| {
            w0[(i, j)] + 1e-3 * delta[i * d_in + j] + 1e-4 * (rng.random::<f32>() - 0.5)
        });
        let prev = vec![random_factors(d_out, d_in, 64, 12)];
        let module = ModuleId::new(0, madeit_vit::ModuleKind::Fc1);
        g.bench_function(format!("vit_b32/expert_{name}"), |b| {
            b.iter(|| {
                black_box(
                    build_expert(
                        module,
                        w0.as_ref(),
                        wt.as_ref(),
                        &prev,
                        64,
                        true,
                        madeit_linalg::TruncatedSvd::Exact,
                    )
                    .unwrap(),
                )
            });
        });
    }

    // One adaptation step and the subspace pass at ViT-B/32 shape, task 2.
    let cfg = ClipVisionConfig::vit_b_32();
    let theta0 = random_params(&cfg, true, 21);
    let backbone = ClipVisionModel::from_params(&cfg, &theta0).unwrap();
    let teacher_model = ClipVisionModel::from_params(&cfg, &finetune(&cfg, &theta0, 22)).unwrap();
    let h = head(10, cfg.projection_dim, 23);
    let seed = images(&cfg, 16, 24);
    let teacher = teacher_logits(&teacher_model, &h, &seed, 16).unwrap();
    drop(teacher_model);
    let modules: Vec<ModuleId> = ModuleId::all(cfg.num_hidden_layers).collect();
    let mut experts = BTreeMap::new();
    let mut subspaces = BTreeMap::new();
    for (i, &m) in modules.iter().enumerate() {
        let (d_out, d_in) = cfg.module_dims(m.kind);
        let seed = 100 + 2 * i as u64;
        experts.insert(
            m,
            vec![
                random_factors(d_out, d_in, 64, seed),
                random_factors(d_out, d_in, 64, seed + 1),
            ],
        );
        let u = madeit_linalg::orthonormalize(
            Mat::<f64>::from_fn(d_in, 3, |r, c| ((r * 7 + c * 13 + i) % 17) as f64 - 8.0).as_ref(),
        )
        .unwrap();
        subspaces.insert(m, Mat::<f32>::from_fn(d_in, 3, |r, c| u[(r, c)] as f32));
    }
    let mut gates = GateValues::new();
    gates
        .push_random(&cfg, modules.iter().copied(), 0.01, 0.0, 31)
        .unwrap();
    gates
        .push_random(&cfg, modules.iter().copied(), 0.01, 0.0, 32)
        .unwrap();
    let config = MingleConfig::default();
    let task = SeedTask {
        head: &h,
        seed: &seed,
        teacher: &teacher,
    };
    let batch: Vec<usize> = (0..16).collect();
    {
        let projectors: BTreeMap<ModuleId, GradientProjector> = subspaces
            .iter()
            .map(|(m, u)| {
                (
                    *m,
                    GradientProjector::new(u.as_ref(), GateProjection::Relaxed, 1.0, 0.99),
                )
            })
            .collect();
        let mut trainer =
            GateTrainer::new(&backbone, &experts, &gates, projectors, task, &config).unwrap();
        g.bench_function("vit_b32/adaptation_step_batch16", |b| {
            b.iter(|| black_box(trainer.step(&batch).unwrap()));
        });
    }
    let record: BTreeSet<ModuleId> = modules.iter().copied().collect();
    let batches = SeedBatches::new(16, 16, 1).epoch();
    let svd = config.subspace_svd.to_linalg(5);
    g.bench_function("vit_b32/subspace_pass_16_images", |b| {
        b.iter(|| {
            let pass =
                seed_pass(&backbone, &experts, &gates, task, &batches, 2.0, &record).unwrap();
            let mut total = 0;
            for cov in &pass.covariances {
                let top = top_directions(cov.modules[0], cov.to_mat().as_ref(), 3, svd).unwrap();
                for m in &cov.modules {
                    total += extend_basis(*m, subspaces[m].as_ref(), top.as_ref())
                        .unwrap()
                        .ncols();
                }
            }
            black_box((pass.kl, total))
        });
    });
    g.finish();
}

fn table_rows(c: &mut Criterion) {
    let cfg = zoo_shape();
    let tasks = TwoTasks::new(&cfg, false, 1, 50);
    let mut g = c.benchmark_group("table_rows");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    for (name, accumulate) in [
        ("c_lw_adamerging", Some(false)),
        ("c_lw_adamerging_accumulate", Some(true)),
        ("c_lora_wemoe", None),
    ] {
        let make = || -> Box<dyn TestTimeMerger> {
            let device = Device::flex();
            match accumulate {
                Some(accumulate) => {
                    let config = AdaMergingConfig {
                        accumulate,
                        ..AdaMergingConfig::default()
                    };
                    Box::new(LwAdaMerging::new(config, cfg.clone(), device).unwrap())
                }
                None => {
                    Box::new(LoraWemoe::new(WemoeConfig::default(), cfg.clone(), device).unwrap())
                }
            }
        };
        bench_task2(
            &mut g,
            &format!("small/{name}_absorb_task2_50_steps"),
            &make,
            &tasks,
        );
    }
    g.finish();
}

/// A whole `absorb` of task 2 at ViT-B/32 shape by C. LW AdaMerging and C. LoRA-WEMoE,
/// with 1 and with 3 adaptation steps on 16 seed images (batch 16): the difference of the
/// two is the cost of two steps, the rest is the per-task cost (task-vector and merge work,
/// WEMoE's expert SVDs). A 50-step task is `fixed + 50 x step`.
fn table_rows_vit_b32(c: &mut Criterion) {
    let cfg = ClipVisionConfig::vit_b_32();
    let tasks = TwoTasks::new(&cfg, true, 41, 16);
    let mut g = c.benchmark_group("table_rows");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(30));
    for name in ["c_lw_adamerging", "c_lora_wemoe"] {
        for steps in [1, 3] {
            let make = || -> Box<dyn TestTimeMerger> {
                let device = Device::flex();
                let adam = AdamOptions {
                    steps,
                    ..AdamOptions::default()
                };
                if name == "c_lw_adamerging" {
                    let config = AdaMergingConfig {
                        adam,
                        ..AdaMergingConfig::default()
                    };
                    Box::new(LwAdaMerging::new(config, cfg.clone(), device).unwrap())
                } else {
                    let config = WemoeConfig {
                        adam,
                        ..WemoeConfig::default()
                    };
                    Box::new(LoraWemoe::new(config, cfg.clone(), device).unwrap())
                }
            };
            bench_task2(
                &mut g,
                &format!("vit_b32/{name}_absorb_task2_{steps}_steps"),
                &make,
                &tasks,
            );
        }
    }
    g.finish();
}

criterion_group!(benches, small, vit_b32, table_rows, table_rows_vit_b32);
criterion_main!(benches);
