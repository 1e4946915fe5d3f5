"""Engine building decisions, without TensorRT: version paths, profiles, manifests, cache keys.

Everything here is plain Python so it is unit-tested on machines without a GPU; the TensorRT calls that
carry these decisions out live in `backends/tensorrt.py` (the only module that imports `tensorrt`).

- `parse_version` / `select_build_path`: which network flags and builder flags a TensorRT version gets
  for an ONNX of a given precision (strongly typed everywhere it exists; the FP16 builder flag only on
  10.0–10.11 for a plain FP32 ONNX with `--fp16`), `check_dla` for DLA availability.
- `parse_batch` / `derive_profiles`: the optimization profile of each graph input from the ONNX metadata
  (pose: dynamic batch, default 1:8:32; detector: fixed batch 1) and the CLI `--batch MIN:OPT:MAX`.
- `parse_workspace`: "2GiB", "512MiB", "1.5GB", "1073741824" → bytes.
- Manifest (JSON beside the engine, `<engine>.json`): the cache key fields (ONNX sha256 + metadata,
  TensorRT version, GPU name + compute capability, precision, build path, profiles, flags), the key, the
  engine's sha256/size and I/O, build time. `engine_status` says whether an engine is current, and why
  not; `check_compatible` refuses an engine built for another GPU or TensorRT version in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .downloads import sha256_file
from .errors import RtmwEdgeError
from .outputs import atomic_write_bytes

MANIFEST_SCHEMA = 1
BUILDER_SCHEMA = 2                 # bump when the builder's choices change: old engines become stale
# TensorRT: every execution context of a dynamic-shape engine needs its own optimization profile. The GPU pipeline
# uses one context per frame slot (2) per stream (camera), so a dynamic engine carries this many copies of its
# profile by default (`rtmw-edge build --contexts N`); a fixed-shape engine needs one.
DEFAULT_CONTEXTS = 4
DEFAULT_POSE_BATCH = (1, 8, 32)    # min:opt:max persons per pose call
DEFAULT_FIXED_BATCH = (1, 1, 1)    # detectors (one frame per call) and graphs without metadata
DEFAULT_WORKSPACE = "2GiB"
DEFAULT_ENGINE_DIR = Path("engines")
TIMING_CACHE_NAME = "timing.cache"

MIN_VERSION = (10, 0)              # name-based I/O API, execute_async_v3, IProgressMonitor, STRONGLY_TYPED
FP16_FLAG_DEPRECATED = (10, 12)    # BuilderFlag.FP16 deprecated ("superseded by strong typing"), removed in 11
ALWAYS_STRONG = (11, 0)            # STRONGLY_TYPED deprecated and ignored: every network is strongly typed
DLA_RETURNS = (11, 4, 1)           # 11.0–11.4.0 have no DLA; 11.4.1 restores it (AGX Orin, JetPack >= 7.2.2)


class EngineError(RtmwEdgeError):
    """An engine cannot be built or loaded (bad options, parser/builder failure, wrong machine)."""


class EngineMismatchError(EngineError):
    """The engine was built for another GPU or TensorRT version."""


# --------------------------------------------------------------------------------------------- versions
def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.30' → (10, 3, 0, 30); '11.1.0' → (11, 1, 0). Raises on anything without major.minor."""
    match = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
    if not match:
        raise EngineError(f"cannot read the TensorRT version {text!r} (expected MAJOR.MINOR[.PATCH[.BUILD]])")
    return tuple(int(g) for g in match.groups() if g is not None)


@dataclass(frozen=True)
class BuildPath:
    """How a network is created and configured on one TensorRT version."""

    name: str                          # "strongly-typed" | "fp16-flag"
    network_flags: tuple[str, ...]     # NetworkDefinitionCreationFlag member names OR-ed into create_network
    builder_flags: tuple[str, ...]     # BuilderFlag member names set on the config (precision only)
    precision: str                     # what the engine computes in: the ONNX's precision, or fp16 (flag)
    description: str                   # one line for the log


