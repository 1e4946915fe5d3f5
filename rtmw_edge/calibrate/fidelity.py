"""How close the INT8 model stays to FP32: detection and keypoint fidelity measures, and the target.

Detector (per FP32 detection at the run-time score threshold, matched to the INT8 detection with the best
IoU): recall at IoU ≥ 0.5 and ≥ 0.8 (INT8 detections at the *same* threshold), mean best IoU (0 for a
miss), score shift (INT8 − FP32, matched at IoU ≥ 0.5). As a diagnostic only, recall at IoU ≥ 0.5 when
INT8 detections may score up to `SCORE_MARGIN` below the threshold (a miss that this recovers is a score
flip across the threshold with a correct box, not a lost person). `error` is a continuous version used to
rank layers: mean over FP32 detections of (1 − IoU) + |score shift| against the INT8 candidates down to a
low threshold (a missing box costs 1 + its FP32 score).

Pose (per keypoint with an FP32 score > 0): displacement from FP32 in pixels (mean, p95, max) and OKS
against FP32 (COCO-WholeBody sigmas, area = the person's box area), overall and per body part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import geometry as G
from ..detectors import OnnxDetector
from ..keypoints import KEYPOINT_SETS, OKS_SIGMAS

SCORE_MARGIN = 0.05
LOW_THRESHOLD = 0.05


@dataclass
class Target:
    """The fidelity an INT8 model must keep (auto-exclude stops when met; the report says met or not)."""

    min_recall50: float = 1.0     # detector: FP32 detections recovered at IoU ≥ 0.5
    min_mean_iou: float = 0.85    # detector
    min_oks: float = 0.90         # pose: mean OKS against FP32
    max_p95_px: float | None = None  # pose: optional p95 displacement bound (pixels)

    def met(self, task: str, fid: dict) -> bool:
        if task == "detector":
            return fid["recall_iou50"] >= self.min_recall50 and fid["mean_iou"] >= self.min_mean_iou
        ok = fid["oks"] >= self.min_oks
        if self.max_p95_px is not None:
            ok = ok and fid["p95_px"] <= self.max_p95_px
        return ok

    def describe(self, task: str) -> str:
        if task == "detector":
            return f"recall@IoU0.5 ≥ {self.min_recall50:g} and mean IoU ≥ {self.min_mean_iou:g}"
        extra = f" and p95 ≤ {self.max_p95_px:g} px" if self.max_p95_px is not None else ""
        return f"OKS vs FP32 ≥ {self.min_oks:g}{extra}"


# --------------------------------------------------------------------------- detector
def detection_fidelity(reference: list[tuple[np.ndarray, np.ndarray]],
                       candidate: list[tuple[np.ndarray, np.ndarray]], threshold: float) -> dict:
    """`reference`: per frame FP32 (boxes, scores) at `threshold`; `candidate`: per frame INT8 (boxes,
    scores) down to a low threshold (≤ threshold − SCORE_MARGIN)."""
    n = r50 = r80 = r50_margin = 0
    ious, shifts, errors = [], [], []
    extra = 0
    for (rb, rs), (cb, cs) in zip(reference, candidate):
        strict = cs > threshold
        margin = cs > threshold - SCORE_MARGIN
        n += len(rb)
        if len(cb) and strict.any() and len(rb):
            extra += int((G.box_iou(cb[strict], rb).max(axis=1) < 0.5).sum())
        elif strict.any():
            extra += int(strict.sum())
        if not len(rb):
            continue
        iou_all = G.box_iou(rb, cb) if len(cb) else np.zeros((len(rb), 0))
        for k in range(len(rb)):
            row = iou_all[k]
            s_iou = row[strict].max() if strict.any() else 0.0
            m_iou = row[margin].max() if margin.any() else 0.0
            r50 += s_iou >= 0.5
            r80 += s_iou >= 0.8
            r50_margin += m_iou >= 0.5
            ious.append(float(s_iou))
            if strict.any() and s_iou >= 0.5:
                j = np.flatnonzero(strict)[np.argmax(row[strict])]
                shifts.append(float(cs[j] - rs[k]))
            if len(cb):
                j = int(np.argmax(row))
                errors.append((1.0 - float(row[j])) + abs(float(cs[j]) - float(rs[k])) if row[j] > 0.3
                              else 1.0 + float(rs[k]))
            else:
                errors.append(1.0 + float(rs[k]))
    return {
        "reference_detections": n,
        "recall_iou50": r50 / n if n else 1.0,
        "recall_iou80": r80 / n if n else 1.0,
        "found_iou50": int(r50), "found_iou80": int(r80),
        "mean_iou": float(np.mean(ious)) if ious else 1.0,
        "score_shift_mean": float(np.mean(shifts)) if shifts else 0.0,
        "score_shift_max_abs": float(np.max(np.abs(shifts))) if shifts else 0.0,
        "extra_detections": int(extra),
        "recall_iou50_score_margin": r50_margin / n if n else 1.0,
        "error": float(np.mean(errors)) if errors else 0.0,
    }


class DetectorJudge:
    """Decodes raw detector outputs (validation tensors, already letterboxed) with the detector contract
    and scores them with `detection_fidelity`."""

    def __init__(self, model_path, threshold: float = 0.3) -> None:
        self.threshold = threshold
        self.ref = OnnxDetector(model_path, score_threshold=threshold)
        self.low = OnnxDetector(model_path, score_threshold=LOW_THRESHOLD)
        w, h = self.ref.signature.input_size
        self.identity = G.Letterbox(1.0, 1.0, w, h)

    def _dets(self, outputs: list[np.ndarray], det) -> list[tuple[np.ndarray, np.ndarray]]:
        n = len(outputs[0])
        return [det.postprocess([o[i:i + 1] for o in outputs], self.identity) for i in range(n)]

    def __call__(self, reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
        return detection_fidelity(self._dets(reference, self.ref), self._dets(candidate, self.low), self.threshold)


# --------------------------------------------------------------------------- pose
def keypoint_fidelity(ref_kpts: np.ndarray, ref_scores: np.ndarray, cand_kpts: np.ndarray, areas: np.ndarray,
                      keypoint_set: str | None) -> dict:
    """[N,K,2] keypoints (pixels) of FP32 and INT8, FP32 scores [N,K], person areas [N] (pixels²)."""
    valid = ref_scores > 0
    dist = np.linalg.norm(cand_kpts.astype(np.float64) - ref_kpts.astype(np.float64), axis=-1)
    d = dist[valid]
    k = ref_kpts.shape[1]
    sigmas = np.asarray(OKS_SIGMAS.get(keypoint_set or "", [0.05] * k), np.float64)
    if sigmas.size != k:
        sigmas = np.full(k, 0.05)
    per_person = _oks_per_person(cand_kpts, ref_kpts, valid, sigmas, areas)
    out = {"persons": int(len(ref_kpts)), "keypoints": int(valid.sum()),
           "mean_px": float(d.mean()) if d.size else 0.0,
           "p95_px": float(np.percentile(d, 95)) if d.size else 0.0,
           "max_px": float(d.max()) if d.size else 0.0,
           "oks": float(per_person.mean()) if per_person.size else 1.0, "parts": {}}
    kset = KEYPOINT_SETS.get(keypoint_set or "")
    if kset and kset.num_keypoints == k:
        for part, (lo, hi) in kset.parts.items():
            v = valid[:, lo:hi]
            pd = dist[:, lo:hi][v]
            po = _oks_per_person(cand_kpts[:, lo:hi], ref_kpts[:, lo:hi], v, sigmas[lo:hi], areas)
            out["parts"][part] = {"mean_px": float(pd.mean()) if pd.size else 0.0,
                                  "p95_px": float(np.percentile(pd, 95)) if pd.size else 0.0,
                                  "oks": float(po.mean()) if po.size else 1.0}
    out["error"] = 1.0 - out["oks"]
    return out


def _oks_per_person(pred, ref, valid, sigmas, areas) -> np.ndarray:
    if len(pred) == 0:
        return np.zeros(0)
    return np.array([G.oks(pred[i:i + 1], ref[i:i + 1], valid[i:i + 1], sigmas, max(float(areas[i]), 1.0))[0]
                     for i in range(len(pred))])


class PoseJudge:
    """SimCC outputs of crops (validation tensors) → keypoints in crop pixels → `keypoint_fidelity`
    (area: the padded box fills the crop, so the person covers w·h / padding²)."""

    def __init__(self, input_size: tuple[int, int], split_ratio: float, keypoint_set: str | None,
                 output_names: list[str]) -> None:
        self.input_size = input_size
        self.split_ratio = split_ratio
        self.keypoint_set = keypoint_set
        self.ix = output_names.index("simcc_x") if "simcc_x" in output_names else 0
        self.iy = output_names.index("simcc_y") if "simcc_y" in output_names else 1

    def __call__(self, reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
        kr, sr = G.simcc_decode(reference[self.ix], reference[self.iy], self.split_ratio)
        kc, _ = G.simcc_decode(candidate[self.ix], candidate[self.iy], self.split_ratio)
        area = self.input_size[0] * self.input_size[1] / G.BBOX_PADDING ** 2
        return keypoint_fidelity(kr, sr, kc, np.full(len(kr), area), self.keypoint_set)
