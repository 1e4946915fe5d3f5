"""The TensorRT builder and runtime driven against tests/fake_tensorrt.py (TensorRT cannot be installed here), once
per recorded real API surface (tests/data/tensorrt_surface: 10.3, the newest 10.x and 11.x bindings), plus every
TensorRT-needing command in the real environment (no TensorRT: one line, exit != 0)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from emulated_cuda import Emulator
from fake_tensorrt import make_fake_tensorrt, recorded_versions
from onnx import TensorProto, helper, numpy_helper

from rtmw_edge import selftest as selftest_module
from rtmw_edge.backends import load_engine
from rtmw_edge.backends import tensorrt as trt_backend
from rtmw_edge.cli import main
from rtmw_edge.cuda import runtime as R
from rtmw_edge.engines import (
    DEFAULT_CONTEXTS,
    EngineError,
    EngineMismatchError,
    GpuInfo,
    manifest_path,
    read_manifest,
    select_build_path,
)
from rtmw_edge.errors import MissingDependencyError, RtmwEdgeError
from rtmw_edge.onnx_meta import write_metadata

ORIN = GpuInfo("Orin", "8.7")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


# ------------------------------------------------------------------------------------------ tiny graphs
def pose_onnx(path, batch="dynamic", precision="fp32", k=4, w=24, h=32):
    """A pose-shaped graph (input N×3×h×w → simcc_x N×k×2w, simcc_y N×k×2h) with rtmw_edge metadata."""
    rng = np.random.default_rng(0)
    n = "batch" if batch == "dynamic" else batch
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"])]
    inits = []
    outputs = []
    for out, bins in (("simcc_x", 2 * w), ("simcc_y", 2 * h)):
        inits += [numpy_helper.from_array(rng.normal(size=(3, k * bins)).astype(np.float32), f"w_{out}"),
                  numpy_helper.from_array(np.array([-1, k, bins], np.int64), f"s_{out}")]
        nodes += [helper.make_node("MatMul", ["flat", f"w_{out}"], [f"m_{out}"]),
                  helper.make_node("Reshape", [f"m_{out}", f"s_{out}"], [out])]
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [n, k, bins]))
    graph = helper.make_graph(nodes, "pose", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, 3, h, w])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    write_metadata(model, {"name": "tiny-pose", "task": "pose2d", "input_name": "input", "input_size": [w, h],
                           "batch": batch, "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                           "color": "rgb", "outputs": ["simcc_x", "simcc_y"], "decoded": False, "flip_test": False,
                           "precision": precision, "num_keypoints": k, "keypoint_set": None,
                           "simcc_split_ratio": 2.0})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def detector_onnx(path, size=32, k=8):
    """A detector-shaped graph (input N×3×s×s → boxes N×k×4, scores N×k) with rtmw_edge metadata."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.uniform(0, size, (3, k * 2)).astype(np.float32), "wa"),
             numpy_helper.from_array(rng.uniform(0, size / 2, (3, k * 2)).astype(np.float32), "wb"),
             numpy_helper.from_array(rng.normal(size=(3, k)).astype(np.float32), "ws"),
             numpy_helper.from_array(np.array([-1, k, 2], np.int64), "s2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "wa"], ["a0"]), helper.make_node("Reshape", ["a0", "s2"], ["a"]),
             helper.make_node("MatMul", ["f", "wb"], ["b0"]), helper.make_node("Reshape", ["b0", "s2"], ["b1"]),
             helper.make_node("Abs", ["b1"], ["b2"]), helper.make_node("Add", ["b2", "one"], ["b3"]),
             helper.make_node("Add", ["a", "b3"], ["c"]),                          # x2y2 > x1y1: valid boxes
             helper.make_node("Concat", ["a", "c"], ["boxes"], axis=-1),
             helper.make_node("MatMul", ["f", "ws"], ["s"]), helper.make_node("Sigmoid", ["s"], ["scores"])]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["batch", 3, size, size])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", k, 4]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    write_metadata(model, {"name": "tiny-det", "task": "detector", "input_name": "input", "input_size": [size, size],
                           "batch": "dynamic", "mean": [103.53, 116.28, 123.675], "std": [57.375, 57.12, 58.395],
                           "color": "bgr", "outputs": ["boxes", "scores"], "decoded": True, "precision": "fp32",
                           "score_threshold": 0.3, "nms_iou": 0.6, "max_per_image": 100, "pad_value": 114})
    onnx.save(model, str(path))
    return path


