"""The backend table: every `--backend` name, what it needs, and which pipeline it means.

One row per name (`BACKENDS`). Each row knows

- its **pipeline**: ``cpu`` (`pipeline.PoseEstimator`: letterbox, NMS, crops and decoding in numpy, engines fed
  host arrays), ``cuda-stream`` (`cuda/gpu_pipeline.py`: the whole frame on the GPU, engines on device buffers and a
  CUDA stream) or ``remote`` (a Triton server's pipeline model); ``auto`` is decided per models and machine by
  `estimators.open_estimator`, the one place a backend becomes a pipeline;
- whether it **can run here** (`availability(name)`: the version, or every missing piece — no GPU, a package not
  installed — in one line), probed on demand: naming the backends or validating a configuration imports nothing;
- its **host engine** loader (`run(x) -> {output: array}` on numpy arrays, what the CPU pipeline calls) and its
  **device engine** loader (`backends.device.DeviceEngine`, what the CUDA-stream pipeline calls), each None where
  the backend has none.

`load_engine(path, backend)` opens a host engine through the table ('auto' decides by the file suffix: TensorRT
for `.engine`/`.plan`/`.trt`, ONNX Runtime for `.onnx`); `load_device_engine(path, backend)` a device engine.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol

import numpy as np

from ..cuda.runtime import device_available
from ..errors import MissingDependencyError, RtmwEdgeError, UsageError
from . import tensorrt as trt_backend  # light: TensorRT itself is imported by import_tensorrt only
from .device import HostEngine
from .onnxruntime import OrtEngine
from .onnxruntime_gpu import OrtGpuEngine
from .torch_cuda import TorchCudaEngine

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
PIPELINES = ("cpu", "cuda-stream", "remote")


class Engine(Protocol):
    path: Path
    input_name: str
    input_dims: tuple             # (batch | None, 3, H, W); device engines: input_shape(batch) → a shape
    max_batch: int | None         # None: any batch size
    output_names: list[str]
    metadata: dict | None

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run on this machine: its version, or why not (every missing piece, one line)."""

    backend: str
    pipeline: str
    available: bool
    version: str | None = None
    reason: str | None = None

    def require(self) -> None:
        """Raise `MissingDependencyError` (one line, exit 1) unless the backend can run here. A library's own
        sentence ("this needs TensorRT: …", the wording every command shares) is raised as it is."""
        if not self.available:
            if self.reason and self.reason.startswith("this needs "):
                raise MissingDependencyError(self.reason)
            raise MissingDependencyError(f"--backend {self.backend} cannot run here: {self.reason}")


@dataclass(frozen=True)
class Backend:
    name: str
    pipeline: str                                   # cpu | cuda-stream | remote | auto
    summary: str                                    # what it runs, for help texts and `doctor`
    probe: Callable[[], tuple[str | None, list[str]]]   # → (version, missing pieces); never raises
    host_engine: Callable[..., Engine] | None       # (path, **options) → Engine
    device_engine: Callable[..., object] | None     # (path, device=0, **options) → DeviceEngine

    def availability(self) -> Availability:
        try:
            version, missing = self.probe()
        except Exception as exc:  # a probe that fails says why instead of failing its caller
            version, missing = None, [f"probing failed: {type(exc).__name__}: {exc}"]
        return Availability(self.name, self.pipeline, not missing, version, "; ".join(missing) or None)


