//! Scale study: how the cost of a continual merge grows with the number of tasks at CLIP
//! ViT-B/16 size.
//!
//! # What it builds
//!
//! A synthetic CLIP ViT-B/16 vision tower (every tensor of
//! `madeit_vit::expected_tensors(&ClipVisionConfig::vit_b_16())`: 12 layers; q, k, v, out
//! 768x768, fc1 3072x768, fc2 768x3072, biases, layer norms, class/patch/position
//! embeddings: 85,799,424 values; 72 target matrices) with pretrained weights N(0, 0.02²),
//! and a stream of `--tasks` fine-tuned models `θ_t = θ_0 + τ_t`. Each task vector follows
//! the recipe of `crates/madeit-merge/benches/absorb.rs`: on every matrix a rank-16 product
//! of Gaussian factors scaled to Frobenius norm about 0.5, plus N(0, 1e-3²) noise on every
//! value. Task `t` is drawn from seeds derived from `t`, so every method sees the same
//! stream; fine-tuned models are generated one at a time (never all held in memory) and
//! their generation is not timed. The tasks' low-rank parts are independent random
//! subspaces, so subspace-merging methods find little to consolidate: this is the
//! expensive end for expert-keeping methods.
//!
//! # What it measures, per method and step
//!
//! - `absorb_s`: wall time of the absorb call alone (`Instant` around it).
//! - `peak_rss_bytes`: the process's peak resident set during the step (`VmHWM` of
//!   `/proc/self/status`, reset through `/proc/self/clear_refs` just before the absorb call,
//!   so it includes the pretrained and fine-tuned models held by the caller; where the reset
//!   is refused the value is the process-wide peak, and `hwm_reset` says so).
//! - `rss_after_bytes`: `VmRSS` after the step.
//! - `state_bytes`: size of the method's saved state after the step, written the way the
//!   library saves it (a safetensors file: `MergerState::tensors` with the state metadata
//!   in the header, as the run loop's checkpoints do) to a temporary folder and removed.
//!
//! Methods (`--methods`, comma-separated, default all):
//!
//! - `made_it`: the registry method with its default configuration (`svd = auto`, which
//!   is the randomized candidate SVD at this size: oversample 10, 2 power iterations).
//! - `made_it_exact`: the same with `svd = "exact"`.
//! - `opcm`: the registry method with its default configuration (SVDs in `f32`).
//! - `opcm_f64`: the same with `precision = "f64"`.
//! - `mingle_experts`: MINGLE's expert construction only
//!   ([`madeit::adapt::build_expert`] on each of the 72 modules, rank 64, projected off the
//!   earlier experts of the module, exact SVDs as in `MingleConfig::default()`), spread
//!   over the cores like MINGLE's own absorb step. MINGLE's test-time adaptation (gates,
//!   Adam steps on seed images, subspace update) is *not* included: it needs images. Its
//!   `state_bytes` is the experts saved as `expert.{module}.{e}.{u,s,v}`, the layout of
//!   MINGLE's saved state, without the gates and subspaces.
//!
//! Methods run one after the other, each in a child process of its own (the program runs
//! itself with `--in-process --methods <one>`), so that memory the allocator keeps after one
//! method does not count in the next one's resident set; `--in-process` runs them all in
//! the calling process instead.
//!
//! # Reproduce
//!
//! ```text
//! cargo build --release -p madeit --example scale_study
//! nice -n 5 target/release/examples/scale_study --tasks 20 \
//!     --methods made_it,made_it_exact,opcm,opcm_f64,mingle_experts \
//!     --out scale_study.json > scale_study.md
//! ```
//!
//! Options: `--tasks N` (default 20), `--methods a,b,...`, `--out FILE.json` (the per-step
//! table, written atomically), `--mingle-tasks N` (cap the MINGLE stream, default
//! `--tasks`), `--state-dir DIR` (where state files are written and removed; default the
//! system temporary folder), `--in-process` (no child processes). Progress goes to stderr,
//! the markdown table to stdout.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use madeit::adapt::{MingleConfig, build_expert};
use madeit::linalg::random::gaussian;
use madeit::merge::{MethodConfig, TaskId};
use madeit::params::{ParamDict, SaveOptions, Tensor};
use madeit::vit::{ClipVisionConfig, LowRankFactors, ModuleId, expected_tensors};
use serde_json::json;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

