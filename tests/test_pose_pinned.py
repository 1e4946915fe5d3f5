"""Pose-side behaviours that show only with two or more of something, or with a value the other tests never vary
(issue 23 §3), each against hand-computed truth:

- skip-frame detection redoes a frame when *any* carried person collapses (two people, one leaves), and carried
  people keep their own detection scores (two people of different scores);
- a person is confident with ⌈K/2⌉ keypoints above the threshold (mmdeploy PoseTracker's ``pose_min_keypoints``);
- One-Euro on 3D keypoints (metres) scales beta *up* by pixels per metre: one step, computed from the filter's
  published formulas (Casiez et al., CHI 2012);
- a keypoint whose best SimCC logit is exactly 0 is invalid, (−1, −1), on the CPU pipeline (INT8 Q/DQ outputs
  make exact zeros likely; decode.cu's rule is ``score <= 0``);
- an mmdeploy SDK folder's ``output_map`` decides which graph output is x and which is y, whatever the graph order.

The last two run the public `PoseEstimator(det, pose)(image)` with the real detector on a shared photo and a
hand-made ONNX "pose model" whose SimCC logits are constants chosen here, so every keypoint has a known answer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import SHARED
from foreign_layouts import constant_simcc_onnx, write_sdk_json

from rtmw_edge.pipeline import PoseEstimator
from rtmw_edge.results import Person
from rtmw_edge.skipframe import SkipFrameDetection
from rtmw_edge.sources import read_image
from rtmw_edge.tracking import KeypointSmoother

DET = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
PHOTO = SHARED / "images" / "000000197388.jpg"  # 5 skiers


# ------------------------------------------------------------------------------------------ skip-frame detection
TRUE_BOXES = np.array([[100, 100, 160, 260], [300, 100, 360, 260]], np.float32)


class _TwoPeople:
    """Two people standing still; person 1 walks out of the frame at `leaves_at`. The detector sees who is
    there; the pose 'network' finds, in each box, the person whose centre lies inside it (17 keypoints along
    that person's box diagonal, score 0.9) — a box whose person has gone gets nothing (scores 0)."""

    def __init__(self, leaves_at: int) -> None:
        self.frame, self.leaves_at, self.detected_on = 0, leaves_at, []

    def present(self) -> list[int]:
        return [0] if self.frame >= self.leaves_at else [0, 1]

    def detect(self, image):
        self.detected_on.append(self.frame)
        who = self.present()
        return TRUE_BOXES[who].copy(), np.full(len(who), 0.9, np.float32), 0

    def pose(self, image, boxes):
        kpts = np.zeros((len(boxes), 17, 2), np.float32)
        scores = np.zeros((len(boxes), 17), np.float32)
        centres = (TRUE_BOXES[:, :2] + TRUE_BOXES[:, 2:]) / 2
        for i, box in enumerate(boxes):
            inside = [p for p in self.present() if np.all(box[:2] <= centres[p]) and np.all(centres[p] <= box[2:])]
            if inside:
                p = inside[0]
                kpts[i] = np.linspace(TRUE_BOXES[p, :2], TRUE_BOXES[p, 2:], 17)
                scores[i] = 0.9
        return kpts, scores, None


def test_a_frame_is_redone_when_one_of_two_carried_people_collapses():
    script = _TwoPeople(leaves_at=3)
    skip = SkipFrameDetection(5)
    image = np.zeros((480, 640, 3), np.uint8)
    reported = []
    for t in range(8):
        script.frame = t
        boxes, _, _, (kpts, kpt_scores, _), _ = skip.step(image, script.detect, script.pose)
        reported.append(len(boxes))
        assert (kpt_scores > 0.3).sum(axis=1).min() == 17, f"frame {t} reports a person without a pose"
    # frame 3: person 1 has left, its carried box collapses while person 0's does not → redone from the detector,
    # reported with the one person there; then carried again for 5 frames
    assert script.detected_on == [0, 3]
    assert reported == [2, 2, 2, 1, 1, 1, 1, 1]
    assert (skip.detector_runs, skip.redetections) == (2, 1)


def test_carried_people_keep_their_own_detection_scores():
    """Two people detected with different scores, the weaker one first (detector order is not score order): on the
    frames without detection each carried box is reported with its own person's score. (Every other skip-frame
    fixture gives all people one score.)"""
    script = _TwoPeople(leaves_at=99)
    own = {0: 0.6, 1: 0.9}
    detect = script.detect
    script.detect = lambda image: (lambda b, s, c: (b, np.array([own[0], own[1]], np.float32), c))(*detect(image))
    skip = SkipFrameDetection(5)
    image = np.zeros((480, 640, 3), np.uint8)
    centres = (TRUE_BOXES[:, :2] + TRUE_BOXES[:, 2:]) / 2
    for t in range(5):
        script.frame = t
        boxes, scores, _, _, detected = skip.step(image, script.detect, script.pose)
        assert detected == (t == 0) and len(boxes) == 2
        for box, score in zip(boxes, scores):
            person = next(p for p in (0, 1) if np.all(box[:2] <= centres[p]) and np.all(centres[p] <= box[2:]))
            assert score == pytest.approx(own[person]), (t, person)


@pytest.mark.parametrize(("k", "need"), [(17, 9), (133, 67), (5, 3), (21, 11), (6, 3)])
def test_a_person_is_confident_with_ceil_half_of_its_keypoints(k, need):
    # mmdeploy PoseTracker: pose_min_keypoints = ceil(K/2) (shared/reference/rtmw_facts.md §5); "above" is strict
    assert need == -(-k // 2)
    scores = np.zeros((3, k), np.float32)
    scores[0, :need] = 0.31                              # exactly ⌈K/2⌉ above 0.3: confident
    scores[1, :need - 1] = 0.9                           # one short
    scores[2, :need - 1], scores[2, need - 1] = 0.9, 0.3  # the last one *at* the threshold is not above it
    assert SkipFrameDetection(5, kpt_threshold=0.3).confident(scores).tolist() == [True, False, False]
    assert SkipFrameDetection(5, kpt_threshold=0.3, min_keypoints=need - 1).confident(scores).tolist() == \
        [True, True, True]


# ------------------------------------------------------------------------------------------ One-Euro in metres
def _one_euro_step(step: float, dt: float, min_cutoff: float, beta: float, d_cutoff: float) -> float:
    """The One-Euro filter's second output after a step of STEP from 0 (Casiez et al. 2012): the speed
    dx = step/dt low-passed at d_cutoff, then x low-passed at min_cutoff + beta·|dx̂|; alpha = 1/(1 + τ/dt),
    τ = 1/(2π·cutoff). The first sample initialises the filter (x̂ = 0, dx̂ = 0)."""
    def alpha(cutoff: float) -> float:
        return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * cutoff) / dt)

    dx_hat = alpha(d_cutoff) * (step / dt)
    return alpha(min_cutoff + beta * abs(dx_hat)) * step


