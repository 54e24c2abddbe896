//! The CLIP vision transformer: weights, loading and saving in HF layout, and the forward.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::module::linear;
use madeit_params::{DType, ParamDict};

use crate::blocks;
use crate::encoder::{Layer, Norm, Uploader, param, param_to};
use crate::error::{CheckpointReport, ShapeMismatch};
use crate::names::{KeyLayout, PROJECTION_WEIGHT, VISION_PREFIX, expected_tensors, is_ignored};
use crate::util::{download, first_non_finite, transpose, upload};
use crate::{Activation, ClipVisionConfig, ModuleId, ModuleKind, VitError};

/// Name of the weights file inside a model directory.
pub use madeit_params::WEIGHTS_FILE;
/// Name of the configuration file inside a model directory.
pub const CONFIG_FILE: &str = "config.json";

/// The weights of a model folder, as every loader of this crate reads them (the vision
/// tower, the text tower and the zero-shot heads' logit scale all come through here).
/// `model.safetensors`, or a sharded checkpoint ([`ParamDict::load_checkpoint`]).
pub(crate) fn load_weights(dir: &Path) -> Result<ParamDict, VitError> {
    Ok(ParamDict::load_checkpoint(dir)?)
}

/// Outputs of a forward pass (the names of transformers' `CLIPVisionModelOutput`).
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// Encoder output `[batch, num_positions, hidden_size]` (before `post_layernorm`).
    pub last_hidden_state: Tensor<3>,
    /// `post_layernorm` of the class token, `[batch, hidden_size]`.
    pub pooled_output: Tensor<2>,
    /// `pooled_output visual_projection^T`, `[batch, projection_dim]`; `None` when the
    /// checkpoint has no `visual_projection.weight`.
    pub image_embeds: Option<Tensor<2>>,
}

impl VisionOutput {
    /// The image embedding used by task heads: `image_embeds` when the model has a
    /// projection, otherwise `pooled_output`.
    #[must_use]
    pub fn embedding(&self) -> Tensor<2> {
        self.image_embeds
            .clone()
            .unwrap_or_else(|| self.pooled_output.clone())
    }
}

/// A hook on the six target linear modules of every layer (see [`ModuleId`]).
///
/// During a forward, every target module `m` with weight `W` and bias `b` computes
/// `y = x W^T + b + delta`, where `delta = adapter.adapt(m, x)` (`None` means zero). `x` is the
/// module input `[batch, tokens, d_in]`; a returned delta must be `[batch, tokens, d_out]`.
/// q, k and v receive the same input tensor. Modules are visited in forward order
/// (layer-major, then q, k, v, out, fc1, fc2).
///
/// The crate's own forwards ([`ClipVisionModel::forward_with_inputs`],
/// [`ClipVisionModel::forward_routed`], [`ClipVisionModel::forward_gated`],
/// [`ClipVisionModel::forward_scored`]) are adapters; implement this trait for other
/// per-module behaviour.
pub trait ModuleAdapter {
    /// Observes the input of `module` and returns its additive output delta, if any.
    ///
    /// # Errors
    /// Any [`VitError`]; the forward stops and returns it.
    fn adapt(&mut self, module: ModuleId, input: &Tensor<3>)
    -> Result<Option<Tensor<3>>, VitError>;
}

/// The adapter that changes nothing (the plain forward).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAdapter;

impl ModuleAdapter for NoAdapter {
    fn adapt(&mut self, _: ModuleId, _: &Tensor<3>) -> Result<Option<Tensor<3>>, VitError> {
        Ok(None)
    }
}

/// The inputs of target modules recorded during a forward
/// ([`ClipVisionModel::forward_with_inputs`]).
///
/// q, k and v of a layer share one input (the output of `layer_norm1`); each id maps to it
/// without a copy (burn tensors are reference counted).
#[derive(Debug, Clone, Default)]
pub struct ModuleInputs {
    inputs: BTreeMap<ModuleId, Tensor<3>>,
}

impl ModuleInputs {
    /// The input `[batch, tokens, d_in]` of `module`, if it was recorded.
    #[must_use]
    pub fn get(&self, module: ModuleId) -> Option<&Tensor<3>> {
        self.inputs.get(&module)
    }

    /// Every recorded module with its input, in forward order.
    pub fn iter(&self) -> impl Iterator<Item = (ModuleId, &Tensor<3>)> {
        self.inputs.iter().map(|(k, v)| (*k, v))
    }

