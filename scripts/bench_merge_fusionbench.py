#!/usr/bin/env python3
"""Side by side: `madeit merge` (OPCM and MADE-IT) against FusionBench's own OPCM, in one run.

What it measures, at CLIP ViT-B/32 shape (87,456,000 parameters, 72 linear weights of 768 x 768,
3072 x 768 and 768 x 3072):

- madeit: `madeit merge --method opcm` and `madeit merge --method made_it` (default
  configurations) on a pretrained checkpoint and N fine-tuned ones, each timed as a whole
  process (start, reading every checkpoint, every absorb step, writing the output folder),
  plus the per-step times madeit prints on stderr (`step k: ... (X s)`: reading the k-th
  fine-tuned checkpoint and absorbing it).
- FusionBench: `fusion_bench.method.opcm.opcm.OPCMForCLIP`, instantiated with `alpha=0.5`,
  `shuffle_order=False`, and driven by the loop of its `run` method without model pool,
  task pool, Fabric logging or evaluation: load the pretrained model and the first
  fine-tuned one (`CLIPVisionModel.from_pretrained`), then for every further model load it,
  take its task-vector norm, and for every leaf module call the instance's own
  `merge_linear_weights` (linear weights) or `merge_other_parameters` (linear biases and
  every other leaf parameter), then the final rescale to the mean task-vector norm and
  `lambda_t`, line for line as `run` does them; the merged model is written with
  `save_pretrained`. This runs in a child interpreter, so it is timed both in-process (load,
  merge and save separately, per step) and as a whole process (interpreter start, torch,
  transformers and fusion_bench imports included), as madeit is. torch uses `--threads`
  threads (default 2, the machine's cores); madeit gets `RAYON_NUM_THREADS` = the same.
- Parity: madeit's OPCM output (`OUT/model.safetensors`) against FusionBench's merged state
  dict, max abs difference over every tensor, so the two timings are of the same computation.

The checkpoints are random (seeded): a `transformers.CLIPVisionModel` with ViT-B/32's
configuration, saved with `save_pretrained` (safetensors), and N fine-tuned copies in which
every linear weight gets a random rank-16 update (Frobenius norm 5 % of the weight's) plus
Gaussian noise (0.5 % of the weight's RMS), and every other tensor Gaussian noise (1 % of its
RMS, or 1e-3 for an all-zero tensor), so the task vectors are a few percent of the weights, as
fine-tunes are. They are built once in the work folder and reused.

Notes on FusionBench 0.2.33 as installed here:
- Its `fusion_bench.taskpool` package imports `CLIPVisionTransformer` from transformers'
  CLIP module, which transformers 5 no longer has, so `opcm.py` cannot be imported as is.
  The child process puts a placeholder class under that name before importing (only the
  task pools use it; nothing in the OPCM code path does). The output says when it did.
- `run` never calls `compute_lambda_t`: its `lambda_t` is 1 during the loop and then the
  rescale factor `||merged - pretrained|| / mean ||tau||`. This script follows `run`.

To reproduce (after `cargo build --release -p madeit-cli`):

    /work/venv/bin/python scripts/bench_merge_fusionbench.py \
        --madeit target/release/madeit --work /tmp/merge_bench --tasks 3 --repeats 3

It needs torch, transformers, safetensors, numpy and fusion-bench (`pip install fusion-bench`).
The markdown report goes to stdout; progress goes to stderr.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RANK = 16
FB_TAG = "FB_TIMINGS_JSON "


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def loadavg():
    try:
        return tuple(float(x) for x in Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return (float("nan"),) * 3


def uptime_line():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: %.2f, %.2f, %.2f" % loadavg()


# --------------------------------------------------------------------------- checkpoints


def vit_b32_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
    )


def build_checkpoints(work, tasks, seed):
    """Writes work/pretrained and work/task1..N unless a build with the same settings exists."""
    spec = {"tasks": tasks, "seed": seed, "rank": RANK, "version": 1}
    marker = work / "built.json"
    names = [f"task{i + 1}" for i in range(tasks)]
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == spec and all(
                (work / n / "model.safetensors").exists() for n in ["pretrained", *names]
            ):
                log(f"checkpoints present in {work}, not rebuilt")
                return names
        except (OSError, ValueError):
            pass
    import torch
    from torch import nn
    from transformers import CLIPVisionModel

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        model = CLIPVisionModel(vit_b32_config()).eval()
        model.save_pretrained(work / "pretrained")
        pre = {k: v.detach().clone() for k, v in model.state_dict().items()}
        linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        pre_sq = sum(float((v.double() ** 2).sum()) for v in pre.values())
        for i, name in enumerate(names):
            gen = torch.Generator().manual_seed(seed * 1000 + i + 1)
            tau_sq = 0.0
            ft = {}
            for k, p in pre.items():
                if not p.is_floating_point():
                    ft[k] = p.clone()
                    continue
                rms = float(p.double().pow(2).mean().sqrt())
                if k in linear:
                    m, n = p.shape
                    a = torch.randn(m, RANK, generator=gen)
                    b = torch.randn(RANK, n, generator=gen)
                    low = a @ b
                    low *= 0.05 * float(p.norm()) / float(low.norm())
                    tau = low + torch.randn(p.shape, generator=gen) * (0.005 * rms)
                else:
                    std = 0.01 * rms if rms > 0 else 1e-3
                    tau = torch.randn(p.shape, generator=gen) * std
                tau_sq += float((tau.double() ** 2).sum())
                ft[k] = p + tau
            model.load_state_dict(ft)
            model.save_pretrained(work / name)
            log(f"built {name}: |tau|/|theta0| = {(tau_sq / pre_sq) ** 0.5:.4f}")
        model.load_state_dict(pre)
    marker.write_text(json.dumps(spec))
    return names


def relative_task_norms(work, names):
    from safetensors.numpy import load_file
    import numpy as np

    pre = load_file(str(work / "pretrained" / "model.safetensors"))
    pre_sq = sum(float((v.astype(np.float64) ** 2).sum()) for v in pre.values())
    out = []
    for n in names:
        ft = load_file(str(work / n / "model.safetensors"))
        sq = sum(float(((ft[k].astype(np.float64) - pre[k]) ** 2).sum()) for k in pre)
        out.append((sq / pre_sq) ** 0.5)
    return out, sum(v.size for v in pre.values())


# --------------------------------------------------------------------------- FusionBench child


def fusionbench_worker(args):
    """Runs in its own interpreter: FusionBench's OPCM on the checkpoints, timed by phase."""
    t_start = time.perf_counter()
    import numpy as np
    import torch
    import transformers
    from torch import nn
    from transformers import CLIPVisionModel

    t_torch = time.perf_counter()
    shim = False
    import transformers.models.clip.modeling_clip as modeling_clip

    if not hasattr(modeling_clip, "CLIPVisionTransformer"):
        # fusion_bench.taskpool imports this name, which transformers 5 dropped; the task
        # pools are not used here, and nothing on the OPCM path touches the placeholder.
        class CLIPVisionTransformer(nn.Module):
            pass

        modeling_clip.CLIPVisionTransformer = CLIPVisionTransformer
        shim = True
    import fusion_bench
    from fusion_bench.method.opcm.opcm import OPCMForCLIP
    from fusion_bench.method.opcm.utils import get_task_vector_norm
    from fusion_bench.models.utils import is_leaf_module

    t_import = time.perf_counter()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    paths = [work / "pretrained"] + [work / n for n in args.task_names]
    opcm = OPCMForCLIP(alpha=args.alpha, shuffle_order=False, save_on_every_step=False)
    accelerator = "cpu"
    t = {"steps": []}
    with torch.no_grad():
        t0 = time.perf_counter()
        pretrained_model = CLIPVisionModel.from_pretrained(paths[0])
        merged_model = CLIPVisionModel.from_pretrained(paths[1])
        t["load_pretrained_and_first"] = time.perf_counter() - t0

        # run(): norms and lambda before the loop
        opcm.avg_task_vector_norm = get_task_vector_norm(merged_model, pretrained_model)
        opcm.all_task_vector_norm = [opcm.avg_task_vector_norm]
        opcm.previous_lambda_t = 1
        opcm.lambda_t = None

        for model_idx, path in enumerate(paths[2:], start=1):
            t0 = time.perf_counter()
            task_model = CLIPVisionModel.from_pretrained(path)
            t_load = time.perf_counter() - t0

            t0 = time.perf_counter()
            opcm.all_task_vector_norm.append(get_task_vector_norm(task_model, pretrained_model))
            opcm.avg_task_vector_norm = np.mean(opcm.all_task_vector_norm)
            opcm.lambda_t = 1  # temporary value, as in run()
            for module_name, module in list(merged_model.named_modules()):
                if not is_leaf_module(module):
                    continue
                if isinstance(module, nn.Linear):
                    module.weight.data = opcm.merge_linear_weights(
                        module.weight,
                        pretrained_model.get_submodule(module_name).weight,
                        task_model.get_submodule(module_name).weight,
                        param_name=".".join([module_name, "weight"]),
                        alpha=opcm.alpha,
                        accelerator=accelerator,
                    )
                    if module.bias is not None:
                        module.bias.data = opcm.merge_other_parameters(
                            module.bias,
                            pretrained_model.get_submodule(module_name).bias,
                            task_model.get_submodule(module_name).bias,
                            param_name=".".join([module_name, "bias"]),
                            accelerator=accelerator,
                        )
                else:
                    for param_name, param in module.named_parameters():
                        param.data = opcm.merge_other_parameters(
                            merged_W=param,
                            pretrained_W=pretrained_model.get_submodule(module_name).get_parameter(
                                param_name
                            ),
                            task_W=task_model.get_submodule(module_name).get_parameter(param_name),
                            param_name=".".join([module_name, param_name]),
                            accelerator=accelerator,
                        )
            task_vector_norm = get_task_vector_norm(merged_model, pretrained_model)
            opcm.lambda_t *= task_vector_norm / opcm.avg_task_vector_norm
            for param_name, param in merged_model.named_parameters():
                param.data = pretrained_model.get_parameter(param_name) + (
                    param - pretrained_model.get_parameter(param_name)
                ) * (opcm.avg_task_vector_norm / task_vector_norm)
            opcm.previous_lambda_t = opcm.lambda_t
            opcm.lambda_t = None
            merged_norm = float(get_task_vector_norm(merged_model, pretrained_model))  # logged by run()
            t_merge = time.perf_counter() - t0
            t["steps"].append(
                {
                    "step": model_idx + 1,
                    "load": t_load,
                    "merge": t_merge,
                    "lambda": float(opcm.previous_lambda_t),
                    "merged_norm": merged_norm,
                }
            )
            del task_model

        t0 = time.perf_counter()
        out = Path(args.fb_out)
        if out.exists():
            shutil.rmtree(out)
        merged_model.save_pretrained(out)
        t["save"] = time.perf_counter() - t0
    t["imports_torch_transformers"] = t_torch - t_start
    t["import_fusion_bench"] = t_import - t_torch
    t["in_process_total"] = time.perf_counter() - t_start
    t["shim"] = shim
    t["torch"] = torch.__version__
    t["transformers"] = transformers.__version__
    t["fusion_bench"] = getattr(fusion_bench, "__version__", None) or _dist_version("fusion-bench")
    t["threads"] = torch.get_num_threads()
    print(FB_TAG + json.dumps(t), flush=True)


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - only a label in the report
        return "?"


