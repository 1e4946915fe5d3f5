"""Input sources: turn the user's SOURCE (image, folder, video, camera, stream, URL) into `Frame`s.

`open_source(spec)` decides what SPEC is, in this order:

- an ``int`` or a string of digits: camera index, ``cv2.VideoCapture(index)`` (kind ``camera``);
- ``rtsp://``, ``rtsps://``, ``rtmp://``, ``rtmps://``: network stream (kind ``stream``);
- ``http(s)://`` whose path ends in an image suffix (.jpg .jpeg .png .bmp .webp): the bytes are downloaded
  with urllib (timeout, at most 50 MB) and decoded (kind ``url-image``); any other ``http(s)://`` is opened
  as a stream by OpenCV/FFmpeg (MJPEG cameras, HLS, ...); ``file://`` URLs are local paths;
- an existing folder: its images (suffixes above, case-insensitive; hidden files such as macOS ``._x.jpg``
  are ignored; not recursive), in natural order (``img2`` before ``img10``) (kind ``folder``);
- an existing file with an image suffix: one image (kind ``image``); any other existing file: a video file
  read by OpenCV (kind ``video``);
- a GStreamer pipeline (starts with ``nvarguscamerasrc`` or contains `` ! ``):
  ``cv2.VideoCapture(spec, cv2.CAP_GSTREAMER)``, kind ``camera`` when it starts with a camera element
  (nvarguscamerasrc, v4l2src, ...), else ``stream``. The OpenCV wheels on PyPI have no GStreamer: on a
  Jetson use the system OpenCV (JetPack's python3-opencv), else this raises one line saying so;
- anything else: ``RtmwEdgeError("no such file, folder, camera or URL: ...")``.

Every `Frame.image` is uint8 H×W×3 BGR, made by `detectors.as_bgr_uint8`. Still images are decoded with
``IMREAD_ANYDEPTH | IMREAD_ANYCOLOR``: like ``IMREAD_UNCHANGED`` this keeps 16-bit depth and grayscale, but
unlike it OpenCV applies the EXIF orientation (phone photos come out upright). So:

- grayscale (8 or 16 bit) → the gray value copied into B, G and R (``cv2.COLOR_GRAY2BGR``);
- RGBA / BGRA → the alpha channel is dropped: colour values are kept as stored, *not* composited on a
  background (fully transparent pixels show whatever colour the file stores under them, often black);
- 16-bit (PNG) → the top byte (``>> 8``), i.e. 65535 → 255, 257·v → v;
- a 0×0 image, or one that cannot be decoded (corrupt, truncated, not an image) → `RtmwEdgeError`
  naming the file. Truncated JPEGs are detected even where OpenCV (4.x) would return a gray-filled image.

A folder with an unreadable image raises by default: a frame never silently vanishes. With
``skip_bad=True`` such files are reported (``on_skip(message)``, by default a logged warning) and counted in
`Source.skipped`. An empty folder, or one where no image is readable, raises. In a video file, a frame the
decoder cannot read before the file's frame count is reached is skipped and counted the same way (at most
`MAX_CORRUPT_RUN` in a row); the read goes on with the next frame.

Video files, cameras and streams are read by a background daemon thread that decodes up to `prefetch`
frames ahead into a bounded queue, so decoding overlaps inference. The first frame is read when the source
is opened, so a video or camera that cannot deliver anything fails in `open_source`, not later. Iteration
stops cleanly at the end of the file/stream; an exception in the reader thread is re-raised in the
consumer as `RtmwEdgeError`. These sources are single-pass: when the iteration ends, or is abandoned (a
``break``, Ctrl-C, an exception: the generator is closed), the source closes itself, the thread stops
(event + join with timeout) and the capture is released; `close()` and ``with`` do the same explicitly.
For live sources (camera, stream) a full queue drops its *oldest* frame instead of blocking, so a slow
consumer sees recent frames rather than an ever-growing delay (counted in `Source.dropped`; indices keep
counting captured frames, so drops show as gaps); use ``prefetch=1`` for the lowest latency. In a stream, a
frame the decoder cannot read (a corrupt JPEG in an MJPEG stream) is skipped and counted like a video's
(``skipped``, ``on_skip``) when the next read delivers; it does not end the stream.

Timestamps: video files use the position OpenCV reports (``CAP_PROP_POS_MSEC``), else index / fps, and
are kept strictly increasing; live sources use ``time.monotonic()`` at capture, relative to the first
frame (0.0); still images have 0.0. ``loop=True`` restarts a video file (and cycles images/folders) at the
end with index and timestamp still increasing; it has no effect on live sources. ``fps`` is
``CAP_PROP_FPS`` (None when 0; nominal for cameras), ``frame_count`` is ``CAP_PROP_FRAME_COUNT`` for
video files (container metadata, may be approximate), the number of files for still images, None for
live sources.
"""

