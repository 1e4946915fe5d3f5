"""Daemon behaviours that show only with two or more of something, or with a value the other tests never vary
(issue 23 §3), each against outside truth — real camera sources, a real keep-alive HTTP client, raw sockets that
stop reading, the clock:

- the stall check looks at the *oldest* waiting frame across cameras (and a camera's waiting time starts at its
  first untaken frame): a starving camera is noticed while another keeps delivering;
- a request on a kept-alive connection makes it active: an MJPEG preview opened on a reused connection is not
  evicted when the connection cap is reached;
- the WebSocket and preview send timeouts are seconds: a client that stops reading is dropped as ``timeout``;
- ``/metrics`` renders at most every 0.5 s (a scrape never gets a rendering that started before it arrived);
- ``serve --check`` and configuration errors mask the credentials of ``triton_url`` as of camera URLs;
- preview viewers count toward ``max_clients`` (two viewers, then a WebSocket client);
- two cameras whose frame numbers coincide each preview their own picture.

`StubEstimator` stands in for the models (these are about the daemon); all traffic is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the daemon needs the 'serve' extra: pip install -e '.[serve]'")
pytest.importorskip("prometheus_client", reason="the daemon needs the 'serve' extra")

import aiohttp  # noqa: E402
from test_serve_support import IMAGES, StubEstimator, config_from, free_port, wait_for, write_video  # noqa: E402

from rtmw_edge.cli import main  # noqa: E402
from rtmw_edge.results import FrameResult  # noqa: E402
from rtmw_edge.serve.cameras import Camera  # noqa: E402
from rtmw_edge.serve.config import ConfigError, ServerConfig  # noqa: E402
from rtmw_edge.serve.daemon import DaemonThread  # noqa: E402
from rtmw_edge.serve.hub import Hub  # noqa: E402
from rtmw_edge.serve.metrics import Metrics  # noqa: E402
from rtmw_edge.serve.worker import InferenceWorker, Processed  # noqa: E402

PASSWORD = "S3cret-triton-pw"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("pinned-daemon") / "tiny.avi", (96, 72), fps=25, gray_frames=25)


# ------------------------------------------------------------------------------------------ the stall check
def test_a_starving_camera_is_a_stall_while_another_keeps_delivering(tmp_path, clip):
    """Two real cameras (video files at 25 FPS, as the daemon runs them). Inference takes camera a's frames as they
    come and never camera b's: b's first waiting frame ages (its later frames replace it, the wait does not
    restart), a's frames are always fresh. The liveness check must see b."""
    cfg = config_from(tmp_path, f'[cameras.a]\nsource = "{clip}"\nloop = true\n'
                                f'[cameras.b]\nsource = "{clip}"\nloop = true\n')
    stats = Metrics()
    a, b = cams = [Camera(c, stats, lambda: None) for c in cfg.cameras]
    worker = InferenceWorker(StubEstimator(), cams, stats, lambda processed: None)
    stall_s = 1.0
    for cam in cams:
        cam.start()
    try:
        b_since = wait_for(lambda: b.pending_since, 30, what="a frame of camera b")
        a.take()
        while True:  # camera a is served frame by frame until b has waited well past the stall time
            a_since = wait_for(lambda: a.pending_since, 10, what="a frame of camera a")
            if a_since - b_since > stall_s + 0.5:
                break
            a.take()
        assert b.pending_since == b_since, "a newer frame of b restarted its wait"
        assert stats.dropped.labels("b", "stale")._value.get() > 0  # b's frames were replaced meanwhile
        now = a_since + 0.1  # a's frame has waited 0.1 s, b's more than the stall time
        reason = worker.stalled(stall_s, now=now)
        assert reason is not None and f"{now - b_since:.1f} s" in reason, reason
        a.take()
        b.take()
        assert worker.stalled(stall_s, now=now) is None  # taken: nothing waits, nothing in flight
    finally:
        for cam in cams:
            cam.stop()
        for cam in cams:
            cam.join(5)


# ------------------------------------------------------------------------------------------ keep-alive
def _read_part(stream) -> bytes:
    """One part of a multipart/x-mixed-replace stream (its JPEG bytes)."""
    length = None
    while True:
        line = stream.readline()
        if not line:
            raise ConnectionError("the stream ended")
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line == b"\r\n" and length is not None:
            data = stream.read(length)
            stream.readline()
            return data


