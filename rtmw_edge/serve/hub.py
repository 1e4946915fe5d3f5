"""The web side's state on the event loop: the fan-out of processed frames to WebSocket clients, the latest
frame per camera, the preview JPEGs, and `Offload`, the worker threads that keep CPU work off the loop.

Each frame arrives serialized once (by the inference thread) and is offered to every subscriber's bounded
queue; each client has its own sender task. A client that falls `client_queue` messages behind (``slow``)
or whose send stalls for `send_timeout_s` (``timeout``) is disconnected with close code 1013 and counted,
so it never slows the frame loop or the other clients.

Nothing here does CPU work on the loop: JPEG encoding (preview) and the metrics exposition run in
`Offload`'s threads, and requests share computations: one JPEG per camera frame for every viewer; one
metrics rendering for all the scrapes that arrive before it starts, and at most one rendering every
`METRICS_MIN_INTERVAL_S` (prometheus-client takes ~20 ms of pure Python, holding the GIL, to render the
daemon's ~500 series: fifty clients scraping in a loop would otherwise keep a thread rendering all the time
and slow the event loop by contention). A scrape never gets a rendering that started before it arrived.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
from aiohttp import WSCloseCode, web

from ..viz import draw_frame
from .config import ServerConfig
from .metrics import Metrics
from .worker import Processed

log = logging.getLogger("rtmw_edge.serve.app")

CLOSE_TOO_SLOW = WSCloseCode.TRY_AGAIN_LATER  # 1013
OFFLOAD_THREADS = 2
METRICS_MIN_INTERVAL_S = 0.5  # /metrics renders at most this often (a scrape waits for the next one)


class Offload:
    """A small thread pool for the web side's CPU work, with single-flight sharing of results."""

    def __init__(self, threads: int = OFFLOAD_THREADS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rtmw-edge-offload")
        self._flights: dict[object, tuple[object, asyncio.Future]] = {}  # key -> (version, result)
        self._fresh: dict[object, dict] = {}

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """fn(*args) in a pool thread; unlike run_in_executor, a result that arrives after the loop closed
        (shutdown) is dropped quietly."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def settle(done) -> None:
            if future.done():
                return
            if done.cancelled():
                future.cancel()
            elif done.exception() is not None:
                future.set_exception(done.exception())
            else:
                future.set_result(done.result())

        def hand_over(done) -> None:
            try:
                loop.call_soon_threadsafe(settle, done)
            except RuntimeError:  # the loop is closed
                pass

        self._pool.submit(fn, *args).add_done_callback(hand_over)
        return future

    async def shared(self, key: object, version: object, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) in a pool thread, computed once per (key, version): every caller asking for the same
        version (a camera frame's JPEG), while it runs or later, gets the same result."""
        flight = self._flights.get(key)
        if flight is None or flight[0] != version:
            flight = self._flights[key] = (version, self.run(fn, *args))
        return await asyncio.shield(flight[1])

    async def fresh(self, key: object, fn: Callable[..., Any], min_interval_s: float) -> Any:
        """fn() in a pool thread, started after this call (the result is never older than the request), at
        most once per `min_interval_s`: callers that arrive before the next computation starts share it."""
        loop = asyncio.get_running_loop()
        state = self._fresh.setdefault(key, {"pending": None, "last_start": -float("inf")})
        if state["pending"] is None:
            pending: asyncio.Future = loop.create_future()
            state["pending"] = pending

            def start() -> None:
                state["pending"], state["last_start"] = None, loop.time()  # later callers wait for the next one
                try:
                    job = self.run(fn)
                except RuntimeError:  # the pool was shut down: stopping
                    pending.cancel()
                    return
                job.add_done_callback(lambda j: pending.cancel() if j.cancelled() else
                                      pending.set_exception(j.exception()) if j.exception() is not None else
                                      pending.set_result(j.result()))

            loop.call_at(max(loop.time(), state["last_start"] + min_interval_s), start)
        return await asyncio.shield(state["pending"])

    def forget(self, key: object) -> None:
        self._flights.pop(key, None)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class WsClient:
    """One WebSocket subscriber: a bounded queue drained by its own sender task."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, camera: str | None, hub: Hub) -> None:
        self.ws = ws
        self.request = request
        self.camera = camera
        self.hub = hub
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=hub.cfg.client_queue)
        self.task: asyncio.Task | None = None
        self.dropped = False
        self.peer = request.remote

    def offer(self, payload: str) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.kick("slow")

    async def pump(self) -> None:
        metrics, timeout = self.hub.metrics, self.hub.cfg.send_timeout_s
        while True:
            payload = await self.queue.get()
            try:
                await asyncio.wait_for(self.ws.send_str(payload), timeout)
            except asyncio.TimeoutError:
                self.kick("timeout")
                return
            except (ConnectionError, RuntimeError):  # the peer went away: the handler cleans up
                return
            finally:
                self.queue.task_done()
            metrics.sent.labels("websocket").inc()

    def count_drop(self, reason: str) -> bool:
        """Count a disconnection the daemon decided (once per client); False when already counted."""
        if self.dropped:
            return False
        self.dropped = True
        self.hub.metrics.clients_dropped.labels("websocket", reason).inc()
        return True

    def kick(self, reason: str, code: int = CLOSE_TOO_SLOW, message: bytes = b"too slow") -> None:
        """Disconnect the client (never waits for it)."""
        if not self.count_drop(reason):
            return
        self.hub.report_drop("websocket", reason, self.peer, self.camera)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.hub.spawn(self.close(code, message, 0.5))

    async def close(self, code: int, message: bytes, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message), timeout)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            transport = self.request.transport
            if transport is not None:
                transport.abort()


class Hub:
    """Fan-out of processed frames to the clients; lives on the event loop."""

    def __init__(self, camera_names: list[str], metrics: Metrics, cfg: ServerConfig, kpt_threshold: float) -> None:
        self.cameras = list(camera_names)
        self.metrics = metrics
        self.cfg = cfg
        self.kpt_threshold = kpt_threshold
        self.latest: dict[str, Processed] = {}
        self.clients: set[WsClient] = set()
        self.closing = False
        self._events: dict[str, asyncio.Event] = {name: asyncio.Event() for name in camera_names}
        self.offload = Offload()
        self._tasks: set[asyncio.Task] = set()
        self.on_publish: Callable[[Processed], None] | None = None  # daemon hook (results counter per camera)
        self.viewers = 0  # preview streams open
        self._drop_reports: dict[tuple[str, str], int] = {}

    def full(self) -> bool:
        return len(self.clients) + self.viewers >= self.cfg.max_clients

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def report_drop(self, kind: str, reason: str, peer: str | None, camera: str | None) -> None:
        """Log a dropped client: the first of each (kind, reason) at once, then a count per 10 s (a thousand
        slow clients write a handful of lines)."""
        key = (kind, reason)
        self._drop_reports[key] = self._drop_reports.get(key, 0) + 1
        if self._drop_reports[key] == 1:
            log.warning("%s client %s dropped (%s)", kind, peer, reason,
                        extra={"event": "client_dropped", "peer": peer, "reason": reason, "camera": camera,
                               "kind": kind})
            self.spawn(self._report_later(key))

    async def _report_later(self, key: tuple[str, str]) -> None:
        await asyncio.sleep(10.0)
        count = self._drop_reports.pop(key, 1) - 1
        if count:
            log.warning("%d more %s client(s) dropped (%s) in the last 10 s", count, key[0], key[1],
                        extra={"event": "client_dropped", "reason": key[1], "kind": key[0], "count": count})

    # -- cameras (SIGHUP reload)
    def add_camera(self, name: str) -> None:
        if name not in self.cameras:
            self.cameras.append(name)
            self._events[name] = asyncio.Event()

    def remove_camera(self, name: str) -> int:
        """Forget a camera: its latest frame, and its clients (closed with 1001, counted); returns how many."""
        if name not in self.cameras:
            return 0
        self.cameras.remove(name)
        self.latest.pop(name, None)
        self.offload.forget(("jpeg", name))
        event = self._events.pop(name)
        event.set()  # preview streams of the camera notice and end
        removed = [c for c in self.clients if c.camera == name]
        for client in removed:
            client.kick("camera_removed", WSCloseCode.GOING_AWAY, b"camera removed")
        return len(removed)

    # -- frames
    def publish(self, p: Processed) -> None:
        if p.camera not in self._events:  # a camera removed while its last frame was in flight
            return
        self.latest[p.camera] = p
        for client in list(self.clients):
            if client.camera is None or client.camera == p.camera:
                client.offer(p.payload)
        event = self._events[p.camera]
        self._events[p.camera] = asyncio.Event()
        event.set()
        if self.on_publish is not None:
            self.on_publish(p)

    async def next_frame(self, camera: str, after_seq: int | None) -> Processed | None:
        """The latest frame of CAMERA once it is newer than AFTER_SEQ; None when closing or the camera is gone."""
        while not self.closing and camera in self._events:
            p = self.latest.get(camera)
            if p is not None and p.seq != after_seq:
                return p
            try:
                await asyncio.wait_for(self._events[camera].wait(), 1.0)
            except (asyncio.TimeoutError, KeyError):
                pass
        return None

    def _encode(self, p: Processed) -> bytes:
        image = draw_frame(p.image, p.result, kpt_threshold=self.kpt_threshold)
        width = self.cfg.preview_width
        if width and image.shape[1] > width:
            height = max(1, round(image.shape[0] * width / image.shape[1]))
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.preview_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return data.tobytes()

    async def preview_jpeg(self, p: Processed) -> bytes:
        """The preview JPEG of frame P: encoded once, in a worker thread, for every viewer."""
        return await self.offload.shared(("jpeg", p.camera), p.seq, self._encode, p)

    async def close(self, timeout: float) -> None:
        """Close every client (1001 going away), aborting those that do not answer within TIMEOUT."""
        self.closing = True
        for event in self._events.values():
            event.set()
        clients = list(self.clients)
        pending = [c.queue.join() for c in clients if not c.dropped and not c.queue.empty()]
        if pending:  # let the last frames (the one finished during shutdown) reach the clients first
            try:
                await asyncio.wait_for(asyncio.gather(*pending), timeout / 2)
            except asyncio.TimeoutError:
                pass
        senders = [c.task for c in clients if c.task is not None]
        for client in clients:
            client.dropped = True
        for task in senders:
            task.cancel()
        if clients:
            await asyncio.gather(*(c.close(WSCloseCode.GOING_AWAY, b"server shutting down", timeout)
                                   for c in clients), *senders, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        self.offload.shutdown()
