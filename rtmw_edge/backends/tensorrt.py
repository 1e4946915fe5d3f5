"""TensorRT: engine builder (ONNX → cached, versioned engine) and engine runtime. The only module that
imports `tensorrt`, always inside functions, so the rest of the toolkit works without it.

Builder (`build_engine`): parse the ONNX with `OnnxParser.parse_from_file` into a network created with
the flags of the version's build path (`engines.select_build_path`: strongly typed wherever TensorRT has
it, the FP16 builder flag only on 10.0–10.11 for `--fp16`), one optimization profile, workspace limit,
optional DLA core with GPU fallback, a persisted timing cache, a rich progress bar fed by TensorRT's
`IProgressMonitor`; the engine and its manifest are written atomically, and the build is skipped when the
manifest's cache key matches. Runtime (`TensorRTEngine`): the host `Engine` protocol (`run(x)` on numpy
arrays through cuda-python copies) and the GPU `DeviceEngine` protocol (`infer_async` on device pointers:
`set_input_shape`, `set_tensor_address`, `execute_async_v3`). The exact TensorRT calls per version are
listed in docs/tensorrt.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import platform
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__, signals
from ..cuda import runtime as R
from ..engines import (
    DEFAULT_CONTEXTS,
    DEFAULT_WORKSPACE,
    NO_GPU,
    TENSORRT_PIP,
    TIMING_CACHE_NAME,
    BuildPlan,
    EngineError,
    EngineStatus,
    GpuInfo,
    atomic_write_json,
    check_compatible,
    check_dla,
    default_engine_path,
    derive_profiles,
    describe_plan,
    dynamic_profiles,
    engine_status,
    file_sha256,
    format_bytes,
    format_profiles,
    graph_inputs,
    make_manifest,
    manifest_path,
    onnx_precision,
    parse_batch,
    parse_contexts,
    parse_version,
    parse_workspace,
    read_manifest,
    select_build_path,
)
from ..errors import MissingDependencyError, RtmwEdgeError
from ..onnx_meta import read_metadata
from ..outputs import atomic_write_bytes

_JETSON_TRT = "sudo apt install python3-libnvinfer (JetPack 6 ships TensorRT 10.3)"
_X86_TRT = TENSORRT_PIP


def gpu_visible() -> bool:
    """An NVIDIA GPU this process could use: a Jetson, or a /dev/nvidia<N> device node (a container gets one with
    --gpus). A cheap look, without CUDA; `doctor` and `device_available` ask CUDA itself."""
    import glob

    return is_jetson() or bool(glob.glob("/dev/nvidia[0-9]*"))


# ------------------------------------------------------------------------------------- optional imports
def import_tensorrt():
    """The `tensorrt` module, or one clear line saying how to install it (Jetson vs x86) — and, first, that there is
    no GPU when there is none (installing TensorRT would not help then)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: bindings present but libnvinfer missing
        if not gpu_visible():
            raise MissingDependencyError(f"this needs TensorRT: {NO_GPU}") from None
        how = _JETSON_TRT if is_jetson() else _X86_TRT
        raise MissingDependencyError(f"this needs TensorRT, which is not installed or not loadable "
                                     f"({type(exc).__name__}): {how}; `rtmw-edge doctor` shows what is missing"
                                     ) from None
    if not hasattr(trt, "Builder"):
        raise MissingDependencyError("the installed 'tensorrt' package has no TensorRT libraries (bindings only): "
                                     f"{_JETSON_TRT if is_jetson() else _X86_TRT}")
    return trt


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None (never raises)."""
    try:
        return str(import_tensorrt().__version__)
    except Exception:
        return None


def _import_cudart():
    """cuda-python's runtime module (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError("running a TensorRT engine on host arrays needs cuda-python, which is not installed: "
                                 "pip install cuda-python (the 'gpu' extra of rtmw-edge)")