def test_one_euro_beta_for_metres_is_beta_times_pixels_per_metre():
    dt, metres = 1 / 30, 0.05
    smoother = KeypointSmoother(min_cutoff=1.0, beta=0.05, d_cutoff=1.0, pixels_per_metre=200.0)
    k = 17
    person = Person(bbox=np.array([0, 0, 100, 100], np.float32), score=0.9,
                    keypoints=np.zeros((k, 2), np.float32), keypoint_scores=np.full(k, 0.8, np.float32),
                    keypoints_3d=np.zeros((k, 3), np.float32))
    smoother(person, 0.0)
    moved = Person(bbox=person.bbox + 10, score=0.9, keypoints=person.keypoints + 10,
                   keypoint_scores=person.keypoint_scores, keypoints_3d=person.keypoints_3d + metres)
    out = smoother(moved, dt)
    # beta is in Hz per (signal unit / s): 0.05 Hz per px/s is 0.05 × 200 = 10 Hz per m/s
    want_3d = _one_euro_step(metres, dt, 1.0, 0.05 * 200.0, 1.0)
    want_2d = _one_euro_step(10.0, dt, 1.0, 0.05, 1.0)
    np.testing.assert_allclose(out.keypoints_3d, want_3d, rtol=1e-5)
    np.testing.assert_allclose(out.keypoints, want_2d, rtol=1e-5)
    assert want_3d * 200.0 == pytest.approx(want_2d, rel=1e-9)  # 0.05 m at 200 px/m moves like 10 px
    # the test can tell: beta divided by 200, or not scaled at all, lags about twice as much
    for wrong in (0.05 / 200.0, 0.05):
        assert abs(_one_euro_step(metres, dt, 1.0, wrong, 1.0) - want_3d) > 0.4 * want_3d


