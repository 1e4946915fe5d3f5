"""Keypoint AP on COCO / COCO-WholeBody annotations, scored with pycocotools' `COCOeval`.

COCO-WholeBody protocol: every part (body 17, foot 6, face 68, left_hand 21, right_hand 21) and the whole
body (all 133) is scored on its own. For each one, the ground truth and the predictions are rewritten so that
`keypoints` holds only that part's points; a ground-truth person's `num_keypoints` becomes the number of that
part's labelled points (v > 0), so people without that part (`*_valid` false, all zeros) have
num_keypoints == 0 and pycocotools ignores them (a prediction matched to an ignored person is ignored too,
neither true nor false positive). The person's `area`, `bbox` and `iscrowd` are kept, and the OKS sigmas are
that part's official ones. Plain COCO (17 keypoints) is the body part alone with COCO's sigmas.

`run_eval` runs the CPU pipeline over an annotation file's images (ground-truth person boxes or the detector),
turns the people into COCO results with `results.coco_items`' rescoring and scores them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from .backends import load_engine
from .errors import RtmwEdgeError
from .keypoints import KEYPOINT_SETS, OKS_SIGMAS
from .results import coco_items

KeypointSetName = Literal["coco", "coco-wholebody"]

# Order of the 133 whole-body keypoints: which GT field holds each part (body17 + foot6 + face68 + hands 2×21).
WHOLEBODY_FIELDS = (("body", "keypoints"), ("foot", "foot_kpts"), ("face", "face_kpts"),
                    ("left_hand", "lefthand_kpts"), ("right_hand", "righthand_kpts"))
METRICS = ("AP", "AP50", "AP75", "AR", "AR50")
# index of each reported number in COCOeval.stats for iouType="keypoints"
_STATS_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "AR": 5, "AR50": 6}


# --------------------------------------------------------------------------- loading and checking
def _load_json(path: str | os.PathLike[str], what: str):
    path = Path(path)
    if path.is_dir():
        raise RtmwEdgeError(f"{path} is a folder: give the {what} file")
    if not path.is_file():
        raise RtmwEdgeError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise RtmwEdgeError(f"{path}: cannot read {what} file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RtmwEdgeError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_annotations(ann_path: str | os.PathLike[str]) -> dict:
    """Read and check a COCO / COCO-WholeBody keypoint annotation file (RtmwEdgeError on anything wrong)."""
    data = _load_json(ann_path, "annotation")
    name = Path(ann_path).name
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise RtmwEdgeError(f"{name}: not a COCO annotation file (needs 'images' and 'annotations' lists)")
    for img in data["images"]:
        if not isinstance(img, dict) or not isinstance(img.get("id"), int):
            raise RtmwEdgeError(f"{name}: every image needs an integer 'id'")
    wholebody = any(isinstance(a, dict) and "foot_kpts" in a for a in data["annotations"])
    fields = [f for _, f in WHOLEBODY_FIELDS] if wholebody else ["keypoints"]
    sizes = dict(zip([f for _, f in WHOLEBODY_FIELDS], (17, 6, 68, 21, 21)))
    image_ids = {img["id"] for img in data["images"]}
    for a in data["annotations"]:
        if not isinstance(a, dict):
            raise RtmwEdgeError(f"{name}: annotations must be objects")
        aid = a.get("id", "?")
        if a.get("image_id") not in image_ids:
            raise RtmwEdgeError(f"{name}: annotation {aid} refers to image_id {a.get('image_id')!r}, "
                                "which is not in 'images'")
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not isinstance(a.get("area"), (int, float)):
            raise RtmwEdgeError(f"{name}: annotation {aid} needs 'bbox' [x, y, w, h] and 'area'")
        for field in fields:
            kpts = a.get(field)
            if not isinstance(kpts, list) or len(kpts) != 3 * sizes[field]:
                raise RtmwEdgeError(f"{name}: annotation {aid}: '{field}' must hold {sizes[field]}×3 numbers"
                                    + (" (COCO-WholeBody file: every annotation needs all parts)" if wholebody
                                       else ""))
    return data


def is_wholebody_annotation(data: dict) -> bool:
    """True for COCO-WholeBody ground truth (annotations with foot/face/hand keypoints)."""
    return any("foot_kpts" in a for a in data["annotations"])


def _person_annotations(data: dict) -> list[dict]:
    return [a for a in data["annotations"] if a.get("category_id", 1) == 1]


def _gt_keypoints(ann: dict, wholebody: bool) -> np.ndarray:
    """[K, 3] ground-truth keypoints of one person: 17 (COCO) or the 133 concatenated whole-body ones."""
    fields = [f for _, f in WHOLEBODY_FIELDS] if wholebody else ["keypoints"]
    return np.concatenate([np.asarray(ann[f], np.float64).reshape(-1, 3) for f in fields])


def _check_predictions(predictions: list, image_ids: set[int], name: str) -> int:
    """Validate COCO keypoint results; return K (the same for every entry)."""
    if not isinstance(predictions, list):
        raise RtmwEdgeError(f"{name}: predictions must be a list of COCO keypoint results")
    k = None
    for i, p in enumerate(predictions):
        if not isinstance(p, dict):
            raise RtmwEdgeError(f"{name}: prediction {i} is not an object")
        kpts, score = p.get("keypoints"), p.get("score")
        if not isinstance(kpts, list) or len(kpts) % 3 or not kpts:
            raise RtmwEdgeError(f"{name}: prediction {i}: 'keypoints' must be [x, y, score] * K")
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            raise RtmwEdgeError(f"{name}: prediction {i}: 'score' must be a number")
        if p.get("category_id", 1) != 1:
            raise RtmwEdgeError(f"{name}: prediction {i}: category_id {p.get('category_id')!r}; only person (1) "
                                "keypoints are scored")
        if p.get("image_id") not in image_ids:
            raise RtmwEdgeError(f"{name}: prediction {i}: image_id {p.get('image_id')!r} is not in the ground "
                                "truth")
        if k is None:
            k = len(kpts) // 3
            if k not in (17, 133):
                raise RtmwEdgeError(f"{name}: predictions have {k} keypoints; expected 17 (COCO) or 133 "
                                    "(COCO-WholeBody)")
        elif len(kpts) // 3 != k:
            raise RtmwEdgeError(f"{name}: prediction {i} has {len(kpts) // 3} keypoints, the first has {k}")
    return k or 0


# --------------------------------------------------------------------------- scoring
def _coco_eval_part(images: list[dict], gts: list[dict], gt_kpts: list[np.ndarray], dts: list[dict],
                    dt_kpts: list[np.ndarray], part: slice, sigmas: Sequence[float]) -> dict:
    """COCOeval (keypoints) of one part: GT/DT objects whose `keypoints` hold just that part."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_anns = []
    for i, (ann, kpts) in enumerate(zip(gts, gt_kpts)):
        sel = kpts[part]
        gt_anns.append({"id": i + 1,  # COCOeval treats id 0 as "unmatched": number them from 1
                        "image_id": ann["image_id"], "category_id": 1, "iscrowd": int(bool(ann.get("iscrowd", 0))),
                        "area": float(ann["area"]), "bbox": [float(v) for v in ann["bbox"]],
                        "keypoints": sel.ravel().tolist(), "num_keypoints": int((sel[:, 2] > 0).sum())})
    dt_anns = [{"image_id": d["image_id"], "category_id": 1, "score": float(d["score"]),
                "keypoints": kpts[part].ravel().tolist()} for d, kpts in zip(dts, dt_kpts)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary table
        coco_gt = COCO()
        coco_gt.dataset = {"images": [{"id": img["id"]} for img in images],
                           "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
                           "annotations": gt_anns}
        coco_gt.createIndex()
        if dt_anns:
            coco_dt = coco_gt.loadRes(dt_anns)
        else:  # loadRes cannot take an empty list: an empty result set scores 0
            coco_dt = COCO()
            coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # pycocotools reports -1 where the part has no labelled ground truth at all: None (JSON null) here
    return {m: (float(ev.stats[j]) if ev.stats[j] >= 0 else None) for m, j in _STATS_INDEX.items()}


def evaluate_predictions(ann_path: str | os.PathLike[str], predictions: list[dict] | str | os.PathLike[str],
                         keypoint_set: KeypointSetName | None = None) -> dict[str, dict[str, float | None]]:
    """Score COCO keypoint results against an annotation file with pycocotools.

    predictions: `[{"image_id", "category_id": 1, "keypoints": [x, y, s] * K, "score"}]` (or a JSON file of
    them), K = 133 (COCO-WholeBody order body17 + foot6 + face68 + left hand 21 + right hand 21) or 17.
    keypoint_set: None decides from the data: "coco-wholebody" for 133-keypoint predictions on a
    COCO-WholeBody file, else "coco" (body only; 133-keypoint predictions then use their first 17).

    Returns {part: {"AP", "AP50", "AP75", "AR", "AR50"}} for body, foot, face, left_hand, right_hand and
    wholebody (COCO-WholeBody), or only body (COCO). A value is None where the part has no labelled ground
    truth. Keypoint scores in the predictions are not used (COCO's OKS ignores them); the instance score is.
    """
    data = load_annotations(ann_path)
    gt_wholebody = is_wholebody_annotation(data)
    if isinstance(predictions, (str, os.PathLike)):
        name = Path(predictions).name
        predictions = _load_json(predictions, "predictions")
    else:
        name = "predictions"
    k = _check_predictions(predictions, {img["id"] for img in data["images"]}, name)
    if keypoint_set is None:
        keypoint_set = "coco-wholebody" if gt_wholebody and k in (0, 133) else "coco"
    if keypoint_set not in KEYPOINT_SETS:
        raise RtmwEdgeError(f"unknown keypoint set {keypoint_set!r}; choose coco or coco-wholebody")
    if keypoint_set == "coco-wholebody":
        if not gt_wholebody:
            raise RtmwEdgeError(f"{Path(ann_path).name} has no foot/face/hand keypoints: it cannot score "
                                "COCO-WholeBody; use keypoint_set='coco'")
        if k not in (0, 133):
            raise RtmwEdgeError(f"{name}: COCO-WholeBody needs 133 keypoints per prediction, got {k}")
    kset = KEYPOINT_SETS[keypoint_set]

    gts = _person_annotations(data)
    gt_kpts = [_gt_keypoints(a, gt_wholebody)[: kset.num_keypoints] for a in gts]
    dt_kpts = [np.asarray(p["keypoints"], np.float64).reshape(-1, 3)[: kset.num_keypoints] for p in predictions]
    sigmas = OKS_SIGMAS[keypoint_set]
    parts = dict(kset.parts)
    if keypoint_set == "coco-wholebody":
        parts["wholebody"] = (0, kset.num_keypoints)
    return {part: _coco_eval_part(data["images"], gts, gt_kpts, predictions, dt_kpts, slice(a, b), sigmas[a:b])
            for part, (a, b) in parts.items()}


# --------------------------------------------------------------------------- running the pipeline
def _gt_person_boxes(anns: list[dict]) -> np.ndarray:
    """Non-crowd ground-truth person boxes with a positive size, xywh → xyxy."""
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns if not a.get("iscrowd", 0))
             if w > 0 and h > 0]
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def run_eval(ann_path: str | os.PathLike[str], images_dir: str | os.PathLike[str], pose: str | Path,
             det: str | Path | None = None, gt_boxes: bool = False, backend: str = "auto",
             flip_test: bool = False, progress: bool = True, pose_spec: str | None = None) -> tuple[dict, list[dict]]:
    """Run the pose pipeline over the annotation file's images and score it; → (metrics, COCO results).
    `pose_spec`: the registered model whose settings apply to a foreign pose ONNX (see `pose_models`).

    With a detector (`det`): the pipeline BACKEND means (`estimators.open_estimator`: onnxruntime → the CPU
    pipeline; tensorrt / torch-cuda / onnxruntime-gpu → the CUDA-stream pipeline; auto → the CUDA-stream pipeline
    when a GPU and TensorRT engines are there, else the CPU one), frame by frame, as `run` does.
    gt_boxes=True: the non-crowd ground-truth person boxes are the person boxes (box score 1; no detector),
    through the CPU pipeline's pose stage (`TopDownPose`) on BACKEND's host engine — the only pipeline that takes
    boxes from outside. The instance score is `results.coco_items`': box score × mean of the keypoint scores > 0.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from .estimators import open_estimator
    from .pipeline import TopDownPose, resolve_model
    from .progress import progress_bar
    from .sources import read_image
    from .streams import FrameTail

    if gt_boxes == (det is not None):
        raise RtmwEdgeError("give exactly one of a detector (--det) or --gt-boxes")
    data = load_annotations(ann_path)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise RtmwEdgeError(f"images folder not found: {images_dir}")
    files = []
    for img in data["images"]:
        path = images_dir / str(img.get("file_name", ""))
        if not img.get("file_name") or not path.is_file():
            raise RtmwEdgeError(f"image file not found: {path} (image id {img['id']} of {Path(ann_path).name})")
        files.append((img["id"], path))

    with contextlib.ExitStack() as stack:   # the engines are closed when the scoring is done
        if gt_boxes:
            estimator = None
            engine = load_engine(resolve_model(pose, "pose"), backend)
            if hasattr(engine, "close"):
                stack.callback(engine.close)
            pose_model = TopDownPose(engine, flip_test, pose_spec=pose_spec)
            info = pose_model.info
        else:
            estimator = open_estimator(det, pose, backend, flip_test=flip_test, pose_spec=pose_spec)
            if hasattr(estimator, "close"):
                stack.callback(estimator.close)
            info = estimator.info
        if info.num_keypoints not in (17, 133):
            raise RtmwEdgeError(f"{info.name} has {info.num_keypoints} keypoints; evaluation needs a COCO (17) or "
                                "COCO-WholeBody (133) model")
        by_image: dict[int, list[dict]] = {}
        for a in _person_annotations(data):
            by_image.setdefault(a["image_id"], []).append(a)

        predictions: list[dict] = []
        tail = FrameTail()  # no tracking: every photo on its own
        with progress_bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), disable=not progress) as bar:
            task = bar.add_task(f"eval {Path(ann_path).name}", total=len(files))
            for image_id, path in files:
                image = read_image(path)
                if estimator is None:
                    boxes = _gt_person_boxes(by_image.get(image_id, []))
                    kpts, kpt_scores, _ = pose_model(image, boxes)
                    result = tail(boxes, np.ones(len(boxes), np.float32), kpts, kpt_scores, None, 0,
                                  width=image.shape[1], height=image.shape[0])
                else:
                    result = estimator(image)
                predictions += coco_items(result, image_id)
                bar.advance(task)
    keypoint_set = "coco-wholebody" if info.num_keypoints == 133 and is_wholebody_annotation(data) else "coco"
    return evaluate_predictions(ann_path, predictions, keypoint_set), predictions
