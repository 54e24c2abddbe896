"""The pure-PyTorch MADE-IT router gives the Rust routed forward's logits (within 1e-4) on a
random CLIP tower: `madeit merge --method made_it` merges three random fine-tunes, `madeit
embed` routes random pixels through the result, and `madeit.torch` does the same from
transformers' CLIPVisionModel. Skipped without torch and transformers, or without the
binary."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from conftest import run_cli  # noqa: E402
from madeit.torch import MadeItVisionModel, head_logits  # noqa: E402


def _tower(seed):
    torch.manual_seed(seed)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=16,
        patch_size=8,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    return transformers.CLIPVisionModel(cfg).eval()


def _finetune(model, seed):
    g = torch.Generator().manual_seed(seed)
    ft = _tower(0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        if not v.is_floating_point():
            continue
        tau = 0.01 * torch.randn(v.shape, generator=g)
        if v.ndim == 2 and ("proj" in k or "fc" in k):
            # A strong low-rank task direction per module: what MADE-IT's experts capture.
            a = torch.randn(v.shape[0], 2, generator=g)
            b = torch.randn(2, v.shape[1], generator=g)
            tau = tau + 0.05 * a @ b
        sd[k] = v + tau
    ft.load_state_dict(sd)
    return ft


@pytest.mark.parametrize("agg", ["cls_only", "frobenius"])
def test_torch_router_matches_rust(madeit_bin, tmp_path, agg):
    pre = _tower(0)
    pre.save_pretrained(tmp_path / "pretrained", safe_serialization=True)
    fts = []
    for i, name in enumerate(("red", "green", "blue")):
        ft = _finetune(pre, 100 + i)
        ft.save_pretrained(tmp_path / name, safe_serialization=True)
        fts.append(tmp_path / name)
    cfg = tmp_path / "made_it.toml"
    cfg.write_text(f'token_aggregation = "{agg}"\nrho = 0.25\n')
    out = tmp_path / "merged"
    code, err = run_cli(
        madeit_bin, "merge", "--method", "made_it", "--pretrained", tmp_path / "pretrained",
        "--finetuned", *fts, "--config", cfg, "--out", out,
    )
    assert code == 0, err

    g = torch.Generator().manual_seed(7)
    pixels = torch.randn(12, 3, 16, 16, generator=g)
    head = torch.nn.functional.normalize(torch.randn(5, 32, generator=g), dim=-1)
    safetensors_torch.save_file({"pixel_values": pixels}, str(tmp_path / "px.safetensors"))
    safetensors_torch.save_file({"head.weight": head}, str(tmp_path / "head.safetensors"))
    code, err = run_cli(
        madeit_bin, "embed", "--model", out, "--pixels", tmp_path / "px.safetensors",
        "--head", tmp_path / "head.safetensors", "--all", "--out", tmp_path / "emb.safetensors",
    )
    assert code == 0, err
    rust = safetensors_torch.load_file(str(tmp_path / "emb.safetensors"))

    backbone = transformers.CLIPVisionModel.from_pretrained(out).eval()
    routed = MadeItVisionModel(backbone, out / "experts")
    with torch.no_grad():
        o = routed(pixels)
    logits = head_logits(o.pooler_output, head)
    assert torch.allclose(o.pooler_output, rust["pooled_output"], atol=1e-4, rtol=0)
    assert torch.allclose(logits, rust["logits"], atol=1e-4, rtol=0), (
        (logits - rust["logits"]).abs().max()
    )
    # The experts matter: the plain backbone gives other logits.
    with torch.no_grad():
        plain = head_logits(backbone(pixel_values=pixels).pooler_output, head)
    assert (plain - rust["logits"]).abs().max() > 1e-2
    assert {t for p in routed.last_paths for t in p["tasks"]} <= {"red", "green", "blue"}
    names = json.loads((out / "tasks.json").read_text())
    assert sorted(names.values()) == ["blue", "green", "red"]
