"""The daemon's defences, one at a time and in process (issue 15): configuration ranges and secrets, the
connection guard, an event loop that never runs the heavy work, liveness, SIGHUP reload, dropped clients
by reason, corrupt frames, `realtime = false`, native stderr as JSON, import direction. A `StubEstimator`
stands in for the models; all traffic is on 127.0.0.1. The whole daemon under hostile load, as a process,
is tests/test_serve_hostile.py."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import logging
import math
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the daemon needs the 'serve' extra: pip install -e '.[serve]'")
pytest.importorskip("prometheus_client", reason="the daemon needs the 'serve' extra")

import aiohttp  # noqa: E402
from test_serve_support import (  # noqa: E402
    FakeNetworkCamera,
    StubEstimator,
    config_from,
    http_get,
    http_json,
    metric,
    metrics,
    wait_for,
    write_video,
)

from rtmw_edge.cli import main  # noqa: E402
from rtmw_edge.serve import config as config_module  # noqa: E402
from rtmw_edge.serve.config import ConfigError, load_config  # noqa: E402
from rtmw_edge.serve.connections import ConnectionGuard, auto_max_connections  # noqa: E402
from rtmw_edge.serve.daemon import DaemonThread  # noqa: E402
from rtmw_edge.serve.logs import JsonFormatter, Redactor  # noqa: E402
from rtmw_edge.serve.metrics import Metrics  # noqa: E402
from rtmw_edge.sources import open_source  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "h0stile-token-77"
PASSWORD = "cam-secret-991"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("hygiene-clip") / "tiny.avi", (96, 72), fps=25, gray_frames=25)


def _daemon(tmp_path: Path, clip: Path, extra: str = "", estimator=None, cameras: str | None = None,
            **kwargs) -> DaemonThread:
    cams = cameras or f'[cameras.a]\nsource = "{clip}"\nloop = true\n'
    cfg = config_from(tmp_path, f"[server]\nport = 0\n{extra}\n{cams}")
    return DaemonThread(cfg, estimator=estimator or StubEstimator(), **kwargs)


# =========================================================================== configuration
# (section, key): (lowest, highest, 0 also allowed). Independent of the code: what docs/daemon.md and
# configs/daemon.toml promise.
RANGES = {
    ("server", "port"): (0, 65535, False), ("server", "client_queue"): (1, 1000, False),
    ("server", "max_clients"): (1, 10000, False), ("server", "max_connections"): (16, 1_000_000, True),
    ("server", "header_timeout_s"): (0.5, 300, False), ("server", "idle_timeout_s"): (1, 3600, False),
    ("server", "send_timeout_s"): (0.1, 60, False), ("server", "heartbeat_s"): (1, 3600, True),
    ("server", "preview_fps"): (0.1, 60, False), ("server", "preview_quality"): (1, 100, False),
    ("server", "preview_width"): (16, 7680, True), ("server", "stale_after_s"): (0.1, 3600, False),
    ("server", "inference_stall_s"): (0.5, 3600, False),
    ("model", "threads"): (0, 256, False), ("model", "max_persons"): (1, 1000, False),
    ("model", "det_threshold"): (0, 1, False), ("model", "kpt_threshold"): (0, 1, False),
    ("model", "smooth_min_cutoff"): (1e-4, 1000, False), ("model", "smooth_beta"): (0, 1000, False),
    ("model", "det_interval"): (1, 1000, False),
    ("mqtt", "port"): (1, 65535, False), ("mqtt", "qos"): (0, 2, False),
    ("mqtt", "keepalive_s"): (5, 65535, False), ("mqtt", "max_queued"): (1, 100000, False),
    ("cameras", "max_fps"): (0, 1000, False), ("cameras", "reconnect_min_s"): (0.01, 3600, False),
    ("cameras", "reconnect_max_s"): (0.01, 3600, False), ("cameras", "max_latency_ms"): (1, 60000, True),
}


def _numeric_settings() -> dict[tuple[str, str], str]:
    """(section, key) → kind of every numeric setting."""
    out = {}
    for section, cls in [*config_module.SECTIONS.items(), ("cameras", config_module.CameraConfig)]:
        for f in dataclasses.fields(cls):
            if f.metadata.get("kind") in ("int", "float", "float?"):
                out[(section, f.name)] = f.metadata["kind"]
    return out


def test_every_numeric_setting_has_a_documented_range():
    assert set(_numeric_settings()) == set(RANGES), "add the new key to RANGES (and to the docs)"


def _load(section: str, key: str, value: str):
    env = {"RTMW_EDGE_CAMERAS_A_SOURCE": "0"}
    if section == "cameras":
        env[f"RTMW_EDGE_CAMERAS_A_{key.upper()}"] = value
        if key == "reconnect_min_s":
            env["RTMW_EDGE_CAMERAS_A_RECONNECT_MAX_S"] = "3600"
        if key == "reconnect_max_s":
            env["RTMW_EDGE_CAMERAS_A_RECONNECT_MIN_S"] = "0.01"
    else:
        env[f"RTMW_EDGE_{section.upper()}_{key.upper()}"] = value
    return load_config(None, env=env)


@pytest.mark.parametrize(("section", "key"), sorted(RANGES))
def test_numeric_settings_accept_their_range_and_refuse_the_rest(section, key):
    lo, hi, zero = RANGES[(section, key)]
    is_int = _numeric_settings()[(section, key)] == "int"
    inside = [lo, hi] + ([0] if zero else [])
    step = 1 if is_int else max(abs(lo) * 0.5, 1e-3)
    below = lo - step if not zero else (lo - 1 if is_int else lo / 2)  # with 0 allowed: between 0 and lo
    outside = [hi + (1 if is_int else hi * 0.01)] + ([below] if below != 0 else []) + ([-1] if zero else [])
    if not is_int:
        outside += [math.nan, math.inf, -math.inf]
    for value in inside:
        _load(section, key, str(value))
    for value in outside:
        with pytest.raises(ConfigError) as info:
            _load(section, key, str(value))
        assert key in str(info.value) and "\n" not in str(info.value), value


def test_a_config_file_with_infinity_is_one_error_line_exit_2(tmp_path, capsys):
    path = tmp_path / "d.toml"
    path.write_text('[server]\nheartbeat_s = inf\n[cameras.a]\nsource = "0"\n')
    assert main(["serve", "--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "server.heartbeat_s must be a finite number" in err


def test_non_loopback_without_a_token_is_refused_unless_insecure(tmp_path, capsys):
    path = tmp_path / "d.toml"
    path.write_text('[server]\nhost = "0.0.0.0"\n[cameras.a]\nsource = "0"\n')
    assert main(["serve", "--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "no token is set" in err and "--insecure" in err and "RTMW_EDGE_TOKEN" in err
    assert main(["serve", "--config", str(path), "--check", "--insecure"]) == 0
    assert json.loads(capsys.readouterr().out)["server"]["insecure"] is True
    for host in ("127.0.0.1", "127.8.0.1", "::1", "localhost", "[::1]"):
        assert config_module.is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.2", "camera.local", ""):
        assert not config_module.is_loopback(host), host
    with pytest.raises(ConfigError, match="reachable from the network"):
        load_config(None, env={"RTMW_EDGE_SERVER_HOST": "::", "RTMW_EDGE_CAMERAS_A_SOURCE": "0"})
    cfg = load_config(None, env={"RTMW_EDGE_SERVER_HOST": "0.0.0.0", "RTMW_EDGE_TOKEN": TOKEN,
                                 "RTMW_EDGE_CAMERAS_A_SOURCE": "0"})
    assert cfg.server.token == TOKEN


def test_rtmw_edge_token_is_the_server_token():
    base = {"RTMW_EDGE_CAMERAS_A_SOURCE": "0"}
    assert load_config(None, env={**base, "RTMW_EDGE_TOKEN": TOKEN}).server.token == TOKEN
    # compose passes RTMW_EDGE_SERVER_TOKEN="" when the host has no RTMW_EDGE_TOKEN: no token, not an error
    assert load_config(None, env={**base, "RTMW_EDGE_TOKEN": TOKEN, "RTMW_EDGE_SERVER_TOKEN": ""}).server.token == TOKEN
    assert load_config(None, env={**base, "RTMW_EDGE_TOKEN": TOKEN, "RTMW_EDGE_SERVER_TOKEN": TOKEN}).server.token
    with pytest.raises(ConfigError, match="different tokens") as info:
        load_config(None, env={**base, "RTMW_EDGE_TOKEN": TOKEN, "RTMW_EDGE_SERVER_TOKEN": "another-token-1"})
    assert TOKEN not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(None, env={**base, "RTMW_EDGE_TOKEN": "short"})
    assert "short" not in str(info.value)


def test_check_masks_the_token_and_every_password(tmp_path, capsys):
    path = tmp_path / "d.toml"
    path.write_text(f'[server]\ntoken = "{TOKEN}"\n[mqtt]\nusername = "u"\npassword = "{PASSWORD}x"\n'
                    f'[cameras.door]\nsource = "rtsp://viewer:{PASSWORD}@192.168.1.64:554/Streaming"\n'
                    f'[cameras.csi]\nsource = "rtspsrc location=rtsp://10.0.0.2/s user-id=admin '
                    f'user-pw={PASSWORD}y ! decodebin ! appsink"\n')
    assert main(["serve", "--config", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out and TOKEN not in out
    shown = json.loads(out)
    assert shown["cameras"]["door"]["source"] == "rtsp://viewer:***@192.168.1.64:554/Streaming"
    assert "user-pw=***" in shown["cameras"]["csi"]["source"] and shown["mqtt"]["password"] == "***"
    secrets = load_config(path, env={}).secrets()
    assert set(secrets) >= {TOKEN, PASSWORD, PASSWORD + "x", PASSWORD + "y"}


def test_log_records_never_show_a_secret():
    fmt = JsonFormatter(Redactor([TOKEN, PASSWORD]))
    try:
        raise RuntimeError(f"cannot open rtsp://admin:{PASSWORD}@cam/1 with token {TOKEN}")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", (f"Bearer {TOKEN}",),
                                   sys.exc_info())
    record.url = f"http://u:{PASSWORD}@h/x?access_token={TOKEN}"
    line = fmt.format(record)
    assert TOKEN not in line and PASSWORD not in line
    entry = json.loads(line)
    assert entry["url"] == "http://u:***@h/x?access_token=***" and "***" in entry["exc"]
    # without known secrets, URL credentials and token parameters are still masked
    plain = Redactor()
    assert plain(f"rtsp://u:{PASSWORD}@h/s") == "rtsp://u:***@h/s"
    assert plain(f"/ws?camera=a&access_token={TOKEN}") == "/ws?camera=a&access_token=***"


def test_the_access_log_masks_the_query_token(tmp_path, clip, caplog):
    with caplog.at_level(logging.INFO, logger="aiohttp.access"), \
            _daemon(tmp_path, clip, extra=f'token = "{TOKEN}"\naccess_log = true') as d:
        assert http_get(d.port, f"/healthz?access_token={TOKEN}")[0] == 200
        assert http_get(d.port, "/healthz", token=TOKEN)[0] == 200
        wait_for(lambda: len([r for r in caplog.records if r.name == "aiohttp.access"]) >= 2, 5, what="access")
    access = [r for r in caplog.records if r.name == "aiohttp.access"]
    lines = [JsonFormatter().format(r) for r in access]  # no secrets configured: the access logger masks itself
    assert all(TOKEN not in line for line in lines), lines
    assert any('"path": "/healthz?access_token=***"' in line for line in lines)
    assert all(json.loads(line)["status"] == 200 for line in lines)


# =========================================================================== connections
class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def _guard(cap: int, timeout: float = 1.0):
    now = [0.0]
    metrics = Metrics()
    guard = ConnectionGuard(metrics, cap, timeout, clock=lambda: now[0])

    def connect() -> tuple[object, _Transport]:
        inner, transport = object(), _Transport()
        assert guard.reserve()
        assert guard.admit(inner, transport)
        return inner, transport

    def dropped(reason: str) -> float:
        return metrics.clients_dropped.labels("connection", reason)._value.get()

    return guard, now, connect, dropped


def test_guard_closes_connections_without_a_request_head_after_the_timeout():
    guard, now, connect, dropped = _guard(cap=10, timeout=1.0)
    silent, t_silent = connect()
    busy, t_busy = connect()
    guard.request_started(busy)  # its request head arrived: it is never timed out while handled
    now[0] = 0.9
    guard.sweep()
    assert not t_silent.aborted
    now[0] = 1.1
    guard.sweep()
    assert t_silent.aborted and not t_busy.aborted and dropped("header_timeout") == 1
    guard.request_finished(busy)  # keep-alive: idle from here on, aiohttp's idle timeout applies
    now[0] = 100.0
    guard.sweep()
    assert not t_busy.aborted and guard.count("idle") == 1


def test_guard_at_the_cap_evicts_oldest_pending_then_idle_and_refuses_only_when_all_busy():
    guard, now, connect, dropped = _guard(cap=3)
    (_, ta), (b, tb), (c, tc) = connect(), connect(), connect()
    guard.request_started(b)
    guard.request_started(c)
    guard.request_finished(c)  # c idle, b active, a pending
    d, td = connect()  # evicts a (the oldest pending)
    assert ta.aborted and not tb.aborted and not tc.aborted and dropped("evicted") == 1
    guard.request_started(d)
    e, te = connect()  # no pending left: evicts c (idle)
    assert tc.aborted and dropped("evicted") == 2
    guard.request_started(e)
    assert not guard.reserve(), "every connection busy: refused"
    assert dropped("over_capacity") == 1 and not (tb.aborted or td.aborted or te.aborted)


def test_auto_cap_leaves_head_room_under_the_open_file_limit():
    assert auto_max_connections(1024, 40) == 1024 - 40 - 256
    assert auto_max_connections(65536, 100) == 4096
    assert auto_max_connections(100, 90) == 16


def _half_open(port: int, slow: bool) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    if slow:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
    return s


def _closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """True when the daemon closes S within TIMEOUT (whatever it sends before: pings, a close frame)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            if s.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def test_half_open_connections_are_closed_and_the_cap_keeps_room_for_real_clients(tmp_path, clip):
    with _daemon(tmp_path, clip, extra="header_timeout_s = 1.0\nmax_connections = 16") as d:
        port = d.port
        early = [_half_open(port, slow=i % 2 == 1) for i in range(4)]
        time.sleep(0.2)
        late = [_half_open(port, slow=True) for _ in range(12)]  # 16 open: the cap

        async def client_during_flood() -> tuple[int, list]:
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    f"http://127.0.0.1:{port}/ws?camera=a") as ws:  # a 17th connection: evicts the oldest
                frames = [json.loads((await ws.receive(timeout=10)).data) for _ in range(3)]
                status = http_get(port, "/healthz", timeout=2)[0]  # and an 18th
                await asyncio.sleep(1.5)  # past the header timeout: the WebSocket is not affected
                frames.append(json.loads((await ws.receive(timeout=10)).data))
                return status, frames

        status, frames = asyncio.run(client_during_flood())
        assert status == 200 and all(f["camera"] == "a" for f in frames)
        assert _closed_by_peer(early[0], 1) and _closed_by_peer(early[1], 1), "the oldest were evicted"
        assert all(_closed_by_peer(s, 3) for s in late), "the header timeout closed the rest"
        samples = metrics(port)
    for s in early + late:
        s.close()
    assert metric(samples, "rtmw_edge_clients_dropped_total", kind="connection", reason="evicted") >= 2
    assert metric(samples, "rtmw_edge_clients_dropped_total", kind="connection", reason="header_timeout") >= 10
    assert metric(samples, "rtmw_edge_connection_limit") == 16


