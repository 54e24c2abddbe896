//! The error type of this crate.

use std::path::PathBuf;

use crate::DType;

/// Everything that can go wrong when building, combining, reading or writing named tensors.
///
/// Every variant that concerns one tensor carries its name; every variant that concerns a
/// file carries its path. Errors raised by a bare [`Tensor`](crate::Tensor) method (which
/// does not know its own name) carry an empty name; the [`ParamDict`](crate::ParamDict)
/// methods fill it in (see [`ParamsError::in_tensor`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParamsError {
    /// A tensor that was looked up or expected is absent.
    #[error("missing tensor `{name}`")]
    MissingKey {
        /// Name of the absent tensor.
        name: String,
    },
    /// A tensor is present in the second operand but not in the first.
    #[error("unexpected tensor `{name}` (not present in the reference parameters)")]
    UnexpectedKey {
        /// Name of the extra tensor.
        name: String,
    },
    /// Two tensors that must have the same shape do not.
    #[error("shape mismatch for tensor {}: expected {expected:?}, got {got:?}", show(.name))]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Shape of the reference (left) operand.
        expected: Vec<usize>,
        /// Shape of the other (right) operand.
        got: Vec<usize>,
    },
    /// Two tensors that must have the same storage dtype do not.
    #[error("dtype mismatch for tensor {}: expected {expected}, got {got}", show(.name))]
    DTypeMismatch {
        /// Tensor name.
        name: String,
        /// Dtype of the reference (left) operand.
        expected: DType,
        /// Dtype of the other (right) operand.
        got: DType,
    },
    /// A tensor holds a NaN or an infinity.
    #[error("non-finite value {value} in tensor {} at flat index {index}", show(.name))]
    NonFinite {
        /// Tensor name.
        name: String,
        /// Flat (row-major) index of the first non-finite element.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// A data buffer does not have `prod(shape)` elements.
    #[error(
        "length mismatch for tensor {}: shape {shape:?} needs {expected} elements, got {got}",
        show(.name)
    )]
    LengthMismatch {
        /// Tensor name.
        name: String,
        /// The requested shape.
        shape: Vec<usize>,
        /// `prod(shape)`.
        expected: usize,
        /// Number of elements supplied.
        got: usize,
    },
    /// `prod(shape)` overflows `usize`.
    #[error("shape {shape:?} of tensor {} has too many elements", show(.name))]
    ShapeOverflow {
        /// Tensor name.
        name: String,
        /// The requested shape.
        shape: Vec<usize>,
    },
    /// A 2-D view was requested of a tensor that is not 2-D.
    #[error("tensor {} is not a matrix (shape {shape:?})", show(.name))]
    NotAMatrix {
        /// Tensor name.
        name: String,
        /// Its actual shape.
        shape: Vec<usize>,
    },
    /// A finite value does not fit in the storage dtype it is written as.
    #[error(
        "value {value} of tensor {} at flat index {index} overflows {dtype}",
        show(.name)
    )]
    DTypeOverflow {
        /// Tensor name.
        name: String,
        /// Flat (row-major) index of the first value that overflows.
        index: usize,
        /// The value.
        value: f32,
        /// The storage dtype it was converted to.
        dtype: DType,
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
    /// A file is not a valid safetensors file (truncated, corrupt header, bad offsets, ...).
    #[error("invalid safetensors file `{}`: {message}", .path.display())]
    Safetensors {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An output path would replace or remove one of the inputs of the same command.
    #[error(
        "refusing to write `{}`: it is (or holds) the input `{}`; choose another output",
        .output.display(),
        .input.display()
    )]
    OutputIsInput {
        /// The output path given.
        output: PathBuf,
        /// The input it clashes with.
        input: PathBuf,
    },
    /// An output folder exists and holds something that the command may not replace.
    #[error(
        "refusing to replace `{}`: it is {holds}; choose an empty or new folder, or pass \
         --force to replace it as a whole",
        .path.display()
    )]
    OutputRefused {
        /// The output folder.
        path: PathBuf,
        /// What it holds.
        holds: String,
    },
    /// Another process is writing the same output folder.
    #[error("another madeit process is writing `{}`; wait for it to finish", .path.display())]
    OutputBusy {
        /// The output folder.
        path: PathBuf,
    },
    /// A checkpoint folder holds weights in a format that is not read.
    #[error("cannot read the checkpoint `{}`: {message}", .path.display())]
    UnsupportedCheckpoint {
        /// The file or folder.
        path: PathBuf,
        /// What was found and what to do.
        message: String,
    },
    /// A tensor in a file is stored in a dtype other than F32, F16 or BF16.
    #[error("tensor `{name}` has unsupported dtype {dtype} (supported: F32, F16, BF16)")]
    UnsupportedDType {
        /// Tensor name.
        name: String,
        /// The dtype found in the file, as the safetensors header spells it.
        dtype: String,
    },
}

impl ParamsError {
    /// Fills in the tensor name of an error raised by an anonymous [`Tensor`](crate::Tensor)
    /// method; errors that already carry a name, and file errors, are returned unchanged.
    #[must_use]
    pub fn in_tensor(mut self, tensor_name: &str) -> Self {
        match &mut self {
            Self::ShapeMismatch { name, .. }
            | Self::DTypeMismatch { name, .. }
            | Self::NonFinite { name, .. }
            | Self::LengthMismatch { name, .. }
            | Self::ShapeOverflow { name, .. }
            | Self::NotAMatrix { name, .. }
            | Self::DTypeOverflow { name, .. }
                if name.is_empty() =>
            {
                tensor_name.clone_into(name);
            }
            _ => {}
        }
        self
    }

    /// The name of the tensor the error is about, if any (empty names count as none).
    #[must_use]
    pub fn tensor_name(&self) -> Option<&str> {
        let name = match self {
            Self::MissingKey { name }
            | Self::UnexpectedKey { name }
            | Self::ShapeMismatch { name, .. }
            | Self::DTypeMismatch { name, .. }
            | Self::NonFinite { name, .. }
            | Self::LengthMismatch { name, .. }
            | Self::ShapeOverflow { name, .. }
            | Self::NotAMatrix { name, .. }
            | Self::DTypeOverflow { name, .. }
            | Self::UnsupportedDType { name, .. } => name.as_str(),
            Self::Io { .. }
            | Self::Safetensors { .. }
            | Self::OutputIsInput { .. }
            | Self::OutputRefused { .. }
            | Self::OutputBusy { .. }
            | Self::UnsupportedCheckpoint { .. } => return None,
        };
        (!name.is_empty()).then_some(name)
    }
}

/// Renders a tensor name for messages; anonymous tensors show as `<unnamed>`.
fn show(name: &str) -> String {
    if name.is_empty() {
        "<unnamed>".to_owned()
    } else {
        format!("`{name}`")
    }
}
