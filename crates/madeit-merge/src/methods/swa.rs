//! Continual stochastic weight averaging.

use indexmap::IndexMap;
use madeit_params::ParamDict;

use super::{MERGED_PREFIX, check_layout, dense_output, lookup, par_build, tensor_like, to_f32};
use crate::state::Ledger;
use crate::{
    ContinualMerger, ContinualMethod, MergeError, MergedModel, MergerState, MethodConfig, Step,
    StepReport, SwaConfig,
};

const METHOD: &str = "swa";

/// Continual stochastic weight averaging (reference: FusionBench
/// `method/opcm/weight_average.py`): the running mean of the fine-tuned models,
///
/// `θ^(1) = θ_1`, `θ^(t) = ((t − 1) θ^(t−1) + θ_t) / t`,
///
/// over every parameter. Each element is computed in `f64` from the stored `f32` values and
/// rounded once, so averaging identical models returns that model exactly.
#[derive(Debug, Clone)]
pub struct Swa {
    config: SwaConfig,
    ledger: Ledger,
    merged: ParamDict,
}

impl Swa {
    /// An empty stream.
    ///
    /// # Errors
    /// None today (SWA has no parameters); kept for uniformity with the other methods.
    pub fn new(config: SwaConfig) -> Result<Self, MergeError> {
        MethodConfig::Swa(config).check()?;
        Ok(Self {
            config,
            ledger: Ledger::default(),
            merged: ParamDict::new(),
        })
    }
}

impl ContinualMethod for Swa {
    data_free_contract!(METHOD);

    fn absorb(&mut self, input: &Step<'_>) -> Result<StepReport, MergeError> {
        let (pretrained, finetuned) = (input.pretrained, input.finetuned);
        let admitted = self.ledger.admit(input)?;
        let step = self.ledger.tasks.len() + 1;
        let names: Vec<&str> = pretrained.keys().collect();
        let first = step == 1;
        if !first {
            check_layout(METHOD, pretrained, &self.merged)?;
        }
        #[allow(clippy::cast_precision_loss)]
        let t = step as f64;
        let (merged, delta_sq) = par_build(&names, |name| {
            let p = lookup(METHOD, pretrained, name)?;
            let f = lookup(METHOD, finetuned, name)?;
            let data: Vec<f32> = if first {
                f.data().to_vec()
            } else {
                let m = lookup(METHOD, &self.merged, name)?;
                m.data()
                    .iter()
                    .zip(f.data())
                    .map(|(&a, &b)| to_f32(((t - 1.0) * f64::from(a) + f64::from(b)) / t))
                    .collect()
            };
            let sq = data
                .iter()
                .zip(p.data())
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            Ok((tensor_like(METHOD, name, p, data)?, sq))
        })?;
        self.merged = merged;
        Ok(self
            .ledger
            .commit_step(admitted, METHOD, delta_sq.sqrt(), IndexMap::new()))
    }

    fn merged_model(&self, pretrained: &ParamDict) -> Result<MergedModel, MergeError> {
        self.ledger.check_merged(METHOD, pretrained)?;
        dense_output(METHOD, pretrained, &self.merged).map(MergedModel::Dense)
    }

    fn state(&self) -> Result<MergerState, MergeError> {
        self.ledger
            .dict_state(self.config(), MERGED_PREFIX, &self.merged)
    }

    fn restore(&mut self, state: &MergerState) -> Result<(), MergeError> {
        let (ledger, merged) = Ledger::restore_dict(METHOD, &self.config(), state, MERGED_PREFIX)?;
        self.merged = merged;
        self.ledger = ledger;
        Ok(())
    }
}

impl ContinualMerger for Swa {
    fn config(&self) -> MethodConfig {
        MethodConfig::Swa(self.config)
    }
}