def test_accept_errors_pause_accepting_count_and_log_once_per_interval(tmp_path, clip):
    """The listener runs out of file descriptors (a tiny limit, the cap set above it): accept() fails with
    EMFILE. Counted, one log line per interval, no traceback, and the daemon serves again once they close."""
    conf = tmp_path / "d.toml"
    conf.write_text(f'[server]\nport = 0\nmax_connections = 500\n[cameras.a]\nsource = "{clip}"\nloop = true\n')
    script = ROOT / "scripts" / "bench_serve.py"

    def limits() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))

    log = tmp_path / "daemon.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, str(script), "--role", "daemon", str(conf), "0.01", ""],
                                stderr=err, stdout=subprocess.DEVNULL, cwd=ROOT, preexec_fn=limits)
    try:
        port = wait_for(lambda: next((json.loads(line)["port"] for line in log.read_text().splitlines()
                                      if '"listening"' in line), None), 60, what="listening")
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 30, what="ready")
        held = []
        for _ in range(150):  # more than the descriptors left
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        time.sleep(1.0)
        for s in held:
            s.close()
        wait_for(lambda: http_get(port, "/healthz", timeout=2)[0] == 200, 10, what="serving again")
        samples = metrics(port)
    finally:
        proc.terminate()
        proc.wait(10)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    errors = [e for e in lines if e.get("event") == "accept_error"]
    assert metric(samples, "rtmw_edge_accept_errors_total", error="EMFILE") >= 1
    assert 1 <= len(errors) <= 2 and all("exc" not in e for e in errors), errors
    assert len(lines) < 30


