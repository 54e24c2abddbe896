#!/usr/bin/env python3
"""Times transformers' CLIP vision forward on the ViT-B/32 weights that madeit-vit's
`forward` bench loads, for the comparison in docs/performance.md ("## Forward").

  clip_reference.py --vit-b-32 DIR          # once: write the random ViT-B/32 model
  bench_forward_torch.py DIR [--batch 32] [--threads 2] [--iters 10] [--profile]

Runs `CLIPVisionModelWithProjection` in float32 under `torch.no_grad()` with
`torch.set_num_threads(THREADS)`, after two warm-up batches, and reports the median time of
one batch and images per second. With `--profile`, also runs three batches under
`torch.profiler` and prints the operators by self CPU time (the per-operation breakdown that
docs/performance.md compares with `perf report` of the madeit forward).

Setup
-----
  python3 -m venv .venv
  .venv/bin/pip install torch transformers safetensors numpy
"""

import argparse
import statistics
import sys
import time

import torch
from transformers import CLIPVisionModelWithProjection


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = CLIPVisionModelWithProjection.from_pretrained(args.model_dir).float().eval()
    cfg = model.config
    gen = torch.Generator().manual_seed(2)
    pixels = torch.rand(
        (args.batch, cfg.num_channels, cfg.image_size, cfg.image_size), generator=gen
    ) * 3.0 - 1.5
    times = []
    with torch.no_grad():
        for _ in range(args.warmup):
            model(pixel_values=pixels)
        for _ in range(args.iters):
            t0 = time.perf_counter()
            out = model(pixel_values=pixels)
            _ = out.image_embeds.sum().item()
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(
        f"torch {torch.__version__} threads={args.threads} batch={args.batch} "
        f"attn={model.config._attn_implementation}: median {med * 1000:.1f} ms/batch, "
        f"{args.batch / med:.2f} images/s (min {min(times) * 1000:.1f} ms, "
        f"max {max(times) * 1000:.1f} ms over {len(times)} runs)"
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                model(pixel_values=pixels)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
