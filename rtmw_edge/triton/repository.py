"""`rtmw-edge triton export`: a standard Triton model repository from a detector and a pose model.

    REPO/rtmw_detector/config.pbtxt   1/model.plan (TensorRT engine) | 1/model.onnx (+ 1/model.py: CPU variant)
    REPO/rtmw_pose/config.pbtxt       the same; max_batch_size + dynamic_batching (persons of all clients)
    REPO/rtmw_pipeline/config.pbtxt   1/model.py: Python backend (BLS) importing rtmw_edge.triton.models

Model kinds:
- `.engine` (from `rtmw-edge build`): `platform: "tensorrt_plan"`; the manifest beside the engine gives the
  I/O, the batch profile (pose: max_batch_size = profile max, preferred batch sizes = profile opt and max),
  the TensorRT version and the GPU (config comments + parameters: a plan runs only there).
- `.onnx`: `platform: "onnxruntime_onnx"` (GPU servers: NVIDIA's Triton image), or with `cpu=True` a
  Python-backend model that runs the ONNX with ONNX Runtime (`models.OnnxRuntimeModel`; CPU-only servers such
  as the `nvidia-pytriton` wheel, which has no ONNX Runtime backend). Pose batch: `pose_batch` MIN:OPT:MAX,
  else the toolkit's default profile (1:8:32). Detector: batch 1 (a fixed-batch graph: its shape).
- The pipeline model takes a raw BGR frame (`image` UINT8 [H,W,3]) or an encoded one (`encoded` UINT8 [N],
  JPEG/PNG bytes) and returns per-person `boxes`, `scores`, `keypoints`, `keypoint_scores` (+ `keypoints_3d`
  for RTMW3D) and `dropped`; optional inputs `det_threshold`, `max_persons`, `camera` (fx, fy, cx, cy).
  Everything it needs (detector signature, pose model info, model names) is one JSON value in its config's
  `rtmw_edge` parameter, which clients read too (`load_pipeline_parameters`).

Every input is read and checked before anything is written; the repository is built in a temporary folder
beside the target and renamed into place at the end.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

from .. import __version__
from ..backends import ENGINE_SUFFIXES
from ..backends.onnxruntime import OrtEngine
from ..engines import DEFAULT_POSE_BATCH, EngineError, file_sha256, manifest_path, parse_batch, read_manifest
from ..errors import OutputPathError, RtmwEdgeError, UsageError
from ..onnx_meta import read_metadata
from ..outputs import atomic_dir, check_output
from . import DET_MODEL, PIPELINE_MODEL, POSE_MODEL

REPOSITORY_SCHEMA = 1
PIPELINE_PARAMETER = "rtmw_edge"
DEFAULT_QUEUE_DELAY_US = 2000
DEFAULT_PIPELINE_INSTANCES = 4
_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                 "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
                 "bool": "TYPE_BOOL"}
SHIM = ("# Written by `rtmw-edge triton export`. The model's code is the toolkit's own ({module}); the server's\n"
        "# Python environment needs rtmw-edge installed (docs/triton.md).\n"
        "from rtmw_edge.triton.models import {cls} as TritonPythonModel  # noqa: F401\n")


class TritonExportError(RtmwEdgeError):
    """A model file that cannot go into a Triton repository (missing, wrong role, engine without manifest...)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str                   # numpy dtype name
    shape: tuple[int, ...]       # full shape, batch first; -1 = dynamic


@dataclass
class ModelFile:
    """One detector or pose model as the repository sees it."""

    role: str                            # "det" | "pose"
    path: Path
    kind: str                            # "onnx" | "engine"
    inputs: list[Tensor]
    outputs: list[Tensor]
    batch: tuple[int, int, int] | None   # (min, opt, max) of a dynamic batch dim; None: fixed (inputs[0].shape[0])
    title: str                           # what it is, for the config comment
    extra_files: list[str] = field(default_factory=list)   # ONNX external data beside the file
    tensorrt_version: str | None = None
    gpu: str | None = None
    signature: object | None = None      # detectors.DetectorSignature (det)
    info: object | None = None           # pipeline.PoseModelInfo (pose)

    @property
    def max_batch_size(self) -> int:
        """Triton's max_batch_size: 0 for a fixed-batch model (its dims carry the batch)."""
        return 0 if self.batch is None else self.batch[2]


