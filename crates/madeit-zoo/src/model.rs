//! A trainable CLIP vision tower: the same network as [`madeit_vit::ClipVisionModel`], with
//! its weights held as burn parameters so that an optimizer can update them.
//!
//! The forward is the Hugging Face `CLIPVisionModel` forward (pre-LN transformer):
//!
//! ```text
//! x0 = [class_embedding ; patches(pixels) W_patch^T] + position_embedding
//! x  = pre_layrnorm(x0)
//! per layer:  x = x + out_proj(attention(q_proj(h), k_proj(h), v_proj(h))),  h = layer_norm1(x)
//!             x = x + fc2(act(fc1(layer_norm2(x))))
//! pooled = post_layernorm(x[:, 0])
//! ```
//!
//! Weights are stored in burn's layout (`[d_in, d_out]`, q/k/v fused into one `[d, 3d]`
//! matrix); [`TrainableVit::to_params`] and [`TrainableVit::from_params`] convert to and from
//! the HF `CLIPVisionModel` state dict (`[out, in]`, bare names), the layout
//! `madeit_vit::ClipVisionModel::from_params` loads. A unit test checks that both forwards
//! agree on the same weights.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::module::{layer_norm, linear};
use madeit_params::ParamDict;
use madeit_vit::{Activation, ClipVisionConfig, ModuleKind, blocks, expected_tensors};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::error::{Result, ZooError};

/// transformers' `initializer_range` for CLIP: the standard deviation of the patch and
/// position embeddings at initialisation.
pub const INIT_RANGE: f64 = 0.02;

/// The standard deviation of the normal initialisation of a weight, as transformers'
/// `CLIPPreTrainedModel._init_weights` (factor 1) for a tower of width `d` and `L` layers:
///
/// | tensor | std |
/// |---|---|
/// | `class_embedding` | `d^-1/2` |
/// | patch and position embeddings | `INIT_RANGE` (0.02) |
/// | q, k, v | `d^-1/2 (2L)^-1/2` |
/// | out_proj | `d^-1/2` |
/// | fc1 | `(2d)^-1/2` |
/// | fc2 | `d^-1/2 (2L)^-1/2` |
///
/// Biases start at 0 and layer norms at `gamma = 1`, `beta = 0` (not covered here).
#[must_use]
pub fn init_std(name: &str, config: &ClipVisionConfig) -> f64 {
    let d = config.hidden_size.max(1) as f64;
    let l = config.num_hidden_layers.max(1) as f64;
    let in_proj = d.powf(-0.5) * (2.0 * l).powf(-0.5);
    if name.ends_with("class_embedding") || name.contains("out_proj") {
        d.powf(-0.5)
    } else if name.contains("fc1") {
        (2.0 * d).powf(-0.5)
    } else if name.contains("q_proj")
        || name.contains("k_proj")
        || name.contains("v_proj")
        || name.contains("fc2")
    {
        in_proj
    } else {
        INIT_RANGE
    }
}

/// A layer norm `gamma * (x - mean) / sqrt(var + eps) + beta`.
#[derive(Module, Debug)]
pub struct NormParams {
    gamma: Param<Tensor<1>>,
    beta: Param<Tensor<1>>,
}

impl NormParams {
    fn forward<const D: usize>(&self, x: Tensor<D>, eps: f64) -> Tensor<D> {
        layer_norm(x, self.gamma.val(), Some(self.beta.val()), eps)
    }
}

/// One encoder layer.
#[derive(Module, Debug)]
pub struct LayerParams {
    ln1: NormParams,
    /// `[d, 3d]`: `W_q^T | W_k^T | W_v^T`.
    qkv_w: Param<Tensor<2>>,
    /// `[3d]`: `b_q | b_k | b_v`.
    qkv_b: Param<Tensor<1>>,
    /// `[d, d]`: `W_out^T`.
    out_w: Param<Tensor<2>>,
    out_b: Param<Tensor<1>>,
    ln2: NormParams,
    /// `[d, intermediate]`: `W_fc1^T`.
    fc1_w: Param<Tensor<2>>,
    fc1_b: Param<Tensor<1>>,
    /// `[intermediate, d]`: `W_fc2^T`.
    fc2_w: Param<Tensor<2>>,
    fc2_b: Param<Tensor<1>>,
}

