"""The Python package gives exactly what `madeit merge` gives, keeps its state, and refuses
bad input with the command line's messages."""

import json
import math
import random

import numpy as np
import pytest

import madeit
from conftest import cli_error, run_cli

safetensors_numpy = pytest.importorskip("safetensors.numpy")

DATA_FREE = [m["name"] for m in madeit.methods()]

# Non-default hyper-parameters per method, as keywords and as the TOML `madeit merge` reads.
NON_DEFAULT = {
    "swa": {},
    "task_arithmetic": {"lambda": 0.7},
    "ties": {"lambda": 0.5, "keep_fraction": 0.4, "aggregate": "mean"},
    "magmax": {"scaling_factor": 0.8},
    "opcm": {"alpha": 0.7},
    "made_it": {"rho": 0.25, "kappa": 0.5},
    "c_iso_c": {"alpha": 1.4},
}


def toml_of(options):
    lines = []
    for k, v in options.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def cli_merge(binary, method, pre, fts, out, options=None, tmp=None):
    args = ["merge", "--method", method, "--pretrained", pre, "--finetuned", *fts, "--out", out]
    if options:
        cfg = tmp / f"{method}.toml"
        cfg.write_text(toml_of(options))
        args += ["--config", cfg]
    code, err = run_cli(binary, *args)
    assert code == 0, err


def assert_same_dict(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == np.float32
        assert got[k].shape == want[k].shape, k
        # Bit for bit: compare the raw bytes, not the values (NaN-safe, sign of zero).
        assert got[k].tobytes() == want[k].tobytes(), k


def test_methods_come_from_the_registry():
    ms = madeit.methods()
    names = [m["name"] for m in ms]
    assert names == ["swa", "task_arithmetic", "ties", "magmax", "opcm", "made_it", "c_iso_c"]
    by = {m["name"]: m for m in ms}
    assert by["task_arithmetic"]["defaults"] == {"lambda": 0.3}
    assert by["opcm"]["defaults"]["alpha"] == 0.5
    assert by["made_it"]["kind"] == "experts" and by["swa"]["kind"] == "dense"
    assert by["c_iso_c"]["defaults"] == {"alpha": 1.0, "exclude": []}
    assert by["c_iso_c"]["label"] == "C. Iso-C" and not by["c_iso_c"]["default_run"]
    assert all(m["default_run"] for m in ms if m["name"] != "c_iso_c")
    assert by["made_it"]["defaults"]["rho"] == madeit.Merger("made_it").config["rho"]
    for m in ms:
        assert m["paper"] and m["title"] and m["summary"]
        # The defaults build a merger whose configuration is those defaults.
        cfg = madeit.Merger(m["name"], **m["defaults"]).config
        assert cfg == dict(method=m["name"], **m["defaults"])


@pytest.mark.parametrize("method", DATA_FREE)
@pytest.mark.parametrize("defaults", [True, False], ids=["defaults", "options"])
def test_bit_for_bit_with_the_command_line(madeit_bin, models, tmp_path, method, defaults):
    root, pre_path, ft_paths, pre, fts = models
    options = {} if defaults else NON_DEFAULT[method]
    out = tmp_path / "cli"
    cli_merge(madeit_bin, method, pre_path, ft_paths, out, options, tmp_path)
    cli_weights = safetensors_numpy.load_file(str(out / "model.safetensors"))

    # From state dicts in memory ...
    m = madeit.Merger(method, **options)
    for i, (path, ft) in enumerate(zip(ft_paths, fts)):
        rep = m.absorb(ft, name=path.stem, pretrained=pre if i == 0 else None)
        assert rep["step"] == i + 1 and rep["task"] == path.stem
    # ... and from the same checkpoint files.
    p = madeit.Merger(method, **options)
    p.set_pretrained(pre_path)
    for path in ft_paths:
        p.absorb(path)
    assert p.tasks == [x.stem for x in ft_paths] == m.tasks

    for merger in (m, p):
        assert_same_dict(merger.merged_state_dict(), cli_weights)
    if method == "made_it":
        got = m.merged()
        assert got["kind"] == "experts" and got["experts"]
        assert set(got["expert_tasks"]) <= set(pre)
        for merger, name in ((m, "dict"), (p, "path")):
            store = tmp_path / f"store-{name}"
            merger.save_experts(store)
            assert_same_store(store, out / "experts")
        assert json.loads((out / "tasks.json").read_text()) == {
            str(i): x.stem for i, x in enumerate(ft_paths)
        }
    else:
        assert m.merged()["kind"] == "dense"


def assert_same_store(got, want):
    names = sorted(f.name for f in want.iterdir())
    assert sorted(f.name for f in got.iterdir()) == names
    for n in names:
        assert (got / n).read_bytes() == (want / n).read_bytes(), n


@pytest.mark.parametrize("method", DATA_FREE)
def test_state_round_trip(models, tmp_path, method):
    _, pre_path, ft_paths, pre, fts = models
    whole = madeit.Merger(method)
    for i, ft in enumerate(fts):
        whole.absorb(ft, name=f"t{i}", pretrained=pre if i == 0 else None)

    first = madeit.Merger(method)
    first.absorb(fts[0], name="t0", pretrained=pre)
    first.absorb(fts[1], name="t1")
    saved = tmp_path / "state.safetensors"
    first.save(saved)
    resumed = madeit.Merger.load(saved, pretrained=pre)
    assert resumed.method == method and resumed.tasks == ["t0", "t1"]
    assert resumed.config == whole.config
    resumed.absorb(fts[2], name="t2")
    assert_same_dict(resumed.merged_state_dict(), whole.merged_state_dict())
    # Saving the resumed merger again gives the same file as saving the uninterrupted one.
    again = tmp_path / "again.safetensors"
    whole_saved = tmp_path / "whole.safetensors"
    resumed.save(again)
    whole.save(whole_saved)
    assert again.read_bytes() == whole_saved.read_bytes()

    # A state whose pretrained model was a path finds it again by itself.
    q = madeit.Merger(method)
    q.absorb(ft_paths[0], pretrained=pre_path)
    q.save(saved)
    back = madeit.Merger.load(saved)
    back.absorb(ft_paths[1])
    assert back.tasks == [ft_paths[0].stem, ft_paths[1].stem]


def test_resume_against_another_pretrained_model_is_refused(models, tmp_path):
    _, _, _, pre, fts = models
    m = madeit.Merger("opcm")
    m.absorb(fts[0], name="a", pretrained=pre)
    m.save(tmp_path / "s.safetensors")
    other = {k: v + 1 for k, v in pre.items()}
    r = madeit.Merger.load(tmp_path / "s.safetensors", pretrained=other)
    with pytest.raises(madeit.MadeitError, match="pretrained"):
        r.absorb(fts[1], name="b")
    with pytest.raises(madeit.MadeitError, match="not a saved merger"):
        madeit.Merger.load(_write(tmp_path / "plain.safetensors", pre))


def _write(path, d):
    safetensors_numpy.save_file(d, str(path))
    return path


# --- bad input: the command line's messages, never a crash --------------------------------


def test_unknown_method_message(madeit_bin, models, tmp_path):
    _, pre_path, ft_paths, _, _ = models
    for name in ("nope", "mingle", "c_finetuned"):
        want = cli_error(
            madeit_bin, "merge", "--method", name, "--pretrained", pre_path,
            "--finetuned", ft_paths[0], "--out", tmp_path / "o",
        )
        with pytest.raises(madeit.MadeitError) as e:
            madeit.Merger(name)
        assert str(e.value) == want


@pytest.mark.parametrize(
    "method,options",
    [
        ("opcm", {"beta": 1.0}),
        ("opcm", {"alpha": 2.0}),
        ("ties", {"keep_fraction": 20}),
        ("ties", {"aggregate": "median"}),
        ("task_arithmetic", {"lambda": "big"}),
        ("made_it", {"rho": 0.0}),
        ("made_it", {"svd": "fast"}),
    ],
)
def test_bad_keyword_messages(madeit_bin, models, tmp_path, method, options):
    _, pre_path, ft_paths, _, _ = models
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_of(options))
    want = cli_error(
        madeit_bin, "merge", "--method", method, "--pretrained", pre_path,
        "--finetuned", ft_paths[0], "--config", cfg, "--out", tmp_path / "o",
    )
    with pytest.raises(madeit.MadeitError) as e:
        madeit.Merger(method, **options)
    assert want == f"method configuration {cfg}: {e.value}"


