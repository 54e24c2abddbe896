//! The CLIP text transformer: weights in HF layout and the causal forward.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int};
use madeit_params::ParamDict;

use crate::VitError;
use crate::encoder::{Layer, Norm, Uploader};
use crate::model::{CONFIG_FILE, bias_act, load_weights, match_weights};
use crate::text_config::{ClipTextConfig, PoolingRule};

/// The prefix of text-tower tensors in `CLIPModel` and `CLIPTextModelWithProjection`
/// checkpoints.
pub const TEXT_PREFIX: &str = "text_model.";

/// Name of the text projection weight (`[projection_dim, hidden_size]`, no bias); never
/// prefixed.
pub const TEXT_PROJECTION_WEIGHT: &str = "text_projection.weight";

/// Name of CLIP's logit scale in a `CLIPModel` checkpoint: a scalar holding the logarithm
/// of the factor that multiplies cosine similarities.
pub const LOGIT_SCALE_KEY: &str = "logit_scale";

/// How text-tower tensor names are spelled in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextKeyLayout {
    /// Bare names (`embeddings.token_embedding.weight`, ...), as transformers 5 saves a
    /// standalone `CLIPTextModel`.
    #[default]
    Bare,
    /// `text_model.`-prefixed names, as in `CLIPModel` and `CLIPTextModelWithProjection`
    /// checkpoints.
    TextModel,
}

impl TextKeyLayout {
    /// The prefix of text-tower tensors (`""` or `"text_model."`).
    #[must_use]
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Bare => "",
            Self::TextModel => TEXT_PREFIX,
        }
    }

    /// The checkpoint name of a bare text-tower name (the projection is never prefixed).
    #[must_use]
    pub fn full_name(self, bare: &str) -> String {
        crate::names::prefixed_name(self.prefix(), TEXT_PROJECTION_WEIGHT, bare)
    }
}

/// Every tensor of the text tower (without `text_projection`) as `(bare name, shape)`, in
/// the order transformers writes them.
#[must_use]
pub fn expected_text_tensors(config: &ClipTextConfig) -> Vec<(String, Vec<usize>)> {
    let d = config.hidden_size;
    let i = config.intermediate_size;
    let mut out = vec![
        (
            "embeddings.token_embedding.weight".to_owned(),
            vec![config.vocab_size, d],
        ),
        (
            "embeddings.position_embedding.weight".to_owned(),
            vec![config.max_position_embeddings, d],
        ),
    ];
    crate::names::push_encoder_layers(&mut out, config.num_hidden_layers, d, i);
    out.push(("final_layer_norm.weight".to_owned(), vec![d]));
    out.push(("final_layer_norm.bias".to_owned(), vec![d]));
    out
}

/// Tensors a text checkpoint may carry that are not weights of the text tower.
fn is_ignored(name: &str) -> bool {
    name == "embeddings.position_ids"
        || name == "text_model.embeddings.position_ids"
        || name.starts_with("vision_model.")
        || name == "visual_projection.weight"
        || name == LOGIT_SCALE_KEY
}

/// A batch of token sequences padded to one length, with its attention mask.
///
/// Row-major `[batch, len]`; `mask[i] == false` marks a padding position, which no token
/// attends to (as transformers' `attention_mask == 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBatch {
    ids: Vec<u32>,
    mask: Vec<bool>,
    batch: usize,
    len: usize,
}

impl TextBatch {
    /// Pads sequences on the right with `pad_id` to the longest one (as transformers'
    /// `padding=True`).
    ///
    /// # Errors
    /// [`VitError::TextInput`] for an empty batch or an empty sequence.
    pub fn pad(sequences: &[Vec<u32>], pad_id: u32) -> Result<Self, VitError> {
        let len = sequences.iter().map(Vec::len).max().unwrap_or(0);
        if sequences.is_empty() || sequences.iter().any(Vec::is_empty) {
            return Err(VitError::TextInput {
                reason: "a text batch needs at least one non-empty token sequence".into(),
            });
        }
        let mut ids = Vec::with_capacity(sequences.len() * len);
        let mut mask = Vec::with_capacity(sequences.len() * len);
        for s in sequences {
            ids.extend_from_slice(s);
            ids.resize(ids.len() + len - s.len(), pad_id);
            mask.extend(std::iter::repeat_n(true, s.len()));
            mask.extend(std::iter::repeat_n(false, len - s.len()));
        }
        Ok(Self {
            ids,
            mask,
            batch: sequences.len(),
            len,
        })
    }

