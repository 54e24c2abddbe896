"""The FusionBench adapter on tiny random CLIP towers (skipped without fusion-bench)."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
fusion_bench = pytest.importorskip("fusion_bench")

import madeit  # noqa: E402
from madeit.fusion_bench import MadeitAlgorithm  # noqa: E402


def _tower(seed):
    torch.manual_seed(seed)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=16, patch_size=8, hidden_act="quick_gelu",
    )
    return transformers.CLIPVisionModel(cfg).eval()


@pytest.fixture
def pool():
    pre = _tower(0)
    models = {"_pretrained_": pre}
    for i, name in enumerate(("a", "b", "c")):
        m = _tower(0)
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        models[name] = m
    return fusion_bench.BaseModelPool(models=models)


def test_task_arithmetic_matches_fusion_bench(pool):
    from fusion_bench.method import TaskArithmeticAlgorithm

    ours = MadeitAlgorithm("task_arithmetic", {"lambda": 0.3}).run(pool)
    theirs = TaskArithmeticAlgorithm(scaling_factor=0.3, inplace=False).run(pool)
    sd, ref = ours.state_dict(), theirs.state_dict()
    assert sd.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(sd[k], ref[k], atol=1e-6, rtol=1e-5), k


def test_swa_matches_fusion_bench_simple_average(pool):
    from fusion_bench.method import SimpleAverageAlgorithm

    ours = MadeitAlgorithm("swa").run(pool)
    theirs = SimpleAverageAlgorithm(inplace=False).run(pool)
    for k, v in theirs.state_dict().items():
        assert torch.allclose(ours.state_dict()[k], v, atol=1e-6, rtol=1e-5), k


@pytest.mark.parametrize("method", [m["name"] for m in madeit.methods()])
def test_every_method_runs_on_a_pool(pool, method):
    alg = MadeitAlgorithm(method, seed=42)
    model = alg.run(pool)
    assert [r["task"] for r in alg.reports] == madeit.orders(["a", "b", "c"], 42)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model(pixel_values=x)
    assert out.pooler_output.shape == (2, 16)
    assert torch.isfinite(out.pooler_output).all()


def test_bad_config_fails_early():
    with pytest.raises(madeit.MadeitError, match="beta"):
        MadeitAlgorithm("opcm", {"beta": 1})