# ----------------------------------------------------------------------------------------------- reading
def _onnx_tensors(values, exclude=()) -> list[Tensor]:
    import onnx

    from ..detectors import _value_infos

    out = []
    for t in _value_infos(values, exclude):
        if t.shape is None or not t.elem_type:
            raise TritonExportError(f"tensor {t.name!r} has no known type/rank: re-export the model")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        out.append(Tensor(t.name, dtype, tuple(-1 if d is None else int(d) for d in t.shape)))
    return out


def _external_files(model) -> list[str]:
    from onnx import TensorProto

    files = {e.value for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    return sorted(files)


def _role_flag(role: str) -> str:
    return "--det" if role == "det" else "--pose"


def _onnx_model_file(path: Path, role: str, pose_batch: tuple[int, int, int] | None,
                     pose_spec: str | None = None) -> ModelFile:
    from ..detectors import UnknownDetectorError, _load, inspect_detector

    model, _ = _load(path)  # one line for an unreadable / empty file
    initializers = {i.name for i in model.graph.initializer}
    inputs, outputs = _onnx_tensors(model.graph.input, initializers), _onnx_tensors(model.graph.output)
    if len(inputs) != 1:
        raise TritonExportError(f"{path} has {len(inputs)} inputs; detector and pose models have one image input")
    meta = read_metadata(model)
    missing = [f for f in _external_files(model) if not (path.parent / f).is_file()]
    if missing:
        raise TritonExportError(f"{path}: external data file(s) not found beside it: {', '.join(missing)}")
    dynamic = inputs[0].shape[0] == -1
    mf = ModelFile(role, path, "onnx", inputs, outputs, None, "", extra_files=_external_files(model))
    if role == "det":
        try:
            mf.signature = inspect_detector(model, name=str(path))
        except UnknownDetectorError as exc:
            raise TritonExportError(f"--det: {exc}") from None
        mf.batch = (1, 1, 1) if dynamic else None  # one frame per call (mmdeploy's e2e graphs fail at batch 2)
        mf.title = f"person detector ({mf.signature.kind}, input {mf.signature.input_size[0]}x" \
                   f"{mf.signature.input_size[1]})"
        return mf
    if meta is not None and meta.get("task") == "detector":
        raise TritonExportError(f"--pose {path} is a detector ({meta.get('name')}), not a pose model: check --pose")
    from ..pipeline import pose_info

    mf.info = pose_info(OrtEngine(path, threads=1), pose_spec)  # foreign graphs: --pose-spec or the SDK JSON
    if dynamic:
        mf.batch = pose_batch or DEFAULT_POSE_BATCH
    elif pose_batch is not None:
        raise TritonExportError(f"--pose-batch: {path.name} has a fixed batch of {inputs[0].shape[0]}; export it "
                                "with a dynamic batch for dynamic batching")
    mf.title = _pose_title(mf.info)
    return mf


def _pose_title(info) -> str:
    return f"pose model {info.name} ({info.task}, {info.num_keypoints} keypoints, input {info.input_size[0]}x" \
           f"{info.input_size[1]})"


def _engine_model_file(path: Path, role: str, pose_batch) -> ModelFile:
    from ..detectors import project_signature
    from ..pipeline import pose_info

    if pose_batch is not None and role == "pose":
        raise TritonExportError("--pose-batch applies to ONNX files; an engine's batch comes from its build profile "
                                "(rtmw-edge build --batch MIN:OPT:MAX)")
    try:
        manifest = read_manifest(path)
    except EngineError as exc:
        raise TritonExportError(str(exc)) from None
    if manifest is None:
        raise TritonExportError(f"{_role_flag(role)} {path}: no manifest {manifest_path(path).name} beside the engine "
                                "(it carries the I/O, batch profile, TensorRT version and GPU): build it with "
                                "`rtmw-edge build`")
    size = path.stat().st_size
    if manifest.get("engine_bytes") not in (None, size) or (
            manifest.get("engine_sha256") and file_sha256(path) != manifest["engine_sha256"]):
        raise TritonExportError(f"{_role_flag(role)} {path} does not match its manifest {manifest_path(path).name} "
                                "(the engine changed since it was built): rebuild it with `rtmw-edge build --force`")
    io = manifest.get("io") or []
    if not io or not any(t.get("mode") == "input" for t in io):
        raise TritonExportError(f"{manifest_path(path).name} lists no engine I/O: rebuild with `rtmw-edge build "
                                "--force`")
    meta = (manifest.get("onnx") or {}).get("metadata")
    task = (meta or {}).get("task")
    inputs = [Tensor(t["name"], t["dtype"], tuple(int(d) for d in t["shape"])) for t in io if t["mode"] == "input"]
    outputs = [Tensor(t["name"], t["dtype"], tuple(int(d) for d in t["shape"])) for t in io if t["mode"] == "output"]
    if len(inputs) != 1:
        raise TritonExportError(f"{path} has {len(inputs)} inputs; detector and pose engines have one image input")
    batch = None
    if inputs[0].shape[0] == -1:
        profile = next(t for t in io if t["mode"] == "input").get("profile")
        if not profile or len(profile) != 3:
            raise TritonExportError(f"{manifest_path(path).name}: the input has a dynamic batch but no profile")
        batch = (int(profile[0][0]), int(profile[1][0]), int(profile[2][0]))
    gpu = manifest.get("gpu") or {}
    mf = ModelFile(role, path, "engine", inputs, outputs, batch, "", tensorrt_version=str(manifest.get(
        "tensorrt_version")), gpu=f"{gpu.get('name')} (compute {gpu.get('compute_capability')})")
    if role == "det":
        if task != "detector":
            what = f"a {task} model" if task else "not a detector built by rtmw-edge (no metadata in its manifest)"
            raise TritonExportError(f"--det {path} is {what}: check --det (foreign detectors go in as ONNX)")
        sig = mf.signature = project_signature(meta, inputs[0].name, tuple(meta["input_size"]))
        mf.title = f"person detector {meta.get('name')} (input {sig.input_size[0]}x{sig.input_size[1]})"
        return mf
    if task == "detector":
        raise TritonExportError(f"--pose {path} is a detector ({meta.get('name')}), not a pose model: check --pose")
    stand_in = SimpleNamespace(path=path, metadata=meta, output_names=[t.name for t in outputs],
                               input_shape=inputs[0].shape)
    mf.info = pose_info(stand_in)  # raises for an engine whose manifest carries no rtmw_edge metadata
    mf.title = _pose_title(mf.info)
    return mf


def read_model_file(path: str | Path, role: str, pose_batch: tuple[int, int, int] | None = None,
                    pose_spec: str | None = None) -> ModelFile:
    """Read and check a detector (`role` "det") or pose model (.onnx or built .engine with its manifest)."""
    path = Path(path)
    if not path.is_file():
        raise TritonExportError(f"{_role_flag(role)} model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        return _engine_model_file(path, role, pose_batch)
    if suffix == ".onnx":
        return _onnx_model_file(path, role, pose_batch, pose_spec)
    raise TritonExportError(f"{_role_flag(role)} {path}: expected an .onnx file or a TensorRT engine "
                            f"({', '.join(ENGINE_SUFFIXES)}) built by `rtmw-edge build`")


# ----------------------------------------------------------------------------------------------- configs
def _q(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor_line(t: Tensor, batched: bool, optional: bool = False) -> str:
    if t.dtype not in _TRITON_TYPES:
        raise TritonExportError(f"tensor {t.name!r} has type {t.dtype}, which Triton configs here do not map")
    dims = t.shape[1:] if batched else t.shape
    if not dims:
        raise TritonExportError(f"tensor {t.name!r} has no dimensions besides the batch")
    extra = " optional: true" if optional else ""
    shape = ", ".join(map(str, dims))
    return f"  {{ name: {_q(t.name)} data_type: {_TRITON_TYPES[t.dtype]} dims: [ {shape} ]{extra} }}"


def _io_block(key: str, tensors: list[tuple[Tensor, bool]], batched: bool) -> str:
    return f"{key} [\n" + ",\n".join(_tensor_line(t, batched, opt) for t, opt in tensors) + "\n]\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f"parameters {{ key: {_q(k)} value: {{ string_value: {_q(v)} }} }}\n" for k, v in params.items())


def preferred_batch_sizes(batch: tuple[int, int, int]) -> list[int]:
    """The dynamic batcher's preferred sizes: the profile's optimum and its maximum."""
    return sorted({batch[1], batch[2]} - {0})


def model_config(mf: ModelFile, name: str, *, cpu: bool = False, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                 threads: int = 0) -> str:
    """config.pbtxt of a detector or pose model."""
    lines = [f"# rtmw-edge {__version__}: {mf.title}", f"# from {mf.path.name}"]
    params: dict[str, str] = {}
    if mf.kind == "engine":
        lines.append(f"# TensorRT {mf.tensorrt_version} plan built for {mf.gpu}: it runs only on that GPU model "
                     "with that TensorRT version (the server's image must match)")
        params = {"rtmw_edge_tensorrt_version": mf.tensorrt_version or "", "rtmw_edge_gpu": mf.gpu or ""}
        head = 'platform: "tensorrt_plan"'
    elif cpu:
        lines.append("# CPU variant: ONNX Runtime inside the Python backend (rtmw_edge.triton.models.OnnxRuntimeModel)")
        params = {"onnx_file": "model.onnx", "threads": str(threads)}
        head = 'backend: "python"'
    else:
        head = 'platform: "onnxruntime_onnx"'
    batched = mf.batch is not None
    text = "\n".join(lines) + "\n" + f"name: {_q(name)}\n{head}\nmax_batch_size: {mf.max_batch_size}\n"
    text += _io_block("input", [(t, False) for t in mf.inputs], batched)
    text += _io_block("output", [(t, False) for t in mf.outputs], batched)
    if batched and mf.batch[2] > 1:
        sizes = ", ".join(map(str, preferred_batch_sizes(mf.batch)))
        text += (f"dynamic_batching {{ preferred_batch_size: [ {sizes} ] "
                 f"max_queue_delay_microseconds: {int(queue_delay_us)} }}\n")
    kind = "KIND_GPU" if mf.kind == "engine" else ("KIND_CPU" if cpu else None)
    text += f"instance_group [ {{ count: 1{' kind: ' + kind if kind else ''} }} ]\n"
    return text + _parameters(params)


# ----------------------------------------------------------------------------------- pipeline parameters
def _engine_spec(mf: ModelFile, model: str) -> dict:
    t = mf.inputs[0]
    return {"model": model, "input": t.name, "input_dtype": t.dtype,
            "input_shape": [None if d == -1 else d for d in t.shape] if mf.batch is None
            else [None, *[None if d == -1 else d for d in t.shape[1:]]],
            "max_batch": mf.batch[2] if mf.batch else None, "outputs": [o.name for o in mf.outputs]}


def pipeline_parameters(det: ModelFile, pose: ModelFile, *, det_model: str = DET_MODEL, pose_model: str = POSE_MODEL,
                        flip_test: bool = False, det_threshold: float = 0.3, nms_iou: float = 0.3,
                        max_persons: int = 32) -> dict:
    """Everything the pipeline model (and a client) needs, as one JSON-able dict."""
    return {"schema": REPOSITORY_SCHEMA, "package_version": __version__,
            "detector": {**_engine_spec(det, det_model), "signature": asdict(det.signature), "file": det.path.name},
            "pose": {**_engine_spec(pose, pose_model), "info": asdict(pose.info), "file": pose.path.name},
            "flip_test": bool(flip_test), "det_threshold": float(det_threshold), "nms_iou": float(nms_iou),
            "max_persons": int(max_persons)}


@dataclass(frozen=True)
class PipelineParameters:
    raw: dict
    detector: dict            # engine spec (model, input, input_dtype, input_shape, max_batch, outputs)
    signature: object         # detectors.DetectorSignature
    pose: dict
    info: object              # pipeline.PoseModelInfo

    def __getitem__(self, key: str):
        return self.raw[key]


def load_pipeline_parameters(text: str) -> PipelineParameters:
    """Parse the pipeline's `rtmw_edge` parameter (JSON) back into the toolkit's types."""
    from ..detectors import DetectorSignature
    from ..pipeline import PoseModelInfo

    try:
        raw = json.loads(text)
    except (TypeError, ValueError):
        raise RtmwEdgeError(f"the pipeline model's '{PIPELINE_PARAMETER}' parameter is not JSON") from None
    if raw.get("schema") != REPOSITORY_SCHEMA:
        raise RtmwEdgeError(f"the pipeline model was exported with repository schema {raw.get('schema')}, this "
                            f"rtmw-edge ({__version__}) reads schema {REPOSITORY_SCHEMA}: re-export the repository")
    sig = dict(raw["detector"]["signature"])
    for key in ("input_size", "mean", "std", "strides"):
        sig[key] = tuple(sig[key])
    info = dict(raw["pose"]["info"])
    for key in ("input_size", "mean", "std"):
        info[key] = tuple(info[key])
    info["focal"] = tuple(info["focal"]) if info.get("focal") else None
    info["outputs"] = tuple(info.get("outputs") or ())
    return PipelineParameters(raw, raw["detector"], DetectorSignature(**sig), raw["pose"], PoseModelInfo(**info))


def pipeline_config(params: dict, name: str = PIPELINE_MODEL, instances: int = DEFAULT_PIPELINE_INSTANCES) -> str:
    """config.pbtxt of the Python-backend pipeline model."""
    k = int(params["pose"]["info"]["num_keypoints"])
    three_d = params["pose"]["info"]["task"] == "pose3d"
    inputs = [(Tensor("image", "uint8", (-1, -1, 3)), True), (Tensor("encoded", "uint8", (-1,)), True),
              (Tensor("det_threshold", "float32", (1,)), True), (Tensor("max_persons", "int32", (1,)), True),
              (Tensor("camera", "float32", (4,)), True)]
    outputs = [Tensor("boxes", "float32", (-1, 4)), Tensor("scores", "float32", (-1,)),
               Tensor("keypoints", "float32", (-1, k, 2)), Tensor("keypoint_scores", "float32", (-1, k))]
    if three_d:
        outputs.append(Tensor("keypoints_3d", "float32", (-1, k, 3)))
    outputs.append(Tensor("dropped", "int32", (1,)))
    text = (f"# rtmw-edge {__version__}: frame (raw BGR `image` or JPEG/PNG `encoded`) → persons, with the toolkit's\n"
            f"# own pre/post-processing (rtmw_edge.triton.models.PipelineModel) around {params['detector']['model']} "
            f"and {params['pose']['model']} (BLS)\n"
            f"name: {_q(name)}\nbackend: \"python\"\nmax_batch_size: 0\n")
    text += _io_block("input", inputs, False)
    text += _io_block("output", [(t, False) for t in outputs], False)
    text += f"instance_group [ {{ count: {int(instances)} kind: KIND_CPU }} ]\n"
    return text + _parameters({PIPELINE_PARAMETER: json.dumps(params, sort_keys=True, separators=(",", ":"))})


# ----------------------------------------------------------------------------------------------- writing
@dataclass
class ExportResult:
    repository: Path
    models: dict[str, str]           # model name → platform/backend
    det: ModelFile
    pose: ModelFile


def _copy(src: Path, dst: Path, progress=None) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if progress is not None:
        progress()


def export_repository(det: str | Path, pose: str | Path, output: str | Path, *, cpu: bool = False,
                      pose_batch: str | None = None, flip_test: bool = False, det_threshold: float = 0.3,
                      nms_iou: float = 0.3, max_persons: int = 32, pipeline_name: str = PIPELINE_MODEL,
                      instances: int = DEFAULT_PIPELINE_INSTANCES, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                      threads: int = 0, force: bool = False, progress: bool = True, console=None,
                      pose_spec: str | None = None) -> ExportResult:
    """Write the repository (see the module doc); `det`/`pose` are model files or registered names.

    Checks the options, then `output` (rtmw_edge.outputs: never over an input; an existing non-empty folder only
    with `force`), then every input; writes atomically (`atomic_dir`: a temporary folder beside `output`,
    renamed into place at the end)."""
    from ..pipeline import TopDownPose

    if instances < 1 or max_persons < 1 or queue_delay_us < 0 or threads < 0:
        raise UsageError("--instances and --max-persons must be at least 1; --queue-delay-us and --threads at least 0")
    if not 0.0 <= det_threshold <= 1.0 or not 0.0 < nms_iou <= 1.0:
        raise UsageError("--det-threshold must be in [0, 1] and --nms-iou in (0, 1]")
    if not pipeline_name or not pipeline_name.replace("_", "").replace("-", "").isalnum() or \
            pipeline_name in (DET_MODEL, POSE_MODEL):
        raise UsageError(f"--name {pipeline_name!r}: a plain model name (letters, digits, _ and -) other than "
                         f"{DET_MODEL} and {POSE_MODEL}")
    try:
        batch = parse_batch(pose_batch) if pose_batch is not None else None
    except EngineError as exc:
        raise UsageError(str(exc).replace("--batch", "--pose-batch")) from None
    target = check_output(output, option="-o", inputs=[det, pose], kind="dir")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise OutputPathError(f"-o {output} exists and is not empty: pass --force to replace it")
    from ..pipeline import resolve_models

    det, pose = resolve_models(det, pose)  # registered names: their cached exports (downloaded once)
    det_file, pose_file = read_model_file(det, "det"), read_model_file(pose, "pose", batch, pose_spec)
    if cpu and "engine" in (det_file.kind, pose_file.kind):
        raise TritonExportError("--cpu serves ONNX files with ONNX Runtime in the Python backend; TensorRT engines "
                                "need a GPU server (drop --cpu, or pass the .onnx files)")
    TopDownPose(SimpleNamespace(path=pose_file.path), flip_test, info=pose_file.info)  # --flip-test fits the model?

    params = pipeline_parameters(det_file, pose_file, flip_test=flip_test, det_threshold=det_threshold,
                                 nms_iou=nms_iou, max_persons=max_persons)
    steps = 2 + sum(1 + len(f.extra_files) for f in (det_file, pose_file))
    from ..progress import progress_bar

    with atomic_dir(target) as tmp, progress_bar(console=console, disable=not progress) as bar:
        task = bar.add_task(f"triton export → {output}", total=steps)

        def advance() -> None:
            bar.advance(task)

        models = {}
        for mf, name in ((det_file, DET_MODEL), (pose_file, POSE_MODEL)):
            folder = tmp / name
            if mf.kind == "engine":
                _copy(mf.path, folder / "1" / "model.plan", advance)
                models[name] = "tensorrt_plan"
            else:
                _copy(mf.path, folder / "1" / "model.onnx", advance)
                for extra in mf.extra_files:
                    _copy(mf.path.parent / extra, folder / "1" / extra, advance)
                if cpu:
                    (folder / "1" / "model.py").write_text(
                        SHIM.format(module="rtmw_edge/triton/models.py", cls="OnnxRuntimeModel"))
                models[name] = "python (ONNX Runtime)" if cpu else "onnxruntime_onnx"
            (folder / "config.pbtxt").write_text(model_config(mf, name, cpu=cpu, queue_delay_us=queue_delay_us,
                                                              threads=threads))
        folder = tmp / pipeline_name
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.py").write_text(SHIM.format(module="rtmw_edge/triton/models.py", cls="PipelineModel"))
        (folder / "config.pbtxt").write_text(pipeline_config(params, pipeline_name, instances))
        models[pipeline_name] = "python (BLS pipeline)"
        bar.advance(task, 2)
    return ExportResult(Path(output), models, det_file, pose_file)
