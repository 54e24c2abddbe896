//! Reading and writing [`ParamDict`]s as safetensors files.
//!
//! File layout (the safetensors format): an 8-byte little-endian header length `n`, `n` bytes
//! of JSON header (`{"__metadata__": {..}, "<name>": {"dtype", "shape", "data_offsets"}, ..}`,
//! padded with spaces to a multiple of 8), then the raw little-endian tensor data.
//!
//! Order: tensors are loaded in the order their names appear in the header. When saving, the
//! header lists tensors in the dictionary's insertion order, so a save/load round trip keeps the
//! order; the data section is laid out with 4-byte tensors (F32) before 2-byte ones (F16,
//! BF16), each group in insertion order, so that every tensor is aligned to its element size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use safetensors::tensor::{Metadata as SafeMetadata, TensorInfo};

use crate::{DType, ParamDict, ParamsError, Tensor};

/// The free-form `__metadata__` string map of a safetensors header.
pub type Metadata = BTreeMap<String, String>;

/// Upper bound on the JSON header length accepted by readers of the format (100 MB).
const MAX_HEADER_SIZE: usize = 100_000_000;

/// The name used in errors for in-memory buffers.
const MEMORY: &str = "<memory>";

/// How [`ParamDict::save_with`] writes a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SaveOptions {
    /// Write every tensor in this dtype; `None` writes each tensor in its own dtype.
    pub dtype: Option<DType>,
    /// The `__metadata__` map to store; `None` writes no `__metadata__` entry.
    pub metadata: Option<Metadata>,
}

impl ParamDict {
    /// Reads a safetensors file. F32, F16 and BF16 tensors are converted to `f32` in memory
    /// (exactly) and remember their storage dtype; any `__metadata__` is dropped (see
    /// [`ParamDict::load_with_metadata`]).
    ///
    /// # Errors
    /// [`ParamsError::Io`] if the file cannot be read, [`ParamsError::Safetensors`] if it is
    /// truncated or corrupt, [`ParamsError::UnsupportedDType`] naming the first tensor stored
    /// in another dtype. All name the file or tensor.
    pub fn load(path: &Path) -> Result<Self, ParamsError> {
        Self::load_with_metadata(path).map(|(d, _)| d)
    }

    /// Reads a safetensors file and its `__metadata__` map (if the header has one).
    ///
    /// # Errors
    /// As [`ParamDict::load`].
    pub fn load_with_metadata(path: &Path) -> Result<(Self, Option<Metadata>), ParamsError> {
        let io_err = |source| ParamsError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        decode(BufReader::with_capacity(1 << 20, file), len, path)
    }

    /// Parses an in-memory safetensors buffer (errors name the file `<memory>`).
    ///
    /// # Errors
    /// As [`ParamDict::load`].
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<(Self, Option<Metadata>), ParamsError> {
        decode(
            std::io::Cursor::new(bytes),
            bytes.len() as u64,
            Path::new(MEMORY),
        )
    }

    /// Writes a safetensors file, each tensor in its own dtype, atomically (see
    /// [`ParamDict::save_with`]).
    ///
    /// # Errors
    /// As [`ParamDict::save_with`].
    pub fn save(&self, path: &Path) -> Result<(), ParamsError> {
        self.save_with(path, &SaveOptions::default())
    }

    /// Writes a safetensors file with every tensor converted to `dtype`.
    ///
    /// # Errors
    /// As [`ParamDict::save_with`].
    pub fn save_as(&self, path: &Path, dtype: DType) -> Result<(), ParamsError> {
        self.save_with(
            path,
            &SaveOptions {
                dtype: Some(dtype),
                metadata: None,
            },
        )
    }

    /// Writes a safetensors file, each tensor in its own dtype, with a `__metadata__` map.
    ///
    /// # Errors
    /// As [`ParamDict::save_with`].
    pub fn save_with_metadata(&self, path: &Path, metadata: &Metadata) -> Result<(), ParamsError> {
        self.save_with(
            path,
            &SaveOptions {
                dtype: None,
                metadata: Some(metadata.clone()),
            },
        )
    }