# --------------------------------------------------------------------------- timed runs

STEP_RE = re.compile(r"^step (\d+): (\S+) .*\((\d+(?:\.\d+)?) s\)\s*$")


def run_madeit(args, method, names, out):
    cmd = [
        args.madeit,
        "merge",
        "--method",
        method,
        "--pretrained",
        str(Path(args.work) / "pretrained"),
        "--finetuned",
        *[str(Path(args.work) / n) for n in names],
        "--out",
        str(out),
        "--force",
    ]
    if method == "opcm" and args.alpha != 0.5:  # madeit's default alpha is 0.5
        cfg = Path(args.work) / "opcm_alpha.toml"
        cfg.write_text(f"alpha = {args.alpha!r}\n")
        cmd += ["--config", str(cfg)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    load = loadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    steps = {}
    for line in p.stderr.splitlines():
        m = STEP_RE.match(line.strip())
        if m:
            steps[int(m.group(1))] = float(m.group(3))
    return {"wall": wall, "steps": steps, "stderr": p.stderr, "load": load, "cmd": cmd}


def run_fusionbench(args, names, out):
    cmd = [
        args.python,
        str(Path(__file__).resolve()),
        "--fb-worker",
        "--work",
        args.work,
        "--fb-out",
        str(out),
        "--threads",
        str(args.threads),
        "--alpha",
        str(args.alpha),
        "--task-names",
        *names,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.setdefault("TQDM_DISABLE", "1")
    load = loadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"FusionBench child failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-4000:]}")
    timings = None
    for line in p.stdout.splitlines():
        if line.startswith(FB_TAG):
            timings = json.loads(line[len(FB_TAG):])
    if timings is None:
        raise SystemExit(f"FusionBench child printed no timings:\n{p.stdout}\n{p.stderr[-4000:]}")
    timings["wall"] = wall
    timings["load"] = load
    return timings


def parity(madeit_out, fb_out):
    import numpy as np
    from safetensors.numpy import load_file

    a = load_file(str(Path(madeit_out) / "model.safetensors"))
    fb_files = sorted(Path(fb_out).glob("*.safetensors"))
    b = {}
    for f in fb_files:
        b.update(load_file(str(f)))
    common = sorted(set(a) & set(b))
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    worst, worst_name, rel = 0.0, None, 0.0
    for k in common:
        if a[k].shape != b[k].shape:
            raise SystemExit(f"parity: {k} has shape {a[k].shape} in madeit, {b[k].shape} in FusionBench")
        d = float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) if a[k].size else 0.0
        if d > worst:
            worst, worst_name = d, k
            scale = float(np.abs(b[k]).max()) or 1.0
            rel = d / scale
    # Norms of the merged task vectors in float64, and the distance between the two models
    # relative to FusionBench's task vector; and FusionBench's own norm (torch.linalg.norm of
    # the flattened float32 vector, as its get_task_vector_norm computes it) of the same vector.
    import torch

    pre = load_file(str(work_of(madeit_out) / "pretrained" / "model.safetensors"))
    na = nb = nab = 0.0
    for k in common:
        p = pre[k].astype(np.float64)
        na += float(((a[k] - p) ** 2).sum())
        nb += float(((b[k] - p) ** 2).sum())
        nab += float(((a[k].astype(np.float64) - b[k]) ** 2).sum())
    flat = torch.cat([torch.from_numpy(b[k] - pre[k]).reshape(-1) for k in sorted(common)])
    fb_f32_norm = float(torch.linalg.norm(flat))
    return {"max_abs": worst, "tensor": worst_name, "rel_to_tensor_max": rel, "n": len(common),
            "only_madeit": only_a, "only_fb": only_b, "norm_madeit": na ** 0.5,
            "norm_fb": nb ** 0.5, "rel_frobenius": (nab / nb) ** 0.5 if nb else 0.0,
            "fb_f32_norm": fb_f32_norm}


