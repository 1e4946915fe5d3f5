"""ONNX export against independent truth: the PyTorch models, the numpy formulas of `rtmw_edge.geometry`,
real RTMDet-nano weights with the COCO photos, file hashes, and FP16 numerics.

Random weights are seeded and made "live" (`randomise`): every BatchNorm gets a random affine and running
statistics measured on a random batch (train-mode pass with momentum 1), plus a variance floor. With the default
init the activations vanish (RTMDet-nano's P5 is ~1e-12) and every comparison would be trivial; without the
floor a few near-constant channels make the random network so ill-conditioned that PyTorch FP32 itself is 5e-4
(of the max) away from PyTorch float64, more than the 1e-4 the export is held to. With both, the folded
BatchNorm of the exported graph has non-trivial mean/var, activations stay O(1), and FP32 noise is ~1e-5.

Every export is made once: the module-scoped `store` keeps the ONNX files that later tests reuse (rtmw-m,
rtmw3d-l, rtmdet-nano) and deletes the others as soon as their test is done.

ONNX Runtime on CPU is NOT an FP16 device: for an FP16 graph it inserts Casts and runs nearly every op in FP32
(its optimised graph is full of `InsertedPrecisionFreeCast` nodes and the FP16 round trips between ops are
removed). The FP16 checks therefore also run graphs node by node (`run_node_by_node`), one ORT session per node,
so that every intermediate tensor really is stored in FP16 between ops, as on a GPU.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import SHARED, coco_persons, xyxy
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rtmw_edge import __version__, geometry
from rtmw_edge.errors import CheckpointError, RtmwEdgeError, UsageError
from rtmw_edge.export import FP16_PREFIXES, export_onnx
from rtmw_edge.models import create_model
from rtmw_edge.models.checkpoint import save_checkpoint
from rtmw_edge.models.heads import ScaleNorm
from rtmw_edge.onnx_meta import read_metadata
from rtmw_edge.zoo import DET_MEAN_BGR, DET_STD_BGR, POSE_MEAN_RGB, POSE_STD_RGB, get_spec, list_models

SEED = 0
REL = 1e-4  # ORT vs PyTorch, relative to the output's max-abs
KEEP = ("rtmw-m-256x192", "rtmw3d-l-384x288", "rtmdet-nano-person")  # models/exports reused by later tests
# Run with -m slow only (the suite must stay under 15 min on 2 cores), each covered by a faster model of the same
# modules, wrapper and export code path: x-size models differ from the l-size model only in depth/width factors;
# 384x288 models differ from the 256x192 model of the same architecture only in the input size (crop, SimCC bins
# and the head's flatten width; rtmw3d-l-384x288 keeps a 384x288 RTMW-form head in the default run); RTMDet-m
# differs from RTMDet-nano in widths and in plain instead of depthwise convolutions (the pose backbones run those).
# Their architectures are still checked key for key against the official lists (test_models.py).
COVERED_BY_L = {"rtmw-x-256x192": "rtmw-l-256x192", "rtmw-x-384x288": "rtmw-l-384x288",
                "rtmw3d-x-384x288": "rtmw3d-l-384x288",
                "rtmw-l-384x288": "rtmw-l-256x192", "dwpose-l-384x288": "dwpose-l-256x192",
                "rtmpose-wb-l-384x288": "rtmpose-wb-l-256x192", "rtmdet-m-person": "rtmdet-nano-person"}
RTMDET_RAW = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
COCO = SHARED / "images" / "test_coco.json"


# --------------------------------------------------------------------------------------------- helpers
def randomise(model: nn.Module, seed: int = SEED, calibration_batch: int = 4) -> nn.Module:
    """Live random weights: BatchNorm affine U(0.3, 1) / N(0, 0.3), running stats measured on a random batch plus
    a variance floor; RTMW heatmap convs biased positive; detector classifiers rescaled so that the scores spread
    over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    w, h = model.spec.input_size
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) * 0.7 + 0.3)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=g) * 0.3)
            bn.momentum = 1.0  # the train-mode pass below sets running_mean/var to the batch statistics
        model.train()
        model(torch.randn(calibration_batch, 3, h, w, generator=g))
        model.eval()
        if model.spec.arch in ("rtmw", "rtmw3d"):
            # keypoint heatmaps mostly positive after the head's ReLU, as in a trained model: near-empty rows
            # scaled up by the token ScaleNorm make the output 10x more sensitive to FP16 weight rounding
            for layer in (model.head.final_layer, model.head.final_layer2):
                layer.bn.bias.add_(1.0)
        for bn in bns:
            bn.momentum = 0.1
            # a near-constant channel would otherwise be divided by a tiny std and amplify FP32 rounding
            # (float64 vs float32 PyTorch then differ by ~5e-4 of the max on rtmw-m, with the floor by ~1e-5)
            bn.running_var.add_(0.25 * bn.running_var.mean())
        if not model.spec.is_pose:
            for conv in model.bbox_head.rtm_cls:
                conv.weight.mul_(5.0)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.5)
    return model


def random_model(name: str) -> nn.Module:
    torch.manual_seed(SEED)
    return randomise(create_model(name))


