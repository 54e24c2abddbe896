//! Saved merger state, fingerprints of models and the bookkeeping shared by every method.

use std::fmt;

use madeit_params::{DType, ParamDict, ParamsError, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use indexmap::IndexMap;

use crate::{MergeError, MethodConfig, StepReport, TaskId};

/// Identifies the metadata of a saved merger state.
pub const STATE_FORMAT: &str = "madeit-merge-state";
/// Version of the saved-state layout written by this crate.
pub const STATE_VERSION: u32 = 1;

/// A 128-bit fingerprint of a set of named tensors: their names, shapes, storage dtypes and
/// the exact bits of every value (independent of the order of the tensors).
///
/// It is a fast non-cryptographic hash (two independent 64-bit multiply–xorshift lanes over
/// the raw bits, finalised with the SplitMix64 mixer), meant to catch accidents — the same
/// fine-tuned model fed twice, a different pretrained model passed mid-stream — not
/// adversaries. Written as 32 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(u128);

impl Fingerprint {
    /// The fingerprint of every tensor of `params`.
    #[must_use]
    pub fn of_params(params: &ParamDict) -> Self {
        let mut per_tensor: Vec<(&str, u128)> = params
            .iter()
            .collect::<Vec<_>>()
            .par_iter()
            .map(|&(name, t)| (name, tensor_hash(name, t)))
            .collect();
        per_tensor.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Self::combine(per_tensor.iter().map(|&(_, h)| h))
    }

    /// Folds per-tensor hashes (in a fixed order) into one fingerprint.
    pub(crate) fn combine(hashes: impl Iterator<Item = u128>) -> Self {
        let (mut a, mut b) = (SEED_A, SEED_B);
        let mut n = 0u64;
        for h in hashes {
            a = splitmix(a ^ (h as u64));
            b = splitmix(b ^ ((h >> 64) as u64));
            n += 1;
        }
        a = splitmix(a ^ n);
        b = splitmix(b ^ n.rotate_left(32));
        Self((u128::from(b) << 64) | u128::from(a))
    }

    /// The raw 128-bit value.
    #[must_use]
    pub fn value(self) -> u128 {
        self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 32 {
            return Err(serde::de::Error::custom(format!(
                "a fingerprint has 32 hexadecimal digits, got `{s}`"
            )));
        }
        u128::from_str_radix(&s, 16)
            .map(Self)
            .map_err(|_| serde::de::Error::custom(format!("invalid fingerprint `{s}`")))
    }
}

const SEED_A: u64 = 0x243f_6a88_85a3_08d3;
const SEED_B: u64 = 0x1319_8a2e_0370_7344;
const MUL_A: u64 = 0x9e37_79b9_7f4a_7c15;
const MUL_B: u64 = 0xc2b2_ae3d_27d4_eb4f;

// SplitMix64 finaliser: a bijective avalanche mix of 64 bits.
use madeit_linalg::random::mix64 as splitmix;

/// A streaming 128-bit hash: four independent lanes of two 64-bit multiply–rotate states
/// (so the multiplications pipeline), folded with SplitMix64 at the end.
struct Hasher {
    a: [u64; LANES],
    b: [u64; LANES],
    pending: [u64; LANES],
    filled: usize,
    words: u64,
}

const LANES: usize = 4;

impl Hasher {
    fn new() -> Self {
        let mut a = [SEED_A; LANES];
        let mut b = [SEED_B; LANES];
        for (i, (x, y)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
            *x ^= i as u64;
            *y = y.wrapping_add(i as u64);
        }
        Self {
            a,
            b,
            pending: [0; LANES],
            filled: 0,
            words: 0,
        }
    }

    #[inline(always)]
    fn block(&mut self, w: [u64; LANES]) {
        for ((a, b), w) in self.a.iter_mut().zip(self.b.iter_mut()).zip(w) {
            *a = (*a ^ w).wrapping_mul(MUL_A).rotate_left(29);
            *b = (b.wrapping_add(w) ^ (*b >> 31)).wrapping_mul(MUL_B);
        }
    }

    /// Feeds one 64-bit word.
    #[inline]
    fn word(&mut self, w: u64) {
        self.pending[self.filled] = w;
        self.filled += 1;
        self.words += 1;
        if self.filled == LANES {
            self.block(self.pending);
            self.filled = 0;
        }
    }

    /// Feeds the bits of a slice of `f32`s, two values per word (the word sequence does not
    /// depend on how a tensor is split into calls, as long as each call but the last gets
    /// an even number of values).
    fn floats(&mut self, data: &[f32]) {
        let pair = |p: &[f32]| -> u64 {
            p.iter().enumerate().fold(0u64, |acc, (i, x)| {
                acc | (u64::from(x.to_bits()) << (32 * i))
            })
        };
        // Align to a block boundary word by word.
        let mut start = 0;
        while self.filled != 0 {
            match data.get(start..start + 2) {
                Some(p) => self.word(pair(p)),
                None => break,
            }
            start += 2;
        }
        let rest = data.get(start..).unwrap_or_default();
        let mut blocks = rest.chunks_exact(2 * LANES);
        for c in &mut blocks {
            let mut w = [0u64; LANES];
            for (slot, p) in w.iter_mut().zip(c.chunks_exact(2)) {
                *slot = pair(p);
            }
            self.block(w);
            self.words += LANES as u64;
        }
        let mut tail = blocks.remainder().chunks_exact(2);
        for p in &mut tail {
            self.word(pair(p));
        }
        for x in tail.remainder() {
            self.word(u64::from(x.to_bits()));
        }
    }

    fn finish(mut self) -> u128 {
        let words = self.words;
        while self.filled != 0 {
            self.word(0);
        }
        let (mut a, mut b) = (words, !words);
        for i in 0..LANES {
            a = splitmix(a ^ self.a[i]);
            b = splitmix(b ^ self.b[i]);
        }
        (u128::from(b) << 64) | u128::from(a)
    }
}

/// Hashes the header of a named tensor (name, shape, dtype).
fn header_hasher(name: &str, t: &Tensor) -> Hasher {
    let mut h = Hasher::new();
    for chunk in name.as_bytes().chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h.word(u64::from_le_bytes(w));
    }
    h.word(name.len() as u64);
    for &d in t.shape() {
        h.word(d as u64);
    }
    h.word(t.shape().len() as u64);
    h.word(match t.dtype() {
        DType::F32 => 1,
        DType::F16 => 2,
        DType::BF16 => 3,
        _ => 4,
    });
    h
}