const ALL_METHODS: [&str; 5] = [
    "made_it",
    "made_it_exact",
    "opcm",
    "opcm_f64",
    "mingle_experts",
];
/// Rank of each task vector's low-rank part.
const TASK_RANK: usize = 16;
/// Frobenius norm (approximately) of each matrix's low-rank part.
const LOW_RANK_NORM: f32 = 0.5;
/// Standard deviation of the noise on every value of a task vector.
const NOISE_STD: f32 = 1e-3;
/// Standard deviation of the pretrained weights.
const PRETRAINED_STD: f32 = 0.02;
/// Metadata key under which the run loop stores a merger's state metadata.
const MERGER_KEY: &str = "madeit.merger";

struct Args {
    tasks: usize,
    mingle_tasks: Option<usize>,
    methods: Vec<String>,
    out: Option<PathBuf>,
    state_dir: PathBuf,
    in_process: bool,
}

fn parse_args() -> Res<Args> {
    let mut args = Args {
        tasks: 20,
        mingle_tasks: None,
        methods: ALL_METHODS.iter().map(|s| (*s).to_owned()).collect(),
        out: None,
        state_dir: std::env::temp_dir(),
        in_process: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("`{flag}` needs a value"));
        match flag.as_str() {
            "--tasks" => args.tasks = value()?.parse().map_err(|e| format!("--tasks: {e}"))?,
            "--mingle-tasks" => {
                args.mingle_tasks = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--mingle-tasks: {e}"))?,
                );
            }
            "--methods" => {
                args.methods = value()?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            "--out" => args.out = Some(PathBuf::from(value()?)),
            "--state-dir" => args.state_dir = PathBuf::from(value()?),
            "--in-process" => args.in_process = true,
            "-h" | "--help" => {
                println!(
                    "scale_study [--tasks N] [--mingle-tasks N] [--methods {}] [--out FILE.json] [--state-dir DIR] [--in-process]",
                    ALL_METHODS.join(",")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (see --help)").into()),
        }
    }
    if args.tasks == 0 {
        return Err("--tasks must be at least 1".into());
    }
    if let Some(m) = args
        .methods
        .iter()
        .find(|m| !ALL_METHODS.contains(&m.as_str()))
    {
        return Err(format!("unknown method `{m}`; known: {}", ALL_METHODS.join(", ")).into());
    }
    if args.methods.is_empty() {
        return Err("--methods is empty".into());
    }
    Ok(args)
}

/// Runs `f(i)` for `i in 0..n` on every core; results in index order.
fn par_map<T: Send>(n: usize, f: impl Fn(usize) -> Res<T> + Sync) -> Res<Vec<T>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(n.max(1));
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    let first_err: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    match f(i) {
                        Ok(v) => {
                            if let Ok(mut o) = out.lock() {
                                o[i] = Some(v);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut slot) = first_err.lock() {
                                slot.get_or_insert_with(|| e.to_string());
                            }
                            next.store(n, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().map_err(|_| "worker panicked")? {
        return Err(e.into());
    }
    out.into_inner()
        .map_err(|_| "worker panicked")?
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| format!("item {i} was not computed").into()))
        .collect()
}

/// `n` values of N(0, std²), as a row-major `rows x cols` block (ChaCha8, `seed`).
fn normal(rows: usize, cols: usize, std: f32, seed: u64) -> Vec<f32> {
    let g = gaussian::<f32>(rows, cols, seed);
    let mut v = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            v.push(std * g[(r, c)]);
        }
    }
    v
}

/// Shape of a tensor as `(rows, cols)` for the generator (vectors and 4-D tensors are
/// flattened into one row per leading index).
fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [r, rest @ ..] => (*r, rest.iter().product()),
    }
}

/// The synthetic ViT-B/16 pretrained tower.
fn pretrained(config: &ClipVisionConfig) -> Res<ParamDict> {
    let layout = expected_tensors(config);
    let tensors = par_map(layout.len(), |i| {
        let (name, shape) = &layout[i];
        let (r, c) = rows_cols(shape);
        let t = Tensor::new(shape.clone(), normal(r, c, PRETRAINED_STD, i as u64))?;
        Ok((name.clone(), t))
    })?;
    Ok(tensors.into_iter().collect())
}

