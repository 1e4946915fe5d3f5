"""Drawing results: skeletons of COCO-17 and COCO-WholeBody-133, 2D overlays (OpenCV) and 3D plots.

Skeletons are written with keypoint names (rtmw_edge.keypoints) and turned into index pairs once:

* body: the 19 COCO links (legs, hips, torso, arms, face triangle, ears to shoulders);
* feet: ankle → heel, ankle → big toe, big toe ↔ small toe, per side;
* face (68 points): jaw 0–16, brows 17–21 and 22–26, nose bridge 27–30, nostrils 31–35 as chains;
  eyes 36–41 and 42–47, outer lip 48–59 and inner lip 60–67 as closed loops;
* hands: from each hand root, a chain root → 1 → 2 → 3 → 4 for every finger (hands are not linked to
  the body's wrists, so a hand drawn where the body wrist is missing still reads as a hand).

Every link belongs to one part; `PART_COLORS` gives one BGR colour per part. `plot_3d` needs matplotlib
(the optional extra ``viz``); nothing else here does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import RtmwEdgeError, require
from .keypoints import KEYPOINT_SETS
from .outputs import atomic_path
from .results import FrameResult, Person

# BGR, one per part; chosen to stay apart from each other on photos and on black/white backgrounds.
PART_COLORS: dict[str, tuple[int, int, int]] = {
    "body": (255, 144, 30),      # azure
    "foot": (0, 165, 255),       # orange
    "face": (180, 105, 255),     # pink
    "left_hand": (50, 205, 50),  # green
    "right_hand": (0, 0, 230),   # red
}
BOX_COLOR = (0, 215, 255)        # gold, for boxes without a track id
_TRACK_PALETTE = [(0, 215, 255), (255, 255, 0), (255, 0, 255), (0, 255, 127), (255, 191, 0), (147, 20, 255),
                  (0, 128, 255), (203, 192, 255), (128, 128, 0), (0, 255, 255)]

_BODY_LINKS = [
    ("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"), ("left_hip", "right_hip"), ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"), ("left_shoulder", "right_shoulder"), ("left_shoulder", "left_elbow"),
    ("right_shoulder", "right_elbow"), ("left_elbow", "left_wrist"), ("right_elbow", "right_wrist"),
    ("left_eye", "right_eye"), ("nose", "left_eye"), ("nose", "right_eye"), ("left_eye", "left_ear"),
    ("right_eye", "right_ear"), ("left_ear", "left_shoulder"), ("right_ear", "right_shoulder"),
]
_FOOT_LINKS = [(f"{side}_{a}", f"{side}_{b}") for side in ("left", "right")
               for a, b in (("ankle", "heel"), ("ankle", "big_toe"), ("big_toe", "small_toe"))]


def _chain(names: list[str], closed: bool = False) -> list[tuple[str, str]]:
    links = list(zip(names[:-1], names[1:]))
    return links + [(names[-1], names[0])] if closed else links


def _face(a: int, b: int) -> list[str]:
    return [f"face-{i}" for i in range(a, b + 1)]


_FACE_LINKS = (_chain(_face(0, 16)) + _chain(_face(17, 21)) + _chain(_face(22, 26)) + _chain(_face(27, 30))
               + _chain(_face(31, 35)) + _chain(_face(36, 41), True) + _chain(_face(42, 47), True)
               + _chain(_face(48, 59), True) + _chain(_face(60, 67), True))


def _hand_links(side: str) -> list[tuple[str, str]]:
    fingers = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")
    return [link for f in fingers
            for link in _chain([f"{side}_hand_root"] + [f"{side}_{f}{j}" for j in range(1, 5)])]


SKELETON_NAMES: dict[str, dict[str, list[tuple[str, str]]]] = {
    "coco": {"body": _BODY_LINKS},
    "coco-wholebody": {"body": _BODY_LINKS, "foot": _FOOT_LINKS, "face": _FACE_LINKS,
                       "left_hand": _hand_links("left"), "right_hand": _hand_links("right")},
}


@dataclass(frozen=True)
class Skeleton:
    """Index form of a skeleton: links [L, 2], the part of each link and of each keypoint."""

    name: str
    links: np.ndarray                # [L, 2] int keypoint indices
    link_parts: tuple[str, ...]      # [L]
    point_parts: tuple[str, ...]     # [K]

    @property
    def num_keypoints(self) -> int:
        return len(self.point_parts)

    def link_colors(self) -> list[tuple[int, int, int]]:
        return [PART_COLORS[p] for p in self.link_parts]

    def point_colors(self) -> list[tuple[int, int, int]]:
        return [PART_COLORS[p] for p in self.point_parts]


def _build(set_name: str) -> Skeleton:
    kset = KEYPOINT_SETS[set_name]
    index = {n: i for i, n in enumerate(kset.names)}
    point_parts = [""] * kset.num_keypoints
    for part, (start, stop) in kset.parts.items():
        point_parts[start:stop] = [part] * (stop - start)
    links, parts = [], []
    for part, pairs in SKELETON_NAMES[set_name].items():
        for a, b in pairs:
            links.append((index[a], index[b]))
            parts.append(part)
    return Skeleton(set_name, np.asarray(links, dtype=np.int64).reshape(-1, 2), tuple(parts), tuple(point_parts))


SKELETONS: dict[str, Skeleton] = {name: _build(name) for name in SKELETON_NAMES}


def skeleton_for(num_keypoints: int) -> Skeleton | None:
    """The skeleton of a keypoint count (17 → COCO, 133 → COCO-WholeBody), None for any other count."""
    for skeleton in SKELETONS.values():
        if skeleton.num_keypoints == num_keypoints:
            return skeleton
    return None


def _track_color(track_id: int | None) -> tuple[int, int, int]:
    return BOX_COLOR if track_id is None else _TRACK_PALETTE[track_id % len(_TRACK_PALETTE)]


def _label(image: np.ndarray, text: str, x: int, y: int, color, scale: float, thickness: int) -> None:
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    y = max(y, th + base)  # keep the label inside the image when the box touches the top
    cv2.rectangle(image, (x, y - th - base), (x + tw, y), color, -1)
    cv2.putText(image, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)


def draw_person(image: np.ndarray, person: Person, kpt_threshold: float = 0.3, draw_box: bool = True,
                thickness: int | None = None) -> None:
    """Draw one person onto `image` in place (see `draw_frame`)."""
    h, w = image.shape[:2]
    t = thickness if thickness is not None else max(1, round(min(h, w) / 360))
    if draw_box:
        x1, y1, x2, y2 = (int(round(float(v))) for v in person.bbox)
        color = _track_color(person.track_id)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, t, cv2.LINE_AA)
        text = f"{float(person.score):.2f}"
        if person.track_id is not None:
            text = f"#{person.track_id} {text}"
        _label(image, text, x1, y1, color, 0.4 * t, max(1, t // 2))
    kpts = np.asarray(person.keypoints, dtype=np.float64)
    scores = np.asarray(person.keypoint_scores, dtype=np.float64)
    ok = (scores > kpt_threshold) & np.all(np.isfinite(kpts), axis=1)
    pts = np.round(kpts).astype(np.int64)
    skeleton = skeleton_for(len(kpts))
    if skeleton is not None:
        for (a, b), color in zip(skeleton.links, skeleton.link_colors()):
            if ok[a] and ok[b]:
                cv2.line(image, (int(pts[a, 0]), int(pts[a, 1])), (int(pts[b, 0]), int(pts[b, 1])), color, t,
                         cv2.LINE_AA)
        point_colors = skeleton.point_colors()
        point_parts = skeleton.point_parts
    else:
        point_colors = [PART_COLORS["body"]] * len(kpts)
        point_parts = ("body",) * len(kpts)
    for i in np.flatnonzero(ok):
        small = point_parts[i] in ("face", "left_hand", "right_hand")  # dense points: keep them apart
        radius = max(1, t) if small else t + 2
        cv2.circle(image, (int(pts[i, 0]), int(pts[i, 1])), radius, point_colors[i], -1, cv2.LINE_AA)


def draw_frame(image_bgr: np.ndarray, result: FrameResult, kpt_threshold: float = 0.3,
               draw_boxes: bool = True) -> np.ndarray:
    """A new BGR image with every person of `result` drawn on a copy of `image_bgr` (never modified).

    Boxes carry "#track_id score" (or the score alone); keypoints whose score exceeds `kpt_threshold`
    are dots, and a link is drawn only when both its ends pass. Line thickness grows with the image
    (1 px up to 540 px on the short side, then +1 per 360 px). 17 and 133 keypoints get their skeleton;
    any other count is drawn as points only. A grey image is converted to BGR.
    """
    image = np.asarray(image_bgr)
    if image.ndim == 2:
        canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 3:
        canvas = image.copy()
    else:
        raise RtmwEdgeError(f"draw_frame needs an H×W×3 BGR image, got shape {image.shape}")
    for person in result.persons:
        draw_person(canvas, person, kpt_threshold, draw_boxes)
    return canvas


def _persons_of(obj: Person | FrameResult | Iterable[Person]) -> list[Person]:
    if isinstance(obj, Person):
        return [obj]
    if isinstance(obj, FrameResult):
        return list(obj.persons)
    return list(obj)


def plot_3d(person_or_result: Person | FrameResult | Iterable[Person], path: str | Path,
            kpt_threshold: float = 0.3, elev: float = 15.0, azim: float = -70.0, size_inches: float = 6.0,
            dpi: int = 100, title: str | None = None) -> Path:
    """Write a PNG of the RTMW3D camera-space keypoints (`Person.keypoints_3d`) of one or more persons.

    Axes: X right, Z (depth) into the picture, and up = −Y (camera Y points down); equal scale on all
    three. Same skeleton, colours and `kpt_threshold` as `draw_frame`. Persons without keypoints_3d are
    skipped; if none has them, RtmwEdgeError. Needs matplotlib (``pip install 'rtmw-edge[viz]'``),
    imported here and rendered with the Agg canvas (the global pyplot backend is left alone). The file
    is written to ``<path>.tmp`` and renamed, so a failed plot never leaves a partial PNG. Returns path.
    """
    persons = [p for p in _persons_of(person_or_result) if p.keypoints_3d is not None]
    if not persons:
        raise RtmwEdgeError("plot_3d: no person has keypoints_3d (they come from RTMW3D models only)")
    require("matplotlib", "viz")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    def rgb(bgr):
        return (bgr[2] / 255.0, bgr[1] / 255.0, bgr[0] / 255.0)

    fig = Figure(figsize=(size_inches, size_inches), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    shown = []
    for person in persons:
        k3d = np.asarray(person.keypoints_3d, dtype=np.float64)
        pts = np.stack([k3d[:, 0], k3d[:, 2], -k3d[:, 1]], axis=1)  # plot axes: x, depth, up
        ok = (np.asarray(person.keypoint_scores) > kpt_threshold) & np.all(np.isfinite(pts), axis=1)
        skeleton = skeleton_for(len(pts))
        if skeleton is not None:
            keep = [i for i, (a, b) in enumerate(skeleton.links) if ok[a] and ok[b]]
            if keep:
                segments = pts[skeleton.links[keep]]
                colors = [rgb(PART_COLORS[skeleton.link_parts[i]]) for i in keep]
                ax.add_collection3d(Line3DCollection(segments, colors=colors, linewidths=1.5))
            pcolors = [rgb(c) for c in skeleton.point_colors()]
        else:
            pcolors = [rgb(PART_COLORS["body"])] * len(pts)
        idx = np.flatnonzero(ok)
        if len(idx):
            ax.scatter(pts[idx, 0], pts[idx, 1], pts[idx, 2], c=[pcolors[i] for i in idx], s=6, depthshade=False)
            shown.append(pts[idx])
    if shown:
        allpts = np.concatenate(shown)
        center = (allpts.max(0) + allpts.min(0)) / 2
        half = max(float((allpts.max(0) - allpts.min(0)).max()) / 2, 1e-3) * 1.1
        ax.set_xlim(center[0] - half, center[0] + half)
        ax.set_ylim(center[1] - half, center[1] + half)
        ax.set_zlim(center[2] - half, center[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("X")
    ax.set_ylabel("Z (depth)")
    ax.set_zlabel("−Y (up)")
    ax.view_init(elev=elev, azim=azim)
    if title:
        ax.set_title(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
