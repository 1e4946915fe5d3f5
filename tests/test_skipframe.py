"""Skip-frame detection (rtmw_edge.skipframe): the keypoint boxes, the schedule, and a synthetic video on which
detecting every 5th frame must keep the persons, track ids and keypoints of detecting every frame.

No pose weights exist here, and a random-weight network's keypoints do not follow people, so the video test
replaces the pose network (only the network) by the ground truth: `GroundTruthPose` gives each crop SimCC
logits peaked at the COCO keypoints (warped with the frame) of the annotated person the crop shows, and
nothing for keypoints outside the crop or the frame — then the real decode and back-mapping run. A carried
box that misses its person therefore loses its keypoints, exactly as a real model would. The detector is the
real RTMDet-nano on the real photo.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from conftest import SHARED, coco_persons

from rtmw_edge import geometry as G
from rtmw_edge.cli import main
from rtmw_edge.export import export_onnx
from rtmw_edge.pipeline import PoseEstimator
from rtmw_edge.skipframe import SkipFrameDetection

DET = SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx"
PHOTO = "000000197388.jpg"  # 5 skiers
FRAMES, INTERVAL = 20, 5
KEYPOINT_TOLERANCE_PX = 1.5  # two crops of one person quantise to different SimCC bins (≤ ~0.6 px each here)


# ------------------------------------------------------------------------------------------ the formula
def test_keypoints_to_boxes_hand_computed():
    kpts = np.array([[[10, 20], [30, 60], [100, 100]],      # two confident points → (10,20)-(30,60)
                     [[5, 5], [6, 6], [7, 7]],               # none confident → empty box
                     [[590, 300], [660, 420], [600, 410]]],  # grows past a 640×400 frame → clipped
                    np.float32)
    scores = np.array([[0.9, 0.5, 0.2], [0.1, 0.0, 0.3], [0.8, 0.8, 0.8]], np.float32)
    boxes = G.keypoints_to_boxes(kpts, scores, 0.3, 1.25, image_wh=(640, 400))
    # centre (20, 40), half size (10, 20) × 1.25 = (12.5, 25)
    np.testing.assert_allclose(boxes[0], [7.5, 15.0, 32.5, 65.0])
    np.testing.assert_allclose(boxes[1], [0, 0, 0, 0])
    # centre (625, 360), half (35, 60) × 1.25 = (43.75, 75) → (581.25, 285) – (668.75, 435), clipped
    np.testing.assert_allclose(boxes[2], [581.25, 285.0, 640.0, 400.0])
    assert G.KEYPOINT_BOX_EXPANSION == 1.25  # rtmlib pose_to_bbox / mmdeploy pose_bbox_scale
    assert G.keypoints_to_boxes(np.zeros((0, 17, 2)), np.zeros((0, 17)), 0.3).shape == (0, 4)


# ------------------------------------------------------------------------------------------ the schedule
class _Script:
    """detect / pose callables for SkipFrameDetection: one person whose keypoints follow its box; the pose
    'collapses' (scores 0) on the frames listed in `collapse` unless the box came from the detector."""

    def __init__(self, collapse=(), people=1):
        self.frame, self.detected_on, self.collapse, self.people = 0, [], set(collapse), people
        self.from_detector = False

    def detect(self, image):
        self.detected_on.append(self.frame)
        self.from_detector = True
        boxes = np.array([[100 + 150 * i, 100, 160 + 150 * i, 260] for i in range(self.people)],
                         np.float32).reshape(-1, 4)
        return boxes, np.full(len(boxes), 0.9, np.float32), 0

    def pose(self, image, boxes):
        k = np.linspace(boxes[:, :2], boxes[:, 2:], 17, axis=1).astype(np.float32)  # along the box diagonal
        scores = np.full(k.shape[:2], 0.9, np.float32)
        if self.frame in self.collapse and not self.from_detector:
            scores[:] = 0.0
        self.from_detector = False
        return k, scores, None


def _run(skip: SkipFrameDetection, script: _Script, frames: int):
    image = np.zeros((480, 640, 3), np.uint8)
    counts = []
    for t in range(frames):
        script.frame = t
        boxes, *_ = skip.step(image, script.detect, script.pose)
        counts.append(len(boxes))
    return counts


def test_detector_on_key_frames_and_when_a_person_collapses():
    script = _Script(collapse={7})
    skip = SkipFrameDetection(5)
    assert _run(skip, script, 13) == [1] * 13
    assert script.detected_on == [0, 5, 7, 12]  # frame 7 redone from the detector, then 5 frames on
    assert (skip.detector_runs, skip.redetections) == (4, 1)
    empty = _Script(people=0)  # nobody carried: look on every frame
    _run(SkipFrameDetection(5), empty, 4)
    assert empty.detected_on == [0, 1, 2, 3]
    every = _Script()
    _run(SkipFrameDetection(1), every, 3)
    assert every.detected_on == [0, 1, 2]
    # two people side by side: boxes overlapping at IoU 0.33 (and their keypoint boxes more), distinct poses:
    # both carried (a box NMS at the pipeline's 0.3 would drop one)
    pair = _Script(people=2)
    pair.detect = lambda image, d=pair.detect: (lambda b, s, c: (b - [[0, 0, 0, 0], [120, 0, 120, 0]], s, c))(
        *d(image))
    skip = SkipFrameDetection(5)
    assert _run(skip, pair, 5) == [2] * 5 and pair.detected_on == [0]
    # two poses that converged on one person: one is carried, and the next frame looks again
    twins = _Script(people=2)
    pose = twins.pose
    twins.pose = lambda image, boxes: pose(image, np.repeat(boxes[:1], len(boxes), 0))
    skip = SkipFrameDetection(5)
    assert _run(skip, twins, 3) == [2, 2, 2] and twins.detected_on == [0, 1, 2]
    with pytest.raises(ValueError):
        SkipFrameDetection(0)


# ------------------------------------------------------------------------------------------ the video
def _annotations():
    people = coco_persons(SHARED / "images" / "test_coco.json")[PHOTO]
    return np.stack([np.asarray(a["keypoints"], np.float32).reshape(17, 3) for a in people])


def _camera(t: int, size: tuple[int, int]) -> np.ndarray:
    """Pan/zoom of frame t: 2×3 affine from the photo to the frame (zoom 0.80 → 0.95, centre on an ellipse)."""
    w, h = size
    zoom = 0.80 + 0.15 * t / (FRAMES - 1)
    angle = 2 * math.pi * t / FRAMES
    cx, cy = w / 2 + 50 * math.sin(angle), h / 2 + 20 * math.cos(angle)
    return np.array([[zoom, 0, w / 2 - zoom * cx], [0, zoom, h / 2 - zoom * cy]], np.float32)


@pytest.fixture(scope="module")
def video():
    photo = cv2.imread(str(SHARED / "images" / PHOTO))
    size = (photo.shape[1], photo.shape[0])
    gt = _annotations()
    frames, truth = [], []
    for t in range(FRAMES):
        m = _camera(t, size)
        frames.append(cv2.warpAffine(photo, m, size, flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128)))
        moved = gt.copy()
        moved[..., :2] = gt[..., :2] @ m[:, :2].T + m[:, 2]
        truth.append(moved)
    return frames, truth


class GroundTruthPose:
    """The pose network replaced by the annotations (see the module docstring); decode is the pipeline's."""

    def __init__(self, top_down) -> None:
        self.top_down, self.info = top_down, top_down.info
        self.truth: np.ndarray | None = None   # [P, 17, 3] keypoints of the current frame (x, y, visibility)

    def __call__(self, image, boxes, camera=None):
        (w, h), r = self.info.input_size, self.info.split_ratio
        centers, scales = G.box_to_center_scale(boxes, (w, h))
        sx = np.zeros((len(boxes), 17, int(w * r)), np.float32)
        sy = np.zeros((len(boxes), 17, int(h * r)), np.float32)
        truth = self.truth
        in_frame = (truth[..., 2] > 0) & (truth[..., 0] >= 0) & (truth[..., 0] < image.shape[1]) \
            & (truth[..., 1] >= 0) & (truth[..., 1] < image.shape[0])
        for i in range(len(boxes)):
            people = len(truth)
            crop = G.image_to_crop(truth[..., :2], np.repeat(centers[i:i + 1], people, 0),
                                   np.repeat(scales[i:i + 1], people, 0), (w, h))
            inside = in_frame & (crop[..., 0] >= 0) & (crop[..., 0] < w) & (crop[..., 1] >= 0) & (crop[..., 1] < h)
            if not inside.any():
                continue
            off_centre = np.array([np.abs(crop[p][inside[p]] - (w / 2, h / 2)).mean() if inside[p].any() else 1e9
                                   for p in range(people)])
            best = int(np.lexsort((off_centre, -inside.sum(1)))[0])  # most keypoints inside, then most centred
            for k in np.flatnonzero(inside[best]):
                sx[i, k, min(int(round(crop[best, k, 0] * r)), sx.shape[2] - 1)] = 1.0
                sy[i, k, min(int(round(crop[best, k, 1] * r)), sy.shape[2] - 1)] = 1.0
        return self.top_down.postprocess({"simcc_x": sx, "simcc_y": sy}, centers, scales,
                                         (image.shape[1], image.shape[0]), camera)


