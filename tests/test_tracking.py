"""One-Euro filter and PoseTracker on synthetic sequences (no models, no files)."""

from __future__ import annotations

import numpy as np
import pytest

from rtmw_edge.geometry import box_iou
from rtmw_edge.results import Person
from rtmw_edge.tracking import KeypointSmoother, OneEuroFilter, PoseTracker, keypoint_oks

FPS = 30.0

# Normalised (x, y in [0, 1] of the box) COCO-17 poses, distinct enough that OKS tells them apart.
_STAND = [(.5, .08), (.46, .06), (.54, .06), (.42, .08), (.58, .08), (.35, .25), (.65, .25), (.3, .42),
          (.7, .42), (.28, .58), (.72, .58), (.4, .58), (.6, .58), (.4, .78), (.6, .78), (.4, .97), (.6, .97)]
_ARMS_UP = [(.5, .12), (.46, .1), (.54, .1), (.42, .12), (.58, .12), (.35, .3), (.65, .3), (.25, .15),
            (.75, .15), (.2, .02), (.8, .02), (.4, .6), (.6, .6), (.3, .8), (.7, .8), (.2, .98), (.8, .98)]
_T_POSE = [(.5, .1), (.46, .08), (.54, .08), (.42, .1), (.58, .1), (.38, .28), (.62, .28), (.18, .28),
           (.82, .28), (.02, .28), (.98, .28), (.42, .6), (.58, .6), (.45, .8), (.55, .8), (.47, .98), (.53, .98)]
_LEAN = [(.7, .1), (.66, .08), (.74, .08), (.62, .1), (.78, .1), (.55, .27), (.8, .3), (.45, .45), (.9, .5),
         (.35, .6), (.95, .7), (.45, .6), (.6, .62), (.35, .8), (.6, .82), (.3, .98), (.62, .98)]
POSES = [np.array(p) for p in (_STAND, _ARMS_UP, _T_POSE, _LEAN)]


def make_person(x: float, y: float, pose: np.ndarray, w: float = 100.0, h: float = 200.0,
                num_keypoints: int = 17, seed: int = 0) -> Person:
    """A person whose box has its top-left at (x, y); 133 keypoints = the 17-point pose + fixed random rest."""
    norm = pose
    if num_keypoints > len(pose):
        extra = np.random.default_rng(seed).uniform(0.05, 0.95, (num_keypoints - len(pose), 2))
        norm = np.concatenate([pose, extra])
    kpts = np.array([x, y]) + norm * np.array([w, h])
    return Person(bbox=np.array([x, y, x + w, y + h], np.float32), score=0.9,
                  keypoints=kpts.astype(np.float32), keypoint_scores=np.full(num_keypoints, 0.9, np.float32))


def test_ids_stable_with_gap_and_newcomer():
    tracker = PoseTracker()
    starts = [(20, 40), (220, 60), (420, 30), (620, 50)]
    speeds = [(3, 0), (-2, 1), (1, 3), (-3, -2)]
    ids_seen: dict[int, set[int]] = {k: set() for k in range(5)}
    for f in range(30):
        frame = []
        for k, ((x0, y0), (vx, vy)) in enumerate(zip(starts, speeds)):
            if k == 1 and 10 <= f < 13:  # person 1 leaves for 3 frames
                continue
            frame.append((k, make_person(x0 + vx * f, y0 + vy * f, POSES[k])))
        if f >= 20:  # a newcomer far from everybody
            frame.append((4, make_person(300 + 2 * f, 400, POSES[2])))
        out = tracker.update([p for _, p in frame], f / FPS)
        assert [p.track_id for p in out] == [p.track_id for p in out if p.track_id is not None]
        for (k, _), p in zip(frame, out):
            ids_seen[k].add(p.track_id)
    assert all(len(s) == 1 for s in ids_seen.values()), ids_seen
    assert [ids_seen[k].pop() for k in range(5)] == [0, 1, 2, 3, 4]  # 0-based, in order of appearance


def test_track_dropped_after_max_missing():
    tracker = PoseTracker(max_missing=2)
    a = make_person(10, 10, POSES[0])
    assert tracker.update([a], 0.0)[0].track_id == 0
    for f in range(1, 3):  # missing for 2 frames: still kept
        tracker.update([], f / FPS)
    assert tracker.update([a], 3 / FPS)[0].track_id == 0
    for f in range(4, 7):  # missing for 3 frames: dropped
        tracker.update([], f / FPS)
    assert tracker.update([a], 7 / FPS)[0].track_id == 1


