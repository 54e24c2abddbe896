//! What the test-time mergers share beyond input admission: the seeds of their random
//! streams, the stream and backbone checks, the conversion of expert factors to a merged
//! model and to a device bank, and the writing and checked reading of their saved state.

use std::collections::{BTreeMap, BTreeSet};

use burn::prelude::Device;

use madeit_params::{ParamDict, Tensor as HostTensor};
use madeit_stream::{
    ExpertModel, Fingerprint, Ledger, LowRankExpert, MergedModel, TaskId, TaskRecord,
};
use madeit_vit::{
    ClipVisionConfig, ClipVisionModel, ExpertBank, LinearGate, LowRankFactors, ModuleId,
    VISION_PREFIX, VitError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ADAPT_STATE_FORMAT, ADAPT_STATE_VERSION, AdaptError, AdaptMetadata, AdaptState};

use madeit_linalg::random::splitmix64 as splitmix;

/// The seed of random stream `stream` of step `step` (1-based) of a merger seeded `seed`.
pub(crate) fn stream_seed(seed: u64, step: usize, stream: u64) -> u64 {
    splitmix(splitmix(seed ^ splitmix(step as u64)) ^ stream)
}

/// Checks that a task was absorbed and that `pretrained` is the model the stream was
/// started with ([`madeit_stream::Ledger::check_pretrained`]); returns its fingerprint.
pub(crate) fn check_stream(
    method: &'static str,
    ledger: &madeit_stream::Ledger,
    pretrained: &ParamDict,
) -> Result<Fingerprint, AdaptError> {
    ledger
        .check_pretrained(pretrained)?
        .ok_or(AdaptError::EmptyStream { method })
}

/// Checks, before a gated model is assembled, that a task has been absorbed and that the
/// backbone has the merger's configuration.
pub(crate) fn check_backbone(
    method: &'static str,
    tasks: usize,
    backbone: &ClipVisionModel,
    vision: &ClipVisionConfig,
) -> Result<(), AdaptError> {
    if tasks == 0 {
        return Err(AdaptError::EmptyStream { method });
    }
    if backbone.config() != vision {
        return Err(AdaptError::Vit(VitError::InvalidConfig {
            field: "vision tower",
            reason: "the backbone's configuration differs from the merger's".into(),
        }));
    }
    Ok(())
}

/// `bare` in `dict` under its bare or `vision_model.`-prefixed name, with the name found.
///
/// # Errors
/// [`AdaptError::TargetWeight`] when neither name is there.
pub(crate) fn vision_tensor<'a>(
    dict: &'a ParamDict,
    bare: &str,
) -> Result<(String, &'a HostTensor), AdaptError> {
    if let Ok(t) = dict.get(bare) {
        return Ok((bare.to_owned(), t));
    }
    let full = format!("{VISION_PREFIX}{bare}");
    dict.get(&full)
        .map(|t| (full.clone(), t))
        .map_err(|_| AdaptError::TargetWeight {
            name: bare.to_owned(),
            reason: "missing (looked for the bare and the `vision_model.` names)".into(),
        })
}

/// The named-tensor model of a method that keeps one expert per task in each module:
/// `backbone` with, for every module of `modules` (named as its weight is in `pretrained`),
/// the experts `experts(module)`, serving the stream's `tasks` in order.
///
/// # Errors
/// A module's weight missing from `pretrained`; malformed factors.
pub(crate) fn expert_model<'a>(
    backbone: ParamDict,
    pretrained: &ParamDict,
    modules: &[ModuleId],
    experts: impl Fn(ModuleId) -> &'a [LowRankFactors],
    tasks: &[TaskRecord],
    scale: ScaleOn,
) -> Result<MergedModel, AdaptError> {
    let mut model = ExpertModel::new(backbone);
    for &m in modules {
        let (name, _) = vision_tensor(pretrained, &m.weight_name())?;
        let list = experts(m)
            .iter()
            .zip(tasks)
            .map(|(f, rec)| low_rank_expert(f, &rec.task, scale))
            .collect::<Result<Vec<_>, _>>()?;
        model.experts.insert(name, list);
    }
    Ok(MergedModel::Experts(model))
}

