"""`open_estimator`: the one place where a backend name becomes a pipeline.

    from rtmw_edge import open_estimator
    estimator = open_estimator("rtmdet-nano-person", "rtmw-m-256x192")      # backend="auto"
    result = estimator(image)                                                # FrameResult

| backend (`backends.BACKENDS`)         | pipeline    | object                                                 |
|---------------------------------------|-------------|--------------------------------------------------------|
| onnxruntime                           | cpu         | `pipeline.PoseEstimator` (ONNX Runtime)                 |
| tensorrt, torch-cuda, onnxruntime-gpu | cuda-stream | `cuda.gpu_pipeline.GpuPoseEstimator`                        |
| triton                                | remote      | `triton.client.TritonPoseEstimator`                     |
| auto                                  | cuda-stream | when both models are TensorRT engines, the tensorrt     |
|                                       |             | backend can run here (GPU, TensorRT, cuda-python) and   |
|                                       |             | no option needs the CPU pipeline                         |
|                                       | cpu         | otherwise (host engines by file suffix)                 |

Every estimator returned is called the same way — ``estimator(image, frame=0, timestamp=0.0) -> FrameResult`` —
and is a model with a stream of its own: ``estimator.open_stream(track=…, det_interval=…, camera=…)`` gives
more streams over the same engines (`streams.open_stream` for any estimator; the daemon opens one per camera).

Options a pipeline cannot honour are refused in one line before any model is loaded (a usage error) —
``det_interval`` > 1 (skip-frame detection) runs in the CPU pipeline only; host-side flip test too (the
CUDA-stream pipeline runs pose models exported with ``--flip-test``); GPU settings (``device``, ``cuda_graphs``,
``profile``, …) belong to the CUDA-stream pipeline, the Triton settings (``triton_url``, ``timeout``, …) to the
remote one. With ``auto``, an option that needs the CPU pipeline makes auto pick it (and `choose_pipeline`
says why).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .backends import ENGINE_SUFFIXES, availability, get_backend
from .cuda.gpu_pipeline import GpuPoseEstimator
from .engines import read_manifest
from .errors import MissingDependencyError, UsageError
from .onnx_meta import read_metadata
from .pipeline import PoseEstimator
from .triton.client import TritonPoseEstimator

log = logging.getLogger("rtmw_edge")

DEFAULT_DET = "rtmdet-nano-person"
DEFAULT_POSE = "rtmw-m-256x192"

# every option and its default, by the pipelines that honour it
COMMON = {"flip_test": False, "max_persons": 32, "det_threshold": 0.3, "kpt_threshold": 0.3, "track": False,
          "smooth": False, "smoothing": None, "camera": None}
LOCAL = {"nms_iou": 0.3, "threads": None, "pose_spec": None}            # cpu and cuda-stream
CPU_ONLY = {"det_interval": 1}
GPU_ONLY = {"device": 0, "cuda_graphs": False, "match_cpu_rounding": False, "profile": False,
            "blocking_sync": None, "allow_tf32": False}
REMOTE_ONLY = {"triton_url": None, "triton_model": "rtmw_pipeline", "timeout": 10.0, "retries": 3, "backoff": 0.25,
               "ready_timeout": 60.0, "encoding": "raw"}
OPTIONS = {"cpu": {**COMMON, **LOCAL, **CPU_ONLY}, "cuda-stream": {**COMMON, **LOCAL, **GPU_ONLY},
           "remote": {**COMMON, **REMOTE_ONLY}}
ALL_OPTIONS = {**COMMON, **LOCAL, **CPU_ONLY, **GPU_ONLY, **REMOTE_ONLY}
WHERE = {**dict.fromkeys(CPU_ONLY, "the CPU pipeline (--backend onnxruntime, or auto)"),
         **dict.fromkeys(GPU_ONLY, "the CUDA-stream pipeline (--backend tensorrt, torch-cuda or onnxruntime-gpu)"),
         **dict.fromkeys(REMOTE_ONLY, "the remote pipeline (--backend triton)"),
         **dict.fromkeys(LOCAL, "the local pipelines (a Triton server's repository decides these)")}


@dataclass(frozen=True)
class PipelineChoice:
    """What a backend name means for these models here."""

    backend: str       # the backend that runs the engines (auto stays auto on the CPU pipeline: engines by suffix)
    pipeline: str      # cpu | cuda-stream | remote
    why: str           # one line: the rule that decided (for logs and `eval --help`)


def _is_engine(spec) -> bool:
    return spec is not None and Path(str(spec)).suffix.lower() in ENGINE_SUFFIXES


def flip_in_graph(pose) -> bool:
    """Whether the pose model does flip test inside its graph (exported with --flip-test): from an ONNX's
    metadata or an engine's manifest; registered names export without it; a foreign graph has none."""
    path = Path(str(pose))
    if _is_engine(path):
        manifest = read_manifest(path) if path.is_file() else None
        meta = ((manifest or {}).get("onnx") or {}).get("metadata")
    elif path.suffix.lower() == ".onnx" and path.is_file():
        meta = read_metadata(path)
    else:
        return False
    return bool((meta or {}).get("flip_test"))


