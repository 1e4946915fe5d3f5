"""Many cameras, one model: a *tick* runs one frame of each of several cameras together, each camera on its own
stream (tracker, smoother, skip-frame state, intrinsics), with ONE pose call for the people of all those frames.

    tick([TickItem(stream, image, frame, timestamp, clock), ...]) -> TickReport (one `Outcome` per item, in order)

`open_camera_batch(estimator)` picks how a tick runs for the pipeline the estimator is:

- **CPU pipeline** (`CpuCameraBatch`, streams over a `pipeline.PoseModel`):
    1. boxes per frame: the detector on key frames — frames together in one call where the detector graph takes
       a batch (our exports), one call per frame where it does not (the shared RTMDet end-to-end graph: batch 1)
       — and the stream's carried boxes on the frames between (skip-frame detection, `det_interval` > 1);
    2. crops of every frame → ONE pose call for all of them (`TopDownPose.infer`, chunked at the engine's max
       batch: ⌈people / max batch⌉ engine calls, one when they fit);
    3. per frame: decode with its camera's intrinsics, the skip-frame check — a frame whose carried person
       collapsed is redone from the detector in a second round (one more pose call, for those frames only), as
       `PoseStream.step` redoes it — and the stream's own tail (`FrameTail`: tracker, smoother).
- **CUDA-stream pipeline** (`GpuStreamBatch`, streams of a `cuda.gpu_pipeline.GpuPoseModel`): `cuda.multicam.
  GpuCameraBatch` — a lane per camera (CUDA stream, detector context, buffers) and one batched pose side — then
  each camera's arrays through its own stream's tail.
- **anything else** (the Triton client, plain callables): `StepCameraBatch`, each camera's `step` in turn.
  `StepCameraBatch` over any estimator is also the one-call-per-camera baseline (`scripts/bench_cameras.py`).

Each camera's result equals its stream's `step` on the same frame: the same boxes, crops and arrays (ONNX Runtime
computes each item of a batch as it computes it alone), the same per-stream state. A frame that fails (a bad
image, a detector error on it) fails only its camera; a batched call that raises is redone camera by camera.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .cuda.multicam import GpuCameraBatch
from .detectors import as_bgr_uint8
from .results import FrameResult, Person
from .streams import PoseStream


@dataclass
class TickItem:
    """One camera's frame in a tick: its stream and the frame (`clock`: the tracker's time, see `FrameTail`)."""

    stream: object
    image: np.ndarray
    frame: int = 0
    timestamp: float = 0.0
    clock: float | None = None


@dataclass
class Outcome:
    """One camera's part of a tick: its result or its error, its persons and the seconds spent on it alone."""

    result: FrameResult | None = None
    error: BaseException | None = None
    persons: int = 0
    own_s: float = 0.0                  # this camera's own work (decode, crops, its detector call, tail)


@dataclass
class TickReport:
    outcomes: list[Outcome]
    pose_calls: int = 0                 # pose engine calls of the tick (1 when the people fit one batch)
    seconds: float = 0.0                # the whole tick

    def shares(self) -> list[float]:
        """Each camera's share of the tick's time: its own work plus a part of the shared calls in proportion to
        (its persons + 1) — what the scheduler's cost model learns from."""
        own = sum(o.own_s for o in self.outcomes)
        shared = max(0.0, self.seconds - own)
        weights = [o.persons + 1 for o in self.outcomes]
        total = sum(weights) or 1
        return [o.own_s + shared * w / total for o, w in zip(self.outcomes, weights)]


class StepCameraBatch:
    """Each camera's own `stream.step` in turn: one detector and one pose call per camera (any pipeline)."""

    batched = False

    def reserve(self, cameras: int) -> None:
        """Room for CAMERAS cameras per tick (the GPU batch makes its lanes; nothing to make here)."""

    def tick(self, items: list[TickItem]) -> TickReport:
        t0 = time.perf_counter()
        outcomes = []
        calls = 0
        for item in items:
            pose = _pose_of(item.stream)
            before = getattr(pose, "calls", 0)
            t = time.perf_counter()
            try:
                result = item.stream.step(item.image, item.frame, item.timestamp, clock=item.clock)
                outcomes.append(Outcome(result, None, len(result.persons), time.perf_counter() - t))
            except Exception as exc:  # noqa: BLE001 - this camera's failure only
                outcomes.append(Outcome(None, exc, 0, time.perf_counter() - t))
            calls += getattr(pose, "calls", 1) - before if pose is not None else 1
        return TickReport(outcomes, calls, time.perf_counter() - t0)

    def close(self) -> None:
        pass


def _pose_of(stream):
    """The `TopDownPose` behind a CPU stream (it counts its engine calls), else None."""
    model = getattr(stream, "model", None)
    pose = getattr(model, "pose", None)
    return pose if hasattr(pose, "calls") else None


