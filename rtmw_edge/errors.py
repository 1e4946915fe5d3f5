"""Typed exceptions. The CLI turns every `RtmwEdgeError` into one clear line and its `exit_code`:
1 for errors met while working (a missing or corrupt input, a failed write), 2 for usage errors found
before any work starts (invalid option values, output paths that cannot or must not be written)."""

from __future__ import annotations


class RtmwEdgeError(Exception):
    """Base class of every error the toolkit raises on purpose (bad input, missing files, ...)."""

    exit_code = 1


class UsageError(RtmwEdgeError):
    """A command line that cannot work: invalid option values or combinations (CLI exit code 2)."""

    exit_code = 2


class OutputPathError(UsageError):
    """An output path that cannot or must not be written (checked before any work starts)."""


class OutputWriteError(RtmwEdgeError):
    """Writing an output failed mid-way (disk full, permissions changed); no partial file is left."""


class UnknownModelError(UsageError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(RtmwEdgeError):
    """A checkpoint that cannot be read, is untrusted, or does not fit the architecture."""


class DownloadError(RtmwEdgeError):
    """A download that failed (network, HTTP status, hash mismatch)."""


class MissingDependencyError(RtmwEdgeError):
    """An optional dependency (torch, tensorrt, cuda-python, ...) is needed but not installed."""


class ReaderGone(Exception):  # noqa: N818 - an event, not an error
    """Standard output's reader left (`rtmw-edge run ... --out - | head`): a normal end of the stream, exit 0
    quietly. Not an OSError, so the command-line framework does not turn it into exit 1."""


class Terminated(BaseException):  # noqa: N818 - named like KeyboardInterrupt, its sibling
    """SIGTERM arrived (raised in the main thread by the CLI's handler): finalise outputs, exit 143."""


def require(module: str, extra: str):
    """Import an optional heavy module, or raise one clear line naming the pip extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"this needs '{module}', which is not installed: pip install 'rtmw-edge[{extra}]'"
        ) from exc
