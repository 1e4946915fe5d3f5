"""A small recording stand-in for the `tensorrt` module (and for cuda-python's runtime), for tests — held to the
real API surface recorded from the TensorRT bindings wheels (tests/data/tensorrt_surface/, made by
scripts/record_trt_surface.py).

TensorRT cannot be installed on the test machines, so the builder and runtime are driven against this
module, injected as `sys.modules["tensorrt"]`. For the version under test it loads the recorded surface (the
exact version, else the nearest recorded one of the same major: the highest ≤ it, else the lowest above) and:

- every enum (BuilderFlag, NetworkDefinitionCreationFlag, MemoryPoolType, DeviceType, TensorIOMode, DataType,
  ILogger.Severity) is built from the recording: exactly the real members with the real values, nothing else;
- every public name the fake defines — module names, methods, properties, class values — must exist in the
  recording (else `FakeSurfaceError` when the fake is made), properties writable only where the real ones are;
- every method call is bound against the recorded pybind11 overloads: a positional count or keyword name that
  no overload of that version accepts raises TypeError, as the real bindings do; a read of a name the version
  lacks raises AttributeError; setting a public attribute that is not a writable real property raises.

Behaviour: the parser reads the real ONNX graph (inputs/outputs, symbolic dims → -1); the builder checks the
profile against the inputs, refuses precision builder flags on a strongly typed network, runs a fake progress
(nested phases) through the monitor, adds entries to the timing cache, and returns a "plan" (JSON behind a magic
prefix) that `Runtime` deserializes into an engine whose I/O matches the ONNX; executing it runs the ONNX in
ONNX Runtime on the memory behind the tensor addresses. Every call is recorded in `module.calls` as
(name, args). Test knobs (not TensorRT names): `calls`, `parse_errors` (list of dicts), `fail_build` (bool),
`build_step_seconds` (a pause per tactic step, for tests that stop a build), `num_dla_cores`, `engines`, `surface`.

Runtime rules (`IExecutionContext`'s docstring) are enforced too; under the emulated CUDA runtime
(tests/emulated_cuda.py, attached as `module._emulator`) an enqueue is deferred work on its stream.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import json
import re
import time
import types
import weakref
from pathlib import Path

import numpy as np


def _tests_dir() -> Path:
    try:
        return Path(__file__).resolve().parent
    except NameError:  # executed from source by a checker (trt_api_check): find this file on sys.path
        import sys

        return next(Path(p).resolve() for p in sys.path if (Path(p) / "fake_tensorrt.py").is_file())


SURFACE_DIR = _tests_dir() / "data" / "tensorrt_surface"
KNOBS = ("calls", "parse_errors", "fail_build", "build_step_seconds", "num_dla_cores", "engines", "surface")


class FakeSurfaceError(AssertionError):
    """The stand-in defines something the recorded TensorRT surface of its version does not have."""


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(text))[:4])


def recorded_versions() -> list[str]:
    """The TensorRT versions whose surface is recorded, oldest first."""
    names = [p.name[len("tensorrt-"):-len(".json")] for p in SURFACE_DIR.glob("tensorrt-*.json")]
    return sorted(names, key=_version_key)


@functools.cache
def _read_surface(recorded: str) -> dict:
    return json.loads((SURFACE_DIR / f"tensorrt-{recorded}.json").read_text())


def surface_for(version: str) -> dict:
    """The recorded surface that stands for TensorRT `version` (see the module docstring)."""
    want = _version_key(version)
    same = [v for v in recorded_versions() if _version_key(v)[0] == want[0]]
    if not same:
        raise FakeSurfaceError(f"no TensorRT {want[0]}.x surface recorded in {SURFACE_DIR} "
                               "(run scripts/record_trt_surface.py)")
    exact = [v for v in same if _version_key(v)[: len(want)] == want or _version_key(v) == want[:3]]
    below = [v for v in same if _version_key(v) <= want]
    pick = exact[0] if exact else (below[-1] if below else same[0])
    return _read_surface(pick)


def accepts(overloads: list, npos: int, keywords) -> bool:
    """Does one of the recorded overloads take `npos` positional arguments plus these keyword names?"""
    for params in overloads:
        named = [p for p in params if not p[2]]
        names = [p[0] for p in named]
        star, starstar = any(p[2] == "*" for p in params), any(p[2] == "**" for p in params)
        if npos > len(names) and not star:
            continue
        given = set(names[:npos])
        if any(k in given for k in keywords) or (any(k not in names for k in keywords) and not starstar):
            continue
        if all(p[1] or p[0] in given or p[0] in keywords for p in named):
            return True
    return False


def _signature_text(overloads: list) -> str:
    return " | ".join("(" + ", ".join(p[2] + p[0] + ("=…" if p[1] else "") for p in o) + ")" for o in overloads)


def _checked(func, owner: str, name: str, overloads: list, version: str):
    @functools.wraps(func)
    def call(self, *args, **kwargs):
        if not accepts(overloads, len(args), kwargs):
            raise TypeError(f"{owner}.{name}(): incompatible function arguments for TensorRT {version}: "
                            f"{len(args)} positional, keywords {sorted(kwargs)}; "
                            f"accepted: {_signature_text(overloads)}")
        return func(self, *args, **kwargs)
    return call


def _guarded_setattr(cls: type, owner: str, real: dict, version: str):
    writable = {k for k, w in real.get("properties", {}).items() if w}

    def __setattr__(self, name, value):  # noqa: N807 - Python subclasses (a project's ILogger) may add attributes
        if type(self) is cls and not name.startswith("_") and name not in writable:
            raise AttributeError(f"{owner}.{name} is not a writable attribute in TensorRT {version}")
        object.__setattr__(self, name, value)
    return __setattr__


def conform(cls: type, real: dict, owner: str, version: str, optional: tuple[str, ...] = ()) -> type:
    """Hold a fake class to its recorded real class: unknown public names raise FakeSurfaceError (names in
    `optional` are version-dependent and simply removed when this version lacks them), methods are wrapped with
    the recorded overloads, public attribute writes are limited to the real writable properties."""
    if real.get("kind") != "class":
        raise FakeSurfaceError(f"fake {owner}: TensorRT {version} has no class {owner}")
    methods = {**real.get("methods", {}), **real.get("static", {})}
    for name, value in list(vars(cls).items()):
        if name.startswith("_") and name != "__init__":
            continue
        known = (name in methods or name in real.get("properties", {}) or name in real.get("values", {})
                 or name in real.get("classes", {}))
        if not known:
            if name in optional:
                delattr(cls, name)
                continue
            raise FakeSurfaceError(f"fake {owner}.{name}: TensorRT {version} has no {owner}.{name}")
        if isinstance(value, property):
            if value.fset is not None and not real["properties"].get(name, False):
                raise FakeSurfaceError(f"fake {owner}.{name} is writable; in TensorRT {version} it is read-only")
            if name not in real.get("properties", {}):
                raise FakeSurfaceError(f"fake {owner}.{name} is a property; in TensorRT {version} it is not")
        elif callable(value) and not isinstance(value, type) and name in methods:
            if name == "__init__" and not methods[name]:
                continue  # TensorRT hands these objects out (no Python constructor); the fake builds them inside
            setattr(cls, name, _checked(value, owner, name, methods[name], version))
    if "__setattr__" not in vars(cls):
        cls.__setattr__ = _guarded_setattr(cls, owner, real, version)
    return cls


class _FakeModule(types.ModuleType):
    def __getattr__(self, name):
        raise AttributeError(f"module 'tensorrt' (TensorRT {self.__dict__.get('__version__')}, recorded surface) "
                             f"has no attribute {name!r}")


PLAN_MAGIC = b"FAKEPLAN\n"
CACHE_MAGIC = b"FAKE-TIMING-CACHE\n"


class Dims(tuple):
    """trt.Dims stand-in: a tuple of ints."""


def make_fake_tensorrt(version: str = "10.3.0.30", *, num_dla_cores: int = 0) -> types.ModuleType:
    surface = surface_for(version)
    real = surface["names"]
    trt = _FakeModule("tensorrt")
    trt.__version__ = version
    major = _version_key(version)[0]
    trt.calls = []
    trt.parse_errors = []
    trt.fail_build = False
    trt.build_step_seconds = 0.0
    trt.num_dla_cores = num_dla_cores
    trt.engines = {}          # id → onnx path of plans built in this module (for execution)
    trt.surface = surface     # the recorded surface this fake stands for

    def record(name, *args):
        trt.calls.append((name, args))

    def real_enum(name: str, spec: dict | None = None) -> type[enum.IntEnum]:
        spec = spec or real[name]
        if spec.get("kind") != "enum":
            raise FakeSurfaceError(f"TensorRT {version} has no enum {name}")
        return enum.IntEnum(name, sorted(spec["members"].items(), key=lambda kv: kv[1]))

    # ----------------------------------------------------------------------------------------- enums
    Severity = real_enum("Severity", real["ILogger"]["classes"]["Severity"])

    class ILogger:
        def __init__(self) -> None:
            self._fake_initialised = True

        def log(self, severity, msg):  # pragma: no cover - overridden
            raise NotImplementedError

    ILogger.Severity = Severity
    for _name in real["ILogger"].get("values", {}):       # ILogger.ERROR etc. (= ILogger.Severity.ERROR)
        setattr(ILogger, _name, Severity[_name])

    class Logger(ILogger):
        def __init__(self, min_severity=Severity.WARNING) -> None:
            super().__init__()
            self.min_severity = min_severity
            self._messages = []

        def log(self, severity, msg):
            self._messages.append((severity, msg))

    NetworkDefinitionCreationFlag = real_enum("NetworkDefinitionCreationFlag")
    BuilderFlag = real_enum("BuilderFlag")
    MemoryPoolType = real_enum("MemoryPoolType")
    DeviceType = real_enum("DeviceType")
    TensorIOMode = real_enum("TensorIOMode")
    DataType = real_enum("DataType")
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
            self._name, self._shape, self._dtype = name, Dims(shape), dtype

        name = property(lambda self: self._name)
        shape = property(lambda self: self._shape)
        dtype = property(lambda self: self._dtype)   # read-only in 11.x (strongly typed), writable in 10.x

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self._flags = flags
            self._inputs: list[ITensor] = []
            self._outputs: list[ITensor] = []
            self._onnx_path = None

        @property
        def flags(self) -> int:
            return self._flags

        def get_flag(self, flag) -> bool:
            return bool(self._flags & (1 << int(flag)))

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
            self._network = network
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
                    self._network._inputs.append(ITensor(vi.name, dims(vi), _onnx_dtype(vi.type.tensor_type.elem_type)))
            for vi in proto.graph.output:
                self._network._outputs.append(ITensor(vi.name, dims(vi), _onnx_dtype(vi.type.tensor_type.elem_type)))
            self._network._onnx_path = path
            return True

    # ------------------------------------------------------------------------------ config, profile
    class IOptimizationProfile:
        def __init__(self) -> None:
            self._shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's parameter names
            record("IOptimizationProfile.set_shape", input, tuple(min), tuple(opt), tuple(max))
            self._shapes[input] = (Dims(min), Dims(opt), Dims(max))

        def get_shape(self, input: str):  # noqa: A002
            return list(self._shapes[input])

    class ITimingCache:
        def __init__(self, entries: int, valid: bool = True) -> None:
            self._entries, self._valid = entries, valid

        def serialize(self) -> IHostMemory:
            return IHostMemory(CACHE_MAGIC + json.dumps({"version": version, "entries": self._entries}).encode())

        def combine(self, input_cache, ignore_mismatch: bool) -> bool:
            self._entries += input_cache._entries
            return True

        def reset(self) -> bool:
            self._entries = 0
            return True

    class IBuilderConfig:
        _recorded = ("default_device_type", "DLA_core", "progress_monitor")

        def __init__(self) -> None:
            object.__setattr__(self, "_flags_set", set())
            object.__setattr__(self, "_pool_limits", {})
            object.__setattr__(self, "_profiles", [])
            object.__setattr__(self, "_timing_cache", None)
            object.__setattr__(self, "default_device_type", DeviceType.GPU)
            object.__setattr__(self, "DLA_core", -1)
            object.__setattr__(self, "progress_monitor", None)

        def __setattr__(self, name, value) -> None:
            if name not in self._recorded:
                raise AttributeError(f"IBuilderConfig has no attribute {name!r} (fake: only {self._recorded})")
            if name == "progress_monitor" and value is not None:
                assert isinstance(value, IProgressMonitor) and getattr(value, "_fake_initialised", False), \
                    "a progress monitor must subclass IProgressMonitor and call its __init__"
            record(f"IBuilderConfig.{name}=", value)
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            record("IBuilderConfig.set_memory_pool_limit", pool, pool_size)
            assert isinstance(pool, MemoryPoolType)
            self._pool_limits[pool] = pool_size

        def get_memory_pool_limit(self, pool) -> int:
            return self._pool_limits.get(pool, 0)

        def set_flag(self, flag) -> None:
            record("IBuilderConfig.set_flag", flag)
            assert isinstance(flag, BuilderFlag)
            self._flags_set.add(flag)

        def get_flag(self, flag) -> bool:
            return flag in self._flags_set

        def clear_flag(self, flag) -> None:
            self._flags_set.discard(flag)

        def add_optimization_profile(self, profile) -> int:
            record("IBuilderConfig.add_optimization_profile", profile)
            self._profiles.append(profile)
            return len(self._profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._profiles)

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
            record("IBuilderConfig.set_timing_cache", cache._entries, cache._valid, ignore_mismatch)
            if not cache._valid and not ignore_mismatch:
                return False
            object.__setattr__(self, "_timing_cache", cache)
            return True

        def get_timing_cache(self) -> ITimingCache:
            return self._timing_cache

    # -------------------------------------------------------------------------------------- builder
    class Builder:
        def __init__(self, logger: ILogger) -> None:
            assert isinstance(logger, ILogger) and getattr(logger, "_fake_initialised", False), \
                "the logger must subclass ILogger and call its __init__"
            record("Builder", logger)
            self._logger = logger

        @property
        def logger(self) -> ILogger:
            return self._logger

        @property
        def num_DLA_cores(self) -> int:  # noqa: N802 - TensorRT's name
            return trt.num_dla_cores

        @property
        def platform_has_fast_fp16(self) -> bool:  # removed in 11 (optional below)
            return True

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
            self._logger.log(Severity.ERROR, msg)
            return None

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
            record("Builder.build_serialized_network", network, config)
            strongly_typed = major >= 11 or network.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            precision_flags = {f for f in config._flags_set if f.name in ("FP16", "INT8", "BF16", "FP8")}
            if strongly_typed and precision_flags:
                return self._fail("precision builder flags are not allowed on a strongly typed network")
            if trt.fail_build:
                return self._fail("fake builder failure: out of memory")
            if not network._inputs:
                return self._fail("network has no inputs")
            if not config._profiles:
                return self._fail("no optimization profile")
            for profile in config._profiles:
                for tensor in network._inputs:
                    if tensor.name not in profile._shapes:
                        return self._fail(f"no optimization profile shape for input {tensor.name}")
                    lo, opt, hi = profile._shapes[tensor.name]
                    for i, d in enumerate(tensor.shape):
                        if not lo[i] <= opt[i] <= hi[i] or (d != -1 and not lo[i] == opt[i] == hi[i] == d):
                            return self._fail(f"profile shape of {tensor.name} does not fit {tuple(tensor.shape)}")
            profile = config._profiles[0]
            if config.default_device_type == DeviceType.DLA and not 0 <= config.DLA_core < trt.num_dla_cores:
                return self._fail("DLA core out of range")
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                monitor.phase_start("Tactic selection", "Building engine", 3)
                for step in range(3):  # TensorRT's rule: step_complete returning False cancels the build
                    if not monitor.step_complete("Tactic selection", step):
                        return self._fail("build cancelled by the progress monitor")
                    if trt.build_step_seconds:
                        time.sleep(trt.build_step_seconds)
                monitor.phase_finish("Tactic selection")
                monitor.step_complete("Building engine", 0)
                monitor.step_complete("Building engine", 1)
                monitor.phase_finish("Building engine")
            if config._timing_cache is not None:
                config._timing_cache._entries += 3
            plan = {
                "version": version, "onnx_path": network._onnx_path, "network_flags": network._flags,
                "builder_flags": sorted(f.name for f in config._flags_set),
                "dla_core": config.DLA_core if config.default_device_type == DeviceType.DLA else None,
                "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": int(t.dtype),
                            "profile": [list(s) for s in profile._shapes[t.name]],
                            "profiles": [[list(s) for s in p._shapes[t.name]] for p in config._profiles]}
                           for t in network._inputs],
                "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": int(t.dtype)} for t in network._outputs],
            }
            return IHostMemory(PLAN_MAGIC + json.dumps(plan).encode())

    # -------------------------------------------------------------------------------------- runtime
    ExecutionContextAllocationStrategy = real_enum("ExecutionContextAllocationStrategy")
    SCRATCH_BYTES = 1 << 16          # device memory an execution context needs (per profile)
    ALIGNMENT = 256                  # I/O and scratch addresses: TensorRT requires 256-byte alignment

    class IExecutionContext:
        """Held to TensorRT's runtime rules (docs: IExecutionContext, "CUDA Graphs", "Optimization Profiles"):
        one optimization profile per context of a dynamic-shape engine (profile 0 goes to the first context,
        others need `set_optimization_profile_async` with an unused index); I/O addresses 256-byte aligned;
        USER_MANAGED contexts run only with device memory set (aligned, large enough); an output whose shape
        stays data-dependent (-1) after the input shapes are set needs an output allocator; an enqueue
        inside a CUDA graph capture fails unless the context ran eagerly since its last input shape change,
        and a captured enqueue replayed after the context's shapes changed is an error. Under the emulated
        CUDA runtime (`trt._emulator`) an enqueue is deferred work on its stream that reads the inputs, writes
        the outputs and writes the context's scratch memory (real memory for USER_MANAGED contexts, a
        synthetic range otherwise), so two streams sharing a context race visibly."""

        def __init__(self, engine, strategy) -> None:
            self._engine = engine
            self._strategy = strategy
            self._shapes: dict[str, Dims] = {}
            self._addresses: dict[str, int] = {}
            self._session = None
            self._memory: tuple[int, int] | None = None
            self._dirty = True               # input shapes changed since the last eager enqueue
            self._profile = engine._claim(self, 0) if engine._claimable(0) else -1
            self._scratch = None

        def __del__(self) -> None:
            eng = self.__dict__.get("_engine")
            if eng is not None:
                eng._release(self)

        @property
        def engine(self):
            return self._engine

        @property
        def active_optimization_profile(self) -> int:
            return self._profile

        def _log(self, msg: str) -> bool:
            logger = self._engine._logger
            if logger is not None:
                logger.log(Severity.ERROR, msg)
            return False

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            record("IExecutionContext.set_optimization_profile_async", profile_index, stream_handle)
            eng = self._engine
            if not 0 <= profile_index < eng.num_optimization_profiles:
                return self._log(f"profile {profile_index} out of range")
            if not eng._claimable(profile_index, self):
                return self._log(f"Profile {profile_index} has been chosen by another IExecutionContext. Use another "
                                 "profileIndex or destroy the IExecutionContext that use this profile.")
            eng._release(self)
            self._profile = eng._claim(self, profile_index)
            self._shapes.clear()
            self._dirty = True
            return True

        def set_device_memory(self, memory: int, size: int) -> None:
            record("IExecutionContext.set_device_memory", memory, size)
            need = self._engine.get_device_memory_size_for_profile_v2(max(self._profile, 0))
            if int(memory) % ALIGNMENT or int(size) < need:
                self._log(f"setDeviceMemory: {size} bytes at {int(memory):#x}; needs {need}, 256-byte aligned")
                return
            self._memory = (int(memory), int(size))

        def set_input_shape(self, name: str, shape) -> bool:
            record("IExecutionContext.set_input_shape", name, tuple(shape))
            eng = self._engine
            if eng._dynamic and self._profile < 0:
                return self._log("no optimization profile set for this context (each context of a dynamic-shape "
                                 "engine needs its own)")
            spec = eng._io[name]
            lo, _, hi = spec["profiles"][max(self._profile, 0)]
            if len(shape) != len(lo) or any(not lo[i] <= shape[i] <= hi[i] for i in range(len(lo))):
                return False
            if self._shapes.get(name) != Dims(shape):
                self._dirty = True
            self._shapes[name] = Dims(shape)
            return True

        def get_tensor_shape(self, name: str) -> Dims:
            spec = self._engine._io[name]
            if spec["mode"] == TensorIOMode.INPUT:
                return self._shapes.get(name, Dims(spec["shape"]))
            batch = next(iter(self._shapes.values()))[0] if self._shapes else -1
            return Dims([batch if d == -1 and i == 0 else d for i, d in enumerate(spec["shape"])])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            record("IExecutionContext.set_tensor_address", name, memory)
            if name not in self._engine._io:
                return False
            if int(memory) % ALIGNMENT:
                return self._log(f"setTensorAddress: {name} at {int(memory):#x} is not 256-byte aligned")
            self._addresses[name] = int(memory)
            return True

        def _nbytes(self, name: str) -> int:
            shape = self.get_tensor_shape(name)
            return int(np.prod(shape)) * np.dtype(nptype(DataType(self._engine._io[name]["dtype"]))).itemsize

        def _run(self, shapes: dict, addresses: dict) -> None:
            """The inference itself: the ONNX on ONNX Runtime over the memory behind the addresses."""
            import onnxruntime as ort

            eng = self._engine
            if self._session is None:
                self._session = ort.InferenceSession(eng._plan["onnx_path"], providers=["CPUExecutionProvider"])
            feeds = {}
            for name in eng._inputs:
                shape = tuple(shapes[name])
                dtype = np.dtype(nptype(DataType(eng._io[name]["dtype"])))
                nbytes = int(np.prod(shape)) * dtype.itemsize
                raw = (ctypes.c_char * nbytes).from_address(addresses[name])
                feeds[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
            outputs = self._session.run(eng._outputs, feeds)
            for name, value in zip(eng._outputs, outputs):
                value = np.ascontiguousarray(value, dtype=nptype(DataType(eng._io[name]["dtype"])))
                ctypes.memmove(addresses[name], value.ctypes.data, value.nbytes)

        def execute_async_v3(self, stream_handle: int) -> bool:
            record("IExecutionContext.execute_async_v3", stream_handle)
            assert isinstance(stream_handle, int)
            eng = self._engine
            if set(self._addresses) != set(eng._io) or set(self._shapes) != set(eng._inputs):
                return self._log("not every tensor has an address and every input a shape")
            if self._strategy == ExecutionContextAllocationStrategy.USER_MANAGED and self._memory is None:
                return self._log("a USER_MANAGED context needs set_device_memory before enqueueV3")
            for name in eng._outputs:
                if any(d < 0 for d in self.get_tensor_shape(name)):
                    return self._log(f"output {name} has a data-dependent shape: it needs an IOutputAllocator")
            emu = getattr(trt, "_emulator", None)
            shapes, addresses = dict(self._shapes), dict(self._addresses)
            if emu is None:
                self._dirty = False
                self._run(shapes, addresses)
                return True
            capturing = emu.is_capturing(stream_handle)
            if capturing and self._dirty:
                for cap in emu.capturing():
                    cap.invalid = "enqueueV3 captured without an eager enqueue after the last input shape change"
                return self._log("enqueueV3 during CUDA graph capture needs an eager enqueueV3 after the last input "
                                 "shape change (TensorRT's rule)")
            if not capturing:
                self._dirty = False
            if self._memory is not None:
                scratch = self._memory
            else:
                if self._scratch is None:
                    self._scratch = emu.synthetic(SCRATCH_BYTES, f"scratch of context {id(self):#x}")
                scratch = (self._scratch, SCRATCH_BYTES)

            def run():
                if capturing and dict(self._shapes) != shapes:
                    from emulated_cuda import EmulationError

                    raise EmulationError(f"a graph captured with shapes {shapes} replayed after the context's input "
                                         f"shapes changed to {dict(self._shapes)}")
                self._run(shapes, addresses)
            emu.enqueue_engine(stream_handle, f"TensorRT enqueueV3 {Path(eng._plan['onnx_path']).name} "
                               f"context {id(self):#x}", run,
                               reads=[(addresses[n], self._nbytes(n)) for n in eng._inputs],
                               writes=[(addresses[n], self._nbytes(n)) for n in eng._outputs] + [scratch])
            return True

    class ICudaEngine:
        def __init__(self, plan: dict, logger=None) -> None:
            self._plan = plan
            self._logger = logger
            self._inputs = [t["name"] for t in plan["inputs"]]
            self._outputs = [t["name"] for t in plan["outputs"]]
            self._io = {t["name"]: {**t, "mode": TensorIOMode.INPUT} for t in plan["inputs"]}
            for t in plan["inputs"]:
                self._io[t["name"]].setdefault("profiles", [t["profile"]])
            self._io.update({t["name"]: {**t, "mode": TensorIOMode.OUTPUT} for t in plan["outputs"]})
            self._names = self._inputs + self._outputs
            self._dynamic = any(d < 0 for t in plan["inputs"] for d in t["shape"])
            self._owners: dict[int, weakref.ref] = {}     # profile index -> the context holding it

        def _claimable(self, index: int, ctx=None) -> bool:
            if not self._dynamic:
                return True
            ref = self._owners.get(index)
            owner = ref() if ref is not None else None   # a context the program dropped holds nothing
            return owner is None or owner is ctx

        def _claim(self, ctx, index: int) -> int:
            if self._dynamic:
                self._owners[index] = weakref.ref(ctx)
            return index

        def _release(self, ctx) -> None:
            for k in [k for k, v in self._owners.items() if v() is ctx or v() is None]:
                del self._owners[k]

        @property
        def _live_contexts(self) -> int:
            return sum(1 for v in self._owners.values() if v() is not None)

        @property
        def num_io_tensors(self) -> int:
            return len(self._names)

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._io[self._inputs[0]]["profiles"]) if self._inputs else 1

        @property
        def device_memory_size_v2(self) -> int:
            return SCRATCH_BYTES

        def get_device_memory_size_for_profile_v2(self, profile_index: int) -> int:
            return SCRATCH_BYTES

        def get_tensor_name(self, index: int) -> str:
            return self._names[index]

        def get_tensor_mode(self, name: str):
            return self._io[name]["mode"] if name in self._io else TensorIOMode.NONE

        def get_tensor_shape(self, name: str) -> Dims:
            return Dims(self._io[name]["shape"])

        def get_tensor_dtype(self, name: str):
            return DataType(self._io[name]["dtype"])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
            assert 0 <= profile_index < self.num_optimization_profiles
            return [Dims(s) for s in self._io[name]["profiles"][profile_index]]

        def create_execution_context(self, strategy=None) -> IExecutionContext:
            strategy = ExecutionContextAllocationStrategy.STATIC if strategy is None else strategy
            record("ICudaEngine.create_execution_context", strategy)
            assert isinstance(strategy, ExecutionContextAllocationStrategy)
            return IExecutionContext(self, strategy)

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            assert isinstance(logger, ILogger)
            self._logger = logger

        @property
        def logger(self) -> ILogger:
            return self._logger

        def deserialize_cuda_engine(self, serialized_engine):
            blob = bytes(serialized_engine)
            record("Runtime.deserialize_cuda_engine", len(blob))
            if not blob.startswith(PLAN_MAGIC):
                self._logger.log(Severity.ERROR, "invalid plan: magic tag mismatch")
                return None
            plan = json.loads(blob[len(PLAN_MAGIC):])
            if plan["version"] != version:
                self._logger.log(Severity.ERROR, f"serialized with TensorRT {plan['version']}, this is {version}")
                return None
            return ICudaEngine(plan, self._logger)

    # ------------------------------------------------------------------ held to the recorded surface
    for name in IBuilderConfig._recorded:
        if not real["IBuilderConfig"]["properties"].get(name):
            raise FakeSurfaceError(f"fake IBuilderConfig.{name} is settable; TensorRT {version} has no such writable "
                                   "property")
    optional = {"Builder": ("platform_has_fast_fp16",)}   # version-dependent members: dropped where absent
    for name, value in dict(locals()).items():
        if name.startswith("_") or name in KNOBS or name in ("record", "real_enum", "real", "surface", "version",
                                                               "major", "num_dla_cores", "optional", "trt"):
            continue
        if isinstance(value, type) and issubclass(value, enum.IntEnum):
            if name != "Severity":                        # Severity lives in ILogger only, as in TensorRT
                setattr(trt, name, value)
            continue
        if isinstance(value, type):
            if name not in real:
                raise FakeSurfaceError(f"fake tensorrt.{name}: TensorRT {version} has no such name")
            setattr(trt, name, conform(value, real[name], name, version, optional.get(name, ())))
        elif callable(value):
            if real.get(name, {}).get("kind") != "function":
                raise FakeSurfaceError(f"fake tensorrt.{name}(): TensorRT {version} has no such function")
            setattr(trt, name, value)
    return trt
