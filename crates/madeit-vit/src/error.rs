//! The error type of this crate.

use std::fmt;
use std::path::PathBuf;

use crate::ModuleId;

/// One tensor whose shape in a checkpoint differs from what the configuration requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// Tensor name as it appears in the checkpoint.
    pub name: String,
    /// Shape the configuration requires.
    pub expected: Vec<usize>,
    /// Shape found in the checkpoint.
    pub got: Vec<usize>,
}

/// Everything that does not match between a checkpoint and a configuration.
///
/// Produced by [`ClipVisionModel::from_params`](crate::ClipVisionModel::from_params) when any
/// list is non-empty; all problems are reported at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Tensors the configuration needs that the checkpoint lacks, with their expected shapes.
    pub missing: Vec<(String, Vec<usize>)>,
    /// Tensors in the checkpoint that belong to no part of the vision tower and are not a
    /// known buffer or text-model tensor.
    pub unexpected: Vec<String>,
    /// Tensors present under the right name but with the wrong shape.
    pub mismatched: Vec<ShapeMismatch>,
}

impl CheckpointReport {
    /// Whether nothing is missing, unexpected or mismatched.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

/// How many names of each list a [`CheckpointReport`] message shows.
const LISTED: usize = 12;

/// Writes one non-empty list of a [`CheckpointReport`]: `; ` unless it is the `first`, the
/// count and `what`, then up to [`LISTED`] items and the number left out.
fn list<T>(
    f: &mut fmt::Formatter<'_>,
    first: &mut bool,
    what: &str,
    items: &[T],
    item: impl Fn(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    if !std::mem::take(first) {
        f.write_str("; ")?;
    }
    write!(f, "{} {what}: ", items.len())?;
    for (i, x) in items.iter().take(LISTED).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        item(f, x)?;
    }
    if items.len() > LISTED {
        write!(f, " and {} more", items.len() - LISTED)?;
    }
    Ok(())
}

impl fmt::Display for CheckpointReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        list(
            f,
            &mut first,
            "missing",
            &self.missing,
            |f, (name, shape)| write!(f, "`{name}` {shape:?}"),
        )?;
        list(f, &mut first, "unexpected", &self.unexpected, |f, name| {
            write!(f, "`{name}`")
        })?;
        list(
            f,
            &mut first,
            "with wrong shape",
            &self.mismatched,
            |f, m| write!(f, "`{}` expected {:?}, got {:?}", m.name, m.expected, m.got),
        )
    }
}

