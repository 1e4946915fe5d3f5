"""`rtmw-edge serve`: the always-on pose daemon (rtmw_edge.serve; docs/daemon.md)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import typer

from .. import signals
from ..errors import RtmwEdgeError, require
from ..ports import check_ports_free


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(config: Path | None = typer.Option(None, "--config", "-c", envvar="RTMW_EDGE_CONFIG",
                                                      help="Daemon TOML file (see configs/daemon.toml); "
                                                           "RTMW_EDGE_* variables override its keys. SIGHUP "
                                                           "reloads it."),
                  check: bool = typer.Option(False, "--check", help="Validate the configuration, print the "
                                             "effective settings as JSON (secrets masked) and exit."),
                  insecure: bool = typer.Option(False, "--insecure", help="Allow listening beyond loopback "
                                                "without a token (anyone on the network can connect).")) -> None:
        """Run the pose daemon: cameras → pose → WebSocket, HTTP, MQTT, /metrics (stop: SIGTERM/Ctrl-C)."""
        from ..serve.config import check_sources, load_config

        settings = load_config(config, insecure=insecure)
        check_sources(settings)  # a camera file that is not there: one line, with --check too
        m = settings.model
        if not check:  # a taken port: one line before any model is loaded
            check_ports_free(settings.server.host, {"port": settings.server.port},
                             " (another rtmw-edge serve?): stop it, or choose another [server] port")
        with _config_keys():  # messages name the configuration's keys, not run's options
            if m.backend != "triton":  # the server decides det and pose there
                from ..pipeline import check_models

                # before listening: unknown names, models of the wrong role, missing files, a foreign pose ONNX
                # without its settings
                check_models(m.det, m.pose, m.pose_spec or None,
                             options=("model.det", "model.pose", "model.pose_spec"))
                _check_pose_settings(m.pose, m.pose_spec or None)
            if check:
                typer.echo(settings.to_json())
                return
            if signals.requested():  # stopped before it started: as after a stop, exit 0 (docs/daemon.md)
                return
            require("aiohttp", "serve")
            require("prometheus_client", "serve")
            from ..serve.daemon import run_daemon

            code = run_daemon(settings, reloader=lambda: load_config(config, insecure=insecure))
        if code:
            raise typer.Exit(code)


_OPTION_KEYS = ((re.compile(r"--pose-spec\b"), "[model] pose_spec"), (re.compile(r"--det/--pose\b"),
                "[model] det/pose"), (re.compile(r"--det\b"), "[model] det"), (re.compile(r"--pose\b"), "[model] pose"))


@contextlib.contextmanager
def _config_keys():
    """Errors of the model code name `run`'s options (--pose-spec ...); the daemon has configuration keys."""
    try:
        yield
    except RtmwEdgeError as exc:
        text = str(exc)
        for pattern, key in _OPTION_KEYS:
            text = pattern.sub(key, text)
        exc.args = (text,)
        raise


def _check_pose_settings(pose: str, pose_spec: str | None) -> None:
    """A foreign pose ONNX (or SDK folder) needs its settings from [model] pose_spec or the SDK JSON: found out
    before the daemon listens (and by --check), not when the worker loads it."""
    path = Path(pose)
    if path.is_dir():
        from ..pose_models import sdk_model_file

        path = sdk_model_file(path)
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return
    from ..pose_models import pose_metadata

    pose_metadata(path, pose_spec)
