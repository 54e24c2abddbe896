#!/usr/bin/env python3
"""Reference outputs of transformers' CLIP text tower, tokenizer and zero-shot heads, for
madeit-vit's text parity tests (crates/madeit-vit/tests/text.rs) and the `madeit heads` tests.

Usage
-----
  clip_text_reference.py                  write the fixtures (default directory:
                                           crates/madeit-vit/tests/fixtures)
  clip_text_reference.py --fixtures DIR   same, into DIR
  clip_text_reference.py --bpe FILE       take CLIP's BPE file from FILE instead of
                                           DIR/clip_bpe/bpe_simple_vocab_16e6.txt.gz
  clip_text_reference.py --clip-b-32 OUT  write a random ViT-B/32-shaped CLIPModel (both
                                           towers, F32, ~600 MB) with CLIP's real tokenizer,
                                           for timing `madeit heads` (scripts/bench_heads_torch.py)

Nothing is downloaded. CLIP's byte-pair vocabulary is the file `bpe_simple_vocab_16e6.txt.gz`
(MIT licence, OpenAI) as shipped inside the `open-clip-torch` wheel (`pip download --no-deps
open-clip-torch==3.3.0`, then `open_clip/bpe_simple_vocab_16e6.txt.gz` in the zip); a copy is
checked in under clip_bpe/. From it this script builds `vocab.json` + `merges.txt` exactly as
CLIP's `SimpleTokenizer` orders them (byte alphabet, the same with `</w>`, the 48,894 merges
joined, `<|startoftext|>`, `<|endoftext|>`) and loads them with transformers'
`CLIPTokenizer.from_pretrained` (49,408 tokens, as the real checkpoints).

Fixtures written
----------------
  clip_tokens.json   for every probe string (all class names of the 20 task lists under
                     crates/madeit-vit/data/tasks, prompts, punctuation, digits, accents, emoji,
                     other scripts, odd whitespace, special-token text, over-long prompts):
                     `ids` (the real 49,408-token vocabulary) and `small_ids` (the fixture
                     model's 1,014-token tokenizer), both with truncation at 77.
  clip_text_tiny/    a random full CLIPModel (F32): text tower d=32, 2 layers, 4 heads,
                     77 positions, vocabulary 1,014 (the first 500 merges of CLIP's BPE file),
                     legacy `eos_token_id = 2` as in the OpenAI configs; vision tower d=32,
                     2 layers, 2 heads, 32 px images, 8 px patches; projection 24;
                     `logit_scale` 3.2. With config.json, model.safetensors, tokenizer.json,
                     tokenizer_config.json (transformers' save_pretrained), and
    io.safetensors   computed in float64 from the stored weights, written as F32:
                     raw ids: `raw.input_ids`, `raw.attention_mask` [4, 12] (as F32) and the
                       text tower's `last_hidden_state`, `pooled_output`, `text_embeds` under
                       the folder's legacy config (`legacy.*`) and with `eos_token_id = 1013`
                       (`current.*`); row 2 has no end token, so the two pooling rules differ;
                     prompts: `prompts.input_ids`, `prompts.attention_mask` (the tokenizer with
                       padding), `prompts.text_embeds`, `prompts.pooled_output`;
                     heads: `head.custom.weight` for the class and template lists in
                       `heads.json`, `head.eurosat.weight` for the eurosat lists, both with
                       FusionBench's `HFCLIPClassifier.set_classification_task` recipe;
                     images: `pixel_values` [3, 3, 32, 32], `image_embeds`, and the logits
                       `logits.custom`, `logits.eurosat` = exp(logit_scale) normalize(image
                       embeds) head^T, plus `logits_per_image` of `CLIPModel(prompts, pixels)`.
    heads.json       the custom class names and templates (`{}` marks the class name) and
                     the prompts of `prompts.*`.

Setup
-----
  python3 -m venv .venv
  .venv/bin/pip install torch transformers safetensors numpy
  .venv/bin/python scripts/clip_text_reference.py
"""

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_reference import perturb_  # noqa: E402

