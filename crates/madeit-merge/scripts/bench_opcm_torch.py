#!/usr/bin/env python3
"""Side-by-side peer for the `absorb_vit_b32_step3/opcm` criterion bench of madeit-merge.

One OPCM absorb step at CLIP ViT-B/32 scale (87,456,000 parameters, 12 layers) computed
the way FusionBench's `OPCMForCLIP` computes it, in PyTorch float32: for every linear
weight a full SVD (`torch.linalg.svd(..., full_matrices=True)`) of the merged task vector,
the projection `U C V^T` with the diagonal and the leading k x k block of C zeroed, the
other parameters merged without projection, `class_embedding` carried over, and the
rescale to the mean task-vector norm. Inputs follow the Rust bench's distribution
(pretrained N(0, 0.02^2); task vectors rank-16 products plus N(0, 1e-3^2) noise), drawn
with torch's generator.

The merger is primed with two tasks; step 3 is then timed `--runs` times from the same
primed state, and the median is printed with the process CPU time of each run.

    python3 -m venv .venv && .venv/bin/pip install torch numpy
    .venv/bin/python crates/madeit-merge/scripts/bench_opcm_torch.py --threads 2 --runs 3
"""

import argparse
import statistics
import time

import torch

D, F = 768, 3072


def layout():
    out = [
        ("embeddings.class_embedding", (D,)),
        ("embeddings.patch_embedding.weight", (D, 3, 32, 32)),
        ("embeddings.position_embedding.weight", (50, D)),
        ("pre_layrnorm.weight", (D,)),
        ("pre_layrnorm.bias", (D,)),
    ]
    for i in range(12):
        p = f"encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out += [(f"{p}.self_attn.{proj}.weight", (D, D)), (f"{p}.self_attn.{proj}.bias", (D,))]
        out += [
            (f"{p}.layer_norm1.weight", (D,)),
            (f"{p}.layer_norm1.bias", (D,)),
            (f"{p}.mlp.fc1.weight", (F, D)),
            (f"{p}.mlp.fc1.bias", (F,)),
            (f"{p}.mlp.fc2.weight", (D, F)),
            (f"{p}.mlp.fc2.bias", (D,)),
            (f"{p}.layer_norm2.weight", (D,)),
            (f"{p}.layer_norm2.bias", (D,)),
        ]
    out += [("post_layernorm.weight", (D,)), ("post_layernorm.bias", (D,))]
    return out


def role(name, t):
    if name.split(".")[-1] == "class_embedding":
        return "carry"  # not a leaf module's parameter in the reference
    if t.ndim == 2 and name.endswith(".weight") and "embedding" not in name:
        return "linear"
    return "other"


def models(gen):
    pre = {n: torch.randn(s, generator=gen) * 0.02 for n, s in layout()}
    tasks = []
    for _ in range(3):
        ft = {}
        for n, p in pre.items():
            tau = torch.randn(p.shape, generator=gen) * 1e-3
            if p.ndim == 2:
                m, k = p.shape
                a = torch.randn(m, 16, generator=gen)
                b = torch.randn(k, 16, generator=gen)
                tau += (a @ b.T) * (0.5 / (16.0 * m * k) ** 0.5)
            ft[n] = p + tau
        tasks.append(ft)
    return pre, tasks


def tv_norm(a, b):
    return torch.sqrt(sum(((a[n] - b[n]) ** 2).sum() for n in a)).item()


def step(merged, pre, task, prev_lambda, norms, alpha=0.5):
    """One OPCM step t >= 2; returns the new merged model and lambda_t."""
    norms = norms + [tv_norm(task, pre)]
    avg = sum(norms) / len(norms)
    new = {}
    for n, p in pre.items():
        r = role(n, p)
        prev_tv = merged[n] - p
        if r == "carry":
            new[n] = merged[n].clone()
            continue
        tv = task[n] - p
        if r == "linear":
            u, s, vh = torch.linalg.svd(prev_tv, full_matrices=True)
            v = vh.T
            split = int((s.cumsum(0) / s.sum() > alpha).float().argmax().item())
            c = u.T @ tv @ v
            c.diagonal().fill_(0)
            c[:split, :split] = 0
            tv = u @ c @ v.T
        new[n] = p + (prev_lambda * prev_tv + tv)
    norm = tv_norm(new, pre)
    lam = norm / avg
    for n, p in pre.items():
        new[n] = p + (new[n] - p) * (avg / norm)
    return new, lam, norms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pre, tasks = models(gen)
        merged = {n: t.clone() for n, t in tasks[0].items()}
        norms = [tv_norm(tasks[0], pre)]
        merged, lam, norms = step(merged, pre, tasks[1], 1.0, norms)
        walls, cpus = [], []
        for _ in range(args.runs):
            w0, c0 = time.perf_counter(), time.process_time()
            step(merged, pre, tasks[2], lam, norms)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            print(f"step 3: wall {walls[-1]:.2f} s, cpu {cpus[-1]:.2f} s", flush=True)
    print(
        f"median over {args.runs} runs: wall {statistics.median(walls):.2f} s, "
        f"cpu {statistics.median(cpus):.2f} s ({args.threads} threads, torch {torch.__version__})"
    )


if __name__ == "__main__":
    main()
