"""`--backend triton`: frames go to a Triton server's pipeline model, results come back as `FrameResult`s.

`TritonPoseEstimator(url)` is called like `PoseEstimator` — `estimator(image, frame, timestamp)` — so JSON
lines, COCO output, drawing, tracking/smoothing and the daemon's WebSocket/MQTT work unchanged. It is a model
with a stream of its own, like the local pipelines: the server is stateless (``infer(image, camera)`` → the
frame's arrays), the streams (`streams.PoseStream`, ``open_stream(...)``: one per camera in the daemon) keep the
tracker, the smoother and the camera intrinsics on the client.

- URL: `host:port` or `grpc://host:port` (gRPC, default port 8001), `http://host:port` (HTTP, default 8000).
- Start: waits for the server and the model. Nothing listening → `TritonUnavailableError` after the retries;
  a model that is not in the repository or failed to load → `TritonModelError` at once (with the server's
  reason); a model still loading → waits up to `ready_timeout`.
- Each frame: one request (`timeout` seconds); transport failures (server gone, unavailable, deadline) are
  retried `retries` times with exponential backoff (`backoff`, 2×, 4×...), then `TritonUnavailableError`
  says so in one line. A request the server rejects (bad frame) raises `TritonModelError` at once.
- Frames are sent raw (`encoding="raw"`: BGR uint8, exact) or as JPEG/PNG (`"jpeg"`, `"png"`: less bandwidth;
  JPEG is lossy, so results differ slightly from a local run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..backends import availability
from ..detectors import as_bgr_uint8
from ..errors import RtmwEdgeError, UsageError, require
from ..results import FrameResult
from ..sources import mask_credentials
from ..streams import FrameArrays, FrameTail, PoseStream
from . import PIPELINE_MODEL
from .repository import PIPELINE_PARAMETER, load_pipeline_parameters

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
ENCODINGS = ("raw", "jpeg", "png")
_RETRY_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED"}
_RETRY_HTTP = {"408", "429", "502", "503", "504"}


class TritonUnavailableError(RtmwEdgeError):
    """The Triton server cannot be reached (not running, gone, or not answering in time)."""


class TritonModelError(RtmwEdgeError):
    """The server is up but the pipeline model is missing, failed to load, or rejected a request."""


@dataclass(frozen=True)
class TritonUrl:
    protocol: str     # grpc | http
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def shown(self) -> str:
        """The address as messages show it: user:password@host → user:***@host."""
        return mask_credentials(f"{self.protocol}://{self.address}").split("://", 1)[1]

    def hide(self, text: str) -> str:
        """TEXT (a client library's message quoting the address) with the address as `shown`."""
        return text.replace(self.address, self.shown)

    def __str__(self) -> str:
        return f"{self.shown} ({'gRPC' if self.protocol == 'grpc' else 'HTTP'})"


def parse_url(url: str) -> TritonUrl:
    """'host:port' / 'grpc://host:port' → gRPC; 'http://host:port' → HTTP (default ports 8001 / 8000)."""
    text = str(url).strip()
    shown = mask_credentials(text)  # what the messages show: no password
    protocol = "grpc"
    for scheme in ("grpc", "http"):
        if text.lower().startswith(f"{scheme}://"):
            protocol, text = scheme, text[len(scheme) + 3:]
            break
    else:
        if "://" in text:
            raise UsageError(f"--triton-url {shown!r}: use host:port, grpc://host:port or http://host:port")
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORTS[protocol])
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise UsageError(f"--triton-url {shown!r}: expected host:port (e.g. 127.0.0.1:8001)")
    return TritonUrl(protocol, host, int(port))