SEED = 20261203
CONTEXT = 77
SMALL_MERGES = 500
LOGIT_SCALE = 3.2
HERE = os.path.dirname(os.path.abspath(__file__))
TASKS_DIR = os.path.join(HERE, "..", "crates", "madeit-vit", "data", "tasks")

CUSTOM_CLASSES = ["cat", "Dog!", "école maternelle", "T - shirt / top", "お"]
CUSTOM_TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", 'a photo of the number: "{}".']
PROMPTS = [
    "a photo of a cat.",
    "A PHOTO OF THE   Dog!!",
    "satellite imagery of annual crop land.",
    "",
    "café, naïve résumé — 3.14 % off 😀",
    "a photo of a " + "very " * 90 + "long prompt.",
]


def bytes_to_unicode():
    """CLIP's (and GPT-2's) reversible byte -> printable character table, in CLIP's order."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def bpe_vocab(bpe_path, num_merges=None):
    """vocab (token -> id) and merges of CLIP's BPE file, as CLIP's SimpleTokenizer builds
    them; `num_merges` keeps only the first merges (a smaller, consistent vocabulary)."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    if num_merges is not None:
        merges = merges[:num_merges]
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [a + "</w>" for a in alphabet]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def load_tokenizer(bpe_path, num_merges=None):
    vocab, merges = bpe_vocab(bpe_path, num_merges)
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = CLIPTokenizer.from_pretrained(d, model_max_length=CONTEXT)
    # Constructing a CLIP tokenizer the wrong way silently yields a 2-token vocabulary.
    assert len(tok) == len(vocab), (len(tok), len(vocab))
    return tok


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def probe_strings():
    """A few hundred strings that exercise the tokenizer."""
    out = []
    names = sorted(f[: -len(".classes.txt")] for f in os.listdir(TASKS_DIR) if f.endswith(".classes.txt"))
    for task in names:
        classes = read_lines(os.path.join(TASKS_DIR, f"{task}.classes.txt"))
        templates = read_lines(os.path.join(TASKS_DIR, f"{task}.templates.txt"))
        out += classes
        out += [t.replace("{}", c) for t in templates[:2] for c in classes[:2]]
    out += [
        "", " ", "   \t\n  ", "a", "A", "a photo of a", "Hello, World!", "hello world",
        "don't", "it's", "I'LL", "we've", "they're", "I'm", "she'd", "DON'T STOP", "rock 'n' roll",
        "\"quoted\" words", "'single'", "(parens) [brackets] {braces}", "a-b_c/d\\e|f", "...!!!???",
        "#hashtag @user $5.00 50% ^caret &amp; *star*", "~tilde~ `backtick` +plus= <less> >greater",
        "0", "7", "42", "2012", "1,000,000", "3.14159", "-273.15", "1e-5", "v2.0.1", "24/7",
        "covid-19", "mp3 player", "4x4 truck", "1st 2nd 3rd 4th",
        "café", "naïve", "résumé", "Ångström", "São Paulo", "Zürich", "Łódź", "façade",
        "cafe\u0301", "e\u0301cole", "ﬁne ligature", "Ｆｕｌｌｗｉｄｔｈ", "½ ¼ ³", "²nd",
        "Straße", "STRASSE", "ẞ", "İstanbul", "ΣΊΣΥΦΟΣ", "ОДЕССА", "Москва", "Ελλάδα",
        "猫", "東京タワー", "こんにちは世界", "한국어", "العربية", "עברית", "हिन्दी", "ไทย",
        "🐱", "😀😃😄", "👍🏽", "🇫🇷", "👨‍👩‍👧", "❤️", "a photo of a 🐶.", "✈ ☂ ☃",
        "tab\tseparated", "new\nline", "non\u00a0breaking", "zero\u200bwidth", "em\u2003space",
        "  leading and trailing  ", "multiple     spaces", "bell\x07char", "nul\x00char",
        "<|startoftext|>", "<|endoftext|>", "a <|endoftext|> b", "x<|startoftext|>y",
        "<|endoftext", "|>", "<|", "</w>", "photo</w>",
        "ALL CAPS PHOTO OF A DOG", "MiXeD CaSe", "snake_case_name", "CamelCaseName",
        "http://example.com/a?b=c", "user@example.com", "C++ and C#", "e=mc^2",
        "a photo of a " + "very " * 100 + "long prompt.",
        "1234567890" * 20,
        "🐱" * 60,
        "supercalifragilisticexpialidocious" * 5,
        "a, " * 80,
        " ".join(["word"] * 76),
        " ".join(["word"] * 75),
        " ".join(["word"] * 74),
    ]
    out += PROMPTS
    seen = set()
    uniq = []
    for s in out:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq


