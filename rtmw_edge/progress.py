"""Progress bars and spinners for long work: on standard error, only on a terminal, and stop-aware.

- Standard error, so standard output stays for results (`run --out -`).
- Only on a terminal: rich ends even a transient bar with an empty line when its output is a file or a pipe,
  which is how logs and captured stderr got blank lines before some errors.
- Stop-aware: `update` / `advance` call `rtmw_edge.signals.check()`, so every loop that shows a bar ends at its
  next step after SIGTERM / Ctrl-C (the handler itself only sets a flag).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import Progress

from . import signals


class StopAwareProgress(Progress):
    """A rich `Progress` whose steps are also the places a requested stop is acted on."""

    def update(self, *args, **kwargs) -> None:
        signals.check()
        super().update(*args, **kwargs)

    def advance(self, *args, **kwargs) -> None:
        signals.check()
        super().advance(*args, **kwargs)

    # for callbacks that must not raise (TensorRT's build monitor): they look at `signals.requested()` themselves
    update_unchecked = Progress.update


def progress_bar(*columns, console: Console | None = None, transient: bool = True, disable: bool = False,
                 **kwargs) -> StopAwareProgress:
    """A `StopAwareProgress` on `console` (default: standard error), drawn only when that is a terminal."""
    console = console if console is not None else Console(stderr=True)
    return StopAwareProgress(*columns, console=console, transient=transient,
                             disable=disable or not console.is_terminal, **kwargs)


@contextlib.contextmanager
def status(console: Console, text: str) -> Iterator[object]:
    """`console.status(text)` on a terminal; elsewhere nothing is drawn (the yielded object ignores updates)."""
    if console.is_terminal:
        with console.status(text) as spinner:
            yield spinner
    else:
        yield _Quiet()


class _Quiet:
    def update(self, *args, **kwargs) -> None:
        pass
