"""One grabber thread per camera: open the source, keep only the latest frame, reconnect when it is lost.

Opening and decoding is `rtmw_edge.sources.open_source(spec, prefetch=1)`: a `CaptureSource` already reads
in its own thread, drops stale frames of live sources (counted in ``Source.dropped``) and closes itself on
error. On top of it the grabber:

- holds ONE frame, the latest: when the inference worker has not taken the previous frame yet, it is
  replaced (counted as a ``stale`` drop). Memory per camera is bounded by a handful of frames whatever
  the speed of the camera and of inference;
- paces non-live sources (video files, images) to their own frame rate when ``realtime`` (a file then
  behaves like a camera), and caps any source at ``max_fps`` (frames above it: ``rate`` drops). With
  ``realtime = false`` a file is read only as fast as inference takes its frames: the grabber waits until
  the previous frame was taken, so the decoder (one frame ahead) never runs faster than inference;
- counts frames the source could not decode and skipped (``corrupt``; `Source.skipped`): a bad JPEG in an
  MJPEG stream is one lost frame, not a reconnect, and is logged at most once per 10 s per camera;
- re-reads a file from the start when it ends and ``loop = true`` (it re-opens the path, so a file that was
  deleted or replaced is noticed at the end of a pass);
- treats an open that fails, a read error, or the end of a live stream as a lost source: state ``down``,
  then new attempts after ``reconnect_min_s``, doubling up to ``reconnect_max_s`` (±10 % jitter), each
  counted in ``rtmw_edge_reconnects_total``; the first delivered frame resets the delay. Nothing a source
  does can stop the thread, let alone the daemon.

States: ``connecting`` (first open), ``up``, ``down`` (lost, retrying), ``ended`` (a file without loop
reached its end), ``stopped``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import RtmwEdgeError
from ..run import camera_from_options
from ..sources import Source, mask_credentials, open_source
from .config import CameraConfig
from .logs import Throttle
from .metrics import Metrics

log = logging.getLogger("rtmw_edge.serve.cameras")

STILL_FPS = 1.0   # images / folders used as a camera, without max_fps
VIDEO_FPS = 30.0  # a video file whose frame rate is unknown


@dataclass
class CapturedFrame:
    camera: str
    image: np.ndarray   # uint8 H×W×3 BGR
    seq: int            # per camera, counts captured frames across reconnects (gaps = drops)
    wall: float         # time.time() at capture (published as the result's timestamp)
    mono: float         # time.monotonic() at capture (latency, tracking)
    generation: int     # bumps when the source is re-opened after a loss (trackers restart)


def _one_line(exc: BaseException) -> str:
    text = mask_credentials((str(exc).strip().splitlines() or [""])[0])
    return text if isinstance(exc, RtmwEdgeError) else f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Camera:
    """A camera of the daemon: its grabber thread, its latest frame and its status."""

    def __init__(self, cfg: CameraConfig, metrics: Metrics, wake: Callable[[], None], *,
                 opener: Callable[..., Source] = open_source) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.metrics = metrics
        self.description = mask_credentials(cfg.source)
        self.intrinsics = camera_from_options(cfg.focal or None, cfg.principal or None)  # RTMW3D only
        self._wake = wake
        self._opener = opener
        self._lock = threading.Lock()
        self._taken = threading.Condition(self._lock)  # notified when inference takes the frame
        self._latest: CapturedFrame | None = None
        self.pending_since: float | None = None  # monotonic: since when a frame has waited for inference
        self.throttled = False  # the scheduler deferred its frame: a replaced frame is a "throttled" drop
        self.not_before = float("-inf")  # captures before this are above its rate: a replaced one is a "rate" drop
        self.frame_period: float | None = None  # seconds between its frames (None: unknown), once open
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = "connecting"
        self.kind: str | None = None
        self.error: str | None = None
        self.seq = 0
        self.generation = 0
        self.failures = 0           # consecutive failed attempts (backoff exponent)
        self.reconnects = 0
        self.results = 0            # frames of this camera published (set by the daemon)
        self.last_capture: float | None = None  # monotonic
        self.next_attempt: float | None = None  # monotonic, while down
        self._resume_at = 0.0  # when the next pass of a looping file may deliver (keeps the pace across passes)
        self._skips = Throttle(10.0)  # unreadable frames: one log line per 10 s
        metrics.add_camera(cfg.name)

    # -- consumer side (inference worker)
    def take(self) -> CapturedFrame | None:
        with self._lock:
            frame, self._latest = self._latest, None
            self.pending_since = None
            self.throttled = False
            self._taken.notify_all()
        return frame

    def has_frame(self) -> bool:
        return self._latest is not None

    def latest_capture(self) -> float | None:
        """The monotonic capture time of the frame waiting for inference (None: none), without taking it."""
        frame = self._latest
        return None if frame is None else frame.mono

    @property
    def budget_s(self) -> float | None:
        """Capture → result published, in seconds: `max_latency_ms`, else one frame period at the camera's rate
        (None while the rate is unknown: no budget)."""
        if self.cfg.max_latency_ms:
            return self.cfg.max_latency_ms / 1000.0
        return self.frame_period

    # -- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"rtmw-edge-grab-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop grabbing: no frame is delivered after this returns (the thread ends on its own)."""
        self._stop.set()
        with self._lock:
            self._latest = None
            self.pending_since = None
            self._taken.notify_all()

    def join(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def delivering(self, stale_after_s: float, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return (self.state == "up" and self.results > 0 and self.last_capture is not None
                and now - self.last_capture <= stale_after_s)

    def status(self, stale_after_s: float) -> dict:
        now = time.monotonic()
        age = None if self.last_capture is None else round(now - self.last_capture, 3)
        d = {"state": self.state, "delivering": self.delivering(stale_after_s, now), "source": self.description,
             "kind": self.kind, "frames": self.seq, "results": self.results, "last_frame_age_s": age,
             "reconnects": self.reconnects, "fps": round(self.metrics.fps_of(self.name), 2)}
        if self.state == "down":
            d["error"] = self.error
            d["retry_in_s"] = None if self.next_attempt is None else round(max(0.0, self.next_attempt - now), 2)
        return d

    # -- grabber thread
    def _set_state(self, state: str) -> None:
        self.state = state
        self.metrics.camera_up.labels(self.name).set(1 if state == "up" else 0)

    def _failed(self, exc: BaseException | str) -> bool:
        """Record a lost source and wait out the backoff; False when stopping."""
        self.failures += 1
        self.error = exc if isinstance(exc, str) else _one_line(exc)
        was_up = self.state == "up"
        self._set_state("down")
        delay = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2 ** min(self.failures - 1, 30))
        delay *= random.uniform(0.9, 1.1)
        self.next_attempt = time.monotonic() + delay
        log.warning("camera %s: source lost: %s; retrying in %.1f s" if was_up else
                    "camera %s: cannot open: %s; retrying in %.1f s", self.name, self.error, delay,
                    extra={"event": "camera_down", "camera": self.name, "error": self.error,
                           "attempt": self.failures, "retry_in_s": round(delay, 2)})
        return not self._stop.wait(delay)

    def _run(self) -> None:
        recovering = False
        try:
            while not self._stop.is_set():
                if recovering:
                    self.reconnects += 1
                    self.metrics.reconnects.labels(self.name).inc()
                try:
                    source = self._opener(self.cfg.source, prefetch=1, loop=False, on_skip=self._skipped)
                except Exception as exc:  # any failure to open is a lost source, never a crash
                    recovering = True
                    if not self._failed(exc):
                        break
                    continue
                self.kind = source.kind
                outcome, error, delivered = self._pump(source)
                if outcome == "stopped":
                    break
                if outcome == "end" and not source.live and delivered:
                    if self.cfg.loop:
                        recovering = False  # the next pass of a looping file, at the same pace
                        continue
                    self._set_state("ended")
                    log.info("camera %s: %s ended (loop = false)", self.name, self.description,
                             extra={"event": "camera_ended", "camera": self.name})
                    return
                recovering = True
                self._resume_at = 0.0
                reason = error if error is not None else ("stream ended" if source.live else "no frames")
                if not self._failed(reason):
                    break
        finally:
            if self.state != "ended":
                self._set_state("stopped")

    def _period(self, source: Source) -> float:
        cap = self.cfg.max_fps
        if source.live:
            return 1.0 / cap if cap else 0.0
        if not self.cfg.realtime:
            return 1.0 / cap if cap else 0.0
        own = source.fps or (VIDEO_FPS if source.kind == "video" else STILL_FPS)
        return 1.0 / min(own, cap) if cap else 1.0 / own

    @staticmethod
    def _declared_period(source: Source) -> float | None:
        """A live source without `max_fps` runs at the rate it declares, when that is a plausible camera rate
        (network streams often declare 0 or a clock rate); a file read as fast as inference has none."""
        fps = source.fps if source.live else None
        return 1.0 / fps if fps and 1.0 <= fps <= 240.0 else None

    def _skipped(self, message: str) -> None:
        """A frame the source could not decode (counted by `_pump` from `Source.skipped`)."""
        report, count = self._skips.ready("skip")
        if report:
            log.warning("camera %s: %s%s", self.name, message,
                        f" ({count} more since the last report)" if count else "",
                        extra={"event": "frame_skipped", "camera": self.name, "repeats": count})

    def _wait_taken(self) -> bool:
        """Wait until inference took the previous frame (realtime = false); False when stopping."""
        with self._taken:
            while self._latest is not None and not self._stop.is_set():
                self._taken.wait(0.5)
        return not self._stop.is_set()

    def _pump(self, source: Source) -> tuple[str, BaseException | None, bool]:
        """Read SOURCE until it ends, fails or we stop: (outcome, error, delivered any frame)."""
        period = self._period(source)
        live = source.live
        self.frame_period = period or self._declared_period(source)
        by_consumer = not live and not self.cfg.realtime
        next_due = time.monotonic() if live else max(self._resume_at, time.monotonic())
        dropped_seen = corrupt_seen = 0
        delivered = False
        try:
            for frame in source:
                if self._stop.is_set():
                    return "stopped", None, delivered
                now = time.monotonic()
                if period:
                    if live:
                        if now < next_due:
                            self.metrics.dropped.labels(self.name, "rate").inc()
                            self.seq += 1
                            continue
                        next_due = max(next_due + period, now)
                    else:
                        if next_due > now and self._stop.wait(next_due - now):
                            return "stopped", None, delivered
                        next_due = max(next_due + period, time.monotonic() - period)
                        self._resume_at = next_due
                if source.dropped > dropped_seen:
                    self.metrics.dropped.labels(self.name, "source").inc(source.dropped - dropped_seen)
                    self.seq += source.dropped - dropped_seen
                    dropped_seen = source.dropped
                if source.skipped > corrupt_seen:
                    self.metrics.dropped.labels(self.name, "corrupt").inc(source.skipped - corrupt_seen)
                    self.seq += source.skipped - corrupt_seen
                    corrupt_seen = source.skipped
                if by_consumer and not self._wait_taken():
                    return "stopped", None, delivered
                self._deliver(frame.image)
                delivered = True
            return "end", None, delivered
        except Exception as exc:  # RtmwEdgeError from the reader, or anything unexpected
            return "error", exc, delivered
        finally:
            source.close()

    def _deliver(self, image: np.ndarray) -> None:
        if self._stop.is_set():
            return
        if self.state != "up":
            if self.state == "down":
                self.generation += 1
            self.failures = 0
            self.error = None
            self.next_attempt = None
            self._set_state("up")
            log.info("camera %s: delivering (%s, %s)", self.name, self.kind, self.description,
                     extra={"event": "camera_up", "camera": self.name, "kind": self.kind,
                            "reconnects": self.reconnects})
        frame = CapturedFrame(self.name, image, self.seq, time.time(), time.monotonic(), self.generation)
        self.seq += 1
        self.metrics.captured.labels(self.name).inc()
        with self._lock:
            if self._latest is not None:
                old = self._latest.mono
                reason = "rate" if old < self.not_before else "throttled" if self.throttled else "stale"
                self.metrics.dropped.labels(self.name, reason).inc()
            elif self.pending_since is None:
                self.pending_since = frame.mono
            self._latest = frame
            self.last_capture = frame.mono
        self._wake()
