"""One video stream over a shared model: the state that belongs to one camera, and the per-frame tail.

A *model* holds the engines and the settings every stream shares (the CPU pipeline's `pipeline.PoseModel`, the
Triton client `triton.client.TritonPoseEstimator`, the GPU pipeline); it has no memory of past frames. A
*stream* (`PoseStream`) holds what one camera needs across frames — its tracker and One-Euro smoother, its
skip-frame detection state and carried boxes, its camera intrinsics — and runs one frame with
``step(image, frame=…, timestamp=…) -> FrameResult``. One model serves many streams (the daemon: one per
camera), so each camera keeps its own track ids and detection schedule while the engines are loaded once
(rtmlib splits its `Wholebody` models from its `PoseTracker` the same way).

`FrameTail` is the end of every pipeline's frame, written once: the arrays a pipeline produced (boxes, scores,
keypoints, keypoint scores, 3D keypoints, persons cut by max_persons) → `Person`s → the stream's tracker →
`FrameResult`. The CPU pipeline, the Triton client, the daemon, `eval` and `bench` end their frames here; the GPU
pipeline's streams are to call it with the arrays they copy back (the one frame tail of the project).

What a model offers a `PoseStream`:

- ``detect(image) -> (boxes, scores, dropped)`` and ``pose(image, boxes, camera) -> (keypoints, keypoint_scores,
  keypoints_3d)`` (the CPU pipeline): the stream runs them itself, so it can skip detections between key frames
  (``det_interval`` > 1) and time the two stages apart;
- or ``infer(image, camera) -> FrameArrays`` (one call per frame: the Triton client), detecting every frame.

`open_stream(estimator, ...)` gives any estimator a stream: its own ``open_stream`` when it has one, a
`PoseStream` over anything with the methods above, else a `CallStream` around a plain
``estimator(image, frame, timestamp) -> FrameResult`` callable (test stubs, embedding code), which adds the
tracker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .detectors import as_bgr_uint8
from .errors import UsageError
from .results import FrameResult, Person, persons_from_arrays
from .skipframe import SkipFrameDetection
from .tracking import PoseTracker

StageTimer = Callable[[str, float], None]   # (stage name, seconds)


class FrameArrays(NamedTuple):
    """One frame's persons as arrays, best detection first (what every pipeline produces before the tail)."""

    boxes: np.ndarray                      # [N, 4] xyxy, image pixels
    scores: np.ndarray                     # [N] detector scores
    keypoints: np.ndarray                  # [N, K, 2] image pixels (-1 where the score is <= 0)
    keypoint_scores: np.ndarray            # [N, K]
    keypoints_3d: np.ndarray | None        # [N, K, 3] camera space (RTMW3D), else None
    dropped: int                           # persons cut by max_persons


class FrameTail:
    """The per-frame tail: arrays → persons → this stream's tracker (and smoother) → `FrameResult`.

    ``tail(boxes, scores, keypoints, keypoint_scores, keypoints_3d, dropped, frame=, timestamp=, width=, height=)``.
    `clock` (default: `timestamp`) is the time the tracker and the smoother see; the daemon gives the monotonic
    capture time, so a wall-clock step never reaches the One-Euro filter."""

    def __init__(self, *, track: bool = False, smooth: bool = False, smoothing: dict | None = None) -> None:
        self.tracker = PoseTracker(smooth=smooth, **(smoothing or {})) if track or smooth else None

    def __call__(self, boxes, scores, keypoints, keypoint_scores, keypoints_3d=None, dropped: int = 0, *,
                 frame: int = 0, timestamp: float = 0.0, width: int, height: int,
                 clock: float | None = None) -> FrameResult:
        persons = persons_from_arrays(boxes, scores, keypoints, keypoint_scores, keypoints_3d)
        return self.finish(persons, dropped, frame=frame, timestamp=timestamp, width=width, height=height,
                           clock=clock)

    def finish(self, persons: list[Person], dropped: int = 0, *, frame: int = 0, timestamp: float = 0.0,
               width: int, height: int, clock: float | None = None) -> FrameResult:
        """The second half, for pipelines that made the `Person`s themselves."""
        if self.tracker is not None:
            persons = self.tracker.update(persons, timestamp if clock is None else clock)
        return FrameResult(frame=int(frame), timestamp=float(timestamp), width=int(width), height=int(height),
                           persons=persons, dropped_persons=int(dropped))

    def reset(self) -> None:
        if self.tracker is not None:
            self.tracker.reset()


