//! [`ParamDict`]: an insertion-ordered map from parameter name to [`Tensor`].

use faer::MatRef;
use indexmap::IndexMap;

use crate::{ParamsError, Tensor};

/// An insertion-ordered map from parameter name (e.g. `encoder.layers.0.mlp.fc1.weight`) to
/// [`Tensor`], the plain-data form of a model's weights (a PyTorch `state_dict`).
///
/// Binary operations (`add`, `sub`, `axpy`, `dot`, `zip_map`, ...) require the two operands to
/// be [compatible](ParamDict::check_compatible): the same set of names, and per name the same
/// shape and dtype. Key order may differ; results follow `self`'s order.
///
/// Everything is flattened for norms and inner products:
/// `‖θ‖₂ = sqrt(Σ_name Σ_k θ[name]_k²)` and `⟨a, b⟩ = Σ_name Σ_k a[name]_k b[name]_k`,
/// both accumulated in `f64`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParamDict {
    tensors: IndexMap<String, Tensor>,
}

impl ParamDict {
    /// An empty dictionary.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces, keeping its position) a tensor; returns the previous one.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) -> Option<Tensor> {
        self.tensors.insert(name.into(), t)
    }

    /// Removes a tensor, keeping the order of the others.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.shift_remove(name)
    }

    /// The tensor called `name`.
    ///
    /// # Errors
    /// [`ParamsError::MissingKey`] naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor, ParamsError> {
        self.tensors
            .get(name)
            .ok_or_else(|| ParamsError::MissingKey {
                name: name.to_owned(),
            })
    }

    /// The tensor called `name`, mutable.
    ///
    /// # Errors
    /// [`ParamsError::MissingKey`] naming it.
    pub fn get_mut(&mut self, name: &str) -> Result<&mut Tensor, ParamsError> {
        self.tensors
            .get_mut(name)
            .ok_or_else(|| ParamsError::MissingKey {
                name: name.to_owned(),
            })
    }

    /// Zero-copy `out × in` matrix view of the 2-D tensor called `name`.
    ///
    /// # Errors
    /// [`ParamsError::MissingKey`], or [`ParamsError::NotAMatrix`] naming it.
    pub fn mat(&self, name: &str) -> Result<MatRef<'_, f32>, ParamsError> {
        self.get(name)?.as_mat().map_err(|e| e.in_tensor(name))
    }

    /// Whether a tensor called `name` is present.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Number of tensors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of scalar parameters, `Σ_name numel`.
    #[must_use]
    pub fn numel(&self) -> usize {
        self.tensors.values().map(Tensor::numel).sum()
    }

    /// Names, in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// `(name, tensor)` pairs, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `(name, tensor)` pairs with mutable tensors, in insertion order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Tensor)> {
        self.tensors.iter_mut().map(|(k, v)| (k.as_str(), v))
    }

    /// Checks that `other` has the same set of names as `self` and, per name, the same shape
    /// and dtype (`self` is the expected side).
    ///
    /// # Errors
    /// [`ParamsError::MissingKey`] (in `self`, not in `other`), [`ParamsError::UnexpectedKey`]
    /// (in `other`, not in `self`), [`ParamsError::ShapeMismatch`] or
    /// [`ParamsError::DTypeMismatch`]; each names the first offending tensor in `self`'s
    /// order (then `other`'s order for unexpected keys).
    pub fn check_compatible(&self, other: &Self) -> Result<(), ParamsError> {
        for (name, t) in &self.tensors {
            let o = other.get(name)?;
            t.check_compatible(o).map_err(|e| e.in_tensor(name))?;
        }
        // Every key of `self` is in `other`; extra keys exist iff the lengths differ.
        if other.len() != self.len()
            && let Some(name) = other.keys().find(|k| !self.contains(k))
        {
            return Err(ParamsError::UnexpectedKey {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Checks that every value of every tensor is finite.
    ///
    /// # Errors
    /// [`ParamsError::NonFinite`] naming the first offending tensor and the flat index of the
    /// first NaN/infinity in it.
    pub fn check_finite(&self) -> Result<(), ParamsError> {
        for (name, t) in &self.tensors {
            t.check_finite().map_err(|e| e.in_tensor(name))?;
        }
        Ok(())
    }

    /// Applies `f` to every tensor; names and order are kept.
    #[must_use]
    pub fn map(&self, mut f: impl FnMut(&str, &Tensor) -> Tensor) -> Self {
        Self {
            tensors: self
                .tensors
                .iter()
                .map(|(k, v)| (k.clone(), f(k, v)))
                .collect(),
        }
    }

    /// Applies a fallible `f` to every tensor; stops at the first error, which is returned
    /// with the tensor's name filled in.
    ///
    /// # Errors
    /// Whatever `f` returns.
    pub fn try_map(
        &self,
        mut f: impl FnMut(&str, &Tensor) -> Result<Tensor, ParamsError>,
    ) -> Result<Self, ParamsError> {
        let mut out = IndexMap::with_capacity(self.len());
        for (k, v) in &self.tensors {
            out.insert(k.clone(), f(k, v).map_err(|e| e.in_tensor(k))?);
        }
        Ok(Self { tensors: out })
    }

    /// Combines two compatible dictionaries name by name: `out[name] = f(name, self[name],
    /// other[name])`, in `self`'s order.
    ///
    /// # Errors
    /// As [`ParamDict::check_compatible`], or whatever `f` returns (with the name filled in).
    pub fn zip_map(
        &self,
        other: &Self,
        mut f: impl FnMut(&str, &Tensor, &Tensor) -> Result<Tensor, ParamsError>,
    ) -> Result<Self, ParamsError> {
        self.check_compatible(other)?;
        let mut out = IndexMap::with_capacity(self.len());
        for (k, a) in &self.tensors {
            let b = other.get(k)?;
            out.insert(k.clone(), f(k, a, b).map_err(|e| e.in_tensor(k))?);
        }
        Ok(Self { tensors: out })
    }

    /// `self + other`, tensor by tensor.
    ///
    /// # Errors
    /// As [`ParamDict::check_compatible`].
    pub fn add(&self, other: &Self) -> Result<Self, ParamsError> {
        self.zip_map(other, |_, a, b| a.add(b))
    }

    /// `self - other`, tensor by tensor.
    ///
    /// # Errors
    /// As [`ParamDict::check_compatible`].
    pub fn sub(&self, other: &Self) -> Result<Self, ParamsError> {
        self.zip_map(other, |_, a, b| a.sub(b))
    }

    /// `alpha * self`.
    #[must_use]
    pub fn scale(&self, alpha: f32) -> Self {
        self.map(|_, t| t.scale(alpha))
    }

    /// `self += alpha * x`, in place. `self` is left unchanged on error (compatibility is
    /// checked before anything is written).
    ///
    /// # Errors
    /// As [`ParamDict::check_compatible`].
    pub fn axpy(&mut self, alpha: f32, x: &Self) -> Result<(), ParamsError> {
        self.check_compatible(x)?;
        for (name, t) in &mut self.tensors {
            let xt = x.get(name)?;
            t.axpy(alpha, xt).map_err(|e| e.in_tensor(name))?;
        }
        Ok(())
    }

    /// `‖self‖₂² = Σ_name Σ_k x_k²`, accumulated in `f64`.
    #[must_use]
    pub fn sum_sq(&self) -> f64 {
        self.tensors.values().map(Tensor::sum_sq).sum()
    }

    /// Flattened L2 norm `‖self‖₂ = sqrt(Σ_name Σ_k x_k²)`, accumulated in `f64`.
    #[must_use]
    pub fn l2_norm(&self) -> f64 {
        self.sum_sq().sqrt()
    }

    /// Flattened inner product `⟨self, other⟩ = Σ_name Σ_k a_k b_k`, accumulated in `f64`.
    ///
    /// # Errors
    /// As [`ParamDict::check_compatible`].
    pub fn dot(&self, other: &Self) -> Result<f64, ParamsError> {
        self.check_compatible(other)?;
        let mut acc = 0.0;
        for (name, a) in &self.tensors {
            acc += a.dot(other.get(name)?).map_err(|e| e.in_tensor(name))?;
        }
        Ok(acc)
    }

    /// Largest element-wise difference `max |a_k − b_k|` over every tensor, in `f32` (0 for
    /// empty dictionaries; NaN differences are passed over, as by `f32::max`).
    ///
    /// # Errors
    /// As [`ParamDict::check_compatible`].
    pub fn max_abs_diff(&self, other: &Self) -> Result<f32, ParamsError> {
        self.check_compatible(other)?;
        let mut worst = 0.0f32;
        for (name, a) in &self.tensors {
            let d = a
                .max_abs_diff(other.get(name)?)
                .map_err(|e| e.in_tensor(name))?;
            worst = worst.max(d);
        }
        Ok(worst)
    }

    /// A dictionary of zeros with the same names, shapes and dtypes.
    #[must_use]
    pub fn zeros_like(&self) -> Self {
        self.map(|_, t| t.zeros_like())
    }
}

impl FromIterator<(String, Tensor)> for ParamDict {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
        Self {
            tensors: iter.into_iter().collect(),
        }
    }
}

impl IntoIterator for ParamDict {
    type Item = (String, Tensor);
    type IntoIter = indexmap::map::IntoIter<String, Tensor>;

    fn into_iter(self) -> Self::IntoIter {
        self.tensors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ParamDict {
    type Item = (&'a String, &'a Tensor);
    type IntoIter = indexmap::map::Iter<'a, String, Tensor>;

    fn into_iter(self) -> Self::IntoIter {
        self.tensors.iter()
    }
}
