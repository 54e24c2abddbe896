//! Opening a built zoo: the folder layout and typed accessors.
//!
//! ```text
//! <zoo>/zoo.json                                   manifest (Manifest)
//! <zoo>/pretrained/{config.json, model.safetensors}  CLIPVisionModel, HF layout
//! <zoo>/finetuned/<task>/{config.json, model.safetensors}
//! <zoo>/heads/<task>.safetensors                   TaskHead file (head.weight [classes, dim])
//! <zoo>/data/<task>/{val,seed,test}.safetensors    split files (U8 images, I64 labels)
//! ```

use std::path::{Path, PathBuf};

use madeit_data::{EXPORTED_SPLITS, ImageSet, Split, split_path};
use madeit_params::{ParamDict, TaskVector};
use madeit_vit::{CONFIG_FILE, ClipVisionConfig, ClipVisionModel, TaskHead, WEIGHTS_FILE};

use crate::error::{Result, ZooError};
use crate::head::NameVectors;
use crate::manifest::{MANIFEST_FILE, Manifest, TaskEntry};

/// Default zoo folder, relative to the current directory.
pub const DEFAULT_ZOO_DIR: &str = "zoo";

/// Environment variable that overrides [`DEFAULT_ZOO_DIR`].
pub const ZOO_DIR_ENV: &str = "MADEIT_ZOO";

/// The zoo folder: `$MADEIT_ZOO` if set and not empty, else [`DEFAULT_ZOO_DIR`].
#[must_use]
pub fn default_zoo_dir() -> PathBuf {
    std::env::var_os(ZOO_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ZOO_DIR))
}

/// Paths inside a zoo folder, relative to it.
pub mod layout {
    use std::path::PathBuf;

    use madeit_data::{Split, split_path};
    use madeit_vit::{CONFIG_FILE, WEIGHTS_FILE};

    /// `pretrained/`.
    #[must_use]
    pub fn pretrained_dir() -> PathBuf {
        PathBuf::from("pretrained")
    }

    /// `finetuned/<task>/`.
    #[must_use]
    pub fn finetuned_dir(task: &str) -> PathBuf {
        PathBuf::from("finetuned").join(task)
    }

    /// `heads/<task>.safetensors`.
    #[must_use]
    pub fn head_file(task: &str) -> PathBuf {
        PathBuf::from("heads").join(format!("{task}.safetensors"))
    }

    /// `heads/names.safetensors`: the pretraining vector of every class name.
    #[must_use]
    pub fn names_file() -> PathBuf {
        PathBuf::from("heads").join("names.safetensors")
    }

    /// `data/`.
    #[must_use]
    pub fn data_dir() -> PathBuf {
        PathBuf::from("data")
    }

    /// `data/<task>/<split>.safetensors`.
    #[must_use]
    pub fn split_file(task: &str, split: Split) -> PathBuf {
        split_path(&data_dir(), task, split)
    }

    /// Every file of a tower folder.
    #[must_use]
    pub fn model_files(dir: &std::path::Path) -> [PathBuf; 2] {
        [dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE)]
    }
}

/// Every file a zoo with `manifest` must hold, relative to the zoo folder.
#[must_use]
pub fn expected_files(manifest: &Manifest) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(MANIFEST_FILE), layout::names_file()];
    out.extend(layout::model_files(&layout::pretrained_dir()));
    for t in &manifest.tasks {
        out.extend(layout::model_files(&layout::finetuned_dir(&t.name)));
        out.push(layout::head_file(&t.name));
        for s in EXPORTED_SPLITS {
            out.push(layout::split_file(&t.name, s));
        }
    }
    out
}

/// A built zoo (see the module docs for the layout).
#[derive(Debug, Clone)]
pub struct Zoo {
    dir: PathBuf,
    manifest: Manifest,
}