# =========================================================================== the event loop
def test_metrics_and_preview_jpegs_are_made_off_the_event_loop_and_shared(tmp_path, clip):
    with _daemon(tmp_path, clip) as d:
        port, daemon = d.port, d.daemon
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 20, what="ready")
        loop_thread = d._thread
        threads: list[str] = []
        render, encode = daemon.metrics.exposition, daemon.hub._encode
        daemon.metrics.exposition = lambda: (threads.append(threading.current_thread().name), render())[1]
        daemon.hub._encode = lambda p: (threads.append(threading.current_thread().name), encode(p))[1]

        async def fifty_scrapes() -> list[int]:
            async with aiohttp.ClientSession() as session:
                async def one() -> int:
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        await resp.read()
                        return resp.status
                return await asyncio.gather(*(one() for _ in range(50)))

        statuses = asyncio.run(fifty_scrapes())
        renders = len(threads)
        before = metric(metrics(port), "rtmw_edge_unauthorized_total")
        daemon.metrics.unauthorized.inc(7)
        assert metric(metrics(port), "rtmw_edge_unauthorized_total") == before + 7, "a scrape is never stale"
        from test_serve import _first_preview_jpeg

        _first_preview_jpeg(port, "a")
    assert statuses == [200] * 50
    assert 1 <= renders <= 3, "fifty concurrent scrapes share a rendering or two"
    assert len(threads) > renders + 2, "a preview JPEG was encoded"
    assert loop_thread.name not in threads and all(t.startswith("rtmw-edge-offload") for t in threads), threads


