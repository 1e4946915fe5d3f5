"""INT8 building blocks on small hand-built graphs: ranges, sampling, MACs, placement, Q/DQ rewrite and its
checks, the switchable sensitivity model, bias correction. No shared files, a few seconds in all."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtmw_edge.calibrate.data import _spread as spread
from rtmw_edge.calibrate.data import allocate, apply_detector_aug, apply_pose_aug
from rtmw_edge.calibrate.fidelity import Target, detection_fidelity
from rtmw_edge.calibrate.quantize import (
    bias_correct,
    collect_statistics,
    find_layers,
    int8_mac_share,
    match_layers,
    plan_placement,
    prepare_model,
    quantize_qdq,
    shared_clips,
    validate_qdq,
)
from rtmw_edge.calibrate.ranges import AbsHistogram, RangeCollector
from rtmw_edge.calibrate.sensitivity import SwitchableModel
from rtmw_edge.errors import RtmwEdgeError


# --------------------------------------------------------------------------- a small CSP-like graph
def _conv(name, x, cin, cout, k, rng, group=1, silu=True):
    w = numpy_helper.from_array((rng.standard_normal((cout, cin // group, k, k)) * 0.4).astype(np.float32), f"{name}.w")
    b = numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}.b")
    nodes = [helper.make_node("Conv", [x, w.name, b.name], [f"{name}.y"], name=name, pads=[k // 2] * 4,
                              group=group, kernel_shape=[k, k])]
    out = f"{name}.y"
    if silu:
        nodes += [helper.make_node("Sigmoid", [out], [f"{name}.s"], name=f"{name}.sig"),
                  helper.make_node("Mul", [out, f"{name}.s"], [f"{name}.a"], name=f"{name}.mul")]
        out = f"{name}.a"
    return nodes, [w, b], out


def tiny_model(opset: int = 17):
    """stem 3→8 (3×3) → depthwise 8 (3×3) → pointwise 8; residual Add(stem, pointwise); side 1×1 8→4 from the
    stem; Concat(add, side) → head 12→2. Input 1×3×16×16 (dynamic batch)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for args in (("stem", "x", 3, 8, 3), ("dw", "stem.a", 8, 8, 3, 8), ("pw", "dw.a", 8, 8, 1),
                 ("side", "stem.a", 8, 4, 1)):
        n, i, _ = _conv(*args[:5], rng, *(args[5:]))
        nodes += n
        inits += i
    nodes += [helper.make_node("Add", ["pw.a", "stem.a"], ["res"], name="res_add"),
              helper.make_node("Concat", ["res", "side.a"], ["cat"], name="cat", axis=1)]
    n, i, _ = _conv("head", "cat", 12, 2, 1, rng, silu=False)
    nodes += n
    inits += i
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("head.y", TensorProto.FLOAT, ["n", 2, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model, x, level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def tiny():
    model = prepare_model(tiny_model(opset=11))  # opset 11 in, 13 out (per-axis DequantizeLinear)
    layers = find_layers(model)
    x = np.random.default_rng(1).standard_normal((24, 3, 16, 16)).astype(np.float32)
    full = plan_placement(model, layers, [la.name for la in layers])
    stats = collect_statistics(model, full.tensors, [x[i:i + 8] for i in range(0, 24, 8)])
    return model, layers, x, full, shared_clips(model, stats.amax("percentile", 99.99))


# --------------------------------------------------------------------------- ranges
def test_histogram_keeps_exact_max_and_counts_when_it_grows():
    h = AbsHistogram(bins=256)
    h.add(np.array([0.5, -1.0]))
    h.add(np.array([7.0, -300.0, 2.0]))  # range grows 300×: bins merge pairwise
    assert h.max == 300.0 and h.count == 5 and h.counts.sum() == 5
    assert h.width * h.bins > 300.0 > h.width * h.bins / 2  # at least half the bins cover the data
    assert h.amax("max") == 300.0


def test_clip_methods_on_known_distributions():
    rng = np.random.default_rng(0)
    h = AbsHistogram()
    for chunk in np.array_split(rng.standard_normal(1_000_000), 5):
        h.add(chunk)
    assert h.amax("percentile", 99.0) == pytest.approx(2.576, abs=0.02)  # two-sided 99 % of N(0, 1)
    assert 3.0 < h.amax("entropy") < h.amax("max")
    assert h.amax("percentile", 100.0) == pytest.approx(h.max, rel=1e-3)
    assert 2.0 < h.amax("mse") < h.amax("max")
    with pytest.raises(RtmwEdgeError, match="unknown calibration method"):
        h.amax("kl")


def test_percentile_clip_is_the_upper_edge_of_the_bin_that_reaches_the_share():
    """Hand-computed: width 1 (fixed by a first value of 255 over 256 bins), then 89 values in bin 10 and 9 in
    bin 20, + 1 in bin 0: the cumulative share is 0.01 after bin 0, 0.90 after bin 10, 0.99 after bin 20, 1.0 at
    bin 255. The p-th percentile lies in the first bin whose cumulative share reaches p, so the clip is that bin's
    upper edge."""
    h = AbsHistogram(bins=256)
    h.add(np.array([255.0]))
    assert h.width == 1.0
    h.add(np.concatenate([np.full(89, 10.5), np.full(9, -20.25), [0.5]]))
    assert h.count == 100 and h.counts[[0, 10, 20, 255]].tolist() == [1, 89, 9, 1]
    assert h.amax("percentile", 1.0) == 1.0          # bin 0 holds the first 1 %
    assert h.amax("percentile", 50.0) == 11.0        # bin 10: values in [10, 11)
    assert h.amax("percentile", 90.0) == 11.0        # exactly reached at bin 10
    assert h.amax("percentile", 90.5) == 21.0
    assert h.amax("percentile", 99.0) == 21.0
    assert h.amax("percentile", 99.5) == 255.0       # bin 255's edge is 256: capped at the true max


def test_shards_and_manifest_are_replaced_never_written_in_place(tmp_path, monkeypatch):
    """Filesystem behaviour of an atomic write: the new file is renamed over the old one, so a reader that holds
    the old file (here: a second hard link to it) still sees the old bytes, and a write that fails midway leaves
    the old file whole and no temporary behind. A write in place changes the shared file under the reader."""
    import json
    import os

    from rtmw_edge.calibrate import data as D

    shard = tmp_path / "shard_00000.npy"
    D._atomic_save_npy(shard, np.zeros(4, np.float32))
    os.link(shard, tmp_path / "reader.npy")
    D._atomic_save_npy(shard, np.ones(4, np.float32))
    assert np.load(tmp_path / "reader.npy").tolist() == [0.0] * 4 and np.load(shard).tolist() == [1.0] * 4
    cache = D.CalibrationCache(tmp_path)
    cache._write_manifest({"shards": ["a"]})
    os.link(cache.manifest_path, tmp_path / "manifest.reader")
    cache._write_manifest({"shards": ["a", "b"]})
    assert json.loads((tmp_path / "manifest.reader").read_text()) == {"shards": ["a"]}
    assert cache.manifest() == {"shards": ["a", "b"]}

    def broken(f, array):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(D.np, "save", broken)
    with pytest.raises(RtmwEdgeError, match="No space left"):
        D._atomic_save_npy(shard, np.full(4, 2.0, np.float32))
    monkeypatch.undo()
    assert np.load(shard).tolist() == [1.0] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "manifest.reader", "reader.npy",
                                                          "shard_00000.npy"]


def test_range_collector_round_trip(tmp_path):
    c = RangeCollector(["a", "b"], bins=256)
    c.update({"a": np.arange(10.0), "b": np.zeros(3), "ignored": np.ones(2)})
    c.save(tmp_path / "s.npz")
    back = RangeCollector.load(tmp_path / "s.npz")
    assert back.amax("max") == c.amax("max") == {"a": 9.0, "b": 0.0}
    assert back.amax("percentile", 50) == c.amax("percentile", 50)


# --------------------------------------------------------------------------- sampling
def test_stratified_allocation_and_spread():
    counts = allocate(10, 4, seed=3)
    assert sum(counts) == 10 and sorted(counts) == [2, 2, 3, 3]
    assert allocate(10, 4, seed=3) == counts  # seeded: the same every time
    assert allocate(3, 5, seed=0).count(1) == 3
    picks = spread(100, 10, seed=0)
    assert len(picks) == 10 and all(10 * i <= p < 10 * (i + 1) for i, p in enumerate(picks))
    assert spread(5, 10, seed=0) == [0, 1, 2, 3, 4]


def test_augmentations_are_plain_geometry():
    img = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    assert apply_detector_aug(img, None) is img
    flipped = apply_detector_aug(img, {"flip": True, "mode": "crop", "crop": [0.0, 0.0, 1.0, 1.0]})
    assert np.array_equal(flipped, img[:, ::-1])
    zoom = apply_detector_aug(img, {"flip": False, "mode": "zoom_out", "zoom": 0.5, "at": [0.0, 0.0]})
    assert zoom.shape == (80, 120, 3) and np.array_equal(zoom[:40, :60], img)
    out, box = apply_pose_aug(img, np.array([10, 5, 30, 25], np.float32),
                              {"flip": True, "scale": 1.0, "shift": [0.0, 0.0]})
    assert np.allclose(box, [30, 5, 50, 25]) and np.array_equal(out, img[:, ::-1])


# --------------------------------------------------------------------------- layers and placement
def test_layers_macs_and_placement(tiny):
    model, layers, *_ = tiny
    by = {la.name: la for la in layers}
    assert [la.name for la in layers] == ["stem", "dw", "pw", "side", "head"]
    assert by["stem"].macs == 8 * 3 * 9 * 16 * 16 and by["dw"].macs == 8 * 9 * 256 and by["dw"].depthwise
    assert not by["pw"].depthwise and by["head"].macs == 2 * 12 * 256
    total = sum(la.macs for la in layers)
    assert int8_mac_share(layers, ["stem"]) == pytest.approx(by["stem"].macs / total)
    assert match_layers(layers, ["d*"]) == ["dw"] and match_layers(layers, ["ea"]) == ["head"]
    with pytest.raises(RtmwEdgeError, match="matches no conv layer"):
        match_layers(layers, ["nothing"])
    all_q = plan_placement(model, layers, [la.name for la in layers])
    assert set(all_q.join_nodes) == {"res_add", "cat"}  # residual Add and Concat between INT8 blocks
    no_pw = plan_placement(model, layers, ["stem", "dw", "side", "head"])
    assert no_pw.join_nodes == []  # the Add reads a float block: both joins stay float
    assert plan_placement(model, layers, ["stem"], residual=False).join_nodes == []


def test_concat_inputs_share_one_scale(tiny):
    model, _, _, _, clips = tiny
    assert clips["res"] == clips["side.a"] == max(clips["res"], clips["side.a"])


def test_qdq_graph_is_well_formed_and_close_to_fp32(tiny):
    model, layers, x, _, clips = tiny
    int8 = ["stem", "pw", "side", "head"]
    q = quantize_qdq(model, plan_placement(model, layers, int8), clips)
    assert validate_qdq(q, ["dw"]) == []
    onnx.checker.check_model(q)
    producers = {o: n for n in q.graph.node for o in n.output}
    convs = {n.name: n for n in q.graph.node if n.op_type == "Conv"}
    assert all(producers[convs[n].input[1]].op_type == "DequantizeLinear" for n in int8)
    assert convs["dw"].input[0] == "stem.a" and convs["dw"].input[1] == "dw.w"  # float, no Q/DQ at all
    for node in q.graph.node:
        if node.op_type == "QuantizeLinear":  # only ever in front of DequantizeLinear, never on a conv output
            assert producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "Conv"
    ref, out = run(model, x), run(q, x)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05  # relative RMS error


def test_validate_qdq_names_each_problem(tiny):
    model, layers, _, _, clips = tiny
    good = quantize_qdq(model, plan_placement(model, layers, ["stem", "pw", "side", "head"]), clips)
    assert "excluded layer has Q/DQ" in validate_qdq(good, ["pw"])[0]

    bad = onnx.ModelProto.FromString(good.SerializeToString())
    zp = next(i for i in bad.graph.initializer if i.name.endswith("zero_point") and i.data_type == TensorProto.INT8
              and not i.dims)
    zp.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), zp.name))
    assert any("asymmetric" in p for p in validate_qdq(bad))

    bad = onnx.ModelProto.FromString(good.SerializeToString())
    dq = next(n for n in bad.graph.node
              if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute))
    next(a for a in dq.attribute if a.name == "axis").i = 1
    assert any("axis 1" in p for p in validate_qdq(bad))

    bad = onnx.ModelProto.FromString(good.SerializeToString())
    nodes = list(bad.graph.node)
    del bad.graph.node[:]
    bad.graph.node.extend(reversed(nodes))
    assert any("topologically" in p for p in validate_qdq(bad))

    old = tiny_model(opset=11)
    assert any("opset 11" in p for p in validate_qdq(old))


