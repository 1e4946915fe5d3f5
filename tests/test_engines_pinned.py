"""The engine cache and the engine loader compare the *full* TensorRT version (issue 23 §3).

TensorRT's rule (docs.nvidia.com/deeplearning/tensorrt, "Version Compatibility"): "By default, TensorRT engines
are compatible only with the version of TensorRT used to build them" — a patch or build release is another
version: deserialisation refuses "expecting library version 8.0.0 got 8.0.1" (a patch release) and "expecting
library version 8.6.1.6 got 8.6.1.2" (a build; NVIDIA/TensorRT#3069). So an engine built by 10.3.0.30 is stale
for 10.3.0.31 and for 10.3.1.x: `build` rebuilds it and the loader refuses it in one line naming both. The other
tests only vary the major version (10.3 → 11.1) or give the plan a version string by hand.
TensorRT is driven as tests/fake_tensorrt.py (it cannot be installed here), as in tests/test_tensorrt_builder.py.
"""

from __future__ import annotations

import sys

import pytest
from fake_tensorrt import make_fake_tensorrt
from test_tensorrt_builder import pose_onnx

from rtmw_edge.backends import load_engine
from rtmw_edge.backends import tensorrt as trt_backend
from rtmw_edge.engines import EngineMismatchError, GpuInfo, read_manifest

ORIN = GpuInfo("Orin", "8.7")


@pytest.fixture
def tensorrt_at(monkeypatch):
    def install(version: str):
        monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(version))
        monkeypatch.setattr(trt_backend, "gpu_identity", lambda device=0: ORIN)

    return install


@pytest.mark.parametrize("later", ["10.3.0.31", "10.3.1.30"])
def test_an_engine_of_another_patch_release_is_rebuilt_and_refused(tensorrt_at, tmp_path, later):
    pose = pose_onnx(tmp_path / "pose.onnx")
    out = tmp_path / "pose.engine"
    tensorrt_at("10.3.0.30")
    assert not trt_backend.build_engine(pose, out, progress=False).skipped
    assert trt_backend.build_engine(pose, out, progress=False).skipped      # the very same version: a cache hit
    assert load_engine(out, "tensorrt").path == out

    tensorrt_at(later)
    _, status = trt_backend.check_engine(pose, out)
    assert status.state == "stale" and status.reasons == (f"TensorRT version: 10.3.0.30 → {later}",)
    with pytest.raises(EngineMismatchError) as info:
        load_engine(out, "tensorrt")
    message = str(info.value)
    assert "with TensorRT 10.3.0.30" in message and f"has Orin (compute 8.7) with TensorRT {later}" in message
    rebuilt = trt_backend.build_engine(pose, out, progress=False)
    assert not rebuilt.skipped and read_manifest(out)["tensorrt_version"] == later
    assert load_engine(out, "tensorrt").path == out
