"""`rtmw-edge serve`: the always-on pose daemon (cameras → one shared pose pipeline → WebSocket, HTTP, MQTT).

Modules, in the order data flows:

- `config`   TOML file + ``RTMW_EDGE_*`` environment overrides → validated `DaemonConfig` (one-line errors);
- `cameras`  a grabber thread per camera keeping only the latest frame, reconnecting with backoff;
- `worker`   one inference thread that round-robins the cameras through the shared `PoseEstimator`;
- `app`      the aiohttp application: ``/ws``, ``/latest``, ``/preview``, ``/healthz``, ``/readyz``, ``/metrics``;
- `mqtt`     the optional MQTT publisher (paho-mqtt);
- `metrics`  the Prometheus registry;
- `daemon`   lifecycle: start, signals, graceful stop, systemd notifications, JSON logs.

See docs/daemon.md. The web stack (aiohttp, prometheus-client, paho-mqtt) is the optional extra ``serve``.
"""

from __future__ import annotations

from .config import ConfigError, DaemonConfig, load_config

__all__ = ["ConfigError", "DaemonConfig", "load_config"]
