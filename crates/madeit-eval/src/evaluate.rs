//! Test accuracy of dense and expert models, and an [`Evaluator`] that owns a benchmark's
//! heads and test splits and remembers what it has computed.
//!
//! # Accuracy
//!
//! For a test image of a pre-packed split (the zoo layout) with bytes `b` (channels first),
//! the network input is `x = (b / 255 − mean_c) / std_c` with madeit-data's [`NORM_MEAN`] /
//! [`NORM_STD`] ([`madeit_data::ImageSet::normalized_nchw`]); an image of a dataset on disk
//! is decoded and preprocessed as transformers' `CLIPImageProcessor` does
//! ([`crate::images::StreamedImages`]). The image embedding `e` is
//! [`VisionOutput::embedding`](madeit_vit::VisionOutput::embedding) (the projected
//! embedding, or the pooled output for a tower without projection); the logits over the
//! task's own `C` classes are `100 · cos(e, h_c)` ([`TaskHead::logits`]) and the prediction
//! is their argmax (the first class wins ties). The accuracy is
//! `(number of correct predictions) / (number of test images)`, a fraction in `[0, 1]`.
//!
//! # Expert models
//!
//! A [`MergedModel::Experts`] (a backbone plus low-rank experts `ΔW = up · down` on target
//! linear weights) is evaluated with a per-sample routing chosen by an [`ExpertRouter`]:
//! for every batch the router returns which expert each sample uses in each module, and the
//! routed forward adds `up_e · down_e · x` to that module's output
//! ([`ClipVisionModel::forward_routed`]). [`ProjectionRouter`] routes by the projection
//! score of the module inputs of a backbone pass; [`MadeItRouter`] applies MADE-IT's
//! path-consistent routing to the same scores; [`OracleRouter`] uses the task label (an
//! upper bound, not a continual method).
//!
//! An expert model may prescribe its routing rule ([`ExpertModel::routing`]): models with
//! [`ExpertRouting::MadeItPaths`] are routed by [`MadeItRouter`] whenever the configured
//! router is the default [`ProjectionRouter`] (all tokens), see
//! [`ExpertRouter::defers_to_model`]; any other router (the oracle, the class-token
//! projection) is used as configured.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use burn::prelude::{Device, Tensor};
use madeit_data::{NORM_MEAN, NORM_STD};
use madeit_merge::{ExpertModel, ExpertRouting, Fingerprint, MergedModel, TaskId};
use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_vit::{
    ClipVisionConfig, ClipVisionModel, ExpertBank, ModuleId, Routing, TaskHead, TokenAggregation,
    VisionOutput,
};
use rayon::prelude::*;

use crate::benchmark::Benchmark;
use crate::error::RunError;
use crate::images::{ImagesRef, TaskImages};

mod routers;
pub use routers::{
    ExpertRouter, MadeItRouter, OracleRouter, ProjectionRouter, RouteRequest, model_router,
};

/// Images per forward pass in evaluation, unless configured otherwise.
pub const DEFAULT_EVAL_BATCH: usize = 128;

fn check_task(
    config: &ClipVisionConfig,
    head: &TaskHead,
    test: ImagesRef<'_>,
) -> Result<(), RunError> {
    let bad = |reason: String| RunError::InvalidTask {
        task: head.name().to_owned(),
        reason,
    };
    if test.is_empty() {
        return Err(bad("the test split is empty".into()));
    }
    if test.num_classes() != head.num_classes() {
        return Err(bad(format!(
            "the test split has {} classes, the head {}",
            test.num_classes(),
            head.num_classes()
        )));
    }
    match test.shape_problem(config) {
        Some(problem) => Err(bad(problem)),
        None => Ok(()),
    }
}

