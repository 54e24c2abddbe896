//! The test-time continual-merging contract: the stream's one trait,
//! [`ContinualMethod`], whose every step also carries unlabeled samples of the current task
//! and its head ([`TestTimeExtras`]), plus the gated forward ([`TestTimeMerger`]).

use burn::prelude::*;
use indexmap::IndexMap;
use madeit_stream::{ContinualMethod, StepReport};
use madeit_vit::{ClipVisionModel, ExpertBank, GateBank, TaskHead, VisionOutput};
use serde::{Deserialize, Serialize};

use crate::{AdaptError, AdaptState, SeedImages, SeedSource};

/// What a test-time method is given at each step besides the two models
/// ([`Step::extras`](madeit_stream::Step::extras)): unlabeled images of the current task
/// (never of earlier tasks) and the task's head.
#[derive(Debug, Clone)]
pub struct TestTimeExtras {
    /// The task's unlabeled seed images, normalised for the tower.
    pub seed: SeedImages,
    /// The task's fixed classification head.
    pub head: TaskHead,
}

/// The step a test-time method is given: the two models, the task, its seed images and head.
pub type TestTimeStep<'a> = madeit_stream::Step<'a, TestTimeExtras>;

impl TestTimeExtras {
    /// The extras of one step.
    #[must_use]
    pub fn new(seed: SeedImages, head: TaskHead) -> Self {
        Self { seed, head }
    }
}

/// What one [`absorb`](ContinualMethod::absorb) step did: the stream's [`StepReport`] and
/// what a test-time method adds to it (its seed samples, loss trace and KL values).
///
/// In `base`, `merged_delta_norm` is the Frobenius norm of the ungated sum of every expert
/// after the step, `sqrt(sum_m ||sum_e B_e A_e||_F^2)` (gates scale the experts per batch at
/// run time) for the expert methods, and `metrics` holds the method-specific quantities
/// (see each method's documentation). Serialised flat: the step report's keys, then these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptReport {
    /// The step as every continual method reports it.
    #[serde(flatten)]
    pub base: StepReport,
    /// Number of seed samples used.
    pub seed_samples: usize,
    /// Where the run loop was told to take them from.
    pub seed_source: SeedSource,
    /// The distillation loss (cross-entropy form) before each adaptation step.
    pub losses: Vec<f64>,
    /// Mean `KL(teacher || merged)` on the seed set with the initial gates, when requested.
    pub kl_before: Option<f64>,
    /// Mean `KL(teacher || merged)` on the seed set after the adaptation.
    pub kl_after: f64,
}

impl From<AdaptReport> for StepReport {
    /// The report as a stream [`StepReport`] (`base`, with the loss trace, the KL values
    /// and the seed-sample count put first into `metrics` as `seed_samples`, `loss_first`,
    /// `loss_last`, `kl_before`, `kl_after`).
    fn from(report: AdaptReport) -> Self {
        report.to_step_report()
    }
}

impl AdaptReport {
    /// The report as a stream [`StepReport`] (see its `From` conversion).
    #[must_use]
    pub fn to_step_report(&self) -> StepReport {
        let mut metrics = IndexMap::new();
        metrics.insert("seed_samples".to_owned(), self.seed_samples as f64);
        if let Some(l) = self.losses.first() {
            metrics.insert("loss_first".to_owned(), *l);
        }
        if let Some(l) = self.losses.last() {
            metrics.insert("loss_last".to_owned(), *l);
        }
        if let Some(k) = self.kl_before {
            metrics.insert("kl_before".to_owned(), k);
        }
        metrics.insert("kl_after".to_owned(), self.kl_after);
        metrics.extend(self.base.metrics.iter().map(|(k, v)| (k.clone(), *v)));
        StepReport {
            metrics,
            ..self.base.clone()
        }
    }
}

/// The merged model of a gated expert method on a device: the pretrained backbone, the
/// experts and the frozen gates, ready for evaluation.
///
/// The gates are averaged over the whole batch (`gbar_e = mean over samples and tokens of
/// w_e^T x + b_e`), so every batch must hold samples of one task, as in the reference
/// evaluation (batches of one task's test set).
#[derive(Debug, Clone)]
pub struct GatedModel {
    model: ClipVisionModel,
    bank: ExpertBank,
    gates: GateBank,
}

