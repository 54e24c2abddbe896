//! The embedded model zoo: a small CLIP-like vision tower pretrained and fine-tuned by the
//! project on real packaged data, exported in the Hugging Face `CLIPVisionModel` layout so
//! that the zoo and real CLIP checkpoints travel the same code path
//! ([`madeit_vit::ClipVisionModel`]).
//!
//! * [`model`]: the towers it trains are [`madeit_vit::ClipVisionModel`] itself (a burn
//!   module); their random initialisation ([`init_tower`]) and their loading from a
//!   checkpoint ([`tower_from_params`]);
//! * [`train`](mod@train): the deterministic Adam training loop on cosine logits with a warm-up +
//!   cosine schedule;
//! * [`head`]: name-based heads (the analogue of CLIP's zero-shot text heads: one vector
//!   per class name, from the pretraining objective), embedding and accuracy;
//! * [`interference`]: the interference matrix of the fine-tunes and simple merges;
//! * [`energy`]: the spectral energy of task vectors per module kind;
//! * [`build`]: the staged, resumable, atomic build ([`build_zoo`]);
//! * [`sequential`]: sequential fine-tuning of one tower through a task order
//!   ([`sequential_finetune`]), the non-merging reference that needs training data;
//! * [`zoo`]: [`Zoo::open`] and the typed accessors of a built zoo;
//! * [`manifest`], the manifest `zoo.json`.
//!
//! `docs/zoo.md` describes the data, the choices and the measured numbers.

pub mod build;
pub mod energy;
pub mod error;
pub mod head;
pub mod interference;
pub mod manifest;
pub mod model;
pub mod sequential;
pub mod train;
pub mod zoo;

pub use build::{
    BuildConfig, BuildEvent, BuildOptions, BuildOutcome, FinetuneScope, build_zoo,
    build_zoo_from_tasks, default_pretrain_sources, finetune_tower, staging_dir,
};
pub use energy::{EnergyReport, ModuleEnergy, task_vector_energy, top_energy};
pub use error::{Result, ZooError};
pub use head::{
    NameVectors, embed_images, evaluate, name_head, predict, prototype_head, unseen_name_vector,
};
pub use interference::{Interference, interference_matrix, merged_accuracies, merged_params};
pub use manifest::{MANIFEST_FILE, Manifest, TaskEntry, TaskVectorNorm, ZOO_FORMAT};
pub use model::{init_params, init_tower, tower_from_params};
pub use sequential::{
    SequentialOutcome, SequentialRun, SequentialTask, sequential_finetune, sequential_step,
};
pub use train::{CosineClassifier, StepInfo, TrainConfig, TrainLog, Trainee, train};
pub use zoo::{
    DEFAULT_ZOO_DIR, ZOO_DIR_ENV, Zoo, default_zoo_dir, expected_files, save_head, save_tower,
};
