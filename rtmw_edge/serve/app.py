"""The daemon's HTTP side (aiohttp): the handlers and the application.

Endpoints: ``/ws?camera=NAME`` (WebSocket stream of frame messages; all cameras without ``camera``),
``/latest/NAME`` (the latest message), ``/preview/NAME.mjpg`` (MJPEG with skeletons), ``/healthz``,
``/readyz``, ``/metrics``, ``/`` (cameras and endpoints).

Token: ``Authorization: Bearer TOKEN``, or ``?access_token=TOKEN`` for clients that cannot set headers
(browsers' WebSocket API, <img> tags); a wrong or missing token gets 401 with ``WWW-Authenticate``.

The handlers know the daemon only through `WebContext` (the hub, the metrics, the server settings, the
connection guard and two callables for health and readiness): `daemon.py` builds the context and the
application, this module never imports it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import WebSocketError, WSCloseCode, web
from aiohttp.abc import AbstractAccessLogger

from ..sources import mask_credentials
from .config import ServerConfig
from .connections import ConnectionGuard
from .hub import METRICS_MIN_INTERVAL_S, Hub, WsClient
from .metrics import Metrics

log = logging.getLogger("rtmw_edge.serve.app")

_PROTOCOL_CLOSES = {WSCloseCode.PROTOCOL_ERROR, WSCloseCode.UNSUPPORTED_DATA, WSCloseCode.INVALID_TEXT,
                    WSCloseCode.MESSAGE_TOO_BIG, WSCloseCode.POLICY_VIOLATION}


@dataclass
class WebContext:
    """What the handlers use of the daemon."""

    hub: Hub
    metrics: Metrics
    server: ServerConfig  # read per request: a SIGHUP reload may rotate the token
    guard: ConnectionGuard
    health: Callable[[], tuple[bool, dict]]
    readiness: Callable[[], tuple[bool, dict]]


CONTEXT_KEY: web.AppKey = web.AppKey("context", WebContext)


def _json_error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _ctx(request: web.Request) -> WebContext:
    return request.app[CONTEXT_KEY]


def _supplied_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("access_token")


@web.middleware
async def auth_middleware(request: web.Request, handler):
    ctx = _ctx(request)
    token = ctx.server.token
    if token and not (ctx.server.health_without_token and request.path in ("/healthz", "/readyz")):
        supplied = _supplied_token(request)
        if supplied is None or not hmac.compare_digest(supplied.encode(), token.encode()):
            ctx.metrics.unauthorized.inc()
            return web.json_response({"error": "unauthorized: a valid bearer token is required"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="rtmw-edge"'})
    return await handler(request)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log as structured records, secrets masked: the query's ``access_token`` (and any
    credentials) become ``***``, and no header (Authorization!) is ever logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = mask_credentials(request.path_qs)
        self.logger.info("%s %s %d", request.method, path, response.status,
                         extra={"event": "access", "method": request.method, "path": path,
                                "status": response.status, "bytes": response.body_length,
                                "duration_ms": round(time * 1000, 2), "peer": request.remote})


def _refuse(ctx: WebContext, kind: str) -> web.Response | None:
    hub = ctx.hub
    if hub.closing:
        ctx.metrics.clients_refused.labels(kind, "shutting_down").inc()
        return _json_error(503, "shutting down")
    if hub.full():
        ctx.metrics.clients_refused.labels(kind, "max_clients").inc()
        return _json_error(503, f"too many clients (max_clients = {hub.cfg.max_clients})")
    return None


async def index(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    endpoints = ["/ws?camera=NAME", "/latest/NAME", "/healthz", "/readyz", "/metrics"]
    if ctx.server.preview:
        endpoints.insert(2, "/preview/NAME.mjpg")
    return web.json_response({"service": "rtmw-edge", "cameras": ctx.hub.cameras, "endpoints": endpoints})


def _drop_reason(ws: web.WebSocketResponse) -> str | None:
    """Why the connection ended, when the daemon ended it: heartbeat (no pong) or protocol (a malformed or
    oversized message); None when the client closed or went away."""
    exc = ws.exception()
    if isinstance(exc, asyncio.TimeoutError):
        return "heartbeat"
    if isinstance(exc, WebSocketError) or ws.close_code in _PROTOCOL_CLOSES:
        return "protocol"
    return None


async def websocket(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    hub, cfg, metrics = ctx.hub, ctx.server, ctx.metrics
    camera = request.query.get("camera") or None
    if camera is not None and camera not in hub.cameras:
        return _json_error(404, f"no camera {camera!r}", cameras=hub.cameras)
    refused = _refuse(ctx, "websocket")
    if refused is not None:
        return refused
    ws = web.WebSocketResponse(heartbeat=cfg.heartbeat_s or None, compress=False, timeout=1.0,
                               max_msg_size=64 * 1024, writer_limit=64 * 1024)
    await ws.prepare(request)
    client = WsClient(ws, request, camera, hub)
    hub.clients.add(client)
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
        reason = None if hub.closing else _drop_reason(ws)
        if reason is not None and client.count_drop(reason):
            hub.report_drop("websocket", reason, client.peer, camera)
        log.info("websocket client %s disconnected", client.peer,
                 extra={"event": "client_disconnected", "peer": client.peer, "camera": camera,
                        "code": ws.close_code})
    return ws


async def latest(request: web.Request) -> web.Response:
    hub = _ctx(request).hub
    name = request.match_info["camera"]
    if name not in hub.cameras:
        return _json_error(404, f"no camera {name!r}", cameras=hub.cameras)
    p = hub.latest.get(name)
    if p is None:
        return _json_error(503, f"camera {name!r} has no result yet")
    # the payload was serialized once by the inference thread; nothing is encoded here
    return web.Response(body=p.body, content_type="application/json", headers={"Cache-Control": "no-store"})


async def preview(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    hub, cfg, metrics = ctx.hub, ctx.server, ctx.metrics
    name = request.match_info["camera"]
    if not cfg.preview:
        return _json_error(404, "preview is disabled ([server] preview = false)")
    if name not in hub.cameras:
        return _json_error(404, f"no camera {name!r}", cameras=hub.cameras)
    refused = _refuse(ctx, "preview")
    if refused is not None:
        return refused
    resp = web.StreamResponse(headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame",
                                       "Cache-Control": "no-cache, no-store", "Pragma": "no-cache"})
    await resp.prepare(request)
    hub.viewers += 1
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
                hub.report_drop("preview", "timeout", request.remote, name)
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
    ok, body = _ctx(request).health()
    return web.json_response(body, status=200 if ok else 503)


async def readyz(request: web.Request) -> web.Response:
    ok, body = _ctx(request).readiness()
    return web.json_response(body, status=200 if ok else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    ctx.readiness()  # refreshes the `ready` gauge
    # rendered in a worker thread, after this request arrived, at most every METRICS_MIN_INTERVAL_S:
    # scrapes arriving before a rendering starts share it
    body, content_type = await ctx.hub.offload.fresh("metrics", ctx.metrics.exposition, METRICS_MIN_INTERVAL_S)
    return web.Response(body=body, headers={"Content-Type": content_type})


def make_app(ctx: WebContext) -> web.Application:
    app = web.Application(middlewares=[ctx.guard.middleware(), auth_middleware], client_max_size=64 * 1024)
    app[CONTEXT_KEY] = ctx
    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/latest/{camera}", latest)
    app.router.add_get("/preview/{camera}.mjpg", preview)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