class TritonPoseEstimator:
    """`estimator(image, frame, timestamp) -> FrameResult` through a Triton server (see the module doc)."""

    pipeline = "remote"

    def __init__(self, url: str, *, model: str = PIPELINE_MODEL, timeout: float = 10.0, retries: int = 3,
                 backoff: float = 0.25, ready_timeout: float = 60.0, encoding: str = "raw",
                 det_threshold: float | None = None, max_persons: int | None = None, camera=None,
                 flip_test: bool = False, track: bool = False, smooth: bool = False,
                 smoothing: dict | None = None) -> None:
        if encoding not in ENCODINGS:
            raise UsageError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise UsageError("timeout must be positive, retries and backoff at least 0")
        if det_threshold is not None and not 0.0 <= det_threshold <= 1.0:
            raise UsageError("--det-threshold must be in [0, 1]")
        if max_persons is not None and max_persons < 1:
            raise UsageError("--max-persons must be at least 1")
        self.url = parse_url(url)
        availability("triton").require()  # one line when tritonclient is missing
        self.model = model
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.encoding = encoding
        self.det_threshold, self.max_persons, self.camera = det_threshold, max_persons, camera
        self._module = require(f"tritonclient.{self.url.protocol}", "triton")
        self._client = self._connect()
        self.params = self._wait_ready(ready_timeout)
        self.info = self.params.info
        if flip_test and not self.params["flip_test"]:
            raise UsageError(f"the server's {model} runs without flip test: re-export the repository with "
                                "`rtmw-edge triton export --flip-test`, or drop --flip-test")
        self._stream = self.open_stream(track=track, smooth=smooth, smoothing=smoothing)

    def open_stream(self, **options) -> PoseStream:
        """A new stream over this server (``track``, ``smooth``, ``smoothing``, ``camera``, ``on_stage``; see
        `streams.PoseStream`); the server detects on every frame, so no ``det_interval``."""
        return PoseStream(self, **options)

    @property
    def tracker(self):
        return self._stream.tracker

    # -- connection
    def _connect(self):
        m = self._module
        try:
            if self.url.protocol == "grpc":
                return m.InferenceServerClient(self.url.address)
            return m.InferenceServerClient(self.url.address, connection_timeout=self.timeout,
                                           network_timeout=self.timeout)
        except Exception as exc:  # malformed address and the like
            raise TritonUnavailableError(f"cannot connect to the Triton server at {self.url}: "
                                         f"{self.url.hide(_reason(exc))}") from None

    def _call(self, fn, *args, **kwargs):
        if self.url.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        return fn(*args, **kwargs)

    def _retryable(self, exc: BaseException) -> bool:
        from tritonclient.utils import InferenceServerException

        if isinstance(exc, InferenceServerException):
            status = str(exc.status() or "")
            return status in (_RETRY_GRPC if self.url.protocol == "grpc" else _RETRY_HTTP) or (
                self.url.protocol == "http" and not status)
        return isinstance(exc, (OSError, TimeoutError)) or type(exc).__name__ in ("Timeout", "timeout")

    def _with_retries(self, what: str, fn, *args, **kwargs):
        start = time.monotonic()
        for attempt in range(self.retries + 1):
            try:
                return self._call(fn, *args, **kwargs)
            except Exception as exc:
                if not self._retryable(exc):
                    raise TritonModelError(f"{self.model} on {self.url}: {what} failed: "
                                           f"{self.url.hide(_reason(exc))}") from None
                if attempt == self.retries:
                    raise TritonUnavailableError(
                        f"Triton server at {self.url} is not answering ({what}: {self.url.hide(_reason(exc))}; "
                        f"{attempt + 1} attempt(s) over {time.monotonic() - start:.1f} s)") from None
                time.sleep(self.backoff * (2 ** attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_ready(self, ready_timeout: float):
        self._with_retries("health check", self._client.is_server_live)
        deadline = time.monotonic() + ready_timeout
        while not self._with_retries("model readiness", self._client.is_model_ready, self.model):
            state, reason = self._model_state()
            if state is None:
                raise TritonModelError(f"no model {self.model!r} on the Triton server at {self.url} "
                                       f"(it has: {', '.join(self._model_names()) or 'none'}): check --triton-model")
            if state == "UNAVAILABLE" and reason:
                raise TritonModelError(f"model {self.model!r} on {self.url} failed to load: {reason}")
            if time.monotonic() > deadline:
                raise TritonModelError(f"model {self.model!r} on {self.url} is not ready after {ready_timeout:.0f} s "
                                       f"(state {state})")
            time.sleep(0.5)
        config = self._with_retries("reading the model config", self._get_config)
        params = (config.get("parameters") or {}).get(PIPELINE_PARAMETER, {}).get("string_value")
        if not params:
            raise TritonModelError(f"{self.model!r} on {self.url} is not an rtmw-edge pipeline model (its config has "
                                   f"no '{PIPELINE_PARAMETER}' parameter): make one with `rtmw-edge triton export`")
        return load_pipeline_parameters(params)

    def _get_config(self, **kwargs) -> dict:
        if self.url.protocol == "grpc":
            return self._client.get_model_config(self.model, as_json=True, **kwargs)["config"]
        return self._client.get_model_config(self.model)

    def _index(self) -> list[dict]:
        if self.url.protocol == "grpc":
            index = self._call(self._client.get_model_repository_index, as_json=True)
            return index.get("models", [])
        return self._client.get_model_repository_index()

    def _model_names(self) -> list[str]:
        return sorted({m.get("name", "") for m in self._index()})

    def _model_state(self) -> tuple[str | None, str]:
        for entry in self._index():
            if entry.get("name") == self.model:
                return entry.get("state") or "UNKNOWN", entry.get("reason") or ""
        return None, ""

    # -- frames
    def _inputs(self, image: np.ndarray, camera=None) -> list:
        import cv2

        m = self._module

        def tensor(name: str, array: np.ndarray, dtype: str):
            t = m.InferInput(name, list(array.shape), dtype)
            t.set_data_from_numpy(array)
            return t

        if self.encoding == "raw":
            inputs = [tensor("image", image, "UINT8")]
        else:
            ok, buf = cv2.imencode(".jpg" if self.encoding == "jpeg" else ".png", image)
            if not ok:
                raise RtmwEdgeError(f"cannot encode the frame as {self.encoding}")
            inputs = [tensor("encoded", buf.reshape(-1).astype(np.uint8), "UINT8")]
        if self.det_threshold is not None:
            inputs.append(tensor("det_threshold", np.array([self.det_threshold], np.float32), "FP32"))
        if self.max_persons is not None:
            inputs.append(tensor("max_persons", np.array([self.max_persons], np.int32), "INT32"))
        if camera is not None:
            c = camera
            inputs.append(tensor("camera", np.array([c.fx, c.fy, np.nan if c.cx is None else c.cx,
                                                     np.nan if c.cy is None else c.cy], np.float32), "FP32"))
        return inputs

    def infer(self, image: np.ndarray, camera=None, *, frame: int | None = None) -> FrameArrays:
        """One BGR uint8 frame through the server's pipeline model → its persons as arrays. CAMERA: this frame's
        intrinsics (`geometry.Camera`, RTMW3D), else the estimator's own; FRAME: its number, for messages."""
        try:
            response = self._with_retries("inference" if frame is None else f"frame {frame}", self._client.infer,
                                          self.model, self._inputs(image, self.camera if camera is None else camera))
        except TritonModelError as exc:
            # a server that stops gracefully unloads its models first: "unknown model" then means "stopping"
            if not self._still_serving():
                at = "" if frame is None else f" at frame {frame}"
                raise TritonUnavailableError(f"the Triton server at {self.url} stopped serving {self.model!r}{at} "
                                             f"(it is shutting down or restarting): {exc}") from None
            raise
        boxes, scores = response.as_numpy("boxes"), response.as_numpy("scores")
        kpts, kpt_scores = response.as_numpy("keypoints"), response.as_numpy("keypoint_scores")
        kpts_3d = response.as_numpy("keypoints_3d") if self.info.task == "pose3d" else None
        dropped = int(response.as_numpy("dropped").reshape(-1)[0])
        return FrameArrays(boxes, scores, kpts, kpt_scores, kpts_3d, dropped)

    def __call__(self, image: np.ndarray, frame: int = 0, timestamp: float = 0.0, camera=None) -> FrameResult:
        """One frame through the server's pipeline model, ending in this estimator's own stream's tail (its
        tracker). CAMERA: this frame's intrinsics, instead of the estimator's own."""
        image = as_bgr_uint8(image)
        h, w = image.shape[:2]
        arrays = self.infer(image, camera, frame=frame)
        tail = self._stream.tail if getattr(self, "_stream", None) is not None else FrameTail()
        return tail(*arrays, frame=frame, timestamp=timestamp, width=w, height=h)

    def _still_serving(self) -> bool:
        """The server is up and the model ready (one quick look, no retries); False when either is not, or the
        server does not answer."""
        try:
            return bool(self._call(self._client.is_server_ready)) and bool(
                self._call(self._client.is_model_ready, self.model))
        except Exception:  # noqa: BLE001 - not answering is an answer here
            return False

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass


def _reason(exc: BaseException) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        text = exc.message() or str(exc)
        status = exc.status()
        text = f"{status.replace('StatusCode.', '') if status else 'error'}: {text}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "…"
