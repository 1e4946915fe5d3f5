"""Per-frame results and their sinks: JSON lines (one object per frame) and COCO results.

JSON-lines schema (one object per frame, `schema_version` 1)::

    {"frame": int, "timestamp": float (seconds: video position, or wall clock for live sources),
     "width": int, "height": int,
     "persons": [{"bbox": [x1, y1, x2, y2], "score": float, "track_id": int | null,
                  "keypoints": [[x, y], ...K], "keypoint_scores": [s, ...K],
                  "keypoints_3d": [[X, Y, Z], ...K]   # RTMW3D only: camera space, Z = depth
                 }, ...]}

Coordinates are image pixels (origin top-left, x right, y down), floats rounded to 0.01 px; scores are
the raw SimCC maxima (not probabilities) rounded to 1e-4. Keypoints with score ≤ 0 are (−1, −1).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

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

    def to_dict(self) -> dict:
        return {"frame": self.frame, "timestamp": round(float(self.timestamp), 4), "width": self.width,
                "height": self.height, "persons": [p.to_dict() for p in self.persons]}


def validate_frame_dict(d: dict, num_keypoints: int | None = None) -> None:
    """Raise ValueError if `d` does not follow the schema above (used by tests and the daemon's clients)."""
    for key, typ in (("frame", int), ("timestamp", (int, float)), ("width", int), ("height", int),
                     ("persons", list)):
        if not isinstance(d.get(key), typ):
            raise ValueError(f"frame field {key!r} missing or not {typ}")
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


class AtomicWriter:
    """Write to `path.tmp` and rename on success, so an interrupted run never leaves a half-written file
    under the final name (the partial file stays as `.partial` on error, for inspection)."""

    def __init__(self, path: str | Path, mode: str = "w") -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.mode = mode
        self.file: IO | None = None

    def __enter__(self) -> IO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, self.mode)
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.file is not None
        self.file.close()
        if exc_type is None or exc_type is KeyboardInterrupt:  # Ctrl-C: keep what was processed
            os.replace(self.tmp, self.path)
        else:
            os.replace(self.tmp, self.path.with_name(self.path.name + ".partial"))


class JsonLinesSink:
    """One JSON object per frame; flushed per frame so a tail -f sees results live."""

    def __init__(self, path: str | Path) -> None:
        self._writer = AtomicWriter(path)
        self._file = self._writer.__enter__()

    def write(self, result: FrameResult) -> None:
        self._file.write(json.dumps(result.to_dict()) + "\n")
        self._file.flush()

    def close(self, error: BaseException | None = None) -> None:
        self._writer.__exit__(type(error) if error else None, error, None)


class CocoResultsSink:
    """COCO keypoint results: [{"image_id", "category_id": 1, "keypoints": [x, y, s]*K, "score", "bbox"}]."""

    def __init__(self, path: str | Path, image_ids: dict[str, int] | None = None) -> None:
        self.path = Path(path)
        self.image_ids = image_ids or {}
        self.items: list[dict] = []

    def add(self, result: FrameResult, image_id: int | None = None, name: str | None = None) -> None:
        if image_id is None:
            image_id = self.image_ids.get(name or "", result.frame)
        for p in result.persons:
            kpts = np.concatenate([p.keypoints, p.keypoint_scores[:, None]], axis=1)
            valid = p.keypoint_scores > 0
            # the usual top-down rescoring: box score × mean score of the confident keypoints
            score = float(p.score) * (float(p.keypoint_scores[valid].mean()) if valid.any() else 0.0)
            x1, y1, x2, y2 = (float(v) for v in p.bbox)
            self.items.append({"image_id": int(image_id), "category_id": 1,
                               "keypoints": np.round(kpts.astype(np.float64), 3).ravel().tolist(),
                               "score": round(score, 6), "bbox": [x1, y1, x2 - x1, y2 - y1]})

    def close(self, error: BaseException | None = None) -> None:
        with AtomicWriter(self.path) as f:
            json.dump(self.items, f)