def select_build_path(version: str | tuple[int, ...], onnx_precision: str, fp16: bool = False) -> BuildPath:
    """The build path for TensorRT `version` and an ONNX whose precision is fp32 | fp16 | int8.

    | TensorRT        | default (precision from the ONNX)      | `--fp16` on an FP32 ONNX                 |
    | 10.0 – 10.11    | create_network(1 << STRONGLY_TYPED)    | create_network(0) + BuilderFlag.FP16     |
    | 10.12 – 10.x    | create_network(1 << STRONGLY_TYPED)    | error: FP16 flag deprecated → export fp16 |
    | 11.x and later  | create_network(0) (always strong)      | error: FP16 flag removed → export fp16    |
    """
    v = parse_version(".".join(map(str, version))) if isinstance(version, tuple) else parse_version(version)
    shown = ".".join(map(str, v))
    if v[:2] < MIN_VERSION:
        raise EngineError(f"TensorRT {shown} is too old: rtmw-edge needs TensorRT >= 10.0 (JetPack 6 ships 10.3)")
    if onnx_precision not in ("fp32", "fp16", "int8"):
        raise EngineError(f"unknown ONNX precision {onnx_precision!r} (expected fp32, fp16 or int8)")
    if fp16:
        if onnx_precision != "fp32":
            raise EngineError(f"--fp16 applies to an FP32 ONNX; this one is already {onnx_precision} "
                              "(the precision comes from the ONNX): drop --fp16")
        if v[:2] >= FP16_FLAG_DEPRECATED:
            state = "removed in TensorRT 11" if v[:2] >= ALWAYS_STRONG else "deprecated since TensorRT 10.12"
            raise EngineError(f"--fp16 uses the FP16 builder flag, {state} (installed: {shown}); export an "
                              "FP16 ONNX instead: rtmw-edge export NAME --precision fp16 -o model.fp16.onnx")
        return BuildPath("fp16-flag", (), ("FP16",), "fp16",
                         f"TensorRT {shown}: weakly typed network + BuilderFlag.FP16 on an FP32 ONNX (--fp16; "
                         "TensorRT picks FP16 per layer, norm/attention layers included: verify with check)")
    if v[:2] >= ALWAYS_STRONG:
        return BuildPath("strongly-typed", (), (), onnx_precision,
                         f"TensorRT {shown}: strongly typed network (always on in 11.x), precision from the "
                         f"ONNX: {onnx_precision}")
    return BuildPath("strongly-typed", ("STRONGLY_TYPED",), (), onnx_precision,
                     f"TensorRT {shown}: strongly typed network (NetworkDefinitionCreationFlag.STRONGLY_TYPED), "
                     f"precision from the ONNX: {onnx_precision}")


def check_dla(version: str | tuple[int, ...], dla_core: int | None, precision: str) -> list[str]:
    """Validate `--dla CORE` for this TensorRT version; returns warnings for the log (raises on errors).
    Whether the device has that core is checked at build time (`builder.num_DLA_cores`)."""
    if dla_core is None:
        return []
    v = parse_version(".".join(map(str, version))) if isinstance(version, tuple) else parse_version(version)
    if dla_core < 0:
        raise EngineError(f"--dla must be a DLA core index (0 or 1), not {dla_core}")
    if v[0] >= 11 and v < DLA_RETURNS:
        raise EngineError(f"TensorRT {'.'.join(map(str, v))} has no DLA support (11.0–11.4.0); use TensorRT 10.x "
                          "(JetPack 6) or >= 11.4.1 (JetPack >= 7.2.2), or drop --dla")
    warnings = ["DLA: layers DLA cannot run (attention, SimCC head) fall back to the GPU (GPU_FALLBACK)"]
    if precision == "fp32":
        warnings.append("DLA runs FP16/INT8 layers only: with an FP32 engine every layer falls back to the GPU; "
                        "export with --precision fp16 (or INT8) for DLA")
    return warnings