impl Zoo {
    /// Opens the zoo in `dir`: reads the manifest and checks that every file it promises is
    /// there. Weights and data are read lazily by the accessors.
    ///
    /// # Errors
    /// [`ZooError::Incomplete`] when the manifest or any file is missing (all missing files
    /// are listed); [`ZooError::Json`] / [`ZooError::Format`] for a bad manifest.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            return Err(ZooError::Incomplete {
                dir,
                missing: vec![PathBuf::from(MANIFEST_FILE)],
            });
        }
        let manifest = Manifest::load(&manifest_path)?;
        let missing: Vec<PathBuf> = expected_files(&manifest)
            .into_iter()
            .filter(|p| !dir.join(p).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(ZooError::Incomplete { dir, missing });
        }
        if manifest.tasks.is_empty() {
            return Err(ZooError::Incomplete {
                dir,
                missing: vec![PathBuf::from("tasks (the manifest lists none)")],
            });
        }
        Ok(Self { dir, manifest })
    }

    /// Opens the zoo in [`default_zoo_dir`].
    ///
    /// # Errors
    /// As [`Zoo::open`].
    pub fn open_default() -> Result<Self> {
        Self::open(default_zoo_dir())
    }

    /// The zoo folder.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    #[must_use]
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The tower configuration shared by every checkpoint.
    #[must_use]
    pub fn config(&self) -> &ClipVisionConfig {
        &self.manifest.model
    }

    /// The tasks, in id order.
    #[must_use]
    pub fn tasks(&self) -> &[TaskEntry] {
        &self.manifest.tasks
    }

    /// The task names, in id order.
    #[must_use]
    pub fn task_names(&self) -> Vec<&str> {
        self.manifest
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect()
    }

    /// The task called `name`.
    ///
    /// # Errors
    /// [`ZooError::UnknownTask`] listing the available names.
    pub fn task(&self, name: &str) -> Result<&TaskEntry> {
        self.manifest
            .tasks
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ZooError::UnknownTask {
                name: name.to_owned(),
                available: self.task_names().iter().map(|s| (*s).to_owned()).collect(),
            })
    }

    /// The pretrained tower's folder (`config.json` + `model.safetensors`).
    #[must_use]
    pub fn pretrained_dir(&self) -> PathBuf {
        self.dir.join(layout::pretrained_dir())
    }

    /// The folder of `task`'s fine-tuned tower.
    ///
    /// # Errors
    /// [`ZooError::UnknownTask`].
    pub fn finetuned_dir(&self, task: &str) -> Result<PathBuf> {
        self.task(task)?;
        Ok(self.dir.join(layout::finetuned_dir(task)))
    }

    /// The pretrained weights (bare HF `CLIPVisionModel` names).
    ///
    /// # Errors
    /// File errors naming the file.
    pub fn pretrained(&self) -> Result<ParamDict> {
        Ok(ParamDict::load(&self.pretrained_dir().join(WEIGHTS_FILE))?)
    }

    /// The fine-tuned weights of `task`.
    ///
    /// # Errors
    /// [`ZooError::UnknownTask`]; file errors naming the file.
    pub fn finetuned(&self, task: &str) -> Result<ParamDict> {
        Ok(ParamDict::load(
            &self.finetuned_dir(task)?.join(WEIGHTS_FILE),
        )?)
    }

    /// The task vector `finetuned(task) - pretrained`.
    ///
    /// # Errors
    /// As [`Zoo::finetuned`] and [`Zoo::pretrained`]; a key or shape mismatch.
    pub fn task_vector(&self, task: &str) -> Result<TaskVector> {
        Ok(TaskVector::new(
            &self.finetuned(task)?,
            &self.pretrained()?,
        )?)
    }

    /// The pretrained tower, ready to run (through [`ClipVisionModel::load_dir`]).
    ///
    /// # Errors
    /// As [`ClipVisionModel::load_dir`].
    pub fn pretrained_model(&self) -> Result<ClipVisionModel> {
        Ok(ClipVisionModel::load_dir(&self.pretrained_dir())?)
    }

    /// The fine-tuned tower of `task`, ready to run.
    ///
    /// # Errors
    /// [`ZooError::UnknownTask`]; as [`ClipVisionModel::load_dir`].
    pub fn finetuned_model(&self, task: &str) -> Result<ClipVisionModel> {
        Ok(ClipVisionModel::load_dir(&self.finetuned_dir(task)?)?)
    }

    /// The fixed head of `task`.
    ///
    /// # Errors
    /// [`ZooError::UnknownTask`]; as [`TaskHead::load`].
    pub fn head(&self, task: &str) -> Result<TaskHead> {
        self.task(task)?;
        Ok(TaskHead::load(&self.dir.join(layout::head_file(task)))?)
    }

    /// The images and labels of one exported split (val, seed or test) of `task`, in the
    /// common format (`IMAGE_SIZE² × CHANNELS` bytes per image, channels last).
    ///
    /// # Errors
    /// [`ZooError::SplitNotExported`] for train and pretrain; [`ZooError::UnknownTask`];
    /// the split file's errors.
    pub fn split(&self, task: &str, split: Split) -> Result<ImageSet> {
        if !EXPORTED_SPLITS.contains(&split) {
            return Err(ZooError::SplitNotExported {
                split: split.name().to_owned(),
            });
        }
        self.task(task)?;
        let path = split_path(&self.dir.join(layout::data_dir()), task, split);
        Ok(madeit_data::read_split(&path)?.set)
    }

    /// The pretraining vector of every class name (`heads/names.safetensors`), the source
    /// of the name-based heads.
    ///
    /// # Errors
    /// As [`TaskHead::load`].
    pub fn name_vectors(&self) -> Result<NameVectors> {
        load_name_vectors(&self.dir.join(layout::names_file()))
    }

    /// The path of `task`'s head file.
    ///
    /// # Errors
    /// [`ZooError::UnknownTask`].
    pub fn head_path(&self, task: &str) -> Result<PathBuf> {
        self.task(task)?;
        Ok(self.dir.join(layout::head_file(task)))
    }
}