/// Counts correct predictions of `forward` (pixels → embeddings) on `test`, `batch` images at
/// a time. Packed batches run in parallel on the rayon pool (each forward is mostly
/// single-threaded at these sizes); a streamed split is decoded ahead on its worker threads
/// and its batches run one after the other (each forward uses the pool). The count does
/// not depend on the schedule.
pub(crate) fn count_correct(
    model: &ClipVisionModel,
    head: &TaskHead,
    test: ImagesRef<'_>,
    batch: usize,
    forward: &(dyn Fn(Tensor<4>) -> Result<Tensor<2>, RunError> + Sync),
) -> Result<f64, RunError> {
    check_task(model.config(), head, test)?;
    if batch == 0 {
        return Err(RunError::config(
            "the evaluation batch size must be positive",
        ));
    }
    let correct = match test {
        ImagesRef::Packed(test) => {
            let indices: Vec<usize> = (0..test.n).collect();
            indices
                .par_chunks(batch)
                .map(|chunk| -> Result<usize, RunError> {
                    let pixels = test.normalized_nchw(chunk, &NORM_MEAN, &NORM_STD)?;
                    let pixels = model.pixels(pixels, chunk.len())?;
                    let pred = head.predict(forward(pixels)?)?;
                    Ok(pred
                        .iter()
                        .zip(chunk)
                        .filter(|&(p, &i)| test.labels.get(i).is_some_and(|&l| l as usize == *p))
                        .count())
                })
                .try_reduce(|| 0, |a, b| Ok(a + b))?
        }
        ImagesRef::Streamed(s) => {
            let mut correct = 0;
            for b in s.batches(batch) {
                let b = b?;
                let pixels = model.pixels(b.pixels, b.len)?;
                let pred = head.predict(forward(pixels)?)?;
                correct += pred
                    .iter()
                    .zip(&b.labels)
                    .filter(|&(p, &l)| l as usize == *p)
                    .count();
            }
            correct
        }
    };
    Ok(correct as f64 / test.len() as f64)
}

/// Test accuracy of a dense tower (see the module docs), `batch` images per forward.
///
/// # Errors
/// [`RunError::InvalidTask`] when the split does not fit the model or head (image size,
/// channels, number of classes, empty split); errors of the forward.
pub fn evaluate_model<'a>(
    model: &ClipVisionModel,
    head: &TaskHead,
    test: impl Into<ImagesRef<'a>>,
    batch: usize,
) -> Result<f64, RunError> {
    count_correct(model, head, test.into(), batch, &|px| {
        Ok(model.forward(px)?.embedding())
    })
}

/// Test accuracy of dense weights `params` (HF names) with tower configuration `config`:
/// builds the tower on the CPU and calls [`evaluate_model`]. Use [`DEFAULT_EVAL_BATCH`]
/// (128) for `batch` unless memory says otherwise.
///
/// # Errors
/// As [`ClipVisionModel::from_params`] and [`evaluate_model`].
pub fn evaluate_dense<'a>(
    config: &ClipVisionConfig,
    params: &ParamDict,
    head: &TaskHead,
    test: impl Into<ImagesRef<'a>>,
    batch: usize,
) -> Result<f64, RunError> {
    let model = ClipVisionModel::from_params(config, params)?;
    evaluate_model(&model, head, test, batch)
}

/// An expert model uploaded for routed forwards: the backbone tower, its expert bank and
/// the tasks each expert serves.
#[derive(Debug)]
pub struct ExpertTower {
    model: ClipVisionModel,
    bank: ExpertBank,
    expert_tasks: Vec<(ModuleId, Vec<Vec<TaskId>>)>,
    rule: ExpertRouting,
}

