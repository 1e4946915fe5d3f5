"""Connection hygiene for the daemon's listener: a cap on open connections, a deadline for the first request
head, and accept errors reported once per interval.

aiohttp has the idle timeout between keep-alive requests (its ``keepalive_timeout``, set from
``server.idle_timeout_s``), request size limits and WebSocket heartbeats; it has no cap on connections and,
before 3.14, no deadline for a connection that never completes its first request. A client that opens
connections and sends nothing, or one header byte at a time (slowloris), would hold a file descriptor
each until the process runs out of them; then asyncio's accept loop reports EMFILE, with a traceback, up to
a hundred times per loop iteration, health probes time out and cameras cannot re-open their files. So the
daemon listens through `GuardedSite`, an aiohttp site whose `Listener` accepts the connections itself
(``socket.accept`` + asyncio's public ``loop.connect_accepted_socket``) and hands them to aiohttp:

- every connection is tracked from ``accept`` in one of three states: **pending** (no complete request
  head yet), **active** (a request is being handled: a WebSocket or MJPEG stream stays active for its
  whole life), **idle** (keep-alive, between requests). The request middleware moves it between them;
- a pending connection older than ``header_timeout_s`` is closed (``header_timeout``). The sweep closes a
  bounded number per tick, so a thousand expiring at once do not stall the loop;
- at ``max_connections`` a new connection closes the oldest pending connection, else the oldest idle one
  (``evicted``), so a flood of half-open connections cannot lock out a health probe or a real client; only
  when every connection is active is the new one refused (its socket closed at once, before any
  transport or request handler exists: ``over_capacity``). Accepting and closing keeps the kernel's
  backlog moving and file descriptors free;
- at most `ACCEPT_BATCH` connections are accepted per loop iteration, so a burst (or an attacker that
  reconnects as fast as it is evicted) is spread over iterations instead of stalling the loop; an accept
  that fails for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) pauses that socket for
  `ACCEPT_RETRY_S`, is counted in ``accept_errors_total`` and logged once per interval;
- the default cap is sized from the open-file limit with head-room (`auto_max_connections`) for camera
  files and streams, the model files, MQTT and the log;
- closes are counted in ``clients_dropped_total{kind="connection",reason}`` and summarised in one log
  line per interval, never one line per connection.

The loop's exception handler (`LoopErrorReporter`) turns any other per-event error report of asyncio (a
traceback each time) into a counter and one line per interval.
"""

from __future__ import annotations

import asyncio
import errno as errno_module
import logging
import os
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

from .logs import Throttle
from .metrics import Metrics

log = logging.getLogger("rtmw_edge.serve.connections")

HEADROOM_MIN = 128       # file descriptors kept free for cameras, models, MQTT, logs
AUTO_CAP_MAX = 4096      # the automatic cap never goes above this (memory: ~tens of KB per connection)
CLOSE_PER_TICK = 100     # pending connections closed per sweep before yielding to the loop
ACCEPT_BATCH = 16        # connections accepted per loop iteration and listening socket
ACCEPT_RETRY_S = 0.1     # pause after an accept failed for lack of resources
REPORT_INTERVAL_S = 10.0

PENDING, ACTIVE, IDLE = "pending", "active", "idle"


def open_file_limit() -> int:
    """The soft limit on open file descriptors of this process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def open_files() -> int:
    """File descriptors open now (Linux: /proc/self/fd; elsewhere a guess)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64