/// Hashes one named tensor (name, shape, dtype, value bits) to 128 bits.
pub(crate) fn tensor_hash(name: &str, t: &Tensor) -> u128 {
    let mut h = header_hasher(name, t);
    h.floats(t.data());
    h.word(t.numel() as u64);
    h.finish()
}

/// One pass over a pretrained tensor `p` and the matching fine-tuned tensor `f`: both
/// hashes (as [`tensor_hash`]), `Σ (f − p)²` in `f64`, and whether each is finite.
fn scan_pair(name: &str, p: &Tensor, f: &Tensor) -> (u128, u128, f64, bool, bool) {
    const CHUNK: usize = 4096;
    let (mut hp, mut hf) = (header_hasher(name, p), header_hasher(name, f));
    let (mut sq, mut p_ok, mut f_ok) = (0.0f64, true, true);
    for (pc, fc) in p.data().chunks(CHUNK).zip(f.data().chunks(CHUNK)) {
        hp.floats(pc);
        hf.floats(fc);
        sq += squared_distance(pc, fc);
        p_ok &= madeit_params::all_finite(pc);
        f_ok &= madeit_params::all_finite(fc);
    }
    hp.word(p.numel() as u64);
    hf.word(f.numel() as u64);
    (hp.finish(), hf.finish(), sq, p_ok, f_ok)
}