def _ck(result, what: str):
    """Unpack a cuda-python call's (err, *values) tuple; raise one line on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(getattr(err, "value", err)) != 0:
        raise EngineError(f"CUDA error in {what}: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else (values or None)


def is_jetson() -> bool:
    if Path("/etc/nv_tegra_release").exists():
        return True
    try:
        return "jetson" in Path("/proc/device-tree/model").read_text(errors="ignore").lower()
    except OSError:
        return False


def gpu_identity(device: int = 0) -> GpuInfo | None:
    """Name and compute capability of CUDA device `device` (cuda-python, else nvidia-smi); None if unknown."""
    try:
        cudart = _import_cudart()
        props = _ck(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(name.split("\x00")[0].strip(), f"{props.major}.{props.minor}")
    except Exception:
        pass
    rows = _nvidia_smi(["name", "compute_cap"])
    if rows and len(rows) > device and len(rows[device]) == 2:
        return GpuInfo(rows[device][0], rows[device][1])
    return None


def _nvidia_smi(fields: list[str]) -> list[list[str]] | None:
    try:
        proc = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in proc.stdout.strip().splitlines() if line.strip()]


# ------------------------------------------------------------------------------ logger, progress monitor
def _make_logger(trt, verbose: bool = False, console=None):
    """A trt.ILogger that prints warnings/errors (everything with `verbose`) and keeps the errors, so a
    failed build can say why in its one-line message."""
    from rich.markup import escape

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self._lock = threading.Lock()

        def log(self, severity, msg) -> None:
            level = int(getattr(severity, "value", severity))
            error = level <= int(trt.ILogger.Severity.ERROR)
            with self._lock:
                if error:
                    self.errors.append(str(msg).strip().replace("\n", " "))
            limit = int(trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING)
            if level <= limit and console is not None:
                tag = {0: "internal error", 1: "error", 2: "warning", 3: "info"}.get(level, "verbose")
                console.print(f"[dim]TensorRT {tag}:[/dim] {escape(str(msg))}", highlight=False, soft_wrap=True)

    return _Logger()


def _make_progress_monitor(trt, progress):
    """A trt.IProgressMonitor (TensorRT >= 10.0) driving one rich task per builder phase (nested phases
    indented). TensorRT calls it from its own threads, hence the lock; callbacks never raise."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):
        def __init__(self) -> None:
            base.__init__(self)
            self._lock = threading.Lock()
            self._tasks: dict[str, int] = {}
            self._depth: dict[str, int] = {}
            self.phases: list[str] = []

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            try:
                with self._lock:
                    depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                    self._depth[phase_name] = depth
                    self.phases.append(phase_name)
                    self._tasks[phase_name] = progress.add_task("  " * depth + str(phase_name),
                                                                total=max(int(num_steps), 1))
            except Exception:  # pragma: no cover - a display problem must not break the build
                pass

        def step_complete(self, phase_name, step) -> bool:
            try:
                with self._lock:
                    task = self._tasks.get(phase_name)
                    if task is not None:  # never raises: a stop is answered by the return value
                        getattr(progress, "update_unchecked", progress.update)(task, completed=int(step) + 1)
            except Exception:  # pragma: no cover
                pass
            return signals.requested() is None  # False cancels the build (SIGTERM / Ctrl-C arrived)

        def phase_finish(self, phase_name) -> None:
            try:
                with self._lock:
                    task = self._tasks.pop(phase_name, None)
                    self._depth.pop(phase_name, None)
                    if task is not None:
                        progress.remove_task(task)
            except Exception:  # pragma: no cover
                pass

    return _Monitor()


# ---------------------------------------------------------------------------------------------- builder
@dataclass
class BuildResult:
    plan: BuildPlan
    engine_path: Path
    manifest_path: Path
    skipped: bool                      # a matching engine existed (no build)
    status: EngineStatus               # status before the build
    seconds: float = 0.0
    manifest: dict | None = None


def plan_build(onnx_path: str | Path, output: str | Path | None = None, *, batch: str | tuple | None = None,
               workspace: str | int = DEFAULT_WORKSPACE, dla_core: int | None = None, fp16: bool = False,
               gpu: GpuInfo | None = None, trt=None, pose_spec: str | None = None,
               contexts: int | None = None) -> BuildPlan:
    """Read the ONNX, detect TensorRT and the GPU, and decide everything the engine depends on.

    A foreign pose ONNX (no rtmw_edge metadata) gets its description from `pose_spec` or the mmdeploy SDK
    JSON beside it (`pose_models.pose_metadata`); the manifest carries it like an export's metadata."""
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineError(f"ONNX file not found: {onnx_path}")
    if onnx_path.suffix.lower() != ".onnx":
        raise EngineError(f"{onnx_path.name} is not an .onnx file: build engines from ONNX exports")
    batch_t = parse_batch(batch if batch is None or isinstance(batch, str) else ":".join(map(str, batch)))
    workspace_bytes = parse_workspace(workspace)
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise EngineError(f"{onnx_path} is not a readable ONNX model ({type(exc).__name__})") from None
    meta = read_metadata(model)
    if meta is None:
        from ..pose_models import is_foreign_pose, pose_metadata

        if pose_spec or is_foreign_pose(onnx_path):
            meta = pose_metadata(onnx_path, pose_spec)
    precision = onnx_precision(model, meta)
    profiles = derive_profiles(meta, graph_inputs(model), batch_t)
    trt = trt or import_tensorrt()
    version = str(trt.__version__)
    path = select_build_path(version, precision, fp16)
    warnings = check_dla(version, dla_core, path.precision)
    if parse_version(version)[0] > 11:
        warnings.append(f"TensorRT {version} is newer than the versions this builder was written for (10.x, 11.x)")
    if gpu is None:
        gpu = gpu_identity()
        if gpu is None:
            raise EngineError("cannot identify the GPU (no CUDA device visible to cuda-python or nvidia-smi): "
                              "engines are built on the device that runs them; `rtmw-edge doctor` shows why")
    copies = (parse_contexts(contexts) if contexts is not None else DEFAULT_CONTEXTS) \
        if dynamic_profiles(profiles) else 1
    return BuildPlan(onnx_path=onnx_path, engine_path=default_engine_path(onnx_path, output),
                     onnx_sha256=file_sha256(onnx_path), onnx_metadata=meta, onnx_precision=precision,
                     tensorrt_version=version, gpu=gpu, path=path, profiles=profiles,
                     workspace_bytes=workspace_bytes, dla_core=dla_core, warnings=warnings, contexts=copies)


