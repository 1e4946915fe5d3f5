"""The daemon under hostile clients, end to end: a shorter run of scripts/bench_serve.py (issue 15).

One `rtmw-edge serve` process (stub inference, the real `run_daemon`: signals, JSON logs, native stderr
captured, `os._exit`) with the open-file limit systemd used to give (1,024, soft = hard), and load
generators in their own processes:

- 1,000 half-open connections (silent and slowloris, re-opened when closed) next to 50 WebSocket clients:
  the connection cap keeps file descriptors free (no accept error, the looping video keeps re-opening),
  the clients keep their frame rate, /healthz answers throughout, a handful of log lines;
- 50 concurrent /metrics + /latest loops: no healthy client dropped;
- SIGHUP with two cameras (one removed, one added, then an invalid file): the daemon stays up and the
  other camera's clients stay connected;
- a daemon with the access log on, a camera URL with a password and an MJPEG camera that sends corrupt
  JPEGs: the token and the password appear nowhere (log, `serve --check`, /metrics), FFmpeg's complaints
  come out as JSON records, the corrupt frames are skipped and counted without a reconnect; then its
  inference thread is killed and /healthz fails within the stall time;
- SIGTERM under full load: exit 0 within 2 s, every client closed with 1001.

The thresholds here leave room for a shared 2-core machine (other test runs compete for the CPU); the
figures in docs/daemon.md come from the full script (60 s, 10 SIGTERM trials) run alone under the
exclusive lock. Loop-lag percentiles are printed, not asserted: they measure the machine's load as much
as the daemon (tests/test_serve_hygiene.py checks deterministically that nothing heavy runs on the loop).
"""

from __future__ import annotations

import importlib.util
import json
import resource
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the daemon needs the 'serve' extra: pip install -e '.[serve]'")
pytest.importorskip("prometheus_client", reason="the daemon needs the 'serve' extra")

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "scripts" / "bench_serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hostile_clients_flood_hammering_sighup_sigterm_and_secrets():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the flood needs ~1,100 file descriptors in its own process; the hard limit is {hard}")
    bench = _bench()
    args = bench.parse_args(["--seconds", "6", "--baseline", "3", "--hammer-seconds", "4", "--hup-seconds", "5",
                             "--sigterm-trials", "1", "--nofile", "1024", "--header-timeout", "3"])
    report = bench.run(args)
    print("\n" + json.dumps({k: report[k] for k in ("main", "secrets", "sigterm", "killed_inference")}, indent=1))
    main, flood, hammer = report["main"], report["main"]["flood"], report["main"]["hammer"]

    # 1,000 half-open connections next to 50 clients, under a 1,024-descriptor limit
    assert flood["generator"]["max_open"] == 1000
    assert flood["connection_limit"] < 1024 - 100  # sized from the limit, with head-room
    assert flood["accept_errors"] == 0, "the cap must keep accept() from running out of descriptors"
    closed = flood["connections_closed"]
    assert closed["evicted"] > 0 or closed["header_timeout"] > 0, closed
    assert flood["min_ratio"] >= 0.75, (flood, main["baseline"])
    assert flood["healthz_non_200"] == 0 and flood["healthz_max_s"] < 2.0, flood
    assert flood["log_lines"] <= 100, flood["log_events"]

    # 50 concurrent /metrics + /latest loops: every request answered, no healthy client dropped
    assert hammer["generator"]["errors"] == 0 and set(hammer["generator"]["status"]) == {"200"}
    assert hammer["generator"]["requests"] > 200
    assert all(v == 0 for k, v in main["clients_dropped"].items()), main["clients_dropped"]
    assert main["clients_ended_early"] == 0
    assert hammer["min_ratio"] >= 0.75, hammer

    # SIGHUP: stays up, cameras swapped, the other camera's clients kept their frames
    hup = main["sighup"]
    assert hup["alive"] and hup["alive_after_invalid_file"]
    assert hup["cameras_after"] == ["cam", "yard"]
    assert hup["reloads"] == {"applied": 1.0, "failed": 1.0}
    assert hup["cam_clients_min_fps_during"] > 0.5 * main["baseline"]["mean_fps"]

    # secrets, JSON logs, corrupt frames
    secrets = report["secrets"]
    assert secrets["found"] == {"log": [], "check": [], "metrics": []}
    assert secrets["access_lines"] > 0 and secrets["masked_token_in_access_log"]
    assert secrets["masked_password_in_log"]
    assert secrets["non_json_lines"] == 0 and secrets["native_lines"] > 0, "FFmpeg's output as JSON records"
    mjpeg = secrets["corrupt_mjpeg"]
    assert mjpeg["counted"] >= 1 and mjpeg["reconnects"] == 0 and mjpeg["processed"] > 10, mjpeg

    # liveness: the killed inference thread fails /healthz within the stall time
    killed = report["killed_inference"]
    assert killed["before"] == 200 and killed["after"] == 503 and killed["seconds"] <= killed["stall_s"]

    # SIGTERM under full load
    for trial in report["sigterm"]:
        assert trial["exit_code"] == 0 and trial["seconds"] < 2.0, trial
        assert trial["close_codes"] == {"1001": 50}, trial
