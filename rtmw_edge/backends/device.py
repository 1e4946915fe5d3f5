"""The GPU engine interface: inference on device buffers, enqueued on a CUDA stream (protocol v2).

A `DeviceEngine` holds what is shared (the weights, the shapes); a `DeviceContext` is one engine's execution
state bound to ONE CUDA stream. The GPU pipeline creates one context per (engine, CUDA stream) it uses (one per
frame slot and per camera stream) and never shares a context between streams (issue 21: one execution context
per concurrent stream).

Implementations: TensorRT (`backends/tensorrt.py`: an IExecutionContext per context), ONNX Runtime's CUDA
provider (`backends/onnxruntime_gpu.py`: a session bound to the context's stream, I/O binding on the buffers)
and PyTorch (`backends/torch_cuda.py`: the zoo's PyTorch model a project export was made from). Pointers are
plain integers (CUdeviceptr values) and the stream a plain integer handle (cudaStream_t / CUstream), so buffers
and streams from cuda-python, CuPy, PyTorch or pycuda can be handed in without copies.

The host side stays `backends.Engine.run(x: np.ndarray) -> dict[str, np.ndarray]` (numpy in and out,
synchronous). A device engine may also implement `run`; `HostEngine` then gives it the host interface (the CPU
pipeline over it). For tests on the CPU, device engines are constructible and runnable on the CPU (torch device
"cpu", ONNX Runtime's CPU provider with I/O binding on device "cpu" over host pointers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class DeviceContext(Protocol):
    """One engine's execution state bound to ONE CUDA stream (TensorRT: an IExecutionContext)."""

    engine: DeviceEngine
    stream: int                                   # cudaStream_t handle as an int; all work goes there

    def infer_async(self, inputs: dict[str, int], outputs: dict[str, int], batch: int) -> None:
        """Enqueue one inference of `batch` items on self.stream; inputs/outputs: name -> device pointer
        (every pointer 256-byte aligned). Returns without synchronising the host."""
        ...

    def close(self) -> None: ...


class DeviceEngine(Protocol):
    name: str
    input_name: str
    output_names: list[str]
    min_batch: int
    max_batch: int
    metadata: dict | None                         # project metadata of the ONNX it came from
    graph_capturable: bool                        # its contexts' enqueues may be captured in a CUDA graph
    scratch_bytes: int                            # device memory a context can run in when the caller gives it
                                                  # (TensorRT: device_memory_size_v2); 0: the engine keeps its own

    def input_shape(self, batch: int) -> tuple[int, ...]:
        """float32 NCHW."""
        ...

    def output_shape(self, name: str, batch: int) -> tuple[int, ...]:
        """Fully static: no -1 ever."""
        ...

    def output_dtype(self, name: str) -> str:
        """numpy dtype name."""
        ...

    def create_context(self, stream: int, scratch: int | None = None) -> DeviceContext:
        """A context bound to `stream`. `scratch`: a 256-byte aligned device block of at least `scratch_bytes`
        the context runs in (the GPU pipeline gives the detector and pose contexts of one frame slot the same
        block: they run one after the other on its stream); engines with `scratch_bytes == 0` ignore it."""
        ...

    def close(self) -> None: ...


class FixedShapes:
    """The shape half of a device engine whose per-item shapes are fixed: the engine sets `_chw` (C, H, W),
    `_per_item` (output name → dims after the batch) and `_dtypes` (output name → numpy dtype name)."""

    _chw: tuple[int, ...]
    _per_item: dict[str, tuple[int, ...]]
    _dtypes: dict[str, str]

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (int(batch), *self._chw)

    def output_shape(self, name: str, batch: int) -> tuple[int, ...]:
        return (int(batch), *self._per_item[name])

    def output_dtype(self, name: str) -> str:
        return self._dtypes[name]


class HostEngine:
    """The host `Engine` interface (`run(x)`, `input_dims` a tuple with None for a dynamic batch, `max_batch`) of
    a device engine that implements `run`: the CPU pipeline over a device engine."""

    def __init__(self, engine) -> None:
        self.device_engine = engine
        self.path = Path(getattr(engine, "path", engine.name))
        self.input_name, self.output_names, self.metadata = engine.input_name, engine.output_names, engine.metadata
        fixed = engine.min_batch if engine.min_batch == engine.max_batch else None
        self.input_dims = (fixed, *engine.input_shape(engine.min_batch)[1:])
        self.max_batch = engine.max_batch

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.device_engine.run(x)

    def close(self) -> None:
        self.device_engine.close()
