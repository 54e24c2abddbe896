//! Task heads: fixed class-embedding matrices, cosine logits and accuracy.

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use madeit_params::ParamDict;

use crate::VitError;
use crate::util::{download, first_non_finite, upload};

/// CLIP's logit scale: logits are `100 cos(image embedding, class embedding)`.
pub const LOGIT_SCALE: f32 = 100.0;

/// Key of the head matrix in a head file.
pub const HEAD_WEIGHT_KEY: &str = "head.weight";

/// Metadata key holding the class names (a JSON array of strings) in a head file.
pub const CLASS_NAMES_KEY: &str = "class_names";

/// Metadata key holding the task name in a head file.
pub const TASK_KEY: &str = "task";

/// The fixed classification head of one task: a `[classes, dim]` matrix `H` of unit rows
/// (for CLIP, the normalised text embeddings of the class prompts).
///
/// `logits = 100 * (e / ||e||) H^T` for an image embedding `e`; predictions are the argmax
/// over the task's own classes.
///
/// File format (safetensors): tensor `head.weight` `[classes, dim]` (F32, F16 or BF16),
/// metadata `task` (the name) and `class_names` (JSON array), both optional.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskHead {
    name: String,
    classes: usize,
    dim: usize,
    weight: Vec<f32>,
    class_names: Vec<String>,
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
        })
    }

    /// Reads a head file (see the type docs). The name is the `task` metadata, or the file
    /// stem.
    ///
    /// # Errors
    /// File errors naming the file; [`VitError::Head`] when `head.weight` is missing or the
    /// metadata is malformed; then as [`new`](Self::new).
    pub fn load(path: &Path) -> Result<Self, VitError> {
        let dict = ParamDict::load(path)?;
        let bytes = std::fs::read(path).map_err(|source| VitError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let err = |reason: String| VitError::Head {
            head: path.display().to_string(),
            reason,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(format!("cannot read the header: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let name = meta.get(TASK_KEY).cloned().unwrap_or(stem);
        let class_names = match meta.get(CLASS_NAMES_KEY) {
            Some(text) => serde_json::from_str::<Vec<String>>(text).map_err(|e| {
                err(format!(
                    "`{CLASS_NAMES_KEY}` metadata is not a JSON string list: {e}"
                ))
            })?,
            None => Vec::new(),
        };
        let weight = dict
            .get(HEAD_WEIGHT_KEY)
            .map_err(|_| err(format!("no `{HEAD_WEIGHT_KEY}` tensor")))?;
        Self::new(name, weight, class_names)
    }

    /// Writes the head as an F32 safetensors file with `task` and `class_names` metadata.
    ///
    /// # Errors
    /// [`VitError::Io`] naming the file.
    pub fn save(&self, path: &Path) -> Result<(), VitError> {
        let bytes: Vec<u8> = self.weight.iter().flat_map(|x| x.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![self.classes, self.dim],
            &bytes,
        )
        .map_err(|e| VitError::Head {
            head: self.name.clone(),
            reason: e.to_string(),
        })?;
        let mut meta = HashMap::new();
        meta.insert(TASK_KEY.to_owned(), self.name.clone());
        if !self.class_names.is_empty() {
            let names = serde_json::to_string(&self.class_names).map_err(|e| VitError::Head {
                head: self.name.clone(),
                reason: e.to_string(),
            })?;
            meta.insert(CLASS_NAMES_KEY.to_owned(), names);
        }
        safetensors::serialize_to_file([(HEAD_WEIGHT_KEY, view)], Some(meta), path).map_err(|e| {
            VitError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            }
        })
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

    /// Logits `[batch, classes] = 100 * normalize(embeds) H^T` for embeddings
    /// `[batch, dim]`, on the embeddings' device (differentiable).
    ///
    /// # Errors
    /// [`VitError::Head`] when `dim` differs.
    pub fn logits(&self, embeds: Tensor<2>) -> Result<Tensor<2>, VitError> {
        self.check_dim(embeds.dims()[1])?;
        let device = embeds.device().without_autodiff();
        let h = upload(self.weight.clone(), [self.classes, self.dim], &device);
        let norm = embeds.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
        Ok((embeds / norm).matmul(h.transpose()) * LOGIT_SCALE)
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
