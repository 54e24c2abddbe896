//! Task heads: fixed class-embedding matrices, cosine logits and accuracy.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use madeit_params::ParamDict;

use crate::VitError;
use crate::util::{download, first_non_finite, upload};

/// CLIP's logit scale: logits are `100 cos(image embedding, class embedding)`, the scale of
/// every head that does not carry its own (a trained CLIP's `logit_scale.exp()` is 100).
pub const LOGIT_SCALE: f32 = 100.0;

/// Key of the head matrix in a head file.
pub const HEAD_WEIGHT_KEY: &str = "head.weight";

/// Key of the optional logit scale in a head file: a scalar holding its logarithm, as
/// CLIP's `logit_scale` parameter (logits are multiplied by its exponential).
pub const HEAD_LOGIT_SCALE_KEY: &str = "logit_scale";

/// Key of the optional image projection in a head file (`[dim, vision hidden_size]`, the
/// `visual_projection.weight` of the CLIP the head was made with).
pub const HEAD_PROJECTION_KEY: &str = "visual_projection.weight";

/// Metadata key holding the prompt templates (a JSON array of strings) in a head file.
pub const TEMPLATES_KEY: &str = "templates";

/// Metadata key holding the class names (a JSON array of strings) in a head file.
pub const CLASS_NAMES_KEY: &str = "class_names";

/// Metadata key holding the task name in a head file.
pub const TASK_KEY: &str = "task";

/// The fixed classification head of one task: a `[classes, dim]` matrix `H` of unit rows
/// (for CLIP, the normalised text embeddings of the class prompts, see
/// [`zero_shot_head`](crate::zero_shot_head)) and a logit scale `s`.
///
/// `logits = s * (e / ||e||) H^T` for an image embedding `e`; predictions are the argmax
/// over the task's own classes. `s` is [`LOGIT_SCALE`] (100) unless the head carries
/// CLIP's `logit_scale` (then `s = exp(logit_scale)`, as CLIP computes it).
///
/// File format (safetensors): tensor `head.weight` `[classes, dim]` (F32, F16 or BF16);
/// optional tensors `logit_scale` (a scalar, the logarithm of `s`) and
/// `visual_projection.weight` (`[dim, d]`, the image projection of the CLIP the head was
/// made with, for vision towers saved without one, see
/// [`ClipVisionModel::with_projection`](crate::ClipVisionModel::with_projection));
/// metadata `task` (the name), `class_names` and `templates` (JSON arrays), all optional.
/// Files are written atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskHead {
    name: String,
    classes: usize,
    dim: usize,
    weight: Vec<f32>,
    class_names: Vec<String>,
    /// CLIP's `logit_scale` (a logarithm); `None`: [`LOGIT_SCALE`].
    logit_scale: Option<f32>,
    /// `[dim, d]`.
    projection: Option<madeit_params::Tensor>,
    templates: Vec<String>,
}

impl TaskHead {
    /// A head from a `[classes, dim]` host tensor; rows are normalised to unit length.
    /// `class_names` is empty or has one name per class.
    ///
    /// # Errors
    /// [`VitError::Head`] for a non-matrix, an empty matrix, a zero row or a wrong number of
    /// class names; [`VitError::NonFiniteInput`] on NaN / infinity.
    pub fn new(
        name: impl Into<String>,
        weight: &madeit_params::Tensor,
        class_names: Vec<String>,
    ) -> Result<Self, VitError> {
        let name = name.into();
        let err = |reason: String| VitError::Head {
            head: name.clone(),
            reason,
        };
        let [classes, dim] = *weight.shape() else {
            return Err(err(format!(
                "weight must be [classes, dim], got shape {:?}",
                weight.shape()
            )));
        };
        if classes == 0 || dim == 0 {
            return Err(err(format!("empty head matrix [{classes}, {dim}]")));
        }
        if !class_names.is_empty() && class_names.len() != classes {
            return Err(err(format!(
                "{} class names for {classes} classes",
                class_names.len()
            )));
        }
        if let Some((index, _)) = first_non_finite(weight.data()) {
            return Err(VitError::NonFiniteInput {
                what: format!("head `{name}`"),
                index,
            });
        }
        let mut data = weight.data().to_vec();
        for (c, row) in data.chunks_exact_mut(dim).enumerate() {
            let norm = row
                .iter()
                .map(|x| f64::from(*x) * f64::from(*x))
                .sum::<f64>()
                .sqrt();
            if norm == 0.0 {
                return Err(err(format!("row {c} is zero")));
            }
            for x in row {
                *x = (f64::from(*x) / norm) as f32;
            }
        }
        Ok(Self {
            name,
            classes,
            dim,
            weight: data,
            class_names,
            logit_scale: None,
            projection: None,
            templates: Vec::new(),
        })
    }