impl ExpertTower {
    /// Uploads `m` to `device`.
    ///
    /// # Errors
    /// [`RunError::Experts`] for an expert on a tensor that is not a target weight or with
    /// inconsistent factor shapes; the tower's errors for the backbone.
    pub fn new(
        config: &ClipVisionConfig,
        m: &ExpertModel,
        device: &Device,
    ) -> Result<Self, RunError> {
        let model = ClipVisionModel::from_params_on(config, &m.backbone, device)?;
        let mut modules = Vec::new();
        let mut expert_tasks = Vec::new();
        for (name, experts) in &m.experts {
            let Some((id, true)) = ModuleId::parse(name) else {
                return Err(RunError::Experts {
                    reason: format!(
                        "`{name}` is not the weight of a target module (q, k, v, out_proj, fc1, fc2)"
                    ),
                });
            };
            let factors = experts.iter().map(|x| x.factors.clone()).collect();
            expert_tasks.push((id, experts.iter().map(|x| x.tasks.clone()).collect()));
            modules.push((id, factors));
        }
        let bank = ExpertBank::new(config, modules, device)?;
        Ok(Self {
            model,
            bank,
            expert_tasks,
            rule: m.routing,
        })
    }

    /// The routed forward of a batch: `router` picks the experts of every sample (the
    /// model's own router when it has one and `router` defers to it, as MADE-IT's paths
    /// do); `task` is the task the batch comes from, which only the oracle reads.
    ///
    /// # Errors
    /// As the router and [`ClipVisionModel::forward_routed`].
    pub fn forward(
        &self,
        router: &dyn ExpertRouter,
        pixels: Tensor<4>,
        task: &str,
    ) -> Result<VisionOutput, RunError> {
        let own = model_router(router, self.rule);
        let router: &dyn ExpertRouter = match &own {
            Some(r) => r,
            None => router,
        };
        let routing = router.route(&RouteRequest {
            model: &self.model,
            bank: &self.bank,
            expert_tasks: &self.expert_tasks,
            pixels: &pixels,
            task,
        })?;
        Ok(self.model.forward_routed(pixels, &self.bank, &routing)?)
    }

    /// The backbone tower.
    #[must_use]
    pub fn model(&self) -> &ClipVisionModel {
        &self.model
    }

    /// The same experts on a backbone given `projection` when it has none (see
    /// [`Evaluator::with_projection`]).
    ///
    /// # Errors
    /// As [`ClipVisionModel::with_projection`].
    pub fn with_projection(mut self, projection: Option<&HostTensor>) -> Result<Self, RunError> {
        self.model = with_projection(self.model, projection)?;
        Ok(self)
    }

    fn accuracy(
        &self,
        router: &dyn ExpertRouter,
        head: &TaskHead,
        test: ImagesRef<'_>,
        batch: usize,
    ) -> Result<f64, RunError> {
        count_correct(&self.model, head, test, batch, &|px| {
            Ok(self.forward(router, px, head.name())?.embedding())
        })
    }
}

/// Test accuracy of an expert model with per-sample routing (see the module docs; a model
/// with [`ExpertRouting::MadeItPaths`] is routed by [`MadeItRouter`] when `router` defers
/// to it).
///
/// # Errors
/// [`RunError::Experts`] for an expert on a tensor that is not a target weight or with
/// inconsistent factor shapes; as [`evaluate_model`] and the router.
pub fn evaluate_experts<'a>(
    config: &ClipVisionConfig,
    model: &ExpertModel,
    router: &dyn ExpertRouter,
    head: &TaskHead,
    test: impl Into<ImagesRef<'a>>,
    batch: usize,
) -> Result<f64, RunError> {
    ExpertTower::new(config, model, &Device::flex())?.accuracy(router, head, test.into(), batch)
}

/// One task of an [`Evaluator`]: its fixed head and test split.
#[derive(Debug, Clone)]
pub struct EvalTask {
    /// Task name.
    pub name: String,
    /// The head.
    pub head: TaskHead,
    /// The test split (pre-packed, or a dataset streamed through CLIP's preprocessing).
    pub test: TaskImages,
}

/// Identifies a model for the result cache: the fingerprint of its dense weights (or of its
/// backbone and of its experts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ModelKey {
    weights: Fingerprint,
    experts: Option<Fingerprint>,
}

