"""`rtmw-edge calibrate` on a pose model: RTMW-m 256×192 exported with random weights (no pose weights are
available offline), calibrated end to end from COCO-WholeBody ground-truth boxes: crops as at run time,
cache reuse, invalidation on changed preprocessing, a report per body part, a well-formed Q/DQ graph whose
SimCC head (MatMul / GAU / cls_x / cls_y) and head convs stay float. Random weights say nothing about
accuracy; the fidelity numbers are only checked for shape and sanity."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import SHARED

from rtmw_edge.backends.onnxruntime import OrtEngine
from rtmw_edge.calibrate import data as D
from rtmw_edge.calibrate.quantize import validate_qdq
from rtmw_edge.cli import main
from rtmw_edge.export import export_onnx
from rtmw_edge.onnx_meta import read_metadata, write_metadata
from rtmw_edge.pipeline import PoseEstimator, TopDownPose
from rtmw_edge.sources import read_image

IMAGES = SHARED / "images"
ANN = IMAGES / "test_coco_wholebody.json"
DET = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"

pytestmark = pytest.mark.skipif(not ANN.is_file(), reason="shared/images not available")


@pytest.fixture(scope="module")
def pose(tmp_path_factory):
    return export_onnx("rtmw-m-256x192", tmp_path_factory.mktemp("pose") / "rtmw-m.onnx", random_init=True,
                       progress=False)


@pytest.fixture(scope="module")
def calibrated(pose):
    root = pose.parent
    out = root / "rtmw-m.int8.onnx"
    args = ["calibrate", str(pose), "--coco", str(ANN), "--images", str(IMAGES), "-o", str(out), "--num", "12",
            "--holdout", "0.25", "--seed", "1", "--cache", str(root / "cache"), "--report", str(root / "rep.md")]
    code = main(args)
    rep = json.loads((root / "rep.json").read_text())
    # random weights: the OKS target may or may not be met; the exit code must say which (0 met, 3 missed)
    assert code == (0 if rep["target"]["met"] else 3)
    return out, rep, args


def test_pose_calibrates_from_coco_boxes(calibrated, pose):
    out, rep, _ = calibrated
    assert rep["task"] == "pose" and rep["calibration"]["source"] == "coco"
    assert rep["calibration"]["samples"] == 12 and rep["calibration"]["units"] == 3
    assert rep["heldout_units"] == ["000000000785.jpg"]
    manifest = json.loads((pose.parent / "cache" / "manifest.json").read_text())
    assert manifest["complete"] and all(u["boxes"] for u in manifest["plan"]["units"])
    assert manifest["sections"]["preprocessing"]["input_size"] == [192, 256]
    assert not set(rep["heldout_units"]) & {u["id"] for u in manifest["plan"]["units"]}  # never calibrated on
    fid = rep["fidelity"]
    assert set(fid["parts"]) == {"body", "foot", "face", "left_hand", "right_hand"}
    for d in [fid, *fid["parts"].values()]:
        assert 0.0 <= d["oks"] <= 1.0 and 0.0 <= d["mean_px"] <= d["p95_px"]
    md = (pose.parent / "rep.md").read_text()
    assert "| left_hand |" in md and "OKS vs FP32" in md


def test_pose_qdq_graph_keeps_the_simcc_head_float(calibrated):
    out, rep, _ = calibrated
    q = onnx.load(str(out))
    float_layers = rep["quantization"]["float_layers"]
    assert validate_qdq(q, float_layers) == []
    assert any("final_layer" in n for n in float_layers) and rep["quantization"]["int8_layers"] > 60
    producers = {o: n for n in q.graph.node for o in n.output}
    for node in q.graph.node:
        if node.op_type in ("MatMul", "Gemm"):  # GAU, cls_x / cls_y: no INT8 input at all
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input)
    meta = read_metadata(q)
    assert meta["task"] == "pose2d" and meta["precision"] == "int8" and meta["name"] == "rtmw-m-256x192"
    assert meta["int8"]["calibration"]["method"] == "percentile" and meta["int8"]["float_layers"] == float_layers
    # the INT8 graph runs in the ordinary pipeline
    image = read_image(IMAGES / "000000000785.jpg")
    kpts, scores, _ = TopDownPose(OrtEngine(out))(image, np.array([[200, 50, 400, 400]], np.float32))
    assert kpts.shape == (1, 133, 2) and np.isfinite(kpts).all()


def test_cache_is_reused_and_invalidated_by_other_preprocessing(calibrated, pose):
    root = pose.parent
    cache = D.CalibrationCache(root / "cache")
    before = np.concatenate(list(cache.batches(8)))
    inputs = D.describe_model(pose)
    source = D.Source(images=IMAGES, coco=ANN)
    units, _ = D.split_units(source, 0.25, 1, 12)  # what the CLI run above did
    cfg = D.DataConfig(num=12, seed=1)
    status = D.build_calibration_set(pose, inputs, source, units, cfg, cache)
    assert status.action == "reused" and status.samples == 12
    # other normalisation constants: the crops change, so the cached tensors must go
    other = D.ModelInputs(**{**inputs.__dict__, "mean": (120.0, 115.0, 100.0)})
    status = D.build_calibration_set(pose, other, source, units, cfg, cache)
    assert status.action == "rebuilt" and status.reason == "preprocessing changed"
    after = np.concatenate(list(cache.batches(8)))
    assert after.shape == before.shape and not np.allclose(after, before)
    manifest = json.loads((root / "cache" / "manifest.json").read_text())
    assert manifest["sections"]["preprocessing"]["mean"] == [120.0, 115.0, 100.0]
    assert not (root / "cache" / "statistics.npz").exists()  # derived statistics went with the old tensors
    # a changed model file (same graph, new metadata) is named as the reason too
    model = onnx.load(str(pose))
    write_metadata(model, {**read_metadata(model), "mean": [120.0, 115.0, 100.0]})
    changed = root / "rtmw-m-other.onnx"
    onnx.save(model, str(changed))
    status = D.build_calibration_set(changed, D.describe_model(changed), source, units, cfg, cache)
    assert status.action == "rebuilt" and status.reason == "model changed"


def test_pose_crops_come_from_the_run_time_detector(pose, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(IMAGES / "000000000785.jpg", folder)
    inputs = D.describe_model(pose)
    source = D.Source(images=folder)
    units, _ = D.split_units(source, 0.0, 0, 3)
    cache = D.CalibrationCache(tmp_path / "c")
    D.build_calibration_set(pose, inputs, source, units, D.DataConfig(num=3, det=DET), cache)
    x = np.concatenate(list(cache.batches(8)))
    estimator = PoseEstimator(DET, pose, backend="onnxruntime")
    image = read_image(folder / "000000000785.jpg")
    boxes, _, _ = estimator.detect(image)
    crops, _, _ = estimator.pose.preprocess(image, boxes)
    assert len(boxes) == 1 and x.shape == (3, 3, 256, 192)
    assert np.array_equal(x[0], crops[0])  # the first sample is exactly the run-time crop
    assert not np.array_equal(x[1], crops[0])  # then jittered boxes / flips
    with pytest.raises(Exception, match="give --det"):
        D.build_calibration_set(pose, inputs, source, units, D.DataConfig(num=3), D.CalibrationCache(tmp_path / "d"))


def test_the_detector_threshold_is_part_of_the_cache_key(pose, tmp_path):
    """Issue 23 §3: the same photo, model, detector and sampling, another --det-threshold: other person boxes, so
    the cached crops must not be reused. The skiers' detections score 0.83, 0.82, 0.78, 0.74, 0.61 (then < 0.15):
    at 0.7 the fifth skier is no calibration person any more."""
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(IMAGES / "000000197388.jpg", folder)
    inputs = D.describe_model(pose)
    source = D.Source(images=folder)
    units, _ = D.split_units(source, 0.0, 0, 5)
    cache = D.CalibrationCache(tmp_path / "cache")

    def plan_boxes() -> list:
        manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
        return [tuple(b) for u in manifest["plan"]["units"] for b in u["boxes"]]

    status = D.build_calibration_set(pose, inputs, source, units, D.DataConfig(num=5, det=DET, det_threshold=0.3),
                                     cache)
    assert status.action == "built"
    low = plan_boxes()
    status = D.build_calibration_set(pose, inputs, source, units, D.DataConfig(num=5, det=DET, det_threshold=0.7),
                                     cache)
    assert status.action == "rebuilt" and status.reason == "detector changed"
    high = plan_boxes()
    assert len(high) < len(low) and set(high) < set(low)  # the boxes of the stricter threshold, a subset
    status = D.build_calibration_set(pose, inputs, source, units, D.DataConfig(num=5, det=DET, det_threshold=0.7),
                                     cache)
    assert status.action == "reused"


def test_check_of_an_int8_pose_model_is_a_verdict_that_names_int8_tolerances(calibrated, pose, capsys):
    """`check` past its (lossless) defaults exits 3, a verdict like calibrate's, and says which tolerances suit INT8;
    with tolerances set by the user it says nothing more."""
    out, rep, _ = calibrated
    capsys.readouterr()
    assert main(["check", str(out), "--against", str(pose), "--images", str(IMAGES), "--max-samples", "2"]) == 3
    text = capsys.readouterr().out
    assert "FAIL" in text and "--min-oks 0.9" in text and "calibrate" in text
    assert main(["check", str(out), "--against", str(pose), "--images", str(IMAGES), "--max-samples", "2",
                 "--min-oks", "0", "--max-px", "100000"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_a_missed_target_names_the_next_step(calibrated, pose, capsys):
    from rtmw_edge.calibrate.report import next_steps

    _, rep, _ = calibrated
    md = (pose.parent / "rep.md").read_text()
    assert ("## Next step" in md) == (not rep["target"]["met"])
    missed = {"task": "pose", "target": {"description": "OKS vs FP32 ≥ 0.9", "met": False}, "frontier": None}
    steps = next_steps(missed)
    assert "--auto-exclude" in steps[0] and any("rtmw-edge check" in s and "--min-oks" in s for s in steps)
    after_auto = next_steps({**missed, "frontier": [{"step": 1}]})
    assert "--min-int8-share" in after_auto[0]
    assert next_steps({**missed, "target": {"description": "x", "met": True}}) == []
    assert "--min-recall" in next_steps({**missed, "task": "detector"})[-1]
