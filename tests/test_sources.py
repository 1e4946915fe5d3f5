"""rtmw_edge.sources: SOURCE string → frames. All offline (a local http.server for URLs) and fast."""

from __future__ import annotations

import functools
import http.server
import logging
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED

from rtmw_edge.errors import RtmwEdgeError
from rtmw_edge.sources import Frame, decode_image, open_source, read_image

IMAGES = SHARED / "images"
PHOTO = IMAGES / "000000000785.jpg"
FPS = 12.5
N_FRAMES = 10

needs_photo = pytest.mark.skipif(not PHOTO.is_file(), reason="shared test photos not available")


def _level(i: int) -> int:
    return 10 + 20 * i  # the flat gray level of video frame i (MJPEG keeps it within a few units)


def _index_of(image: np.ndarray) -> int:
    return round((float(image.mean()) - 10) / 20)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 48))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        writer.write(np.full((48, 64, 3), _level(i), np.uint8))
    writer.release()
    return path


def _wait_threads(baseline: int, timeout: float = 1.0) -> int:
    deadline = time.monotonic() + timeout
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()


def _reader_alive() -> bool:
    return any(t.name.startswith("rtmw-edge-") for t in threading.enumerate())


def _one_line(exc: pytest.ExceptionInfo[RtmwEdgeError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- still images
@needs_photo
def test_single_image():
    with open_source(str(PHOTO)) as src:
        assert src.kind == "image" and src.frame_count == 1 and src.fps is None
        frames = list(src)
    assert len(frames) == 1
    frame = frames[0]
    assert isinstance(frame, Frame)
    assert (frame.index, frame.timestamp, frame.name) == (0, 0.0, PHOTO.name)
    expected = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    assert frame.image.dtype == np.uint8 and frame.image.shape == expected.shape
    np.testing.assert_array_equal(frame.image, expected)
    assert (src.height, src.width) == expected.shape[:2]


def test_folder_natural_order_names_and_ignored_files(tmp_path: Path):
    for name, level in [("img10.jpg", 30), ("img2.JPG", 20), ("img1.png", 10), ("b.webp", 40)]:
        cv2.imwrite(str(tmp_path / name.lower()), np.full((8, 8, 3), level, np.uint8))
        (tmp_path / name.lower()).rename(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._img1.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork: ignored
    (tmp_path / "dir.jpg").mkdir()
    src = open_source(tmp_path)
    assert src.kind == "folder" and src.frame_count == 4
    frames = list(src)
    assert [f.name for f in frames] == ["b.webp", "img1.png", "img2.JPG", "img10.jpg"]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert all(f.timestamp == 0.0 and f.image.shape == (8, 8, 3) for f in frames)
    assert list(src)[2].name == "img2.JPG"  # still sources can be iterated again


@pytest.mark.parametrize("case", ["gray8", "gray16", "bgr16", "bgra8", "bgra16"])
def test_png_conversions(tmp_path: Path, case: str):
    rng = np.random.default_rng(0)
    if case == "gray8":
        stored = rng.integers(0, 256, (12, 10), dtype=np.uint8)
        expected = np.repeat(stored[:, :, None], 3, axis=2)
    elif case == "gray16":
        stored = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
        expected = np.repeat((stored >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    elif case == "bgr16":
        stored = rng.integers(0, 65536, (12, 10, 3), dtype=np.uint16)
        expected = (stored >> 8).astype(np.uint8)
    elif case == "bgra8":
        stored = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
        stored[0, 0, 3] = 0  # fully transparent pixel: its stored colour is kept (no compositing)
        expected = stored[:, :, :3]
    else:
        stored = rng.integers(0, 65536, (12, 10, 4), dtype=np.uint16)
        expected = (stored[:, :, :3] >> 8).astype(np.uint8)
    path = tmp_path / f"{case}.png"
    assert cv2.imwrite(str(path), stored)
    (frame,) = list(open_source(str(path)))
    assert frame.image.dtype == np.uint8 and frame.image.shape == (12, 10, 3)
    assert frame.image.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(frame.image, expected)


def test_exif_orientation_is_applied():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :10] = 255  # white band on the left
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack("<I", 0)  # rotate 90° CW
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    data = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:]
    out = decode_image(data, "phone.jpg")
    assert out.shape == (40, 20, 3)  # upright
    assert out[:8].mean() > 200 and out[12:].mean() < 50  # the band is now at the top


@needs_photo
@pytest.mark.parametrize("keep", [2048, "half"])
def test_truncated_jpeg_names_the_file(tmp_path: Path, keep):
    data = PHOTO.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2 if keep == "half" else keep])
    with pytest.raises(RtmwEdgeError) as exc:
        open_source(str(path))
    assert str(path) in _one_line(exc) and "truncated" in str(exc.value)


def test_non_image_with_jpg_suffix(tmp_path: Path):
    for name, content in [("text.jpg", b"hello, I am not a JPEG\n"), ("empty.png", b"")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(RtmwEdgeError) as exc:
            open_source(str(path))
        assert name in _one_line(exc)


def test_folder_with_corrupt_image_raises_or_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    cv2.imwrite(str(tmp_path / "c.png"), np.ones((4, 4, 3), np.uint8))

    with pytest.raises(RtmwEdgeError) as exc:
        list(open_source(tmp_path))
    assert "b.jpg" in _one_line(exc)

    src = open_source(tmp_path, skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="rtmw_edge.sources"):
        frames = list(src)
    assert [f.name for f in frames] == ["a.png", "c.png"] and [f.index for f in frames] == [0, 1]
    assert src.skipped == 1
    assert any("b.jpg" in r.getMessage() for r in caplog.records)


def test_folder_where_nothing_is_readable(tmp_path: Path):
    (tmp_path / "x.jpg").write_bytes(b"nope")
    with pytest.raises(RtmwEdgeError, match="none of its 1 images"):
        list(open_source(tmp_path, skip_bad=True))


def test_empty_folder(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(RtmwEdgeError, match="no images"):
        open_source(tmp_path)


@pytest.mark.parametrize("spec", ["does/not/exist.jpg", "missing_clip.mp4", "nothing-here"])
def test_missing_path(spec: str):
    with pytest.raises(RtmwEdgeError, match="no such file, folder, camera or URL") as exc:
        open_source(spec)
    assert spec in _one_line(exc)


def test_loop_cycles_still_images(tmp_path: Path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    src = open_source(tmp_path / "a.png", loop=True)
    frames = [f for f, _ in zip(src, range(3))]
    assert [f.index for f in frames] == [0, 1, 2]
    frames[0].image[:] = 255  # consumers may draw on frames: later frames are unaffected
    assert next(iter(src)).image.max() == 0


# --------------------------------------------------------------------------- video files
def test_video_file(video: Path):
    baseline = threading.active_count()
    with open_source(str(video)) as src:
        assert src.kind == "video" and src.frame_count == N_FRAMES
        assert src.fps == pytest.approx(FPS)
        assert (src.width, src.height) == (64, 48)
        frames = list(src)
    assert [f.index for f in frames] == list(range(N_FRAMES))
    assert [_index_of(f.image) for f in frames] == list(range(N_FRAMES))
    assert [f.name for f in frames[:2]] == ["frame_000000", "frame_000001"]
    assert all(f.image.dtype == np.uint8 and f.image.shape == (48, 64, 3) for f in frames)
    stamps = [f.timestamp for f in frames]
    assert stamps[0] == pytest.approx(0.0)
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert stamps[-1] == pytest.approx((N_FRAMES - 1) / FPS, abs=1e-3)
    assert _wait_threads(baseline) <= baseline
    assert src.closed
    with pytest.raises(RtmwEdgeError, match="closed"):
        next(iter(src))


@pytest.mark.parametrize("how", ["close", "break"])
def test_early_stop_stops_the_reader(video: Path, how: str):
    baseline = threading.active_count()
    src = open_source(str(video), prefetch=2)
    for frame in src:
        assert _reader_alive()  # the reader is running (and soon blocked: its queue is full)
        time.sleep(0.05)
        if frame.index == 1:
            break
    if how == "close":
        src.close()
        src.close()  # idempotent
    assert _wait_threads(baseline) <= baseline
    assert src.closed


def test_context_manager_without_iteration_releases(video: Path):
    baseline = threading.active_count()
    with open_source(str(video)) as src:
        assert not src.closed
    assert src.closed and threading.active_count() <= baseline


def test_video_loop(video: Path):
    src = open_source(str(video), loop=True)
    frames = []
    for frame in src:
        frames.append(frame)
        if len(frames) == 2 * N_FRAMES + 5:
            break
    assert [f.index for f in frames] == list(range(len(frames)))
    assert [_index_of(f.image) for f in frames] == [i % N_FRAMES for i in range(len(frames))]
    stamps = [f.timestamp for f in frames]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert stamps[N_FRAMES] == pytest.approx(N_FRAMES / FPS, abs=1e-3)  # second pass continues the clock
    assert src.closed


def test_reader_thread_failure_is_raised_in_consumer(video: Path, monkeypatch: pytest.MonkeyPatch):
    original = cv2.VideoCapture.read
    calls = {"n": 0}

    def flaky_read(self, *args):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("decoder exploded")
        return original(self, *args)

    monkeypatch.setattr(cv2.VideoCapture, "read", flaky_read)
    baseline = threading.active_count()
    src = open_source(str(video))
    seen = []
    with pytest.raises(RtmwEdgeError, match="decoder exploded") as exc:
        for frame in src:
            seen.append(frame.index)
    assert seen == [0, 1, 2]
    assert str(video) in _one_line(exc) and isinstance(exc.value.__cause__, RuntimeError)
    assert _wait_threads(baseline) <= baseline


def test_unreadable_videos(tmp_path: Path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(RtmwEdgeError, match="cannot open as a video") as exc:
        open_source(junk)
    assert str(junk) in _one_line(exc)

    empty = tmp_path / "empty.avi"  # a valid container without frames
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 48)).release()
    with pytest.raises(RtmwEdgeError, match=r"cannot open as a video|no readable frames"):
        open_source(empty)


# --------------------------------------------------------------------------- live sources (fake captures)
class FakeCapture:
    """Stands in for cv2.VideoCapture: records how it was opened, serves flat frames as fast as asked."""

    opened: list[tuple] = []
    is_open = True
    frame_shape = (6, 8, 3)

    def __init__(self, *args):
        FakeCapture.opened.append(args)
        self.n = 0
        self.released = False
        FakeCapture.last = self

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return self.is_open

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_COUNT: -1.0}.get(prop, 0.0)

    def set(self, prop, value):
        return True

    def read(self):
        time.sleep(0.002)
        self.n += 1
        return True, np.full(self.frame_shape, self.n % 256, np.uint8)

    def release(self):
        self.released = True


@pytest.fixture
def fake_capture(monkeypatch: pytest.MonkeyPatch):
    FakeCapture.opened = []
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    return FakeCapture


def test_camera_drops_oldest_frames_when_consumer_is_slow(fake_capture):
    baseline = threading.active_count()
    src = open_source("0", prefetch=1)
    assert fake_capture.opened == [(0,)]
    assert src.kind == "camera" and src.live and src.frame_count is None and src.fps == 30.0
    frames = []
    for frame in src:
        frames.append(frame)
        time.sleep(0.03)
        if len(frames) == 4:
            break
    indices = [f.index for f in frames]
    assert indices[0] == 0 and all(b > a for a, b in zip(indices, indices[1:]))
    assert indices[-1] > 3 and src.dropped > 0  # gaps: the slow consumer got recent frames
    assert frames[0].timestamp == 0.0
    assert all(b.timestamp > a.timestamp for a, b in zip(frames, frames[1:]))
    assert src.closed and _wait_threads(baseline) <= baseline
    assert fake_capture.last.released


def test_camera_that_delivers_nothing(fake_capture, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(FakeCapture, "read", lambda self: (False, None))
    with pytest.raises(RtmwEdgeError, match="camera 3: opened but delivered no frame"):
        open_source(3)
    assert fake_capture.last.released


def test_empty_frame_is_an_error(fake_capture, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(FakeCapture, "frame_shape", (0, 0, 3))
    with pytest.raises(RtmwEdgeError, match="bad frame"):
        open_source(0)


@pytest.mark.parametrize(
    ("spec", "kind", "opened_with"),
    [
        ("rtsp://user:secret@10.0.0.5:554/stream1", "stream", "rtsp://user:secret@10.0.0.5:554/stream1"),
        ("RTMP://example.com/live/key", "stream", "RTMP://example.com/live/key"),
        ("http://192.168.1.20:8080/video.mjpg", "stream", "http://192.168.1.20:8080/video.mjpg"),
        ("https://example.com/clip.mp4", "stream", "https://example.com/clip.mp4"),
    ],
)
def test_streams_are_opened_with_timeouts(fake_capture, spec: str, kind: str, opened_with: str):
    with open_source(spec) as src:
        assert src.kind == kind and src.frame_count is None
        assert "secret" not in src.description and "secret" not in repr(src)
    args = fake_capture.opened[0]
    assert args[0] == opened_with and args[1] == cv2.CAP_ANY
    assert cv2.CAP_PROP_OPEN_TIMEOUT_MSEC in args[2]


def test_stream_failure_masks_password(fake_capture, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(FakeCapture, "is_open", False)
    with pytest.raises(RtmwEdgeError) as exc:
        open_source("rtsp://admin:hunter2@127.0.0.1:1/live")
    message = _one_line(exc)
    assert "hunter2" not in message and "admin:***@127.0.0.1:1" in message


def test_gstreamer_pipeline(fake_capture, monkeypatch: pytest.MonkeyPatch):
    pipeline = "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720 ! nvvidconv ! appsink"
    monkeypatch.setattr(cv2.videoio_registry, "hasBackend", lambda backend: True)
    with open_source(pipeline) as src:
        assert src.kind == "camera"
    assert fake_capture.opened == [(pipeline, cv2.CAP_GSTREAMER)]
    with open_source("rtspsrc location=rtsp://cam/1 ! decodebin ! videoconvert ! appsink") as src:
        assert src.kind == "stream"

    monkeypatch.setattr(cv2.videoio_registry, "hasBackend", lambda backend: False)
    with pytest.raises(RtmwEdgeError, match="no GStreamer support"):
        open_source(pipeline)


def test_missing_camera_fails_fast():
    start = time.monotonic()
    with pytest.raises(RtmwEdgeError, match="camera 99") as exc:
        open_source(99)
    _one_line(exc)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("bad", [-1, True, 1.5, None])
def test_bad_specs(bad):
    with pytest.raises(RtmwEdgeError):
        open_source(bad)


def test_bad_prefetch(video: Path):
    with pytest.raises(RtmwEdgeError, match="prefetch"):
        open_source(str(video), prefetch=0)


# --------------------------------------------------------------------------- image URLs
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=root))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=2)


@needs_photo
def test_url_image(http_root):
    root, base = http_root
    shutil.copy(PHOTO, root / "my photo.JPG")
    with open_source(f"{base}/my%20photo.JPG?size=large") as src:
        assert src.kind == "url-image" and src.frame_count == 1
        (frame,) = list(src)
    assert frame.name == "my photo.JPG" and frame.index == 0 and frame.timestamp == 0.0
    np.testing.assert_array_equal(frame.image, read_image(PHOTO))


def test_url_image_errors(http_root):
    root, base = http_root
    with pytest.raises(RtmwEdgeError, match="HTTP 404") as exc:
        open_source(f"{base}/missing.jpg")
    assert "missing.jpg" in _one_line(exc)

    (root / "page.png").write_text("<html>login required</html>")
    with pytest.raises(RtmwEdgeError, match="cannot decode"):
        open_source(f"{base}/page.png")

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RtmwEdgeError, match="could not reach") as exc:
        open_source(f"http://127.0.0.1:{port}/x.jpg", timeout=2)
    assert f"127.0.0.1:{port}/x.jpg" in _one_line(exc)


def test_exception_in_consumer_closes_the_source(video: Path):
    baseline = threading.active_count()
    src = open_source(str(video))
    with pytest.raises(KeyboardInterrupt):
        for frame in src:
            if frame.index == 2:
                raise KeyboardInterrupt  # what Ctrl-C does in the middle of inference
    assert src.closed and _wait_threads(baseline) <= baseline