    /// The same head with CLIP's `logit_scale` (the logarithm of the factor on cosine
    /// similarities; a `CLIPModel` checkpoint's `logit_scale` tensor).
    ///
    /// # Errors
    /// [`VitError::LogitScale`] when it or its exponential is not finite.
    pub fn with_logit_scale(mut self, logit_scale: f32) -> Result<Self, VitError> {
        if !(logit_scale.is_finite() && logit_scale.exp().is_finite()) {
            return Err(VitError::LogitScale {
                path: None,
                reason: format!(
                    "head `{}`: logit_scale {logit_scale} is not usable",
                    self.name
                ),
            });
        }
        self.logit_scale = Some(logit_scale);
        Ok(self)
    }

    /// The same head carrying an image projection `[dim, d]` (a CLIP's
    /// `visual_projection.weight`), for vision towers saved without one.
    ///
    /// # Errors
    /// [`VitError::Head`] when the shape is not `[dim, d]`; [`VitError::NonFiniteInput`] on
    /// NaN / infinity.
    pub fn with_visual_projection(
        mut self,
        projection: madeit_params::Tensor,
    ) -> Result<Self, VitError> {
        match *projection.shape() {
            [rows, cols] if rows == self.dim && cols > 0 => {}
            _ => {
                return Err(VitError::Head {
                    head: self.name.clone(),
                    reason: format!(
                        "visual projection of shape {:?}, expected [{}, d]",
                        projection.shape(),
                        self.dim
                    ),
                });
            }
        }
        if let Some((index, _)) = first_non_finite(projection.data()) {
            return Err(VitError::NonFiniteInput {
                what: format!("visual projection of head `{}`", self.name),
                index,
            });
        }
        self.projection = Some(projection);
        Ok(self)
    }

    /// The same head recording the prompt templates it was made with (metadata only).
    #[must_use]
    pub fn with_templates(mut self, templates: Vec<String>) -> Self {
        self.templates = templates;
        self
    }

    /// Reads a head file (see the type docs). The name is the `task` metadata, or the file
    /// stem.
    ///
    /// # Errors
    /// File errors naming the file; [`VitError::Head`] when `head.weight` is missing or the
    /// metadata is malformed; then as [`new`](Self::new).
    pub fn load(path: &Path) -> Result<Self, VitError> {
        let (dict, meta) = ParamDict::load_with_metadata(path)?;
        let meta = meta.unwrap_or_default();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let err = |reason: String| VitError::Head {
            head: path.display().to_string(),
            reason,
        };
        let name = meta.get(TASK_KEY).cloned().unwrap_or(stem);
        // A JSON string list in the metadata (empty when the key is absent).
        let string_list = |key: &str| match meta.get(key) {
            Some(text) => serde_json::from_str::<Vec<String>>(text)
                .map_err(|e| err(format!("`{key}` metadata is not a JSON string list: {e}"))),
            None => Ok(Vec::new()),
        };
        let class_names = string_list(CLASS_NAMES_KEY)?;
        let templates = string_list(TEMPLATES_KEY)?;
        let weight = dict
            .get(HEAD_WEIGHT_KEY)
            .map_err(|_| err(format!("no `{HEAD_WEIGHT_KEY}` tensor")))?;
        let mut head = Self::new(name, weight, class_names)?.with_templates(templates);
        if let Ok(scale) = dict.get(HEAD_LOGIT_SCALE_KEY) {
            let [value] = scale.data() else {
                return Err(err(format!(
                    "`{HEAD_LOGIT_SCALE_KEY}` must hold one value, it has shape {:?}",
                    scale.shape()
                )));
            };
            head = head.with_logit_scale(*value).map_err(|e| match e {
                VitError::LogitScale { reason, .. } => VitError::LogitScale {
                    path: Some(path.to_path_buf()),
                    reason,
                },
                other => other,
            })?;
        }
        if let Ok(projection) = dict.get(HEAD_PROJECTION_KEY) {
            head = head.with_visual_projection(projection.clone())?;
        }
        Ok(head)
    }

    /// Writes the head as an F32 safetensors file (atomically: a temporary file renamed over
    /// `path`) with its `task`, `class_names` and `templates` metadata, its logit scale and
    /// image projection when it has them.
    ///
    /// # Errors
    /// [`VitError::Params`] naming the file.
    pub fn save(&self, path: &Path) -> Result<(), VitError> {
        let head_err = |reason: String| VitError::Head {
            head: self.name.clone(),
            reason,
        };
        let mut dict = ParamDict::new();
        dict.insert(
            HEAD_WEIGHT_KEY,
            madeit_params::Tensor::new(vec![self.classes, self.dim], self.weight.clone())?,
        );
        if let Some(s) = self.logit_scale {
            dict.insert(
                HEAD_LOGIT_SCALE_KEY,
                madeit_params::Tensor::new(vec![], vec![s])?,
            );
        }
        if let Some(p) = &self.projection {
            dict.insert(
                HEAD_PROJECTION_KEY,
                p.clone().with_dtype(madeit_params::DType::F32),
            );
        }
        let mut meta = madeit_params::Metadata::new();
        meta.insert(TASK_KEY.to_owned(), self.name.clone());
        if !self.class_names.is_empty() {
            let names =
                serde_json::to_string(&self.class_names).map_err(|e| head_err(e.to_string()))?;
            meta.insert(CLASS_NAMES_KEY.to_owned(), names);
        }
        if !self.templates.is_empty() {
            let t = serde_json::to_string(&self.templates).map_err(|e| head_err(e.to_string()))?;
            meta.insert(TEMPLATES_KEY.to_owned(), t);
        }
        dict.save_with_metadata(path, &meta)?;
        Ok(())
    }

