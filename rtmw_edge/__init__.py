"""rtmw-edge: real-time whole-body pose estimation (RTMW / RTMW3D / RTMPose) on NVIDIA edge devices.

    import cv2
    from rtmw_edge import open_estimator

    estimator = open_estimator("rtmdet-nano-person", "rtmw-m-256x192")    # backend="auto"
    result = estimator(cv2.imread("people.jpg"))                          # FrameResult: persons, keypoints

The names below are imported on first use, so ``import rtmw_edge`` stays light (no OpenCV, no ONNX Runtime).
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "open_estimator": "rtmw_edge.estimators",      # the one factory: a backend name → its pipeline
    "PoseEstimator": "rtmw_edge.pipeline",         # the CPU pipeline: a model with one stream
    "PoseModel": "rtmw_edge.pipeline",             # the CPU pipeline's shared engines
    "PoseStream": "rtmw_edge.streams",             # one camera's state over a shared model
    "FrameResult": "rtmw_edge.results",
    "Person": "rtmw_edge.results",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rtmw_edge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
