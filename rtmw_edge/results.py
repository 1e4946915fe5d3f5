"""Per-frame results, their JSON-lines form (one object per frame) and the COCO keypoint results form.

JSON-lines schema (one object per frame, `schema_version` 1)::

    {"frame": int, "source": str | null (the image's file name; the video file, camera or stream otherwise),
     "timestamp": float (seconds: video position, or wall clock for live sources),
     "width": int, "height": int,
     "persons": [{"bbox": [x1, y1, x2, y2], "score": float, "track_id": int | null,
                  "keypoints": [[x, y], ...K], "keypoint_scores": [s, ...K],
                  "keypoints_3d": [[X, Y, Z], ...K]   # RTMW3D only: camera space, Z = depth
                 }, ...]}

Coordinates are image pixels (origin top-left, x right, y down), floats rounded to 0.01 px; scores are
the raw SimCC maxima (not probabilities) rounded to 1e-4. Keypoints with score ≤ 0 are (−1, −1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCHEMA_VERSION = 1


@dataclass
class Person:
    bbox: np.ndarray                 # [4] xyxy, image pixels
    score: float                     # detector score
    keypoints: np.ndarray            # [K, 2] image pixels
    keypoint_scores: np.ndarray      # [K]
    track_id: int | None = None
    keypoints_3d: np.ndarray | None = None  # [K, 3] camera space (RTMW3D)

    def to_dict(self) -> dict:
        d = {
            "bbox": [round(float(v), 2) for v in self.bbox],
            "score": round(float(self.score), 4),
            "track_id": self.track_id,
            "keypoints": np.round(self.keypoints.astype(np.float64), 2).tolist(),
            "keypoint_scores": np.round(self.keypoint_scores.astype(np.float64), 4).tolist(),
        }
        if self.keypoints_3d is not None:
            d["keypoints_3d"] = np.round(self.keypoints_3d.astype(np.float64), 4).tolist()
        return d


@dataclass
class FrameResult:
    frame: int
    timestamp: float
    width: int
    height: int
    persons: list[Person] = field(default_factory=list)
    dropped_persons: int = 0         # detections beyond --max-persons (lowest scores), not estimated
    source: str | None = None        # the image file name, or the video / camera / stream it came from

    def to_dict(self) -> dict:
        return {"frame": self.frame, "source": self.source, "timestamp": round(float(self.timestamp), 4),
                "width": self.width, "height": self.height, "persons": [p.to_dict() for p in self.persons]}


def validate_frame_dict(d: dict, num_keypoints: int | None = None) -> None:
    """Raise ValueError if `d` does not follow the schema above (used by tests and the daemon's clients)."""
    for key, typ in (("frame", int), ("timestamp", (int, float)), ("width", int), ("height", int),
                     ("persons", list)):
        if not isinstance(d.get(key), typ):
            raise ValueError(f"frame field {key!r} missing or not {typ}")
    if d.get("source") is not None and not isinstance(d["source"], str):
        raise ValueError("source must be a string or null")
    for p in d["persons"]:
        if len(p.get("bbox", [])) != 4 or not isinstance(p.get("score"), (int, float)):
            raise ValueError("person needs bbox[4] and score")
        if p.get("track_id") is not None and not isinstance(p["track_id"], int):
            raise ValueError("track_id must be an int or null")
        k = len(p.get("keypoints", []))
        if k == 0 or len(p.get("keypoint_scores", [])) != k or any(len(xy) != 2 for xy in p["keypoints"]):
            raise ValueError("keypoints must be [[x, y]]*K with K keypoint_scores")
        if num_keypoints is not None and k != num_keypoints:
            raise ValueError(f"expected {num_keypoints} keypoints, got {k}")
        if "keypoints_3d" in p and (len(p["keypoints_3d"]) != k or any(len(v) != 3 for v in p["keypoints_3d"])):
            raise ValueError("keypoints_3d must be [[x, y, z]]*K")


def coco_items(result: FrameResult, image_id: int) -> list[dict]:
    """The frame's persons in the COCO keypoint results format:
    ``{"image_id", "category_id": 1, "keypoints": [x, y, s]*K, "score", "bbox": [x, y, w, h]}``, scored the
    usual top-down way: box score × mean score of the keypoints whose score is > 0."""
    items = []
    for p in result.persons:
        kpts = np.concatenate([p.keypoints, p.keypoint_scores[:, None]], axis=1)
        valid = p.keypoint_scores > 0
        score = float(p.score) * (float(p.keypoint_scores[valid].mean()) if valid.any() else 0.0)
        x1, y1, x2, y2 = (float(v) for v in p.bbox)
        items.append({"image_id": int(image_id), "category_id": 1,
                      "keypoints": np.round(kpts.astype(np.float64), 3).ravel().tolist(),
                      "score": round(score, 6), "bbox": [x1, y1, x2 - x1, y2 - y1]})
    return items