/// `θ_0 + τ_t`: rank-16 product (Frobenius ~ 0.5) plus N(0, 1e-3²) noise on matrices,
/// N(0, 1e-3²) noise elsewhere.
fn finetuned(pre: &ParamDict, task: u64) -> Res<ParamDict> {
    let entries: Vec<(&str, &Tensor)> = pre.iter().collect();
    let tensors = par_map(entries.len(), |i| {
        let (name, p) = entries[i];
        let seed = (task + 1) * 1_000_003 + i as u64;
        let (r, c) = rows_cols(p.shape());
        let mut tau = normal(r, c, NOISE_STD, seed);
        if p.shape().len() == 2 {
            let a = gaussian::<f32>(r, TASK_RANK, seed ^ 0xa5a5_a5a5);
            let b = gaussian::<f32>(c, TASK_RANK, seed ^ 0x5a5a_5a5a);
            let low = &a * b.transpose();
            let scale = LOW_RANK_NORM / ((TASK_RANK * r * c) as f32).sqrt();
            for (row, chunk) in tau.chunks_mut(c).enumerate() {
                for (col, x) in chunk.iter_mut().enumerate() {
                    *x += scale * low[(row, col)];
                }
            }
        }
        let data = p.data().iter().zip(&tau).map(|(a, b)| a + b).collect();
        Ok((name.to_owned(), Tensor::new(p.shape().to_vec(), data)?))
    })?;
    Ok(tensors.into_iter().collect())
}

/// A field of `/proc/self/status` in bytes (`VmHWM`, `VmRSS`); `None` off Linux.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak resident set (`VmHWM`) to the current one; false where refused.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// Size of `tensors` saved as safetensors with `metadata`, written to a file in `dir` that
/// is removed afterwards.
fn saved_size(dir: &Path, tensors: &ParamDict, metadata: Option<(&str, String)>) -> Res<u64> {
    let path = dir.join(format!(
        "scale_study_state.{}.safetensors",
        std::process::id()
    ));
    let options = SaveOptions {
        metadata: metadata.map(|(k, v)| [(k.to_owned(), v)].into_iter().collect()),
        ..SaveOptions::default()
    };
    tensors.save_with(&path, &options)?;
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    Ok(size)
}

/// One measured step.
#[derive(Debug, Clone)]
struct Step {
    method: String,
    step: usize,
    absorb_s: f64,
    peak_rss_bytes: Option<u64>,
    hwm_reset: bool,
    rss_after_bytes: Option<u64>,
    state_bytes: u64,
    metrics: serde_json::Value,
}

impl Step {
    /// One progress line on stderr; `what` names the timed work.
    fn log(&self, what: &str) {
        eprintln!(
            "{} step {:>2}: {what} {:.2} s, state {}, peak RSS {}",
            self.method,
            self.step,
            self.absorb_s,
            human(Some(self.state_bytes)),
            human(self.peak_rss_bytes)
        );
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "method": self.method,
            "step": self.step,
            "absorb_s": self.absorb_s,
            "peak_rss_bytes": self.peak_rss_bytes,
            "hwm_reset": self.hwm_reset,
            "rss_after_bytes": self.rss_after_bytes,
            "state_bytes": self.state_bytes,
            "metrics": self.metrics,
        })
    }
}

