"""PyTorch engine: the zoo's own PyTorch model behind the `DeviceEngine` interface, for GPU machines with PyTorch
but neither TensorRT nor onnxruntime-gpu (`--backend torch-cuda`).

It runs what an export was *made from*, not the exported graph: the ONNX's metadata names the model, the wrappers
(flip test, in-graph decode, detector top-k: `export.export_graph`) and the weights (`weights`: a checkpoint's
sha256 or the random-init seed, and the sha256 of the weights themselves). The engine rebuilds that module with
the export's own code (`export.build_weights`) and refuses to run unless `export.weights_sha256` of what it
rebuilt equals the recorded one, so it computes what the ONNX computes (the tests compare it with ONNX Runtime).
BatchNorm is folded into the convolutions, as the export does; an FP16 export runs its FP16 regions
(`export.FP16_PREFIXES`) in half precision. Foreign ONNX files (BYO detectors, imported pose files), INT8 Q/DQ
graphs and `--nms` exports are refused in one line: they run on TensorRT or onnxruntime-gpu.

`create_context(stream)` gives a `TorchContext` bound to one CUDA stream: `infer_async` wraps the given device
pointers as tensors without copying (`__cuda_array_interface__`), runs the module on `torch.cuda.ExternalStream`
and copies each result into its output buffer on that stream; it never synchronises the host. On torch device
"cpu" (the tests) the pointers are host addresses (`__array_interface__`) and the work is done at once. TF32 is
off by default (fidelity to the FP32 CPU pipeline; PyTorch's global flags); `allow_tf32=True` trades that for
speed on Ampere+. `run(x)` serves the host side (numpy in and out).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..downloads import checkpoints_dir, sha256_file
from ..errors import RtmwEdgeError, UsageError, require
from ..export import FP16_PREFIXES, build_weights, export_graph, weights_sha256
from ..onnx_meta import read_metadata
from ..zoo import get_spec, list_models
from .device import FixedShapes

DEFAULT_MAX_BATCH = 64
ELEMENT_TYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}  # ONNX → numpy
ELSEWHERE = "run it with --backend tensorrt (after `rtmw-edge build`) or on onnxruntime-gpu"


def _torch():
    return require("torch", "export")


def check_rebuildable(path: Path, meta: dict | None) -> None:
    """Refuse, in one line, an ONNX this engine cannot rebuild from the zoo: a foreign file, an INT8 graph, an
    in-graph NMS export."""
    if meta is None or "imported" in meta or meta.get("name") not in list_models():
        raise RtmwEdgeError(f"{path.name} is not an export of this toolkit (a foreign ONNX): the torch-cuda engine "
                            f"runs the zoo's PyTorch model an export was made from; {ELSEWHERE}")
    if meta.get("precision") not in ("fp32", "fp16"):
        raise RtmwEdgeError(f"{path.name} is an {meta.get('precision')} graph (Q/DQ): the torch-cuda engine runs FP32/"
                            f"FP16 exports; {ELSEWHERE}")
    if meta.get("nms"):
        raise RtmwEdgeError(f"{path.name} was exported with --nms (in-graph NonMaxSuppression): export the detector "
                            "without --nms for the GPU runtime")


def rebuild_weights(path: Path, meta: dict, *, checkpoint=None, model=None, trust_checkpoint: bool = False):
    """The PyTorch model (eval, float32, on the CPU) whose weights the export at `path` was traced with: from the
    recorded random-init seed, from `checkpoint` (or the cached official one) with the recorded sha256, or the
    given `model`; checked against the recorded `weights.sha256` when the export has one."""
    spec = get_spec(meta["name"])
    weights = meta.get("weights") or {}
    ckpt_sha = meta.get("checkpoint_sha256")
    if checkpoint is not None and not ckpt_sha:
        raise UsageError(f"{path.name} was not exported from a checkpoint ({weights.get('from', 'unknown weights')}):"
                         " give no checkpoint")
    if model is not None:
        import copy

        model = copy.deepcopy(model).eval().float()
    elif weights.get("from") == "random-init":
        model = build_weights(spec, seed=int(weights["seed"]))
    elif ckpt_sha:
        model = build_weights(spec, checkpoint=_checkpoint(path, spec, ckpt_sha, checkpoint),
                              trust_checkpoint=trust_checkpoint)
    else:
        raise RtmwEdgeError(f"{path.name} records no way to rebuild its weights (exported from an in-memory model, or "
                            f"before exports recorded them): re-export it with --checkpoint or --random-init, or "
                            f"{ELSEWHERE}")
    recorded = weights.get("sha256")
    if recorded and weights_sha256(model) != recorded:
        raise RtmwEdgeError(f"{path.name}: the {spec.name} weights rebuilt here differ from those it was exported "
                            f"with (weights sha256 {recorded[:12]}…; another PyTorch version initialises differently, "
                            f"or another model was given): re-export it here, or {ELSEWHERE}")
    return model


def _checkpoint(path: Path, spec, sha256: str, given) -> Path:
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise RtmwEdgeError(f"checkpoint not found: {given}")
        if sha256_file(given) != sha256:
            raise RtmwEdgeError(f"{given.name} is not the checkpoint {path.name} was exported from "
                                f"(sha256 {sha256[:12]}… recorded)")
        return given
    cached = checkpoints_dir() / spec.checkpoint_filename
    if cached.is_file() and sha256_file(cached) == sha256:
        return cached
    raise RtmwEdgeError(f"{path.name} was exported from a checkpoint (sha256 {sha256[:12]}…) that is not in the cache "
                        f"({checkpoints_dir()}): `rtmw-edge models download {spec.name}` for the official one, or "
                        "pass checkpoint=")


def fold_batchnorm(module) -> None:
    """Each Conv2d → BatchNorm2d pair of a ConvModule becomes one convolution (what the ONNX export folds)."""
    torch = _torch()
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for sub in list(module.modules()):
        conv, bn = getattr(sub, "conv", None), getattr(sub, "bn", None)
        if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
            sub.conv, sub.bn = fuse_conv_bn_eval(conv, bn), torch.nn.Identity()


def half_regions(graph) -> list[str]:
    """Run the submodules an FP16 export converts (node scopes starting with `FP16_PREFIXES`) in float16, with
    casts at their borders as the export inserts them. Returns their names."""
    torch = _torch()

    def cast(value, dtype):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(dtype)
        if isinstance(value, (tuple, list)):
            return type(value)(cast(v, dtype) for v in value)
        return value

    chosen: list[str] = []
    for name, sub in graph.named_modules():
        scope = "/" + name.replace(".", "/") + "/"
        if name and scope.startswith(FP16_PREFIXES) and not any(name.startswith(c + ".") for c in chosen):
            chosen.append(name)
            sub.half()
            sub.register_forward_pre_hook(lambda _m, args: cast(args, torch.float16))
            sub.register_forward_hook(lambda _m, _args, out: cast(out, torch.float32))
    return chosen


class _HostArray:
    """A host pointer seen as an array by numpy (array interface v3, no copy)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: str) -> None:
        self.__array_interface__ = {"shape": tuple(int(s) for s in shape), "typestr": np.dtype(dtype).str,
                                    "data": (int(ptr), False), "version": 3}