@dataclass
class _Frame:
    """One camera's frame inside a CPU tick."""

    index: int
    item: TickItem
    image: np.ndarray
    detect: bool                                  # the detector runs on this frame (else: carried boxes)
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    cut: int = 0
    outputs: tuple | None = None                  # (keypoints, keypoint scores, keypoints 3d)
    error: BaseException | None = None
    own_s: float = 0.0
    stages: dict = field(default_factory=dict)    # stage → seconds (the stream's on_stage)

    @property
    def stream(self) -> PoseStream:
        return self.item.stream


class CpuCameraBatch:
    """A tick on the CPU pipeline: detector per frame (batched where the graph allows), ONE pose call for every
    frame's crops, each frame finished by its own stream (see the module docstring)."""

    batched = True

    def __init__(self, model) -> None:
        self.model = model

    def reserve(self, cameras: int) -> None:
        pass

    def close(self) -> None:
        pass

    def tick(self, items: list[TickItem]) -> TickReport:
        t0 = time.perf_counter()
        pose = self.model.pose
        calls_before = pose.calls
        frames: list[_Frame] = []
        outcomes = [Outcome() for _ in items]
        for i, item in enumerate(items):
            t = time.perf_counter()
            try:
                image = as_bgr_uint8(item.image)
                skip = item.stream.skip
                frames.append(_Frame(i, item, image, skip is None or skip.needs_detection()))
            except Exception as exc:  # noqa: BLE001 - a bad image fails its camera only
                outcomes[i].error = exc
            outcomes[i].own_s += time.perf_counter() - t
        live = self._boxes(frames)
        self._pose(live)
        redo = []
        for f in live:
            if f.error is None and f.stream.skip is not None and not f.detect:
                if not f.stream.skip.accept(f.image, f.boxes, f.scores, f.outputs, False):
                    f.detect = True  # a carried person collapsed: this frame again, from the detector
                    redo.append(f)
        if redo:
            self._pose(self._boxes(redo))
        for f in frames:
            self._finish(f, outcomes[f.index])
        return TickReport(outcomes, pose.calls - calls_before, time.perf_counter() - t0)

    def _boxes(self, frames: list[_Frame]) -> list[_Frame]:
        """Detector boxes on key frames (batched where the detector allows), carried boxes on the others; → the
        frames still without an error."""
        keyed = [f for f in frames if f.detect]
        if keyed:
            t = time.perf_counter()
            answers = self.model.detect_many([f.image for f in keyed])
            each = (time.perf_counter() - t) / len(keyed)
            for f, answer in zip(keyed, answers):
                f.stages["detect"] = f.stages.get("detect", 0.0) + each
                f.own_s += each
                if isinstance(answer, Exception):
                    f.error = answer
                else:
                    f.boxes, f.scores, f.cut = answer
        for f in frames:
            if not f.detect and f.error is None:
                f.boxes, f.scores, f.cut = f.stream.skip.carried()
        return [f for f in frames if f.error is None]

    def _pose(self, frames: list[_Frame]) -> None:
        """Crops of every frame → one `TopDownPose.infer` → each frame's decode with its camera's intrinsics."""
        pose = self.model.pose
        prepared = []
        for f in frames:
            t = time.perf_counter()
            try:
                prepared.append((f, *pose.preprocess(f.image, f.boxes)))
            except Exception as exc:  # noqa: BLE001
                f.error = exc
            f.own_s += time.perf_counter() - t
        people = [p for p in prepared if len(p[1])]
        outputs = {}
        if people:
            t = time.perf_counter()
            try:
                joined = pose.infer(np.concatenate([crops for _, crops, _, _ in people]))
                start = 0
                for f, crops, _, _ in people:
                    outputs[f.index] = {k: v[start:start + len(crops)] for k, v in joined.items()}
                    start += len(crops)
            except Exception:  # noqa: BLE001 - redone camera by camera: the failure lands on its frame
                for f, crops, _, _ in people:
                    try:
                        outputs[f.index] = pose.infer(crops)
                    except Exception as exc:  # noqa: BLE001
                        f.error = exc
            shared = time.perf_counter() - t
            for f, *_ in people:
                f.stages["pose"] = f.stages.get("pose", 0.0) + shared
        k = pose.info.num_keypoints
        for f, crops, centers, scales in prepared:
            if f.error is not None:
                continue
            t = time.perf_counter()
            if len(crops) == 0:   # as TopDownPose does for a frame without people
                f.outputs = np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32), None
            else:
                try:
                    h, w = f.image.shape[:2]
                    f.outputs = pose.postprocess(outputs[f.index], centers, scales, (w, h), f.stream.camera)
                except Exception as exc:  # noqa: BLE001
                    f.error = exc
            dt = time.perf_counter() - t
            f.own_s += dt
            f.stages["pose"] = f.stages.get("pose", 0.0) + dt
        for f, *_ in prepared:
            if f.error is None and f.stream.skip is not None and f.detect:
                f.stream.skip.accept(f.image, f.boxes, f.scores, f.outputs, True)

    def _finish(self, f: _Frame, outcome: Outcome) -> None:
        outcome.own_s += f.own_s
        if f.error is not None:
            outcome.error = f.error
            return
        stream, item = f.stream, f.item
        h, w = f.image.shape[:2]
        kpts, kpt_scores, kpts_3d = f.outputs
        t = time.perf_counter()
        try:
            result = stream.tail(f.boxes, f.scores, kpts, kpt_scores, kpts_3d, f.cut, frame=item.frame,
                                 timestamp=item.timestamp, width=w, height=h, clock=item.clock)
        except Exception as exc:  # noqa: BLE001
            outcome.error = exc
            return
        dt = time.perf_counter() - t
        outcome.own_s += dt
        outcome.result, outcome.persons = result, len(result.persons)
        if stream.on_stage is not None:
            for stage, seconds in f.stages.items():
                stream.on_stage(stage, seconds)
            if stream.tail.tracker is not None:
                stream.on_stage("track", dt)


