"""The daemon falls back to ONNX Runtime when its TensorRT engines cannot be used here."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import SHARED

from rtmw_edge.engines import manifest_path
from rtmw_edge.errors import RtmwEdgeError
from rtmw_edge.export import export_onnx
from rtmw_edge.serve.config import ModelConfig
from rtmw_edge.serve.daemon import active_backends, build_estimator


def _engine_with_manifest(tmp_path, onnx_path, name):
    engine = tmp_path / f"{name}.engine"
    engine.write_bytes(b"not a real engine")
    manifest_path(engine).write_text(json.dumps({"cache_key": "built elsewhere", "onnx": {"path": str(onnx_path)}}))
    return engine


def test_engines_fall_back_to_the_onnx_they_were_built_from(tmp_path, caplog):
    pose_onnx = export_onnx("rtmpose-t-256x192", tmp_path / "pose.onnx", random_init=True, progress=False)
    det_onnx = export_onnx("rtmdet-nano-person", tmp_path / "det.onnx", random_init=True, progress=False)
    cfg = ModelConfig(det=str(_engine_with_manifest(tmp_path, det_onnx, "det")),
                      pose=str(_engine_with_manifest(tmp_path, pose_onnx, "pose")), backend="tensorrt")
    with caplog.at_level(logging.WARNING, logger="rtmw_edge.serve"):
        estimator, reason = build_estimator(cfg)  # TensorRT is not installed here
    assert estimator.pose.engine.path == pose_onnx
    assert "falling back to ONNX Runtime" in caplog.text
    assert reason and "tensorrt" in reason.lower()
    assert active_backends(estimator) == {"det": "onnxruntime", "pose": "onnxruntime"}


def test_configured_fallback_and_no_fallback(tmp_path):
    pose_onnx = export_onnx("rtmpose-t-256x192", tmp_path / "pose.onnx", random_init=True, progress=False)
    det = str(SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx")
    missing = tmp_path / "gone.engine"
    cfg = ModelConfig(det=det, pose=str(missing), backend="tensorrt", fallback_pose=str(pose_onnx))
    estimator, reason = build_estimator(cfg)
    assert estimator.pose.engine.path == pose_onnx and reason
    with pytest.raises(RtmwEdgeError):  # no manifest, no configured fallback: the original error
        build_estimator(ModelConfig(det=det, pose=str(missing), backend="tensorrt"))