    /// Number of recorded modules.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether nothing was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// The input of `module` as a host tensor `[batch, tokens, d_in]` (row-major f32).
    ///
    /// # Errors
    /// [`VitError::UnknownModule`] when it was not recorded, [`VitError::Backend`] when the
    /// backend cannot read it.
    pub fn to_host(&self, module: ModuleId) -> Result<madeit_params::Tensor, VitError> {
        let t = self.inputs.get(&module).ok_or(VitError::UnknownModule {
            module,
            num_layers: self.inputs.keys().map(|m| m.layer + 1).max().unwrap_or(0),
        })?;
        crate::util::to_host(t)
    }
}

struct Recorder<'a> {
    modules: Option<&'a BTreeSet<ModuleId>>,
    out: ModuleInputs,
}

impl ModuleAdapter for Recorder<'_> {
    fn adapt(
        &mut self,
        module: ModuleId,
        input: &Tensor<3>,
    ) -> Result<Option<Tensor<3>>, VitError> {
        if self.modules.is_none_or(|m| m.contains(&module)) {
            self.out.inputs.insert(module, input.clone());
        }
        Ok(None)
    }
}

/// A CLIP vision tower (transformers' `CLIPVisionModel`, optionally with
/// `visual_projection` as in `CLIPVisionModelWithProjection` / `CLIPModel`).
///
/// Weights live on a burn [`Device`] (flex CPU by default) in a layout chosen for speed:
/// linear weights are stored transposed (`[d_in, d_out]`, so `y = x W^T` is a plain matmul)
/// and the q, k, v projections of each layer are fused into one `[d, 3d]` matrix. The
/// conversion to and from HF names and layouts happens only in
/// [`from_params`](Self::from_params) / [`to_params`](Self::to_params).
///
/// It is a burn [`Module`] whose weights are [`Param`]s: built on an autodiff device
/// (`Device::flex().autodiff()`), every weight trains under burn's optimizers unless
/// [`with_trainable`](Self::with_trainable) freezes some (the zoo's towers are trained so);
/// on any other device the parameters are plain tensors.
#[derive(Module, Debug)]
pub struct ClipVisionModel {
    #[module(skip)]
    config: ClipVisionConfig,
    #[module(skip)]
    layout: KeyLayout,
    /// Storage dtype per bare tensor name (as read; used again when saving).
    #[module(skip)]
    dtypes: BTreeMap<String, DType>,
    /// The device the weights live on.
    #[module(skip)]
    home: Device,
    /// `[C p p, d]`: the patch convolution as a matmul on flattened patches.
    patch_w: Param<Tensor<2>>,
    class_emb: Param<Tensor<1>>,
    pos_emb: Param<Tensor<2>>,
    pre_ln: Norm,
    layers: Vec<Layer>,
    post_ln: Norm,
    /// `[d, projection_dim]`.
    proj: Option<Param<Tensor<2>>>,
}

/// Which weights of a [`ClipVisionModel`] an optimizer may change
/// ([`ClipVisionModel::with_trainable`]); the others are frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainableWeights {
    /// Every weight (as the model is built).
    All,
    /// The linear weights of the encoder layers (the fused q/k/v, out_proj, fc1 and fc2
    /// matrices); the embeddings, every layer norm and every bias are frozen.
    LinearWeights,
    /// The attention weights of the encoder layers (the fused q/k/v and out_proj
    /// matrices); everything else is frozen.
    AttentionWeights,
}

/// A short description of a model, for display (`madeit inspect`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// The configuration.
    pub config: ClipVisionConfig,
    /// How names are spelled in the checkpoint it came from.
    pub layout: KeyLayout,
    /// Number of scalar parameters (projection included).
    pub num_params: usize,
    /// Number of tensors in HF layout.
    pub num_tensors: usize,
    /// Whether the model has `visual_projection`.
    pub has_projection: bool,
    /// Number of tensors per storage dtype.
    pub dtypes: BTreeMap<String, usize>,
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "CLIP vision tower: d={} mlp={} layers={} heads={} image={} patch={} channels={} act={:?}",
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.image_size,
            c.patch_size,
            c.num_channels,
            c.hidden_act
        )?;
        writeln!(
            f,
            "tokens={} projection={} layout={:?}",
            c.num_positions(),
            if self.has_projection {
                c.projection_dim.to_string()
            } else {
                "none".into()
            },
            self.layout
        )?;
        write!(
            f,
            "{} tensors, {} parameters, dtypes {:?}",
            self.num_tensors, self.num_params, self.dtypes
        )
    }
}