/// `Σ (f − p)²` in `f64`, in eight interleaved partial sums (a single running sum is one
/// long chain of dependent additions; eight vectorise and round no worse).
fn squared_distance(p: &[f32], f: &[f32]) -> f64 {
    let (pb, pt) = p.as_chunks::<8>();
    let (fb, ft) = f.as_chunks::<8>();
    let mut lanes = [0.0f64; 8];
    for (a, b) in pb.iter().zip(fb) {
        for ((l, &x), &y) in lanes.iter_mut().zip(a).zip(b) {
            let d = f64::from(y) - f64::from(x);
            *l += d * d;
        }
    }
    let tail: f64 = pt
        .iter()
        .zip(ft)
        .map(|(&x, &y)| (f64::from(y) - f64::from(x)).powi(2))
        .sum();
    lanes.iter().sum::<f64>() + tail
}

/// Serialises an `f64` exactly, as the 16 hexadecimal digits of its bits (`"0x3ff0..."`),
/// so that a saved stream resumes bit-identically whatever JSON reader is used.
pub mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `0x` followed by the 16 hex digits of `x.to_bits()`.
    ///
    /// # Errors
    /// Those of the serializer.
    #[allow(clippy::trivially_copy_pass_by_ref)]
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#018x}", x.to_bits()))
    }

    /// Reads what [`serialize`] wrote.
    ///
    /// # Errors
    /// A custom error for anything but `0x` and 16 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let s = String::deserialize(d)?;
        s.strip_prefix("0x")
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .map(f64::from_bits)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "expected an exact f64 as `0x` and 16 hex digits, got `{s}`"
                ))
            })
    }
}

/// One absorbed task, as recorded in the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    /// Task name.
    pub task: TaskId,
    /// Fingerprint of the task's fine-tuned model. The pretrained model is pinned by its own
    /// fingerprint, so this identifies the task vector `τ = θ_t − θ_0` exactly.
    pub fingerprint: Fingerprint,
    /// `‖τ_t‖₂` (exact bits).
    #[serde(with = "exact_f64")]
    pub task_vector_norm: f64,
}

/// The JSON part of a saved merger state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateMetadata {
    /// Always [`STATE_FORMAT`].
    pub format: String,
    /// Layout version ([`STATE_VERSION`]).
    pub version: u32,
    /// The method and its configuration.
    pub config: MethodConfig,
    /// Fingerprint of the pretrained model, once a task has been absorbed.
    pub pretrained: Option<Fingerprint>,
    /// Absorbed tasks, in order.
    pub tasks: Vec<TaskRecord>,
    /// Method-specific scalars (exact bits where they matter).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A saved merger: named `f32` tensors plus [`StateMetadata`].
///
/// Store the tensors with `ParamDict::save` (they are all tagged `F32`, so the round trip is
/// exact) and the metadata with [`MergerState::metadata_json`] (for example in the
/// safetensors `__metadata__` map); rebuild with [`MergerState::from_parts`] and resume with
/// [`crate::resume`] or [`ContinualMerger::restore`](crate::ContinualMerger::restore).
#[derive(Debug, Clone, PartialEq)]
pub struct MergerState {
    /// Configuration, tasks, fingerprints and scalars.
    pub metadata: StateMetadata,
    /// Method-specific tensors (for the weight-space methods `merged.<name>` or
    /// `tau_max.<name>`).
    pub tensors: ParamDict,
}