def test_loop_lag_is_measured(tmp_path, clip):
    with _daemon(tmp_path, clip) as d:
        wait_for(lambda: metric(metrics(d.port), "rtmw_edge_event_loop_lag_seconds_count") >= 5, 10, what="lag")
        d._loop.call_soon_threadsafe(time.sleep, 0.3)  # block the loop for 0.3 s, as a blocking call would
        time.sleep(1.0)
        samples = metrics(d.port)
    over = (metric(samples, "rtmw_edge_event_loop_lag_seconds_count")
            - metric(samples, "rtmw_edge_event_loop_lag_seconds_bucket", le="0.25"))
    assert over >= 1, "the blocked timer was seen"
    assert metric(samples, "rtmw_edge_event_loop_lag_p99_seconds") >= 0.2


# =========================================================================== liveness
class DyingEstimator(StubEstimator):
    """Kills the inference thread (an exception that is not an Exception) once `die` is set."""

    def __init__(self) -> None:
        super().__init__(delay=0.01)
        self.die = threading.Event()

    def __call__(self, image, frame=0, timestamp=0.0):
        if self.die.is_set():
            raise SystemExit("killed")
        return super().__call__(image, frame, timestamp)


class HangingEstimator(StubEstimator):
    def __init__(self) -> None:
        super().__init__(delay=0.01)
        self.hang, self.release, self.hanging = threading.Event(), threading.Event(), threading.Event()

    def __call__(self, image, frame=0, timestamp=0.0):
        if self.hang.is_set():
            self.hanging.set()
            self.release.wait(30)
        return super().__call__(image, frame, timestamp)


