"""The fidelity report: FP32 vs INT8 on held-out images (never calibration images), as Markdown + JSON.

Detector: every held-out image and five fixed variants of it (mirror, left/right 70 % crops, 0.6× and
1.5× scale) go through both models with the run-time `OnnxDetector`. Pose: every held-out image and its
mirror, person boxes from COCO (ground truth) or the run-time detector, through both models with the
run-time `TopDownPose`; keypoints compared in image pixels. Measures: `fidelity`.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..backends.onnxruntime import OrtEngine
from ..detectors import OnnxDetector
from ..errors import RtmwEdgeError
from ..outputs import atomic_output
from ..pipeline import TopDownPose
from .fidelity import LOW_THRESHOLD, SCORE_MARGIN, Target, detection_fidelity, keypoint_fidelity

DETECTOR_VARIANTS = ("original", "flip", "crop-left", "crop-right", "scale0.6", "scale1.5")


def detector_variants(image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    h, w = image.shape[:2]
    out = [("original", image), ("flip", image[:, ::-1]), ("crop-left", image[:, : int(w * 0.7)]),
           ("crop-right", image[:, int(w * 0.3):]),
           ("scale0.6", cv2.resize(image, (max(8, int(w * 0.6)), max(8, int(h * 0.6))), interpolation=cv2.INTER_AREA)),
           ("scale1.5", cv2.resize(image, (int(w * 1.5), int(h * 1.5)), interpolation=cv2.INTER_LINEAR))]
    return [(name, np.ascontiguousarray(img)) for name, img in out]


def evaluate_detector(fp32_path: Path, int8_model, images: list[tuple[str, np.ndarray]],
                      threshold: float = 0.3) -> dict:
    """Fidelity of `int8_model` (path or ModelProto) against `fp32_path` on the images and their variants."""
    ref = OnnxDetector(fp32_path, score_threshold=threshold)
    cand = OnnxDetector(int8_model, score_threshold=min(LOW_THRESHOLD, threshold - SCORE_MARGIN))
    r, c, frames = [], [], []
    for name, image in images:
        for variant, img in detector_variants(image):
            r.append(ref(img))
            c.append(cand(img))
            frames.append(f"{name}:{variant}")
    fid = detection_fidelity(r, c, threshold)
    fid["frames"] = len(frames)
    fid["images"] = len(images)
    fid["score_threshold"] = threshold
    return fid


def evaluate_pose(fp32_path: Path, int8_model, units: list[tuple[str, np.ndarray, np.ndarray]],
                  keypoint_set: str | None) -> dict:
    """Fidelity in image pixels on `units` = (name, image, person boxes [N,4]) and their mirror images."""
    ref = TopDownPose(OrtEngine(fp32_path))
    cand_path = int8_model
    cand = TopDownPose(OrtEngine(cand_path))
    kr, sr, kc, areas = [], [], [], []
    for _, image, boxes in units:
        if len(boxes) == 0:
            continue
        w = image.shape[1]
        flipped = boxes.copy()
        flipped[:, [0, 2]] = w - boxes[:, [2, 0]]
        for img, bx in ((image, boxes), (np.ascontiguousarray(image[:, ::-1]), flipped)):
            a, s, _ = ref(img, bx)
            b, _, _ = cand(img, bx)
            kr.append(a)
            sr.append(s)
            kc.append(b)
            areas.append((bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1]))
    if not kr:
        raise RtmwEdgeError("no person in the held-out images: the pose fidelity report needs at least one")
    fid = keypoint_fidelity(np.concatenate(kr), np.concatenate(sr), np.concatenate(kc), np.concatenate(areas),
                            keypoint_set)
    fid["images"] = len(units)
    return fid


# --------------------------------------------------------------------------- rendering
def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def render_markdown(result: dict) -> str:
    q = result["quantization"]
    cal = result["calibration"]
    lines = [f"# INT8 calibration report: {result['model']}", "",
             f"- output: `{result['output']}` ({result['task']}, explicit Q/DQ, opset {q['opset']})",
             f"- calibration: {cal['samples']} samples from {cal['units']} "
             f"{'video frame(s)' if cal['source'] == 'video' else 'image(s)'} "
             f"(cache {cal['cache_status']}{': ' + cal['cache_reason'] if cal.get('cache_reason') else ''}), "
             f"method {cal['method']}" + (f" {cal['percentile']:g} %" if cal["method"] == "percentile" else "")
             + f", bias correction {'on' if q['bias_correction'] else 'off'}",
             f"- INT8 convs: {q['int8_layers']} of {q['layers']}, {_pct(q['int8_mac_share'])} of conv "
             f"multiply-accumulates ({q['int8_macs'] / 1e6:.1f} of {q['total_macs'] / 1e6:.1f} M per image); "
             f"residual Add/Concat Q/DQ: {q['joins']}",
             f"- kept in float: {len(q['float_layers'])} conv(s) — " + ", ".join(
                 f"{k}: {v}" for k, v in q["float_reasons"].items() if v) if q["float_layers"] else
             "- kept in float: none", ""]
    fid = result.get("fidelity")
    target = result.get("target")
    lines += [f"## Fidelity on held-out images ({result.get('heldout', 0)} image(s), never used for calibration)", ""]
    if fid is None:
        lines += ["No held-out images (use --holdout or --eval-images): fidelity not measured.", ""]
    elif result["task"] == "detector":
        lines += ["| measure | value |", "|---|---|",
                  f"| FP32 detections (score > {fid['score_threshold']:g}) on {fid['frames']} frames | "
                  f"{fid['reference_detections']} |",
                  f"| recovered at IoU ≥ 0.5 | {fid['found_iou50']} ({_pct(fid['recall_iou50'])}) |",
                  f"| recovered at IoU ≥ 0.8 | {fid['found_iou80']} ({_pct(fid['recall_iou80'])}) |",
                  f"| mean IoU | {fid['mean_iou']:.3f} |",
                  f"| score shift INT8 − FP32 (mean / max abs) | {fid['score_shift_mean']:+.3f} / "
                  f"{fid['score_shift_max_abs']:.3f} |",
                  f"| INT8 detections with no FP32 match | {fid['extra_detections']} |",
                  f"| recall at IoU ≥ 0.5 allowing INT8 scores {SCORE_MARGIN:g} below threshold (diagnostic) | "
                  f"{_pct(fid['recall_iou50_score_margin'])} |", ""]
    else:
        lines += ["| part | mean px | p95 px | OKS vs FP32 |", "|---|---|---|---|",
                  f"| all ({fid['persons']} persons) | {fid['mean_px']:.2f} | {fid['p95_px']:.2f} | {fid['oks']:.4f} |"]
        for part, d in fid.get("parts", {}).items():
            lines.append(f"| {part} | {d['mean_px']:.2f} | {d['p95_px']:.2f} | {d['oks']:.4f} |")
        lines.append("")
    if fid is not None and target is not None:
        lines += [f"Target ({target['description']}): **{'met' if target['met'] else 'NOT met'}**.", ""]
        steps = next_steps(result)
        if steps:
            lines += ["## Next step", ""] + [f"- {s}" for s in steps] + [""]
    front = result.get("frontier")
    if front:
        lines += ["## Frontier (validation samples from the calibration images)", "",
                  "Layers kept in float one at a time, most sensitive first (sensitivity: error with only "
                  "that layer in INT8).", ""]
        if result["task"] == "detector":
            lines += ["| float convs | + layer | INT8 MAC share | recall@0.5 | recall@0.8 | mean IoU | error |",
                      "|---|---|---|---|---|---|---|"]
            for s in front:
                f = s["fidelity"]
                lines.append(f"| {len(s['float_layers'])} | {_short(s['added'])} | {_pct(s['int8_mac_share'])} | "
                             f"{_pct(f['recall_iou50'])} | {_pct(f['recall_iou80'])} | {f['mean_iou']:.3f} | "
                             f"{f['error']:.4f} |")
        else:
            lines += ["| float convs | + layer | INT8 MAC share | OKS | mean px | p95 px |",
                      "|---|---|---|---|---|---|"]
            for s in front:
                f = s["fidelity"]
                lines.append(f"| {len(s['float_layers'])} | {_short(s['added'])} | {_pct(s['int8_mac_share'])} | "
                             f"{f['oks']:.4f} | {f['mean_px']:.2f} | {f['p95_px']:.2f} |")
        lines.append("")
    sens = result.get("sensitivity")
    if sens:
        lines += ["## Most sensitive layers", "", "| layer | error (only this layer INT8) | MACs |", "|---|---|---|"]
        for name, v, macs in sens[:15]:
            lines.append(f"| `{name}` | {v:.4f} | {macs / 1e6:.2f} M |")
        lines.append("")
    lines += ["## Float layers", ""] + [f"- `{n}`" for n in q["float_layers"]] + [""]
    return "\n".join(lines)


def next_steps(result: dict) -> list[str]:
    """What to try when the fidelity target was missed (empty when it was met or not measured)."""
    target = result.get("target")
    if not target or target["met"]:
        return []
    task = result["task"]
    steps = []
    if not result.get("frontier"):
        steps.append("run again with --auto-exclude: it measures each conv's sensitivity and keeps the worst in float "
                     "until the target is met (the calibration data in the cache is reused)")
    else:
        steps.append("--auto-exclude could not reach the target above its floor of INT8 MACs: lower --min-int8-share "
                     "to let it keep more convs in float")
    steps.append("calibrate on more images from the place the model will see (--num, --images, --video), or try "
                 "--method entropy or mse")
    flags = "--min-recall/--min-iou" if task == "detector" else "--min-oks/--max-px"
    steps.append(f"judge the INT8 model on your own photos with `rtmw-edge check INT8.onnx --against FP32.onnx "
                 f"--images DIR` ({flags} set to what your use accepts); with random weights (export --random-init) "
                 "the target says nothing about a trained model")
    return steps


def _short(name: str | None) -> str:
    if not name:
        return "—"
    parts = [p for p in name.split("/") if p and p not in ("conv", "Conv")]
    return "`" + "/".join(parts[-3:]) + "`"


def write_report(path: Path, result: dict) -> tuple[Path, Path]:
    """`path` (.md) and the same stem .json, each written atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        path = path.with_suffix(".md")
    json_path = path.with_suffix(".json")
    with atomic_output(path) as f:
        f.write(render_markdown(result))
    with atomic_output(json_path) as f:
        json.dump(result, f, indent=2, default=_jsonable)
    return path, json_path


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(type(v).__name__)


def target_summary(target: Target, task: str, fid: dict | None) -> dict | None:
    if fid is None:
        return None
    return {"description": target.describe(task), "met": bool(target.met(task, fid))}
