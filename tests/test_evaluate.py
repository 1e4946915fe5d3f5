"""`rtmw_edge.evaluate` and `rtmw-edge eval`: keypoint AP with pycocotools, against independent truth.

Truth used here: ground truth scored as predictions must be perfect; jittered predictions must score exactly
what pycocotools' COCOeval gives when this file drives it directly (GT/DT dicts built here, not by
evaluate.py); the COCO body sigmas are pycocotools' own defaults and the foot sigmas are the official six.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from rtmw_edge.cli import main
from rtmw_edge.errors import RtmwEdgeError
from rtmw_edge.evaluate import evaluate_predictions, run_eval
from rtmw_edge.keypoints import OKS_SIGMAS

WB_ANN = SHARED / "images" / "test_coco_wholebody.json"
COCO_ANN = SHARED / "images" / "test_coco.json"
IMAGES = SHARED / "images"
DETECTOR = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
PARTS = ("body", "foot", "face", "left_hand", "right_hand", "wholebody")
# this test's own layout of the 133 points: GT field, [start, stop)
FIELDS = {"body": ("keypoints", 0, 17), "foot": ("foot_kpts", 17, 23), "face": ("face_kpts", 23, 91),
          "left_hand": ("lefthand_kpts", 91, 112), "right_hand": ("righthand_kpts", 112, 133)}
FOOT_SIGMAS = [0.068, 0.066, 0.066, 0.092, 0.094, 0.094]  # official COCO-WholeBody foot sigmas

pytestmark = pytest.mark.skipif(not WB_ANN.is_file(), reason=f"shared annotations not found: {WB_ANN}")


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _gt_points(ann: dict, wholebody: bool = True) -> np.ndarray:
    fields = [f for f, _, _ in FIELDS.values()] if wholebody else ["keypoints"]
    return np.concatenate([np.asarray(ann[f], float).reshape(-1, 3) for f in fields])


def _gt_as_predictions(data: dict, wholebody: bool = True, jitter: float = 0.0, seed: int = 0,
                       unlabelled_at: str = "box_centre") -> list[dict]:
    """One prediction per GT person that has any labelled point: its own labelled points (s = 1), optionally
    with Gaussian noise; unlabelled points (s = 0) at the person's box centre, or at (0, 0).

    People with no labelled point at all get no prediction: nothing could be right or wrong about them, and a
    prediction for them can take the (ignored) GT of a neighbour whose box holds its centre — pycocotools
    matches greedily, and for an unlabelled GT every point inside the doubled box scores OKS 1 (see
    test_prediction_for_unlabelled_person_can_steal_a_neighbours_ignored_match)."""
    rng = np.random.default_rng(seed)
    out = []
    for ann in data["annotations"]:
        pts = _gt_points(ann, wholebody)
        labelled = pts[:, 2] > 0
        if not labelled.any():
            continue
        xy = pts[:, :2] + (rng.normal(0.0, jitter, (len(pts), 2)) if jitter else 0.0)
        x, y, w, h = ann["bbox"]
        xy[~labelled] = (x + w / 2, y + h / 2) if unlabelled_at == "box_centre" else (0.0, 0.0)
        kpts = np.concatenate([xy, labelled[:, None].astype(float)], axis=1)
        score = float(rng.uniform(0.3, 1.0)) if jitter else 1.0
        out.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kpts.ravel().tolist(),
                    "score": score})
    return out


def _direct_cocoeval(data: dict, predictions: list[dict], start: int, stop: int, sigmas=None) -> np.ndarray:
    """COCOeval driven directly: GT and DT keep only points [start, stop); GT num_keypoints = labelled count."""
    gt = copy.deepcopy(data)
    for i, ann in enumerate(gt["annotations"]):
        part = _gt_points(ann)[start:stop]
        for field, _, _ in FIELDS.values():
            ann.pop(field, None)
        ann.update(id=i + 1, keypoints=part.ravel().tolist(), num_keypoints=int((part[:, 2] > 0).sum()))
    dts = [{**p, "keypoints": np.asarray(p["keypoints"]).reshape(-1, 3)[start:stop].ravel().tolist()}
           for p in predictions]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dts), "keypoints")
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


# --------------------------------------------------------------------------- evaluate_predictions
def test_sigmas_are_the_official_ones():
    # pycocotools' default keypoint sigmas are COCO's body sigmas (independent of rtmw_edge.keypoints)
    np.testing.assert_allclose(OKS_SIGMAS["coco"], Params(iouType="keypoints").kpt_oks_sigmas, atol=1e-12)
    np.testing.assert_allclose(OKS_SIGMAS["coco-wholebody"][17:23], FOOT_SIGMAS, atol=1e-12)
    assert len(OKS_SIGMAS["coco-wholebody"]) == 133


def test_ground_truth_as_predictions_is_perfect():
    data = _load(WB_ANN)
    metrics = evaluate_predictions(WB_ANN, _gt_as_predictions(data))
    assert list(metrics) == list(PARTS)
    for part in PARTS:
        assert metrics[part] == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR": 1.0, "AR50": 1.0}, part


def test_ground_truth_as_predictions_coco17():
    preds = _gt_as_predictions(_load(COCO_ANN), wholebody=False)
    assert len(preds[0]["keypoints"]) == 51
    metrics = evaluate_predictions(COCO_ANN, preds)
    assert list(metrics) == ["body"] and metrics["body"]["AP"] == 1.0 and metrics["body"]["AR"] == 1.0
    # 17-keypoint predictions on the whole-body file: body only
    assert list(evaluate_predictions(WB_ANN, preds)) == ["body"]


def test_jittered_predictions_match_direct_cocoeval(tmp_path):
    data = _load(WB_ANN)
    preds = _gt_as_predictions(data, jitter=3.0, seed=7)
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(preds))
    metrics = evaluate_predictions(WB_ANN, path)  # also the file form
    checks = {"body": (0, 17, None),  # None: pycocotools' default (COCO) sigmas
              "foot": (17, 23, FOOT_SIGMAS),
              "left_hand": (91, 112, OKS_SIGMAS["coco-wholebody"][91:112]),
              "wholebody": (0, 133, OKS_SIGMAS["coco-wholebody"])}
    for part, (start, stop, sigmas) in checks.items():
        stats = _direct_cocoeval(data, preds, start, stop, sigmas)
        expected = {"AP": stats[0], "AP50": stats[1], "AP75": stats[2], "AR": stats[5], "AR50": stats[6]}
        for key, value in expected.items():
            assert metrics[part][key] == pytest.approx(value, abs=1e-9), (part, key)
    for part in PARTS:
        assert 0.0 <= metrics[part]["AP"] <= 1.0
    # 3 px of noise costs AP on the small parts (the test can fail)
    assert metrics["wholebody"]["AP"] < 1.0 and metrics["face"]["AP"] < 1.0 and metrics["left_hand"]["AP"] < 1.0


def test_people_without_a_part_are_ignored_for_it(tmp_path):
    """left_hand: GT people with lefthand_valid false (all-zero points) get num_keypoints 0 for that part, and
    pycocotools ignores such GTs. A prediction matched to one is ignored too, neither true nor false positive;
    against a GT with no labelled point, OKS is 1 anywhere inside its box grown by its own size on every side,
    so a hand-less person's prediction (points on the person) matches its own ignored GT."""
    data = _load(WB_ANN)
    keep = [a for a in data["annotations"] if a["lefthand_valid"]]
    assert 0 < len(keep) < len(data["annotations"])
    assert all(not any(a["lefthand_kpts"]) for a in data["annotations"] if not a["lefthand_valid"])
    reduced_path = tmp_path / "left_hands_only.json"
    reduced_path.write_text(json.dumps({**data, "annotations": keep}))
    predicted = [a for a in data["annotations"] if (_gt_points(a)[:, 2] > 0).any()]  # preds[i] ↔ predicted[i]

    def full_and_reduced(seed: int) -> tuple[dict, dict]:
        preds = _gt_as_predictions(data, jitter=3.0, seed=seed)
        reduced_preds = [p for p, a in zip(preds, predicted, strict=True) if a["lefthand_valid"]]
        return (evaluate_predictions(WB_ANN, preds)["left_hand"],
                evaluate_predictions(reduced_path, reduced_preds)["left_hand"])

    # Seed 2: no jittered hand lands where it could touch a hand-less neighbour; dropping the hand-less people
    # from GT and predictions changes nothing, to the last bit.
    full, reduced = full_and_reduced(2)
    assert 0.0 < full["AP"] < 1.0 and full == reduced

    # Their predictions are not false positives only because their (ignored) GT is there: keep the predictions
    # but drop those GT people, and the predictions have nothing to match → false positives, AP falls.
    preds = _gt_as_predictions(data, jitter=3.0, seed=2)
    assert evaluate_predictions(reduced_path, preds)["left_hand"]["AP"] < full["AP"] - 0.1
    # The same with their points far from them, at (0, 0): no GT near, false positives again; recall as before.
    far = evaluate_predictions(WB_ANN, _gt_as_predictions(data, jitter=3.0, seed=2, unlabelled_at="origin"))
    assert far["left_hand"]["AP"] < full["AP"] and far["left_hand"]["AR"] == full["AR"]

    # Seed 4, measured pycocotools behaviour: a labelled hand predicted too far off for its own GT at some OKS
    # threshold but inside the doubled box of a hand-less neighbour is matched to the neighbour's ignored GT
    # (so ignored), and the neighbour's own prediction then finds no GT left and is the false positive instead.
    # True positives are the same (recall unchanged) and so is the number of false positives, but the false
    # positive carries another score, so AP differs from the dropped-people evaluation.
    full, reduced = full_and_reduced(4)
    assert full["AR"] == reduced["AR"] and full["AR50"] == reduced["AR50"]
    assert full["AP"] != pytest.approx(reduced["AP"], abs=1e-3)


