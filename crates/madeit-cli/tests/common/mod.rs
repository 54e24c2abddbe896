//! Helpers of the command-line tests: random towers in the Hugging Face layout, running the
//! `madeit` binary, and comparing folders byte for byte.

#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use madeit::params::{ParamDict, Tensor};
use madeit::vit::{ClipVisionConfig, PROJECTION_WEIGHT};

/// The `madeit` binary under test.
pub fn madeit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_madeit"));
    c.env_remove("MADEIT_CRASH_AT");
    c
}

/// Runs `madeit` with `args` and returns its output.
pub fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = madeit();
    for a in args {
        c.arg(a);
    }
    c.output().expect("the madeit binary runs")
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean failure: a non-zero exit that is not a panic (101) or a signal.
pub fn assert_clean_failure(o: &Output) -> String {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected a failure, got success: {err}"
    );
    assert_eq!(o.status.code(), Some(1), "not a clean error exit: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Asserts success and returns stderr.
pub fn assert_success(o: &Output) -> String {
    let err = stderr(o);
    assert!(o.status.success(), "madeit failed: {err}");
    err
}

/// Deterministic values in `[-scale, scale)` (SplitMix64, the workspace's one mixer).
pub fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    use madeit::linalg::random::{GOLDEN_GAMMA, mix64};
    let mut state = seed.wrapping_mul(GOLDEN_GAMMA) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(GOLDEN_GAMMA);
            let z = mix64(state);
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * unit - 1.0) * scale
        })
        .collect()
}

/// A random tower of `config` with a projection.
pub fn random_tower(config: &ClipVisionConfig, seed: u64) -> ParamDict {
    let mut p = ParamDict::new();
    let mut shapes = madeit::vit::expected_tensors(config);
    shapes.push((
        PROJECTION_WEIGHT.to_owned(),
        vec![config.projection_dim, config.hidden_size],
    ));
    for (i, (name, shape)) in shapes.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data = if name.contains("norm") && name.ends_with(".weight") {
            vec![1.0; n]
        } else {
            values(seed * 1000 + i as u64, n, 0.2)
        };
        p.insert(name, Tensor::new(shape, data).expect("tensor"));
    }
    p
}

/// `base` plus a low-rank-plus-noise update of every matrix (a fine-tune).
pub fn finetuned(base: &ParamDict, seed: u64) -> ParamDict {
    base.map(|name, t| {
        let noise = values(seed * 7919 + name.len() as u64, t.numel(), 0.02);
        let data = t.data().iter().zip(noise).map(|(a, b)| a + b).collect();
        Tensor::new(t.shape().to_vec(), data).expect("tensor")
    })
}

/// Writes `config.json` and `model.safetensors` into `dir`.
pub fn save_tower(dir: &Path, config: &ClipVisionConfig, params: &ParamDict) {
    madeit::zoo::save_tower(dir, config, params).expect("save tower");
}

/// A pretrained tower and `n` fine-tuned ones under `root`: `root/pretrained`,
/// `root/task1`, ...
pub struct Towers {
    /// The folder holding them.
    pub root: PathBuf,
    /// The pretrained tower's folder.
    pub pretrained: PathBuf,
    /// The fine-tuned towers' folders.
    pub finetuned: Vec<PathBuf>,
}

impl Towers {
    /// Writes the towers.
    pub fn new(root: &Path, config: &ClipVisionConfig, n: usize) -> Self {
        let pre = random_tower(config, 1);
        let pretrained = root.join("pretrained");
        save_tower(&pretrained, config, &pre);
        let finetuned = (0..n)
            .map(|t| {
                let dir = root.join(format!("task{}", t + 1));
                save_tower(&dir, config, &finetuned(&pre, 10 + t as u64));
                dir
            })
            .collect();
        Self {
            root: root.to_path_buf(),
            pretrained,
            finetuned,
        }
    }