def _bad_models(pre, ft, tmp_path):
    name = "vision_model.encoder.layers.0.mlp.fc1.weight"
    wrong_shape = dict(ft)
    wrong_shape[name] = np.zeros((3, 3), np.float32)
    missing = {k: v for k, v in ft.items() if k != name}
    nan = dict(ft)
    nan[name] = ft[name].copy()
    nan[name][1, 2] = np.nan
    inf = dict(ft)
    inf["vision_model.post_layernorm.bias"] = np.full_like(ft["vision_model.post_layernorm.bias"], np.inf)
    return {"wrong_shape": wrong_shape, "missing": missing, "nan": nan, "inf": inf}


@pytest.mark.parametrize("case", ["wrong_shape", "missing", "nan", "inf"])
@pytest.mark.parametrize("method", ["task_arithmetic", "made_it"])
def test_bad_checkpoint_messages(madeit_bin, models, tmp_path, case, method):
    _, pre_path, ft_paths, pre, fts = models
    bad = _bad_models(pre, fts[0], tmp_path)[case]
    bad_path = _write(tmp_path / f"{case}.safetensors", bad)
    want = cli_error(
        madeit_bin, "merge", "--method", method, "--pretrained", pre_path,
        "--finetuned", ft_paths[1], bad_path, "--out", tmp_path / "o",
    )
    # The same files from Python: the same message.
    m = madeit.Merger(method)
    m.absorb(ft_paths[1], pretrained=str(pre_path))
    before = m.merged_state_dict()
    with pytest.raises(madeit.MadeitError) as e:
        m.absorb(str(bad_path))
    assert str(e.value) == want
    # From a state dict: the same message, with the task name where the path was.
    d = madeit.Merger(method)
    d.absorb(fts[1], name="beta", pretrained=pre)
    with pytest.raises(madeit.MadeitError) as e:
        d.absorb(bad, name=case)
    got = str(e.value).replace("(state dict)", str(pre_path)).replace(f"model {case}", f"model {bad_path}")
    assert got == want
    # A failed absorb changes nothing.
    assert m.tasks == [ft_paths[1].stem]
    assert_same_dict(m.merged_state_dict(), before)
    m.absorb(ft_paths[2])
    assert m.tasks == [ft_paths[1].stem, ft_paths[2].stem]


