"""`rtmw-edge calibrate` on the real RTMDet-nano person detector (shared/models, a foreign raw-head graph).

Calibration: 000000000785, 000000040083 and human-pose.jpg (+ the pipeline's flips/crops/zooms), 64 samples.
Held out: 000000196141 and 000000197388 and five variants of each (mirror, 70 % crops, 0.6×/1.5×) = 12
frames with 52 FP32 detections. Target of issue 6: every FP32 detection recovered at IoU ≥ 0.5, mean IoU ≥
0.85, ≥ 70 % of conv MACs in INT8 — met by the defaults (depthwise convs float, percentile 99.999, bias
correction; docs/int8.md has the search). Also: the Q/DQ graph checks, the cache (reuse, resume,
invalidation), a video source, --auto-exclude and the CLI's one-line errors.
"""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import onnx
import pytest
from conftest import SHARED

from rtmw_edge.calibrate import data as D
from rtmw_edge.calibrate.quantize import find_layers, int8_mac_share, prepare_model, validate_qdq
from rtmw_edge.cli import main
from rtmw_edge.detectors import OnnxDetector
from rtmw_edge.onnx_meta import CALIBRATION_KEY
from rtmw_edge.sources import read_image

RAW = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
IMAGES = SHARED / "images"
CALIB = ("000000000785.jpg", "000000040083.jpg", "human-pose.jpg")
HELD_OUT = ("000000196141.jpg", "000000197388.jpg")

pytestmark = pytest.mark.skipif(not RAW.is_file(), reason="shared/models not available")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    for sub, names in (("calib", CALIB), ("eval", HELD_OUT)):
        (root / sub).mkdir()
        for name in names:
            shutil.copy(IMAGES / name, root / sub / name)
    return root


@pytest.fixture(scope="module")
def calibrated(folders):
    out = folders / "det.int8.onnx"
    args = ["calibrate", str(RAW), "--images", str(folders / "calib"), "--eval-images", str(folders / "eval"),
            "-o", str(out), "--num", "64", "--cache", str(folders / "cache"), "--report", str(folders / "rep.md")]
    assert main(args) == 0
    return out, json.loads((folders / "rep.json").read_text()), args


def test_rtmdet_nano_int8_meets_the_target(calibrated, folders):
    out, rep, _ = calibrated
    fid = rep["fidelity"]
    assert rep["heldout_units"] == list(HELD_OUT) and fid["frames"] == 12
    assert fid["reference_detections"] >= 40
    assert fid["found_iou50"] == fid["reference_detections"]  # every FP32 detection, IoU ≥ 0.5
    assert fid["mean_iou"] >= 0.85
    assert rep["target"]["met"] is True
    # the INT8 share, recomputed from the written graph: convs whose weight comes out of a DequantizeLinear
    q = onnx.load(str(out))
    producers = {o: n for n in q.graph.node for o in n.output}
    int8 = [n.name for n in q.graph.node if n.op_type == "Conv" and producers.get(n.input[1]) is not None
            and producers[n.input[1]].op_type == "DequantizeLinear"]
    layers = find_layers(prepare_model(onnx.load(str(RAW))))
    share = int8_mac_share(layers, int8)
    assert share >= 0.70 and share == pytest.approx(rep["quantization"]["int8_mac_share"])
    md = (folders / "rep.md").read_text()
    assert "recovered at IoU ≥ 0.5" in md and "Target" in md
    assert (folders / "cache" / "report.md").is_file()