def _cpu_only_reason(pose, flip_test: bool, det_interval: int) -> str | None:
    if det_interval > 1:
        return f"det_interval {det_interval} (skip-frame detection) runs in the CPU pipeline"
    if flip_test and not flip_in_graph(pose):
        return "host-side flip test runs in the CPU pipeline (the CUDA-stream pipeline runs pose models exported " \
               "with --flip-test)"
    return None


def choose_pipeline(det, pose, backend: str = "auto", *, flip_test: bool = False,
                    det_interval: int = 1) -> PipelineChoice:
    """Which pipeline BACKEND means for DET and POSE here, before anything is loaded (see the module doc).
    Raises a usage error for an option the backend's pipeline cannot honour, and `MissingDependencyError`
    (one line with every missing piece) for a CUDA-stream backend that cannot run here."""
    row = get_backend(backend)
    if row.pipeline == "remote":
        availability(backend).require()
        return PipelineChoice(backend, "remote", "the Triton server's pipeline model runs both models")
    if row.pipeline == "cpu":
        return PipelineChoice(backend, "cpu", f"--backend {backend}: the CPU pipeline")
    if row.pipeline == "cuda-stream":
        if det_interval > 1:
            raise UsageError(f"det_interval {det_interval}: skip-frame detection runs in the CPU pipeline; the "
                             f"CUDA-stream pipeline (--backend {backend}) detects on every frame: use --backend auto "
                             "(TensorRT engines included) or onnxruntime")
        if flip_test and not flip_in_graph(pose):
            raise UsageError(f"flip test: the CUDA-stream pipeline (--backend {backend}) runs it inside the pose "
                             "graph only: export the pose model with --flip-test (then drop the flag), or use "
                             "--backend auto / onnxruntime for the CPU pipeline's flip test")
        availability(backend).require()
        return PipelineChoice(backend, "cuda-stream", f"--backend {backend}: the CUDA-stream pipeline")
    # auto
    if not (_is_engine(det) and _is_engine(pose)):
        kinds = "ONNX models" if not (_is_engine(det) or _is_engine(pose)) else "an ONNX model beside an engine"
        return PipelineChoice("auto", "cpu", f"auto: {kinds}: the CPU pipeline (engines by file suffix)")
    reason = _cpu_only_reason(pose, flip_test, det_interval)
    if reason is not None:
        return PipelineChoice("auto", "cpu", f"auto: {reason} (TensorRT engines as host engines)")
    tensorrt = availability("tensorrt")  # engines need TensorRT and a GPU whatever the pipeline
    if not tensorrt.available:
        raise MissingDependencyError(f"--backend auto: {Path(str(det)).name} and {Path(str(pose)).name} are TensorRT "
                                     f"engines, and the tensorrt backend cannot run here: {tensorrt.reason}")
    return PipelineChoice("tensorrt", "cuda-stream", "auto: TensorRT engines and a GPU: the CUDA-stream pipeline")


def _check_options(pipeline: str, backend: str, options: dict) -> None:
    unknown = sorted(set(options) - set(ALL_OPTIONS))
    if unknown:
        raise UsageError(f"unknown estimator option(s): {', '.join(unknown)}")
    for key, value in options.items():
        if key not in OPTIONS[pipeline] and value != ALL_OPTIONS[key]:
            raise UsageError(f"{key} applies to {WHERE[key]}; --backend {backend} runs the {pipeline} pipeline")


