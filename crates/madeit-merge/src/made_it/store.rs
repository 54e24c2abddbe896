//! Persistent expert store: one safetensors file of factors plus a JSON manifest.
//!
//! # Layout of a store directory
//! - `manifest.json`: format name and version, the [`MadeItConfig`], the absorbed task
//!   ids, per module its weight key, layer, kind, shape, rank and per expert the task ids
//!   it serves, the non-target tensors (running-mean rule), the whole affinity history
//!   (every score, threshold and decision of every step), and the name, size and checksum
//!   of the tensor file it belongs to.
//! - `experts-<step>-<checksum>.safetensors`: all `f32` tensors, keyed
//!   `<module>.expert<N>.U` (`[d_out, r]`), `<module>.expert<N>.s` (`[r]`),
//!   `<module>.expert<N>.V` (`[d_in, r]`), where `<module>` is the weight key without
//!   `.weight` (e.g. `encoder.layers.0.mlp.fc1.expert2.U`), and
//!   `non_target_mean.<name>` for the running mean of non-target task vectors.
//!
//! # Atomicity
//! [`save`] writes the tensor file under a new name (it contains its checksum) to a
//! temporary file, syncs and renames it, then does the same with the manifest, and only
//! then deletes tensor files that the new manifest does not reference. A crash at any
//! point leaves either the old manifest with its (still present) tensor file or the new
//! manifest with its tensor file: [`load`] never sees a manifest whose tensors are missing
//! or from another step, and it verifies the size and checksum anyway.
//!
//! This module is the only I/O of the crate; the algorithm works on in-memory values.

use super::config::MadeItConfig;
use super::evolve::{AbsorbReport, MadeIt, NonTargetMean};
use faer::Mat;
use madeit_experts::{Expert, ModuleExperts};
use madeit_experts::{ExpertsError, Result};
use madeit_experts::{ModuleKind, TargetModule, parse_target_key};
use madeit_params::{ParamDict, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// File name of the manifest inside a store directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Format name written into the manifest and the tensor file's metadata.
pub const STORE_FORMAT: &str = "madeit-experts";
/// Version of the store format this build writes and reads.
pub const STORE_VERSION: u32 = 1;
/// Name of the checksum algorithm recorded in the manifest.
pub const CHECKSUM_ALGORITHM: &str = "fnv1a64-le-words";
/// Key prefix of the non-target running-mean tensors.
pub const NON_TARGET_PREFIX: &str = "non_target_mean.";
const TMP_PREFIX: &str = ".madeit-tmp-";
const TENSOR_PREFIX: &str = "experts-";
const TENSOR_SUFFIX: &str = ".safetensors";

/// Which factor of an expert a tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// Output basis `U`, `[d_out, r]`.
    U,
    /// Singular values `s`, `[r]`.
    S,
    /// Input basis `V`, `[d_in, r]`.
    V,
}

/// Tensor key of a factor: `<module>.expert<N>.{U,s,V}`.
pub fn tensor_key(module: &str, expert: usize, factor: Factor) -> String {
    let f = match factor {
        Factor::U => "U",
        Factor::S => "s",
        Factor::V => "V",
    };
    format!("{module}.expert{expert}.{f}")
}