class _CudaArray:
    """A device pointer seen as an array by `torch.as_tensor` (CUDA array interface v3, no copy, no stream sync)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: str) -> None:
        self.__cuda_array_interface__ = {"shape": tuple(int(s) for s in shape), "typestr": np.dtype(dtype).str,
                                         "data": (int(ptr), False), "version": 3, "strides": None}


class TorchCudaEngine(FixedShapes):
    """DeviceEngine running the PyTorch model a project export was made from (see the module docstring).
    `device`: a CUDA index, or "cpu" (tests: host pointers, work done at once)."""

    backend = "torch-cuda"        # the backend table's name (what the daemon reports)
    graph_capturable = False  # eager PyTorch allocates: never inside a foreign CUDA-graph capture
    scratch_bytes = 0         # PyTorch keeps its own memory (its caching allocator)

    def __init__(self, path: str | Path, *, device: int | str = 0, max_batch: int = DEFAULT_MAX_BATCH,
                 allow_tf32: bool = False, checkpoint: str | Path | None = None, model=None,
                 trust_checkpoint: bool = False) -> None:
        torch = _torch()
        import onnx

        self.path = Path(path)
        self.name = self.path.name
        self.metadata = meta = read_metadata(self.path)
        check_rebuildable(self.path, meta)
        if device == "cpu":
            self.torch_device = torch.device("cpu")
        else:
            if not torch.cuda.is_available():
                raise RtmwEdgeError("the torch-cuda backend needs a CUDA build of PyTorch and a GPU "
                                    "(torch.cuda.is_available() is False)")
            self.torch_device = torch.device("cuda", int(device))
            torch.backends.cudnn.allow_tf32 = allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        graph = onnx.load(str(self.path), load_external_data=False).graph
        self.input_name = meta["input_name"]
        self.output_names = list(meta["outputs"])
        if [o.name for o in graph.output] != self.output_names:
            raise RtmwEdgeError(f"{self.name}: its outputs {[o.name for o in graph.output]} are not the ones its "
                                f"metadata records ({self.output_names}): the file was changed after the export")
        w, h = meta["input_size"]
        self._chw = (3, int(h), int(w))
        batch = meta.get("batch", "dynamic")
        self.min_batch, self.max_batch = (batch, batch) if isinstance(batch, int) else (1, int(max_batch))
        self._per_item = {o.name: tuple(d.dim_value for d in o.type.tensor_type.shape.dim)[1:] for o in graph.output}
        self._dtypes = {o.name: ELEMENT_TYPES.get(o.type.tensor_type.elem_type, "?") for o in graph.output}
        if any(d <= 0 for dims in self._per_item.values() for d in dims):
            raise RtmwEdgeError(f"{self.name}: an output has a dynamic size past the batch axis: {self._per_item}")

        spec = get_spec(meta["name"])
        source = rebuild_weights(self.path, meta, checkpoint=checkpoint, model=model, trust_checkpoint=trust_checkpoint)
        fold_batchnorm(source)
        module, names, _ = export_graph(source, spec, decode=bool(meta.get("decoded")),
                                       flip_test=bool(meta.get("flip_test")), topk=int(meta.get("topk") or 1000))
        if names != self.output_names:
            raise RtmwEdgeError(f"{self.name}: the export's wrappers give {names}, the file has {self.output_names}")
        for sub in module.modules():  # the forms the export traced (same values; bounded intermediates in FP16)
            if hasattr(type(sub), "fp16_safe"):
                sub.fp16_safe = True
        self.half_regions = half_regions(module) if meta.get("precision") == "fp16" else []
        self.module = module.eval().to(self.torch_device)

    # -- DeviceEngine (shapes: device.FixedShapes)
    def create_context(self, stream: int, scratch: int | None = None) -> TorchContext:
        return TorchContext(self, stream)

    def forward(self, x) -> dict:
        """The outputs for a float32 NCHW tensor on the engine's device, checked against the file's shapes."""
        torch = _torch()
        with torch.inference_mode():
            outs = dict(zip(self.output_names, self.module(x)))
        for name, value in outs.items():
            want = self.output_shape(name, x.shape[0])
            if tuple(value.shape) != want or str(value.dtype).removeprefix("torch.") != self._dtypes[name]:
                raise RtmwEdgeError(f"{self.name}: output {name} is {tuple(value.shape)} {value.dtype}, the file says "
                                    f"{want} {self._dtypes[name]}")
        return outs

    def check_batch(self, batch: int) -> None:
        if not self.min_batch <= batch <= self.max_batch:
            raise RtmwEdgeError(f"{self.name}: batch {batch} outside [{self.min_batch}, {self.max_batch}]")

    # -- host side
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Host arrays in and out (synchronous)."""
        torch = _torch()
        self.check_batch(len(x))
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.torch_device)
        return {k: v.cpu().numpy() for k, v in self.forward(t).items()}

    def close(self) -> None:
        self.module = None