def random_input(name: str, batch: int, seed: int = 1) -> np.ndarray:
    w, h = get_spec(name).input_size
    return np.random.default_rng(seed).standard_normal((batch, 3, h, w)).astype(np.float32)


def session_options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1  # lean on a shared 2-core machine (see `one_torch_thread`)
    return opts


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))


def torch_run(model: nn.Module, x: np.ndarray):
    with torch.no_grad():
        return model(torch.from_numpy(x))


def assert_rel_close(actual: np.ndarray, expected: np.ndarray, rel: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    assert np.isfinite(actual).all() and np.isfinite(expected).all(), f"{what}: non-finite values"
    scale = float(np.abs(expected).max())
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    assert err <= rel * max(scale, 1e-12), f"{what}: max error {err:.3g} > {rel} × max-abs {scale:.3g}"


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def anchor_tensors(proto: onnx.ModelProto) -> tuple[str, str]:
    """Names of the detector's scores [B,N] and boxes [B,N,4] of every anchor (what TopK / GatherElements read)."""
    topk = next(n for n in proto.graph.node if n.op_type == "TopK")
    gather = next(n for n in proto.graph.node if n.op_type == "GatherElements")
    return topk.input[0], gather.input[0]


def detector_session(path) -> ort.InferenceSession:
    """Session over the exported detector with two more outputs, the tensors the TopK reads: `all_scores` [B,N]
    and `all_boxes` [B,N,4] (every anchor, in anchor order), so they can be compared without any ordering."""
    proto = onnx.load(str(path))
    for name, new in zip(anchor_tensors(proto), ("all_scores", "all_boxes")):
        proto.graph.node.append(helper.make_node("Identity", [name], [new]))
        proto.graph.output.append(helper.make_tensor_value_info(new, TensorProto.FLOAT, None))
    return ort.InferenceSession(proto.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])