# --------------------------------------------------------------------------- probes (no heavy import unless needed)
def _present(module: str) -> bool:
    """The module can be imported (a stand-in placed in sys.modules counts), without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


_GPU_EXTRA = "pip install 'rtmw-edge[gpu]'"


def _gpu_missing() -> list[str]:
    """What the CUDA-stream pipeline lacks here, before any engine: cuda-python and a usable CUDA GPU."""
    if not (_present("cuda.bindings") or _present("cuda.cudart")):
        return [f"cuda-python is not installed ({_GPU_EXTRA})"]

    ok, why = device_available(0)
    return [] if ok else [f"no CUDA GPU ({why})"]


def _probe_onnxruntime() -> tuple[str | None, list[str]]:
    if not _present("onnxruntime"):
        return None, ["onnxruntime is not installed (pip install onnxruntime)"]
    return _version("onnxruntime", "onnxruntime-gpu"), []


def _probe_tensorrt() -> tuple[str | None, list[str]]:
    try:
        version = str(trt_backend.import_tensorrt().__version__)
    except MissingDependencyError as exc:
        # the one wording of build, selftest and run: no GPU first (installing TensorRT would not help), else how
        return None, [str(exc)]
    return version, _gpu_missing()


def _probe_torch_cuda() -> tuple[str | None, list[str]]:
    missing = _gpu_missing()
    version = _version("torch")
    if version is None:
        missing.append("PyTorch is not installed (pip install 'rtmw-edge[export]', a CUDA build of torch)")
    elif "+cpu" in version:
        missing.append(f"PyTorch {version} is a CPU-only build (install a CUDA build of torch)")
    elif not missing:  # a GPU is there: ask torch itself (imports it)
        import torch

        if not torch.cuda.is_available():
            missing.append(f"PyTorch {version} sees no CUDA device (torch.cuda.is_available() is False)")
    return version, missing


def _probe_onnxruntime_gpu() -> tuple[str | None, list[str]]:
    missing = _gpu_missing()
    version = _version("onnxruntime-gpu", "onnxruntime")
    if not _present("onnxruntime"):
        missing.append("onnxruntime-gpu is not installed (pip install onnxruntime-gpu)")
    else:
        import onnxruntime as ort  # the toolkit's own dependency: light here

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            missing.append(f"ONNX Runtime {version} has no CUDAExecutionProvider (pip install onnxruntime-gpu "
                           "instead of onnxruntime)")
    if BACKENDS["onnxruntime-gpu"].device_engine is None:
        missing.append("this build has no onnxruntime-gpu device engine for the CUDA-stream pipeline")
    return version, missing


def _probe_triton() -> tuple[str | None, list[str]]:
    if not (_present("tritonclient.grpc") or _present("tritonclient.http")):
        return None, ["tritonclient is not installed (pip install 'rtmw-edge[triton]')"]
    return _version("tritonclient"), []


def _probe_auto() -> tuple[str | None, list[str]]:
    return None, []


# --------------------------------------------------------------------------- loaders
def _is_engine_file(path: Path) -> bool:
    return path.suffix.lower() in ENGINE_SUFFIXES


def _onnxruntime_host(path: Path, **options) -> Engine:
    if _is_engine_file(path):
        raise RtmwEdgeError(f"{path.name} is a TensorRT engine: use --backend tensorrt (or auto)")

    return OrtEngine(path, **options)


def _tensorrt_host(path: Path, **options) -> Engine:
    trt_backend.import_tensorrt()  # one clear line when TensorRT is missing
    if not _is_engine_file(path):
        raise RtmwEdgeError(f"--backend tensorrt runs built engines: `rtmw-edge build {path}` first, then "
                            f"pass engines/{path.stem}.engine")
    return trt_backend.TensorRTEngine(path, **options)


def _tensorrt_device(path: Path, device: int = 0, **options):
    trt_backend.import_tensorrt()
    if not _is_engine_file(path):
        raise RtmwEdgeError(f"--backend tensorrt runs built engines: `rtmw-edge build {path}` first")
    return trt_backend.load_device_engine(path, device=device, **options)


def _torch_cuda_host(path: Path, **options) -> Engine:
    """The zoo's PyTorch model an export was made from, on the GPU, behind the host interface."""
    if _is_engine_file(path):
        raise RtmwEdgeError(f"{path.name} is a TensorRT engine: use --backend tensorrt (or auto)")

    options.pop("threads", None)  # an ONNX Runtime setting
    return HostEngine(TorchCudaEngine(path, **options))


def _torch_cuda_device(path: Path, device: int = 0, **options):
    if path.suffix.lower() != ".onnx":
        raise RtmwEdgeError(f"--backend torch-cuda runs exported .onnx models, not {path.name}")

    return TorchCudaEngine(path, device=device, **options)