# -------------------------------------------------------------------------------------------- fixtures
RECORDED = recorded_versions()


@pytest.fixture(params=RECORDED)
def trt_version(request) -> str:
    """Each recorded TensorRT version in turn."""
    return request.param


def _installer(monkeypatch, default: str):
    def install(version=None, *, num_dla_cores=0, gpu=ORIN):
        module = make_fake_tensorrt(version or default, num_dla_cores=num_dla_cores)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        monkeypatch.setattr(trt_backend, "gpu_identity", lambda device=0: gpu)
        return module

    return install


@pytest.fixture
def fake_trt(monkeypatch, trt_version):
    """install(version=None, num_dla_cores=..., gpu=...) puts a fresh fake `tensorrt` in sys.modules: by default
    the recorded version under test (the test runs once per recorded version)."""
    return _installer(monkeypatch, trt_version)


@pytest.fixture
def fake_trt_at(monkeypatch):
    """The same for tests about given versions (run once)."""
    return _installer(monkeypatch, "10.3.0.30")


@pytest.fixture
def fake_cuda(monkeypatch):
    """The emulated CUDA runtime under rtmw_edge.cuda.runtime (engines' `run` stages through it); the fake
    TensorRT module installed later attaches to it on first use."""
    emu = Emulator(seed=0, policy="lazy").install(monkeypatch)
    real_import = trt_backend.import_tensorrt

    def attach():
        module = real_import()
        module._emulator = emu
        return module
    monkeypatch.setattr(trt_backend, "import_tensorrt", attach)
    return emu


@pytest.fixture
def pose(tmp_path):
    return pose_onnx(tmp_path / "pose.onnx")


def calls(trt, name):
    return [args for n, args in trt.calls if n == name]


def build(onnx_path, out=None, **kw):
    kw.setdefault("progress", False)
    return trt_backend.build_engine(onnx_path, out, **kw)


