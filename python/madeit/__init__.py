"""madeit: continual model merging of CLIP vision transformers, with a Rust core.

Every method, default, check and error message comes from the Rust crates (the same code
as the ``madeit`` command line); this package converts NumPy arrays and torch tensors in
and out.

>>> import madeit
>>> [m["name"] for m in madeit.methods()][:2]
['swa', 'task_arithmetic']
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _madeit
from ._madeit import MadeitError

__all__ = [
    "MadeitError",
    "Merger",
    "acc_bwt",
    "methods",
    "orders",
    "__version__",
]

__version__: str = _madeit.__version__

PathLike = Union[str, "os.PathLike[str]"]
StateDict = Mapping[str, Any]


def methods() -> List[Dict[str, Any]]:
    """Every data-free merging method: name, title, summary, paper, reference, kind
    (``"dense"`` or ``"experts"``) and defaults (every hyper-parameter and its default)."""
    return _madeit.methods()


def orders(tasks: Union[int, Sequence[str]], seed: int) -> list:
    """The order in which the continual protocol visits the tasks for ``seed`` (the CPython
    shuffle of ``random.seed(seed)``, as the published task orders).

    ``tasks`` is a list of task names (the names come back reordered) or a number of tasks
    (1-based task ids come back)."""
    if isinstance(tasks, int):
        return list(_madeit.task_order_ids(tasks, seed))
    names = list(tasks)
    return [names[i - 1] for i in _madeit.task_order_ids(len(names), seed)]


def acc_bwt(matrix: Any) -> Tuple[float, Optional[float]]:
    """ACC and BWT of a ``T x T`` accuracy matrix: entry ``[i][j]`` is the accuracy on the
    ``i``-th task of the order after merge step ``j`` (None or NaN where not computed).
    BWT is None for one task."""
    table = matrix.tolist() if hasattr(matrix, "tolist") else matrix
    rows = [[None if v is None or float(v) != float(v) else float(v) for v in row] for row in table]
    return _madeit.acc_bwt(rows)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _to_arrays(state: StateDict) -> Tuple[Dict[str, np.ndarray], Dict[str, str], Dict[str, Any]]:
    """Contiguous float32 arrays, the storage dtype of each (F32, F16, BF16) and, for torch
    tensors, the torch dtype to give back. A float32 CPU tensor or array is not copied here
    (the Rust side copies it once into its own tensor)."""
    if not isinstance(state, Mapping):
        raise TypeError(
            f"expected a state dict (a mapping of names to arrays or tensors) or a checkpoint "
            f"path, got {type(state).__name__}"
        )
    arrays: Dict[str, np.ndarray] = {}
    dtypes: Dict[str, str] = {}
    torch_dtypes: Dict[str, Any] = {}
    for name, value in state.items():
        if _is_torch(value):
            import torch

            t = value.detach().to("cpu")
            torch_dtypes[name] = t.dtype
            if not t.dtype.is_floating_point:
                raise TypeError(f"tensor `{name}` has dtype {t.dtype}; madeit merges floating-point tensors")
            dtypes[name] = {torch.float16: "F16", torch.bfloat16: "BF16"}.get(t.dtype, "F32")
            if t.dtype != torch.float32:
                t = t.to(torch.float32)
            a = t.contiguous().numpy()
        else:
            a = np.asarray(value)
            if not np.issubdtype(a.dtype, np.floating):
                raise TypeError(f"tensor `{name}` has dtype {a.dtype}; madeit merges floating-point arrays")
            dtypes[name] = "F16" if a.dtype == np.float16 else "F32"
        arrays[name] = np.ascontiguousarray(a, dtype=np.float32)
    return arrays, dtypes, torch_dtypes


def _out(arrays: Dict[str, np.ndarray], torch_dtypes: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """NumPy arrays, or torch tensors of the given dtypes (float32 for names not listed) when
    ``torch_dtypes`` is not None."""
    if torch_dtypes is None:
        return arrays
    import torch

    return {
        k: torch.from_numpy(v).to(torch_dtypes.get(k, torch.float32)) for k, v in arrays.items()
    }


class Merger:
    """A continual merger: built by method name with keyword hyper-parameters, fed one
    fine-tuned model at a time.

    >>> m = Merger("task_arithmetic", lambda_=0.3)  # doctest: +SKIP

    Hyper-parameters are the keys of the method's TOML configuration (see :func:`methods`);
    a trailing underscore is dropped so that Python keywords can be written (``lambda_``).
    Unknown methods, unknown keywords and values out of range raise :class:`MadeitError`
    with the message ``madeit merge`` prints.
    """

    def __init__(self, method: str, **hyper: Any) -> None:
        options = {(k[:-1] if k.endswith("_") else k): v for k, v in hyper.items()}
        self._core = _madeit.MergerCore(method, options)
        self._torch_dtypes: Optional[Dict[str, Any]] = None

    @classmethod
    def _from_core(cls, core: Any) -> "Merger":
        self = cls.__new__(cls)
        self._core = core
        self._torch_dtypes = None
        return self

    @property
    def method(self) -> str:
        """The method's registry name."""
        return self._core.method

    @property
    def config(self) -> Dict[str, Any]:
        """The full configuration (every hyper-parameter, defaults included)."""
        return self._core.config()

    @property
    def tasks(self) -> List[str]:
        """The tasks absorbed so far, in order."""
        return self._core.tasks()

    def set_pretrained(self, pretrained: Union[StateDict, PathLike]) -> None:
        """Sets the pretrained model: a state dict or a checkpoint path (a folder with
        ``model.safetensors``, sharded or not, or a ``.safetensors`` file)."""
        if isinstance(pretrained, (str, os.PathLike)):
            self._core.set_pretrained_path(os.fspath(pretrained))
            self._torch_dtypes = None
        else:
            arrays, dtypes, torch_dtypes = _to_arrays(pretrained)
            self._core.set_pretrained(arrays, dtypes)
            self._torch_dtypes = torch_dtypes if torch_dtypes else None

    def absorb(
        self,
        task: Union[StateDict, PathLike],
        *,
        name: Optional[str] = None,
        pretrained: Union[StateDict, PathLike, None] = None,
    ) -> Dict[str, Any]:
        """Absorbs one fine-tuned model: a state dict (NumPy arrays or torch tensors, any
        float dtype) or a checkpoint path. ``pretrained`` is needed once (the first call, or
        after :meth:`load` without it). The task is named ``name``, or after the checkpoint
        folder, or ``task<k>``. Returns the step's report. A failed absorb leaves the merger
        unchanged."""
        if pretrained is not None:
            self.set_pretrained(pretrained)
        if isinstance(task, (str, os.PathLike)):
            return self._core.absorb_path(os.fspath(task), name)
        arrays, dtypes, _ = _to_arrays(task)
        if name is None:
            name = f"task{len(self.tasks) + 1}"
        return self._core.absorb(arrays, name, dtypes)

    def merged(self) -> Dict[str, Any]:
        """The merged model. ``{"kind": "dense", "state_dict": ...}`` for the weight-space
        methods; ``{"kind": "experts", "backbone": ..., "experts": ..., "expert_tasks": ...}``
        for expert methods (MADE-IT): the backbone state dict, the low-rank factors
        ``<weight>.expert<e>.up`` ``[out, r]`` and ``.down`` ``[r, in]`` (``delta W = up @
        down``) and the task names each expert serves. Arrays are float32 NumPy arrays whose
        values are rounded to the pretrained model's storage dtype, or torch tensors of the
        pretrained dtypes when the pretrained model was given as torch tensors."""
        out = self._core.merged()
        if out[0] == "dense":
            return {"kind": "dense", "state_dict": _out(out[1], self._torch_dtypes)}
        return {
            "kind": "experts",
            "backbone": _out(out[1], self._torch_dtypes),
            "experts": _out(out[3], None if self._torch_dtypes is None else {}),
            "expert_tasks": out[4],
        }

    def merged_state_dict(self) -> Dict[str, Any]:
        """The dense merged state dict (weight-space methods); for an expert method, the
        backbone (the experts are in :meth:`merged` and :meth:`save_experts`)."""
        m = self.merged()
        return m["state_dict"] if m["kind"] == "dense" else m["backbone"]

    def report(self) -> Dict[str, Any]:
        """The method, its configuration, the tasks, and the report of every step absorbed by
        this object (task-vector norm, merged-delta norm, method metrics)."""
        return {
            "method": self.method,
            "config": self.config,
            "tasks": self.tasks,
            "steps": self._core.reports(),
        }

    def save_experts(self, path: PathLike) -> int:
        """MADE-IT only: saves the expert store into folder ``path`` (the ``experts/`` folder
        ``madeit merge`` writes; load it with ``madeit.torch``). Returns the bytes of
        factors."""
        return self._core.save_experts(os.fspath(path))

    def save(self, path: PathLike) -> None:
        """Saves the merger's state to one safetensors file (atomically). The pretrained
        model is not saved: only its fingerprint, and its path when it was given as one."""
        self._core.save(os.fspath(path))

    @classmethod
    def load(
        cls, path: PathLike, pretrained: Union[StateDict, PathLike, None] = None
    ) -> "Merger":
        """Loads a merger saved with :meth:`save`. The pretrained model is ``pretrained``, or
        the path recorded in the file when it was given as one and still exists; absorbing
        checks it is the model the stream was built on."""
        core, recorded = _madeit.MergerCore.load(os.fspath(path))
        self = cls._from_core(core)
        if pretrained is not None:
            self.set_pretrained(pretrained)
        elif recorded is not None and os.path.exists(recorded):
            self.set_pretrained(recorded)
        return self

    def __repr__(self) -> str:
        return f"Merger({self.method!r}, tasks={self.tasks!r})"