def test_misuse_raises_python_exceptions(models, tmp_path):
    _, pre_path, ft_paths, pre, fts = models
    m = madeit.Merger("ties")
    with pytest.raises(madeit.MadeitError, match="no pretrained model"):
        m.absorb(fts[0])
    with pytest.raises(madeit.MadeitError, match="no pretrained model"):
        m.merged()
    m.set_pretrained(pre)
    with pytest.raises(madeit.MadeitError):
        m.merged()  # before the first task
    m.absorb(fts[0], name="a")
    with pytest.raises(madeit.MadeitError, match="a"):
        m.absorb(fts[1], name="a")  # the same task name twice
    with pytest.raises(TypeError):
        m.absorb([1, 2, 3])
    with pytest.raises(TypeError):
        m.absorb({k: v.astype(np.int32) for k, v in fts[1].items()}, name="ints")
    with pytest.raises(TypeError):
        madeit.Merger("opcm", alpha=object())
    with pytest.raises(madeit.MadeitError):
        m.absorb(tmp_path / "missing.safetensors")
    with pytest.raises(madeit.MadeitError, match="keeps no MADE-IT expert store"):
        m.save_experts(tmp_path / "x")
    with pytest.raises(madeit.MadeitError):
        madeit.Merger.load(tmp_path / "missing.safetensors")
    assert issubclass(madeit.MadeitError, ValueError)
    assert m.tasks == ["a"]


def test_non_contiguous_and_float64_inputs(models):
    _, _, _, pre, fts = models
    a = madeit.Merger("magmax")
    a.absorb(fts[0], name="x", pretrained=pre)
    b = madeit.Merger("magmax")
    # Fortran-ordered float64 copies of the same values.
    b.absorb({k: np.asfortranarray(v.astype(np.float64)) for k, v in fts[0].items()}, name="x",
             pretrained={k: v.astype(np.float64) for k, v in pre.items()})
    assert_same_dict(b.merged_state_dict(), a.merged_state_dict())


def test_report(models):
    _, _, _, pre, fts = models
    m = madeit.Merger("opcm", alpha=0.6)
    m.absorb(fts[0], pretrained=pre)
    m.absorb(fts[1])
    r = m.report()
    assert r["method"] == "opcm" and r["config"]["alpha"] == 0.6
    assert r["tasks"] == ["task1", "task2"]
    assert [s["step"] for s in r["steps"]] == [1, 2]
    tau = math.sqrt(sum(float(np.sum((fts[0][k].astype(np.float64) - pre[k]) ** 2)) for k in pre))
    assert r["steps"][0]["task_vector_norm"] == pytest.approx(tau, rel=1e-6)
    assert "lambda" in " ".join(r["steps"][1]["metrics"])


# --- orders and metrics ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 8, 14, 20])
@pytest.mark.parametrize("seed", [0, 1, 42, 2024, 2**40 + 3])
def test_orders_are_cpythons_shuffle(n, seed):
    ids = list(range(1, n + 1))
    random.seed(seed)
    random.shuffle(ids)
    assert madeit.orders(n, seed) == ids
    names = [f"t{i}" for i in range(1, n + 1)]
    assert madeit.orders(names, seed) == [f"t{i}" for i in ids]


def test_acc_bwt():
    rng = np.random.default_rng(3)
    t = 5
    a = rng.uniform(0.2, 1.0, (t, t))
    acc, bwt = madeit.acc_bwt(a)
    assert acc == pytest.approx(a[:, -1].mean(), rel=1e-12)
    assert bwt == pytest.approx(np.mean([a[i, -1] - a[i, i] for i in range(t - 1)]), rel=1e-12)
    # Entries before a task was merged (below the diagonal) may be missing (None / NaN).
    b = np.where(np.triu(np.ones((t, t))) > 0, a, np.nan)
    assert madeit.acc_bwt(b) == (acc, bwt)
    assert madeit.acc_bwt([[0.5]]) == (0.5, None)
    with pytest.raises(madeit.MadeitError):
        madeit.acc_bwt([[0.5, 0.2]])
    with pytest.raises(madeit.MadeitError):
        madeit.acc_bwt([])