/// Checks HF-named tensors against a configuration without building anything: every
/// tensor of the tower present with the right shape (the projection optional), nothing
/// unexpected, every value finite. Returns the key layout and the tensors by bare name.
fn match_checkpoint<'p>(
    config: &ClipVisionConfig,
    params: &'p ParamDict,
) -> Result<(KeyLayout, BTreeMap<String, &'p madeit_params::Tensor>), VitError> {
    config.validate()?;
    let layout = if params.keys().any(|k| k.starts_with(VISION_PREFIX)) {
        KeyLayout::VisionModel
    } else {
        KeyLayout::Bare
    };
    let found = match_weights(
        params,
        layout.prefix(),
        &expected_tensors(config),
        (
            PROJECTION_WEIGHT,
            vec![config.projection_dim, config.hidden_size],
        ),
        is_ignored,
        |report| VitError::Checkpoint { report },
    )?;
    Ok((layout, found))
}

/// The tensors of `params` that a tower expects, by bare name: each name of `expected`
/// under `prefix`, plus the optional `projection` (stored without the prefix). Names that
/// `ignored` accepts are skipped; every other unknown name, missing tensor or wrong shape
/// goes into one report, turned into an error by `report_error`; a non-finite value is a
/// [`VitError::NonFiniteWeight`] naming the tensor. The vision and text loaders share it.
pub(crate) fn match_weights<'a>(
    params: &'a ParamDict,
    prefix: &str,
    expected: &[(String, Vec<usize>)],
    projection: (&str, Vec<usize>),
    ignored: fn(&str) -> bool,
    report_error: fn(CheckpointReport) -> VitError,
) -> Result<BTreeMap<String, &'a madeit_params::Tensor>, VitError> {
    let (projection_name, projection_shape) = projection;
    let full_name = |bare: &str| {
        if bare == projection_name {
            bare.to_owned()
        } else {
            format!("{prefix}{bare}")
        }
    };
    let mut wanted: BTreeMap<String, Vec<usize>> = expected.iter().cloned().collect();
    wanted.insert(projection_name.to_owned(), projection_shape);

    let mut report = CheckpointReport::default();
    let mut found: BTreeMap<String, &madeit_params::Tensor> = BTreeMap::new();
    for (name, tensor) in params.iter() {
        let bare = if name == projection_name {
            Some(name)
        } else {
            name.strip_prefix(prefix)
        };
        let Some(bare) = bare.filter(|b| wanted.contains_key(*b)) else {
            if !ignored(name) {
                report.unexpected.push(name.to_owned());
            }
            continue;
        };
        if let Some(shape) = wanted.get(bare)
            && shape.as_slice() != tensor.shape()
        {
            report.mismatched.push(ShapeMismatch {
                name: name.to_owned(),
                expected: shape.clone(),
                got: tensor.shape().to_vec(),
            });
            continue;
        }
        found.insert(bare.to_owned(), tensor);
    }
    for (bare, shape) in expected {
        let full = full_name(bare);
        if !found.contains_key(bare) && !report.mismatched.iter().any(|m| m.name == full) {
            report.missing.push((full, shape.clone()));
        }
    }
    if !report.is_clean() {
        return Err(report_error(report));
    }
    for (bare, t) in &found {
        if let Some((index, value)) = first_non_finite(t.data()) {
            return Err(VitError::NonFiniteWeight {
                name: full_name(bare),
                index,
                value,
            });
        }
    }
    Ok(found)
}

/// Checks that pixels of shape `dims` fit `config`: `[batch > 0, num_channels, image_size,
/// image_size]`.
pub(crate) fn check_pixels(config: &ClipVisionConfig, dims: [usize; 4]) -> Result<(), VitError> {
    let [b, c, h, w] = dims;
    if b == 0 || c != config.num_channels || h != config.image_size || w != config.image_size {
        return Err(VitError::InputShape {
            channels: config.num_channels,
            image_size: config.image_size,
            got: dims.to_vec(),
        });
    }
    Ok(())
}

impl ClipVisionModel {
    /// Checks HF-named tensors against `config` as [`from_params_on`](Self::from_params_on)
    /// does, without building a model or allocating anything the size of the weights: for
    /// validating checkpoints before long work starts.
    ///
    /// # Errors
    /// As [`from_params_on`](Self::from_params_on).
    pub fn check_params(config: &ClipVisionConfig, params: &ParamDict) -> Result<(), VitError> {
        config.validate()?;
        match_checkpoint(config, params).map(|_| ())
    }

