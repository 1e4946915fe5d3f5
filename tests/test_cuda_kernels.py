"""Launch configurations, argument packing and buffer sizes of the CUDA kernels (pure Python, no GPU), and the
float64 sampling references the GPU tests hold the kernels to, checked here against OpenCV and the CPU pipeline."""

from __future__ import annotations

import ctypes

import cv2
import numpy as np
import pytest
from conftest import SHARED

from rtmw_edge import geometry as G
from rtmw_edge.cuda import kernels as KK
from rtmw_edge.errors import RtmwEdgeError
from rtmw_edge.zoo import DET_MEAN_BGR, DET_STD_BGR, POSE_MEAN_RGB, POSE_STD_RGB

IMAGES = sorted((SHARED / "images").glob("*.jpg"))
RAWHEAD = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"


# --------------------------------------------------------------------------- launches
def test_image_launches_cover_every_pixel_once():
    lb = KK.letterbox_launch((320, 320))
    assert lb.grid == (10, 40, 1) and lb.block == (32, 8, 1)
    crop = KK.crop_launch((192, 256), 7)
    assert crop.grid == (6, 32, 7) and crop.threads == 192 * 256 * 7
    odd = KK.image_launch(33, 9, 2)
    assert odd.grid == (2, 2, 2) and odd.threads >= 33 * 9 * 2
    with pytest.raises(RtmwEdgeError, match="empty launch"):
        KK.crop_launch((192, 256), 0)
    with pytest.raises(RtmwEdgeError, match="too large"):
        KK.image_launch(16, 8 * 70000)


def test_linear_launches():
    assert KK.rawhead_launch(2100) == KK.Launch((9, 1, 1), (256, 1, 1))        # 40²+20²+10² priors at 320
    assert KK.select_launch(1000).block == (512, 1, 1) and KK.select_launch(1000).grid == (1, 1, 1)
    assert KK.select_launch(40).block == (64, 1, 1)
    assert KK.select_launch(100).block == (128, 1, 1)
    d = KK.simcc_decode_launch(32, 133)                                        # one warp per keypoint
    assert d.block == (256, 1, 1) and d.grid[0] * 8 >= 32 * 133 > (d.grid[0] - 1) * 8
    assert KK.decoded_launch(3, 133).grid == (2, 1, 1)


# --------------------------------------------------------------------------- argument packing
def test_pack_args_builds_a_void_pointer_array_of_typed_values():
    values = dict(src=0xDEAD0000, src_w=640, src_h=480, src_pitch=1920, dst=0xBEEF0000, dst_w=320, dst_h=320,
                  new_w=320, new_h=240, scale_x=2.0, scale_y=2.0, mean0=103.53, mean1=116.28, mean2=123.675,
                  std0=57.375, std1=57.12, std2=58.395, swap_rb=0, pad_value=114.0, quantize=1)
    args = KK.pack_args("letterbox_bgr_to_nchw", **values)
    assert len(args.values) == len(KK.SIGNATURES["letterbox_bgr_to_nchw"][1])
    ptrs = (ctypes.c_void_p * len(args.values)).from_address(args.address)
    assert ctypes.c_uint64.from_address(ptrs[0]).value == 0xDEAD0000
    assert ctypes.c_int32.from_address(ptrs[1]).value == 640
    assert ctypes.c_float.from_address(ptrs[9]).value == 2.0                  # FP32 positions since issue 21
    select = KK.pack_args("detector_select", boxes=1, scores=2, num_candidates=3, score_threshold=0.3, run_nms1=1,
                          iou1=0.6, max_det1=10, scale_x=1.0, scale_y=1.0, clip_w=9.0, clip_h=9.0, iou2=0.3,
                          max_persons=4, work=3, out_boxes=4, out_scores=5, header=6)
    sp = (ctypes.c_void_p * len(select.values)).from_address(select.address)
    assert ctypes.c_double.from_address(sp[5]).value == 0.6                   # the IoU stays float64
    assert ctypes.c_float.from_address(ptrs[11]).value == pytest.approx(103.53, rel=1e-7)
    assert args.read_back()[-1] == 1
    with pytest.raises(RtmwEdgeError, match="missing arguments"):
        KK.pack_args("letterbox_bgr_to_nchw", src=1)
    with pytest.raises(RtmwEdgeError, match="int32"):
        KK.pack_args("letterbox_bgr_to_nchw", **{**values, "src_w": 2 ** 31})
    with pytest.raises(RtmwEdgeError, match="unknown kernel"):
        KK.pack_args("nope")
    null = KK.pack_args("simcc_decode_to_image", simcc_x=1, bins_x=384, simcc_y=2, bins_y=512, simcc_z=None,
                        bins_z=0, params=3, num_persons=1, num_keypoints=133, split_ratio=2.0, in_w=192.0,
                        in_h=256.0, out=4, out3d=None, depth_half=96.0, z_range=2.1744869, root_z=5.14388,
                        fx=1.0, fy=1.0, cx=0.0, cy=0.0)
    assert null.read_back()[4] == 0 and null.read_back()[13] == 0