def _crossing(tracker: PoseTracker, num_keypoints: int, dx: float = 0.0, dy: float = 0.0) -> list[tuple[int, int]]:
    """A walks right, B walks left at 3 px/frame with different poses; their boxes cross near frame 15."""
    ids = []
    for f in range(30):
        a = make_person(100.0 + 3 * f, 50.0, POSES[0], num_keypoints=num_keypoints, seed=1)
        b = make_person(188.5 + dx - 3 * f, 50.0 + dy, POSES[2], num_keypoints=num_keypoints, seed=2)
        out = tracker.update([a, b], f / FPS)
        ids.append((out[0].track_id, out[1].track_id))
    return ids


@pytest.mark.parametrize("num_keypoints", [17, 133])
@pytest.mark.parametrize(("dx", "dy"), [(0.0, 0.0), (0.75, 0.0), (1.5, 2.0), (2.25, 0.0)])
def test_crossing_persons_keep_ids(num_keypoints, dx, dy):
    assert set(_crossing(PoseTracker(), num_keypoints, dx, dy)) == {(0, 1)}


def test_crossing_with_max_similarity_swaps():
    """Why `combine="mean"` is the default: with max(IoU, OKS) the other person's box wins the crossing
    (whole-body OKS of the same person moving 3 px is only ~0.9: the face sigmas are tiny)."""
    assert (1, 0) in set(_crossing(PoseTracker(combine="max"), 133))


def test_oks_similarity():
    p = make_person(0, 0, POSES[1])
    q = make_person(0, 0, POSES[3])
    area = 100.0 * 200.0
    assert keypoint_oks(p.keypoints, p.keypoint_scores, p.keypoints, p.keypoint_scores, area) == pytest.approx(1.0)
    assert keypoint_oks(p.keypoints, p.keypoint_scores, q.keypoints, q.keypoint_scores, area) < 0.5
    none = np.zeros(17)
    assert keypoint_oks(p.keypoints, none, p.keypoints, p.keypoint_scores, area) is None
    assert keypoint_oks(p.keypoints[:5], p.keypoint_scores[:5], p.keypoints, p.keypoint_scores, area) is None


def test_tracker_similarity_matrix():
    tracks = [make_person(0, 0, POSES[0]), make_person(40, 10, POSES[1], num_keypoints=133)]
    tracker = PoseTracker()
    tracker.update(tracks, 0.0)
    persons = [make_person(5, 3, POSES[0]), make_person(30, 0, POSES[3]),
               make_person(42, 12, POSES[1], num_keypoints=133)]
    persons[1].keypoint_scores[:] = 0.0  # no visible keypoint: IoU only
    sim = tracker.similarity(persons)
    for i, p in enumerate(persons):
        for j, t in enumerate(tracks):
            iou = box_iou(p.bbox, t.bbox)[0, 0]
            oks = keypoint_oks(p.keypoints, p.keypoint_scores, t.keypoints, t.keypoint_scores, 100.0 * 200.0)
            assert sim[i, j] == pytest.approx(iou if oks is None else (iou + oks) / 2)


def test_update_does_not_mutate_inputs_and_smooths():
    rng = np.random.default_rng(0)
    tracker = PoseTracker(smooth=True)
    base = make_person(50, 50, POSES[0])
    raw_err, smooth_err = [], []
    for f in range(60):
        noisy = make_person(50, 50, POSES[0])
        noisy.keypoints = noisy.keypoints + rng.normal(0, 3, noisy.keypoints.shape).astype(np.float32)
        noisy.keypoint_scores[3] = 0.0  # an invalid point passes through unfiltered
        before = noisy.keypoints.copy()
        out = tracker.update([noisy], f / FPS)[0]
        assert noisy.track_id is None and np.array_equal(noisy.keypoints, before)
        assert out.track_id == 0 and out.keypoints.dtype == np.float32
        assert out.keypoints[3].tolist() == noisy.keypoints[3].tolist()
        if f == 0:
            np.testing.assert_array_equal(out.keypoints, noisy.keypoints)  # a new track starts unfiltered
        elif f >= 10:
            raw_err.append(noisy.keypoints - base.keypoints)
            smooth_err.append(out.keypoints - base.keypoints)
    ratio = np.sqrt(np.mean(np.square(smooth_err))) / np.sqrt(np.mean(np.square(raw_err)))
    assert ratio < 0.6