    /// The tower's own tensors of a checkpoint, checked as by
    /// [`check_params`](Self::check_params), under their bare names (`embeddings.*`,
    /// `encoder.layers.*`, `pre_layrnorm.*`, `post_layernorm.*`) in the order of
    /// [`expected_tensors`], marked `F32` (the computation type: a checkpoint stored in `F16`
    /// or `BF16` is compatible with an `F32` one): a `CLIPModel`'s (its text tower,
    /// `logit_scale` and `visual_projection.weight` are left out) or a
    /// `CLIPVisionModel`'s, with or without the `vision_model.` prefix.
    ///
    /// # Errors
    /// As [`check_params`](Self::check_params).
    pub fn tower_params(
        config: &ClipVisionConfig,
        mut params: ParamDict,
    ) -> Result<ParamDict, VitError> {
        Self::check_params(config, &params)?;
        let prefixed = params.keys().any(|k| k.starts_with(VISION_PREFIX));
        let mut out = ParamDict::new();
        for (bare, shape) in expected_tensors(config) {
            let full = if prefixed {
                format!("{VISION_PREFIX}{bare}")
            } else {
                bare.clone()
            };
            let t = params.remove(&full).ok_or_else(|| VitError::Checkpoint {
                report: CheckpointReport {
                    missing: vec![(full.clone(), shape)],
                    ..CheckpointReport::default()
                },
            })?;
            out.insert(bare, t.with_dtype(DType::F32));
        }
        Ok(out)
    }

    /// Builds a model on burn's flex CPU device from HF-named tensors (see
    /// [`from_params_on`](Self::from_params_on)).
    ///
    /// # Errors
    /// As [`from_params_on`](Self::from_params_on).
    pub fn from_params(config: &ClipVisionConfig, params: &ParamDict) -> Result<Self, VitError> {
        Self::from_params_on(config, params, &Device::flex())
    }

    /// Builds a model on `device` from HF-named tensors.
    ///
    /// Accepted names: a bare `CLIPVisionModel` state dict (`embeddings.class_embedding`,
    /// ...), or `vision_model.`-prefixed names as in `CLIPModel` and
    /// `CLIPVisionModelWithProjection` files; `visual_projection.weight` (never prefixed) is
    /// optional. The buffer `embeddings.position_ids` and a full `CLIPModel`'s text tower
    /// (`text_model.*`, `text_projection.weight`, `logit_scale`) are ignored. Storage dtypes
    /// are remembered so that [`to_params`](Self::to_params) writes them back unchanged.
    ///
    /// # Errors
    /// [`VitError::InvalidConfig`] for a bad config; [`VitError::Checkpoint`] listing every
    /// missing tensor (with its expected shape), unexpected tensor and shape mismatch;
    /// [`VitError::NonFiniteWeight`] naming the first tensor holding a NaN or infinity.
    pub fn from_params_on(
        config: &ClipVisionConfig,
        params: &ParamDict,
        device: &Device,
    ) -> Result<Self, VitError> {
        let (layout, found) = match_checkpoint(config, params)?;
        let dtypes = found.iter().map(|(k, t)| (k.clone(), t.dtype())).collect();
        Builder {
            config,
            up: Uploader {
                found: &found,
                device,
                missing: |report| VitError::Checkpoint { report },
            },
        }
        .build(layout, dtypes)
    }

    /// Reads `dir/config.json` and the weights of `dir` (`model.safetensors`, or a sharded
    /// checkpoint: see [`ParamDict::load_checkpoint`]).
    ///
    /// # Errors
    /// File and parse errors naming the file, then as [`from_params`](Self::from_params).
    pub fn load_dir(dir: &Path) -> Result<Self, VitError> {
        Self::load_dir_on(dir, &Device::flex())
    }

    /// As [`load_dir`](Self::load_dir), placing the weights on `device`.
    ///
    /// # Errors
    /// As [`load_dir`](Self::load_dir).
    pub fn load_dir_on(dir: &Path, device: &Device) -> Result<Self, VitError> {
        let config = ClipVisionConfig::from_file(&dir.join(CONFIG_FILE))?;
        let params = load_weights(dir)?;
        Self::from_params_on(&config, &params, device)
    }