# --------------------------------------------------------------------------- buffer sizes
def test_batch_chunks_and_pose_capacity():
    assert KK.batch_chunks(0, 8) == []
    assert KK.batch_chunks(5, None) == [(0, 5, 5)]
    assert KK.batch_chunks(20, 8) == [(0, 8, 8), (8, 8, 8), (16, 4, 4)]
    assert KK.batch_chunks(9, 8, min_batch=4) == [(0, 8, 8), (8, 1, 4)]        # short chunk runs at the minimum
    assert KK.batch_chunks(3, 4, min_batch=4) == [(0, 3, 4)]                    # fixed-batch engine
    assert KK.pose_capacity(32, 32) == 32
    assert KK.pose_capacity(33, 32, 4) == 36
    assert KK.pose_capacity(3, 4, 4) == 4
    assert KK.pose_capacity(32, 8, 1) == 32
    with pytest.raises(RtmwEdgeError):
        KK.batch_chunks(4, 2, min_batch=3)
    with pytest.raises(RtmwEdgeError):
        KK.pose_capacity(0, 8)
    assert KK.max_person_count(32, 1000) == 32 and KK.max_person_count(64, 10) == 10


def test_slot_plan_sizes_and_aligned_offsets():
    plan = KK.plan_slot(det_input_shape=(1, 3, 320, 320),
                        det_outputs={"boxes": ((1, 1000, 4), "float32"), "scores": ((1, 1000), "float32")},
                        num_candidates=1000, max_persons=32, pose_input_wh=(192, 256),
                        pose_outputs={"simcc_x": ((32, 133, 384), "float32"), "simcc_y": ((32, 133, 512), "float32")},
                        num_keypoints=133, capacity=32, has_3d=False)
    s = plan.sizes
    assert s["det_input"] == 3 * 320 * 320 * 4 and s["pose_input"] == 32 * 3 * 256 * 192 * 4
    assert s["nms_work"] == KK.nms_scratch_bytes(1000) == 1000 * (16 + 32 + 4 + 1)
    assert s["pose:simcc_x"] == 32 * 133 * 384 * 4 and s["keypoints"] == 32 * 133 * 3 * 4 and s["header"] == 16
    assert "keypoints_3d" not in s
    offsets = plan.offsets()
    assert all(o % KK.ALIGN == 0 for o in offsets.values())
    ends = sorted((offsets[k], offsets[k] + v) for k, v in s.items())
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))                  # no overlap
    assert plan.total >= ends[-1][1] and plan.total % KK.ALIGN == 0


def test_host_parameters_follow_geometry():
    args = KK.letterbox_args((425, 640), (320, 320))
    lb = G.letterbox_params((425, 640), (320, 320))
    assert (args["new_w"], args["new_h"]) == (lb.width, lb.height) == (320, 213)
    assert args["box_scale_x"] == np.float32(lb.scale_x) and args["clip_w"] == 640.0 and args["clip_h"] == 425.0
    assert args["resize_scale_x"] == 1.0 / (320 / 640)
    norm = KK.normalisation(DET_MEAN_BGR, DET_STD_BGR)
    assert norm["mean0"] == float(np.float32(DET_MEAN_BGR[0]))
    with pytest.raises(RtmwEdgeError):
        KK.normalisation((1, 2), (1, 0, 1))


# --------------------------------------------------------------------------- sampling references vs OpenCV
def test_resize_reference_is_cv2_resize_up_to_its_fixed_point_rounding():
    """The letterbox kernel's sampling (float weights, no rounding) against cv2.resize INTER_LINEAR."""
    worst = 0.0
    for path in IMAGES:
        image = cv2.imread(str(path))
        for size in ((320, 320), (640, 640), (416, 416)):
            lb = G.letterbox_params(image.shape[:2], size)
            ref = KK.reference_resize(image, (lb.width, lb.height))
            ocv = cv2.resize(image, (lb.width, lb.height), interpolation=cv2.INTER_LINEAR)
            worst = max(worst, float(np.abs(ref - ocv).max()))
    assert worst <= 1.0, worst          # measured 0.78 gray levels (OpenCV: 11-bit weights, then rounding)