/// The device bank of `experts`, each module's list in stream order, for a tower of
/// `vision`'s shape on `device`.
///
/// # Errors
/// As [`ExpertBank::new`].
pub(crate) fn expert_bank(
    vision: &ClipVisionConfig,
    experts: &BTreeMap<ModuleId, Vec<LowRankFactors>>,
    device: &Device,
) -> Result<ExpertBank, AdaptError> {
    Ok(ExpertBank::new(
        vision,
        experts.iter().map(|(m, e)| (*m, e.clone())),
        device,
    )?)
}

/// Which factor of the exchange form `ΔW = up · down` ([`LowRankExpert::up`],
/// [`LowRankExpert::down`]) carries the singular values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScaleOn {
    /// `up = U`, `down = diag(s) V^T` (MINGLE's `B = U_r`, `A = diag(s_r) V_r^T`).
    Down,
    /// `up = U diag(s)`, `down = V^T`.
    Up,
}

/// The factors `U diag(s) V^T` as a [`LowRankExpert`] serving `task`, with `s` folded into
/// the factor `scale` names (the expert's own `s` is then all ones).
fn low_rank_expert(
    f: &LowRankFactors,
    task: &TaskId,
    scale: ScaleOn,
) -> Result<LowRankExpert, AdaptError> {
    let r = f.rank();
    let (mut u, mut v) = (f.u().to_vec(), f.v().to_vec());
    let scaled = match scale {
        ScaleOn::Down => &mut v,
        ScaleOn::Up => &mut u,
    };
    for row in scaled.chunks_exact_mut(r) {
        row.iter_mut().zip(f.s()).for_each(|(x, s)| *x *= s);
    }
    let folded = LowRankFactors::new(f.d_out(), f.d_in(), u, vec![1.0; r], v)?;
    Ok(LowRankExpert::new(folded, vec![task.clone()]))
}

