"""The CPU pipeline (the reference): one frame → people → keypoints, with host engines (ONNX Runtime, or TensorRT
engines behind the host interface). `PoseModel` holds the engines and runs detect / pose / infer with no memory of
past frames; `streams.PoseStream` holds one stream's state (skip-frame schedule, tracker); `PoseEstimator` is a
model with one stream of its own. `estimators.open_estimator` decides when a backend name means this pipeline.

Readable top to bottom (rtmw_facts §3):
  detector: letterbox (BGR, pad 114, detector mean/std) → engine → boxes/scores → person NMS
  → keep at most `max_persons` (highest scores)
    [video with det_interval N: the detector only every N-th frame, boxes from the last keypoints between]
  → top-down crops: box ×1.25, aspect fix, cv2.warpAffine bilinear, border 0, BGR→RGB, pose mean/std
  → ONE batched pose inference for all persons (chunked at the engine's max batch)
  → SimCC decode (optionally flip test) → image coordinates (→ camera-space 3D for RTMW3D)
  → tracking / smoothing → `FrameResult`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import export
from . import geometry as G
from .backends import Engine, chunk_count, load_engine, run_chunked
from .backends import onnxruntime as ort_backend
from .detectors import EngineDetector, OnnxDetector
from .downloads import fetch, home_dir
from .errors import CheckpointError, DownloadError, RtmwEdgeError, UsageError
from .export import DECODED_OUTPUTS, POSE_OUTPUTS
from .pose_models import pose_metadata, sdk_files, sdk_model_file
from .results import FrameResult
from .streams import FrameArrays, PoseStream
from .zoo import get_spec

log = logging.getLogger("rtmw_edge")
# what every "no checkpoint" error adds: the way on without a network
OFFLINE_MODELS = ("or give --det/--pose ONNX files (your own, or `rtmw-edge export rtmw-m-256x192 --random-init -o "
                  "rtmw-m.onnx`: random weights, to try the pipeline with)")


@dataclass(frozen=True)
class PoseModelInfo:
    """What the pipeline needs to know about a pose graph (from its metadata, or inferred)."""

    name: str
    task: str                      # pose2d | pose3d
    input_size: tuple[int, int]    # (w, h)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    swap_rb: bool                  # BGR frame → RGB before mean/std
    split_ratio: float
    num_keypoints: int
    keypoint_set: str | None
    flip_indices: list[int] = field(default_factory=list)
    decoded: bool = False
    flip_in_graph: bool = False
    z_range: float | None = None
    root_z: float | None = None
    focal: tuple[float, float] | None = None
    outputs: tuple[str, ...] = ()  # graph output names in role order (simcc_x, simcc_y[, simcc_z] or decoded)


def pose_info(engine: Engine, pose_spec: str | None = None) -> PoseModelInfo:
    """What the pipeline needs to know about a pose engine: its metadata (our exports; TensorRT engines carry
    it in their manifest), else — for a foreign ONNX (mmdeploy / rtmlib / mmpose export) — the description
    `pose_models.pose_metadata` builds from its signature and `pose_spec` or the SDK JSON beside it."""
    meta = engine.metadata
    if meta is None:
        if not hasattr(engine, "session"):
            raise RtmwEdgeError(f"{engine.path.name} has no rtmw_edge metadata (engines built by `rtmw-edge build` "
                                "carry it in their manifest)")

        meta = pose_metadata(engine.path, pose_spec, session=engine.session)  # type: ignore[attr-defined]
    if meta.get("task") not in ("pose2d", "pose3d"):
        raise RtmwEdgeError(f"{engine.path.name} is a {meta.get('task')} model ({meta.get('name')}), "
                            "not a pose model: check --det/--pose")
    return PoseModelInfo(
        name=meta["name"], task=meta["task"], input_size=tuple(meta["input_size"]), mean=tuple(meta["mean"]),
        std=tuple(meta["std"]), swap_rb=meta.get("color", "rgb") == "rgb",
        split_ratio=float(meta.get("simcc_split_ratio", 2.0)), num_keypoints=int(meta["num_keypoints"]),
        keypoint_set=meta.get("keypoint_set"), flip_indices=list(meta.get("flip_indices", [])),
        decoded=bool(meta.get("decoded")), flip_in_graph=bool(meta.get("flip_test")),
        z_range=meta.get("z_range"), root_z=meta.get("root_z"),
        focal=tuple(meta["focal"]) if meta.get("focal") else None, outputs=tuple(meta.get("outputs") or ()))


class TopDownPose:
    """Top-down pose model wrapper: preprocess → infer → postprocess."""

    def __init__(self, engine: Engine, flip_test: bool = False, info: PoseModelInfo | None = None,
                 pose_spec: str | None = None) -> None:
        self.engine = engine
        # given: read from the ONNX beforehand (a remote engine has no file); else from the engine's metadata,
        # or for a foreign ONNX from `pose_spec` / its SDK JSON
        self.info = info or pose_info(engine, pose_spec)
        roles = DECODED_OUTPUTS if self.info.decoded else POSE_OUTPUTS  # the names the decode reads
        self._roles = {name: role for name, role in zip(self.info.outputs, roles) if name != role}
        if getattr(engine, "input_dims", (None,))[0] == 1:
            log.warning("%s has a static batch of 1: persons run one per call (batching is off)", engine.path.name)
        self.flip_test = flip_test and not self.info.flip_in_graph  # a graph with flip test does it already
        if self.flip_test and (self.info.decoded or not self.info.flip_indices):
            raise RtmwEdgeError(f"--flip-test needs SimCC outputs and flip indices; {engine.path.name} "
                                "decodes in the graph: re-export with --flip-test (and --decode if wanted)")
        if self.flip_test and self.info.task == "pose3d":
            raise RtmwEdgeError("flip test is not defined for RTMW3D")
        self.calls = 0   # engine calls so far (a batch of crops larger than the engine's max batch takes several)

    def preprocess(self, image: np.ndarray, boxes: np.ndarray):
        info = self.info
        return G.crop_persons(image, boxes, info.input_size, info.mean, info.std, info.swap_rb)

    def _run(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += chunk_count(self.engine, len(crops))
        out = run_chunked(self.engine, crops)
        return {self._roles.get(k, k): v for k, v in out.items()} if self._roles else out

    def infer(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        if not self.flip_test:
            return self._run(crops)
        n = len(crops)
        out = self._run(np.concatenate([crops, crops[..., ::-1]]))
        sx, sy = G.flip_simcc(out["simcc_x"][n:], out["simcc_y"][n:], self.info.flip_indices)
        return {"simcc_x": (out["simcc_x"][:n] + sx) * 0.5, "simcc_y": (out["simcc_y"][:n] + sy) * 0.5}

    def postprocess(self, outputs: dict[str, np.ndarray], centers: np.ndarray, scales: np.ndarray,
                    image_wh: tuple[int, int], camera: G.Camera | None = None):
        info = self.info
        if info.decoded:
            kpts, scores = outputs["keypoints"], G.finite_scores(outputs["scores"])
            z = outputs.get("z")
        else:
            kpts, scores = G.simcc_decode(outputs["simcc_x"], outputs["simcc_y"], info.split_ratio)
            z = G.simcc_decode_z(outputs["simcc_z"], info.split_ratio) if "simcc_z" in outputs else None
        invalid = scores <= 0
        kpts_img = G.crop_to_image(kpts, centers, scales, info.input_size)
        kpts_img[invalid] = -1.0
        kpts_3d = None
        if info.task == "pose3d" and z is not None:
            cam = camera or G.Camera(*(info.focal or (G.Camera.fx, G.Camera.fy)))
            kpts_3d = G.depth_to_camera(kpts_img, z, info.input_size[0] / 2, info.z_range, info.root_z, cam,
                                        image_wh)
        return kpts_img.astype(np.float32), scores.astype(np.float32), kpts_3d

    def __call__(self, image: np.ndarray, boxes: np.ndarray, camera: G.Camera | None = None):
        crops, centers, scales = self.preprocess(image, boxes)
        if len(crops) == 0:
            k = self.info.num_keypoints
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32), None
        outputs = self.infer(crops)
        return self.postprocess(outputs, centers, scales, (image.shape[1], image.shape[0]), camera)


def _registered(spec: str | Path, role: str, option: str | None = None):
    """The registry entry `spec` names (checked for its role), or None for a model file or an mmdeploy SDK folder
    (checked to exist). OPTION names the setting in messages (default ``--det`` / ``--pose``)."""
    option = option or f"--{role}"
    path = Path(spec)
    if path.is_dir():
        if sdk_files(path):
            return None
        raise RtmwEdgeError(f"{option} {path} is a folder without mmdeploy SDK JSON: give a model file "
                            "(.onnx / .engine), an SDK folder or a registered name")
    if path.suffix.lower() in (".onnx", ".engine", ".plan", ".trt"):
        if not path.is_file():
            raise RtmwEdgeError(f"{role} model file not found: {path}")
        return None

    model = get_spec(str(spec))  # UnknownModelError lists close names
    if role == "pose" and not model.is_pose:
        raise UsageError(f"{model.name} is a detector, not a pose model: check {option}")
    if role == "det" and model.is_pose:
        raise UsageError(f"{model.name} is a pose model, not a detector: check {option}")
    return model


def check_models(det: str | Path, pose: str | Path, pose_spec: str | None = None, *,
                 options: tuple[str, str, str] = ("--det", "--pose", "--pose-spec")) -> None:
    """Fail before any work when a model cannot be used: an unknown name or one of the wrong role (UsageError,
    exit 2), a missing file or a folder without SDK JSON (RtmwEdgeError). Downloads nothing. OPTIONS: how
    messages name the three settings."""
    _registered(det, "det", options[0]), _registered(pose, "pose", options[1])
    if pose_spec:
        _registered(pose_spec, "pose", options[2])


def resolve_model(spec: str | Path, role: str) -> Path:
    """An .onnx/.engine path as given, an mmdeploy SDK folder → its ONNX, or a registered model name → its
    cached ONNX export ($RTMW_EDGE_HOME/onnx/NAME.onnx), made on first use from the official checkpoint."""
    model = _registered(spec, role)
    if model is None:
        if Path(spec).is_dir():  # an mmdeploy SDK folder (end2end.onnx + pipeline.json/deploy.json/detail.json)
            return sdk_model_file(spec)
        return Path(spec)

    cached = home_dir() / "onnx" / f"{model.name}.onnx"
    if cached.is_file():
        return cached
    place = (f"place the official file from {model.checkpoint_url} there (`rtmw-edge models download {model.name}` "
             "fetches it)")
    checkpoint = fetch(model.checkpoint_url, hash_prefix=model.hash_prefix, advice=f"delete it and {place}")

    cached.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to %s (once)", model.name, cached)
    _note(f"exporting {model.name} from its checkpoint to {cached} (once; later runs reuse it) …")
    try:
        return export.export_onnx(model.name, cached, checkpoint=checkpoint)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; delete it and {place}, or give {('--det', '--pose')[role == 'pose']} an "
                              "ONNX file") from None


def _note(text: str) -> None:
    """One line on standard error for the command line's user (standard output may carry results)."""
    from rich.console import Console

    Console(stderr=True).print(text, highlight=False, markup=False, soft_wrap=True)


