#!/usr/bin/env python3
"""Independent numpy implementation of the continual merging baselines, used to build the
cross-check fixture of `madeit-merge` (tests/fixtures/reference_merges/).

It writes tiny random checkpoints (a pretrained model with CLIP-like tensor names, including
a `class_embedding` vector, an embedding table, a 4-D patch embedding and a frozen tensor,
plus three fine-tuned models with low-rank-plus-noise task vectors) and, for every method,
the merged model after each step. The formulas follow the reference semantics documented in
the crate (FusionBench `method/opcm/*.py`, MINGLE `method/mingle/magmax.py`), written
directly from the math:

- SWA: theta^(t) = ((t-1) theta^(t-1) + theta_t) / t
- C-TA: theta^(t) = theta^(t-1) + lam tau_t
- C-TIES: rows [theta^(t-1) - theta0, tau_t] flattened over the whole state dict; global
  trim keeping |x| >= the k-th smallest |x|, k = d - int(keep d); elected sign with the
  majority fallback; disjoint sum / mean / max; theta^(t) = theta^(t-1) + lam u
- MagMax-Ind: tau_max = where(|tau_t| >= |tau_max|, tau_t, tau_max); theta0 + 0.5 tau_max
- OPCM: full-matrix SVD of the merged task vector (numpy, float64), C = U^T tau V with its
  diagonal and C[:k,:k] zeroed, rescale to the mean task-vector norm, class_embedding quirk.
- Continual Iso-C (after the `iso_c` merge of the Iso-C authors' code, as packaged in
  FusionBench `method/isotropic_merging/iso_utils.py`, applied to the first t task vectors):
  every 2-D tensor whose name holds no excluded substring gets S = sum tau_i = U diag(s) Vh
  (thin SVD, float64) -> alpha * mean(s) * U Vh; every other tensor alpha * mean(tau_i).

Conventions shared with the Rust code: models are stored in float32; each step computes in
float64 from the stored float32 values and rounds once; decisions (TIES trim and signs,
MagMax comparison) use float32 differences as the reference computes them.

Only numpy is needed. To run it:

    python3 -m venv .venv && .venv/bin/pip install numpy
    .venv/bin/python crates/madeit-merge/scripts/reference_merges.py \
        crates/madeit-merge/tests/fixtures/reference_merges
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np

SEED = 20250131
NUM_TASKS = 3
D = 8  # hidden size
F = 12  # MLP size


def shapes():
    return {
        "embeddings.class_embedding": (D,),
        "embeddings.patch_embedding.weight": (D, 3, 2, 2),
        "embeddings.position_embedding.weight": (5, D),
        "pre_layrnorm.weight": (D,),
        "pre_layrnorm.bias": (D,),
        "encoder.layers.0.self_attn.q_proj.weight": (D, D),
        "encoder.layers.0.self_attn.q_proj.bias": (D,),
        "encoder.layers.0.self_attn.out_proj.weight": (D, D),
        "encoder.layers.0.mlp.fc1.weight": (F, D),
        "encoder.layers.0.mlp.fc1.bias": (F,),
        "encoder.layers.0.mlp.fc2.weight": (D, F),
        "encoder.layers.0.layer_norm1.weight": (D,),
        "post_layernorm.bias": (D,),  # frozen: identical in every fine-tuned model
    }


FROZEN = {"post_layernorm.bias"}


def make_models(rng):
    pre = {}
    for name, shape in shapes().items():
        pre[name] = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    tasks = []
    for _ in range(NUM_TASKS):
        ft = {}
        for name, p in pre.items():
            if name in FROZEN:
                ft[name] = p.copy()
                continue
            if p.ndim == 2:
                m, n = p.shape
                a = rng.standard_normal((m, 2))
                b = rng.standard_normal((2, n))
                tau = 0.3 * (a @ b) / np.sqrt(n) + 0.02 * rng.standard_normal((m, n))
            else:
                tau = 0.1 * rng.standard_normal(p.shape)
            ft[name] = (p.astype(np.float64) + tau).astype(np.float32)
        tasks.append(ft)
    return pre, tasks


def f64(x):
    return x.astype(np.float64)


def swa(pre, tasks):
    out, merged = [], None
    for t, ft in enumerate(tasks, start=1):
        if t == 1:
            merged = {k: v.copy() for k, v in ft.items()}
        else:
            merged = {
                k: (((t - 1) * f64(merged[k]) + f64(ft[k])) / t).astype(np.float32)
                for k in pre
            }
        out.append(merged)
    return out


def task_arithmetic(pre, tasks, lam=0.3):
    out, merged = [], {k: v.copy() for k, v in pre.items()}
    for ft in tasks:
        merged = {
            k: (f64(merged[k]) + lam * (f64(ft[k]) - f64(pre[k]))).astype(np.float32)
            for k in pre
        }
        out.append(merged)
    return out


def flatten(d, keys):
    return np.concatenate([d[k].reshape(-1) for k in keys])


def unflatten(vec, like, keys):
    out, pos = {}, 0
    for k in keys:
        n = like[k].size
        out[k] = vec[pos : pos + n].reshape(like[k].shape)
        pos += n
    return out


def ties(pre, tasks, lam=0.3, keep=0.2, agg="sum"):
    keys = sorted(pre)
    out, merged = [], None
    for t, ft in enumerate(tasks, start=1):
        if t == 1:
            merged = {
                k: (f64(pre[k]) + lam * (f64(ft[k]) - f64(pre[k]))).astype(np.float32)
                for k in keys
            }
            out.append(merged)
            continue
        m32, f32_, p32 = flatten(merged, keys), flatten(ft, keys), flatten(pre, keys)
        rows32 = np.stack([m32 - p32, f32_ - p32])  # float32 differences (decisions)
        exact = np.stack([f64(m32) - f64(p32), f64(f32_) - f64(p32)])  # exact values
        d = rows32.shape[1]
        kk = d - int(d * keep)
        trimmed = np.zeros_like(rows32)
        for r in range(2):
            mag = np.abs(rows32[r])
            if kk >= 1:
                kth = np.partition(mag, kk - 1)[kk - 1]
            else:
                kth = np.float32(0)
            trimmed[r] = np.where(mag >= kth, rows32[r], np.float32(0))
        elect = np.sign(trimmed[0] + trimmed[1])
        majority = np.sign(elect.sum())
        elect[elect == 0] = majority
        sel = np.where(elect[None, :] > 0, trimmed > 0, trimmed < 0)
        chosen = np.where(sel, exact, 0.0)
        if agg == "sum":
            u = chosen[0] + chosen[1]
        elif agg == "mean":
            u = (chosen[0] + chosen[1]) / np.maximum(sel.sum(axis=0), 1)
        elif agg == "max":
            u = np.maximum(np.abs(chosen[0]), np.abs(chosen[1])) * elect
        else:
            raise ValueError(agg)
        new = (f64(m32) + lam * u).astype(np.float32)
        merged = unflatten(new, pre, keys)
        out.append(merged)
    return out


def magmax(pre, tasks, scale=0.5):
    out, tau_max = [], None
    for ft in tasks:
        tau = {k: ft[k] - pre[k] for k in pre}  # float32 differences
        if tau_max is None:
            tau_max = tau
        else:
            tau_max = {
                k: np.where(np.abs(tau[k]) >= np.abs(tau_max[k]), tau[k], tau_max[k])
                for k in pre
            }
        out.append({k: (f64(pre[k]) + scale * f64(tau_max[k])).astype(np.float32) for k in pre})
    return out


def opcm_role(name, arr, quirk):
    if quirk and name.split(".")[-1] == "class_embedding":
        return "carry"
    if arr.ndim == 2 and name.endswith(".weight") and "embedding" not in name:
        return "project"
    return "plain"


def opcm(pre, tasks, alpha=0.5, quirk=True):
    out, merged, lam, norms = [], None, 1.0, []
    for t, ft in enumerate(tasks, start=1):
        tau = {k: f64(ft[k]) - f64(pre[k]) for k in pre}
        norms.append(np.sqrt(sum(float(np.sum(v * v)) for v in tau.values())))
        if t == 1:
            merged = {k: v.copy() for k, v in ft.items()}
            lam = 1.0
            out.append(merged)
            continue
        nbar = float(np.mean(norms))
        delta = {}
        for k in pre:
            dk = f64(merged[k]) - f64(pre[k])
            role = opcm_role(k, pre[k], quirk)
            if role == "carry":
                delta[k] = dk
            elif role == "plain":
                delta[k] = lam * dk + tau[k]
            else:
                u, s, vh = np.linalg.svd(dk, full_matrices=True)
                ratio = np.cumsum(s) / np.sum(s)
                hits = np.nonzero(ratio > alpha)[0]
                split = int(hits[0]) if hits.size else 0
                c = u.T @ tau[k] @ vh.T
                r = min(c.shape)
                c[np.arange(r), np.arange(r)] = 0.0
                c[:split, :split] = 0.0
                delta[k] = lam * dk + u @ c @ vh
        total = np.sqrt(sum(float(np.sum(v * v)) for v in delta.values()))
        lam = total / nbar
        merged = {k: (f64(pre[k]) + delta[k] / lam).astype(np.float32) for k in pre}
        out.append(merged)
    return out


def iso_c(pre, tasks, alpha=1.0, exclude=()):
    out, total = [], {k: np.zeros(v.shape) for k, v in pre.items()}
    for t, ft in enumerate(tasks, start=1):
        for k in pre:
            total[k] = total[k] + (f64(ft[k]) - f64(pre[k]))
        merged = {}
        for k in pre:
            if total[k].ndim == 2 and not any(p in k for p in exclude):
                u, s, vh = np.linalg.svd(total[k], full_matrices=False)
                delta = np.mean(s) * (u @ vh)
            else:
                delta = total[k] / t
            merged[k] = (f64(pre[k]) + alpha * delta).astype(np.float32)
        out.append(merged)
    return out


def write_safetensors(path, tensors):
    """Minimal safetensors writer: 8-byte little-endian header size, JSON header, data."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for b in blobs:
            fh.write(b)


def main():
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/reference_merges")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    pre, tasks = make_models(rng)
    write_safetensors(out_dir / "pretrained.safetensors", pre)
    for i, ft in enumerate(tasks, start=1):
        write_safetensors(out_dir / f"task{i}.safetensors", ft)
    expected = {
        "swa": swa(pre, tasks),
        "task_arithmetic": task_arithmetic(pre, tasks),
        "ties": ties(pre, tasks),
        "ties_mean": ties(pre, tasks, agg="mean"),
        "ties_max": ties(pre, tasks, agg="max"),
        "magmax": magmax(pre, tasks),
        "opcm": opcm(pre, tasks),
        "opcm_no_quirk": opcm(pre, tasks, quirk=False),
        "iso_c": iso_c(pre, tasks),
        "iso_c_excluded": iso_c(pre, tasks, alpha=0.8, exclude=("position_embedding",)),
    }
    for method, steps in expected.items():
        flat = {}
        for t, merged in enumerate(steps, start=1):
            for k in pre:
                flat[f"step{t}.{k}"] = merged[k]
        write_safetensors(out_dir / f"expected_{method}.safetensors", flat)
    print(f"wrote {len(tasks)} tasks and {len(expected)} methods to {out_dir}")


if __name__ == "__main__":
    main()
