"""The geometry module against independent truth: COCO-WholeBody ground truth, OpenCV, hand-computed cases."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import SHARED

from rtmw_edge import geometry as G

INPUT = (192, 256)   # (w, h) of the 256x192 models
SPLIT = 2.0


def _wholebody_people():
    data = json.loads((SHARED / "images" / "test_coco_wholebody.json").read_text())
    people = []
    for ann in data["annotations"]:
        parts = [ann["keypoints"], ann["foot_kpts"], ann["face_kpts"], ann["lefthand_kpts"], ann["righthand_kpts"]]
        kpts = np.concatenate([np.asarray(p, np.float32).reshape(-1, 3) for p in parts])
        x, y, w, h = ann["bbox"]
        if w > 1 and h > 1 and (kpts[:, 2] > 0).any():
            people.append((np.array([x, y, x + w, y + h], np.float32), kpts))
    return people


PEOPLE = _wholebody_people()


def test_ground_truth_has_whole_body_people():
    assert len(PEOPLE) >= 10
    assert all(k.shape == (133, 3) for _, k in PEOPLE)


@pytest.mark.parametrize("input_wh", [(192, 256), (288, 384)])
def test_simcc_decode_recovers_every_visible_ground_truth_keypoint(input_wh):
    """Logits that peak at each GT keypoint's crop position decode back to it within the SimCC quantisation."""
    w, h = input_wh
    checked = 0
    for box, kpts in PEOPLE:
        centers, scales = G.box_to_center_scale(box[None], input_wh)
        visible = kpts[:, 2] > 0
        crop = G.image_to_crop(kpts[None, :, :2], centers, scales, input_wh)[0]
        inside = visible & (crop[:, 0] >= 0) & (crop[:, 0] < w - 0.5) & (crop[:, 1] >= 0) & (crop[:, 1] < h - 0.5)
        # nearly all visible GT keypoints lie inside the padded box; the rest cannot be represented
        assert inside.sum() >= 0.95 * visible.sum()
        bins_x, bins_y = int(w * SPLIT), int(h * SPLIT)
        simcc_x = np.full((1, 133, bins_x), -1.0, np.float32)
        simcc_y = np.full((1, 133, bins_y), -1.0, np.float32)
        for k in np.flatnonzero(inside):
            # a Gaussian like the training targets, peaked at the nearest bin
            simcc_x[0, k] = np.exp(-((np.arange(bins_x) - crop[k, 0] * SPLIT) ** 2) / 8)
            simcc_y[0, k] = np.exp(-((np.arange(bins_y) - crop[k, 1] * SPLIT) ** 2) / 8)
        locs, scores = G.simcc_decode(simcc_x, simcc_y, SPLIT)
        image_pts = G.crop_to_image(locs, centers, scales, input_wh)[0]
        tolerance = 0.5 / SPLIT * scales[0, 0] / w + 1e-3   # half a bin, in image pixels
        err = np.abs(image_pts[inside] - kpts[inside, :2]).max()
        assert err <= tolerance, (err, tolerance)
        assert (scores[0, inside] > 0).all()
        assert (locs[0, ~inside] == -1).all()  # score ≤ 0 → (−1, −1)
        checked += int(inside.sum())
    assert checked > 500


def test_box_to_center_scale_pads_then_only_grows_to_the_aspect():
    c, s = G.box_to_center_scale(np.array([[100, 50, 300, 450]]), INPUT)   # 200 × 400 box
    np.testing.assert_allclose(c, [[200, 250]])
    np.testing.assert_allclose(s, [[375, 500]])   # 250×500 padded, widened to 0.75 aspect
    c, s = G.box_to_center_scale(np.array([[0, 0, 400, 100]]), INPUT)      # wide box: height grows
    np.testing.assert_allclose(s, [[500, 500 / 0.75]])