fn registry_config(method: &str) -> Res<MethodConfig> {
    Ok(match method {
        "made_it_exact" => MethodConfig::from_json_str(r#"{"method": "made_it", "svd": "exact"}"#)?,
        "opcm_f64" => MethodConfig::from_json_str(r#"{"method": "opcm", "precision": "f64"}"#)?,
        other => MethodConfig::default_for(other)?,
    })
}

/// Absorbs `tasks` tasks with a registry method.
fn run_registry(method: &str, pre: &ParamDict, tasks: usize, dir: &Path) -> Res<Vec<Step>> {
    let config = registry_config(method)?;
    eprintln!("{method}: config {}", serde_json::to_string(&config)?);
    let mut merger = config.build()?;
    let mut steps = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let ft = finetuned(pre, t as u64)?;
        let task = TaskId::new(format!("task{t:02}"));
        let hwm_reset = reset_peak_rss();
        let start = Instant::now();
        let report = merger.absorb(&madeit::merge::Step::new(pre, &ft, &task))?;
        let absorb_s = start.elapsed().as_secs_f64();
        let peak_rss_bytes = proc_status_bytes("VmHWM:");
        drop(ft);
        let rss_after_bytes = proc_status_bytes("VmRSS:");
        let state = merger.state()?;
        let state_bytes = saved_size(
            dir,
            &state.tensors,
            Some((MERGER_KEY, state.metadata_json()?)),
        )?;
        drop(state);
        let step = Step {
            method: method.to_owned(),
            step: t + 1,
            absorb_s,
            peak_rss_bytes,
            hwm_reset,
            rss_after_bytes,
            state_bytes,
            metrics: serde_json::to_value(&report.metrics)?,
        };
        step.log("absorb");
        steps.push(step);
    }
    Ok(steps)
}

/// MINGLE's expert construction for `tasks` tasks: one expert per module and task, with
/// the rank, projection and SVD of `MingleConfig::default()` (rank 64 on ViT-B, projected
/// off the module's earlier experts, exact SVD).
fn run_mingle_experts(
    config: &ClipVisionConfig,
    pre: &ParamDict,
    tasks: usize,
    dir: &Path,
) -> Res<Vec<Step>> {
    let mingle = MingleConfig::default();
    let modules: Vec<ModuleId> = ModuleId::all(config.num_hidden_layers).collect();
    let mut experts: Vec<Vec<LowRankFactors>> = vec![Vec::new(); modules.len()];
    let mut steps = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let ft = finetuned(pre, t as u64)?;
        let hwm_reset = reset_peak_rss();
        let start = Instant::now();
        let built = par_map(modules.len(), |i| {
            let m = modules[i];
            let name = m.weight_name();
            let w0 = pre.get(&name)?.as_mat()?;
            let wt = ft.get(&name)?.as_mat()?;
            let (f, stats) = build_expert(
                m,
                w0,
                wt,
                &experts[i],
                mingle.effective_rank(w0.nrows(), w0.ncols()),
                mingle.project_experts,
                // Exact by default (the seed only matters for a randomized expert SVD).
                mingle.expert_svd.to_linalg(((t as u64) << 32) ^ i as u64),
            )?;
            Ok((f, stats.k_eff))
        })?;
        let absorb_s = start.elapsed().as_secs_f64();
        let peak_rss_bytes = proc_status_bytes("VmHWM:");
        drop(ft);
        let mut k_eff_sum = 0usize;
        let mut k_eff_max = 0usize;
        for (list, (f, k)) in experts.iter_mut().zip(built) {
            list.push(f);
            k_eff_sum += k;
            k_eff_max = k_eff_max.max(k);
        }
        let rss_after_bytes = proc_status_bytes("VmRSS:");
        let mut saved = ParamDict::default();
        for (m, list) in modules.iter().zip(&experts) {
            for (e, f) in list.iter().enumerate() {
                let p = format!("expert.{m}.{e}");
                saved.insert(
                    format!("{p}.u"),
                    Tensor::new(vec![f.d_out(), f.rank()], f.u().to_vec())?,
                );
                saved.insert(
                    format!("{p}.s"),
                    Tensor::new(vec![f.rank()], f.s().to_vec())?,
                );
                saved.insert(
                    format!("{p}.v"),
                    Tensor::new(vec![f.d_in(), f.rank()], f.v().to_vec())?,
                );
            }
        }
        let state_bytes = saved_size(dir, &saved, None)?;
        drop(saved);
        let step = Step {
            method: "mingle_experts".to_owned(),
            step: t + 1,
            absorb_s,
            peak_rss_bytes,
            hwm_reset,
            rss_after_bytes,
            state_bytes,
            metrics: json!({
                "mean_k_eff": k_eff_sum as f64 / modules.len() as f64,
                "max_k_eff": k_eff_max,
            }),
        };
        step.log("experts");
        steps.push(step);
    }
    Ok(steps)
}

fn human(bytes: Option<u64>) -> String {
    match bytes {
        None => "n/a".to_owned(),
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30)),
        Some(b) => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
    }
}

