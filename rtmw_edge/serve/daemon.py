"""The daemon's lifecycle: start, serve until SIGTERM/SIGINT, reload on SIGHUP, stop within 2 s.

Start: listen (so /healthz answers while the engines load) behind the connection guard
(`connections.py`), build the estimator through `estimators.open_estimator` (the pipeline the configured backend
means — CPU, CUDA-stream or Triton — with its engines loaded once and shared by every camera, each camera on a
stream of its own; the backend and pipeline actually in use, and why a fallback happened, are logged and
reported), connect MQTT, start the inference worker and one grabber per camera, then tell systemd
``READY=1``. While running, ``WATCHDOG=1`` goes to systemd only while the inference thread is alive and not
stalled, ``STATUS=`` shows cameras up and FPS, and a timer measures how late the event loop runs
(``event_loop_lag_seconds``); /metrics carries the CUDA-stream pipeline's own stage timings when it runs.

Reload (SIGHUP): the configuration file is read again. Cameras added, removed or changed are applied
without touching the others (their clients stay connected); the token and the log level are applied;
any other changed key is logged as needing a restart. An invalid file is logged and the running
configuration kept. The daemon never exits on SIGHUP.

Stop (SIGTERM or SIGINT; a budget of `STOP_BUDGET_S`): ``STOPPING=1``; the listener closes and connections
without a request in progress are closed; grabbers stop (no new frames); the frame in flight finishes and
is published (WebSocket, MQTT); clients get close code 1001; MQTT says ``offline``; the process exits 0
(``os._exit`` right after the stop, so neither the interpreter's teardown nor a thread that could not be
stopped in time, such as a read blocked inside a network camera's backend, delays the exit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .. import __version__
from .. import signals as stop_signals
from ..engines import read_manifest
from ..errors import RtmwEdgeError
from ..estimators import active_backends, backend_summary, open_estimator
from ..sources import mask_credentials, open_source
from .app import AccessLogger, WebContext, make_app
from .cameras import Camera
from .config import DaemonConfig, ModelConfig, is_loopback
from .connections import ConnectionGuard, GuardedSite, LoopErrorReporter, auto_max_connections, raise_open_file_limit
from .hub import Hub
from .logs import setup_logging
from .metrics import Metrics
from .mqtt import MqttPublisher
from .scheduler import check_budgets, measure_inference
from .systemd import Notifier
from .worker import InferenceWorker, Processed

log = logging.getLogger("rtmw_edge.serve")

STOP_BUDGET_S = 1.7      # leaves room for the interpreter to exit within 2 s of the signal
STATUS_EVERY_S = 10.0
LAG_INTERVAL_S = 0.05    # the loop-lag timer
# [server] / [model] / [mqtt] keys a SIGHUP applies at once; a change of any other needs a restart
RELOADABLE = {("server", "token"), ("server", "token_file")}


def build_estimator(m: ModelConfig):
    """The shared estimator (`estimators.open_estimator`: the pipeline `m.backend` means; tracking, smoothing,
    skip-frame state and intrinsics are per camera, in the worker's streams) and the fallback reason (None
    when the configured backend started).

    When the configured backend cannot start (no GPU or no TensorRT, an engine built for another GPU or TensorRT
    version, a missing engine), fall back to ONNX Runtime on the CPU pipeline with `fallback_det` /
    `fallback_pose`, or else with the ONNX files the engines were built from (their manifests name them), and
    say so in the log. A Triton server has no fallback: a server that is down is retried per frame.
    """
    common = dict(flip_test=m.flip_test, max_persons=m.max_persons, det_threshold=m.det_threshold,
                  kpt_threshold=m.kpt_threshold)
    if m.backend == "triton":
        return open_estimator(backend="triton", triton_url=m.triton_url, triton_model=m.triton_model, **common), None
    options = dict(common, threads=m.threads or None, pose_spec=m.pose_spec or None)
    try:
        return open_estimator(m.det, m.pose, m.backend, **options), None
    except RtmwEdgeError as exc:
        det, pose = _onnx_fallback(m.det, m.fallback_det), _onnx_fallback(m.pose, m.fallback_pose)
        if m.backend == "onnxruntime" or det is None or pose is None or (m.backend == "auto" and
                                                                          (det, pose) == (m.det, m.pose)):
            raise  # no other files to fall back to: ONNX Runtime already ran these (auto on .onnx files)
        reason = mask_credentials((str(exc).strip().splitlines() or [type(exc).__name__])[0])
        log.warning("backend %s unavailable (%s): falling back to ONNX Runtime with %s and %s",
                    m.backend, reason, det, pose, extra={"event": "backend_fallback", "requested": m.backend,
                                                         "reason": reason})
        return open_estimator(det, pose, "onnxruntime", **options), reason


def _onnx_fallback(model: str, configured: str) -> str | None:
    """The ONNX Runtime stand-in for `model`: the configured one, the model itself when it is already an ONNX
    file or a registered name, or the ONNX an engine was built from (read from its manifest)."""
    from pathlib import Path

    if configured:
        return configured
    if Path(model).suffix.lower() not in (".engine", ".plan", ".trt"):
        return model
    try:
        manifest = read_manifest(model)
    except Exception:  # an unreadable manifest gives no fallback; the original error is reported
        return None
    onnx = (manifest or {}).get("onnx", {}).get("path")
    return onnx if onnx and Path(onnx).is_file() else None


def _start_after(old: Camera, new: Camera, timeout: float = 2.0) -> None:
    """Start NEW once OLD's grabber thread ended (at most TIMEOUT later), without waiting here."""
    threading.Thread(target=lambda: (old.join(timeout), new.start()), name=f"rtmw-edge-restart-{new.name}",
                     daemon=True).start()