    /// Writes a safetensors file atomically: the data goes to a temporary file in the same
    /// directory, which is flushed, `fsync`ed and then renamed over `path`. On any failure the
    /// temporary file is removed and a file already at `path` is left untouched. The directory
    /// is `fsync`ed after the rename on a best-effort basis.
    ///
    /// Values are rounded to nearest (ties to even) when written as F16/BF16.
    ///
    /// # Errors
    /// [`ParamsError::DTypeOverflow`] if a finite value does not fit the target dtype (e.g.
    /// `1e5` as F16), [`ParamsError::Safetensors`] if the header would be too large,
    /// [`ParamsError::Io`] naming `path` on any file-system error.
    pub fn save_with(&self, path: &Path, options: &SaveOptions) -> Result<(), ParamsError> {
        crate::fs::write_atomic_with(path, |w| self.write_safetensors(w, options, path))
    }

    /// Serialises to an in-memory safetensors buffer (same layout as [`ParamDict::save_with`]).
    ///
    /// # Errors
    /// As [`ParamDict::save_with`], minus the file-system errors.
    pub fn to_safetensors_bytes(&self, options: &SaveOptions) -> Result<Vec<u8>, ParamsError> {
        let mut buf = Vec::new();
        self.write_safetensors(&mut buf, options, Path::new(MEMORY))?;
        Ok(buf)
    }

    /// Streams the safetensors encoding to `w`; `path` is only used in errors.
    fn write_safetensors<W: Write + ?Sized>(
        &self,
        w: &mut W,
        options: &SaveOptions,
        path: &Path,
    ) -> Result<(), ParamsError> {
        let io_err = |source| ParamsError::Io {
            path: path.to_owned(),
            source,
        };
        let dtype_of = |t: &Tensor| options.dtype.unwrap_or(t.dtype());

        // Data order: larger elements first (alignment), insertion order within a size.
        let mut order: Vec<(&str, &Tensor)> = self.iter().collect();
        order.sort_by_key(|(_, t)| std::cmp::Reverse(dtype_of(t).size_bytes()));
        let mut offsets: IndexMap<&str, (usize, usize)> = IndexMap::with_capacity(order.len());
        let mut offset = 0usize;
        for &(name, t) in &order {
            let len = t
                .numel()
                .checked_mul(dtype_of(t).size_bytes())
                .ok_or_else(|| ParamsError::ShapeOverflow {
                    name: name.to_owned(),
                    shape: t.shape().to_vec(),
                })?;
            let end = offset
                .checked_add(len)
                .ok_or_else(|| ParamsError::ShapeOverflow {
                    name: name.to_owned(),
                    shape: t.shape().to_vec(),
                })?;
            offsets.insert(name, (offset, end));
            offset = end;
        }

        // Header in insertion order.
        let json_err = |e: serde_json::Error| ParamsError::Safetensors {
            path: path.to_owned(),
            message: format!("cannot encode header: {e}"),
        };
        let mut header: IndexMap<&str, serde_json::Value> = IndexMap::with_capacity(self.len() + 1);
        if let Some(meta) = &options.metadata {
            header.insert(
                "__metadata__",
                serde_json::to_value(meta).map_err(json_err)?,
            );
        }
        for (name, t) in self.iter() {
            if name == "__metadata__" {
                return Err(ParamsError::Safetensors {
                    path: path.to_owned(),
                    message: "a tensor may not be called `__metadata__`".to_owned(),
                });
            }
            let data_offsets = offsets.get(name).copied().unwrap_or((0, 0));
            let info = TensorInfo {
                dtype: dtype_of(t).to_safetensors(),
                shape: t.shape().to_vec(),
                data_offsets,
            };
            header.insert(name, serde_json::to_value(&info).map_err(json_err)?);
        }
        let mut header_bytes = serde_json::to_vec(&header).map_err(json_err)?;
        header_bytes.resize(header_bytes.len().next_multiple_of(8), b' ');
        if header_bytes.len() > MAX_HEADER_SIZE {
            return Err(ParamsError::Safetensors {
                path: path.to_owned(),
                message: format!(
                    "header of {} bytes exceeds the format's limit of {MAX_HEADER_SIZE}",
                    header_bytes.len()
                ),
            });
        }

        w.write_all(&(header_bytes.len() as u64).to_le_bytes())
            .map_err(io_err)?;
        w.write_all(&header_bytes).map_err(io_err)?;
        let mut chunk: Vec<u8> = Vec::with_capacity(1 << 16);
        for &(name, t) in &order {
            let dtype = dtype_of(t);
            for (block_idx, block) in t.data().chunks(1 << 14).enumerate() {
                chunk.clear();
                encode_block(block, dtype, &mut chunk).map_err(|index| {
                    let index = block_idx * (1 << 14) + index;
                    ParamsError::DTypeOverflow {
                        name: name.to_owned(),
                        index,
                        value: t.data().get(index).copied().unwrap_or(f32::NAN),
                        dtype,
                    }
                })?;
                w.write_all(&chunk).map_err(io_err)?;
            }
        }
        Ok(())
    }
}

