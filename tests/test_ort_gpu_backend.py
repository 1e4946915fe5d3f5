"""The onnxruntime-gpu device engine (`backends/onnxruntime_gpu.py`), run on the CPU: the same I/O-binding code
path with the CPU execution provider and device_type "cpu" over host pointers, against plain `session.run` — on
foreign detectors (BYO files run here, unlike on the torch engine) and a project export with a dynamic batch; the
static output shapes it reads from the graph, and its refusals."""

from __future__ import annotations

import ctypes

import numpy as np
import onnxruntime as ort
import pytest
from conftest import SHARED

from rtmw_edge.backends.onnxruntime_gpu import OrtGpuEngine
from rtmw_edge.errors import MissingDependencyError, RtmwEdgeError
from rtmw_edge.export import export_onnx

MODELS = SHARED / "models"
RAWHEAD = MODELS / "rtmdet-nano_person_320_rawhead.onnx"
YOLOX_RAW = MODELS / "yolox-nano_coco80_416_raw.onnx"


def _shared(path):
    if not path.is_file():
        pytest.skip(f"shared model not found: {path}")
    return path


def _buffer(array: np.ndarray):
    raw = (ctypes.c_uint8 * array.nbytes)()
    view = np.frombuffer(raw, dtype=array.dtype).reshape(array.shape)
    view[...] = array
    return raw, ctypes.addressof(raw), view


def _bound_run(engine, context, x: np.ndarray, names=None):
    """infer_async over host buffers (outputs pre-filled with NaN); returns the output arrays."""
    keep, ptr, _ = _buffer(np.ascontiguousarray(x, np.float32))
    names = engine.output_names if names is None else names
    outs = {n: _buffer(np.full(engine.output_shape(n, len(x)), np.nan, engine.output_dtype(n))) for n in names}
    context.infer_async({engine.input_name: ptr}, {n: o[1] for n, o in outs.items()}, len(x))
    del keep
    return {n: o[2].copy() for n, o in outs.items()}, outs


def _plain(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: x})))


@pytest.fixture(scope="module")
def project_pose(tmp_path_factory):
    return export_onnx("rtmpose-t-256x192", tmp_path_factory.mktemp("ortgpu") / "t.onnx", random_init=True,
                       decode=True, progress=False)


@pytest.mark.parametrize("model", [RAWHEAD, YOLOX_RAW], ids=["rtmdet-rawhead", "yolox-raw"])
def test_foreign_detectors_through_the_binding_equal_session_run(model):
    path = _shared(model)
    engine = OrtGpuEngine(path, device="cpu")
    assert engine.metadata is None and (engine.min_batch, engine.max_batch) == (1, 1)   # fixed batch 1
    x = np.random.default_rng(0).uniform(-2, 2, engine.input_shape(1)).astype(np.float32)
    got, _ = _bound_run(engine, engine.create_context(7), x)
    want = _plain(path, x)
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == want[name].shape == engine.output_shape(name, 1)
        np.testing.assert_array_equal(got[name], want[name])


def test_project_export_with_a_dynamic_batch(project_pose):
    engine = OrtGpuEngine(project_pose, device="cpu", max_batch=3)
    assert engine.metadata["name"] == "rtmpose-t-256x192" and (engine.min_batch, engine.max_batch) == (1, 3)
    assert engine.output_shape("keypoints", 3) == (3, 17, 2) and engine.output_dtype("scores") == "float32"
    context = engine.create_context(1)
    x = np.random.default_rng(1).standard_normal((3, 3, 256, 192)).astype(np.float32)
    got, _ = _bound_run(engine, context, x)
    want = _plain(project_pose, x)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    np.testing.assert_array_equal(engine.run(x[:2])["scores"], want["scores"][:2])     # the host side
    with pytest.raises(RtmwEdgeError, match=r"batch 4 outside \[1, 3\]"):
        _bound_run(engine, context, np.zeros((4, 3, 256, 192), np.float32))


def test_an_output_left_out_of_a_call_is_not_written():
    """Bindings are per call: a buffer bound in an earlier call is not written by a later one that leaves it out."""
    engine = OrtGpuEngine(_shared(RAWHEAD), device="cpu")
    context = engine.create_context(3)
    rng = np.random.default_rng(3)
    first, second = (rng.uniform(-2, 2, engine.input_shape(1)).astype(np.float32) for _ in range(2))
    _, outs = _bound_run(engine, context, first)
    before = {n: o[2].copy() for n, o in outs.items()}
    got, _ = _bound_run(engine, context, second, names=["1213"])
    np.testing.assert_array_equal(got["1213"], _plain(RAWHEAD, second)["1213"])
    assert not np.array_equal(got["1213"], before["1213"])        # the inputs do give other outputs
    for name in ("1211", "1215"):
        np.testing.assert_array_equal(outs[name][2], before[name])


def test_shapes_known_only_at_run_time_are_refused():
    with pytest.raises(RtmwEdgeError, match="output dets has a size known only at run time"):
        OrtGpuEngine(_shared(MODELS / "yolox-nano_humanart_416_e2e.onnx"), device="cpu")
    with pytest.raises(RtmwEdgeError, match="fixed NCHW input size"):
        OrtGpuEngine(_shared(MODELS / "rtmdet-nano_person_e2e_dyn.onnx"), device="cpu")


def test_symbolic_dims_are_resolved_by_shape_inference(tmp_path):
    """A graph whose outputs declare nothing (as many exporters leave them) gets its sizes from ONNX inference."""
    import onnx

    model = onnx.load(str(_shared(RAWHEAD)))
    for o in model.graph.output:
        o.type.tensor_type.ClearField("shape")
    onnx.save(model, str(tmp_path / "bare.onnx"))
    engine = OrtGpuEngine(tmp_path / "bare.onnx", device="cpu")
    assert [engine.output_shape(n, 1) for n in engine.output_names] == [(1, 40, 40, 5), (1, 20, 20, 5), (1, 10, 10, 5)]


def test_runs_never_wait_for_the_stream():
    engine = OrtGpuEngine(_shared(RAWHEAD), device="cpu")
    assert engine.run_options.get_run_config_entry("disable_synchronize_execution_providers") == "1"
    assert engine.graph_capturable is False


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu is installed")
def test_without_onnxruntime_gpu_the_way_to_install_it_is_named():
    with pytest.raises(MissingDependencyError, match="pip uninstall -y onnxruntime onnxruntime-gpu && pip install"):
        OrtGpuEngine(_shared(RAWHEAD), device=0)


@pytest.mark.gpu
def test_a_context_on_a_cuda_stream_equals_session_run(project_pose):
    """On the GPU with onnxruntime-gpu: buffers and stream from PyTorch, bound with device_type "cuda"."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    torch = pytest.importorskip("torch")
    engine = OrtGpuEngine(project_pose)
    stream = torch.cuda.Stream()
    x = np.random.default_rng(2).standard_normal((2, 3, 256, 192)).astype(np.float32)
    xd = torch.from_numpy(x).cuda()
    outs = {n: torch.full(engine.output_shape(n, 2), float("nan"), device="cuda") for n in engine.output_names}
    torch.cuda.synchronize()
    engine.create_context(stream.cuda_stream).infer_async({"input": xd.data_ptr()},
                                                          {n: t.data_ptr() for n, t in outs.items()}, 2)
    stream.synchronize()
    want = _plain(project_pose, x)
    np.testing.assert_allclose(outs["scores"].cpu().numpy(), want["scores"], atol=1e-3, rtol=0)
