"""The pose daemon's parts, fast: configuration (file, environment, one-line errors, the CLI's exit code),
bearer token, unknown cameras, graceful stop with a frame in flight, per-camera tracking, reconnect backoff,
systemd notifications and JSON logs. A `StubEstimator` stands in for the models (the real detector + RTMW
run in tests/test_serve.py). All traffic is on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import os
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
    StubEstimator,
    collect_ws,
    config_from,
    http_get,
    http_json,
    metric,
    metrics,
    wait_for,
    write_video,
)

from rtmw_edge.cli import main  # noqa: E402
from rtmw_edge.errors import RtmwEdgeError  # noqa: E402
from rtmw_edge.serve.cameras import Camera  # noqa: E402
from rtmw_edge.serve.config import CameraConfig, ConfigError, load_config  # noqa: E402
from rtmw_edge.serve.daemon import DaemonThread  # noqa: E402
from rtmw_edge.serve.logs import JsonFormatter  # noqa: E402
from rtmw_edge.serve.metrics import Metrics  # noqa: E402
from rtmw_edge.serve.systemd import Notifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token-123"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("unit-clip") / "tiny.avi", (96, 72), fps=25, gray_frames=25)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- configuration
def test_the_documented_example_config_loads(tmp_path):
    cfg = load_config(ROOT / "configs" / "daemon.toml", env={})
    assert cfg.server.host == "127.0.0.1" and cfg.cameras
    assert {c.name for c in cfg.cameras} >= {"usb", "demo"}


def test_file_values_then_environment_overrides(tmp_path):
    path = _write(tmp_path, """