from __future__ import annotations

import http.client
import logging
import math
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import signals
from .detectors import as_bgr_uint8
from .errors import RtmwEdgeError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_DOWNLOAD_BYTES",
    "CaptureSource",
    "Frame",
    "ImageSource",
    "Source",
    "decode_image",
    "mask_credentials",
    "open_source",
    "read_image",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
URL_TIMEOUT_S = 20.0
STREAM_TIMEOUT_MS = 10_000  # FFmpeg's own default is 30 s per open/read
_IMREAD_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
_STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps")
_GST_CAMERAS = ("nvarguscamerasrc", "nvv4l2camerasrc", "v4l2src", "libcamerasrc", "autovideosrc")
_JOIN_TIMEOUT_S = 1.0
_CORRUPT_RETRIES = 3     # failed reads in a row that may still be corrupt frames rather than the end
_CORRUPT_WINDOW_S = 1.0  # ... as long as they fail fast (a read that timed out is a lost stream)
_POLL_S = 0.05
_USER_AGENT = "rtmw-edge"
MAX_CORRUPT_RUN = 100  # consecutive unreadable video frames before the file is taken as ended


@dataclass
class Frame:
    """One frame for the pose pipeline."""

    image: np.ndarray  # uint8 H×W×3 BGR
    index: int  # 0-based frame number (counts captured frames; keeps increasing with loop=True)
    timestamp: float  # seconds: video position for files, monotonic capture time for live, 0.0 for stills
    name: str  # file name for images ("000000000785.jpg"), "frame_000123" otherwise


# --------------------------------------------------------------------------- still images
def _jpeg_truncated(data: bytes) -> bool:
    """True when a JPEG ends before its image data does (no scan, or no EOI marker after the first scan).

    The header segments are walked (so an EXIF thumbnail, which has its own scan and EOI inside APP1, is
    skipped); anything unexpected is left to the decoder. Data appended after the EOI (motion photos) is fine.
    """
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return False  # not the structure we expect: let the decoder judge
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker == 0xD9:
            return False  # EOI before any scan: the decoder will refuse it anyway
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data follows, an EOI must come after it
            return data.find(b"\xff\xd9", pos + 2 + length) < 0
        pos += 2 + length
    return True  # ran out of bytes in the headers


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, name: str) -> np.ndarray:
    """Encoded image bytes → uint8 H×W×3 BGR (see the module docstring); RtmwEdgeError naming `name`."""
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if buf.size == 0:
        raise RtmwEdgeError(f"{name}: empty file, not an image")
    if buf.size >= 2 and buf[0] == 0xFF and buf[1] == 0xD8 and _jpeg_truncated(buf.tobytes()):
        raise RtmwEdgeError(f"{name}: truncated JPEG (the file ends before its image data)")
    try:
        image = cv2.imdecode(buf, _IMREAD_FLAGS)
    except cv2.error as exc:
        image = None
        log.debug("cv2.imdecode(%s) failed: %s", name, exc)
    if image is None:
        raise RtmwEdgeError(f"{name}: cannot decode image (corrupt, truncated or not an image file)")
    try:
        return as_bgr_uint8(image)
    except RtmwEdgeError as exc:
        raise RtmwEdgeError(f"{name}: {exc}") from None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file → uint8 H×W×3 BGR (works with non-ASCII paths); RtmwEdgeError naming the file."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as exc:
        raise RtmwEdgeError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return decode_image(data, str(path))


def _natural_key(path: Path) -> list[object]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name)]


def _list_images(folder: Path) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise RtmwEdgeError(f"{folder}: cannot list folder: {exc.strerror or exc}") from None
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()]
    return sorted(images, key=_natural_key)


