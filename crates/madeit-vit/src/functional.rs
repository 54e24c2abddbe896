//! A differentiable forward of the vision tower whose weights are plain burn tensors supplied
//! by the caller.
//!
//! [`ClipVisionModel`](crate::ClipVisionModel) owns its weights in a layout chosen for speed
//! (transposed, q/k/v fused) and fuses the quick-GELU activation into a host kernel. Methods
//! that *compute* the weights — for example `theta(L) = theta_0 + clamp(L_k) tau[k]` with
//! learned coefficients `L` on an autodiff device — need a forward through tensors they
//! build themselves, so that gradients flow back into whatever produced them. This module
//! provides it: [`TowerTensors`] holds one tensor per HF parameter name (bare
//! `CLIPVisionModel` names, PyTorch layout, stored flattened) and [`forward`] runs exactly
//! the math of [`ClipVisionModel::forward`](crate::ClipVisionModel::forward) with burn ops
//! only (pre-LN, multi-head attention through burn's `attention`, the configured MLP
//! activation, post-LN on the class token, optional projection).
//!
//! Results equal the owned-weight forward up to floating-point reassociation (q, k and v are
//! three matmuls here instead of one fused matmul; the activation uses burn ops instead of
//! the fused host kernel): about `1e-6` relative on the tiny tower.

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::module::{layer_norm, linear};
use madeit_params::ParamDict;

use crate::blocks;
use crate::error::{CheckpointReport, ShapeMismatch};
use crate::model::{check_pixels, unreachable_parts};
use crate::names::{PROJECTION_WEIGHT, VISION_PREFIX, expected_tensors, is_ignored};
use crate::util::{first_non_finite, upload};
use crate::{ClipVisionConfig, ModuleId, ModuleKind, VisionOutput, VitError};

/// Every weight of a vision tower as caller-owned burn tensors, keyed by bare HF name.
///
/// Each tensor is the row-major flattening of the HF tensor (PyTorch layout: linear weights
/// `[out, in]`, the patch embedding `[d, C, p, p]`), so a weight can be computed
/// element-wise from others (`base + c * tau`) regardless of its shape; [`forward`] reshapes
/// it. Tensors may live on a plain or an autodiff device; mixing both is allowed (plain
/// tensors act as constants).
///
/// Construction checks that every tensor of [`expected_tensors`] is present (plus
/// `visual_projection.weight`, which is optional) with the right number of elements, and
/// that there is nothing else.
#[derive(Debug, Clone)]
pub struct TowerTensors {
    config: ClipVisionConfig,
    tensors: BTreeMap<String, Tensor<1>>,
}

impl TowerTensors {
    /// Wraps flattened tensors keyed by bare HF name (`embeddings.class_embedding`, ...,
    /// optionally `visual_projection.weight`).
    ///
    /// # Errors
    /// [`VitError::InvalidConfig`] for a bad `config`; [`VitError::Checkpoint`] listing every
    /// missing name (with its expected shape), unexpected name, and tensor whose element
    /// count differs from its expected shape's (reported with `got = [count]`).
    pub fn new(
        config: &ClipVisionConfig,
        tensors: BTreeMap<String, Tensor<1>>,
    ) -> Result<Self, VitError> {
        config.validate()?;
        let wanted = wanted_shapes(config);
        let mut report = CheckpointReport::default();
        for (name, t) in &tensors {
            match wanted.get(name) {
                None => report.unexpected.push(name.clone()),
                Some(shape) => {
                    let n = t.dims()[0];
                    if n != shape.iter().product::<usize>() {
                        report.mismatched.push(ShapeMismatch {
                            name: name.clone(),
                            expected: shape.clone(),
                            got: vec![n],
                        });
                    }
                }
            }
        }
        for (name, shape) in expected_tensors(config) {
            if !tensors.contains_key(&name) {
                report.missing.push((name, shape));
            }
        }
        if !report.is_clean() {
            return Err(VitError::Checkpoint { report });
        }
        Ok(Self {
            config: config.clone(),
            tensors,
        })
    }

