"""A small recording stand-in for the `tensorrt` module (and for cuda-python's runtime), for tests.

TensorRT cannot be installed on the test machines, so the builder and runtime are driven against this
module, injected as `sys.modules["tensorrt"]`. It follows the names and signatures of TensorRT's Python API
(10.x and 11.x: `Builder(logger)`, `create_network(flags)`, `OnnxParser(network, logger)`,
`parse_from_file(path)`, `num_errors`/`get_error(i)`, `create_builder_config()`,
`set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)`, `set_flag(BuilderFlag.X)`,
`create_optimization_profile()`/`set_shape(name, min, opt, max)`, `add_optimization_profile(p)`,
`create_timing_cache(blob)`/`set_timing_cache(cache, ignore_mismatch)`/`get_timing_cache().serialize()`,
`default_device_type`/`DLA_core`, `progress_monitor` (an `IProgressMonitor` subclass),
`build_serialized_network(network, config)`, `Runtime(logger).deserialize_cuda_engine(blob)`, the
name-based engine/context API) and records every call in `module.calls` as (name, args) tuples.

What it does: the parser reads the real ONNX graph (inputs/outputs, symbolic dims → -1); the builder
checks the profile against the inputs, refuses precision builder flags on a strongly typed network, runs
a fake progress (nested phases) through the monitor, adds entries to the timing cache, and returns a
"plan" (JSON behind a magic prefix) that `Runtime` deserializes into an engine whose I/O matches the ONNX;
executing it runs the ONNX in ONNX Runtime on the memory behind the tensor addresses. Version-dependent
surface: 11.x has no BuilderFlag.FP16/INT8 and no EXPLICIT_BATCH; only 10.x has platform_has_fast_fp16.
Knobs: `parse_errors` (list of dicts), `fail_build` (bool), `num_dla_cores`.

`make_fake_cudart()` is the matching stand-in for `cuda.bindings.runtime`: "device" memory is host memory
(numpy buffers), so addresses can be handed to the fake engine and copied with ctypes.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types

import numpy as np

PLAN_MAGIC = b"FAKEPLAN\n"
CACHE_MAGIC = b"FAKE-TIMING-CACHE\n"


class Dims(tuple):
    """trt.Dims stand-in: a tuple of ints."""


def make_fake_tensorrt(version: str = "10.3.0.30", *, num_dla_cores: int = 0) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major, minor = (int(v) for v in version.split(".")[:2])
    trt.calls = []
    trt.parse_errors = []
    trt.fail_build = False
    trt.num_dla_cores = num_dla_cores
    trt.engines = {}          # id → onnx path of plans built in this module (for execution)

    def record(name, *args):
        trt.calls.append((name, args))

    # ----------------------------------------------------------------------------------------- enums
    class _Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    Severity = _Severity

    class ILogger:
        Severity = _Severity
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (_Severity.INTERNAL_ERROR, _Severity.ERROR, _Severity.WARNING,
                                                         _Severity.INFO, _Severity.VERBOSE)

        def __init__(self) -> None:
            self._fake_initialised = True

        def log(self, severity, msg):  # pragma: no cover - overridden
            raise NotImplementedError

    class Logger(ILogger):
        def __init__(self, min_severity=Severity.WARNING) -> None:
            super().__init__()
            self.min_severity = min_severity
            self.messages = []

        def log(self, severity, msg):
            self.messages.append((severity, msg))

    flags = {"STRONGLY_TYPED": 1, "PREFER_AOT_PYTHON_PLUGINS": 2, "PREFER_JIT_PYTHON_PLUGINS": 3}
    if major < 11:
        flags["EXPLICIT_BATCH"] = 0
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags)
    builder_flags = {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
                     "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8}
    if major < 11:  # precision flags: deprecated in 10.12, removed in 11
        builder_flags.update({"FP16": 0, "INT8": 1, "BF16": 17, "FP8": 13, "OBEY_PRECISION_CONSTRAINTS": 10,
                              "PREFER_PRECISION_CONSTRAINTS": 11})
    BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2,
                                                     "DLA_GLOBAL_DRAM": 3, "TACTIC_DRAM": 4})
    DeviceType = enum.IntEnum("DeviceType", {"GPU": 0, "DLA": 1})
    TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5,
                                         "INT64": 8})
    _np = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
           DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}

    def nptype(trt_type):
        return _np[trt_type]

    def _onnx_dtype(elem_type: int):
        from onnx import TensorProto

        return {TensorProto.FLOAT: DataType.FLOAT, TensorProto.FLOAT16: DataType.HALF,
                TensorProto.INT64: DataType.INT64, TensorProto.INT32: DataType.INT32,
                TensorProto.BOOL: DataType.BOOL, TensorProto.UINT8: DataType.UINT8}.get(elem_type, DataType.FLOAT)

    # ------------------------------------------------------------------------------------ host memory
    class IHostMemory(bytes):
        """Supports the buffer protocol like the real IHostMemory (memoryview, bytes(), file.write)."""

        @property
        def nbytes(self) -> int:
            return len(self)

    class IProgressMonitor:
        def __init__(self) -> None:
            self._fake_initialised = True

    # -------------------------------------------------------------------------------------- network
    class ITensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, Dims(shape), dtype

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []
            self.onnx_path = None

        def get_flag(self, flag) -> bool:
            return bool(self.flags & (1 << int(flag)))

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_input(self, index: int) -> ITensor:
            return self._inputs[index]

        def get_output(self, index: int) -> ITensor:
            return self._outputs[index]

    class ParserError:
        def __init__(self, spec: dict) -> None:
            self._spec = spec

        def code(self):
            return self._spec.get("code", 8)

        def desc(self) -> str:
            return self._spec["desc"]

        def node(self) -> int:
            return self._spec.get("node", -1)

        def node_name(self) -> str:
            return self._spec.get("node_name", "")

        def node_operator(self) -> str:
            return self._spec.get("node_operator", "")

        def file(self) -> str:
            return "ModelImporter.cpp"

        def line(self) -> int:
            return 0

        def func(self) -> str:
            return "parseGraph"

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
            assert isinstance(network, INetworkDefinition) and isinstance(logger, ILogger)
            record("OnnxParser", network, logger)
            self.network = network
            self._errors: list[ParserError] = []

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> ParserError:
            return self._errors[index]

        def clear_errors(self) -> None:
            self._errors = []

        def parse_from_file(self, model: str) -> bool:
            record("OnnxParser.parse_from_file", model)
            assert isinstance(model, str)
            import onnx

            return self._load(onnx.load(model, load_external_data=False), model)

        def parse(self, model, path: str | None = None) -> bool:
            record("OnnxParser.parse", len(model), path)
            import onnx

            return self._load(onnx.load_from_string(bytes(model)), path)

        def _load(self, proto, path) -> bool:
            if trt.parse_errors:
                self._errors = [ParserError(e) for e in trt.parse_errors]
                return False
            inits = {i.name for i in proto.graph.initializer}

            def dims(vi):
                return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]

            for vi in proto.graph.input:
                if vi.name not in inits:
                    self.network._inputs.append(ITensor(vi.name, dims(vi), _onnx_dtype(vi.type.tensor_type.elem_type)))
            for vi in proto.graph.output:
                self.network._outputs.append(ITensor(vi.name, dims(vi), _onnx_dtype(vi.type.tensor_type.elem_type)))
            self.network.onnx_path = path
            return True

    # ------------------------------------------------------------------------------ config, profile
    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's parameter names
            record("IOptimizationProfile.set_shape", input, tuple(min), tuple(opt), tuple(max))
            self.shapes[input] = (Dims(min), Dims(opt), Dims(max))

        def get_shape(self, input: str):  # noqa: A002
            return list(self.shapes[input])

    class ITimingCache:
        def __init__(self, entries: int, valid: bool = True) -> None:
            self.entries, self.valid = entries, valid

        def serialize(self) -> IHostMemory:
            return IHostMemory(CACHE_MAGIC + json.dumps({"version": version, "entries": self.entries}).encode())

        def combine(self, input_cache, ignore_mismatch: bool) -> bool:
            self.entries += input_cache.entries
            return True

        def reset(self) -> bool:
            self.entries = 0
            return True

    class IBuilderConfig:
        _recorded = ("default_device_type", "DLA_core", "progress_monitor")

        def __init__(self) -> None:
            object.__setattr__(self, "flags_set", set())
            object.__setattr__(self, "pool_limits", {})
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "timing_cache", None)
            object.__setattr__(self, "default_device_type", DeviceType.GPU)
            object.__setattr__(self, "DLA_core", -1)
            object.__setattr__(self, "progress_monitor", None)

        def __setattr__(self, name, value) -> None:
            if name not in self._recorded:
                raise AttributeError(f"IBuilderConfig has no attribute {name!r}")
            if name == "progress_monitor" and value is not None:
                assert isinstance(value, IProgressMonitor) and getattr(value, "_fake_initialised", False), \
                    "a progress monitor must subclass IProgressMonitor and call its __init__"
            record(f"IBuilderConfig.{name}=", value)
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            record("IBuilderConfig.set_memory_pool_limit", pool, pool_size)
            assert isinstance(pool, MemoryPoolType)
            self.pool_limits[pool] = pool_size

        def get_memory_pool_limit(self, pool) -> int:
            return self.pool_limits.get(pool, 0)

        def set_flag(self, flag) -> None:
            record("IBuilderConfig.set_flag", flag)
            assert isinstance(flag, BuilderFlag)
            self.flags_set.add(flag)

        def get_flag(self, flag) -> bool:
            return flag in self.flags_set

        def clear_flag(self, flag) -> None:
            self.flags_set.discard(flag)

        def add_optimization_profile(self, profile) -> int:
            record("IBuilderConfig.add_optimization_profile", profile)
            self.profiles.append(profile)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
            blob = bytes(serialized_timing_cache)
            record("IBuilderConfig.create_timing_cache", blob)
            if not blob:
                return ITimingCache(0)
            if not blob.startswith(CACHE_MAGIC):
                return ITimingCache(0, valid=False)
            data = json.loads(blob[len(CACHE_MAGIC):])
            return ITimingCache(data["entries"], valid=data["version"] == version)

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            record("IBuilderConfig.set_timing_cache", cache.entries, cache.valid, ignore_mismatch)
            if not cache.valid and not ignore_mismatch:
                return False
            object.__setattr__(self, "timing_cache", cache)
            return True

        def get_timing_cache(self) -> ITimingCache:
            return self.timing_cache

    # -------------------------------------------------------------------------------------- builder
    class Builder:
        def __init__(self, logger: ILogger) -> None:
            assert isinstance(logger, ILogger) and getattr(logger, "_fake_initialised", False), \
                "the logger must subclass ILogger and call its __init__"
            record("Builder", logger)
            self.logger = logger

        @property
        def num_DLA_cores(self) -> int:  # noqa: N802 - TensorRT's name
            return trt.num_dla_cores

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            record("Builder.create_network", flags)
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            record("Builder.create_builder_config")
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            record("Builder.create_optimization_profile")
            return IOptimizationProfile()

        def _fail(self, msg: str):
            self.logger.log(Severity.ERROR, msg)
            return None

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
            record("Builder.build_serialized_network", network, config)
            strongly_typed = major >= 11 or network.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            precision_flags = {f for f in config.flags_set if f.name in ("FP16", "INT8", "BF16", "FP8")}
            if strongly_typed and precision_flags:
                return self._fail("precision builder flags are not allowed on a strongly typed network")
            if trt.fail_build:
                return self._fail("fake builder failure: out of memory")
            if not network._inputs:
                return self._fail("network has no inputs")
            profile = config.profiles[0] if config.profiles else None
            for tensor in network._inputs:
                if profile is None or tensor.name not in profile.shapes:
                    return self._fail(f"no optimization profile shape for input {tensor.name}")
                lo, opt, hi = profile.shapes[tensor.name]
                for i, d in enumerate(tensor.shape):
                    if not lo[i] <= opt[i] <= hi[i] or (d != -1 and not lo[i] == opt[i] == hi[i] == d):
                        return self._fail(f"profile shape of {tensor.name} does not fit {tuple(tensor.shape)}")
            if config.default_device_type == DeviceType.DLA and not 0 <= config.DLA_core < trt.num_dla_cores:
                return self._fail("DLA core out of range")
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                monitor.phase_start("Tactic selection", "Building engine", 3)
                for step in range(3):
                    monitor.step_complete("Tactic selection", step)
                monitor.phase_finish("Tactic selection")
                monitor.step_complete("Building engine", 0)
                monitor.step_complete("Building engine", 1)
                monitor.phase_finish("Building engine")
            if config.timing_cache is not None:
                config.timing_cache.entries += 3
            plan = {
                "version": version, "onnx_path": network.onnx_path, "network_flags": network.flags,
                "builder_flags": sorted(f.name for f in config.flags_set),
                "dla_core": config.DLA_core if config.default_device_type == DeviceType.DLA else None,
                "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": int(t.dtype),
                            "profile": [list(s) for s in profile.shapes[t.name]]} for t in network._inputs],
                "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": int(t.dtype)} for t in network._outputs],
            }
            return IHostMemory(PLAN_MAGIC + json.dumps(plan).encode())

    if major < 11:
        Builder.platform_has_fast_fp16 = property(lambda self: True)  # removed in 11

    # -------------------------------------------------------------------------------------- runtime
    class IExecutionContext:
        def __init__(self, engine) -> None:
            self.engine = engine
            self.shapes: dict[str, Dims] = {}
            self.addresses: dict[str, int] = {}
            self._session = None

        def set_input_shape(self, name: str, shape) -> bool:
            record("IExecutionContext.set_input_shape", name, tuple(shape))
            spec = self.engine._io[name]
            lo, _, hi = spec["profile"]
            if len(shape) != len(lo) or any(not lo[i] <= shape[i] <= hi[i] for i in range(len(lo))):
                return False
            self.shapes[name] = Dims(shape)
            return True

        def get_tensor_shape(self, name: str) -> Dims:
            spec = self.engine._io[name]
            if spec["mode"] == TensorIOMode.INPUT:
                return self.shapes.get(name, Dims(spec["shape"]))
            batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
            return Dims([batch if d == -1 and i == 0 else d for i, d in enumerate(spec["shape"])])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            record("IExecutionContext.set_tensor_address", name, memory)
            if name not in self.engine._io:
                return False
            self.addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            record("IExecutionContext.execute_async_v3", stream_handle)
            assert isinstance(stream_handle, int)
            eng = self.engine
            if set(self.addresses) != set(eng._io) or set(self.shapes) != set(eng._inputs):
                return False
            import onnxruntime as ort

            if self._session is None:
                self._session = ort.InferenceSession(eng._plan["onnx_path"], providers=["CPUExecutionProvider"])
            feeds = {}
            for name in eng._inputs:
                shape = tuple(self.shapes[name])
                dtype = np.dtype(nptype(DataType(eng._io[name]["dtype"])))
                nbytes = int(np.prod(shape)) * dtype.itemsize
                raw = (ctypes.c_char * nbytes).from_address(self.addresses[name])
                feeds[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
            outputs = self._session.run(eng._outputs, feeds)
            for name, value in zip(eng._outputs, outputs):
                value = np.ascontiguousarray(value, dtype=nptype(DataType(eng._io[name]["dtype"])))
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
            return True

    class ICudaEngine:
        def __init__(self, plan: dict) -> None:
            self._plan = plan
            self._inputs = [t["name"] for t in plan["inputs"]]
            self._outputs = [t["name"] for t in plan["outputs"]]
            self._io = {t["name"]: {**t, "mode": TensorIOMode.INPUT} for t in plan["inputs"]}
            self._io.update({t["name"]: {**t, "mode": TensorIOMode.OUTPUT} for t in plan["outputs"]})
            self._names = self._inputs + self._outputs

        @property
        def num_io_tensors(self) -> int:
            return len(self._names)

        def get_tensor_name(self, index: int) -> str:
            return self._names[index]

        def get_tensor_mode(self, name: str):
            return self._io[name]["mode"] if name in self._io else TensorIOMode.NONE

        def get_tensor_shape(self, name: str) -> Dims:
            return Dims(self._io[name]["shape"])

        def get_tensor_dtype(self, name: str):
            return DataType(self._io[name]["dtype"])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
            assert profile_index == 0
            return [Dims(s) for s in self._io[name]["profile"]]

        def create_execution_context(self) -> IExecutionContext:
            record("ICudaEngine.create_execution_context")
            return IExecutionContext(self)

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            assert isinstance(logger, ILogger)
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine):
            blob = bytes(serialized_engine)
            record("Runtime.deserialize_cuda_engine", len(blob))
            if not blob.startswith(PLAN_MAGIC):
                self.logger.log(Severity.ERROR, "invalid plan: magic tag mismatch")
                return None
            plan = json.loads(blob[len(PLAN_MAGIC):])
            if plan["version"] != version:
                self.logger.log(Severity.ERROR, f"serialized with TensorRT {plan['version']}, this is {version}")
                return None
            return ICudaEngine(plan)

    for name, value in dict(locals()).items():
        if isinstance(value, type) or name == "nptype":
            setattr(trt, name, value)
    return trt


def make_fake_cudart(name: str = "FakeGPU", major: int = 8, minor: int = 7) -> types.SimpleNamespace:
    """cuda.bindings.runtime stand-in: every call returns (err, *values); device memory is host memory."""

    class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's name
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToHost = 0
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    ok = cudaError_t.cudaSuccess
    memory: dict[int, np.ndarray] = {}
    calls: list = []
    streams = iter(range(0x1000, 0x2000))

    def cudaMalloc(size):  # noqa: N802
        buf = np.zeros(max(int(size), 1), np.uint8)
        memory[buf.ctypes.data] = buf
        calls.append(("cudaMalloc", size))
        return ok, buf.ctypes.data

    def cudaFree(ptr):  # noqa: N802
        calls.append(("cudaFree", ptr))
        return (ok,) if memory.pop(int(ptr), None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def cudaMemcpyAsync(dst, src, count, kind, stream):  # noqa: N802
        calls.append(("cudaMemcpyAsync", kind, count, stream))
        ctypes.memmove(int(dst), int(src), int(count))
        return (ok,)

    def cudaStreamCreate():  # noqa: N802
        return ok, next(streams)

    def cudaStreamSynchronize(stream):  # noqa: N802
        calls.append(("cudaStreamSynchronize", stream))
        return (ok,)

    def cudaStreamDestroy(stream):  # noqa: N802
        return (ok,)

    def cudaGetDeviceProperties(device):  # noqa: N802
        return ok, types.SimpleNamespace(name=name.encode(), major=major, minor=minor, totalGlobalMem=8 << 30)

    return types.SimpleNamespace(cudaError_t=cudaError_t, cudaMemcpyKind=cudaMemcpyKind, cudaMalloc=cudaMalloc,
                                 cudaFree=cudaFree, cudaMemcpyAsync=cudaMemcpyAsync,
                                 cudaStreamCreate=cudaStreamCreate, cudaStreamSynchronize=cudaStreamSynchronize,
                                 cudaStreamDestroy=cudaStreamDestroy, cudaGetDeviceProperties=cudaGetDeviceProperties,
                                 memory=memory, calls=calls)