def _raw_preview(port: int) -> socket.socket:
    """A preview viewer on a connection of its own; returns once its first part arrived (its request is in
    progress: an active connection)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /preview/a.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    seen = b""
    while b"Content-Type: image/jpeg" not in seen:
        chunk = s.recv(4096)
        assert chunk, "the preview connection was closed"
        seen += chunk
    return s


def test_a_preview_on_a_kept_alive_connection_is_never_evicted_at_the_cap(tmp_path, clip):
    """A browser-like client: GET /healthz, then the MJPEG preview on the same (kept-alive) connection. 15 more
    viewers fill the cap of 16 connections, every one with a request in progress; a 17th connection must be
    refused (nothing idle to close), not served by evicting the preview mid-stream."""
    cfg = config_from(tmp_path, f"[server]\nport = 0\nmax_connections = 16\npreview_fps = 5\n"
                                f'[cameras.a]\nsource = "{clip}"\nloop = true\n')
    with DaemonThread(cfg, estimator=StubEstimator()) as d:
        wait_for(lambda: d.daemon.hub.latest.get("a"), 20, what="a first result")
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.status == 200 and json.loads(first.read())["status"] == "ok"
        sock = conn.sock
        conn.request("GET", "/preview/a.mjpg")
        preview = conn.getresponse()
        assert conn.sock is sock, "the preview went out on the kept-alive connection"
        assert preview.status == 200 and preview.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        assert cv2.imdecode(np.frombuffer(_read_part(preview), np.uint8), cv2.IMREAD_COLOR) is not None
        viewers = [_raw_preview(d.port) for _ in range(15)]  # 16 connections, all active
        try:
            late = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            late.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = late.recv(4096)
            except ConnectionResetError:
                answer = b""
            late.close()
            for _ in range(2):  # the preview streams on
                assert cv2.imdecode(np.frombuffer(_read_part(preview), np.uint8), cv2.IMREAD_COLOR) is not None
        finally:
            for s in viewers:
                s.close()
            conn.close()
        assert answer == b"", "the 17th connection was served: something was closed to make room"
        dropped = d.daemon.metrics.clients_dropped
        assert dropped.labels("connection", "evicted")._value.get() == 0
        assert dropped.labels("connection", "over_capacity")._value.get() >= 1


# ------------------------------------------------------------------------------------------ send timeouts
def _noise_video(path, size=(480, 360), frames=10, fps=25.0):
    """Frames of random noise: JPEGs of ~100 KB, so a client that stops reading fills its socket in a second."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), np.uint8))
    writer.release()
    return path