def _healthz_fails_after(port: int, limit: float) -> tuple[float, dict]:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        status, body = http_json(port, "/healthz")
        if status != 200:
            return time.monotonic() - start, body
        time.sleep(0.02)
    raise AssertionError(f"/healthz still 200 after {limit} s")


def test_healthz_fails_once_the_inference_thread_dies(tmp_path, clip, caplog):
    stub = DyingEstimator()
    with caplog.at_level(logging.CRITICAL, logger="rtmw_edge.serve"), \
            _daemon(tmp_path, clip, extra="inference_stall_s = 2.0", estimator=stub) as d:
        wait_for(lambda: http_get(d.port, "/readyz")[0] == 200, 20, what="ready")
        stub.die.set()
        seconds, body = _healthz_fails_after(d.port, 2.0)
        assert body["status"] == "inference thread died" and http_get(d.port, "/readyz")[0] == 503
    assert seconds < 2.0
    assert any(getattr(r, "event", "") == "inference_thread_died" for r in caplog.records)


def test_healthz_fails_when_inference_stalls_for_the_stall_time_and_recovers(tmp_path, clip):
    stub = HangingEstimator()
    with _daemon(tmp_path, clip, extra="inference_stall_s = 1.5", estimator=stub) as d:
        wait_for(lambda: http_get(d.port, "/readyz")[0] == 200, 20, what="ready")
        stub.hang.set()
        wait_for(stub.hanging.is_set, 5, what="a call in flight")
        hung_at = time.monotonic()
        time.sleep(0.9)
        assert http_get(d.port, "/healthz")[0] == 200, "not stalled before the stall time"
        seconds, body = _healthz_fails_after(d.port, 3.0)
        assert body["status"] == "inference stalled" and "s" in body["detail"]
        assert 1.2 <= time.monotonic() - hung_at <= 2.5
        stub.hang.clear()
        stub.release.set()
        wait_for(lambda: http_get(d.port, "/healthz")[0] == 200, 5, what="healthy again")