/// What [`save`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedStore {
    /// Path of the manifest.
    pub manifest: PathBuf,
    /// Path of the tensor file.
    pub tensors: PathBuf,
    /// Size of the tensor file in bytes.
    pub tensor_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    version: u32,
    tensor_file: String,
    tensor_bytes: u64,
    checksum_algorithm: String,
    checksum: String,
    config: MadeItConfig,
    tasks: Vec<u32>,
    modules: Vec<ManifestModule>,
    non_target: Option<ManifestNonTarget>,
    history: Vec<AbsorbReport>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestModule {
    weight_key: String,
    layer: usize,
    kind: ModuleKind,
    d_out: usize,
    d_in: usize,
    rank: usize,
    experts: Vec<ManifestExpert>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestExpert {
    tasks: BTreeSet<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestNonTarget {
    count: usize,
    tensors: Vec<ManifestTensor>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestTensor {
    name: String,
    shape: Vec<usize>,
}

/// FNV-1a over the input as little-endian 64-bit words (the tail zero-padded), then the
/// length: a fast corruption check, not a cryptographic hash.
pub fn checksum(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(PRIME);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        for (d, s) in w.iter_mut().zip(rest) {
            *d = *s;
        }
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(PRIME);
    }
    (h ^ bytes.len() as u64).wrapping_mul(PRIME)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExpertsError + '_ {
    move |source| ExpertsError::StoreIo {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `dir/name` atomically ([`madeit_params::fs::write_atomic`]: a synced
/// temporary file in the same folder, a rename, the folder synced).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    madeit_params::fs::write_atomic(&path, bytes).map_err(|e| match e {
        madeit_params::ParamsError::Io { path, source } => ExpertsError::StoreIo { path, source },
        other => ExpertsError::StoreIo {
            path: path.clone(),
            source: std::io::Error::other(other.to_string()),
        },
    })?;
    Ok(path)
}

fn f32_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

/// Saves `state` into the directory `dir` (created if missing), atomically; see the
/// [module docs](self). Call it after every [`MadeIt::absorb`].
pub fn save(state: &MadeIt, dir: &Path) -> Result<SavedStore> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;

    // Tensors, as (key, shape, little-endian bytes).
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut modules = Vec::with_capacity(state.modules().len());
    for m in state.modules() {
        let name = m.name();
        let mut experts = Vec::with_capacity(m.len());
        for (i, e) in m.experts().iter().enumerate() {
            let r = e.rank();
            let u = e.u();
            let v = e.v();
            tensors.push((
                tensor_key(name, i, Factor::U),
                vec![u.nrows(), r],
                f32_bytes((0..u.nrows()).flat_map(|a| (0..r).map(move |b| u[(a, b)]))),
            ));
            tensors.push((
                tensor_key(name, i, Factor::S),
                vec![r],
                f32_bytes(e.s().iter().copied()),
            ));
            tensors.push((
                tensor_key(name, i, Factor::V),
                vec![v.nrows(), r],
                f32_bytes((0..v.nrows()).flat_map(|a| (0..r).map(move |b| v[(a, b)]))),
            ));
            experts.push(ManifestExpert {
                tasks: e.tasks().clone(),
            });
        }
        let t = m.module();
        modules.push(ManifestModule {
            weight_key: t.weight_key.clone(),
            layer: t.layer,
            kind: t.kind,
            d_out: t.d_out,
            d_in: t.d_in,
            rank: m.rank(),
            experts,
        });
    }
    let non_target = state.non_target_mean().map(|nt| {
        let mut list = Vec::new();
        for (name, t) in nt.mean().iter() {
            tensors.push((
                format!("{NON_TARGET_PREFIX}{name}"),
                t.shape().to_vec(),
                f32_bytes(t.data().iter().copied()),
            ));
            list.push(ManifestTensor {
                name: name.to_owned(),
                shape: t.shape().to_vec(),
            });
        }
        ManifestNonTarget {
            count: nt.count(),
            tensors: list,
        }
    });

    let views = tensors
        .iter()
        .map(|(k, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| ExpertsError::StoreFormat {
                    path: dir.to_owned(),
                    message: format!("cannot encode tensor `{k}`: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    // One entry only: the header serialises a hash map, whose order is not fixed, and
    // equal states must give byte-identical files.
    let metadata = HashMap::from([(
        "format".to_owned(),
        format!("{STORE_FORMAT}/{STORE_VERSION}"),
    )]);
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| ExpertsError::StoreFormat {
            path: dir.to_owned(),
            message: format!("cannot serialise the tensor file: {e}"),
        })?;
    let sum = checksum(&bytes);
    let tensor_file = format!(
        "{TENSOR_PREFIX}{:06}-{sum:016x}{TENSOR_SUFFIX}",
        state.tasks().len()
    );
    let tensors_path = write_atomic(dir, &tensor_file, &bytes)?;

    let manifest = Manifest {
        format: STORE_FORMAT.to_owned(),
        version: STORE_VERSION,
        tensor_file: tensor_file.clone(),
        tensor_bytes: bytes.len() as u64,
        checksum_algorithm: CHECKSUM_ALGORITHM.to_owned(),
        checksum: format!("{sum:016x}"),
        config: state.config().clone(),
        tasks: state.tasks().to_vec(),
        modules,
        non_target,
        history: state.history().to_vec(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ExpertsError::StoreFormat {
        path: dir.join(MANIFEST_FILE),
        message: format!("cannot serialise the manifest: {e}"),
    })?;
    let manifest_path = write_atomic(dir, MANIFEST_FILE, &json)?;

    // Only now is it safe to drop tensor files of earlier saves.
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale_tensors = name.starts_with(TENSOR_PREFIX)
                && name.ends_with(TENSOR_SUFFIX)
                && name != tensor_file;
            // Temporary files of a killed save (and of stores written by earlier versions).
            let stale_tmp =
                name.starts_with(TMP_PREFIX) || madeit_params::fs::is_temp_file_name(name);
            if stale_tensors || stale_tmp {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(SavedStore {
        manifest: manifest_path,
        tensors: tensors_path,
        tensor_bytes: bytes.len() as u64,
    })
}

/// Reads one stored `f32` tensor with the expected shape, checking finiteness.
fn read_tensor(
    st: &SafeTensors<'_>,
    path: &Path,
    key: &str,
    shape: &[usize],
    used: &mut HashSet<String>,
) -> Result<Vec<f32>> {
    let view = st
        .tensor(key)
        .map_err(|_| ExpertsError::StoreMissingTensor {
            path: path.to_owned(),
            tensor: key.to_owned(),
        })?;
    let bad = |message: String| ExpertsError::StoreTensor {
        path: path.to_owned(),
        tensor: key.to_owned(),
        message,
    };
    if view.dtype() != Dtype::F32 {
        return Err(bad(format!("dtype {:?}, expected F32", view.dtype())));
    }
    if view.shape() != shape {
        return Err(bad(format!("shape {:?}, expected {shape:?}", view.shape())));
    }
    let data = view.data();
    if data.len() % 4 != 0 {
        return Err(bad(format!("{} bytes is not a multiple of 4", data.len())));
    }
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(bad(format!("non-finite value at flat index {i}")));
    }
    used.insert(key.to_owned());
    Ok(values)
}

/// Row-major `rows x cols` values as a matrix (the length was checked by the caller).
fn mat_from_row_major(values: &[f32], rows: usize, cols: usize) -> Mat<f32> {
    Mat::from_fn(rows, cols, |i, j| {
        values.get(i * cols + j).copied().unwrap_or(f32::NAN)
    })
}

/// Loads the store in `dir`, verifying the manifest, the tensor file's size and
/// checksum, every tensor's presence, dtype, shape and finiteness, the experts' validity
/// (orthonormal bases, ordered singular values) and the state invariants of
/// [`MadeIt::from_parts`]. Errors name the file and, where one is at fault, the tensor.
pub fn load(dir: &Path) -> Result<MadeIt> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let json = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|e| ExpertsError::StoreFormat {
            path: manifest_path.clone(),
            message: e.to_string(),
        })?;
    if manifest.format != STORE_FORMAT {
        return Err(ExpertsError::StoreFormat {
            path: manifest_path,
            message: format!("format `{}`, expected `{STORE_FORMAT}`", manifest.format),
        });
    }
    if manifest.version != STORE_VERSION {
        return Err(ExpertsError::StoreVersion {
            path: manifest_path,
            found: manifest.version,
            supported: STORE_VERSION,
        });
    }
    if manifest.checksum_algorithm != CHECKSUM_ALGORITHM {
        return Err(ExpertsError::StoreFormat {
            path: manifest_path,
            message: format!(
                "checksum algorithm `{}`, expected `{CHECKSUM_ALGORITHM}`",
                manifest.checksum_algorithm
            ),
        });
    }
    let file = &manifest.tensor_file;
    if file.is_empty() || file.contains(['/', '\\']) || file.starts_with('.') {
        return Err(ExpertsError::StoreFormat {
            path: manifest_path,
            message: format!("tensor file name `{file}` is not a plain file name"),
        });
    }
    let tensor_path = dir.join(file);
    let bytes = fs::read(&tensor_path).map_err(io_err(&tensor_path))?;
    if bytes.len() as u64 != manifest.tensor_bytes {
        return Err(ExpertsError::StoreMismatch {
            path: tensor_path,
            message: format!(
                "{} bytes, the manifest recorded {}",
                bytes.len(),
                manifest.tensor_bytes
            ),
        });
    }
    let sum = format!("{:016x}", checksum(&bytes));
    if sum != manifest.checksum {
        return Err(ExpertsError::StoreMismatch {
            path: tensor_path,
            message: format!(
                "checksum {sum}, the manifest recorded {}",
                manifest.checksum
            ),
        });
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ExpertsError::StoreFormat {
        path: tensor_path.clone(),
        message: e.to_string(),
    })?;

    let mut used = HashSet::new();
    let mut modules = Vec::with_capacity(manifest.modules.len());
    for mm in &manifest.modules {
        if parse_target_key(&mm.weight_key) != Some((mm.layer, mm.kind)) {
            return Err(ExpertsError::StoreFormat {
                path: manifest_path,
                message: format!(
                    "module `{}` is not a target module of layer {}, kind {}",
                    mm.weight_key, mm.layer, mm.kind
                ),
            });
        }
        let target = TargetModule {
            weight_key: mm.weight_key.clone(),
            layer: mm.layer,
            kind: mm.kind,
            d_out: mm.d_out,
            d_in: mm.d_in,
        };
        let name = target.name().to_owned();
        let r = mm.rank;
        let mut experts = Vec::with_capacity(mm.experts.len());
        for (i, me) in mm.experts.iter().enumerate() {
            let mut factor = |f, shape: &[usize]| {
                read_tensor(
                    &st,
                    &tensor_path,
                    &tensor_key(&name, i, f),
                    shape,
                    &mut used,
                )
            };
            let u = factor(Factor::U, &[mm.d_out, r])?;
            let s = factor(Factor::S, &[r])?;
            let v = factor(Factor::V, &[mm.d_in, r])?;
            let expert = Expert::new(
                &name,
                mat_from_row_major(&u, mm.d_out, r),
                s,
                mat_from_row_major(&v, mm.d_in, r),
                me.tasks.clone(),
            )
            .map_err(|e| ExpertsError::StoreTensor {
                path: tensor_path.clone(),
                tensor: format!("{name}.expert{i}"),
                message: e.to_string(),
            })?;
            experts.push(expert);
        }
        let module =
            ModuleExperts::new(target, r, experts).map_err(|e| ExpertsError::StoreInvalid {
                path: manifest_path.clone(),
                source: Box::new(e),
            })?;
        modules.push(module);
    }

    let non_target = match &manifest.non_target {
        None => None,
        Some(nt) => {
            let mut mean = ParamDict::new();
            for t in &nt.tensors {
                let key = format!("{NON_TARGET_PREFIX}{}", t.name);
                let values = read_tensor(&st, &tensor_path, &key, &t.shape, &mut used)?;
                let tensor = Tensor::new(t.shape.clone(), values).map_err(|e| {
                    ExpertsError::StoreTensor {
                        path: tensor_path.clone(),
                        tensor: key.clone(),
                        message: e.to_string(),
                    }
                })?;
                mean.insert(t.name.clone(), tensor);
            }
            Some(
                NonTargetMean::new(nt.count, mean).map_err(|e| ExpertsError::StoreInvalid {
                    path: manifest_path.clone(),
                    source: Box::new(e),
                })?,
            )
        }
    };

    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    if let Some(extra) = names.into_iter().find(|n| !used.contains(n)) {
        return Err(ExpertsError::StoreUnexpectedTensor {
            path: tensor_path,
            tensor: extra,
        });
    }

    MadeIt::from_parts(
        manifest.config,
        modules,
        manifest.tasks,
        manifest.history,
        non_target,
    )
    .map_err(|e| ExpertsError::StoreInvalid {
        path: manifest_path,
        source: Box::new(e),
    })
}
