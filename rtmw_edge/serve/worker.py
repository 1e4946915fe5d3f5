"""The inference worker: ONE thread that takes the cameras' latest frames in turn (round-robin) through the
shared `PoseEstimator`, so the engines are loaded once and never called concurrently.

Per frame: detect → pose (timed separately when the estimator has `detect`/`pose`, as `PoseEstimator`
does; any other callable ``estimator(image, frame, timestamp) -> FrameResult`` is timed as one
``inference`` stage; with `det_interval` N > 1 the detector runs on every N-th frame of a camera, its
boxes in between come from that camera's last keypoints, `rtmw_edge.skipframe`) → the camera's own
`PoseTracker` (tracking and smoothing are per camera: one estimator-wide tracker would mix people of
different cameras) → JSON of the `run` schema plus a ``camera`` field → `on_result` (MQTT and the web
loop). A frame that raises is counted and logged (at most every 10 s per camera), never fatal. `stop()`
lets the frame in flight finish and be published.

Liveness (`stalled`): the thread is stalled when one inference call has run longer than the stall time, or
when a camera's frame has waited that long without being taken. A thread that dies (an exception that is
not an `Exception`) is logged once, with its traceback; `alive()` turns False. `/healthz` and the systemd
watchdog use both.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..results import FrameResult, Person
from ..skipframe import SkipFrameDetection
from ..tracking import PoseTracker
from .cameras import Camera, CapturedFrame
from .logs import Throttle
from .metrics import Metrics

log = logging.getLogger("rtmw_edge.serve.worker")

ERROR_LOG_INTERVAL_S = 10.0


@dataclass
class Processed:
    camera: str
    seq: int
    image: np.ndarray      # the frame (for the preview)
    result: FrameResult
    payload: str           # the JSON message sent to clients
    captured: float        # monotonic capture time

    @property
    def body(self) -> bytes:
        """The payload as UTF-8 (encoded once, by the inference thread)."""
        return self._body

    def __post_init__(self) -> None:
        self._body = self.payload.encode()


class InferenceWorker:
    def __init__(self, estimator, cameras: Sequence[Camera], metrics: Metrics,
                 on_result: Callable[[Processed], None], *, track: bool = False, smooth: bool = False,
                 smoothing: dict | None = None, det_interval: int = 1) -> None:
        self.estimator = estimator
        self.cameras = list(cameras)
        self.metrics = metrics
        self.on_result = on_result
        self.track, self.smooth, self.smoothing = track, smooth, smoothing or {}
        self._trackers: dict[str, tuple[int, int, object]] = {}  # name -> (camera id, generation, tracker)
        self.det_interval = int(det_interval)  # > 1: skip-frame detection per camera (rtmw_edge.skipframe)
        self._skips: dict[str, tuple[int, int, object]] = {}     # name -> (camera id, generation, state)
        self._cond = threading.Condition()
        self._pending = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next = 0
        self.heartbeat = time.monotonic()
        self.busy_since: float | None = None
        self.completed = 0  # frames finished (published or failed)
        self._errors = Throttle(ERROR_LOG_INTERVAL_S)
        self._split = callable(getattr(estimator, "detect", None)) and callable(getattr(estimator, "pose", None))

    # -- lifecycle
    def wake(self) -> None:
        """Called by a grabber after it stored a frame."""
        with self._cond:
            self._pending = True
            self._cond.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rtmw-edge-inference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end after the frame in flight (which is still published)."""
        self._stop.set()
        self.wake()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.alive()

    def set_cameras(self, cameras: Sequence[Camera]) -> None:
        """Serve these cameras from the next frame on (SIGHUP reload); trackers of cameras gone are dropped."""
        self.cameras = list(cameras)
        live = {id(c) for c in self.cameras}
        for states in (self._trackers, self._skips):
            for name, (cam_id, _, _) in list(states.items()):
                if cam_id not in live:
                    states.pop(name, None)
        self.wake()

    def stalled(self, stall_s: float, now: float | None = None) -> str | None:
        """Why inference counts as stalled (None when it does not): a call running for more than STALL_S, or a
        frame that has waited that long without being taken."""
        now = time.monotonic() if now is None else now
        busy = self.busy_since
        if busy is not None and now - busy > stall_s:
            return f"an inference call has run for {now - busy:.1f} s"
        waiting = [c.pending_since for c in self.cameras if c.pending_since is not None]
        if waiting and now - min(waiting) > stall_s:
            return f"a frame has waited {now - min(waiting):.1f} s for inference"
        return None

    # -- loop
    def _take_next(self) -> tuple[Camera, CapturedFrame] | None:
        cameras = self.cameras  # one snapshot: a reload may replace the list meanwhile
        n = len(cameras)
        for k in range(n):
            cam = cameras[(self._next + k) % n]
            frame = cam.take()
            if frame is not None:
                self._next = (self._next + k + 1) % n
                return cam, frame
        return None

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # not an Exception of one frame (those are caught per frame): the thread ends
            log.critical("the inference thread died: %s: %s", type(exc).__name__, exc, exc_info=True,
                         extra={"event": "inference_thread_died"})

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._pending:
                    self._cond.wait(0.5)
                self._pending = False
            self.heartbeat = time.monotonic()
            while not self._stop.is_set():
                item = self._take_next()
                if item is None:
                    break
                self.busy_since = time.monotonic()
                try:
                    self._process(*item)
                finally:
                    self.busy_since = None
                    self.heartbeat = time.monotonic()
                    self.completed += 1

    @staticmethod
    def _camera_state(states: dict[str, tuple[int, int, object]], cam: Camera, generation: int, make):
        """CAM's entry of STATES, made anew (by MAKE) when its source re-opened or the camera was replaced."""
        current = states.get(cam.name)
        if current is None or current[:2] != (id(cam), generation):
            current = (id(cam), generation, make())
            states[cam.name] = current
        return current[2]

    def _tracker(self, cam: Camera, generation: int):
        if not (self.track or self.smooth):
            return None
        return self._camera_state(self._trackers, cam, generation,
                                  lambda: PoseTracker(smooth=self.smooth, **self.smoothing))

    def _infer(self, cam: Camera, frame: CapturedFrame) -> tuple[list[Person], int]:
        est, image, stage = self.estimator, frame.image, self.metrics.stage
        t0 = time.monotonic()
        if not self._split:  # one call per frame (the Triton client): the camera's intrinsics go with it
            camera = {"camera": cam.intrinsics} if cam.intrinsics is not None and getattr(est, "accepts_camera",
                                                                                           False) else {}
            result = est(image, frame.seq, frame.wall, **camera)
            stage.labels(cam.name, "inference").observe(time.monotonic() - t0)
            return list(result.persons), int(result.dropped_persons)
        intrinsics = cam.intrinsics if cam.intrinsics is not None else getattr(est, "camera", None)

        def detect(img):
            t = time.monotonic()
            out = est.detect(img)
            stage.labels(cam.name, "detect").observe(time.monotonic() - t)
            return out

        def pose(img, boxes):
            t = time.monotonic()
            out = est.pose(img, boxes, intrinsics)
            stage.labels(cam.name, "pose").observe(time.monotonic() - t)
            return out

        skip = self._skip_frames(cam, frame.generation)
        if skip is None:
            boxes, scores, dropped = detect(image)
            kpts, kpt_scores, kpts_3d = pose(image, boxes)
        else:  # detector on key frames, boxes from this camera's last keypoints in between
            boxes, scores, dropped, (kpts, kpt_scores, kpts_3d), _ = skip.step(image, detect, pose)
        persons = [Person(bbox=boxes[i], score=float(scores[i]), keypoints=kpts[i], keypoint_scores=kpt_scores[i],
                          keypoints_3d=None if kpts_3d is None else kpts_3d[i]) for i in range(len(boxes))]
        return persons, int(dropped)

    def _skip_frames(self, cam: Camera, generation: int):
        """The camera's own skip-frame detection state (`det_interval` > 1), restarted with its source."""
        if self.det_interval <= 1:
            return None
        kpt_threshold = getattr(self.estimator, "kpt_threshold", 0.3)
        return self._camera_state(self._skips, cam, generation,
                                  lambda: SkipFrameDetection(self.det_interval, kpt_threshold))

    def _process(self, cam: Camera, frame: CapturedFrame) -> None:
        stage = self.metrics.stage
        start = time.monotonic()
        stage.labels(cam.name, "queue").observe(start - frame.mono)
        try:
            persons, dropped = self._infer(cam, frame)
            tracker = self._tracker(cam, frame.generation)
            if tracker is not None:
                t = time.monotonic()
                persons = tracker.update(persons, frame.mono)
                stage.labels(cam.name, "track").observe(time.monotonic() - t)
        except Exception as exc:  # a bad frame or a failing engine: count, log (rate-limited), go on
            self._error(cam.name, exc)
            return
        t = time.monotonic()
        h, w = frame.image.shape[:2]
        result = FrameResult(frame=frame.seq, timestamp=frame.wall, width=w, height=h, persons=persons,
                             dropped_persons=dropped, source=cam.description)  # credentials masked
        message = result.to_dict()
        message["camera"] = cam.name
        payload = json.dumps(message, separators=(",", ":"))
        t2 = time.monotonic()
        stage.labels(cam.name, "serialize").observe(t2 - t)
        self.metrics.frame_done(cam.name, len(persons))  # counted before any client can see it
        self.on_result(Processed(cam.name, frame.seq, frame.image, result, payload, frame.mono))
        end = time.monotonic()
        stage.labels(cam.name, "publish").observe(end - t2)
        stage.labels(cam.name, "total").observe(end - frame.mono)

    def _error(self, camera: str, exc: BaseException) -> None:
        self.metrics.inference_errors.labels(camera).inc()
        report, count = self._errors.ready(camera)
        if report:
            text = (str(exc).strip().splitlines() or [""])[0]
            log.error("camera %s: inference failed: %s: %s%s", camera, type(exc).__name__, text,
                      f" ({count} more since the last report)" if count else "",
                      extra={"event": "inference_error", "camera": camera})
