//! The one contract the run loop drives: [`StreamMethod`].
//!
//! Every kind of method of the registry sits behind it, so [`super::run_stream`] treats them
//! alike: a weight-space merger of `madeit-merge` ([`WeightSpace`]), a test-time merger of
//! `madeit-adapt` ([`TestTime`]: it also gets each task's head and seed images, and is
//! evaluated through its gated forward) and the sequential fine-tuning reference
//! ([`Sequential`]: it also gets the task's training data). Each feeds its method, a
//! `madeit_stream::ContinualMethod`, one `Step` whose extras are what that kind needs.
//! [`build`] makes the right one from a configuration; a new kind of method is one more
//! implementation here, not a new branch in the loop.

use madeit_adapt::TestTimeExtras;
use madeit_merge::{ContinualMethod, Step};
use madeit_zoo::SequentialTask;

use crate::sequential::{SequentialFinetuning, TrainingData};

use crate::method::SeedSetup;

use super::*;

/// What the run loop knows at one step, shared by every method.
pub(super) struct StepInput<'a> {
    pub(super) bench: &'a Benchmark,
    pub(super) evaluator: &'a Evaluator,
    /// `θ_0`, the same at every step.
    pub(super) pretrained: &'a ParamDict,
    /// The task absorbed at this step: its index into the benchmark and its id.
    pub(super) task_index: usize,
    pub(super) task: &'a TaskId,
}

/// What a method is given at a step, loaded before [`StreamMethod::absorb`] (timed as
/// [`StepTiming::load_s`]): the fine-tuned checkpoint and what the method needs besides.
pub(super) struct StepData {
    /// The task's fine-tuned checkpoint, checked against `θ_0`.
    pub(super) finetuned: ParamDict,
    /// The task's unlabelled seed images and fixed head (test-time methods).
    pub(super) test_time: Option<TestTimeExtras>,
    /// The task's training data (C. Fine-Tuned).
    pub(super) training: Option<SequentialTask>,
}

impl StepData {
    /// The step's checkpoint alone.
    ///
    /// # Errors
    /// [`RunError::CheckpointMismatch`] and loading errors.
    fn checkpoint(input: &StepInput<'_>) -> Result<Self, RunError> {
        Ok(Self {
            finetuned: input
                .bench
                .load_finetuned(input.task_index, input.pretrained)?,
            test_time: None,
            training: None,
        })
    }
}

/// Records the accuracy of the task at a position of the order (`cached` when the
/// evaluator's cache served it).
pub(super) type RecordAccuracy<'r> = dyn FnMut(usize, f64, bool) -> Result<(), RunError> + 'r;

/// What the run loop asks of [`StreamMethod::evaluate`] after a step.
pub(super) struct StepEvaluation<'e> {
    /// Positions in the order of the tasks to evaluate.
    pub(super) positions: &'e [usize],
    /// The benchmark index of every position of the order.
    pub(super) bench_index: &'e [usize],
    /// Receives each accuracy.
    pub(super) record: &'e mut RecordAccuracy<'e>,
    /// The step's timings: the method sets [`StepTiming::merge_s`] and
    /// [`StepTiming::eval_s`].
    pub(super) timing: &'e mut StepTiming,
}

impl<'e> StepEvaluation<'e> {
    /// The benchmark tasks to evaluate: `(position, benchmark index)`.
    fn tasks(&self) -> impl Iterator<Item = (usize, usize)> + 'e {
        let bench_index = self.bench_index;
        self.positions
            .iter()
            .filter_map(move |&i| bench_index.get(i).map(|&b| (i, b)))
    }

    /// Times building the model (`merge_s`) and evaluating a dense or expert model through
    /// the evaluator's session and its cache (`eval_s`).
    fn merged(
        &mut self,
        input: &StepInput<'_>,
        build: impl FnOnce() -> Result<MergedModel, RunError>,
    ) -> Result<(), RunError> {
        let t = Instant::now();
        let merged = build()?;
        self.timing.merge_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut session = input.evaluator.session(&merged);
        for (i, b) in self.tasks() {
            let e = session.accuracy(b)?;
            (self.record)(i, e.accuracy, e.cached)?;
        }
        drop(session);
        drop(merged);
        self.timing.eval_s = t.elapsed().as_secs_f64();
        Ok(())
    }
}

/// One continual method as the run loop drives it.
pub(super) trait StreamMethod {
    /// Loads what [`absorb`](Self::absorb) is given (by default the checkpoint alone).
    ///
    /// # Errors
    /// [`RunError::CheckpointMismatch`]; loading errors of the benchmark.
    fn load(&self, input: &StepInput<'_>) -> Result<StepData, RunError> {
        StepData::checkpoint(input)
    }