[server]
port = 9000
[model]
pose = "rtmw-l-256x192"
smooth_beta = 0.5
[cameras.front-door]
source = 0
[cameras.demo]
source = "clip.avi"
loop = true
""")
    env = {"RTMW_EDGE_SERVER_PORT": "9100", "RTMW_EDGE_MQTT_ENABLED": "yes", "RTMW_EDGE_MQTT_QOS": "1",
           "RTMW_EDGE_CAMERAS_FRONT_DOOR_SOURCE": "rtsp://cam/stream", "RTMW_EDGE_CAMERAS_FRONT_DOOR_MAX_FPS": "15",
           "RTMW_EDGE_CAMERAS_YARD_SOURCE": "1", "RTMW_EDGE_MODEL_SMOOTH_BETA": "",
           "RTMW_EDGE_HOME": "/elsewhere", "RTMW_EDGE_CONFIG": str(tmp_path), "UNRELATED": "x"}
    cfg = load_config(path, env=env)
    assert cfg.server.port == 9100 and cfg.server.host == "127.0.0.1"
    assert cfg.model.pose == "rtmw-l-256x192" and cfg.model.smooth_beta is None
    assert cfg.mqtt.enabled is True and cfg.mqtt.qos == 1
    assert [c.name for c in cfg.cameras] == ["front-door", "demo", "yard"]
    front = cfg.camera("front-door")
    assert front.source == "rtsp://cam/stream" and front.max_fps == 15.0
    assert cfg.camera("demo").loop is True and cfg.camera("yard").source == "1"


def test_environment_alone_can_configure_a_camera():
    cfg = load_config(None, env={"RTMW_EDGE_CAMERAS_LAB_SOURCE": "/dev/video0", "RTMW_EDGE_CAMERAS_LAB_LOOP": "0"})
    assert [(c.name, c.source, c.loop) for c in cfg.cameras] == [("lab", "/dev/video0", False)]


CAM = "[cameras.a]\nsource = \"0\"\n"


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("[server]\nport = \"80a\"\n" + CAM, {}, "daemon.toml: server.port expected an integer, got '80a'"),
    ("[server]\nport = 70000\n[cameras.a]\nsource = \"0\"\n", {}, "server.port must be between 0 and 65535"),
    ("[server]\nprot = 1\n[cameras.a]\nsource = \"0\"\n", {}, "unknown key server.prot (did you mean 'port'?)"),
    ("[servr]\n[cameras.a]\nsource = \"0\"\n", {}, "unknown section 'servr' (did you mean 'server'?)"),
    ("[server]\nport = 1\n", {}, "no cameras"),
    ("[server\nport = 1\n", {}, "invalid TOML"),
    ("[cameras.a]\nsource = \"0\"\nloop = \"yes\"\n", {}, "cameras.a.loop expected true or false"),
    ("[cameras.\"a b\"]\nsource = \"0\"\n", {}, "camera name 'a b'"),
    ("[cameras.a]\nloop = true\n", {}, "cameras.a.source is missing"),
    (CAM + "reconnect_min_s = 5\nreconnect_max_s = 1\n", {}, "cameras.a.reconnect_max_s must be"),
    ("[model]\nbackend = \"cuda\"\n[cameras.a]\nsource = \"0\"\n", {}, "model.backend must be one of auto"),
    ("[mqtt]\nenabled = true\ntopic = \"poses\"\n[cameras.a]\nsource = \"0\"\n", {}, "must contain {camera}"),
    ("[server]\ntoken = \"short\"\n[cameras.a]\nsource = \"0\"\n", {}, "server.token must be at least 8 characters"),
    (CAM, {"RTMW_EDGE_SERVER_PORT": "x"}, "RTMW_EDGE_SERVER_PORT: server.port expected an integer"),
    ("[cameras.a]\nsource = \"0\"\n", {"RTMW_EDGE_MQTT_ENABLED": "maybe"}, "expected a boolean"),
    ("[cameras.a]\nsource = \"0\"\n", {"RTMW_EDGE_SERVER_PROT": "1"}, "unknown setting server.prot"),
    ("[cameras.a]\nsource = \"0\"\n", {"RTMW_EDGE_CAMERAS_A_SOURS": "1"}, "RTMW_EDGE_CAMERAS_<NAME>_<KEY>"),
])
def test_config_errors_are_one_clear_line(tmp_path, text, env, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    message = str(info.value)
    assert expected in message and "\n" not in message
    if not env:
        assert str(path) in message


def test_token_file_is_read_and_masked(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    cfg = load_config(_write(tmp_path, f'[server]\ntoken_file = "{tmp_path / "token"}"\n[cameras.a]\nsource = "0"\n'),
                      env={})
    assert cfg.server.token == TOKEN
    assert cfg.as_dict()["server"]["token"] == "***"


def test_serve_check_prints_the_effective_settings(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, f'[server]\ntoken = "{TOKEN}"\n[cameras.a]\nsource = "0"\n')
    monkeypatch.setenv("RTMW_EDGE_SERVER_PORT", "9999")
    assert main(["serve", "--config", str(path), "--check"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["server"]["port"] == 9999 and shown["server"]["token"] == "***"
    assert shown["cameras"]["a"]["source"] == "0"


def test_serve_check_refuses_a_camera_file_that_is_not_there(tmp_path, capsys):
    """--check validates what `serve` would open: a missing video file is named (exit 2); a device node that may be
    plugged in later, a camera index and a URL are not looked for."""
    path = _write(tmp_path, f'[cameras.a]\nsource = "{tmp_path / "door.mp4"}"\n')
    assert main(["serve", "--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"cameras.a.source: no such file or folder: {tmp_path / 'door.mp4'}" in err
    (tmp_path / "door.mp4").write_bytes(b"")
    assert main(["serve", "--config", str(path), "--check"]) == 0
    capsys.readouterr()
    url = _write(tmp_path, '[cameras.a]\nsource = "file:///nonexistent/door.mp4"\n')
    assert main(["serve", "--config", str(url), "--check"]) == 2
    assert "no such file or folder: /nonexistent/door.mp4" in capsys.readouterr().err
    ok = _write(tmp_path, '[cameras.a]\nsource = "/dev/video9"\n[cameras.b]\nsource = "rtsp://cam/x"\n'
                          '[cameras.c]\nsource = "2"\n')
    assert main(["serve", "--config", str(ok), "--check"]) == 0


def test_malformed_config_gives_one_error_line_and_exit_2(tmp_path):
    path = _write(tmp_path, "[server]\nport = 8765\nhost = 127.0.0.1\n[cameras.a]\nsource = \"0\"\n")
    proc = subprocess.run([sys.executable, "-m", "rtmw_edge.cli", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2  # a configuration error is a usage error
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and "daemon.toml: invalid TOML" in lines[0] and "line 3" in lines[0]


def test_cli_error_lines_keep_the_key_names(tmp_path, capsys):
    path = _write(tmp_path, "[server]\nport = \"x\"\n[cameras.a]\nsource = \"0\"\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert capsys.readouterr().err.strip().endswith("daemon.toml: server.port expected an integer, got 'x'")


def test_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["serve", "--config", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "configuration file not found" in err


# --------------------------------------------------------------------------- HTTP, token
def _daemon(tmp_path: Path, clip: Path, extra: str = "", estimator=None, cameras: str | None = None) -> DaemonThread:
    cams = cameras or f'[cameras.a]\nsource = "{clip}"\nloop = true\n'
    cfg = config_from(tmp_path, f"[server]\nport = 0\n{extra}\n{cams}")
    return DaemonThread(cfg, estimator=estimator or StubEstimator())


def test_a_wrong_token_gets_401_everywhere(tmp_path, tiny_clip):
    with _daemon(tmp_path, tiny_clip, extra=f'token = "{TOKEN}"') as d:
        port = d.port
        for path in ("/healthz", "/readyz", "/metrics", "/latest/a", "/preview/a.mjpg", "/ws?camera=a", "/"):
            status, headers, body = http_get(port, path)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
            assert http_get(port, path, token="wrong-token-456")[0] == 401, path
        assert http_get(port, "/healthz", token=TOKEN)[0] == 200
        assert http_get(port, f"/healthz?access_token={TOKEN}")[0] == 200
        wait_for(lambda: http_get(port, "/readyz", token=TOKEN)[0] == 200, 20, what="ready")
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            collect_ws(port, "a", 1, timeout=10, token="wrong-token-456")
        assert info.value.status == 401
        assert collect_ws(port, "a", 1, timeout=20, token=TOKEN)[0]["camera"] == "a"
        assert metric(metrics(port, TOKEN), "rtmw_edge_unauthorized_total") >= 15


def test_health_endpoints_can_be_left_open_for_probes(tmp_path, tiny_clip):
    with _daemon(tmp_path, tiny_clip, extra=f'token = "{TOKEN}"\nhealth_without_token = true') as d:
        assert http_get(d.port, "/healthz")[0] == 200
        assert http_get(d.port, "/metrics")[0] == 401


def test_unknown_cameras_and_the_index(tmp_path, tiny_clip):
    with _daemon(tmp_path, tiny_clip) as d:
        for path in ("/latest/zz", "/preview/zz.mjpg", "/ws?camera=zz"):
            status, body = http_json(d.port, path)
            assert status == 404 and body["cameras"] == ["a"], path
        status, index = http_json(d.port, "/")
        assert status == 200 and index["cameras"] == ["a"] and "/ws?camera=NAME" in index["endpoints"]


def test_clients_beyond_max_clients_are_refused(tmp_path, tiny_clip):
    with _daemon(tmp_path, tiny_clip, extra="max_clients = 2") as d:
        url = f"http://127.0.0.1:{d.port}/ws?camera=a"

        async def scenario() -> tuple[int, int]:
            async with aiohttp.ClientSession() as session:
                first = await session.ws_connect(url)
                second = await session.ws_connect(url)
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await session.ws_connect(url)
                preview = await session.get(f"http://127.0.0.1:{d.port}/preview/a.mjpg")
                refused_preview = preview.status
                preview.close()
                await first.close()
                for _ in range(100):  # the server notices the close
                    if len(d.daemon.hub.clients) < 2:
                        break
                    await asyncio.sleep(0.02)
                again = await session.ws_connect(url)
                await again.receive(timeout=10)
                await again.close()
                await second.close()
                return info.value.status, refused_preview

        assert asyncio.run(scenario()) == (503, 503)


class FlakyEstimator(StubEstimator):
    def __call__(self, image, frame=0, timestamp=0.0):
        if frame % 2:
            raise RuntimeError("engine hiccup")
        return super().__call__(image, frame, timestamp)


def test_a_failing_inference_is_counted_and_the_daemon_goes_on(tmp_path, tiny_clip):
    with _daemon(tmp_path, tiny_clip, estimator=FlakyEstimator()) as d:
        frames = collect_ws(d.port, "a", 3, timeout=20)
        assert all(f["frame"] % 2 == 0 for f in frames)
        assert metric(metrics(d.port), "rtmw_edge_inference_errors_total", camera="a") >= 1
        assert http_get(d.port, "/healthz")[0] == 200


class CameraAwareEstimator(StubEstimator):
    """A one-call estimator that takes per-frame intrinsics, as the Triton client does."""

    accepts_camera = True

    def __init__(self) -> None:
        super().__init__()
        self.cameras: list = []

    def __call__(self, image, frame=0, timestamp=0.0, camera=None):
        self.cameras.append(camera)
        return super().__call__(image, frame, timestamp)


def test_each_camera_sends_its_own_intrinsics_to_a_one_call_estimator(tmp_path, tiny_clip):
    est = CameraAwareEstimator()
    cams = (f'[cameras.a]\nsource = "{tiny_clip}"\nloop = true\nfocal = "900,910"\nprincipal = "48,36"\n'
            f'[cameras.b]\nsource = "{tiny_clip}"\nloop = true\n')
    with _daemon(tmp_path, tiny_clip, estimator=est, cameras=cams) as d:
        collect_ws(d.port, "a", 2, timeout=20)
        collect_ws(d.port, "b", 2, timeout=20)
    given = {(c.fx, c.fy, c.cx, c.cy) if c is not None else None for c in est.cameras}
    assert given == {(900.0, 910.0, 48.0, 36.0), None}  # camera a's own; b has none, so the estimator's default


def test_a_port_in_use_is_one_clear_error(tmp_path, tiny_clip):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = config_from(tmp_path, f'[server]\nport = {busy.getsockname()[1]}\n[cameras.a]\nsource = "{tiny_clip}"\n')
        with pytest.raises(RtmwEdgeError, match="cannot listen on 127.0.0.1:[0-9]+: Address already in use"):
            DaemonThread(cfg, estimator=StubEstimator()).start()


# --------------------------------------------------------------------------- lifecycle
def test_stop_finishes_the_frame_in_flight_then_closes_clients(tmp_path, tiny_clip):
    stub = StubEstimator(delay=0.6)
    thread = _daemon(tmp_path, tiny_clip, estimator=stub).start()
    port = thread.port
    received: list[int] = []
    result: dict = {}

    async def client(connected: threading.Event) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            connected.set()
            async for msg in ws:
                received.append(json.loads(msg.data)["frame"])
            result["code"] = ws.close_code

    connected = threading.Event()
    reader = threading.Thread(target=lambda: asyncio.run(client(connected)), daemon=True)
    reader.start()
    try:
        assert connected.wait(20)
        wait_for(lambda: len(stub.calls) >= 2 and stub.in_call.is_set(), 20, what="an inference in flight")
        in_flight = stub.calls[-1][0]
        start = time.monotonic()
        thread.stop()
        elapsed = time.monotonic() - start
        reader.join(5)
    finally:
        thread.stop()
    assert elapsed < 2.0
    assert in_flight in received, (in_flight, received)  # finished and delivered before the close
    assert result.get("code") == 1001


def test_tracking_is_per_camera(tmp_path):
    small = write_video(tmp_path / "small.avi", (96, 72), fps=25, gray_frames=10)
    large = write_video(tmp_path / "large.avi", (320, 240), fps=25, gray_frames=10)
    cams = (f'[cameras.small]\nsource = "{small}"\nloop = true\n'
            f'[cameras.large]\nsource = "{large}"\nloop = true\n')
    cfg = config_from(tmp_path, f"[server]\nport = 0\n[model]\ntrack = true\n{cams}")
    with DaemonThread(cfg, estimator=StubEstimator()) as d:
        frames = collect_ws(d.port, None, 12, timeout=30)
    ids = {(f["camera"], p["track_id"]) for f in frames for p in f["persons"]}
    # one person per camera, at different places: a tracker shared by the cameras would number them 0 and 1
    assert ids == {("small", 0), ("large", 0)}


def test_reconnect_backoff_doubles_up_to_the_cap_and_survives_any_error():
    attempts: list[float] = []
    errors = [ValueError("driver crashed"), RtmwEdgeError("cannot open stream"), OSError("gone")]

    def opener(spec, prefetch, loop, on_skip=None):
        attempts.append(time.monotonic())
        raise errors[len(attempts) % len(errors)]

    metrics_ = Metrics()
    cam = Camera(CameraConfig(name="x", source="rtsp://nowhere", reconnect_min_s=0.05, reconnect_max_s=0.2),
                 metrics_, lambda: None, opener=opener)
    cam.start()
    try:
        wait_for(lambda: len(attempts) >= 6, 10, what="six attempts")
    finally:
        cam.stop()
        assert cam.join(2)
    gaps = [b - a for a, b in zip(attempts, attempts[1:])][:5]
    for gap, expected in zip(gaps, (0.05, 0.1, 0.2, 0.2, 0.2)):
        assert gap >= 0.9 * expected - 0.005, gaps
    assert gaps[0] < 0.15 and gaps[2] > 0.15  # doubled, then capped
    assert cam.reconnects >= 5 and cam.state == "stopped"
    samples = {s.name: s.value for fam in metrics_.registry.collect() for s in fam.samples
               if s.labels.get("camera") == "x" and s.name == "rtmw_edge_reconnects_total"}
    assert samples["rtmw_edge_reconnects_total"] == cam.reconnects


# --------------------------------------------------------------------------- systemd, logs
def test_sd_notify_datagrams_and_watchdog_interval(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
        assert notifier.enabled and notifier.watchdog_s == 3.0
        assert notifier.send("READY=1", "STATUS=ok")
        assert server.recv(1024) == b"READY=1\nSTATUS=ok"
        notifier.close()
    abstract = f"@rtmw-edge-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + abstract[1:])
        server.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": abstract}).send("WATCHDOG=1")
        assert server.recv(1024) == b"WATCHDOG=1"
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert not Notifier({}).enabled and Notifier({}).send("READY=1") is False


def test_json_log_lines_carry_the_structured_fields():
    record = logging.LogRecord("rtmw_edge.serve", logging.WARNING, __file__, 1, "camera %s down", ("a",), None)
    record.event, record.camera = "camera_down", "a"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning" and entry["msg"] == "camera a down"
    assert entry["event"] == "camera_down" and entry["camera"] == "a" and entry["ts"].endswith("Z")
