#!/usr/bin/env python3
"""The test benchmark of `madeit run --benchmark` and its Python reference, evaluated the
FusionBench way; and the ViT-B/32-shaped benchmark of docs/performance.md.

Modes
-----
  benchmark_fixture.py [--out DIR]
      Write the fixture (default: crates/madeit-cli/tests/fixtures/benchmark):

        models/models--madeit--clip-tiny/     a random CLIPModel (text and vision towers) in
          refs/main, snapshots/<rev>/         the Hugging Face cache layout, with its small
                                              CLIP tokenizer (the first 500 merges of CLIP's
                                              BPE file) and preprocessor_config.json (32 px)
        models/finetuned/{alpha,beta,gamma}/  three random "fine-tuned" CLIPVisionModels
                                              (alpha and gamma with transformers 5's bare
                                              names, beta `vision_model.`-prefixed as the hub
                                              files of FusionBench)
        data/alpha/{test,train}/<class>/      an image folder (JPEG, PNG in RGB, grey, palette
                                              and RGBA, lossless WebP)
        data/datasets--madeit--beta/...       `datasets` Parquet files (Image and ClassLabel
                                              features) in the cache layout, written by
                                              `Dataset.to_parquet`
        data/gamma/data/*.parquet             `datasets` Parquet files whose labels are plain
                                              integers (class names from the head)
        heads/beta.safetensors                a head file (FusionBench's recipe, with the
                                              pretrained CLIP's logit scale and projection)
        benchmark.toml                        the benchmark file
        reference.json                        the FusionBench-way reference: accuracies of the
                                              pretrained model and of each fine-tuned tower on
                                              every task, and the accuracy matrix of
                                              continual task arithmetic (lambda 0.3) over the
                                              task order of seed 42

      Labels are the fine-tuned tower's predictions (so each fine-tuned tower is right on
      its own task, and the pretrained model and the merges are not), and only images
      whose predictions under every reference model are stable are kept: the same argmax
      with the PIL and the torchvision processors, and under 6 draws of Gaussian noise of
      0.03 (normalised units) on the pixels. So the accuracy matrices do not hinge on the
      last bits of a JPEG decoder or a resize.

  benchmark_fixture.py --perf DIR [--images N]
      A ViT-B/32-shaped benchmark for docs/performance.md: a random CLIPModel of
      clip-vit-base-patch32's shape (from scripts/clip_text_reference.py --clip-b-32, run
      first into DIR/clip), its vision tower as the one "fine-tuned" tower, and a test
      split of N (default 20,000) JPEG images of 320x240 (crops of the scikit-image and
      matplotlib wheel photos with colour jitter) in one `datasets` Parquet file.

Nothing is downloaded but the two wheels of --perf (`pip download --no-deps`); every model
is random, built from a config with a fixed seed.

Setup
-----
  python3 -m venv .venv
  .venv/bin/pip install torch torchvision transformers datasets safetensors numpy pillow
"""

import argparse
import io
import json
import os
import random
import shutil
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from clip_text_reference import (  # noqa: E402
    SMALL_MERGES,
    fusionbench_head,
    load_tokenizer,
    read_lines,
)

ROOT = os.path.join(HERE, "..")
BPE = os.path.join(ROOT, "crates", "madeit-vit", "tests", "fixtures", "clip_bpe", "bpe_simple_vocab_16e6.txt.gz")
TASKS_DIR = os.path.join(ROOT, "crates", "madeit-vit", "data", "tasks")
SEED = 20261205
SIZE = 32
REVISION = "0123456789abcdef0123456789abcdef01234567"
LAMBDA = 0.3
ORDER_SEED = 42
NOISE = 0.03
NOISE_DRAWS = 6
MAX_TRIES = 400

# Task: (classes, test images per class, train images per class)
ALPHA_CLASSES = ["circles", "squares", "stripes"]
ALPHA_TEMPLATES = ["a photo of {}.", "a drawing of {}."]
BETA_CLASSES = ["north", "east", "south", "west"]
BETA_TEMPLATES = ["a satellite photo facing {}.", "{}"]
TEST_PER_CLASS = 8
TRAIN_PER_CLASS = 4


