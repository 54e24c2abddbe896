//! What the two owned-weight CLIP towers ([`ClipVisionModel`](crate::ClipVisionModel) and
//! [`ClipTextModel`](crate::ClipTextModel)) share: the layer norm, the encoder layer in
//! their fast layout (linear weights transposed to `[d_in, d_out]`, q, k and v fused), and
//! the reading of those weights from a checkpoint's tensors onto a device.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::module::layer_norm;

use crate::error::CheckpointReport;
use crate::util::{transpose, upload};
use crate::{ModuleId, ModuleKind, VitError};

/// A weight as a burn parameter: trainable on an autodiff device (see
/// [`ClipVisionModel::with_trainable`](crate::ClipVisionModel::with_trainable)), a plain
/// tensor on any other.
pub(crate) fn param<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(t)
}

/// The same parameter (its id and whether it trains kept) on `device`.
pub(crate) fn param_to<const D: usize>(p: Param<Tensor<D>>, device: &Device) -> Param<Tensor<D>> {
    p.map(|t| t.to_device(device))
}

/// A layer norm's scale and shift, `[hidden_size]` each.
#[derive(Module, Debug)]
pub(crate) struct Norm {
    pub(crate) gamma: Param<Tensor<1>>,
    pub(crate) beta: Param<Tensor<1>>,
}

impl Norm {
    pub(crate) fn forward<const D: usize>(&self, x: Tensor<D>, eps: f64) -> Tensor<D> {
        layer_norm(x, self.gamma.val(), Some(self.beta.val()), eps)
    }

    pub(crate) fn into_device(self, device: &Device) -> Self {
        Self {
            gamma: param_to(self.gamma, device),
            beta: param_to(self.beta, device),
        }
    }

    /// The same norm with its scale and shift frozen.
    pub(crate) fn frozen(self) -> Self {
        Self {
            gamma: self.gamma.set_require_grad(false),
            beta: self.beta.set_require_grad(false),
        }
    }
}

/// One encoder layer, with weights pre-transposed to `[d_in, d_out]` and q, k, v fused.
#[derive(Module, Debug)]
pub(crate) struct Layer {
    pub(crate) ln1: Norm,
    /// `[d, 3d]`: columns `0..d` are `W_q^T`, then `W_k^T`, then `W_v^T`.
    pub(crate) qkv_w: Param<Tensor<2>>,
    /// `[3d]`: `b_q | b_k | b_v`.
    pub(crate) qkv_b: Param<Tensor<1>>,
    pub(crate) out_w: Param<Tensor<2>>,
    pub(crate) out_b: Param<Tensor<1>>,
    pub(crate) ln2: Norm,
    pub(crate) fc1_w: Param<Tensor<2>>,
    pub(crate) fc1_b: Param<Tensor<1>>,
    pub(crate) fc2_w: Param<Tensor<2>>,
    pub(crate) fc2_b: Param<Tensor<1>>,
}

impl Layer {
    pub(crate) fn into_device(self, device: &Device) -> Self {
        Self {
            ln1: self.ln1.into_device(device),
            qkv_w: param_to(self.qkv_w, device),
            qkv_b: param_to(self.qkv_b, device),
            out_w: param_to(self.out_w, device),
            out_b: param_to(self.out_b, device),
            ln2: self.ln2.into_device(device),
            fc1_w: param_to(self.fc1_w, device),
            fc1_b: param_to(self.fc1_b, device),
            fc2_w: param_to(self.fc2_w, device),
            fc2_b: param_to(self.fc2_b, device),
        }
    }

    /// The same layer with only its linear weights left as they are (the fused q/k/v and
    /// out_proj matrices, and fc1 and fc2 when `mlp`); the layer norms, the biases and the
    /// other weights frozen.
    pub(crate) fn frozen_but_linear(self, mlp: bool) -> Self {
        let keep_mlp = |p: Param<Tensor<2>>| if mlp { p } else { p.set_require_grad(false) };
        Self {
            ln1: self.ln1.frozen(),
            qkv_w: self.qkv_w,
            qkv_b: self.qkv_b.set_require_grad(false),
            out_w: self.out_w,
            out_b: self.out_b.set_require_grad(false),
            ln2: self.ln2.frozen(),
            fc1_w: keep_mlp(self.fc1_w),
            fc1_b: self.fc1_b.set_require_grad(false),
            fc2_w: keep_mlp(self.fc2_w),
            fc2_b: self.fc2_b.set_require_grad(false),
        }
    }
}

