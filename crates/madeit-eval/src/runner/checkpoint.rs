//! The stream checkpoint: the merger's saved state, the accuracies so far and the run's
//! identity in one atomically written safetensors file, and reading it back.

use super::*;
use crate::sequential::{C_FINETUNED, SequentialState};

/// Identifies a saved stream checkpoint.
pub const CHECKPOINT_FORMAT: &str = "madeit-stream-checkpoint";
/// Version of the checkpoint layout.
pub const CHECKPOINT_VERSION: u32 = 1;
/// Metadata key of the stream's JSON record in a checkpoint file.
const RUN_KEY: &str = "madeit.stream";
/// Metadata key of the merger's state metadata in a checkpoint file.
const MERGER_KEY: &str = "madeit.merger";
/// Metadata key of a test-time merger's state metadata in a checkpoint file.
const ADAPT_KEY: &str = "madeit.adapt";
/// Metadata key of the task list of a C. Fine-Tuned checkpoint written by earlier versions
/// (names only, no fingerprints); such a checkpoint is refused with a clear message.
const WEIGHTS_KEY: &str = "madeit.weights";
/// Metadata key of a C. Fine-Tuned checkpoint's ledger (the pretrained fingerprint and the
/// absorbed tasks' records; its tensors are the tower).
const SEQUENTIAL_KEY: &str = "madeit.sequential";

/// The JSON record of a checkpoint (the merger's tensors and metadata sit beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckpointRecord {
    pub(super) format: String,
    pub(super) version: u32,
    pub(super) label: String,
    pub(super) method: MethodSpec,
    pub(super) seed: Option<u64>,
    pub(super) order: Vec<String>,
    pub(super) order_ids: Vec<usize>,
    pub(super) eval: EvalMode,
    pub(super) matrix: AccuracyMatrix,
    pub(super) steps: Vec<StepRecord>,
}

impl CheckpointRecord {
    /// The record of `spec` after `steps`.
    pub(super) fn new(
        spec: &StreamSpec,
        order: &[String],
        order_ids: &[usize],
        matrix: &AccuracyMatrix,
        steps: &[StepRecord],
    ) -> Self {
        Self {
            format: CHECKPOINT_FORMAT.to_owned(),
            version: CHECKPOINT_VERSION,
            label: spec.label.clone(),
            method: spec.method.clone(),
            seed: spec.seed,
            order: order.to_vec(),
            order_ids: order_ids.to_vec(),
            eval: spec.eval,
            matrix: matrix.clone(),
            steps: steps.to_vec(),
        }
    }
}

/// The saved state of a stream's merger.
pub(super) enum SavedState {
    Merge(MergerState),
    Adapt(AdaptState),
    /// C. Fine-Tuned: its ledger and the tower after its tasks.
    Sequential(SequentialState),
}

impl SavedState {
    /// The tasks absorbed, in order.
    pub(super) fn tasks(&self) -> Vec<String> {
        let ids = |tasks: &[madeit_merge::TaskRecord]| {
            tasks.iter().map(|t| t.task.as_str().to_owned()).collect()
        };
        match self {
            Self::Merge(s) => ids(&s.metadata.tasks),
            Self::Adapt(s) => ids(&s.metadata.tasks),
            Self::Sequential(s) => ids(&s.ledger.tasks),
        }
    }
}

pub(super) fn save_checkpoint(
    path: &Path,
    record: &CheckpointRecord,
    state: &SavedState,
) -> Result<(), RunError> {
    let mut meta = BTreeMap::new();
    meta.insert(
        RUN_KEY.to_owned(),
        serde_json::to_string(record).map_err(|e| RunError::json(path, e))?,
    );
    let tensors = match state {
        SavedState::Merge(s) => {
            meta.insert(MERGER_KEY.to_owned(), s.metadata_json()?);
            &s.tensors
        }
        SavedState::Adapt(s) => {
            meta.insert(ADAPT_KEY.to_owned(), s.metadata_json()?);
            &s.tensors
        }
        SavedState::Sequential(s) => {
            meta.insert(
                SEQUENTIAL_KEY.to_owned(),
                serde_json::to_string(&s.ledger).map_err(|e| RunError::json(path, e))?,
            );
            &s.params
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| RunError::io(parent, e))?;
    }
    // ParamDict::save_with_metadata writes a temporary file and renames it over `path`.
    tensors
        .save_with_metadata(path, &meta)
        .map_err(|source| RunError::Weights {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
}

pub(super) fn load_checkpoint(path: &Path) -> Result<(CheckpointRecord, SavedState), RunError> {
    let bad = |reason: String| RunError::Resume {
        path: path.to_path_buf(),
        reason,
    };
    let (tensors, meta) =
        ParamDict::load_with_metadata(path).map_err(|source| RunError::Weights {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
    let meta = meta.ok_or_else(|| bad("the file has no metadata".into()))?;
    let run = meta
        .get(RUN_KEY)
        .ok_or_else(|| bad(format!("no `{RUN_KEY}` metadata")))?;
    let record: CheckpointRecord =
        serde_json::from_str(run).map_err(|e| bad(format!("stream record: {e}")))?;
    if record.format != CHECKPOINT_FORMAT || record.version != CHECKPOINT_VERSION {
        return Err(bad(format!(
            "format `{}` version {}, expected `{CHECKPOINT_FORMAT}` version {CHECKPOINT_VERSION}",
            record.format, record.version
        )));
    }
    let state = if record.method.needs_training_data() {
        let Some(ledger) = meta.get(SEQUENTIAL_KEY) else {
            return Err(bad(if meta.contains_key(WEIGHTS_KEY) {
                format!(
                    "a {C_FINETUNED} checkpoint of an earlier version (task names without \
                     their fingerprints); the file is left as it is: rerun the stream without \
                     --resume"
                )
            } else {
                format!("no `{SEQUENTIAL_KEY}` metadata")
            }));
        };
        let ledger =
            serde_json::from_str(ledger).map_err(|e| bad(format!("{C_FINETUNED} ledger: {e}")))?;
        SavedState::Sequential(SequentialState {
            ledger,
            params: tensors,
        })
    } else if record.method.is_test_time() {
        let adapt = meta
            .get(ADAPT_KEY)
            .ok_or_else(|| bad(format!("no `{ADAPT_KEY}` metadata")))?;
        SavedState::Adapt(AdaptState::from_parts(adapt, tensors)?)
    } else {
        let merger = meta
            .get(MERGER_KEY)
            .ok_or_else(|| bad(format!("no `{MERGER_KEY}` metadata")))?;
        SavedState::Merge(MergerState::from_parts(merger, tensors)?)
    };
    Ok((record, state))
}