def test_letterbox_reference_matches_the_cpu_pipeline():
    image = cv2.imread(str(IMAGES[0]))
    cpu = G.normalize_to_nchw(G.letterbox(image, (320, 320))[0], DET_MEAN_BGR, DET_STD_BGR, False)
    ref = KK.reference_letterbox(image, (320, 320), DET_MEAN_BGR, DET_STD_BGR)
    assert ref.shape == cpu.shape == (1, 3, 320, 320)
    std = np.asarray(DET_STD_BGR)[None, :, None, None]
    assert (np.abs(ref - cpu) * std).max() <= 1.0
    pad = ref[0, :, 300, :]                     # below the 213 resized rows: the pad value, normalised
    np.testing.assert_allclose(pad[:, 0], (114 - np.float32(DET_MEAN_BGR)) / np.float32(DET_STD_BGR), rtol=1e-6)
    rounded = KK.reference_letterbox(image, (320, 320), DET_MEAN_BGR, DET_STD_BGR, quantize=True)
    assert (np.abs(rounded - cpu) * std).max() <= 1.0 + 1e-4  # whole gray levels: OpenCV's 11-bit weights
    assert np.isclose(rounded, cpu, atol=1e-5).mean() > 0.8       # decide ±1 on ~13% of the resized pixels


def test_inverse_warp_is_cv2_invert_affine():
    c, s = G.box_to_center_scale(np.array([[10.5, 20.25, 200.7, 400.1]], np.float32), (192, 256))
    m = G.warp_matrix(c[0], s[0], (192, 256))
    np.testing.assert_array_equal(KK.inverse_warp(c[0], s[0], (192, 256)), cv2.invertAffineTransform(m))


def test_crop_reference_is_cv2_warp_affine_up_to_its_rounding():
    worst = 0.0
    for path in IMAGES:
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        boxes = np.array([[10.5, 20.25, 200.7, 400.1], [-30, -20, 100, 150], [w - 50, h - 80, w + 40, h + 30],
                          [w * 0.3, h * 0.2, w * 0.35, h * 0.3]], np.float32)  # inside, off each corner, upscaled
        ref, centers, scales = KK.reference_crops(image, boxes, (192, 256), POSE_MEAN_RGB, POSE_STD_RGB)
        cpu, c2, s2 = G.crop_persons(image, boxes, (192, 256), POSE_MEAN_RGB, POSE_STD_RGB)
        np.testing.assert_array_equal(centers, c2)
        np.testing.assert_array_equal(scales, s2)
        worst = max(worst, float((np.abs(ref - cpu) * np.asarray(POSE_STD_RGB)[None, :, None, None]).max()))
    assert worst <= 1.0, worst          # measured 0.503 gray levels with OpenCV 5.0 (uint8 rounding)
    assert np.abs(ref[3]).max() > 0     # the border is 0 before normalisation, i.e. -mean/std after it
    corner = ref[1, :, 0, 0] * np.asarray(POSE_STD_RGB) + np.asarray(POSE_MEAN_RGB)
    np.testing.assert_allclose(corner, 0.0, atol=1e-4)
    rounded = KK.reference_crops(image, boxes, (192, 256), POSE_MEAN_RGB, POSE_STD_RGB, quantize=True)[0]
    assert np.isclose(rounded, cpu, atol=1e-5).mean() > 0.999   # quantize=1 reproduces the uint8 crops


def test_person_params_layout():
    p = KK.person_params(np.array([[1, 2]]), np.array([[3, 4]]))
    assert p.dtype == np.float32 and p.tolist() == [[1, 2, 3, 4]]


@pytest.mark.skipif(not RAWHEAD.is_file(), reason="shared RTMDet raw-head detector not found")
def test_select_reference_is_the_cpu_detect_on_real_detections():
    """detector_select's order of operations, composed from the CPU functions, equals PoseEstimator.detect."""
    from rtmw_edge.detectors import OnnxDetector

    det = OnnxDetector(RAWHEAD, score_threshold=0.3, nms_iou=0.6, max_detections=1000)
    for path in IMAGES:
        image = cv2.imread(str(path))
        boxes, scores = det(image)                               # PoseEstimator.detect, spelled out
        keep = G.nms(boxes, scores, 0.3)
        want_boxes, want_scores = boxes[keep][:32], scores[keep][:32]
        raw_boxes, raw_scores, lb = det.raw_boxes(image)
        got_boxes, got_scores, total = KK.reference_select(raw_boxes, raw_scores, lb, score_threshold=0.3)
        np.testing.assert_array_equal(got_boxes, want_boxes)
        np.testing.assert_array_equal(got_scores, want_scores)
        assert total == len(keep)
        capped = KK.reference_select(raw_boxes, raw_scores, lb, score_threshold=0.3, max_persons=1)
        assert len(capped[0]) == min(1, total) and capped[2] == total