impl MergerState {
    /// The method this state belongs to.
    #[must_use]
    pub fn method(&self) -> &'static str {
        self.metadata.config.name()
    }

    /// The metadata as compact JSON.
    ///
    /// # Errors
    /// [`MergeError::InvalidState`] if serialisation fails (it does not for states built by
    /// this crate).
    pub fn metadata_json(&self) -> Result<String, MergeError> {
        serde_json::to_string(&self.metadata).map_err(|e| MergeError::InvalidState {
            method: self.method(),
            reason: format!("cannot serialise metadata: {e}"),
        })
    }

    /// Rebuilds a state from the JSON written by [`metadata_json`](Self::metadata_json) and
    /// the saved tensors.
    ///
    /// # Errors
    /// [`MergeError::InvalidConfig`] for malformed JSON (including an unknown method or key)
    /// or a wrong format tag or version.
    pub fn from_parts(metadata_json: &str, tensors: ParamDict) -> Result<Self, MergeError> {
        let metadata: StateMetadata =
            serde_json::from_str(metadata_json).map_err(|e| MergeError::InvalidConfig {
                method: None,
                message: format!("merger state metadata: {e}"),
            })?;
        if metadata.format != STATE_FORMAT || metadata.version != STATE_VERSION {
            return Err(MergeError::InvalidConfig {
                method: Some(metadata.config.name().to_owned()),
                message: format!(
                    "merger state has format `{}` version {}, expected `{STATE_FORMAT}` version {STATE_VERSION}",
                    metadata.format, metadata.version
                ),
            });
        }
        Ok(Self { metadata, tensors })
    }
}

/// Validation and bookkeeping shared by every method: the pretrained fingerprint and the
/// record of absorbed tasks.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Ledger {
    pub(crate) pretrained: Option<Fingerprint>,
    pub(crate) tasks: Vec<TaskRecord>,
}

/// A task that passed every check, not yet committed.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    pub(crate) pretrained: Fingerprint,
    pub(crate) record: TaskRecord,
}

impl Ledger {
    /// Checks a new task against the pretrained model and the tasks seen so far, and
    /// computes its fingerprint and task-vector norm. Mutates nothing.
    pub(crate) fn admit(
        &self,
        pretrained: &ParamDict,
        finetuned: &ParamDict,
        task: &TaskId,
    ) -> Result<Admitted, MergeError> {
        if self.tasks.iter().any(|r| &r.task == task) {
            return Err(MergeError::DuplicateTaskName { task: task.clone() });
        }
        if pretrained.is_empty() || pretrained.numel() == 0 {
            return Err(MergeError::EmptyModel);
        }
        pretrained
            .check_compatible(finetuned)
            .map_err(|source| MergeError::Incompatible {
                task: task.clone(),
                source,
            })?;
        let names: Vec<&str> = pretrained.keys().collect();
        let scanned: Vec<(&str, u128, u128, f64, bool, bool)> = names
            .par_iter()
            .map(|&name| {
                let p = pretrained.get(name)?;
                let f = finetuned.get(name)?;
                let (hp, hf, sq, p_ok, f_ok) = scan_pair(name, p, f);
                Ok((name, hp, hf, sq, p_ok, f_ok))
            })
            .collect::<Result<_, ParamsError>>()
            .map_err(|source| MergeError::Incompatible {
                task: task.clone(),
                source,
            })?;
        if scanned.iter().any(|s| !s.5) {
            // Let the sequential check name the first offending tensor and index.
            finetuned
                .check_finite()
                .map_err(|source| MergeError::NonFinite {
                    task: task.clone(),
                    source,
                })?;
        }
        if self.pretrained.is_none() && scanned.iter().any(|s| !s.4) {
            pretrained
                .check_finite()
                .map_err(|source| MergeError::NonFinitePretrained { source })?;
        }
        let mut sorted: Vec<&(&str, u128, u128, f64, bool, bool)> = scanned.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let fp_pre = Fingerprint::combine(sorted.iter().map(|s| s.1));
        let fp_task = Fingerprint::combine(sorted.iter().map(|s| s.2));
        let norm = scanned.iter().map(|s| s.3).sum::<f64>().sqrt();
        if let Some(expected) = self.pretrained
            && expected != fp_pre
        {
            return Err(MergeError::PretrainedChanged {
                expected,
                got: fp_pre,
            });
        }
        if let Some(prev) = self.tasks.iter().find(|r| r.fingerprint == fp_task) {
            return Err(MergeError::DuplicateTask {
                task: task.clone(),
                previous: prev.task.clone(),
            });
        }
        Ok(Admitted {
            pretrained: fp_pre,
            record: TaskRecord {
                task: task.clone(),
                fingerprint: fp_task,
                task_vector_norm: norm,
            },
        })
    }

