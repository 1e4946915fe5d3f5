"""Skip-frame detection for video: the person detector runs on key frames only; in between, each person's
box is taken from its own keypoints of the previous frame.

This is how the real-time top-down pipelines run on video — rtmlib's ``PoseTracker(det_frequency=N)``,
mmdeploy's PoseTracker (``det_interval``), and the RTMPose pipeline whose published CPU/GPU latencies
run the detector every 5 frames (../shared/reference/rtmw_facts.md §4, deployment_landscape.md §1.1–1.2).

One `SkipFrameDetection` per video stream; per frame, `step`:

1. **Boxes.** The detector runs on the first frame, once `interval` frames have passed since it last ran,
   and on every frame while nobody is carried (someone entering an empty scene is found at once).
   Otherwise the boxes carried over from the previous frame are used (with their last detection score).
2. **Pose** on those boxes (one batched call, as always).
3. **Collapse check.** A person is *confident* while at least `min_keypoints` of its keypoints score above
   `kpt_threshold`. When a carried person is not (it left, was occluded, or its box drifted off it), the
   number of confident persons has dropped: the frame is redone with the detector, so it is never
   reported with a person missing or with a garbage pose.
4. **Carry.** For each confident person: the bounding box of its confident keypoints, grown by
   `geometry.KEYPOINT_BOX_EXPANSION` (1.25) about its centre (`geometry.keypoints_to_boxes`), clipped to
   the frame. Two carried persons whose poses have converged on one person (OKS above `pose_nms`) keep
   the better-scored one, and the next frame is a detection frame (the other person was lost). Poses, not
   boxes, decide: the keypoint boxes of two people side by side overlap far more than their detections.

Defaults and their sources: expansion 1.25 — rtmlib ``pose_to_bbox(expansion=1.25)``, mmdeploy
``pose_bbox_scale 1.25``; ``min_keypoints`` = ceil(K/2) and ``pose_nms`` 0.5 — mmdeploy PoseTracker's
``pose_min_keypoints`` and ``pose_nms_thr`` (rtmw_facts.md §5); ``kpt_threshold`` — the run's
``--kpt-threshold`` (0.3, the top-down demo's kpt_thr).
Tracking (`tracking.PoseTracker`) runs on the result of every frame as before, so track ids carry across
skipped detections (a carried box is the same person's box of the previous frame, moved with it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import geometry as G
from .tracking import keypoint_oks

Detect = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, int]]   # image → boxes, scores, cut
Pose = Callable[[np.ndarray, np.ndarray], tuple]                        # image, boxes → kpts, scores, 3d


class SkipFrameDetection:
    def __init__(self, interval: int, kpt_threshold: float = 0.3, min_keypoints: int | None = None,
                 pose_nms: float = 0.5, expansion: float = G.KEYPOINT_BOX_EXPANSION) -> None:
        if interval < 1:
            raise ValueError("the detection interval must be at least 1 frame")
        self.interval = int(interval)
        self.kpt_threshold = float(kpt_threshold)
        self.min_keypoints = min_keypoints
        self.pose_nms = float(pose_nms)
        self.expansion = float(expansion)
        self.detector_runs = 0      # frames on which the detector ran
        self.redetections = 0       # of them: frames redone because a carried person collapsed
        self.reset()

    def reset(self) -> None:
        """Forget the carried persons: the next frame is detected (a new video, a scene cut)."""
        self._boxes = np.zeros((0, 4), np.float32)
        self._scores = np.zeros(0, np.float32)
        self._since = 0  # frames since the detector last ran (0: never)

    def confident(self, kpt_scores: np.ndarray) -> np.ndarray:
        """[N] bool: persons with at least `min_keypoints` (default ceil(K/2)) keypoints above the threshold."""
        kpt_scores = np.asarray(kpt_scores)
        if kpt_scores.size == 0:
            return np.zeros(len(kpt_scores), bool)
        need = self.min_keypoints or math.ceil(kpt_scores.shape[1] / 2)
        return (kpt_scores > self.kpt_threshold).sum(axis=1) >= need

    def needs_detection(self) -> bool:
        """Whether the next frame is a key frame (the detector runs): the first frame, `interval` frames after the
        detector last ran, and every frame while nobody is carried."""
        return self._since == 0 or self._since >= self.interval or len(self._boxes) == 0

    def carried(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The boxes carried into the next frame (with their last detection scores), and 0 persons cut."""
        return self._boxes, self._scores, 0

    def accept(self, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, outputs, detected: bool) -> bool:
        """Finish a frame whose pose OUTPUTS were computed on BOXES: False when a carried person collapsed (the
        frame must be redone from the detector, then accepted with detected=True; nothing is kept), else True
        after carrying its confident persons into the next frame. `step` is `needs_detection` → boxes → pose →
        `accept`; a multi-camera tick (`rtmw_edge.multicam`) calls the parts itself to batch many streams."""
        ok = self.confident(outputs[1])
        if not detected and not ok.all():  # a carried person collapsed: redo this frame from the detector
            self.redetections += 1
            return False
        self.detector_runs += detected
        self._since = 1 if detected else self._since + 1
        h, w = image.shape[:2]
        kpts, kpt_scores, box_scores = outputs[0][ok], outputs[1][ok], np.asarray(scores)[ok]
        carried = G.keypoints_to_boxes(kpts, kpt_scores, self.kpt_threshold, self.expansion, (w, h))
        keep = self._distinct(kpts, kpt_scores, carried, box_scores)
        if len(keep) < len(carried):  # two poses on one person: the other person is lost, look again
            self._since = self.interval
        self._boxes, self._scores = carried[keep], np.asarray(box_scores[keep], np.float32)
        return True

    def step(self, image: np.ndarray, detect: Detect, pose: Pose):
        """One frame: → (boxes, scores, persons cut by max_persons, pose outputs, detector ran?)."""
        detected = self.needs_detection()
        boxes, scores, cut = detect(image) if detected else self.carried()
        outputs = pose(image, boxes)
        if not self.accept(image, boxes, scores, outputs, detected):
            detected = True
            boxes, scores, cut = detect(image)
            outputs = pose(image, boxes)
            self.accept(image, boxes, scores, outputs, detected)
        return boxes, scores, cut, outputs, detected

    def _distinct(self, kpts: np.ndarray, kpt_scores: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> list:
        """Indices of the persons to carry, best score first, without a pose that repeats a kept one
        (OKS > `pose_nms`, area = the kept person's keypoint box before expansion)."""
        kept: list[int] = []
        for i in np.argsort(-scores, kind="stable"):
            for j in kept:
                area = float(np.prod(boxes[j, 2:] - boxes[j, :2])) / self.expansion ** 2
                oks = keypoint_oks(kpts[i], kpt_scores[i], kpts[j], kpt_scores[j], area, self.kpt_threshold)
                if oks is not None and oks > self.pose_nms:
                    break
            else:
                kept.append(int(i))
        return kept