class TorchContext:
    """One engine's work on one CUDA stream (on torch device "cpu": done at once, over host pointers)."""

    def __init__(self, engine: TorchCudaEngine, stream: int) -> None:
        torch = _torch()
        self.engine, self.stream = engine, int(stream)
        self._cuda = engine.torch_device.type == "cuda"
        self._stream = torch.cuda.ExternalStream(self.stream, device=engine.torch_device) if self._cuda else None

    def _tensor(self, ptr: int, shape: tuple[int, ...], dtype: str):
        torch = _torch()
        if self._cuda:
            return torch.as_tensor(_CudaArray(ptr, shape, dtype), device=self.engine.torch_device)
        return torch.from_numpy(np.asarray(_HostArray(ptr, shape, dtype)))

    def infer_async(self, inputs: dict[str, int], outputs: dict[str, int], batch: int) -> None:
        torch = _torch()
        engine = self.engine
        if engine.module is None or self.stream is None:
            raise RtmwEdgeError(f"{engine.name}: the engine or the context is closed")
        engine.check_batch(batch)
        on_stream = torch.cuda.stream(self._stream) if self._cuda else contextlib.nullcontext()
        with on_stream, torch.inference_mode():
            x = self._tensor(inputs[engine.input_name], engine.input_shape(batch), "float32")
            result = engine.forward(x)
            for name, ptr in outputs.items():
                self._tensor(ptr, engine.output_shape(name, batch), engine.output_dtype(name)).copy_(result[name])

    def close(self) -> None:
        self._stream = self.stream = None