@pytest.fixture(scope="module")
def pose_onnx(tmp_path_factory):
    return export_onnx("rtmpose-t-256x192", tmp_path_factory.mktemp("skip") / "rtmpose-t.onnx", random_init=True,
                       progress=False)


def _track(video, pose_onnx, interval: int):
    frames, truth = video
    est = PoseEstimator(DET, pose_onnx, track=True, det_interval=interval)
    est.pose = GroundTruthPose(est.pose)
    detect, calls = est.detect, []
    est.detect = lambda image: (calls.append(1), detect(image))[1]
    results = []
    for t, frame in enumerate(frames):
        est.pose.truth = truth[t]
        results.append(est(frame, frame=t, timestamp=t / 30))
    return results, len(calls)


def _mean_distance(p, q) -> float:
    both = (p.keypoint_scores > 0) & (q.keypoint_scores > 0)
    return float(np.linalg.norm(p.keypoints - q.keypoints, axis=1)[both].mean()) if both.any() else math.inf


def test_every_fifth_frame_keeps_the_persons_ids_and_keypoints_of_every_frame(video, pose_onnx):
    frames, truth = video
    track = np.stack(truth)
    seen = (track[1:, ..., 2] > 0) & (track[:-1, ..., 2] > 0)
    motion = np.linalg.norm(np.diff(track[..., :2], axis=0), axis=-1)[seen].max()
    assert 10 < motion <= 20  # persons move, at most 20 px per frame (16.2 here)
    every, every_calls = _track(video, pose_onnx, 1)
    skipped, skipped_calls = _track(video, pose_onnx, INTERVAL)
    assert every_calls == FRAMES
    assert skipped_calls <= math.ceil(FRAMES / INTERVAL) + 1  # key frames (+ at most one redo)
    ids: dict[int, int] = {}
    for t, (a, b) in enumerate(zip(every, skipped)):
        assert len(a.persons) == len(b.persons) == 5, t
        for p in a.persons:  # the same person: the one with the nearest keypoints
            seen = p.keypoint_scores > 0
            dist = [_mean_distance(p, q) for q in b.persons]
            q = b.persons[int(np.argmin(dist))]
            both = seen & (q.keypoint_scores > 0)
            assert both.sum() >= 9, t
            assert np.abs(q.keypoints - p.keypoints)[both].max() <= KEYPOINT_TOLERANCE_PX, t
            assert ids.setdefault(p.track_id, q.track_id) == q.track_id, t  # one id ↔ one id, all video
    assert len(set(ids.values())) == len(ids) == 5


