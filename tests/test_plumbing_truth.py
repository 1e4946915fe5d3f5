"""The main job's plumbing against hand-computed truth (issue 13): realistic bugs that used to pass every test.

- colour order: an RTMW pose model normalises RGB with RGB mean/std (rtmw_facts: `to_rgb`, mean
  (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375)); feeding it BGR crops must fail here;
- RTMW3D depth: z_rel = (z_px / (W/2) − 1) · z_range with W = the input *width* 288 (rtmw_facts §3.7),
  Z = z_rel + root_z, X = (u − cx)/fx · Z, Y = (v − cy)/fy · Z; taking the height 384 must fail here;
- One-Euro (Casiez et al. 2012): α(fc) = 1 / (1 + τ/Te), τ = 1/(2π·fc); the speed is filtered at d_cutoff,
  the signal at min_cutoff + beta·|speed| — swapping min_cutoff and d_cutoff must fail here.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rtmw_edge.export import build_metadata
from rtmw_edge.pipeline import TopDownPose
from rtmw_edge.results import Person
from rtmw_edge.tracking import OneEuroFilter, PoseTracker
from rtmw_edge.zoo import get_spec

RGB_MEAN, RGB_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _pose(name: str, with_metadata: bool = True) -> TopDownPose:
    """A TopDownPose over a stand-in engine carrying exactly the metadata `rtmw-edge export` writes."""
    spec = get_spec(name)
    outputs = ["simcc_x", "simcc_y"] + (["simcc_z"] if spec.task == "pose3d" else [])
    meta = build_metadata(spec, outputs=outputs, batch="dynamic", decode=False, flip_test=False, precision="fp32",
                          checkpoint_sha256=None)
    engine = SimpleNamespace(metadata=meta if with_metadata else None, path=Path(f"{name}.onnx"),
                             output_names=outputs, input_name="input")
    return TopDownPose(engine)


def test_pose_crops_are_rgb_normalised_for_an_rgb_model():
    """A flat BGR picture (B=10, G=100, R=200): every crop pixel inside the box is hand-computable."""
    image = np.empty((300, 400, 3), np.uint8)
    image[:] = (10, 100, 200)  # BGR
    pose = _pose("rtmw-m-256x192")
    crops, _, _ = pose.preprocess(image, np.array([[100, 50, 300, 250]], np.float32))
    w, h = pose.info.input_size
    pixel = crops[0, :, h // 2, w // 2]  # channel order of the network input: R, G, B
    expected = [(200 - RGB_MEAN[0]) / RGB_STD[0], (100 - RGB_MEAN[1]) / RGB_STD[1], (10 - RGB_MEAN[2]) / RGB_STD[2]]
    np.testing.assert_allclose(pixel, expected, rtol=1e-5)


def test_the_fidelity_check_feeds_the_same_rgb_crops():
    from rtmw_edge import check

    image = np.empty((300, 400, 3), np.uint8)
    image[:] = (10, 100, 200)
    meta = build_metadata(get_spec("rtmpose-t-256x192"), outputs=["simcc_x", "simcc_y"], batch="dynamic",
                          decode=False, flip_test=False, precision="fp32", checkpoint_sha256=None)
    original = check.read_image
    check.read_image = lambda path: image
    try:
        x = check.make_inputs(meta, [Path("flat.jpg")], 1)
    finally:
        check.read_image = original
    np.testing.assert_allclose(x[0, :, 128, 96], [(200 - RGB_MEAN[0]) / RGB_STD[0], (100 - RGB_MEAN[1]) / RGB_STD[1],
                                                  (10 - RGB_MEAN[2]) / RGB_STD[2]], rtol=1e-5)


@pytest.mark.parametrize("bin_z", [0, 100, 288, 575])
def test_rtmw3d_depth_uses_the_input_width(bin_z):
    """One person, one-hot SimCC logits at known bins; the camera-space result by the reference formulas."""
    pose = _pose("rtmw3d-l-384x288")
    k = pose.info.num_keypoints
    assert pose.info.input_size == (288, 384)
    sx, sy, sz = np.zeros((1, k, 576), np.float32), np.zeros((1, k, 768), np.float32), np.zeros((1, k, 576),
                                                                                                 np.float32)
    sx[..., 300] = sy[..., 400] = sz[..., bin_z] = 1.0
    center, scale = np.array([[320.0, 240.0]], np.float32), np.array([[180.0, 240.0]], np.float32)
    kpts, scores, k3d = pose.postprocess({"simcc_x": sx, "simcc_y": sy, "simcc_z": sz}, center, scale, (640, 480))
    u = 300 / 2 / 288 * 180 + 320 - 90          # crop px → image px (rtmw_facts §3.7 kpt2d)
    v = 400 / 2 / 384 * 240 + 240 - 120
    z_rel = (bin_z / 2 / (288 / 2) - 1) * 2.1744869
    depth = z_rel + 5.14388
    fx, fy = 1145.04940459, 1143.78109572
    np.testing.assert_allclose(kpts[0, 0], [u, v], rtol=1e-5)
    np.testing.assert_allclose(k3d[0, 0], [(u - 320) / fx * depth, (v - 240) / fy * depth, depth], rtol=1e-5,
                               atol=1e-6)


def _one_euro_by_hand(xs, ts, min_cutoff, beta, d_cutoff):
    def alpha(cutoff, dt):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    x_hat, dx_hat, out = xs[0], 0.0, [xs[0]]
    for i in range(1, len(xs)):
        dt = ts[i] - ts[i - 1]
        a_d = alpha(d_cutoff, dt)
        dx_hat = a_d * (xs[i] - x_hat) / dt + (1 - a_d) * dx_hat
        a = alpha(min_cutoff + beta * abs(dx_hat), dt)
        x_hat = a * xs[i] + (1 - a) * x_hat
        out.append(x_hat)
    return out


def test_one_euro_matches_the_formula_with_distinct_parameters():
    xs, ts = [0.0, 10.0, 10.0, 30.0, 31.0], [0.0, 0.1, 0.2, 0.25, 0.4]
    params = {"min_cutoff": 0.7, "beta": 0.02, "d_cutoff": 4.0}  # distinct: a swap changes every value
    expected = _one_euro_by_hand(xs, ts, **params)
    swapped = _one_euro_by_hand(xs, ts, params["d_cutoff"], params["beta"], params["min_cutoff"])
    assert max(abs(a - b) for a, b in zip(expected, swapped)) > 0.5  # the test can tell the two apart
    flt = OneEuroFilter(**params)
    got = [float(flt(np.array([x]), t)[0]) for x, t in zip(xs, ts)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # positional order as documented: (min_cutoff, beta, d_cutoff)
    flt = OneEuroFilter(0.7, 0.02, 4.0)
    np.testing.assert_allclose([float(flt(np.array([x]), t)[0]) for x, t in zip(xs, ts)], expected, rtol=1e-12)


def test_the_tracker_smooths_keypoints_with_the_given_parameters():
    """The path `run --smooth --smooth-min-cutoff --smooth-beta` takes: PoseTracker → KeypointSmoother."""
    xs, ts = [0.0, 10.0, 10.0, 30.0, 31.0], [0.0, 0.1, 0.2, 0.25, 0.4]
    expected = _one_euro_by_hand(xs, ts, min_cutoff=0.7, beta=0.02, d_cutoff=4.0)
    tracker = PoseTracker(smooth=True, min_cutoff=0.7, beta=0.02, d_cutoff=4.0)
    got = []
    for x, t in zip(xs, ts):
        kpts = np.array([[100.0 + x, 200.0], [150.0 + x, 260.0]], np.float32)
        person = Person(bbox=np.array([90.0, 190.0, 170.0, 270.0], np.float32), score=0.9, keypoints=kpts,
                        keypoint_scores=np.array([0.9, 0.9], np.float32))
        got.append(float(tracker.update([person], t)[0].keypoints[0, 0]) - 100.0)
    np.testing.assert_allclose(got, expected, atol=1e-4)  # float32 keypoints