def decode_reference(model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All boxes [B,N,4] and scores [B,N] of the PyTorch detector, by the numpy formula."""
    cls_scores, bbox_preds = torch_run(model, x)
    return geometry.decode_rtmdet([c.numpy() for c in cls_scores], [b.numpy() for b in bbox_preds],
                                  model.spec.strides)


def assert_topk_matches(boxes: np.ndarray, scores: np.ndarray, ref_boxes: np.ndarray, ref_scores: np.ndarray,
                        what: str) -> None:
    """ORT top-k (one image) vs the reference taken in the same order (argsort scores desc, stable).

    Scores must agree slot by slot. A box must equal the reference box of its slot, except where two scores are
    within the tolerance (their order is then a rounding coin flip): such a slot must hold the box of one of the
    reference candidates whose score ties with it.
    """
    k = len(scores)
    order = np.argsort(-ref_scores, kind="stable")
    tol_s = REL * float(np.abs(ref_scores).max())
    tol_b = REL * float(np.abs(ref_boxes).max())
    assert_rel_close(scores, ref_scores[order[:k]], REL, f"{what} scores")
    assert np.all(np.diff(scores) <= 0), f"{what}: top-k scores not sorted"
    off = np.flatnonzero(np.abs(boxes - ref_boxes[order[:k]]).max(axis=1) > tol_b)
    for i in off:
        tied = np.flatnonzero(np.abs(ref_scores - scores[i]) <= tol_s)
        assert len(tied) > 1 and np.abs(ref_boxes[tied] - boxes[i]).max(axis=1).min() <= tol_b, \
            f"{what}: slot {i} box {boxes[i]} is not the reference box {ref_boxes[order[i]]} nor a tied one"
    assert len(off) <= max(3, k // 50), f"{what}: {len(off)} of {k} slots only match through score ties"


class Store:
    """Module-wide cache of random models and of their exports (each export made once)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.models: dict[str, nn.Module] = {}
        self.paths: dict[tuple, Path] = {}

    def model(self, name: str) -> nn.Module:
        if name in self.models:
            return self.models[name]
        model = random_model(name)
        if name in KEEP:
            self.models[name] = model
        return model

    def export(self, name: str, model: nn.Module | None = None, **kw) -> Path:
        key = (name, tuple(sorted(kw.items())))
        if key not in self.paths:
            tag = "-".join(f"{k}_{v}" for k, v in sorted(kw.items())) or "plain"
            path = self.folder / f"{name}.{tag}.onnx"
            self.paths[key] = export_onnx(name, path, model=model or self.model(name), progress=False, **kw)
        return self.paths[key]

    def forget(self, name: str) -> None:
        if name in KEEP:
            return
        self.models.pop(name, None)
        for key in [k for k in self.paths if k[0] == name]:
            self.paths.pop(key).unlink(missing_ok=True)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One PyTorch thread (and one ORT thread per session): on 2 cores shared with other jobs, OpenMP's second
    thread mostly waits for a descheduled peer; one thread was faster and steadier here (load average ~5)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return Store(tmp_path_factory.mktemp("exports"))


# ------------------------------------------------------------------ 1. every model: ORT == PyTorch
MODEL_PARAMS = [pytest.param(name, marks=pytest.mark.slow, id=name) if name in COVERED_BY_L else name
                for name in list_models()]


@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_export_matches_pytorch(name: str, store: Store) -> None:
    """Dynamic-batch export of every registered model; ORT at batch 1 and 5 equals PyTorch within 1e-4 of the
    output's max-abs (pose: raw SimCC logits; detectors: boxes/scores of every anchor, read at the TopK input,
    equal `geometry.decode_rtmdet` of the raw PyTorch head, and the top-k outputs take them in score order).
    The models in COVERED_BY_L are marked slow: a faster model of the same architecture covers the code path."""
    spec = get_spec(name)
    model = store.model(name)
    try:
        path = store.export(name)
        proto = onnx.load(str(path), load_external_data=False)
        outputs = {o.name: o for o in proto.graph.output}
        expected = (["simcc_x", "simcc_y", "simcc_z"][: len(spec.simcc_bins)] if spec.is_pose
                    else ["boxes", "scores"])
        assert list(outputs) == expected
        (image,) = proto.graph.input
        assert image.name == "input" and image.type.tensor_type.elem_type == TensorProto.FLOAT
        w, h = spec.input_size
        assert isinstance(dims(image)[0], str) and dims(image)[1:] == [3, h, w]  # dynamic batch
        assert all(isinstance(dims(o)[0], str) for o in outputs.values())
        del proto
        sess = session(path) if spec.is_pose else detector_session(path)
        for batch in (1, 5):
            x = random_input(name, batch, seed=batch)
            got = run(sess, x)
            if spec.is_pose:
                ref = torch_run(model, x)
                for out_name, r in zip(expected, ref):
                    assert got[out_name].shape == (batch, spec.num_keypoints, r.shape[-1])
                    assert_rel_close(got[out_name], r.numpy(), REL, f"{name} b{batch} {out_name}")
            else:
                ref_boxes, ref_scores = decode_reference(model, x)
                assert_rel_close(got["all_scores"], ref_scores, REL, f"{name} b{batch} all scores")
                assert_rel_close(got["all_boxes"], ref_boxes, REL, f"{name} b{batch} all boxes")
                k = min(1000, ref_scores.shape[1])
                assert got["boxes"].shape == (batch, k, 4) and got["scores"].shape == (batch, k)
                for i in range(batch):
                    assert_topk_matches(got["boxes"][i], got["scores"][i], ref_boxes[i], ref_scores[i],
                                        f"{name} b{batch} image {i}")
        del sess
    finally:
        del model
        store.forget(name)


# ------------------------------------------------------------------ 2. in-graph decode == geometry.simcc_decode
def _split_signs(model: nn.Module, x: np.ndarray, k: int) -> nn.Module:
    """Copy of `model` whose cls_x gives keypoints of even index a positive, odd index a negative max logit
    (on image 0 of x): W_x ← 0.1·W_x + 40·1⊗u with u·token_k = ±1 (least squares over the 256-d tokens).

    cls_x is one Linear shared by all keypoints, so 'negating the weights of half the keypoints' is not
    possible; a common direction u that the keypoint tokens project onto with alternating signs is."""
    model = copy.deepcopy(model)
    tokens = {}
    hook = model.head.gau.register_forward_hook(lambda _m, _i, out: tokens.setdefault("t", out))
    torch_run(model, x)
    hook.remove()
    t0 = tokens["t"][0].double().numpy()                            # K×256
    signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
    u = np.linalg.lstsq(t0, signs, rcond=None)[0]
    assert np.allclose(t0 @ u, signs, atol=1e-6)
    with torch.no_grad():
        w = model.head.cls_x.weight
        w.mul_(0.1).add_(40.0 * torch.from_numpy(u).float()[None, :])
    return model


def test_decode_equals_numpy_decode(store: Store) -> None:
    """`decode=True`: keypoints equal geometry.simcc_decode of the non-decode export's logits exactly, scores to
    1e-6, including score ≤ 0 → (−1, −1) (constructed: odd keypoints of image 0 get a negative max_x)."""
    name = "rtmw-m-256x192"
    spec = get_spec(name)
    x = random_input(name, 2, seed=7)
    model = _split_signs(store.model(name), x, spec.num_keypoints)
    folder = store.folder / "decode"
    folder.mkdir()
    raw = run(session(export_onnx(name, folder / "raw.onnx", model=model, progress=False)), x)
    dec = run(session(export_onnx(name, folder / "dec.onnx", model=model, decode=True, progress=False)), x)
    del model
    assert list(dec) == ["keypoints", "scores"]
    kp, sc = geometry.simcc_decode(raw["simcc_x"], raw["simcc_y"], spec.simcc_split_ratio)
    assert dec["keypoints"].dtype == np.float32 and dec["keypoints"].shape == (2, spec.num_keypoints, 2)
    np.testing.assert_array_equal(dec["keypoints"], kp)
    np.testing.assert_allclose(dec["scores"], sc, rtol=0, atol=1e-6)
    # the construction worked: image 0 has exactly the odd keypoints at score ≤ 0, and they sit at (−1, −1)
    neg = dec["scores"][0] <= 0
    np.testing.assert_array_equal(neg, np.arange(spec.num_keypoints) % 2 == 1)
    assert np.all(dec["keypoints"][0][neg] == -1.0)
    assert np.all(dec["keypoints"][0][~neg] >= 0) and len(np.unique(dec["keypoints"][0][~neg, 0])) > 5


def test_decode_3d_equals_numpy_decode(store: Store) -> None:
    """RTMW3D `decode=True`: keypoints/scores as simcc_decode, z = geometry.simcc_decode_z of simcc_z."""
    name = "rtmw3d-l-384x288"
    spec = get_spec(name)
    x = random_input(name, 2, seed=3)
    raw = run(session(store.export(name)), x)
    dec = run(session(store.export(name, decode=True)), x)
    assert list(dec) == ["keypoints", "scores", "z"]
    kp, sc = geometry.simcc_decode(raw["simcc_x"], raw["simcc_y"], spec.simcc_split_ratio)
    np.testing.assert_array_equal(dec["keypoints"], kp)
    np.testing.assert_allclose(dec["scores"], sc, rtol=0, atol=1e-6)
    z = geometry.simcc_decode_z(raw["simcc_z"], spec.simcc_split_ratio)
    assert dec["z"].shape == (2, spec.num_keypoints) and dec["z"].dtype == np.float32
    np.testing.assert_array_equal(dec["z"], z)
    assert len(np.unique(z)) > 10  # not a degenerate constant


# ------------------------------------------------------------------ 3. flip test
def test_flip_test_equals_official_rule(store: Store) -> None:
    """`flip_test=True` (batch 3): ORT == ½ (PyTorch(x) + flip_simcc(PyTorch(x mirrored))) within 1e-4 rel."""
    name = "rtmw-m-256x192"
    spec = get_spec(name)
    model = store.model(name)
    x = random_input(name, 3, seed=5)
    got = run(session(store.export(name, flip_test=True)), x)
    sx, sy = (t.numpy() for t in torch_run(model, x))
    fx, fy = (t.numpy() for t in torch_run(model, np.ascontiguousarray(x[..., ::-1])))
    fx, fy = geometry.flip_simcc(fx, fy, spec.flip_indices)
    assert_rel_close(got["simcc_x"], (sx + fx) / 2, REL, "flip simcc_x")
    assert_rel_close(got["simcc_y"], (sy + fy) / 2, REL, "flip simcc_y")
    # the flip branch matters: the plain logits are far from the averaged ones
    assert np.abs(sx - (sx + fx) / 2).max() > 100 * REL * np.abs(sx).max()


def test_flip_test_with_decode(store: Store) -> None:
    """`decode=True, flip_test=True`: the decode applies to the flip-averaged logits (same rule as without flip)."""
    name = "rtmw-m-256x192"
    spec = get_spec(name)
    x = random_input(name, 3, seed=5)
    logits = run(session(store.export(name, flip_test=True)), x)
    dec = run(session(store.export(name, flip_test=True, decode=True)), x)
    kp, sc = geometry.simcc_decode(logits["simcc_x"], logits["simcc_y"], spec.simcc_split_ratio)
    np.testing.assert_array_equal(dec["keypoints"], kp)
    np.testing.assert_allclose(dec["scores"], sc, rtol=0, atol=1e-6)
    meta = read_metadata(store.export(name, flip_test=True, decode=True))
    assert meta["flip_test"] is True and meta["decoded"] is True and meta["outputs"] == ["keypoints", "scores"]


# ------------------------------------------------------------------ 4. FP16
def run_node_by_node(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `model` one node at a time (one ORT session per node), so every intermediate tensor is stored at its
    ONNX dtype between ops — ORT cannot fuse FP16 round trips away. Returns every tensor by name."""
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    values.update(feeds)
    opts = session_options()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for node in model.graph.node:
        names = list(dict.fromkeys(n for n in node.input if n))
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype), values[n].shape)
                  for n in names]
        graph = helper.make_graph([node], "node", inputs, [helper.make_empty_tensor_value_info(n) for n in node.output])
        single = helper.make_model(graph, opset_imports=model.opset_import)
        single.ir_version = model.ir_version
        sess = ort.InferenceSession(single.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        values.update(zip(node.output, sess.run(None, {n: values[n] for n in names})))
    return values


def _all_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Every float tensor of the graph in FP16: I/O, initializers, Constant values, Cast targets."""
    g = proto.graph
    for v in [*g.input, *g.output, *g.value_info]:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16)))
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
    return proto


