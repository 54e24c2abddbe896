//! **madeit**: continual model merging of vision transformers.
//!
//! This crate is a thin facade that re-exports the layered `madeit-*` crates.

pub use madeit_adapt as adapt;
pub use madeit_data as data;
pub use madeit_eval as eval;
pub use madeit_experts as experts;
pub use madeit_grassmann as grassmann;
pub use madeit_linalg as linalg;
pub use madeit_merge as merge;
pub use madeit_params as params;
pub use madeit_vit as vit;
pub use madeit_zoo as zoo;