    /// Uploads HF-named host tensors (bare or `vision_model.`-prefixed names, as
    /// [`ClipVisionModel::from_params`](crate::ClipVisionModel::from_params) accepts) to
    /// `device`. Known buffers and text-tower tensors are ignored.
    ///
    /// # Errors
    /// [`VitError::Checkpoint`] listing missing, unexpected and mis-shaped tensors (exact
    /// shapes are compared); [`VitError::NonFiniteWeight`] naming the first tensor with a NaN
    /// or an infinity.
    pub fn from_params(
        config: &ClipVisionConfig,
        params: &ParamDict,
        device: &Device,
    ) -> Result<Self, VitError> {
        config.validate()?;
        let wanted = wanted_shapes(config);
        let prefixed = params.keys().any(|k| k.starts_with(VISION_PREFIX));
        let mut report = CheckpointReport::default();
        let mut tensors = BTreeMap::new();
        for (name, t) in params.iter() {
            let bare = if name == PROJECTION_WEIGHT || !prefixed {
                Some(name)
            } else {
                name.strip_prefix(VISION_PREFIX)
            };
            let Some((bare, shape)) = bare.and_then(|b| wanted.get_key_value(b)) else {
                if !is_ignored(name) {
                    report.unexpected.push(name.to_owned());
                }
                continue;
            };
            if shape.as_slice() != t.shape() {
                report.mismatched.push(ShapeMismatch {
                    name: name.to_owned(),
                    expected: shape.clone(),
                    got: t.shape().to_vec(),
                });
                continue;
            }
            if let Some((index, value)) = first_non_finite(t.data()) {
                return Err(VitError::NonFiniteWeight {
                    name: name.to_owned(),
                    index,
                    value,
                });
            }
            tensors.insert(bare.clone(), upload(t.data().to_vec(), [t.numel()], device));
        }
        for (name, shape) in expected_tensors(config) {
            let shown = if prefixed {
                format!("{VISION_PREFIX}{name}")
            } else {
                name.clone()
            };
            let mismatched = report.mismatched.iter().any(|m| m.name == shown);
            if !tensors.contains_key(&name) && !mismatched {
                report.missing.push((shown, shape));
            }
        }
        if !report.is_clean() {
            return Err(VitError::Checkpoint { report });
        }
        Self::new(config, tensors)
    }

