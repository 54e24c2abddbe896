"""Shared fixtures: the `madeit` command-line binary built in the same tree, and small random
models written as safetensors (a pretrained model plus fine-tuned ones whose task vectors are
small random perturbations), in the layout of CLIP's vision tower so that every method,
MADE-IT's target modules included, has work to do."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _binary():
    env = os.environ.get("MADEIT_BIN")
    if env:
        return Path(env)
    for profile in ("debug", "release"):
        p = REPO / "target" / profile / "madeit"
        if p.is_file():
            return p
    return None


@pytest.fixture(scope="session")
def madeit_bin():
    b = _binary()
    if b is None or not b.is_file():
        pytest.skip("the madeit binary is not built (cargo build -p madeit-cli, or set MADEIT_BIN)")
    return b


def run_cli(binary, *args):
    """Runs the binary; returns (exit code, stderr text)."""
    p = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True)
    return p.returncode, p.stderr


def cli_error(binary, *args):
    """The message of a failing command, without the `error: ` prefix."""
    code, err = run_cli(binary, *args)
    assert code != 0, err
    lines = [l for l in err.splitlines() if l.startswith("error: ")]
    assert lines, err
    return lines[-1][len("error: "):]


def random_model(rng, d=8, layers=2, patch=2):
    """A tiny random model with CLIP vision tower names (float32)."""
    p = {
        "vision_model.embeddings.class_embedding": rng.standard_normal(d),
        "vision_model.embeddings.patch_embedding.weight": rng.standard_normal((d, 3, patch, patch)),
        "vision_model.embeddings.position_embedding.weight": rng.standard_normal((5, d)),
        "vision_model.pre_layrnorm.weight": 1 + 0.1 * rng.standard_normal(d),
        "vision_model.pre_layrnorm.bias": 0.1 * rng.standard_normal(d),
    }
    for i in range(layers):
        pre = f"vision_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            p[pre + f"self_attn.{proj}.weight"] = rng.standard_normal((d, d)) / np.sqrt(d)
            p[pre + f"self_attn.{proj}.bias"] = 0.1 * rng.standard_normal(d)
        p[pre + "layer_norm1.weight"] = 1 + 0.1 * rng.standard_normal(d)
        p[pre + "layer_norm1.bias"] = 0.1 * rng.standard_normal(d)
        p[pre + "mlp.fc1.weight"] = rng.standard_normal((2 * d, d)) / np.sqrt(d)
        p[pre + "mlp.fc1.bias"] = 0.1 * rng.standard_normal(2 * d)
        p[pre + "mlp.fc2.weight"] = rng.standard_normal((d, 2 * d)) / np.sqrt(2 * d)
        p[pre + "mlp.fc2.bias"] = 0.1 * rng.standard_normal(d)
        p[pre + "layer_norm2.weight"] = 1 + 0.1 * rng.standard_normal(d)
        p[pre + "layer_norm2.bias"] = 0.1 * rng.standard_normal(d)
    p["vision_model.post_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(d)
    p["vision_model.post_layernorm.bias"] = 0.1 * rng.standard_normal(d)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in p.items()}


def finetune(rng, pre, scale=0.05):
    """A fine-tuned model: the pretrained one plus a random task vector with a low-rank part
    (so that subspace methods see structure) and a dense part."""
    out = {}
    for k, v in pre.items():
        tau = scale * rng.standard_normal(v.shape)
        if v.ndim == 2:
            r = 2
            tau = tau + (rng.standard_normal((v.shape[0], r)) @ rng.standard_normal((r, v.shape[1]))) * 0.2
        out[k] = (v + tau).astype(np.float32)
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """(folder, pretrained path, [fine-tuned paths], pretrained dict, [fine-tuned dicts])."""
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(19)
    pre = random_model(rng)
    fts = [finetune(rng, pre) for _ in range(3)]
    save_file(pre, str(root / "pretrained.safetensors"))
    paths = []
    for name, ft in zip(("alpha", "beta", "gamma"), fts):
        path = root / f"{name}.safetensors"
        save_file(ft, str(path))
        paths.append(path)
    return root, root / "pretrained.safetensors", paths, pre, fts


@pytest.fixture
def outdir(tmp_path):
    d = tmp_path / "out"
    yield d
    shutil.rmtree(d, ignore_errors=True)