# =========================================================================== reload, dropped clients
def test_reload_adds_removes_and_changes_cameras_keeping_other_clients(tmp_path, clip, caplog):
    caplog.set_level(logging.INFO, logger="rtmw_edge.serve")
    other = write_video(tmp_path / "other.avi", (64, 48), fps=25, gray_frames=25)
    cams = {"a": f'[cameras.a]\nsource = "{clip}"\nloop = true\n',
            "A": f'[cameras.a]\nsource = "{clip}"\nloop = true\nmax_fps = 50\n',  # camera a, changed
            "b": f'[cameras.b]\nsource = "{clip}"\nloop = true\n',
            "c": f'[cameras.c]\nsource = "{other}"\nloop = true\n'}
    path = tmp_path / "reload.toml"

    def write(names: str, token: str = TOKEN, port: int = 0) -> None:
        path.write_text(f'[server]\nport = {port}\ntoken = "{token}"\n' + "".join(cams[n] for n in names))

    write("ab")
    cfg = load_config(path, env={})
    with DaemonThread(cfg, estimator=StubEstimator(), reloader=lambda: load_config(path, env={})) as d:
        port = d.port
        ends: dict[str, object] = {}
        counts: dict[str, list] = {"a": [], "b": [], "*": []}

        async def client(camera: str | None, stop: asyncio.Event) -> None:
            query = f"?camera={camera}" if camera else ""
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    f"http://127.0.0.1:{port}/ws{query}", headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                closed_by_server = None   # a receive timeout marks close_code 1006 in aiohttp: only a close counts
                while not stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        closed_by_server = ws.close_code
                        break
                    counts[camera or "*"].append(json.loads(msg.data)["camera"])
                ends[camera or "*"] = closed_by_server

        async def scenario() -> dict:
            stop = asyncio.Event()
            tasks = [asyncio.ensure_future(client(c, stop)) for c in ("a", "b", None)]
            await asyncio.sleep(1.0)
            write("Ac", token="rotated-token-1", port=9)  # a changed, b removed, c added, token rotated, port
            applied = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(d.daemon.reload(), d._loop))
            mark = {k: len(v) for k, v in counts.items()}
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*tasks)
            return {"applied": applied, "mark": mark}

        result = asyncio.run(scenario())
        ready = http_json(port, "/readyz", token="rotated-token-1")[1]
        assert http_get(port, "/healthz", token=TOKEN)[0] == 401, "the old token no longer works"
        samples = metrics(port, "rotated-token-1")
        path.write_text("[server\n")  # an invalid file: logged, nothing changes
        assert d.call(d.daemon.reload()) is False
        assert sorted(http_json(port, "/readyz", token="rotated-token-1")[1]["cameras"]) == ["a", "c"]
        assert d.port == port  # server.port needs a restart: not applied
    assert result["applied"] is True
    assert sorted(ready["cameras"]) == ["a", "c"]
    reloaded = next(r for r in caplog.records if getattr(r, "event", "") == "reloaded")
    assert (reloaded.added, reloaded.removed, reloaded.changed) == (["c"], ["b"], ["a"])
    assert reloaded.restart_needed == ["server.port"], "a changed port needs a restart: said, not applied"
    assert ends["b"] == 1001, "the removed camera's client was closed (going away)"
    assert "a" not in ends or ends["a"] is None, "the changed camera's client stayed connected"
    assert len(counts["a"]) > result["mark"]["a"] + 3, "and kept receiving frames (from the re-opened source)"
    assert "c" in counts["*"][result["mark"]["*"]:], "the all-cameras client gets the added camera"
    assert metric(samples, "rtmw_edge_clients_dropped_total", kind="websocket", reason="camera_removed") == 1
    assert metric(samples, "rtmw_edge_config_reloads_total", result="applied") == 1


