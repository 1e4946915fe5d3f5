"""Typed exceptions. The CLI turns every `RtmwEdgeError` into one clear line and exit code 1 (or the class's
`exit_code`)."""

from __future__ import annotations


class RtmwEdgeError(Exception):
    """Base class of every error the toolkit raises on purpose (bad input, missing files, ...)."""

    exit_code = 1  # what the CLI exits with


class UnknownModelError(RtmwEdgeError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(RtmwEdgeError):
    """A checkpoint that cannot be read, is untrusted, or does not fit the architecture."""


class DownloadError(RtmwEdgeError):
    """A download that failed (network, HTTP status, hash mismatch)."""


class MissingDependencyError(RtmwEdgeError):
    """An optional dependency (torch, tensorrt, cuda-python, ...) is needed but not installed."""


def require(module: str, extra: str):
    """Import an optional heavy module, or raise one clear line naming the pip extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"this needs '{module}', which is not installed: pip install 'rtmw-edge[{extra}]'"
        ) from exc