    /// Records an admitted task.
    pub(crate) fn commit(&mut self, admitted: Admitted) {
        self.pretrained = Some(admitted.pretrained);
        self.tasks.push(admitted.record);
    }

    /// Records an admitted task and returns the report of its step (the number of tasks
    /// absorbed, this one included) for `method`.
    pub(crate) fn commit_step(
        &mut self,
        admitted: Admitted,
        method: &str,
        merged_delta_norm: f64,
        metrics: IndexMap<String, f64>,
    ) -> StepReport {
        let task = admitted.record.task.clone();
        let task_vector_norm = admitted.record.task_vector_norm;
        self.commit(admitted);
        StepReport {
            method: method.to_owned(),
            step: self.tasks.len(),
            task,
            task_vector_norm,
            merged_delta_norm,
            metrics,
        }
    }

    /// The state of a method that keeps one set of tensors, saved under `prefix`, and no
    /// other data.
    pub(crate) fn dict_state(
        &self,
        config: MethodConfig,
        prefix: &str,
        params: &ParamDict,
    ) -> MergerState {
        let mut tensors = ParamDict::new();
        export_tensors(&mut tensors, prefix, params);
        MergerState {
            metadata: self.metadata(config, serde_json::Value::Null),
            tensors,
        }
    }

    /// The ledger and the tensors of a state written by [`Ledger::dict_state`], after
    /// checking that it belongs to `config` and holds only tensors under `prefix`.
    pub(crate) fn restore_dict(
        method: &'static str,
        config: &MethodConfig,
        state: &MergerState,
        prefix: &str,
    ) -> Result<(Self, ParamDict), MergeError> {
        let ledger = Self::from_state(method, config, state)?;
        check_state_tensors(method, state, prefix)?;
        Ok((ledger, import_tensors(state, prefix)))
    }

    /// Checks that a merged model can be built: at least one task, and `pretrained` is the
    /// model the stream was built on.
    pub(crate) fn check_merged(
        &self,
        method: &'static str,
        pretrained: &ParamDict,
    ) -> Result<(), MergeError> {
        let Some(expected) = self.pretrained else {
            return Err(MergeError::EmptyStream { method });
        };
        let got = Fingerprint::of_params(pretrained);
        if got != expected {
            return Err(MergeError::PretrainedChanged { expected, got });
        }
        Ok(())
    }

    /// Task names, in order.
    pub(crate) fn task_ids(&self) -> Vec<TaskId> {
        self.tasks.iter().map(|r| r.task.clone()).collect()
    }

    /// The metadata of a state with this ledger.
    pub(crate) fn metadata(&self, config: MethodConfig, extra: serde_json::Value) -> StateMetadata {
        StateMetadata {
            format: STATE_FORMAT.to_owned(),
            version: STATE_VERSION,
            config,
            pretrained: self.pretrained,
            tasks: self.tasks.clone(),
            extra,
        }
    }

    /// The ledger recorded in a state, after checking that it belongs to `config`.
    pub(crate) fn from_state(
        method: &'static str,
        config: &MethodConfig,
        state: &MergerState,
    ) -> Result<Self, MergeError> {
        let meta = &state.metadata;
        if meta.config.name() != method {
            return Err(MergeError::InvalidState {
                method,
                reason: format!("the state belongs to method `{}`", meta.config.name()),
            });
        }
        if &meta.config != config {
            return Err(MergeError::InvalidState {
                method,
                reason: format!(
                    "the state was written with configuration {:?}, this merger has {:?}",
                    meta.config, config
                ),
            });
        }
        if meta.pretrained.is_none() != meta.tasks.is_empty() {
            return Err(MergeError::InvalidState {
                method,
                reason: "a pretrained fingerprint is recorded if and only if tasks are".to_owned(),
            });
        }
        for (i, r) in meta.tasks.iter().enumerate() {
            if meta.tasks[..i].iter().any(|p| p.task == r.task) {
                return Err(MergeError::InvalidState {
                    method,
                    reason: format!("task `{}` is recorded twice", r.task),
                });
            }
            if !r.task_vector_norm.is_finite() || r.task_vector_norm < 0.0 {
                return Err(MergeError::InvalidState {
                    method,
                    reason: format!(
                        "task `{}` has an invalid task-vector norm {}",
                        r.task, r.task_vector_norm
                    ),
                });
            }
        }
        Ok(Self {
            pretrained: meta.pretrained,
            tasks: meta.tasks.clone(),
        })
    }
}