def test_prediction_for_unlabelled_person_can_steal_a_neighbours_ignored_match():
    """Measured pycocotools behaviour on this file: image 196141 has two people with no left hand, 508900 (no
    labels at all, a small box) and 1717641, whose doubled box holds 508900's centre. Predictions of equal
    score are matched in list order, and an unmatched prediction takes the last GT of equal OKS: a prediction
    for 508900 at its box centre, listed first, matches 1717641's ignored GT; 1717641's own prediction then
    finds no GT and counts as a false positive: left_hand AP < 1 though every labelled point is exact.
    Listed after 1717641's prediction, it takes its own GT and nothing is lost."""
    data = _load(WB_ANN)
    preds = _gt_as_predictions(data)
    predicted = [a["id"] for a in data["annotations"] if (_gt_points(a)[:, 2] > 0).any()]
    small = next(a for a in data["annotations"] if a["id"] == 508900)
    x, y, w, h = small["bbox"]
    extra = {"image_id": 196141, "category_id": 1, "keypoints": np.tile([x + w / 2, y + h / 2, 0.0], 133).tolist(),
             "score": 1.0}
    at = predicted.index(1717641)
    stolen = evaluate_predictions(WB_ANN, preds[:at] + [extra] + preds[at:])
    assert stolen["left_hand"]["AP"] < 1.0 and stolen["left_hand"]["AR"] == 1.0
    assert stolen["body"]["AP"] == 1.0  # 1717641's body is labelled: its prediction matches its own GT
    after = evaluate_predictions(WB_ANN, preds + [extra])
    assert all(after[p]["AP"] == 1.0 for p in PARTS)


