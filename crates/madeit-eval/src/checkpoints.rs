//! Merging fine-tuned checkpoints outside a benchmark: the shared path of `madeit merge` and
//! the Python package.
//!
//! A method is chosen by name plus a table of hyper-parameters ([`merge_config`]): the
//! test-time and training methods are refused (a list of checkpoints gives them neither seed
//! images nor training data), the table goes through the same serde configuration as a TOML
//! file, and the values are checked once. A checkpoint is read and validated by
//! [`Checkpoint::read`] (its `config.json` against its weights, or its finiteness when it has
//! none), and a fine-tuned one is checked against the pretrained one and absorbed by
//! [`absorb_checkpoint`]. Every error names the file involved; the messages are the ones the
//! command line prints.

use std::path::{Path, PathBuf};

use madeit_merge::{ContinualMerger, MergeError, MethodConfig, Step, StepReport, TaskId};
use madeit_params::{ParamDict, ParamsError};
use madeit_vit::{CONFIG_FILE, ClipVisionConfig, ClipVisionModel, VitError, WEIGHTS_FILE};

use crate::registry::{self, MethodKind};

/// What can go wrong while configuring a checkpoint merge or reading, checking and absorbing
/// a checkpoint. Each variant names the method, file or checkpoint involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A test-time method (it adapts on seed images and heads) asked to merge checkpoints.
    #[error(
        "`madeit merge` cannot run `{method}`: it adapts on each task's unlabelled seed images \
         and fixed head, which fine-tuned checkpoints alone do not provide. Run it on a \
         benchmark instead: `madeit run --methods {method}` (a zoo with heads and seed \
         splits; see `madeit run --help`)"
    )]
    TestTimeMethod {
        /// The method's name.
        method: String,
    },
    /// A training method (sequential fine-tuning) asked to merge checkpoints.
    #[error(
        "`madeit merge` cannot run `{method}`: it is sequential fine-tuning on each task's \
         training data, not a merge of checkpoints. Run it on the zoo instead: \
         `madeit run --methods {method}`"
    )]
    TrainingMethod {
        /// The method's name.
        method: String,
    },
    /// An unknown method, an unknown or mistyped key, or a value out of range.
    #[error(transparent)]
    Config(Box<MergeError>),
    /// The weights of a checkpoint could not be read.
    #[error("reading {what} {}", path.display())]
    Read {
        /// Which checkpoint (`the pretrained model`, `the fine-tuned model`).
        what: &'static str,
        /// The checkpoint.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: ParamsError,
    },
    /// A `config.json` could not be read or parsed.
    #[error("reading {}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The underlying error (boxed: it is large).
        #[source]
        source: Box<VitError>,
    },
    /// A `config.json` does not describe the weights beside it.
    #[error("{} does not describe the weights of {what} {}", config.display(), path.display())]
    ConfigMismatch {
        /// The `config.json`.
        config: PathBuf,
        /// Which checkpoint.
        what: &'static str,
        /// The checkpoint.
        path: PathBuf,
        /// What differs (boxed: it is large).
        #[source]
        source: Box<VitError>,
    },
    /// A checkpoint without `config.json` holds a non-finite value.
    #[error("{what} {}", path.display())]
    NonFinite {
        /// Which checkpoint.
        what: &'static str,
        /// The checkpoint.
        path: PathBuf,
        /// The tensor and value.
        #[source]
        source: ParamsError,
    },
    /// A fine-tuned model's `config.json` describes another architecture.
    #[error(
        "the fine-tuned model {} has another architecture than the pretrained model {}: their \
         config.json files differ",
        finetuned.display(),
        pretrained.display()
    )]
    Architecture {
        /// The fine-tuned checkpoint.
        finetuned: PathBuf,
        /// The pretrained checkpoint.
        pretrained: PathBuf,
    },
    /// A fine-tuned model does not have the pretrained model's names, shapes and dtypes.
    #[error(
        "the fine-tuned model {} does not match the pretrained model {}",
        finetuned.display(),
        pretrained.display()
    )]
    Mismatch {
        /// The fine-tuned checkpoint.
        finetuned: PathBuf,
        /// The pretrained checkpoint.
        pretrained: PathBuf,
        /// What differs, naming the tensor.
        #[source]
        source: ParamsError,
    },
    /// The merger refused a checkpoint.
    #[error("absorbing {}", path.display())]
    Absorb {
        /// The fine-tuned checkpoint.
        path: PathBuf,
        /// The merger's error (boxed: it is large).
        #[source]
        source: Box<MergeError>,
    },
}

impl From<MergeError> for CheckpointError {
    fn from(e: MergeError) -> Self {
        Self::Config(Box::new(e))
    }
}