/// Writes the per-step table (and the study's set-up) to `out` atomically.
fn write_json(out: &Path, ran: &[serde_json::Value], steps: &[serde_json::Value]) -> Res<()> {
    let config = ClipVisionConfig::vit_b_16();
    let parameters: usize = expected_tensors(&config)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum();
    let doc = json!({
        "model": "synthetic CLIP ViT-B/16 vision tower",
        "parameters": parameters,
        "target_matrices": ModuleId::all(config.num_hidden_layers).count(),
        "task_vector": {
            "rank": TASK_RANK,
            "low_rank_frobenius": LOW_RANK_NORM,
            "noise_std": NOISE_STD,
        },
        "pretrained_std": PRETRAINED_STD,
        "threads": std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        "methods": ran,
        "steps": steps,
    });
    let text = serde_json::to_string_pretty(&doc)?;
    madeit::params::fs::write_atomic(out, text.as_bytes())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Runs the methods in this process; returns the `methods` and `steps` records.
fn run_in_process(args: &Args) -> Res<(Vec<serde_json::Value>, Vec<serde_json::Value>)> {
    let config = ClipVisionConfig::vit_b_16();
    let t0 = Instant::now();
    let pre = pretrained(&config)?;
    eprintln!(
        "pretrained ViT-B/16: {} tensors, {} values ({:.1} s)",
        pre.len(),
        pre.numel(),
        t0.elapsed().as_secs_f64()
    );
    let mut steps = Vec::new();
    let mut ran = Vec::new();
    for method in &args.methods {
        let started = Instant::now();
        let (n, s) = if method == "mingle_experts" {
            let n = args.mingle_tasks.unwrap_or(args.tasks).min(args.tasks);
            (n, run_mingle_experts(&config, &pre, n, &args.state_dir)?)
        } else {
            (
                args.tasks,
                run_registry(method, &pre, args.tasks, &args.state_dir)?,
            )
        };
        let total_s = started.elapsed().as_secs_f64();
        eprintln!("{method}: {n} tasks in {total_s:.1} s (generation and saving included)");
        ran.push(json!({"method": method, "tasks": n, "total_s": total_s, "process": std::process::id()}));
        steps.extend(s.iter().map(Step::to_json));
        // Written after every method, so that an interrupted study keeps what it measured.
        if let Some(out) = &args.out {
            write_json(out, &ran, &steps)?;
        }
    }
    Ok((ran, steps))
}

/// Runs each method in a child process of its own (so that memory the allocator keeps from
/// one method does not count in the next one's resident set) and gathers their records.
fn run_isolated(args: &Args) -> Res<(Vec<serde_json::Value>, Vec<serde_json::Value>)> {
    let exe = std::env::current_exe()?;
    let mut ran = Vec::new();
    let mut steps = Vec::new();
    for method in &args.methods {
        let part = args
            .state_dir
            .join(format!("scale_study.{}.{method}.json", std::process::id()));
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--in-process", "--tasks", &args.tasks.to_string()])
            .args(["--methods", method])
            .arg("--state-dir")
            .arg(&args.state_dir)
            .arg("--out")
            .arg(&part)
            .stdout(std::process::Stdio::null());
        if let Some(n) = args.mingle_tasks {
            cmd.args(["--mingle-tasks", &n.to_string()]);
        }
        let status = cmd.status()?;
        if !status.success() {
            return Err(format!("the study of `{method}` failed ({status})").into());
        }
        let text = std::fs::read_to_string(&part)
            .map_err(|e| format!("cannot read {}: {e}", part.display()))?;
        std::fs::remove_file(&part)
            .map_err(|e| format!("cannot remove {}: {e}", part.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&text)?;
        for (key, into) in [("methods", &mut ran), ("steps", &mut steps)] {
            let list = doc
                .get(key)
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| format!("{} has no `{key}` list", part.display()))?;
            into.extend(list.iter().cloned());
        }
        if let Some(out) = &args.out {
            write_json(out, &ran, &steps)?;
        }
    }
    Ok((ran, steps))
}

fn main() -> Res<()> {
    let args = parse_args()?;
    let (_, steps) = if args.in_process {
        run_in_process(&args)?
    } else {
        run_isolated(&args)?
    };
    println!("| method | step | absorb (s) | peak RSS in step | RSS after | state size |");
    println!("|---|---:|---:|---:|---:|---:|");
    let bytes = |s: &serde_json::Value, key: &str| s.get(key).and_then(serde_json::Value::as_u64);
    for s in &steps {
        println!(
            "| {} | {} | {:.2} | {} | {} | {} |",
            s.get("method")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?"),
            s.get("step")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            s.get("absorb_s")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN),
            human(bytes(s, "peak_rss_bytes")),
            human(bytes(s, "rss_after_bytes")),
            human(bytes(s, "state_bytes")),
        );
    }
    Ok(())
}
