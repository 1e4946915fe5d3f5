"""The torch-cuda backend's ONNX executor, checked on the CPU against ONNX Runtime (the same executor runs on the
GPU), and the clear errors of the GPU backends on a machine without a GPU."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import SHARED
from onnx import TensorProto, helper, numpy_helper

from rtmw_edge.backends import load_engine
from rtmw_edge.backends.torch_cuda import OnnxTorchGraph
from rtmw_edge.cli import main
from rtmw_edge.errors import RtmwEdgeError
from rtmw_edge.export import export_onnx

RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"


def _compare(model, x: np.ndarray, atol: float, rtol: float = 1e-4):
    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    graph = OnnxTorchGraph(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {name: x})))
    got = {k: v.numpy() for k, v in graph.run({name: torch.from_numpy(x)}).items()}
    assert list(got) == list(want)
    for key, value in want.items():
        out = got[key]
        assert out.shape == value.shape and out.dtype == value.dtype, key
        np.testing.assert_allclose(out, value, atol=atol, rtol=rtol, err_msg=key)
    assert graph.host_reads == 0  # no device value is read back on the host while running
    return graph


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torch_backend")
    return {"pose": export_onnx("rtmpose-t-256x192", tmp / "t-fd.onnx", random_init=True, progress=False,
                                flip_test=True, decode=True),
            "det": export_onnx("rtmdet-nano-person", tmp / "det.onnx", random_init=True, progress=False)}


def test_project_pose_export_runs_like_onnxruntime(exports):
    """RTMPose with flip test and decode in the graph: backbone, GAU head, Slice(-1), ArgMax, Where."""
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 192)).astype(np.float32)
    graph = _compare(exports["pose"], x, atol=1e-3)
    assert {"ArgMax", "Where", "Slice", "MatMul"} <= {n.op_type for n in graph.nodes}


def test_project_detector_export_runs_like_onnxruntime(exports):
    """Random weights give (nearly) equal scores, so which boxes the top-k keeps among ties is free: compare
    the scores, and the boxes through the graph before its TopK (the raw candidate boxes)."""
    x = np.random.default_rng(1).standard_normal((1, 3, 320, 320)).astype(np.float32)
    proto = onnx.load(str(exports["det"]))
    topk = next(n for n in proto.graph.node if n.op_type == "TopK")
    scores_in = topk.input[0]
    boxes_in = next(n for n in proto.graph.node if n.op_type == "GatherElements").input[0]
    del proto.graph.output[:]
    proto.graph.output.extend([_f(boxes_in, None), _f(scores_in, None)])
    _compare(proto, x, atol=1e-3)


@pytest.mark.skipif(not RAWHEAD.is_file(), reason="shared RTMDet raw-head detector not found")
def test_real_rtmdet_raw_head_runs_like_onnxruntime():
    x = np.random.default_rng(2).standard_normal((1, 3, 320, 320)).astype(np.float32)
    graph = _compare(RAWHEAD, x, atol=5e-3, rtol=1e-4)
    assert "Resize" in {n.op_type for n in graph.nodes}


def test_in_graph_nms_is_refused_with_the_way_out():
    node = helper.make_node("NonMaxSuppression", ["b", "s"], ["y"])
    model = _single_op_model(node, [_f("b", [1, 4, 4]), _f("s", [1, 1, 4])],
                             [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    with pytest.raises(RtmwEdgeError, match="without --nms"):
        OnnxTorchGraph(model)


def _single_op_model(node, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph([node], "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _i64(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


@pytest.mark.parametrize("case", ["d2s_dcr", "d2s_crd", "slice_neg", "resize_floor", "resize_half", "gather_scalar",
                                  "split", "reduce_l2", "clip", "topk", "gather_elements", "expand", "pad",
                                  "argmax", "qdq"])
def test_single_ops_match_onnxruntime(case):
    x = np.random.default_rng(3).standard_normal((2, 8, 5, 6)).astype(np.float32)
    X, Y = _f("x", [2, 8, 5, 6]), _f("y", None)
    if case.startswith("d2s"):
        node = helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="DCR" if case == "d2s_dcr" else "CRD")
        model = _single_op_model(node, [X], [Y])
    elif case == "slice_neg":
        node = helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])
        model = _single_op_model(node, [X], [Y], [_i64("s", [-1, 4]), _i64("e", [-100, 0]), _i64("a", [3, 1]),
                                                  _i64("st", [-1, -2])])
    elif case.startswith("resize"):
        attrs = ({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"} if case == "resize_floor"
                 else {"coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_floor"})
        node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest", **attrs)
        model = _single_op_model(node, [X], [Y], [numpy_helper.from_array(np.array([1, 1, 2, 1.5], np.float32), "sc")])
    elif case == "gather_scalar":
        node = helper.make_node("Gather", ["x", "i"], ["y"], axis=1)
        model = _single_op_model(node, [X], [Y], [numpy_helper.from_array(np.array(-3, np.int64), "i")])
    elif case == "split":
        node = helper.make_node("Split", ["x", "sp"], ["y", "z"], axis=1)
        model = _single_op_model(node, [X], [Y, _f("z", None)], [_i64("sp", [3, 5])])
    elif case == "reduce_l2":
        node = helper.make_node("ReduceL2", ["x"], ["y"], axes=[1, 3], keepdims=0)
        model = _single_op_model(node, [X], [Y])
    elif case == "clip":
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
        model = _single_op_model(node, [X], [Y], [numpy_helper.from_array(np.array(-0.5, np.float32), "lo"),
                                                  numpy_helper.from_array(np.array(0.7, np.float32), "hi")])
    elif case == "topk":
        node = helper.make_node("TopK", ["x", "k"], ["y", "z"], axis=-1)
        model = _single_op_model(node, [X], [Y, helper.make_tensor_value_info("z", TensorProto.INT64, None)],
                                 [_i64("k", [3])])
    elif case == "gather_elements":
        node = helper.make_node("GatherElements", ["x", "i"], ["y"], axis=3)
        index = np.random.default_rng(4).integers(-6, 6, (2, 8, 5, 2))
        model = _single_op_model(node, [X], [Y], [_i64("i", index)])
    elif case == "expand":
        node = helper.make_node("Expand", ["x", "sh"], ["y"])
        model = _single_op_model(node, [X], [Y], [_i64("sh", [3, 1, 1, 1, 1])])
    elif case == "pad":
        node = helper.make_node("Pad", ["x", "p", "v"], ["y"])
        model = _single_op_model(node, [X], [Y], [_i64("p", [0, 0, 1, 2, 0, 0, 3, 0]),
                                                  numpy_helper.from_array(np.array(0.25, np.float32), "v")])
    elif case == "argmax":
        x[:, :, 2, 1] = x[:, :, 2, 4] = 9.0  # ties: the first maximum wins (numpy, ONNX, torch)
        node = helper.make_node("ArgMax", ["x"], ["y"], axis=3, keepdims=0)
        model = _single_op_model(node, [X], [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    else:  # per-channel Q/DQ, as INT8 calibration writes it
        scale = numpy_helper.from_array(np.linspace(0.01, 0.05, 8).astype(np.float32), "s")
        zero = numpy_helper.from_array(np.zeros(8, np.int8), "z")
        q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1)
        dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)
        graph = helper.make_graph([q, dq], "g", [X], [Y], initializer=[scale, zero])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _compare(model, x, atol=1e-6)


def test_unknown_ops_are_named():
    node = helper.make_node("Celu", ["x"], ["y"])
    with pytest.raises(RtmwEdgeError, match="unsupported ONNX ops Celu"):
        OnnxTorchGraph(_single_op_model(node, [_f("x", [1])], [_f("y", [1])]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_torch_cuda_backend_without_a_gpu_says_so(exports, capsys):
    with pytest.raises(RtmwEdgeError, match="CUDA build of PyTorch and a GPU"):
        load_engine(exports["pose"], "torch-cuda")
    image = SHARED / "images" / "000000000785.jpg"
    if image.is_file():
        code = main(["run", str(image), "--det", str(exports["det"]), "--pose", str(exports["pose"]),
                     "--backend", "torch-cuda"])
        err = capsys.readouterr().err
        assert code == 1 and "GPU" in err and "Traceback" not in err
