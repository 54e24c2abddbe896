//! MagMax-Ind: elementwise maximum-magnitude task vector.

use indexmap::IndexMap;
use madeit_params::ParamDict;

use super::{fold_task_vector, offset_pretrained};
use crate::state::Ledger;
use crate::{
    ContinualMerger, ContinualMethod, MagMaxConfig, MergeError, MergedModel, MergerState,
    MethodConfig, Step, StepReport,
};

const METHOD: &str = "magmax";
const TAU_MAX_PREFIX: &str = "tau_max.";

/// MagMax-Ind (reference: MINGLE's `method/mingle/magmax.py`): keeps, per element, the task
/// vector entry of largest magnitude seen so far,
///
/// `τ_max^(1) = τ_1`, `τ_max^(t) = where(|τ_t| ≥ |τ_max^(t−1)|, τ_t, τ_max^(t−1))`,
/// `θ^(t) = θ_0 + s τ_max^(t)` (`s = 0.5`),
///
/// over every parameter; a tie goes to the newer task. `τ_t = θ_t − θ_0` is rounded to `f32`
/// as in the reference. The reference recovers `τ_max` from the merged model as
/// `(θ^(t−1) − θ_0) / s`; this implementation keeps `τ_max` itself, which avoids the rounding
/// of that round trip.
#[derive(Debug, Clone)]
pub struct MagMax {
    config: MagMaxConfig,
    ledger: Ledger,
    tau_max: ParamDict,
}

impl MagMax {
    /// An empty stream.
    ///
    /// # Errors
    /// [`MergeError::InvalidParameter`] for a non-finite scale.
    pub fn new(config: MagMaxConfig) -> Result<Self, MergeError> {
        MethodConfig::MagMax(config).check()?;
        Ok(Self {
            config,
            ledger: Ledger::default(),
            tau_max: ParamDict::new(),
        })
    }
}

impl ContinualMethod for MagMax {
    data_free_contract!(METHOD);

    fn absorb(&mut self, input: &Step<'_>) -> Result<StepReport, MergeError> {
        let (pretrained, finetuned) = (input.pretrained, input.finetuned);
        let admitted = self.ledger.admit(input)?;
        let running = (!self.ledger.tasks.is_empty()).then_some(&self.tau_max);
        let (tau_max, sq) = fold_task_vector(
            METHOD,
            pretrained,
            finetuned,
            running,
            |f, p| f - p,
            |f, p, y| {
                let x = f - p;
                if x.abs() >= y.abs() { x } else { y }
            },
        )?;
        self.tau_max = tau_max;
        let mut metrics = IndexMap::new();
        metrics.insert("tau_max_norm".to_owned(), sq.sqrt());
        Ok(self.ledger.commit_step(
            admitted,
            METHOD,
            self.config.scaling_factor.abs() * sq.sqrt(),
            metrics,
        ))
    }

    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, MergeError> {
        self.ledger.check_merged(METHOD, pretrained)?;
        offset_pretrained(
            METHOD,
            pretrained,
            &self.tau_max,
            self.config.scaling_factor,
        )
        .map(MergedModel::Dense)
    }

    fn state(&self) -> Result<MergerState, MergeError> {
        self.ledger
            .dict_state(self.config(), TAU_MAX_PREFIX, &self.tau_max)
    }

    fn restore(&mut self, state: &MergerState) -> Result<(), MergeError> {
        let (ledger, tau_max) =
            Ledger::restore_dict(METHOD, &self.config(), state, TAU_MAX_PREFIX)?;
        self.tau_max = tau_max;
        self.ledger = ledger;
        Ok(())
    }
}

impl ContinualMerger for MagMax {
    fn config(&self) -> MethodConfig {
        MethodConfig::MagMax(self.config)
    }
}