def test_cli_det_interval_on_a_video_and_bad_values(pose_onnx, video, tmp_path, capsys):
    frames, _ = video
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 30, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames[:8]:
        writer.write(frame)
    writer.release()
    out = tmp_path / "out.jsonl"
    assert main(["run", str(clip), "--det", str(DET), "--pose", str(pose_onnx), "--det-interval", "5", "--track",
                 "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [f["frame"] for f in lines] == list(range(8))
    assert main(["run", str(clip), "--det", str(DET), "--pose", str(pose_onnx), "--det-interval", "0"]) == 2
    assert "--det-interval" in capsys.readouterr().err
    # the CUDA-stream pipeline detects on every frame: refused before any work, with the way out named
    assert main(["run", str(clip), "--det", str(DET), "--pose", str(pose_onnx), "--det-interval", "5", "--backend",
                 "tensorrt", "--out", str(tmp_path / "no.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--backend auto" in err and not (tmp_path / "no.jsonl").exists()
    photos = tmp_path / "photos"  # unrelated photos: each one detected, with a warning
    photos.mkdir()
    for name in ("000000000785.jpg", "000000197388.jpg"):
        (photos / name).write_bytes((SHARED / "images" / name).read_bytes())
    out = tmp_path / "photos.jsonl"
    assert main(["run", str(photos), "--det", str(DET), "--pose", str(pose_onnx), "--det-interval", "5",
                 "--out", str(out)]) == 0
    assert "every photo of this folder is detected" in capsys.readouterr().err
    assert [len(json.loads(line)["persons"]) for line in out.read_text().splitlines()] == [1, 5]


# ------------------------------------------------------------------------------------------ the daemon
class _SplitEstimator:
    """detect/pose like `PoseEstimator` (the worker's split path), one person whose keypoints follow its box."""

    kpt_threshold = 0.3

    def __init__(self) -> None:
        self.script = _Script()
        self.detected: list[tuple[str, int]] = []
        self.camera = None

    def detect(self, image):
        self.detected.append((self.current, self.script.frame))
        return self.script.detect(image)

    def pose(self, image, boxes, camera=None):
        return self.script.pose(image, boxes)


def test_daemon_worker_skips_detections_per_camera(tmp_path):
    pytest.importorskip("prometheus_client", reason="the daemon needs the 'serve' extra")
    from types import SimpleNamespace

    from test_serve_support import config_from

    from rtmw_edge.serve.config import ConfigError
    from rtmw_edge.serve.metrics import Metrics
    from rtmw_edge.serve.worker import InferenceWorker

    camera = '[cameras.a]\nsource = "0"\n'
    cfg = config_from(tmp_path, f'[model]\ndet_interval = 5\npose_spec = "rtmw-m-256x192"\n{camera}')
    assert (cfg.model.det_interval, cfg.model.pose_spec) == (5, "rtmw-m-256x192")
    with pytest.raises(ConfigError, match="det_interval"):
        config_from(tmp_path, f"[model]\ndet_interval = 0\n{camera}")
    est = _SplitEstimator()
    worker = InferenceWorker(est, [], Metrics(), lambda processed: None, det_interval=cfg.model.det_interval)
    cams = {name: SimpleNamespace(name=name, intrinsics=None) for name in ("a", "b")}
    image = np.zeros((480, 640, 3), np.uint8)
    for t in range(7):
        for name in ("a", "b"):
            est.current, est.script.frame = name, t
            generation = 1 if (name == "b" and t >= 3) else 0  # camera b's source re-opened at frame 3
            result = worker._step(cams[name], SimpleNamespace(image=image, seq=t, wall=0.0, mono=float(t),
                                                              generation=generation))
            assert len(result.persons) == 1
    assert est.detected == [("a", 0), ("b", 0), ("b", 3), ("a", 5)]