    /// Absorbs the task of `input`.
    ///
    /// # Errors
    /// The method's errors, wrapped.
    fn absorb(&mut self, input: &StepInput<'_>, data: StepData) -> Result<StepReport, RunError>;

    /// Builds the model after the tasks absorbed so far and evaluates it as `eval` asks.
    ///
    /// # Errors
    /// Merging and evaluation errors.
    fn evaluate(
        &mut self,
        input: &StepInput<'_>,
        eval: &mut StepEvaluation<'_>,
    ) -> Result<(), RunError>;

    /// The state to save in a stream checkpoint.
    ///
    /// # Errors
    /// State serialisation errors.
    fn state(&self) -> Result<SavedState, RunError>;

    /// Whether `state` is a saved state of this method with this configuration.
    fn accepts(&self, state: &SavedState) -> bool;

    /// Continues from a saved state ([`accepts`](Self::accepts) must hold).
    ///
    /// # Errors
    /// [`RunError::Resume`]-like errors of the method for a state it cannot continue from.
    fn restore(&mut self, state: SavedState) -> Result<(), RunError>;
}

/// Loads the step's checkpoint and extras ([`StepTiming::load_s`]) and absorbs them
/// ([`StepTiming::absorb_s`]); the checkpoint is checked against `θ_0` as it is read.
///
/// # Errors
/// [`RunError::CheckpointMismatch`] and loading errors; the method's errors.
pub(super) fn load_and_absorb(
    method: &mut dyn StreamMethod,
    input: &StepInput<'_>,
    timing: &mut StepTiming,
) -> Result<StepReport, RunError> {
    let t = Instant::now();
    let data = method.load(input)?;
    timing.load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let report = method.absorb(input, data)?;
    timing.absorb_s = t.elapsed().as_secs_f64();
    Ok(report)
}

/// A weight-space continual merger of the `madeit-merge` registry.
pub(super) struct WeightSpace {
    pub(super) merger: Box<dyn ContinualMerger>,
}

impl StreamMethod for WeightSpace {
    fn absorb(&mut self, input: &StepInput<'_>, data: StepData) -> Result<StepReport, RunError> {
        let step = Step::new(input.pretrained, &data.finetuned, input.task);
        Ok(self.merger.absorb(&step)?)
    }

    fn evaluate(
        &mut self,
        input: &StepInput<'_>,
        eval: &mut StepEvaluation<'_>,
    ) -> Result<(), RunError> {
        eval.merged(input, || Ok(self.merger.merged_model(input.pretrained)?))
    }

    fn state(&self) -> Result<SavedState, RunError> {
        Ok(SavedState::Merge(self.merger.state()?))
    }

    fn accepts(&self, state: &SavedState) -> bool {
        matches!(state, SavedState::Merge(s) if s.metadata.config == self.merger.config())
    }

    fn restore(&mut self, state: SavedState) -> Result<(), RunError> {
        if let SavedState::Merge(s) = state {
            self.merger = madeit_merge::resume(&s)?;
        }
        Ok(())
    }
}

/// A test-time continual merger of `madeit-adapt` (MINGLE, C. LW AdaMerging, C.
/// LoRA-WEMoE).
pub(super) struct TestTime {
    pub(super) merger: Box<dyn TestTimeMerger>,
    pub(super) spec: MethodSpec,
    /// Where the method's seed images come from ([`MethodSpec::seed_setup`]).
    pub(super) setup: SeedSetup,
    /// `θ_0` with the benchmark's projection, when the checkpoints have none: test-time
    /// methods build towers from the checkpoints themselves, and a benchmark of vision
    /// towers saved without a projection gives them the pretrained CLIP's (the same in every
    /// checkpoint, so no step changes it), as the evaluator does for the other methods.
    /// Built at the first step.
    pub(super) projected: Option<ParamDict>,
    /// The pretrained tower of the gated models, built at the first evaluation.
    pub(super) backbone: Option<ClipVisionModel>,
}

impl TestTime {
    /// Builds [`TestTime::projected`] at the first step, where the benchmark has a
    /// projection.
    fn project(&mut self, input: &StepInput<'_>) {
        if let (None, Some(p)) = (&self.projected, input.bench.projection()) {
            self.projected = Some(with_projection_tensor(input.pretrained.clone(), p));
        }
    }
}

impl StreamMethod for TestTime {
    fn load(&self, input: &StepInput<'_>) -> Result<StepData, RunError> {
        let index = input.task_index;
        let test = &input
            .evaluator
            .tasks()
            .get(index)
            .ok_or_else(|| RunError::UnknownTask {
                name: format!("#{index}"),
                available: input.bench.task_names(),
            })?
            .test;
        let mut data = StepData::checkpoint(input)?;
        let seed = seed_images(input.bench, index, test, self.setup)?;
        data.test_time = Some(TestTimeExtras::new(seed, input.bench.load_head(index)?));
        Ok(data)
    }

    fn absorb(&mut self, input: &StepInput<'_>, data: StepData) -> Result<StepReport, RunError> {
        let mut finetuned = data.finetuned;
        if let Some(p) = input.bench.projection() {
            finetuned = with_projection_tensor(finetuned, p);
        }
        let Some(extras) = data.test_time else {
            return Err(RunError::config(
                "a test-time step needs the task's head and seed images",
            ));
        };
        self.project(input);
        let pretrained = self.projected.as_ref().unwrap_or(input.pretrained);
        let step = Step::new(pretrained, &finetuned, input.task).with_extras(&extras);
        Ok(self.merger.absorb(&step)?.into())
    }