fn model_key(model: &MergedModel) -> Option<ModelKey> {
    match model {
        MergedModel::Dense(p) => Some(ModelKey {
            weights: Fingerprint::of_params(p),
            experts: None,
        }),
        MergedModel::Experts(m) => {
            let mut factors = m.factor_dict();
            for (name, experts) in &m.experts {
                for (e, x) in experts.iter().enumerate() {
                    let tasks: Vec<f32> = x
                        .tasks
                        .iter()
                        .flat_map(|t| t.as_str().bytes().map(f32::from).chain([-1.0]))
                        .collect();
                    if let Ok(t) = HostTensor::new(vec![tasks.len()], tasks) {
                        factors.insert(format!("{name}.expert{e}.tasks"), t);
                    }
                }
            }
            // The routing rule changes the results: it is part of the key.
            let rule: f32 = match m.routing {
                ExpertRouting::PerModule => 0.0,
                ExpertRouting::MadeItPaths {
                    tokens: madeit_merge::made_it::TokenAggregation::ClsOnly,
                } => 2.0,
                ExpertRouting::MadeItPaths { .. } => 1.0,
                _ => 3.0,
            };
            if let Ok(t) = HostTensor::new(vec![1], vec![rule]) {
                factors.insert("routing_rule", t);
            }
            Some(ModelKey {
                weights: Fingerprint::of_params(&m.backbone),
                experts: Some(Fingerprint::of_params(&factors)),
            })
        }
        // Kinds of merged models this crate does not know are never cached.
        _ => None,
    }
}

/// Owns the heads and test splits of a benchmark's tasks and evaluates models on them.
///
/// Results are cached by (model fingerprint, task): a model that comes back — the same
/// merged model after step 1 of two orders that start with the same task, a merger whose
/// step changed nothing — is not evaluated twice. Dense models are keyed by the 128-bit
/// [`Fingerprint`] of their weights, expert models by those of their backbone and experts.
/// `Evaluator` is `Sync`: streams may share one.
#[derive(Debug)]
pub struct Evaluator {
    config: ClipVisionConfig,
    tasks: Vec<EvalTask>,
    batch: usize,
    router: Arc<dyn ExpertRouter>,
    cache: Mutex<HashMap<(ModelKey, usize), f64>>,
    device: Device,
    projection: Option<HostTensor>,
}

impl Evaluator {
    /// An evaluator for `tasks` of towers with `config`, `batch` images per forward, routing
    /// expert models with [`ProjectionRouter`].
    ///
    /// # Errors
    /// [`RunError::InvalidTask`] when a split does not fit the model or its head;
    /// [`RunError::InvalidConfig`] for `batch == 0` or no tasks.
    pub fn new(
        config: ClipVisionConfig,
        tasks: Vec<EvalTask>,
        batch: usize,
    ) -> Result<Self, RunError> {
        config.validate()?;
        if batch == 0 {
            return Err(RunError::config(
                "the evaluation batch size must be positive",
            ));
        }
        if tasks.is_empty() {
            return Err(RunError::config("an evaluator needs at least one task"));
        }
        for t in &tasks {
            check_task(&config, &t.head, t.test.as_ref()).map_err(|e| match e {
                RunError::InvalidTask { reason, .. } => RunError::InvalidTask {
                    task: t.name.clone(),
                    reason,
                },
                other => other,
            })?;
        }
        Ok(Self {
            config,
            tasks,
            batch,
            router: Arc::new(ProjectionRouter::default()),
            cache: Mutex::new(HashMap::new()),
            device: Device::flex(),
            projection: None,
        })
    }

    /// Gives every evaluated tower that has no `visual_projection` this one
    /// (`[projection_dim, hidden_size]`): the pretrained CLIP's, for vision towers saved
    /// without it, as FusionBench's classifier keeps the pretrained projection. Forgets
    /// cached results.
    #[must_use]
    pub fn with_projection(mut self, projection: Option<HostTensor>) -> Self {
        self.projection = projection;
        self.cache = Mutex::new(HashMap::new());
        self
    }