def test_smoother_filters_3d_keypoints():
    smoother = KeypointSmoother()
    p = make_person(0, 0, POSES[0])
    p.keypoints_3d = np.zeros((17, 3), np.float32)
    assert smoother(p, 0.0).keypoints_3d.tolist() == p.keypoints_3d.tolist()
    p.keypoints_3d = p.keypoints_3d + 0.05
    out = smoother(p, 1 / FPS).keypoints_3d
    assert out.shape == (17, 3) and np.all((out > 0) & (out < 0.05))


# --------------------------------------------------------------------------- One-Euro filter
def _rms_ratio(amplitude: float, frequency: float, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    t = np.arange(300) / FPS
    phase = rng.uniform(0, 2 * np.pi, (20, 2))
    clean = 300.0 + amplitude * np.sin(2 * np.pi * frequency * t[:, None, None] + phase)
    noisy = clean + rng.normal(0.0, 3.0, clean.shape)
    flt = OneEuroFilter()
    filtered = np.stack([flt(noisy[i], t[i]) for i in range(len(t))])
    skip = slice(30, None)  # after the first second
    rms_filtered = np.sqrt(np.mean((filtered[skip] - clean[skip]) ** 2))
    return float(rms_filtered / np.sqrt(np.mean((noisy[skip] - clean[skip]) ** 2)))


@pytest.mark.parametrize(("amplitude", "frequency"), [(0.0, 0.1), (30.0, 0.1)])
def test_one_euro_reduces_jitter(amplitude, frequency):
    assert _rms_ratio(amplitude, frequency) < 0.6


def test_one_euro_follows_a_step():
    """The module docstring's promise: a 100 px step is followed to 85 px after one frame, within 5 px after
    two (defaults at 30 fps) — and not already after one, which would mean no smoothing at all."""
    flt = OneEuroFilter()
    for f in range(30):
        flt(np.array([10.0, 20.0]), f / FPS)
    moved = [flt(np.array([110.0, 120.0]), (29 + k) / FPS) - [10.0, 20.0] for k in (1, 2)]
    np.testing.assert_allclose(moved[0], 85.0, atol=0.5)
    assert np.all(np.abs(moved[1] - 100.0) <= 5.0) and np.all(np.abs(moved[0] - 100.0) > 5.0)


def test_one_euro_first_call_identity_and_repeated_timestamp():
    flt = OneEuroFilter()
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    out = flt(x, 1.0)
    np.testing.assert_array_equal(out, x)
    assert out is not x
    second = flt(x + 10.0, 1.0 + 1 / FPS)
    assert np.all((second > x) & (second < x + 10.0))
    for dt in (0.0, -0.5):  # timestamp repeated or going back: previous estimate, state untouched
        np.testing.assert_array_equal(flt(x + 50.0, 1.0 + 1 / FPS + dt), second)
    ref = OneEuroFilter()
    ref(x, 1.0)
    ref(x + 10.0, 1.0 + 1 / FPS)
    np.testing.assert_allclose(flt(x + 20.0, 1.0 + 2 / FPS), ref(x + 20.0, 1.0 + 2 / FPS))


def test_one_euro_masked_points_untouched():
    flt = OneEuroFilter()
    x = np.array([[0.0, 0.0], [100.0, 100.0], [50.0, 50.0]])
    flt(x, 0.0)
    valid = np.array([True, False, True])
    y = x + np.array([[5.0, 5.0], [-200.0, -200.0], [5.0, 5.0]])  # point 1 invalid: (-100, -100)
    out = flt(y, 1 / FPS, valid)
    np.testing.assert_array_equal(out[1], y[1])
    assert np.all(out[[0, 2]] < y[[0, 2]])
    # the invalid sample did not disturb point 1's state: it continues from (100, 100)
    back = flt(x + [[5, 5], [5, 5], [5, 5]], 2 / FPS)
    assert np.all(back[1] > 100.0) and np.all(back[1] < 105.0)
    # a point never valid before is taken as is when it first shows up
    flt2 = OneEuroFilter()
    flt2(x, 0.0, np.array([True, False, True]))
    np.testing.assert_array_equal(flt2(y, 1 / FPS)[1], y[1])


def test_one_euro_rejects_bad_parameters():
    with pytest.raises(ValueError):
        OneEuroFilter(min_cutoff=0.0)
    with pytest.raises(ValueError):
        OneEuroFilter(beta=-1.0)