    /// Writes `dir/config.json` (a `CLIPVisionConfig`) and `dir/model.safetensors` (in the
    /// layout and dtypes the model was loaded with), creating `dir` if needed.
    ///
    /// # Errors
    /// [`VitError::Io`] / [`VitError::Params`] naming the file.
    pub fn save_dir(&self, dir: &Path) -> Result<(), VitError> {
        std::fs::create_dir_all(dir).map_err(|source| VitError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let cfg_path = dir.join(CONFIG_FILE);
        madeit_params::fs::write_atomic(&cfg_path, self.config.to_json_string()?.as_bytes())?;
        self.to_params()?.save(&dir.join(WEIGHTS_FILE))?;
        Ok(())
    }

    /// The weights as HF-named tensors in PyTorch layout, with the key layout (bare or
    /// `vision_model.`-prefixed) and storage dtypes of the checkpoint the model came from.
    /// `from_params(to_params())` reproduces the model exactly.
    ///
    /// # Errors
    /// [`VitError::Backend`] if a tensor cannot be read back.
    pub fn to_params(&self) -> Result<ParamDict, VitError> {
        let c = &self.config;
        let d = c.hidden_size;
        let mut host: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
        let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
            host.insert(name, (shape, data));
        };
        let cpp = c.num_channels * c.patch_size * c.patch_size;
        put(
            "embeddings.class_embedding".into(),
            vec![d],
            download(&self.class_emb.val())?,
        );
        put(
            "embeddings.patch_embedding.weight".into(),
            vec![d, c.num_channels, c.patch_size, c.patch_size],
            transpose(&download(&self.patch_w.val())?, cpp, d),
        );
        put(
            "embeddings.position_embedding.weight".into(),
            vec![c.num_positions(), d],
            download(&self.pos_emb.val())?,
        );
        let norm = |put: &mut dyn FnMut(String, Vec<usize>, Vec<f32>),
                    name: &str,
                    n: &Norm|
         -> Result<(), VitError> {
            put(format!("{name}.weight"), vec![d], download(&n.gamma.val())?);
            put(format!("{name}.bias"), vec![d], download(&n.beta.val())?);
            Ok(())
        };
        norm(&mut put, "pre_layrnorm", &self.pre_ln)?;
        norm(&mut put, "post_layernorm", &self.post_ln)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let pre = format!("encoder.layers.{l}.");
            norm(&mut put, &format!("{pre}layer_norm1"), &layer.ln1)?;
            norm(&mut put, &format!("{pre}layer_norm2"), &layer.ln2)?;
            let qkv_t = transpose(&download(&layer.qkv_w.val())?, d, 3 * d); // [3d, d]
            let qkv_b = download(&layer.qkv_b.val())?;
            for (j, kind) in [ModuleKind::Q, ModuleKind::K, ModuleKind::V]
                .into_iter()
                .enumerate()
            {
                let id = ModuleId::new(l, kind);
                let w = qkv_t.get(j * d * d..(j + 1) * d * d).unwrap_or_default();
                let b = qkv_b.get(j * d..(j + 1) * d).unwrap_or_default();
                put(id.weight_name(), vec![d, d], w.to_vec());
                put(id.bias_name(), vec![d], b.to_vec());
            }
            let lin = |put: &mut dyn FnMut(String, Vec<usize>, Vec<f32>),
                       kind: ModuleKind,
                       w: &Param<Tensor<2>>,
                       b: &Param<Tensor<1>>|
             -> Result<(), VitError> {
                let id = ModuleId::new(l, kind);
                let (d_out, d_in) = c.module_dims(kind);
                put(
                    id.weight_name(),
                    vec![d_out, d_in],
                    transpose(&download(&w.val())?, d_in, d_out),
                );
                put(id.bias_name(), vec![d_out], download(&b.val())?);
                Ok(())
            };
            lin(&mut put, ModuleKind::Out, &layer.out_w, &layer.out_b)?;
            lin(&mut put, ModuleKind::Fc1, &layer.fc1_w, &layer.fc1_b)?;
            lin(&mut put, ModuleKind::Fc2, &layer.fc2_w, &layer.fc2_b)?;
        }
        let mut names: Vec<String> = expected_tensors(c).into_iter().map(|(n, _)| n).collect();
        if let Some(p) = &self.proj {
            put(
                PROJECTION_WEIGHT.into(),
                vec![c.projection_dim, d],
                transpose(&download(&p.val())?, d, c.projection_dim),
            );
            names.push(PROJECTION_WEIGHT.into());
        }
        let mut dict = ParamDict::new();
        for bare in names {
            let Some((shape, data)) = host.remove(&bare) else {
                continue;
            };
            let dtype = self.dtypes.get(&bare).copied().unwrap_or_default();
            let t = madeit_params::Tensor::new(shape, data)
                .map_err(|e| e.in_tensor(&bare))?
                .with_dtype(dtype);
            dict.insert(self.layout.full_name(&bare), t);
        }
        Ok(dict)
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// How tensor names were spelled in the checkpoint (and will be in
    /// [`to_params`](Self::to_params)).
    #[must_use]
    pub fn layout(&self) -> KeyLayout {
        self.layout
    }

    /// Changes the key layout used by [`to_params`](Self::to_params).
    #[must_use]
    pub fn with_layout(mut self, layout: KeyLayout) -> Self {
        self.layout = layout;
        self
    }

