"""Every CUDA kernel against its numpy twin, launched with exactly the Launch and arguments `cuda/kernels.py` packs:
on the host shim (the unchanged `.cu` sources compiled with g++, every CI run) and on a GPU (`pytest -m gpu`).

The two sampling kernels are compared with the float64 sampling references of `cuda/kernels.py` (≤ 1e-3 after
normalisation unrounded; rounded: tie-aware, see `assert_rounded`) and with OpenCV (≤ 1 gray level); the rawhead
sigmoid within its ulp budget (`SIGMOID_ULP`); select and decode exactly. The barrier/shuffle kernels also run in
descending thread order on the shim: a missing `__syncthreads` changes their answer in at least one order.

Set RTMW_EDGE_GPU_REPORT=path.json to collect the measured numbers for docs/gpu-validation.md.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from conftest import SHARED
from kernel_devices import DEVICES, open_device

from rtmw_edge import geometry as G
from rtmw_edge.cuda import kernels as KK
from rtmw_edge.zoo import DET_MEAN_BGR, DET_STD_BGR, POSE_MEAN_RGB, POSE_STD_RGB

IMAGES = sorted((SHARED / "images").glob("*.jpg"))
RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
REPORT: dict = {}

# |kernel − float64 sigmoid| in float32 ulps of the result. CUDA's expf is within 2 ulp (CUDA C++ Programming
# Guide, single-precision functions); that is a relative error ≤ 4u (u = 2^-24) in e = exp(−x); 1/(1+e) passes it
# on scaled by e/(1+e) < 1 and adds ≤ 2u for the rounded add and divide: ≤ 6u relative ≤ 6 ulp of the result.
# numpy's own float32 exp (SIMD) is within 3 ulp (numpy's release notes give 2.52): its sigmoid ≤ 8 ulp. The
# kernel and its twin therefore differ by ≤ 14 ulp; a fixed rtol of 2e-7 (≈ 2–4 ulp) is tighter than numpy alone.
SIGMOID_ULP = 6
NUMPY_SIGMOID_ULP = 8


def record(key: str, value) -> None:
    REPORT[key] = value
    path = os.environ.get("RTMW_EDGE_GPU_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(REPORT, f, indent=2, default=float)


@pytest.fixture(scope="module", params=DEVICES)
def device(request):
    dev = open_device(request.param)
    yield dev
    dev.close()


@pytest.fixture(scope="module")
def images():
    if not IMAGES:
        pytest.skip("shared photos not found")
    return [cv2.imread(str(p)) for p in IMAGES]


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many float32 values lie between a and b (0 = equal), via the ordered integer view."""
    def ordered(x):
        i = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return np.abs(ordered(a) - ordered(b))


def assert_rounded(out: np.ndarray, unrounded: np.ndarray, mean, std, tie: float = 1e-3) -> float:
    """A `quantize=1` output against the float64 value before rounding (both normalised, channel c with mean[c],
    std[c]): every value must be np.rint of it, except within `tie` gray levels of an exact .5, where float32
    and float64 legitimately round to different neighbours (bilinear weights of 0.5 make such ties common).
    `tie` bounds the float32 bilinear's own error (≈ 1e-4 gray on 0..255). Returns the fraction of ties."""
    m = np.asarray(mean, np.float32).astype(np.float64)[None, :, None, None]
    s = np.asarray(std, np.float32).astype(np.float64)[None, :, None, None]
    raw = unrounded * s + m
    got = out.astype(np.float64) * s + m
    near_tie = np.abs(raw - np.floor(raw) - 0.5) <= tie
    ok = np.abs(got - np.rint(raw)) <= 1e-3
    ok |= near_tie & ((np.abs(got - np.floor(raw)) <= 1e-3) | (np.abs(got - np.ceil(raw)) <= 1e-3))
    assert ok.all(), f"{(~ok).sum()} values are not the rounded float64 value (ties allowed: {near_tie.mean():.4%})"
    return float(near_tie.mean())