    /// A padded batch as given: `ids` and `mask` row-major `[batch, len]`.
    ///
    /// # Errors
    /// [`VitError::Length`] when a buffer is not `batch * len` long; [`VitError::TextInput`]
    /// when `batch` or `len` is 0 or a row masks its first position (no token could attend
    /// to anything).
    pub fn new(ids: Vec<u32>, mask: Vec<bool>, batch: usize, len: usize) -> Result<Self, VitError> {
        let n = batch.checked_mul(len).ok_or_else(|| VitError::TextInput {
            reason: format!("batch {batch} x length {len} overflows"),
        })?;
        for (what, got) in [("token ids", ids.len()), ("attention mask", mask.len())] {
            if got != n {
                return Err(VitError::Length {
                    what: format!("{what} for [{batch}, {len}]"),
                    expected: n,
                    got,
                });
            }
        }
        if n == 0 {
            return Err(VitError::TextInput {
                reason: format!("empty text batch [{batch}, {len}]"),
            });
        }
        if let Some(row) = mask.chunks_exact(len).position(|r| !r[0]) {
            return Err(VitError::TextInput {
                reason: format!("row {row} of the attention mask masks its first position"),
            });
        }
        Ok(Self {
            ids,
            mask,
            batch,
            len,
        })
    }

    /// Number of sequences.
    #[must_use]
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Padded length.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch is empty (never, for a constructed batch).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.batch == 0 || self.len == 0
    }

    /// Token ids, row-major `[batch, len]`.
    #[must_use]
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Attention mask, row-major `[batch, len]` (`false`: padding).
    #[must_use]
    pub fn mask(&self) -> &[bool] {
        &self.mask
    }

    /// The position each row is pooled at under `rule` (transformers' `CLIPTextModel`,
    /// applied to the padded ids).
    #[must_use]
    pub fn pool_positions(&self, rule: PoolingRule) -> Vec<usize> {
        self.ids
            .chunks_exact(self.len.max(1))
            .map(|row| match rule {
                // argmax, first index on ties (torch.argmax).
                PoolingRule::LargestId => {
                    row.iter()
                        .enumerate()
                        .fold((0, None::<u32>), |best, (i, &v)| match best.1 {
                            Some(b) if v <= b => best,
                            _ => (i, Some(v)),
                        })
                        .0
                }
                PoolingRule::FirstEos(eos) => {
                    row.iter().position(|&v| i64::from(v) == eos).unwrap_or(0)
                }
            })
            .collect()
    }
}

/// Outputs of a text forward (the names of transformers' `CLIPTextModelOutput`).
#[derive(Debug, Clone)]
pub struct TextOutput {
    /// `final_layer_norm` of the encoder output, `[batch, len, hidden_size]`.
    pub last_hidden_state: Tensor<3>,
    /// The row of `last_hidden_state` at each sequence's pooling position, `[batch,
    /// hidden_size]`.
    pub pooled_output: Tensor<2>,
    /// `pooled_output text_projection^T`, `[batch, projection_dim]`; `None` when the
    /// checkpoint has no `text_projection.weight`.
    pub text_embeds: Option<Tensor<2>>,
    /// The pooling position of every sequence.
    pub pool_positions: Vec<usize>,
}

/// A CLIP text tower (transformers' `CLIPTextModel`, optionally with `text_projection` as in
/// `CLIPTextModelWithProjection` / `CLIPModel`).
///
/// ```text
/// x = E_tok[ids] + E_pos[0..len]
/// per layer: x = x + Attn(LN_1(x)) with a causal mask and the padding mask;
///            x = x + fc2(act(fc1(LN_2(x))))
/// last_hidden_state = LN_final(x)
/// pooled_output     = last_hidden_state[pooling position]        (see PoolingRule)
/// text_embeds       = pooled_output W_proj^T
/// ```
///
/// Weights are stored as in [`ClipVisionModel`](crate::ClipVisionModel): linear weights
/// transposed, q, k, v fused. The tower is read-only: it is built from a [`ParamDict`]
/// (the same loader as the vision tower) and never written back.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    layout: TextKeyLayout,
    device: Device,
    /// `[vocab, d]`.
    tok_emb: Tensor<2>,
    /// `[positions, d]`.
    pos_emb: Tensor<2>,
    layers: Vec<Layer>,
    final_ln: Norm,
    /// `[d, projection_dim]`.
    proj: Option<Tensor<2>>,
}

impl ClipTextModel {
    /// Builds a text tower on burn's flex CPU device (see
    /// [`from_params_on`](Self::from_params_on)).
    ///
    /// # Errors
    /// As [`from_params_on`](Self::from_params_on).
    pub fn from_params(config: &ClipTextConfig, params: &ParamDict) -> Result<Self, VitError> {
        Self::from_params_on(config, params, &Device::flex())
    }

