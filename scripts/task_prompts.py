#!/usr/bin/env python3
"""Writes or checks the class names and prompt templates of the 20 tasks in
crates/madeit-vit/data/tasks/ against FusionBench's lists.

Usage
-----
  task_prompts.py --fusion-bench DIR [--write]
      DIR is a FusionBench source tree (the repository root, or an installed `fusion_bench`
      package: `pip install --no-deps fusion-bench`, then its site-packages folder). Without
      --write the data files are compared with it (exit status 1 on any difference); with
      --write they are rewritten from it.
  task_prompts.py --clip-prompts FILE
      Also reports where the lists differ from CLIP's own `data/prompts.md` (OpenAI's CLIP
      repository). These differences are expected (see data/tasks/README.md): the checkpoints
      this project evaluates were fine-tuned against FusionBench's heads.

Only the Python files `fusion_bench/tasks/clip_classification/<task>.py` are read (loaded
by path: nothing else of FusionBench, and none of its dependencies, is imported). Templates
are Python lambdas there; each is called with "{}" to get the template line.
"""

import argparse
import importlib.util
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "crates", "madeit-vit", "data", "tasks")

# Our task name -> FusionBench module (fusion_bench/tasks/clip_classification/<module>.py)
# and the attribute holding the class names, in the TALL20 order.
TASKS = [
    ("sun397", "sun397", "classnames"),
    ("stanford_cars", "stanford_cars", "classnames"),
    ("resisc45", "resisc45", "classnames"),
    ("eurosat", "eurosat", "classnames"),
    ("svhn", "svhn", "classnames"),
    ("gtsrb", "gtsrb", "classnames"),
    ("mnist", "mnist", "classnames"),
    ("dtd", "dtd", "classnames"),
    ("oxford_flowers102", "flower102", "classnames"),
    ("pcam", "pcam", "classnames"),
    ("fer2013", "fer2013", "classnames"),
    ("oxford_iiit_pet", "oxford_iiit_pet", "classnames"),
    ("stl10", "stl10", "classnames"),
    ("cifar100", "cifar100", "fine_label"),
    ("cifar10", "cifar10", "classnames"),
    ("food101", "food101", "classnames"),
    ("fashion_mnist", "fashion_mnist", "classnames"),
    ("emnist_letters", "emnist_letters", "classnames"),
    ("kmnist", "kmnist", "classnames"),
    ("rendered_sst2", "rendered_sst2", "classnames"),
]

# Section of CLIP's prompts.md for each task it covers.
CLIP_SECTIONS = {
    "sun397": "SUN397",
    "stanford_cars": "StanfordCars",
    "resisc45": "RESISC45",
    "eurosat": "EuroSAT",
    "gtsrb": "GTSRB",
    "mnist": "MNIST",
    "dtd": "DescribableTextures",
    "oxford_flowers102": "Flowers102",
    "pcam": "PatchCamelyon",
    "fer2013": "FacialEmotionRecognition2013",
    "oxford_iiit_pet": "OxfordPets",
    "stl10": "STL10",
    "cifar100": "CIFAR100",
    "cifar10": "CIFAR10",
    "food101": "Food101",
    "rendered_sst2": "SST2",
}


def module_dir(root):
    for sub in ("fusion_bench/tasks/clip_classification", "tasks/clip_classification"):
        d = os.path.join(root, sub)
        if os.path.isdir(d):
            return d
    sys.exit(f"no fusion_bench/tasks/clip_classification under {root}")


def fusion_bench_lists(root):
    d = module_dir(root)
    out = {}
    for name, module, attr in TASKS:
        spec = importlib.util.spec_from_file_location(f"fb_{module}", os.path.join(d, f"{module}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        classes = list(getattr(mod, attr))
        templates = [t("{}") for t in mod.templates]
        out[name] = (classes, templates)
    return out


def read(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def ours():
    return {
        name: (read(os.path.join(DATA, f"{name}.classes.txt")), read(os.path.join(DATA, f"{name}.templates.txt")))
        for name, _, _ in TASKS
    }


def write(lists):
    for name, (classes, templates) in lists.items():
        for kind, items in (("classes", classes), ("templates", templates)):
            with open(os.path.join(DATA, f"{name}.{kind}.txt"), "w", encoding="utf-8") as f:
                f.write("".join(x + "\n" for x in items))


def clip_prompts(path):
    text = open(path, encoding="utf-8").read()
    out = {}
    for sec in re.split(r"^## ", text, flags=re.M)[1:]:
        title = sec.split("\n", 1)[0].strip()
        m = re.search(r"```(?:bash|python)?\n(.*?)```", sec, re.S)
        if m:
            ns = {}
            exec(m.group(1), ns)  # the file holds two Python list literals per section
            out[title] = (ns.get("classes"), ns.get("templates"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fusion-bench", help="FusionBench source tree or site-packages folder")
    ap.add_argument("--write", action="store_true", help="rewrite the data files")
    ap.add_argument("--clip-prompts", help="CLIP's data/prompts.md, to report differences")
    args = ap.parse_args()
    status = 0
    mine = ours()
    if args.fusion_bench:
        theirs = fusion_bench_lists(args.fusion_bench)
        if args.write:
            write(theirs)
            print(f"wrote {len(theirs)} tasks to {os.path.normpath(DATA)}")
            mine = ours()
        for name, _, _ in TASKS:
            ok = mine[name] == theirs[name]
            status |= 0 if ok else 1
            c, t = theirs[name]
            print(f"{name:18s} {len(c):4d} classes {len(t):3d} templates  {'same' if ok else 'DIFFERENT'}")
    if args.clip_prompts:
        clip = clip_prompts(args.clip_prompts)
        for name, sec in CLIP_SECTIONS.items():
            c, t = clip[sec]
            mc, mt = mine[name]
            c = [x if isinstance(x, str) else x[0] for x in c]
            diff = [(i, a, b) for i, (a, b) in enumerate(zip(mc, c)) if a != b]
            print(
                f"{name:18s} vs CLIP: classes {'same' if mc == c else f'{len(diff)} differ, e.g. {diff[:3]}'}; "
                f"templates {'same' if mt == t else 'differ'}"
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