def make_model():
    text = CLIPTextConfig(
        vocab_size=256 * 2 + SMALL_MERGES + 2,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT,
        projection_dim=24,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        num_channels=3,
        projection_dim=24,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    cfg = CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=24,
        logit_scale_init_value=LOGIT_SCALE,
    )
    return CLIPModel(cfg)


def text_features(model, input_ids, attention_mask):
    out = model.text_model(input_ids=input_ids, attention_mask=attention_mask)
    return out.last_hidden_state, out.pooler_output, model.text_projection(out.pooler_output)


def fusionbench_head(model, tokenizer, classnames, templates):
    """FusionBench's HFCLIPClassifier.set_classification_task, with `{}` templates."""
    weights = []
    for c in classnames:
        text = [t.replace("{}", c) for t in templates]
        inputs = tokenizer(text, return_tensors="pt", padding=True)
        emb = model.text_model(**inputs)[1]
        emb = model.text_projection(emb)
        emb = emb / emb.norm(p=2, dim=-1, keepdim=True)
        emb = emb.mean(dim=0)
        emb = emb / emb.norm(p=2, dim=-1, keepdim=True)
        weights.append(emb)
    return torch.stack(weights, dim=0)


def write_fixtures(root, bpe_path):
    gen = torch.Generator().manual_seed(SEED)
    os.makedirs(root, exist_ok=True)

    # Tokenizers: the real vocabulary and the fixture model's small one.
    real = load_tokenizer(bpe_path)
    small = load_tokenizer(bpe_path, SMALL_MERGES)
    assert real("a photo of a")["input_ids"] == [49406, 320, 1125, 539, 320, 49407]
    strings = probe_strings()
    kw = dict(truncation=True, max_length=CONTEXT)
    tokens = [
        {"text": s, "ids": real(s, **kw)["input_ids"], "small_ids": small(s, **kw)["input_ids"]}
        for s in strings
    ]
    with open(os.path.join(root, "clip_tokens.json"), "w", encoding="utf-8") as f:
        json.dump(
            {"vocab_size": len(real), "small_vocab_size": len(small), "context_length": CONTEXT,
             "strings": tokens},
            f, ensure_ascii=False, indent=0,
        )

    # The random full CLIPModel.
    out = os.path.join(root, "clip_text_tiny")
    if os.path.isdir(out):
        shutil.rmtree(out)
    model = make_model()
    perturb_(model, gen)
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE)
    model.save_pretrained(out)
    small.save_pretrained(out)
    with open(os.path.join(out, "heads.json"), "w", encoding="utf-8") as f:
        json.dump(
            {"classes": CUSTOM_CLASSES, "templates": CUSTOM_TEMPLATES, "prompts": PROMPTS},
            f, ensure_ascii=False, indent=1,
        )

    model = model.double().eval()
    io = {}
    eos = len(small) - 1
    bos = len(small) - 2
    with torch.no_grad():
        # Raw ids: padded with the end token, with zeros, and a row with no end token.
        g = torch.Generator().manual_seed(SEED + 1)
        ids = torch.randint(0, SMALL_MERGES + 512, (4, 12), generator=g)
        mask = torch.ones_like(ids)
        ids[:, 0] = bos
        ids[0, 6] = eos
        ids[0, 7:] = eos
        mask[0, 7:] = 0
        ids[1, 11] = eos
        ids[2, 0] = 5  # no start and no end token; padded with id 0
        ids[2, 9:] = 0
        mask[2, 9:] = 0
        assert int(ids[2].argmax()) != 0, "the two pooling rules must differ on row 2"
        ids[3, 3] = eos
        ids[3, 4:] = 1
        mask[3, 4:] = 0
        io["raw.input_ids"] = ids.float()
        io["raw.attention_mask"] = mask.float()
        for rule, eos_id in (("legacy", 2), ("current", eos)):
            model.text_model.eos_token_id = eos_id
            last, pooled, embeds = text_features(model, ids, mask)
            io[f"{rule}.last_hidden_state"] = last.float()
            io[f"{rule}.pooled_output"] = pooled.float()
            io[f"{rule}.text_embeds"] = embeds.float()
        model.text_model.eos_token_id = 2

        # Prompts through the tokenizer saved in the folder.
        enc = small(PROMPTS, padding=True, return_tensors="pt", **kw)
        _, pooled, embeds = text_features(model, enc["input_ids"], enc["attention_mask"])
        io["prompts.input_ids"] = enc["input_ids"].float()
        io["prompts.attention_mask"] = enc["attention_mask"].float()
        io["prompts.pooled_output"] = pooled.float()
        io["prompts.text_embeds"] = embeds.float()

        # Heads, FusionBench's recipe.
        eurosat_classes = read_lines(os.path.join(TASKS_DIR, "eurosat.classes.txt"))
        eurosat_templates = read_lines(os.path.join(TASKS_DIR, "eurosat.templates.txt"))
        heads = {
            "custom": fusionbench_head(model, small, CUSTOM_CLASSES, CUSTOM_TEMPLATES),
            "eurosat": fusionbench_head(model, small, eurosat_classes, eurosat_templates),
        }

        # Images and logits.
        pixels = torch.randn((3, 3, 32, 32), generator=gen, dtype=torch.float32)
        vis = model.vision_model(pixel_values=pixels.double())
        image_embeds = model.visual_projection(vis.pooler_output)
        normed = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)
        scale = model.logit_scale.exp()
        io["pixel_values"] = pixels
        io["image_embeds"] = image_embeds.float()
        for name, head in heads.items():
            io[f"head.{name}.weight"] = head.float()
            io[f"logits.{name}"] = (scale * normed @ head.t()).float()
        full = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels.double())
        io["logits_per_image"] = full.logits_per_image.float()
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, "io.safetensors"))