    /// Builds a text tower on `device` from HF-named tensors: a `CLIPModel` or
    /// `CLIPTextModelWithProjection` state dict (`text_model.`-prefixed, plus
    /// `text_projection.weight`), or a bare `CLIPTextModel` one. The vision tower,
    /// `visual_projection.weight`, `logit_scale` and `position_ids` buffers are ignored.
    ///
    /// # Errors
    /// [`VitError::InvalidTextConfig`] for a bad config; [`VitError::NoTextTower`] when the
    /// tensors hold no text tower at all (a vision-only checkpoint);
    /// [`VitError::TextCheckpoint`] listing every missing, unexpected and mis-shaped tensor;
    /// [`VitError::NonFiniteWeight`] naming the first tensor holding a NaN or infinity.
    pub fn from_params_on(
        config: &ClipTextConfig,
        params: &ParamDict,
        device: &Device,
    ) -> Result<Self, VitError> {
        config.validate()?;
        let layout = if params.keys().any(|k| k.starts_with(TEXT_PREFIX)) {
            TextKeyLayout::TextModel
        } else {
            TextKeyLayout::Bare
        };
        let has_text = layout == TextKeyLayout::TextModel
            || params.contains(TEXT_PROJECTION_WEIGHT)
            || params.contains("embeddings.token_embedding.weight");
        if !has_text {
            return Err(VitError::NoTextTower {
                path: None,
                reason: format!(
                    "the weights have no `{}` (a vision-only checkpoint?)",
                    TextKeyLayout::TextModel.full_name("embeddings.token_embedding.weight")
                ),
            });
        }
        let found = match_weights(
            params,
            layout.prefix(),
            &expected_text_tensors(config),
            (
                TEXT_PROJECTION_WEIGHT,
                vec![config.projection_dim, config.hidden_size],
            ),
            is_ignored,
            |report| VitError::TextCheckpoint { report },
        )?;
        Builder {
            config,
            up: Uploader {
                found: &found,
                device,
                missing: |report| VitError::TextCheckpoint { report },
            },
        }
        .build(layout)
    }