# --------------------------------------------------------------------------- sources
class Source(ABC):
    """Frames from somewhere. Iterate it; close it (or use ``with``) when done."""

    kind: str = ""

    def __init__(self, description: str) -> None:
        self.description = description  # what to call it in messages (URL passwords masked)
        self.fps: float | None = None
        self.frame_count: int | None = None
        self.width: int | None = None  # of the latest frame; None until known
        self.height: int | None = None
        self.skipped = 0  # unreadable images skipped with skip_bad=True
        self.dropped = 0  # live frames dropped because the consumer was slower than the source
        self._closed = False

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "stream")

    @property
    def closed(self) -> bool:
        return self._closed

    @abstractmethod
    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.description!r}>"

    def _saw(self, image: np.ndarray) -> None:
        self.height, self.width = int(image.shape[0]), int(image.shape[1])


class ImageSource(Source):
    """A single image, a folder of images, or an image downloaded from a URL (decoded when opened).

    Can be iterated more than once (each pass re-reads the files).
    """

    def __init__(self, kind: str, description: str, paths: list[Path] | None = None, *,
                 image: np.ndarray | None = None, name: str = "", skip_bad: bool = False,
                 loop: bool = False, on_skip: Callable[[str], None] | None = None) -> None:
        super().__init__(description)
        self.on_skip = on_skip or (lambda message: log.warning("skipping unreadable image: %s", message))
        self.kind = kind
        self.paths = list(paths or [])
        self._image, self._name = image, name  # an already decoded image (single file, URL)
        self.skip_bad = skip_bad
        self.loop = loop
        self._bad: set[Path] = set()
        self.frame_count = 1 if image is not None else len(self.paths)
        if image is not None:
            self._saw(image)

    @property
    def names(self) -> list[str]:
        """The file names of the frames, in order."""
        return [self._name] if self._image is not None else [p.name for p in self.paths]

    def _items(self) -> Iterator[tuple[str, np.ndarray]]:
        if self._image is not None:
            yield self._name, self._image.copy()  # a copy: consumers may draw on frames
            return
        for path in self.paths:
            if path in self._bad:
                continue
            try:
                image = read_image(path)
            except RtmwEdgeError as exc:
                if not self.skip_bad:
                    raise
                self._bad.add(path)
                self.skipped = len(self._bad)
                self.on_skip(str(exc))
                continue
            yield path.name, image

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while not self._closed:
            start = index
            for name, image in self._items():
                if self._closed:
                    return
                self._saw(image)
                yield Frame(image, index, 0.0, name)
                index += 1
            if index == start:
                raise RtmwEdgeError(f"{self.description}: none of its {len(self.paths)} images could be read")
            if not self.loop:
                return


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