def test_empty_predictions_score_zero():
    metrics = evaluate_predictions(WB_ANN, [])
    assert list(metrics) == list(PARTS) and all(metrics[p]["AP"] == 0.0 for p in PARTS)


def test_evaluate_errors(tmp_path):
    preds = _gt_as_predictions(_load(WB_ANN))
    with pytest.raises(RtmwEdgeError, match="annotation file not found"):
        evaluate_predictions(tmp_path / "nope.json", preds)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RtmwEdgeError, match="not valid JSON"):
        evaluate_predictions(WB_ANN, bad)
    with pytest.raises(RtmwEdgeError, match="predictions file not found"):
        evaluate_predictions(WB_ANN, tmp_path / "missing.json")
    with pytest.raises(RtmwEdgeError, match="20 keypoints"):
        evaluate_predictions(WB_ANN, [{**preds[0], "keypoints": [0.0] * 60}])
    with pytest.raises(RtmwEdgeError, match="image_id 12345 is not in the ground truth"):
        evaluate_predictions(WB_ANN, [{**preds[0], "image_id": 12345}])
    with pytest.raises(RtmwEdgeError, match="133 keypoints"):
        evaluate_predictions(WB_ANN, _gt_as_predictions(_load(COCO_ANN), wholebody=False), "coco-wholebody")
    with pytest.raises(RtmwEdgeError, match="no foot/face/hand"):
        evaluate_predictions(COCO_ANN, preds, "coco-wholebody")
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(RtmwEdgeError, match="not a COCO annotation file"):
        evaluate_predictions(bad, preds)


