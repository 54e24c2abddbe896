//! A CLIP / ViT vision tower in [burn](https://burn.dev) that loads Hugging Face checkpoints
//! and runs the forwards that continual model-merging methods need, and CLIP's text tower,
//! tokenizer and zero-shot heads.
//!
//! The model is the vision half of CLIP (Radford et al., *Learning Transferable Visual Models
//! From Natural Language Supervision*, 2021) as implemented by transformers'
//! `CLIPVisionModel` / `CLIPVisionModelWithProjection` (model cards
//! `openai/clip-vit-base-patch32`, `-base-patch16`, `-large-patch14`).
//!
//! # Architecture
//!
//! For pixels `[B, C, H, W]` (already resized and normalised), with `d = hidden_size`,
//! `p = patch_size`, `N = (H/p)^2 + 1` tokens:
//!
//! ```text
//! x   = [cls ; patches(P) W_patch^T] + E_pos            patch conv = matmul, no bias
//! x   = LN_pre(x)
//! per layer l:
//!   h = LN_1(x);   q, k, v = h W_q^T + b_q, h W_k^T + b_k, h W_v^T + b_v
//!   x = x + softmax(q k^T / sqrt(d_head)) v  W_out^T + b_out      (per head)
//!   h = LN_2(x);   x = x + act(h W_fc1^T + b_fc1) W_fc2^T + b_fc2
//! last_hidden_state = x                                   [B, N, d]
//! pooled_output     = LN_post(x[:, 0])                    [B, d]
//! image_embeds      = pooled_output W_proj^T              [B, projection_dim], optional
//! ```
//!
//! `act` is quick-GELU `x sigmoid(1.702 x)` for the OpenAI checkpoints (see [`Activation`]).
//!
//! # Loading and saving
//!
//! [`ClipVisionModel::from_params`] takes a [`madeit_params::ParamDict`] with HF names in
//! PyTorch layout and [`ClipVisionModel::to_params`] gives one back, so merging code works on
//! plain named tensors and never touches burn. Accepted layouts ([`KeyLayout`]):
//!
//! | checkpoint | names | extra tensors |
//! |---|---|---|
//! | bare `CLIPVisionModel` (transformers 5 `save_pretrained`) | `embeddings.class_embedding`, `encoder.layers.N....` | — |
//! | `CLIPVisionModelWithProjection` | `vision_model.` + the above | `visual_projection.weight` |
//! | full `CLIPModel` | `vision_model.` + the above | `visual_projection.weight`; `text_model.*`, `text_projection.weight`, `logit_scale` ignored |
//!
//! `embeddings.position_ids` buffers are ignored. Missing, unexpected and mis-shaped tensors
//! are reported together ([`VitError::Checkpoint`] with a [`CheckpointReport`]); NaN or
//! infinite weights name the tensor ([`VitError::NonFiniteWeight`]). Storage dtypes
//! (F32 / F16 / BF16) and the key layout are remembered, so load -> save -> load is
//! bit-identical. [`ClipVisionModel::load_dir`] / [`ClipVisionModel::save_dir`] read and
//! write `config.json` + `model.safetensors`; [`ClipVisionConfig::from_json_str`] accepts a
//! `CLIPVisionConfig` or a full `CLIPConfig` (`vision_config` + top-level `projection_dim`).
//!
//! Internal layout (not visible through the API): linear weights are stored transposed,
//! `[d_in, d_out]`, so that `x W^T` is one row-major matmul, and q, k, v are fused into one
//! `[d, 3d]` matrix per layer; the patch convolution is a matmul on flattened patches.
//!
//! # Interface for merging methods
//!
//! Target modules are the six linear maps of every layer, named by a [`ModuleId`]
//! `{ layer, kind: Q | K | V | Out | Fc1 | Fc2 }`; [`ModuleId::weight_name`] /
//! [`ModuleId::bias_name`] give the HF parameter names (without the `vision_model.`
//! prefix). Weights are `W: [d_out, d_in]` and a module computes `y = x W^T + b`.
//!
//! | need | call |
//! |---|---|
//! | dense weights (any merge written into a `ParamDict`) | [`ClipVisionModel::from_params`] then [`ClipVisionModel::forward`] |
//! | inputs `X_m` of every target module | [`ClipVisionModel::forward_with_inputs`] -> [`ModuleInputs`] |
//! | routing features: `||X_i V_e||_F / ||X_i||_F` per sample, module, expert (MADE-IT's FPA) | [`ClipVisionModel::forward_scored`] -> [`RoutingScores`] |
//! | per-sample low-rank experts `y_i = W x_i + b + U_e diag(s_e) V_e^T x_i` | [`ClipVisionModel::forward_routed`] with an [`ExpertBank`] and a [`Routing`] |
//! | MINGLE's gated mixture `y = W x + b + sum_e gbar_e B_e A_e x` | [`ClipVisionModel::forward_gated`] with an [`ExpertBank`] and a [`GateBank`] |
//! | anything else per module | implement [`ModuleAdapter`], call [`ClipVisionModel::forward_with_adapter`] |
//!
//! Experts enter as plain `f32` factors ([`LowRankFactors`]: `U [d_out, r]`, `s [r]`,
//! `V [d_in, r]`, constructible from faer matrices, e.g. a thin SVD, or from a LoRA pair
//! `B A`). An [`ExpertBank`] uploads them once, concatenated along the rank per module with
//! `s` folded into `U^T`.
//!
//! *Routed forward.* Samples are grouped by their expert in each module; each group costs
//! `(X_g V_e)(diag(s_e) U_e^T)` — two thin matmuls — and the result is scattered back into
//! the batch. No per-sample dense weight is formed, so the extra cost is
//! `2 B N r (d_in + d_out)` multiply-adds per module on top of the `B N d_in d_out` of the
//! base matmul (about 10 % for `r = 40` at ViT-B).
//!
//! *Gated forward (MINGLE).* Per module, `gbar_e = mean_batch(mean_tokens(w_e^T x + b_e))
//! = w_e^T xbar + b_e` (exact: the gate is affine); then
//! `delta = ((X [V_1..V_E]) * [gbar_1 1_{r_1} .. gbar_E 1_{r_E}]) [S_1 U_1^T; ..]`, two
//! matmuls for all experts together. The gates are burn [`Param`](burn::module::Param)s in a
//! [`GateBank`] (a burn `Module`, so burn's optimizers update it). Put the gate bank on an
//! autodiff device (`Device::flex().autodiff()`) and keep the model and the experts on the
//! plain device: the backbone and the factors are constants, gradients reach only the gate
//! parameters that require them ([`GateTraining`]). [`GateBank::weight_grad`] /
//! [`GateBank::set_weight_grad`] expose a gate's gradient as plain numbers for MINGLE's
//! gradient projection, and [`distillation_loss`] is its test-time-adaptation loss.
//!
//! *Heads.* A [`TaskHead`] is a fixed `[classes, dim]` matrix of unit rows; logits are
//! `s cos(image embedding, row)` with `s = 100`, or `exp(logit_scale)` for a head that
//! carries CLIP's logit scale, and accuracy uses the task's own classes.
//!
//! # Text tower, tokenizer and zero-shot heads
//!
//! The text half of CLIP, as transformers' `CLIPTextModel` / `CLIPModel` implement it:
//!
//! ```text
//! x = E_tok[ids] + E_pos[0..len]
//! per layer: x = x + Attn(LN_1(x)), causal and padding mask;  x = x + MLP(LN_2(x))
//! last_hidden_state = LN_final(x)
//! pooled_output     = last_hidden_state[end-of-text position]   (PoolingRule)
//! text_embeds       = pooled_output W_text_proj^T
//! ```
//!
//! - [`ClipTextConfig`] mirrors `CLIPTextConfig` (also read from a `CLIPConfig`'s
//!   `text_config`) and bounds every size before anything is allocated.
//! - [`ClipTextModel`] is built from the same [`ParamDict`](madeit_params::ParamDict) a
//!   `CLIPModel` file loads into (`text_model.*`, `text_projection.weight`); the vision tower
//!   of such a file still loads with [`ClipVisionModel::load_dir`]. The end-of-text position
//!   follows transformers exactly, for the legacy `eos_token_id == 2` (largest id) and the
//!   current configurations (first end token) ([`PoolingRule`]).
//! - [`ClipTokenizer`] wraps the `tokenizers` library (pure-Rust regex backend) with CLIP's
//!   pipeline: `tokenizer.json`, or `vocab.json` + `merges.txt`, or CLIP's own BPE file;
//!   start and end tokens, truncation at 77.
//! - [`zero_shot_head`] / [`ZeroShotModel::head`] make CLIP's zero-shot head of a
//!   [`ZeroShotTask`] (class names and `{}` templates; the 20 tasks of TA8 / TALL14 / TALL20
//!   are built in) as FusionBench does: per class, the normalised text embedding of every
//!   template, averaged, normalised again; the head carries `logit_scale` and the
//!   checkpoint's `visual_projection` ([`ClipVisionModel::with_projection`] gives it to a
//!   vision tower saved without one).
//!
//! # Backends
//!
//! The CPU backend is burn's flex (pure Rust, `Device::flex()`), with its `rayon`
//! (multi-threaded gemm) and `simd` features, which this crate turns on. Every function takes
//! or returns burn tensors on the model's device, so other burn devices work unchanged.

