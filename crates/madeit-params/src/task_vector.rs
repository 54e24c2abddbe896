//! Task vectors: the difference between fine-tuned and pretrained weights.

use crate::{ParamDict, ParamsError};

/// A task vector `τ = θ_ft − θ_pre` (Ilharco et al., *Editing models with task arithmetic*,
/// ICLR 2023), stored as a [`ParamDict`] with the same names, shapes and dtypes as the models.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskVector(ParamDict);

impl TaskVector {
    /// `τ = finetuned − pretrained`, tensor by tensor.
    ///
    /// # Errors
    /// As [`ParamDict::check_compatible`] (with `finetuned` as the expected side).
    pub fn new(finetuned: &ParamDict, pretrained: &ParamDict) -> Result<Self, ParamsError> {
        finetuned.sub(pretrained).map(Self)
    }

    /// Wraps a dictionary that already holds a weight difference.
    #[must_use]
    pub fn from_params(params: ParamDict) -> Self {
        Self(params)
    }

    /// The difference, as named tensors.
    #[must_use]
    pub fn params(&self) -> &ParamDict {
        &self.0
    }

    /// The difference, as mutable named tensors.
    pub fn params_mut(&mut self) -> &mut ParamDict {
        &mut self.0
    }

    /// Unwraps the difference.
    #[must_use]
    pub fn into_params(self) -> ParamDict {
        self.0
    }

    /// `θ = pretrained + λ τ`.
    ///
    /// # Errors
    /// As [`ParamDict::check_compatible`] (with `pretrained` as the expected side).
    pub fn apply(&self, pretrained: &ParamDict, lambda: f32) -> Result<ParamDict, ParamsError> {
        let mut out = pretrained.clone();
        out.axpy(lambda, &self.0)?;
        Ok(out)
    }

    /// `λ τ`.
    #[must_use]
    pub fn scale(&self, lambda: f32) -> Self {
        Self(self.0.scale(lambda))
    }

    /// `τ_a + τ_b`.
    ///
    /// # Errors
    /// As [`ParamDict::check_compatible`].
    pub fn add(&self, other: &Self) -> Result<Self, ParamsError> {
        self.0.add(&other.0).map(Self)
    }

    /// Flattened L2 norm `‖τ‖₂`, accumulated in `f64`.
    #[must_use]
    pub fn l2_norm(&self) -> f64 {
        self.0.l2_norm()
    }

    /// Flattened inner product `⟨τ_a, τ_b⟩`, accumulated in `f64`.
    ///
    /// # Errors
    /// As [`ParamDict::check_compatible`].
    pub fn dot(&self, other: &Self) -> Result<f64, ParamsError> {
        self.0.dot(&other.0)
    }
}

impl From<ParamDict> for TaskVector {
    fn from(params: ParamDict) -> Self {
        Self(params)
    }
}