# ------------------------------------------------------------------------------------------ constant-logit models
def _crop_to_image(box: np.ndarray, crop_xy: tuple[float, float], input_wh: tuple[int, int]) -> np.ndarray:
    """mmpose's top-down geometry by hand: the box grows by 1.25, then to the input aspect; a crop pixel k maps
    to centre + (k / input − 1/2) · scale."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = (box[2] - box[0]) * 1.25, (box[3] - box[1]) * 1.25
    aspect = input_wh[0] / input_wh[1]
    w, h = (w, w / aspect) if w > h * aspect else (h * aspect, h)
    return np.array([cx + (crop_xy[0] / input_wh[0] - 0.5) * w, cy + (crop_xy[1] / input_wh[1] - 0.5) * h])


@pytest.fixture(scope="module")
def photo():
    if not (DET.is_file() and PHOTO.is_file()):
        pytest.skip("shared detector / photo not found")
    return read_image(PHOTO)


def test_a_best_logit_of_exactly_zero_is_an_invalid_keypoint_on_the_cpu_path(photo, tmp_path):
    k, (w, h) = 17, (192, 256)  # rtmpose-t-256x192: SimCC bins 384 (x) and 512 (y)
    sx = np.full((1, k, 2 * w), -1.0, np.float32)
    sy = np.full((1, k, 2 * h), -1.0, np.float32)
    sx[0, :, 100], sy[0, :, 300] = 0.5, 0.4           # every keypoint: crop (50, 150), score 0.4 ...
    sx[0, 0, :] = sy[0, 0, :] = 0.0                   # ... but 0: every logit exactly 0 (best logit 0)
    sy[0, 1, 300] = 0.0                               # 1: x peak 0.5, y peak exactly 0 → score min(0.5, 0) = 0
    sx[0, 2, 100] = -0.25                             # 2: negative best logit
    sx[0, 3, 100], sy[0, 3, 300] = 1e-6, 0.4          # 3: the smallest positive score is still a keypoint
    path = tmp_path / "constant.onnx"
    constant_simcc_onnx(path, [("simcc_x", sx), ("simcc_y", sy)], (h, w))
    result = PoseEstimator(DET, path, pose_spec="rtmpose-t-256x192")(photo)
    assert len(result.persons) == 5
    for p in result.persons:
        np.testing.assert_array_equal(p.keypoints[:3], -1.0)
        np.testing.assert_array_equal(p.keypoint_scores[:3], [0.0, 0.0, -0.25])
        assert p.keypoint_scores[3] == np.float32(1e-6)
        want = _crop_to_image(p.bbox.astype(np.float64), (50.0, 150.0), (w, h))
        np.testing.assert_allclose(p.keypoints[3:], np.broadcast_to(want, (k - 3, 2)), atol=1e-3)
        assert (p.to_dict()["keypoints"][0] == [-1.0, -1.0])


# ------------------------------------------------------------------------------------------ SDK output_map
def test_the_sdk_output_map_decides_x_and_y_not_the_graph_order(photo, tmp_path):
    """A square 192×192 crop (bins 384 on both axes), so a swapped x/y passes every shape check: the graph lists
    y first under torch's tensor name "output", x second as "700"; only pipeline.json's output_map says which is
    which. x peaks at bin 20 (crop x 10), y at bin 340 (crop y 170): every keypoint lies left of and below the
    box centre; swapped, they would lie right of and above it."""
    from rtmw_edge.zoo import get_spec

    k, side = 17, 192
    sx = np.full((1, k, 2 * side), -1.0, np.float32)
    sy = np.full((1, k, 2 * side), -1.0, np.float32)
    sx[0, :, 20], sy[0, :, 340] = 0.9, 0.8
    folder = tmp_path / "sdk"
    folder.mkdir()
    constant_simcc_onnx(folder / "end2end.onnx", [("output", sy), ("700", sx)], (side, side))
    spec = get_spec("rtmpose-t-256x192")  # its normalisation; the crop size comes from pipeline.json
    write_sdk_json(folder, input_size=(side, side), mean=spec.mean, std=spec.std,
                   output_map={"700": "simcc_x", "output": "simcc_y"}, output_names=["output", "700"],
                   config="rtmpose-t_8xb256-420e_coco-192x192.py")
    result = PoseEstimator(DET, folder)(photo)
    assert len(result.persons) == 5
    for p in result.persons:
        want = _crop_to_image(p.bbox.astype(np.float64), (10.0, 170.0), (side, side))
        np.testing.assert_allclose(p.keypoints, np.broadcast_to(want, (k, 2)), atol=1e-3)
        np.testing.assert_allclose(p.keypoint_scores, 0.8)
        centre = (p.bbox[:2] + p.bbox[2:]) / 2
        assert np.all(p.keypoints[:, 0] < centre[0]) and np.all(p.keypoints[:, 1] > centre[1])
