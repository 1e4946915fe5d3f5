"""Skeleton definitions, 2D drawing and the 3D plot, on synthetic persons."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from rtmw_edge.errors import MissingDependencyError, RtmwEdgeError
from rtmw_edge.keypoints import KEYPOINT_SETS
from rtmw_edge.results import FrameResult, Person
from rtmw_edge.viz import PART_COLORS, SKELETON_NAMES, SKELETONS, draw_frame, plot_3d, skeleton_for


@pytest.mark.parametrize("name", ["coco", "coco-wholebody"])
def test_skeleton_names_and_indices_valid(name):
    names = set(KEYPOINT_SETS[name].names)
    for pairs in SKELETON_NAMES[name].values():
        for a, b in pairs:
            assert a in names and b in names and a != b
    sk = SKELETONS[name]
    k = KEYPOINT_SETS[name].num_keypoints
    assert sk.num_keypoints == k and skeleton_for(k) is sk
    assert sk.links.min() >= 0 and sk.links.max() < k
    assert len({tuple(sorted(map(int, link))) for link in sk.links}) == len(sk.links)  # no duplicates
    assert set(sk.link_parts) <= set(PART_COLORS) and set(sk.point_parts) <= set(PART_COLORS)


def test_skeleton_counts_and_coverage():
    assert len(SKELETONS["coco"].links) == 19
    wb = SKELETONS["coco-wholebody"]
    parts = list(wb.link_parts)
    face = 16 + 4 + 4 + 3 + 4 + 6 + 6 + 12 + 8  # jaw, brows, bridge, nostrils, eyes, lips
    assert (parts.count("body"), parts.count("foot"), parts.count("face")) == (19, 6, face)
    assert parts.count("left_hand") == parts.count("right_hand") == 20
    assert len(np.unique(wb.links)) >= 130
    assert len(set(PART_COLORS.values())) == len(PART_COLORS)  # distinct colours
    assert skeleton_for(26) is None


def _person(num_keypoints: int, score: float = 0.9, track_id: int | None = 3) -> Person:
    rng = np.random.default_rng(num_keypoints)
    kpts = rng.uniform([220, 120], [420, 360], (num_keypoints, 2)).astype(np.float32)
    if num_keypoints >= 17:  # a clear, long left forearm: elbow (7) → wrist (9)
        kpts[7], kpts[9] = (250, 200), (350, 200)
    return Person(bbox=np.array([200, 100, 440, 380], np.float32), score=0.87, keypoints=kpts,
                  keypoint_scores=np.full(num_keypoints, score, np.float32), track_id=track_id)


@pytest.mark.parametrize("num_keypoints", [17, 133, 26])
def test_draw_frame_marks_keypoints_and_links(num_keypoints):
    image = np.zeros((480, 640, 3), np.uint8)
    person = _person(num_keypoints)
    result = FrameResult(frame=0, timestamp=0.0, width=640, height=480, persons=[person])
    out = draw_frame(image, result)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not image.any()  # input untouched
    for x, y in np.round(person.keypoints).astype(int):
        assert out[y, x].any()
    if num_keypoints != 26:
        assert out[200, 300].any()  # midpoint of elbow → wrist
    assert not out[470:, 630:].any() and not out[:5, :5].any()  # far corners stay blank
    assert out[100, 320].any()  # top edge of the box


def test_draw_frame_skips_low_scores_and_boxes():
    image = np.full((480, 640, 3), 255, np.uint8)
    person = _person(17, score=0.2)
    result = FrameResult(frame=0, timestamp=0.0, width=640, height=480, persons=[person])
    out = draw_frame(image, result, kpt_threshold=0.3, draw_boxes=False)
    assert np.array_equal(out, image)  # nothing passes the threshold, no box
    person.keypoint_scores[7] = 0.9  # one end of a link: the point, but not the link
    out = draw_frame(image, result, kpt_threshold=0.3, draw_boxes=False)
    assert (out[200, 250] != 255).any() and (out[200, 300] == 255).all()
    person.keypoint_scores[:] = 0.9
    out = draw_frame(image, result, kpt_threshold=0.3, draw_boxes=True)
    assert (out[100, 320] != 255).any()
    assert out is not image and (image == 255).all()


def _person_3d(num_keypoints: int = 133) -> Person:
    p = _person(num_keypoints, track_id=None)
    rng = np.random.default_rng(1)
    p.keypoints_3d = np.concatenate([rng.uniform(-0.5, 0.5, (num_keypoints, 2)),
                                     rng.uniform(4.5, 5.5, (num_keypoints, 1))], axis=1).astype(np.float32)
    return p


def test_plot_3d_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_3d(_person_3d(), tmp_path / "sub" / "pose3d.png", title="synthetic")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 100 and image.std() > 0
    assert [p.name for p in path.parent.iterdir()] == ["pose3d.png"]  # no temporary left behind
    result = FrameResult(0, 0.0, 640, 480, persons=[_person(17), _person_3d(17)])  # one person without 3D
    assert cv2.imread(str(plot_3d(result, tmp_path / "frame.png"))) is not None


def test_plot_3d_errors(tmp_path, monkeypatch):
    result = FrameResult(0, 0.0, 640, 480, persons=[_person(133)])
    with pytest.raises(RtmwEdgeError, match="keypoints_3d"):
        plot_3d(result, tmp_path / "x.png")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"rtmw-edge\[viz\]"):
        plot_3d(_person_3d(), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
