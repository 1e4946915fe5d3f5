"""The pose daemon end to end with the real RTMDet person detector and a random-weight RTMW-m: a real server
on 127.0.0.1, fed by looping video files made from the shared photos, a local MJPEG network camera and an
"RTSP camera" that drops every connection; WebSocket, /latest, /preview, /metrics, /healthz, /readyz; MQTT
through a real mosquitto broker; `rtmw-edge serve` as a process stopped by SIGTERM.

The estimator is built once per module and shared by the daemons of the tests (as the cameras of one
daemon share it). `max_persons = 2` and one ONNX Runtime thread keep a frame around 0.2 s on a loaded
2-core machine. Everything talks to 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the daemon needs the 'serve' extra: pip install -e '.[serve]'")
pytest.importorskip("prometheus_client", reason="the daemon needs the 'serve' extra")

import aiohttp  # noqa: E402
from test_serve_support import (  # noqa: E402
    AcceptAndClose,
    FakeNetworkCamera,
    collect_ws,
    config_from,
    http_get,
    http_json,
    metric,
    metrics,
    wait_for,
    write_video,
)

from rtmw_edge.results import validate_frame_dict  # noqa: E402
from rtmw_edge.serve.config import ModelConfig  # noqa: E402
from rtmw_edge.serve.daemon import DaemonThread, build_estimator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DET = "rtmdet-nano_person_320_rawhead.onnx"


@pytest.fixture(scope="module")
def models(tmp_path_factory, shared) -> dict[str, Path]:
    det = shared / "models" / DET
    if not det.is_file() or not list((shared / "images").glob("*.jpg")):
        pytest.skip("shared detector or photos not available")
    pytest.importorskip("torch", reason="exporting the random-weight RTMW needs torch (the 'export' extra)")
    from rtmw_edge.export import export_onnx

    tmp = tmp_path_factory.mktemp("serve-models")
    pose = export_onnx("rtmw-m-256x192", tmp / "pose.onnx", random_init=True, progress=False)
    return {"det": det, "pose": pose}


@pytest.fixture(scope="module")
def estimator(models):
    return build_estimator(ModelConfig(det=str(models["det"]), pose=str(models["pose"]), threads=1,
                                       max_persons=2))[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """10 frames at 10 FPS (1 s per pass), 320×240, each shared photo twice."""
    return write_video(tmp_path_factory.mktemp("serve-clip") / "clip.avi")


def _config(tmp_path: Path, cameras: str, extra: str = ""):
    return config_from(tmp_path, "[server]\nport = 0\n" + extra + "\n" + cameras)


def _camera(name: str, source: str | Path, **keys) -> str:
    lines = [f"[cameras.{name}]", f'source = "{source}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def _state(port: int, camera: str) -> dict:
    return http_json(port, "/readyz")[1]["cameras"][camera]


def _reconnects(port: int, camera: str) -> float:
    return metric(metrics(port), "rtmw_edge_reconnects_total", camera=camera)


def test_websocket_frames_follow_the_run_schema_and_metrics_move(tmp_path, estimator, clip):
    cfg = _config(tmp_path, _camera("front", clip, loop=True))
    with DaemonThread(cfg, estimator=estimator) as d:
        port = d.port
        assert http_json(port, "/healthz") == (200, {"status": "ok", "uptime_s": pytest.approx(0, abs=600)})
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 60, what="/readyz 200")
        before = metrics(port)

        async def session() -> tuple[list[dict], dict]:
            from test_serve_support import ws_frames

            task = asyncio.ensure_future(ws_frames(port, "front", 4, timeout=60))
            while True:  # the client gauge while the client is connected
                during = await asyncio.to_thread(metrics, port)
                if metric(during, "rtmw_edge_clients", kind="websocket") >= 1 or task.done():
                    break
                await asyncio.sleep(0.05)
            return await task, during

        frames, during = asyncio.run(session())
        after = metrics(port)
        status, latest = http_json(port, "/latest/front")
        preview = _first_preview_jpeg(port, "front")

    for f in frames:
        validate_frame_dict(f, num_keypoints=133)
        assert f["camera"] == "front" and (f["width"], f["height"]) == (320, 240)
        assert abs(f["timestamp"] - time.time()) < 120  # wall-clock capture time
    assert [f["frame"] for f in frames] == sorted({f["frame"] for f in frames})
    assert any(f["persons"] for f in frames), "the real detector finds people in the shared photos"
    assert all(len(f["persons"]) <= 2 for f in frames)  # max_persons
    assert status == 200
    validate_frame_dict(latest, num_keypoints=133)
    assert latest["source"] == str(clip) and all(f["source"] == str(clip) for f in frames)  # not null
    assert preview.shape == (240, 320, 3)

    assert metric(during, "rtmw_edge_clients", kind="websocket") == 1
    processed = ("rtmw_edge_frames_processed_total", {"camera": "front"})
    # counted before publishing; one frame counted in `before` may still reach the client just after it connects
    assert metric(after, processed[0], **processed[1]) >= metric(before, processed[0], **processed[1]) + 3
    assert metric(after, "rtmw_edge_frames_captured_total", camera="front") > 0
    assert metric(after, "rtmw_edge_persons_total", camera="front") > 0
    assert metric(after, "rtmw_edge_messages_sent_total", kind="websocket") >= 4
    for stage in ("queue", "detect", "pose", "serialize", "total"):
        assert metric(after, "rtmw_edge_stage_seconds_count", camera="front", stage=stage) > 0, stage
    assert metric(after, "rtmw_edge_camera_up", camera="front") == 1
    assert metric(after, "rtmw_edge_ready") == 1
    assert metric(after, "rtmw_edge_fps", camera="front") > 0


def _first_preview_jpeg(port: int, camera: str) -> np.ndarray:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/preview/{camera}.mjpg", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        head = b""
        while b"\r\n\r\n" not in head:
            head += resp.read(1)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.startswith(b"Content-Length")))
        data = resp.read(length)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_readyz_is_503_until_a_camera_delivers(tmp_path, estimator):
    late = tmp_path / "late.avi"
    cfg = _config(tmp_path, _camera("late", late, loop=True, reconnect_min_s=0.1, reconnect_max_s=0.3))
    with DaemonThread(cfg, estimator=estimator) as d:
        port = d.port
        assert http_get(port, "/healthz")[0] == 200
        status, body = http_json(port, "/readyz")
        assert status == 503 and body["ready"] is False and body["engines_loaded"] is True
        assert body["cameras"]["late"]["state"] in ("connecting", "down")
        assert http_get(port, "/latest/late")[0] == 503
        wait_for(lambda: _reconnects(port, "late") >= 2, 20, what="reconnect attempts")
        assert http_get(port, "/readyz")[0] == 503
        write_video(late)
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 60, what="/readyz 200 once the camera delivers")
        body = http_json(port, "/readyz")[1]
        assert body["cameras"]["late"]["state"] == "up" and body["cameras"]["late"]["delivering"]
        assert http_get(port, "/latest/late")[0] == 200


def test_lost_sources_reconnect_while_the_other_camera_keeps_serving(tmp_path, estimator, clip):
    """A video file that disappears (noticed at the end of its pass), an MJPEG network camera that goes
    down, and an RTSP endpoint that drops every connection: each is retried with backoff and counted; the
    healthy camera keeps delivering meanwhile; the file and the network camera recover when they return."""
    moving = shutil.copy(clip, tmp_path / "moving.avi")
    network = FakeNetworkCamera()
    network.start()
    rtsp = AcceptAndClose()
    fast = {"loop": True, "reconnect_min_s": 0.1, "reconnect_max_s": 0.4}
    cfg = _config(tmp_path, _camera("front", clip, loop=True) + _camera("file", moving, **fast)
                  + _camera("net", network.url, reconnect_min_s=0.1, reconnect_max_s=0.4)
                  + _camera("rtsp", f"rtsp://127.0.0.1:{rtsp.port}/stream", reconnect_min_s=0.1, reconnect_max_s=0.4),
                  extra="ready_when = \"any\"\n")
    try:
        with DaemonThread(cfg, estimator=estimator) as d:
            port = d.port
            for name in ("front", "file", "net"):
                wait_for(lambda n=name: _state(port, n)["delivering"], 60, what=f"camera {name} delivering")
            wait_for(lambda: _reconnects(port, "rtsp") >= 2, 20, what="rtsp reconnect attempts")
            assert _state(port, "rtsp")["state"] == "down" and rtsp.accepted >= 2
            assert http_get(port, "/readyz")[0] == 200  # ready_when = "any"

            before = {n: _reconnects(port, n) for n in ("file", "net")}
            os.unlink(moving)
            network.stop()
            for name in ("file", "net"):
                wait_for(lambda n=name: _state(port, n)["state"] == "down", 30, what=f"camera {name} down")
                wait_for(lambda n=name: _reconnects(port, n) >= before[n] + 2, 20, what=f"{name} retries")
            assert "error" in _state(port, "file") and _state(port, "front")["state"] == "up"
            served = collect_ws(port, "front", 3, timeout=60)  # the healthy camera keeps being served
            assert [f["camera"] for f in served] == ["front"] * 3

            write_video(moving)
            network.start()
            for name in ("file", "net"):
                wait_for(lambda n=name: _state(port, n)["state"] == "up", 30, what=f"camera {name} back up")
            back = collect_ws(port, "file", 2, timeout=60)
            assert all(f["camera"] == "file" for f in back)
            assert collect_ws(port, "net", 1, timeout=60)[0]["camera"] == "net"
            samples = metrics(port)
            assert metric(samples, "rtmw_edge_camera_up", camera="file") == 1
            assert metric(samples, "rtmw_edge_camera_up", camera="rtsp") == 0
            assert http_get(port, "/healthz")[0] == 200
    finally:
        network.stop()
        rtsp.close()


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                              if os.access(p, os.X_OK)), None)


@pytest.fixture
def broker(tmp_path):
    binary = _mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 10, what="mosquitto listening")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mqtt_messages_arrive_on_the_camera_topic_with_the_schema(tmp_path, estimator, clip, broker):
    import paho.mqtt.client as mqtt

    received: list[tuple[str, bytes, bool]] = []
    got = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rtmw-edge-test-subscriber")

    def on_connect(client, userdata, flags, reason_code, properties=None):
        client.subscribe("rtmw-edge-test/#", qos=1)

    def on_message(client, userdata, msg):
        received.append((msg.topic, msg.payload, msg.retain))
        if sum(t.endswith("/frames") for t, _, _ in received) >= 3:
            got.set()

    sub.on_connect, sub.on_message = on_connect, on_message
    sub.connect("127.0.0.1", broker)
    sub.loop_start()
    try:
        cfg = _config(tmp_path, _camera("front", clip, loop=True),
                      extra=f'[mqtt]\nenabled = true\nport = {broker}\nqos = 1\n'
                            'topic = "rtmw-edge-test/{camera}/frames"\nstatus_topic = "rtmw-edge-test/status"\n')
        with DaemonThread(cfg, estimator=estimator) as d:
            assert got.wait(60), received
            samples = wait_for(lambda: (lambda m: m if metric(m, "rtmw_edge_mqtt_messages_total", camera="front",
                                                              result="published") >= 3 else None)(metrics(d.port)),
                               10, what="the published counter")
        wait_for(lambda: (("rtmw-edge-test/status", b"offline") in [(t, p) for t, p, _ in received]), 10,
                 what="offline status after the stop")
    finally:
        sub.loop_stop()
        sub.disconnect()
    frames = [(t, json.loads(p)) for t, p, _ in received if t.endswith("/frames")]
    assert {t for t, _ in frames} == {"rtmw-edge-test/front/frames"}
    for _, f in frames:
        validate_frame_dict(f, num_keypoints=133)
        assert f["camera"] == "front"
    assert [f["frame"] for _, f in frames] == sorted(f["frame"] for _, f in frames)
    statuses = [p for t, p, _ in received if t == "rtmw-edge-test/status"]
    assert statuses[0] == b"online" and statuses[-1] == b"offline"
    assert metric(samples, "rtmw_edge_mqtt_messages_total", camera="front", result="published") >= 3
    assert metric(samples, "rtmw_edge_mqtt_connected") == 1


def test_sigterm_stops_the_serve_process_with_exit_0_within_2_s(tmp_path, models, clip):
    """`rtmw-edge serve` as systemd runs it: READY=1 and WATCHDOG=1 on $NOTIFY_SOCKET, JSON logs; SIGTERM
    with a WebSocket client attached and inference running → close code 1001, STOPPING=1, exit 0 < 2 s."""
    conf = tmp_path / "daemon.toml"
    conf.write_text(f'[server]\nport = 8\n[model]\ndet = "{models["det"]}"\npose = "{models["pose"]}"\n'
                    f"threads = 1\nmax_persons = 2\n" + _camera("front", clip, loop=True))
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(0.2)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000",
           "RTMW_EDGE_SERVER_PORT": "0"}  # the environment overrides the file's port
    proc = subprocess.Popen([sys.executable, "-m", "rtmw_edge.cli", "serve", "--config", str(conf)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    messages: list[str] = []

    def note() -> None:
        try:
            messages.extend(notify.recv(4096).decode().splitlines())
        except OSError:
            pass

    try:
        def port() -> int | None:
            note()
            assert proc.poll() is None, "".join(lines)
            for line in list(lines):
                entry = json.loads(line)
                if entry.get("event") == "listening":
                    return entry["port"]
            return None

        port = wait_for(port, 60, what="the listening log line")
        wait_for(lambda: (note(), "READY=1" in messages)[1], 60, what="READY=1")
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 60, what="/readyz 200")
        wait_for(lambda: (note(), "WATCHDOG=1" in messages)[1], 10, what="WATCHDOG=1")

        closed: dict = {}

        async def client(connected: threading.Event) -> None:
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    f"http://127.0.0.1:{port}/ws?camera=front") as ws:
                connected.set()
                async for _ in ws:
                    pass
                closed["code"] = ws.close_code

        connected = threading.Event()
        ws_thread = threading.Thread(target=lambda: asyncio.run(client(connected)), daemon=True)
        ws_thread.start()
        assert connected.wait(30)
        time.sleep(0.3)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        elapsed = time.monotonic() - start
        ws_thread.join(5)
        reader.join(5)
        for _ in range(10):
            note()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        notify.close()
    stopped = [json.loads(line)["msg"] for line in lines if '"stopped"' in line]
    print(f"\nSIGTERM → exit {code} in {elapsed:.2f} s ({stopped})")
    assert code == 0, "".join(lines[-5:])
    assert elapsed < 2.0
    assert closed.get("code") == 1001  # going away
    assert "STOPPING=1" in messages
    events = [json.loads(line).get("event") for line in lines if line.strip()]  # every line is JSON
    assert "signal" in events and "stopped" in events