class PoseStream:
    """One stream (camera, video) over a shared model; see the module doc.

    det_interval N > 1: the detector runs on every N-th frame and boxes come from the last keypoints in between
    (`rtmw_edge.skipframe`; frames must come in order); needs a model with `detect` and `pose`.
    camera: this stream's intrinsics (RTMW3D), default the model's. on_stage(name, seconds): told how long each
    stage took (``detect``, ``pose`` — or ``inference`` for a one-call model — and ``track``)."""

    def __init__(self, model, *, track: bool = False, smooth: bool = False, smoothing: dict | None = None,
                 det_interval: int = 1, kpt_threshold: float | None = None, camera=None,
                 on_stage: StageTimer | None = None) -> None:
        if isinstance(det_interval, bool) or not isinstance(det_interval, int) or det_interval < 1:
            raise UsageError(f"--det-interval must be a whole number of frames >= 1, not {det_interval!r}")
        self.model = model
        self.split = callable(getattr(model, "detect", None)) and callable(getattr(model, "pose", None))
        if det_interval > 1 and not self.split:
            raise UsageError(f"det_interval {det_interval}: {type(model).__name__} detects on every frame; skip-"
                             "frame detection runs in the CPU pipeline (--backend onnxruntime, or auto)")
        if kpt_threshold is None:
            kpt_threshold = getattr(model, "kpt_threshold", 0.3)
        self.skip = SkipFrameDetection(det_interval, kpt_threshold) if det_interval > 1 else None
        self.tail = FrameTail(track=track, smooth=smooth, smoothing=smoothing)
        self._camera = camera
        self.on_stage = on_stage

    @property
    def camera(self):
        """This stream's intrinsics, else the model's (read per frame: a model's camera may change)."""
        return self._camera if self._camera is not None else getattr(self.model, "camera", None)

    @camera.setter
    def camera(self, value) -> None:
        self._camera = value

    @property
    def tracker(self) -> PoseTracker | None:
        return self.tail.tracker

    def _detect(self, image: np.ndarray):
        if self.on_stage is None:
            return self.model.detect(image)
        t = time.perf_counter()
        out = self.model.detect(image)
        self.on_stage("detect", time.perf_counter() - t)
        return out

    def _pose(self, image: np.ndarray, boxes: np.ndarray):
        if self.on_stage is None:
            return self.model.pose(image, boxes, self.camera)
        t = time.perf_counter()
        out = self.model.pose(image, boxes, self.camera)
        self.on_stage("pose", time.perf_counter() - t)
        return out

    def arrays(self, image: np.ndarray) -> FrameArrays:
        """The frame's persons as arrays (detection, skipped or not, and pose), before the tail."""
        if not self.split:
            t = time.perf_counter()
            out = FrameArrays(*self.model.infer(image, self.camera))
            if self.on_stage is not None:
                self.on_stage("inference", time.perf_counter() - t)
            return out
        if self.skip is None:
            boxes, scores, dropped = self._detect(image)
            kpts, kpt_scores, kpts_3d = self._pose(image, boxes)
        else:  # detector on key frames, boxes from this stream's last keypoints in between
            boxes, scores, dropped, (kpts, kpt_scores, kpts_3d), _ = self.skip.step(image, self._detect, self._pose)
        return FrameArrays(boxes, scores, kpts, kpt_scores, kpts_3d, dropped)

    def step(self, image: np.ndarray, frame: int = 0, timestamp: float = 0.0, *,
             clock: float | None = None) -> FrameResult:
        """One frame → `FrameResult` (see `FrameTail` for `clock`)."""
        image = as_bgr_uint8(image)
        h, w = image.shape[:2]
        arrays = self.arrays(image)
        if self.on_stage is None or self.tail.tracker is None:
            return self.tail(*arrays, frame=frame, timestamp=timestamp, width=w, height=h, clock=clock)
        t = time.perf_counter()
        result = self.tail(*arrays, frame=frame, timestamp=timestamp, width=w, height=h, clock=clock)
        self.on_stage("track", time.perf_counter() - t)
        return result

    __call__ = step

    def reset(self) -> None:
        """A new stream starts (a camera re-opened, a new video): forget carried boxes and tracks."""
        if self.skip is not None:
            self.skip.reset()
        self.tail.reset()

    def close(self) -> None:
        """Nothing to free on the CPU (GPU streams free their CUDA streams and buffers here)."""


class CallStream:
    """A stream around a plain ``estimator(image, frame, timestamp) -> FrameResult`` callable: the callable does
    the frame, this stream adds its own tracker. An estimator with ``accepts_camera = True`` also gets
    ``camera=`` (this stream's intrinsics)."""

    def __init__(self, estimator, *, track: bool = False, smooth: bool = False, smoothing: dict | None = None,
                 det_interval: int = 1, kpt_threshold: float | None = None, camera=None,
                 on_stage: StageTimer | None = None) -> None:
        if det_interval != 1:
            raise UsageError(f"det_interval {det_interval}: {type(estimator).__name__} detects on every frame; "
                             "skip-frame detection runs in the CPU pipeline (--backend onnxruntime, or auto)")
        self.model = estimator
        self.tail = FrameTail(track=track, smooth=smooth, smoothing=smoothing)
        self.camera = camera
        self.on_stage = on_stage
        self._camera_arg = bool(getattr(estimator, "accepts_camera", False))

    @property
    def tracker(self) -> PoseTracker | None:
        return self.tail.tracker

    def step(self, image: np.ndarray, frame: int = 0, timestamp: float = 0.0, *,
             clock: float | None = None) -> FrameResult:
        t = time.perf_counter()
        extra = {"camera": self.camera} if self._camera_arg and self.camera is not None else {}
        result = self.model(image, frame, timestamp, **extra)
        t2 = time.perf_counter()
        if self.on_stage is not None:
            self.on_stage("inference", t2 - t)
        if self.tail.tracker is None:
            return result
        result = self.tail.finish(list(result.persons), result.dropped_persons, frame=result.frame,
                                  timestamp=result.timestamp, width=result.width, height=result.height, clock=clock)
        if self.on_stage is not None:
            self.on_stage("track", time.perf_counter() - t2)
        return result

    __call__ = step

    def reset(self) -> None:
        self.tail.reset()

    def close(self) -> None:
        pass


def open_stream(estimator, **options) -> PoseStream | CallStream:
    """A new stream over ESTIMATOR: its own `open_stream`; else a `PoseStream` when it has ``detect`` and
    ``pose`` (or ``infer``) as a model does; else a `CallStream` around the callable. OPTIONS as `PoseStream`'s."""
    opener = getattr(estimator, "open_stream", None)
    if callable(opener):
        return opener(**options)
    split = callable(getattr(estimator, "detect", None)) and callable(getattr(estimator, "pose", None))
    if split or callable(getattr(estimator, "infer", None)):
        return PoseStream(estimator, **options)
    return CallStream(estimator, **options)