/// Refuses the methods that cannot merge checkpoints alone: the test-time methods (they
/// need seed images and heads) and the training methods (they need training data).
///
/// # Errors
/// [`CheckpointError::TestTimeMethod`] or [`CheckpointError::TrainingMethod`].
pub fn refuse_non_merge(method: &str) -> Result<(), CheckpointError> {
    match registry::find(method).map(|d| d.kind) {
        Some(MethodKind::TestTime) => Err(CheckpointError::TestTimeMethod {
            method: method.to_owned(),
        }),
        Some(MethodKind::NeedsTrainingData) => Err(CheckpointError::TrainingMethod {
            method: method.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The configuration of a checkpoint merge with method `method` and hyper-parameters
/// `options` (a TOML or keyword table; a `method` key in it must be `method`), checked.
///
/// # Errors
/// [`CheckpointError::TestTimeMethod`], [`CheckpointError::TrainingMethod`], or
/// [`CheckpointError::Config`] (unknown method or key, wrong type, value out of range).
pub fn merge_config(
    method: &str,
    mut options: serde_json::Map<String, serde_json::Value>,
) -> Result<MethodConfig, CheckpointError> {
    refuse_non_merge(method)?;
    match options.get("method") {
        Some(serde_json::Value::String(m)) if m != method => {
            return Err(MergeError::InvalidConfig {
                method: Some(method.to_owned()),
                message: format!(
                    "the options configure method `{m}`, but the method is `{method}`"
                ),
            }
            .into());
        }
        Some(serde_json::Value::String(_)) => {}
        Some(other) => {
            return Err(MergeError::InvalidConfig {
                method: None,
                message: format!("`method` must be a string, got {other}"),
            }
            .into());
        }
        None => {
            options.insert(
                "method".into(),
                serde_json::Value::String(method.to_owned()),
            );
        }
    }
    let cfg = MethodConfig::from_json_value(serde_json::Value::Object(options))?;
    cfg.check()?;
    Ok(cfg)
}

/// The task name of a checkpoint path: its folder name, or its file stem (the folder's name
/// for a `model.safetensors` file).
#[must_use]
pub fn task_name(path: &Path) -> String {
    let p = if path.is_dir() {
        path
    } else if path.file_name().is_some_and(|f| f == WEIGHTS_FILE) {
        path.parent().unwrap_or(path)
    } else {
        return path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
    };
    p.file_name().map_or_else(
        || p.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

/// A checkpoint's weights and, for a folder with a `config.json`, the configuration
/// (validated against the weights) and the file's text.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Where it was read from.
    pub path: PathBuf,
    /// The weights.
    pub params: ParamDict,
    /// The vision configuration and the text of `config.json`, when the folder has one.
    pub config: Option<(ClipVisionConfig, String)>,
}

impl Checkpoint {
    /// Reads the weights (a folder, sharded or not, or a `.safetensors` file) and the
    /// configuration; `what` names the checkpoint in errors (`"the pretrained model"`).
    ///
    /// # Errors
    /// [`CheckpointError::Read`], [`CheckpointError::ConfigFile`],
    /// [`CheckpointError::ConfigMismatch`], or [`CheckpointError::NonFinite`] for a
    /// checkpoint without `config.json` holding a NaN or infinity.
    pub fn read(path: &Path, what: &'static str) -> Result<Self, CheckpointError> {
        let params = ParamDict::load_checkpoint(path).map_err(|source| CheckpointError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })?;
        let cfg_file = path.join(CONFIG_FILE);
        let config = if path.is_dir() && cfg_file.is_file() {
            let file_err = |source| CheckpointError::ConfigFile {
                path: cfg_file.clone(),
                source: Box::new(source),
            };
            let text = std::fs::read_to_string(&cfg_file).map_err(|source| {
                file_err(VitError::Io {
                    path: cfg_file.clone(),
                    source,
                })
            })?;
            let cfg = ClipVisionConfig::from_file(&cfg_file).map_err(file_err)?;
            ClipVisionModel::check_params(&cfg, &params).map_err(|source| {
                CheckpointError::ConfigMismatch {
                    config: cfg_file.clone(),
                    what,
                    path: path.to_path_buf(),
                    source: Box::new(source),
                }
            })?;
            Some((cfg, text))
        } else {
            params
                .check_finite()
                .map_err(|source| CheckpointError::NonFinite {
                    what,
                    path: path.to_path_buf(),
                    source,
                })?;
            None
        };
        Ok(Self {
            path: path.to_path_buf(),
            params,
            config,
        })
    }

    /// A checkpoint held in memory (no `config.json`), labelled `label` in errors; its
    /// values are checked to be finite as for a file without `config.json`.
    ///
    /// # Errors
    /// [`CheckpointError::NonFinite`].
    pub fn from_params(
        params: ParamDict,
        label: &str,
        what: &'static str,
    ) -> Result<Self, CheckpointError> {
        params
            .check_finite()
            .map_err(|source| CheckpointError::NonFinite {
                what,
                path: PathBuf::from(label),
                source,
            })?;
        Ok(Self {
            path: PathBuf::from(label),
            params,
            config: None,
        })
    }

    /// Checks that fine-tuned checkpoint `ft` has this (pretrained) checkpoint's
    /// architecture (when both have a `config.json`; the projection width may differ) and
    /// its tensor names, shapes and dtypes.
    ///
    /// # Errors
    /// [`CheckpointError::Architecture`] or [`CheckpointError::Mismatch`].
    pub fn check_finetuned(&self, ft: &Self) -> Result<(), CheckpointError> {
        if let (Some((want, _)), Some((got, _))) = (&self.config, &ft.config)
            && *want
                != (ClipVisionConfig {
                    projection_dim: want.projection_dim,
                    ..got.clone()
                })
        {
            return Err(CheckpointError::Architecture {
                finetuned: ft.path.clone(),
                pretrained: self.path.clone(),
            });
        }
        self.params
            .check_compatible(&ft.params)
            .map_err(|source| CheckpointError::Mismatch {
                finetuned: ft.path.clone(),
                pretrained: self.path.clone(),
                source,
            })
    }
}

/// Checks fine-tuned checkpoint `ft` against `pretrained` and absorbs it into `merger` as
/// task `task`.
///
/// # Errors
/// As [`Checkpoint::check_finetuned`], and [`CheckpointError::Absorb`] wrapping the
/// merger's error (the merger is then unchanged).
pub fn absorb_checkpoint(
    merger: &mut dyn ContinualMerger,
    pretrained: &Checkpoint,
    ft: &Checkpoint,
    task: &TaskId,
) -> Result<StepReport, CheckpointError> {
    pretrained.check_finetuned(ft)?;
    merger
        .absorb(&Step::new(&pretrained.params, &ft.params, task))
        .map_err(|source| CheckpointError::Absorb {
            path: ft.path.clone(),
            source: Box::new(source),
        })
}

/// An error and its causes joined by `: `, leaving out a cause whose message the text
/// before it already holds (library errors often repeat their source's message): how the
/// command line and the Python package print an error.
#[must_use]
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        let msg = e.to_string();
        if !text.contains(&msg) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&msg);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, serde_json::Value)]) -> serde_json::Map<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn merge_config_takes_keywords_and_defaults() -> Result<(), CheckpointError> {
        let cfg = merge_config("opcm", opts(&[("alpha", serde_json::json!(0.25))]))?;
        let MethodConfig::Opcm(c) = &cfg else {
            return Err(MergeError::Admission(madeit_merge::AdmitError::EmptyModel).into());
        };
        assert_eq!(c.alpha, 0.25);
        assert_eq!(
            merge_config("ties", serde_json::Map::new())?,
            MethodConfig::default_for("ties")?
        );
        Ok(())
    }

    #[test]
    fn merge_config_refuses_what_it_cannot_run() {
        let err = |name: &str, o| {
            merge_config(name, o)
                .err()
                .map(|e| error_chain(&e))
                .unwrap_or_default()
        };
        assert!(err("mingle", opts(&[])).contains("seed images"));
        assert!(err("c_finetuned", opts(&[])).contains("sequential fine-tuning"));
        assert!(err("nope", opts(&[])).contains("swa, task_arithmetic"));
        assert!(err("opcm", opts(&[("beta", serde_json::json!(1))])).contains("beta"));
        assert!(err("opcm", opts(&[("alpha", serde_json::json!(2.0))])).contains("alpha"));
        assert!(err("opcm", opts(&[("method", serde_json::json!("ties"))])).contains("`ties`"));
    }

    #[test]
    fn in_memory_checkpoints_are_checked() -> Result<(), Box<dyn std::error::Error>> {
        let mut p = ParamDict::new();
        p.insert(
            "w",
            madeit_params::Tensor::new(vec![2], vec![1.0, f32::NAN])?,
        );
        let err = Checkpoint::from_params(p, "task", "the fine-tuned model")
            .err()
            .map(|e| error_chain(&e))
            .unwrap_or_default();
        assert!(err.starts_with("the fine-tuned model task: "), "{err}");
        assert!(err.contains('w'), "{err}");
        Ok(())
    }
}
