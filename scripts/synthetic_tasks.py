#!/usr/bin/env python3
"""Synthetic fine-tuned checkpoints of a model folder, for whole-process timings of
`madeit merge` (docs/performance.md).

    synthetic_tasks.py PRETRAINED_DIR OUT_DIR [--tasks 3] [--rank 16] [--seed 0]

Writes OUT_DIR/task1 ... OUT_DIR/taskN, each a copy of PRETRAINED_DIR's config.json and a
model.safetensors where every 2-D linear weight W (q, k, v, out_proj, fc1, fc2) becomes
W + A B^T / sqrt(rank) * 0.02 + N(0, 1e-3^2) (a rank-`rank` update plus noise, the
distribution of the absorb benches) and every other tensor gets N(0, 1e-3^2) noise.
Float32, numpy's PCG64 generator seeded with `seed * 1000 + task`.

Setup: python3 -m venv .venv && .venv/bin/pip install numpy safetensors
"""

import argparse
import os
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

TARGETS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pretrained")
    ap.add_argument("out")
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base = load_file(os.path.join(args.pretrained, "model.safetensors"))
    for t in range(1, args.tasks + 1):
        rng = np.random.default_rng(args.seed * 1000 + t)
        out = {}
        for name, w in base.items():
            w = w.astype(np.float32)
            noise = rng.standard_normal(w.shape, dtype=np.float32) * 1e-3
            if name.endswith(TARGETS) and w.ndim == 2:
                a = rng.standard_normal((w.shape[0], args.rank), dtype=np.float32)
                b = rng.standard_normal((w.shape[1], args.rank), dtype=np.float32)
                noise += (a @ b.T) * (0.02 / np.sqrt(args.rank))
            out[name] = (w + noise).astype(np.float32)
        d = os.path.join(args.out, f"task{t}")
        os.makedirs(d, exist_ok=True)
        shutil.copy(os.path.join(args.pretrained, "config.json"), d)
        save_file(out, os.path.join(d, "model.safetensors"))
        print(f"wrote {d}")


if __name__ == "__main__":
    main()