mod config;
mod device;
mod encoder;
mod error;
mod experts;
mod gates;
mod head;
mod kernels;
mod model;
mod names;
mod text_config;
mod text_model;
mod tokenizer;
mod util;
mod zero_shot;

pub mod blocks;
pub mod functional;

pub use config::{
    Activation, ClipVisionConfig, MAX_CHANNELS, MAX_IMAGE_SIZE, MAX_LAYERS, MAX_POSITIONS,
    MAX_WIDTH,
};
pub use device::DeviceKind;
#[cfg(feature = "wgpu")]
pub use device::{wgpu_available, wgpu_device};
pub use error::{CheckpointReport, ShapeMismatch, VitError};
pub use experts::{ExpertBank, LowRankFactors, Routing, RoutingScores, TokenAggregation};
pub use gates::{GateBank, GateSharing, GateTraining, GateValues, LinearGate, ModuleGates};
pub use head::{
    CLASS_NAMES_KEY, HEAD_LOGIT_SCALE_KEY, HEAD_PROJECTION_KEY, HEAD_WEIGHT_KEY, LOGIT_SCALE,
    TASK_KEY, TEMPLATES_KEY, TaskHead, distillation_loss,
};
pub use model::{
    CONFIG_FILE, ClipVisionModel, ModelSummary, ModuleAdapter, ModuleInputs, NoAdapter,
    TrainableWeights, VisionOutput, WEIGHTS_FILE,
};
pub use names::{
    KeyLayout, ModuleId, ModuleKind, PROJECTION_WEIGHT, VISION_PREFIX, expected_tensors,
};
pub use text_config::{ClipTextConfig, PoolingRule, limits as text_limits};
pub use text_model::{
    ClipTextModel, LOGIT_SCALE_KEY, TEXT_PREFIX, TEXT_PROJECTION_WEIGHT, TextBatch, TextKeyLayout,
    TextOutput, expected_text_tensors,
};
pub use tokenizer::{
    BOS_TOKEN, CLIP_NUM_MERGES, CONTEXT_LENGTH, ClipTokenizer, EOS_TOKEN, MERGES_FILE,
    TOKENIZER_FILE, VOCAB_FILE,
};
pub use util::to_host;
pub use zero_shot::{
    DEFAULT_TEXT_BATCH, PLACEHOLDER, TA8, TALL14, TALL20, ZeroShotModel, ZeroShotTask,
    builtin_task_name, builtin_task_names, logit_scale_of, task_group, zero_shot_head,
    zero_shot_head_with,
};

/// The burn device type the `*_on` constructors take (`Device::flex()` is the CPU).
pub use burn::prelude::Device;