def check_engine(onnx_path: str | Path, output: str | Path | None = None, **options) -> tuple[BuildPlan, EngineStatus]:
    """Would `build_engine` with these options build (missing/stale, with reasons) or skip (current)?"""
    plan = plan_build(onnx_path, output, **options)
    return plan, engine_status(plan.engine_path, plan.key_fields())


def _parser_errors(parser) -> list[str]:
    errors = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        where = []
        for attr, fmt in (("node_operator", "{}"), ("node_name", "{}"), ("node", "node {}")):
            fn = getattr(err, attr, None)
            try:
                value = fn() if callable(fn) else None
            except Exception:
                value = None
            if value not in (None, "", -1):
                where.append(fmt.format(value))
        desc = str(err.desc()).strip().replace("\n", " ")
        errors.append(f"{desc} ({', '.join(where)})" if where else desc)
    return errors


def _timing_cache(trt, config, path: Path | None, console) -> bool:
    """Attach a timing cache to `config`: the file's if it exists and matches this TensorRT/GPU, else a new
    empty one. Returns True when the file's entries were reused."""
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    if blob:
        try:
            cache = config.create_timing_cache(blob)
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                return True
        except Exception:  # a corrupt file: TensorRT may raise instead of returning False
            pass
        if console is not None:
            console.print(f"timing cache {path} does not match this TensorRT version or GPU: starting a new one",
                          highlight=False, markup=False)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return False


