"""The daemon's lifecycle: start, serve until SIGTERM/SIGINT, stop within 2 s.

Start: listen (so /healthz answers while the engines load), build the `PoseEstimator` (engines loaded
once, shared by every camera), connect MQTT, start the inference worker and one grabber per camera, then
tell systemd ``READY=1``. While running, ``WATCHDOG=1`` goes to systemd only while the inference thread
is alive and not stuck, and ``STATUS=`` shows cameras up and FPS.

Stop (SIGTERM or SIGINT; a budget of `STOP_BUDGET_S`): ``STOPPING=1``; grabbers stop (no new frames);
the frame in flight finishes and is published (WebSocket, MQTT); clients get close code 1001; MQTT says
``offline``; the listener closes; the process exits 0 (``os._exit`` right after the stop, so neither the
interpreter's teardown nor a thread that could not be stopped in time, such as a read blocked inside a
network camera's backend, delays the exit).
"""

from __future__ import annotations

import asyncio
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
from ..errors import RtmwEdgeError
from ..sources import open_source
from .app import Hub, make_app
from .cameras import Camera
from .config import DaemonConfig, ModelConfig
from .metrics import Metrics
from .mqtt import MqttPublisher
from .systemd import Notifier
from .worker import InferenceWorker, Processed

log = logging.getLogger("rtmw_edge.serve")

STOP_BUDGET_S = 1.7      # leaves room for the interpreter to exit within 2 s of the signal
STUCK_AFTER_S = 30.0     # an inference call longer than this makes /healthz fail (and stops the watchdog)
STATUS_EVERY_S = 10.0


def build_estimator(m: ModelConfig):
    """The shared `PoseEstimator` (tracking is per camera, in the worker).

    When the configured backend cannot start (no TensorRT, an engine built for another GPU or TensorRT
    version, a missing engine), fall back to ONNX Runtime on `fallback_det` / `fallback_pose`, or else on
    the ONNX files the engines were built from (their manifests name them), and say so in the log.
    """
    from ..errors import RtmwEdgeError
    from ..pipeline import PoseEstimator

    options = dict(flip_test=m.flip_test, max_persons=m.max_persons, det_threshold=m.det_threshold,
                   kpt_threshold=m.kpt_threshold, threads=m.threads or None, pose_spec=m.pose_spec or None)
    if m.backend == "triton":  # the server runs det + pose; no fallback: a down server is retried per frame
        from ..triton.client import TritonPoseEstimator

        return TritonPoseEstimator(m.triton_url, model=m.triton_model, flip_test=m.flip_test,
                                   max_persons=m.max_persons, det_threshold=m.det_threshold)
    try:
        return PoseEstimator(m.det, m.pose, backend=m.backend, **options)
    except RtmwEdgeError as exc:
        det, pose = _onnx_fallback(m.det, m.fallback_det), _onnx_fallback(m.pose, m.fallback_pose)
        if m.backend == "onnxruntime" or det is None or pose is None:
            raise
        log.warning("backend %s unavailable (%s): falling back to ONNX Runtime with %s and %s",
                    m.backend, exc, det, pose)
        return PoseEstimator(det, pose, backend="onnxruntime", **options)


