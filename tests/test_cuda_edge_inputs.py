"""Edge inputs through both paths — the CPU functions (geometry, OnnxDetector post-processing, TopDownPose) and the
kernels (host shim in CI, a GPU with -m gpu): degenerate boxes (zero-area, inverted, NaN, infinite, huge), NaN/inf
logits, 1×1 and 4K frames, 0 and 64 persons. Both must give the same answer, with no NaN and no crash; degenerate
boxes follow the one rule of `geometry.valid_boxes` (dropped at selection, the empty crop at the crop stage).

RTMW_EDGE_EDGE_TABLE=path.md writes the table (input × CPU result × kernel result) for the closing notes."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from conftest import SHARED
from kernel_devices import DEVICES, open_device
from test_cuda_kernel_twins import NUMPY_SIGMOID_ULP, SIGMOID_ULP, rawhead_launch, run_decode, select, ulp_distance

from rtmw_edge import geometry as G
from rtmw_edge.cuda import kernels as KK
from rtmw_edge.zoo import DET_MEAN_BGR, DET_STD_BGR, POSE_MEAN_RGB, POSE_STD_RGB

NAN, INF = float("nan"), float("inf")
ROWS: list[tuple[str, str, str]] = []


def row(what: str, cpu: str, kernel: str) -> None:
    ROWS.append((what, cpu, kernel))
    path = os.environ.get("RTMW_EDGE_EDGE_TABLE")
    if path:
        with open(path, "w") as f:
            f.write("| input | CPU | kernel |\n|---|---|---|\n")
            f.writelines(f"| {a} | {b} | {c} |\n" for a, b, c in ROWS)


@pytest.fixture(scope="module", params=DEVICES)
def device(request):
    dev = open_device(request.param)
    yield dev
    dev.close()


def photo() -> np.ndarray:
    path = SHARED / "images" / "000000197388.jpg"
    if not path.is_file():
        pytest.skip("shared photos not found")
    return cv2.imread(str(path))


def crops_on(device, image, boxes, size=(192, 256)):
    h, w = image.shape[:2]
    n = len(boxes)
    dst, params = device.empty(n * 3 * size[0] * size[1] * 4), device.empty(n * 16)
    device.launch("crop_persons_bgr_to_nchw", KK.crop_launch(size, n), src=device.put(image), src_w=w, src_h=h,
                  src_pitch=w * 3, boxes=device.put(boxes), num_persons=n, dst=dst, dst_w=size[0], dst_h=size[1],
                  params=params, padding=G.BBOX_PADDING, aspect=float(np.float32(size[0] / size[1])),
                  **KK.normalisation(POSE_MEAN_RGB, POSE_STD_RGB), swap_rb=1, quantize=0)
    return device.get(dst, (n, 3, size[1], size[0])), device.get(params, (n, 4))


DEGENERATE = {
    "zero-area box": [50, 60, 50, 60],
    "zero-width box": [50, 60, 50, 160],
    "inverted box": [120, 200, 20, 40],
    "NaN box": [NAN, 10, 100, 200],
    "inf box": [-INF, 10, 100, 200],
    "huge box 1e20": [-1e20, -1e20, 1e20, 1e20],
}
USABLE = {"normal box": [30, 40, 180, 300], "huge box ±1e5 (valid)": [-1e5, -1e5, 1e5, 1e5],
          "box past the frame": [500, 300, 900, 700]}


def test_degenerate_boxes_get_the_empty_crop_on_both_paths(device):
    image = photo()
    names = list(DEGENERATE) + list(USABLE)
    boxes = np.array([*DEGENERATE.values(), *USABLE.values()], np.float32)
    cpu, centers, scales = G.crop_persons(image, boxes, (192, 256), POSE_MEAN_RGB, POSE_STD_RGB)   # no exception
    ref = KK.reference_crops(image, boxes, (192, 256), POSE_MEAN_RGB, POSE_STD_RGB)[0]
    got, params = crops_on(device, image, boxes)
    empty = ((0 - np.float32(POSE_MEAN_RGB)) / np.float32(POSE_STD_RGB))[::-1]    # RGB order of border 0, swapped
    std = np.asarray(POSE_STD_RGB)[:, None, None]
    for i, name in enumerate(names):
        assert np.isfinite(cpu[i]).all() and np.isfinite(got[i]).all(), name
        np.testing.assert_array_equal(params[i], KK.person_params(centers, scales)[i])
        assert np.abs(got[i] - ref[i]).max() <= 1e-3, name
        gray = float((np.abs(got[i] - cpu[i]) * std).max())
        assert gray <= 1.0, (name, gray)
        if name in DEGENERATE:
            assert not G.valid_boxes(boxes[i:i + 1])[0]
            assert (params[i] == 0).all() and np.allclose(got[i], np.asarray(empty)[::-1, None, None], atol=1e-6)
            row(f"crop: {name}", "empty crop (border), centre = scale = 0", "empty crop, params 0 (equal)")
        else:
            row(f"crop: {name}", f"crop, scale {scales[i][0]:.4g}", f"equal (≤ {gray:.2f} gray vs cv2)")


def test_degenerate_boxes_are_dropped_at_selection_on_both_paths(device):
    """Candidates with NaN/inf/zero-area/inverted/huge boxes and high scores, among real ones: the kernel and the CPU
    post-processing keep the same boxes, never a NaN (fminf/fmaxf would have turned NaN boxes into frame-sized ones)."""
    rng = np.random.default_rng(3)
    real = np.concatenate([rng.uniform(0, 250, (40, 2)), np.zeros((40, 2))], 1).astype(np.float32)
    real[:, 2:] = real[:, :2] + rng.uniform(20, 60, (40, 2))
    bad = np.array([*DEGENERATE.values(), [400, 400, 450, 450]], np.float32)     # the last: in the pad area
    boxes = np.concatenate([bad, real])
    scores = np.concatenate([np.full(len(bad), 0.99), rng.uniform(0.2, 0.9, 40)]).astype(np.float32)
    lb = G.letterbox_params((240, 320), (320, 320))                # content 320×240: rows ≥ 240 are padding
    for run_nms1 in (1, 0):
        got_b, got_s, header = select(device, boxes, scores, lb, run_nms1=run_nms1, max_persons=64)
        want_b, want_s, total = KK.reference_select(boxes, scores, lb, score_threshold=0.3, run_nms1=bool(run_nms1),
                                                    max_persons=64)
        assert np.isfinite(got_b).all() and G.valid_boxes(got_b).all()
        np.testing.assert_array_equal(got_b, want_b)
        np.testing.assert_array_equal(got_s, want_s)
        assert header[0] == total and not (got_s == np.float32(0.99)).any()
    row("select: NaN/inf/zero-area/inverted/1e20 boxes scoring 0.99 + a box in the pad area, among 40 real",
        f"{len(want_b)} boxes, the degenerate ones dropped", f"same {int(header[0])} boxes, bit-equal")


def test_nan_and_inf_detector_logits(device):
    """RTMDet raw-head maps with NaN/±inf logits and NaN distances: decode + select agree and stay finite."""
    rng = np.random.default_rng(0)
    levels = [rng.normal(-4, 2, (1, 40 // (2 ** i), 40 // (2 ** i), 5)).astype(np.float32) for i in range(3)]
    for lv in levels:
        lv[..., 1:] = np.abs(lv[..., 1:]) * 20
    levels[0][0, 3, 4, 0] = NAN                      # NaN logit: score NaN, never above a threshold
    levels[0][0, 5, 6, 0] = INF                      # +inf logit: score 1
    levels[0][0, 7, 8, 0] = -INF                     # −inf: score 0
    levels[1][0, 2, 2, 0], levels[1][0, 2, 2, 3] = 5.0, NAN       # confident, but a NaN distance
    levels[2][0, 1, 1, 0], levels[2][0, 1, 1, 1] = 5.0, INF       # confident, infinite distance
    got_boxes, got_scores = rawhead_launch(device, levels)
    cls = [o[..., :1].transpose(0, 3, 1, 2) for o in levels]
    reg = [o[..., 1:].transpose(0, 3, 1, 2) for o in levels]
    with np.errstate(over="ignore", invalid="ignore"):
        want_boxes, want_scores = G.decode_rtmdet(cls, reg, (8, 16, 32))
    np.testing.assert_array_equal(got_boxes, want_boxes[0])
    finite = ~np.isnan(want_scores[0])
    np.testing.assert_array_equal(np.isnan(got_scores), ~finite)
    assert ulp_distance(got_scores[finite], want_scores[0][finite]).max() <= SIGMOID_ULP + NUMPY_SIGMOID_ULP
    lb = G.letterbox_params((320, 320), (320, 320))
    got_b, got_s, _ = select(device, got_boxes, got_scores, lb)   # select on the same (kernel) scores
    want_b, want_s, _ = KK.reference_select(got_boxes, got_scores, lb, score_threshold=0.3)
    np.testing.assert_array_equal(got_b, want_b)
    np.testing.assert_array_equal(got_s, want_s)
    assert np.isfinite(got_b).all() and np.isfinite(got_s).all() and 1.0 in got_s.tolist()
    row("rawhead: NaN / +inf / −inf logits, NaN and inf distances", f"{len(want_b)} persons, finite; the +inf logit"
        " is a person (score 1), the NaN-distance/inf-distance boxes dropped",
        "boxes bit-equal, scores ≤ 14 ulp (expf), the same persons bit-equal")


@pytest.mark.parametrize("task", ["pose2d", "pose3d", "decoded"])
def test_nan_and_inf_simcc_logits(device, task):
    rng = np.random.default_rng(1)
    n, k, in_wh = 3, 17, (192, 256)
    sx = rng.standard_normal((n, k, 384)).astype(np.float32)
    sy = rng.standard_normal((n, k, 512)).astype(np.float32)
    sz = rng.standard_normal((n, k, 384)).astype(np.float32)
    sx[0, 0] = NAN                                   # a whole axis NaN: invalid keypoint
    sx[0, 1, ::3] = NAN                              # some NaN: the finite maximum wins
    sx[0, 2, 100] = sy[0, 2, 50] = INF               # +inf: that bin wins, the score is clipped finite
    sx[0, 3] = -INF                                  # −inf everywhere: invalid
    sx[1, 4, 7] = NAN                                # a NaN at the very first lane's bins
    sy[1, 5, :] = NAN
    sz[0, :, ::5] = NAN                              # NaN depth bins never win
    boxes = np.array([[10, 20, 110, 220], [50, 60, 150, 200], [0, 0, 40, 80]], np.float32)
    want_k, want_s, want_3d, got, got_3d = run_decode(device, task, sx, sy, sz, boxes, in_wh, 2.0)
    assert np.isfinite(want_k).all() and np.isfinite(want_s).all()
    np.testing.assert_array_equal(got[..., :2], want_k)
    np.testing.assert_array_equal(got[..., 2], want_s)
    assert want_s[0, 0] <= 0 and (want_k[0, 0] == -1).all() and want_s[0, 2] == G.SCORE_LIMIT
    if want_3d is not None:
        assert np.isfinite(want_3d).all()
        np.testing.assert_array_equal(got_3d, want_3d)
    row(f"decode ({task}): all-NaN / some-NaN / +inf / −inf logits", "finite; all-NaN or −inf axis → (−1, −1); "
        "+inf → score 3.4e38", "bit-equal")


@pytest.mark.parametrize("shape", [(1, 1), (2160, 3840)], ids=["1x1", "4K"])
def test_tiny_and_4k_frames(device, shape):
    h, w = shape
    image = cv2.resize(photo(), (w, h), interpolation=cv2.INTER_AREA) if w > 1 else np.array([[[10, 200, 90]]],
                                                                                                np.uint8)
    size = (320, 320)
    lb = KK.letterbox_args((h, w), size)
    dst = device.empty(3 * 320 * 320 * 4)
    device.launch("letterbox_bgr_to_nchw", KK.letterbox_launch(size), src=device.put(image), src_w=w, src_h=h,
                  src_pitch=w * 3, dst=dst, dst_w=320, dst_h=320, new_w=lb["new_w"], new_h=lb["new_h"],
                  scale_x=lb["resize_scale_x"], scale_y=lb["resize_scale_y"],
                  **KK.normalisation(DET_MEAN_BGR, DET_STD_BGR), swap_rb=0, pad_value=114.0, quantize=0)
    got = device.get(dst, (1, 3, 320, 320))
    ref = KK.reference_letterbox(image, size, DET_MEAN_BGR, DET_STD_BGR)
    cpu = G.normalize_to_nchw(G.letterbox(image, size)[0], DET_MEAN_BGR, DET_STD_BGR, False)
    gray = float((np.abs(got - cpu) * np.asarray(DET_STD_BGR)[None, :, None, None]).max())
    assert np.isfinite(got).all() and np.abs(got - ref).max() <= 1e-3 and gray <= 1.0
    boxes = np.array([[0, 0, w, h], [w * 0.25, h * 0.25, w * 0.5, h * 0.75]], np.float32)
    crops, params = crops_on(device, image, boxes)
    cpu_crops, centers, scales = G.crop_persons(image, boxes, (192, 256), POSE_MEAN_RGB, POSE_STD_RGB)
    crop_gray = float((np.abs(crops - cpu_crops) * np.asarray(POSE_STD_RGB)[None, :, None, None]).max())
    assert np.isfinite(crops).all() and crop_gray <= 1.0
    np.testing.assert_array_equal(params, KK.person_params(centers, scales))
    row(f"frame {w}×{h}: letterbox + 2 crops", f"letterbox {lb['new_w']}×{lb['new_h']}, crops finite",
        f"≤ {max(gray, crop_gray):.2f} gray from the CPU, ≤ 1e-3 from the float64 twin")


def test_zero_and_64_persons(device):
    image = photo()
    lb = G.letterbox_params(image.shape[:2], (320, 320))
    # 0 persons: nothing above the threshold; the CPU crop of no boxes is empty and decode has nothing to do
    got_b, got_s, header = select(device, np.zeros((100, 4), np.float32) + [0, 0, 10, 10],
                                  np.full(100, 0.1, np.float32), lb)
    assert header.tolist() == [0, 0, 0, 0] and len(got_b) == 0
    assert G.crop_persons(image, np.zeros((0, 4), np.float32), (192, 256), POSE_MEAN_RGB, POSE_STD_RGB)[0].shape == \
        (0, 3, 256, 192)
    zero = run_decode(device, "pose2d", np.zeros((0, 133, 384), np.float32), np.zeros((0, 133, 512), np.float32),
                      np.zeros((0, 133, 384), np.float32), np.zeros((0, 4), np.float32), (192, 256), 2.0)
    assert zero[0].shape == (0, 133, 2) and zero[3].shape == (0, 133, 3)
    row("0 persons (nothing above the threshold)", "no boxes, empty crop batch", "header 0, nothing written")
    # 64 persons: an 8×8 grid of separated boxes → select keeps 64 (of 80), crops and decode of 64
    xy = np.stack(np.meshgrid(np.arange(10) * 32, np.arange(8) * 26), -1).reshape(-1, 2).astype(np.float32)
    boxes = np.concatenate([xy, xy + [28, 22]], 1)
    scores = np.linspace(0.95, 0.4, len(boxes)).astype(np.float32)
    got_b, got_s, header = select(device, boxes, scores, lb, max_persons=64)
    want_b, want_s, total = KK.reference_select(boxes, scores, lb, score_threshold=0.3, max_persons=64)
    assert header[0] == 64 and header[1] == total == 80
    np.testing.assert_array_equal(got_b, want_b)
    crops, params = crops_on(device, image, got_b)
    cpu_crops, centers, scales = G.crop_persons(image, got_b, (192, 256), POSE_MEAN_RGB, POSE_STD_RGB)
    assert float((np.abs(crops - cpu_crops) * np.asarray(POSE_STD_RGB)[None, :, None, None]).max()) <= 1.0
    rng = np.random.default_rng(2)
    sx, sy = rng.standard_normal((64, 133, 384)).astype(np.float32), rng.standard_normal((64, 133, 512)).astype(
        np.float32)
    want_k, want_s, _, got, _ = run_decode(device, "pose2d", sx, sy, sx, got_b, (192, 256), 2.0)
    np.testing.assert_array_equal(got[..., :2], want_k)
    row("64 persons (80 candidates, max_persons 64)", "64 boxes, 16 dropped; 64 crops, 64×133 keypoints",
        "same 64 boxes, crops ≤ 1 gray, keypoints bit-equal")