/// Uploads a tower's weights, found by their bare names in a checkpoint that was already
/// matched against the tower's expected tensors, to a device.
pub(crate) struct Uploader<'a> {
    pub(crate) found: &'a BTreeMap<String, &'a madeit_params::Tensor>,
    pub(crate) device: &'a Device,
    /// The error for a tensor that is not there (the vision or the text checkpoint's).
    pub(crate) missing: fn(CheckpointReport) -> VitError,
}

impl Uploader<'_> {
    pub(crate) fn data(&self, bare: &str) -> Result<&[f32], VitError> {
        self.found.get(bare).map(|t| t.data()).ok_or_else(|| {
            (self.missing)(CheckpointReport {
                missing: vec![(bare.to_owned(), Vec::new())],
                ..CheckpointReport::default()
            })
        })
    }

    pub(crate) fn vec1(&self, bare: &str) -> Result<Tensor<1>, VitError> {
        let data = self.data(bare)?.to_vec();
        let n = data.len();
        Ok(upload(data, [n], self.device))
    }

    pub(crate) fn mat(&self, bare: &str, rows: usize, cols: usize) -> Result<Tensor<2>, VitError> {
        Ok(upload(self.data(bare)?.to_vec(), [rows, cols], self.device))
    }

    /// Uploads an HF `[out, in]` weight transposed to `[in, out]`.
    pub(crate) fn linear_t(
        &self,
        bare: &str,
        d_out: usize,
        d_in: usize,
    ) -> Result<Tensor<2>, VitError> {
        let data = transpose(self.data(bare)?, d_out, d_in);
        Ok(upload(data, [d_in, d_out], self.device))
    }

    pub(crate) fn norm(&self, name: &str) -> Result<Norm, VitError> {
        Ok(Norm {
            gamma: param(self.vec1(&format!("{name}.weight"))?),
            beta: param(self.vec1(&format!("{name}.bias"))?),
        })
    }

    /// An optional HF `[out, in]` weight, transposed to `[in, out]` when the checkpoint has
    /// it (a tower's projection).
    pub(crate) fn optional_linear_t(
        &self,
        bare: &str,
        d_out: usize,
        d_in: usize,
    ) -> Result<Option<Tensor<2>>, VitError> {
        if self.found.contains_key(bare) {
            self.linear_t(bare, d_out, d_in).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The `layers` encoder layers of width `d` and MLP width `i`.
    pub(crate) fn layers(&self, layers: usize, d: usize, i: usize) -> Result<Vec<Layer>, VitError> {
        (0..layers).map(|l| self.layer(l, d, i)).collect()
    }

    /// Encoder layer `l` of width `d` and MLP width `i` (the same names in both towers).
    pub(crate) fn layer(&self, l: usize, d: usize, i: usize) -> Result<Layer, VitError> {
        let pre = format!("encoder.layers.{l}.");
        // Fused [d, 3d] = [W_q^T | W_k^T | W_v^T]: stack the [d, d] HF matrices as [3d, d]
        // and transpose once.
        let mut stacked = Vec::with_capacity(3 * d * d);
        let mut bias = Vec::with_capacity(3 * d);
        for kind in [ModuleKind::Q, ModuleKind::K, ModuleKind::V] {
            let id = ModuleId::new(l, kind);
            stacked.extend_from_slice(self.data(&id.weight_name())?);
            bias.extend_from_slice(self.data(&id.bias_name())?);
        }
        let out = ModuleId::new(l, ModuleKind::Out);
        let fc1 = ModuleId::new(l, ModuleKind::Fc1);
        let fc2 = ModuleId::new(l, ModuleKind::Fc2);
        Ok(Layer {
            ln1: self.norm(&format!("{pre}layer_norm1"))?,
            qkv_w: param(upload(
                transpose(&stacked, 3 * d, d),
                [d, 3 * d],
                self.device,
            )),
            qkv_b: param(upload(bias, [3 * d], self.device)),
            out_w: param(self.linear_t(&out.weight_name(), d, d)?),
            out_b: param(self.vec1(&out.bias_name())?),
            ln2: self.norm(&format!("{pre}layer_norm2"))?,
            fc1_w: param(self.linear_t(&fc1.weight_name(), i, d)?),
            fc1_b: param(self.vec1(&fc1.bias_name())?),
            fc2_w: param(self.linear_t(&fc2.weight_name(), d, i)?),
            fc2_b: param(self.vec1(&fc2.bias_name())?),
        })
    }
}
