"""Helpers shared by the pose-daemon tests (test_serve*.py): videos, a stub estimator, HTTP/WebSocket/metrics
clients, fake network cameras. No tests here. Everything talks to 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from rtmw_edge.results import FrameResult, Person
from rtmw_edge.serve.config import load_config

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_video(path: Path, size: tuple[int, int] = (320, 240), fps: float = 10.0, frames_per_image: int = 2,
                gray_frames: int = 0) -> Path:
    """An MJPG .avi: the shared photos resized to SIZE (or GRAY_FRAMES flat frames), written under a
    temporary name and renamed, so a reader never sees half a file."""
    tmp = path.with_name(path.stem + ".writing.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    if gray_frames:
        for i in range(gray_frames):
            writer.write(np.full((size[1], size[0], 3), 20 + (i * 37) % 200, np.uint8))
    else:
        photos = sorted(IMAGES.glob("*.jpg"))
        assert photos, f"no photos in {IMAGES}"
        for photo in photos:
            image = cv2.resize(cv2.imread(str(photo)), size, interpolation=cv2.INTER_AREA)
            for _ in range(frames_per_image):
                writer.write(image)
    writer.release()
    os.replace(tmp, path)
    return path


class StubEstimator:
    """Stands in for `PoseEstimator` where the test is about the daemon, not the pose: returns PERSONS people
    of 133 keypoints (the real message size) after sleeping DELAY seconds (the GIL is released, as during
    ONNX Runtime inference). `calls` records (frame, monotonic start) of each call."""

    def __init__(self, delay: float = 0.0, persons: int = 1, keypoints: int = 133) -> None:
        self.delay, self.persons, self.keypoints = delay, persons, keypoints
        self.calls: list[tuple[int, float]] = []
        self.in_call = threading.Event()

    def __call__(self, image: np.ndarray, frame: int = 0, timestamp: float = 0.0) -> FrameResult:
        self.calls.append((frame, time.monotonic()))
        self.in_call.set()
        try:
            if self.delay:
                time.sleep(self.delay)
            h, w = image.shape[:2]
            k = self.keypoints
            kpts = np.stack([np.linspace(0, w - 1, k), np.linspace(0, h - 1, k)], axis=1).astype(np.float32)
            persons = [Person(bbox=np.array([1, 2, w - 1, h - 2], np.float32), score=0.9, keypoints=kpts + i,
                              keypoint_scores=np.full(k, 0.8, np.float32)) for i in range(self.persons)]
            return FrameResult(frame=frame, timestamp=timestamp, width=w, height=h, persons=persons)
        finally:
            self.in_call.clear()


def config_from(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    path = tmp_path / f"daemon-{time.monotonic_ns()}.toml"
    path.write_text(text)
    return load_config(path, env=env or {})


def http_get(port: int, path: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET to 127.0.0.1:PORT, 4xx/5xx included."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def http_json(port: int, path: str, token: str | None = None) -> tuple[int, dict]:
    status, _, body = http_get(port, path, token)
    return status, json.loads(body)


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def metrics(port: int, token: str | None = None) -> dict[tuple[str, tuple], float]:
    """/metrics parsed with prometheus_client's parser: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, body = http_get(port, "/metrics", token)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def ws_frames(port: int, camera: str | None, count: int, timeout: float = 60.0,
                    token: str | None = None) -> list[dict]:
    """The next COUNT messages of /ws (?camera=CAMERA), parsed."""
    import aiohttp

    query = f"?camera={camera}" if camera else ""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out = []
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"http://127.0.0.1:{port}/ws{query}", headers=headers) as ws:
        async def read() -> None:
            while len(out) < count:
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                out.append(json.loads(msg.data))

        await asyncio.wait_for(read(), timeout)
    return out


def collect_ws(port: int, camera: str | None, count: int, timeout: float = 60.0, token: str | None = None):
    return asyncio.run(ws_frames(port, camera, count, timeout, token))


class FakeNetworkCamera:
    """A local HTTP MJPEG camera (multipart/x-mixed-replace, as IP cameras serve): `stop()` drops every
    connection and refuses new ones until `start()` again on the same port. With `corrupt_every` = N, every
    Nth part carries bytes that are no JPEG (a camera's damaged frame); `sent`/`corrupted` count the parts."""

    def __init__(self, size: tuple[int, int] = (160, 120), fps: float = 10.0, corrupt_every: int = 0) -> None:
        photo = sorted(IMAGES.glob("*.jpg"))[0]
        image = cv2.resize(cv2.imread(str(photo)), size)
        self.jpeg = cv2.imencode(".jpg", image)[1].tobytes()
        self.period = 1.0 / fps
        self.corrupt_every = corrupt_every
        self.sent = self.corrupted = 0
        self.port = free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._running = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(8)
        self._server = server
        self._running.set()
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while self._running.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            end = time.monotonic() + 120  # bounded: a test never needs more
            while self._running.is_set() and time.monotonic() < end:
                self.sent += 1
                body = self.jpeg
                if self.corrupt_every and self.sent % self.corrupt_every == 0:
                    body = b"\x00not a jpeg\x00" * 40
                    self.corrupted += 1
                conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body)
                             + body + b"\r\n")
                time.sleep(self.period)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._running.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._conns.clear()


class AcceptAndClose:
    """A TCP endpoint that accepts and immediately closes: an RTSP camera that drops every connection."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self.port = self._server.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._server.close()