    /// The tower configuration the tensors were checked against.
    #[must_use]
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The flattened tensor of bare name `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Tensor<1>> {
        self.tensors.get(name)
    }

    /// Every tensor, by bare name (sorted).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<1>)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether `visual_projection.weight` is present.
    #[must_use]
    pub fn has_projection(&self) -> bool {
        self.tensors.contains_key(PROJECTION_WEIGHT)
    }

    fn vec(&self, name: &str) -> Result<Tensor<1>, VitError> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| VitError::Checkpoint {
                report: CheckpointReport {
                    missing: vec![(name.to_owned(), Vec::new())],
                    ..CheckpointReport::default()
                },
            })
    }

    /// The `[out, in]` weight `name`, transposed to `[in, out]` for burn's `linear`.
    fn linear_t(&self, name: &str, d_out: usize, d_in: usize) -> Result<Tensor<2>, VitError> {
        Ok(self.vec(name)?.reshape([d_out, d_in]).transpose())
    }
}

/// Bare name -> shape of every tensor the tower may hold (projection included).
fn wanted_shapes(config: &ClipVisionConfig) -> BTreeMap<String, Vec<usize>> {
    let mut wanted: BTreeMap<String, Vec<usize>> = expected_tensors(config).into_iter().collect();
    wanted.insert(
        PROJECTION_WEIGHT.to_owned(),
        vec![config.projection_dim, config.hidden_size],
    );
    wanted
}

fn norm<const D: usize>(
    w: &TowerTensors,
    name: &str,
    x: Tensor<D>,
    eps: f64,
) -> Result<Tensor<D>, VitError> {
    let gamma = w.vec(&format!("{name}.weight"))?;
    let beta = w.vec(&format!("{name}.bias"))?;
    Ok(layer_norm(x, gamma, Some(beta), eps))
}

/// The forward of the CLIP vision tower through caller-supplied weights (see the module
/// docs): the same math as [`ClipVisionModel::forward`](crate::ClipVisionModel::forward),
/// differentiable with respect to every tensor of `weights` that lives on an autodiff device.
///
/// `pixels`: `[batch, num_channels, image_size, image_size]`, already normalised.
///
/// # Errors
/// [`VitError::InvalidConfig`] when `config` differs from the one `weights` was checked
/// against; [`VitError::InputShape`] when `pixels` does not fit.
pub fn forward(
    config: &ClipVisionConfig,
    weights: &TowerTensors,
    pixels: Tensor<4>,
) -> Result<VisionOutput, VitError> {
    if config != &weights.config {
        return Err(VitError::InvalidConfig {
            field: "vision tower",
            reason: "the configuration differs from the one the weights were checked against"
                .into(),
        });
    }
    let c = config;
    check_pixels(c, pixels.dims())?;
    let p = c.patch_size;
    let d = c.hidden_size;
    let inter = c.intermediate_size;
    let n = c.num_positions();
    let eps = c.layer_norm_eps;
    let cpp = c.num_channels * p * p;

    let x = blocks::embed(
        c,
        pixels,
        weights.linear_t("embeddings.patch_embedding.weight", d, cpp)?,
        weights.vec("embeddings.class_embedding")?,
        weights
            .vec("embeddings.position_embedding.weight")?
            .reshape([n, d]),
    );
    let mut x = norm(weights, "pre_layrnorm", x, eps)?;

    for l in 0..c.num_hidden_layers {
        let pre = format!("encoder.layers.{l}.");
        let h = norm(weights, &format!("{pre}layer_norm1"), x.clone(), eps)?;
        let mut parts = Vec::with_capacity(3);
        for kind in [ModuleKind::Q, ModuleKind::K, ModuleKind::V] {
            let id = ModuleId::new(l, kind);
            let w = weights.linear_t(&id.weight_name(), d, d)?;
            let bias = weights.vec(&id.bias_name())?;
            parts.push(linear(h.clone(), w, Some(bias)));
        }
        let (Some(v), Some(k), Some(q)) = (parts.pop(), parts.pop(), parts.pop()) else {
            unreachable_parts()?
        };
        let a = blocks::self_attention(c, q, k, v);
        let out = ModuleId::new(l, ModuleKind::Out);
        let o = linear(
            a,
            weights.linear_t(&out.weight_name(), d, d)?,
            Some(weights.vec(&out.bias_name())?),
        );
        x = x + o;

        let h = norm(weights, &format!("{pre}layer_norm2"), x.clone(), eps)?;
        let fc1 = ModuleId::new(l, ModuleKind::Fc1);
        let fc2 = ModuleId::new(l, ModuleKind::Fc2);
        let f = linear(
            h,
            weights.linear_t(&fc1.weight_name(), inter, d)?,
            Some(weights.vec(&fc1.bias_name())?),
        );
        let f = blocks::act(c.hidden_act, f);
        let o = linear(
            f,
            weights.linear_t(&fc2.weight_name(), d, inter)?,
            Some(weights.vec(&fc2.bias_name())?),
        );
        x = x + o;
    }

    let pooled = norm(
        weights,
        "post_layernorm",
        blocks::class_token(x.clone()),
        eps,
    )?;
    let image_embeds = if weights.has_projection() {
        let proj = weights.linear_t(PROJECTION_WEIGHT, c.projection_dim, d)?;
        Some(pooled.clone().matmul(proj))
    } else {
        None
    };
    Ok(VisionOutput {
        last_hidden_state: x,
        pooled_output: pooled,
        image_embeds,
    })
}
