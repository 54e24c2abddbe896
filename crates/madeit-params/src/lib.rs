//! Named tensors in PyTorch `[out, in]` layout, task vectors and safetensors I/O.
//!
//! - [`Tensor`]: a shape, row-major `f32` data and the [`DType`] it is stored as on disk
//!   (F32, F16 or BF16). A linear weight `[out, in]` is viewed with no copy as an `out × in`
//!   [`faer::MatRef`] by [`Tensor::as_mat`].
//! - [`ParamDict`]: an insertion-ordered `name -> Tensor` map (a PyTorch `state_dict`) with
//!   checked arithmetic: `add`, `sub`, `scale`, `axpy` (`θ += α x`), the flattened L2 norm
//!   `‖θ‖₂ = sqrt(Σ θ_k²)` and inner product `⟨a, b⟩ = Σ a_k b_k` (both accumulated in `f64`).
//!   Every binary operation first checks that both operands have the same names, shapes and
//!   dtypes, and its error names the offending tensor.
//! - [`TaskVector`]: `τ = θ_ft − θ_pre`, applied as `θ_pre + λ τ`.
//! - safetensors I/O: [`ParamDict::load`], [`ParamDict::save`] (atomic), [`ParamDict::save_as`]
//!   and the `__metadata__` map ([`ParamDict::load_with_metadata`], [`SaveOptions`]);
//!   Hugging Face checkpoint folders, single-file or sharded ([`ParamDict::load_checkpoint`]).
//! - [`modules`]: the names of the target linear modules of a CLIP vision tower
//!   ([`modules::ModuleKind`], [`modules::ModuleId`]), shared by every crate above.
//! - [`fs`]: files and folders that land as a unit (atomic writes, output folders swapped
//!   in whole, refusal to write over an input).
//!
//! Nothing here panics on bad input: malformed files, missing keys, shape or dtype
//! mismatches and NaN/Inf ([`ParamDict::check_finite`]) are all [`ParamsError`]s.
//!
//! ```
//! use madeit_params::{ParamDict, TaskVector, Tensor};
//!
//! let mut pre = ParamDict::new();
//! pre.insert("w", Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])?);
//! let mut ft = ParamDict::new();
//! ft.insert("w", Tensor::new(vec![2, 2], vec![1.5, 2.0, 3.0, 3.0])?);
//! let tau = TaskVector::new(&ft, &pre)?;
//! assert_eq!(tau.params().get("w")?.data(), &[0.5, 0.0, 0.0, -1.0]);
//! let merged = tau.apply(&pre, 2.0)?;
//! assert_eq!(merged.get("w")?.data(), &[2.0, 2.0, 3.0, 2.0]);
//! assert_eq!(merged.mat("w")?[(1, 0)], 3.0); // row = out, column = in
//! # Ok::<(), madeit_params::ParamsError>(())
//! ```

mod dict;
mod dtype;
mod error;
pub mod fs;
mod io;
pub mod modules;
mod task_vector;
mod tensor;

pub use dict::ParamDict;
pub use dtype::DType;
pub use error::ParamsError;
pub use io::{INDEX_FILE, Metadata, SaveOptions, WEIGHTS_FILE};
pub use task_vector::TaskVector;
pub use tensor::{Tensor, all_finite, max_abs_diff};