def work_of(out):
    return Path(out).parent


def fmt(xs):
    return f"{min(xs):.2f} / {statistics.median(xs):.2f}"


def ratio(fb, mi):
    return f"{min(fb) / min(mi):.2f} / {statistics.median(fb) / statistics.median(mi):.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/merge_bench", help="work folder (checkpoints, outputs)")
    ap.add_argument("--tasks", type=int, default=3, help="number of fine-tuned checkpoints")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each process")
    ap.add_argument("--madeit", default="/work/main/target/release/madeit", help="madeit binary")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the FusionBench child")
    ap.add_argument("--threads", type=int, default=2, help="torch threads and RAYON_NUM_THREADS")
    ap.add_argument("--alpha", type=float, default=0.5, help="OPCM alpha (madeit's default is 0.5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random checkpoints")
    ap.add_argument("--skip-made-it", action="store_true", help="time only OPCM")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="parity tolerance (max abs)")
    # internal: the FusionBench child process
    ap.add_argument("--fb-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fb-out", help=argparse.SUPPRESS)
    ap.add_argument("--task-names", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fb_worker:
        fusionbench_worker(args)
        return
    if args.tasks < 2:
        ap.error("--tasks must be at least 2 (OPCM's first step only copies the first model)")
    work = Path(args.work)
    madeit = shutil.which(args.madeit) or args.madeit
    if not Path(madeit).exists():
        raise SystemExit(f"madeit binary not found: {args.madeit} (cargo build --release -p madeit-cli)")
    args.madeit = madeit

    names = build_checkpoints(work, args.tasks, args.seed)
    rel, nparams = relative_task_norms(work, names)
    import torch

    torch_version = torch.__version__
    del torch

    methods = ["opcm"] + ([] if args.skip_made_it else ["made_it"])
    started = datetime.now(timezone.utc)
    up_before = uptime_line()
    res = {m: [] for m in methods}
    fb = []
    loads = []
    # Interleaved, so that a change of load on the shared machine hits both sides alike.
    for r in range(args.repeats):
        for m in methods:
            log(f"[{r + 1}/{args.repeats}] madeit merge --method {m} ...")
            x = run_madeit(args, m, names, work / f"out_{m}")
            loads.append(x["load"])
            log(f"    {x['wall']:.2f} s (load {x['load']:.2f}) steps {x['steps']}")
            res[m].append(x)
        log(f"[{r + 1}/{args.repeats}] FusionBench OPCM child ...")
        y = run_fusionbench(args, names, work / "out_fusionbench")
        loads.append(y["load"])
        log(f"    {y['wall']:.2f} s (load {y['load']:.2f}) steps "
            + ", ".join(f"{s['step']}: load {s['load']:.2f} merge {s['merge']:.2f}" for s in y["steps"]))
        fb.append(y)
    up_after = uptime_line()
    loads.append(loadavg()[0])
    ended = datetime.now(timezone.utc)
    par = parity(work / "out_opcm", work / "out_fusionbench")

    # ------------------------------------------------------------------ report
    try:
        rev = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), "describe",
                              "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = "?"
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    f0 = fb[0]
    bin_time = datetime.fromtimestamp(Path(args.madeit).stat().st_mtime, timezone.utc)
    print("# madeit merge against FusionBench OPCM, CLIP ViT-B/32 shape\n")
    print(f"- date: {started:%Y-%m-%d %H:%M}-{ended:%H:%M} UTC")
    print(f"- machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}")
    print(f"- load before: `{up_before}`")
    print(f"- load after: `{up_after}`")
    print(f"- 1-minute load sampled before each process: min {min(loads):.2f}, max {max(loads):.2f}")
    print(f"- torch {f0['torch']} ({f0['threads']} threads), transformers {f0['transformers']}, "
          f"fusion-bench {f0['fusion_bench']}; madeit {args.madeit} (built {bin_time:%Y-%m-%d %H:%M} UTC, "
          f"source tree now {rev}), "
          f"RAYON_NUM_THREADS={args.threads}")
    print(f"- checkpoints: {work} ({nparams:,} parameters, pretrained + {args.tasks} fine-tuned, seed "
          f"{args.seed}); |tau|/|theta0| = " + ", ".join(f"{v:.3f}" for v in rel))
    print(f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`")
    print(f"- {args.repeats} runs of each process, interleaved; cells are min / median seconds; "
          "ratio = FusionBench / madeit (min / median)")
    if f0["shim"]:
        print("- FusionBench 0.2.33 imports `CLIPVisionTransformer` (gone in transformers 5) in its task "
              "pools; the child put a placeholder under that name before importing `OPCMForCLIP` "
              "(not on the OPCM path)")
    print("- FusionBench side: an `OPCMForCLIP(alpha=0.5, shuffle_order=False)` instance; the loop of "
          "its `run` without model pool, task pool, Fabric logging or evaluation, calling the instance's "
          "`merge_linear_weights` / `merge_other_parameters` and doing the rescale and `lambda_t` as "
          "`run` does (`run` does not call `compute_lambda_t`)")
    print()
    print("| what | madeit s | FusionBench s | ratio |")
    print("|---|---:|---:|---:|")
    fb_wall = [y["wall"] for y in fb]
    for m in methods:
        label = "OPCM" if m == "opcm" else "MADE-IT (default config) vs FusionBench OPCM"
        print(f"| {label}: whole process (start, read {args.tasks + 1} checkpoints, "
              f"{args.tasks - 1} merge steps, write) | {fmt([x['wall'] for x in res[m]])} | "
              f"{fmt(fb_wall)} | {ratio(fb_wall, [x['wall'] for x in res[m]])} |")
    for m in methods:
        label = "OPCM" if m == "opcm" else "MADE-IT vs FusionBench OPCM"
        for k in range(2, args.tasks + 1):
            mi = [x["steps"].get(k) for x in res[m]]
            fbs = [next(s for s in y["steps"] if s["step"] == k) for y in fb]
            fb_lm = [s["load"] + s["merge"] for s in fbs]
            if any(v is None for v in mi):
                print(f"| {label}: step {k}, read + absorb | (not printed) | {fmt(fb_lm)} | – |")
                continue
            print(f"| {label}: step {k}, read checkpoint + absorb | {fmt(mi)} | {fmt(fb_lm)} | "
                  f"{ratio(fb_lm, mi)} |")
    fb_all = [sum(s["load"] + s["merge"] for s in y["steps"]) for y in fb]
    for m in methods:
        label = "OPCM" if m == "opcm" else "MADE-IT vs FusionBench OPCM"
        mi = [sum(x["steps"].get(k, float("nan")) for k in range(2, args.tasks + 1)) for x in res[m]]
        if all(v == v for v in mi):
            print(f"| {label}: steps 2-{args.tasks} together, read + absorb | {fmt(mi)} | {fmt(fb_all)} | "
                  f"{ratio(fb_all, mi)} |")
    for m in methods:
        s1 = [x["steps"].get(1) for x in res[m]]
        if all(v is not None for v in s1):
            what = ("OPCM: step 1 (read + copy of the first model)" if m == "opcm"
                    else "MADE-IT: step 1 (read + absorb: the first task's experts)")
            print(f"| {what} | {fmt(s1)} | | |")
    for k in range(2, args.tasks + 1):
        fbs = [next(s for s in y["steps"] if s["step"] == k) for y in fb]
        print(f"| FusionBench step {k}: from_pretrained only (memory-mapped: pages are read when first touched, "
              f"inside the merge) | | {fmt([s['load'] for s in fbs])} | |")
        print(f"| FusionBench step {k}: merge only (norms, per-module loop, rescale) | | "
              f"{fmt([s['merge'] for s in fbs])} | |")
    print(f"| FusionBench: interpreter start + torch/transformers import (whole minus in-process) | | "
          f"{fmt([y['wall'] - y['in_process_total'] + y['imports_torch_transformers'] for y in fb])} | |")
    print(f"| FusionBench: fusion_bench import | | {fmt([y['import_fusion_bench'] for y in fb])} | |")
    print(f"| FusionBench: load pretrained + first model | | "
          f"{fmt([y['load_pretrained_and_first'] for y in fb])} | |")
    print(f"| FusionBench: save_pretrained of the merged model | | {fmt([y['save'] for y in fb])} | |")
    print()
    ok = par["max_abs"] <= args.tolerance and not par["only_madeit"] and not par["only_fb"]
    print(f"Parity (madeit OPCM `{work / 'out_opcm'}/model.safetensors` against FusionBench's "
          f"`save_pretrained` output, {par['n']} tensors): max abs diff {par['max_abs']:.3e} "
          f"(in `{par['tensor']}`, {par['rel_to_tensor_max']:.2e} of that tensor's max abs), "
          f"tolerance {args.tolerance:g}: {'OK' if ok else 'FAILED'}"
          + (f"; only in madeit: {par['only_madeit']}" if par["only_madeit"] else "")
          + (f"; only in FusionBench: {par['only_fb']}" if par["only_fb"] else ""))
    print(f"\nMerged task vector norms (float64): madeit {par['norm_madeit']:.6f}, FusionBench "
          f"{par['norm_fb']:.6f}; ||madeit - FusionBench|| / ||FusionBench - theta0|| = "
          f"{par['rel_frobenius']:.2e}. torch.linalg.norm of FusionBench's flattened float32 task "
          f"vector (how its get_task_vector_norm computes norms): {par['fb_f32_norm']:.6f}, "
          f"{(par['fb_f32_norm'] / par['norm_fb'] - 1) * 100:+.3f} % off the float64 value.")
    lam = [f"step {s['step']}: {s['lambda']:.6f}" for s in fb[0]["steps"]]
    mi_lam = []
    for line in res["opcm"][-1]["stderr"].splitlines():
        m = re.match(r"^step (\d+):.* lambda=(\S+)", line.strip())
        if m and int(m.group(1)) >= 2:
            mi_lam.append(f"step {m.group(1)}: {m.group(2)}")
    print(f"\nlambda_t: FusionBench {', '.join(lam)}; madeit {', '.join(mi_lam)}")
    for m in methods:
        print(f"\nmadeit {m} stderr (last run):\n\n```\n{res[m][-1]['stderr'].strip()}\n```")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