    /// Reads the text tower of a model folder: `dir/config.json` (a `CLIPConfig` with a
    /// `text_config`, or a `CLIPTextConfig`) and its weights (through the same loader as
    /// [`ClipVisionModel::load_dir`](crate::ClipVisionModel::load_dir)).
    ///
    /// # Errors
    /// [`VitError::NoTextTower`] naming the folder when it holds a vision-only checkpoint;
    /// file and parse errors naming the file; then as [`from_params`](Self::from_params).
    pub fn load_dir(dir: &Path) -> Result<Self, VitError> {
        let config =
            ClipTextConfig::from_file(&dir.join(CONFIG_FILE)).map_err(|e| e.in_folder(dir))?;
        let params = load_weights(dir)?;
        Self::from_params(&config, &params).map_err(|e| e.in_folder(dir))
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// How tensor names were spelled in the checkpoint.
    #[must_use]
    pub fn layout(&self) -> TextKeyLayout {
        self.layout
    }

    /// The device the weights live on.
    #[must_use]
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the model has `text_projection`.
    #[must_use]
    pub fn has_projection(&self) -> bool {
        self.proj.is_some()
    }

    /// Width of [`text_embeddings`](Self::text_embeddings): `projection_dim` with a
    /// projection, else `hidden_size`.
    #[must_use]
    pub fn embedding_dim(&self) -> usize {
        if self.proj.is_some() {
            self.config.projection_dim
        } else {
            self.config.hidden_size
        }
    }

    /// The forward on a padded batch.
    ///
    /// # Errors
    /// [`VitError::TextInput`] when the batch is longer than `max_position_embeddings` or
    /// holds a token id outside the vocabulary.
    pub fn forward(&self, batch: &TextBatch) -> Result<TextOutput, VitError> {
        let c = &self.config;
        let (b, l) = (batch.batch(), batch.len());
        let d = c.hidden_size;
        let heads = c.num_attention_heads;
        let dh = c.head_dim();
        let eps = c.layer_norm_eps;
        if l > c.max_position_embeddings {
            return Err(VitError::TextInput {
                reason: format!(
                    "sequences of {l} tokens, the text tower has {} positions",
                    c.max_position_embeddings
                ),
            });
        }
        if let Some(bad) = batch.ids().iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(VitError::TextInput {
                reason: format!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    c.vocab_size
                ),
            });
        }
        let ids: Vec<i64> = batch.ids().iter().map(|&i| i64::from(i)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [b * l]), &self.device);
        let x = self.tok_emb.clone().select(0, ids).reshape([b, l, d]);
        let mut x = x + self.pos_emb.clone().narrow(0, 0, l).unsqueeze::<3>();

        // Without padding the causal option of the attention kernel is the whole mask;
        // otherwise an explicit mask (true = masked): later positions and padding keys.
        let padded = batch.mask().iter().any(|m| !m);
        let mask = padded.then(|| {
            let mut masked = Vec::with_capacity(b * heads * l * l);
            for row in batch.mask().chunks_exact(l) {
                let mut one = Vec::with_capacity(l * l);
                for i in 0..l {
                    one.extend((0..l).map(|j| j > i || !row[j]));
                }
                for _ in 0..heads {
                    masked.extend_from_slice(&one);
                }
            }
            Tensor::<4, Bool>::from_data(TensorData::new(masked, [b, heads, l, l]), &self.device)
        });
        let opts = AttentionModuleOptions {
            is_causal: !padded,
            ..AttentionModuleOptions::default()
        };
        for layer in &self.layers {
            let h = layer.ln1.forward(x.clone(), eps);
            let qkv = linear(h, layer.qkv_w.val(), Some(layer.qkv_b.val()));
            let split = |j: usize| {
                qkv.clone()
                    .narrow(2, j * d, d)
                    .reshape([b, l, heads, dh])
                    .swap_dims(1, 2)
            };
            let a = attention(split(0), split(1), split(2), mask.clone(), None, opts)
                .swap_dims(1, 2)
                .reshape([b, l, d]);
            x = x + linear(a, layer.out_w.val(), Some(layer.out_b.val()));
            let h = layer.ln2.forward(x.clone(), eps);
            let f = bias_act(
                c.hidden_act,
                linear(h, layer.fc1_w.val(), None),
                &layer.fc1_b.val(),
            )?;
            x = x + linear(f, layer.fc2_w.val(), Some(layer.fc2_b.val()));
        }
        let x = self.final_ln.forward(x, eps);
        let pool_positions = batch.pool_positions(c.pooling_rule());
        let rows: Vec<i64> = pool_positions
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * l + p) as i64)
            .collect();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &self.device);
        let pooled = x.clone().reshape([b * l, d]).select(0, rows);
        let text_embeds = self.proj.as_ref().map(|w| pooled.clone().matmul(w.clone()));
        Ok(TextOutput {
            last_hidden_state: x,
            pooled_output: pooled,
            text_embeds,
            pool_positions,
        })
    }

    /// Text embeddings of token sequences (padded with `pad_id` and run `batch_size` at a
    /// time), as a host tensor `[n, embedding_dim]`: `text_embeds` with a projection,
    /// otherwise `pooled_output`.
    ///
    /// # Errors
    /// [`VitError::TextInput`] for an empty list, an empty sequence or `batch_size == 0`;
    /// as [`forward`](Self::forward).
    pub fn text_embeddings(
        &self,
        sequences: &[Vec<u32>],
        pad_id: u32,
        batch_size: usize,
    ) -> Result<madeit_params::Tensor, VitError> {
        if batch_size == 0 || sequences.is_empty() {
            return Err(VitError::TextInput {
                reason: "text embeddings need at least one sequence and a batch size of at least 1"
                    .into(),
            });
        }
        let e = self.embedding_dim();
        let mut data = Vec::with_capacity(sequences.len() * e);
        for chunk in sequences.chunks(batch_size) {
            let out = self.forward(&TextBatch::pad(chunk, pad_id)?)?;
            let t = out.text_embeds.unwrap_or(out.pooled_output);
            data.extend(crate::util::download(&t)?);
        }
        Ok(madeit_params::Tensor::new(vec![sequences.len(), e], data)?)
    }
}

struct Builder<'a> {
    config: &'a ClipTextConfig,
    up: Uploader<'a>,
}

impl Builder<'_> {
    fn build(self, layout: TextKeyLayout) -> Result<ClipTextModel, VitError> {
        let (c, up) = (self.config, &self.up);
        let d = c.hidden_size;
        let layers = up.layers(c.num_hidden_layers, d, c.intermediate_size)?;
        let proj = up.optional_linear_t(TEXT_PROJECTION_WEIGHT, c.projection_dim, d)?;
        Ok(ClipTextModel {
            config: c.clone(),
            layout,
            device: up.device.clone(),
            tok_emb: up.mat("embeddings.token_embedding.weight", c.vocab_size, d)?,
            pos_emb: up.mat(
                "embeddings.position_embedding.weight",
                c.max_position_embeddings,
                d,
            )?,
            layers,
            final_ln: up.norm("final_layer_norm")?,
            proj,
        })
    }
}
