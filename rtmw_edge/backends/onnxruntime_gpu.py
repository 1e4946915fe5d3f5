"""ONNX Runtime on the GPU behind the `DeviceEngine` interface: any ONNX file (the project's exports, BYO detectors
and pose files, INT8 Q/DQ graphs) on GPUs without TensorRT. Needs the `onnxruntime-gpu` package in place of
`onnxruntime` (they install the same module; see docs/gpu-runtime.md, "onnxruntime-gpu").

CUDA execution provider, I/O binding on the pipeline's buffers: `infer_async` binds the input and output device
pointers (`bind_input` / `bind_output` with device_type "cuda", the device id, dtype and the static shape) and
runs with the run option `disable_synchronize_execution_providers=1`, so `run_with_iobinding` returns once the
work is enqueued instead of waiting for the stream. ONNX Runtime's Python API takes the CUDA stream per session
(the CUDA provider option `user_compute_stream`), not per run, so each context (one per stream, as the protocol
has it) owns an `InferenceSession` bound to its stream, and its own binding. Output shapes are read from the
graph (declared, else ONNX shape inference at the batch sizes used); a graph whose outputs only get their size
at run time (in-graph NMS) is refused in one line.

`device="cpu"` runs the same code with the CPU execution provider and device_type "cpu" over host pointers
(the tests; the work is done by the time `infer_async` returns).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, RtmwEdgeError
from ..onnx_meta import read_metadata
from .device import FixedShapes
from .onnxruntime import session_options

DEFAULT_MAX_BATCH = 64
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
             "tensor(bool)": "bool"}
INSTALL = ("pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.18' "
           "(the two packages install the same module)")


def _dims(value_info) -> list:
    """int for a fixed dim, the parameter name for a symbolic one, None for an unknown one."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def static_output_shapes(model, batches: list[int]) -> dict[str, tuple[int, ...]]:
    """Per-item output shapes {name: dims after the batch axis} of a one-input graph, the same for every batch in
    `batches`: the declared dims where they are fixed (a symbolic first dim equal to the input's counts as the
    batch), else ONNX shape inference with the input's batch set. Raises where a dim stays unknown."""
    import onnx

    inits = {i.name for i in model.graph.initializer}
    (inp,) = [i for i in model.graph.input if i.name not in inits]
    batch_dim = _dims(inp)[0]
    declared = {o.name: _dims(o) for o in model.graph.output}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in declared.items():
        if not dims:
            continue
        first = dims[0] == batch_dim if isinstance(batch_dim, str) else dims[0] == batch_dim == batches[0]
        if first and all(isinstance(d, int) and d > 0 for d in dims[1:]):
            shapes[name] = tuple(dims[1:])
    unresolved = [name for name in declared if name not in shapes]
    for batch in batches if unresolved else []:
        probe = onnx.ModelProto()   # a copy whose input batch is fixed and whose outputs declare nothing
        probe.CopyFrom(model)
        (first,) = [i for i in probe.graph.input if i.name == inp.name]
        first.type.tensor_type.shape.dim[0].dim_value = batch
        for o in probe.graph.output:
            o.type.tensor_type.ClearField("shape")
        try:
            inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(probe, data_prop=True).graph.output}
        except Exception:  # onnx raises its own InferenceError types; then nothing is known
            inferred = {}
        for name in unresolved:
            o = inferred.get(name)
            dims = _dims(o) if o is not None and o.type.tensor_type.HasField("shape") else []
            if not (dims and all(isinstance(d, int) and d > 0 for d in dims) and dims[0] == batch):
                raise RtmwEdgeError(f"output {name} has a size known only at run time ({declared[name]}): the GPU "
                                    "pipeline needs fixed-size outputs (a graph with in-graph NMS? use its raw-head "
                                    "export)")
            if shapes.setdefault(name, tuple(dims[1:])) != tuple(dims[1:]):
                raise RtmwEdgeError(f"output {name} does not scale with the batch ({declared[name]})")
    return shapes


def _import_ort(device):
    import onnxruntime as ort

    if device != "cpu" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise MissingDependencyError(f"onnxruntime {ort.__version__} has no CUDA execution provider (the CPU-only "
                                     f"package is installed): {INSTALL}")
    return ort