# --------------------------------------------------------------------------- (1) letterbox
@pytest.mark.parametrize("size", [(320, 320), (640, 640), (416, 256)])
@pytest.mark.parametrize("swap_rb", [False, True])
def test_letterbox_kernel(device, images, size, swap_rb):
    worst_ref = worst_cv = 0.0
    for image in images:
        h, w = image.shape[:2]
        padded = np.zeros((h, w * 3 + 64), np.uint8)       # a pitched frame: rows longer than w·3
        padded[:, : w * 3] = image.reshape(h, -1)
        src = device.put(padded)
        dst = device.empty(3 * size[0] * size[1] * 4)
        lb = KK.letterbox_args((h, w), size)
        ref = KK.reference_letterbox(image, size, DET_MEAN_BGR, DET_STD_BGR, swap_rb, 114, False)
        for quantize in (0, 1):
            device.launch("letterbox_bgr_to_nchw", KK.letterbox_launch(size), src=src, src_w=w, src_h=h,
                          src_pitch=w * 3 + 64, dst=dst, dst_w=size[0], dst_h=size[1], new_w=lb["new_w"],
                          new_h=lb["new_h"], scale_x=lb["resize_scale_x"], scale_y=lb["resize_scale_y"],
                          **KK.normalisation(DET_MEAN_BGR, DET_STD_BGR), swap_rb=int(swap_rb), pad_value=114.0,
                          quantize=quantize)
            out = device.get(dst, (1, 3, size[1], size[0]))
            if quantize:
                assert_rounded(out, ref, DET_MEAN_BGR, DET_STD_BGR)
            else:
                worst_ref = max(worst_ref, float(np.abs(out - ref).max()))
                cpu = G.normalize_to_nchw(G.letterbox(image, size)[0], DET_MEAN_BGR, DET_STD_BGR, swap_rb)
                # output channel c is (value − mean[c]) / std[c] whatever swap_rb reads: gray = diff · std[c]
                std = np.asarray(DET_STD_BGR, np.float64)[None, :, None, None]
                worst_cv = max(worst_cv, float((np.abs(out - cpu) * std).max()))
    assert worst_ref <= 1e-3
    assert worst_cv <= 1.0 + 1e-3
    record(f"{device.kind}: letterbox {size} swap={swap_rb}", {"max_vs_float64_ref": worst_ref,
                                                               "max_gray_vs_cv2": worst_cv})


# --------------------------------------------------------------------------- (3) crops
def test_crop_kernel(ordered, images):
    device = ordered
    worst_ref = worst_cv = 0.0
    for image in images:
        h, w = image.shape[:2]
        boxes = np.array([[10.5, 20.25, 200.7, 400.1], [-30, -20, 100, 150], [w - 50, h - 80, w + 40, h + 30],
                          [w * 0.3, h * 0.2, w * 0.35, h * 0.3], [0, 0, w, h]], np.float32)
        n, size = len(boxes), (192, 256)
        src, bx = device.put(image), device.put(boxes)
        dst, params = device.empty(n * 3 * 256 * 192 * 4), device.empty(n * 16)
        ref, centers, scales = KK.reference_crops(image, boxes, size, POSE_MEAN_RGB, POSE_STD_RGB)
        for quantize in (0, 1):
            device.launch("crop_persons_bgr_to_nchw", KK.crop_launch(size, n), src=src, src_w=w, src_h=h,
                          src_pitch=w * 3, boxes=bx, num_persons=n, dst=dst, dst_w=192, dst_h=256, params=params,
                          padding=G.BBOX_PADDING, aspect=float(np.float32(192 / 256)),
                          **KK.normalisation(POSE_MEAN_RGB, POSE_STD_RGB), swap_rb=1, quantize=quantize)
            out = device.get(dst, (n, 3, 256, 192))
            np.testing.assert_array_equal(device.get(params, (n, 4)), KK.person_params(centers, scales))
            if quantize:
                assert_rounded(out, ref, POSE_MEAN_RGB, POSE_STD_RGB)
            else:
                worst_ref = max(worst_ref, float(np.abs(out - ref).max()))
                cpu = G.crop_persons(image, boxes, size, POSE_MEAN_RGB, POSE_STD_RGB)[0]
                std = np.asarray(POSE_STD_RGB)[None, :, None, None]
                worst_cv = max(worst_cv, float((np.abs(out - cpu) * std).max()))
    assert worst_ref <= 1e-3
    assert worst_cv <= 1.0
    record(f"{device.kind}: crops", {"max_vs_float64_ref": worst_ref, "max_gray_vs_cv2_warpAffine": worst_cv})


