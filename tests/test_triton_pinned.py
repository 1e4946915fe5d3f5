"""Triton: the camera of each request (issue 23 §3), fast, against the pinhole model by hand.

The client sends the intrinsics as (fx, fy, cx, cy) and the pipeline model never keeps a previous request's
camera for a request that sends none. Every other Triton test camera has fx = fy, and RTMW3D remote = local
(tests/test_triton.py) runs only under ``-m slow``; this check takes seconds: an RTMW3D-shaped ONNX (133
keypoints, three SimCC outputs at 288×384, settings from ``--pose-spec rtmw3d-l-384x288``) whose logits are
constants chosen here, on a real `tritonserver` serving one pipeline instance (so consecutive requests meet the
same model object), and the real detector on a shared photo.

Truth, from the RTMW3D codec (shared/reference/rtmw_facts.md §3.7): a depth bin b gives z = b / 2 crop pixels,
Z = (z / 144 − 1) · 2.1744869 + 5.14388; X = (u − cx) / fx · Z, Y = (v − cy) / fy · Z, with u, v the image
keypoint; without a camera, f = (1145.04940459, 1143.78109572) and the principal point is the image centre.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import SHARED
from foreign_layouts import constant_simcc_onnx

pytest.importorskip("tritonclient.grpc", reason="the Triton client: pip install -e '.[triton]'")

from rtmw_edge.cli import main  # noqa: E402
from rtmw_edge.geometry import Camera  # noqa: E402
from rtmw_edge.triton.client import TritonPoseEstimator  # noqa: E402
from rtmw_edge.triton.server import TritonServer, ensure_server_env  # noqa: E402

RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
PHOTO = SHARED / "images" / "000000197388.jpg"  # 5 skiers
K, W, H = 133, 288, 384
X_BIN, Y_BIN, Z_BIN = 100 + 2 * np.arange(K), 200 + 3 * np.arange(K), 40 + 3 * np.arange(K)
DEFAULT_F = (1145.04940459, 1143.78109572)


@pytest.fixture(scope="module")
def server3d(tmp_path_factory):
    if not (RAWHEAD.is_file() and PHOTO.is_file()):
        pytest.skip("shared detector / photo not found")
    tmp = tmp_path_factory.mktemp("triton-camera")
    logits = []
    for name, bins, peaks in (("simcc_x", 2 * W, X_BIN), ("simcc_y", 2 * H, Y_BIN), ("simcc_z", 2 * W, Z_BIN)):
        a = np.full((1, K, bins), -1.0, np.float32)
        a[0, np.arange(K), peaks] = 0.7
        logits.append((name, a))
    pose = tmp / "rtmw3d-constant.onnx"
    constant_simcc_onnx(pose, logits, (H, W))
    repo = tmp / "repo"
    assert main(["triton", "export", "--det", str(RAWHEAD), "--pose", str(pose), "--pose-spec", "rtmw3d-l-384x288",
                 "-o", str(repo), "--cpu", "--threads", "1", "--instances", "1"]) == 0
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, env=ensure_server_env(),
                          log_path=tmp / "server.log")
    server.start(timeout=150)
    yield server
    server.stop(grace=20)


def _crop_to_image(box: np.ndarray) -> np.ndarray:
    """[K, 2] image points of crop (X_BIN/2, Y_BIN/2) in BOX: padding 1.25, then the 288:384 aspect."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = (box[2] - box[0]) * 1.25, (box[3] - box[1]) * 1.25
    w, h = (w, w * H / W) if w * H > h * W else (h * W / H, h)
    return np.stack([cx + (X_BIN / 2 / W - 0.5) * w, cy + (Y_BIN / 2 / H - 0.5) * h], axis=1)


def _check(result, fx, fy, cx, cy) -> None:
    assert len(result.persons) == 5
    depth = (Z_BIN / 2 / (W / 2) - 1.0) * 2.1744869 + 5.14388
    for p in result.persons:
        np.testing.assert_allclose(p.keypoints, _crop_to_image(p.bbox.astype(np.float64)), atol=2e-3)
        np.testing.assert_allclose(p.keypoints_3d[:, 2], depth, rtol=1e-5)
        u, v = p.keypoints[:, 0].astype(np.float64), p.keypoints[:, 1].astype(np.float64)
        np.testing.assert_allclose(p.keypoints_3d[:, 0], (u - cx) / fx * depth, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(p.keypoints_3d[:, 1], (v - cy) / fy * depth, rtol=1e-4, atol=1e-5)


def test_each_request_carries_its_own_camera_and_none_means_the_default(server3d):
    image = cv2.imread(str(PHOTO))
    h, w = image.shape[:2]
    remote = TritonPoseEstimator(server3d.grpc_url)  # no camera of its own
    _check(remote(image, camera=Camera(900.0, 600.0, 300.0, 200.0)), 900.0, 600.0, 300.0, 200.0)
    _check(remote(image), *DEFAULT_F, w / 2, h / 2)  # the previous request's camera is not kept
    _check(remote(image, camera=Camera(500.0, 1000.0)), 500.0, 1000.0, w / 2, h / 2)  # centre when not given
    # the estimator's own camera, over HTTP: the same wire order
    own = TritonPoseEstimator(server3d.http_url, camera=Camera(700.0, 1400.0, 100.0, 350.0))
    _check(own(image), 700.0, 1400.0, 100.0, 350.0)
    _check(remote(image), *DEFAULT_F, w / 2, h / 2)