    /// The device the weights live on.
    #[must_use]
    pub fn device(&self) -> &Device {
        &self.home
    }

    /// Whether the model has `visual_projection`.
    #[must_use]
    pub fn has_projection(&self) -> bool {
        self.proj.is_some()
    }

    /// Width of [`VisionOutput::embedding`]: `projection_dim` with a projection, else
    /// `hidden_size`.
    #[must_use]
    pub fn embedding_dim(&self) -> usize {
        if self.proj.is_some() {
            self.config.projection_dim
        } else {
            self.config.hidden_size
        }
    }

    /// The same tower with `visual_projection` set to `weight` (`[projection_dim,
    /// hidden_size]`, HF layout), replacing any it had; `projection_dim` becomes the number
    /// of rows. For vision towers saved without the projection (`CLIPVisionModel` files, such
    /// as fine-tuned checkpoints whose projection stayed frozen), with the projection of the
    /// CLIP they came from (a zero-shot head carries it:
    /// [`TaskHead::visual_projection`](crate::TaskHead::visual_projection)).
    ///
    /// # Errors
    /// [`VitError::Checkpoint`] when the shape is not `[rows, hidden_size]` with `rows > 0`;
    /// [`VitError::NonFiniteWeight`] on NaN / infinity.
    pub fn with_projection(mut self, weight: &madeit_params::Tensor) -> Result<Self, VitError> {
        let d = self.config.hidden_size;
        let rows = match *weight.shape() {
            [rows, cols] if cols == d && rows > 0 => rows,
            _ => {
                return Err(VitError::Checkpoint {
                    report: CheckpointReport {
                        mismatched: vec![ShapeMismatch {
                            name: PROJECTION_WEIGHT.to_owned(),
                            expected: vec![self.config.projection_dim, d],
                            got: weight.shape().to_vec(),
                        }],
                        ..CheckpointReport::default()
                    },
                });
            }
        };
        if let Some((index, value)) = first_non_finite(weight.data()) {
            return Err(VitError::NonFiniteWeight {
                name: PROJECTION_WEIGHT.to_owned(),
                index,
                value,
            });
        }
        self.config.projection_dim = rows;
        self.proj = Some(param(upload(
            transpose(weight.data(), rows, d),
            [d, rows],
            &self.home,
        )));
        self.dtypes
            .insert(PROJECTION_WEIGHT.to_owned(), weight.dtype());
        Ok(self)
    }

    /// A summary for display.
    #[must_use]
    pub fn summary(&self) -> ModelSummary {
        let mut shapes = expected_tensors(&self.config);
        if self.proj.is_some() {
            shapes.push((
                PROJECTION_WEIGHT.into(),
                vec![self.config.projection_dim, self.config.hidden_size],
            ));
        }
        let mut dtypes = BTreeMap::new();
        for (name, _) in &shapes {
            let dt = self.dtypes.get(name).copied().unwrap_or_default();
            *dtypes.entry(dt.to_string()).or_insert(0) += 1;
        }
        ModelSummary {
            config: self.config.clone(),
            layout: self.layout,
            num_params: shapes
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum(),
            num_tensors: shapes.len(),
            has_projection: self.proj.is_some(),
            dtypes,
        }
    }

    /// The same tower with only `weights` trainable on an autodiff device (see
    /// [`TrainableWeights`]); the others frozen. The tower is built with every weight
    /// trainable; on a device without autodiff nothing is trained either way.
    #[must_use]
    pub fn with_trainable(self, weights: TrainableWeights) -> Self {
        let mlp = match weights {
            TrainableWeights::All => return self,
            TrainableWeights::LinearWeights => true,
            TrainableWeights::AttentionWeights => false,
        };
        Self {
            patch_w: self.patch_w.set_require_grad(false),
            class_emb: self.class_emb.set_require_grad(false),
            pos_emb: self.pos_emb.set_require_grad(false),
            pre_ln: self.pre_ln.frozen(),
            layers: self
                .layers
                .into_iter()
                .map(|l| l.frozen_but_linear(mlp))
                .collect(),
            post_ln: self.post_ln.frozen(),
            proj: self.proj.map(|p| p.set_require_grad(false)),
            ..self
        }
    }

    /// Moves every weight to `device`.
    #[must_use]
    pub fn to_device(self, device: &Device) -> Self {
        Self {
            patch_w: param_to(self.patch_w, device),
            class_emb: param_to(self.class_emb, device),
            pos_emb: param_to(self.pos_emb, device),
            pre_ln: self.pre_ln.into_device(device),
            post_ln: self.post_ln.into_device(device),
            layers: self
                .layers
                .into_iter()
                .map(|l| l.into_device(device))
                .collect(),
            proj: self.proj.map(|p| param_to(p, device)),
            home: device.clone(),
            config: self.config,
            layout: self.layout,
            dtypes: self.dtypes,
        }
    }

