"""`rtmw-edge serve`: the always-on pose daemon (rtmw_edge.serve; docs/daemon.md)."""

from __future__ import annotations

from pathlib import Path

import typer


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
        from .errors import require
        from .serve.config import load_config

        settings = load_config(config, insecure=insecure)
        m = settings.model
        if m.backend != "triton":  # the server decides det and pose there
            from .pipeline import check_models

            # before listening: unknown names, models of the wrong role, missing files
            check_models(m.det, m.pose, m.pose_spec or None, options=("model.det", "model.pose", "model.pose_spec"))
        if check:
            typer.echo(settings.to_json())
            return
        require("aiohttp", "serve")
        require("prometheus_client", "serve")
        from .serve.daemon import run_daemon

        code = run_daemon(settings, reloader=lambda: load_config(config, insecure=insecure))
        if code:
            raise typer.Exit(code)