    /// `madeit merge` arguments for `method` into `out`.
    pub fn merge_args(&self, method: &str, out: &Path) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "merge".into(),
            "--method".into(),
            method.into(),
            "--pretrained".into(),
            self.pretrained.clone().into(),
            "--finetuned".into(),
        ];
        a.extend(self.finetuned.iter().map(|p| p.clone().into()));
        a.push("--out".into());
        a.push(out.to_path_buf().into());
        a
    }

    /// Runs `madeit merge`.
    pub fn merge(&self, method: &str, out: &Path) -> Output {
        madeit()
            .args(self.merge_args(method, out))
            .output()
            .expect("the madeit binary runs")
    }
}

/// Every file under `dir`: relative path -> bytes (empty when `dir` does not exist).
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("prefix").display().to_string();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

/// The names in `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The tasks of [`tiny_zoo`], with their class counts.
pub const ZOO_TASKS: [(&str, usize); 3] = [("alpha", 4), ("beta", 3), ("gamma", 5)];

/// A temporary folder with a [`tiny_zoo`] in its `zoo` subfolder.
pub fn temp_zoo() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let zoo = tmp.path().join("zoo");
    tiny_zoo(&zoo);
    (tmp, zoo)
}

/// Writes a tiny zoo (random towers, heads and splits of random images, and a manifest)
/// into `dir`, in the layout `madeit zoo build` writes.
pub fn tiny_zoo(dir: &Path) {
    use madeit::data::{ImageSet, Split, write_split};
    use madeit::vit::TaskHead;
    let config = ClipVisionConfig::tiny();
    let pre = random_tower(&config, 1);
    save_tower(&dir.join("pretrained"), &config, &pre);
    let mut tasks = Vec::new();
    for (t, &(name, classes)) in ZOO_TASKS.iter().enumerate() {
        save_tower(
            &dir.join("finetuned").join(name),
            &config,
            &finetuned(&pre, 100 + t as u64),
        );
        let w = Tensor::new(
            vec![classes, config.projection_dim],
            values(200 + t as u64, classes * config.projection_dim, 1.0),
        )
        .expect("head");
        let names: Vec<String> = (0..classes).map(|c| format!("{name}-{c}")).collect();
        let head = TaskHead::new(name, &w, names.clone()).expect("head");
        madeit::zoo::save_head(dir, &head).expect("save head");
        let (s, c) = (config.image_size, config.num_channels);
        for (i, split) in [Split::Val, Split::Seed, Split::Test]
            .into_iter()
            .enumerate()
        {
            let n = 12;
            let pixels: Vec<u8> = values(300 + 10 * t as u64 + i as u64, n * s * s * c, 1.0)
                .into_iter()
                .map(|v| ((v + 1.0) * 127.5) as u8)
                .collect();
            let labels: Vec<u32> = (0..n).map(|k| (k % classes) as u32).collect();
            let set = ImageSet::new(pixels, n, s, s, c, labels, names.clone()).expect("set");
            write_split(
                &madeit::data::split_path(&dir.join("data"), name, split),
                &set,
                name,
                &split.to_string(),
            )
            .expect("split");
        }
        let acc = serde_json::json!({"val": 0.5, "test": 0.5});
        let run = serde_json::json!({
            "steps": 1, "batch_size": 1, "first_loss": 1.0, "last_loss": 1.0, "seconds": 0.0
        });
        tasks.push(serde_json::json!({
            "id": t + 1,
            "name": name,
            "summary": "random test task",
            "source": madeit::data::SourceId::Mnist,
            "construction": madeit::data::Construction::Original,
            "resize": madeit::data::Resize::Pad,
            "class_names": names,
            "splits": {"pretrain": 0, "train": 0, "val": 12, "seed": 12, "test": 12},
            "split_seed": 0,
            "finetune_seed": 0,
            "head": {"kind": "random", "classes": classes, "names_seen": 0},
            "accuracy": {"pretrained": acc, "finetuned": acc},
            "finetune": run,
            "energy": {"fraction": 0.5, "modules": []},
            "task_vector": {"norm": 1.0, "pretrained_norm": 10.0, "ratio": 0.1},
        }));
    }
    let manifest = serde_json::json!({
        "format": madeit::zoo::ZOO_FORMAT,
        "versions": {"madeit": "test", "split_format": "test"},
        "seed": 0,
        "group": madeit::data::TaskGroup::default(),
        "created_unix": 0,
        "threads": 1,
        "model": config,
        "build": madeit::zoo::BuildConfig::default(),
        "pretraining": {
            "parts": [],
            "classes": 0,
            "names": [],
            "run": {"steps": 1, "batch_size": 1, "first_loss": 1.0, "last_loss": 1.0, "seconds": 0.0},
            "seed": 0
        },
        "tasks": tasks,
        "timings": {"load": 0.0, "pretrain": 0.0, "heads": 0.0, "finetune": [], "export": 0.0, "total": 0.0},
    });
    // The class-name vectors of the pretraining (only checked for presence here).
    std::fs::copy(
        dir.join("heads")
            .join(format!("{}.safetensors", ZOO_TASKS[0].0)),
        dir.join("heads").join("names.safetensors"),
    )
    .expect("names file");
    std::fs::write(
        dir.join(madeit::zoo::MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest).expect("json"),
    )
    .expect("manifest");
}