    /// Runs every evaluated tower on `device` (the CPU by default; see
    /// [`madeit_vit::DeviceKind`]). Forgets cached results.
    #[must_use]
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self.cache = Mutex::new(HashMap::new());
        self
    }

    /// The device the towers run on ([`with_device`](Self::with_device)).
    #[must_use]
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The projection given to towers without one ([`with_projection`](Self::with_projection)).
    #[must_use]
    pub fn projection(&self) -> Option<&HostTensor> {
        self.projection.as_ref()
    }

    /// Reads the head and test split of every task of `bench`.
    ///
    /// # Errors
    /// File errors naming the file; as [`Evaluator::new`].
    pub fn from_benchmark(bench: &Benchmark, batch: usize) -> Result<Self, RunError> {
        Self::from_benchmark_capped(bench, batch, None)
    }

    /// As [`from_benchmark`](Self::from_benchmark), with at most `max_test` test images per
    /// task when `max_test` is set: the images at the evenly spaced positions
    /// `floor(k n / max_test)`, `k = 0 .. max_test`, of the `n`-image split (deterministic,
    /// and proportional in every stretch of the split, so a split grouped by class keeps
    /// its class balance). Splits with at most `max_test` images are used whole.
    ///
    /// # Errors
    /// As [`from_benchmark`](Self::from_benchmark); [`RunError::InvalidConfig`] for
    /// `max_test == Some(0)`.
    pub fn from_benchmark_capped(
        bench: &Benchmark,
        batch: usize,
        max_test: Option<usize>,
    ) -> Result<Self, RunError> {
        if max_test == Some(0) {
            return Err(RunError::config("`test_images` must be positive"));
        }
        let tasks = (0..bench.num_tasks())
            .map(|i| {
                // The test images are streamed when read; here only their list and labels.
                Ok(EvalTask {
                    name: bench
                        .tasks()
                        .get(i)
                        .map(|t| t.name.clone())
                        .unwrap_or_default(),
                    head: bench.load_head(i)?,
                    test: cap_test(bench.test_images(i)?, max_test)?,
                })
            })
            .collect::<Result<Vec<_>, RunError>>()?;
        Ok(Self::new(bench.config().clone(), tasks, batch)?
            .with_projection(bench.projection().cloned()))
    }

    /// Uses `router` for expert models (and forgets cached results, which may depend on it).
    #[must_use]
    pub fn with_router(mut self, router: Arc<dyn ExpertRouter>) -> Self {
        self.router = router;
        self.cache = Mutex::new(HashMap::new());
        self
    }

    /// The router used for expert models.
    #[must_use]
    pub fn router(&self) -> &dyn ExpertRouter {
        self.router.as_ref()
    }

    /// The tower configuration.
    #[must_use]
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// Images per forward.
    #[must_use]
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// The tasks, in benchmark order.
    #[must_use]
    pub fn tasks(&self) -> &[EvalTask] {
        &self.tasks
    }

    /// Number of tasks.
    #[must_use]
    pub fn num_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Number of test images of task `task`.
    #[must_use]
    pub fn test_size(&self, task: usize) -> usize {
        self.tasks.get(task).map_or(0, |t| t.test.len())
    }

    /// Number of cached results.
    #[must_use]
    pub fn cached_results(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Starts evaluating `model`: computes its fingerprint; the tower itself is built on the
    /// first task that is not cached.
    #[must_use]
    pub fn session<'a>(&'a self, model: &'a MergedModel) -> ModelSession<'a> {
        ModelSession {
            evaluator: self,
            model,
            key: model_key(model),
            built: None,
        }
    }

    /// Accuracy of `model` on every task in `tasks` (indices into [`Evaluator::tasks`]).
    ///
    /// # Errors
    /// As [`ModelSession::accuracy`].
    pub fn evaluate(&self, model: &MergedModel, tasks: &[usize]) -> Result<Vec<f64>, RunError> {
        let mut s = self.session(model);
        tasks
            .iter()
            .map(|&t| s.accuracy(t).map(|e| e.accuracy))
            .collect()
    }
}