def _reduce_l2_as_tensorrt(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ReduceL2 → ReduceSumSquare + Sqrt: what TensorRT's ONNX parser builds for ReduceL2 (onnx-tensorrt
    `DEFINE_BUILTIN_OP_IMPORTER(ReduceL2)`), so the sum of squares is an FP16 tensor of its own."""
    nodes = []
    for n in proto.graph.node:
        if n.op_type == "ReduceL2":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            nodes += [helper.make_node("ReduceSumSquare", list(n.input), ["sum_of_squares"], name=n.name + "_ssq",
                                       **attrs),
                      helper.make_node("Sqrt", ["sum_of_squares"], list(n.output), name=n.name + "_sqrt")]
        else:
            nodes.append(n)
    assert sum(n.op_type == "ReduceSumSquare" for n in nodes) == 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


class _ScaleNormModule(nn.Module):
    def __init__(self, safe: bool) -> None:
        super().__init__()
        self.norm = ScaleNorm(256)
        self.safe = safe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm.forward_fp16_safe(x) if self.safe else self.norm(x)


def _scalenorm_fp16_graph(safe: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_ScaleNormModule(safe).eval(), (torch.randn(2, 8, 256),), buffer, input_names=["x"],
                          output_names=["y"], opset_version=17, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    assert [n.op_type for n in proto.graph.node].count("ReduceMax") == int(safe)
    return _all_fp16(_reduce_l2_as_tensorrt(proto))


def test_scalenorm_fp16_overflow_and_safe_form() -> None:
    """256 channels with |x| in [20, 200]: every x² ≤ 40 000 fits FP16, Σx² ≈ 3–4·10⁶ ≫ 65 504 does not.

    Truly FP16 (graph entirely FP16, node by node, ReduceL2 split as TensorRT does): the naive ScaleNorm's sum of
    squares is inf, so its norm saturates and the output collapses to ~0 (relative error 1); the safe form's sum of
    squares is ≤ 256 and its output is finite and within 1e-2 of float64.
    """
    rng = np.random.default_rng(0)
    x = (rng.uniform(20, 200, (2, 8, 256)) * rng.choice([-1.0, 1.0], (2, 8, 256))).astype(np.float16)
    x64 = x.astype(np.float64)
    ssq64 = (x64 ** 2).sum(-1)
    assert ssq64.min() > 30 * 65504 and np.abs(x64).max() ** 2 < 65504
    ref = x64 / np.maximum(np.sqrt(ssq64)[..., None] * 256 ** -0.5, 1e-5)

    naive = run_node_by_node(_scalenorm_fp16_graph(safe=False), {"x": x})
    assert naive["sum_of_squares"].dtype == np.float16 and np.isinf(naive["sum_of_squares"]).all()
    y = naive["y"].astype(np.float64)
    assert not np.isfinite(y).all() or np.abs(y - ref).max() > 0.5 * np.abs(ref).max()  # inf/nan or collapsed
    # what it does: sqrt(inf)·d^-½ = inf, Clip's FP16 upper bound makes it 65504, y = x/65504 ≈ 0 (ref max ≈ 1.8)
    assert np.abs(y).max() <= 200 / 65504 + 1e-6 and np.abs(ref).max() > 1

    safe = run_node_by_node(_scalenorm_fp16_graph(safe=True), {"x": x})
    assert safe["sum_of_squares"].dtype == np.float16 and np.isfinite(safe["sum_of_squares"]).all()
    assert safe["sum_of_squares"].max() <= 256
    assert safe["y"].dtype == np.float16 and np.isfinite(safe["y"]).all()
    assert np.abs(safe["y"].astype(np.float64) - ref).max() <= 1e-2 * np.abs(ref).max()

    # the same in PyTorch half precision: the sum of squares overflows, the safe form does not
    xt = torch.from_numpy(x)
    assert torch.isinf((xt * xt).sum(-1)).all()
    with torch.no_grad():
        y_safe = ScaleNorm(256).half().forward_fp16_safe(xt)
    assert y_safe.dtype == torch.float16 and torch.isfinite(y_safe).all()
    assert np.abs(y_safe.double().numpy() - ref).max() <= 1e-2 * np.abs(ref).max()


def test_export_traces_the_fp16_safe_scalenorm(store: Store) -> None:
    """Every ScaleNorm of the exported graph (one ReduceL2 each) normalises by ReduceMax(|x|) first."""
    proto = onnx.load(str(store.export("rtmw-m-256x192")))
    producer = {o: n for n in proto.graph.node for o in n.output}
    l2 = [n for n in proto.graph.node if n.op_type == "ReduceL2"]
    assert len(l2) == 3  # head.mlp, head.mlp2, head.gau.ln
    for node in l2:
        div = producer[node.input[0]]
        assert div.op_type == "Div", node.name
        chain, name = [], div.input[1]
        while name in producer and len(chain) < 4:
            chain.append(producer[name].op_type)
            name = producer[name].input[0]
        assert "ReduceMax" in chain, (node.name, chain)


def test_export_traces_the_fp16_safe_gau(store: Store) -> None:
    """The GAU's attention product q·kᵀ is formed from q and k already scaled by s^-1/4 (RTMCCBlock.fp16_safe): no
    unscaled q·kᵀ (√s = 11.3× larger, the value an FP16 build would overflow first) exists in the exported graph."""
    from rtmw_edge.models.heads import GAU_S

    proto = onnx.load(str(store.export("rtmw-m-256x192")))
    producer = {o: n for n in proto.graph.node for o in n.output}
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR})
    relus = [n for n in proto.graph.node if n.op_type == "Relu" and "/gau/" in n.name]
    assert len(relus) == 1
    product = producer[relus[0].input[0]]
    assert product.op_type == "MatMul", f"relu(q·kᵀ) is fed by {product.op_type}: the product is scaled after the fact"
    for operand in product.input:
        node = producer[operand]
        if node.op_type == "Transpose":
            node = producer[node.input[0]]
        assert node.op_type == "Mul", node.op_type
        scale = [consts[i] for i in node.input if i in consts]
        assert scale and np.allclose(scale[0], GAU_S ** -0.25)


@pytest.mark.parametrize("name", ["rtmw-m-256x192", "rtmdet-nano-person"])
def test_fp16_export(name: str, store: Store) -> None:
    """`precision="fp16"`: FP32 I/O; the conv trunk (FP16_PREFIXES) has FLOAT16 weights, every other node runs in
    FP32 (no FLOAT16 tensor or initializer feeds it; GAU and token MLPs in particular); ORT output within 1e-2 of
    the FP32 export (also when truly run in FP16 node by node); with inputs × 50 ORT stays finite, and truly in
    FP16 every tensor stays finite at × 50 (detector) / × 5 (RTMW-m, whose ScaleNorm inputs then reach
    Σx² ≫ 65504: the naive FP16 form would overflow there)."""
    spec = get_spec(name)
    path = store.export(name, precision="fp16")
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = proto.graph
    assert [i.type.tensor_type.elem_type for i in g.input] == [TensorProto.FLOAT]
    assert {o.type.tensor_type.elem_type for o in g.output} == {TensorProto.FLOAT}
    init_type = {i.name: i.data_type for i in g.initializer}
    tensor_type = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    tensor_type.update(init_type)

    convs = [n for n in g.node if n.op_type == "Conv"]
    half_convs = [n for n in convs if n.name.startswith(FP16_PREFIXES)]
    assert len(half_convs) > 50
    for n in half_convs:
        assert init_type.get(n.input[1]) == TensorProto.FLOAT16, n.name
    for n in convs:
        if not n.name.startswith(FP16_PREFIXES):  # detector rtm_cls / rtm_reg
            assert init_type.get(n.input[1]) == TensorProto.FLOAT, n.name
    fp32_nodes = [n for n in g.node if not n.name.startswith(FP16_PREFIXES) and n.op_type != "Cast"]
    assert fp32_nodes
    for n in fp32_nodes:
        fed = [i for i in n.input if i and tensor_type.get(i) == TensorProto.FLOAT16]
        assert not fed, f"{n.name} ({n.op_type}) is outside FP16_PREFIXES but reads FP16 {fed}"
    for n in g.node:
        if n.name.startswith(("/model/head/gau", "/model/head/mlp")):
            assert not [i for i in n.input if init_type.get(i) == TensorProto.FLOAT16], n.name
    if spec.is_pose:
        assert any(n.name.startswith("/model/head/gau") for n in g.node)

    x = random_input(name, 2, seed=11)
    opener = session if spec.is_pose else detector_session  # detectors: compare every anchor, not the top-k order
    sess16, sess32 = opener(path), opener(store.export(name))
    got, ref = run(sess16, x), run(sess32, x)
    for out in ref:
        assert got[out].dtype == np.float32
        if out != "boxes":  # top-k boxes come in score order, which FP16 may permute among near-equal scores
            assert_rel_close(got[out], ref[out], 1e-2, f"{name} fp16 {out}")
    # ORT CPU at inputs × 50 (a weak check: ORT computes the FP16 ops in FP32, see the module docstring)
    assert all(np.isfinite(v).all() for v in run(sess16, x * 50).values())

    # truly FP16, node by node: at × 1 still within 1e-2 of FP32
    outs = {o.name: o.name for o in g.output} if spec.is_pose else dict(zip(anchor_tensors(proto),
                                                                             ("all_scores", "all_boxes")))
    values = run_node_by_node(proto, {"input": x})
    assert sum(v.dtype == np.float16 for v in values.values()) > 100
    for out, key in outs.items():
        assert_rel_close(values[out], ref[key], 1e-2, f"{name} node-by-node fp16 {out}")
    # large activations: random RTMW-m's trunk leaves the FP16 range beyond inputs × ~10 (×50 is ~40× outside
    # the normalised-pixel range), so it is held at × 5, where its token ScaleNorms see Σx² up to ~1e9
    scale = 5 if spec.is_pose else 50
    values = run_node_by_node(proto, {"input": x * scale})
    assert [k for k, v in values.items() if v.dtype == np.float16 and not np.isfinite(v).all()] == []
    assert all(np.isfinite(values[out]).all() for out in outs)
    if spec.is_pose:  # an FP16 naive ScaleNorm would overflow here; the export's FP32 head does not
        producer = {o: n for n in g.node for o in n.output}
        norm_inputs = [producer[n.input[0]].input[0] for n in g.node if n.op_type == "ReduceL2"]
        assert max((values[t].astype(np.float64) ** 2).sum(-1).max() for t in norm_inputs) > 100 * 65504


# ------------------------------------------------------------------ 5. detector with real weights
@pytest.fixture(scope="module")
def real_rtmdet(store: Store):
    if not RTMDET_RAW.is_file() or not COCO.is_file():
        pytest.skip(f"shared RTMDet weights or COCO photos not found under {SHARED}")
    try:
        from onnx_weights import load_folded_rtmdet
    except ImportError as exc:
        pytest.skip(f"tests/onnx_weights.py (load_folded_rtmdet) not available: {exc}")
    model = create_model("rtmdet-nano-person")
    load_folded_rtmdet(model, RTMDET_RAW)
    folder = store.folder / "real"
    folder.mkdir()
    plain = export_onnx("rtmdet-nano-person", folder / "det.onnx", model=model, progress=False)
    with_nms = export_onnx("rtmdet-nano-person", folder / "det_nms.onnx", model=model, nms=True, progress=False)
    return plain, with_nms


@pytest.fixture(scope="module")
def photos():
    import cv2

    gt = coco_persons(COCO)
    return {name: (cv2.imread(str(COCO.parent / name)), xyxy(persons)) for name, persons in gt.items()}


def test_real_rtmdet_export_finds_every_person(real_rtmdet, photos) -> None:
    """Our export with the official RTMDet-nano weights: recognised as kind "project", finds all 12 non-crowd GT
    persons with keypoints at IoU ≥ 0.5 (score > 0.3), and agrees with the official raw-head graph itself."""
    from rtmw_edge.detectors import OnnxDetector

    plain, with_nms = real_rtmdet
    det, official = OnnxDetector(plain), OnnxDetector(RTMDET_RAW)
    sig = det.signature
    assert sig.kind == "project" and not sig.has_nms and sig.input_size == (320, 320)
    assert sig.mean == DET_MEAN_BGR and sig.std == DET_STD_BGR and not sig.swap_rb and sig.strides == (8, 16, 32)
    assert OnnxDetector(with_nms).signature.has_nms
    found = 0
    for name, (image, gt) in photos.items():
        boxes, scores = det(image)
        assert len(boxes) and np.all(scores > 0.3)
        hit = geometry.box_iou(gt, boxes).max(axis=1) >= 0.5
        assert hit.all(), f"{name}: GT persons {np.flatnonzero(~hit)} missed"
        found += int(hit.sum())
        ref_boxes, ref_scores = official(image)
        assert len(ref_boxes) == len(boxes), name
        assert np.diag(geometry.box_iou(boxes, ref_boxes)).min() > 0.999, name
        np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
        nms_boxes, nms_scores = OnnxDetector(with_nms)(image)
        np.testing.assert_allclose(nms_boxes, boxes, atol=1e-3)
        np.testing.assert_allclose(nms_scores, scores, atol=1e-6)
    assert found == 12


def test_nms_export_equals_numpy_nms(real_rtmdet, photos) -> None:
    """`nms=True` (batch 2, real photos): boxes are the top-k boxes unchanged; kept slots keep their score and
    equal geometry.nms over the top-k boxes with score > 0.05 at IoU 0.6; suppressed slots have score 0."""
    from rtmw_edge.detectors import OnnxDetector

    plain, with_nms = real_rtmdet
    spec = get_spec("rtmdet-nano-person")
    det = OnnxDetector(plain)
    x = np.concatenate([det.preprocess(image)[0] for image, _ in list(photos.values())[2:]], axis=0)
    topk, nms = run(session(plain), x), run(session(with_nms), x)
    assert nms["boxes"].shape == topk["boxes"].shape == (2, 1000, 4)
    np.testing.assert_array_equal(nms["boxes"], topk["boxes"])
    for i in range(2):
        boxes, scores = topk["boxes"][i], topk["scores"][i]
        candidates = np.flatnonzero(scores > spec.score_threshold)
        keep = candidates[geometry.nms(boxes[candidates], scores[candidates], spec.nms_iou)]
        kept = np.flatnonzero(nms["scores"][i] > 0)
        assert len(candidates) > len(keep) >= 4  # NMS removed something, real persons remain
        np.testing.assert_array_equal(np.sort(kept), np.sort(keep))
        np.testing.assert_array_equal(nms["scores"][i][kept], scores[kept])
        assert np.all(np.delete(nms["scores"][i], kept) == 0)
    meta = read_metadata(with_nms)
    assert meta["nms"] is True and meta["topk"] == 1000 and meta["nms_iou"] == spec.nms_iou


# ------------------------------------------------------------------ 6. metadata
def test_pose_metadata_round_trip(tmp_path: Path) -> None:
    """Export from a checkpoint file: the metadata describes the model and carries the file's sha256; the graph
    runs the checkpoint's weights (scores equal the PyTorch model's decoded scores)."""
    name = "dwpose-t-256x192"
    spec = get_spec(name)
    model = randomise(create_model(name))
    ckpt = save_checkpoint(model, tmp_path / "weights.pth")
    path = export_onnx(name, tmp_path / "pose.onnx", checkpoint=ckpt, decode=True, progress=False)
    meta = read_metadata(path)
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["name"] == name and meta["task"] == "pose2d" and meta["arch"] == "rtmpose"
    assert meta["input_size"] == [192, 256] and meta["input_name"] == "input" and meta["batch"] == "dynamic"
    assert meta["mean"] == list(POSE_MEAN_RGB) and meta["std"] == list(POSE_STD_RGB) and meta["color"] == "rgb"
    assert meta["num_keypoints"] == 133 and len(meta["keypoint_names"]) == 133
    assert meta["keypoint_names"] == list(spec.keypoints.names) and meta["keypoint_names"][0] == "nose"
    assert meta["flip_indices"] == spec.flip_indices and sorted(meta["flip_indices"]) == list(range(133))
    assert meta["simcc_split_ratio"] == 2.0 and meta["decoded"] is True and meta["flip_test"] is False
    assert meta["outputs"] == ["keypoints", "scores"] and meta["precision"] == "fp32"
    assert meta["package_version"] == __version__ and meta["schema_version"] == 1
    x = random_input(name, 2)
    got = run(session(path), x)
    sx, sy = (t.numpy() for t in torch_run(model, x))
    np.testing.assert_allclose(got["scores"], np.minimum(sx.max(-1), sy.max(-1)), rtol=0,
                               atol=REL * np.abs(sx).max())


def test_detector_metadata(store: Store) -> None:
    meta = read_metadata(store.export("rtmdet-nano-person"))
    assert meta["task"] == "detector" and meta["name"] == "rtmdet-nano-person" and meta["color"] == "bgr"
    assert meta["strides"] == [8, 16, 32] and meta["topk"] == 1000 and meta["nms"] is False
    assert meta["mean"] == list(DET_MEAN_BGR) and meta["std"] == list(DET_STD_BGR)
    assert meta["input_size"] == [320, 320] and meta["outputs"] == ["boxes", "scores"]
    assert meta["checkpoint_sha256"] is None  # built model passed in: no file to hash
    assert "keypoint_names" not in meta


# ------------------------------------------------------------------ 7. errors and fixed batch
def _one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert message and "\n" not in message
    return message


def test_wrong_architecture_checkpoint_leaves_no_file(tmp_path: Path) -> None:
    ckpt = save_checkpoint(create_model("rtmpose-t-256x192"), tmp_path / "tiny.pth")
    out = tmp_path / "out.onnx"
    with pytest.raises(CheckpointError) as err:
        export_onnx("rtmpose-s-256x192", out, checkpoint=ckpt, progress=False)
    assert "does not fit rtmpose-s-256x192" in _one_line_error(err)
    assert isinstance(err.value, RtmwEdgeError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pth"]  # no output, no temporary left
    out.write_bytes(b"previous export")  # a failed re-export leaves an existing file as it was
    with pytest.raises(CheckpointError):
        export_onnx("rtmpose-s-256x192", out, checkpoint=ckpt, progress=False)
    assert out.read_bytes() == b"previous export" and len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("rtmpose-t-256x192", {}, "checkpoint"),
    ("rtmpose-t-256x192", {"random_init": True, "precision": "int8"}, "precision"),
    ("rtmpose-t-256x192", {"random_init": True, "batch": 0}, "batch"),
    ("rtmw3d-l-384x288", {"random_init": True, "flip_test": True}, "flip"),
    ("rtmdet-nano-person", {"random_init": True, "decode": True}, "detector"),
    ("rtmpose-t-256x192", {"random_init": True, "parent_is_file": True}, "is a file, not a folder"),
], ids=["no-weights", "bad-precision", "batch-0", "pose3d-flip", "detector-decode", "parent-is-a-file"])
def test_export_argument_errors(name: str, kwargs: dict, match: str, tmp_path: Path) -> None:
    if kwargs.pop("parent_is_file", False):
        (tmp_path / "notes.txt").write_text("a file, not a folder")
        out = tmp_path / "notes.txt" / "out.onnx"
    else:
        out = tmp_path / "out.onnx"
    before = sorted(tmp_path.iterdir())
    with pytest.raises(RtmwEdgeError, match=match) as err:
        export_onnx(name, out, progress=False, **kwargs)
    _one_line_error(err)
    assert isinstance(err.value, UsageError)  # found before any work: the CLI exits 2
    assert not out.exists() and sorted(tmp_path.iterdir()) == before


def test_export_creates_missing_output_folders(tmp_path: Path) -> None:
    out = export_onnx("rtmpose-t-256x192", tmp_path / "new" / "folder" / "t.onnx", random_init=True, progress=False)
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == ["t.onnx"]
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # readable by a service user, like any file made here


def test_fixed_batch_export(tmp_path: Path) -> None:
    name = "rtmpose-t-256x192"
    path = export_onnx(name, tmp_path / "b3.onnx", random_init=True, batch=3, progress=False)
    proto = onnx.load(str(path))
    assert dims(proto.graph.input[0]) == [3, 3, 256, 192]
    assert [dims(o) for o in proto.graph.output] == [[3, 17, 384], [3, 17, 512]]
    assert read_metadata(proto)["batch"] == 3
    sess = session(path)
    assert run(sess, random_input(name, 3))["simcc_x"].shape == (3, 17, 384)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run(sess, random_input(name, 2))