def _in_thread(fn: Callable[[], Any], name: str) -> asyncio.Future:
    """Run FN in a daemon thread (unlike an executor, never holds up the interpreter's exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def target() -> None:
        try:
            value, error = fn(), None
        except BaseException as exc:  # handed to the awaiting coroutine
            value, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:  # the loop is gone: nobody waits any more
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class Daemon:
    """Cameras → one inference worker → WebSocket / HTTP / MQTT. Use `run_daemon` from the command line;
    tests and embedding code call `await start()` / `await stop()` on their own event loop.

    estimator: an already built estimator to share (default: built from ``config.model`` on start);
    opener: how camera sources are opened (default `rtmw_edge.sources.open_source`);
    reloader: reads the configuration again (SIGHUP); None: SIGHUP is logged and ignored;
    on_secrets: told the secrets of a reloaded configuration (the log redaction).
    """

    def __init__(self, config: DaemonConfig, *, estimator=None, opener=open_source,
                 notifier: Notifier | None = None, reloader: Callable[[], DaemonConfig] | None = None,
                 on_secrets: Callable[[list[str]], None] | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.estimator = estimator
        self._owns_estimator = False   # an estimator handed in belongs to the caller
        self.fallback_reason: str | None = None
        self.inference_s: float | None = None   # one inference, measured at start when a camera sets a budget
        self.backends: dict[str, str] | None = None
        self._set_build_info()
        self.engines_loaded = False
        self._opener = opener
        self.cameras = [Camera(c, self.metrics, self._wake, opener=opener) for c in config.cameras]
        self.mqtt = MqttPublisher(config.mqtt, self.metrics) if config.mqtt.enabled else None
        self.notifier = notifier or Notifier()
        self.reloader = reloader
        self.on_secrets = on_secrets
        self.worker: InferenceWorker | None = None
        self.hub: Hub | None = None
        self.guard: ConnectionGuard | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None
        self.started_at = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._site: GuardedSite | None = None
        self._tasks: list[asyncio.Task] = []
        self._pending: dict[str, Processed] = {}
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self._reloading = False
        self.stopping = False

    def _set_build_info(self) -> None:
        m = self.config.model
        backends = self.backends
        self.metrics.info.info({
            "version": __version__, "det": mask_credentials(m.det), "pose": mask_credentials(m.pose),
            "backend": backend_summary(backends) if backends else "loading", "backend_requested": m.backend,
            "fallback": self.fallback_reason or "", "cameras": ",".join(c.name for c in self.config.cameras)})

    def backend_report(self) -> dict:
        """What /readyz and the start-up line say about the backend: the one requested, the engines and the
        pipeline that run ("onnxruntime (cpu)", "tensorrt (cuda-stream)", "triton (remote)"), and why a fallback
        happened."""
        return {"requested": self.config.model.backend, "active": backend_summary(self.backends) if self.backends
                else None, **(dict(self.backends) if self.backends else {}), "fallback_reason": self.fallback_reason}

    # -- frames from the worker thread to the loop (coalesced per camera: never an unbounded backlog)
    def _wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    def _on_result(self, p: Processed) -> None:
        if self.mqtt is not None:
            self.mqtt.publish(p.camera, p.payload)
        with self._pending_lock:
            self._pending[p.camera] = p
            if self._flush_scheduled or self.loop is None:
                return
            self._flush_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop is closed (shutting down)
            pass

    def _flush(self) -> None:
        with self._pending_lock:
            items = list(self._pending.values())
            self._pending.clear()
            self._flush_scheduled = False
        if self.hub is not None:
            for p in items:
                self.hub.publish(p)

    def _published(self, p: Processed) -> None:
        for cam in self.cameras:
            if cam.name == p.camera:
                cam.results += 1

    # -- health
    def health(self) -> tuple[bool, dict]:
        """Liveness: fails once the inference thread died, or stalled (an inference call, or a waiting frame,
        older than ``server.inference_stall_s``)."""
        uptime = round(time.monotonic() - self.started_at, 1)
        if self.stopping:
            return False, {"status": "stopping", "uptime_s": uptime}
        if self.worker is None:
            return True, {"status": "starting", "uptime_s": uptime}
        if not self.worker.alive():
            return False, {"status": "inference thread died", "uptime_s": uptime}
        stalled = self.worker.stalled(self.config.server.inference_stall_s)
        if stalled is not None:
            return False, {"status": "inference stalled", "detail": stalled, "uptime_s": uptime}
        return True, {"status": "ok", "uptime_s": uptime}

    def readiness(self) -> tuple[bool, dict]:
        server = self.config.server
        now = time.monotonic()
        cams = {c.name: c.status(server.stale_after_s) for c in self.cameras}
        delivering = [c.delivering(server.stale_after_s, now) for c in self.cameras]
        cams_ok = all(delivering) if server.ready_when == "all" else any(delivering)
        live, _ = self.health()
        ready = bool(self.engines_loaded and live and not self.stopping and self.worker is not None and cams_ok)
        self.metrics.ready.set(1 if ready else 0)
        return ready, {"ready": ready, "engines_loaded": self.engines_loaded, "backend": self.backend_report(),
                       "ready_when": server.ready_when, "cameras": cams}

    # -- lifecycle
    async def start(self) -> None:
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(LoopErrorReporter())
        self.hub = Hub([c.name for c in self.cameras], self.metrics, cfg.server, cfg.model.kpt_threshold)
        self.hub.on_publish = self._published
        max_connections = cfg.server.max_connections or auto_max_connections()
        self.guard = ConnectionGuard(self.metrics, max_connections, cfg.server.header_timeout_s)
        context = WebContext(self.hub, self.metrics, cfg.server, self.guard, self.health, self.readiness)
        access = logging.getLogger("aiohttp.access") if cfg.server.access_log else None
        self._runner = web.AppRunner(make_app(context), access_log=access, access_log_class=AccessLogger,
                                     handle_signals=False, shutdown_timeout=0.25,
                                     keepalive_timeout=cfg.server.idle_timeout_s)
        await self._runner.setup()
        self._site = GuardedSite(self._runner, cfg.server.host, cfg.server.port, self.guard)
        try:
            await self._site.start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise RtmwEdgeError(f"cannot listen on {cfg.server.host}:{cfg.server.port}: {reason}") from None
        self.guard.start()
        self._tasks.append(asyncio.ensure_future(self._watch_loop_lag()))
        self.port = self._site.port
        log.info("listening on http://%s:%d (%d camera(s), at most %d connections)", cfg.server.host, self.port,
                 len(self.cameras), max_connections,
                 extra={"event": "listening", "host": cfg.server.host, "port": self.port,
                        "token": bool(cfg.server.token), "max_connections": max_connections})
        if not cfg.server.token and not is_loopback(cfg.server.host):
            log.warning("INSECURE: listening on %s without a token (--insecure): anyone who can reach this port "
                        "can watch every camera's poses and previews; set server.token or RTMW_EDGE_TOKEN",
                        cfg.server.host, extra={"event": "insecure", "host": cfg.server.host})
        if self.estimator is None:
            t = time.monotonic()
            self.estimator, self.fallback_reason = await _in_thread(lambda: build_estimator(cfg.model),
                                                                    "rtmw-edge-load")
            self._owns_estimator = True
            loaded_in = time.monotonic() - t
        else:
            loaded_in = 0.0
        self.backends = active_backends(self.estimator)
        self._set_build_info()
        backend = backend_summary(self.backends)
        fallback = f"; fallback from {cfg.model.backend}: {self.fallback_reason}" if self.fallback_reason else ""
        log.info("engines loaded in %.1f s: backend %s (requested %s%s)", loaded_in, backend, cfg.model.backend,
                 fallback, extra={"event": "engines_loaded", "backend": backend, "requested": cfg.model.backend,
                                  "fallback_reason": self.fallback_reason, "det": mask_credentials(cfg.model.det),
                                  "pose": mask_credentials(cfg.model.pose)})
        if any(c.max_latency_ms for c in cfg.cameras):   # budgets set: each must hold one inference
            self.inference_s = await _in_thread(lambda: measure_inference(self.estimator), "rtmw-edge-warmup")
            check_budgets(cfg.cameras, self.inference_s, str(cfg.path or "configuration"))
        self.engines_loaded = True
        if self.mqtt is not None:
            self.mqtt.start()
        smoothing = {k: v for k, v in (("min_cutoff", cfg.model.smooth_min_cutoff),
                                       ("beta", cfg.model.smooth_beta)) if v is not None}
        self.worker = InferenceWorker(self.estimator, self.cameras, self.metrics, self._on_result,
                                      track=cfg.model.track, smooth=cfg.model.smooth, smoothing=smoothing,
                                      det_interval=cfg.model.det_interval, inference_s=self.inference_s)
        self.metrics.watch_pipeline_stages(self.worker.pipeline_timings)
        self.worker.start()
        for cam in self.cameras:
            cam.start()
        self.notifier.send("READY=1", f"STATUS=serving {len(self.cameras)} camera(s) on port {self.port}")
        log.info("serving %d camera(s) on http://%s:%d with backend %s%s", len(self.cameras), cfg.server.host,
                 self.port, backend, fallback, extra={"event": "serving", "backend": backend,
                                                      "fallback_reason": self.fallback_reason})
        if self.notifier.enabled:
            self._tasks.append(asyncio.ensure_future(self._notify_loop()))

    async def _watch_loop_lag(self) -> None:
        """How late the loop wakes a timer: the time any callback on the loop makes every other one wait."""
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_INTERVAL_S)
            self.metrics.observe_lag(max(0.0, loop.time() - t - LAG_INTERVAL_S))

    async def _notify_loop(self) -> None:
        period = min(self.notifier.watchdog_s / 2, STATUS_EVERY_S) if self.notifier.watchdog_s else STATUS_EVERY_S
        last_status = 0.0
        while not self.stopping:
            ok, _ = self.health()
            lines = ["WATCHDOG=1"] if ok and self.notifier.watchdog_s else []
            if time.monotonic() - last_status >= STATUS_EVERY_S:
                up = sum(c.state == "up" for c in self.cameras)
                fps = sum(self.metrics.fps_of(c.name) for c in self.cameras)
                lines.append(f"STATUS={up}/{len(self.cameras)} camera(s) up, {fps:.1f} FPS")
                last_status = time.monotonic()
            if lines:
                self.notifier.send(*lines)
            await asyncio.sleep(period)

    # -- reload (SIGHUP)
    async def reload(self) -> bool:
        """Read the configuration again and apply it (see the module docstring); True when applied."""
        if self.reloader is None:
            log.info("SIGHUP: no configuration file to reload; ignored", extra={"event": "reload_ignored"})
            return False
        if self.worker is None or self.stopping or self._reloading:
            log.info("SIGHUP while starting, stopping or reloading: ignored (send it again once ready)",
                     extra={"event": "reload_ignored"})
            return False
        self._reloading = True
        try:
            try:
                new = self.reloader()
            except RtmwEdgeError as exc:
                self.metrics.reloads.labels("failed").inc()
                log.error("reload failed, keeping the running configuration: %s", exc,
                          extra={"event": "reload_failed"})
                return False
            try:
                check_budgets(new.cameras, self.inference_s or self.worker.scheduler.one_camera_s(),
                              str(new.path or "configuration"))
            except RtmwEdgeError as exc:
                self.metrics.reloads.labels("failed").inc()
                log.error("reload failed, keeping the running configuration: %s", exc,
                          extra={"event": "reload_failed"})
                return False
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            self.apply(new)
            self.metrics.reloads.labels("applied").inc()
            self.notifier.send("READY=1")
            return True
        finally:
            self._reloading = False

    def apply(self, new: DaemonConfig) -> dict[str, list[str]]:
        """Apply a new configuration to the running daemon (on the loop); what changed, by kind."""
        old = self.config
        restart = []
        for section in ("server", "model", "mqtt"):
            before, after = getattr(old, section), getattr(new, section)
            for f in dataclasses.fields(before):
                if getattr(before, f.name) != getattr(after, f.name):
                    if (section, f.name) in RELOADABLE:
                        setattr(before, f.name, getattr(after, f.name))  # the handlers read it per request
                    else:
                        restart.append(f"{section}.{f.name}")
        if new.log.level != old.log.level:
            logging.getLogger().setLevel(getattr(logging, new.log.level.upper()))
        if new.log.format != old.log.format:
            restart.append("log.format")
        old.log.level = new.log.level
        current = {c.name: c for c in self.cameras}
        wanted = {c.name: c for c in new.cameras}
        added = [n for n in wanted if n not in current]
        removed = [n for n in current if n not in wanted]
        changed = [n for n in wanted if n in current and current[n].cfg != wanted[n]]
        assert self.hub is not None and self.worker is not None
        for name in removed + changed:
            current[name].stop()
        kicked = sum(self.hub.remove_camera(name) for name in removed)
        cameras = []
        for name, cfg in wanted.items():
            if name in added or name in changed:
                cam = Camera(cfg, self.metrics, self._wake, opener=self._opener)
                self.hub.add_camera(name)
                if name in changed:  # a device (USB camera) opens once: the old grabber lets go first
                    _start_after(current[name], cam)
                else:
                    cam.start()
            else:
                cam = current[name]
            cameras.append(cam)
        self.cameras = cameras
        old.cameras = list(new.cameras)
        self.worker.set_cameras(cameras)
        self._set_build_info()
        if self.on_secrets is not None:
            self.on_secrets(self.config.secrets())
        summary = {"added": added, "removed": removed, "changed": changed,
                   "unchanged": [n for n in wanted if n not in added and n not in changed], "restart_needed": restart}
        log.info("configuration reloaded: cameras added %s, removed %s, changed %s, unchanged %s%s",
                 added or "none", removed or "none", changed or "none", summary["unchanged"] or "none",
                 f"; not applied until a restart: {', '.join(restart)}" if restart else "",
                 extra={"event": "reloaded", "clients_closed": kicked, **summary})
        return summary

    async def stop(self) -> None:
        """Graceful stop within `STOP_BUDGET_S`; safe to call twice, or after a failed start."""
        if self.stopping:
            return
        self.stopping = True
        t0 = time.monotonic()

        def left(cap: float) -> float:
            return max(0.0, min(cap, STOP_BUDGET_S - (time.monotonic() - t0)))

        self.notifier.send("STOPPING=1")
        log.info("stopping", extra={"event": "stopping"})
        if self._site is not None:
            self._site.stop_listening()  # no new connections from here on
        if self.guard is not None:
            self.guard.abort_pending()  # half-open and idle connections: nothing to finish
        for task in self._tasks:
            task.cancel()
        for cam in self.cameras:
            cam.stop()
        if self.worker is not None:
            self.worker.stop()
            deadline = time.monotonic() + left(1.0)
            while self.worker.alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if self.worker.alive():
                log.warning("the frame in flight did not finish within the stop budget",
                            extra={"event": "stop_overrun"})
        self._flush()  # the frame finished during shutdown still reaches the clients
        if self._owns_estimator and not (self.worker is not None and self.worker.alive()):
            self._owns_estimator = False   # engines, CUDA streams and contexts released in order, not by the GC
            try:
                self.estimator.close()
            except Exception as exc:  # noqa: BLE001 - shutdown goes on; the reason is logged
                log.warning("closing the model failed: %s: %s", type(exc).__name__, exc)
        if self.mqtt is not None:
            await _in_thread(lambda: self.mqtt.stop(left(0.3)), "rtmw-edge-mqtt-close")
        if self.hub is not None:
            await self.hub.close(left(0.3))
        if self._runner is not None:
            await self._runner.cleanup()
        if self.guard is not None:
            self.guard.stop()
        joined_by = time.monotonic() + left(0.2)  # grabbers usually end at once; never wait long for them
        for cam in self.cameras:
            cam.join(max(0.0, joined_by - time.monotonic()))
        self.notifier.close()
        log.info("stopped in %.2f s", time.monotonic() - t0, extra={"event": "stopped"})

    def leftover_threads(self) -> list[str]:
        """Our threads still running after `stop` (daemon threads: they die with the process)."""
        return [t.name for t in threading.enumerate()
                if t is not threading.current_thread() and t.name.startswith("rtmw-edge-") and t.is_alive()]

    async def run_until_signalled(self) -> int:
        """Start, then serve until SIGTERM or SIGINT (SIGHUP reloads); 0 after a clean stop."""
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()

        def on_signal(sig: signal.Signals) -> None:
            log.info("received %s", sig.name, extra={"event": "signal", "signal": sig.name})
            signalled.set()

        def on_hangup() -> None:
            log.info("received SIGHUP: reloading the configuration", extra={"event": "signal", "signal": "SIGHUP"})
            self._tasks.append(asyncio.ensure_future(self.reload()))

        # the handlers before ours (the CLI's flag): put back after the stop, as asyncio would leave the defaults,
        # which a second SIGTERM between the stop and the exit would turn into death by the signal
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        if stop_signals.requested():  # it came while the CLI was starting (its handler only set the flag)
            on_signal(signal.Signals(stop_signals.requested()))
        try:
            starting = asyncio.ensure_future(self.start())
            waiting = asyncio.ensure_future(signalled.wait())
            await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # raises a failed start (port in use, model not found, ...)
                await waiting
            else:
                starting.cancel()
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)
        return 0


def run_daemon(config: DaemonConfig, *, estimator=None, exit_process: bool = True,
               reloader: Callable[[], DaemonConfig] | None = None) -> int:
    """The `rtmw-edge serve` process: JSON logs, serve until a signal, return the exit code.

    With `exit_process` (the CLI) the process raises its open-file limit to the hard limit, captures what
    native libraries write on stderr into the log, and ends right after the graceful stop with ``os._exit``:
    the interpreter's own teardown (ONNX Runtime, OpenCV, leftover daemon threads) can take more than a
    second on a loaded machine, and the stop must complete within 2 s of the signal. Logs and stdio are
    flushed first; the daemon has no other state to save.
    """
    before, after = raise_open_file_limit() if exit_process else (None, None)
    logs = setup_logging(config.log.level, config.log.format, secrets=config.secrets(), capture_native=exit_process)
    if before != after:
        log.info("open-file limit raised from %d to %d", before, after,
                 extra={"event": "nofile", "before": before, "after": after})
    daemon = Daemon(config, estimator=estimator, reloader=reloader, on_secrets=logs.redact.set_secrets)
    try:
        code = asyncio.run(daemon.run_until_signalled())
    except BaseException:
        logs.close()
        raise
    leftover = daemon.leftover_threads()
    if leftover:
        log.debug("not waiting for %s", ", ".join(sorted(set(leftover))), extra={"event": "exit"})
    logs.close()
    if exit_process:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


async def _cancel_leftover_tasks() -> None:
    """Cancel every task of the running loop but this one (client senders, handlers) and let them unwind."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class DaemonThread:
    """A `Daemon` on its own event loop in a background thread (embedding in another program, tests).

    ``with DaemonThread(config) as d: ... d.port ...``: `start` returns once the daemon listens and its
    engines are loaded (raising what a failed start raised); `stop` runs the graceful stop.
    """

    def __init__(self, config: DaemonConfig, **daemon_kwargs) -> None:
        self.daemon = Daemon(config, **daemon_kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="daemon-loop", daemon=True)

    @property
    def port(self) -> int | None:
        return self.daemon.port

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine on the daemon's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self, timeout: float = 60.0) -> DaemonThread:
        self._thread.start()
        try:
            self.call(self.daemon.start(), timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            try:
                self.call(self.daemon.stop(), timeout)
            finally:
                try:  # what asyncio.run does before closing its loop: no coroutine is left to die with it
                    self.call(_cancel_leftover_tasks(), timeout)
                finally:
                    self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout)
        self._loop.close()

    def __enter__(self) -> DaemonThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