/// The result of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Accuracy in `[0, 1]`.
    pub accuracy: f64,
    /// Whether it came from the cache.
    pub cached: bool,
}

#[derive(Debug)]
enum Built {
    Dense(Box<ClipVisionModel>),
    Experts(Box<ExpertTower>),
}

/// One model being evaluated on several tasks ([`Evaluator::session`]).
#[derive(Debug)]
pub struct ModelSession<'a> {
    evaluator: &'a Evaluator,
    model: &'a MergedModel,
    key: Option<ModelKey>,
    built: Option<Built>,
}

impl ModelSession<'_> {
    /// Accuracy of the model on task `task` (an index into [`Evaluator::tasks`]), from the
    /// cache when this model was evaluated on it before.
    ///
    /// # Errors
    /// [`RunError::UnknownTask`] for an index out of range; the errors of building the tower
    /// (a checkpoint that is not a tower of the evaluator's configuration), of the forward
    /// and of the router.
    pub fn accuracy(&mut self, task: usize) -> Result<Evaluation, RunError> {
        let ev = self.evaluator;
        let t = ev.tasks.get(task).ok_or_else(|| RunError::UnknownTask {
            name: format!("#{task}"),
            available: ev.tasks.iter().map(|t| t.name.clone()).collect(),
        })?;
        let cache_key = self.key.map(|k| (k, task));
        if let Some(&a) = cache_key
            .and_then(|k| {
                ev.cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&k)
                    .copied()
            })
            .as_ref()
        {
            return Ok(Evaluation {
                accuracy: a,
                cached: true,
            });
        }
        let built = match self.built.take() {
            Some(b) => b,
            None => match self.model {
                MergedModel::Dense(p) => Built::Dense(Box::new(with_projection(
                    ClipVisionModel::from_params_on(&ev.config, p, &ev.device)?,
                    ev.projection.as_ref(),
                )?)),
                MergedModel::Experts(m) => Built::Experts(Box::new(
                    ExpertTower::new(&ev.config, m, &ev.device)?
                        .with_projection(ev.projection.as_ref())?,
                )),
                _ => {
                    return Err(RunError::Experts {
                        reason: "this kind of merged model cannot be evaluated".into(),
                    });
                }
            },
        };
        let result = match &built {
            Built::Dense(m) => evaluate_model(m, &t.head, &t.test, ev.batch),
            Built::Experts(x) => x.accuracy(ev.router.as_ref(), &t.head, t.test.as_ref(), ev.batch),
        };
        self.built = Some(built);
        let accuracy = result?;
        if let Some(k) = cache_key {
            ev.cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(k, accuracy);
        }
        Ok(Evaluation {
            accuracy,
            cached: false,
        })
    }
}

#[cfg(test)]
mod made_it_tests;

/// `model` with `projection` when it has no projection of its own (and `projection` is
/// set).
///
/// # Errors
/// As [`ClipVisionModel::with_projection`].
pub fn with_projection(
    model: ClipVisionModel,
    projection: Option<&HostTensor>,
) -> Result<ClipVisionModel, RunError> {
    match projection {
        Some(p) if !model.has_projection() => Ok(model.with_projection(p)?),
        _ => Ok(model),
    }
}

/// The evenly spaced subset of at most `max` images of `set` (see
/// [`Evaluator::from_benchmark_capped`]).
fn cap_test(set: TaskImages, max: Option<usize>) -> Result<TaskImages, RunError> {
    let n = set.len();
    match max {
        Some(m) if n > m => {
            let indices: Vec<usize> = (0..m).map(|k| k * n / m).collect();
            set.subset(&indices)
        }
        _ => Ok(set),
    }
}