class CaptureSource(Source):
    """A video file, camera or stream read by OpenCV in a background thread (see the module docstring)."""

    def __init__(self, kind: str, description: str, open_capture: Callable[[], cv2.VideoCapture], *,
                 prefetch: int = 4, loop: bool = False, on_skip: Callable[[str], None] | None = None) -> None:
        super().__init__(description)
        self.kind = kind
        self.on_skip = on_skip or (lambda message: log.warning("%s", message))
        self._reads = 0  # frames read or skipped in this pass of a video file
        self.loop = loop and kind == "video"
        self._open_capture = open_capture
        self._queue: queue.Queue[object] = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._cap = open_capture()  # raises RtmwEdgeError
        try:
            fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
            self.fps = fps if math.isfinite(fps) and 0.0 < fps < 1000.0 else None
            if kind == "video":
                count = float(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
                self.frame_count = int(count) if math.isfinite(count) and count > 0 else None
            width, height = self._cap.get(cv2.CAP_PROP_FRAME_WIDTH), self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
            if width > 0 and height > 0:
                self.width, self.height = int(width), int(height)
            first = self._read_image(self._cap)  # fail here, in open_source, when nothing can be read
            if first is None:
                what = {"video": "video has no readable frames", "camera": "opened but delivered no frame"}
                raise RtmwEdgeError(f"{description}: {what.get(kind, 'no frame received')}")
        except BaseException:
            self._cap.release()
            raise
        self._t0 = time.monotonic()
        self._first: np.ndarray | None = first
        self._first_pos = self._position_s(self._cap)
        self._saw(first)

    # -- reader thread
    def _read_image(self, cap: cv2.VideoCapture) -> np.ndarray | None:
        """The next frame as uint8 BGR, None at the end; an empty (0×0) or odd frame raises RtmwEdgeError.

        OpenCV's read fails on a frame the decoder cannot read (a damaged frame of a file, a corrupt JPEG in
        an MJPEG stream) and succeeds again on the next one. Such a frame is skipped and counted (``skipped``,
        ``on_skip``), and the next one is read, as long as `_may_be_corrupt` says the failed read may not be
        the end."""
        ok, image = cap.read()
        start, failed = time.monotonic(), 0
        while (not ok or image is None) and self._may_be_corrupt(failed, start):
            failed += 1
            ok, image = cap.read()
        if not ok or image is None:
            return None
        for k in range(failed):  # the failed reads were unreadable frames, not the end
            self.skipped += 1
            where = f" (about frame {self._reads + k})" if self.kind == "video" else ""
            self.on_skip(f"{self.description}: skipped an unreadable frame{where}")
        self._reads += failed + 1
        try:
            return as_bgr_uint8(image)
        except RtmwEdgeError as exc:
            raise RtmwEdgeError(f"{self.description}: bad frame: {exc}") from None

    def _may_be_corrupt(self, failed: int, start: float) -> bool:
        """Whether to read on after FAILED reads in a row that started at START: in a video file with a frame
        count, while that count is not reached (at most `MAX_CORRUPT_RUN` in a row); in a stream (or a file
        without a frame count), for `_CORRUPT_RETRIES` reads that fail within `_CORRUPT_WINDOW_S` (a stream
        that ended fails at once every time; a read that timed out is a lost stream, not a corrupt frame)."""
        if self._stop.is_set():
            return False
        if self.kind == "video" and self.frame_count is not None:
            return self._reads + failed + 1 < self.frame_count and failed < MAX_CORRUPT_RUN
        return failed < _CORRUPT_RETRIES and time.monotonic() - start < _CORRUPT_WINDOW_S

    @staticmethod
    def _position_s(cap: cv2.VideoCapture) -> float | None:
        ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        return ms / 1000.0 if ms is not None and math.isfinite(ms) and ms >= 0 else None

    def _put(self, item: object, *, may_drop: bool) -> bool:
        """Queue an item; False when the source is being closed. Live frames displace the oldest one."""
        if may_drop and self.live:
            while not self._stop.is_set():
                try:
                    self._queue.put_nowait(item)
                    return True
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
            return False
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _restart(self, cap: cv2.VideoCapture) -> cv2.VideoCapture:
        self._reads = 0
        if cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            return cap
        cap.release()  # some backends cannot seek: open the file again
        return self._open_capture()

    def _run(self) -> None:
        cap = self._cap
        try:
            period = 1.0 / self.fps if self.fps else 1.0 / 30.0
            image: np.ndarray | None = self._first
            self._first = None
            pos, captured = self._first_pos, self._t0  # position in the file / monotonic time of the read
            index, in_pass, offset, prev = 0, 0, 0.0, -math.inf  # prev: the last position within this pass
            while image is not None and not self._stop.is_set():
                if self.live:
                    timestamp = captured - self._t0
                else:  # the file position when the backend reports one that moves forward, else index / fps
                    stamp = pos if pos is not None and (in_pass == 0 or pos > prev) else in_pass * period
                    if in_pass and stamp <= prev:
                        stamp = prev + period
                    prev, timestamp = stamp, offset + stamp
                if not self._put(Frame(image, index, timestamp, f"frame_{index:06d}"), may_drop=True):
                    return
                index, in_pass = index + 1, in_pass + 1
                image = self._read_image(cap)
                if image is None and self.loop and not self._stop.is_set():
                    cap = self._restart(cap)
                    offset, prev, in_pass = offset + prev + period, -math.inf, 0
                    image = self._read_image(cap)
                captured = time.monotonic()
                pos = self._position_s(cap) if not self.live and image is not None else None
            self._put(_END, may_drop=False)
        except BaseException as exc:  # re-raised in the consumer
            self._put(_Failure(exc), may_drop=False)
        finally:
            cap.release()

    # -- consumer
    def _start(self) -> None:
        self._started = True
        self._thread = threading.Thread(target=self._run, name=f"rtmw-edge-{self.kind}-reader", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise RtmwEdgeError(f"{self.description}: the source is closed (a {self.kind} can be read once)")
        if self._started:
            raise RtmwEdgeError(f"{self.description}: the source is already being read")
        self._start()
        thread = self._thread
        assert thread is not None
        try:
            while True:
                try:
                    item = self._queue.get(timeout=0.1)
                except queue.Empty:
                    signals.check()  # SIGTERM / Ctrl-C while waiting for a frame (a stalled camera or stream)
                    if thread.is_alive():
                        continue
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        return
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    exc = item.exc
                    if isinstance(exc, RtmwEdgeError):
                        raise exc
                    detail = (str(exc).strip().splitlines() or [""])[0]
                    raise RtmwEdgeError(
                        f"{self.description}: reading frames failed: {type(exc).__name__}"
                        + (f": {detail}" if detail else "")
                    ) from exc
                assert isinstance(item, Frame)
                self._saw(item.image)
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reader thread (join with a timeout) and release the capture. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is None:
            self._cap.release()
        elif thread is not threading.current_thread():
            # a read blocked inside the backend (a network stream) ends on its own; the thread is a daemon
            thread.join(timeout=_JOIN_TIMEOUT_S)
        while True:  # free the prefetched frames
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break


# --------------------------------------------------------------------------- opening
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#]*)@")
_SECRET_PARAM = re.compile(r"(?P<key>\b(?:user-pw|password|passwd|pwd|token|access_token|api_key|apikey)=)"
                           r"(?P<value>[^\s&;!\"']+)", re.IGNORECASE)


def mask_credentials(text: str) -> str:
    """TEXT with the secrets of every URL in it replaced by ***, for messages and logs.

    ``scheme://user:password@host`` → ``scheme://user:***@host`` (the last ``@`` before the path ends the
    user info, so a password containing ``@`` is masked whole); ``scheme://secret@host`` (a user part alone,
    often a token) → ``scheme://***@host``; ``password=``, ``token=``, ``access_token=``, GStreamer's
    ``user-pw=`` and similar parameters → ``key=***``. Works on whole URLs and on any text that contains them
    (error messages, GStreamer pipelines).
    """

    def userinfo(m: re.Match) -> str:
        user, colon, _ = m.group("userinfo").partition(":")
        return f"{m.group('scheme')}{user}:***@" if colon else f"{m.group('scheme')}***@"

    return _SECRET_PARAM.sub(lambda m: m.group("key") + "***", _USERINFO.sub(userinfo, text))


def _open_camera(index: int) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        cap.release()
        raise RtmwEdgeError(f"cannot open camera {index}: no such camera, or it is in use by another program")
    return cap


def _open_stream(url: str) -> cv2.VideoCapture:
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
    cap = cv2.VideoCapture(url, cv2.CAP_ANY, params)
    if not cap.isOpened():
        cap.release()
        raise RtmwEdgeError(f"cannot open stream {mask_credentials(url)} (unreachable, wrong address or unsupported)")
    return cap


def _open_gstreamer(pipeline: str) -> cv2.VideoCapture:
    registry = getattr(cv2, "videoio_registry", None)
    if registry is not None and not registry.hasBackend(cv2.CAP_GSTREAMER):
        raise RtmwEdgeError(
            "this OpenCV build has no GStreamer support, which the pipeline needs "
            "(the PyPI wheels never have it; on Jetson use JetPack's python3-opencv)"
        )
    cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    if not cap.isOpened():
        cap.release()
        raise RtmwEdgeError("cannot open GStreamer pipeline (check it with gst-launch-1.0): "
                            f"{mask_credentials(pipeline)}")
    return cap


def _open_video(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise RtmwEdgeError(
            f"{path}: cannot open as a video (unsupported format or corrupt file; images must end in "
            f"{'/'.join(IMAGE_SUFFIXES)})"
        )
    return cap


_OFFLINE = "without a network, give a photo, folder or video on disk instead"


def _download(url: str, timeout: float) -> bytes:
    shown = mask_credentials(url)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # scheme checked by the caller
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > MAX_DOWNLOAD_BYTES:
                raise RtmwEdgeError(f"{shown}: image is {int(length) / 2**20:.0f} MB, more than the 50 MB limit")
            data = resp.read(MAX_DOWNLOAD_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise RtmwEdgeError(f"could not download {shown}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise RtmwEdgeError(f"could not reach {shown}: {exc.reason}; {_OFFLINE}") from None
    except TimeoutError:
        raise RtmwEdgeError(f"could not reach {shown}: timed out after {timeout:g} s; {_OFFLINE}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # reset mid-body, bad URL, ...
        raise RtmwEdgeError(f"could not download {shown}: {exc or type(exc).__name__}") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise RtmwEdgeError(f"{shown}: image is larger than the 50 MB limit")
    return data


def _is_gstreamer(text: str) -> bool:
    return text.startswith("nvarguscamerasrc") or " ! " in text


def open_source(spec: str | int | os.PathLike[str], *, prefetch: int = 4, loop: bool = False,
                skip_bad: bool = False, timeout: float = URL_TIMEOUT_S,
                on_skip: Callable[[str], None] | None = None) -> Source:
    """Open SPEC (see the module docstring for the rules) as a `Source` of frames.

    prefetch: frames decoded ahead by the reader thread (video/camera/stream), ≥ 1.
    loop: restart a video file (or cycle images) at the end; no effect on live sources.
    skip_bad: in a folder, report and skip unreadable images instead of raising.
    timeout: seconds for downloading an image URL.
    on_skip: called with one line per skipped image or video/stream frame (default: a logged warning).
    """
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
        raise RtmwEdgeError(f"prefetch must be an integer ≥ 1, got {prefetch!r}")
    if isinstance(spec, bool) or not isinstance(spec, (str, int, os.PathLike)):
        raise RtmwEdgeError(f"source must be a path, URL or camera index, got {type(spec).__name__}")
    if isinstance(spec, int):
        return _camera(spec, prefetch, on_skip)
    spec = os.fspath(spec)
    text = spec.strip()
    if not text:
        raise RtmwEdgeError("empty source: give an image, folder, video, camera index or URL")
    if re.fullmatch(r"[0-9]+", text):
        return _camera(int(text), prefetch, on_skip)

    scheme = urllib.parse.urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in _STREAM_SCHEMES:
        return CaptureSource("stream", mask_credentials(text), lambda: _open_stream(text), prefetch=prefetch,
                             on_skip=on_skip)
    if scheme in ("http", "https"):
        url_path = urllib.parse.unquote(urllib.parse.urlsplit(text).path)
        if url_path.lower().endswith(IMAGE_SUFFIXES):
            name = url_path.rsplit("/", 1)[-1]
            image = decode_image(_download(text, timeout), f"{mask_credentials(text)}")
            return ImageSource("url-image", mask_credentials(text), image=image, name=name, loop=loop)
        return CaptureSource("stream", mask_credentials(text), lambda: _open_stream(text), prefetch=prefetch,
                             on_skip=on_skip)
    if scheme == "file":
        spec = urllib.request.url2pathname(urllib.parse.urlsplit(text).path)

    path = Path(spec).expanduser()
    if path.is_dir():
        images = _list_images(path)
        if not images:
            raise RtmwEdgeError(f"{path}: no images in this folder (looked for {' '.join(IMAGE_SUFFIXES)})")
        return ImageSource("folder", str(path), images, skip_bad=skip_bad, loop=loop, on_skip=on_skip)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageSource("image", str(path), [path], image=read_image(path), name=path.name, loop=loop)
        return CaptureSource("video", str(path), lambda: _open_video(path), prefetch=prefetch, loop=loop,
                             on_skip=on_skip)
    if scheme == "" and _is_gstreamer(text):
        first = text.split("!", 1)[0].split()[0] if text.split("!", 1)[0].split() else ""
        kind = "camera" if first in _GST_CAMERAS else "stream"
        return CaptureSource(kind, "GStreamer pipeline", lambda: _open_gstreamer(text), prefetch=prefetch,
                             on_skip=on_skip)
    raise RtmwEdgeError(f"no such file, folder, camera or URL: {spec}")


def _camera(index: int, prefetch: int, on_skip: Callable[[str], None] | None = None) -> CaptureSource:
    if index < 0:
        raise RtmwEdgeError(f"camera index must be ≥ 0, got {index}")
    return CaptureSource("camera", f"camera {index}", lambda: _open_camera(index), prefetch=prefetch,
                         on_skip=on_skip)
