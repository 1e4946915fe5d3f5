"""Stop signals and child processes: how every command ends cleanly.

Rules (docs: README "Exit codes", ARCHITECTURE.md):

- **A signal handler only sets a flag.** `install()` (the CLI does it for every command) points SIGTERM and
  SIGINT at `_handler`, which records the first signal and counts the others: no lock, no I/O, no exception
  (an exception raised from a handler can land in the middle of any statement — a cleanup, a lock's release —
  and one handler that takes a lock the interrupted code holds hangs the process). The interpreter itself writes
  the signal number to a wakeup fd (`signal.set_wakeup_fd`), so `wait(timeout)` wakes at once.
- **Work looks at the flag** where it can stop cleanly: `check()` raises `Terminated` (SIGTERM) or
  `KeyboardInterrupt` (SIGINT) in the main thread, once; every progress bar (`rtmw_edge.progress`) calls it as
  it advances, and so do the frame loops, the sources' waits and the TensorRT build monitor (which cancels the
  build). A library user who installs nothing sees no change: `check()` is then a no-op.
- **Shutdown survives a second signal**: after the first stop, later signals only add to the count; cleanup
  (finalising outputs, stopping a server) runs to its end, and the CLI ignores stop signals once it returns on a stop
  (`ignore_further`: the interpreter would otherwise reset the handlers to the default action while it finalises).
- **Every child ends with its parent**: `die_with_parent()` is a `preexec_fn` for `subprocess.Popen` that asks
  Linux (``prctl(PR_SET_PDEATHSIG)``) to signal the child when the thread that started it ends, even if the
  parent is killed with SIGKILL. Start children from the main thread (the signal follows the starting thread).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Callable

from .errors import Terminated

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.signum: int | None = None   # the first stop signal received
        self.count = 0                   # stop signals received in all
        self.raised = False              # check() has raised its one exception
        self.wakeup_read: int | None = None
        self.previous: dict[int, object] = {}
        self.previous_wakeup = -1


_state = _State()


def _handler(signum, frame) -> None:  # noqa: ARG001 - the signal module's signature
    """Only flags: the first signal is kept, the others counted (see the module doc)."""
    if _state.signum is None:
        _state.signum = signum
    _state.count += 1


def install() -> Callable[[], None]:
    """Route SIGTERM and SIGINT to the flag (main thread only; elsewhere a no-op). Returns `restore`, which puts
    the previous handlers back and forgets the flag."""
    if threading.current_thread() is not threading.main_thread() or _state.installed:
        return lambda: None
    read_fd, write_fd = os.pipe()
    for fd in (read_fd, write_fd):
        os.set_blocking(fd, False)
    _state.previous = {sig: signal.signal(sig, _handler) for sig in STOP_SIGNALS}
    _state.previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    _state.installed, _state.signum, _state.count, _state.raised = True, None, 0, False
    _state.wakeup_read = read_fd

    def restore() -> None:
        if not _state.installed:
            return
        with contextlib.suppress(ValueError, OSError):
            if signal.set_wakeup_fd(_state.previous_wakeup) != write_fd:  # someone (an asyncio loop) replaced ours
                signal.set_wakeup_fd(-1)
        for sig, previous in _state.previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, previous)
        for fd in (read_fd, write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        _state.installed, _state.signum, _state.count, _state.raised = False, None, 0, False
        _state.wakeup_read = None

    return restore


def ignore_further() -> None:
    """For a process that ends on a stop: ignore further stop signals. The interpreter resets Python-level handlers
    to the default action while it finalises, so a second SIGTERM / Ctrl-C during that would still kill the process
    by the signal (another exit code, or a traceback); an ignored signal stays ignored."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_IGN)


def requested() -> int | None:
    """The stop signal received (SIGTERM / SIGINT), or None."""
    return _state.signum


def count() -> int:
    """How many stop signals arrived (a second one during shutdown is counted, never acted on)."""
    return _state.count


def exception_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def check() -> None:
    """Raise the stop as an exception (`Terminated` / `KeyboardInterrupt`) when one was requested: in the main
    thread, and once — cleanup that advances a bar or reads a source again is not interrupted twice."""
    signum = _state.signum
    if signum is None or _state.raised or threading.current_thread() is not threading.main_thread():
        return
    _state.raised = True
    raise exception_for(signum)


def wait(timeout: float) -> bool:
    """Sleep up to `timeout` seconds, waking at once on a stop signal; True when a stop was requested."""
    if _state.signum is not None:
        return True
    read_fd = _state.wakeup_read
    if read_fd is None:  # not installed (a library caller): a plain sleep
        threading.Event().wait(timeout)
        return _state.signum is not None
    with contextlib.suppress(InterruptedError, OSError, ValueError):
        ready, _, _ = select.select([read_fd], [], [], max(0.0, timeout))
        if ready:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(read_fd, 512):
                    pass
    return _state.signum is not None


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `sig` when its parent ends (Linux ``PR_SET_PDEATHSIG``), or None
    where that does not exist. The prctl function is looked up here, before the fork, so the child only calls it.
    A parent that died between the fork and the prctl is caught by comparing the parent's pid."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent is already gone
            os.kill(os.getpid(), sig)

    return preexec
