"""Engines behind one small interface: `run(x) -> {output name: array}` on host (numpy) arrays.

`load_engine(path, backend)` picks the implementation: ONNX Runtime for `.onnx` (the embedded default),
TensorRT for `.engine`/`.plan` files (`backends/tensorrt.py`, imported lazily; engines come from
`rtmw-edge build`, their metadata from the manifest beside them). Each engine exposes its input
name and shape, the maximum batch it accepts (None = any) and the project metadata of the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import RtmwEdgeError

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch-cuda")


class Engine(Protocol):
    path: Path
    input_name: str
    input_shape: tuple            # (batch | None, 3, H, W)
    max_batch: int | None         # None: any batch size
    output_names: list[str]
    metadata: dict | None

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]: ...


def load_engine(path: str | Path, backend: str = "auto", **options) -> Engine:
    """Open a model file with the requested backend ('auto' decides by the file suffix)."""
    path = Path(path)
    if backend not in BACKENDS:
        raise RtmwEdgeError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise RtmwEdgeError(f"model file not found: {path}")
    is_engine = path.suffix.lower() in ENGINE_SUFFIXES
    if backend == "tensorrt" or (backend == "auto" and is_engine):
        from .tensorrt import TensorRTEngine, import_tensorrt

        import_tensorrt()  # one clear line when TensorRT is missing
        if not is_engine:
            raise RtmwEdgeError(f"--backend tensorrt runs built engines: `rtmw-edge build {path}` first, then "
                                f"pass engines/{path.stem}.engine")
        return TensorRTEngine(path, **options)
    if is_engine:
        raise RtmwEdgeError(f"{path.name} is a TensorRT engine: use --backend tensorrt (or auto)")
    if backend == "torch-cuda":  # the zoo's PyTorch model an export was made from, on the GPU (backends/torch_cuda.py)
        from .device import HostEngine
        from .torch_cuda import TorchCudaEngine

        options.pop("threads", None)  # an ONNX Runtime setting
        return HostEngine(TorchCudaEngine(path, **options))
    from .onnxruntime import OrtEngine

    return OrtEngine(path, **options)


def run_chunked(engine: Engine, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a batch of any size: split at the engine's max (or fixed) batch and concatenate the results.

    A fixed-batch graph gets its last chunk zero-padded to the fixed size; the padding is cut off again.
    """
    fixed = engine.input_shape[0] if isinstance(engine.input_shape[0], int) else None
    step = fixed or engine.max_batch or len(x)
    if len(x) == 0:
        return {}
    if len(x) <= step and (fixed is None or len(x) == fixed):
        return engine.run(x)
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        n = len(chunk)
        if fixed is not None and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
        out = engine.run(chunk)
        parts.append({k: v[:n] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
