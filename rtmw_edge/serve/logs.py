"""Structured logs: one JSON object per line on stderr (journald and log shippers read them as they are).

Each line has ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``msg``, then the fields the
call passed in ``extra`` (``event``, ``camera``, ``port``, ...) and ``exc`` for an exception. ``format =
"text"`` gives classic one-line text for a terminal.

What `setup_logging` adds for the daemon process:

- **Secrets never reach the log**: every line (message, fields, traceback) goes through `Redactor`, which
  masks credentials in URLs (`rtmw_edge.sources.mask_credentials`) and replaces the configured token,
  MQTT password and camera passwords by ``***`` wherever they appear.
- **Logging never blocks the event loop**: records go into a bounded queue; one thread formats and writes
  them (a slow or stuck stderr, journald under pressure, stalls that thread, not the loop). When the queue is
  full, records are dropped and counted; the next line that gets through says how many.
- **Native output stays JSON** (`rtmw_edge.native_stderr.NativeStderr`, shared with `run` and `calibrate`):
  FFmpeg, OpenCV, GStreamer and ONNX Runtime write to file descriptor 2 from C, bypassing Python. The daemon
  points fd 2 at a pipe; a thread turns each line into a ``native_log`` record (rate-limited: a corrupt stream
  can print a line per frame) and the real stderr receives only our formatted lines.
- `Throttle`: the "once per interval, with a count" rule used for repeated errors (inference failures,
  accept errors, closed connections), so an error repeating a thousand times a second writes one line per
  interval, never a traceback per event.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable

from ..native_stderr import INTERVAL_S as NATIVE_INTERVAL_S
from ..native_stderr import LINES_PER_INTERVAL as NATIVE_LINES_PER_INTERVAL
from ..native_stderr import NativeStderr
from ..sources import mask_credentials

__all__ = ["NATIVE_INTERVAL_S", "NATIVE_LINES_PER_INTERVAL", "JsonFormatter", "LogSetup", "NativeStderr", "Redactor",
           "TextFormatter", "Throttle", "setup_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
QUEUE_SIZE = 10_000


class Redactor:
    """Masks URL credentials and the given secret values in any text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if s}, key=len, reverse=True)  # longest first: no partial leftovers
        self._pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def __call__(self, text: str) -> str:
        text = mask_credentials(text)
        return self._pattern.sub("***", text) if self._pattern is not None else text


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        redact = self.redact
        entry = {"ts": ts, "level": record.levelname.lower(), "logger": record.name,
                 "msg": redact(record.getMessage())}
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        exc = self.formatException(record.exc_info) if record.exc_info else record.exc_text
        if exc:
            entry["exc"] = redact(exc)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class Throttle:
    """At most one report per key and interval: `ready(key)` → (report now?, events since the last report)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._state: dict[object, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def ready(self, key: object, now: float | None = None) -> tuple[bool, int]:
        now = time.monotonic() if now is None else now
        with self._lock:
            last, count = self._state.get(key, (-1e18, 0))
            if now - last >= self.interval_s:
                self._state[key] = (now, 0)
                return True, count
            self._state[key] = (last, count + 1)
            return False, count + 1


class _QueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread: formatted lazily there, dropped (and counted) when the queue is full."""

    def __init__(self, q: queue.Queue) -> None:
        super().__init__(q)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # resolve the message and the traceback now (their objects may change later), format later
        record = logging.makeLogRecord(vars(record))
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if self.dropped:
            record.msg += f" ({self.dropped} log line(s) dropped before this one: the log output was too slow)"
            self.dropped = 0
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class LogSetup:
    """What `setup_logging` installed; `close()` writes out what is queued and restores stderr."""

    def __init__(self, handler: logging.Handler, listener: logging.handlers.QueueListener,
                 redact: Redactor, native: NativeStderr | None) -> None:
        self.handler, self.listener, self.redact, self.native = handler, listener, redact, native

    def close(self) -> None:
        if self.native is not None:
            self.native.restore()  # the pipe's last lines become records first
        self.listener.stop()  # writes out the queue
        self.handler.flush()


def setup_logging(level: str = "info", fmt: str = "json", stream=None, *, secrets: Iterable[str] = (),
                  capture_native: bool = False) -> LogSetup:
    """Route every logger (ours, aiohttp's, asyncio's) through a queue to one stderr writer thread.

    secrets: values to mask wherever they appear. capture_native: also turn what C libraries write on fd 2
    into records (the CLI daemon does; tests and embedding programs keep their stderr).
    """
    redact = Redactor(secrets)
    native = NativeStderr.capture() if capture_native else None
    out = stream or (native.stream if native is not None else sys.stderr)
    writer = logging.StreamHandler(out)
    writer.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    q: queue.Queue = queue.Queue(QUEUE_SIZE)
    listener = logging.handlers.QueueListener(q, writer, respect_handler_level=False)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_QueueHandler(q))
    root.setLevel(getattr(logging, level.upper()))
    listener.start()
    if native is not None:
        _pump_to_log(native, logging.getLogger("rtmw_edge.native"))
    _log_uncaught_exceptions()
    return LogSetup(writer, listener, redact, native)


def _log_uncaught_exceptions() -> None:
    """An exception that escapes a thread becomes one JSON record, not raw traceback text on stderr."""
    log = logging.getLogger("rtmw_edge.serve")

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        log.critical("uncaught exception in thread %s: %s", name, args.exc_type.__name__,
                     exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
                     extra={"event": "uncaught_exception", "thread_name": name})

    threading.excepthook = thread_hook


def _pump_to_log(native: NativeStderr, logger: logging.Logger) -> None:
    """The daemon's use of `NativeStderr`: each line a ``native_log`` record, the held-back count one more."""

    def emit(text: str) -> None:
        logger.warning("%s", text, extra={"event": "native_log"})

    def hidden(count: int, interval_s: float, limit: int) -> None:
        logger.warning("native library output: %d more line(s) in %g s not shown (at most %d per %g s)",
                       count, interval_s, limit, interval_s,
                       extra={"event": "native_log_suppressed", "suppressed": count})

    native.start(emit, hidden, limit=NATIVE_LINES_PER_INTERVAL, interval_s=NATIVE_INTERVAL_S)
