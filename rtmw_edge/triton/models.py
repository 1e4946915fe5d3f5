"""The Python-backend models of the repository `rtmw-edge triton export` writes (they run inside `tritonserver`).

Each repository `model.py` is one import of a class here, so the server runs the toolkit's own code:

- `PipelineModel`: frame → `PoseModel.infer` → output tensors. The model is the CPU pipeline's own
  (`PoseModel.from_parts`: no stream state, the server is stateless; tracking and smoothing stay with each
  client's stream), with the detector and the pose engine replaced by `TritonModelEngine`s that call
  the repository's detector and pose models through BLS — letterbox, NMS, crops, SimCC decode, back-mapping
  and RTMW3D depth are the functions the local pipeline runs. Each instance handles one frame at a time; the
  config's instance count sets how many frames are in flight, which is what lets the pose model's dynamic
  batcher merge the persons of several cameras into one execution.
- `OnnxRuntimeModel`: a detector or pose ONNX run by ONNX Runtime (`backends.onnxruntime.OrtEngine`) — the
  CPU-server variant (the `nvidia-pytriton` wheel has no ONNX Runtime backend). With dynamic batching the
  requests of one execution are concatenated into one ONNX Runtime call.

Tensors cross the stub boundary through DLPack (`_tensor`, `_as_array`): the stub of Triton 2.51 (the
`nvidia-pytriton` 0.7.0 wheel) reads numpy arrays with numpy 1's descriptor layout, so under numpy 2
`pb_utils.Tensor(name, array)` arrives empty and `tensor.as_numpy()` returns wrong values, while
`Tensor.from_dlpack` / `np.from_dlpack` carry the exact bytes under numpy 1 and 2 alike. The server must run
the same numpy/OpenCV/ONNX Runtime as the clients it is compared with (OpenCV 4.11 and 5.0 warp the same crop
differently), hence numpy 2 there. Releasing numpy's DLPack capsule after the stub took it prints a harmless
`PyCapsule_GetPointer called with incorrect name`; `_quiet_capsule_release` drops exactly that message.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..backends.onnxruntime import OrtEngine
from ..detectors import EngineDetector, as_bgr_uint8
from ..errors import RtmwEdgeError
from ..geometry import Camera
from ..pipeline import PoseModel, TopDownPose
from .repository import PIPELINE_PARAMETER, load_pipeline_parameters


def _pb():
    import triton_python_backend_utils as pb_utils  # provided by the Python backend's stub

    return pb_utils


def _tensor(name: str, array: np.ndarray):
    # numpy gives empty arrays zero strides (np.zeros((0, 4)).strides == (0, 0)) and calls them contiguous; the
    # stub's DLPack check wants C-order strides: an empty array is made by reshaping an empty vector, which has them
    array = np.array([], array.dtype).reshape(array.shape) if array.size == 0 else np.ascontiguousarray(array)
    return _pb().Tensor.from_dlpack(name, array)


def _as_array(tensor) -> np.ndarray:
    return np.from_dlpack(tensor)


def _input(request, name: str) -> np.ndarray | None:
    tensor = _pb().get_input_tensor_by_name(request, name)
    return None if tensor is None else _as_array(tensor)


def _quiet_capsule_release() -> None:
    """Drop the capsule-name ValueError numpy reports when the stub has consumed its DLPack capsule (see the
    module doc); every other unraisable exception goes to the previous hook."""
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_rtmw_edge", False):
        return

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, ValueError) and "PyCapsule_GetPointer called with incorrect name" in \
                str(unraisable.exc_value):
            return
        previous(unraisable)

    hook._rtmw_edge = True
    sys.unraisablehook = hook


def _parameters(args: dict) -> tuple[dict, dict[str, str]]:
    config = json.loads(args["model_config"])
    params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
    return config, params


def _error_response(exc: BaseException):
    pb = _pb()
    text = (str(exc).strip().splitlines() or [""])[0]
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(f"{type(exc).__name__}: {text}"))


class TritonModelEngine:
    """The `backends.Engine` interface over another model of the same server, called through BLS."""

    def __init__(self, spec: dict) -> None:
        self.model = spec["model"]
        self.path = Path(spec["model"])
        self.input_name = spec["input"]
        self.input_dims = tuple(spec["input_shape"])
        self.max_batch = spec.get("max_batch")
        self.output_names = list(spec["outputs"])
        self.metadata = None
        self._dtype = np.dtype(spec.get("input_dtype", "float32"))

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        pb = _pb()
        request = pb.InferenceRequest(model_name=self.model, requested_output_names=self.output_names,
                                      inputs=[_tensor(self.input_name, x.astype(self._dtype, copy=False))])
        response = request.exec()
        if response.has_error():
            raise RtmwEdgeError(f"model {self.model}: {response.error().message()}")
        return {n: np.array(_as_array(pb.get_output_tensor_by_name(response, n))) for n in self.output_names}


class PipelineModel:
    """Frame → persons with the toolkit's pipeline (see the module doc)."""

    def initialize(self, args: dict) -> None:
        _quiet_capsule_release()
        _, params = _parameters(args)
        self.params = load_pipeline_parameters(params[PIPELINE_PARAMETER])
        p = self.params
        detector = EngineDetector(TritonModelEngine(p.detector), signature=p.signature,
                                  score_threshold=p["det_threshold"], nms_iou=0.6, max_detections=1000)
        pose = TopDownPose(TritonModelEngine(p.pose), p["flip_test"], info=p.info)
        self.estimator = PoseModel.from_parts(detector, pose, max_persons=p["max_persons"], nms_iou=p["nms_iou"])
        self.k = p.info.num_keypoints
        self.three_d = p.info.task == "pose3d"

    def _frame(self, request) -> np.ndarray:
        import cv2

        image, encoded = _input(request, "image"), _input(request, "encoded")
        if (image is None) == (encoded is None):
            raise RtmwEdgeError("send exactly one of `image` (raw BGR H×W×3 uint8) and `encoded` (JPEG/PNG bytes)")
        if image is not None:
            return image
        decoded = cv2.imdecode(np.ascontiguousarray(encoded).reshape(-1), cv2.IMREAD_COLOR)
        if decoded is None:
            raise RtmwEdgeError(f"`encoded` ({encoded.size} bytes) is not an image OpenCV can decode")
        return decoded

    def _configure(self, request) -> None:
        """Per-request options (one request at a time per instance, so setting them here is safe)."""
        p, est = self.params, self.estimator
        threshold, persons, camera = (_input(request, n) for n in ("det_threshold", "max_persons", "camera"))
        threshold = p["det_threshold"] if threshold is None else float(threshold.reshape(-1)[0])
        if not 0.0 <= threshold <= 1.0:
            raise RtmwEdgeError(f"det_threshold {threshold} is not in [0, 1]")
        est.detector.score_threshold = threshold
        est.max_persons = p["max_persons"] if persons is None else int(persons.reshape(-1)[0])
        if est.max_persons < 1:
            raise RtmwEdgeError("max_persons must be at least 1")
        est.camera = None
        if camera is not None:
            fx, fy, cx, cy = (float(v) for v in camera.reshape(-1)[:4])
            est.camera = Camera(fx, fy, None if np.isnan(cx) else cx, None if np.isnan(cy) else cy)

    def _outputs(self, arrays) -> list:
        n, k = len(arrays.boxes), self.k
        out = [_tensor("boxes", np.asarray(arrays.boxes, np.float32).reshape(n, 4)),
               _tensor("scores", np.asarray(arrays.scores, np.float32).reshape(n)),
               _tensor("keypoints", np.asarray(arrays.keypoints, np.float32).reshape(n, k, 2)),
               _tensor("keypoint_scores", np.asarray(arrays.keypoint_scores, np.float32).reshape(n, k))]
        if self.three_d:
            k3d = arrays.keypoints_3d if arrays.keypoints_3d is not None else np.full((n, k, 3), np.nan, np.float32)
            out.append(_tensor("keypoints_3d", np.asarray(k3d, np.float32).reshape(n, k, 3)))
        out.append(_tensor("dropped", np.array([arrays.dropped], np.int32)))
        return out

    def execute(self, requests) -> list:
        pb = _pb()
        responses = []
        for request in requests:
            try:
                image = as_bgr_uint8(self._frame(request))
                self._configure(request)
                responses.append(pb.InferenceResponse(output_tensors=self._outputs(self.estimator.infer(image))))
            except Exception as exc:  # one bad frame answers with an error; the model stays up
                responses.append(_error_response(exc))
        return responses


class OnnxRuntimeModel:
    """A detector or pose ONNX with ONNX Runtime inside the Python backend (CPU servers)."""

    def initialize(self, args: dict) -> None:
        _quiet_capsule_release()
        config, params = _parameters(args)
        folder = Path(args["model_repository"]) / str(args["model_version"])
        threads = int(params.get("threads") or 0) or None
        self.engine = OrtEngine(folder / params.get("onnx_file", "model.onnx"), threads=threads)
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests) -> list:
        pb = _pb()
        try:
            xs = [_input(r, self.engine.input_name) for r in requests]
            if self.batched and len(xs) > 1 and len({x.shape[1:] for x in xs}) == 1:
                out = self.engine.run(np.concatenate(xs))  # the dynamic batcher's requests: one call
                bounds = np.cumsum([0] + [len(x) for x in xs])
                results = [{n: out[n][a:b] for n in self.outputs} for a, b in zip(bounds[:-1], bounds[1:])]
            else:
                results = [self.engine.run(x) for x in xs]
        except Exception as exc:
            return [_error_response(exc) for _ in requests]
        return [pb.InferenceResponse(output_tensors=[_tensor(n, r[n]) for n in self.outputs]) for r in results]