class GpuStreamBatch:
    """A tick on the CUDA-stream pipeline: `cuda.multicam.GpuCameraBatch` (a lane per camera, one batched pose
    side), each camera's arrays finished by its own `GpuPoseStream`'s tail. Lanes are made for the most cameras
    a tick has had; a tick that raises is redone camera by camera on the cameras' own streams."""

    batched = True

    def __init__(self, model) -> None:
        self.model = model
        self.batch = None
        self.profile = False
        self.lanes = 1

    def reserve(self, cameras: int) -> None:
        """Lanes for CAMERAS cameras (made at the next tick: a lane per camera the daemon serves, not per tick)."""
        self.lanes = max(self.lanes, int(cameras))

    def _lanes(self, n: int, profile: bool):
        n = max(n, self.lanes)
        if self.batch is None or self.batch.cameras < n or self.profile != profile:
            if self.batch is not None:
                self.batch.close()
                self.batch = None
            self.batch = GpuCameraBatch(self.model, n, profile=profile)
            self.profile = profile
        return self.batch

    def tick(self, items: list[TickItem]) -> TickReport:
        t0 = time.perf_counter()
        profile = any(getattr(item.stream, "profile", False) for item in items)
        try:
            batch = self._lanes(len(items), profile)
            batch.intrinsics = {i: item.stream.camera for i, item in enumerate(items)}
            arrays = batch.tick({i: (item.image, item.frame, item.timestamp) for i, item in enumerate(items)})
        except Exception:  # noqa: BLE001 - camera by camera on their own streams: each error lands on its camera
            if self.batch is not None:
                self.batch.close()
                self.batch = None
            return StepCameraBatch().tick(items)
        seconds = time.perf_counter() - t0
        outcomes = []
        for i, item in enumerate(items):
            a, stream = arrays[i], item.stream
            if profile and hasattr(stream, "timings"):
                for stage, ms in batch.lane_timings(i).items():
                    stream.timings.add(stage, ms)
            persons = [Person(bbox=a.boxes[j].copy(), score=float(a.scores[j]), keypoints=a.keypoints[j].copy(),
                              keypoint_scores=a.keypoint_scores[j].copy(),
                              keypoints_3d=None if a.keypoints_3d is None else a.keypoints_3d[j])
                       for j in range(len(a.boxes))]
            t = time.perf_counter()
            try:
                result = stream.tail.finish(persons, a.dropped, frame=a.frame, timestamp=a.timestamp, width=a.width,
                                            height=a.height, clock=item.clock)
            except Exception as exc:  # noqa: BLE001
                outcomes.append(Outcome(None, exc, 0, time.perf_counter() - t))
                continue
            dt = time.perf_counter() - t
            if stream.on_stage is not None:
                stream.on_stage("inference", seconds)
                if stream.tail.tracker is not None:
                    stream.on_stage("track", dt)
            outcomes.append(Outcome(result, None, len(result.persons), dt))
        return TickReport(outcomes, len(batch.pose_batches), time.perf_counter() - t0)

    def close(self) -> None:
        if self.batch is not None:
            self.batch.close()
            self.batch = None


def open_camera_batch(estimator, *, batched: bool = True):
    """How a tick runs for ESTIMATOR's streams (see the module docstring); `batched=False`: one call per camera."""
    if batched:
        model = getattr(estimator, "model", None)
        if getattr(estimator, "pipeline", None) == "cuda-stream" and model is not None:
            return GpuStreamBatch(model)
        if callable(getattr(estimator, "detect_many", None)) and hasattr(getattr(estimator, "pose", None), "infer"):
            return CpuCameraBatch(estimator)
    return StepCameraBatch()
