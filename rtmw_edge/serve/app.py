"""The daemon's web side (aiohttp): results out over WebSocket and HTTP, health, readiness and metrics.

Endpoints (every one behind the bearer token when ``[server] token`` is set; ``health_without_token``
exempts /healthz and /readyz for probes):

- ``GET /ws?camera=NAME`` WebSocket: one text message per processed frame of NAME (every camera when
  ``camera`` is left out): the `run` JSON schema (rtmw_edge.results) plus ``"camera"``. What the client
  sends is ignored. Each client has a queue of ``client_queue`` messages; a client that falls that far
  behind, or whose send stalls ``send_timeout_s``, is disconnected (close code 1013, "too slow") and
  counted: a slow or stalled client never slows the frame loop or the other clients.
  At most ``max_clients`` WebSocket and preview clients together; more get 503.
- ``GET /latest/{camera}``: the latest message of that camera (503 until there is one).
- ``GET /preview/{camera}.mjpg``: MJPEG (multipart/x-mixed-replace) of the frames with the skeletons
  drawn, at most ``preview_fps``; encoded once per frame for all viewers, only while someone watches.
- ``GET /healthz``: 200 while the process and its inference thread are alive (liveness).
- ``GET /readyz``: 200 when the engines are loaded and the cameras deliver (``ready_when`` all / any),
  else 503; the body tells each camera's state either way.
- ``GET /metrics``: Prometheus text format (rtmw_edge.serve.metrics).
- ``GET /``: the list of cameras and endpoints.

Token: ``Authorization: Bearer TOKEN``, or ``?access_token=TOKEN`` for clients that cannot set headers
(browsers' WebSocket API, <img> tags); a wrong or missing token gets 401 with ``WWW-Authenticate``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import cv2
from aiohttp import WSCloseCode, web

from .metrics import Metrics
from .worker import Processed

if TYPE_CHECKING:  # pragma: no cover
    from .daemon import Daemon

log = logging.getLogger("rtmw_edge.serve.app")

CLOSE_TOO_SLOW = WSCloseCode.TRY_AGAIN_LATER  # 1013
DAEMON_KEY: web.AppKey = web.AppKey("daemon", object)


def _json_error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


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

    def kick(self, reason: str) -> None:
        """Disconnect a client that cannot keep up (never waits for it)."""
        if self.dropped:
            return
        self.dropped = True
        self.hub.metrics.clients_dropped.labels("websocket", reason).inc()
        log.warning("websocket client %s dropped: too slow (%s)", self.peer, reason,
                    extra={"event": "client_dropped", "peer": self.peer, "reason": reason, "camera": self.camera})
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.hub.spawn(self.close(CLOSE_TOO_SLOW, b"too slow", 0.5))

    async def close(self, code: int, message: bytes, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message), timeout)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            transport = self.request.transport
            if transport is not None:
                transport.abort()


class Hub:
    """Fan-out of processed frames to the clients; lives on the event loop."""

    def __init__(self, camera_names: list[str], metrics: Metrics, cfg, kpt_threshold: float) -> None:
        self.cameras = camera_names
        self.metrics = metrics
        self.cfg = cfg
        self.kpt_threshold = kpt_threshold
        self.latest: dict[str, Processed] = {}
        self.clients: set[WsClient] = set()
        self.closing = False
        self._events: dict[str, asyncio.Event] = {name: asyncio.Event() for name in camera_names}
        self._jpeg: dict[str, tuple[int, asyncio.Future]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtmw-edge-preview")
        self._tasks: set[asyncio.Task] = set()
        self.on_publish = None  # daemon hook (results counter per camera)
        self.viewers = 0  # preview streams open

    def full(self) -> bool:
        return len(self.clients) + self.viewers >= self.cfg.max_clients

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def publish(self, p: Processed) -> None:
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
        """The latest frame of CAMERA once it is newer than AFTER_SEQ; None when closing."""
        while not self.closing:
            p = self.latest.get(camera)
            if p is not None and p.seq != after_seq:
                return p
            try:
                await asyncio.wait_for(self._events[camera].wait(), 1.0)
            except asyncio.TimeoutError:
                pass
        return None

    def _encode(self, p: Processed) -> bytes:
        from ..viz import draw_frame

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
        cached = self._jpeg.get(p.camera)
        if cached is None or cached[0] != p.seq:
            cached = self._jpeg[p.camera] = (p.seq, self._in_pool(self._encode, p))
        return await asyncio.shield(cached[1])

    def _in_pool(self, fn, *args) -> asyncio.Future:
        """fn(*args) in the preview thread; unlike run_in_executor, a result that arrives after the loop
        closed (shutdown) is dropped quietly."""
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
        for client in clients:
            client.dropped = True
            if client.task is not None:
                client.task.cancel()
        if clients:
            await asyncio.gather(*(c.close(WSCloseCode.GOING_AWAY, b"server shutting down", timeout)
                                   for c in clients), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- handlers
def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON_KEY]  # type: ignore[return-value]


def _supplied_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("access_token")


@web.middleware
async def auth_middleware(request: web.Request, handler):
    daemon = _daemon(request)
    token = daemon.config.server.token
    if token and not (daemon.config.server.health_without_token and request.path in ("/healthz", "/readyz")):
        supplied = _supplied_token(request)
        if supplied is None or not hmac.compare_digest(supplied.encode(), token.encode()):
            daemon.metrics.unauthorized.inc()
            return web.json_response({"error": "unauthorized: a valid bearer token is required"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="rtmw-edge"'})
    return await handler(request)


async def index(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    names = [c.name for c in daemon.cameras]
    endpoints = ["/ws?camera=NAME", "/latest/NAME", "/healthz", "/readyz", "/metrics"]
    if daemon.config.server.preview:
        endpoints.insert(2, "/preview/NAME.mjpg")
    return web.json_response({"service": "rtmw-edge", "cameras": names, "endpoints": endpoints})


async def websocket(request: web.Request) -> web.StreamResponse:
    daemon = _daemon(request)
    hub = daemon.hub
    camera = request.query.get("camera") or None
    if camera is not None and camera not in hub.cameras:
        return _json_error(404, f"no camera {camera!r}", cameras=hub.cameras)
    if hub.closing:
        return _json_error(503, "shutting down")
    if hub.full():
        return _json_error(503, f"too many clients (max_clients = {hub.cfg.max_clients})")
    cfg = daemon.config.server
    ws = web.WebSocketResponse(heartbeat=cfg.heartbeat_s or None, compress=False, timeout=1.0,
                               max_msg_size=64 * 1024, writer_limit=64 * 1024)
    await ws.prepare(request)
    client = WsClient(ws, request, camera, hub)
    hub.clients.add(client)
    metrics = daemon.metrics
    metrics.clients.labels("websocket").inc()
    metrics.connections.labels("websocket").inc()
    client.task = asyncio.ensure_future(client.pump())
    log.info("websocket client %s connected (camera %s)", client.peer, camera or "*",
             extra={"event": "client_connected", "peer": client.peer, "camera": camera})
    try:
        async for _message in ws:  # nothing is expected from clients; pings are answered by aiohttp
            pass
    finally:
        hub.clients.discard(client)
        client.task.cancel()
        metrics.clients.labels("websocket").dec()
        log.info("websocket client %s disconnected", client.peer,
                 extra={"event": "client_disconnected", "peer": client.peer, "camera": camera})
    return ws


async def latest(request: web.Request) -> web.Response:
    hub = _daemon(request).hub
    name = request.match_info["camera"]
    if name not in hub.cameras:
        return _json_error(404, f"no camera {name!r}", cameras=hub.cameras)
    p = hub.latest.get(name)
    if p is None:
        return _json_error(503, f"camera {name!r} has no result yet")
    return web.Response(text=p.payload, content_type="application/json", headers={"Cache-Control": "no-store"})


async def preview(request: web.Request) -> web.StreamResponse:
    daemon = _daemon(request)
    hub, cfg = daemon.hub, daemon.config.server
    name = request.match_info["camera"]
    if not cfg.preview:
        return _json_error(404, "preview is disabled ([server] preview = false)")
    if name not in hub.cameras:
        return _json_error(404, f"no camera {name!r}", cameras=hub.cameras)
    if hub.closing:
        return _json_error(503, "shutting down")
    if hub.full():
        return _json_error(503, f"too many clients (max_clients = {cfg.max_clients})")
    resp = web.StreamResponse(headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame",
                                       "Cache-Control": "no-cache, no-store", "Pragma": "no-cache"})
    await resp.prepare(request)
    hub.viewers += 1
    metrics = daemon.metrics
    metrics.clients.labels("preview").inc()
    metrics.connections.labels("preview").inc()
    loop = asyncio.get_running_loop()
    period, next_at, seq = 1.0 / cfg.preview_fps, loop.time(), None
    try:
        while not hub.closing:
            p = await hub.next_frame(name, seq)
            if p is None:
                break
            seq = p.seq
            jpeg = await hub.preview_jpeg(p)
            head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
            try:
                await asyncio.wait_for(resp.write(head + jpeg + b"\r\n"), cfg.send_timeout_s)
            except asyncio.TimeoutError:
                metrics.clients_dropped.labels("preview", "timeout").inc()
                if request.transport is not None:
                    request.transport.abort()
                break
            metrics.sent.labels("preview").inc()
            next_at = max(next_at + period, loop.time())
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
    except (ConnectionError, RuntimeError):  # the viewer went away
        pass
    finally:
        hub.viewers -= 1
        metrics.clients.labels("preview").dec()
    return resp


async def healthz(request: web.Request) -> web.Response:
    ok, body = _daemon(request).health()
    return web.json_response(body, status=200 if ok else 503)


async def readyz(request: web.Request) -> web.Response:
    ok, body = _daemon(request).readiness()
    return web.json_response(body, status=200 if ok else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    daemon.readiness()  # refreshes the `ready` gauge
    body, content_type = daemon.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application(middlewares=[auth_middleware], client_max_size=64 * 1024)
    app[DAEMON_KEY] = daemon
    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/latest/{camera}", latest)
    app.router.add_get("/preview/{camera}.mjpg", preview)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