/// Appends the little-endian encoding of `block` in `dtype` to `out`; on overflow of a
/// finite value returns its index in `block`.
fn encode_block(block: &[f32], dtype: DType, out: &mut Vec<u8>) -> Result<(), usize> {
    match dtype {
        DType::F32 => {
            for &x in block {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        DType::F16 => encode_half(block, out, |x| {
            let y = half::f16::from_f32(x);
            (y.is_finite(), y.to_le_bytes())
        })?,
        DType::BF16 => encode_half(block, out, |x| {
            let y = half::bf16::from_f32(x);
            (y.is_finite(), y.to_le_bytes())
        })?,
    }
    Ok(())
}

/// Appends the 2-byte encodings of `block` (`convert` gives whether the rounded value is
/// finite, and its little-endian bytes); on overflow of a finite value returns its index.
fn encode_half(
    block: &[f32],
    out: &mut Vec<u8>,
    convert: impl Fn(f32) -> (bool, [u8; 2]),
) -> Result<(), usize> {
    for (i, &x) in block.iter().enumerate() {
        let (finite, bytes) = convert(x);
        if x.is_finite() && !finite {
            return Err(i);
        }
        out.extend_from_slice(&bytes);
    }
    Ok(())
}

/// Reads a safetensors stream of `total_len` bytes tensor by tensor (so that peak memory is the
/// decoded `f32` data plus one tensor's raw bytes); `path` is only used in errors.
///
/// Validation matches the reference reader: header length within bounds, header valid UTF-8
/// JSON, offsets contiguous from 0 and consistent with dtype × shape, and the data section
/// ending exactly at the end of the file.
fn decode<R: Read + Seek>(
    mut r: R,
    total_len: u64,
    path: &Path,
) -> Result<(ParamDict, Option<Metadata>), ParamsError> {
    let bad = |message: String| ParamsError::Safetensors {
        path: PathBuf::from(path),
        message,
    };
    let io_err = |source| ParamsError::Io {
        path: PathBuf::from(path),
        source,
    };
    if total_len < 8 {
        return Err(bad(format!(
            "file of {total_len} bytes is too short for the 8-byte header length"
        )));
    }
    let mut len_bytes = [0u8; 8];
    r.read_exact(&mut len_bytes).map_err(io_err)?;
    // A file that is not safetensors at all is recognised by its first bytes, once they
    // fail as a header (the first bytes of a valid header length can look like a magic).
    let bad = |message: String| match foreign_format(&len_bytes) {
        Some(what) => ParamsError::UnsupportedCheckpoint {
            path: PathBuf::from(path),
            message: format!("{what}, not a safetensors file. {CONVERT_HINT}"),
        },
        None => bad(message),
    };
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_SIZE as u64 {
        return Err(bad(format!(
            "header length {n} exceeds the format's limit of {MAX_HEADER_SIZE} bytes"
        )));
    }
    let data_start = 8 + n;
    if data_start > total_len {
        return Err(bad(format!(
            "header length {n} runs past the end of the file ({total_len} bytes)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    r.read_exact(&mut header).map_err(io_err)?;
    let header_str =
        std::str::from_utf8(&header).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let meta: SafeMetadata =
        serde_json::from_str(header_str).map_err(|e| bad(format!("invalid header: {e}")))?;
    let data_len = total_len - data_start;
    if meta.data_len() as u64 != data_len {
        return Err(bad(format!(
            "header describes {} bytes of tensor data but the file holds {data_len}",
            meta.data_len()
        )));
    }
    // The validated header, re-read only for the order in which it lists the tensors.
    let names: IndexMap<String, serde::de::IgnoredAny> =
        serde_json::from_str(header_str).map_err(|e| bad(format!("invalid header: {e}")))?;

    let mut dict = ParamDict::new();
    let mut raw: Vec<u8> = Vec::new();
    let mut pos = data_start;
    for name in names.keys().filter(|k| k.as_str() != "__metadata__") {
        let info = meta
            .info(name)
            .ok_or_else(|| bad(format!("tensor `{name}` listed but not indexed")))?;
        let dtype =
            DType::from_safetensors(info.dtype).ok_or_else(|| ParamsError::UnsupportedDType {
                name: name.clone(),
                dtype: info.dtype.to_string(),
            })?;
        let (s, e) = info.data_offsets;
        let start = data_start + s as u64;
        // Files list tensors in data order, so seeking (which drops the read buffer) is rare.
        if pos != start {
            r.seek(SeekFrom::Start(start)).map_err(io_err)?;
        }
        pos = data_start + e as u64;
        let values: Vec<f32> = if dtype == DType::F32 && (e - s) % 4 == 0 {
            // Straight into the tensor's buffer: one copy instead of two.
            let mut values = vec![0.0f32; (e - s) / 4];
            r.read_exact(bytemuck::cast_slice_mut(&mut values))
                .map_err(io_err)?;
            if cfg!(target_endian = "big") {
                for x in &mut values {
                    *x = f32::from_bits(u32::from_le(x.to_bits()));
                }
            }
            values
        } else {
            raw.clear();
            raw.resize(e - s, 0);
            r.read_exact(&mut raw).map_err(io_err)?;
            decode_values(dtype, &raw)
        };
        let t = Tensor::new(info.shape.clone(), values)
            .map_err(|e| e.in_tensor(name))?
            .with_dtype(dtype);
        dict.insert(name.clone(), t);
    }
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    Ok((dict, metadata))
}

/// Little-endian tensor bytes of `dtype` as `f32` values (a trailing partial element is
/// dropped; the shape check that follows reports the count).
fn decode_values(dtype: DType, raw: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => decode_chunks(raw, f32::from_le_bytes),
        DType::F16 => decode_chunks(raw, |c| half::f16::from_le_bytes(c).to_f32()),
        DType::BF16 => decode_chunks(raw, |c| half::bf16::from_le_bytes(c).to_f32()),
    }
}

/// Decodes each whole `N`-byte element of `raw` with `decode` (a trailing partial element is
/// dropped).
fn decode_chunks<const N: usize>(raw: &[u8], decode: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    let (chunks, _) = raw.as_chunks::<N>();
    chunks.iter().map(|c| decode(*c)).collect()
}

/// How to turn a PyTorch pickle checkpoint into one madeit reads.
const CONVERT_HINT: &str = "madeit reads only safetensors weights (unpickling a PyTorch file \
    can run arbitrary code); convert it once with `python -c \"import torch; from \
    safetensors.torch import save_file; save_file(torch.load('pytorch_model.bin', \
    weights_only=True), 'model.safetensors')\"`, or save the model with transformers' \
    `save_pretrained(dir, safe_serialization=True)`";

/// Recognises the first bytes of weight files in other formats.
fn foreign_format(head: &[u8; 8]) -> Option<&'static str> {
    match head {
        [b'P', b'K', 3, 4, ..] => Some("a zip archive (the format of `torch.save`)"),
        [0x80, 2..=5, ..] => Some("a Python pickle (a PyTorch `.bin` / `.pt` file)"),
        [0x89, b'H', b'D', b'F', ..] => Some("an HDF5 file (a Keras / TensorFlow `.h5` file)"),
        _ => None,
    }
}

/// The weights file of a Hugging Face checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The index of a sharded Hugging Face checkpoint (`weight_map`: tensor name -> shard file).
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Weight files of other formats that a checkpoint folder may hold instead.
const FOREIGN_FILES: [&str; 6] = [
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "flax_model.msgpack",
    "model.pt",
    "model.pth",
];

/// The index file of a sharded checkpoint.
#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: IndexMap<String, String>,
}

impl ParamDict {
    /// Reads the weights of a checkpoint: a `.safetensors` file, or a Hugging Face folder
    /// holding `model.safetensors` or a sharded checkpoint (`model.safetensors.index.json`
    /// plus the shard files it names). The tensors of a sharded checkpoint are checked
    /// against the index: every tensor the index names is in the shard it names, and no
    /// shard holds a tensor the index does not list.
    ///
    /// # Errors
    /// [`ParamsError::UnsupportedCheckpoint`] for a folder that holds weights in another
    /// format (a PyTorch `.bin` pickle, TensorFlow, Flax), with how to convert them, or that
    /// holds no weights at all; [`ParamsError::Safetensors`] for an index that does not parse
    /// or does not match its shards; otherwise as [`ParamDict::load`].
    pub fn load_checkpoint(path: &Path) -> Result<Self, ParamsError> {
        if !path.is_dir() {
            return Self::load(path);
        }
        let single = path.join(WEIGHTS_FILE);
        if single.is_file() {
            return Self::load(&single);
        }
        let index = path.join(INDEX_FILE);
        if index.is_file() {
            return load_sharded(path, &index);
        }
        let foreign: Vec<&str> = FOREIGN_FILES
            .iter()
            .copied()
            .filter(|f| path.join(f).exists())
            .collect();
        let message = if foreign.is_empty() {
            format!("the folder holds neither `{WEIGHTS_FILE}` nor a sharded `{INDEX_FILE}`")
        } else {
            format!(
                "the folder holds `{}` but no `{WEIGHTS_FILE}`. {CONVERT_HINT}",
                foreign.join("`, `")
            )
        };
        Err(ParamsError::UnsupportedCheckpoint {
            path: path.to_path_buf(),
            message,
        })
    }
}

/// Reads the shards an index names, in the order of their first appearance.
fn load_sharded(dir: &Path, index: &Path) -> Result<ParamDict, ParamsError> {
    let bad = |message: String| ParamsError::Safetensors {
        path: index.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|source| ParamsError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let parsed: ShardIndex = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not a sharded-checkpoint index: {e}")))?;
    let mut shards: Vec<&str> = Vec::new();
    for file in parsed.weight_map.values() {
        let plain = Path::new(file)
            .file_name()
            .is_some_and(|n| n == std::ffi::OsStr::new(file));
        if !plain || file.starts_with('.') {
            return Err(bad(format!(
                "shard `{file}` is not a plain file name in the checkpoint folder"
            )));
        }
        if !shards.contains(&file.as_str()) {
            shards.push(file);
        }
    }
    if shards.is_empty() {
        return Err(bad("the index lists no tensors".to_owned()));
    }
    let mut dict = ParamDict::new();
    for shard in shards {
        let file = dir.join(shard);
        let part = ParamDict::load(&file)?;
        for (name, t) in part {
            match parsed.weight_map.get(&name) {
                Some(s) if s == shard => {}
                Some(s) => {
                    return Err(bad(format!(
                        "tensor `{name}` is in `{shard}`, but the index puts it in `{s}`"
                    )));
                }
                None => {
                    return Err(bad(format!(
                        "shard `{shard}` holds tensor `{name}`, which the index does not list"
                    )));
                }
            }
            if dict.contains(&name) {
                return Err(bad(format!("tensor `{name}` is in more than one shard")));
            }
            dict.insert(name, t);
        }
    }
    if let Some(name) = parsed.weight_map.keys().find(|k| !dict.contains(k)) {
        let shard = parsed.weight_map.get(name).map_or("", String::as_str);
        return Err(bad(format!(
            "the index puts tensor `{name}` in `{shard}`, which does not hold it"
        )));
    }
    Ok(dict)
}