def test_check_verifies_the_int8_of_a_foreign_detector(calibrated, folders, capsys):
    """`calibrate` records how it recognised and fed the foreign graph; `check` runs the INT8 copy and the
    original through the same detector contract and compares the kept detections (issue 13)."""
    out, _, _ = calibrated
    info = next(json.loads(p.value) for p in onnx.load(str(out)).metadata_props if p.key == CALIBRATION_KEY)
    assert info["detector_signature"] == {"kind": "rtmdet-rawhead", "input_size": [320, 320]}
    from rtmw_edge.check import check_model

    report = check_model(out, RAW, IMAGES)
    assert report.passed, report.failures
    assert report.detections["reference_detections"] >= 13 and report.detections["recall_iou50"] == 1.0
    assert report.detections["mean_iou"] >= 0.85
    assert report.outputs  # same layout: raw outputs compared (reported, not judged for INT8)
    assert main(["check", str(out), "--against", str(RAW), "--images", str(IMAGES)]) == 0
    assert "PASS" in capsys.readouterr().out
    # umask mode, not mkstemp's 0600
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_calibrate_exits_3_when_its_target_is_missed(calibrated, folders, capsys):
    _, _, args = calibrated
    out = folders / "strict.int8.onnx"
    report = folders / "strict.md"
    strict = [a if a != str(folders / "det.int8.onnx") else str(out) for a in args]
    strict = [a if a != str(folders / "rep.md") else str(report) for a in strict]
    assert main([*strict, "--target-iou", "0.9999"]) == 3  # statistics reused from the cache: quick
    assert "NOT met" in capsys.readouterr().out
    assert out.is_file() and report.is_file() and json.loads(report.with_suffix(".json").read_text())[
        "target"]["met"] is False


def test_qdq_graph_is_what_tensorrt_builds(calibrated):
    out, rep, _ = calibrated
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)
    meta = json.loads(next(p.value for p in q.metadata_props if p.key == CALIBRATION_KEY))
    float_layers = meta["float_layers"]
    assert meta["precision"] == "int8" and meta["calibration"]["samples"] == 64
    assert float_layers == rep["quantization"]["float_layers"] and len(float_layers) == 41  # the depthwise convs
    assert validate_qdq(q, float_layers) == []
    opset = next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 13
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 100
    for node in qdq:  # symmetric INT8 everywhere
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    convs = {n.name: n for n in q.graph.node if n.op_type == "Conv"}
    for name, conv in convs.items():
        w = producers.get(conv.input[1])
        if name in float_layers:  # no Q/DQ on excluded layers, neither weight nor input
            assert w is None and (producers.get(conv.input[0]) is None
                                  or producers[conv.input[0]].op_type != "DequantizeLinear")
            continue
        weight, scale = inits[w.input[0]], inits[w.input[1]]
        axis = next((a.i for a in w.attribute if a.name == "axis"), 1)
        assert weight.dtype == np.int8 and axis == 0 and scale.shape == (weight.shape[0],)  # per output channel
    # it runs on ONNX Runtime, behind the same detector contract as the FP32 graph
    boxes, scores = OnnxDetector(out)(read_image(IMAGES / "000000196141.jpg"))
    assert len(boxes) >= 4 and scores.min() > 0.3


def test_all_int8_is_the_bad_starting_point_and_the_cache_is_reused(calibrated, folders):
    _, rep, args = calibrated
    out = folders / "all.int8.onnx"
    new = [a if a != str(calibrated[0]) else str(out) for a in args] + ["--no-default-float", "--no-bias-correction"]
    new[new.index("--report") + 1] = str(folders / "all.md")
    assert main(new) == 3  # written, but the fidelity target is missed: scripts see it
    all_int8 = json.loads((folders / "all.json").read_text())
    assert all_int8["calibration"]["cache_status"] == "reused"
    assert all_int8["quantization"]["int8_mac_share"] == 1.0
    assert all_int8["fidelity"]["found_iou50"] < 0.9 * rep["fidelity"]["found_iou50"]