# ---------------------------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class Profile:
    """One input's shapes in the (single) optimization profile."""

    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def as_dict(self) -> dict:
        return {"input": self.input_name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @property
    def batch(self) -> tuple[int, int, int]:
        return self.min[0], self.opt[0], self.max[0]


def parse_batch(text: str | None) -> tuple[int, int, int] | None:
    """'1:8:32' → (1, 8, 32); '8' → (8, 8, 8) (a fixed batch); None → None."""
    if text is None or str(text).strip() == "":
        return None
    parts = str(text).strip().split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise EngineError(f"--batch must be MIN:OPT:MAX (e.g. 1:8:32) or one number, not {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise EngineError(f"--batch must be MIN:OPT:MAX (e.g. 1:8:32) or one number, not {text!r}")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise EngineError(f"--batch {text}: needs 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


def graph_inputs(model) -> list[tuple[str, list]]:
    """The real inputs of an onnx.ModelProto: [(name, dims)], a dim being an int or None (symbolic/unknown)."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        inputs.append((vi.name, dims))
    return inputs


def derive_profiles(meta: dict | None, inputs: list[tuple[str, list]],
                    batch: tuple[int, int, int] | None = None) -> list[Profile]:
    """The optimization profile of every graph input.

    Batch: the CLI `batch` if given; else for a dynamic-batch graph the task default — pose 1:8:32, detector
    (and graphs without rtmw_edge metadata) fixed 1:1:1; a fixed-batch export (metadata batch N or a static
    dim 0) is N:N:N and refuses a different `--batch`. Other dims come from the graph, or from the metadata
    `input_size` [w, h] for a symbolic H/W; any other symbolic dim is an error.
    """
    if not inputs:
        raise EngineError("the ONNX graph has no inputs")
    meta = meta or {}
    task = meta.get("task")
    meta_batch = meta.get("batch")
    profiles = []
    for name, dims in inputs:
        if len(dims) < 1:
            raise EngineError(f"input {name!r} is a scalar; TensorRT profiles need a batch dimension")
        dims = list(dims)
        fixed = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
        if fixed is None and isinstance(meta_batch, int):
            fixed = meta_batch
        if fixed is not None:
            if batch is not None and batch != (fixed, fixed, fixed):
                raise EngineError(f"input {name!r} has a fixed batch of {fixed} (exported with --batch {fixed}); "
                                  f"--batch {':'.join(map(str, batch))} needs a dynamic-batch export")
            b = (fixed, fixed, fixed)
        elif batch is not None:
            b = batch
        elif task in ("pose2d", "pose3d"):
            b = DEFAULT_POSE_BATCH
        else:
            b = DEFAULT_FIXED_BATCH
        rest = dims[1:]
        if len(dims) == 4 and meta.get("input_size") and (rest[1] is None or rest[2] is None):
            w, h = meta["input_size"]
            rest = [rest[0] if rest[0] is not None else 3, rest[1] or h, rest[2] or w]
        missing = [i + 1 for i, d in enumerate(rest) if not (isinstance(d, int) and d > 0)]
        if missing:
            raise EngineError(f"input {name!r} has symbolic dims {missing} besides the batch: TensorRT profiles "
                              "here cover the batch only; export with a fixed input size")
        rest = [int(d) for d in rest]
        profiles.append(Profile(name, (b[0], *rest), (b[1], *rest), (b[2], *rest)))
    return profiles


def dynamic_profiles(profiles: list[Profile]) -> bool:
    """Does the engine have dynamic input shapes (then each execution context needs its own profile)?"""
    return any(p.min != p.max for p in profiles)


def parse_contexts(value) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= 64:
        raise EngineError(f"--contexts must be a whole number from 1 to 64, not {value!r}")
    return n


def format_profiles(profiles: list[Profile]) -> str:
    return ", ".join(f"{p.input_name} {'×'.join(map(str, p.min))} / {'×'.join(map(str, p.opt))} / "
                     f"{'×'.join(map(str, p.max))}" for p in profiles)


# ------------------------------------------------------------------------------------------ sizes, paths
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
          "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12}


def parse_workspace(text: str | int) -> int:
    """'2GiB' → 2147483648, '512MiB', '1.5GB' (decimal), '4G' (binary), '1073741824' → bytes (> 0)."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _UNITS:
            raise EngineError(f"--workspace must be a size like 2GiB, 512MiB or 1073741824, not {text!r}")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise EngineError(f"--workspace must be positive, not {text!r}")
    return value


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def default_engine_path(onnx_path: str | Path, output: str | Path | None = None) -> Path:
    """`output` if given (a folder → FOLDER/<onnx stem>.engine), else engines/<onnx stem>.engine."""
    stem = Path(onnx_path).stem
    if output is None:
        return DEFAULT_ENGINE_DIR / f"{stem}.engine"
    output = Path(output)
    if output.is_dir() or str(output).endswith(os.sep):
        return output / f"{stem}.engine"
    return output


def manifest_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def file_sha256(path: str | Path) -> str:
    return sha256_file(Path(path))


def atomic_write_json(path: str | Path, value) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


# ----------------------------------------------------------------------------------- cache key, manifest
@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str            # "8.7"

    def __str__(self) -> str:
        return f"{self.name} (compute {self.compute_capability})"


@dataclass
class BuildPlan:
    """Everything that decides an engine's bytes: the cache key is the sha256 of `key_fields()`."""

    onnx_path: Path
    engine_path: Path
    onnx_sha256: str
    onnx_metadata: dict | None
    onnx_precision: str
    tensorrt_version: str
    gpu: GpuInfo
    path: BuildPath
    profiles: list[Profile]
    workspace_bytes: int
    dla_core: int | None = None
    warnings: list[str] = field(default_factory=list)
    contexts: int = 1                  # copies of the profile: one per execution context (dynamic shapes)

    def flags(self) -> dict:
        return {"workspace_bytes": self.workspace_bytes, "dla_core": self.dla_core,
                "gpu_fallback": self.dla_core is not None, "network_flags": list(self.path.network_flags),
                "builder_flags": list(self.path.builder_flags)}

    def key_fields(self) -> dict:
        return {"builder_schema": BUILDER_SCHEMA, "onnx_sha256": self.onnx_sha256,
                "onnx_metadata": self.onnx_metadata, "tensorrt_version": self.tensorrt_version,
                "gpu_name": self.gpu.name, "compute_capability": self.gpu.compute_capability,
                "precision": self.path.precision, "build_path": self.path.name,
                "profiles": [p.as_dict() for p in self.profiles], "contexts": self.contexts, "flags": self.flags()}

    def cache_key(self) -> str:
        return cache_key(self.key_fields())


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def make_manifest(plan: BuildPlan, *, engine_sha256: str, engine_bytes: int, io: list[dict] | None,
                  built_at: str, build_seconds: float, package_version: str) -> dict:
    return {
        "schema_version": MANIFEST_SCHEMA,
        "engine": plan.engine_path.name,
        "engine_sha256": engine_sha256,
        "engine_bytes": engine_bytes,
        "onnx": {"path": str(plan.onnx_path), "sha256": plan.onnx_sha256, "precision": plan.onnx_precision,
                 "metadata": plan.onnx_metadata},
        "tensorrt_version": plan.tensorrt_version,
        "gpu": {"name": plan.gpu.name, "compute_capability": plan.gpu.compute_capability},
        "precision": plan.path.precision,
        "build_path": plan.path.name,
        "profiles": [p.as_dict() for p in plan.profiles],
        "contexts": plan.contexts,
        "flags": plan.flags(),
        "io": io or [],
        "key_fields": plan.key_fields(),
        "cache_key": plan.cache_key(),
        "built_at": built_at,
        "build_seconds": round(build_seconds, 3),
        "package_version": package_version,
    }


def read_manifest(engine_path: str | Path) -> dict | None:
    """The manifest beside an engine, or None when there is none. Raises on an unreadable one."""
    path = manifest_path(engine_path)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EngineError(f"engine manifest {path} is unreadable ({type(exc).__name__}): "
                          "rebuild with --force") from None
    if not isinstance(manifest, dict) or "cache_key" not in manifest:
        raise EngineError(f"{path} is not an rtmw-edge engine manifest: rebuild with --force")
    return manifest


_FIELD_LABELS = {"onnx_sha256": "ONNX file changed", "onnx_metadata": "ONNX metadata changed",
                 "tensorrt_version": "TensorRT version", "gpu_name": "GPU", "compute_capability": "compute capability",
                 "precision": "precision", "build_path": "build path", "profiles": "optimization profiles",
                 "flags": "build flags", "builder_schema": "rtmw-edge builder version"}


def _short(value) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    if isinstance(value, list) and value and isinstance(value[0], dict) and "min" in value[0]:
        return "; ".join(f"{p['input']} {':'.join(str(s[0]) for s in (p['min'], p['opt'], p['max']))}"
                         for p in value)
    if isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 80 else text[:77] + "…"
    return str(value)


def key_differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two sets of key fields (old → new)."""
    diffs = []
    for key in sorted(set(old) | set(new), key=lambda k: list(_FIELD_LABELS).index(k) if k in _FIELD_LABELS else 99):
        if old.get(key) != new.get(key):
            label = _FIELD_LABELS.get(key, key)
            if key == "flags" and isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
                parts = [f"{k} {old[key].get(k)} → {new[key].get(k)}"
                         for k in sorted(set(old[key]) | set(new[key])) if old[key].get(k) != new[key].get(k)]
                diffs.append(f"{label}: {', '.join(parts)}")
            else:
                diffs.append(f"{label}: {_short(old.get(key))} → {_short(new.get(key))}")
    return diffs


@dataclass(frozen=True)
class EngineStatus:
    state: str                         # "current" | "missing" | "stale"
    reasons: tuple[str, ...] = ()

    @property
    def current(self) -> bool:
        return self.state == "current"

    def explain(self) -> str:
        return "; ".join(self.reasons) if self.reasons else self.state


def engine_status(engine_path: str | Path, key_fields: dict, *, verify_hash: bool = True) -> EngineStatus:
    """Is the engine at `engine_path` the one `key_fields` describe? Missing/stale come with reasons."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return EngineStatus("missing", (f"no engine at {engine_path}",))
    try:
        manifest = read_manifest(engine_path)
    except EngineError as exc:
        return EngineStatus("stale", (str(exc),))
    if manifest is None:
        return EngineStatus("stale", (f"no manifest {manifest_path(engine_path).name} beside the engine "
                                      "(built by another tool?)",))
    if manifest.get("cache_key") != cache_key(key_fields):
        diffs = key_differences(manifest.get("key_fields") or {}, key_fields)
        return EngineStatus("stale", tuple(diffs) or ("cache key differs",))
    size = engine_path.stat().st_size
    if manifest.get("engine_bytes") not in (None, size):
        return EngineStatus("stale", (f"engine file is {size} bytes, the manifest says {manifest['engine_bytes']}",))
    if verify_hash and manifest.get("engine_sha256") and file_sha256(engine_path) != manifest["engine_sha256"]:
        return EngineStatus("stale", ("engine file changed since it was built (sha256 differs from the manifest)",))
    return EngineStatus("current")


def check_compatible(engine_path: str | Path, manifest: dict, tensorrt_version: str, gpu: GpuInfo | None) -> None:
    """Raise one line naming both sides when the engine was built for another TensorRT version or GPU.
    `gpu` None (cannot identify the GPU here) checks the TensorRT version only."""
    built_trt = manifest.get("tensorrt_version")
    built_gpu = manifest.get("gpu") or {}
    built = GpuInfo(str(built_gpu.get("name")), str(built_gpu.get("compute_capability")))
    trt_differs = built_trt != tensorrt_version
    gpu_differs = gpu is not None and (built.name, built.compute_capability) != (gpu.name, gpu.compute_capability)
    if not (trt_differs or gpu_differs):
        return
    here = f"{gpu} with TensorRT {tensorrt_version}" if gpu is not None else f"TensorRT {tensorrt_version}"
    onnx = (manifest.get("onnx") or {}).get("path") or "MODEL.onnx"
    raise EngineMismatchError(f"{Path(engine_path).name} was built for {built} with TensorRT {built_trt}, but this "
                              f"machine has {here}: rebuild it here with `rtmw-edge build {onnx} --force`")


def onnx_precision(model, meta: dict | None) -> str:
    """fp32 | fp16 | int8 of an onnx.ModelProto: the metadata's word, else from the graph (Q/DQ → int8,
    FP16 initialisers or casts → fp16)."""
    if meta and meta.get("precision") in ("fp32", "fp16", "int8"):
        return meta["precision"]
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    from onnx import TensorProto

    if any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def describe_plan(plan: BuildPlan) -> list[str]:
    """The log lines of a build: path, GPU, profiles, workspace, DLA."""
    copies = f" (×{plan.contexts}: one per execution context)" if plan.contexts > 1 else ""
    lines = [plan.path.description, f"GPU: {plan.gpu}", f"profile: {format_profiles(plan.profiles)}{copies}",
             f"workspace: {format_bytes(plan.workspace_bytes)}"]
    if plan.dla_core is not None:
        lines.append(f"DLA core {plan.dla_core} with GPU fallback")
    return lines + plan.warnings


def plan_as_dict(plan: BuildPlan) -> dict:
    data = asdict(plan)
    data["onnx_path"], data["engine_path"] = str(plan.onnx_path), str(plan.engine_path)
    return data


# ----------------------------------------------------------------------------------------------- doctor
TENSORRT_PIP = "pip install tensorrt (the 'trt' extra of rtmw-edge; tensorrt-cu12/-cu13 wheels, TensorRT 10.x/11.x)"
NO_GPU = ("no NVIDIA GPU is visible here (no /dev/nvidia* device, not a Jetson), and TensorRT runs only on one: on "
          "this machine use the CPU pipeline (--backend onnxruntime, or auto with .onnx files); on a GPU machine "
          "install the NVIDIA driver, then " + TENSORRT_PIP)


def install_hints(env: dict) -> list[str]:
    """What is missing for the TensorRT path and how to install it, for Jetson (env['jetson']) or x86.

    `env` keys used: jetson (bool), tensorrt (version or None), cuda_python (version or None), gpus (list),
    nvrtc (version or None), onnxruntime_providers (list)."""
    jetson = bool(env.get("jetson"))
    hints = []
    if not env.get("gpus"):
        hints.append("no CUDA GPU visible: " + (
            "on Jetson run inside JetPack (containers: --runtime=nvidia)" if jetson else
            "install the NVIDIA driver (nvidia-smi must work); containers need --gpus all"))
    if not env.get("tensorrt"):
        hints.append("TensorRT: " + (
            "sudo apt install nvidia-jetpack (or python3-libnvinfer python3-libnvinfer-dev); JetPack 6 ships "
            "TensorRT 10.3 for the system Python 3.10 (in a venv use --system-site-packages)" if jetson else
            TENSORRT_PIP))
    if not env.get("cuda_python"):
        hints.append("cuda-python: " + (
            "pip install 'cuda-python>=12.4,<13' (matches JetPack 6's CUDA 12.6)" if jetson else
            "pip install cuda-python nvidia-cuda-nvrtc-cu12 (the 'gpu' extra)"))
    if not env.get("nvrtc"):
        hints.append("NVRTC (GPU kernels): " + (
            "sudo apt install cuda-nvrtc-12-6 (part of nvidia-jetpack)" if jetson else
            "pip install nvidia-cuda-nvrtc-cu12 (the 'gpu' extra)"))
    providers = env.get("onnxruntime_providers") or []
    if providers and "CUDAExecutionProvider" not in providers:
        hints.append("ONNX Runtime has no CUDA provider (CPU only; fine for the CPU pipeline): " + (
            "use NVIDIA's Jetson onnxruntime-gpu wheel (pypi.jetson-ai-lab.io)" if jetson else
            "pip install onnxruntime-gpu for GPU inference without TensorRT"))
    return hints
