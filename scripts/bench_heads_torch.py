#!/usr/bin/env python3
"""Times FusionBench's zero-shot head recipe with transformers on a CLIPModel folder, and
compares the heads with those `madeit heads` wrote.

  bench_heads_torch.py --model DIR --tasks sun397 cifar100 [--madeit-heads HEADDIR]

DIR is a CLIPModel folder with its tokenizer (e.g. the random ViT-B/32 one of
`scripts/clip_text_reference.py --clip-b-32 DIR`). For every task the class names and
templates are read from crates/madeit-vit/data/tasks/; the head is computed as
`HFCLIPClassifier.set_classification_task` does (per class, one padded batch of its
templates), timed after one warm-up class, in float32 on the CPU with the threads torch
chooses (set OMP_NUM_THREADS / torch.set_num_threads to match the Rust side). With
--madeit-heads, HEADDIR/<task>.safetensors (`head.weight`) is compared with the result.
"""

import argparse
import os
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS_DIR = os.path.join(HERE, "..", "crates", "madeit-vit", "data", "tasks")


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def head(model, tokenizer, classes, templates):
    weights = []
    for c in classes:
        inputs = tokenizer([t.replace("{}", c) for t in templates], return_tensors="pt", padding=True)
        emb = model.text_projection(model.text_model(**inputs)[1])
        emb = emb / emb.norm(p=2, dim=-1, keepdim=True)
        emb = emb.mean(dim=0)
        weights.append(emb / emb.norm(p=2, dim=-1, keepdim=True))
    return torch.stack(weights, dim=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tasks", nargs="+", default=["sun397"])
    ap.add_argument("--madeit-heads")
    args = ap.parse_args()
    model = CLIPModel.from_pretrained(args.model).eval()
    tokenizer = CLIPTokenizer.from_pretrained(args.model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.no_grad():
        for task in args.tasks:
            classes = read_lines(os.path.join(TASKS_DIR, f"{task}.classes.txt"))
            templates = read_lines(os.path.join(TASKS_DIR, f"{task}.templates.txt"))
            head(model, tokenizer, classes[:1], templates)  # warm-up
            t0 = time.perf_counter()
            h = head(model, tokenizer, classes, templates)
            dt = time.perf_counter() - t0
            n = len(classes) * len(templates)
            line = f"{task}: {len(classes)} classes x {len(templates)} templates = {n} prompts in {dt:.2f} s ({n / dt:.1f} prompts/s)"
            if args.madeit_heads:
                theirs = load_file(os.path.join(args.madeit_heads, f"{task}.safetensors"))["head.weight"]
                line += f"; max|madeit - transformers| = {(theirs - h).abs().max().item():.2e}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
