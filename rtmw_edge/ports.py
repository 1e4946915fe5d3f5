"""Listening ports checked before any work: `serve` and `triton serve` say in one line which port is taken before
they load a model or start a server (exit 2, like an output path that cannot be written)."""

from __future__ import annotations

import contextlib
import errno
import socket

from .errors import UsageError


class PortInUseError(UsageError):
    """A port the command would listen on is already taken (checked before any work: exit 2)."""


def port_problem(host: str, port: int) -> str | None:
    """None when `port` on `host` can be bound now (port 0: always), else why not. The probe binds with
    SO_REUSEADDR as servers do, so a socket in TIME_WAIT is no problem, a listening one is."""
    if not port:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc.strerror or exc}"
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        with contextlib.closing(sock):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "already in use"
                return exc.strerror or str(exc)
    return None


def check_ports_free(host: str, ports: dict[str, int], hint: str = "") -> None:
    """Raise `PortInUseError` naming the first of `ports` ({what: port}) that cannot be bound on `host`."""
    for what, port in ports.items():
        problem = port_problem(host, port)
        if problem is not None:
            raise PortInUseError(f"{what} {port} on {host}: {problem}{hint}")
