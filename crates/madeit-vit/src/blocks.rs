//! The building blocks every forward of the vision tower is made of, shared by the
//! owned-weight model ([`ClipVisionModel`](crate::ClipVisionModel)), the differentiable
//! forward on caller-owned tensors ([`functional`](crate::functional)) and the zoo's
//! trainable tower, so that the three compute the embedding, the attention and the MLP
//! activation with the same operations in the same order.
//!
//! Each block is plain burn tensor math (differentiable on an autodiff device); where its
//! weights come from (owned tensors, parameters, a dictionary) is the caller's business.

use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::{Activation, ClipVisionConfig};

/// The embedded tokens `[class_embedding ; patches(pixels) · W] + position_embedding`,
/// `[batch, num_positions, hidden_size]`, of pixels `[batch, channels, image_size,
/// image_size]`.
///
/// The patch embedding, a stride-`p` convolution without bias, is a matmul on flattened
/// non-overlapping patches (channel-major within a patch, like the convolution's weight):
/// `patch_w_t` is the weight transposed, `[channels · p², hidden_size]`. `class_emb` is
/// `[hidden_size]`, `pos_emb` `[num_positions, hidden_size]`. The caller has checked the
/// pixels' shape against `config`.
pub fn embed(
    config: &ClipVisionConfig,
    pixels: Tensor<4>,
    patch_w_t: Tensor<2>,
    class_emb: Tensor<1>,
    pos_emb: Tensor<2>,
) -> Tensor<3> {
    let [b, ch, _, _] = pixels.dims();
    let p = config.patch_size;
    let g = config.image_size / p;
    let d = config.hidden_size;
    let patches = pixels
        .reshape([b, ch, g, p, g, p])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b * g * g, ch * p * p]);
    let emb = patches.matmul(patch_w_t).reshape([b, g * g, d]);
    let cls = class_emb.reshape([1, 1, d]).expand([b, 1, d]);
    Tensor::cat(vec![cls, emb], 1) + pos_emb.unsqueeze::<3>()
}

/// Multi-head scaled dot-product attention of the projected queries, keys and values
/// `[batch, tokens, hidden_size]` (no mask), heads merged back: `[batch, tokens,
/// hidden_size]`, the input of the output projection.
pub fn self_attention(
    config: &ClipVisionConfig,
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
) -> Tensor<3> {
    let [b, n, d] = q.dims();
    let (heads, dh) = (config.num_attention_heads, config.head_dim());
    let split = |t: Tensor<3>| t.reshape([b, n, heads, dh]).swap_dims(1, 2);
    attention(
        split(q),
        split(k),
        split(v),
        None,
        None,
        AttentionModuleOptions::default(),
    )
    .swap_dims(1, 2)
    .reshape([b, n, d])
}

/// The MLP activation, with burn's ops.
pub fn act<const D: usize>(kind: Activation, x: Tensor<D>) -> Tensor<D> {
    match kind {
        Activation::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
        Activation::Gelu => activation::gelu(x),
        Activation::GeluTanh => activation::gelu_approximate(x),
        Activation::Relu => activation::relu(x),
    }
}

/// The class token of the last hidden state, `[batch, hidden_size]` (the input of the
/// post-layer-norm).
pub fn class_token(x: Tensor<3>) -> Tensor<2> {
    let [b, _, d] = x.dims();
    x.narrow(1, 0, 1).reshape([b, d])
}