/// Prefixes every tensor name with `prefix` and tags the tensors `F32` (the state keeps the
/// exact in-memory values).
pub(crate) fn export_tensors(out: &mut ParamDict, prefix: &str, params: &ParamDict) {
    for (name, t) in params.iter() {
        out.insert(format!("{prefix}{name}"), t.clone().with_dtype(DType::F32));
    }
}

/// Reads back the tensors exported under `prefix` (every tensor of the state must carry a
/// known prefix; the caller checks that).
pub(crate) fn import_tensors(state: &MergerState, prefix: &str) -> ParamDict {
    state
        .tensors
        .iter()
        .filter_map(|(name, t)| name.strip_prefix(prefix).map(|n| (n.to_owned(), t.clone())))
        .collect()
}

/// Checks that the state's tensors all carry `prefix` and that there is at least one iff
/// tasks were absorbed.
pub(crate) fn check_state_tensors(
    method: &'static str,
    state: &MergerState,
    prefix: &str,
) -> Result<(), MergeError> {
    if let Some(name) = state.tensors.keys().find(|k| !k.starts_with(prefix)) {
        return Err(MergeError::StateTensor {
            method,
            source: ParamsError::UnexpectedKey {
                name: name.to_owned(),
            },
        });
    }
    if state.metadata.tasks.is_empty() != state.tensors.is_empty() {
        return Err(MergeError::InvalidState {
            method,
            reason: format!(
                "{} tasks recorded but {} tensors",
                state.metadata.tasks.len(),
                state.tensors.len()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tensor(n: usize, offset: f32) -> Tensor {
        Tensor::new(vec![n], (0..n).map(|i| i as f32 * 0.37 + offset).collect()).unwrap()
    }

    #[test]
    fn the_fused_scan_hashes_like_the_plain_hash() {
        for n in [0, 1, 2, 3, 7, 8, 9, 4095, 4096, 4097, 10_001] {
            let (p, f) = (tensor(n, 0.0), tensor(n, 1.0));
            for name in ["", "w", "a.long.enough.name.to.span.words"] {
                let (hp, hf, sq, p_ok, f_ok) = scan_pair(name, &p, &f);
                assert_eq!(hp, tensor_hash(name, &p), "n = {n}, name = {name:?}");
                assert_eq!(hf, tensor_hash(name, &f), "n = {n}, name = {name:?}");
                let want: f64 = p
                    .data()
                    .iter()
                    .zip(f.data())
                    .map(|(&a, &b)| (f64::from(b) - f64::from(a)).powi(2))
                    .sum();
                assert!((sq - want).abs() <= 1e-12 * want.max(1.0));
                assert!(p_ok && f_ok);
                if n > 0 {
                    assert_ne!(hp, hf);
                }
            }
        }
    }

    #[test]
    fn hashes_see_names_shapes_and_dtypes() {
        let t = tensor(6, 0.5);
        let h = tensor_hash("w", &t);
        assert_ne!(h, tensor_hash("v", &t));
        assert_ne!(h, tensor_hash("w", &t.clone().reshape(vec![2, 3]).unwrap()));
        assert_ne!(h, tensor_hash("w", &t.clone().with_dtype(DType::F16)));
        let f = Fingerprint(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, "\"0123456789abcdef0011223344556677\"");
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), f);
    }
}