    /// Task name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of classes.
    #[must_use]
    pub fn num_classes(&self) -> usize {
        self.classes
    }

    /// Embedding dimension.
    #[must_use]
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Class names (empty when the head has none).
    #[must_use]
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The factor on cosine similarities: `exp(logit_scale)` for a head that carries CLIP's
    /// logit scale, else [`LOGIT_SCALE`].
    #[must_use]
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale.map_or(LOGIT_SCALE, f32::exp)
    }

    /// CLIP's `logit_scale` (the logarithm of [`logit_scale`](Self::logit_scale)), when the
    /// head carries one.
    #[must_use]
    pub fn log_logit_scale(&self) -> Option<f32> {
        self.logit_scale
    }

    /// The image projection `[dim, d]` the head carries, if any.
    #[must_use]
    pub fn visual_projection(&self) -> Option<&madeit_params::Tensor> {
        self.projection.as_ref()
    }

    /// The prompt templates the head was made with (empty when unknown).
    #[must_use]
    pub fn templates(&self) -> &[String] {
        &self.templates
    }

    /// The unit-row matrix, row-major `[classes, dim]`.
    #[must_use]
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    fn check_dim(&self, got: usize) -> Result<(), VitError> {
        if got != self.dim {
            return Err(VitError::Head {
                head: self.name.clone(),
                reason: format!("embedding dimension {got}, the head expects {}", self.dim),
            });
        }
        Ok(())
    }

    /// Logits `[batch, classes] = s * normalize(embeds) H^T` for embeddings
    /// `[batch, dim]`, on the embeddings' device (differentiable); `s` is
    /// [`logit_scale`](Self::logit_scale).
    ///
    /// # Errors
    /// [`VitError::Head`] when `dim` differs.
    pub fn logits(&self, embeds: Tensor<2>) -> Result<Tensor<2>, VitError> {
        self.check_dim(embeds.dims()[1])?;
        let device = embeds.device().without_autodiff();
        let h = upload(self.weight.clone(), [self.classes, self.dim], &device);
        let norm = embeds.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
        Ok((embeds / norm).matmul(h.transpose()) * self.logit_scale())
    }

    /// Predicted class of every embedding (argmax of the logits).
    ///
    /// # Errors
    /// As [`logits`](Self::logits); [`VitError::Backend`] on read failure.
    pub fn predict(&self, embeds: Tensor<2>) -> Result<Vec<usize>, VitError> {
        let logits = download(&self.logits(embeds)?)?;
        Ok(logits
            .chunks_exact(self.classes)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, v)| {
                        if *v > best.1 { (i, *v) } else { best }
                    })
                    .0
            })
            .collect())
    }

    /// Fraction of embeddings whose prediction equals the label.
    ///
    /// # Errors
    /// [`VitError::Head`] when the number of labels differs from the batch or a label is not
    /// a class of this task; as [`predict`](Self::predict).
    pub fn accuracy(&self, embeds: Tensor<2>, labels: &[usize]) -> Result<f64, VitError> {
        let batch = embeds.dims()[0];
        if labels.len() != batch {
            return Err(VitError::Head {
                head: self.name.clone(),
                reason: format!("{} labels for {batch} embeddings", labels.len()),
            });
        }
        if let Some(l) = labels.iter().find(|l| **l >= self.classes) {
            return Err(VitError::Head {
                head: self.name.clone(),
                reason: format!("label {l} out of range for {} classes", self.classes),
            });
        }
        if batch == 0 {
            return Ok(0.0);
        }
        let pred = self.predict(embeds)?;
        let correct = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
        Ok(correct as f64 / batch as f64)
    }
}

/// MINGLE's test-time adaptation loss: the cross-entropy of the student's tempered
/// distribution against the teacher's,
/// `-(1/B) sum_i softmax(t_i / T) . log_softmax(s_i / T)`
/// (equal to `KL(teacher || student)` up to the teacher's entropy, a constant), for logits
/// `[batch, classes]`. The teacher is detached.
///
/// # Errors
/// [`VitError::Head`] when the shapes differ or `temperature` is not positive.
pub fn distillation_loss(
    student: Tensor<2>,
    teacher: Tensor<2>,
    temperature: f64,
) -> Result<Tensor<1>, VitError> {
    if student.dims() != teacher.dims() || !(temperature > 0.0 && temperature.is_finite()) {
        return Err(VitError::Head {
            head: "distillation".into(),
            reason: format!(
                "student {:?} and teacher {:?} logits must have one shape, temperature ({temperature}) must be positive",
                student.dims(),
                teacher.dims()
            ),
        });
    }
    let batch = student.dims()[0].max(1) as f64;
    let p = softmax(teacher.detach() / temperature, 1);
    let logq = log_softmax(student / temperature, 1);
    Ok((p * logq).sum().neg() / batch)
}