def open_estimator(det=DEFAULT_DET, pose=DEFAULT_POSE, backend: str = "auto", **options):
    """An estimator for DET and POSE on BACKEND (see the module doc): ``estimator(image, frame=0, timestamp=0.0)
    -> FrameResult``, plus ``open_stream(...)`` for more streams over the same models.

    det / pose: model files (.onnx, TensorRT .engine), mmdeploy SDK folders or registered names (exported once);
    ignored by ``triton`` (the server's repository decides). Options: see `ALL_OPTIONS` and the module doc."""
    choice = choose_pipeline(det, pose, backend, flip_test=bool(options.get("flip_test")),
                             det_interval=options.get("det_interval", 1))
    _check_options(choice.pipeline, backend, options)
    if choice.why and backend == "auto":
        log.info("%s", choice.why)
    given = {k: v for k, v in options.items() if k in OPTIONS[choice.pipeline]}
    if choice.pipeline == "remote":
        url = given.pop("triton_url", None)
        if not url:
            raise UsageError("--backend triton needs --triton-url HOST:PORT (gRPC; http://HOST:PORT for HTTP)")
        given["model"] = given.pop("triton_model", REMOTE_ONLY["triton_model"])
        given.pop("kpt_threshold", None)  # a drawing threshold here: the server keeps every keypoint
        return TritonPoseEstimator(url, **given)
    if choice.pipeline == "cuda-stream":
        return GpuPoseEstimator(det, pose, backend=choice.backend, **given)
    return PoseEstimator(det, pose, backend=choice.backend, **given)


# --------------------------------------------------------------------------- what runs (the honest report)
def _engine_backend(engine: object) -> str:
    """The backend of an engine object: its `backend` name when it states one, else the module that defines its
    class (backends/<name>.py)."""
    stated = getattr(engine, "backend", None)
    if isinstance(stated, str):
        return stated
    return type(engine).__module__.rsplit(".", 1)[-1].replace("_", "-")


def pipeline_of(estimator: object) -> str:
    """cpu | cuda-stream | remote, or "custom" for an estimator from elsewhere."""
    pipeline = getattr(estimator, "pipeline", None)
    if isinstance(pipeline, str):
        return pipeline
    if type(estimator).__module__.startswith("rtmw_edge.cuda"):
        return "cuda-stream"
    return "custom"


def active_backends(estimator: object) -> dict[str, str]:
    """What actually runs ESTIMATOR: {"det": backend, "pose": backend, "pipeline": pipeline}. "triton" for the
    Triton client (the server runs both); "custom" for an estimator from elsewhere (tests, embedding code)."""
    pipeline = pipeline_of(estimator)
    if pipeline == "remote":
        return {"det": "triton", "pose": "triton", "pipeline": pipeline}
    det_engine, pose_engine = getattr(estimator, "det_engine", None), getattr(estimator, "pose_engine", None)
    if det_engine is not None and pose_engine is not None:  # the CUDA-stream pipeline's device engines
        return {"det": _engine_backend(det_engine), "pose": _engine_backend(pose_engine), "pipeline": pipeline}
    det, pose = getattr(estimator, "detector", None), getattr(estimator, "pose", None)
    if det is None or not hasattr(pose, "engine"):
        return {"det": "custom", "pose": "custom", "pipeline": pipeline}
    # an OnnxDetector runs its own ONNX Runtime session; an EngineDetector wraps an engine
    det_backend = _engine_backend(det.engine) if hasattr(det, "engine") else "onnxruntime"
    return {"det": det_backend, "pose": _engine_backend(pose.engine), "pipeline": pipeline}


def backend_summary(backends: dict[str, str]) -> str:
    """"onnxruntime (cpu)", "tensorrt (cuda-stream)", "det tensorrt, pose onnxruntime (cpu)", "custom"."""
    engines = backends["det"] if backends["det"] == backends["pose"] else \
        f"det {backends['det']}, pose {backends['pose']}"
    pipeline = backends.get("pipeline")
    return engines if pipeline in (None, "custom") else f"{engines} ({pipeline})"
