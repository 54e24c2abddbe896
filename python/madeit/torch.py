"""MADE-IT at inference in PyTorch: a transformers ``CLIPVisionModel`` with a MADE-IT expert
store, routing each sample as madeit's router does (``madeit_merge::made_it::routing``).

The model holds the merged backbone (``model.safetensors`` of a ``madeit merge --method
made_it`` output, or ``Merger.merged()["backbone"]``); the store is the ``experts/`` folder
(``madeit merge``, or ``Merger.save_experts``). For each sample:

1. a backbone pass captures the input ``X_m`` (tokens x d_in) of every target module;
2. the feature projection alignment of expert ``e`` of module ``m`` is
   ``FPA = ||X V_e||_F / ||X||_F`` (the class token only with ``token_aggregation =
   "cls_only"``, the default; ``0`` for a zero input), accumulated in float64;
3. the anchor module (most experts, ties to the deepest) takes its best expert (lowest index
   on ties), whose task set is the active set ``S``; the other modules are visited outward
   from the anchor by forward distance (the deeper first at equal distance): the candidates
   are the experts whose tasks meet ``S``; one candidate is taken as is, several take the
   best FPA and ``S`` becomes ``S ∩ tasks(pick)``;
4. a second pass adds the chosen expert's ``U diag(s) V^T x`` to each target module's output.

Everything runs on the model's device and dtype. Pure Python: it needs torch and
transformers, not the compiled extension.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch

# Forward order of the target modules inside one layer.
_KINDS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.out_proj.weight",
    "mlp.fc1.weight",
    "mlp.fc2.weight",
)


def _kind_index(weight_key: str) -> int:
    for i, k in enumerate(_KINDS):
        if weight_key.endswith(k):
            return i
    raise ValueError(f"`{weight_key}` is not a MADE-IT target module")


def load_store(path) -> Dict[str, Any]:
    """Reads an expert store folder: its manifest and factors (float32 CPU tensors).
    Returns ``{"config", "tasks", "modules": [{"weight_key", "layer", "experts": [{"U", "s",
    "V", "tasks"}]}]}`` with the modules in forward order."""
    from safetensors.torch import load_file

    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    tensors = load_file(str(path / manifest["tensor_file"]))
    modules = []
    for m in manifest["modules"]:
        name = m["weight_key"][: -len(".weight")]
        experts = []
        for e, spec in enumerate(m["experts"]):
            experts.append(
                {
                    "U": tensors[f"{name}.expert{e}.U"],
                    "s": tensors[f"{name}.expert{e}.s"],
                    "V": tensors[f"{name}.expert{e}.V"],
                    "tasks": set(spec["tasks"]),
                }
            )
        modules.append({"weight_key": m["weight_key"], "layer": m["layer"], "experts": experts})
    modules.sort(key=lambda m: (m["layer"], _kind_index(m["weight_key"])))
    return {"config": manifest["config"], "tasks": manifest["tasks"], "modules": modules}


def _anchor(counts: Sequence[int]) -> int:
    best = None
    for i, n in enumerate(counts):
        if best is None or n >= best[1]:
            best = (i, n)
    assert best is not None
    return best[0]


def _visit_order(n: int, anchor: int) -> List[int]:
    out = []
    for d in range(1, n):
        if anchor + d < n:
            out.append(anchor + d)
        if anchor - d >= 0:
            out.append(anchor - d)
    return out


def _argmax_first(xs: Sequence[float]) -> int:
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best


def route(
    tasks: Sequence[Sequence[Set[int]]], score
) -> Tuple[List[int], Set[int], int]:
    """Routes one sample: ``tasks[m][e]`` is the task set of expert ``e`` of module ``m``,
    ``score(m, e)`` its FPA. Returns (expert per module, final active set, anchor)."""
    counts = [len(t) for t in tasks]
    anchor = _anchor(counts)
    experts = [0] * len(tasks)
    anchor_scores = [score(anchor, e) for e in range(counts[anchor])]
    e_star = _argmax_first(anchor_scores)
    active = set(tasks[anchor][e_star])
    experts[anchor] = e_star
    for pos in _visit_order(len(tasks), anchor):
        cands = [e for e in range(counts[pos]) if not tasks[pos][e].isdisjoint(active)]
        if not cands:
            raise RuntimeError(f"routing invariant broken at module #{pos}")
        if len(cands) == 1:
            pick = cands[0]
        else:
            sc = [score(pos, e) for e in cands]
            pick = cands[_argmax_first(sc)]
        active &= tasks[pos][pick]
        experts[pos] = pick
    return experts, active, anchor


class MadeItVisionModel(torch.nn.Module):
    """A ``CLIPVisionModel`` (holding the merged backbone) routed through a MADE-IT expert
    store.

    >>> model = CLIPVisionModel.from_pretrained("merged")            # doctest: +SKIP
    >>> routed = MadeItVisionModel(model, "merged/experts")           # doctest: +SKIP
    >>> out = routed(pixel_values)                                    # doctest: +SKIP
    >>> out.pooler_output, routed.last_paths                          # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, store, tasks: Optional[Dict[int, str]] = None):
        super().__init__()
        self.model = model
        self.store = load_store(store) if not isinstance(store, dict) else store
        agg = str(self.store["config"].get("token_aggregation", "cls_only")).lower()
        self.cls_only = agg.replace("_", "") == "clsonly"
        if tasks is None:
            tasks_file = Path(store).parent / "tasks.json" if not isinstance(store, dict) else None
            if tasks_file is not None and tasks_file.is_file():
                tasks = {int(k): v for k, v in json.loads(tasks_file.read_text()).items()}
        self.task_names = tasks or {}
        names = dict(model.named_modules())
        self._linears = []
        for m in self.store["modules"]:
            key = m["weight_key"][: -len(".weight")]
            if key not in names and "vision_model." + key in names:
                key = "vision_model." + key
            if key not in names:
                raise ValueError(f"the model has no module `{key}` (from the expert store)")
            self._linears.append(names[key])
        self._tasks = [[e["tasks"] for e in m["experts"]] for m in self.store["modules"]]
        self.last_paths: List[Dict[str, Any]] = []

    def _factors(self, m: int, e: int, like: torch.Tensor):
        ex = self.store["modules"][m]["experts"][e]
        return tuple(ex[k].to(device=like.device, dtype=like.dtype) for k in ("U", "s", "V"))

    @torch.no_grad()
    def route(self, pixel_values: torch.Tensor, **kwargs) -> List[List[int]]:
        """The expert path of every sample (one expert index per target module, forward
        order), from a backbone pass."""
        captured: List[Optional[torch.Tensor]] = [None] * len(self._linears)

        def capture(i):
            def hook(_mod, inputs):
                captured[i] = inputs[0].detach()

            return hook

        handles = [lin.register_forward_pre_hook(capture(i)) for i, lin in enumerate(self._linears)]
        try:
            self.model(pixel_values=pixel_values, **kwargs)
        finally:
            for h in handles:
                h.remove()
        batch = pixel_values.shape[0]
        # FPA of every expert of every module for every sample, in float64.
        fpa = []
        for m, x in enumerate(captured):
            assert x is not None
            x = x.to(torch.float64)
            if self.cls_only:
                x = x[:, :1, :]
            xn = x.flatten(1).norm(dim=1)
            scores = []
            for ex in self.store["modules"][m]["experts"]:
                v = ex["V"].to(device=x.device, dtype=torch.float32)
                # The product in float32 as the Rust side computes it, the norms in float64.
                xv = (x.to(torch.float32) @ v).to(torch.float64)
                s = xv.flatten(1).norm(dim=1) / xn
                scores.append(torch.where(xn == 0, torch.zeros_like(s), s))
            fpa.append(torch.stack(scores, dim=1).cpu().tolist())
        paths = []
        self.last_paths = []
        for b in range(batch):
            experts, active, anchor = route(self._tasks, lambda m, e: fpa[m][b][e])
            paths.append(experts)
            self.last_paths.append(
                {
                    "experts": experts,
                    "tasks": sorted(self.task_names.get(t, t) for t in active),
                    "anchor": anchor,
                }
            )
        return paths

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        """The routed forward: the model's output (``last_hidden_state``, ``pooler_output``)
        with every target module's chosen expert added per sample."""
        paths = torch.tensor(self.route(pixel_values), device=pixel_values.device)

        def add_expert(m):
            def hook(_mod, inputs, output):
                x = inputs[0]
                delta = torch.zeros_like(output)
                for e in paths[:, m].unique().tolist():
                    sel = paths[:, m] == e
                    u, s, v = self._factors(m, e, x)
                    delta[sel] = ((x[sel] @ v) * s) @ u.T
                return output + delta

            return hook

        handles = [lin.register_forward_hook(add_expert(i)) for i, lin in enumerate(self._linears)]
        try:
            return self.model(pixel_values=pixel_values, **kwargs)
        finally:
            for h in handles:
                h.remove()


def head_logits(embedding: torch.Tensor, head_weight: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """CLIP's zero-shot classifier: ``scale * cos(embedding, class row)``."""
    e = torch.nn.functional.normalize(embedding, dim=-1)
    w = torch.nn.functional.normalize(head_weight.to(embedding), dim=-1)
    return scale * e @ w.T