def make_clip():
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=256 * 2 + SMALL_MERGES + 2, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=24, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=SIZE, patch_size=8, num_channels=3, projection_dim=24,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    cfg = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                     projection_dim=24, logit_scale_init_value=2.6592)
    torch.manual_seed(SEED)
    model = CLIPModel(cfg).eval()
    # Distinctive values (HF's default init is tiny and near-symmetric).
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias") or "norm" in name:
                p.copy_(0.05 * noise)
            elif p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.5 * noise)
    return model


def finetune_of(vision_model, seed, scale=0.25):
    """A copy of the vision tower with every tensor moved by scale * its std * noise."""
    import copy

    ft = copy.deepcopy(vision_model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in ft.named_parameters():
            std = float(p.std()) if p.numel() > 1 else 0.1
            p.add_(scale * max(std, 0.02) * torch.randn(p.shape, generator=g))
    return ft


def vision_state(vm):
    return {k: v.detach().clone() for k, v in vm.state_dict().items()}


def candidate_image(rng, mode):
    """A random smooth picture (gradients, stripes, blobs) of random size, as PIL."""
    w, h = rng.randint(36, 64), rng.randint(36, 64)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3)
        ph = rng.uniform(0, 6.3)
        img[..., c] = 127 + 90 * np.sin(fx * x + fy * y + ph) + rng.uniform(-30, 30)
    for _ in range(rng.randint(1, 3)):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 20)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[mask] = [rng.uniform(0, 255) for _ in range(3)]
    rgb = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    if mode == "L":
        return rgb.convert("L")
    if mode == "P":
        return rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    if mode == "RGBA":
        a = np.asarray(rgb.convert("RGBA")).copy()
        a[:, : a.shape[1] // 2, 3] = 90
        return Image.fromarray(a, "RGBA")
    return rgb


def encode(img, fmt):
    b = io.BytesIO()
    if fmt == "jpg":
        img.save(b, "JPEG", quality=92)
    elif fmt == "webp":
        img.save(b, "WEBP", lossless=True)
    else:
        img.save(b, "PNG", optimize=True)
    return b.getvalue()


class Reference:
    """FusionBench's evaluation: CLIPProcessor.from_pretrained, image.convert("RGB"), the
    pretrained CLIP with its vision_model replaced, logits = exp(logit_scale) cos."""

    def __init__(self, clip_dir):
        from transformers import CLIPModel, CLIPProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        self.clip = CLIPModel.from_pretrained(clip_dir).eval()
        self.processor = CLIPProcessor.from_pretrained(clip_dir)
        kw = dict(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
        self.pil = CLIPImageProcessorPil(**kw)
        self.base = vision_state(self.clip.vision_model)
        self.towers = {}

    def pixels(self, data, processor=None):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        proc = processor or self.processor
        return proc(images=[img], return_tensors="pt")["pixel_values"][0]

    def tower(self, state):
        """The pretrained CLIP's vision tower with `state` (cached per state)."""
        import copy

        key = id(state)
        if key not in self.towers:
            vm = copy.deepcopy(self.clip.vision_model)
            vm.load_state_dict(state)
            self.towers[key] = (state, vm.eval())
        return self.towers[key][1]

    def logits(self, state, head, px):
        with torch.no_grad():
            e = self.clip.visual_projection(self.tower(state)(pixel_values=px)[1])
            e = e / e.norm(dim=-1, keepdim=True)
            return self.clip.logit_scale.exp() * e @ head.T

    def stable_prediction(self, data, models, gen):
        """The argmax under every (state, head) of `models`, or None if any is unstable."""
        px = self.pixels(data)
        batch = torch.stack(
            [px, self.pixels(data, self.pil)]
            + [px + NOISE * torch.randn(px.shape, generator=gen) for _ in range(NOISE_DRAWS)]
        )
        preds = []
        for state, head in models:
            p = self.logits(state, head, batch).argmax(-1)
            if bool((p != p[0]).any()):
                return None
            preds.append(int(p[0]))
        return preds

    def accuracy(self, state, head, items):
        px = torch.stack([self.pixels(d) for d, _ in items])
        labels = torch.tensor([l for _, l in items])
        pred = self.logits(state, head, px).argmax(-1)
        return int((pred == labels).sum()) / len(items)


def task_arithmetic(base, states, order):
    """Continual task arithmetic: theta^(t) = theta^(t-1) + lambda tau_t, every step."""
    cur = {k: v.clone() for k, v in base.items()}
    out = []
    for i in order:
        for k in cur:
            cur[k] = cur[k] + LAMBDA * (states[i][k] - base[k])
        out.append({k: v.clone() for k, v in cur.items()})
    return out


def write_fixture(out):
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    rng = random.Random(SEED)
    gen = torch.Generator().manual_seed(SEED + 2)

    # The pretrained CLIPModel, in the Hugging Face cache layout.
    repo = os.path.join(out, "models", "models--madeit--clip-tiny")
    clip_dir = os.path.join(repo, "snapshots", REVISION)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(REVISION)
    clip = make_clip()
    clip.save_pretrained(clip_dir)
    tok = load_tokenizer(BPE, SMALL_MERGES)
    kw = dict(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    # As the hub's CLIP folders hold them: preprocessor_config.json and the tokenizer files
    # (CLIPProcessor.from_pretrained reads both).
    CLIPImageProcessor(**kw).save_pretrained(clip_dir)
    tok.save_pretrained(clip_dir)

    # Fine-tuned towers: the pretrained vision tower plus noise.
    tasks = ["alpha", "beta", "gamma"]
    fts = {}
    for i, t in enumerate(tasks):
        # transformers 5: CLIPModel.vision_model is itself a CLIPVisionModel.
        vm = finetune_of(clip.vision_model, SEED + 10 + i).eval()
        fts[t] = vm
        d = os.path.join(out, "models", "finetuned", t)
        vm.save_pretrained(d)
        if t == "beta":
            # As the hub's fine-tuned checkpoints are stored: `vision_model.`-prefixed.
            from safetensors.torch import load_file

            sd = load_file(os.path.join(d, "model.safetensors"))
            sd = {(k if k.startswith("vision_model.") else "vision_model." + k): v.contiguous() for k, v in sd.items()}
            save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})

    ref = Reference(clip_dir)
    base = ref.base
    states = {t: vision_state(fts[t]) for t in tasks}

    # Heads, FusionBench's recipe with the pretrained CLIP's text tower.
    gamma_classes = read_lines(os.path.join(TASKS_DIR, "pcam.classes.txt"))
    gamma_templates = read_lines(os.path.join(TASKS_DIR, "pcam.templates.txt"))
    with torch.no_grad():
        heads = {
            "alpha": fusionbench_head(ref.clip, tok, ALPHA_CLASSES, ALPHA_TEMPLATES),
            "beta": fusionbench_head(ref.clip, tok, BETA_CLASSES, BETA_TEMPLATES),
            "gamma": fusionbench_head(ref.clip, tok, gamma_classes, gamma_templates),
        }
    os.makedirs(os.path.join(out, "heads"))
    save_file(
        {
            "head.weight": heads["beta"].float().contiguous(),
            "logit_scale": ref.clip.logit_scale.detach().reshape(()).float(),
            "visual_projection.weight": ref.clip.visual_projection.weight.detach().float().contiguous(),
        },
        os.path.join(out, "heads", "beta.safetensors"),
        metadata={"task": "beta-head", "class_names": json.dumps(BETA_CLASSES),
                  "templates": json.dumps(BETA_TEMPLATES)},
    )

    # CPython's random.seed(42); random.shuffle(ids): the protocol's order.
    order = list(range(1, len(tasks) + 1))
    random.Random(ORDER_SEED).shuffle(order)
    order_idx = [i - 1 for i in order]
    merges = task_arithmetic(base, [states[t] for t in tasks], order_idx)

    # Every model each task is evaluated with in the reference.
    def models_for(t):
        ti = tasks.index(t)
        ms = [(base, heads[t]), (states[t], heads[t])]
        pos = order_idx.index(ti)
        ms += [(merges[j], heads[t]) for j in range(pos, len(tasks))]
        return ms

    sizes = {"alpha": len(ALPHA_CLASSES), "beta": len(BETA_CLASSES), "gamma": len(gamma_classes)}
    modes = ["RGB", "RGB", "L", "P", "RGBA", "RGB"]
    fmts = {"RGB": ["jpg", "png", "webp"], "L": ["png", "jpg"], "P": ["png"], "RGBA": ["png", "webp"]}
    data = {}
    for t in tasks:
        want = {c: TEST_PER_CLASS + (TRAIN_PER_CLASS if t != "gamma" else 0) for c in range(sizes[t])}
        got = {c: [] for c in range(sizes[t])}
        tries = 0
        # Label = the fine-tuned tower's prediction; a class it (almost) never predicts is
        # filled with stable images of any prediction after MAX_TRIES candidates.
        while any(len(got[c]) < want[c] for c in got):
            tries += 1
            if tries > 3 * MAX_TRIES:
                raise SystemExit(f"task {t}: not enough stable images: {[len(v) for v in got.values()]}")
            mode = modes[tries % len(modes)] if t == "alpha" else "RGB"
            fmt = rng.choice(fmts[mode]) if t == "alpha" else "jpg"
            blob = encode(candidate_image(rng, mode), fmt)
            preds = ref.stable_prediction(blob, models_for(t), gen)
            if preds is None:
                continue
            label = preds[1]  # the fine-tuned tower's prediction
            if tries > MAX_TRIES:
                label = min((c for c in got if len(got[c]) < want[c]), key=lambda c: len(got[c]))
            if len(got[label]) < want[label]:
                got[label].append((blob, fmt))
        data[t] = got
        print(f"{t}: {tries} candidates for {sum(want.values())} images")

    def split(t, which):
        items = []
        for c, blobs in data[t].items():
            sel = blobs[:TEST_PER_CLASS] if which == "test" else blobs[TEST_PER_CLASS:]
            items += [(b, c, fmt) for b, fmt in sel]
        return items

    # alpha: an image folder.
    for which in ("test", "train"):
        for i, (b, c, fmt) in enumerate(split("alpha", which)):
            d = os.path.join(out, "data", "alpha", which, ALPHA_CLASSES[c])
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"{which}_{i:03d}.{fmt}"), "wb") as f:
                f.write(b)
    # beta: Parquet with ClassLabel names, in the cache layout; rows shuffled.
    beta_dir = os.path.join(out, "data", "datasets--madeit--beta", "snapshots", REVISION, "data")
    os.makedirs(beta_dir)
    for which in ("test", "train"):
        items = split("beta", which)
        rng.shuffle(items)
        feats = Features({"image": ImageFeature(), "label": ClassLabel(names=BETA_CLASSES)})
        Dataset.from_dict(
            {"image": [{"bytes": b, "path": f"{which}_{i}.jpg"} for i, (b, _, _) in enumerate(items)],
             "label": [c for _, c, _ in items]},
            features=feats,
        ).to_parquet(os.path.join(beta_dir, f"{which}-00000-of-00001.parquet"))
    # gamma: Parquet with plain integer labels (no names), test split only.
    gamma_dir = os.path.join(out, "data", "gamma", "data")
    os.makedirs(gamma_dir)
    items = split("gamma", "test")
    rng.shuffle(items)
    Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b, _, _ in items], "label": [c for _, c, _ in items]},
        features=Features({"image": ImageFeature(), "label": Value("int64")}),
    ).to_parquet(os.path.join(gamma_dir, "test-00000-of-00001.parquet"))

    # The benchmark file.
    toml = f'''# The test benchmark of `madeit run --benchmark` (crates/madeit-cli/tests/benchmark.rs),
# written by scripts/benchmark_fixture.py: a random CLIPModel, three random fine-tuned
# vision towers and small synthetic datasets in both formats.
name = "fixture"
models_root = "models"
data_root = "data"
pretrained = "madeit/clip-tiny"
seed = {{ split = "train", per_class = 3 }}

[[task]]
name = "alpha"
finetuned = "./models/finetuned/alpha"
dataset = "alpha"
head = {{ classes = {json.dumps(ALPHA_CLASSES)}, templates = {json.dumps(ALPHA_TEMPLATES)} }}

[[task]]
name = "beta"
finetuned = "./models/finetuned/beta"
dataset = "madeit/beta"
head = "heads/beta.safetensors"

[[task]]
name = "gamma"
finetuned = "./models/finetuned/gamma"
dataset = {{ path = "gamma", format = "parquet" }}
seed = {{ split = "test", per_class = 2 }}
head = {{ task = "pcam" }}
'''
    with open(os.path.join(out, "benchmark.toml"), "w") as f:
        f.write(toml)

    # The reference, evaluated on the files as written (test splits in file order).
    def test_items(t):
        if t == "alpha":
            items = []
            for c, name in enumerate(ALPHA_CLASSES):
                d = os.path.join(out, "data", "alpha", "test", name)
                for fn in sorted(os.listdir(d)):
                    items.append((open(os.path.join(d, fn), "rb").read(), c))
            return items
        from datasets import Dataset as D

        path = os.path.join(beta_dir if t == "beta" else gamma_dir, "test-00000-of-00001.parquet")
        ds = D.from_parquet(path).cast_column("image", ImageFeature(decode=False))
        return [(row["image"]["bytes"], int(row["label"])) for row in ds]

    tests = {t: test_items(t) for t in tasks}
    pre = [ref.accuracy(base, heads[t], tests[t]) for t in tasks]
    ft = [ref.accuracy(states[t], heads[t], tests[t]) for t in tasks]
    matrix = [[None] * len(tasks) for _ in tasks]
    for j in range(len(tasks)):
        for i in range(j + 1):
            t = tasks[order_idx[i]]
            matrix[i][j] = ref.accuracy(merges[j], heads[t], tests[t])
    reference = {
        "tasks": tasks,
        "order_seed": ORDER_SEED,
        "order": [tasks[i] for i in order_idx],
        "method": {"method": "task_arithmetic", "lambda": LAMBDA},
        "pretrained": pre,
        "finetuned": ft,
        "matrix": matrix,
        "test_images": [len(tests[t]) for t in tasks],
        "note": "accuracy of the FusionBench-way evaluation (transformers " + __import__("transformers").__version__
        + "); matrix[i][j] = task i of the order after step j",
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    print(json.dumps(reference, indent=1))
    write_extras(out, [b for b, _, _ in split("beta", "test")[:2]])


# The eight datasets of the TA8 preset: (task, number of classes, folder of the test files
# inside the repository).
TA8_DATASETS = [
    ("sun397", 397, "data"), ("stanford-cars", 196, "data"), ("resisc45", 45, "data"),
    ("eurosat", 10, "data"), ("svhn", 10, "cropped_digits"), ("gtsrb", 43, "data"),
    ("mnist", 10, "mnist"), ("dtd", 47, "data"),
]


def write_extras(out, jpegs):
    """Bad inputs and the skeleton of the TA8 preset's datasets (two images each)."""
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    bad = os.path.join(out, "bad")
    # A label outside the class list: ClassLabel names of 4 classes and a label 7 (written
    # with pyarrow, since `datasets` refuses it).
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = os.path.join(bad, "label_out_of_range", "data")
    os.makedirs(d)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": b, "path": None} for b in jpegs], type=image_type),
        "label": pa.array([0, 7], type=pa.int64()),
    })
    meta = {"huggingface": json.dumps({"info": {"features": {
        "image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": BETA_CLASSES}}}})}
    pq.write_table(table.replace_schema_metadata(meta), os.path.join(d, "test-00000-of-00001.parquet"))
    # A row whose image is a JPEG cut short (test and train splits, the train one intact).
    d = os.path.join(bad, "corrupt_image", "data")
    os.makedirs(d)
    for which, cut in (("test", True), ("train", False)):
        blobs = [jpegs[0][: len(jpegs[0]) // 2] if cut else jpegs[0], jpegs[1]]
        Dataset.from_dict(
            {"image": [{"bytes": b, "path": f"{which}_{i}.jpg"} for i, b in enumerate(blobs)], "label": [0, 1]},
            features=Features({"image": ImageFeature(), "label": ClassLabel(names=BETA_CLASSES)}),
        ).to_parquet(os.path.join(d, f"{which}-00000-of-00001.parquet"))
    # No label column (it is called `target`).
    d = os.path.join(bad, "no_label_column", "data")
    os.makedirs(d)
    Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in jpegs], "target": [0, 1]},
        features=Features({"image": ImageFeature(), "target": Value("int64")}),
    ).to_parquet(os.path.join(d, "test-00000-of-00001.parquet"))

    # The TA8 skeleton: one test file per dataset, with the ClassLabel names of its size.
    sk = os.path.join(out, "ta8")
    for task, n, folder in TA8_DATASETS:
        d = os.path.join(sk, task, folder)
        os.makedirs(d)
        feats = Features({"image": ImageFeature(), "label": ClassLabel(names=[f"c{i}" for i in range(n)])})
        Dataset.from_dict(
            {"image": [{"bytes": b, "path": None} for b in jpegs], "label": [0, n - 1]}, features=feats,
        ).to_parquet(os.path.join(d, "test-00000-of-00001.parquet"))


