"""What C libraries write on standard error, as rate-limited lines.

FFmpeg, OpenCV, GStreamer and ONNX Runtime write to file descriptor 2 from C, past Python: a video with damaged
bytes makes FFmpeg print a line per broken macroblock (thousands before the one ``error:`` line), a camera or
stream that cannot open adds its own. `NativeStderr` points fd 2 at a pipe; a thread reads it line by line and
hands each line to a callback, at most `limit` lines per `interval_s` seconds, then one call with the count of
the lines it held back. The real standard error stays reachable through `stream` (and `sys.stderr` while the
command line's capture is active), so the toolkit's own lines are not captured.

Two users: the daemon turns the lines into JSON log records (`rtmw_edge.serve.logs`), and `captured()` — used by
`run` and `calibrate`, the commands that read video — prints them as ``native: ...`` lines on the terminal.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

LINES_PER_INTERVAL = 20     # the daemon's rate
INTERVAL_S = 10.0
CLI_LINES_PER_INTERVAL = 5  # a terminal: a few lines say what the library thinks, the count says how much more


class NativeStderr:
    """File descriptor 2 redirected into a pipe whose lines go to a callback (see the module docstring)."""

    def __init__(self, saved_fd: int, read_fd: int) -> None:
        self._saved = saved_fd
        self._read = read_fd
        self.stream = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
        self._thread: threading.Thread | None = None
        self.lines = 0
        self.suppressed = 0

    @classmethod
    def capture(cls) -> NativeStderr:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        return cls(saved, read_fd)

    def start(self, emit: Callable[[str], object], hidden: Callable[[int, float, int], object], *,
              limit: int = LINES_PER_INTERVAL, interval_s: float = INTERVAL_S) -> None:
        """Pump the pipe: `emit(line)` for at most `limit` lines per `interval_s`, `hidden(count, interval_s, limit)`
        for the lines held back (at the end of their interval, and at the end)."""
        self._thread = threading.Thread(target=self._pump, args=(emit, hidden, limit, interval_s),
                                        name="rtmw-edge-native-log", daemon=True)
        self._thread.start()

    def _pump(self, emit, hidden_report, limit: int, interval_s: float) -> None:
        window_start, shown, hidden = time.monotonic(), 0, 0

        def report_hidden() -> None:
            if hidden:
                hidden_report(hidden, interval_s, limit)

        with os.fdopen(self._read, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    text = raw.decode("utf-8", "replace").rstrip()
                    if not text:
                        continue
                    self.lines += 1
                    now = time.monotonic()
                    if now - window_start >= interval_s:
                        report_hidden()
                        window_start, shown, hidden = now, 0, 0
                    if shown < limit:
                        shown += 1
                        emit(text)
                    else:
                        hidden += 1
                        self.suppressed += 1
            if pending.strip():  # a last line without its newline
                self.lines += 1
                if shown < limit:
                    emit(pending.decode("utf-8", "replace").rstrip())
                else:
                    hidden += 1
                    self.suppressed += 1
        report_hidden()

    def restore(self, timeout: float = 1.0) -> None:
        """Point fd 2 back at the real stderr; the pump reads what is left, reports it and ends."""
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's write end: the pump sees the end of its input
        os.close(self._saved)
        if self._thread is not None:
            self._thread.join(timeout)


def _is_process_stderr(stream) -> bool:
    """True when `stream` writes to file descriptor 2 (not a test's capture, not a redirected sys.stderr)."""
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def captured(print_line: Callable[[str], object] | None = None, *, limit: int = CLI_LINES_PER_INTERVAL,
             interval_s: float = INTERVAL_S) -> Iterator[NativeStderr | None]:
    """For a command: native stderr → at most `limit` ``native: ...`` lines per `interval_s` on the real stderr
    (through `print_line`, default a plain write), then one line with the count held back. `sys.stderr` points at
    the real stderr during the block, so Python's own output (rich consoles, warnings) is not captured. Where
    `sys.stderr` is not file descriptor 2 (a test capturing output, an embedding program), nothing is changed."""
    if not _is_process_stderr(sys.stderr):
        yield None
        return
    native = NativeStderr.capture()
    previous = sys.stderr
    sys.stderr = native.stream
    write = print_line or (lambda text: native.stream.write(text + "\n"))

    def hidden(count: int, interval: float, most: int) -> None:
        write(f"native: {count} more line(s) from native libraries not shown (at most {most} per {interval:g} s)")

    native.start(lambda text: write(f"native: {text}"), hidden, limit=limit, interval_s=interval_s)
    try:
        yield native
    finally:
        try:
            native.restore()
        finally:
            sys.stderr = previous
            with contextlib.suppress(OSError, ValueError):
                native.stream.close()
