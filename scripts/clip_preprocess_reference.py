#!/usr/bin/env python3
"""Reference outputs of transformers' CLIP image preprocessing, and datasets written by the
`datasets` library, for madeit-data's tests; and the parity measurement of
docs/real-benchmarks.md.

Modes
-----
  clip_preprocess_reference.py --fixtures DIR
      Write the test fixtures (default: crates/madeit-data/tests/fixtures/datasets):
        images/            real images from the scikit-image and matplotlib wheels (CC0 /
                           public domain, see images/SOURCES.md) and format variants made
                           from them with PIL (palette, 16-bit grey, grey + alpha, CMYK
                           JPEG, lossy and lossless WebP, RGBA WebP)
        reference.safetensors
                           `pil.<file>`: CLIPImageProcessorPil (PIL, the classic
                           processor) at size 48 / crop 48, `[3, 48, 48]` F32;
                           `tv.<file>`: CLIPImageProcessor (torchvision backend, the default
                           of transformers 5) on the same images
        folder/            a two-class image folder (one sub-folder per class) of the
                           small images (all but rocket.jpg and grace_hopper.jpg)
        parquet/           the same images as a `datasets` Parquet file (`Image` and
                           `ClassLabel` features), written by `Dataset.to_parquet`
  clip_preprocess_reference.py --measure --madeit BIN --images DIR [DIR ...]
      Preprocess every image of the folders with `madeit embed --images ... --pixels-out`
      and with both transformers processors at CLIP's 224 px, and report the mean
      absolute difference per image and the argmax agreement of a random CLIP's logits.

Nothing is downloaded but the two wheels (`pip download --no-deps`); every model is
random, built from a config with a fixed seed.

Setup
-----
  python3 -m venv .venv
  .venv/bin/pip install torch torchvision transformers datasets safetensors numpy pillow
"""

import argparse
import glob
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
from PIL import Image

SEED = 20261204
WHEELS = ["scikit-image==0.26.0", "matplotlib==3.11.2"]
# Real images for the fixture: name in the wheel -> (file name, licence).
REAL = {
    "skimage/data/horse.png": "CC0 (Andreas Preuss), scikit-image `data.horse`",
    "skimage/data/microaneurysms.png": "CC0 (Andreas Maier), scikit-image `data.microaneurysms`",
    "skimage/data/rocket.jpg": "public domain (SpaceX), scikit-image `data.rocket`",
    "matplotlib/mpl-data/sample_data/grace_hopper.jpg": "public domain (U.S. Navy), matplotlib sample data",
}
FIXTURE_SIZE = 48