fn tensor_err(method: &'static str, name: &str, reason: impl Into<String>) -> AdaptError {
    AdaptError::StateTensor {
        method,
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Builds the [`AdaptState`] of a merger, tensor by tensor.
pub(crate) struct StateWriter {
    method: &'static str,
    tensors: ParamDict,
}

impl StateWriter {
    pub(crate) fn new(method: &'static str) -> Self {
        Self {
            method,
            tensors: ParamDict::new(),
        }
    }

    /// Adds an `f32` tensor.
    pub(crate) fn put(
        &mut self,
        name: String,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<(), AdaptError> {
        let t = HostTensor::new(shape, data)
            .map_err(|e| tensor_err(self.method, &name, e.to_string()))?;
        self.tensors.insert(name, t);
        Ok(())
    }

    /// Adds every tensor of `dict` as `{prefix}{name}`.
    pub(crate) fn put_dict(&mut self, prefix: &str, dict: &ParamDict) -> Result<(), AdaptError> {
        for (name, t) in dict.iter() {
            self.put(
                format!("{prefix}{name}"),
                t.shape().to_vec(),
                t.data().to_vec(),
            )?;
        }
        Ok(())
    }

    /// Adds `{prefix}.u` `[d_out, r]`, `{prefix}.s` `[r]` and `{prefix}.v` `[d_in, r]`.
    fn put_factors(&mut self, prefix: &str, f: &LowRankFactors) -> Result<(), AdaptError> {
        self.put(
            format!("{prefix}.u"),
            vec![f.d_out(), f.rank()],
            f.u().to_vec(),
        )?;
        self.put(format!("{prefix}.s"), vec![f.rank()], f.s().to_vec())?;
        self.put(
            format!("{prefix}.v"),
            vec![f.d_in(), f.rank()],
            f.v().to_vec(),
        )
    }

    /// Adds the experts of `module`, in task order, as `expert.{module}.{e}.{u,s,v}`.
    pub(crate) fn put_experts(
        &mut self,
        module: ModuleId,
        experts: &[LowRankFactors],
    ) -> Result<(), AdaptError> {
        for (e, f) in experts.iter().enumerate() {
            self.put_factors(&format!("expert.{module}.{e}"), f)?;
        }
        Ok(())
    }

    /// Adds `{prefix}.weight` `[E, d_in]` and `{prefix}.bias` `[E]` (nothing when `gates` is
    /// empty).
    pub(crate) fn put_gates(
        &mut self,
        prefix: &str,
        gates: &[LinearGate],
    ) -> Result<(), AdaptError> {
        let Some(first) = gates.first() else {
            return Ok(());
        };
        let d_in = first.weight.len();
        let w: Vec<f32> = gates
            .iter()
            .flat_map(|g| g.weight.iter().copied())
            .collect();
        self.put(format!("{prefix}.weight"), vec![gates.len(), d_in], w)?;
        let b: Vec<f32> = gates.iter().map(|g| g.bias).collect();
        self.put(format!("{prefix}.bias"), vec![gates.len()], b)
    }

    /// The state: these tensors plus the metadata.
    pub(crate) fn finish<C: Serialize>(
        self,
        config: &C,
        vision: &ClipVisionConfig,
        modules: &[ModuleId],
        ledger: &Ledger,
    ) -> Result<AdaptState, AdaptError> {
        let config = serde_json::to_value(config).map_err(|e| AdaptError::InvalidState {
            method: self.method,
            reason: format!("cannot serialise the configuration: {e}"),
        })?;
        Ok(AdaptState {
            metadata: AdaptMetadata {
                format: ADAPT_STATE_FORMAT.to_owned(),
                version: ADAPT_STATE_VERSION,
                method: self.method.to_owned(),
                config,
                vision: vision.clone(),
                modules: modules.to_vec(),
                pretrained: ledger.pretrained,
                tasks: ledger.tasks.clone(),
            },
            tensors: self.tensors,
        })
    }
}

/// Reads a saved state back: checks its metadata against the merger once, then hands out
/// tensors by name and finally refuses any tensor that was not asked for.
pub(crate) struct StateReader<'a> {
    method: &'static str,
    metadata: &'a AdaptMetadata,
    tensors: &'a ParamDict,
    used: BTreeSet<String>,
}

impl<'a> StateReader<'a> {
    /// Checks format, version, method, configuration, tower, target modules and that the
    /// fingerprint and the task list agree.
    pub(crate) fn open<C>(
        state: &'a AdaptState,
        method: &'static str,
        config: &C,
        vision: &ClipVisionConfig,
        modules: &[ModuleId],
    ) -> Result<Self, AdaptError>
    where
        C: DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let meta = &state.metadata;
        let invalid = |reason: String| AdaptError::InvalidState { method, reason };
        if meta.format != ADAPT_STATE_FORMAT || meta.version != ADAPT_STATE_VERSION {
            return Err(invalid(format!(
                "format `{}` version {}, expected `{ADAPT_STATE_FORMAT}` version {ADAPT_STATE_VERSION}",
                meta.format, meta.version
            )));
        }
        if meta.method != method {
            return Err(invalid(format!(
                "the state belongs to method `{}`",
                meta.method
            )));
        }
        let saved: C = serde_json::from_value(meta.config.clone())
            .map_err(|e| invalid(format!("configuration: {e}")))?;
        if &saved != config {
            return Err(invalid(format!(
                "the state was written with configuration {saved:?}, this merger has {config:?}"
            )));
        }
        if &meta.vision != vision {
            return Err(invalid(
                "the state belongs to a tower of another shape".into(),
            ));
        }
        if meta.modules != modules {
            return Err(invalid("the state has other target modules".into()));
        }
        if meta.pretrained.is_none() != meta.tasks.is_empty() {
            return Err(invalid(
                "pretrained fingerprint and task list disagree".into(),
            ));
        }
        Ok(Self {
            method,
            metadata: meta,
            tensors: &state.tensors,
            used: BTreeSet::new(),
        })
    }

    /// A [`AdaptError::StateTensor`] naming `name`.
    pub(crate) fn err(&self, name: &str, reason: impl Into<String>) -> AdaptError {
        tensor_err(self.method, name, reason)
    }

    /// Every saved tensor, without marking any as read.
    pub(crate) fn tensors(&self) -> &'a ParamDict {
        self.tensors
    }

    /// The tensor `name` (an error if it is missing).
    pub(crate) fn take(&mut self, name: &str) -> Result<&'a HostTensor, AdaptError> {
        let t = self
            .tensors
            .get(name)
            .map_err(|_| self.err(name, "missing"))?;
        self.used.insert(name.to_owned());
        Ok(t)
    }

    /// The tensor `name`, checked to have `shape` and finite values.
    pub(crate) fn take_finite(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<&'a HostTensor, AdaptError> {
        let t = self.take(name)?;
        if t.shape() != shape {
            return Err(self.err(name, format!("shape {:?}, expected {shape:?}", t.shape())));
        }
        if let Some(i) = t.data().iter().position(|x| !x.is_finite()) {
            return Err(self.err(name, format!("non-finite value at {i}")));
        }
        Ok(t)
    }

    /// The factors written by [`StateWriter::put_factors`] for a `d_out x d_in` module.
    fn factors(
        &mut self,
        prefix: &str,
        d_out: usize,
        d_in: usize,
    ) -> Result<LowRankFactors, AdaptError> {
        let (un, sn, vn) = (
            format!("{prefix}.u"),
            format!("{prefix}.s"),
            format!("{prefix}.v"),
        );
        let u = self.take(&un)?;
        let s = self.take(&sn)?;
        let v = self.take(&vn)?;
        let r = s.numel();
        if s.shape() != [r] || r == 0 {
            return Err(self.err(
                &sn,
                format!("shape {:?}, expected [r] with r >= 1", s.shape()),
            ));
        }
        if u.shape() != [d_out, r] {
            return Err(self.err(
                &un,
                format!("shape {:?}, expected [{d_out}, {r}]", u.shape()),
            ));
        }
        if v.shape() != [d_in, r] {
            return Err(self.err(
                &vn,
                format!("shape {:?}, expected [{d_in}, {r}]", v.shape()),
            ));
        }
        LowRankFactors::new(
            d_out,
            d_in,
            u.data().to_vec(),
            s.data().to_vec(),
            v.data().to_vec(),
        )
        .map_err(|err| self.err(prefix, err.to_string()))
    }

    /// The `count` experts written by [`StateWriter::put_experts`] for `module`, a
    /// `d_out x d_in` module.
    pub(crate) fn experts(
        &mut self,
        module: ModuleId,
        count: usize,
        d_out: usize,
        d_in: usize,
    ) -> Result<Vec<LowRankFactors>, AdaptError> {
        (0..count)
            .map(|e| self.factors(&format!("expert.{module}.{e}"), d_out, d_in))
            .collect()
    }

    /// The `count` gates written by [`StateWriter::put_gates`], each of width `d_in`.
    pub(crate) fn gates(
        &mut self,
        prefix: &str,
        count: usize,
        d_in: usize,
    ) -> Result<Vec<LinearGate>, AdaptError> {
        let w = self.take_finite(&format!("{prefix}.weight"), &[count, d_in])?;
        let b = self.take_finite(&format!("{prefix}.bias"), &[count])?;
        Ok(w.data()
            .chunks_exact(d_in)
            .zip(b.data())
            .map(|(row, bias)| LinearGate {
                weight: row.to_vec(),
                bias: *bias,
            })
            .collect())
    }

    /// Marks `name` as read (for tensors consumed through [`tensors`](Self::tensors)).
    pub(crate) fn mark(&mut self, name: &str) {
        self.used.insert(name.to_owned());
    }

    /// Refuses any tensor that was not read; otherwise returns the saved stream's ledger.
    pub(crate) fn finish(self) -> Result<Ledger, AdaptError> {
        match self.tensors.keys().find(|k| !self.used.contains(*k)) {
            Some(extra) => Err(self.err(extra, "unexpected tensor")),
            None => Ok(Ledger {
                pretrained: self.metadata.pretrained,
                tasks: self.metadata.tasks.clone(),
            }),
        }
    }
}