def test_switchable_model_matches_the_qdq_graph(tiny):
    model, layers, x, full, clips = tiny
    switch = SwitchableModel(model, full, clips)
    assert switch.units == ["stem", "dw", "pw", "side", "head", "res_add", "cat"]
    ref = run(model, x[:4])
    assert np.allclose(switch.run(x[:4], [])[0], ref, atol=1e-5)  # all switches off: FP32
    for subset in (["stem", "dw", "pw", "side", "head"], ["stem", "side"]):
        placement = plan_placement(model, layers, subset)
        q = quantize_qdq(model, placement, clips)
        got = switch.run(x[:4], subset + placement.join_nodes)[0]
        assert np.allclose(got, run(q, x[:4]), atol=1e-4), subset


def test_bias_correction_removes_each_layers_own_mean_error(tiny):
    model, layers, x, _, _ = tiny
    stats = collect_statistics(model, plan_placement(model, layers, ["stem", "pw", "head"]).tensors, [x])
    clips = shared_clips(model, {k: v * 0.3 for k, v in stats.amax("max").items()})  # heavy clipping: biased
    q = quantize_qdq(model, plan_placement(model, layers, ["stem", "pw", "head"], residual=False), clips)
    first = bias_correct(q, model, ["stem", "pw", "head"], [x[:12], x[12:]])
    again = bias_correct(q, model, ["stem", "pw", "head"], [x])  # what is left of each conv's own mean error
    assert set(first) == {"stem", "pw", "head"}
    assert all(again[n] < 0.2 * first[n] for n in first), (first, again)
    assert validate_qdq(q, ["dw", "side"]) == []


def test_detection_fidelity_counts():
    ref = [(np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), np.array([0.9, 0.32], np.float32))]
    cand = [(np.array([[0, 0, 10, 9], [20, 20, 40, 40]], np.float32), np.array([0.85, 0.28], np.float32))]
    f = detection_fidelity(ref, cand, 0.3)
    assert f["reference_detections"] == 2 and f["found_iou50"] == 1  # the 0.28 box is below the threshold
    assert f["recall_iou50_score_margin"] == 1.0 and f["mean_iou"] == pytest.approx(0.45)
    assert not Target().met("detector", f)
    assert Target(min_recall50=0.5, min_mean_iou=0.4).met("detector", f)
