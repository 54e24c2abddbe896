#!/usr/bin/env python3
"""Reference outputs of transformers' CLIP vision tower, for madeit-vit's parity tests.

Modes
-----
  clip_reference.py                      write the test fixtures (default directory:
                                          crates/madeit-vit/tests/fixtures)
  clip_reference.py --fixtures DIR       same, into DIR
  clip_reference.py --vit-b-32 OUTDIR    write a random ViT-B/32-shaped
                                          CLIPVisionModelWithProjection (config.json +
                                          model.safetensors, f32, ~350 MB) for benchmarks

Nothing is downloaded: every model is built from a config and initialised from a fixed
seed. The fixtures are

  clip_tiny/        CLIPVisionModelWithProjection (d=64, 2 layers, 4 heads, 32 px images,
                    8 px patches, quick_gelu, projection 32), `vision_model.`-prefixed, F32
  clip_tiny_full/   a full CLIPModel (vision tower as above but with hidden_act "gelu", plus
                    a tiny text tower), saved in F16
  each with config.json, model.safetensors and io.safetensors holding `pixel_values`
  [2, 3, 32, 32] and the expected `last_hidden_state`, `pooled_output`, `image_embeds`
  (computed in float64 from the stored weights, written as F32).

Setup
-----
  python3 -m venv .venv
  .venv/bin/pip install torch transformers safetensors numpy
  .venv/bin/python scripts/clip_reference.py
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

SEED = 20240611


def tiny_vision_config(hidden_act: str) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_channels=3,
        projection_dim=32,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
    )


def perturb_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every parameter a distinctive random value, so that a parameter that is read
    wrongly (swapped, transposed, ignored) changes the outputs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias") or "norm" in name:
                p.copy_(0.1 * noise)
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(noise / fan_in**0.5)
            else:
                p.copy_(0.5 * noise)


def vision_outputs(vision_tower, projection, pixels):
    """Runs the vision tower and projection in float64 on float64 copies."""
    vision_tower = vision_tower.double().eval()
    projection = projection.double().eval()
    with torch.no_grad():
        out = vision_tower(pixel_values=pixels.double())
        embeds = projection(out.pooler_output)
    return {
        "pixel_values": pixels.float().contiguous(),
        "last_hidden_state": out.last_hidden_state.float().contiguous(),
        "pooled_output": out.pooler_output.float().contiguous(),
        "image_embeds": embeds.float().contiguous(),
    }


def write_tiny_vision(root: str, gen: torch.Generator) -> None:
    out = os.path.join(root, "clip_tiny")
    model = CLIPVisionModelWithProjection(tiny_vision_config("quick_gelu"))
    perturb_(model, gen)
    model.save_pretrained(out)
    pixels = torch.randn((2, 3, 32, 32), generator=gen)
    io = vision_outputs(model.vision_model, model.visual_projection, pixels)
    save_file(io, os.path.join(out, "io.safetensors"))


def write_tiny_full(root: str, gen: torch.Generator) -> None:
    out = os.path.join(root, "clip_tiny_full")
    text = CLIPTextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    vision = tiny_vision_config("gelu")
    cfg = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32
    )
    model = CLIPModel(cfg)
    perturb_(model, gen)
    model = model.half()
    model.save_pretrained(out)
    pixels = torch.randn((2, 3, 32, 32), generator=gen)
    io = vision_outputs(model.vision_model, model.visual_projection, pixels)
    save_file(io, os.path.join(out, "io.safetensors"))


def write_vit_b_32(outdir: str) -> None:
    torch.manual_seed(SEED)
    cfg = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
        projection_dim=512,
        hidden_act="quick_gelu",
    )
    model = CLIPVisionModelWithProjection(cfg)
    model.save_pretrained(outdir)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote a random ViT-B/32 CLIPVisionModelWithProjection ({n} parameters) to {outdir}")


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "crates", "madeit-vit", "tests", "fixtures")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", default=default, help="fixture directory")
    ap.add_argument("--vit-b-32", metavar="OUTDIR", help="write a random ViT-B/32 model")
    args = ap.parse_args()
    if args.vit_b_32:
        write_vit_b_32(args.vit_b_32)
        return 0
    gen = torch.Generator().manual_seed(SEED)
    os.makedirs(args.fixtures, exist_ok=True)
    write_tiny_vision(args.fixtures, gen)
    write_tiny_full(args.fixtures, gen)
    total = 0
    for dirpath, _, files in os.walk(args.fixtures):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    print(f"wrote fixtures to {os.path.normpath(args.fixtures)} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