/// A CLIP vision tower whose weights are burn parameters (see the module docs).
///
/// Create it on an autodiff device (`Device::flex().autodiff()`) to train it. It has no
/// `visual_projection`: the image embedding is `pooled_output` (width `hidden_size`), as in
/// a bare `CLIPVisionModel` checkpoint.
#[derive(Module, Debug)]
pub struct TrainableVit {
    /// `[C p p, d]`: the patch convolution as a matmul on flattened patches.
    patch_w: Param<Tensor<2>>,
    class_emb: Param<Tensor<1>>,
    pos_emb: Param<Tensor<2>>,
    pre_ln: NormParams,
    layers: Vec<LayerParams>,
    post_ln: NormParams,
    #[module(skip)]
    config: ClipVisionConfig,
}

/// Transposes a row-major `rows × cols` matrix.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; data.len()];
    for (r, row) in data.chunks_exact(cols.max(1)).enumerate().take(rows) {
        for (c, &v) in row.iter().enumerate() {
            if let Some(o) = out.get_mut(c * rows + r) {
                *o = v;
            }
        }
    }
    out
}

fn upload<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn param<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(upload(data, shape, device))
}

/// Reads a tensor back to the host.
pub(crate) fn download<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>> {
    t.try_to_vec_as::<f32>().map_err(|e| ZooError::Backend {
        message: e.to_string(),
    })
}