/// Writes the name vectors as a head file over the vocabulary (`head.weight [names, dim]`,
/// unit rows; the class names are the names).
pub(crate) fn save_name_vectors(path: &Path, names: &NameVectors) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ZooError::io(parent, e))?;
    }
    let t = madeit_params::Tensor::new(vec![names.names.len(), names.dim], names.vectors.clone())?;
    TaskHead::new("names", &t, names.names.clone())?.save(path)?;
    Ok(())
}

/// Reads the file of [`save_name_vectors`].
pub(crate) fn load_name_vectors(path: &Path) -> Result<NameVectors> {
    let head = TaskHead::load(path)?;
    Ok(NameVectors {
        names: head.class_names().to_vec(),
        dim: head.dim(),
        vectors: head.weight().to_vec(),
    })
}

/// Writes a tower as `dir/config.json` and `dir/model.safetensors` (the Hugging Face
/// layout), creating `dir`.
///
/// # Errors
/// [`ZooError`] naming the file that cannot be written.
pub fn save_tower(dir: &Path, config: &ClipVisionConfig, params: &ParamDict) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ZooError::io(dir, e))?;
    crate::manifest::write_atomic(&dir.join(CONFIG_FILE), config.to_json_string()?.as_bytes())?;
    params.save(&dir.join(WEIGHTS_FILE))?;
    Ok(())
}

/// Writes `head` into the zoo folder `zoo_dir` at [`layout::head_file`] of its name
/// (`heads/<task>.safetensors`), creating `heads/`; returns the file's path.
///
/// # Errors
/// [`ZooError`] naming the folder or file that cannot be written.
pub fn save_head(zoo_dir: &Path, head: &TaskHead) -> Result<PathBuf> {
    let path = zoo_dir.join(layout::head_file(head.name()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ZooError::io(parent, e))?;
    }
    head.save(&path)?;
    Ok(path)
}