def write_clip_b_32(outdir, bpe_path):
    torch.manual_seed(SEED)
    model = CLIPModel(CLIPConfig())  # transformers' defaults: ViT-B/32 with its text tower
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)  # ln(100), as the trained checkpoints
    model.save_pretrained(outdir)
    load_tokenizer(bpe_path).save_pretrained(outdir)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote a random ViT-B/32 CLIPModel ({n} parameters) with CLIP's tokenizer to {outdir}")


def main() -> int:
    default = os.path.join(HERE, "..", "crates", "madeit-vit", "tests", "fixtures")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", default=default, help="fixture directory")
    ap.add_argument("--bpe", help="CLIP's bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--clip-b-32", metavar="OUTDIR", help="write a random ViT-B/32 CLIPModel")
    args = ap.parse_args()
    bpe = args.bpe or os.path.join(args.fixtures, "clip_bpe", "bpe_simple_vocab_16e6.txt.gz")
    if args.clip_b_32:
        write_clip_b_32(args.clip_b_32, bpe)
        return 0
    write_fixtures(args.fixtures, bpe)
    total = 0
    for name in ("clip_tokens.json", "clip_text_tiny"):
        p = os.path.join(args.fixtures, name)
        if os.path.isdir(p):
            total += sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))
        else:
            total += os.path.getsize(p)
    print(f"wrote text fixtures to {os.path.normpath(args.fixtures)} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