def test_run_eval_missing_image_names_the_file(tmp_path):
    (tmp_path / "000000000785.jpg").write_bytes((IMAGES / "000000000785.jpg").read_bytes())
    with pytest.raises(RtmwEdgeError, match=r"image file not found: .*000000040083\.jpg"):
        run_eval(WB_ANN, tmp_path, tmp_path / "unused.onnx", gt_boxes=True, progress=False)


# --------------------------------------------------------------------------- CLI, with a random-weight RTMW
@pytest.fixture(scope="module")
def pose_model(tmp_path_factory) -> Path:
    from rtmw_edge.export import export_onnx

    return export_onnx("rtmw-m-256x192", tmp_path_factory.mktemp("eval") / "p.onnx", random_init=True,
                       progress=False)


def _check_metrics(metrics: dict, parts=PARTS) -> None:
    assert list(metrics) == list(parts)
    for part in parts:
        assert set(metrics[part]) == {"AP", "AP50", "AP75", "AR", "AR50"}
        assert 0.0 <= metrics[part]["AP"] <= 1.0, part


def test_cli_eval_gt_boxes(pose_model, tmp_path, capsys):
    out = tmp_path / "m" / "metrics.json"
    assert main(["eval", "--ann", str(WB_ANN), "--images", str(IMAGES), "--pose", str(pose_model), "--gt-boxes",
                 "--flip-test", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "left_hand" in stdout and "AP50" in stdout
    _check_metrics(json.loads(out.read_text()))
    assert not out.with_name("metrics.json.tmp").exists()


def test_run_eval_gt_boxes_predictions(pose_model):
    metrics, preds = run_eval(WB_ANN, IMAGES, pose_model, gt_boxes=True, progress=False)
    _check_metrics(metrics)
    data = _load(WB_ANN)
    assert len(preds) == sum(1 for a in data["annotations"] if not a["iscrowd"])
    assert all(len(p["keypoints"]) == 399 and p["category_id"] == 1 for p in preds)
    # instance score = box score (1 for GT boxes) × mean of the keypoint scores > 0
    for p in preds:
        s = np.asarray(p["keypoints"]).reshape(-1, 3)[:, 2]
        assert p["score"] == pytest.approx(s[s > 0].mean() if (s > 0).any() else 0.0, rel=1e-5)
    # the COCO (17-keypoint) file with the same whole-body model: body only
    _check_metrics(run_eval(COCO_ANN, IMAGES, pose_model, gt_boxes=True, progress=False)[0], ["body"])


def test_cli_eval_detector(pose_model, tmp_path, capsys):
    if not DETECTOR.is_file():
        pytest.skip(f"shared detector not found: {DETECTOR}")
    out = tmp_path / "metrics.json"
    assert main(["eval", "--ann", str(WB_ANN), "--images", str(IMAGES), "--pose", str(pose_model),
                 "--det", str(DETECTOR), "--out", str(out)]) == 0
    _check_metrics(json.loads(out.read_text()))


def test_cli_eval_predictions_file(tmp_path, capsys):
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps(_gt_as_predictions(_load(WB_ANN))))
    out = tmp_path / "metrics.json"
    assert main(["eval", "--ann", str(WB_ANN), "--predictions", str(preds), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    _check_metrics(metrics)
    assert all(metrics[p]["AP"] == 1.0 for p in PARTS)
    assert "wholebody" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--det", "d.onnx", "--gt-boxes"], "exactly one of --det"),
    ([], "exactly one of --det"),
    (["--gt-boxes", "--predictions", "p.json"], "drop --pose, --gt-boxes"),
])
def test_cli_eval_errors(args, message, capsys):
    code = main(["eval", "--ann", str(WB_ANN), "--images", str(IMAGES), "--pose", "p.onnx", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err  # usage errors
    assert err.count("error:") == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_eval_missing_annotation_and_missing_pose(tmp_path, capsys):
    assert main(["eval", "--ann", str(tmp_path / "none.json"), "--predictions", str(tmp_path / "p.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: annotation file not found") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["eval", "--ann", str(WB_ANN), "--images", str(IMAGES), "--gt-boxes"]) == 2
    assert "needs --pose and --images" in capsys.readouterr().err


# --------------------------------------------------------------------------- crowd regions, COCO bbox (issue 23 §3)
SKIERS = 197388
# a crowd region as COCO writes one: iscrowd 1, no keypoints, its mask as an uncompressed RLE (column-major runs
# of 0s and 1s) of the box x 380–530, y 0–40 in the 640×392 photo
CROWD = {"id": 900000001, "image_id": SKIERS, "category_id": 1, "iscrowd": 1, "bbox": [380.0, 0.0, 150.0, 40.0],
         "area": 6000.0, "num_keypoints": 0, "keypoints": [0] * 51,
         "segmentation": {"size": [392, 640], "counts": [380 * 392] + [40, 352] * 149 + [40, 352 + 110 * 392]}}


def _with_crowd(tmp_path: Path, only_skiers: bool = False) -> tuple[Path, dict]:
    data = _load(COCO_ANN)
    if only_skiers:
        data["images"] = [im for im in data["images"] if im["id"] == SKIERS]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] == SKIERS]
    data["annotations"].append(CROWD)
    path = tmp_path / "with_crowd.json"
    path.write_text(json.dumps(data))
    return path, data


def test_predictions_inside_a_crowd_region_are_ignored_not_false_positives(tmp_path):
    """COCO's rule (pycocotools COCOeval.evaluateImg): any number of detections may match a crowd region (iscrowd
    1) and each is ignored. Two predictions inside the skiers' crowd region outscore the exact predictions of the
    labelled people: ignored, AP stays 1. Were the region an ordinary person without labelled points, the second
    would be a false positive ahead of every true one."""
    path, data = _with_crowd(tmp_path)
    people = _gt_as_predictions(data, wholebody=False)
    for p in people:
        p["score"] = 0.5
    x, y, w, h = CROWD["bbox"]
    inside = [{"image_id": SKIERS, "category_id": 1, "score": 1.0,
               "keypoints": np.column_stack([np.linspace(x + 10 + dx, x + w - 10, 17), np.full(17, y + h / 2),
                                             np.ones(17)]).ravel().tolist()} for dx in (0.0, 20.0)]
    preds = inside + people
    got = evaluate_predictions(path, preds)["body"]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools on the file as written, no rewriting
        coco_gt = COCO(str(path))
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(preds)), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    rle = coco_gt.annToRLE(CROWD)  # the mask is the box
    assert mask_utils.area(rle) == CROWD["area"] and mask_utils.toBbox(rle).tolist() == CROWD["bbox"]
    assert got["AP"] == pytest.approx(ev.stats[0], abs=1e-12) == 1.0
    assert got["AR"] == pytest.approx(ev.stats[5], abs=1e-12) == 1.0
    ordinary = tmp_path / "crowd_as_a_person.json"
    ordinary.write_text(json.dumps({**data, "annotations": [{**a, "iscrowd": 0} for a in data["annotations"]]}))
    assert evaluate_predictions(ordinary, preds)["body"]["AP"] < 0.99  # the test can tell the two apart


def test_gt_boxes_never_include_a_crowd_region(pose_model, tmp_path):
    path, data = _with_crowd(tmp_path, only_skiers=True)
    _, preds = run_eval(path, IMAGES, pose_model, gt_boxes=True, progress=False)
    people = [a for a in data["annotations"] if not a["iscrowd"]]
    assert len(preds) == len(people) == 5
    boxes = sorted(tuple(np.round(p["bbox"], 2)) for p in preds)
    assert boxes == sorted(tuple(np.round(a["bbox"], 2)) for a in people)  # COCO [x, y, w, h], the GT's own


def test_coco_results_bbox_is_xywh_as_every_coco_reader_takes_it():
    """pycocotools recomputes boxes from the keypoints for keypoint AP, so `eval` never reads `bbox`; its box
    evaluation (and every other COCO reader) does: the people's own boxes, through Person (x1, y1, x2, y2) and
    coco_items, must score box AP 1 against the file they came from."""
    from rtmw_edge.results import FrameResult, Person, coco_items

    data = _load(COCO_ANN)
    preds = []
    for img in data["images"]:
        persons = []
        for a in (a for a in data["annotations"] if a["image_id"] == img["id"]):
            x, y, w, h = a["bbox"]
            persons.append(Person(bbox=np.array([x, y, x + w, y + h], np.float64), score=0.9,
                                  keypoints=np.zeros((17, 2), np.float32), keypoint_scores=np.ones(17, np.float32)))
        preds += coco_items(FrameResult(0, 0.0, img["width"], img["height"], persons), img["id"])
    assert preds[0]["bbox"] == pytest.approx(data["annotations"][0]["bbox"], abs=1e-9)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(COCO_ANN))
        ev = COCOeval(coco_gt, coco_gt.loadRes(preds), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[8] == pytest.approx(1.0)  # AP, AR@100
