"""Triton Inference Server: a model repository from the toolkit, a remote backend, the server from a wheel.

- `repository.py`: `rtmw-edge triton export` — detector + pose models (`tensorrt_plan` from engines,
  `onnxruntime_onnx` from ONNX, or ONNX Runtime inside the Python backend for CPU-only servers) and a
  Python-backend pipeline model (BLS) that runs the toolkit's own pre/post-processing.
- `models.py`: the Python-backend model classes the repository's `model.py` files import (server side).
- `client.py`: `TritonPoseEstimator`, the `--backend triton` estimator: frame → server → `FrameResult`.
- `server.py`: `rtmw-edge triton serve` — `tritonserver` from the `nvidia-pytriton` wheel in a cached venv of
  the Python its Python-backend stub links, with health checks.

Design and deployment (NVIDIA's Triton images, Kubernetes, Jetson): docs/triton.md.
"""

DET_MODEL = "rtmw_detector"
POSE_MODEL = "rtmw_pose"
PIPELINE_MODEL = "rtmw_pipeline"