# ------------------------------------------------------------------------------------- network, parser
def test_strongly_typed_network_and_builder_calls(fake_trt, trt_version, pose, tmp_path):
    trt = fake_trt()
    result = build(pose, tmp_path / "engines" / "pose.engine", workspace="1GiB")
    strong = trt_version.startswith("10.")                    # 11.x: always strongly typed, no flag
    flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    assert calls(trt, "Builder.create_network") == [(flag,)]
    if strong:  # the real value: 1 in 10.x (it is 0 in 11.x, where the project must not use it)
        assert flag == 1 << trt.surface["names"]["NetworkDefinitionCreationFlag"]["members"]["STRONGLY_TYPED"] == 2
    assert calls(trt, "OnnxParser.parse_from_file") == [(str(pose),)]
    assert calls(trt, "IBuilderConfig.set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE, 1 << 30)]
    assert calls(trt, "IBuilderConfig.set_flag") == []                      # precision comes from the ONNX
    # a dynamic batch: one copy of the profile per execution context (TensorRT: each context its own profile)
    assert calls(trt, "IOptimizationProfile.set_shape") == \
        [("input", (1, 3, 32, 24), (8, 3, 32, 24), (32, 3, 32, 24))] * DEFAULT_CONTEXTS
    assert len(calls(trt, "IBuilderConfig.add_optimization_profile")) == DEFAULT_CONTEXTS == 4
    assert calls(trt, "IBuilderConfig.default_device_type=") == []
    assert result.engine_path.read_bytes().startswith(b"FAKEPLAN")
    manifest = json.loads(manifest_path(result.engine_path).read_text())
    assert manifest["tensorrt_version"] == trt_version
    assert manifest["gpu"] == {"name": "Orin", "compute_capability": "8.7"}
    assert manifest["build_path"] == "strongly-typed" and manifest["precision"] == "fp32"
    assert manifest["flags"]["network_flags"] == (["STRONGLY_TYPED"] if strong else [])
    assert manifest["flags"]["workspace_bytes"] == 1 << 30
    assert manifest["profiles"] == [{"input": "input", "min": [1, 3, 32, 24], "opt": [8, 3, 32, 24],
                                     "max": [32, 3, 32, 24]}]
    assert manifest["onnx"]["metadata"]["name"] == "tiny-pose"
    assert {io["name"]: io["shape"] for io in manifest["io"]} == {"input": [-1, 3, 32, 24], "simcc_x": [-1, 4, 48],
                                                                  "simcc_y": [-1, 4, 64]}
    assert manifest["built_at"] and manifest["build_seconds"] >= 0


def test_network_flags_zero_on_11(fake_trt_at, pose, tmp_path):
    trt = fake_trt_at("11.1.0.106")
    assert not hasattr(trt.BuilderFlag, "FP16")          # the fake follows 11.x: no precision flags at all
    result = build(pose, tmp_path / "pose.engine")
    assert calls(trt, "Builder.create_network") == [(0,)]
    assert calls(trt, "IBuilderConfig.set_flag") == []
    assert read_manifest(result.engine_path)["flags"]["network_flags"] == []


def test_fp16_flag_only_on_10x_before_10_12(fake_trt_at, pose, tmp_path):
    fake_trt = fake_trt_at
    trt = fake_trt("10.3.0.30")
    result = build(pose, tmp_path / "a.engine", fp16=True)
    assert calls(trt, "Builder.create_network") == [(0,)]                       # weakly typed
    assert calls(trt, "IBuilderConfig.set_flag") == [(trt.BuilderFlag.FP16,)]
    manifest = read_manifest(result.engine_path)
    assert manifest["build_path"] == "fp16-flag" and manifest["precision"] == "fp16"
    for version in ("10.12.0.36", "11.1.0.106"):
        trt = fake_trt(version)
        with pytest.raises(EngineError, match="--precision fp16"):
            build(pose, tmp_path / f"{version}.engine", fp16=True)
        assert calls(trt, "Builder.build_serialized_network") == []
    fake_trt("10.3.0.30")
    with pytest.raises(EngineError, match="already fp16"):
        build(pose_onnx(tmp_path / "half.onnx", precision="fp16"), tmp_path / "b.engine", fp16=True)


def test_parser_errors_become_one_line_and_nothing_is_written(fake_trt, pose, tmp_path):
    trt = fake_trt()
    trt.parse_errors = [{"desc": "No importer registered for op: FooOp", "node": 7, "node_name": "/head/foo",
                         "node_operator": "FooOp"},
                        {"desc": "Invalid Node\n(details)", "node": 9}]
    out = tmp_path / "pose.engine"
    with pytest.raises(EngineError) as info:
        build(pose, out)
    message = str(info.value)
    assert "\n" not in message and "cannot parse pose.onnx (2 errors)" in message
    assert "No importer registered for op: FooOp (FooOp, /head/foo, node 7)" in message
    assert "Invalid Node (details) (node 9)" in message
    assert list(tmp_path.glob("*.engine*")) == []


# ------------------------------------------------------------------------------------------- profiles
def test_profiles_for_detector_and_cli_batch(fake_trt, pose, tmp_path):
    trt = fake_trt()
    build(detector_onnx(tmp_path / "det.onnx"), tmp_path / "det.engine")
    assert calls(trt, "IOptimizationProfile.set_shape") == [("input", (1, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 32))]
    trt = fake_trt()
    build(pose, tmp_path / "p.engine", batch="2:4:16", contexts=2)
    assert calls(trt, "IOptimizationProfile.set_shape") == \
        [("input", (2, 3, 32, 24), (4, 3, 32, 24), (16, 3, 32, 24))] * 2
    manifest = read_manifest(tmp_path / "p.engine")
    assert manifest["contexts"] == manifest["key_fields"]["contexts"] == 2
    trt = fake_trt()
    fixed = pose_onnx(tmp_path / "fixed.onnx", batch=4)
    build(fixed, tmp_path / "f.engine")
    assert calls(trt, "IOptimizationProfile.set_shape") == [("input", (4, 3, 32, 24), (4, 3, 32, 24), (4, 3, 32, 24))]
    with pytest.raises(EngineError, match="fixed batch of 4"):
        build(fixed, tmp_path / "g.engine", batch="1:8:32")


# ---------------------------------------------------------------------------------------- timing cache
def test_timing_cache_is_saved_and_reused(fake_trt, trt_version, pose, tmp_path):
    cache = tmp_path / "engines" / "timing.cache"
    trt = fake_trt()
    build(pose, tmp_path / "engines" / "pose.engine")                      # default: beside the engine
    assert calls(trt, "IBuilderConfig.create_timing_cache") == [(b"",)]
    assert cache.is_file() and b'"entries": 3' in cache.read_bytes()
    saved = cache.read_bytes()
    trt = fake_trt()
    build(pose, tmp_path / "engines" / "other.engine", timing_cache=cache)
    assert calls(trt, "IBuilderConfig.create_timing_cache") == [(saved,)]          # loaded from the file
    assert calls(trt, "IBuilderConfig.set_timing_cache") == [(3, True, False)]
    assert b'"entries": 6' in cache.read_bytes()                          # grew by this build's entries
    parts = trt_version.split(".")
    other = ".".join(parts[:-1] + [str(int(parts[-1]) + 1)])
    trt = fake_trt(other)                                                 # another version: start afresh
    build(pose, tmp_path / "engines" / "third.engine", timing_cache=cache)
    assert calls(trt, "IBuilderConfig.set_timing_cache") == [(6, False, False), (0, True, False)]
    assert f'"version": "{other}"'.encode() in cache.read_bytes()
    trt = fake_trt()
    build(pose, tmp_path / "fourth.engine", timing_cache=False)
    assert calls(trt, "IBuilderConfig.create_timing_cache") == []


# ------------------------------------------------------------------------------------------------- DLA
def test_dla_core_with_gpu_fallback(fake_trt_at, tmp_path):
    fake_trt = fake_trt_at
    det = detector_onnx(tmp_path / "det.onnx")
    trt = fake_trt(num_dla_cores=2)
    result = build(det, tmp_path / "det.engine", dla_core=1)
    assert calls(trt, "IBuilderConfig.default_device_type=") == [(trt.DeviceType.DLA,)]
    assert calls(trt, "IBuilderConfig.DLA_core=") == [(1,)]
    assert (trt.BuilderFlag.GPU_FALLBACK,) in calls(trt, "IBuilderConfig.set_flag")
    assert read_manifest(result.engine_path)["flags"]["dla_core"] == 1
    fake_trt(num_dla_cores=2)
    with pytest.raises(EngineError, match="2 DLA core"):
        build(det, tmp_path / "x.engine", dla_core=2)
    fake_trt(num_dla_cores=0)
    with pytest.raises(EngineError, match="no DLA"):
        build(det, tmp_path / "y.engine", dla_core=0)
    fake_trt("11.1.0.106", num_dla_cores=2)
    with pytest.raises(EngineError, match="no DLA support"):
        build(det, tmp_path / "z.engine", dla_core=0)


# ----------------------------------------------------------------------------- atomic writes, caching
def test_failed_build_writes_nothing_and_keeps_the_old_engine(fake_trt, pose, tmp_path):
    out = tmp_path / "pose.engine"
    fake_trt()
    build(pose, out)
    before = out.read_bytes(), manifest_path(out).read_text()
    trt = fake_trt()
    trt.fail_build = True
    with pytest.raises(EngineError, match="could not build pose.onnx: fake builder failure: out of memory; "
                                          "nothing was written"):
        build(pose, out, force=True)
    assert (out.read_bytes(), manifest_path(out).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pose.engine", "pose.engine.json", "pose.onnx",
                                                          "timing.cache"]
    trt = fake_trt()
    trt.fail_build = True
    with pytest.raises(EngineError):
        build(pose, tmp_path / "new" / "fresh.engine")
    assert not (tmp_path / "new" / "fresh.engine").exists() and not list((tmp_path / "new").glob("*fresh*"))


def test_skipped_when_cached_rebuilt_with_force_or_change(fake_trt, pose, tmp_path):
    out = tmp_path / "pose.engine"
    trt = fake_trt()
    first = build(pose, out)
    assert not first.skipped and first.status.state == "missing"
    trt = fake_trt()
    again = build(pose, out)
    assert again.skipped and calls(trt, "Builder.build_serialized_network") == []
    trt = fake_trt()
    forced = build(pose, out, force=True)
    assert not forced.skipped and len(calls(trt, "Builder.build_serialized_network")) == 1
    fake_trt()
    changed = build(pose, out, batch="1:4:16")
    assert not changed.skipped and "optimization profiles: input 1:8:32 → input 1:4:16" in changed.status.explain()
    fake_trt(gpu=GpuInfo("NVIDIA H100 80GB HBM3", "9.0"))
    moved = build(pose, out, batch="1:4:16")
    assert not moved.skipped and "GPU: Orin → NVIDIA H100 80GB HBM3" in moved.status.explain()
    out.write_bytes(out.read_bytes() + b"x")                               # tampered engine
    fake_trt(gpu=GpuInfo("NVIDIA H100 80GB HBM3", "9.0"))
    assert "bytes" in build(pose, out, batch="1:4:16").status.explain()


def test_progress_monitor_drives_the_bar(fake_trt, pose, tmp_path):
    import io

    from rich.console import Console

    trt = fake_trt()
    console = Console(file=io.StringIO(), width=400)
    build(pose, tmp_path / "pose.engine", progress=True, console=console)
    (monitor,) = calls(trt, "IBuilderConfig.progress_monitor=")
    assert isinstance(monitor[0], trt.IProgressMonitor)
    assert monitor[0].phases == ["Building engine", "Tactic selection"]
    log = console.file.getvalue()
    assert select_build_path(trt.__version__, "fp32").description in log.replace("\n", " ")  # the chosen path
    assert "GPU: Orin (compute 8.7)" in log and "built " in log


# ---------------------------------------------------------------------------------------------- runtime
def test_engine_runs_on_host_arrays_and_device_pointers(fake_trt, fake_cuda, pose, tmp_path):
    import onnxruntime as ort

    trt = fake_trt()
    out = build(pose, tmp_path / "pose.engine").engine_path
    engine = load_engine(out)
    assert isinstance(engine, trt_backend.TensorRTEngine)
    assert engine.input_name == "input" and engine.output_names == ["simcc_x", "simcc_y"]
    assert engine.input_dims == (None, 3, 32, 24) and engine.input_shape(5) == (5, 3, 32, 24)
    assert (engine.min_batch, engine.max_batch) == (1, 32) and engine.metadata["name"] == "tiny-pose"
    assert engine.output_shape("simcc_x", 5) == (5, 4, 48) and engine.output_dtype("simcc_y") == "float32"
    x = np.random.default_rng(2).normal(size=(5, 3, 32, 24)).astype(np.float32)
    got = engine.run(x)
    want = ort.InferenceSession(str(pose), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.testing.assert_allclose(got["simcc_x"], want[0], rtol=1e-6)
    np.testing.assert_allclose(got["simcc_y"], want[1], rtol=1e-6)
    assert ("input", (5, 3, 32, 24)) in calls(trt, "IExecutionContext.set_input_shape")
    assert {a[0] for a in calls(trt, "IExecutionContext.set_tensor_address")} == {"input", "simcc_x", "simcc_y"}
    (stream,) = calls(trt, "IExecutionContext.execute_async_v3")[0]
    assert fake_cuda.stream(stream).device == 0 and "cudaStreamSynchronize" in fake_cuda.log
    assert fake_cuda.stats["pageable_copies"] == 0
    with pytest.raises(EngineError, match="batch of 1..32, not 33"):
        engine.run(np.zeros((33, 3, 32, 24), np.float32))
    context = engine.create_context(R.Stream().handle)
    with pytest.raises(EngineError, match="no device buffer for simcc_y"):
        context.infer_async({"input": 256}, {"simcc_x": 512}, 1)
    with pytest.raises(EngineError, match="not 256-byte aligned"):
        context.infer_async({"input": 256}, {"simcc_x": 512, "simcc_y": 520}, 1)
    engine.close()
    assert fake_cuda.leaks()["device"] == fake_cuda.leaks()["pinned"] == 0


def test_engine_for_another_gpu_or_version_is_refused_in_one_line(fake_trt_at, pose, tmp_path):
    fake_trt = fake_trt_at
    fake_trt("10.3.0.30", gpu=ORIN)
    out = build(pose, tmp_path / "pose.engine").engine_path
    fake_trt("11.1.0.106", gpu=GpuInfo("NVIDIA H100 80GB HBM3", "9.0"))
    with pytest.raises(EngineMismatchError) as info:
        load_engine(out)
    message = str(info.value)
    assert "\n" not in message
    assert "built for Orin (compute 8.7) with TensorRT 10.3.0.30" in message
    assert "this machine has NVIDIA H100 80GB HBM3 (compute 9.0) with TensorRT 11.1.0.106" in message
    assert f"rtmw-edge build {pose} --force" in message
    fake_trt("10.3.0.30", gpu=GpuInfo("Orin", "8.7"))
    manifest_path(out).unlink()                                            # no manifest: TensorRT decides
    assert load_engine(out).metadata is None


def test_check_compares_an_engine_with_its_onnx(fake_trt, fake_cuda, pose, tmp_path):
    from rtmw_edge.check import check_model

    fake_trt()
    engine = build(pose, tmp_path / "pose.engine").engine_path
    images = selftest_module._synthetic_images(tmp_path / "images", count=2)
    report = check_model(engine, pose, images)
    assert report.passed and report.samples == 2 and report.outputs["simcc_x"]["max_abs"] == 0.0
    assert main(["check", str(engine), "--against", str(pose), "--images", str(images)]) == 0


def test_selftest_end_to_end_with_fakes(fake_trt, fake_cuda, tmp_path, monkeypatch):
    import rtmw_edge.export

    def fake_export(name, output, **_):
        return pose_onnx(output) if name.startswith("rtmpose") else detector_onnx(output)

    monkeypatch.setattr(rtmw_edge.export, "export_onnx", fake_export)
    fake_trt()
    rows = selftest_module.selftest(tmp_path / "work", progress=False)
    assert [r["model"] for r in rows] == ["rtmpose-t-256x192", "rtmdet-nano-person"]
    assert all(r["passed"] and r["build_path"] == "strongly-typed" for r in rows), rows
    assert (tmp_path / "work" / "timing.cache").is_file()
    assert main(["selftest", "--workdir", str(tmp_path / "cli")]) == 0
    failing = [{**rows[0], "passed": False, "failures": ["simcc_x: max relative difference 0.5 > 0.01"]}]
    monkeypatch.setattr(selftest_module, "selftest", lambda *a, **k: failing)
    assert main(["selftest", "--workdir", str(tmp_path / "cli2")]) == 3  # a verdict, as check's (README)


def test_build_check_exit_codes(fake_trt, pose, tmp_path, capsys):
    out = tmp_path / "pose.engine"
    fake_trt()
    assert main(["build", str(pose), "-o", str(out), "--check"]) == 3
    assert "missing" in capsys.readouterr().out
    assert main(["build", str(pose), "-o", str(out)]) == 0 and out.is_file()
    assert main(["build", str(pose), "-o", str(out), "--check"]) == 0
    assert main(["build", str(pose), "-o", str(out), "--check", "--batch", "1:2:4"]) == 3
    assert "optimization profiles" in capsys.readouterr().out
    assert main(["build", str(pose), "-o", str(out), "--fp16", "--workspace", "lots"]) == 1


# ------------------------------------------------------------------------ the real environment (no TRT)
@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_without_tensorrt_commands_say_so_in_one_line(pose, tmp_path, capsys):
    for argv in (["build", str(pose)], ["build", str(pose), "--check"], ["selftest"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: this needs TensorRT") and "\n" not in err, argv
    assert main(["doctor"]) == 0
    assert "TensorRT" in capsys.readouterr().out
    assert main(["doctor", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["tensorrt"] is None and any("TensorRT" in h for h in env["missing"])
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(MissingDependencyError):
        load_engine(engine)
    with pytest.raises(MissingDependencyError):
        load_engine(pose, "tensorrt")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
@pytest.mark.parametrize("gpu", [False, True], ids=["no-gpu", "gpu"])
def test_without_tensorrt_the_advice_starts_with_the_gpu(pose, tmp_path, capsys, monkeypatch, gpu):
    """selftest, build and run --backend tensorrt say the same line; without a GPU it says so before any
    `pip install tensorrt` (which would not help there), with one it gives the install command."""
    from rtmw_edge.engines import NO_GPU, TENSORRT_PIP

    monkeypatch.setattr(trt_backend, "gpu_visible", lambda: gpu)
    monkeypatch.setattr(trt_backend, "is_jetson", lambda: False)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    photo = Path(__file__).resolve().parents[2] / "shared" / "images" / "000000000785.jpg"
    lines = set()
    for argv in (["selftest"], ["build", str(pose)],
                 ["run", str(photo), "--det", str(engine), "--pose", str(engine), "--backend", "tensorrt"]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: this needs TensorRT"), (argv, err)
        lines.add(err[0])
    assert len(lines) == 1  # one wording
    line = lines.pop()
    if gpu:
        assert TENSORRT_PIP in line and "no NVIDIA GPU" not in line
    else:
        assert " ".join(NO_GPU.split()) in line and line.index("no NVIDIA GPU") < line.index("pip install tensorrt")


def test_onnx_with_tensorrt_backend_points_to_build(fake_trt, pose):
    fake_trt()
    with pytest.raises(RtmwEdgeError, match="rtmw-edge build"):
        load_engine(pose, "tensorrt")


@pytest.mark.slow
def test_selftest_with_real_project_exports(fake_trt, fake_cuda, tmp_path):
    """The real exports (rtmpose-t, rtmdet-nano; ~15 s) through the fake builder, runtime and `check`."""
    pytest.importorskip("torch")
    fake_trt()
    rows = selftest_module.selftest(tmp_path, progress=False)
    assert all(r["passed"] for r in rows), rows
    pose_manifest = read_manifest(tmp_path / "rtmpose-t-256x192.engine")
    assert pose_manifest["profiles"][0]["max"] == [32, 3, 256, 192]
    assert read_manifest(tmp_path / "rtmdet-nano-person.engine")["profiles"][0]["max"][0] == 1