def wheel_images(tmp):
    """Downloads the two wheels and unpacks their image files into `tmp`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, *WHEELS],
        check=True,
    )
    out = {}
    for whl in glob.glob(os.path.join(tmp, "*.whl")):
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                if ("skimage/data/" in name or "sample_data/" in name) and name.lower().endswith(
                    (".png", ".jpg", ".jpeg")
                ):
                    out[name] = z.read(name)
    return out


def variants(src):
    """Format variants of an RGB PIL image, as (file name, bytes)."""
    small = src.resize((96, 80), Image.BICUBIC)
    out = []

    def save(name, im, fmt, **kw):
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        out.append((name, b.getvalue()))

    save("variant_palette.png", small.convert("P", palette=Image.ADAPTIVE, colors=32), "PNG")
    grey16 = Image.fromarray(np.asarray(small.convert("L"), dtype=np.uint16) * 257)
    save("variant_grey16.png", grey16, "PNG")
    la = small.convert("LA")
    save("variant_grey_alpha.png", la, "PNG")
    save("variant_cmyk.jpg", small.convert("CMYK"), "JPEG", quality=90)
    save("variant_lossy.webp", small, "WEBP", quality=80)
    save("variant_lossless.webp", small, "WEBP", lossless=True)
    rgba = small.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:, : a.shape[1] // 2, 3] = 64
    save("variant_rgba.webp", Image.fromarray(a, "RGBA"), "WEBP", lossless=True)
    return out


def processors(size):
    from transformers.models.clip.image_processing_clip import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    kw = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return {"pil": CLIPImageProcessorPil(**kw), "tv": CLIPImageProcessor(**kw)}


def preprocess(proc, data):
    im = Image.open(io.BytesIO(data))
    return proc(images=im, return_tensors="np")["pixel_values"][0].astype(np.float32)


def write_fixtures(out):
    import torch  # noqa: F401  (the torchvision backend needs it)
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from safetensors.numpy import save_file

    images_dir = os.path.join(out, "images")
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(images_dir)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel_images(tmp)
    files = []
    sources = ["# Fixture images", "", "| file | source and licence |", "|---|---|"]
    for key, licence in REAL.items():
        name = os.path.basename(key)
        files.append((name, wheel[key]))
        sources.append(f"| {name} | {licence} |")
    base = Image.open(io.BytesIO(wheel["matplotlib/mpl-data/sample_data/grace_hopper.jpg"])).convert("RGB")
    for name, data in variants(base):
        files.append((name, data))
        sources.append(f"| {name} | made from grace_hopper.jpg by this script (PIL) |")
    for name, data in files:
        with open(os.path.join(images_dir, name), "wb") as f:
            f.write(data)
    with open(os.path.join(images_dir, "SOURCES.md"), "w") as f:
        f.write("\n".join(sources) + "\n")

    tensors = {}
    for kind, proc in processors(FIXTURE_SIZE).items():
        for name, data in files:
            tensors[f"{kind}.{name}"] = preprocess(proc, data)
    save_file(tensors, os.path.join(out, "reference.safetensors"))

    # A two-class dataset in both layouts: class `jpeg` holds the JPEGs, `other` the rest.
    classes = ["jpeg", "other"]
    rows = []
    for name, data in files:
        if name in ("rocket.jpg", "grace_hopper.jpg"):
            continue
        label = 0 if name.endswith(".jpg") else 1
        rows.append((name, data, label))
    for name, data, label in rows:
        d = os.path.join(out, "folder", classes[label])
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=classes)})
    ds = Dataset.from_dict(
        {
            "image": [{"bytes": data, "path": name} for name, data, _ in rows],
            "label": [label for _, _, label in rows],
        },
        features=features,
    )
    os.makedirs(os.path.join(out, "parquet"))
    ds.to_parquet(os.path.join(out, "parquet", "test-00000-of-00001.parquet"))
    print(f"wrote {len(files)} images, {len(tensors)} references, folder/ and parquet/ to {out}")


def measure(args):
    import torch
    from safetensors.numpy import load_file
    from transformers import CLIPConfig, CLIPModel

    paths = []
    for d in args.images:
        for ext in ("png", "jpg", "jpeg", "webp"):
            paths += glob.glob(os.path.join(d, "**", f"*.{ext}"), recursive=True)
    paths = sorted(set(paths))
    procs = processors(224)
    torch.manual_seed(SEED)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        vision_config=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, patch_size=32),
        projection_dim=64,
    )
    model = CLIPModel(cfg).eval()
    head = torch.nn.functional.normalize(torch.randn(10, 64), dim=-1)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        px_file = os.path.join(tmp, "pixels.safetensors")
        subprocess.run(
            [args.madeit, "embed", "--model", tmp, "--images", *paths, "--pixels-out", px_file,
             "--out", os.path.join(tmp, "emb.safetensors")],
            check=True,
        )
        ours = load_file(px_file)["pixel_values"]

    def logits(px):
        with torch.no_grad():
            e = model.get_image_features(pixel_values=torch.from_numpy(px))
            if not isinstance(e, torch.Tensor):
                e = e.pooler_output
            return (torch.nn.functional.normalize(e, dim=-1) @ head.T).numpy()

    rows = []
    for kind, proc in procs.items():
        ref = np.stack([preprocess(proc, open(p, "rb").read()) for p in paths])
        diff = np.abs(ref - ours).mean(axis=(1, 2, 3))
        agree = (logits(ref).argmax(1) == logits(ours).argmax(1)).mean()
        rows.append((kind, diff.mean(), diff.max(), agree))
        if args.verbose:
            for p, d in zip(paths, diff):
                print(f"{kind} {os.path.basename(p)} {d:.5f}")
    print(f"{len(paths)} images")
    print("| reference | mean abs diff (mean over images) | worst image | argmax agreement |")
    print("|---|---:|---:|---:|")
    for kind, mean, worst, agree in rows:
        name = "CLIPImageProcessorPil (PIL)" if kind == "pil" else "CLIPImageProcessor (torchvision)"
        print(f"| {name} | {mean:.4f} | {worst:.4f} | {100 * agree:.1f} % |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", nargs="?", const="crates/madeit-data/tests/fixtures/datasets")
    ap.add_argument("--measure", action="store_true")
    ap.add_argument("--madeit", default="target/release/madeit")
    ap.add_argument("--images", nargs="*", default=[])
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.measure:
        measure(args)
    else:
        write_fixtures(args.fixtures or "crates/madeit-data/tests/fixtures/datasets")


if __name__ == "__main__":
    main()