/// Everything that can go wrong in this crate.
///
/// Variants about one tensor, module or file name it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VitError {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid vision config: field `{field}` {reason}")]
    InvalidConfig {
        /// The offending field (HF `config.json` name).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A `config.json` could not be parsed.
    #[error("cannot parse vision config{}: {message}", show_path(.path))]
    ConfigParse {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        /// The parser's message.
        message: String,
    },
    /// An operating-system error while reading or writing a file.
    #[error("I/O error on `{}`: {source}", .path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An error from the named-tensor layer (file format, dtype, missing key, ...).
    #[error(transparent)]
    Params(#[from] madeit_params::ParamsError),
    /// A checkpoint does not fit the configuration.
    #[error("checkpoint does not match the vision config: {report}")]
    Checkpoint {
        /// Every missing, unexpected and mis-shaped tensor.
        report: CheckpointReport,
    },
    /// A weight holds a NaN or an infinity.
    #[error("non-finite value {value} in weight `{name}` at flat index {index}")]
    NonFiniteWeight {
        /// Tensor name as it appears in the checkpoint.
        name: String,
        /// Flat (row-major) index of the first non-finite element.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// The pixel tensor given to a forward has the wrong shape.
    #[error(
        "pixel input has shape {got:?}, expected [batch, {channels}, {image_size}, {image_size}] with batch >= 1"
    )]
    InputShape {
        /// Expected number of channels.
        channels: usize,
        /// Expected image height and width.
        image_size: usize,
        /// Shape received.
        got: Vec<usize>,
    },
    /// A flat buffer does not hold `prod(shape)` values.
    #[error("{what}: expected {expected} values, got {got}")]
    Length {
        /// What the buffer is.
        what: String,
        /// Number of values required.
        expected: usize,
        /// Number of values supplied.
        got: usize,
    },
    /// A value supplied at run time (expert factor, gate, head, embedding) is NaN or infinite.
    #[error("non-finite value in {what} at flat index {index}")]
    NonFiniteInput {
        /// What the value belongs to.
        what: String,
        /// Flat index of the first non-finite element.
        index: usize,
    },
    /// A module id names a layer the model does not have.
    #[error("module {module} does not exist: the model has {num_layers} layers")]
    UnknownModule {
        /// The offending module.
        module: ModuleId,
        /// Number of encoder layers.
        num_layers: usize,
    },
    /// Low-rank expert factors do not fit the module they are attached to.
    #[error(
        "expert {expert} of module {module}: factors are [{got_out} x {got_in}], the module's weight is [{expected_out} x {expected_in}]"
    )]
    ExpertShape {
        /// The module.
        module: ModuleId,
        /// Index of the expert within the module.
        expert: usize,
        /// Output dimension of the module.
        expected_out: usize,
        /// Input dimension of the module.
        expected_in: usize,
        /// Output dimension of the factors.
        got_out: usize,
        /// Input dimension of the factors.
        got_in: usize,
    },
    /// Inconsistent low-rank factor lengths (U, s, V do not agree on the rank).
    #[error("low-rank factors: {reason}")]
    Factors {
        /// What is inconsistent.
        reason: String,
    },
    /// A routing table refers to an expert that does not exist, or has the wrong batch size.
    #[error("routing for module {module}: {reason}")]
    Routing {
        /// The module.
        module: ModuleId,
        /// What is wrong.
        reason: String,
    },
    /// Gates and experts disagree (number of experts, input dimension, module set).
    #[error("gates for module {module}: {reason}")]
    Gates {
        /// The module.
        module: ModuleId,
        /// What is wrong.
        reason: String,
    },
    /// A task head or an embedding has the wrong dimension.
    #[error("head `{head}`: {reason}")]
    Head {
        /// Name of the head (its file or task name).
        head: String,
        /// What is wrong.
        reason: String,
    },
    /// A text configuration value is out of range or inconsistent with another one.
    #[error("invalid text config: field `{field}` {reason}")]
    InvalidTextConfig {
        /// The offending field (HF `config.json` name, inside `text_config`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The text part of a `config.json` could not be parsed.
    #[error("cannot parse text config{}: {message}", show_path(.path))]
    TextConfigParse {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        /// The parser's message.
        message: String,
    },
    /// A checkpoint's text tower does not fit the text configuration.
    #[error("checkpoint does not match the text config: {report}")]
    TextCheckpoint {
        /// Every missing, unexpected and mis-shaped tensor of the text tower.
        report: CheckpointReport,
    },
    /// A model folder, configuration or weight file has no (usable) CLIP text tower, so no
    /// zero-shot head can be made from it.
    #[error("{} has no text tower: {reason}", show_path_or(.path, "the checkpoint"))]
    NoTextTower {
        /// The folder or file, when known.
        path: Option<PathBuf>,
        /// What is missing.
        reason: String,
    },
    /// A `CLIPModel` checkpoint lacks `logit_scale`, or holds an unusable one.
    #[error("{} has no usable `logit_scale`: {reason}", show_path_or(.path, "the checkpoint"))]
    LogitScale {
        /// The folder or file, when known.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// A tokenizer file does not parse, or the tokenizer does not behave as CLIP's.
    #[error("tokenizer{}: {message}", show_path(.path))]
    Tokenizer {
        /// The file or folder, when known.
        path: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },
    /// A class-name list is empty or holds an empty or duplicate name.
    #[error("class list{}{}: {reason}", show_path(.path), show_line(.line))]
    ClassList {
        /// The file, when the list came from one.
        path: Option<PathBuf>,
        /// The 1-based line, when one line is at fault.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// A prompt-template list is empty or holds a template without the `{}` placeholder.
    #[error("template list{}{}: {reason}", show_path(.path), show_line(.line))]
    TemplateList {
        /// The file, when the list came from one.
        path: Option<PathBuf>,
        /// The 1-based line, when one line is at fault.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// A task name that has no built-in class names and templates.
    #[error("no built-in task `{name}`; known tasks: {known}")]
    UnknownTask {
        /// The name asked for.
        name: String,
        /// The known task and group names, comma separated.
        known: String,
    },
    /// Token ids given to the text tower do not fit it.
    #[error("text input: {reason}")]
    TextInput {
        /// What is wrong.
        reason: String,
    },
    /// The tensor backend failed to read data back.
    #[error("tensor backend: {message}")]
    Backend {
        /// The backend's message.
        message: String,
    },
}

fn show_path_or(path: &Option<PathBuf>, fallback: &str) -> String {
    match path {
        Some(p) => format!("`{}`", p.display()),
        None => fallback.to_owned(),
    }
}

fn show_line(line: &Option<usize>) -> String {
    match line {
        Some(l) => format!(", line {l}"),
        None => String::new(),
    }
}

impl VitError {
    /// Names `dir` in errors that were raised without a path (a model folder's missing text
    /// tower or logit scale).
    pub(crate) fn in_folder(self, dir: &std::path::Path) -> Self {
        match self {
            Self::NoTextTower { path: None, reason } => Self::NoTextTower {
                path: Some(dir.to_path_buf()),
                reason,
            },
            Self::LogitScale { path: None, reason } => Self::LogitScale {
                path: Some(dir.to_path_buf()),
                reason,
            },
            other => other,
        }
    }
}

fn show_path(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" `{}`", p.display()),
        None => String::new(),
    }
}

impl From<madeit_stream::FactorsError> for VitError {
    fn from(e: madeit_stream::FactorsError) -> Self {
        match e {
            madeit_stream::FactorsError::Shape { reason } => Self::Factors { reason },
            madeit_stream::FactorsError::NonFinite { what, index } => {
                Self::NonFiniteInput { what, index }
            }
            madeit_stream::FactorsError::Tensor(e) => Self::from(e),
            other => Self::Factors {
                reason: other.to_string(),
            },
        }
    }
}
