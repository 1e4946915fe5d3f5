"""Prometheus metrics of the daemon, in a registry of its own (several daemons may live in one process).

Names (all prefixed ``rtmw_edge_``; counters end in ``_total`` in the exposition):

- ``frames_captured_total{camera}``, ``frames_processed_total{camera}``, ``persons_total{camera}``
- ``frames_dropped_total{camera,reason}``: ``stale`` (a newer frame replaced one that was never processed:
  inference is slower than the camera), ``throttled`` (the same, while the scheduler had left the camera's frame
  for a later tick to keep the other cameras within their budgets), ``source`` (the capture's own queue dropped
  it), ``rate`` (above the camera's ``max_fps``), ``corrupt`` (a frame that could not be decoded, skipped)
- ``latency_budget_seconds{camera}`` (its budget, 0: none), ``frames_over_budget_total{camera}`` (published
  later than the budget), ``frames_deferred_total{camera}`` (left for a later tick by the scheduler)
- ``ticks_total``, ``pose_calls_total`` (pose engine calls: per tick, 1 when the people of every camera of the
  tick fit the engine's batch), ``tick_cameras`` histogram (cameras per tick), ``tick_seconds`` histogram
- ``fps{camera}``: processed frames per second over the last 5 s (0 when nothing came in that time)
- ``stage_seconds{camera,stage}`` histogram, stages: ``queue`` (capture → inference start), ``detect``,
  ``pose``, ``inference`` (used instead of detect + pose by estimators without those methods), ``track``,
  ``serialize`` (JSON), ``publish`` (MQTT + hand-over to the web loop), ``total`` (capture → published)
- ``pipeline_stage_median_seconds{camera,stage}`` gauge: the CUDA-stream pipeline's own per-stage timings (CUDA
  events on its streams: upload, letterbox, detector, select, count_wait, crops, pose, decode, download) as the
  median over the frames it timed, read at scrape time from each camera's stream (``camera="all"`` when the
  estimator times its frames as a whole); absent for pipelines without them
- ``camera_up{camera}`` (1 while the source delivers), ``reconnects_total{camera}`` (attempts to re-open a
  lost or failed source), ``inference_errors_total{camera}``
- ``clients{kind}`` (connected now: websocket, preview), ``client_connections_total{kind}``,
  ``clients_dropped_total{kind,reason}``: every disconnection the daemon decides, by reason —
  websocket ``slow`` (its queue filled), ``timeout`` (a send stalled), ``heartbeat`` (no pong),
  ``protocol`` (a malformed or oversized message), ``camera_removed`` (SIGHUP reload); preview ``timeout``;
  connection ``header_timeout`` (no complete request head in time), ``evicted`` (the oldest idle connection,
  closed to make room at the connection cap), ``over_capacity`` (refused at the cap: every connection busy)
- ``clients_refused_total{kind,reason}`` (503 to a streaming request: ``max_clients``, ``shutting_down``),
  ``messages_sent_total{kind}``, ``unauthorized_total``
- ``connections`` (open TCP connections), ``connection_limit`` (the cap), ``accept_errors_total{error}``
  (the listener could not accept: EMFILE, ENFILE, ENOBUFS, ...)
- ``event_loop_lag_seconds`` histogram (how late the event loop wakes a 50 ms timer) and
  ``event_loop_lag_p99_seconds`` (its 99th percentile over the last 60 s)
- ``mqtt_connected``, ``mqtt_messages_total{camera,result}`` (published / dropped)
- ``config_reloads_total{result}`` (SIGHUP: applied / failed)
- ``ready`` (what /readyz answers), ``build_info`` (version, models, the backend in use, the backend requested
  and why it fell back, if it did)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("rtmw_edge.serve.metrics")

PREFIX = "rtmw_edge"
FPS_WINDOW_S = 5.0
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_WINDOW_S = 60.0
TICK_CAMERA_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
DROP_REASONS = ("stale", "throttled", "source", "rate", "corrupt")


class RateMeter:
    """Events per second over a sliding window (thread-safe; read at scrape time)."""

    def __init__(self, window_s: float = FPS_WINDOW_S, maxlen: int = 1024) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._times if now - t <= self.window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], recent[-1] - recent[0])
        return (len(recent) - 1) / span if span > 0 else 0.0


StageTimings = Callable[[], dict[str, dict[str, float]]]   # → {camera: {stage: median milliseconds}}


class PipelineStages:
    """A collector read at scrape time: ``pipeline_stage_median_seconds{camera,stage}`` from a provider of
    per-stage median milliseconds (the GPU pipeline's `timings.summary()` per camera stream)."""

    NAME = f"{PREFIX}_pipeline_stage_median_seconds"
    HELP = "Median time of each stage of the CUDA-stream pipeline (its CUDA event timings)"

    def __init__(self) -> None:
        self.provider: StageTimings | None = None

    def describe(self):
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["camera", "stage"])]

    def collect(self):
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["camera", "stage"])
        provider = self.provider
        if provider is not None:
            try:
                timings = provider()
            except Exception as exc:  # noqa: BLE001 - a scrape never fails for one family
                log.debug("pipeline stage timings unavailable: %s: %s", type(exc).__name__, exc)
                timings = {}
            for camera, stages in sorted(timings.items()):
                for stage, ms in stages.items():
                    family.add_metric([camera, stage], float(ms) / 1000.0)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        p = PREFIX
        self.captured = Counter(f"{p}_frames_captured", "Frames read from the camera", ["camera"], registry=r)
        self.processed = Counter(f"{p}_frames_processed", "Frames through the pose pipeline", ["camera"], registry=r)
        self.persons = Counter(f"{p}_persons", "Persons found, summed over frames", ["camera"], registry=r)
        self.dropped = Counter(f"{p}_frames_dropped", "Frames dropped before inference", ["camera", "reason"],
                               registry=r)
        self.fps = Gauge(f"{p}_fps", "Processed frames per second (last 5 s)", ["camera"], registry=r)
        self.stage = Histogram(f"{p}_stage_seconds", "Latency of each stage of the frame loop",
                               ["camera", "stage"], buckets=STAGE_BUCKETS, registry=r)
        self.camera_up = Gauge(f"{p}_camera_up", "1 while the camera delivers frames", ["camera"], registry=r)
        self.budget = Gauge(f"{p}_latency_budget_seconds", "The camera's latency budget, capture to published "
                            "(0: none)", ["camera"], registry=r)
        self.over_budget = Counter(f"{p}_frames_over_budget", "Frames published later than their camera's budget",
                                   ["camera"], registry=r)
        self.deferred = Counter(f"{p}_frames_deferred", "Times the scheduler left a camera's frame for a later "
                                "tick to keep the others within budget", ["camera"], registry=r)
        self.ticks = Counter(f"{p}_ticks", "Scheduler ticks (one batched pass over the cameras with a frame)",
                             registry=r)
        self.pose_calls = Counter(f"{p}_pose_calls", "Pose engine calls", registry=r)
        self.tick_cameras = Histogram(f"{p}_tick_cameras", "Cameras per tick", buckets=TICK_CAMERA_BUCKETS,
                                      registry=r)
        self.tick_seconds = Histogram(f"{p}_tick_seconds", "Time of one tick (every camera's frame of it)",
                                      buckets=STAGE_BUCKETS, registry=r)
        self.reconnects = Counter(f"{p}_reconnects", "Attempts to re-open a lost or failed source", ["camera"],
                                  registry=r)
        self.inference_errors = Counter(f"{p}_inference_errors", "Frames whose inference raised", ["camera"],
                                        registry=r)
        self.clients = Gauge(f"{p}_clients", "Connected clients", ["kind"], registry=r)
        self.connections = Counter(f"{p}_client_connections", "Client connections accepted", ["kind"], registry=r)
        self.clients_dropped = Counter(f"{p}_clients_dropped", "Clients and connections closed by the daemon",
                                       ["kind", "reason"], registry=r)
        self.clients_refused = Counter(f"{p}_clients_refused", "Streaming requests refused with 503",
                                       ["kind", "reason"], registry=r)
        self.connections_open = Gauge(f"{p}_connections", "Open TCP connections", registry=r)
        self.connection_limit = Gauge(f"{p}_connection_limit", "Most TCP connections at once", registry=r)
        self.accept_errors = Counter(f"{p}_accept_errors", "Failures to accept a connection", ["error"], registry=r)
        self.loop_lag = Histogram(f"{p}_event_loop_lag_seconds", "How late the event loop wakes a timer",
                                  buckets=LAG_BUCKETS, registry=r)
        self._lags: deque[tuple[float, float]] = deque(maxlen=4096)
        self._lags_lock = threading.Lock()
        Gauge(f"{p}_event_loop_lag_p99_seconds", "99th percentile of the event loop lag over the last 60 s",
              registry=r).set_function(self.loop_lag_p99)
        self.reloads = Counter(f"{p}_config_reloads", "Configuration reloads (SIGHUP)", ["result"], registry=r)
        self.sent = Counter(f"{p}_messages_sent", "Messages sent to clients", ["kind"], registry=r)
        self.unauthorized = Counter(f"{p}_unauthorized", "Requests refused for a missing or wrong token",
                                    registry=r)
        self.mqtt_connected = Gauge(f"{p}_mqtt_connected", "1 while connected to the MQTT broker", registry=r)
        self.mqtt_messages = Counter(f"{p}_mqtt_messages", "MQTT messages by result", ["camera", "result"],
                                     registry=r)
        self.ready = Gauge(f"{p}_ready", "1 when /readyz answers 200", registry=r)
        self.info = Info(f"{p}_build", "Version and models of this daemon", registry=r)
        self.pipeline_stages = PipelineStages()
        r.register(self.pipeline_stages)
        self._meters: dict[str, RateMeter] = {}
        for kind in ("websocket", "preview"):
            self.clients.labels(kind).set(0)

    def add_camera(self, name: str) -> None:
        """Create the per-camera series at 0, so dashboards see every camera from the start."""
        meter = self._meters[name] = RateMeter()
        self.fps.labels(name).set_function(meter.rate)
        self.captured.labels(name)
        self.processed.labels(name)
        self.persons.labels(name)
        self.reconnects.labels(name)
        self.inference_errors.labels(name)
        self.camera_up.labels(name).set(0)
        self.budget.labels(name).set(0)
        self.over_budget.labels(name)
        self.deferred.labels(name)
        for reason in DROP_REASONS:
            self.dropped.labels(name, reason)

    def watch_pipeline_stages(self, provider: StageTimings) -> None:
        """Read ``pipeline_stage_median_seconds`` from PROVIDER at every scrape ({camera: {stage: median ms}})."""
        self.pipeline_stages.provider = provider

    def frame_done(self, camera: str, persons: int) -> None:
        self.processed.labels(camera).inc()
        self.persons.labels(camera).inc(persons)
        self._meters[camera].tick()

    def fps_of(self, camera: str) -> float:
        meter = self._meters.get(camera)
        return meter.rate() if meter is not None else 0.0

    def observe_lag(self, seconds: float, now: float | None = None) -> None:
        self.loop_lag.observe(seconds)
        with self._lags_lock:
            self._lags.append((time.monotonic() if now is None else now, seconds))

    def loop_lag_p99(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lags_lock:
            recent = sorted(lag for t, lag in self._lags if now - t <= LAG_WINDOW_S)
        if not recent:
            return 0.0
        return recent[min(len(recent) - 1, int(0.99 * len(recent)))]

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