def test_crop_kernel_reads_x_and_y_the_right_way(device):
    """A frame whose value encodes its column (channel 0) and row (channel 2): the crop of a box must read column
    x and row y where the affine says so (a swapped x/y reads the wrong pixels even on square crops)."""
    h, w = 120, 200
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx % 256, np.full_like(xx, 7), yy % 256], -1).astype(np.uint8)
    boxes = np.array([[20, 10, 60, 90], [100, 30, 180, 50]], np.float32)
    size = (48, 64)
    dst, params = device.empty(2 * 3 * 64 * 48 * 4), device.empty(32)
    device.launch("crop_persons_bgr_to_nchw", KK.crop_launch(size, 2), src=device.put(image), src_w=w, src_h=h,
                  src_pitch=w * 3, boxes=device.put(boxes), num_persons=2, dst=dst, dst_w=48, dst_h=64, params=params,
                  padding=1.0, aspect=float(np.float32(48 / 64)), mean0=0.0, mean1=0.0, mean2=0.0, std0=1.0, std1=1.0,
                  std2=1.0, swap_rb=0, quantize=0)
    out = device.get(dst, (2, 3, 64, 48))
    centers, scales = G.box_to_center_scale(boxes, size, 1.0)
    for i in range(2):
        inv = KK.inverse_warp(centers[i], scales[i], size)
        ys, xs = np.mgrid[0:64, 0:48].astype(np.float64)
        col = inv[0, 0] * xs + inv[0, 2]
        row = inv[1, 1] * ys + inv[1, 2]
        inside = (col >= 0) & (col <= w - 1) & (row >= 0) & (row <= h - 1)
        np.testing.assert_allclose(out[i, 0][inside], col[inside], atol=1e-3)    # channel 0 holds the column
        np.testing.assert_allclose(out[i, 2][inside], row[inside], atol=1e-3)    # channel 2 holds the row
        assert inside.mean() > 0.5


# --------------------------------------------------------------------------- (2) detector post-processing
def detect_rawhead(images) -> list:
    """(image, the three raw-head maps finest first, letterbox) per image, from the real RTMDet-nano."""
    from rtmw_edge.detectors import OnnxDetector

    det = OnnxDetector(RAWHEAD)
    out = []
    for image in images:
        tensor, lb = det.preprocess(image)
        out.append((image, sorted(det.infer(tensor), key=lambda o: -o.shape[1]), lb))
    return out


def save_rawhead_outputs(path) -> None:
    """The detector outputs for a process that must not load ONNX Runtime (the sanitizer run)."""
    arrays = {}
    for i, (_, levels, lb) in enumerate(detect_rawhead([cv2.imread(str(p)) for p in IMAGES])):
        arrays.update({f"{i}_level{j}": o for j, o in enumerate(levels)})
        arrays[f"{i}_lb"] = np.array([lb.scale_x, lb.scale_y, lb.width, lb.height])
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def rawhead_outputs(images):
    if not RAWHEAD.is_file():
        pytest.skip("shared RTMDet raw-head detector not found")
    saved = os.environ.get("RTMW_EDGE_RAWHEAD_OUTPUTS")
    if not saved:
        return detect_rawhead(images)
    with np.load(saved) as z:
        out = []
        for i, image in enumerate(images):
            sx, sy, w, h = z[f"{i}_lb"]
            out.append((image, [z[f"{i}_level{j}"] for j in range(3)], G.Letterbox(float(sx), float(sy), int(w),
                                                                                 int(h))))
        return out


def rawhead_launch(device, levels):
    k = sum(o.shape[1] * o.shape[2] for o in levels)
    boxes, scores = device.empty(k * 16), device.empty(k * 4)
    args = {}
    for i, (o, s) in enumerate(zip(levels, (8, 16, 32))):
        args.update({f"level{i}": device.put(o), f"h{i}": o.shape[1], f"w{i}": o.shape[2], f"stride{i}": s})
    device.launch("rtmdet_rawhead_decode", KK.rawhead_launch(k), **args, boxes=boxes, scores=scores)
    return device.get(boxes, (k, 4)), device.get(scores, (k,))