def test_cache_resumes_after_an_interruption_and_invalidates_on_changes(folders, monkeypatch):
    monkeypatch.setattr(D, "SHARD_BYTES", 4 * 3 * 320 * 320 * 4)  # 4 samples per shard
    inputs = D.describe_model(RAW)
    source = D.Source(images=folders / "calib")
    units, held = D.split_units(source, 0.0, 0, 10)
    assert held == [] and [u.id for u in units] == sorted(CALIB)
    cfg = D.DataConfig(num=10)

    class Stop(Exception):
        pass

    def interrupt_after(n):
        made = []

        def progress(label, total):
            def advance(k):
                made.append(k)
                if sum(made) >= n:
                    raise Stop

            return advance

        return progress

    cache = D.CalibrationCache(folders / "resume")
    with pytest.raises(Stop):
        D.build_calibration_set(RAW, inputs, source, units, cfg, cache, progress=interrupt_after(6))
    partial = cache.manifest()
    assert partial["complete"] is False and partial["shards"] == ["shard_00000.npy"]
    assert not list(cache.folder.glob("*.tmp"))
    status = D.build_calibration_set(RAW, inputs, source, units, cfg, cache)
    assert status.action == "resumed" and status.samples == 10 and status.shards == 3
    fresh = D.CalibrationCache(folders / "fresh")
    assert D.build_calibration_set(RAW, inputs, source, units, cfg, fresh).action == "built"
    a, b = np.concatenate(list(cache.batches(4))), np.concatenate(list(fresh.batches(3)))
    assert a.shape == (10, 3, 320, 320) and np.array_equal(a, b)  # deterministic and resumed exactly
    assert D.build_calibration_set(RAW, inputs, source, units, cfg, cache).action == "reused"

    other = D.ModelInputs(**{**inputs.__dict__, "mean": (0.0, 0.0, 0.0)})
    status = D.build_calibration_set(RAW, other, source, units, cfg, cache)
    assert status.action == "rebuilt" and "preprocessing" in status.reason
    assert not np.array_equal(np.concatenate(list(cache.batches(4))), a)

    cfg2 = D.DataConfig(num=10, seed=1)
    assert "sampling" in D.build_calibration_set(RAW, other, source, units, cfg2, cache).reason
    # augmentation off changes the tensors (one unmodified frame per image): the key must see it
    plain = D.build_calibration_set(RAW, other, source, units, D.DataConfig(num=10, seed=1, augment=False), cache)
    assert plain.action == "rebuilt" and "sampling" in plain.reason and plain.samples == len(CALIB)


def test_video_source(folders):
    video = folders / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 428))
    for name in ("000000000785.jpg", "000000196141.jpg"):
        frame = cv2.resize(read_image(IMAGES / name), (640, 428))
        for _ in range(5):
            writer.write(frame)
    writer.release()
    out = folders / "video.int8.onnx"
    code = main(["calibrate", str(RAW), "--video", str(video), "-o", str(out), "--num", "6", "--holdout", "0.3",
                  "--cache", str(folders / "vcache"), "--report", str(folders / "video.md")])
    rep = json.loads((folders / "video.json").read_text())
    assert code == (0 if rep["target"]["met"] else 3)  # 6 samples: the verdict is the report's
    assert rep["calibration"]["source"] == "video" and rep["calibration"]["samples"] == 6
    assert rep["heldout_units"] == ["frame_000007", "frame_000008", "frame_000009"]  # the last 30 %, unseen
    manifest = json.loads((folders / "vcache" / "manifest.json").read_text())
    assert max(u["frame"] for u in manifest["plan"]["units"]) < 7


def test_auto_exclude_keeps_the_worst_layers_float(folders):
    out = folders / "auto.int8.onnx"
    # candidates: the 10 head convs of the stride-32 level (everything else stays float), 4 validation samples
    keep_float = ["/model/backbone/*", "/model/neck/*", "*convs.0.*", "*convs.1.*", "*_cls.0/*", "*_reg.0/*",
                  "*_cls.1/*", "*_reg.1/*"]
    assert main(["calibrate", str(RAW), "--images", str(folders / "calib"), "--eval-images", str(folders / "eval"),
                 "-o", str(out), "--num", "64", "--cache", str(folders / "cache"), "--auto-exclude",
                 *[a for p in keep_float for a in ("--exclude", p)], "--val-num", "4", "--no-bias-correction",
                 "--min-int8-share", "0.0", "--target-iou", "0.999", "--report", str(folders / "auto.md")]) == 0
    rep = json.loads((folders / "auto.json").read_text())
    sens = rep["sensitivity"]
    assert len(sens) == 10 and all(".2" in name for name, _, _ in sens)
    assert [s[1] for s in sens] == sorted((s[1] for s in sens), reverse=True)
    steps = rep["frontier"]  # the most sensitive layer goes float first, then the next, ...
    assert len(steps) >= 2 and steps[0]["added"] is None
    assert [s["added"] for s in steps[1:]] == [n for n, _, _ in sens[: len(steps) - 1]]
    assert [s["int8_mac_share"] for s in steps] == sorted((s["int8_mac_share"] for s in steps), reverse=True)
    q = rep["quantization"]
    assert q["float_reasons"]["--exclude"] == 113 and len(q["float_layers"]) >= 113
    assert validate_qdq(onnx.load(str(out)), q["float_layers"]) == []
    assert "## Frontier" in (folders / "auto.md").read_text()