impl GatedModel {
    /// Assembles a gated model (checked: one gate per expert, matching widths).
    ///
    /// # Errors
    /// [`AdaptError::Vit`] when experts, gates and model disagree.
    pub fn new(
        model: ClipVisionModel,
        bank: ExpertBank,
        gates: GateBank,
    ) -> Result<Self, AdaptError> {
        gates.validate(&bank)?;
        Ok(Self { model, bank, gates })
    }

    /// The backbone.
    #[must_use]
    pub fn model(&self) -> &ClipVisionModel {
        &self.model
    }

    /// The experts on the device.
    #[must_use]
    pub fn experts(&self) -> &ExpertBank {
        &self.bank
    }

    /// The gates on the device.
    #[must_use]
    pub fn gates(&self) -> &GateBank {
        &self.gates
    }

    /// The gated forward of a batch of one task (pixels on the backbone's device).
    ///
    /// # Errors
    /// As [`ClipVisionModel::forward_gated`].
    pub fn forward(&self, pixels: Tensor<4>) -> Result<VisionOutput, AdaptError> {
        Ok(self.model.forward_gated(pixels, &self.bank, &self.gates)?)
    }

    /// Logits `[batch, classes]` of a host pixel buffer (`[batch, C, H, W]`, one task) under
    /// `head`, as a host tensor.
    ///
    /// # Errors
    /// Pixel, forward and head errors.
    pub fn logits(
        &self,
        head: &TaskHead,
        pixels: Vec<f32>,
        batch: usize,
    ) -> Result<madeit_params::Tensor, AdaptError> {
        let px = self.model.pixels(pixels, batch)?;
        let out = self.forward(px)?;
        Ok(madeit_vit::to_host(&head.logits(out.embedding())?)?)
    }

    /// Image embeddings `[batch, dim]` of a host pixel buffer of one task.
    ///
    /// # Errors
    /// Pixel and forward errors.
    pub fn embed(
        &self,
        pixels: Vec<f32>,
        batch: usize,
    ) -> Result<madeit_params::Tensor, AdaptError> {
        let px = self.model.pixels(pixels, batch)?;
        Ok(madeit_vit::to_host(&self.forward(px)?.embedding())?)
    }
}

/// A test-time continual merger: the stream's [`ContinualMethod`] fed one fine-tuned model at
/// a time together with a few unlabeled samples of that task (never of earlier tasks) and the
/// task's head ([`TestTimeExtras`]); it keeps a merged model, and runs it through its gated
/// forward ([`gated_model`](Self::gated_model)).
///
/// The contract of [`ContinualMethod`] holds: inputs validated with typed errors
/// ([`AdaptError::Admission`] for a task the stream refuses, [`AdaptError::SeedData`],
/// [`AdaptError::Head`]; method errors such as [`AdaptError::Linalg`] and
/// [`AdaptError::NonFiniteLoss`]), atomic steps, resumption from
/// [`state`](ContinualMethod::state) / [`restore`](ContinualMethod::restore)
/// ([`AdaptError::InvalidState`], [`AdaptError::StateTensor`]), no I/O (the run loop loads
/// models, pixels and heads and saves the state). Its
/// [`merged_model`](ContinualMethod::merged_model) gives the named tensors (the backbone and
/// the low-rank experts per target weight); gates, which are not named tensors of the
/// backbone, are part of the state and of the gated model.
pub trait TestTimeMerger:
    ContinualMethod<
        Extras = TestTimeExtras,
        State = AdaptState,
        Report = AdaptReport,
        Error = AdaptError,
    >
{
    /// The merged model ready to run on `backbone`'s device (`backbone` = the pretrained
    /// tower).
    ///
    /// # Errors
    /// [`AdaptError::EmptyStream`] before the first task; [`AdaptError::Vit`] when the
    /// backbone does not fit.
    fn gated_model(&self, backbone: &ClipVisionModel) -> Result<GatedModel, AdaptError>;
}

/// The items every test-time method's [`ContinualMethod`] impl shares: the stream types of
/// [`TestTimeMerger`] and the ledger kept in a field `ledger`, and, given the method's name
/// constant, [`method`](ContinualMethod::method).
macro_rules! test_time_contract {
    ($method:ident) => {
        type Extras = $crate::TestTimeExtras;
        type State = $crate::AdaptState;
        type Report = $crate::AdaptReport;
        type Error = $crate::AdaptError;

        fn method(&self) -> &'static str {
            $method
        }

        fn ledger(&self) -> &madeit_stream::Ledger {
            &self.ledger
        }
    };
}