def test_sighup_without_a_config_file_is_ignored_with_a_log_line(tmp_path, clip, caplog):
    with caplog.at_level(logging.INFO, logger="rtmw_edge.serve"), _daemon(tmp_path, clip) as d:
        assert d.call(d.daemon.reload()) is False
    assert any(getattr(r, "event", "") == "reload_ignored" for r in caplog.records)


def _raw_websocket(port: int, camera: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((f"GET /ws?camera={camera} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert b"101" in s.recv(4096).split(b"\r\n", 1)[0]
    return s


def test_dropped_clients_are_counted_by_reason_heartbeat_and_protocol(tmp_path, clip):
    dead = tmp_path / "missing.avi"  # a camera that never delivers: no frames, only pings
    cams = f'[cameras.a]\nsource = "{dead}"\nreconnect_min_s = 5\n'
    with _daemon(tmp_path, clip, extra="heartbeat_s = 1", cameras=cams) as d:
        silent = _raw_websocket(d.port, "a")  # never answers a ping
        assert _closed_by_peer(silent, 5), "closed for the missing pong"

        async def oversized() -> int:
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    f"http://127.0.0.1:{d.port}/ws?camera=a") as ws:
                await ws.send_str("x" * (128 * 1024))
                await ws.receive(timeout=5)
                return ws.close_code

        code = asyncio.run(oversized())
        samples = wait_for(lambda: (lambda m: m if metric(m, "rtmw_edge_clients_dropped_total", kind="websocket",
                                                          reason="protocol") else None)(metrics(d.port)), 5,
                           what="the protocol drop counted")
    silent.close()
    assert code == 1009
    assert metric(samples, "rtmw_edge_clients_dropped_total", kind="websocket", reason="heartbeat") == 1


# =========================================================================== sources
def _corrupt_copy(clip: Path, out: Path, frames: tuple[int, ...]) -> Path:
    data = bytearray(clip.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    for f in frames:
        end = data.find(b"\xff\xd9", starts[f]) + 2
        data[starts[f]:end] = bytes(end - starts[f])  # the frame's JPEG zeroed: undecodable
    out.write_bytes(bytes(data))
    return out


def test_a_corrupt_video_frame_is_skipped_and_counted_not_the_end_of_the_file(tmp_path):
    clip = write_video(tmp_path / "ten.avi", (64, 48), fps=25, gray_frames=10)
    bad = _corrupt_copy(clip, tmp_path / "bad.avi", (3, 6))
    messages: list[str] = []
    with open_source(bad, prefetch=1, on_skip=messages.append) as source:
        means = [round(float(f.image.mean())) for f in source]
        corrupt = source.skipped
    with open_source(clip, prefetch=1) as source:
        expected = [round(float(f.image.mean())) for f in source]
    assert corrupt == 2 and len(messages) == 2
    assert means == [m for i, m in enumerate(expected) if i not in (3, 6)], "every other frame, in order"


def test_a_corrupt_jpeg_in_an_mjpeg_stream_is_skipped_not_a_reconnect(tmp_path):
    camera = FakeNetworkCamera(fps=25.0, corrupt_every=5)
    camera.start()
    try:
        cams = f'[cameras.net]\nsource = "{camera.url}"\n'
        with _daemon(tmp_path, Path("unused"), cameras=cams) as d:
            wait_for(lambda: metric(metrics(d.port), "rtmw_edge_frames_dropped_total", camera="net",
                                    reason="corrupt") >= 3, 20, what="corrupt frames counted")
            samples = metrics(d.port)
            state = http_json(d.port, "/readyz")[1]["cameras"]["net"]
    finally:
        camera.stop()
    assert metric(samples, "rtmw_edge_reconnects_total", camera="net") == 0
    assert state["state"] == "up" and state["reconnects"] == 0
    assert metric(samples, "rtmw_edge_frames_processed_total", camera="net") >= 8


def test_realtime_false_reads_only_as_fast_as_inference_takes_frames(tmp_path, clip):
    stub = StubEstimator(delay=0.05)  # ~20 frames/s of inference; the file decodes at hundreds per second
    cams = f'[cameras.a]\nsource = "{clip}"\nloop = true\nrealtime = false\n'
    with _daemon(tmp_path, clip, estimator=stub, cameras=cams) as d:
        wait_for(lambda: len(stub.calls) >= 30, 20, what="30 inferences")
        samples = metrics(d.port)
    captured = metric(samples, "rtmw_edge_frames_captured_total", camera="a")
    processed = metric(samples, "rtmw_edge_frames_processed_total", camera="a")
    assert metric(samples, "rtmw_edge_frames_dropped_total", camera="a", reason="stale") == 0
    assert captured - processed <= 3, (captured, processed)


# =========================================================================== logs, imports
def test_native_stderr_output_becomes_rate_limited_json_records(tmp_path):
    code = """
import os, sys, cv2, numpy as np
from rtmw_edge.serve.logs import setup_logging
logs = setup_logging("info", "json", secrets=["s3cret-pw-123"], capture_native=True)
for i in range(30):
    os.write(2, b"[mjpeg @ 0x55] No JPEG data found in image rtsp://u:s3cret-pw-123@cam/x\\n")
print("python print to stderr", file=sys.stderr)
logs.close()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    entries = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is JSON
    native = [e for e in entries if e.get("event") == "native_log"]
    assert len(native) == 20 and native[0]["msg"] == "[mjpeg @ 0x55] No JPEG data found in image rtsp://u:***@cam/x"
    summary = [e for e in entries if e.get("event") == "native_log_suppressed"]
    assert summary and summary[0]["suppressed"] == 11  # 10 more FFmpeg lines + the print
    assert "s3cret-pw-123" not in proc.stderr


def test_serve_modules_import_one_way():
    """No import circle inside rtmw_edge.serve (app ↔ daemon used to import each other)."""
    folder = ROOT / "rtmw_edge" / "serve"
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(alias.name for alias in node.names)
        graph[path.stem] = {d for d in deps if (folder / f"{d}.py").exists()}

    def visit(name: str, stack: list[str]) -> None:
        assert name not in stack, "import circle: " + " -> ".join([*stack, name])
        for dep in graph.get(name, ()):
            visit(dep, [*stack, name])

    for module in graph:
        visit(module, [])
    assert "daemon" not in graph["app"] and "daemon" not in graph["hub"]


def test_the_backend_is_reported_as_it_runs(tmp_path, clip):
    with _daemon(tmp_path, clip) as d:
        ready = http_json(d.port, "/readyz")[1]
        samples = metrics(d.port)
    assert ready["backend"] == {"requested": "auto", "active": "custom", "det": "custom", "pose": "custom",
                                "pipeline": "custom", "fallback_reason": None}
    assert metric(samples, "rtmw_edge_build_info", backend="custom", backend_requested="auto", cameras="a",
                  det="rtmdet-nano-person", fallback="", pose="rtmw-m-256x192",
                  version=__import__("rtmw_edge").__version__) == 1


def test_the_systemd_unit_raises_the_open_file_limit_and_reloads_with_sighup():
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((ROOT / "scripts" / "rtmw-edge.service").read_text())
    service = unit["Service"]
    assert int(service["LimitNOFILE"]) >= 16384
    assert auto_max_connections(int(service["LimitNOFILE"]), 100) == 4096, "the full automatic cap fits"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Type"] == "notify" and service["KillSignal"] == "SIGTERM"