    /// Uploads a row-major pixel buffer `[batch, channels, image_size, image_size]` (already
    /// resized and normalised) to the model's device.
    ///
    /// # Errors
    /// [`VitError::Length`] when `pixels.len()` is not `batch * C * H * W`,
    /// [`VitError::InputShape`] when `batch` is 0, [`VitError::NonFiniteInput`] on NaN/inf.
    pub fn pixels(&self, pixels: Vec<f32>, batch: usize) -> Result<Tensor<4>, VitError> {
        let c = &self.config;
        let dims = [batch, c.num_channels, c.image_size, c.image_size];
        check_pixels(c, dims)?;
        let expected = dims.iter().product::<usize>();
        if pixels.len() != expected {
            return Err(VitError::Length {
                what: format!("pixel buffer for {dims:?}"),
                expected,
                got: pixels.len(),
            });
        }
        if let Some((index, _)) = first_non_finite(&pixels) {
            return Err(VitError::NonFiniteInput {
                what: "pixel buffer".into(),
                index,
            });
        }
        Ok(upload(pixels, dims, &self.home))
    }

    /// The plain forward.
    ///
    /// `pixels`: `[batch, num_channels, image_size, image_size]`, already normalised (CLIP
    /// mean/std), on the model's device.
    ///
    /// # Errors
    /// [`VitError::InputShape`] with the expected shape when `pixels` does not fit.
    pub fn forward(&self, pixels: Tensor<4>) -> Result<VisionOutput, VitError> {
        self.run(pixels, &mut NoAdapter, true)
    }

    /// Image embeddings of a host pixel buffer, as a host tensor `[batch, embedding_dim]`
    /// ([`VisionOutput::embedding`]).
    ///
    /// # Errors
    /// As [`pixels`](Self::pixels) and [`forward`](Self::forward).
    pub fn embed(&self, pixels: Vec<f32>, batch: usize) -> Result<madeit_params::Tensor, VitError> {
        let out = self.forward(self.pixels(pixels, batch)?)?;
        crate::util::to_host(&out.embedding())
    }

    /// The plain forward that also returns the input of every target module (q, k, v,
    /// out_proj, fc1, fc2 of every layer), or of those in `modules` when given.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_with_inputs(
        &self,
        pixels: Tensor<4>,
        modules: Option<&BTreeSet<ModuleId>>,
    ) -> Result<(VisionOutput, ModuleInputs), VitError> {
        let mut rec = Recorder {
            modules,
            out: ModuleInputs::default(),
        };
        let out = self.forward_with_adapter(pixels, &mut rec)?;
        Ok((out, rec.out))
    }

    /// The forward with a [`ModuleAdapter`] hooked on every target module.
    ///
    /// # Errors
    /// [`VitError::InputShape`], any error of the adapter, and [`VitError::Routing`] when a
    /// returned delta has the wrong shape.
    pub fn forward_with_adapter(
        &self,
        pixels: Tensor<4>,
        adapter: &mut dyn ModuleAdapter,
    ) -> Result<VisionOutput, VitError> {
        self.run(pixels, adapter, false)
    }

    /// The forward; `plain` when `adapter` changes nothing ([`forward`](Self::forward)).
    fn run(
        &self,
        pixels: Tensor<4>,
        adapter: &mut dyn ModuleAdapter,
        plain: bool,
    ) -> Result<VisionOutput, VitError> {
        let c = &self.config;
        check_pixels(c, pixels.dims())?;
        let b = pixels.dims()[0];
        let d = c.hidden_size;
        let n = c.num_positions();
        let eps = c.layer_norm_eps;

        let x = blocks::embed(
            c,
            pixels,
            self.patch_w.val(),
            self.class_emb.val(),
            self.pos_emb.val(),
        );
        let mut x = self.pre_ln.forward(x, eps);

        for (l, layer) in self.layers.iter().enumerate() {
            // Self-attention block.
            let h = layer.ln1.forward(x.clone(), eps);
            let qkv = linear(h.clone(), layer.qkv_w.val(), Some(layer.qkv_b.val()));
            let mut parts = Vec::with_capacity(3);
            for (j, kind) in [ModuleKind::Q, ModuleKind::K, ModuleKind::V]
                .into_iter()
                .enumerate()
            {
                let t = qkv.clone().narrow(2, j * d, d);
                parts.push(adapted(adapter, ModuleId::new(l, kind), &h, t, [b, n, d])?);
            }
            let (Some(v), Some(k), Some(q)) = (parts.pop(), parts.pop(), parts.pop()) else {
                unreachable_parts()?
            };
            let a = blocks::self_attention(c, q, k, v);
            let o = linear(a.clone(), layer.out_w.val(), Some(layer.out_b.val()));
            x = x + adapted(adapter, ModuleId::new(l, ModuleKind::Out), &a, o, [b, n, d])?;

            // MLP block.
            let h = layer.ln2.forward(x.clone(), eps);
            let f = if plain && h.is_autodiff() {
                // Training (no adapter, on an autodiff device): the bias added inside
                // `linear`, whose bias gradient burn reduces in its own order (the zoo's
                // towers were trained so; the forward values are the same either way).
                let f = linear(h, layer.fc1_w.val(), Some(layer.fc1_b.val()));
                blocks::act(c.hidden_act, f)
            } else {
                let f = linear(h.clone(), layer.fc1_w.val(), None);
                let fc1 = ModuleId::new(l, ModuleKind::Fc1);
                let f = adapted(adapter, fc1, &h, f, [b, n, c.intermediate_size])?;
                bias_act(c.hidden_act, f, &layer.fc1_b.val())?
            };
            let o = linear(f.clone(), layer.fc2_w.val(), Some(layer.fc2_b.val()));
            x = x + adapted(adapter, ModuleId::new(l, ModuleKind::Fc2), &f, o, [b, n, d])?;
        }

        let pooled = self.post_ln.forward(blocks::class_token(x.clone()), eps);
        let image_embeds = self.proj.as_ref().map(|w| pooled.clone().matmul(w.val()));
        Ok(VisionOutput {
            last_hidden_state: x,
            pooled_output: pooled,
            image_embeds,
        })
    }
}