def test_end_to_end_detector_graph_stays_recognised(folders):
    """The mmdeploy e2e RTMDet (dynamic H/W, batch 1 only, NMS inside) is told apart by its stem: the stem
    conv stays float so the INT8 graph is still a `mmdeploy-e2e-rtmdet`; MACs at the 320×320 letterbox."""
    e2e = SHARED / "models" / "rtmdet-nano_person_e2e_dyn.onnx"
    out = folders / "e2e.int8.onnx"
    assert main(["calibrate", str(e2e), "--images", str(folders / "calib"), "--eval-images", str(folders / "eval"),
                 "-o", str(out), "--num", "8", "--cache", str(folders / "e2e_cache"), "--no-bias-correction",
                 "--report", str(folders / "e2e.md")]) == 0
    rep = json.loads((folders / "e2e.json").read_text())
    q = rep["quantization"]
    assert q["float_reasons"]["detector stem"] == 1 and q["total_macs"] == 308_035_840
    assert 0.85 < q["int8_mac_share"] < 0.95
    assert OnnxDetector(out).signature.kind == "mmdeploy-e2e-rtmdet"
    assert rep["fidelity"]["reference_detections"] > 40
    from rtmw_edge.check import check_model

    report = check_model(out, e2e, IMAGES)  # a foreign end-to-end graph's INT8 copy checks too
    assert report.detections["reference_detections"] >= 13 and report.detections["recall_iou50"] >= 0.9


@pytest.mark.parametrize("extra, code, message", [
    (["--images", "/nonexistent"], 1, "no such file or folder"),
    (["--images", "{calib}", "--method", "kl"], 2, "--method must be"),
    (["--images", "{calib}", "--exclude", "no_such_layer"], 2, "matches no conv layer"),
    (["--images", "{calib}", "--eval-images", "{calib}"], 2, "held-out"),
    (["--video", "{calib}"], 1, "must be a file"),
    (["--images", "{calib}", "--det", str(RAW)], 2, "--det is for pose models"),
])
def test_bad_input_is_one_error_line_and_no_output(folders, capsys, extra, code, message):
    out = folders / "bad.int8.onnx"
    extra = [e.replace("{calib}", str(folders / "calib")) for e in extra]
    got = main(["calibrate", str(RAW), "-o", str(out), "--num", "4", "--cache", str(folders / "bad_cache"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not out.exists() and not list(folders.glob("bad.int8.onnx*"))


def test_bad_model_and_output_paths(folders, capsys, tmp_path):
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_bytes(b"not a model")
    for args, code, message in (([str(not_onnx), "-o", str(tmp_path / "o.onnx")], 1, "not a readable ONNX"),
                                ([str(RAW), "-o", str(tmp_path / "o.engine")], 2, "-o must name an .onnx"),
                                ([str(RAW), "-o", str(RAW)], 2, "is an input of this command"),
                                ([str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx")], 1, "not found")):
        got = main(["calibrate", *args, "--images", str(folders / "calib"), "--cache", str(tmp_path / "c")])
        err = capsys.readouterr().err.strip().splitlines()
        assert got == code and len(err) == 1 and message in err[0], (args, err)
    assert not (tmp_path / "o.onnx").exists()
