"""`rtmw-edge serve`: the always-on pose daemon (cameras → one shared pose pipeline → WebSocket, HTTP, MQTT).

Modules, in the order data flows:

- `config`   TOML file + ``RTMW_EDGE_*`` environment overrides → validated `DaemonConfig` (one-line errors);
- `cameras`  a grabber thread per camera keeping only the latest frame, reconnecting with backoff;
- `worker`   one inference thread that round-robins the cameras through the shared `PoseEstimator`;
- `hub`      on the event loop: fan-out to WebSocket clients, latest frames, preview JPEGs, worker threads
             for CPU work (`Offload`);
- `app`      the aiohttp handlers: ``/ws``, ``/latest``, ``/preview``, ``/healthz``, ``/readyz``, ``/metrics``;
- `connections` the listener's guard: connection cap, request-head deadline, accept errors rate-limited;
- `mqtt`     the optional MQTT publisher (paho-mqtt);
- `metrics`  the Prometheus registry; `logs` JSON lines, secrets redacted, native stderr captured;
- `daemon`   lifecycle: start, signals (SIGHUP reload), graceful stop, systemd notifications.

Imports go one way: daemon → app → hub → worker → cameras → config (never back).

See docs/daemon.md. The web stack (aiohttp, prometheus-client, paho-mqtt) is the optional extra ``serve``.
"""

from __future__ import annotations

from .config import ConfigError, DaemonConfig, load_config

__all__ = ["ConfigError", "DaemonConfig", "load_config"]
