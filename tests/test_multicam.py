"""Many cameras, one pose call per tick, on the CPU pipeline (`rtmw_edge.multicam`): four cameras — videos made
from the shared photos (1, 2, 5 and 1 people), the real RTMDet-nano detector (the shared end-to-end graph: one
call per frame) and a random-weight pose export — give each camera exactly the results it gets alone on its own
stream (same persons, boxes, keypoints bit for bit, track ids, skip-frame schedule), with ONE pose engine call
per tick when the people fit the engine's batch (⌈people / max batch⌉ otherwise), counted on the engine itself.
Our own detector export takes a batch: its frames go through it together, with the answers of one call each. A
bad frame fails only its camera; a failing batched pose call is redone camera by camera."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import SHARED

from rtmw_edge.multicam import CpuCameraBatch, StepCameraBatch, TickItem, open_camera_batch
from rtmw_edge.pipeline import PoseModel

E2E = SHARED / "models" / "rtmdet-nano_person_e2e_dyn.onnx"
PHOTOS = ("human-pose.jpg", "000000040083.jpg", "000000197388.jpg", "000000000785.jpg")
pytestmark = pytest.mark.skipif(not E2E.is_file(), reason="shared detector not found")


def camera_frames(camera: int, n: int = 7) -> list[np.ndarray]:
    """Camera CAMERA's video: its photo (480×360), moving 4 px right and 2 px down per frame; every third frame
    shows the next camera's photo instead (a scene change: people enter and leave); frame 4 is dark but for the
    photo at half size in its bottom-right corner (the people moved: boxes carried from frame 3 collapse)."""
    out = []
    for t in range(n):
        name = PHOTOS[(camera + (t % 3 == 2)) % len(PHOTOS)]
        image = cv2.resize(cv2.imread(str(SHARED / "images" / name)), (480, 360), interpolation=cv2.INTER_AREA)
        if t == 4:
            dark = np.full((360, 480, 3), 8, np.uint8)
            dark[180:, 240:] = cv2.resize(image, (240, 180), interpolation=cv2.INTER_AREA)
            out.append(dark)
            continue
        shift = np.float32([[1, 0, 4 * t], [0, 1, 2 * t]])
        out.append(cv2.warpAffine(image, shift, (480, 360), borderValue=(114, 114, 114)))
    return out


def signature(result) -> list:
    return [(p.track_id, p.bbox.tobytes(), p.score, p.keypoints.tobytes(), p.keypoint_scores.tobytes())
            for p in result.persons]


class Counting:
    """Counts the calls of a method (and the batch of each) without changing what it returns."""

    def __init__(self, fn) -> None:
        self.fn, self.batches = fn, []

    def __call__(self, x, *args, **kwargs):
        self.batches.append(len(x))
        return self.fn(x, *args, **kwargs)


class Sighted:
    """Makes a pose engine's answer depend on each crop, item by item (a batch changes nothing): the random-weight
    export answers every crop alike, so without this a crop handed to the wrong camera would go unnoticed. Each
    item's SimCC bins are rolled by an amount taken from its pixels; a dark crop loses its person (all bins 0 →
    scores 0), as a trained model does when its box holds nobody."""

    def __init__(self, run) -> None:
        self.run = run

    def __call__(self, x):
        out = self.run(x)
        flat = x.reshape(len(x), -1)
        shift = (np.abs(flat.mean(axis=1)) * 997).astype(int) + (np.abs(flat[:, ::97]).sum(axis=1) * 31).astype(int)
        dark = flat.mean(axis=1) < -1.5                          # normalised: black is about -2
        rolled = {}
        for k, v in out.items():
            items = [np.roll(v[i], int(shift[i]) % v.shape[-1], axis=-1) * (0 if dark[i] else 1) for i in range(len(v))]
            rolled[k] = np.stack(items).astype(v.dtype) if items else v
        return rolled


@pytest.fixture(scope="module")
def project_detector(tmp_path_factory):
    """Our own export of RTMDet-nano with the real weights of the shared raw-head graph (dynamic batch)."""
    pytest.importorskip("torch")
    from onnx_weights import load_folded_rtmdet

    from rtmw_edge.export import export_onnx
    from rtmw_edge.models import create_model

    model = create_model("rtmdet-nano-person")
    load_folded_rtmdet(model, SHARED / "models" / "rtmdet-nano_person_320_rawhead.onnx")
    return export_onnx("rtmdet-nano-person", tmp_path_factory.mktemp("det") / "det.onnx", model=model, progress=False)


@pytest.fixture(scope="module")
def pose_path(random_export):
    return random_export("rtmpose-t-256x192")


STREAMS = [dict(), dict(track=True, smooth=True), dict(track=True, det_interval=3), dict(det_interval=2)]


@pytest.mark.parametrize("detector", ["e2e", "project"])
def test_four_cameras_one_pose_call_per_tick_and_each_camera_as_alone(pose_path, detector, request):
    det = E2E if detector == "e2e" else request.getfixturevalue("project_detector")
    model = PoseModel(det, pose_path, max_persons=4, threads=1)
    model.pose.engine.run = Sighted(model.pose.engine.run)
    frames = [camera_frames(c) for c in range(4)]
    alone, solo = [], [model.open_stream(**STREAMS[c]) for c in range(4)]
    for c in range(4):
        alone.append([signature(solo[c].step(im, t, 0.1 * t)) for t, im in enumerate(frames[c])])
    runs = model.pose.engine.run = Counting(model.pose.engine.run)
    detects = model.detector.infer = Counting(model.detector.infer)
    streams = [model.open_stream(**STREAMS[c]) for c in range(4)]
    batch = open_camera_batch(model)
    assert isinstance(batch, CpuCameraBatch)
    together, calls = [[] for _ in range(4)], []
    for t in range(len(frames[0])):
        runs.batches.clear()
        report = batch.tick([TickItem(streams[c], frames[c][t], t, 0.1 * t) for c in range(4)])
        assert all(o.error is None for o in report.outcomes)
        for c in range(4):
            together[c].append(signature(report.outcomes[c].result))
        assert report.pose_calls == len(runs.batches)          # what the tick says = what the engine saw
        calls.append(len(runs.batches))
    for c in range(4):
        assert together[c] == alone[c], f"camera {c}"
    assert [len(p) for p in alone[0][:2]] == [1, 1] and max(len(p) for p in alone[2]) == 4   # 1..5 people (cap 4)
    assert calls == [1, 1, 1, 1, 2, 1, 1]                       # one pose call per tick; frame 4's redo adds one
    if detector == "e2e":                                       # mmdeploy's graph: one frame per detector call
        assert detects.batches and set(detects.batches) == {1}
    else:                                                       # ours: the key frames of a tick in one call
        assert max(detects.batches) > 1 and len(detects.batches) == len(frames[0]) + 1   # + frame 4's redo
    skip = [s.skip for s in streams if s.skip is not None]
    assert [(s.detector_runs, s.redetections) for s in skip] == [(3, 1), (4, 0)]   # carried boxes, a collapse redone
    assert [(s.skip.detector_runs, s.skip.redetections) for s in solo if s.skip] == [(3, 1), (4, 0)]


def test_people_beyond_the_engines_batch_take_ceil_calls(pose_path):
    model = PoseModel(E2E, pose_path, max_persons=4, threads=1)
    model.pose.engine.max_batch = 3
    runs = model.pose.engine.run = Counting(model.pose.engine.run)
    images = [camera_frames(c, 1)[0] for c in range(4)]
    alone = [signature(model.open_stream().step(im)) for im in images]
    people = sum(len(a) for a in alone)
    assert people == 8
    runs.batches.clear()
    report = CpuCameraBatch(model).tick([TickItem(model.open_stream(), im) for im in images])
    assert runs.batches == [3, 3, 2] and report.pose_calls == 3   # ⌈8 / 3⌉, cut across cameras
    assert [signature(o.result) for o in report.outcomes] == alone


def test_a_batching_detector_takes_the_frames_together(project_detector, pose_path):
    model = PoseModel(project_detector, pose_path, max_persons=3, threads=1)
    assert model.detector.max_batch is None                     # our export: dynamic batch
    images = [camera_frames(c, 1)[0] for c in range(4)]
    images[1] = cv2.resize(images[1], (320, 200))               # frames of other sizes: their own letterbox
    one_by_one = [model.detect(im) for im in images]
    assert len({d[0].tobytes() for d in one_by_one}) == 4 and min(len(d[0]) for d in one_by_one) >= 1   # real weights
    calls = model.detector.infer = Counting(model.detector.infer)
    together = model.detect_many(images)
    assert calls.batches == [4]
    for a, b in zip(one_by_one, together):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[2] == b[2]
    foreign = PoseModel(E2E, pose_path, threads=1)
    assert foreign.detector.max_batch == 1                      # mmdeploy's e2e RTMDet fails at batch 2


def test_a_bad_frame_fails_only_its_camera_and_a_failing_batch_is_redone_per_camera(pose_path):
    model = PoseModel(E2E, pose_path, max_persons=4, threads=1)
    images = [camera_frames(c, 1)[0] for c in range(3)]
    alone = [signature(model.open_stream().step(im)) for im in images]
    batch = CpuCameraBatch(model)
    report = batch.tick([TickItem(model.open_stream(), images[0]), TickItem(model.open_stream(), np.zeros((4, 4))),
                         TickItem(model.open_stream(), images[2])])
    assert report.outcomes[1].error is not None and "uint8" in str(report.outcomes[1].error)
    assert [signature(report.outcomes[i].result) for i in (0, 2)] == [alone[0], alone[2]]
    real = model.pose.engine.run

    def fails_with_many(x):                         # an engine that cannot take the joined batch
        if len(x) > 2:
            raise RuntimeError("out of memory")
        return real(x)
    model.pose.engine.run = fails_with_many
    report = batch.tick([TickItem(model.open_stream(), im) for im in images])   # 1 + 2 + 4 people
    assert [o.error is None for o in report.outcomes] == [True, True, False]
    assert [signature(report.outcomes[i].result) for i in (0, 1)] == alone[:2]


def test_one_call_per_camera_is_the_baseline(pose_path):
    model = PoseModel(E2E, pose_path, max_persons=4, threads=1)
    images = [camera_frames(c, 1)[0] for c in range(4)]
    runs = model.pose.engine.run = Counting(model.pose.engine.run)
    report = open_camera_batch(model, batched=False).tick([TickItem(model.open_stream(), im) for im in images])
    assert isinstance(open_camera_batch(model, batched=False), StepCameraBatch)
    assert report.pose_calls == len(runs.batches) == 4 and runs.batches == [1, 2, 4, 1]
    shares = report.shares()
    assert len(shares) == 4 and sum(shares) == pytest.approx(report.seconds, rel=1e-6)


def test_each_camera_is_decoded_with_its_own_intrinsics(pose_path):
    from rtmw_edge.geometry import Camera

    model = PoseModel(E2E, pose_path, max_persons=4, threads=1)
    seen = []
    real = model.pose.postprocess

    def recording(outputs, centers, scales, image_wh, camera=None):
        seen.append(camera)
        return real(outputs, centers, scales, image_wh, camera)
    model.pose.postprocess = recording
    cams = [Camera(1000.0, 1000.0), None, Camera(600.0, 700.0, 320.0, 240.0)]
    model.camera = Camera(900.0, 900.0)                          # the default of a stream without its own
    images = [camera_frames(c, 1)[0] for c in range(3)]
    CpuCameraBatch(model).tick([TickItem(model.open_stream(camera=cam), im) for cam, im in zip(cams, images)])
    assert seen == [cams[0], model.camera, cams[2]]
