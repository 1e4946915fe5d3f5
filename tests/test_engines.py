"""Pure engine-building logic (no TensorRT): version paths, profiles, sizes, cache keys, manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtmw_edge import engines as E
from rtmw_edge.engines import EngineError, GpuInfo, Profile

POSE_META = {"task": "pose2d", "batch": "dynamic", "input_size": [192, 256], "precision": "fp32"}
DET_META = {"task": "detector", "batch": "dynamic", "input_size": [320, 320], "precision": "fp32"}
POSE_INPUTS = [("input", [None, 3, 256, 192])]


# --------------------------------------------------------------------------------------------- versions
@pytest.mark.parametrize("text, expected", [("10.3.0", (10, 3, 0)), ("10.3.0.30", (10, 3, 0, 30)),
                                            ("10.12.0.36", (10, 12, 0, 36)), ("11.1.0", (11, 1, 0)),
                                            ("11.4", (11, 4)), ("10.3.0.post1", (10, 3, 0))])
def test_parse_version(text, expected):
    assert E.parse_version(text) == expected


def test_parse_version_rejects_garbage():
    with pytest.raises(EngineError, match="cannot read the TensorRT version"):
        E.parse_version("ten")


@pytest.mark.parametrize("version, flags, name", [("10.3.0", ("STRONGLY_TYPED",), "strongly-typed"),
                                                  ("10.12.0", ("STRONGLY_TYPED",), "strongly-typed"),
                                                  ("11.1.0", (), "strongly-typed")])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_default_path_is_strongly_typed_with_the_onnx_precision(version, flags, name, precision):
    path = E.select_build_path(version, precision)
    assert (path.name, path.network_flags, path.builder_flags, path.precision) == (name, flags, (), precision)
    assert version in path.description and precision in path.description


def test_fp16_flag_path_only_on_10x_before_10_12():
    path = E.select_build_path("10.3.0", "fp32", fp16=True)
    assert (path.name, path.network_flags, path.builder_flags, path.precision) == ("fp16-flag", (), ("FP16",), "fp16")
    assert E.select_build_path((10, 11, 0), "fp32", fp16=True).name == "fp16-flag"
    with pytest.raises(EngineError, match="deprecated since TensorRT 10.12.*--precision fp16"):
        E.select_build_path("10.12.0", "fp32", fp16=True)
    with pytest.raises(EngineError, match="removed in TensorRT 11.*--precision fp16"):
        E.select_build_path("11.1.0", "fp32", fp16=True)
    with pytest.raises(EngineError, match="already int8"):
        E.select_build_path("10.3.0", "int8", fp16=True)


def test_too_old_or_unknown():
    with pytest.raises(EngineError, match=r"TensorRT 8\.6\.1 is too old.*10\.3"):
        E.select_build_path("8.6.1", "fp32")
    with pytest.raises(EngineError, match="unknown ONNX precision"):
        E.select_build_path("10.3.0", "bf16")


def test_check_dla():
    assert E.check_dla("10.3.0", None, "fp16") == []
    assert len(E.check_dla("10.3.0", 0, "fp16")) == 1
    assert any("FP32 engine every layer falls back" in w for w in E.check_dla("10.3.0", 1, "fp32"))
    assert E.check_dla("11.4.1", 0, "int8")
    with pytest.raises(EngineError, match="11.1.0 has no DLA support"):
        E.check_dla("11.1.0", 0, "fp16")
    with pytest.raises(EngineError, match=r"11\.4\.0\.106 has no DLA"):
        E.check_dla("11.4.0.106", 0, "fp16")
    with pytest.raises(EngineError, match="DLA core index"):
        E.check_dla("10.3.0", -1, "fp16")


# --------------------------------------------------------------------------------------------- profiles
@pytest.mark.parametrize("text, expected", [("1:8:32", (1, 8, 32)), ("4", (4, 4, 4)), (" 2:2:2 ", (2, 2, 2)),
                                            (None, None), ("", None)])
def test_parse_batch(text, expected):
    assert E.parse_batch(text) == expected


@pytest.mark.parametrize("text", ["8:1:32", "0:1:2", "1:8", "a:b:c", "1:2:3:4"])
def test_parse_batch_errors(text):
    with pytest.raises(EngineError, match="--batch"):
        E.parse_batch(text)


def test_profiles_pose_detector_cli_and_fixed():
    (p,) = E.derive_profiles(POSE_META, POSE_INPUTS)
    assert p == Profile("input", (1, 3, 256, 192), (8, 3, 256, 192), (32, 3, 256, 192)) and p.batch == (1, 8, 32)
    (d,) = E.derive_profiles(DET_META, [("input", [None, 3, 320, 320])])
    assert d.batch == (1, 1, 1)                                               # detector: fixed
    assert E.derive_profiles(POSE_META, POSE_INPUTS, (2, 4, 16))[0].batch == (2, 4, 16)
    assert E.derive_profiles(DET_META, [("input", [None, 3, 320, 320])], (1, 2, 4))[0].batch == (1, 2, 4)
    fixed = {**POSE_META, "batch": 4}
    assert E.derive_profiles(fixed, POSE_INPUTS)[0].batch == (4, 4, 4)
    assert E.derive_profiles(fixed, POSE_INPUTS, (4, 4, 4))[0].batch == (4, 4, 4)
    with pytest.raises(EngineError, match="fixed batch of 4.*dynamic-batch export"):
        E.derive_profiles(fixed, POSE_INPUTS, (1, 8, 32))
    assert E.derive_profiles(None, [("images", [2, 3, 64, 64])])[0].batch == (2, 2, 2)     # static dim 0
    assert E.derive_profiles(None, [("images", [None, 3, 64, 64])])[0].batch == (1, 1, 1)  # foreign: 1


def test_profiles_fill_symbolic_hw_from_metadata_or_refuse():
    (p,) = E.derive_profiles(POSE_META, [("input", [None, 3, None, None])])
    assert p.max == (32, 3, 256, 192)
    with pytest.raises(EngineError, match=r"symbolic dims \[2, 3\]"):
        E.derive_profiles(None, [("input", [None, 3, None, None])])
    with pytest.raises(EngineError, match="no inputs"):
        E.derive_profiles(POSE_META, [])
    assert "input 1×3×256×192 / 8×3×256×192 / 32×3×256×192" == E.format_profiles(E.derive_profiles(POSE_META,
                                                                                                    POSE_INPUTS))


def test_graph_inputs_and_precision_detection():
    w = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    model = helper.make_model(graph)
    assert E.graph_inputs(model) == [("x", [None, 3])]                        # initialisers are not inputs
    assert E.onnx_precision(model, None) == "fp32"
    assert E.onnx_precision(model, {"precision": "int8"}) == "int8"
    model.graph.initializer.append(numpy_helper.from_array(np.ones(2, np.float16), "h"))
    assert E.onnx_precision(model, None) == "fp16"
    model.graph.node.append(helper.make_node("QuantizeLinear", ["y", "s"], ["q"]))
    assert E.onnx_precision(model, None) == "int8"


# ---------------------------------------------------------------------------------------- sizes, paths
@pytest.mark.parametrize("text, expected", [("2GiB", 2 << 30), ("512MiB", 512 << 20), ("1.5GiB", 3 << 29),
                                            ("4G", 4 << 30), ("1GB", 10 ** 9), ("1073741824", 1 << 30),
                                            (4096, 4096), ("256 mib", 256 << 20)])
def test_parse_workspace(text, expected):
    assert E.parse_workspace(text) == expected


@pytest.mark.parametrize("text", ["lots", "2 GiBs", "-1GiB", "0", "GiB"])
def test_parse_workspace_errors(text):
    with pytest.raises(EngineError, match="--workspace"):
        E.parse_workspace(text)


def test_engine_paths(tmp_path):
    assert E.default_engine_path("models/rtmw-l.fp16.onnx") == E.DEFAULT_ENGINE_DIR / "rtmw-l.fp16.engine"
    assert E.default_engine_path("a.onnx", tmp_path) == tmp_path / "a.engine"      # a folder
    assert E.default_engine_path("a.onnx", tmp_path / "b.plan") == tmp_path / "b.plan"
    assert E.manifest_path(tmp_path / "b.engine") == tmp_path / "b.engine.json"
    assert E.format_bytes(3 << 29) == "1.5 GiB" and E.format_bytes(12) == "12 B"


# ------------------------------------------------------------------------------- cache key, manifests
def make_plan(tmp_path, **changes) -> E.BuildPlan:
    fields = {"onnx_path": tmp_path / "m.onnx", "engine_path": tmp_path / "m.engine", "onnx_sha256": "a" * 64,
              "onnx_metadata": {"name": "rtmw-m-256x192", "task": "pose2d"}, "onnx_precision": "fp16",
              "tensorrt_version": "10.3.0.30", "gpu": GpuInfo("Orin", "8.7"),
              "path": E.select_build_path("10.3.0.30", "fp16"),
              "profiles": E.derive_profiles(POSE_META, POSE_INPUTS), "workspace_bytes": 2 << 30}
    fields.update(changes)
    return E.BuildPlan(**fields)


def write_built(plan: E.BuildPlan, data: bytes = b"plan-bytes") -> dict:
    plan.engine_path.write_bytes(data)
    manifest = E.make_manifest(plan, engine_sha256=E.file_sha256(plan.engine_path), engine_bytes=len(data), io=[],
                               built_at="2026-01-01T00:00:00+00:00", build_seconds=12.5, package_version="0.1.0")
    E.atomic_write_json(E.manifest_path(plan.engine_path), manifest)
    return manifest


def test_cache_key_covers_every_field(tmp_path):
    base = make_plan(tmp_path)
    key = base.cache_key()
    assert key == make_plan(tmp_path).cache_key() and len(key) == 64
    variants = [{"onnx_sha256": "b" * 64}, {"onnx_metadata": {"name": "other"}}, {"tensorrt_version": "10.3.0.31"},
                {"gpu": GpuInfo("Orin", "8.6")}, {"gpu": GpuInfo("NVIDIA H100", "8.7")},
                {"path": E.select_build_path("10.3.0.30", "int8")},
                {"path": E.select_build_path("10.3.0.30", "fp32", fp16=True)},
                {"profiles": E.derive_profiles(POSE_META, POSE_INPUTS, (1, 4, 16))},
                {"workspace_bytes": 1 << 30}, {"dla_core": 0}]
    keys = {make_plan(tmp_path, **v).cache_key() for v in variants}
    assert key not in keys and len(keys) == len(variants)
    # the build time and the engine path are not part of the key
    assert make_plan(tmp_path, engine_path=tmp_path / "x.engine").cache_key() == key


def test_manifest_roundtrip_and_status(tmp_path):
    plan = make_plan(tmp_path)
    assert E.engine_status(plan.engine_path, plan.key_fields()).state == "missing"
    manifest = write_built(plan)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))    # atomic: no leftovers
    read = E.read_manifest(plan.engine_path)
    assert read == json.loads(json.dumps(manifest))
    assert read["gpu"] == {"name": "Orin", "compute_capability": "8.7"} and read["tensorrt_version"] == "10.3.0.30"
    assert read["precision"] == "fp16" and read["build_path"] == "strongly-typed"
    assert read["onnx"]["sha256"] == "a" * 64 and read["build_seconds"] == 12.5 and read["built_at"]
    assert read["flags"] == {"workspace_bytes": 2 << 30, "dla_core": None, "gpu_fallback": False,
                             "network_flags": ["STRONGLY_TYPED"], "builder_flags": []}
    assert E.engine_status(plan.engine_path, plan.key_fields()).current
    newer = make_plan(tmp_path, tensorrt_version="10.3.0.31", workspace_bytes=1 << 30,
                      profiles=E.derive_profiles(POSE_META, POSE_INPUTS, (1, 4, 16)))
    status = E.engine_status(plan.engine_path, newer.key_fields())
    assert status.state == "stale"
    assert status.reasons == ("TensorRT version: 10.3.0.30 → 10.3.0.31",
                              "optimization profiles: input 1:8:32 → input 1:4:16",
                              "build flags: workspace_bytes 2147483648 → 1073741824")
    assert "ONNX file changed: aaaaaaaaaaaa… → bbbbbbbbbbbb…" in E.engine_status(
        plan.engine_path, make_plan(tmp_path, onnx_sha256="b" * 64).key_fields()).explain()
    plan.engine_path.write_bytes(b"plan-byteX")                                  # same size, other bytes
    assert "sha256 differs" in E.engine_status(plan.engine_path, plan.key_fields()).explain()
    E.manifest_path(plan.engine_path).write_text("{not json")
    assert "unreadable" in E.engine_status(plan.engine_path, plan.key_fields()).explain()
    with pytest.raises(EngineError, match="unreadable"):
        E.read_manifest(plan.engine_path)
    E.manifest_path(plan.engine_path).unlink()
    assert "no manifest" in E.engine_status(plan.engine_path, plan.key_fields()).explain()
    assert E.read_manifest(plan.engine_path) is None


def test_atomic_write_leaves_the_old_file_on_error(tmp_path):
    target = tmp_path / "x.engine"
    target.write_bytes(b"old")

    class Boom:
        def __buffer__(self, flags):
            raise RuntimeError("disk on fire")

    from rtmw_edge.outputs import atomic_write_bytes  # the one atomic writer the engine builder uses

    with pytest.raises((RuntimeError, TypeError)):
        atomic_write_bytes(target, Boom())
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.engine"]
    atomic_write_bytes(tmp_path / "sub" / "y.engine", memoryview(b"new"))
    assert (tmp_path / "sub" / "y.engine").read_bytes() == b"new"


def test_check_compatible_names_both_sides(tmp_path):
    plan = make_plan(tmp_path)
    manifest = write_built(plan)
    E.check_compatible(plan.engine_path, manifest, "10.3.0.30", GpuInfo("Orin", "8.7"))
    E.check_compatible(plan.engine_path, manifest, "10.3.0.30", None)           # GPU unknown: version only
    with pytest.raises(E.EngineMismatchError) as info:
        E.check_compatible(plan.engine_path, manifest, "10.3.0.30", GpuInfo("NVIDIA GeForce RTX 4090", "8.9"))
    assert str(info.value) == ("m.engine was built for Orin (compute 8.7) with TensorRT 10.3.0.30, but this machine "
                               "has NVIDIA GeForce RTX 4090 (compute 8.9) with TensorRT 10.3.0.30: rebuild it here "
                               f"with `rtmw-edge build {tmp_path / 'm.onnx'} --force`")
    with pytest.raises(E.EngineMismatchError, match="with TensorRT 10.3.0.30, but this machine has TensorRT 11.1.0"):
        E.check_compatible(plan.engine_path, manifest, "11.1.0", None)


def test_install_hints_jetson_vs_x86():
    nothing = {"gpus": [], "tensorrt": None, "cuda_python": None, "nvrtc": None,
               "onnxruntime_providers": ["CPUExecutionProvider"]}
    jetson = " ".join(E.install_hints({**nothing, "jetson": True}))
    x86 = " ".join(E.install_hints({**nothing, "jetson": False}))
    assert "apt install nvidia-jetpack" in jetson and "python3-libnvinfer" in jetson
    assert "pip install tensorrt" not in jetson
    assert "pip install tensorrt" in x86 and "cuda-python" in x86 and "apt" not in x86
    assert "nvidia-smi" in x86 and "onnxruntime-gpu" in x86
    everything = {"jetson": False, "gpus": [{"name": "x"}], "tensorrt": "10.3.0", "cuda_python": "12.9",
                  "nvrtc": "12.9", "onnxruntime_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    assert E.install_hints(everything) == []