def auto_max_connections(limit: int | None = None, in_use: int | None = None) -> int:
    """Connections the listener may hold: what the open-file limit leaves after the descriptors in use and a
    head-room of a quarter of the limit (at least `HEADROOM_MIN`), at most `AUTO_CAP_MAX`, at least 16."""
    limit = open_file_limit() if limit is None else limit
    in_use = open_files() if in_use is None else in_use
    headroom = max(HEADROOM_MIN, limit // 4)
    return max(16, min(AUTO_CAP_MAX, limit - in_use - headroom))


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one (as Go and many servers do at start); (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return soft, target
        except (ValueError, OSError):
            pass
    return soft, soft


class _Conn:
    __slots__ = ("inner", "transport", "state", "since")

    def __init__(self, inner: asyncio.Protocol, now: float) -> None:
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.state = PENDING
        self.since = now


class _GuardedProtocol(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol; tells the guard when the connection opens and closes."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard.admit(self._inner, transport):
            self._made = True
            self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.forget(self._inner)
        if self._made:  # a refused connection never reached aiohttp
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    """The connection table (see the module docstring). Lives on the event loop."""

    def __init__(self, metrics: Metrics, max_connections: int, header_timeout_s: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self._clock = clock
        self._pending: OrderedDict[object, _Conn] = OrderedDict()  # oldest first
        self._idle: OrderedDict[object, _Conn] = OrderedDict()
        self._active: dict[object, _Conn] = {}
        self._reserved = 0  # accepted sockets whose transport is being made
        self._closed: dict[str, int] = {}  # reason -> count since the last report
        self._last_report = clock()
        self._sweeper: asyncio.Task | None = None
        self.closing = False
        metrics.connection_limit.set(max_connections)

    # -- counts
    def __len__(self) -> int:
        return len(self._pending) + len(self._idle) + len(self._active)

    def count(self, state: str) -> int:
        return len({PENDING: self._pending, IDLE: self._idle, ACTIVE: self._active}[state])

    # -- protocol side
    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` around aiohttp's."""
        return lambda: _GuardedProtocol(self, factory())

    def reserve(self) -> bool:
        """Room for an accepted socket (closing the oldest pending or idle connection at the cap); False when
        it must be refused: shutting down, or every connection has a request in progress."""
        if self.closing:
            return False
        if len(self) + self._reserved >= self.max_connections:
            victim = next(iter(self._pending.values()), None) or next(iter(self._idle.values()), None)
            if victim is None:
                self._closed_for("over_capacity")
                return False
            self._close(victim, "evicted")
        self._reserved += 1
        return True

    def admit(self, inner: object, transport: asyncio.BaseTransport) -> bool:
        """A reserved connection got its transport: track it (pending); False when shutting down meanwhile."""
        self._reserved = max(0, self._reserved - 1)
        if self.closing:
            transport.abort()
            return False
        conn = _Conn(inner, self._clock())
        conn.transport = transport  # type: ignore[assignment]
        self._pending[inner] = conn
        self.metrics.connections_open.set(len(self))
        return True

    def unreserve(self) -> None:
        """A reserved socket never became a connection (its transport could not be made)."""
        self._reserved = max(0, self._reserved - 1)

    def forget(self, inner: object) -> None:
        """The connection closed (by the peer, aiohttp, or us)."""
        self._pending.pop(inner, None) or self._idle.pop(inner, None) or self._active.pop(inner, None)
        self.metrics.connections_open.set(len(self))

    # -- request side (the middleware)
    def request_started(self, inner: object) -> None:
        conn = self._pending.pop(inner, None) or self._idle.pop(inner, None)
        if conn is not None:
            conn.state = ACTIVE
            self._active[inner] = conn

    def request_finished(self, inner: object) -> None:
        conn = self._active.pop(inner, None)
        if conn is not None:  # keep-alive from here on: aiohttp's keepalive_timeout closes it when idle too long
            conn.state, conn.since = IDLE, self._clock()
            self._idle[inner] = conn

    def middleware(self):
        guard = self

        @web.middleware
        async def track_requests(request: web.Request, handler):
            protocol = request.protocol
            guard.request_started(protocol)
            try:
                return await handler(request)
            finally:
                guard.request_finished(protocol)

        return track_requests

    # -- sweeping
    def start(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        tick = min(0.25, self.header_timeout_s / 4)
        while True:
            more = self.sweep()
            await asyncio.sleep(0 if more else tick)

    def sweep(self, now: float | None = None) -> bool:
        """Close expired pending connections (at most `CLOSE_PER_TICK`); True when more are due."""
        now = self._clock() if now is None else now
        deadline = now - self.header_timeout_s
        closed = 0
        while self._pending and closed < CLOSE_PER_TICK:
            conn = next(iter(self._pending.values()))
            if conn.since > deadline:
                break
            self._close(conn, "header_timeout")
            closed += 1
        self.report(now)
        return bool(self._pending) and closed >= CLOSE_PER_TICK

    def _close(self, conn: _Conn, reason: str) -> None:
        self._pending.pop(conn.inner, None) or self._idle.pop(conn.inner, None)
        if conn.transport is not None:
            conn.transport.abort()  # connection_lost follows: aiohttp cleans up
        self._closed_for(reason)
        self.metrics.connections_open.set(len(self))

    def _closed_for(self, reason: str) -> None:
        self.metrics.clients_dropped.labels("connection", reason).inc()
        self._closed[reason] = self._closed.get(reason, 0) + 1

    def report(self, now: float | None = None, *, force: bool = False) -> None:
        """One log line per interval summarising the connections closed in it."""
        now = self._clock() if now is None else now
        if not self._closed or (not force and now - self._last_report < REPORT_INTERVAL_S):
            return
        counts, self._closed, self._last_report = self._closed, {}, now
        parts = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(counts.items()))
        log.warning("closed %d connection(s) in the last %.0f s: %s (open now: %d of %d; pending %d)",
                    sum(counts.values()), REPORT_INTERVAL_S, parts, len(self), self.max_connections,
                    len(self._pending), extra={"event": "connections_closed", **counts})

    def abort_pending(self) -> int:
        """Shutdown: refuse new connections and close every connection without a request in progress."""
        self.closing = True
        victims = [*self._pending.values(), *self._idle.values()]
        for conn in victims:
            self._pending.pop(conn.inner, None) or self._idle.pop(conn.inner, None)
            if conn.transport is not None:
                conn.transport.abort()
        self.metrics.connections_open.set(len(self))
        return len(victims)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.report(force=True)


_RESOURCE_ERRNOS = {errno_module.EMFILE, errno_module.ENFILE, errno_module.ENOBUFS, errno_module.ENOMEM}


class Listener:
    """The listening sockets and their accept loop (see the module docstring). Quacks like the
    ``asyncio.Server`` aiohttp keeps for a site: ``sockets`` and ``close()``."""

    def __init__(self, guard: ConnectionGuard, protocol_factory: Callable[[], asyncio.Protocol], host: str,
                 port: int, backlog: int) -> None:
        self.guard = guard
        self.factory = guard.wrap(protocol_factory)
        self.sockets = _bind(host, port, backlog)
        self._loop = asyncio.get_running_loop()
        self._throttle = Throttle(REPORT_INTERVAL_S)
        self._closed = False
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        loop, guard = self._loop, self.guard
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self._accept_failed(sock, exc)
                return
            if not guard.reserve():
                conn.close()  # refused before any transport or handler exists
                continue
            conn.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(self.factory, conn))
            task.add_done_callback(lambda t, c=conn: self._made(t, c))

    def _made(self, task: asyncio.Task, conn: socket.socket) -> None:
        if task.cancelled() or task.exception() is not None:
            self.guard.unreserve()
            conn.close()

    def _accept_failed(self, sock: socket.socket, exc: OSError) -> None:
        name = errno_module.errorcode.get(exc.errno or 0, type(exc).__name__)
        self.guard.metrics.accept_errors.labels(name).inc()
        report, count = self._throttle.ready(name)
        if report:
            log.error("cannot accept connections: %s (%s); %d more time(s) since the last report; see "
                      "server.max_connections and the open-file limit (LimitNOFILE)", exc.strerror or exc, name,
                      count, extra={"event": "accept_error", "error": name, "repeats": count})
        if exc.errno in _RESOURCE_ERRNOS:  # the socket stays readable: wait before trying again
            self._loop.remove_reader(sock.fileno())
            self._loop.call_later(ACCEPT_RETRY_S, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if not self._closed:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop listening (connections stay). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()


def _bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address of HOST (as asyncio's create_server binds them)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(
                (i[0], i[1], i[2], "", i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # every address on the port the first one got
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class GuardedSite(web.BaseSite):
    """An aiohttp site listening through a `Listener` (the connection guard in front of aiohttp)."""

    __slots__ = ("_host", "_port", "_guard")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 backlog: int = 1024) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._guard = host, port, guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1] if self._server is not None else self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = Listener(self._guard, server, self._host, self._port, self._backlog)  # type: ignore[assignment]

    def stop_listening(self) -> None:
        """Close the listening sockets now (no new connections); the connections stay."""
        if self._server is not None:
            self._server.close()


class LoopErrorReporter:
    """The event loop's exception handler: what asyncio would log with a traceback per event (a callback that
    raised, a transport error) is logged once per interval and kind with the number of repeats, with the
    traceback the first time only."""

    def __init__(self, interval_s: float = REPORT_INTERVAL_S) -> None:
        self.throttle = Throttle(interval_s)
        self._seen: set[str] = set()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        message = str(context.get("message") or "event loop error")
        kind = f"{message}:{type(exc).__name__ if exc is not None else ''}"
        report, count = self.throttle.ready(kind)
        if not report:
            return
        first = kind not in self._seen
        self._seen.add(kind)
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        log.error("event loop: %s%s%s", message.splitlines()[0], f" ({detail})" if detail else "",
                  f"; {count} more time(s) since the last report" if count else "",
                  exc_info=(type(exc), exc, exc.__traceback__) if first and exc is not None else None,
                  extra={"event": "loop_error", "repeats": count})