def _onnx_fallback(model: str, configured: str) -> str | None:
    """The ONNX Runtime stand-in for `model`: the configured one, the model itself when it is already an ONNX
    file or a registered name, or the ONNX an engine was built from (read from its manifest)."""
    from pathlib import Path

    from ..engines import read_manifest

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
    opener: how camera sources are opened (default `rtmw_edge.sources.open_source`).
    """

    def __init__(self, config: DaemonConfig, *, estimator=None, opener=open_source,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        m = config.model
        self.metrics.info.info({"version": __version__, "det": m.det, "pose": m.pose, "backend": m.backend,
                                "cameras": ",".join(c.name for c in config.cameras)})
        self.estimator = estimator
        self.engines_loaded = False
        self.cameras = [Camera(c, self.metrics, self._wake, opener=opener) for c in config.cameras]
        self.mqtt = MqttPublisher(config.mqtt, self.metrics) if config.mqtt.enabled else None
        self.notifier = notifier or Notifier()
        self.worker: InferenceWorker | None = None
        self.hub: Hub | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None
        self.started_at = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self._pending: dict[str, Processed] = {}
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self.stopping = False

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
        uptime = round(time.monotonic() - self.started_at, 1)
        if self.stopping:
            return False, {"status": "stopping", "uptime_s": uptime}
        if self.worker is None:
            return True, {"status": "starting", "uptime_s": uptime}
        busy = self.worker.busy_since
        stuck = busy is not None and time.monotonic() - busy > STUCK_AFTER_S
        alive = self.worker.alive()
        ok = alive and not stuck
        status = "ok" if ok else ("inference stuck" if stuck else "inference thread died")
        return ok, {"status": status, "uptime_s": uptime}

    def readiness(self) -> tuple[bool, dict]:
        server = self.config.server
        now = time.monotonic()
        cams = {c.name: c.status(server.stale_after_s) for c in self.cameras}
        delivering = [c.delivering(server.stale_after_s, now) for c in self.cameras]
        cams_ok = all(delivering) if server.ready_when == "all" else any(delivering)
        live, _ = self.health()
        ready = bool(self.engines_loaded and live and not self.stopping and self.worker is not None and cams_ok)
        self.metrics.ready.set(1 if ready else 0)
        return ready, {"ready": ready, "engines_loaded": self.engines_loaded, "ready_when": server.ready_when,
                       "cameras": cams}

    # -- lifecycle
    async def start(self) -> None:
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        self.hub = Hub([c.name for c in self.cameras], self.metrics, cfg.server, cfg.model.kpt_threshold)
        self.hub.on_publish = self._published
        access = logging.getLogger("aiohttp.access") if cfg.server.access_log else None
        self._runner = web.AppRunner(make_app(self), access_log=access, handle_signals=False,
                                     shutdown_timeout=0.25)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.server.host, cfg.server.port)
        try:
            await site.start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise RtmwEdgeError(f"cannot listen on {cfg.server.host}:{cfg.server.port}: {reason}") from None
        self.port = int(self._runner.addresses[0][1])
        log.info("listening on http://%s:%d (%d camera(s))", cfg.server.host, self.port, len(self.cameras),
                 extra={"event": "listening", "host": cfg.server.host, "port": self.port,
                        "token": bool(cfg.server.token)})
        if self.estimator is None:
            t = time.monotonic()
            self.estimator = await _in_thread(lambda: build_estimator(cfg.model), "rtmw-edge-load")
            log.info("engines loaded in %.1f s (det %s, pose %s, backend %s)", time.monotonic() - t,
                     cfg.model.det, cfg.model.pose, cfg.model.backend, extra={"event": "engines_loaded"})
        self.engines_loaded = True
        if self.mqtt is not None:
            self.mqtt.start()
        smoothing = {k: v for k, v in (("min_cutoff", cfg.model.smooth_min_cutoff),
                                       ("beta", cfg.model.smooth_beta)) if v is not None}
        self.worker = InferenceWorker(self.estimator, self.cameras, self.metrics, self._on_result,
                                      track=cfg.model.track, smooth=cfg.model.smooth, smoothing=smoothing,
                                      det_interval=cfg.model.det_interval)
        self.worker.start()
        for cam in self.cameras:
            cam.start()
        self.notifier.send("READY=1", f"STATUS=serving {len(self.cameras)} camera(s) on port {self.port}")
        if self.notifier.enabled:
            self._tasks.append(asyncio.ensure_future(self._notify_loop()))

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
        if self.mqtt is not None:
            await _in_thread(lambda: self.mqtt.stop(left(0.3)), "rtmw-edge-mqtt-close")
        if self.hub is not None:
            await self.hub.close(left(0.3))
        if self._runner is not None:
            await self._runner.cleanup()
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
        """Start, then serve until SIGTERM or SIGINT; 0 after a clean stop."""
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()

        def on_signal(sig: signal.Signals) -> None:
            log.info("received %s", sig.name, extra={"event": "signal", "signal": sig.name})
            signalled.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
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
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 0


def run_daemon(config: DaemonConfig, *, estimator=None, exit_process: bool = True) -> int:
    """The `rtmw-edge serve` process: JSON logs, serve until a signal, return the exit code.

    With `exit_process` (the CLI) the process ends right after the graceful stop with ``os._exit``: the
    interpreter's own teardown (ONNX Runtime, OpenCV, leftover daemon threads) can take more than a
    second on a loaded machine, and the stop must complete within 2 s of the signal. Logs and stdio are
    flushed first; the daemon has no other state to save.
    """
    from .logs import setup_logging

    setup_logging(config.log.level, config.log.format)
    daemon = Daemon(config, estimator=estimator)
    code = asyncio.run(daemon.run_until_signalled())
    leftover = daemon.leftover_threads()
    if leftover:
        log.debug("not waiting for %s", ", ".join(sorted(set(leftover))), extra={"event": "exit"})
    if exit_process:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


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
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout)
        self._loop.close()

    def __enter__(self) -> DaemonThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