def _stalled(port: int, head: str) -> socket.socket:
    """A client that sends its request and then never reads (a small receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(head.encode())
    return s


def test_clients_that_stop_reading_are_dropped_after_send_timeout_seconds(tmp_path):
    """send_timeout_s = 0.5: a WebSocket client and a preview viewer that stop reading are dropped as `timeout`
    within seconds (each sends about 3 MB/s: their socket buffers fill at once, then one send blocks for
    0.5 s). The WebSocket queue holds 1000 messages, so it is the timeout, not the queue, that drops it."""
    video = _noise_video(tmp_path / "noise.avi")
    cfg = config_from(tmp_path, "[server]\nport = 0\nsend_timeout_s = 0.5\nclient_queue = 1000\npreview_fps = 60\n"
                                f'[cameras.a]\nsource = "{video}"\nloop = true\n')
    with DaemonThread(cfg, estimator=StubEstimator(persons=40)) as d:  # messages of ~120 KB
        wait_for(lambda: d.daemon.hub.latest.get("a"), 20, what="a first result")
        ws = _stalled(d.port, "GET /ws?camera=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        viewer = _stalled(d.port, "GET /preview/a.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            dropped = d.daemon.metrics.clients_dropped
            wait_for(lambda: dropped.labels("websocket", "timeout")._value.get() >= 1
                     and dropped.labels("preview", "timeout")._value.get() >= 1, 30,
                     what="both stalled clients dropped for their send timeout")
            assert dropped.labels("websocket", "slow")._value.get() == 0
        finally:
            ws.close()
            viewer.close()


# ------------------------------------------------------------------------------------------ /metrics
def test_metrics_render_at_most_every_half_second_and_never_stale(tmp_path, clip):
    """Two keep-alive clients scrape back to back. Each rendering starts after the scrape that waits for it arrived,
    and renderings start at least 0.5 s apart (METRICS_MIN_INTERVAL_S), however fast the scrapes come."""
    cfg = config_from(tmp_path, f'[server]\nport = 0\n[cameras.a]\nsource = "{clip}"\nloop = true\n')
    with DaemonThread(cfg, estimator=StubEstimator()) as d:
        daemon = d.daemon
        render = daemon.metrics.exposition
        starts: list[float] = []
        daemon.metrics.exposition = lambda: (starts.append(time.monotonic()), render())[1]
        counter = daemon.metrics.unauthorized

        async def scrape_until_five_renderings() -> list[tuple[float, float]]:
            seen = []  # (counter value set before sending, counter value in the answer)
            async with aiohttp.ClientSession() as session:
                async def client() -> None:
                    while len(starts) < 5:
                        counter.inc()
                        expected = counter._value.get()
                        async with session.get(f"http://127.0.0.1:{d.port}/metrics") as resp:
                            body = await resp.text()
                        line = next(ln for ln in body.splitlines() if ln.startswith("rtmw_edge_unauthorized_total "))
                        seen.append((expected, float(line.split()[1])))
                await asyncio.wait_for(asyncio.gather(client(), client()), 30)
            return seen

        seen = asyncio.run(scrape_until_five_renderings())
    gaps = np.diff(starts)
    # each rendering is scheduled 0.5 s after the previous one was; a start is seen when a pool thread runs it, a
    # little later on a busy machine: the gaps telescope, so their mean stays near 0.5 s even if one is short
    assert len(starts) >= 5 and gaps.mean() >= 0.4 and gaps.min() >= 0.2, gaps
    assert len(seen) >= len(starts)
    for expected, shown in seen:
        assert shown >= expected, "a scrape got a rendering older than itself"


# ------------------------------------------------------------------------------------------ secrets
def test_check_and_errors_mask_the_triton_url_credentials(tmp_path, capsys):
    camera = '[cameras.a]\nsource = "rtsp://viewer:cam-pw-123@10.0.0.9/s"\n'
    good = tmp_path / "good.toml"
    good.write_text(f'[model]\nbackend = "triton"\ntriton_url = "http://admin:{PASSWORD}@gpu-box:8000"\n{camera}')
    assert main(["serve", "--config", str(good), "--check"]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert PASSWORD not in out and "cam-pw-123" not in out
    assert shown["model"]["triton_url"] == "http://admin:***@gpu-box:8000"
    assert shown["cameras"]["a"]["source"] == "rtsp://viewer:***@10.0.0.9/s"
    # a triton_url that does not parse is named in the error, its password masked
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[model]\nbackend = "triton"\ntriton_url = "grpc://admin:{PASSWORD}@gpu-box"\n{camera}')
    assert main(["serve", "--config", str(bad), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "model.triton_url" in err and "admin:***@gpu-box" in err
    assert PASSWORD not in err
    with pytest.raises(ConfigError) as info:
        config_from(tmp_path, camera, env={"RTMW_EDGE_MODEL_BACKEND": "triton",
                                           "RTMW_EDGE_MODEL_TRITON_URL": f"http://u:{PASSWORD}@h:port"})
    assert PASSWORD not in str(info.value)
    # `run --triton-url` with the same URL: one line, masked
    assert main(["run", str(tmp_path), "--triton-url", f"grpc://admin:{PASSWORD}@gpu-box"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and PASSWORD not in err and "admin:***@" in err
    # one that parses but reaches no server: the gRPC library quotes the address in its reason; masked too
    photo = tmp_path / "x.png"
    cv2.imwrite(str(photo), np.zeros((8, 8, 3), np.uint8))
    assert main(["run", str(photo), "--triton-url", f"admin:{PASSWORD}@127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:") and "not answering" in err
    assert "admin:***@127.0.0.1" in err
    assert PASSWORD not in err



# ------------------------------------------------------------------------------------------ two or more viewers
def test_preview_viewers_count_toward_max_clients(tmp_path, clip):
    """max_clients = 2 and two preview viewers: a WebSocket client and a third viewer are refused (503). (The other
    test fills the limit with WebSocket clients only.)"""
    cfg = config_from(tmp_path, f'[server]\nport = 0\nmax_clients = 2\n[cameras.a]\nsource = "{clip}"\nloop = true\n')
    with DaemonThread(cfg, estimator=StubEstimator()) as d:
        wait_for(lambda: d.daemon.hub.latest.get("a"), 20, what="a first result")
        viewers = [_raw_preview(d.port) for _ in range(2)]
        try:
            async def ws_status() -> int:
                async with aiohttp.ClientSession() as session:
                    try:
                        ws = await session.ws_connect(f"http://127.0.0.1:{d.port}/ws?camera=a")
                    except aiohttp.WSServerHandshakeError as exc:
                        return exc.status
                    await ws.close()
                    return 101

            assert asyncio.run(ws_status()) == 503
            third = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
            third.request("GET", "/preview/a.mjpg")
            refused = third.getresponse()
            assert refused.status == 503 and "max_clients" in json.loads(refused.read())["error"]
            third.close()
        finally:
            for s in viewers:
                s.close()


def test_each_camera_previews_its_own_frames_when_their_numbers_coincide():
    """Two cameras number their frames independently, so frame 7 of camera a and frame 7 of camera b meet in the
    hub. Each preview JPEG is its own camera's picture (JPEGs are shared per camera and frame, never per frame
    number alone)."""
    photos = sorted(IMAGES.glob("*.jpg"))[:2]
    images = {name: cv2.resize(cv2.imread(str(p)), (160, 120)) for name, p in zip("ab", photos)}

    async def scenario() -> dict[str, np.ndarray]:
        hub = Hub(["a", "b"], Metrics(), ServerConfig(), 0.3)
        try:
            out = {}
            for name, image in images.items():
                result = FrameResult(frame=7, timestamp=0.0, width=160, height=120)
                p = Processed(name, 7, image, result, json.dumps({"camera": name}), time.monotonic())
                hub.publish(p)
                out[name] = cv2.imdecode(np.frombuffer(await hub.preview_jpeg(p), np.uint8), cv2.IMREAD_COLOR)
            return out
        finally:
            hub.offload.shutdown()

    shown = asyncio.run(scenario())
    for name, other in (("a", "b"), ("b", "a")):
        own = np.abs(shown[name].astype(int) - images[name]).mean()
        wrong = np.abs(shown[name].astype(int) - images[other]).mean()
        assert own < 10 and wrong > 40, (name, own, wrong)  # JPEG quality 80: a few gray levels