def _onnxruntime_gpu_device(path: Path, device: int = 0, **options):
    if path.suffix.lower() != ".onnx":
        raise RtmwEdgeError(f"--backend onnxruntime-gpu runs .onnx models, not {path.name}")

    options.pop("allow_tf32", None)  # a PyTorch setting
    return OrtGpuEngine(path, device=device, **options)


def _onnxruntime_gpu_host(path: Path, **options) -> Engine:
    options.pop("threads", None)
    return HostEngine(_onnxruntime_gpu_device(path, **options))


def _auto_host(path: Path, **options) -> Engine:
    return (_tensorrt_host if _is_engine_file(path) else _onnxruntime_host)(path, **options)


# --------------------------------------------------------------------------- the table
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("auto", "auto", "the CUDA-stream pipeline when a GPU and TensorRT engines are there, else the CPU "
            "pipeline (engines by file suffix: TensorRT for .engine, ONNX Runtime for .onnx)",
            _probe_auto, _auto_host, None),
    Backend("onnxruntime", "cpu", "ONNX Runtime on the CPU pipeline", _probe_onnxruntime, _onnxruntime_host, None),
    Backend("tensorrt", "cuda-stream", "TensorRT engines (`rtmw-edge build`) on the CUDA-stream pipeline",
            _probe_tensorrt, _tensorrt_host, _tensorrt_device),
    Backend("torch-cuda", "cuda-stream", "PyTorch on the GPU, on the CUDA-stream pipeline", _probe_torch_cuda,
            _torch_cuda_host, _torch_cuda_device),
    Backend("onnxruntime-gpu", "cuda-stream", "ONNX Runtime's CUDA provider on the CUDA-stream pipeline",
            _probe_onnxruntime_gpu, _onnxruntime_gpu_host, _onnxruntime_gpu_device),
    Backend("triton", "remote", "a Triton server's pipeline model (--triton-url)", _probe_triton, None, None),
)}


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def get_backend(name: str) -> Backend:
    """The table row of NAME, or a usage error listing the names."""
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None


def backend_pipeline(name: str) -> str:
    """cpu | cuda-stream | remote | auto."""
    return get_backend(name).pipeline


def backends_of(pipeline: str) -> tuple[str, ...]:
    """The backend names that mean PIPELINE."""
    return tuple(b.name for b in BACKENDS.values() if b.pipeline == pipeline)


def availability(name: str) -> Availability:
    return get_backend(name).availability()


def backends_help() -> str:
    """One help line naming every backend and its pipeline."""
    return "; ".join(f"{b.name}: {b.summary}" for b in BACKENDS.values())


def _model_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise RtmwEdgeError(f"model file not found: {path}")
    return path


def load_engine(path: str | Path, backend: str = "auto", **options) -> Engine:
    """Open a model file as a host engine of BACKEND ('auto' decides by the file suffix)."""
    row = get_backend(backend)
    if row.host_engine is None:
        raise RtmwEdgeError(f"--backend {backend} has no host engine ({row.summary})")
    return row.host_engine(_model_file(path), **options)


def load_device_engine(path: str | Path, backend: str, device: int = 0, **options):
    """Open a model file as a device engine of BACKEND for the CUDA-stream pipeline."""
    row = get_backend(backend)
    if row.device_engine is None:
        raise RtmwEdgeError(f"--backend {backend} has no device engine for the CUDA-stream pipeline")
    return row.device_engine(_model_file(path), device=device, **options)


def chunk_size(engine: Engine, n: int) -> int:
    """Items per engine call when `run_chunked` runs N items: the engine's fixed batch, else its max batch, else
    all N at once."""
    fixed = engine.input_dims[0] if isinstance(engine.input_dims[0], int) else None
    return fixed or engine.max_batch or max(n, 1)


def chunk_count(engine: Engine, n: int) -> int:
    """How many engine calls `run_chunked` makes for N items (0 for none)."""
    return -(-n // chunk_size(engine, n)) if n > 0 else 0


def run_chunked(engine: Engine, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a batch of any size: split at the engine's max (or fixed) batch and concatenate the results.

    A fixed-batch graph gets its last chunk zero-padded to the fixed size; the padding is cut off again.
    """
    fixed = engine.input_dims[0] if isinstance(engine.input_dims[0], int) else None
    step = chunk_size(engine, len(x))
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
