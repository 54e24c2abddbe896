//! Shared helpers of the integration tests: tiny random towers, fine-tuned variants with
//! low-rank task vectors, heads and pixels.
#![allow(dead_code, clippy::unwrap_used, clippy::panic, missing_docs)]

use faer::Mat;
use madeit_adapt::{
    AdamOptions, AdaptError, AdaptReport, AdmitError, MingleConfig, SeedImages, Step,
    TestTimeExtras, TestTimeMerger,
};
use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_stream::{ExpertModel, MergedModel, TaskId};
use madeit_vit::{ClipVisionConfig, ModuleId, TaskHead};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[path = "../../../madeit-vit/tests/common/random.rs"]
mod random;
pub use random::{randn, random_params};

pub fn randn_mat(rows: usize, cols: usize, seed: u64) -> Mat<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v = randn(&mut rng, rows * cols, 1.0);
    Mat::from_fn(rows, cols, |i, j| f64::from(v[i * cols + j]))
}

/// A "fine-tuned" copy of `base`: every target weight gets a rank-`rank` update of relative
/// size about `scale`, every other tensor a small dense perturbation.
pub fn finetune(
    cfg: &ClipVisionConfig,
    base: &ParamDict,
    seed: u64,
    rank: usize,
    scale: f32,
) -> ParamDict {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = base.clone();
    for m in ModuleId::all(cfg.num_hidden_layers) {
        let (d_out, d_in) = cfg.module_dims(m.kind);
        let a = randn(&mut rng, d_out * rank, 1.0);
        let b = randn(&mut rng, rank * d_in, 1.0);
        let w = out.get_mut(&m.weight_name()).unwrap();
        let norm = (w.data().iter().map(|x| x * x).sum::<f32>()).sqrt();
        let mut delta = vec![0.0f32; d_out * d_in];
        for i in 0..d_out {
            for j in 0..d_in {
                delta[i * d_in + j] = (0..rank).map(|k| a[i * rank + k] * b[k * d_in + j]).sum();
            }
        }
        let dn = delta.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (x, d) in w.data_mut().iter_mut().zip(&delta) {
            *x += scale * norm / dn * d;
        }
    }
    let names: Vec<String> = out.keys().map(str::to_owned).collect();
    for name in names {
        if ModuleId::parse(&name).is_some_and(|(_, is_weight)| is_weight) {
            continue;
        }
        let t = out.get_mut(&name).unwrap();
        let n = t.numel();
        for (x, d) in t.data_mut().iter_mut().zip(randn(&mut rng, n, 0.01)) {
            *x += d;
        }
    }
    out
}

pub fn random_head(cfg: &ClipVisionConfig, classes: usize, seed: u64) -> TaskHead {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w = HostTensor::new(
        vec![classes, cfg.projection_dim],
        randn(&mut rng, classes * cfg.projection_dim, 1.0),
    )
    .unwrap();
    TaskHead::new(format!("head{seed}"), &w, Vec::new()).unwrap()
}

pub fn random_seed_images(cfg: &ClipVisionConfig, count: usize, seed: u64) -> SeedImages {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = count * cfg.num_channels * cfg.image_size * cfg.image_size;
    SeedImages::new(randn(&mut rng, n, 1.0), count)
}

/// Adam options with `steps` adaptation steps on batches of `batch_size` seed images, the
/// defaults otherwise.
pub fn adam(steps: usize, batch_size: usize) -> AdamOptions {
    AdamOptions {
        steps,
        batch_size,
        ..AdamOptions::default()
    }
}

/// [`adam`] with the learning rate `lr`.
pub fn adam_lr(steps: usize, batch_size: usize, lr: f64) -> AdamOptions {
    AdamOptions {
        lr,
        ..adam(steps, batch_size)
    }
}

/// A fast configuration for the tiny tower: few steps, small batches, exact SVDs.
pub fn quick_config() -> MingleConfig {
    MingleConfig {
        subspace_svd: madeit_adapt::SvdMethod::Exact,
        adam: adam(6, 4),
        ..MingleConfig::default()
    }
}

/// A stream on the tiny tower: the pretrained weights and `n_tasks` tasks, each with its
/// fine-tuned weights (rank-3 updates), `seeds` seed images and a 5-class head.
pub struct Fixture {
    pub cfg: ClipVisionConfig,
    pub theta0: ParamDict,
    pub tasks: Vec<(TaskId, ParamDict, SeedImages, TaskHead)>,
}

pub fn fixture(n_tasks: usize, seeds: usize) -> Fixture {
    let cfg = ClipVisionConfig::tiny();
    let theta0 = random_params(&cfg, 1);
    let tasks = (0..n_tasks)
        .map(|t| {
            let t64 = t as u64;
            (
                TaskId::new(format!("task{t}")),
                finetune(&cfg, &theta0, 100 + t64, 3, 0.3),
                random_seed_images(&cfg, seeds, 200 + t64),
                random_head(&cfg, 5, 300 + t64),
            )
        })
        .collect();
    Fixture { cfg, theta0, tasks }
}

/// Absorbs task `t` of the fixture (which must succeed).
/// `m` absorbs one task: its fine-tuned weights, seed images and head.
pub fn absorb_with<M: TestTimeMerger + ?Sized>(
    m: &mut M,
    pretrained: &ParamDict,
    finetuned: &ParamDict,
    task: &TaskId,
    seed: SeedImages,
    head: &TaskHead,
) -> Result<AdaptReport, AdaptError> {
    let extras = TestTimeExtras::new(seed, head.clone());
    m.absorb(&Step::new(pretrained, finetuned, task).with_extras(&extras))
}

/// `unwrap_err` for a refused step whose error must be an admission error.
pub trait UnwrapAdmission {
    /// The admission error; panics on success or on another error.
    fn unwrap_admission(self) -> AdmitError;
}

impl UnwrapAdmission for Result<AdaptReport, AdaptError> {
    #[track_caller]
    fn unwrap_admission(self) -> AdmitError {
        match self {
            Err(AdaptError::Admission(e)) => e,
            other => panic!("expected an admission error, got {other:?}"),
        }
    }
}

pub fn absorb(m: &mut impl TestTimeMerger, f: &Fixture, t: usize) -> AdaptReport {
    let (id, ft, seed, head) = &f.tasks[t];
    absorb_with(m, &f.theta0, ft, id, seed.clone(), head).unwrap()
}

/// `m` after absorbing the first `n` tasks of the fixture.
pub fn absorbed<M: TestTimeMerger>(mut m: M, f: &Fixture, n: usize) -> M {
    for t in 0..n {
        absorb(&mut m, f, t);
    }
    m
}

/// The merged model of `m`, which must be an expert model.
pub fn expert_model(m: &impl TestTimeMerger, f: &Fixture) -> ExpertModel {
    match m.merged_model(&f.theta0).unwrap() {
        MergedModel::Experts(model) => model,
        _ => panic!("expected an expert model"),
    }
}