def _describe_io(trt, engine) -> list[dict]:
    io = []
    for i in range(int(engine.num_io_tensors)):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        entry = {"name": name, "mode": "input" if is_input else "output",
                 "shape": [int(d) for d in engine.get_tensor_shape(name)],
                 "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name}
        if is_input:
            entry["profile"] = [[int(d) for d in dims] for dims in engine.get_tensor_profile_shape(name, 0)]
        io.append(entry)
    return io


def build_engine(onnx_path: str | Path, output: str | Path | None = None, *, batch: str | tuple | None = None,
                 workspace: str | int = DEFAULT_WORKSPACE, dla_core: int | None = None,
                 timing_cache: str | Path | bool | None = None, fp16: bool = False, force: bool = False,
                 verbose: bool = False, progress: bool = True, console=None,
                 gpu: GpuInfo | None = None, pose_spec: str | None = None,
                 contexts: int | None = None) -> BuildResult:
    """Build `onnx_path` into a TensorRT engine (default engines/<stem>.engine) with its manifest beside it,
    or skip when a matching engine exists (`force` rebuilds).

    batch: "MIN:OPT:MAX" or one number (default: pose 1:8:32, detector fixed 1). workspace: "2GiB".
    dla_core: DLA core with GPU fallback (Jetson). timing_cache: path (default <engine folder>/timing.cache),
    False for none. fp16: FP16 builder flag on an FP32 ONNX (TensorRT 10.0–10.11 only; otherwise export
    an FP16 ONNX). gpu: override the detected GPU identity (tests). pose_spec: settings of a foreign pose
    ONNX (see `plan_build`).
    """
    from rich.console import Console
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from ..progress import progress_bar

    console = console or Console(stderr=True)
    trt = import_tensorrt()
    plan = plan_build(onnx_path, output, batch=batch, workspace=workspace, dla_core=dla_core, fp16=fp16, gpu=gpu,
                      trt=trt, pose_spec=pose_spec, contexts=contexts)
    engine_path, man_path = plan.engine_path, manifest_path(plan.engine_path)
    for line in describe_plan(plan):
        console.print(line, highlight=False, markup=False)
    status = engine_status(engine_path, plan.key_fields())
    if status.current and not force:
        console.print(f"up to date, not rebuilt: {engine_path} (--force rebuilds)", highlight=False,
                      markup=False)
        return BuildResult(plan, engine_path, man_path, skipped=True, status=status,
                           manifest=read_manifest(engine_path))
    if status.state == "stale":
        console.print(f"rebuilding {engine_path}: {status.explain()}", highlight=False, markup=False)
    elif force and status.current:
        console.print(f"rebuilding {engine_path} (--force)", highlight=False, markup=False)

    if timing_cache is False:
        cache_path = None
    else:
        cache_path = Path(timing_cache) if timing_cache not in (None, True) else engine_path.parent / TIMING_CACHE_NAME

    started = time.perf_counter()
    logger = _make_logger(trt, verbose, console)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.path.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = _parser_errors(parser) or logger.errors or ["no details"]
        raise EngineError(f"TensorRT {plan.tensorrt_version} cannot parse {plan.onnx_path.name} "
                          f"({len(errors)} error{'s' if len(errors) != 1 else ''}): {'; '.join(errors)}")
    names = [network.get_input(i).name for i in range(int(network.num_inputs))]
    unknown = [p.input_name for p in plan.profiles if p.input_name not in names]
    if unknown or len(names) != len(plan.profiles):
        raise EngineError(f"network inputs {names} do not match the ONNX graph inputs "
                          f"{[p.input_name for p in plan.profiles]}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for name in plan.path.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for _ in range(plan.contexts):   # one copy per execution context (TensorRT: a context per profile)
        profile = builder.create_optimization_profile()
        for p in plan.profiles:
            profile.set_shape(p.input_name, p.min, p.opt, p.max)
        if config.add_optimization_profile(profile) < 0:
            raise EngineError(f"TensorRT rejected the optimization profile {format_profiles(plan.profiles)}")
    if plan.dla_core is not None:
        cores = int(builder.num_DLA_cores)
        if cores == 0:
            raise EngineError("--dla: this device has no DLA (Jetson AGX Orin and Orin NX have them)")
        if plan.dla_core >= cores:
            raise EngineError(f"--dla {plan.dla_core}: this device has {cores} DLA core(s) (0..{cores - 1})")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    reused = _timing_cache(trt, config, cache_path, console) if cache_path is not None else False
    if cache_path is not None:
        console.print(f"timing cache: {cache_path} ({'reused' if reused else 'new'})", highlight=False,
                      markup=False)

    bar = progress_bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TimeElapsedColumn(), console=console, disable=not progress)
    with bar:
        monitor = _make_progress_monitor(trt, bar)  # also how a stop signal cancels the build
        spinner = None
        if monitor is not None:
            config.progress_monitor = monitor
        elif progress:
            spinner = bar.add_task(f"building {engine_path.name}", total=None)
        serialized = builder.build_serialized_network(network, config)
        if spinner is not None:
            bar.remove_task(spinner)
    if serialized is None:
        signals.check()  # the build was cancelled by SIGTERM / Ctrl-C: exit 143 / 130, nothing written
        why = f": {logger.errors[-1]}" if logger.errors else " (see the TensorRT messages above)"
        raise EngineError(f"TensorRT {plan.tensorrt_version} could not build {plan.onnx_path.name}{why}; "
                          "nothing was written")
    seconds = time.perf_counter() - started

    if cache_path is not None:
        atomic_write_bytes(cache_path, config.get_timing_cache().serialize())
    del parser, network, config, builder  # free the builder's memory before loading the engine (Jetson)
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    if engine is None:
        raise EngineError(f"TensorRT built {engine_path.name} but cannot load it back; nothing was written")
    manifest = make_manifest(plan, engine_sha256=hashlib.sha256(memoryview(serialized)).hexdigest(),
                             engine_bytes=memoryview(serialized).nbytes, io=_describe_io(trt, engine),
                             built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             build_seconds=seconds, package_version=__version__)
    atomic_write_bytes(engine_path, serialized)
    atomic_write_json(man_path, manifest)
    console.print(f"built {engine_path} ({format_bytes(manifest['engine_bytes'])}) in {seconds:.1f} s; "
                  f"manifest {man_path.name}", highlight=False, markup=False)
    return BuildResult(plan, engine_path, man_path, skipped=False, status=status, seconds=seconds, manifest=manifest)


# ---------------------------------------------------------------------------------------------- runtime
ALIGNMENT = 256   # TensorRT: tensor addresses and context device memory must be 256-byte aligned


class TensorRTContext:
    """One `IExecutionContext` bound to one CUDA stream (the DeviceContext protocol).

    TensorRT's rules, kept here: each concurrent execution needs its own context (never two streams on one);
    each context of a dynamic-shape engine uses its own optimization profile (`set_optimization_profile_async`
    with an index no other live context holds); tensor addresses are 256-byte aligned. `scratch` (a device
    pointer of at least `engine.scratch_bytes`, 256-aligned) makes a USER_MANAGED context that runs in the
    caller's memory — the GPU pipeline gives the detector and pose contexts of one frame slot the same block,
    since they run one after the other on the slot's stream.
    """

    def __init__(self, engine: TensorRTEngine, stream: int, scratch: int | None = None) -> None:
        trt = engine._trt
        self.engine, self.stream = engine, int(stream)
        strategy = trt.ExecutionContextAllocationStrategy
        context = engine._engine.create_execution_context(strategy.USER_MANAGED if scratch is not None
                                                          else strategy.STATIC)
        if context is None:
            raise EngineError(f"TensorRT could not create an execution context for {engine.path.name} (GPU memory?)")
        self.profile = engine._claim_profile(self)
        self._context = context
        if engine.dynamic and not context.set_optimization_profile_async(self.profile, self.stream):
            self.close()
            raise EngineError(f"TensorRT refused optimization profile {self.profile} of {engine.path.name}"
                              f"{engine._last_error()}")
        if scratch is not None:
            if int(scratch) % ALIGNMENT:
                self.close()
                raise EngineError(f"context memory for {engine.path.name} must be 256-byte aligned")
            context.set_device_memory(int(scratch), engine.scratch_bytes)
        self.batch: int | None = None

    def infer_async(self, inputs: dict[str, int], outputs: dict[str, int], batch: int) -> None:
        """Enqueue one inference of `batch` items on this context's stream."""
        eng = self.engine
        names = {**inputs, **outputs}
        missing = [n for n in [eng.input_name, *eng.output_names] if n not in names]
        if missing:
            raise EngineError(f"infer_async: no device buffer for {', '.join(missing)}")
        eng._check_batch(batch)
        if batch != self.batch:
            if not self._context.set_input_shape(eng.input_name, eng.input_shape(batch)):
                raise EngineError(f"TensorRT refused input shape {eng.input_shape(batch)} for {eng.path.name}"
                                  f"{eng._last_error()}")
            self.batch = batch
        for name, ptr in names.items():
            if int(ptr) % ALIGNMENT:
                raise EngineError(f"{eng.path.name}: the address of {name} ({int(ptr):#x}) is not 256-byte aligned, "
                                  "which TensorRT requires")
            if not self._context.set_tensor_address(name, int(ptr)):
                raise EngineError(f"TensorRT refused the buffer address of {name}{eng._last_error()}")
        if not self._context.execute_async_v3(self.stream):
            raise EngineError(f"TensorRT execution of {eng.path.name} failed{eng._last_error()}")

    def close(self) -> None:
        """Destroy the IExecutionContext now (not at garbage collection) and free its profile."""
        self.engine._release_profile(self)
        self._context = None


class TensorRTEngine:
    """A built engine, run on host arrays (`run`) or on device buffers through contexts (`create_context`).

    Loading checks the manifest beside the engine (if any): an engine built for another GPU or TensorRT
    version is refused in one line naming both; so is one whose outputs have data-dependent shapes (−1 after
    the input shape is set: the GPU pipeline plans fixed buffers). `metadata` is the ONNX metadata from the
    manifest. The CUDA side (streams, pinned staging, device buffers) goes through `rtmw_edge.cuda.runtime`.
    """

    # execute_async_v3 may be captured in a CUDA graph once it has run eagerly for the current input shape
    # (TensorRT's rule; weight streaming, not used here, would make it synchronous)
    backend = "tensorrt"        # the backend table's name (what the daemon reports)
    graph_capturable = True

    def __init__(self, path: str | Path, *, device: int = 0, check_machine: bool = True, **_options) -> None:
        trt = import_tensorrt()
        self._trt = trt
        self.path = Path(path)
        self.name = self.path.stem
        self.device = int(device)
        if not self.path.is_file():
            raise EngineError(f"engine file not found: {self.path}")
        self.manifest = read_manifest(self.path)
        self.metadata = ((self.manifest.get("onnx") or {}).get("metadata")) if self.manifest else None
        version = str(trt.__version__)
        if self.manifest is not None and check_machine:
            check_compatible(self.path, self.manifest, version, gpu_identity(device))
        try:                                               # TensorRT deserializes on the current device
            R.use_device(self.device)
        except MissingDependencyError:
            pass
        except RtmwEdgeError:
            if self.device != 0:                           # device 0 is current by default; TensorRT reports
                raise                                      # a missing driver itself
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            why = f" ({self._logger.errors[-1]})" if self._logger.errors else ""
            raise EngineError(f"TensorRT {version} cannot load {self.path.name}{why}: engines only load with the "
                              "TensorRT version and GPU that built them; rebuild with `rtmw-edge build`")
        names = [self._engine.get_tensor_name(i) for i in range(int(self._engine.num_io_tensors))]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in inputs]
        if len(inputs) != 1:
            raise EngineError(f"{self.path.name} has inputs {inputs}; rtmw-edge runs single-input engines")
        self.input_name = inputs[0]
        dims = [int(d) for d in self._engine.get_tensor_shape(self.input_name)]
        if any(d < 0 for d in dims[1:]):
            raise EngineError(f"{self.path.name}: input {self.input_name} has dynamic dims {dims} besides the batch")
        self.dynamic = dims[0] < 0
        if self.dynamic:
            lo, _, hi = (dims_[0] for dims_ in self._engine.get_tensor_profile_shape(self.input_name, 0))
            self.min_batch, self.max_batch = int(lo), int(hi)
            self.input_dims = (None, *dims[1:])
        else:
            self.min_batch = self.max_batch = dims[0]
            self.input_dims = tuple(dims)
        self.num_profiles = int(self._engine.num_optimization_profiles) if self.dynamic else 1
        self.scratch_bytes = int(self._engine.device_memory_size_v2)
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._profiles: dict[int, object] = {}          # profile index -> the context holding it
        self._contexts: list[TensorRTContext] = []
        self._per_item = self._probe_outputs()
        self._host: dict | None = None                  # run(): stream, context, buffers

    # shapes ---------------------------------------------------------------------------------------------
    def input_shape(self, batch: int) -> tuple[int, ...]:
        """The input shape for `batch` items (DeviceEngine); the host side reads `input_dims`."""
        return (int(batch), *self.input_dims[1:])

    def _probe_outputs(self) -> dict[str, tuple[int, ...]]:
        """Per-item output shapes, from a short-lived context at the smallest and largest batch; outputs whose
        dims stay −1 (data-dependent) or do not scale with the batch are refused in one line."""
        static = {}
        for name in self.output_names:
            dims = [int(d) for d in self._engine.get_tensor_shape(name)]
            if all(d >= 0 for d in dims[1:]):
                static[name] = tuple(dims[1:])
        if len(static) == len(self.output_names):
            return static
        strategy = self._trt.ExecutionContextAllocationStrategy.USER_MANAGED
        probe = self._engine.create_execution_context(strategy)   # no device memory: shape queries only
        try:
            shapes = {}
            for batch in sorted({self.min_batch, self.max_batch}):
                if not probe.set_input_shape(self.input_name, self.input_shape(batch)):
                    raise EngineError(f"TensorRT refused input shape {self.input_shape(batch)} for {self.path.name}")
                shapes[batch] = {n: tuple(int(d) for d in probe.get_tensor_shape(n)) for n in self.output_names}
        finally:
            del probe
        for name in self.output_names:
            for batch, per in shapes.items():
                dims = per[name]
                if any(d < 0 for d in dims):
                    raise EngineError(f"{self.path.name}: output {name} has a data-dependent shape {list(dims)} "
                                      "after the input shape is set; rtmw-edge runs engines with fixed output "
                                      "shapes (export detectors with fixed top-k outputs)")
                if dims[0] != batch:
                    raise EngineError(f"{self.path.name}: output {name} {list(dims)} does not follow the batch "
                                      f"{batch}")
            static[name] = shapes[self.min_batch][name][1:]
        return static

    def output_shape(self, name: str, batch: int) -> tuple[int, ...]:
        return (int(batch), *self._per_item[name])

    def output_dtype(self, name: str) -> str:
        return self._dtypes[name].name

    def _check_batch(self, batch: int) -> None:
        if not self.min_batch <= batch <= self.max_batch:
            raise EngineError(f"{self.path.name} takes a batch of {self.min_batch}..{self.max_batch}, not {batch} "
                              "(rebuild with --batch MIN:OPT:MAX)")

    def _last_error(self) -> str:
        return f": {self._logger.errors[-1]}" if self._logger.errors else ""

    # contexts -------------------------------------------------------------------------------------------
    def _claim_profile(self, context) -> int:
        if not self.dynamic:
            return 0
        free = [i for i in range(self.num_profiles) if i not in self._profiles]
        if not free:
            raise EngineError(f"{self.path.name} has {self.num_profiles} optimization profile(s), all held by other "
                              f"execution contexts (one per CUDA stream): rebuild it with `rtmw-edge build "
                              f"--contexts {self.num_profiles * 2}` for more streams or cameras")
        self._profiles[free[0]] = context
        return free[0]

    def _release_profile(self, context) -> None:
        for index in [i for i, c in self._profiles.items() if c is context]:
            del self._profiles[index]
        if context in self._contexts:
            self._contexts.remove(context)

    def create_context(self, stream: int, scratch: int | None = None) -> TensorRTContext:
        """An execution context for `stream` (DeviceContext): never share it with another stream."""
        context = TensorRTContext(self, stream, scratch)
        self._contexts.append(context)
        return context

    # host Engine ----------------------------------------------------------------------------------------
    def _host_state(self, batch: int) -> dict:
        """run()'s own stream, context and buffers: device buffers and pinned staging for `batch` items."""
        R.use_device(self.device)
        state = self._host
        if state is None:
            stream = R.Stream()
            state = self._host = {"stream": stream, "context": self.create_context(stream.handle), "batch": 0,
                                  "buffers": []}
        if state["batch"] < batch:
            for buf in state["buffers"]:
                buf.free()
            sizes = {self.input_name: int(np.prod(self.input_shape(batch))) * self._dtypes[self.input_name].itemsize}
            sizes.update({o: int(np.prod(self.output_shape(o, batch))) * self._dtypes[o].itemsize
                          for o in self.output_names})
            state["device"] = {n: R.DeviceBuffer(max(b, 1)) for n, b in sizes.items()}
            state["pinned"] = {n: R.PinnedBuffer(max(b, 1)) for n, b in sizes.items()}
            state["buffers"] = [*state["device"].values(), *state["pinned"].values()]
            state["batch"] = batch
        return state

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Host arrays in and out: stage `x` in pinned memory, copy to the GPU, run, copy every output back
        into pinned memory, wait, return copies (pinned staging: the copies are truly asynchronous DMA)."""
        x = np.ascontiguousarray(x, dtype=self._dtypes[self.input_name])
        if x.ndim != len(self.input_dims) or tuple(x.shape[1:]) != tuple(self.input_dims[1:]):
            raise EngineError(f"{self.path.name} takes input {list(self.input_dims)}, got {list(x.shape)}")
        n = int(x.shape[0])
        self._check_batch(n)
        state = self._host_state(n)
        stream, dev, pin = state["stream"], state["device"], state["pinned"]
        np.copyto(pin[self.input_name].array(x.dtype, x.shape), x)
        R.copy_htod_async(dev[self.input_name].ptr, pin[self.input_name].ptr, x.nbytes, stream.handle)
        state["context"].infer_async({self.input_name: dev[self.input_name].ptr},
                                     {o: dev[o].ptr for o in self.output_names}, n)
        shapes = {o: self.output_shape(o, n) for o in self.output_names}
        for o in self.output_names:
            nbytes = int(np.prod(shapes[o])) * self._dtypes[o].itemsize
            R.copy_dtoh_async(pin[o].ptr, dev[o].ptr, nbytes, stream.handle)
        stream.synchronize()
        return {o: pin[o].array(self._dtypes[o], shapes[o]).copy() for o in self.output_names}

    def close(self) -> None:
        """Contexts first, then the engine and the runtime (TensorRT's destruction order), then run()'s CUDA
        buffers and stream — explicitly, not left to the garbage collector."""
        state, self._host = self._host, None
        if state is not None:
            with contextlib.suppress(Exception):
                state["stream"].synchronize()
        for context in list(self._contexts):
            context.close()
        self._engine = None
        self._runtime = None
        if state is not None:
            for buf in state["buffers"]:
                with contextlib.suppress(Exception):
                    buf.free()
            with contextlib.suppress(Exception):
                state["stream"].close()

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        with contextlib.suppress(Exception):
            if self.__dict__.get("_engine") is not None:
                self.close()


def load_device_engine(path: str | Path, **options) -> TensorRTEngine:
    """The engine for the GPU pipeline (DeviceEngine protocol); same object as `load_engine` returns."""
    return TensorRTEngine(path, **options)


# ----------------------------------------------------------------------------------------------- doctor
def _l4t_release() -> str | None:
    try:
        line = Path("/etc/nv_tegra_release").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    match = re.search(r"R(\d+).*?REVISION:\s*([\d.]+)", line)
    if not match:
        return line.strip("# ").strip()
    major = int(match.group(1))
    jetpack = {32: "JetPack 4", 34: "JetPack 5", 35: "JetPack 5", 36: "JetPack 6", 38: "JetPack 7"}.get(major)
    return f"L4T R{major}.{match.group(2)}" + (f" ({jetpack})" if jetpack else "")


def _dist_version(*names: str) -> str | None:
    from importlib import metadata

    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
    return None


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{(number % 1000) // 10}"


def probe_environment(engines_dir: str | Path | None = None) -> dict:
    """What `rtmw-edge doctor` reports. Every probe is guarded: this never raises."""
    env: dict = {"machine": platform.machine(), "python": platform.python_version(), "jetson": is_jetson(),
                 "l4t": _l4t_release(), "driver": None, "cuda_driver": None, "cuda_runtime": None, "gpus": [],
                 "tensorrt": None, "tensorrt_error": None, "cuda_python": None, "onnxruntime": None,
                 "onnxruntime_providers": [], "nvrtc": None, "cameras": [], "engines": []}
    smi = _nvidia_smi(["name", "compute_cap", "memory.total", "driver_version"])
    if smi:
        env["driver"] = smi[0][-1]
        env["gpus"] = [{"name": r[0], "compute_capability": r[1], "memory": f"{r[2]} MiB", "source": "nvidia-smi"}
                       for r in smi if len(r) == 4]
    elif Path("/proc/driver/nvidia/version").is_file():
        with contextlib.suppress(OSError):
            env["driver"] = Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
    env["cuda_python"] = _dist_version("cuda-python", "cuda-bindings")
    try:
        cudart = _import_cudart()
        driver = _ck(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
        env["cuda_driver"] = _cuda_version(driver) if driver else "none (no NVIDIA driver)"
        env["cuda_runtime"] = _cuda_version(_ck(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))
        if not env["gpus"]:
            count = _ck(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
            for i in range(count or 0):
                props = _ck(cudart.cudaGetDeviceProperties(i), "cudaGetDeviceProperties")
                name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
                env["gpus"].append({"name": name.split("\x00")[0].strip(),
                                    "compute_capability": f"{props.major}.{props.minor}",
                                    "memory": format_bytes(int(props.totalGlobalMem)), "source": "cuda-python"})
    except Exception as exc:
        env.setdefault("cuda_error", f"{type(exc).__name__}: {exc}"[:200])
    try:
        env["tensorrt"] = str(import_tensorrt().__version__)
    except Exception as exc:
        env["tensorrt_error"] = str(exc)
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = list(ort.get_available_providers())
    except Exception:
        pass
    for module in ("cuda.bindings.nvrtc", "cuda.nvrtc"):
        try:
            nvrtc = importlib.import_module(module)
            major, minor = _ck(nvrtc.nvrtcVersion(), "nvrtcVersion")
            env["nvrtc"] = f"{major}.{minor}"
            break
        except Exception:
            continue
    for dev in sorted(Path("/dev").glob("video*"), key=lambda p: (len(p.name), p.name)):
        name = None
        with contextlib.suppress(OSError):
            name = Path(f"/sys/class/video4linux/{dev.name}/name").read_text().strip()
        env["cameras"].append({"device": str(dev), "name": name})
    folder = Path(engines_dir) if engines_dir is not None else Path("engines")
    here_gpu = None
    if env["gpus"]:
        here_gpu = GpuInfo(env["gpus"][0]["name"], env["gpus"][0]["compute_capability"])
    for engine in sorted(folder.glob("*.engine")) if folder.is_dir() else []:
        entry = {"engine": str(engine), "tensorrt": None, "gpu": None, "usable_here": None}
        try:
            manifest = read_manifest(engine)
        except Exception as exc:
            entry["problem"] = str(exc)
            manifest = None
        if manifest:
            entry["tensorrt"] = manifest.get("tensorrt_version")
            gpu = manifest.get("gpu") or {}
            entry["gpu"] = f"{gpu.get('name')} ({gpu.get('compute_capability')})"
            if env["tensorrt"]:
                try:
                    check_compatible(engine, manifest, env["tensorrt"], here_gpu)
                    entry["usable_here"] = True
                except RtmwEdgeError:
                    entry["usable_here"] = False
        env["engines"].append(entry)
    return env
