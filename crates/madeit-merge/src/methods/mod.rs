//! The continual merging methods (weight-space ones and MADE-IT's experts) and the helpers
//! they share.

/// The items every data-free method's [`ContinualMethod`](crate::ContinualMethod) impl
/// shares: the stream types of [`ContinualMerger`](crate::ContinualMerger) (no extras,
/// [`MergerState`](crate::MergerState), [`StepReport`](crate::StepReport),
/// [`MergeError`]), the ledger kept in a field `ledger`, and, given the method's name
/// constant, [`method`](crate::ContinualMethod::method).
macro_rules! data_free_contract {
    () => {
        type Extras = ();
        type State = crate::MergerState;
        type Report = crate::StepReport;
        type Error = crate::MergeError;

        fn ledger(&self) -> &madeit_stream::Ledger {
            &self.ledger
        }
    };
    ($method:ident) => {
        data_free_contract!();

        fn method(&self) -> &'static str {
            $method
        }
    };
}

mod iso_c;
mod made_it;
mod magmax;
mod opcm;
mod swa;
mod task_arithmetic;

pub use iso_c::{IsoC, IsoCConfig, iso_c_matrix};
pub use made_it::{MadeItMerger, expert_model as made_it_expert_model};
pub use magmax::MagMax;
pub use opcm::{Opcm, opcm_projection, split_rank};
pub use swa::Swa;
pub use task_arithmetic::{Consensus, Sparsifier, TaskArithmeticFamily};

use madeit_params::{ParamDict, ParamsError, Tensor};
use rayon::prelude::*;

use crate::MergeError;

/// Prefix of the merged-weights tensors in a saved state.
pub(crate) const MERGED_PREFIX: &str = "merged.";

/// Checks that a method's stored tensors have exactly the pretrained model's names and shapes
/// (dtypes may differ: state tensors are always kept as `f32`).
pub(crate) fn check_layout(
    method: &'static str,
    pretrained: &ParamDict,
    stored: &ParamDict,
) -> Result<(), MergeError> {
    let err = |source| MergeError::StateTensor { method, source };
    for (name, p) in pretrained.iter() {
        let s = stored.get(name).map_err(err)?;
        if s.shape() != p.shape() {
            return Err(err(ParamsError::ShapeMismatch {
                name: name.to_owned(),
                expected: p.shape().to_vec(),
                got: s.shape().to_vec(),
            }));
        }
    }
    if stored.len() != pretrained.len()
        && let Some(name) = stored.keys().find(|k| !pretrained.contains(k))
    {
        return Err(err(ParamsError::UnexpectedKey {
            name: name.to_owned(),
        }));
    }
    Ok(())
}

/// A tensor with `like`'s shape and dtype and the given data.
pub(crate) fn tensor_like(
    method: &'static str,
    name: &str,
    like: &Tensor,
    data: Vec<f32>,
) -> Result<Tensor, MergeError> {
    Tensor::new(like.shape().to_vec(), data)
        .map(|t| t.with_dtype(like.dtype()))
        .map_err(|e| MergeError::StateTensor {
            method,
            source: e.in_tensor(name),
        })
}

/// Looks up the same tensor in several dictionaries, as a [`MergeError::StateTensor`] if one
/// lacks it.
pub(crate) fn lookup<'a>(
    method: &'static str,
    dict: &'a ParamDict,
    name: &str,
) -> Result<&'a Tensor, MergeError> {
    dict.get(name)
        .map_err(|source| MergeError::StateTensor { method, source })
}

/// Runs `f` on every tensor name in parallel; returns the tensors in `names` order as a
/// [`ParamDict`] together with the sum of the returned scalars (for norms).
pub(crate) fn par_build<F>(names: &[&str], f: F) -> Result<(ParamDict, f64), MergeError>
where
    F: Fn(&str) -> Result<(Tensor, f64), MergeError> + Sync,
{
    let parts: Vec<(String, Tensor, f64)> = names
        .par_iter()
        .map(|&name| f(name).map(|(t, s)| (name.to_owned(), t, s)))
        .collect::<Result<_, _>>()?;
    let total = parts.iter().map(|p| p.2).sum();
    Ok((parts.into_iter().map(|(n, t, _)| (n, t)).collect(), total))
}

/// Folds task `t`'s vector into a running per-tensor dictionary, in parallel over tensors:
/// element by element, `first(f, p)` at the first step (no `running` dictionary) and
/// `next(f, p, r)` after it, with `f`, `p` and `r` the fine-tuned, pretrained and running
/// values. Returns the new dictionary (each tensor with its pretrained dtype) and the sum of
/// its squared values.
///
/// # Errors
/// [`MergeError::StateTensor`] when a dictionary lacks a tensor or `running` does not have
/// the pretrained layout.
pub(crate) fn fold_task_vector(
    method: &'static str,
    pretrained: &ParamDict,
    finetuned: &ParamDict,
    running: Option<&ParamDict>,
    first: impl Fn(f32, f32) -> f32 + Sync,
    next: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> Result<(ParamDict, f64), MergeError> {
    if let Some(r) = running {
        check_layout(method, pretrained, r)?;
    }
    let names: Vec<&str> = pretrained.keys().collect();
    par_build(&names, |name| {
        let p = lookup(method, pretrained, name)?;
        let f = lookup(method, finetuned, name)?;
        let pairs = f.data().iter().zip(p.data());
        let data: Vec<f32> = match running {
            None => pairs.map(|(&f, &p)| first(f, p)).collect(),
            Some(r) => pairs
                .zip(lookup(method, r, name)?.data())
                .map(|((&f, &p), &r)| next(f, p, r))
                .collect(),
        };
        let sq = data.iter().map(|&x| f64::from(x).powi(2)).sum();
        Ok((tensor_like(method, name, p, data)?, sq))
    })
}

/// The dense merged model `θ_0 + scale · Δ`, element by element in `f64` and rounded once,
/// in `pretrained`'s order and dtypes, for methods that keep an update `Δ` on top of `θ_0`.
///
/// # Errors
/// [`MergeError::StateTensor`] when `delta` does not have the pretrained layout.
pub(crate) fn offset_pretrained(
    method: &'static str,
    pretrained: &ParamDict,
    delta: &ParamDict,
    scale: f64,
) -> Result<ParamDict, MergeError> {
    check_layout(method, pretrained, delta)?;
    let names: Vec<&str> = pretrained.keys().collect();
    let (merged, _) = par_build(&names, |name| {
        let p = lookup(method, pretrained, name)?;
        let d = lookup(method, delta, name)?;
        let data = p
            .data()
            .iter()
            .zip(d.data())
            .map(|(&a, &x)| to_f32(f64::from(a) + scale * f64::from(x)))
            .collect();
        Ok((tensor_like(method, name, p, data)?, 0.0))
    })?;
    dense_output(method, pretrained, &merged)
}

/// The merged weights in `pretrained`'s order, each with its pretrained dtype.
pub(crate) fn dense_output(
    method: &'static str,
    pretrained: &ParamDict,
    merged: &ParamDict,
) -> Result<ParamDict, MergeError> {
    check_layout(method, pretrained, merged)?;
    pretrained
        .iter()
        .map(|(name, p)| {
            lookup(method, merged, name).map(|t| (name.to_owned(), t.clone().with_dtype(p.dtype())))
        })
        .collect()
}

/// `f32` rounding of an `f64` (round to nearest even).
#[inline]
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn to_f32(x: f64) -> f32 {
    x as f32
}