    fn evaluate(
        &mut self,
        input: &StepInput<'_>,
        eval: &mut StepEvaluation<'_>,
    ) -> Result<(), RunError> {
        let t = Instant::now();
        let base = match self.backbone.take() {
            Some(b) => b,
            None => {
                self.project(input);
                let pretrained = self.projected.as_ref().unwrap_or(input.pretrained);
                ClipVisionModel::from_params_on(
                    input.bench.config(),
                    pretrained,
                    input.evaluator.device(),
                )?
            }
        };
        let gated = self.merger.gated_model(&base);
        self.backbone = Some(base);
        let gated = gated?;
        eval.timing.merge_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        for (i, b) in eval.tasks() {
            let Some(et) = input.evaluator.tasks().get(b) else {
                continue;
            };
            let a = evaluate_gated(&gated, &et.head, &et.test, input.evaluator.batch_size())?;
            (eval.record)(i, a, false)?;
        }
        drop(gated);
        eval.timing.eval_s = t.elapsed().as_secs_f64();
        Ok(())
    }

    fn state(&self) -> Result<SavedState, RunError> {
        Ok(SavedState::Adapt(self.merger.state()?))
    }

    fn accepts(&self, state: &SavedState) -> bool {
        matches!(state, SavedState::Adapt(s)
            if s.metadata.method == self.spec.name()
                && self.spec.config_json().is_ok_and(|c| c == s.metadata.config))
    }

    fn restore(&mut self, state: SavedState) -> Result<(), RunError> {
        if let SavedState::Adapt(s) = state {
            self.merger.restore(&s)?;
        }
        Ok(())
    }
}

/// C. Fine-Tuned: sequential fine-tuning through the order (needs training data).
pub(super) struct Sequential {
    pub(super) method: SequentialFinetuning,
    pub(super) data: TrainingData,
}

impl StreamMethod for Sequential {
    fn load(&self, input: &StepInput<'_>) -> Result<StepData, RunError> {
        let mut data = StepData::checkpoint(input)?;
        data.training = Some(self.data.task(input.task.as_str())?);
        Ok(data)
    }

    fn absorb(&mut self, input: &StepInput<'_>, data: StepData) -> Result<StepReport, RunError> {
        let Some(training) = data.training else {
            return Err(RunError::config(
                "a C. Fine-Tuned step needs the task's training data",
            ));
        };
        let step = Step::new(input.pretrained, &data.finetuned, input.task).with_extras(&training);
        self.method.absorb(&step)
    }

    fn evaluate(
        &mut self,
        input: &StepInput<'_>,
        eval: &mut StepEvaluation<'_>,
    ) -> Result<(), RunError> {
        eval.merged(input, || self.method.merged_model(input.pretrained))
    }

    fn state(&self) -> Result<SavedState, RunError> {
        Ok(SavedState::Sequential(self.method.state()?))
    }

    fn accepts(&self, state: &SavedState) -> bool {
        matches!(state, SavedState::Sequential(_))
    }

    fn restore(&mut self, state: SavedState) -> Result<(), RunError> {
        if let SavedState::Sequential(s) = state {
            self.method.restore(&s)?;
        }
        Ok(())
    }
}

/// `params` with `visual_projection.weight` set to `projection` unless it has one.
fn with_projection_tensor(mut params: ParamDict, projection: &madeit_params::Tensor) -> ParamDict {
    if !params.contains(PROJECTION_WEIGHT) {
        params.insert(PROJECTION_WEIGHT, projection.clone());
    }
    params
}

/// The [`StreamMethod`] of a configuration, empty (no task absorbed), for `bench`'s towers
/// on `device`.
///
/// # Errors
/// As the method's constructor, wrapped; [`RunError::InvalidConfig`] for a method that
/// cannot be run.
pub(super) fn build(
    spec: &MethodSpec,
    bench: &Benchmark,
    device: &Device,
) -> Result<Box<dyn StreamMethod>, RunError> {
    if let MethodSpec::Merge(c) = spec {
        return Ok(Box::new(WeightSpace { merger: c.build()? }));
    }
    if let MethodSpec::Sequential(c) = spec {
        let data = TrainingData::new(c, bench)?;
        return Ok(Box::new(Sequential {
            method: SequentialFinetuning::new(data.recipe(c)),
            data,
        }));
    }
    match (
        spec.build_test_time(bench.config(), device)?,
        spec.seed_setup(),
    ) {
        (Some(merger), Some(setup)) => Ok(Box::new(TestTime {
            merger,
            spec: spec.clone(),
            setup,
            projected: None,
            backbone: None,
        })),
        _ => Err(RunError::config(format!(
            "method `{}` cannot be run",
            spec.name()
        ))),
    }
}