def test_rawhead_decode_kernel(device, rawhead_outputs):
    worst = worst_twin = 0
    for _, levels, _ in rawhead_outputs:
        cls = [o[..., :1].transpose(0, 3, 1, 2) for o in levels]
        reg = [o[..., 1:].transpose(0, 3, 1, 2) for o in levels]
        want_boxes, want_scores = G.decode_rtmdet(cls, reg, (8, 16, 32))
        got_boxes, got_scores = rawhead_launch(device, levels)
        np.testing.assert_array_equal(got_boxes, want_boxes[0])
        logits = np.concatenate([c.reshape(-1) for c in cls]).astype(np.float64)
        exact = 1.0 / (1.0 + np.exp(-logits))
        worst = max(worst, int(ulp_distance(got_scores, exact).max()))
        worst_twin = max(worst_twin, int(ulp_distance(got_scores, want_scores[0]).max()))
    assert worst <= SIGMOID_ULP
    assert worst_twin <= SIGMOID_ULP + NUMPY_SIGMOID_ULP
    record(f"{device.kind}: rawhead sigmoid", {"max_ulp_vs_float64": worst, "max_ulp_vs_numpy": worst_twin})


def select(device, boxes, scores, lb, *, threshold=0.3, run_nms1=1, max_persons=32, max_det1=1000):
    k = len(scores)
    b, s = device.put(boxes.astype(np.float32)), device.put(scores.astype(np.float32))
    work, ob, os_, hd = (device.empty(KK.nms_scratch_bytes(k)), device.empty(max_persons * 16),
                         device.empty(max_persons * 4), device.empty(16))
    image_w, image_h = lb.width / lb.scale_x, lb.height / lb.scale_y
    device.launch("detector_select", KK.select_launch(k), boxes=b, scores=s, num_candidates=k,
                  score_threshold=float(np.float32(threshold)), run_nms1=run_nms1, iou1=0.6, max_det1=max_det1,
                  scale_x=float(np.float32(lb.scale_x)), scale_y=float(np.float32(lb.scale_y)),
                  clip_w=float(round(image_w)), clip_h=float(round(image_h)), iou2=0.3, max_persons=max_persons,
                  work=work, out_boxes=ob, out_scores=os_, header=hd)
    header = device.get(hd, (4,), np.int32)
    n = int(header[0])
    return device.get(ob, (max_persons, 4))[:n], device.get(os_, (max_persons,))[:n], header


@pytest.fixture(params=["ascending", "descending"])
def ordered(request, device):
    """The device, and on the shim also a second thread order (a GPU has its own)."""
    if device.kind != "host":
        if request.param != "ascending":
            pytest.skip("thread orders are a shim setting")
        return device
    from kernel_devices import HostDevice

    return device if request.param == "ascending" else HostDevice(order=request.param)


def test_detector_select_kernel_on_real_detections(ordered, rawhead_outputs):
    for _, levels, lb in rawhead_outputs:
        cls = [o[..., :1].transpose(0, 3, 1, 2) for o in levels]
        reg = [o[..., 1:].transpose(0, 3, 1, 2) for o in levels]
        boxes, scores = (a[0] for a in G.decode_rtmdet(cls, reg, (8, 16, 32)))
        for max_persons in (32, 1):
            got_b, got_s, header = select(ordered, boxes, scores, lb, max_persons=max_persons)
            want_b, want_s, total = KK.reference_select(boxes, scores, lb, score_threshold=0.3,
                                                        max_persons=max_persons)
            np.testing.assert_array_equal(got_b, want_b)
            np.testing.assert_array_equal(got_s, want_s)
            assert header[1] == total and header[0] == len(want_b)
            assert header[2] == int(((scores > np.float32(0.3)) & G.valid_boxes(boxes)).sum())