impl TrainableVit {
    /// A randomly initialised tower: weights and embeddings `~ N(0, init_std(name)²)` (see
    /// [`init_std`]), biases 0, layer norms `gamma = 1`, `beta = 0`, drawn from a ChaCha8
    /// stream seeded with `seed` in the order of [`expected_tensors`] (so the same seed gives
    /// the same weights on every platform).
    ///
    /// # Errors
    /// [`ZooError::Vit`] for an invalid configuration.
    pub fn init(config: &ClipVisionConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = ParamDict::new();
        for (name, shape) in expected_tensors(config) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with(".bias") {
                vec![0.0; n]
            } else if name.contains("norm") {
                vec![1.0; n]
            } else {
                let normal = Normal::new(0.0f32, init_std(&name, config) as f32).map_err(|e| {
                    ZooError::InvalidConfig {
                        field: "init std",
                        reason: e.to_string(),
                    }
                })?;
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            };
            params.insert(name, madeit_params::Tensor::new(shape, data)?);
        }
        Self::from_params(config, &params, device)
    }

    /// Builds the tower from a bare `CLIPVisionModel` state dict (HF names and `[out, in]`
    /// layout; `vision_model.`-prefixed names are accepted too; `visual_projection.weight` and
    /// `embeddings.position_ids` are ignored).
    ///
    /// # Errors
    /// [`ZooError::Parameter`] naming a missing tensor or one of the wrong shape;
    /// [`ZooError::InvalidConfig`] for an activation it does not implement.
    pub fn from_params(
        config: &ClipVisionConfig,
        params: &ParamDict,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        if !matches!(
            config.hidden_act,
            Activation::QuickGelu | Activation::Gelu | Activation::GeluTanh | Activation::Relu
        ) {
            return Err(ZooError::InvalidConfig {
                field: "hidden_act",
                reason: format!(
                    "{:?} is not supported by the trainable tower",
                    config.hidden_act
                ),
            });
        }
        let prefixed = params
            .keys()
            .any(|k| k.starts_with(madeit_vit::VISION_PREFIX));
        let expected: std::collections::BTreeMap<String, Vec<usize>> =
            expected_tensors(config).into_iter().collect();
        let get = |bare: &str| -> Result<&[f32]> {
            let full = if prefixed {
                format!("{}{bare}", madeit_vit::VISION_PREFIX)
            } else {
                bare.to_owned()
            };
            let t = params.get(&full).map_err(|_| ZooError::Parameter {
                name: full.clone(),
                reason: "missing".into(),
            })?;
            let want = expected.get(bare).map(Vec::as_slice).unwrap_or(&[]);
            if t.shape() != want {
                return Err(ZooError::Parameter {
                    name: full,
                    reason: format!("shape {:?}, expected {want:?}", t.shape()),
                });
            }
            Ok(t.data())
        };
        let d = config.hidden_size;
        let i = config.intermediate_size;
        let cpp = config.num_channels * config.patch_size * config.patch_size;
        let vec1 = |bare: &str| -> Result<Param<Tensor<1>>> {
            let data = get(bare)?.to_vec();
            let n = data.len();
            Ok(param(data, [n], device))
        };
        let lin_t = |bare: &str, d_out: usize, d_in: usize| -> Result<Param<Tensor<2>>> {
            Ok(param(
                transpose(get(bare)?, d_out, d_in),
                [d_in, d_out],
                device,
            ))
        };
        let norm = |name: &str| -> Result<NormParams> {
            Ok(NormParams {
                gamma: vec1(&format!("{name}.weight"))?,
                beta: vec1(&format!("{name}.bias"))?,
            })
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let name = |kind: ModuleKind, what: &str| {
                format!("encoder.layers.{l}.{}.{what}", kind.hf_module())
            };
            let mut stacked = Vec::with_capacity(3 * d * d);
            let mut bias = Vec::with_capacity(3 * d);
            for kind in [ModuleKind::Q, ModuleKind::K, ModuleKind::V] {
                stacked.extend_from_slice(get(&name(kind, "weight"))?);
                bias.extend_from_slice(get(&name(kind, "bias"))?);
            }
            layers.push(LayerParams {
                ln1: norm(&format!("encoder.layers.{l}.layer_norm1"))?,
                qkv_w: param(transpose(&stacked, 3 * d, d), [d, 3 * d], device),
                qkv_b: param(bias, [3 * d], device),
                out_w: lin_t(&name(ModuleKind::Out, "weight"), d, d)?,
                out_b: vec1(&name(ModuleKind::Out, "bias"))?,
                ln2: norm(&format!("encoder.layers.{l}.layer_norm2"))?,
                fc1_w: lin_t(&name(ModuleKind::Fc1, "weight"), i, d)?,
                fc1_b: vec1(&name(ModuleKind::Fc1, "bias"))?,
                fc2_w: lin_t(&name(ModuleKind::Fc2, "weight"), d, i)?,
                fc2_b: vec1(&name(ModuleKind::Fc2, "bias"))?,
            });
        }
        Ok(Self {
            patch_w: lin_t("embeddings.patch_embedding.weight", d, cpp)?,
            class_emb: vec1("embeddings.class_embedding")?,
            pos_emb: param(
                get("embeddings.position_embedding.weight")?.to_vec(),
                [config.num_positions(), d],
                device,
            ),
            pre_ln: norm("pre_layrnorm")?,
            layers,
            post_ln: norm("post_layernorm")?,
            config: config.clone(),
        })
    }

    /// The same tower with only the linear weights of the encoder layers trainable (the
    /// fused q/k/v, out_proj, fc1 and fc2 matrices); the patch, class and position
    /// embeddings, every layer norm and every bias are frozen.
    #[must_use]
    pub fn with_only_linear_weights_trainable(self) -> Self {
        self.with_trainable_linear_weights(true)
    }

    /// The same tower with only the attention weights of the encoder layers trainable (the
    /// fused q/k/v and out_proj matrices); everything else is frozen.
    #[must_use]
    pub fn with_only_attention_weights_trainable(self) -> Self {
        self.with_trainable_linear_weights(false)
    }

    fn with_trainable_linear_weights(mut self, mlp: bool) -> Self {
        fn freeze<const D: usize>(p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.set_require_grad(false)
        }
        fn freeze_norm(n: NormParams) -> NormParams {
            NormParams {
                gamma: freeze(n.gamma),
                beta: freeze(n.beta),
            }
        }
        self.patch_w = freeze(self.patch_w);
        self.class_emb = freeze(self.class_emb);
        self.pos_emb = freeze(self.pos_emb);
        self.pre_ln = freeze_norm(self.pre_ln);
        self.post_ln = freeze_norm(self.post_ln);
        self.layers = self
            .layers
            .into_iter()
            .map(|l| LayerParams {
                ln1: freeze_norm(l.ln1),
                qkv_w: l.qkv_w,
                qkv_b: freeze(l.qkv_b),
                out_w: l.out_w,
                out_b: freeze(l.out_b),
                ln2: freeze_norm(l.ln2),
                fc1_w: if mlp { l.fc1_w } else { freeze(l.fc1_w) },
                fc1_b: freeze(l.fc1_b),
                fc2_w: if mlp { l.fc2_w } else { freeze(l.fc2_w) },
                fc2_b: freeze(l.fc2_b),
            })
            .collect();
        self
    }

    /// The weights as a bare HF `CLIPVisionModel` state dict (`[out, in]` layout, F32), in
    /// the order of [`expected_tensors`].
    ///
    /// # Errors
    /// [`ZooError::Backend`] if a tensor cannot be read back.
    pub fn to_params(&self) -> Result<ParamDict> {
        let c = &self.config;
        let d = c.hidden_size;
        let i = c.intermediate_size;
        let cpp = c.num_channels * c.patch_size * c.patch_size;
        let mut host: std::collections::BTreeMap<String, Vec<f32>> = Default::default();
        let put_norm = |host: &mut std::collections::BTreeMap<String, Vec<f32>>,
                        name: &str,
                        n: &NormParams|
         -> Result<()> {
            host.insert(format!("{name}.weight"), download(&n.gamma.val())?);
            host.insert(format!("{name}.bias"), download(&n.beta.val())?);
            Ok(())
        };
        host.insert(
            "embeddings.patch_embedding.weight".into(),
            transpose(&download(&self.patch_w.val())?, cpp, d),
        );
        host.insert(
            "embeddings.class_embedding".into(),
            download(&self.class_emb.val())?,
        );
        host.insert(
            "embeddings.position_embedding.weight".into(),
            download(&self.pos_emb.val())?,
        );
        put_norm(&mut host, "pre_layrnorm", &self.pre_ln)?;
        put_norm(&mut host, "post_layernorm", &self.post_ln)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let name = |kind: ModuleKind, what: &str| {
                format!("encoder.layers.{l}.{}.{what}", kind.hf_module())
            };
            put_norm(
                &mut host,
                &format!("encoder.layers.{l}.layer_norm1"),
                &layer.ln1,
            )?;
            put_norm(
                &mut host,
                &format!("encoder.layers.{l}.layer_norm2"),
                &layer.ln2,
            )?;
            // [d, 3d] -> [3d, d] = rows W_q, W_k, W_v.
            let qkv = transpose(&download(&layer.qkv_w.val())?, d, 3 * d);
            let qkv_b = download(&layer.qkv_b.val())?;
            for (j, kind) in [ModuleKind::Q, ModuleKind::K, ModuleKind::V]
                .into_iter()
                .enumerate()
            {
                host.insert(
                    name(kind, "weight"),
                    qkv.get(j * d * d..(j + 1) * d * d)
                        .unwrap_or_default()
                        .to_vec(),
                );
                host.insert(
                    name(kind, "bias"),
                    qkv_b.get(j * d..(j + 1) * d).unwrap_or_default().to_vec(),
                );
            }
            host.insert(
                name(ModuleKind::Out, "weight"),
                transpose(&download(&layer.out_w.val())?, d, d),
            );
            host.insert(name(ModuleKind::Out, "bias"), download(&layer.out_b.val())?);
            host.insert(
                name(ModuleKind::Fc1, "weight"),
                transpose(&download(&layer.fc1_w.val())?, d, i),
            );
            host.insert(name(ModuleKind::Fc1, "bias"), download(&layer.fc1_b.val())?);
            host.insert(
                name(ModuleKind::Fc2, "weight"),
                transpose(&download(&layer.fc2_w.val())?, i, d),
            );
            host.insert(name(ModuleKind::Fc2, "bias"), download(&layer.fc2_b.val())?);
        }
        let mut dict = ParamDict::new();
        for (name, shape) in expected_tensors(c) {
            let data = host.remove(&name).ok_or_else(|| ZooError::Parameter {
                name: name.clone(),
                reason: "not produced by the model".into(),
            })?;
            let t = madeit_params::Tensor::new(shape, data).map_err(|e| e.in_tensor(&name))?;
            dict.insert(name, t);
        }
        Ok(dict)
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// Width of the image embedding ([`forward`](Self::forward)): `hidden_size`.
    #[must_use]
    pub fn embedding_dim(&self) -> usize {
        self.config.hidden_size
    }

    /// The image embedding `pooled_output = post_layernorm(x[:, 0])`, `[batch, hidden_size]`,
    /// of normalised pixels `[batch, channels, image_size, image_size]`. Differentiable with
    /// respect to the parameters on an autodiff device.
    ///
    /// # Errors
    /// [`ZooError::InvalidData`] when `pixels` does not have the configured shape.
    pub fn forward(&self, pixels: Tensor<4>) -> Result<Tensor<2>> {
        let c = &self.config;
        let [b, ch, h, w] = pixels.dims();
        if b == 0 || ch != c.num_channels || h != c.image_size || w != c.image_size {
            return Err(ZooError::InvalidData {
                what: "pixels".into(),
                reason: format!(
                    "shape [{b}, {ch}, {h}, {w}], expected [batch > 0, {}, {}, {}]",
                    c.num_channels, c.image_size, c.image_size
                ),
            });
        }
        let d = c.hidden_size;
        let eps = c.layer_norm_eps;
        let x = blocks::embed(
            c,
            pixels,
            self.patch_w.val(),
            self.class_emb.val(),
            self.pos_emb.val(),
        );
        let mut x = self.pre_ln.forward(x, eps);
        for layer in &self.layers {
            let hdn = layer.ln1.forward(x.clone(), eps);
            let qkv = linear(hdn, layer.qkv_w.val(), Some(layer.qkv_b.val()));
            let part = |j: usize| qkv.clone().narrow(2, j * d, d);
            let a = blocks::self_attention(c, part(0), part(1), part(2));
            x = x + linear(a, layer.out_w.val(), Some(layer.out_b.val()));
            let hdn = layer.ln2.forward(x.clone(), eps);
            let f = blocks::act(
                c.hidden_act,
                linear(hdn, layer.fc1_w.val(), Some(layer.fc1_b.val())),
            );
            x = x + linear(f, layer.fc2_w.val(), Some(layer.fc2_b.val()));
        }
        Ok(self.post_ln.forward(blocks::class_token(x), eps))
    }
}

/// Uploads host pixels `[batch, C, H, W]` to `device`.
pub(crate) fn pixels_tensor(
    data: Vec<f32>,
    batch: usize,
    config: &ClipVisionConfig,
    device: &Device,
) -> Tensor<4> {
    upload(
        data,
        [
            batch,
            config.num_channels,
            config.image_size,
            config.image_size,
        ],
        device,
    )
}

/// Uploads a host matrix `[rows, cols]` to `device`.
pub(crate) fn matrix_tensor(
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Tensor<2> {
    upload(data, [rows, cols], device)
}