/// Asserts that two folder trees ([`tree`]) are equal, naming the files that differ
/// (never printing their bytes).
#[track_caller]
pub fn assert_same_tree(
    got: &BTreeMap<String, Vec<u8>>,
    want: &BTreeMap<String, Vec<u8>>,
    what: &str,
) {
    let differ: Vec<&String> = got
        .keys()
        .chain(want.keys())
        .filter(|k| got.get(*k) != want.get(*k))
        .collect();
    assert!(differ.is_empty(), "{what}: these files differ: {differ:?}");
}

/// Asserts that `text` contains every one of `wanted` (naming the first one missing).
#[track_caller]
pub fn assert_contains_all(text: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "`{w}` missing from: {text}");
    }
}

/// Runs `madeit` with `args` and `MADEIT_CRASH_AT=point`, and asserts that it stopped there
/// (a failed exit).
#[track_caller]
pub fn crash_at(args: Vec<std::ffi::OsString>, point: &str) -> Output {
    let o = madeit()
        .args(args)
        .env("MADEIT_CRASH_AT", point)
        .output()
        .expect("the madeit binary runs");
    assert!(
        !o.status.success(),
        "{point}: the crash point was not reached"
    );
    o
}

/// The `keys` of every stream of a run's `results.json` (one array a stream) and its
/// references: what must agree between two runs (the file also records dates and timings).
pub fn results_digest(run: &Path, keys: &[&str]) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("results.json")).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let streams: Vec<serde_json::Value> = v["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| keys.iter().map(|k| s[*k].clone()).collect())
        .collect();
    serde_json::json!({"streams": streams, "references": v["references"]})
}

/// Runs `madeit embed --model <model> --pixels <pixels> --out <out>` with `extra` after.
pub fn embed(model: &Path, pixels: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut c = madeit();
    c.arg("embed").arg("--model").arg(model).arg("--pixels");
    c.arg(pixels).arg("--out").arg(out).args(extra);
    c.output().expect("the madeit binary runs")
}

/// Runs `madeit merge --method <method>` of one fine-tuned model onto `pretrained`.
pub fn merge_one(method: &str, pretrained: &Path, finetuned: &Path, out: &Path) -> Output {
    let mut c = madeit();
    c.args(["merge", "--method", method, "--pretrained"])
        .arg(pretrained);
    c.arg("--finetuned").arg(finetuned).arg("--out").arg(out);
    c.output().expect("the madeit binary runs")
}

/// Writes `n` random images of `config`'s size (3 channels, values in [-1, 1), from `seed`)
/// as `pixel_values` into `path`.
pub fn write_pixels(path: &Path, config: &ClipVisionConfig, n: usize, seed: u64) {
    let s = config.image_size;
    let mut d = ParamDict::new();
    let px = Tensor::new(vec![n, 3, s, s], values(seed, n * 3 * s * s, 1.0)).expect("pixels");
    d.insert("pixel_values", px);
    d.save(path).expect("save pixels");
}