def write_perf(out, n):
    """A ViT-B/32-shaped benchmark with an n-image test split (see the module docs)."""
    import glob
    import subprocess
    import tempfile
    import zipfile

    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    clip_dir = os.path.join(out, "clip")
    if not os.path.isfile(os.path.join(clip_dir, "model.safetensors")):
        raise SystemExit(f"run scripts/clip_text_reference.py --clip-b-32 {clip_dir} first")
    from transformers import CLIPModel

    ft_dir = os.path.join(out, "finetuned")
    if not os.path.isdir(ft_dir):
        clip = CLIPModel.from_pretrained(clip_dir)
        clip.vision_model.save_pretrained(ft_dir)
    photos = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                        "scikit-image==0.26.0", "matplotlib==3.11.2"], check=True)
        for whl in glob.glob(os.path.join(tmp, "*.whl")):
            with zipfile.ZipFile(whl) as z:
                for name in z.namelist():
                    if ("skimage/data/" in name or "sample_data/" in name) and name.lower().endswith((".png", ".jpg")):
                        im = Image.open(io.BytesIO(z.read(name))).convert("RGB")
                        if min(im.size) >= 256:
                            photos.append(im)
    print(f"{len(photos)} source photos")
    rng = random.Random(SEED)
    classes = [f"class{i}" for i in range(10)]

    def gen():
        for i in range(n):
            im = photos[i % len(photos)]
            w, h = im.size
            cw, ch = min(320, w), min(240, h)
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            crop = im.crop((x, y, x + cw, y + ch)).resize((320, 240))
            a = np.asarray(crop).astype(np.float32) * np.array([rng.uniform(0.7, 1.3) for _ in range(3)])
            b = io.BytesIO()
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(b, "JPEG", quality=90)
            yield {"image": {"bytes": b.getvalue(), "path": f"{i:05d}.jpg"}, "label": i % 10}

    data = os.path.join(out, "data", "perf", "data")
    os.makedirs(data, exist_ok=True)
    feats = Features({"image": ImageFeature(), "label": ClassLabel(names=classes)})
    Dataset.from_generator(gen, features=feats).to_parquet(os.path.join(data, "test-00000-of-00001.parquet"))
    with open(os.path.join(out, "benchmark.toml"), "w") as f:
        f.write(
            'name = "perf"\npretrained = "./clip"\nseed = { split = "test", per_class = 5 }\n\n'
            '[[task]]\nname = "perf"\n'
            'finetuned = "./finetuned"\ndataset = "./data/perf"\n'
            f'head = {{ classes = {json.dumps(classes)}, templates = ["a photo of a {{}}."] }}\n'
        )
    print(f"wrote {n} images and {os.path.join(out, 'benchmark.toml')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "crates", "madeit-cli", "tests", "fixtures", "benchmark"))
    ap.add_argument("--perf")
    ap.add_argument("--images", type=int, default=20000)
    args = ap.parse_args()
    if args.perf:
        write_perf(args.perf, args.images)
    else:
        write_fixture(args.out)


if __name__ == "__main__":
    main()