def resolve_models(det: str | Path, pose: str | Path) -> tuple[Path, Path]:
    """`resolve_model` for the detector and the pose model together: both are checked before anything is
    downloaded, and when checkpoints cannot be downloaded (offline) one error names every missing file."""
    check_models(det, pose)
    paths, missing = [], []
    for spec, role in ((det, "det"), (pose, "pose")):
        try:
            paths.append(resolve_model(spec, role))
        except DownloadError as exc:
            missing.append(exc)
    if len(missing) == 1:
        raise DownloadError(f"{missing[0]}; {OFFLINE_MODELS}")
    if missing:
        raise DownloadError(f"{len(missing)} checkpoints are missing: " + "; ".join(str(e) for e in missing)
                            + f"; {OFFLINE_MODELS}")
    return paths[0], paths[1]


class PoseModel:
    """The shared half of the CPU pipeline: the engines (detector + `TopDownPose`) and the settings every stream
    shares, no memory of past frames. `open_stream(...)` gives a `streams.PoseStream` (one camera's tracker,
    smoother, skip-frame state and intrinsics) over it; many streams may share one model.

    det / pose: .onnx files (metadata from `rtmw-edge export`; foreign detectors are adapted by
    `rtmw_edge.detectors`, foreign pose graphs by `rtmw_edge.pose_models` with `pose_spec` or the mmdeploy
    SDK JSON beside them), TensorRT engines, mmdeploy SDK folders, or registered model names (downloaded and
    exported once). `backend`: which host engines (`backends.load_engine`); the pipeline is always this one.
    """

    pipeline = "cpu"

    def __init__(self, det: str | Path, pose: str | Path, *, backend: str = "auto", flip_test: bool = False,
                 max_persons: int = 32, det_threshold: float = 0.3, nms_iou: float = 0.3,
                 kpt_threshold: float = 0.3, camera: G.Camera | None = None, threads: int | None = None,
                 pose_spec: str | None = None) -> None:
        if max_persons < 1:
            raise RtmwEdgeError("--max-persons must be at least 1")
        if not 0.0 <= det_threshold <= 1.0:
            raise RtmwEdgeError("--det-threshold must be in [0, 1]")
        det_path, pose_path = resolve_model(det, "det"), resolve_model(pose, "pose")
        if backend == "tensorrt" or det_path.suffix.lower() != ".onnx":  # a TensorRT engine of our detector
            detector = EngineDetector(load_engine(det_path, backend), score_threshold=det_threshold,
                                      nms_iou=0.6, max_detections=1000)
        else:
            detector = OnnxDetector(det_path, score_threshold=det_threshold, nms_iou=0.6, max_detections=1000,
                                    session_options=ort_backend.session_options(threads))
        pose_model = TopDownPose(load_engine(pose_path, backend, threads=threads), flip_test, pose_spec=pose_spec)
        self._assemble(detector, pose_model, max_persons=max_persons, nms_iou=nms_iou, kpt_threshold=kpt_threshold,
                       camera=camera)

    @classmethod
    def from_parts(cls, detector, pose: TopDownPose, **options) -> PoseModel:
        """The same model around a detector and a `TopDownPose` built elsewhere (the Triton pipeline model
        runs them on the server's detector and pose models); options as `_assemble`."""
        model = cls.__new__(cls)
        model._assemble(detector, pose, **options)
        return model

    def _assemble(self, detector, pose: TopDownPose, *, max_persons: int = 32, nms_iou: float = 0.3,
                  kpt_threshold: float = 0.3, camera: G.Camera | None = None) -> None:
        self.detector, self.pose = detector, pose
        self.max_persons = max_persons
        self.nms_iou = nms_iou
        self.kpt_threshold = kpt_threshold   # the streams' default (skip-frame: a confident keypoint)
        self.camera = camera                 # the streams' default intrinsics (RTMW3D)

    @property
    def info(self) -> PoseModelInfo:
        return self.pose.info

    def close(self) -> None:
        """Release the engines (a TensorRT engine's contexts, stream and buffers; ONNX Runtime sessions need
        nothing) — explicitly, not at the garbage collector's whim. Idempotent."""
        for engine in (getattr(self.detector, "engine", None), getattr(self.pose, "engine", None)):
            if engine is not None and hasattr(engine, "close"):
                engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Person boxes (image pixels) and scores, best first, at most `max_persons`; + how many were cut."""
        return self._select(*self.detector(image))

    def _select(self, boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        keep = G.nms(boxes, scores, self.nms_iou)  # the top-down demo's person NMS (IoU 0.3)
        boxes, scores = boxes[keep], scores[keep]
        dropped = max(0, len(boxes) - self.max_persons)
        return boxes[: self.max_persons], scores[: self.max_persons], dropped

    def detect_many(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, int] | Exception]:
        """`detect` for several frames (a multi-camera tick): frames go through the detector together where its
        graph takes a batch (our own exports), one call per frame where it does not (foreign graphs: the shared
        RTMDet end-to-end graph only takes batch 1). Each frame gets its answer, or the exception its own call
        raised: a batched call that fails is redone frame by frame, so one bad frame fails only itself."""
        step = getattr(self.detector, "max_batch", 1) or len(images)
        out: list = []
        for start in range(0, len(images), max(step, 1)):
            chunk = images[start:start + step]
            if len(chunk) > 1:
                try:
                    out += [self._select(boxes, scores) for boxes, scores in self.detector.detect_batch(chunk)]
                    continue
                except Exception:  # noqa: BLE001 - redone one by one below: the failure lands on its frame
                    pass
            for image in chunk:
                try:
                    out.append(self.detect(image))
                except Exception as exc:  # noqa: BLE001 - this frame's failure, reported to its camera
                    out.append(exc)
        return out

    def infer(self, image: np.ndarray, camera: G.Camera | None = None) -> FrameArrays:
        """One BGR frame → its persons as arrays (detector, then pose), no stream state involved."""
        boxes, scores, dropped = self.detect(image)
        kpts, kpt_scores, kpts_3d = self.pose(image, boxes, camera if camera is not None else self.camera)
        return FrameArrays(boxes, scores, kpts, kpt_scores, kpts_3d, dropped)

    def open_stream(self, **options) -> PoseStream:
        """A new stream over this model: ``track``, ``smooth``, ``smoothing``, ``det_interval``,
        ``kpt_threshold``, ``camera``, ``on_stage`` (see `streams.PoseStream`)."""
        return PoseStream(self, **options)


STREAM_OPTIONS = ("track", "smooth", "smoothing", "det_interval")


class PoseEstimator(PoseModel):
    """The CPU pipeline as one object: a `PoseModel` with one stream of its own. `estimator(image)` →
    `FrameResult`. More streams over the same engines: `estimator.open_stream(...)`.

    Options as `PoseModel`, plus the stream's: `track`, `smooth`, `smoothing` (One-Euro parameters) and
    `det_interval` N > 1: on video, the detector runs every N-th frame and the boxes in between come from
    the previous frame's keypoints (`rtmw_edge.skipframe`); frames must then be given in order.
    """

    def __init__(self, det: str | Path, pose: str | Path, *, backend: str = "auto", flip_test: bool = False,
                 max_persons: int = 32, det_threshold: float = 0.3, nms_iou: float = 0.3,
                 kpt_threshold: float = 0.3, track: bool = False, smooth: bool = False,
                 camera: G.Camera | None = None, threads: int | None = None, smoothing: dict | None = None,
                 pose_spec: str | None = None, det_interval: int = 1) -> None:
        if isinstance(det_interval, bool) or not isinstance(det_interval, int) or det_interval < 1:
            raise UsageError(f"--det-interval must be a whole number of frames >= 1, not {det_interval!r}")
        super().__init__(det, pose, backend=backend, flip_test=flip_test, max_persons=max_persons,
                         det_threshold=det_threshold, nms_iou=nms_iou, kpt_threshold=kpt_threshold, camera=camera,
                         threads=threads, pose_spec=pose_spec)
        self._stream = self.open_stream(track=track, smooth=smooth, smoothing=smoothing, det_interval=det_interval)

    @classmethod
    def from_parts(cls, detector, pose: TopDownPose, **options) -> PoseEstimator:
        """Around a detector and a `TopDownPose` built elsewhere; model options as `PoseModel._assemble`, stream
        options as `PoseStream` (track, smooth, smoothing, det_interval)."""
        estimator = cls.__new__(cls)
        stream = {k: options.pop(k) for k in STREAM_OPTIONS if k in options}
        estimator._assemble(detector, pose, **options)
        estimator._stream = estimator.open_stream(**stream)
        return estimator

    @property
    def tracker(self):
        return self._stream.tracker

    @property
    def skip(self):
        return self._stream.skip

    def __call__(self, image: np.ndarray, frame: int = 0, timestamp: float = 0.0) -> FrameResult:
        return self._stream.step(image, frame, timestamp)

    def reset(self) -> None:
        """A new stream starts: forget carried boxes (skip-frame detection) and tracks."""
        self._stream.reset()