/// The error for a q/k/v split that did not give three parts (it always does).
pub(crate) fn unreachable_parts<T>() -> Result<T, VitError> {
    Err(VitError::Backend {
        message: "internal: q/k/v split produced fewer than three parts".into(),
    })
}

/// `output` of target `module` plus the delta `adapter` returns for its `input`, checked to
/// be of the `expected` shape.
fn adapted(
    adapter: &mut dyn ModuleAdapter,
    module: ModuleId,
    input: &Tensor<3>,
    output: Tensor<3>,
    expected: [usize; 3],
) -> Result<Tensor<3>, VitError> {
    let Some(delta) = adapter.adapt(module, input)? else {
        return Ok(output);
    };
    if delta.dims() != expected {
        return Err(VitError::Routing {
            module,
            reason: format!(
                "adapter returned a delta of shape {:?}, expected {expected:?}",
                delta.dims()
            ),
        });
    }
    Ok(output + delta)
}

/// `act(x + bias)`: the fused host kernel for quick-GELU on tensors without autodiff,
/// burn ops otherwise.
pub(crate) fn bias_act<const D: usize>(
    kind: Activation,
    x: Tensor<D>,
    bias: &Tensor<1>,
) -> Result<Tensor<D>, VitError> {
    let x = if kind == Activation::QuickGelu && crate::kernels::runs_on(&x) {
        match crate::kernels::quick_gelu_bias(x, &download(bias)?)? {
            Ok(y) => return Ok(y),
            Err(x) => x,
        }
    } else {
        x
    };
    let bias = bias.clone().unsqueeze::<D>();
    Ok(blocks::act(kind, x + bias))
}

struct Builder<'a> {
    config: &'a ClipVisionConfig,
    up: Uploader<'a>,
}

impl Builder<'_> {
    fn build(
        self,
        layout: KeyLayout,
        dtypes: BTreeMap<String, DType>,
    ) -> Result<ClipVisionModel, VitError> {
        let (c, up) = (self.config, &self.up);
        let d = c.hidden_size;
        let cpp = c.num_channels * c.patch_size * c.patch_size;
        let layers = up.layers(c.num_hidden_layers, d, c.intermediate_size)?;
        let proj = up.optional_linear_t(PROJECTION_WEIGHT, c.projection_dim, d)?;
        Ok(ClipVisionModel {
            config: c.clone(),
            layout,
            dtypes,
            home: up.device.clone(),
            patch_w: param(up.linear_t("embeddings.patch_embedding.weight", d, cpp)?),
            class_emb: param(up.vec1("embeddings.class_embedding")?),
            pos_emb: param(up.mat("embeddings.position_embedding.weight", c.num_positions(), d)?),
            pre_ln: up.norm("pre_layrnorm")?,
            layers,
            post_ln: up.norm("post_layernorm")?,
            proj: proj.map(param),
        })
    }
}
