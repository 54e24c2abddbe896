//! Split files: one split of one task as a safetensors file.
//!
//! A split file holds two tensors and some metadata:
//!
//! | key | dtype | shape | content |
//! | --- | --- | --- | --- |
//! | `images` | `U8` | `[n, c, h, w]` | pixels, channels first (PyTorch layout) |
//! | `labels` | `I64` | `[n]` | class indices |
//!
//! Metadata (`__metadata__`): `format` = [`SPLIT_FORMAT`], `task`, `split`, and
//! `class_names` (a JSON array of strings). [`read_split`] also accepts `U32` labels.
//! Files are written atomically (a temporary file, then a rename).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{DataError, Result};
use crate::image::ImageSet;
use crate::split::Split;
use crate::task::TaskData;

/// Value of the `format` metadata entry.
pub const SPLIT_FORMAT: &str = "madeit-split-v1";

/// The splits written by [`export_task`].
pub const EXPORTED_SPLITS: [Split; 3] = [Split::Val, Split::Seed, Split::Test];

/// A split read back from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitFile {
    /// The task name recorded in the file.
    pub task: String,
    /// The split name recorded in the file.
    pub split: String,
    /// The images (channels last again) and labels.
    pub set: ImageSet,
}

fn st_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn bad(path: &Path, detail: impl Into<String>) -> DataError {
    DataError::SplitFile {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Serialises a split to safetensors bytes (see the module documentation).
pub fn split_to_bytes(set: &ImageSet, task: &str, split: &str) -> Result<Vec<u8>> {
    set.validate()?;
    let nchw = set.to_nchw();
    let labels: Vec<u8> = set
        .labels
        .iter()
        .flat_map(|&l| i64::from(l).to_le_bytes())
        .collect();
    let pseudo = Path::new(task);
    let images = TensorView::new(
        Dtype::U8,
        vec![set.n, set.channels, set.height, set.width],
        &nchw,
    )
    .map_err(|e| st_err(pseudo, e))?;
    let labels =
        TensorView::new(Dtype::I64, vec![set.n], &labels).map_err(|e| st_err(pseudo, e))?;
    let class_names = serde_json::to_string(&set.class_names).map_err(|e| st_err(pseudo, e))?;
    let metadata: HashMap<String, String> = [
        ("format", SPLIT_FORMAT.to_owned()),
        ("task", task.to_owned()),
        ("split", split.to_owned()),
        ("class_names", class_names),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let bytes =
        safetensors::tensor::serialize([("images", images), ("labels", labels)], Some(metadata))
            .map_err(|e| st_err(pseudo, e))?;
    canonical_header(&bytes).map_err(|e| st_err(pseudo, e))
}

/// Rewrites a safetensors header with its keys sorted, so that equal splits give equal
/// bytes (the library writes the metadata map in hash order).
///
/// The header is `u64` little-endian length, then JSON padded with spaces to a multiple of
/// 8 bytes; tensor offsets are relative to the end of the header, so only the JSON changes.
fn canonical_header(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("no header length")?;
    let len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|e| e.to_string())?;
    let header = bytes.get(8..8 + len).ok_or("header out of range")?;
    let data = bytes.get(8 + len..).ok_or("data out of range")?;
    let mut parsed: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| e.to_string())?;
    if let Some(meta) = parsed.remove("__metadata__") {
        let sorted: BTreeMap<String, String> =
            serde_json::from_value(meta).map_err(|e| e.to_string())?;
        parsed.insert(
            "__metadata__".to_owned(),
            serde_json::to_value(sorted).map_err(|e| e.to_string())?,
        );
    }
    let mut json = serde_json::to_vec(&parsed).map_err(|e| e.to_string())?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    Ok(out)
}

/// Writes a split file atomically.
pub fn write_split(path: &Path, set: &ImageSet, task: &str, split: &str) -> Result<()> {
    let bytes = split_to_bytes(set, task, split).map_err(|e| match e {
        DataError::Safetensors { message, .. } => st_err(path, message),
        other => other,
    })?;
    madeit_params::fs::write_atomic_creating_parent(path, &bytes).map_err(DataError::from_params)
}

/// Parses split-file bytes; `path` only names the data in errors.
pub fn split_from_bytes(bytes: &[u8], path: &Path) -> Result<SplitFile> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| st_err(path, e))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| st_err(path, e))?;
    let md = meta
        .metadata()
        .as_ref()
        .ok_or_else(|| bad(path, "no metadata"))?;
    let get = |k: &str| {
        md.get(k)
            .ok_or_else(|| bad(path, format!("no `{k}` metadata")))
    };
    if get("format")? != SPLIT_FORMAT {
        return Err(bad(path, format!("format is not {SPLIT_FORMAT}")));
    }
    let class_names: Vec<String> = serde_json::from_str(get("class_names")?)
        .map_err(|e| bad(path, format!("class_names: {e}")))?;
    let images = st.tensor("images").map_err(|e| st_err(path, e))?;
    if images.dtype() != Dtype::U8 {
        return Err(bad(
            path,
            format!("images are {:?}, expected U8", images.dtype()),
        ));
    }
    let [n, c, h, w] = images.shape()[..] else {
        return Err(bad(
            path,
            format!(
                "images have shape {:?}, expected [n, c, h, w]",
                images.shape()
            ),
        ));
    };
    let labels = st.tensor("labels").map_err(|e| st_err(path, e))?;
    if labels.shape() != [n] {
        return Err(bad(
            path,
            format!("labels have shape {:?}, expected [{n}]", labels.shape()),
        ));
    }
    let raw: Vec<i64> = match labels.dtype() {
        Dtype::I64 => labels
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
        Dtype::U32 => labels
            .data()
            .chunks_exact(4)
            .map(|b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        other => {
            return Err(bad(
                path,
                format!("labels are {other:?}, expected I64 or U32"),
            ));
        }
    };
    let labels =
        crate::readers::idx::check_labels(raw, class_names.len(), &path.display().to_string())?;
    let set = ImageSet::from_nchw(images.data(), n, c, h, w, labels, class_names)?;
    Ok(SplitFile {
        task: get("task")?.clone(),
        split: get("split")?.clone(),
        set,
    })
}

/// Reads a split file.
pub fn read_split(path: &Path) -> Result<SplitFile> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    split_from_bytes(&bytes, path)
}

/// The path of a split file: `<out_dir>/<task>/<split>.safetensors`.
pub fn split_path(out_dir: &Path, task: &str, split: Split) -> PathBuf {
    out_dir
        .join(task)
        .join(format!("{}.safetensors", split.name()))
}

/// Writes the [`EXPORTED_SPLITS`] of a task under `<out_dir>/<task>/`; returns the paths.
pub fn export_task(out_dir: &Path, task: &TaskData) -> Result<Vec<PathBuf>> {
    EXPORTED_SPLITS
        .iter()
        .map(|&s| {
            let path = split_path(out_dir, task.spec.name, s);
            write_split(&path, &task.split(s)?, task.spec.name, s.name())?;
            Ok(path)
        })
        .collect()
}
