"""Loading official OpenMMLab checkpoints (mmpose / mmdet `.pth`) into the zoo's models.

Official files are `torch.save({"state_dict": ..., "meta": ...})`. They are read with
`torch.load(weights_only=True)`: tensors, containers and the few harmless types found in `meta`
(numpy arrays and scalars) are allowed; any other pickled object is refused unless the caller trusts the
file (`trust=True`, the CLI's `--trust-checkpoint`), because unpickling arbitrary objects runs code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

# Keys the distillation transfer may copy into the head (`distill_losses.loss_mgd.down*` → `head.down*`):
# they have no module at inference time, so they are dropped and reported.
TOLERATED_EXTRA = ("head.down",)


@dataclass
class LoadReport:
    path: str
    loaded: int = 0
    ignored: list[str] = field(default_factory=list)   # tolerated extras, dropped
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint [..] vs model [..]"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self, limit: int = 3) -> str:
        parts = []
        for label, keys in (("shape mismatches", self.mismatched), ("missing keys", self.missing),
                            ("unexpected keys", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
                parts.append(f"{len(keys)} {label} ({shown})")
        return "; ".join(parts)


def _safe_globals() -> list:
    """numpy types that official `meta` dicts may hold, under both numpy 1.x and 2.x module names."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool", "uint8")]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{mod}._reconstruct"), (multiarray.scalar, f"{mod}.scalar")]
    return allowed


def read_checkpoint(path: str | Path, *, trust: bool = False) -> tuple[dict, dict]:
    """(state_dict, meta) of an mmpose/mmdet checkpoint or a bare state dict."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):  # torch zip archive / legacy pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        if trust:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        reason = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        if "GLOBAL" in reason or "Unsupported" in reason or "weights_only" in str(exc):
            raise CheckpointError(
                f"{path} holds pickled objects outside the safe allow-list ({reason[:160]}); if you trust where "
                "it came from, pass --trust-checkpoint (trust=True)") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({reason[:160]})") from None
    except Exception as exc:  # zip/pickle internals: truncated or corrupt files surface as many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {reason[:160]})") \
            from None
    return split_checkpoint(obj, path)


def split_checkpoint(obj: Any, path: str | Path = "<checkpoint>") -> tuple[dict, dict]:
    import torch

    meta: dict = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, meta = obj["state_dict"], obj.get("meta") or {}
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise CheckpointError(f"{path} is not an mmpose/mmdet checkpoint: no 'state_dict' and not a state dict")
    # DataParallel wrapper first, then distillation: only the student is the model, the teacher is dropped.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("student.") for k in state):
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    return dict(state), meta if isinstance(meta, dict) else {}


def match_state_dict(model_state: dict, ckpt_state: dict, path: str = "") -> tuple[dict, LoadReport]:
    """Compare key by key; return the tensors to load and a report of what does not fit."""
    report = LoadReport(path=str(path))
    to_load = {}
    for key, value in ckpt_state.items():
        if key not in model_state:
            (report.ignored if key.startswith(TOLERATED_EXTRA) else report.unexpected).append(key)
        elif tuple(value.shape) != tuple(model_state[key].shape):
            report.mismatched.append(f"{key}: checkpoint {list(value.shape)} vs model {list(model_state[key].shape)}")
        else:
            to_load[key] = value
    report.missing = [k for k in model_state if k not in ckpt_state]
    report.loaded = len(to_load)
    return to_load, report


def load_checkpoint(model, checkpoint: str | Path, *, model_name: str = "model", strict: bool = True,
                    trust: bool = False) -> LoadReport:
    """Load `checkpoint` into `model`. With `strict` (always for registered names) any missing or
    unexpected key or shape mismatch raises a CheckpointError naming them; tolerated extras are reported."""
    ckpt_state, meta = read_checkpoint(checkpoint, trust=trust)
    to_load, report = match_state_dict(model.state_dict(), ckpt_state, str(checkpoint))
    report.meta = meta
    if strict and not report.ok:
        raise CheckpointError(f"{checkpoint} does not fit {model_name}: {report.problems()}")
    model.load_state_dict(to_load, strict=strict)
    return report


def save_checkpoint(model, path: str | Path, meta: dict | None = None) -> Path:
    """Write `model` in the mmpose checkpoint layout (`state_dict` + `meta`), atomically."""
    import os

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": model.state_dict(), "meta": meta or {}}, tmp)
    os.replace(tmp, path)
    return path
