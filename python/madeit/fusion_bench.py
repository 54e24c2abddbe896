"""A FusionBench algorithm that runs any madeit method on a FusionBench model pool.

A FusionBench user switches with one config line::

    method:
      _target_: madeit.fusion_bench.MadeitAlgorithm
      method: opcm            # any name of madeit.methods()
      hyperparameters: {alpha: 0.5}
      seed: 42                # optional: the protocol's task order for this seed

The pool's models are absorbed one at a time in the pool's order (or the order of ``seed``,
CPython's shuffle as in the published task orders); the result is the pretrained model with
the merged weights (dense methods), or for MADE-IT a :class:`madeit.torch.MadeItVisionModel`
that routes each sample through the expert store (the pool's models must then be
transformers ``CLIPVisionModel`` towers). Needs ``fusion-bench`` (and torch) installed.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any, Dict, Optional

import madeit

try:
    from fusion_bench import BaseAlgorithm
except ImportError as e:  # pragma: no cover - exercised only without fusion-bench
    raise ImportError("madeit.fusion_bench needs the fusion-bench package") from e


class MadeitAlgorithm(BaseAlgorithm):
    """Continual merging of a FusionBench model pool with a madeit method."""

    def __init__(
        self,
        method: str,
        hyperparameters: Optional[Dict[str, Any]] = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        self.method = method
        self.hyperparameters = dict(hyperparameters or {})
        self.seed = seed
        # Built now, so that a bad method or hyper-parameter fails when the config loads.
        madeit.Merger(method, **self.hyperparameters)
        self.reports: list = []
        super().__init__(**kwargs)

    def run(self, modelpool):
        names = list(modelpool.model_names)
        if self.seed is not None:
            names = madeit.orders(names, self.seed)
        pretrained = modelpool.load_pretrained_model()
        merger = madeit.Merger(self.method, **self.hyperparameters)
        merger.set_pretrained(pretrained.state_dict())
        for name in names:
            model = modelpool.load_model(name)
            merger.absorb(model.state_dict(), name=name)
            del model
        self.reports = merger.report()["steps"]
        merged = merger.merged()
        result = copy.deepcopy(pretrained)
        if merged["kind"] == "dense":
            result.load_state_dict(merged["state_dict"])
            return result
        from madeit.torch import MadeItVisionModel

        result.load_state_dict(merged["backbone"])
        with tempfile.TemporaryDirectory() as d:
            merger.save_experts(d)
            from madeit.torch import load_store

            store = load_store(d)
        tasks = dict(enumerate(merger.tasks))
        return MadeItVisionModel(result, store, tasks=tasks)
