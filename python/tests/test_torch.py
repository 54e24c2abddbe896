"""Torch state dicts go in and come out (skipped where torch is not installed)."""

import numpy as np
import pytest

import madeit

torch = pytest.importorskip("torch")


def _torch(d, dtype=torch.float32):
    return {k: torch.from_numpy(v.copy()).to(dtype) for k, v in d.items()}


@pytest.mark.parametrize("method", [m["name"] for m in madeit.methods()])
def test_torch_float32_equals_numpy(models, method):
    _, _, _, pre, fts = models
    a = madeit.Merger(method)
    b = madeit.Merger(method)
    for i, ft in enumerate(fts[:2]):
        a.absorb(ft, name=f"t{i}", pretrained=pre if i == 0 else None)
        b.absorb(_torch(ft), name=f"t{i}", pretrained=_torch(pre) if i == 0 else None)
    want = a.merged_state_dict()
    got = b.merged_state_dict()
    assert list(got) == list(want)
    for k in want:
        assert isinstance(got[k], torch.Tensor) and got[k].dtype == torch.float32
        assert got[k].numpy().tobytes() == want[k].tobytes(), k
    if method == "made_it":
        ex = b.merged()["experts"]
        assert all(isinstance(v, torch.Tensor) for v in ex.values())


def test_bfloat16_and_float16_keep_their_dtype(models):
    _, _, _, pre, fts = models
    for dtype in (torch.bfloat16, torch.float16):
        m = madeit.Merger("task_arithmetic", lambda_=0.5)
        m.absorb(_torch(fts[0], dtype), name="a", pretrained=_torch(pre, dtype))
        out = m.merged_state_dict()
        # The merge runs in float32 on the exactly widened values, then rounds once.
        ref = madeit.Merger("task_arithmetic", lambda_=0.5)
        widened = lambda d: {k: v.float().numpy() for k, v in _torch(d, dtype).items()}
        ref.absorb(widened(fts[0]), name="a", pretrained=widened(pre))
        want = ref.merged_state_dict()
        for k in want:
            assert out[k].dtype == dtype
            assert torch.equal(out[k], torch.from_numpy(want[k]).to(dtype)), k


def test_gradients_and_devices_are_handled(models):
    _, _, _, pre, fts = models
    ft = {k: v.requires_grad_(True) for k, v in _torch(fts[0]).items()}
    m = madeit.Merger("swa")
    m.absorb(ft, name="a", pretrained=_torch(pre))
    out = m.merged_state_dict()
    assert not any(v.requires_grad for v in out.values())