@pytest.mark.parametrize("seed", range(6))
def test_detector_select_kernel_on_hard_cases(ordered, seed):
    """Ties, duplicates, zero-area and nested boxes, thousands of candidates, graphs that ran NMS, nothing kept."""
    rng = np.random.default_rng(seed)
    k = [1000, 8400, 5, 1000, 300, 64][seed]
    xy = rng.uniform(-20, 330, (k, 2))
    wh = rng.choice([0.0, 1.0, 30.0, 120.0], (k, 2)) * rng.uniform(0.5, 1.5, (k, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    boxes[::7] = boxes[0]                                   # duplicates
    scores = rng.choice([0.1, 0.31, 0.5, 0.5, 0.9], k).astype(np.float32) if seed != 4 else \
        np.full(k, 0.2, np.float32)                         # seed 4: nothing above the threshold
    lb = G.letterbox_params((500, 640), (320, 320))
    for run_nms1 in (1, 0):
        got_b, got_s, header = select(ordered, boxes, scores, lb, run_nms1=run_nms1, max_persons=16)
        want_b, want_s, total = KK.reference_select(boxes, scores, lb, score_threshold=0.3, run_nms1=bool(run_nms1),
                                                    max_persons=16)
        np.testing.assert_array_equal(got_b, want_b)
        np.testing.assert_array_equal(got_s, want_s)
        assert header[1] == total


def test_detector_select_keeps_the_end_of_a_suppression_chain(ordered):
    """A suppresses B (IoU 0.43 > 0.3), B would suppress C (0.43) but is itself suppressed, and C barely touches A
    (0.11): greedy NMS keeps A, D and C. C sits at rank 3 so that a thread other than the first handles it — a
    round of the kernel's NMS that does not end with a barrier lets that thread read B's flag before it is set."""
    boxes = np.array([[10, 10, 110, 60], [50, 10, 150, 60], [90, 10, 190, 60], [200, 200, 250, 260]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.75], np.float32)
    lb = G.letterbox_params((320, 320), (320, 320))
    want_b, want_s, _ = KK.reference_select(boxes, scores, lb, score_threshold=0.3, run_nms1=False)
    assert want_s.tolist() == pytest.approx([0.9, 0.75, 0.7])
    got_b, got_s, header = select(ordered, boxes, scores, lb, run_nms1=0)
    np.testing.assert_array_equal(got_b, want_b)
    np.testing.assert_array_equal(got_s, want_s)


def test_detector_select_drops_empty_slots_of_in_graph_nms_at_threshold_zero(ordered):
    """A graph that ran NMS pads its K slots with score 0 (geometry of the padding arbitrary): with
    --det-threshold 0 those slots are not persons (score > threshold, strictly), on the kernel and on the CPU."""
    from rtmw_edge.detectors import OnnxDetector

    boxes = np.array([[10, 10, 60, 90], [100, 20, 150, 120], [0, 0, 0, 0], [5, 5, 40, 40], [5, 5, 40, 40]],
                     np.float32)
    scores = np.array([0.9, 0.4, 0.0, 0.0, 0.0], np.float32)          # 2 detections, 3 empty slots
    lb = G.letterbox_params((320, 320), (320, 320))
    got_b, got_s, header = select(ordered, boxes, scores, lb, threshold=0.0, run_nms1=0)
    assert header[0] == 2 and got_s.tolist() == pytest.approx([0.9, 0.4])
    det = OnnxDetector.__new__(OnnxDetector)                           # the CPU post-processing alone
    det.signature = type("S", (), {"has_nms": True, "kind": "project"})()
    det.score_threshold, det.nms_iou, det.max_detections = 0.0, 0.6, 100
    det._decode = lambda outputs: outputs
    cpu_b, cpu_s = det.postprocess((boxes, scores), lb)
    np.testing.assert_array_equal(cpu_b, got_b)
    np.testing.assert_array_equal(cpu_s, got_s)


# --------------------------------------------------------------------------- (4) decode
@pytest.mark.parametrize("task", ["pose2d", "pose3d", "decoded"])
def test_decode_kernel_equals_the_cpu_postprocess(ordered, task):
    rng = np.random.default_rng(5)
    n, k, in_wh, split = 5, 133, (288, 384), 2.0
    sx = rng.standard_normal((n, k, in_wh[0] * 2)).astype(np.float32)
    sy = rng.standard_normal((n, k, in_wh[1] * 2)).astype(np.float32)
    sz = rng.standard_normal((n, k, in_wh[0] * 2)).astype(np.float32)
    sx[:, ::5, 10] = sx[:, ::5, 300] = 50.0                 # ties: the first maximum wins
    sx[:, 1::7, 40] = sx[:, 1::7, 41] = 60.0                # ties in one lane's neighbours
    sy[:, 3::11] -= 100.0                                   # score ≤ 0: (-1, -1)
    boxes = rng.uniform(0, 600, (n, 4)).astype(np.float32)
    boxes[:, 2:] = boxes[:, :2] + rng.uniform(10, 300, (n, 2)).astype(np.float32)
    want_k, want_s, want_3d, got, got_3d = run_decode(ordered, task, sx, sy, sz, boxes, in_wh, split)
    np.testing.assert_array_equal(got[..., :2], want_k)
    np.testing.assert_array_equal(got[..., 2], want_s)
    if want_3d is not None:
        np.testing.assert_array_equal(got_3d, want_3d)


@pytest.mark.parametrize("task", ["pose2d", "decoded"])
def test_a_best_logit_of_exactly_zero_is_invalid_on_both_paths(device, task):
    """Issue 23 §3: INT8 Q/DQ outputs make exact zeros likely. Hand truth: score = min(max_x, max_y); a score ≤ 0
    is an invalid keypoint at (−1, −1), on the GPU's decode as in the CPU postprocess (random logits never hit 0)."""
    n, k, in_wh, split = 2, 6, (192, 256), 2.0
    sx = np.full((n, k, 384), -1.0, np.float32)
    sy = np.full((n, k, 512), -1.0, np.float32)
    sx[:, :, 100], sy[:, :, 300] = 0.5, 0.4
    sx[:, 0], sy[:, 0] = 0.0, 0.0                 # every logit exactly 0
    sy[:, 1, 300] = 0.0                           # x peak 0.5, y peak exactly 0 → score 0
    sx[:, 2, 100] = -0.0                          # negative zero is zero too
    sx[:, 3, 100] = 1e-6                          # the smallest positive score stays a keypoint
    boxes = np.array([[100, 50, 300, 450], [400, 100, 500, 300]], np.float32)
    want_k, want_s, _, got, _ = run_decode(device, task, sx, sy, sy, boxes, in_wh, split)
    for keypoints, scores in ((want_k, want_s), (got[..., :2], got[..., 2])):
        np.testing.assert_array_equal(keypoints[:, :3], -1.0)
        np.testing.assert_array_equal(scores[:, :3], 0.0)
        assert (keypoints[:, 3:] >= 0).all() and (scores[:, 3] == np.float32(1e-6)).all()


def run_decode(device, task, sx, sy, sz, boxes, in_wh, split, image_wh=(800, 600)):
    """The decode kernel and TopDownPose.postprocess on the same logits; returns both answers."""
    from rtmw_edge.pipeline import TopDownPose

    n, k = sx.shape[:2]
    centers, scales = G.box_to_center_scale(boxes, in_wh)
    cam = G.Camera()
    decoded = task == "decoded"
    outputs = {"simcc_x": sx, "simcc_y": sy}
    if task == "pose3d":
        outputs["simcc_z"] = sz
    if decoded:
        kp, sc = G.simcc_decode(sx, sy, split)
        outputs = {"keypoints": kp, "scores": sc, "z": G.simcc_decode_z(sz, split)}

    class Info:  # what TopDownPose.postprocess reads
        input_size, split_ratio, z_range, root_z, focal = in_wh, split, 2.1744869, 5.14388, None
    Info.decoded = decoded
    Info.task = "pose3d" if task != "pose2d" else "pose2d"
    pose = TopDownPose.__new__(TopDownPose)
    pose.info = Info
    want_k, want_s, want_3d = pose.postprocess(outputs, centers, scales, image_wh, cam)

    params = device.put(KK.person_params(centers, scales))
    out, out3d = device.empty(max(n * k * 12, 1)), device.empty(max(n * k * 12, 1))
    f32 = np.float32
    common = dict(params=params, num_persons=n, num_keypoints=k, in_w=float(in_wh[0]), in_h=float(in_wh[1]),
                  out=out, out3d=out3d if Info.task == "pose3d" else 0, depth_half=float(f32(in_wh[0] / 2)),
                  z_range=float(f32(Info.z_range)), root_z=float(f32(Info.root_z)), fx=float(f32(cam.fx)),
                  fy=float(f32(cam.fy)), cx=float(f32(image_wh[0] / 2)), cy=float(f32(image_wh[1] / 2)))
    if decoded:
        device.launch("decoded_to_image", KK.decoded_launch(n, k), keypoints=device.put(outputs["keypoints"]),
                      scores=device.put(outputs["scores"]), z=device.put(outputs["z"]), **common)
    else:
        device.launch("simcc_decode_to_image", KK.simcc_decode_launch(n, k), simcc_x=device.put(sx),
                      bins_x=sx.shape[2], simcc_y=device.put(sy), bins_y=sy.shape[2],
                      simcc_z=device.put(sz) if task == "pose3d" else 0, bins_z=sz.shape[2], split_ratio=split,
                      **common)
    got = device.get(out, (n, k, 3))
    got_3d = device.get(out3d, (n, k, 3)) if want_3d is not None else None
    return want_k, want_s, want_3d, got, got_3d