def test_warp_matrix_maps_box_corners_and_centre_exactly():
    c, s = G.box_to_center_scale(np.array([[100, 50, 300, 450]]), INPUT)
    m = G.warp_matrix(c[0], s[0], INPUT)
    np.testing.assert_allclose(m, [[0.512, 0, -6.4], [0, 0.512, 0]], atol=1e-12)
    corners = np.array([[12.5, 0, 1], [387.5, 500, 1], [200, 250, 1], [12.5, 500, 1]])
    np.testing.assert_allclose(corners @ m.T, [[0, 0], [192, 256], [96, 128], [0, 256]], atol=1e-9)
    # OpenCV's own 3-point construction (centre, left-middle, and the point rotated 90°) agrees
    src = np.float32([[200, 250], [12.5, 250], [12.5, 250 - 187.5]])
    dst = np.float32([[96, 128], [0, 128], [0, 128 - 96]])
    np.testing.assert_allclose(cv2.getAffineTransform(src, dst), m, atol=1e-5)
    # and the inverse maps crop points back; crop_to_image is the same inverse
    inv = G.invert_affine(m)
    pts = np.array([[0.0, 0.0], [191.5, 255.5], [50.25, 10.75]])
    back = np.c_[pts, np.ones(3)] @ inv.T
    np.testing.assert_allclose(back, G.crop_to_image(pts[None], c, s, INPUT)[0], atol=1e-4)
    np.testing.assert_allclose(G.image_to_crop(back[None], c, s, INPUT)[0], pts, atol=1e-4)


def test_crop_persons_matches_warp_affine_and_normalisation():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 90, 110], [100, 0, 160, 60]], np.float32)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    crops, centers, scales = G.crop_persons(image, boxes, INPUT, mean, std, swap_rb=True)
    assert crops.shape == (2, 3, 256, 192) and crops.dtype == np.float32
    for i in range(2):
        warped = cv2.warpAffine(image, G.warp_matrix(centers[i], scales[i], INPUT), INPUT, flags=cv2.INTER_LINEAR)
        expected = (warped[..., ::-1].astype(np.float32) - mean) / std
        np.testing.assert_allclose(crops[i].transpose(1, 2, 0), expected, atol=1e-5)
    # border is black before normalisation: the second crop reaches past the image's right edge
    corner = crops[1, :, 128, -1] * np.array(std)[:, None].T[0] + np.array(mean)
    np.testing.assert_allclose(corner, 0, atol=1e-3)


def test_letterbox_resizes_the_long_side_pads_114_and_maps_boxes_back():
    image = np.full((425, 640, 3), 200, np.uint8)
    canvas, lb = G.letterbox(image, (320, 320))
    assert (lb.width, lb.height) == (320, 213)           # 425·0.5 = 212.5 → rounded half up
    assert canvas.shape == (320, 320, 3)
    assert (canvas[:213] == 200).all() and (canvas[213:] == 114).all()
    np.testing.assert_allclose(lb.boxes_to_image(np.array([[0, 0, 320, 213]])), [[0, 0, 640, 425]], atol=1e-4)


def test_nms_hand_computed():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # box 3 (best) overlaps 0 (IoU 0.9) and 1; box 2 is separate
    np.testing.assert_array_equal(G.nms(boxes, scores, 0.5), [3, 2])
    np.testing.assert_array_equal(G.nms(boxes, scores, 0.95), [3, 0, 1, 2])
    np.testing.assert_array_equal(G.nms(boxes, scores, 0.5, max_det=1), [3])
    assert G.box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 119)


def test_depth_back_projection_hand_computed():
    cam = G.Camera(fx=1000.0, fy=500.0)
    kpts = np.array([[[320.0, 240.0], [420.0, 140.0]]])
    z_crop = np.array([[144.0, 0.0]])             # bin centre → z_rel 0; bin 0 → −z_range
    xyz = G.depth_to_camera(kpts, z_crop, 144.0, 2.0, 5.0, cam, (640, 480))
    np.testing.assert_allclose(xyz[0, 0], [0, 0, 5.0])
    np.testing.assert_allclose(xyz[0, 1], [100 / 1000 * 3.0, -100 / 500 * 3.0, 3.0])