class OrtGpuEngine(FixedShapes):
    """DeviceEngine on ONNX Runtime's CUDA execution provider (see the module docstring). `device`: a CUDA index,
    or "cpu" (the CPU provider over host pointers, for tests)."""

    backend = "onnxruntime-gpu"        # the backend table's name (what the daemon reports)
    graph_capturable = False  # ONNX Runtime allocates from its arena while running: no foreign graph capture
    scratch_bytes = 0         # each context's session keeps its own memory

    def __init__(self, path: str | Path, *, device: int | str = 0, max_batch: int = DEFAULT_MAX_BATCH,
                 provider_options: dict | None = None) -> None:
        import onnx

        self.path = Path(path)
        self.name = self.path.name
        self.metadata = read_metadata(self.path)
        self._ort = _import_ort(device)
        self.device_type, self.device_id = ("cpu", 0) if device == "cpu" else ("cuda", int(device))
        self._provider_options = {"device_id": str(self.device_id), **(provider_options or {})}
        self.session = self._new_session(None)  # host `run`, and every context on the CPU
        inp = self.session.get_inputs()
        if len(inp) != 1:
            raise RtmwEdgeError(f"{self.name}: the GPU pipeline runs graphs with one input, this one has {len(inp)}")
        if inp[0].type != "tensor(float)":
            raise RtmwEdgeError(f"{self.name}: its input is {inp[0].type}; the GPU pipeline feeds float32")
        self.input_name = inp[0].name
        dims = [d if isinstance(d, int) else None for d in inp[0].shape]
        if len(dims) != 4 or None in dims[1:]:
            raise RtmwEdgeError(f"{self.name}: the GPU pipeline needs a fixed NCHW input size, got {inp[0].shape}")
        self._chw = tuple(dims[1:])
        self.min_batch, self.max_batch = (dims[0], dims[0]) if dims[0] else (1, int(max_batch))
        outs = self.session.get_outputs()
        self.output_names = [o.name for o in outs]
        self._dtypes = {o.name: ORT_TYPES.get(o.type, "") for o in outs}
        unknown = [f"{n} ({o.type})" for n, o in zip(self.output_names, outs) if not self._dtypes[n]]
        if unknown:
            raise RtmwEdgeError(f"{self.name}: outputs of types the pipeline cannot hold: {', '.join(unknown)}")
        batches = sorted({self.min_batch, min(self.min_batch + 1, self.max_batch)})
        try:
            self._per_item = static_output_shapes(onnx.load(str(self.path), load_external_data=False), batches)
        except RtmwEdgeError as exc:
            raise RtmwEdgeError(f"{self.name}: {exc}") from None
        self.run_options = self._ort.RunOptions()
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def _new_session(self, stream: int | None):
        ort = self._ort
        if self.device_type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            options = dict(self._provider_options)
            if stream is not None:
                options["user_compute_stream"] = str(int(stream))
            providers = [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(self.path), session_options(), providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RtmwEdgeError(f"ONNX Runtime cannot load {self.name}: {first[:200]}") from None
        if self.device_type == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
            raise RtmwEdgeError(f"{self.name}: ONNX Runtime's CUDA execution provider did not load (CUDA 12 and "
                                "cuDNN 9 libraries on the library path?); it fell back to the CPU")
        return session

    # -- DeviceEngine (shapes: device.FixedShapes)
    def check_batch(self, batch: int) -> None:
        if not self.min_batch <= batch <= self.max_batch:
            raise RtmwEdgeError(f"{self.name}: batch {batch} outside [{self.min_batch}, {self.max_batch}]")

    def create_context(self, stream: int, scratch: int | None = None) -> OrtContext:
        if self.session is None:
            raise RtmwEdgeError(f"{self.name}: the engine is closed")
        if self.device_type == "cpu":
            return OrtContext(self, stream, self.session)
        if int(stream) == 0:  # ONNX Runtime takes 0 for "no stream given" and would run on a stream of its own
            raise RtmwEdgeError(f"{self.name}: ONNX Runtime needs a created CUDA stream, not the legacy default stream")
        return OrtContext(self, stream, self._new_session(stream))

    # -- host side
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Host arrays in and out (plain `session.run`, synchronous)."""
        self.check_batch(len(x))
        x = np.ascontiguousarray(x, dtype=np.float32)
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))

    def close(self) -> None:
        self.session = None


class OrtContext:
    """One engine's work on one CUDA stream: its own session (bound to the stream on the GPU) and I/O binding."""

    def __init__(self, engine: OrtGpuEngine, stream: int, session) -> None:
        self.engine, self.stream, self.session = engine, int(stream), session
        self.binding = session.io_binding()

    def infer_async(self, inputs: dict[str, int], outputs: dict[str, int], batch: int) -> None:
        e = self.engine
        if self.session is None:
            raise RtmwEdgeError(f"{e.name}: the context is closed")
        e.check_batch(batch)
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()   # an output left bound from an earlier call would be written to its old buffer
        b.bind_input(e.input_name, e.device_type, e.device_id, np.float32, list(e.input_shape(batch)),
                     int(inputs[e.input_name]))
        for name, ptr in outputs.items():
            b.bind_output(name, e.device_type, e.device_id, np.dtype(e.output_dtype(name)).type,
                          list(e.output_shape(name, batch)), int(ptr))
        self.session.run_with_iobinding(b, e.run_options)

    def close(self) -> None:
        self.binding = self.session = None
