"""The inference worker: ONE thread that runs the cameras' latest frames through ONE shared model (engines
loaded once, never called concurrently) in *ticks*, each camera on a stream of its own.

A tick (`rtmw_edge.multicam`) takes the newest frame of every camera the scheduler admits
(`scheduler.Scheduler`: oldest-due first within each camera's latency budget, a bounded wait for cameras about
to deliver), runs the detector per frame (batched where the detector graph allows) and ONE pose call for the
people of all those frames, then hands each camera its own `FrameResult`. ``batched=False`` runs each camera's
own `step` in the tick instead (one detector and one pose call per camera: the baseline of
`scripts/bench_cameras.py`).

Each camera gets its own stream over the shared estimator (`streams.open_stream`: a `PoseStream` of the CPU
pipeline or the Triton client, or a stream of the GPU pipeline): its tracker and One-Euro smoother (tracking
is per camera: one tracker for all would mix people of different cameras), its skip-frame detection state with
`det_interval` N > 1 (the detector on every N-th frame of that camera, boxes from that camera's last keypoints
in between, `rtmw_edge.skipframe`) and its intrinsics (RTMW3D). A camera whose source re-opened continues on a
reset stream; a camera replaced or removed (SIGHUP) gets a new one and its old stream is closed (by this
thread: a stream is only ever used by the thread that runs it). Per frame: stages timed (``detect``/``pose``, or
``inference`` for a one-call estimator, and ``track``; in a batched tick ``pose`` includes the call the tick's
cameras share) → JSON of the `run` schema plus a ``camera`` field → `on_result` (MQTT and the web loop). A frame
that raises is counted and logged (at most every 10 s per camera), never fatal, and fails only its camera.
`stop()` lets the tick in flight finish and be published.

Liveness (`stalled`): the thread is stalled when one tick has run longer than the stall time, or when a camera's
frame has waited that long without being taken. A thread that dies (an exception that is not an `Exception`) is
logged once, with its traceback; `alive()` turns False. `/healthz` and the systemd watchdog use both.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..multicam import TickItem, open_camera_batch
from ..results import FrameResult
from ..streams import open_stream
from .cameras import Camera, CapturedFrame
from .logs import Throttle
from .metrics import Metrics
from .scheduler import CameraView, Plan, Scheduler

log = logging.getLogger("rtmw_edge.serve.worker")

ERROR_LOG_INTERVAL_S = 10.0
IDLE_WAIT_S = 0.5          # the loop wakes at least this often (heartbeat, reloads)


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
                 smoothing: dict | None = None, det_interval: int = 1, batched: bool = True,
                 inference_s: float | None = None) -> None:
        self.estimator = estimator
        self.batched = bool(batched)   # one pose call per tick (else each camera's own calls)
        self.scheduler = Scheduler(inference_s)
        self._batch = None             # made by the inference thread (GPU lanes belong to it)
        self._views: dict[str, CameraView] = {}   # the cameras as the last plan saw them
        self.cameras = list(cameras)
        self.metrics = metrics
        self.on_result = on_result
        self.track, self.smooth, self.smoothing = track, smooth, smoothing or {}
        self.det_interval = int(det_interval)  # > 1: skip-frame detection per camera (rtmw_edge.skipframe)
        self._streams: dict[str, tuple[Camera, int, object]] = {}  # name -> (camera, generation, its stream)
        self._cond = threading.Condition()
        self._pending = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeat = time.monotonic()
        self.busy_since: float | None = None
        self.completed = 0  # frames finished (published or failed)
        self._errors = Throttle(ERROR_LOG_INTERVAL_S)

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
        """Serve these cameras from the next frame on (SIGHUP reload); the streams of cameras gone are closed by
        the inference thread before its next frame."""
        self.cameras = list(cameras)
        self.wake()

    def stream_of(self, name: str):
        """The stream camera NAME runs on now (None before its first frame)."""
        entry = self._streams.get(name)
        return None if entry is None else entry[2]

    def pipeline_timings(self) -> dict[str, dict[str, float]]:
        """{camera: {stage: median milliseconds}} of the streams that time their stages on the GPU (their
        `timings.summary()`), else {"all": ...} from the estimator's own `timings` when it has them."""
        out = {}
        for name, (_, _, stream) in list(self._streams.items()):
            timings = getattr(stream, "timings", None)
            if timings is not None:
                out[name] = timings.summary()
        timings = getattr(self.estimator, "timings", None)
        if not out and timings is not None:
            out["all"] = timings.summary()
        return out

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
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # not an Exception of one frame (those are caught per frame): the thread ends
            log.critical("the inference thread died: %s: %s", type(exc).__name__, exc, exc_info=True,
                         extra={"event": "inference_thread_died"})
        finally:
            self._close_streams(keep=())
            if self._batch is not None:
                try:
                    self._batch.close()
                except Exception as exc:  # noqa: BLE001 - logged, never fatal
                    log.warning("closing the camera batch failed: %s: %s", type(exc).__name__, exc)

    def _sleep(self, seconds: float) -> None:
        """Wait until a grabber stores a frame (or SECONDS pass)."""
        with self._cond:
            if not self._pending:
                self._cond.wait(seconds)
            self._pending = False

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            self._close_streams(keep=self.cameras)
            cameras = self.cameras  # one snapshot: a reload may replace the list meanwhile
            plan = self.plan(cameras)
            if not plan.take:   # nothing due: until a frame comes
                self._sleep(IDLE_WAIT_S)
                continue
            until = time.monotonic() + plan.wait_s   # at most the first plan's wait (within every budget)
            while plan.wait_s > 0 and not self._stop.is_set():
                left = min(plan.wait_s, until - time.monotonic())
                if left <= 0:
                    break
                self._sleep(left)   # cameras due soon fit the others' budgets: let them join the tick
                plan = self.plan(cameras)
            self.heartbeat = time.monotonic()
            self.busy_since = time.monotonic()
            try:
                self._tick(cameras, plan)
            finally:
                self.busy_since = None
                self.heartbeat = time.monotonic()

    def plan(self, cameras: Sequence[Camera], now: float | None = None) -> Plan:
        """The scheduler's plan over CAMERAS now. A camera whose frame it defers (to keep the others within budget)
        is marked: a frame replaced meanwhile is a ``throttled`` drop, and the turn is counted in
        ``frames_deferred_total``."""
        now = time.monotonic() if now is None else now
        views = []
        for cam in cameras:
            budget = cam.budget_s
            self.metrics.budget.labels(cam.name).set(budget or 0.0)
            views.append(CameraView(cam.name, cam.latest_capture(), cam.pending_since, cam.last_capture,
                                    cam.frame_period, budget))
        plan = self.scheduler.plan(now, views)
        self._views = {v.name: v for v in views}
        deferred = set(plan.defer)
        for cam in cameras:
            if cam.name in deferred:
                if not cam.throttled:
                    self.metrics.deferred.labels(cam.name).inc()
                cam.throttled = True
        return plan

    def _tick(self, cameras: Sequence[Camera], plan: Plan) -> None:
        """One tick over the cameras PLAN takes: their frames through the camera batch, then each one published."""
        if self._batch is None:
            self._batch = open_camera_batch(self.estimator, batched=self.batched)
        self._batch.reserve(len(cameras))
        by_name = {c.name: c for c in cameras}
        taken: list[tuple[Camera, CapturedFrame]] = []
        items: list[TickItem] = []
        start = time.monotonic()
        for name in plan.take:
            cam = by_name[name]
            frame = cam.take()
            if frame is None:
                continue
            self.metrics.stage.labels(cam.name, "queue").observe(start - frame.mono)
            try:
                stream = self._stream(cam, frame.generation)
            except Exception as exc:  # a stream that cannot open fails its camera only
                self._error(cam.name, exc)
                self.completed += 1
                continue
            taken.append((cam, frame))
            items.append(TickItem(stream, frame.image, frame.seq, frame.wall, frame.mono))
        if not items:
            return
        try:
            report = self._batch.tick(items)
        except Exception as exc:  # a fault of the tick itself (each camera's own errors come in its outcome)
            for cam, _ in taken:
                self._error(cam.name, exc)
            self.completed += len(taken)
            return
        self.metrics.ticks.inc()
        self.metrics.pose_calls.inc(report.pose_calls)
        self.metrics.tick_cameras.observe(len(items))
        self.metrics.tick_seconds.observe(report.seconds)
        served = [dataclasses.replace(self._views[cam.name], captured=frame.mono) for cam, frame in taken]
        self.scheduler.served(served, report.shares(), start)
        for (cam, _), view in zip(taken, served):   # frames captured before its next slot: above its rate
            cam.not_before = self.scheduler.earliest(view)
        for (cam, frame), outcome in zip(taken, report.outcomes):
            if outcome.error is not None:
                self._error(cam.name, outcome.error)
            else:
                self._publish(cam, frame, outcome.result)
            self.completed += 1

    def _close_streams(self, keep: Sequence[Camera]) -> None:
        """Close the streams of cameras not in KEEP (removed or replaced by a reload; all of them at the end)."""
        self.scheduler.forget({c.name for c in keep})
        live = {id(c) for c in keep}
        for name, entry in list(self._streams.items()):
            if id(entry[0]) not in live:
                self._close_stream(name)

    def _close_stream(self, name: str) -> None:
        _, _, stream = self._streams.pop(name)
        try:
            stream.close()
        except Exception as exc:  # noqa: BLE001 - a stream that cannot close is logged, never fatal
            log.warning("camera %s: closing its stream failed: %s: %s", name, type(exc).__name__, exc)

    def _stream(self, cam: Camera, generation: int):
        """CAM's own stream over the shared estimator: made on its first frame (anew when the camera was
        replaced), reset when its source re-opened (a new generation)."""
        entry = self._streams.get(cam.name)
        if entry is not None and entry[0] is not cam:  # the camera was replaced (SIGHUP): a stream of its own
            self._close_stream(cam.name)
            entry = None
        if entry is None:
            stage = self.metrics.stage
            stream = open_stream(self.estimator, track=self.track, smooth=self.smooth, smoothing=self.smoothing,
                                 det_interval=self.det_interval, camera=cam.intrinsics,
                                 on_stage=lambda name, seconds: stage.labels(cam.name, name).observe(seconds))
            entry = self._streams[cam.name] = (cam, generation, stream)
        elif entry[1] != generation:  # the source re-opened: the same camera starts over
            entry[2].reset()
            entry = self._streams[cam.name] = (cam, generation, entry[2])
        return entry[2]

    def _step(self, cam: Camera, frame: CapturedFrame) -> FrameResult:
        """One frame of CAM on its stream (the tracker's clock: the monotonic capture time)."""
        return self._stream(cam, frame.generation).step(frame.image, frame.seq, frame.wall, clock=frame.mono)

    def _publish(self, cam: Camera, frame: CapturedFrame, result: FrameResult) -> None:
        stage = self.metrics.stage
        t = time.monotonic()
        result.source = cam.description  # credentials masked
        message = result.to_dict()
        message["camera"] = cam.name
        payload = json.dumps(message, separators=(",", ":"))
        t2 = time.monotonic()
        stage.labels(cam.name, "serialize").observe(t2 - t)
        self.metrics.frame_done(cam.name, len(result.persons))  # counted before any client can see it
        self.on_result(Processed(cam.name, frame.seq, frame.image, result, payload, frame.mono))
        end = time.monotonic()
        stage.labels(cam.name, "publish").observe(end - t2)
        stage.labels(cam.name, "total").observe(end - frame.mono)
        budget = cam.budget_s
        if budget is not None and end - frame.mono > budget:
            self.metrics.over_budget.labels(cam.name).inc()

    def _error(self, camera: str, exc: BaseException) -> None:
        self.metrics.inference_errors.labels(camera).inc()
        report, count = self._errors.ready(camera)
        if report:
            text = (str(exc).strip().splitlines() or [""])[0]
            log.error("camera %s: inference failed: %s: %s%s", camera, type(exc).__name__, text,
                      f" ({count} more since the last report)" if count else "",
                      extra={"event": "inference_error", "camera": camera})
