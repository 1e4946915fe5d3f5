"""The daemon falls back to ONNX Runtime when its TensorRT engines cannot be used here, and says so: in the
log, the start-up lines, /readyz and the build_info metric (the backend in use, not the one requested)."""

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


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fallback-models")
    return {"pose": export_onnx("rtmpose-t-256x192", tmp / "pose.onnx", random_init=True, progress=False),
            "det": export_onnx("rtmdet-nano-person", tmp / "det.onnx", random_init=True, progress=False)}


def _engine_with_manifest(tmp_path, onnx_path, name):
    engine = tmp_path / f"{name}.engine"
    engine.write_bytes(b"not a real engine")
    manifest_path(engine).write_text(json.dumps({"cache_key": "built elsewhere", "onnx": {"path": str(onnx_path)}}))
    return engine


def test_engines_fall_back_to_the_onnx_they_were_built_from(tmp_path, caplog, onnx_models):
    cfg = ModelConfig(det=str(_engine_with_manifest(tmp_path, onnx_models["det"], "det")),
                      pose=str(_engine_with_manifest(tmp_path, onnx_models["pose"], "pose")), backend="tensorrt")
    with caplog.at_level(logging.WARNING, logger="rtmw_edge.serve"):
        estimator, reason = build_estimator(cfg)  # TensorRT is not installed here
    assert estimator.pose.engine.path == onnx_models["pose"]
    assert "falling back to ONNX Runtime" in caplog.text
    assert reason and "tensorrt" in reason.lower()
    assert active_backends(estimator) == {"det": "onnxruntime", "pose": "onnxruntime", "pipeline": "cpu"}


def test_configured_fallback_and_no_fallback(tmp_path, onnx_models):
    det = str(SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx")
    missing = tmp_path / "gone.engine"
    cfg = ModelConfig(det=det, pose=str(missing), backend="tensorrt", fallback_pose=str(onnx_models["pose"]))
    estimator, reason = build_estimator(cfg)
    assert estimator.pose.engine.path == onnx_models["pose"] and reason
    with pytest.raises(RtmwEdgeError):  # no manifest, no configured fallback: the original error
        build_estimator(ModelConfig(det=det, pose=str(missing), backend="tensorrt"))
    estimator, reason = build_estimator(ModelConfig(det=det, pose=str(onnx_models["pose"])))  # auto, no fallback
    assert reason is None and active_backends(estimator) == {"det": "onnxruntime", "pose": "onnxruntime",
                                                             "pipeline": "cpu"}


def test_the_daemon_reports_the_backend_it_fell_back_to(tmp_path, caplog, onnx_models):
    pytest.importorskip("aiohttp", reason="the daemon needs the 'serve' extra")
    from test_serve_support import config_from, http_json, metrics, write_video

    from rtmw_edge.serve.daemon import DaemonThread

    clip = write_video(tmp_path / "clip.avi", (96, 72), fps=10, gray_frames=5)
    det = _engine_with_manifest(tmp_path, onnx_models["det"], "det")
    pose = _engine_with_manifest(tmp_path, onnx_models["pose"], "pose")
    cfg = config_from(tmp_path, f'[server]\nport = 0\n[model]\ndet = "{det}"\npose = "{pose}"\nbackend = "tensorrt"\n'
                                f'threads = 1\n[cameras.a]\nsource = "{clip}"\nloop = true\n')
    with caplog.at_level(logging.INFO, logger="rtmw_edge.serve"), DaemonThread(cfg) as d:  # builds its models
        ready = http_json(d.port, "/readyz")[1]
        info = [(labels, v) for (name, labels), v in metrics(d.port).items() if name == "rtmw_edge_build_info"]
    backend = ready["backend"]
    assert backend["requested"] == "tensorrt" and backend["active"] == "onnxruntime (cpu)"
    assert backend["det"] == backend["pose"] == "onnxruntime" and backend["pipeline"] == "cpu"
    assert "tensorrt" in backend["fallback_reason"].lower()
    (labels, value), = info
    labels = dict(labels)
    assert value == 1 and labels["backend"] == "onnxruntime (cpu)" and labels["backend_requested"] == "tensorrt"
    assert labels["fallback"] == backend["fallback_reason"]
    loaded = next(r for r in caplog.records if getattr(r, "event", "") == "engines_loaded")
    serving = next(r for r in caplog.records if getattr(r, "event", "") == "serving")
    for record in (loaded, serving):
        assert "backend onnxruntime (cpu)" in record.getMessage() and "fallback from tensorrt" in record.getMessage()
    assert loaded.backend == "onnxruntime (cpu)" and loaded.requested == "tensorrt"
